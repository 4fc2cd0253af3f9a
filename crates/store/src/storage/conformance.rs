//! Behaviour every [`Storage`] must have, run against each implementation by its tests.

use super::{
    FeedStorage, Storage, StorageError, StoredHead, StoredNode, WholeRead, WholeRefusal,
    WholeWrite, WholeWritten, WriteBatch,
};

/// A node whose fields are derived from `index`, so reads can be checked.
pub(crate) fn node(index: u64) -> StoredNode {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&index.to_le_bytes());
    hash[31] = 0xaa;
    StoredNode {
        index,
        hash,
        size: index * 3 + 1,
    }
}

/// A head whose fields are derived from `length`.
pub(crate) fn head(length: u64) -> StoredHead {
    let mut tree_hash = [7u8; 32];
    tree_hash[..8].copy_from_slice(&length.to_le_bytes());
    let mut signature = [9u8; 64];
    signature[..8].copy_from_slice(&length.to_be_bytes());
    StoredHead {
        length,
        tree_hash,
        signature,
    }
}

/// A block whose bytes are derived from `index` and `len`.
pub(crate) fn block(index: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(31).wrapping_add(index) as u8)
        .collect()
}

/// The batch an append of blocks `[start, end)` of `len` bytes each would write.
pub(crate) fn append_batch(start: u64, end: u64, len: usize) -> WriteBatch {
    WriteBatch {
        blocks: (start..end).map(|i| (i, block(i, len))).collect(),
        nodes: (start..end)
            .flat_map(|i| [node(2 * i), node(2 * i + 1)])
            .collect(),
        head: Some(head(end)),
    }
}

/// Run every case. `new` gives a fresh, empty storage; `reopen` gives a second storage
/// over the same data (for disk: drops it and opens the same directory again).
pub(crate) fn run_all<S: Storage>(new: &mut dyn FnMut() -> S, reopen: &mut dyn FnMut(S) -> S) {
    create_open_list(new());
    write_then_read(new());
    reopen_sees_synced_batches(new, reopen);
    sparse_blocks(new());
    empty_and_large_blocks(new());
    range_reads(new(), reopen);
    append_while_hashing(new(), reopen);
    whole_feeds(new(), reopen);
    replicas_in_one_call(new(), reopen);
}

/// A feed of `length` blocks of 100 bytes as [`Storage::write_whole`] takes it.
pub(crate) fn whole_write(key: [u8; 32], length: u64) -> WholeWrite {
    let batch = append_batch(0, length, 100);
    WholeWrite {
        key,
        blocks: batch.blocks.into_iter().map(|(_, b)| b).collect(),
        nodes: batch.nodes,
        head: head(length),
    }
}

/// [`Storage::write_whole`] writes new and empty feeds, leaves those that hold it
/// complete, refuses partial and writable ones untouched, and finds a fork; every
/// feed written is there after a reopen, and [`Storage::read_whole`] reads it back.
fn whole_feeds<S: Storage>(s: S, reopen: &mut dyn FnMut(S) -> S) {
    let [missing, empty, partial, writable, held, forked, longer] = [
        [1; 32], [2; 32], [3; 32], [4; 32], [5; 32], [6; 32], [7; 32],
    ];
    {
        s.create(empty, None).unwrap();
        // Block 0 of 2.
        let mut p = s.create(partial, None).unwrap();
        let mut first = append_batch(0, 1, 100);
        first.head = Some(head(2));
        p.write(first).unwrap();
        s.create(writable, Some([9; 32])).unwrap();
        s.create(held, None)
            .unwrap()
            .write(append_batch(0, 3, 100))
            .unwrap();
        let mut fork = append_batch(0, 3, 100);
        if let Some(h) = fork.head.as_mut() {
            h.tree_hash[31] ^= 1;
        }
        s.create(forked, None).unwrap().write(fork).unwrap();
        let mut l = s.create(longer, None).unwrap();
        l.write(append_batch(0, 4, 100)).unwrap();
        l.sync().unwrap();
    }
    // The tree of the first two blocks of `longer` is its node 1.
    let mut prefix = whole_write(longer, 2);
    prefix.head.tree_hash = crate::tree::tree_hash(&[node(1).into()]);
    let writes = [
        whole_write(missing, 3),
        whole_write(empty, 3),
        whole_write(partial, 3),
        whole_write(writable, 3),
        whole_write(held, 3),
        whole_write(forked, 3),
        prefix,
    ];
    let done = s.write_whole(&writes).unwrap();
    assert_eq!(
        done,
        vec![
            WholeWritten::Written,
            WholeWritten::Written,
            WholeWritten::Refused(WholeRefusal::Holds),
            WholeWritten::Refused(WholeRefusal::Writable),
            WholeWritten::Held { length: 3 },
            WholeWritten::Conflict,
            WholeWritten::Held { length: 4 },
        ]
    );
    let s = reopen(s);
    for key in [missing, empty] {
        let mut f = s.open(&key).unwrap().unwrap();
        assert_eq!(f.head(), Some(head(3)));
        assert_eq!(f.secret_key(), None);
        assert_eq!(f.blocks(0, 3, usize::MAX).unwrap().len(), 3);
        assert_eq!(f.node(5).unwrap(), Some(node(5)));
    }
    let p = s.open(&partial).unwrap().unwrap();
    assert_eq!(p.head(), Some(head(2)));
    assert!(p.has_block(0) && !p.has_block(1));
    assert_eq!(s.open(&writable).unwrap().unwrap().head(), None);
    let whole = |length| WholeRead {
        head: head(length),
        blocks: (0..length).map(|i| block(i, 100)).collect(),
    };
    let keys = [missing, partial, writable, held, [8; 32], longer];
    assert_eq!(
        s.read_whole(&keys, 400).unwrap(),
        vec![
            Some(whole(3)),
            None,
            None,
            Some(whole(3)),
            None,
            Some(whole(4))
        ]
    );
    // Over the bound, the first block included.
    assert_eq!(s.read_whole(&[missing, longer], 300).unwrap()[1], None);
    assert_eq!(s.read_whole(&[missing], 99).unwrap(), vec![None]);
}

