//! The store-wide bound on the bytes received on feed streams and not yet verified, and
//! each peer's share of it.
//!
//! Each feed stream's [`Inbox`](super::inbox::Inbox) holds what it read from QUIC until
//! the sync core has verified it, bounded per stream (`READ_QUEUE_BYTES`: room for all
//! the data an honest peer sends for our outstanding requests). Over many streams, and
//! many peers, that per-stream bound adds up: 128 streams of one connection could pin
//! 17 MiB each before any check. The budget bounds the sum over every stream of the
//! store, and over the streams of each peer:
//! - an inbox charges the budget and its peer's share with every byte it holds: the
//!   frames waiting or being verified, and the frame being gathered (bytes the peer
//!   really sent);
//! - a stream reads more only while the store holds less than its limit and the
//!   stream's peer less than its share, except a stream that holds no whole frame: it
//!   may always read until it has one. Whole frames leave by local work alone
//!   (verification needs nothing from any peer), so a stream waiting for room always
//!   gets it, and no set of peers that stop halfway through their frames can stop the
//!   others: they go on a frame at a time;
//! - the bytes go back when the stream's step has verified them, and whatever an inbox
//!   holds goes back when it is dropped (the stream ended).
//!
//! So the store holds at most the limit plus, per stream, one frame and what one read
//! brought (at most [`READ_CHUNKS`](super::inbox::READ_CHUNKS) QUIC chunks, each about
//! a packet, and never more than the stream's QUIC window), and a peer its share plus
//! the same per stream of its own: one peer cannot take the whole budget and leave the
//! others a frame at a time. It counts bytes received; a frame being gathered has a
//! buffer of its announced size once 16 KiB of it came.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::gauge::Gauge;
use super::peer_table::PeerTable;
use crate::keys::PeerKey;

/// Bytes received on the store's feed streams and not yet verified, shared by every
/// stream of the store.
#[derive(Debug)]
pub(crate) struct ReceiveBudget {
    limit: usize,
    per_peer: usize,
    bytes: Gauge,
    /// The most one peer held at once.
    peer_peak: AtomicUsize,
    /// What each peer with a live stream holds.
    peers: PeerTable<AtomicUsize>,
}

/// One stream's way into the budget: the store's count and its peer's.
#[derive(Debug)]
pub(crate) struct ReceiveShare {
    budget: Arc<ReceiveBudget>,
    peer: Arc<AtomicUsize>,
}

impl ReceiveBudget {
    /// A budget of `limit` bytes over the store, and of `per_peer` over each peer.
    pub(crate) fn new(limit: usize, per_peer: usize) -> Arc<Self> {
        Arc::new(ReceiveBudget {
            limit,
            per_peer,
            bytes: Gauge::default(),
            peer_peak: AtomicUsize::new(0),
            peers: PeerTable::default(),
        })
    }

    /// The share of a new stream of `peer`: its streams count together while any lives.
    pub(crate) fn share(self: &Arc<Self>, peer: PeerKey) -> ReceiveShare {
        ReceiveShare {
            budget: self.clone(),
            peer: self.peers.get(peer, AtomicUsize::default),
        }
    }

    /// Whether the store holds its limit or more: only a stream holding no whole frame
    /// reads on.
    pub(crate) fn full(&self) -> bool {
        self.bytes.held() >= self.limit
    }

    /// Bytes held now over every stream.
    pub(crate) fn held(&self) -> usize {
        self.bytes.held()
    }

    /// The most [`Self::held`] ever was.
    pub(crate) fn peak(&self) -> usize {
        self.bytes.peak()
    }

    /// The most one peer's streams ever held at once.
    pub(crate) fn peer_peak(&self) -> usize {
        self.peer_peak.load(Ordering::Relaxed)
    }

    /// Peers with a stream alive.
    #[cfg(test)]
    pub(crate) fn peers(&self) -> usize {
        self.peers.live()
    }
}

impl ReceiveShare {
    /// Whether the store holds its limit, or this stream's peer its share, or more:
    /// only a stream holding no whole frame reads on.
    pub(crate) fn full(&self) -> bool {
        self.budget.full() || self.peer.load(Ordering::Relaxed) >= self.budget.per_peer
    }

    /// Moves one inbox's charge from `was` to `now` bytes, in the store and its peer.
    pub(crate) fn recharge(&self, was: usize, now: usize) {
        if now > was {
            self.budget.bytes.add(now - was);
            let held = self.peer.fetch_add(now - was, Ordering::Relaxed) + now - was;
            self.budget.peer_peak.fetch_max(held, Ordering::Relaxed);
        } else if was > now {
            self.budget.bytes.sub(was - now);
            self.peer.fetch_sub(was - now, Ordering::Relaxed);
        }
    }

    /// Bytes the streams of this stream's peer hold now.
    #[cfg(test)]
    pub(crate) fn peer_held(&self) -> usize {
        self.peer.load(Ordering::Relaxed)
    }
}
