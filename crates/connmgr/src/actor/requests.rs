//! The public requests other than `Dial`: close, ban, activity, peers, stats,
//! subscriptions, shutdown.

use std::time::Instant;

use actix::prelude::*;
use tracing::{debug, info};

use super::tasks::Task;
use super::ConnManager;
use crate::error::CLOSE_SHUTDOWN;
use crate::messages::*;

/// The longest `close` waits for closed connections to drain: three PTOs of a path with a
/// round trip of up to about 600 ms, so a clean close is never cut short on a real path.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

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
                    relayed: crate::core::is_relayed(&addr),
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
        stats.nat_messages_received = self.nat_counters.control_messages_received;
        stats.dial_backs_asked = self.nat_counters.dial_backs_asked;
        stats.dial_backs_served = self.nat_counters.dial_backs_served;
        stats.dial_backs_received = self.nat_counters.dial_backs_received;
        stats.punches = self.nat_counters.punches;
        stats.punches_ok = self.nat_counters.punches_ok;
        stats.circuits_relayed = self.nat.circuits_relayed();
        stats.relayed_bytes = self
            .circuits
            .relayed_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
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
        self.nat_stopped = true;
        self.core.shutdown();
        self.drain(ctx);
        // Every task is aborted and joined before the reply, so none outlives `close`.
        let mut tasks: Vec<Task> = self.accept.take().into_iter().collect();
        tasks.extend(self.handshakes.drain().map(|(_, t)| t));
        tasks.extend(self.probes.drain().map(|(_, t)| t));
        tasks.extend(self.nat_links.drain().flat_map(|(_, l)| l.into_tasks()));
        tasks.extend(self.dial_backs.drain().map(|(_, t)| t));
        tasks.extend(self.circuits.drain_tasks());
        for (_, live) in self.live.drain() {
            tasks.push(live.watch);
            tasks.extend(live.confirm);
            tasks.extend(live.resend);
        }
        // Anything the core did not know about yet (handshakes) goes with the endpoint.
        self.endpoint.close(CLOSE_SHUTDOWN, b"shutdown");
        let endpoint = self.endpoint.clone();
        let socket = self.socket.clone();
        let span = self.span.clone();
        Box::pin(
            async move {
                for task in tasks {
                    task.stop().await;
                }
                // Closed connections drain for three PTOs (well under a second on a
                // live path). quinn never drains a connection whose first packet from
                // the peer was its close (decision 156): that one stays until the idle
                // timeout. So the drain is bounded, and what is left then ends with the
                // socket (RFC 9000 10.2 lets a drain end early once the socket is closed).
                if tokio::time::timeout(SHUTDOWN_DRAIN, endpoint.wait_idle())
                    .await
                    .is_err()
                {
                    debug!(parent: &span, open = endpoint.open_connections(),
                        "connections still draining at shutdown: socket shut");
                    socket.shut();
                }
            }
            .into_actor(self)
            .map(|_, _act, ctx| ctx.stop()),
        )
    }
}
