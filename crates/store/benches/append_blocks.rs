//! The node's `replic8 bench append` at the store level, without criterion: one fresh
//! feed on disk per path and block size, the blocks made before the clock starts, the
//! clock over the appends and the last sync (every byte counted is durable). Prints one
//! line per row. For profiling (`perf record`) and quick before/after checks; the
//! user-facing numbers come from `replic8 bench append`. `cpu` is the process's CPU time
//! (user + system, every thread) while the clock ran.
//!
//! Run: `BENCH_DIR=/work cargo bench -p replic8-store --bench append_blocks [-- MiB [block sizes...]]`

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Instant;

use replic8_store::storage::{DiskConfig, DiskStorage};
use replic8_store::{Feed, FeedSecret};

fn bench_dir() -> PathBuf {
    std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// CPU time (user and system, all threads) this process has used, from `/proc/self/stat`
/// (in clock ticks of 10 ms); `None` where `/proc` does not tell.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn blocks(size: usize, count: usize, per_batch: usize) -> Vec<Vec<Vec<u8>>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::new();
    let mut batch = Vec::with_capacity(per_batch);
    for _ in 0..count {
        let block: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        batch.push(block);
        if batch.len() == per_batch {
            out.push(std::mem::replace(&mut batch, Vec::with_capacity(per_batch)));
        }
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let mib: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(256);
    let sizes: Vec<usize> = if args.len() > 1 {
        args[1..].iter().filter_map(|a| a.parse().ok()).collect()
    } else {
        vec![64 << 10, 1 << 10]
    };
    let paths: Vec<String> = std::env::var("APPEND_PATHS")
        .unwrap_or_else(|_| "deferred,owned".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    for size in sizes {
        for path in &paths {
            let count = (mib << 20) / size;
            let batch_bytes = if path == "owned" { 4 << 20 } else { 1 << 20 };
            let per_batch = (batch_bytes / size).max(1);
            let per_flush = ((16 << 20) / size).max(1);
            let batches = blocks(size, count, per_batch);
            let dir = tempfile::tempdir_in(bench_dir()).unwrap();
            let mut config = DiskConfig::default();
            if let Some(n) = std::env::var("CHECKPOINT_ENTRIES")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                config.checkpoint_entries = n;
            }
            let storage = DiskStorage::open_with(dir.path(), config).unwrap();
            let mut feed = Feed::create(&storage, FeedSecret::generate()).unwrap();
            let cpu_before = cpu_seconds();
            let start = Instant::now();
            if path == "owned" {
                for b in batches {
                    feed.append_batch_owned(b).unwrap();
                }
            } else {
                let mut since = 0;
                for b in &batches {
                    feed.append_batch_deferred(b).unwrap();
                    since += b.len();
                    if since >= per_flush {
                        feed.flush().unwrap();
                        since = 0;
                    }
                }
                feed.flush().unwrap();
            }
            let s = start.elapsed().as_secs_f64();
            let cpu = cpu_seconds()
                .zip(cpu_before)
                .map_or(f64::NAN, |(a, b)| a - b);
            assert_eq!(feed.length(), count as u64);
            println!(
                "{path:>8} {:>3} KiB: {:7.1} MB/s {:9.0} blocks/s ({s:.3} s, cpu {cpu:.2} s, {:.2} us/block)",
                size >> 10,
                (mib << 20) as f64 / s / 1e6,
                count as f64 / s,
                cpu * 1e6 / count as f64
            );
        }
    }
}
