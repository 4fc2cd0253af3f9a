//! [`PeerLifecycle`]: what the node does about each peer, without I/O. See the module
//! documentation of [`lifecycle`](super) for the rules.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replic8::keys::Role;
use replic8::session::EndReason;
use replic8_connmgr::{DialError, DownReason, Initiator, PeerKey};
use replic8_discovery::{PeerSource, Topic};
use tracing::{debug, info, warn};

use super::rules::{
    after_down, after_session_end, next_after, redial_delay, AfterDown, Next, STABLE,
};
use crate::config::LimitsSection;
use crate::events::NodeEvent;

/// Each of our own redial waits is multiplied by a factor drawn from `1 ± REDIAL_JITTER`,
/// so that redials refused together by our limits (or peers that dropped together) do
/// not come back in step. The connection manager's backoff is jittered already.
pub(crate) const REDIAL_JITTER: f64 = 0.2;

/// The settings of a [`PeerLifecycle`].
#[derive(Debug, Clone)]
pub(crate) struct LifecycleConfig {
    /// Our QUIC address: a found peer at this address is ourselves.
    pub(crate) local: SocketAddr,
    /// How long a misbehaving peer is banned; zero bans no one.
    pub(crate) ban_for: Duration,
    /// Each of our own redial waits is multiplied by a factor drawn from `1 ± jitter`.
    pub(crate) jitter: f64,
    /// Seed for the jitter (tests); `None` seeds from the OS.
    pub(crate) rng_seed: Option<u64>,
    /// Most peers kept for one topic: those up or redialed for it and the dials in
    /// flight for it (`limits.max_peers_per_topic`). A peer found beyond that is
    /// reported tried without a dial.
    pub(crate) max_per_topic: usize,
}

impl LifecycleConfig {
    /// The node's settings: our address `local`, bans and the per-topic bound from
    /// `limits`, [`REDIAL_JITTER`] drawn from an RNG seeded by the OS.
    pub(crate) fn new(local: SocketAddr, limits: &LimitsSection) -> Self {
        LifecycleConfig {
            local,
            ban_for: Duration::from_secs(limits.ban_secs),
            jitter: REDIAL_JITTER,
            rng_seed: None,
            max_per_topic: limits.max_peers_per_topic,
        }
    }
}

/// Names one `Dial` the core asked for, until [`PeerLifecycle::handle_dialed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct DialId(pub(crate) u64);

/// What the core asks its driver to do, from [`PeerLifecycle::poll_action`]. `C` is the
/// connection handle a session runs on (`quinn::Connection` in the node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action<C> {
    /// Dial `addr` (with `key` pinned if given) and report the answer with
    /// [`PeerLifecycle::handle_dialed`].
    Dial {
        /// Names the dial.
        id: DialId,
        /// Where.
        addr: SocketAddr,
        /// The key expected there (a redial), or none (a found peer).
        key: Option<PeerKey>,
    },
    /// Close the connection to `key`.
    Close {
        /// The peer.
        key: PeerKey,
    },
    /// Ban `key` for `duration` (which closes its connection); once the ban is held,
    /// report `NodeEvent::PeerBanned`.
    Ban {
        /// The peer.
        key: PeerKey,
        /// How long.
        duration: Duration,
        /// Its session's end reason, in words.
        reason: String,
    },
    /// Start a session on `connection`.
    StartSession {
        /// The peer.
        peer: PeerKey,
        /// The connection.
        connection: C,
        /// We dialed ↔ `Role::Dialer`.
        role: Role,
    },
    /// Stop the session with `peer`.
    StopSession {
        /// The peer.
        peer: PeerKey,
        /// Why, in words.
        reason: String,
    },
    /// Tell discovery that the peer it found at `addr` for `topic` was tried (what
    /// `flushed` waits for).
    PeerTried {
        /// The topic whose lookup found it.
        topic: Topic,
        /// Its address.
        addr: SocketAddr,
    },
    /// Report a node event (`PeerUp`, `PeerDown`).
    Event(NodeEvent),
}

/// What a connection is for: not closed while some of it remains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Purpose {
    /// Topics whose lookups found and dialed it.
    topics: HashSet<Topic>,
    /// Dialed on request (`connect`): not closed when a topic is left.
    requested: bool,
}

impl Purpose {
    fn merge(&mut self, other: Purpose) {
        self.topics.extend(other.topics);
        self.requested |= other.requested;
    }

