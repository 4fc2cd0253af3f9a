//! [`Recent`]: the index of the records written after the last checkpoint, by block or
//! node index.

use crate::storage::IndexMap;

/// How far past the end of [`Recent`]'s dense window an index may land and still
/// extend it (the window is also kept at most about twice as long as its entries).
const DENSE_GAP: u64 = 4096;

/// Entries of the records after the checkpoint, by block or node index. The indices
/// appends write (a window of nearly consecutive ones after the first index stored since
/// the last clear) go into a vector, the rest (a replica's scattered downloads, the few
/// parents left of the window) into a map: a writer's 1 KiB appends store three entries
/// per block, and map inserts were ~7 % of their CPU.
///
/// Invariant: an index is in at most one of `dense` (at `index - base`) and `sparse`;
/// `len` counts the entries of both; `dense.len() <= 2 * len + DENSE_GAP`.
#[derive(Debug)]
pub(super) struct Recent<V> {
    base: u64,
    dense: Vec<Option<V>>,
    sparse: IndexMap<V>,
    /// The largest index in `sparse` (meaningful only when it is not empty).
    sparse_max: u64,
    len: usize,
}

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Self {
            base: 0,
            dense: Vec::new(),
            sparse: IndexMap::default(),
            sparse_max: 0,
            len: 0,
        }
    }
}

impl<V: Copy> Recent<V> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn get(&self, index: u64) -> Option<&V> {
        if let Some(Some(v)) = index
            .checked_sub(self.base)
            .and_then(|d| usize::try_from(d).ok())
            .and_then(|d| self.dense.get(d))
        {
            return Some(v);
        }
        self.sparse.get(&index)
    }

    pub(super) fn insert(&mut self, index: u64, value: V) {
        if self.len == 0 {
            self.base = index;
        }
        let window = self.dense.len() as u64;
        let fits = index >= self.base && {
            let d = index - self.base;
            d < window || (d <= window + DENSE_GAP && d < 2 * self.len as u64 + DENSE_GAP)
        };
        if !fits {
            if self.sparse.insert(index, value).is_none() {
                self.len += 1;
            }
            self.sparse_max = if self.sparse.len() == 1 {
                index
            } else {
                self.sparse_max.max(index)
            };
            return;
        }
        let d = (index - self.base) as usize;
        if d >= self.dense.len() {
            let old_end = self.base + window;
            self.dense.resize(d + 1, None);
            if !self.sparse.is_empty() && self.sparse_max >= old_end {
                // Entries stored in the map before the window reached them move in.
                let end = self.base + self.dense.len() as u64;
                let (base, dense) = (self.base, &mut self.dense);
                self.sparse.retain(|&i, v| {
                    if i >= old_end && i < end {
                        dense[(i - base) as usize] = Some(*v);
                        false
                    } else {
                        true
                    }
                });
                self.sparse_max = self.sparse.keys().copied().max().unwrap_or(0);
            }
        }
        if self.dense[d].replace(value).is_none() {
            self.len += 1;
        }
    }

    /// Every entry, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        let base = self.base;
        self.dense
            .iter()
            .enumerate()
            .filter_map(move |(d, v)| v.as_ref().map(|v| (base + d as u64, v)))
            .chain(self.sparse.iter().map(|(&i, v)| (i, v)))
    }

    pub(super) fn clear(&mut self) {
        self.dense.clear();
        self.sparse.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_matches_a_map() {
        // Appends (a dense run with parents left of it), replica jumps far ahead and
        // back, overwrites, and map entries the growing window later covers.
        let mut x = 7u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..8u64 {
            let mut recent = Recent::default();
            let mut model = std::collections::HashMap::new();
            let mut at = round * 1000;
            for k in 0..20_000u64 {
                let index = match next() % 10 {
                    0 => at.saturating_sub(next() % 64),
                    1 => at + next() % 20_000,
                    2 => next() % 100_000,
                    _ => {
                        at += 1;
                        at
                    }
                };
                recent.insert(index, k);
                model.insert(index, k);
                assert_eq!(recent.len(), model.len());
                assert!(recent.dense.len() <= 2 * recent.len() + DENSE_GAP as usize);
            }
            for i in 0..150_000u64 {
                assert_eq!(recent.get(i), model.get(&i), "index {i}");
            }
            let mut all: Vec<(u64, u64)> = recent.iter().map(|(i, v)| (i, *v)).collect();
            all.sort_unstable();
            let mut want: Vec<(u64, u64)> = model.into_iter().collect();
            want.sort_unstable();
            assert_eq!(all, want);
            recent.clear();
            assert!(recent.is_empty() && recent.get(at).is_none());
        }
    }
}
