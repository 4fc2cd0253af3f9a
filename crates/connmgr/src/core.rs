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
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{
    is_duplicate_close, CloseReason, DialError, DownReason, RefuseReason, CLOSE_DUPLICATE,
    CLOSE_EVICTED, CLOSE_REFUSED,
};
use crate::key::PeerKey;

/// A callback that may refuse a peer by key and address (`false` refuses).
pub type Firewall = Arc<dyn Fn(&PeerKey, SocketAddr) -> bool + Send + Sync>;

/// Names one connection attempt (dial or accept) for its whole life, and one `Dial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// We dialed.
    Local,
    /// The peer dialed us.
    Remote,
}

/// Limits and timings of the policy.
#[derive(Clone)]
pub struct PolicyConfig {
    /// Most peers connected at once (held or up). Our own dials may use all of them;
    /// inbound peers at most `max_peers - reserved_outbound`.
    pub max_peers: usize,
    /// Slots of `max_peers` that inbound peers may not take: kept for the peers we dial
    /// (a user's `connect`, static peers, peers found for a joined topic). At most half of
    /// `max_peers` is reserved, whatever this says, so a small table still takes inbound
    /// peers.
    pub reserved_outbound: usize,
    /// Most inbound peers (held or up) from one IPv4 address or one IPv6 /64.
    pub max_peers_per_ip: usize,
    /// Most dials in their handshake at once.
    pub max_pending_dials: usize,
    /// Most incoming handshakes at once.
    pub max_pending_accepts: usize,
    /// Most incoming handshakes at once from one IPv4 address or one IPv6 /64 whose
    /// address is validated; one more from an address that is not validated is answered
    /// with a QUIC retry instead.
    pub max_pending_per_ip: usize,
    /// From this many incoming handshakes in progress on, a handshake from an address that
    /// is not validated is answered with a stateless QUIC retry (address validation)
    /// instead of being accepted.
    pub retry_above: usize,
    /// An inbound peer that is not marked active (`handle_activity`) may be evicted to
    /// free a slot once it has been connected this long: time to say hello and prove a
    /// namespace first.
    pub eviction_grace: Duration,
    /// Wait after the 1st, 2nd, ... consecutive failure of an address; after the last
    /// one the address is dropped for `drop_for`.
    pub backoff: Vec<Duration>,
    /// Each backoff delay is multiplied by a factor drawn from `1 ± jitter`.
    pub jitter: f64,
    /// How long a dropped address is refused.
    pub drop_for: Duration,
    /// How long a connection initiated by the smaller key is held before `PeerUp` when the
    /// greater key does not confirm it sooner (a peer without confirmations, a lost
    /// datagram), or while a dial of ours to that peer is under way.
    pub settle_window: Duration,
    /// How long a dial that waits for another connection to the same key (one in flight,
    /// or the peer's own dial that beat ours) waits before it fails with `Timeout`.
    pub dial_wait: Duration,
    /// Seed for the jitter RNG (tests); `None` seeds from the OS.
    pub rng_seed: Option<u64>,
    /// Refuses peers by key and address.
    pub firewall: Option<Firewall>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            max_peers: 128,
            // A quarter of the table: as many as the dials a node makes at once
            // (`max_pending_dials`), so a burst of our own dials always finds slots.
            reserved_outbound: 32,
            // Many honest peers can share one NAT address, and tests run many nodes on
            // 127.0.0.1: a quarter of the table, so one address never fills it alone.
            max_peers_per_ip: 32,
            max_pending_dials: 32,
            max_pending_accepts: 64,
            // An eighth of the pending accepts: a handshake takes one round trip or two,
            // so more than a few from one address at once is not one honest node.
            max_pending_per_ip: 8,
            // A quarter of `max_pending_accepts`: below it a handshake costs no extra
            // round trip; above it, spoofed or stalled Initials (each holds a slot for the
            // handshake timeout) cannot fill the rest, since a retry holds no state.
            retry_above: 16,
            // Enough for a hello and a namespace proof on a slow path (a few round trips
            // and the session layer's store calls); short enough that a table filled with
            // idle keys frees a slot within seconds.
            eviction_grace: Duration::from_secs(10),
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(15),
            ],
            jitter: 0.2,
            drop_for: Duration::from_secs(600),
            // A few loopback or LAN round trips plus scheduling slack on a loaded machine;
            // only connections initiated by the smaller key and not confirmed pay it.
            settle_window: Duration::from_millis(250),
            // A handshake timeout plus the settle window.
            dial_wait: Duration::from_secs(11),
            rng_seed: None,
            firewall: None,
        }
    }
}

