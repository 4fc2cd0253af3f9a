//! A hostile peer built from the project's own pieces: a real connection manager (its own
//! ed25519 identity, TLS with raw public keys, the session ALPN) whose connections
//! are driven by hand with the real frame and message encoders, so it can send exactly
//! what an honest session never would.
//!
//! [`HostilePeer`] dials; [`RawSession`] is the dialer's side of a session on one
//! connection: the control stream with our hello written, and feed streams opened at
//! will; [`HostileFeed`] serves a real feed on a feed stream with the real sync core,
//! tampering with what it sends. The tests observe the victim.

use std::net::SocketAddr;
use std::time::Instant;

use actix::{Actor, Context, Handler};
use replic8::frame;
use replic8::keys::{exporter_secret, ExporterSecret};
use replic8::message::{self, FeedStreamHeader, Message, DIALECT, PROTOCOL_VERSION};
use replic8_connmgr::{
    ConnManager, ConnManagerConfig, ConnManagerHandle, Dial, DialError, Identity, PeerDown,
    PeerKey, PeerUp, PolicyConfig, Subscribe,
};
use replic8_store::storage::{MemoryFeed, MemoryStorage};
pub use replic8_store::Message as SyncMessage;
use replic8_store::{Feed, FeedSecret, FeedSync, SyncConfig, MAX_MESSAGE_SIZE};
use tokio::sync::mpsc;

use crate::GUARD;

/// What the connection manager reported.
#[derive(Debug)]
enum ConnEvent {
    Up(Box<PeerUp>),
    Down(PeerKey),
}

/// Forwards the connection manager's `PeerUp`s and `PeerDown`s to the test.
#[derive(Debug)]
struct Sink(mpsc::UnboundedSender<ConnEvent>);

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<PeerUp> for Sink {
    type Result = ();
    fn handle(&mut self, up: PeerUp, _: &mut Context<Self>) {
        let _ = self.0.send(ConnEvent::Up(Box::new(up)));
    }
}

impl Handler<PeerDown> for Sink {
    type Result = ();
    fn handle(&mut self, down: PeerDown, _: &mut Context<Self>) {
        let _ = self.0.send(ConnEvent::Down(down.key));
    }
}

/// A connection manager on 127.0.0.1 with a fresh identity, speaking the replic8 ALPN,
/// whose connections the test drives. Must run inside an `actix::System`.
#[derive(Debug)]
pub struct HostilePeer {
    handle: ConnManagerHandle,
    events: mpsc::UnboundedReceiver<ConnEvent>,
    /// The peer of our last connection while the connection manager has it up.
    up: Option<PeerKey>,
}

impl HostilePeer {
    /// Starts the connection manager.
    pub async fn spawn() -> HostilePeer {
        let config = ConnManagerConfig {
            // Redial at once: the tests redial after the victim closed on us.
            policy: PolicyConfig::redial_at_once(),
            ..ConnManagerConfig::new(Identity::generate())
                .with_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
                .with_alpn(vec![message::ALPN.to_vec()])
        };
        let handle = ConnManager::spawn(config)
            .unwrap_or_else(|e| panic!("hostile peer: connection manager: {e}"));
        let (tx, events) = mpsc::unbounded_channel();
        let sink = Sink(tx).start();
        handle
            .addr()
            .send(Subscribe {
                peer_up: sink.clone().recipient(),
                peer_down: sink.recipient(),
            })
            .await
            .unwrap_or_else(|e| panic!("hostile peer: subscribe: {e}"));
        HostilePeer {
            handle,
            events,
            up: None,
        }
    }

    /// Our key.
    pub fn key(&self) -> PeerKey {
        self.handle.key()
    }

