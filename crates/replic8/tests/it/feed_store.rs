//! The default feed store over real QUIC on loopback: offers with headers, verified
//! replication, live appends, one-shot sessions, forwarding in a triangle, a hostile
//! peer sending blocks that do not verify, and disk storage.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::type_complexity,
    missing_docs
)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Context, Handler};
use replic8::actor::{GetSessionTotals, PeerEvent, SessionsActor};
use replic8::feed_store::*;
use replic8::frame;
use replic8::keys::{FeedKey, PeerKey};
use replic8::message::{CloseCode, Headers};
use replic8::session::{Mode, SessionConfig, SessionEvent};
use replic8::store::*;
use replic8_store::storage::{
    DiskStorage, FeedStorage, MemoryStorage, Storage, StorageError, StoredHead, StoredNode,
    WriteBatch,
};
use replic8_store::{Feed, FeedSecret, FeedSync, Message, SyncConfig, Want, MAX_MESSAGE_SIZE};
use tokio::sync::mpsc;

use crate::feed_nodes::{forward_events, link, link_raw, session_end, wait_for, Ev, Node, GUARD};
use crate::tls::client_endpoint;

const NS: &str = "photos";

fn session_config(mode: Mode) -> SessionConfig {
    SessionConfig {
        mode,
        max_streams: MAX_STREAMS.with(|m| m.get()),
        ..SessionConfig::default()
    }
}

thread_local! {
    /// `max_streams` for nodes made on this thread (each test runs on its own thread).
    static MAX_STREAMS: std::cell::Cell<u32> =
        std::cell::Cell::new(SessionConfig::default().max_streams);
}

/// Starts a node's session layer and feed store, wiring their events to `events`.
async fn node<St: Storage + MembershipHome>(
    n: u8,
    storage: St,
    config: FeedStoreConfig,
    mode: Mode,
    events: &mpsc::UnboundedSender<Ev>,
) -> Node<St> {
    let (stx, ftx) = forward_events(n, events);
    let sessions = SessionsActor::new(session_config(mode), Some(stx)).start();
    let store = FeedStore::new(storage, config, sessions.clone(), Some(ftx))
        .unwrap()
        .start_registered(vec![(NS.into(), None)])
        .await
        .unwrap();
    Node::new(n, sessions, store)
}

fn headers(kind: &str) -> Headers {
    let mut h = Headers::new();
    h.insert("kind", kind.as_bytes().to_vec()).unwrap();
    h.insert("title", b"holiday 2026".to_vec()).unwrap();
    h
}

fn block(feed: u8, i: u64) -> Vec<u8> {
    // Varied sizes and contents, so a misplaced block would not read back the same.
    let len = 100 + (i as usize * 37) % 3000;
    (0..len)
        .map(|j| (i as usize * 31 + j + feed as usize) as u8)
        .collect()
}

/// Creates a feed on `node` with `blocks` blocks and shares it with `kind` headers.
async fn writer_feed<St: Storage>(node: &Node<St>, tag: u8, blocks: u64, kind: &str) -> FeedKey {
    shared_feed(node, (0..blocks).map(|i| block(tag, i)).collect(), kind).await
}

/// Creates a feed on `node` holding `data` and shares it with `kind` headers.
async fn shared_feed<St: Storage>(node: &Node<St>, data: Vec<Vec<u8>>, kind: &str) -> FeedKey {
    let feed = node.store.send(CreateFeed).await.unwrap().unwrap();
    for chunk in data.chunks(100) {
        node.store
            .send(Append {
                feed,
                blocks: chunk.to_vec(),
            })
            .await
            .unwrap()
            .unwrap();
    }
    share(node, feed, kind).await;
    feed
}

/// Shares `feed` of `node` in `NS` with `kind` headers.
async fn share<St: Storage>(node: &Node<St>, feed: FeedKey, kind: &str) {
    node.store
        .send(ShareFeed {
            namespace: NS.into(),
            feed,
            headers: headers(kind),
        })
        .await
        .unwrap()
        .unwrap();
}

/// Waits until both one-shot sessions ended, each with `done`.
async fn wait_both_done(events: &mut mpsc::UnboundedReceiver<Ev>) {
    let mut ended = 0;
    wait_for(events, "both one-shot sessions to end", |e| {
        if let Ev::Session(
            n,
            PeerEvent {
                event: SessionEvent::SessionEnded { reason },
                ..
            },
        ) = e
        {
            assert_eq!(reason.code, CloseCode::DONE, "node {n}: {reason}");
            ended += 1;
        }
        ended == 2
    })
    .await;
}

fn is_synced(e: &Ev, node: u8, feed: FeedKey, length: u64) -> bool {
    matches!(e, Ev::Store(n, FeedStoreEvent::FeedSynced { feed: f, length: l, .. })
        if *n == node && *f == feed && *l == length)
}

