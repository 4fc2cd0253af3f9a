//! The discovery core: per-topic bookkeeping without I/O.
//!
//! The core decides when to announce and when to look up, deduplicates what the backends
//! find, and keeps the `flushed` state. It never touches a socket or a clock: time comes
//! in as an argument, randomness from a seeded generator. Feed it with the `handle_*`
//! methods, then drain `poll_event` and arm a timer for `poll_timeout`.
//!
//! Each join gets a fresh [`JoinId`]; answers that carry the id of an earlier join of the
//! same topic (work that was in flight when the topic was left) are ignored.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::Timing;
use crate::topic::Topic;

/// At most this many distinct addresses are tracked per join of a topic; more are
/// dropped (and counted). Addresses come from DHT nodes and LAN hosts we do not trust:
/// without a bound, one of them could grow our memory and our dial queue at will. A
/// swarm that needs more is beyond what one node dials anyway.
pub const MAX_PEERS_PER_TOPIC: usize = 1024;

/// Where a peer address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerSource {
    /// The Mainline DHT.
    Dht,
    /// The local network (mDNS).
    Lan,
    /// Configuration or an explicit `LookupAt`.
    Static,
}

/// Identifies one join of a topic; a leave and a new join give a new id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JoinId(pub u64);

/// Which backends the core drives.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// Timers.
    pub timing: Timing,
    /// The DHT backend is enabled.
    pub dht: bool,
    /// The LAN backend is enabled.
    pub lan: bool,
    /// Addresses reported for every topic in every lookup round.
    pub static_peers: Vec<SocketAddr>,
}

/// What the first round of a join achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinReport {
    /// Backends on which the first announce was stored (empty if `announce` was false).
    pub announced: Vec<PeerSource>,
    /// Backends whose first announce failed, with the reason. They retry on
    /// `Timing::announce_retry`; the topic stays joined.
    pub announce_failed: Vec<(PeerSource, String)>,
    /// Distinct peers found in the first lookup round.
    pub peers_found: usize,
}

/// The state of one joined topic, as `Topics` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStatus {
    /// The topic.
    pub topic: Topic,
    /// We announce ourselves for it.
    pub announce: bool,
    /// We look up peers for it.
    pub lookup: bool,
    /// Every enabled backend completed a lookup round and every found peer was tried.
    pub flushed: bool,
    /// Lookup rounds completed since the join.
    pub rounds: u32,
    /// Distinct peers found since the join.
    pub peers_found: usize,
    /// Of those, how many were reported tried.
    pub peers_tried: usize,
    /// New addresses ignored because `MAX_PEERS_PER_TOPIC` were already tracked.
    pub peers_dropped: u64,
    /// The peers found since the join (at most `MAX_PEERS_PER_TOPIC`), sorted.
    pub peers: Vec<SocketAddr>,
}

/// What the core asks its driver to do or report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreEvent {
    /// Announce the topic on `backend`; answer with `handle_announce_done`.
    Announce {
        /// The topic.
        topic: Topic,
        /// `Dht` or `Lan`.
        backend: PeerSource,
        /// The join this belongs to.
        join: JoinId,
    },
    /// Start a lookup round on `backend`; answer with `handle_peers` (any number of
    /// times) and then `handle_lookup_done`.
    Lookup {
        /// The topic.
        topic: Topic,
        /// `Dht` or `Lan`.
        backend: PeerSource,
        /// The join this belongs to.
        join: JoinId,
    },
    /// The topic was left: stop announcing and looking up on `backend`, cancel its work.
    Stop {
        /// The topic.
        topic: Topic,
        /// `Dht` or `Lan`.
        backend: PeerSource,
    },
    /// Hand this peer on (once per lookup round, whatever number of DHT nodes returned it).
    PeerFound {
        /// The topic.
        topic: Topic,
        /// Where the peer listens.
        addr: SocketAddr,
        /// Which backend found it first in this round.
        source: PeerSource,
    },
    /// The first announce finished on every backend and the first lookup round completed.
    JoinDone {
        /// The topic.
        topic: Topic,
        /// What that first round achieved.
        report: JoinReport,
    },
    /// The topic became flushed.
    Flushed {
        /// The topic.
        topic: Topic,
    },
}

#[derive(Debug)]
struct AnnounceSlot {
    backend: PeerSource,
    next: Option<Instant>,
    inflight: bool,
    first: Option<Result<(), String>>,
}

