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

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::id::{bep42_exempt, Id};
use super::limit::{RateLimitConfig, RateLimiter};
use super::lookup::Lookup;
use super::message::{
    Body, DecodeError, Message, NodeInfo, Query, Response, TxId, Want, ERROR_METHOD_UNKNOWN,
    ERROR_PROTOCOL,
};
use super::peers::{PeerStore, PeerStoreConfig};
use super::routing::{Inserted, RoutingTable, K};
use super::rtt::{RttEstimate, INITIAL_TIMEOUT, MAX_TIMEOUT};
use super::token::Tokens;

/// Queries in flight per lookup (BEP 5's Kademlia alpha).
pub const ALPHA: usize = 3;

/// How often expired announces are dropped and stale buckets refreshed.
pub const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);

/// Peers remembered per lookup to report each one once; more are dropped. A swarm
/// larger than this is beyond what one node dials.
pub const MAX_PEERS_PER_LOOKUP: usize = 1024;

/// Pings in flight to verify nodes that queried us. Anyone can query us from any
/// (spoofed) address; without this bound, a flood of queriers would fill our pending
/// queries and starve our own lookups.
pub const MAX_VERIFY_PINGS: usize = 64;

/// `ip` votes remembered (one per voter IP, the most recent ones).
const MAX_VOTES: usize = 32;

/// What the core does and how much it accepts.
#[derive(Debug, Clone)]
pub struct DhtCoreConfig {
    /// BEP 43 read-only: send `ro = 1` with every query and answer no query. For a node
    /// that others cannot reach (behind a NAT or firewall).
    pub read_only: bool,
    /// Take part in the IPv4 DHT.
    pub ipv4: bool,
    /// Take part in the IPv6 DHT (BEP 32).
    pub ipv6: bool,
    /// At most one routing table entry per IP address. A loopback test network, where
    /// every node has the same IP, turns it off.
    pub restrict_ips: bool,
    /// Keep out of the routing table nodes whose id is not a valid BEP 42 id for their
    /// (public) IP. Off by default, as in libtorrent: many nodes still lack such ids.
    pub enforce_bep42: bool,
    /// Switch to a BEP 42 id once the external address is known and our id is not
    /// valid for it.
    pub bep42_id: bool,
    /// Queries in flight per lookup.
    pub alpha: usize,
    /// Distinct nodes that must report the same external IP before we believe it.
    pub min_votes: usize,
    /// Lookups running at once (each holds up to `alpha` queries in flight).
    pub max_lookups: usize,
    /// Queries of ours awaiting an answer, over all lookups and pings.
    pub max_pending: usize,
    /// Our `v` field: two letters for the client, two bytes of version.
    pub version: Option<[u8; 4]>,
    /// Per-source rate limit on queries answered.
    pub rate_limit: RateLimitConfig,
    /// Bounds of the store of announced peers.
    pub peer_store: PeerStoreConfig,
}

impl Default for DhtCoreConfig {
    fn default() -> Self {
        DhtCoreConfig {
            read_only: false,
            ipv4: true,
            ipv6: true,
            restrict_ips: true,
            enforce_bep42: false,
            bep42_id: true,
            alpha: ALPHA,
            // Three agreeing nodes: one liar or one NAT-confused node cannot move us.
            min_votes: 3,
            max_lookups: 64,
            // 64 lookups of 3 in flight, plus pings, plus slow queries still open.
            max_pending: 1024,
            version: Some(*b"R8\x00\x01"),
            rate_limit: RateLimitConfig::default(),
            peer_store: PeerStoreConfig::default(),
        }
    }
}

/// Identifies a lookup started by a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// What a lookup does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKind {
    /// `find_node` towards a target (bootstrap, refresh).
    FindNode,
    /// `get_peers` for an infohash.
    GetPeers,
    /// `get_peers`, then `announce_peer` to the closest nodes that gave a token.
    Announce {
        /// The port to announce; `None` announces the DHT socket's own port
        /// (`implied_port`), which is what a node behind a NAT wants.
        port: Option<u16>,
    },
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Search { id: LookupId, seed: bool },
    Announce { id: LookupId },
    Ping,
}

