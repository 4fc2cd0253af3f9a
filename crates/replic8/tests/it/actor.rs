//! `SessionsActor` over real QUIC on loopback: stores register, sessions start per
//! connection, a store forwards what it accepts, and offers do not loop.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::type_complexity,
    missing_docs
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler};
use replic8::actor::{ListSessions, PeerEvent, SessionsActor, StartSession};
use replic8::keys::{FeedKey, PeerKey, Role};
use replic8::message::Headers;
use replic8::session::{SessionConfig, SessionEvent};
use replic8::store::*;
use tokio::sync::mpsc;

use crate::tls;
use tls::{client_endpoint, connect, server_endpoint};

const GUARD: Duration = Duration::from_secs(20);

/// A counter store that forwards every counter it newly accepts to its other peers.
#[derive(Debug)]
struct ForwardingStore {
    values: Arc<Mutex<HashMap<FeedKey, u64>>>,
    sessions: Addr<SessionsActor>,
}

impl Actor for ForwardingStore {
    type Context = Context<Self>;
}

fn counter_headers() -> Headers {
    let mut h = Headers::new();
    h.insert("kind", b"counter".to_vec()).unwrap();
    h
}

impl Handler<Shares> for ForwardingStore {
    type Result = Result<Vec<SharedFeed>, StoreError>;
    fn handle(&mut self, _: Shares, _: &mut Context<Self>) -> Self::Result {
        Ok(self
            .values
            .lock()
            .unwrap()
            .keys()
            .map(|key| SharedFeed {
                key: *key,
                headers: counter_headers(),
            })
            .collect())
    }
}

impl Handler<KnownFeeds> for ForwardingStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, _: KnownFeeds, _: &mut Context<Self>) -> Self::Result {
        Ok(Vec::new())
    }
}

impl Handler<Offer> for ForwardingStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, msg: Offer, _: &mut Context<Self>) -> Self::Result {
        let mut values = self.values.lock().unwrap();
        let mut accepted = Vec::new();
        let mut new = Vec::new();
        for feed in msg.feeds {
            accepted.push(feed.key);
            if let std::collections::hash_map::Entry::Vacant(slot) = values.entry(feed.key) {
                slot.insert(0);
                new.push(feed);
            }
        }
        if !new.is_empty() {
            self.sessions.do_send(Share {
                namespace: msg.namespace,
                feeds: new,
                peers: None,
                except: Some(msg.peer),
            });
        }
        Ok(accepted)
    }
}

impl Handler<Attach> for ForwardingStore {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: Attach, _: &mut Context<Self>) -> Self::Result {
        let values = self.values.clone();
        let sessions = self.sessions.clone();
        let ours = values.lock().unwrap().get(&msg.feed).copied().unwrap_or(0);
        let FeedStream { mut send, mut recv } = msg.stream;
        tokio::spawn(async move {
            let mine = ours.to_be_bytes();
            let mut theirs = [0u8; 8];
            let (w, r) = tokio::join!(send.write_all(&mine), recv.read_exact(&mut theirs));
            if w.is_ok() && r.is_ok() {
                let value = ours.max(u64::from_be_bytes(theirs));
                values.lock().unwrap().insert(msg.feed, value);
                sessions.do_send(FeedSynced {
                    feed: msg.feed,
                    peer: msg.peer,
                    length: value,
                });
                if value > ours {
                    sessions.do_send(FeedUpdated {
                        feed: msg.feed,
                        length: value,
                    });
                }
            }
            let _ = send.finish();
            let _ = recv.read_to_end(64).await;
            sessions.do_send(StreamEnded {
                feed: msg.feed,
                peer: msg.peer,
                id: msg.id,
            });
        });
        Ok(())
    }
}

impl Handler<Detach> for ForwardingStore {
    type Result = ();
    fn handle(&mut self, _: Detach, _: &mut Context<Self>) {}
}

struct TestNode {
    key: PeerKey,
    sessions: Addr<SessionsActor>,
    values: Arc<Mutex<HashMap<FeedKey, u64>>>,
    server: quinn::Endpoint,
    client: quinn::Endpoint,
}

