//! [`Node::builder`] → [`NodeBuilder::spawn`] → [`NodeHandle`]: the embedding API.
//!
//! The node runs its actors (discovery, connection manager, sessions, stores and the
//! peer lifecycle between them) in an actix `System` on a multi-thread tokio runtime, in a thread
//! of its own. The handle talks to the actors through their addresses, whose futures are
//! `Send`, so it works from any async code (`#[tokio::main]`, a test, another runtime).
//! [`NodeHandle::close`] shuts everything down in order and waits for the thread to end:
//! no task of the node outlives it.
//!
//! Files: `builder.rs` every option (`NodeBuilder`, `SpawnError`); `start.rs` the runtime
//! assembly (`NodeBuilder::spawn`: the thread, the actix system, every actor, in order);
//! `forward.rs` the session layer's and the feed store's events turned into node events
//! and counters; `nat.rs` the connection manager's NAT events turned into node events;
//! `handle.rs` the `NodeHandle` and what it holds; `errors.rs` what its
//! operations fail with; `namespaces.rs` and `feeds.rs` the handle's namespace, offer
//! and feed-by-key operations.

use std::time::Duration;

#[cfg(test)]
mod lifecycle_tests;
pub(crate) mod namespace_spec;
mod namespace_types;
mod namespaces;
pub use namespace_spec::{AcceptMode, NamespaceSpec, SpecError};
pub use namespace_types::{parse_secret, NamespaceError, NamespaceStatus, OfferRecord, OFFER_LOG};
mod feeds;
pub use feeds::GotFeed;

mod builder;
mod errors;
mod forward;
mod handle;
mod nat;
mod start;

pub use builder::{NodeBuilder, SpawnError};
pub use errors::{
    AddStoreError, ConnectError, DisconnectError, FeedError, FlushedError, JoinError, LeaveError,
    NodeClosed, PeerInfo,
};
pub use handle::{JoinOptions, NodeHandle, StoreContext};

/// How long `close` lets sessions send their close before it moves on. The session layer
/// itself gives up after 2 s (`SessionsActor`'s grace period); this is a guard above it.
const SESSION_CLOSE_GUARD: Duration = Duration::from_secs(3);

/// Quinn's default `max_concurrent_bidi_streams`: the connection manager keeps it, so a
/// session may open at most this many streams, the control stream included.
const QUIC_BIDI_STREAMS: u32 = 100;

/// Entry point: `Node::builder()`.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// A builder with the defaults: data in the platform's data directory, a new or
    /// persisted identity, QUIC on all IPv4 interfaces on a free port, the public DHT in
    /// client mode, LAN discovery on, no metrics endpoint.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use replic8_discovery::DhtMode;

    /// `[discovery] dht_server` and `dht_read_only` choose the DHT node's mode; neither
    /// leaves it to the network (auto).
    #[test]
    fn the_dht_mode_follows_the_config() {
        let mode = |toml: &str| {
            let config = NodeConfig::from_toml(toml).unwrap();
            NodeBuilder::from_config(&config).unwrap().dht.unwrap().mode
        };
        assert_eq!(mode(""), DhtMode::Auto);
        assert_eq!(mode("[discovery]\ndht_server = true\n"), DhtMode::Server);
        assert_eq!(
            mode("[discovery]\ndht_read_only = true\n"),
            DhtMode::ReadOnly
        );
    }
}
