//! Sessions over real QUIC on loopback, with a real actix store (a counter store that is
//! not a feed store and runs its own protocol on its streams).
//!
//! The TLS setup here is test-only (a fixed self-signed certificate and a client that
//! accepts it); the node uses `replic8-connmgr`'s identity-checked TLS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::type_complexity,
    missing_docs
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Context, Handler};
use replic8::driver::{self, NamespaceEntry, SessionCommand, SessionSpec};
use replic8::frame::MAX_FRAME_LEN;
use replic8::keys::{
    ExporterSecret, FeedKey, NamespaceKey, NamespaceSecret, PeerKey, Role, EXPORTER_CONTEXT,
    EXPORTER_LABEL,
};
use replic8::message::{self, CloseCode, FeedStreamHeader, Headers, Message};
use replic8::session::{EndReason, Mode, SessionConfig, SessionEvent};
use replic8::store::*;
use tokio::sync::mpsc;

use crate::tls;
use tls::{client_endpoint, connect, server_endpoint};

/// A guard, never the check: every wait below ends on an event long before this.
const GUARD: Duration = Duration::from_secs(20);

type Sessions = Arc<Mutex<HashMap<PeerKey, mpsc::UnboundedSender<SessionCommand>>>>;

/// A store of counters. Its protocol on a stream: each side writes its value (8 bytes),
/// reads the other's, keeps the larger, and reports the feed synced at that value.
#[derive(Debug, Default)]
struct CounterStore {
    values: Arc<Mutex<HashMap<FeedKey, u64>>>,
    kinds: HashMap<FeedKey, &'static str>,
    sessions: Sessions,
}

impl Actor for CounterStore {
    type Context = Context<Self>;
}

fn kind(kind: &str) -> Headers {
    let mut h = Headers::new();
    h.insert("kind", kind.as_bytes().to_vec()).unwrap();
    h
}

impl Handler<Shares> for CounterStore {
    type Result = Result<Vec<SharedFeed>, StoreError>;
    fn handle(&mut self, _: Shares, _: &mut Context<Self>) -> Self::Result {
        let values = self.values.lock().unwrap();
        Ok(values
            .keys()
            .map(|key| SharedFeed {
                key: *key,
                headers: kind(self.kinds.get(key).copied().unwrap_or("counter")),
            })
            .collect())
    }
}

impl Handler<KnownFeeds> for CounterStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    /// Every counter is also announced for all-to-all replication.
    fn handle(&mut self, _: KnownFeeds, _: &mut Context<Self>) -> Self::Result {
        Ok(self.values.lock().unwrap().keys().copied().collect())
    }
}

impl Handler<Offer> for CounterStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, msg: Offer, _: &mut Context<Self>) -> Self::Result {
        let mut values = self.values.lock().unwrap();
        let mut accepted = Vec::new();
        for feed in msg.feeds {
            if feed.headers.get("kind") == Some(b"counter") {
                values.entry(feed.key).or_insert(0);
                accepted.push(feed.key);
            }
        }
        Ok(accepted)
    }
}

impl Handler<Attach> for CounterStore {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: Attach, _: &mut Context<Self>) -> Self::Result {
        let values = self.values.clone();
        let session = self.sessions.lock().unwrap().get(&msg.peer).cloned();
        let Some(session) = session else {
            return Err(StoreError::Failed("no session".into()));
        };
        let ours = values.lock().unwrap().get(&msg.feed).copied().unwrap_or(0);
        let FeedStream { mut send, mut recv } = msg.stream;
        tokio::spawn(async move {
            let mut theirs = [0u8; 8];
            let ours_bytes = ours.to_be_bytes();
            let (wrote, read) =
                tokio::join!(send.write_all(&ours_bytes), recv.read_exact(&mut theirs));
            if wrote.is_ok() && read.is_ok() {
                let value = ours.max(u64::from_be_bytes(theirs));
                values.lock().unwrap().insert(msg.feed, value);
                let _ = session.send(SessionCommand::FeedSynced {
                    feed: msg.feed,
                    length: value,
                });
            }
            let _ = send.finish();
            let _ = recv.read_to_end(64).await;
            let _ = session.send(SessionCommand::StreamEnded {
                feed: msg.feed,
                id: msg.id,
            });
        });
        Ok(())
    }
}

