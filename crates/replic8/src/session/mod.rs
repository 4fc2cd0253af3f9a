//! The session core: one per connection, no I/O.
//!
//! Inputs are `handle_*` calls: bytes that arrived on the control stream, feed streams
//! the peer opened, local commands (register or serve a namespace, share, announce known
//! feeds, a feed's sync state), the stores' answers (to an offer, to what they share and
//! hold) and the time. Outputs are `poll_*` calls: frames to write on the control stream,
//! feed streams to open or close, calls to stores, events, and the next timer. The
//! driver that runs a session over QUIC calls the `poll_*` methods after every input
//! until they return `None`.
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
//!   timeout ends with `timeout`; our own output (not answers) waits at
//!   [`MAX_PUMPED_CONTROL_BYTES`], below it, so two peers that both have much to say
//!   never both stop reading;
//! - only feeds offered and accepted, or held by both sides and proven by capability, get
//!   a stream; any other stream ends the session;
//! - header and message bounds (checked by [`crate::message`]);
//! - at most `min(ours, peer's)` feed streams open at once, opened lazily and closed
//!   once a feed is in sync both ways;
//! - a replicated feed gets a stream only if the sides differ: each side's first word on
//!   it (the signed head it holds every block of, or none) goes out in a `Heads` message
//!   after its `have` entries; the peer's heads are verified off the core in batches
//!   ([`Session::poll_verify`], [`Session::handle_heads_verified`]), a head that does not
//!   verify ends the session (`bad head`), and the dialer opens no stream for a feed
//!   whose verified heads are equal on both sides (one length, one tree hash);
//! - a small feed goes whole instead of by stream when the first words say so (the
//!   receiver's has no head and asks for it whole, the holder's has a head of at most
//!   `MAX_WHOLE_BLOCKS` blocks): the holder reads it from its store
//!   ([`StoreCall::ReadWhole`], only while its own output is under
//!   [`MAX_PUMPED_CONTROL_BYTES`]) and sends it in a `Whole` message, or a `Notice`;
//!   the receiver takes an entry only for a feed it expects whole (anything else ends
//!   the session), hands each message's entries to its store at once
//!   ([`StoreCall::WriteWhole`]) and reads no more while
//!   [`MAX_WHOLE_BYTES_AT_STORE`] wait there;
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
//! use replic8::session::{Session, SessionConfig, SessionEvent, StoreCall, StreamCommand};
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
//! for _ in 0..6 {
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
//!     // Stores say which signed heads they hold complete (none, here): each side's
//!     // first word then tells the dialer a stream is needed. (With heads, the driver
//!     // would verify the peer's from `poll_verify` and answer `handle_heads_verified`.)
//!     for s in [&mut dialer, &mut acceptor] {
//!         while let Some(call) = s.poll_store() {
//!             if let StoreCall::Heads { feeds, .. } = call {
//!                 s.handle_heads(&feeds, Ok(vec![None; feeds.len()]));
//!             }
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
//!
//! Files, one concern each (`types` and `config` use no other, `state` only `types`):
//! - `config.rs`: limits and [`SessionConfig`];
//! - `types.rs`: events, stream commands, counters, end reasons and errors;
//! - `state.rs`: the records of namespaces, offers and feeds;
//! - `control.rs`: the control stream: frames in and out, the bound on our output,
//!   hello and the timers;
//! - `namespaces.rs`: namespace registration and tags;
//! - `offers.rs`: our shares and offers, the peer's offers and answers, readiness;
//! - `have.rs`: all-to-all replication by `have` lists;
//! - `streams.rs`: feed streams: opening, taking, closing, reopening;
//! - `stores.rs`: the driver's store calls: what a served namespace's store shares and
//!   holds (our `Ready` waits for it), and the streams stores hold, detached at the end;
//! - `feeds.rs`: a replicated feed's sync state: first words and their heads, notices
//!   and faults;
//! - `whole.rs`: small feeds sent whole on the control stream (decision 210): reads,
//!   packing, writes and their answers;
//! - `end.rs`: how a session ends, and misbehaviour.

mod config;
mod control;
mod end;
mod feeds;
mod have;
mod namespaces;
mod offers;
mod state;
mod stores;
mod streams;
mod types;
mod whole;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use crate::keys::{DiscoveryKey, ExporterSecret, FeedKey, Role};
use crate::message::{KnownFeed, Message, OfferedFeed, WholeEntry, DIALECT, PROTOCOL_VERSION};
use crate::store::ArrivedWhole;
use replic8_store::SignedHead;

