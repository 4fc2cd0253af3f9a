//! Many `DhtCore`s in one process, exchanging datagrams through a simulated network with
//! virtual time: per-link latency, loss, and nodes that die while others still hold them
//! in their routing tables. No socket, no sleep; a run is deterministic for its seed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replic8_discovery::krpc::message::Body;
use replic8_discovery::krpc::{DhtCore, DhtCoreConfig, DhtEvent, Id, LookupId, Message};

/// One simulated host.
struct SimNode {
    core: DhtCore,
    /// One address per family it is on.
    addrs: Vec<SocketAddr>,
    alive: bool,
}

/// A datagram on its way.
type InFlight = Reverse<(Instant, u64, SocketAddr, SocketAddr, Vec<u8>)>;

/// The network: nodes, datagrams in flight, the clock, and what every node reported.
struct Net {
    start: Instant,
    now: Instant,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<InFlight>,
    seq: u64,
    rng: StdRng,
    loss: f64,
    /// One-way latency range of the links.
    link: (Duration, Duration),
    /// (node index, when, event).
    events: Vec<(usize, Instant, DhtEvent)>,
    /// Every query a node sent: (node index, the id it carried).
    query_ids: Vec<(usize, Id)>,
}

fn addr_of(i: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, 0, (i / 200) as u8, (i % 200) as u8 + 1)),
        6881,
    )
}

impl Net {
    /// `n` nodes, IPv4 only, each with its own IP, links of 5-40 ms; `config` gives
    /// each node's config.
    fn new(n: usize, seed: u64, loss: f64, config: impl Fn(usize) -> DhtCoreConfig) -> Net {
        let link = (Duration::from_millis(5), Duration::from_millis(40));
        Net::with(n, seed, loss, link, |i| vec![addr_of(i)], config)
    }

    /// `n` nodes at the addresses `addrs` gives each (one per family it is on).
    fn with(
        n: usize,
        seed: u64,
        loss: f64,
        link: (Duration, Duration),
        addrs: impl Fn(usize) -> Vec<SocketAddr>,
        config: impl Fn(usize) -> DhtCoreConfig,
    ) -> Net {
        let start = Instant::now();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut nodes = Vec::new();
        let mut by_addr = HashMap::new();
        for i in 0..n {
            let addrs = addrs(i);
            let core = DhtCore::new(config(i), Id::random(&mut rng), rng.gen(), start);
            for addr in &addrs {
                by_addr.insert(*addr, i);
            }
            nodes.push(SimNode {
                core,
                addrs,
                alive: true,
            });
        }
        Net {
            start,
            now: start,
            nodes,
            by_addr,
            queue: BinaryHeap::new(),
            seq: 0,
            rng,
            loss,
            link,
            events: Vec::new(),
            query_ids: Vec::new(),
        }
    }

    /// One-way latency of a link: fixed per pair of nodes, within `self.link`.
    fn latency(&self, a: usize, b: usize) -> Duration {
        let (x, y) = (a.min(b) as u64 + 1, a.max(b) as u64 + 1);
        let mix = x.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ y;
        let (lo, hi) = self.link;
        let span = (hi - lo).as_micros() as u64 + 1;
        lo + Duration::from_micros(mix.wrapping_mul(0xBF58_476D_1CE4_E5B9) % span)
    }

