//! `replic8 demo`: the whole mission offline on one machine.
//!
//! A private Mainline DHT (`mainline::Testnet`, 127.0.0.1 only) and three nodes with
//! on-disk storage in a temporary directory. The writer creates a feed, appends the
//! data and shares it in the namespace [`NAMESPACE`] with headers; every node joins the
//! feed's discovery key; the two readers find the writer (and each other) on the DHT,
//! connect, are offered the feed, accept it because its headers say it is the demo's
//! (their accept policy looks at the headers), and replicate it, every block verified
//! against the writer's signed head before it is stored. Finally each reader's copy is
//! read back and compared with what was written.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::node::{FeedError, JoinError, JoinOptions, Node, NodeHandle, SpawnError};
use crate::{AcceptPolicy, FeedKey, Headers, NamespacePolicy, NodeEvent};

/// The namespace the demo feed is shared in.
pub const NAMESPACE: &str = "replic8-demo";
/// DHT nodes in the demo's private network: enough that records spread over several.
const TESTNET_NODES: usize = 8;
/// Blocks per append batch (one signature per batch).
const APPEND_BATCH: usize = 64;
/// How long the readers get to find the writer and download everything.
const SYNC_GUARD: Duration = Duration::from_secs(180);

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Bytes of feed data to write and replicate.
    pub bytes: usize,
    /// Bytes per block.
    pub block_size: usize,
    /// Draw progress bars (on stderr, only if it is a terminal).
    pub progress: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            bytes: 32 << 20,
            block_size: 64 << 10,
            progress: true,
        }
    }
}

/// What one node did.
#[derive(Debug, Clone, Serialize)]
pub struct DemoNode {
    /// `writer`, `reader-1`, `reader-2`.
    pub name: String,
    /// Its key, short form.
    pub key: String,
    /// Peers connected at the end.
    pub peers: usize,
    /// Feed bytes received, verified and stored.
    pub bytes_in: u64,
    /// Feed bytes sent.
    pub bytes_out: u64,
}

/// The demo's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    /// The feed's public key, hex.
    pub feed: String,
    /// Blocks in the feed.
    pub blocks: u64,
    /// Bytes in the feed.
    pub bytes: u64,
    /// Each node.
    pub nodes: Vec<DemoNode>,
    /// Seconds from the joins to both readers holding every block.
    pub seconds: f64,
    /// The feed's bytes delivered to the two readers, per second of `seconds`, in MB
    /// (10^6 bytes). A reader may receive some blocks twice (from the writer and from
    /// the other reader); `bytes_in` counts those, this does not.
    pub mb_per_s: f64,
    /// Both readers' copies were read back and equal what the writer wrote.
    pub verified: bool,
}

/// What the demo can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
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
    /// A reader's copy differs from what was written.
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

/// The demo's data: `bytes` in blocks of `block_size` (the last may be shorter).
fn make_blocks(bytes: usize, block_size: usize) -> Vec<Vec<u8>> {
    let mut pattern = Pattern::new();
    let mut out = Vec::with_capacity(bytes.div_ceil(block_size));
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block_size);
        out.push(pattern.block(n));
        left -= n;
    }
    out
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

fn bar(multi: &MultiProgress, len: u64, prefix: &str) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(len));
    let style = ProgressStyle::with_template(
        "{prefix:>9} [{bar:36.cyan/blue}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_owned());
    bar
}

/// Waits until the reader holds every block of `feed`, advancing `bar` as blocks come.
async fn follow(
    name: &str,
    mut events: broadcast::Receiver<NodeEvent>,
    feed: FeedKey,
    blocks: u64,
    bar: ProgressBar,
) -> Result<(), DemoError> {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(NodeEvent::FeedAccepted { peer, .. }) => {
                    bar.set_message(format!("accepted from {}", peer.fmt_short()));
                }
                Ok(NodeEvent::Downloaded { bytes, feed: f, .. }) if f == feed => bar.inc(bytes),
                Ok(NodeEvent::FeedSynced {
                    feed: f, length, ..
                }) if f == feed && length == blocks => {
                    return;
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    };
    tokio::time::timeout(SYNC_GUARD, wait)
        .await
        .map_err(|_| DemoError::Timeout(name.to_owned()))?;
    bar.set_position(bar.length().unwrap_or(0));
    bar.finish_with_message("synced");
    Ok(())
}

/// Reads the reader's copy back and compares it with `data`.
async fn verify(
    name: &str,
    node: &NodeHandle,
    feed: FeedKey,
    data: &[Vec<u8>],
) -> Result<(), DemoError> {
    let info = node.open_feed(feed).await?;
    let n = data.len() as u64;
    if info.length != n || info.stored != n || info.writable {
        return Err(DemoError::Mismatch(format!(
            "{name}: holds {} of {} blocks (length {}, writable {})",
            info.stored, n, info.length, info.writable
        )));
    }
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
        start = end;
    }
    Ok(())
}

