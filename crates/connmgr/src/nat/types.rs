//! The NAT core's public types: its configuration (`NatConfig`), what it reports
//! (`NatEvent`, `NatStatus`, `Reachability`) and what it asks its driver to do
//! (`NatOutput`).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::observed::NatType;
use super::relay::{CircuitEnd, RelayAction, RelayConfig};
use super::wire::NatMessage;
use crate::key::PeerKey;

/// The NAT features' switches and limits.
#[derive(Debug, Clone)]
pub struct NatConfig {
    /// Exchange observed addresses on every connection (and learn the NAT type).
    pub observe: bool,
    /// Ask peers to dial us back, and serve their dial-back requests.
    pub dial_back: bool,
    /// Over a relayed connection, exchange public addresses and both dial direct at once
    /// (hole punching); the direct connection replaces the relayed one.
    pub punch: bool,
    /// How long a dial-back (ours to a peer, or the answer we wait for) may take.
    pub dial_back_timeout: Duration,
    /// How long a reachability verdict stands before it is checked again.
    pub recheck_after: Duration,
    /// A peer gets at most one dial-back from us per this interval.
    pub dial_back_peer_interval: Duration,
    /// Most dial-backs we serve per minute, to all peers together.
    pub max_dial_backs_per_minute: u32,
    /// Relaying for peers, and circuits that end here.
    pub relay: RelayConfig,
    /// How long a dial of an address waits for its direct handshake before it also asks
    /// our relays who is at that address and dials them through the relay (the first
    /// connection up answers the dial); `None`: never through a relay.
    pub relayed_dial_after: Option<Duration>,
    /// How long a relay may take to answer a `Locate`.
    pub locate_timeout: Duration,
}

impl Default for NatConfig {
    fn default() -> Self {
        Self {
            observe: true,
            dial_back: true,
            punch: true,
            // A handshake over a slow path with a lost packet, and the result's way back.
            dial_back_timeout: Duration::from_secs(5),
            // Home routers drop or renumber mappings within minutes to hours; ten minutes
            // notices that without costing a peer more than a handshake now and then.
            recheck_after: Duration::from_secs(600),
            // Long enough that a peer cannot use us as a handshake generator; an honest
            // one asks once per `recheck_after`.
            dial_back_peer_interval: Duration::from_secs(30),
            // A few honest peers checking at once; bounds what a crowd of peers can make
            // us send.
            max_dial_backs_per_minute: 8,
            relay: RelayConfig::default(),
            // A handshake on a direct path answers within a few round trips (well under a
            // second on most paths); a peer behind a NAT never answers, and waiting the
            // whole handshake timeout (10 s) for that would be the dial's time to connect.
            relayed_dial_after: Some(Duration::from_secs(1)),
            // A round trip to the relay, with a lost packet.
            locate_timeout: Duration::from_secs(3),
        }
    }
}

/// Whether unsolicited connections reach us at our public address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reachability {
    /// Not checked yet (no peer reported where it sees us, or none answered).
    Unknown,
    /// A peer's dial-back from a fresh port got through. It comes from the peer's IP, so
    /// a NAT that filters by IP only passes it too (decision 157).
    Reachable,
    /// A peer's dial-back from a fresh port did not get through.
    Unreachable,
}

impl fmt::Display for Reachability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reachability::Unknown => "unknown",
            Reachability::Reachable => "reachable",
            Reachability::Unreachable => "unreachable",
        })
    }
}

