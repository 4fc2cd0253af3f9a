//! The default feed store on the open network, over real QUIC on loopback: what it
//! accepts in which namespace, what it forwards, its quotas, the namespaces of its feeds
//! (kept over a restart), and the tasks of a detached stream.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::type_complexity,
    missing_docs
)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Context, Handler};
use replic8::actor::{ListSessions, PeerEvent, SessionsActor};
use replic8::feed_store::*;
use replic8::frame;
use replic8::keys::{FeedKey, NamespaceSecret, PeerKey};
use replic8::message::{CloseCode, Headers};
use replic8::session::{Mode, SessionConfig, SessionEvent, StreamId};
use replic8::store::*;
use replic8_store::storage::{DiskStorage, MemoryFeed, MemoryStorage, Storage};
use replic8_store::{Feed, FeedSecret, FeedSync, SyncConfig, MAX_MESSAGE_SIZE};
use tokio::sync::mpsc;

use crate::feed_nodes::{forward_events, link, link_raw, session_end, wait_for, Ev, Node, GUARD};
use crate::tls;
use tls::{client_endpoint, client_endpoint_kept_alive, connect_via};

const OPEN: &str = "open";
const TEAM: &str = "team";
const TEAM_SECRET: NamespaceSecret = NamespaceSecret([42; 32]);

/// A session layer whose events go to the test's channel as node `n`'s.
fn session_layer(n: u8, events: &mpsc::UnboundedSender<Ev>) -> Addr<SessionsActor> {
    session_layer_with_store_events(n, events).0
}

/// [`session_layer`], and a sender for node `n`'s store events.
fn session_layer_with_store_events(
    n: u8,
    events: &mpsc::UnboundedSender<Ev>,
) -> (Addr<SessionsActor>, mpsc::UnboundedSender<FeedStoreEvent>) {
    let (stx, ftx) = forward_events(n, events);
    let config = SessionConfig {
        mode: Mode::Live,
        ..SessionConfig::default()
    };
    (SessionsActor::new(config, Some(stx)).start(), ftx)
}

/// A node with a feed store serving `namespaces` (each with its secret and policy).
async fn node<St: Storage + MembershipHome>(
    n: u8,
    storage: St,
    config: FeedStoreConfig,
    namespaces: Vec<(&str, Option<NamespaceSecret>, NamespacePolicy)>,
    events: &mpsc::UnboundedSender<Ev>,
) -> Node<St> {
    let (sessions, ftx) = session_layer_with_store_events(n, events);
    let store = FeedStore::new(storage, config, sessions.clone(), Some(ftx))
        .unwrap()
        .start();
    for (name, secret, policy) in namespaces {
        store
            .send(ServeNamespace {
                namespace: name.into(),
                secret,
                policy,
            })
            .await
            .unwrap()
            .unwrap();
    }
    Node::new(n, sessions, store)
}

/// Panics if any session in `seen` ended.
fn assert_no_end(seen: &[Ev]) {
    for e in seen {
        if let Ev::Session(
            n,
            PeerEvent {
                peer,
                event: SessionEvent::SessionEnded { reason },
            },
        ) = e
        {
            panic!(
                "node {n}: session with {} ended: {reason}",
                peer.fmt_short()
            );
        }
    }
}

/// A feed on `node` with `blocks` blocks of `size` bytes, shared in `namespace`.
async fn shared_feed<St: Storage>(
    node: &Node<St>,
    namespace: &str,
    blocks: usize,
    size: usize,
) -> FeedKey {
    shared_feed_with(node, namespace, blocks, size, &[]).await
}

/// [`shared_feed`] with headers.
async fn shared_feed_with<St: Storage>(
    node: &Node<St>,
    namespace: &str,
    blocks: usize,
    size: usize,
    headers: &[(&str, &str)],
) -> FeedKey {
    let feed = node.store.send(CreateFeed).await.unwrap().unwrap();
    if blocks > 0 {
        let data: Vec<Vec<u8>> = (0..blocks).map(|i| vec![i as u8; size]).collect();
        node.store
            .send(Append { feed, blocks: data })
            .await
            .unwrap()
            .unwrap();
    }
    let mut h = Headers::new();
    for (k, v) in headers {
        h.insert(*k, v.as_bytes().to_vec()).unwrap();
    }
    node.store
        .send(ShareFeed {
            namespace: namespace.into(),
            feed,
            headers: h,
        })
        .await
        .unwrap()
        .unwrap();
    feed
}

fn fresh_keys(n: usize) -> Vec<FeedKey> {
    (0..n)
        .map(|_| FeedKey::from(FeedSecret::generate().key()))
        .collect()
}

/// A hostile store: offers `offers` and announces `known` in the public namespace only
/// (feed keys it need not hold), accepts everything in every namespace, and reports
/// each stream it is given, holding it open without a word.
#[derive(Debug)]
struct HostileStore {
    n: u8,
    offers: Vec<FeedKey>,
    known: Vec<FeedKey>,
    events: mpsc::UnboundedSender<Ev>,
    held: Vec<FeedStream>,
}

impl Actor for HostileStore {
    type Context = Context<Self>;
}

impl Handler<Shares> for HostileStore {
    type Result = Result<Vec<SharedFeed>, StoreError>;
    fn handle(&mut self, msg: Shares, _: &mut Context<Self>) -> Self::Result {
        if !msg.namespace.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .offers
            .iter()
            .map(|key| SharedFeed {
                key: *key,
                headers: Headers::new(),
            })
            .collect())
    }
}

impl Handler<KnownFeeds> for HostileStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, msg: KnownFeeds, _: &mut Context<Self>) -> Self::Result {
        if !msg.namespace.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.known.clone())
    }
}

impl Handler<Offer> for HostileStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, msg: Offer, _: &mut Context<Self>) -> Self::Result {
        Ok(msg.feeds.iter().map(|f| f.key).collect())
    }
}

impl Handler<Detach> for HostileStore {
    type Result = ();
    fn handle(&mut self, _: Detach, _: &mut Context<Self>) {}
}

impl Handler<Attach> for HostileStore {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: Attach, _: &mut Context<Self>) -> Self::Result {
        let _ = self.events.send(Ev::Attached(self.n, msg.feed));
        self.held.push(msg.stream);
        Ok(())
    }
}

