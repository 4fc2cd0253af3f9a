//! One feed stream: a [`FeedSync`] core for one (feed, peer), driven over a QUIC stream.
//!
//! Two tokio tasks per stream: the driver, which owns the core, reads the stream and cuts
//! it into frames (bounded by [`replic8_store::MAX_MESSAGE_SIZE`]); and a writer that
//! writes the frames it is given, from a queue bounded in frames and bytes (aborted
//! when the driver ends, after a detached stream's queue had
//! [`super::FeedStoreLimits::flush_timeout`] to leave; the driver itself is aborted when
//! its handle in the store is dropped). Every call into the core (verifying, hashing,
//! storage) runs on tokio's blocking pool with the feed's mutex held, never on the
//! task's thread; the core is moved into the blocking call and back. While a step runs
//! there, the driver goes on reading: frames wait in its inbox, bounded in frames and
//! bytes (those being verified count too), and past the bound it stops reading, so a
//! slow verifier pushes back on the peer through QUIC flow control. The next step takes
//! every frame that waits (up to [`BATCH`]), so a verifier that falls behind catches up
//! in fewer, larger steps. Each frame is judged from its first bytes (see [`Inbox`]):
//! an answer must have a request of ours waiting ([`Unanswered`], counted here as each
//! request leaves), anything but data must be small; and a frame the peer leaves
//! unfinished while we read, for the sync core's request timeout, ends the stream as
//! an unanswered request does.
//! The driver asks the core for messages only while the writer holds less than
//! [`MAX_QUEUED_BYTES`], so what waits to be sent stays bounded; within a batch it asks
//! after every frame, so the requests freed by one verified answer leave before the
//! rest of the batch is verified and the peer always has the full window to serve.
//! Before it builds a data answer it also takes room in the store's
//! [`ServeBudget`](super::serve_budget) (the bytes of answers in flight over all
//! streams); without room it waits for some, sending its other messages meanwhile.
//! A stream that holds bytes of that budget and whose peer took none of them for
//! [`super::FeedStoreLimits::serve_stall`] is ended and its send half reset, so QUIC
//! drops what it holds of it at once (the peer stopped reading); the peer's
//! [`super::MAX_SERVE_STALLS`]th such end in a row ends its session too.
//!
//! Bytes are copied as little as the layers allow: a frame is encoded once, in place
//! after room for its prefix, into a buffer from the store's [`BufferPool`] and handed
//! to QUIC as [`Bytes`] (no copy), except a data message's large blocks, which storage
//! read into pooled buffers and which go to QUIC as they are, between the bytes that
//! frame them (one frame, several chunks). On receipt a frame inside one QUIC chunk is a
//! slice of it, and one that straddles chunks is gathered once into a pooled buffer of
//! its announced size (checked against [`MAX_MESSAGE_SIZE`] first); the core verifies
//! and stores a data message's blocks from that frame. Pooled buffers return to the
//! pool when the last slice of them is dropped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use bincode::Options;
use bytes::Bytes;
use replic8_store::storage::FeedStorage;
use replic8_store::{FeedSync, SignedHead, SyncConfig, SyncError, MAX_MESSAGE_SIZE};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use super::inbox::{held_bytes, Inbox, Unanswered, READ_CHUNKS};
use super::pool::BufferPool;
use super::serve_budget::{Reservation, Reserving, ServeShare, StreamHold};
use super::{FeedEntry, Shared};
use crate::frame;
use crate::keys::{FeedKey, PeerKey};
use crate::message::CloseCode;
use crate::session::StreamId;
use crate::store::{FeedFailed, FeedStalled, FeedStream, FeedSynced, FeedUpdated, StreamEnded};
use crate::stream_io::{sleep_until, write_frames_or_reset};

