//! The shared database of small feeds (`<root>/small.redb`): every feed whose blocks and
//! nodes take at most [`DiskConfig::small_feed_bytes`](super::DiskConfig) lives here
//! rather than in a directory of its own (`docs/decisions/165-small-feeds-share-a-database.md`).
//!
//! Tables, each keyed by the feed's public key first, so one feed's rows are adjacent:
//!
//! ```text
//! feeds   key            -> meta (as the `meta` file, 84 B) | head field (as in a log record, 112 B)
//! blocks  (key, index)   -> block bytes
//! nodes   (key, index)   -> tree slot (as in the `tree` file, 48 B, with its checksum)
//! ```
//!
//! Creates and writes are queued in memory and applied in order by the next commit, one
//! redb transaction: a crash keeps all of a commit or none of it, so each write is whole
//! or absent and none is kept without those before it. A commit happens when a feed
//! syncs (`Durability::Immediate`: one fsync), when the queue is long
//! ([`PENDING_OPS`](queue::PENDING_OPS), [`PENDING_BYTES`](queue::PENDING_BYTES);
//! `Durability::None`), or before a read of a feed with queued writes. A sync after a
//! durable commit that came after the feed's last write costs nothing, so feeds written
//! one after another and synced together share one fsync.
//!
//! `queue`: the queue of creates and writes waiting for the next commit, and the row
//! writes a commit applies.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::files::lock;
use super::format::{
    decode_head, decode_meta, decode_tree_slot, encode_head, encode_meta, encode_tree_slot,
    META_LEN, RECORD_HEAD_LEN, TREE_SLOT,
};
use crate::storage::whole::{decide, Existing};
use crate::storage::{
    StorageError, StoredFeed, StoredHead, StoredNode, WholeRead, WholeRefusal, WholeWrite,
    WholeWritten,
};
use crate::tree::full_roots;

mod queue;
#[cfg(test)]
pub(super) use queue::PENDING_OPS;
use queue::{insert_rows, remove_rows, Op, State};

const FEEDS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("feeds");
const BLOCKS: TableDefinition<([u8; 32], u64), &[u8]> = TableDefinition::new("blocks");
const NODES: TableDefinition<([u8; 32], u64), [u8; TREE_SLOT as usize]> =
    TableDefinition::new("nodes");

/// The database's page cache. redb's default (1 GiB) would make a daemon with many
/// feeds as large as its data; small feeds are read rarely and the kernel's page cache
/// holds the file anyway.
const CACHE_BYTES: usize = 16 << 20;

/// The file name of the shared database under the storage root.
pub(super) const FILE_NAME: &str = "small.redb";

/// The shared database, its commit bookkeeping and the writes not yet committed.
#[derive(Debug)]
pub(super) struct SmallFeeds {
    db: Database,
    /// Held across each write transaction, so commit numbers follow commit order.
    state: Mutex<State>,
}

/// What opening a small feed reads: its meta, head, which blocks it holds and how many
/// bytes it takes.
#[derive(Debug)]
pub(super) struct Loaded {
    pub(super) secret_key: Option<[u8; 32]>,
    pub(super) head: Option<StoredHead>,
    pub(super) blocks: Vec<u64>,
    pub(super) bytes: u64,
}

/// Everything a small feed holds, to move it into a directory of its own.
#[derive(Debug)]
pub(super) struct Contents {
    pub(super) blocks: Vec<(u64, Vec<u8>)>,
    pub(super) nodes: Vec<StoredNode>,
}

/// The bytes a feed's rows count against [`DiskConfig::small_feed_bytes`](super::DiskConfig):
/// its block bytes plus a tree slot per node.
pub(super) fn stored_bytes<'a>(blocks: impl IntoIterator<Item = &'a [u8]>, nodes: usize) -> u64 {
    blocks
        .into_iter()
        .fold(0u64, |n, b| n.saturating_add(b.len() as u64))
        .saturating_add(nodes as u64 * TREE_SLOT)
}

