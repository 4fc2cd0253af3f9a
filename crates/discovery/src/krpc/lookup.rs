//! One iterative lookup on one address family (BEP 5 / Kademlia): query the closest
//! nodes known, `alpha` at a time, learn closer ones from their answers, and stop as soon
//! as the [`K`] closest nodes seen have all answered.
//!
//! The lookup keeps no clock and sends nothing: the core asks it whom to query
//! ([`Lookup::next_queries`]) and tells it what happened to each query (answered, slow,
//! failed). A query past its node's timeout is "slow": it no longer holds a slot nor
//! keeps the lookup from finishing, but a late answer still counts.

use std::net::SocketAddr;

use super::id::Id;
use super::message::{NodeInfo, Response};
use super::routing::K;

/// Most candidates a lookup tracks; farther ones are dropped. Every answer brings up to
/// 8 nodes; 100 is several answers' worth beyond the K closest.
pub const MAX_CANDIDATES: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Not queried yet.
    Fresh,
    /// Queried, within its timeout.
    InFlight,
    /// Queried, past its timeout, not given up yet.
    Slow,
    /// Answered; with the token it gave, for `get_peers`.
    Answered(Option<Vec<u8>>),
    /// Did not answer, or answered with an error.
    Failed,
}

#[derive(Debug, Clone)]
struct Candidate {
    node: NodeInfo,
    distance: [u8; 20],
    state: State,
}

/// The search part of a lookup.
#[derive(Debug, Clone)]
pub struct Lookup {
    target: Id,
    /// Our own id: never a candidate.
    own: Id,
    v6: bool,
    candidates: Vec<Candidate>,
    /// Queries sent to addresses whose id we do not know (bootstrap nodes), within
    /// their timeout.
    seeds_in_flight: usize,
    /// Seed queries past their timeout, not given up yet.
    seeds_slow: usize,
    queried: usize,
}

impl Lookup {
    /// A lookup for `target` among nodes of one family, starting from `start`; `own`
    /// (our id) is never queried.
    pub fn new(target: Id, own: Id, v6: bool, start: impl IntoIterator<Item = NodeInfo>) -> Lookup {
        let mut lookup = Lookup {
            target,
            own,
            v6,
            candidates: Vec::new(),
            seeds_in_flight: 0,
            seeds_slow: 0,
            queried: 0,
        };
        for node in start {
            lookup.add(node);
        }
        lookup
    }

    /// This lookup runs among IPv6 nodes.
    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// The target.
    pub fn target(&self) -> Id {
        self.target
    }

    /// Nodes queried so far.
    pub fn queried(&self) -> usize {
        self.queried
    }

    /// Adds a candidate (nodes of the other family, or already known, are ignored).
    pub fn add(&mut self, node: NodeInfo) {
        if node.addr.is_ipv6() != self.v6
            || node.id == self.own
            || self
                .candidates
                .iter()
                .any(|c| c.node.addr == node.addr || c.node.id == node.id)
        {
            return;
        }
        let distance = node.id.distance(&self.target);
        let at = self.candidates.partition_point(|c| c.distance < distance);
        if at >= MAX_CANDIDATES {
            return;
        }
        self.candidates.insert(
            at,
            Candidate {
                node,
                distance,
                state: State::Fresh,
            },
        );
        if self.candidates.len() > MAX_CANDIDATES {
            // Drop the farthest that is not waiting for an answer.
            if let Some(pos) = self
                .candidates
                .iter()
                .rposition(|c| !matches!(c.state, State::InFlight | State::Slow))
            {
                self.candidates.remove(pos);
            }
        }
    }

    /// A query went to a node we know only by address (a bootstrap node).
    pub fn seed_sent(&mut self) {
        self.seeds_in_flight += 1;
        self.queried += 1;
    }

    /// A seed query is past its timeout: it frees its slot.
    pub fn seed_slow(&mut self) {
        self.seeds_in_flight = self.seeds_in_flight.saturating_sub(1);
        self.seeds_slow += 1;
    }

    /// A seed query ended (answered or given up); `slow`: it was past its timeout.
    pub fn seed_done(&mut self, slow: bool) {
        if slow {
            self.seeds_slow = self.seeds_slow.saturating_sub(1);
        } else {
            self.seeds_in_flight = self.seeds_in_flight.saturating_sub(1);
        }
    }

