//! Being found through relays, without I/O. A node that cannot be dialed directly
//! registers with the relays it is connected to (`Relays`, the end's side); a relay keeps,
//! per registered peer, the address it sees that peer at, and answers `Locate` queries
//! about an address with the keys registered there (`Registry`, the relay's side). A node
//! whose direct dial of an address does not answer asks its relays who is there and dials
//! each answer through its relay, the key pinned.
//!
//! Everything is bounded: registrations per relay (`RelayConfig::max_registrations`),
//! `Locate` queries per peer and minute (`RelayConfig::max_locates_per_minute`), keys per
//! answer (`MAX_LOCATED`), queries in flight (`MAX_PENDING_LOCATES`), relays asked per
//! dial (`MAX_LOCATE_RELAYS`). A relay answers only about peers that registered with it
//! (they asked to be found), and a registration ends with its connection.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::wire::{NatMessage, MAX_LOCATED};
use super::FixedWindow;
use super::{NatCore, NatEvent, NatOutput, Reachability};
use crate::key::PeerKey;
use crate::socket::VirtualPaths;

/// Most relays asked about one address.
pub const MAX_LOCATE_RELAYS: usize = 4;
/// Most `Locate` queries of ours waiting for an answer, over all relays.
pub const MAX_PENDING_LOCATES: usize = 64;

/// The relay's side: the peers registered with it, where it sees them, and each asker's
/// query budget. See the module doc.
#[derive(Debug)]
pub struct Registry {
    max: usize,
    per_minute: u32,
    registered: HashMap<PeerKey, SocketAddr>,
    /// Per asker, its queries in the current minute.
    windows: HashMap<PeerKey, FixedWindow>,
}

impl Registry {
    /// A registry of at most `max` peers, answering each peer at most `per_minute`
    /// queries a minute.
    pub fn new(max: usize, per_minute: u32) -> Self {
        Self {
            max,
            per_minute,
            registered: HashMap::new(),
            windows: HashMap::new(),
        }
    }

    /// Peers registered.
    pub fn len(&self) -> usize {
        self.registered.len()
    }

    /// Whether no peer is registered.
    pub fn is_empty(&self) -> bool {
        self.registered.is_empty()
    }

    /// `key`, seen at `addr`, asks to be found: whether it is registered (again, or anew
    /// while there is room).
    pub fn register(&mut self, key: PeerKey, addr: SocketAddr) -> bool {
        if !self.registered.contains_key(&key) && self.registered.len() >= self.max {
            return false;
        }
        self.registered.insert(key, addr);
        true
    }

    /// `key` withdrew its registration (or its connection went down).
    pub fn unregister(&mut self, key: &PeerKey) {
        self.registered.remove(key);
    }

    /// Every registration ends (we stopped relaying).
    pub fn clear(&mut self) {
        self.registered.clear();
    }

    /// The connection to `key` is gone: its registration and its query budget go.
    pub fn peer_down(&mut self, key: &PeerKey) {
        self.registered.remove(key);
        self.windows.remove(key);
    }

    /// `asker` asks who is at `addr`: the registered peers seen at exactly that address,
    /// or, if none, at its IP (a NAT that maps each destination anew shows us and the
    /// asker different ports), smallest key first, never the asker, at most
    /// `MAX_LOCATED`. Empty past the asker's budget.
    pub fn locate(&mut self, asker: PeerKey, addr: SocketAddr, now: Instant) -> Vec<PeerKey> {
        let window = self.windows.entry(asker).or_default();
        if !window.try_count(now, Duration::from_secs(60), self.per_minute) {
            return Vec::new();
        }
        let matching = |exact: bool| {
            let mut keys: Vec<PeerKey> = self
                .registered
                .iter()
                .filter(|(k, a)| {
                    **k != asker
                        && if exact {
                            **a == addr
                        } else {
                            a.ip() == addr.ip()
                        }
                })
                .map(|(k, _)| *k)
                .collect();
            keys.sort();
            keys.truncate(MAX_LOCATED);
            keys
        };
        let exact = matching(true);
        if exact.is_empty() {
            matching(false)
        } else {
            exact
        }
    }
}

/// A `Locate` of ours waiting for its answer.
#[derive(Debug, Clone, Copy)]
struct Pending {
    relay: PeerKey,
    addr: SocketAddr,
    until: Instant,
}