async fn test_node(
    n: u8,
    counters: &[(FeedKey, u64)],
    events: mpsc::UnboundedSender<(u8, PeerEvent)>,
) -> TestNode {
    let (tx, mut rx) = mpsc::unbounded_channel::<PeerEvent>();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let _ = events.send((n, e));
        }
    });
    let sessions = SessionsActor::new(SessionConfig::default(), Some(tx)).start();
    let values = Arc::new(Mutex::new(counters.iter().copied().collect()));
    let store = ForwardingStore {
        values: values.clone(),
        sessions: sessions.clone(),
    }
    .start();
    sessions
        .send(RegisterStore {
            namespaces: vec![("counters".into(), None)],
            store: StoreRecipients::of(&store),
        })
        .await
        .unwrap()
        .unwrap();
    TestNode {
        key: PeerKey([n; 32]),
        sessions,
        values,
        server: server_endpoint(),
        client: client_endpoint(),
    }
}

async fn link(dialer: &TestNode, acceptor: &TestNode) {
    crate::feed_nodes::start_sessions(
        (dialer.key, &dialer.client, &dialer.sessions),
        (acceptor.key, &acceptor.server, &acceptor.sessions),
    )
    .await;
}

#[test]
fn a_triangle_forwards_a_feed_to_everyone_without_loops() {
    actix::System::new().block_on(async {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let feed = FeedKey([0xf1; 32]);
        let a = test_node(1, &[(feed, 42)], events_tx.clone()).await;
        let b = test_node(2, &[], events_tx.clone()).await;
        let c = test_node(3, &[], events_tx.clone()).await;
        link(&a, &b).await;
        link(&b, &c).await;
        link(&c, &a).await;
        // Wait until B and C each report the feed in sync at 42 with some peer.
        let mut offered: HashMap<(u8, PeerKey), usize> = HashMap::new();
        let mut synced = std::collections::HashSet::new();
        tokio::time::timeout(GUARD, async {
            while synced.len() < 2 {
                let (node, PeerEvent { peer, event }) = events.recv().await.unwrap();
                match event {
                    SessionEvent::Offered { feeds, .. }
                        if feeds.iter().any(|(k, _)| *k == feed) =>
                    {
                        *offered.entry((node, peer)).or_default() += 1;
                    }
                    SessionEvent::FeedSynced {
                        feed: f,
                        length: 42,
                    } if f == feed && node != 1 => {
                        synced.insert(node);
                    }
                    SessionEvent::SessionEnded { reason } => panic!("node {node}: {reason}"),
                    _ => {}
                }
            }
        })
        .await
        .expect("the feed did not reach B and C");
        for node in [&b, &c] {
            assert_eq!(node.values.lock().unwrap().get(&feed), Some(&42));
        }
        // Each node heard the offer at most once from each peer. (An offer may still
        // reach A: C can forward B's offer before A's own offer to C arrives; crossing
        // offers are answered and not forwarded again, so nothing loops.)
        while let Ok((node, PeerEvent { peer, event })) = events.try_recv() {
            if let SessionEvent::Offered { feeds, .. } = event {
                if feeds.iter().any(|(k, _)| *k == feed) {
                    *offered.entry((node, peer)).or_default() += 1;
                }
            }
        }
        assert!(offered.values().all(|n| *n == 1), "{offered:?}");
        assert!(offered.len() <= 6, "{offered:?}");
        for node in [&a, &b, &c] {
            assert_eq!(node.sessions.send(ListSessions).await.unwrap().len(), 2);
        }
    });
}

/// A store that records what it was offered and which streams it got, accepts offered
/// feeds whose `want` header is `yes`, and runs the counter protocol on its streams.
#[derive(Debug)]
struct RecordingStore {
    values: Arc<Mutex<HashMap<FeedKey, u64>>>,
    headers: HashMap<FeedKey, Headers>,
    offers: Arc<Mutex<Vec<(String, Vec<SharedFeed>)>>>,
    attached: Arc<Mutex<Vec<FeedKey>>>,
    sessions: Addr<SessionsActor>,
}

impl Actor for RecordingStore {
    type Context = Context<Self>;
}

impl Handler<Shares> for RecordingStore {
    type Result = Result<Vec<SharedFeed>, StoreError>;
    fn handle(&mut self, msg: Shares, _: &mut Context<Self>) -> Self::Result {
        Ok(self
            .headers
            .iter()
            .filter(|(_, h)| h.get("ns") == Some(msg.namespace.as_bytes()))
            .map(|(key, headers)| SharedFeed {
                key: *key,
                headers: headers.clone(),
            })
            .collect())
    }
}

