//! The on-disk format: the layout of `meta`, `log` and its records, the `tree` and
//! `index` slots and `state`, with their encoders and decoders. No file I/O here.

use std::path::Path;

use super::bitfield::{Bitfield, PAGE_BITS, PAGE_WORDS};
use super::crc::Crc;
use super::files::corrupt;
use crate::storage::{StorageError, StoredHead, StoredNode};

/// Magic at the start of `log`.
pub(super) const LOG_MAGIC: &[u8; 8] = b"R8FLOG01";
/// Length of the `log` file header (magic plus reserved bytes).
pub(super) const LOG_HEADER_LEN: u64 = 16;
/// Magic at the start of every log record.
pub(super) const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"R8BR");
/// Record header: magic, crc, body length, block count, node count.
pub(super) const RECORD_HEADER_LEN: u64 = 24;
/// Fixed part of a record body: head flag, padding, head.
pub(super) const RECORD_HEAD_LEN: u64 = 112;
/// One block entry in a record: index, length, padding.
pub(super) const RECORD_BLOCK_LEN: u64 = 16;
/// One node entry in a record: index, hash, size.
pub(super) const RECORD_NODE_LEN: u64 = 48;
/// Largest record body accepted on read or write. Bounds what replay allocates; one
/// batch may not exceed it.
pub const MAX_RECORD_BYTES: u64 = 1 << 30;

/// Magic and size of `meta`.
pub(super) const META_MAGIC: &[u8; 8] = b"R8FMETA1";
pub(super) const META_LEN: usize = 84;

/// Magic of `state`; its size is bounded by [`MAX_STATE_BYTES`].
pub(super) const STATE_MAGIC: &[u8; 8] = b"R8FSTAT1";
/// Fixed part of `state` before the bitfield pages: magic, applied offset, head flag,
/// padding, head, page count.
pub(super) const STATE_FIXED_LEN: usize = 8 + 8 + 8 + 104 + 8;
/// One bitfield page in `state`: page number, then its words.
pub(super) const STATE_PAGE_LEN: usize = 8 + 8 * PAGE_WORDS;
/// Largest `state` file accepted (a bitfield of about 4 billion blocks).
pub(super) const MAX_STATE_BYTES: u64 = 512 << 20;

/// Highest block index this storage holds (exclusive): 2^36 blocks, 64 TiB of 1 KiB
/// blocks. The slot files are arrays indexed by block and node, so the bound keeps their
/// offsets inside what a file system allows (ext4: 16 TiB per file).
pub const MAX_BLOCK_INDEX: u64 = 1 << 36;
/// Highest tree-node (flat-tree) index this storage holds (exclusive).
pub const MAX_NODE_INDEX: u64 = 2 * MAX_BLOCK_INDEX;

/// Size of one slot in `tree`: hash, size, crc, padding.
pub(super) const TREE_SLOT: u64 = 48;
/// Size of one slot in `index`: log offset, length, data crc, slot crc, padding.
pub(super) const INDEX_SLOT: u64 = 24;

/// Where a block's bytes are in `log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BlockLoc {
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) crc: u32,
}

/// A decoded record (payloads stay in the log).
pub(super) struct Record {
    pub(super) end: u64,
    pub(super) head: Option<StoredHead>,
    pub(super) blocks: Vec<(u64, BlockLoc)>,
    pub(super) nodes: Vec<StoredNode>,
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(super) fn encode_head(out: &mut Vec<u8>, head: Option<&StoredHead>) {
    match head {
        Some(h) => {
            out.push(1);
            out.extend_from_slice(&[0u8; 7]);
            out.extend_from_slice(&h.length.to_le_bytes());
            out.extend_from_slice(&h.tree_hash);
            out.extend_from_slice(&h.signature);
        }
        None => out.extend_from_slice(&[0u8; 112]),
    }
}

/// Decode the 112-byte head field; `None` for a bad flag.
pub(super) fn decode_head(b: &[u8]) -> Option<Option<StoredHead>> {
    match b[0] {
        0 => Some(None),
        1 => {
            let mut tree_hash = [0u8; 32];
            tree_hash.copy_from_slice(&b[16..48]);
            let mut signature = [0u8; 64];
            signature.copy_from_slice(&b[48..112]);
            Some(Some(StoredHead {
                length: u64_at(b, 8),
                tree_hash,
                signature,
            }))
        }
        _ => None,
    }
}

/// `meta`: magic, version, flags, the public key, the secret key (zeros for none), a crc.
pub(super) fn encode_meta(key: &[u8; 32], secret_key: Option<&[u8; 32]>) -> Vec<u8> {
    let mut meta = Vec::with_capacity(META_LEN);
    meta.extend_from_slice(META_MAGIC);
    meta.extend_from_slice(&1u32.to_le_bytes());
    meta.extend_from_slice(&u32::from(secret_key.is_some()).to_le_bytes());
    meta.extend_from_slice(key);
    meta.extend_from_slice(secret_key.unwrap_or(&[0; 32]));
    let crc = crc32fast::hash(&meta);
    meta.extend_from_slice(&crc.to_le_bytes());
    meta
}

pub(super) fn decode_meta(meta: &[u8], key: &[u8; 32]) -> Result<Option<[u8; 32]>, &'static str> {
    if meta.len() != META_LEN {
        return Err("meta has the wrong size");
    }
    if &meta[..8] != META_MAGIC {
        return Err("meta has a bad magic");
    }
    if crc32fast::hash(&meta[..80]) != u32_at(meta, 80) {
        return Err("meta fails its checksum");
    }
    if u32_at(meta, 8) != 1 {
        return Err("meta has an unknown version");
    }
    if meta[16..48] != key[..] {
        return Err("meta names another key");
    }
    let mut secret = [0u8; 32];
    secret.copy_from_slice(&meta[48..80]);
    match u32_at(meta, 12) {
        0 => Ok(None),
        1 => Ok(Some(secret)),
        _ => Err("meta has unknown flags"),
    }
}

