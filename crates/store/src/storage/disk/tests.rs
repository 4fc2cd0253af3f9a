//! Unit tests of the disk storage that look inside it (log offsets, record layout),
//! and the storage conformance cases run on disk.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use super::cache::FileKind;
use super::files::lock;
use super::format::{RECORD_BLOCK_LEN, RECORD_HEADER_LEN, RECORD_HEAD_LEN, RECORD_NODE_LEN};
use super::{DiskConfig, DiskFeed, DiskStorage, FeedInner};
use crate::storage::conformance;
use crate::storage::{FeedStorage, Storage};
use crate::{Feed, FeedSecret};
use std::sync::Arc;

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

/// The conformance cases with `config`, each storage in a fresh directory.
fn conformance_with(config: DiskConfig) {
    let mut dirs = Vec::new();
    conformance::run_all(
        &mut || {
            let dir = tempfile::tempdir().unwrap();
            let s = DiskStorage::open_with(dir.path(), config).unwrap();
            dirs.push(dir);
            s
        },
        &mut |s| reopen_with(s, config),
    );
}

/// Every feed stays in the shared database, whatever it holds.
#[test]
fn disk_conformance_all_small() {
    conformance_with(all_small());
}

/// Every feed has its own directory (the layout before the shared database).
#[test]
fn disk_conformance_per_feed() {
    conformance_with(per_feed());
}

fn all_small() -> DiskConfig {
    DiskConfig {
        small_feed_bytes: u64::MAX,
        ..DiskConfig::default()
    }
}

fn per_feed() -> DiskConfig {
    DiskConfig {
        small_feed_bytes: 0,
        ..DiskConfig::default()
    }
}

/// With the default config (small feeds shared, moved out past 64 KiB): the cases with
/// large feeds move them out half way.
#[test]
fn disk_conformance() {
    conformance_with(DiskConfig::default());
}

/// The same cases with a checkpoint at every sync, so reads go through the slot files.
#[test]
fn disk_conformance_with_checkpoints() {
    conformance_with(DiskConfig {
        checkpoint_bytes: 1,
        ..DiskConfig::default()
    });
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

/// Feed `key` as the conformance cases write it: blocks 0..n of 100 bytes.
fn small_feed(s: &DiskStorage, key: [u8; 32], n: u64) {
    let mut f = s.create(key, Some([4; 32])).unwrap();
    f.write(conformance::append_batch(0, n, 100)).unwrap();
    f.sync().unwrap();
}

fn check_small_feed(s: &DiskStorage, key: [u8; 32], n: u64) {
    let mut f = s.open(&key).unwrap().expect("feed opens");
    assert_eq!(f.secret_key(), Some([4; 32]));
    assert_eq!(f.head(), Some(conformance::head(n)));
    for i in 0..n {
        assert_eq!(
            f.block(i).unwrap(),
            Some(conformance::block(i, 100)),
            "block {i}"
        );
        assert_eq!(
            f.node(2 * i + 1).unwrap(),
            Some(conformance::node(2 * i + 1))
        );
    }
    assert!(!f.has_block(n));
}

/// A small feed has no directory; past the threshold it moves into one, with all it
/// held, its rows leave the database, and it goes on there after a reopen.
#[test]
fn small_feed_moves_out_past_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let config = DiskConfig {
        small_feed_bytes: 4096,
        ..DiskConfig::default()
    };
    let s = DiskStorage::open_with(dir.path(), config).unwrap();
    small_feed(&s, [1; 32], 10); // 1,000 bytes of blocks, 20 nodes: 1,960 bytes
    let mut f = s.open(&[1; 32]).unwrap().unwrap();
    assert!(lock(&f.inner).small);
    assert!(!s.feed_dir(&[1; 32]).exists());
    f.write(conformance::append_batch(10, 20, 100)).unwrap(); // 3,920: stays
    assert!(lock(&f.inner).small);
    f.write(conformance::append_batch(20, 21, 100)).unwrap(); // 4,116: moves out
    assert!(!lock(&f.inner).small);
    assert!(s.feed_dir(&[1; 32]).join("log").exists());
    assert!(!s.shared.small.contains(&[1; 32]).unwrap());
    f.sync().unwrap();
    drop(f);
    assert_eq!(s.list().unwrap(), vec![[1; 32]]);
    let s = reopen_with(s, config);
    check_small_feed(&s, [1; 32], 21);
    // An append too large for a small feed moves an empty one out before it is written.
    // Its row goes once its first sync has made the directory durable.
    let mut g = s.create([2; 32], None).unwrap();
    g.write(conformance::append_batch(0, 50, 100)).unwrap();
    assert!(!lock(&g.inner).small);
    assert_eq!(g.block(49).unwrap(), Some(conformance::block(49, 100)));
    assert!(s.shared.small.contains(&[2; 32]).unwrap());
    g.sync().unwrap();
    assert!(!s.shared.small.contains(&[2; 32]).unwrap());
    drop(g);
    // Both left (a crash before that sync): the directory wins.
    let mut h = s.create([3; 32], None).unwrap();
    h.write(conformance::append_batch(0, 50, 100)).unwrap();
    drop(h);
    assert!(s.shared.small.contains(&[3; 32]).unwrap());
    let s = reopen_with(s, config);
    assert_eq!(s.list().unwrap(), vec![[1; 32], [2; 32], [3; 32]]);
    let mut h = s.open(&[3; 32]).unwrap().unwrap();
    assert!(!lock(&h.inner).small);
    assert_eq!(h.block(49).unwrap(), Some(conformance::block(49, 100)));
    assert!(!s.shared.small.contains(&[3; 32]).unwrap());
}

