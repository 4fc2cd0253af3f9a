//! The rate limit on queries answered, per source: a token bucket each, in a table of
//! bounded size, so that one address cannot make us its amplifier or eat our upload. A
//! source is an IPv4 address or an IPv6 /64 (one host usually holds a whole /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Per-source limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Queries answered per second, sustained, per source IP.
    pub per_second: f64,
    /// Queries answered in a burst per source IP.
    pub burst: f64,
    /// Most source IPs tracked at once. When the table is full, the entry idle longest
    /// is dropped (its next query starts from a full bucket).
    pub max_sources: usize,
}

impl Default for RateLimitConfig {
    /// 20 queries/s with bursts of 50 per IP: an honest node sends a handful per lookup;
    /// a loopback test network with many nodes on one IP may raise it. 4,096 sources is
    /// a few hundred KiB at most.
    fn default() -> Self {
        RateLimitConfig {
            per_second: 20.0,
            burst: 50.0,
            max_sources: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by source IP.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    /// An empty table.
    pub fn new(config: RateLimitConfig) -> RateLimiter {
        RateLimiter {
            config,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `ip`'s source; false if its bucket is empty (drop the query).
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let ip = source(ip);
        let config = self.config;
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= config.max_sources {
            self.evict(now);
        }
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: config.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * config.per_second).min(config.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Sources currently tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// No source is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Drops the buckets that are full again (they hold no state worth keeping) and, if
    /// none is, the one idle longest.
    fn evict(&mut self, now: Instant) {
        let refill = Duration::from_secs_f64(self.config.burst / self.config.per_second.max(1e-9));
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.updated) < refill);
        if self.buckets.len() >= self.config.max_sources {
            if let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.updated)
                .map(|(ip, _)| *ip)
            {
                self.buckets.remove(&oldest);
            }
        }
    }
}

/// The key of a source: the IPv4 address, or the IPv6 address cut to its /64.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_and_table_stays_bounded() {
        let config = RateLimitConfig {
            per_second: 10.0,
            burst: 5.0,
            max_sources: 3,
        };
        let mut limiter = RateLimiter::new(config);
        let t0 = Instant::now();
        let a: IpAddr = "1.1.1.1".parse().expect("ip");
        let allowed = (0..20).filter(|_| limiter.allow(a, t0)).count();
        assert_eq!(allowed, 5);
        assert!(limiter.allow(a, t0 + Duration::from_millis(100)));
        assert!(!limiter.allow(a, t0 + Duration::from_millis(100)));
        for i in 0..100u8 {
            let ip = IpAddr::from([10, 0, 0, i]);
            assert!(limiter.allow(ip, t0 + Duration::from_millis(200)));
            assert!(limiter.len() <= 3);
        }
        // One IPv6 /64 is one source.
        let t1 = t0 + Duration::from_secs(10);
        let allowed = (0..20u16)
            .filter(|i| {
                let ip: IpAddr = format!("2001:db8::{i:x}").parse().expect("v6");
                limiter.allow(ip, t1)
            })
            .count();
        assert_eq!(allowed, 5);
    }
}
