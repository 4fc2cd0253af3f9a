//! What a feed stream reads: frames cut from QUIC's chunks and held, bounded, until
//! the sync core has verified them (the [`Inbox`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use replic8_store::message::{check_leading, DecodeError, Leading};
use replic8_store::MAX_MESSAGE_SIZE;

use super::pool::BufferPool;
use super::receive_budget::ReceiveShare;
use crate::frame::{self, FrameError};

/// Frames read and not yet verified before the driver stops reading (QUIC then stops
/// the peer).
pub(super) const READ_QUEUE: usize = 64;
/// Most bytes of received frames a stream holds before they are verified (waiting, or in
/// the batch being verified); past it the driver stops reading and QUIC stops the peer
/// (it may pass the bound by the frames one read completes). An honest peer sends at
/// most what our core asked for, 16 requests
/// ([`SyncConfig::max_outstanding`](replic8_store::SyncConfig::max_outstanding)) of at
/// most 1 MiB (`max_data_bytes`): this
/// never slows it, and caps what any peer pins per stream (64 frames of up to
/// [`MAX_MESSAGE_SIZE`] each before).
pub(super) const READ_QUEUE_BYTES: usize = 17 << 20;
/// Most frames handled in one blocking call.
pub(super) const BATCH: usize = 64;
/// Chunks taken from the stream per read: each is what one QUIC packet carried (about
/// 1.4 KB), and each read takes the connection's lock once, so a frame of 1 MiB is
/// ~25 reads instead of ~750 when the reader is behind.
pub(super) const READ_CHUNKS: usize = 32;

/// Why the frames of a feed stream cannot be read on: the peer broke the protocol.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum InboxError {
    /// The bytes do not form frames (a prefix over the limit, or the stream ended
    /// inside a frame).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame's first byte names no message, or a message that is never this long.
    #[error("frame of {len} bytes: {error}")]
    Leading {
        /// The frame's announced length.
        len: usize,
        /// What its first byte and length broke.
        error: DecodeError,
    },
    /// A `Data` or `NoData` frame began when every request we sent was answered.
    #[error("an answer to no request ({asked} sent on this stream, all answered)")]
    Unrequested {
        /// Requests we sent on the stream.
        asked: u64,
    },
}

/// The requests this side sent on a stream and the answers the peer began (`Data` or
/// `NoData`, exactly one per request): the sending half counts a request before it
/// leaves, the inbox an answer from its first byte, so a peer is never owed less than
/// it may send.
#[derive(Debug, Default)]
pub(super) struct Unanswered {
    owed: AtomicUsize,
    asked: AtomicU64,
}

impl Unanswered {
    /// A request is about to be sent.
    pub(super) fn asked(&self) {
        self.asked.fetch_add(1, Ordering::Relaxed);
        self.owed.fetch_add(1, Ordering::Release);
    }