impl fmt::Debug for PolicyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyConfig")
            .field("max_peers", &self.max_peers)
            .field("reserved_outbound", &self.reserved_outbound)
            .field("max_peers_per_ip", &self.max_peers_per_ip)
            .field("max_pending_dials", &self.max_pending_dials)
            .field("max_pending_accepts", &self.max_pending_accepts)
            .field("max_pending_per_ip", &self.max_pending_per_ip)
            .field("retry_above", &self.retry_above)
            .field("eviction_grace", &self.eviction_grace)
            .field("backoff", &self.backoff)
            .field("jitter", &self.jitter)
            .field("drop_for", &self.drop_for)
            .field("settle_window", &self.settle_window)
            .field("dial_wait", &self.dial_wait)
            .field("rng_seed", &self.rng_seed)
            .field("firewall", &self.firewall.is_some())
            .finish()
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
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
struct Conn {
    addr: SocketAddr,
    initiator: Initiator,
    key: Option<PeerKey>,
    phase: Phase,
    /// The peer proved it receives at `addr` (QUIC address validation); always true for
    /// our dials.
    validated: bool,
    /// When the handshake finished (the eviction grace period counts from here).
    since: Option<Instant>,
}

/// What the layer above said about a peer (`handle_activity`).
#[derive(Debug, Clone, Copy)]
struct Activity {
    active: bool,
    /// When it was last marked idle.
    idle_since: Instant,
}

/// Connections are grouped by source for the per-address caps: one IPv4 address, or one
/// IPv6 /64 (what one host or one site usually gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IpGroup {
    V4(Ipv4Addr),
    V6([u8; 8]),
}

