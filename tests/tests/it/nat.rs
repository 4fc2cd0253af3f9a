//! Nodes behind NATs, in network namespaces the test makes itself (`replic8_tests::netns`):
//! a public segment 203.0.113.0/24 with a DHT bootstrap node and a reachable node, and
//! homes behind an endpoint-independent and an endpoint-dependent ("symmetric") NAT.
//!
//! The daemons run inside the namespaces (`ip netns exec`); the test drives them from
//! the machine's own namespace with the `replic8` command, whose control socket is a
//! file in the node's data directory. Every wait reads a daemon's JSON events (or polls
//! a command's output) with a generous deadline. Needs root: without it each test fails
//! with one line saying so.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use replic8_tests::daemon::{binary, Daemon, DaemonSpec, DEADLINE};
use replic8_tests::netns::{Home, Host, Nat, Topology};
use serde_json::Value;

/// The QUIC port of every node (each host is a namespace: no two share a port space).
const QUIC_PORT: u16 = 4433;

/// The port of the UDP echo hosts in the NAT probe.
const ECHO_PORT: u16 = 7000;

/// The interfaces of the machine's own namespace (the one the test runs in).
fn own_interfaces() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap().to_owned())
        .collect()
}

/// A UDP echo on `host`, answering each datagram with the source address it saw, as
/// text, until `stop` is set.
fn echo<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    host: &Host,
    stop: &'s AtomicBool,
) -> std::thread::ScopedJoinHandle<'s, ()> {
    let socket = host.udp_socket(ECHO_PORT);
    // Not a wait for anything: how often the loop looks at `stop`.
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    scope.spawn(move || {
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, from)) = socket.recv_from(&mut buf) {
                socket.send_to(from.to_string().as_bytes(), from).unwrap();
            }
        }
    })
}

/// Sets its flag when dropped, also while unwinding.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sends `what` from `socket` to `to` until a datagram from `to` comes back (ARP may
/// hold the first one); that datagram's text.
fn ask(socket: &UdpSocket, to: SocketAddr, what: &str) -> String {
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut buf = [0u8; 64];
    loop {
        assert!(Instant::now() < deadline, "{what}: no answer from {to}");
        socket.send_to(b"?", to).unwrap();
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if from == to {
                return String::from_utf8(buf[..n].to_vec()).unwrap();
            }
        }
    }
}

/// What `host` looks like from the two public hosts `a` and `b`, from one socket.
fn seen_from(host: &Host, a: &Host, b: &Host) -> (SocketAddrV4, SocketAddrV4) {
    let socket = host.udp_socket(0);
    let to = |h: &Host| SocketAddr::from((h.addr, ECHO_PORT));
    let first = ask(&socket, to(a), &format!("{} to {}", host.role, a.role));
    let second = ask(&socket, to(b), &format!("{} to {}", host.role, b.role));
    (first.parse().unwrap(), second.parse().unwrap())
}

