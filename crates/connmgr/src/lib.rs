//! The `ConnManager` actor: one authenticated QUIC connection per remote ed25519 key.
//!
//! It owns the node's only `quinn::Endpoint` (server and client on one UDP socket).
//! Peers authenticate with TLS 1.3 raw public keys; when two connections to the same key
//! exist, both sides keep the same one: the one the greater key initiated, or the one it
//! confirmed (a datagram) when the smaller key dialed. `Dial`, `Close` and `Ban` come in;
//! `PeerUp` and `PeerDown` go out to subscribers. The dedup and dial policy is a core
//! without I/O, and so are the limits that keep the peer table open to honest peers on
//! the open network: QUIC retry when incoming handshakes run high, per-address caps,
//! slots reserved for our own dials, and eviction of idle inbound peers (`PeerActivity`).
//!
//! Modules:
//! - `key`: `Identity` (the node's key pair) and `PeerKey` (a peer's public key);
//! - `tls`: rustls configuration for raw public keys, both directions verified;
//! - `transport`: QUIC transport defaults by the kind of path to the peer (`PathKind`,
//!   `transport_config`) and the UDP socket;
//! - `socket`: what shares the endpoint's socket (`VirtualPaths`: relay circuits);
//! - `core`: `ConnCore`, the dedup and dial policy without I/O;
//! - `nat`: `NatCore`, observed addresses, the NAT mapping type and reachability
//!   (dial-back) without I/O, and the NAT control channel's wire format;
//! - `messages`: the actor's messages and events;
//! - `actor`: `ConnManager`, the thin actor around the core;
//! - `error`: errors, reasons and close codes;
//! - `bench`: a loopback transfer through the real stack (`replic8 bench`, the example).
//!
//! The session layer subscribes (`Subscribe`) and opens streams on the
//! `quinn::Connection` of each `PeerUp`. A connection closed with `CLOSE_DUPLICATE` is
//! never a failure; see `is_duplicate_close`.
//!
//! ```no_run
//! use actix::prelude::*;
//! use replic8_connmgr::{ConnManager, ConnManagerConfig, Dial, Identity, PeerDown, PeerUp, Subscribe};
//!
//! struct Sessions;
//! impl Actor for Sessions { type Context = Context<Self>; }
//! impl Handler<PeerUp> for Sessions {
//!     type Result = ();
//!     fn handle(&mut self, up: PeerUp, _: &mut Context<Self>) {
//!         // Open and accept streams on `up.connection` (in a tokio task).
//!         let _ = (up.key, up.connection);
//!     }
//! }
//! impl Handler<PeerDown> for Sessions {
//!     type Result = ();
//!     fn handle(&mut self, _down: PeerDown, _: &mut Context<Self>) {}
//! }
//!
//! # async fn example(peer: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
//! let config = ConnManagerConfig::new(Identity::generate()).with_alpn(vec![b"my-proto/1".to_vec()]);
//! let manager = ConnManager::spawn(config)?;
//! let sessions = Sessions.start();
//! manager
//!     .addr()
//!     .send(Subscribe { peer_up: sessions.clone().recipient(), peer_down: sessions.recipient() })
//!     .await?;
//! let key = manager.addr().send(Dial { addr: peer, expected_key: None }).await??;
//! println!("connected to {}", key.fmt_short());
//! manager.close().await;
//! # Ok(())
//! # }
//! ```

mod actor;
pub mod bench;
mod config;
pub mod core;
mod error;
mod key;
pub mod messages;
pub mod nat;
pub mod socket;
pub mod tls;
pub mod transport;

pub use crate::actor::{ConnManager, ConnManagerHandle};
pub use crate::config::{ConnManagerConfig, DEFAULT_ALPN};
pub use crate::core::{ConnId, Firewall, Initiator, PolicyConfig};
pub use crate::error::{
    is_duplicate_close, CloseReason, DialError, DownReason, RefuseReason, SpawnError,
    CLOSE_DIAL_BACK, CLOSE_DUPLICATE, CLOSE_EVICTED, CLOSE_PATH_LOST, CLOSE_REFUSED,
    CLOSE_REPLACED, CLOSE_REQUESTED, CLOSE_SHUTDOWN, EVICTED_TEXT,
};
pub use crate::key::{Identity, KeyError, PeerKey};
pub use crate::messages::{
    ActivityError, Ban, Close, CloseError, ConnRefused, ConnStats, Dial, DialRelayed, NatState,
    PeerActivity, PeerDown, PeerStats, PeerUp, Peers, RefusedReason, Shutdown, Stats, Subscribe,
    SubscribeNat, SubscribeRefused,
};
pub use crate::nat::{
    CircuitEnd, NatConfig, NatEvent, NatStatus, NatType, Reachability, RelayConfig,
};
pub use crate::transport::{
    default_transport_config, transport_config, AckTuning, Congestion, PathKind, TransportTuning,
};