#[derive(Debug)]
struct TopicState {
    join: JoinId,
    announce: bool,
    lookup: bool,
    announces: Vec<AnnounceSlot>,
    next_lookup: Option<Instant>,
    /// Our first DHT announce was stored while a round ran: the next round starts as soon
    /// as that one ends.
    lookup_after_announce: bool,
    /// Rounds started because our first DHT announce was stored (outside the schedule).
    extra_rounds: u32,
    /// Backends still running the current lookup round.
    lookup_inflight: Vec<PeerSource>,
    rounds: u32,
    /// Addresses already reported in the current round.
    round_seen: HashSet<SocketAddr>,
    first_round_found: usize,
    /// Addresses given by `LookupAt`.
    static_addrs: Vec<SocketAddr>,
    found: HashSet<SocketAddr>,
    tried: HashSet<SocketAddr>,
    join_done: bool,
    flushed: bool,
    dropped: u64,
}

/// The per-topic bookkeeping of discovery. See the module docs.
#[derive(Debug)]
pub struct DiscoveryCore {
    settings: CoreSettings,
    rng: StdRng,
    next_join: u64,
    topics: HashMap<Topic, TopicState>,
    events: VecDeque<CoreEvent>,
}

impl DiscoveryCore {
    /// A core with these backends and timers; `seed` drives the jitter.
    pub fn new(settings: CoreSettings, seed: u64) -> Self {
        DiscoveryCore {
            settings,
            rng: StdRng::seed_from_u64(seed),
            next_join: 1,
            topics: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    fn backends(&self) -> Vec<PeerSource> {
        let mut out = Vec::new();
        if self.settings.dht {
            out.push(PeerSource::Dht);
        }
        if self.settings.lan {
            out.push(PeerSource::Lan);
        }
        out
    }

    /// Joins `topic` (or joins it afresh, if it was joined: the old join's state is
    /// dropped). Announces and the first lookup round start at once.
    pub fn handle_join(
        &mut self,
        topic: Topic,
        announce: bool,
        lookup: bool,
        now: Instant,
    ) -> JoinId {
        if self.topics.contains_key(&topic) {
            self.handle_leave(topic);
        }
        let join = JoinId(self.next_join);
        self.next_join += 1;
        let announces = if announce {
            self.backends()
                .into_iter()
                .map(|backend| AnnounceSlot {
                    backend,
                    next: Some(now),
                    inflight: false,
                    first: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        self.topics.insert(
            topic,
            TopicState {
                join,
                announce,
                lookup,
                announces,
                next_lookup: lookup.then_some(now),
                lookup_after_announce: false,
                extra_rounds: 0,
                lookup_inflight: Vec::new(),
                rounds: 0,
                round_seen: HashSet::new(),
                first_round_found: 0,
                static_addrs: Vec::new(),
                found: HashSet::new(),
                tried: HashSet::new(),
                join_done: false,
                flushed: false,
                dropped: 0,
            },
        );
        self.handle_timeout(now);
        self.check(topic);
        join
    }

    /// Leaves `topic`: emits `Stop` for every backend and forgets the topic, including
    /// its flushed state. Returns false if it was not joined.
    pub fn handle_leave(&mut self, topic: Topic) -> bool {
        if self.topics.remove(&topic).is_none() {
            return false;
        }
        for backend in self.backends() {
            self.events.push_back(CoreEvent::Stop { topic, backend });
        }
        true
    }

    /// An announce finished on `backend`.
    pub fn handle_announce_done(
        &mut self,
        topic: Topic,
        join: JoinId,
        backend: PeerSource,
        result: Result<(), String>,
        now: Instant,
    ) {
        let timing = self.settings.timing.clone();
        let Some(state) = self.topics.get_mut(&topic).filter(|s| s.join == join) else {
            return;
        };
        let Some(slot) = state
            .announces
            .iter_mut()
            .find(|slot| slot.backend == backend && slot.inflight)
        else {
            return;
        };
        slot.inflight = false;
        slot.next = match (&result, backend) {
            // An mDNS registration lasts until we withdraw it; the daemon refreshes it.
            (Ok(()), PeerSource::Lan) => None,
            (Ok(()), _) => {
                Some(now + jitter(&mut self.rng, timing.announce_interval, timing.jitter))
            }
            (Err(_), _) => Some(now + jitter(&mut self.rng, timing.announce_retry, timing.jitter)),
        };
        let first_stored = slot.first.is_none() && result.is_ok() && backend == PeerSource::Dht;
        if slot.first.is_none() {
            slot.first = Some(result);
        }
        if first_stored && state.lookup {
            // Our first lookup ran alongside our announce and may have been over before a
            // peer that joined at the same moment had stored its record. Now that ours is
            // stored, so is most likely theirs: a lookup now is the first that can find
            // them.
            if state.lookup_inflight.is_empty() {
                state.extra_rounds += 1;
                state.next_lookup = Some(now);
            } else {
                state.lookup_after_announce = true;
            }
        }
        self.check(topic);
        self.handle_timeout(now);
    }

    /// `backend` found these peers for `topic`. Each address is reported at most once
    /// per lookup round, whichever backend or DHT node returned it.
    pub fn handle_peers(
        &mut self,
        topic: Topic,
        join: JoinId,
        backend: PeerSource,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) {
        let Some(state) = self
            .topics
            .get_mut(&topic)
            .filter(|s| s.join == join && s.lookup)
        else {
            return;
        };
        for addr in addrs {
            report(state, topic, addr, backend, &mut self.events);
        }
        self.check(topic);
    }

    /// `backend` finished its part of the current lookup round.
    pub fn handle_lookup_done(
        &mut self,
        topic: Topic,
        join: JoinId,
        backend: PeerSource,
        now: Instant,
    ) {
        let Some(state) = self.topics.get_mut(&topic).filter(|s| s.join == join) else {
            return;
        };
        let before = state.lookup_inflight.len();
        state.lookup_inflight.retain(|b| *b != backend);
        if state.lookup_inflight.len() != before && state.lookup_inflight.is_empty() {
            self.finish_round(topic, now);
        }
        self.check(topic);
    }

    /// Look for `topic` at `addr` in this and every later round, reported as
    /// `PeerSource::Static`. Returns false if the topic is not joined with lookup.
    pub fn handle_lookup_at(&mut self, topic: Topic, addr: SocketAddr) -> bool {
        let Some(state) = self.topics.get_mut(&topic).filter(|s| s.lookup) else {
            return false;
        };
        if !state.static_addrs.contains(&addr) {
            state.static_addrs.push(addr);
        }
        report(state, topic, addr, PeerSource::Static, &mut self.events);
        self.check(topic);
        true
    }

    /// The connection layer tried `addr`, found for `topic` (whatever the outcome).
    pub fn handle_peer_tried(&mut self, topic: Topic, addr: SocketAddr) {
        let Some(state) = self.topics.get_mut(&topic) else {
            return;
        };
        if state.found.contains(&addr) {
            state.tried.insert(addr);
        }
        self.check(topic);
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let backends = self.backends();
        let mut finished = Vec::new();
        for (topic, state) in self.topics.iter_mut() {
            let topic = *topic;
            for slot in state.announces.iter_mut() {
                if !slot.inflight && slot.next.is_some_and(|t| t <= now) {
                    slot.inflight = true;
                    slot.next = None;
                    self.events.push_back(CoreEvent::Announce {
                        topic,
                        backend: slot.backend,
                        join: state.join,
                    });
                }
            }
            if state.lookup
                && state.lookup_inflight.is_empty()
                && state.next_lookup.is_some_and(|t| t <= now)
            {
                state.next_lookup = None;
                state.round_seen.clear();
                state.lookup_inflight = backends.clone();
                for backend in &backends {
                    self.events.push_back(CoreEvent::Lookup {
                        topic,
                        backend: *backend,
                        join: state.join,
                    });
                }
                let statics: Vec<SocketAddr> = self
                    .settings
                    .static_peers
                    .iter()
                    .chain(state.static_addrs.iter())
                    .copied()
                    .collect();
                for addr in statics {
                    report(state, topic, addr, PeerSource::Static, &mut self.events);
                }
                if backends.is_empty() {
                    finished.push(topic);
                }
            }
        }
        for topic in finished {
            self.finish_round(topic, now);
            self.check(topic);
        }
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.topics
            .values()
            .flat_map(|s| {
                let lookup = if s.lookup_inflight.is_empty() {
                    s.next_lookup
                } else {
                    None
                };
                s.announces
                    .iter()
                    .filter(|slot| !slot.inflight)
                    .filter_map(|slot| slot.next)
                    .chain(lookup)
            })
            .min()
    }

    /// The next thing to do or report.
    pub fn poll_event(&mut self) -> Option<CoreEvent> {
        self.events.pop_front()
    }

    /// Whether `topic` is joined.
    pub fn is_joined(&self, topic: &Topic) -> bool {
        self.topics.contains_key(topic)
    }

    /// Whether `topic` is joined and flushed.
    pub fn is_flushed(&self, topic: &Topic) -> bool {
        self.topics.get(topic).is_some_and(|s| s.flushed)
    }

    /// The current join of `topic`.
    pub fn join_id(&self, topic: &Topic) -> Option<JoinId> {
        self.topics.get(topic).map(|s| s.join)
    }

    /// Every joined topic, sorted.
    pub fn topics(&self) -> Vec<TopicStatus> {
        let mut out: Vec<TopicStatus> = self
            .topics
            .iter()
            .map(|(topic, s)| TopicStatus {
                topic: *topic,
                announce: s.announce,
                lookup: s.lookup,
                flushed: s.flushed,
                rounds: s.rounds,
                peers_found: s.found.len(),
                peers_tried: s.tried.len(),
                peers_dropped: s.dropped,
                peers: {
                    let mut peers: Vec<SocketAddr> = s.found.iter().copied().collect();
                    peers.sort();
                    peers
                },
            })
            .collect();
        out.sort_by_key(|s| s.topic);
        out
    }

    fn finish_round(&mut self, topic: Topic, now: Instant) {
        let timing = &self.settings.timing;
        let Some(state) = self.topics.get_mut(&topic) else {
            return;
        };
        state.rounds += 1;
        if state.rounds == 1 {
            state.first_round_found = state.round_seen.len();
        }
        if std::mem::take(&mut state.lookup_after_announce) {
            state.extra_rounds += 1;
            state.next_lookup = Some(now);
            return;
        }
        let scheduled = state.rounds.saturating_sub(state.extra_rounds).max(1);
        let fast = timing
            .join_lookup_delays
            .get(scheduled as usize - 1)
            .copied();
        let delay = match fast {
            Some(delay) => jitter(&mut self.rng, delay, timing.jitter),
            None => {
                let (lo, hi) = timing.lookup_interval;
                if hi > lo {
                    self.rng.gen_range(lo..=hi)
                } else {
                    lo
                }
            }
        };
        state.next_lookup = Some(now + delay);
    }

    /// Emits `JoinDone` and `Flushed` when their conditions became true.
    fn check(&mut self, topic: Topic) {
        let Some(state) = self.topics.get_mut(&topic) else {
            return;
        };
        let looked = !state.lookup || state.rounds >= 1;
        if !state.join_done && looked && state.announces.iter().all(|slot| slot.first.is_some()) {
            state.join_done = true;
            let mut report = JoinReport {
                peers_found: state.first_round_found,
                ..JoinReport::default()
            };
            for slot in &state.announces {
                match &slot.first {
                    Some(Ok(())) => report.announced.push(slot.backend),
                    Some(Err(reason)) => {
                        report.announce_failed.push((slot.backend, reason.clone()))
                    }
                    None => {}
                }
            }
            self.events.push_back(CoreEvent::JoinDone { topic, report });
        }
        let flushed = looked && state.found.len() == state.tried.len();
        if flushed && !state.flushed {
            self.events.push_back(CoreEvent::Flushed { topic });
        }
        state.flushed = flushed;
    }
}

fn report(
    state: &mut TopicState,
    topic: Topic,
    addr: SocketAddr,
    source: PeerSource,
    events: &mut VecDeque<CoreEvent>,
) {
    if !state.found.contains(&addr) && state.found.len() >= MAX_PEERS_PER_TOPIC {
        state.dropped += 1;
        return;
    }
    if state.round_seen.insert(addr) {
        state.found.insert(addr);
        events.push_back(CoreEvent::PeerFound {
            topic,
            addr,
            source,
        });
    }
}

/// `base` scaled by a random factor in `1 - amount ..= 1 + amount`.
fn jitter(rng: &mut StdRng, base: Duration, amount: f64) -> Duration {
    let amount = amount.clamp(0.0, 1.0);
    if amount == 0.0 {
        return base;
    }
    base.mul_f64(rng.gen_range(1.0 - amount..=1.0 + amount))
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
