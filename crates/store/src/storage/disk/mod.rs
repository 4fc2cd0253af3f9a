//! [`DiskStorage`]: feeds in a directory, crash safe. The default storage.
//!
//! Layout (why this shape, with the recovery steps and the fsync order:
//! `docs/decisions/100-storage-per-feed-log.md`):
//!
//! ```text
//! <root>/LOCK                       held with an exclusive file lock while open
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

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::{FeedStorage, Storage, StorageError, StoredHead, StoredNode, WriteBatch};

mod bitfield;
mod cache;
mod checkpoint;
mod crc;
mod files;
mod format;
mod index;
mod recovery;

use bitfield::Bitfield;
use cache::{FileCache, FileKind};
use checkpoint::{SlotFiles, Unindexed};
use crc::Crc;
use files::{
    corrupt, for_each_in_subdirs, lock, read_bounded, read_slot, sync_dir, write_all_vectored,
};
use format::*;
pub use format::{MAX_BLOCK_INDEX, MAX_NODE_INDEX, MAX_RECORD_BYTES};

/// Most index slots one range read takes at a time (96 KiB): a sync answer asks for at
/// most 4,096 blocks, and a larger `end` from a caller must not size an allocation.
const SLOTS_PER_READ: u64 = 4096;
/// Blocks smaller than this that lie back to back in the log are read in one call.
const RUN_BLOCK_MAX: u32 = 16 * 1024;

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
        }
    }
}

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
    _lock: File,
    files: Mutex<FileCache>,
    live: Mutex<HashMap<[u8; 32], Weak<Mutex<FeedInner>>>>,
    next_id: AtomicU64,
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
    pending: Option<PendingSync>,
}

/// An `fdatasync` of the log on a helper thread ([`FeedStorage::sync_start`]).
#[derive(Debug)]
struct PendingSync {
    /// The log's length when the sync started: everything before it is durable once
    /// the sync returns Ok.
    upto: u64,
    done: std::thread::JoinHandle<io::Result<()>>,
}