impl IpGroup {
    fn of(addr: SocketAddr) -> IpGroup {
        match addr.ip() {
            IpAddr::V4(v4) => IpGroup::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpGroup::V4(v4),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    IpGroup::V6(prefix)
                }
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct AddrBackoff {
    failures: usize,
    retry_at: Instant,
    dropped: bool,
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

    fn handshaking_dials(&self) -> usize {
        self.conns
            .values()
            .filter(|c| {
                c.initiator == Initiator::Local && matches!(c.phase, Phase::Handshaking { .. })
            })
            .count()
    }

    /// A request to dial `addr`, pinned to `expected` if given.
    pub fn handle_dial(
        &mut self,
        addr: SocketAddr,
        expected: Option<PeerKey>,
        now: Instant,
    ) -> Result<DialStart, DialError> {
        if self.shut_down {
            return Err(DialError::Shutdown);
        }
        if let Some(key) = expected {
            if key == self.me {
                return Err(RefuseReason::SelfConnection.into());
            }
            if self.is_banned(&key, now) {
                return Err(RefuseReason::Banned(key).into());
            }
            if self.up(&key).is_some() {
                return Ok(DialStart::Connected(key));
            }
            let dialing = self.conns.values().any(|c| {
                c.phase
                    == Phase::Handshaking {
                        expected: Some(key),
                    }
                    || (c.key == Some(key) && c.phase != Phase::Up)
            });
            if dialing || self.current.contains_key(&key) {
                let id = self.new_id();
                self.wait_for_key(key, id, now);
                return Ok(DialStart::Wait(id));
            }
        }
        // A peer already connected (or settling) at this address: no second connection.
        // Every node dials and listens on one socket, so a peer's address is the same
        // whichever side dialed; discovery hands out addresses without keys, and a
        // redial must not replace a working connection.
        let at_addr = self.current.iter().find_map(|(key, id)| {
            let c = self.conns.get(id)?;
            (c.addr == addr && expected.is_none_or(|e| e == *key)).then_some((*key, c.phase))
        });
        match at_addr {
            Some((key, Phase::Up)) => return Ok(DialStart::Connected(key)),
            Some((key, _)) => {
                let id = self.new_id();
                self.wait_for_key(key, id, now);
                return Ok(DialStart::Wait(id));
            }
            None => {}
        }
        self.prune(now);
        // Join a dial already in flight to the same address with the same pin (or none):
        // its answer is then exactly the answer this dial would get.
        let same_addr = self.conns.iter().find_map(|(id, c)| {
            (c.addr == addr
                && c.initiator == Initiator::Local
                && c.phase == Phase::Handshaking { expected })
            .then_some(*id)
        });
        if let Some(in_flight) = same_addr {
            let id = self.new_id();
            self.joined.entry(in_flight).or_default().push(id);
            return Ok(DialStart::Wait(id));
        }
        self.check_backoff(addr, now)?;
        if self.handshaking_dials() >= self.config.max_pending_dials {
            return Err(RefuseReason::TooManyPending(self.config.max_pending_dials).into());
        }
        // Every dial of ours is wanted: an idle inbound peer makes room for it when its
        // handshake is done (`handle_established`).
        if self.current.len() + self.handshaking_dials()
            >= self.config.max_peers + self.evictable(now).len()
        {
            return Err(RefuseReason::TooManyPeers(self.config.max_peers).into());
        }
        let id = self.new_id();
        self.conns.insert(
            id,
            Conn {
                addr,
                initiator: Initiator::Local,
                key: None,
                phase: Phase::Handshaking { expected },
                validated: true,
                since: None,
            },
        );
        Ok(DialStart::Dial(id))
    }

    /// A peer at `addr` started a handshake with us; `validated` says whether it proved
    /// it receives at `addr` (quinn's `Incoming::remote_address_validated`: a retry token).
    ///
    /// Not validated: answered with a retry when `retry_above` handshakes are in
    /// progress, or when `max_pending_per_ip` from its address are (the address may be
    /// spoofed: only a validated one is refused for its address). Validated: refused when
    /// `max_pending_accepts` are in progress, or `max_pending_per_ip` validated ones from
    /// its address.
    pub fn handle_incoming(
        &mut self,
        addr: SocketAddr,
        validated: bool,
    ) -> Result<IncomingStart, RefuseReason> {
        let max_pending = self.config.max_pending_accepts;
        if self.shut_down {
            return Err(RefuseReason::TooManyPending(max_pending));
        }
        let group = IpGroup::of(addr);
        let (mut pending, mut from_ip, mut validated_from_ip) = (0, 0, 0);
        for c in self.conns.values() {
            if c.initiator == Initiator::Remote && matches!(c.phase, Phase::Handshaking { .. }) {
                pending += 1;
                if IpGroup::of(c.addr) == group {
                    from_ip += 1;
                    validated_from_ip += usize::from(c.validated);
                }
            }
        }
        if !validated
            && (pending >= self.config.retry_above || from_ip >= self.config.max_pending_per_ip)
        {
            return Ok(IncomingStart::Retry);
        }
        if pending >= max_pending {
            return Err(RefuseReason::TooManyPending(max_pending));
        }
        if validated && validated_from_ip >= self.config.max_pending_per_ip {
            return Err(RefuseReason::TooManyPendingFromIp(
                self.config.max_pending_per_ip,
            ));
        }
        let id = self.new_id();
        self.conns.insert(
            id,
            Conn {
                addr,
                initiator: Initiator::Remote,
                key: None,
                phase: Phase::Handshaking { expected: None },
                validated,
                since: None,
            },
        );
        Ok(IncomingStart::Accept(id))
    }

    /// The layer above says whether the peer `key` is active (shares a namespace with us,
    /// or moves feed traffic) or idle. An inbound peer that is not active, connected for
    /// longer than `eviction_grace`, may be evicted when a slot is needed, the one idle
    /// longest first. Returns whether `key` has a connection (held or up).
    pub fn handle_activity(&mut self, key: PeerKey, active: bool, now: Instant) -> bool {
        if !self.current.contains_key(&key) {
            return false;
        }
        match self.activity.get_mut(&key) {
            Some(a) if a.active == active => {}
            Some(a) => {
                a.active = active;
                a.idle_since = now;
            }
            None => {
                self.activity.insert(
                    key,
                    Activity {
                        active,
                        idle_since: now,
                    },
                );
            }
        }
        true
    }

    /// Inbound peers that may be evicted at `now`, the one idle longest first: up, not
    /// marked active, connected for `eviction_grace` at least, and not being probed
    /// against a newcomer of the same key.
    fn evictable(&self, now: Instant) -> Vec<(Instant, ConnId, PeerKey)> {
        let grace = self.config.eviction_grace;
        let mut idle: Vec<(Instant, ConnId, PeerKey)> = self
            .current
            .iter()
            .filter_map(|(key, id)| {
                let c = self.conns.get(id)?;
                let since = c.since?;
                if c.initiator != Initiator::Remote
                    || c.phase != Phase::Up
                    || since + grace > now
                    || self.challenger.contains_key(key)
                {
                    return None;
                }
                match self.activity.get(key) {
                    Some(a) if a.active => None,
                    Some(a) => Some((a.idle_since.max(since), *id, *key)),
                    None => Some((since, *id, *key)),
                }
            })
            .collect();
        idle.sort();
        idle
    }

    /// Evicts the inbound peer idle longest, if one may be; returns whether one was.
    fn evict_one(&mut self, now: Instant) -> bool {
        let Some((_, conn, key)) = self.evictable(now).first().copied() else {
            return false;
        };
        self.drop_conn(conn, key, CloseReason::Evicted, DownReason::Evicted);
        self.activity.remove(&key);
        true
    }

    /// Inbound connections (held or up) now, in total and from `group`.
    fn inbound(&self, group: IpGroup) -> (usize, usize) {
        let mut total = 0;
        let mut from_ip = 0;
        for id in self.current.values() {
            if let Some(c) = self.conns.get(id) {
                if c.initiator == Initiator::Remote {
                    total += 1;
                    from_ip += usize::from(IpGroup::of(c.addr) == group);
                }
            }
        }
        (total, from_ip)
    }

    /// How many inbound peers may be connected: `max_peers` less the reserved slots (at
    /// most half of them).
    fn inbound_limit(&self) -> usize {
        let max = self.config.max_peers;
        max - self.config.reserved_outbound.min(max / 2)
    }

    /// Whether a new peer (a key not current) on `conn` gets a slot, evicting an idle
    /// inbound peer if it must; the refusal if not.
    fn take_slot(
        &mut self,
        addr: SocketAddr,
        initiator: Initiator,
        now: Instant,
    ) -> Option<RefuseReason> {
        let max = self.config.max_peers;
        if initiator == Initiator::Local {
            if self.current.len() >= max && !self.evict_one(now) {
                return Some(RefuseReason::TooManyPeers(max));
            }
            return None;
        }
        let (inbound, from_ip) = self.inbound(IpGroup::of(addr));
        if from_ip >= self.config.max_peers_per_ip {
            return Some(RefuseReason::TooManyPeersFromIp(
                self.config.max_peers_per_ip,
            ));
        }
        let limit = self.inbound_limit();
        let full = if self.current.len() >= max {
            Some(RefuseReason::TooManyPeers(max))
        } else if inbound >= limit {
            Some(RefuseReason::TooManyInbound(limit))
        } else {
            None
        };
        match full {
            Some(reason) if !self.evict_one(now) => Some(reason),
            _ => None,
        }
    }

    /// The handshake of `conn` failed (or timed out) with `error`.
    pub fn handle_handshake_failed(&mut self, conn: ConnId, error: DialError, now: Instant) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if c.initiator == Initiator::Local {
            // A peer that refused us by policy is not an unreachable address, but it does
            // not want us now either: back off all the same.
            self.backoff_failure(c.addr, now);
            self.finish_dial(conn, Err(error.clone()));
            if let Phase::Handshaking {
                expected: Some(key),
            } = c.phase
            {
                if !self.key_in_flight(&key) {
                    self.resolve_key_waiters(key, Err(error));
                }
            }
            self.commit_held();
        }
    }

    /// Connections the smaller key initiated that we hold only because a dial of ours was
    /// under way: with that dial gone, we commit to them now.
    fn commit_held(&mut self) {
        let ready: Vec<(ConnId, PeerKey)> = self
            .conns
            .iter()
            .filter_map(|(id, c)| match (c.phase, c.key) {
                (Phase::Held { .. }, Some(key))
                    if c.initiator == Initiator::Remote
                        && key < self.me
                        && !self.dial_pending_to(key, c.addr) =>
                {
                    Some((*id, key))
                }
                _ => None,
            })
            .collect();
        for (id, key) in ready {
            self.settle(id, key, false);
        }
    }

    /// The handshake of dial `conn` ended because the peer closed it as a duplicate: the
    /// peer has another connection to us (it dialed us at the same time). Not a failure:
    /// the dial waits for `key` (pinned, or seen in the handshake) to come up.
    pub fn handle_handshake_duplicate(
        &mut self,
        conn: ConnId,
        key: Option<PeerKey>,
        error: quinn::ConnectionError,
        now: Instant,
    ) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if c.initiator != Initiator::Local {
            return;
        }
        let expected = match c.phase {
            Phase::Handshaking { expected } => expected,
            _ => None,
        };
        match key.or(expected) {
            Some(key) => {
                self.wait_for_key(key, conn, now);
                if self.up(&key).is_some() {
                    self.resolve_key_waiters(key, Ok(key));
                }
            }
            None => self.finish_dial(conn, Err(DialError::Connection(error))),
        }
    }