fn reopen_with(s: DiskStorage, config: DiskConfig) -> DiskStorage {
    let root = s.root().to_path_buf();
    drop(s);
    DiskStorage::open_with(root, config).unwrap()
}

/// The two moments a crash can split a move out: before the directory is renamed
/// into place (a temporary directory is left: removed on open, the feed is still in
/// the database), and after it, before the rows are removed (both hold the feed: the
/// directory wins and the rows go).
#[test]
fn a_move_out_cut_by_a_crash_leaves_one_whole_feed() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskStorage::open(dir.path()).unwrap();
    small_feed(&s, [1; 32], 5);
    small_feed(&s, [2; 32], 5);
    // Feed 1: cut before the rename.
    let contents = s.shared.small.contents(&[1; 32]).unwrap();
    let fan = s.feed_dir(&[1; 32]).parent().unwrap().to_path_buf();
    std::fs::create_dir_all(fan.join(".tmp-cut")).unwrap();
    std::fs::write(fan.join(".tmp-cut").join("meta"), b"half").unwrap();
    // Feed 2: the directory made whole, the rows left.
    let contents2 = s.shared.small.contents(&[2; 32]).unwrap();
    let blocks: Vec<(u64, &[u8])> = contents2
        .blocks
        .iter()
        .map(|(i, d)| (*i, d.as_slice()))
        .collect();
    let shared = Arc::clone(&s.shared);
    shared
        .make_feed_dir(&[2; 32], Some(&[4; 32]), |tmp| {
            let mut staged = FeedInner::new(&shared, [2; 32], tmp.to_path_buf(), Some([4; 32]));
            staged.write_parts(&blocks, contents2.nodes, Some(conformance::head(5)))?;
            staged.sync()
        })
        .unwrap();
    drop(shared);
    assert_eq!(contents.blocks.len(), 5);
    let s = reopen_with(s, DiskConfig::default());
    assert!(
        !fan.join(".tmp-cut").exists(),
        "the interrupted move is removed"
    );
    assert_eq!(s.list().unwrap(), vec![[1; 32], [2; 32]]);
    check_small_feed(&s, [1; 32], 5);
    check_small_feed(&s, [2; 32], 5);
    assert!(s.shared.small.contains(&[1; 32]).unwrap());
    assert!(
        !s.shared.small.contains(&[2; 32]).unwrap(),
        "the directory won"
    );
    assert!(s.feed_dir(&[2; 32]).exists());
}

