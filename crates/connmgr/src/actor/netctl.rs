//! The NAT control channel of every connection, driven by `NatCore`: observed addresses
//! and dial-backs (`nat`). One unidirectional stream each way per up connection; a
//! dial-back comes from a fresh client-only endpoint (another UDP port) with its own ALPN
//! and is closed by the side it reaches as soon as its handshake is done.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::circuits::CircuitStream;
use super::tasks::{spawn_task, Task};
use super::ConnManager;
use crate::core::ConnId;
use crate::error::CLOSE_DIAL_BACK;
use crate::key::{Identity, PeerKey};
use crate::messages::{NatState, SubscribeNat};
use crate::nat::wire::{
    self, CONTROL_RATE_WINDOW, MAX_CONTROL_MESSAGES, STREAM_CIRCUIT, STREAM_CONTROL,
};
use crate::nat::{FixedWindow, NatEvent, NatMessage, NatOutput, NatStatus, RelayAction};
use crate::socket::VirtualPaths;
use crate::tls;

/// The ALPN of a dial-back handshake. The side it reaches closes it at once
/// (`CLOSE_DIAL_BACK`); it never becomes a peer connection.
pub(super) const DIAL_BACK_ALPN: &[u8] = b"replic8-connmgr/dialback";
/// Messages queued for one peer's control stream; more are dropped (each is small and
/// the core sends a handful per connection).
const CONTROL_QUEUE: usize = 16;
/// Application error code with which we stop a unidirectional stream of a kind we do not
/// know, or a control stream past its rate limit.
const STOP_UNKNOWN: quinn::VarInt = quinn::VarInt::from_u32(1);
/// How long a dial-back endpoint may drain after its report (the close of a reached
/// peer is one packet; a failed attempt drains for a few PTOs).
const DIAL_BACK_DRAIN: Duration = Duration::from_secs(1);
/// How long a circuit stream's 8-byte header may take to arrive.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The control channel of the up connection to one peer.
#[derive(Debug)]
pub(super) struct NatLink {
    conn: ConnId,
    tx: mpsc::Sender<NatMessage>,
    writer: Task,
    reader: Task,
}

impl NatLink {
    /// The link's tasks, to stop them at shutdown.
    pub(super) fn into_tasks(self) -> [Task; 2] {
        [self.writer, self.reader]
    }
}

/// A message from a peer's control stream.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct NatInbound {
    key: PeerKey,
    conn: ConnId,
    message: NatMessage,
}

/// A dial-back we served ended.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct DialBackDone {
    seq: u64,
    to: PeerKey,
    addr: SocketAddr,
    nonce: u64,
    reached: bool,
}

impl ConnManager {
    /// The connection `conn` to `key` is up: open its control channel and tell the core.
    pub(super) fn nat_peer_up(&mut self, conn: ConnId, key: PeerKey, ctx: &mut Context<Self>) {
        if self.nat_stopped {
            return;
        }
        let Some(live) = self.live.get(&conn) else {
            return;
        };
        let connection = live.conn.clone();
        let remote = live.addr;
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let writer = spawn_task(&self.tasks, write_control(connection.clone(), rx));
        let reader = spawn_task(
            &self.tasks,
            read_control(connection, key, conn, ctx.address()),
        );
        self.nat_links.insert(
            key,
            NatLink {
                conn,
                tx,
                writer,
                reader,
            },
        );
        self.nat.handle_peer_up(key, remote, Instant::now());
        self.drain_nat(ctx);
    }

    /// The connection `conn` to `key` went down.
    pub(super) fn nat_peer_down(
        &mut self,
        conn: ConnId,
        key: PeerKey,
        addr: Option<SocketAddr>,
        ctx: &mut Context<Self>,
    ) {
        // A relayed connection's circuit is not needed any more.
        if let Some(local) = addr.and_then(|a| VirtualPaths::circuit(&a)) {
            self.nat.close_circuit(local);
            self.drain_nat(ctx);
        }
        if self.nat_links.get(&key).is_some_and(|l| l.conn == conn) {
            self.nat_links.remove(&key);
            self.circuits.watchdogs.remove(&key);
            self.nat.handle_peer_down(key, Instant::now());
            self.drain_nat(ctx);
        }
    }

    /// A dial-back handshake from `key` reached us.
    pub(super) fn nat_dial_back_arrived(&mut self, key: PeerKey, ctx: &mut Context<Self>) {
        self.nat_counters.dial_backs_received += 1;
        self.nat.handle_dial_back_arrived(key, Instant::now());
        self.drain_nat(ctx);
    }

