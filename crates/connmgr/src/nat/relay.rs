//! Relay circuits without I/O: a relay's table of circuits between two of its peers
//! with its limits (`RelayTable`), and the circuits a node opens or accepts as an end
//! (`CircuitEnds`).
//!
//! Circuit ids on the wire belong to one connection. The side that sends `CircuitOpen`
//! or `CircuitIncoming` allocates the id; the smaller key of the connection allocates
//! even ids and the greater odd ones, so two circuits on one connection never share an
//! id whoever opened them. Each end maps its circuits to local ids, which name its
//! virtual paths.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::key::PeerKey;

/// Why a circuit ended or was refused (carried in `CircuitClose`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum CircuitEnd {
    /// The relay does not relay (switched off, or it is not reachable itself).
    #[error("the relay does not relay")]
    NotRelaying,
    /// The relay has no connection to the target.
    #[error("the relay has no connection to the target")]
    NotConnected,
    /// A limit of the relay (circuits in all, or per peer) is reached.
    #[error("a relay limit is reached")]
    Limit,
    /// The target refused the circuit.
    #[error("the target refused the circuit")]
    Refused,
    /// The circuit carried its byte budget.
    #[error("the circuit carried its byte budget")]
    ByteLimit,
    /// The circuit reached its lifetime.
    #[error("the circuit reached its lifetime")]
    Expired,
    /// The target did not answer in time.
    #[error("the target did not answer in time")]
    Timeout,
    /// An end closed it (or its connection to the relay went down).
    #[error("closed")]
    Closed,
}

/// A relay's limits; `Default` holds the node's defaults.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Relay circuits between peers (`relay = true`); off by default: it spends our
    /// bandwidth on others' traffic.
    pub enabled: bool,
    /// Most circuits at once.
    pub max_circuits: usize,
    /// Most circuits at once with one peer as either end.
    pub max_circuits_per_peer: usize,
    /// Bytes one circuit may carry (both directions) before it is closed.
    pub max_circuit_bytes: u64,
    /// How long one circuit may stay open.
    pub circuit_lifetime: Duration,
    /// How long the target may take to accept.
    pub accept_timeout: Duration,
    /// Accept circuits from relays as a target (be reached through a relay).
    pub accept_circuits: bool,
    /// Most circuits at once that end here.
    pub max_end_circuits: usize,
    /// Most peers registered with us to be found (`Locate`) at once.
    pub max_registrations: usize,
    /// Most `Locate` queries we answer per peer and minute.
    pub max_locates_per_minute: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            // A home connection carrying a few dozen replication sessions is what a
            // volunteer can give; a circuit that hits a limit is reopened or punched.
            max_circuits: 64,
            // An end keeps one circuit per peer it cannot reach directly, and a few
            // during a switch of paths.
            max_circuits_per_peer: 8,
            // A feed of some hundred megabytes passes whole; a pair that needs more
            // opens a new circuit, and counts against the limits again.
            max_circuit_bytes: 256 << 20,
            // Long enough for a replication session; short enough that a volunteer's
            // capacity returns without its operator.
            circuit_lifetime: Duration::from_secs(3600),
            // A round trip to the target and its decision, with loss.
            accept_timeout: Duration::from_secs(10),
            accept_circuits: true,
            max_end_circuits: 64,
            // A registration is a key and an address (about 100 bytes); a few hundred
            // home nodes is what one volunteer's circuit limits could serve anyway.
            max_registrations: 512,
            // A node dials a few addresses a minute that do not answer (DHT finds behind
            // NATs, redials); more is a scan of who is registered with us.
            max_locates_per_minute: 30,
        }
    }
}

/// Allocates circuit ids on each connection (our parity: even if our key is the
/// smaller), shared by every role we play on it, so one id names one circuit there.
#[derive(Debug)]
pub struct WireIds {
    me: PeerKey,
    next: HashMap<PeerKey, u64>,
}