/// The end's side: which connected peers relay for us, our registrations with them, and
/// our queries in flight. See the module doc.
#[derive(Debug, Default)]
pub struct Relays {
    /// Connected peers that said they relay for us now.
    offered: BTreeSet<PeerKey>,
    /// Relays we sent `Register` to (and have not unregistered from).
    asked: BTreeSet<PeerKey>,
    /// Relays that accepted our registration.
    registered: BTreeSet<PeerKey>,
    pending: HashMap<u32, Pending>,
    next_query: u32,
}

impl Relays {
    /// The connected peers that relay for us, smallest key first.
    pub fn offered(&self) -> impl Iterator<Item = PeerKey> + '_ {
        self.offered.iter().copied()
    }

    /// How many relays hold our registration.
    pub fn registered(&self) -> usize {
        self.registered.len()
    }

    /// `relay` says whether it relays for us now.
    pub fn handle_offer(&mut self, relay: PeerKey, relaying: bool) {
        if relaying {
            self.offered.insert(relay);
        } else {
            self.offered.remove(&relay);
            self.asked.remove(&relay);
            self.registered.remove(&relay);
        }
    }

    /// The relays to send `Register` (`true`) or `Unregister` (`false`) to, so that we
    /// are registered with every relay exactly when `wanted`; marks them done.
    pub fn sync(&mut self, wanted: bool) -> Vec<(PeerKey, bool)> {
        if wanted {
            let new: Vec<PeerKey> = self.offered.difference(&self.asked).copied().collect();
            self.asked.extend(new.iter().copied());
            new.into_iter().map(|r| (r, true)).collect()
        } else {
            self.registered.clear();
            std::mem::take(&mut self.asked)
                .into_iter()
                .filter(|r| self.offered.contains(r))
                .map(|r| (r, false))
                .collect()
        }
    }

    /// `relay` answered our `Register`: whether the answer is one we wait for.
    pub fn handle_registered(&mut self, relay: PeerKey, accepted: bool) -> bool {
        if !self.asked.contains(&relay) {
            return false;
        }
        if accepted {
            self.registered.insert(relay);
        } else {
            self.asked.remove(&relay);
            self.registered.remove(&relay);
        }
        true
    }

    /// Ask up to `MAX_LOCATE_RELAYS` relays who is at `addr` (none of them `skip`), each
    /// answer due by `now + timeout`: (relay, query id) for each `Locate` to send.
    pub fn locate(
        &mut self,
        addr: SocketAddr,
        skip: Option<PeerKey>,
        timeout: Duration,
        now: Instant,
    ) -> Vec<(PeerKey, u32)> {
        let relays: Vec<PeerKey> = self
            .offered
            .iter()
            .filter(|r| Some(**r) != skip)
            .take(MAX_LOCATE_RELAYS)
            .copied()
            .collect();
        let mut asked = Vec::new();
        for relay in relays {
            if self.pending.len() >= MAX_PENDING_LOCATES {
                break;
            }
            let query = self.next_query;
            self.next_query = self.next_query.wrapping_add(1);
            self.pending.insert(
                query,
                Pending {
                    relay,
                    addr,
                    until: now + timeout,
                },
            );
            asked.push((relay, query));
        }
        asked
    }

    /// `relay` answered query `query`: the address asked about, if the answer is one we
    /// wait for (from the relay we asked).
    pub fn handle_located(&mut self, relay: PeerKey, query: u32) -> Option<SocketAddr> {
        let pending = self.pending.get(&query).filter(|p| p.relay == relay)?;
        let addr = pending.addr;
        self.pending.remove(&query);
        Some(addr)
    }

    /// The connection to `key` is gone: it relays for us no more; the queries it had
    /// not answered, as (query, address).
    pub fn peer_down(&mut self, key: &PeerKey) -> Vec<(u32, SocketAddr)> {
        self.offered.remove(key);
        self.asked.remove(key);
        self.registered.remove(key);
        self.take_pending(|p| p.relay == *key)
    }

    /// The queries whose answer is overdue at `now`, as (relay, query, address).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<(PeerKey, u32, SocketAddr)> {
        let due: Vec<(PeerKey, u32, SocketAddr)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.until <= now)
            .map(|(q, p)| (p.relay, *q, p.addr))
            .collect();
        for (_, query, _) in &due {
            self.pending.remove(query);
        }
        due
    }

    /// When the next query is overdue.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.until).min()
    }

    fn take_pending(&mut self, which: impl Fn(&Pending) -> bool) -> Vec<(u32, SocketAddr)> {
        let gone: Vec<(u32, SocketAddr)> = self
            .pending
            .iter()
            .filter(|(_, p)| which(p))
            .map(|(q, p)| (*q, p.addr))
            .collect();
        for (query, _) in &gone {
            self.pending.remove(query);
        }
        gone
    }
}

