//! Checkpoints: the entries of the log records since the last checkpoint, kept in
//! memory ([`Unindexed`]), are written to the `index` and `tree` slot files and `state`
//! on a helper thread, so that an open replays only the records after it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use super::files::{sync_dir, write_slots};
use super::format::{encode_index_slot, encode_tree_slot, BlockLoc, Record, INDEX_SLOT, TREE_SLOT};
use super::index::Recent;
use crate::storage::{StorageError, StoredNode};

/// The entries of the log records after the last durable checkpoint, which the slot
/// files do not hold yet: the recent ones, and those of the checkpoint running on a
/// helper thread, if any. Reads look here before the slot files.
#[derive(Debug, Default)]
pub(super) struct Unindexed {
    /// Blocks of records after the checkpoint (the running one, if any), not yet in
    /// `index`.
    blocks: Recent<BlockLoc>,
    /// Nodes of those records, not yet in `tree`.
    nodes: Recent<StoredNode>,
    /// A checkpoint being written on a helper thread.
    running: Option<Checkpointing>,
    /// The emptied entry stores of the last checkpoint, reused by the next one (so the
    /// recent index does not grow its window from nothing after every checkpoint).
    spare: Option<(Recent<BlockLoc>, Recent<StoredNode>)>,
}

/// The slot files a checkpoint writes to, open (`None` where it has nothing for one).
#[derive(Debug)]
pub(super) struct SlotFiles {
    pub(super) index: Option<Arc<File>>,
    pub(super) tree: Option<Arc<File>>,
    /// A slot file was created: sync the directory before `state` relies on it.
    pub(super) created: bool,
}

impl Unindexed {
    /// Take in the entries of a record written or replayed.
    pub(super) fn insert(&mut self, record: &Record) {
        for (index, loc) in &record.blocks {
            self.blocks.insert(*index, *loc);
        }
        for node in &record.nodes {
            self.nodes.insert(node.index, *node);
        }
    }

    /// Where block `index` is, if a record after the checkpoint holds it.
    pub(super) fn block(&self, index: u64) -> Option<BlockLoc> {
        match self.blocks.get(index) {
            Some(loc) => Some(*loc),
            None => self.running.as_ref()?.blocks.get(index).copied(),
        }
    }

    /// Node `index`, if a record after the checkpoint holds it.
    pub(super) fn node(&self, index: u64) -> Option<StoredNode> {
        match self.nodes.get(index) {
            Some(node) => Some(*node),
            None => self.running.as_ref()?.nodes.get(index).copied(),
        }
    }

    /// Number of recent entries (blocks and nodes), those of a running checkpoint aside.
    pub(super) fn recent_len(&self) -> usize {
        self.blocks.len() + self.nodes.len()
    }

    /// Whether there are recent blocks (a checkpoint now would write `index`).
    pub(super) fn has_blocks(&self) -> bool {
        !self.blocks.is_empty()
    }

    /// Whether there are recent nodes (a checkpoint now would write `tree`).
    pub(super) fn has_nodes(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The log offset the running checkpoint covers, if one is running.
    pub(super) fn running_upto(&self) -> Option<u64> {
        self.running.as_ref().map(|c| c.upto)
    }

    /// Whether a checkpoint was started and has ended (so [`Unindexed::wait`] would not
    /// block).
    pub(super) fn finished(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|c| !matches!(&c.done, CheckpointDone::Running(h) if !h.is_finished()))
    }

    /// Start a checkpoint at log offset `upto` (the caller has waited for the one
    /// before): the recent entries go to the slot `files`, which are synced, then
    /// `state` (written to `state.tmp` in `dir`, synced, renamed, the directory synced),
    /// all on a helper thread, so the appending thread does none of those writes and
    /// fsyncs; without a thread, here and now.
    pub(super) fn start(&mut self, upto: u64, files: SlotFiles, state: Vec<u8>, dir: PathBuf) {
        let (spare_blocks, spare_nodes) = self.spare.take().unwrap_or_default();
        let blocks = Arc::new(std::mem::replace(&mut self.blocks, spare_blocks));
        let nodes = Arc::new(std::mem::replace(&mut self.nodes, spare_nodes));
        let job = || CheckpointJob {
            index: files.index.clone(),
            tree: files.tree.clone(),
            blocks: Arc::clone(&blocks),
            nodes: Arc::clone(&nodes),
            state: state.clone(),
            dir: dir.clone(),
            created: files.created,
        };
        let thread_job = job();
        let done = match std::thread::Builder::new()
            .name("replic8-checkpoint".into())
            .spawn(move || thread_job.run())
        {
            Ok(handle) => CheckpointDone::Running(handle),
            // No thread: the same work here, now.
            Err(_) => CheckpointDone::Ran(job().run()),
        };
        self.running = Some(Checkpointing {
            upto,
            blocks,
            nodes,
            done,
        });
    }