/// Most encoded bytes waiting for the writer before the core is asked for more. Two
/// data messages at the core's default `max_data_bytes`: enough to keep the stream busy.
pub(crate) const MAX_QUEUED_BYTES: usize = 2 << 20;
/// The application code of a feed stream's reset after a serve stall: `timeout`, as
/// the session's close code for a peer that is slow, not at fault.
const SERVE_STALL_RESET: quinn::VarInt = quinn::VarInt::from_u32(CloseCode::TIMEOUT.0);
/// Frames the writer may hold. With [`MAX_QUEUED_BYTES`] it bounds the queue in both
/// frames and bytes; the core is asked for more only while both have room, so the
/// queue never refuses a frame. Requests are ~50 bytes: 1024 of them fill a window of
/// requests many times over.
const WRITE_QUEUE: usize = 1024;

/// Who the stream is with, and where its reports go.
#[derive(Debug, Clone)]
pub(crate) struct StreamContext {
    pub(crate) feed: FeedKey,
    pub(crate) peer: PeerKey,
    pub(crate) id: StreamId,
    pub(crate) config: SyncConfig,
    /// The peer's head the session verified in its first words (see [`Attach`]).
    ///
    /// [`Attach`]: crate::store::Attach
    pub(crate) verified_head: Option<SignedHead>,
}

enum Input {
    Start,
    Frames(Vec<Bytes>),
    Update,
    Timeout,
    Transmit,
    /// Room in the serve budget for the data answer the core has next.
    Reserved(Reservation),
}

/// What one blocking call produced.
#[derive(Default)]
struct Step {
    /// The core may have more to send: ask again when the writer has room.
    more: bool,
    /// The core has a data answer to send: ask again with room in the serve budget.
    budget: bool,
    /// The core is synced and the feed holds every block to this length.
    synced: Option<u64>,
    /// The feed's length moved to this.
    length_moved: Option<u64>,
    /// The feed state version this call published, if it published one.
    published: Option<u64>,
    /// The longest signed length the peer announced in this call.
    peer_length: Option<u64>,
    blocks_in: u64,
    bytes_in: u64,
    blocks_out: u64,
    bytes_out: u64,
    deadline: Option<Instant>,
    error: Option<SyncError>,
}

/// Why the stream ended.
enum End {
    Detached,
    PeerFinished,
    /// The peer broke the sync protocol: the session ends and the peer is banned.
    Failed(String),
    /// The peer left a request or a frame unfinished too long: the session ends, no ban.
    Stalled(String),
    /// The peer stopped reading our answers: the stream held this many bytes of the
    /// serve budget without progress for the stall bound. Only the stream ends.
    ServeStalled(usize),
    Local(String),
}

