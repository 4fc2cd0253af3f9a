//! The dedup and dial policy, without I/O.
//!
//! `ConnCore` is told what happened (`handle_dial`, `handle_incoming`,
//! `handle_established`, `handle_handshake_failed`, `handle_probe_result`,
//! `handle_confirmed`, `handle_closed`, `handle_activity`, `handle_timeout`, `close`,
//! `ban`, `shutdown`)
//! with the current time, and says what to do through `poll_event` (`CoreEvent`: close
//! this connection, probe that one, confirm that one to the peer, this peer is up or
//! down, this dial is done) and `poll_timeout` (when to call `handle_timeout` next). It never reads a clock, never touches a socket, and draws its
//! jitter from a seeded RNG when asked to.
//!
//! # Rules
//! - At most one connection per remote key is *current* (held or up). A second one is
//!   decided at once by the key rule: the connection initiated by the greater key wins.
//!   Both sides see the same two connections with the same initiators, so they pick the
//!   same survivor. The loser is closed with `CLOSE_DUPLICATE`.
//! - A newcomer that loses by the key rule (or ties: same initiator) may come from a
//!   peer that restarted. The current connection is probed; if it is dead, the newcomer
//!   replaces it at once, otherwise the newcomer is closed as a duplicate.
//! - A connection initiated by the greater key can never lose the key rule, so it is up
//!   at once.
//! - A connection initiated by the smaller key is decided by the greater side, which
//!   knows whether a dial of its own (the connection that would win) is under way. With
//!   none to that key or address, it *commits*: the connection is up at once, and it says
//!   so to the peer (`CoreEvent::Confirm`, a datagram on that connection). Its later
//!   dials to that key or address answer with that connection (an unpinned dial to
//!   another address of the peer cannot be matched before its handshake, and wins). With one under way, it
//!   holds the newcomer for `settle_window` and its own dial wins meanwhile.
//! - The smaller side *holds* the connections it initiated until the greater side
//!   confirms one (`handle_confirmed`): that one goes up, any other it initiated is
//!   closed. Only if no confirmation comes within `settle_window` (a peer without the
//!   rule, lost datagrams) does the held one go up on its own, as before the rule. While
//!   one is held or up, a second one it initiated waits as a *candidate* for the verdict
//!   instead of being closed or probed: the greater side decides between two of ours.
//!   A confirmation of the candidate switches to it; the peer's close of either one
//!   leaves us on the other (the window may have ended with the peer's confirmation of
//!   the candidate lost, the peer then closes the one we put up); a candidate neither
//!   confirmed nor closed within `dial_wait` is closed as a duplicate.
//! - A confirmation of a connection we hold as a challenger (the peer restarted and we
//!   are probing the old one) means the peer has dropped the old one: the confirmed one
//!   replaces it at once.
//!
//! - A direct connection beats a relayed one (its address is a relay circuit's virtual
//!   address, `VirtualPaths`), whoever initiated either: the relayed one is closed as a
//!   duplicate, and a relayed newcomer loses to a direct current one at once. Both sides
//!   see the same path kind on the same connection, so they agree without a message. A
//!   direct dial to a peer we reach only through a relay goes ahead (it is not answered
//!   with the relayed connection); between two connections of one kind the key rule
//!   decides.
//!
//! # Protected slots
//! - Our dials may use all `max_peers` slots, inbound peers all but `reserved_outbound`
//!   (at most half). Inbound peers are also capped per address (`max_peers_per_ip`; an
//!   IPv4 address or an IPv6 /64), and so are validated incoming handshakes
//!   (`max_pending_per_ip`).
//! - An unvalidated incoming handshake is answered with a stateless retry
//!   (`IncomingStart::Retry`) once `retry_above` are in progress, or `max_pending_per_ip`
//!   from its address: it is never refused for an address it may have spoofed.
//! - When a new peer needs a slot (our dial in a full table, an inbound peer past the
//!   inbound limit), the inbound peer idle longest is evicted if one is evictable: up,
//!   not marked active (`handle_activity`), connected for `eviction_grace`. Otherwise
//!   the newcomer is refused. A dial is refused up front only when even evicting every
//!   evictable peer would leave no slot for it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::error::{CloseReason, DialError, DownReason, RefuseReason};
use crate::key::PeerKey;

