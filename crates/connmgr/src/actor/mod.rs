//! The `ConnManager` actor: a thin shell around `ConnCore` that owns the quinn endpoint.
//!
//! quinn I/O (accepting, handshakes, watching for close, probes) runs in tokio tasks that
//! message the actor; the actor feeds what they report into the core and carries out the
//! core's events. Every task is owned through an abort-on-drop `Task`, so dropping the
//! actor leaves none behind.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{debug, info};

use self::datagrams::{probe, resend_confirm, CONFIRM_DATAGRAM};
use self::netctl::{NatCounters, NatLink, DIAL_BACK_ALPN};
use self::reports::{IncomingConn, ProbeDone};
use self::tasks::{spawn_task, Task};
use crate::config::ConnManagerConfig;
use crate::core::{ConnCore, ConnId, CoreEvent, Initiator};
use crate::error::{CloseReason, DialError, SpawnError, CLOSE_SHUTDOWN};
use crate::key::{Identity, PeerKey};
use crate::messages::*;
use crate::nat::{NatCore, NatEvent};
use crate::socket::{self, KrpcPort, NodeSocket, VirtualPaths};
use crate::tls;
use crate::transport::{self, ByPath, PathKind};

mod accept;
mod circuits;
mod conn;
mod datagrams;
mod dial;
mod fallback;
mod netctl;
mod reports;
mod requests;
mod tasks;

/// Packets queued each way between the endpoint and the relay circuits: one
/// congestion window's worth of full-size packets (~1.8 MB), so a relayed connection is
/// not held back by the queue while one stuck circuit cannot pile up more.
const VIRTUAL_QUEUE: usize = 1024;

/// A connection whose handshake finished.
#[derive(Debug)]
struct Live {
    conn: quinn::Connection,
    addr: SocketAddr,
    key: PeerKey,
    initiator: Initiator,
    /// Reports the close to the actor, which then forgets this entry.
    watch: Task,
    /// Waits for the peer's confirmation (connections we initiated to a greater key,
    /// until they are up).
    confirm: Option<Task>,
    /// Sends our confirmation again (connections the smaller key initiated that we
    /// committed to): datagrams are not retransmitted.
    resend: Option<Task>,
}

/// The handle returned by `ConnManager::spawn`.
#[derive(Debug, Clone)]
pub struct ConnManagerHandle {
    addr: Addr<ConnManager>,
    local_addr: SocketAddr,
    key: PeerKey,
    tasks: Arc<AtomicUsize>,
    paths: VirtualPaths,
    krpc: Arc<Mutex<Option<KrpcPort>>>,
}

impl ConnManagerHandle {
    /// The actor's address, for the messages in `messages`.
    pub fn addr(&self) -> &Addr<ConnManager> {
        &self.addr
    }

    /// The address the UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's key.
    pub fn key(&self) -> PeerKey {
        self.key
    }

    /// The endpoint's relay queues: packets to and from virtual addresses.
    pub fn virtual_paths(&self) -> &VirtualPaths {
        &self.paths
    }

