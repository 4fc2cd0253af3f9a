//! `DiscoveryActor`: the thin actix shell around [`DiscoveryCore`].
//!
//! Handlers turn messages into core inputs; `drive` carries out the core's events:
//! DHT work runs in tokio tasks that report back by message, the mDNS daemon runs in its
//! own thread and its events are forwarded by a task per browsed topic. Nothing in a
//! handler blocks.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::StreamExt;
use mdns_sd::ServiceEvent;
use rand::Rng;
use tokio::sync::oneshot;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::config::DiscoveryConfig;
use crate::core::{
    CoreEvent, CoreSettings, DiscoveryCore, JoinId, JoinReport, PeerSource, TopicStatus,
};
use crate::dht::DhtBackend;
use crate::driver::{DhtStatus, KrpcDht};
use crate::error::{BackendError, JoinError, SpawnError, TopicError};
use crate::lan::Lan;
use crate::messages::*;
use crate::topic::Topic;

/// At most this many LAN instances are remembered per topic (see `MAX_PEERS_PER_TOPIC`:
/// hosts on the LAN are not trusted either).
const MAX_LAN_INSTANCES_PER_TOPIC: usize = 256;

/// How long `Leave` and `Close` wait for the mDNS daemon to confirm a withdrawal.
const UNREGISTER_WAIT: Duration = Duration::from_secs(2);

/// The `Discovery` actor. Start it with [`DiscoveryActor::spawn`] inside an actix
/// `System`; talk to it with the messages in [`crate::messages`].
#[derive(Debug)]
pub struct DiscoveryActor {
    core: DiscoveryCore,
    quic_port: u16,
    dht: Option<Arc<dyn DhtBackend>>,
    /// The DHT sockets' bind addresses (our own announces come back with them).
    dht_bind: Vec<IpAddr>,
    lan: Option<Lan>,
    lan_round: Duration,
    /// Per topic, the LAN instances resolved now (full name → addresses).
    lan_known: HashMap<Topic, HashMap<String, Vec<SocketAddr>>>,
    lan_browse: HashMap<Topic, AbortOnDropHandle<()>>,
    lan_registered: HashSet<Topic>,
    unregistering: Vec<mdns_sd::Receiver<mdns_sd::UnregisterStatus>>,
    dht_tasks: HashMap<Topic, Vec<AbortOnDropHandle<()>>>,
    subscribers: Vec<Recipient<PeerFound>>,
    join_waiters: HashMap<Topic, Vec<oneshot::Sender<Result<JoinReport, JoinError>>>>,
    flush_waiters: HashMap<Topic, Vec<oneshot::Sender<Result<(), TopicError>>>>,
    timer: Option<SpawnHandle>,
    stats: DiscoveryStats,
    /// `discovery{me=<quic port>}`: entered whenever the actor acts on core events.
    span: tracing::Span,
}

impl DiscoveryActor {
    /// Starts the backends that `config` enables and the actor. The DHT starts off the
    /// async runtime (bootstrap names are resolved, its socket bound); a bad bootstrap
    /// entry or a port in use is a [`SpawnError`]. Call inside an actix `System`.
    pub async fn spawn(config: DiscoveryConfig) -> Result<Addr<DiscoveryActor>, SpawnError> {
        let dht: Option<Arc<dyn DhtBackend>> = match config.dht.clone() {
            Some(dht_config) => Some(Arc::new(KrpcDht::spawn(&dht_config).await?)),
            None => None,
        };
        Self::spawn_with_dht(config, dht)
    }

