//! `DiscoveryConfig`: which backends run, where they bootstrap, and the timers.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::krpc::limit::RateLimitConfig;

/// Configuration of the `Discovery` actor.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// The node's QUIC port: what we announce on the DHT and advertise on the LAN.
    pub quic_port: u16,
    /// The Mainline DHT backend; `None` disables it.
    pub dht: Option<DhtConfig>,
    /// The LAN (mDNS) backend; `None` disables it.
    pub lan: Option<LanConfig>,
    /// Addresses looked up for every topic, reported with `PeerSource::Static`.
    pub static_peers: Vec<SocketAddr>,
    /// Announce and lookup timers.
    pub timing: Timing,
}

impl DiscoveryConfig {
    /// Every backend on, with its defaults: the public DHT in client mode and the LAN.
    pub fn new(quic_port: u16) -> Self {
        DiscoveryConfig {
            quic_port,
            dht: Some(DhtConfig::default()),
            lan: Some(LanConfig::default()),
            static_peers: Vec::new(),
            timing: Timing::default(),
        }
    }
}

/// Where the DHT node finds its first nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Bootstrap {
    /// The public bootstrap nodes ([`PUBLIC_BOOTSTRAP`]).
    #[default]
    Public,
    /// These `host:port` entries, resolved when the actor starts.
    Nodes(Vec<String>),
    /// None: the first node of a new network.
    None,
}

/// The public Mainline bootstrap nodes (the list `mainline` and libtorrent ship with).
pub const PUBLIC_BOOTSTRAP: &[&str] = &[
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "dht.libtorrent.org:25401",
    "router.utorrent.com:6881",
];

/// Whether the DHT node answers queries from other nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DhtMode {
    /// Read-only (BEP 43) until the network shows that it reaches us: the first query
    /// from an address we never sent to (a NAT or firewall would have dropped it) turns
    /// the node into a server for good. Why this is the default:
    /// `docs/decisions/051-dht-driver-default-backend.md`.
    #[default]
    Auto,
    /// Answer queries from the start (for testnets and well-connected long-running nodes).
    Server,
    /// Never answer queries; send `ro = 1` with ours (a node behind a NAT, or a client
    /// that must not be in others' tables).
    ReadOnly,
}

/// Configuration of the Mainline DHT backend.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// Auto, server or read-only.
    pub mode: DhtMode,
    /// Bootstrap nodes.
    pub bootstrap: Bootstrap,
    /// IPv4 address of the DHT's IPv4 socket; `None`: no IPv4 socket.
    pub bind: Option<Ipv4Addr>,
    /// IPv6 address of the DHT's IPv6 socket; `None`: no IPv6 socket. When it is the unspecified address `::` and the host has no IPv6,
    /// the node runs on IPv4 alone (with a warning) instead of failing.
    pub bind_v6: Option<Ipv6Addr>,
    /// UDP port of both sockets; `None`: 6881 if free, else any free port (each family
    /// falls back on its own). `Some(0)`: any free port.
    pub port: Option<u16>,
    /// Our node id; `None`: read from `id_file`, else random.
    pub node_id: Option<[u8; 20]>,
    /// Where the node id is kept (40 hex digits): read at start, written when it is
    /// created or changes (a BEP 42 id once the external address is known). The node
    /// keeps it in its data directory. `None`: not persisted.
    pub id_file: Option<PathBuf>,
    /// Where the routing tables' node addresses are saved (one a line): written after
    /// the first bootstrap and every [`crate::driver::SAVE_EVERY`], read at start and
    /// queried first when bootstrapping, so a restarted node finds its old neighbours
    /// without the public bootstrap nodes. `None`: not saved.
    pub nodes_file: Option<PathBuf>,
    /// At most one routing table entry per IP address. A loopback network, where every
    /// node has the same IP, turns it off.
    pub restrict_ips: bool,
    /// Queries answered per source address.
    pub rate_limit: RateLimitConfig,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            mode: DhtMode::Auto,
            bootstrap: Bootstrap::Public,
            bind: Some(Ipv4Addr::UNSPECIFIED),
            bind_v6: Some(Ipv6Addr::UNSPECIFIED),
            port: None,
            node_id: None,
            id_file: None,
            nodes_file: None,
            restrict_ips: true,
            rate_limit: RateLimitConfig::default(),
        }
    }
}

impl DhtConfig {
    /// A node of a private network on 127.0.0.1 (a `KrpcTestnet`),
    /// on any port, in server mode (on a network of our own there is nobody to be a bad
    /// citizen towards), IPv4 only. Every node there has the same IP, so one entry per
    /// IP is off and the per-source rate limit is raised.
    pub fn testnet(bootstrap: &[String]) -> Self {
        DhtConfig {
            mode: DhtMode::Server,
            bootstrap: Bootstrap::Nodes(bootstrap.to_vec()),
            bind: Some(Ipv4Addr::LOCALHOST),
            bind_v6: None,
            port: Some(0),
            restrict_ips: false,
            rate_limit: TESTNET_RATE_LIMIT,
            ..DhtConfig::default()
        }
    }

    /// Like [`DhtConfig::testnet`], on `::1` only.
    pub fn testnet_v6(bootstrap: &[String]) -> Self {
        DhtConfig {
            bind: None,
            bind_v6: Some(Ipv6Addr::LOCALHOST),
            ..DhtConfig::testnet(bootstrap)
        }
    }
}

/// The rate limit of a loopback test network: every node shares one source IP, so the
/// public limit (20/s per IP) would starve a 50-node network bootstrapping at once.
pub const TESTNET_RATE_LIMIT: RateLimitConfig = RateLimitConfig {
    per_second: 100_000.0,
    burst: 100_000.0,
    max_sources: 64,
};

/// Configuration of the LAN (mDNS) backend.
#[derive(Debug, Clone)]
pub struct LanConfig {
    /// How long a LAN lookup round listens before it counts as complete. Peers that
    /// answer later are still reported as they come.
    pub round: Duration,
    /// The mDNS UDP port (5353 on a real network).
    pub mdns_port: u16,
}

impl Default for LanConfig {
    fn default() -> Self {
        LanConfig {
            // mDNS answers on a LAN arrive within tens of milliseconds; one second also
            // covers the responders' random 20-120 ms answer delay and one query retry.
            round: Duration::from_secs(1),
            mdns_port: 5353,
        }
    }
}

/// Announce and lookup timers. Every interval gets random jitter so that many nodes that
/// joined together do not query the DHT in lock step.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Re-announce this often. BEP 5 nodes keep a record for about 30 minutes; 15 leaves
    /// room for one failed refresh.
    pub announce_interval: Duration,
    /// Retry a failed announce after this long.
    pub announce_retry: Duration,
    /// Each delay is multiplied by a random factor in `1 - jitter ..= 1 + jitter`.
    pub jitter: f64,
    /// After the join, the first lookup rounds follow each other with these delays (from
    /// the end of one round to the start of the next), so two nodes that join at the same
    /// moment find each other within seconds even if each one's first lookup ran before
    /// the other's announce was stored.
    pub join_lookup_delays: Vec<Duration>,
    /// After those, a lookup starts at a uniformly random delay in this range.
    pub lookup_interval: (Duration, Duration),
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            announce_interval: Duration::from_secs(15 * 60),
            announce_retry: Duration::from_secs(10),
            jitter: 0.1,
            join_lookup_delays: [1, 2, 4, 8, 15, 30]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            lookup_interval: (Duration::from_secs(60), Duration::from_secs(300)),
        }
    }
}
