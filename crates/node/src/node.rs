//! [`Node::builder`] → [`NodeBuilder::spawn`] → [`NodeHandle`]: the embedding API.
//!
//! The node runs its actors (discovery, connection manager, sessions, stores and the
//! wiring between them) in an actix `System` on a multi-thread tokio runtime, in a thread
//! of its own. The handle talks to the actors through their addresses, whose futures are
//! `Send`, so it works from any async code (`#[tokio::main]`, a test, another runtime).
//! [`NodeHandle::close`] shuts everything down in order and waits for the thread to end:
//! no task of the node outlives it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use replic8::actor::{ListSessions, PeerEvent, SessionsActor, StopSession};
use replic8::feed_store::{
    AcceptPolicy, Append, FeedInfo, FeedState, FeedStoreConfig, FeedStoreError, FeedStoreEvent,
    FeedStoreStats, GetStats, NamespacePolicy, OpenFeed, ReadRange, ServeNamespace,
    SetNamespacePolicy, ShareFeed,
};
use replic8::keys::{FeedKey, NamespaceSecret};
use replic8::message::CloseCode;
use replic8::message::Headers;
use replic8::session::{SessionConfig, SessionEvent};
use replic8::store::{
    Attach, Detach, KnownFeeds, Offer, RegisterError, RegisterStore, Shares, StoreRecipients,
};
use replic8_connmgr::{
    ConnManager, ConnManagerConfig, ConnManagerHandle, Identity, PeerActivity, PeerKey, PeerStats,
    PolicyConfig, TransportTuning,
};
use replic8_discovery::{
    Bootstrap, DhtConfig, DhtMode, DiscoveryActor, DiscoveryConfig, JoinReport, LanConfig, Timing,
    Topic, TopicError,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::config::{ConfigError, LimitsSection, NodeConfig};
use crate::events::{NodeEvent, EVENT_CAPACITY};
use crate::feeds::{self, FeedStoreRecipients};
use crate::metrics::{Counters, MetricsEndpoint};
use crate::persist::{
    self, PersistError, PersistedJoin, PersistedPolicy, PersistedShare, PersistedState,
};

use crate::lifecycle::{
    BeginClose, CancelRedial, LifecycleActor, LifecycleConfig, Redialing, Requested, SessionEnded,
    TopicLeft,
};
#[cfg(test)]
mod lifecycle_tests;
mod namespaces;
pub use namespaces::{
    parse_secret, AcceptMode, NamespaceError, NamespaceSpec, NamespaceStatus, OfferRecord,
    OFFER_LOG,
};

/// How long `close` lets sessions send their close before it moves on. The session layer
/// itself gives up after 2 s (`SessionsActor`'s grace period); this is a guard above it.
const SESSION_CLOSE_GUARD: Duration = Duration::from_secs(3);

/// Quinn's default `max_concurrent_bidi_streams`: the connection manager keeps it, so a
/// session may open at most this many streams, the control stream included.
const QUIC_BIDI_STREAMS: u32 = 100;

/// Entry point: `Node::builder()`.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// A builder with the defaults: data in the platform's data directory, a new or
    /// persisted identity, QUIC on all IPv4 interfaces on a free port, the public DHT in
    /// client mode, LAN discovery on, no metrics endpoint.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }
}

/// Where the node keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Storage {
    /// The platform's data directory.
    Default,
    /// This directory.
    Dir(PathBuf),
    /// Nothing on disk.
    Memory,
}

/// Options of a node; see [`Node::builder`].
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    storage: Storage,
    identity: Option<Identity>,
    listen: SocketAddr,
    dht: Option<DhtConfig>,
    lan: bool,
    static_peers: Vec<SocketAddr>,
    timing: Timing,
    limits: LimitsSection,
    metrics: Option<SocketAddr>,
    feed_store: FeedStoreConfig,
    transport: TransportTuning,
    /// Namespaces opened at every start, not persisted (the config's `[[namespace]]`).
    namespaces: Vec<(String, Option<NamespaceSecret>, NamespaceSpec)>,
}

impl Default for NodeBuilder {
    fn default() -> Self {
        NodeBuilder {
            storage: Storage::Default,
            identity: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            dht: Some(DhtConfig::default()),
            lan: true,
            static_peers: Vec::new(),
            timing: Timing::default(),
            limits: LimitsSection::default(),
            metrics: None,
            feed_store: FeedStoreConfig::default(),
            transport: TransportTuning::default(),
            namespaces: Vec::new(),
        }
    }
}