/// The hostile peer `n`: its key, client endpoint and session layer, serving `""`.
async fn hostile(
    n: u8,
    offers: Vec<FeedKey>,
    known: Vec<FeedKey>,
    events: &mpsc::UnboundedSender<Ev>,
) -> (PeerKey, quinn::Endpoint, Addr<SessionsActor>) {
    let sessions = session_layer(n, events);
    let store = HostileStore {
        n,
        offers,
        known,
        events: events.clone(),
        held: Vec::new(),
    }
    .start();
    sessions
        .send(RegisterStore {
            namespaces: vec![(String::new(), None), (OPEN.into(), None)],
            store: StoreRecipients::of(&store),
        })
        .await
        .unwrap()
        .unwrap();
    (PeerKey([n; 32]), client_endpoint(), sessions)
}

/// Sums the refusals the store of node `n` reports until `done` holds.
async fn wait_refused(
    events: &mut mpsc::UnboundedReceiver<Ev>,
    n: u8,
    what: &str,
    done: impl Fn(&Refusals) -> bool,
) -> (Refusals, Vec<Ev>) {
    let mut total = Refusals::default();
    let seen = wait_for(events, what, |e| {
        if let Ev::Store(m, FeedStoreEvent::Refused { refused, .. }) = e {
            if *m == n {
                total.policy += refused.policy;
                total.elsewhere += refused.elsewhere;
                total.quota += refused.quota;
            }
        }
        done(&total)
    })
    .await;
    (total, seen)
}

/// Case 1 of issue 12. On the code before it, B accepted all 4,096 keys (the default
/// policy accepted everything), created 4,096 replica directories and offered them to
/// C: no refusal was ever reported and this test timed out.
#[test]
fn fresh_keys_offered_in_the_public_namespace_create_nothing_and_reach_no_third_peer() {
    actix::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut events) = mpsc::unbounded_channel();
        // Even a config that asks to accept everything in "" does not open it.
        let mut config = FeedStoreConfig::default();
        config
            .namespaces
            .insert(String::new(), NamespacePolicy::accept_all());
        // Small feeds share one database file: ask the storage what it holds.
        let b_storage = DiskStorage::open(dir.path()).unwrap();
        let b = node(
            2,
            b_storage.clone(),
            config,
            vec![
                ("", None, NamespacePolicy::held_only()),
                (OPEN, None, NamespacePolicy::accept_all()),
            ],
            &tx,
        )
        .await;
        let c = node(
            3,
            MemoryStorage::new(),
            FeedStoreConfig::default(),
            vec![
                ("", None, NamespacePolicy::held_only()),
                (OPEN, None, NamespacePolicy::accept_all()),
            ],
            &tx,
        )
        .await;
        assert!(matches!(
            b.store
                .send(SetNamespacePolicy {
                    namespace: String::new(),
                    policy: NamespacePolicy::accept_all(),
                })
                .await
                .unwrap(),
            Err(FeedStoreError::PublicPolicy)
        ));
        const FLOOD: usize = 4096;
        let junk = fresh_keys(FLOOD);
        let (x_key, x_client, x_sessions) = hostile(9, junk.clone(), Vec::new(), &tx).await;
        link_raw(x_key, &x_client, &x_sessions, &b).await;
        let (refused, seen) = wait_refused(&mut events, 2, "B refuses the flood", |r| {
            r.policy >= FLOOD as u64
        })
        .await;
        assert_eq!(refused.policy, FLOOD as u64);
        assert_no_end(&seen);
        assert!(b_storage.list().unwrap().is_empty(), "a replica was made");
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!((stats.replicas, stats.refused_policy), (0, FLOOD as u64));

        // C connects afterwards; B offers it a real feed in OPEN, and nothing in "".
        link(&c, &b).await;
        let real = shared_feed(&b, OPEN, 3, 100).await;
        let seen = wait_for(&mut events, "C is offered B's real feed", |e| {
            matches!(e, Ev::Session(3, PeerEvent { event: SessionEvent::Offered { feeds, .. }, .. })
                if feeds.iter().any(|(k, _)| *k == real))
        })
        .await;
        let junk: HashSet<FeedKey> = junk.into_iter().collect();
        for e in &seen {
            if let Ev::Session(
                3,
                PeerEvent {
                    event: SessionEvent::Offered { feeds, .. },
                    ..
                },
            ) = e
            {
                assert!(
                    !feeds.iter().any(|(k, _)| junk.contains(k)),
                    "a flooded key reached C"
                );
            }
        }
        assert_no_end(&seen);
        // The flooder is still connected: a refusal ends nothing.
        let peers = b.sessions.send(ListSessions).await.unwrap();
        assert!(peers.contains(&x_key), "{peers:?}");
    });
}

/// On the code before issue 12 there was no per-namespace policy (`ServeNamespace` did
/// not exist, every namespace accepted everything): the refusal in `closed` was never
/// reported and this test timed out.
#[test]
fn a_namespace_opened_to_all_accepts_and_forwards_and_another_accepts_nothing_new() {
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let both = || {
            vec![
                (OPEN, None, NamespacePolicy::accept_all()),
                ("closed", None, NamespacePolicy::held_only()),
            ]
        };
        let a = node(1, MemoryStorage::new(), FeedStoreConfig::default(), both(), &tx).await;
        let b = node(2, MemoryStorage::new(), FeedStoreConfig::default(), both(), &tx).await;
        let c = node(3, MemoryStorage::new(), FeedStoreConfig::default(), both(), &tx).await;
        let open = shared_feed(&a, OPEN, 20, 1000).await;
        let closed = shared_feed(&a, "closed", 20, 1000).await;
        link(&b, &c).await;
        link(&a, &b).await;
        // C gets A's feed through B, which accepted and forwarded it.
        let seen = wait_for(&mut events, "C synced A's open feed via B", |e| {
            matches!(e, Ev::Store(3, FeedStoreEvent::FeedSynced { feed, length: 20, .. }) if *feed == open)
        })
        .await;
        assert_no_end(&seen);
        let seen2 = if seen
            .iter()
            .any(|e| matches!(e, Ev::Store(2, FeedStoreEvent::Refused { namespace, refused, .. }) if namespace == "closed" && refused.policy == 1))
        {
            Vec::new()
        } else {
            wait_refused(&mut events, 2, "B refuses the closed feed", |r| r.policy >= 1)
                .await
                .1
        };
        assert_no_end(&seen2);
        for n in [&b, &c] {
            assert!(matches!(
                n.store.send(OpenFeed { feed: closed }).await.unwrap(),
                Err(FeedStoreError::NotFound(_))
            ));
        }
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!((stats.replicas, stats.refused_policy), (1, 1), "{stats:?}");
    });
}

