//! The shared database of small feeds (`DiskStorage`'s default for new feeds): many feeds
//! in one file, reopened without reading each, writes not synced kept across a clean
//! close, and a feed that grows moving into its own directory with its bytes.

#![allow(clippy::unwrap_used)] // test helpers outside `#[test]` functions unwrap too

use replic8_store::storage::{
    DiskStorage, FeedStorage, Storage, StoredHead, StoredNode, WriteBatch, SMALL_FEED_BYTES,
};
use replic8_store::{Feed, FeedSecret};
use util::feed_dir;

use crate::util;

fn key(n: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&n.wrapping_mul(0x9e37_79b9).to_be_bytes());
    k[4..8].copy_from_slice(&n.to_le_bytes());
    k
}

fn first_block(n: u32) -> WriteBatch {
    WriteBatch {
        blocks: vec![(0, vec![n as u8; 1024])],
        nodes: vec![StoredNode {
            index: 0,
            hash: [n as u8; 32],
            size: 1024,
        }],
        head: Some(StoredHead {
            length: 1,
            tree_hash: [n as u8; 32],
            signature: [1; 64],
        }),
    }
}

/// 3,000 feeds of one block: a handful of files in all, every feed listed and whole
/// after a reopen, the writes never synced kept by the clean close.
#[test]
fn thousands_of_small_feeds_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    const FEEDS: u32 = 3_000;
    {
        let s = DiskStorage::open(dir.path()).unwrap();
        for n in 0..FEEDS {
            let mut f = s.create(key(n), None).unwrap();
            f.write(first_block(n)).unwrap();
            if n % 1_000 == 0 {
                f.sync().unwrap();
            }
        }
    }
    let files = walk(dir.path());
    assert!(
        files <= 4,
        "{files} files and directories for {FEEDS} feeds"
    );
    let s = DiskStorage::open(dir.path()).unwrap();
    let mut keys = s.list().unwrap();
    assert_eq!(keys.len(), FEEDS as usize);
    keys.dedup();
    assert_eq!(keys.len(), FEEDS as usize);
    for n in (0..FEEDS).step_by(7) {
        let mut f = s.open(&key(n)).unwrap().unwrap();
        assert_eq!(f.head().map(|h| h.length), Some(1), "feed {n}");
        assert_eq!(f.block(0).unwrap(), Some(vec![n as u8; 1024]), "feed {n}");
        assert_eq!(f.node(0).unwrap().map(|x| x.hash), Some([n as u8; 32]));
        assert!(!f.has_block(1));
    }
}

/// Files and directories under `dir`.
fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            1 + if e.file_type().unwrap().is_dir() {
                walk(&e.path())
            } else {
                0
            }
        })
        .sum()
}

/// A `Feed` appended past the threshold moves into its own directory and keeps every
/// block, verified up to its signed head, there and after a reopen.
#[test]
fn a_growing_feed_moves_out_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let secret = FeedSecret::generate();
    let feed_key = secret.key();
    let blocks: Vec<Vec<u8>> = (0..200u32).map(|i| vec![i as u8; 700]).collect();
    {
        let s = DiskStorage::open(dir.path()).unwrap();
        let mut feed = Feed::create(&s, secret).unwrap();
        for b in &blocks {
            feed.append(b).unwrap();
        }
        const { assert!(200 * 700 > SMALL_FEED_BYTES) };
    }
    assert!(feed_dir(dir.path(), feed_key.as_bytes())
        .join("log")
        .exists());
    let s = DiskStorage::open(dir.path()).unwrap();
    assert_eq!(s.list().unwrap(), vec![*feed_key.as_bytes()]);
    let mut feed = Feed::open(&s, &feed_key).unwrap().unwrap();
    assert_eq!(feed.length(), 200);
    assert_eq!(feed.get_range(0, 200).unwrap(), blocks);
    let proof = feed.proof(0, 200, 0, 200).unwrap();
    let replica_storage = replic8_store::storage::MemoryStorage::new();
    let mut replica = Feed::create_replica(&replica_storage, feed_key).unwrap();
    replica.ingest(&proof, blocks).unwrap();
    assert_eq!(replica.head(), feed.head());
}