    /// An answer began: false if none was owed.
    fn answered(&self) -> bool {
        self.owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// The frames read from the stream and not yet verified, and the one being read.
///
/// The driver reads while the frames held (waiting here, or in the batch being
/// verified) are under [`READ_QUEUE_BYTES`] and [`READ_QUEUE`], and while the store's
/// receive budget and the peer's share of it have room ([`ReceiveShare`]) or this
/// stream holds no whole frame; past that it stops reading and QUIC stops the peer.
/// Every byte held, the frame being gathered included, is charged to the budget and
/// the share until it is verified or the inbox is dropped. A frame inside one QUIC
/// chunk is kept as a slice of it (no copy); one that straddles chunks is gathered into
/// a buffer allocated once at the frame's announced size (checked against the limit
/// first), from the pool (decision 269: hashing the pieces in place saves nothing).
///
/// Every frame is also checked from its first five bytes, before the rest arrives
/// ([`check_leading`]): a frame over [`MAX_SMALL_MESSAGE_SIZE`] must be a data message,
/// and an answer must have a request of ours waiting for it ([`Unanswered`]). So a peer
/// that stops inside a frame is inside an answer we asked for (which the sync core's
/// request timeout ends) or inside at most 32 KiB.
///
/// [`MAX_SMALL_MESSAGE_SIZE`]: replic8_store::MAX_SMALL_MESSAGE_SIZE
pub(super) struct Inbox {
    pub(super) frames: std::collections::VecDeque<Bytes>,
    /// Bytes of the frames held, waiting or being verified (see [`held_bytes`]).
    pub(super) held: usize,
    /// The store's bound over every stream's inbox, and this peer's share of it.
    budget: ReceiveShare,
    /// What this inbox has charged to `budget`: `held` and the partial frame's bytes,
    /// as of the last read or release.
    charged: usize,
    /// The frame being gathered.
    pub(super) partial: Vec<u8>,
    /// Whether the frame being gathered passed [`check_leading`] (its first bytes came).
    leading_checked: bool,
    /// What the peer owes this stream.
    unanswered: Arc<Unanswered>,
    /// Frames cut so far: a frame that stays partial keeps this still.
    pub(super) cut_count: u64,
    pub(super) pool: Arc<BufferPool>,
    /// The peer broke the protocol: the stream fails once the running step is done.
    pub(super) bad: Option<InboxError>,
    /// Nothing more to read: the peer finished its half, or the stream is gone.
    pub(super) finished: bool,
}

impl Inbox {
    pub(super) fn new(
        pool: Arc<BufferPool>,
        budget: ReceiveShare,
        unanswered: Arc<Unanswered>,
    ) -> Self {
        Inbox {
            frames: std::collections::VecDeque::new(),
            held: 0,
            budget,
            charged: 0,
            partial: Vec::new(),
            leading_checked: false,
            unanswered,
            cut_count: 0,
            pool,
            bad: None,
            finished: false,
        }
    }

    /// Whether to read more: within the stream's bound, the store's and its peer's (or
    /// holding no whole frame), and the stream still has bytes to give.
    pub(super) fn has_room(&self) -> bool {
        !self.finished
            && self.bad.is_none()
            && self.held < READ_QUEUE_BYTES
            && self.frames.len() < READ_QUEUE
            && (self.held == 0 || !self.budget.full())
    }

    /// The step that verified `bytes` of held frames is done: they leave every budget.
    pub(super) fn release(&mut self, bytes: usize) {
        self.held -= bytes;
        self.recharge();
    }

    /// Brings the store's budget and the peer's share up to what this inbox holds now.
    fn recharge(&mut self) {
        let now = self.held + self.partial.len();
        self.budget.recharge(self.charged, now);
        self.charged = now;
    }

    /// Reads the stream until a frame is whole or a new one has begun (the driver times
    /// a frame in progress), or until reading must stop (the budget is full, the stream
    /// ended or broke the protocol), so the driver wakes about once per frame rather
    /// than per QUIC packet. Cancel-safe: what was read is in the inbox.
    pub(super) async fn read(&mut self, recv: &mut quinn::RecvStream, chunks: &mut [Bytes]) {
        let waiting = self.frames.len();
        let in_frame = !self.partial.is_empty();
        while self.has_room()
            && self.frames.len() == waiting
            && (in_frame || self.partial.is_empty())
        {
            let read = recv.read_chunks(chunks).await;
            self.take_read(read, chunks);
        }
    }

    /// Takes what one read of the stream gave: `n` chunks in `chunks`, the end of the
    /// stream, or its failure (reset by the peer, or the connection is gone: it just
    /// ends).
    pub(super) fn take_read(
        &mut self,
        read: Result<Option<usize>, quinn::ReadError>,
        chunks: &mut [Bytes],
    ) {
        match read {
            Ok(Some(n)) => {
                for chunk in &mut chunks[..n] {
                    if let Err(e) = self.cut(std::mem::take(chunk)) {
                        self.bad = Some(e);
                        break;
                    }
                }
            }
            Ok(None) => {
                self.finished = true;
                if let Err(e) = frame::check_end(&self.partial, MAX_MESSAGE_SIZE) {
                    self.bad = Some(e.into());
                }
            }
            Err(_) => self.finished = true,
        }
        self.recharge();
    }

    /// Cuts the frames of one chunk as QUIC gave it.
    fn cut(&mut self, mut data: Bytes) -> Result<(), InboxError> {
        while !data.is_empty() {
            if !self.leading_checked {
                self.check_leading(&data)?;
            }
            if let Some(frame) = next_frame(&mut data, &mut self.partial, &self.pool)? {
                self.leading_checked = false;
                self.cut_count += 1;
                self.held += held_bytes(&frame);
                self.frames.push_back(frame);
            }
        }
        Ok(())
    }

    /// Checks the frame being read from its prefix and first payload byte, once they
    /// are here (in `partial`, which then holds fewer than five bytes, and `data`).
    fn check_leading(&mut self, data: &[u8]) -> Result<(), InboxError> {
        let mut leading = [0u8; frame::PREFIX_LEN + 1];
        let have = self.partial.len().min(leading.len());
        let take = (leading.len() - have).min(data.len());
        leading[..have].copy_from_slice(&self.partial[..have]);
        leading[have..have + take].copy_from_slice(&data[..take]);
        let Some(total) = frame::announced(&leading[..have + take], MAX_MESSAGE_SIZE)? else {
            return Ok(());
        };
        let len = total - frame::PREFIX_LEN;
        if len > 0 {
            if have + take < leading.len() {
                return Ok(());
            }
            let kind = check_leading(leading[frame::PREFIX_LEN], len)
                .map_err(|error| InboxError::Leading { len, error })?;
            if kind == Leading::Answer && !self.unanswered.answered() {
                return Err(InboxError::Unrequested {
                    asked: self.unanswered.asked.load(Ordering::Relaxed),
                });
            }
        }
        self.leading_checked = true;
        Ok(())
    }

    /// Bytes held by every stream of this stream's peer.
    #[cfg(test)]
    pub(super) fn budget_peer_held(&self) -> usize {
        self.budget.peer_held()
    }

    /// The frames waiting, up to [`BATCH`] of them, for one step.
    pub(super) fn batch(&mut self) -> Option<Vec<Bytes>> {
        if self.frames.is_empty() {
            return None;
        }
        let n = self.frames.len().min(BATCH);
        Some(self.frames.drain(..n).collect())
    }
}

impl Drop for Inbox {
    /// The stream ended: what it held goes back to the store.
    fn drop(&mut self) {
        self.budget.recharge(self.charged, 0);
    }
}

/// What a received frame counts against the read budget: its payload and its prefix
/// (so that empty frames count too).
pub(super) fn held_bytes(frame: &Bytes) -> usize {
    frame.len() + frame::PREFIX_LEN
}

/// How much of a frame must have arrived before a buffer of its announced size is
/// reserved: a bare 4-byte prefix does not pin a megabyte (a peer that stalls inside a
/// frame holds at most this much per stream beyond what it really sent). Costs one copy
/// of this many bytes per large frame that arrives in small chunks.
pub(super) const RESERVE_AFTER: usize = 16 * 1024;

/// Consumes bytes of `data` (a chunk as QUIC gave it) into the frame being read; the
/// payload once a frame is whole (call again while `data` is not empty).
pub(super) fn next_frame(
    data: &mut Bytes,
    partial: &mut Vec<u8>,
    pool: &Arc<BufferPool>,
) -> Result<Option<Bytes>, FrameError> {
    if partial.is_empty() {
        cut_whole(data, partial, pool)
    } else {
        fill_partial(data, partial, pool)
    }
}

/// Takes the frame at the start of `data` if it is whole there (a slice, no copy);
/// otherwise moves the rest of `data` into `partial`.
fn cut_whole(
    data: &mut Bytes,
    partial: &mut Vec<u8>,
    pool: &BufferPool,
) -> Result<Option<Bytes>, FrameError> {
    match frame::check(data, MAX_MESSAGE_SIZE)? {
        Some(total) => {
            let payload = data.slice(frame::PREFIX_LEN..total);
            data.advance(total);
            Ok(Some(payload))
        }
        None => {
            if let Some(total) = frame::announced(data, MAX_MESSAGE_SIZE)? {
                *partial = if data.len() >= total.min(RESERVE_AFTER) {
                    pool.take(total)
                } else {
                    Vec::with_capacity(total.min(RESERVE_AFTER))
                };
            }
            partial.extend_from_slice(data);
            data.clear();
            Ok(None)
        }
    }
}

/// Moves bytes of `data` into the frame gathered in `partial`, up to its end; returns
/// the payload once it is whole.
fn fill_partial(
    data: &mut Bytes,
    partial: &mut Vec<u8>,
    pool: &Arc<BufferPool>,
) -> Result<Option<Bytes>, FrameError> {
    if partial.len() < frame::PREFIX_LEN {
        let take = (frame::PREFIX_LEN - partial.len()).min(data.len());
        partial.extend_from_slice(&data[..take]);
        data.advance(take);
    }
    let Some(total) = frame::announced(partial, MAX_MESSAGE_SIZE)? else {
        return Ok(None);
    };
    if partial.capacity() < total && partial.len() + data.len() >= total.min(RESERVE_AFTER) {
        // Enough of the frame is here (or the prefix arrived in pieces): move what is
        // there into a buffer of the frame's size.
        let mut whole = pool.take(total);
        whole.extend_from_slice(partial);
        *partial = whole;
    }
    let take = (total - partial.len()).min(data.len());
    partial.extend_from_slice(&data[..take]);
    data.advance(take);
    if partial.len() < total {
        return Ok(None);
    }
    let mut whole = pool.freeze(std::mem::take(partial));
    whole.advance(frame::PREFIX_LEN);
    Ok(Some(whole))
}
