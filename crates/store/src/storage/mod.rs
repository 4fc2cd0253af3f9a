//! Where a feed's bytes live: the [`Storage`] and [`FeedStorage`] traits.
//!
//! Storage deals in bytes only: blocks by index, tree nodes by flat-tree index, and the
//! signed head. It does no hashing and checks no signature; the feed layer verifies
//! everything before it hands a [`WriteBatch`] down. Implementations: [`memory`] (tests
//! and `in-memory` nodes) and [`disk`] (the default, crash safe).
//!
//! Durability contract: [`FeedStorage::write`] applies a batch so that, after a crash, the
//! feed reopens with the batch either wholly present or wholly absent, never torn, and the
//! head never covers a block or node that is not there. A batch is durable once
//! [`FeedStorage::sync`] returns (implementations may also sync inside `write`). A feed
//! made by [`Storage::create`] is durable with its first `sync` (so creating many feeds
//! costs no fsync each); a crash before that may leave it absent, never half made.

use std::any::Any;
use std::fmt;

pub mod disk;
pub mod memory;
pub mod whole;

#[cfg(test)]
pub(crate) mod conformance;

pub use disk::{DiskConfig, DiskFeed, DiskStorage, SMALL_FEED_BYTES};
pub use memory::{MemoryFeed, MemoryStorage};
pub use whole::{WholeRead, WholeRefusal, WholeWrite, WholeWritten};

/// Replace the file at `path` with `bytes`, atomically and durably: written to
/// `<path>.tmp` with permission bits `mode`, synced, renamed over `path`, and the
/// directory synced, so a crash leaves the old content or the new one. For a small file
/// rewritten whole (a node's state, a store's membership list); one writer per path.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// One node of a feed's Merkle tree, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredNode {
    /// The node's flat-tree index (even: a leaf, odd: a parent).
    pub index: u64,
    /// BLAKE2b-256 hash of the node.
    pub hash: [u8; 32],
    /// Total byte size of the blocks under the node.
    pub size: u64,
}

/// The signed head of a feed: its length, tree hash, and the writer's signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StoredHead {
    /// Number of blocks the head covers.
    pub length: u64,
    /// The tree hash (hash of the roots) at `length`.
    pub tree_hash: [u8; 32],
    /// The writer's ed25519 signature over the length and tree hash.
    pub signature: [u8; 64],
}

impl fmt::Debug for StoredHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredHead")
            .field("length", &self.length)
            .field("tree_hash", &Hex(&self.tree_hash[..4]))
            .finish_non_exhaustive()
    }
}

/// Everything one append or one verified download writes, applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// Blocks to store, by index. Indices need not be contiguous (sparse replicas).
    pub blocks: Vec<(u64, Vec<u8>)>,
    /// Tree nodes to store.
    pub nodes: Vec<StoredNode>,
    /// The new head, if the batch moves it.
    pub head: Option<StoredHead>,
}

/// What a storage holds of one feed, read without opening it ([`Storage::scan_feeds`]):
/// bytes as stored, nothing hashed or verified here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFeed {
    /// The feed's public key.
    pub key: [u8; 32],
    /// Whether a secret key is stored with it (not checked against the key).
    pub writable: bool,
    /// The latest head written, if any.
    pub head: Option<StoredHead>,
    /// The stored nodes at the head's full roots, in order, up to the first that is
    /// missing or fails its checksum (so all of them when the feed is whole).
    pub roots: Vec<StoredNode>,
    /// Blocks below the head's length stored here.
    pub stored: u64,
    /// Blocks `0..contiguous` are all stored here.
    pub contiguous: u64,
    /// Bytes of the `stored` blocks.
    pub stored_bytes: u64,
}

/// What a storage operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The operating system refused a read, write or sync.
    #[error("storage i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Bytes on disk do not decode or fail their checksum outside the tail that a crash
    /// may tear.
    #[error("storage corrupt: {0}")]
    Corrupt(String),
    /// The feed does not exist in this storage.
    #[error("feed not found in storage")]
    NotFound,
    /// A feed with this key already exists.
    #[error("feed already exists in storage")]
    Exists,
    /// A batch is beyond what this storage holds (a record over its size limit, or a
    /// block or node index out of its range); nothing of it was written.
    #[error("storage limit: {0}")]
    Limit(String),
}

