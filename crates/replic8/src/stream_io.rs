//! The stream plumbing the session driver and the feed streams share: the task that
//! writes frames to a QUIC stream from a queue (and, for a feed stream, resets it when
//! told), and a sleep until an optional deadline.

use std::future::Future;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// One encoded frame as QUIC takes it: one chunk, or several written back to back (a
/// data message's blocks as storage read them, between the bytes that frame them).
pub(crate) trait OutFrame: Send {
    /// Bytes in the frame.
    fn len(&self) -> usize;
    /// The frame's chunks, in order.
    fn chunks(&mut self) -> &mut [Bytes];
}

impl OutFrame for Bytes {
    fn len(&self) -> usize {
        Bytes::len(self)
    }

    fn chunks(&mut self) -> &mut [Bytes] {
        std::slice::from_mut(self)
    }
}

impl OutFrame for Vec<Bytes> {
    fn len(&self) -> usize {
        self.iter().map(Bytes::len).sum()
    }

    fn chunks(&mut self) -> &mut [Bytes] {
        self
    }
}

/// A writer's queue of encoded frames: a channel, bounded or not (the control stream's
/// is bounded by the session core's queued bytes, a feed stream's by its own size).
pub(crate) trait FrameQueue: Send {
    /// What the queue holds.
    type Frame: OutFrame;
    /// The next frame; `None` once every sender is gone.
    fn next_frame(&mut self) -> impl Future<Output = Option<Self::Frame>> + Send;
}

impl<T: OutFrame> FrameQueue for mpsc::Receiver<T> {
    type Frame = T;

    async fn next_frame(&mut self) -> Option<T> {
        self.recv().await
    }
}

impl<T: OutFrame> FrameQueue for mpsc::UnboundedReceiver<T> {
    type Frame = T;

    async fn next_frame(&mut self) -> Option<T> {
        self.recv().await
    }
}

/// Writes the queued frames to `send` in order, their chunks as they are (no copy), and
/// calls `written` with a frame's length once QUIC took it. Finishes the stream when the
/// queue closes; stops at the first write error (the stream or connection is gone).
pub(crate) async fn write_frames(
    mut send: quinn::SendStream,
    frames: impl FrameQueue,
    written: impl FnMut(usize) + Send,
) {
    if write_queue(&mut send, frames, written).await {
        let _ = send.finish();
    }
}

/// [`write_frames`], unless `reset` gives a code first: then the stream is reset with
/// it instead, wherever the writing was. A reset stream's data, sent or not, is dropped
/// by QUIC at once (a finished one is kept until the peer acknowledged all of it).
pub(crate) async fn write_frames_or_reset(
    mut send: quinn::SendStream,
    frames: impl FrameQueue,
    written: impl FnMut(usize) + Send,
    reset: oneshot::Receiver<quinn::VarInt>,
) {
    tokio::select! {
        biased;
        // A dropped sender is no reset: the branch is then off and writing goes on.
        Ok(code) = reset => {
            let _ = send.reset(code);
        }
        done = write_queue(&mut send, frames, written) => {
            if done {
                let _ = send.finish();
            }
        }
    }
}

/// Writes the queued frames until the queue closes (`true`) or a write fails (`false`).
async fn write_queue(
    send: &mut quinn::SendStream,
    mut frames: impl FrameQueue,
    mut written: impl FnMut(usize) + Send,
) -> bool {
    while let Some(mut frame) = frames.next_frame().await {
        let len = frame.len();
        if send.write_all_chunks(frame.chunks()).await.is_err() {
            return false;
        }
        written(len);
    }
    true
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
