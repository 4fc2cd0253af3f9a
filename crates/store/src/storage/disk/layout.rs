//! Which of the two layouts a write goes to: the shared database while a small feed
//! stays within [`DiskConfig::small_feed_bytes`](super::DiskConfig::small_feed_bytes),
//! else its own directory, into which a small feed is moved first.

use super::bitfield::Bitfield;
use super::files::sync_dir;
use super::format::{check_node_indices, record_size, MAX_BLOCK_INDEX};
use super::{small, FeedInner};
use crate::storage::{StorageError, StoredHead, StoredNode};

impl FeedInner {
    /// Whether a write of `blocks` and `node_count` nodes goes to the shared database:
    /// the feed is there and stays within [`DiskConfig::small_feed_bytes`](super::DiskConfig::small_feed_bytes) with it. A
    /// feed there that would not is moved into its own directory first. Limits are
    /// checked first, as the log checks them, so a write refused for them moves nothing.
    pub(super) fn stays_small<'a>(
        &mut self,
        blocks: impl Iterator<Item = (u64, &'a [u8])> + Clone,
        node_count: usize,
    ) -> Result<bool, StorageError> {
        if !self.small {
            return Ok(false);
        }
        self.check_failed()?;
        if let Some((index, _)) = blocks.clone().find(|(i, _)| *i >= MAX_BLOCK_INDEX) {
            return Err(StorageError::Limit(format!(
                "block index {index} is not below {MAX_BLOCK_INDEX}"
            )));
        }
        let count = blocks.clone().count();
        let data_len = small::stored_bytes(blocks.clone().map(|(_, d)| d), 0);
        record_size(count, node_count, data_len)?;
        let adding = small::stored_bytes(blocks.map(|(_, d)| d), node_count);
        if self.small_bytes.saturating_add(adding) <= self.shared.config.small_feed_bytes {
            return Ok(true);
        }
        self.move_out()?;
        Ok(false)
    }

    /// Write to the shared database (the feed is there: [`FeedInner::stays_small`]).
    pub(super) fn small_write(
        &mut self,
        blocks: &[(u64, &[u8])],
        nodes: &[StoredNode],
        head: Option<StoredHead>,
    ) -> Result<(), StorageError> {
        check_node_indices(nodes)?;
        let commit = self
            .shared
            .small
            .write(&self.key, blocks, nodes, head.as_ref())?;
        self.small_commit = commit;
        self.small_bytes = self.small_bytes.saturating_add(small::stored_bytes(
            blocks.iter().map(|(_, d)| *d),
            nodes.len(),
        ));
        self.bitfield.set_all(blocks.iter().map(|(i, _)| *i));
        if head.is_some() {
            self.head = head;
        }
        Ok(())
    }

    /// Move a small feed into a directory of its own: everything it holds is written
    /// there as one log record and synced before the directory is renamed into place,
    /// then its rows are removed from the shared database. A crash before the rename
    /// leaves the feed in the database (the temporary directory is removed on open);
    /// after it, the directory wins and `open` removes the rows.
    fn move_out(&mut self) -> Result<(), StorageError> {
        let contents = self.shared.small.contents(&self.key)?;
        if contents.blocks.is_empty() && contents.nodes.is_empty() && self.head.is_none() {
            return self.move_out_empty();
        }
        let blocks: Vec<(u64, &[u8])> = contents
            .blocks
            .iter()
            .map(|(i, d)| (*i, d.as_slice()))
            .collect();
        let (shared, key, secret_key, head) = (&self.shared, self.key, self.secret_key, self.head);
        let dir = shared.make_feed_dir(&key, secret_key.as_ref(), |tmp| {
            let mut staged = FeedInner::new(shared, key, tmp.to_path_buf(), secret_key);
            staged.write_parts(&blocks, contents.nodes, head)?;
            staged.sync()
        })?;
        let fan = dir.parent().unwrap_or(&self.shared.feeds_dir);
        sync_dir(fan)?;
        self.small = false;
        self.small_bytes = 0;
        self.dir = dir;
        self.needs_dir_sync = false;
        self.bitfield = Bitfield::default();
        self.load()?;
        self.shared.small.remove(&self.key)
    }

    /// Move a feed that holds nothing into a directory of its own, with no fsync (a
    /// feed that goes straight to bulk appends, as every `bench append` feed does, would
    /// otherwise pay five): the directory, holding nothing more than the row did, wins
    /// over the row wherever both survive a crash, and the row is removed only once the
    /// feed's first sync has made the directory durable (`rows_left`), so no crash
    /// loses both.
    fn move_out_empty(&mut self) -> Result<(), StorageError> {
        let dir = self
            .shared
            .make_feed_dir(&self.key, self.secret_key.as_ref(), |_| Ok(()))?;
        self.small = false;
        self.small_bytes = 0;
        self.dir = dir;
        self.needs_dir_sync = true;
        self.rows_left = true;
        Ok(())
    }
}
