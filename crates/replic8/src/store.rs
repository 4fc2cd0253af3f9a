//! The store interface: the actix messages between the session layer and stores.
//!
//! Any actor that handles [`Shares`], [`KnownFeeds`], [`Offer`], [`Attach`] and
//! [`Detach`] is a store. It registers for one or more namespaces with [`RegisterStore`]
//! (sent to the session layer's actor), and tells the session layer about its feeds with
//! [`Share`], [`Announce`], [`FeedSynced`], [`FeedUpdated`], [`StreamEnded`] and [`FeedFailed`].
//!
//! The session layer asks, the store decides: what to share ([`Shares`]), which feeds it
//! holds for all-to-all replication ([`KnownFeeds`]), which offered feeds to accept
//! ([`Offer`]); and it runs its own protocol on each feed stream it is given
//! ([`Attach`]) until the stream ends or is taken back ([`Detach`]). Store handlers must
//! not hash or touch the disk on the shared arbiter: a feed store does that work on its
//! own threads and answers when done.

use actix::{Actor, Addr, Handler, Message, Recipient};
use thiserror::Error;

use crate::keys::{FeedKey, NamespaceSecret, PeerKey};
use crate::message::Headers;
use crate::session::StreamId;
use replic8_store::SignedHead;

/// Why a store could not do what the session layer asked.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// The store refuses: for an [`Offer`], this ends the session and the reason goes to
    /// the peer.
    #[error("store refused: {0}")]
    Refused(String),
    /// The store failed (storage, a closed feed); the reason says what.
    #[error("store failed: {0}")]
    Failed(String),
    /// The store does not serve this namespace.
    #[error("store does not serve namespace {0:?}")]
    UnknownNamespace(String),
}

/// A feed a store shares, with its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFeed {
    /// The feed's public key.
    pub key: FeedKey,
    /// Headers sent with the offer (bounded, see `message::Headers`).
    pub headers: Headers,
}

/// Session → store: which feeds the store shares with `peer` in `namespace` (asked when
/// a session starts; the store may share more later with [`Share`]).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<SharedFeed>, StoreError>")]
pub struct Shares {
    /// The peer the session is with.
    pub peer: PeerKey,
    /// The namespace.
    pub namespace: String,
}

/// Session → store: which feeds the store holds in `namespace` for all-to-all
/// replication with `peer` (replicated without an offer when the peer holds them too).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<FeedKey>, StoreError>")]
pub struct KnownFeeds {
    /// The peer the session is with.
    pub peer: PeerKey,
    /// The namespace.
    pub namespace: String,
}

/// Session → store: for each of these feeds replicated with `peer` in `namespace`, the
/// writer's signed head of the store's copy if the store holds every block it covers
/// (and the head is not empty); `None` when it lacks blocks or cannot say. The session
/// sends it to the peer before any stream opens (its first word), and a feed whose
/// verified heads are equal on both sides gets no stream. Optional: a store without it
/// (see [`StoreRecipients::with_heads`]) gets a stream for every replicated feed.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<Option<SignedHead>>, StoreError>")]
pub struct FeedHeads {
    /// The peer the session is with.
    pub peer: PeerKey,
    /// The namespace.
    pub namespace: String,
    /// The feeds, each answered in order.
    pub feeds: Vec<FeedKey>,
}

/// A small feed sent whole, in place of a feed stream (decision 210): the writer's
/// signed head and every block it covers, in order. A receiver hashes the blocks into
/// the tree and stores them only if its tree hash and length are the head's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholeFeed {
    /// The writer's signed head of the sender's copy.
    pub head: SignedHead,
    /// Blocks `0..head.length`.
    pub blocks: Vec<Vec<u8>>,
    /// What the feed holds of its sending store's budget while the session keeps it
    /// (decision 245); empty for a feed that arrived, or from a store without a budget.
    pub hold: WholeHold,
}

/// A share of a store's budget that feeds read whole keep until the session has packed
/// them into a message (decision 245): dropping the last clone gives the share back.
/// It is not part of a feed's value: any two holds compare equal.
#[derive(Clone, Default)]
pub struct WholeHold(Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>);