/// The stored state of one feed.
pub trait FeedStorage: Send + fmt::Debug + 'static {
    /// Apply a batch atomically (see the module's durability contract).
    fn write(&mut self, batch: WriteBatch) -> Result<(), StorageError>;
    /// Apply an append atomically: like [`FeedStorage::write`] of a batch of `blocks` at
    /// indices `start..`, `nodes` and `head`, with the blocks borrowed, so the caller
    /// keeps them and storage that writes them straight out copies nothing. The default
    /// is [`FeedStorage::write_borrowed`] of the blocks by index.
    fn write_append(
        &mut self,
        start: u64,
        blocks: &[&[u8]],
        nodes: Vec<StoredNode>,
        head: StoredHead,
    ) -> Result<(), StorageError> {
        let blocks: Vec<(u64, &[u8])> = (start..).zip(blocks.iter().copied()).collect();
        self.write_borrowed(&blocks, nodes, Some(head))
    }
    /// Apply a batch like [`FeedStorage::write`] with its blocks borrowed (by index), so
    /// storage that writes them straight out copies nothing: a verified download is
    /// stored from the frame it arrived in. The default copies them into a [`WriteBatch`].
    fn write_borrowed(
        &mut self,
        blocks: &[(u64, &[u8])],
        nodes: Vec<StoredNode>,
        head: Option<StoredHead>,
    ) -> Result<(), StorageError> {
        self.write(WriteBatch {
            blocks: blocks.iter().map(|&(i, b)| (i, b.to_vec())).collect(),
            nodes,
            head,
        })
    }
    /// Make every batch written so far durable.
    fn sync(&mut self) -> Result<(), StorageError>;
    /// Start making every batch written so far durable without waiting for it (a sync
    /// on another thread, overlapping what the caller does next). Nothing is promised
    /// durable until a later [`FeedStorage::sync`] returns; that call waits for it. The
    /// default does nothing and leaves all the work to `sync`.
    fn sync_start(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
    /// The block at `index`, if stored.
    fn block(&mut self, index: u64) -> Result<Option<Vec<u8>>, StorageError>;
    /// The stored blocks from `start` on, in order: at most `end - start` of them,
    /// stopping before the first one not stored and before the one that would take the
    /// total over `max_bytes` (the first block comes whatever its size). For serving a
    /// range in one call; the default reads block by block.
    fn blocks(
        &mut self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        take_range(start, end, max_bytes, |index| self.block(index))
    }
    /// [`FeedStorage::blocks`], each block read into the buffer `buffer` gives for its
    /// length, so a caller that recycles the buffers it is done with spares an
    /// allocation per block, and the page faults of fresh memory. The buffer may hold
    /// bytes of an earlier use: an implementation overwrites every byte up to the
    /// block's length, or clears it first (a disk read resizes it to the block's length
    /// and reads over it, so recycled bytes are not zeroed again). The default reads
    /// with `blocks` and leaves `buffer` unused.
    fn blocks_into(
        &mut self,
        start: u64,
        end: u64,
        max_bytes: usize,
        buffer: &mut dyn FnMut(usize) -> Vec<u8>,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let _ = buffer;
        self.blocks(start, end, max_bytes)
    }
    /// Whether the block at `index` is stored (answered from memory, no I/O).
    fn has_block(&self, index: u64) -> bool;
    /// The tree node at flat-tree `index`, if stored.
    fn node(&mut self, index: u64) -> Result<Option<StoredNode>, StorageError>;
    /// The latest head written, if any.
    fn head(&self) -> Option<StoredHead>;
    /// The feed's secret key, for a writable feed.
    fn secret_key(&self) -> Option<[u8; 32]>;
}

