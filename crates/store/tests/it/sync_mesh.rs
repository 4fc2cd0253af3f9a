//! Several feeds of one key syncing with each other at once under virtual time: a writer
//! appending live and replicas that fetch from the writer and from each other, with
//! reordered delivery. The owner's duty (tell every peer's core when the feed changed)
//! is done by the harness, as a store actor would.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replic8_store::storage::{MemoryFeed, MemoryStorage};
use replic8_store::{encode, Feed, FeedSecret, FeedSync, SyncConfig, SyncError, Want};

/// A message in flight: deliver at, sequence number, from, to, bytes.
type Queued = (Instant, u64, usize, usize, Vec<u8>);

struct Mesh {
    feeds: Vec<Feed<MemoryFeed>>,
    /// The core that `node` runs for `peer`, keyed `(node, peer)`.
    syncs: HashMap<(usize, usize), FeedSync>,
    queue: Vec<Queued>,
    now: Instant,
    rng: StdRng,
    seq: u64,
    jitter_ms: u64,
}

impl Mesh {
    fn connect(&mut self, a: usize, b: usize, config: &SyncConfig) {
        for (node, peer) in [(a, b), (b, a)] {
            let mut sync = FeedSync::new(config.clone());
            sync.handle_start(&mut self.feeds[node], self.now);
            self.syncs.insert((node, peer), sync);
        }
    }

    fn flush_out(&mut self) {
        let mut keys: Vec<(usize, usize)> = self.syncs.keys().copied().collect();
        keys.sort_unstable();
        for (node, peer) in keys {
            let sync = self.syncs.get_mut(&(node, peer)).expect("sync");
            while let Some(m) = sync.poll_transmit(&mut self.feeds[node]).expect("poll") {
                let delay = 2 + self.rng.gen_range(0..=self.jitter_ms);
                self.seq += 1;
                let bytes = encode(&m).expect("encode");
                self.queue.push((
                    self.now + Duration::from_millis(delay),
                    self.seq,
                    node,
                    peer,
                    bytes,
                ));
            }
            while sync.poll_event().is_some() {}
        }
    }

    /// Tell every core of `node` that its feed changed.
    fn feed_changed(&mut self, node: usize) {
        for ((n, _), sync) in self.syncs.iter_mut() {
            if *n == node {
                sync.handle_feed_update(&mut self.feeds[node], self.now);
            }
        }
    }

    /// Delivers one message; `Ok(false)` when nothing is in flight.
    fn step(&mut self) -> Result<bool, (usize, usize, SyncError)> {
        self.flush_out();
        let Some(pos) = (0..self.queue.len()).min_by_key(|&i| (self.queue[i].0, self.queue[i].1))
        else {
            return Ok(false);
        };
        let (at, _, from, to, bytes) = self.queue.swap_remove(pos);
        self.now = self.now.max(at);
        let before = (self.feeds[to].length(), self.feeds[to].stored_count());
        let sync = self.syncs.get_mut(&(to, from)).expect("sync");
        sync.handle_bytes(&mut self.feeds[to], &bytes, self.now)
            .map_err(|e| (to, from, e))?;
        if (self.feeds[to].length(), self.feeds[to].stored_count()) != before {
            self.feed_changed(to);
        }
        Ok(true)
    }

    fn run_until(&mut self, done: impl Fn(&Mesh) -> bool) {
        for _ in 0..2_000_000 {
            if done(self) {
                return;
            }
            match self.step() {
                Ok(true) => {}
                Ok(false) => {
                    assert!(done(self), "stalled: {:?}", self.state());
                    return;
                }
                Err((to, from, e)) => panic!("node {to} (from {from}): {e}"),
            }
        }
        panic!("no progress: {:?}", self.state());
    }

    fn new(feeds: Vec<Feed<MemoryFeed>>, seed: u64, jitter_ms: u64) -> Mesh {
        Mesh {
            feeds,
            syncs: HashMap::new(),
            queue: Vec::new(),
            now: Instant::now(),
            rng: StdRng::seed_from_u64(seed),
            seq: 0,
            jitter_ms,
        }
    }

    fn state(&self) -> Vec<(u64, u64)> {
        self.feeds
            .iter()
            .map(|f| (f.length(), f.contiguous_length()))
            .collect()
    }
}

fn block(i: u64) -> Vec<u8> {
    let mut b = i.to_le_bytes().to_vec();
    b.resize(8 + (i % 17) as usize * 5, (i % 253) as u8);
    b
}

