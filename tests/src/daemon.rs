//! `replic8` daemons driven through the command line, as a user would: spawned with a
//! data directory and a config, stopped with SIGTERM (killed if a test fails first), and
//! asked with client commands whose output the test polls with a generous deadline.
//!
//! A daemon can run under a launcher (`ip netns exec NS` for the namespace tests); its
//! client commands run here, since the control socket is a file in its data directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any one step may take before the test fails: generous for a loaded 2-core
/// machine, never the check itself.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// The `replic8` binary of this build: next to the test executable's directory
/// (`target/debug/deps/..`), which `cargo test` builds before it runs any test.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("replic8");
    assert!(
        bin.exists(),
        "no replic8 binary at {}: build it first (cargo build -p replic8-node --bin replic8)",
        bin.display()
    );
    bin
}

/// How to start a daemon: its name in failure messages, its data directory, a config,
/// the arguments after `daemon`, and a launcher the command runs under.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    name: String,
    data: PathBuf,
    config: Option<PathBuf>,
    args: Vec<OsString>,
    launcher: Vec<OsString>,
}

impl DaemonSpec {
    /// A daemon on loopback with neither DHT nor LAN (peers come from its config).
    pub fn loopback(name: &str, data: &Path) -> DaemonSpec {
        DaemonSpec {
            name: name.to_owned(),
            data: data.to_owned(),
            config: None,
            args: ["--listen", "127.0.0.1:0", "--no-dht", "--no-lan"]
                .map(OsString::from)
                .to_vec(),
            launcher: Vec::new(),
        }
    }

    /// A daemon with exactly these arguments after `daemon` (no defaults).
    pub fn with_args(name: &str, data: &Path, args: &[&str]) -> DaemonSpec {
        DaemonSpec {
            args: args.iter().map(OsString::from).collect(),
            ..DaemonSpec::loopback(name, data)
        }
    }

    /// Reads `config` (`--config`).
    pub fn config(mut self, config: Option<&Path>) -> DaemonSpec {
        self.config = config.map(Path::to_owned);
        self
    }

    /// Runs the daemon under `launcher` (e.g. `["ip", "netns", "exec", "ns1"]`).
    pub fn launcher(mut self, launcher: &[&str]) -> DaemonSpec {
        self.launcher = launcher.iter().map(OsString::from).collect();
        self
    }

    /// Starts the daemon and waits for its ready line.
    pub fn start(self) -> Daemon {
        let mut cmd = match self.launcher.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(binary());
                cmd
            }
            None => Command::new(binary()),
        };
        cmd.arg("--data-dir").arg(&self.data);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.arg("daemon").args(&self.args).stderr(Stdio::piped());
        let name = &self.name;
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("daemon {name}: cannot spawn {cmd:?}: {e}"));
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        // The banner: `replic8 daemon: key K quic ADDR control ...`.
        let first = match lines.next() {
            Some(Ok(line)) => line,
            other => panic!("daemon {name}: no ready line ({other:?}) from {cmd:?}"),
        };
        assert!(
            first.starts_with("replic8 daemon: key "),
            "daemon {name}: {first}"
        );
        let quic = first
            .split_whitespace()
            .skip_while(|w| *w != "quic")
            .nth(1)
            .unwrap_or_else(|| panic!("daemon {name}: no quic address in {first}"))
            .parse()
            .unwrap();
        // The rest of its log goes to the test's output, shown if the test fails.
        let tag = name.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
            }
        });
        Daemon {
            spec: self,
            child,
            quic,
            banner: first,
        }
    }
}

/// A running `replic8 daemon`.
#[derive(Debug)]
pub struct Daemon {
    spec: DaemonSpec,
    child: Child,
    /// The QUIC address its ready line names.
    pub quic: SocketAddr,
    /// Its ready line (`replic8 daemon: key K quic ADDR ...`).
    pub banner: String,
}

