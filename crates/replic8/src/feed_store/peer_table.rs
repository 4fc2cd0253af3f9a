//! One value per peer with a live user, shared by that peer's streams: what the serve and
//! receive budgets keep per peer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::keys::PeerKey;

/// Entries kept before the dead ones are swept out (and then twice what is left).
const SWEEP_AT_LEAST: usize = 64;

/// A value per peer, alive while anything holds it: the table keeps only a weak
/// reference, so a peer whose streams (and whatever they handed on) are all gone gets a
/// fresh value next time. Dead entries are swept when the table has doubled since the
/// last sweep, so it holds at most about twice the live peers.
#[derive(Debug)]
pub(crate) struct PeerTable<T> {
    inner: Mutex<Entries<T>>,
}

#[derive(Debug)]
struct Entries<T> {
    peers: HashMap<PeerKey, Weak<T>>,
    sweep_at: usize,
}

impl<T> Default for PeerTable<T> {
    fn default() -> Self {
        PeerTable {
            inner: Mutex::new(Entries {
                peers: HashMap::new(),
                sweep_at: SWEEP_AT_LEAST,
            }),
        }
    }
}

impl<T> PeerTable<T> {
    /// `peer`'s value: the live one, or a new one from `make`.
    pub(crate) fn get(&self, peer: PeerKey, make: impl FnOnce() -> T) -> Arc<T> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(value) = inner.peers.get(&peer).and_then(Weak::upgrade) {
            return value;
        }
        let value = Arc::new(make());
        inner.peers.insert(peer, Arc::downgrade(&value));
        if inner.peers.len() >= inner.sweep_at {
            inner.peers.retain(|_, v| v.strong_count() > 0);
            inner.sweep_at = (2 * inner.peers.len()).max(SWEEP_AT_LEAST);
        }
        value
    }

    /// Peers whose value is alive.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .peers
            .values()
            .filter(|v| v.strong_count() > 0)
            .count()
    }

    /// Entries in the table, dead or alive.
    #[cfg(test)]
    fn entries(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.peers.len()
    }
}

/// A peer key made of `i`, distinct for each `i`.
#[cfg(test)]
pub(crate) fn test_key(i: usize) -> PeerKey {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(i as u64).to_be_bytes());
    PeerKey(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_key as key;

    #[test]
    fn a_peer_shares_one_value_while_it_lives_and_dead_entries_are_swept() {
        let table = PeerTable::<u32>::default();
        let a = table.get(key(1), || 1);
        assert!(Arc::ptr_eq(&a, &table.get(key(1), || 2)), "the live value");
        drop(a);
        assert_eq!(*table.get(key(1), || 3), 3, "a fresh one once all are gone");

        // Ten thousand peers come and go, a hundred stay: the table stays near the
        // live count, not the number ever seen.
        let kept: Vec<_> = (0..100).map(|i| table.get(key(i), || 0)).collect();
        for i in 100..10_100 {
            drop(table.get(key(i), || 0));
        }
        assert_eq!(table.live(), 100);
        assert!(
            table.entries() <= 2 * 100 + SWEEP_AT_LEAST,
            "{}",
            table.entries()
        );
        drop(kept);
        assert_eq!(table.live(), 0);
    }
}
