//! [`DiskStorage`]: feeds in a directory, crash safe. The default storage.
//!
//! Small feeds (up to [`DiskConfig::small_feed_bytes`] of blocks and nodes) live
//! together in one database, `small.redb` (`small`, and
//! `docs/decisions/165-small-feeds-share-a-database.md`); a write that would take a feed
//! past that first moves it into a directory of its own, laid out as below (why this
//! shape, with the recovery steps and the fsync order:
//! `docs/decisions/100-storage-per-feed-log.md`):
//!
//! ```text
//! <root>/LOCK                       held with an exclusive file lock while open
//! <root>/small.redb                 the small feeds (meta, head, blocks, nodes)
//! <root>/feeds/<hh>/<key hex>/meta  public key, secret key (written once, at create)
//!                             log   append-only batch records: the source of truth
//!                             tree  tree-node slots, 48 bytes per flat-tree index
//!                             index block slots, 24 bytes per block index
//!                             state checkpoint: log offset applied to the slot files,
//!                                   head, bitfield of stored blocks
//! ```
//!
//! Every [`WriteBatch`] becomes one checksummed record appended to `log`; a crash leaves
//! a record whole or torn, and a torn record at the tail is cut on open, so a batch is all
//! or nothing and the head (inside the record) never covers absent data. The slot files
//! are a derived index written only at checkpoints, after the log is synced; records
//! after the last checkpoint are replayed into memory on open.
//!
//! Files, lower layers first (each imports only those above it, and the feed type
//! `FeedInner` for the last five, which add its methods):
//! - `crc`: CRC-32 of bytes given as pieces with known checksums.
//! - `bitfield`: which blocks a feed stores.
//! - `index`: the recent-record index (`Recent`), by block or node index.
//! - `files`: small file helpers (bounded read, vectored write, slots, directory sync).
//! - `cache`: the open-file cache shared by all feeds.
//! - `format`: the byte layout of `meta`, `log` records, slots and `state`.
//! - `dirs`: a feed's directory (named by its key under a fan of its first byte), which
//!   fans exist, and making a new feed's directory whole or not at all.
//! - `checkpoint`: the unindexed entries and the checkpoint thread.
//! - `small`: the shared database of small feeds.
//! - `recovery`: open (load `state`, replay the log, cut a torn tail).
//! - `sync`: the feed's sync (the log's fsync, in the background too) and when a
//!   checkpoint starts.
//! - `append`: writes, among them the overlapped append.
//! - `read`: block, range and node reads.
//! - `layout`: which of the two layouts a write goes to; a small feed moving out.
//! - this file: [`DiskStorage`], [`DiskFeed`], opening and creating feeds, and which
//!   layout each read goes to.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::whole::{self, WholeRead, WholeRefusal, WholeWrite, WholeWritten};
use super::{FeedStorage, Storage, StorageError, StoredFeed, StoredHead, StoredNode, WriteBatch};

mod bitfield;
mod cache;
mod checkpoint;
mod crc;
mod dirs;
mod files;
mod format;
mod index;

mod append;
mod layout;
mod read;
mod recovery;
mod small;
mod sync;

use bitfield::Bitfield;
use cache::{FileCache, FileKind};
use checkpoint::Unindexed;
use dirs::{hex, parse_hex};
use files::{corrupt, for_each_in_subdirs, lock, read_bounded, sync_dir};
use format::{decode_meta, Record, LOG_HEADER_LEN, META_LEN};
pub use format::{MAX_BLOCK_INDEX, MAX_NODE_INDEX, MAX_RECORD_BYTES};
use small::SmallFeeds;