/// The default DHT config with the sockets `bind` names (both families when empty).
fn dht_bind(bind: &[std::net::IpAddr]) -> DhtConfig {
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
            lan: d.lan,
            static_peers: d.static_peers.clone(),
            timing,
            limits: config.limits.clone(),
            metrics: config.metrics.listen,
            feed_store: FeedStoreConfig::default(),
            transport: TransportTuning::default(),
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

    /// Start the node: load or create the identity, start the actors in their own thread,
    /// resume the persisted joins. Call from any async context.
    pub async fn spawn(self) -> Result<NodeHandle, SpawnError> {
        let data_dir = match &self.storage {
            Storage::Memory => None,
            Storage::Dir(dir) => Some(dir.clone()),
            Storage::Default => Some(NodeConfig::default().resolve_data_dir()?),
        };
        let prepared = {
            let data_dir = data_dir.clone();
            let identity = self.identity.clone();
            tokio::task::spawn_blocking(move || prepare(data_dir.as_deref(), identity))
                .await
                .map_err(|e| SpawnError::Thread(e.to_string()))??
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let (exited_tx, exited_rx) = oneshot::channel();
        let (run_tx, run_rx) = mpsc::unbounded_channel::<SystemJob>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let builder = self;
        std::thread::Builder::new()
            .name("replic8-node".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("replic8-rt")
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(SpawnError::Thread(format!(
                            "cannot build the node's runtime: {e}"
                        ))));
                        let _ = exited_tx.send(());
                        return;
                    }
                };
                let system = System::with_tokio_rt(move || runtime);
                system.block_on(async move {
                    match start(builder, prepared, data_dir).await {
                        Ok(started) => {
                            let _ = ready_tx.send(Ok(started));
                            run_jobs(run_rx, stop_rx).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
                System::current().stop();
                drop(system);
                let _ = exited_tx.send(());
            })
            .map_err(|e| SpawnError::Thread(e.to_string()))?;
        let started = ready_rx
            .await
            .map_err(|_| SpawnError::Thread("the node thread ended while starting".into()))??;
        Ok(NodeHandle {
            inner: Arc::new(Inner {
                started,
                run: run_tx,
                stop: Mutex::new(Some(stop_tx)),
                exited: tokio::sync::Mutex::new(Some(exited_rx)),
                join_lock: tokio::sync::Mutex::new(()),
            }),
        })
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

/// The identity and state, loaded off the async runtime.
#[derive(Debug)]
struct Prepared {
    identity: Identity,
    state: PersistedState,
}

fn prepare(data_dir: Option<&Path>, identity: Option<Identity>) -> Result<Prepared, PersistError> {
    let Some(dir) = data_dir else {
        return Ok(Prepared {
            identity: identity.unwrap_or_else(Identity::generate),
            state: PersistedState::default(),
        });
    };
    persist::ensure_dir(dir)?;
    let identity = match identity {
        Some(identity) => identity,
        None => Identity::from_secret_bytes(persist::load_or_create_identity(dir)?.to_bytes()),
    };
    Ok(Prepared {
        identity,
        state: PersistedState::load(dir)?,
    })
}

/// A closure run inside the node's actix system (to start actors there).
type SystemJob = Box<dyn FnOnce() + Send>;

async fn run_jobs(mut jobs: mpsc::UnboundedReceiver<SystemJob>, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            job = jobs.recv() => match job {
                Some(job) => job(),
                None => return,
            },
        }
    }
}

/// The running node's parts, shared by every clone of the handle.
#[derive(Debug)]
struct Started {
    conn: ConnManagerHandle,
    discovery: Addr<DiscoveryActor>,
    sessions: Addr<SessionsActor>,
    lifecycle: Addr<LifecycleActor>,
    feeds: FeedStoreRecipients,
    /// Namespaces the feed store is registered for, with their secret.
    namespaces: tokio::sync::Mutex<std::collections::HashMap<String, Option<NamespaceSecret>>>,
    /// The policies of the namespaces the builder (the config) opens at every start.
    config_namespaces: std::collections::HashMap<String, NamespaceSpec>,
    /// The recent offers of peers.
    offers: Arc<Mutex<namespaces::OfferLog>>,
    /// Each offered feed's decision as it happens.
    offer_events: broadcast::Sender<OfferRecord>,
    events: broadcast::Sender<NodeEvent>,
    counters: Arc<Counters>,
    data_dir: Option<PathBuf>,
    state: tokio::sync::Mutex<PersistedState>,
    metrics: Mutex<Option<MetricsEndpoint>>,
    metrics_addr: Option<SocketAddr>,
}

/// Runs inside the system: start every actor and wire them.
async fn start(
    builder: NodeBuilder,
    prepared: Prepared,
    data_dir: Option<PathBuf>,
) -> Result<Started, SpawnError> {
    let counters = Arc::new(Counters::default());
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    let max_streams = u32::try_from(builder.limits.max_feed_streams)
        .unwrap_or(u32::MAX)
        .clamp(1, QUIC_BIDI_STREAMS - 1);
    let session_config = SessionConfig {
        max_streams,
        stall_timeout: Duration::from_secs(builder.limits.stall_timeout_secs.max(1)),
        ..SessionConfig::default()
    };
    let conn_config = ConnManagerConfig {
        policy: PolicyConfig {
            max_peers: builder.limits.max_peers,
            max_pending_dials: builder.limits.max_pending_dials,
            reserved_outbound: builder.limits.reserved_outbound,
            max_peers_per_ip: builder.limits.max_peers_per_ip,
            max_pending_per_ip: builder.limits.max_pending_per_ip,
            retry_above: builder.limits.retry_above,
            ..PolicyConfig::default()
        },
        transport: builder.transport.clone(),
        ..ConnManagerConfig::new(prepared.identity)
            .with_listen(builder.listen)
            .with_alpn(vec![replic8::message::ALPN.to_vec()])
    };
    let conn = ConnManager::spawn(conn_config)?;
    let local = conn.local_addr();
    // The DHT node id and its neighbours live beside the identity, unless configured.
    let dht = builder.dht.clone().map(|mut dht| {
        if dht.id_file.is_none() && dht.node_id.is_none() {
            dht.id_file = data_dir.as_ref().map(|dir| dir.join("dht-id"));
        }
        if dht.nodes_file.is_none() {
            dht.nodes_file = data_dir.as_ref().map(|dir| dir.join("dht-nodes"));
        }
        dht
    });
    let discovery_config = DiscoveryConfig {
        quic_port: local.port(),
        dht,
        lan: builder.lan.then(LanConfig::default),
        static_peers: builder.static_peers.clone(),
        timing: builder.timing.clone(),
    };
    let discovery = match DiscoveryActor::spawn(discovery_config).await {
        Ok(d) => d,
        Err(e) => {
            conn.close().await;
            return Err(e.into());
        }
    };
    let (session_tx, session_rx) = mpsc::unbounded_channel();
    let sessions = SessionsActor::new(session_config, Some(session_tx)).start();
    let (feed_tx, feed_rx) = mpsc::unbounded_channel();
    let feeds = match feeds::start(
        data_dir.as_deref(),
        feed_store_config(&builder.feed_store, &builder.limits),
        sessions.clone(),
        feed_tx,
    )
    .await
    {
        Ok(f) => f,
        Err(e) => {
            let _ = discovery.send(replic8_discovery::Close).await;
            conn.close().await;
            return Err(e.into());
        }
    };
    let offers = Arc::new(Mutex::new(namespaces::OfferLog::default()));
    let (offer_events, _) = broadcast::channel(OFFER_LOG);
    actix::spawn(forward_feed_events(
        feed_rx,
        events.clone(),
        counters.clone(),
        conn.addr().clone(),
        offers.clone(),
        offer_events.clone(),
    ));
    // The config's namespaces, then those the user opened (persisted with their secret
    // and policy), each with its secret and policy.
    let mut namespaces = std::collections::HashMap::new();
    let config_namespaces: std::collections::HashMap<String, NamespaceSpec> = builder
        .namespaces
        .iter()
        .map(|(name, _, spec)| (name.clone(), spec.clone()))
        .collect();
    let opened = prepared.state.opened.iter().filter_map(|(name, p)| {
        let secret = match p.secret.as_deref().map(parse_secret).transpose() {
            Ok(secret) => secret,
            Err(e) => {
                warn!(namespace = %name, error = %e, "persisted namespace skipped");
                return None;
            }
        };
        Some((name.clone(), secret, p.spec.clone()))
    });
    let wanted_specs: Vec<_> = builder.namespaces.iter().cloned().chain(opened).collect();
    for (name, secret, spec) in wanted_specs {
        if name.is_empty() || namespaces.contains_key(&name) {
            continue;
        }
        let served = feeds
            .serve
            .send(ServeNamespace {
                namespace: name.clone(),
                secret: secret.clone(),
                policy: spec.policy(),
            })
            .await;
        if let Ok(Err(e)) = served {
            let _ = discovery.send(replic8_discovery::Close).await;
            conn.close().await;
            return Err(e.into());
        }
        namespaces.insert(name, secret);
    }
    // The public namespace, every other persisted one and those of the shares, each with
    // its persisted policy (held-only unless the user opened it with another).
    let wanted = std::iter::once(String::new())
        .chain(prepared.state.namespaces.iter().cloned())
        .chain(prepared.state.shares.iter().map(|s| s.namespace.clone()));
    for name in wanted {
        if !namespaces.contains_key(&name) {
            namespaces.insert(name.clone(), None);
            let policy = prepared
                .state
                .policies
                .get(&name)
                .filter(|_| !name.is_empty())
                .map_or_else(NamespacePolicy::held_only, |p| policy_of(*p));
            let served = feeds
                .serve
                .send(ServeNamespace {
                    namespace: name,
                    secret: None,
                    policy,
                })
                .await;
            if let Ok(Err(e)) = served {
                let _ = discovery.send(replic8_discovery::Close).await;
                conn.close().await;
                return Err(e.into());
            }
        }
    }
    for share in &prepared.state.shares {
        let headers = match Headers::try_from(share.headers.clone()) {
            Ok(h) => h,
            Err(e) => {
                warn!(feed = %hex::encode(&share.feed[..5]), error = %e, "persisted share skipped");
                continue;
            }
        };
        let request = feeds.share.send(ShareFeed {
            namespace: share.namespace.clone(),
            feed: FeedKey(share.feed),
            headers,
        });
        let feed = FeedKey(share.feed);
        actix::spawn(async move {
            if let Ok(Err(e)) = request.await {
                warn!(feed = %feed.fmt_short(), error = %e, "resumed share failed");
            }
        });
    }
    let lifecycle = LifecycleActor::new(
        LifecycleConfig::new(local, Duration::from_secs(builder.limits.ban_secs)),
        conn.addr().clone(),
        discovery.clone(),
        sessions.clone(),
        events.clone(),
        counters.clone(),
    )
    .start();
    actix::spawn(forward_session_events(
        session_rx,
        events.clone(),
        counters.clone(),
        lifecycle.clone(),
        conn.addr().clone(),
    ));
    // Subscriptions are FIFO with every later message, so nothing found or connected
    // after this point is missed.
    let _ = discovery
        .send(replic8_discovery::Subscribe(lifecycle.clone().recipient()))
        .await;
    let _ = conn
        .addr()
        .send(replic8_connmgr::Subscribe {
            peer_up: lifecycle.clone().recipient(),
            peer_down: lifecycle.clone().recipient(),
        })
        .await;
    // The DHT node keeps its own counters: copied into ours at each scrape.
    let refresh: crate::metrics::Refresh = {
        let (discovery, counters) = (discovery.clone(), counters.clone());
        Arc::new(move || {
            let (discovery, counters) = (discovery.clone(), counters.clone());
            Box::pin(async move {
                if let Ok(Some(dht)) = discovery.send(replic8_discovery::DhtInfo).await {
                    counters.dht_nodes.set((dht.nodes_v4 + dht.nodes_v6) as u64);
                    counters.dht_queries_in.set(dht.stats.queries_in);
                    counters.dht_queries_out.set(dht.stats.queries_out);
                    counters.dht_timeouts.set(dht.stats.timeouts);
                    counters
                        .dht_announces_stored
                        .set(dht.stats.announces_stored);
                }
            })
        })
    };
    let metrics = match builder.metrics {
        Some(addr) => match MetricsEndpoint::bind_with(addr, counters.clone(), Some(refresh)).await
        {
            Ok(m) => Some(m),
            Err(source) => {
                let _ = discovery.send(replic8_discovery::Close).await;
                conn.close().await;
                return Err(SpawnError::Metrics { addr, source });
            }
        },
        None => None,
    };
    let metrics_addr = metrics.as_ref().map(MetricsEndpoint::local_addr);
    // Resume what was joined before the restart. Joins are queued in the actor's mailbox
    // now (so `joined` answers true at once); their first rounds run in the background.
    for join in &prepared.state.joins {
        let request = discovery.send(replic8_discovery::Join {
            topic: Topic(join.topic),
            announce: join.announce,
            lookup: join.lookup,
        });
        let topic = Topic(join.topic);
        actix::spawn(async move {
            match request.await {
                Ok(Ok(report)) => info!(topic = %topic.fmt_short(), ?report, "resumed join"),
                Ok(Err(e)) => warn!(topic = %topic.fmt_short(), error = %e, "resumed join failed"),
                Err(_) => {}
            }
        });
    }
    counters.topics.set(prepared.state.joins.len() as u64);
    info!(
        me = %conn.key().fmt_short(),
        quic = %local,
        resumed = prepared.state.joins.len(),
        "node started"
    );
    Ok(Started {
        conn,
        discovery,
        sessions,
        lifecycle,
        feeds,
        namespaces: tokio::sync::Mutex::new(namespaces),
        config_namespaces,
        offers,
        offer_events,
        events,
        counters,
        data_dir,
        state: tokio::sync::Mutex::new(prepared.state),
        metrics: Mutex::new(metrics),
        metrics_addr,
    })
}

/// The feed store's settings: the builder's, with the quotas that `[limits]` sets.
fn feed_store_config(config: &FeedStoreConfig, limits: &LimitsSection) -> FeedStoreConfig {
    let mut config = config.clone();
    if let Some(n) = limits.new_feeds_per_peer {
        config.limits.new_feeds_per_peer = n;
    }
    if let Some(n) = limits.max_replicas {
        config.limits.max_replicas = n;
    }
    config
}

/// The store policy of a persisted one.
fn policy_of(p: PersistedPolicy) -> NamespacePolicy {
    NamespacePolicy {
        accept: if p.accept_all {
            AcceptPolicy::All
        } else {
            AcceptPolicy::HeldOnly
        },
        forward: p.forward,
    }
}

/// What of `policy` can be persisted: `None` for held-only without forwarding (the
/// default) and for the kinds that live in the program (a predicate, a callback).
fn persisted_policy(policy: &NamespacePolicy) -> Option<PersistedPolicy> {
    let accept_all = match policy.accept {
        AcceptPolicy::All => true,
        AcceptPolicy::HeldOnly => false,
        // A manual, headers-match or none policy is persisted by `open_namespace_spec`.
        AcceptPolicy::None
        | AcceptPolicy::HeadersMatch(_)
        | AcceptPolicy::Manual
        | AcceptPolicy::Headers(_)
        | AcceptPolicy::Callback(_) => return None,
    };
    (accept_all || policy.forward).then_some(PersistedPolicy {
        accept_all,
        forward: policy.forward,
    })
}

/// How often at most one forwarder tells the connection manager that a peer is active:
/// well under the connection manager's eviction grace (10 s), so a peer that reconnected
/// (its new connection starts idle) is marked again before it could be evicted.
const MARK_EVERY: Duration = Duration::from_secs(3);

/// Most peers a forwarder remembers marking; past it the memory starts over (a bound:
/// forgetting costs one repeated message).
const MARKED_CAP: usize = 4096;

/// Peers a forwarder marked active, and when.
#[derive(Debug, Default)]
struct Marked(std::collections::HashMap<PeerKey, std::time::Instant>);

impl Marked {
    /// Tells the connection manager that `peer` is worth its slot (it proved a
    /// namespace of ours, accepted or sent feeds, or synced one), at most every
    /// [`MARK_EVERY`]. Inbound peers never marked are the first evicted when the peer
    /// table is full.
    fn mark(&mut self, conn: &Addr<ConnManager>, peer: PeerKey) {
        let now = std::time::Instant::now();
        if self
            .0
            .get(&peer)
            .is_some_and(|at| now.duration_since(*at) < MARK_EVERY)
        {
            return;
        }
        if self.0.len() >= MARKED_CAP {
            self.0.clear();
        }
        self.0.insert(peer, now);
        conn.do_send(PeerActivity {
            key: peer,
            active: true,
        });
    }
}

/// Turns session events into node events and counters, and marks peers that do
/// something useful as active ([`Marked::mark`]).
async fn forward_session_events(
    mut rx: mpsc::UnboundedReceiver<PeerEvent>,
    events: broadcast::Sender<NodeEvent>,
    counters: Arc<Counters>,
    lifecycle: Addr<LifecycleActor>,
    conn: Addr<ConnManager>,
) {
    let mut established = std::collections::HashMap::<PeerKey, u64>::new();
    let mut marked = Marked::default();
    while let Some(PeerEvent { peer, event }) = rx.recv().await {
        let peer = PeerKey::from_bytes(peer.0);
        if matches!(
            event,
            SessionEvent::NamespaceProven { .. }
                | SessionEvent::Accepted { .. }
                | SessionEvent::FeedSynced { .. }
        ) {
            marked.mark(&conn, peer);
        }
        let event = match event {
            SessionEvent::Established => {
                *established.entry(peer).or_default() += 1;
                counters.sessions.add(1);
                NodeEvent::SessionUp { peer }
            }
            SessionEvent::NamespaceProven { .. } => continue,
            SessionEvent::FeedStopped { feed, reason } => {
                warn!(peer = %peer.fmt_short(), feed = %feed.fmt_short(), %reason, "feed stopped on this session");
                NodeEvent::FeedStopped { peer, feed, reason }
            }
            SessionEvent::Offered {
                namespace, feeds, ..
            } => NodeEvent::Offered {
                peer,
                namespace,
                feeds,
            },
            SessionEvent::Accepted { namespace, feeds } => NodeEvent::Accepted {
                peer,
                namespace,
                feeds,
            },
            SessionEvent::FeedSynced { feed, length } => {
                NodeEvent::FeedSynced { peer, feed, length }
            }
            SessionEvent::SessionEnded { reason } => {
                // A new connection of the peer starts idle in the connection manager.
                marked.0.remove(&peer);
                if let Some(n) = established.get_mut(&peer).filter(|n| **n > 0) {
                    *n -= 1;
                    counters.sessions.sub(1);
                }
                let clean = [CloseCode::DONE, CloseCode::CLOSED].contains(&reason.code);
                if !clean && reason.by == replic8::session::Side::Local {
                    counters.sessions_failed.add(1);
                }
                let text = reason.to_string();
                lifecycle.do_send(SessionEnded { peer, reason });
                NodeEvent::SessionEnded { peer, reason: text }
            }
        };
        let _ = events.send(event);
    }
}

/// Turns feed store events into node events and counters; a peer whose feed we
/// accepted or that sent us verified blocks is marked active ([`Marked::mark`]).
async fn forward_feed_events(
    mut rx: mpsc::UnboundedReceiver<FeedStoreEvent>,
    events: broadcast::Sender<NodeEvent>,
    counters: Arc<Counters>,
    conn: Addr<ConnManager>,
    offers: Arc<Mutex<namespaces::OfferLog>>,
    offer_events: broadcast::Sender<OfferRecord>,
) {
    let key = |p: replic8::keys::PeerKey| PeerKey::from_bytes(p.0);
    let mut marked = Marked::default();
    while let Some(event) = rx.recv().await {
        if let FeedStoreEvent::Accepted { peer, .. } | FeedStoreEvent::Downloaded { peer, .. } =
            &event
        {
            marked.mark(&conn, key(*peer));
        }
        let event = match event {
            FeedStoreEvent::Accepted {
                namespace,
                feed,
                peer,
                ..
            } => NodeEvent::FeedAccepted {
                peer: key(peer),
                namespace,
                feed,
            },
            FeedStoreEvent::Downloaded {
                feed,
                peer,
                blocks,
                bytes,
            } => {
                counters.blocks_verified.add(blocks);
                NodeEvent::Downloaded {
                    peer: key(peer),
                    feed,
                    blocks,
                    bytes,
                }
            }
            FeedStoreEvent::Refused { refused, .. } => {
                counters
                    .offers_refused
                    .add(refused.policy + refused.elsewhere + refused.quota);
                continue;
            }
            FeedStoreEvent::FeedSynced { .. } => continue,
            // Per feed, so a flood of offers makes many: they go to the offer log and
            // its own channel, never to the node's events (whose subscribers would lag).
            FeedStoreEvent::OfferDecided { .. } => {
                let record = offers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .record(&event);
                if let Some(record) = record {
                    let _ = offer_events.send(record);
                }
                continue;
            }
            FeedStoreEvent::SyncFailed { feed, peer, reason } => {
                counters.verify_failures.add(1);
                NodeEvent::SyncFailed {
                    peer: key(peer),
                    feed,
                    reason,
                }
            }
        };
        let _ = events.send(event);
    }
}

/// How to join a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinOptions {
    /// Announce ourselves for the topic so that others find us.
    pub announce: bool,
    /// Look up the topic's peers and connect to them.
    pub lookup: bool,
}