pub use self::config::{Firewall, PolicyConfig};
pub use self::state::{is_relayed, ConnId, Initiator};
use self::state::{Activity, AddrBackoff, Conn, Phase};

mod close;
mod config;
mod dedup;
mod dial;
mod slots;
mod state;

/// What the core asks its driver to do or report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreEvent {
    /// The connection is the settled one for `key`: report `PeerUp`.
    PeerUp {
        /// The connection.
        conn: ConnId,
        /// The peer.
        key: PeerKey,
    },
    /// A connection that was up is gone: report `PeerDown`.
    PeerDown {
        /// The connection.
        conn: ConnId,
        /// The peer.
        key: PeerKey,
        /// Why.
        reason: DownReason,
    },
    /// Close this connection with this reason.
    Close {
        /// The connection.
        conn: ConnId,
        /// Decides the close code.
        reason: CloseReason,
    },
    /// Check that this connection is alive; answer with `handle_probe_result`.
    Probe {
        /// The connection.
        conn: ConnId,
    },
    /// Tell the peer (the smaller key, which initiated this connection) that we committed
    /// to it: it may report it up without waiting for `settle_window`.
    Confirm {
        /// The connection.
        conn: ConnId,
    },
    /// A connection was refused by policy after its handshake (log it once).
    Refused {
        /// The connection.
        conn: ConnId,
        /// The remote key.
        key: PeerKey,
        /// Why.
        reason: RefuseReason,
    },
    /// A `Dial` has its answer.
    DialDone {
        /// The id `handle_dial` returned.
        dial: ConnId,
        /// The peer's key, or why not.
        result: Result<PeerKey, DialError>,
    },
}

/// What `handle_incoming` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingStart {
    /// Accept the handshake; its outcome goes to `handle_established` or
    /// `handle_handshake_failed` with this id.
    Accept(ConnId),
    /// Answer with a stateless QUIC retry: the peer must prove it receives at its address
    /// (it comes back validated). Nothing is kept.
    Retry,
}

/// What `handle_dial` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialStart {
    /// Start a handshake to the address; its outcome goes to `handle_established` or
    /// `handle_handshake_failed` with this id; the answer comes as `DialDone`.
    Dial(ConnId),
    /// The key is already up: the dial succeeds at once.
    Connected(PeerKey),
    /// The key or address is already being dialed or settled: wait for `DialDone` with
    /// this id.
    Wait(ConnId),
}

/// The dedup and dial policy state machine. See the module doc.
#[cfg_attr(test, derive(Clone))]
pub struct ConnCore {
    me: PeerKey,
    config: PolicyConfig,
    rng: StdRng,
    next_id: u64,
    conns: HashMap<ConnId, Conn>,
    current: HashMap<PeerKey, ConnId>,
    challenger: HashMap<PeerKey, ConnId>,
    /// Dial ids waiting for a key to be up.
    key_waiters: HashMap<PeerKey, Vec<(ConnId, Instant)>>,
    /// Dial ids that joined an in-flight dial (same address or pinned key).
    joined: HashMap<ConnId, Vec<ConnId>>,
    backoff: HashMap<SocketAddr, AddrBackoff>,
    bans: HashMap<PeerKey, Instant>,
    /// Marks from `handle_activity`, for keys that are current; a key without one was
    /// never marked (idle since its handshake).
    activity: HashMap<PeerKey, Activity>,
    events: VecDeque<CoreEvent>,
    shut_down: bool,
}

impl fmt::Debug for ConnCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnCore")
            .field("me", &self.me)
            .field("conns", &self.conns.len())
            .field("current", &self.current.len())
            .finish()
    }
}