/// A collection of feeds, keyed by their ed25519 public key.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// The per-feed handle this storage returns.
    type Feed: FeedStorage;
    /// Create a new, empty feed; `secret_key` makes it writable.
    fn create(
        &self,
        key: [u8; 32],
        secret_key: Option<[u8; 32]>,
    ) -> Result<Self::Feed, StorageError>;
    /// Open an existing feed, or `Ok(None)` if there is none with this key.
    fn open(&self, key: &[u8; 32]) -> Result<Option<Self::Feed>, StorageError>;
    /// The keys of every feed in this storage.
    fn list(&self) -> Result<Vec<[u8; 32]>, StorageError>;
    /// Create an empty replica (no secret key) of each of `keys` this storage does not
    /// hold yet; a feed it holds is left as it is. Returns how many it created. Each
    /// created feed is what [`Storage::create`] without a secret key makes, as durable
    /// as that (with the storage's next sync, or its close), and no handle to it is
    /// kept. The default creates them one by one; [`DiskStorage`] adds the small ones
    /// to the shared database in one pass.
    fn create_replicas(&self, keys: &[[u8; 32]]) -> Result<usize, StorageError> {
        create_each(self, keys)
    }
    /// Calls `each` with what is stored of the feeds this storage can read in one pass,
    /// without opening them: some or all of its feeds, each at most once; a feed left
    /// out is learned by opening it. An unreadable feed is left out; an error is a
    /// failure of the whole storage. The default leaves every feed out.
    fn scan_feeds(&self, each: &mut dyn FnMut(StoredFeed)) -> Result<(), StorageError> {
        let _ = each;
        Ok(())
    }
    /// Store each of `feeds` whole (see [`whole`]): a feed that holds nothing, or does
    /// not exist (it is created as a replica), is written; one that holds it complete
    /// at least as far is left as it is; any other is refused, untouched. Each is
    /// answered in order; every feed written is durable when this returns, and a crash
    /// before leaves each written feed whole or absent. The caller must hold no handle
    /// to these feeds from this storage (a handle's state would not see the write).
    /// The default writes and syncs feed by feed; [`DiskStorage`] writes the small
    /// ones in one transaction.
    fn write_whole(&self, feeds: &[WholeWrite]) -> Result<Vec<WholeWritten>, StorageError> {
        whole::write_each(self, feeds)
    }
    /// Each feed of `keys` read whole: its latest head and every block it covers, if it
    /// stores them all and they take at most `max_bytes`; `None` otherwise (or when
    /// there is no such feed). The head and blocks read are the head's (blocks below a
    /// head never change). The default reads feed by feed; [`DiskStorage`] reads the
    /// small ones in one read transaction.
    fn read_whole(
        &self,
        keys: &[[u8; 32]],
        max_bytes: usize,
    ) -> Result<Vec<Option<WholeRead>>, StorageError> {
        whole::read_each(self, keys, max_bytes)
    }
}

/// [`Storage::create_replicas`] feed by feed, with [`Storage::create`].
pub(crate) fn create_each<S: Storage + ?Sized>(
    storage: &S,
    keys: &[[u8; 32]],
) -> Result<usize, StorageError> {
    let mut created = 0;
    for key in keys {
        match storage.create(*key, None) {
            Ok(_) => created += 1,
            Err(StorageError::Exists) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}

/// Write an append of `blocks` at indices `start..`, with its `node_count` nodes and its
/// head made by `hash` (once if this returns Ok): on a [`DiskFeed`], its fast path
/// [`DiskFeed::write_append_hashing`], which writes the blocks while `hash` runs; on any
/// other storage, `hash`, then [`FeedStorage::write_append`]. The choice is made by type
/// at compile time, so the trait carries no disk-only method.
pub(crate) fn write_append_hashing<F: FeedStorage>(
    feed: &mut F,
    start: u64,
    blocks: &[&[u8]],
    node_count: usize,
    hash: &mut dyn FnMut() -> (Vec<StoredNode>, StoredHead),
) -> Result<(), StorageError> {
    if let Some(disk) = (feed as &mut dyn Any).downcast_mut::<DiskFeed>() {
        return disk.write_append_hashing(start, blocks, node_count, hash);
    }
    let (nodes, head) = hash();
    feed.write_append(start, blocks, nodes, head)
}

/// The blocks [`FeedStorage::blocks`] answers, looked up by `block`: those from `start`
/// on, at most `end - start`, stopping before the first one not stored and before the one
/// that would take the total over `max_bytes` (the first comes whatever its size).
pub(crate) fn take_range<B: AsRef<[u8]>>(
    start: u64,
    end: u64,
    max_bytes: usize,
    mut block: impl FnMut(u64) -> Result<Option<B>, StorageError>,
) -> Result<Vec<B>, StorageError> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for index in start..end {
        match block(index)? {
            Some(b) if out.is_empty() || bytes + b.as_ref().len() <= max_bytes => {
                bytes += b.as_ref().len();
                out.push(b);
            }
            _ => break,
        }
    }
    Ok(out)
}

/// A map keyed by block or node index. Every block and node written goes through one
/// (three inserts per 1 KiB block), where SipHash and its setup were ~10 % of a
/// replica's CPU; the keys are indices of verified data, so a multiplicative hash is
/// enough.
pub(crate) type IndexMap<V> =
    std::collections::HashMap<u64, V, std::hash::BuildHasherDefault<IndexHasher>>;

/// Fibonacci hashing of a `u64` (the high bits, which hashbrown's control bytes use, mix
/// every bit of the key; the low bits of consecutive keys stay distinct).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IndexHasher(u64);

impl std::hash::Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b) ^ self.0.rotate_left(8));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
