//! [`NodeEvent`]: what a node reports to its subscribers (`NodeHandle::subscribe`).

use std::net::SocketAddr;

use replic8::keys::FeedKey;
use replic8::message::Headers;
use replic8_connmgr::{DownReason, Initiator, NatEvent, PeerKey};

/// Something that happened in the node. Events go to every subscriber through a bounded
/// broadcast channel ([`EVENT_CAPACITY`]); a subscriber that falls behind misses the
/// oldest ones and is told how many (`RecvError::Lagged`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A connection to `key` is up (the only one for that key); a session starts on it.
    PeerUp {
        /// The peer.
        key: PeerKey,
        /// Its address on this connection.
        addr: SocketAddr,
        /// Who dialed.
        initiator: Initiator,
    },
    /// The connection to `key` is gone.
    PeerDown {
        /// The peer.
        key: PeerKey,
        /// Why.
        reason: DownReason,
    },
    /// The session with `peer` exchanged hellos and is replicating.
    SessionUp {
        /// The peer.
        peer: PeerKey,
    },
    /// `peer` offered feeds in a namespace; the namespace's store decides what to accept.
    Offered {
        /// The peer.
        peer: PeerKey,
        /// The namespace.
        namespace: String,
        /// The feeds with their headers.
        feeds: Vec<(FeedKey, Headers)>,
    },
    /// `peer` accepted these feeds of ours; they are replicated to it.
    Accepted {
        /// The peer.
        peer: PeerKey,
        /// The namespace.
        namespace: String,
        /// The feeds.
        feeds: Vec<FeedKey>,
    },
    /// `feed` is in sync with `peer` at `length`, both ways.
    FeedSynced {
        /// The peer.
        peer: PeerKey,
        /// The feed.
        feed: FeedKey,
        /// The length both sides hold.
        length: u64,
    },
    /// The default store accepted a feed it did not hold, offered by `peer`; it is
    /// created here as a replica and downloaded.
    FeedAccepted {
        /// The peer.
        peer: PeerKey,
        /// The namespace.
        namespace: String,
        /// The feed.
        feed: FeedKey,
    },
    /// Blocks of `feed` from `peer` were verified and stored.
    Downloaded {
        /// The peer.
        peer: PeerKey,
        /// The feed.
        feed: FeedKey,
        /// Blocks since the previous such event of this stream.
        blocks: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// `peer` sent something on `feed`'s stream that did not verify (a writer's fork, a
    /// block or proof that fails against our tree, an undecodable message); nothing of the
    /// failed message was stored, and the feed stops on that session (its other feeds go
    /// on, and the peer is not banned: an honest relay can pass a writer's fault on).
    SyncFailed {
        /// The peer.
        peer: PeerKey,
        /// The feed.
        feed: FeedKey,
        /// What was wrong.
        reason: String,
    },
    /// `feed` stopped on the session with `peer` until that session ends: a fault in it
    /// (either side found one: see [`NodeEvent::SyncFailed`]), or its stream ended too
    /// often in a row before it was in sync (it resumes on the peer's notice or a change
    /// of ours).
    FeedStopped {
        /// The peer.
        peer: PeerKey,
        /// The feed.
        feed: FeedKey,
        /// Why, in words.
        reason: String,
    },
    /// The session with `peer` ended.
    SessionEnded {
        /// The peer.
        peer: PeerKey,
        /// Why, in words.
        reason: String,
    },
    /// `peer` broke the protocol: it is banned (its connection closed, its dials and
    /// connections refused) for `duration`.
    PeerBanned {
        /// The peer.
        peer: PeerKey,
        /// What it did, as its session's end reason says.
        reason: String,
        /// How long.
        duration: std::time::Duration,
    },
    /// A step of NAT traversal: our public addresses or the NAT's mapping type as peers
    /// report them, a reachability check asked or its verdict, a dial-back we made.
    Nat(NatEvent),
}

/// How many events a subscriber may fall behind before it misses some.
pub const EVENT_CAPACITY: usize = 4096;
