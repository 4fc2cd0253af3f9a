//! What the actor's tasks report to it (messages private to the actor).

use std::net::SocketAddr;

use actix::prelude::*;

use crate::core::{ConnId, Initiator};
use crate::key::PeerKey;
use crate::messages::RefusedReason;

/// An incoming connection attempt from the accept task.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct IncomingConn(pub(super) quinn::Incoming);

/// A handshake finished (or failed).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct HandshakeDone {
    pub(super) id: ConnId,
    pub(super) addr: SocketAddr,
    pub(super) initiator: Initiator,
    /// The key the server presented (dials only), even if the handshake failed later.
    pub(super) seen: Option<PeerKey>,
    pub(super) result: Result<(quinn::Connection, PeerKey), RefusedReason>,
}

/// A live connection closed.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct ConnClosed {
    pub(super) id: ConnId,
    pub(super) error: quinn::ConnectionError,
}

/// The peer confirmed a connection we initiated.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Confirmed {
    pub(super) id: ConnId,
}

/// A probe answered.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct ProbeDone {
    pub(super) id: ConnId,
    pub(super) alive: bool,
}
