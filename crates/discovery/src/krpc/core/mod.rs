//! [`DhtCore`]: a Mainline DHT node without I/O.
//!
//! The driver owns the UDP socket(s) and a timer, and calls, in this order:
//! - [`DhtCore::handle_datagram`] for every datagram received, and
//!   [`DhtCore::handle_timeout`] when the instant from [`DhtCore::poll_timeout`] passes;
//!   commands ([`DhtCore::bootstrap`], [`DhtCore::get_peers`], [`DhtCore::announce`],
//!   [`DhtCore::find_node`], [`DhtCore::ping`]) at any time;
//! - then drains [`DhtCore::poll_transmit`] (datagrams to send) and
//!   [`DhtCore::poll_event`] (peers found, lookups done, address and id changes), and
//!   re-arms its timer from [`DhtCore::poll_timeout`].
//!
//! Time is always passed in; randomness comes from a seeded generator, so a network of
//! cores runs deterministically in a test with virtual time.
//!
//! The node id is given at construction and used for every query, response and
//! announce. It changes only once the external address is known (from the `ip` field of
//! responses, by votes of distinct nodes) and is not a valid BEP 42 id for it; then
//! [`DhtEvent::IdChanged`] tells the driver to persist the new one.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use self::pending::Pending;
use self::search::Search;
use super::id::Id;
use super::limit::RateLimiter;
use super::message::{Body, DecodeError, Message, NodeInfo, ERROR_METHOD_UNKNOWN, ERROR_PROTOCOL};
use super::peers::PeerStore;
use super::routing::RoutingTable;
use super::rtt::RttEstimate;
use super::token::Tokens;

pub use self::config::{
    DhtCoreConfig, ALPHA, MAINTENANCE_EVERY, MAX_PEERS_PER_LOOKUP, MAX_VERIFY_PINGS,
};
pub use self::search::{LookupId, LookupKind};

mod address;
mod config;
mod lookups;
mod pending;
mod queries;
mod search;
mod sending;
mod timers;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// The KRPC message.
    pub payload: Vec<u8>,
}

/// What the core reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhtEvent {
    /// Peers arrived for a `get_peers` or announce lookup (each one once per lookup),
    /// reported as soon as the response that carried them was handled.
    Peers {
        /// The lookup.
        lookup: LookupId,
        /// Its infohash.
        info_hash: Id,
        /// New peers.
        peers: Vec<SocketAddr>,
    },
    /// A lookup finished: the closest nodes seen have answered (or none is left).
    LookupDone {
        /// The lookup.
        lookup: LookupId,
        /// What it did.
        kind: LookupKind,
        /// Its target or infohash.
        target: Id,
        /// The closest nodes that answered, nearest first, at most K per family.
        closest: Vec<NodeInfo>,
        /// Announces stored (for [`LookupKind::Announce`]).
        announced: usize,
        /// Nodes queried.
        queried: usize,
    },
    /// Enough nodes agree on our external IP (and it changed).
    ExternalAddress {
        /// The address they see.
        ip: IpAddr,
    },
    /// Our node id changed to a BEP 42 id for our external address: persist it.
    IdChanged {
        /// The new id.
        id: Id,
    },
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DhtStats {
    /// Well-formed queries received.
    pub queries_in: u64,
    /// Queries answered (with a response or a KRPC error).
    pub queries_answered: u64,
    /// Queries dropped by the per-source rate limit.
    pub queries_rate_limited: u64,
    /// Datagrams that were not KRPC we handle.
    pub malformed_in: u64,
    /// Queries we sent.
    pub queries_out: u64,
    /// Responses to our queries.
    pub responses_in: u64,
    /// KRPC errors in answer to our queries.
    pub errors_in: u64,
    /// Our queries that got no answer in time.
    pub timeouts: u64,
    /// Responses and errors that matched no query of ours.
    pub unsolicited_in: u64,
    /// `announce_peer` queries stored.
    pub announces_stored: u64,
    /// `announce_peer` queries refused for a bad token.
    pub bad_tokens: u64,
}

/// Why a lookup did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// `max_lookups` are running.
    #[error("{max} lookups are running already")]
    TooManyLookups {
        /// The limit.
        max: usize,
    },
    /// No node in the routing tables and no bootstrap address: bootstrap first.
    #[error("no node to start from; bootstrap first")]
    NoNodes,
}

