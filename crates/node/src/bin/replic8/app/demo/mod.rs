//! `replic8 demo`: the whole mission offline on one machine, told step by step as it
//! happens.
//!
//! Built only with the `cli` feature (the default), for the `replic8` binary.
//!
//! A private Mainline DHT (`KrpcTestnet`: our own DHT nodes on 127.0.0.1 only) and three nodes with
//! on-disk storage in a temporary directory: the writer and two readers. The writer
//! creates two feeds, `photos` (the data) and `videos` (a few blocks), and shares both
//! with headers (`type=photos`, `type=videos`) in the secret namespace [`NAMESPACE`].
//! Both readers open that namespace with its secret and a header policy that accepts
//! only `type=photos` and forwards what it accepts.
//!
//! The topology is writer ↔ reader-1 ↔ reader-2: the writer and reader-1 join the
//! photos feed's discovery key; reader-1 also joins a relay topic, and reader-2 joins
//! only that topic, so it never learns the writer's address. reader-1 is offered both
//! feeds, its policy refuses `videos` and accepts `photos`, which it replicates
//! (every block verified against the writer's signed head before it is stored) and
//! forwards to reader-2. The run ends when both readers hold every block; then each
//! copy is read back, compared with what was written and hashed into the feed's tree,
//! whose hash must equal the one the writer signed.
//!
//! The story is told from the nodes' own events ([`NodeHandle::subscribe`]) and the
//! readers' accept policy as it decides: each [`Step`] goes to the caller's callback
//! when it happens, never before.
//!
//! Files: `mod.rs` the run (testnet, nodes, feeds, verification); `steps.rs` the
//! [`Step`]s as text and JSON; `story.rs` events and policy decisions turned into steps.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::app::import::TreeHasher;
use replic8_node::node::{FeedError, JoinError, JoinOptions, Node, NodeHandle, SpawnError};
use replic8_node::{FeedKey, NamespacePolicy, NamespaceSecret, Topic};

/// The namespace the demo's feeds are shared in (with a fresh secret each run).
pub(crate) const NAMESPACE: &str = "replic8-demo";
/// DHT nodes in the demo's private network: enough that records spread over several.
const TESTNET_NODES: usize = 8;
/// Blocks per append batch (one signature per batch).
const APPEND_BATCH: usize = 64;
/// Blocks of the `videos` feed, the one the readers' policy refuses: its size does not
/// matter, only that it is offered.
const REFUSED_BLOCKS: usize = 4;
/// How long the readers get to find their peers and download everything.
const SYNC_GUARD: Duration = Duration::from_secs(180);
/// The header the readers' policy looks at, and the value it accepts.
const POLICY_HEADER: (&str, &str) = ("type", "photos");

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct DemoOptions {
    /// Bytes of feed data to write and replicate.
    pub(crate) bytes: usize,
    /// Bytes per block.
    pub(crate) block_size: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            bytes: 32 << 20,
            block_size: 64 << 10,
        }
    }
}

mod steps;
mod story;

pub(crate) use steps::Step;
use story::{headers, reader_policy, step_feed, Input, Story};

/// What one node did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DemoNode {
    /// `writer`, `reader-1`, `reader-2`.
    pub(crate) name: String,
    /// Its key, short form.
    pub(crate) key: String,
    /// Peers connected at the end.
    pub(crate) peers: usize,
    /// Feed bytes received, verified and stored.
    pub(crate) bytes_in: u64,
    /// Feed bytes sent.
    pub(crate) bytes_out: u64,
}

/// The demo's outcome: the last JSON line of `replic8 demo --json` (with
/// `"step": "summary"`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DemoSummary {
    /// The replicated feed's public key, hex.
    pub(crate) feed: String,
    /// Blocks in the feed.
    pub(crate) blocks: u64,
    /// Bytes in the feed.
    pub(crate) bytes: u64,
    /// The tree hash the writer signed and both readers' copies hash to, hex.
    pub(crate) tree_hash: String,
    /// The feed the readers' policy refused, hex.
    pub(crate) refused_feed: String,
    /// Each node.
    pub(crate) nodes: Vec<DemoNode>,
    /// Seconds from the joins to both readers holding every block.
    pub(crate) seconds: f64,
    /// The feed's bytes delivered to the two readers, per second of `seconds`, in MB
    /// (10^6 bytes). A reader may receive some blocks twice (from the writer and from
    /// the other reader); `bytes_in` counts those, this does not.
    pub(crate) mb_per_s: f64,
    /// Both readers' copies were read back equal to what the writer wrote and hash to
    /// the signed tree hash; neither holds the refused feed; reader-2 received the feed
    /// through reader-1 without a connection to the writer.
    pub(crate) verified: bool,
}

