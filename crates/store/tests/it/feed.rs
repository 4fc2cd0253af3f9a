//! `Feed`: append, read, reopen, verified ingest, sparse presence, and bad input that
//! stores nothing.

use replic8_store::storage::{MemoryFeed, MemoryStorage};
use replic8_store::{
    AppendError, Feed, FeedSecret, IngestError, Proof, VerifyError, MAX_BLOCK_SIZE,
};

fn writer(n: u64) -> (MemoryStorage, Feed<MemoryFeed>) {
    let storage = MemoryStorage::new();
    let mut feed = Feed::create(&storage, FeedSecret::from_bytes(&[1; 32])).expect("create");
    let blocks: Vec<Vec<u8>> = (0..n).map(|i| format!("block {i}").into_bytes()).collect();
    feed.append_batch(&blocks).expect("append");
    (storage, feed)
}

#[test]
fn append_read_and_reopen() {
    let (storage, mut feed) = writer(10);
    assert_eq!(feed.append(b"eleventh").expect("append"), 11);
    assert_eq!(feed.length(), 11);
    assert!(feed.is_writable());
    assert_eq!(feed.get(3).expect("get").as_deref(), Some(&b"block 3"[..]));
    assert_eq!(feed.get(11).expect("get"), None);
    assert_eq!(
        feed.get_range(9, 11).expect("range")[1],
        b"eleventh".to_vec()
    );
    assert_eq!(feed.byte_length(), 10 * 7 + 8);
    assert_eq!(feed.contiguous_length(), 11);
    assert_eq!(feed.append_batch::<Vec<u8>>(&[]).expect("empty batch"), 11);
    let head = *feed.head().expect("head");
    let key = *feed.key();
    drop(feed);
    let mut again = Feed::open(&storage, &key).expect("open").expect("exists");
    assert_eq!(again.head(), Some(&head));
    assert_eq!(again.contiguous_length(), 11);
    assert_eq!(again.append(b"twelfth").expect("append after reopen"), 12);
    assert_eq!(key.discovery_key(), *again.discovery_key());
}

#[test]
fn replica_cannot_append_and_big_blocks_are_refused() {
    let (storage, mut feed) = writer(1);
    let other = MemoryStorage::new();
    let mut replica = Feed::create_replica(&other, *feed.key()).expect("replica");
    assert!(matches!(
        replica.append(b"x"),
        Err(AppendError::NotWritable)
    ));
    let big = vec![0u8; MAX_BLOCK_SIZE + 1];
    assert!(matches!(
        feed.append(&big),
        Err(AppendError::BlockTooLarge { .. })
    ));
    assert_eq!(feed.length(), 1);
    drop(storage);
}

#[test]
fn replica_ingests_sparse_ranges_and_serves_them() {
    let (_s, mut w) = writer(100);
    let other = MemoryStorage::new();
    let mut r = Feed::create_replica(&other, *w.key()).expect("replica");
    // Blocks 40..50 with the signed head, from nothing.
    let p = w.proof(0, 100, 40, 50).expect("proof");
    let done = r
        .ingest(&p, w.get_range(40, 50).expect("read"))
        .expect("ingest");
    assert_eq!(done.upgraded, Some(100));
    assert_eq!(r.length(), 100);
    assert_eq!(r.head(), w.head());
    assert!(r.has(40) && r.has(49) && !r.has(39) && !r.has(50));
    assert_eq!(r.contiguous_length(), 0);
    assert_eq!(r.stored_ranges(10), vec![(40, 50)]);
    // Data proofs against the replica's own length need no head.
    let p = w.proof(100, 100, 0, 10).expect("proof");
    assert!(p.head.is_none());
    r.ingest(&p, w.get_range(0, 10).expect("read"))
        .expect("ingest");
    assert_eq!(r.contiguous_length(), 10);
    assert_eq!(r.stored_ranges(10), vec![(0, 10), (40, 50)]);
    // The replica can prove what it stores to a third feed.
    let p = r.proof(0, 100, 42, 45).expect("replica proof");
    let third = MemoryStorage::new();
    let mut t = Feed::create_replica(&third, *w.key()).expect("third");
    t.ingest(&p, r.get_range(42, 45).expect("read"))
        .expect("ingest from replica");
    assert_eq!(t.get(43).expect("get"), w.get(43).expect("get"));
}