/// Runs the demo.
pub async fn run(options: DemoOptions) -> Result<DemoSummary, DemoError> {
    if options.block_size == 0 || options.block_size > replic8_store::MAX_BLOCK_SIZE {
        return Err(DemoError::Options(format!(
            "block size must be 1..={} bytes",
            replic8_store::MAX_BLOCK_SIZE
        )));
    }
    if options.bytes == 0 {
        return Err(DemoError::Options("size must be more than 0".into()));
    }
    let multi = MultiProgress::with_draw_target(if options.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let testnet = tokio::task::spawn_blocking(|| mainline::Testnet::builder(TESTNET_NODES).build())
        .await
        .map_err(|e| DemoError::Testnet(std::io::Error::other(e.to_string())))?
        .map_err(DemoError::Testnet)?;
    let tmp = tempfile::Builder::new()
        .prefix("replic8-demo-")
        .tempdir()
        .map_err(DemoError::TempDir)?;
    let _ = multi.println(format!(
        "local DHT: {} nodes on 127.0.0.1; data in {}",
        TESTNET_NODES,
        tmp.path().display()
    ));

    // The readers accept only feeds whose headers say they are the demo's.
    let demo_only: AcceptPolicy = AcceptPolicy::Headers(Arc::new(|h: &Headers| {
        h.get("app") == Some(b"replic8".as_slice())
    }));
    let writer = spawn_node(&tmp.path().join("writer"), &testnet.bootstrap).await?;
    let reader1 = spawn_node(&tmp.path().join("reader-1"), &testnet.bootstrap).await?;
    let reader2 = spawn_node(&tmp.path().join("reader-2"), &testnet.bootstrap).await?;

    // Write.
    let data = make_blocks(options.bytes, options.block_size);
    let total = options.bytes as u64;
    let feed = writer.create_feed().await?;
    let write_bar = bar(&multi, total, "write");
    for batch in data.chunks(APPEND_BATCH) {
        writer.append(feed, batch.to_vec()).await?;
        write_bar.inc(batch.iter().map(|b| b.len() as u64).sum());
    }
    write_bar.finish_with_message("signed");
    let mut headers = Headers::new();
    let entries = [
        ("app", "replic8".to_string()),
        ("title", "demo feed".to_string()),
        ("blocks", data.len().to_string()),
    ];
    for (k, v) in entries {
        headers
            .insert(k, v.into_bytes())
            .map_err(|e| DemoError::Options(e.to_string()))?;
    }
    writer.share(NAMESPACE, feed, headers).await?;
    let policy = NamespacePolicy {
        accept: demo_only,
        forward: true,
    };
    reader1
        .open_namespace(NAMESPACE, None, policy.clone())
        .await?;
    reader2.open_namespace(NAMESPACE, None, policy).await?;

    // Discover and replicate.
    let blocks = data.len() as u64;
    let bars = [
        bar(&multi, total, "reader-1"),
        bar(&multi, total, "reader-2"),
    ];
    let follow1 = follow(
        "reader-1",
        reader1.subscribe(),
        feed,
        blocks,
        bars[0].clone(),
    );
    let follow2 = follow(
        "reader-2",
        reader2.subscribe(),
        feed,
        blocks,
        bars[1].clone(),
    );
    let start = Instant::now();
    let join = JoinOptions::default();
    let (w, r1, r2) = tokio::join!(
        writer.join_feed(feed, join),
        reader1.join_feed(feed, join),
        reader2.join_feed(feed, join)
    );
    w?;
    r1?;
    r2?;
    let (f1, f2) = tokio::join!(follow1, follow2);
    f1?;
    f2?;
    let seconds = start.elapsed().as_secs_f64();

    verify("reader-1", &reader1, feed, &data).await?;
    verify("reader-2", &reader2, feed, &data).await?;

    let mut nodes = Vec::new();
    for (name, node) in [
        ("writer", &writer),
        ("reader-1", &reader1),
        ("reader-2", &reader2),
    ] {
        let stats = node.feed_stats().await.unwrap_or_default();
        nodes.push(DemoNode {
            name: name.to_owned(),
            key: node.key().fmt_short(),
            peers: node.peers().await.map(|p| p.len()).unwrap_or(0),
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
        });
    }
    let _ = tokio::join!(writer.close(), reader1.close(), reader2.close());
    drop(testnet);
    Ok(DemoSummary {
        feed: hex::encode(feed.0),
        blocks,
        bytes: total,
        nodes,
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
}