    /// Moves what the nodes want sent onto the wire and collects their events.
    fn flush(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some(t) = self.nodes[i].core.poll_transmit() {
                if let Ok(Message {
                    body: Body::Query { id, .. },
                    ..
                }) = Message::decode(&t.payload)
                {
                    self.query_ids.push((i, id));
                }
                if !self.nodes[i].alive || self.rng.gen_bool(self.loss) {
                    continue;
                }
                // The socket of the destination's family; none: the datagram cannot leave.
                let Some(from) = self.nodes[i]
                    .addrs
                    .iter()
                    .copied()
                    .find(|a| a.is_ipv6() == t.to.is_ipv6())
                else {
                    continue;
                };
                let to_node = self.by_addr.get(&t.to).copied().unwrap_or(i);
                let at = self.now + self.latency(i, to_node);
                self.seq += 1;
                self.queue
                    .push(Reverse((at, self.seq, from, t.to, t.payload)));
            }
            while let Some(e) = self.nodes[i].core.poll_event() {
                self.events.push((i, self.now, e));
            }
        }
    }

    /// Advances to the next datagram or timer, and handles everything due then. False
    /// when nothing is left to happen before `limit`.
    fn step(&mut self, limit: Instant) -> bool {
        self.flush();
        let next_packet = self.queue.peek().map(|Reverse((at, ..))| *at);
        let next_timer = self
            .nodes
            .iter()
            .filter(|n| n.alive)
            .filter_map(|n| n.core.poll_timeout())
            .min();
        let Some(next) = [next_packet, next_timer].into_iter().flatten().min() else {
            return false;
        };
        if next > limit {
            self.now = limit;
            return false;
        }
        self.now = self.now.max(next);
        while let Some(Reverse((at, ..))) = self.queue.peek() {
            if *at > self.now {
                break;
            }
            let Some(Reverse((_, _, from, to, payload))) = self.queue.pop() else {
                break;
            };
            if let Some(&j) = self.by_addr.get(&to) {
                if self.nodes[j].alive {
                    self.nodes[j].core.handle_datagram(from, &payload, self.now);
                }
            }
        }
        let now = self.now;
        for node in self.nodes.iter_mut().filter(|n| n.alive) {
            if node.core.poll_timeout().is_some_and(|t| t <= now) {
                node.core.handle_timeout(now);
            }
        }
        self.flush();
        true
    }

    /// Runs for `d` of virtual time.
    fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        while self.step(limit) {}
    }

    /// Runs until `done` holds for the events so far, or panics after `guard`.
    fn run_until(&mut self, guard: Duration, what: &str, done: impl Fn(&Net) -> bool) {
        let limit = self.now + guard;
        while !done(self) {
            if !self.step(limit) {
                panic!(
                    "{what}: not done after {guard:?} of virtual time (t = {:?}); last events: {:#?}",
                    self.now - self.start,
                    &self.events[self.events.len().saturating_sub(10)..]
                );
            }
        }
    }

    /// Every node bootstraps through node 0, one after the other, 20 ms apart, then all
    /// once more; then the network settles for a few seconds.
    fn bootstrap_all(&mut self) {
        let seed = self.nodes[0].addrs.clone();
        for i in 1..self.nodes.len() {
            let now = self.now;
            self.nodes[i]
                .core
                .bootstrap(&seed, now)
                .unwrap_or_else(|e| panic!("node {i} bootstrap: {e}"));
            self.run_for(Duration::from_millis(20));
        }
        self.run_for(Duration::from_secs(1));
        // A second round, once everyone is in, fills the early nodes' tables (and lets a
        // node whose first query to the seed was lost join).
        for i in 0..self.nodes.len() {
            let now = self.now;
            self.nodes[i]
                .core
                .bootstrap(&seed, now)
                .unwrap_or_else(|e| panic!("node {i} second bootstrap: {e}"));
        }
        self.run_for(Duration::from_secs(5));
    }

    fn done_event(&self, node: usize, lookup: LookupId) -> Option<(Instant, &DhtEvent)> {
        self.events.iter().find_map(|(i, at, e)| match e {
            DhtEvent::LookupDone { lookup: l, .. } if *i == node && *l == lookup => Some((*at, e)),
            _ => None,
        })
    }

    fn first_peers(&self, node: usize, lookup: LookupId) -> Option<(Instant, Vec<SocketAddr>)> {
        self.events.iter().find_map(|(i, at, e)| match e {
            DhtEvent::Peers {
                lookup: l, peers, ..
            } if *i == node && *l == lookup => Some((*at, peers.clone())),
            _ => None,
        })
    }

    fn all_peers(&self, node: usize, lookup: LookupId) -> Vec<SocketAddr> {
        self.events
            .iter()
            .filter_map(|(i, _, e)| match e {
                DhtEvent::Peers {
                    lookup: l, peers, ..
                } if *i == node && *l == lookup => Some(peers.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn tables_fill_and_refresh_and_every_node_keeps_one_id() {
    let mut net = Net::new(50, 1, 0.0, |_| DhtCoreConfig::default());
    net.bootstrap_all();
    // 50 random ids: the far bucket holds 8 of ~25, the next 8 of ~12, and so on; what
    // a node learns beyond its own neighbourhood comes from bucket refreshes over time.
    let lens: Vec<usize> = net
        .nodes
        .iter()
        .map(|n| n.core.table(false).len())
        .collect();
    let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
    eprintln!("table sizes: {lens:?}");
    assert!(lens.iter().all(|&l| l >= 8), "{lens:?}");
    assert!(mean >= 15.0, "mean {mean}: {lens:?}");
    // Buckets untouched for 15 minutes are refreshed with a find_node into their range.
    net.run_for(Duration::from_secs(16 * 60));
    let refreshed: Vec<usize> = net
        .nodes
        .iter()
        .map(|n| n.core.table(false).len())
        .collect();
    let refreshed_mean = refreshed.iter().sum::<usize>() as f64 / refreshed.len() as f64;
    eprintln!("after refresh: {refreshed:?}");
    assert!(refreshed_mean > mean + 2.0, "{mean} -> {refreshed_mean}");
    // Every query a node sent carried its one id (private addresses: no BEP 42 change).
    for (i, id) in &net.query_ids {
        assert_eq!(
            *id,
            net.nodes[*i].core.id(),
            "node {i} queried with another id"
        );
    }
    assert!(net.query_ids.len() > 500, "{} queries", net.query_ids.len());
}

/// On a 50-node network with this seed: an announce, a fifth of the nodes dead, then
/// ten lookups from live nodes. Returns how long each took to finish and to report its
/// first peer.
fn lookups_with_dead_entries(seed: u64) -> (Vec<Duration>, Vec<Duration>) {
    let mut net = Net::new(50, seed, 0.03, |_| DhtCoreConfig {
        ipv6: false,
        ..DhtCoreConfig::default()
    });
    net.bootstrap_all();
    let info_hash = Id([0x5a; 20]);
    // Node 1 announces on port 4000.
    let now = net.now;
    let announce = net.nodes[1]
        .core
        .announce(info_hash, Some(4000), now)
        .expect("announce starts");
    net.run_until(Duration::from_secs(10), "announce", |n| {
        n.done_event(1, announce).is_some()
    });
    let Some((_, DhtEvent::LookupDone { announced, .. })) = net.done_event(1, announce) else {
        unreachable!("checked above")
    };
    assert!(*announced >= 5, "stored on {announced} nodes only");

    // A fifth of the nodes die; the others still hold them as good entries.
    let dead: Vec<usize> = (30..40).collect();
    for &d in &dead {
        net.nodes[d].alive = false;
    }
    let dead_in_tables: usize = net
        .nodes
        .iter()
        .filter(|n| n.alive)
        .map(|n| {
            n.core
                .table(false)
                .entries()
                .filter(|e| dead.iter().any(|&d| addr_of(d) == e.node.addr))
                .count()
        })
        .sum();
    assert!(
        dead_in_tables > 40,
        "only {dead_in_tables} dead entries in tables"
    );

    let expected = SocketAddr::new(addr_of(1).ip(), 4000);
    let mut done_times = Vec::new();
    let mut first_peer_times = Vec::new();
    for seeker in [2usize, 5, 11, 17, 23, 29, 41, 44, 47, 49] {
        let started = net.now;
        let lookup = net.nodes[seeker]
            .core
            .get_peers(info_hash, started)
            .expect("lookup starts");
        net.run_until(Duration::from_secs(10), "get_peers", |n| {
            n.done_event(seeker, lookup).is_some()
        });
        let (done_at, _) = net.done_event(seeker, lookup).expect("done");
        let (first_at, _) = net
            .first_peers(seeker, lookup)
            .unwrap_or_else(|| panic!("node {seeker} found no peer"));
        assert!(
            net.all_peers(seeker, lookup).contains(&expected),
            "node {seeker} did not find the announce"
        );
        assert!(first_at <= done_at);
        done_times.push(done_at - started);
        first_peer_times.push(first_at - started);
    }
    (done_times, first_peer_times)
}

#[test]
fn lookups_finish_in_a_few_round_trips_despite_dead_entries_and_loss() {
    let (mut done_times, mut first_peer_times) = (Vec::new(), Vec::new());
    for seed in [2, 12, 22] {
        let (done, first) = lookups_with_dead_entries(seed);
        done_times.extend(done);
        first_peer_times.extend(first);
    }
    let done_median = median(done_times.clone());
    let first_median = median(first_peer_times.clone());
    let worst = done_times.iter().max().copied().unwrap_or_default();
    eprintln!(
        "lookup done: median {done_median:?}, worst {worst:?}; first peer median {first_median:?}"
    );
    // Round trips here are 10-80 ms: a lookup that waited out a fixed 2 s timeout on a
    // dead entry would take over 2 s.
    assert!(done_median < Duration::from_millis(600), "{done_times:?}");
    assert!(worst < Duration::from_millis(1500), "{done_times:?}");
    assert!(
        first_median < Duration::from_millis(300),
        "{first_peer_times:?}"
    );
}

#[test]
fn read_only_nodes_query_but_stay_out_of_tables() {
    let read_only = |i: usize| i % 5 == 4;
    let mut net = Net::new(40, 3, 0.0, |i| DhtCoreConfig {
        read_only: read_only(i),
        ..DhtCoreConfig::default()
    });
    net.bootstrap_all();
    let info_hash = Id([0x77; 20]);
    // A read-only node announces, another finds it: read-only nodes are full clients.
    let now = net.now;
    let announce = net.nodes[4]
        .core
        .announce(info_hash, None, now)
        .expect("starts");
    net.run_until(Duration::from_secs(10), "announce", |n| {
        n.done_event(4, announce).is_some()
    });
    let now = net.now;
    let lookup = net.nodes[9].core.get_peers(info_hash, now).expect("starts");
    net.run_until(Duration::from_secs(10), "lookup", |n| {
        n.done_event(9, lookup).is_some()
    });
    // implied_port: the DHT port of node 4.
    assert!(net.all_peers(9, lookup).contains(&addr_of(4)));
    for (i, node) in net.nodes.iter().enumerate() {
        for entry in node.core.table(false).entries() {
            let j = net.by_addr[&entry.node.addr];
            assert!(!read_only(j), "node {i} holds read-only node {j}");
        }
        if read_only(i) {
            assert_eq!(node.core.stats().queries_answered, 0, "node {i} answered");
            assert!(node.core.table(false).len() >= 8, "node {i} table");
        }
    }
}

/// The target, in virtual time: a join (announce and lookup at once) on a
/// 20-node DHT with loopback-like links and dead entries in the tables resolves in a
/// median of 200 ms or less.
#[test]
fn joins_on_a_loopback_like_network_with_dead_entries_resolve_fast() {
    let link = (Duration::from_micros(50), Duration::from_micros(150));
    let mut net = Net::with(
        20,
        4,
        0.0,
        link,
        |i| vec![addr_of(i)],
        |_| DhtCoreConfig::default(),
    );
    net.bootstrap_all();
    let dead = [3usize, 8, 13, 17];
    for d in dead {
        net.nodes[d].alive = false;
    }
    let topic = Id([0x3c; 20]);
    let mut joins = Vec::new();
    for (n, joiner) in [1usize, 2, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 18, 19]
        .into_iter()
        .enumerate()
    {
        let started = net.now;
        let port = 5000 + n as u16;
        let announce = net.nodes[joiner]
            .core
            .announce(topic, Some(port), started)
            .expect("announce starts");
        let lookup = net.nodes[joiner]
            .core
            .get_peers(topic, started)
            .expect("lookup starts");
        net.run_until(Duration::from_secs(10), "join", |net| {
            net.done_event(joiner, announce).is_some() && net.done_event(joiner, lookup).is_some()
        });
        let done = [announce, lookup]
            .iter()
            .filter_map(|l| net.done_event(joiner, *l).map(|(at, _)| at))
            .max()
            .unwrap_or(started);
        joins.push(done - started);
        if n > 0 {
            // Every earlier joiner's announce is found.
            assert!(
                net.all_peers(joiner, lookup).len() >= n.min(8),
                "joiner {joiner} found {:?}",
                net.all_peers(joiner, lookup)
            );
        }
        net.run_for(Duration::from_millis(100));
    }
    let median = median(joins.clone());
    eprintln!("join resolve: median {median:?}, all {joins:?}");
    assert!(median <= Duration::from_millis(200), "{joins:?}");
}

/// BEP 32: IPv4-only, IPv6-only and dual-stack nodes in one network. A dual-stack
/// node's announce is stored on both DHTs, each with the address the storing node saw;
/// each family finds its own.
#[test]
fn dual_stack_announces_are_found_on_each_family() {
    let v4 = |i: usize| addr_of(i);
    let v6 = |i: usize| {
        SocketAddr::new(
            IpAddr::V6(format!("fd00::{:x}", i + 1).parse().expect("v6")),
            6881,
        )
    };
    // 0, 3, 6, ... dual; 1, 4, ... IPv4 only; 2, 5, ... IPv6 only.
    let addrs = move |i: usize| match i % 3 {
        0 => vec![v4(i), v6(i)],
        1 => vec![v4(i)],
        _ => vec![v6(i)],
    };
    let link = (Duration::from_millis(5), Duration::from_millis(40));
    let mut net = Net::with(45, 5, 0.0, link, addrs, |i| DhtCoreConfig {
        ipv4: i % 3 != 2,
        ipv6: i % 3 != 1,
        ..DhtCoreConfig::default()
    });
    net.bootstrap_all();
    for (i, node) in net.nodes.iter().enumerate() {
        let (n4, n6) = (node.core.table(false).len(), node.core.table(true).len());
        match i % 3 {
            0 => assert!(n4 >= 8 && n6 >= 8, "dual node {i}: {n4} v4, {n6} v6"),
            1 => assert!(n4 >= 8 && n6 == 0, "v4 node {i}: {n4} v4, {n6} v6"),
            _ => assert!(n4 == 0 && n6 >= 8, "v6 node {i}: {n4} v4, {n6} v6"),
        }
    }
    let info_hash = Id([0x66; 20]);
    let now = net.now;
    let announce = net.nodes[3]
        .core
        .announce(info_hash, Some(7000), now)
        .expect("announce");
    net.run_until(Duration::from_secs(10), "announce", |n| {
        n.done_event(3, announce).is_some()
    });
    let at4 = SocketAddr::new(v4(3).ip(), 7000);
    let at6 = SocketAddr::new(v6(3).ip(), 7000);
    for (seeker, want) in [(1usize, vec![at4]), (2, vec![at6]), (6, vec![at4, at6])] {
        let now = net.now;
        let lookup = net.nodes[seeker]
            .core
            .get_peers(info_hash, now)
            .expect("lookup");
        net.run_until(Duration::from_secs(10), "lookup", |n| {
            n.done_event(seeker, lookup).is_some()
        });
        let mut found = net.all_peers(seeker, lookup);
        found.sort();
        assert_eq!(found, want, "node {seeker}");
    }
    // A dual-stack node that restarts with an empty table and only an IPv4 seed
    // learns IPv6 nodes from the nodes6 of IPv4 answers (BEP 32 want), and queries them.
    let late = 42;
    assert_eq!(late % 3, 0, "dual");
    let now = net.now;
    net.nodes[late].core = DhtCore::new(DhtCoreConfig::default(), Id([0x42; 20]), 42, now);
    // The new core numbers its lookups from 1 again: forget the old one's events.
    net.events.retain(|(i, ..)| *i != late);
    let seed = [v4(0)];
    let boot = net.nodes[late]
        .core
        .bootstrap(&seed, now)
        .expect("bootstrap");
    net.run_until(Duration::from_secs(10), "ipv4-seeded bootstrap", |n| {
        n.done_event(late, boot).is_some()
    });
    let (n4, n6) = (
        net.nodes[late].core.table(false).len(),
        net.nodes[late].core.table(true).len(),
    );
    assert!(
        n4 >= 8 && n6 >= 8,
        "{n4} v4, {n6} v6; {:?}; {:?}",
        net.nodes[late].core.stats(),
        net.done_event(late, boot)
    );
}