/// Every bad input is rejected with its own error, stores nothing, and the replica then
/// still accepts good data.
#[test]
fn bad_input_stores_nothing_and_feed_stays_usable() {
    let (_s, mut w) = writer(64);
    let other = MemoryStorage::new();
    let mut r = Feed::create_replica(&other, *w.key()).expect("replica");
    let up = w.proof(0, 32, 32, 32);
    assert!(up.is_err(), "cannot sign an old length");
    let p = w.proof(0, 64, 0, 0).expect("upgrade");
    r.ingest(&p, vec![]).expect("upgrade");
    w.append(b"more").expect("append");

    let stored = |r: &Feed<MemoryFeed>| r.storage().stored_blocks();

    // A block that does not verify.
    let p = w.proof(64, 64, 8, 16).expect("proof");
    let mut blocks = w.get_range(8, 16).expect("read");
    blocks[2][0] ^= 1;
    match r.ingest(&p, blocks) {
        Err(IngestError::Verify(VerifyError::BlockMismatch { start: 8, end: 16 })) => {}
        other => panic!("expected block mismatch, got {other:?}"),
    }
    // A proof for another tree: another writer's blocks under our key's head.
    let (_s2, mut w2) = {
        let storage = MemoryStorage::new();
        let mut feed = Feed::create(&storage, FeedSecret::from_bytes(&[1; 32])).expect("create");
        let blocks: Vec<Vec<u8>> = (0..65u64).map(|i| vec![i as u8; 3]).collect();
        feed.append_batch(&blocks).expect("append");
        (storage, feed)
    };
    let p = w2.proof(64, 65, 64, 65).expect("proof");
    match r.ingest(&p, w2.get_range(64, 65).expect("read")) {
        Err(IngestError::Verify(VerifyError::TreeMismatch { .. }))
        | Err(IngestError::Verify(VerifyError::BlockMismatch { .. })) => {}
        other => panic!("expected tree mismatch, got {other:?}"),
    }
    // A signature by another key.
    let (_s3, mut stranger) = {
        let storage = MemoryStorage::new();
        let mut feed = Feed::create(&storage, FeedSecret::from_bytes(&[9; 32])).expect("create");
        let blocks: Vec<Vec<u8>> = (0..65u64)
            .map(|i| format!("block {i}").into_bytes())
            .collect();
        feed.append_batch(&blocks[..64]).expect("append");
        feed.append(b"more").expect("append");
        (storage, feed)
    };
    let p = stranger.proof(64, 65, 64, 65).expect("proof");
    match r.ingest(&p, stranger.get_range(64, 65).expect("read")) {
        Err(IngestError::Verify(VerifyError::BadSignature { length: 65 })) => {}
        other => panic!("expected bad signature, got {other:?}"),
    }
    // A length that goes backward.
    let mut p = w.proof(64, 65, 64, 65).expect("proof");
    p.length = 63;
    p.end = 63;
    p.start = 63;
    match r.ingest(&p, vec![]) {
        Err(IngestError::Verify(VerifyError::LengthBackward {
            base: 64,
            length: 63,
        })) => {}
        other => panic!("expected length backward, got {other:?}"),
    }
    // A truncated proof (a node missing).
    let mut p: Proof = w.proof(64, 64, 8, 16).expect("proof");
    p.nodes.pop();
    assert!(matches!(
        r.ingest(&p, w.get_range(8, 16).expect("read")),
        Err(IngestError::Verify(VerifyError::Malformed(_)))
    ));

    assert_eq!(stored(&r), 0, "nothing stored");
    assert_eq!(r.length(), 64);
    // Still usable: good data and a good upgrade go in.
    let p = w.proof(64, 65, 60, 65).expect("proof");
    r.ingest(&p, w.get_range(60, 65).expect("read"))
        .expect("good ingest");
    assert_eq!(r.length(), 65);
    assert_eq!(stored(&r), 5);
}

