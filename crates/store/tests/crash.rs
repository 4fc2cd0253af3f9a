//! Crash safety of a feed on `DiskStorage`, with real processes and SIGKILL.
//!
//! The test binary re-executes itself as the child (`crash_child_process`, selected by
//! name with `--exact`, active only when `REPLIC8_CRASH_CHILD` names a directory). The
//! child appends to one feed in a loop through `Feed::append`/`Feed::append_batch`
//! (durable on return) and `Feed::append_batch_deferred` followed by `Feed::flush`
//! (durable once the flush returns), and prints `ack <length>` after each durable point.
//! The parent kills it with SIGKILL at random moments, reopens the feed, and checks that
//! every acknowledged block is there, has the bytes the child wrote, and verifies up to a
//! signed head (a fresh replica ingests a proof of the whole feed, which checks every hash
//! and the signature).
//!
//! Reproduce a run: `REPLIC8_CRASH_SEED=<seed printed on failure> cargo test -p
//! replic8-store --test crash`.

#![allow(clippy::unwrap_used)] // test helpers outside `#[test]` functions unwrap too

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use replic8_store::storage::{DiskConfig, DiskStorage, MemoryStorage};
use replic8_store::{Feed, FeedSecret};

const CHILD_ENV: &str = "REPLIC8_CRASH_CHILD";
const SECRET: [u8; 32] = [0x42; 32];
/// Kills per run; the issue asks for at least 50.
const KILLS: usize = 60;

/// The bytes of block `index`: its size varies from 0 to ~128 KB so that some kills
/// land inside a large write, and its content names its index.
fn block(index: u64) -> Vec<u8> {
    let len = match index % 7 {
        0 => 0,
        1..=3 => 1 + (index * 37 % 1024) as usize,
        4 | 5 => 16384,
        _ => 128_000 + (index % 13) as usize,
    };
    let mut data = vec![(index % 251) as u8; len];
    let tag = index.to_le_bytes();
    let n = tag.len().min(len);
    data[..n].copy_from_slice(&tag[..n]);
    data
}

/// The child: append forever, acknowledging each durable length on stdout.
#[test]
fn crash_child_process() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return; // Only the crash test runs this as a child.
    };
    // Small checkpoints, so that kills also land inside them.
    let config = DiskConfig {
        checkpoint_bytes: 256 << 10,
        ..DiskConfig::default()
    };
    let storage = DiskStorage::open_with(&dir, config).unwrap();
    let secret = FeedSecret::from_bytes(&SECRET);
    let mut feed = match Feed::open(&storage, &secret.key()).unwrap() {
        Some(feed) => feed,
        None => Feed::create(&storage, secret).unwrap(),
    };
    let mut out = std::io::stdout().lock();
    loop {
        let start = feed.length();
        let length = match start % 5 {
            3 => {
                let blocks: Vec<Vec<u8>> = (start..start + 4).map(block).collect();
                feed.append_batch(&blocks).unwrap()
            }
            // Deferred batches (synced in the background) are acknowledged only once
            // the flush after them returns.
            1 => {
                let first: Vec<Vec<u8>> = (start..start + 2).map(block).collect();
                let second: Vec<Vec<u8>> = (start + 2..start + 5).map(block).collect();
                feed.append_batch_deferred(&first).unwrap();
                let length = feed.append_batch_deferred(&second).unwrap();
                feed.flush().unwrap();
                length
            }
            _ => feed.append(&block(start)).unwrap(),
        };
        // One write per line: a kill leaves either the whole line or none of it.
        out.write_all(format!("ack {length}\n").as_bytes()).unwrap();
        out.flush().unwrap();
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Run the child, kill it after `delay` (counted from its first acknowledgement if
/// `wait_for_ack`), and return the largest length it acknowledged.
fn run_child_and_kill(dir: &Path, wait_for_ack: bool, delay: Duration) -> Option<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acked = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("ack ") {
                let n: u64 = n.parse().expect("ack line");
                acked = Some(n);
                let _ = tx.send(());
            }
        }
        acked
    });
    // Half of the kills wait for a first acknowledgement so the feed keeps growing; the
    // others may land anywhere, including while the child opens and replays the feed.
    let mut started = Instant::now();
    if wait_for_ack {
        let _ = rx.recv_timeout(Duration::from_secs(30));
        started = Instant::now();
    }
    let elapsed = started.elapsed();
    if elapsed < delay {
        std::thread::sleep(delay - elapsed); // The random moment of the kill, not a check.
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child ended on its own: {status}");
    reader.join().unwrap()
}

/// Reopen the feed and check every acknowledged block; returns the reopened length.
fn check_feed(dir: &Path, acked: u64, seed: u64, kill: usize) -> u64 {
    let ctx = format!("seed {seed}, after kill {kill}, acknowledged length {acked}");
    let storage = DiskStorage::open(dir).unwrap_or_else(|e| panic!("{ctx}: open storage: {e}"));
    let key = FeedSecret::from_bytes(&SECRET).key();
    let Some(mut feed) =
        Feed::open(&storage, &key).unwrap_or_else(|e| panic!("{ctx}: open feed: {e}"))
    else {
        assert_eq!(acked, 0, "{ctx}: feed missing");
        return 0;
    };
    let length = feed.length();
    assert!(length >= acked, "{ctx}: reopened with length {length}");
    if length == 0 {
        return 0;
    }
    let blocks = feed
        .get_range(0, length)
        .unwrap_or_else(|e| panic!("{ctx}: read blocks: {e}"));
    for (i, data) in blocks.iter().enumerate() {
        assert!(
            *data == block(i as u64),
            "{ctx}: block {i} has the wrong bytes"
        );
    }
    // A fresh replica takes the whole feed only if every block hashes into the tree
    // that the writer's signature covers.
    let proof = feed
        .proof(0, length, 0, length)
        .unwrap_or_else(|e| panic!("{ctx}: proof: {e}"));
    let replica_storage = MemoryStorage::new();
    let mut replica = Feed::create_replica(&replica_storage, key).unwrap();
    replica
        .ingest(&proof, blocks)
        .unwrap_or_else(|e| panic!("{ctx}: blocks do not verify: {e}"));
    assert_eq!(replica.length(), length, "{ctx}");
    assert_eq!(replica.head(), feed.head(), "{ctx}");
    length
}

#[test]
fn killed_writer_keeps_every_acknowledged_block() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let seed = std::env::var("REPLIC8_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let mut rng = XorShift(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked = 0u64;
    let mut acks_seen = 0usize;
    for kill in 0..KILLS {
        let delay = Duration::from_micros(rng.next() % 20_000);
        let wait_for_ack = kill % 2 == 0;
        if let Some(n) = run_child_and_kill(dir.path(), wait_for_ack, delay) {
            assert!(
                n >= acked,
                "seed {seed}: acknowledged length went back to {n}"
            );
            acked = n;
            acks_seen += 1;
        }
        check_feed(dir.path(), acked, seed, kill);
    }
    // The test means something only if the child got to append between kills.
    eprintln!("seed {seed}: {KILLS} kills, {acks_seen} runs acknowledged, final length {acked}");
    // The child's small checkpoints ran too, so kills could land inside them.
    let hex: String = FeedSecret::from_bytes(&SECRET)
        .key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let state = dir
        .path()
        .join("feeds")
        .join(&hex[..2])
        .join(&hex)
        .join("state");
    assert!(state.exists(), "seed {seed}: no checkpoint was written");
    assert!(
        acks_seen >= KILLS / 2 && acked >= 20,
        "seed {seed}: only {acks_seen} runs acknowledged anything, final length {acked}"
    );
}
