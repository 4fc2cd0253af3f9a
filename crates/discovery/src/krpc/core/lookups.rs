//! Commands and the lookups they start: find_node, get_peers, announce, ping.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Instant;

use super::pending::Purpose;
use super::search::{LookupId, LookupKind, Phase, Search};
use super::{DhtCore, DhtEvent, StartError};
use crate::krpc::id::Id;
use crate::krpc::lookup::Lookup;
use crate::krpc::message::{NodeInfo, Query, Want};
use crate::krpc::routing::K;

impl DhtCore {
    /// Pings `addr`; it enters the routing table if it answers (a node from a saved
    /// table, or one the user named).
    pub fn ping(&mut self, addr: SocketAddr, now: Instant) -> bool {
        self.family_enabled(&addr) && self.send_query(addr, Query::Ping, Purpose::Ping, now)
    }

    /// Joins the DHT through `seeds` (addresses whose ids we do not know) and the nodes
    /// already in the tables: a `find_node` lookup for our own id.
    pub fn bootstrap(
        &mut self,
        seeds: &[SocketAddr],
        now: Instant,
    ) -> Result<LookupId, StartError> {
        self.start(LookupKind::FindNode, self.id, seeds, false, now)
    }

    /// Looks up the nodes closest to `target`.
    pub fn find_node(&mut self, target: Id, now: Instant) -> Result<LookupId, StartError> {
        self.start(LookupKind::FindNode, target, &[], false, now)
    }

    /// Looks up the peers of `info_hash`: [`DhtEvent::Peers`] as they arrive, then
    /// [`DhtEvent::LookupDone`].
    pub fn get_peers(&mut self, info_hash: Id, now: Instant) -> Result<LookupId, StartError> {
        self.start(LookupKind::GetPeers, info_hash, &[], false, now)
    }

    /// Looks up the peers of `info_hash` as [`DhtCore::get_peers`] does, then announces
    /// `port` (or, with `None`, the DHT socket's port) to the closest nodes that answered.
    pub fn announce(
        &mut self,
        info_hash: Id,
        port: Option<u16>,
        now: Instant,
    ) -> Result<LookupId, StartError> {
        self.start(LookupKind::Announce { port }, info_hash, &[], false, now)
    }

    /// Stops a lookup; answers still in flight update the routing table only.
    pub fn cancel(&mut self, lookup: LookupId) -> bool {
        self.searches.remove(&lookup).is_some()
    }

    pub(super) fn start(
        &mut self,
        kind: LookupKind,
        target: Id,
        seeds: &[SocketAddr],
        internal: bool,
        now: Instant,
    ) -> Result<LookupId, StartError> {
        if self.searches.len() >= self.config.max_lookups {
            return Err(StartError::TooManyLookups {
                max: self.config.max_lookups,
            });
        }
        // One part per enabled family, even one with no node yet: answers on the other
        // family bring it nodes (BEP 32 `want`), and then it runs too.
        let mut parts = Vec::new();
        let mut any_node = false;
        for v6 in [false, true] {
            let enabled = if v6 {
                self.config.ipv6
            } else {
                self.config.ipv4
            };
            if !enabled {
                continue;
            }
            let has_seed = seeds.iter().any(|s| s.is_ipv6() == v6);
            let start = self.table(v6).closest(&target, 2 * K, now);
            any_node |= has_seed || !start.is_empty();
            parts.push(Lookup::new(target, self.id, v6, start));
        }
        if !any_node {
            return Err(StartError::NoNodes);
        }
        let id = LookupId(self.next_lookup);
        self.next_lookup += 1;
        self.searches.insert(
            id,
            Search {
                kind,
                target,
                parts,
                seen: HashSet::new(),
                internal,
                phase: Phase::Searching,
                announce_pending: 0,
                announced: 0,
            },
        );
        if kind != LookupKind::FindNode {
            // What was announced to us is found at once (in a small network we may be
            // the node closest to the infohash).
            let mut local = self.peers.get(&target, false, now, &mut self.rng);
            local.extend(self.peers.get(&target, true, now, &mut self.rng));
            if let Some(search) = self.searches.get_mut(&id) {
                local.retain(|peer| search.seen.insert(*peer));
            }
            if !local.is_empty() {
                self.events.push_back(DhtEvent::Peers {
                    lookup: id,
                    info_hash: target,
                    peers: local,
                });
            }
        }
        for seed in seeds {
            if !self.family_enabled(seed) {
                continue;
            }
            let query = self.search_query(kind, target);
            if self.send_query(*seed, query, Purpose::Search { id, seed: true }, now) {
                if let Some(part) = self.part_mut(id, seed.is_ipv6()) {
                    part.seed_sent();
                }
            }
        }
        self.drive(id, now);
        Ok(id)
    }

