//! LAN discovery over real mDNS multicast, between two network namespaces joined by a
//! veth pair. Loopback has no multicast, so a single namespace cannot test this. Each
//! side runs as a child process (this test binary, re-executed inside `ip netns exec`).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use replic8_discovery::*;

const CHILD_ENV: &str = "REPLIC8_LAN_CHILD";

/// Not a test of its own: the entry point of the child processes that
/// `lan_peers_find_each_other_across_namespaces` starts (it does nothing unless
/// `REPLIC8_LAN_CHILD` is set). A child joins the topic over the LAN only and prints
/// `FOUND <addr> <source> <ms since join>` for every peer it finds.
#[test]
fn lan_child_process_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split(',');
    let topic = Topic::from_hex(parts.next().expect("topic")).expect("topic hex");
    let port: u16 = parts.next().expect("port").parse().expect("port number");
    init_tracing();
    run(|| async move {
        let config = DiscoveryConfig {
            quic_port: port,
            dht: None,
            lan: Some(LanConfig::default()),
            static_peers: Vec::new(),
            timing: Timing::default(),
        };
        let d = DiscoveryActor::spawn(config)
            .await
            .expect("discovery starts");
        let mut found = subscribe("child", &d, true).await;
        let start = Instant::now();
        let join = d.send(Join {
            topic,
            announce: true,
            lookup: true,
        });
        // Report found peers while the join is still running.
        tokio::spawn(async move {
            let report = join.await.expect("alive").expect("joined");
            println!("JOINED {report:?}");
        });
        loop {
            let f = found
                .recv_until(Duration::from_secs(60), |f| f.topic == topic)
                .await;
            println!(
                "FOUND {} {:?} {}",
                f.addr,
                f.source,
                start.elapsed().as_millis()
            );
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
}

impl Netns {
    fn new(subnet: u8) -> Netns {
        let id = std::process::id() % 100_000;
        let names = [format!("r8d-{id}-a"), format!("r8d-{id}-b")];
        let veths = [format!("r8a{id}"), format!("r8b{id}")];
        let ns = Netns {
            names: names.clone(),
            children: Vec::new(),
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
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.names[i]])
            .arg(exe)
            .args([
                "--exact",
                "lan_child_process_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{},{port}", topic.to_hex()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start child");
        let stdout = child.stdout.take().expect("stdout");
        self.children.push(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
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