/// A data directory of the layout before the shared database (every feed in its own
/// directory, no `small.redb`) opens with the default config; its feeds stay where
/// they are and new feeds go to the shared database.
#[test]
fn a_per_feed_data_directory_opens_and_new_feeds_share() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DiskStorage::open_with(dir.path(), per_feed()).unwrap();
        small_feed(&s, [1; 32], 3);
        small_feed(&s, [2; 32], 7);
    }
    std::fs::remove_file(dir.path().join(super::small::FILE_NAME)).unwrap();
    let s = DiskStorage::open(dir.path()).unwrap();
    assert_eq!(s.list().unwrap(), vec![[1; 32], [2; 32]]);
    check_small_feed(&s, [1; 32], 3);
    check_small_feed(&s, [2; 32], 7);
    small_feed(&s, [3; 32], 4);
    assert!(!s.feed_dir(&[3; 32]).exists());
    // An old feed goes on in its directory.
    let mut f = s.open(&[1; 32]).unwrap().unwrap();
    assert!(!lock(&f.inner).small);
    f.write(conformance::append_batch(3, 4, 100)).unwrap();
    f.sync().unwrap();
    drop(f);
    let s = reopen_with(s, DiskConfig::default());
    assert_eq!(s.list().unwrap(), vec![[1; 32], [2; 32], [3; 32]]);
    check_small_feed(&s, [1; 32], 4);
    check_small_feed(&s, [3; 32], 4);
    assert!(matches!(
        s.create([1; 32], None),
        Err(crate::storage::StorageError::Exists)
    ));
    assert!(matches!(
        s.create([3; 32], None),
        Err(crate::storage::StorageError::Exists)
    ));
}

/// A sync after another feed's sync that came after this feed's write costs nothing:
/// one durable commit covers every feed written before it.
#[test]
fn one_durable_commit_covers_every_small_feed_written_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskStorage::open(dir.path()).unwrap();
    let mut feeds: Vec<DiskFeed> = (0..3u8)
        .map(|k| {
            let mut f = s.create([k; 32], None).unwrap();
            f.write(conformance::append_batch(0, 1, 10)).unwrap();
            f
        })
        .collect();
    let durable = || s.shared.small.durable_commit();
    let before = durable();
    feeds[2].sync().unwrap();
    let after = durable();
    assert!(after > before);
    feeds[0].sync().unwrap();
    feeds[1].sync().unwrap();
    assert_eq!(durable(), after, "no further durable commit");
}

/// Feeds written whole share one durable commit, which also takes what was pending; a
/// feed with a handle open is refused and left as it is.
#[test]
fn feeds_written_whole_share_one_durable_commit_and_open_ones_are_refused() {
    use crate::storage::{WholeRefusal, WholeWritten};
    let dir = tempfile::tempdir().unwrap();
    let s = DiskStorage::open(dir.path()).unwrap();
    let open = s.create([200; 32], None).unwrap();
    s.create([201; 32], None)
        .unwrap()
        .write(conformance::append_batch(0, 1, 10))
        .unwrap();
    let (before, _, pending) = s.shared.small.commits();
    assert!(pending > 0);
    let writes: Vec<_> = (0..150u8)
        .chain([200])
        .map(|k| conformance::whole_write([k; 32], 2))
        .collect();
    let done = s.write_whole(&writes).unwrap();
    assert!(done[..150].iter().all(|d| *d == WholeWritten::Written));
    assert_eq!(done[150], WholeWritten::Refused(WholeRefusal::Open));
    assert_eq!(s.shared.small.commits(), (before + 1, before + 1, 0));
    assert_eq!(open.head(), None);
    let mut f = s.open(&[149; 32]).unwrap().unwrap();
    assert_eq!(f.block(1).unwrap(), Some(conformance::block(1, 100)));
}