/// Cases 1 and 4 of issue 12. On the code before it there was no quota: all 20 feeds
/// were accepted and this test timed out waiting for the refusal.
#[test]
fn a_quota_stops_acceptance_at_the_limit_and_the_session_goes_on() {
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let config = FeedStoreConfig {
            limits: FeedStoreLimits {
                new_feeds_per_peer: 5,
                ..FeedStoreLimits::default()
            },
            ..FeedStoreConfig::default()
        };
        let b = node(
            2,
            MemoryStorage::new(),
            config,
            vec![(OPEN, None, NamespacePolicy::accept_all())],
            &tx,
        )
        .await;
        let a = node(
            1,
            MemoryStorage::new(),
            FeedStoreConfig::default(),
            vec![(OPEN, None, NamespacePolicy::held_only())],
            &tx,
        )
        .await;
        let mut feeds = Vec::new();
        for _ in 0..20 {
            feeds.push(shared_feed(&a, OPEN, 1, 10).await);
        }
        link(&a, &b).await;
        let (refused, seen) =
            wait_refused(&mut events, 2, "B's quota refuses 15", |r| r.quota >= 15).await;
        assert_eq!(
            refused,
            Refusals {
                quota: 15,
                ..Refusals::default()
            }
        );
        assert_no_end(&seen);
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!((stats.replicas, stats.refused_quota), (5, 15), "{stats:?}");
        // The session goes on: the five accepted feeds replicate over it.
        let mut synced = HashSet::new();
        let seen = wait_for(&mut events, "B synced the 5 accepted feeds", |e| {
            if let Ev::Store(
                2,
                FeedStoreEvent::FeedSynced {
                    feed, length: 1, ..
                },
            ) = e
            {
                synced.insert(*feed);
            }
            synced.len() == 5
        })
        .await;
        assert_no_end(&seen);
        assert!(b
            .sessions
            .send(ListSessions)
            .await
            .unwrap()
            .contains(&a.key));
    });
}

/// Case 6 of issue 12. On the code before it, B accepted X's offer of the team feed in
/// `""` (it held the feed) and served its blocks: no refusal was reported and this test
/// timed out (and B's `blocks_out` was 50).
#[test]
fn a_feed_held_only_in_a_secret_namespace_is_refused_and_not_served_in_the_public_one() {
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let b = node(
            2,
            MemoryStorage::new(),
            FeedStoreConfig::default(),
            vec![
                ("", None, NamespacePolicy::held_only()),
                (TEAM, Some(TEAM_SECRET), NamespacePolicy::held_only()),
            ],
            &tx,
        )
        .await;
        let secret_feed = shared_feed(&b, TEAM, 50, 1000).await;
        // X knows the key (leaked, or guessed from elsewhere) but not the secret: it
        // offers the feed in "" and announces it by discovery key.
        let (x_key, x_client, x_sessions) =
            hostile(9, vec![secret_feed], vec![secret_feed], &tx).await;
        link_raw(x_key, &x_client, &x_sessions, &b).await;
        let (refused, seen) =
            wait_refused(&mut events, 2, "B refuses the team feed in \"\"", |r| {
                r.elsewhere >= 1
            })
            .await;
        assert_eq!(
            refused,
            Refusals {
                elsewhere: 1,
                ..Refusals::default()
            }
        );
        assert_no_end(&seen);
        // A public feed of B afterwards: X accepts it and gets its stream, which orders
        // it after X's `have` of the team feed on the control stream.
        let public = b.store.send(CreateFeed).await.unwrap().unwrap();
        b.store
            .send(ShareFeed {
                namespace: String::new(),
                feed: public,
                headers: Headers::new(),
            })
            .await
            .unwrap()
            .unwrap();
        let seen = wait_for(
            &mut events,
            "X gets the public feed's stream",
            |e| matches!(e, Ev::Attached(9, f) if *f == public),
        )
        .await;
        assert_no_end(&seen);
        assert!(
            !seen
                .iter()
                .any(|e| matches!(e, Ev::Attached(9, f) if *f == secret_feed)),
            "X got a stream of the team feed"
        );
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!(
            stats.blocks_out, 0,
            "a block of the team feed was served: {stats:?}"
        );
        // In its own namespace the feed is known; in "" it is not.
        let known = |namespace: &str| KnownFeeds {
            peer: x_key,
            namespace: namespace.into(),
        };
        assert_eq!(
            b.store.send(known(TEAM)).await.unwrap().unwrap(),
            vec![secret_feed]
        );
        assert_eq!(
            b.store.send(known("")).await.unwrap().unwrap(),
            vec![public]
        );
    });
}

/// On the code before issue 12 membership did not exist: the restarted B accepted the
/// replica in `""` because it held it, and this test failed at that answer.
#[test]
fn replica_membership_survives_a_restart_of_the_store_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let feed = actix::System::new().block_on({
        let path = dir.path().to_path_buf();
        async move {
            let (tx, mut events) = mpsc::unbounded_channel();
            let a = node(
                1,
                MemoryStorage::new(),
                FeedStoreConfig::default(),
                vec![(OPEN, None, NamespacePolicy::held_only())],
                &tx,
            )
            .await;
            let b = node(
                2,
                DiskStorage::open(&path).unwrap(),
                FeedStoreConfig::default(),
                vec![
                    ("", None, NamespacePolicy::held_only()),
                    (OPEN, None, NamespacePolicy::accept_all()),
                ],
                &tx,
            )
            .await;
            let feed = shared_feed(&a, OPEN, 10, 100).await;
            link(&a, &b).await;
            wait_for(&mut events, "B synced run 1", |e| {
                matches!(e, Ev::Store(2, FeedStoreEvent::FeedSynced { feed: f, length: 10, .. }) if *f == feed)
            })
            .await;
            feed
        }
    });
    assert!(dir.path().join(MEMBERSHIP_FILE).exists());
    actix::System::new().block_on(async move {
        let (tx, _events) = mpsc::unbounded_channel();
        // Restarted with no policy of its own for OPEN: it accepts only what it holds
        // there, and the replica is held there.
        let b = node(
            2,
            DiskStorage::open(dir.path()).unwrap(),
            FeedStoreConfig::default(),
            vec![("", None, NamespacePolicy::held_only())],
            &tx,
        )
        .await;
        let peer = PeerKey([1; 32]);
        let offer = |namespace: &str| Offer {
            peer,
            namespace: namespace.into(),
            feeds: vec![SharedFeed {
                key: feed,
                headers: Headers::new(),
            }],
        };
        assert_eq!(
            b.store.send(offer(OPEN)).await.unwrap().unwrap(),
            vec![feed]
        );
        assert_eq!(b.store.send(offer("")).await.unwrap().unwrap(), vec![]);
        assert_eq!(b.store.send(offer("other")).await.unwrap().unwrap(), vec![]);
        let known = |namespace: &str| KnownFeeds {
            peer,
            namespace: namespace.into(),
        };
        assert_eq!(
            b.store.send(known(OPEN)).await.unwrap().unwrap(),
            vec![feed]
        );
        assert!(b.store.send(known("")).await.unwrap().unwrap().is_empty());
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!(
            (stats.replicas, stats.refused_namespace),
            (1, 2),
            "{stats:?}"
        );
    });
}

