//! Where we stand behind NATs, without I/O: observed addresses, the NAT mapping type and
//! reachability (dial-back).
//!
//! `NatCore` is told what happened (`handle_peer_up`, `handle_peer_down`,
//! `handle_message`, `handle_dial_back_done`, `handle_dial_back_arrived`,
//! `handle_timeout`) with the current time, and says what to do through `poll_output`
//! (`NatOutput`: send this message to that peer, dial that peer back, report this event)
//! and `poll_timeout`. It never reads a clock and never touches a socket; the
//! `ConnManager` actor drives it (`actor/netctl.rs`) over the control channel of every
//! connection (`wire`).
//!
//! # Rules
//! - When a connection comes up, each side tells the other the address it sees it at
//!   (`NatMessage::Observed`). The latest report of each peer is kept (`ObservedAddrs`);
//!   from them come our public addresses and the mapping type (`NatType`).
//! - Reachability: once a peer has reported where it sees us, we ask one peer at a time
//!   to dial that address back (`DialBack`) from another UDP port. The dial-back
//!   handshake arriving here, or the peer's `DialBackResult`, decides; a peer that
//!   refuses or stays silent for twice `dial_back_timeout` (its dial, then the answer)
//!   is skipped and the next one is asked. The check runs again after `recheck_after`, and at once when our public
//!   address changes.
//! - Serving a dial-back: only to the address we see the requester at on its
//!   connection (a peer cannot make us dial anyone else), at most once per
//!   `dial_back_peer_interval` per peer and `max_dial_backs_per_minute` in all.
//!
//! - Being found through relays (`advert`): a relay says so when a connection comes up
//!   (`RelayOffer`); a node not known reachable registers with each relay (`Register`),
//!   which keeps the address it sees it at and answers `Locate` queries about that
//!   address (then its IP) from its other peers, within limits.
//!
//! Modules: `types` (the configuration, events and outputs), `wire` (the channel's
//! messages and frames), `observed` (reports, public addresses, mapping type), `relay`
//! (a relay's circuits and limits), `circuit` (the circuits that end here) and `advert`
//! (registrations and `Locate`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::key::PeerKey;
use crate::socket::VirtualPaths;

use self::advert::{Registry, Relays};
use self::circuit::{CircuitEnds, EndAction};
pub use self::observed::{NatType, ObservedAddrs, MAX_PUBLIC_ADDRS, MAX_REPORTERS};
pub use self::relay::{CircuitEnd, RelayAction, RelayConfig};
use self::relay::{Leg, RelayTable, WireIds};
pub use self::types::{NatConfig, NatEvent, NatOutput, NatStatus, Reachability};
pub use self::wire::{NatMessage, WireError, MAX_LOCATED, MAX_NAT_FRAME};

pub mod advert;
pub mod circuit;
pub mod observed;
pub mod relay;
mod types;
mod window;
pub(crate) use self::window::FixedWindow;
pub mod wire;

#[derive(Debug, Clone, Copy)]
struct Asked {
    peer: PeerKey,
    nonce: u64,
    until: Instant,
}

/// The NAT state machine. See the module doc.
#[derive(Debug)]
pub struct NatCore {
    me: PeerKey,
    config: NatConfig,
    observed: ObservedAddrs,
    /// Connected peers and where we see them.
    peers: HashMap<PeerKey, SocketAddr>,
    public: Vec<SocketAddr>,
    nat_type: NatType,
    reachability: Reachability,
    asked: Option<Asked>,
    /// Peers asked in this round that did not answer (or refused).
    skipped: HashSet<PeerKey>,
    /// When the next reachability check is due; `None` once one is due now.
    next_check: Option<Instant>,
    /// When we last served each peer a dial-back.
    served: HashMap<PeerKey, Instant>,
    /// Dial-backs served in the current minute.
    served_window: FixedWindow,
    next_nonce: u64,
    relay: RelayTable,
    ends: CircuitEnds,
    ids: WireIds,
    /// At a relay: the peers registered with us to be found.
    registry: Registry,
    /// The connected peers that relay for us, and our registrations with them.
    relays: Relays,
    /// Whether we told our peers we relay (`RelayOffer`).
    offering: bool,
    outputs: VecDeque<NatOutput>,
}