/// Runs the stream until it ends, is detached (`stop`), or fails.
pub(crate) async fn run<F: FeedStorage>(
    entry: Arc<FeedEntry<F>>,
    stream: FeedStream,
    ctx: StreamContext,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let FeedStream { send, mut recv } = stream;
    let queued = Arc::new(AtomicUsize::new(0));
    let room = Arc::new(Notify::new());
    let (write_tx, write_rx) = mpsc::channel::<Vec<Bytes>>(WRITE_QUEUE);
    let guard = shared.task_guard();
    let hold = StreamHold::new();
    // Told only on a serve stall: the stream is reset, so QUIC drops its copies at once.
    let (reset, reset_rx) = oneshot::channel();
    let (q, r, h) = (queued.clone(), room.clone(), hold.clone());
    // Aborted when dropped: a stream that ends, is detached or replaced frees its queue.
    let mut writer = AbortOnDropHandle::new(tokio::spawn(async move {
        let _guard = guard;
        let written = move |len| {
            q.fetch_sub(len, Ordering::Relaxed);
            r.notify_one();
            // QUIC took a frame: within the peer's window, so the peer reads.
            h.progressed();
        };
        write_frames_or_reset(send, write_rx, written, reset_rx).await;
    }));
    let unanswered = Arc::new(Unanswered::default());
    let outbox = Outbox {
        tx: write_tx,
        queued,
        pool: shared.pool.clone(),
        budget: shared.serve.share(ctx.peer),
        hold,
        unanswered: unanswered.clone(),
    };
    let stall = shared.serve.stall();
    let mut updates = entry.state.subscribe();
    updates.borrow_and_update();

    let mut inbox = Inbox::new(
        shared.pool.clone(),
        shared.receive.share(ctx.peer),
        unanswered,
    );
    // A frame the peer began and left unfinished while we were reading, for as long as
    // a request may wait for its answer, ends the stream as an unanswered request does:
    // the frames cut when its clock started, and when that was.
    let frame_timeout = ctx.config.request_timeout;
    let mut frame_clock: Option<(u64, Instant)> = None;
    let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
    let mut core = Some(Box::new(
        FeedSync::new(ctx.config.clone()).with_verified_head(ctx.verified_head),
    ));
    let mut input = Some(Input::Start);
    // The step on the blocking pool, and the bytes of the frames it verifies.
    let mut running: Option<(StepHandle, usize)> = None;
    let mut more = false;
    // The wait for room in the serve budget, kept across inputs (its place in line).
    let mut reserving: Option<Reserving> = None;
    let mut deadline: Option<Instant> = None;
    let mut reported: Option<u64> = None;
    let end = loop {
        if running.is_none() {
            if let Some(e) = inbox.bad.take() {
                break End::Failed(e.to_string());
            }
            let next = input.take().or_else(|| inbox.batch().map(Input::Frames));
            match next {
                Some(next) => {
                    let Some(c) = core.take() else {
                        break End::Local("sync core lost".into());
                    };
                    let held = match &next {
                        Input::Frames(frames) => frames.iter().map(held_bytes).sum(),
                        _ => 0,
                    };
                    running = Some((start_step(&entry, c, next, &outbox), held));
                }
                None if inbox.finished => break End::PeerFinished,
                None => {}
            }
        }
        let idle = running.is_none();
        frame_clock = match frame_clock {
            _ if !inbox.has_room() || inbox.partial.is_empty() => None,
            Some((cut, since)) if cut == inbox.cut_count => Some((cut, since)),
            _ => Some((inbox.cut_count, Instant::now())),
        };
        let wake = tokio::select! {
            biased;
            _ = &mut stop, if idle => Wake::Stop,
            done = join_step(&mut running) => Wake::Stepped(done),
            () = inbox.read(&mut recv, &mut chunks), if inbox.has_room() => Wake::Read,
            changed = updates.changed(), if idle => match changed {
                Ok(()) => Wake::Input(Input::Update),
                Err(_) => Wake::FeedClosed,
            },
            () = room.notified(), if idle && more => Wake::Input(Input::Transmit),
            r = async {
                match reserving.as_mut() {
                    Some(wait) => wait.await,
                    None => std::future::pending().await,
                }
            }, if idle && reserving.is_some() => {
                reserving = None;
                Wake::Input(Input::Reserved(r))
            }
            () = sleep_until(deadline), if idle => Wake::Input(Input::Timeout),
            () = outbox.hold.stalled(stall), if idle => Wake::ServeStalled,
            () = sleep_until(frame_clock.map(|(_, since)| since + frame_timeout)),
                if idle && frame_clock.is_some() => Wake::FrameStalled,
        };
        let (done, held) = match wake {
            Wake::Stop => break End::Detached,
            Wake::FeedClosed => break End::Local("feed closed".into()),
            Wake::ServeStalled => break End::ServeStalled(outbox.hold.held()),
            Wake::FrameStalled => {
                break End::Stalled(format!(
                    "sent {} bytes of a frame and not the rest for {frame_timeout:?}",
                    inbox.partial.len()
                ))
            }
            Wake::Input(i) => {
                input = Some(i);
                continue;
            }
            Wake::Read => continue,
            Wake::Stepped(done) => match running.take() {
                Some((_, held)) => (done, held),
                None => break End::Local("sync step lost".into()),
            },
        };
        // The verified frames' bytes leave the read budgets: reading resumes.
        inbox.release(held);
        let (c, step) = match done {
            Ok(done) => done,
            Err(e) => break End::Local(format!("sync worker failed: {e}")),
        };
        core = Some(c);
        report_step(&step, &ctx, &shared);
        if let Some(version) = step.published {
            // Our own change needs no feed update from us; a later one of others does.
            if updates.borrow().version == version {
                updates.borrow_and_update();
            }
        }
        more = step.more;
        match (step.budget, reserving.is_some()) {
            (true, false) => reserving = Some(outbox.budget.reserve()),
            (false, true) => reserving = None,
            _ => {}
        }
        deadline = step.deadline;
        // Blocks of earlier messages in a failed batch verified and stay: tell sessions.
        if let Some(length) = step.length_moved {
            shared.sessions.do_send(FeedUpdated {
                feed: ctx.feed,
                length,
            });
        }
        if let Some(error) = step.error {
            break match error {
                SyncError::Storage(e) => End::Local(format!("storage: {e}")),
                e @ SyncError::Timeout { .. } => End::Stalled(e.to_string()),
                other => End::Failed(other.to_string()),
            };
        }
        if let Some(length) = step.synced {
            if reported != Some(length) {
                reported = Some(length);
                // The event first: whoever sees the session end has seen it.
                shared.event(super::FeedStoreEvent::FeedSynced {
                    feed: ctx.feed,
                    peer: ctx.peer,
                    length,
                });
                shared.sessions.do_send(FeedSynced {
                    feed: ctx.feed,
                    peer: ctx.peer,
                    length,
                });
            }
        }
    };

    // A peer that stopped reading may also withhold its acknowledgements: a finished
    // stream's data would stay in QUIC until the connection ends. Reset before the
    // queue closes below, so the writer cannot finish the stream first.
    if matches!(end, End::ServeStalled(_)) {
        let _ = reset.send(SERVE_STALL_RESET);
    }
    // Give back what the core was fetching, and wake the feed's other cores. (The loop
    // ends only between steps: the core is here.)
    if let Some(mut c) = core.take() {
        let entry = entry.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut feed = entry.lock();
            c.close(&mut feed);
            entry.publish(&feed);
        })
        .await;
    }
    // Our receiving half goes first: QUIC tells the peer to stop sending; what the
    // inbox still holds goes back to the store's receive budget.
    drop(recv);
    drop(inbox);
    drop(outbox);
    match &end {
        End::ServeStalled(held) => {
            debug!(feed = %ctx.feed.fmt_short(), peer = %ctx.peer.fmt_short(), held, ?stall, "peer stopped reading our answers: stream reset");
            // The writer resets the stream as soon as it runs; the queue and the frame
            // being written go with it (or with the abort, if it never runs).
            let _ = tokio::time::timeout(shared.flush_timeout, &mut writer).await;
            writer.abort();
            shared.stats.serve_stalls.fetch_add(1, Ordering::Relaxed);
            let (stalls, ends_session) = shared
                .strikes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(ctx.peer, Instant::now());
            shared.event(super::FeedStoreEvent::ServeStalled {
                feed: ctx.feed,
                peer: ctx.peer,
                held: u64::try_from(*held).unwrap_or(u64::MAX),
                stall,
                stalls,
                ends_session,
            });
            if ends_session {
                // It keeps reopening streams it does not read: slow, not provably at
                // fault, so `timeout` and no ban (decision 226).
                shared
                    .stats
                    .serve_stall_session_ends
                    .fetch_add(1, Ordering::Relaxed);
                shared.sessions.do_send(FeedStalled {
                    feed: ctx.feed,
                    peer: ctx.peer,
                    reason: format!("stopped reading our answers {stalls} times in a row"),
                });
            }
        }
        End::Failed(reason) | End::Stalled(reason) => {
            let stalled = matches!(end, End::Stalled(_));
            debug!(feed = %ctx.feed.fmt_short(), peer = %ctx.peer.fmt_short(), %reason, stalled, "peer broke or stalled the feed sync");
            writer.abort();
            shared.stats.streams_failed.fetch_add(1, Ordering::Relaxed);
            shared.event(super::FeedStoreEvent::SyncFailed {
                feed: ctx.feed,
                peer: ctx.peer,
                reason: reason.clone(),
            });
            let (feed, peer, reason) = (ctx.feed, ctx.peer, reason.clone());
            if stalled {
                shared.sessions.do_send(FeedStalled { feed, peer, reason });
            } else {
                shared.sessions.do_send(FeedFailed { feed, peer, reason });
            }
        }
        End::Local(reason) => {
            debug!(feed = %ctx.feed.fmt_short(), %reason, "feed stream given up");
            writer.abort();
        }
        // The writer finishes our half once it has written what is queued; a peer that
        // does not read it within the flush timeout loses it (dropping aborts).
        End::Detached | End::PeerFinished => {
            let _ = tokio::time::timeout(shared.flush_timeout, &mut writer).await;
        }
    }
    if !matches!(end, End::Detached) {
        shared.sessions.do_send(StreamEnded {
            feed: ctx.feed,
            peer: ctx.peer,
            id: ctx.id,
        });
    }
    drop(writer);
    shared.stream_done(ctx.peer, ctx.id);
}