/// B's copy reads back byte-identical and carries A's verified signed head.
async fn assert_same<A: Storage, B: Storage>(a: &Node<A>, b: &Node<B>, feed: FeedKey, length: u64) {
    let ours = a
        .store
        .send(ReadRange {
            feed,
            start: 0,
            end: length,
        })
        .await
        .unwrap()
        .unwrap();
    let theirs = b
        .store
        .send(ReadRange {
            feed,
            start: 0,
            end: length,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ours.len() as u64, length);
    assert!(
        ours == theirs,
        "node {}: blocks differ from node {}",
        b.n,
        a.n
    );
    let a_info = a.store.send(OpenFeed { feed }).await.unwrap().unwrap();
    let b_info = b.store.send(OpenFeed { feed }).await.unwrap().unwrap();
    assert!(a_info.writable && !b_info.writable);
    assert_eq!((b_info.length, b_info.stored), (length, length));
    let head = b_info.head.expect("replica has a head");
    assert_eq!(Some(head), a_info.head);
    let key = replic8_store::FeedKey::try_from(feed).unwrap();
    assert!(key.verify_head(&head), "node {}: head does not verify", b.n);
}

/// Accepts every feed offered in `NS` and forwards it.
fn accept_all() -> FeedStoreConfig {
    FeedStoreConfig {
        accept: AcceptPolicy::All,
        forward: true,
        ..FeedStoreConfig::default()
    }
}

fn photos_only() -> FeedStoreConfig {
    FeedStoreConfig {
        accept: AcceptPolicy::Headers(std::sync::Arc::new(|h: &Headers| {
            h.get("kind") == Some(b"photos")
        })),
        ..FeedStoreConfig::default()
    }
}

async fn two_nodes_replicate<B: Storage + MembershipHome>(b_storage: B) {
    let (tx, mut events) = mpsc::unbounded_channel();
    let a = node(
        1,
        MemoryStorage::new(),
        FeedStoreConfig::default(),
        Mode::Live,
        &tx,
    )
    .await;
    let b = node(2, b_storage, photos_only(), Mode::Live, &tx).await;
    let photos = writer_feed(&a, 1, 300, "photos").await;
    let junk = writer_feed(&a, 2, 50, "junk").await;
    link(&a, &b).await;

    let mut seen = wait_for(&mut events, "B synced the photos feed", |e| {
        is_synced(e, 2, photos, 300)
    })
    .await;
    assert_same(&a, &b, photos, 300).await;

    // Headers arrived intact; only the photos feed was accepted.
    let offered: Vec<(FeedKey, Headers)> = seen
        .iter()
        .filter_map(|e| match e {
            Ev::Session(
                2,
                PeerEvent {
                    event: SessionEvent::Offered { feeds, .. },
                    ..
                },
            ) => Some(feeds.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        offered.contains(&(photos, headers("photos"))),
        "{offered:?}"
    );
    assert!(offered.contains(&(junk, headers("junk"))), "{offered:?}");

    // Live: blocks appended after the sync arrive, and B's subscribers see them.
    let mut watch = b
        .store
        .send(Subscribe { feed: photos })
        .await
        .unwrap()
        .unwrap();
    assert_eq!((watch.borrow().length, watch.borrow().stored), (300, 300));
    let more: Vec<Vec<u8>> = (300..310).map(|i| block(1, i)).collect();
    a.store
        .send(Append {
            feed: photos,
            blocks: more,
        })
        .await
        .unwrap()
        .unwrap();
    seen.extend(
        wait_for(&mut events, "B synced the appended blocks", |e| {
            is_synced(e, 2, photos, 310)
        })
        .await,
    );
    assert_same(&a, &b, photos, 310).await;
    tokio::time::timeout(GUARD, watch.wait_for(|s| s.stored == 310))
        .await
        .expect("subscriber saw the appended blocks")
        .unwrap();

    // The rejected feed was never streamed nor stored.
    let accepted: Vec<FeedKey> = seen
        .iter()
        .filter_map(|e| match e {
            Ev::Session(
                1,
                PeerEvent {
                    event: SessionEvent::Accepted { feeds, .. },
                    ..
                },
            ) => Some(feeds.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(accepted, vec![photos]);
    assert!(matches!(
        b.store.send(OpenFeed { feed: junk }).await.unwrap(),
        Err(FeedStoreError::NotFound(_))
    ));
    let stats = b.store.send(GetStats).await.unwrap();
    assert_eq!(stats.blocks_in, 310);
    assert_eq!(stats.streams_failed, 0);
    let a_stats = a.store.send(GetStats).await.unwrap();
    assert_eq!(a_stats.blocks_out, 310);
}

#[test]
fn two_nodes_replicate_an_accepted_feed_verified_and_live_in_memory() {
    actix::System::new().block_on(two_nodes_replicate(MemoryStorage::new()));
}

#[test]
fn two_nodes_replicate_to_disk_storage() {
    let dir = tempfile::tempdir().unwrap();
    let storage = DiskStorage::open(dir.path()).unwrap();
    actix::System::new().block_on(two_nodes_replicate(storage));
}

#[test]
fn a_one_shot_session_ends_synced() {
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let a = node(
            1,
            MemoryStorage::new(),
            FeedStoreConfig::default(),
            Mode::OneShot,
            &tx,
        )
        .await;
        // B decides by callback: everything but feeds of kind "skip me".
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        let policy = AcceptPolicy::Callback(std::sync::Arc::new(
            move |peer: &PeerKey, ns: &str, feed: &SharedFeed| {
                log.lock().unwrap().push((*peer, ns.to_string(), feed.key));
                feed.headers.get("kind") != Some(b"skip me")
            },
        ));
        let b_config = FeedStoreConfig {
            accept: policy,
            ..FeedStoreConfig::default()
        };
        let b = node(2, MemoryStorage::new(), b_config, Mode::OneShot, &tx).await;
        let f1 = writer_feed(&a, 1, 200, "photos").await;
        let f2 = writer_feed(&a, 2, 120, "photos").await;
        let skipped = writer_feed(&a, 3, 10, "skip me").await;
        link(&a, &b).await;
        let mut ended = HashMap::new();
        wait_for(&mut events, "both sessions to end", |e| {
            if let Ev::Session(
                n,
                PeerEvent {
                    event: SessionEvent::SessionEnded { reason },
                    ..
                },
            ) = e
            {
                ended.insert(*n, reason.clone());
            }
            ended.len() == 2
        })
        .await;
        for (n, reason) in &ended {
            assert_eq!(reason.code, CloseCode::DONE, "node {n}: {reason}");
        }
        assert_same(&a, &b, f1, 200).await;
        assert_same(&a, &b, f2, 120).await;
        let mut asked: Vec<FeedKey> = asked
            .lock()
            .unwrap()
            .iter()
            .map(|(p, ns, k)| {
                assert_eq!((*p, ns.as_str()), (a.key, NS));
                *k
            })
            .collect();
        asked.sort();
        let mut offered = vec![f1, f2, skipped];
        offered.sort();
        assert_eq!(asked, offered);
        assert!(matches!(
            b.store.send(OpenFeed { feed: skipped }).await.unwrap(),
            Err(FeedStoreError::NotFound(_))
        ));
    });
}

#[test]
fn a_triangle_replicates_a_feed_to_everyone_without_offer_loops() {
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let cfg = accept_all;
        let a = node(1, MemoryStorage::new(), cfg(), Mode::Live, &tx).await;
        let b = node(2, MemoryStorage::new(), cfg(), Mode::Live, &tx).await;
        let c = node(3, MemoryStorage::new(), cfg(), Mode::Live, &tx).await;
        let feed = writer_feed(&a, 7, 250, "photos").await;
        link(&a, &b).await;
        link(&b, &c).await;
        link(&c, &a).await;
        let mut done = std::collections::HashSet::new();
        let mut seen = wait_for(&mut events, "B and C synced", |e| {
            for n in [2, 3] {
                if is_synced(e, n, feed, 250) {
                    done.insert(n);
                }
            }
            done.len() == 2
        })
        .await;
        assert_same(&a, &b, feed, 250).await;
        assert_same(&a, &c, feed, 250).await;
        // Let any late offers arrive: a live append goes around once more.
        a.store
            .send(Append {
                feed,
                blocks: vec![b"one more".to_vec()],
            })
            .await
            .unwrap()
            .unwrap();
        let mut done = std::collections::HashSet::new();
        seen.extend(
            wait_for(&mut events, "B and C synced the append", |e| {
                for n in [2, 3] {
                    if is_synced(e, n, feed, 251) {
                        done.insert(n);
                    }
                }
                done.len() == 2
            })
            .await,
        );
        while let Ok(e) = events.try_recv() {
            seen.push(e);
        }
        let mut offered: HashMap<(u8, PeerKey), usize> = HashMap::new();
        for e in &seen {
            if let Ev::Session(
                n,
                PeerEvent {
                    peer,
                    event: SessionEvent::Offered { feeds, .. },
                },
            ) = e
            {
                if feeds.iter().any(|(k, _)| *k == feed) {
                    *offered.entry((*n, *peer)).or_default() += 1;
                }
            }
            if let Ev::Session(
                n,
                PeerEvent {
                    event: SessionEvent::SessionEnded { reason },
                    ..
                },
            ) = e
            {
                panic!("node {n}: {reason}");
            }
        }
        assert!(
            offered.values().all(|n| *n == 1),
            "an offer repeated: {offered:?}"
        );
        assert!(offered.len() <= 4, "offers went around: {offered:?}");
        // Forwarded: the accepted feed was created as a replica on both.
        for n in [&b, &c] {
            let info = n.store.send(OpenFeed { feed }).await.unwrap().unwrap();
            assert!(!info.writable);
        }
    });
}

/// A hostile store: holds a real writer feed and runs the real sync core, but flips a
/// byte in every block it sends.
#[derive(Debug)]
struct TamperingStore {
    feed: FeedKey,
    storage: MemoryStorage,
    /// Instead of flipping bits, send these bytes on each feed stream, then only read.
    opening: Option<Vec<u8>>,
    /// Its answer to `FeedHeads` (when registered with it): a forged head.
    head: Option<replic8_store::SignedHead>,
}

/// The hostile node X (key `[9; 32]`), its session to `b` up: a real feed of `blocks`
/// blocks behind a [`TamperingStore`] that sends `opening` on each feed stream (or
/// flipped blocks), and, with `forge_head`, answers for the feed's head with one
/// signature bit flipped. Its actors and endpoint live as long as the value.
struct Hostile {
    key: PeerKey,
    feed: FeedKey,
    _sessions: Addr<SessionsActor>,
    _store: Addr<TamperingStore>,
    _client: quinn::Endpoint,
}

async fn hostile<St: Storage>(
    b: &Node<St>,
    blocks: u64,
    opening: Option<Vec<u8>>,
    forge_head: bool,
) -> Hostile {
    let storage = MemoryStorage::new();
    let mut writer = Feed::create(&storage, FeedSecret::generate()).unwrap();
    let data: Vec<Vec<u8>> = (0..blocks).map(|i| block(9, i)).collect();
    writer.append_batch(&data).unwrap();
    let feed = FeedKey::from(*writer.key());
    let head = forge_head.then(|| {
        let mut head = *writer.head().unwrap();
        head.signature[50] ^= 0x10;
        head
    });
    drop(writer);
    let key = PeerKey([9; 32]);
    let sessions = SessionsActor::new(SessionConfig::default(), None).start();
    let store = TamperingStore {
        feed,
        storage,
        opening,
        head,
    }
    .start();
    let mut recipients = StoreRecipients::of(&store);
    if forge_head {
        recipients = recipients.with_heads(store.clone().recipient());
    }
    sessions
        .send(RegisterStore {
            namespaces: vec![(NS.into(), None)],
            store: recipients,
        })
        .await
        .unwrap()
        .unwrap();
    let client = client_endpoint();
    link_raw(key, &client, &sessions, b).await;
    Hostile {
        key,
        feed,
        _sessions: sessions,
        _store: store,
        _client: client,
    }
}

impl Handler<FeedHeads> for TamperingStore {
    type Result = Result<Vec<Option<replic8_store::SignedHead>>, StoreError>;
    fn handle(&mut self, msg: FeedHeads, _: &mut Context<Self>) -> Self::Result {
        Ok(msg.feeds.iter().map(|_| self.head).collect())
    }
}

impl Actor for TamperingStore {
    type Context = Context<Self>;
}

impl Handler<Shares> for TamperingStore {
    type Result = Result<Vec<SharedFeed>, StoreError>;
    fn handle(&mut self, _: Shares, _: &mut Context<Self>) -> Self::Result {
        Ok(vec![SharedFeed {
            key: self.feed,
            headers: headers("photos"),
        }])
    }
}

impl Handler<KnownFeeds> for TamperingStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, _: KnownFeeds, _: &mut Context<Self>) -> Self::Result {
        Ok(Vec::new())
    }
}

