//! Opening a feed: load the checkpoint, replay the log records after it, cut a torn
//! tail (and refuse a log damaged anywhere else); remove the directories of creates a
//! crash interrupted.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::cache::FileKind;
use super::crc::Crc;
use super::files::{corrupt, for_each_in_subdirs, read_bounded};
use super::format::{
    decode_head, decode_state, log_header, u32_at, u64_at, BlockLoc, Record, LOG_HEADER_LEN,
    MAX_BLOCK_INDEX, MAX_NODE_INDEX, MAX_RECORD_BYTES, MAX_STATE_BYTES, RECORD_BLOCK_LEN,
    RECORD_HEADER_LEN, RECORD_HEAD_LEN, RECORD_MAGIC, RECORD_NODE_LEN,
};
use super::FeedInner;
use crate::storage::{StorageError, StoredNode};

/// Bytes read at once while checking records on open.
const READ_CHUNK: usize = 1 << 20;

impl FeedInner {
    /// Load the checkpoint and replay the log after it; cut a torn tail.
    pub(super) fn load(&mut self) -> Result<(), StorageError> {
        let state_path = self.dir.join("state");
        match read_bounded(&state_path, MAX_STATE_BYTES) {
            Ok(state) => {
                let state = decode_state(&state, &state_path)?;
                self.applied = state.applied.max(LOG_HEADER_LEN);
                self.head = state.head;
                self.bitfield = state.bitfield;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(corrupt(&state_path, 0, "state larger than allowed"))
            }
            Err(e) => return Err(e.into()),
        }
        let log_path = self.path(FileKind::Log);
        let Some(log) = self.file(FileKind::Log, false)? else {
            if self.applied > LOG_HEADER_LEN {
                return Err(corrupt(
                    &log_path,
                    0,
                    "log missing but a checkpoint needs it",
                ));
            }
            return Ok(());
        };
        let len = log.metadata()?.len();
        if len < LOG_HEADER_LEN {
            if self.applied > LOG_HEADER_LEN {
                return Err(corrupt(&log_path, len, "log shorter than its checkpoint"));
            }
            // Created but its header never made it: nothing was acknowledged.
            log.set_len(0)?;
            (&*log).write_all(&log_header())?;
            self.log_len = LOG_HEADER_LEN;
            self.unsynced = true;
            return Ok(());
        }
        let mut header = [0u8; LOG_HEADER_LEN as usize];
        log.read_exact_at(&mut header, 0)?;
        if header != log_header() {
            return Err(corrupt(&log_path, 0, "bad log header"));
        }
        if len < self.applied {
            return Err(corrupt(&log_path, len, "log shorter than its checkpoint"));
        }
        let mut at = self.applied;
        let (mut buf, mut chunk) = (Vec::new(), Vec::new());
        while at < len {
            match read_record(&log, at, len, &mut buf, &mut chunk)? {
                RecordRead::Valid(record) => {
                    self.apply(&record);
                    at = record.end;
                }
                RecordRead::Invalid(what) => {
                    if let Some(valid_at) = find_valid_record(&log, at + 1, len)? {
                        return Err(corrupt(
                            &log_path,
                            at,
                            &format!("{what}, with a valid record after it at {valid_at}"),
                        ));
                    }
                    tracing::warn!(path = %log_path.display(), at, len, what, "cutting torn log tail");
                    log.set_len(at)?;
                    log.sync_data()?;
                    break;
                }
            }
        }
        self.log_len = at;
        Ok(())
    }
}

/// Remove directories of creates that a crash interrupted (before their rename).
pub(super) fn remove_leftovers(feeds_dir: &Path) -> io::Result<()> {
    for_each_in_subdirs(feeds_dir, |entry| {
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            fs::remove_dir_all(entry.path())?;
        }
        Ok(())
    })
}

