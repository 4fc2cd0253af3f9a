//! Feeds by key, live tails, lists and numbers after a restart, through the `replic8`
//! command only: daemons on loopback (no DHT, no LAN), the reader given the writer as
//! a static peer in its TOML config.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{private_daemon, replic8, run, Daemon};

mod support;

/// The guard on every wait: far above what each step takes on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(90);

/// A daemon on loopback (no DHT, no LAN) on `data`, with `config` if given.
fn start_daemon(data: &Path, config: Option<&Path>) -> Daemon {
    let mut cmd = replic8();
    private_daemon(&mut cmd, data);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    Daemon::spawn(&mut cmd)
}

fn json(data: &Path, args: &[&str]) -> Value {
    serde_json::from_slice(&run(data, args)).unwrap()
}

/// A client command left running (`--follow`), its output read on a thread.
struct Running {
    child: Child,
    out: mpsc::Receiver<Vec<u8>>,
}

impl Running {
    fn start(data: &Path, args: &[&str]) -> Running {
        let mut child = replic8()
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, out) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Running { child, out }
    }

    /// Reads until `want` bytes came, within the deadline.
    fn read_exact(&self, want: usize, what: &str) -> Vec<u8> {
        let until = Instant::now() + DEADLINE;
        let mut got = Vec::new();
        while got.len() < want {
            let left = until.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(chunk) => got.extend(chunk),
                Err(e) => panic!("{what}: {} of {want} bytes, then {e}", got.len()),
            }
        }
        got
    }

    /// Reads JSON lines until one matches `want`, within the deadline; returns it.
    fn read_line_until(&self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + DEADLINE;
        let mut got = Vec::new();
        loop {
            let text = String::from_utf8_lossy(&got);
            let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
            let hit = complete
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| want(v));
            if let Some(v) = hit {
                return v;
            }
            let left = until.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(chunk) => got.extend(chunk),
                Err(e) => panic!("{what}: {e}; got {}", String::from_utf8_lossy(&got)),
            }
        }
    }

    /// Waits, within the deadline, for the command to end by itself; its exit status
    /// and all it printed.
    fn finish(mut self, what: &str) -> (std::process::ExitStatus, Vec<u8>) {
        let until = Instant::now() + DEADLINE;
        let mut all = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(chunk) => all.extend(chunk),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("{what}: {e}; got {}", String::from_utf8_lossy(&all)),
            }
        }
        (self.child.wait().unwrap(), all)
    }

    /// Everything printed so far (after it was stopped).
    fn stop(mut self) -> Vec<u8> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut all = Vec::new();
        while let Ok(chunk) = self.out.recv_timeout(Duration::from_secs(5)) {
            all.extend(chunk);
        }
        all
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns `Some`, within the deadline.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn feed_get_by_key_replicates_tails_lists_and_keeps_its_numbers_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a_data, b_data) = (dir.path().join("a"), dir.path().join("b"));
    let a = start_daemon(&a_data, None);

    // On A: a public feed (created, never shared in a named namespace) and a private
    // one (shared in `photos` only).
    let public = String::from_utf8(run(&a_data, &["feed", "new"]))
        .unwrap()
        .trim()
        .to_owned();
    let private = String::from_utf8(run(&a_data, &["feed", "new"]))
        .unwrap()
        .trim()
        .to_owned();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = write_file(dir.path(), "data.bin", &data);
    let file = file.to_str().unwrap();
    for key in [&public, &private] {
        run(
            &a_data,
            &["feed", "append", key, file, "--block-size", "16384"],
        );
    }
    run(&a_data, &["share", "photos", &private, "--header", "t=x"]);

    // B knows A only as a static peer, and the keys out of band.
    let config = write_file(
        dir.path(),
        "b.toml",
        format!("[discovery]\nstatic_peers = [\"{}\"]\n", a.quic()).as_bytes(),
    );
    let mut b = start_daemon(&b_data, Some(&config));

    // The private feed first: its `Have` reaches A before the public one's, and A never
    // answers it (A holds it only in `photos`).
    let refused = Running::start(&b_data, &["feed", "get", &private]);
    let (status, got) =
        Running::start(&b_data, &["feed", "get", &public]).finish("feed get of the public feed");
    assert!(status.success(), "{status}");
    let lines: Vec<Value> = got
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines[0]["event"], "get", "{lines:?}");
    assert_eq!(lines[0]["created"], true, "{lines:?}");
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "synced", "{lines:?}");
    assert_eq!(last["in_sync"], true);
    assert_eq!(last["length"], 19);
    assert_eq!(last["stored"], 19);
    assert_eq!(last["remote_length"], 19);
    assert_eq!(last["peers"], 1);
    assert!(
        lines[1..].iter().all(|l| l["length"].is_u64()),
        "every line after the first is progress: {lines:?}"
    );
    assert_eq!(run(&b_data, &["feed", "cat", &public]), data, "copy equal");

    // Nothing of the private feed came, and A never said it has it.
    let info = json(&b_data, &["feed", "info", &private, "--json"]);
    assert_eq!(info["length"], 0, "{info}");
    assert_eq!(info["peers"], serde_json::json!([]), "{info}");
    let printed = refused.stop();
    assert!(
        !String::from_utf8_lossy(&printed).contains("\"in_sync\":true"),
        "{}",
        String::from_utf8_lossy(&printed)
    );

    // The list: both feeds, the public replica complete, the refused one empty.
    let list = json(&b_data, &["feed", "list", "--json"]);
    let entry = |key: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|f| f["key"] == key)
            .unwrap_or_else(|| panic!("{key} not in {list}"))
            .clone()
    };
    let p = entry(&public);
    assert_eq!(
        (
            &p["writable"],
            &p["length"],
            &p["stored"],
            &p["stored_bytes"]
        ),
        (&Value::Bool(false), &19.into(), &19.into(), &300_000.into()),
        "{p}"
    );
    assert_eq!(p["namespaces"], serde_json::json!([""]), "{p}");
    assert_eq!(entry(&private)["stored"], 0);
    let on_a = json(&a_data, &["feed", "list", "--json"]);
    let names: Vec<&Value> = on_a
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["namespaces"])
        .collect();
    assert!(names.contains(&&serde_json::json!(["photos"])), "{on_a}");

    // A live tail on B prints what A appends later, and a following get reports it.
    let tail = Running::start(&b_data, &["feed", "cat", &public, "--follow"]);
    assert_eq!(tail.read_exact(data.len(), "the tail's first part"), data);
    let following = Running::start(&b_data, &["feed", "get", &public, "--follow"]);
    following.read_line_until("the following get's first sync", |v| v["in_sync"] == true);
    let more: Vec<u8> = (0..40_000u32).map(|i| (i % 13) as u8).collect();
    let more_file = write_file(dir.path(), "more.bin", &more);
    run(
        &a_data,
        &[
            "feed",
            "append",
            &public,
            more_file.to_str().unwrap(),
            "--block-size",
            "16384",
        ],
    );
    assert_eq!(tail.read_exact(more.len(), "the appended blocks"), more);
    drop(tail);
    let at_22 = following.read_line_until("the following get in sync at 22", |v| {
        v["in_sync"] == true && v["length"] == 22
    });
    assert_eq!(
        (&at_22["remote_length"], &at_22["stored"]),
        (&22.into(), &22.into()),
        "{at_22}"
    );
    drop(following);

    // Restarted, B knows at once what it stores, then hears from A again.
    b.stop();
    b = start_daemon(&b_data, Some(&config));
    let info = json(&b_data, &["feed", "info", &public, "--json"]);
    assert_eq!((&info["length"], &info["stored"]), (&22.into(), &22.into()));
    let status = json(&b_data, &["status", "--json"]);
    assert_eq!(status["feeds_held"], 2, "{status}");
    assert_eq!(status["blocks_stored"], 22, "{status}");
    assert_eq!(status["bytes_stored"], 340_000, "{status}");
    let peers = eventually("A in B's peer table of the feed", || {
        let info = json(&b_data, &["feed", "info", &public, "--json"]);
        let peers = info["peers"].as_array().unwrap().clone();
        (!peers.is_empty()).then_some(peers)
    });
    assert_eq!(peers[0]["length"], 22, "{peers:?}");
    let text = String::from_utf8(run(&b_data, &["feed", "info", &public])).unwrap();
    assert!(
        text.contains("peer ") && text.contains("length 22"),
        "{text}"
    );
    b.stop();
    a.stop();
}