pub(super) fn log_header() -> [u8; LOG_HEADER_LEN as usize] {
    let mut h = [0u8; LOG_HEADER_LEN as usize];
    h[..8].copy_from_slice(LOG_MAGIC);
    h
}

/// A record's entry and body lengths for `blocks` blocks of `data_len` bytes in all and
/// `nodes` nodes, checked against the limits.
pub(super) fn record_size(
    blocks: usize,
    nodes: usize,
    data_len: u64,
) -> Result<(u64, u64), StorageError> {
    if u32::try_from(blocks).is_err() {
        return Err(StorageError::Limit("too many blocks in one batch".into()));
    }
    if u32::try_from(nodes).is_err() {
        return Err(StorageError::Limit("too many nodes in one batch".into()));
    }
    let meta_len =
        RECORD_HEAD_LEN + blocks as u64 * RECORD_BLOCK_LEN + nodes as u64 * RECORD_NODE_LEN;
    let body_len = meta_len.saturating_add(data_len);
    if body_len > MAX_RECORD_BYTES {
        return Err(StorageError::Limit(format!(
            "batch of {body_len} bytes is over {MAX_RECORD_BYTES}"
        )));
    }
    Ok((meta_len, body_len))
}

pub(super) fn check_node_indices(nodes: &[StoredNode]) -> Result<(), StorageError> {
    match nodes.iter().find(|n| n.index >= MAX_NODE_INDEX) {
        Some(node) => Err(StorageError::Limit(format!(
            "node index {} is not below {MAX_NODE_INDEX}",
            node.index
        ))),
        None => Ok(()),
    }
}