    /// The [`K`] closest candidates that have not failed and are not slow.
    fn window(&self) -> impl Iterator<Item = &Candidate> {
        self.candidates
            .iter()
            .filter(|c| !matches!(c.state, State::Failed | State::Slow))
            .take(K)
    }

    fn in_flight(&self) -> usize {
        self.candidates
            .iter()
            .filter(|c| c.state == State::InFlight)
            .count()
            + self.seeds_in_flight
    }

    /// The nodes to query now, at most `alpha` in flight in all: the closest fresh
    /// candidates within the window. They are marked in flight.
    pub fn next_queries(&mut self, alpha: usize) -> Vec<NodeInfo> {
        let mut slots = alpha.saturating_sub(self.in_flight());
        let fresh: Vec<SocketAddr> = self
            .window()
            .filter(|c| c.state == State::Fresh)
            .map(|c| c.node.addr)
            .collect();
        let mut out = Vec::new();
        for addr in fresh {
            if slots == 0 {
                break;
            }
            if let Some(c) = self.candidates.iter_mut().find(|c| c.node.addr == addr) {
                c.state = State::InFlight;
                out.push(c.node);
                slots -= 1;
                self.queried += 1;
            }
        }
        out
    }

    /// `from` answered with `response`: its nodes of our family become candidates.
    pub fn handle_response(&mut self, from: SocketAddr, response: &Response) {
        let token = response.token.clone();
        if let Some(pos) = self.candidates.iter().position(|c| c.node.addr == from) {
            let mut c = self.candidates.remove(pos);
            // The id it answers with is the one that counts.
            c.node.id = response.id;
            c.distance = response.id.distance(&self.target);
            c.state = State::Answered(token);
            if !self.candidates.iter().any(|o| o.node.id == c.node.id) {
                let at = self.candidates.partition_point(|o| o.distance < c.distance);
                self.candidates.insert(at, c);
            }
        }
        self.absorb(response);
    }

    /// Takes the nodes of our family from an answer (to this lookup's seed queries, or
    /// to the lookup on the other family, whose answers carry ours in `nodes6`/`nodes`).
    pub fn absorb(&mut self, response: &Response) {
        let nodes = if self.v6 {
            &response.nodes6
        } else {
            &response.nodes
        };
        for node in nodes {
            self.add(*node);
        }
    }

    /// The query to `from` is past its timeout: it frees its slot.
    pub fn handle_slow(&mut self, from: SocketAddr) {
        if let Some(c) = self.candidates.iter_mut().find(|c| c.node.addr == from) {
            if c.state == State::InFlight {
                c.state = State::Slow;
            }
        }
    }

    /// The query to `from` failed (timed out for good, or an error came back).
    pub fn handle_failure(&mut self, from: SocketAddr) {
        if let Some(c) = self.candidates.iter_mut().find(|c| c.node.addr == from) {
            if matches!(c.state, State::InFlight | State::Slow) {
                c.state = State::Failed;
            }
        }
    }

    /// The K closest candidates seen that did not fail and are not slow have all
    /// answered. Slow queries are waited for only when nothing else is left: no
    /// candidate answered and none is within its timeout.
    pub fn is_done(&self) -> bool {
        if self.seeds_in_flight > 0 {
            return false;
        }
        let mut window = self.window().peekable();
        if window.peek().is_none() {
            let slow = self.candidates.iter().any(|c| c.state == State::Slow);
            return !slow && self.seeds_slow == 0;
        }
        window.all(|c| matches!(c.state, State::Answered(_)))
    }