/// A real feed checked whole and written whole opens as a verified replica (its roots
/// hash to its head) with every block.
#[test]
fn a_feed_checked_and_written_whole_opens_as_a_replica() {
    use crate::storage::MemoryStorage;
    let mut writer = Feed::create(&MemoryStorage::new(), FeedSecret::generate()).unwrap();
    let blocks: Vec<Vec<u8>> = (0..7u8).map(|i| vec![i; 1024]).collect();
    writer.append_batch(&blocks).unwrap();
    let whole = crate::check_whole(
        *writer.key().as_bytes(),
        writer.head().unwrap(),
        blocks.clone(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = DiskStorage::open(dir.path()).unwrap();
    s.write_whole(&[whole]).unwrap();
    let s = reopen_with(s, DiskConfig::default());
    let mut replica = Feed::open(&s, writer.key()).unwrap().unwrap();
    assert!(!replica.is_writable());
    assert_eq!(replica.head(), writer.head());
    assert_eq!(replica.get_range(0, 7).unwrap(), blocks);
}

/// A head read whole goes to peers: a write of the feed still pending is made durable
/// before it is read; reading feeds with nothing pending commits nothing.
#[test]
fn a_feed_read_whole_is_durable_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskStorage::open(dir.path()).unwrap();
    s.create([3; 32], None).unwrap().sync().unwrap();
    let mut f = s.create([1; 32], Some([2; 32])).unwrap();
    f.write(conformance::append_batch(0, 2, 10)).unwrap();
    let (before, _, _) = s.shared.small.commits();
    let read = s.read_whole(&[[3; 32]], 1 << 10).unwrap();
    assert_eq!(read, vec![None]);
    let (last, _, pending) = s.shared.small.commits();
    assert_eq!(
        (last, pending),
        (before, 2),
        "nothing of [1; 32] read: no commit"
    );
    let read = s.read_whole(&[[1; 32]], 1 << 10).unwrap();
    assert_eq!(read[0].as_ref().map(|r| r.head), Some(conformance::head(2)));
    assert_eq!(s.shared.small.commits(), (before + 1, before + 1, 0));
    // A commit without an fsync (a long queue's) is made durable before a read too.
    for k in 0..super::small::PENDING_OPS as u64 {
        let mut key = [9u8; 32];
        key[..8].copy_from_slice(&k.to_le_bytes());
        s.create(key, None).unwrap();
    }
    let (last, durable, _) = s.shared.small.commits();
    assert!(durable < last);
    s.read_whole(&[[3; 32]], 1 << 10).unwrap();
    let (last, durable, _) = s.shared.small.commits();
    assert_eq!(durable, last);
}

/// The storage as a crash now would leave it: its database file copied while it is
/// open (nothing closed, nothing more synced), opened from the copy.
fn crashed(s: DiskStorage) -> (tempfile::TempDir, DiskStorage) {
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(
        s.root().join(super::small::FILE_NAME),
        copy.path().join(super::small::FILE_NAME),
    )
    .unwrap();
    drop(s);
    let s = DiskStorage::open(copy.path()).unwrap();
    (copy, s)
}

/// A crash right after `write_whole` returns (the database file copied while the storage
/// is still open, no close): every feed of the batch is there whole; a write queued
/// after it and not synced is not, and tears nothing.
#[test]
fn feeds_written_whole_survive_a_crash_right_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskStorage::open(dir.path()).unwrap();
    let writes: Vec<_> = (0..50u8)
        .map(|k| conformance::whole_write([k; 32], 3))
        .collect();
    s.write_whole(&writes).unwrap();
    s.create([200; 32], None)
        .unwrap()
        .write(conformance::append_batch(0, 1, 10))
        .unwrap();
    let (_crashed, s) = crashed(s);
    let keys: Vec<[u8; 32]> = (0..50u8).map(|k| [k; 32]).collect();
    let read = s.read_whole(&keys, usize::MAX).unwrap();
    for (k, read) in read.iter().enumerate() {
        let read = read
            .as_ref()
            .unwrap_or_else(|| panic!("feed {k} not whole"));
        assert_eq!(read.head, conformance::head(3));
        assert_eq!(read.blocks, writes[k].blocks);
    }
    assert!(s.open(&[200; 32]).unwrap().is_none());
}

