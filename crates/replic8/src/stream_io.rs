//! The stream plumbing the session driver and the feed streams share: the task that
//! writes frames to a QUIC stream from a queue, and a sleep until an optional deadline.

use std::future::Future;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

/// A writer's queue of encoded frames: a channel, bounded or not (the control stream's
/// is bounded by the session core's queued bytes, a feed stream's by its own size).
pub(crate) trait FrameQueue: Send {
    /// The next frame; `None` once every sender is gone.
    fn next_frame(&mut self) -> impl Future<Output = Option<Bytes>> + Send;
}

impl FrameQueue for mpsc::Receiver<Bytes> {
    async fn next_frame(&mut self) -> Option<Bytes> {
        self.recv().await
    }
}

impl FrameQueue for mpsc::UnboundedReceiver<Bytes> {
    async fn next_frame(&mut self) -> Option<Bytes> {
        self.recv().await
    }
}

/// Writes the queued frames to `send` in order, each as one chunk (no copy), and calls
/// `written` with a frame's length once QUIC took it. Finishes the stream when the queue
/// closes; stops at the first write error (the stream or connection is gone).
pub(crate) async fn write_frames(
    mut send: quinn::SendStream,
    mut frames: impl FrameQueue,
    mut written: impl FnMut(usize) + Send,
) {
    while let Some(frame) = frames.next_frame().await {
        let len = frame.len();
        if send.write_chunk(frame).await.is_err() {
            return;
        }
        written(len);
    }
    let _ = send.finish();
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