impl Handler<Offer> for TamperingStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, _: Offer, _: &mut Context<Self>) -> Self::Result {
        Ok(Vec::new())
    }
}

impl Handler<Detach> for TamperingStore {
    type Result = ();
    fn handle(&mut self, _: Detach, _: &mut Context<Self>) {}
}

impl Handler<Attach> for TamperingStore {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: Attach, _: &mut Context<Self>) -> Self::Result {
        let key = replic8_store::FeedKey::try_from(self.feed).unwrap();
        let mut feed = Feed::open(&self.storage, &key).unwrap().unwrap();
        let FeedStream { mut send, mut recv } = msg.stream;
        let opening = self.opening.clone();
        tokio::spawn(async move {
            if let Some(opening) = opening {
                let _ = send.write_all(&opening).await;
                let _ = recv.read_to_end(1 << 20).await;
                return;
            }
            let mut core = FeedSync::new(SyncConfig {
                want: Want::Nothing,
                ..SyncConfig::default()
            });
            core.handle_start(&mut feed, Instant::now());
            let mut buf = Vec::new();
            loop {
                while let Some(mut m) = core.poll_transmit(&mut feed).unwrap() {
                    if let Message::Data(data) = &mut m {
                        for b in &mut data.blocks {
                            b[0] ^= 1;
                        }
                    }
                    let mut out = Vec::new();
                    let payload = replic8_store::encode(&m).unwrap();
                    frame::encode(&payload, MAX_MESSAGE_SIZE, &mut out).unwrap();
                    if send.write_all(&out).await.is_err() {
                        return;
                    }
                }
                match recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                    _ => return,
                }
                while let Some((payload, n)) = frame::parse(&buf, MAX_MESSAGE_SIZE).unwrap() {
                    let payload = payload.to_vec();
                    buf.drain(..n);
                    if core
                        .handle_bytes(&mut feed, &payload, Instant::now())
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(())
    }
}

#[test]
fn a_peer_sending_bad_blocks_gets_that_feed_stopped_and_nothing_is_stored() {
    actix::System::new().block_on(hostile_peer(None, "does not verify"));
}

#[test]
fn a_peer_sending_an_oversize_feed_frame_gets_that_feed_stopped() {
    let opening = frame_start(MAX_MESSAGE_SIZE + 1, 0, 4096);
    actix::System::new().block_on(hostile_peer(Some(opening), "frame"));
}

#[test]
fn a_peer_that_begins_data_we_did_not_ask_for_gets_that_feed_stopped_from_its_first_bytes() {
    // 5 is a data message's tag: an answer, and B sent no request. The frame is never
    // finished: B must refuse it from its first bytes.
    let opening = frame_start(500_000, 5, 4096);
    let expect = "an answer to no request (0 sent";
    actix::System::new().block_on(hostile_peer(Some(opening), expect));
}

#[test]
fn a_peer_that_begins_a_megabyte_have_gets_that_feed_stopped_from_its_first_bytes() {
    // 0 is a `Have`'s tag: never over 32 KiB.
    let opening = frame_start(1 << 20, 0, 4096);
    let expect = "frame of 1048576 bytes: oversize message";
    actix::System::new().block_on(hostile_peer(Some(opening), expect));
}

#[test]
fn a_peer_that_stops_inside_a_frame_loses_its_session_at_the_request_timeout_without_a_ban() {
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let timeout = Duration::from_secs(2);
        let mut config = accept_all();
        config.sync.request_timeout = timeout;
        let b = node(2, MemoryStorage::new(), config, Mode::Live, &tx).await;
        // X offers a real feed, then sends half of a `Have` (tag 0) of 20,000 bytes on
        // its stream and nothing more.
        let x = hostile(&b, 1, Some(frame_start(20_000, 0, 10_000)), false).await;
        let x_key = x.key;
        let opened = std::time::Instant::now();

        let (_, reason) = session_end(&mut events, 2, x_key).await;
        // A stall, like an unanswered request: `timeout`, and no ban.
        assert_eq!(reason.code, CloseCode::TIMEOUT, "{reason:?}");
        assert!(!reason.peer_at_fault, "{reason:?}");
        assert!(
            reason
                .reason
                .contains("sent 10004 bytes of a frame and not the rest for 2s"),
            "{reason:?}"
        );
        assert!(opened.elapsed() >= timeout, "ended before the timeout");
        // What the stream held went back to the store.
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!(stats.receive_bytes_held, 0);
        assert!(stats.receive_bytes_peak >= 10_004, "{stats:?}");
    });
}

