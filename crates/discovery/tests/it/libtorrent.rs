//! Interop with libtorrent, the most common DHT implementation: Debian's
//! `python3-libtorrent` (`.ci/run` installs it) runs DHT sessions on 127.0.0.1 through
//! `tests/lt_node.py`, which this test drives over stdin/stdout lines. Loopback only;
//! every step waits for the line or the event that proves it, under a guard.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use replic8_discovery::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// Guard for one step (a lookup, an announce) on a loaded 2-core machine.
const GUARD: Duration = Duration::from_secs(20);

/// The Python that has Debian's libtorrent module.
const PYTHON: &str = "/usr/bin/python3";

/// libtorrent sessions in a child process.
struct Lt {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
    /// The sessions' DHT ports.
    ports: Vec<u16>,
}

impl Lt {
    /// Starts `n` libtorrent sessions that know each other.
    async fn start(n: usize) -> Lt {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lt_node.py");
        let check = std::process::Command::new(PYTHON)
            .args(["-c", "import libtorrent"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {PYTHON}: {e}"));
        assert!(
            check.status.success(),
            "{PYTHON} has no libtorrent module (apt-get install -y python3-libtorrent): {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let mut child = tokio::process::Command::new(PYTHON)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start lt_node.py");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut lt = Lt {
            _child: child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
            ports: Vec::new(),
        };
        lt.send(&format!("start {n}")).await;
        let line = lt.expect("ports", |l| l.starts_with("ports ")).await;
        lt.ports = line
            .split_whitespace()
            .skip(1)
            .map(|p| p.parse().expect("port"))
            .collect();
        lt
    }

    fn addrs(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    async fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to lt_node.py");
        self.stdin.flush().await.expect("flush");
    }

    /// The next line matching `pred`, failing with every line seen after `GUARD`.
    async fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Ok(Ok(None)) => panic!(
                    "lt_node.py ended while waiting for {what}; saw {:#?}",
                    self.seen
                ),
                Ok(Err(e)) => panic!("reading lt_node.py: {e}"),
                Err(_) => panic!(
                    "no {what} from libtorrent within {GUARD:?}; saw {:#?}",
                    self.seen
                ),
            }
        }
    }
}

/// A runtime for `KrpcDht` nodes (no actix needed).
fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn infohash(byte: u8) -> ([u8; 20], String) {
    let mut ih = [byte; 20];
    ih[..8].copy_from_slice(&rand::random::<[u8; 8]>());
    (ih, hex::encode(ih))
}

/// Runs a lookup on `node` until `want` is found; returns the time to it and to the end.
async fn lookup_finds(node: &KrpcDht, ih: [u8; 20], want: SocketAddr) -> (Duration, Duration) {
    let start = Instant::now();
    let mut stream = node.lookup(ih);
    let mut first = None;
    let mut seen = Vec::new();
    let found = tokio::time::timeout(GUARD, async {
        while let Some(batch) = stream.next().await {
            if batch.contains(&want) {
                first.get_or_insert(start.elapsed());
            }
            seen.extend(batch);
        }
    })
    .await;
    assert!(found.is_ok(), "lookup did not end within {GUARD:?}");
    let first = first.unwrap_or_else(|| panic!("lookup ended without {want}; found {seen:?}"));
    (first, start.elapsed())
}

/// Announces stored by `servers`, summed.
async fn stored_on(servers: &[KrpcDht]) -> u64 {
    let mut stored = 0;
    for server in servers {
        stored += server
            .status()
            .await
            .expect("running")
            .stats
            .announces_stored;
    }
    stored
}

