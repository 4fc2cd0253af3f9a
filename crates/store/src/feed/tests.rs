//! Unit tests of `Feed`.

use super::*;
use crate::storage::MemoryStorage;

#[test]
fn feeds_and_cores_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<Feed<crate::storage::MemoryFeed>>();
    send::<Feed<crate::storage::DiskFeed>>();
    send::<crate::sync::FeedSync>();
}

#[test]
fn new_node_count_is_what_append_leaves_makes() {
    let mut roots = Vec::new();
    let mut length = 0u64;
    for count in [1u64, 1, 2, 3, 5, 8, 13, 64, 1, 100, 1000, 7] {
        let blocks: Vec<Vec<u8>> = (0..count).map(|i| vec![i as u8; 3]).collect();
        let leaves = tree::hash_leaves(length, &blocks);
        let made = tree::append_leaves(&mut roots, leaves).len();
        assert_eq!(
            new_node_count(length, count),
            made,
            "{count} after {length}"
        );
        length += count;
    }
}

/// Appends large enough for the disk storage's overlapped write, reopened: the same
/// tree as appends one block at a time.
#[test]
fn large_appends_on_disk_reopen_with_the_same_tree() {
    let dir = tempfile::tempdir().unwrap();
    let secret = FeedSecret::generate();
    let blocks: Vec<Vec<u8>> = (0..700u32).map(|i| i.to_le_bytes().repeat(256)).collect();
    let storage = crate::storage::DiskStorage::open(dir.path()).unwrap();
    let mut feed = Feed::create(&storage, secret.clone()).unwrap();
    feed.append_batch(&blocks[..300]).unwrap();
    feed.append_batch_deferred(&blocks[300..699]).unwrap();
    feed.append(&blocks[699]).unwrap();
    let head = *feed.head().unwrap();
    let key = *feed.key();
    drop(feed);
    drop(storage);

    let memory = MemoryStorage::new();
    let mut one_by_one = Feed::create(&memory, secret).unwrap();
    for b in &blocks {
        one_by_one.append(b).unwrap();
    }
    assert_eq!(one_by_one.roots(), {
        let storage = crate::storage::DiskStorage::open(dir.path()).unwrap();
        let mut feed = Feed::open(&storage, &key).unwrap().unwrap();
        assert_eq!(feed.head(), Some(&head));
        assert_eq!(feed.get(555).unwrap(), Some(blocks[555].clone()));
        feed.roots().to_vec()
    });
}

#[test]
fn runs_merge_and_count() {
    let key = FeedSecret::from_bytes(&[1; 32]).key();
    let mut f = Feed::create_replica(&MemoryStorage::new(), key).unwrap();
    f.add_run(10, 20);
    f.add_run(30, 40);
    f.add_run(15, 25);
    assert_eq!(f.stored_ranges(10), vec![(10, 25), (30, 40)]);
    assert_eq!(f.stored_count(), 25);
    f.add_run(25, 30);
    assert_eq!(f.stored_ranges(10), vec![(10, 40)]);
    assert_eq!(f.stored_count(), 30);
    f.add_run(0, 10);
    f.add_run(5, 8);
    assert_eq!(f.stored_ranges(10), vec![(0, 40)]);
    assert_eq!(f.stored_count(), 40);
    assert_eq!(f.contiguous_length(), 40);
    assert!(f.has(39) && !f.has(40));
    f.add_run(50, 51);
    assert_eq!(f.stored_ranges(1), vec![(0, 40)]);
    assert_eq!(f.stored_count(), 41);
}

/// Blocks read into the caller's buffers (small ones read as a run, large ones one by
/// one) are the blocks, in the buffers given; ingesting borrowed blocks stores what
/// ingesting owned ones does.
#[test]
fn blocks_read_into_given_buffers_and_ingested_borrowed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = crate::storage::DiskStorage::open(dir.path()).unwrap();
    let mut w = Feed::create(&storage, FeedSecret::generate()).unwrap();
    let blocks: Vec<Vec<u8>> = [100usize, 200, 70_000, 30, 20_000, 5]
        .iter()
        .enumerate()
        .map(|(i, &n)| vec![i as u8 + 1; n])
        .collect();
    w.append_batch(&blocks).unwrap();
    let mut given = Vec::new();
    let mut buffer = |len: usize| {
        let b = Vec::with_capacity(len + 7);
        given.push(b.as_ptr());
        b
    };
    let read = w.get_blocks_into(0, 6, usize::MAX, &mut buffer).unwrap();
    assert_eq!(read, blocks);
    let used: Vec<*const u8> = read.iter().map(|b| b.as_ptr()).collect();
    assert_eq!(used, given, "each block in the buffer given for it");
    assert_eq!(w.get_blocks(0, 6, usize::MAX).unwrap(), blocks);

    let replica_dir = tempfile::tempdir().unwrap();
    let replicas = crate::storage::DiskStorage::open(replica_dir.path()).unwrap();
    let mut r = Feed::create_replica(&replicas, *w.key()).unwrap();
    r.ingest(&w.proof(0, 6, 0, 0).unwrap(), vec![]).unwrap();
    let slices: Vec<&[u8]> = blocks[1..4].iter().map(Vec::as_slice).collect();
    let done = r
        .ingest_borrowed(&w.proof(6, 6, 1, 4).unwrap(), &slices)
        .unwrap();
    assert_eq!(done.blocks, 1..4);
    // Already stored blocks in a later proof are not written again.
    let slices: Vec<&[u8]> = blocks[..5].iter().map(Vec::as_slice).collect();
    r.ingest_borrowed(&w.proof(6, 6, 0, 5).unwrap(), &slices)
        .unwrap();
    assert_eq!(r.stored_count(), 5);
    assert_eq!(r.get_range(0, 5).unwrap(), blocks[..5]);
    // A block that does not verify stores nothing.
    let bad: Vec<&[u8]> = vec![&blocks[4]];
    assert!(r
        .ingest_borrowed(&w.proof(6, 6, 5, 6).unwrap(), &bad)
        .is_err());
    assert!(!r.has(5));
    drop(r);
    let r = Feed::open(&replicas, w.key()).unwrap().unwrap();
    assert_eq!(r.stored_count(), 5);
}

#[test]
fn a_stored_secret_key_of_another_feed_is_refused_at_the_first_append() {
    // Opening does not check the stored secret key against the feed key (decision
    // 195): a feed whose seed belongs to another key opens, as writable, and its first
    // append is refused before anything is signed or written.
    let storage = MemoryStorage::new();
    let key = FeedSecret::from_bytes(&[1; 32]).key();
    storage
        .create(*key.as_bytes(), Some([2; 32]))
        .expect("create with another feed's seed");
    let mut feed = Feed::open(&storage, &key).expect("open").expect("exists");
    assert!(feed.is_writable());
    for _ in 0..2 {
        assert!(matches!(
            feed.append(b"x"),
            Err(AppendError::KeyMismatch(_))
        ));
    }
    assert_eq!(feed.length(), 0);
    assert!(feed.storage().head().is_none());
    // The feed's own seed appends, also after a reopen (the pair is made then).
    let mut feed = Feed::create(&storage, FeedSecret::from_bytes(&[3; 32])).expect("create");
    feed.append_batch(&[b"one", b"two"]).expect("append");
    let key = *feed.key();
    drop(feed);
    let mut again = Feed::open(&storage, &key).expect("open").expect("exists");
    assert_eq!(again.append(b"three").expect("append after reopen"), 3);
    assert!(key.verify_head(again.head().expect("head")));
}
