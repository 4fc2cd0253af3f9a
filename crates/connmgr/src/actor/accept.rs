//! Incoming connections: address validation, refusals and the accepting handshake.

use actix::prelude::*;
use tracing::debug;

use super::reports::{HandshakeDone, IncomingConn};
use super::tasks::spawn_task;
use super::ConnManager;
use crate::core::{IncomingStart, Initiator};
use crate::error::DialError;
use crate::messages::{ConnRefused, RefusedReason};
use crate::tls;

impl Handler<IncomingConn> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: IncomingConn, ctx: &mut Self::Context) {
        let incoming = msg.0;
        // quinn sees IPv4 peers IPv4-mapped (`NodeSocket`); the rest of us, plain.
        let addr = crate::socket::unmap(incoming.remote_address());
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
        let server = self.server.to(addr).clone();
        let task = spawn_task(&self.tasks, async move {
            let result = match incoming.accept_with(server) {
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