impl WireIds {
    /// The allocator of node `me`.
    pub fn new(me: PeerKey) -> Self {
        Self {
            me,
            next: HashMap::new(),
        }
    }

    /// A fresh id on the connection to `peer`.
    pub fn allocate(&mut self, peer: PeerKey) -> u64 {
        let parity = u64::from(self.me > peer);
        let next = self.next.entry(peer).or_insert(parity);
        let id = *next;
        *next += 2;
        id
    }

    /// The connection to `peer` is gone: its ids start over on the next one.
    pub fn forget(&mut self, peer: &PeerKey) {
        self.next.remove(peer);
    }
}

/// One end of a spliced circuit at the relay: a peer and the id on its connection.
pub type Leg = (PeerKey, u64);

#[derive(Debug, Clone, Copy)]
struct Splice {
    opener: Leg,
    target: Leg,
    open: bool,
    /// Until when the target may accept (pending) or the circuit may live (open).
    until: Instant,
}

/// What the relay side asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayAction {
    /// Send `CircuitIncoming` to the target.
    Incoming {
        /// The target and the relay's id for the circuit on its connection.
        target: Leg,
        /// Who opens it.
        from: PeerKey,
    },
    /// Send `CircuitAccept` to the opener.
    Accepted {
        /// The opener and its id.
        opener: Leg,
    },
    /// Send `CircuitClose` to this leg.
    Close {
        /// The peer and its id.
        leg: Leg,
        /// Why.
        reason: CircuitEnd,
    },
    /// Forward packets between the two legs (both directions), at most `budget` bytes
    /// in all, until `Unsplice`.
    Splice {
        /// The opener's leg.
        opener: Leg,
        /// The target's leg.
        target: Leg,
        /// Bytes the circuit may carry.
        budget: u64,
    },
    /// Stop forwarding between the legs of this circuit.
    Unsplice {
        /// The opener's leg.
        opener: Leg,
        /// The target's leg.
        target: Leg,
    },
}

/// The relay's circuits between two of its peers. See the module doc.
#[derive(Debug)]
pub struct RelayTable {
    me: PeerKey,
    config: RelayConfig,
    splices: Vec<Splice>,
    /// Circuits relayed since start.
    pub relayed: u64,
}