    /// Dials `addr` and returns the new connection once it is up, or why there is none
    /// (the dial failed, or the connection was closed before it was reported up). A
    /// connection of ours that is still up must be on its way down (closed by either
    /// side): this waits for that first, so the dial makes a new connection.
    pub async fn dial(&mut self, addr: SocketAddr) -> Result<quinn::Connection, String> {
        if let Some(old) = self.up {
            self.next_event(addr, |e| matches!(e, ConnEvent::Down(k) if *k == old))
                .await;
            self.up = None;
        }
        let dial = self.handle.addr().send(Dial {
            addr,
            expected_key: None,
        });
        let key = tokio::time::timeout(GUARD, dial)
            .await
            .unwrap_or_else(|_| panic!("hostile peer: dial {addr}: no answer within {GUARD:?}"))
            .unwrap_or_else(|e| panic!("hostile peer: dial {addr}: {e}"))
            .map_err(|e: DialError| e.to_string())?;
        match self
            .next_event(addr, |e| {
                matches!(e, ConnEvent::Up(up) if up.key == key)
                    || matches!(e, ConnEvent::Down(k) if *k == key)
            })
            .await
        {
            ConnEvent::Up(up) => {
                self.up = Some(key);
                Ok(up.connection)
            }
            ConnEvent::Down(_) => Err("connection closed before it was up".into()),
        }
    }

    async fn next_event(
        &mut self,
        addr: SocketAddr,
        mut want: impl FnMut(&ConnEvent) -> bool,
    ) -> ConnEvent {
        let wait = async {
            loop {
                match self.events.recv().await {
                    Some(e) if want(&e) => return e,
                    Some(_) => {}
                    None => panic!("hostile peer: connection manager gone"),
                }
            }
        };
        tokio::time::timeout(GUARD, wait).await.unwrap_or_else(|_| {
            panic!("hostile peer: connection to {addr}: no event within {GUARD:?}")
        })
    }

    /// Closes our connection to `key` (as the application would: the QUIC close).
    pub async fn disconnect(&mut self, key: PeerKey) {
        let _ = self
            .handle
            .addr()
            .send(replic8_connmgr::Close { key })
            .await;
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
    /// Control bytes read from the victim and not parsed yet.
    inbox: Vec<u8>,
    /// Every control byte read from the victim so far, parsed or not.
    received: Vec<u8>,
}

impl RawSession {
    /// Opens the control stream and writes an honest hello.
    pub async fn open(connection: quinn::Connection) -> RawSession {
        match RawSession::try_open(connection).await {
            Ok(session) => session,
            Err(e) => panic!("hostile peer: {e}"),
        }
    }

    /// As [`RawSession::open`], or why the control stream could not be opened (the
    /// victim closed the connection already, e.g. it refused us after the handshake).
    pub async fn try_open(connection: quinn::Connection) -> Result<RawSession, String> {
        let exporter =
            exporter_secret(&connection).map_err(|e| format!("exporter value: {e:?}"))?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| format!("open control stream: {e}"))?;
        let mut session = RawSession {
            connection,
            send,
            recv,
            exporter,
            inbox: Vec::new(),
            received: Vec::new(),
        };
        session
            .send_message(&Message::Hello {
                version: PROTOCOL_VERSION,
                dialect: DIALECT.into(),
                max_streams: 16,
            })
            .await;
        Ok(session)
    }

    /// Every control byte read from the victim so far (by [`RawSession::recv_message`]),
    /// for checks on what the victim revealed.
    pub fn received(&self) -> &[u8] {
        &self.received
    }

    /// Writes one message as a frame on the control stream. A write error (the victim
    /// closed the connection) is ignored: the tests observe the victim.
    pub async fn send_message(&mut self, message: &Message) {
        let mut frame = Vec::new();
        message::encode(message, &mut frame)
            .unwrap_or_else(|e| panic!("hostile peer: encode {}: {e}", message.name()));
        self.send_bytes(&frame).await;
    }

    /// Reads the victim's control messages until `want` maps one to `Some`; `None` if
    /// the stream ends or fails first, or [`GUARD`] passes.
    pub async fn recv_message<T>(
        &mut self,
        mut want: impl FnMut(&Message) -> Option<T>,
    ) -> Option<T> {
        let read = async {
            loop {
                while let Ok(Some((payload, used))) =
                    frame::parse(&self.inbox, frame::MAX_FRAME_LEN)
                {
                    let message = message::decode(payload).ok();
                    self.inbox.drain(..used);
                    if let Some(found) = message.as_ref().and_then(&mut want) {
                        return Some(found);
                    }
                }
                match self.recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(chunk)) => {
                        self.received.extend_from_slice(&chunk.bytes);
                        self.inbox.extend_from_slice(&chunk.bytes);
                    }
                    _ => return None,
                }
            }
        };
        tokio::time::timeout(GUARD, read).await.ok().flatten()
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