    fn needed(&self) -> bool {
        !self.topics.is_empty() || self.requested
    }
}

/// A peer that is up.
#[derive(Debug)]
struct Up {
    /// `stable_id` of the connection its session runs on.
    connection: usize,
    /// Its address on that connection.
    addr: SocketAddr,
    /// Who dialed that connection.
    initiator: Initiator,
    /// When it came up.
    since: Instant,
    /// Its session ended in a way that redials ([`after_session_end`]: our `timeout`, the
    /// peer's bare close or `timeout`) before its `PeerDown` arrived (the last session
    /// end reported wins).
    end_redials: bool,
    /// Its redial was cancelled (`disconnect`, a ban, a left topic) while it was up: its
    /// loss is not redialed, whatever its session's end says.
    cancelled: bool,
    purpose: Purpose,
}

/// A connection we dialed and lost, while it may be redialed.
#[derive(Debug)]
struct Lost {
    /// The peer's address on it.
    addr: SocketAddr,
    /// When it had come up.
    since: Instant,
    /// What it was for: the redialed connection is for the same.
    purpose: Purpose,
    state: Redial,
}

/// Where a redial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Redial {
    /// Our own session closed the connection: its end decides, in whichever order the
    /// two arrive (an end seen before the `PeerDown` may be that of a replaced session).
    AwaitEnd,
    /// To be dialed at `at`; `limited` counts refusals by our own limits so far.
    Waiting { at: Instant, limited: u32 },
    /// A `Dial` is in flight.
    Dialing { dial: DialId, limited: u32 },
}

/// What a dial in flight is for.
#[derive(Debug)]
enum DialFor {
    /// A peer discovery found for `topic`.
    Found { topic: Topic, addr: SocketAddr },
    /// The redial of `key`.
    Redial { key: PeerKey },
    /// A redial cancelled while in flight: what it brings up is closed again.
    Cancelled,
}

/// The peer lifecycle, sans I/O. See the module documentation.
#[derive(Debug)]
pub(crate) struct PeerLifecycle<C> {
    config: LifecycleConfig,
    rng: StdRng,
    /// Peers up now.
    up: HashMap<PeerKey, Up>,
    /// What peers whose dial answered before their `PeerUp` arrived (the two travel
    /// separately) are for; merged into `up` at the `PeerUp`.
    early: HashMap<PeerKey, Purpose>,
    /// Connections we dialed and lost, being (or about to be) redialed.
    lost: HashMap<PeerKey, Lost>,
    /// Losses in a row of short-lived connections, per peer we redial.
    short_losses: HashMap<PeerKey, u32>,
    /// Dials in flight.
    dials: HashMap<DialId, DialFor>,
    next_dial: u64,
    /// Redials started so far.
    redials_started: u64,
    closing: bool,
    actions: VecDeque<Action<C>>,
}

impl<C> PeerLifecycle<C> {
    /// A core with no peer.
    pub(crate) fn new(config: LifecycleConfig) -> Self {
        let rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        PeerLifecycle {
            config,
            rng,
            up: HashMap::new(),
            early: HashMap::new(),
            lost: HashMap::new(),
            short_losses: HashMap::new(),
            dials: HashMap::new(),
            next_dial: 0,
            redials_started: 0,
            closing: false,
            actions: VecDeque::new(),
        }
    }

    /// The next thing to do, in the order the core decided them.
    pub(crate) fn poll_action(&mut self) -> Option<Action<C>> {
        self.actions.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next: the earliest redial
    /// waiting to be dialed. Every redial is dialed from `handle_timeout`, also one due
    /// at once (its deadline is the instant it was decided), so that a cancel handled
    /// before the driver's timer fires (a `leave` right after the loss) sends no dial.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.lost
            .values()
            .filter_map(|l| match l.state {
                Redial::Waiting { at, .. } => Some(at),
                _ => None,
            })
            .min()
    }

    /// How many peers are up.
    pub(crate) fn peers_up(&self) -> usize {
        self.up.len()
    }

    /// The peers being redialed: about to dial, dialing, or waiting out a backoff (not
    /// those whose session's end is still to decide).
    pub(crate) fn redialing(&self) -> Vec<PeerKey> {
        self.lost
            .iter()
            .filter(|(_, l)| l.state != Redial::AwaitEnd)
            .map(|(key, _)| *key)
            .collect()
    }

    /// How many redials were started so far.
    #[cfg(test)]
    pub(crate) fn redials_started(&self) -> u64 {
        self.redials_started
    }

