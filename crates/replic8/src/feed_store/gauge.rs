//! A count of bytes held now and the most it ever was, shared between threads: what the
//! serve and receive budgets report (`FeedStoreStats::*_bytes_held` and `*_peak`).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes held now, and their peak.
#[derive(Debug, Default)]
pub(crate) struct Gauge {
    held: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    /// `bytes` more are held.
    pub(crate) fn add(&self, bytes: usize) {
        let now = self.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// `bytes` are held no more.
    pub(crate) fn sub(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The most [`Self::held`] ever was.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}
