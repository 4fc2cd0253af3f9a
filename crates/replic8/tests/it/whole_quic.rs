//! Small feeds sent whole (decision 210) through the session driver over real QUIC on
//! loopback, with a toy actix store that reads and writes feeds whole and signs real
//! heads: no stream opens, and a reader whose store holds its writes stops reading the
//! control stream at `MAX_WHOLE_BYTES_AT_STORE` until the store answers.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Context, Handler, ResponseFuture};
use replic8::driver::{
    self, NamespaceEntry, SessionCommand, SessionCounters, SessionSpec, SessionTotals,
};
use replic8::frame::MAX_FRAME_LEN;
use replic8::keys::{FeedKey, PeerKey, Role};
use replic8::message::{CloseCode, Headers};
use replic8::session::{
    EndReason, Mode, SessionConfig, SessionEvent, SessionStats, MAX_WHOLE_BYTES_AT_STORE,
};
use replic8::store::*;
use replic8_store::{FeedSecret, SignedHead};
use tokio::sync::{mpsc, watch};

use crate::tls;
use tls::{client_endpoint, connect, server_endpoint};

/// A guard, never the check: every wait below ends on an event long before this.
const GUARD: Duration = Duration::from_secs(60);

type Held = Arc<Mutex<HashMap<FeedKey, (SignedHead, Vec<Vec<u8>>)>>>;

/// A store that shares all it holds, accepts every offer, says which heads it holds
/// complete, reads feeds whole and writes them whole once `open` is true.
struct WholeStore {
    held: Held,
    open: watch::Receiver<bool>,
    /// Every feed written whole, with whether its head came verified.
    written: Arc<Mutex<Vec<(FeedKey, bool)>>>,
    attached: Arc<Mutex<usize>>,
}

impl Actor for WholeStore {
    type Context = Context<Self>;
}

impl Handler<Shares> for WholeStore {
    type Result = Result<Vec<SharedFeed>, StoreError>;
    fn handle(&mut self, _: Shares, _: &mut Context<Self>) -> Self::Result {
        let held = self.held.lock().unwrap();
        Ok(held
            .keys()
            .map(|key| SharedFeed {
                key: *key,
                headers: Headers::new(),
            })
            .collect())
    }
}

impl Handler<KnownFeeds> for WholeStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, _: KnownFeeds, _: &mut Context<Self>) -> Self::Result {
        Ok(Vec::new())
    }
}

impl Handler<Offer> for WholeStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, msg: Offer, _: &mut Context<Self>) -> Self::Result {
        Ok(msg.feeds.iter().map(|f| f.key).collect())
    }
}

impl Handler<FeedHeads> for WholeStore {
    type Result = Result<Vec<Option<SignedHead>>, StoreError>;
    fn handle(&mut self, msg: FeedHeads, _: &mut Context<Self>) -> Self::Result {
        let held = self.held.lock().unwrap();
        Ok(msg
            .feeds
            .iter()
            .map(|f| held.get(f).map(|(head, _)| *head))
            .collect())
    }
}

impl Handler<ReadWhole> for WholeStore {
    type Result = Result<Vec<Option<WholeFeed>>, StoreError>;
    fn handle(&mut self, msg: ReadWhole, _: &mut Context<Self>) -> Self::Result {
        let held = self.held.lock().unwrap();
        Ok(msg
            .feeds
            .iter()
            .map(|f| {
                held.get(f).map(|(head, blocks)| WholeFeed {
                    head: *head,
                    blocks: blocks.clone(),
                    hold: WholeHold::default(),
                })
            })
            .collect())
    }
}