/// The same flow on real files: a writer and a replica on `DiskStorage`, both reopened
/// from disk after being dropped.
#[test]
fn feeds_on_disk_reopen_with_their_blocks() {
    use replic8_store::storage::DiskStorage;
    let dir = tempfile::tempdir().expect("tempdir");
    let key;
    let head;
    {
        let storage = DiskStorage::open(dir.path().join("w")).expect("disk");
        let mut w = Feed::create(&storage, FeedSecret::from_bytes(&[4; 32])).expect("create");
        let blocks: Vec<Vec<u8>> = (0..300u64)
            .map(|i| vec![i as u8; 100 + i as usize])
            .collect();
        w.append_batch(&blocks[..200]).expect("append");
        for b in &blocks[200..] {
            w.append(b).expect("append one");
        }
        key = *w.key();
        head = *w.head().expect("head");
        let rs = DiskStorage::open(dir.path().join("r")).expect("disk");
        let mut r = Feed::create_replica(&rs, key).expect("replica");
        r.ingest(&w.proof(0, 300, 0, 0).expect("upgrade"), vec![])
            .expect("upgrade");
        for start in (0..300).step_by(64) {
            let end = (start + 64).min(300);
            let p = w.proof(300, 300, start, end).expect("proof");
            r.ingest(&p, w.get_range(start, end).expect("read"))
                .expect("ingest");
        }
        r.flush().expect("flush");
    }
    for side in ["w", "r"] {
        let storage = DiskStorage::open(dir.path().join(side)).expect("reopen");
        let mut f = Feed::open(&storage, &key).expect("open").expect("exists");
        assert_eq!(f.head(), Some(&head), "{side}");
        assert_eq!(f.contiguous_length(), 300, "{side}");
        assert_eq!(f.get(299).expect("get"), Some(vec![43u8; 399]), "{side}");
        assert_eq!(f.is_writable(), side == "w");
        // Each can still prove any range to a fresh replica.
        let p = f.proof(0, 300, 10, 20).expect("proof");
        let mut fresh = Feed::create_replica(&MemoryStorage::new(), key).expect("fresh");
        fresh
            .ingest(&p, f.get_range(10, 20).expect("read"))
            .expect("proof from reopened feed");
    }
}