impl WholeHold {
    /// A hold that keeps `owner` alive (a permit of the store's budget, whose `Drop`
    /// gives it back) until the last clone is dropped.
    pub fn new(owner: impl std::any::Any + Send + Sync) -> Self {
        WholeHold(Some(std::sync::Arc::new(owner)))
    }

    /// Whether it holds anything.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl std::fmt::Debug for WholeHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_empty() {
            "WholeHold(none)"
        } else {
            "WholeHold"
        })
    }
}

impl PartialEq for WholeHold {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for WholeHold {}

/// Session → store: read these feeds whole to send to `peer` (decision 210). Each is
/// answered in order: `Some` when the store holds every block of its head and the
/// blocks together are at most `max_bytes`; `None` otherwise (the feed then gets a
/// stream). An answer shorter than `feeds`, but not empty, answers the leading feeds
/// only: the session asks again for the others (a store whose budget has room for
/// only part of them now, decision 245). Optional: see [`StoreRecipients::with_whole`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<Option<WholeFeed>>, StoreError>")]
pub struct ReadWhole {
    /// The peer the feeds go to.
    pub peer: PeerKey,
    /// The namespace.
    pub namespace: String,
    /// The feeds.
    pub feeds: Vec<FeedKey>,
    /// The most block bytes one feed may have to be sent whole.
    pub max_bytes: usize,
}

/// One feed of a [`WriteWhole`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrivedWhole {
    /// The feed.
    pub feed: FeedKey,
    /// What the peer sent.
    pub whole: WholeFeed,
    /// The session verified this exact head already (it equals the peer's first word,
    /// decision 185): the store need not check its signature again. When `false`, the
    /// store verifies it (as [`FeedKey::verify_head`](replic8_store::FeedKey::verify_head)
    /// does) before anything else.
    pub head_verified: bool,
}

/// Session → store: `peer` sent these feeds whole (decision 210). The store verifies
/// each (signature unless `head_verified`, then the blocks' tree hash and length against
/// the head) and stores those that verify, before it answers; nothing of a feed that
/// does not verify is stored. Each is answered in order. Optional: see
/// [`StoreRecipients::with_whole`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<WholeOutcome>, StoreError>")]
pub struct WriteWhole {
    /// The peer that sent them.
    pub peer: PeerKey,
    /// The namespace.
    pub namespace: String,
    /// The feeds.
    pub feeds: Vec<ArrivedWhole>,
}

/// What a store did with one feed of a [`WriteWhole`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WholeOutcome {
    /// Verified and stored: the store now holds the feed complete at this length (or
    /// held it already at least this far).
    Stored {
        /// The length held.
        length: u64,
    },
    /// Not taken, and nothing is wrong with it (the store cannot take it whole now,
    /// e.g. it holds part of the feed): the feed gets a stream instead.
    Declined,
    /// The peer's head or blocks do not verify: the peer's fault, treated as a bad
    /// block on a feed stream ([`FeedFailed`]: the feed stops on this session, no ban).
    Failed(String),
}

/// Session → store: `peer` offers these feeds in `namespace`; answer with the keys the
/// store accepts (a subset). An error ends the session and is sent to the peer.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<FeedKey>, StoreError>")]
pub struct Offer {
    /// The peer that offers.
    pub peer: PeerKey,
    /// The namespace.
    pub namespace: String,
    /// The offered feeds with their headers, as the peer sent them.
    pub feeds: Vec<SharedFeed>,
}

/// The two halves of a feed stream, after the session read its header frame.
#[derive(Debug)]
pub struct FeedStream {
    /// Our sending half.
    pub send: quinn::SendStream,
    /// Our receiving half.
    pub recv: quinn::RecvStream,
}