/// The first `sent` payload bytes of a frame announcing `len`, which begin with `tag`.
fn frame_start(len: usize, tag: u8, sent: usize) -> Vec<u8> {
    let mut out = u32::try_from(len).unwrap().to_be_bytes().to_vec();
    out.push(tag);
    out.extend(std::iter::repeat_n(7u8, sent - 1));
    out
}

async fn hostile_peer(opening: Option<Vec<u8>>, expect: &str) {
    {
        let (tx, mut events) = mpsc::unbounded_channel();
        let b = node(2, MemoryStorage::new(), accept_all(), Mode::Live, &tx).await;
        // An honest writer A shares with B too; its session must carry on.
        let a = node(
            1,
            MemoryStorage::new(),
            FeedStoreConfig::default(),
            Mode::Live,
            &tx,
        )
        .await;
        let honest = writer_feed(&a, 1, 100, "photos").await;

        // The hostile node X: a real feed of 100 blocks, a store that corrupts them.
        let x = hostile(&b, 100, opening, false).await;
        let (x_key, bad_feed) = (x.key, x.feed);
        link(&a, &b).await;

        // A fault in one feed stops that feed on X's session, not the session (an
        // honest relay can pass a writer's fault on), and is no grounds for a ban.
        let seen = wait_for(&mut events, "B to stop the bad feed on X's session", |e| {
            matches!(e, Ev::Session(2, PeerEvent { peer, event: SessionEvent::FeedStopped { feed, .. } }) if *peer == x_key && *feed == bad_feed)
        })
        .await;
        let Some(Ev::Session(
            _,
            PeerEvent {
                event: SessionEvent::FeedStopped { reason, .. },
                ..
            },
        )) = seen.last()
        else {
            unreachable!()
        };
        assert!(reason.contains("fault"), "{reason}");
        assert!(reason.contains(expect), "{reason}");
        assert!(
            !seen.iter().any(|e| matches!(e, Ev::Session(2, PeerEvent { peer, event: SessionEvent::SessionEnded { .. } }) if *peer == x_key)),
            "{seen:#?}"
        );
        assert!(
            seen.iter().any(|e| matches!(e, Ev::Store(2, FeedStoreEvent::SyncFailed { feed, .. }) if *feed == bad_feed)),
            "{seen:#?}"
        );
        let info = b
            .store
            .send(OpenFeed { feed: bad_feed })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.stored, 0, "a block from the hostile peer was kept");
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!(stats.streams_failed, 1);

        // The honest session carries on (it may have synced already).
        if !seen.iter().any(|e| is_synced(e, 2, honest, 100)) {
            wait_for(&mut events, "B synced A's feed", |e| {
                is_synced(e, 2, honest, 100)
            })
            .await;
        }
        assert_same(&a, &b, honest, 100).await;
    }
}

#[test]
fn a_chain_forwards_a_feed_through_the_middle_node() {
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let cfg = accept_all;
        let a = node(1, MemoryStorage::new(), cfg(), Mode::Live, &tx).await;
        let b = node(2, MemoryStorage::new(), cfg(), Mode::Live, &tx).await;
        let c = node(3, MemoryStorage::new(), cfg(), Mode::Live, &tx).await;
        // C is linked to B first, so B forwards the feed to C while it is still
        // downloading it: B's stream to C must stay open until B has every block.
        link(&b, &c).await;
        let feed = writer_feed(&a, 5, 400, "photos").await;
        link(&a, &b).await;
        wait_for(&mut events, "C synced via B", |e| {
            is_synced(e, 3, feed, 400)
        })
        .await;
        assert_same(&a, &c, feed, 400).await;
        assert_same(&a, &b, feed, 400).await;
        // Live through the middle: an append on A reaches C.
        a.store
            .send(Append {
                feed,
                blocks: vec![b"late".to_vec(); 3],
            })
            .await
            .unwrap()
            .unwrap();
        wait_for(&mut events, "C synced the append via B", |e| {
            is_synced(e, 3, feed, 403)
        })
        .await;
        assert_same(&a, &c, feed, 403).await;
    });
}

#[test]
fn the_store_api_reports_what_was_wrong() {
    actix::System::new().block_on(async {
        let (tx, _events) = mpsc::unbounded_channel();
        let a = node(
            1,
            MemoryStorage::new(),
            FeedStoreConfig::default(),
            Mode::Live,
            &tx,
        )
        .await;
        let feed = writer_feed(&a, 1, 5, "photos").await;
        let unknown = FeedKey::from(FeedSecret::generate().key());
        let err = a
            .store
            .send(OpenFeed { feed: unknown })
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, FeedStoreError::NotFound(_)), "{err}");
        let err = a
            .store
            .send(ReadRange {
                feed,
                start: 3,
                end: 9,
            })
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, FeedStoreError::Read(_)), "{err}");
        let err = a
            .store
            .send(ShareFeed {
                namespace: NS.into(),
                feed: unknown,
                headers: Headers::new(),
            })
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, FeedStoreError::NotFound(_)), "{err}");
        let too_big = vec![0u8; replic8_store::MAX_BLOCK_SIZE + 1];
        let err = a
            .store
            .send(Append {
                feed,
                blocks: vec![too_big],
            })
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, FeedStoreError::Append(_)), "{err}");
        // The failed append left the feed as it was.
        let info = a.store.send(OpenFeed { feed }).await.unwrap().unwrap();
        assert_eq!((info.length, info.stored, info.writable), (5, 5, true));
        assert_eq!(
            a.store
                .send(Append {
                    feed,
                    blocks: vec![b"six".to_vec()]
                })
                .await
                .unwrap()
                .unwrap(),
            6
        );
    });
}

#[test]
fn many_feeds_through_few_streams_close_and_reopen_until_all_are_synced() {
    MAX_STREAMS.with(|m| m.set(3));
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let cfg = accept_all;
        let a = node(1, MemoryStorage::new(), cfg(), Mode::OneShot, &tx).await;
        let b = node(2, MemoryStorage::new(), cfg(), Mode::OneShot, &tx).await;
        // Longer than a feed sent whole (decision 210): each needs a stream.
        let first = replic8::message::MAX_WHOLE_BLOCKS as u64 + 1;
        let mut feeds = Vec::new();
        for i in 0..30u8 {
            feeds.push(writer_feed(&a, i, first + u64::from(i), "photos").await);
        }
        // B dials: the dialer opens at most 3 feed streams at once.
        link(&b, &a).await;
        wait_both_done(&mut events).await;
        for (i, feed) in feeds.iter().enumerate() {
            assert_same(&a, &b, *feed, first + i as u64).await;
        }
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!(stats.streams, 30, "one stream per feed: {stats:?}");
        assert!(stats.open_streams <= 3, "{stats:?}");
    });
}

