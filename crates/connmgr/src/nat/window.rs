//! A count of events in fixed windows of time, for the NAT layer's per-minute budgets
//! (dial-backs served, `Locate` queries per asker, control messages per connection).

use std::time::{Duration, Instant};

/// Events counted in the current window; a window starts at the first event after the
/// previous one ended.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FixedWindow {
    start: Option<Instant>,
    count: u32,
}

impl FixedWindow {
    /// Counts one event at `now` if fewer than `max` were counted in the current window
    /// of `length` (a new window starts once it ended); whether it was counted.
    pub(crate) fn try_count(&mut self, now: Instant, length: Duration, max: u32) -> bool {
        if self.start.is_none_or(|start| now >= start + length) {
            *self = FixedWindow {
                start: Some(now),
                count: 0,
            };
        }
        if self.count >= max {
            return false;
        }
        self.count += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_per_window_and_a_new_window_after_it_ends() {
        let minute = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut window = FixedWindow::default();
        assert!(window.try_count(t0, minute, 2));
        assert!(window.try_count(t0 + Duration::from_secs(30), minute, 2));
        assert!(!window.try_count(t0 + Duration::from_secs(59), minute, 2));
        assert!(window.try_count(t0 + minute, minute, 2));
    }
}