    /// Like [`spawn`](Self::spawn), with any [`DhtBackend`] (or none); `config.dht` is
    /// only read for the bind address.
    pub fn spawn_with_dht(
        config: DiscoveryConfig,
        dht: Option<Arc<dyn DhtBackend>>,
    ) -> Result<Addr<DiscoveryActor>, SpawnError> {
        if config.quic_port == 0 {
            return Err(SpawnError::NoQuicPort);
        }
        let mut rng = rand::thread_rng();
        let lan = match &config.lan {
            Some(lan) => Some(Lan::start(lan, config.quic_port, rng.gen())?),
            None => None,
        };
        let settings = CoreSettings {
            timing: config.timing.clone(),
            dht: dht.is_some(),
            lan: lan.is_some(),
            static_peers: config.static_peers.clone(),
        };
        let stats = DiscoveryStats {
            dht_addr: dht.as_ref().map(|d| d.local_addr()),
            dht_addrs: dht.as_ref().map(|d| d.local_addrs()).unwrap_or_default(),
            ..DiscoveryStats::default()
        };
        if !stats.dht_addrs.is_empty() {
            info!(dht = ?stats.dht_addrs, quic_port = config.quic_port, "discovery starting");
        }
        let actor = DiscoveryActor {
            core: DiscoveryCore::new(settings, rng.gen()),
            quic_port: config.quic_port,
            dht_bind: dht
                .as_ref()
                .map(|d| d.local_addrs().iter().map(|a| a.ip()).collect())
                .unwrap_or_default(),
            dht,
            lan,
            lan_round: config.lan.as_ref().map(|l| l.round).unwrap_or_default(),
            lan_known: HashMap::new(),
            lan_browse: HashMap::new(),
            lan_registered: HashSet::new(),
            unregistering: Vec::new(),
            dht_tasks: HashMap::new(),
            subscribers: Vec::new(),
            join_waiters: HashMap::new(),
            flush_waiters: HashMap::new(),
            timer: None,
            stats,
            span: tracing::info_span!("discovery", me = config.quic_port),
        };
        Ok(actor.start())
    }

    /// Our own announce coming back from the DHT (a record has no key to tell it apart).
    fn is_self(&self, addr: &SocketAddr) -> bool {
        addr.port() == self.quic_port
            && (addr.ip().is_loopback()
                || addr.ip().is_unspecified()
                || self.dht_bind.contains(&addr.ip()))
    }