impl RelayTable {
    /// A table for the relay `me`.
    pub fn new(me: PeerKey, config: RelayConfig) -> Self {
        Self {
            me,
            config,
            splices: Vec::new(),
            relayed: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Circuits pending or open.
    pub fn len(&self) -> usize {
        self.splices.len()
    }

    /// Whether no circuit is pending or open.
    pub fn is_empty(&self) -> bool {
        self.splices.is_empty()
    }

    fn per_peer(&self, key: PeerKey) -> usize {
        self.splices
            .iter()
            .filter(|s| s.opener.0 == key || s.target.0 == key)
            .count()
    }

    /// `opener` asks for circuit `id` to `target`; `willing` says whether we relay at all
    /// now (switched on and not known unreachable), `connected` whether we have a
    /// connection to the target.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_open(
        &mut self,
        opener: Leg,
        target: PeerKey,
        willing: bool,
        connected: bool,
        ids: &mut WireIds,
        now: Instant,
        out: &mut Vec<RelayAction>,
    ) {
        let refuse = if !willing || !self.config.enabled {
            Some(CircuitEnd::NotRelaying)
        } else if !connected || target == opener.0 || target == self.me {
            Some(CircuitEnd::NotConnected)
        } else if self.splices.iter().any(|s| s.opener == opener) {
            // A repeated id: the opener's mistake; refuse the newcomer only.
            Some(CircuitEnd::Refused)
        } else if self.splices.len() >= self.config.max_circuits
            || self.per_peer(opener.0) >= self.config.max_circuits_per_peer
            || self.per_peer(target) >= self.config.max_circuits_per_peer
        {
            Some(CircuitEnd::Limit)
        } else {
            None
        };
        if let Some(reason) = refuse {
            out.push(RelayAction::Close {
                leg: opener,
                reason,
            });
            return;
        }
        let leg = (target, ids.allocate(target));
        self.splices.push(Splice {
            opener,
            target: leg,
            open: false,
            until: now + self.config.accept_timeout,
        });
        out.push(RelayAction::Incoming {
            target: leg,
            from: opener.0,
        });
    }

    /// Whether `leg` belongs to a circuit whose target has not accepted yet.
    pub fn is_pending(&self, leg: Leg) -> bool {
        self.splices
            .iter()
            .any(|s| !s.open && (s.opener == leg || s.target == leg))
    }

    /// The target accepted the circuit `leg`.
    pub fn handle_accept(&mut self, leg: Leg, now: Instant, out: &mut Vec<RelayAction>) {
        let lifetime = self.config.circuit_lifetime;
        let budget = self.config.max_circuit_bytes;
        if let Some(s) = self.splices.iter_mut().find(|s| s.target == leg && !s.open) {
            s.open = true;
            s.until = now + lifetime;
            self.relayed += 1;
            out.push(RelayAction::Accepted { opener: s.opener });
            out.push(RelayAction::Splice {
                opener: s.opener,
                target: s.target,
                budget,
            });
        }
    }

    /// A leg of a circuit is gone (`CircuitClose` from that peer with `reason`, or its
    /// connection went down): the other leg is told.
    pub fn handle_close(&mut self, leg: Leg, reason: CircuitEnd, out: &mut Vec<RelayAction>) {
        let Some(i) = self
            .splices
            .iter()
            .position(|s| s.opener == leg || s.target == leg)
        else {
            return;
        };
        let s = self.splices.remove(i);
        let other = if s.opener == leg { s.target } else { s.opener };
        out.push(RelayAction::Close { leg: other, reason });
        if s.open {
            out.push(RelayAction::Unsplice {
                opener: s.opener,
                target: s.target,
            });
        }
    }

    /// The circuit with `leg` carried its byte budget.
    pub fn handle_exhausted(&mut self, leg: Leg, out: &mut Vec<RelayAction>) {
        let Some(s) = self
            .splices
            .iter()
            .find(|s| s.opener == leg || s.target == leg)
            .copied()
        else {
            return;
        };
        self.end(s, CircuitEnd::ByteLimit, out);
    }

    /// The connection to `peer` went down: every circuit through it ends.
    pub fn handle_peer_down(&mut self, peer: PeerKey, out: &mut Vec<RelayAction>) {
        let gone: Vec<Splice> = self
            .splices
            .iter()
            .filter(|s| s.opener.0 == peer || s.target.0 == peer)
            .copied()
            .collect();
        for s in gone {
            self.end(s, CircuitEnd::Closed, out);
        }
    }

    /// Time passed: unanswered circuits and expired ones end.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<RelayAction>) {
        let due: Vec<Splice> = self
            .splices
            .iter()
            .filter(|s| s.until <= now)
            .copied()
            .collect();
        for s in due {
            let reason = if s.open {
                CircuitEnd::Expired
            } else {
                CircuitEnd::Timeout
            };
            self.end(s, reason, out);
        }
    }

    /// When `handle_timeout` is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.splices.iter().map(|s| s.until).min()
    }

    /// Ends `s`, telling both legs.
    fn end(&mut self, s: Splice, reason: CircuitEnd, out: &mut Vec<RelayAction>) {
        self.splices
            .retain(|x| !(x.opener == s.opener && x.target == s.target));
        out.push(RelayAction::Close {
            leg: s.opener,
            reason,
        });
        out.push(RelayAction::Close {
            leg: s.target,
            reason,
        });
        if s.open {
            out.push(RelayAction::Unsplice {
                opener: s.opener,
                target: s.target,
            });
        }
    }
}
