//! Small feeds sent whole (decision 210), the store's half: [`ReadWhole`] and
//! [`WriteWhole`] sent straight to real disk feed stores, no session in between.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use actix::{Actor, Addr};
use replic8::actor::SessionsActor;
use replic8::feed_store::*;
use replic8::keys::{FeedKey, PeerKey};
use replic8::message::Headers;
use replic8::session::SessionConfig;
use replic8::store::*;
use replic8_store::storage::DiskStorage;
use tokio::sync::mpsc;

const GUARD: Duration = Duration::from_secs(30);
const NS: &str = "notes";
const PEER: PeerKey = PeerKey([9; 32]);

struct Store {
    addr: Addr<FeedStore<DiskStorage>>,
    events: mpsc::UnboundedReceiver<FeedStoreEvent>,
    _dir: tempfile::TempDir,
}

/// A disk store serving `NS` that accepts every offered feed.
async fn store() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    let sessions = SessionsActor::new(SessionConfig::default(), None).start();
    let config = FeedStoreConfig {
        accept: AcceptPolicy::All,
        ..FeedStoreConfig::default()
    };
    let addr = FeedStore::open_disk(dir.path(), config, sessions, Some(tx))
        .unwrap()
        .start_registered(vec![(NS.into(), None)])
        .await
        .unwrap();
    Store {
        addr,
        events,
        _dir: dir,
    }
}

fn block(tag: u8, i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (j as u64 * 7 + i + u64::from(tag)) as u8)
        .collect()
}

impl Store {
    /// A new feed of `blocks` blocks of `len` bytes; shared in `NS` if `share`.
    async fn writer_feed(&self, tag: u8, blocks: u64, len: usize, share: bool) -> FeedKey {
        let feed = self.addr.send(CreateFeed).await.unwrap().unwrap();
        let blocks = (0..blocks).map(|i| block(tag, i, len)).collect();
        self.append(feed, blocks).await;
        if share {
            let headers = Headers::default();
            let share = ShareFeed {
                namespace: NS.into(),
                feed,
                headers,
            };
            self.addr.send(share).await.unwrap().unwrap();
        }
        feed
    }

    async fn append(&self, feed: FeedKey, blocks: Vec<Vec<u8>>) {
        self.addr
            .send(Append { feed, blocks })
            .await
            .unwrap()
            .unwrap();
    }

    async fn read_whole(&self, feeds: &[FeedKey], max_bytes: usize) -> Vec<Option<WholeFeed>> {
        let read = ReadWhole {
            peer: PEER,
            namespace: NS.into(),
            feeds: feeds.to_vec(),
            max_bytes,
        };
        self.addr.send(read).await.unwrap().unwrap()
    }

    /// Accepts `feeds` as offered by `PEER` in `NS`.
    async fn accept(&self, feeds: &[FeedKey]) {
        let offer = Offer {
            peer: PEER,
            namespace: NS.into(),
            feeds: feeds
                .iter()
                .map(|&key| SharedFeed {
                    key,
                    headers: Headers::default(),
                })
                .collect(),
        };
        let accepted = self.addr.send(offer).await.unwrap().unwrap();
        assert_eq!(accepted.len(), feeds.len());
    }

    async fn write_whole(&self, feeds: Vec<ArrivedWhole>) -> Vec<WholeOutcome> {
        let write = WriteWhole {
            peer: PEER,
            namespace: NS.into(),
            feeds,
        };
        self.addr.send(write).await.unwrap().unwrap()
    }

    async fn info(&self, feed: FeedKey) -> FeedInfo {
        self.addr.send(OpenFeed { feed }).await.unwrap().unwrap()
    }

    /// Waits for an event that `pred` takes; panics with what came instead.
    async fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&FeedStoreEvent) -> bool) {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(GUARD, async {
            while let Some(e) = self.events.recv().await {
                if pred(&e) {
                    return;
                }
                seen.push(e);
            }
        })
        .await;
        assert!(found.is_ok(), "no event {what}; saw {seen:?}");
    }
}