    fn want(&self) -> Option<Want> {
        (self.config.ipv4 && self.config.ipv6).then_some(Want { v4: true, v6: true })
    }

    fn search_query(&self, kind: LookupKind, target: Id) -> Query {
        match kind {
            LookupKind::FindNode => Query::FindNode {
                target,
                want: self.want(),
            },
            LookupKind::GetPeers | LookupKind::Announce { .. } => Query::GetPeers {
                info_hash: target,
                want: self.want(),
            },
        }
    }

    pub(super) fn part_mut(&mut self, id: LookupId, v6: bool) -> Option<&mut Lookup> {
        let search = self.searches.get_mut(&id)?;
        let index = search.parts.iter().position(|p| p.is_v6() == v6)?;
        search.parts.get_mut(index)
    }

    /// Sends what the lookup wants sent, and finishes it when it is done.
    pub(super) fn drive(&mut self, id: LookupId, now: Instant) {
        let alpha = self.config.alpha;
        let Some(search) = self.searches.get_mut(&id) else {
            return;
        };
        let (kind, target) = (search.kind, search.target);
        if search.phase == Phase::Searching {
            let mut to_query = Vec::new();
            for part in &mut search.parts {
                if !part.is_done() {
                    to_query.extend(part.next_queries(alpha));
                }
            }
            for node in to_query {
                let query = self.search_query(kind, target);
                if !self.send_query(node.addr, query, Purpose::Search { id, seed: false }, now) {
                    if let Some(part) = self.part_mut(id, node.addr.is_ipv6()) {
                        part.handle_failure(node.addr);
                    }
                }
            }
            let Some(search) = self.searches.get_mut(&id) else {
                return;
            };
            if !search.parts.iter().all(Lookup::is_done) {
                return;
            }
            if let LookupKind::Announce { port } = kind {
                search.phase = Phase::Announcing;
                let targets: Vec<(NodeInfo, Vec<u8>)> = search
                    .parts
                    .iter()
                    .flat_map(|p| p.answered(K))
                    .filter_map(|(node, token)| token.map(|t| (node, t)))
                    .collect();
                for (node, token) in targets {
                    let query = Query::AnnouncePeer {
                        info_hash: target,
                        port: port.unwrap_or(0),
                        implied_port: port.is_none(),
                        token,
                    };
                    if self.send_query(node.addr, query, Purpose::Announce { id }, now) {
                        if let Some(search) = self.searches.get_mut(&id) {
                            search.announce_pending += 1;
                        }
                    }
                }
            }
        }
        let Some(search) = self.searches.get(&id) else {
            return;
        };
        let finished = match search.phase {
            Phase::Searching => search.parts.iter().all(Lookup::is_done),
            Phase::Announcing => search.announce_pending == 0,
        };
        if finished {
            if let Some(search) = self.searches.remove(&id) {
                if !search.internal {
                    self.events.push_back(DhtEvent::LookupDone {
                        lookup: id,
                        kind: search.kind,
                        target: search.target,
                        closest: search
                            .parts
                            .iter()
                            .flat_map(|p| p.answered(K))
                            .map(|(node, _)| node)
                            .collect(),
                        announced: search.announced,
                        queried: search.parts.iter().map(Lookup::queried).sum(),
                    });
                }
            }
        }
    }
}
