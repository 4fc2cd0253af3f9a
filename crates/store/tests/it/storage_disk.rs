//! `DiskStorage` on real files: torn tails, corruption, checkpoints, many feeds; every
//! feed in its own directory (`DiskConfig::small_feed_bytes` 0), whose files the tests
//! damage. The shared database of small feeds: `storage_small.rs`.

#![allow(clippy::unwrap_used)] // test helpers outside `#[test]` functions unwrap too

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};

use replic8_store::storage::{
    DiskConfig, DiskStorage, FeedStorage, Storage, StorageError, StoredHead, StoredNode, WriteBatch,
};
use util::{feed_dir, XorShift};

use crate::util;

fn block(index: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u64)
                .wrapping_mul(131)
                .wrapping_add(index.wrapping_mul(7)) as u8
        })
        .collect()
}

fn node(index: u64) -> StoredNode {
    let mut hash = [0x5a; 32];
    hash[..8].copy_from_slice(&index.to_le_bytes());
    StoredNode {
        index,
        hash,
        size: index.wrapping_add(1),
    }
}

fn head(length: u64) -> StoredHead {
    StoredHead {
        length,
        tree_hash: [length as u8; 32],
        signature: [length as u8 ^ 0xff; 64],
    }
}

/// What appending block `i` writes: the block, its leaf and one parent, and the head.
fn append(i: u64, len: usize) -> WriteBatch {
    WriteBatch {
        blocks: vec![(i, block(i, len))],
        nodes: vec![node(2 * i), node(2 * i + 1)],
        head: Some(head(i + 1)),
    }
}

/// Check that the feed holds exactly blocks `0..n` as written by `append`.
fn check_prefix(f: &mut impl FeedStorage, n: u64, len: usize) {
    assert_eq!(f.head().map(|h| h.length), (n > 0).then_some(n), "head");
    for i in 0..n {
        assert!(f.has_block(i), "block {i} missing");
        assert_eq!(f.block(i).unwrap(), Some(block(i, len)), "block {i}");
        assert_eq!(f.node(2 * i).unwrap(), Some(node(2 * i)), "node {}", 2 * i);
    }
    assert!(!f.has_block(n), "block {n} should be absent");
    assert_eq!(f.block(n).unwrap(), None);
    assert_eq!(
        f.node(2 * n).unwrap(),
        None,
        "node {} should be absent",
        2 * n
    );
}

/// The storage at `dir` with every new feed in its own directory.
fn open_per_feed(dir: impl AsRef<std::path::Path>) -> Result<DiskStorage, StorageError> {
    DiskStorage::open_with(
        dir,
        DiskConfig {
            small_feed_bytes: 0,
            ..DiskConfig::default()
        },
    )
}

fn small_checkpoints() -> DiskConfig {
    DiskConfig {
        checkpoint_bytes: 1,
        small_feed_bytes: 0,
        ..DiskConfig::default()
    }
}

#[test]
fn torn_tail_is_cut_on_open_at_every_cut_point() {
    let dir = tempfile::tempdir().unwrap();
    let key = [1u8; 32];
    let (good_len, full_len) = {
        let s = open_per_feed(dir.path()).unwrap();
        let mut f = s.create(key, Some([2; 32])).unwrap();
        for i in 0..3 {
            f.write(append(i, 300)).unwrap();
        }
        f.sync().unwrap();
        let log = feed_dir(dir.path(), &key).join("log");
        let good = fs::metadata(&log).unwrap().len();
        f.write(append(3, 300)).unwrap();
        f.sync().unwrap();
        (good, fs::metadata(&log).unwrap().len())
    };
    let log = feed_dir(dir.path(), &key).join("log");
    let full = fs::read(&log).unwrap();
    // Every length strictly between the two records' ends is a torn fourth record.
    for cut in (good_len + 1..full_len).step_by(7).chain([full_len - 1]) {
        fs::write(&log, &full[..cut as usize]).unwrap();
        let s = open_per_feed(dir.path()).unwrap();
        let mut f = s.open(&key).unwrap().unwrap();
        check_prefix(&mut f, 3, 300);
        assert_eq!(fs::metadata(&log).unwrap().len(), good_len, "cut at {cut}");
        // The feed goes on from the cut.
        f.write(append(3, 300)).unwrap();
        f.sync().unwrap();
        drop(f);
        drop(s);
        let s = open_per_feed(dir.path()).unwrap();
        check_prefix(&mut s.open(&key).unwrap().unwrap(), 4, 300);
    }
}

