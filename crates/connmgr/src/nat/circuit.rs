//! The circuits that end here, without I/O: opened by us through a relay to a peer we
//! cannot reach, or accepted from a relay for a peer that cannot reach us. Each has a
//! local id, which names its virtual path (`VirtualPaths::address`).

use std::collections::HashMap;
use std::time::Instant;

use super::relay::{CircuitEnd, RelayConfig, WireIds};
use crate::key::PeerKey;

#[derive(Debug, Clone, Copy)]
struct End {
    relay: PeerKey,
    wire: u64,
    peer: PeerKey,
    opener: bool,
    /// `Some(deadline)` while we wait for the relay's accept.
    pending: Option<Instant>,
}

/// What the end side asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndAction {
    /// Send `CircuitOpen { circuit: wire, target }` to `relay`.
    Open {
        /// The relay.
        relay: PeerKey,
        /// The id on its connection.
        wire: u64,
        /// The peer to reach.
        target: PeerKey,
    },
    /// Send `CircuitAccept { circuit: wire }` to `relay`.
    Accept {
        /// The relay.
        relay: PeerKey,
        /// The id on its connection.
        wire: u64,
    },
    /// Send `CircuitClose { circuit: wire, reason }` to `relay`.
    Close {
        /// The relay.
        relay: PeerKey,
        /// The id on its connection.
        wire: u64,
        /// Why.
        reason: CircuitEnd,
    },
    /// The circuit `local` carries packets now, to and from `peer` through `relay`; the
    /// opener dials `peer` at the circuit's virtual address.
    Up {
        /// Our id.
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
    /// The circuit `local` is gone (its virtual path with it).
    Down {
        /// Our id.
        local: u64,
        /// The peer at the other end.
        peer: PeerKey,
        /// Why.
        reason: CircuitEnd,
    },
}

/// The circuits ending here. See the module doc.
#[derive(Debug)]
pub struct CircuitEnds {
    config: RelayConfig,
    ends: HashMap<u64, End>,
    next_local: u64,
}

impl CircuitEnds {
    /// Ends under `config` (`accept_circuits`, `max_end_circuits`, `accept_timeout`).
    pub fn new(config: RelayConfig) -> Self {
        Self {
            config,
            ends: HashMap::new(),
            next_local: 1,
        }
    }

    fn new_local(&mut self) -> u64 {
        let local = self.next_local;
        self.next_local += 1;
        local
    }

    /// The relay leg of circuit `local`: (relay, wire id).
    pub fn leg(&self, local: u64) -> Option<(PeerKey, u64)> {
        self.ends.get(&local).map(|e| (e.relay, e.wire))
    }

    /// The local id of the circuit `wire` on the connection to `relay`.
    pub fn local(&self, relay: PeerKey, wire: u64) -> Option<u64> {
        self.ends
            .iter()
            .find(|(_, e)| e.relay == relay && e.wire == wire)
            .map(|(l, _)| *l)
    }

    /// Open circuits (and pending ones) to `peer`.
    pub fn to_peer(&self, peer: PeerKey) -> usize {
        self.ends.values().filter(|e| e.peer == peer).count()
    }

    /// Open a circuit through `relay` to `target`; `None` when `max_end_circuits` are in
    /// use.
    pub fn open(
        &mut self,
        relay: PeerKey,
        target: PeerKey,
        ids: &mut WireIds,
        now: Instant,
        out: &mut Vec<EndAction>,
    ) -> Option<u64> {
        if self.ends.len() >= self.config.max_end_circuits {
            return None;
        }
        let local = self.new_local();
        let wire = ids.allocate(relay);
        self.ends.insert(
            local,
            End {
                relay,
                wire,
                peer: target,
                opener: true,
                pending: Some(now + self.config.accept_timeout),
            },
        );
        out.push(EndAction::Open {
            relay,
            wire,
            target,
        });
        Some(local)
    }

    /// `relay` asks us to accept circuit `wire` from `from`.
    pub fn handle_incoming(
        &mut self,
        relay: PeerKey,
        wire: u64,
        from: PeerKey,
        out: &mut Vec<EndAction>,
    ) {
        if !self.config.accept_circuits
            || self.ends.len() >= self.config.max_end_circuits
            || self.local(relay, wire).is_some()
        {
            out.push(EndAction::Close {
                relay,
                wire,
                reason: CircuitEnd::Refused,
            });
            return;
        }
        let local = self.new_local();
        self.ends.insert(
            local,
            End {
                relay,
                wire,
                peer: from,
                opener: false,
                pending: None,
            },
        );
        out.push(EndAction::Accept { relay, wire });
        out.push(EndAction::Up {
            local,
            relay,
            wire,
            peer: from,
            opener: false,
        });
    }

    /// `relay` accepted our circuit `wire`.
    pub fn handle_accept(&mut self, relay: PeerKey, wire: u64, out: &mut Vec<EndAction>) {
        let Some(local) = self.local(relay, wire) else {
            return;
        };
        if let Some(end) = self.ends.get_mut(&local) {
            if end.opener && end.pending.take().is_some() {
                out.push(EndAction::Up {
                    local,
                    relay,
                    wire,
                    peer: end.peer,
                    opener: true,
                });
            }
        }
    }

    /// `relay` closed circuit `wire`.
    pub fn handle_close(
        &mut self,
        relay: PeerKey,
        wire: u64,
        reason: CircuitEnd,
        out: &mut Vec<EndAction>,
    ) {
        if let Some(local) = self.local(relay, wire) {
            if let Some(end) = self.ends.remove(&local) {
                out.push(EndAction::Down {
                    local,
                    peer: end.peer,
                    reason,
                });
            }
        }
    }

    /// We close circuit `local` (its connection is not needed any more).
    pub fn close(&mut self, local: u64, out: &mut Vec<EndAction>) {
        if let Some(end) = self.ends.remove(&local) {
            out.push(EndAction::Close {
                relay: end.relay,
                wire: end.wire,
                reason: CircuitEnd::Closed,
            });
            out.push(EndAction::Down {
                local,
                peer: end.peer,
                reason: CircuitEnd::Closed,
            });
        }
    }

    /// The connection to `relay` went down: every circuit through it is gone.
    pub fn handle_peer_down(&mut self, relay: PeerKey, out: &mut Vec<EndAction>) {
        let gone: Vec<u64> = self
            .ends
            .iter()
            .filter(|(_, e)| e.relay == relay)
            .map(|(l, _)| *l)
            .collect();
        for local in gone {
            if let Some(end) = self.ends.remove(&local) {
                out.push(EndAction::Down {
                    local,
                    peer: end.peer,
                    reason: CircuitEnd::Closed,
                });
            }
        }
    }

    /// Time passed: circuits the relay did not accept in time are given up.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<EndAction>) {
        let due: Vec<u64> = self
            .ends
            .iter()
            .filter(|(_, e)| e.pending.is_some_and(|at| at <= now))
            .map(|(l, _)| *l)
            .collect();
        for local in due {
            if let Some(end) = self.ends.remove(&local) {
                out.push(EndAction::Close {
                    relay: end.relay,
                    wire: end.wire,
                    reason: CircuitEnd::Timeout,
                });
                out.push(EndAction::Down {
                    local,
                    peer: end.peer,
                    reason: CircuitEnd::Timeout,
                });
            }
        }
    }

    /// When `handle_timeout` is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ends.values().filter_map(|e| e.pending).min()
    }
}
