//! Whole feeds written and read many at a time ([`Storage::write_whole`],
//! [`Storage::read_whole`]): a small feed sent whole in place of a feed stream
//! (`docs/decisions/210-small-feeds-sent-whole.md`, `211-whole-feeds-in-the-store.md`).
//!
//! Storage still checks nothing: a [`WholeWrite`] comes verified (its blocks hash to the
//! nodes and the head's tree hash, the head's signature is the writer's; see
//! [`crate::whole::check_whole`]). What storage decides is whether the feed can take the
//! write whole: only a feed that holds nothing yet (or does not exist: it is made a
//! replica) is written; one that holds it complete at least as far already is left as
//! it is ([`WholeWritten::Held`]); any other is refused, untouched.

use super::{FeedStorage, Storage, StorageError, StoredHead, StoredNode};
use crate::tree::{full_roots, tree_hash, Node};

/// One feed to store whole: every block its head covers, every node of its tree, and
/// the head, all verified by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholeWrite {
    /// The feed's public key.
    pub key: [u8; 32],
    /// Blocks `0..head.length`.
    pub blocks: Vec<Vec<u8>>,
    /// Every node of the tree of `head.length` blocks.
    pub nodes: Vec<StoredNode>,
    /// The writer's signed head.
    pub head: StoredHead,
}

impl WholeWrite {
    /// Bytes of its blocks.
    pub fn byte_length(&self) -> u64 {
        self.blocks.iter().map(|b| b.len() as u64).sum()
    }
}

/// A feed read whole: its head and every block it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholeRead {
    /// The latest head written.
    pub head: StoredHead,
    /// Blocks `0..head.length`.
    pub blocks: Vec<Vec<u8>>,
}

/// What [`Storage::write_whole`] did with one feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WholeWritten {
    /// Written (into an empty feed, or a replica made for it), durably.
    Written,
    /// Not written: the feed holds every block up to `length` (at least the head's
    /// length) already, and its tree at the head's length is the head's.
    Held {
        /// The length it holds.
        length: u64,
    },
    /// Not written: the feed cannot take it whole now; nothing changed.
    Refused(WholeRefusal),
    /// Not written: the feed holds another tree at the head's length (its writer signed
    /// two trees of one length: a fork).
    Conflict,
}

/// Why a feed was not written whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WholeRefusal {
    /// It holds some blocks, or a head, short of the write.
    Holds,
    /// It is writable here (its secret key is stored): only its writer appends to it.
    Writable,
    /// A handle to it is open (its state in memory would not see the write).
    Open,
}

/// What a feed holds, as [`decide`] needs it.
pub(crate) struct Existing {
    /// Its secret key is stored.
    pub(crate) writable: bool,
    /// Its latest head.
    pub(crate) head: Option<StoredHead>,
    /// Blocks `0..head.length` are all stored (false without a head).
    pub(crate) complete: bool,
    /// It stores a block (of any index).
    pub(crate) any_block: bool,
}

/// What to do with a [`WholeWrite`] on a feed that holds `existing` (`None`: no such
/// feed); `node` reads the feed's stored tree nodes. `Ok(None)` means write it.
pub(crate) fn decide(
    write: &WholeWrite,
    existing: Option<Existing>,
    mut node: impl FnMut(u64) -> Result<Option<StoredNode>, StorageError>,
) -> Result<Option<WholeWritten>, StorageError> {
    let Some(existing) = existing else {
        return Ok(None);
    };
    if existing.writable {
        return Ok(Some(WholeWritten::Refused(WholeRefusal::Writable)));
    }
    let length = write.head.length;
    let Some(head) = existing.head else {
        return Ok((existing.any_block).then_some(WholeWritten::Refused(WholeRefusal::Holds)));
    };
    if !existing.complete || head.length < length {
        return Ok(Some(WholeWritten::Refused(WholeRefusal::Holds)));
    }
    let ours = if head.length == length {
        head.tree_hash
    } else {
        let mut roots = Vec::new();
        for index in full_roots(length) {
            match node(index)? {
                Some(n) => roots.push(Node::from(n)),
                // A complete feed stores every node; one missing cannot be compared.
                None => return Ok(Some(WholeWritten::Refused(WholeRefusal::Holds))),
            }
        }
        tree_hash(&roots)
    };
    Ok(Some(if ours == write.head.tree_hash {
        WholeWritten::Held {
            length: head.length,
        }
    } else {
        WholeWritten::Conflict
    }))
}

/// [`Storage::write_whole`] feed by feed through [`FeedStorage`]: each opened (or
/// created as a replica), written and synced on its own.
pub(crate) fn write_each<'a, S: Storage + ?Sized>(
    storage: &S,
    feeds: impl IntoIterator<Item = &'a WholeWrite>,
) -> Result<Vec<WholeWritten>, StorageError> {
    let mut out = Vec::new();
    for write in feeds {
        let mut feed = match storage.open(&write.key)? {
            Some(feed) => feed,
            None => match storage.create(write.key, None) {
                Ok(feed) => feed,
                Err(StorageError::Exists) => {
                    storage.open(&write.key)?.ok_or(StorageError::NotFound)?
                }
                Err(e) => return Err(e),
            },
        };
        let existing = {
            let head = feed.head();
            let held = head.map_or(0, |h| h.length);
            Existing {
                writable: feed.secret_key().is_some(),
                head,
                complete: head.is_some() && (0..held).all(|i| feed.has_block(i)),
                any_block: (0..held.max(write.head.length)).any(|i| feed.has_block(i)),
            }
        };
        if let Some(done) = decide(write, Some(existing), |i| feed.node(i))? {
            out.push(done);
            continue;
        }
        let blocks: Vec<(u64, &[u8])> = (0..).zip(write.blocks.iter().map(Vec::as_slice)).collect();
        feed.write_borrowed(&blocks, write.nodes.clone(), Some(write.head))?;
        feed.sync()?;
        out.push(WholeWritten::Written);
    }
    Ok(out)
}

/// [`Storage::read_whole`] feed by feed through [`FeedStorage`].
pub(crate) fn read_each<S: Storage + ?Sized>(
    storage: &S,
    keys: &[[u8; 32]],
    max_bytes: usize,
) -> Result<Vec<Option<WholeRead>>, StorageError> {
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(mut feed) = storage.open(key)? else {
            out.push(None);
            continue;
        };
        out.push(read_one(&mut feed, max_bytes)?);
    }
    Ok(out)
}

/// One feed read whole: its head, made durable if the feed is writable here (it goes
/// to peers: a writer's head must not leave while a crash can still lose it, or the
/// writer could sign another tree at that length), then its blocks (blocks below a head
/// never change, so a write in between leaves them the head's).
fn read_one<F: FeedStorage>(
    feed: &mut F,
    max_bytes: usize,
) -> Result<Option<WholeRead>, StorageError> {
    let Some(head) = feed.head().filter(|h| h.length > 0) else {
        return Ok(None);
    };
    if feed.secret_key().is_some() {
        feed.sync()?;
    }
    // `blocks` lets the first block through whatever its size: check it here.
    let blocks = feed.blocks(0, head.length, max_bytes)?;
    let bytes: usize = blocks.iter().map(Vec::len).sum();
    let whole = blocks.len() as u64 == head.length && bytes <= max_bytes;
    Ok(whole.then_some(WholeRead { head, blocks }))
}
