//! The routing table (BEP 5): buckets of at most [`K`] nodes; the bucket that covers our
//! own id splits when it is full, the others do not. Only nodes that answered one of our
//! queries get in; a node is good while it was heard from in the last 15 minutes, bad
//! after [`MAX_FAILS`] queries in a row went unanswered, questionable otherwise.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::id::Id;
use super::message::NodeInfo;
use super::rtt::RttEstimate;

/// Nodes per bucket, and the number of closest nodes a lookup settles on (BEP 5).
pub const K: usize = 8;

/// A node heard from within this is good (BEP 5: 15 minutes).
pub const GOOD_FOR: Duration = Duration::from_secs(15 * 60);

/// Unanswered queries in a row that make a node bad. BEP 5 says "multiple"; two lets a
/// single lost packet pass and replaces a dead node after its second silence.
pub const MAX_FAILS: u8 = 2;

/// Our id has 160 bits, so at most 160 buckets (plus the one that holds the rest).
const MAX_BUCKETS: usize = 160;

/// How a table entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Heard from within [`GOOD_FOR`].
    Good,
    /// Not heard from within [`GOOD_FOR`], not failed.
    Questionable,
    /// Failed [`MAX_FAILS`] queries in a row.
    Bad,
}

/// A node in the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its id and address.
    pub node: NodeInfo,
    /// When it last answered us (or queried us, after it once answered).
    pub last_seen: Instant,
    /// Unanswered queries in a row.
    pub fails: u8,
    /// Its round trips.
    pub rtt: RttEstimate,
}

impl Entry {
    /// Its status at `now`.
    pub fn status(&self, now: Instant) -> Status {
        if self.fails >= MAX_FAILS {
            Status::Bad
        } else if now.saturating_duration_since(self.last_seen) < GOOD_FOR {
            Status::Good
        } else {
            Status::Questionable
        }
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    entries: Vec<Entry>,
    /// Verified nodes that did not fit, most recent last, at most [`K`].
    replacements: Vec<Entry>,
    last_changed: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket {
            entries: Vec::with_capacity(K),
            replacements: Vec::new(),
            last_changed: now,
        }
    }
}

/// What [`RoutingTable::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The node was in the table; its entry was refreshed.
    Updated,
    /// The node was added.
    Added,
    /// Its bucket is full of nodes that are not bad: it went to the replacement cache.
    /// `ping` is the least recently seen questionable node, if there is one: ping it, and
    /// a failure will make room.
    Full {
        /// Ping this one.
        ping: Option<NodeInfo>,
    },
    /// Refused: our own id, an id already in the table at another address, or an IP
    /// already in the table when IPs are restricted.
    Refused,
}

/// The routing table of one address family.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    own: Id,
    buckets: Vec<Bucket>,
    restrict_ips: bool,
}

impl RoutingTable {
    /// An empty table around `own`. With `restrict_ips`, at most one node per IP address
    /// gets in (one host cannot fill our buckets; a loopback test network turns it off).
    pub fn new(own: Id, restrict_ips: bool, now: Instant) -> RoutingTable {
        RoutingTable {
            own,
            buckets: vec![Bucket::new(now)],
            restrict_ips,
        }
    }

    /// Our id.
    pub fn own_id(&self) -> Id {
        self.own
    }