/// Tuning for a [`DiskStorage`].
#[derive(Debug, Clone, Copy)]
pub struct DiskConfig {
    /// Most file handles kept open at once across all feeds (least recently used are
    /// closed first). Each active feed uses up to three (log, tree, index).
    pub max_open_files: usize,
    /// Log bytes after which a `sync` also checkpoints the slot files, bounding both the
    /// memory a feed holds for unindexed records and the replay on open.
    pub checkpoint_bytes: u64,
    /// Unindexed blocks plus nodes after which a `sync` also checkpoints.
    pub checkpoint_entries: usize,
    /// Bytes of blocks (plus 48 per tree node) up to which a feed lives in the shared
    /// database rather than in a directory of its own; a write that would take it past
    /// this moves it out first. 0 gives every new feed its own directory (the layout
    /// before the shared one). Feeds already stored open where they are whatever this is.
    pub small_feed_bytes: u64,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            // Well under the usual soft limit of 1024 descriptors, leaving room for sockets.
            max_open_files: 256,
            // Replaying 64 MiB on open takes well under a second; checkpoint cost (five
            // fsyncs) is then a small fraction of the time spent writing that much.
            checkpoint_bytes: 64 << 20,
            // About 6 MB of in-memory index per active feed at most.
            checkpoint_entries: 1 << 16,
            small_feed_bytes: SMALL_FEED_BYTES,
        }
    }
}

/// The default [`DiskConfig::small_feed_bytes`]: 64 KiB, where appends start to be
/// written on a helper thread while they are hashed (the bulk path), and where a feed's
/// own file set (a directory and up to five files of at least one 4 KiB filesystem block
/// each) stops costing as much as its data.
pub const SMALL_FEED_BYTES: u64 = 64 << 10;

/// Feeds stored in a directory, one sub-directory per feed.
///
/// Cheap to clone; clones share the open-file cache and the feeds. Only one
/// `DiskStorage` (in any process) may have a directory open at a time: the second gets
/// an error (`LOCK` is held with an exclusive lock).
#[derive(Debug, Clone)]
pub struct DiskStorage {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    feeds_dir: PathBuf,
    config: DiskConfig,
    files: Mutex<FileCache>,
    live: Mutex<HashMap<[u8; 32], Weak<Mutex<FeedInner>>>>,
    next_id: AtomicU64,
    small: SmallFeeds,
    /// Declared last, so dropped last: the next process that takes the lock finds every
    /// file closed, the small-feed database's own lock included.
    _lock: File,
}

/// One feed of a [`DiskStorage`]. Handles to the same feed share its state.
#[derive(Debug, Clone)]
pub struct DiskFeed {
    inner: Arc<Mutex<FeedInner>>,
}

#[derive(Debug)]
struct FeedInner {
    shared: Arc<Shared>,
    id: u64,
    key: [u8; 32],
    dir: PathBuf,
    secret_key: Option<[u8; 32]>,
    head: Option<StoredHead>,
    bitfield: Bitfield,
    /// End of the log (where the next record goes); 0 until the log exists.
    log_len: u64,
    /// Log offset up to which the slot files hold every record (the checkpoint).
    applied: u64,
    /// Blocks and nodes of records after `applied`, not yet in `index` and `tree`, and
    /// the checkpoint being written, if any.
    unindexed: Unindexed,
    /// Records were written after the last `sync`.
    unsynced: bool,
    /// The directories and `meta` must be synced (after create or open).
    needs_dir_sync: bool,
    /// A write failed half way, or a sync failed; the feed refuses writes and syncs
    /// until it is reopened.
    failed: bool,
    /// Scratch buffer for record headers and entries.
    scratch: Vec<u8>,
    /// A log sync running on its own thread, started by `sync_start`.
    pending: Option<sync::PendingSync>,
    /// The feed lives in the shared database (`small`), not in `dir`.
    small: bool,
    /// Bytes the feed takes in the shared database ([`small::stored_bytes`]).
    small_bytes: u64,
    /// The shared database's commit that holds the feed's last write.
    small_commit: u64,
    /// The feed moved out of the shared database holding nothing and its row is still
    /// there, to be removed once its directory is durable.
    rows_left: bool,
}

