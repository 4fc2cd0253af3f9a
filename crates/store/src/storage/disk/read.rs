//! Reading blocks and nodes: from the recent entries or the slot files, then the log,
//! each block checked against its checksum; a range of small blocks in one log read.

use std::os::unix::fs::FileExt;

use super::cache::FileKind;
use super::files::{corrupt, read_slot};
use super::format::{
    decode_index_slot, decode_tree_slot, encode_index_slot, encode_tree_slot, BlockLoc, INDEX_SLOT,
    LOG_HEADER_LEN, MAX_NODE_INDEX, TREE_SLOT,
};
use super::FeedInner;
use crate::storage::{StorageError, StoredNode};

/// Most index slots one range read takes at a time (96 KiB): a sync answer asks for at
/// most 4,096 blocks, and a larger `end` from a caller must not size an allocation.
const SLOTS_PER_READ: u64 = 4096;
/// Blocks smaller than this that lie back to back in the log are read in one call.
const RUN_BLOCK_MAX: u32 = 16 * 1024;

impl FeedInner {
    pub(super) fn block(&mut self, index: u64) -> Result<Option<Vec<u8>>, StorageError> {
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
    /// answer of 1 KiB blocks is two reads instead of 128). Each block goes into a buffer
    /// from `buffer` (see [`FeedStorage::blocks_into`](crate::storage::FeedStorage::blocks_into)).
    pub(super) fn blocks(
        &mut self,
        start: u64,
        end: u64,
        max_bytes: usize,
        buffer: &mut dyn FnMut(usize) -> Vec<u8>,
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
                // Only bytes past the buffer's old length are zeroed: the read overwrites
                // all of them, or fails and the buffer is dropped unsent.
                let mut data = buffer(first.len as usize);
                data.resize(first.len as usize, 0);
                log.read_exact_at(&mut data, first.offset)?;
                out.push(data);
            } else {
                run.clear();
                run.resize(run_len as usize, 0);
                log.read_exact_at(&mut run, first.offset)?;
                let mut from = 0usize;
                for (_, loc) in &locs[at..stop] {
                    let mut data = buffer(loc.len as usize);
                    data.clear();
                    data.extend_from_slice(&run[from..from + loc.len as usize]);
                    out.push(data);
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
    pub(super) fn read_slots(&self, from: u64, end: u64) -> Result<Vec<u8>, StorageError> {
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
    pub(super) fn index_slot(&self, index: u64) -> Result<BlockLoc, StorageError> {
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
    pub(super) fn check_slot(
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

    pub(super) fn node(&mut self, index: u64) -> Result<Option<StoredNode>, StorageError> {
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
