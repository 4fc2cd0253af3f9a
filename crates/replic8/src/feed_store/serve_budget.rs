//! The store-wide bound on the bytes of data answers in flight to peers.
//!
//! A data answer's blocks are read from storage into buffers that QUIC sends as they
//! are and holds until the peer acknowledged them. Each stream bounds its own queue,
//! but a node serving many peers holds that much per stream, plus QUIC's send buffer
//! per stream: ~2.5 MiB per served peer, 134 MiB for the swarm bench's writer serving
//! 40. The budget bounds the sum over every stream of the store, whatever the number of
//! peers, streams or keys asking:
//! - before a stream builds a data answer it reserves [`ANSWER_RESERVE`] bytes (the
//!   largest frame there is); a stream that gets none waits (first come, first
//!   served) and sends its other messages meanwhile (requests, `Have`s);
//! - once the answer is encoded, each of the frame's chunks carries its own length of
//!   the reservation and the rest goes back at once;
//! - a chunk gives its share back when its last reference is dropped: after QUIC got
//!   the peer's acknowledgement of it, or when the stream or connection is gone.
//!
//! [`ServeBudget::held`] counts the bytes of the charged chunks alive, independently of
//! the reservations, so what the bound promises can be observed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What one data answer reserves before its blocks are read: the largest frame a stream
/// sends (a longer message is refused before it is framed).
pub(crate) const ANSWER_RESERVE: usize = super::MIN_SERVE_BYTES_IN_FLIGHT;

/// Bytes of data answers the streams of one store may hold at once (see the module
/// docs). Shared by every stream of the store.
#[derive(Debug)]
pub(crate) struct ServeBudget {
    permits: Arc<Semaphore>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    held: AtomicUsize,
    peak: AtomicUsize,
}

/// Room for one data answer, taken before its blocks are read.
#[derive(Debug)]
pub(crate) struct Reservation(OwnedSemaphorePermit);

/// A wait for a [`Reservation`] that keeps its place in the queue while the stream
/// handles other input.
pub(crate) type Reserving = Pin<Box<dyn Future<Output = Reservation> + Send>>;

impl ServeBudget {
    /// A budget of `limit` bytes, at least one [`ANSWER_RESERVE`] (below it no answer
    /// could ever be sent).
    pub(crate) fn new(limit: usize) -> Self {
        let limit = limit.clamp(ANSWER_RESERVE, Semaphore::MAX_PERMITS);
        ServeBudget {
            permits: Arc::new(Semaphore::new(limit)),
            counts: Arc::default(),
        }
    }

    /// A reservation if one is free now.
    pub(crate) fn try_reserve(&self) -> Option<Reservation> {
        self.permits
            .clone()
            .try_acquire_many_owned(reserve_permits())
            .ok()
            .map(Reservation)
    }

    /// Waits for a reservation, behind the streams that asked before.
    pub(crate) fn reserve(&self) -> Reserving {
        let permits = self.permits.clone();
        Box::pin(async move {
            match permits.acquire_many_owned(reserve_permits()).await {
                Ok(permit) => Reservation(permit),
                // The semaphore is never closed.
                Err(_) => std::future::pending().await,
            }
        })
    }

    /// `frame` (one encoded data answer), each chunk holding its length of
    /// `reservation` until it is dropped; the rest of the reservation is given back.
    pub(crate) fn charge(&self, reservation: Reservation, frame: Vec<Bytes>) -> Vec<Bytes> {
        let Reservation(mut permit) = reservation;
        frame
            .into_iter()
            .map(|bytes| {
                let len = bytes.len();
                // A frame is at most `ANSWER_RESERVE` bytes, so every split succeeds.
                let permit = permit.split(len);
                let now = self.counts.held.fetch_add(len, Ordering::Relaxed) + len;
                self.counts.peak.fetch_max(now, Ordering::Relaxed);
                Bytes::from_owner(Charged {
                    bytes,
                    _permit: permit,
                    counts: self.counts.clone(),
                })
            })
            .collect()
    }

    /// Bytes of charged chunks alive now (queued, or in QUIC's send buffer).
    pub(crate) fn held(&self) -> usize {
        self.counts.held.load(Ordering::Relaxed)
    }

    /// The most [`Self::held`] ever was.
    pub(crate) fn peak(&self) -> usize {
        self.counts.peak.load(Ordering::Relaxed)
    }

    /// Bytes free now (the bound, with nothing reserved).
    #[cfg(test)]
    fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

fn reserve_permits() -> u32 {
    // About 1.06 MiB: well within a u32.
    u32::try_from(ANSWER_RESERVE).unwrap_or(u32::MAX)
}

/// The owner of one charged chunk: gives its bytes back to the budget when dropped.
struct Charged {
    bytes: Bytes,
    _permit: Option<OwnedSemaphorePermit>,
    counts: Arc<Counts>,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.counts
            .held
            .fetch_sub(self.bytes.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charged_frame_holds_its_bytes_until_its_chunks_are_dropped() {
        let budget = ServeBudget::new(2 * ANSWER_RESERVE);
        let a = budget.try_reserve().unwrap();
        let b = budget.try_reserve().unwrap();
        assert!(budget.try_reserve().is_none(), "two answers fill it");
        let frame = budget.charge(
            a,
            vec![Bytes::from(vec![1u8; 1000]), Bytes::from(vec![2u8; 24])],
        );
        assert_eq!(budget.held(), 1024);
        assert_eq!(&frame[1][..], &[2u8; 24]);
        // The rest of `a`'s reservation came back: not a whole answer while `b` is out.
        assert!(budget.try_reserve().is_none());
        drop(b);
        let c = budget.try_reserve().expect("b's room came back");
        assert!(budget.try_reserve().is_none());
        let tail = frame[0].slice(500..);
        drop(frame);
        assert_eq!(budget.held(), 1000, "a slice still holds its chunk");
        drop(tail);
        drop(c);
        assert_eq!((budget.held(), budget.peak()), (0, 1024));
        assert!(budget.try_reserve().is_some() && budget.try_reserve().is_some());
    }

    #[test]
    fn a_budget_below_one_answer_still_sends_one() {
        let budget = ServeBudget::new(0);
        assert_eq!(budget.available(), ANSWER_RESERVE);
        assert!(budget.try_reserve().is_some());
    }
}
