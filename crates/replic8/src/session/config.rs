//! The session's limits and settings: bounds on what a peer can make us hold, the
//! feed stream reopen schedule, and [`SessionConfig`].

use std::time::Duration;

use crate::frame::MAX_FRAME_LEN;

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
/// answers to offers already in their hands (see `SessionStats::queued_bytes`).
///
/// Two frames' worth, so that our own output alone never reaches it: `have` lists,
/// first words and offers go out only while the queue is under [`MAX_PUMPED_CONTROL_BYTES`]
/// (one frame), and one message adds at most a frame. Were our own output to stop our
/// reading, two peers with much to say (100,000 feeds each) would both stop reading
/// with their queues full and wait for each other until the stall timeout, forever.
pub const MAX_QUEUED_CONTROL_BYTES: usize = 2 * MAX_FRAME_LEN;
/// Our own control output (`have` lists, first words, offers) is queued only while what
/// is queued is under this: one frame's worth keeps the stream busy, and stays a frame
/// below [`MAX_QUEUED_CONTROL_BYTES`], so only answers to the peer stop our reading.
pub const MAX_PUMPED_CONTROL_BYTES: usize = MAX_FRAME_LEN;
/// Most feeds in one [`StoreCall::Heads`](super::StoreCall::Heads): a store answers a
/// batch on its blocking pool, and a session start with 100,000 feeds makes 25 calls.
pub const MAX_HEADS_PER_CALL: usize = 4096;
/// Most feeds in one [`StoreCall::ReadWhole`](super::StoreCall::ReadWhole): with
/// [`MAX_WHOLE_READS`] calls in flight, a session has at most 128 feeds at its store to
/// read, at most 8 MiB (`MAX_WHOLE_FEED_BYTES` each) and 128 KiB for feeds of one
/// 1 KiB block; 100,000 small feeds take about 1,600 calls, each one storage read.
pub const MAX_WHOLE_READ_FEEDS: usize = 64;
/// Most [`StoreCall::ReadWhole`](super::StoreCall::ReadWhole) calls of a session in
/// flight at once: two, so the store reads the next batch while the last is packed and
/// sent. Reads are made only while our control output is under
/// [`MAX_PUMPED_CONTROL_BYTES`] and less than a frame of read feeds waits to be sent.
pub const MAX_WHOLE_READS: usize = 2;
/// Most bytes of feeds the peer sent whole (blocks and heads) at our store or waiting
/// for it: at this we read no more of the peer's control stream until the store
/// answers, so QUIC flow control slows the sender. Four frames: the store writes each
/// call in one transaction and the `Whole` messages that arrive meanwhile wait in
/// memory for the next, at most this plus one frame per session.
pub const MAX_WHOLE_BYTES_AT_STORE: usize = 4 * MAX_FRAME_LEN;
/// Most [`StoreCall::WriteWhole`](super::StoreCall::WriteWhole) calls of a session in
/// flight at once: two. A store writes a call in one durable commit; the `Whole`
/// messages that arrive while calls are written go together in the next call (one
/// commit, one fsync, for up to [`MAX_WHOLE_WRITE_FEEDS`] feeds rather than one per
/// message of about 64). Two rather than one so that the store checks one call's heads
/// and blocks while it commits the other: at 100,000 feeds of `bench many-feeds` the
/// receiver took 7.7–9.7 s with two against 10.1–12.1 s with one (decision 251).
pub const MAX_WHOLE_WRITES: usize = 2;
/// Most bytes of feeds (as counted against [`MAX_WHOLE_BYTES_AT_STORE`]) in one
/// [`StoreCall::WriteWhole`](super::StoreCall::WriteWhole) made of several `Whole`
/// messages: half the bound, so that while a call is written the next one's messages
/// are still read (the write and the peer's sending overlap) rather than the bound
/// stopping our reading until the call is answered.
pub const MAX_WHOLE_WRITE_BYTES: usize = MAX_WHOLE_BYTES_AT_STORE / 2;
/// Most feeds in one [`StoreCall::WriteWhole`](super::StoreCall::WriteWhole) made of
/// several `Whole` messages (one message alone may bring up to
/// [`MAX_WHOLE_PER_MESSAGE`](crate::message::MAX_WHOLE_PER_MESSAGE)): a store verifies
/// and writes a call on one thread of its blocking pool.
pub const MAX_WHOLE_WRITE_FEEDS: usize = 4096;
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
    /// The first [`StreamId`](super::StreamId) this session gives. Stores name a feed stream by (peer,
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
