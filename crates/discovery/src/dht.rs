//! The DHT backend: a narrow trait.
//!
//! The actor needs two operations from a DHT: store "this port is in the swarm of this
//! infohash" and stream the peers stored for an infohash. Our own node implements it in
//! `driver` ([`crate::KrpcDht`]); `DiscoveryActor::spawn_with_dht` takes any other.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use futures::Stream;

use crate::error::BackendError;
use crate::krpc::{DhtStats, Id};

/// What a DHT node is and has done, from [`DhtBackend::status`] (our own node's:
/// [`KrpcDht::status`](crate::KrpcDht::status)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtStatus {
    /// Our node id.
    pub id: Id,
    /// The local addresses of the sockets.
    pub addrs: Vec<SocketAddr>,
    /// Answering queries (server), or read-only.
    pub server: bool,
    /// Our external IPs, once enough nodes agreed on them.
    pub external: Vec<IpAddr>,
    /// The core's counters.
    pub stats: DhtStats,
    /// Datagrams the sockets refused to send.
    pub send_errors: u64,
    /// Bootstraps started (the first included).
    pub bootstraps: u64,
    /// Nodes in the IPv4 routing table.
    pub nodes_v4: usize,
    /// Nodes in the IPv6 routing table.
    pub nodes_v6: usize,
    /// Peers others announced to us, over all infohashes.
    pub peers_stored: usize,
    /// Lookups running now.
    pub lookups: usize,
    /// Per infohash we looked up or announced: peers found (summed over lookups, each
    /// peer once per lookup), for the most recent 1024 infohashes.
    pub peers_found: Vec<([u8; 20], u64)>,
}

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Batches of peer addresses as DHT nodes return them (duplicates across batches are
/// expected); the stream ends when the lookup has finished.
pub type PeerStream = Pin<Box<dyn Stream<Item = Vec<SocketAddr>> + Send + 'static>>;

/// What discovery needs from a DHT. Implementations do their work off the caller's
/// thread; the futures and streams are polled in tokio tasks, never inside the actor.
pub trait DhtBackend: Send + Sync + fmt::Debug + 'static {
    /// Announce that a peer listens on `port` (at the address the DHT sees us from) for
    /// `infohash`. Resolves once the record is stored on at least one node.
    fn announce(&self, infohash: [u8; 20], port: u16) -> BoxFuture<Result<(), BackendError>>;
    /// Look up the peers stored for `infohash`.
    fn lookup(&self, infohash: [u8; 20]) -> PeerStream;
    /// The local address of the DHT socket (the IPv4 one if there are two).
    fn local_addr(&self) -> SocketAddr;
    /// The local addresses of every DHT socket.
    fn local_addrs(&self) -> Vec<SocketAddr> {
        vec![self.local_addr()]
    }
    /// The node's counters and tables, if the implementation keeps them.
    fn status(&self) -> BoxFuture<Option<DhtStatus>> {
        Box::pin(async { None })
    }
}