    /// Discovery found a peer at `addr` for `topic`: dial it (no pinned key: discovery
    /// carries none, and the connection manager deduplicates by key and address), unless
    /// it is ourselves, the node is closing, or the topic has its
    /// [`max_per_topic`](LifecycleConfig::max_per_topic) peers already and the peer is
    /// not one the user named (`PeerSource::Static`: the config's static peers,
    /// `lookup_at`), which is dialed whatever the cap.
    pub(crate) fn handle_found(&mut self, topic: Topic, addr: SocketAddr, source: PeerSource) {
        if self.closing || self.is_self(addr) {
            self.actions.push_back(Action::PeerTried { topic, addr });
            return;
        }
        let held = self.topic_peers(topic);
        if held >= self.config.max_per_topic && source != PeerSource::Static {
            debug!(%addr, topic = %topic.fmt_short(), held, "not dialed: the topic has its peers");
            self.actions.push_back(Action::PeerTried { topic, addr });
            return;
        }
        let id = self.dial_id();
        self.dials.insert(id, DialFor::Found { topic, addr });
        self.actions.push_back(Action::Dial {
            id,
            addr,
            key: None,
        });
    }

    /// `key` was dialed on request (`connect`): its connection stays when topics are left.
    pub(crate) fn handle_requested(&mut self, key: PeerKey) {
        self.purpose(key).requested = true;
    }

    /// The dial `id` answered `result` (a dropped reply is `DialError::Shutdown`).
    pub(crate) fn handle_dialed(
        &mut self,
        id: DialId,
        result: Result<PeerKey, DialError>,
        now: Instant,
    ) {
        match self.dials.remove(&id) {
            Some(DialFor::Found { topic, addr }) => {
                match result {
                    Ok(key) => {
                        debug!(%addr, peer = %key.fmt_short(), "dialed");
                        self.purpose(key).topics.insert(topic);
                    }
                    Err(e) => debug!(%addr, error = %e, "dial failed"),
                }
                self.actions.push_back(Action::PeerTried { topic, addr });
            }
            Some(DialFor::Cancelled) => {
                if let Ok(key) = result {
                    info!(peer = %key.fmt_short(), "redial cancelled: closing");
                    self.actions.push_back(Action::Close { key });
                }
            }
            Some(DialFor::Redial { key }) => self.redial_answered(key, id, result, now),
            None => {}
        }
    }

    /// The connection `connection` (a `stable_id`) to `key` at `addr` is up: a session
    /// starts on `handle`. It takes over what an earlier connection of the peer was for.
    pub(crate) fn handle_up(
        &mut self,
        key: PeerKey,
        connection: usize,
        addr: SocketAddr,
        initiator: Initiator,
        handle: C,
        now: Instant,
    ) {
        if self.closing {
            self.actions.push_back(Action::Close { key });
            return;
        }
        // A replaced connection, a dial's early answer and a lost connection: the new
        // one is for what they were for. A redial under way is done.
        let mut purpose = Purpose::default();
        if let Some(old) = self.up.remove(&key) {
            purpose.merge(old.purpose);
        }
        if let Some(early) = self.early.remove(&key) {
            purpose.merge(early);
        }
        if let Some(lost) = self.lost.remove(&key) {
            purpose.merge(lost.purpose);
        }
        self.up.insert(
            key,
            Up {
                connection,
                addr,
                initiator,
                since: now,
                end_redials: false,
                cancelled: false,
                purpose,
            },
        );
        let role = match initiator {
            Initiator::Local => Role::Dialer,
            Initiator::Remote => Role::Acceptor,
        };
        self.actions.push_back(Action::StartSession {
            peer: key,
            connection: handle,
            role,
        });
        self.actions.push_back(Action::Event(NodeEvent::PeerUp {
            key,
            addr,
            initiator,
        }));
    }

