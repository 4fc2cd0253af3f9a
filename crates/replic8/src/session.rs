//! The session core: one per connection, no I/O.
//!
//! Inputs are `handle_*` calls: bytes that arrived on the control stream, feed streams
//! the peer opened, local commands (register a namespace, share, announce known feeds,
//! the store's answer to an offer, a feed's sync state) and the time. Outputs are
//! `poll_*` calls: frames to write on the control stream, feed streams to open or close,
//! events, and the next timer. The actor that drives a session over QUIC calls the
//! `poll_*` methods after every input until they return `None`.
//!
//! What the core enforces:
//! - the first message is a hello with our version and dialect, within the hello timeout;
//! - namespaces are matched by connection-bound tags (the dialer shows its tag, the
//!   acceptor answers only a match) and named on the wire by connection-local handles,
//!   never by a stable id; offers and `have` lists in a namespace other than the public
//!   one go out only after the match, and no reason sent to the peer names a namespace;
//! - a limit an honest peer can reach refuses or drops, never ends the session; only
//!   frames an honest peer never sends are violations ([`EndReason::is_misbehaviour`]);
//! - a fault in one feed (a store's `FeedFailed`) stops that feed on this session, not
//!   the session;
//! - our control output is bounded: while over [`MAX_QUEUED_CONTROL_BYTES`] we read no
//!   more of the peer's control stream, and a peer that keeps us blocked for the stall
//!   timeout ends with `timeout`;
//! - only feeds offered and accepted, or held by both sides and proven by capability, get
//!   a stream; any other stream ends the session;
//! - header and message bounds (checked by [`crate::message`]);
//! - at most `min(ours, peer's)` feed streams open at once, opened lazily and closed
//!   once a feed is in sync both ways;
//! - a feed is offered to a peer at most once per session, and never to a peer known to
//!   have it, so forwarding between sessions does not loop;
//! - a feed stream that ends before its feed is in sync both ways (its store gave it up,
//!   the peer's store finished it, or it could not be opened) is reopened by the dialer
//!   after 1 s, 2 s, 4 s, ... up to [`MAX_REOPEN_DELAY`]; after [`MAX_STREAM_REOPENS`]
//!   such ends in a row the feed is stopped on this session ([`SessionEvent::FeedStopped`])
//!   until a `Notice` or a local change, and a one-shot session, which could then never
//!   be done, ends.
//!
//! Driving two sessions by hand, as the session actor does over QUIC:
//!
//! ```
//! use std::time::Instant;
//! use replic8::keys::{ExporterSecret, FeedKey, Role};
//! use replic8::message::Headers;
//! use replic8::session::{Session, SessionConfig, SessionEvent, StreamCommand};
//!
//! let exporter = ExporterSecret([7; 32]); // from `keys::exporter_secret(&connection)`
//! let now = Instant::now();
//! let mut dialer = Session::new(SessionConfig::default(), Role::Dialer, exporter, now);
//! let mut acceptor = Session::new(SessionConfig::default(), Role::Acceptor, exporter, now);
//! for s in [&mut dialer, &mut acceptor] {
//!     s.handle_register_namespace("", None).unwrap();
//! }
//! let feed = FeedKey([1; 32]);
//! acceptor.handle_share("", vec![(feed, Headers::new())]).unwrap();
//!
//! let mut opened = None;
//! for _ in 0..4 {
//!     // Control frames go both ways (the actor writes them to the control stream).
//!     while let Some(frame) = dialer.poll_transmit() {
//!         acceptor.handle_control_bytes(&frame);
//!     }
//!     while let Some(frame) = acceptor.poll_transmit() {
//!         dialer.handle_control_bytes(&frame);
//!     }
//!     // The store answers offers (the actor sends it `store::Offer`).
//!     while let Some(event) = dialer.poll_event() {
//!         if let SessionEvent::Offered { offer, feeds, .. } = event {
//!             let keys = feeds.into_iter().map(|(key, _)| key).collect();
//!             dialer.handle_offer_answer(offer, Ok(keys)).unwrap();
//!         }
//!     }
//!     // The dialer opens feed streams; the acceptor checks their header.
//!     while let Some(command) = dialer.poll_stream() {
//!         if let StreamCommand::Open { header, .. } = command {
//!             opened = Some(acceptor.handle_incoming_stream(header).unwrap());
//!         }
//!     }
//! }
//! assert_eq!(opened.unwrap().feed, feed);
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::debug;

use crate::frame::{self, FrameError, MAX_FRAME_LEN};
use crate::keys::{
    capability, verify_capability, DiscoveryKey, ExporterSecret, FeedKey, NamespaceKey,
    NamespaceSecret, Role,
};
use crate::message::{
    self, CloseCode, FeedStreamHeader, HeaderError, Headers, KnownFeed, Message, OfferedFeed,
    DIALECT, MAX_FEEDS_PER_MESSAGE, MAX_REASON_LEN, PROTOCOL_VERSION, PUBLIC_HANDLE,
};

/// Most offers of the peer that our stores may have unanswered at once; more is a
/// protocol error. Our own sender never has more than this many offers unanswered
/// (the rest of a share waits), so only a peer that breaks the rule crosses it.
pub const MAX_PENDING_PEER_OFFERS: usize = 256;
/// Most bytes of the peer's offers (encoded feeds with their headers) waiting for our
/// stores' answers at once. An offer that would go over is answered at once with
/// nothing accepted (a polite refusal, not misbehaviour): four full frames, so an
/// honest share of 10,000 feeds with 100 bytes of headers each (about 1.5 MB) is never
/// refused, while 128 sessions pin at most 512 MiB of offers.
pub const MAX_PENDING_OFFER_BYTES: usize = 4 * 1024 * 1024;
/// Most entries of the peer's `have` lists kept for feeds we do not hold (yet); more
/// are dropped silently (an honest peer that holds many feeds we lack can send more).
pub const MAX_UNMATCHED_HAVE: usize = 100_000;
/// Most feeds the peer's offers may name in one session; an offer past it is answered
/// at once with nothing accepted (an honest forwarding peer can reach it). Bounds the
/// memory a peer can pin with offers (about 100 bytes a feed).
pub const MAX_PEER_FEEDS: usize = 1_000_000;
/// Most dialer tags kept (acceptor side) that matched none of our namespaces, in case
/// we register the namespace later; more are dropped silently (an honest dialer may be
/// in many namespaces we are not in). 36 bytes each.
pub const MAX_UNMATCHED_TAGS: usize = 1024;
/// Most bytes of control frames queued for the wire (not yet written to the QUIC
/// stream) before we stop reading the peer's control stream: a peer that sends and
/// never reads then meets QUIC flow control instead of growing our queue, and one that
/// takes nothing for the stall timeout ends with `timeout`. What is queued stays under
/// this plus the answer to the last message read (at most a frame) plus our stores'
/// answers to offers already in their hands (see `SessionStats::queued_bytes`). One
/// frame's worth: a peer that reads at all never stalls our reader for long.
pub const MAX_QUEUED_CONTROL_BYTES: usize = MAX_FRAME_LEN;
/// The reason when the peer's control stream ends without a close message. Not counted
/// as misbehaviour: a peer whose session task was cut short (its node stopping after
/// the close grace) ends the stream this way.
const CONTROL_END_WITHOUT_CLOSE: &str = "control stream ended without a close message";
/// How the reason starts when we could not encode our own message (a bug of ours, not
/// the peer's misbehaviour).
const ENCODE_FAILED: &str = "could not encode";
/// Room left in a frame for an offer's own fields when packing feeds into it.
const OFFER_SLACK: usize = 128;
/// Most ends in a row of a feed's stream before the feed was in sync both ways that the
/// dialer answers with a reopen; the next one stops the feed on the session. With
/// [`reopen_delay`] that is about three minutes of trying, at most nine streams.
pub const MAX_STREAM_REOPENS: u32 = 8;
/// The longest wait before reopening a feed stream that keeps ending early.
pub const MAX_REOPEN_DELAY: Duration = Duration::from_secs(60);

/// How long the dialer waits before reopening a feed stream after `ends` ends in a row
/// before the feed was in sync (this one included): 1 s, 2 s, 4 s, ... up to
/// [`MAX_REOPEN_DELAY`]. Never zero: a store whose protocol ends the stream itself once
/// it is done (before the peer's `Synced` arrived) costs no extra stream, since that
/// `Synced` cancels the reopen; and nothing loops at handshake speed.
pub fn reopen_delay(ends: u32) -> Duration {
    let doubling = ends.saturating_sub(1).min(6);
    Duration::from_secs(1u64 << doubling).min(MAX_REOPEN_DELAY)
}

/// Whether a session ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Keep replicating until closed.
    Live,
    /// End once both sides are ready, no offer is unanswered and every replicated feed is
    /// in sync both ways.
    OneShot,
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Live or one-shot.
    pub mode: Mode,
    /// Most feed streams open at once on this connection (we tell the peer; the dialer
    /// opens at most the smaller of both sides' values).
    pub max_streams: u32,
    /// How long the peer has to say hello.
    pub hello_timeout: Duration,
    /// How long one control frame may take to arrive once its first byte did; a peer
    /// that starts a frame and never finishes it (a slowloris) ends the session with
    /// `timeout`. What it can make us buffer meanwhile is one frame (`MAX_FRAME_LEN`).
    pub stall_timeout: Duration,
    /// The first [`StreamId`] this session gives. Stores name a feed stream by (peer,
    /// id), and a peer's new session can attach streams before its old one detached
    /// them (a restarted peer), so the session layer starts each session of a peer at
    /// its own value (`SessionsActor`: the session's generation << 32).
    pub first_stream_id: u64,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            mode: Mode::Live,
            // A starting value, to be tuned by the replication benchmark: enough streams
            // to keep a link busy, far below QUIC's own limits on idle state.
            max_streams: 128,
            hello_timeout: Duration::from_secs(10),
            // A control frame is at most 1 MiB: 30 s is 35 KB/s, far below any link a
            // replica can sync over, and short enough that a stalled peer does not hold
            // a connection slot for long.
            stall_timeout: Duration::from_secs(30),
            first_stream_id: 0,
        }
    }
}