#[test]
fn the_topology_is_closed_and_its_nats_map_as_named() {
    let before = own_interfaces();
    let net = Topology::create();
    let boot = net.public_host("boot");
    let relay = net.public_host("relay");
    let eim = net.home("nat-eim", Nat::EndpointIndependent);
    let sym = net.home("nat-sym", Nat::EndpointDependent);
    let alice = net.home_host(&eim, "alice");
    let bob = net.home_host(&sym, "bob");

    // Endpoint-independent: one outside port for both destinations; symmetric: one each.
    let stop = AtomicBool::new(false);
    let inbox = alice.udp_socket(0);
    let mapping = std::thread::scope(|scope| {
        // A failed assertion below must stop the echoes too, or the scope never ends.
        let _stop = StopOnDrop(&stop);
        let echoes = [echo(scope, &boot, &stop), echo(scope, &relay, &stop)];
        let (a1, a2) = seen_from(&alice, &boot, &relay);
        assert_eq!(*a1.ip(), eim.nat.addr, "alice is seen at her NAT's address");
        assert_eq!(a1, a2, "an endpoint-independent NAT maps to one port");
        let (b1, b2) = seen_from(&bob, &boot, &relay);
        assert_eq!(*b1.ip(), sym.nat.addr, "bob is seen at his NAT's address");
        assert_eq!(b1.ip(), b2.ip());
        assert_ne!(
            b1.port(),
            b2.port(),
            "a symmetric NAT maps each destination anew"
        );
        let to_boot = SocketAddr::from((boot.addr, ECHO_PORT));
        let mapping: SocketAddr = ask(&inbox, to_boot, "alice's inbox").parse().unwrap();
        stop.store(true, Ordering::Relaxed);
        for e in echoes {
            e.join().unwrap();
        }
        mapping
    });

    // The NAT drops what nobody inside asked for: a datagram to alice's mapping from a
    // socket she never wrote to is not delivered; one from a host she wrote to is, and
    // it is the first she reads.
    let stranger = boot.udp_socket(0);
    stranger.send_to(b"unasked", mapping).unwrap();
    let answerer = relay.udp_socket(ECHO_PORT + 1);
    answerer.set_read_timeout(Some(DEADLINE)).unwrap();
    inbox
        .send_to(b"?", SocketAddr::from((relay.addr, ECHO_PORT + 1)))
        .unwrap();
    let mut buf = [0u8; 16];
    let (_, from) = answerer.recv_from(&mut buf).unwrap();
    assert_eq!(from, mapping, "alice's mapping is the same towards relay");
    answerer.send_to(b"asked", from).unwrap();
    inbox.set_read_timeout(Some(DEADLINE)).unwrap();
    let (n, _) = inbox.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"asked", "the unasked datagram came through");

    // Nothing reaches out: no new interface here, every veth's other end in one of our
    // namespaces, no route but the two test ranges, no default route anywhere.
    assert_eq!(
        own_interfaces(),
        before,
        "an interface appeared in the machine's namespace"
    );
    let ours = net.namespaces();
    for host in [&boot, &relay, &eim.nat, &sym.nat, &alice, &bob] {
        for veth in host.ip(&["-o", "link", "show", "type", "veth"]).lines() {
            let peer = veth.split(" link-netns ").nth(1).map(str::trim);
            assert!(
                peer.is_some_and(|p| ours.iter().any(|o| o == p)),
                "{}: a veth whose other end is not ours: {veth}",
                host.role
            );
        }
        for route in host.ip(&["-4", "route", "show"]).lines() {
            let dest = route.split_whitespace().next().unwrap();
            assert!(
                dest == "203.0.113.0/24" || dest.starts_with("192.168."),
                "{}: a route beyond the test ranges: {route}",
                host.role
            );
        }
        assert!(
            !host.routes_to(Ipv4Addr::new(198, 51, 100, 7)),
            "{}: routes beyond the public segment",
            host.role
        );
        assert_eq!(
            host.ip(&["-6", "route", "show"]).trim(),
            "",
            "{}: IPv6",
            host.role
        );
    }
    drop(net);
    assert!(
        ours.iter()
            .all(|ns| !Path::new("/run/netns").join(ns).exists()),
        "a namespace outlived its topology"
    );
}

/// A `replic8 daemon` on a host of the topology, with its events followed from the
/// machine's own namespace through the control socket.
struct Node {
    daemon: Daemon,
    name: String,
    /// Its data directory.
    data: PathBuf,
    key: String,
    /// Its DHT address on its host, from its banner.
    dht: Option<SocketAddrV4>,
    events: Events,
}

/// A DHT bootstrap node on the public segment: a server from the start, with no
/// bootstrap of its own. Its DHT port is the daemon's choice (its banner says it).
fn bootstrap_config() -> String {
    format!(
        "listen = \"0.0.0.0:{QUIC_PORT}\"\n[discovery]\nbootstrap = []\ndht_server = true\n\
         dht_bind = [\"0.0.0.0\"]\nlan = false\n"
    )
}

/// A node that bootstraps from `boot`; `extra` is appended (more TOML sections).
fn node_config(boot: &Node, extra: &str) -> String {
    let dht = boot
        .dht
        .unwrap_or_else(|| panic!("{} runs no DHT", boot.name));
    format!(
        "listen = \"0.0.0.0:{QUIC_PORT}\"\n[discovery]\nbootstrap = [\"{dht}\"]\n\
         dht_bind = [\"0.0.0.0\"]\nlan = false\n{extra}"
    )
}

