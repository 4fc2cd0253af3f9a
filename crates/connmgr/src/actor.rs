//! The `ConnManager` actor: a thin shell around `ConnCore` that owns the quinn endpoint.
//!
//! quinn I/O (accepting, handshakes, watching for close, probes) runs in tokio tasks that
//! message the actor; the actor feeds what they report into the core and carries out the
//! core's events. Every task is owned through an abort-on-drop `Task`, so dropping the
//! actor leaves none behind.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{debug, info};

use crate::config::ConnManagerConfig;
use crate::core::{ConnCore, ConnId, CoreEvent, DialStart, IncomingStart, Initiator};
use crate::error::{
    CloseReason, DialError, SpawnError, CLOSE_DUPLICATE, CLOSE_REFUSED, CLOSE_SHUTDOWN,
};
use crate::key::{Identity, PeerKey};
use crate::messages::*;
use crate::tls;
use crate::transport;

/// A spawned tokio task, aborted when dropped; counted in the actor's task counter while
/// it runs.
#[derive(Debug)]
struct Task(Option<tokio::task::JoinHandle<()>>);

impl Task {
    /// Aborts the task and waits until it is gone.
    async fn stop(mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
            // A cancelled or finished task: either way it is gone.
            let _ = handle.await;
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// Decrements the live-task counter when the task's future is dropped (done or aborted).
struct TaskCount(Arc<AtomicUsize>);

impl Drop for TaskCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn spawn_task<F>(counter: &Arc<AtomicUsize>, fut: F) -> Task
where
    F: Future<Output = ()> + Send + 'static,
{
    counter.fetch_add(1, Ordering::SeqCst);
    let count = TaskCount(counter.clone());
    Task(Some(tokio::spawn(async move {
        let _count = count;
        fut.await;
    })))
}

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

/// How many times a confirmation is sent again after the first, one step apart.
const CONFIRM_RESENDS: u32 = 2;
/// The step between two sends of a confirmation is the round trip time, within these
/// bounds: all three land within the default settle window (250 ms) of the peer.
const CONFIRM_STEP: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(80));

/// Sends the confirmation `CONFIRM_RESENDS` more times, one round trip apart (within
/// `CONFIRM_STEP`), unless the connection closed. The peer ignores repeats.
async fn resend_confirm(conn: quinn::Connection) {
    let step = conn.rtt().clamp(CONFIRM_STEP.0, CONFIRM_STEP.1);
    for _ in 0..CONFIRM_RESENDS {
        tokio::time::sleep(step).await;
        if conn.close_reason().is_some()
            || conn
                .send_datagram(bytes::Bytes::from_static(CONFIRM_DATAGRAM))
                .is_err()
        {
            return;
        }
    }
}

/// The datagram by which the greater key confirms a connection that the smaller key
/// initiated (`docs/PROTOCOL.md`, connmgr). Any other datagram is not a confirmation.
const CONFIRM_DATAGRAM: &[u8] = b"replic8-connmgr/confirm";

/// Reads datagrams on `conn` until the peer's confirmation; `false` if it closed first.
/// Runs only until the connection is up, so it never competes with a protocol's reads.
async fn await_confirm(conn: &quinn::Connection) -> bool {
    loop {
        match conn.read_datagram().await {
            Ok(datagram) if datagram[..] == *CONFIRM_DATAGRAM => return true,
            // An empty liveness probe, or anything else: not for us.
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// The handle returned by `ConnManager::spawn`.
#[derive(Debug, Clone)]
pub struct ConnManagerHandle {
    addr: Addr<ConnManager>,
    local_addr: SocketAddr,
    key: PeerKey,
    tasks: Arc<AtomicUsize>,
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
    transport: Arc<quinn::TransportConfig>,
    handshake_timeout: Duration,
    probe_timeout: Duration,
    core: ConnCore,
    endpoint: quinn::Endpoint,
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
        let transport = Arc::new(transport::transport_config(&config.transport));
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls::server_config(
            &config.identity,
            &config.alpn,
        )?));
        server.transport_config(transport.clone());
        let socket = transport::bind_udp(config.listen, config.transport.socket_buffer)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let local_addr = endpoint.local_addr()?;
        let tasks = Arc::new(AtomicUsize::new(0));
        let span = tracing::info_span!("connmgr", me = %me.fmt_short());
        let actor = ConnManager {
            me,
            identity: config.identity,
            alpn: config.alpn,
            transport,
            handshake_timeout: config.handshake_timeout,
            probe_timeout: config.probe_timeout,
            core: ConnCore::new(me, config.policy),
            endpoint,
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
            span,
        };
        let addr = actor.start();
        Ok(ConnManagerHandle {
            addr,
            local_addr,
            key: me,
            tasks,
        })
    }

    /// Starts the handshake of dial `id`.
    fn start_dial(
        &mut self,
        id: ConnId,
        addr: SocketAddr,
        expected: Option<PeerKey>,
        ctx: &mut Context<Self>,
    ) {
        let dial_tls = match tls::client_config(
            &self.identity,
            &self.alpn,
            expected,
            self.transport.clone(),
        ) {
            Ok(t) => t,
            Err(e) => {
                self.core.handle_handshake_failed(
                    id,
                    DialError::Tls(e.to_string()),
                    Instant::now(),
                );
                return;
            }
        };
        let connecting = match self
            .endpoint
            .connect_with(dial_tls.config, addr, tls::SERVER_NAME)
        {
            Ok(c) => c,
            Err(e) => {
                self.core
                    .handle_handshake_failed(id, DialError::Connect(e), Instant::now());
                return;
            }
        };
        let me = ctx.address();
        let timeout = self.handshake_timeout;
        let seen = dial_tls.seen;
        let task = spawn_task(&self.tasks, async move {
            let result = match tokio::time::timeout(timeout, connecting).await {
                Err(_) => Err(RefusedReason::Timeout),
                Ok(Err(e)) => {
                    let actual = seen.lock().ok().and_then(|s| *s);
                    Err(RefusedReason::Handshake(match (expected, actual) {
                        (Some(expected), Some(actual)) if expected != actual => {
                            DialError::KeyMismatch(tls::KeyMismatch { expected, actual })
                        }
                        _ => DialError::Connection(e),
                    }))
                }
                Ok(Ok(conn)) => match tls::peer_key(&conn) {
                    Ok(key) => Ok((conn, key)),
                    Err(e) => Err(RefusedReason::BadKey(e)),
                },
            };
            let seen = seen.lock().ok().and_then(|s| *s);
            me.do_send(HandshakeDone {
                id,
                addr,
                initiator: Initiator::Local,
                seen,
                result,
            });
        });
        self.handshakes.insert(id, task);
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

/// Whether `conn` is alive: an empty datagram (ack-eliciting, and ignored by the session
/// layer) is sent, and any ACK frame that arrives within `timeout` proves the peer still
/// holds the connection.
async fn probe(conn: &quinn::Connection, timeout: Duration) -> bool {
    if conn.close_reason().is_some() {
        return false;
    }
    let before = conn.stats().frame_rx.acks;
    if conn.send_datagram(bytes::Bytes::new()).is_err() {
        // Datagrams disabled by the peer: fall back to any ACK (keep-alives elicit them).
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    loop {
        tokio::select! {
            _ = conn.closed() => return false,
            _ = tokio::time::sleep_until(deadline) => return false,
            _ = tick.tick() => {
                if conn.stats().frame_rx.acks > before {
                    return true;
                }
            }
        }
    }
}

impl Actor for ConnManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
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
    }
}

/// An incoming connection attempt from the accept task.
#[derive(Message)]
#[rtype(result = "()")]
struct IncomingConn(quinn::Incoming);

/// A handshake finished (or failed).
#[derive(Message)]
#[rtype(result = "()")]
struct HandshakeDone {
    id: ConnId,
    addr: SocketAddr,
    initiator: Initiator,
    /// The key the server presented (dials only), even if the handshake failed later.
    seen: Option<PeerKey>,
    result: Result<(quinn::Connection, PeerKey), RefusedReason>,
}

/// A live connection closed.
#[derive(Message)]
#[rtype(result = "()")]
struct ConnClosed {
    id: ConnId,
    error: quinn::ConnectionError,
}

/// The peer confirmed a connection we initiated.
#[derive(Message)]
#[rtype(result = "()")]
struct Confirmed {
    id: ConnId,
}

/// A probe answered.
#[derive(Message)]
#[rtype(result = "()")]
struct ProbeDone {
    id: ConnId,
    alive: bool,
}

impl Handler<IncomingConn> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: IncomingConn, ctx: &mut Self::Context) {
        let incoming = msg.0;
        let addr = incoming.remote_address();
        let id = match self
            .core
            .handle_incoming(addr, incoming.remote_address_validated())
        {
            Ok(IncomingStart::Accept(id)) => id,
            Ok(IncomingStart::Retry) => {
                // Not validated, so quinn allows a retry; should it not, refusing is the
                // stateless answer that is left.
                match incoming.retry() {
                    Ok(()) => {
                        self.counters.retries_sent += 1;
                        debug!(parent: &self.span, %addr, "address validation: retry sent");
                    }
                    Err(e) => e.into_incoming().refuse(),
                }
                return;
            }
            Err(reason) => {
                incoming.refuse();
                self.report_refused(ConnRefused {
                    addr,
                    key: None,
                    initiator: Initiator::Remote,
                    reason: reason.into(),
                });
                return;
            }
        };
        let me = ctx.address();
        let timeout = self.handshake_timeout;
        let task = spawn_task(&self.tasks, async move {
            let result = match incoming.accept() {
                Err(e) => Err(RefusedReason::Handshake(DialError::Connection(e))),
                Ok(connecting) => match tokio::time::timeout(timeout, connecting).await {
                    Err(_) => Err(RefusedReason::Timeout),
                    Ok(Err(e)) => Err(RefusedReason::Handshake(DialError::Connection(e))),
                    Ok(Ok(conn)) => match tls::peer_key(&conn) {
                        Ok(key) => Ok((conn, key)),
                        Err(e) => Err(RefusedReason::BadKey(e)),
                    },
                },
            };
            me.do_send(HandshakeDone {
                id,
                addr,
                initiator: Initiator::Remote,
                seen: None,
                result,
            });
        });
        self.handshakes.insert(id, task);
    }
}