fn arrived(feed: FeedKey, whole: &WholeFeed, head_verified: bool) -> ArrivedWhole {
    ArrivedWhole {
        feed,
        whole: whole.clone(),
        head_verified,
    }
}

#[test]
fn small_feeds_read_whole_are_written_whole_verified_and_read_back() {
    actix::System::new().block_on(async {
        let writer = store().await;
        let mut reader = store().await;
        let mut feeds = Vec::new();
        for tag in 0..40u8 {
            feeds.push(writer.writer_feed(tag, 1 + u64::from(tag % 3), 1024, true).await);
        }
        let large = writer.writer_feed(100, 5, 1024, true).await;
        let unshared = writer.writer_feed(101, 1, 1024, false).await;
        let mut asked = feeds.clone();
        asked.extend([large, unshared]);
        let read = writer.read_whole(&asked, 4096).await;
        assert!(read[..40].iter().all(Option::is_some));
        assert_eq!(read[40], None, "over max_bytes");
        assert_eq!(read[41], None, "not in the namespace");
        let sent = writer.addr.send(GetStats).await.unwrap();
        let blocks: u64 = (0..40u64).map(|t| 1 + t % 3).sum();
        assert_eq!(sent.blocks_out, blocks);

        reader.accept(&feeds).await;
        let wholes: Vec<WholeFeed> = read.into_iter().flatten().collect();
        let arrivals = feeds
            .iter()
            .zip(&wholes)
            .map(|(f, w)| arrived(*f, w, false))
            .collect();
        let outcomes = reader.write_whole(arrivals).await;
        for (whole, outcome) in wholes.iter().zip(&outcomes) {
            let length = whole.head.length;
            assert_eq!(*outcome, WholeOutcome::Stored { length });
        }
        // Stored as a verified replica: open, read, and read whole again.
        for (tag, (feed, whole)) in feeds.iter().zip(&wholes).enumerate() {
            let info = reader.info(*feed).await;
            assert!(!info.writable);
            assert_eq!(info.head, Some(whole.head));
            assert_eq!(info.stored, whole.head.length);
            let range = ReadRange {
                feed: *feed,
                start: 0,
                end: whole.head.length,
            };
            let got = reader.addr.send(range).await.unwrap().unwrap();
            let want: Vec<Vec<u8>> = (0..whole.head.length)
                .map(|i| block(tag as u8, i, 1024))
                .collect();
            assert_eq!(got, want);
        }
        assert_eq!(reader.read_whole(&feeds, 4096).await, read_again(&wholes));
        let stats = reader.addr.send(GetStats).await.unwrap();
        assert_eq!(stats.blocks_in, blocks);
        assert_eq!(stats.bytes_in, blocks * 1024);
        let last = *feeds.last().unwrap();
        reader
            .wait_for("downloaded", |e| {
                matches!(e, FeedStoreEvent::Downloaded { feed, peer, .. } if *feed == last && *peer == PEER)
            })
            .await;
        reader
            .wait_for("synced", |e| {
                matches!(e, FeedStoreEvent::FeedSynced { feed, .. } if *feed == last)
            })
            .await;
        // Sent again: held already, stored at that length, nothing counted twice.
        let again = vec![arrived(feeds[0], &wholes[0], true)];
        let length = wholes[0].head.length;
        assert_eq!(
            reader.write_whole(again).await,
            vec![WholeOutcome::Stored { length }]
        );
        let stats = reader.addr.send(GetStats).await.unwrap();
        assert_eq!(stats.blocks_in, blocks);
    });
}

fn read_again(wholes: &[WholeFeed]) -> Vec<Option<WholeFeed>> {
    wholes.iter().cloned().map(Some).collect()
}

