//! Measured first words: how long a one-shot session between two stores holding the same
//! feeds complete takes to start and finish, and how many feed streams it opens; and
//! how fast signed heads verify one by one and in batches. Prints the figures
//! (`cargo test -p replic8 --test first_words_measure -- --nocapture`); the assertions
//! are what must hold on any machine.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use replic8::actor::{PeerEvent, SessionsActor, StartSession};
use replic8::feed_store::*;
use replic8::keys::{PeerKey, Role};
use replic8::message::{CloseCode, Headers};
use replic8::session::{Mode, SessionConfig, SessionEvent};
use replic8_store::storage::MemoryStorage;
use replic8_store::{verify_heads, FeedSecret};
use tokio::sync::mpsc;

mod tls;
use tls::{client_endpoint, connect, server_endpoint};

const NS: &str = "photos";
const GUARD: Duration = Duration::from_secs(300);
/// Feeds in the measured sessions; `REPLIC8_MEASURE_FEEDS` overrides it.
const FEEDS: usize = 1_000;

struct Node {
    key: PeerKey,
    sessions: Addr<SessionsActor>,
    store: Addr<FeedStore<MemoryStorage>>,
    server: quinn::Endpoint,
    client: quinn::Endpoint,
}

async fn node(n: u8, config: FeedStoreConfig, events: &mpsc::UnboundedSender<PeerEvent>) -> Node {
    let session = SessionConfig {
        mode: Mode::OneShot,
        ..SessionConfig::default()
    };
    let sessions = SessionsActor::new(session, Some(events.clone())).start();
    let store = FeedStore::new(MemoryStorage::new(), config, sessions.clone(), None)
        .unwrap()
        .start_registered(vec![(NS.into(), None)])
        .await
        .unwrap();
    Node {
        key: PeerKey([n; 32]),
        sessions,
        store,
        server: server_endpoint(),
        client: client_endpoint(),
    }
}

/// One one-shot session from `a` to `b`: how long until both ended `done`.
async fn session(a: &Node, b: &Node, events: &mut mpsc::UnboundedReceiver<PeerEvent>) -> Duration {
    let start = Instant::now();
    let (dialed, accepted) = connect(&a.client, &b.server).await;
    for (node, peer, connection, role) in [
        (a, b.key, dialed, Role::Dialer),
        (b, a.key, accepted, Role::Acceptor),
    ] {
        node.sessions
            .send(StartSession {
                peer,
                connection,
                role,
            })
            .await
            .unwrap()
            .unwrap();
    }
    let mut ended = 0;
    tokio::time::timeout(GUARD, async {
        while ended < 2 {
            let e = events.recv().await.unwrap();
            if let SessionEvent::SessionEnded { reason } = e.event {
                assert_eq!(reason.code, CloseCode::DONE, "{reason}");
                ended += 1;
            }
        }
    })
    .await
    .expect("both sessions ended");
    start.elapsed()
}

#[test]
fn a_session_between_stores_in_sync_opens_no_stream() {
    let feeds = std::env::var("REPLIC8_MEASURE_FEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FEEDS);
    actix::System::new().block_on(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let a = node(1, FeedStoreConfig::default(), &tx).await;
        let accept_all = FeedStoreConfig {
            accept: AcceptPolicy::All,
            ..FeedStoreConfig::default()
        };
        let b = node(2, accept_all, &tx).await;
        for i in 0..feeds {
            let feed = a.store.send(CreateFeed).await.unwrap().unwrap();
            let block = format!("feed {i}").into_bytes();
            a.store
                .send(Append {
                    feed,
                    blocks: vec![block],
                })
                .await
                .unwrap()
                .unwrap();
            a.store
                .send(ShareFeed {
                    namespace: NS.into(),
                    feed,
                    headers: Headers::new(),
                })
                .await
                .unwrap()
                .unwrap();
        }
        let streams = || async { b.store.send(GetStats).await.unwrap().streams };
        let first = session(&a, &b, &mut events).await;
        let streamed = streams().await;
        let again = session(&a, &b, &mut events).await;
        let in_sync = streams().await - streamed;
        println!(
            "{feeds} feeds: first session {} ms, {streamed} streams; session in sync {} ms, \
             {in_sync} streams",
            first.as_millis(),
            again.as_millis()
        );
        assert_eq!(streamed, feeds as u64);
        assert_eq!(in_sync, 0, "a feed in sync got a stream");
    });
}

#[test]
fn heads_verify_in_batches_and_one_by_one_alike() {
    const HEADS: usize = 4096;
    const BATCH: usize = replic8::message::MAX_HEADS_PER_MESSAGE;
    let heads: Vec<_> = (0..HEADS)
        .map(|i| {
            let secret = FeedSecret::generate();
            let head = secret.sign_head(i as u64 + 1, [i as u8; 32]);
            (secret.key(), head)
        })
        .collect();
    // The best of three rounds: the figure least disturbed by other work.
    let best = |f: &dyn Fn() -> usize| {
        let mut result = 0;
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let start = Instant::now();
            result = f();
            best = best.min(start.elapsed());
        }
        (result, HEADS as f64 / best.as_secs_f64())
    };
    let (single, rate) = best(&|| heads.iter().filter(|(k, h)| k.verify_head(h)).count());
    println!("{HEADS} heads: one by one {rate:.0}/s");
    let mut bad = 0;
    for batch in [16, 64, 256, BATCH] {
        let (found, rate) = best(&|| {
            heads
                .chunks(batch)
                .map(|c| verify_heads(c).len())
                .sum::<usize>()
        });
        bad += found;
        println!("{HEADS} heads: in batches of {batch} {rate:.0}/s");
    }
    assert_eq!((single, bad), (HEADS, 0));
}
