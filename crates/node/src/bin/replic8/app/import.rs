//! Hashing a file as a feed would hold it, without storing anything or needing a key:
//! `replic8 feed import FILE --block-size N --only-hash`.
//!
//! Built only with the `cli` feature (the default), for the `replic8` binary.

use std::io::Read;

use replic8_store::tree::{self, Node};
use replic8_store::MAX_BLOCK_SIZE;
use serde::Serialize;

/// What hashing a file as a feed can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImportError {
    /// The block size is zero or larger than a feed accepts.
    #[error("block size {size} is out of range (1 to {max} bytes)")]
    BlockSize {
        /// The block size asked for.
        size: usize,
        /// The largest block a feed accepts.
        max: usize,
    },
    /// The input could not be read.
    #[error("reading input: {0}")]
    Read(#[from] std::io::Error),
}

/// The tree a feed holding the input's bytes would have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct TreeSummary {
    /// The tree hash (hex), as a feed's signed head would carry it.
    pub(crate) tree_hash: String,
    /// Number of blocks.
    pub(crate) length: u64,
    /// Number of bytes.
    pub(crate) bytes: u64,
    /// The block size the input was split with (the last block may be shorter).
    pub(crate) block_size: usize,
}

/// The tree hash of blocks pushed one after the other, as a feed holding them would sign
/// it. Memory use is one root per bit of the length.
#[derive(Debug, Clone, Default)]
pub(crate) struct TreeHasher {
    roots: Vec<Node>,
    length: u64,
    bytes: u64,
}

impl TreeHasher {
    /// No blocks yet.
    pub(crate) fn new() -> Self {
        TreeHasher::default()
    }

    /// The next block.
    pub(crate) fn push(&mut self, block: &[u8]) {
        tree::push_leaf(&mut self.roots, tree::leaf(self.length, block), |_| {});
        self.length += 1;
        self.bytes += block.len() as u64;
    }

    /// Blocks pushed.
    pub(crate) fn length(&self) -> u64 {
        self.length
    }

    /// Bytes pushed.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The tree hash of the blocks pushed so far.
    pub(crate) fn tree_hash(&self) -> [u8; 32] {
        tree::tree_hash(&self.roots)
    }
}

/// Split `input` into blocks of `block_size` bytes and compute the feed's tree hash.
///
/// Memory use is one block plus one root per bit of the length, whatever the input's size.
pub(crate) fn hash_only(
    mut input: impl Read,
    block_size: usize,
) -> Result<TreeSummary, ImportError> {
    if block_size == 0 || block_size > MAX_BLOCK_SIZE {
        return Err(ImportError::BlockSize {
            size: block_size,
            max: MAX_BLOCK_SIZE,
        });
    }
    let mut hasher = TreeHasher::new();
    let mut block = vec![0u8; block_size];
    loop {
        let n = read_full(&mut input, &mut block)?;
        if n == 0 {
            break;
        }
        hasher.push(&block[..n]);
        if n < block_size {
            break;
        }
    }
    Ok(TreeSummary {
        tree_hash: hex::encode(hasher.tree_hash()),
        length: hasher.length(),
        bytes: hasher.bytes(),
        block_size,
    })
}

/// Fill `buf` from `input` unless it ends first; returns how many bytes were read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use replic8_store::storage::memory::MemoryStorage;
    use replic8_store::{Feed, FeedSecret};

    use super::*;

    /// The tree hash a real feed signs after appending the same blocks.
    fn feed_tree_hash(data: &[u8], block_size: usize) -> (String, u64) {
        let storage = MemoryStorage::new();
        let mut feed = Feed::create(&storage, FeedSecret::generate()).unwrap();
        let blocks: Vec<&[u8]> = data.chunks(block_size).collect();
        feed.append_batch(&blocks).unwrap();
        let head = feed.head().expect("a feed with blocks has a head");
        (hex::encode(head.tree_hash), head.length)
    }

    #[test]
    fn matches_the_tree_a_feed_signs() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for (len, block_size) in [(1, 1), (3, 1), (5000, 64), (10_000, 1000), (9_999, 1000)] {
            let summary = hash_only(&data[..len], block_size).unwrap();
            let (hash, length) = feed_tree_hash(&data[..len], block_size);
            assert_eq!(
                summary.tree_hash, hash,
                "len {len}, block size {block_size}"
            );
            assert_eq!(summary.length, length);
            assert_eq!(summary.bytes, len as u64);
        }
    }

    #[test]
    fn empty_input_has_no_blocks() {
        let summary = hash_only(&b""[..], 16).unwrap();
        assert_eq!(summary.length, 0);
        assert_eq!(summary.tree_hash, hex::encode(tree::tree_hash(&[])));
    }

    #[test]
    fn block_size_is_bounded() {
        for size in [0, MAX_BLOCK_SIZE + 1] {
            let err = hash_only(&b"x"[..], size).unwrap_err();
            assert!(matches!(err, ImportError::BlockSize { .. }), "{err}");
        }
    }

    #[test]
    fn short_reads_do_not_change_the_blocks() {
        /// A reader that hands out at most 3 bytes per call.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(3).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let data = [42u8; 1000];
        assert_eq!(
            hash_only(Trickle(&data), 100).unwrap(),
            hash_only(&data[..], 100).unwrap()
        );
    }
}
