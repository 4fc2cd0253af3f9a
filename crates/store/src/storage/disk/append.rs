//! Writing batches: each one a checksummed log record, written with one vectored write,
//! or, for a large append, with its blocks written on a helper thread while the caller
//! hashes them (the overlapped write of
//! [`DiskFeed::write_append_hashing`](super::DiskFeed::write_append_hashing)).

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::cache::FileKind;
use super::crc::Crc;
use super::files::write_all_vectored;
use super::format::{
    check_node_indices, encode_record_meta, log_header, record_size, seal_record, BlockLoc, Record,
    LOG_HEADER_LEN, MAX_BLOCK_INDEX, RECORD_HEADER_LEN,
};
use super::FeedInner;
use crate::storage::{StorageError, StoredHead, StoredNode};

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

impl FeedInner {
    /// Writes a batch of `blocks`, `nodes` and `head` to the feed's own files, with the
    /// blocks borrowed: one log record, written with one vectored write.
    pub(super) fn write_parts(
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
    pub(super) fn write_append_hashing(
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
    pub(super) fn open_log_for_write(&mut self) -> Result<Arc<File>, StorageError> {
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
    pub(super) fn cut_log(&mut self, log: &File, start: u64) {
        if log.set_len(start).is_err() {
            self.failed = true;
        }
    }

    /// Take a record written whole into the in-memory index.
    pub(super) fn record_written(
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
}