#[test]
fn a_reader_restarted_from_disk_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let a_storage = MemoryStorage::new();
    // Run 1: B replicates 100 blocks to disk, then both nodes go away.
    let feed = actix::System::new().block_on({
        let (a_storage, path) = (a_storage.clone(), dir.path().to_path_buf());
        async move {
            let (tx, mut events) = mpsc::unbounded_channel();
            let a = node(1, a_storage, FeedStoreConfig::default(), Mode::Live, &tx).await;
            let b = node(
                2,
                DiskStorage::open(&path).unwrap(),
                photos_only(),
                Mode::Live,
                &tx,
            )
            .await;
            let feed = writer_feed(&a, 4, 100, "photos").await;
            link(&a, &b).await;
            wait_for(&mut events, "B synced run 1", |e| {
                is_synced(e, 2, feed, 100)
            })
            .await;
            assert_same(&a, &b, feed, 100).await;
            feed
        }
    });
    // Run 2: A appended while B was away; B's store reopens its disk storage, finds the
    // feed it holds, and takes only the new blocks.
    actix::System::new().block_on(async move {
        let (tx, mut events) = mpsc::unbounded_channel();
        let a = node(1, a_storage, FeedStoreConfig::default(), Mode::Live, &tx).await;
        // B now accepts nothing new: the feed is accepted because B holds it.
        let held_only = FeedStoreConfig {
            accept: AcceptPolicy::HeldOnly,
            ..FeedStoreConfig::default()
        };
        let b = node(
            2,
            DiskStorage::open(dir.path()).unwrap(),
            held_only,
            Mode::Live,
            &tx,
        )
        .await;
        let info = b.store.send(OpenFeed { feed }).await.unwrap().unwrap();
        assert_eq!((info.length, info.stored), (100, 100));
        let more: Vec<Vec<u8>> = (100..150).map(|i| block(4, i)).collect();
        a.store
            .send(Append { feed, blocks: more })
            .await
            .unwrap()
            .unwrap();
        share(&a, feed, "photos").await;
        link(&a, &b).await;
        wait_for(&mut events, "B synced run 2", |e| {
            is_synced(e, 2, feed, 150)
        })
        .await;
        assert_same(&a, &b, feed, 150).await;
        let stats = b.store.send(GetStats).await.unwrap();
        assert_eq!(
            stats.blocks_in, 50,
            "only the new blocks crossed: {stats:?}"
        );
    });
}

#[test]
fn only_the_feeds_in_use_stay_open() {
    MAX_STREAMS.with(|m| m.set(3));
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        // Nothing is kept open past its use.
        let cfg = || {
            let mut c = accept_all();
            c.limits.open_feeds = 0;
            c
        };
        // Both on disk: a feed closed and opened again reads its files back.
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = node(
            1,
            DiskStorage::open(dir_a.path()).unwrap(),
            cfg(),
            Mode::OneShot,
            &tx,
        )
        .await;
        let b = node(
            2,
            DiskStorage::open(dir_b.path()).unwrap(),
            cfg(),
            Mode::OneShot,
            &tx,
        )
        .await;
        let mut feeds = Vec::new();
        for i in 0..40u8 {
            feeds.push(writer_feed(&a, i, 3, "photos").await);
        }
        let stats = a.store.send(GetStats).await.unwrap();
        assert_eq!(stats.feeds_held, 40, "{stats:?}");
        assert!(stats.feeds_open <= 1, "only the last feed used: {stats:?}");
        // A subscriber keeps its feed open while others open and close.
        let watched = a
            .store
            .send(Subscribe { feed: feeds[7] })
            .await
            .unwrap()
            .unwrap();
        link(&b, &a).await;
        wait_both_done(&mut events).await;
        // A's feeds were each opened for their appends and closed; B's replicas came
        // whole, made without being opened, and nothing of B was closed but what the
        // streams opened.
        for (store, closed) in [(&a.store, 38), (&b.store, 0)] {
            let open_guard = Instant::now() + GUARD;
            // Stream tasks drop their feeds as they end, just after the session's end.
            loop {
                let stats = store.send(GetStats).await.unwrap();
                assert!(stats.feeds_opened >= 40, "{stats:?}");
                if stats.stream_tasks == 0 {
                    // Nothing uses a feed but the subscriber: at most it and the last
                    // feed looked up are open.
                    store
                        .send(OpenFeed { feed: feeds[0] })
                        .await
                        .unwrap()
                        .unwrap();
                    let stats = store.send(GetStats).await.unwrap();
                    assert!(stats.feeds_open <= 2, "{stats:?}");
                    assert!(stats.feeds_closed >= closed, "{stats:?}");
                    break;
                }
                assert!(
                    Instant::now() < open_guard,
                    "streams still running: {stats:?}"
                );
                tokio::task::yield_now().await;
            }
        }
        // Listing reads the index, with every feed's length, and the lengths hold.
        let list = b.store.send(ListFeeds::all()).await.unwrap().unwrap();
        assert_eq!((list.feeds.len(), list.next), (40, None));
        assert!(list
            .feeds
            .iter()
            .all(|f| f.info.length == 3 && f.info.stored == 3));
        // In pages of 7: the same feeds in the same order, each page at most 7, the
        // last one (5 feeds) without a next.
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = b
                .store
                .send(ListFeeds { after, limit: 7 })
                .await
                .unwrap()
                .unwrap();
            assert!(page.feeds.len() <= 7, "{}", page.feeds.len());
            paged.extend(page.feeds);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(paged, list.feeds);
        assert!(watched.borrow().length == 3);
        let before = b.store.send(GetStats).await.unwrap().feeds_opened;
        b.store.send(ListFeeds::all()).await.unwrap().unwrap();
        let after = b.store.send(GetStats).await.unwrap().feeds_opened;
        assert_eq!(before, after, "a listing of known feeds opens none");
        for feed in feeds.iter().take(3) {
            assert_same(&a, &b, *feed, 3).await;
        }
    });
}

