//! What a session gives and refuses: events, stream commands, counters, end reasons
//! and command errors. The lowest module of the session: it uses none of the others.

use thiserror::Error;

use replic8_store::SignedHead;

use crate::keys::FeedKey;
use crate::message::{CloseCode, FeedStreamHeader, HeaderError, Headers};
use crate::store::ArrivedWhole;

/// Which side ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// We did (a local close, or the peer broke the protocol).
    Local,
    /// The peer did, with a close message.
    Remote,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndReason {
    /// The close code.
    pub code: CloseCode,
    /// Who ended it.
    pub by: Side,
    /// What happened, in words.
    pub reason: String,
    /// Whether the peer broke the protocol: set where the session failed, true only for
    /// a violation of the peer's (never for our own failure, a timeout or a close).
    pub peer_at_fault: bool,
}

/// The close codes a peer's protocol violation ends a session with.
pub(super) const VIOLATIONS: [CloseCode; 6] = [
    CloseCode::PROTOCOL,
    CloseCode::BAD_HEAD,
    CloseCode::FRAME_TOO_LARGE,
    CloseCode::BAD_PROOF,
    CloseCode::BAD_CAPABILITY,
    CloseCode::REFUSED_STREAM,
];

impl EndReason {
    /// Whether the session ended because the peer provably broke the protocol: we
    /// ended it for a frame an honest implementation never sends (an oversize frame, an
    /// undecodable or out-of-bounds message, a message out of order, an acceptor's
    /// namespace tag that does not check or answers no tag of ours, a bad capability, a
    /// refused feed stream, more unanswered offers than allowed). The node bans such a
    /// peer for a while; this is the one predicate it bans on. Never misbehaviour: a
    /// version mismatch, a timeout (hello, a stalled frame, a peer that does not read),
    /// a close by either side, a lost connection, a store's error answering an offer, a
    /// control stream that ends without a close message, our own encoding failure, a
    /// limit an honest peer can reach (those refuse or drop, and end nothing), and a
    /// fault in one feed (that feed stops, see [`SessionEvent::FeedStopped`]).
    pub fn is_misbehaviour(&self) -> bool {
        self.by == Side::Local && self.peer_at_fault
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let by = match self.by {
            Side::Local => "we",
            Side::Remote => "the peer",
        };
        write!(f, "{by} ended the session: {}: {}", self.code, self.reason)
    }
}

/// What a session reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// Hellos were exchanged; the session is up.
    Established,
    /// The peer showed it knows a namespace's key (tags matched); local only.
    NamespaceProven {
        /// The namespace.
        namespace: String,
    },
    /// The peer offered feeds; the namespace's store must answer with
    /// [`Session::handle_offer_answer`](super::Session::handle_offer_answer).
    Offered {
        /// The namespace.
        namespace: String,
        /// The offer to answer.
        offer: u64,
        /// The feeds with their headers.
        feeds: Vec<(FeedKey, Headers)>,
    },
    /// The peer accepted these feeds of ours; they will be replicated.
    Accepted {
        /// The namespace.
        namespace: String,
        /// The accepted feeds.
        feeds: Vec<FeedKey>,
    },
    /// A replicated feed is in sync both ways at this length.
    FeedSynced {
        /// The feed.
        feed: FeedKey,
        /// The length both sides hold.
        length: u64,
    },
    /// `feed` is stopped on this session; the other feeds go on. Either its stream
    /// ended [`MAX_STREAM_REOPENS`](super::MAX_STREAM_REOPENS) + 1 times in a row before the feed was in sync (the
    /// dialer stops reopening it until the peer's `Notice` or a change of our copy), or
    /// a side's store found a fault in it ([`Session::handle_feed_failed`](super::Session::handle_feed_failed), or the
    /// peer's `Stopped`): then it is never reopened on this session. A one-shot session
    /// gives the feed up and ends once the other feeds are in sync.
    FeedStopped {
        /// The feed.
        feed: FeedKey,
        /// Why, in words.
        reason: String,
    },
    /// The session ended; nothing more will happen.
    SessionEnded {
        /// Why.
        reason: EndReason,
    },
}

/// The session's name for one feed stream, to match closes with opens: a feed's
/// stream may be closed and reopened many times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// A feed stream for the driver to open or close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamCommand {
    /// Open a bidirectional stream, write `header` as its first frame, and attach it to
    /// the namespace's store.
    Open {
        /// The feed.
        feed: FeedKey,
        /// The namespace whose store gets the stream.
        namespace: String,
        /// The stream's first frame.
        header: FeedStreamHeader,
        /// The session's name for this stream.
        stream: StreamId,
        /// The peer's head from its first words, verified here: the store's sync core
        /// need not verify the same bytes again.
        verified_head: Option<SignedHead>,
    },
    /// Finish the feed's stream and detach it from its store: the feed is in sync.
    Close {
        /// The feed.
        feed: FeedKey,
        /// The namespace whose store has the stream.
        namespace: String,
        /// The stream to finish.
        stream: StreamId,
    },
}

