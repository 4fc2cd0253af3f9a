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
