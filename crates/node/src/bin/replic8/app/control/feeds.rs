//! The feed requests that answer in JSON: create, inspect, list, get by key with
//! progress (blocks themselves travel in the binary mode, `blocks.rs`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::parse_key;
use super::{Answer, STREAM_QUEUE};
use replic8_node::feed_peers::FeedPeer;
use replic8_node::node::NodeHandle;
use replic8_node::{FeedKey, FeedSummary};

/// How often at most `feed get` sends a progress line while blocks arrive: a bar
/// redrawn four times a second looks live without flooding a pipe.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

pub(super) async fn new(node: &NodeHandle) -> Result<Answer, String> {
    let key = node.create_feed().await.map_err(text)?;
    Ok(Answer::One(json!({ "key": hex::encode(key.0) })))
}

/// A peer of a feed as JSON.
fn peer_json(p: &FeedPeer, now: Instant) -> Value {
    json!({
        "peer": hex::encode(p.peer.as_bytes()),
        "length": p.length,
        "blocks_in": p.blocks_in,
        "bytes_in": p.bytes_in,
        "seen_secs_ago": now.saturating_duration_since(p.seen).as_secs(),
    })
}

pub(super) async fn info(node: &NodeHandle, key: &str) -> Result<Answer, String> {
    let feed = FeedKey(parse_key(key)?);
    let info = node.open_feed(feed).await.map_err(text)?;
    let now = Instant::now();
    Ok(Answer::One(json!({
        "key": hex::encode(info.key.0),
        "writable": info.writable,
        "length": info.length,
        "stored": info.stored,
        "contiguous": info.contiguous_length,
        "byte_length": info.byte_length,
        "tree_hash": info.head.as_ref().map(|h| hex::encode(h.tree_hash)),
        "discovery_key": hex::encode(info.key.discovery_key().0),
        "peers": node.feed_peers(&feed).iter().map(|p| peer_json(p, now)).collect::<Vec<_>>(),
    })))
}

/// Feeds in one page of `feed_list`'s answer: about 170 KB of JSON on the socket and
/// well under a few MiB in the daemon while it is built, whatever the number of feeds;
/// 100,000 feeds are 100 pages, each one pass over the held keys.
const LIST_PAGE: usize = 1000;

/// Pages of `feed_list`'s answer the daemon builds ahead of a client that reads slowly.
const LIST_PAGES_AHEAD: usize = 1;

/// `feed list`: the held feeds a page at a time, each page a line
/// `{"feeds": [...], "more": bool}`; the last says `"more": false`. The daemon holds
/// at most the page being built and [`LIST_PAGES_AHEAD`] more.
pub(super) async fn list(node: &NodeHandle) -> Result<Answer, String> {
    // The first page here, so that a listing that cannot start fails with one line.
    let first = node.list_feeds_page(None, LIST_PAGE).await.map_err(text)?;
    let (tx, rx) = mpsc::channel(LIST_PAGES_AHEAD);
    let node = node.clone();
    tokio::spawn(async move {
        let mut page = first;
        loop {
            let next = page.next;
            if tx
                .send(Ok(page_json(&page.feeds, next.is_some())))
                .await
                .is_err()
            {
                return;
            }
            let Some(after) = next else { return };
            page = match node.list_feeds_page(Some(after), LIST_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = tx.send(Err(text(e))).await;
                    return;
                }
            };
        }
    });
    Ok(Answer::Stream(rx))
}

/// One page of `feed_list`'s answer.
fn page_json(feeds: &[FeedSummary], more: bool) -> Value {
    let feeds = feeds
        .iter()
        .map(|f| {
            json!({
                "key": hex::encode(f.info.key.0),
                "writable": f.info.writable,
                "length": f.info.length,
                "stored": f.info.stored,
                "byte_length": f.info.byte_length,
                "stored_bytes": f.stored_bytes,
                "namespaces": f.namespaces,
            })
        })
        .collect();
    json!({ "feeds": Value::Array(feeds), "more": more })
}

/// Where a `feed get` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    length: u64,
    stored: u64,
    /// The longest signed length a peer reported, if any peer reported one.
    remote: Option<u64>,
    /// Peers that reported a signed length.
    peers: usize,
    /// Bytes downloaded since the `get` began.
    bytes: u64,
}

impl Progress {
    /// In sync: a peer that has the feed reported its signed length, ours is at least
    /// that, and every block up to ours is stored here.
    fn in_sync(&self) -> bool {
        self.remote.is_some_and(|r| self.length >= r) && self.stored == self.length
    }
}

fn downloaded(peers: &[FeedPeer]) -> u64 {
    peers.iter().map(|p| p.bytes_in).sum()
}

/// `feed get`: the replica (created if needed), the join, then a progress line at each
/// change (at most every [`PROGRESS_EVERY`]) until in sync, or for ever with `follow`.
pub(super) async fn get(node: &NodeHandle, key: &str, follow: bool) -> Result<Answer, String> {
    let feed = FeedKey(parse_key(key)?);
    let got = node.get_feed(feed).await.map_err(text)?;
    let mut state = node.subscribe_feed(feed).await.map_err(text)?;
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let first = json!({
        "event": "get",
        "key": hex::encode(feed.0),
        "created": got.created,
        "discovery_key": hex::encode(feed.discovery_key().0),
        "peers_found": got.join.peers_found,
    });
    let node = node.clone();
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        let started = Instant::now();
        let base = downloaded(&node.feed_peers(&feed));
        let mut byte_length = got.info.byte_length;
        let mut last: Option<Progress> = None;
        let mut sent: Option<Instant> = None;
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        loop {
            let s = *state.borrow_and_update();
            let peers = node.feed_peers(&feed);
            let now = Progress {
                length: s.length,
                stored: s.stored,
                remote: peers.iter().map(|p| p.length).max().filter(|l| *l > 0),
                peers: peers.iter().filter(|p| p.length > 0).count(),
                bytes: downloaded(&peers).saturating_sub(base),
            };
            if last.is_none_or(|l| l.length != now.length) {
                if let Ok(info) = node.open_feed(feed).await {
                    byte_length = info.byte_length;
                }
            }
            let done = now.in_sync() && !follow;
            let due = sent.is_none_or(|at: Instant| at.elapsed() >= PROGRESS_EVERY);
            if (last != Some(now) && (due || now.in_sync())) || done {
                last = Some(now);
                sent = Some(Instant::now());
                let seconds = started.elapsed().as_secs_f64();
                let line = json!({
                    "event": if now.in_sync() { "synced" } else { "progress" },
                    "length": now.length,
                    "stored": now.stored,
                    "byte_length": byte_length,
                    "remote_length": now.remote,
                    "peers": now.peers,
                    "bytes_in": now.bytes,
                    "seconds": seconds,
                    "bytes_per_s": if seconds > 0.0 { now.bytes as f64 / seconds } else { 0.0 },
                    "in_sync": now.in_sync(),
                });
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
            if done {
                return;
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
                () = tx.closed() => return,
            }
        }
    });
    Ok(Answer::Stream(rx))
}
