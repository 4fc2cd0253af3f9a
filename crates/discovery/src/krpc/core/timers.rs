//! Time: query timeouts, token rotation, expiry of announces and bucket refreshes.

use std::time::Instant;

use super::config::MAINTENANCE_EVERY;
use super::pending::Purpose;
use super::search::{LookupId, LookupKind};
use super::DhtCore;

impl DhtCore {
    /// Runs what is due at `now`: query timeouts, token rotation, maintenance.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.hard || (!p.soft_fired && now >= p.soft))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(pending) = self.pending.get_mut(&key) else {
                continue;
            };
            if now >= pending.hard {
                if let Some(pending) = self.pending.remove(&key) {
                    self.end_query(&pending, true, now);
                }
                continue;
            }
            pending.soft_fired = true;
            let pending = pending.clone();
            if let Purpose::Search { id, seed } = pending.purpose {
                if let Some(part) = self.part_mut(id, pending.to.is_ipv6()) {
                    if seed {
                        part.seed_slow();
                    } else {
                        part.handle_slow(pending.to);
                    }
                }
                self.drive(id, now);
            }
        }
        // A lookup whose queries could not be sent (every pending slot taken) has no
        // answer or timeout of its own to wake it: every timer gives it another chance.
        let ids: Vec<LookupId> = self.searches.keys().copied().collect();
        for id in ids {
            self.drive(id, now);
        }
        self.tokens.handle_timeout(now, &mut self.rng);
        if now >= self.next_maintenance {
            self.next_maintenance = now + MAINTENANCE_EVERY;
            self.peers.expire(now);
            for v6 in [false, true] {
                if (v6 && !self.config.ipv6) || (!v6 && !self.config.ipv4) {
                    continue;
                }
                for prefix in self.table_mut(v6).take_stale_buckets(now) {
                    let target = self.id.random_at_prefix(prefix, &mut self.rng);
                    // A refresh that cannot start (no nodes, too many lookups) waits for
                    // the next round.
                    let _ = self.start(LookupKind::FindNode, target, &[], true, now);
                }
            }
        }
    }
}