impl NatCore {
    /// A core for the node `me` with `config`; `nonce_seed` starts the dial-back nonces
    /// (random in the actor, fixed in tests).
    pub fn new(me: PeerKey, config: NatConfig, nonce_seed: u64) -> Self {
        Self {
            me,
            relay: RelayTable::new(me, config.relay.clone()),
            ends: CircuitEnds::new(config.relay.clone()),
            ids: WireIds::new(me),
            registry: Registry::new(
                config.relay.max_registrations,
                config.relay.max_locates_per_minute,
            ),
            relays: Relays::default(),
            offering: config.relay.enabled,
            config,
            observed: ObservedAddrs::default(),
            peers: HashMap::new(),
            public: Vec::new(),
            nat_type: NatType::Unknown,
            reachability: Reachability::Unknown,
            asked: None,
            skipped: HashSet::new(),
            next_check: None,
            served: HashMap::new(),
            served_window: FixedWindow::default(),
            next_nonce: nonce_seed,
            outputs: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// Where we stand now.
    pub fn status(&self) -> NatStatus {
        NatStatus {
            public_addrs: self.public.clone(),
            nat_type: self.nat_type,
            reachability: self.reachability,
            reporters: self.observed.len(),
            relays: self.relays.offered().count(),
            registered_with: self.relays.registered(),
            registered_here: self.registry.len(),
        }
    }

    /// The next thing to do, if any. Call until `None` after every `handle_*`.
    pub fn poll_output(&mut self) -> Option<NatOutput> {
        self.outputs.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let asked = self.asked.map(|a| a.until);
        let check = self.next_check.filter(|_| self.config.dial_back);
        asked
            .into_iter()
            .chain(check)
            .chain(self.relay.poll_timeout())
            .chain(self.ends.poll_timeout())
            .chain(self.relays.poll_timeout())
            .min()
    }

    /// A connection to `key` came up; we see the peer at `remote`.
    pub fn handle_peer_up(&mut self, key: PeerKey, remote: SocketAddr, now: Instant) {
        self.peers.insert(key, remote);
        if VirtualPaths::is_virtual(&remote) {
            // A virtual address says nothing about the peer's NAT; the greater key starts
            // the punch (one side, so that one offer meets one answer).
            if self.config.punch && self.me > key && !self.public.is_empty() {
                let addrs = self.public.clone();
                self.send(key, NatMessage::PunchOffer { addrs });
            }
            return;
        }
        if self.config.observe {
            self.send(key, NatMessage::Observed { addr: remote });
        }
        if self.offering {
            self.send(key, NatMessage::RelayOffer { relaying: true });
        }
        self.maybe_ask(now);
    }

    /// The connection to `key` is gone.
    pub fn handle_peer_down(&mut self, key: PeerKey, now: Instant) {
        self.peers.remove(&key);
        let mut out = Vec::new();
        self.relay.handle_peer_down(key, &mut out);
        self.relay_actions(out);
        let mut out = Vec::new();
        self.ends.handle_peer_down(key, &mut out);
        self.end_actions(out);
        self.ids.forget(&key);
        self.registry.peer_down(&key);
        for (query, addr) in self.relays.peer_down(&key) {
            self.located(key, query, addr, Vec::new());
        }
        if self.asked.is_some_and(|a| a.peer == key) {
            self.asked = None;
            self.skipped.insert(key);
            self.maybe_ask(now);
        }
    }

    /// `from` sent `message` on its control channel.
    pub fn handle_message(&mut self, from: PeerKey, message: NatMessage, now: Instant) {
        let Some(remote) = self.peers.get(&from).copied() else {
            return;
        };
        let relayed = VirtualPaths::is_virtual(&remote);
        match message {
            NatMessage::Observed { addr } => {
                if !self.config.observe || relayed || VirtualPaths::is_virtual(&addr) {
                    return;
                }
                self.observed.record(from, remote.ip(), addr, now);
                self.update_derived(now);
                self.maybe_ask(now);
            }
            NatMessage::DialBack { nonce } => {
                if !relayed && self.may_serve(from, now) {
                    self.outputs.push_back(NatOutput::DialBack {
                        to: from,
                        addr: remote,
                        nonce,
                    });
                } else {
                    self.send(from, NatMessage::DialBackRefused { nonce });
                }
            }
            NatMessage::DialBackResult { nonce, reached, .. } => {
                if self
                    .asked
                    .is_some_and(|a| a.peer == from && a.nonce == nonce)
                {
                    self.conclude(from, reached, now);
                }
            }
            NatMessage::DialBackRefused { nonce } => {
                if self
                    .asked
                    .is_some_and(|a| a.peer == from && a.nonce == nonce)
                {
                    self.asked = None;
                    self.skipped.insert(from);
                    self.maybe_ask(now);
                }
            }
            NatMessage::PunchOffer { addrs } => {
                if self.config.punch && relayed {
                    let ours = self.public.clone();
                    self.send(from, NatMessage::PunchAnswer { addrs: ours });
                    self.punch(from, addrs, true);
                }
            }
            NatMessage::PunchAnswer { addrs } => {
                if self.config.punch && relayed {
                    self.punch(from, addrs, false);
                }
            }
            NatMessage::CircuitOpen { circuit, target } => {
                let target = PeerKey::from_bytes(target);
                let willing = self.reachability != Reachability::Unreachable;
                let connected = self.peers.contains_key(&target);
                let mut out = Vec::new();
                self.relay.handle_open(
                    (from, circuit),
                    target,
                    willing,
                    connected,
                    &mut self.ids,
                    now,
                    &mut out,
                );
                self.relay_actions(out);
            }
            NatMessage::CircuitIncoming {
                circuit,
                from: opener,
            } => {
                let mut out = Vec::new();
                self.ends
                    .handle_incoming(from, circuit, PeerKey::from_bytes(opener), &mut out);
                self.end_actions(out);
            }
            NatMessage::CircuitAccept { circuit } => {
                // Ids are unique per connection: one of the two knows it.
                let mut out = Vec::new();
                self.relay.handle_accept((from, circuit), now, &mut out);
                self.relay_actions(out);
                let mut out = Vec::new();
                self.ends.handle_accept(from, circuit, &mut out);
                self.end_actions(out);
            }
            NatMessage::CircuitClose { circuit, reason } => {
                let mut out = Vec::new();
                self.relay.handle_close((from, circuit), reason, &mut out);
                self.relay_actions(out);
                let mut out = Vec::new();
                self.ends.handle_close(from, circuit, reason, &mut out);
                self.end_actions(out);
            }
            message => self.handle_advert(from, remote, message, now),
        }
    }

    /// Both sides dial `peer` at its public addresses (at most `MAX_PUBLIC_ADDRS`, never a
    /// virtual one); the side that answered the offer first waits half a round trip, so
    /// that both sides' first packets cross.
    fn punch(&mut self, peer: PeerKey, addrs: Vec<SocketAddr>, wait_half_rtt: bool) {
        let addrs: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| !VirtualPaths::is_virtual(a))
            .take(MAX_PUBLIC_ADDRS)
            .collect();
        if !addrs.is_empty() {
            self.outputs.push_back(NatOutput::Punch {
                peer,
                addrs,
                wait_half_rtt,
            });
        }
    }

    /// Open a circuit through `relay` to `target`; its local id, or why not now.
    pub fn open_circuit(
        &mut self,
        relay: PeerKey,
        target: PeerKey,
        now: Instant,
    ) -> Result<u64, CircuitEnd> {
        if !self.peers.contains_key(&relay) {
            return Err(CircuitEnd::NotConnected);
        }
        let mut out = Vec::new();
        let local = self
            .ends
            .open(relay, target, &mut self.ids, now, &mut out)
            .ok_or(CircuitEnd::Limit)?;
        self.end_actions(out);
        Ok(local)
    }

    /// We close circuit `local` (its connection is gone).
    pub fn close_circuit(&mut self, local: u64) {
        let mut out = Vec::new();
        self.ends.close(local, &mut out);
        self.end_actions(out);
    }

    /// Relay: whether circuit `wire` on the connection to `peer` waits for its target's
    /// accept (its stream may arrive before the accept: two streams are not ordered).
    pub fn relay_leg_pending(&self, peer: PeerKey, wire: u64) -> bool {
        self.relay.is_pending((peer, wire))
    }

    /// The local id of circuit `wire` on the connection to `relay`, if it ends here.
    pub fn circuit_local(&self, relay: PeerKey, wire: u64) -> Option<u64> {
        self.ends.local(relay, wire)
    }

    /// The relay leg of circuit `local`: (relay, circuit id on its connection).
    pub fn circuit_leg(&self, local: u64) -> Option<Leg> {
        self.ends.leg(local)
    }

    /// Relay: the circuit with `leg` carried its byte budget.
    pub fn handle_circuit_exhausted(&mut self, leg: Leg) {
        let mut out = Vec::new();
        self.relay.handle_exhausted(leg, &mut out);
        self.relay_actions(out);
    }

    /// Circuits relayed since start.
    pub fn circuits_relayed(&self) -> u64 {
        self.relay.relayed
    }

    fn relay_actions(&mut self, out: Vec<RelayAction>) {
        for action in out {
            match action {
                RelayAction::Incoming { target, from } => self.send(
                    target.0,
                    NatMessage::CircuitIncoming {
                        circuit: target.1,
                        from: *from.as_bytes(),
                    },
                ),
                RelayAction::Accepted { opener } => {
                    self.send(opener.0, NatMessage::CircuitAccept { circuit: opener.1 })
                }
                RelayAction::Close { leg, reason } => {
                    if self.peers.contains_key(&leg.0) {
                        self.send(
                            leg.0,
                            NatMessage::CircuitClose {
                                circuit: leg.1,
                                reason,
                            },
                        );
                    }
                }
                RelayAction::Splice { opener, target, .. } => {
                    self.outputs.push_back(NatOutput::Relay(action));
                    self.outputs.push_back(NatOutput::Event(NatEvent::Relaying {
                        opener: opener.0,
                        target: target.0,
                    }));
                }
                RelayAction::Unsplice { .. } => self.outputs.push_back(NatOutput::Relay(action)),
            }
        }
    }

    fn end_actions(&mut self, out: Vec<EndAction>) {
        for action in out {
            match action {
                EndAction::Open {
                    relay,
                    wire,
                    target,
                } => self.send(
                    relay,
                    NatMessage::CircuitOpen {
                        circuit: wire,
                        target: *target.as_bytes(),
                    },
                ),
                EndAction::Accept { relay, wire } => {
                    self.send(relay, NatMessage::CircuitAccept { circuit: wire })
                }
                EndAction::Close {
                    relay,
                    wire,
                    reason,
                } => {
                    if self.peers.contains_key(&relay) {
                        self.send(
                            relay,
                            NatMessage::CircuitClose {
                                circuit: wire,
                                reason,
                            },
                        );
                    }
                }
                EndAction::Up {
                    local,
                    relay,
                    wire,
                    peer,
                    opener,
                } => {
                    self.outputs.push_back(NatOutput::CircuitUp {
                        local,
                        relay,
                        wire,
                        peer,
                        opener,
                    });
                    self.outputs
                        .push_back(NatOutput::Event(NatEvent::CircuitUp { peer, relay }));
                }
                EndAction::Down {
                    local,
                    peer,
                    reason,
                } => {
                    self.outputs.push_back(NatOutput::CircuitDown {
                        local,
                        peer,
                        reason,
                    });
                    self.outputs
                        .push_back(NatOutput::Event(NatEvent::CircuitDown { peer, reason }));
                }
            }
        }
    }

    /// Our dial-back of `to` (`NatOutput::DialBack`) ended.
    pub fn handle_dial_back_done(
        &mut self,
        to: PeerKey,
        addr: SocketAddr,
        nonce: u64,
        reached: bool,
        _now: Instant,
    ) {
        self.outputs
            .push_back(NatOutput::Event(NatEvent::DialBackServed {
                peer: to,
                addr,
                reached,
            }));
        if self.peers.contains_key(&to) {
            self.send(
                to,
                NatMessage::DialBackResult {
                    nonce,
                    addr,
                    reached,
                },
            );
        }
    }

    /// A dial-back handshake from `from` reached us (on a port other than its
    /// connection's): if we asked it, we are reachable.
    pub fn handle_dial_back_arrived(&mut self, from: PeerKey, now: Instant) {
        if self.asked.is_some_and(|a| a.peer == from) {
            self.conclude(from, true, now);
        }
    }

    /// Time passed: an unanswered dial-back request is given up, a due check starts.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut out = Vec::new();
        self.relay.handle_timeout(now, &mut out);
        self.relay_actions(out);
        let mut out = Vec::new();
        self.ends.handle_timeout(now, &mut out);
        self.end_actions(out);
        for (relay, query, addr) in self.relays.handle_timeout(now) {
            self.located(relay, query, addr, Vec::new());
        }
        if let Some(asked) = self.asked.filter(|a| a.until <= now) {
            self.asked = None;
            self.skipped.insert(asked.peer);
        }
        if self.next_check.is_some_and(|at| at <= now) {
            self.next_check = None;
            self.skipped.clear();
        }
        self.maybe_ask(now);
    }