#[test]
fn replicas_fetch_from_writer_and_each_other_while_it_appends() {
    for seed in 0..6u64 {
        let secret = FeedSecret::from_bytes(&[8; 32]);
        let mut writer = Feed::create(&MemoryStorage::new(), secret).expect("create");
        let first: Vec<Vec<u8>> = (0..300).map(block).collect();
        writer.append_batch(&first).expect("append");
        let key = *writer.key();
        let mut feeds = vec![writer];
        for _ in 0..3 {
            feeds.push(Feed::create_replica(&MemoryStorage::new(), key).expect("replica"));
        }
        let mut mesh = Mesh {
            feeds,
            syncs: HashMap::new(),
            queue: Vec::new(),
            now: Instant::now(),
            rng: StdRng::seed_from_u64(seed),
            seq: 0,
            jitter_ms: 30,
        };
        let config = SyncConfig {
            want: Want::All,
            live: true,
            max_outstanding: 4,
            blocks_per_message: 8,
            ..SyncConfig::default()
        };
        // The writer talks to replica 1 only; replicas 1, 2 and 3 form a triangle.
        mesh.connect(0, 1, &config);
        mesh.connect(1, 2, &config);
        mesh.connect(2, 3, &config);
        mesh.connect(1, 3, &config);
        let mut length = 300u64;
        for round in 0..20u64 {
            // Deliver a few messages, then append while they are in flight.
            for _ in 0..mesh.rng.gen_range(0..40) {
                if !mesh
                    .step()
                    .unwrap_or_else(|(t, f, e)| panic!("{t}<-{f}: {e}"))
                {
                    break;
                }
            }
            let n = 1 + (round * 7) % 23;
            let blocks: Vec<Vec<u8>> = (length..length + n).map(block).collect();
            length = mesh.feeds[0].append_batch(&blocks).expect("append");
            mesh.feed_changed(0);
        }
        mesh.run_until(|m| m.feeds.iter().all(|f| f.contiguous_length() == length));
        for node in 1..4 {
            assert_eq!(
                mesh.feeds[node].head(),
                mesh.feeds[0].head(),
                "seed {seed} node {node}"
            );
            for i in (0..length).step_by(37) {
                let want = mesh.feeds[0].get(i).expect("get");
                assert_eq!(
                    mesh.feeds[node].get(i).expect("get"),
                    want,
                    "seed {seed} node {node} block {i}"
                );
            }
        }
    }
}

/// A replica connected to two full sources downloads each block about once: the feed's
/// download claims make its two cores ask for different blocks.
#[test]
fn two_sources_split_the_work() {
    let secret = FeedSecret::from_bytes(&[8; 32]);
    let mut writer = Feed::create(&MemoryStorage::new(), secret).expect("create");
    let blocks: Vec<Vec<u8>> = (0..2000).map(block).collect();
    writer.append_batch(&blocks).expect("append");
    let key = *writer.key();
    // A second full source, filled through the feed API.
    let mut full = Feed::create_replica(&MemoryStorage::new(), key).expect("replica");
    let upgrade = writer.proof(0, 2000, 0, 0).expect("upgrade");
    full.ingest(&upgrade, vec![]).expect("upgrade");
    for start in (0..2000).step_by(500) {
        let p = writer.proof(2000, 2000, start, start + 500).expect("proof");
        full.ingest(&p, writer.get_range(start, start + 500).expect("read"))
            .expect("ingest");
    }
    for seed in 0..4 {
        let feeds = vec![
            writer_clone(&writer),
            writer_clone(&full),
            Feed::create_replica(&MemoryStorage::new(), key).expect("replica"),
        ];
        let mut mesh = Mesh::new(feeds, seed, 10);
        let config = SyncConfig {
            want: Want::All,
            live: false,
            max_outstanding: 4,
            blocks_per_message: 8,
            ..SyncConfig::default()
        };
        mesh.connect(0, 2, &config);
        mesh.connect(1, 2, &config);
        mesh.run_until(|m| m.feeds[2].contiguous_length() == 2000);
        let from_writer = mesh.syncs[&(2, 0)].stats().blocks_in;
        let from_full = mesh.syncs[&(2, 1)].stats().blocks_in;
        let window = 2 * 4 * 8;
        assert!(
            from_writer + from_full <= 2000 + window,
            "seed {seed}: {from_writer} + {from_full} blocks for 2000"
        );
        assert!(
            from_writer > 500 && from_full > 500,
            "seed {seed}: {from_writer} / {from_full}"
        );
    }
}

/// Another handle on the same stored feed (memory storage handles share state).
fn writer_clone(feed: &Feed<MemoryFeed>) -> Feed<MemoryFeed> {
    Feed::from_storage(*feed.key(), feed.storage().clone()).expect("reopen")
}

/// When one source goes away mid-download (its requests lost), the replica closes that
/// core and finishes from the other source in seconds of virtual time, not after the
/// lost requests' claims expire (`close` releases them; endgame would also cover it).
#[test]
fn losing_a_source_mid_download_still_completes() {
    let secret = FeedSecret::from_bytes(&[8; 32]);
    let mut writer = Feed::create(&MemoryStorage::new(), secret).expect("create");
    let blocks: Vec<Vec<u8>> = (0..1000).map(block).collect();
    writer.append_batch(&blocks).expect("append");
    let key = *writer.key();
    let feeds = vec![
        writer_clone(&writer),
        writer_clone(&writer),
        Feed::create_replica(&MemoryStorage::new(), key).expect("replica"),
    ];
    let mut mesh = Mesh::new(feeds, 1, 10);
    let config = SyncConfig {
        want: Want::All,
        live: false,
        max_outstanding: 8,
        blocks_per_message: 16,
        ..SyncConfig::default()
    };
    mesh.connect(0, 2, &config);
    mesh.connect(1, 2, &config);
    let start = mesh.now;
    while mesh.feeds[2].stored_count() < 300 {
        assert!(mesh.step().expect("step"), "progress");
    }
    // Source 0 disappears: its messages are lost and the replica closes its core.
    mesh.queue
        .retain(|&(_, _, from, to, _)| from != 0 && to != 0);
    let mut gone = mesh.syncs.remove(&(2, 0)).expect("core");
    assert!(gone.outstanding() > 0, "it had requests in flight");
    gone.close(&mut mesh.feeds[2]);
    mesh.syncs.remove(&(0, 2));
    mesh.feed_changed(2);
    mesh.run_until(|m| m.feeds[2].contiguous_length() == 1000);
    assert!(
        mesh.now - start < Duration::from_secs(5),
        "done in {:?}, not after claims expired",
        mesh.now - start
    );
}