impl Node {
    fn start(host: &Host, dir: &Path, config: &str) -> Node {
        let name = host.role.clone();
        let data = dir.join(&name);
        std::fs::create_dir_all(&data).unwrap();
        let config_file = dir.join(format!("{name}.toml"));
        std::fs::write(&config_file, config).unwrap();
        let daemon = DaemonSpec::with_args(&name, &data, &[])
            .config(Some(&config_file))
            .launcher(&["ip", "netns", "exec", &host.netns])
            .start();
        let key = daemon.key().to_owned();
        // `... dht 0.0.0.0:6881,[::]:6881 control ...`: the IPv4 port, on our address.
        let dht = daemon
            .banner
            .split(" dht ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addrs| {
                addrs
                    .split(',')
                    .find_map(|a| a.parse::<SocketAddrV4>().ok())
            })
            .map(|a| SocketAddrV4::new(host.addr, a.port()));
        let events = Events::follow(&name, &data);
        Node {
            daemon,
            name,
            data,
            key,
            dht,
            events,
        }
    }

    /// Runs a client command that must succeed; its stdout.
    fn run(&self, args: &[&str]) -> String {
        self.daemon.run(args)
    }

    fn client(&self) -> Command {
        self.daemon.client()
    }

    /// `peer`'s entry in `replic8 peers --json`, if connected.
    fn peer(&self, peer: &Node) -> Option<Value> {
        let peers: Value = serde_json::from_str(&self.run(&["peers", "--json"])).unwrap();
        let found = peers
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["key"] == peer.key.as_str());
        found.cloned()
    }

    /// A new feed of `blocks` blocks of 1000 distinct bytes; its key and bytes.
    fn feed(&self, dir: &Path, blocks: u32) -> (String, Vec<u8>) {
        let key = self.run(&["feed", "new"]).trim().to_owned();
        let bytes: Vec<u8> = (0..blocks * 1000).map(|i| (i % 253) as u8).collect();
        let file = dir.join(format!("{}-{key}.bin", self.name));
        std::fs::write(&file, &bytes).unwrap();
        let file = file.to_str().unwrap();
        self.run(&["feed", "append", &key, file, "--block-size", "1000"]);
        (key, bytes)
    }
}

/// `replic8 events --json` of one daemon: each line with the moment it arrived.
struct Events {
    name: String,
    child: Child,
    lines: mpsc::Receiver<(Instant, Value)>,
    seen: RefCell<Vec<(Instant, Value)>>,
}

