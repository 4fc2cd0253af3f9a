//! Connections after their handshake: established or refused, confirmed, probed, closed.

use std::time::Instant;

use actix::prelude::*;
use tracing::debug;

use super::datagrams::await_confirm;
use super::netctl;
use super::reports::{Confirmed, ConnClosed, HandshakeDone, ProbeDone};
use super::tasks::spawn_task;
use super::{ConnManager, Live};
use crate::core::Initiator;
use crate::error::{DialError, CLOSE_DUPLICATE, CLOSE_REFUSED, CLOSE_SHUTDOWN};
use crate::messages::{ConnRefused, RefusedReason};

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
            Ok((conn, key))
                if msg.initiator == Initiator::Remote && netctl::is_dial_back(&conn) =>
            {
                debug!(parent: &self.span, peer = %key.fmt_short(), addr = %msg.addr,
                    "dial-back reached us");
                netctl::close_dial_back(&conn);
                self.core.handle_not_a_peer(msg.id);
                self.nat_dial_back_arrived(key, ctx);
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
