//! The node side of the `swarm` bench: one process per node (the hidden
//! `replic8 bench-swarm-node`), told what to do on stdin and reporting on stdout.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::broadcast;

use super::super::expect::{wait_synced, ExpectedFeed, ExpectedFeeds};
use super::super::replicate::{parse_feed, PeerFeed};
use super::super::{round, BenchError};
use crate::app::demo::Pattern;
use replic8_node::config::LimitsSection;
use replic8_node::{FeedKey, JoinOptions, Node, NodeEvent, NodeHandle};

/// Bytes per block of the writer's feed (the bulk scenario's).
const BLOCK_SIZE: usize = 64 << 10;
/// Blocks per append call of the writer.
const APPEND_BATCH: usize = 64;
/// How often a node samples its connection count for its maximum.
const PEER_SAMPLE: Duration = Duration::from_millis(100);

/// The options of one node process (`replic8 bench-swarm-node`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SwarmNodeArgs {
    /// The node's data directory.
    #[arg(long)]
    pub(crate) dir: PathBuf,
    /// DHT bootstrap nodes (`host:port`, comma-separated): the bench's private testnet.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) bootstrap: Vec<String>,
    /// Write a feed of this many bytes and serve it (the writer); otherwise wait for
    /// `get` on standard input (a reader).
    #[arg(long)]
    pub(crate) write: Option<u64>,
    /// The node's `limits.max_peers_per_topic` (default: the node's default).
    #[arg(long)]
    pub(crate) max_peers_per_topic: Option<usize>,
}

/// What a node process prints, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum NodeLine {
    /// Started (and, for the writer, written and joined).
    Ready {
        /// Its QUIC address.
        addr: SocketAddr,
        /// Its peer key, hex.
        key: String,
        /// The writer's feed.
        feed: Option<PeerFeed>,
    },
    /// Holds the whole feed, verified.
    Synced {
        /// Milliseconds from `get` to its first connected peer (none if no peer came up).
        first_peer_ms: Option<f64>,
        /// Milliseconds from `get` to its first verified block of the feed.
        first_block_ms: Option<f64>,
        /// Milliseconds from `get` to in sync.
        synced_ms: f64,
        /// The signed tree hash it holds, hex.
        tree_hash: String,
        /// Blocks of the feed it verified from each peer (the peer's key, hex).
        blocks_from: BTreeMap<String, u64>,
    },
    /// Its connections now.
    Report(NodeReport),
    /// Something failed; the node exits.
    Failed {
        /// What.
        error: String,
    },
}

/// A node's [`NodeLine::Report`]: its connections and what its feed store did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeReport {
    /// Peers connected now.
    pub(crate) peers: usize,
    /// Of those, dialed by them.
    pub(crate) inbound: usize,
    /// The most peers it had at once (sampled every 100 ms and at each report).
    pub(crate) peers_max: u64,
    /// Incoming connections it refused (its limits).
    pub(crate) refused: u64,
    /// Block bytes it sent to peers (its feed store's count).
    pub(crate) bytes_served: u64,
    /// Block bytes it received, verified and stored.
    pub(crate) bytes_stored: u64,
    /// The most bytes of data answers it held for peers at once (its feed store's
    /// serve budget in use).
    pub(crate) serve_bytes_peak: u64,
    /// The most bytes received on feed streams and not yet verified it held at once
    /// (its feed store's receive budget in use).
    pub(crate) receive_bytes_peak: u64,
    /// DHT queries it sent and answered.
    pub(crate) dht_queries: u64,
}

fn print_line(line: &NodeLine) {
    if let Ok(text) = serde_json::to_string(line) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}").and_then(|()| out.flush());
    }
}

/// The node process: runs until its standard input closes. A current-thread runtime
/// drives it (the node has its own thread and runtime), so that the process holds
/// little beside the node.
pub(crate) fn node_main(args: SwarmNodeArgs) -> Result<(), BenchError> {
    let result = actix::System::new().block_on(run_node(args));
    if let Err(e) = &result {
        print_line(&NodeLine::Failed {
            error: e.to_string(),
        });
    }
    result
}