#[derive(Debug, Clone)]
struct Pending {
    to: SocketAddr,
    sent: Instant,
    soft: Instant,
    hard: Instant,
    soft_fired: bool,
    purpose: Purpose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Searching,
    Announcing,
}

#[derive(Debug)]
struct Search {
    kind: LookupKind,
    target: Id,
    /// One lookup per address family (IPv4 first).
    parts: Vec<Lookup>,
    seen: HashSet<SocketAddr>,
    internal: bool,
    phase: Phase,
    announce_pending: usize,
    announced: usize,
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

    // ----- commands -----

    /// Pings `addr`; it enters the routing table if it answers (a node from a saved
    /// table, or one the user named).
    pub fn ping(&mut self, addr: SocketAddr, now: Instant) -> bool {
        self.family_enabled(&addr) && self.send_query(addr, Query::Ping, Purpose::Ping, now)
    }

    /// Joins the DHT through `seeds` (addresses whose ids we do not know) and the nodes
    /// already in the tables: a `find_node` lookup for our own id.
    pub fn bootstrap(
        &mut self,
        seeds: &[SocketAddr],
        now: Instant,
    ) -> Result<LookupId, StartError> {
        self.start(LookupKind::FindNode, self.id, seeds, false, now)
    }

    /// Looks up the nodes closest to `target`.
    pub fn find_node(&mut self, target: Id, now: Instant) -> Result<LookupId, StartError> {
        self.start(LookupKind::FindNode, target, &[], false, now)
    }

    /// Looks up the peers of `info_hash`: [`DhtEvent::Peers`] as they arrive, then
    /// [`DhtEvent::LookupDone`].
    pub fn get_peers(&mut self, info_hash: Id, now: Instant) -> Result<LookupId, StartError> {
        self.start(LookupKind::GetPeers, info_hash, &[], false, now)
    }

    /// Looks up the peers of `info_hash` as [`DhtCore::get_peers`] does, then announces
    /// `port` (or, with `None`, the DHT socket's port) to the closest nodes that answered.
    pub fn announce(
        &mut self,
        info_hash: Id,
        port: Option<u16>,
        now: Instant,
    ) -> Result<LookupId, StartError> {
        self.start(LookupKind::Announce { port }, info_hash, &[], false, now)
    }

    /// Stops a lookup; answers still in flight update the routing table only.
    pub fn cancel(&mut self, lookup: LookupId) -> bool {
        self.searches.remove(&lookup).is_some()
    }

    fn start(
        &mut self,
        kind: LookupKind,
        target: Id,
        seeds: &[SocketAddr],
        internal: bool,
        now: Instant,
    ) -> Result<LookupId, StartError> {
        if self.searches.len() >= self.config.max_lookups {
            return Err(StartError::TooManyLookups {
                max: self.config.max_lookups,
            });
        }
        // One part per enabled family, even one with no node yet: answers on the other
        // family bring it nodes (BEP 32 `want`), and then it runs too.
        let mut parts = Vec::new();
        let mut any_node = false;
        for v6 in [false, true] {
            let enabled = if v6 {
                self.config.ipv6
            } else {
                self.config.ipv4
            };
            if !enabled {
                continue;
            }
            let has_seed = seeds.iter().any(|s| s.is_ipv6() == v6);
            let start = self.table(v6).closest(&target, 2 * K, now);
            any_node |= has_seed || !start.is_empty();
            parts.push(Lookup::new(target, self.id, v6, start));
        }
        if !any_node {
            return Err(StartError::NoNodes);
        }
        let id = LookupId(self.next_lookup);
        self.next_lookup += 1;
        self.searches.insert(
            id,
            Search {
                kind,
                target,
                parts,
                seen: HashSet::new(),
                internal,
                phase: Phase::Searching,
                announce_pending: 0,
                announced: 0,
            },
        );
        if kind != LookupKind::FindNode {
            // What was announced to us is found at once (in a small network we may be
            // the node closest to the infohash).
            let mut local = self.peers.get(&target, false, now, &mut self.rng);
            local.extend(self.peers.get(&target, true, now, &mut self.rng));
            if let Some(search) = self.searches.get_mut(&id) {
                local.retain(|peer| search.seen.insert(*peer));
            }
            if !local.is_empty() {
                self.events.push_back(DhtEvent::Peers {
                    lookup: id,
                    info_hash: target,
                    peers: local,
                });
            }
        }
        for seed in seeds {
            if !self.family_enabled(seed) {
                continue;
            }
            let query = self.search_query(kind, target);
            if self.send_query(*seed, query, Purpose::Search { id, seed: true }, now) {
                if let Some(part) = self.part_mut(id, seed.is_ipv6()) {
                    part.seed_sent();
                }
            }
        }
        self.drive(id, now);
        Ok(id)
    }