/// Feeds accepted from an offer become replicas in the background, all in one pass of
/// the storage and none of them opened (before, each was opened on its own and stayed
/// open up to the store's bound); a restart lists every one, held in its namespace and
/// empty.
#[test]
fn accepted_replicas_are_created_together_unopened_and_held_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut keys = fresh_keys(40);
    keys.sort_unstable_by_key(|k| k.0);
    let peer = PeerKey([1; 32]);
    actix::System::new().block_on({
        let (path, keys) = (dir.path().to_path_buf(), keys.clone());
        async move {
            let (tx, _events) = mpsc::unbounded_channel();
            let b = node(
                2,
                DiskStorage::open(&path).unwrap(),
                FeedStoreConfig::default(),
                vec![(OPEN, None, NamespacePolicy::accept_all())],
                &tx,
            )
            .await;
            let offer = Offer {
                peer,
                namespace: OPEN.into(),
                feeds: keys
                    .iter()
                    .map(|&key| SharedFeed {
                        key,
                        headers: Headers::new(),
                    })
                    .collect(),
            };
            let mut accepted = b.store.send(offer).await.unwrap().unwrap();
            accepted.sort_unstable_by_key(|k| k.0);
            assert_eq!(accepted, keys);
            // No event marks a replica made: the counters are polled, under the guard.
            let deadline = Instant::now() + GUARD;
            let stats = loop {
                let stats = b.store.send(GetStats).await.unwrap();
                if stats.feeds_opened >= 40 {
                    break stats;
                }
                assert!(Instant::now() < deadline, "replicas never made: {stats:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            assert_eq!(
                (stats.feeds_opened, stats.feeds_open, stats.replicas),
                (40, 0, 40),
                "{stats:?}"
            );
        }
    });
    actix::System::new().block_on(async move {
        let (tx, _events) = mpsc::unbounded_channel();
        let b = node(
            2,
            DiskStorage::open(dir.path()).unwrap(),
            FeedStoreConfig::default(),
            vec![(OPEN, None, NamespacePolicy::held_only())],
            &tx,
        )
        .await;
        let known = KnownFeeds {
            peer,
            namespace: OPEN.into(),
        };
        assert_eq!(b.store.send(known).await.unwrap().unwrap(), keys);
        let info = b
            .store
            .send(OpenFeed { feed: keys[7] })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((info.length, info.writable, info.head), (0, false, None));
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!((stats.feeds_held, stats.replicas), (40, 40), "{stats:?}");
    });
}

/// The frames a sync core has to send.
fn transmit_all(core: &mut FeedSync, replica: &mut Feed<MemoryFeed>) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(m) = core.poll_transmit(replica).unwrap() {
        let payload = replic8_store::encode(&m).unwrap();
        frame::encode(&payload, MAX_MESSAGE_SIZE, &mut out).unwrap();
    }
    out
}