#[test]
fn zeroed_tail_is_cut_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let key = [3u8; 32];
    {
        let s = open_per_feed(dir.path()).unwrap();
        let mut f = s.create(key, None).unwrap();
        f.write(append(0, 10)).unwrap();
        f.sync().unwrap();
    }
    // A power loss can leave the file longer than the data that reached the disk.
    let log = feed_dir(dir.path(), &key).join("log");
    let len = fs::metadata(&log).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len + 4096)
        .unwrap();
    let s = open_per_feed(dir.path()).unwrap();
    check_prefix(&mut s.open(&key).unwrap().unwrap(), 1, 10);
    assert_eq!(fs::metadata(&log).unwrap().len(), len);
}

#[test]
fn damaged_record_before_a_valid_one_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let key = [4u8; 32];
    {
        let s = open_per_feed(dir.path()).unwrap();
        let mut f = s.create(key, None).unwrap();
        for i in 0..3 {
            f.write(append(i, 200)).unwrap();
        }
        f.sync().unwrap();
    }
    let log = feed_dir(dir.path(), &key).join("log");
    let mut bytes = fs::read(&log).unwrap();
    // Flip a payload byte of the first record (header 16, record header 24, head 112,
    // one block entry 16, two nodes 96).
    let at = 16 + 24 + 112 + 16 + 96 + 5;
    bytes[at] ^= 0x40;
    fs::write(&log, &bytes).unwrap();
    let s = open_per_feed(dir.path()).unwrap();
    match s.open(&key) {
        Err(StorageError::Corrupt(what)) => {
            assert!(what.contains("log"), "{what}");
            assert!(what.contains("offset 16:"), "{what}");
        }
        other => panic!("expected a corrupt log, got {other:?}"),
    }
}

#[test]
fn corrupt_checkpointed_block_and_node_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let key = [5u8; 32];
    let s = DiskStorage::open_with(dir.path(), small_checkpoints()).unwrap();
    let mut f = s.create(key, None).unwrap();
    for i in 0..4 {
        f.write(append(i, 100)).unwrap();
    }
    f.sync().unwrap();
    drop(f);
    drop(s);
    let fd = feed_dir(dir.path(), &key);
    assert!(fd.join("state").exists(), "checkpoint written");
    // Block 2's payload: flip one byte in the log, found through the index slot.
    let index = fs::read(fd.join("index")).unwrap();
    let offset = u64::from_le_bytes(index[2 * 24..2 * 24 + 8].try_into().unwrap());
    let log = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fd.join("log"))
        .unwrap();
    let mut b = [0u8; 1];
    log.read_exact_at(&mut b, offset + 3).unwrap();
    log.write_all_at(&[b[0] ^ 1], offset + 3).unwrap();
    // Node 5's slot in the tree file.
    let tree = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fd.join("tree"))
        .unwrap();
    tree.write_all_at(&[0xee], 5 * 48 + 1).unwrap();

    let s = open_per_feed(dir.path()).unwrap();
    let mut f = s.open(&key).unwrap().unwrap();
    assert_eq!(f.block(1).unwrap(), Some(block(1, 100)));
    match f.block(2) {
        Err(StorageError::Corrupt(what)) => {
            assert!(
                what.contains("log") && what.contains(&format!("offset {offset}")),
                "{what}"
            );
        }
        other => panic!("expected a corrupt block, got {other:?}"),
    }
    match f.node(5) {
        Err(StorageError::Corrupt(what)) => {
            assert!(
                what.contains("tree") && what.contains("offset 240"),
                "{what}"
            );
        }
        other => panic!("expected a corrupt node, got {other:?}"),
    }
    assert_eq!(f.node(4).unwrap(), Some(node(4)));
}