    fn want(&self) -> Option<Want> {
        (self.config.ipv4 && self.config.ipv6).then_some(Want { v4: true, v6: true })
    }

    fn search_query(&self, kind: LookupKind, target: Id) -> Query {
        match kind {
            LookupKind::FindNode => Query::FindNode {
                target,
                want: self.want(),
            },
            LookupKind::GetPeers | LookupKind::Announce { .. } => Query::GetPeers {
                info_hash: target,
                want: self.want(),
            },
        }
    }

    fn part_mut(&mut self, id: LookupId, v6: bool) -> Option<&mut Lookup> {
        let search = self.searches.get_mut(&id)?;
        let index = search.parts.iter().position(|p| p.is_v6() == v6)?;
        search.parts.get_mut(index)
    }

    /// Sends what the lookup wants sent, and finishes it when it is done.
    fn drive(&mut self, id: LookupId, now: Instant) {
        let alpha = self.config.alpha;
        let Some(search) = self.searches.get_mut(&id) else {
            return;
        };
        let (kind, target) = (search.kind, search.target);
        if search.phase == Phase::Searching {
            let mut to_query = Vec::new();
            for part in &mut search.parts {
                if !part.is_done() {
                    to_query.extend(part.next_queries(alpha));
                }
            }
            for node in to_query {
                let query = self.search_query(kind, target);
                if !self.send_query(node.addr, query, Purpose::Search { id, seed: false }, now) {
                    if let Some(part) = self.part_mut(id, node.addr.is_ipv6()) {
                        part.handle_failure(node.addr);
                    }
                }
            }
            let Some(search) = self.searches.get_mut(&id) else {
                return;
            };
            if !search.parts.iter().all(Lookup::is_done) {
                return;
            }
            if let LookupKind::Announce { port } = kind {
                search.phase = Phase::Announcing;
                let targets: Vec<(NodeInfo, Vec<u8>)> = search
                    .parts
                    .iter()
                    .flat_map(|p| p.answered(K))
                    .filter_map(|(node, token)| token.map(|t| (node, t)))
                    .collect();
                for (node, token) in targets {
                    let query = Query::AnnouncePeer {
                        info_hash: target,
                        port: port.unwrap_or(0),
                        implied_port: port.is_none(),
                        token,
                    };
                    if self.send_query(node.addr, query, Purpose::Announce { id }, now) {
                        if let Some(search) = self.searches.get_mut(&id) {
                            search.announce_pending += 1;
                        }
                    }
                }
            }
        }
        let Some(search) = self.searches.get(&id) else {
            return;
        };
        let finished = match search.phase {
            Phase::Searching => search.parts.iter().all(Lookup::is_done),
            Phase::Announcing => search.announce_pending == 0,
        };
        if finished {
            if let Some(search) = self.searches.remove(&id) {
                if !search.internal {
                    self.events.push_back(DhtEvent::LookupDone {
                        lookup: id,
                        kind: search.kind,
                        target: search.target,
                        closest: search
                            .parts
                            .iter()
                            .flat_map(|p| p.answered(K))
                            .map(|(node, _)| node)
                            .collect(),
                        announced: search.announced,
                        queried: search.parts.iter().map(Lookup::queried).sum(),
                    });
                }
            }
        }
    }

    // ----- sending -----

    fn timeout_for(&self, addr: SocketAddr) -> Duration {
        self.table(addr.is_ipv6())
            .rtt(addr)
            .and_then(|rtt| rtt.timeout())
            .or_else(|| self.rtt.timeout())
            .unwrap_or(INITIAL_TIMEOUT)
    }

