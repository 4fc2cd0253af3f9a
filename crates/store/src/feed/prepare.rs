//! Appends hashed and signed ahead of writing them ([`AppendPreparer`]), and written
//! only while they still follow the feed's head ([`Feed::append_prepared`]).

use std::fmt;

use super::{check_blocks, prepare, AppendError, Feed, PreparedAppend, WriterKey};
use crate::keys::{FeedKey, FeedSecret};
use crate::storage::FeedStorage;
use crate::tree::{self, Node};

/// Hashes and signs the appends that follow a feed's head, ahead of writing them and
/// away from the feed ([`Feed::preparer`]), so that a writer with a stream of batches
/// hashes the next one while [`Feed::append_prepared`] writes and syncs the one before:
/// each append still becomes visible only once it is durable. Holds the writer's key
/// pair (zeroed on drop); its `Debug` shows only where it is.
pub struct AppendPreparer {
    secret: FeedSecret,
    roots: Vec<Node>,
    length: u64,
}

impl fmt::Debug for AppendPreparer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppendPreparer")
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl AppendPreparer {
    /// Hashes and signs `blocks` as the append after the ones this preparer made before
    /// (the first after the head it was made at); the blocks travel with it.
    pub fn prepare(&mut self, blocks: Vec<Vec<u8>>) -> Result<Prepared, AppendError> {
        check_blocks(&blocks)?;
        let base = (self.length, tree::tree_hash(&self.roots));
        let key = self.secret.key();
        if blocks.is_empty() {
            return Ok(Prepared {
                key,
                base,
                append: None,
                blocks,
            });
        }
        let append = prepare(&self.secret, &self.roots, self.length, &blocks);
        self.roots.clone_from(&append.roots);
        self.length += blocks.len() as u64;
        Ok(Prepared {
            key,
            base,
            append: Some(append),
            blocks,
        })
    }
}

/// An append [`AppendPreparer::prepare`] hashed and signed, with its blocks, for
/// [`Feed::append_prepared`].
pub struct Prepared {
    /// The feed it was prepared for.
    key: FeedKey,
    /// The length and tree hash it follows.
    base: (u64, [u8; 32]),
    append: Option<PreparedAppend>,
    blocks: Vec<Vec<u8>>,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("after", &self.base.0)
            .field("blocks", &self.blocks.len())
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// The feed's length once it is appended where it was prepared.
    pub fn end(&self) -> u64 {
        self.base.0 + self.blocks.len() as u64
    }

    /// Its blocks.
    pub fn blocks(&self) -> &[Vec<u8>] {
        &self.blocks
    }
}

impl<S: FeedStorage> Feed<S> {
    /// A preparer of the appends that follow this feed's head (see [`AppendPreparer`]);
    /// an error for a replica.
    pub fn preparer(&self) -> Result<AppendPreparer, AppendError> {
        let secret = WriterKey::of(self.secret.as_ref(), &self.key)?;
        Ok(AppendPreparer {
            secret: secret.clone(),
            roots: self.roots.clone(),
            length: self.length(),
        })
    }

    /// Writes an append [`AppendPreparer::prepare`] made, signed, atomic and durable on
    /// return, like [`Feed::append_batch_owned`]; returns the new length. If the feed
    /// moved since (another append came first), its blocks are hashed again and appended
    /// after the feed's head, and the new length is not [`Prepared::end`]: the preparer
    /// is behind, make a new one.
    ///
    /// An append prepared for another feed is refused ([`AppendError::OtherFeed`]), as
    /// is any on a replica.
    pub fn append_prepared(&mut self, prepared: Prepared) -> Result<u64, AppendError> {
        WriterKey::of(self.secret.as_ref(), &self.key)?;
        if prepared.key != self.key {
            return Err(AppendError::OtherFeed(prepared.key.fmt_short()));
        }
        if prepared.base != (self.length(), tree::tree_hash(&self.roots)) {
            return self.append_batch_owned(prepared.blocks);
        }
        let Prepared { append, blocks, .. } = prepared;
        let Some(append) = append else {
            self.storage.sync()?;
            return Ok(self.length());
        };
        let start = self.length();
        let blocks = (start..).zip(blocks).collect();
        self.commit_append(append, blocks, true)
    }
}