impl Events {
    fn follow(name: &str, data: &Path) -> Events {
        let mut child = Command::new(binary())
            .arg("--data-dir")
            .arg(data)
            .args(["events", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send((Instant::now(), value)).is_err() {
                    break;
                }
            }
        });
        Events {
            name: name.to_owned(),
            child,
            lines,
            seen: RefCell::new(Vec::new()),
        }
    }

    /// The first event so far or to come for which `want` holds, and when it arrived.
    fn wait(&self, what: &str, want: impl Fn(&Value) -> bool) -> (Instant, Value) {
        if let Some(hit) = self.seen.borrow().iter().find(|(_, v)| want(v)) {
            return hit.clone();
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, value) = self.lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "{}: {what}: {e}; events seen: {:#?}",
                    self.name,
                    self.seen
                        .borrow()
                        .iter()
                        .map(|(_, v)| v)
                        .collect::<Vec<_>>()
                )
            });
            self.seen.borrow_mut().push((at, value.clone()));
            if want(&value) {
                return (at, value);
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When each step of a download by key happened, from the downloader's events.
#[derive(Debug)]
struct Timing {
    /// `feed get` issued: the lookup starts.
    asked: Instant,
    /// The connection to the source is up.
    connected: Instant,
    /// The first verified blocks of the feed.
    first_block: Instant,
    /// In sync.
    synced: Instant,
}

impl Timing {
    fn report(&self, case: &str) {
        let ms = |t: Instant| t.duration_since(self.asked).as_millis();
        eprintln!(
            "timing {case}: peer up {} ms, first verified block {} ms, in sync {} ms \
             (from `feed get`)",
            ms(self.connected),
            ms(self.first_block),
            ms(self.synced)
        );
    }
}

/// `node` downloads `feed` (`bytes`, `blocks` blocks) from `source` by key alone with
/// `replic8 feed get`, verified by reading it back.
/// `then` runs once `feed get` was started. The timing, and the address `node` reached
/// `source` at.
fn get_by_key(
    node: &Node,
    source: &Node,
    (feed, bytes, blocks): (&str, &[u8], u64),
    then: impl FnOnce(),
) -> (Timing, SocketAddr) {
    let asked = Instant::now();
    let mut get = node
        .client()
        .args(["feed", "get", feed, "--json"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    then();
    let peer = source.key.as_str();
    let (connected, up) = node
        .events
        .wait(&format!("a connection to {}", source.name), |e| {
            e["event"] == "peer_up" && e["peer"] == peer
        });
    let (first_block, _) = node.events.wait("the first verified blocks", |e| {
        e["event"] == "downloaded" && e["feed"] == feed
    });
    let (synced, _) = node.events.wait("the feed in sync", |e| {
        e["event"] == "feed_synced" && e["feed"] == feed && e["length"] == blocks
    });
    // `feed get` exits once in sync.
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = get.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{}: feed get did not exit",
            node.name
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{}: feed get: {status}", node.name);
    let copy = node.client().args(["feed", "cat", feed]).output().unwrap();
    assert!(
        copy.status.success() && copy.stdout == bytes,
        "{}: the copy differs",
        node.name
    );
    let addr = up["addr"].as_str().unwrap().parse().unwrap();
    eprintln!("{}: connected to {} at {addr}", node.name, source.name);
    let timing = Timing {
        asked,
        connected,
        first_block,
        synced,
    };
    (timing, addr)
}

/// The public segment with a bootstrap node and a public node; two homes behind
/// endpoint-independent NATs (alice, carol) and one behind a symmetric NAT (bob).
struct World {
    /// Kept for its drop, which removes the namespaces after the nodes.
    _net: Topology,
    boot: Host,
    public: Host,
    eim: Home,
    eim2: Home,
    sym: Home,
    alice: Host,
    bob: Host,
    carol: Host,
}

fn world() -> World {
    let net = Topology::create();
    let boot = net.public_host("boot");
    let public = net.public_host("public");
    let eim = net.home("nat-eim", Nat::EndpointIndependent);
    let sym = net.home("nat-sym", Nat::EndpointDependent);
    let eim2 = net.home("nat-eim2", Nat::EndpointIndependent);
    let alice = net.home_host(&eim, "alice");
    let bob = net.home_host(&sym, "bob");
    let carol = net.home_host(&eim2, "carol");
    World {
        _net: net,
        boot,
        public,
        eim,
        eim2,
        sym,
        alice,
        bob,
        carol,
    }
}

#[test]
fn nodes_behind_each_nat_find_a_public_node_on_the_dht_and_replicate_from_it() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let boot = Node::start(&w.boot, dir.path(), &bootstrap_config());
    let public = Node::start(&w.public, dir.path(), &node_config(&boot, ""));
    let (feed, bytes) = public.feed(dir.path(), 20);
    public.run(&["join", &feed]);
    let alice = Node::start(&w.alice, dir.path(), &node_config(&boot, ""));
    let bob = Node::start(&w.bob, dir.path(), &node_config(&boot, ""));

    let (a, at) = get_by_key(&alice, &public, (&feed, &bytes, 20), || {});
    a.report("endpoint-independent NAT, from a public node");
    let (b, bt) = get_by_key(&bob, &public, (&feed, &bytes, 20), || {});
    b.report("symmetric NAT, from a public node");
    for addr in [at, bt] {
        assert_eq!(addr, SocketAddr::from((w.public.addr, QUIC_PORT)));
    }

    // The public node saw each at its NAT's address.
    for (node, home) in [(&alice, &w.eim), (&bob, &w.sym)] {
        let entry = public
            .peer(node)
            .unwrap_or_else(|| panic!("public has no session with {}", node.name));
        let addr: SocketAddrV4 = entry["addr"].as_str().unwrap().parse().unwrap();
        assert_eq!(*addr.ip(), home.nat.addr, "{} seen at {addr}", node.name);
    }
}

#[test]
fn nodes_behind_two_endpoint_independent_nats_connect_directly_when_both_look_up() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let boot = Node::start(&w.boot, dir.path(), &bootstrap_config());
    let alice = Node::start(&w.alice, dir.path(), &node_config(&boot, ""));
    let carol = Node::start(&w.carol, dir.path(), &node_config(&boot, ""));
    let (feed, bytes) = alice.feed(dir.path(), 20);
    // Carol asks by key (announce and look up) and alice joins the feed's key at the same
    // time: each one's lookups find the other's announce, each one's dial opens its own
    // NAT for the other's (an endpoint-independent NAT keeps the QUIC port), and the
    // dials meet. No relay exists here: the connection is direct, NAT to NAT.
    let (timing, addr) = get_by_key(&carol, &alice, (&feed, &bytes, 20), || {
        alice.run(&["join", &feed]);
    });
    timing.report("two endpoint-independent NATs, joined at once");
    assert_eq!(
        addr,
        SocketAddr::from((w.eim.nat.addr, QUIC_PORT)),
        "carol reached alice's NAT"
    );
    let (_, up) = alice.events.wait("a connection to carol", |e| {
        e["event"] == "peer_up" && e["peer"] == carol.key.as_str()
    });
    let seen: SocketAddrV4 = up["addr"].as_str().unwrap().parse().unwrap();
    assert_eq!(*seen.ip(), w.eim2.nat.addr, "alice reached carol's NAT");
}

// The cases (issue 16, "What it must show"), against relays and hole punching:
// the home nodes register with the relay, and a dial of a home node's address that gets
// no answer asks the relay who is there (decision 151).

/// `[discovery]` static peers (relays, or any public node) for a node's config: dialed for
/// every topic looked up, so that the node keeps a connection to each.
fn with_relays(relays: &[&Host]) -> String {
    let list: Vec<String> = relays
        .iter()
        .map(|r| format!("\"{}:{QUIC_PORT}\"", r.addr))
        .collect();
    format!("static_peers = [{}]\n", list.join(", "))
}

/// The config of a relay on the public segment.
const RELAY: &str = "[nat]\nrelay = true\n";

/// A feed of `blocks` random blocks of 1000 bytes on `node` (random, so that a window of
/// it found in a file can only be a copy).
fn random_feed(node: &Node, dir: &Path, blocks: u32) -> (String, Vec<u8>) {
    let key = node.run(&["feed", "new"]).trim().to_owned();
    let bytes: Vec<u8> = (0..blocks * 1000).map(|_| rand::random::<u8>()).collect();
    append(node, dir, &key, &bytes);
    (key, bytes)
}

fn append(node: &Node, dir: &Path, key: &str, bytes: &[u8]) {
    let file = dir.join(format!("{}-{key}-{}.bin", node.name, bytes.len()));
    std::fs::write(&file, bytes).unwrap();
    node.run(&[
        "feed",
        "append",
        key,
        file.to_str().unwrap(),
        "--block-size",
        "1000",
    ]);
}

/// The `path` (`direct` or `relayed`) and address of `node`'s connection to `peer`.
fn path_to(node: &Node, peer: &Node) -> Option<(String, String)> {
    let entry = node.peer(peer)?;
    let text = |field: &str| entry[field].as_str().unwrap_or("none").to_owned();
    Some((text("path"), text("addr")))
}

/// Polls `node`'s peers until its connection to `peer` is on `path`.
fn wait_path(node: &Node, peer: &Node, path: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = path_to(node, peer);
        if let Some((p, addr)) = &now {
            if p == path {
                return addr.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{}: no {path} connection to {}; last: {now:?}",
            node.name,
            peer.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether any file under `dir` holds `needle`.
fn holds(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = holds(&path, needle) {
                return Some(found);
            }
        } else if let Ok(data) = std::fs::read(&path) {
            if data.windows(needle.len()).any(|w| w == needle) {
                return Some(path);
            }
        }
    }
    None
}

#[test]
fn behind_two_endpoint_independent_nats_the_punch_gives_a_direct_connection() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let boot = Node::start(&w.boot, dir.path(), &bootstrap_config());
    let relay = Node::start(&w.public, dir.path(), &node_config(&boot, RELAY));
    let home = node_config(&boot, &with_relays(&[&w.public]));
    let alice = Node::start(&w.alice, dir.path(), &home);
    let carol = Node::start(&w.carol, dir.path(), &home);
    let (feed, bytes) = random_feed(&alice, dir.path(), 20);
    // Alice only announces the feed: she never looks carol up nor dials her of her own
    // accord, so only a punch coordinated through the relay can open her NAT for carol.
    // She reaches the relay through a topic of her own (static peers are dialed for
    // every topic looked up), which carol never joins.
    alice.run(&["join", &feed, "--no-lookup"]);
    alice.run(&["join", "--topic", &"5".repeat(64)]);
    relay.events.wait("alice at the relay", |e| {
        e["event"] == "peer_up" && e["peer"] == alice.key.as_str()
    });
    let (timing, _) = get_by_key(&carol, &alice, (&feed, &bytes, 20), || {});
    timing.report("two endpoint-independent NATs, punched through a relay");
    let addr = wait_path(&carol, &alice, "direct");
    assert_eq!(addr, format!("{}:{QUIC_PORT}", w.eim.nat.addr));
    let addr = wait_path(&alice, &carol, "direct");
    assert_eq!(addr, format!("{}:{QUIC_PORT}", w.eim2.nat.addr));
    // New blocks come over the direct connection.
    append(&alice, dir.path(), &feed, &bytes[..5000]);
    carol.events.wait("the new blocks", |e| {
        e["event"] == "feed_synced" && e["feed"] == feed.as_str() && e["length"] == 25
    });
    assert_eq!(path_to(&carol, &alice).unwrap().0, "direct");
}

#[test]
fn behind_a_symmetric_nat_a_node_replicates_through_a_relay_that_sees_only_ciphertext() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let boot = Node::start(&w.boot, dir.path(), &bootstrap_config());
    let relay = Node::start(&w.public, dir.path(), &node_config(&boot, RELAY));
    let home = node_config(&boot, &with_relays(&[&w.public]));
    let alice = Node::start(&w.alice, dir.path(), &home);
    let bob = Node::start(&w.bob, dir.path(), &home);
    let (feed, bytes) = random_feed(&alice, dir.path(), 50);
    alice.run(&["join", &feed]);
    relay.events.wait("alice at the relay", |e| {
        e["event"] == "peer_up" && e["peer"] == alice.key.as_str()
    });
    let (timing, _) = get_by_key(&bob, &alice, (&feed, &bytes, 50), || {});
    timing.report("symmetric NAT, through a relay");
    // Still relayed: a punch cannot open a symmetric NAT.
    wait_path(&bob, &alice, "relayed");
    relay.events.wait("the relay relaying bob and alice", |e| {
        e["event"] == "nat_relaying"
            && [e["opener"].as_str(), e["target"].as_str()].contains(&Some(bob.key.as_str()))
    });
    // The relay carried the feed: its connections to alice and to bob each moved at
    // least the feed's bytes (as ciphertext inside the circuit).
    let size = bytes.len() as u64;
    let from_alice = relay.peer(&alice).unwrap()["bytes_received"]
        .as_u64()
        .unwrap();
    let to_bob = relay.peer(&bob).unwrap()["bytes_sent"].as_u64().unwrap();
    assert!(
        from_alice >= size && to_bob >= size,
        "the relay moved {from_alice} bytes from alice, {to_bob} to bob, for a {size}-byte feed"
    );
    // Nothing of the feed reached the relay's disk: no 64-byte window of it.
    for chunk in bytes.chunks(1000) {
        assert_eq!(
            holds(&relay.data, &chunk[..64]),
            None,
            "plaintext at the relay"
        );
    }
}