impl Handler<WriteWhole> for WholeStore {
    type Result = ResponseFuture<Result<Vec<WholeOutcome>, StoreError>>;
    fn handle(&mut self, msg: WriteWhole, _: &mut Context<Self>) -> Self::Result {
        let (held, written, mut open) =
            (self.held.clone(), self.written.clone(), self.open.clone());
        Box::pin(async move {
            let _ = open.wait_for(|open| *open).await;
            let mut outcomes = Vec::new();
            for arrived in msg.feeds {
                written
                    .lock()
                    .unwrap()
                    .push((arrived.feed, arrived.head_verified));
                let length = arrived.whole.head.length;
                held.lock()
                    .unwrap()
                    .insert(arrived.feed, (arrived.whole.head, arrived.whole.blocks));
                outcomes.push(WholeOutcome::Stored { length });
            }
            Ok(outcomes)
        })
    }
}

impl Handler<Attach> for WholeStore {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, _: Attach, _: &mut Context<Self>) -> Self::Result {
        *self.attached.lock().unwrap() += 1;
        Ok(())
    }
}

impl Handler<Detach> for WholeStore {
    type Result = ();
    fn handle(&mut self, _: Detach, _: &mut Context<Self>) {}
}

struct Node {
    store: StoreRecipients,
    held: Held,
    written: Arc<Mutex<Vec<(FeedKey, bool)>>>,
    attached: Arc<Mutex<usize>>,
    /// What the node's sessions counted, summed.
    counters: Arc<SessionCounters>,
}

fn node(held: HashMap<FeedKey, (SignedHead, Vec<Vec<u8>>)>, open: watch::Receiver<bool>) -> Node {
    let held = Arc::new(Mutex::new(held));
    let written = Arc::new(Mutex::new(Vec::new()));
    let attached = Arc::new(Mutex::new(0));
    let addr = WholeStore {
        held: held.clone(),
        open,
        written: written.clone(),
        attached: attached.clone(),
    }
    .start();
    let store = StoreRecipients::of(&addr)
        .with_heads(addr.clone().recipient())
        .with_whole(addr.clone().recipient(), addr.clone().recipient());
    Node {
        store,
        held,
        written,
        attached,
        counters: Arc::default(),
    }
}

/// `n` feeds of one block of `size` bytes, each with a real signed head.
fn feeds(n: u32, size: usize) -> HashMap<FeedKey, (SignedHead, Vec<Vec<u8>>)> {
    (0..n)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            let secret = FeedSecret::from_bytes(&seed);
            let key = FeedKey(*secret.key().as_bytes());
            let mut tree_hash = [0u8; 32];
            tree_hash[..4].copy_from_slice(&i.to_le_bytes());
            let head = secret.sign_head(1, tree_hash);
            (key, (head, vec![vec![i as u8; size]]))
        })
        .collect()
}

fn start(
    node: &Node,
    connection: quinn::Connection,
    role: Role,
) -> (
    tokio::task::JoinHandle<EndReason>,
    mpsc::UnboundedSender<SessionCommand>,
    mpsc::UnboundedReceiver<SessionEvent>,
) {
    let (commands, rx) = mpsc::unbounded_channel();
    let (events_tx, events) = mpsc::unbounded_channel();
    let spec = SessionSpec {
        connection,
        role,
        peer: PeerKey([if role == Role::Dialer { 1 } else { 2 }; 32]),
        config: SessionConfig {
            mode: Mode::OneShot,
            ..SessionConfig::default()
        },
        namespaces: vec![NamespaceEntry {
            name: "whole".into(),
            secret: None,
            store: node.store.clone(),
        }],
        counters: node.counters.clone(),
    };
    (
        tokio::spawn(driver::run(spec, rx, events_tx)),
        commands,
        events,
    )
}

async fn stats(commands: &mpsc::UnboundedSender<SessionCommand>) -> SessionStats {
    let (tx, rx) = tokio::sync::oneshot::channel();
    commands.send(SessionCommand::Stats { reply: tx }).unwrap();
    rx.await.unwrap()
}