/// Deferred and owned appends on disk: each deferred one returns after its write with the sync started in the
/// background; after `flush` every one of them is there on reopen, with the same head
/// as a feed that appended the same blocks durably, and a checkpoint along the way does
/// not lose anything.
#[test]
fn deferred_appends_are_durable_after_flush() {
    use replic8_store::storage::{DiskConfig, DiskStorage};
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = [5; 32];
    let blocks: Vec<Vec<u8>> = (0..400u64)
        .map(|i| vec![i as u8; 1 + (i as usize * 997) % 70_000])
        .collect();
    let config = DiskConfig {
        checkpoint_bytes: 1 << 20,
        ..DiskConfig::default()
    };
    let head;
    {
        let storage = DiskStorage::open_with(dir.path(), config).expect("disk");
        let mut w = Feed::create(&storage, FeedSecret::from_bytes(&secret)).expect("create");
        for chunk in blocks.chunks(7) {
            let before = w.length();
            let length = w.append_batch_deferred(chunk).expect("deferred append");
            assert_eq!(length, before + chunk.len() as u64);
        }
        // Readable before the flush, from the page cache.
        assert_eq!(w.get(399).expect("get").as_deref(), Some(&blocks[399][..]));
        w.flush().expect("flush");
        head = *w.head().expect("head");
    }
    let mut durable = Feed::create(&MemoryStorage::new(), FeedSecret::from_bytes(&secret))
        .expect("create in memory");
    durable.append_batch(&blocks).expect("append");
    assert_eq!(
        durable.head().map(|h| (h.length, h.tree_hash)),
        Some((400, head.tree_hash))
    );

    let storage = DiskStorage::open(dir.path()).expect("reopen");
    let key = FeedSecret::from_bytes(&secret).key();
    let mut f = Feed::open(&storage, &key).expect("open").expect("exists");
    assert_eq!(f.head(), Some(&head));
    assert_eq!(f.get_range(0, 400).expect("read"), blocks);
    // A deferred append, then a durable one and an owned one: all survive.
    f.append_batch_deferred(&[b"deferred"]).expect("deferred");
    f.append(b"durable").expect("durable");
    let owned = vec![b"owned one".to_vec(), Vec::new(), vec![7; 70_000]];
    assert_eq!(f.append_batch_owned(owned.clone()).expect("owned"), 405);
    let head = *f.head().expect("head");
    drop(f);
    let mut f = Feed::open(&storage, &key).expect("open").expect("exists");
    assert_eq!(f.head(), Some(&head));
    assert_eq!(f.get(400).expect("get"), Some(b"deferred".to_vec()));
    assert_eq!(f.get_range(402, 405).expect("read"), owned);
    // The owned append hashed and signed what a borrowed one would have.
    durable
        .append_batch(&[&b"deferred"[..], b"durable"])
        .expect("append");
    durable.append_batch(&owned).expect("append");
    assert_eq!(durable.head().map(|h| h.tree_hash), Some(head.tree_hash));
}

/// A replica filled through checkpoints reopens with every block counted as stored
/// (regression: `feed info` showed `stored 0` for a held replica after a restart).
#[test]
fn a_replica_reopens_with_its_stored_count_across_checkpoints() {
    use replic8_store::storage::{DiskConfig, DiskStorage};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = DiskConfig {
        checkpoint_bytes: 64 << 10,
        ..DiskConfig::default()
    };
    let mut w =
        Feed::create(&MemoryStorage::new(), FeedSecret::from_bytes(&[6; 32])).expect("create");
    let blocks: Vec<Vec<u8>> = (0..9000u64).map(|i| vec![i as u8; 1000]).collect();
    w.append_batch(&blocks).expect("append");
    let key = *w.key();
    {
        let rs = DiskStorage::open_with(dir.path(), config).expect("disk");
        let mut r = Feed::create_replica(&rs, key).expect("replica");
        r.ingest(&w.proof(0, 9000, 0, 0).expect("upgrade"), vec![])
            .expect("upgrade");
        for start in (0..9000).step_by(500) {
            let p = w.proof(9000, 9000, start, start + 500).expect("proof");
            r.ingest(&p, w.get_range(start, start + 500).expect("read"))
                .expect("ingest");
            r.flush().expect("flush");
        }
        assert_eq!(r.stored_count(), 9000);
    }
    let rs = DiskStorage::open_with(dir.path(), config).expect("reopen");
    let r = Feed::open(&rs, &key).expect("open").expect("exists");
    assert_eq!((r.length(), r.stored_count()), (9000, 9000));
    let mut r = r;
    assert_eq!(r.byte_length(), 9_000_000);
    assert_eq!(r.stored_bytes().expect("bytes"), 9_000_000);
    // A sparse replica counts the bytes of the blocks it holds.
    let mut sparse = Feed::create_replica(&MemoryStorage::new(), key).expect("sparse");
    let p = w.proof(0, 9000, 100, 600).expect("proof");
    sparse
        .ingest(&p, w.get_range(100, 600).expect("read"))
        .expect("ingest");
    assert_eq!(sparse.stored_count(), 500);
    assert_eq!(sparse.stored_bytes().expect("bytes"), 500_000);
}