#[test]
fn relayed_peers_reconnect_when_their_relay_leaves() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let boot = Node::start(&w.boot, dir.path(), &bootstrap_config());
    let first = Node::start(&w.public, dir.path(), &node_config(&boot, RELAY));
    let w2 = w._net.public_host("relay2");
    let second = Node::start(&w2, dir.path(), &node_config(&boot, RELAY));
    let home = node_config(&boot, &with_relays(&[&w.public, &w2]));
    let alice = Node::start(&w.alice, dir.path(), &home);
    let bob = Node::start(&w.bob, dir.path(), &home);
    let (feed, bytes) = random_feed(&alice, dir.path(), 20);
    alice.run(&["join", &feed]);
    for relay in [&first, &second] {
        relay.events.wait("alice at the relay", |e| {
            e["event"] == "peer_up" && e["peer"] == alice.key.as_str()
        });
    }
    get_by_key(&bob, &alice, (&feed, &bytes, 20), || {});
    let (_, circuit) = bob.events.wait("bob's circuit to alice", |e| {
        e["event"] == "nat_circuit_up" && e["peer"] == alice.key.as_str()
    });
    let (gone, stays) = if circuit["relay"] == first.key.as_str() {
        (first, second)
    } else {
        (second, first)
    };
    let left = Instant::now();
    drop(gone);
    bob.events.wait("the circuit down", |e| {
        e["event"] == "nat_circuit_down" && e["peer"] == alice.key.as_str()
    });
    let (back, _) = bob
        .events
        .wait("bob's circuit through the other relay", |e| {
            e["event"] == "nat_circuit_up"
                && e["peer"] == alice.key.as_str()
                && e["relay"] == stays.key.as_str()
        });
    eprintln!(
        "timing relay left: reconnected through the other relay in {} ms",
        back.duration_since(left).as_millis()
    );
    append(&alice, dir.path(), &feed, &bytes[..5000]);
    bob.events.wait("the new blocks", |e| {
        e["event"] == "feed_synced" && e["feed"] == feed.as_str() && e["length"] == 25
    });
}