    fn send_query(&mut self, to: SocketAddr, query: Query, purpose: Purpose, now: Instant) -> bool {
        if self.pending.len() >= self.config.max_pending {
            return false;
        }
        let mut tid = self.next_tid;
        while self.pending.contains_key(&tid) {
            tid = tid.wrapping_add(1);
        }
        self.next_tid = tid.wrapping_add(1);
        let msg = Message {
            tid: TxId::new(&tid.to_be_bytes()).unwrap_or_else(|| unreachable!("4 bytes fit")),
            body: Body::Query { id: self.id, query },
            read_only: self.config.read_only,
            ip: None,
            version: self.config.version,
        };
        self.transmits.push_back(Transmit {
            to,
            payload: msg.encode(),
        });
        self.pending.insert(
            tid,
            Pending {
                to,
                sent: now,
                soft: now + self.timeout_for(to),
                hard: now + MAX_TIMEOUT,
                soft_fired: false,
                purpose,
            },
        );
        self.stats.queries_out += 1;
        true
    }

    fn reply(&mut self, to: SocketAddr, tid: TxId, body: Body) {
        let msg = Message {
            tid,
            body,
            read_only: false,
            ip: Some(to),
            version: self.config.version,
        };
        self.transmits.push_back(Transmit {
            to,
            payload: msg.encode(),
        });
        self.stats.queries_answered += 1;
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

    fn answer_error(&mut self, to: SocketAddr, tid: TxId, code: i64, message: &str, now: Instant) {
        if self.config.read_only {
            return;
        }
        if !self.limiter.allow(to.ip(), now) {
            self.stats.queries_rate_limited += 1;
            return;
        }
        let body = Body::Error {
            code,
            message: message.to_string(),
        };
        self.reply(to, tid, body);
    }

    fn handle_query(
        &mut self,
        from: SocketAddr,
        tid: TxId,
        querier: Id,
        query: Query,
        read_only: bool,
        now: Instant,
    ) {
        self.stats.queries_in += 1;
        if self.config.read_only {
            // BEP 43: a read-only node answers nothing.
            return;
        }
        if !self.limiter.allow(from.ip(), now) {
            self.stats.queries_rate_limited += 1;
            return;
        }
        if !read_only {
            self.note_querier(
                NodeInfo {
                    id: querier,
                    addr: from,
                },
                now,
            );
        }
        let mut response = Response {
            id: self.id,
            ..Response::default()
        };
        match query {
            Query::Ping => {}
            Query::FindNode { target, want } => {
                self.fill_nodes(&mut response, &target, from, want, now)
            }
            Query::GetPeers { info_hash, want } => {
                response.token = Some(self.tokens.issue(from.ip(), &info_hash).to_vec());
                response.values = self
                    .peers
                    .get(&info_hash, from.is_ipv6(), now, &mut self.rng);
                self.fill_nodes(&mut response, &info_hash, from, want, now);
            }
            Query::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            } => {
                if !self.tokens.check(from.ip(), &info_hash, &token) {
                    self.stats.bad_tokens += 1;
                    let body = Body::Error {
                        code: ERROR_PROTOCOL,
                        message: "bad token".into(),
                    };
                    self.reply(from, tid, body);
                    return;
                }
                let port = if implied_port { from.port() } else { port };
                self.peers
                    .insert(info_hash, SocketAddr::new(from.ip(), port), now);
                self.stats.announces_stored += 1;
            }
        }
        self.reply(from, tid, Body::Response(response));
    }

    /// The K closest nodes of the families the querier wants (its own by default).
    fn fill_nodes(
        &self,
        response: &mut Response,
        target: &Id,
        from: SocketAddr,
        want: Option<Want>,
        now: Instant,
    ) {
        let want = want.filter(|w| w.v4 || w.v6).unwrap_or(Want {
            v4: from.is_ipv4(),
            v6: from.is_ipv6(),
        });
        if want.v4 && self.config.ipv4 {
            response.nodes = closest_but(&self.v4, target, from, now);
        }
        if want.v6 && self.config.ipv6 {
            response.nodes6 = closest_but(&self.v6, target, from, now);
        }
    }