fn db_error(e: impl Into<redb::Error>) -> StorageError {
    match e.into() {
        redb::Error::Io(e) => StorageError::Io(e),
        redb::Error::Corrupted(what) => StorageError::Corrupt(format!("{FILE_NAME}: {what}")),
        other => StorageError::Io(std::io::Error::other(format!("{FILE_NAME}: {other}"))),
    }
}

fn corrupt(key: &[u8; 32], what: &str) -> StorageError {
    StorageError::Corrupt(format!("{FILE_NAME}: feed {}: {what}", super::hex(key)))
}

/// The range of rows of feed `key` in `blocks` or `nodes`.
fn rows(key: &[u8; 32]) -> std::ops::RangeInclusive<([u8; 32], u64)> {
    (*key, 0)..=(*key, u64::MAX)
}

impl SmallFeeds {
    /// Open (creating if needed) the database at `path`. After a crash redb checks the
    /// file and rebuilds its allocator state before this returns.
    pub(super) fn open(path: &Path) -> Result<Self, StorageError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(db_error)?;
        let this = Self {
            db,
            state: Mutex::new(State::default()),
        };
        // Make the tables, so reads find them; durable at once, as a fresh storage root is.
        this.commit(true, |tx| {
            tx.open_table(FEEDS).map_err(db_error)?;
            tx.open_table(BLOCKS).map_err(db_error)?;
            tx.open_table(NODES).map_err(db_error)?;
            Ok(())
        })?;
        Ok(this)
    }

    fn commit(
        &self,
        durable: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<(), StorageError>,
    ) -> Result<u64, StorageError> {
        lock(&self.state).commit(&self.db, durable, f)
    }

    /// Commit what is pending if it touches feed `key`, so reads of it see it.
    fn settle(&self, key: &[u8; 32]) -> Result<(), StorageError> {
        lock(&self.state).settle(&self.db, key)
    }

    /// Number of the last durable commit.
    #[cfg(test)]
    pub(super) fn durable_commit(&self) -> u64 {
        lock(&self.state).durable
    }

    /// Numbers of the last commit and of the last durable one, and the writes pending.
    #[cfg(test)]
    pub(super) fn commits(&self) -> (u64, u64, usize) {
        let state = lock(&self.state);
        (state.last, state.durable, state.pending.len())
    }

    /// Whether feed `key` has a row here.
    pub(super) fn contains(&self, key: &[u8; 32]) -> Result<bool, StorageError> {
        self.settle(key)?;
        let tx = self.db.begin_read().map_err(db_error)?;
        let feeds = tx.open_table(FEEDS).map_err(db_error)?;
        Ok(feeds.get(key).map_err(db_error)?.is_some())
    }

    /// Add feed `key` (committed with the next commit); [`StorageError::Exists`] if it
    /// is here already.
    pub(super) fn create(
        &self,
        key: &[u8; 32],
        secret_key: Option<&[u8; 32]>,
    ) -> Result<u64, StorageError> {
        if self.contains(key)? {
            return Err(StorageError::Exists);
        }
        let mut row = encode_meta(key, secret_key);
        encode_head(&mut row, None);
        let op = Op::Create { key: *key, row };
        lock(&self.state).push(&self.db, *key, 0, op)
    }

    /// Adds a replica's row (no secret key, no head) for each of `keys` (sorted, no
    /// key twice) that has none here, committed with the next commit as
    /// [`Self::create`]'s are; returns how many were added. One read transaction
    /// finds the rows there already.
    pub(super) fn create_replicas(&self, keys: &[[u8; 32]]) -> Result<usize, StorageError> {
        let mut state = lock(&self.state);
        state.check()?;
        if keys.iter().any(|key| state.touched.contains(key)) {
            state.commit(&self.db, false, |_| Ok(()))?;
        }
        let tx = self.db.begin_read().map_err(db_error)?;
        let feeds = tx.open_table(FEEDS).map_err(db_error)?;
        let mut created = 0;
        for key in keys {
            if feeds.get(key).map_err(db_error)?.is_some() {
                continue;
            }
            let mut row = encode_meta(key, None);
            encode_head(&mut row, None);
            state.push(&self.db, *key, 0, Op::Create { key: *key, row })?;
            created += 1;
        }
        Ok(created)
    }

    /// The keys of every feed here, added to `out`.
    pub(super) fn list(&self, out: &mut Vec<[u8; 32]>) -> Result<(), StorageError> {
        {
            let mut state = lock(&self.state);
            if !state.pending.is_empty() {
                state.commit(&self.db, false, |_| Ok(()))?;
            }
        }
        let tx = self.db.begin_read().map_err(db_error)?;
        let feeds = tx.open_table(FEEDS).map_err(db_error)?;
        for row in feeds.iter().map_err(db_error)? {
            out.push(row.map_err(db_error)?.0.value());
        }
        Ok(())
    }

    /// Calls `each` with what is stored of every feed here but those in `skip`, in one
    /// read transaction: its row, its block rows (one pass over the blocks table,
    /// alongside the feeds table: both are ordered by key) and its roots' node rows. A
    /// feed whose row does not decode is left out (opening it reports why).
    pub(super) fn scan(
        &self,
        skip: &HashSet<[u8; 32]>,
        each: &mut dyn FnMut(StoredFeed),
    ) -> Result<(), StorageError> {
        {
            let mut state = lock(&self.state);
            if !state.pending.is_empty() {
                state.commit(&self.db, false, |_| Ok(()))?;
            }
        }
        let tx = self.db.begin_read().map_err(db_error)?;
        let feeds = tx.open_table(FEEDS).map_err(db_error)?;
        let blocks = tx.open_table(BLOCKS).map_err(db_error)?;
        let nodes = tx.open_table(NODES).map_err(db_error)?;
        let mut block_rows = blocks.iter().map_err(db_error)?;
        let mut next_block = || -> Result<Option<([u8; 32], u64, u64)>, StorageError> {
            let Some(entry) = block_rows.next() else {
                return Ok(None);
            };
            let (k, v) = entry.map_err(db_error)?;
            let (key, index) = k.value();
            Ok(Some((key, index, v.value().len() as u64)))
        };
        let mut ahead = next_block()?;
        for row in feeds.iter().map_err(db_error)? {
            let (k, v) = row.map_err(db_error)?;
            let key = k.value();
            let decoded = decode_row(&key, v.value());
            let length = match &decoded {
                Ok((_, head)) => head.map_or(0, |h| h.length),
                Err(_) => 0,
            };
            let mut feed = StoredFeed {
                key,
                writable: false,
                head: None,
                roots: Vec::new(),
                stored: 0,
                contiguous: 0,
                stored_bytes: 0,
            };
            // Rows of feeds before this one have no feed row: a removal cut short.
            while let Some((block_key, index, len)) = ahead {
                if block_key > key {
                    break;
                }
                if block_key == key && index < length {
                    feed.stored += 1;
                    feed.stored_bytes = feed.stored_bytes.saturating_add(len);
                    if index == feed.contiguous {
                        feed.contiguous += 1;
                    }
                }
                ahead = next_block()?;
            }
            let Ok((secret_key, head)) = decoded else {
                continue;
            };
            if skip.contains(&key) {
                continue;
            }
            for index in full_roots(length) {
                let Some(slot) = nodes.get((key, index)).map_err(db_error)? else {
                    break;
                };
                let slot = slot.value();
                let node = decode_tree_slot(index, &slot);
                if encode_tree_slot(&node) != slot {
                    break;
                }
                feed.roots.push(node);
            }
            feed.writable = secret_key.is_some();
            feed.head = head;
            each(feed);
        }
        Ok(())
    }

    /// Feed `key`'s meta, head and stored blocks, or `None` if it is not here.
    pub(super) fn load(&self, key: &[u8; 32]) -> Result<Option<Loaded>, StorageError> {
        self.settle(key)?;
        let tx = self.db.begin_read().map_err(db_error)?;
        let feeds = tx.open_table(FEEDS).map_err(db_error)?;
        let Some(row) = feeds.get(key).map_err(db_error)? else {
            return Ok(None);
        };
        let (secret_key, head) = decode_row(key, row.value())?;
        let mut loaded = Loaded {
            secret_key,
            head,
            blocks: Vec::new(),
            bytes: 0,
        };
        let blocks = tx.open_table(BLOCKS).map_err(db_error)?;
        for entry in blocks.range(rows(key)).map_err(db_error)? {
            let (k, v) = entry.map_err(db_error)?;
            loaded.blocks.push(k.value().1);
            loaded.bytes = loaded.bytes.saturating_add(v.value().len() as u64);
        }
        let nodes = tx.open_table(NODES).map_err(db_error)?;
        let node_count = nodes.range(rows(key)).map_err(db_error)?.count();
        loaded.bytes = loaded.bytes.saturating_add(stored_bytes([], node_count));
        Ok(Some(loaded))
    }

    /// Write blocks, nodes and head of feed `key` (all committed with the next
    /// commit); returns that commit's number.
    pub(super) fn write(
        &self,
        key: &[u8; 32],
        blocks: &[(u64, &[u8])],
        nodes: &[StoredNode],
        head: Option<&StoredHead>,
    ) -> Result<u64, StorageError> {
        let bytes = blocks.iter().map(|(_, d)| d.len()).sum();
        let op = Op::Write {
            key: *key,
            blocks: blocks.iter().map(|(i, d)| (*i, d.to_vec())).collect(),
            nodes: nodes.to_vec(),
            head: head.copied(),
        };
        lock(&self.state).push(&self.db, *key, bytes, op)
    }

    /// Writes each of `feeds` whole (see [`crate::storage::whole`]) in one durable
    /// commit, with what is pending before them: a feed with no row gets one (a
    /// replica), an empty one is filled, any other is left as [`decide`] says. The
    /// caller holds no handle to them (none is open). Answers in order.
    pub(super) fn write_whole(
        &self,
        feeds: &[&WholeWrite],
    ) -> Result<Vec<WholeWritten>, StorageError> {
        let mut out = Vec::with_capacity(feeds.len());
        self.commit(true, |tx| {
            let mut feed_rows = tx.open_table(FEEDS).map_err(db_error)?;
            let mut block_rows = tx.open_table(BLOCKS).map_err(db_error)?;
            let mut node_rows = tx.open_table(NODES).map_err(db_error)?;
            for write in feeds {
                let key = write.key;
                let row = feed_rows
                    .get(key)
                    .map_err(db_error)?
                    .map(|v| v.value().to_vec());
                let existing = match &row {
                    None => None,
                    Some(row) => {
                        let Ok((secret_key, head)) = decode_row(&key, row) else {
                            // Left for opening the feed to report.
                            out.push(WholeWritten::Refused(WholeRefusal::Holds));
                            continue;
                        };
                        let held = head.map_or(0, |h| h.length);
                        let below = block_rows
                            .range((key, 0)..(key, held))
                            .map_err(db_error)?
                            .count() as u64;
                        let any_block = block_rows
                            .range(rows(&key))
                            .map_err(db_error)?
                            .next()
                            .is_some();
                        Some(Existing {
                            writable: secret_key.is_some(),
                            head,
                            complete: head.is_some() && below == held,
                            any_block,
                        })
                    }
                };
                let decided = decide(write, existing, |index| {
                    let Some(slot) = node_rows.get((key, index)).map_err(db_error)? else {
                        return Ok(None);
                    };
                    let slot = slot.value();
                    let node = decode_tree_slot(index, &slot);
                    Ok((encode_tree_slot(&node) == slot).then_some(node))
                })?;
                if let Some(done) = decided {
                    out.push(done);
                    continue;
                }
                let mut row = match row {
                    Some(mut row) => {
                        row.truncate(META_LEN);
                        row
                    }
                    None => {
                        // Rows a removal cut short may be left: they are not this feed's.
                        remove_rows(&mut block_rows, &mut node_rows, &key)?;
                        encode_meta(&key, None)
                    }
                };
                let data = (0u64..).zip(write.blocks.iter().map(Vec::as_slice));
                insert_rows(&mut block_rows, &mut node_rows, &key, data, &write.nodes)?;
                encode_head(&mut row, Some(&write.head));
                feed_rows.insert(key, row.as_slice()).map_err(db_error)?;
                out.push(WholeWritten::Written);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Each feed of `keys` read whole, in one read transaction: `None` for a feed with
    /// no row here; `Some(None)` for one that has no head, lacks a block of it, or whose
    /// blocks take more than `max_bytes`. A head read here goes to peers, and a
    /// writer's head must not leave before it is durable (a crash would let it sign
    /// another tree at that length), as an append's lock keeps a stream from reading it
    /// early: so what is pending for any of them, or any commit not yet durable (a long
    /// queue is committed without an fsync), is first made durable.
    pub(super) fn read_whole(
        &self,
        keys: &[[u8; 32]],
        max_bytes: usize,
    ) -> Result<Vec<Option<Option<WholeRead>>>, StorageError> {
        {
            let mut state = lock(&self.state);
            if state.durable < state.last || keys.iter().any(|k| state.touched.contains(k)) {
                state.commit(&self.db, true, |_| Ok(()))?;
            }
        }
        let tx = self.db.begin_read().map_err(db_error)?;
        let feeds = tx.open_table(FEEDS).map_err(db_error)?;
        let blocks = tx.open_table(BLOCKS).map_err(db_error)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(row) = feeds.get(key).map_err(db_error)? else {
                out.push(None);
                continue;
            };
            let head = match decode_row(key, row.value()) {
                Ok((_, Some(head))) if head.length > 0 => head,
                _ => {
                    out.push(Some(None));
                    continue;
                }
            };
            let mut read = WholeRead {
                head,
                blocks: Vec::new(),
            };
            let mut bytes = 0usize;
            let mut whole = true;
            for (expected, entry) in (0u64..).zip(
                blocks
                    .range((*key, 0)..(*key, head.length))
                    .map_err(db_error)?,
            ) {
                let (k, v) = entry.map_err(db_error)?;
                let data = v.value();
                bytes = bytes.saturating_add(data.len());
                if k.value().1 != expected || bytes > max_bytes {
                    whole = false;
                    break;
                }
                read.blocks.push(data.to_vec());
            }
            whole &= read.blocks.len() as u64 == head.length;
            out.push(Some(whole.then_some(read)));
        }
        Ok(out)
    }

    /// Make every commit up to number `upto` durable: one durable commit (with what
    /// is pending), unless one came after it already (also while this call waited for
    /// another's to end).
    pub(super) fn sync(&self, upto: u64) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        state.check()?;
        if state.durable >= upto {
            return Ok(());
        }
        state.commit(&self.db, true, |_| Ok(()))?;
        Ok(())
    }

    /// The block at `index` of feed `key`.
    pub(super) fn block(
        &self,
        key: &[u8; 32],
        index: u64,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.settle(key)?;
        let tx = self.db.begin_read().map_err(db_error)?;
        let blocks = tx.open_table(BLOCKS).map_err(db_error)?;
        Ok(blocks
            .get((*key, index))
            .map_err(db_error)?
            .map(|v| v.value().to_vec()))
    }

    /// The blocks of feed `key` from `start` on, as [`FeedStorage::blocks`](crate::storage::FeedStorage::blocks)
    /// answers them.
    pub(super) fn blocks(
        &self,
        key: &[u8; 32],
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        self.settle(key)?;
        let tx = self.db.begin_read().map_err(db_error)?;
        let table = tx.open_table(BLOCKS).map_err(db_error)?;
        if start >= end {
            return Ok(Vec::new());
        }
        let mut range = table.range((*key, start)..(*key, end)).map_err(db_error)?;
        crate::storage::take_range(start, end, max_bytes, |index| {
            // Rows come in index order: the next one is block `index` or a gap.
            match range.next() {
                Some(entry) => {
                    let (k, v) = entry.map_err(db_error)?;
                    Ok((k.value().1 == index).then(|| v.value().to_vec()))
                }
                None => Ok(None),
            }
        })
    }

    /// The tree node at `index` of feed `key`.
    pub(super) fn node(
        &self,
        key: &[u8; 32],
        index: u64,
    ) -> Result<Option<StoredNode>, StorageError> {
        self.settle(key)?;
        let tx = self.db.begin_read().map_err(db_error)?;
        let nodes = tx.open_table(NODES).map_err(db_error)?;
        let Some(slot) = nodes.get((*key, index)).map_err(db_error)? else {
            return Ok(None);
        };
        let slot = slot.value();
        let node = decode_tree_slot(index, &slot);
        if encode_tree_slot(&node) != slot {
            return Err(corrupt(key, &format!("node {index} fails its checksum")));
        }
        Ok(Some(node))
    }

    /// Every block and node of feed `key`.
    pub(super) fn contents(&self, key: &[u8; 32]) -> Result<Contents, StorageError> {
        self.settle(key)?;
        let tx = self.db.begin_read().map_err(db_error)?;
        let blocks = tx.open_table(BLOCKS).map_err(db_error)?;
        let mut out = Contents {
            blocks: Vec::new(),
            nodes: Vec::new(),
        };
        for entry in blocks.range(rows(key)).map_err(db_error)? {
            let (k, v) = entry.map_err(db_error)?;
            out.blocks.push((k.value().1, v.value().to_vec()));
        }
        let nodes = tx.open_table(NODES).map_err(db_error)?;
        for entry in nodes.range(rows(key)).map_err(db_error)? {
            let (k, v) = entry.map_err(db_error)?;
            let index = k.value().1;
            let slot = v.value();
            let node = decode_tree_slot(index, &slot);
            if encode_tree_slot(&node) != slot {
                return Err(corrupt(key, &format!("node {index} fails its checksum")));
            }
            out.nodes.push(node);
        }
        Ok(out)
    }

    /// Remove feed `key` and all its rows with the next commit.
    pub(super) fn remove_later(&self, key: &[u8; 32]) -> Result<(), StorageError> {
        lock(&self.state).push(&self.db, *key, 0, Op::Remove { key: *key })?;
        Ok(())
    }

    /// Remove feed `key` and all its rows, durably.
    pub(super) fn remove(&self, key: &[u8; 32]) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        state.push(&self.db, *key, 0, Op::Remove { key: *key })?;
        state.commit(&self.db, true, |_| Ok(()))?;
        Ok(())
    }
}

/// A feed row's secret key and head.
fn decode_row(
    key: &[u8; 32],
    row: &[u8],
) -> Result<(Option<[u8; 32]>, Option<StoredHead>), StorageError> {
    if row.len() != META_LEN + RECORD_HEAD_LEN as usize {
        return Err(corrupt(key, "feed row of the wrong length"));
    }
    let secret_key = decode_meta(&row[..META_LEN], key).map_err(|what| corrupt(key, what))?;
    let head = decode_head(&row[META_LEN..]).ok_or_else(|| corrupt(key, "bad head flag"))?;
    Ok((secret_key, head))
}

impl Drop for SmallFeeds {
    /// Commit what is pending, durably, as a per-feed log's unsynced writes reach the
    /// file at close too (a failure here is found by the next open: they are lost).
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if !state.pending.is_empty() && !state.broken {
            let _ = state.commit(&self.db, true, |_| Ok(()));
        }
    }
}
