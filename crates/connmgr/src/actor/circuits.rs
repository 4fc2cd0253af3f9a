//! Relay circuits on the wire (`nat::relay`, `nat::circuit`): at a relay, the forwarding
//! between two peers' circuit streams; at an end, the packets between `VirtualPaths` and
//! the circuit's streams, and the relayed dial.
//!
//! A circuit's packets travel on unidirectional streams (`STREAM_CIRCUIT`), one per
//! direction and hop, not in QUIC datagrams: a relayed QUIC packet is 1200 bytes or more
//! and does not fit a datagram on a path of 1200 bytes. The relay copies frames without
//! reading them: they are the two ends' own QUIC packets, encrypted end to end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use super::tasks::{spawn_task, Task};
use super::ConnManager;
use crate::error::DialError;
use crate::key::PeerKey;
use crate::messages::{Dial, DialRelayed};
use crate::nat::relay::Leg;
use crate::nat::wire::{MAX_RELAYED_PACKET, STREAM_CIRCUIT};
use crate::nat::CircuitEnd;
use crate::socket::VirtualPaths;

/// The answer channel of a relayed dial.
pub(super) type Reply = oneshot::Sender<Result<PeerKey, DialError>>;

/// How long the connection to a relay that carries circuits ending here may receive
/// nothing before those circuits are given up: two keep-alive intervals. A live
/// connection answers what we send with ACKs, and sends a keep-alive itself when idle.
const RELAY_SILENCE: Duration = Duration::from_secs(10);
/// How often the relay's silence is checked.
const SILENCE_STEP: Duration = Duration::from_secs(1);

/// Packets queued for one circuit's stream; more are dropped, as UDP would.
const CIRCUIT_QUEUE: usize = 256;

/// Where the packets the endpoint sends to each circuit's virtual address go.
pub(super) type CircuitQueues = Arc<Mutex<HashMap<u64, mpsc::Sender<Bytes>>>>;

/// The actor's circuit state.
#[derive(Debug, Default)]
pub(super) struct Circuits {
    /// Per local circuit (an end here): its outgoing queue.
    pub(super) queues: CircuitQueues,
    /// Per local circuit: its writer and reader tasks.
    pub(super) tasks: HashMap<u64, Vec<Task>>,
    /// Relayed dials waiting for their circuit: local id → (peer, replies: the dial that
    /// opened it and those of the same peer made meanwhile).
    pub(super) dials: HashMap<u64, (PeerKey, Vec<Reply>)>,
    /// At a relay: each leg's other leg, and the circuit's remaining byte budget.
    pub(super) splices: HashMap<Leg, (Leg, Arc<AtomicU64>)>,
    /// At a relay: the forwarding tasks of each leg's incoming stream.
    pub(super) forwards: HashMap<Leg, Task>,
    /// At a relay: a leg's stream that arrived before its circuit was spliced (the
    /// target's stream can overtake its `CircuitAccept`); one per pending leg.
    pub(super) waiting: HashMap<Leg, quinn::RecvStream>,
    /// Per relay carrying circuits that end here: the task that watches its connection
    /// for silence (a relay that died without a close is otherwise noticed only at the
    /// idle timeout).
    pub(super) watchdogs: HashMap<PeerKey, Task>,
    /// Bytes forwarded for others since start.
    pub(super) relayed_bytes: Arc<AtomicU64>,
    /// Reads the endpoint's packets to virtual addresses.
    pub(super) pump: Option<Task>,
}

impl Circuits {
    /// Every task, to stop them at shutdown.
    pub(super) fn drain_tasks(&mut self) -> Vec<Task> {
        let mut all: Vec<Task> = self.tasks.drain().flat_map(|(_, t)| t).collect();
        all.extend(self.forwards.drain().map(|(_, t)| t));
        all.extend(self.watchdogs.drain().map(|(_, t)| t));
        all.extend(self.pump.take());
        all
    }
}