/// Replicas created in one call wait for the next commit, as created ones do: a crash
/// after a later durable commit (a whole write) finds every one of them, empty, beside
/// the written feed; a feed in a directory of its own gets no row.
#[test]
fn replicas_created_in_one_call_survive_a_crash_after_the_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskStorage::open(dir.path()).unwrap();
    let mut big = s.create([250; 32], None).unwrap();
    big.write(conformance::append_batch(0, 50, 4096)).unwrap();
    big.sync().unwrap();
    drop(big);
    assert!(s.feed_dir(&[250; 32]).exists());
    let keys: Vec<[u8; 32]> = (0..50u8).map(|k| [k; 32]).chain([[250; 32]]).collect();
    assert_eq!(s.create_replicas(&keys).unwrap(), 50);
    assert!(!s.shared.small.contains(&[250; 32]).unwrap());
    s.write_whole(&[conformance::whole_write([100; 32], 3)])
        .unwrap();
    let (_crashed, s) = crashed(s);
    let mut expected: Vec<[u8; 32]> = (0..50u8).map(|k| [k; 32]).collect();
    expected.push([100; 32]);
    assert_eq!(s.list().unwrap(), expected);
    for key in &expected[..50] {
        let f = s.open(key).unwrap().expect("replica opens");
        assert_eq!((f.secret_key(), f.head()), (None, None));
    }
}

/// Whole reads and writes, and replicas created together, find the feeds with a
/// directory of their own through one listing of the fan directories: a feed moved out
/// while its empty row is still in the database (a crash before the move's sync leaves
/// both: the directory wins) is read from its directory, a whole write (which would
/// fill the empty row) leaves it alone, and small feeds beside it go to the database.
#[test]
fn feeds_with_a_directory_are_found_by_whole_reads_writes_and_replica_creation() {
    let dir = tempfile::tempdir().unwrap();
    let config = DiskConfig {
        small_feed_bytes: 4096,
        ..DiskConfig::default()
    };
    let s = DiskStorage::open_with(dir.path(), config).unwrap();
    small_feed(&s, [2; 32], 3);
    // Moved out before its first write (an empty row left, as a crash before the
    // move's sync leaves it).
    let mut moved = s.create([1; 32], Some([4; 32])).unwrap();
    moved.write(conformance::append_batch(0, 50, 100)).unwrap();
    drop(moved);
    assert!(s.shared.small.contains(&[1; 32]).unwrap());
    let s = reopen_with(s, config);
    let read = s.read_whole(&[[1; 32], [2; 32]], usize::MAX).unwrap();
    let lengths: Vec<Option<u64>> = read
        .iter()
        .map(|r| r.as_ref().map(|r| r.head.length))
        .collect();
    assert_eq!(lengths, vec![Some(50), Some(3)]);
    let writes = [
        conformance::whole_write([1; 32], 3),
        conformance::whole_write([3; 32], 3),
    ];
    let done = s.write_whole(&writes).unwrap();
    assert_ne!(done[0], crate::storage::WholeWritten::Written);
    assert_eq!(done[1], crate::storage::WholeWritten::Written);
    assert_eq!(s.create_replicas(&[[1; 32], [4; 32]]).unwrap(), 1);
    assert!(s.shared.small.contains(&[4; 32]).unwrap());
    let mut f = s.open(&[1; 32]).unwrap().unwrap();
    assert!(!lock(&f.inner).small);
    assert_eq!(f.head(), Some(conformance::head(50)));
    assert_eq!(f.block(49).unwrap(), Some(conformance::block(49, 100)));
}
