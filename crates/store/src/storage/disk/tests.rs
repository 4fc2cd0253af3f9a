//! Unit tests of the disk storage that look inside it (log offsets, record layout),
//! and the storage conformance cases run on disk.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use super::cache::FileKind;
use super::files::lock;
use super::format::{RECORD_BLOCK_LEN, RECORD_HEADER_LEN, RECORD_HEAD_LEN, RECORD_NODE_LEN};
use super::{DiskConfig, DiskFeed, DiskStorage};
use crate::storage::conformance;
use crate::storage::{FeedStorage, Storage};
use crate::{Feed, FeedSecret};

/// A large append is written in two parts (blocks first, on a helper thread, then
/// the header and entries in front): with either part missing, as after a crash
/// between them, the record is torn and cut on open; earlier appends stay.
#[test]
fn append_written_in_two_parts_is_all_or_nothing() {
    use conformance::{block, head, node};
    let count = 200u64; // 200 KiB: over OVERLAP_MIN_BYTES
    for lose in ["entries", "blocks"] {
        let dir = tempfile::tempdir().unwrap();
        let s = DiskStorage::open(dir.path()).unwrap();
        let mut f = s.create([1; 32], Some([2; 32])).unwrap();
        let append = |f: &mut DiskFeed, first: u64| {
            let data: Vec<Vec<u8>> = (first..first + count).map(|i| block(i, 1024)).collect();
            let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let n = 2 * count as usize;
            f.write_append_hashing(first, &slices, n, &mut || {
                let nodes = (first..first + count)
                    .flat_map(|i| [node(2 * i), node(2 * i + 1)])
                    .collect();
                (nodes, head(first + count))
            })
            .unwrap();
            f.sync().unwrap();
        };
        append(&mut f, 0);
        let first_end = lock(&f.inner).log_len;
        append(&mut f, count);
        let end = lock(&f.inner).log_len;
        let meta_len = RECORD_HEAD_LEN + count * RECORD_BLOCK_LEN + 2 * count * RECORD_NODE_LEN;
        let log_path = s.feed_dir(&[1; 32]).join("log");
        drop(f);
        drop(s);
        let log = OpenOptions::new().write(true).open(log_path).unwrap();
        let (from, len) = match lose {
            "entries" => (first_end, RECORD_HEADER_LEN + meta_len),
            _ => (
                first_end + RECORD_HEADER_LEN + meta_len,
                end - first_end - RECORD_HEADER_LEN - meta_len,
            ),
        };
        log.write_all_at(&vec![0u8; len as usize], from).unwrap();
        log.sync_all().unwrap();
        drop(log);
        let s = DiskStorage::open(dir.path()).unwrap();
        let mut f = s.open(&[1; 32]).unwrap().unwrap();
        assert_eq!(f.head(), Some(head(count)), "{lose} lost");
        assert_eq!(f.block(count - 1).unwrap(), Some(block(count - 1, 1024)));
        assert!(!f.has_block(count), "{lose} lost");
        assert_eq!(lock(&f.inner).log_len, first_end, "the torn record is cut");
    }
}

/// A `hash` that panics mid-append (the blocks possibly written past the log's end)
/// leaves the feed refusing writes; reopened, it is as before the append.
#[test]
fn panic_while_hashing_fails_the_feed_until_reopened() {
    use conformance::{block, head, node};
    let dir = tempfile::tempdir().unwrap();
    let s = DiskStorage::open(dir.path()).unwrap();
    let mut f = s.create([5; 32], Some([6; 32])).unwrap();
    f.write(conformance::append_batch(0, 3, 100)).unwrap();
    f.sync().unwrap();
    let data: Vec<Vec<u8>> = (3..203).map(|i| block(i, 1024)).collect();
    let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        f.write_append_hashing(3, &slices, 400, &mut || panic!("hash fails"))
    }));
    assert!(panicked.is_err());
    assert!(f.write(conformance::append_batch(3, 4, 100)).is_err());
    assert!(f.sync().is_err());
    drop(f);
    drop(s);
    let s = DiskStorage::open(dir.path()).unwrap();
    let mut f = s.open(&[5; 32]).unwrap().unwrap();
    assert_eq!(f.head(), Some(head(3)));
    assert!(!f.has_block(3));
    f.write(conformance::append_batch(3, 4, 100)).unwrap();
    f.sync().unwrap();
    assert_eq!(f.block(3).unwrap(), Some(block(3, 100)));
    assert_eq!(f.node(7).unwrap(), Some(node(7)));
}

fn reopen(s: DiskStorage) -> DiskStorage {
    let root = s.root().to_path_buf();
    drop(s);
    DiskStorage::open(root).unwrap()
}

#[test]
fn disk_conformance() {
    let mut dirs = Vec::new();
    conformance::run_all(
        &mut || {
            let dir = tempfile::tempdir().unwrap();
            let s = DiskStorage::open(dir.path()).unwrap();
            dirs.push(dir);
            s
        },
        &mut reopen,
    );
}

/// The same cases with a checkpoint at every sync, so reads go through the slot files.
#[test]
fn disk_conformance_with_checkpoints() {
    let config = DiskConfig {
        checkpoint_bytes: 1,
        ..DiskConfig::default()
    };
    let mut dirs = Vec::new();
    conformance::run_all(
        &mut || {
            let dir = tempfile::tempdir().unwrap();
            let s = DiskStorage::open_with(dir.path(), config).unwrap();
            dirs.push(dir);
            s
        },
        &mut |s| {
            let root = s.root().to_path_buf();
            drop(s);
            DiskStorage::open_with(root, config).unwrap()
        },
    );
}

/// A `Feed` on a disk feed appends through its overlapped fast path (chosen by type in
/// `storage::write_append_hashing`, not by a trait method): a large append opens the
/// log's second, write-at-offset handle, which only that path uses; a small one does not.
#[test]
fn feed_appends_take_the_disk_fast_path() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskStorage::open(dir.path()).unwrap();
    let mut feed = Feed::create(&s, FeedSecret::generate()).unwrap();
    let id = lock(&feed.storage().inner).id;
    let overlapped = || lock(&s.shared.files).holds((id, FileKind::LogAt));
    feed.append_batch(&[b"small".as_slice()]).unwrap();
    assert!(!overlapped(), "a small append is written in one piece");
    let blocks: Vec<Vec<u8>> = (1..201).map(|i| conformance::block(i, 1024)).collect();
    assert_eq!(feed.append_batch(&blocks).unwrap(), 201);
    assert!(
        overlapped(),
        "a 200 KiB append of 1 KiB blocks is overlapped"
    );
    assert_eq!(feed.get(200).unwrap(), Some(conformance::block(200, 1024)));
}
