//! The Merkle tree: flat-tree indexing and hypercore-crypto 3.x node hashes.
//!
//! Blocks are the leaves, at even flat-tree indices (`2 * block`); parents sit at odd
//! indices (see the npm package `flat-tree`). A tree of `length` blocks has the full
//! roots [`full_roots`]`(length)`, and its tree hash is [`tree_hash`] over them. Every
//! hash is BLAKE2b-256 with a one-byte type prefix, and sizes and indices are encoded as
//! compact-encoding's `uint64`, which is 8 bytes little-endian (not its varint `uint`):
//!
//! - leaf: `0x00 ‖ u64le(len) ‖ data`
//! - parent: `0x01 ‖ u64le(left.size + right.size) ‖ left.hash ‖ right.hash`
//! - tree: `0x02 ‖ (root.hash ‖ u64le(root.index) ‖ u64le(root.size))*`
//!
//! The hashes are computed with `blake2b_simd` (AVX2 when the CPU has it, portable
//! otherwise), and the leaves of a batch four at a time with its `many` interface: the
//! same bytes as any BLAKE2b-256, ~2.5x faster here than RustCrypto `blake2` for 64 KiB
//! leaves (`cargo bench -p replic8-store --bench hash`, numbers in `docs/PERFORMANCE.md`).

use serde::{Deserialize, Serialize};

use crate::storage::StoredNode;

/// One node of the tree: flat-tree index, hash, and byte size of the blocks under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Flat-tree index (even: a leaf, odd: a parent).
    pub index: u64,
    /// BLAKE2b-256 hash of the node.
    pub hash: [u8; 32],
    /// Total byte size of the blocks under the node.
    pub size: u64,
}

impl From<StoredNode> for Node {
    fn from(n: StoredNode) -> Self {
        Node {
            index: n.index,
            hash: n.hash,
            size: n.size,
        }
    }
}

impl From<Node> for StoredNode {
    fn from(n: Node) -> Self {
        StoredNode {
            index: n.index,
            hash: n.hash,
            size: n.size,
        }
    }
}

/// A BLAKE2b-256 state (no key, no salt).
fn hasher() -> blake2b_simd::State {
    blake2b_simd::Params::new().hash_length(32).to_state()
}

fn finish(h: &blake2b_simd::State) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finalize().as_bytes());
    out
}

/// A state that has taken a leaf's prefix (`0x00 ‖ u64le(len)`).
fn leaf_state(len: usize) -> blake2b_simd::State {
    let mut h = hasher();
    h.update(&[0u8]);
    h.update(&(len as u64).to_le_bytes());
    h
}

/// The hash of a leaf holding `data`.
pub fn leaf_hash(data: &[u8]) -> [u8; 32] {
    let mut h = leaf_state(data.len());
    h.update(data);
    finish(&h)
}

/// The leaf node for block `block` holding `data`.
pub fn leaf(block: u64, data: &[u8]) -> Node {
    Node {
        index: 2 * block,
        hash: leaf_hash(data),
        size: data.len() as u64,
    }
}

/// The parent of two sibling nodes (in either order).
pub fn parent(a: &Node, b: &Node) -> Node {
    let (left, right) = if a.index < b.index { (a, b) } else { (b, a) };
    let size = left.size.wrapping_add(right.size);
    let mut h = hasher();
    h.update(&[1u8]);
    h.update(&size.to_le_bytes());
    h.update(&left.hash);
    h.update(&right.hash);
    Node {
        index: flat::parent(left.index),
        hash: finish(&h),
        size,
    }
}

/// Add the next `leaf` to a tree whose full roots are `roots`: merge it with every root
/// it completes a parent with, leaving `roots` the full roots of the longer tree. Every
/// new node (the leaf, then each parent made) is handed to `new_node`, in that order.
pub fn push_leaf(roots: &mut Vec<Node>, leaf: Node, mut new_node: impl FnMut(Node)) {
    new_node(leaf);
    let mut node = leaf;
    while let Some(left) = roots.pop_if(|r| r.index == flat::sibling(node.index)) {
        node = parent(&left, &node);
        new_node(node);
    }
    roots.push(node);
}