impl Handler<HandshakeDone> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: HandshakeDone, ctx: &mut Self::Context) {
        self.handshakes.remove(&msg.id);
        let now = Instant::now();
        match msg.result {
            Ok((conn, _)) if !self.core.is_handshaking(msg.id) => {
                // The core gave up on it meanwhile (shutdown): nobody will use it.
                conn.close(CLOSE_SHUTDOWN, b"shutdown");
            }
            Ok((conn, key)) => {
                let me = ctx.address();
                let watched = conn.clone();
                let id = msg.id;
                let watch = spawn_task(&self.tasks, async move {
                    let error = watched.closed().await;
                    me.do_send(ConnClosed { id, error });
                });
                let confirm = (msg.initiator == Initiator::Local && key > self.me).then(|| {
                    let me = ctx.address();
                    let conn = conn.clone();
                    spawn_task(&self.tasks, async move {
                        if await_confirm(&conn).await {
                            me.do_send(Confirmed { id });
                        }
                    })
                });
                debug!(parent: &self.span, peer = %key.fmt_short(), addr = %msg.addr,
                    conn = %msg.id, initiator = ?msg.initiator, "handshake done");
                self.live.insert(
                    msg.id,
                    Live {
                        conn,
                        addr: msg.addr,
                        key,
                        initiator: msg.initiator,
                        watch,
                        confirm,
                        resend: None,
                    },
                );
                self.core.handle_established(msg.id, key, now);
            }
            Err(RefusedReason::Handshake(DialError::Connection(
                quinn::ConnectionError::ApplicationClosed(close),
            ))) if close.error_code == CLOSE_DUPLICATE => {
                // The peer dialed us at the same time and closed this one as the loser:
                // not a failure, the dial waits for the peer's connection.
                debug!(parent: &self.span, conn = %msg.id, addr = %msg.addr,
                    "closed as a duplicate during its handshake");
                self.core.handle_handshake_duplicate(
                    msg.id,
                    msg.seen,
                    quinn::ConnectionError::ApplicationClosed(close),
                    now,
                );
            }
            Err(reason) => {
                let error = match &reason {
                    RefusedReason::Handshake(e) => e.clone(),
                    RefusedReason::Timeout => DialError::Timeout,
                    RefusedReason::BadKey(e) => DialError::Tls(e.to_string()),
                    RefusedReason::Policy(p) => DialError::Refused(p.clone()),
                };
                // A refusal by the peer's policy arrives as an application close.
                let error = match error {
                    DialError::Connection(quinn::ConnectionError::ApplicationClosed(close))
                        if close.error_code == CLOSE_REFUSED =>
                    {
                        DialError::RefusedByPeer(String::from_utf8_lossy(&close.reason).into())
                    }
                    other => other,
                };
                self.report_refused(ConnRefused {
                    addr: msg.addr,
                    key: None,
                    initiator: msg.initiator,
                    reason,
                });
                self.core.handle_handshake_failed(msg.id, error, now);
            }
        }
        self.drain(ctx);
    }
}

