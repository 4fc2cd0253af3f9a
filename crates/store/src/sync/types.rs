//! What callers of the feed sync core see: what to want, its settings, the events it
//! reports, its counters and its errors.

use std::time::Duration;

use crate::feed::IngestError;
use crate::message::DecodeError;
use crate::proof::VerifyError;
use crate::storage::StorageError;

/// Which blocks this side wants from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// No blocks (still serves the peer, and follows its head if `live`).
    Nothing,
    /// Every block up to the peer's head.
    All,
    /// Blocks `[start, end)` (sparse).
    Range {
        /// First block.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
}

/// How one sync core behaves.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Which blocks to download.
    pub want: Want,
    /// Keep following the peer's head after the first sync (new blocks as they come).
    pub live: bool,
    /// Requests in flight at once (at most
    /// [`crate::message::MAX_OUTSTANDING_REQUESTS`] - 1, leaving room for an upgrade
    /// request); with `blocks_per_message` this bounds the window.
    /// 16 × 64 blocks kept the in-memory bench at full speed; raise it for long links.
    pub max_outstanding: usize,
    /// Blocks asked for in one request (and so carried by one data message).
    pub blocks_per_message: u64,
    /// Most block bytes this side packs into one data message it sends (at most
    /// [`crate::message::MAX_DATA_BYTES`]; a single larger block still goes alone).
    pub max_data_bytes: usize,
    /// A request or upgrade unanswered for this long ends the sync with
    /// [`SyncError::Timeout`].
    pub request_timeout: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            want: Want::All,
            live: true,
            max_outstanding: 16,
            blocks_per_message: 64,
            max_data_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// What a sync core reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent {
    /// The peer announced a head (its signature checked).
    PeerHead {
        /// The peer's length.
        length: u64,
    },
    /// Our head moved forward through an upgrade from this peer.
    Upgraded {
        /// Our new length.
        length: u64,
    },
    /// Blocks were verified and stored.
    Downloaded {
        /// First block.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
    /// Everything wanted that this peer can give is here (sent again after each new
    /// round of downloads when live).
    Synced {
        /// Our length.
        length: u64,
    },
}

/// Counters of one sync core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Blocks received, verified and stored.
    pub blocks_in: u64,
    /// Bytes of those blocks.
    pub bytes_in: u64,
    /// Blocks sent.
    pub blocks_out: u64,
    /// Bytes of those blocks.
    pub bytes_out: u64,
}

/// Why a sync ended. Each is the peer's doing except [`SyncError::Storage`].
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The peer's bytes did not decode (oversize, truncated, malformed, invalid).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The peer sent a head, proof or block that does not verify.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The peer sent data or a refusal for a range that was not requested.
    #[error("unrequested data for blocks {start}..{end}")]
    Unrequested {
        /// First block.
        start: u64,
        /// End.
        end: u64,
    },
    /// The peer asked for blocks outside our feed.
    #[error("bad request for blocks {start}..{end} at length {length}")]
    BadRequest {
        /// First block.
        start: u64,
        /// End.
        end: u64,
        /// The length it named.
        length: u64,
    },
    /// The peer left a request unanswered for too long.
    #[error("request for blocks {start}..{end} timed out")]
    Timeout {
        /// First block.
        start: u64,
        /// End.
        end: u64,
    },
    /// The peer has more requests unanswered than the protocol allows.
    #[error("too many requests: more than {max} unanswered")]
    TooManyRequests {
        /// The limit.
        max: usize,
    },
    /// Our storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<IngestError> for SyncError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Verify(v) => SyncError::Verify(v),
            IngestError::Storage(s) => SyncError::Storage(s),
        }
    }
}
