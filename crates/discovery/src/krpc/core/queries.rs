//! Queries from other nodes: the answers, and the queriers that may enter the table.

use std::net::SocketAddr;
use std::time::Instant;

use super::config::MAX_VERIFY_PINGS;
use super::pending::Purpose;
use super::{DhtCore, Transmit};
use crate::krpc::id::Id;
use crate::krpc::message::{Body, Message, NodeInfo, Query, Response, TxId, Want, ERROR_PROTOCOL};
use crate::krpc::routing::{RoutingTable, K};

impl DhtCore {
    fn reply(&mut self, to: SocketAddr, tid: TxId, body: Body) {
        let msg = Message {
            tid,
            body,
            read_only: false,
            ip: Some(to),
            version: self.config.version,
        };
        self.transmits.push_back(Transmit {
            to,
            payload: msg.encode(),
        });
        self.stats.queries_answered += 1;
    }

    pub(super) fn answer_error(
        &mut self,
        to: SocketAddr,
        tid: TxId,
        code: i64,
        message: &str,
        now: Instant,
    ) {
        if self.config.read_only {
            return;
        }
        if !self.limiter.allow(to.ip(), now) {
            self.stats.queries_rate_limited += 1;
            return;
        }
        let body = Body::Error {
            code,
            message: message.to_string(),
        };
        self.reply(to, tid, body);
    }

    pub(super) fn handle_query(
        &mut self,
        from: SocketAddr,
        tid: TxId,
        querier: Id,
        query: Query,
        read_only: bool,
        now: Instant,
    ) {
        self.stats.queries_in += 1;
        if self.config.read_only {
            // BEP 43: a read-only node answers nothing.
            return;
        }
        if !self.limiter.allow(from.ip(), now) {
            self.stats.queries_rate_limited += 1;
            return;
        }
        if !read_only {
            self.note_querier(
                NodeInfo {
                    id: querier,
                    addr: from,
                },
                now,
            );
        }
        let mut response = Response {
            id: self.id,
            ..Response::default()
        };
        match query {
            Query::Ping => {}
            Query::FindNode { target, want } => {
                self.fill_nodes(&mut response, &target, from, want, now)
            }
            Query::GetPeers { info_hash, want } => {
                response.token = Some(self.tokens.issue(from.ip(), &info_hash).to_vec());
                response.values = self
                    .peers
                    .get(&info_hash, from.is_ipv6(), now, &mut self.rng);
                self.fill_nodes(&mut response, &info_hash, from, want, now);
            }
            Query::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            } => {
                if !self.tokens.check(from.ip(), &info_hash, &token) {
                    self.stats.bad_tokens += 1;
                    let body = Body::Error {
                        code: ERROR_PROTOCOL,
                        message: "bad token".into(),
                    };
                    self.reply(from, tid, body);
                    return;
                }
                let port = if implied_port { from.port() } else { port };
                self.peers
                    .insert(info_hash, SocketAddr::new(from.ip(), port), now);
                self.stats.announces_stored += 1;
            }
        }
        self.reply(from, tid, Body::Response(response));
    }

    /// The K closest nodes of the families the querier wants (its own by default).
    fn fill_nodes(
        &self,
        response: &mut Response,
        target: &Id,
        from: SocketAddr,
        want: Option<Want>,
        now: Instant,
    ) {
        let want = want.filter(|w| w.v4 || w.v6).unwrap_or(Want {
            v4: from.is_ipv4(),
            v6: from.is_ipv6(),
        });
        if want.v4 && self.config.ipv4 {
            response.nodes = closest_but(&self.v4, target, from, now);
        }
        if want.v6 && self.config.ipv6 {
            response.nodes6 = closest_but(&self.v6, target, from, now);
        }
    }

    /// A node that is not read-only queried us: refresh it if we know it, else ping it to
    /// see that it answers before it enters the table.
    fn note_querier(&mut self, node: NodeInfo, now: Instant) {
        let v6 = node.addr.is_ipv6();
        if self.config.enforce_bep42 && !node.id.is_bep42_valid_for(node.addr.ip()) {
            return;
        }
        match self.table(v6).get(node.addr) {
            Some(entry) if entry.node.id == node.id => {
                self.table_mut(v6).insert(node, None, now);
            }
            _ => {
                let mut pings = 0;
                let mut pinging = false;
                for p in self.pending.values() {
                    pings += usize::from(p.purpose == Purpose::Ping);
                    pinging |= p.to == node.addr;
                }
                if !pinging && pings < MAX_VERIFY_PINGS && self.table(v6).would_add(&node, now) {
                    self.send_query(node.addr, Query::Ping, Purpose::Ping, now);
                }
            }
        }
    }
}

/// The K nodes of `table` closest to `target`, without the querier itself.
fn closest_but(
    table: &RoutingTable,
    target: &Id,
    querier: SocketAddr,
    now: Instant,
) -> Vec<NodeInfo> {
    let mut nodes = table.closest(target, K + 1, now);
    nodes.retain(|n| n.addr != querier);
    nodes.truncate(K);
    nodes
}