    /// Carries out every pending core event, then re-arms the timer.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        let span = self.span.clone();
        let _entered = span.enter();
        while let Some(event) = self.core.poll_event() {
            match event {
                CoreEvent::Announce {
                    topic,
                    backend,
                    join,
                } => self.announce(topic, backend, join, ctx),
                CoreEvent::Lookup {
                    topic,
                    backend,
                    join,
                } => self.lookup(topic, backend, join, ctx),
                CoreEvent::Stop { topic, backend } => self.stop(topic, backend),
                CoreEvent::PeerFound {
                    topic,
                    addr,
                    source,
                } => {
                    debug!(topic = %topic.fmt_short(), %addr, ?source, "peer found");
                    self.subscribers.retain(|s| s.connected());
                    for subscriber in &self.subscribers {
                        subscriber.do_send(PeerFound {
                            topic,
                            addr,
                            source,
                        });
                    }
                    self.stats.peers_reported += 1;
                }
                CoreEvent::JoinDone { topic, report } => {
                    info!(topic = %topic.fmt_short(), ?report, "joined");
                    for waiter in self.join_waiters.remove(&topic).unwrap_or_default() {
                        let _ = waiter.send(Ok(report.clone()));
                    }
                }
                CoreEvent::Flushed { topic } => {
                    for waiter in self.flush_waiters.remove(&topic).unwrap_or_default() {
                        let _ = waiter.send(Ok(()));
                    }
                }
            }
        }
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        if let Some(at) = self.core.poll_timeout() {
            let delay = at.saturating_duration_since(Instant::now());
            self.timer = Some(ctx.run_later(delay, |act, ctx| {
                act.timer = None;
                act.core.handle_timeout(Instant::now());
                act.drive(ctx);
            }));
        }
    }

    fn announce(
        &mut self,
        topic: Topic,
        backend: PeerSource,
        join: JoinId,
        ctx: &mut Context<Self>,
    ) {
        match backend {
            PeerSource::Dht => {
                let Some(dht) = &self.dht else { return };
                self.stats.dht_announces += 1;
                let work = dht.announce(topic.infohash(), self.quic_port);
                let me = ctx.address();
                self.track(topic, async move {
                    let result = work.await;
                    me.do_send(DhtAnnounced {
                        topic,
                        join,
                        result,
                    });
                });
            }
            PeerSource::Lan => {
                let result = match &self.lan {
                    Some(lan) => lan.register(&topic),
                    None => Err("lan disabled".to_string()),
                };
                if result.is_ok() {
                    self.lan_registered.insert(topic);
                }
                self.core
                    .handle_announce_done(topic, join, backend, result, Instant::now());
            }
            PeerSource::Static => {}
        }
    }

    fn lookup(&mut self, topic: Topic, backend: PeerSource, join: JoinId, ctx: &mut Context<Self>) {
        match backend {
            PeerSource::Dht => {
                let Some(dht) = &self.dht else { return };
                self.stats.dht_lookups += 1;
                let mut peers = dht.lookup(topic.infohash());
                let me = ctx.address();
                self.track(topic, async move {
                    while let Some(addrs) = peers.next().await {
                        me.do_send(DhtPeers { topic, join, addrs });
                    }
                    me.do_send(DhtLookupDone { topic, join });
                });
            }
            PeerSource::Lan => {
                if !self.lan_browse.contains_key(&topic) {
                    let browse = self.lan.as_ref().map(|lan| lan.browse(&topic));
                    match browse {
                        Some(Ok(events)) => {
                            let me = ctx.address();
                            let task = tokio::spawn(async move {
                                while let Ok(event) = events.recv_async().await {
                                    me.do_send(LanEvent { topic, event });
                                }
                            });
                            self.lan_browse.insert(topic, AbortOnDropHandle::new(task));
                        }
                        Some(Err(error)) => {
                            warn!(topic = %topic.fmt_short(), %error, "mdns browse failed")
                        }
                        None => {}
                    }
                }
                // A LAN round re-reports what is resolved now, then listens for a while.
                let known: Vec<SocketAddr> = self
                    .lan_known
                    .get(&topic)
                    .map(|m| m.values().flatten().copied().collect())
                    .unwrap_or_default();
                self.core.handle_peers(topic, join, PeerSource::Lan, known);
                ctx.run_later(self.lan_round, move |act, ctx| {
                    act.core
                        .handle_lookup_done(topic, join, PeerSource::Lan, Instant::now());
                    act.drive(ctx);
                });
            }
            PeerSource::Static => {}
        }
    }

    fn stop(&mut self, topic: Topic, backend: PeerSource) {
        match backend {
            PeerSource::Dht => {
                self.dht_tasks.remove(&topic);
            }
            PeerSource::Lan => {
                self.lan_browse.remove(&topic);
                self.lan_known.remove(&topic);
                if let Some(lan) = &self.lan {
                    lan.stop_browse(&topic);
                    if self.lan_registered.remove(&topic) {
                        if let Some(done) = lan.unregister(&topic) {
                            self.unregistering.push(done);
                        }
                    }
                }
            }
            PeerSource::Static => {}
        }
    }

    fn track(
        &mut self,
        topic: Topic,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let tasks = self.dht_tasks.entry(topic).or_default();
        tasks.retain(|t| !t.is_finished());
        tasks.push(AbortOnDropHandle::new(tokio::spawn(work)));
    }

    /// Fails the waiters of `topic` (on leave, re-join or stop).
    fn fail_waiters(&mut self, topic: &Topic, join: JoinError, flush: TopicError) {
        for waiter in self.join_waiters.remove(topic).unwrap_or_default() {
            let _ = waiter.send(Err(join.clone()));
        }
        for waiter in self.flush_waiters.remove(topic).unwrap_or_default() {
            let _ = waiter.send(Err(flush.clone()));
        }
    }

    /// A future that resolves when the pending mDNS withdrawals are done.
    fn unregistered(&mut self) -> impl std::future::Future<Output = ()> + 'static {
        let pending = std::mem::take(&mut self.unregistering);
        async move {
            for done in pending {
                let _ = tokio::time::timeout(UNREGISTER_WAIT, done.recv_async()).await;
            }
        }
    }
}

