//! What a feed stream reads: frames cut from QUIC's chunks and held, bounded, until
//! the sync core has verified them (the [`Inbox`]).

use std::sync::Arc;

use bytes::{Buf, Bytes};
use replic8_store::MAX_MESSAGE_SIZE;

use super::pool::BufferPool;
use super::receive_budget::ReceiveBudget;
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

/// The frames read from the stream and not yet verified, and the one being read.
///
/// The driver reads while the frames held (waiting here, or in the batch being
/// verified) are under [`READ_QUEUE_BYTES`] and [`READ_QUEUE`], and while the store's
/// [`ReceiveBudget`] has room or this stream holds no whole frame; past that it stops
/// reading and QUIC stops the peer. Every byte held, the frame being gathered
/// included, is charged to the store's budget until it is verified or the inbox is
/// dropped. A frame inside one QUIC chunk is kept as a slice of
/// it (no copy); one that straddles chunks is gathered into a buffer allocated once at
/// the frame's announced size (checked against the limit first), from the pool.
pub(super) struct Inbox {
    pub(super) frames: std::collections::VecDeque<Bytes>,
    /// Bytes of the frames held, waiting or being verified (see [`held_bytes`]).
    pub(super) held: usize,
    /// The store's bound over every stream's inbox.
    budget: Arc<ReceiveBudget>,
    /// What this inbox has charged to `budget`: `held` and the partial frame's bytes,
    /// as of the last read or release.
    charged: usize,
    /// The frame being gathered.
    pub(super) partial: Vec<u8>,
    pub(super) pool: Arc<BufferPool>,
    /// The peer broke the framing: the stream fails once the running step is done.
    pub(super) bad: Option<FrameError>,
    /// Nothing more to read: the peer finished its half, or the stream is gone.
    pub(super) finished: bool,
}

impl Inbox {
    pub(super) fn new(pool: Arc<BufferPool>, budget: Arc<ReceiveBudget>) -> Self {
        Inbox {
            frames: std::collections::VecDeque::new(),
            held: 0,
            budget,
            charged: 0,
            partial: Vec::new(),
            pool,
            bad: None,
            finished: false,
        }
    }

    /// Whether to read more: within the stream's bound and the store's (or holding no
    /// whole frame), and the stream still has bytes to give.
    pub(super) fn has_room(&self) -> bool {
        !self.finished
            && self.bad.is_none()
            && self.held < READ_QUEUE_BYTES
            && self.frames.len() < READ_QUEUE
            && (self.held == 0 || !self.budget.full())
    }

    /// The step that verified `bytes` of held frames is done: they leave both budgets.
    pub(super) fn release(&mut self, bytes: usize) {
        self.held -= bytes;
        self.recharge();
    }

    /// Brings the store's budget up to what this inbox holds now.
    fn recharge(&mut self) {
        let now = self.held + self.partial.len();
        self.budget.recharge(self.charged, now);
        self.charged = now;
    }

    /// Reads the stream until a frame is whole, or until reading must stop (the budget
    /// is full, the stream ended or broke its framing), so the driver wakes per frame
    /// rather than per QUIC packet. Cancel-safe: what was read is in the inbox.
    pub(super) async fn read(&mut self, recv: &mut quinn::RecvStream, chunks: &mut [Bytes]) {
        let waiting = self.frames.len();
        while self.has_room() && self.frames.len() == waiting {
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
                    self.bad = Some(e);
                }
            }
            Err(_) => self.finished = true,
        }
        self.recharge();
    }

    /// Cuts the frames of one chunk as QUIC gave it.
    fn cut(&mut self, mut data: Bytes) -> Result<(), FrameError> {
        while !data.is_empty() {
            if let Some(frame) = next_frame(&mut data, &mut self.partial, &self.pool)? {
                self.held += held_bytes(&frame);
                self.frames.push_back(frame);
            }
        }
        Ok(())
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
