//! The messages of the `ConnManager` actor: requests (`Dial`, `Close`, `Ban`,
//! `PeerActivity`, `Peers`, `Stats`, `Subscribe`, `SubscribeRefused`, `NatState`,
//! `SubscribeNat`, `Shutdown`) and the events it sends to subscribers (`PeerUp`,
//! `PeerDown`, `ConnRefused`, `NatEvent`).

use std::net::SocketAddr;
use std::time::Duration;

use actix::{Message, Recipient};
use thiserror::Error;

use crate::core::Initiator;
use crate::error::{DialError, DownReason, RefuseReason};
use crate::key::{KeyError, PeerKey};
use crate::nat::{NatEvent, NatStatus};

/// Connect to the peer at `addr`; replies with its key once a connection to it is up
/// (at once if one already is). `expected_key` pins the key: any other fails the
/// handshake with `DialError::KeyMismatch`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<PeerKey, DialError>")]
pub struct Dial {
    /// Where the peer listens.
    pub addr: SocketAddr,
    /// The key the peer must have, if known.
    pub expected_key: Option<PeerKey>,
}

/// Connect to `key` through a circuit of `relay` (a connected peer that relays, see
/// `RelayConfig`); replies with the key once the relayed connection is up (at once if a
/// connection to `key` already is). The relayed connection is end-to-end QUIC with `key`
/// pinned, at a virtual address (`VirtualPaths`): the relay forwards ciphertext only.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<PeerKey, DialError>")]
pub struct DialRelayed {
    /// The relay.
    pub relay: PeerKey,
    /// The peer to reach.
    pub key: PeerKey,
}

/// Close the connection to `key` (close code `CLOSE_REQUESTED`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), CloseError>")]
pub struct Close {
    /// The peer.
    pub key: PeerKey,
}

/// Why `Close` did nothing.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CloseError {
    /// There is no connection to that key.
    #[error("not connected to {}", .0.fmt_short())]
    NotConnected(PeerKey),
}

/// Ban `key` for `duration`: its connections are closed now, and it is refused (dialing
/// and accepting) until the ban expires. Replies with whether a connection was closed.
#[derive(Debug, Clone, Message)]
#[rtype(result = "bool")]
pub struct Ban {
    /// The peer.
    pub key: PeerKey,
    /// How long.
    pub duration: Duration,
}

/// Marks the peer `key` active (it shares a namespace with us, or moves feed traffic) or
/// idle. When the peer table is full, an inbound peer that is not active and has been
/// connected for longer than `PolicyConfig::eviction_grace` may be evicted (closed with
/// `CLOSE_EVICTED`, `PeerDown{reason: Evicted}`) to make room, the one idle longest first.
/// Peers we dialed are never evicted. A peer starts idle on every new connection.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(), ActivityError>")]
pub struct PeerActivity {
    /// The peer.
    pub key: PeerKey,
    /// Active (`true`) or idle (`false`).
    pub active: bool,
}

/// Why `PeerActivity` did nothing.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ActivityError {
    /// There is no connection to that key.
    #[error("not connected to {}", .0.fmt_short())]
    NotConnected(PeerKey),
}

/// The peers that are up, with per-connection stats.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<PeerStats>")]
pub struct Peers;

/// One connected peer, as listed by `Peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's key.
    pub key: PeerKey,
    /// The peer's address as seen on this connection.
    pub addr: SocketAddr,
    /// Who dialed.
    pub initiator: Initiator,
    /// quinn's smoothed round-trip time estimate.
    pub rtt: Duration,
    /// UDP payload bytes sent on this connection.
    pub bytes_sent: u64,
    /// UDP payload bytes received on this connection.
    pub bytes_received: u64,
    /// quinn's `Connection::stable_id`, as in `PeerDown`.
    pub connection_id: usize,
    /// Whether the connection runs through a relay (`addr` is a virtual address).
    pub relayed: bool,
}

/// Counters since start, for status views.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "ConnStats")]
pub struct Stats;