/// The tree hash over a tree's full roots (in flat-tree order).
pub fn tree_hash(roots: &[Node]) -> [u8; 32] {
    let mut h = hasher();
    h.update(&[2u8]);
    for r in roots {
        h.update(&r.hash);
        h.update(&r.index.to_le_bytes());
        h.update(&r.size.to_le_bytes());
    }
    finish(&h)
}

/// Flat-tree indices of the full roots of a tree of `length` blocks, left to right
/// (`flat-tree`'s `fullRoots(2 * length)`).
pub fn full_roots(length: u64) -> Vec<u64> {
    let mut roots = Vec::with_capacity(64);
    let mut remaining = length;
    let mut offset = 0u64; // first block not yet covered
    while remaining > 0 {
        let factor = 1u64 << (63 - remaining.leading_zeros());
        // A subtree of `factor` blocks starting at block `offset`.
        roots.push(2 * offset + factor - 1);
        offset += factor;
        remaining -= factor;
    }
    roots
}

/// Leaves shorter than this are hashed from a copy that puts each leaf's 9-byte prefix
/// right before its data ([`blake2b_simd::many::hash_many`]): then every compression of
/// every leaf, its first and last included, runs four lanes at once. Fed the prefix and
/// the data separately (`update_many`), a leaf's first block (prefix plus data) and its
/// last are compressed one lane at a time: 2 of a 1 KiB leaf's 9 compressions, about
/// half of its hashing time. For longer leaves those two are a small share, and the
/// copy would cost more than it saves.
const PREFIXED_MAX: usize = 16 * 1024;

/// Short leaves copied (prefixed) and hashed per group, so the copy stays in cache.
const PREFIXED_GROUP: usize = 32;

/// Bytes a parent's hash covers: `0x01 ‖ u64le(size) ‖ left.hash ‖ right.hash`.
const PARENT_INPUT: usize = 1 + 8 + 32 + 32;

/// Hash `blocks` into leaves, four at a time (SIMD lanes), on the calling thread.
///
/// Not split over two threads: with this hasher one thread does ~1.1 GiB/s, over twice
/// what the disk syncs, and on this shared 2-core machine a second thread made appends
/// slower (`append/feed/64KiB/batch_64` on tmpfs: 372–396 MiB/s with two threads for
/// 4 MiB batches, 456–562 MiB/s with one; `PERFORMANCE.md`, "store: append").
pub fn hash_leaves<B: AsRef<[u8]> + Sync>(first_block: u64, blocks: &[B]) -> Vec<Node> {
    let mut out = Vec::with_capacity(blocks.len());
    let mut scratch = Vec::new();
    let mut at = 0;
    while at < blocks.len() {
        let short = blocks[at].as_ref().len() < PREFIXED_MAX;
        let run = blocks[at..]
            .iter()
            .take(if short { PREFIXED_GROUP } else { usize::MAX })
            .take_while(|b| (b.as_ref().len() < PREFIXED_MAX) == short)
            .count();
        let first = first_block + at as u64;
        let part = &blocks[at..at + run];
        if short {
            leaves_prefixed(first, part, &mut scratch, &mut out);
        } else {
            leaves_many(first, part, &mut out);
        }
        at += run;
    }
    out
}

/// Hash `part` into leaves starting at block `first`, several leaves at once (SIMD lanes).
fn leaves_many<B: AsRef<[u8]>>(first: u64, part: &[B], out: &mut Vec<Node>) {
    let mut states: Vec<blake2b_simd::State> =
        part.iter().map(|b| leaf_state(b.as_ref().len())).collect();
    blake2b_simd::many::update_many(states.iter_mut().zip(part.iter().map(AsRef::as_ref)));
    out.extend(states.iter().zip(part).enumerate().map(|(i, (h, b))| Node {
        index: 2 * (first + i as u64),
        hash: finish(h),
        size: b.as_ref().len() as u64,
    }));
}