    /// Wait for the running checkpoint, if any, and take its result: on success, the
    /// log offset it covers (the feed's new checkpoint); on failure its entries go back
    /// to the recent ones (the previous checkpoint and the log still hold everything).
    pub(super) fn wait(&mut self) -> Result<Option<u64>, StorageError> {
        let Some(c) = self.running.take() else {
            return Ok(None);
        };
        let result = match c.done {
            CheckpointDone::Running(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("checkpoint thread panicked"))),
            CheckpointDone::Ran(result) => result,
        };
        match result {
            Ok(()) => {
                // The thread has ended: its handles are gone, so these are the last.
                if let (Ok(mut blocks), Ok(mut nodes)) =
                    (Arc::try_unwrap(c.blocks), Arc::try_unwrap(c.nodes))
                {
                    blocks.clear();
                    nodes.clear();
                    self.spare = Some((blocks, nodes));
                }
                Ok(Some(c.upto))
            }
            Err(e) => {
                // Older than anything recent: only where recent has nothing newer.
                for (i, loc) in c.blocks.iter() {
                    if self.blocks.get(i).is_none() {
                        self.blocks.insert(i, *loc);
                    }
                }
                for (i, node) in c.nodes.iter() {
                    if self.nodes.get(i).is_none() {
                        self.nodes.insert(i, *node);
                    }
                }
                Err(e.into())
            }
        }
    }
}

/// A checkpoint written on a helper thread ([`Unindexed::start`]): the slot
/// files, `state`, the directory, each synced in that order. Until it is collected,
/// the feed's checkpoint stays the previous one and reads find these entries here.
#[derive(Debug)]
struct Checkpointing {
    /// The log offset it covers (the feed's checkpoint once it is done).
    upto: u64,
    /// The entries it writes to `index` and `tree`.
    blocks: Arc<Recent<BlockLoc>>,
    nodes: Arc<Recent<StoredNode>>,
    done: CheckpointDone,
}

/// A checkpoint's thread, or the result of one written without a thread.
#[derive(Debug)]
enum CheckpointDone {
    /// Returns Ok once the checkpoint is durable.
    Running(std::thread::JoinHandle<io::Result<()>>),
    Ran(io::Result<()>),
}

/// What a checkpoint writes ([`Unindexed::start`]), for its helper thread.
struct CheckpointJob {
    index: Option<Arc<File>>,
    tree: Option<Arc<File>>,
    blocks: Arc<Recent<BlockLoc>>,
    nodes: Arc<Recent<StoredNode>>,
    state: Vec<u8>,
    dir: PathBuf,
    /// A slot file was created: sync the directory before `state` relies on it.
    created: bool,
}

impl CheckpointJob {
    fn run(self) -> io::Result<()> {
        if let Some(index) = &self.index {
            let mut slots: Vec<(u64, [u8; INDEX_SLOT as usize])> = self
                .blocks
                .iter()
                .map(|(i, loc)| (i, encode_index_slot(i, loc)))
                .collect();
            slots.sort_unstable_by_key(|(i, _)| *i);
            write_slots(index, INDEX_SLOT, &slots)?;
            index.sync_data()?;
        }
        if let Some(tree) = &self.tree {
            let mut slots: Vec<(u64, [u8; TREE_SLOT as usize])> = self
                .nodes
                .iter()
                .map(|(_, n)| (n.index, encode_tree_slot(n)))
                .collect();
            slots.sort_unstable_by_key(|(i, _)| *i);
            write_slots(tree, TREE_SLOT, &slots)?;
            tree.sync_data()?;
        }
        let tmp = self.dir.join("state.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&self.state)?;
            f.sync_data()?;
        }
        if self.created {
            sync_dir(&self.dir)?;
        }
        fs::rename(&tmp, self.dir.join("state"))?;
        sync_dir(&self.dir)
    }
}
