//! A lookup as the core tracks it: its id, its kind, its parts and its phase.

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::krpc::id::Id;
use crate::krpc::lookup::Lookup;

/// Identifies a lookup started by a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// What a lookup does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKind {
    /// `find_node` towards a target (bootstrap, refresh).
    FindNode,
    /// `get_peers` for an infohash.
    GetPeers,
    /// `get_peers`, then `announce_peer` to the closest nodes that gave a token.
    Announce {
        /// The port to announce; `None` announces the DHT socket's own port
        /// (`implied_port`), which is what a node behind a NAT wants.
        port: Option<u16>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Searching,
    Announcing,
}

#[derive(Debug)]
pub(super) struct Search {
    pub(super) kind: LookupKind,
    pub(super) target: Id,
    /// One lookup per address family (IPv4 first).
    pub(super) parts: Vec<Lookup>,
    pub(super) seen: HashSet<SocketAddr>,
    pub(super) internal: bool,
    pub(super) phase: Phase,
    pub(super) announce_pending: usize,
    pub(super) announced: usize,
}