impl Handler<KnownFeeds> for RecordingStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, _: KnownFeeds, _: &mut Context<Self>) -> Self::Result {
        Ok(Vec::new())
    }
}

impl Handler<Offer> for RecordingStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, msg: Offer, _: &mut Context<Self>) -> Self::Result {
        self.offers
            .lock()
            .unwrap()
            .push((msg.namespace.clone(), msg.feeds.clone()));
        let accepted: Vec<FeedKey> = msg
            .feeds
            .iter()
            .filter(|f| f.headers.get("want") == Some(b"yes"))
            .map(|f| f.key)
            .collect();
        let mut values = self.values.lock().unwrap();
        for key in &accepted {
            values.entry(*key).or_insert(0);
        }
        Ok(accepted)
    }
}

impl Handler<Attach> for RecordingStore {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: Attach, _: &mut Context<Self>) -> Self::Result {
        self.attached.lock().unwrap().push(msg.feed);
        let (values, sessions) = (self.values.clone(), self.sessions.clone());
        let ours = values.lock().unwrap().get(&msg.feed).copied().unwrap_or(0);
        let FeedStream { mut send, mut recv } = msg.stream;
        tokio::spawn(async move {
            let mine = ours.to_be_bytes();
            let mut theirs = [0u8; 8];
            let (w, r) = tokio::join!(send.write_all(&mine), recv.read_exact(&mut theirs));
            if w.is_ok() && r.is_ok() {
                let value = ours.max(u64::from_be_bytes(theirs));
                values.lock().unwrap().insert(msg.feed, value);
                sessions.do_send(FeedSynced {
                    feed: msg.feed,
                    peer: msg.peer,
                    length: value,
                });
            }
            let _ = send.finish();
            let _ = recv.read_to_end(64).await;
            sessions.do_send(StreamEnded {
                feed: msg.feed,
                peer: msg.peer,
                id: msg.id,
            });
        });
        Ok(())
    }
}

impl Handler<Detach> for RecordingStore {
    type Result = ();
    fn handle(&mut self, _: Detach, _: &mut Context<Self>) {}
}

struct Recorded {
    values: Arc<Mutex<HashMap<FeedKey, u64>>>,
    offers: Arc<Mutex<Vec<(String, Vec<SharedFeed>)>>>,
    attached: Arc<Mutex<Vec<FeedKey>>>,
}

fn recording_store(
    sessions: &Addr<SessionsActor>,
    feeds: &[(FeedKey, u64, Headers)],
) -> (StoreRecipients, Recorded) {
    let values = Arc::new(Mutex::new(feeds.iter().map(|(k, v, _)| (*k, *v)).collect()));
    let offers = Arc::new(Mutex::new(Vec::new()));
    let attached = Arc::new(Mutex::new(Vec::new()));
    let store = RecordingStore {
        values: values.clone(),
        headers: feeds.iter().map(|(k, _, h)| (*k, h.clone())).collect(),
        offers: offers.clone(),
        attached: attached.clone(),
        sessions: sessions.clone(),
    }
    .start();
    (
        StoreRecipients::of(&store),
        Recorded {
            values,
            offers,
            attached,
        },
    )
}

fn headers(pairs: &[(&str, &[u8])]) -> Headers {
    let mut h = Headers::new();
    for (k, v) in pairs {
        h.insert(*k, v.to_vec()).unwrap();
    }
    h
}

