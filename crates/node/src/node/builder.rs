//! `NodeBuilder`: every option of a node, from code or from the config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use replic8::feed_store::{FeedStoreConfig, FeedStoreError};
use replic8::keys::NamespaceSecret;
use replic8::store::RegisterError;
use replic8_connmgr::{Identity, TransportTuning};
use replic8_discovery::{Bootstrap, DhtConfig, DhtMode, Timing};

use crate::config::{ConfigError, LimitsSection, NodeConfig};
use crate::persist::PersistError;

use super::NamespaceSpec;

/// Where the node keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Storage {
    /// The platform's data directory.
    Default,
    /// This directory.
    Dir(PathBuf),
    /// Nothing on disk.
    Memory,
}

/// Options of a node; see [`Node::builder`](super::Node::builder).
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    pub(super) storage: Storage,
    pub(super) identity: Option<Identity>,
    pub(super) listen: SocketAddr,
    pub(super) dht: Option<DhtConfig>,
    /// The DHT runs on the QUIC socket (`[discovery] share_socket`).
    pub(super) share_socket: bool,
    pub(super) lan: bool,
    pub(super) static_peers: Vec<SocketAddr>,
    pub(super) timing: Timing,
    pub(super) limits: LimitsSection,
    pub(super) metrics: Option<SocketAddr>,
    pub(super) feed_store: FeedStoreConfig,
    pub(super) transport: TransportTuning,
    /// NAT traversal switches (the config's `[nat]`).
    pub(super) nat: crate::config::NatSection,
    /// Namespaces opened at every start, not persisted (the config's `[[namespace]]`).
    pub(super) namespaces: Vec<(String, Option<NamespaceSecret>, NamespaceSpec)>,
}

impl Default for NodeBuilder {
    fn default() -> Self {
        NodeBuilder {
            storage: Storage::Default,
            identity: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            dht: Some(DhtConfig::default()),
            share_socket: true,
            lan: true,
            static_peers: Vec::new(),
            timing: Timing::default(),
            limits: LimitsSection::default(),
            metrics: None,
            feed_store: FeedStoreConfig::default(),
            transport: TransportTuning::default(),
            nat: crate::config::NatSection::default(),
            namespaces: Vec::new(),
        }
    }
}

/// The default DHT config with the sockets `bind` names (both families when empty).
pub(super) fn dht_bind(bind: &[std::net::IpAddr]) -> DhtConfig {
    let mut dht = DhtConfig::default();
    if !bind.is_empty() {
        dht.bind = bind.iter().find_map(|ip| match ip {
            std::net::IpAddr::V4(v4) => Some(*v4),
            std::net::IpAddr::V6(_) => None,
        });
        dht.bind_v6 = bind.iter().find_map(|ip| match ip {
            std::net::IpAddr::V6(v6) => Some(*v6),
            std::net::IpAddr::V4(_) => None,
        });
    }
    dht
}

impl NodeBuilder {
    /// A builder with every option of a validated [`NodeConfig`].
    pub fn from_config(config: &NodeConfig) -> Result<NodeBuilder, ConfigError> {
        config.validate()?;
        let d = &config.discovery;
        let dht = d.dht.then(|| DhtConfig {
            mode: if d.dht_server {
                DhtMode::Server
            } else if d.dht_read_only {
                DhtMode::ReadOnly
            } else {
                DhtMode::Auto
            },
            bootstrap: match &d.bootstrap {
                None => Bootstrap::Public,
                Some(list) if list.is_empty() => Bootstrap::None,
                Some(list) => Bootstrap::Nodes(list.clone()),
            },
            port: d.dht_port,
            ..dht_bind(&d.dht_bind)
        });
        let timing = Timing {
            announce_interval: Duration::from_secs(d.announce_interval_secs),
            lookup_interval: (
                Duration::from_secs(d.lookup_interval_secs),
                Duration::from_secs(d.lookup_interval_secs.saturating_mul(2)),
            ),
            ..Timing::default()
        };
        Ok(NodeBuilder {
            storage: if config.in_memory {
                Storage::Memory
            } else {
                match &config.data_dir {
                    Some(dir) => Storage::Dir(dir.clone()),
                    None => Storage::Default,
                }
            },
            identity: None,
            listen: config.listen,
            dht,
            share_socket: d.share_socket,
            lan: d.lan,
            static_peers: d.static_peers.clone(),
            timing,
            limits: config.limits.clone(),
            metrics: config.metrics.listen,
            feed_store: FeedStoreConfig::default(),
            transport: TransportTuning::default(),
            nat: config.nat.clone(),
            namespaces: config.open_namespaces()?,
        })
    }

