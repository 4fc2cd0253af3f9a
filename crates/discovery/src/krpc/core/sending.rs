//! Our queries: sending them with their timeouts, and their answers (or none).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::config::MAX_PEERS_PER_LOOKUP;
use super::pending::{Pending, Purpose};
use super::search::LookupKind;
use super::{DhtCore, DhtEvent, Transmit};
use crate::krpc::message::{Body, Message, NodeInfo, Query, Response, TxId};
use crate::krpc::routing::Inserted;
use crate::krpc::rtt::{INITIAL_TIMEOUT, MAX_TIMEOUT};

impl DhtCore {
    fn timeout_for(&self, addr: SocketAddr) -> Duration {
        self.table(addr.is_ipv6())
            .rtt(addr)
            .and_then(|rtt| rtt.timeout())
            .or_else(|| self.rtt.timeout())
            .unwrap_or(INITIAL_TIMEOUT)
    }

    pub(super) fn send_query(
        &mut self,
        to: SocketAddr,
        query: Query,
        purpose: Purpose,
        now: Instant,
    ) -> bool {
        if self.pending.len() >= self.config.max_pending {
            return false;
        }
        let mut tid = self.next_tid;
        while self.pending.contains_key(&tid) {
            tid = tid.wrapping_add(1);
        }
        self.next_tid = tid.wrapping_add(1);
        let msg = Message {
            tid: TxId::new(&tid.to_be_bytes()).unwrap_or_else(|| unreachable!("4 bytes fit")),
            body: Body::Query { id: self.id, query },
            read_only: self.config.read_only,
            ip: None,
            version: self.config.version,
        };
        self.transmits.push_back(Transmit {
            to,
            payload: msg.encode(),
        });
        self.pending.insert(
            tid,
            Pending {
                to,
                sent: now,
                soft: now + self.timeout_for(to),
                hard: now + MAX_TIMEOUT,
                soft_fired: false,
                purpose,
            },
        );
        self.stats.queries_out += 1;
        true
    }

    pub(super) fn handle_answer(
        &mut self,
        from: SocketAddr,
        tid: TxId,
        response: Option<Response>,
        ip: Option<SocketAddr>,
        now: Instant,
    ) {
        let key = <[u8; 4]>::try_from(tid.as_bytes())
            .ok()
            .map(u32::from_be_bytes);
        let Some(key) = key.filter(|k| self.pending.get(k).is_some_and(|p| p.to == from)) else {
            self.stats.unsolicited_in += 1;
            return;
        };
        let Some(pending) = self.pending.remove(&key) else {
            return;
        };
        let v6 = from.is_ipv6();
        let Some(response) = response else {
            self.stats.errors_in += 1;
            self.end_query(&pending, false, now);
            return;
        };
        if response.id == self.id {
            // Ourselves, or a node pretending to be us: never a table entry.
            self.end_query(&pending, false, now);
            return;
        }
        self.stats.responses_in += 1;
        let rtt = now.saturating_duration_since(pending.sent);
        self.rtt.sample(rtt);
        let node = NodeInfo {
            id: response.id,
            addr: from,
        };
        if !self.config.enforce_bep42 || response.id.is_bep42_valid_for(from.ip()) {
            if let Inserted::Full { ping: Some(old) } =
                self.table_mut(v6).insert(node, Some(rtt), now)
            {
                if !self.pending.values().any(|p| p.to == old.addr) {
                    self.send_query(old.addr, Query::Ping, Purpose::Ping, now);
                }
            }
        }
        if let Some(ip) = ip {
            self.vote(from.ip(), ip.ip(), now);
        }
        match pending.purpose {
            Purpose::Search { id, seed } => {
                let Some(search) = self.searches.get_mut(&id) else {
                    return;
                };
                for part in &mut search.parts {
                    if part.is_v6() == v6 {
                        if seed {
                            part.seed_done(pending.soft_fired);
                            part.absorb(&response);
                        } else {
                            part.handle_response(from, &response);
                        }
                    } else {
                        part.absorb(&response);
                    }
                }
                if search.kind != LookupKind::FindNode {
                    let mut new = Vec::new();
                    for peer in &response.values {
                        if peer.port() == 0 || search.seen.len() >= MAX_PEERS_PER_LOOKUP {
                            continue;
                        }
                        if search.seen.insert(*peer) {
                            new.push(*peer);
                        }
                    }
                    if !new.is_empty() {
                        self.events.push_back(DhtEvent::Peers {
                            lookup: id,
                            info_hash: search.target,
                            peers: new,
                        });
                    }
                }
                self.drive(id, now);
            }
            Purpose::Announce { id } => {
                if let Some(search) = self.searches.get_mut(&id) {
                    search.announce_pending = search.announce_pending.saturating_sub(1);
                    search.announced += 1;
                }
                self.drive(id, now);
            }
            Purpose::Ping => {}
        }
    }

    /// A query of ours ended without a useful answer (`timed_out`: no answer at all).
    pub(super) fn end_query(&mut self, pending: &Pending, timed_out: bool, now: Instant) {
        if timed_out {
            self.stats.timeouts += 1;
            self.table_mut(pending.to.is_ipv6())
                .handle_failure(pending.to, now);
        }
        match pending.purpose {
            Purpose::Search { id, seed } => {
                if let Some(part) = self.part_mut(id, pending.to.is_ipv6()) {
                    if seed {
                        part.seed_done(pending.soft_fired);
                    } else {
                        part.handle_failure(pending.to);
                    }
                }
                self.drive(id, now);
            }
            Purpose::Announce { id } => {
                if let Some(search) = self.searches.get_mut(&id) {
                    search.announce_pending = search.announce_pending.saturating_sub(1);
                }
                self.drive(id, now);
            }
            Purpose::Ping => {}
        }
    }
}