/// Case 4 of issue 12. On the code before it the writer of a detached stream was
/// dropped, not aborted: blocked on a peer that does not read, it lived on with its
/// queue (and the stream tasks were not counted).
#[test]
fn a_detached_stream_whose_peer_stopped_reading_frees_its_tasks() {
    actix::System::new().block_on(async {
        let (tx, _events) = mpsc::unbounded_channel();
        let limits = FeedStoreLimits {
            flush_timeout: Duration::from_millis(200),
            ..FeedStoreLimits::default()
        };
        let b = serving_node(limits, &tx).await;
        // 6 MiB: more than the peer's stream window and B's write queue together.
        let feed = shared_feed(&b, OPEN, 96, 64 * 1024).await;
        // The peer: a reader core that asks for everything, then stops reading.
        let mut peer = RawReader::attach(&b, feed, PeerKey([7; 32])).await;
        peer.read_until_data().await;
        // Now the peer reads no more. B sends what the peer's stream window takes
        // (1.25 MB) and queues up to 2 MiB more: past 3 MiB its writer is blocked.
        // No event marks it: the counters are polled, under the guard.
        let deadline = Instant::now() + GUARD;
        let stats = loop {
            let stats = b.store.send(GetStats).await.unwrap();
            if stats.bytes_out >= 3 << 20 {
                break stats;
            }
            assert!(
                Instant::now() < deadline,
                "B's writer never filled: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // The stream's tasks: its driver (which also reads) and its writer.
        assert_eq!(
            (stats.open_streams, stats.stream_tasks),
            (1, 2),
            "{stats:?}"
        );
        b.store
            .send(Detach {
                feed,
                peer: PeerKey([7; 32]),
                id: StreamId(1),
                reason: DetachReason::Synced,
            })
            .await
            .unwrap();
        // The flush timeout passes; every task of the stream ends. No event marks a
        // task's end: the counter is polled, under the guard.
        let deadline = Instant::now() + GUARD;
        loop {
            let stats = b.store.send(GetStats).await.unwrap();
            if stats.stream_tasks == 0 && stats.open_streams == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "stream tasks still alive: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(peer);
    });
}

/// A peer's end of one feed stream of B, driven by a sync core in the test: it asks for
/// all of the feed, and reads only when told to.
struct RawReader {
    core: FeedSync,
    replica: Feed<MemoryFeed>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Bytes read and not yet cut into frames.
    buf: Vec<u8>,
    _connection: (quinn::Endpoint, quinn::Connection, quinn::Connection),
}

impl RawReader {
    /// Connects to `b` as `peer`, opens a stream for `feed` and attaches B's end of it
    /// to B's store; the core's first requests are sent. The connection is kept alive
    /// as a session's is: it ends only when the test drops it.
    async fn attach<St: Storage>(b: &Node<St>, feed: FeedKey, peer: PeerKey) -> RawReader {
        let addr = b.server.local_addr().unwrap();
        RawReader::attach_as(b, feed, peer, StreamId(1), addr).await
    }

    /// [`RawReader::attach`] as stream `id`, the connection dialed to `addr` (B, or a
    /// relay in front of it).
    async fn attach_as<St: Storage>(
        b: &Node<St>,
        feed: FeedKey,
        peer: PeerKey,
        id: StreamId,
        addr: std::net::SocketAddr,
    ) -> RawReader {
        let client = client_endpoint_kept_alive();
        let (dialed, accepted) = connect_via(&client, &b.server, addr).await;
        let storage = MemoryStorage::new();
        let key = replic8_store::FeedKey::try_from(feed).unwrap();
        let mut replica = Feed::create_replica(&storage, key).unwrap();
        let mut core = FeedSync::new(SyncConfig::default());
        let (mut send, recv) = dialed.open_bi().await.unwrap();
        core.handle_start(&mut replica, Instant::now());
        let first = transmit_all(&mut core, &mut replica);
        send.write_all(&first).await.unwrap();
        let (b_send, b_recv) = accepted.accept_bi().await.unwrap();
        b.store
            .send(Attach {
                feed,
                namespace: OPEN.into(),
                peer,
                id,
                stream: FeedStream {
                    send: b_send,
                    recv: b_recv,
                },
                verified_head: None,
            })
            .await
            .unwrap()
            .unwrap();
        RawReader {
            core,
            replica,
            send,
            recv,
            buf: Vec::new(),
            _connection: (client, dialed, accepted),
        }
    }

    /// Reads and answers until the first data arrived: the requests for all of the
    /// feed are out. A stalling peer reads no more after this.
    async fn read_until_data(&mut self) {
        while self.core.stats().blocks_in == 0 {
            assert!(
                self.read_some(64 * 1024).await.is_some(),
                "B's stream ended"
            );
        }
    }

    /// Reads up to `max` bytes of B's stream, hands the whole frames to the core and
    /// sends what it answers; the bytes read, `None` once B ended the stream.
    async fn read_some(&mut self, max: usize) -> Option<usize> {
        let read = tokio::time::timeout(GUARD, self.recv.read_chunk(max, true))
            .await
            .expect("B sends");
        let Ok(Some(chunk)) = read else {
            return None;
        };
        self.buf.extend_from_slice(&chunk.bytes);
        while let Some((payload, n)) = frame::parse(&self.buf, MAX_MESSAGE_SIZE).unwrap() {
            let payload = payload.to_vec();
            self.buf.drain(..n);
            self.core
                .handle_bytes(&mut self.replica, &payload, Instant::now())
                .unwrap();
        }
        let out = transmit_all(&mut self.core, &mut self.replica);
        // B stopped reading: it ended the stream.
        let sent = out.is_empty() || self.send.write_all(&out).await.is_ok();
        sent.then_some(chunk.bytes.len())
    }
}

/// A store serving `OPEN` with `limits`; node 2.
async fn serving_node(
    limits: FeedStoreLimits,
    tx: &mpsc::UnboundedSender<Ev>,
) -> Node<MemoryStorage> {
    let config = FeedStoreConfig {
        limits,
        ..FeedStoreConfig::default()
    };
    let policy = NamespacePolicy::held_only();
    node(
        2,
        MemoryStorage::new(),
        config,
        vec![(OPEN, None, policy)],
        tx,
    )
    .await
}

/// A peer that asks for a feed and stops reading pinned the serve budget for as long as
/// its stream lasted, so no other peer got any data. Now the stream is ended once it
/// holds bytes without progress for the stall bound, and the other reader is served.
#[test]
fn a_reader_that_stops_reading_is_cut_after_the_stall_bound_and_frees_the_budget() {
    const STALL: Duration = Duration::from_secs(1);
    const BLOCKS: u64 = 96;
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        // A budget of one answer: the stalled stream's unsent answer holds all of it.
        let limits = FeedStoreLimits {
            serve_bytes_in_flight: MIN_SERVE_BYTES_IN_FLIGHT,
            serve_stall: STALL,
            ..FeedStoreLimits::default()
        };
        let b = serving_node(limits, &tx).await;
        // 6 MiB: more than the peer's stream window and B's write queue together.
        let feed = shared_feed(&b, OPEN, BLOCKS as usize, 64 * 1024).await;
        let hostile = PeerKey([7; 32]);
        let mut stalled = RawReader::attach(&b, feed, hostile).await;
        stalled.read_until_data().await;
        // It reads no more. B sends what its stream window takes and holds the next
        // answer.
        wait_until_holding(&b, 2 << 20).await;
        let honest = PeerKey([8; 32]);
        let mut reader = RawReader::attach(&b, feed, honest).await;
        // The other reader gets the whole feed (before, its first read waited for
        // answers until the guard: the stalled stream held the budget for good).
        while reader.core.stats().blocks_in < BLOCKS {
            assert!(
                reader.read_some(256 * 1024).await.is_some(),
                "B's stream ended"
            );
        }
        let seen = wait_for(&mut events, "the stalled stream ended", |e| {
            matches!(e, Ev::Store(2, FeedStoreEvent::ServeStalled { .. }))
        })
        .await;
        let Some(Ev::Store(
            _,
            FeedStoreEvent::ServeStalled {
                peer, held, stall, ..
            },
        )) = seen.last()
        else {
            unreachable!()
        };
        assert_eq!((*peer, *stall), (hostile, STALL));
        assert!(*held > 0, "ended holding nothing");
        assert_eq!(reader.replica.stored_count(), BLOCKS);
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!(stats.serve_stalls, 1, "{stats:?}");
        // Its bytes went back: nothing of the stalled stream is held any more.
        let deadline = Instant::now() + GUARD;
        while b.store.send(GetStats).await.unwrap().serve_bytes_held > 0 {
            assert!(Instant::now() < deadline, "bytes still held");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(stalled);
    });
}

/// A peer that stops reading holds at most its share of the serve budget (the budget
/// less one answer), however many streams it opens: another peer is served at once, not
/// after the stall bound cuts the stalled streams.
#[test]
fn a_peer_that_stops_reading_holds_only_its_share_and_others_are_served_meanwhile() {
    const BLOCKS: u64 = 96;
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        // Room for two answers, so a peer's share is one; no stall cut within the test.
        let limits = FeedStoreLimits {
            serve_bytes_in_flight: 2 * MIN_SERVE_BYTES_IN_FLIGHT,
            serve_stall: Duration::from_secs(600),
            ..FeedStoreLimits::default()
        };
        let b = serving_node(limits, &tx).await;
        // 6 MiB each: more than a stream window and B's write queue together.
        let first = shared_feed(&b, OPEN, BLOCKS as usize, 64 * 1024).await;
        let second = shared_feed(&b, OPEN, BLOCKS as usize, 64 * 1024).await;
        let hostile = PeerKey([7; 32]);
        let addr = b.server.local_addr().unwrap();
        let mut stalled = RawReader::attach_as(&b, first, hostile, StreamId(1), addr).await;
        stalled.read_until_data().await;
        // A second stream of the same peer asks too (its requests left before B took the
        // stream), and never reads: once B reads them, it waits in the peer's line.
        let waiting = RawReader::attach_as(&b, second, hostile, StreamId(2), addr).await;
        wait_until_holding(&b, 1 << 20).await;
        // Before peers had shares, the stalled stream's answers took the whole budget
        // and this reader waited for the stall bound (ten minutes here).
        let mut reader = RawReader::attach(&b, second, PeerKey([8; 32])).await;
        while reader.core.stats().blocks_in < BLOCKS {
            assert!(
                reader.read_some(256 * 1024).await.is_some(),
                "B's stream ended"
            );
        }
        assert_eq!(reader.replica.stored_count(), BLOCKS);
        // Served while the stalled stream still held its answer: nothing was cut.
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!(stats.serve_stalls, 0, "{stats:?}");
        assert!(stats.serve_bytes_held > 0, "{stats:?}");
        while let Ok(e) = events.try_recv() {
            assert!(
                !matches!(e, Ev::Store(_, FeedStoreEvent::ServeStalled { .. })),
                "{e:?}"
            );
        }
        drop((stalled, waiting));
    });
}

