//! [`Bitfield`]: which blocks a feed stores, in sparse pages.

use std::collections::BTreeMap;

/// Words in one bitfield page (4096 blocks a page).
pub(super) const PAGE_WORDS: usize = 64;
/// Blocks in one bitfield page.
pub(super) const PAGE_BITS: u64 = 64 * PAGE_WORDS as u64;

/// Which blocks a feed stores, one bit each, in pages of 4096 blocks allocated only where
/// a block is stored (a sparse replica of a long feed costs what it stores).
#[derive(Debug, Default, Clone)]
pub(super) struct Bitfield {
    pages: BTreeMap<u64, [u64; PAGE_WORDS]>,
}

impl Bitfield {
    pub(super) fn get(&self, i: u64) -> bool {
        let word = ((i % PAGE_BITS) / 64) as usize;
        self.pages
            .get(&(i / PAGE_BITS))
            .is_some_and(|page| page[word] & (1 << (i % 64)) != 0)
    }

    /// Set the bit of each index: one page lookup per run of indices in a page.
    pub(super) fn set_all(&mut self, indices: impl Iterator<Item = u64>) {
        let mut page: Option<(u64, [u64; PAGE_WORDS])> = None;
        for i in indices {
            let number = i / PAGE_BITS;
            if page.is_none_or(|(n, _)| n != number) {
                if let Some((n, words)) = page {
                    self.pages.insert(n, words);
                }
                let words = self.pages.get(&number).copied().unwrap_or([0; PAGE_WORDS]);
                page = Some((number, words));
            }
            if let Some((_, words)) = page.as_mut() {
                words[((i % PAGE_BITS) / 64) as usize] |= 1 << (i % 64);
            }
        }
        if let Some((n, words)) = page {
            self.pages.insert(n, words);
        }
    }

    /// The allocated pages, by page number.
    pub(super) fn pages(&self) -> &BTreeMap<u64, [u64; PAGE_WORDS]> {
        &self.pages
    }

    /// Put a whole page, as read back from a checkpoint.
    pub(super) fn insert_page(&mut self, number: u64, words: [u64; PAGE_WORDS]) {
        self.pages.insert(number, words);
    }
}