impl Handler<ConnClosed> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: ConnClosed, ctx: &mut Self::Context) {
        debug!(parent: &self.span, conn = %msg.id, error = %msg.error, "connection closed");
        self.probes.remove(&msg.id);
        self.core.handle_closed(msg.id, msg.error, Instant::now());
        self.drain(ctx);
        if let Some(live) = self.live.remove(&msg.id) {
            let stats = live.conn.stats();
            self.counters.bytes_sent += stats.udp_tx.bytes;
            self.counters.bytes_received += stats.udp_rx.bytes;
        }
    }
}

impl Handler<ProbeDone> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: ProbeDone, ctx: &mut Self::Context) {
        self.probes.remove(&msg.id);
        debug!(parent: &self.span, conn = %msg.id, alive = msg.alive, "probe answered");
        self.core
            .handle_probe_result(msg.id, msg.alive, Instant::now());
        self.drain(ctx);
    }
}

impl Handler<Confirmed> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: Confirmed, ctx: &mut Self::Context) {
        debug!(parent: &self.span, conn = %msg.id, "confirmed by the peer");
        if let Some(live) = self.live.get_mut(&msg.id) {
            live.confirm = None;
        }
        self.core.handle_confirmed(msg.id, Instant::now());
        self.drain(ctx);
    }
}

