//! What a [`KrpcDht`](super::KrpcDht) handle asks the task, and the status it answers.

use std::net::{IpAddr, SocketAddr};

use tokio::sync::{mpsc, oneshot};

use crate::error::BackendError;
use crate::krpc::{DhtStats, Id};

/// Infohashes whose found-peer counts are kept for [`DhtStatus::peers_found`].
pub(super) const MAX_COUNTED_INFOHASHES: usize = 1024;

/// What the DHT node is and has done, from [`KrpcDht::status`](super::KrpcDht::status).
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
    /// peer once per lookup), for the most recent [`MAX_COUNTED_INFOHASHES`] infohashes.
    pub peers_found: Vec<([u8; 20], u64)>,
}

/// What a handle asks the task.
#[derive(Debug)]
pub(super) enum Command {
    Announce {
        info_hash: Id,
        port: u16,
        reply: oneshot::Sender<Result<usize, BackendError>>,
    },
    Lookup {
        info_hash: Id,
        peers: mpsc::UnboundedSender<Vec<SocketAddr>>,
    },
    Status {
        reply: oneshot::Sender<DhtStatus>,
    },
    Bootstrapped {
        reply: oneshot::Sender<usize>,
    },
    SaveNodes {
        reply: oneshot::Sender<Result<usize, String>>,
    },
    Seeds(Vec<SocketAddr>),
}
