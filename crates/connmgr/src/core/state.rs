//! What the core keeps per connection, per active peer and per failing address.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use crate::key::PeerKey;

/// Names one connection attempt (dial or accept) for its whole life, and one `Dial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// Whether `addr` is the virtual address of a relay circuit (`VirtualPaths`): a
/// connection there runs through a relay.
pub fn is_relayed(addr: &SocketAddr) -> bool {
    crate::socket::VirtualPaths::is_virtual(addr)
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// We dialed.
    Local,
    /// The peer dialed us.
    Remote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Handshaking {
        expected: Option<PeerKey>,
    },
    Held {
        until: Instant,
    },
    Up,
    /// Loses or ties against an up connection, which is being probed.
    Challenger,
    /// Initiated by us (the smaller key) while another one we initiated is held: waits for
    /// the peer's confirmation of one of the two, or for the peer to close one of them.
    /// Closed as a duplicate at `until` (`dial_wait`) if neither happened.
    Candidate {
        until: Instant,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Conn {
    pub(super) addr: SocketAddr,
    pub(super) initiator: Initiator,
    pub(super) key: Option<PeerKey>,
    pub(super) phase: Phase,
    /// The peer proved it receives at `addr` (QUIC address validation); always true for
    /// our dials.
    pub(super) validated: bool,
    /// When the handshake finished (the eviction grace period counts from here).
    pub(super) since: Option<Instant>,
}

/// What the layer above said about a peer (`handle_activity`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Activity {
    pub(super) active: bool,
    /// When it was last marked idle.
    pub(super) idle_since: Instant,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct AddrBackoff {
    pub(super) failures: usize,
    pub(super) retry_at: Instant,
    pub(super) dropped: bool,
}