impl Handler<Dial> for ConnManager {
    type Result = ResponseFuture<Result<PeerKey, DialError>>;

    fn handle(&mut self, msg: Dial, ctx: &mut Self::Context) -> Self::Result {
        let now = Instant::now();
        let decision = self.core.handle_dial(msg.addr, msg.expected_key, now);
        let rx = match decision {
            Err(e) => {
                self.counters.dials_failed += 1;
                debug!(parent: &self.span, addr = %msg.addr, error = %e, "dial refused");
                return Box::pin(async move { Err(e) });
            }
            Ok(DialStart::Connected(key)) => return Box::pin(async move { Ok(key) }),
            Ok(DialStart::Wait(id)) => {
                let (tx, rx) = oneshot::channel();
                self.replies.insert(id, tx);
                rx
            }
            Ok(DialStart::Dial(id)) => {
                self.counters.dials_started += 1;
                let (tx, rx) = oneshot::channel();
                self.replies.insert(id, tx);
                debug!(parent: &self.span, addr = %msg.addr, conn = %id, "dialing");
                self.start_dial(id, msg.addr, msg.expected_key, ctx);
                rx
            }
        };
        self.drain(ctx);
        Box::pin(async move { rx.await.unwrap_or(Err(DialError::Shutdown)) })
    }
}

impl Handler<Close> for ConnManager {
    type Result = Result<(), CloseError>;

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) -> Self::Result {
        let closed = self.core.close(msg.key);
        self.drain(ctx);
        if closed {
            Ok(())
        } else {
            Err(CloseError::NotConnected(msg.key))
        }
    }
}