/// What the demo can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    /// The private DHT could not start.
    #[error("testnet: {0}")]
    Testnet(std::io::Error),
    /// The temporary directory could not be created.
    #[error("temporary directory: {0}")]
    TempDir(std::io::Error),
    /// A node could not start.
    #[error("node: {0}")]
    Spawn(#[from] SpawnError),
    /// A feed operation failed.
    #[error("feed: {0}")]
    Feed(#[from] FeedError),
    /// A join failed.
    #[error("join: {0}")]
    Join(#[from] JoinError),
    /// A reader did not hold the whole feed in time.
    #[error("{0} did not replicate the feed within {SYNC_GUARD:?}")]
    Timeout(String),
    /// A reader's copy differs from what was written, or the story went otherwise
    /// than it must (a refused feed held, reader-2 connected to the writer).
    #[error("{0}")]
    Mismatch(String),
    /// Bad options.
    #[error("{0}")]
    Options(String),
}

/// Deterministic, incompressible bytes (xorshift64), block after block: the demo's data
/// and `replic8 bench`'s.
#[derive(Debug, Clone)]
pub(crate) struct Pattern(u64);

impl Pattern {
    pub(crate) fn new() -> Self {
        Pattern(0x9e37_79b9_7f4a_7c15)
    }

    /// Another stream of bytes for each `seed`.
    pub(crate) fn seeded(seed: u64) -> Self {
        // Never 0, where xorshift would stay.
        Pattern(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0xbf58_476d_1ce4_e5b9) | 1)
    }

    /// The next `n` bytes.
    pub(crate) fn block(&mut self, n: usize) -> Vec<u8> {
        let mut block = Vec::with_capacity(n);
        while block.len() < n {
            // xorshift64
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let word = self.0.to_le_bytes();
            let take = (n - block.len()).min(8);
            block.extend_from_slice(&word[..take]);
        }
        block
    }
}

/// The demo's data: `bytes` in blocks of `block_size` (the last may be shorter), from
/// `pattern`.
fn make_blocks_from(mut pattern: Pattern, bytes: usize, block_size: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.div_ceil(block_size));
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block_size);
        out.push(pattern.block(n));
        left -= n;
    }
    out
}

/// The demo's main data: `bytes` in blocks of `block_size`.
fn make_blocks(bytes: usize, block_size: usize) -> Vec<Vec<u8>> {
    make_blocks_from(Pattern::new(), bytes, block_size)
}

async fn spawn_node(dir: &Path, bootstrap: &[String]) -> Result<NodeHandle, SpawnError> {
    Node::builder()
        .data_dir(dir)
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .testnet(bootstrap)
        .lan(false)
        .spawn()
        .await
}

/// The nodes, by index in every array of the story.
const NAMES: [&str; 3] = ["writer", "reader-1", "reader-2"];
const WRITER: usize = 0;
const READER_1: usize = 1;
const READER_2: usize = 2;

/// Writes `blocks` into a new feed of `node` in signed batches.
async fn write_feed(node: &NodeHandle, blocks: &[Vec<u8>]) -> Result<FeedKey, DemoError> {
    let feed = node.create_feed().await?;
    for batch in blocks.chunks(APPEND_BATCH) {
        node.append(feed, batch.to_vec()).await?;
    }
    Ok(feed)
}

/// Reads the reader's copy back, compares it with `data` and hashes it into the feed's
/// tree; returns the tree hash, which must be the one the writer signed.
async fn verify(
    name: &str,
    node: &NodeHandle,
    feed: FeedKey,
    data: &[Vec<u8>],
    signed: [u8; 32],
) -> Result<[u8; 32], DemoError> {
    let info = node.open_feed(feed).await?;
    let n = data.len() as u64;
    if info.length != n || info.stored != n || info.writable {
        return Err(DemoError::Mismatch(format!(
            "{name}: holds {} of {} blocks (length {}, writable {})",
            info.stored, n, info.length, info.writable
        )));
    }
    if info.head.map(|h| h.tree_hash) != Some(signed) {
        return Err(DemoError::Mismatch(format!(
            "{name}: its head's tree hash is not the one the writer signed"
        )));
    }
    let mut hasher = TreeHasher::new();
    let mut start = 0u64;
    while start < n {
        let end = (start + 256).min(n);
        let got = node.read(feed, start..end).await?;
        let want = &data[start as usize..end as usize];
        if got.as_slice() != want {
            return Err(DemoError::Mismatch(format!(
                "{name}: blocks {start}..{end} differ from what the writer wrote"
            )));
        }
        for block in &got {
            hasher.push(block);
        }
        start = end;
    }
    let hash = hasher.tree_hash();
    if hash != signed {
        return Err(DemoError::Mismatch(format!(
            "{name}: the blocks read back hash to {}, not to the signed tree hash {}",
            hex::encode(hash),
            hex::encode(signed)
        )));
    }
    Ok(hash)
}