/// A call for the driver to make to a namespace's store. Answers come back as inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreCall {
    /// Ask the store which feeds it shares with the peer; answer with
    /// [`Session::handle_shares`](super::Session::handle_shares).
    Shares {
        /// The namespace.
        namespace: String,
    },
    /// Ask the store which feeds it holds for all-to-all replication; answer with
    /// [`Session::handle_known`](super::Session::handle_known).
    Known {
        /// The namespace.
        namespace: String,
    },
    /// Ask the store how far it holds these replicated feeds (each complete up to a
    /// length, or not); answer with [`Session::handle_heads`](super::Session::handle_heads).
    Heads {
        /// The namespace.
        namespace: String,
        /// The feeds.
        feeds: Vec<FeedKey>,
    },
    /// Read these feeds whole (`store::ReadWhole`, with `MAX_WHOLE_FEED_BYTES` as the
    /// most bytes a feed); answer with
    /// [`Session::handle_whole_read`](super::Session::handle_whole_read).
    ReadWhole {
        /// The namespace.
        namespace: String,
        /// The feeds, at most [`MAX_WHOLE_READ_FEEDS`](super::MAX_WHOLE_READ_FEEDS).
        feeds: Vec<FeedKey>,
    },
    /// Verify and store these feeds the peer sent whole (`store::WriteWhole`); answer
    /// with [`Session::handle_whole_written`](super::Session::handle_whole_written)
    /// with the feeds' keys in this order.
    WriteWhole {
        /// The namespace.
        namespace: String,
        /// The feeds, those of one `Whole` message in this namespace.
        feeds: Vec<ArrivedWhole>,
    },
    /// The session ended: take back a stream the store was given (after the connection
    /// is closed), with the session's end reason.
    Detach {
        /// The feed.
        feed: FeedKey,
        /// The namespace whose store has the stream.
        namespace: String,
        /// The stream.
        stream: StreamId,
    },
}

/// Counters of one session, for status views and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Control-stream bytes received.
    pub bytes_in: u64,
    /// Control-stream bytes sent (as given out by `poll_transmit`).
    pub bytes_out: u64,
    /// Control messages received.
    pub messages_in: u64,
    /// Control messages sent.
    pub messages_out: u64,
    /// Feeds we offered the peer.
    pub feeds_offered: u64,
    /// Feeds the peer offered us.
    pub feeds_offered_to_us: u64,
    /// Feeds replicated on this session (accepted either way, or proven both ways).
    pub feeds_replicated: u64,
    /// Feed streams opened (by us as dialer, or taken from the peer as acceptor).
    pub streams_opened: u64,
    /// Control-stream bytes queued for the wire now: frames not yet given out by
    /// `poll_transmit`, plus those given out and not yet reported written
    /// ([`Session::handle_control_written`](super::Session::handle_control_written)). While it is at least
    /// [`MAX_QUEUED_CONTROL_BYTES`](super::MAX_QUEUED_CONTROL_BYTES) we read nothing more from the peer.
    pub queued_bytes: u64,
    /// The most `queued_bytes` ever was in this session.
    pub peak_queued_bytes: u64,
    /// Feeds stopped on this session by a fault (ours or the peer's report).
    pub feeds_faulted: u64,
    /// The peer's signed heads in first words that verified here (heads of feeds that
    /// came whole are checked by the store with the feed instead, decision 250).
    pub heads_verified: u64,
    /// Feeds found in sync by the first words (equal verified heads): no stream was
    /// opened for them.
    pub streams_skipped: u64,
    /// Feeds we sent whole on the control stream (decision 210).
    pub feeds_sent_whole: u64,
    /// Feeds the peer sent whole that our store stored.
    pub feeds_received_whole: u64,
    /// Bytes of feeds the peer sent whole that are at our store or wait for it now;
    /// while at least [`MAX_WHOLE_BYTES_AT_STORE`](super::MAX_WHOLE_BYTES_AT_STORE) we
    /// read nothing more from the peer.
    pub whole_bytes_at_store: u64,
}

/// The peer's signed heads from one [`Message::Heads`](crate::message::Message::Heads)
/// (or first-word heads the store did not check with their feeds, decision 250),
/// to verify off the session's thread (hashing and signature checks are CPU work);
/// answer with [`Session::handle_heads_verified`](super::Session::handle_heads_verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadCheck {
    /// Each feed with the head the peer sent for it.
    pub heads: Vec<(FeedKey, SignedHead)>,
}

/// A feed stream of the peer that we took: attach it to the namespace's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingFeed {
    /// The feed.
    pub feed: FeedKey,
    /// The namespace whose store gets the stream.
    pub namespace: String,
    /// The session's name for this stream.
    pub stream: StreamId,
    /// An earlier stream of the feed that this one replaces: the dialer finished it
    /// before opening this one, but its end has not been seen yet. Detach it.
    pub replaces: Option<StreamId>,
    /// The peer's head from its first words, verified here: the store's sync core need
    /// not verify the same bytes again.
    pub verified_head: Option<SignedHead>,
}

/// Why a local command was refused. The session goes on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    /// The namespace was not registered on this session.
    #[error("namespace {0:?} is not registered")]
    UnknownNamespace(String),
    /// The namespace is registered already with a different secret, or another
    /// namespace has the same key (the same secret).
    #[error("namespace {0:?} is registered already with another secret, or its key is another namespace's")]
    NamespaceConflict(String),
    /// Every namespace handle of this connection is used.
    #[error("no namespace handle left on this session")]
    NoHandleLeft,
    /// A feed's headers are over a bound.
    #[error("feed {feed:?}: {source}")]
    Headers {
        /// The feed.
        feed: FeedKey,
        /// Which bound.
        source: HeaderError,
    },
    /// The store answered an offer that is not waiting for an answer.
    #[error("offer {0} is not waiting for an answer")]
    UnknownOffer(u64),
    /// The session has ended.
    #[error("the session has ended")]
    Ended,
}

/// Why the session refused a feed stream; the session has ended with this reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("feed stream refused: {0}")]
pub struct StreamRefused(pub EndReason);