/// A circuit stream a peer opened: its id on that peer's connection, and the stream
/// after the header.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct CircuitStream {
    pub(super) key: PeerKey,
    pub(super) wire: u64,
    pub(super) recv: quinn::RecvStream,
}

/// A relayed circuit carried its byte budget.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct CircuitExhausted(Leg);

impl ConnManager {
    /// Starts the task that carries the endpoint's packets for virtual addresses to the
    /// circuits' queues.
    pub(super) fn start_pump(&mut self) {
        let Some(mut outgoing) = self.paths.take_outgoing() else {
            return;
        };
        let queues = self.circuits.queues.clone();
        self.circuits.pump = Some(spawn_task(&self.tasks, async move {
            while let Some((to, packet)) = outgoing.recv().await {
                let Some(local) = VirtualPaths::circuit(&to) else {
                    continue;
                };
                let queue = queues
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&local)
                    .cloned();
                if let Some(queue) = queue {
                    // Full or gone: dropped, as UDP would; QUIC recovers.
                    let _ = queue.try_send(packet);
                }
            }
        }));
    }

    /// Relay: forward between `opener` and `target`, at most `budget` bytes.
    pub(super) fn splice(
        &mut self,
        opener: Leg,
        target: Leg,
        budget: u64,
        ctx: &mut Context<Self>,
    ) {
        let budget = Arc::new(AtomicU64::new(budget));
        self.circuits
            .splices
            .insert(opener, (target, budget.clone()));
        self.circuits.splices.insert(target, (opener, budget));
        for leg in [opener, target] {
            if let Some(recv) = self.circuits.waiting.remove(&leg) {
                self.forward_leg(leg, recv, ctx);
            }
        }
    }

    /// Relay: stop forwarding between the legs.
    pub(super) fn unsplice(&mut self, opener: Leg, target: Leg) {
        for leg in [opener, target] {
            self.circuits.splices.remove(&leg);
            self.circuits.forwards.remove(&leg);
            self.circuits.waiting.remove(&leg);
        }
    }

    /// Relay: forwards what arrives on `leg`'s stream to the other leg of its splice.
    fn forward_leg(&mut self, leg: Leg, recv: quinn::RecvStream, ctx: &mut Context<Self>) {
        let Some((other, budget)) = self.circuits.splices.get(&leg).cloned() else {
            return;
        };
        let Some(conn) = self.nat_connection(other.0) else {
            return;
        };
        let me = ctx.address();
        let counter = self.circuits.relayed_bytes.clone();
        let task = spawn_task(&self.tasks, async move {
            if !forward(recv, conn, other.1, &budget, &counter).await {
                me.do_send(CircuitExhausted(leg));
            }
        });
        self.circuits.forwards.insert(leg, task);
    }

    /// End: circuit `local` carries packets through `relay` (`wire` on its connection).
    pub(super) fn circuit_up(
        &mut self,
        local: u64,
        relay: PeerKey,
        wire: u64,
        peer: PeerKey,
        opener: bool,
        ctx: &mut Context<Self>,
    ) {
        let Some(conn) = self.nat_connection(relay) else {
            return;
        };
        let (tx, rx) = mpsc::channel(CIRCUIT_QUEUE);
        self.circuits
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(local, tx);
        if !self.circuits.watchdogs.contains_key(&relay) {
            let me = ctx.address();
            let task = spawn_task(&self.tasks, watch_relay(conn.clone(), relay, me));
            self.circuits.watchdogs.insert(relay, task);
        }
        let writer = spawn_task(&self.tasks, write_circuit(conn, wire, rx));
        self.circuits.tasks.entry(local).or_default().push(writer);
        if opener {
            if let Some((key, replies)) = self.circuits.dials.remove(&local) {
                let me = ctx.address();
                let dial = Dial {
                    addr: VirtualPaths::address(local),
                    expected_key: Some(key),
                };
                let task = spawn_task(&self.tasks, async move {
                    let result = match me.send(dial).await {
                        Ok(result) => result,
                        Err(_) => Err(DialError::Shutdown),
                    };
                    for reply in replies {
                        let _ = reply.send(result.clone());
                    }
                });
                self.circuits.tasks.entry(local).or_default().push(task);
            }
        }
        debug!(parent: &self.span, peer = %peer.fmt_short(), relay = %relay.fmt_short(),
            local, opener, "circuit up");
    }

    /// End: circuit `local` is gone, and with it the connection relayed on it (closed
    /// now as `DownReason::PathLost`, not left to its idle timeout).
    pub(super) fn circuit_down(&mut self, local: u64, reason: CircuitEnd, ctx: &mut Context<Self>) {
        self.circuits
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&local);
        self.circuits.tasks.remove(&local);
        if let Some((_, replies)) = self.circuits.dials.remove(&local) {
            for reply in replies {
                let _ = reply.send(Err(DialError::Circuit(reason)));
            }
        }
        let addr = VirtualPaths::address(local);
        let relayed = self
            .live
            .iter()
            .find(|(_, l)| l.addr == addr)
            .map(|(id, _)| *id);
        if let Some(id) = relayed {
            self.core.handle_path_lost(id, reason);
            self.drain(ctx);
        }
    }

    /// The up connection to `key`, if any.
    fn nat_connection(&self, key: PeerKey) -> Option<quinn::Connection> {
        let id = self.core.up(&key)?;
        self.live.get(&id).map(|l| l.conn.clone())
    }
}

