//! A hostile peer built from the project's own pieces: a real connection manager (its own
//! ed25519 identity, TLS with raw public keys, the `replic8/1` ALPN) whose connections
//! are driven by hand with the real frame and message encoders, so it can send exactly
//! what an honest session never would.
//!
//! [`HostilePeer`] dials; [`RawSession`] is the dialer's side of a session on one
//! connection: the control stream with our hello written, and feed streams opened at
//! will. Nothing here checks what the victim answers: the tests observe the victim.

use std::net::SocketAddr;

use actix::{Actor, Context, Handler};
use replic8::keys::{exporter_secret, ExporterSecret};
use replic8::message::{self, FeedStreamHeader, Message, DIALECT, PROTOCOL_VERSION};
use replic8_connmgr::{
    ConnManager, ConnManagerConfig, ConnManagerHandle, Dial, DialError, Identity, PeerDown,
    PeerKey, PeerUp, Subscribe,
};
use tokio::sync::mpsc;

use crate::GUARD;

/// Forwards the connection manager's `PeerUp`s to the test.
#[derive(Debug)]
struct Sink(mpsc::UnboundedSender<PeerUp>);

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<PeerUp> for Sink {
    type Result = ();
    fn handle(&mut self, up: PeerUp, _: &mut Context<Self>) {
        let _ = self.0.send(up);
    }
}

impl Handler<PeerDown> for Sink {
    type Result = ();
    fn handle(&mut self, _: PeerDown, _: &mut Context<Self>) {}
}

/// A connection manager on 127.0.0.1 with a fresh identity, speaking the replic8 ALPN,
/// whose connections the test drives. Must run inside an `actix::System`.
#[derive(Debug)]
pub struct HostilePeer {
    handle: ConnManagerHandle,
    ups: mpsc::UnboundedReceiver<PeerUp>,
}

impl HostilePeer {
    /// Starts the connection manager.
    pub async fn spawn() -> HostilePeer {
        let config = ConnManagerConfig::new(Identity::generate())
            .with_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .with_alpn(vec![message::ALPN.to_vec()]);
        let handle = ConnManager::spawn(config)
            .unwrap_or_else(|e| panic!("hostile peer: connection manager: {e}"));
        let (tx, ups) = mpsc::unbounded_channel();
        let sink = Sink(tx).start();
        handle
            .addr()
            .send(Subscribe {
                peer_up: sink.clone().recipient(),
                peer_down: sink.recipient(),
            })
            .await
            .unwrap_or_else(|e| panic!("hostile peer: subscribe: {e}"));
        HostilePeer { handle, ups }
    }

    /// Our key.
    pub fn key(&self) -> PeerKey {
        self.handle.key()
    }

    /// Dials `addr` and returns the connection once it is up, or why the dial failed.
    pub async fn dial(&mut self, addr: SocketAddr) -> Result<quinn::Connection, DialError> {
        let dial = self.handle.addr().send(Dial {
            addr,
            expected_key: None,
        });
        let key = tokio::time::timeout(GUARD, dial)
            .await
            .unwrap_or_else(|_| panic!("hostile peer: dial {addr}: no answer within {GUARD:?}"))
            .unwrap_or_else(|e| panic!("hostile peer: dial {addr}: {e}"))?;
        loop {
            let up = tokio::time::timeout(GUARD, self.ups.recv())
                .await
                .unwrap_or_else(|_| panic!("hostile peer: no PeerUp for {addr}"))
                .unwrap_or_else(|| panic!("hostile peer: connection manager gone"));
            if up.key == key {
                return Ok(up.connection);
            }
        }
    }

    /// Closes every connection and the endpoint.
    pub async fn close(&self) {
        self.handle.close().await;
    }
}

/// The dialer's side of a session driven by hand: the control stream (our hello is
/// written on open) and the connection to open feed streams on.
#[derive(Debug)]
pub struct RawSession {
    /// The connection.
    pub connection: quinn::Connection,
    /// Our half of the control stream.
    pub send: quinn::SendStream,
    /// The victim's half of the control stream (never read unless a test wants to).
    pub recv: quinn::RecvStream,
    /// The connection's exporter value, for proofs and capabilities.
    pub exporter: ExporterSecret,
}

impl RawSession {
    /// Opens the control stream and writes an honest hello.
    pub async fn open(connection: quinn::Connection) -> RawSession {
        let exporter = exporter_secret(&connection)
            .unwrap_or_else(|e| panic!("hostile peer: exporter value: {e:?}"));
        let (send, recv) = connection
            .open_bi()
            .await
            .unwrap_or_else(|e| panic!("hostile peer: open control stream: {e}"));
        let mut session = RawSession {
            connection,
            send,
            recv,
            exporter,
        };
        session
            .send_message(&Message::Hello {
                version: PROTOCOL_VERSION,
                dialect: DIALECT.into(),
                max_streams: 16,
            })
            .await;
        session
    }

    /// Writes one message as a frame on the control stream. A write error (the victim
    /// closed the connection) is ignored: the tests observe the victim.
    pub async fn send_message(&mut self, message: &Message) {
        let mut frame = Vec::new();
        message::encode(message, &mut frame)
            .unwrap_or_else(|e| panic!("hostile peer: encode {}: {e}", message.name()));
        self.send_bytes(&frame).await;
    }

    /// Writes raw bytes on the control stream (errors ignored, as above).
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.send.write_all(bytes).await;
    }

    /// Opens a feed stream and writes `header` as its first frame.
    pub async fn open_feed_stream(
        &self,
        header: &FeedStreamHeader,
    ) -> Option<(quinn::SendStream, quinn::RecvStream)> {
        let (mut send, recv) = self.connection.open_bi().await.ok()?;
        let mut frame = Vec::new();
        message::encode_stream_header(header, &mut frame)
            .unwrap_or_else(|e| panic!("hostile peer: encode stream header: {e}"));
        send.write_all(&frame).await.ok()?;
        Some((send, recv))
    }
}