#[test]
fn a_bad_block_signature_or_length_fails_that_feed_and_stores_nothing_of_it() {
    actix::System::new().block_on(async {
        let writer = store().await;
        let reader = store().await;
        let mut feeds = Vec::new();
        for tag in 0..5u8 {
            feeds.push(writer.writer_feed(tag, 3, 1000, true).await);
        }
        let wholes: Vec<WholeFeed> = writer
            .read_whole(&feeds, 1 << 20)
            .await
            .into_iter()
            .flatten()
            .collect();
        reader.accept(&feeds).await;
        let mut bad_block = wholes[1].clone();
        bad_block.blocks[2][10] ^= 1;
        let mut bad_signature = wholes[2].clone();
        bad_signature.head.signature[5] ^= 1;
        let mut short = wholes[3].clone();
        short.blocks.pop();
        // Another feed's head and blocks: they do not verify under this key.
        let other = wholes[0].clone();
        let arrivals = vec![
            arrived(feeds[0], &wholes[0], false),
            arrived(feeds[1], &bad_block, true),
            arrived(feeds[2], &bad_signature, false),
            arrived(feeds[3], &short, true),
            arrived(feeds[4], &other, false),
        ];
        let outcomes = reader.write_whole(arrivals).await;
        assert_eq!(outcomes[0], WholeOutcome::Stored { length: 3 });
        for (i, outcome) in outcomes.iter().enumerate().skip(1) {
            assert!(
                matches!(outcome, WholeOutcome::Failed(_)),
                "feed {i}: {outcome:?}"
            );
        }
        let read = reader.read_whole(&feeds, 1 << 20).await;
        assert_eq!(read[0].as_ref(), Some(&wholes[0]));
        for feed in &feeds[1..] {
            let info = reader.info(*feed).await;
            assert_eq!((info.length, info.stored, info.head), (0, 0, None));
        }
        assert!(read[1..].iter().all(Option::is_none));
    });
}

/// A feed held in part, or outside the namespace, is declined; one that a subscriber
/// follows (as `feed get` does) is taken, and the subscriber sees it stored (decision
/// 260). A feed that a stream or API call holds is declined: the registry's tests show
/// it, since nothing outside the actor holds an entry for longer than a call.
#[test]
fn a_feed_held_in_part_or_outside_the_namespace_is_declined_and_a_watched_one_taken() {
    actix::System::new().block_on(async {
        let writer = store().await;
        let reader = store().await;
        let part = writer.writer_feed(1, 2, 100, true).await;
        let watched = writer.writer_feed(2, 2, 100, true).await;
        let outside = writer.writer_feed(3, 2, 100, true).await;
        reader.accept(&[part, watched]).await;
        let first = writer.read_whole(&[part], 4096).await.remove(0).unwrap();
        let stored = reader.write_whole(vec![arrived(part, &first, false)]).await;
        assert_eq!(stored, vec![WholeOutcome::Stored { length: 2 }]);
        writer.append(part, vec![block(1, 2, 100)]).await;
        let wholes: Vec<WholeFeed> = writer
            .read_whole(&[part, watched, outside], 4096)
            .await
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(wholes[0].head.length, 3);
        let mut watching = reader
            .addr
            .send(Subscribe { feed: watched })
            .await
            .unwrap()
            .unwrap();
        let arrivals = vec![
            arrived(part, &wholes[0], false),
            arrived(watched, &wholes[1], false),
            arrived(outside, &wholes[2], false),
        ];
        let outcomes = reader.write_whole(arrivals).await;
        assert_eq!(
            outcomes,
            vec![
                WholeOutcome::Declined,
                WholeOutcome::Stored { length: 2 },
                WholeOutcome::Declined
            ]
        );
        assert_eq!(reader.info(part).await.length, 2);
        let seen = *watching.borrow_and_update();
        assert_eq!((seen.length, seen.stored), (2, 2));
        assert_eq!(reader.info(watched).await.stored, 2);
        let blocks = reader
            .addr
            .send(ReadRange {
                feed: watched,
                start: 0,
                end: 2,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(blocks, vec![block(2, 0, 100), block(2, 1, 100)]);
        // The subscriber's state lives on in the reopened feed.
        assert!(watching.has_changed().is_ok());
    });
}