#[test]
fn a_burst_of_shares_costs_a_few_membership_writes_not_one_each() {
    actix::System::new().block_on(async {
        let (tx, _events) = mpsc::unbounded_channel();
        let dir = tempfile::tempdir().unwrap();
        let storage = DiskStorage::open(dir.path()).unwrap();
        // Feeds the store finds on disk, in no namespace yet (as after a bulk import).
        let keys: Vec<FeedKey> = (0..300)
            .map(|_| {
                let feed = Feed::create(&storage, FeedSecret::generate()).unwrap();
                FeedKey(*feed.key().as_bytes())
            })
            .collect();
        let a = node(1, storage, accept_all(), Mode::OneShot, &tx).await;
        // Every share is queued before the first is handled (`do_send` queues past the
        // mailbox's capacity; the mailbox is FIFO): each changes the membership, and the
        // last answer waits until its change is durable.
        let (last, rest) = keys.split_last().unwrap();
        for feed in rest {
            a.store.do_send(ShareFeed {
                namespace: NS.into(),
                feed: *feed,
                headers: Headers::new(),
            });
        }
        a.store
            .send(ShareFeed {
                namespace: NS.into(),
                feed: *last,
                headers: Headers::new(),
            })
            .await
            .unwrap()
            .unwrap();
        let stats = a.store.send(GetStats).await.unwrap();
        assert!(
            // The first share's write, then one for the 299 made while it ran.
            (1..=2).contains(&stats.membership_writes),
            "300 shares took {} membership writes",
            stats.membership_writes
        );
        let known = a
            .store
            .send(KnownFeeds {
                peer: PeerKey([9; 32]),
                namespace: NS.into(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(known.len(), 300);
        assert!(dir.path().join(MEMBERSHIP_FILE).exists());
    });
}

#[test]
/// Over QUIC with real signed heads: the first one-shot session sends 100 feeds of one
/// block whole (decision 210), a second one between the two stores that now hold them
/// complete opens no feed stream and sends nothing whole; after one feed grows on the
/// writer, the next opens exactly one stream (the reader holds part of it), which
/// syncs it.
fn feeds_in_sync_open_no_stream_and_one_ahead_opens_one() {
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let a = node(
            1,
            MemoryStorage::new(),
            FeedStoreConfig::default(),
            Mode::OneShot,
            &tx,
        )
        .await;
        let b = node(2, MemoryStorage::new(), accept_all(), Mode::OneShot, &tx).await;
        let mut feeds = Vec::new();
        for tag in 0..100 {
            feeds.push(writer_feed(&a, tag, 1, "photos").await);
        }
        let streams = || async { b.store.send(GetStats).await.unwrap().streams };
        link(&a, &b).await;
        wait_both_done(&mut events).await;
        let first = streams().await;
        assert_eq!(first, 0, "the first session sends every feed whole");
        let received = b.store.send(GetStats).await.unwrap().blocks_in;
        assert_eq!(received, 100, "every feed arrived whole");

        link(&a, &b).await;
        wait_both_done(&mut events).await;
        assert_eq!(streams().await, first, "feeds in sync got a stream");
        let again = b.store.send(GetStats).await.unwrap().blocks_in;
        assert_eq!(again, received, "feeds in sync were sent again");

        let grown = feeds[42];
        a.store
            .send(Append {
                feed: grown,
                blocks: vec![block(42, 1)],
            })
            .await
            .unwrap()
            .unwrap();
        link(&a, &b).await;
        wait_both_done(&mut events).await;
        assert_eq!(streams().await, first + 1, "only the grown feed streams");
        assert_same(&a, &b, grown, 2).await;
    });
}

#[test]
/// A first word whose signed head does not verify ends that session with `bad head`
/// (the peer's violation, naming the feed); the honest store keeps no block of the
/// feed, and its session with an honest writer carries on.
fn a_forged_head_ends_the_session_with_bad_head_and_stores_nothing() {
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let b = node(2, MemoryStorage::new(), accept_all(), Mode::Live, &tx).await;
        let a = node(
            1,
            MemoryStorage::new(),
            FeedStoreConfig::default(),
            Mode::Live,
            &tx,
        )
        .await;
        let honest = writer_feed(&a, 1, 20, "photos").await;

        // X holds a real feed, sends its head with one signature bit flipped, and
        // would send flipped blocks on a stream.
        let x = hostile(&b, 10, None, true).await;
        let (x_key, forged_feed) = (x.key, x.feed);
        link(&a, &b).await;

        let (seen, reason) = session_end(&mut events, 2, x_key).await;
        assert_eq!(reason.code, CloseCode::BAD_HEAD, "{reason}");
        assert!(reason.is_misbehaviour(), "{reason}");
        assert!(reason.reason.contains(&forged_feed.fmt_short()), "{reason}");
        let stored = match b.store.send(OpenFeed { feed: forged_feed }).await.unwrap() {
            Ok(info) => info.stored,
            Err(FeedStoreError::NotFound(_)) => 0,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(stored, 0, "a block of the forged feed was kept");

        if !seen.iter().any(|e| is_synced(e, 2, honest, 20)) {
            wait_for(&mut events, "B synced A's feed", |e| {
                is_synced(e, 2, honest, 20)
            })
            .await;
        }
        assert_same(&a, &b, honest, 20).await;
    });
}

/// After a restart, the totals and a listing read the small feeds from one scan of the
/// storage and open only the feed in a directory of its own; both are those of the
/// feeds. First words take a scanned feed's head from the scan, without opening it
/// (an open trusts the stored head just as the scan does).
#[test]
fn a_listing_after_a_restart_opens_only_the_feeds_the_scan_cannot_read() {
    actix::System::new().block_on(async {
        let (tx, _events) = mpsc::unbounded_channel();
        let dir = tempfile::tempdir().unwrap();
        // Feeds written before the store starts, as a previous run left them.
        let mut expected: HashMap<FeedKey, (u64, u64, u64)> = HashMap::new();
        {
            let storage = DiskStorage::open(dir.path()).unwrap();
            for n in 0..30u64 {
                let mut feed = Feed::create(&storage, FeedSecret::generate()).unwrap();
                let blocks: Vec<Vec<u8>> = (0..n % 5).map(|i| block(n as u8, i)).collect();
                feed.append_batch(&blocks).unwrap();
                let bytes = blocks.iter().map(|b| b.len() as u64).sum();
                expected.insert(
                    FeedKey(*feed.key().as_bytes()),
                    (feed.length(), feed.length(), bytes),
                );
            }
            // A sparse replica: blocks 1..3 of 4.
            let mut writer = Feed::create(&MemoryStorage::new(), FeedSecret::generate()).unwrap();
            let blocks: Vec<Vec<u8>> = (0..4).map(|i| block(99, i)).collect();
            writer.append_batch(&blocks).unwrap();
            let mut replica = Feed::create_replica(&storage, *writer.key()).unwrap();
            let proof = writer.proof(0, 4, 1, 3).unwrap();
            replica
                .ingest(&proof, writer.get_range(1, 3).unwrap())
                .unwrap();
            replica.flush().unwrap();
            let bytes = (blocks[1].len() + blocks[2].len()) as u64;
            expected.insert(FeedKey(*writer.key().as_bytes()), (4, 2, bytes));
            // A feed past the small-feed size: a directory of its own.
            let mut large = Feed::create(&storage, FeedSecret::generate()).unwrap();
            large.append_batch(&vec![vec![7u8; 4096]; 20]).unwrap();
            expected.insert(FeedKey(*large.key().as_bytes()), (20, 20, 20 * 4096));
        }
        let a = node(
            1,
            DiskStorage::open(dir.path()).unwrap(),
            FeedStoreConfig::default(),
            Mode::OneShot,
            &tx,
        )
        .await;
        // The totals of `status`, first thing after the start.
        let totals = a.store.send(GetFeedTotals).await.unwrap().unwrap();
        let sums = expected
            .values()
            .fold((0, 0), |(b, n), (_, stored, bytes)| (b + stored, n + bytes));
        assert_eq!(
            (totals.feeds, totals.blocks_stored, totals.bytes_stored),
            (32, sums.0, sums.1)
        );
        let list = a.store.send(ListFeeds::all()).await.unwrap().unwrap().feeds;
        let listed: HashMap<FeedKey, (u64, u64, u64)> = list
            .iter()
            .map(|f| (f.info.key, (f.info.length, f.info.stored, f.stored_bytes)))
            .collect();
        assert_eq!(listed, expected);
        let stats = a.store.send(GetStats).await.unwrap();
        assert_eq!(
            stats.feeds_opened, 1,
            "only the large feed opened: {stats:?}"
        );
        // First words: the head of a feed known only from the scan comes from the scan.
        let (key, summary) = list
            .iter()
            .find(|f| f.info.length == 4 && f.info.stored == 4)
            .map(|f| (f.info.key, f.info.clone()))
            .unwrap();
        a.store
            .send(ShareFeed {
                namespace: NS.into(),
                feed: key,
                headers: headers("photos"),
            })
            .await
            .unwrap()
            .unwrap();
        let heads = a
            .store
            .send(FeedHeads {
                peer: PeerKey([2; 32]),
                namespace: NS.into(),
                feeds: vec![key],
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(heads, vec![summary.head]);
        let stats = a.store.send(GetStats).await.unwrap();
        assert_eq!(
            stats.feeds_opened, 1,
            "the head came from the scan: {stats:?}"
        );
    });
}

#[test]
/// Measured: a one-shot session between two stores holding the same 1,000 feeds
/// complete (`REPLIC8_MEASURE_FEEDS` for another count) opens no feed stream; prints the
/// time of the first session (every feed of one block goes whole, decision 210, and
/// none streams) and of the one in sync
/// (`cargo test -p replic8 --test feed_store measured -- --nocapture`).
fn measured_a_session_between_stores_in_sync_opens_no_stream() {
    let feeds: usize = std::env::var("REPLIC8_MEASURE_FEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let a = node(
            1,
            MemoryStorage::new(),
            FeedStoreConfig::default(),
            Mode::OneShot,
            &tx,
        )
        .await;
        let b = node(2, MemoryStorage::new(), accept_all(), Mode::OneShot, &tx).await;
        for i in 0..feeds {
            writer_feed(&a, i as u8, 1, "photos").await;
        }
        let streams = || async { b.store.send(GetStats).await.unwrap().streams };
        let start = Instant::now();
        link(&a, &b).await;
        wait_both_done(&mut events).await;
        let first = start.elapsed();
        let streamed = streams().await;
        let start = Instant::now();
        link(&a, &b).await;
        wait_both_done(&mut events).await;
        let again = start.elapsed();
        let in_sync = streams().await - streamed;
        println!(
            "{feeds} feeds: first session {} ms, {streamed} streams (the rest whole); \
             session in sync {} ms, {in_sync} streams",
            first.as_millis(),
            again.as_millis()
        );
        assert_eq!(streamed, 0, "a feed of one block got a stream");
        assert_eq!(in_sync, 0, "a feed in sync got a stream");
    });
}