/// Waits until `b` sent at least `sent` bytes and holds answers it could not send (a
/// reader stopped reading). No event marks it: the counters are polled, under the guard.
async fn wait_until_holding<St: Storage>(b: &Node<St>, sent: u64) {
    let deadline = Instant::now() + GUARD;
    loop {
        let stats = b.store.send(GetStats).await.unwrap();
        if stats.bytes_out >= sent && stats.serve_bytes_held > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "B never filled: {stats:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A reader that takes much longer than the stall bound over the feed, but reads all the
/// time, is not cut: the bound counts from its last progress. QUIC grants the writer
/// more of the reader's window in steps of an eighth of it (156 KB), and progress is
/// seen per chunk acknowledged: at 400 KB/s a step comes every 0.4 s, well within the
/// 2 s bound (scaled down from 30 s, it is a 27 KB/s reader at the default).
#[test]
fn an_honest_slow_reader_is_not_cut_by_the_stall_bound() {
    const STALL: Duration = Duration::from_secs(2);
    const BLOCKS: u64 = 48;
    const RATE: f64 = 400e3;
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let limits = FeedStoreLimits {
            serve_stall: STALL,
            ..FeedStoreLimits::default()
        };
        let b = serving_node(limits, &tx).await;
        // 3 MiB at 400 KB/s: four times the bound.
        let feed = shared_feed(&b, OPEN, BLOCKS as usize, 64 * 1024).await;
        let mut reader = RawReader::attach(&b, feed, PeerKey([8; 32])).await;
        let start = tokio::time::Instant::now();
        let mut read = 0;
        while reader.core.stats().blocks_in < BLOCKS {
            read += reader
                .read_some(16 * 1024)
                .await
                .expect("B cut the slow reader");
            // The pace of a slow link, not a check.
            tokio::time::sleep_until(start + Duration::from_secs_f64(read as f64 / RATE)).await;
        }
        assert!(start.elapsed() > 2 * STALL, "not slower than the bound");
        assert_eq!(reader.replica.stored_count(), BLOCKS);
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!(stats.serve_stalls, 0, "{stats:?}");
        while let Ok(e) = events.try_recv() {
            assert!(
                !matches!(e, Ev::Store(_, FeedStoreEvent::ServeStalled { .. })),
                "{e:?}"
            );
        }
    });
}

/// B for the stall tests: a stall bound of 1 s, and a feed of 6 MiB (more than a
/// peer's stream window and B's write queue together).
async fn stalling_node(tx: &mpsc::UnboundedSender<Ev>) -> (Node<MemoryStorage>, FeedKey) {
    let limits = FeedStoreLimits {
        serve_stall: Duration::from_secs(1),
        ..FeedStoreLimits::default()
    };
    let b = serving_node(limits, tx).await;
    let feed = shared_feed(&b, OPEN, 96, 64 * 1024).await;
    (b, feed)
}

/// A UDP relay in front of B whose peer side can go silent: once told, nothing the peer
/// sends reaches B, its QUIC acknowledgements included, as a peer that withholds them.
struct Withholder {
    addr: std::net::SocketAddr,
    withhold: Arc<AtomicBool>,
    relay: tokio::task::JoinHandle<()>,
}

impl Withholder {
    async fn spawn(to: std::net::SocketAddr) -> Withholder {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(to).await.unwrap();
        let addr = front.local_addr().unwrap();
        let withhold = Arc::new(AtomicBool::new(false));
        let silent = withhold.clone();
        let relay = tokio::spawn(async move {
            let (mut up, mut down) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
            let mut peer = None;
            loop {
                tokio::select! {
                    r = front.recv_from(&mut up) => if let Ok((n, from)) = r {
                        peer = Some(from);
                        if !silent.load(Ordering::Relaxed) {
                            let _ = back.send(&up[..n]).await;
                        }
                    },
                    r = back.recv(&mut down) => if let (Ok(n), Some(peer)) = (r, peer) {
                        let _ = front.send_to(&down[..n], peer).await;
                    },
                }
            }
        });
        Withholder {
            addr,
            withhold,
            relay,
        }
    }

    fn withhold(&self) {
        self.withhold.store(true, Ordering::Relaxed);
    }
}