#[test]
fn two_nodes_three_stores_two_namespaces_over_quic() {
    actix::System::new().block_on(async {
        let (a_events, mut events) = mpsc::unbounded_channel();
        let a = SessionsActor::new(SessionConfig::default(), Some(a_events)).start();
        let b = SessionsActor::new(SessionConfig::default(), None).start();
        let secret = Some(replic8::keys::NamespaceSecret([0x77; 32]));
        let f = |n: u8| FeedKey([n; 32]);
        // A: one store for "photos", one for "docs" (secret). B: one store for both.
        let (photos, photos_rec) = recording_store(
            &a,
            &[
                (
                    f(1),
                    3,
                    headers(&[
                        ("ns", b"photos"),
                        ("want", b"yes"),
                        ("title", "été".as_bytes()),
                    ]),
                ),
                (f(2), 4, headers(&[("ns", b"photos"), ("want", b"no")])),
            ],
        );
        let (docs, docs_rec) = recording_store(
            &a,
            &[
                (
                    f(3),
                    5,
                    headers(&[("ns", b"docs"), ("want", b"yes"), ("bin", &[0, 1, 255])]),
                ),
                (f(4), 6, headers(&[("ns", b"docs")])),
            ],
        );
        let (both, b_rec) = recording_store(&b, &[]);
        for (actor, namespaces, store) in [
            (&a, vec![("photos".to_string(), None)], photos),
            (&a, vec![("docs".to_string(), secret.clone())], docs),
            (
                &b,
                vec![
                    ("photos".to_string(), None),
                    ("docs".to_string(), secret.clone()),
                ],
                both,
            ),
        ] {
            actor
                .send(RegisterStore { namespaces, store })
                .await
                .unwrap()
                .unwrap();
        }
        let (server, client) = (server_endpoint(), client_endpoint());
        let (dialed, accepted) = connect(&client, &server).await;
        let (ka, kb) = (PeerKey([0xa; 32]), PeerKey([0xb; 32]));
        a.send(StartSession {
            peer: kb,
            connection: dialed,
            role: Role::Dialer,
        })
        .await
        .unwrap()
        .unwrap();
        b.send(StartSession {
            peer: ka,
            connection: accepted,
            role: Role::Acceptor,
        })
        .await
        .unwrap()
        .unwrap();
        // Wait for A's session to report both accepted feeds in sync.
        let mut synced = std::collections::HashSet::new();
        tokio::time::timeout(GUARD, async {
            while synced.len() < 2 {
                let PeerEvent { event, .. } = events.recv().await.unwrap();
                match event {
                    SessionEvent::FeedSynced { feed, .. } => {
                        synced.insert(feed);
                    }
                    SessionEvent::SessionEnded { reason } => panic!("{reason}"),
                    _ => {}
                }
            }
        })
        .await
        .expect("accepted feeds did not sync");
        assert_eq!(synced, [f(1), f(3)].into_iter().collect());
        // Headers arrived intact, each in its namespace.
        let offers = b_rec.offers.lock().unwrap().clone();
        let mut seen: Vec<(String, FeedKey, Headers)> = offers
            .into_iter()
            .flat_map(|(ns, feeds)| {
                feeds
                    .into_iter()
                    .map(move |f| (ns.clone(), f.key, f.headers))
            })
            .collect();
        seen.sort_by_key(|(_, k, _)| *k);
        assert_eq!(seen.len(), 4);
        assert_eq!(
            seen[0],
            (
                "photos".into(),
                f(1),
                headers(&[
                    ("ns", b"photos"),
                    ("want", b"yes"),
                    ("title", "été".as_bytes())
                ])
            )
        );
        assert_eq!(
            seen[2],
            (
                "docs".into(),
                f(3),
                headers(&[("ns", b"docs"), ("want", b"yes"), ("bin", &[0, 1, 255])])
            )
        );
        // Only accepted feeds were streamed, on both sides; the rest never reached B.
        let mut b_attached = b_rec.attached.lock().unwrap().clone();
        b_attached.sort();
        assert_eq!(b_attached, vec![f(1), f(3)]);
        let a_attached: Vec<FeedKey> = photos_rec
            .attached
            .lock()
            .unwrap()
            .iter()
            .chain(docs_rec.attached.lock().unwrap().iter())
            .copied()
            .collect();
        assert!(
            a_attached.iter().all(|k| *k == f(1) || *k == f(3)),
            "{a_attached:?}"
        );
        let b_values = b_rec.values.lock().unwrap().clone();
        assert_eq!(b_values.get(&f(1)), Some(&3));
        assert_eq!(b_values.get(&f(3)), Some(&5));
        assert!(!b_values.contains_key(&f(2)) && !b_values.contains_key(&f(4)));
    });
}