/// How long opening waits for the directory's lock before it reports the directory in
/// use. A lock can be held for a moment by a process that does not use the directory:
/// a child forked by this process (its `Command`s included) holds a copy of every open
/// file, the lock's too, until it runs its program; a storage dropped in another
/// process that is exiting. Half a second covers those and still answers a second
/// daemon on the same directory at once for a person (decision 196).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl DiskStorage {
    /// Open (creating if needed) the storage in directory `root`, with default tuning.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(root, DiskConfig::default())
    }

    /// Open (creating if needed) the storage in directory `root`.
    pub fn open_with(root: impl AsRef<Path>, config: DiskConfig) -> Result<Self, StorageError> {
        let root = root.as_ref().to_path_buf();
        let feeds_dir = root.join("feeds");
        let fresh = !feeds_dir.exists();
        fs::create_dir_all(&feeds_dir)?;
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join("LOCK"))?;
        let waited_since = std::time::Instant::now();
        loop {
            match lock_file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if waited_since.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(LOCK_WAIT / 50);
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(StorageError::Io(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!("{} is in use by another storage", root.display()),
                    )))
                }
                Err(fs::TryLockError::Error(e)) => return Err(e.into()),
            }
        }
        if fresh {
            sync_dir(&root)?;
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        // Opened after the lock is held: redb takes its own lock too, and the first
        // storage's error should be the one above.
        let small = SmallFeeds::open(&root.join(small::FILE_NAME))?;
        let storage = Self {
            shared: Arc::new(Shared {
                root,
                feeds_dir,
                config,
                _lock: lock_file,
                files: Mutex::new(FileCache::default()),
                live: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                small,
            }),
        };
        recovery::remove_leftovers(&storage.shared.feeds_dir)?;
        Ok(storage)
    }

    /// The directory this storage lives in.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Number of file handles held open right now (at most
    /// [`DiskConfig::max_open_files`], plus those in use by a running operation).
    pub fn open_files(&self) -> usize {
        lock(&self.shared.files).len()
    }

    fn feed_dir(&self, key: &[u8; 32]) -> PathBuf {
        self.shared.feed_dir(key)
    }

    fn new_inner(
        &self,
        key: [u8; 32],
        dir: PathBuf,
        secret_key: Option<[u8; 32]>,
    ) -> Arc<Mutex<FeedInner>> {
        Arc::new(Mutex::new(FeedInner::new(
            &self.shared,
            key,
            dir,
            secret_key,
        )))
    }
}

impl Storage for DiskStorage {
    type Feed = DiskFeed;

    fn create(
        &self,
        key: [u8; 32],
        secret_key: Option<[u8; 32]>,
    ) -> Result<DiskFeed, StorageError> {
        let mut live = lock(&self.shared.live);
        if live.get(&key).is_some_and(|w| w.strong_count() > 0) {
            return Err(StorageError::Exists);
        }
        let dir = self.feed_dir(&key);
        let small = &self.shared.small;
        let inner = if self.shared.config.small_feed_bytes > 0 {
            if dir.exists() {
                return Err(StorageError::Exists);
            }
            let commit = small.create(&key, secret_key.as_ref())?;
            let inner = self.new_inner(key, dir, secret_key);
            {
                let mut i = lock(&inner);
                i.small = true;
                i.small_commit = commit;
                i.needs_dir_sync = false;
            }
            inner
        } else {
            if small.contains(&key)? {
                return Err(StorageError::Exists);
            }
            let dir = self
                .shared
                .make_feed_dir(&key, secret_key.as_ref(), |_| Ok(()))?;
            self.new_inner(key, dir, secret_key)
        };
        live.insert(key, Arc::downgrade(&inner));
        Ok(DiskFeed { inner })
    }