impl Default for JoinOptions {
    /// Both.
    fn default() -> Self {
        JoinOptions {
            announce: true,
            lookup: true,
        }
    }
}

/// The node is closed (or its thread died).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the node is closed")]
pub struct NodeClosed;

/// What `join` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The node is closed.
    #[error(transparent)]
    Closed(#[from] NodeClosed),
    /// Discovery refused the join.
    #[error(transparent)]
    Discovery(#[from] replic8_discovery::JoinError),
    /// The join could not be persisted (it is active until the node stops).
    #[error("join not persisted: {0}")]
    Persist(#[from] PersistError),
}

/// What `leave` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LeaveError {
    /// The node is closed.
    #[error(transparent)]
    Closed(#[from] NodeClosed),
    /// The topic was not joined.
    #[error(transparent)]
    Discovery(#[from] TopicError),
    /// The leave could not be persisted (the topic would be joined again after a restart).
    #[error("leave not persisted: {0}")]
    Persist(#[from] PersistError),
}

/// What `flushed` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FlushedError {
    /// The node is closed.
    #[error(transparent)]
    Closed(#[from] NodeClosed),
    /// The topic is not joined (or was left while waiting).
    #[error(transparent)]
    Topic(#[from] TopicError),
}

/// What `add_store` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AddStoreError {
    /// The node is closed.
    #[error(transparent)]
    Closed(#[from] NodeClosed),
    /// A namespace is served by another store already.
    #[error(transparent)]
    Register(#[from] RegisterError),
}

/// A connected peer, as `peers` lists it.
pub type PeerInfo = PeerStats;

/// What a store constructor gets from [`NodeHandle::add_store`].
#[derive(Debug, Clone)]
pub struct StoreContext {
    /// The session layer, for the store's `Share`, `FeedSynced`, `FeedUpdated` and
    /// `StreamEnded` messages.
    pub sessions: Addr<SessionsActor>,
}

#[derive(Debug)]
struct Inner {
    started: Started,
    run: mpsc::UnboundedSender<SystemJob>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    exited: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
    /// Serialises joins and leaves, so the persisted state follows their order.
    join_lock: tokio::sync::Mutex<()>,
}

/// A running node. Cheap to clone; every clone drives the same node. Dropping the last
/// clone without [`close`](Self::close) stops the node abruptly (connections time out
/// on the peers' side instead of closing).
#[derive(Debug, Clone)]
pub struct NodeHandle {
    inner: Arc<Inner>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut stop) = self.stop.lock() {
            if let Some(stop) = stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

impl NodeHandle {
    fn s(&self) -> &Started {
        &self.inner.started
    }

    /// This node's public key: what peers know it by.
    pub fn key(&self) -> PeerKey {
        self.s().conn.key()
    }

    /// The address the QUIC endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.s().conn.local_addr()
    }

    /// The address the metrics endpoint listens on, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.s().metrics_addr
    }

    /// The data directory, unless the node is in memory.
    pub fn data_dir(&self) -> Option<&Path> {
        self.s().data_dir.as_deref()
    }

    /// The node's counters (also served by the metrics endpoint, if enabled).
    pub fn counters(&self) -> &Counters {
        &self.s().counters
    }

    /// Every event from now on: peers up and down, sessions, offers, synced feeds.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.s().events.subscribe()
    }

    /// Join `topic`: announce and/or look it up. Resolves once the first announce and
    /// the first lookup round finished (see `JoinReport`). The join is persisted in the
    /// data directory and resumed after a restart.
    pub async fn join(
        &self,
        topic: impl Into<Topic>,
        options: JoinOptions,
    ) -> Result<JoinReport, JoinError> {
        let topic = topic.into();
        let _order = self.inner.join_lock.lock().await;
        let request = self.s().discovery.send(replic8_discovery::Join {
            topic,
            announce: options.announce,
            lookup: options.lookup,
        });
        let report = request.await.map_err(|_| NodeClosed)??;
        self.persist(|state| {
            state.join(PersistedJoin {
                topic: topic.0,
                announce: options.announce,
                lookup: options.lookup,
            })
        })
        .await?;
        self.refresh_topics().await;
        Ok(report)
    }

    /// Leave `topic`: stop announcing and looking it up (resolves once that is done) and
    /// forget it in the persisted state. Connections that we dialed because this topic's
    /// lookups found them, and that no other joined topic found, are closed (a connection
    /// redialed after a loss counts as the one it replaces, and a redial still pending
    /// for such a peer is cancelled); connections the peers initiated, and those made
    /// with [`connect`](Self::connect), stay.
    pub async fn leave(&self, topic: impl Into<Topic>) -> Result<(), LeaveError> {
        let topic = topic.into();
        let _order = self.inner.join_lock.lock().await;
        self.persist(|state| state.leave(&topic.0)).await?;
        self.s()
            .discovery
            .send(replic8_discovery::Leave { topic })
            .await
            .map_err(|_| NodeClosed)??;
        let _ = self.s().lifecycle.send(TopicLeft(topic)).await;
        self.refresh_topics().await;
        Ok(())
    }

    /// Look for `topic`'s peers at `addr` too: tried now and in every later lookup round
    /// while the topic stays joined (with lookup). For networks with neither DHT nor
    /// multicast, and for tests.
    pub async fn lookup_at(
        &self,
        topic: impl Into<Topic>,
        addr: SocketAddr,
    ) -> Result<(), FlushedError> {
        self.s()
            .discovery
            .send(replic8_discovery::LookupAt {
                topic: topic.into(),
                addr,
            })
            .await
            .map_err(|_| NodeClosed)??;
        Ok(())
    }

    /// Whether `topic` is joined.
    pub async fn joined(&self, topic: impl Into<Topic>) -> Result<bool, NodeClosed> {
        self.s()
            .discovery
            .send(replic8_discovery::Joined {
                topic: topic.into(),
            })
            .await
            .map_err(|_| NodeClosed)
    }

    /// Resolves when every peer found for `topic` since the join was tried (and a lookup
    /// round completed on every backend).
    pub async fn flushed(&self, topic: impl Into<Topic>) -> Result<(), FlushedError> {
        self.s()
            .discovery
            .send(replic8_discovery::WaitFlushed {
                topic: topic.into(),
            })
            .await
            .map_err(|_| NodeClosed)??;
        Ok(())
    }

    /// The joined topics with their state.
    pub async fn topics(&self) -> Result<Vec<replic8_discovery::TopicStatus>, NodeClosed> {
        self.s()
            .discovery
            .send(replic8_discovery::Topics)
            .await
            .map_err(|_| NodeClosed)
    }

    /// The DHT node's counters, tables and peers found per infohash; `None` without a
    /// DHT or with the `mainline` backend.
    pub async fn dht_status(&self) -> Result<Option<replic8_discovery::DhtStatus>, NodeClosed> {
        self.s()
            .discovery
            .send(replic8_discovery::DhtInfo)
            .await
            .map_err(|_| NodeClosed)
    }

    /// The connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NodeClosed> {
        self.s()
            .conn
            .addr()
            .send(replic8_connmgr::Peers)
            .await
            .map_err(|_| NodeClosed)
    }

    /// Connect to the node at `addr` (with its key pinned if given); resolves with its
    /// key once the connection is up. Leaving topics does not close it.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected_key: Option<PeerKey>,
    ) -> Result<PeerKey, ConnectError> {
        let key = self
            .s()
            .conn
            .addr()
            .send(replic8_connmgr::Dial { addr, expected_key })
            .await
            .map_err(|_| NodeClosed)??;
        let _ = self.s().lifecycle.send(Requested(key)).await;
        Ok(key)
    }

    /// Close the connection to `peer` (close code `CLOSE_REQUESTED`); its session ends.
    /// We do not redial it (a pending redial is cancelled, even when the peer is not
    /// connected now). The peer, if it dialed that connection, treats this like a cut
    /// connection and dials again (see `lifecycle/`); ban it to keep it away.
    pub async fn disconnect(&self, peer: PeerKey) -> Result<(), DisconnectError> {
        // First, so that the close below is not followed by a redial.
        self.s()
            .lifecycle
            .send(CancelRedial { key: peer })
            .await
            .map_err(|_| NodeClosed)?;
        self.s()
            .conn
            .addr()
            .send(replic8_connmgr::Close { key: peer })
            .await
            .map_err(|_| NodeClosed)??;
        Ok(())
    }

    /// The peers whose connection we dialed and lost and that we are dialing again now
    /// (about to dial, dialing, or waiting out a backoff); see `lifecycle/`.
    pub async fn redialing(&self) -> Result<Vec<PeerKey>, NodeClosed> {
        self.s()
            .lifecycle
            .send(Redialing)
            .await
            .map_err(|_| NodeClosed)
    }

    /// The session layer's actor, for stores started elsewhere.
    pub fn sessions(&self) -> &Addr<SessionsActor> {
        &self.s().sessions
    }

    /// Start a custom store inside the node's actor system and register it for
    /// `namespaces` (each with an optional pre-shared secret). `make` runs on the node's
    /// thread and builds the actor; the store's address is returned.
    pub async fn add_store<A, F>(
        &self,
        namespaces: Vec<(String, Option<NamespaceSecret>)>,
        make: F,
    ) -> Result<Addr<A>, AddStoreError>
    where
        A: Actor<Context = Context<A>>
            + Handler<Shares>
            + Handler<KnownFeeds>
            + Handler<Offer>
            + Handler<Attach>
            + Handler<Detach>,
        F: FnOnce(StoreContext) -> A + Send + 'static,
    {
        let context = StoreContext {
            sessions: self.s().sessions.clone(),
        };
        let (tx, rx) = oneshot::channel();
        let job: SystemJob = Box::new(move || {
            let _ = tx.send(make(context).start());
        });
        self.inner.run.send(job).map_err(|_| NodeClosed)?;
        let addr = rx.await.map_err(|_| NodeClosed)?;
        self.register_store(namespaces, StoreRecipients::of(&addr))
            .await?;
        Ok(addr)
    }

    /// Register a store that is already running, by its recipients.
    pub async fn register_store(
        &self,
        namespaces: Vec<(String, Option<NamespaceSecret>)>,
        store: StoreRecipients,
    ) -> Result<(), AddStoreError> {
        self.s()
            .sessions
            .send(RegisterStore { namespaces, store })
            .await
            .map_err(|_| NodeClosed)??;
        Ok(())
    }

    /// Create a new writable feed (a fresh key pair) in the default store.
    pub async fn create_feed(&self) -> Result<FeedKey, FeedError> {
        Ok(self
            .s()
            .feeds
            .create
            .send(replic8::feed_store::CreateFeed)
            .await
            .map_err(|_| NodeClosed)??)
    }

    /// Open a feed the store holds, by key: its length, head and whether we can append.
    pub async fn open_feed(&self, feed: FeedKey) -> Result<FeedInfo, FeedError> {
        Ok(self
            .s()
            .feeds
            .open
            .send(OpenFeed { feed })
            .await
            .map_err(|_| NodeClosed)??)
    }

    /// Append blocks to a writable feed in one signed, durable batch; resolves with the
    /// new length. Peers replicating the feed live get the blocks.
    pub async fn append(&self, feed: FeedKey, blocks: Vec<Vec<u8>>) -> Result<u64, FeedError> {
        Ok(self
            .s()
            .feeds
            .append
            .send(Append { feed, blocks })
            .await
            .map_err(|_| NodeClosed)??)
    }

    /// Read blocks `range.start..range.end` (each must be stored here).
    pub async fn read(
        &self,
        feed: FeedKey,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<Vec<u8>>, FeedError> {
        Ok(self
            .s()
            .feeds
            .read
            .send(ReadRange {
                feed,
                start: range.start,
                end: range.end,
            })
            .await
            .map_err(|_| NodeClosed)??)
    }

    /// Follow a feed's length and stored blocks: appends here and blocks downloaded from
    /// peers.
    pub async fn subscribe_feed(
        &self,
        feed: FeedKey,
    ) -> Result<watch::Receiver<FeedState>, FeedError> {
        Ok(self
            .s()
            .feeds
            .subscribe
            .send(replic8::feed_store::Subscribe { feed })
            .await
            .map_err(|_| NodeClosed)??)
    }

    /// Serve `namespace` with the default feed store: offer what is shared in it, and
    /// accept what peers offer in it as `policy` says (`NamespacePolicy::held_only()`:
    /// only feeds the store holds in it already; `accept_all()`: every feed, forwarded
    /// to the namespace's other peers). The public namespace `""` is always held-only.
    /// Persisted with its policy (a header predicate or a callback is not: the program
    /// opens the namespace again after a restart). A namespace with a secret is offered
    /// only to peers that prove they know it; secrets are not persisted, so such a
    /// namespace must be opened again after a restart. Opening an open namespace again
    /// replaces its policy, and its secret if another is given (on running sessions
    /// too).
    pub async fn open_namespace(
        &self,
        namespace: &str,
        secret: Option<NamespaceSecret>,
        policy: NamespacePolicy,
    ) -> Result<(), FeedError> {
        let public = secret.is_none();
        let persisted = persisted_policy(&policy);
        let mut open = self.s().namespaces.lock().await;
        if open.get(namespace).is_some_and(|old| *old != secret) {
            // Another secret replaces the old one on every session, running or later.
            self.unserve(&mut open, namespace).await?;
        }
        if open.contains_key(namespace) {
            if !namespace.is_empty() {
                self.s()
                    .feeds
                    .set_policy
                    .send(SetNamespacePolicy {
                        namespace: namespace.to_owned(),
                        policy,
                    })
                    .await
                    .map_err(|_| NodeClosed)??;
            }
        } else {
            self.s()
                .feeds
                .serve
                .send(ServeNamespace {
                    namespace: namespace.to_owned(),
                    secret: secret.clone(),
                    policy,
                })
                .await
                .map_err(|_| NodeClosed)??;
            open.insert(namespace.to_owned(), secret);
        }
        drop(open);
        if public {
            self.persist(|state| {
                let new = state.namespace(namespace);
                state.policy(namespace, persisted) || new
            })
            .await?;
        }
        Ok(())
    }

    /// Share a feed the store holds in `namespace` with `headers`: offered to every
    /// connected peer now and to every later one. Persisted: a restart shares it again.
    pub async fn share(
        &self,
        namespace: &str,
        feed: FeedKey,
        headers: Headers,
    ) -> Result<usize, FeedError> {
        // A feed the store does not hold fails here, before anything is registered or
        // persisted: a failed share changes nothing.
        self.open_feed(feed).await?;
        {
            let open = self.s().namespaces.lock().await.contains_key(namespace);
            if !open {
                self.open_namespace(namespace, None, NamespacePolicy::held_only())
                    .await?;
            }
        }
        let offered = self
            .s()
            .feeds
            .share
            .send(ShareFeed {
                namespace: namespace.to_owned(),
                feed,
                headers: headers.clone(),
            })
            .await
            .map_err(|_| NodeClosed)??;
        self.persist(|state| {
            state.share(PersistedShare {
                namespace: namespace.to_owned(),
                feed: feed.0,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_vec()))
                    .collect(),
            })
        })
        .await?;
        Ok(offered)
    }

    /// Join a feed's discovery key (what goes on the DHT reveals nothing of the key).
    pub async fn join_feed(
        &self,
        feed: FeedKey,
        options: JoinOptions,
    ) -> Result<JoinReport, JoinError> {
        self.join(Topic(feed.discovery_key().0), options).await
    }

    /// Leave a feed's discovery key.
    pub async fn leave_feed(&self, feed: FeedKey) -> Result<(), LeaveError> {
        self.leave(Topic(feed.discovery_key().0)).await
    }

    /// The default store's counters (blocks and bytes in and out, streams).
    pub async fn feed_stats(&self) -> Result<FeedStoreStats, NodeClosed> {
        self.s()
            .feeds
            .stats
            .send(GetStats)
            .await
            .map_err(|_| NodeClosed)
    }

    /// How many of the connection manager's tasks are alive: 0 after `close`.
    pub fn live_tasks(&self) -> usize {
        self.s().conn.live_tasks()
    }

    /// Shut the node down, in order: stop dialing and accepting; end every session
    /// (each peer is told why); leave every topic (LAN advertisements withdrawn, DHT
    /// work cancelled); close every connection and the QUIC endpoint; stop the metrics
    /// endpoint; stop the actor system and wait for its thread to end. Closing a closed
    /// node does nothing. Persisted joins stay: a restart resumes them.
    pub async fn close(&self) {
        let mut exited = self.inner.exited.lock().await;
        let Some(exited_rx) = exited.take() else {
            return;
        };
        let s = self.s();
        let mut events = s.events.subscribe();
        let _ = s.lifecycle.send(BeginClose).await;
        // Sessions first, so each peer hears why.
        if let Ok(peers) = s.sessions.send(ListSessions).await {
            let mut open: std::collections::HashSet<PeerKey> =
                peers.iter().map(|p| PeerKey::from_bytes(p.0)).collect();
            for peer in peers {
                s.sessions.do_send(StopSession {
                    peer,
                    reason: "node closing".into(),
                });
            }
            let wait = async {
                while !open.is_empty() {
                    match events.recv().await {
                        Ok(NodeEvent::SessionEnded { peer, .. }) => {
                            open.remove(&peer);
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            };
            if tokio::time::timeout(SESSION_CLOSE_GUARD, wait)
                .await
                .is_err()
            {
                warn!("sessions did not end in time; closing their connections");
            }
        }
        let _ = s.discovery.send(replic8_discovery::Close).await;
        s.conn.close().await;
        if let Ok(mut metrics) = s.metrics.lock() {
            if let Some(m) = metrics.take() {
                m.close();
            }
        }
        if let Ok(mut stop) = self.inner.stop.lock() {
            if let Some(stop) = stop.take() {
                let _ = stop.send(());
            }
        }
        let _ = exited_rx.await;
        info!(me = %self.key().fmt_short(), "node closed");
    }

    /// Apply `change` to the persisted state and save it if it changed (no-op in memory).
    async fn persist(
        &self,
        change: impl FnOnce(&mut PersistedState) -> bool,
    ) -> Result<(), PersistError> {
        let mut state = self.s().state.lock().await;
        if !change(&mut state) {
            return Ok(());
        }
        let Some(dir) = self.s().data_dir.clone() else {
            return Ok(());
        };
        let snapshot = state.clone();
        tokio::task::spawn_blocking(move || snapshot.save(&dir))
            .await
            .map_err(|e| PersistError::Io {
                path: PathBuf::from(persist::STATE_FILE),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    async fn refresh_topics(&self) {
        if let Ok(topics) = self.topics().await {
            self.s().counters.topics.set(topics.len() as u64);
        }
    }

    /// The persisted joins (what a restart resumes).
    pub async fn persisted(&self) -> PersistedState {
        self.s().state.lock().await.clone()
    }
}

/// What a feed operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The node is closed.
    #[error(transparent)]
    Closed(#[from] NodeClosed),
    /// The feed store failed or refused (no such feed, not writable, storage, ...).
    #[error(transparent)]
    Store(#[from] FeedStoreError),
    /// The namespace is served by another (custom) store.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// The share could not be persisted (it is active until the node stops).
    #[error("share not persisted: {0}")]
    Persist(#[from] PersistError),
}

/// What `disconnect` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DisconnectError {
    /// The node is closed.
    #[error(transparent)]
    Closed(#[from] NodeClosed),
    /// There is no connection to that peer.
    #[error(transparent)]
    NotConnected(#[from] replic8_connmgr::CloseError),
}

/// What `connect` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The node is closed.
    #[error(transparent)]
    Closed(#[from] NodeClosed),
    /// The dial failed.
    #[error(transparent)]
    Dial(#[from] replic8_connmgr::DialError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[discovery] dht_server` and `dht_read_only` choose the DHT node's mode; neither
    /// leaves it to the network (auto).
    #[test]
    fn the_dht_mode_follows_the_config() {
        let mode = |toml: &str| {
            let config = NodeConfig::from_toml(toml).unwrap();
            NodeBuilder::from_config(&config).unwrap().dht.unwrap().mode
        };
        assert_eq!(mode(""), DhtMode::Auto);
        assert_eq!(mode("[discovery]\ndht_server = true\n"), DhtMode::Server);
        assert_eq!(
            mode("[discovery]\ndht_read_only = true\n"),
            DhtMode::ReadOnly
        );
    }
}
