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
//! - `lifecycle`: each peer from found to dialed, up, down and redialed (a sans-I/O
//!   core and the actor that drives it between discovery, connections and sessions);
//! - [`feed_peers`]: which peers have each feed and how far (bounded);
//! - [`config`]: every option, from a TOML file, validated;
//! - [`persist`]: the identity key and the persisted joins and shares in the data directory;
//! - [`metrics`]: counters, and the opt-in Prometheus endpoint that serves them;
//! - [`store`]: the store interface, re-exported for store authors, with the guide to
//!   writing a store actor (`docs/STORES.md`).
//!
//! The `replic8` binary (the default `cli` feature) is built on this API alone: its
//! control socket, demo, benchmarks and import live in the binary, not here.
//!
//! A store author depends on this crate alone: [`actix`], [`tokio`] and [`quinn`] (whose
//! streams a store is given) are re-exported, and so is everything the store interface
//! names.

pub mod config;
pub mod events;
pub mod feed_peers;
mod feeds;
mod lifecycle;
pub mod metrics;
pub mod node;
pub mod persist;

#[doc = include_str!("../../../docs/STORES.md")]
pub mod store {
    pub use replic8::actor::SessionsActor;
    /// A peer's key in the store messages: the node's [`crate::PeerKey`] (one type).
    pub use replic8::keys::PeerKey;
    pub use replic8::session::StreamId;
    pub use replic8::store::*;
}

pub use crate::events::NodeEvent;
pub use crate::feed_peers::FeedPeer;
pub use crate::node::GotFeed;
pub use crate::node::{
    AcceptMode, AddStoreError, ConnectError, FeedError, FlushedError, JoinError, JoinOptions,
    LeaveError, NamespaceError, NamespaceSpec, NamespaceStatus, Node, NodeBuilder, NodeClosed,
    NodeHandle, OfferRecord, PeerInfo, SpawnError, StoreContext,
};
pub use replic8::feed_store::{
    AcceptPolicy, FeedInfo, FeedPage, FeedState, FeedStoreConfig, FeedStoreStats, FeedSummary,
    FeedTotals, NamespacePolicy, OfferDecision,
};
pub use replic8::keys::{FeedKey, NamespaceSecret};
pub use replic8::message::{HeaderError, Headers};
pub use replic8::store::SharedFeed;
pub use replic8_connmgr::{Identity, PeerKey, TransportTuning};
pub use replic8_discovery::{DhtConfig, JoinReport, KrpcTestnet, Timing, Topic, TopicStatus};

pub use crate::config::{ConfigError, LimitsSection, NodeConfig};

/// The actor framework stores are written in.
pub use actix;
/// The QUIC implementation: a store's streams are `quinn` streams.
pub use quinn;
/// The async runtime the node and a store's stream tasks run on.
pub use tokio;
