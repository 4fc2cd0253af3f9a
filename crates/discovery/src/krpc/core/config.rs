//! `DhtCoreConfig` and the core's fixed bounds.

use std::time::Duration;

use crate::krpc::limit::RateLimitConfig;
use crate::krpc::peers::PeerStoreConfig;

/// Queries in flight per lookup (BEP 5's Kademlia alpha).
pub const ALPHA: usize = 3;

/// How often expired announces are dropped and stale buckets refreshed.
pub const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);

/// Peers remembered per lookup to report each one once; more are dropped. A swarm
/// larger than this is beyond what one node dials.
pub const MAX_PEERS_PER_LOOKUP: usize = 1024;

/// Pings in flight to verify nodes that queried us. Anyone can query us from any
/// (spoofed) address; without this bound, a flood of queriers would fill our pending
/// queries and starve our own lookups.
pub const MAX_VERIFY_PINGS: usize = 64;

/// What the core does and how much it accepts.
#[derive(Debug, Clone)]
pub struct DhtCoreConfig {
    /// BEP 43 read-only: send `ro = 1` with every query and answer no query. For a node
    /// that others cannot reach (behind a NAT or firewall).
    pub read_only: bool,
    /// Take part in the IPv4 DHT.
    pub ipv4: bool,
    /// Take part in the IPv6 DHT (BEP 32).
    pub ipv6: bool,
    /// At most one routing table entry per IP address. A loopback test network, where
    /// every node has the same IP, turns it off.
    pub restrict_ips: bool,
    /// Keep out of the routing table nodes whose id is not a valid BEP 42 id for their
    /// (public) IP. Off by default, as in libtorrent: many nodes still lack such ids.
    pub enforce_bep42: bool,
    /// Switch to a BEP 42 id once the external address is known and our id is not
    /// valid for it.
    pub bep42_id: bool,
    /// Queries in flight per lookup.
    pub alpha: usize,
    /// Distinct nodes that must report the same external IP before we believe it.
    pub min_votes: usize,
    /// Lookups running at once (each holds up to `alpha` queries in flight).
    pub max_lookups: usize,
    /// Queries of ours awaiting an answer, over all lookups and pings.
    pub max_pending: usize,
    /// Our `v` field: two letters for the client, two bytes of version.
    pub version: Option<[u8; 4]>,
    /// Per-source rate limit on queries answered.
    pub rate_limit: RateLimitConfig,
    /// Bounds of the store of announced peers.
    pub peer_store: PeerStoreConfig,
}

impl Default for DhtCoreConfig {
    fn default() -> Self {
        DhtCoreConfig {
            read_only: false,
            ipv4: true,
            ipv6: true,
            restrict_ips: true,
            enforce_bep42: false,
            bep42_id: true,
            alpha: ALPHA,
            // Three agreeing nodes: one liar or one NAT-confused node cannot move us.
            min_votes: 3,
            max_lookups: 64,
            // 64 lookups of 3 in flight, plus pings, plus slow queries still open.
            max_pending: 1024,
            version: Some(*b"R8\x00\x01"),
            rate_limit: RateLimitConfig::default(),
            peer_store: PeerStoreConfig::default(),
        }
    }
}
