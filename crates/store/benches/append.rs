//! Append throughput to disk, at the storage level and at the feed level (hashing and
//! signing included), for 64 KiB and 1 KiB blocks. Each number says its durability:
//!
//! - `sync_each`: every append is synced before the next (each block durable on return);
//! - `batch_N`: N blocks per batch, one sync per batch (durable per batch);
//! - `deferred_B_xK`: K batches of B blocks through `Feed::append_batch_deferred` (each
//!   returns after its write, its sync started in the background), then `Feed::flush`:
//!   durable per flush, i.e. per K × B blocks, with hashing overlapping the syncs;
//! - `owned_N`: `Feed::append_batch_owned` of N blocks (durable on return, no copy of the
//!   blocks; only the append calls are timed, not the making of their blocks);
//! - `nosync`: writes only, one sync at the end of the sample (page-cache speed; what a
//!   downloading replica sees, since `Feed::ingest` leaves syncing to `Feed::flush`).
//!
//! `feed_mem` appends to a feed in memory: the CPU cost of hashing and signing alone.
//! Each sample writes to a fresh directory (under `BENCH_DIR`, default the system temp
//! dir), removed after it, so disk use stays bounded.
//!
//! `open/replay` times opening a feed whose whole log must be replayed (no checkpoint).
//!
//! Run: `cargo bench -p replic8-store --bench append`

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use replic8_store::storage::{
    DiskConfig, DiskStorage, FeedStorage, MemoryStorage, Storage, StoredHead, StoredNode,
    WriteBatch,
};
use replic8_store::{Feed, FeedSecret};

/// The storage under test: every feed in its own directory, the bulk layout (a feed
/// starting in the shared database of small feeds moves there at its first append over
/// 64 KiB, paying the directory syncs then instead of at the `flush` before the timing).
fn open_storage(dir: &std::path::Path) -> DiskStorage {
    let config = DiskConfig {
        small_feed_bytes: 0,
        ..DiskConfig::default()
    };
    DiskStorage::open_with(dir, config).unwrap()
}

fn bench_dir() -> PathBuf {
    std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn blocks(size: usize, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            (0..size)
                .map(|j| {
                    (j as u64)
                        .wrapping_mul(2_654_435_761)
                        .wrapping_add(i as u64) as u8
                })
                .collect()
        })
        .collect()
}

/// The batch storage gets for blocks `[start, start + n)`: the blocks, two nodes each
/// (a leaf and a parent, as an append writes on average), and a head.
fn batch(start: u64, data: &[Vec<u8>]) -> WriteBatch {
    let n = data.len() as u64;
    WriteBatch {
        blocks: (start..start + n).zip(data.iter().cloned()).collect(),
        nodes: (start..start + n)
            .flat_map(|i| {
                [2 * i, 2 * i + 1].map(|index| StoredNode {
                    index,
                    hash: [index as u8; 32],
                    size: 1,
                })
            })
            .collect(),
        head: Some(StoredHead {
            length: start + n,
            tree_hash: [1; 32],
            signature: [2; 64],
        }),
    }
}

#[derive(Clone, Copy)]
enum Policy {
    SyncEach,
    Batch(usize),
    Deferred(usize, usize),
    Owned(usize),
    NoSync,
}

impl Policy {
    fn name(self) -> String {
        match self {
            Policy::SyncEach => "sync_each".into(),
            Policy::Batch(n) => format!("batch_{n}"),
            Policy::Deferred(b, k) => format!("deferred_{b}_x{k}"),
            Policy::Owned(n) => format!("owned_{n}"),
            Policy::NoSync => "nosync".into(),
        }
    }

    fn per_iter(self) -> usize {
        match self {
            Policy::Batch(n) | Policy::Owned(n) => n,
            Policy::Deferred(b, k) => b * k,
            Policy::SyncEach | Policy::NoSync => 1,
        }
    }
}

fn storage_level(c: &mut Criterion) {
    let mut g = c.benchmark_group("append/storage");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (size, policies) in [
        (
            64 << 10,
            &[
                Policy::SyncEach,
                Policy::Batch(16),
                Policy::Batch(64),
                Policy::Batch(256),
                Policy::NoSync,
            ][..],
        ),
        (
            1 << 10,
            &[Policy::SyncEach, Policy::Batch(256), Policy::NoSync][..],
        ),
    ] {
        for &policy in policies {
            let data = blocks(size, policy.per_iter());
            g.throughput(Throughput::Bytes((size * policy.per_iter()) as u64));
            let id = BenchmarkId::new(format!("{}KiB", size >> 10), policy.name());
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
                    let storage = open_storage(dir.path());
                    let mut feed = storage.create([1; 32], Some([2; 32])).unwrap();
                    feed.sync().unwrap();
                    let start = Instant::now();
                    let mut at = 0;
                    for _ in 0..iters {
                        feed.write(batch(at, &data)).unwrap();
                        at += data.len() as u64;
                        if !matches!(policy, Policy::NoSync) {
                            feed.sync().unwrap();
                        }
                    }
                    let took = start.elapsed();
                    // `nosync` is timed without its final sync: page-cache speed.
                    feed.sync().unwrap();
                    if matches!(policy, Policy::NoSync) {
                        took
                    } else {
                        start.elapsed()
                    }
                });
            });
        }
    }
    g.finish();
}