/// Session → store: run the feed's protocol with `peer` on this stream. The store
/// reports progress with [`FeedSynced`] and [`FeedUpdated`]; finishing or resetting the
/// stream ends it.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Attach {
    /// The feed.
    pub feed: FeedKey,
    /// The namespace the feed is replicated in.
    pub namespace: String,
    /// The peer at the other end.
    pub peer: PeerKey,
    /// The session's name for the stream, for [`Detach`] and [`StreamEnded`].
    pub id: StreamId,
    /// The stream.
    pub stream: FeedStream,
    /// The peer's signed head of the feed from its first words, which the session
    /// verified (as [`FeedKey::verify_head`](replic8_store::FeedKey::verify_head) does,
    /// or in a batch, decision 185): the same bytes on the stream need no second check.
    pub verified_head: Option<SignedHead>,
}

/// Why a feed stream is taken back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetachReason {
    /// The feed is in sync both ways; the stream reopens when it changes.
    Synced,
    /// The session ended, with this reason.
    SessionEnded(String),
}

/// Session → store: stop using the stream of `feed` with `peer` (the session finishes
/// or has lost it). The store finishes its send half and drops the stream: QUIC gives
/// the peer its stream credit back only once both halves are closed, and the dialer
/// opens the next feed stream with that credit.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Detach {
    /// The feed.
    pub feed: FeedKey,
    /// The peer.
    pub peer: PeerKey,
    /// The stream, as named in its [`Attach`].
    pub id: StreamId,
    /// Why.
    pub reason: DetachReason,
}

/// The recipients of one store, as the session layer keeps them.
#[derive(Debug, Clone)]
pub struct StoreRecipients {
    /// Answers [`Shares`].
    pub shares: Recipient<Shares>,
    /// Answers [`KnownFeeds`].
    pub known: Recipient<KnownFeeds>,
    /// Answers [`Offer`].
    pub offer: Recipient<Offer>,
    /// Takes [`Attach`].
    pub attach: Recipient<Attach>,
    /// Takes [`Detach`].
    pub detach: Recipient<Detach>,
    /// Answers [`FeedHeads`], if the store can.
    pub heads: Option<Recipient<FeedHeads>>,
    /// Answers [`ReadWhole`] and [`WriteWhole`], if the store can send and take small
    /// feeds whole (decision 210); without them every feed gets a stream.
    pub whole: Option<WholeRecipients>,
}

/// The recipients of a store that sends and takes small feeds whole (decision 210).
#[derive(Debug, Clone)]
pub struct WholeRecipients {
    /// Answers [`ReadWhole`].
    pub read: Recipient<ReadWhole>,
    /// Answers [`WriteWhole`].
    pub write: Recipient<WriteWhole>,
}

impl StoreRecipients {
    /// The recipients of a store actor.
    pub fn of<A>(addr: &Addr<A>) -> StoreRecipients
    where
        A: Actor<Context = actix::Context<A>>
            + Handler<Shares>
            + Handler<KnownFeeds>
            + Handler<Offer>
            + Handler<Attach>
            + Handler<Detach>,
    {
        StoreRecipients {
            shares: addr.clone().recipient(),
            known: addr.clone().recipient(),
            offer: addr.clone().recipient(),
            attach: addr.clone().recipient(),
            detach: addr.clone().recipient(),
            heads: None,
            whole: None,
        }
    }

    /// These recipients, with the store's answer to [`FeedHeads`].
    pub fn with_heads(mut self, heads: Recipient<FeedHeads>) -> StoreRecipients {
        self.heads = Some(heads);
        self
    }

    /// These recipients, with the store's answers to [`ReadWhole`] and [`WriteWhole`].
    pub fn with_whole(
        mut self,
        read: Recipient<ReadWhole>,
        write: Recipient<WriteWhole>,
    ) -> StoreRecipients {
        self.whole = Some(WholeRecipients { read, write });
        self
    }
}

/// Why a store could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegisterError {
    /// Another store serves the namespace already.
    #[error("namespace {0:?} is served by another store")]
    Taken(String),
    /// The session layer is shutting down.
    #[error("the session layer is closing")]
    Closing,
}

