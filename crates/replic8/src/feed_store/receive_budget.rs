//! The store-wide bound on the bytes received on feed streams and not yet verified.
//!
//! Each feed stream's [`Inbox`](super::inbox::Inbox) holds what it read from QUIC until
//! the sync core has verified it, bounded per stream (`READ_QUEUE_BYTES`: room for all
//! the data an honest peer sends for our outstanding requests). Over many streams, and
//! many peers, that per-stream bound adds up: 128 streams of one connection could pin
//! 17 MiB each before any check. The budget bounds the sum over every stream of the
//! store:
//! - an inbox charges the budget with every byte it holds: the frames waiting or being
//!   verified, and the frame being gathered (bytes the peer really sent);
//! - a stream reads more only while the store holds less than the limit, except a
//!   stream that holds no whole frame: it may always read until it has one. Whole
//!   frames leave by local work alone (verification needs nothing from any peer), so a
//!   stream waiting for room always gets it, and no set of peers that stop halfway
//!   through their frames can stop the others: they go on a frame at a time;
//! - the bytes go back when the stream's step has verified them, and whatever an inbox
//!   holds goes back when it is dropped (the stream ended).
//!
//! So the store holds at most the limit plus, per stream, one frame and what one read
//! brought (at most [`READ_CHUNKS`](super::inbox::READ_CHUNKS) QUIC chunks, each about
//! a packet, and never more than the stream's QUIC window). It counts bytes received;
//! a frame being gathered has a buffer of its announced size once 16 KiB of it came.

use super::gauge::Gauge;

/// Bytes received on the store's feed streams and not yet verified, shared by every
/// stream of the store.
#[derive(Debug)]
pub(crate) struct ReceiveBudget {
    limit: usize,
    bytes: Gauge,
}

impl ReceiveBudget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        ReceiveBudget {
            limit,
            bytes: Gauge::default(),
        }
    }

    /// Whether the store holds its limit or more: only a stream holding no whole frame
    /// reads on.
    pub(crate) fn full(&self) -> bool {
        self.bytes.held() >= self.limit
    }

    /// Moves one inbox's charge from `was` to `now` bytes.
    pub(crate) fn recharge(&self, was: usize, now: usize) {
        if now > was {
            self.bytes.add(now - was);
        } else if was > now {
            self.bytes.sub(was - now);
        }
    }

    /// Bytes held now over every stream.
    pub(crate) fn held(&self) -> usize {
        self.bytes.held()
    }

    /// The most [`Self::held`] ever was.
    pub(crate) fn peak(&self) -> usize {
        self.bytes.peak()
    }
}
