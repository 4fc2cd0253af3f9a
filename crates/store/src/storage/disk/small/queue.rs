//! The queue of creates and writes that the shared database of small feeds applies at
//! its next commit ([`State`]), and the row writes a commit is made of: see the parent
//! module for when a commit happens and what a crash keeps.

use std::collections::HashSet;

use redb::{Database, Durability, ReadableTable, WriteTransaction};

use super::{corrupt, db_error, rows, BLOCKS, FEEDS, FILE_NAME, NODES};
use crate::storage::disk::format::{encode_head, encode_tree_slot, META_LEN, TREE_SLOT};
use crate::storage::{StorageError, StoredHead, StoredNode};

#[derive(Debug, Default)]
pub(super) struct State {
    /// Number of the last commit.
    pub(super) last: u64,
    /// Number of the last commit made with `Durability::Immediate`: every commit up to
    /// it is durable.
    pub(super) durable: u64,
    /// Creates and writes not yet committed, in order; the next commit holds them all.
    pub(super) pending: Vec<Op>,
    /// Bytes of blocks in `pending`.
    pub(super) pending_bytes: usize,
    /// The feeds `pending` creates or writes.
    pub(super) touched: HashSet<[u8; 32]>,
    /// A commit failed: what it held is lost, so no later sync may report success.
    pub(super) broken: bool,
}

/// One create or write, waiting for the next commit.
#[derive(Debug)]
pub(super) enum Op {
    Create {
        key: [u8; 32],
        row: Vec<u8>,
    },
    Write {
        key: [u8; 32],
        blocks: Vec<(u64, Vec<u8>)>,
        nodes: Vec<StoredNode>,
        head: Option<StoredHead>,
    },
    Remove {
        key: [u8; 32],
    },
}

/// Pending creates and writes after which they are committed (without an fsync) even
/// if no feed syncs: bounds the memory they hold, and makes each commit's cost (a walk
/// down each table's B-tree, a page write per touched page) shared by many writes.
pub(in crate::storage::disk) const PENDING_OPS: usize = 1024;
/// Pending block bytes after which they are committed, as [`PENDING_OPS`].
const PENDING_BYTES: usize = 4 << 20;

impl State {
    pub(super) fn check(&self) -> Result<(), StorageError> {
        if self.broken {
            return Err(StorageError::Io(std::io::Error::other(format!(
                "an earlier commit of {FILE_NAME} failed; open the storage again"
            ))));
        }
        Ok(())
    }

    /// Queue `op`; returns the number of the commit that will hold it.
    pub(super) fn push(
        &mut self,
        db: &Database,
        key: [u8; 32],
        bytes: usize,
        op: Op,
    ) -> Result<u64, StorageError> {
        self.check()?;
        self.touched.insert(key);
        self.pending_bytes = self.pending_bytes.saturating_add(bytes);
        self.pending.push(op);
        let number = self.last + 1;
        if self.pending.len() >= PENDING_OPS || self.pending_bytes >= PENDING_BYTES {
            self.commit(db, false, |_| Ok(()))?;
        }
        Ok(number)
    }

    /// Commit what is pending and `f`, with an fsync if `durable`; returns the commit's
    /// number.
    pub(super) fn commit(
        &mut self,
        db: &Database,
        durable: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<(), StorageError>,
    ) -> Result<u64, StorageError> {
        self.check()?;
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.touched.clear();
        let result = (|| {
            let mut tx = db.begin_write().map_err(db_error)?;
            let durability = if durable {
                Durability::Immediate
            } else {
                Durability::None
            };
            tx.set_durability(durability).map_err(db_error)?;
            apply(&tx, pending)?;
            f(&tx)?;
            tx.commit().map_err(db_error)
        })();
        if let Err(e) = result {
            self.broken = true;
            return Err(e);
        }
        self.last += 1;
        if durable {
            self.durable = self.last;
        }
        Ok(self.last)
    }

    /// Commit what is pending if it touches feed `key` (before reading it).
    pub(super) fn settle(&mut self, db: &Database, key: &[u8; 32]) -> Result<(), StorageError> {
        if self.touched.contains(key) {
            self.commit(db, false, |_| Ok(()))?;
        }
        Ok(())
    }
}

/// Apply queued creates and writes in a write transaction.
pub(super) fn apply(tx: &WriteTransaction, ops: Vec<Op>) -> Result<(), StorageError> {
    if ops.is_empty() {
        return Ok(());
    }
    let mut feeds = tx.open_table(FEEDS).map_err(db_error)?;
    let mut block_rows = tx.open_table(BLOCKS).map_err(db_error)?;
    let mut node_rows = tx.open_table(NODES).map_err(db_error)?;
    for op in ops {
        match op {
            Op::Remove { key } => {
                feeds.remove(key).map_err(db_error)?;
                remove_rows(&mut block_rows, &mut node_rows, &key)?;
            }
            Op::Create { key, row } => {
                feeds.insert(key, row.as_slice()).map_err(db_error)?;
            }
            Op::Write {
                key,
                blocks,
                nodes,
                head,
            } => {
                let data = blocks.iter().map(|(i, d)| (*i, d.as_slice()));
                insert_rows(&mut block_rows, &mut node_rows, &key, data, &nodes)?;
                if let Some(head) = head {
                    let mut row = feeds
                        .get(key)
                        .map_err(db_error)?
                        .ok_or_else(|| corrupt(&key, "written but not created"))?
                        .value()
                        .to_vec();
                    row.truncate(META_LEN);
                    encode_head(&mut row, Some(&head));
                    feeds.insert(key, row.as_slice()).map_err(db_error)?;
                }
            }
        }
    }
    Ok(())
}

/// The block rows of the feeds, open in a write transaction.
pub(super) type BlockRows<'t> = redb::Table<'t, ([u8; 32], u64), &'static [u8]>;
/// The node rows of the feeds, open in a write transaction.
pub(super) type NodeRows<'t> = redb::Table<'t, ([u8; 32], u64), [u8; TREE_SLOT as usize]>;

/// Removes every block and node row of feed `key`.
pub(super) fn remove_rows(
    blocks: &mut BlockRows<'_>,
    nodes: &mut NodeRows<'_>,
    key: &[u8; 32],
) -> Result<(), StorageError> {
    blocks
        .retain_in(rows(key), |_, _| false)
        .map_err(db_error)?;
    nodes.retain_in(rows(key), |_, _| false).map_err(db_error)?;
    Ok(())
}

/// Inserts blocks `data` (by index) and `written` nodes of feed `key`.
pub(super) fn insert_rows<'a>(
    blocks: &mut BlockRows<'_>,
    nodes: &mut NodeRows<'_>,
    key: &[u8; 32],
    data: impl IntoIterator<Item = (u64, &'a [u8])>,
    written: &[StoredNode],
) -> Result<(), StorageError> {
    for (index, data) in data {
        blocks.insert((*key, index), data).map_err(db_error)?;
    }
    for node in written {
        nodes
            .insert((*key, node.index), encode_tree_slot(node))
            .map_err(db_error)?;
    }
    Ok(())
}
