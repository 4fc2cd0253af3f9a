//! The messages the node sends to [`super::FeedStore`], one struct each, and their errors.

use actix::Message;
use replic8_store::{
    storage::StorageError, AppendError, KeyError, OpenError, ReadError, SignedHead,
};
use thiserror::Error;
use tokio::sync::watch;

use super::NamespacePolicy;
use crate::keys::{FeedKey, NamespaceSecret, PeerKey};
use crate::message::{HeaderError, Headers};

/// Why a feed store operation failed.
#[derive(Debug, Error)]
pub enum FeedStoreError {
    /// The store holds no feed with this key.
    #[error("no feed {0}")]
    NotFound(String),
    /// The key is not an ed25519 public key.
    #[error("bad feed key: {0}")]
    BadKey(#[from] KeyError),
    /// The feed could not be opened or created.
    #[error("open: {0}")]
    Open(#[from] OpenError),
    /// The append failed (not writable, block too large, storage).
    #[error("append: {0}")]
    Append(#[from] AppendError),
    /// The read failed (missing block, storage).
    #[error("read: {0}")]
    Read(#[from] ReadError),
    /// The storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The headers are over a bound.
    #[error("headers: {0}")]
    Headers(#[from] HeaderError),
    /// The session layer refused the share.
    #[error("share: {0}")]
    Share(#[from] crate::store::ShareError),
    /// A worker thread of the store failed (panicked or was cancelled).
    #[error("worker failed: {0}")]
    Worker(String),
    /// The public namespace accepts only feeds held in it: no other policy is taken.
    #[error("the public namespace accepts only feeds held in it")]
    PublicPolicy,
    /// The session layer did not register the namespace.
    #[error("register: {0}")]
    Register(#[from] crate::store::RegisterError),
    /// The file of the feeds' namespaces could not be read.
    #[error("feed namespaces: {0}")]
    Membership(#[from] super::MembershipError),
    /// Offers in this namespace are not decided by hand (its policy is not manual).
    #[error("namespace {0:?} does not take offers by hand (open it with the manual policy)")]
    NotManual(String),
}

/// A feed's length and stored block count, as published to subscribers and to the
/// feed's other sync cores after every change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedState {
    /// Blocks covered by the verified signed head.
    pub length: u64,
    /// Blocks stored here.
    pub stored: u64,
    /// Bumped on every change, including a sync core giving back the blocks it claimed.
    pub version: u64,
}

/// What the store knows of one feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedInfo {
    /// The feed's public key.
    pub key: FeedKey,
    /// Whether this store holds the secret key and can append.
    pub writable: bool,
    /// Blocks covered by the verified head.
    pub length: u64,
    /// Blocks stored here.
    pub stored: u64,
    /// Blocks `0..contiguous_length` are all stored here (what a reader can read in
    /// order).
    pub contiguous_length: u64,
    /// Bytes of the blocks covered by the head.
    pub byte_length: u64,
    /// The verified signed head.
    pub head: Option<SignedHead>,
}

/// Counters of the store, over every feed and peer since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedStoreStats {
    /// Blocks received from peers, verified and stored.
    pub blocks_in: u64,
    /// Bytes of those blocks.
    pub bytes_in: u64,
    /// Blocks sent to peers.
    pub blocks_out: u64,
    /// Bytes of those blocks.
    pub bytes_out: u64,
    /// Feed streams that ran or run.
    pub streams: u64,
    /// Feed streams running now.
    pub open_streams: u64,
    /// Feed streams that ended because the peer broke the sync protocol.
    pub streams_failed: u64,
    /// Feed streams ended because the peer stopped reading our data answers (held
    /// bytes of the serve budget without progress for
    /// [`super::FeedStoreLimits::serve_stall`]).
    pub serve_stalls: u64,
    /// Serve stalls that ended their peer's session: the peer's
    /// [`MAX_SERVE_STALLS`](super::MAX_SERVE_STALLS)th or later in a row (see
    /// [`FeedStoreEvent::ServeStalled`]).
    pub serve_stall_session_ends: u64,
    /// Offered feeds refused by the namespace's policy (new to the store, and the
    /// policy did not take them).
    pub refused_policy: u64,
    /// Offered feeds refused because the store holds them only in other namespaces.
    pub refused_namespace: u64,
    /// Offered feeds the policy took but a quota refused (per peer, or in total).
    pub refused_quota: u64,
    /// Replicas created from offers, over the store's life (counted against
    /// [`super::FeedStoreLimits::max_replicas`]).
    pub replicas: u64,
    /// Tasks of feed streams alive now (each stream runs two: its driver and its writer).
    pub stream_tasks: u64,
    /// Offered feeds waiting for the user's decision now (manual namespaces).
    pub offers_waiting: u64,
    /// Feeds the store holds.
    pub feeds_held: u64,
    /// Feeds open now (in use, or kept for reuse within
    /// [`super::FeedStoreLimits::open_feeds`]).
    pub feeds_open: u64,
    /// Feeds opened from storage (or created) since the store started. A replica made
    /// from an offer is created without being opened (so it is never closed either).
    pub feeds_opened: u64,
    /// Feeds closed since the store started (unused past the bound, or idle).
    pub feeds_closed: u64,
    /// Writes of the membership file (changes made while one runs share the next).
    pub membership_writes: u64,
    /// Bytes of data answers held for peers now: read from storage and not yet
    /// acknowledged (queued for a stream, or in QUIC's send buffer). At most
    /// [`super::FeedStoreLimits::serve_bytes_in_flight`].
    pub serve_bytes_held: u64,
    /// The most [`Self::serve_bytes_held`] ever was.
    pub serve_bytes_peak: u64,
    /// Bytes received on feed streams and not yet verified, over every stream (bounded
    /// by [`super::FeedStoreLimits::receive_bytes_held`], plus one frame and one read
    /// per stream).
    pub receive_bytes_held: u64,
    /// The most [`Self::receive_bytes_held`] ever was.
    pub receive_bytes_peak: u64,
    /// The most one peer's streams ever held of [`Self::receive_bytes_held`] at once:
    /// bounded by [`super::FeedStoreLimits::receive_bytes_held_per_peer`], plus one
    /// frame and one read per stream of that peer.
    pub receive_bytes_peer_peak: u64,
}

/// How many feeds of one offer were refused, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// New to the store, and the namespace's policy did not take them (or their key is
    /// not an ed25519 public key).
    pub policy: u64,
    /// Held here only in other namespaces.
    pub elsewhere: u64,
    /// Past a quota (per peer, or in total).
    pub quota: u64,
}

/// What became of one feed of an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferDecision {
    /// Accepted: the store holds it in the namespace already.
    Held,
    /// Accepted as a new replica.
    Accepted,
    /// Refused by the namespace's policy (or its key is not an ed25519 public key).
    RefusedPolicy,
    /// Refused: held here only in other namespaces.
    RefusedElsewhere,
    /// Refused: past a quota (per peer, in total, or of feeds waiting for a decision).
    RefusedQuota,
    /// Waiting for the user's decision ([`DecideOffers`]).
    Waiting,
    /// Refused by the user.
    Rejected,
    /// Refused: no decision came within [`super::FeedStoreLimits::manual_wait`].
    Expired,
}

impl OfferDecision {
    /// The decision as a word for people and JSON (`accepted`, `refused-policy`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            OfferDecision::Held => "held",
            OfferDecision::Accepted => "accepted",
            OfferDecision::RefusedPolicy => "refused-policy",
            OfferDecision::RefusedElsewhere => "refused-elsewhere",
            OfferDecision::RefusedQuota => "refused-quota",
            OfferDecision::Waiting => "waiting",
            OfferDecision::Rejected => "rejected",
            OfferDecision::Expired => "expired",
        }
    }
}

/// What the store reports as it works (sent to the events channel given to
/// [`super::FeedStore::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedStoreEvent {
    /// An offered feed the store did not hold was accepted; it is created here as a
    /// replica and forwarded to the namespace's other sessions.
    Accepted {
        /// The namespace.
        namespace: String,
        /// The feed.
        feed: FeedKey,
        /// Who offered it.
        peer: PeerKey,
    },
    /// Feeds of one offer of `peer` were refused: not accepted, politely (the session
    /// goes on).
    Refused {
        /// The namespace.
        namespace: String,
        /// Who offered them.
        peer: PeerKey,
        /// How many, and why.
        refused: Refusals,
    },
    /// What became of one feed of `peer`'s offer (a feed waiting for the user's
    /// decision is reported again once decided).
    OfferDecided {
        /// The namespace.
        namespace: String,
        /// Who offered it.
        peer: PeerKey,
        /// The feed.
        feed: FeedKey,
        /// The headers it was offered with.
        headers: Headers,
        /// What became of it.
        decision: OfferDecision,
    },
    /// Blocks from `peer` were verified and stored (since the previous such event for
    /// this stream).
    Downloaded {
        /// The feed.
        feed: FeedKey,
        /// The peer.
        peer: PeerKey,
        /// Blocks.
        blocks: u64,
        /// Bytes.
        bytes: u64,
    },
    /// `peer` announced a signed head of `length` blocks for the feed (its signature
    /// checked): how far the peer has it.
    PeerHead {
        /// The feed.
        feed: FeedKey,
        /// The peer.
        peer: PeerKey,
        /// The peer's signed length.
        length: u64,
    },
    /// The feed is in sync with `peer`: every block up to `length` is here.
    FeedSynced {
        /// The feed.
        feed: FeedKey,
        /// The peer.
        peer: PeerKey,
        /// The feed's length.
        length: u64,
    },
    /// The peer broke the sync protocol on the feed's stream; its session ends.
    SyncFailed {
        /// The feed.
        feed: FeedKey,
        /// The peer.
        peer: PeerKey,
        /// What was wrong.
        reason: String,
    },
    /// The peer stopped reading the feed's stream: it held `held` bytes of our data
    /// answers and took none of them for `stall`
    /// ([`super::FeedStoreLimits::serve_stall`]). The stream was reset (QUIC dropped
    /// its copies of them too) and gave them back to the serve budget. The session and
    /// the peer's other streams go on, unless this was the peer's
    /// [`MAX_SERVE_STALLS`](super::MAX_SERVE_STALLS)th stall in a row (each within
    /// [`STRIKE_MEMORY`](super::STRIKE_MEMORY) stall bounds of the one before) or a
    /// later one: then its session ends with `timeout`, no ban (`ends_session`).
    ServeStalled {
        /// The feed.
        feed: FeedKey,
        /// The peer.
        peer: PeerKey,
        /// Bytes of answers the stream held when it was ended.
        held: u64,
        /// How long it held them without progress.
        stall: std::time::Duration,
        /// The peer's serve stalls in a row, this one included.
        stalls: u32,
        /// Its session is ended for it.
        ends_session: bool,
    },
}

