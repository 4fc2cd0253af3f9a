//! Cross-crate tests for replic8: several nodes on loopback, faults and misbehaving peers.
//!
//! The scenarios live in `tests/tests/*.rs`; this library holds the helpers they share:
//! a private DHT ([`testnet`]), node builders that use it ([`loopback_node`]), waiting for
//! a node event ([`recv_until`]) or a condition ([`wait_until`]), a small custom store
//! ([`CounterStore`]), a hostile peer built from the project's own pieces ([`hostile`]),
//! `replic8` daemons driven through the command line ([`daemon`]), and network namespaces
//! wired into a public segment and homes behind NATs ([`netns`]).

pub mod daemon;
pub mod fault;
pub mod hostile;
pub mod netns;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler};
use replic8::actor::SessionsActor;
use replic8::keys::FeedKey;
use replic8::message::Headers;
use replic8::store::{
    Attach, Detach, FeedStream, FeedSynced, FeedUpdated, KnownFeeds, Offer, SharedFeed, Shares,
    StoreError, StreamEnded,
};
use replic8_node::{KrpcTestnet, Node, NodeBuilder, NodeEvent, NodeHandle};
use tokio::sync::broadcast;

/// Guard on any one wait: generous for a loaded 2-core machine, never the check itself.
pub const GUARD: Duration = Duration::from_secs(30);

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A private Mainline DHT of `n` nodes on 127.0.0.1 (never the public DHT).
pub fn testnet(n: usize) -> KrpcTestnet {
    KrpcTestnet::new(n).unwrap_or_else(|e| panic!("cannot start a {n}-node testnet: {e}"))
}

/// A node on 127.0.0.1 that uses only `testnet` for discovery (no LAN), in memory.
pub fn loopback_node(testnet: &KrpcTestnet) -> NodeBuilder {
    Node::builder()
        .in_memory()
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .testnet(&testnet.bootstrap)
        .lan(false)
}

/// Waits for the first event of `events` that `want` maps to `Some`, panicking with
/// `what` (which node, what was expected) and the events seen if [`GUARD`] passes.
pub async fn recv_until<T>(
    events: &mut broadcast::Receiver<NodeEvent>,
    what: &str,
    mut want: impl FnMut(&NodeEvent) -> Option<T>,
) -> T {
    let mut seen = Vec::new();
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(out) = want(&event) {
                        return out;
                    }
                    seen.push(event);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => seen.push(NodeEvent::SessionEnded {
                    peer: replic8_node::PeerKey::from_bytes([0; 32]),
                    reason: format!("(test: lagged, {n} events missed)"),
                }),
                Err(broadcast::error::RecvError::Closed) => {
                    panic!("{what}: event stream closed; seen: {seen:#?}")
                }
            }
        }
    };
    match tokio::time::timeout(GUARD, wait).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: not within {GUARD:?}; seen: {seen:#?}"),
    }
}

/// Waits until `holds()` is true, checking every few milliseconds, for state that no
/// event announces (a task count that drops just after the event that ended its work);
/// panics with `what` and the last value `holds` described if [`GUARD`] passes.
pub async fn wait_until(what: &str, mut holds: impl FnMut() -> Result<(), String>) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        match holds() {
            Ok(()) => return,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {GUARD:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Waits until `node` reports a connection to `peer`.
pub async fn wait_peer_up(
    events: &mut broadcast::Receiver<NodeEvent>,
    node: &str,
    peer: &NodeHandle,
) {
    let key = peer.key();
    recv_until(
        events,
        &format!("{node}: PeerUp of {}", key.fmt_short()),
        |e| matches!(e, NodeEvent::PeerUp { key: k, .. } if *k == key).then_some(()),
    )
    .await
}

/// Counter values by feed key, shared between a [`CounterStore`] and the test.
pub type Counters = Arc<Mutex<HashMap<FeedKey, u64>>>;

/// A custom store: each "feed" is a counter. It shares every counter it holds in its
/// namespace (headers `kind=counter`), accepts offers whose headers say `kind=counter`,
/// and on a feed stream both sides send their value and keep the larger one.
#[derive(Debug)]
pub struct CounterStore {
    /// The values.
    pub values: Counters,
    /// The session layer, for `FeedSynced`, `FeedUpdated` and `StreamEnded`.
    pub sessions: Addr<SessionsActor>,
}

/// The headers a counter is offered with.
pub fn counter_headers() -> Headers {
    let mut h = Headers::new();
    h.insert("kind", b"counter".to_vec())
        .unwrap_or_else(|e| panic!("headers: {e}"));
    h
}

impl Actor for CounterStore {
    type Context = Context<Self>;
}

impl Handler<Shares> for CounterStore {
    type Result = Result<Vec<SharedFeed>, StoreError>;
    fn handle(&mut self, _: Shares, _: &mut Context<Self>) -> Self::Result {
        let values = self
            .values
            .lock()
            .map_err(|_| StoreError::Failed("poisoned".into()))?;
        Ok(values
            .keys()
            .map(|key| SharedFeed {
                key: *key,
                headers: counter_headers(),
            })
            .collect())
    }
}

impl Handler<KnownFeeds> for CounterStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, _: KnownFeeds, _: &mut Context<Self>) -> Self::Result {
        Ok(Vec::new())
    }
}

impl Handler<Offer> for CounterStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, msg: Offer, _: &mut Context<Self>) -> Self::Result {
        let mut values = self
            .values
            .lock()
            .map_err(|_| StoreError::Failed("poisoned".into()))?;
        let mut accepted = Vec::new();
        for feed in msg.feeds {
            if feed.headers.get("kind") == Some(b"counter".as_slice()) {
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
        let sessions = self.sessions.clone();
        let ours = values
            .lock()
            .map_err(|_| StoreError::Failed("poisoned".into()))?
            .get(&msg.feed)
            .copied()
            .unwrap_or(0);
        let FeedStream { mut send, mut recv } = msg.stream;
        tokio::spawn(async move {
            let mine = ours.to_be_bytes();
            let mut theirs = [0u8; 8];
            let (w, r) = tokio::join!(send.write_all(&mine), recv.read_exact(&mut theirs));
            if w.is_ok() && r.is_ok() {
                let value = ours.max(u64::from_be_bytes(theirs));
                if let Ok(mut values) = values.lock() {
                    values.insert(msg.feed, value);
                }
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

impl Handler<Detach> for CounterStore {
    type Result = ();
    fn handle(&mut self, _: Detach, _: &mut Context<Self>) {}
}
