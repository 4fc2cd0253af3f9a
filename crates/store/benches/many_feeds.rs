//! Many small feeds on one `DiskStorage`: what each costs to create, to keep on disk and
//! to reopen. Not a criterion benchmark: it prints one line per phase.
//!
//! `create`: for each of N feeds, `Storage::create`, one `write` of what a replica's first
//! block writes (one 1 KiB block, its leaf node, a head), then with `sync` a `sync` (the
//! writer: `Feed::append` is durable on return) or with `nosync` none (a replica:
//! `Feed::ingest` leaves syncing to `Feed::flush`), drop. Then the files and directories
//! under the root, the bytes they take on disk, and the process's peak RSS.
//! `reopen` (a fresh process, so its RSS is its own): `DiskStorage::open` and `list`
//! (what a daemon does before it is ready), one scan of every feed's stored head and
//! blocks (`Storage::scan_feeds`, what a feed store's start does to fill its index), one
//! feed opened and its block read, then every feed opened and its head read.
//!
//! Layouts: `shared` (the default config: small feeds in the shared database) and
//! `per-feed` (`DiskConfig::small_feed_bytes` 0: a directory and file set per feed, the
//! layout of decision 100).
//!
//! Run: `cargo bench -p replic8-store --bench many_feeds -- <shared|per-feed> <feeds>
//! [sync|nosync]`
//! (the directory is made under `BENCH_DIR`, default the system temp dir, and removed).

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use replic8_store::storage::{
    DiskConfig, DiskStorage, FeedStorage, Storage, StoredHead, StoredNode, WriteBatch,
};

fn bench_dir() -> PathBuf {
    std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn config(layout: &str) -> DiskConfig {
    match layout {
        "shared" => DiskConfig::default(),
        "per-feed" => DiskConfig {
            small_feed_bytes: 0,
            ..DiskConfig::default()
        },
        other => panic!("layout {other:?}: expected shared or per-feed"),
    }
}

fn key(i: u64) -> [u8; 32] {
    let mut k = [0x5c; 32];
    // Spread the keys as public keys are spread (the fan directories, the B-tree).
    k[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    k[8..16].copy_from_slice(&i.to_le_bytes());
    k
}

fn first_block(i: u64) -> WriteBatch {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&i.to_le_bytes());
    WriteBatch {
        blocks: vec![(0, vec![(i % 251) as u8; 1024])],
        nodes: vec![StoredNode {
            index: 0,
            hash,
            size: 1024,
        }],
        head: Some(StoredHead {
            length: 1,
            tree_hash: hash,
            signature: [7; 64],
        }),
    }
}

/// Peak and current resident set of this process, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU seconds (user + system) this process has used.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): utime is the 12th,
    // stime the 13th, in clock ticks of 1/100 s.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

/// Files, directories and bytes allocated on disk under `dir`.
fn disk_use(dir: &Path) -> (u64, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut files, mut dirs, mut bytes) = (0, 0, 0);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            bytes += meta.blocks() * 512;
            if meta.is_dir() {
                dirs += 1;
                todo.push(entry.path());
            } else {
                files += 1;
            }
        }
    }
    (files, dirs, bytes)
}

fn create(layout: &str, n: u64, sync: bool) {
    let tmp = tempfile::tempdir_in(bench_dir()).unwrap();
    let started = Instant::now();
    {
        let storage = DiskStorage::open_with(tmp.path(), config(layout)).unwrap();
        for i in 0..n {
            let mut feed = storage.create(key(i), Some([1; 32])).unwrap();
            feed.write(first_block(i)).unwrap();
            if sync {
                feed.sync().unwrap();
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs();
    let (hwm, rss) = rss_mib();
    let (files, dirs, bytes) = disk_use(tmp.path());
    let mode = if sync { "sync" } else { "nosync" };
    println!(
        "{layout} create {n} feeds, {mode}: {secs:.2} s ({:.1} us/feed, {cpu:.2} CPU-s), peak RSS {hwm:.0} MiB \
         (now {rss:.0}), {files} files + {dirs} dirs ({:.2} per feed), {:.1} MiB on disk \
         ({:.1} KiB per feed)",
        secs * 1e6 / n as f64,
        (files + dirs) as f64 / n as f64,
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / 1024.0 / n as f64,
    );
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--reopen", layout, &n.to_string()])
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(status.success(), "reopen: {status}");
}

fn reopen(layout: &str, n: u64, dir: &Path) {
    let started = Instant::now();
    let storage = DiskStorage::open_with(dir, config(layout)).unwrap();
    let keys = storage.list().unwrap();
    let ready = started.elapsed().as_secs_f64();
    assert_eq!(keys.len() as u64, n);
    let (ready_hwm, _) = rss_mib();
    let started = Instant::now();
    let (mut scanned, mut blocks) = (0u64, 0u64);
    storage
        .scan_feeds(&mut |feed| {
            scanned += 1;
            blocks += feed.stored;
        })
        .unwrap();
    let scan = started.elapsed().as_secs_f64();
    if layout == "shared" {
        assert_eq!((scanned, blocks), (n, n));
    }
    let started = Instant::now();
    let mut one = storage.open(&key(n / 2)).unwrap().unwrap();
    assert_eq!(one.block(0).unwrap().map(|b| b.len()), Some(1024));
    let one_us = started.elapsed().as_secs_f64() * 1e6;
    drop(one);
    let started = Instant::now();
    for k in &keys {
        let feed = storage.open(k).unwrap().unwrap();
        assert_eq!(feed.head().map(|h| h.length), Some(1));
    }
    let all = started.elapsed().as_secs_f64();
    let (hwm, _) = rss_mib();
    println!(
        "{layout} reopen {n} feeds: open + list {ready:.3} s (peak RSS {ready_hwm:.0} MiB), \
         scan {scan:.3} s ({scanned} feeds), one feed opened and read {one_us:.0} us, every feed opened in turn {all:.2} s \
         ({:.1} us/feed, peak RSS {hwm:.0} MiB)",
        all * 1e6 / n as f64
    );
}

fn main() {
    // `cargo bench` passes `--bench`; take the words that are not flags cargo adds.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.as_slice() {
        [flag, layout, n, dir] if flag == "--reopen" => {
            reopen(layout, n.parse().unwrap(), Path::new(dir))
        }
        [layout, n] => create(layout, n.parse().unwrap(), true),
        [layout, n, mode] => create(layout, n.parse().unwrap(), mode == "sync"),
        _ => {
            for n in [1_000, 10_000] {
                create("per-feed", n, false);
                create("shared", n, false);
            }
        }
    }
}