    /// The DHT's side of the endpoint's socket, once (`None` after the first call, and
    /// always without `ConnManagerConfig::share_krpc`).
    pub fn take_krpc(&self) -> Option<KrpcPort> {
        self.krpc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// How many of the actor's tokio tasks are alive (0 after `close`).
    pub fn live_tasks(&self) -> usize {
        self.tasks.load(Ordering::SeqCst)
    }

    /// Close every connection, drain the endpoint and stop the actor.
    pub async fn close(&self) {
        // An error means the actor is already gone, which is what was asked.
        let _ = self.addr.send(Shutdown).await;
    }
}

/// The connection manager actor. See the crate doc.
pub struct ConnManager {
    me: PeerKey,
    identity: Identity,
    alpn: Vec<Vec<u8>>,
    /// Transport settings for dials, by the kind of path to the peer.
    transport: ByPath<Arc<quinn::TransportConfig>>,
    /// The server configuration for incoming connections, by the kind of path.
    server: ByPath<Arc<quinn::ServerConfig>>,
    handshake_timeout: Duration,
    probe_timeout: Duration,
    core: ConnCore,
    endpoint: quinn::Endpoint,
    /// The endpoint's relay queues (packets to and from virtual addresses).
    paths: VirtualPaths,
    /// The endpoint's socket: its address families (`dial::check_family`), and `shut`
    /// at the end of a shutdown whose drain was cut short.
    socket: Arc<NodeSocket>,
    /// Relay circuits: forwarding for others, and those that end here.
    circuits: self::circuits::Circuits,
    live: HashMap<ConnId, Live>,
    handshakes: HashMap<ConnId, Task>,
    probes: HashMap<ConnId, Task>,
    replies: HashMap<ConnId, oneshot::Sender<Result<PeerKey, DialError>>>,
    up_subs: Vec<Recipient<PeerUp>>,
    down_subs: Vec<Recipient<PeerDown>>,
    refused_subs: Vec<Recipient<ConnRefused>>,
    accept: Option<Task>,
    timer: Option<SpawnHandle>,
    tasks: Arc<AtomicUsize>,
    /// Counters for `Stats`; bytes of connections that are gone.
    counters: ConnStats,
    /// Observed addresses and reachability.
    nat: NatCore,
    /// The NAT control channel of each up connection.
    nat_links: HashMap<PeerKey, NatLink>,
    nat_timer: Option<SpawnHandle>,
    nat_subs: Vec<Recipient<NatEvent>>,
    /// Dial-backs we are making for peers, by sequence number.
    dial_backs: HashMap<u64, Task>,
    next_dial_back: u64,
    nat_counters: NatCounters,
    /// Our `Locate` queries waiting for their relay's answer (`fallback`).
    locates: self::fallback::Locates,
    /// Addresses a relay answered a dial of, and the key it reached (`fallback`).
    relayed_at: self::fallback::RelayedAt,
    /// Set by `Shutdown`: the NAT machinery starts nothing new (dial-backs, punches,
    /// circuits) while the endpoint drains.
    nat_stopped: bool,
    span: tracing::Span,
}

impl std::fmt::Debug for ConnManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnManager")
            .field("me", &self.me)
            .field("live", &self.live.len())
            .finish()
    }
}