    fn open(&self, key: &[u8; 32]) -> Result<Option<DiskFeed>, StorageError> {
        let mut live = lock(&self.shared.live);
        if let Some(inner) = live.get(key).and_then(Weak::upgrade) {
            return Ok(Some(DiskFeed { inner }));
        }
        let dir = self.feed_dir(key);
        let meta_path = dir.join("meta");
        let meta = match read_bounded(&meta_path, META_LEN as u64) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let Some(loaded) = self.shared.small.load(key)? else {
                    return Ok(None);
                };
                let inner = self.new_inner(*key, dir, loaded.secret_key);
                {
                    let mut i = lock(&inner);
                    i.small = true;
                    i.small_bytes = loaded.bytes;
                    i.head = loaded.head;
                    i.bitfield.set_all(loaded.blocks.into_iter());
                    i.needs_dir_sync = false;
                }
                live.insert(*key, Arc::downgrade(&inner));
                return Ok(Some(DiskFeed { inner }));
            }
            Err(e) => return Err(e.into()),
        };
        // A crash after a small feed moved into its directory and before its rows were
        // removed leaves both: the directory has everything (it was synced before it
        // was renamed into place).
        if self.shared.small.contains(key)? {
            File::open(&meta_path)?.sync_all()?;
            sync_dir(&dir)?;
            sync_dir(dir.parent().unwrap_or(&self.shared.feeds_dir))?;
            self.shared.small.remove(key)?;
        }
        let secret_key = decode_meta(&meta, key).map_err(|what| corrupt(&meta_path, 0, what))?;
        let inner = self.new_inner(*key, dir, secret_key);
        let loaded = lock(&inner).load();
        if let Err(e) = loaded {
            // Dropping `inner` takes the `live` lock (see `Drop`): release it first.
            drop(live);
            drop(inner);
            return Err(e);
        }
        live.insert(*key, Arc::downgrade(&inner));
        Ok(Some(DiskFeed { inner }))
    }

    fn list(&self) -> Result<Vec<[u8; 32]>, StorageError> {
        let mut keys = Vec::new();
        self.shared.small.list(&mut keys)?;
        for_each_in_subdirs(&self.shared.feeds_dir, |entry| {
            if let Some(key) = entry.file_name().to_str().and_then(parse_hex) {
                keys.push(key);
            }
            Ok(())
        })?;
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// Small replicas go to the shared database in one pass (see [`Storage::create`]
    /// for what decides the layout); with every feed in a directory of its own, feed by
    /// feed.
    fn create_replicas(&self, keys: &[[u8; 32]]) -> Result<usize, StorageError> {
        if self.shared.config.small_feed_bytes == 0 {
            return super::create_each(self, keys);
        }
        // Held throughout, as by `create`: no handle of these feeds appears meanwhile.
        let live = lock(&self.shared.live);
        let fans = self.shared.fans()?;
        let mut new: Vec<[u8; 32]> = keys
            .iter()
            .filter(|key| live.get(*key).is_none_or(|w| w.strong_count() == 0))
            .filter(|key| !self.shared.has_dir(&fans, key))
            .copied()
            .collect();
        new.sort_unstable();
        new.dedup();
        self.shared.small.create_replicas(&new)
    }

    /// The small feeds, from one read of the shared database; feeds in directories
    /// of their own (large ones, and a small one whose move out a crash cut short) are
    /// left out.
    fn scan_feeds(&self, each: &mut dyn FnMut(StoredFeed)) -> Result<(), StorageError> {
        let mut dirs = HashSet::new();
        for_each_in_subdirs(&self.shared.feeds_dir, |entry| {
            if let Some(key) = entry.file_name().to_str().and_then(parse_hex) {
                dirs.insert(key);
            }
            Ok(())
        })?;
        self.shared.small.scan(&dirs, each)
    }

    /// The feeds that stay small (and have no directory) in one durable commit of the
    /// shared database, taken while no feed can be opened (so none opens half way); the
    /// others feed by feed. A feed with a handle open is refused
    /// ([`WholeRefusal::Open`]).
    fn write_whole(&self, feeds: &[WholeWrite]) -> Result<Vec<WholeWritten>, StorageError> {
        let mut out = vec![WholeWritten::Refused(WholeRefusal::Open); feeds.len()];
        let mut each = Vec::new();
        {
            let live = lock(&self.shared.live);
            let limit = self.shared.config.small_feed_bytes;
            let fans = self.shared.fans()?;
            let mut small = Vec::new();
            for (i, write) in feeds.iter().enumerate() {
                if live.get(&write.key).is_some_and(|w| w.strong_count() > 0) {
                    continue;
                }
                let bytes =
                    small::stored_bytes(write.blocks.iter().map(Vec::as_slice), write.nodes.len());
                if limit > 0 && bytes <= limit && !self.shared.has_dir(&fans, &write.key) {
                    small.push(i);
                } else {
                    each.push(i);
                }
            }
            if !small.is_empty() {
                let writes: Vec<&WholeWrite> = small.iter().map(|&i| &feeds[i]).collect();
                let done = self.shared.small.write_whole(&writes)?;
                for (&i, done) in small.iter().zip(done) {
                    out[i] = done;
                }
            }
        }
        let done = whole::write_each(self, each.iter().map(|&i| &feeds[i]))?;
        for (&i, done) in each.iter().zip(done) {
            out[i] = done;
        }
        Ok(out)
    }

    /// The small feeds in one read transaction of the shared database; feeds in
    /// directories of their own feed by feed.
    fn read_whole(
        &self,
        keys: &[[u8; 32]],
        max_bytes: usize,
    ) -> Result<Vec<Option<WholeRead>>, StorageError> {
        let found = self.shared.small.read_whole(keys, max_bytes)?;
        let fans = self.shared.fans()?;
        let mut out = Vec::with_capacity(keys.len());
        for (key, found) in keys.iter().zip(found) {
            match found {
                // A directory left by a move out that a crash cut short wins.
                Some(read) if !self.shared.has_dir(&fans, key) => out.push(read),
                _ => out.extend(whole::read_each(self, &[*key], max_bytes)?),
            }
        }
        Ok(out)
    }
}

