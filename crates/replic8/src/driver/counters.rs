//! The counters every session of a [`SessionsActor`](crate::actor::SessionsActor) adds
//! to as it runs ([`SessionCounters`]), and what they summed so far ([`SessionTotals`]):
//! the node reads them for `status` and its metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::session::SessionStats;

/// Counters summed over sessions, kept up to date as they run: each session adds what
/// its core counted since it last added
/// ([`SessionSpec::counters`](super::SessionSpec::counters)).
#[derive(Debug, Default)]
pub struct SessionCounters {
    feeds_sent_whole: AtomicU64,
    feeds_received_whole: AtomicU64,
}

/// What [`SessionCounters`] counted so far, summed over the sessions that share it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionTotals {
    /// Feeds sent whole on the control stream (decision 210), as
    /// [`SessionStats::feeds_sent_whole`] counts them.
    pub feeds_sent_whole: u64,
    /// Feeds peers sent whole that our stores stored, as
    /// [`SessionStats::feeds_received_whole`] counts them.
    pub feeds_received_whole: u64,
}

impl SessionCounters {
    /// The sums now.
    pub fn totals(&self) -> SessionTotals {
        SessionTotals {
            feeds_sent_whole: self.feeds_sent_whole.load(Ordering::Relaxed),
            feeds_received_whole: self.feeds_received_whole.load(Ordering::Relaxed),
        }
    }

    /// Adds what one session's `stats` counted beyond `added` (what it added before),
    /// and records it in `added`.
    pub(super) fn catch_up(&self, added: &mut SessionTotals, stats: &SessionStats) {
        let sent = stats
            .feeds_sent_whole
            .saturating_sub(added.feeds_sent_whole);
        let received = stats
            .feeds_received_whole
            .saturating_sub(added.feeds_received_whole);
        if sent > 0 {
            self.feeds_sent_whole.fetch_add(sent, Ordering::Relaxed);
        }
        if received > 0 {
            self.feeds_received_whole
                .fetch_add(received, Ordering::Relaxed);
        }
        added.feeds_sent_whole = stats.feeds_sent_whole;
        added.feeds_received_whole = stats.feeds_received_whole;
    }
}
