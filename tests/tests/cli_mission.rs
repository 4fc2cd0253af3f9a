//! The mission through the `replic8` command only: three daemons on loopback, a secret
//! namespace opened from the command line and from a config file, a header policy, a
//! wrong secret, forwarding through the middle node, a manual accept, a restart.
//!
//! Nothing here calls the library but to find the binary; every step is a command a
//! user would type, and every wait polls a command's output with a generous deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any one step may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(90);

/// The `replic8` binary of this build: next to the test executable's directory
/// (`target/debug/deps/..`), which `cargo test` builds before it runs any test.
fn binary() -> PathBuf {
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

/// A daemon spawned as a user would: loopback, no DHT, no LAN.
struct Daemon {
    name: &'static str,
    data: PathBuf,
    config: Option<PathBuf>,
    child: Child,
    quic: SocketAddr,
}

impl Daemon {
    fn start(name: &'static str, data: &Path, config: Option<&Path>) -> Daemon {
        let mut cmd = Command::new(binary());
        cmd.arg("--data-dir").arg(data);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(["daemon", "--listen", "127.0.0.1:0", "--no-dht", "--no-lan"])
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        // The banner: `replic8 daemon: key K quic ADDR control ...`.
        let first = lines.next().unwrap().unwrap();
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
        std::thread::spawn(move || for _ in lines {});
        Daemon {
            name,
            data: data.to_owned(),
            config: config.map(Path::to_owned),
            child,
            quic,
        }
    }

    /// Stops the daemon with SIGTERM and checks it exits cleanly.
    fn stop(mut self) -> (PathBuf, Option<PathBuf>) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "daemon {} exit: {status}", self.name);
        (self.data.clone(), self.config.clone())
    }

    /// Runs a client command; its stdout, or its stderr as the error.
    fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(binary())
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap())
        } else {
            Err(String::from_utf8(out.stderr).unwrap())
        }
    }

    /// Runs a client command that must succeed.
    fn run(&self, args: &[&str]) -> String {
        self.try_run(args)
            .unwrap_or_else(|e| panic!("daemon {}: {args:?} failed: {e}", self.name))
    }

    /// Runs a client command that must fail; its one-line error.
    fn fails(&self, args: &[&str]) -> String {
        match self.try_run(args) {
            Ok(out) => panic!("daemon {}: {args:?} succeeded: {out}", self.name),
            Err(e) => {
                assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
                e
            }
        }
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.run(args)).unwrap()
    }

    /// The length of a feed held here (None: not held).
    fn length(&self, feed: &str) -> Option<u64> {
        let info = self.try_run(&["feed", "info", feed, "--json"]).ok()?;
        serde_json::from_str::<Value>(&info).unwrap()["length"].as_u64()
    }

    /// The offers of peers as `replic8 offers --json` lists them.
    fn offers(&self) -> Vec<Value> {
        self.run(&["offers", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The decision of the latest offer of `feed` in `namespace`.
    fn decision(&self, namespace: &str, feed: &str) -> Option<String> {
        self.offers()
            .iter()
            .rev()
            .find(|o| o["namespace"] == namespace && o["feed"] == feed)
            .map(|o| o["decision"].as_str().unwrap().to_owned())
    }

    /// Starts a client command that streams JSON lines.
    fn follow(&self, args: &[&str]) -> Follow {
        let mut child = Command::new(binary())
            .arg("--data-dir")
            .arg(&self.data)
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

    fn cat(&self, feed: &str) -> Vec<u8> {
        let out = Command::new(binary())
            .arg("--data-dir")
            .arg(&self.data)
            .args(["feed", "cat", feed])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "daemon {}: feed cat {feed}",
            self.name
        );
        out.stdout
    }

    fn wait(&self, what: &str, mut done: impl FnMut(&Daemon) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "daemon {}: timed out waiting for {what}",
                self.name
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
struct Follow {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follow {
    /// Reads lines until one satisfies `want`.
    fn wait_line(&self, what: &str, want: impl Fn(&Value) -> bool) {
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

/// A feed on `node` holding `blocks` blocks of distinct bytes; its key.
fn feed_with(node: &Daemon, dir: &Path, blocks: u8) -> (String, Vec<u8>) {
    let key = node.run(&["feed", "new"]).trim().to_owned();
    let bytes: Vec<u8> = (0..u32::from(blocks) * 1000)
        .map(|i| (i % 251) as u8 ^ blocks)
        .collect();
    let file = dir.join(format!("{key}.bin"));
    std::fs::write(&file, &bytes).unwrap();
    node.run(&[
        "feed",
        "append",
        &key,
        file.to_str().unwrap(),
        "--block-size",
        "1000",
    ]);
    (key, bytes)
}

/// A config with `peer` as static peer and extra TOML.
fn config(dir: &Path, name: &str, peer: SocketAddr, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!("[discovery]\nstatic_peers = [\"{peer}\"]\n{extra}"),
    )
    .unwrap();
    path
}

const TOPIC: &str = "7777777777777777777777777777777777777777777777777777777777777777";

#[test]
fn three_daemons_do_the_mission_through_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);

    // A: the writer. Two feeds with headers in the secret namespace `team`, one in the
    // named namespace `inbox`.
    let a = Daemon::start("A", &path("a"), None);
    let secret = a.run(&["namespace", "new-secret"]);
    std::fs::write(path("team.secret"), &secret).unwrap();
    let wrong = a.run(&["namespace", "new-secret"]);
    std::fs::write(path("wrong.secret"), &wrong).unwrap();
    let (photo, photo_bytes) = feed_with(&a, dir.path(), 3);
    let (video, _) = feed_with(&a, dir.path(), 2);
    let (note, note_bytes) = feed_with(&a, dir.path(), 4);
    // And one never shared in a named namespace: whoever knows its key may read it.
    let (public, public_bytes) = feed_with(&a, dir.path(), 2);
    let team_secret = path("team.secret");
    let secret_file = team_secret.to_str().unwrap();
    a.run(&["namespace", "open", "team", "--secret-file", secret_file]);
    a.run(&["share", "team", &photo, "--header", "kind=photo"]);
    a.run(&["share", "team", &video, "--header", "kind=video"]);
    a.run(&["share", "inbox", &note, "--header", "title=note"]);
    let listed = a.run(&["namespace", "list", "--json"]);
    assert!(!listed.contains(secret.trim()), "list never shows a secret");

    // B: connected to A first, then opens `team` with the secret and a header policy:
    // a namespace opened while the session is up gets the offers A made.
    let b_config = config(dir.path(), "b", a.quic, "");
    let b = Daemon::start("B", &path("b"), Some(&b_config));
    b.run(&["join", "--topic", TOPIC]);
    b.wait("a session with A", |b| {
        b.json(&["peers", "--json"]).as_array().unwrap().len() == 1
    });
    // A failed open changes nothing: an unreadable secret file.
    let err = b.fails(&[
        "namespace",
        "open",
        "team",
        "--secret-file",
        path("missing.secret").to_str().unwrap(),
    ]);
    assert!(err.contains("missing.secret"), "{err}");
    assert_eq!(
        b.json(&["namespace", "list", "--json"]),
        Value::Array(vec![])
    );
    b.run(&[
        "namespace",
        "open",
        "team",
        "--secret-file",
        secret_file,
        "--accept-header",
        "kind=photo",
    ]);
    b.wait("the photo feed from A", |b| b.length(&photo) == Some(3));
    b.wait("the video feed refused by the header policy", |b| {
        b.decision("team", &video).as_deref() == Some("refused-policy")
    });
    assert_eq!(b.decision("team", &photo).as_deref(), Some("accepted"));
    assert_eq!(b.length(&video), None, "a refused feed is not held");

    // A manual namespace holds the offer until `replic8 accept`; `offers --follow`
    // shows it as it happens.
    let follow = b.follow(&["offers", "--follow", "--json"]);
    b.run(&["namespace", "open", "inbox", "--accept", "manual"]);
    follow.wait_line("the note waiting, followed", |o| {
        o["feed"] == note.as_str() && o["decision"] == "waiting"
    });
    drop(follow);
    b.wait("the note waiting for a decision", |b| {
        b.decision("inbox", &note).as_deref() == Some("waiting")
    });
    assert_eq!(b.length(&note), None, "a waiting feed is not created");
    let err = b.fails(&["accept", "team", &note]);
    assert!(err.contains("by hand"), "{err}");
    b.run(&["accept", "inbox", &note]);
    b.wait("the accepted note from A", |b| b.length(&note) == Some(4));
    assert_eq!(b.decision("inbox", &note).as_deref(), Some("accepted"));

    // C: connected to B only; `inbox` from its config file, `team` with a wrong secret.
    let c_config = config(
        dir.path(),
        "c",
        b.quic,
        "[[namespace]]\nname = \"inbox\"\naccept = \"all\"\n",
    );
    let c = Daemon::start("C", &path("c"), Some(&c_config));
    let wrong_file = path("wrong.secret");
    c.run(&[
        "namespace",
        "open",
        "team",
        "--secret-file",
        wrong_file.to_str().unwrap(),
        "--accept",
        "all",
    ]);
    c.run(&["join", "--topic", TOPIC]);
    // The note, forwarded by B, proves that the session's namespaces were matched.
    c.wait("the note forwarded by B", |c| c.length(&note) == Some(4));
    assert!(
        c.offers().iter().all(|o| o["namespace"] != "team"),
        "a wrong secret gets no offer: {:?}",
        c.offers()
    );
    assert_eq!(c.length(&photo), None);
    // The right secret replaces the wrong one on the running session.
    c.run(&[
        "namespace",
        "open",
        "team",
        "--secret-file",
        secret_file,
        "--accept",
        "all",
    ]);
    c.wait("the photo feed forwarded by B", |c| {
        c.length(&photo) == Some(3)
    });
    assert_eq!(c.length(&video), None, "B never held the video feed");
    let peers = c.json(&["peers", "--json"]);
    assert_eq!(
        peers.as_array().unwrap().len(),
        1,
        "C knows only B: {peers}"
    );
    let listed = c.json(&["namespace", "list", "--json"]);
    let origins: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["origin"].as_str().unwrap()))
        .collect();
    assert_eq!(origins, [("inbox", "config"), ("team", "opened")]);

    // Restarting B keeps its namespaces (secret and policy) and its replicas.
    let (b_data, b_config) = b.stop();
    let b = Daemon::start("B", &b_data, b_config.as_deref());
    let listed = b.json(&["namespace", "list", "--json"]);
    let team = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "team")
        .unwrap_or_else(|| panic!("team after the restart: {listed}"));
    assert_eq!(team["secret"], true);
    assert_eq!(team["policy"]["accept"], "all");
    assert_eq!(team["policy"]["accept_headers"]["kind"], "photo");
    let state = std::fs::read_to_string(b_data.join("state.json")).unwrap();
    assert!(state.contains(secret.trim()), "the secret is persisted");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(b_data.join("state.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    b.wait("the photo feed after the restart", |b| {
        b.length(&photo) == Some(3)
    });

    // A feed known out of band, by its key alone, comes with `feed get` (knowing the key
    // is the read capability); it exits once in sync.
    let progress = b.run(&["feed", "get", &public, "--json"]);
    assert!(
        progress.contains(r#""in_sync":true"#),
        "feed get: {progress}"
    );
    assert_eq!(b.length(&public), Some(2));

    // Every copy reads back equal.
    for (node, feed, bytes) in [
        (&b, &photo, &photo_bytes),
        (&c, &photo, &photo_bytes),
        (&b, &note, &note_bytes),
        (&c, &note, &note_bytes),
        (&b, &public, &public_bytes),
    ] {
        assert!(node.cat(feed) == *bytes, "{}: {feed} differs", node.name);
    }
    assert!(a.cat(&photo) == photo_bytes);

    // Closing a namespace forgets it (and its secret) over a restart.
    c.run(&["namespace", "close", "team"]);
    let err = c.fails(&["namespace", "close", "team"]);
    assert!(err.contains("not open"), "{err}");
    let state = std::fs::read_to_string(path("c").join("state.json")).unwrap();
    assert!(
        !state.contains(secret.trim()),
        "a closed namespace's secret is gone"
    );

    c.stop();
    b.stop();
    a.stop();
}