    fn send(&mut self, to: PeerKey, message: NatMessage) {
        self.outputs.push_back(NatOutput::Send { to, message });
    }

    /// Recomputes the public addresses and the mapping type; reports changes. A new
    /// first public address makes the reachability check due.
    fn update_derived(&mut self, now: Instant) {
        let public = self.observed.public_addrs();
        if public != self.public {
            let moved = public.first() != self.public.first();
            self.public = public.clone();
            self.outputs
                .push_back(NatOutput::Event(NatEvent::PublicAddrs { addrs: public }));
            if moved && self.reachability != Reachability::Unknown {
                self.next_check = Some(now);
            }
        }
        let nat_type = self.observed.nat_type();
        if nat_type != self.nat_type {
            self.nat_type = nat_type;
            self.outputs
                .push_back(NatOutput::Event(NatEvent::NatType { nat_type }));
        }
    }

    /// Asks the next peer for a dial-back if a check is due and none is in flight: a
    /// connected peer that reported where it sees us and was not skipped this round (the
    /// smallest key, so that tests are deterministic).
    fn maybe_ask(&mut self, now: Instant) {
        if !self.config.dial_back || self.asked.is_some() {
            return;
        }
        if self.next_check.is_some_and(|at| at > now) {
            return;
        }
        let Some(peer) = self
            .peers
            .keys()
            .filter(|k| !self.skipped.contains(k) && self.observed.reported_by(k).is_some())
            .min()
            .copied()
        else {
            return;
        };
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        self.asked = Some(Asked {
            peer,
            nonce,
            // The peer's dial may take `dial_back_timeout`, then its answer travels back.
            until: now + 2 * self.config.dial_back_timeout,
        });
        self.send(peer, NatMessage::DialBack { nonce });
        self.outputs
            .push_back(NatOutput::Event(NatEvent::DialBackAsked { peer }));
    }

