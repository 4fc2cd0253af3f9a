//! The per-feed download claims (decision 105): which sync core is fetching which
//! blocks, so each peer is asked for different ones, and when another core may take a
//! claim over in the endgame (decision 178).

use std::time::Instant;

use super::Feed;
use crate::storage::FeedStorage;

/// A range of blocks one sync core is downloading.
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim {
    end: u64,
    owner: u64,
    /// When it was made, or its owner last stored data ([`Feed::refresh_claims`]).
    since: Instant,
    expires: Instant,
}

impl<S: FeedStorage> Feed<S> {
    /// If block `index` is being downloaded by a sync core other than `owner` (and that
    /// claim has not expired), the end of its claim.
    #[cfg(test)]
    pub(crate) fn claimed_by_other(&self, index: u64, owner: u64, now: Instant) -> Option<u64> {
        self.other_claim(index, owner, now).map(|(end, _)| end)
    }

    /// If block `index` is being downloaded by a sync core other than `owner` (and that
    /// claim has not expired), the end of its claim and when its owner last made
    /// progress.
    pub(crate) fn other_claim(
        &self,
        index: u64,
        owner: u64,
        now: Instant,
    ) -> Option<(u64, Instant)> {
        self.claims
            .range(..=index)
            .next_back()
            .filter(|(_, c)| c.end > index && c.owner != owner && c.expires > now)
            .map(|(_, c)| (c.end, c.since))
    }

    /// Claim `[start, end)` for the sync core `owner` from `now` until `expires`,
    /// replacing any claim it overlaps (only expired ones or the owner's own can overlap).
    pub(crate) fn claim(
        &mut self,
        start: u64,
        end: u64,
        owner: u64,
        now: Instant,
        expires: Instant,
    ) {
        let overlapping: Vec<u64> = self
            .claims
            .range(..end)
            .rev()
            .take_while(|(_, c)| c.end > start)
            .map(|(&s, _)| s)
            .collect();
        for s in overlapping {
            self.claims.remove(&s);
        }
        self.claims.insert(
            start,
            Claim {
                end,
                owner,
                since: now,
                expires,
            },
        );
    }

    /// `owner` stored data at `now`: its claims count as alive from then.
    pub(crate) fn refresh_claims(&mut self, owner: u64, now: Instant) {
        for claim in self.claims.values_mut().filter(|c| c.owner == owner) {
            claim.since = now;
        }
    }

    /// Drop `owner`'s claim that starts at `start`, if any.
    pub(crate) fn release(&mut self, start: u64, owner: u64) {
        if self.claims.get(&start).is_some_and(|c| c.owner == owner) {
            self.claims.remove(&start);
        }
    }

    /// Drop every claim of `owner`.
    pub(crate) fn release_all(&mut self, owner: u64) {
        self.claims.retain(|_, c| c.owner != owner);
    }
}
