//! The messages of [`LifecycleActor`](super::LifecycleActor), besides discovery's
//! `PeerFound` and the connection manager's `PeerUp` and `PeerDown`.

use actix::prelude::*;
use replic8::session::EndReason;
use replic8_connmgr::PeerKey;
use replic8_discovery::Topic;

/// Node → lifecycle: the session with `peer` ended with `reason` (every end, in the order
/// the sessions report them).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct SessionEnded {
    /// The peer.
    pub(crate) peer: PeerKey,
    /// Why the session ended.
    pub(crate) reason: EndReason,
}

/// Node → lifecycle: `topic` was left; close the connections only it needed and stop
/// redialing the lost ones only it needed. Answers once done.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct TopicLeft(pub(crate) Topic);

/// Node → lifecycle: `key` was dialed on request (`connect`); keep its connection when
/// topics are left.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Requested(pub(crate) PeerKey);

/// Node → lifecycle: do not redial `key` (`disconnect`). A dial of it in flight is
/// closed once up. Answers once done, so that a close sent after it is not redialed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct CancelRedial {
    /// The peer.
    pub(crate) key: PeerKey,
}

/// Node → lifecycle: the peers being redialed now (about to dial, dialing, or waiting
/// out a backoff).
#[derive(Debug, Message)]
#[rtype(result = "Vec<PeerKey>")]
pub(crate) struct Redialing;

/// Node → lifecycle: the node is closing; no more dials or redials, and a late
/// `PeerUp` is closed. Answers once done.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct BeginClose;

/// Test → lifecycle: how many redials were started so far.
#[cfg(test)]
#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub(crate) struct RedialsStarted;