/// Creates a new writable feed with a fresh key pair; replies with its key.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<FeedKey, FeedStoreError>")]
pub struct CreateFeed;

/// Opens a feed the store holds (from storage if it is not open yet).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<FeedInfo, FeedStoreError>")]
pub struct OpenFeed {
    /// The feed.
    pub feed: FeedKey,
}

/// Appends blocks to a writable feed in one signed, durable batch; replies with the new
/// length. Sessions replicating the feed get the new blocks (live).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<u64, FeedStoreError>")]
pub struct Append {
    /// The feed.
    pub feed: FeedKey,
    /// The blocks.
    pub blocks: Vec<Vec<u8>>,
}

/// A preparer of the appends that follow a writable feed's head: a writer with a
/// stream of batches hashes and signs the next one with it while [`AppendPrepared`]
/// writes the one before (see [`replic8_store::AppendPreparer`]).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<replic8_store::AppendPreparer, FeedStoreError>")]
pub struct PrepareAppends {
    /// The feed.
    pub feed: FeedKey,
}

/// Appends blocks a [`PrepareAppends`] preparer hashed and signed, as [`Append`] does
/// (signed, durable, then shared); replies with the new length. If another append came
/// first, the blocks are appended after it and the length is not the prepared
/// [`end`](replic8_store::Prepared::end): ask for a new preparer.
#[derive(Debug, Message)]
#[rtype(result = "Result<u64, FeedStoreError>")]
pub struct AppendPrepared {
    /// The feed.
    pub feed: FeedKey,
    /// The append.
    pub prepared: replic8_store::Prepared,
}