impl ConnManager {
    /// Binds the UDP socket, builds the endpoint and starts the actor. Call it inside a
    /// running `actix::System` (on a tokio runtime).
    pub fn spawn(config: ConnManagerConfig) -> Result<ConnManagerHandle, SpawnError> {
        let me = config.identity.key();
        let transport = transport::transport_configs(&config.transport);
        // Dial-back handshakes use their own ALPN; they are closed once done (`netctl`).
        let mut server_alpn = config.alpn.clone();
        if config.nat.dial_back {
            server_alpn.push(DIAL_BACK_ALPN.to_vec());
        }
        let crypto = Arc::new(tls::server_config(&config.identity, &server_alpn)?);
        let server_for = |transport: &Arc<quinn::TransportConfig>| {
            let mut server = quinn::ServerConfig::with_crypto(crypto.clone());
            server.transport_config(transport.clone());
            Arc::new(server)
        };
        let server = ByPath {
            local: server_for(&transport.local),
            wide: server_for(&transport.wide),
        };
        let socket = transport::bind_udp(config.listen, config.transport.socket_buffer)?;
        let paths = VirtualPaths::new(VIRTUAL_QUEUE, VIRTUAL_QUEUE);
        let (socket, krpc) = NodeSocket::new(socket, paths.clone(), config.share_krpc)?;
        let local_addr = socket.real_addr();
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            socket::endpoint_config(config.transport.max_udp_payload(PathKind::Local)),
            // Each incoming connection is accepted with the one for its path (`accept`).
            Some(server.wide.as_ref().clone()),
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )?;
        let tasks = Arc::new(AtomicUsize::new(0));
        let span = tracing::info_span!("connmgr", me = %me.fmt_short());
        let actor = ConnManager {
            me,
            identity: config.identity,
            alpn: config.alpn,
            transport,
            server,
            handshake_timeout: config.handshake_timeout,
            probe_timeout: config.probe_timeout,
            core: ConnCore::new(me, config.policy),
            endpoint,
            paths: paths.clone(),
            socket,
            circuits: Default::default(),
            live: HashMap::new(),
            handshakes: HashMap::new(),
            probes: HashMap::new(),
            replies: HashMap::new(),
            up_subs: Vec::new(),
            down_subs: Vec::new(),
            refused_subs: Vec::new(),
            accept: None,
            timer: None,
            tasks: tasks.clone(),
            counters: ConnStats::default(),
            nat: NatCore::new(me, config.nat, netctl::nonce_seed()),
            nat_links: HashMap::new(),
            nat_timer: None,
            nat_subs: Vec::new(),
            dial_backs: HashMap::new(),
            next_dial_back: 0,
            nat_counters: NatCounters::default(),
            locates: HashMap::new(),
            relayed_at: HashMap::new(),
            nat_stopped: false,
            span,
        };
        let addr = actor.start();
        Ok(ConnManagerHandle {
            addr,
            local_addr,
            key: me,
            tasks,
            paths,
            krpc: Arc::new(Mutex::new(krpc)),
        })
    }

    /// Carries out every event the core has queued, then re-arms the timer.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(event) = self.core.poll_event() {
            match event {
                CoreEvent::PeerUp { conn, key } => {
                    let Some(live) = self.live.get_mut(&conn) else {
                        continue;
                    };
                    // Up: datagrams from now on belong to the protocols.
                    live.confirm = None;
                    let live = &self.live[&conn];
                    info!(parent: &self.span, peer = %key.fmt_short(), addr = %live.addr,
                        initiator = ?live.initiator, conn = %conn, "peer up");
                    let up = PeerUp {
                        key,
                        addr: live.addr,
                        connection: live.conn.clone(),
                        initiator: live.initiator,
                    };
                    self.up_subs.retain(|s| s.connected());
                    for sub in &self.up_subs {
                        sub.do_send(up.clone());
                    }
                    self.nat_peer_up(conn, key, ctx);
                }
                CoreEvent::PeerDown { conn, key, reason } => {
                    let connection_id = self.live.get(&conn).map_or(0, |l| l.conn.stable_id());
                    info!(parent: &self.span, peer = %key.fmt_short(), conn = %conn,
                        %reason, "peer down");
                    let down = PeerDown {
                        key,
                        connection_id,
                        reason,
                    };
                    self.down_subs.retain(|s| s.connected());
                    for sub in &self.down_subs {
                        sub.do_send(down.clone());
                    }
                    let addr = self.live.get(&conn).map(|l| l.addr);
                    self.nat_peer_down(conn, key, addr, ctx);
                }
                CoreEvent::Close { conn, reason } => {
                    match reason {
                        CloseReason::Duplicate => self.counters.duplicates_closed += 1,
                        CloseReason::Replaced => self.counters.replaced += 1,
                        CloseReason::Evicted => self.counters.evictions += 1,
                        _ => {}
                    }
                    self.probes.remove(&conn);
                    // The entry stays until its watcher reports the close (`ConnClosed`).
                    if let Some(live) = self.live.get(&conn) {
                        let (code, text) = reason.code_and_text();
                        debug!(parent: &self.span, peer = %live.key.fmt_short(), conn = %conn,
                            reason = ?reason, "closing connection");
                        live.conn.close(code, text);
                    }
                }
                CoreEvent::Confirm { conn } => {
                    let Some(live) = self.live.get(&conn) else {
                        continue;
                    };
                    // A peer with datagrams off cannot get it, and falls back to its settle
                    // window. Sent again twice: a lost one must not leave the peer to its
                    // window (the core copes with all of them lost).
                    let sent = live
                        .conn
                        .send_datagram(bytes::Bytes::from_static(CONFIRM_DATAGRAM));
                    debug!(parent: &self.span, peer = %live.key.fmt_short(), conn = %conn,
                        sent = sent.is_ok(), "confirming");
                    if sent.is_ok() {
                        let task = spawn_task(&self.tasks, resend_confirm(live.conn.clone()));
                        if let Some(live) = self.live.get_mut(&conn) {
                            live.resend = Some(task);
                        }
                    }
                }
                CoreEvent::Probe { conn } => {
                    if let Some(live) = self.live.get(&conn) {
                        let me = ctx.address();
                        let connection = live.conn.clone();
                        let timeout = self.probe_timeout.max(connection.rtt() * 3);
                        let task = spawn_task(&self.tasks, async move {
                            let alive = probe(&connection, timeout).await;
                            me.do_send(ProbeDone { id: conn, alive });
                        });
                        self.probes.insert(conn, task);
                    }
                }
                CoreEvent::Refused { conn, key, reason } => {
                    let Some(live) = self.live.get(&conn) else {
                        continue;
                    };
                    let refused = ConnRefused {
                        addr: live.addr,
                        key: Some(key),
                        initiator: live.initiator,
                        reason: RefusedReason::Policy(reason),
                    };
                    self.report_refused(refused);
                }
                CoreEvent::DialDone { dial, result } => {
                    if result.is_err() {
                        self.counters.dials_failed += 1;
                    }
                    if let Some(reply) = self.replies.remove(&dial) {
                        // The caller may have gone away; nothing to do then.
                        let _ = reply.send(result);
                    }
                }
            }
        }
        self.rearm(ctx);
    }

    /// Logs a refusal once and tells the `ConnRefused` subscribers. Our own failed dials
    /// log at debug: the `Dial` caller gets the error and decides what it is worth.
    fn report_refused(&mut self, refused: ConnRefused) {
        let peer = refused.key.map(|k| k.fmt_short()).unwrap_or_default();
        if refused.initiator == Initiator::Remote {
            self.counters.incoming_refused += 1;
            if matches!(&refused.reason, RefusedReason::Policy(r) if r.is_per_ip()) {
                self.counters.refused_per_ip += 1;
            }
        }
        match refused.initiator {
            Initiator::Remote => info!(parent: &self.span, addr = %refused.addr, %peer,
                reason = %refused.reason, "incoming connection refused"),
            Initiator::Local => debug!(parent: &self.span, addr = %refused.addr, %peer,
                reason = %refused.reason, "dial failed"),
        }
        self.refused_subs.retain(|s| s.connected());
        for sub in &self.refused_subs {
            sub.do_send(refused.clone());
        }
    }

    fn rearm(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = self.core.poll_timeout() {
            let delay = at.saturating_duration_since(Instant::now());
            self.timer = Some(ctx.run_later(delay, |act, ctx| {
                act.timer = None;
                act.core.handle_timeout(Instant::now());
                act.drain(ctx);
            }));
        }
    }
}

impl Actor for ConnManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.start_pump();
        let endpoint = self.endpoint.clone();
        let me = ctx.address();
        self.accept = Some(spawn_task(&self.tasks, async move {
            while let Some(incoming) = endpoint.accept().await {
                // Waits while the actor's mailbox is full (backpressure on accepting);
                // fails only when the actor is gone.
                if me.send(IncomingConn(incoming)).await.is_err() {
                    break;
                }
            }
        }));
        info!(parent: &self.span, addr = ?self.endpoint.local_addr().ok(), "listening");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Reached after `Shutdown` (a no-op then) or when the system stops.
        self.endpoint.close(CLOSE_SHUTDOWN, b"shutdown");
        self.accept = None;
        self.handshakes.clear();
        self.probes.clear();
        self.live.clear();
        self.nat_links.clear();
        self.dial_backs.clear();
        self.circuits.drain_tasks();
    }
}