impl Handler<CircuitStream> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: CircuitStream, ctx: &mut Self::Context) {
        let leg = (msg.key, msg.wire);
        if self.circuits.splices.contains_key(&leg) {
            self.forward_leg(leg, msg.recv, ctx);
        } else if self.nat.relay_leg_pending(msg.key, msg.wire) {
            // Spliced when the target's accept arrives; dropped with the circuit.
            self.circuits.waiting.insert(leg, msg.recv);
        } else if let Some(local) = self.nat.circuit_local(msg.key, msg.wire) {
            let paths = self.paths.clone();
            let task = spawn_task(&self.tasks, inject_circuit(msg.recv, local, paths));
            self.circuits.tasks.entry(local).or_default().push(task);
        } else {
            let mut recv = msg.recv;
            let _ = recv.stop(quinn::VarInt::from_u32(1));
        }
    }
}

/// The connection to a relay carrying circuits that end here received nothing for
/// `RELAY_SILENCE`.
#[derive(Message)]
#[rtype(result = "()")]
struct RelaySilent(PeerKey);

impl Handler<RelaySilent> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: RelaySilent, ctx: &mut Self::Context) {
        self.circuits.watchdogs.remove(&msg.0);
        info!(parent: &self.span, relay = %msg.0.fmt_short(), "relay silent: its circuits end");
        self.nat.handle_relay_silent(msg.0);
        self.drain_nat(ctx);
    }
}

/// Watches `conn`, to `relay`, until it receives nothing for `RELAY_SILENCE` (then tells
/// the actor) or closes.
async fn watch_relay(conn: quinn::Connection, relay: PeerKey, me: Addr<ConnManager>) {
    let mut seen = conn.stats().udp_rx.datagrams;
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(SILENCE_STEP).await;
        if conn.close_reason().is_some() {
            return;
        }
        let now = conn.stats().udp_rx.datagrams;
        if now != seen {
            (seen, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= RELAY_SILENCE {
            me.do_send(RelaySilent(relay));
            return;
        }
    }
}

impl Handler<CircuitExhausted> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: CircuitExhausted, ctx: &mut Self::Context) {
        self.nat.handle_circuit_exhausted(msg.0);
        self.drain_nat(ctx);
    }
}

impl Handler<DialRelayed> for ConnManager {
    type Result = ResponseFuture<Result<PeerKey, DialError>>;

