//! Crash safety of bulk appends on `DiskStorage`: the paths `replic8 bench append` takes.
//!
//! Like `crash.rs` (the test binary re-executes itself as the child, selected by name,
//! active only when `REPLIC8_CRASH_BULK_CHILD` names a directory), but the child appends
//! 1 KiB blocks in `Feed::append_batch_deferred` batches of 128 KiB, so every batch's
//! blocks are written on a helper thread while the batch is hashed, flushes every fourth
//! batch and acknowledges the length after each flush. Its checkpoints are tiny, so one
//! runs on its helper thread nearly all the time and kills land inside them. After each
//! kill the parent reopens the feed and checks that every acknowledged block is there,
//! with its bytes, and verifies up to the signed head.
//!
//! Reproduce a run: `REPLIC8_CRASH_SEED=<seed printed on failure> cargo test -p
//! replic8-store --test crash_bulk`.

#![allow(clippy::unwrap_used)] // test helpers outside `#[test]` functions unwrap too

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use replic8_store::storage::{DiskConfig, DiskStorage, MemoryStorage};
use replic8_store::{Feed, FeedSecret};

const CHILD_ENV: &str = "REPLIC8_CRASH_BULK_CHILD";
const SECRET: [u8; 32] = [0x24; 32];
const KILLS: usize = 16;
/// Blocks per batch: 128 KiB, over the storage's 64 KiB for overlapped writes.
const PER_BATCH: u64 = 128;

/// Block `index`: 1 KiB naming its index.
fn block(index: u64) -> Vec<u8> {
    let mut data = vec![(index % 251) as u8; 1024];
    data[..8].copy_from_slice(&index.to_le_bytes());
    data
}

/// The child: append forever, acknowledging each flushed length on stdout.
#[test]
fn crash_bulk_child_process() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return; // Only the crash test runs this as a child.
    };
    let config = DiskConfig {
        checkpoint_bytes: 512 << 10,
        checkpoint_entries: 1024,
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
        for _ in 0..4 {
            let start = feed.length();
            let blocks: Vec<Vec<u8>> = (start..start + PER_BATCH).map(block).collect();
            feed.append_batch_deferred(&blocks).unwrap();
        }
        feed.flush().unwrap();
        // One write per line: a kill leaves either the whole line or none of it.
        out.write_all(format!("ack {}\n", feed.length()).as_bytes())
            .unwrap();
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

/// Run the child, kill it `delay` after its first acknowledgement (or after it starts,
/// without `wait_for_ack`), and return the largest length it acknowledged.
fn run_child_and_kill(dir: &Path, wait_for_ack: bool, delay: Duration) -> Option<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_bulk_child_process",
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
                acked = Some(n.parse::<u64>().expect("ack line"));
                let _ = tx.send(());
            }
        }
        acked
    });
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
fn check_feed(dir: &Path, acked: u64, ctx: &str) -> u64 {
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
    assert_eq!(length % PER_BATCH, 0, "{ctx}: a batch was torn");
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
    assert_eq!(replica.head(), feed.head(), "{ctx}");
    length
}

#[test]
fn killed_bulk_writer_keeps_every_flushed_batch() {
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
    let mut reopened = 0u64;
    for kill in 0..KILLS {
        let delay = Duration::from_micros(rng.next() % 15_000);
        let wait_for_ack = kill % 4 != 3;
        if let Some(n) = run_child_and_kill(dir.path(), wait_for_ack, delay) {
            assert!(
                n >= acked,
                "seed {seed}: acknowledged length went back to {n}"
            );
            acked = n;
            acks_seen += 1;
        }
        let ctx = format!("seed {seed}, after kill {kill}, acknowledged length {acked}");
        reopened = check_feed(dir.path(), acked, &ctx);
    }
    eprintln!("seed {seed}: {KILLS} kills, {acks_seen} runs acknowledged, final length {reopened}");
    // The test means something only if the child appended between kills, past many
    // checkpoints (one per 1,024 entries, ~340 blocks).
    assert!(
        acks_seen >= KILLS / 2 && reopened >= 20 * PER_BATCH,
        "seed {seed}: only {acks_seen} runs acknowledged anything, final length {reopened}"
    );
}
