//! The keys of the feeds a store holds (decision 246): a hash set that answers "is it
//! held?" (asked per feed on every offer, first word and whole read), and the same keys
//! sorted, so that a page of the listing ([`ListFeeds`](super::ListFeeds)) is a range
//! walk of its own length instead of a pass over every key.
//!
//! The sorted copy costs 34 bytes a feed built from a list (a store's start) and up to
//! about 51 a feed grown one insert at a time, beside the hash set's 43: about 5 MB at
//! 100,000 feeds. A B-tree alone would save the hash set's bytes but take about twice as
//! long per lookup.

use std::collections::{BTreeSet, HashSet};
use std::ops::Bound;

use crate::keys::FeedKey;

/// The held feeds' keys, hashed and sorted. See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct HeldSet {
    keys: HashSet<FeedKey>,
    sorted: BTreeSet<FeedKey>,
}

impl HeldSet {
    /// Whether `key` is held.
    pub(crate) fn contains(&self, key: &FeedKey) -> bool {
        self.keys.contains(key)
    }

    /// Adds `key`; whether it was new.
    pub(crate) fn insert(&mut self, key: FeedKey) -> bool {
        let new = self.keys.insert(key);
        if new {
            self.sorted.insert(key);
        }
        new
    }

    /// Feeds held.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Every held key, in no order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &FeedKey> {
        self.keys.iter()
    }

    /// The first `limit` (at least 1) keys that sort after `after`, in order, and
    /// whether a key sorts after them: a walk of the page's own length from the cursor
    /// (`O(limit + log n)`).
    pub(crate) fn page(&self, after: Option<FeedKey>, limit: usize) -> (Vec<FeedKey>, bool) {
        let limit = limit.max(1);
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut walk = self.sorted.range((start, Bound::Unbounded));
        let page: Vec<FeedKey> = walk.by_ref().take(limit).copied().collect();
        let more = page.len() == limit && walk.next().is_some();
        (page, more)
    }
}

impl FromIterator<FeedKey> for HeldSet {
    /// The sorted copy is built in one bulk load (its nodes full).
    fn from_iter<I: IntoIterator<Item = FeedKey>>(keys: I) -> Self {
        let keys: HashSet<FeedKey> = keys.into_iter().collect();
        let sorted = keys.iter().copied().collect();
        HeldSet { keys, sorted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> FeedKey {
        let mut k = [0u8; 32];
        // Scattered, so that insertion order is not key order.
        k[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
        FeedKey(k)
    }

    #[test]
    fn pages_walk_every_key_once_in_order_from_any_cursor() {
        let mut held: HeldSet = (0..500).map(key).collect();
        for i in 500..1000 {
            assert!(held.insert(key(i)));
        }
        assert!(!held.insert(key(7)), "held already");
        assert_eq!(held.len(), 1000);
        let mut all: Vec<FeedKey> = (0..1000).map(key).collect();
        all.sort();
        let mut listed: Vec<FeedKey> = Vec::new();
        let mut after = None;
        loop {
            let (page, more) = held.page(after, 64);
            listed.extend(&page);
            after = page.last().copied();
            if !more {
                break;
            }
        }
        assert_eq!(listed, all);
        // Exactly a page's worth left: no next page.
        let (page, more) = held.page(Some(all[1000 - 65]), 64);
        assert_eq!((page.len(), more), (64, false));
        // A cursor that is not held starts after it all the same; a limit of 0 is 1.
        let mut between = all[0];
        between.0[31] = 1;
        assert_eq!(held.page(Some(between), 0), (vec![all[1]], true));
        assert_eq!(held.page(Some(all[999]), 10), (vec![], false));
        assert!(held.contains(&all[3]) && !held.contains(&between));
    }
}
