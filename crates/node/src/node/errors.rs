//! What the node's operations can fail with.

use replic8::feed_store::FeedStoreError;
use replic8::store::RegisterError;
use replic8_connmgr::PeerStats;
use replic8_discovery::TopicError;

use crate::persist::PersistError;

/// The node is closed (or its thread died).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the node is closed")]
pub struct NodeClosed;

/// What `join` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The node is closed.
    #[error(transparent)]
    Closed(#[from] NodeClosed),
    /// Discovery refused the join.
    #[error(transparent)]
    Discovery(#[from] replic8_discovery::JoinError),
    /// The join could not be persisted (it is active until the node stops).
    #[error("join not persisted: {0}")]
    Persist(#[from] PersistError),
}

/// What `leave` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LeaveError {
    /// The node is closed.
    #[error(transparent)]
    Closed(#[from] NodeClosed),
    /// The topic was not joined.
    #[error(transparent)]
    Discovery(#[from] TopicError),
    /// The leave could not be persisted (the topic would be joined again after a restart).
    #[error("leave not persisted: {0}")]
    Persist(#[from] PersistError),
}

/// What `flushed` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FlushedError {
    /// The node is closed.
    #[error(transparent)]
    Closed(#[from] NodeClosed),
    /// The topic is not joined (or was left while waiting).
    #[error(transparent)]
    Topic(#[from] TopicError),
}

/// What `add_store` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AddStoreError {
    /// The node is closed.
    #[error(transparent)]
    Closed(#[from] NodeClosed),
    /// A namespace is served by another store already.
    #[error(transparent)]
    Register(#[from] RegisterError),
}

/// A connected peer, as `peers` lists it.
pub type PeerInfo = PeerStats;

/// What a feed operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The node is closed.
    #[error(transparent)]
    Closed(#[from] NodeClosed),
    /// The feed store failed or refused (no such feed, not writable, storage, ...).
    #[error(transparent)]
    Store(#[from] FeedStoreError),
    /// The namespace is served by another (custom) store.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// The share could not be persisted (it is active until the node stops).
    #[error("share not persisted: {0}")]
    Persist(#[from] PersistError),
    /// Discovery refused to join the feed's discovery key.
    #[error(transparent)]
    Join(replic8_discovery::JoinError),
}

/// What `disconnect` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DisconnectError {
    /// The node is closed.
    #[error(transparent)]
    Closed(#[from] NodeClosed),
    /// There is no connection to that peer.
    #[error(transparent)]
    NotConnected(#[from] replic8_connmgr::CloseError),
}

/// What `connect` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The node is closed.
    #[error(transparent)]
    Closed(#[from] NodeClosed),
    /// The dial failed.
    #[error(transparent)]
    Dial(#[from] replic8_connmgr::DialError),
}