#[test]
fn corrupt_meta_state_and_log_header_are_reported() {
    for (file, at) in [("meta", 20u64), ("state", 9), ("log", 2)] {
        let dir = tempfile::tempdir().unwrap();
        let key = [6u8; 32];
        {
            let s = DiskStorage::open_with(dir.path(), small_checkpoints()).unwrap();
            let mut f = s.create(key, None).unwrap();
            f.write(append(0, 10)).unwrap();
            f.sync().unwrap();
        }
        let path = feed_dir(dir.path(), &key).join(file);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
        let s = open_per_feed(dir.path()).unwrap();
        match s.open(&key) {
            Err(StorageError::Corrupt(what)) => assert!(what.contains(file), "{what}"),
            other => panic!("{file}: expected corrupt, got {other:?}"),
        }
    }
}

/// Random damage to any file never panics and never yields a block that differs from
/// what was written: every read is either right or an error.
#[test]
fn random_damage_never_panics_or_returns_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let key = [7u8; 32];
    {
        let s = DiskStorage::open_with(
            dir.path(),
            DiskConfig {
                checkpoint_entries: 12,
                small_feed_bytes: 0,
                ..DiskConfig::default()
            },
        )
        .unwrap();
        let mut f = s.create(key, Some([1; 32])).unwrap();
        for i in 0..10 {
            f.write(append(i, 50 + i as usize)).unwrap();
            f.sync().unwrap();
        }
    }
    let fd = feed_dir(dir.path(), &key);
    let files: Vec<(String, Vec<u8>)> = ["meta", "log", "tree", "index", "state"]
        .iter()
        .map(|n| (n.to_string(), fs::read(fd.join(n)).unwrap()))
        .collect();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..300 {
        let (name, original) = &files[(rng.next() % files.len() as u64) as usize];
        let mut damaged = original.clone();
        match rng.next() % 3 {
            0 => {
                let at = (rng.next() % damaged.len() as u64) as usize;
                damaged[at] ^= 1 << (rng.next() % 8);
            }
            1 => {
                let at = (rng.next() % damaged.len() as u64) as usize;
                let n = (rng.next() % 8 + 1) as usize;
                for b in damaged.iter_mut().skip(at).take(n) {
                    *b = 0xff;
                }
            }
            _ => damaged.truncate((rng.next() % damaged.len() as u64) as usize),
        }
        fs::write(fd.join(name), &damaged).unwrap();
        let s = open_per_feed(dir.path()).unwrap();
        if let Ok(Some(mut f)) = s.open(&key) {
            for i in 0..12 {
                if let Ok(Some(data)) = f.block(i) {
                    assert_eq!(data, block(i, 50 + i as usize), "{name}: block {i}");
                }
                if let Ok(Some(n)) = f.node(2 * i) {
                    assert_eq!(n, node(2 * i), "{name}: node {}", 2 * i);
                }
            }
        }
        drop(s);
        for (n, bytes) in &files {
            fs::write(fd.join(n), bytes).unwrap();
        }
    }
}

#[test]
fn checkpointed_and_replayed_feeds_agree() {
    let dir = tempfile::tempdir().unwrap();
    let config = DiskConfig {
        checkpoint_entries: 7,
        small_feed_bytes: 0,
        ..DiskConfig::default()
    };
    {
        let s = DiskStorage::open_with(dir.path(), config).unwrap();
        let mut f = s.create([8; 32], None).unwrap();
        for i in 0..50 {
            f.write(append(i, 64)).unwrap();
            if i % 3 == 0 {
                f.sync().unwrap();
            }
        }
        f.sync().unwrap();
        check_prefix(&mut f, 50, 64);
    }
    let s = DiskStorage::open_with(dir.path(), config).unwrap();
    let mut f = s.open(&[8; 32]).unwrap().unwrap();
    check_prefix(&mut f, 50, 64);
    f.checkpoint().unwrap();
    drop(f);
    check_prefix(&mut s.open(&[8; 32]).unwrap().unwrap(), 50, 64);
}

