//! `SessionsActor` over real QUIC on loopback: stores register, sessions start per
//! connection, a store forwards what it accepts, and offers do not loop.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

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

mod tls;
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
    let (dialed, accepted) = connect(&dialer.client, &acceptor.server).await;
    dialer
        .sessions
        .send(StartSession {
            peer: acceptor.key,
            connection: dialed,
            role: Role::Dialer,
        })
        .await
        .unwrap()
        .unwrap();
    acceptor
        .sessions
        .send(StartSession {
            peer: dialer.key,
            connection: accepted,
            role: Role::Acceptor,
        })
        .await
        .unwrap()
        .unwrap();
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