impl Daemon {
    /// Starts a daemon on loopback with neither DHT nor LAN, reading `config` if given.
    pub fn start(name: &str, data: &Path, config: Option<&Path>) -> Daemon {
        DaemonSpec::loopback(name, data).config(config).start()
    }

    /// Its key, in hex, as its ready line names it.
    pub fn key(&self) -> &str {
        self.banner
            .strip_prefix("replic8 daemon: key ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("daemon {}: {}", self.name(), self.banner))
    }

    /// Its name in failure messages.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its data directory.
    pub fn data(&self) -> &Path {
        &self.spec.data
    }

    /// Stops the daemon with SIGTERM, checks it exits cleanly, and gives back what
    /// starts it again.
    pub fn stop(mut self) -> DaemonSpec {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "daemon {} exit: {status}", self.name());
        self.spec.clone()
    }

    /// Kills the daemon at once (SIGKILL): a node that leaves without a goodbye.
    pub fn kill(mut self) -> DaemonSpec {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.spec.clone()
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success());
    }

    /// A client command on this daemon's data directory (`replic8 --data-dir DIR`).
    pub fn client(&self) -> Command {
        let mut cmd = Command::new(binary());
        cmd.arg("--data-dir").arg(&self.spec.data);
        cmd
    }

    /// Runs a client command; its stdout, or its stderr as the error.
    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let out = self.client().args(args).output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap())
        } else {
            Err(String::from_utf8(out.stderr).unwrap())
        }
    }

    /// Runs a client command that must succeed.
    pub fn run(&self, args: &[&str]) -> String {
        self.try_run(args)
            .unwrap_or_else(|e| panic!("daemon {}: {args:?} failed: {e}", self.name()))
    }

    /// Runs a client command that must fail; its one-line error.
    pub fn fails(&self, args: &[&str]) -> String {
        match self.try_run(args) {
            Ok(out) => panic!("daemon {}: {args:?} succeeded: {out}", self.name()),
            Err(e) => {
                assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
                e
            }
        }
    }

    /// Runs a client command whose output is one JSON value.
    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.run(args)).unwrap()
    }

    /// The length of a feed held here (None: not held).
    pub fn length(&self, feed: &str) -> Option<u64> {
        let info = self.try_run(&["feed", "info", feed, "--json"]).ok()?;
        serde_json::from_str::<Value>(&info).unwrap()["length"].as_u64()
    }

    /// The offers of peers as `replic8 offers --json` lists them.
    pub fn offers(&self) -> Vec<Value> {
        self.run(&["offers", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The decision of the latest offer of `feed` in `namespace`.
    pub fn decision(&self, namespace: &str, feed: &str) -> Option<String> {
        self.offers()
            .iter()
            .rev()
            .find(|o| o["namespace"] == namespace && o["feed"] == feed)
            .map(|o| o["decision"].as_str().unwrap().to_owned())
    }

    /// Starts a client command that streams JSON lines.
    pub fn follow(&self, args: &[&str]) -> Follow {
        let mut child = self
            .client()
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follow { child, lines }
    }

    /// The bytes of a feed, as `replic8 feed cat` prints them.
    pub fn cat(&self, feed: &str) -> Vec<u8> {
        let out = self.client().args(["feed", "cat", feed]).output().unwrap();
        assert!(
            out.status.success(),
            "daemon {}: feed cat {feed}: {}",
            self.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Polls `done` until it holds, failing the test after [`DEADLINE`].
    pub fn wait(&self, what: &str, mut done: impl FnMut(&Daemon) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "daemon {}: timed out waiting for {what}",
                self.name()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A daemon left by a failing test is killed, so that it does not outlive the run.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A client command streaming JSON lines; killed when dropped.
#[derive(Debug)]
pub struct Follow {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follow {
    /// Reads lines until one satisfies `want`, failing the test after [`DEADLINE`].
    pub fn wait_line(&self, what: &str, want: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("timed out waiting for {what}: {e}"));
            if want(&serde_json::from_str(&line).unwrap()) {
                return;
            }
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