    /// Carries out what the NAT core asks, then re-arms its timer.
    pub(super) fn drain_nat(&mut self, ctx: &mut Context<Self>) {
        if self.nat_stopped {
            // Shutting down: whatever the core asks now would outlive the endpoint.
            while self.nat.poll_output().is_some() {}
            return;
        }
        while let Some(output) = self.nat.poll_output() {
            match output {
                NatOutput::Send { to, message } => {
                    if let Some(link) = self.nat_links.get(&to) {
                        if link.tx.try_send(message).is_err() {
                            debug!(parent: &self.span, peer = %to.fmt_short(),
                                "control queue full: message dropped");
                        }
                    }
                }
                NatOutput::DialBack { to, addr, nonce } => {
                    self.nat_counters.dial_backs_served += 1;
                    let seq = self.next_dial_back;
                    self.next_dial_back += 1;
                    let identity = self.identity.clone();
                    let transport = self.transport.to(addr).clone();
                    let timeout = self.nat.config().dial_back_timeout;
                    let me = ctx.address();
                    debug!(parent: &self.span, peer = %to.fmt_short(), %addr, "dialing back");
                    let task = spawn_task(&self.tasks, async move {
                        let (reached, endpoint) =
                            dial_back(identity, transport, to, addr, timeout).await;
                        me.do_send(DialBackDone {
                            seq,
                            to,
                            addr,
                            nonce,
                            reached,
                        });
                        // After the report: a failed attempt drains for a few PTOs.
                        if let Some(endpoint) = endpoint {
                            endpoint.close(CLOSE_DIAL_BACK, b"dial-back");
                            let _ =
                                tokio::time::timeout(DIAL_BACK_DRAIN, endpoint.wait_idle()).await;
                        }
                    });
                    self.dial_backs.insert(seq, task);
                }
                NatOutput::Punch {
                    peer,
                    addrs,
                    wait_half_rtt,
                } => self.punch(peer, addrs, wait_half_rtt, ctx),
                NatOutput::Relay(RelayAction::Splice {
                    opener,
                    target,
                    budget,
                }) => self.splice(opener, target, budget, ctx),
                NatOutput::Relay(RelayAction::Unsplice { opener, target }) => {
                    self.unsplice(opener, target)
                }
                // A closed leg's early stream goes with it.
                NatOutput::Relay(RelayAction::Close { leg, .. }) => {
                    self.circuits.waiting.remove(&leg);
                }
                // The core sends the relay's messages itself.
                NatOutput::Relay(_) => {}
                NatOutput::CircuitUp {
                    local,
                    relay,
                    wire,
                    peer,
                    opener,
                } => self.circuit_up(local, relay, wire, peer, opener, ctx),
                NatOutput::CircuitDown { local, reason, .. } => {
                    self.circuit_down(local, reason, ctx)
                }
                NatOutput::Located { query, keys, .. } => {
                    if let Some(tx) = self.locates.remove(&query) {
                        // The dial that asked may have been answered already.
                        let _ = tx.send(keys);
                    }
                }
                NatOutput::Event(event) => {
                    match &event {
                        NatEvent::DialBackAsked { .. } => self.nat_counters.dial_backs_asked += 1,
                        NatEvent::Reachability { reachability, peer } => {
                            info!(parent: &self.span, %reachability, via = %peer.fmt_short(),
                                "reachability")
                        }
                        NatEvent::NatType { nat_type } => {
                            info!(parent: &self.span, %nat_type, "nat mapping type")
                        }
                        NatEvent::PublicAddrs { addrs } => {
                            info!(parent: &self.span, ?addrs, "public addresses")
                        }
                        NatEvent::CircuitUp { peer, relay } => {
                            info!(parent: &self.span, peer = %peer.fmt_short(),
                                relay = %relay.fmt_short(), "relay circuit up")
                        }
                        NatEvent::CircuitDown { peer, reason } => {
                            info!(parent: &self.span, peer = %peer.fmt_short(), %reason,
                                "relay circuit down")
                        }
                        NatEvent::Relaying { opener, target } => {
                            info!(parent: &self.span, opener = %opener.fmt_short(),
                                target = %target.fmt_short(), "relaying a circuit")
                        }
                        NatEvent::Punched { peer, addr, ok } => {
                            info!(parent: &self.span, peer = %peer.fmt_short(), %addr, ok,
                                "punch")
                        }
                        NatEvent::RelayRegistered { relay, accepted } => {
                            info!(parent: &self.span, relay = %relay.fmt_short(), accepted,
                                "registered with a relay")
                        }
                        NatEvent::Located { relay, addr, peers } => {
                            debug!(parent: &self.span, relay = %relay.fmt_short(), %addr,
                                found = peers.len(), "located")
                        }
                        NatEvent::DialBackServed { .. } | NatEvent::RelayedDial { .. } => {}
                    }
                    self.publish_nat(event);
                }
            }
        }
        if let Some(handle) = self.nat_timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = self.nat.poll_timeout() {
            let delay = at.saturating_duration_since(Instant::now());
            self.nat_timer = Some(ctx.run_later(delay, |act, ctx| {
                act.nat_timer = None;
                act.nat.handle_timeout(Instant::now());
                act.drain_nat(ctx);
            }));
        }
    }
}