/// One pass over the shared database gives what opening each small feed gives (writable
/// and empty, writable with blocks, a sparse replica), after a reopen; a feed in a
/// directory of its own and a feed whose roots do not hash to its head are left out.
#[test]
fn a_scan_reads_every_small_feed_as_opening_it_would() {
    use replic8_store::storage::MemoryStorage;
    use replic8_store::{scan_feeds, ScannedFeed};
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let (small, large, bad);
    {
        let s = DiskStorage::open(dir.path()).unwrap();
        let empty = Feed::create(&s, FeedSecret::generate()).unwrap();
        let blocks: Vec<Vec<u8>> = (0..7u8)
            .map(|i| vec![i; 100 + 50 * usize::from(i)])
            .collect();
        let mut written = Feed::create(&s, FeedSecret::generate()).unwrap();
        written.append_batch(&blocks).unwrap();
        // Blocks 0, 1 and 4..7 of another writer's 7, under its head of 7.
        let elsewhere = MemoryStorage::new();
        let mut w = Feed::create(&elsewhere, FeedSecret::generate()).unwrap();
        w.append_batch(&blocks).unwrap();
        let mut sparse = Feed::create_replica(&s, *w.key()).unwrap();
        let p = w.proof(0, 7, 0, 2).unwrap();
        sparse.ingest(&p, w.get_range(0, 2).unwrap()).unwrap();
        let p = w.proof(7, 7, 4, 7).unwrap();
        sparse.ingest(&p, w.get_range(4, 7).unwrap()).unwrap();
        sparse.flush().unwrap();
        assert_eq!((sparse.stored_count(), sparse.contiguous_length()), (5, 2));
        small = [*empty.key(), *written.key(), *sparse.key()];
        let mut d = Feed::create(&s, FeedSecret::generate()).unwrap();
        d.append_batch(&vec![vec![9u8; 1024]; 80]).unwrap();
        assert!(feed_dir(dir.path(), d.key().as_bytes()).exists());
        large = *d.key();
        bad = key(9);
        let mut f = s.create(bad, None).unwrap();
        f.write(first_block(9)).unwrap();
        f.sync().unwrap();
    }
    let s = DiskStorage::open(dir.path()).unwrap();
    assert_eq!(s.list().unwrap().len(), 5);
    let mut scanned: BTreeMap<[u8; 32], ScannedFeed> = BTreeMap::new();
    let given = scan_feeds(&s, |f| {
        assert!(scanned.insert(f.key, f).is_none(), "a feed given twice");
    })
    .unwrap();
    assert_eq!(given, 3);
    let keys: Vec<[u8; 32]> = scanned.keys().copied().collect();
    let mut expected: Vec<[u8; 32]> = small.iter().map(|k| *k.as_bytes()).collect();
    expected.sort_unstable();
    assert_eq!(keys, expected, "large {large:?} and bad {bad:?} left out");
    for key in &small {
        let mut feed = Feed::open(&s, key).unwrap().unwrap();
        let got = &scanned[key.as_bytes()];
        let opened = ScannedFeed {
            key: *key.as_bytes(),
            writable: feed.is_writable(),
            head: feed.head().copied(),
            byte_length: feed.byte_length(),
            stored: feed.stored_count(),
            contiguous_length: feed.contiguous_length(),
            stored_bytes: feed.stored_bytes().unwrap(),
        };
        assert_eq!(got, &opened);
    }
    let sparse = &scanned[small[2].as_bytes()];
    assert!(!sparse.writable && sparse.length() == 7 && sparse.stored_bytes < sparse.byte_length);
}
