//! LAN discovery over real mDNS multicast, between two network namespaces joined by a
//! veth pair. Loopback has no multicast, so a single namespace cannot test this. Each
//! side runs as a child process (this test binary, re-executed inside `ip netns exec`).

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use replic8_discovery::*;

const CHILD_ENV: &str = "REPLIC8_LAN_CHILD";

/// Not a test of its own: the entry point of the child processes that the tests below
/// start (it does nothing unless `REPLIC8_LAN_CHILD` is set). A child joins the topic over
/// the LAN only and prints `FOUND <addr> <source> <ms since join>` for every peer it
/// finds, `ROUND <n>` when its n-th lookup round completed, and, when a line `leave`
/// arrives on stdin, leaves the topic and prints `LEFT` (`join` joins it again).
#[test]
fn lan_child_process_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split(',');
    let topic = Topic::from_hex(parts.next().expect("topic")).expect("topic hex");
    let port: u16 = parts.next().expect("port").parse().expect("port number");
    // `lookup-only`: the child does not announce the topic.
    let announce = parts.next() != Some("lookup-only");
    init_tracing();
    run(|| async move {
        let config = DiscoveryConfig {
            quic_port: port,
            dht: None,
            lan: Some(LanConfig::default()),
            static_peers: Vec::new(),
            timing: Timing {
                // Rounds every ~1.5 s for as long as the test runs (after the join's
                // delays the default waits minutes, and a slow test would run out).
                join_lookup_delays: vec![Duration::from_millis(500); 8],
                lookup_interval: (Duration::from_millis(500), Duration::from_millis(500)),
                ..Timing::default()
            },
        };
        let d = DiscoveryActor::spawn(config)
            .await
            .expect("discovery starts");
        let mut found = subscribe("child", &d, true).await;
        let start = Instant::now();
        let join = d.send(Join {
            topic,
            announce,
            lookup: true,
        });
        // Report found peers while the join is still running.
        tokio::spawn(async move {
            // A leave before the first round ends resolves the join with `Left`.
            println!("JOINED {:?}", join.await.expect("alive"));
        });
        let leaver = d.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines().map_while(Result::ok) {
                if line.trim() == "leave" {
                    futures::executor::block_on(leaver.send(Leave { topic }))
                        .expect("alive")
                        .expect("left");
                    println!("LEFT");
                }
                if line.trim() == "join" {
                    let join = leaver.send(Join {
                        topic,
                        announce: true,
                        lookup: true,
                    });
                    let report = futures::executor::block_on(join).expect("alive");
                    println!("REJOINED {report:?}");
                }
            }
        });
        let mut rounds = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                f = found.recv() => {
                    let f = f.expect("sink alive");
                    println!("FOUND {} {:?} {}", f.addr, f.source, start.elapsed().as_millis());
                }
                _ = tick.tick() => {
                    let now = d.send(Topics).await.expect("alive").first().map(|s| s.rounds).unwrap_or(rounds);
                    if now != rounds {
                        rounds = now;
                        println!("ROUND {rounds}");
                    }
                }
            }
        }
    });
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair, removed (with the pair) on drop, along with the
/// children started in them.
struct Netns {
    names: [String; 2],
    children: Vec<Child>,
    /// Every line each child printed, with the milliseconds since the test started:
    /// printed if the test fails (the waits consume lines as they go), or always with
    /// `REPLIC8_LAN_TRANSCRIPT` set.
    transcripts: Vec<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
    started: Instant,
}

impl Netns {
    fn new(subnet: u8) -> Netns {
        Self::new_named(subnet, "f")
    }

