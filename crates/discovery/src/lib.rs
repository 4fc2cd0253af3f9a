//! The `Discovery` actor: finds peers for 32-byte topics.
//!
//! Backends are the BitTorrent Mainline DHT (BEP 5), the local network (mDNS) and static
//! addresses from config. `Join`, `Leave` and `Flushed` come in; `PeerFound` goes out to
//! subscribers, which the node wires to the connection manager, and `PeerTried` comes
//! back. The topic bookkeeping (timers, the flushed state, deduplication of found peers)
//! is a core without I/O.
//!
//! Wiring, as the node does it (`Dial` stands for the connection manager's message):
//!
//! ```no_run
//! use actix::prelude::*;
//! use replic8_discovery::{DiscoveryActor, DiscoveryConfig, Join, PeerFound, PeerTried, Subscribe, Topic};
//!
//! struct Dialer(Addr<DiscoveryActor>);
//! impl Actor for Dialer {
//!     type Context = Context<Self>;
//! }
//! impl Handler<PeerFound> for Dialer {
//!     type Result = ();
//!     fn handle(&mut self, found: PeerFound, _: &mut Context<Self>) {
//!         // ... ask the connection manager to dial `found.addr`; when the dial ended:
//!         self.0.do_send(PeerTried { topic: found.topic, addr: found.addr });
//!     }
//! }
//!
//! # async fn wire() -> Result<(), Box<dyn std::error::Error>> {
//! let discovery = DiscoveryActor::spawn(DiscoveryConfig::new(4433)).await?;
//! let dialer = Dialer(discovery.clone()).start();
//! discovery.send(Subscribe(dialer.recipient())).await?;
//! let report = discovery
//!     .send(Join { topic: Topic([7; 32]), announce: true, lookup: true })
//!     .await??;
//! println!("announced on {:?}, {} peers in the first round", report.announced, report.peers_found);
//! # Ok(())
//! # }
//! ```
//!
//! Modules:
//! - `topic`: [`Topic`], 32 bytes;
//! - `config`: [`DiscoveryConfig`] and its parts;
//! - `core`: [`DiscoveryCore`], the bookkeeping without I/O, tested with virtual time;
//! - `messages`: the actor's messages and their replies;
//! - `actor`: [`DiscoveryActor`], the thin actix shell that runs the backends;
//! - `dht`: the [`DhtBackend`] trait (our node, [`KrpcDht`], implements it);
//! - `krpc`: [`krpc::DhtCore`], our Mainline DHT node without I/O;
//! - `driver`: [`KrpcDht`], the UDP driver of that core and the default [`DhtBackend`],
//!   on its own sockets or a [`SharedPort`] (the node's QUIC socket);
//! - `testnet`: [`KrpcTestnet`], a private DHT of our nodes on loopback for tests;
//! - `lan`: mDNS advertisement and browsing;
//! - `error`: one error enum per operation.

pub mod actor;
pub mod config;
pub mod core;
pub mod dht;
pub mod driver;
pub mod error;
pub mod krpc;
mod lan;
pub mod messages;
pub mod testnet;
pub mod topic;

pub use crate::actor::DiscoveryActor;
pub use crate::config::{
    Bootstrap, DhtConfig, DhtMode, DiscoveryConfig, LanConfig, Timing, PUBLIC_BOOTSTRAP,
    TESTNET_RATE_LIMIT,
};
pub use crate::core::{
    CoreEvent, CoreSettings, DiscoveryCore, JoinId, JoinReport, PeerSource, TopicStatus,
    MAX_PEERS_PER_TOPIC,
};
pub use crate::dht::DhtBackend;
pub use crate::driver::{DatagramSend, DhtStatus, KrpcDht, SharedPort};
pub use crate::error::{BackendError, JoinError, SpawnError, TopicError};
pub use crate::messages::{
    Close, DhtInfo, DiscoveryStats, Flushed, Join, Joined, Leave, LookupAt, PeerFound, PeerTried,
    Stats, Subscribe, Topics, WaitFlushed,
};
pub use crate::testnet::KrpcTestnet;
pub use crate::topic::Topic;