impl SessionConfig {
    /// The value for quinn's `TransportConfig::max_concurrent_bidi_streams` on the
    /// acceptor: the feed streams plus the control stream. QUIC enforces the stream limit
    /// for the receiving side; the core enforces it for the opening side.
    pub fn quic_stream_limit(&self) -> u32 {
        self.max_streams.saturating_add(1)
    }
}

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
const VIOLATIONS: [CloseCode; 5] = [
    CloseCode::PROTOCOL,
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
    /// [`Session::handle_offer_answer`].
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
    /// ended [`MAX_STREAM_REOPENS`] + 1 times in a row before the feed was in sync (the
    /// dialer stops reopening it until the peer's `Notice` or a change of our copy), or
    /// a side's store found a fault in it ([`Session::handle_feed_failed`], or the
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
    /// ([`Session::handle_control_written`]). While it is at least
    /// [`MAX_QUEUED_CONTROL_BYTES`] we read nothing more from the peer.
    pub queued_bytes: u64,
    /// The most `queued_bytes` ever was in this session.
    pub peak_queued_bytes: u64,
    /// Feeds stopped on this session by a fault (ours or the peer's report).
    pub feeds_faulted: u64,
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

#[derive(Debug)]
struct Namespace {
    secret: Option<NamespaceSecret>,
    /// The key of its tags; `None` for the public namespace, which needs no tag.
    key: Option<NamespaceKey>,
    /// Its handle on this connection: the public one, the one we gave it (dialer), or
    /// the dialer's whose tag matched it (acceptor).
    handle: Option<u32>,
    /// The peer showed it knows the key (always true for the public namespace).
    peer_proven: bool,
    /// Shares waiting for the namespace's match.
    pending_offers: Vec<OfferedFeed>,
    /// Known feeds waiting for the namespace's match.
    pending_have: Vec<DiscoveryKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Closed,
    Queued,
    Open,
}

/// Why a replicated feed is stopped on this session.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    /// Its stream kept ending before it was in sync; a notice or a change resumes it.
    Exhausted(String),
    /// A fault in the feed (ours or the peer's report): stopped for the session.
    Fault(String),
}

#[derive(Debug)]
struct Replicated {
    namespace: String,
    discovery_key: DiscoveryKey,
    /// How the dialer names the feed when it opens its stream.
    route: Route,
    stream: StreamState,
    /// The current stream, while `stream` is `Open`.
    token: Option<StreamId>,
    local_synced: Option<u64>,
    remote_synced: Option<u64>,
    reported: Option<u64>,
    /// Ends in a row of its stream before the feed was in sync both ways (dialer).
    early_ends: u32,
    /// Stopped on this session, and why.
    stopped: Option<Stop>,
}

#[derive(Debug, Clone, Copy)]
enum Route {
    Offered { by: Role, id: u64 },
    Known,
}

#[derive(Debug)]
struct OurOffer {
    namespace: String,
    feeds: HashMap<u64, FeedKey>,
    /// Feeds whose stream arrived before the answer: the answer must accept them.
    early: HashSet<u64>,
}

#[derive(Debug)]
struct PeerOffer {
    namespace: String,
    feeds: Vec<(u64, FeedKey)>,
    /// What it counts against [`MAX_PENDING_OFFER_BYTES`].
    bytes: usize,
}

#[derive(Debug)]
struct Known {
    key: FeedKey,
    namespace: String,
    /// Our `have` entry was sent.
    announced: bool,
}

/// The session core. See the module documentation.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    role: Role,
    exporter: ExporterSecret,
    hello_deadline: Option<Instant>,
    /// The latest time we were given.
    last_now: Instant,
    /// Control frames parsed so far, to tell one partial frame from the next.
    frames_parsed: u64,
    /// A partial control frame is buffered: which one, and since when (unknown until
    /// the next `handle_timeout`, which `poll_timeout` then asks for at once).
    stall: Option<(u64, Option<Instant>)>,
    peer_max_streams: Option<u32>,
    ended: Option<EndReason>,
    read_buf: Vec<u8>,
    /// Encoded control frames to give out.
    outbox: VecDeque<Vec<u8>>,
    /// Bytes in `outbox`.
    outbox_bytes: usize,
    /// Bytes given out by `poll_transmit` and not yet reported written.
    in_flight: usize,
    /// Our output is over [`MAX_QUEUED_CONTROL_BYTES`] and we stopped reading: since
    /// when, or since the peer last took some of it (unknown until the next
    /// `handle_timeout`).
    blocked: Option<Option<Instant>>,
    /// Messages that wait for the peer's hello.
    held: Vec<Message>,
    events: VecDeque<SessionEvent>,
    streams: VecDeque<StreamCommand>,

    namespaces: HashMap<String, Namespace>,
    /// Namespace handles in use on this connection, to their namespace.
    handles: HashMap<u32, String>,
    /// The next handle we give (dialer).
    next_handle: u32,
    /// The dialer's last handle (acceptor): handles strictly increase.
    last_peer_handle: Option<u32>,
    /// Dialer tags that matched none of our namespaces (acceptor), bounded.
    unmatched_tags: Vec<(u32, [u8; 32])>,
    /// Handles we gave namespaces we unregistered since (dialer): the acceptor's answer
    /// to their tag may still be on its way, and is ignored. At most one per
    /// registration we made, a local action.
    retired_handles: HashSet<u32>,

    next_offer: u64,
    next_feed_id: u64,
    our_offers: HashMap<u64, OurOffer>,
    /// Our offered feed ids not yet answered, to find their offer.
    our_pending_ids: HashMap<u64, u64>,
    last_peer_offer: Option<u64>,
    last_peer_feed_id: Option<u64>,
    peer_offers: HashMap<u64, PeerOffer>,
    /// Bytes of `peer_offers`.
    peer_offer_bytes: usize,
    /// Feeds shared in proven namespaces, waiting to go out in an offer (handle, feed):
    /// at most [`MAX_PENDING_PEER_OFFERS`] of our offers wait for answers at once.
    share_queue: VecDeque<(u32, OfferedFeed)>,
    /// Our `have` entries waiting to go out (handle, entry), sent while our output is
    /// under [`MAX_QUEUED_CONTROL_BYTES`].
    have_queue: VecDeque<(u32, KnownFeed)>,
    peer_offered: HashSet<FeedKey>,
    /// Feeds we offered (or queued to offer) to this peer.
    offered: HashSet<FeedKey>,
    /// Feeds the peer is known to have: it offered them, accepted them, or proved them.
    peer_has: HashSet<FeedKey>,

    known: HashMap<DiscoveryKey, Known>,
    /// The peer's `have` entries for feeds we do not hold (yet): (handle, capability).
    unmatched_have: HashMap<DiscoveryKey, (u32, [u8; 32])>,

    feeds: HashMap<FeedKey, Replicated>,
    by_discovery: HashMap<DiscoveryKey, FeedKey>,
    by_offer_id: HashMap<(Role, u64), FeedKey>,
    open_queue: VecDeque<FeedKey>,
    open_streams: usize,
    next_stream: u64,
    /// Feeds whose stream ended early, waiting to be reopened (dialer): when, or `None`
    /// until the next `handle_timeout` tells the time.
    reopens: HashMap<FeedKey, Option<Instant>>,

    local_ready: bool,
    peer_ready: bool,
    settled_sent: bool,
    peer_settled: bool,
    stats: SessionStats,
}

