//! Errors and reasons: why a dial failed, why a connection was refused or went down, and
//! the application close codes that carry those reasons to the peer.

use std::time::Duration;

use quinn::VarInt;
use thiserror::Error;

use crate::key::PeerKey;
use crate::tls::KeyMismatch;

/// Close code: a duplicate connection to a peer lost the dedup rule. Never a failure:
/// the survivor carries on, and nobody redials because of it. A stream that fails with
/// this code is retryable on the survivor (`is_duplicate_close`).
pub const CLOSE_DUPLICATE: VarInt = VarInt::from_u32(0x7238_0001);
/// Close code: the connection was replaced by a newer one from the same peer after the
/// old one failed the liveness probe (the peer restarted).
pub const CLOSE_REPLACED: VarInt = VarInt::from_u32(0x7238_0002);
/// Close code: closed on request (`Close`).
pub const CLOSE_REQUESTED: VarInt = VarInt::from_u32(0x7238_0003);
/// Close code: the node is shutting down.
pub const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0x7238_0004);
/// Close code: the connection was refused by policy; the reason text says which.
pub const CLOSE_REFUSED: VarInt = VarInt::from_u32(0x7238_0005);
/// Close code: the peer was idle (no shared namespace, no feed traffic) when the peer
/// table was full and a slot was needed; the reason text is `evicted: peer table full`.
/// Not misbehaviour: the evicted side backs off that address and does not redial.
pub const CLOSE_EVICTED: VarInt = VarInt::from_u32(0x7238_0006);

/// Close code: a dial-back handshake (`replic8-connmgr/dialback`) reached us; it proved
/// what it had to by completing, and is never a peer connection.
pub const CLOSE_DIAL_BACK: VarInt = VarInt::from_u32(0x7238_0007);

/// Close code: the relay circuit that carried a relayed connection closed (the relay
/// left, or a limit of it). The peer seldom gets it: the path is gone.
pub const CLOSE_PATH_LOST: VarInt = VarInt::from_u32(0x7238_0008);

/// The reason text of `CLOSE_EVICTED`; the evicted side reports
/// `DownReason::RefusedByPeer` with it.
pub const EVICTED_TEXT: &[u8] = b"evicted: peer table full";

/// True if the peer closed the connection as a duplicate (`error` from a stream or from
/// `Connection::closed`): the session layer retries what it was doing on the surviving
/// connection, which comes (or came) as a `PeerUp` for the same key. When this side closed
/// it, quinn reports `LocallyClosed`; `PeerDown` with `DownReason::Duplicate` says so.
pub fn is_duplicate_close(error: &quinn::ConnectionError) -> bool {
    matches!(error, quinn::ConnectionError::ApplicationClosed(close)
        if close.error_code == CLOSE_DUPLICATE)
}

/// Why the policy refused a connection or a dial.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RefuseReason {
    /// The remote key is our own key.
    #[error("connection to self")]
    SelfConnection,
    /// The remote key is banned.
    #[error("peer {} is banned", .0.fmt_short())]
    Banned(PeerKey),
    /// The firewall hook refused the key and address.
    #[error("refused by the firewall")]
    Firewall,
    /// As many peers as allowed are connected.
    #[error("too many peers (max {0})")]
    TooManyPeers(usize),
    /// As many dials (or incoming handshakes) as allowed are in flight.
    #[error("too many pending connections (max {0})")]
    TooManyPending(usize),
    /// As many inbound peers as allowed are connected (`max_peers` less the slots
    /// reserved for our own dials) and none is idle enough to evict.
    #[error("too many inbound peers (max {0})")]
    TooManyInbound(usize),
    /// As many inbound peers from this address (IPv4) or /64 (IPv6) as allowed are
    /// connected.
    #[error("too many peers from one address (max {0})")]
    TooManyPeersFromIp(usize),
    /// As many validated incoming handshakes from this address (IPv4) or /64 (IPv6) as
    /// allowed are in flight.
    #[error("too many pending connections from one address (max {0})")]
    TooManyPendingFromIp(usize),
}

impl RefuseReason {
    /// The short text sent as the close reason.
    pub(crate) fn wire_text(&self) -> &'static [u8] {
        match self {
            RefuseReason::SelfConnection => b"self",
            RefuseReason::Banned(_) => b"banned",
            RefuseReason::Firewall => b"firewall",
            RefuseReason::TooManyPeers(_) => b"too many peers",
            RefuseReason::TooManyPending(_) => b"too many pending",
            // The same words as a full table: the peer learns nothing about the split.
            RefuseReason::TooManyInbound(_) => b"too many peers",
            RefuseReason::TooManyPeersFromIp(_) => b"too many peers from address",
            RefuseReason::TooManyPendingFromIp(_) => b"too many pending from address",
        }
    }

    /// Whether this refusal is one of the per-address caps (`ConnStats::refused_per_ip`).
    pub fn is_per_ip(&self) -> bool {
        matches!(
            self,
            RefuseReason::TooManyPeersFromIp(_) | RefuseReason::TooManyPendingFromIp(_)
        )
    }
}