impl NatCore {
    /// The messages of advertising (`advert`): relay offers, registrations, `Locate`.
    pub(super) fn handle_advert(
        &mut self,
        from: PeerKey,
        remote: SocketAddr,
        message: NatMessage,
        now: Instant,
    ) {
        // A relay through a relay is no help, and a virtual address says nothing.
        if VirtualPaths::is_virtual(&remote) {
            return;
        }
        match message {
            NatMessage::RelayOffer { relaying } => {
                self.relays.handle_offer(from, relaying);
                self.sync_registrations();
            }
            NatMessage::Register => {
                let accepted = self.offering && self.registry.register(from, remote);
                self.send(from, NatMessage::Registered { accepted });
            }
            NatMessage::Unregister => self.registry.unregister(&from),
            NatMessage::Registered { accepted }
                if self.relays.handle_registered(from, accepted) =>
            {
                self.outputs
                    .push_back(NatOutput::Event(NatEvent::RelayRegistered {
                        relay: from,
                        accepted,
                    }));
            }
            NatMessage::Locate { query, addr } => {
                let keys = if self.offering {
                    self.registry.locate(from, addr, now)
                } else {
                    Vec::new()
                };
                let keys = keys.iter().map(|k| *k.as_bytes()).collect();
                self.send(from, NatMessage::Located { query, keys });
            }
            NatMessage::Located { query, keys } => {
                if let Some(addr) = self.relays.handle_located(from, query) {
                    let keys = keys
                        .into_iter()
                        .take(MAX_LOCATED)
                        .map(PeerKey::from_bytes)
                        .filter(|k| *k != self.me && *k != from)
                        .collect();
                    self.located(from, query, addr, keys);
                }
            }
            _ => {}
        }
    }

    /// Asks our relays (at most `advert::MAX_LOCATE_RELAYS`, not `skip`) who of their
    /// registered peers is at `addr`: (relay, query) for each, answered by
    /// `NatOutput::Located`.
    pub fn locate(
        &mut self,
        addr: SocketAddr,
        skip: Option<PeerKey>,
        now: Instant,
    ) -> Vec<(PeerKey, u32)> {
        let asked = self
            .relays
            .locate(addr, skip, self.config.locate_timeout, now);
        for (relay, query) in &asked {
            self.send(
                *relay,
                NatMessage::Locate {
                    query: *query,
                    addr,
                },
            );
        }
        asked
    }

    /// The connection to `relay` was silent for longer than a live one can be while
    /// circuits end here: those circuits end now (their connections are lost, and
    /// redialed through other relays), and `relay` relays for us no more.
    pub fn handle_relay_silent(&mut self, relay: PeerKey) {
        let mut out = Vec::new();
        self.ends.handle_peer_down(relay, &mut out);
        self.end_actions(out);
        for (query, addr) in self.relays.peer_down(&relay) {
            self.located(relay, query, addr, Vec::new());
        }
    }

    /// The connected peers that relay for us, smallest key first.
    pub fn relays(&self) -> Vec<PeerKey> {
        self.relays.offered().collect()
    }

    /// Reports the answer to query `query` (empty: none came).
    pub(super) fn located(
        &mut self,
        relay: PeerKey,
        query: u32,
        addr: SocketAddr,
        keys: Vec<PeerKey>,
    ) {
        self.outputs.push_back(NatOutput::Event(NatEvent::Located {
            relay,
            addr,
            peers: keys.clone(),
        }));
        self.outputs
            .push_back(NatOutput::Located { query, relay, keys });
    }

    /// Registers with every relay while we are not known reachable (and accept circuits),
    /// and withdraws once we are.
    pub(super) fn sync_registrations(&mut self) {
        let wanted =
            self.config.relay.accept_circuits && self.reachability != Reachability::Reachable;
        for (relay, register) in self.relays.sync(wanted) {
            let message = if register {
                NatMessage::Register
            } else {
                NatMessage::Unregister
            };
            self.send(relay, message);
        }
    }

    /// Tells every direct peer when we start or stop relaying (a relay that finds itself
    /// unreachable stops, decision 147), and drops the registrations with it.
    pub(super) fn sync_offering(&mut self) {
        let offering = self.config.relay.enabled && self.reachability != Reachability::Unreachable;
        if offering == self.offering {
            return;
        }
        self.offering = offering;
        if !offering {
            self.registry.clear();
        }
        let direct: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, a)| !VirtualPaths::is_virtual(a))
            .map(|(k, _)| *k)
            .collect();
        for key in direct {
            self.send(key, NatMessage::RelayOffer { relaying: offering });
        }
    }
}
