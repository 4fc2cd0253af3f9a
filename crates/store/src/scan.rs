//! [`scan_feeds`]: what every feed of a storage holds, learned in one pass without
//! opening each feed, for listings and totals.
//!
//! Opening a feed ([`Feed::open`](crate::Feed::open)) reads its head and roots, checks
//! that the roots hash to the head, verifies the head's signature, and, for a writable
//! feed, derives the public key from the stored secret. For a store of 100,000 feeds that
//! is seconds of CPU before it can say how much it holds. A scan does the first two only:
//! the head and roots as stored, the roots checked against the head's tree hash. It
//! checks no signature and derives no key, so what it gives is for display: the head was
//! verified before it was written (every write goes through [`Feed`](crate::Feed)), and
//! a feed that is opened to be served or read is checked in full then.

use crate::keys::SignedHead;
use crate::storage::{Storage, StorageError, StoredFeed};
use crate::tree::{self, full_roots, Node};

/// One feed as [`scan_feeds`] found it in storage: the same numbers an opened
/// [`Feed`](crate::Feed) reports, with the head's signature not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedFeed {
    /// The feed's public key (as stored; not checked to be a curve point).
    pub key: [u8; 32],
    /// Whether a secret key is stored with the feed (not checked against the key).
    pub writable: bool,
    /// The stored head, its roots checked against its tree hash, its signature not.
    pub head: Option<SignedHead>,
    /// Total bytes of the blocks covered by the head.
    pub byte_length: u64,
    /// Blocks stored here.
    pub stored: u64,
    /// Blocks `0..contiguous_length` are all stored here.
    pub contiguous_length: u64,
    /// Bytes of the blocks stored here.
    pub stored_bytes: u64,
}

impl ScannedFeed {
    /// Blocks covered by the head.
    pub fn length(&self) -> u64 {
        self.head.map_or(0, |h| h.length)
    }

    /// The summary of a stored feed whose roots are whole and hash to its head; `None`
    /// otherwise (opening that feed reports what is wrong).
    fn check(stored: StoredFeed) -> Option<ScannedFeed> {
        let length = stored.head.map_or(0, |h| h.length);
        if stored.roots.len() != full_roots(length).len() {
            return None;
        }
        let roots: Vec<Node> = stored.roots.into_iter().map(Node::from).collect();
        if let Some(head) = &stored.head {
            if tree::tree_hash(&roots) != head.tree_hash {
                return None;
            }
        }
        Some(ScannedFeed {
            key: stored.key,
            writable: stored.writable,
            head: stored.head.map(SignedHead::from),
            byte_length: roots.iter().map(|r| r.size).sum(),
            stored: stored.stored,
            contiguous_length: stored.contiguous,
            stored_bytes: stored.stored_bytes,
        })
    }
}

/// Calls `each` with every feed of `storage` that it can describe in one pass
/// ([`Storage::scan_feeds`]: on disk, the small feeds, in one read of their shared
/// database) and whose roots hash to its head. Feeds left out (in directories of their
/// own, or not whole) are learned by opening them. Returns how many were given.
pub fn scan_feeds<St: Storage>(
    storage: &St,
    mut each: impl FnMut(ScannedFeed),
) -> Result<u64, StorageError> {
    let mut given = 0;
    storage.scan_feeds(&mut |stored| {
        if let Some(feed) = ScannedFeed::check(stored) {
            given += 1;
            each(feed);
        }
    })?;
    Ok(given)
}