/// What reading one log record found.
pub(super) enum RecordRead {
    /// A whole record that passes its checksum.
    Valid(Record),
    /// The bytes at this offset are not a whole, valid record.
    Invalid(&'static str),
}

/// Read and check the record at `at`, with the log `len` bytes long. I/O errors are
/// errors; anything wrong with the bytes is `Invalid`.
pub(super) fn read_record(
    file: &File,
    at: u64,
    len: u64,
    buf: &mut Vec<u8>,
    chunk: &mut Vec<u8>,
) -> io::Result<RecordRead> {
    use RecordRead::Invalid;
    let remaining = len - at;
    if remaining < RECORD_HEADER_LEN {
        return Ok(Invalid("record header cut short"));
    }
    let mut header = [0u8; RECORD_HEADER_LEN as usize];
    file.read_exact_at(&mut header, at)?;
    if u32_at(&header, 0) != RECORD_MAGIC {
        return Ok(Invalid("bad record magic"));
    }
    let crc = u32_at(&header, 4);
    let body_len = u64_at(&header, 8);
    let n_blocks = u64::from(u32_at(&header, 16));
    let n_nodes = u64::from(u32_at(&header, 20));
    if body_len > MAX_RECORD_BYTES {
        return Ok(Invalid("record length over the limit"));
    }
    if body_len > remaining - RECORD_HEADER_LEN {
        return Ok(Invalid("record cut short"));
    }
    let meta_len = RECORD_HEAD_LEN + n_blocks * RECORD_BLOCK_LEN + n_nodes * RECORD_NODE_LEN;
    if meta_len > body_len {
        return Ok(Invalid("record entries overrun its length"));
    }
    // Bounded: meta_len <= body_len <= MAX_RECORD_BYTES and <= the bytes in the file.
    buf.clear();
    buf.resize(meta_len as usize, 0);
    file.read_exact_at(buf, at + RECORD_HEADER_LEN)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[8..]);
    hasher.update(buf);
    let mut record_crc = Crc::new();
    record_crc.push(hasher.finalize(), RECORD_HEADER_LEN - 8 + meta_len);
    let Some(head) = decode_head(&buf[..RECORD_HEAD_LEN as usize]) else {
        return Ok(Invalid("bad head flag"));
    };
    let mut offset = at + RECORD_HEADER_LEN + meta_len;
    let end = at + RECORD_HEADER_LEN + body_len;
    let mut blocks = Vec::with_capacity(n_blocks as usize);
    for k in 0..n_blocks as usize {
        let e = RECORD_HEAD_LEN as usize + k * RECORD_BLOCK_LEN as usize;
        let index = u64_at(buf, e);
        let block_len = u32_at(buf, e + 8);
        if index >= MAX_BLOCK_INDEX {
            return Ok(Invalid("record block index out of range"));
        }
        if offset + u64::from(block_len) > end {
            return Ok(Invalid("record blocks overrun its length"));
        }
        blocks.push((
            index,
            BlockLoc {
                offset,
                len: block_len,
                crc: 0,
            },
        ));
        offset += u64::from(block_len);
    }
    if offset != end {
        return Ok(Invalid("record blocks do not fill its length"));
    }
    let node_base = RECORD_HEAD_LEN as usize + n_blocks as usize * RECORD_BLOCK_LEN as usize;
    let mut nodes = Vec::with_capacity(n_nodes as usize);
    for k in 0..n_nodes as usize {
        let e = node_base + k * RECORD_NODE_LEN as usize;
        let index = u64_at(buf, e);
        if index >= MAX_NODE_INDEX {
            return Ok(Invalid("record node index out of range"));
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&buf[e + 8..e + 40]);
        nodes.push(StoredNode {
            index,
            hash,
            size: u64_at(buf, e + 40),
        });
    }
    // Payloads, contiguous after the entries, read in chunks of up to `READ_CHUNK`:
    // per-block checksums, combined into the record's.
    let payload_start = at + RECORD_HEADER_LEN + meta_len;
    chunk.resize(((end - payload_start) as usize).min(READ_CHUNK), 0);
    let mut window = (payload_start, payload_start); // bytes of the log in `chunk`
    for (_, loc) in blocks.iter_mut() {
        let mut h = crc32fast::Hasher::new();
        let (mut pos, block_end) = (loc.offset, loc.offset + u64::from(loc.len));
        while pos < block_end {
            if pos >= window.1 {
                let n = (end - pos).min(chunk.len() as u64) as usize;
                file.read_exact_at(&mut chunk[..n], pos)?;
                window = (pos, pos + n as u64);
            }
            let from = (pos - window.0) as usize;
            let to = (block_end.min(window.1) - window.0) as usize;
            h.update(&chunk[from..to]);
            pos = window.0 + to as u64;
        }
        loc.crc = h.finalize();
        record_crc.push(loc.crc, u64::from(loc.len));
    }
    if record_crc.value() != crc {
        return Ok(Invalid("record fails its checksum"));
    }
    Ok(RecordRead::Valid(Record {
        end,
        head,
        blocks,
        nodes,
    }))
}

/// Scan for a valid record starting anywhere in `[from, len)`.
pub(super) fn find_valid_record(file: &File, from: u64, len: u64) -> io::Result<Option<u64>> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let mut chunk = vec![0u8; READ_CHUNK];
    let (mut buf, mut record_chunk) = (Vec::new(), Vec::new());
    let mut pos = from;
    while pos + RECORD_HEADER_LEN <= len {
        let n = (len - pos).min(chunk.len() as u64) as usize;
        file.read_exact_at(&mut chunk[..n], pos)?;
        for i in 0..n.saturating_sub(3) {
            if chunk[i..i + 4] == magic {
                let at = pos + i as u64;
                if let RecordRead::Valid(_) =
                    read_record(file, at, len, &mut buf, &mut record_chunk)?
                {
                    return Ok(Some(at));
                }
            }
        }
        // Overlap by three bytes so a magic split across chunks is seen.
        pos += (n as u64).saturating_sub(3).max(1);
    }
    Ok(None)
}