impl Actor for DiscoveryActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let topics: Vec<Topic> = self
            .join_waiters
            .keys()
            .chain(self.flush_waiters.keys())
            .copied()
            .collect();
        for topic in topics {
            self.fail_waiters(&topic, JoinError::Stopped, TopicError::Stopped);
        }
        self.dht_tasks.clear();
        self.lan_browse.clear();
        if let Some(lan) = self.lan.take() {
            lan.shutdown();
        }
    }
}

impl Handler<Join> for DiscoveryActor {
    type Result = ResponseFuture<Result<JoinReport, JoinError>>;

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) -> Self::Result {
        if !msg.announce && !msg.lookup {
            return Box::pin(async { Err(JoinError::NothingToDo) });
        }
        let topic = msg.topic;
        self.fail_waiters(&topic, JoinError::Left, TopicError::Left);
        let (tx, rx) = oneshot::channel();
        self.join_waiters.entry(topic).or_default().push(tx);
        self.core
            .handle_join(topic, msg.announce, msg.lookup, Instant::now());
        self.drive(ctx);
        Box::pin(async move { rx.await.unwrap_or(Err(JoinError::Stopped)) })
    }
}

impl Handler<Leave> for DiscoveryActor {
    type Result = ResponseFuture<Result<(), TopicError>>;

    fn handle(&mut self, msg: Leave, ctx: &mut Context<Self>) -> Self::Result {
        if !self.core.handle_leave(msg.topic) {
            return Box::pin(async { Err(TopicError::NotJoined) });
        }
        info!(topic = %msg.topic.fmt_short(), "left");
        self.fail_waiters(&msg.topic, JoinError::Left, TopicError::Left);
        self.drive(ctx);
        let done = self.unregistered();
        Box::pin(async move {
            done.await;
            Ok(())
        })
    }
}

impl Handler<Joined> for DiscoveryActor {
    type Result = bool;

    fn handle(&mut self, msg: Joined, _ctx: &mut Context<Self>) -> bool {
        self.core.is_joined(&msg.topic)
    }
}

impl Handler<Flushed> for DiscoveryActor {
    type Result = bool;

    fn handle(&mut self, msg: Flushed, _ctx: &mut Context<Self>) -> bool {
        self.core.is_flushed(&msg.topic)
    }
}

impl Handler<WaitFlushed> for DiscoveryActor {
    type Result = ResponseFuture<Result<(), TopicError>>;

    fn handle(&mut self, msg: WaitFlushed, _ctx: &mut Context<Self>) -> Self::Result {
        if !self.core.is_joined(&msg.topic) {
            return Box::pin(async { Err(TopicError::NotJoined) });
        }
        if self.core.is_flushed(&msg.topic) {
            return Box::pin(async { Ok(()) });
        }
        let (tx, rx) = oneshot::channel();
        self.flush_waiters.entry(msg.topic).or_default().push(tx);
        Box::pin(async move { rx.await.unwrap_or(Err(TopicError::Stopped)) })
    }
}

impl Handler<Topics> for DiscoveryActor {
    type Result = MessageResult<Topics>;

    fn handle(&mut self, _msg: Topics, _ctx: &mut Context<Self>) -> Self::Result {
        let topics: Vec<TopicStatus> = self.core.topics();
        MessageResult(topics)
    }
}

impl Handler<Subscribe> for DiscoveryActor {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Context<Self>) {
        self.subscribers.push(msg.0);
    }
}

impl Handler<PeerTried> for DiscoveryActor {
    type Result = ();

    fn handle(&mut self, msg: PeerTried, ctx: &mut Context<Self>) {
        self.core.handle_peer_tried(msg.topic, msg.addr);
        self.drive(ctx);
    }
}

impl Handler<LookupAt> for DiscoveryActor {
    type Result = Result<(), TopicError>;

    fn handle(&mut self, msg: LookupAt, ctx: &mut Context<Self>) -> Self::Result {
        let ok = self.core.handle_lookup_at(msg.topic, msg.addr);
        self.drive(ctx);
        if ok {
            Ok(())
        } else {
            Err(TopicError::NotJoined)
        }
    }
}

