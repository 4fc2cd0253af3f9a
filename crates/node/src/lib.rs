//! The replic8 node: it builds and wires the discovery, connection, session and store
//! actors, owns the configuration and the data directory, and offers the embedding API
//! and the `replic8` binary. It is the only crate that knows all the others.
//!
//! ```no_run
//! use replic8_node::{JoinOptions, Node, NodeEvent, Topic};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let node = Node::builder().in_memory().spawn().await?;
//! let mut events = node.subscribe();
//! node.join(Topic([7; 32]), JoinOptions::default()).await?;
//! while let Ok(event) = events.recv().await {
//!     if let NodeEvent::PeerUp { key, addr, .. } = event {
//!         println!("connected to {} at {addr}", key.fmt_short());
//!         break;
//!     }
//! }
//! node.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! Modules:
//! - [`node`]: [`Node::builder`], [`NodeHandle`] (join, leave, flushed, peers, events,
//!   stores, close);
//! - [`events`]: the events of [`NodeEvent`];
//! - [`feed_peers`]: which peers have each feed and how far (bounded);
//! - `wiring`: the actor between discovery, connections and sessions;
//! - [`config`]: every option, from a TOML file, validated;
//! - [`persist`]: the identity key and the persisted joins and shares in the data directory;
//! - [`metrics`]: counters, and the opt-in Prometheus endpoint that serves them;
//! - [`control`]: the daemon's control socket (a Unix socket in a private `run/`
//!   directory, for the daemon's uid only; JSON lines);
//! - [`demo`]: `replic8 demo`, the whole mission offline on one machine;
//! - [`bench`]: `replic8 bench`, throughput, memory and discovery latency of this machine;
//! - [`import`]: hashing a file as a feed would hold it (`feed import --only-hash`).

pub mod bench;
pub mod config;
pub mod control;
pub mod demo;
pub mod events;
pub mod feed_peers;
mod feeds;
pub mod import;
pub mod metrics;
pub mod node;
pub mod persist;
mod wiring;

pub use crate::events::NodeEvent;
pub use crate::feed_peers::FeedPeer;
pub use crate::node::GotFeed;
pub use crate::node::{
    AddStoreError, ConnectError, FeedError, FlushedError, JoinError, JoinOptions, LeaveError, Node,
    NodeBuilder, NodeClosed, NodeHandle, PeerInfo, SpawnError, StoreContext,
};
pub use replic8::feed_store::{
    AcceptPolicy, FeedInfo, FeedState, FeedStoreConfig, FeedStoreStats, FeedSummary,
    NamespacePolicy,
};
pub use replic8::keys::{FeedKey, NamespaceSecret};
pub use replic8::message::Headers;
pub use replic8_connmgr::{Identity, PeerKey};
pub use replic8_discovery::{JoinReport, Topic, TopicStatus};
