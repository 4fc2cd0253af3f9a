//! The feeds waiting for the user's decision in namespaces with
//! [`AcceptPolicy::Manual`](super::AcceptPolicy::Manual), and the decisions remembered
//! for later offers. No I/O: the store's offer answer awaits the receivers it hands out.
//!
//! Every table here is bounded: waiting feeds per peer and in total (a peer can fill
//! them by offering), remembered decisions (the user fills them, oldest forgotten first).

use std::collections::{HashMap, VecDeque};

use tokio::sync::oneshot;

use crate::keys::{FeedKey, PeerKey};

/// Decisions remembered for offers made later (the user's `accept`/`reject` of a feed
/// whose offer had stopped waiting, or of one not offered yet). A user decides by hand,
/// so this is far more than anyone types; the oldest is forgotten first.
const REMEMBERED: usize = 4096;

/// One offer's feed waiting for a decision.
#[derive(Debug)]
struct Waiter {
    peer: PeerKey,
    id: u64,
    tx: oneshot::Sender<bool>,
}

/// What a wait was given: its id (to take it back on timeout) and where the decision
/// arrives (`true`: accepted).
pub(crate) type Wait = (u64, oneshot::Receiver<bool>);

/// The waiting feeds and the remembered decisions. See the module documentation.
#[derive(Debug)]
pub(crate) struct ManualQueue {
    per_peer_limit: usize,
    total_limit: usize,
    waiting: HashMap<(String, FeedKey), Vec<Waiter>>,
    per_peer: HashMap<PeerKey, usize>,
    total: usize,
    next_id: u64,
    decided: HashMap<(String, FeedKey), bool>,
    order: VecDeque<(String, FeedKey)>,
}

impl ManualQueue {
    /// A queue holding at most `per_peer` waiting feeds of one peer and `total` in all.
    pub(crate) fn new(per_peer: usize, total: usize) -> Self {
        ManualQueue {
            per_peer_limit: per_peer,
            total_limit: total,
            waiting: HashMap::new(),
            per_peer: HashMap::new(),
            total: 0,
            next_id: 0,
            decided: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The user's remembered decision on `feed` in `namespace`, if any.
    pub(crate) fn decided(&self, namespace: &str, feed: &FeedKey) -> Option<bool> {
        self.decided.get(&(namespace.to_owned(), *feed)).copied()
    }

    /// Puts `peer`'s offer of `feed` in `namespace` to the user; `None` when a bound is
    /// reached (the feed is then refused).
    pub(crate) fn wait(&mut self, peer: PeerKey, namespace: &str, feed: FeedKey) -> Option<Wait> {
        let mine = self.per_peer.get(&peer).copied().unwrap_or(0);
        if mine >= self.per_peer_limit || self.total >= self.total_limit {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let id = self.next_id;
        self.next_id += 1;
        self.waiting
            .entry((namespace.to_owned(), feed))
            .or_default()
            .push(Waiter { peer, id, tx });
        *self.per_peer.entry(peer).or_default() += 1;
        self.total += 1;
        Some((id, rx))
    }

    /// Takes back the wait `id` (it timed out); returns whether it was still waiting.
    pub(crate) fn expire(&mut self, namespace: &str, feed: &FeedKey, id: u64) -> bool {
        let key = (namespace.to_owned(), *feed);
        let Some(waiters) = self.waiting.get_mut(&key) else {
            return false;
        };
        let Some(i) = waiters.iter().position(|w| w.id == id) else {
            return false;
        };
        let waiter = waiters.swap_remove(i);
        if waiters.is_empty() {
            self.waiting.remove(&key);
        }
        self.release(waiter.peer);
        true
    }

    /// Decides `feed` in `namespace`: every waiting offer of it gets the decision, and
    /// it is remembered for later offers. Returns how many waiting offers got it.
    pub(crate) fn decide(&mut self, namespace: &str, feed: FeedKey, accept: bool) -> usize {
        let key = (namespace.to_owned(), feed);
        let waiters = self.waiting.remove(&key).unwrap_or_default();
        let told = waiters.len();
        for waiter in waiters {
            self.release(waiter.peer);
            let _ = waiter.tx.send(accept);
        }
        if self.decided.insert(key.clone(), accept).is_none() {
            self.order.push_back(key);
            if self.order.len() > REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.decided.remove(&old);
                }
            }
        }
        told
    }

    /// How many feeds wait now.
    pub(crate) fn waiting(&self) -> usize {
        self.total
    }

    fn release(&mut self, peer: PeerKey) {
        self.total -= 1;
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_bounded_per_peer_and_in_total_and_freed_by_decisions_and_timeouts() {
        let mut q = ManualQueue::new(2, 3);
        let (a, b) = (PeerKey([1; 32]), PeerKey([2; 32]));
        let feed = |i: u8| FeedKey([i; 32]);
        let (_, mut a1) = q.wait(a, "ns", feed(1)).unwrap();
        let (id2, _a2) = q.wait(a, "ns", feed(2)).unwrap();
        assert!(q.wait(a, "ns", feed(3)).is_none(), "per peer");
        let (_, mut b1) = q.wait(b, "ns", feed(1)).unwrap();
        assert!(q.wait(b, "ns", feed(4)).is_none(), "in total");
        // One decision reaches both offers of the feed.
        assert_eq!(q.decide("ns", feed(1), true), 2);
        assert_eq!(a1.try_recv(), Ok(true));
        assert_eq!(b1.try_recv(), Ok(true));
        assert_eq!(q.waiting(), 1);
        assert!(q.expire("ns", &feed(2), id2));
        assert!(!q.expire("ns", &feed(2), id2));
        assert_eq!(q.waiting(), 0);
        assert!(q.per_peer.is_empty());
        // Remembered for later offers, in its namespace only.
        assert_eq!(q.decided("ns", &feed(1)), Some(true));
        assert_eq!(q.decided("other", &feed(1)), None);
        assert_eq!(q.decide("ns", feed(9), false), 0);
        assert_eq!(q.decided("ns", &feed(9)), Some(false));
    }

    #[test]
    fn remembered_decisions_stay_bounded() {
        let mut q = ManualQueue::new(1, 1);
        for i in 0..(REMEMBERED as u32 + 10) {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            q.decide("ns", FeedKey(key), true);
        }
        assert_eq!(q.decided.len(), REMEMBERED);
        assert_eq!(q.order.len(), REMEMBERED);
        assert_eq!(q.decided("ns", &FeedKey([0; 32])), None, "oldest forgotten");
    }
}