impl ConnManager {
    /// Sends `event` to the `SubscribeNat` subscribers.
    pub(super) fn publish_nat(&mut self, event: NatEvent) {
        self.nat_subs.retain(|s| s.connected());
        for sub in &self.nat_subs {
            sub.do_send(event.clone());
        }
    }

    /// Dials `peer` at each of `addrs`, after half a round trip of its (relayed)
    /// connection if `wait_half_rtt`; each outcome is reported as `NatEvent::Punched`.
    fn punch(
        &mut self,
        peer: PeerKey,
        addrs: Vec<SocketAddr>,
        wait_half_rtt: bool,
        ctx: &mut Context<Self>,
    ) {
        let rtt = self
            .core
            .up(&peer)
            .and_then(|id| self.live.get(&id))
            .map(|l| l.conn.rtt())
            .unwrap_or_default();
        let wait = if wait_half_rtt {
            rtt / 2
        } else {
            Duration::ZERO
        };
        let me = ctx.address();
        let seq = self.next_dial_back;
        self.next_dial_back += 1;
        debug!(parent: &self.span, peer = %peer.fmt_short(), ?addrs, ?wait, "punching");
        let task = spawn_task(&self.tasks, async move {
            tokio::time::sleep(wait).await;
            let count = addrs.len();
            for (i, addr) in addrs.into_iter().enumerate() {
                let dial = crate::messages::Dial {
                    addr,
                    expected_key: Some(peer),
                };
                let ok = matches!(me.send(dial).await, Ok(Ok(_)));
                let last = (i + 1 == count).then_some(seq);
                me.do_send(Punched {
                    peer,
                    addr,
                    ok,
                    last,
                });
            }
        });
        // Owned with the dial-backs: both are short dials of ours for the NAT.
        self.dial_backs.insert(seq, task);
    }
}

/// A punch's dial ended.
#[derive(Message)]
#[rtype(result = "()")]
struct Punched {
    peer: PeerKey,
    addr: SocketAddr,
    ok: bool,
    /// The punch's task id, on its last dial.
    last: Option<u64>,
}

impl Handler<Punched> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: Punched, _ctx: &mut Self::Context) {
        if let Some(seq) = msg.last {
            self.dial_backs.remove(&seq);
        }
        self.nat_counters.punches += 1;
        if msg.ok {
            self.nat_counters.punches_ok += 1;
        }
        self.publish_nat(NatEvent::Punched {
            peer: msg.peer,
            addr: msg.addr,
            ok: msg.ok,
        });
    }
}

impl Handler<NatInbound> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: NatInbound, ctx: &mut Self::Context) {
        if self.nat_links.get(&msg.key).map(|l| l.conn) != Some(msg.conn) {
            return;
        }
        debug!(parent: &self.span, peer = %msg.key.fmt_short(), message = ?msg.message,
            "nat control message");
        self.nat_counters.control_messages_received += 1;
        self.nat
            .handle_message(msg.key, msg.message, Instant::now());
        self.drain_nat(ctx);
    }
}

impl Handler<DialBackDone> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: DialBackDone, ctx: &mut Self::Context) {
        self.dial_backs.remove(&msg.seq);
        debug!(parent: &self.span, peer = %msg.to.fmt_short(), addr = %msg.addr,
            reached = msg.reached, "dial-back done");
        self.nat
            .handle_dial_back_done(msg.to, msg.addr, msg.nonce, msg.reached, Instant::now());
        self.drain_nat(ctx);
    }
}

impl Handler<NatState> for ConnManager {
    type Result = MessageResult<NatState>;

    fn handle(&mut self, _msg: NatState, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.nat.status())
    }
}

impl Handler<SubscribeNat> for ConnManager {
    type Result = MessageResult<SubscribeNat>;

    fn handle(&mut self, msg: SubscribeNat, _ctx: &mut Self::Context) -> Self::Result {
        self.nat_subs.push(msg.0);
        let status: NatStatus = self.nat.status();
        MessageResult(status)
    }
}

/// Whether `conn` was made with the dial-back ALPN.
pub(super) fn is_dial_back(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == DIAL_BACK_ALPN)
}

/// Closes a dial-back connection that reached us.
pub(super) fn close_dial_back(conn: &quinn::Connection) {
    conn.close(CLOSE_DIAL_BACK, b"dial-back");
}

