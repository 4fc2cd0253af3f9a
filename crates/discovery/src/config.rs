//! `DiscoveryConfig`: which backends run, where they bootstrap, and the timers.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

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
    /// The public bootstrap nodes that `mainline` ships with.
    #[default]
    Public,
    /// These `host:port` entries, resolved when the actor starts (IPv4 only).
    Nodes(Vec<String>),
    /// None: the first node of a new network.
    None,
}

/// Whether the DHT node answers queries from other nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DhtMode {
    /// `mainline`'s adaptive mode: a read-only client (BEP 43) that switches itself to
    /// server after 15 minutes if it sees that it is reachable. See ARCHITECTURE.md for
    /// why this is the default.
    #[default]
    Client,
    /// Answer queries from the start (for testnets and well-connected long-running nodes).
    Server,
}

/// Configuration of the Mainline DHT backend.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// Client or server.
    pub mode: DhtMode,
    /// Bootstrap nodes.
    pub bootstrap: Bootstrap,
    /// IPv4 address to bind the DHT's UDP socket to (`mainline` is IPv4 only).
    pub bind: Ipv4Addr,
    /// UDP port; `None` lets `mainline` try 6881 and fall back to any free port.
    pub port: Option<u16>,
    /// Per-request timeout; `None` keeps `mainline`'s 2 s.
    pub request_timeout: Option<Duration>,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            mode: DhtMode::Client,
            bootstrap: Bootstrap::Public,
            bind: Ipv4Addr::UNSPECIFIED,
            port: None,
            request_timeout: None,
        }
    }
}

impl DhtConfig {
    /// A node of a private network (a `mainline::Testnet`), on loopback and any port, in
    /// server mode. Testnet nodes have no bootstrap list, and `mainline` then puts every
    /// node that sends them `find_node` in their routing tables, read-only clients
    /// included, which never answer: a client's lookups and announces waited out one
    /// request timeout each (join → connected with both nodes joining at once: ~590 ms
    /// as clients, ~60 ms as servers, `docs/PERFORMANCE.md`). On a network of our own
    /// there is nobody to be a bad citizen towards (see `DhtMode`). The request timeout
    /// is 500 ms: a loopback node answers in well under a millisecond.
    pub fn testnet(bootstrap: &[String]) -> Self {
        DhtConfig {
            mode: DhtMode::Server,
            bootstrap: Bootstrap::Nodes(bootstrap.to_vec()),
            bind: Ipv4Addr::LOCALHOST,
            port: Some(0),
            request_timeout: Some(Duration::from_millis(500)),
        }
    }
}

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