#[test]
/// 5,000 feeds of one 1 KiB block (about 6 MB whole) from a writer to a reader whose
/// store holds its writes: the reader's session stops reading at the bound (its bytes
/// at the store stay under the bound plus a frame while the writer waits), then, once
/// the store answers, every feed arrives whole with its head verified, no stream opens,
/// and the one-shot session ends done. Both roles of the writer.
fn over_quic_small_feeds_go_whole_and_the_reader_pauses_at_its_store_bound() {
    for writer_dials in [true, false] {
        actix::System::new().block_on(async {
            let all = feeds(5000, 1024);
            let (open_tx, open) = watch::channel(false);
            let writer = node(all.clone(), open.clone());
            let reader = node(HashMap::new(), open);
            let (client, server) = (client_endpoint(), server_endpoint());
            let (dialed, accepted) = connect(&client, &server).await;
            let (w_conn, r_conn, w_role, r_role) = if writer_dials {
                (dialed, accepted, Role::Dialer, Role::Acceptor)
            } else {
                (accepted, dialed, Role::Acceptor, Role::Dialer)
            };
            let (w_end, _w_cmd, _w_events) = start(&writer, w_conn, w_role);
            let (r_end, r_cmd, mut r_events) = start(&reader, r_conn, r_role);

            // The reader's store holds every write: its session fills its share, stops
            // reading, and stays there while the writer waits on flow control.
            let paused = tokio::time::timeout(GUARD, async {
                loop {
                    let s = stats(&r_cmd).await;
                    if s.whole_bytes_at_store >= MAX_WHOLE_BYTES_AT_STORE as u64 {
                        return s;
                    }
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the reader never filled its store's share");
            let bound = (MAX_WHOLE_BYTES_AT_STORE + MAX_FRAME_LEN) as u64;
            for _ in 0..50 {
                let s = stats(&r_cmd).await;
                assert!(s.whole_bytes_at_store <= bound, "{s:?}");
                assert_eq!(s.feeds_received_whole, 0, "{s:?}");
                tokio::task::yield_now().await;
            }
            assert!(paused.bytes_in < 6_000_000, "read on: {paused:?}");
            let _ = open_tx.send(true);

            let mut synced = 0;
            tokio::time::timeout(GUARD, async {
                while let Some(event) = r_events.recv().await {
                    match event {
                        SessionEvent::FeedSynced { length, .. } => {
                            assert_eq!(length, 1);
                            synced += 1;
                        }
                        SessionEvent::SessionEnded { reason } => {
                            assert_eq!(reason.code, CloseCode::DONE, "{reason}");
                            return;
                        }
                        _ => {}
                    }
                }
            })
            .await
            .expect("the reader's session did not end");
            assert_eq!(synced, 5000, "writer dials: {writer_dials}");
            let w_reason = tokio::time::timeout(GUARD, w_end).await.unwrap().unwrap();
            assert_eq!(w_reason.code, CloseCode::DONE, "{w_reason}");
            let _ = r_end.await;
            assert_eq!(reader.held.lock().unwrap().len(), 5000);
            assert_eq!(*reader.held.lock().unwrap(), all);
            let written = reader.written.lock().unwrap();
            assert_eq!(written.len(), 5000);
            // The store checks every head with its feed (decision 250).
            assert!(written.iter().all(|(_, verified)| !*verified));
            assert_eq!(*reader.attached.lock().unwrap(), 0);
            assert_eq!(*writer.attached.lock().unwrap(), 0);
            assert!(writer.written.lock().unwrap().is_empty());
            // The sums the sessions kept as they ran hold every feed once their
            // sessions ended.
            let sent = SessionTotals {
                feeds_sent_whole: 5000,
                feeds_received_whole: 0,
            };
            assert_eq!(writer.counters.totals(), sent);
            let received = SessionTotals {
                feeds_sent_whole: 0,
                feeds_received_whole: 5000,
            };
            assert_eq!(reader.counters.totals(), received);
        });
    }
}