/// What woke the driver.
enum Wake {
    Stop,
    Stepped(Result<(Box<FeedSync>, Step), tokio::task::JoinError>),
    /// A frame was cut, or reading stopped (budget, end, bad frame).
    Read,
    Input(Input),
    FeedClosed,
    /// The peer took none of the serve budget's bytes this stream holds for the bound.
    ServeStalled,
    /// The peer left a frame unfinished for the request timeout while we read.
    FrameStalled,
}

/// A step running on the blocking pool; it gives the core back with what it produced.
type StepHandle = tokio::task::JoinHandle<(Box<FeedSync>, Step)>;

/// Runs one input through the core on the blocking pool.
fn start_step<F: FeedStorage>(
    entry: &Arc<FeedEntry<F>>,
    mut core: Box<FeedSync>,
    input: Input,
    outbox: &Outbox,
) -> StepHandle {
    let e = entry.clone();
    let o = outbox.clone();
    tokio::task::spawn_blocking(move || {
        let step = step(&e, &mut core, input, &o);
        (core, step)
    })
}

/// The running step's result once it is done; pending forever without one.
async fn join_step(
    running: &mut Option<(StepHandle, usize)>,
) -> Result<(Box<FeedSync>, Step), tokio::task::JoinError> {
    match running {
        Some((handle, _)) => handle.await,
        None => std::future::pending().await,
    }
}