/// Waits for an event of `node` that `pick` accepts; panics on a session end.
async fn wait_for(
    events: &mut mpsc::UnboundedReceiver<(u8, PeerEvent)>,
    what: &str,
    pick: impl Fn(u8, &SessionEvent) -> bool,
) {
    tokio::time::timeout(GUARD, async {
        loop {
            let (node, PeerEvent { event, .. }) = events.recv().await.unwrap();
            if let SessionEvent::SessionEnded { reason } = &event {
                panic!("node {node} while waiting for {what}: {reason}");
            }
            if pick(node, &event) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[test]
fn a_live_session_reopens_streams_on_change_and_takes_new_shares() {
    actix::System::new().block_on(async {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (c1, c2) = (FeedKey([0xc1; 32]), FeedKey([0xc2; 32]));
        let a = test_node(1, &[(c1, 1)], events_tx.clone()).await;
        let b = test_node(2, &[], events_tx.clone()).await;
        link(&a, &b).await;
        let synced = |feed: FeedKey, value: u64| {
            move |node: u8, e: &SessionEvent| {
                node == 1
                    && *e
                        == SessionEvent::FeedSynced {
                            feed,
                            length: value,
                        }
            }
        };
        wait_for(&mut events, "c1 at 1", synced(c1, 1)).await;
        // The stream closed once in sync; a change on A reopens it.
        a.values.lock().unwrap().insert(c1, 10);
        a.sessions.do_send(FeedUpdated {
            feed: c1,
            length: 10,
        });
        wait_for(&mut events, "c1 at 10", synced(c1, 10)).await;
        assert_eq!(b.values.lock().unwrap().get(&c1), Some(&10));
        // A change on B (the acceptor) reaches A by a notice and a reopened stream.
        b.values.lock().unwrap().insert(c1, 12);
        b.sessions.do_send(FeedUpdated {
            feed: c1,
            length: 12,
        });
        wait_for(&mut events, "c1 at 12", synced(c1, 12)).await;
        assert_eq!(a.values.lock().unwrap().get(&c1), Some(&12));
        // A new feed shared while the session lives.
        a.values.lock().unwrap().insert(c2, 7);
        let offered = a
            .sessions
            .send(Share {
                namespace: "counters".into(),
                feeds: vec![SharedFeed {
                    key: c2,
                    headers: counter_headers(),
                }],
                peers: None,
                except: None,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(offered, 1);
        wait_for(&mut events, "c2 at 7", synced(c2, 7)).await;
        assert_eq!(b.values.lock().unwrap().get(&c2), Some(&7));
        // Sharing it again offers nothing.
        let again = a
            .sessions
            .send(Share {
                namespace: "counters".into(),
                feeds: vec![SharedFeed {
                    key: c2,
                    headers: counter_headers(),
                }],
                peers: None,
                except: None,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again, 0);
    });
}

#[test]
fn a_hostile_peer_loses_its_session_while_the_others_carry_on() {
    actix::System::new().block_on(async {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (c1, c2) = (FeedKey([0xd1; 32]), FeedKey([0xd2; 32]));
        let a = test_node(1, &[(c1, 3)], events_tx.clone()).await;
        let b = test_node(2, &[], events_tx.clone()).await;
        link(&a, &b).await;
        wait_for(&mut events, "c1 at 3", |node, e| {
            node == 2
                && *e
                    == SessionEvent::FeedSynced {
                        feed: c1,
                        length: 3,
                    }
        })
        .await;
        // A hostile peer connects to B and sends garbage on its control stream.
        let hostile = client_endpoint();
        let (dialed, accepted) = connect(&hostile, &b.server).await;
        let evil = PeerKey([0xee; 32]);
        b.sessions
            .send(StartSession {
                peer: evil,
                connection: accepted,
                role: Role::Acceptor,
            })
            .await
            .unwrap()
            .unwrap();
        let (mut send, _recv) = dialed.open_bi().await.unwrap();
        send.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        tokio::time::timeout(GUARD, async {
            loop {
                let (node, PeerEvent { peer, event }) = events.recv().await.unwrap();
                if let SessionEvent::SessionEnded { reason } = event {
                    assert_eq!((node, peer), (2, evil), "the wrong session ended: {reason}");
                    assert_eq!(reason.code, replic8::message::CloseCode::PROTOCOL);
                    return;
                }
            }
        })
        .await
        .expect("the hostile session did not end");
        // B's session with A goes on: a new share still arrives.
        a.values.lock().unwrap().insert(c2, 4);
        a.sessions.do_send(Share {
            namespace: "counters".into(),
            feeds: vec![SharedFeed {
                key: c2,
                headers: counter_headers(),
            }],
            peers: None,
            except: None,
        });
        wait_for(&mut events, "c2 at 4 on B", |node, e| {
            node == 2
                && *e
                    == SessionEvent::FeedSynced {
                        feed: c2,
                        length: 4,
                    }
        })
        .await;
        // The ended session leaves the registry (its task reports back after it ends).
        tokio::time::timeout(GUARD, async {
            while b.sessions.send(ListSessions).await.unwrap() != vec![a.key] {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the hostile session stayed registered");
    });
}