impl FeedInner {
    fn new(
        shared: &Arc<Shared>,
        key: [u8; 32],
        dir: PathBuf,
        secret_key: Option<[u8; 32]>,
    ) -> Self {
        FeedInner {
            shared: Arc::clone(shared),
            id: shared.next_id.fetch_add(1, Ordering::Relaxed),
            key,
            dir,
            secret_key,
            head: None,
            bitfield: Bitfield::default(),
            log_len: 0,
            applied: LOG_HEADER_LEN,
            unindexed: Unindexed::default(),
            unsynced: false,
            needs_dir_sync: true,
            failed: false,
            scratch: Vec::new(),
            pending: None,
            small: false,
            small_bytes: 0,
            small_commit: 0,
            rows_left: false,
        }
    }

    fn path(&self, kind: FileKind) -> PathBuf {
        self.dir.join(kind.name())
    }

    /// The handle for one of this feed's files; `None` if it does not exist and
    /// `create` is false.
    fn file(&self, kind: FileKind, create: bool) -> Result<Option<Arc<File>>, StorageError> {
        let max = self.shared.config.max_open_files;
        let path = self.path(kind);
        Ok(cache::open(
            &self.shared.files,
            self.id,
            kind,
            &path,
            create,
            max,
        )?)
    }

    /// The handle for one of this feed's files, created if it does not exist.
    fn open_file(&self, kind: FileKind) -> Result<Arc<File>, StorageError> {
        self.file(kind, true)?
            .ok_or_else(|| StorageError::Io(io::ErrorKind::NotFound.into()))
    }

    fn log(&self) -> Result<Arc<File>, StorageError> {
        self.open_file(FileKind::Log)
    }

    fn apply(&mut self, record: &Record) {
        self.bitfield.set_all(record.blocks.iter().map(|(i, _)| *i));
        self.unindexed.insert(record);
        if let Some(head) = record.head {
            self.head = Some(head);
        }
    }
}

impl Drop for FeedInner {
    fn drop(&mut self) {
        let _ = self.checkpoint_wait();
        lock(&self.shared.files).remove_feed(self.id);
        let mut live = lock(&self.shared.live);
        if live.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            live.remove(&self.key);
        }
    }
}

impl DiskFeed {
    /// The feed's public key.
    pub fn key(&self) -> [u8; 32] {
        lock(&self.inner).key
    }