/// A feed the hostile peer writes (in memory), served on a feed stream by the real sync
/// core with every outgoing message passed through a tamper function first.
#[derive(Debug)]
pub struct HostileFeed {
    /// The feed.
    pub feed: Feed<MemoryFeed>,
}

impl HostileFeed {
    /// A new feed with `n` blocks of 1 KiB.
    pub fn new(n: usize) -> HostileFeed {
        let blocks: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 1024]).collect();
        HostileFeed::with_blocks(FeedSecret::generate(), &blocks)
    }

    /// A feed written with `secret` holding `blocks`. Two of them with one secret and
    /// different blocks are a writer's fork: two validly signed trees for one key.
    pub fn with_blocks(secret: FeedSecret, blocks: &[Vec<u8>]) -> HostileFeed {
        let storage = MemoryStorage::new();
        let mut feed =
            Feed::create(&storage, secret).unwrap_or_else(|e| panic!("hostile feed: create: {e}"));
        feed.append_batch(blocks)
            .unwrap_or_else(|e| panic!("hostile feed: append: {e}"));
        HostileFeed { feed }
    }

    /// The feed's key as the session layer names it.
    pub fn key(&self) -> replic8::keys::FeedKey {
        replic8::keys::FeedKey(*self.feed.key().as_bytes())
    }

    /// Serves the feed on a feed stream until the stream ends or [`GUARD`] passes:
    /// the real sync core answers the victim, and `tamper` may change each message it
    /// sends. `first` messages are sent before anything else (unasked for). Returns why
    /// it stopped.
    pub async fn serve(
        &mut self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        first: Vec<SyncMessage>,
        mut tamper: impl FnMut(&mut SyncMessage),
    ) -> String {
        let mut core = FeedSync::new(SyncConfig::default());
        core.handle_start(&mut self.feed, Instant::now());
        for message in first {
            if let Err(e) = write_sync(&mut send, &message).await {
                return format!("write: {e}");
            }
        }
        let mut buf = Vec::new();
        let serve = async {
            loop {
                while let Ok(Some(mut message)) = core.poll_transmit(&mut self.feed) {
                    tamper(&mut message);
                    if let Err(e) = write_sync(&mut send, &message).await {
                        return format!("write: {e}");
                    }
                }
                match recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                    Ok(None) => return "the victim finished the stream".to_string(),
                    Err(e) => return format!("read: {e}"),
                }
                let mut used = 0;
                while let Ok(Some((payload, n))) = frame::parse(&buf[used..], MAX_MESSAGE_SIZE) {
                    used += n;
                    let handled = replic8_store::decode(payload)
                        .map_err(|e| e.to_string())
                        .and_then(|m| {
                            core.handle_message(&mut self.feed, m, Instant::now())
                                .map_err(|e| e.to_string())
                        });
                    if let Err(e) = handled {
                        return format!("our sync core: {e}");
                    }
                }
                buf.drain(..used);
            }
        };
        tokio::time::timeout(GUARD, serve)
            .await
            .unwrap_or_else(|_| format!("still serving after {GUARD:?}"))
    }
}

async fn write_sync(
    send: &mut quinn::SendStream,
    message: &SyncMessage,
) -> Result<(), quinn::WriteError> {
    let payload =
        replic8_store::encode(message).unwrap_or_else(|e| panic!("hostile feed: encode: {e}"));
    let mut framed = Vec::new();
    frame::encode(&payload, MAX_MESSAGE_SIZE, &mut framed)
        .unwrap_or_else(|e| panic!("hostile feed: frame: {e}"));
    send.write_all(&framed).await
}
