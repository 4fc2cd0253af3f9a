//! Helpers shared by the store's integration tests: a small seeded generator and the
//! parent side of the crash tests (run the child test, kill it, check the feed it left).

#![allow(dead_code)] // each test binary uses a part of this module
#![allow(clippy::unwrap_used)] // test helpers outside `#[test]` functions unwrap too

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use replic8_store::storage::{DiskConfig, DiskFeed, DiskStorage, MemoryStorage};
use replic8_store::{Feed, FeedSecret};

/// The directory of the feed with public key `key` in the disk storage at `root`.
pub(crate) fn feed_dir(root: &Path, key: &[u8; 32]) -> PathBuf {
    let h: String = key.iter().map(|b| format!("{b:02x}")).collect();
    root.join("feeds").join(&h[..2]).join(h)
}

/// Tiny deterministic generator (xorshift64).
#[derive(Debug)]
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    /// The next number.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The seed of a randomized run: `REPLIC8_CRASH_SEED` if set (to reproduce a failure),
/// else taken from the clock.
pub(crate) fn seed() -> u64 {
    std::env::var("REPLIC8_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        })
}

/// A crash test's child: the test binary re-executed, running only the test named
/// `test`, which appends to the feed of `secret` in the directory named by the
/// environment variable `env` and prints `ack <length>` after each durable point.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CrashChild {
    /// The child test's full name, module path included (run with `--exact`).
    pub(crate) test: &'static str,
    /// The environment variable that makes the child test run, naming the directory.
    pub(crate) env: &'static str,
    /// The feed's secret key.
    pub(crate) secret: [u8; 32],
    /// The bytes the child appends as block `index`.
    pub(crate) block: fn(u64) -> Vec<u8>,
}

/// What a series of kills saw.
#[derive(Debug)]
pub(crate) struct Kills {
    /// The run's seed (print it: `REPLIC8_CRASH_SEED` reproduces the run).
    pub(crate) seed: u64,
    /// How many runs of the child acknowledged anything.
    pub(crate) acks_seen: usize,
    /// The largest length acknowledged.
    pub(crate) acked: u64,
    /// The feed's length when reopened after the last kill.
    pub(crate) reopened: u64,
}

impl CrashChild {
    /// In the child: the feed in `dir`, opened with `config`, or created.
    pub(crate) fn open_feed(&self, dir: &Path, config: DiskConfig) -> Feed<DiskFeed> {
        let storage = DiskStorage::open_with(dir, config).unwrap();
        let secret = FeedSecret::from_bytes(&self.secret);
        match Feed::open(&storage, &secret.key()).unwrap() {
            Some(feed) => feed,
            None => Feed::create(&storage, secret).unwrap(),
        }
    }

    /// In the child: tell the parent that `length` blocks are durable.
    pub(crate) fn ack(&self, out: &mut impl Write, length: u64) {
        // One write per line: a kill leaves either the whole line or none of it.
        out.write_all(format!("ack {length}\n").as_bytes()).unwrap();
        out.flush().unwrap();
    }

    /// Run the child and kill it `kills` times in `dir`, each after a random delay below
    /// `max_delay` (counted from its first acknowledgement where `wait_for_ack(kill)`);
    /// after each kill, check that the acknowledged length never went back and that the
    /// reopened feed holds it ([`CrashChild::check_feed`]), then `check` the reopened
    /// length (given with the context to name in a failure).
    pub(crate) fn kill_repeatedly(
        &self,
        dir: &Path,
        kills: usize,
        max_delay: Duration,
        wait_for_ack: impl Fn(usize) -> bool,
        mut check: impl FnMut(u64, &str),
    ) -> Kills {
        let seed = seed();
        let mut rng = XorShift(seed);
        let mut run = Kills {
            seed,
            acks_seen: 0,
            acked: 0,
            reopened: 0,
        };
        let max_us = max_delay.as_micros() as u64;
        for kill in 0..kills {
            let delay = Duration::from_micros(rng.next() % max_us.max(1));
            if let Some(n) = self.run_and_kill(dir, wait_for_ack(kill), delay) {
                assert!(
                    n >= run.acked,
                    "seed {seed}: acknowledged length went back to {n}"
                );
                run.acked = n;
                run.acks_seen += 1;
            }
            let ctx = format!(
                "seed {seed}, after kill {kill}, acknowledged length {}",
                run.acked
            );
            run.reopened = self.check_feed(dir, run.acked, &ctx);
            check(run.reopened, &ctx);
        }
        eprintln!(
            "seed {seed}: {kills} kills, {} runs acknowledged, final length {}",
            run.acks_seen, run.reopened
        );
        run
    }

    /// Whether this process is the child (the parent's test then returns at once).
    pub(crate) fn is_child(&self) -> bool {
        std::env::var_os(self.env).is_some()
    }

    /// Run the child, kill it after `delay` (counted from its first acknowledgement if
    /// `wait_for_ack`), and return the largest length it acknowledged.
    pub(crate) fn run_and_kill(
        &self,
        dir: &Path,
        wait_for_ack: bool,
        delay: Duration,
    ) -> Option<u64> {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([self.test, "--exact", "--nocapture", "--test-threads=1"])
            .env(self.env, dir)
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
        // Kills that wait for a first acknowledgement let the feed keep growing; the
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

    /// Reopen the feed and check every acknowledged block: there, with the bytes the
    /// child wrote, and verified up to the signed head. Returns the reopened length.
    pub(crate) fn check_feed(&self, dir: &Path, acked: u64, ctx: &str) -> u64 {
        let storage = DiskStorage::open(dir).unwrap_or_else(|e| panic!("{ctx}: open storage: {e}"));
        let key = FeedSecret::from_bytes(&self.secret).key();
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
                *data == (self.block)(i as u64),
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
}