impl Drop for Withholder {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

/// A peer that stops reading and withholds its QUIC acknowledgements too: what B sent it
/// stays unacknowledged in B's QUIC. B's stall cut resets the stream, so QUIC drops its
/// copies and every byte goes back to the budget while the connection is still up (a
/// finished stream kept them in QUIC until the connection's idle timeout, 30 s).
#[test]
fn a_stall_cut_frees_what_a_peer_that_withholds_its_acks_would_pin() {
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let (b, feed) = stalling_node(&tx).await;
        let relay = Withholder::spawn(b.server.local_addr().unwrap()).await;
        let hostile = PeerKey([7; 32]);
        let mut peer = RawReader::attach_as(&b, feed, hostile, StreamId(1), relay.addr).await;
        peer.read_until_data().await;
        // From now on B hears nothing from the peer: no read, no acknowledgement.
        relay.withhold();
        wait_for(&mut events, "the stall cut", |e| {
            matches!(e, Ev::Store(2, FeedStoreEvent::ServeStalled { peer, .. }) if *peer == hostile)
        })
        .await;
        // Every byte goes back. No event marks it: the counter is polled, under the guard.
        let deadline = Instant::now() + GUARD;
        loop {
            let stats = b.store.send(GetStats).await.unwrap();
            if stats.serve_bytes_held == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "bytes still held: {stats:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // ... while B's connection to the peer is up: the reset freed them, not its end.
        let b_side = &peer._connection.2;
        assert!(
            b_side.close_reason().is_none(),
            "given back only when the connection ended: {:?}",
            b_side.close_reason()
        );
    });
}

/// A peer that keeps letting its streams be cut for not reading and opening them again
/// (stall, cut, reopen) held budget bytes for a stall bound per cycle for as long as its
/// session lasted. Now its third stall in a row ends the session, with `timeout` (slow,
/// not at fault: no ban), and the first two end only their streams.
#[test]
fn a_peer_that_keeps_stalling_loses_its_session_at_its_third_stall() {
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let (b, feed) = stalling_node(&tx).await;
        // The peer has a session with B; its streams are raw ones on their own
        // connections, attached to B's store under the session's peer key (with ids no
        // stream of the session takes).
        let (key, client, sessions) = hostile(7, Vec::new(), Vec::new(), &tx).await;
        link_raw(key, &client, &sessions, &b).await;
        for cycle in 1..=MAX_SERVE_STALLS {
            let id = StreamId(1_000_000 + u64::from(cycle));
            let addr = b.server.local_addr().unwrap();
            // Kept until the cycle's stall: the stream's connection is its own.
            let mut stalled = RawReader::attach_as(&b, feed, key, id, addr).await;
            stalled.read_until_data().await;
            let seen = wait_for(&mut events, "the cycle's stall", |e| {
                matches!(e, Ev::Store(2, FeedStoreEvent::ServeStalled { .. }))
            })
            .await;
            let Some(Ev::Store(
                _,
                FeedStoreEvent::ServeStalled {
                    peer,
                    stalls,
                    ends_session,
                    ..
                },
            )) = seen.last()
            else {
                unreachable!()
            };
            assert_eq!(
                (*peer, *stalls, *ends_session),
                (key, cycle, cycle == MAX_SERVE_STALLS),
                "cycle {cycle}"
            );
            assert_no_end(&seen);
        }
        let (_, reason) = session_end(&mut events, 2, key).await;
        assert_eq!(reason.code, CloseCode::TIMEOUT, "{reason}");
        assert!(!reason.peer_at_fault, "{reason}");
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!(
            (stats.serve_stalls, stats.serve_stall_session_ends),
            (u64::from(MAX_SERVE_STALLS), 1),
            "{stats:?}"
        );
    });
}

/// A feed on `node` with 3 blocks of 100 bytes, shared in `namespace` with `headers`.
async fn shared_with<St: Storage>(
    node: &Node<St>,
    namespace: &str,
    headers: &[(&str, &str)],
) -> FeedKey {
    shared_feed_with(node, namespace, 3, 100, headers).await
}

/// The decisions node `n`'s store reported in `seen`, by feed, latest last.
fn decisions(seen: &[Ev], n: u8) -> Vec<(FeedKey, OfferDecision)> {
    seen.iter()
        .filter_map(|e| match e {
            Ev::Store(m, FeedStoreEvent::OfferDecided { feed, decision, .. }) if *m == n => {
                Some((*feed, *decision))
            }
            _ => None,
        })
        .collect()
}

/// The manual policy: a new feed's offer waits for the user; accepted, it replicates
/// from the peer that offered it; rejected, it is refused; past the per-peer bound it is
/// refused at once; undecided, it expires and the offer is answered.
#[test]
fn a_manual_namespace_holds_offers_until_the_user_decides_within_its_bounds() {
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let a = node(
            1,
            MemoryStorage::new(),
            FeedStoreConfig::default(),
            vec![(OPEN, None, NamespacePolicy::held_only())],
            &tx,
        )
        .await;
        let config = FeedStoreConfig {
            limits: FeedStoreLimits {
                manual_waiting_per_peer: 2,
                manual_wait: Duration::from_secs(3),
                ..FeedStoreLimits::default()
            },
            ..FeedStoreConfig::default()
        };
        let manual = NamespacePolicy {
            accept: AcceptPolicy::Manual,
            forward: false,
        };
        let b = node(2, MemoryStorage::new(), config, vec![(OPEN, None, manual)], &tx).await;
        for _ in 0..3 {
            shared_with(&a, OPEN, &[]).await;
        }
        link(&a, &b).await;
        let mut waiting = Vec::new();
        let mut over = 0;
        let seen = wait_for(&mut events, "two feeds waiting and one refused", |e| {
            if let Ev::Store(2, FeedStoreEvent::OfferDecided { feed, decision, .. }) = e {
                match decision {
                    OfferDecision::Waiting => waiting.push(*feed),
                    OfferDecision::RefusedQuota => over += 1,
                    other => panic!("unexpected decision {other:?}"),
                }
            }
            waiting.len() == 2 && over == 1
        })
        .await;
        assert_no_end(&seen);
        assert_eq!(b.store.send(GetStats).await.unwrap().offers_waiting, 2);
        let (yes, no) = (waiting[0], waiting[1]);
        // Not a manual namespace: refused, nothing decided.
        assert!(matches!(
            b.store
                .send(DecideOffers {
                    namespace: String::new(),
                    feeds: vec![yes],
                    accept: true,
                })
                .await
                .unwrap(),
            Err(FeedStoreError::NotManual(_))
        ));
        let decide = |feed, accept| DecideOffers {
            namespace: OPEN.into(),
            feeds: vec![feed],
            accept,
        };
        assert_eq!(b.store.send(decide(yes, true)).await.unwrap().unwrap(), [1]);
        assert_eq!(b.store.send(decide(no, false)).await.unwrap().unwrap(), [1]);
        let seen = wait_for(&mut events, "the accepted feed synced from A", |e| {
            matches!(e, Ev::Store(2, FeedStoreEvent::FeedSynced { feed, length: 3, .. }) if *feed == yes)
        })
        .await;
        assert_no_end(&seen);
        let decided = decisions(&seen, 2);
        assert!(decided.contains(&(yes, OfferDecision::Accepted)), "{decided:?}");
        assert!(decided.contains(&(no, OfferDecision::Rejected)), "{decided:?}");
        assert!(matches!(
            b.store.send(OpenFeed { feed: no }).await.unwrap(),
            Err(FeedStoreError::NotFound(_))
        ));
        // A feed shared later waits in its own offer, and expires undecided.
        let late = shared_with(&a, OPEN, &[]).await;
        let seen = wait_for(&mut events, "the late feed expired", |e| {
            matches!(e, Ev::Store(2, FeedStoreEvent::OfferDecided { feed, decision: OfferDecision::Expired, .. }) if *feed == late)
        })
        .await;
        assert_no_end(&seen);
        assert!(decisions(&seen, 2).contains(&(late, OfferDecision::Waiting)));
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!((stats.offers_waiting, stats.replicas), (0, 1), "{stats:?}");
        // A decision with no offer waiting is remembered for the next one.
        assert_eq!(b.store.send(decide(late, true)).await.unwrap().unwrap(), [0]);
    });
}

