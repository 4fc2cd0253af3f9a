//! The runtime assembly: the node's thread, its actix system and every actor, started
//! in order and wired together.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use replic8::actor::SessionsActor;
use replic8::feed_store::{FeedStoreConfig, NamespacePolicy, ServeNamespace, ShareFeeds};
use replic8::keys::FeedKey;
use replic8::message::Headers;
use replic8::session::SessionConfig;
use replic8_connmgr::socket::KrpcSender;
use replic8_connmgr::{
    ConnManager, ConnManagerConfig, ConnManagerHandle, Identity, NatConfig, PolicyConfig,
    RelayConfig,
};
use replic8_discovery::driver::SendFuture;
use replic8_discovery::{
    DatagramSend, DiscoveryActor, DiscoveryConfig, KrpcDht, LanConfig, SharedPort, Topic,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{info, warn};

use crate::config::{LimitsSection, NodeConfig};
use crate::events::EVENT_CAPACITY;
use crate::feed_peers::FeedPeers;
use crate::metrics::{Counters, MetricsEndpoint};
use crate::persist::{self, PersistError, PersistedState};

use super::builder::{NodeBuilder, SpawnError, Storage};
use super::forward::{forward_feed_events, forward_session_events};
use super::handle::{policy_of, Inner, NodeHandle, Started, SystemJob};
use super::namespace_spec::NamespaceSpec;
use super::namespace_types::{self, parse_secret, OFFER_LOG};
use super::QUIC_BIDI_STREAMS;
use crate::lifecycle::{LifecycleActor, LifecycleConfig};

/// The identity and state, loaded off the async runtime.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) identity: Identity,
    pub(super) state: PersistedState,
}