/// Store → session layer: serve these namespaces (each with its secret, if any) with
/// this store, on every current and future session.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), RegisterError>")]
pub struct RegisterStore {
    /// The namespaces, each with an optional pre-shared secret.
    pub namespaces: Vec<(String, Option<NamespaceSecret>)>,
    /// The store.
    pub store: StoreRecipients,
}

/// Store → session layer: the store no longer serves these namespaces.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct UnregisterStore {
    /// The namespaces.
    pub namespaces: Vec<String>,
}

/// Why the session layer could not act on a store's report.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShareError {
    /// No session with this peer.
    #[error("no session with peer {0}")]
    NoSession(String),
    /// The namespace is not registered.
    #[error("namespace {0:?} is not registered")]
    UnknownNamespace(String),
    /// A feed's headers are over a bound.
    #[error("feed {feed}: {reason}")]
    Headers {
        /// The feed, short form.
        feed: String,
        /// Which bound.
        reason: String,
    },
}

/// Store → session layer: share feeds in `namespace`, live, with `peers` (all sessions
/// when `None`). Peers known to have a feed, or already offered it, are skipped, which is
/// what keeps forwarding from looping. Replies with how many feeds were offered.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<usize, ShareError>")]
pub struct Share {
    /// The namespace.
    pub namespace: String,
    /// The feeds.
    pub feeds: Vec<SharedFeed>,
    /// Only these peers, or every session.
    pub peers: Option<Vec<PeerKey>>,
    /// Never this peer (the one the feeds came from, when forwarding).
    pub except: Option<PeerKey>,
}

/// Store → session layer: the store now holds these feeds in `namespace` for all-to-all
/// replication (what [`KnownFeeds`] answers at a session's start): announced on every
/// running session by discovery key, and replicated with each peer that announces them
/// too. Feeds announced on a session already are skipped.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Announce {
    /// The namespace.
    pub namespace: String,
    /// The feeds.
    pub feeds: Vec<FeedKey>,
}

/// Store → session layer: the store's sync of `feed` with `peer` has nothing more to
/// send or fetch at `length`.
///
/// `length` is the feed length the two sides agree on (for a feed store: the larger
/// signed length once both were exchanged), not the number of blocks held, so a sparse
/// reader that has all it wants reports the same length as the writer. The stream
/// closes when both sides reported the same length.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct FeedSynced {
    /// The feed.
    pub feed: FeedKey,
    /// The peer.
    pub peer: PeerKey,
    /// The length both sides hold.
    pub length: u64,
}

/// Store → session layer: the store's copy of `feed` changed (appended, or downloaded
/// from some peer); sessions replicating it reopen its stream.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct FeedUpdated {
    /// The feed.
    pub feed: FeedKey,
    /// Its length now.
    pub length: u64,
}

/// Store → session layer: the store's protocol on a feed stream ended (the peer
/// finished or reset it, or the store gave it up). The session may reopen the feed.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct StreamEnded {
    /// The feed.
    pub feed: FeedKey,
    /// The peer.
    pub peer: PeerKey,
    /// The stream, as named in its [`Attach`].
    pub id: StreamId,
}

/// Store → session layer: the peer left a request on `feed`'s stream unanswered for
/// longer than the store waits. Slowness is not misbehaviour: the session with `peer`
/// ends with [`crate::message::CloseCode::TIMEOUT`] and the peer is not banned.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct FeedStalled {
    /// The feed.
    pub feed: FeedKey,
    /// The peer.
    pub peer: PeerKey,
    /// What was left unanswered, in words.
    pub reason: String,
}

/// Store → session layer: the peer broke the store's protocol on `feed`'s stream (for a
/// feed store: it sent a block or proof that does not verify, or a fork). The feed stops
/// on that session (`SessionEvent::FeedStopped`, the peer is told with `Stopped`), never
/// the session, and it is no ground for a ban: an honest relay can pass on a writer's
/// fault. The store keeps nothing from the failed message.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct FeedFailed {
    /// The feed.
    pub feed: FeedKey,
    /// The peer.
    pub peer: PeerKey,
    /// What was wrong, in words.
    pub reason: String,
}