/// [`super::write_append_hashing`] (how a feed appends): appends small and large (a
/// disk feed writes 64 KiB and up of blocks averaging 16 KiB or less while hashing),
/// with the node count right and wrong, then reopened.
fn append_while_hashing<S: Storage>(s: S, reopen: &mut dyn FnMut(S) -> S) {
    let mut f = s.create([8; 32], Some([9; 32])).unwrap();
    // (first block, blocks, block size, node count the storage is told)
    let appends = [
        (0u64, 3u64, 100usize, 6usize),
        (3, 300, 1024, 600),
        (303, 40, 4000, 80),
        (343, 70, 1024, 1), // told the wrong count: still written whole
        (413, 2, 70_000, 4),
    ];
    for (first, count, len, node_count) in appends {
        let data: Vec<Vec<u8>> = (first..first + count).map(|i| block(i, len)).collect();
        let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let mut calls = 0;
        super::write_append_hashing(&mut f, first, &slices, node_count, &mut || {
            calls += 1;
            let nodes = (first..first + count)
                .flat_map(|i| [node(2 * i), node(2 * i + 1)])
                .collect();
            (nodes, head(first + count))
        })
        .unwrap();
        assert_eq!(calls, 1, "hash is called once");
        assert_eq!(f.head(), Some(head(first + count)));
        f.sync().unwrap();
    }
    let check = |f: &mut S::Feed| {
        for (first, count, len, _) in appends {
            for i in first..first + count {
                assert_eq!(f.block(i).unwrap(), Some(block(i, len)), "block {i}");
                assert_eq!(f.node(2 * i + 1).unwrap(), Some(node(2 * i + 1)));
            }
        }
        assert!(!f.has_block(415));
        assert_eq!(f.head(), Some(head(415)));
    };
    check(&mut f);
    drop(f);
    let s = reopen(s);
    let mut f = s.open(&[8; 32]).unwrap().unwrap();
    check(&mut f);
}