/// Counts one step's progress and reports it.
fn report_step(step: &Step, ctx: &StreamContext, shared: &Shared) {
    let s = &shared.stats;
    s.blocks_in.fetch_add(step.blocks_in, Ordering::Relaxed);
    s.bytes_in.fetch_add(step.bytes_in, Ordering::Relaxed);
    s.blocks_out.fetch_add(step.blocks_out, Ordering::Relaxed);
    s.bytes_out.fetch_add(step.bytes_out, Ordering::Relaxed);
    if let Some(length) = step.peer_length {
        shared.event(super::FeedStoreEvent::PeerHead {
            feed: ctx.feed,
            peer: ctx.peer,
            length,
        });
    }
    if step.blocks_in > 0 {
        shared.event(super::FeedStoreEvent::Downloaded {
            feed: ctx.feed,
            peer: ctx.peer,
            blocks: step.blocks_in,
            bytes: step.bytes_in,
        });
    }
}

/// Where a stream's frames go: the writer task's queue, and the bytes waiting in it.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Vec<Bytes>>,
    queued: Arc<AtomicUsize>,
    pool: Arc<BufferPool>,
    budget: ServeShare,
    /// What this stream's data answers hold of the budget.
    hold: Arc<StreamHold>,
    /// Requests sent and not yet answered, which the inbox checks answers against.
    unanswered: Arc<Unanswered>,
}

impl Outbox {
    /// Room for one more frame, in bytes and in frames (one driver pushes, so room seen
    /// here is still there at the push).
    fn has_room(&self) -> bool {
        self.queued.load(Ordering::Relaxed) < MAX_QUEUED_BYTES && self.tx.capacity() > 0
    }

    fn push(&self, frame: Vec<Bytes>) {
        let len = frame.iter().map(Bytes::len).sum();
        // A gone writer means the stream is ending; the driver learns it elsewhere. A
        // full queue cannot happen after `has_room`; the frame would be lost and the
        // peer's core would time out on it, which ends only this stream.
        if self.tx.try_send(frame).is_ok() {
            self.queued.fetch_add(len, Ordering::Relaxed);
        }
    }
}

