//! A feed's durability: the log's fsync (on a helper thread with `sync_start`), the
//! directory syncs after a create, a feed failed by a write or sync, and when a
//! checkpoint starts and ends (the checkpoint itself runs in `checkpoint`).

use std::fs::File;
use std::io;

use super::cache::FileKind;
use super::checkpoint::SlotFiles;
use super::files::sync_dir;
use super::format::encode_state;
use super::FeedInner;
use crate::storage::StorageError;

/// An `fdatasync` of the log on a helper thread ([`FeedStorage::sync_start`](crate::storage::FeedStorage::sync_start)).
#[derive(Debug)]
pub(super) struct PendingSync {
    /// The log's length when the sync started: everything before it is durable once
    /// the sync returns Ok.
    upto: u64,
    done: std::thread::JoinHandle<io::Result<()>>,
}

impl FeedInner {
    /// Wait for the checkpoint running on a helper thread, if any, and take its result:
    /// on success its offset becomes `applied` ([`Unindexed::wait`](super::checkpoint::Unindexed::wait)).
    pub(super) fn checkpoint_wait(&mut self) -> Result<(), StorageError> {
        if let Some(upto) = self.unindexed.wait()? {
            self.applied = upto;
        }
        Ok(())
    }

    /// The log offset up to which a checkpoint holds or will hold every record.
    fn checkpointed(&self) -> u64 {
        self.unindexed.running_upto().unwrap_or(self.applied)
    }

    pub(super) fn over_checkpoint_threshold(&self, factor: u64) -> bool {
        let config = &self.shared.config;
        self.log_len.saturating_sub(self.checkpointed())
            >= config.checkpoint_bytes.saturating_mul(factor)
            || self.unindexed.recent_len() as u64
                >= (config.checkpoint_entries as u64).saturating_mul(factor)
    }

    pub(super) fn check_failed(&self) -> Result<(), StorageError> {
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

    pub(super) fn sync_start(&mut self) -> Result<(), StorageError> {
        self.check_failed()?;
        if self.small {
            return Ok(()); // `sync` shares one commit among the feeds waiting for it.
        }
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

    pub(super) fn sync(&mut self) -> Result<(), StorageError> {
        self.check_failed()?;
        if self.small {
            if let Err(e) = self.shared.small.sync(self.small_commit) {
                self.failed = true;
                return Err(e);
            }
            return Ok(());
        }
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
        if self.rows_left {
            self.shared.small.remove_later(&self.key)?;
            self.rows_left = false;
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
    pub(super) fn checkpoint_start(&mut self) -> Result<(), StorageError> {
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
}