/// Like [`leaves_many`], for short leaves: each leaf's whole input (prefix and data) is
/// copied into `scratch`, back to back, and hashed in one `hash_many` pass.
fn leaves_prefixed<B: AsRef<[u8]>>(
    first: u64,
    part: &[B],
    scratch: &mut Vec<u8>,
    out: &mut Vec<Node>,
) {
    scratch.clear();
    for b in part {
        let b = b.as_ref();
        scratch.push(0);
        scratch.extend_from_slice(&(b.len() as u64).to_le_bytes());
        scratch.extend_from_slice(b);
    }
    let params = blake2b_simd::Params::new().hash_length(32).clone();
    let mut jobs = Vec::with_capacity(part.len());
    let mut from = 0;
    for b in part {
        let to = from + 9 + b.as_ref().len();
        jobs.push(blake2b_simd::many::HashManyJob::new(
            &params,
            &scratch[from..to],
        ));
        from = to;
    }
    blake2b_simd::many::hash_many(jobs.iter_mut());
    out.extend(jobs.iter().zip(part).enumerate().map(|(i, (job, b))| Node {
        index: 2 * (first + i as u64),
        hash: hash32(&job.to_hash()),
        size: b.as_ref().len() as u64,
    }));
}

fn hash32(h: &blake2b_simd::Hash) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(h.as_bytes());
    out
}

/// Append `leaves` (consecutive, the first one the tree's next block) to a tree whose
/// full roots are `roots`: returns every new node, the leaves first, then the parents
/// depth by depth, and leaves `roots` the full roots of the longer tree. The same nodes
/// as [`push_leaf`] of each leaf in turn (in another order), but the parents of one
/// depth are hashed four at a time ([`blake2b_simd::many::hash_many`]).
pub fn append_leaves(roots: &mut Vec<Node>, leaves: Vec<Node>) -> Vec<Node> {
    let mut all = Vec::with_capacity(2 * leaves.len() + 64);
    // The last node of a depth that has no right sibling yet: a root, deepest last.
    let mut last_of_depth = Vec::new();
    let mut level = leaves;
    let mut scratch = Vec::new();
    while let Some(&head) = level.first() {
        all.extend_from_slice(&level);
        let mut pairs = Vec::with_capacity(level.len() / 2 + 1);
        let mut k = 0;
        if flat::offset(head.index) % 2 == 1 {
            // A right child: its left sibling is the tree's last root (full roots, so
            // it must be; if not, the node stays a root, as push_leaf would leave it).
            match roots.pop_if(|r| r.index == flat::sibling(head.index)) {
                Some(left) => pairs.push((left, head)),
                None => last_of_depth.push(head),
            }
            k = 1;
        }
        while k + 1 < level.len() {
            pairs.push((level[k], level[k + 1]));
            k += 2;
        }
        if k < level.len() {
            last_of_depth.push(level[k]);
        }
        level = parents(&pairs, &mut scratch);
    }
    roots.extend(last_of_depth.into_iter().rev());
    all
}

/// The parents of `pairs` (left, right), hashed four at a time.
fn parents(pairs: &[(Node, Node)], scratch: &mut Vec<u8>) -> Vec<Node> {
    scratch.clear();
    for (left, right) in pairs {
        scratch.push(1);
        scratch.extend_from_slice(&left.size.wrapping_add(right.size).to_le_bytes());
        scratch.extend_from_slice(&left.hash);
        scratch.extend_from_slice(&right.hash);
    }
    let params = blake2b_simd::Params::new().hash_length(32).clone();
    let mut jobs: Vec<_> = scratch
        .chunks_exact(PARENT_INPUT)
        .map(|input| blake2b_simd::many::HashManyJob::new(&params, input))
        .collect();
    blake2b_simd::many::hash_many(jobs.iter_mut());
    pairs
        .iter()
        .zip(&jobs)
        .map(|((left, right), job)| Node {
            index: flat::parent(left.index),
            hash: hash32(&job.to_hash()),
            size: left.size.wrapping_add(right.size),
        })
        .collect()
}

/// Flat-tree index arithmetic (the npm package `flat-tree`).
pub mod flat {
    /// Depth of a node: 0 for leaves.
    pub fn depth(index: u64) -> u32 {
        index.trailing_ones()
    }

    /// Offset of a node within its depth.
    pub fn offset(index: u64) -> u64 {
        index >> (depth(index) + 1)
    }

    /// Index of the node at `depth` and `offset`.
    pub fn index(depth: u32, offset: u64) -> u64 {
        (offset << (depth + 1)) | ((1u64 << depth) - 1)
    }

    /// The parent of `index`.
    pub fn parent(index: u64) -> u64 {
        let d = depth(index);
        self::index(d + 1, offset(index) >> 1)
    }