#[test]
fn a_directory_is_opened_by_one_storage_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_per_feed(dir.path()).unwrap();
    match open_per_feed(dir.path()) {
        Err(StorageError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
        other => panic!("expected the lock to be held, got {other:?}"),
    }
    drop(s);
    open_per_feed(dir.path()).unwrap();
}

#[test]
fn two_handles_to_one_feed_share_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_per_feed(dir.path()).unwrap();
    let mut a = s.create([9; 32], None).unwrap();
    let mut b = s.open(&[9; 32]).unwrap().unwrap();
    a.write(append(0, 5)).unwrap();
    b.write(append(1, 5)).unwrap();
    a.sync().unwrap();
    check_prefix(&mut b, 2, 5);
    assert!(matches!(s.create([9; 32], None), Err(StorageError::Exists)));
}

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// 10,000 feeds live at once in one storage, with a bounded number of open files.
#[test]
fn ten_thousand_feeds_with_bounded_file_handles() {
    const FEEDS: u32 = 10_000;
    const MAX_OPEN: usize = 64;
    // Creating and removing 10,000 directories on this machine's disk costs ~20 s of
    // metadata journaling, which says nothing about the storage; tmpfs keeps the test to
    // a second or two and still runs every file operation (fsync is the only no-op).
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let config = DiskConfig {
        max_open_files: MAX_OPEN,
        small_feed_bytes: 0,
        ..DiskConfig::default()
    };
    let key = |n: u32| {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&n.to_be_bytes());
        k[31] = 1;
        k
    };
    let fds_before = open_fds();
    {
        let s = DiskStorage::open_with(dir.path(), config).unwrap();
        let mut feeds = Vec::with_capacity(FEEDS as usize);
        for n in 0..FEEDS {
            let mut f = s.create(key(n), None).unwrap();
            f.write(append(0, (n % 97) as usize)).unwrap();
            if n % 1000 == 0 {
                f.sync().unwrap();
            }
            feeds.push(f);
        }
        assert!(s.open_files() <= MAX_OPEN, "{} open", s.open_files());
        // Other tests run in parallel threads and open files too; the margin covers them.
        let fds = open_fds();
        assert!(
            fds <= fds_before + MAX_OPEN + 64,
            "{fds} descriptors open with {FEEDS} feeds live (before: {fds_before})"
        );
        // Every feed still reads back while all are live.
        for (n, f) in feeds.iter_mut().enumerate().step_by(97) {
            assert_eq!(f.block(0).unwrap(), Some(block(0, n % 97)));
        }
    }
    let s = DiskStorage::open_with(dir.path(), config).unwrap();
    let keys = s.list().unwrap();
    assert_eq!(keys.len(), FEEDS as usize);
    let mut live = Vec::new();
    for n in 0..FEEDS {
        let mut f = s.open(&key(n)).unwrap().unwrap();
        assert_eq!(f.head().map(|h| h.length), Some(1));
        assert_eq!(f.block(0).unwrap(), Some(block(0, (n % 97) as usize)));
        live.push(f);
    }
    assert!(s.open_files() <= MAX_OPEN);
}

#[test]
fn meta_with_the_secret_key_is_readable_by_its_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open_per_feed(dir.path()).unwrap();
    let key = [0x33; 32];
    drop(storage.create(key, Some([0x44; 32])).unwrap());
    let meta = feed_dir(dir.path(), &key).join("meta");
    let mode = fs::metadata(&meta).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", meta.display());
}