    /// A node that is not read-only queried us: refresh it if we know it, else ping it to
    /// see that it answers before it enters the table.
    fn note_querier(&mut self, node: NodeInfo, now: Instant) {
        let v6 = node.addr.is_ipv6();
        if self.config.enforce_bep42 && !node.id.is_bep42_valid_for(node.addr.ip()) {
            return;
        }
        match self.table(v6).get(node.addr) {
            Some(entry) if entry.node.id == node.id => {
                self.table_mut(v6).insert(node, None, now);
            }
            _ => {
                let mut pings = 0;
                let mut pinging = false;
                for p in self.pending.values() {
                    pings += usize::from(p.purpose == Purpose::Ping);
                    pinging |= p.to == node.addr;
                }
                if !pinging && pings < MAX_VERIFY_PINGS && self.table(v6).would_add(&node, now) {
                    self.send_query(node.addr, Query::Ping, Purpose::Ping, now);
                }
            }
        }
    }

    fn handle_answer(
        &mut self,
        from: SocketAddr,
        tid: TxId,
        response: Option<Response>,
        ip: Option<SocketAddr>,
        now: Instant,
    ) {
        let key = <[u8; 4]>::try_from(tid.as_bytes())
            .ok()
            .map(u32::from_be_bytes);
        let Some(key) = key.filter(|k| self.pending.get(k).is_some_and(|p| p.to == from)) else {
            self.stats.unsolicited_in += 1;
            return;
        };
        let Some(pending) = self.pending.remove(&key) else {
            return;
        };
        let v6 = from.is_ipv6();
        let Some(response) = response else {
            self.stats.errors_in += 1;
            self.end_query(&pending, false, now);
            return;
        };
        if response.id == self.id {
            // Ourselves, or a node pretending to be us: never a table entry.
            self.end_query(&pending, false, now);
            return;
        }
        self.stats.responses_in += 1;
        let rtt = now.saturating_duration_since(pending.sent);
        self.rtt.sample(rtt);
        let node = NodeInfo {
            id: response.id,
            addr: from,
        };
        if !self.config.enforce_bep42 || response.id.is_bep42_valid_for(from.ip()) {
            if let Inserted::Full { ping: Some(old) } =
                self.table_mut(v6).insert(node, Some(rtt), now)
            {
                if !self.pending.values().any(|p| p.to == old.addr) {
                    self.send_query(old.addr, Query::Ping, Purpose::Ping, now);
                }
            }
        }
        if let Some(ip) = ip {
            self.vote(from.ip(), ip.ip(), now);
        }
        match pending.purpose {
            Purpose::Search { id, seed } => {
                let Some(search) = self.searches.get_mut(&id) else {
                    return;
                };
                for part in &mut search.parts {
                    if part.is_v6() == v6 {
                        if seed {
                            part.seed_done(pending.soft_fired);
                            part.absorb(&response);
                        } else {
                            part.handle_response(from, &response);
                        }
                    } else {
                        part.absorb(&response);
                    }
                }
                if search.kind != LookupKind::FindNode {
                    let mut new = Vec::new();
                    for peer in &response.values {
                        if peer.port() == 0 || search.seen.len() >= MAX_PEERS_PER_LOOKUP {
                            continue;
                        }
                        if search.seen.insert(*peer) {
                            new.push(*peer);
                        }
                    }
                    if !new.is_empty() {
                        self.events.push_back(DhtEvent::Peers {
                            lookup: id,
                            info_hash: search.target,
                            peers: new,
                        });
                    }
                }
                self.drive(id, now);
            }
            Purpose::Announce { id } => {
                if let Some(search) = self.searches.get_mut(&id) {
                    search.announce_pending = search.announce_pending.saturating_sub(1);
                    search.announced += 1;
                }
                self.drive(id, now);
            }
            Purpose::Ping => {}
        }
    }

    /// A query of ours ended without a useful answer (`timed_out`: no answer at all).
    fn end_query(&mut self, pending: &Pending, timed_out: bool, now: Instant) {
        if timed_out {
            self.stats.timeouts += 1;
            self.table_mut(pending.to.is_ipv6())
                .handle_failure(pending.to, now);
        }
        match pending.purpose {
            Purpose::Search { id, seed } => {
                if let Some(part) = self.part_mut(id, pending.to.is_ipv6()) {
                    if seed {
                        part.seed_done(pending.soft_fired);
                    } else {
                        part.handle_failure(pending.to);
                    }
                }
                self.drive(id, now);
            }
            Purpose::Announce { id } => {
                if let Some(search) = self.searches.get_mut(&id) {
                    search.announce_pending = search.announce_pending.saturating_sub(1);
                }
                self.drive(id, now);
            }
            Purpose::Ping => {}
        }
    }