async fn run_node(args: SwarmNodeArgs) -> Result<(), BenchError> {
    let mut limits = LimitsSection::default();
    if let Some(cap) = args.max_peers_per_topic {
        limits.max_peers_per_topic = cap;
    }
    let node = Node::builder()
        .data_dir(&args.dir)
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .testnet(&args.bootstrap)
        .lan(false)
        .limits(limits)
        .spawn()
        .await?;
    let result = serve_node(&node, &args).await;
    node.close().await;
    result
}

async fn serve_node(node: &NodeHandle, args: &SwarmNodeArgs) -> Result<(), BenchError> {
    let feed = match args.write {
        Some(bytes) => Some(write_feed(node, bytes).await?),
        None => None,
    };
    let peers_max = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (node, peers_max) = (node.clone(), peers_max.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PEER_SAMPLE);
            loop {
                tick.tick().await;
                peers_max.fetch_max(node.counters().peers.get(), Ordering::Relaxed);
            }
        })
    };
    print_line(&NodeLine::Ready {
        addr: node.local_addr(),
        key: node.key().to_string(),
        feed,
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut getting: Option<tokio::task::JoinHandle<()>> = None;
    let result = loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break Ok(()),
            Err(e) => break Err(BenchError::io("stdin")(e)),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["get", key, length] => {
                let feed = parse_feed(key)?;
                let length: u64 = length
                    .parse()
                    .map_err(|_| BenchError::Peer(format!("bad length in {line:?}")))?;
                let node = node.clone();
                getting = Some(tokio::spawn(async move {
                    match get(&node, feed, length).await {
                        Ok(synced) => print_line(&synced),
                        Err(e) => print_line(&NodeLine::Failed {
                            error: e.to_string(),
                        }),
                    }
                }));
            }
            ["report"] => {
                let stats = node
                    .feed_stats()
                    .await
                    .map_err(replic8_node::node::FeedError::from)?;
                let peers = node
                    .peers()
                    .await
                    .map_err(replic8_node::node::FeedError::from)?;
                let now = peers.len() as u64;
                print_line(&NodeLine::Report(NodeReport {
                    peers: peers.len(),
                    inbound: peers
                        .iter()
                        .filter(|p| p.initiator == replic8_connmgr::Initiator::Remote)
                        .count(),
                    peers_max: peers_max.fetch_max(now, Ordering::Relaxed).max(now),
                    refused: node.counters().refused.get(),
                    bytes_served: stats.bytes_out,
                    bytes_stored: stats.bytes_in,
                    serve_bytes_peak: stats.serve_bytes_peak,
                    receive_bytes_peak: stats.receive_bytes_peak,
                    dht_queries: node
                        .dht_status()
                        .await
                        .map_err(replic8_node::node::FeedError::from)?
                        .map_or(0, |d| d.stats.queries_out + d.stats.queries_in),
                }));
            }
            _ => break Err(BenchError::Peer(format!("unknown command {line:?}"))),
        }
    };
    sampler.abort();
    if let Some(getting) = getting {
        getting.abort();
    }
    result
}

/// The writer: a new feed of `bytes` bytes in [`BLOCK_SIZE`] blocks, its discovery key
/// joined (announced and looked up once).
async fn write_feed(node: &NodeHandle, bytes: u64) -> Result<PeerFeed, BenchError> {
    let feed = node.create_feed().await?;
    let mut pattern = Pattern::seeded(1);
    let mut left = bytes;
    while left > 0 {
        let mut batch = Vec::with_capacity(APPEND_BATCH);
        while batch.len() < APPEND_BATCH && left > 0 {
            let n = left.min(BLOCK_SIZE as u64) as usize;
            batch.push(pattern.block(n));
            left -= n as u64;
        }
        node.append(feed, batch).await?;
    }
    node.join_feed(feed, JoinOptions::default()).await?;
    let info = node.open_feed(feed).await?;
    let head = info
        .head
        .ok_or_else(|| BenchError::Store("the written feed has no head".into()))?;
    Ok(PeerFeed {
        key: hex::encode(feed.0),
        length: info.length,
        bytes,
        tree_hash: hex::encode(head.tree_hash),
    })
}

