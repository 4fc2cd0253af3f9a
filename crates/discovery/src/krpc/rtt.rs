//! Round-trip estimates (RFC 6298's SRTT and RTTVAR) and the query timeout derived from
//! them, so a lookup waits on a node about as long as that node takes, not a fixed 2 s.

use std::time::Duration;

/// The shortest query timeout. Loopback round trips are far below it; it absorbs a busy
/// host's scheduling delays so that a live node on it is not declared dead.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(50);

/// The longest query timeout: the hard deadline after which a query is given up and
/// counts as a failure of the node. Mainline round trips above 2 s are rare.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3);

/// The timeout before any round trip was measured (RFC 6298's initial RTO).
pub const INITIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// A smoothed round-trip estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RttEstimate {
    /// (SRTT, RTTVAR), once a sample was taken.
    state: Option<(Duration, Duration)>,
}

impl RttEstimate {
    /// Feeds one measured round trip.
    pub fn sample(&mut self, rtt: Duration) {
        self.state = Some(match self.state {
            None => (rtt, rtt / 2),
            Some((srtt, rttvar)) => {
                let delta = srtt.abs_diff(rtt);
                (srtt * 7 / 8 + rtt / 8, rttvar * 3 / 4 + delta / 4)
            }
        });
    }

    /// The smoothed round trip, if one was measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.state.map(|(srtt, _)| srtt)
    }

    /// SRTT + 4·RTTVAR, within [`MIN_TIMEOUT`] and [`MAX_TIMEOUT`]; `None` before the
    /// first sample.
    pub fn timeout(&self) -> Option<Duration> {
        self.state
            .map(|(srtt, rttvar)| (srtt + rttvar * 4).clamp(MIN_TIMEOUT, MAX_TIMEOUT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_follows_the_samples_within_bounds() {
        let mut rtt = RttEstimate::default();
        assert_eq!(rtt.timeout(), None);
        rtt.sample(Duration::from_millis(100));
        assert_eq!(rtt.timeout(), Some(Duration::from_millis(300)));
        for _ in 0..50 {
            rtt.sample(Duration::from_millis(100));
        }
        let settled = rtt.timeout().expect("sampled");
        assert!(settled < Duration::from_millis(110), "{settled:?}");
        rtt.sample(Duration::from_micros(10));
        for _ in 0..50 {
            rtt.sample(Duration::from_micros(10));
        }
        assert_eq!(rtt.timeout(), Some(MIN_TIMEOUT));
        rtt.sample(Duration::from_secs(60));
        assert_eq!(rtt.timeout(), Some(MAX_TIMEOUT));
    }
}