/// Why [`transmit`] stopped.
#[derive(PartialEq, Eq)]
enum Stopped {
    /// The core has nothing more to send now.
    Done,
    /// The writer's queue is full: ask again when it drains.
    Room,
    /// The next message is a data answer and the serve budget is spent: ask again with
    /// a reservation.
    Budget,
}

/// Sends what the core has while the writer has room, a data answer only with room in
/// the serve budget (`reserved`, or taken here).
fn transmit<F: FeedStorage>(
    core: &mut FeedSync,
    feed: &mut replic8_store::Feed<F>,
    outbox: &Outbox,
    reserved: &mut Option<Reservation>,
) -> Result<Stopped, SyncError> {
    // A data answer's blocks are read into pooled buffers, which come back to the pool
    // once QUIC has sent them (`encode_frame` hands them over as they are). Storage
    // overwrites every byte of a block it reads (or fails the read): the buffers come
    // as they were left, not zeroed again.
    let mut buffer = |len| outbox.pool.take_to_overwrite(len);
    while outbox.has_room() {
        let reservation = if core.serves_data_next() {
            match reserved.take().or_else(|| outbox.budget.try_reserve()) {
                Some(r) => Some(r),
                None => return Ok(Stopped::Budget),
            }
        } else {
            None
        };
        match core.poll_transmit_into(feed, &mut buffer)? {
            Some(message) => {
                if matches!(message, replic8_store::Message::Request(_)) {
                    // Counted before it can leave: its answer never comes first.
                    outbox.unanswered.asked();
                }
                let frame = encode_frame(&outbox.pool, message).map_err(|e| {
                    SyncError::Storage(replic8_store::storage::StorageError::Corrupt(e))
                })?;
                outbox.push(match reservation {
                    Some(r) => outbox.budget.charge(r, frame, &outbox.hold),
                    None => frame,
                });
            }
            None => return Ok(Stopped::Done),
        }
    }
    Ok(Stopped::Room)
}

/// The blocking part: feed the input to the core, sending what it has to send after
/// each frame (so new requests leave while the rest of a batch is being verified, and
/// the peer never waits on a whole batch).
fn step<F: FeedStorage>(
    entry: &FeedEntry<F>,
    core: &mut FeedSync,
    input: Input,
    outbox: &Outbox,
) -> Step {
    let mut out = Step::default();
    let mut feed = entry.lock();
    let before = (feed.length(), feed.stored_count());
    let stats_before = core.stats();
    let now = Instant::now();
    let mut reserved = None;
    let result = match input {
        Input::Start => {
            core.handle_start(&mut feed, now);
            Ok(())
        }
        Input::Frames(frames) => frames.iter().try_for_each(|f| {
            core.handle_bytes(&mut feed, f, now)?;
            transmit(core, &mut feed, outbox, &mut reserved).map(|_| ())
        }),
        Input::Update => {
            core.handle_feed_update(&mut feed, now);
            Ok(())
        }
        Input::Timeout => core.handle_timeout(now),
        Input::Transmit => Ok(()),
        Input::Reserved(r) => {
            reserved = Some(r);
            Ok(())
        }
    };
    match result.and_then(|()| transmit(core, &mut feed, outbox, &mut reserved)) {
        Ok(stopped) => {
            out.more = stopped == Stopped::Room;
            out.budget = stopped == Stopped::Budget;
        }
        Err(e) => out.error = Some(e),
    }
    // Progress is counted from the core's stats below; sync state from `is_synced`;
    // of the events only the peer's head is reported (who has the feed, how far).
    while let Some(event) = core.poll_event() {
        if let replic8_store::SyncEvent::PeerHead { length } = event {
            out.peer_length = out.peer_length.max(Some(length));
        }
    }
    let stats = core.stats();
    out.blocks_in = stats.blocks_in - stats_before.blocks_in;
    out.bytes_in = stats.bytes_in - stats_before.bytes_in;
    out.blocks_out = stats.blocks_out - stats_before.blocks_out;
    out.bytes_out = stats.bytes_out - stats_before.bytes_out;
    let after = (feed.length(), feed.stored_count());
    if after != before {
        out.published = Some(entry.publish(&feed));
        if after.0 != before.0 {
            out.length_moved = Some(after.0);
        }
    }
    if out.error.is_none() && core.is_synced() && after.1 == after.0 {
        out.synced = Some(after.0);
    }
    out.deadline = core.poll_timeout();
    out
}

