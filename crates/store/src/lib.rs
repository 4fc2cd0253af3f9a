//! Feeds: signed, verified append-only logs, their storage, and the feed sync core.
//!
//! A feed is identified by an ed25519 public key. Its blocks are hashed into a
//! BLAKE2b-256 Merkle tree built the way hypercore builds it, and the writer signs the
//! tree's root hash and length. Replicas verify every block against a signed root before
//! they store it. This crate never opens a socket: the sync core takes messages in and
//! gives messages out, and the session layer (`replic8`) carries them.
//!
//! Modules:
//! - [`keys`]: [`FeedKey`], [`FeedSecret`], [`DiscoveryKey`], [`SignedHead`].
//! - [`tree`]: flat-tree indexing and the hypercore-crypto node hashes.
//! - [`proof`]: [`Proof`] creation and verification for ranges and head upgrades.
//! - [`feed`]: [`Feed`], a signed append-only log over a [`storage::FeedStorage`].
//! - [`scan`]: [`scan_feeds`], what every feed holds, read without opening each.
//! - [`message`]: the sync [`Message`]s and their bounded bincode [`encode`]/[`decode`].
//! - [`sync`]: [`FeedSync`], the sync state machine for one feed and one peer.
//! - [`storage`]: the [`storage::Storage`] and [`storage::FeedStorage`] traits, with memory
//!   and disk implementations.
//! - [`whole`]: [`check_whole`], a feed sent whole checked against its head before it is
//!   stored.

//!
//! Replicating a feed between two sides in one process (the session layer does the same
//! over a QUIC stream, one frame per message):
//!
//! ```
//! use std::time::Instant;
//! use replic8_store::storage::MemoryStorage;
//! use replic8_store::{decode, encode, Feed, FeedSecret, FeedSync, SyncConfig, Want};
//!
//! let mut writer = Feed::create(&MemoryStorage::new(), FeedSecret::generate())?;
//! writer.append_batch(&[b"hello".as_slice(), b"world"])?;
//! let mut replica = Feed::create_replica(&MemoryStorage::new(), *writer.key())?;
//!
//! let now = Instant::now();
//! let mut ws = FeedSync::new(SyncConfig { want: Want::Nothing, ..SyncConfig::default() });
//! let mut rs = FeedSync::new(SyncConfig { want: Want::All, ..SyncConfig::default() });
//! ws.handle_start(&mut writer, now);
//! rs.handle_start(&mut replica, now);
//! while !rs.is_synced() {
//!     while let Some(m) = ws.poll_transmit(&mut writer)? {
//!         rs.handle_bytes(&mut replica, &encode(&m)?, now)?;
//!     }
//!     while let Some(m) = rs.poll_transmit(&mut replica)? {
//!         ws.handle_message(&mut writer, decode(&encode(&m)?)?, now)?;
//!     }
//! }
//! assert_eq!(replica.get(1)?.as_deref(), Some(&b"world"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod feed;
pub mod keys;
pub mod message;
pub mod proof;
pub mod scan;
pub mod storage;
pub mod sync;
pub mod tree;
pub mod whole;

pub use feed::{
    AppendError, AppendPreparer, Feed, IngestError, Ingested, OpenError, Prepared, ReadError,
    MAX_BLOCK_SIZE,
};
pub use keys::{verify_heads, DiscoveryKey, FeedKey, FeedSecret, KeyError, SignedHead};
pub use message::{
    decode, encode, encode_into, DecodeError, EncodeError, Message, MAX_MESSAGE_SIZE,
    MAX_SMALL_MESSAGE_SIZE,
};
pub use proof::{Proof, ProofError, VerifiedProof, VerifyError};
pub use scan::{scan_feeds, ScannedFeed};
pub use sync::{FeedSync, SyncConfig, SyncError, SyncEvent, SyncStats, Want};
pub use tree::Node;
pub use whole::check_whole;