/// Something about our NAT situation changed, or a step of it happened (sent to
/// `SubscribeNat` subscribers).
#[derive(Debug, Clone, PartialEq, Eq, actix::Message)]
#[rtype(result = "()")]
pub enum NatEvent {
    /// Our public addresses as peers report them (most reported first).
    PublicAddrs {
        /// The addresses.
        addrs: Vec<SocketAddr>,
    },
    /// The mapping type changed.
    NatType {
        /// The new type.
        nat_type: NatType,
    },
    /// We asked `peer` to dial us back.
    DialBackAsked {
        /// The peer.
        peer: PeerKey,
    },
    /// The reachability verdict, after `peer`'s dial-back.
    Reachability {
        /// The verdict.
        reachability: Reachability,
        /// The peer that dialed back (or tried).
        peer: PeerKey,
    },
    /// A circuit to `peer` through `relay` carries packets now.
    CircuitUp {
        /// The peer at the other end.
        peer: PeerKey,
        /// The relay.
        relay: PeerKey,
    },
    /// A circuit to `peer` is gone.
    CircuitDown {
        /// The peer at the other end.
        peer: PeerKey,
        /// Why.
        reason: CircuitEnd,
    },
    /// We relay a circuit between `opener` and `target` now.
    Relaying {
        /// The peer that opened it.
        opener: PeerKey,
        /// The peer it reaches.
        target: PeerKey,
    },
    /// A punch's direct dial to `peer` at `addr` ended (`ok`: a direct connection is up).
    Punched {
        /// The peer.
        peer: PeerKey,
        /// The address dialed.
        addr: SocketAddr,
        /// Whether it connected.
        ok: bool,
    },
    /// A relay answered our registration (`accepted`: it answers `Locate` queries about
    /// us now).
    RelayRegistered {
        /// The relay.
        relay: PeerKey,
        /// Whether it keeps the registration.
        accepted: bool,
    },
    /// A relay answered who of its registered peers is at `addr` (nothing when it did not
    /// answer in time).
    Located {
        /// The relay.
        relay: PeerKey,
        /// The address asked about.
        addr: SocketAddr,
        /// The peers there.
        peers: Vec<PeerKey>,
    },
    /// A dial of ours through `relay` to `peer`, made because a direct dial did not
    /// answer, ended (`ok`: the relayed connection is up).
    RelayedDial {
        /// The peer.
        peer: PeerKey,
        /// The relay.
        relay: PeerKey,
        /// Whether it connected.
        ok: bool,
    },
    /// We dialed `peer` back at `addr` on its request.
    DialBackServed {
        /// The peer.
        peer: PeerKey,
        /// The address dialed.
        addr: SocketAddr,
        /// Whether the handshake completed.
        reached: bool,
    },
}

/// What the core asks its driver to do or report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatOutput {
    /// Send `message` on the control channel of `to`'s connection.
    Send {
        /// The peer.
        to: PeerKey,
        /// The message.
        message: NatMessage,
    },
    /// Dial `to` at `addr` from a fresh UDP port, its key pinned; report the outcome
    /// with `handle_dial_back_done` within `dial_back_timeout`.
    DialBack {
        /// The peer that asked.
        to: PeerKey,
        /// Where we see it.
        addr: SocketAddr,
        /// Its request's nonce.
        nonce: u64,
    },
    /// Report this.
    Event(NatEvent),
    /// Dial `peer` directly at each of `addrs` (its key pinned), after half the relayed
    /// connection's round trip if `wait_half_rtt`: the punch.
    Punch {
        /// The peer.
        peer: PeerKey,
        /// Its public addresses.
        addrs: Vec<SocketAddr>,
        /// Wait half a round trip first.
        wait_half_rtt: bool,
    },
    /// Relay: start or stop forwarding between two legs (`RelayAction::Splice` and
    /// `RelayAction::Unsplice` only: the core sends the relay's messages itself).
    Relay(RelayAction),
    /// End: circuit `local` carries packets to and from `peer` through `relay` (the
    /// circuit id on its connection is `wire`); the opener dials `peer` at its virtual
    /// address.
    CircuitUp {
        /// Our id (names the virtual path).
        local: u64,
        /// The relay.
        relay: PeerKey,
        /// The id on the relay's connection.
        wire: u64,
        /// The peer at the other end.
        peer: PeerKey,
        /// Whether we opened it.
        opener: bool,
    },
    /// The answer to our `Locate` query `query` from `relay` (empty if it did not answer
    /// in time, or its connection went down).
    Located {
        /// The query.
        query: u32,
        /// The relay asked.
        relay: PeerKey,
        /// The peers it sees at the address.
        keys: Vec<PeerKey>,
    },
    /// End: circuit `local` is gone.
    CircuitDown {
        /// Our id.
        local: u64,
        /// The peer at the other end.
        peer: PeerKey,
        /// Why.
        reason: CircuitEnd,
    },
}

/// What `NatCore::status` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatStatus {
    /// Our public addresses, most reported first.
    pub public_addrs: Vec<SocketAddr>,
    /// The mapping type.
    pub nat_type: NatType,
    /// The reachability verdict.
    pub reachability: Reachability,
    /// Peers whose report is kept.
    pub reporters: usize,
    /// Connected peers that relay for us.
    pub relays: usize,
    /// Relays that hold our registration (they tell peers that ask where we are).
    pub registered_with: usize,
    /// Peers registered with us (we relay).
    pub registered_here: usize,
}