    /// `peer` answered our dial-back request: the verdict stands until `recheck_after`.
    fn conclude(&mut self, peer: PeerKey, reached: bool, now: Instant) {
        self.asked = None;
        self.skipped.clear();
        self.next_check = Some(now + self.config.recheck_after);
        self.reachability = if reached {
            Reachability::Reachable
        } else {
            Reachability::Unreachable
        };
        self.outputs
            .push_back(NatOutput::Event(NatEvent::Reachability {
                reachability: self.reachability,
                peer,
            }));
        self.sync_offering();
        self.sync_registrations();
    }

    /// Whether we may dial `peer` back now (and count it if so).
    fn may_serve(&mut self, peer: PeerKey, now: Instant) -> bool {
        if !self.config.dial_back {
            return false;
        }
        if self
            .served
            .get(&peer)
            .is_some_and(|at| now < *at + self.config.dial_back_peer_interval)
        {
            return false;
        }
        let max = self.config.max_dial_backs_per_minute;
        if !self
            .served_window
            .try_count(now, Duration::from_secs(60), max)
        {
            return false;
        }
        let interval = self.config.dial_back_peer_interval;
        self.served.retain(|_, at| now < *at + interval);
        self.served.insert(peer, now);
        true
    }
}

#[cfg(test)]
mod advert_tests;
#[cfg(test)]
mod relay_tests;
#[cfg(test)]
mod tests;
