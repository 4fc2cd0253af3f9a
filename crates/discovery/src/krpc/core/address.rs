//! Our external address, by votes of the nodes that answer, and the BEP 42 id for it.

use std::net::IpAddr;
use std::time::Instant;

use rand::Rng;

use super::{DhtCore, DhtEvent};
use crate::krpc::id::{bep42_exempt, Id};

/// `ip` votes remembered (one per voter IP, the most recent ones).
const MAX_VOTES: usize = 32;

impl DhtCore {
    /// A responder saw us at `reported`.
    pub(super) fn vote(&mut self, voter: IpAddr, reported: IpAddr, now: Instant) {
        if voter.is_ipv6() != reported.is_ipv6() {
            return;
        }
        self.votes.retain(|(v, _)| *v != voter);
        self.votes.push_back((voter, reported));
        if self.votes.len() > MAX_VOTES {
            self.votes.pop_front();
        }
        let v6 = reported.is_ipv6();
        let mut best: Option<(IpAddr, usize)> = None;
        for (_, ip) in self.votes.iter().filter(|(_, ip)| ip.is_ipv6() == v6) {
            let count = self.votes.iter().filter(|(_, other)| other == ip).count();
            if best.is_none_or(|(_, c)| count > c) {
                best = Some((*ip, count));
            }
        }
        let Some((ip, count)) = best else {
            return;
        };
        if count < self.config.min_votes || self.external[usize::from(v6)] == Some(ip) {
            return;
        }
        self.external[usize::from(v6)] = Some(ip);
        self.events.push_back(DhtEvent::ExternalAddress { ip });
        self.maybe_change_id(now);
    }

    /// Switches to a BEP 42 id if ours is valid for none of our public external IPs.
    fn maybe_change_id(&mut self, now: Instant) {
        if !self.config.bep42_id {
            return;
        }
        let public: Vec<IpAddr> = self
            .external
            .iter()
            .flatten()
            .copied()
            .filter(|ip| !bep42_exempt(*ip))
            .collect();
        let Some(first) = public.first().copied() else {
            return;
        };
        if public.iter().any(|ip| self.id.is_bep42_valid_for(*ip)) {
            return;
        }
        let seed: u8 = self.rng.gen();
        let id = Id::bep42(first, seed, &mut self.rng);
        self.id = id;
        self.v4.rebuild(id, now);
        self.v6.rebuild(id, now);
        self.events.push_back(DhtEvent::IdChanged { id });
    }
}