    /// `tag` keeps the names of tests that run at the same time apart.
    fn new_named(subnet: u8, tag: &str) -> Netns {
        let id = std::process::id() % 100_000;
        let names = [format!("r8d{tag}-{id}-a"), format!("r8d{tag}-{id}-b")];
        let veths = [format!("r8{tag}a{id}"), format!("r8{tag}b{id}")];
        let ns = Netns {
            names: names.clone(),
            children: Vec::new(),
            transcripts: Vec::new(),
            started: Instant::now(),
        };
        for name in &names {
            ip(&["netns", "add", name]);
        }
        ip(&[
            "link", "add", &veths[0], "type", "veth", "peer", "name", &veths[1],
        ]);
        for (i, (name, veth)) in names.iter().zip(&veths).enumerate() {
            ip(&["link", "set", veth, "netns", name]);
            let addr = format!("10.213.{subnet}.{}/24", i + 1);
            ip(&["-n", name, "addr", "add", &addr, "dev", veth]);
            ip(&["-n", name, "link", "set", veth, "up"]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
        }
        ns
    }

    /// Starts a child in namespace `i` and returns a channel of its stdout lines.
    fn spawn_child(&mut self, i: usize, topic: Topic, port: u16) -> mpsc::Receiver<String> {
        self.spawn_child_with(i, topic, port, "")
    }

    /// [`Netns::spawn_child`] with `extra` appended to the child's spec (`,lookup-only`).
    fn spawn_child_with(
        &mut self,
        i: usize,
        topic: Topic,
        port: u16,
        extra: &str,
    ) -> mpsc::Receiver<String> {
        assert_eq!(self.children.len(), i, "children start in order");
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.names[i]])
            .arg(exe)
            .args([
                "--exact",
                "lan::lan_child_process_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{},{port}{extra}", topic.to_hex()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start child");
        let stdout = child.stdout.take().expect("stdout");
        self.children.push(child);
        let (tx, rx) = mpsc::channel();
        let transcript = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        self.transcripts.push(transcript.clone());
        let started = self.started;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut t) = transcript.lock() {
                    t.push(format!("{:6} {line}", started.elapsed().as_millis()));
                }
                // The receiver is gone once the test ended; the transcript goes on.
                let _ = tx.send(line);
            }
        });
        rx
    }
}

impl Netns {
    /// Writes `line` to child `i`'s stdin.
    fn tell(&mut self, i: usize, line: &str) {
        let stdin = self.children[i].stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to child");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("REPLIC8_LAN_TRANSCRIPT").is_some() {
            for (i, transcript) in self.transcripts.iter().enumerate() {
                let lines = transcript.lock().map(|t| t.clone()).unwrap_or_default();
                eprintln!(
                    "--- child {i} ({}), ms since the test started:",
                    self.names[i]
                );
                for line in lines {
                    eprintln!("{line}");
                }
            }
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Reads lines until one satisfies `pred`; returns it and the lines before it.
fn wait_line(
    name: &str,
    lines: &mpsc::Receiver<String>,
    guard: Duration,
    pred: impl Fn(&str) -> bool,
) -> (String, Vec<String>) {
    let deadline = Instant::now() + guard;
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if pred(&line) => return (line, seen),
            Ok(line) => seen.push(line),
            Err(_) => panic!("{name}: expected line not seen within {guard:?}; output: {seen:#?}"),
        }
    }
}

/// Waits for a `FOUND` line naming `want`; returns the child's milliseconds since join.
fn wait_found(
    name: &str,
    lines: &mpsc::Receiver<String>,
    want: SocketAddr,
    guard: Duration,
) -> u64 {
    let deadline = Instant::now() + guard;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                // The test harness may print its own text before ours on the same line.
                let found = line.split("FOUND ").nth(1).unwrap_or_default();
                let fields: Vec<&str> = found.split_whitespace().collect();
                if let [addr, "Lan", ms] = fields[..] {
                    if addr == want.to_string() {
                        return ms.parse().expect("ms");
                    }
                }
                seen.push(line);
            }
            Err(_) => panic!("{name}: did not find {want} within {guard:?}; output: {seen:#?}"),
        }
    }
}

#[test]
fn lan_peers_find_each_other_across_namespaces() {
    if !is_root() {
        println!("skipped: creating network namespaces needs root, and loopback has no multicast");
        return;
    }
    let subnet = (std::process::id() % 250) as u8 + 1;
    let mut ns = Netns::new(subnet);
    let t = topic();
    let a_lines = ns.spawn_child(0, t, 47001);
    let b_lines = ns.spawn_child(1, t, 47002);
    let a_addr: SocketAddr = format!("10.213.{subnet}.1:47001").parse().expect("addr");
    let b_addr: SocketAddr = format!("10.213.{subnet}.2:47002").parse().expect("addr");
    // The guard covers two processes starting on a loaded machine; the times printed
    // are from each side's join.
    let a_ms = wait_found("a", &a_lines, b_addr, Duration::from_secs(30));
    let b_ms = wait_found("b", &b_lines, a_addr, Duration::from_secs(30));
    println!("over mDNS: a found b {a_ms} ms after joining, b found a {b_ms} ms after joining");
}

