//! A query of ours awaiting its answer, and what it was for.

use std::net::SocketAddr;
use std::time::Instant;

use super::search::LookupId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    Search { id: LookupId, seed: bool },
    Announce { id: LookupId },
    Ping,
}

#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) to: SocketAddr,
    pub(super) sent: Instant,
    pub(super) soft: Instant,
    pub(super) hard: Instant,
    pub(super) soft_fired: bool,
    pub(super) purpose: Purpose,
}