    /// A responder saw us at `reported`.
    fn vote(&mut self, voter: IpAddr, reported: IpAddr, now: Instant) {
        if voter.is_ipv6() != reported.is_ipv6() {
            return;
        }
        self.votes.retain(|(v, _)| *v != voter);
        self.votes.push_back((voter, reported));
        if self.votes.len() > MAX_VOTES {
            self.votes.pop_front();
        }
        let v6 = reported.is_ipv6();
        let mut best: Option<(IpAddr, usize)> = None;
        for (_, ip) in self.votes.iter().filter(|(_, ip)| ip.is_ipv6() == v6) {
            let count = self.votes.iter().filter(|(_, other)| other == ip).count();
            if best.is_none_or(|(_, c)| count > c) {
                best = Some((*ip, count));
            }
        }
        let Some((ip, count)) = best else {
            return;
        };
        if count < self.config.min_votes || self.external[usize::from(v6)] == Some(ip) {
            return;
        }
        self.external[usize::from(v6)] = Some(ip);
        self.events.push_back(DhtEvent::ExternalAddress { ip });
        self.maybe_change_id(now);
    }

    /// Switches to a BEP 42 id if ours is valid for none of our public external IPs.
    fn maybe_change_id(&mut self, now: Instant) {
        if !self.config.bep42_id {
            return;
        }
        let public: Vec<IpAddr> = self
            .external
            .iter()
            .flatten()
            .copied()
            .filter(|ip| !bep42_exempt(*ip))
            .collect();
        let Some(first) = public.first().copied() else {
            return;
        };
        if public.iter().any(|ip| self.id.is_bep42_valid_for(*ip)) {
            return;
        }
        let seed: u8 = self.rng.gen();
        let id = Id::bep42(first, seed, &mut self.rng);
        self.id = id;
        self.v4.rebuild(id, now);
        self.v6.rebuild(id, now);
        self.events.push_back(DhtEvent::IdChanged { id });
    }

    // ----- time -----

    /// Runs what is due at `now`: query timeouts, token rotation, maintenance.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.hard || (!p.soft_fired && now >= p.soft))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(pending) = self.pending.get_mut(&key) else {
                continue;
            };
            if now >= pending.hard {
                if let Some(pending) = self.pending.remove(&key) {
                    self.end_query(&pending, true, now);
                }
                continue;
            }
            pending.soft_fired = true;
            let pending = pending.clone();
            if let Purpose::Search { id, seed } = pending.purpose {
                if let Some(part) = self.part_mut(id, pending.to.is_ipv6()) {
                    if seed {
                        part.seed_slow();
                    } else {
                        part.handle_slow(pending.to);
                    }
                }
                self.drive(id, now);
            }
        }
        // A lookup whose queries could not be sent (every pending slot taken) has no
        // answer or timeout of its own to wake it: every timer gives it another chance.
        let ids: Vec<LookupId> = self.searches.keys().copied().collect();
        for id in ids {
            self.drive(id, now);
        }
        self.tokens.handle_timeout(now, &mut self.rng);
        if now >= self.next_maintenance {
            self.next_maintenance = now + MAINTENANCE_EVERY;
            self.peers.expire(now);
            for v6 in [false, true] {
                if (v6 && !self.config.ipv6) || (!v6 && !self.config.ipv4) {
                    continue;
                }
                for prefix in self.table_mut(v6).take_stale_buckets(now) {
                    let target = self.id.random_at_prefix(prefix, &mut self.rng);
                    // A refresh that cannot start (no nodes, too many lookups) waits for
                    // the next round.
                    let _ = self.start(LookupKind::FindNode, target, &[], true, now);
                }
            }
        }
    }
}

/// The K nodes of `table` closest to `target`, without the querier itself.
fn closest_but(
    table: &RoutingTable,
    target: &Id,
    querier: SocketAddr,
    now: Instant,
) -> Vec<NodeInfo> {
    let mut nodes = table.closest(target, K + 1, now);
    nodes.retain(|n| n.addr != querier);
    nodes.truncate(K);
    nodes
}