#[test]
fn lan_leave_withdraws_the_advertisement_and_rejoin_restores_it() {
    if !is_root() {
        println!("skipped: creating network namespaces needs root, and loopback has no multicast");
        return;
    }
    let subnet = (std::process::id() % 250) as u8 + 1;
    let subnet = subnet.wrapping_add(1).max(1);
    let mut ns = Netns::new_named(subnet, "l");
    let t = topic();
    let a_lines = ns.spawn_child(0, t, 47011);
    let b_lines = ns.spawn_child(1, t, 47012);
    let a_addr: SocketAddr = format!("10.213.{subnet}.1:47011").parse().expect("addr");
    let b_addr: SocketAddr = format!("10.213.{subnet}.2:47012").parse().expect("addr");
    wait_found("a", &a_lines, b_addr, Duration::from_secs(30));
    wait_found("b", &b_lines, a_addr, Duration::from_secs(30));
    ns.tell(0, "leave");
    wait_line("a", &a_lines, Duration::from_secs(10), |l| {
        l.contains("LEFT")
    });
    // b's rounds go on (every ~1.5 s). `n` is the last round b ended before now (lines
    // it printed before a left are still queued: read them all), or the first to end
    // after; round n + 1 may have begun before a's goodbye, round n + 2 began after it
    // (after n + 1 ended): it must not report a.
    let round_of = |line: &str| -> Option<u32> {
        line.split("ROUND ")
            .nth(1)
            .and_then(|r| r.trim().parse().ok())
    };
    let n: u32 = match b_lines.try_iter().filter_map(|l| round_of(&l)).max() {
        Some(n) => n,
        None => {
            let (line, _) = wait_line("b", &b_lines, Duration::from_secs(10), |l| {
                l.contains("ROUND ")
            });
            round_of(&line).expect("round number")
        }
    };
    wait_line("b", &b_lines, Duration::from_secs(10), |l| {
        l.contains(&format!("ROUND {}", n + 1))
    });
    let (_, during) = wait_line("b", &b_lines, Duration::from_secs(10), |l| {
        l.contains(&format!("ROUND {}", n + 2))
    });
    let reported: Vec<&String> = during
        .iter()
        .filter(|l| l.contains(&format!("FOUND {a_addr}")))
        .collect();
    assert!(
        reported.is_empty(),
        "b still reports a after a left: {reported:?}"
    );
    println!("b's round {} did not report a after a left", n + 2);

    // a joins again in the same process: the advertisement comes back and b finds a.
    ns.tell(0, "join");
    wait_found("b", &b_lines, a_addr, Duration::from_secs(30));
    wait_found("a", &a_lines, b_addr, Duration::from_secs(30));
}

#[test]
fn lan_a_lookup_only_join_finds_a_peer_that_announced_long_before() {
    if !is_root() {
        println!("skipped: creating network namespaces needs root, and loopback has no multicast");
        return;
    }
    // mdns-sd answers a subtype query with the service type's PTR, and its querier keeps
    // only answers to its own questions (or records it already caches): a node that
    // does not announce, browsing after the peer's own announcements are over, dropped
    // every answer and never found it. b joins once a's rounds show a has been joined
    // for seconds (its announcement is sent twice, 1 s apart, after ~0.75 s of probing).
    let subnet = (std::process::id() % 250) as u8 + 1;
    let subnet = subnet.wrapping_add(2).max(1);
    let mut ns = Netns::new_named(subnet, "o");
    let t = topic();
    let a_lines = ns.spawn_child(0, t, 47021);
    let a_addr: SocketAddr = format!("10.213.{subnet}.1:47021").parse().expect("addr");
    wait_line("a", &a_lines, Duration::from_secs(30), |l| {
        l.contains("ROUND 3")
    });
    let b_lines = ns.spawn_child_with(1, t, 47022, ",lookup-only");
    let b_ms = wait_found("b", &b_lines, a_addr, Duration::from_secs(30));
    println!("a lookup-only join found a peer announced long before in {b_ms} ms");
}