    /// Nodes in the table.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.entries.len()).sum()
    }

    /// The table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of buckets.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    fn index(&self, id: &Id) -> usize {
        self.own.common_prefix(id).min(self.buckets.len() - 1)
    }

    /// The entry for `addr`, if that address is in the table.
    pub fn get(&self, addr: SocketAddr) -> Option<&Entry> {
        self.buckets
            .iter()
            .flat_map(|b| b.entries.iter())
            .find(|e| e.node.addr == addr)
    }

    fn get_mut(&mut self, addr: SocketAddr) -> Option<&mut Entry> {
        self.buckets
            .iter_mut()
            .flat_map(|b| b.entries.iter_mut())
            .find(|e| e.node.addr == addr)
    }

    fn has_ip(&self, ip: IpAddr) -> bool {
        self.buckets
            .iter()
            .flat_map(|b| b.entries.iter())
            .any(|e| e.node.addr.ip() == ip)
    }

    /// A node answered us (`rtt` is the round trip of that answer) or queried us: add it
    /// or refresh it. Call it only for nodes that proved they answer at their address.
    pub fn insert(&mut self, node: NodeInfo, rtt: Option<Duration>, now: Instant) -> Inserted {
        if node.id == self.own {
            return Inserted::Refused;
        }
        if let Some(entry) = self.get_mut(node.addr) {
            if entry.node.id != node.id {
                // Same address, new id (a restart): the new id replaces the old entry.
                let mut fresh = entry.clone();
                fresh.node = node;
                fresh.last_seen = now;
                fresh.fails = 0;
                if let Some(rtt) = rtt {
                    fresh.rtt.sample(rtt);
                }
                self.remove(node.addr);
                return self.insert_entry(fresh, now);
            }
            entry.last_seen = now;
            entry.fails = 0;
            if let Some(rtt) = rtt {
                entry.rtt.sample(rtt);
            }
            return Inserted::Updated;
        }
        let bucket = &self.buckets[self.index(&node.id)];
        if bucket.entries.iter().any(|e| e.node.id == node.id) {
            return Inserted::Refused;
        }
        if self.restrict_ips && self.has_ip(node.addr.ip()) {
            return Inserted::Refused;
        }
        let mut entry = Entry {
            node,
            last_seen: now,
            fails: 0,
            rtt: RttEstimate::default(),
        };
        if let Some(rtt) = rtt {
            entry.rtt.sample(rtt);
        }
        self.insert_entry(entry, now)
    }

    fn insert_entry(&mut self, entry: Entry, now: Instant) -> Inserted {
        loop {
            let index = self.index(&entry.node.id);
            let last = self.buckets.len() - 1;
            let bucket = &mut self.buckets[index];
            if bucket.entries.len() < K {
                bucket.entries.push(entry);
                bucket.last_changed = now;
                return Inserted::Added;
            }
            if let Some(bad) = bucket
                .entries
                .iter()
                .position(|e| e.status(now) == Status::Bad)
            {
                bucket.entries[bad] = entry;
                bucket.last_changed = now;
                return Inserted::Added;
            }
            if index == last && self.buckets.len() < MAX_BUCKETS {
                self.split(now);
                continue;
            }
            let bucket = &mut self.buckets[index];
            bucket
                .replacements
                .retain(|e| e.node.addr != entry.node.addr);
            if bucket.replacements.len() >= K {
                bucket.replacements.remove(0);
            }
            bucket.replacements.push(entry);
            let ping = bucket
                .entries
                .iter()
                .filter(|e| e.status(now) == Status::Questionable)
                .min_by_key(|e| e.last_seen)
                .map(|e| e.node);
            return Inserted::Full { ping };
        }
    }

    /// Splits the last bucket: the nodes that share one more bit with our id move on.
    fn split(&mut self, now: Instant) {
        let last = self.buckets.len() - 1;
        let own = self.own;
        let mut next = Bucket::new(now);
        let bucket = &mut self.buckets[last];
        let (stay, go): (Vec<Entry>, Vec<Entry>) = bucket
            .entries
            .drain(..)
            .partition(|e| own.common_prefix(&e.node.id) == last);
        bucket.entries = stay;
        next.entries = go;
        let (stay, go): (Vec<Entry>, Vec<Entry>) = bucket
            .replacements
            .drain(..)
            .partition(|e| own.common_prefix(&e.node.id) == last);
        bucket.replacements = stay;
        next.replacements = go;
        self.buckets.push(next);
    }

    /// [`RoutingTable::insert`] would add `node` now (or refresh it): worth verifying a
    /// node that queried us with a ping. False for a full bucket that cannot split.
    pub fn would_add(&self, node: &NodeInfo, now: Instant) -> bool {
        if node.id == self.own {
            return false;
        }
        if self.get(node.addr).is_some() {
            return true;
        }
        if self.restrict_ips && self.has_ip(node.addr.ip()) {
            return false;
        }
        let index = self.index(&node.id);
        let bucket = &self.buckets[index];
        bucket.entries.len() < K
            || bucket.entries.iter().any(|e| e.status(now) == Status::Bad)
            || (index == self.buckets.len() - 1 && self.buckets.len() < MAX_BUCKETS)
    }

    /// A query to `addr` went unanswered. A node that becomes bad is replaced by the most
    /// recent node in its bucket's replacement cache, if any.
    pub fn handle_failure(&mut self, addr: SocketAddr, now: Instant) {
        let Some(entry) = self.get_mut(addr) else {
            return;
        };
        entry.fails = entry.fails.saturating_add(1);
        if entry.status(now) != Status::Bad {
            return;
        }
        let id = entry.node.id;
        let index = self.index(&id);
        let bucket = &mut self.buckets[index];
        if let Some(replacement) = bucket.replacements.pop() {
            if let Some(slot) = bucket.entries.iter_mut().find(|e| e.node.addr == addr) {
                *slot = replacement;
                bucket.last_changed = now;
            }
        }
    }

    /// Removes the node at `addr`.
    pub fn remove(&mut self, addr: SocketAddr) {
        for bucket in &mut self.buckets {
            bucket.entries.retain(|e| e.node.addr != addr);
        }
    }

    /// The round-trip estimate of `addr`, if it is in the table.
    pub fn rtt(&self, addr: SocketAddr) -> Option<RttEstimate> {
        self.get(addr).map(|e| e.rtt)
    }

    /// The `n` nodes closest to `target` that are not bad.
    pub fn closest(&self, target: &Id, n: usize, now: Instant) -> Vec<NodeInfo> {
        let mut all: Vec<&Entry> = self
            .buckets
            .iter()
            .flat_map(|b| b.entries.iter())
            .filter(|e| e.status(now) != Status::Bad)
            .collect();
        all.sort_by_key(|e| e.node.id.distance(target));
        all.into_iter().take(n).map(|e| e.node).collect()
    }

    /// Every entry, bucket by bucket.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.entries.iter())
    }

    /// Prefix lengths of the buckets not changed for [`GOOD_FOR`]: each wants a
    /// `find_node` for a random id in its range. Marks them refreshed at `now`.
    pub fn take_stale_buckets(&mut self, now: Instant) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, bucket) in self.buckets.iter_mut().enumerate() {
            if now.saturating_duration_since(bucket.last_changed) >= GOOD_FOR {
                bucket.last_changed = now;
                out.push(i);
            }
        }
        out
    }

    /// When the next bucket becomes stale.
    pub fn next_refresh(&self) -> Option<Instant> {
        self.buckets.iter().map(|b| b.last_changed + GOOD_FOR).min()
    }

    /// The same nodes around a new id (after a BEP 42 id change).
    pub fn rebuild(&mut self, own: Id, now: Instant) {
        let entries: Vec<Entry> = self.buckets.drain(..).flat_map(|b| b.entries).collect();
        self.own = own;
        self.buckets = vec![Bucket::new(now)];
        for entry in entries {
            if entry.node.id != own {
                self.insert_entry(entry, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn node(id: Id, i: u32) -> NodeInfo {
        NodeInfo {
            id,
            addr: SocketAddr::from((i.to_be_bytes(), 6881)),
        }
    }

    #[test]
    fn buckets_split_only_around_our_id() {
        let mut rng = StdRng::seed_from_u64(5);
        let now = Instant::now();
        let own = Id::random(&mut rng);
        let mut table = RoutingTable::new(own, true, now);
        for i in 0..2000u32 {
            table.insert(node(Id::random(&mut rng), i + 1), None, now);
        }
        // Random ids: about half fall in each half of the space, so the far buckets are
        // full and only the ones near our id stay sparse.
        assert!(
            table.buckets() > 5 && table.buckets() < 20,
            "{}",
            table.buckets()
        );
        assert!(table.len() <= table.buckets() * K);
        assert!(table.len() >= (table.buckets() - 3) * K, "{}", table.len());
        // Nodes that share 0 bits with us: only K of them, whatever number we saw.
        let far = table
            .entries()
            .filter(|e| own.common_prefix(&e.node.id) == 0)
            .count();
        assert_eq!(far, K);
        // Near our id, ids keep getting in.
        let near = node(own.random_at_prefix(40, &mut rng), 5000);
        assert_eq!(table.insert(near, None, now), Inserted::Added);
    }

    #[test]
    fn failures_make_nodes_bad_and_replacements_step_in() {
        let mut rng = StdRng::seed_from_u64(6);
        let now = Instant::now();
        let own = Id([0; 20]);
        let mut table = RoutingTable::new(own, true, now);
        // All in the far half (first bit set): one bucket that cannot split below it.
        let mut far = || {
            let mut id = Id::random(&mut rng);
            id.0[0] |= 0x80;
            id
        };
        // Fill the first bucket's range after one split.
        let mut nodes = Vec::new();
        for i in 0..(K as u32 + 1) {
            let n = node(far(), i + 1);
            nodes.push(n);
            table.insert(n, None, now);
        }
        assert_eq!(table.len(), K);
        let spare = nodes[K];
        assert!(table.get(spare.addr).is_none());
        let victim = nodes[0];
        table.handle_failure(victim.addr, now);
        assert!(table.get(victim.addr).is_some(), "one failure is forgiven");
        table.handle_failure(victim.addr, now);
        assert!(table.get(victim.addr).is_none(), "replaced after two");
        assert!(table.get(spare.addr).is_some());
        // Questionable nodes are offered for a ping when the bucket is full.
        let later = now + GOOD_FOR;
        match table.insert(node(far(), 100), None, later) {
            Inserted::Full { ping: Some(_) } => {}
            other => panic!("expected a ping suggestion, got {other:?}"),
        }
        // The same IP twice is refused when restricted.
        let dup = NodeInfo {
            id: far(),
            addr: SocketAddr::from(([0, 0, 0, 2], 9999)),
        };
        assert_eq!(table.insert(dup, None, now), Inserted::Refused);
        let closest = table.closest(&nodes[3].id, 3, now);
        assert_eq!(closest[0], nodes[3]);
    }
}