/// Encode a record's header (checksum left zero) and entries into `out`; the counts
/// are within [`record_size`]'s limits.
pub(super) fn encode_record_meta(
    out: &mut Vec<u8>,
    blocks: impl ExactSizeIterator<Item = (u64, usize)>,
    nodes: &[StoredNode],
    head: Option<&StoredHead>,
    body_len: u64,
) {
    out.clear();
    out.resize(RECORD_HEADER_LEN as usize, 0);
    out[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    out[8..16].copy_from_slice(&body_len.to_le_bytes());
    out[16..20].copy_from_slice(&(blocks.len() as u32).to_le_bytes());
    out[20..24].copy_from_slice(&(nodes.len() as u32).to_le_bytes());
    encode_head(out, head);
    for (index, len) in blocks {
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
    }
    for node in nodes {
        out.extend_from_slice(&node.index.to_le_bytes());
        out.extend_from_slice(&node.hash);
        out.extend_from_slice(&node.size.to_le_bytes());
    }
}

/// Set the checksum of the record header and entries in `meta`, followed in the log by
/// blocks whose checksum is `data`.
pub(super) fn seal_record(meta: &mut [u8], data: Crc) {
    let mut crc = Crc::new();
    crc.push(crc32fast::hash(&meta[8..]), meta.len() as u64 - 8);
    crc.append(data);
    meta[4..8].copy_from_slice(&crc.value().to_le_bytes());
}

pub(super) fn encode_index_slot(index: u64, loc: &BlockLoc) -> [u8; INDEX_SLOT as usize] {
    let mut s = [0u8; INDEX_SLOT as usize];
    s[0..8].copy_from_slice(&loc.offset.to_le_bytes());
    s[8..12].copy_from_slice(&loc.len.to_le_bytes());
    s[12..16].copy_from_slice(&loc.crc.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(&s[..16]);
    s[16..20].copy_from_slice(&h.finalize().to_le_bytes());
    s
}

pub(super) fn encode_tree_slot(node: &StoredNode) -> [u8; TREE_SLOT as usize] {
    let mut s = [0u8; TREE_SLOT as usize];
    s[0..32].copy_from_slice(&node.hash);
    s[32..40].copy_from_slice(&node.size.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&node.index.to_le_bytes());
    h.update(&s[..40]);
    s[40..44].copy_from_slice(&h.finalize().to_le_bytes());
    s
}

/// The location an index slot holds (its checksum unchecked: compare the slot with
/// [`encode_index_slot`] of what this returns).
pub(super) fn decode_index_slot(slot: &[u8; INDEX_SLOT as usize]) -> BlockLoc {
    BlockLoc {
        offset: u64_at(slot, 0),
        len: u32_at(slot, 8),
        crc: u32_at(slot, 12),
    }
}

/// The node a tree slot of `index` holds (its checksum unchecked: compare the slot with
/// [`encode_tree_slot`] of what this returns).
pub(super) fn decode_tree_slot(index: u64, slot: &[u8; TREE_SLOT as usize]) -> StoredNode {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&slot[..32]);
    StoredNode {
        index,
        hash,
        size: u64_at(slot, 32),
    }
}

/// What a `state` file holds: the checkpoint's log offset, the head and the bitfield
/// at that offset.
#[derive(Debug)]
pub(super) struct State {
    /// The log offset up to which the slot files hold every record.
    pub(super) applied: u64,
    /// The head at that offset.
    pub(super) head: Option<StoredHead>,
    /// The blocks stored at that offset.
    pub(super) bitfield: Bitfield,
}

/// `state` for a checkpoint at `log_len`: offset, head, the bitfield, a crc.
pub(super) fn encode_state(
    log_len: u64,
    head: Option<&StoredHead>,
    bitfield: &Bitfield,
) -> Vec<u8> {
    let pages = bitfield.pages();
    let mut state = Vec::with_capacity(STATE_FIXED_LEN + STATE_PAGE_LEN * pages.len() + 4);
    state.extend_from_slice(STATE_MAGIC);
    state.extend_from_slice(&log_len.to_le_bytes());
    encode_head(&mut state, head);
    state.extend_from_slice(&(pages.len() as u64).to_le_bytes());
    for (number, words) in pages {
        state.extend_from_slice(&number.to_le_bytes());
        for w in words {
            state.extend_from_slice(&w.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&state);
    state.extend_from_slice(&crc.to_le_bytes());
    state
}

/// Decode and check `state` (read from `path`, named in errors).
pub(super) fn decode_state(s: &[u8], path: &Path) -> Result<State, StorageError> {
    if s.len() < STATE_FIXED_LEN + 4 {
        return Err(corrupt(path, 0, "state too short"));
    }
    let body = &s[..s.len() - 4];
    if crc32fast::hash(body) != u32_at(s, s.len() - 4) {
        return Err(corrupt(path, 0, "state fails its checksum"));
    }
    if &s[..8] != STATE_MAGIC {
        return Err(corrupt(path, 0, "bad state magic"));
    }
    let applied = u64_at(s, 8);
    let head = decode_head(&s[16..128]).ok_or_else(|| corrupt(path, 16, "bad head flag"))?;
    let pages = u64_at(s, 128);
    if pages.checked_mul(STATE_PAGE_LEN as u64) != Some((body.len() - STATE_FIXED_LEN) as u64) {
        return Err(corrupt(
            path,
            128,
            "bitfield length does not match the file",
        ));
    }
    let mut bitfield = Bitfield::default();
    for (k, page) in body[STATE_FIXED_LEN..]
        .chunks_exact(STATE_PAGE_LEN)
        .enumerate()
    {
        let number = u64_at(page, 0);
        if number >= MAX_BLOCK_INDEX / PAGE_BITS {
            let at = (STATE_FIXED_LEN + k * STATE_PAGE_LEN) as u64;
            return Err(corrupt(path, at, "bitfield page out of range"));
        }
        let mut words = [0u64; PAGE_WORDS];
        for (w, bytes) in words.iter_mut().zip(page[8..].chunks_exact(8)) {
            *w = u64_at(bytes, 0);
        }
        bitfield.insert_page(number, words);
    }
    Ok(State {
        applied,
        head,
        bitfield,
    })
}