    /// The closest nodes that answered, with their tokens, at most `n`.
    pub fn answered(&self, n: usize) -> Vec<(NodeInfo, Option<Vec<u8>>)> {
        self.candidates
            .iter()
            .filter_map(|c| match &c.state {
                State::Answered(token) => Some((c.node, token.clone())),
                _ => None,
            })
            .take(n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(first: u8, last: u8) -> NodeInfo {
        let mut id = [0u8; 20];
        id[0] = first;
        NodeInfo {
            id: Id(id),
            addr: SocketAddr::from(([10, 0, first, last], 6881)),
        }
    }

    fn response(id: Id, nodes: Vec<NodeInfo>) -> Response {
        Response {
            id,
            nodes,
            ..Response::default()
        }
    }

    #[test]
    fn finishes_when_the_k_closest_answered_even_with_slow_ones() {
        let target = Id([0; 20]);
        // Twelve candidates at increasing distance.
        let nodes: Vec<NodeInfo> = (1..=12).map(|i| node(i, 1)).collect();
        let mut lookup = Lookup::new(target, Id([0xff; 20]), false, nodes.clone());
        let first = lookup.next_queries(3);
        assert_eq!(first, nodes[..3].to_vec());
        assert!(lookup.next_queries(3).is_empty(), "alpha bounds the flight");
        // The closest is dead: past its timeout it frees a slot.
        lookup.handle_slow(nodes[0].addr);
        let next = lookup.next_queries(3);
        assert_eq!(next, vec![nodes[3]]);
        let mut sent = vec![nodes[1], nodes[2], nodes[3]];
        while let Some(n) = sent.pop() {
            assert!(!lookup.is_done());
            lookup.handle_response(n.addr, &response(n.id, vec![]));
            sent.extend(lookup.next_queries(3));
        }
        // The eight closest that are not slow answered: done, with node 0 still slow.
        assert!(lookup.is_done());
        let answered = lookup.answered(K);
        assert_eq!(answered.len(), K);
        assert_eq!(answered[0].0, nodes[1]);
        // A late answer from the slow one still counts.
        lookup.handle_response(nodes[0].addr, &response(nodes[0].id, vec![]));
        assert_eq!(lookup.answered(1)[0].0, nodes[0]);
    }

    #[test]
    fn learns_closer_nodes_and_drops_other_families() {
        let target = Id([0; 20]);
        let far = node(200, 1);
        let mut lookup = Lookup::new(target, Id([0xff; 20]), false, [far]);
        assert_eq!(lookup.next_queries(3), vec![far]);
        let v6 = NodeInfo {
            id: Id([1; 20]),
            addr: "[::1]:1".parse().expect("v6"),
        };
        let close = node(1, 2);
        lookup.handle_response(far.addr, &response(far.id, vec![close, v6]));
        assert_eq!(lookup.next_queries(3), vec![close]);
        lookup.handle_failure(close.addr);
        assert!(lookup.is_done(), "only the far one is left and it answered");
    }

    #[test]
    fn candidates_are_bounded_and_our_id_is_never_one() {
        let target = Id([0; 20]);
        let own = Id([0xee; 20]);
        let mut lookup = Lookup::new(target, own, false, []);
        for i in 0..=255u8 {
            for j in 1..=2u8 {
                let mut id = [i; 20];
                id[19] = j;
                lookup.add(NodeInfo {
                    id: Id(id),
                    addr: SocketAddr::from(([10, j, i, 1], 6881)),
                });
            }
        }
        lookup.add(NodeInfo {
            id: own,
            addr: SocketAddr::from(([10, 9, 9, 9], 6881)),
        });
        assert_eq!(lookup.candidates.len(), MAX_CANDIDATES);
        assert!(lookup.candidates.iter().all(|c| c.node.id != own));
        // The closest were kept.
        assert_eq!(lookup.candidates[0].node.id.0[0], 0);
        assert!(lookup.candidates.iter().all(|c| c.node.id.0[0] < 60));
    }

    #[test]
    fn waits_for_slow_queries_only_when_nothing_else_is_left() {
        let target = Id([0; 20]);
        let (a, b) = (node(1, 1), node(2, 1));
        let mut lookup = Lookup::new(target, Id([0xff; 20]), false, [a, b]);
        assert_eq!(lookup.next_queries(3).len(), 2);
        lookup.handle_slow(a.addr);
        lookup.handle_slow(b.addr);
        assert!(!lookup.is_done(), "both slow, nothing answered: wait");
        lookup.handle_response(b.addr, &response(b.id, vec![]));
        assert!(
            lookup.is_done(),
            "b answered late; a slow one is not waited for"
        );
        // Seeds: the same.
        let mut lookup = Lookup::new(target, Id([0xff; 20]), false, []);
        lookup.seed_sent();
        assert!(!lookup.is_done());
        lookup.seed_slow();
        assert!(!lookup.is_done(), "a slow seed is all there is");
        lookup.seed_done(true);
        assert!(lookup.is_done());
    }
}
