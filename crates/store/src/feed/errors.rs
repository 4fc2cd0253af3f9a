//! Why a feed operation failed: one error enum per operation.

use crate::proof::VerifyError;
use crate::storage::StorageError;

/// Why a feed could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The stored head and roots do not agree (a root is missing or they do not hash
    /// to the head).
    #[error("stored head is invalid: {0}")]
    BadHead(&'static str),
}

/// Why an append failed. Nothing was appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The feed is a replica: it does not hold the secret key.
    #[error("feed is not writable (no secret key)")]
    NotWritable,
    /// The stored secret key does not belong to the feed key (a damaged or altered
    /// data directory), found at the first append since the feed was opened.
    #[error("stored secret key does not match feed key {0}")]
    KeyMismatch(String),
    /// An append prepared for another feed was given to this one
    /// ([`Feed::append_prepared`](super::Feed::append_prepared)); nothing was written.
    #[error("append prepared for feed {0}, not this one")]
    OtherFeed(String),
    /// A block is larger than [`MAX_BLOCK_SIZE`](super::MAX_BLOCK_SIZE).
    #[error("block of {size} bytes is over the {max}-byte limit")]
    BlockTooLarge {
        /// The block's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The block is past the feed's length or not stored here (a sparse replica).
    #[error("block {0} is not stored")]
    Missing(u64),
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why verified ingest of a proof and its blocks failed. Nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The proof, the blocks or the signature did not verify (see the variant).
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