/// A header policy written as data accepts the feeds whose headers hold every given
/// value; a namespace that accepts nothing refuses every offer.
#[test]
fn a_header_match_takes_only_matching_feeds_and_none_takes_nothing() {
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let held = || NamespacePolicy::held_only();
        let a = node(
            1,
            MemoryStorage::new(),
            FeedStoreConfig::default(),
            vec![(OPEN, None, held()), ("out", None, held())],
            &tx,
        )
        .await;
        let photos = NamespacePolicy {
            accept: AcceptPolicy::HeadersMatch(vec![
                ("kind".into(), b"photo".to_vec()),
                ("year".into(), b"2026".to_vec()),
            ]),
            forward: false,
        };
        let nothing = NamespacePolicy {
            accept: AcceptPolicy::None,
            forward: false,
        };
        let b = node(
            2,
            MemoryStorage::new(),
            FeedStoreConfig::default(),
            vec![(OPEN, None, photos), ("out", None, nothing)],
            &tx,
        )
        .await;
        let wanted =
            shared_with(&a, OPEN, &[("kind", "photo"), ("year", "2026"), ("x", "y")]).await;
        let other_year = shared_with(&a, OPEN, &[("kind", "photo"), ("year", "2025")]).await;
        let bare = shared_with(&a, OPEN, &[]).await;
        let out = shared_with(&a, "out", &[]).await;
        link(&a, &b).await;
        let mut decided = Vec::new();
        let seen = wait_for(&mut events, "B decided A's three feeds", |e| {
            if let Ev::Store(2, FeedStoreEvent::OfferDecided { feed, decision, .. }) = e {
                decided.push((*feed, *decision));
            }
            decided.len() == 4
        })
        .await;
        assert_no_end(&seen);
        decided.sort_by_key(|(f, _)| f.0);
        let mut expected = vec![
            (wanted, OfferDecision::Accepted),
            (other_year, OfferDecision::RefusedPolicy),
            (bare, OfferDecision::RefusedPolicy),
            (out, OfferDecision::RefusedPolicy),
        ];
        expected.sort_by_key(|(f, _)| f.0);
        assert_eq!(decided, expected);
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!((stats.replicas, stats.refused_policy), (1, 3), "{stats:?}");
    });
}

/// A replica accepted under a forwarding policy is offered again, with the headers it
/// came with, once the store restarts and serves the namespace under that policy (before,
/// only shares were resumed: accepted replicas were offered to nobody after a restart).
#[test]
fn a_forwarded_replica_is_offered_again_with_its_headers_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut headers = Headers::new();
    headers.insert("title", b"holiday".to_vec()).unwrap();
    let feed = actix::System::new().block_on({
        let (path, headers) = (dir.path().to_path_buf(), headers.clone());
        async move {
            let (tx, mut events) = mpsc::unbounded_channel();
            let a = node(
                1,
                MemoryStorage::new(),
                FeedStoreConfig::default(),
                vec![(OPEN, None, NamespacePolicy::held_only())],
                &tx,
            )
            .await;
            let b = node(
                2,
                DiskStorage::open(&path).unwrap(),
                FeedStoreConfig::default(),
                vec![(OPEN, None, NamespacePolicy::accept_all())],
                &tx,
            )
            .await;
            let feed = a.store.send(CreateFeed).await.unwrap().unwrap();
            a.store
                .send(Append {
                    feed,
                    blocks: vec![vec![1; 100]; 5],
                })
                .await
                .unwrap()
                .unwrap();
            a.store
                .send(ShareFeed {
                    namespace: OPEN.into(),
                    feed,
                    headers,
                })
                .await
                .unwrap()
                .unwrap();
            link(&a, &b).await;
            wait_for(&mut events, "B synced the feed", |e| {
                matches!(e, Ev::Store(2, FeedStoreEvent::FeedSynced { feed: f, length: 5, .. }) if *f == feed)
            })
            .await;
            feed
        }
    });
    let restarted = |policy: NamespacePolicy| {
        let path = dir.path().to_path_buf();
        actix::System::new().block_on(async move {
            let (tx, _events) = mpsc::unbounded_channel();
            let b = node(
                2,
                DiskStorage::open(&path).unwrap(),
                FeedStoreConfig::default(),
                vec![(OPEN, None, policy)],
                &tx,
            )
            .await;
            b.store
                .send(Shares {
                    peer: PeerKey([9; 32]),
                    namespace: OPEN.into(),
                })
                .await
                .unwrap()
                .unwrap()
        })
    };
    assert!(
        restarted(NamespacePolicy::held_only()).is_empty(),
        "not offered under a policy that does not forward"
    );
    assert_eq!(
        restarted(NamespacePolicy::accept_all()),
        vec![SharedFeed {
            key: feed,
            headers: headers.clone()
        }]
    );
}