/// Opens our control stream on `conn` and writes what the core sends to the peer.
async fn write_control(conn: quinn::Connection, mut rx: mpsc::Receiver<NatMessage>) {
    let Ok(mut send) = conn.open_uni().await else {
        return;
    };
    if send.write_all(&[STREAM_CONTROL]).await.is_err() {
        return;
    }
    while let Some(message) = rx.recv().await {
        // Our own messages always fit a frame; one that did not would be skipped.
        let Ok(frame) = wire::encode_frame(&message) else {
            continue;
        };
        if send.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// Accepts the peer's unidirectional streams on `conn`: its control stream is read
/// frame by frame (in a task owned by this one) and each message goes to the actor; a
/// circuit stream goes to the actor after its header; anything else is stopped.
async fn read_control(conn: quinn::Connection, key: PeerKey, id: ConnId, me: Addr<ConnManager>) {
    let mut control: Option<AbortOnDrop> = None;
    loop {
        let Ok(mut recv) = conn.accept_uni().await else {
            return;
        };
        let mut kind = [0u8; 1];
        if recv.read_exact(&mut kind).await.is_err() {
            continue;
        }
        match kind[0] {
            STREAM_CONTROL if control.is_none() => {
                let me = me.clone();
                control = Some(AbortOnDrop(tokio::spawn(read_frames(recv, key, id, me))));
            }
            STREAM_CIRCUIT => {
                let mut wire = [0u8; 8];
                let header = tokio::time::timeout(HEADER_TIMEOUT, recv.read_exact(&mut wire));
                if !matches!(header.await, Ok(Ok(()))) {
                    let _ = recv.stop(STOP_UNKNOWN);
                    continue;
                }
                me.do_send(CircuitStream {
                    key,
                    wire: u64::from_be_bytes(wire),
                    recv,
                });
            }
            _ => {
                let _ = recv.stop(STOP_UNKNOWN);
            }
        }
    }
}

/// A tokio task aborted when this is dropped (the control stream's reader, owned by the
/// stream acceptor's task).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the peer's control stream. A peer past `MAX_CONTROL_MESSAGES` per
/// `CONTROL_RATE_WINDOW`, or one that sends a bad frame, is not read any more (its
/// connection stays: the session layer does not depend on this).
async fn read_frames(mut recv: quinn::RecvStream, key: PeerKey, id: ConnId, me: Addr<ConnManager>) {
    let mut window = FixedWindow::default();
    loop {
        let mut header = [0u8; 2];
        if recv.read_exact(&mut header).await.is_err() {
            return;
        }
        let Ok(len) = wire::frame_len(header) else {
            let _ = recv.stop(STOP_UNKNOWN);
            return;
        };
        let mut body = vec![0u8; len];
        if recv.read_exact(&mut body).await.is_err() {
            return;
        }
        let Ok(message) = wire::decode(&body) else {
            let _ = recv.stop(STOP_UNKNOWN);
            return;
        };
        let now = tokio::time::Instant::now().into_std();
        if !window.try_count(now, CONTROL_RATE_WINDOW, MAX_CONTROL_MESSAGES) {
            let _ = recv.stop(STOP_UNKNOWN);
            return;
        }
        let inbound = NatInbound {
            key,
            conn: id,
            message,
        };
        if me.send(inbound).await.is_err() {
            return;
        }
    }
}

/// Dials `to` at `addr` from a fresh client-only endpoint (another UDP port, so the
/// requester's NAT has no mapping that lets it through), its key pinned: whether the
/// handshake completed within `timeout`, and the endpoint to close.
async fn dial_back(
    identity: Identity,
    transport: Arc<quinn::TransportConfig>,
    to: PeerKey,
    addr: SocketAddr,
    timeout: Duration,
) -> (bool, Option<quinn::Endpoint>) {
    let bind = if addr.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let Ok(endpoint) = quinn::Endpoint::client(bind) else {
        return (false, None);
    };
    let reached =
        match tls::client_config(&identity, &[DIAL_BACK_ALPN.to_vec()], Some(to), transport) {
            Err(_) => false,
            Ok(dial_tls) => match endpoint.connect_with(dial_tls.config, addr, tls::SERVER_NAME) {
                Err(_) => false,
                Ok(connecting) => {
                    matches!(tokio::time::timeout(timeout, connecting).await, Ok(Ok(_)))
                }
            },
        };
    (reached, Some(endpoint))
}

/// The NAT counters the actor keeps (part of `ConnStats`).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct NatCounters {
    pub(super) control_messages_received: u64,
    pub(super) dial_backs_asked: u64,
    pub(super) dial_backs_served: u64,
    pub(super) dial_backs_received: u64,
    pub(super) punches: u64,
    pub(super) punches_ok: u64,
}

/// A nonce seed for the core: distinct per run so that a late result of an earlier run
/// is never taken for a new one.
pub(super) fn nonce_seed() -> u64 {
    rand::random()
}