/// A sparse replica holding blocks far apart costs what it stores, and indices past the
/// storage's range are refused with nothing written.
#[test]
fn sparse_far_blocks_and_the_index_limit() {
    use replic8_store::storage::disk::{MAX_BLOCK_INDEX, MAX_NODE_INDEX};
    let dir = tempfile::tempdir().unwrap();
    let key = [11u8; 32];
    let far = MAX_BLOCK_INDEX - 1;
    {
        let s = DiskStorage::open_with(dir.path(), small_checkpoints()).unwrap();
        let mut f = s.create(key, None).unwrap();
        f.write(WriteBatch {
            blocks: vec![(3, block(3, 10)), (far, block(far, 10))],
            nodes: vec![node(6), node(MAX_NODE_INDEX - 1)],
            head: Some(head(MAX_BLOCK_INDEX)),
        })
        .unwrap();
        f.sync().unwrap();
        for (blocks, nodes) in [
            (vec![(MAX_BLOCK_INDEX, block(0, 1))], vec![]),
            (vec![], vec![node(MAX_NODE_INDEX)]),
            (vec![(u64::MAX, block(0, 1))], vec![node(u64::MAX)]),
        ] {
            let r = f.write(WriteBatch {
                blocks,
                nodes,
                head: Some(head(1)),
            });
            assert!(matches!(r, Err(StorageError::Limit(_))), "{r:?}");
        }
        assert_eq!(
            f.head(),
            Some(head(MAX_BLOCK_INDEX)),
            "refused batches change nothing"
        );
    }
    let fd = feed_dir(dir.path(), &key);
    // Two bitfield pages, not a bitfield of 2^36 bits.
    assert!(fs::metadata(fd.join("state")).unwrap().len() < 2048);
    let s = open_per_feed(dir.path()).unwrap();
    let mut f = s.open(&key).unwrap().unwrap();
    assert_eq!(f.head(), Some(head(MAX_BLOCK_INDEX)));
    assert!(f.has_block(3) && f.has_block(far) && !f.has_block(4) && !f.has_block(far - 1));
    assert_eq!(f.block(far).unwrap(), Some(block(far, 10)));
    assert_eq!(
        f.node(MAX_NODE_INDEX - 1).unwrap(),
        Some(node(MAX_NODE_INDEX - 1))
    );
    assert_eq!(f.node(MAX_NODE_INDEX).unwrap(), None);
    assert_eq!(f.node(u64::MAX).unwrap(), None);
    assert_eq!(f.block(u64::MAX).unwrap(), None);
}

/// A writer that never calls `sync` still gets checkpoints, so its in-memory index of
/// recent records stays bounded.
#[test]
fn writes_without_sync_still_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = DiskConfig {
        checkpoint_entries: 30,
        small_feed_bytes: 0,
        ..DiskConfig::default()
    };
    let s = DiskStorage::open_with(dir.path(), config).unwrap();
    let mut f = s.create([12; 32], None).unwrap();
    let state = feed_dir(dir.path(), &[12; 32]).join("state");
    for i in 0..40 {
        f.write(append(i, 8)).unwrap();
    }
    assert!(
        state.exists(),
        "no checkpoint after 120 entries without a sync"
    );
    check_prefix(&mut f, 40, 8);
}

/// `meta` holds a writable feed's secret key: only the owner may read it.
#[test]
fn meta_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let s = open_per_feed(dir.path()).unwrap();
    let _f = s.create([13; 32], Some([14; 32])).unwrap();
    let meta = feed_dir(dir.path(), &[13; 32]).join("meta");
    let mode = fs::metadata(meta).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "meta mode {mode:o}");
}

/// Replay checks records whose blocks straddle its 1 MiB read chunks.
#[test]
fn replay_of_large_and_mixed_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [(5 << 20) / 2, 10, 0, (3 << 20) / 2, 1];
    {
        let s = open_per_feed(dir.path()).unwrap();
        let mut f = s.create([15; 32], None).unwrap();
        f.write(WriteBatch {
            blocks: sizes
                .iter()
                .enumerate()
                .map(|(i, &len)| (i as u64, block(i as u64, len)))
                .collect(),
            nodes: vec![node(0)],
            head: Some(head(sizes.len() as u64)),
        })
        .unwrap();
        f.write(append(5, 7)).unwrap();
        f.sync().unwrap();
    }
    let s = open_per_feed(dir.path()).unwrap();
    let mut f = s.open(&[15; 32]).unwrap().unwrap();
    for (i, &len) in sizes.iter().enumerate() {
        assert_eq!(
            f.block(i as u64).unwrap(),
            Some(block(i as u64, len)),
            "block {i}"
        );
    }
    assert_eq!(f.block(5).unwrap(), Some(block(5, 7)));
    assert_eq!(f.head(), Some(head(6)));
}
