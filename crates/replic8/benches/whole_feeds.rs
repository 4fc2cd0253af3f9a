//! Small feeds sent whole (decision 210), the store's half alone: what [`ReadWhole`] and
//! [`WriteWhole`] cost per feed on real disk feed stores, no session or network in
//! between. Not a criterion benchmark: it prints one line per phase.
//!
//! A writer store makes N feeds of one block each and shares them; [`ReadWhole`] reads
//! them in batches; then, twice (the session verified the heads already, or not), a
//! fresh reader store accepts them (one offer; its replicas are made in the background,
//! waited for, and measured too) and takes them with [`WriteWhole`] in batches. Per
//! phase: wall time and the CPU time of every thread of the process (from
//! `/proc/self/task/*/schedstat`), each per feed.
//!
//! `cargo bench -p replic8 --bench whole_feeds -- [feeds] [batch] [block_bytes]`
//! (defaults 1000 500 1024; the stores are made under `$TMPDIR` and removed).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use replic8::actor::SessionsActor;
use replic8::feed_store::*;
use replic8::keys::{FeedKey, PeerKey};
use replic8::message::Headers;
use replic8::session::SessionConfig;
use replic8::store::*;
use replic8_store::storage::DiskStorage;

const NS: &str = "bench";
const PEER: PeerKey = PeerKey([7; 32]);

/// CPU nanoseconds run so far by the threads of this process alive now (a blocking-pool
/// thread that exited took its share with it; none idles out within a run).
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Wall and CPU time of `f`, printed per feed.
async fn measure<T>(what: &str, feeds: u64, f: impl std::future::Future<Output = T>) -> T {
    let (wall, cpu) = (Instant::now(), cpu_ns());
    let out = f.await;
    let cpu = cpu_ns().saturating_sub(cpu) as f64 / 1e6;
    let wall = wall.elapsed().as_secs_f64() * 1e3;
    println!(
        "{what}: {feeds} feeds, {wall:.1} ms wall ({:.3} ms per feed), {cpu:.1} ms CPU ({:.3} ms per feed)",
        wall / feeds as f64,
        cpu / feeds as f64
    );
    out
}

async fn store(dir: &std::path::Path) -> Addr<FeedStore<DiskStorage>> {
    let sessions = SessionsActor::new(SessionConfig::default(), None).start();
    let config = FeedStoreConfig {
        accept: AcceptPolicy::All,
        limits: FeedStoreLimits {
            new_feeds_per_peer: u32::MAX,
            max_replicas: u64::MAX,
            ..FeedStoreLimits::default()
        },
        ..FeedStoreConfig::default()
    };
    FeedStore::open_disk(dir, config, sessions, None)
        .unwrap()
        .start_registered(vec![(NS.into(), None)])
        .await
        .unwrap()
}

fn main() {
    let words: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let feeds = words.first().copied().unwrap_or(1000);
    let batch = words.get(1).copied().unwrap_or(500).max(1);
    let block_bytes = words.get(2).copied().unwrap_or(1024);
    let n = feeds as u64;
    actix::System::new().block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let writer = store(&dir.path().join("writer")).await;
        let started = Instant::now();
        let mut keys = Vec::with_capacity(feeds);
        for i in 0..feeds {
            let feed = writer.send(CreateFeed).await.unwrap().unwrap();
            let blocks = vec![vec![i as u8; block_bytes]];
            writer.send(Append { feed, blocks }).await.unwrap().unwrap();
            keys.push(feed);
        }
        let shares = ShareFeeds {
            namespace: NS.into(),
            feeds: keys.iter().map(|k| (*k, Headers::default())).collect(),
        };
        assert!(writer.send(shares).await.unwrap().is_empty());
        println!(
            "prepared {feeds} feeds of one {block_bytes} B block in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        let read = measure("ReadWhole", n, async {
            let mut wholes = Vec::with_capacity(feeds);
            for chunk in keys.chunks(batch) {
                let read = ReadWhole {
                    peer: PEER,
                    namespace: NS.into(),
                    feeds: chunk.to_vec(),
                    max_bytes: 64 << 10,
                };
                wholes.extend(writer.send(read).await.unwrap().unwrap());
            }
            wholes
        })
        .await;
        let wholes: Vec<(FeedKey, WholeFeed)> = keys
            .iter()
            .zip(read)
            .map(|(k, w)| (*k, w.expect("every feed read whole")))
            .collect();

        for head_verified in [false, true] {
            let reader = store(&dir.path().join(format!("reader-{head_verified}"))).await;
            let offer = Offer {
                peer: PEER,
                namespace: NS.into(),
                feeds: keys
                    .iter()
                    .map(|&key| SharedFeed {
                        key,
                        headers: Headers::default(),
                    })
                    .collect(),
            };
            // The replicas are made in the background: wait for them, so they do not
            // count below (the wait polls, so its wall time is coarse).
            measure("Offer accepted, replicas made", n, async {
                assert_eq!(reader.send(offer).await.unwrap().unwrap().len(), feeds);
                while reader.send(GetStats).await.unwrap().feeds_opened < n {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            let what = if head_verified {
                "WriteWhole, heads verified by the session"
            } else {
                "WriteWhole, heads verified here"
            };
            measure(what, n, async {
                for chunk in wholes.chunks(batch) {
                    let write = WriteWhole {
                        peer: PEER,
                        namespace: NS.into(),
                        feeds: chunk
                            .iter()
                            .map(|(feed, whole)| ArrivedWhole {
                                feed: *feed,
                                whole: whole.clone(),
                                head_verified,
                            })
                            .collect(),
                    };
                    let done = reader.send(write).await.unwrap().unwrap();
                    assert!(done
                        .iter()
                        .all(|d| matches!(d, WholeOutcome::Stored { .. })));
                }
            })
            .await;
        }
    });
}