/// A Mainline DHT node without I/O. See the module docs for the calling order.
#[derive(Debug)]
pub struct DhtCore {
    config: DhtCoreConfig,
    id: Id,
    rng: StdRng,
    v4: RoutingTable,
    v6: RoutingTable,
    tokens: Tokens,
    peers: PeerStore,
    limiter: RateLimiter,
    pending: BTreeMap<u32, Pending>,
    next_tid: u32,
    searches: BTreeMap<LookupId, Search>,
    next_lookup: u64,
    /// Round trips over all nodes: the timeout for a node never measured.
    rtt: RttEstimate,
    votes: VecDeque<(IpAddr, IpAddr)>,
    external: [Option<IpAddr>; 2],
    next_maintenance: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<DhtEvent>,
    stats: DhtStats,
}

impl DhtCore {
    /// A node with id `id` (persisted by the driver), randomness from `seed`.
    pub fn new(config: DhtCoreConfig, id: Id, seed: u64, now: Instant) -> DhtCore {
        let mut rng = StdRng::seed_from_u64(seed);
        let tokens = Tokens::new(&mut rng, now);
        let next_tid = rng.gen();
        DhtCore {
            v4: RoutingTable::new(id, config.restrict_ips, now),
            v6: RoutingTable::new(id, config.restrict_ips, now),
            peers: PeerStore::new(config.peer_store),
            limiter: RateLimiter::new(config.rate_limit),
            config,
            id,
            rng,
            tokens,
            pending: BTreeMap::new(),
            next_tid,
            searches: BTreeMap::new(),
            next_lookup: 1,
            rtt: RttEstimate::default(),
            votes: VecDeque::new(),
            external: [None, None],
            next_maintenance: now + MAINTENANCE_EVERY,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: DhtStats::default(),
        }
    }

    /// Our node id.
    pub fn id(&self) -> Id {
        self.id
    }

    /// The configuration.
    pub fn config(&self) -> &DhtCoreConfig {
        &self.config
    }

    /// Leaves or enters read-only mode (BEP 43): a driver that starts read-only and finds
    /// that others reach it switches to answering queries.
    pub fn set_read_only(&mut self, read_only: bool) {
        self.config.read_only = read_only;
    }

    /// The routing table of one family.
    pub fn table(&self, v6: bool) -> &RoutingTable {
        if v6 {
            &self.v6
        } else {
            &self.v4
        }
    }

    fn table_mut(&mut self, v6: bool) -> &mut RoutingTable {
        if v6 {
            &mut self.v6
        } else {
            &mut self.v4
        }
    }

    /// The announced peers we store for others.
    pub fn peer_store(&self) -> &PeerStore {
        &self.peers
    }

    /// Our external IP of one family, once enough nodes agreed on it.
    pub fn external_ip(&self, v6: bool) -> Option<IpAddr> {
        self.external[usize::from(v6)]
    }

    /// Counters.
    pub fn stats(&self) -> DhtStats {
        self.stats
    }

    /// Lookups running (internal refreshes included).
    pub fn lookups(&self) -> usize {
        self.searches.len()
    }

    /// Queries of ours awaiting an answer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn family_enabled(&self, addr: &SocketAddr) -> bool {
        if addr.is_ipv6() {
            self.config.ipv6
        } else {
            self.config.ipv4
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<DhtEvent> {
        self.events.pop_front()
    }

    /// When [`DhtCore::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pending = self
            .pending
            .values()
            .map(|p| if p.soft_fired { p.hard } else { p.soft })
            .min();
        [
            pending,
            Some(self.tokens.poll_timeout()),
            Some(self.next_maintenance),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ----- receiving -----

    /// A datagram arrived from `from`.
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        if !self.family_enabled(&from) || from.port() == 0 {
            return;
        }
        let msg = match Message::decode(data) {
            Ok(msg) => msg,
            Err(DecodeError::BadQuery { tid, reason }) => {
                self.stats.malformed_in += 1;
                self.answer_error(from, tid, ERROR_PROTOCOL, reason, now);
                return;
            }
            Err(DecodeError::UnknownMethod { tid }) => {
                self.stats.malformed_in += 1;
                self.answer_error(from, tid, ERROR_METHOD_UNKNOWN, "method unknown", now);
                return;
            }
            Err(_) => {
                self.stats.malformed_in += 1;
                return;
            }
        };
        match msg.body {
            Body::Query { id, query } => {
                self.handle_query(from, msg.tid, id, query, msg.read_only, now)
            }
            Body::Response(response) => {
                self.handle_answer(from, msg.tid, Some(response), msg.ip, now)
            }
            Body::Error { .. } => self.handle_answer(from, msg.tid, None, msg.ip, now),
        }
    }
}