fn hex(key: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    for b in key {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn parse_hex(name: &str) -> Option<[u8; 32]> {
    if name.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

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
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StorageError::Io(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} is in use by another storage", root.display()),
                )))
            }
            Err(fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        if fresh {
            sync_dir(&root)?;
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let storage = Self {
            shared: Arc::new(Shared {
                root,
                feeds_dir,
                config,
                _lock: lock_file,
                files: Mutex::new(FileCache::default()),
                live: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
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
        let h = hex(key);
        self.shared.feeds_dir.join(&h[..2]).join(h)
    }

    fn new_inner(
        &self,
        key: [u8; 32],
        dir: PathBuf,
        secret_key: Option<[u8; 32]>,
    ) -> Arc<Mutex<FeedInner>> {
        Arc::new(Mutex::new(FeedInner {
            shared: Arc::clone(&self.shared),
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
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
        }))
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
        if dir.exists() {
            return Err(StorageError::Exists);
        }
        let fan = dir.parent().unwrap_or(&self.shared.feeds_dir).to_path_buf();
        fs::create_dir_all(&fan)?;
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let tmp = fan.join(format!(".tmp-{}-{}-{n}", hex(&key), std::process::id()));
        fs::create_dir(&tmp)?;
        let meta = encode_meta(&key, secret_key.as_ref());
        // `meta` holds a writable feed's secret key: only its owner may read it.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp.join("meta"))?
            .write_all(&meta)?;
        if let Err(e) = fs::rename(&tmp, &dir) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(if dir.exists() {
                StorageError::Exists
            } else {
                e.into()
            });
        }
        let inner = self.new_inner(key, dir, secret_key);
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
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
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
        for_each_in_subdirs(&self.shared.feeds_dir, |entry| {
            if let Some(key) = entry.file_name().to_str().and_then(parse_hex) {
                keys.push(key);
            }
            Ok(())
        })?;
        keys.sort_unstable();
        Ok(keys)
    }
}

impl FeedInner {
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

    fn write(&mut self, batch: WriteBatch) -> Result<(), StorageError> {
        let blocks: Vec<(u64, &[u8])> = batch
            .blocks
            .iter()
            .map(|(i, d)| (*i, d.as_slice()))
            .collect();
        self.write_parts(&blocks, batch.nodes, batch.head)
    }

    /// [`FeedInner::write`] of a batch of `blocks`, `nodes` and `head`, with the blocks
    /// borrowed: one log record, written with one vectored write.
    fn write_parts(
        &mut self,
        blocks: &[(u64, &[u8])],
        nodes: Vec<StoredNode>,
        head: Option<StoredHead>,
    ) -> Result<(), StorageError> {
        self.check_failed()?;
        if let Some((index, _)) = blocks.iter().find(|(i, _)| *i >= MAX_BLOCK_INDEX) {
            return Err(StorageError::Limit(format!(
                "block index {index} is not below {MAX_BLOCK_INDEX}"
            )));
        }
        check_node_indices(&nodes)?;
        let data_len = blocks
            .iter()
            .fold(0u64, |n, (_, d)| n.saturating_add(d.len() as u64));
        let (meta_len, body_len) = record_size(blocks.len(), nodes.len(), data_len)?;
        let log = self.open_log_for_write()?;

        let mut scratch = std::mem::take(&mut self.scratch);
        encode_record_meta(
            &mut scratch,
            blocks.iter().map(|(i, d)| (*i, d.len())),
            &nodes,
            head.as_ref(),
            body_len,
        );
        let start = self.log_len;
        let mut data_crc = Crc::new();
        let mut locs = Vec::with_capacity(blocks.len());
        let mut offset = start + RECORD_HEADER_LEN + meta_len;
        for (index, data) in blocks {
            let crc = crc32fast::hash(data);
            data_crc.push(crc, data.len() as u64);
            locs.push((
                *index,
                BlockLoc {
                    offset,
                    len: data.len() as u32,
                    crc,
                },
            ));
            offset += data.len() as u64;
        }
        seal_record(&mut scratch, data_crc);

        let mut slices = Vec::with_capacity(1 + blocks.len());
        slices.push(IoSlice::new(&scratch));
        slices.extend(blocks.iter().map(|(_, d)| IoSlice::new(d)));
        let written = write_all_vectored(&log, &mut slices);
        self.scratch = scratch;
        if let Err(e) = written {
            self.cut_log(&log, start);
            return Err(e.into());
        }
        self.record_written(offset, head, locs, nodes)
    }

    /// An append of `blocks` at block index `first`, with its nodes and head made by
    /// `hash` on this thread while a helper thread checksums the blocks and writes them
    /// to their place in the log record (through a second handle that writes at an
    /// offset); then the record's header and entries go in front of them. Until both
    /// parts are written and checksum together the record is torn, as a record cut
    /// short by a crash is, and is cut on open. Small appends (under
    /// [`OVERLAP_MIN_BYTES`]), large blocks (over [`OVERLAP_MAX_AVG_BLOCK`] on average),
    /// a `hash` that returns another number of nodes than
    /// `node_count`, or no thread: hashed first, then [`FeedInner::write_parts`].
    fn write_append_hashing(
        &mut self,
        first: u64,
        blocks: &[&[u8]],
        node_count: usize,
        hash: &mut dyn FnMut() -> (Vec<StoredNode>, StoredHead),
    ) -> Result<(), StorageError> {
        let sequential = |inner: &mut Self, hash: &mut dyn FnMut() -> _| {
            let (nodes, head) = hash();
            let blocks: Vec<(u64, &[u8])> = (first..).zip(blocks.iter().copied()).collect();
            inner.write_parts(&blocks, nodes, Some(head))
        };
        let data_len = blocks
            .iter()
            .fold(0u64, |n, d| n.saturating_add(d.len() as u64));
        if data_len < OVERLAP_MIN_BYTES
            || data_len > OVERLAP_MAX_AVG_BLOCK.saturating_mul(blocks.len() as u64)
        {
            return sequential(self, hash);
        }
        self.check_failed()?;
        let end = first.saturating_add(blocks.len() as u64);
        if end > MAX_BLOCK_INDEX {
            return Err(StorageError::Limit(format!(
                "block index {} is not below {MAX_BLOCK_INDEX}",
                end - 1
            )));
        }
        let (meta_len, body_len) = record_size(blocks.len(), node_count, data_len)?;
        let log = self.open_log_for_write()?;
        let at = self.open_file(FileKind::LogAt)?;
        let start = self.log_len;
        let data_at = start + RECORD_HEADER_LEN + meta_len;

        // Should `hash` panic, the blocks may be in the log past `log_len`, where the next
        // record would not start: the feed stays failed (writes refused until a reopen
        // cuts the torn record) unless the scope returns.
        self.failed = true;
        let (made, written) = std::thread::scope(|scope| {
            let writer = std::thread::Builder::new()
                .name("replic8-log-write".into())
                .spawn_scoped(scope, || write_blocks_at(&at, data_at, blocks));
            let made = hash();
            let written = match writer {
                Ok(handle) => Some(
                    handle
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("log write thread panicked"))),
                ),
                Err(_) => None,
            };
            (made, written)
        });
        self.failed = false;
        let (nodes, head) = made;
        let (crcs, data_crc) = match written {
            Some(Ok(done)) if nodes.len() == node_count => done,
            Some(Err(e)) => {
                self.cut_log(&log, start);
                return Err(e.into());
            }
            // No thread, or another node count than the layout assumed: the blocks
            // (if written) are past the end the next record starts at; write it all
            // again from `start`.
            _ => {
                self.cut_log(&log, start);
                self.check_failed()?;
                let blocks: Vec<(u64, &[u8])> = (first..).zip(blocks.iter().copied()).collect();
                return self.write_parts(&blocks, nodes, Some(head));
            }
        };
        if let Err(e) = check_node_indices(&nodes) {
            self.cut_log(&log, start);
            return Err(e);
        }

        let mut scratch = std::mem::take(&mut self.scratch);
        encode_record_meta(
            &mut scratch,
            blocks
                .iter()
                .enumerate()
                .map(|(i, d)| (first + i as u64, d.len())),
            &nodes,
            Some(&head),
            body_len,
        );
        seal_record(&mut scratch, data_crc);
        let written = at.write_all_at(&scratch, start);
        self.scratch = scratch;
        if let Err(e) = written {
            self.cut_log(&log, start);
            return Err(e.into());
        }
        let mut offset = data_at;
        let locs = (first..)
            .zip(blocks.iter().zip(crcs))
            .map(|(index, (data, crc))| {
                let loc = BlockLoc {
                    offset,
                    len: data.len() as u32,
                    crc,
                };
                offset += data.len() as u64;
                (index, loc)
            })
            .collect();
        self.record_written(offset, Some(head), locs, nodes)
    }

    /// The log's handle for appending, with its header written if it is new.
    fn open_log_for_write(&mut self) -> Result<Arc<File>, StorageError> {
        let log = self.log()?;
        if self.log_len == 0 {
            // A new log (opened with no log file, or just created).
            let len = log.metadata()?.len();
            if len != 0 {
                log.set_len(0)?;
            }
            (&*log).write_all(&log_header())?;
            self.log_len = LOG_HEADER_LEN;
            self.needs_dir_sync = true;
        }
        Ok(log)
    }

    /// Remove a partly written record so the next one starts at a record boundary; if
    /// that fails, the feed refuses writes until reopened.
    fn cut_log(&mut self, log: &File, start: u64) {
        if log.set_len(start).is_err() {
            self.failed = true;
        }
    }

    /// Take a record written whole into the in-memory index.
    fn record_written(
        &mut self,
        end: u64,
        head: Option<StoredHead>,
        blocks: Vec<(u64, BlockLoc)>,
        nodes: Vec<StoredNode>,
    ) -> Result<(), StorageError> {
        self.log_len = end;
        self.unsynced = true;
        self.apply(&Record {
            end,
            head,
            blocks,
            nodes,
        });
        // A writer that never syncs (a replica between flushes) would grow the in-memory
        // index without bound: past twice the checkpoint thresholds, sync and checkpoint.
        // From once the thresholds on, the log is synced on another thread meanwhile, so
        // that sync (on the caller's thread) finds little left to write back.
        if self.over_checkpoint_threshold(2) {
            self.sync()?;
        } else if self.over_checkpoint_threshold(1) {
            self.sync_start()?;
        }
        Ok(())
    }

    /// Wait for the checkpoint running on a helper thread, if any, and take its result:
    /// on success its offset becomes `applied` ([`Unindexed::wait`]).
    fn checkpoint_wait(&mut self) -> Result<(), StorageError> {
        if let Some(upto) = self.unindexed.wait()? {
            self.applied = upto;
        }
        Ok(())
    }

    /// The log offset up to which a checkpoint holds or will hold every record.
    fn checkpointed(&self) -> u64 {
        self.unindexed.running_upto().unwrap_or(self.applied)
    }

    fn over_checkpoint_threshold(&self, factor: u64) -> bool {
        let config = &self.shared.config;
        self.log_len.saturating_sub(self.checkpointed())
            >= config.checkpoint_bytes.saturating_mul(factor)
            || self.unindexed.recent_len() as u64
                >= (config.checkpoint_entries as u64).saturating_mul(factor)
    }

    fn check_failed(&self) -> Result<(), StorageError> {
        if self.failed {
            return Err(StorageError::Io(io::Error::other(
                "an earlier write or sync failed; drop every handle and open the feed again",
            )));
        }
        Ok(())
    }

    /// Collect the background sync if it has ended (or, with `wait`, once it ends). A
    /// failed one fails the feed, as a failed `sync` does.
    fn finish_pending(&mut self, wait: bool) -> Result<(), StorageError> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        if !wait && !p.done.is_finished() {
            self.pending = Some(p);
            return Ok(());
        }
        let result = p
            .done
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("log sync thread panicked")));
        if let Err(e) = result {
            self.failed = true;
            return Err(e.into());
        }
        if p.upto == self.log_len {
            self.unsynced = false;
        }
        Ok(())
    }

    fn sync_start(&mut self) -> Result<(), StorageError> {
        self.check_failed()?;
        self.finish_pending(false)?;
        if self.pending.is_some() || !self.unsynced {
            return Ok(()); // The next `sync_start` or `sync` covers what follows.
        }
        let log = self.log()?;
        let spawned = std::thread::Builder::new()
            .name("replic8-log-sync".into())
            .spawn(move || log.sync_data());
        // Without a thread, `sync` does it all later.
        if let Ok(done) = spawned {
            self.pending = Some(PendingSync {
                upto: self.log_len,
                done,
            });
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.check_failed()?;
        self.finish_pending(true)?;
        if self.unsynced {
            if let Err(e) = self.log()?.sync_data() {
                // After a failed fsync the kernel may have dropped the dirty pages and a
                // later fsync may succeed without them: never report this feed durable
                // again until a reopen has re-read what the log really holds.
                self.failed = true;
                return Err(e.into());
            }
            self.unsynced = false;
        }
        if self.needs_dir_sync {
            File::open(self.dir.join("meta"))?.sync_all()?;
            sync_dir(&self.dir)?;
            if let Some(fan) = self.dir.parent() {
                sync_dir(fan)?;
            }
            sync_dir(&self.shared.feeds_dir)?;
            self.needs_dir_sync = false;
        }
        if self.unindexed.finished() {
            self.checkpoint_wait()?;
        }
        if self.over_checkpoint_threshold(1) {
            self.checkpoint_start()?;
        }
        Ok(())
    }

    /// Start a checkpoint (after waiting for the one before): the entries of the
    /// records so far go to the slot files, which are synced, then `state` records the
    /// new checkpoint (written to `state.tmp`, synced, renamed, the directory synced), all
    /// on a helper thread, so the appending thread does none of those writes and
    /// fsyncs. Called only when the log is synced up to `log_len`; a crash at any point
    /// finds the previous `state` or the new one, each with the log it needs.
    fn checkpoint_start(&mut self) -> Result<(), StorageError> {
        self.checkpoint_wait()?;
        // A slot file made by this checkpoint must be in the directory before a `state`
        // that relies on it is.
        let mut created = false;
        let index = if self.unindexed.has_blocks() {
            created |= !self.path(FileKind::Index).exists();
            Some(self.open_file(FileKind::Index)?)
        } else {
            None
        };
        let tree = if self.unindexed.has_nodes() {
            created |= !self.path(FileKind::Tree).exists();
            Some(self.open_file(FileKind::Tree)?)
        } else {
            None
        };
        let state = encode_state(self.log_len, self.head.as_ref(), &self.bitfield);
        let files = SlotFiles {
            index,
            tree,
            created,
        };
        self.unindexed
            .start(self.log_len, files, state, self.dir.clone());
        Ok(())
    }

    fn block(&mut self, index: u64) -> Result<Option<Vec<u8>>, StorageError> {
        if !self.bitfield.get(index) {
            return Ok(None);
        }
        let loc = match self.unindexed.block(index) {
            Some(loc) => loc,
            None => self.index_slot(index)?,
        };
        let log = self.log()?;
        let log_path = self.path(FileKind::Log);
        if loc.offset < LOG_HEADER_LEN || loc.offset + u64::from(loc.len) > self.log_len {
            return Err(corrupt(
                &log_path,
                loc.offset,
                &format!("block {index} lies outside the log"),
            ));
        }
        let mut data = vec![0u8; loc.len as usize];
        log.read_exact_at(&mut data, loc.offset)?;
        if crc32fast::hash(&data) != loc.crc {
            return Err(corrupt(
                &log_path,
                loc.offset,
                &format!("block {index} fails its checksum"),
            ));
        }
        Ok(Some(data))
    }

    /// See [`FeedStorage::blocks`]: one read of the index slots for the range, and one
    /// log read per run of small blocks that lie back to back in the log (a 64-block
    /// answer of 1 KiB blocks is two reads instead of 128).
    fn blocks(
        &mut self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut locs: Vec<(u64, BlockLoc)> = Vec::new();
        let mut bytes = 0usize;
        // Index slots read ahead, for `slots_from..slots_to`.
        let (mut slots, mut slots_from, mut slots_to) = (Vec::new(), 0u64, 0u64);
        let mut index = start;
        while index < end && self.bitfield.get(index) {
            let loc = match self.unindexed.block(index) {
                Some(loc) => loc,
                None => {
                    if !(slots_from..slots_to).contains(&index) {
                        // Bounded, so a caller's huge `end` cannot size the read.
                        slots_to = end.min(index.saturating_add(SLOTS_PER_READ));
                        slots = self.read_slots(index, slots_to)?;
                        slots_from = index;
                    }
                    let i = ((index - slots_from) * INDEX_SLOT) as usize;
                    let mut slot = [0u8; INDEX_SLOT as usize];
                    slot.copy_from_slice(&slots[i..i + INDEX_SLOT as usize]);
                    self.check_slot(index, &slot)?
                }
            };
            if !locs.is_empty() && bytes + loc.len as usize > max_bytes {
                break;
            }
            bytes += loc.len as usize;
            locs.push((index, loc));
            index += 1;
        }
        let log = self.log()?;
        let log_path = self.path(FileKind::Log);
        let mut out = Vec::with_capacity(locs.len());
        let mut run = Vec::new();
        let mut at = 0;
        while at < locs.len() {
            // A run: small blocks that follow each other in the log.
            let mut stop = at + 1;
            let mut run_len = u64::from(locs[at].1.len);
            while stop < locs.len()
                && locs[stop].1.len < RUN_BLOCK_MAX
                && locs[stop - 1].1.len < RUN_BLOCK_MAX
                && locs[stop].1.offset == locs[stop - 1].1.offset + u64::from(locs[stop - 1].1.len)
            {
                run_len += u64::from(locs[stop].1.len);
                stop += 1;
            }
            let first = locs[at].1;
            if first.offset < LOG_HEADER_LEN || first.offset + run_len > self.log_len {
                return Err(corrupt(
                    &log_path,
                    first.offset,
                    &format!("block {} lies outside the log", locs[at].0),
                ));
            }
            if stop == at + 1 {
                let mut data = vec![0u8; first.len as usize];
                log.read_exact_at(&mut data, first.offset)?;
                out.push(data);
            } else {
                run.clear();
                run.resize(run_len as usize, 0);
                log.read_exact_at(&mut run, first.offset)?;
                let mut from = 0usize;
                for (_, loc) in &locs[at..stop] {
                    out.push(run[from..from + loc.len as usize].to_vec());
                    from += loc.len as usize;
                }
            }
            at = stop;
        }
        for ((index, loc), data) in locs.iter().zip(&out) {
            if crc32fast::hash(data) != loc.crc {
                return Err(corrupt(
                    &log_path,
                    loc.offset,
                    &format!("block {index} fails its checksum"),
                ));
            }
        }
        Ok(out)
    }

    /// The index slots of blocks `[from, end)`, in one read (zeros past the file's end).
    fn read_slots(&self, from: u64, end: u64) -> Result<Vec<u8>, StorageError> {
        let path = self.path(FileKind::Index);
        let at = from
            .checked_mul(INDEX_SLOT)
            .ok_or_else(|| corrupt(&path, 0, "block index out of range"))?;
        let mut slots = vec![0u8; ((end - from) * INDEX_SLOT) as usize];
        match self.file(FileKind::Index, false)? {
            Some(f) => read_slot(&f, at, &mut slots)?,
            None => return Err(corrupt(&path, at, "index missing for a stored block")),
        }
        Ok(slots)
    }

    /// The location of a block the bitfield says is stored, from `index`.
    fn index_slot(&self, index: u64) -> Result<BlockLoc, StorageError> {
        let path = self.path(FileKind::Index);
        let at = index
            .checked_mul(INDEX_SLOT)
            .ok_or_else(|| corrupt(&path, 0, "block index out of range"))?;
        let mut slot = [0u8; INDEX_SLOT as usize];
        match self.file(FileKind::Index, false)? {
            Some(f) => read_slot(&f, at, &mut slot)?,
            None => return Err(corrupt(&path, at, "index missing for a stored block")),
        }
        self.check_slot(index, &slot)
    }

    /// The location a slot read for `index` holds, if it is a valid slot of `index`.
    fn check_slot(
        &self,
        index: u64,
        slot: &[u8; INDEX_SLOT as usize],
    ) -> Result<BlockLoc, StorageError> {
        let path = self.path(FileKind::Index);
        let at = index.saturating_mul(INDEX_SLOT);
        let slot = *slot;
        let loc = decode_index_slot(&slot);
        if slot == [0u8; INDEX_SLOT as usize] {
            return Err(corrupt(
                &path,
                at,
                &format!("no slot for stored block {index}"),
            ));
        }
        if encode_index_slot(index, &loc) != slot {
            return Err(corrupt(
                &path,
                at,
                &format!("slot of block {index} fails its checksum"),
            ));
        }
        Ok(loc)
    }

    fn node(&mut self, index: u64) -> Result<Option<StoredNode>, StorageError> {
        if let Some(node) = self.unindexed.node(index) {
            return Ok(Some(node));
        }
        let Some(tree) = self.file(FileKind::Tree, false)? else {
            return Ok(None);
        };
        let path = self.path(FileKind::Tree);
        if index >= MAX_NODE_INDEX {
            return Ok(None);
        }
        let at = index * TREE_SLOT;
        let mut slot = [0u8; TREE_SLOT as usize];
        read_slot(&tree, at, &mut slot)?;
        if slot == [0u8; TREE_SLOT as usize] {
            return Ok(None);
        }
        let node = decode_tree_slot(index, &slot);
        if encode_tree_slot(&node) != slot {
            return Err(corrupt(
                &path,
                at,
                &format!("slot of node {index} fails its checksum"),
            ));
        }
        Ok(Some(node))
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

/// Appends at least this many bytes of blocks are written on a helper thread while
/// they are hashed; below it the thread costs more than the overlap saves.
const OVERLAP_MIN_BYTES: u64 = 64 << 10;
/// ... if their blocks average at most this size. Small blocks cost the most CPU per
/// byte (a prefix copy and a parent per block) and gain the most; 64 KiB appends met
/// their target without the overlap and, alternated at load 3, were as often slower
/// with it as faster (`PERFORMANCE.md`, "store: append, fourth round").
const OVERLAP_MAX_AVG_BLOCK: u64 = 16 << 10;

/// Checksum `blocks` and write them, back to back, at offset `at` through `file` (a
/// handle of its own, not opened to append: this moves its cursor). Returns each
/// block's crc32 and the crc32 of them all.
fn write_blocks_at(file: &File, at: u64, blocks: &[&[u8]]) -> io::Result<(Vec<u32>, Crc)> {
    use std::io::{Seek, SeekFrom};
    let mut crcs = Vec::with_capacity(blocks.len());
    let mut all = Crc::new();
    let mut file = file;
    file.seek(SeekFrom::Start(at))?;
    // Up to 1,024 blocks (the most one `writev` takes) a group: a 1 MiB batch of 1 KiB
    // blocks is one system call, and its bytes are still in cache when written.
    for group in blocks.chunks(1024) {
        for data in group {
            let crc = crc32fast::hash(data);
            all.push(crc, data.len() as u64);
            crcs.push(crc);
        }
        let mut slices: Vec<IoSlice<'_>> = group.iter().map(|d| IoSlice::new(d)).collect();
        write_all_vectored(file, &mut slices)?;
    }
    Ok((crcs, all))
}

impl DiskFeed {
    /// The feed's public key.
    pub fn key(&self) -> [u8; 32] {
        lock(&self.inner).key
    }

    /// Write the in-memory index of recent records to the slot files now (normally done
    /// by [`FeedStorage::sync`] every [`DiskConfig::checkpoint_bytes`]). Syncs first;
    /// the new checkpoint is durable when this returns.
    pub fn checkpoint(&mut self) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        inner.sync()?;
        inner.checkpoint_start()?;
        inner.checkpoint_wait()
    }
}

impl FeedStorage for DiskFeed {
    fn write(&mut self, batch: WriteBatch) -> Result<(), StorageError> {
        lock(&self.inner).write(batch)
    }

    fn write_append(
        &mut self,
        start: u64,
        blocks: &[&[u8]],
        nodes: Vec<StoredNode>,
        head: StoredHead,
    ) -> Result<(), StorageError> {
        let blocks: Vec<(u64, &[u8])> = (start..).zip(blocks.iter().copied()).collect();
        lock(&self.inner).write_parts(&blocks, nodes, Some(head))
    }

    /// Blocks of 64 KiB or more in all, averaging at most 16 KiB, are checksummed and
    /// written on a helper thread while `hash` runs here (the feed's lock is held
    /// meanwhile).
    fn write_append_hashing(
        &mut self,
        start: u64,
        blocks: &[&[u8]],
        node_count: usize,
        hash: &mut dyn FnMut() -> (Vec<StoredNode>, StoredHead),
    ) -> Result<(), StorageError> {
        lock(&self.inner).write_append_hashing(start, blocks, node_count, hash)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        lock(&self.inner).sync()
    }

    fn sync_start(&mut self) -> Result<(), StorageError> {
        lock(&self.inner).sync_start()
    }

    fn block(&mut self, index: u64) -> Result<Option<Vec<u8>>, StorageError> {
        lock(&self.inner).block(index)
    }

    fn blocks(
        &mut self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        lock(&self.inner).blocks(start, end, max_bytes)
    }

    fn has_block(&self, index: u64) -> bool {
        lock(&self.inner).bitfield.get(index)
    }

    fn node(&mut self, index: u64) -> Result<Option<StoredNode>, StorageError> {
        lock(&self.inner).node(index)
    }

    fn head(&self) -> Option<StoredHead> {
        lock(&self.inner).head
    }

    fn secret_key(&self) -> Option<[u8; 32]> {
        lock(&self.inner).secret_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance;

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
}