pub use config::{
    reopen_delay, Mode, SessionConfig, MAX_HEADS_PER_CALL, MAX_PEER_FEEDS, MAX_PENDING_OFFER_BYTES,
    MAX_PENDING_PEER_OFFERS, MAX_PUMPED_CONTROL_BYTES, MAX_QUEUED_CONTROL_BYTES, MAX_REOPEN_DELAY,
    MAX_STREAM_REOPENS, MAX_UNMATCHED_HAVE, MAX_UNMATCHED_TAGS, MAX_WHOLE_BYTES_AT_STORE,
    MAX_WHOLE_READS, MAX_WHOLE_READ_FEEDS, MAX_WHOLE_WRITES, MAX_WHOLE_WRITE_BYTES,
    MAX_WHOLE_WRITE_FEEDS,
};
use state::{Known, Namespace, OurOffer, PeerOffer, Replicated};
pub use types::{
    CommandError, EndReason, HeadCheck, IncomingFeed, SessionEvent, SessionStats, Side, StoreCall,
    StreamCommand, StreamId, StreamRefused,
};

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
    /// under [`MAX_PUMPED_CONTROL_BYTES`].
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

    /// Streams given to stores (opened by us, or taken from the peer) and not taken back,
    /// to their feed and namespace: detached when the session ends.
    attached: BTreeMap<StreamId, (FeedKey, String)>,
    /// Calls to stores for the driver to make.
    store_calls: VecDeque<StoreCall>,
    /// Replicated feeds whose store we have yet to ask how far it holds them
    /// (namespace, feed), asked in batches by [`Session::poll_store`].
    head_asks: VecDeque<(String, FeedKey)>,
    /// Replicated feeds whose first word is decided, sent once our `have` entries are
    /// out.
    first_words: VecDeque<FeedKey>,
    /// The peer's heads to verify, one batch per `Heads` message received.
    head_checks: VecDeque<HeadCheck>,
    /// Heads of feeds we expected whole that the store did not check with the feed
    /// (decision 250): checked here, in batches of up to [`MAX_HEADS_PER_MESSAGE`]
    /// ([`Session::poll_verify`]). At most one head per replicated feed.
    ///
    /// [`MAX_HEADS_PER_MESSAGE`]: crate::message::MAX_HEADS_PER_MESSAGE
    late_checks: Vec<(FeedKey, SignedHead)>,
    /// Heads given out by [`Session::poll_verify`] and not answered yet: a one-shot
    /// session is not done before every head is checked.
    heads_out: usize,
    /// Feeds the peer asked for whole, to read from our store (decision 210).
    whole_reads: VecDeque<FeedKey>,
    /// [`StoreCall::ReadWhole`] calls given out and not answered.
    whole_reads_in_flight: usize,
    /// Feeds read whole, waiting to be packed into `Whole` messages while our output is
    /// under [`MAX_PUMPED_CONTROL_BYTES`], with their encoded length and their share of
    /// the store's budget (decision 245).
    whole_ready: VecDeque<(WholeEntry, usize, crate::store::WholeHold)>,
    /// Encoded bytes of `whole_ready` (each entry's beside it).
    whole_ready_bytes: usize,
    /// Feeds the peer sent whole, one entry per `Whole` message and namespace (with
    /// what they count against [`MAX_WHOLE_BYTES_AT_STORE`]), waiting
    /// until the checks of their first-word heads are done and no write is in flight
    /// (then the ready entries of one namespace go in one call).
    whole_writes: VecDeque<(String, Vec<ArrivedWhole>, usize)>,
    /// [`StoreCall::WriteWhole`] calls given out and not answered.
    whole_writes_in_flight: usize,
    /// Bytes of feeds the peer sent whole at our store or in `whole_writes`.
    whole_bytes: usize,
    /// Feeds the peer sent whole at our store or in `whole_writes` (in
    /// [`Whole::Writing`](state::Whole::Writing)): the entry's length and bytes.
    whole_writing: HashMap<FeedKey, (u64, usize)>,
    /// Served namespaces whose store has not yet said what it shares and holds.
    store_asks: usize,
    /// [`Session::handle_ready`] was called: `Ready` goes out once `store_asks` is zero.
    ready_wanted: bool,
    /// Our `Ready` was sent.
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
            attached: BTreeMap::new(),
            store_calls: VecDeque::new(),
            head_asks: VecDeque::new(),
            first_words: VecDeque::new(),
            head_checks: VecDeque::new(),
            late_checks: Vec::new(),
            heads_out: 0,
            whole_reads: VecDeque::new(),
            whole_reads_in_flight: 0,
            whole_ready: VecDeque::new(),
            whole_ready_bytes: 0,
            whole_writes: VecDeque::new(),
            whole_writes_in_flight: 0,
            whole_bytes: 0,
            whole_writing: HashMap::new(),
            store_asks: 0,
            ready_wanted: false,
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
        stats.whole_bytes_at_store = self.whole_bytes as u64;
        stats
    }

    /// Control-stream bytes queued for the wire: not yet given out, or given out and
    /// not yet reported written.
    pub fn queued_bytes(&self) -> usize {
        self.outbox_bytes + self.in_flight
    }

    /// Whether the driver should read more of the peer's control stream: false while
    /// our queued output is at [`MAX_QUEUED_CONTROL_BYTES`] or more (the peer does not
    /// read what we send), or while feeds the peer sent whole are at our store for
    /// [`MAX_WHOLE_BYTES_AT_STORE`] or more, so QUIC flow control pushes back on the peer.
    pub fn wants_control_bytes(&self) -> bool {
        self.ended.is_none() && !self.over_queue_bound() && !self.over_whole_bound()
    }

    /// Feed streams we opened and have not closed.
    pub fn open_streams(&self) -> usize {
        self.open_streams
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    fn alive(&self) -> Result<(), CommandError> {
        if self.ended.is_some() {
            Err(CommandError::Ended)
        } else {
            Ok(())
        }
    }
}