/// Appends prepared ahead (hashed and signed off the feed) are the appends a writer
/// makes one by one: same heads, durable, in order; one overtaken by another append is
/// appended after it instead.
#[test]
fn prepared_appends_are_the_same_appends_made_ahead() {
    use replic8_store::storage::DiskStorage;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = [4u8; 32];
    let batches: Vec<Vec<Vec<u8>>> = (0..4u8)
        .map(|b| {
            (0..5u8)
                .map(|i| vec![b * 10 + i; 3000 + 100 * i as usize])
                .collect()
        })
        .collect();
    let mut plain =
        Feed::create(&MemoryStorage::new(), FeedSecret::from_bytes(&secret)).expect("create");
    plain.append(b"first").expect("append");
    let storage = DiskStorage::open(dir.path()).expect("disk");
    let mut f = Feed::create(&storage, FeedSecret::from_bytes(&secret)).expect("create");
    f.append(b"first").expect("append");

    // All four prepared before the first is written; a fifth, empty, is a sync.
    let mut preparer = f.preparer().expect("writable");
    let prepared: Vec<_> = batches
        .iter()
        .chain([&Vec::new()])
        .map(|b| preparer.prepare(b.clone()).expect("prepare"))
        .collect();
    assert_eq!(f.length(), 1, "preparing writes nothing");
    for (p, b) in prepared
        .into_iter()
        .zip(batches.iter().chain([&Vec::new()]))
    {
        let end = p.end();
        assert_eq!(p.blocks(), &b[..]);
        assert_eq!(f.append_prepared(p).expect("append prepared"), end);
        plain.append_batch(b).expect("append");
        assert_eq!(f.head(), plain.head(), "the head a plain append signs");
    }
    let head = *f.head().expect("head");
    drop(f);
    let key = FeedSecret::from_bytes(&secret).key();
    let mut f = Feed::open(&storage, &key).expect("open").expect("exists");
    assert_eq!(f.head(), Some(&head), "reopens at the last head");
    assert_eq!(
        f.get_range(1, 21).expect("read"),
        batches.concat(),
        "in order"
    );

    // Overtaken: another append came between prepare and write.
    let mut preparer = f.preparer().expect("writable");
    let late = preparer.prepare(vec![b"late".to_vec()]).expect("prepare");
    assert_eq!(late.end(), 22);
    f.append(b"first come").expect("append");
    assert_eq!(f.append_prepared(late).expect("appended after"), 23);
    assert_eq!(f.get(21).expect("get"), Some(b"first come".to_vec()));
    assert_eq!(f.get(22).expect("get"), Some(b"late".to_vec()));
    plain
        .append_batch(&[&b"first come"[..], b"late"])
        .expect("append");
    assert_eq!(f.head(), plain.head());

    // A replica has no preparer, and takes no prepared append; nor does another feed,
    // even one at the same length and tree.
    let mut replica = Feed::create_replica(&MemoryStorage::new(), key).expect("replica");
    assert!(matches!(replica.preparer(), Err(AppendError::NotWritable)));
    let mut preparer = f.preparer().expect("writable");
    let for_f = preparer.prepare(vec![b"x".to_vec()]).expect("prepare");
    assert!(matches!(
        replica.append_prepared(for_f),
        Err(AppendError::NotWritable)
    ));
    let empty_f =
        Feed::create(&MemoryStorage::new(), FeedSecret::from_bytes(&[8; 32])).expect("create");
    let mut empty_other =
        Feed::create(&MemoryStorage::new(), FeedSecret::from_bytes(&[9; 32])).expect("create");
    let for_empty_f = empty_f
        .preparer()
        .expect("writable")
        .prepare(vec![b"x".to_vec()])
        .expect("prepare");
    assert!(matches!(
        empty_other.append_prepared(for_empty_f),
        Err(AppendError::OtherFeed(_))
    ));
    assert_eq!((empty_other.length(), replica.length()), (0, 0));
    // A block over the limit is refused when prepared.
    let mut preparer = f.preparer().expect("writable");
    assert!(matches!(
        preparer.prepare(vec![vec![0; MAX_BLOCK_SIZE + 1]]),
        Err(AppendError::BlockTooLarge { .. })
    ));
    assert_eq!(f.length(), 23);
}
