//! The peers other nodes announced to us (`announce_peer`), bounded per infohash and in
//! total; each entry expires unless re-announced.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;

use super::id::Id;

/// Bounds and lifetime of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStoreConfig {
    /// Most peers kept per infohash; when full, the oldest announce is replaced.
    pub max_per_info_hash: usize,
    /// Most infohashes kept; when full, the one with the fewest peers makes room (an
    /// attacker who announces many infohashes once each displaces its own entries
    /// before any real swarm's).
    pub max_info_hashes: usize,
    /// How long an announce is kept. BEP 5 peers re-announce every 15-30 min; 30 min is
    /// what libtorrent keeps them.
    pub ttl: Duration,
    /// Most IPv4 peers returned in one `get_peers` response (IPv6: half as many). 50
    /// IPv4 values are 400 bytes, 25 IPv6 values 525: with 8 nodes of each family
    /// beside them a response stays under 1,232 bytes, one unfragmented IPv6 datagram.
    pub max_returned: usize,
}

impl Default for PeerStoreConfig {
    /// 200 peers per infohash and 2,000 infohashes: at most 400,000 entries of about
    /// 50 bytes, 20 MiB in the worst case an attacker can reach.
    fn default() -> Self {
        PeerStoreConfig {
            max_per_info_hash: 200,
            max_info_hashes: 2000,
            ttl: Duration::from_secs(30 * 60),
            max_returned: 50,
        }
    }
}

/// Announced peers by infohash.
#[derive(Debug, Clone)]
pub struct PeerStore {
    config: PeerStoreConfig,
    swarms: HashMap<Id, Vec<(SocketAddr, Instant)>>,
}

impl PeerStore {
    /// An empty store.
    pub fn new(config: PeerStoreConfig) -> PeerStore {
        PeerStore {
            config,
            swarms: HashMap::new(),
        }
    }

    /// Records that `peer` is in the swarm of `info_hash`, until `now + ttl`.
    pub fn insert(&mut self, info_hash: Id, peer: SocketAddr, now: Instant) {
        let expires = now + self.config.ttl;
        if !self.swarms.contains_key(&info_hash) && self.swarms.len() >= self.config.max_info_hashes
        {
            self.expire(now);
            if self.swarms.len() >= self.config.max_info_hashes {
                let smallest = self
                    .swarms
                    .iter()
                    .min_by_key(|(id, swarm)| (swarm.len(), **id))
                    .map(|(id, _)| *id);
                if let Some(id) = smallest {
                    self.swarms.remove(&id);
                }
            }
        }
        let swarm = self.swarms.entry(info_hash).or_default();
        if let Some(entry) = swarm.iter_mut().find(|(addr, _)| *addr == peer) {
            entry.1 = expires;
        } else if swarm.len() < self.config.max_per_info_hash {
            swarm.push((peer, expires));
        } else if let Some(oldest) = swarm.iter_mut().min_by_key(|(_, e)| *e) {
            *oldest = (peer, expires);
        }
    }

    /// Up to `max_returned` (IPv6: half that) unexpired peers of `info_hash` whose
    /// address family matches `v6`, chosen at random when there are more.
    pub fn get(
        &self,
        info_hash: &Id,
        v6: bool,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Vec<SocketAddr> {
        let Some(swarm) = self.swarms.get(info_hash) else {
            return Vec::new();
        };
        let mut out: Vec<SocketAddr> = swarm
            .iter()
            .filter(|(addr, expires)| *expires > now && addr.is_ipv6() == v6)
            .map(|(addr, _)| *addr)
            .collect();
        let max = if v6 {
            self.config.max_returned / 2
        } else {
            self.config.max_returned
        };
        if out.len() > max {
            out.shuffle(rng);
            out.truncate(max);
        }
        out
    }

    /// Drops expired entries and empty swarms.
    pub fn expire(&mut self, now: Instant) {
        self.swarms.retain(|_, swarm| {
            swarm.retain(|(_, expires)| *expires > now);
            !swarm.is_empty()
        });
    }

    /// Infohashes with at least one entry (expired ones included until `expire`).
    pub fn info_hashes(&self) -> usize {
        self.swarms.len()
    }

    /// Entries over all infohashes.
    pub fn len(&self) -> usize {
        self.swarms.values().map(Vec::len).sum()
    }

    /// The store is empty.
    pub fn is_empty(&self) -> bool {
        self.swarms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn bounded_and_expiring() {
        let config = PeerStoreConfig {
            max_per_info_hash: 3,
            max_info_hashes: 2,
            ttl: Duration::from_secs(60),
            max_returned: 2,
        };
        let mut store = PeerStore::new(config);
        let mut rng = StdRng::seed_from_u64(4);
        let t0 = Instant::now();
        let ih = Id([1; 20]);
        for port in 1..=10u16 {
            store.insert(ih, SocketAddr::from(([10, 0, 0, 1], port)), t0);
        }
        assert_eq!(store.len(), 3);
        assert_eq!(store.get(&ih, false, t0, &mut rng).len(), 2);
        assert!(store.get(&ih, true, t0, &mut rng).is_empty());
        // Full of infohashes: the smallest swarm makes room, the big one stays.
        store.insert(Id([2; 20]), SocketAddr::from(([10, 0, 0, 2], 1)), t0);
        store.insert(Id([3; 20]), SocketAddr::from(([10, 0, 0, 3], 1)), t0);
        assert_eq!(store.info_hashes(), 2);
        assert_eq!(store.get(&ih, false, t0, &mut rng).len(), 2);
        assert!(store.get(&Id([2; 20]), false, t0, &mut rng).is_empty());
        assert_eq!(store.get(&Id([3; 20]), false, t0, &mut rng).len(), 1);
        let later = t0 + Duration::from_secs(61);
        assert!(store.get(&ih, false, later, &mut rng).is_empty());
        store.insert(Id([4; 20]), SocketAddr::from(([10, 0, 0, 4], 1)), later);
        assert_eq!(store.info_hashes(), 1, "expired swarms go first");
    }
}