    /// The sibling of `index`.
    pub fn sibling(index: u64) -> u64 {
        let d = depth(index);
        self::index(d, offset(index) ^ 1)
    }

    /// The two children of a parent, or `None` for a leaf.
    pub fn children(index: u64) -> Option<(u64, u64)> {
        let d = depth(index);
        if d == 0 {
            return None;
        }
        let o = offset(index) * 2;
        Some((self::index(d - 1, o), self::index(d - 1, o + 1)))
    }

    /// The blocks under a node, as `[start, end)`.
    pub fn block_span(index: u64) -> (u64, u64) {
        let d = depth(index);
        let start = offset(index) << d;
        (start, start + (1u64 << d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_tree_basics() {
        assert_eq!(flat::parent(0), 1);
        assert_eq!(flat::parent(2), 1);
        assert_eq!(flat::parent(1), 3);
        assert_eq!(flat::parent(5), 3);
        assert_eq!(flat::sibling(0), 2);
        assert_eq!(flat::sibling(1), 5);
        assert_eq!(flat::children(3), Some((1, 5)));
        assert_eq!(flat::children(4), None);
        assert_eq!(flat::block_span(3), (0, 4));
        assert_eq!(flat::block_span(11), (4, 8));
        assert_eq!(flat::block_span(6), (3, 4));
    }

    #[test]
    fn full_roots_match_flat_tree() {
        assert_eq!(full_roots(0), Vec::<u64>::new());
        assert_eq!(full_roots(1), vec![0]);
        assert_eq!(full_roots(3), vec![1, 4]);
        assert_eq!(full_roots(5), vec![3, 8]);
        assert_eq!(full_roots(7), vec![3, 9, 12]);
        assert_eq!(full_roots(16), vec![15]);
    }

    #[test]
    fn many_leaves_equal_one_at_a_time() {
        // Sizes around blake2b's 128-byte block and the 9-byte prefix, empty, and large.
        let blocks: Vec<Vec<u8>> = (0..100u8)
            .map(|i| {
                vec![i; [0, 1, 118, 119, 120, 127, 128, 129, 8 * 1024, 65_536][i as usize % 10]]
            })
            .collect();
        let par = hash_leaves(10, &blocks);
        let ser: Vec<Node> = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| leaf(10 + i as u64, b))
            .collect();
        assert_eq!(par, ser);
        // And both equal an independent BLAKE2b-256 (RustCrypto).
        use blake2::digest::consts::U32;
        use blake2::{Blake2b, Digest};
        for (b, node) in blocks.iter().zip(&par) {
            let mut h = Blake2b::<U32>::new();
            h.update([0u8]);
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
            assert_eq!(node.hash, <[u8; 32]>::from(h.finalize()));
        }
    }

    #[test]
    fn append_leaves_equals_push_leaf() {
        // Every start (roots of every shape up to 70 blocks) and batch length up to 70,
        // leaves of mixed sizes (short ones prefixed, long ones not).
        let blocks: Vec<Vec<u8>> = (0..140u32)
            .map(|i| vec![i as u8; [0, 1, 119, 1024, 20_000][i as usize % 5]])
            .collect();
        let all = hash_leaves(0, &blocks);
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(all[i], leaf(i as u64, b));
        }
        let mut prefix_roots = vec![Vec::new()];
        for l in &all[..70] {
            let mut r: Vec<Node> = prefix_roots.last().cloned().unwrap_or_default();
            push_leaf(&mut r, *l, |_| {});
            prefix_roots.push(r);
        }
        for start in 0..70usize {
            for n in 0..70usize {
                let leaves = hash_leaves(start as u64, &blocks[start..start + n]);
                assert_eq!(leaves, all[start..start + n]);
                let mut one = prefix_roots[start].clone();
                let mut expected = Vec::new();
                for l in &leaves {
                    push_leaf(&mut one, *l, |x| expected.push(x));
                }
                let mut many = prefix_roots[start].clone();
                let mut got = append_leaves(&mut many, leaves);
                assert_eq!(many, one, "roots, start {start}, n {n}");
                let key = |x: &Node| x.index;
                expected.sort_by_key(key);
                got.sort_by_key(key);
                assert_eq!(got, expected, "nodes, start {start}, n {n}");
            }
        }
    }
}