    fn handle(&mut self, msg: DialRelayed, ctx: &mut Self::Context) -> Self::Result {
        if self.core.up(&msg.key).is_some() {
            let key = msg.key;
            return Box::pin(async move { Ok(key) });
        }
        // A relayed dial of this peer under way: its answer is ours.
        let (tx, rx) = oneshot::channel();
        if let Some((_, replies)) = self
            .circuits
            .dials
            .values_mut()
            .find(|(k, _)| *k == msg.key)
        {
            replies.push(tx);
            return Box::pin(async move { rx.await.unwrap_or(Err(DialError::Shutdown)) });
        }
        let local = match self.nat.open_circuit(msg.relay, msg.key, Instant::now()) {
            Ok(local) => local,
            Err(end) => return Box::pin(async move { Err(DialError::Circuit(end)) }),
        };
        self.circuits.dials.insert(local, (msg.key, vec![tx]));
        self.drain_nat(ctx);
        Box::pin(async move { rx.await.unwrap_or(Err(DialError::Shutdown)) })
    }
}

/// Reads one frame (a 2-byte length, then 1 to `MAX_RELAYED_PACKET` bytes) into `buf`;
/// `false` at the stream's end or on a bad frame.
async fn read_frame(recv: &mut quinn::RecvStream, buf: &mut Vec<u8>) -> bool {
    let mut header = [0u8; 2];
    if recv.read_exact(&mut header).await.is_err() {
        return false;
    }
    let len = u16::from_be_bytes(header) as usize;
    if len == 0 || len > MAX_RELAYED_PACKET {
        return false;
    }
    buf.clear();
    buf.resize(len, 0);
    recv.read_exact(buf).await.is_ok()
}

/// The header of a circuit stream: the kind, then the circuit id on that connection.
fn circuit_header(wire: u64) -> [u8; 9] {
    let mut header = [0u8; 9];
    header[0] = STREAM_CIRCUIT;
    header[1..].copy_from_slice(&wire.to_be_bytes());
    header
}

/// Relay: copies the frames of `recv` to a new circuit stream on `to` (id `wire`) while
/// the budget lasts; `false` once it is spent.
async fn forward(
    mut recv: quinn::RecvStream,
    to: quinn::Connection,
    wire: u64,
    budget: &AtomicU64,
    counter: &AtomicU64,
) -> bool {
    let Ok(mut send) = to.open_uni().await else {
        return true;
    };
    if send.write_all(&circuit_header(wire)).await.is_err() {
        return true;
    }
    let mut buf = Vec::with_capacity(MAX_RELAYED_PACKET);
    while read_frame(&mut recv, &mut buf).await {
        let n = buf.len() as u64;
        let spent = budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(n)
            })
            .is_err();
        if spent {
            return false;
        }
        let len = (buf.len() as u16).to_be_bytes();
        if send.write_all(&len).await.is_err() || send.write_all(&buf).await.is_err() {
            return true;
        }
        counter.fetch_add(n, Ordering::Relaxed);
    }
    true
}

/// End: writes the endpoint's packets for circuit `wire` on a new stream of `conn`.
async fn write_circuit(conn: quinn::Connection, wire: u64, mut rx: mpsc::Receiver<Bytes>) {
    let Ok(mut send) = conn.open_uni().await else {
        return;
    };
    if send.write_all(&circuit_header(wire)).await.is_err() {
        return;
    }
    while let Some(packet) = rx.recv().await {
        if packet.is_empty() || packet.len() > MAX_RELAYED_PACKET {
            continue;
        }
        let len = (packet.len() as u16).to_be_bytes();
        if send.write_all(&len).await.is_err() || send.write_all(&packet).await.is_err() {
            return;
        }
    }
}

/// End: hands the packets of a circuit stream to the endpoint, as from the circuit's
/// virtual address.
async fn inject_circuit(mut recv: quinn::RecvStream, local: u64, paths: VirtualPaths) {
    let from: SocketAddr = VirtualPaths::address(local);
    let mut buf = Vec::with_capacity(MAX_RELAYED_PACKET);
    while read_frame(&mut recv, &mut buf).await {
        // A full queue drops, as UDP would.
        let _ = paths.inject(from, Bytes::copy_from_slice(&buf));
    }
}