impl Handler<Detach> for CounterStore {
    type Result = ();
    fn handle(&mut self, _: Detach, _: &mut Context<Self>) {}
}

struct Node {
    values: Arc<Mutex<HashMap<FeedKey, u64>>>,
    sessions: Sessions,
    store: StoreRecipients,
}

fn node(counters: &[(FeedKey, u64, &'static str)]) -> Node {
    let values = Arc::new(Mutex::new(
        counters.iter().map(|(k, v, _)| (*k, *v)).collect(),
    ));
    let sessions = Sessions::default();
    let store = CounterStore {
        values: Arc::clone(&values),
        kinds: counters.iter().map(|(k, _, kind)| (*k, *kind)).collect(),
        sessions: Arc::clone(&sessions),
    }
    .start();
    Node {
        values,
        sessions,
        store: StoreRecipients::of(&store),
    }
}

fn counter(n: u8) -> FeedKey {
    FeedKey([n; 32])
}

fn one_shot() -> SessionConfig {
    SessionConfig {
        mode: Mode::OneShot,
        ..SessionConfig::default()
    }
}

/// Starts a session for `node` on `connection`; returns its end and its events.
fn start(
    node: &Node,
    connection: quinn::Connection,
    role: Role,
    peer: PeerKey,
) -> (
    tokio::task::JoinHandle<EndReason>,
    mpsc::UnboundedReceiver<SessionEvent>,
) {
    start_in(node, connection, role, peer, "counters", None)
}

fn start_in(
    node: &Node,
    connection: quinn::Connection,
    role: Role,
    peer: PeerKey,
    namespace: &str,
    secret: Option<NamespaceSecret>,
) -> (
    tokio::task::JoinHandle<EndReason>,
    mpsc::UnboundedReceiver<SessionEvent>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    node.sessions.lock().unwrap().insert(peer, tx);
    let (events_tx, events) = mpsc::unbounded_channel();
    let spec = SessionSpec {
        connection,
        role,
        peer,
        config: one_shot(),
        namespaces: vec![NamespaceEntry {
            name: namespace.into(),
            secret,
            store: node.store.clone(),
        }],
        counters: Default::default(),
    };
    (tokio::spawn(driver::run(spec, rx, events_tx)), events)
}

#[test]
fn two_nodes_replicate_a_custom_store_over_quic_and_end_one_shot() {
    actix::System::new().block_on(async {
        let a = node(&[
            (counter(1), 5, "counter"),
            (counter(2), 7, "counter"),
            (counter(3), 9, "other"),
        ]);
        let b = node(&[(counter(4), 3, "counter")]);
        let (server, client) = (server_endpoint(), client_endpoint());
        let (dialed, accepted) = connect(&client, &server).await;
        let (pa, pb) = (PeerKey([0xa; 32]), PeerKey([0xb; 32]));
        let (end_a, mut events_a) = start(&a, dialed, Role::Dialer, pb);
        let (end_b, _events_b) = start(&b, accepted, Role::Acceptor, pa);
        let (ra, rb) = tokio::time::timeout(GUARD, async {
            (end_a.await.unwrap(), end_b.await.unwrap())
        })
        .await
        .expect("sessions did not end");
        assert_eq!(ra.code, CloseCode::DONE, "{ra}");
        assert_eq!(rb.code, CloseCode::DONE, "{rb}");
        let b_values = b.values.lock().unwrap().clone();
        assert_eq!(b_values.get(&counter(1)), Some(&5));
        assert_eq!(b_values.get(&counter(2)), Some(&7));
        assert_eq!(
            b_values.get(&counter(3)),
            None,
            "the refused counter crossed"
        );
        assert_eq!(a.values.lock().unwrap().get(&counter(4)), Some(&3));
        let mut synced = Vec::new();
        while let Ok(e) = events_a.try_recv() {
            if let SessionEvent::FeedSynced { feed, length } = e {
                synced.push((feed, length));
            }
        }
        synced.sort();
        assert_eq!(
            synced,
            vec![(counter(1), 5), (counter(2), 7), (counter(4), 3)]
        );
    });
}

/// A raw peer: connects, opens the control stream, and reads the node's hello.
async fn raw_peer(
    server: &quinn::Endpoint,
) -> (
    quinn::Connection,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let client = client_endpoint();
    let (dialed, accepted) = connect(&client, server).await;
    let (send, recv) = dialed.open_bi().await.unwrap();
    (dialed, accepted, send, recv)
}

fn frame(m: &Message) -> Vec<u8> {
    let mut w = Vec::new();
    message::encode(m, &mut w).unwrap();
    w
}

fn hello(version: u32) -> Message {
    Message::Hello {
        version,
        dialect: message::DIALECT.into(),
        max_streams: 8,
    }
}

async fn closed_with(connection: &quinn::Connection) -> (u64, String) {
    match tokio::time::timeout(GUARD, connection.closed())
        .await
        .expect("not closed")
    {
        quinn::ConnectionError::ApplicationClosed(close) => (
            close.error_code.into_inner(),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => panic!("closed otherwise: {other}"),
    }
}

#[test]
fn hostile_peers_lose_their_session_with_a_reason_and_the_node_carries_on() {
    actix::System::new().block_on(async {
        let b = node(&[(counter(4), 3, "counter")]);
        let server = server_endpoint();
        let attacks: Vec<(
            &str,
            Box<dyn Fn() -> Vec<u8>>,
            Option<FeedStreamHeader>,
            CloseCode,
            &str,
        )> = vec![
            (
                "oversize frame",
                Box::new(|| ((MAX_FRAME_LEN as u32) * 2).to_be_bytes().to_vec()),
                None,
                CloseCode::FRAME_TOO_LARGE,
                "over the limit",
            ),
            (
                "garbage",
                Box::new(|| vec![0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef]),
                None,
                CloseCode::PROTOCOL,
                "bad message encoding",
            ),
            (
                "version mismatch",
                Box::new(|| frame(&hello(7))),
                None,
                CloseCode::VERSION_MISMATCH,
                "the peer speaks replic8/7",
            ),
            (
                "unasked stream",
                Box::new(|| frame(&hello(message::PROTOCOL_VERSION))),
                Some(FeedStreamHeader::Offered {
                    by: Role::Acceptor,
                    id: 3,
                }),
                CloseCode::REFUSED_STREAM,
                "not offered and accepted",
            ),
        ];
        for (i, (name, bytes, stream, code, words)) in attacks.into_iter().enumerate() {
            let (dialed, accepted, mut control, mut recv) = raw_peer(&server).await;
            let (end, _events) = start(&b, accepted, Role::Acceptor, PeerKey([i as u8; 32]));
            control.write_all(&bytes()).await.unwrap();
            if let Some(header) = stream {
                // B's `Ready` follows its processing of our hello: a stream opened before
                // it could be refused as one "before hello" (control bytes and feed
                // streams reach the session on separate tasks).
                read_until(&mut recv, |m| *m == Message::Ready).await;
                let (mut send, _recv) = dialed.open_bi().await.unwrap();
                let mut w = Vec::new();
                message::encode_stream_header(&header, &mut w).unwrap();
                send.write_all(&w).await.unwrap();
            }
            let (got_code, reason) = closed_with(&dialed).await;
            assert_eq!(got_code, u64::from(code.0), "{name}: {reason}");
            assert!(reason.contains(words), "{name}: {reason}");
            let ended = tokio::time::timeout(GUARD, end).await.unwrap().unwrap();
            assert_eq!(ended.code, code, "{name}");
        }
        // The node carries on: an honest peer still replicates with it.
        let a = node(&[(counter(1), 2, "counter")]);
        let client = client_endpoint();
        let (dialed, accepted) = connect(&client, &server).await;
        let (end_a, _) = start(&a, dialed, Role::Dialer, PeerKey([0xb; 32]));
        let (end_b, _) = start(&b, accepted, Role::Acceptor, PeerKey([0xa; 32]));
        let ra = tokio::time::timeout(GUARD, end_a).await.unwrap().unwrap();
        let rb = tokio::time::timeout(GUARD, end_b).await.unwrap().unwrap();
        assert_eq!(
            (ra.code, rb.code),
            (CloseCode::DONE, CloseCode::DONE),
            "{ra} / {rb}"
        );
        assert_eq!(b.values.lock().unwrap().get(&counter(1)), Some(&2));
    });
}

/// Reads control frames until one matches `last`; returns them all.
async fn read_until(recv: &mut quinn::RecvStream, last: impl Fn(&Message) -> bool) -> Vec<Message> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        while let Some((payload, used)) = replic8::frame::parse(&buf, MAX_FRAME_LEN).unwrap() {
            let m = message::decode(payload).unwrap();
            buf.drain(..used);
            let done = last(&m);
            out.push(m);
            if done {
                return out;
            }
        }
        let chunk = tokio::time::timeout(GUARD, recv.read_chunk(65536, true))
            .await
            .expect("the expected frame did not come")
            .unwrap()
            .expect("stream ended first");
        buf.extend_from_slice(&chunk.bytes);
    }
}

fn exporter(connection: &quinn::Connection) -> ExporterSecret {
    let mut out = [0u8; 32];
    connection
        .export_keying_material(&mut out, EXPORTER_LABEL, EXPORTER_CONTEXT)
        .unwrap();
    ExporterSecret(out)
}

#[test]
fn a_secret_namespace_reveals_nothing_over_quic_to_a_peer_without_the_key() {
    // Fails on the old code: B sent its proof and the namespace's stable id to every
    // peer before it proved anything, and a replayed proof ended the session with a
    // reason naming the namespace.
    actix::System::new().block_on(async {
        let secret = NamespaceSecret([0x5e; 32]);
        let key = NamespaceKey::new("team", Some(&secret));
        let b = node(&[(counter(4), 3, "counter"), (counter(5), 1, "counter")]);
        let server = server_endpoint();
        let revealing = |m: &Message| {
            matches!(
                m,
                Message::Tag { .. } | Message::Offer { .. } | Message::Have { .. }
            )
        };

        // A peer without the key: says hello, reads everything B sends up to B's
        // `Ready`, then replays a tag recorded on another connection.
        let (dialed, accepted, mut control, mut recv) = raw_peer(&server).await;
        let (end, _events) = start_in(
            &b,
            accepted,
            Role::Acceptor,
            PeerKey([1; 32]),
            "team",
            Some(secret.clone()),
        );
        control
            .write_all(&frame(&hello(message::PROTOCOL_VERSION)))
            .await
            .unwrap();
        let mut seen = read_until(&mut recv, |m| *m == Message::Ready).await;
        assert!(matches!(seen[0], Message::Hello { .. }), "{seen:?}");
        let (other, _other_accepted, _c, _r) = raw_peer(&server).await;
        let replayed = key.tag(&exporter(&other), Role::Dialer);
        let mut wire = frame(&Message::Tag {
            handle: 1,
            tag: replayed,
        });
        wire.extend(frame(&Message::Ready));
        control.write_all(&wire).await.unwrap();
        seen.extend(read_until(&mut recv, |m| *m == Message::Settled).await);
        assert!(
            !seen.iter().any(revealing),
            "B revealed something to a peer without the key: {seen:?}"
        );
        assert!(
            !end.is_finished(),
            "a tag that matches nothing ends nothing"
        );
        drop(dialed);

        // Peers with the key, on two connections: B answers each with its own tag, and
        // the offer follows. The tags of the two connections are unrelated.
        let mut answers = Vec::new();
        for peer in [2u8, 3] {
            let (dialed, accepted, mut control, mut recv) = raw_peer(&server).await;
            let (_end, _events) = start_in(
                &b,
                accepted,
                Role::Acceptor,
                PeerKey([peer; 32]),
                "team",
                Some(secret.clone()),
            );
            let ours = key.tag(&exporter(&dialed), Role::Dialer);
            let mut first = frame(&hello(message::PROTOCOL_VERSION));
            first.extend(frame(&Message::Tag {
                handle: 1,
                tag: ours,
            }));
            control.write_all(&first).await.unwrap();
            let seen = read_until(&mut recv, |m| matches!(m, Message::Offer { .. })).await;
            let answer = seen
                .iter()
                .find_map(|m| match m {
                    Message::Tag { handle: 1, tag } => Some(*tag),
                    _ => None,
                })
                .expect("B answers a matching tag");
            assert_eq!(answer, key.tag(&exporter(&dialed), Role::Acceptor));
            answers.push((ours, answer));
            let offered: usize = seen
                .iter()
                .map(|m| match m {
                    Message::Offer {
                        namespace: 1,
                        feeds,
                        ..
                    } => feeds.len(),
                    _ => 0,
                })
                .sum();
            assert_eq!(offered, 2, "{seen:?}");
        }
        assert_ne!(answers[0].0, answers[1].0);
        assert_ne!(answers[0].1, answers[1].1);
    });
}

#[test]
fn a_wrong_capability_over_quic_ends_the_session() {
    actix::System::new().block_on(async {
        let b = node(&[(counter(4), 3, "counter")]);
        let server = server_endpoint();
        let (dialed, accepted, mut control, mut recv) = raw_peer(&server).await;
        let (end, _events) = start(&b, accepted, Role::Acceptor, PeerKey([1; 32]));
        // The named namespace without a secret is matched by a tag of its name's key.
        let tag = NamespaceKey::new("counters", None).tag(&exporter(&dialed), Role::Dialer);
        let mut first = frame(&hello(message::PROTOCOL_VERSION));
        first.extend(frame(&Message::Tag { handle: 1, tag }));
        control.write_all(&first).await.unwrap();
        // B announces what it holds (discovery key and its capability, no key).
        let dk = counter(4).discovery_key();
        let has = |m: &Message| matches!(m, Message::Have { feeds, .. } if feeds.iter().any(|f| f.discovery_key == dk));
        let seen = read_until(&mut recv, has).await;
        assert!(seen.iter().any(has));
        // A stream for that feed with a capability made for another connection.
        let (other, _a, _c, _r) = raw_peer(&server).await;
        let cap = replic8::keys::capability(&counter(4), &exporter(&other), Role::Dialer);
        let (mut send, _recv) = dialed.open_bi().await.unwrap();
        let mut w = Vec::new();
        message::encode_stream_header(
            &FeedStreamHeader::Known {
                discovery_key: dk,
                capability: cap,
            },
            &mut w,
        )
        .unwrap();
        send.write_all(&w).await.unwrap();
        let (code, reason) = closed_with(&dialed).await;
        assert_eq!(code, u64::from(CloseCode::BAD_CAPABILITY.0), "{reason}");
        assert_eq!(
            tokio::time::timeout(GUARD, end).await.unwrap().unwrap().code,
            CloseCode::BAD_CAPABILITY
        );
    });
}

#[test]
fn a_peer_that_never_says_hello_times_out() {
    actix::System::new().block_on(async {
        let b = node(&[]);
        let server = server_endpoint();
        let client = client_endpoint();
        // Connected, but the control stream is never opened.
        let (dialed, accepted) = connect(&client, &server).await;
        let (tx, rx) = mpsc::unbounded_channel();
        b.sessions.lock().unwrap().insert(PeerKey([1; 32]), tx);
        let (events, _events_rx) = mpsc::unbounded_channel();
        let spec = SessionSpec {
            connection: accepted,
            role: Role::Acceptor,
            peer: PeerKey([1; 32]),
            config: SessionConfig {
                hello_timeout: Duration::from_millis(200),
                ..SessionConfig::default()
            },
            namespaces: vec![],
            counters: Default::default(),
        };
        let end = tokio::spawn(driver::run(spec, rx, events));
        let (code, reason) = closed_with(&dialed).await;
        assert_eq!(code, u64::from(CloseCode::TIMEOUT.0), "{reason}");
        assert!(reason.contains("no hello within"), "{reason}");
        assert_eq!(
            tokio::time::timeout(GUARD, end)
                .await
                .unwrap()
                .unwrap()
                .code,
            CloseCode::TIMEOUT
        );
    });
}

#[test]
fn a_peer_that_sends_offers_and_never_reads_meets_backpressure_our_queue_stays_bounded() {
    // Fails on the old code: the driver queued every answer in an unbounded channel
    // while the reader kept reading, so the queue grew with what the peer sent.
    use replic8::session::{SessionStats, MAX_QUEUED_CONTROL_BYTES};
    actix::System::new().block_on(async {
        let b = node(&[(counter(4), 3, "counter")]);
        let server = server_endpoint();
        let (dialed, accepted, mut control, _recv_never_read) = raw_peer(&server).await;
        let peer = PeerKey([7; 32]);
        let (end, _events) = start(&b, accepted, Role::Acceptor, peer);
        let commands = b.sessions.lock().unwrap().get(&peer).cloned().unwrap();
        control
            .write_all(&frame(&hello(message::PROTOCOL_VERSION)))
            .await
            .unwrap();
        // Offers in a namespace B does not have: each is answered at once (15 bytes
        // with a large offer id), so B's output grows with what we send. We send up to
        // 40 MB and read nothing.
        let (progress_tx, progress) = tokio::sync::watch::channel(0usize);
        let writer = tokio::spawn(async move {
            let mut sent = 0usize;
            let mut n = 0u64;
            while sent < 40 << 20 {
                let mut batch = Vec::new();
                for _ in 0..1000 {
                    let mut key = [0u8; 32];
                    key[..8].copy_from_slice(&n.to_le_bytes());
                    batch.extend(frame(&Message::Offer {
                        namespace: 77,
                        offer: (1 << 60) + n,
                        feeds: vec![message::OfferedFeed {
                            id: (1 << 60) + n,
                            key: FeedKey(key),
                            headers: Headers::new(),
                        }],
                    }));
                    n += 1;
                }
                if control.write_all(&batch).await.is_err() {
                    return;
                }
                sent += batch.len();
                let _ = progress_tx.send(sent);
            }
        });
        let stats = || async {
            let (tx, rx) = tokio::sync::oneshot::channel();
            commands.send(SessionCommand::Stats { reply: tx }).unwrap();
            rx.await.unwrap()
        };
        // Wait until B stopped reading: its output reached the bound, and our writer is
        // held by flow control (no progress between two of B's answers to a query).
        let blocked: SessionStats = tokio::time::timeout(GUARD, async {
            loop {
                let before = *progress.borrow();
                let s = stats().await;
                if s.peak_queued_bytes >= MAX_QUEUED_CONTROL_BYTES as u64 {
                    tokio::task::yield_now().await;
                    let again = stats().await;
                    if *progress.borrow() == before && again.bytes_in == s.bytes_in {
                        return again;
                    }
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("B's output never reached its bound");
        let bound = (MAX_QUEUED_CONTROL_BYTES + MAX_FRAME_LEN) as u64;
        assert!(blocked.queued_bytes <= bound, "{blocked:?}");
        assert!(blocked.peak_queued_bytes <= bound, "{blocked:?}");
        assert!(
            *progress.borrow() < 40 << 20,
            "the peer was never held back: {blocked:?}"
        );
        assert!(
            !end.is_finished(),
            "a slow reader ends nothing before the stall timeout"
        );
        writer.abort();
        drop(dialed);
    });
}