pub(super) fn prepare(
    data_dir: Option<&Path>,
    identity: Option<Identity>,
) -> Result<Prepared, PersistError> {
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

pub(super) async fn run_jobs(
    mut jobs: mpsc::UnboundedReceiver<SystemJob>,
    mut stop: oneshot::Receiver<()>,
) {
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

/// What a start has brought up so far that must be stopped if a later step fails, in
/// reverse order: the one teardown path of a failed start. (The actors without sockets
/// or tasks of their own stop with the system.)
#[derive(Default)]
struct Undo {
    conn: Option<ConnManagerHandle>,
    discovery: Option<Addr<DiscoveryActor>>,
}

impl Undo {
    async fn run(self) {
        if let Some(discovery) = self.discovery {
            let _ = discovery.send(replic8_discovery::Close).await;
        }
        if let Some(conn) = self.conn {
            conn.close().await;
        }
    }
}

/// Runs inside the system: start every actor and wire them; on a failure, stop what was
/// started.
pub(super) async fn start(
    builder: NodeBuilder,
    prepared: Prepared,
    data_dir: Option<PathBuf>,
) -> Result<Started, SpawnError> {
    let mut undo = Undo::default();
    let started = assemble(builder, prepared, data_dir, &mut undo).await;
    if started.is_err() {
        undo.run().await;
    }
    started
}

async fn assemble(
    builder: NodeBuilder,
    prepared: Prepared,
    data_dir: Option<PathBuf>,
    undo: &mut Undo,
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
        nat: NatConfig {
            observe: builder.nat.observe,
            dial_back: builder.nat.dial_back,
            punch: builder.nat.punch,
            relay: RelayConfig {
                enabled: builder.nat.relay,
                max_circuits: builder.nat.relay_max_circuits,
                max_circuits_per_peer: builder.nat.relay_max_circuits_per_peer,
                max_circuit_bytes: builder.nat.relay_max_circuit_bytes,
                circuit_lifetime: Duration::from_secs(builder.nat.relay_circuit_secs.max(1)),
                max_registrations: builder.nat.relay_max_registrations,
                ..RelayConfig::default()
            },
            relayed_dial_after: (builder.nat.relayed_dial_ms > 0)
                .then(|| Duration::from_millis(builder.nat.relayed_dial_ms)),
            ..NatConfig::default()
        },
        share_krpc: builder.share_socket && builder.dht.is_some(),
        ..ConnManagerConfig::new(prepared.identity)
            .with_listen(builder.listen)
            .with_alpn(vec![replic8::message::ALPN.to_vec()])
    };
    let conn = ConnManager::spawn(conn_config)?;
    undo.conn = Some(conn.clone());
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
    let discovery = spawn_discovery(discovery_config, &conn).await?;
    undo.discovery = Some(discovery.clone());
    let (session_tx, session_rx) = mpsc::unbounded_channel();
    let sessions = SessionsActor::new(session_config, Some(session_tx)).start();
    let (feed_tx, feed_rx) = mpsc::unbounded_channel();
    let feeds = crate::feeds::start(
        data_dir.as_deref(),
        feed_store_config(&builder.feed_store, &builder.limits),
        sessions.clone(),
        feed_tx,
    )
    .await?;
    let offers = Arc::new(Mutex::new(namespace_types::OfferLog::default()));
    let (offer_events, _) = broadcast::channel(OFFER_LOG);
    let feed_peers = Arc::new(Mutex::new(FeedPeers::default()));
    actix::spawn(forward_feed_events(
        feed_rx,
        events.clone(),
        counters.clone(),
        feed_peers.clone(),
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
                return Err(e.into());
            }
        }
    }
    // One message per namespace, in the order of the state file (a message per share
    // held 100,000 requests and their tasks at once for a store of that many feeds).
    let mut by_namespace: Vec<(String, Vec<(FeedKey, Headers)>)> = Vec::new();
    for share in &prepared.state.shares {
        let headers = match Headers::try_from(share.headers.clone()) {
            Ok(h) => h,
            Err(e) => {
                warn!(feed = %hex::encode(&share.feed[..5]), error = %e, "persisted share skipped");
                continue;
            }
        };
        let feed = (FeedKey(share.feed), headers);
        match by_namespace.iter_mut().find(|(n, _)| *n == share.namespace) {
            Some((_, shared)) => shared.push(feed),
            None => by_namespace.push((share.namespace.clone(), vec![feed])),
        }
    }
    for (namespace, shared) in by_namespace {
        let request = feeds.share_many.send(ShareFeeds {
            namespace,
            feeds: shared,
        });
        actix::spawn(async move {
            if let Ok(failed) = request.await {
                for (feed, e) in failed {
                    warn!(feed = %feed.fmt_short(), error = %e, "resumed share failed");
                }
            }
        });
    }
    let lifecycle = LifecycleActor::new(
        LifecycleConfig::new(local, &builder.limits),
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
        feed_peers.clone(),
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
    let nat = super::nat::NatForwarder {
        events: events.clone(),
        counters: counters.clone(),
    }
    .start();
    let _ = conn
        .addr()
        .send(replic8_connmgr::SubscribeNat(nat.recipient()))
        .await;
    // The DHT node and the sessions keep their own counters: copied into ours at each
    // scrape.
    let refresh: crate::metrics::Refresh = {
        let (discovery, sessions, counters) =
            (discovery.clone(), sessions.clone(), counters.clone());
        Arc::new(move || {
            let (discovery, sessions, counters) =
                (discovery.clone(), sessions.clone(), counters.clone());
            Box::pin(async move {
                if let Ok(totals) = sessions.send(replic8::actor::GetSessionTotals).await {
                    counters.feeds_sent_whole.set(totals.feeds_sent_whole);
                    counters
                        .feeds_received_whole
                        .set(totals.feeds_received_whole);
                }
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
            Err(source) => return Err(SpawnError::Metrics { addr, source }),
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
        feed_peers,
        data_dir,
        state: tokio::sync::Mutex::new(prepared.state),
        metrics: Mutex::new(metrics),
        metrics_addr,
    })
}

/// Starts discovery; its DHT node on the QUIC socket when the connection manager shares
/// it (`ConnManagerConfig::share_krpc`), else on sockets of its own.
async fn spawn_discovery(
    config: DiscoveryConfig,
    conn: &ConnManagerHandle,
) -> Result<Addr<DiscoveryActor>, replic8_discovery::SpawnError> {
    let (Some(dht_config), Some(krpc)) = (config.dht.clone(), conn.take_krpc()) else {
        return DiscoveryActor::spawn(config).await;
    };
    let port = SharedPort {
        local_addr: krpc.sender.local_addr(),
        ipv4: krpc.sender.ipv4(),
        ipv6: krpc.sender.ipv6(),
        sender: Arc::new(QuicSocketSend(krpc.sender)),
        incoming: krpc.incoming,
    };
    let dht = KrpcDht::spawn_shared(&dht_config, port).await?;
    DiscoveryActor::spawn_with_dht(config, Some(Arc::new(dht)))
}

/// The DHT's sends on the QUIC socket.
#[derive(Debug)]
struct QuicSocketSend(KrpcSender);

impl DatagramSend for QuicSocketSend {
    fn send_to<'a>(&'a self, payload: &'a [u8], to: std::net::SocketAddr) -> SendFuture<'a> {
        Box::pin(self.0.send_to(payload, to))
    }
}

/// The feed store's settings: the builder's, with the quotas that `[limits]` sets.
pub(super) fn feed_store_config(
    config: &FeedStoreConfig,
    limits: &LimitsSection,
) -> FeedStoreConfig {
    let mut config = config.clone();
    if let Some(n) = limits.new_feeds_per_peer {
        config.limits.new_feeds_per_peer = n;
    }
    if let Some(n) = limits.max_replicas {
        config.limits.max_replicas = n;
    }
    if let Some(n) = limits.serve_bytes_in_flight {
        config.limits.serve_bytes_in_flight = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = limits.receive_bytes_held {
        config.limits.receive_bytes_held = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = limits.receive_bytes_held_per_peer {
        config.limits.receive_bytes_held_per_peer = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(secs) = limits.serve_stall_secs {
        config.limits.serve_stall = std::time::Duration::from_secs(secs);
    }
    if let Some(secs) = limits.request_timeout_secs {
        config.sync.request_timeout = std::time::Duration::from_secs(secs);
    }
    config
}

impl NodeBuilder {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_limit_in_the_config_reaches_the_feed_store() {
        let limits = LimitsSection {
            new_feeds_per_peer: Some(7),
            max_replicas: Some(8),
            serve_bytes_in_flight: Some(2 << 20),
            receive_bytes_held: Some(3 << 20),
            receive_bytes_held_per_peer: Some(1 << 20),
            serve_stall_secs: Some(9),
            request_timeout_secs: Some(11),
            ..LimitsSection::default()
        };
        let config = feed_store_config(&FeedStoreConfig::default(), &limits);
        let l = &config.limits;
        assert_eq!((l.new_feeds_per_peer, l.max_replicas), (7, 8));
        assert_eq!(
            (
                l.serve_bytes_in_flight,
                l.receive_bytes_held,
                l.receive_bytes_held_per_peer
            ),
            (2 << 20, 3 << 20, 1 << 20)
        );
        assert_eq!(l.serve_stall, std::time::Duration::from_secs(9));
        assert_eq!(
            config.sync.request_timeout,
            std::time::Duration::from_secs(11)
        );

        // Unset, each keeps the store's default.
        let unset = feed_store_config(&FeedStoreConfig::default(), &LimitsSection::default());
        assert_eq!(unset.limits, FeedStoreConfig::default().limits);
        assert_eq!(
            unset.sync.request_timeout,
            FeedStoreConfig::default().sync.request_timeout
        );
    }
}