impl Session {
    /// A session on a connection where we are `role`, with the connection's exporter
    /// value, starting at `now`. Our hello is the first frame [`Session::poll_transmit`]
    /// gives.
    pub fn new(
        config: SessionConfig,
        role: Role,
        exporter: ExporterSecret,
        now: Instant,
    ) -> Session {
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            dialect: DIALECT.to_string(),
            max_streams: config.max_streams,
        };
        let first_stream = config.first_stream_id;
        let mut session = Session {
            hello_deadline: Some(now + config.hello_timeout),
            last_now: now,
            frames_parsed: 0,
            stall: None,
            config,
            role,
            exporter,
            peer_max_streams: None,
            ended: None,
            read_buf: Vec::new(),
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            in_flight: 0,
            blocked: None,
            held: Vec::new(),
            events: VecDeque::new(),
            streams: VecDeque::new(),
            namespaces: HashMap::new(),
            handles: HashMap::new(),
            next_handle: 1,
            last_peer_handle: None,
            unmatched_tags: Vec::new(),
            retired_handles: HashSet::new(),
            next_offer: 0,
            next_feed_id: 0,
            our_offers: HashMap::new(),
            our_pending_ids: HashMap::new(),
            last_peer_offer: None,
            last_peer_feed_id: None,
            peer_offers: HashMap::new(),
            peer_offer_bytes: 0,
            share_queue: VecDeque::new(),
            have_queue: VecDeque::new(),
            peer_offered: HashSet::new(),
            offered: HashSet::new(),
            peer_has: HashSet::new(),
            known: HashMap::new(),
            unmatched_have: HashMap::new(),
            feeds: HashMap::new(),
            by_discovery: HashMap::new(),
            by_offer_id: HashMap::new(),
            open_queue: VecDeque::new(),
            open_streams: 0,
            reopens: HashMap::new(),
            next_stream: first_stream,
            local_ready: false,
            peer_ready: false,
            settled_sent: false,
            peer_settled: false,
            stats: SessionStats::default(),
        };
        session.push_frame(&hello);
        session
    }

    /// Our role on the connection.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the peer's hello arrived and matched.
    pub fn is_established(&self) -> bool {
        self.peer_max_streams.is_some()
    }

    /// Why the session ended, once it has.
    pub fn end_reason(&self) -> Option<&EndReason> {
        self.ended.as_ref()
    }

    /// Whether the peer is known to have `feed` (it offered, accepted or proved it).
    pub fn peer_has(&self, feed: &FeedKey) -> bool {
        self.peer_has.contains(feed)
    }

    /// Whether we offered `feed` to the peer in this session.
    pub fn offered(&self, feed: &FeedKey) -> bool {
        self.offered.contains(feed)
    }

    /// Whether `feed` is replicated on this session (accepted, or proven both ways).
    pub fn is_replicated(&self, feed: &FeedKey) -> bool {
        self.feeds.contains_key(feed)
    }

    /// The session's counters.
    pub fn stats(&self) -> SessionStats {
        let mut stats = self.stats;
        stats.queued_bytes = self.queued_bytes() as u64;
        stats
    }

    /// Control-stream bytes queued for the wire: not yet given out, or given out and
    /// not yet reported written.
    pub fn queued_bytes(&self) -> usize {
        self.outbox_bytes + self.in_flight
    }

    /// Whether the driver should read more of the peer's control stream: false while
    /// our queued output is at [`MAX_QUEUED_CONTROL_BYTES`] or more (the peer does not
    /// read what we send), so QUIC flow control pushes back on the peer.
    pub fn wants_control_bytes(&self) -> bool {
        self.ended.is_none() && !self.over_queue_bound()
    }

    /// Feed streams we opened and have not closed.
    pub fn open_streams(&self) -> usize {
        self.open_streams
    }

    // ---- inputs from the peer ----

    /// Bytes that arrived on the control stream. While our queued output is over
    /// [`MAX_QUEUED_CONTROL_BYTES`] whole frames stay buffered unread, and are read
    /// once [`Session::handle_control_written`] brings it back under.
    pub fn handle_control_bytes(&mut self, bytes: &[u8]) {
        if self.ended.is_some() {
            return;
        }
        self.stats.bytes_in += bytes.len() as u64;
        self.read_buf.extend_from_slice(bytes);
        self.read_frames();
    }

    /// The driver wrote `bytes` of the frames `poll_transmit` gave out to the control
    /// stream (the peer's flow control took them).
    pub fn handle_control_written(&mut self, bytes: usize) {
        self.in_flight = self.in_flight.saturating_sub(bytes);
        if bytes > 0 && self.blocked.is_some() {
            // The peer reads, if slowly: the stall timeout counts from its last progress.
            self.blocked = Some(None);
        }
        self.update_blocked();
        if self.ended.is_none() && !self.read_buf.is_empty() && !self.over_queue_bound() {
            self.read_frames();
        }
        self.pump_offers();
    }

    fn read_frames(&mut self) {
        let mut start = 0;
        while self.ended.is_none() && !self.over_queue_bound() {
            match frame::parse(&self.read_buf[start..], MAX_FRAME_LEN) {
                Ok(Some((payload, used))) => {
                    let decoded = message::decode(payload);
                    start += used;
                    self.frames_parsed += 1;
                    match decoded {
                        Ok(message) => self.handle_message(message),
                        Err(e) => self.fail(CloseCode::PROTOCOL, e.to_string()),
                    }
                }
                Ok(None) => break,
                Err(e) => self.fail_frame(e),
            }
        }
        self.read_buf.drain(..start.min(self.read_buf.len()));
        self.stall = match self.stall {
            _ if self.read_buf.is_empty() => None,
            Some((frame, since)) if frame == self.frames_parsed => Some((frame, since)),
            _ => Some((self.frames_parsed, None)),
        };
        self.update_blocked();
    }

    /// The control stream ended (the peer finished it, or it was reset).
    pub fn handle_control_end(&mut self) {
        if self.ended.is_some() {
            return;
        }
        match frame::check_end(&self.read_buf, MAX_FRAME_LEN) {
            Err(e) => self.fail_frame(e),
            Ok(()) => {
                self.fail_not_peers_fault(CloseCode::PROTOCOL, CONTROL_END_WITHOUT_CLOSE.into())
            }
        }
    }

    /// A decoded control message from the peer.
    pub fn handle_message(&mut self, message: Message) {
        if self.ended.is_some() {
            return;
        }
        self.stats.messages_in += 1;
        if let Err(e) = message.check() {
            return self.fail(CloseCode::PROTOCOL, e.to_string());
        }
        if !self.is_established() {
            return match message {
                Message::Hello {
                    version,
                    dialect,
                    max_streams,
                } => self.on_hello(version, &dialect, max_streams),
                Message::Close { code, reason } => self.on_close(code, reason),
                other => self.fail(
                    CloseCode::PROTOCOL,
                    format!("expected hello, got {}", other.name()),
                ),
            };
        }
        match message {
            Message::Hello { .. } => self.fail(CloseCode::PROTOCOL, "second hello".into()),
            Message::Tag { handle, tag } => self.on_tag(handle, tag),
            Message::Offer {
                namespace,
                offer,
                feeds,
            } => self.on_offer(namespace, offer, feeds),
            Message::Answer { offer, accepted } => self.on_answer(offer, accepted),
            Message::Have { namespace, feeds } => self.on_have(namespace, feeds),
            Message::Ready => {
                if std::mem::replace(&mut self.peer_ready, true) {
                    return self.fail(CloseCode::PROTOCOL, "second ready".into());
                }
                self.maybe_settle();
                self.check_done();
            }
            Message::Settled => {
                if !self.local_ready || std::mem::replace(&mut self.peer_settled, true) {
                    return self.fail(CloseCode::PROTOCOL, "unexpected settled".into());
                }
                self.maybe_settle();
                self.check_done();
            }
            Message::Notice { feed, length } => self.on_notice(feed, length),
            Message::Synced { feed, length } => self.on_synced(feed, length),
            Message::Stopped { feed } => self.on_stopped(feed),
            Message::Close { code, reason } => self.on_close(code, reason),
        }
    }

    /// The peer opened a feed stream whose first frame is `header`. On `Ok`, attach the
    /// stream to the namespace's store; on `Err`, the session has ended.
    pub fn handle_incoming_stream(
        &mut self,
        header: FeedStreamHeader,
    ) -> Result<IncomingFeed, StreamRefused> {
        if let Some(reason) = &self.ended {
            return Err(StreamRefused(reason.clone()));
        }
        match self.take_incoming(header) {
            Ok(incoming) => Ok(incoming),
            Err((code, reason)) => {
                self.fail(code, reason);
                Err(StreamRefused(self.ended.clone().unwrap_or_else(|| {
                    EndReason {
                        code,
                        by: Side::Local,
                        reason: String::new(),
                        peer_at_fault: VIOLATIONS.contains(&code),
                    }
                })))
            }
        }
    }

    /// The first frame of a peer's feed stream could not be read.
    pub fn handle_incoming_stream_error(&mut self, error: message::CodecError) {
        match error {
            message::CodecError::Frame(e) => self.fail_frame(e),
            e => self.fail(CloseCode::PROTOCOL, format!("feed stream header: {e}")),
        }
    }

    /// A feed stream ended (finished or reset by either side, or its store detached),
    /// or could not be opened or attached. A stream that was replaced or closed by the
    /// session already is ignored. On the dialer, a feed that is not in sync both ways
    /// is reopened after [`reopen_delay`] (see the module documentation).
    pub fn handle_stream_closed(&mut self, feed: &FeedKey, stream: StreamId) {
        let Some(state) = self.feeds.get_mut(feed) else {
            return;
        };
        if state.stream == StreamState::Open && state.token == Some(stream) {
            state.stream = StreamState::Closed;
            state.token = None;
            if self.role == Role::Dialer {
                self.open_streams = self.open_streams.saturating_sub(1);
                let in_sync =
                    state.local_synced.is_some() && state.local_synced == state.remote_synced;
                if !in_sync && self.ended.is_none() && state.stopped.is_none() {
                    self.stream_ended_early(*feed);
                }
                self.pump_opens();
            }
        }
    }

    /// Time passed: fires the hello timeout, the stall timeouts (a partial frame, a
    /// peer that keeps our output blocked) and due feed stream reopens.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        if self.ended.is_some() {
            return;
        }
        if let Some(since) = self.blocked {
            let since = since.unwrap_or(now);
            self.blocked = Some(Some(since));
            if now.saturating_duration_since(since) >= self.config.stall_timeout {
                // Not misbehaviour: a slow reader is not a liar.
                return self.fail_not_peers_fault(
                    CloseCode::TIMEOUT,
                    format!(
                        "the peer read none of our {} queued control bytes for {:?}",
                        self.queued_bytes(),
                        self.config.stall_timeout
                    ),
                );
            }
        }
        // While we do not read, a partial frame is ours to wait for, not the peer's.
        if let Some((frame, since)) = self.stall.filter(|_| self.blocked.is_none()) {
            let since = since.unwrap_or(now);
            self.stall = Some((frame, Some(since)));
            if now.saturating_duration_since(since) >= self.config.stall_timeout {
                let announced = self
                    .read_buf
                    .get(..frame::PREFIX_LEN)
                    .and_then(|p| <[u8; 4]>::try_from(p).ok())
                    .map_or_else(|| "?".to_string(), |p| u32::from_be_bytes(p).to_string());
                return self.fail(
                    CloseCode::TIMEOUT,
                    format!(
                        "control frame stalled: {} of {announced} bytes in {:?}",
                        self.read_buf.len().saturating_sub(frame::PREFIX_LEN),
                        self.config.stall_timeout
                    ),
                );
            }
        }
        if let Some(deadline) = self.hello_deadline {
            if now >= deadline && !self.is_established() {
                self.hello_deadline = None;
                return self.fail(
                    CloseCode::TIMEOUT,
                    format!("no hello within {:?}", self.config.hello_timeout),
                );
            }
        }
        if !self.reopens.is_empty() {
            self.fire_reopens(now);
        }
    }

    // ---- local commands ----

    /// Registers a namespace with an optional secret. Every namespace but the public
    /// one (`""` without a secret) is matched by tags: the dialer sends its tag (once
    /// hellos are exchanged), the acceptor answers a matching tag with its own.
    /// Registering the same namespace again is a no-op.
    pub fn handle_register_namespace(
        &mut self,
        name: &str,
        secret: Option<NamespaceSecret>,
    ) -> Result<(), CommandError> {
        self.alive()?;
        if let Some(existing) = self.namespaces.get(name) {
            return if existing.secret == secret {
                Ok(())
            } else {
                Err(CommandError::NamespaceConflict(name.to_string()))
            };
        }
        let public = name.is_empty() && secret.is_none();
        let key = (!public).then(|| NamespaceKey::new(name, secret.as_ref()));
        if key.is_some() && self.namespaces.values().any(|ns| ns.key == key) {
            // One key, two namespaces: a tag could not say which.
            return Err(CommandError::NamespaceConflict(name.to_string()));
        }
        let mut handle = public.then_some(PUBLIC_HANDLE);
        if self.role == Role::Dialer && !public {
            let next = self.next_handle;
            self.next_handle = next.checked_add(1).ok_or(CommandError::NoHandleLeft)?;
            handle = Some(next);
        }
        if let Some(h) = handle {
            self.handles.insert(h, name.to_string());
        }
        self.namespaces.insert(
            name.to_string(),
            Namespace {
                secret,
                key: key.clone(),
                handle,
                peer_proven: public,
                pending_offers: Vec::new(),
                pending_have: Vec::new(),
            },
        );
        match (self.role, key) {
            (Role::Dialer, Some(key)) => {
                let tag = key.tag(&self.exporter, self.role);
                self.send(Message::Tag {
                    handle: handle.unwrap_or(PUBLIC_HANDLE),
                    tag,
                });
            }
            (Role::Acceptor, Some(key)) => {
                // A dialer tag kept from before may be for this namespace.
                let found = self
                    .unmatched_tags
                    .iter()
                    .position(|(_, tag)| key.verify(&self.exporter, Role::Dialer, tag));
                if let Some(i) = found {
                    let (h, _) = self.unmatched_tags.swap_remove(i);
                    self.match_namespace(name, h);
                }
            }
            (_, None) => {}
        }
        Ok(())
    }

    /// Stops serving a namespace on this session: the peer's offers and `Have`s under its
    /// handle are answered with nothing accepted (or ignored) from now on, what we had
    /// queued for it is dropped, and feeds already replicated in it go on. Registering
    /// it again (with another secret, say) starts over: the dialer sends a tag under a
    /// new handle; an acceptor matches only a tag the dialer sends later. Unregistering
    /// a namespace that is not registered, or the public one, is a no-op.
    pub fn handle_unregister_namespace(&mut self, name: &str) -> Result<(), CommandError> {
        self.alive()?;
        if name.is_empty() {
            return Ok(());
        }
        let Some(ns) = self.namespaces.remove(name) else {
            return Ok(());
        };
        if let Some(handle) = ns.handle {
            self.handles.remove(&handle);
            if self.role == Role::Dialer && !ns.peer_proven {
                self.retired_handles.insert(handle);
            }
        }
        Ok(())
    }

    /// Shares feeds in a namespace: offers the peer those it was not offered already and
    /// is not known to have. In a namespace not matched yet the offer waits for the match.
    /// Returns how many feeds were offered or queued.
    pub fn handle_share(
        &mut self,
        namespace: &str,
        feeds: Vec<(FeedKey, Headers)>,
    ) -> Result<usize, CommandError> {
        self.alive()?;
        if !self.namespaces.contains_key(namespace) {
            return Err(CommandError::UnknownNamespace(namespace.to_string()));
        }
        for (feed, headers) in &feeds {
            headers.check().map_err(|source| CommandError::Headers {
                feed: *feed,
                source,
            })?;
        }
        let mut new = Vec::new();
        for (key, headers) in feeds {
            if self.peer_has.contains(&key) || !self.offered.insert(key) {
                continue;
            }
            // The id is given when the offer is sent: offers waiting for a match may go
            // out after later ones, and ids must increase on the wire.
            new.push(OfferedFeed {
                id: 0,
                key,
                headers,
            });
        }
        let count = new.len();
        let ns = self
            .namespaces
            .get_mut(namespace)
            .ok_or(CommandError::Ended)?;
        match ns.handle.filter(|_| ns.peer_proven) {
            Some(handle) => self.queue_offers(handle, new),
            None => ns.pending_offers.extend(new),
        }
        Ok(count)
    }

    /// Announces feeds we hold in a namespace for all-to-all replication: by discovery
    /// key and capability, never by public key. A feed the peer announced too, with a
    /// capability that checks, is replicated without an offer.
    pub fn handle_known_feeds(
        &mut self,
        namespace: &str,
        feeds: Vec<FeedKey>,
    ) -> Result<(), CommandError> {
        self.alive()?;
        let Some(ns) = self.namespaces.get(namespace) else {
            return Err(CommandError::UnknownNamespace(namespace.to_string()));
        };
        let sendable = ns.peer_proven;
        let mut new = Vec::new();
        for key in feeds {
            let dk = key.discovery_key();
            if self.known.contains_key(&dk) {
                continue;
            }
            self.known.insert(
                dk,
                Known {
                    key,
                    namespace: namespace.to_string(),
                    announced: false,
                },
            );
            new.push(dk);
        }
        if sendable {
            self.announce(namespace, new);
        } else if let Some(ns) = self.namespaces.get_mut(namespace) {
            ns.pending_have.extend(new);
        }
        Ok(())
    }

    /// The namespace store's answer to the peer's offer: the keys it accepts, or an
    /// error, which ends the session and is sent to the peer.
    pub fn handle_offer_answer(
        &mut self,
        offer: u64,
        answer: Result<Vec<FeedKey>, String>,
    ) -> Result<(), CommandError> {
        self.alive()?;
        let Some(pending) = self.peer_offers.remove(&offer) else {
            return Err(CommandError::UnknownOffer(offer));
        };
        self.peer_offer_bytes = self.peer_offer_bytes.saturating_sub(pending.bytes);
        let accepted_keys: HashSet<FeedKey> = match answer {
            Ok(keys) => keys.into_iter().collect(),
            Err(reason) => {
                // The store's words may name the namespace: they stay here.
                debug!(offer, %reason, "store failed to answer an offer");
                self.end_with_peer_reason(
                    CloseCode::ACCEPT_FAILED,
                    format!("store refused offer {offer}: {reason}"),
                    format!("store refused offer {offer}"),
                );
                return Ok(());
            }
        };
        // Keys the peer did not offer are ignored: the answer can only name its feeds.
        let accepted: Vec<(u64, FeedKey)> = pending
            .feeds
            .into_iter()
            .filter(|(_, key)| accepted_keys.contains(key))
            .collect();
        self.send(Message::Answer {
            offer,
            accepted: accepted.iter().map(|(id, _)| *id).collect(),
        });
        let peer = self.role.peer();
        for (id, key) in accepted {
            self.replicate(key, &pending.namespace, Route::Offered { by: peer, id });
        }
        self.check_done();
        Ok(())
    }

    /// We made our initial shares and announcements; a one-shot session may end once
    /// both sides are ready and everything is in sync.
    pub fn handle_ready(&mut self) -> Result<(), CommandError> {
        self.alive()?;
        if !std::mem::replace(&mut self.local_ready, true) {
            self.send(Message::Ready);
        }
        Ok(())
    }

    /// Sends our `Settled` once every offer the peer's initial tags unlocked is out:
    /// the peer's `Ready` arrived (its tags precede it) and our share queue is empty.
    /// The dialer also waits for the acceptor's `Settled`, which follows the
    /// acceptor's answers to the dialer's tags, so the offers those answers unlocked
    /// precede the dialer's `Settled`.
    fn maybe_settle(&mut self) {
        if self.settled_sent
            || !self.peer_ready
            || !self.share_queue.is_empty()
            || !self.have_queue.is_empty()
        {
            return;
        }
        if self.role == Role::Dialer && !self.peer_settled {
            return;
        }
        self.send(Message::Settled);
        self.settled_sent = true;
    }

    /// Our store's sync of `feed` with this peer reached `length` and has nothing more
    /// to send or fetch.
    pub fn handle_feed_synced(&mut self, feed: &FeedKey, length: u64) {
        if self.ended.is_some() {
            return;
        }
        let Some(state) = self.feeds.get_mut(feed) else {
            return;
        };
        if state.local_synced == Some(length) {
            return;
        }
        state.local_synced = Some(length);
        state.early_ends = 0;
        let dk = state.discovery_key;
        self.send(Message::Synced { feed: dk, length });
        self.check_synced(feed);
    }

    /// Our copy of `feed` changed (appended, or downloaded from another peer): the feed
    /// needs a stream again. The dialer reopens it; the acceptor sends a notice, and so
    /// does either side that had reported the feed synced.
    pub fn handle_feed_updated(&mut self, feed: &FeedKey, length: u64) {
        if self.ended.is_some() {
            return;
        }
        let Some(state) = self.feeds.get_mut(feed) else {
            return;
        };
        if state.local_synced == Some(length) {
            return;
        }
        match state.stopped {
            // Stopped for the session: the peer is not told of changes either.
            Some(Stop::Fault(_)) => return,
            Some(Stop::Exhausted(_)) => state.stopped = None,
            None => {}
        }
        // A `Synced` we sent is no longer true: retract it, or the peer could close the
        // stream (or end a one-shot session) on a stale length.
        let retract = state.local_synced.take().is_some();
        state.reported = None;
        state.early_ends = 0;
        let dk = state.discovery_key;
        let closed = state.stream == StreamState::Closed;
        if retract || (self.role == Role::Acceptor && closed) {
            self.send(Message::Notice { feed: dk, length });
        }
        if self.role == Role::Dialer && closed {
            self.queue_open(*feed);
        }
    }

    /// Our store found a fault in `feed` on its stream (for a feed store: data that
    /// does not verify, a fork, an undecodable feed message). An honest relay can pass
    /// a writer's fault on, so this stops that feed on this session only, never the
    /// session and never grounds for a ban: its stream is closed (by the dialer), the
    /// peer is told with `Stopped`, [`SessionEvent::FeedStopped`] reports it, and it is
    /// never reopened on this session. A one-shot session gives it up.
    pub fn handle_feed_failed(&mut self, feed: &FeedKey, reason: &str) {
        if self.ended.is_some() {
            return;
        }
        let Some(state) = self.feeds.get(feed) else {
            debug!(feed = %feed.fmt_short(), %reason, "fault reported for a feed not replicated here");
            return;
        };
        let dk = state.discovery_key;
        if self.stop_feed(feed, Stop::Fault(format!("fault: {reason}"))) {
            self.send(Message::Stopped { feed: dk });
        }
        self.check_done();
    }

    /// A store gave up waiting for the peer on `feed`'s stream: the session ends with
    /// [`CloseCode::TIMEOUT`], which is not misbehaviour (a slow peer is not banned).
    pub fn handle_feed_stalled(&mut self, feed: &FeedKey, reason: &str) {
        self.fail(
            CloseCode::TIMEOUT,
            format!("feed {}: {reason}", feed.fmt_short()),
        );
    }

    /// A peer's feed stream did not deliver its header within the stall timeout: the
    /// session ends with [`CloseCode::TIMEOUT`] (not misbehaviour, as for a stalled
    /// control frame), which frees the stream slot it held.
    pub fn handle_stream_header_stalled(&mut self) {
        self.fail(
            CloseCode::TIMEOUT,
            format!(
                "feed stream header stalled: not complete within {:?}",
                self.config.stall_timeout
            ),
        );
    }

    /// The connection went away: closed by the peer with `code` and `reason` (an
    /// application close), or lost (`code` is `None`).
    pub fn handle_connection_lost(&mut self, code: Option<CloseCode>, mut reason: String) {
        truncate(&mut reason, MAX_REASON_LEN);
        match code {
            Some(code) => self.on_close(code, reason),
            None => self.end(
                CloseCode::CLOSED,
                format!("connection lost: {reason}"),
                Side::Remote,
                None,
                false,
            ),
        }
    }

    /// Ends the session with [`CloseCode::CLOSED`].
    pub fn handle_close(&mut self, reason: &str) {
        self.end(
            CloseCode::CLOSED,
            reason.to_string(),
            Side::Local,
            Some(reason.to_string()),
            false,
        );
    }

    // ---- outputs ----

    /// The next frame to write on the control stream. After the close message, the
    /// driver finishes the stream and closes the connection with the close code. The
    /// frame counts as queued until [`Session::handle_control_written`] reports it
    /// written.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let frame = self.outbox.pop_front()?;
        self.outbox_bytes = self.outbox_bytes.saturating_sub(frame.len());
        self.in_flight += frame.len();
        self.stats.messages_out += 1;
        self.stats.bytes_out += frame.len() as u64;
        Some(frame)
    }

    /// The next feed stream to open or close.
    pub fn poll_stream(&mut self) -> Option<StreamCommand> {
        self.streams.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When to call [`Session::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended.is_some() {
            return None;
        }
        let hello = self.hello_deadline.filter(|_| !self.is_established());
        let stall = self.stall.map(|(_, since)| match since {
            Some(since) => since + self.config.stall_timeout,
            // Unknown start: ask for a timeout call at once to learn the time.
            None => self.last_now,
        });
        let stall = stall.filter(|_| self.blocked.is_none());
        let blocked = self
            .blocked
            .map(|since| since.map_or(self.last_now, |at| at + self.config.stall_timeout));
        let reopens = self.reopens.values().map(|at| at.unwrap_or(self.last_now));
        hello
            .into_iter()
            .chain(stall)
            .chain(blocked)
            .chain(reopens)
            .min()
    }

    // ---- internals ----

    fn alive(&self) -> Result<(), CommandError> {
        if self.ended.is_some() {
            Err(CommandError::Ended)
        } else {
            Ok(())
        }
    }

    fn send(&mut self, message: Message) {
        if self.ended.is_some() {
            return;
        }
        if self.is_established() {
            self.push_frame(&message);
        } else {
            self.held.push(message);
        }
    }

    /// Encodes `message` into the outbox.
    fn push_frame(&mut self, message: &Message) {
        let mut frame = Vec::new();
        match message::encode(message, &mut frame) {
            Ok(()) => {
                self.outbox_bytes += frame.len();
                self.outbox.push_back(frame);
                self.update_blocked();
            }
            Err(e) => {
                // Every message is built within the bounds, so this is a bug of ours.
                tracing::error!(message = message.name(), error = %e, "could not encode");
                self.fail_not_peers_fault(
                    CloseCode::PROTOCOL,
                    format!("{ENCODE_FAILED} {}: {e}", message.name()),
                );
            }
        }
    }

    fn over_queue_bound(&self) -> bool {
        self.queued_bytes() >= MAX_QUEUED_CONTROL_BYTES
    }

    /// Starts or stops the blocked-output timer after the queue changed.
    fn update_blocked(&mut self) {
        let queued = self.queued_bytes() as u64;
        self.stats.peak_queued_bytes = self.stats.peak_queued_bytes.max(queued);
        match (self.over_queue_bound(), self.blocked) {
            (true, None) => self.blocked = Some(None),
            (false, Some(_)) => {
                self.blocked = None;
                // A partial frame's wait starts again now that we read again.
                self.stall = self.stall.map(|(frame, _)| (frame, None));
            }
            _ => {}
        }
    }

    fn fail(&mut self, code: CloseCode, reason: String) {
        debug!(%code, %reason, "session ends");
        let told = reason.clone();
        self.end(
            code,
            reason,
            Side::Local,
            Some(told),
            VIOLATIONS.contains(&code),
        );
    }

    /// Ends the session for a failure that is not the peer's fault (ours, or an end
    /// an honest peer can cause), whatever the code says.
    fn fail_not_peers_fault(&mut self, code: CloseCode, reason: String) {
        debug!(%code, %reason, "session ends");
        let told = reason.clone();
        self.end(code, reason, Side::Local, Some(told), false);
    }

    /// Ends the session, not for the peer's fault, telling the peer `told` rather than
    /// the local `reason` (which may name a namespace).
    fn end_with_peer_reason(&mut self, code: CloseCode, reason: String, told: String) {
        debug!(%code, %reason, "session ends");
        self.end(code, reason, Side::Local, Some(told), false);
    }

    fn fail_frame(&mut self, error: FrameError) {
        let code = match error {
            FrameError::Oversize { .. } => CloseCode::FRAME_TOO_LARGE,
            FrameError::Truncated { .. } => CloseCode::PROTOCOL,
        };
        self.fail(code, error.to_string());
    }

    /// Ends the session. `tell_peer` is the reason sent in our `Close` (none for an
    /// end the peer caused with its own close, or a lost connection): the same words as
    /// `reason`, except where those could name a namespace.
    fn end(
        &mut self,
        code: CloseCode,
        mut reason: String,
        by: Side,
        tell_peer: Option<String>,
        peer_at_fault: bool,
    ) {
        if self.ended.is_some() {
            return;
        }
        truncate(&mut reason, MAX_REASON_LEN);
        if let Some(mut told) = tell_peer {
            truncate(&mut told, MAX_REASON_LEN);
            // The close goes out even before hellos were exchanged: it is the last frame.
            self.push_frame(&Message::Close { code, reason: told });
        }
        self.held.clear();
        self.open_queue.clear();
        self.streams.clear();
        self.share_queue.clear();
        self.have_queue.clear();
        let reason = EndReason {
            code,
            by,
            reason,
            peer_at_fault,
        };
        self.ended = Some(reason.clone());
        self.events.push_back(SessionEvent::SessionEnded { reason });
    }

    fn on_close(&mut self, code: CloseCode, reason: String) {
        self.end(code, reason, Side::Remote, None, false);
    }

    fn on_hello(&mut self, version: u32, dialect: &str, max_streams: u32) {
        if version != PROTOCOL_VERSION || dialect != DIALECT {
            return self.fail(
                CloseCode::VERSION_MISMATCH,
                format!(
                    "version mismatch: we speak replic8/{PROTOCOL_VERSION} dialect {DIALECT:?}, \
                     the peer speaks replic8/{version} dialect {dialect:?}"
                ),
            );
        }
        if max_streams == 0 {
            return self.fail(CloseCode::PROTOCOL, "hello allows zero feed streams".into());
        }
        self.peer_max_streams = Some(max_streams);
        self.hello_deadline = None;
        for message in std::mem::take(&mut self.held) {
            self.push_frame(&message);
        }
        self.events.push_back(SessionEvent::Established);
        self.pump_offers();
    }

    fn on_tag(&mut self, handle: u32, tag: [u8; 32]) {
        match self.role {
            Role::Acceptor => self.on_dialer_tag(handle, tag),
            Role::Dialer => self.on_acceptor_tag(handle, tag),
        }
    }

    /// A dialer's tag: answered only if it matches one of our namespaces, so a peer
    /// that does not know the key learns nothing from us.
    fn on_dialer_tag(&mut self, handle: u32, tag: [u8; 32]) {
        if handle == PUBLIC_HANDLE {
            return self.fail(CloseCode::PROTOCOL, "tag for the public handle".into());
        }
        if self.last_peer_handle.is_some_and(|last| handle <= last) {
            return self.fail(
                CloseCode::PROTOCOL,
                format!("namespace handle {handle} does not increase"),
            );
        }
        self.last_peer_handle = Some(handle);
        // Every namespace not matched yet is checked, each in constant time.
        let found = self
            .namespaces
            .iter()
            .filter(|(_, ns)| ns.handle.is_none())
            .find(|(_, ns)| {
                ns.key
                    .as_ref()
                    .is_some_and(|key| key.verify(&self.exporter, Role::Dialer, &tag))
            })
            .map(|(name, _)| name.clone());
        match found {
            Some(name) => self.match_namespace(&name, handle),
            // Kept in case we register the namespace later; past the bound, dropped:
            // an honest dialer may be in many namespaces we are not in.
            None if self.unmatched_tags.len() < MAX_UNMATCHED_TAGS => {
                self.unmatched_tags.push((handle, tag))
            }
            None => {}
        }
    }

    /// The acceptor's answer to our tag for `handle`.
    fn on_acceptor_tag(&mut self, handle: u32, tag: [u8; 32]) {
        // The answer to a tag of a namespace we unregistered meanwhile.
        if self.retired_handles.remove(&handle) {
            return;
        }
        let ns = self
            .handles
            .get(&handle)
            .and_then(|name| self.namespaces.get(name).map(|ns| (name, ns)))
            .filter(|(_, ns)| !ns.peer_proven);
        let Some((name, ns)) = ns else {
            // An honest acceptor answers only our tags, once each.
            return self.fail(
                CloseCode::PROTOCOL,
                format!("tag for namespace handle {handle}, which awaits no answer"),
            );
        };
        let checks = ns
            .key
            .as_ref()
            .is_some_and(|key| key.verify(&self.exporter, Role::Acceptor, &tag));
        if !checks {
            // It answers only a tag of ours that matched its key, so its own checks.
            return self.fail(
                CloseCode::BAD_PROOF,
                format!("bad tag for namespace handle {handle}"),
            );
        }
        let name = name.clone();
        self.namespace_proven(&name);
    }

    /// Acceptor: the dialer's tag `handle` matched namespace `name`: answer with our tag.
    fn match_namespace(&mut self, name: &str, handle: u32) {
        let Some(ns) = self.namespaces.get_mut(name) else {
            return;
        };
        ns.handle = Some(handle);
        let tag = ns
            .key
            .as_ref()
            .map(|key| key.tag(&self.exporter, self.role));
        self.handles.insert(handle, name.to_string());
        if let Some(tag) = tag {
            self.send(Message::Tag { handle, tag });
        }
        self.namespace_proven(name);
    }

    /// The peer showed it knows `name`'s key: its shares and `have`s may go out.
    fn namespace_proven(&mut self, name: &str) {
        let Some(ns) = self.namespaces.get_mut(name) else {
            return;
        };
        ns.peer_proven = true;
        let handle = ns.handle.unwrap_or(PUBLIC_HANDLE);
        let offers = std::mem::take(&mut ns.pending_offers);
        let have = std::mem::take(&mut ns.pending_have);
        self.events.push_back(SessionEvent::NamespaceProven {
            namespace: name.to_string(),
        });
        self.queue_offers(handle, offers);
        self.announce(name, have);
    }

    fn on_offer(&mut self, handle: u32, offer: u64, feeds: Vec<OfferedFeed>) {
        // Every offer costs us an answer; an empty one would let a peer make us answer
        // without end (our sender never sends one).
        if feeds.is_empty() {
            return self.fail(CloseCode::PROTOCOL, format!("offer {offer} has no feeds"));
        }
        if self.last_peer_offer.is_some_and(|last| offer <= last) {
            return self.fail(
                CloseCode::PROTOCOL,
                format!("offer id {offer} does not increase"),
            );
        }
        self.last_peer_offer = Some(offer);
        for feed in &feeds {
            if self.last_peer_feed_id.is_some_and(|last| feed.id <= last) {
                return self.fail(
                    CloseCode::PROTOCOL,
                    format!("feed id {} in offer {offer} does not increase", feed.id),
                );
            }
            self.last_peer_feed_id = Some(feed.id);
        }
        self.stats.feeds_offered_to_us += feeds.len() as u64;
        if self.peer_offered.len() + feeds.len() > MAX_PEER_FEEDS {
            // An honest forwarding peer can get here: refuse, politely and at once,
            // without remembering the feeds.
            return self.refuse_offer(offer);
        }
        for feed in &feeds {
            if !self.peer_offered.insert(feed.key) {
                return self.fail(
                    CloseCode::PROTOCOL,
                    format!("feed {} offered twice", feed.key.fmt_short()),
                );
            }
            self.peer_has.insert(feed.key);
        }
        let usable = self
            .handles
            .get(&handle)
            .filter(|name| self.namespaces.get(*name).is_some_and(|ns| ns.peer_proven))
            .cloned();
        let Some(name) = usable else {
            // Not a namespace of ours, or one the peer did not show it knows: accept
            // nothing.
            return self.refuse_offer(offer);
        };
        if self.peer_offers.len() >= MAX_PENDING_PEER_OFFERS {
            // Our sender never has more unanswered: only a peer that breaks the rule.
            return self.fail(
                CloseCode::PROTOCOL,
                format!("more than {MAX_PENDING_PEER_OFFERS} offers wait for an answer"),
            );
        }
        let bytes = message::encoded_len(&feeds).unwrap_or(MAX_FRAME_LEN);
        if self.peer_offer_bytes + bytes > MAX_PENDING_OFFER_BYTES {
            // Over the budget of offers in our stores' hands: refused, not misbehaviour.
            debug!(
                offer,
                bytes,
                pending = self.peer_offer_bytes,
                "offer refused: pending offers over budget"
            );
            return self.refuse_offer(offer);
        }
        self.peer_offer_bytes += bytes;
        self.peer_offers.insert(
            offer,
            PeerOffer {
                namespace: name.clone(),
                feeds: feeds.iter().map(|f| (f.id, f.key)).collect(),
                bytes,
            },
        );
        self.events.push_back(SessionEvent::Offered {
            namespace: name,
            offer,
            feeds: feeds.into_iter().map(|f| (f.key, f.headers)).collect(),
        });
    }

    /// Answers `offer` at once with nothing accepted.
    fn refuse_offer(&mut self, offer: u64) {
        self.send(Message::Answer {
            offer,
            accepted: Vec::new(),
        });
    }

    fn on_answer(&mut self, offer: u64, accepted: Vec<u64>) {
        let Some(ours) = self.our_offers.remove(&offer) else {
            return self.fail(
                CloseCode::PROTOCOL,
                format!("answer to offer {offer}, which is not waiting for one"),
            );
        };
        for id in ours.feeds.keys() {
            self.our_pending_ids.remove(id);
        }
        let mut keys = Vec::with_capacity(accepted.len());
        let mut seen = HashSet::with_capacity(accepted.len());
        for id in &accepted {
            let Some(key) = ours.feeds.get(id) else {
                return self.fail(
                    CloseCode::PROTOCOL,
                    format!("answer to offer {offer} accepts feed id {id}, which it did not offer"),
                );
            };
            if !seen.insert(*id) {
                return self.fail(
                    CloseCode::PROTOCOL,
                    format!("answer to offer {offer} accepts feed id {id} twice"),
                );
            }
            keys.push(*key);
        }
        if let Some(id) = ours.early.iter().find(|id| !seen.contains(id)) {
            return self.fail(
                CloseCode::PROTOCOL,
                format!("feed id {id} was streamed but its offer's answer does not accept it"),
            );
        }
        for (id, key) in accepted.iter().zip(&keys) {
            self.peer_has.insert(*key);
            self.replicate(
                *key,
                &ours.namespace,
                Route::Offered {
                    by: self.role,
                    id: *id,
                },
            );
        }
        if !keys.is_empty() {
            self.events.push_back(SessionEvent::Accepted {
                namespace: ours.namespace,
                feeds: keys,
            });
        }
        self.pump_offers();
        self.check_done();
    }

    fn on_have(&mut self, handle: u32, feeds: Vec<KnownFeed>) {
        let usable = self
            .handles
            .get(&handle)
            .filter(|name| self.namespaces.get(*name).is_some_and(|ns| ns.peer_proven))
            .cloned();
        let Some(namespace) = usable else {
            return;
        };
        for feed in feeds {
            let dk = feed.discovery_key;
            match self.known.get(&dk) {
                Some(known) if known.namespace == namespace => {
                    if !verify_capability(
                        &known.key,
                        &self.exporter,
                        self.role.peer(),
                        &feed.capability,
                    ) {
                        return self.fail(
                            CloseCode::BAD_CAPABILITY,
                            format!("bad capability for feed {}", dk.fmt_short()),
                        );
                    }
                    if known.announced {
                        let key = known.key;
                        self.peer_has.insert(key);
                        self.replicate(key, &namespace, Route::Known);
                    } else {
                        self.unmatched_have.insert(dk, (handle, feed.capability));
                    }
                }
                _ => {
                    // Kept in case we add the feed later; past the bound, dropped: an
                    // honest peer may hold many feeds we do not.
                    if self.unmatched_have.len() < MAX_UNMATCHED_HAVE
                        || self.unmatched_have.contains_key(&dk)
                    {
                        self.unmatched_have.insert(dk, (handle, feed.capability));
                    }
                }
            }
        }
    }

    fn on_notice(&mut self, dk: DiscoveryKey, _length: u64) {
        let Some(feed) = self.by_discovery.get(&dk).copied() else {
            return self.fail(
                CloseCode::PROTOCOL,
                format!(
                    "notice for feed {}, which is not replicated",
                    dk.fmt_short()
                ),
            );
        };
        let Some(state) = self.feeds.get_mut(&feed) else {
            return;
        };
        state.remote_synced = None;
        state.reported = None;
        state.early_ends = 0;
        match state.stopped {
            Some(Stop::Fault(_)) => return,
            Some(Stop::Exhausted(_)) => state.stopped = None,
            None => {}
        }
        if self.role == Role::Dialer && state.stream == StreamState::Closed {
            self.queue_open(feed);
        }
    }

    /// The peer stopped a replicated feed for a fault it found: we stop it too.
    fn on_stopped(&mut self, dk: DiscoveryKey) {
        let Some(feed) = self.by_discovery.get(&dk).copied() else {
            return self.fail(
                CloseCode::PROTOCOL,
                format!(
                    "stopped for feed {}, which is not replicated",
                    dk.fmt_short()
                ),
            );
        };
        self.stop_feed(
            &feed,
            Stop::Fault("the peer stopped it after a fault".into()),
        );
        self.check_done();
    }

    /// Stops `feed` on this session: no reopen, its stream closed by the dialer.
    /// Returns whether it was not stopped for a fault already.
    fn stop_feed(&mut self, feed: &FeedKey, stop: Stop) -> bool {
        let Some(state) = self.feeds.get_mut(feed) else {
            return false;
        };
        if matches!(state.stopped, Some(Stop::Fault(_))) {
            return false;
        }
        let reason = match &stop {
            Stop::Exhausted(r) | Stop::Fault(r) => r.clone(),
        };
        if matches!(stop, Stop::Fault(_)) {
            self.stats.feeds_faulted += 1;
        }
        state.stopped = Some(stop);
        self.reopens.remove(feed);
        if state.stream == StreamState::Queued {
            state.stream = StreamState::Closed;
        }
        if self.role == Role::Dialer && state.stream == StreamState::Open {
            let stream = state.token.take().unwrap_or(StreamId(u64::MAX));
            state.stream = StreamState::Closed;
            self.open_streams = self.open_streams.saturating_sub(1);
            self.streams.push_back(StreamCommand::Close {
                feed: *feed,
                namespace: state.namespace.clone(),
                stream,
            });
            self.pump_opens();
        }
        debug!(feed = %feed.fmt_short(), %reason, "feed stopped");
        self.events.push_back(SessionEvent::FeedStopped {
            feed: *feed,
            reason,
        });
        true
    }

    fn on_synced(&mut self, dk: DiscoveryKey, length: u64) {
        let Some(feed) = self.by_discovery.get(&dk).copied() else {
            return self.fail(
                CloseCode::PROTOCOL,
                format!(
                    "synced for feed {}, which is not replicated",
                    dk.fmt_short()
                ),
            );
        };
        if let Some(state) = self.feeds.get_mut(&feed) {
            if state.remote_synced != Some(length) {
                state.remote_synced = Some(length);
                state.early_ends = 0;
            }
        }
        self.check_synced(&feed);
    }

    fn take_incoming(
        &mut self,
        header: FeedStreamHeader,
    ) -> Result<IncomingFeed, (CloseCode, String)> {
        if self.role == Role::Dialer {
            return Err((
                CloseCode::REFUSED_STREAM,
                "only the dialer opens feed streams".into(),
            ));
        }
        if !self.is_established() {
            return Err((CloseCode::REFUSED_STREAM, "feed stream before hello".into()));
        }
        let feed = match header {
            FeedStreamHeader::Offered { by, id } => self.incoming_offered(by, id)?,
            FeedStreamHeader::Known {
                discovery_key,
                capability,
            } => {
                let Some(known) = self.known.get(&discovery_key).filter(|k| k.announced) else {
                    return Err((
                        CloseCode::REFUSED_STREAM,
                        format!(
                            "feed stream for {}, which we did not announce",
                            discovery_key.fmt_short()
                        ),
                    ));
                };
                if !verify_capability(&known.key, &self.exporter, Role::Dialer, &capability) {
                    return Err((
                        CloseCode::BAD_CAPABILITY,
                        format!(
                            "bad capability on feed stream {}",
                            discovery_key.fmt_short()
                        ),
                    ));
                }
                let (key, namespace) = (known.key, known.namespace.clone());
                if !self
                    .namespaces
                    .get(&namespace)
                    .is_some_and(|ns| ns.peer_proven)
                {
                    return Err((
                        CloseCode::REFUSED_STREAM,
                        format!(
                            "feed stream for {} in an unproven namespace",
                            discovery_key.fmt_short()
                        ),
                    ));
                }
                self.peer_has.insert(key);
                self.replicate(key, &namespace, Route::Known);
                key
            }
        };
        let Some(state) = self.feeds.get_mut(&feed) else {
            return Err((
                CloseCode::REFUSED_STREAM,
                "feed stream for an unknown feed".into(),
            ));
        };
        // Only the dialer opens, one stream per feed at a time, and it finishes a stream
        // before it opens the next for the same feed; the new stream can still arrive
        // before we saw the old one end. It replaces it.
        let replaces = if state.stream == StreamState::Open {
            state.token
        } else {
            None
        };
        let stream = StreamId(self.next_stream);
        self.next_stream += 1;
        self.stats.streams_opened += 1;
        state.stream = StreamState::Open;
        state.token = Some(stream);
        let namespace = state.namespace.clone();
        Ok(IncomingFeed {
            feed,
            namespace,
            stream,
            replaces,
        })
    }

    /// The dialer opened a stream naming offered feed `id` of side `by`.
    fn incoming_offered(&mut self, by: Role, id: u64) -> Result<FeedKey, (CloseCode, String)> {
        if let Some(key) = self.by_offer_id.get(&(by, id)) {
            return Ok(*key);
        }
        // A feed we offered whose answer is still on its way: the stream shows the
        // dialer accepted it, and the answer must agree.
        if by == self.role {
            if let Some(offer) = self.our_pending_ids.get(&id).copied() {
                if let Some(ours) = self.our_offers.get_mut(&offer) {
                    if let Some(key) = ours.feeds.get(&id).copied() {
                        ours.early.insert(id);
                        let namespace = ours.namespace.clone();
                        self.peer_has.insert(key);
                        self.replicate(key, &namespace, Route::Offered { by, id });
                        return Ok(key);
                    }
                }
            }
        }
        Err((
            CloseCode::REFUSED_STREAM,
            format!(
                "feed stream for offered feed {} of the {}, which was not offered and accepted",
                id,
                by.name()
            ),
        ))
    }

    /// Queues feeds of a proven namespace (by its handle) to be offered.
    fn queue_offers(&mut self, handle: u32, feeds: Vec<OfferedFeed>) {
        self.share_queue
            .extend(feeds.into_iter().map(|feed| (handle, feed)));
        self.pump_offers();
    }

    /// Sends our queued `have` lists while our output is under
    /// [`MAX_QUEUED_CONTROL_BYTES`], then offers from the share queue while fewer than
    /// [`MAX_PENDING_PEER_OFFERS`]
    /// of ours wait for answers (so we never cross the peer's limit) and our output is
    /// under [`MAX_QUEUED_CONTROL_BYTES`]. Each offer takes feeds of one namespace, at
    /// most [`MAX_FEEDS_PER_MESSAGE`] and one frame.
    fn pump_offers(&mut self) {
        // Our `have` lists first, under the same bound: they are our own output too.
        while self.ended.is_none() && self.is_established() && !self.over_queue_bound() {
            let Some(&(handle, _)) = self.have_queue.front() else {
                break;
            };
            let mut feeds = Vec::new();
            while feeds.len() < MAX_FEEDS_PER_MESSAGE {
                match self.have_queue.front() {
                    Some((h, _)) if *h == handle => {}
                    _ => break,
                }
                let Some((_, entry)) = self.have_queue.pop_front() else {
                    break;
                };
                feeds.push(entry);
            }
            self.send(Message::Have {
                namespace: handle,
                feeds,
            });
        }
        while self.ended.is_none()
            && self.is_established()
            && self.our_offers.len() < MAX_PENDING_PEER_OFFERS
            && !self.over_queue_bound()
        {
            let Some(&(handle, _)) = self.share_queue.front() else {
                break;
            };
            let mut batch: Vec<OfferedFeed> = Vec::new();
            let mut size = 0;
            while let Some((h, feed)) = self.share_queue.front() {
                if *h != handle || batch.len() >= MAX_FEEDS_PER_MESSAGE {
                    break;
                }
                // Bounded by the header limits, so this cannot fail for a checked feed.
                let len = message::encoded_len(feed).unwrap_or(MAX_FRAME_LEN);
                if !batch.is_empty() && size + len > MAX_FRAME_LEN - OFFER_SLACK {
                    break;
                }
                let Some((_, mut feed)) = self.share_queue.pop_front() else {
                    break;
                };
                // The id is given when the offer is sent, so ids increase on the wire.
                feed.id = self.next_feed_id;
                self.next_feed_id += 1;
                size += len;
                batch.push(feed);
            }
            self.send_offer(handle, batch);
        }
        if self.share_queue.is_empty() && self.have_queue.is_empty() {
            self.maybe_settle();
        }
    }

    fn send_offer(&mut self, handle: u32, feeds: Vec<OfferedFeed>) {
        let offer = self.next_offer;
        self.next_offer += 1;
        for feed in &feeds {
            self.our_pending_ids.insert(feed.id, offer);
        }
        self.stats.feeds_offered += feeds.len() as u64;
        let namespace = self.handles.get(&handle).cloned().unwrap_or_default();
        self.our_offers.insert(
            offer,
            OurOffer {
                namespace,
                feeds: feeds.iter().map(|f| (f.id, f.key)).collect(),
                early: HashSet::new(),
            },
        );
        self.send(Message::Offer {
            namespace: handle,
            offer,
            feeds,
        });
    }

    fn announce(&mut self, namespace: &str, feeds: Vec<DiscoveryKey>) {
        let Some(handle) = self.namespaces.get(namespace).and_then(|ns| ns.handle) else {
            return;
        };
        let mut entries = Vec::with_capacity(feeds.len());
        let mut matched = Vec::new();
        for dk in feeds {
            let Some(known) = self.known.get_mut(&dk) else {
                continue;
            };
            known.announced = true;
            entries.push(KnownFeed {
                discovery_key: dk,
                capability: capability(&known.key, &self.exporter, self.role),
            });
            if let Some((h, cap)) = self.unmatched_have.get(&dk) {
                if *h == handle {
                    matched.push((dk, known.key, *cap));
                }
            }
        }
        self.have_queue
            .extend(entries.into_iter().map(|entry| (handle, entry)));
        self.pump_offers();
        for (dk, key, cap) in matched {
            self.unmatched_have.remove(&dk);
            if !verify_capability(&key, &self.exporter, self.role.peer(), &cap) {
                return self.fail(
                    CloseCode::BAD_CAPABILITY,
                    format!("bad capability for feed {}", dk.fmt_short()),
                );
            }
            self.peer_has.insert(key);
            self.replicate(key, namespace, Route::Known);
        }
    }

    fn replicate(&mut self, key: FeedKey, namespace: &str, route: Route) {
        // Every offer id of the feed stays valid for its stream: the two sides may have
        // learned of the feed by different routes first.
        if let Route::Offered { by, id } = route {
            self.by_offer_id.insert((by, id), key);
        }
        if self.feeds.contains_key(&key) {
            return;
        }
        let discovery_key = key.discovery_key();
        self.by_discovery.insert(discovery_key, key);
        self.stats.feeds_replicated += 1;
        self.feeds.insert(
            key,
            Replicated {
                namespace: namespace.to_string(),
                discovery_key,
                route,
                stream: StreamState::Closed,
                token: None,
                local_synced: None,
                remote_synced: None,
                reported: None,
                early_ends: 0,
                stopped: None,
            },
        );
        if self.role == Role::Dialer {
            self.queue_open(key);
        }
    }

    fn queue_open(&mut self, feed: FeedKey) {
        self.reopens.remove(&feed);
        if let Some(state) = self.feeds.get_mut(&feed) {
            if state.stream == StreamState::Closed && state.stopped.is_none() {
                state.stream = StreamState::Queued;
                self.open_queue.push_back(feed);
                self.pump_opens();
            }
        }
    }

    fn stream_limit(&self) -> usize {
        let peer = self.peer_max_streams.unwrap_or(0);
        self.config.max_streams.min(peer) as usize
    }

    fn pump_opens(&mut self) {
        if self.ended.is_some() || !self.is_established() {
            return;
        }
        while self.open_streams < self.stream_limit() {
            let Some(feed) = self.open_queue.pop_front() else {
                break;
            };
            let Some(state) = self.feeds.get_mut(&feed) else {
                continue;
            };
            if state.stream != StreamState::Queued {
                continue;
            }
            let stream = StreamId(self.next_stream);
            self.next_stream += 1;
            self.stats.streams_opened += 1;
            state.stream = StreamState::Open;
            state.token = Some(stream);
            let header = match state.route {
                Route::Offered { by, id } => FeedStreamHeader::Offered { by, id },
                Route::Known => FeedStreamHeader::Known {
                    discovery_key: state.discovery_key,
                    capability: capability(&feed, &self.exporter, self.role),
                },
            };
            let namespace = state.namespace.clone();
            self.open_streams += 1;
            self.streams.push_back(StreamCommand::Open {
                feed,
                namespace,
                header,
                stream,
            });
        }
    }

    fn check_synced(&mut self, feed: &FeedKey) {
        let Some(state) = self.feeds.get_mut(feed) else {
            return;
        };
        let (Some(local), Some(remote)) = (state.local_synced, state.remote_synced) else {
            return;
        };
        if local != remote || state.reported == Some(local) {
            return;
        }
        state.reported = Some(local);
        state.early_ends = 0;
        // In sync: a reopen waiting since an early end is not needed.
        self.reopens.remove(feed);
        self.events.push_back(SessionEvent::FeedSynced {
            feed: *feed,
            length: local,
        });
        if self.role == Role::Dialer && state.stream == StreamState::Open {
            let stream = state.token.take().unwrap_or(StreamId(u64::MAX));
            state.stream = StreamState::Closed;
            self.open_streams = self.open_streams.saturating_sub(1);
            let namespace = state.namespace.clone();
            self.streams.push_back(StreamCommand::Close {
                feed: *feed,
                namespace,
                stream,
            });
            self.pump_opens();
        }
        self.check_done();
    }

    /// The dialer's stream of `feed` ended before the feed was in sync both ways.
    fn stream_ended_early(&mut self, feed: FeedKey) {
        let Some(state) = self.feeds.get_mut(&feed) else {
            return;
        };
        state.early_ends = state.early_ends.saturating_add(1);
        let ends = state.early_ends;
        if ends > MAX_STREAM_REOPENS {
            let reason = format!("its stream ended {ends} times in a row before it was in sync");
            self.stop_feed(&feed, Stop::Exhausted(reason));
            return self.check_done();
        }
        debug!(feed = %feed.fmt_short(), ends, wait = ?reopen_delay(ends), "feed stream ended early: reopening");
        // The wait starts at the next `handle_timeout`, which `poll_timeout` asks for at once.
        self.reopens.insert(feed, None);
    }

    /// Reopens the feeds whose wait is over, and starts the waits that began since the
    /// last call.
    fn fire_reopens(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (feed, at) in &mut self.reopens {
            match at {
                None => {
                    let ends = self.feeds.get(feed).map_or(1, |s| s.early_ends);
                    *at = Some(now + reopen_delay(ends));
                }
                Some(at) if now >= *at => due.push(*feed),
                Some(_) => {}
            }
        }
        for feed in due {
            self.queue_open(feed);
        }
    }

    fn check_done(&mut self) {
        if self.config.mode != Mode::OneShot || self.ended.is_some() {
            return;
        }
        let ready = self.local_ready && self.peer_ready && self.settled_sent && self.peer_settled;
        if !ready
            || !self.our_offers.is_empty()
            || !self.peer_offers.is_empty()
            || !self.share_queue.is_empty()
            || !self.have_queue.is_empty()
        {
            return;
        }
        // A stopped feed is given up: the session ends once the others are in sync.
        let all_synced = self
            .feeds
            .values()
            .filter(|f| f.stopped.is_none())
            .all(|f| {
                f.reported.is_some()
                    && f.reported == f.local_synced
                    && f.local_synced == f.remote_synced
            });
        if !all_synced {
            return;
        }
        let mut stopped: Vec<(FeedKey, String)> = self
            .feeds
            .iter()
            .filter_map(|(key, f)| match &f.stopped {
                Some(Stop::Exhausted(r) | Stop::Fault(r)) => Some((*key, r.clone())),
                None => None,
            })
            .collect();
        stopped.sort();
        let n = self.feeds.len() - stopped.len();
        match stopped.first() {
            None => self.end(
                CloseCode::DONE,
                format!("all {n} feeds in sync both ways"),
                Side::Local,
                Some(format!("all {n} feeds in sync both ways")),
                false,
            ),
            Some((feed, reason)) => self.fail_not_peers_fault(
                CloseCode::CLOSED,
                format!(
                    "{n} feeds in sync both ways, {} given up: feed {}: {reason}",
                    stopped.len(),
                    feed.fmt_short()
                ),
            ),
        }
    }
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}