    /// Open `name` at every start with `secret` (if any) under `spec`, without
    /// persisting it (as the config's `[[namespace]]` does). It takes precedence over a
    /// namespace of that name opened and persisted before.
    pub fn namespace(
        mut self,
        name: impl Into<String>,
        secret: Option<NamespaceSecret>,
        spec: NamespaceSpec,
    ) -> Self {
        self.namespaces.push((name.into(), secret, spec));
        self
    }

    /// Keep the identity, feeds, joins and shares in `dir` (created 0700 if missing).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.storage = Storage::Dir(dir.into());
        self
    }

    /// Keep nothing on disk: a new identity unless one is given, nothing resumed.
    pub fn in_memory(mut self) -> Self {
        self.storage = Storage::Memory;
        self
    }

    /// Use this identity instead of the persisted (or a new) one.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The UDP address of the QUIC endpoint (port 0: any free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Bootstrap the DHT from these `host:port` nodes instead of the public ones.
    pub fn bootstrap(mut self, nodes: Vec<String>) -> Self {
        let dht = self.dht.get_or_insert_with(DhtConfig::default);
        dht.bootstrap = Bootstrap::Nodes(nodes);
        self
    }

    /// Use a private DHT (a `KrpcTestnet` on loopback) with these bootstrap nodes:
    /// the DHT binds 127.0.0.1 and uses short request timeouts (`DhtConfig::testnet`).
    pub fn testnet(mut self, bootstrap: &[String]) -> Self {
        self.dht = Some(DhtConfig::testnet(bootstrap));
        self
    }

    /// The DHT backend's whole configuration.
    pub fn dht_config(mut self, config: DhtConfig) -> Self {
        self.dht = Some(config);
        self
    }

    /// Run the DHT on the QUIC socket (on by default; see `[discovery] share_socket`),
    /// or, off, on sockets of its own as the DHT config says.
    pub fn share_socket(mut self, on: bool) -> Self {
        self.share_socket = on;
        self
    }

    /// Use the Mainline DHT (on by default).
    pub fn dht(mut self, on: bool) -> Self {
        self.dht = if on {
            Some(self.dht.unwrap_or_default())
        } else {
            None
        };
        self
    }

    /// Use mDNS on the local network (on by default).
    pub fn lan(mut self, on: bool) -> Self {
        self.lan = on;
        self
    }

    /// Addresses tried for every joined topic.
    pub fn static_peers(mut self, peers: Vec<SocketAddr>) -> Self {
        self.static_peers = peers;
        self
    }

    /// Announce and lookup timers.
    pub fn discovery_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Connection and stream limits.
    pub fn limits(mut self, limits: LimitsSection) -> Self {
        self.limits = limits;
        self
    }

    /// How the default feed store syncs and which offers it accepts (all, by default).
    pub fn feed_store(mut self, config: FeedStoreConfig) -> Self {
        self.feed_store = config;
        self
    }

    /// NAT traversal switches (observed addresses, dial-backs).
    pub fn nat(mut self, nat: crate::config::NatSection) -> Self {
        self.nat = nat;
        self
    }

    /// QUIC transport settings (windows, keep-alive, idle timeout). Tests shorten the
    /// idle timeout so that a cut connection is noticed in a second or two.
    pub fn transport(mut self, tuning: TransportTuning) -> Self {
        self.transport = tuning;
        self
    }

    /// Serve the counters in Prometheus text format on this HTTP address.
    pub fn metrics(mut self, addr: SocketAddr) -> Self {
        self.metrics = Some(addr);
        self
    }
}

/// What starting a node can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The configuration is invalid or names no data directory.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The identity or state file could not be loaded.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// The QUIC endpoint could not start (e.g. the address is in use).
    #[error("connections: {0}")]
    Connections(#[from] replic8_connmgr::SpawnError),
    /// Discovery could not start (e.g. a bad bootstrap entry).
    #[error("discovery: {0}")]
    Discovery(#[from] replic8_discovery::SpawnError),
    /// The feed store could not open its storage.
    #[error("feed store: {0}")]
    Feeds(#[from] FeedStoreError),
    /// The feed store could not be registered for a persisted namespace.
    #[error("feed store: {0}")]
    Register(#[from] RegisterError),
    /// The metrics endpoint could not bind its address.
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The node's thread could not start or died while starting.
    #[error("node thread: {0}")]
    Thread(String),
}