impl Handler<Stats> for DiscoveryActor {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _msg: Stats, _ctx: &mut Context<Self>) -> Self::Result {
        let mut stats = self.stats.clone();
        stats.topics = self.core.topics().len();
        MessageResult(stats)
    }
}

impl Handler<DhtInfo> for DiscoveryActor {
    type Result = ResponseFuture<Option<DhtStatus>>;

    fn handle(&mut self, _msg: DhtInfo, _ctx: &mut Context<Self>) -> Self::Result {
        match &self.dht {
            Some(dht) => dht.status(),
            None => Box::pin(async { None }),
        }
    }
}

impl Handler<Close> for DiscoveryActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: Close, ctx: &mut Context<Self>) -> Self::Result {
        for status in self.core.topics() {
            self.core.handle_leave(status.topic);
            self.fail_waiters(&status.topic, JoinError::Stopped, TopicError::Stopped);
        }
        self.drive(ctx);
        let done = self.unregistered();
        let lan = self.lan.take();
        ctx.stop();
        Box::pin(async move {
            done.await;
            if let Some(lan) = lan {
                lan.shutdown();
            }
        })
    }
}

// Reports from the backend tasks.

#[derive(Message)]
#[rtype(result = "()")]
struct DhtAnnounced {
    topic: Topic,
    join: JoinId,
    result: Result<(), BackendError>,
}

impl Handler<DhtAnnounced> for DiscoveryActor {
    type Result = ();

    fn handle(&mut self, msg: DhtAnnounced, ctx: &mut Context<Self>) {
        if let Err(error) = &msg.result {
            self.stats.dht_announce_failures += 1;
            warn!(topic = %msg.topic.fmt_short(), %error, "dht announce failed");
        }
        let result = msg.result.map_err(|e| e.to_string());
        self.core.handle_announce_done(
            msg.topic,
            msg.join,
            PeerSource::Dht,
            result,
            Instant::now(),
        );
        self.drive(ctx);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct DhtPeers {
    topic: Topic,
    join: JoinId,
    addrs: Vec<SocketAddr>,
}

impl Handler<DhtPeers> for DiscoveryActor {
    type Result = ();

    fn handle(&mut self, msg: DhtPeers, ctx: &mut Context<Self>) {
        let addrs: Vec<SocketAddr> = msg.addrs.into_iter().filter(|a| !self.is_self(a)).collect();
        self.core
            .handle_peers(msg.topic, msg.join, PeerSource::Dht, addrs);
        self.drive(ctx);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct DhtLookupDone {
    topic: Topic,
    join: JoinId,
}

impl Handler<DhtLookupDone> for DiscoveryActor {
    type Result = ();

    fn handle(&mut self, msg: DhtLookupDone, ctx: &mut Context<Self>) {
        self.core
            .handle_lookup_done(msg.topic, msg.join, PeerSource::Dht, Instant::now());
        self.drive(ctx);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct LanEvent {
    topic: Topic,
    event: ServiceEvent,
}

impl Handler<LanEvent> for DiscoveryActor {
    type Result = ();

    fn handle(&mut self, msg: LanEvent, ctx: &mut Context<Self>) {
        let (Some(lan), Some(join)) = (&self.lan, self.core.join_id(&msg.topic)) else {
            return;
        };
        match msg.event {
            ServiceEvent::ServiceResolved(service) => {
                let addrs = lan.peers_of(&msg.topic, &service);
                if addrs.is_empty() {
                    return;
                }
                let known = self.lan_known.entry(msg.topic).or_default();
                if known.len() < MAX_LAN_INSTANCES_PER_TOPIC
                    || known.contains_key(service.get_fullname())
                {
                    known.insert(service.get_fullname().to_string(), addrs.clone());
                }
                self.core
                    .handle_peers(msg.topic, join, PeerSource::Lan, addrs);
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                if let Some(known) = self.lan_known.get_mut(&msg.topic) {
                    known.remove(&fullname);
                }
            }
            _ => {}
        }
        self.drive(ctx);
    }
}
