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
//! - [`message`]: the sync [`Message`]s and their bounded bincode [`encode`]/[`decode`].
//! - [`sync`]: [`FeedSync`], the sync state machine for one feed and one peer.
//! - [`storage`]: the [`storage::Storage`] and [`storage::FeedStorage`] traits, with memory
//!   and disk implementations.

pub mod feed;
pub mod keys;
pub mod message;
pub mod proof;
pub mod storage;
pub mod sync;
pub mod tree;

pub use feed::{AppendError, Feed, IngestError, Ingested, OpenError, ReadError, MAX_BLOCK_SIZE};
pub use keys::{DiscoveryKey, FeedKey, FeedSecret, KeyError, SignedHead};
pub use message::{decode, encode, DecodeError, EncodeError, Message, MAX_MESSAGE_SIZE};
pub use proof::{Proof, ProofError, VerifiedProof, VerifyError};
pub use sync::{FeedSync, SyncConfig, SyncError, SyncEvent, SyncStats, Want};
pub use tree::Node;