/// One frame, as the chunks QUIC is handed. The payload is encoded after room for the
/// prefix into one pooled buffer, except a data message's blocks of at least
/// [`SEND_IN_PLACE`] bytes: those go as the buffers storage read them into, and the
/// buffer holds only the bytes around them (the message's header, each block's length).
fn encode_frame(
    pool: &Arc<BufferPool>,
    message: replic8_store::Message,
) -> Result<Vec<Bytes>, String> {
    let len = replic8_store::message::encoded_len(&message).map_err(|e| e.to_string())?;
    let prefix = u32::try_from(len)
        .ok()
        .filter(|_| len <= MAX_MESSAGE_SIZE)
        .ok_or_else(|| format!("message of {len} bytes is over the frame limit"))?;
    let in_place: Vec<&[u8]> = match &message {
        replic8_store::Message::Data(data) => data
            .blocks
            .iter()
            .map(|b| b.as_slice())
            .filter(|b| b.len() >= SEND_IN_PLACE)
            .collect(),
        _ => Vec::new(),
    };
    let kept: usize = in_place.iter().map(|b| b.len()).sum();
    let mut gather = Gather {
        in_place: &in_place,
        glue: pool.take(frame::PREFIX_LEN + len - kept),
        cuts: Vec::with_capacity(in_place.len()),
    };
    gather.glue.extend_from_slice(&prefix.to_be_bytes());
    replic8_store::message::options()
        .serialize_into(&mut gather, &message)
        .map_err(|e| e.to_string())?;
    let Gather { glue, cuts, .. } = gather;
    if cuts.len() != in_place.len() {
        // The encoder wrote a block in pieces (not as one slice of it): send it whole.
        let mut framed = glue;
        framed.truncate(frame::PREFIX_LEN);
        replic8_store::encode_into(&message, &mut framed).map_err(|e| e.to_string())?;
        return Ok(vec![pool.freeze(framed)]);
    }
    let glue = pool.freeze(glue);
    let replic8_store::Message::Data(data) = message else {
        return Ok(vec![glue]);
    };
    let blocks = data
        .blocks
        .into_iter()
        .map(|b| b.into_vec())
        .filter(|b| b.len() >= SEND_IN_PLACE);
    let mut chunks = Vec::with_capacity(2 * cuts.len() + 1);
    let mut from = 0;
    for (at, block) in cuts.into_iter().zip(blocks) {
        if at > from {
            chunks.push(glue.slice(from..at));
        }
        chunks.push(pool.freeze(block));
        from = at;
    }
    if from < glue.len() {
        chunks.push(glue.slice(from..));
    }
    Ok(chunks)
}

/// Blocks at least this large go to QUIC as storage read them rather than copied into
/// the frame: below it, the copy costs less than QUIC's bookkeeping of one more chunk.
const SEND_IN_PLACE: usize = 4 * 1024;

/// The writer a message is encoded through when blocks stay out of the frame's buffer:
/// bytes go into `glue`, except each of `in_place`, recognised by address (the encoder
/// writes a block's bytes with one call, on the block itself), whose place in `glue` is
/// noted in `cuts` instead.
struct Gather<'a> {
    in_place: &'a [&'a [u8]],
    glue: Vec<u8>,
    cuts: Vec<usize>,
}

impl std::io::Write for Gather<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.in_place.get(self.cuts.len()) {
            Some(block) if std::ptr::eq(*block, buf) => self.cuts.push(self.glue.len()),
            _ => self.glue.extend_from_slice(buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counts one live stream task (driver or writer) until dropped: dropped when
/// the task ends, and when it is aborted.
#[derive(Debug)]
pub(crate) struct TaskGuard(Arc<AtomicU64>);

impl TaskGuard {
    pub(crate) fn new(count: Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        TaskGuard(count)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