/// Reads blocks `[start, end)`; each must be stored here.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Vec<Vec<u8>>, FeedStoreError>")]
pub struct ReadRange {
    /// The feed.
    pub feed: FeedKey,
    /// First block.
    pub start: u64,
    /// End (exclusive).
    pub end: u64,
}

/// Subscribes to a feed's changes (appends here, blocks downloaded from peers).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<watch::Receiver<FeedState>, FeedStoreError>")]
pub struct Subscribe {
    /// The feed.
    pub feed: FeedKey,
}

/// Shares a feed the store holds in `namespace` with `headers`: offered on every
/// session now (live) and on every session that starts later. Replies with how many
/// peers' sessions offered it now.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<usize, FeedStoreError>")]
pub struct ShareFeed {
    /// The namespace (registered with the session layer for this store).
    pub namespace: String,
    /// The feed.
    pub feed: FeedKey,
    /// Headers sent with the offer.
    pub headers: Headers,
}

/// Shares many feeds in one namespace at once, as [`ShareFeed`] does each (the node's
/// start shares every persisted share this way): one membership write and one offer
/// for all of them. Replies with the feeds that could not be shared, and why.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Vec<(FeedKey, FeedStoreError)>")]
pub struct ShareFeeds {
    /// The namespace (registered with the session layer for this store).
    pub namespace: String,
    /// The feeds, each with the headers sent with its offer.
    pub feeds: Vec<(FeedKey, Headers)>,
}