    fn wait_for_key(&mut self, key: PeerKey, dial: ConnId, now: Instant) {
        self.key_waiters
            .entry(key)
            .or_default()
            .push((dial, now + self.config.dial_wait));
    }

    fn key_in_flight(&self, key: &PeerKey) -> bool {
        self.current.contains_key(key)
            || self.conns.values().any(|c| {
                c.phase
                    == Phase::Handshaking {
                        expected: Some(*key),
                    }
            })
    }

    /// The handshake of `conn` finished: the peer proved `key`.
    pub fn handle_established(&mut self, conn: ConnId, key: PeerKey, now: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !matches!(c.phase, Phase::Handshaking { .. }) {
            return;
        }
        c.key = Some(key);
        c.since = Some(now);
        let addr = c.addr;
        let initiator = c.initiator;
        if initiator == Initiator::Local {
            self.backoff.remove(&addr);
            self.wait_for_key(key, conn, now);
        }
        let refusal = if key == self.me {
            Some(RefuseReason::SelfConnection)
        } else if self.is_banned(&key, now) {
            Some(RefuseReason::Banned(key))
        } else if self
            .config
            .firewall
            .as_ref()
            .is_some_and(|allow| !allow(&key, addr))
        {
            Some(RefuseReason::Firewall)
        } else if !self.current.contains_key(&key) {
            self.take_slot(addr, initiator, now)
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.conns.remove(&conn);
            self.events.push_back(CoreEvent::Refused {
                conn,
                key,
                reason: reason.clone(),
            });
            self.events.push_back(CoreEvent::Close {
                conn,
                reason: CloseReason::Refused(reason.clone()),
            });
            if self.up(&key).is_some() {
                self.resolve_key_waiters(key, Ok(key));
            } else if !self.current.contains_key(&key) {
                self.resolve_key_waiters(key, Err(reason.into()));
            }
            return;
        }
        match self.current.get(&key).copied() {
            None => self.install(conn, key, now),
            Some(old) => {
                let old_phase = self.conns.get(&old).map(|c| c.phase);
                if self.initiator_key(conn, key) > self.initiator_key(old, key) {
                    self.drop_conn(old, key, CloseReason::Duplicate, DownReason::Duplicate);
                    if let Some(ch) = self.challenger.remove(&key) {
                        self.drop_conn(ch, key, CloseReason::Duplicate, DownReason::Duplicate);
                    }
                    self.install(conn, key, now);
                } else if matches!(old_phase, Some(Phase::Held { .. } | Phase::Up))
                    && key > self.me
                    && initiator == Initiator::Local
                    && self.conns.get(&old).map(|o| o.initiator) == Some(Initiator::Local)
                    && !self.challenger.contains_key(&key)
                {
                    // Two of ours to the greater key: it decides which one it keeps, and
                    // confirms that one or closes the other (its confirmation may be
                    // lost, and our window may have ended: the first one may be up).
                    let until = now + self.config.dial_wait;
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.phase = Phase::Candidate { until };
                    }
                    self.challenger.insert(key, conn);
                } else if old_phase == Some(Phase::Up) && !self.challenger.contains_key(&key) {
                    // Loses or ties by keys: the peer may have restarted. Probe the old one.
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.phase = Phase::Challenger;
                    }
                    self.challenger.insert(key, conn);
                    self.events.push_back(CoreEvent::Probe { conn: old });
                } else {
                    // The current one is fresh (held) or being probed already.
                    self.drop_conn(conn, key, CloseReason::Duplicate, DownReason::Duplicate);
                }
            }
        }
        if self.up(&key).is_some() {
            self.resolve_key_waiters(key, Ok(key));
        }
    }

    /// The probe of `conn` (the current connection of a key with a challenger) answered.
    pub fn handle_probe_result(&mut self, conn: ConnId, alive: bool, now: Instant) {
        let Some(key) = self.conns.get(&conn).and_then(|c| c.key) else {
            return;
        };
        if self.current.get(&key) != Some(&conn) {
            return;
        }
        let Some(ch) = self.challenger.remove(&key) else {
            return;
        };
        if alive {
            self.drop_conn(ch, key, CloseReason::Duplicate, DownReason::Duplicate);
        } else {
            self.drop_conn(conn, key, CloseReason::Replaced, DownReason::Replaced);
            self.current.insert(key, ch);
            self.set_up(ch, key);
        }
        let _ = now;
    }

    /// The peer confirmed `conn`: it has the greater key, we initiated `conn`, and the
    /// peer committed to it (see the module doc). Anything else is ignored.
    pub fn handle_confirmed(&mut self, conn: ConnId, now: Instant) {
        let _ = now;
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let Some(key) = c.key else {
            return;
        };
        if c.initiator != Initiator::Local || key < self.me {
            return;
        }
        match c.phase {
            Phase::Held { .. } => self.settle(conn, key, false),
            Phase::Candidate { .. } | Phase::Challenger => {
                self.challenger.remove(&key);
                if let Some(old) = self.current.get(&key).copied() {
                    // Held: the peer kept the other one of ours. Up: the peer dropped the
                    // old one (it restarted, or found it dead).
                    let (close, down) = if self.conns.get(&old).map(|o| o.phase) == Some(Phase::Up)
                    {
                        (CloseReason::Replaced, DownReason::Replaced)
                    } else {
                        (CloseReason::Duplicate, DownReason::Duplicate)
                    };
                    self.drop_conn(old, key, close, down);
                }
                self.current.insert(key, conn);
                self.set_up(conn, key);
                self.resolve_key_waiters(key, Ok(key));
            }
            Phase::Handshaking { .. } | Phase::Up => {}
        }
    }

    /// `conn` closed (by the peer, by idle timeout, or after we closed it).
    pub fn handle_closed(&mut self, conn: ConnId, error: quinn::ConnectionError, now: Instant) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let Some(key) = c.key else {
            // Closed during its handshake.
            self.conns.insert(conn, c);
            self.handle_handshake_failed(conn, DialError::Connection(error), now);
            return;
        };
        match c.phase {
            Phase::Handshaking { .. } => {}
            Phase::Challenger | Phase::Candidate { .. } => {
                self.challenger.remove(&key);
            }
            Phase::Held { .. } | Phase::Up => {
                if self.current.get(&key) == Some(&conn) {
                    self.current.remove(&key);
                }
                // An eviction is the peer's refusal to keep us: the same for us (back
                // off, no redial), with its own text.
                let refused_by_peer = match &error {
                    quinn::ConnectionError::ApplicationClosed(close)
                        if close.error_code == CLOSE_REFUSED
                            || close.error_code == CLOSE_EVICTED =>
                    {
                        Some(String::from_utf8_lossy(&close.reason).into_owned())
                    }
                    _ => None,
                };
                if refused_by_peer.is_some() {
                    // Do not come straight back to a peer that refused us.
                    self.backoff_failure(c.addr, now);
                }
                if c.phase == Phase::Up {
                    let reason = match (&error, &refused_by_peer) {
                        (_, Some(text)) => DownReason::RefusedByPeer(text.clone()),
                        (quinn::ConnectionError::ApplicationClosed(close), _)
                            if close.error_code == CLOSE_DUPLICATE =>
                        {
                            DownReason::Duplicate
                        }
                        (other, _) => DownReason::Lost(other.clone()),
                    };
                    self.events
                        .push_back(CoreEvent::PeerDown { conn, key, reason });
                }
                if let Some(ch) = self.challenger.remove(&key) {
                    // The probed connection died before its probe answered.
                    self.current.insert(key, ch);
                    self.set_up(ch, key);
                } else if !self.current.contains_key(&key) && !is_duplicate_close(&error) {
                    // (Closed by the peer as a duplicate: the peer's own connection to us
                    // is coming, and the dials for this key wait for it.)
                    let result = match refused_by_peer {
                        Some(text) => DialError::RefusedByPeer(text),
                        None => DialError::Connection(error.clone()),
                    };
                    self.resolve_key_waiters(key, Err(result));
                }
                if !self.current.contains_key(&key) {
                    self.activity.remove(&key);
                }
            }
        }
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

    /// Close the connection to `key` on request. Returns whether there was one.
    pub fn close(&mut self, key: PeerKey) -> bool {
        let mut any = false;
        if let Some(ch) = self.challenger.remove(&key) {
            self.drop_conn(ch, key, CloseReason::Requested, DownReason::Closed);
            any = true;
        }
        if let Some(cur) = self.current.remove(&key) {
            self.drop_conn(cur, key, CloseReason::Requested, DownReason::Closed);
            any = true;
        }
        self.resolve_key_waiters(
            key,
            Err(DialError::Connection(quinn::ConnectionError::LocallyClosed)),
        );
        self.activity.remove(&key);
        any
    }

    /// Ban `key` until `now + duration`, closing its connections.
    pub fn ban(&mut self, key: PeerKey, duration: Duration, now: Instant) {
        self.bans.insert(key, now + duration);
        let reason = CloseReason::Refused(RefuseReason::Banned(key));
        if let Some(ch) = self.challenger.remove(&key) {
            self.drop_conn(ch, key, reason.clone(), DownReason::Banned);
        }
        if let Some(cur) = self.current.remove(&key) {
            self.drop_conn(cur, key, reason, DownReason::Banned);
        }
        self.resolve_key_waiters(key, Err(RefuseReason::Banned(key).into()));
        self.activity.remove(&key);
    }

    /// Close everything; every later dial or accept is refused.
    pub fn shutdown(&mut self) {
        self.shut_down = true;
        let keys: Vec<PeerKey> = self.current.keys().copied().collect();
        for key in keys {
            if let Some(ch) = self.challenger.remove(&key) {
                self.drop_conn(ch, key, CloseReason::Shutdown, DownReason::Shutdown);
            }
            if let Some(cur) = self.current.remove(&key) {
                self.drop_conn(cur, key, CloseReason::Shutdown, DownReason::Shutdown);
            }
        }
        let dials: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.initiator == Initiator::Local)
            .map(|(id, _)| *id)
            .collect();
        for id in dials {
            self.finish_dial(id, Err(DialError::Shutdown));
        }
        let waiting: Vec<ConnId> = self
            .key_waiters
            .drain()
            .flat_map(|(_, v)| v.into_iter().map(|(id, _)| id))
            .collect();
        for id in waiting {
            self.finish_dial(id, Err(DialError::Shutdown));
        }
        let joined: Vec<ConnId> = self.joined.drain().flat_map(|(_, v)| v).collect();
        for id in joined {
            self.events.push_back(CoreEvent::DialDone {
                dial: id,
                result: Err(DialError::Shutdown),
            });
        }
        self.conns.clear();
        self.activity.clear();
    }

    fn initiator_key(&self, conn: ConnId, remote: PeerKey) -> PeerKey {
        match self.conns.get(&conn).map(|c| c.initiator) {
            Some(Initiator::Local) => self.me,
            _ => remote,
        }
    }

    fn install(&mut self, conn: ConnId, key: PeerKey, now: Instant) {
        self.current.insert(key, conn);
        let commit = key < self.me
            && self
                .conns
                .get(&conn)
                .is_some_and(|c| !self.dial_pending_to(key, c.addr));
        if self.initiator_key(conn, key) == self.me.max(key) || commit {
            self.set_up(conn, key);
        } else if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = Phase::Held {
                until: now + self.config.settle_window,
            };
        }
    }

    /// Whether a dial of ours that could reach `key` is in its handshake: pinned to
    /// `key`, or to `addr` (where `key` reached us: one socket per node, so its address).
    fn dial_pending_to(&self, key: PeerKey, addr: SocketAddr) -> bool {
        self.conns.values().any(|c| {
            c.initiator == Initiator::Local
                && match c.phase {
                    Phase::Handshaking { expected } => {
                        expected == Some(key) || (expected.is_none() && c.addr == addr)
                    }
                    _ => false,
                }
        })
    }

    /// `conn` goes up. When the peer has the smaller key and initiated it, we commit to it
    /// and tell the peer first.
    fn set_up(&mut self, conn: ConnId, key: PeerKey) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = Phase::Up;
            if c.initiator == Initiator::Remote && key < self.me {
                self.events.push_back(CoreEvent::Confirm { conn });
            }
            self.events.push_back(CoreEvent::PeerUp { conn, key });
        }
    }

    /// The held `conn` is the one for `key`: up. A candidate beside it is closed when the
    /// peer confirmed `conn`; when the window ended without a confirmation (`unconfirmed`)
    /// the peer may have committed to the candidate (its confirmation lost) and be about
    /// to close `conn` as a duplicate, so the candidate stays as the challenger: whichever
    /// of the two the peer closes, `handle_closed` leaves us on the other one, and a late
    /// confirmation of the candidate switches to it (`handle_confirmed`).
    fn settle(&mut self, conn: ConnId, key: PeerKey, unconfirmed: bool) {
        self.set_up(conn, key);
        if !unconfirmed {
            self.drop_candidate(key);
        }
        self.resolve_key_waiters(key, Ok(key));
    }

    fn drop_candidate(&mut self, key: PeerKey) {
        let candidate = self.challenger.get(&key).copied().filter(|ch| {
            self.conns
                .get(ch)
                .is_some_and(|c| matches!(c.phase, Phase::Candidate { .. }))
        });
        if let Some(ch) = candidate {
            self.challenger.remove(&key);
            self.drop_conn(ch, key, CloseReason::Duplicate, DownReason::Duplicate);
        }
    }

    /// Forget `conn` and close it; report `PeerDown` if it was up.
    fn drop_conn(&mut self, conn: ConnId, key: PeerKey, close: CloseReason, down: DownReason) {
        if self.current.get(&key) == Some(&conn) {
            self.current.remove(&key);
        }
        if let Some(c) = self.conns.remove(&conn) {
            if c.phase == Phase::Up {
                self.events.push_back(CoreEvent::PeerDown {
                    conn,
                    key,
                    reason: down,
                });
            }
            self.events.push_back(CoreEvent::Close {
                conn,
                reason: close,
            });
        }
    }

    fn resolve_key_waiters(&mut self, key: PeerKey, result: Result<PeerKey, DialError>) {
        for (id, _) in self.key_waiters.remove(&key).unwrap_or_default() {
            self.finish_dial(id, result.clone());
        }
    }

    fn finish_dial(&mut self, dial: ConnId, result: Result<PeerKey, DialError>) {
        for id in self.joined.remove(&dial).unwrap_or_default() {
            self.events.push_back(CoreEvent::DialDone {
                dial: id,
                result: result.clone(),
            });
        }
        self.events.push_back(CoreEvent::DialDone { dial, result });
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

    fn check_backoff(&mut self, addr: SocketAddr, now: Instant) -> Result<(), DialError> {
        let Some(b) = self.backoff.get(&addr).copied() else {
            return Ok(());
        };
        if b.retry_at > now {
            let retry_in = b.retry_at - now;
            return Err(if b.dropped {
                DialError::GaveUp { retry_in }
            } else {
                DialError::Backoff { retry_in }
            });
        }
        if b.dropped {
            self.backoff.remove(&addr);
        }
        Ok(())
    }

    fn backoff_failure(&mut self, addr: SocketAddr, now: Instant) {
        let entry = self.backoff.entry(addr).or_insert(AddrBackoff {
            failures: 0,
            retry_at: now,
            dropped: false,
        });
        if entry.dropped {
            *entry = AddrBackoff {
                failures: 0,
                retry_at: now,
                dropped: false,
            };
        }
        entry.failures += 1;
        match self.config.backoff.get(entry.failures - 1) {
            Some(delay) => {
                let j = self.config.jitter.clamp(0.0, 0.99);
                let factor = if j > 0.0 {
                    self.rng.gen_range(1.0 - j..1.0 + j)
                } else {
                    1.0
                };
                entry.retry_at = now + delay.mul_f64(factor);
            }
            None => {
                entry.dropped = true;
                entry.retry_at = now + self.config.drop_for;
            }
        }
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