    /// The connection `connection` to `key` went down for `reason`. One that a newer
    /// connection already replaced changes nothing: the peer is still up.
    pub(crate) fn handle_down(
        &mut self,
        key: PeerKey,
        connection: usize,
        reason: DownReason,
        now: Instant,
    ) {
        if self.up.get(&key).map(|u| u.connection) != Some(connection) {
            return;
        }
        let Some(gone) = self.up.remove(&key) else {
            return;
        };
        self.early.remove(&key);
        self.actions.push_back(Action::StopSession {
            peer: key,
            reason: reason.to_string(),
        });
        let why = reason.to_string();
        let after = if gone.cancelled {
            AfterDown::Never
        } else {
            after_down(gone.initiator, &reason)
        };
        self.actions
            .push_back(Action::Event(NodeEvent::PeerDown { key, reason }));
        if self.closing {
            return;
        }
        let lost = Lost {
            addr: gone.addr,
            since: gone.since,
            purpose: gone.purpose,
            state: Redial::AwaitEnd,
        };
        match (after, gone.end_redials) {
            (AfterDown::Redial, _) | (AfterDown::AskSession, true) => {
                self.schedule(key, lost, &why, now)
            }
            (AfterDown::AskSession, false) => {
                self.lost.insert(key, lost);
            }
            (AfterDown::Never, _) => {
                self.short_losses.remove(&key);
            }
        }
    }

    /// The session with `peer` ended with `reason` (every end, in the order the
    /// sessions report them). Our own `timeout` (or the peer's close that our session saw
    /// first) redials a connection we dialed; a misbehaviour bans the peer.
    pub(crate) fn handle_session_ended(&mut self, peer: PeerKey, reason: &EndReason, now: Instant) {
        let redial = after_session_end(reason);
        match self.lost.get(&peer).map(|l| l.state) {
            // Its connection went down first.
            Some(Redial::AwaitEnd) => {
                if redial && !self.closing {
                    if let Some(lost) = self.lost.remove(&peer) {
                        self.schedule(peer, lost, &reason.to_string(), now);
                    }
                } else {
                    self.lost.remove(&peer);
                    self.short_losses.remove(&peer);
                }
            }
            Some(_) => {}
            None => {
                if let Some(up) = self.up.get_mut(&peer) {
                    up.end_redials = redial;
                }
            }
        }
        if reason.is_misbehaviour() && !self.config.ban_for.is_zero() {
            let duration = self.config.ban_for;
            warn!(peer = %peer.fmt_short(), %reason, ban = ?duration, "peer banned");
            self.cancel(peer);
            self.actions.push_back(Action::Ban {
                key: peer,
                duration,
                reason: reason.to_string(),
            });
        }
    }

    /// `topic` was left: close the connections that we dialed and that only it needed,
    /// and stop redialing the lost ones that only it needed. Connections the peer
    /// dialed, and those dialed on request, stay.
    pub(crate) fn handle_topic_left(&mut self, topic: Topic) {
        let mut closed = Vec::new();
        for (key, up) in &mut self.up {
            let found = up.purpose.topics.remove(&topic);
            if found && !up.purpose.needed() && up.initiator == Initiator::Local {
                debug!(peer = %key.fmt_short(), topic = %topic.fmt_short(), "closing: only the left topic needed it");
                self.actions.push_back(Action::Close { key: *key });
                closed.push(*key);
            }
        }
        for (key, lost) in &mut self.lost {
            let found = lost.purpose.topics.remove(&topic);
            if found && !lost.purpose.needed() {
                debug!(peer = %key.fmt_short(), topic = %topic.fmt_short(), "not redialing: only the left topic needed it");
                closed.push(*key);
            }
        }
        for key in closed {
            self.cancel(key);
        }
    }

    /// Do not redial `key` (it was disconnected, banned, or its topic left): a pending
    /// redial is dropped, a dial of it in flight is closed once up, and the loss of its
    /// connection up now is not redialed (its session may end with `timeout` before
    /// the close lands).
    pub(crate) fn cancel(&mut self, key: PeerKey) {
        self.short_losses.remove(&key);
        if let Some(up) = self.up.get_mut(&key) {
            up.cancelled = true;
        }
        if let Some(lost) = self.lost.remove(&key) {
            info!(peer = %key.fmt_short(), "redial cancelled");
            if let Redial::Dialing { dial, .. } = lost.state {
                self.dials.insert(dial, DialFor::Cancelled);
            }
        }
    }

    /// The node is closing: no more dials or redials; a later `PeerUp` is closed.
    pub(crate) fn close(&mut self) {
        self.closing = true;
        self.lost.clear();
    }