/// The store's counters.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "FeedStoreStats")]
pub struct GetStats;

/// Serves `namespace` (with its secret, if any) under `policy`: sets the policy, then
/// registers the store for the namespace with its session layer. The public namespace
/// `""` takes only a held-only policy ([`FeedStoreError::PublicPolicy`] otherwise).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), FeedStoreError>")]
pub struct ServeNamespace {
    /// The namespace.
    pub namespace: String,
    /// Its pre-shared secret, if any.
    pub secret: Option<NamespaceSecret>,
    /// What the store accepts and forwards in it.
    pub policy: NamespacePolicy,
}

/// Sets the policy of `namespace` (registered with the session layer by whoever
/// registers the store), for offers answered from now on. The public namespace `""`
/// takes only a held-only policy ([`FeedStoreError::PublicPolicy`] otherwise).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), FeedStoreError>")]
pub struct SetNamespacePolicy {
    /// The namespace.
    pub namespace: String,
    /// What the store accepts and forwards in it.
    pub policy: NamespacePolicy,
}

/// The user's decision on feeds offered in a namespace with the manual policy: each
/// waiting offer of them is answered (accepted feeds become replicas, within the
/// quotas), and the decision is remembered for offers of them made later. Replies with,
/// per feed, how many waiting offers got the decision.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<usize>, FeedStoreError>")]
pub struct DecideOffers {
    /// The namespace.
    pub namespace: String,
    /// The feeds.
    pub feeds: Vec<FeedKey>,
    /// Accept (else reject).
    pub accept: bool,
}

/// Opens a feed by its public key, known out of band: a feed the store holds is left as
/// it is (its namespaces unchanged); otherwise an empty replica is created in the public
/// namespace `""` and announced on every session for all-to-all replication, so peers
/// that hold the feed publicly replicate it to us. Replies with the feed and whether the
/// replica is new.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(FeedInfo, bool), FeedStoreError>")]
pub struct GetFeed {
    /// The feed.
    pub feed: FeedKey,
}

/// One held feed, as [`ListFeeds`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedSummary {
    /// Length, stored blocks, head (of a feed known from the storage scan at the store's
    /// start: the head as stored, its roots checked, its signature not checked again).
    pub info: FeedInfo,
    /// Bytes of the blocks stored here.
    pub stored_bytes: u64,
    /// The namespaces the feed belongs to (`""`: public).
    pub namespaces: Vec<String>,
}

/// The feeds the store holds, sorted by key, a page at a time: the first `limit` feeds
/// whose key sorts after `after` ([`ListFeeds::all`]: every feed in one answer). Read
/// from the store's index: a feed opened since the store started as it is; a small
/// feed not opened since as the scan of the storage at the store's start read it (a
/// listing waits for that scan: well under a second at 100,000 feeds; its heads'
/// signatures were checked when they were stored, not again); the others are opened
/// (on the blocking pool, one at a time, and closed again as any unused feed).
///
/// A page holds only its own feeds, whatever the number held: a listing of 100,000
/// feeds in pages never builds the whole list. A feed created between two pages with a
/// key before the page's cursor is not in the listing.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<FeedPage, FeedStoreError>")]
pub struct ListFeeds {
    /// List only feeds whose key sorts after this one (the page before's
    /// [`FeedPage::next`]); `None`: from the first.
    pub after: Option<FeedKey>,
    /// Most feeds in the page (a limit of 0 is taken as 1).
    pub limit: usize,
}

impl ListFeeds {
    /// Every feed in one answer.
    pub fn all() -> Self {
        ListFeeds {
            after: None,
            limit: usize::MAX,
        }
    }
}

/// One page of [`ListFeeds`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedPage {
    /// The page's feeds, sorted by key. A feed that cannot be read is left out (and
    /// logged), so a page may hold fewer than its limit and still have a next one.
    pub feeds: Vec<FeedSummary>,
    /// The cursor of the next page (the last key this page covered), or `None` if no
    /// feed sorts after this page.
    pub next: Option<FeedKey>,
}

/// What [`GetFeedTotals`] sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedTotals {
    /// Feeds listed.
    pub feeds: u64,
    /// Blocks stored here, over those feeds.
    pub blocks_stored: u64,
    /// Bytes of those blocks.
    pub bytes_stored: u64,
}

/// The sums over what [`ListFeeds`] lists, read the same way, without building the list
/// (for a status line over 100,000 feeds).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<FeedTotals, FeedStoreError>")]
pub struct GetFeedTotals;
