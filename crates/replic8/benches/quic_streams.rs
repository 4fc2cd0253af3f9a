//! The session layer over real QUIC on loopback: replicate N feeds × B blocks × 1 KiB
//! from one node to another over one connection, through `driver::run`, with a store
//! that moves opaque blocks (no hashing, no verification, no disk). It measures what the
//! session layer and QUIC cost, the floor under the feed store's benchmark.
//!
//! `cargo bench -p replic8 --bench quic_streams -- [feeds] [blocks] [max_streams]`
//! (defaults 1000 100 128). Both nodes run in this process on a multi-thread runtime.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/tls/mod.rs"]
mod tls;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::{Actor, Context, Handler};
use replic8::driver::{self, NamespaceEntry, SessionCommand, SessionSpec};
use replic8::keys::{FeedKey, PeerKey, Role};
use replic8::message::Headers;
use replic8::session::{Mode, SessionConfig};
use replic8::store::*;
use tokio::sync::mpsc;

const BLOCK: usize = 1024;

/// Writer: shares its feeds and writes `blocks` blocks on each stream. Reader: accepts
/// everything and reads each stream to its end.
struct BlobStore {
    owned: Vec<FeedKey>,
    blocks: u64,
    session: Arc<Mutex<Option<mpsc::UnboundedSender<SessionCommand>>>>,
    received: Arc<AtomicU64>,
    done: Arc<Mutex<HashSet<FeedKey>>>,
}

impl Actor for BlobStore {
    type Context = Context<Self>;
}

impl Handler<Shares> for BlobStore {
    type Result = Result<Vec<SharedFeed>, StoreError>;
    fn handle(&mut self, _: Shares, _: &mut Context<Self>) -> Self::Result {
        Ok(self
            .owned
            .iter()
            .map(|key| SharedFeed {
                key: *key,
                headers: Headers::new(),
            })
            .collect())
    }
}

impl Handler<KnownFeeds> for BlobStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, _: KnownFeeds, _: &mut Context<Self>) -> Self::Result {
        Ok(Vec::new())
    }
}

impl Handler<Offer> for BlobStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, msg: Offer, _: &mut Context<Self>) -> Self::Result {
        Ok(msg.feeds.into_iter().map(|f| f.key).collect())
    }
}

impl Handler<Attach> for BlobStore {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: Attach, _: &mut Context<Self>) -> Self::Result {
        let session = self.session.lock().unwrap().clone().expect("no session");
        let writer = self.owned.contains(&msg.feed);
        let (blocks, received, done) = (self.blocks, self.received.clone(), self.done.clone());
        let FeedStream { mut send, mut recv } = msg.stream;
        tokio::spawn(async move {
            if writer {
                let block = [0x5au8; BLOCK];
                for _ in 0..blocks {
                    if send.write_all(&block).await.is_err() {
                        return;
                    }
                }
                let _ = send.finish();
                let _ = recv.read_to_end(0).await;
            } else {
                let _ = send.finish();
                let mut total = 0u64;
                while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
                    total += chunk.bytes.len() as u64;
                }
                received.fetch_add(total, Ordering::Relaxed);
                assert_eq!(total, blocks * BLOCK as u64, "short feed");
                done.lock().unwrap().insert(msg.feed);
            }
            let _ = session.send(SessionCommand::FeedSynced {
                feed: msg.feed,
                length: blocks,
            });
            let _ = session.send(SessionCommand::StreamEnded {
                feed: msg.feed,
                id: msg.id,
            });
        });
        Ok(())
    }
}

impl Handler<Detach> for BlobStore {
    type Result = ();
    fn handle(&mut self, _: Detach, _: &mut Context<Self>) {}
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let feeds = args.first().copied().unwrap_or(1000) as u32;
    let blocks = args.get(1).copied().unwrap_or(100);
    let max_streams = args.get(2).copied().unwrap_or(128) as u32;
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    });
    system.block_on(async move {
        let config = SessionConfig {
            mode: Mode::OneShot,
            max_streams,
            ..SessionConfig::default()
        };
        let make = |owned: Vec<FeedKey>| {
            let session = Arc::new(Mutex::new(None));
            let received = Arc::new(AtomicU64::new(0));
            let done = Arc::new(Mutex::new(HashSet::new()));
            let store = BlobStore {
                owned,
                blocks,
                session: session.clone(),
                received: received.clone(),
                done: done.clone(),
            }
            .start();
            (StoreRecipients::of(&store), session, received, done)
        };
        let keys: Vec<FeedKey> = (0..feeds)
            .map(|n| {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&n.to_be_bytes());
                FeedKey(k)
            })
            .collect();
        let (writer_store, writer_session, _, _) = make(keys.clone());
        let (reader_store, reader_session, received, done) = make(Vec::new());
        let (server, client) = (tls::server_endpoint(), tls::client_endpoint());
        let rss_before = peak_rss_kib();
        let start = Instant::now();
        let (dialed, accepted) = tls::connect(&client, &server).await;
        let mut ends = Vec::new();
        let mut rxs = HashMap::new();
        for (name, store, slot, connection, role, peer) in [
            ("reader", reader_store, reader_session, dialed, Role::Dialer, PeerKey([2; 32])),
            ("writer", writer_store, writer_session, accepted, Role::Acceptor, PeerKey([1; 32])),
        ] {
            let (tx, rx) = mpsc::unbounded_channel();
            *slot.lock().unwrap() = Some(tx);
            let (events, events_rx) = mpsc::unbounded_channel();
            rxs.insert(name, events_rx);
            let spec = SessionSpec {
                connection,
                role,
                peer,
                config: config.clone(),
                namespaces: vec![NamespaceEntry {
                    name: String::new(),
                    secret: None,
                    store: store.clone(),
                }],
                counters: Default::default(),
            };
            ends.push((name, tokio::spawn(driver::run(spec, rx, events))));
        }
        for (name, end) in ends {
            let reason = end.await.unwrap();
            assert_eq!(reason.code, replic8::message::CloseCode::DONE, "{name}: {reason}");
        }
        let elapsed = start.elapsed();
        let bytes = received.load(Ordering::Relaxed);
        assert_eq!(done.lock().unwrap().len(), feeds as usize);
        println!(
            "quic streams: {feeds} feeds x {blocks} blocks x 1 KiB, max_streams {max_streams}: {:.3} s, {:.1} MiB/s, peak RSS {} MiB (was {} MiB before)",
            elapsed.as_secs_f64(),
            bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64(),
            peak_rss_kib() / 1024,
            rss_before / 1024,
        );
        actix::System::current().stop();
    });
}