/// Runs the demo; `on_step` gets each step as it happens.
pub(crate) async fn run(
    options: DemoOptions,
    on_step: impl FnMut(&Step),
) -> Result<DemoSummary, DemoError> {
    if options.block_size == 0 || options.block_size > replic8_store::MAX_BLOCK_SIZE {
        return Err(DemoError::Options(format!(
            "block size must be 1..={} bytes",
            replic8_store::MAX_BLOCK_SIZE
        )));
    }
    if options.bytes == 0 {
        return Err(DemoError::Options("size must be more than 0".into()));
    }
    let testnet =
        tokio::task::spawn_blocking(|| replic8_discovery::KrpcTestnet::new(TESTNET_NODES))
            .await
            .map_err(|e| DemoError::Testnet(std::io::Error::other(e.to_string())))?
            .map_err(DemoError::Testnet)?;
    let tmp = tempfile::Builder::new()
        .prefix("replic8-demo-")
        .tempdir()
        .map_err(DemoError::TempDir)?;
    let mut story = Story {
        on_step,
        keys: [replic8_node::PeerKey::from_bytes([0; 32]); 3],
        feed: FeedKey([0; 32]),
        blocks: 0,
        bytes: options.bytes as u64,
        shared: Vec::new(),
        received: [0; 3],
        synced: [false; 3],
        connected: Default::default(),
        told: HashSet::new(),
        offered: HashSet::new(),
        waiting: Vec::new(),
    };
    story.tell(Step::Dht {
        nodes: TESTNET_NODES,
        bootstrap: testnet.bootstrap.clone(),
        dir: tmp.path().display().to_string(),
    });

    let mut nodes = Vec::with_capacity(NAMES.len());
    for name in NAMES {
        let node = spawn_node(&tmp.path().join(name), &testnet.bootstrap).await?;
        story.tell(Step::Node {
            name: name.to_owned(),
            key: node.key().to_string(),
            addr: node.local_addr(),
        });
        nodes.push(node);
    }
    for (i, node) in nodes.iter().enumerate() {
        story.keys[i] = node.key();
    }
    // Every event of every node, from now on, tagged with the node's index.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut forwarders = JoinSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut events = node.subscribe();
        let tx = tx.clone();
        forwarders.spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        if tx.send(Input::Event(i, event)).is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    // The writer: two feeds with headers in a secret namespace.
    let secret = NamespaceSecret(rand::random());
    let (writer, reader1, reader2) = (&nodes[WRITER], &nodes[READER_1], &nodes[READER_2]);
    writer
        .open_namespace(
            NAMESPACE,
            Some(secret.clone()),
            NamespacePolicy::held_only(),
        )
        .await?;
    let data = make_blocks(options.bytes, options.block_size);
    let refused_data = make_blocks_from(
        Pattern::seeded(1),
        REFUSED_BLOCKS * options.block_size,
        options.block_size,
    );
    let feed = write_feed(writer, &data).await?;
    let refused = write_feed(writer, &refused_data).await?;
    story.feed = feed;
    story.blocks = data.len() as u64;
    for (key, blocks, kind, title) in [
        (feed, &data, "photos", "holiday photos"),
        (refused, &refused_data, "videos", "holiday videos"),
    ] {
        let bytes: u64 = blocks.iter().map(|b| b.len() as u64).sum();
        let h = headers(&[
            ("type", kind.to_owned()),
            ("title", title.to_owned()),
            ("blocks", blocks.len().to_string()),
        ])?;
        writer.share(NAMESPACE, key, h.clone()).await?;
        story.shared.push((key, h.clone()));
        story.tell(Step::Shared {
            node: NAMES[WRITER].to_owned(),
            namespace: NAMESPACE.to_owned(),
            secret: true,
            feed: step_feed(&key, &h),
            blocks: blocks.len() as u64,
            bytes,
        });
    }

    // The readers: the namespace with its secret and a header policy.
    for (i, reader) in [(READER_1, reader1), (READER_2, reader2)] {
        reader
            .open_namespace(
                NAMESPACE,
                Some(secret.clone()),
                reader_policy(i, tx.clone()),
            )
            .await?;
        story.tell(Step::NamespaceOpened {
            node: NAMES[i].to_owned(),
            namespace: NAMESPACE.to_owned(),
            secret: true,
            policy: format!(
                "accepts only feeds with {}={}, forwards them",
                POLICY_HEADER.0, POLICY_HEADER.1
            ),
        });
    }
    drop(tx);

    // Discovery: writer and reader-1 meet on the feed's discovery key; reader-2 knows
    // only a relay topic that reader-1 announces, never the writer's.
    let relay = Topic(rand::random());
    let feed_topic = Topic(feed.discovery_key().0);
    let joins = [
        (WRITER, feed_topic, "the photos feed's discovery key"),
        (READER_1, feed_topic, "the photos feed's discovery key"),
        (READER_1, relay, "the relay topic"),
        (READER_2, relay, "the relay topic (only)"),
    ];
    for (i, topic, what) in joins {
        story.tell(Step::Joined {
            node: NAMES[i].to_owned(),
            topic: hex::encode(topic.0),
            what: what.to_owned(),
        });
    }
    let start = Instant::now();
    let join_all = async {
        let options = JoinOptions::default();
        let (a, b, c, d) = tokio::join!(
            writer.join(feed_topic, options),
            reader1.join(feed_topic, options),
            reader1.join(relay, options),
            reader2.join(relay, options),
        );
        a?;
        b?;
        c?;
        d?;
        Ok::<(), DemoError>(())
    };
    let narrate = async {
        while !story.done() {
            match rx.recv().await {
                Some(input) => story.handle(input),
                None => break,
            }
        }
        Ok::<(), DemoError>(())
    };
    let told = tokio::time::timeout(SYNC_GUARD, async {
        tokio::try_join!(join_all, narrate).map(|_| ())
    })
    .await;
    match told {
        Ok(result) => result?,
        Err(_) => {
            let late = [READER_1, READER_2]
                .into_iter()
                .find(|&i| !story.synced[i])
                .unwrap_or(READER_1);
            return Err(DemoError::Timeout(NAMES[late].to_owned()));
        }
    }
    if !story.done() {
        return Err(DemoError::Mismatch(
            "the nodes' events ended before both readers were in sync".into(),
        ));
    }
    let seconds = start.elapsed().as_secs_f64();
    forwarders.abort_all();
    // An offer event a lagging subscriber missed holds nothing back.
    story.flush(true);

    // Verification.
    let signed = writer
        .open_feed(feed)
        .await?
        .head
        .map(|h| h.tree_hash)
        .ok_or_else(|| DemoError::Mismatch("writer: the feed has no signed head".into()))?;
    for (i, reader) in [(READER_1, reader1), (READER_2, reader2)] {
        let hash = verify(NAMES[i], reader, feed, &data, signed).await?;
        let refused_absent = reader.open_feed(refused).await.is_err();
        if !refused_absent {
            return Err(DemoError::Mismatch(format!(
                "{}: holds the feed its policy refused",
                NAMES[i]
            )));
        }
        let mut peers: Vec<usize> = story.connected[i].iter().copied().collect();
        peers.sort_unstable();
        story.tell(Step::Verified {
            node: NAMES[i].to_owned(),
            feed: hex::encode(feed.0),
            blocks: data.len() as u64,
            tree_hash: hex::encode(hash),
            refused_absent,
            peers: peers.into_iter().map(|p| NAMES[p].to_owned()).collect(),
        });
    }
    if story.connected[READER_2].contains(&WRITER) {
        return Err(DemoError::Mismatch(
            "reader-2 connected to the writer: the feed was not only forwarded".into(),
        ));
    }

    let mut summary_nodes = Vec::new();
    for (name, node) in NAMES.iter().zip(&nodes) {
        let stats = node.feed_stats().await.unwrap_or_default();
        summary_nodes.push(DemoNode {
            name: (*name).to_owned(),
            key: node.key().fmt_short(),
            peers: node.peers().await.map(|p| p.len()).unwrap_or(0),
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
        });
    }
    let _ = tokio::join!(writer.close(), reader1.close(), reader2.close());
    drop(testnet);
    let total = options.bytes as u64;
    Ok(DemoSummary {
        feed: hex::encode(feed.0),
        blocks: data.len() as u64,
        bytes: total,
        tree_hash: hex::encode(signed),
        refused_feed: hex::encode(refused.0),
        nodes: summary_nodes,
        seconds,
        mb_per_s: (2 * total) as f64 / 1e6 / seconds.max(1e-9),
        verified: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_data_has_the_asked_size() {
        let blocks = make_blocks(100_000, 4096);
        assert_eq!(blocks.len(), 25);
        assert_eq!(blocks.iter().map(Vec::len).sum::<usize>(), 100_000);
        assert_eq!(blocks[24].len(), 100_000 - 24 * 4096);
        assert_ne!(blocks[0], blocks[1]);
    }

    #[test]
    fn steps_are_json_objects_named_by_step() {
        let step = Step::Decision {
            node: "reader-1".into(),
            feed: steps::StepFeed {
                feed: "00".repeat(32),
                headers: [("type".to_owned(), "videos".to_owned())].into(),
            },
            accepted: false,
            reason: "type=videos".into(),
        };
        let v = serde_json::to_value(&step).unwrap();
        assert_eq!(v["step"], "decision");
        assert_eq!(v["accepted"], false);
        assert_eq!(v["feed"]["headers"]["type"], "videos");
        assert!(step.to_string().contains("REFUSES"), "{step}");
    }
}