impl ConnCore {
    /// A core for the node with key `me`.
    pub fn new(me: PeerKey, config: PolicyConfig) -> Self {
        let rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Self {
            me,
            config,
            rng,
            next_id: 0,
            conns: HashMap::new(),
            current: HashMap::new(),
            challenger: HashMap::new(),
            key_waiters: HashMap::new(),
            joined: HashMap::new(),
            backoff: HashMap::new(),
            bans: HashMap::new(),
            activity: HashMap::new(),
            events: VecDeque::new(),
            shut_down: false,
        }
    }

    fn new_id(&mut self) -> ConnId {
        self.next_id += 1;
        ConnId(self.next_id)
    }

    /// The next thing to do, if any. Call until `None` after every `handle_*`.
    pub fn poll_event(&mut self) -> Option<CoreEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let held = self.conns.values().filter_map(|c| match c.phase {
            Phase::Held { until } | Phase::Candidate { until } => Some(until),
            _ => None,
        });
        let waits = self.key_waiters.values().flatten().map(|(_, at)| *at);
        held.chain(waits).min()
    }

    /// Whether `key` is banned at `now`.
    pub fn is_banned(&self, key: &PeerKey, now: Instant) -> bool {
        self.bans.get(key).is_some_and(|until| *until > now)
    }

    /// The connections that are up: (connection, key, initiator, address).
    pub fn peers(&self) -> impl Iterator<Item = (ConnId, PeerKey, Initiator, SocketAddr)> + '_ {
        self.current.iter().filter_map(|(key, id)| {
            let conn = self.conns.get(id)?;
            (conn.phase == Phase::Up).then_some((*id, *key, conn.initiator, conn.addr))
        })
    }

    /// Whether `conn` is a handshake the core is waiting for.
    pub fn is_handshaking(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| matches!(c.phase, Phase::Handshaking { .. }))
    }

    /// The connection that is up for `key`, if any.
    pub fn up(&self, key: &PeerKey) -> Option<ConnId> {
        let id = self.current.get(key)?;
        (self.conns.get(id)?.phase == Phase::Up).then_some(*id)
    }

    /// Time passed: held connections whose settle window ended go up.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<(ConnId, PeerKey)> = self
            .conns
            .iter()
            .filter_map(|(id, c)| match (c.phase, c.key) {
                (Phase::Held { until }, Some(key)) if until <= now => Some((*id, key)),
                _ => None,
            })
            .collect();
        for (id, key) in due {
            // No confirmation came (a peer without it, or a lost datagram): as if it had,
            // but a candidate beside it stays (see `settle`).
            self.settle(id, key, true);
        }
        let stale: Vec<(ConnId, PeerKey)> = self
            .conns
            .iter()
            .filter_map(|(id, c)| match (c.phase, c.key) {
                (Phase::Candidate { until }, Some(key)) if until <= now => Some((*id, key)),
                _ => None,
            })
            .collect();
        for (id, key) in stale {
            // The peer kept both for `dial_wait` (it would have closed one): ours decides.
            if self.challenger.get(&key) == Some(&id) {
                self.challenger.remove(&key);
            }
            self.drop_conn(id, key, CloseReason::Duplicate, DownReason::Duplicate);
        }
        let mut expired = Vec::new();
        for waiters in self.key_waiters.values_mut() {
            waiters.retain(|(id, at)| {
                let keep = *at > now;
                if !keep {
                    expired.push(*id);
                }
                keep
            });
        }
        self.key_waiters.retain(|_, v| !v.is_empty());
        for id in expired {
            self.finish_dial(id, Err(DialError::Timeout));
        }
        self.prune(now);
    }

    /// Forgets expired bans and backoff entries. A failed address is remembered for
    /// `drop_for` after its retry time, so that the schedule keeps escalating when it
    /// keeps failing, and is then forgotten.
    fn prune(&mut self, now: Instant) {
        let keep_for = self.config.drop_for;
        self.bans.retain(|_, until| *until > now);
        let current = &self.current;
        self.activity.retain(|key, _| current.contains_key(key));
        self.backoff.retain(|_, b| {
            if b.dropped {
                b.retry_at > now
            } else {
                b.retry_at + keep_for > now
            }
        });
    }
}

#[cfg(test)]
mod path_tests;
#[cfg(test)]
mod tests;