/// What `Stats` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Peers up now.
    pub peers: usize,
    /// Dials that started a handshake.
    pub dials_started: u64,
    /// Dials answered with an error (including refusals before any packet).
    pub dials_failed: u64,
    /// Incoming connections refused or whose handshake failed.
    pub incoming_refused: u64,
    /// Connections closed as duplicates by this side.
    pub duplicates_closed: u64,
    /// Connections replaced after their peer restarted.
    pub replaced: u64,
    /// UDP payload bytes sent, on every connection since start.
    pub bytes_sent: u64,
    /// UDP payload bytes received, on every connection since start.
    pub bytes_received: u64,
    /// Handshakes quinn refused or ignored before they reached us (e.g. when closing).
    pub handshakes_refused_by_quinn: u64,
    /// Incoming handshakes answered with a QUIC retry (address validation).
    pub retries_sent: u64,
    /// Incoming connections refused by a per-address cap (`max_pending_per_ip`,
    /// `max_peers_per_ip`); also counted in `incoming_refused`.
    pub refused_per_ip: u64,
    /// Idle inbound peers evicted to make room (`DownReason::Evicted`).
    pub evictions: u64,
    /// Messages received on peers' NAT control channels.
    pub nat_messages_received: u64,
    /// Dial-backs we asked peers for (reachability checks).
    pub dial_backs_asked: u64,
    /// Dial-backs we made on peers' requests.
    pub dial_backs_served: u64,
    /// Dial-back handshakes that reached us.
    pub dial_backs_received: u64,
    /// Direct dials made to punch through NATs (one per address tried).
    pub punches: u64,
    /// Punch dials that connected.
    pub punches_ok: u64,
    /// Circuits we relayed for others since start.
    pub circuits_relayed: u64,
    /// Bytes we forwarded on others' circuits since start.
    pub relayed_bytes: u64,
}

/// Receive `PeerUp` and `PeerDown`. A new subscriber first gets a `PeerUp` for every peer
/// that is already up.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    /// Gets `PeerUp`.
    pub peer_up: Recipient<PeerUp>,
    /// Gets `PeerDown`.
    pub peer_down: Recipient<PeerDown>,
}

/// Receive `ConnRefused` (diagnostics: a connection refused or a handshake failed).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SubscribeRefused(pub Recipient<ConnRefused>);

/// Where we stand behind NATs: public addresses, mapping type, reachability.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "NatStatus")]
pub struct NatState;

/// Receive every `NatEvent`; replies with the status now, so that nothing is missed
/// between the two.
#[derive(Debug, Message)]
#[rtype(result = "NatStatus")]
pub struct SubscribeNat(pub Recipient<NatEvent>);

/// Close every connection (close code `CLOSE_SHUTDOWN`), wait for the endpoint to drain,
/// and stop the actor. Replies when it is done.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// A connection to `key` is settled (the only one for that key): open and accept
/// streams on it. The connection manager sends empty QUIC datagrams on it as liveness
/// probes, and the greater key one confirmation datagram (`replic8-connmgr/confirm`) when
/// the smaller key initiated it; a protocol that uses datagrams ignores both.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PeerUp {
    /// The peer's key, proven in the handshake.
    pub key: PeerKey,
    /// The peer's address.
    pub addr: SocketAddr,
    /// The connection.
    pub connection: quinn::Connection,
    /// Who dialed.
    pub initiator: Initiator,
}

/// The connection that a `PeerUp` announced is gone.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PeerDown {
    /// The peer's key.
    pub key: PeerKey,
    /// `Connection::stable_id` of the connection that went down (a `PeerUp` for a newer
    /// connection to the same key may already have been sent, when it replaced this one).
    pub connection_id: usize,
    /// Why. `Duplicate` and `Evicted` are not failures: do not redial, do not ban.
    pub reason: DownReason,
}

/// A connection was refused, or its handshake failed (logged once by the actor too).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ConnRefused {
    /// The remote address.
    pub addr: SocketAddr,
    /// The remote key, when the handshake got that far.
    pub key: Option<PeerKey>,
    /// Who dialed.
    pub initiator: Initiator,
    /// Why.
    pub reason: RefusedReason,
}

/// Why a connection was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RefusedReason {
    /// The policy refused the peer after the handshake.
    #[error(transparent)]
    Policy(#[from] RefuseReason),
    /// The handshake failed (no key, a key that is not ed25519, a bad signature, a
    /// pinned key mismatch, a refused ALPN, ...).
    #[error("handshake failed: {0}")]
    Handshake(DialError),
    /// The handshake did not finish within the handshake timeout.
    #[error("handshake timed out")]
    Timeout,
    /// The handshake finished but the peer's key could not be read.
    #[error("bad peer key: {0}")]
    BadKey(KeyError),
}