fn feed_level(c: &mut Criterion) {
    let mut g = c.benchmark_group("append/feed");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (size, policies) in [
        (
            64 << 10,
            &[
                Policy::SyncEach,
                Policy::Batch(16),
                Policy::Batch(64),
                Policy::Owned(64),
                Policy::Deferred(16, 4),
                Policy::Batch(256),
                Policy::Deferred(16, 16),
            ][..],
        ),
        (1 << 10, &[Policy::SyncEach, Policy::Batch(256)][..]),
    ] {
        for &policy in policies {
            let data = blocks(size, policy.per_iter());
            g.throughput(Throughput::Bytes((size * policy.per_iter()) as u64));
            let id = BenchmarkId::new(format!("{}KiB", size >> 10), policy.name());
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
                    let storage = open_storage(dir.path());
                    let mut feed = Feed::create(&storage, FeedSecret::generate()).unwrap();
                    feed.flush().unwrap();
                    if let Policy::Owned(_) = policy {
                        let mut took = Duration::ZERO;
                        for _ in 0..iters {
                            let owned = data.clone();
                            let start = Instant::now();
                            feed.append_batch_owned(owned).unwrap();
                            took += start.elapsed();
                        }
                        return took;
                    }
                    let start = Instant::now();
                    for _ in 0..iters {
                        if let Policy::Deferred(b, _) = policy {
                            for part in data.chunks(b) {
                                feed.append_batch_deferred(part).unwrap();
                            }
                            feed.flush().unwrap();
                        } else {
                            feed.append_batch(&data).unwrap();
                        }
                    }
                    start.elapsed()
                });
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("append/feed_mem");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (size, n) in [
        (64 << 10, 1),
        (64 << 10, 16),
        (64 << 10, 64),
        (1 << 10, 1),
        (1 << 10, 256),
    ] {
        let data = blocks(size, n);
        g.throughput(Throughput::Bytes((size * n) as u64));
        let id = BenchmarkId::new(format!("{}KiB", size >> 10), format!("batch_{n}"));
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                // A fresh feed every 64 MiB keeps memory bounded; not timed.
                let mut feed = Feed::create(&MemoryStorage::new(), FeedSecret::generate()).unwrap();
                let mut took = Duration::ZERO;
                let mut bytes = 0;
                for _ in 0..iters {
                    if bytes > 64 << 20 {
                        feed = Feed::create(&MemoryStorage::new(), FeedSecret::generate()).unwrap();
                        bytes = 0;
                    }
                    let start = Instant::now();
                    feed.append_batch(&data).unwrap();
                    took += start.elapsed();
                    bytes += size * n;
                }
                took
            });
        });
    }
    g.finish();
}

/// Opening a feed replays the log written since its last checkpoint: the worst case is
/// just under the checkpoint thresholds (page cache warm, as after a process crash).
fn open_replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("open/replay");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    // 60 MiB of 64 KiB blocks; 40,000 records of 1 KiB (120,000 entries).
    for (size, n) in [(64 << 10, 960), (1 << 10, 40_000)] {
        let dir = tempfile::tempdir_in(bench_dir()).unwrap();
        {
            let storage = open_storage(dir.path());
            let mut feed = storage.create([1; 32], None).unwrap();
            let data = blocks(size, 1);
            for i in 0..n {
                feed.write(batch(i, &data)).unwrap();
            }
            // No sync: a sync past 65,536 entries would checkpoint.
            assert!(!dir.path().join("feeds/01").read_dir().unwrap().any(|e| e
                .unwrap()
                .path()
                .join("state")
                .exists()));
        }
        g.throughput(Throughput::Elements(n));
        let id = BenchmarkId::new(format!("{}KiB", size >> 10), format!("{n}_records"));
        g.bench_function(id, |b| {
            b.iter(|| {
                let storage = open_storage(dir.path());
                let feed = storage.open(&[1; 32]).unwrap().unwrap();
                assert!(feed.has_block(n - 1));
            });
        });
    }
    g.finish();
}

criterion_group!(benches, storage_level, feed_level, open_replay);
criterion_main!(benches);