    /// Time has come to `now`: dial the redials whose wait is over.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<PeerKey> = self
            .lost
            .iter()
            .filter(|(_, l)| matches!(l.state, Redial::Waiting { at, .. } if at <= now))
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            self.dial_now(key);
        }
    }

    /// The peers held for `topic`: up (or about to be, their dial answered) or being
    /// redialed with `topic` among what they are for, and dials in flight for it.
    fn topic_peers(&self, topic: Topic) -> usize {
        let up = self
            .up
            .values()
            .filter(|u| u.purpose.topics.contains(&topic));
        let early = self.early.values().filter(|p| p.topics.contains(&topic));
        let lost = self
            .lost
            .values()
            .filter(|l| l.purpose.topics.contains(&topic));
        let dialing = self
            .dials
            .values()
            .filter(|d| matches!(d, DialFor::Found { topic: t, .. } if *t == topic));
        up.count() + early.count() + lost.count() + dialing.count()
    }

    /// Whether `addr` is ours: our address, or our port on loopback or our listen IP.
    fn is_self(&self, addr: SocketAddr) -> bool {
        let local = self.config.local;
        addr == local
            || (addr.port() == local.port() && (addr.ip().is_loopback() || addr.ip() == local.ip()))
    }

    fn dial_id(&mut self) -> DialId {
        self.next_dial += 1;
        DialId(self.next_dial)
    }

    /// What `key`'s connection is for: the peer's if it is up, else kept for its
    /// `PeerUp`.
    fn purpose(&mut self, key: PeerKey) -> &mut Purpose {
        match self.up.get_mut(&key) {
            Some(up) => &mut up.purpose,
            None => self.early.entry(key).or_default(),
        }
    }

    /// `d` multiplied by a factor drawn from `1 ± jitter`.
    fn jittered(&mut self, d: Duration) -> Duration {
        let j = self.config.jitter.clamp(0.0, 0.99);
        if d.is_zero() || j == 0.0 {
            return d;
        }
        d.mul_f64(self.rng.gen_range(1.0 - j..1.0 + j))
    }

    /// Start redialing `key`, whose connection `lost` went down (`why`, for the log): it
    /// is dialed by `handle_timeout` once its wait is over (at once for a first loss).
    fn schedule(&mut self, key: PeerKey, mut lost: Lost, why: &str, now: Instant) {
        let losses = if now.saturating_duration_since(lost.since) < STABLE {
            self.short_losses.get(&key).copied().unwrap_or(0) + 1
        } else {
            1
        };
        self.short_losses.insert(key, losses);
        let wait = self.jittered(redial_delay(losses));
        info!(peer = %key.fmt_short(), addr = %lost.addr, reason = why, ?wait, "connection lost: redialing");
        self.redials_started += 1;
        lost.state = Redial::Waiting {
            at: now + wait,
            limited: 0,
        };
        self.lost.insert(key, lost);
    }

    fn dial_now(&mut self, key: PeerKey) {
        let id = self.dial_id();
        let Some(lost) = self.lost.get_mut(&key) else {
            return;
        };
        let Redial::Waiting { limited, .. } = lost.state else {
            return;
        };
        lost.state = Redial::Dialing { dial: id, limited };
        let addr = lost.addr;
        self.dials.insert(id, DialFor::Redial { key });
        self.actions.push_back(Action::Dial {
            id,
            addr,
            key: Some(key),
        });
    }

    fn redial_answered(
        &mut self,
        key: PeerKey,
        id: DialId,
        result: Result<PeerKey, DialError>,
        now: Instant,
    ) {
        let Some(lost) = self.lost.get(&key) else {
            return;
        };
        let Redial::Dialing { dial, limited } = lost.state else {
            return;
        };
        if dial != id || self.closing {
            return;
        }
        let addr = lost.addr;
        let retry = match next_after(&result) {
            Next::Done => {
                info!(peer = %key.fmt_short(), %addr, "redialed");
                // Its `PeerUp` may still be on its way: it takes over what the lost
                // connection was for.
                if let Some(lost) = self.lost.remove(&key) {
                    self.early.entry(key).or_default().merge(lost.purpose);
                }
                return;
            }
            Next::RetryIn(wait) => (wait, limited),
            Next::Limited => (
                self.jittered(redial_delay(limited.saturating_add(2))),
                limited.saturating_add(1),
            ),
            Next::Stop => {
                info!(peer = %key.fmt_short(), %addr, error = ?result.err(), "redial: giving up");
                self.lost.remove(&key);
                return;
            }
        };
        let (wait, limited) = retry;
        debug!(peer = %key.fmt_short(), %addr, ?wait, "redial: retrying");
        if let Some(lost) = self.lost.get_mut(&key) {
            lost.state = Redial::Waiting {
                at: now + wait,
                limited,
            };
        }
    }
}