#[test]
fn many_readers_of_small_feeds_sent_whole_never_hold_more_than_the_serve_budget() {
    // Six one-shot readers of 100 feeds of 48 KiB each (three 16 KiB blocks: small
    // enough to go whole), all at once from one writer whose budget is the least there
    // is (one answer): each session's whole reads could hold 6 MiB, and a read of all
    // the feeds it asks for would not fit in the budget at all (decision 245).
    const READERS: u8 = 6;
    const FEEDS: usize = 100;
    const BLOCK: usize = 16 << 10;
    let budget = MIN_SERVE_BYTES_IN_FLIGHT;
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let a = node(
            1,
            MemoryStorage::new(),
            with_serve_budget(budget),
            Mode::OneShot,
            &tx,
        )
        .await;
        let mut feeds = Vec::new();
        for f in 0..FEEDS {
            let blocks = (0..3).map(|i| vec![(f * 3 + i) as u8; BLOCK]).collect();
            feeds.push(shared_feed(&a, blocks, "notes").await);
        }
        let mut readers = Vec::new();
        for n in 2..2 + READERS {
            let r = node(n, MemoryStorage::new(), accept_all(), Mode::OneShot, &tx).await;
            readers.push(r);
        }
        for r in &readers {
            link(r, &a).await;
        }
        let mut done = std::collections::HashSet::new();
        wait_for(&mut events, "every reader's one-shot session done", |e| {
            if let Ev::Session(n, p) = e {
                if let SessionEvent::SessionEnded { reason } = &p.event {
                    assert_eq!(reason.code, CloseCode::DONE, "node {n}: {reason}");
                    if *n != 1 {
                        done.insert(*n);
                    }
                }
            }
            done.len() == usize::from(READERS)
        })
        .await;
        // Every feed arrived, whole: no stream, and each reader stored all of them.
        let sent = a.sessions.send(GetSessionTotals).await.unwrap();
        assert_eq!(sent.feeds_sent_whole, FEEDS as u64 * u64::from(READERS));
        for r in &readers {
            let got = r.sessions.send(GetSessionTotals).await.unwrap();
            assert_eq!(got.feeds_received_whole, FEEDS as u64, "node {}", r.n);
            for &feed in feeds.iter().step_by(17) {
                assert_same(&a, r, feed, 3).await;
            }
        }
        let stats = a.store.send(GetStats).await.unwrap();
        assert_eq!(stats.streams, 0, "{stats:?}");
        // The reads were counted (one holds at least a feed), within the budget; the
        // sessions ended, so everything they held is given back.
        assert_served_within(&a, budget, 3 * BLOCK as u64).await;
    });
}

#[test]
fn many_readers_of_one_feed_never_hold_more_than_the_serve_budget() {
    // Six readers of a 6 MiB feed of 64 KiB blocks, all from one writer whose budget is
    // under three data answers: unbounded, each serving stream would hold its 2 MiB
    // queue plus QUIC's send buffer (about 19 MiB in all).
    const READERS: u8 = 6;
    const BLOCKS: u64 = 96;
    let budget = 3 << 20;
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let a = node(
            1,
            MemoryStorage::new(),
            with_serve_budget(budget),
            Mode::Live,
            &tx,
        )
        .await;
        let blocks = (0..BLOCKS).map(|i| vec![i as u8; 64 << 10]).collect();
        let feed = shared_feed(&a, blocks, "photos").await;
        let mut readers = Vec::new();
        for n in 2..2 + READERS {
            let r = node(n, MemoryStorage::new(), accept_all(), Mode::Live, &tx).await;
            link(&r, &a).await;
            readers.push(r);
        }
        let mut synced = std::collections::HashSet::new();
        wait_for(&mut events, "every reader synced", |e| {
            if let Some(n) = (2..2 + READERS).find(|&n| is_synced(e, n, feed, BLOCKS)) {
                synced.insert(n);
            }
            synced.len() == usize::from(READERS)
        })
        .await;
        for r in &readers {
            assert_same(&a, r, feed, BLOCKS).await;
        }
        let stats = a.store.send(GetStats).await.unwrap();
        let feed_bytes = BLOCKS * (64 << 10);
        assert_eq!(stats.bytes_out, u64::from(READERS) * feed_bytes);
        // Every answer was counted while it was in flight (one is 16 blocks, 1 MiB), and
        // acknowledged answers give their bytes back.
        assert_served_within(&a, budget, 1 << 20).await;
    });
}

#[test]
fn a_reader_of_many_writers_holds_unverified_bytes_within_its_receive_budget() {
    // Four writers of a 6 MiB feed each, all downloaded at once by one reader whose
    // storage stalls and whose receive budget is zero: every stream holds one frame
    // until storage moves again, then reads a frame at a time, and none waits
    // forever. Without the store's budget, each stream would hold everything its 16
    // outstanding requests bring (its whole 6 MiB here) before any check.
    stalled_reader_holds_a_frame_per_stream(4, 1, |limits| limits.receive_bytes_held = 0);
}

#[test]
fn one_peer_holds_unverified_bytes_within_its_share_while_the_store_has_room() {
    // One writer of four 6 MiB feeds, downloaded at once by a reader whose storage
    // stalls: its store's budget has room for them all, but a peer's share is zero,
    // so each of the peer's streams holds one frame. Without the share, the peer would
    // fill the store's 34 MiB alone.
    stalled_reader_holds_a_frame_per_stream(1, 4, |limits| {
        limits.receive_bytes_held_per_peer = 0;
    });
}