impl Handler<Ban> for ConnManager {
    type Result = bool;

    fn handle(&mut self, msg: Ban, ctx: &mut Self::Context) -> Self::Result {
        info!(parent: &self.span, peer = %msg.key.fmt_short(), duration = ?msg.duration, "ban");
        let had = self.core.up(&msg.key).is_some();
        self.core.ban(msg.key, msg.duration, Instant::now());
        self.drain(ctx);
        had
    }
}

impl Handler<PeerActivity> for ConnManager {
    type Result = Result<(), ActivityError>;

    fn handle(&mut self, msg: PeerActivity, _ctx: &mut Self::Context) -> Self::Result {
        debug!(parent: &self.span, peer = %msg.key.fmt_short(), active = msg.active,
            "peer activity");
        if self
            .core
            .handle_activity(msg.key, msg.active, Instant::now())
        {
            Ok(())
        } else {
            Err(ActivityError::NotConnected(msg.key))
        }
    }
}

impl Handler<Peers> for ConnManager {
    type Result = Vec<PeerStats>;

    fn handle(&mut self, _msg: Peers, _ctx: &mut Self::Context) -> Self::Result {
        let mut peers: Vec<PeerStats> = self
            .core
            .peers()
            .filter_map(|(id, key, initiator, addr)| {
                let live = self.live.get(&id)?;
                let stats = live.conn.stats();
                Some(PeerStats {
                    key,
                    addr,
                    initiator,
                    rtt: live.conn.rtt(),
                    bytes_sent: stats.udp_tx.bytes,
                    bytes_received: stats.udp_rx.bytes,
                    connection_id: live.conn.stable_id(),
                })
            })
            .collect();
        peers.sort_by_key(|p| p.key);
        peers
    }
}

impl Handler<Stats> for ConnManager {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _msg: Stats, _ctx: &mut Self::Context) -> Self::Result {
        let mut stats = self.counters.clone();
        stats.peers = self.core.peers().count();
        for live in self.live.values() {
            let conn = live.conn.stats();
            stats.bytes_sent += conn.udp_tx.bytes;
            stats.bytes_received += conn.udp_rx.bytes;
        }
        let endpoint = self.endpoint.stats();
        stats.handshakes_refused_by_quinn =
            endpoint.refused_handshakes + endpoint.ignored_handshakes;
        MessageResult(stats)
    }
}

impl Handler<Subscribe> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) {
        for (id, key, initiator, addr) in self.core.peers() {
            if let Some(live) = self.live.get(&id) {
                msg.peer_up.do_send(PeerUp {
                    key,
                    addr,
                    connection: live.conn.clone(),
                    initiator,
                });
            }
        }
        self.up_subs.push(msg.peer_up);
        self.down_subs.push(msg.peer_down);
    }
}

impl Handler<SubscribeRefused> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: SubscribeRefused, _ctx: &mut Self::Context) {
        self.refused_subs.push(msg.0);
    }
}

impl Handler<Shutdown> for ConnManager {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        info!(parent: &self.span, "shutting down");
        self.core.shutdown();
        self.drain(ctx);
        // Every task is aborted and joined before the reply, so none outlives `close`.
        let mut tasks: Vec<Task> = self.accept.take().into_iter().collect();
        tasks.extend(self.handshakes.drain().map(|(_, t)| t));
        tasks.extend(self.probes.drain().map(|(_, t)| t));
        for (_, live) in self.live.drain() {
            tasks.push(live.watch);
            tasks.extend(live.confirm);
            tasks.extend(live.resend);
        }
        // Anything the core did not know about yet (handshakes) goes with the endpoint.
        self.endpoint.close(CLOSE_SHUTDOWN, b"shutdown");
        let endpoint = self.endpoint.clone();
        Box::pin(
            async move {
                for task in tasks {
                    task.stop().await;
                }
                endpoint.wait_idle().await;
            }
            .into_actor(self)
            .map(|_, _act, ctx| ctx.stop()),
        )
    }
}