#[test]
fn status_shows_each_nodes_mapping_and_reachability() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let boot = Node::start(&w.boot, dir.path(), &bootstrap_config());
    let public = Node::start(&w.public, dir.path(), &node_config(&boot, ""));
    let w2 = w._net.public_host("public2");
    let public2 = Node::start(&w2, dir.path(), &node_config(&boot, ""));
    let home = node_config(&boot, &with_relays(&[&w.public, &w2]));
    let alice = Node::start(&w.alice, dir.path(), &home);
    let bob = Node::start(&w.bob, dir.path(), &home);
    // A topic looked up makes each home node dial its static peers, the two public ones.
    for node in [&alice, &bob] {
        node.run(&["join", "--topic", &"6".repeat(64)]);
    }
    for (node, nat_type, home) in [
        (&alice, "endpoint-independent", &w.eim),
        (&bob, "endpoint-dependent", &w.sym),
    ] {
        node.events.wait(&format!("the mapping {nat_type}"), |e| {
            e["event"] == "nat_type" && e["nat_type"] == nat_type
        });
        node.events.wait("unreachable", |e| {
            e["event"] == "nat_reachability" && e["reachability"] == "unreachable"
        });
        let status: Value = serde_json::from_str(&node.run(&["status", "--json"])).unwrap();
        let nat = &status["nat"];
        assert_eq!(nat["nat_type"], nat_type, "{}: {nat}", node.name);
        assert_eq!(nat["reachability"], "unreachable", "{}: {nat}", node.name);
        let public_addrs = nat["public_addrs"].as_array().unwrap();
        assert!(
            public_addrs.iter().all(|a| a
                .as_str()
                .unwrap()
                .starts_with(&format!("{}:", home.nat.addr))),
            "{}: {nat}",
            node.name
        );
    }
    for node in [&public, &public2] {
        node.events.wait("reachable", |e| {
            e["event"] == "nat_reachability" && e["reachability"] == "reachable"
        });
    }
}