/// `blocks` returns what `block` does, run by run, and stops where it must.
fn range_reads<S: Storage>(s: S, reopen: &mut dyn FnMut(S) -> S) {
    let mut f = s.create([6; 32], None).unwrap();
    // Small blocks back to back, then large ones, then a gap at 40..45, then more.
    f.write(append_batch(0, 20, 100)).unwrap();
    f.write(append_batch(20, 30, 20_000)).unwrap();
    f.write(append_batch(30, 40, 7)).unwrap();
    f.write(append_batch(45, 50, 3)).unwrap();
    f.write(append_batch(100, 5_100, 1)).unwrap();
    f.sync().unwrap();
    drop(f);
    let check = |f: &mut S::Feed| {
        let all = f.blocks(0, 60, usize::MAX).unwrap();
        assert_eq!(all.len(), 40, "stops before the gap");
        for (i, b) in all.iter().enumerate() {
            assert_eq!(Some(b.clone()), f.block(i as u64).unwrap(), "block {i}");
        }
        // The byte limit: 10 blocks of 100 fit in 1,000; the first always comes.
        assert_eq!(f.blocks(0, 20, 1_000).unwrap().len(), 10);
        assert_eq!(f.blocks(0, 20, 1_050).unwrap().len(), 10);
        assert_eq!(f.blocks(20, 30, 1).unwrap().len(), 1);
        assert_eq!(f.blocks(15, 25, 45_000).unwrap().len(), 7);
        assert!(f.blocks(40, 50, usize::MAX).unwrap().is_empty());
        assert_eq!(
            f.blocks(45, 60, usize::MAX).unwrap(),
            (45..50).map(|i| block(i, 3)).collect::<Vec<_>>()
        );
        assert_eq!(f.blocks(38, 39, usize::MAX).unwrap(), vec![block(38, 7)]);
        // A huge end sizes nothing: the read stops at the gap.
        assert_eq!(f.blocks(0, u64::MAX / 2, usize::MAX).unwrap().len(), 40);
        // A run longer than one read-ahead of index slots.
        assert_eq!(
            f.blocks(100, 10_000, usize::MAX).unwrap(),
            (100..5_100).map(|i| block(i, 1)).collect::<Vec<_>>()
        );
    };
    let s = reopen(s);
    let mut f = s.open(&[6; 32]).unwrap().unwrap();
    check(&mut f);
    // Newly written blocks (not checkpointed yet) too.
    f.write(append_batch(60, 65, 9)).unwrap();
    assert_eq!(
        f.blocks(60, 70, usize::MAX).unwrap(),
        (60..65).map(|i| block(i, 9)).collect::<Vec<_>>()
    );
    check(&mut f);
}

fn create_open_list<S: Storage>(s: S) {
    assert!(s.list().unwrap().is_empty());
    assert!(s.open(&[1; 32]).unwrap().is_none());
    let writable = s.create([1; 32], Some([5; 32])).unwrap();
    assert_eq!(writable.secret_key(), Some([5; 32]));
    assert_eq!(writable.head(), None);
    let replica = s.create([2; 32], None).unwrap();
    assert_eq!(replica.secret_key(), None);
    assert!(matches!(s.create([1; 32], None), Err(StorageError::Exists)));
    assert_eq!(s.list().unwrap(), vec![[1; 32], [2; 32]]);
    let opened = s.open(&[1; 32]).unwrap().unwrap();
    assert_eq!(opened.secret_key(), Some([5; 32]));
}

fn write_then_read<S: Storage>(s: S) {
    let mut f = s.create([3; 32], Some([4; 32])).unwrap();
    f.write(append_batch(0, 1, 100)).unwrap();
    f.write(append_batch(1, 5, 100)).unwrap();
    f.sync().unwrap();
    for i in 0..5 {
        assert!(f.has_block(i));
        assert_eq!(f.block(i).unwrap(), Some(block(i, 100)), "block {i}");
        assert_eq!(f.node(2 * i).unwrap(), Some(node(2 * i)));
        assert_eq!(f.node(2 * i + 1).unwrap(), Some(node(2 * i + 1)));
    }
    assert!(!f.has_block(5));
    assert_eq!(f.block(5).unwrap(), None);
    assert_eq!(f.node(10).unwrap(), None);
    assert_eq!(f.head(), Some(head(5)));
    // A batch with only a head moves the head and nothing else.
    f.write(WriteBatch {
        head: Some(head(5)),
        ..WriteBatch::default()
    })
    .unwrap();
    // A batch without a head keeps the old one.
    f.write(WriteBatch {
        nodes: vec![node(21)],
        ..WriteBatch::default()
    })
    .unwrap();
    assert_eq!(f.head(), Some(head(5)));
    assert_eq!(f.node(21).unwrap(), Some(node(21)));
}