/// `writers` nodes, each sharing `feeds_each` feeds of 6 MiB, all downloaded at once by
/// a reader with `limits` whose storage stalls until every stream has its first answer
/// at storage: the reader holds at most a frame and a read per stream while it does,
/// then syncs every feed and gives back what it held.
fn stalled_reader_holds_a_frame_per_stream(
    writers: u8,
    feeds_each: u8,
    limits: impl FnOnce(&mut FeedStoreLimits),
) {
    const BLOCKS: u64 = 96;
    let streams = usize::from(writers * feeds_each);
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let mut config = accept_all();
        limits(&mut config.limits);
        let storage = GatedStorage::default();
        // Opened when the test ends, whatever its end: a stalled write would keep the
        // runtime from shutting down.
        let gate = OpenOnDrop(storage.gate.clone());
        let r = node(1, storage, config, Mode::Live, &tx).await;
        let (mut nodes, mut feeds) = (Vec::new(), Vec::new());
        for n in 2..2 + writers {
            // Room to serve every stream at once: a stalled reader pins about two
            // answers per stream, and no stream may wait on the writer's budget here.
            let mut config = accept_all();
            config.limits.serve_bytes_in_flight = 16 * MIN_SERVE_BYTES_IN_FLIGHT;
            let w = node(n, MemoryStorage::new(), config, Mode::Live, &tx).await;
            for f in 0..feeds_each {
                let blocks = (0..BLOCKS)
                    .map(|i| vec![i as u8 ^ n ^ f; 64 << 10])
                    .collect();
                feeds.push((nodes.len(), shared_feed(&w, blocks, "photos").await));
            }
            link(&r, &w).await;
            nodes.push(w);
        }
        // At most one frame per stream (a 1 MiB data answer) and what the read that
        // completed it brought (32 QUIC chunks, each about a packet; at most the
        // stream's window, quinn's 1.25 MB).
        let per_stream = frame::PREFIX_LEN + MAX_MESSAGE_SIZE + 1_250_000;
        let bound = (streams * per_stream) as u64;
        // Every stream has its first answer at storage, stalled there...
        let deadline = Instant::now() + GUARD;
        while gate.0.stalled() < streams {
            assert!(
                Instant::now() < deadline,
                "{} writes stalled",
                gate.0.stalled()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // ... and the streams read no further while it is (on loopback they would take
        // the rest in milliseconds).
        for _ in 0..25 {
            let held = r.store.send(GetStats).await.unwrap().receive_bytes_held;
            assert!(held <= bound, "held {held} unverified bytes, over {bound}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gate.0.open();
        let mut synced = std::collections::HashSet::new();
        wait_for(&mut events, "the reader synced every feed", |e| {
            if let Some((_, feed)) = feeds.iter().find(|(_, f)| is_synced(e, 1, *f, BLOCKS)) {
                synced.insert(*feed);
            }
            synced.len() == streams
        })
        .await;
        for (w, feed) in &feeds {
            assert_same(&nodes[*w], &r, *feed, BLOCKS).await;
        }
        let stats = r.store.send(GetStats).await.unwrap();
        assert!(
            stats.receive_bytes_peak <= bound && stats.receive_bytes_peer_peak <= bound,
            "held {} unverified bytes at once, one peer {}, over {bound}",
            stats.receive_bytes_peak,
            stats.receive_bytes_peer_peak
        );
        assert!(
            stats.receive_bytes_peak >= (streams as u64) << 20,
            "{stats:?}"
        );
        assert!(stats.receive_bytes_peer_peak > 0, "{stats:?}");
        wait_stats(&r, "the received bytes given back", |s| {
            s.receive_bytes_held == 0
        })
        .await;
    });
}

/// Memory storage whose writes of blocks wait while its gate is closed (it starts
/// closed): a verifier that has fallen behind, on demand.
#[derive(Debug, Default)]
struct GatedStorage {
    inner: MemoryStorage,
    gate: std::sync::Arc<Gate>,
}

/// Closed until [`Gate::open`]; counts the writes waiting at it.
#[derive(Debug, Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    waiting: std::sync::atomic::AtomicUsize,
}

/// Opens its gate when dropped.
struct OpenOnDrop(std::sync::Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn stalled(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn pass(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let mut open = self.open.lock().unwrap();
        if !*open {
            self.waiting.fetch_add(1, SeqCst);
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
            self.waiting.fetch_sub(1, SeqCst);
        }
    }
}

impl MembershipHome for GatedStorage {
    fn membership_path(&self) -> Option<std::path::PathBuf> {
        None
    }
}

impl Storage for GatedStorage {
    type Feed = GatedFeed;

    fn create(&self, key: [u8; 32], secret: Option<[u8; 32]>) -> Result<GatedFeed, StorageError> {
        let inner = self.inner.create(key, secret)?;
        Ok(GatedFeed {
            inner,
            gate: self.gate.clone(),
        })
    }

    fn open(&self, key: &[u8; 32]) -> Result<Option<GatedFeed>, StorageError> {
        Ok(self.inner.open(key)?.map(|inner| GatedFeed {
            inner,
            gate: self.gate.clone(),
        }))
    }

    fn list(&self) -> Result<Vec<[u8; 32]>, StorageError> {
        self.inner.list()
    }
}

#[derive(Debug)]
struct GatedFeed {
    inner: replic8_store::storage::MemoryFeed,
    gate: std::sync::Arc<Gate>,
}

impl FeedStorage for GatedFeed {
    fn write(&mut self, batch: WriteBatch) -> Result<(), StorageError> {
        if !batch.blocks.is_empty() {
            self.gate.pass();
        }
        self.inner.write(batch)
    }

    fn write_borrowed(
        &mut self,
        blocks: &[(u64, &[u8])],
        nodes: Vec<StoredNode>,
        head: Option<StoredHead>,
    ) -> Result<(), StorageError> {
        if !blocks.is_empty() {
            self.gate.pass();
        }
        self.inner.write_borrowed(blocks, nodes, head)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.inner.sync()
    }

    fn block(&mut self, index: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.block(index)
    }

    fn has_block(&self, index: u64) -> bool {
        self.inner.has_block(index)
    }

    fn node(&mut self, index: u64) -> Result<Option<StoredNode>, StorageError> {
        self.inner.node(index)
    }

    fn head(&self) -> Option<StoredHead> {
        self.inner.head()
    }

    fn secret_key(&self) -> Option<[u8; 32]> {
        self.inner.secret_key()
    }
}

/// A store config whose serve budget is `budget` bytes.
fn with_serve_budget(budget: usize) -> FeedStoreConfig {
    FeedStoreConfig {
        limits: FeedStoreLimits {
            serve_bytes_in_flight: budget,
            ..FeedStoreLimits::default()
        },
        ..FeedStoreConfig::default()
    }
}

/// Asserts that `node`'s store never held more than `budget` bytes for peers at once,
/// and at least `least` (what it served was counted); then waits until it holds none.
async fn assert_served_within<St: Storage>(node: &Node<St>, budget: usize, least: u64) {
    let peak = node.store.send(GetStats).await.unwrap().serve_bytes_peak;
    assert!(
        peak <= budget as u64,
        "held {peak} bytes for peers at once, over the budget of {budget}"
    );
    assert!(peak >= least, "peak {peak}, under {least}");
    wait_stats(node, "the served bytes given back", |s| {
        s.serve_bytes_held == 0
    })
    .await;
}

/// Polls `node`'s store stats until `done` holds; panics with the last stats after
/// [`GUARD`].
async fn wait_stats<St: Storage>(
    node: &Node<St>,
    what: &str,
    done: impl Fn(&FeedStoreStats) -> bool,
) {
    let deadline = Instant::now() + GUARD;
    loop {
        let stats = node.store.send(GetStats).await.unwrap();
        if done(&stats) {
            return;
        }
        assert!(Instant::now() < deadline, "waiting for {what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