    /// Like [`FeedStorage::write_append`], with the nodes and head made by `hash` (on the
    /// calling thread; once if this returns Ok, at most once if it fails) while the
    /// blocks may already be written: blocks of 64 KiB or more in all, averaging at
    /// most 16 KiB, are checksummed and written on a helper thread while `hash` runs
    /// here (the feed's lock is held meanwhile). `node_count` is how many nodes `hash`
    /// returns; if it returns another number the append is still written whole, only
    /// without the overlap. As atomic as `write_append`. Every [`Feed`](crate::Feed)
    /// append on a disk feed comes through here.
    pub fn write_append_hashing(
        &mut self,
        start: u64,
        blocks: &[&[u8]],
        node_count: usize,
        hash: &mut dyn FnMut() -> (Vec<StoredNode>, StoredHead),
    ) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        // Nodes count against the small feed's size too: `node_count` until `hash` has
        // made them.
        if inner.stays_small((start..).zip(blocks.iter().copied()), node_count)? {
            let (nodes, head) = hash();
            let blocks: Vec<(u64, &[u8])> = (start..).zip(blocks.iter().copied()).collect();
            return inner.small_write(&blocks, &nodes, Some(head));
        }
        inner.write_append_hashing(start, blocks, node_count, hash)
    }

    /// Write the in-memory index of recent records to the slot files now (normally done
    /// by [`FeedStorage::sync`] every [`DiskConfig::checkpoint_bytes`]). Syncs first;
    /// the new checkpoint is durable when this returns.
    pub fn checkpoint(&mut self) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        inner.sync()?;
        if inner.small {
            return Ok(()); // The database is its own index.
        }
        inner.checkpoint_start()?;
        inner.checkpoint_wait()
    }
}

impl FeedStorage for DiskFeed {
    fn write(&mut self, batch: WriteBatch) -> Result<(), StorageError> {
        let blocks: Vec<(u64, &[u8])> = batch
            .blocks
            .iter()
            .map(|(i, d)| (*i, d.as_slice()))
            .collect();
        self.write_borrowed(&blocks, batch.nodes, batch.head)
    }

    fn write_borrowed(
        &mut self,
        blocks: &[(u64, &[u8])],
        nodes: Vec<StoredNode>,
        head: Option<StoredHead>,
    ) -> Result<(), StorageError> {
        // The one place a write picks its layout: the shared database while the feed
        // stays small, else (after moving it out) its own directory.
        let mut inner = lock(&self.inner);
        if inner.stays_small(blocks.iter().copied(), nodes.len())? {
            return inner.small_write(blocks, &nodes, head);
        }
        inner.write_parts(blocks, nodes, head)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        lock(&self.inner).sync()
    }

    fn sync_start(&mut self) -> Result<(), StorageError> {
        lock(&self.inner).sync_start()
    }

    fn block(&mut self, index: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let mut inner = lock(&self.inner);
        if inner.small {
            if !inner.bitfield.get(index) {
                return Ok(None);
            }
            return inner.shared.small.block(&inner.key, index);
        }
        inner.block(index)
    }

    fn blocks(
        &mut self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut inner = lock(&self.inner);
        if inner.small {
            return inner.shared.small.blocks(&inner.key, start, end, max_bytes);
        }
        inner.blocks(start, end, max_bytes, &mut Vec::with_capacity)
    }

    fn blocks_into(
        &mut self,
        start: u64,
        end: u64,
        max_bytes: usize,
        buffer: &mut dyn FnMut(usize) -> Vec<u8>,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut inner = lock(&self.inner);
        if inner.small {
            // The shared database hands out its own copies; small feeds are small.
            return inner.shared.small.blocks(&inner.key, start, end, max_bytes);
        }
        inner.blocks(start, end, max_bytes, buffer)
    }

    fn has_block(&self, index: u64) -> bool {
        lock(&self.inner).bitfield.get(index)
    }

    fn node(&mut self, index: u64) -> Result<Option<StoredNode>, StorageError> {
        let mut inner = lock(&self.inner);
        if inner.small {
            return inner.shared.small.node(&inner.key, index);
        }
        inner.node(index)
    }

    fn head(&self) -> Option<StoredHead> {
        lock(&self.inner).head
    }

    fn secret_key(&self) -> Option<[u8; 32]> {
        lock(&self.inner).secret_key
    }
}

#[cfg(test)]
mod tests;
