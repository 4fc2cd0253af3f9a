//! Our dials: `Dial` requests and the dialing handshake.

use std::net::SocketAddr;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::debug;

use super::fallback;
use super::reports::HandshakeDone;
use super::tasks::spawn_task;
use super::ConnManager;
use crate::core::{ConnId, DialStart, Initiator};
use crate::error::DialError;
use crate::key::PeerKey;
use crate::messages::{Dial, RefusedReason};
use crate::socket::VirtualPaths;
use crate::tls;

impl ConnManager {
    /// Fails a dial to an address family the socket cannot send to, before the core
    /// records it: quinn sees only IPv6 (decision 143) and would wait for its handshake
    /// timeout while the socket drops every packet.
    fn check_family(&self, addr: SocketAddr) -> Result<(), DialError> {
        if VirtualPaths::is_virtual(&addr) || self.socket.families().carries(addr) {
            return Ok(());
        }
        let family = match crate::socket::unmap(addr) {
            SocketAddr::V4(_) => "IPv4",
            SocketAddr::V6(_) => "IPv6",
        };
        Err(DialError::AddressFamily {
            addr,
            local: self.socket.real_addr(),
            family,
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
            self.transport.to(addr).clone(),
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
}

impl Handler<Dial> for ConnManager {
    type Result = ResponseFuture<Result<PeerKey, DialError>>;

    fn handle(&mut self, msg: Dial, ctx: &mut Self::Context) -> Self::Result {
        // Through our relays too, or only (`fallback`, decision 151).
        if let Some(key) = self.relayed_at(msg.addr, msg.expected_key) {
            return Box::pin(async move { Ok(key) });
        }
        if self.is_stale_circuit(msg.addr) {
            return Box::pin(fallback::through_relays(
                ctx.address(),
                msg.addr,
                msg.expected_key,
            ));
        }
        let after = self.relayed_dial_after(msg.addr, msg.expected_key);
        let (addr, expected) = (msg.addr, msg.expected_key);
        let direct = self.dial_direct(msg, ctx);
        match after {
            Some(after) => Box::pin(fallback::race(direct, after, ctx.address(), addr, expected)),
            None => direct,
        }
    }
}

impl ConnManager {
    /// The direct dial of `msg`: the core's decision, and the handshake if it says so.
    fn dial_direct(
        &mut self,
        msg: Dial,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<PeerKey, DialError>> {
        let now = Instant::now();
        let decision = self
            .check_family(msg.addr)
            .and_then(|()| self.core.handle_dial(msg.addr, msg.expected_key, now));
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