/// What a reader saw of its peers while it got the feed.
#[derive(Debug, Default)]
struct Seen {
    /// When its first peer came up.
    first_peer: Option<Duration>,
    /// When its first verified block of the feed was stored.
    first_block: Option<Duration>,
    /// Blocks of the feed verified from each peer (its key, hex).
    blocks_from: BTreeMap<String, u64>,
}

/// How long a reader's count of blocks per peer may trail its sync: a feed store's
/// `Downloaded` travels apart from the session's `FeedSynced` and may come after it.
const COUNT_GRACE: Duration = Duration::from_secs(2);

/// Follows `events` from `start`: the first peer, the first block of `feed` and where
/// its blocks came from, until `done` fired and the counts reach `length` blocks (or
/// [`COUNT_GRACE`] passed since `done`).
async fn watch(
    mut events: broadcast::Receiver<NodeEvent>,
    feed: FeedKey,
    length: u64,
    start: Instant,
    mut done: tokio::sync::oneshot::Receiver<()>,
) -> Seen {
    let mut seen = Seen::default();
    let mut counted = 0;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        if deadline.is_some() && counted >= length {
            return seen;
        }
        let event = tokio::select! {
            biased;
            event = events.recv() => event,
            _ = &mut done, if deadline.is_none() => {
                deadline = Some(tokio::time::Instant::now() + COUNT_GRACE);
                continue;
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                if deadline.is_some() => return seen,
        };
        match event {
            Ok(NodeEvent::PeerUp { .. }) => {
                seen.first_peer.get_or_insert_with(|| start.elapsed());
            }
            Ok(NodeEvent::Downloaded {
                peer,
                feed: f,
                blocks,
                ..
            }) if f == feed => {
                seen.first_block.get_or_insert_with(|| start.elapsed());
                *seen.blocks_from.entry(peer.to_string()).or_default() += blocks;
                counted += blocks;
            }
            // Lagged: some events are lost (the counts say less than they could).
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return seen,
        }
    }
}

/// A reader's `get`: the feed by key, until it holds all `length` blocks verified.
async fn get(node: &NodeHandle, feed: FeedKey, length: u64) -> Result<NodeLine, BenchError> {
    let start = Instant::now();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let watched = watch(node.subscribe(), feed, length, start, done_rx);
    let synced = async {
        let events = node.subscribe();
        let result = async {
            node.get_feed(feed).await?;
            let expected = ExpectedFeeds::new(vec![ExpectedFeed {
                key: feed,
                length,
                bytes: 0,
                tree_hash: [0; 32],
            }]);
            wait_synced(node, events, &expected, length).await?;
            Ok::<_, BenchError>(start.elapsed())
        }
        .await;
        let _ = done_tx.send(());
        result
    };
    let (seen, synced) = tokio::join!(watched, synced);
    let synced_at = synced?;
    let info = node.open_feed(feed).await?;
    let tree_hash = info
        .head
        .map(|h| hex::encode(h.tree_hash))
        .unwrap_or_default();
    let ms = |d: Duration| round(d.as_secs_f64() * 1e3, 1);
    Ok(NodeLine::Synced {
        first_peer_ms: seen.first_peer.map(ms),
        // The watcher may see the first block's event after the sync was seen (both are
        // polled in one task): the block came first, so its time is at most the sync's.
        first_block_ms: seen.first_block.map(|d| ms(d.min(synced_at))),
        synced_ms: ms(synced_at),
        tree_hash,
        blocks_from: seen.blocks_from,
    })
}