fn reopen_sees_synced_batches<S: Storage>(
    new: &mut dyn FnMut() -> S,
    reopen: &mut dyn FnMut(S) -> S,
) {
    let s = new();
    {
        let mut f = s.create([6; 32], Some([8; 32])).unwrap();
        for start in 0..20 {
            f.write(append_batch(start, start + 1, 1000)).unwrap();
        }
        f.sync().unwrap();
        let _empty = s.create([7; 32], None).unwrap();
    }
    let s2 = reopen(s);
    assert_eq!(s2.list().unwrap(), vec![[6; 32], [7; 32]]);
    let mut f = s2.open(&[6; 32]).unwrap().unwrap();
    assert_eq!(f.secret_key(), Some([8; 32]));
    assert_eq!(f.head(), Some(head(20)));
    for i in 0..20 {
        assert!(f.has_block(i));
        assert_eq!(f.block(i).unwrap(), Some(block(i, 1000)));
        assert_eq!(f.node(2 * i + 1).unwrap(), Some(node(2 * i + 1)));
    }
    // Writing after a reopen appends to what is there.
    f.write(append_batch(20, 22, 10)).unwrap();
    f.sync().unwrap();
    assert_eq!(f.block(21).unwrap(), Some(block(21, 10)));
    assert_eq!(f.block(3).unwrap(), Some(block(3, 1000)));
    let e = s2.open(&[7; 32]).unwrap().unwrap();
    assert_eq!(e.head(), None);
    assert!(!e.has_block(0));
}

fn sparse_blocks<S: Storage>(s: S) {
    let mut f = s.create([9; 32], None).unwrap();
    f.write(WriteBatch {
        blocks: vec![(1_000_000, block(1_000_000, 10)), (3, block(3, 10))],
        nodes: vec![node(2_000_000), node(6)],
        head: Some(head(2_000_000)),
    })
    .unwrap();
    f.sync().unwrap();
    assert!(f.has_block(3));
    assert!(f.has_block(1_000_000));
    assert!(!f.has_block(0));
    assert!(!f.has_block(4));
    assert!(!f.has_block(999_999));
    assert_eq!(f.block(1_000_000).unwrap(), Some(block(1_000_000, 10)));
    assert_eq!(f.block(2).unwrap(), None);
    assert_eq!(f.node(2_000_000).unwrap(), Some(node(2_000_000)));
    assert_eq!(f.node(2).unwrap(), None);
    // Filling a gap later works.
    f.write(WriteBatch {
        blocks: vec![(0, block(0, 7))],
        nodes: vec![node(0)],
        head: None,
    })
    .unwrap();
    assert_eq!(f.block(0).unwrap(), Some(block(0, 7)));
    assert_eq!(f.head(), Some(head(2_000_000)));
}

fn empty_and_large_blocks<S: Storage>(s: S) {
    let mut f = s.create([10; 32], Some([1; 32])).unwrap();
    let large = block(1, 3 << 20);
    f.write(WriteBatch {
        blocks: vec![(0, Vec::new()), (1, large.clone())],
        nodes: vec![node(0), node(1), node(2)],
        head: Some(head(2)),
    })
    .unwrap();
    f.sync().unwrap();
    assert!(f.has_block(0));
    assert_eq!(f.block(0).unwrap(), Some(Vec::new()));
    assert_eq!(f.block(1).unwrap(), Some(large));
}

/// [`Storage::create_replicas`] creates the feeds it lacks, empty and read-only, once
/// each; it leaves those it holds as they are (a writable one, one with blocks, one
/// open); what it created is there after a reopen.
fn replicas_in_one_call<S: Storage>(s: S, reopen: &mut dyn FnMut(S) -> S) {
    let [writable, written, open, new_a, new_b] = [[1; 32], [2; 32], [3; 32], [4; 32], [5; 32]];
    s.create(writable, Some([9; 32])).unwrap();
    let mut w = s.create(written, None).unwrap();
    w.write(append_batch(0, 2, 100)).unwrap();
    w.sync().unwrap();
    drop(w);
    let held_open = s.create(open, None).unwrap();
    let keys = [new_b, writable, written, open, new_a, new_b];
    assert_eq!(s.create_replicas(&keys).unwrap(), 2);
    assert_eq!(s.create_replicas(&keys).unwrap(), 0);
    drop(held_open);
    let s = reopen(s);
    assert_eq!(
        s.list().unwrap(),
        vec![writable, written, open, new_a, new_b]
    );
    for key in [new_a, new_b, open] {
        let f = s.open(&key).unwrap().unwrap();
        assert_eq!(
            (f.secret_key(), f.head(), f.has_block(0)),
            (None, None, false)
        );
    }
    assert_eq!(
        s.open(&writable).unwrap().unwrap().secret_key(),
        Some([9; 32])
    );
    let mut w = s.open(&written).unwrap().unwrap();
    assert_eq!(w.head(), Some(head(2)));
    assert_eq!(w.block(1).unwrap(), Some(block(1, 100)));
}