/// Why a `Dial` failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DialError {
    /// The relay circuit for a relayed dial failed or was refused.
    #[error("relay circuit: {0}")]
    Circuit(crate::nat::CircuitEnd),
    /// The policy refused it (self, banned, firewall, limits).
    #[error("refused: {0}")]
    Refused(#[from] RefuseReason),
    /// The address failed recently; dialing it again is allowed after the backoff.
    #[error("address is backing off, retry in {retry_in:?}")]
    Backoff {
        /// Time left until the next attempt is allowed.
        retry_in: Duration,
    },
    /// The address failed every attempt of the backoff schedule and was dropped.
    #[error("address failed too often and was dropped for {retry_in:?}")]
    GaveUp {
        /// Time until the address may be tried again.
        retry_in: Duration,
    },
    /// The peer presented another key than the pinned one.
    #[error(transparent)]
    KeyMismatch(#[from] KeyMismatch),
    /// quinn refused to start the dial (bad address, endpoint closing).
    #[error("cannot dial: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The endpoint's socket cannot send to the address's family: an IPv6 address from an
    /// IPv4 socket, or an IPv4 one from an IPv6-only socket. Nothing was sent, and the
    /// address is not backed off (it is not the peer's failure).
    #[error("cannot dial {addr}: the socket at {local} does not carry {family}")]
    AddressFamily {
        /// The address dialed.
        addr: std::net::SocketAddr,
        /// The socket's address.
        local: std::net::SocketAddr,
        /// The family it lacks: `IPv4` or `IPv6`.
        family: &'static str,
    },
    /// The handshake failed or the connection died before it was settled.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    Timeout,
    /// The peer closed the connection with a refusal (it banned us, its limits, ...).
    #[error("refused by the peer: {0}")]
    RefusedByPeer(String),
    /// The connection manager is shutting down.
    #[error("connection manager is shutting down")]
    Shutdown,
    /// The TLS configuration for the dial could not be built.
    #[error("tls: {0}")]
    Tls(String),
}

/// Why a peer's connection went down (`PeerDown`).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// Closed on request (`Close`).
    #[error("closed on request")]
    Closed,
    /// The node is shutting down.
    #[error("shutting down")]
    Shutdown,
    /// A newer connection to the same key won the dedup rule; it is (or will be) up. Not a
    /// failure: do not redial.
    #[error("replaced by a duplicate connection")]
    Duplicate,
    /// The peer restarted: a new connection replaced this one, which failed the probe.
    #[error("replaced by a new connection after the peer restarted")]
    Replaced,
    /// The peer was banned.
    #[error("banned")]
    Banned,
    /// The peer refused us by its policy (it banned us, its limits, its firewall); the
    /// text is its reason. The address is backed off as after a failed dial.
    #[error("refused by the peer: {0}")]
    RefusedByPeer(String),
    /// We closed it to free a slot: the peer was inbound, idle (never marked active by
    /// `PeerActivity`, or marked idle) past the grace period, and the peer table was full.
    /// Not a failure and not misbehaviour: do not redial, do not ban.
    #[error("evicted: peer table full")]
    Evicted,
    /// The connection was lost or closed by the peer.
    #[error("connection lost: {0}")]
    Lost(quinn::ConnectionError),
    /// A relayed connection whose relay circuit closed (the relay left, or one of its
    /// limits ended the circuit): lost, like a connection whose network went away, and
    /// closed at once instead of by idle timeout.
    #[error("relay circuit closed: {0}")]
    PathLost(crate::nat::CircuitEnd),
}

/// Why the core closes a connection; decides the close code and reason text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Lost the dedup rule.
    Duplicate,
    /// Failed the liveness probe while a new connection from the same key waited.
    Replaced,
    /// Closed on request.
    Requested,
    /// Shutdown.
    Shutdown,
    /// Refused by policy.
    Refused(RefuseReason),
    /// An idle inbound peer evicted to free a slot.
    Evicted,
    /// Its relay circuit closed.
    PathLost,
}

impl CloseReason {
    /// The application close code and reason text for the peer.
    pub fn code_and_text(&self) -> (VarInt, &'static [u8]) {
        match self {
            CloseReason::Duplicate => (CLOSE_DUPLICATE, b"duplicate"),
            CloseReason::Replaced => (CLOSE_REPLACED, b"replaced"),
            CloseReason::Requested => (CLOSE_REQUESTED, b"closed"),
            CloseReason::Shutdown => (CLOSE_SHUTDOWN, b"shutdown"),
            CloseReason::Refused(reason) => (CLOSE_REFUSED, reason.wire_text()),
            CloseReason::Evicted => (CLOSE_EVICTED, EVICTED_TEXT),
            CloseReason::PathLost => (CLOSE_PATH_LOST, b"relay circuit closed"),
        }
    }
}

/// Why the connection manager could not start.
#[derive(Debug, Error)]
pub enum SpawnError {
    /// The UDP socket could not be bound.
    #[error("cannot bind udp socket: {0}")]
    Bind(#[from] std::io::Error),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}