#[test]
fn a_dht_of_our_servers_serves_a_libtorrent_client() {
    run(async {
        // Five servers of ours, each bootstrapping from the ones before it, and one
        // more node of ours that announces and looks up.
        let mut servers: Vec<KrpcDht> = Vec::new();
        for _ in 0..5 {
            let seeds: Vec<String> = servers.iter().map(|s| s.addrs()[0].to_string()).collect();
            let mut config = DhtConfig::testnet(&seeds);
            if seeds.is_empty() {
                config.bootstrap = Bootstrap::None;
            }
            servers.push(KrpcDht::spawn(&config).await.expect("server"));
        }
        let seeds: Vec<String> = servers.iter().map(|s| s.addrs()[0].to_string()).collect();
        let ours = KrpcDht::spawn(&DhtConfig::testnet(&seeds))
            .await
            .expect("ours");

        let mut lt = Lt::start(1).await;
        lt.send(&format!("add {}", seeds.join(" "))).await;
        lt.expect("libtorrent adding our servers", |l| l.starts_with("added "))
            .await;

        // Our announce, found by libtorrent's get_peers through our servers.
        let (ih, ih_hex) = infohash(0x11);
        let start = Instant::now();
        let stored = ours.announce_peer(ih, 9101).await.expect("announce stored");
        let announce_time = start.elapsed();
        lt.send(&format!("get_peers 0 {ih_hex}")).await;
        let line = lt
            .expect("libtorrent's get_peers reply with our peer", |l| {
                l.starts_with(&format!("peers 0 {ih_hex} ")) && l.contains("127.0.0.1:9101")
            })
            .await;
        println!(
            "our announce: stored on {stored} in {announce_time:?}; libtorrent found it: {line}"
        );

        // libtorrent's announce, stored by our servers.
        let stored_before = stored_on(&servers).await;
        let (ih, ih_hex) = infohash(0x12);
        lt.send(&format!("announce 0 {ih_hex}")).await;
        let line = lt
            .expect("libtorrent's announce done", |l| {
                l.starts_with(&format!("announced 0 {ih_hex}"))
            })
            .await;
        let lt_peer = SocketAddr::from(([127, 0, 0, 1], lt.ports[0]));
        let (first, done) = lookup_finds(&ours, ih, lt_peer).await;
        println!("libtorrent announce: {line}; our lookup found it in {first:?}, done in {done:?}");
        let stored = stored_on(&servers).await;
        assert!(
            stored > stored_before,
            "our servers stored libtorrent's announce: {stored_before} before, {stored} after"
        );
        println!(
            "our servers stored {} of libtorrent's announces",
            stored - stored_before
        );
    });
}

#[test]
fn among_libtorrent_nodes_each_finds_the_others_announce() {
    run(async {
        let mut lt = Lt::start(5).await;
        // libtorrent's own announce on a network of libtorrent nodes only.
        let (_, ih_hex) = infohash(0x21);
        lt.send(&format!("announce 1 {ih_hex}")).await;
        let without = lt
            .expect("libtorrent's announce done", |l| {
                l.starts_with(&format!("announced 1 {ih_hex}"))
            })
            .await;

        let config = DhtConfig::testnet(&lt.addrs());
        let ours = KrpcDht::spawn(&config).await.expect("ours");

        // Our announce: stored by libtorrent nodes, found by their get_peers.
        let (ih, ih_hex) = infohash(0x22);
        let start = Instant::now();
        let stored = ours.announce_peer(ih, 9201).await.expect("announce stored");
        let announce_time = start.elapsed();
        lt.expect("a libtorrent node storing our announce", |l| {
            l.starts_with("stored ") && l.contains(":9201 ") && l.ends_with(&ih_hex)
        })
        .await;
        lt.send(&format!("get_peers 3 {ih_hex}")).await;
        let line = lt
            .expect("libtorrent's get_peers reply with our peer", |l| {
                l.starts_with(&format!("peers 3 {ih_hex} ")) && l.contains("127.0.0.1:9201")
            })
            .await;
        println!(
            "our announce: stored on {stored} libtorrent nodes in {announce_time:?}; found: {line}"
        );

        // Theirs, found by us.
        let (ih, ih_hex) = infohash(0x23);
        lt.send(&format!("announce 0 {ih_hex}")).await;
        lt.expect("libtorrent's announce done", |l| {
            l.starts_with(&format!("announced 0 {ih_hex}"))
        })
        .await;
        let lt_peer = SocketAddr::from(([127, 0, 0, 1], lt.ports[0]));
        let (first, done) = lookup_finds(&ours, ih, lt_peer).await;
        println!("libtorrent's announce found by our lookup: first {first:?}, done {done:?}");

        // libtorrent's own announce again, now with our node in the network.
        let (_, ih_hex) = infohash(0x24);
        lt.send(&format!("announce 2 {ih_hex}")).await;
        let with = lt
            .expect("libtorrent's announce done", |l| {
                l.starts_with(&format!("announced 2 {ih_hex}"))
            })
            .await;
        let ms = |line: &str| -> f64 {
            line.split_whitespace()
                .nth(3)
                .and_then(|m| m.parse().ok())
                .expect("ms")
        };
        println!(
            "libtorrent's announce: {} ms without our node, {} ms with it",
            ms(&without),
            ms(&with)
        );
        // Not a benchmark: a guard against the failure this replaces (dead entries
        // left in libtorrent's tables made its announce take 15-17 s).
        assert!(
            ms(&with) < 2000.0,
            "libtorrent's announce slowed down: {with}"
        );
        let status = ours.status().await.expect("running");
        assert_eq!(
            status.stats.timeouts, 0,
            "libtorrent always answered: {status:?}"
        );
    });
}
