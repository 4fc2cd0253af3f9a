//! `bulk`, `small`, `many-feeds`: replication disk to disk between two processes on
//! loopback, verified.
//!
//! The writer is this binary re-executed as the hidden `replic8 bench-peer` ([`serve`]).
//! Untimed, it writes its feeds straight into `<data dir>/feeds` with the store's owned
//! batches, starts a node on that directory (no DHT, no LAN), shares every feed in
//! [`NAMESPACE`] and prints one JSON line ([`PeerReady`]: address, key, each feed's length
//! and signed tree hash); it serves until its standard input closes.
//!
//! The reader is this process: a fresh node on disk that opens the namespace (accepting
//! everything offered) and connects to the writer's address with its key pinned. The
//! clock runs from the connect call until every feed has been reported synced at its full
//! length (every block verified against the signed head and stored). Then the replica is
//! checked: each feed's length, stored count and signed tree hash equal the writer's,
//! and its blocks, read back from disk, hash to that same tree.
//!
//! `peak_rss_bytes` is the reader's (this process, reset before the node starts);
//! `writer_peak_rss_bytes` the writer's while serving (it resets its own after writing);
//! `reader_cpu_seconds` and `writer_cpu_seconds` the CPU time each used while the clock
//! ran (all threads; on 2 cores, their sum near 2 × `seconds` means CPU-bound).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use replic8_store::storage::{DiskFeed, DiskStorage, SMALL_FEED_BYTES};

use replic8_store::{Feed, FeedSecret};
use serde::{Deserialize, Serialize};

use super::expect::{verify, wait_synced, ReaderReady};
use super::{
    cpu_seconds, peak_rss_bytes, reset_peak_rss, round, temp_dir, BenchError, BenchOptions, Row,
    Scenario,
};
use crate::app::demo::Pattern;
use replic8_node::config::LimitsSection;
use replic8_node::persist::{PersistedShare, PersistedState};
use replic8_node::{FeedKey, Headers, Node, PeerKey};

/// The namespace the writer shares its feeds in.
pub(crate) const NAMESPACE: &str = "replic8-bench";
/// How long replication may take before the bench gives up.
const SYNC_GUARD: Duration = Duration::from_secs(600);
/// Bytes per owned batch when the writer fills its feeds.
const PREP_BATCH: usize = 4 << 20;
/// Threads writing the writer's feeds: a feed in its own directory costs an fsync or
/// two, which the disk serves faster several at a time (1,000 feeds took 16.7 s on one
/// thread).
const PREP_THREADS: usize = 8;

/// What the writer process builds and serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerOptions {
    /// Feeds.
    pub(crate) feeds: u64,
    /// Bytes per feed.
    pub(crate) bytes_per_feed: u64,
    /// Bytes per block (the last block of a feed may be shorter).
    pub(crate) block_size: usize,
}

/// One feed the writer serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerFeed {
    /// The feed key, hex.
    pub(crate) key: String,
    /// Blocks.
    pub(crate) length: u64,
    /// Bytes.
    pub(crate) bytes: u64,
    /// The signed head's tree hash, hex.
    pub(crate) tree_hash: String,
}

/// The writer's line on standard output once it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PeerReady {
    /// Its QUIC address.
    pub(crate) addr: SocketAddr,
    /// Its node key, hex.
    pub(crate) key: String,
    /// Seconds the writer took to write its feeds (untimed by the bench).
    pub(crate) prep_seconds: f64,
    /// The feeds, each shared in [`NAMESPACE`].
    pub(crate) feeds: Vec<PeerFeed>,
}

fn store_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Store(e.to_string())
}

/// Writes the feeds into `feeds_dir` (a node's `<data dir>/feeds`) with owned batches,
/// [`PREP_THREADS`] feeds at a time. Appends are deferred: a feed that lives in its own
/// directory is flushed when written; small feeds share one database, where one flush
/// makes every earlier write durable, so each thread flushes only its last one (one
/// fsync per thread instead of one per feed: 10,000 feeds took 22 s with a flush each).
fn write_feeds(feeds_dir: &Path, options: PeerOptions) -> Result<Vec<PeerFeed>, BenchError> {
    let storage = DiskStorage::open(feeds_dir).map_err(store_err)?;
    let threads = (options.feeds as usize).clamp(1, PREP_THREADS);
    let small = options.bytes_per_feed + blocks_of(options) * 48 <= SMALL_FEED_BYTES;
    let results: Vec<Result<Vec<PeerFeed>, BenchError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let storage = &storage;
                scope.spawn(move || {
                    let mut pattern = Pattern::seeded(t as u64);
                    let mut last = None;
                    let mut written = Vec::new();
                    for _ in (t as u64..options.feeds).step_by(threads) {
                        let mut feed = write_feed(storage, &mut pattern, options)?;
                        written.push(describe(&feed)?);
                        if small {
                            last = Some(feed);
                        } else {
                            feed.flush().map_err(store_err)?;
                        }
                    }
                    if let Some(mut feed) = last {
                        feed.flush().map_err(store_err)?;
                    }
                    Ok(written)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(BenchError::Store("a writing thread panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(options.feeds as usize);
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

/// Blocks per feed (the last one may be shorter).
fn blocks_of(options: PeerOptions) -> u64 {
    options.bytes_per_feed.div_ceil(options.block_size as u64)
}

/// A new feed filled with `options.bytes_per_feed` bytes, not flushed yet.
fn write_feed(
    storage: &DiskStorage,
    pattern: &mut Pattern,
    options: PeerOptions,
) -> Result<Feed<DiskFeed>, BenchError> {
    let per_batch = (PREP_BATCH / options.block_size).max(1);
    let mut feed = Feed::create(storage, FeedSecret::generate()).map_err(store_err)?;
    let mut left = options.bytes_per_feed;
    while left > 0 {
        let mut batch = Vec::with_capacity(per_batch.min(blocks_of(options) as usize));
        while batch.len() < per_batch && left > 0 {
            let n = left.min(options.block_size as u64) as usize;
            batch.push(pattern.block(n));
            left -= n as u64;
        }
        feed.append_batch_deferred(&batch).map_err(store_err)?;
    }
    Ok(feed)
}

fn describe(feed: &Feed<DiskFeed>) -> Result<PeerFeed, BenchError> {
    let head = feed
        .head()
        .ok_or_else(|| BenchError::Store("a written feed has no head".into()))?;
    Ok(PeerFeed {
        key: hex::encode(feed.key().as_bytes()),
        length: feed.length(),
        bytes: feed.byte_length(),
        tree_hash: hex::encode(head.tree_hash),
    })
}

/// The writer (`replic8 bench-peer`): writes the feeds under `dir`, serves them on
/// 127.0.0.1 and prints a [`PeerReady`] line; returns when standard input closes.
pub(crate) async fn serve(dir: &Path, options: PeerOptions) -> Result<(), BenchError> {
    if options.block_size == 0 || options.block_size > replic8_store::MAX_BLOCK_SIZE {
        return Err(BenchError::Options(format!(
            "block size must be 1..={}",
            replic8_store::MAX_BLOCK_SIZE
        )));
    }
    let start = Instant::now();
    let feeds_dir = dir.join(replic8_node::persist::FEEDS_DIR);
    let feeds = tokio::task::spawn_blocking(move || write_feeds(&feeds_dir, options))
        .await
        .map_err(|e| BenchError::Peer(e.to_string()))??;
    // The shares go into the node's state file in one write (a `share` call per feed
    // rewrites the file each time: 1,000 feeds took ~20 s); the node shares them again
    // when it starts, and the `share` calls below then change nothing on disk.
    // Each feed once, so the shares go in as they are (`PersistedState::share` looks
    // for an earlier share of the same feed: quadratic in the feeds).
    let mut state = PersistedState::default();
    for f in &feeds {
        state.shares.push(PersistedShare {
            namespace: NAMESPACE.to_owned(),
            feed: parse_feed(&f.key)?.0,
            headers: Default::default(),
        });
    }
    let state_dir = dir.to_owned();
    tokio::task::spawn_blocking(move || state.save(&state_dir))
        .await
        .map_err(|e| BenchError::Peer(e.to_string()))?
        .map_err(|e| BenchError::Store(e.to_string()))?;
    let prep_seconds = start.elapsed().as_secs_f64();
    reset_peak_rss();
    let node = Node::builder()
        .data_dir(dir)
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .dht(false)
        .lan(false)
        .spawn()
        .await?;
    let served = async {
        // The node shared every feed of its state file as it started, in the order of
        // the file; the feed store answers in the order it is asked, so once this share
        // of the last one is answered, every feed is offered to the sessions to come.
        if let Some(f) = feeds.last() {
            node.share(NAMESPACE, parse_feed(&f.key)?, Headers::new())
                .await?;
        }
        let ready = PeerReady {
            addr: node.local_addr(),
            key: node.key().to_string(),
            prep_seconds: round(prep_seconds, 3),
            feeds,
        };
        let line = serde_json::to_string(&ready).map_err(|e| BenchError::Peer(e.to_string()))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(BenchError::io("stdout"))?;
        // Not kept while serving: at 100,000 feeds the line and its feeds are ~45 MB of
        // the writer's measured peak that no node holds.
        drop((out, line, ready));
        // Serve until the reader closes our standard input.
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            std::io::stdin().lock().read_to_end(&mut sink)
        })
        .await
        .map_err(|e| BenchError::Peer(e.to_string()))?
        .map_err(BenchError::io("stdin"))?;
        Ok::<_, BenchError>(())
    }
    .await;
    node.close().await;
    served
}

pub(crate) fn parse_feed(hex_key: &str) -> Result<FeedKey, BenchError> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut key)
        .map_err(|_| BenchError::Peer(format!("bad feed key {hex_key:?}")))?;
    Ok(FeedKey(key))
}

/// A child process of the bench (this binary re-executed), its standard input and
/// output piped; killed if dropped before it was waited for.
pub(crate) struct BenchChild {
    pub(crate) child: Child,
}

impl BenchChild {
    /// Starts `exe` with `args` (standard error inherited); the child and its standard
    /// output, read line by line.
    pub(crate) fn spawn(
        exe: &Path,
        args: &[OsString],
    ) -> Result<(BenchChild, BufReader<ChildStdout>), BenchError> {
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(BenchError::io(format!("cannot start {}", exe.display())))?;
        let mut child = BenchChild { child };
        let stdout = child
            .child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Peer("no stdout".into()))?;
        Ok((child, BufReader::new(stdout)))
    }

    /// Its first line (what it prints once it serves), trimmed; an error naming its exit
    /// status if it ends before.
    pub(crate) fn ready_line(
        &mut self,
        stdout: &mut BufReader<ChildStdout>,
    ) -> Result<String, BenchError> {
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .map_err(BenchError::io("reading a child's ready line"))?;
        if line.trim().is_empty() {
            let status = self.child.wait().map_err(BenchError::io("child"))?;
            return Err(BenchError::Peer(format!(
                "exited ({status}) before serving"
            )));
        }
        Ok(line.trim().to_owned())
    }
}

impl std::fmt::Debug for BenchChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BenchChild({})", self.child.id())
    }
}

impl Drop for BenchChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start_writer(
    exe: &Path,
    dir: &Path,
    options: PeerOptions,
) -> Result<(BenchChild, ReaderReady), BenchError> {
    let args: Vec<OsString> = vec![
        "bench-peer".into(),
        "--dir".into(),
        dir.into(),
        "--feeds".into(),
        options.feeds.to_string().into(),
        "--bytes-per-feed".into(),
        options.bytes_per_feed.to_string().into(),
        "--block-size".into(),
        options.block_size.to_string().into(),
    ];
    let (mut writer, mut stdout) = BenchChild::spawn(exe, &args)?;
    let line = writer.ready_line(&mut stdout)?;
    let ready: ReaderReady = serde_json::from_str(&line).map_err(|e| {
        let start: String = line.chars().take(200).collect();
        BenchError::Peer(format!("bad ready line {start:?}...: {e}"))
    })?;
    Ok((writer, ready))
}

/// What one replication measured.
#[derive(Debug, Clone)]
pub(crate) struct Replicated {
    /// Seconds from connect to every feed synced at full length.
    pub(crate) seconds: f64,
    /// Bytes replicated.
    pub(crate) bytes: u64,
    /// Blocks replicated.
    pub(crate) blocks: u64,
    /// The reader's peak RSS (this process, from the reader node's start).
    pub(crate) reader_peak_rss: Option<u64>,
    /// The writer's peak RSS while serving.
    pub(crate) writer_peak_rss: Option<u64>,
    /// CPU seconds the reader used meanwhile (all its threads).
    pub(crate) reader_cpu: Option<f64>,
    /// CPU seconds the writer used meanwhile.
    pub(crate) writer_cpu: Option<f64>,
    /// The writer's untimed preparation.
    pub(crate) prep_seconds: f64,
    /// Files and directories under the reader's feed storage once it is closed.
    pub(crate) reader_files: u64,
}

/// Files and directories under `dir`, counted recursively (0 if it cannot be read).
fn entries_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => 1 + entries_under(&e.path()),
            _ => 1,
        })
        .sum()
}

/// Starts a writer with `options` under `dir`, replicates everything it serves into a
/// fresh node under `dir`, verifies the replica, stops the writer.
pub(crate) async fn replicate(
    exe: &Path,
    dir: &Path,
    options: PeerOptions,
) -> Result<Replicated, BenchError> {
    let writer_dir = dir.join("writer");
    let (exe2, wd) = (exe.to_owned(), writer_dir.clone());
    let (mut writer, ready) =
        tokio::task::spawn_blocking(move || start_writer(&exe2, &wd, options))
            .await
            .map_err(|e| BenchError::Peer(e.to_string()))??;
    let writer_key: PeerKey = ready
        .key
        .parse()
        .map_err(|_| BenchError::Peer(format!("bad node key {:?}", ready.key)))?;
    let expected = &ready.feeds;
    let bytes: u64 = expected.iter().map(|f| f.bytes).sum();
    let blocks: u64 = expected.iter().map(|f| f.length).sum();

    reset_peak_rss();
    // The store's default quotas (1,024 new feeds per peer and hour) would refuse most
    // of a many-feeds writer's offer: this reader takes everything it is offered.
    let limits = LimitsSection {
        new_feeds_per_peer: Some(u32::try_from(options.feeds).unwrap_or(u32::MAX)),
        max_replicas: Some(options.feeds),
        ..LimitsSection::default()
    };
    let reader = Node::builder()
        .data_dir(dir.join("reader"))
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .dht(false)
        .lan(false)
        .limits(limits)
        .spawn()
        .await?;
    let result = async {
        reader
            .open_namespace(NAMESPACE, None, replic8_node::NamespacePolicy::accept_all())
            .await?;
        let events = reader.subscribe();
        let writer_pid = writer.child.id();
        let cpu_before = (cpu_seconds(None), cpu_seconds(Some(writer_pid)));
        let start = Instant::now();
        reader.connect(ready.addr, Some(writer_key)).await?;
        tokio::time::timeout(SYNC_GUARD, wait_synced(&reader, events, expected, blocks))
            .await
            .map_err(|_| {
                BenchError::Timeout(format!("replication did not finish within {SYNC_GUARD:?}"))
            })??;
        let seconds = start.elapsed().as_secs_f64();
        let since = |before: Option<f64>, now: Option<f64>| Some(now? - before?);
        let reader_cpu = since(cpu_before.0, cpu_seconds(None));
        let writer_cpu = since(cpu_before.1, cpu_seconds(Some(writer_pid)));
        let reader_peak_rss = peak_rss_bytes(None);
        let writer_peak_rss = peak_rss_bytes(Some(writer_pid));
        verify(&reader, expected).await?;
        Ok::<_, BenchError>(Replicated {
            seconds,
            bytes,
            blocks,
            reader_peak_rss,
            writer_peak_rss,
            reader_cpu,
            writer_cpu,
            prep_seconds: ready.prep_seconds,
            reader_files: 0,
        })
    }
    .await;
    reader.close().await;
    let result = result.map(|r| Replicated {
        reader_files: entries_under(&dir.join("reader").join(replic8_node::persist::FEEDS_DIR)),
        ..r
    });
    // Closing its standard input tells the writer to stop.
    drop(writer.child.stdin.take());
    let status = tokio::task::spawn_blocking(move || {
        let status = writer.child.wait();
        drop(writer);
        status
    })
    .await
    .map_err(|e| BenchError::Peer(e.to_string()))?
    .map_err(BenchError::io("waiting for the writer"))?;
    let replicated = result?;
    if !status.success() {
        return Err(BenchError::Peer(format!("exited with {status}")));
    }
    Ok(replicated)
}

/// The scenario's defaults: (feeds, bytes per feed, block size).
fn shape(scenario: Scenario, options: &BenchOptions) -> Result<PeerOptions, BenchError> {
    let (feeds, bytes_per_feed, block_size) = match scenario {
        Scenario::Bulk => (
            1,
            options.size.unwrap_or(256 << 20),
            options.block_size.unwrap_or(64 << 10),
        ),
        Scenario::Small => (
            1,
            options.size.unwrap_or(256 << 20),
            options.block_size.unwrap_or(1 << 10),
        ),
        Scenario::ManyFeeds => {
            let block_size = options.block_size.unwrap_or(1 << 10);
            let blocks = options.blocks.unwrap_or(100);
            (
                options.feeds.unwrap_or(1000),
                blocks * block_size as u64,
                block_size,
            )
        }
        other => {
            return Err(BenchError::Options(format!(
                "{} is not a replication scenario",
                other.name()
            )))
        }
    };
    if feeds == 0 || bytes_per_feed == 0 {
        return Err(BenchError::Options(format!(
            "{}: feeds and size must be more than 0",
            scenario.name()
        )));
    }
    Ok(PeerOptions {
        feeds,
        bytes_per_feed,
        block_size,
    })
}

fn peer_exe(options: &BenchOptions) -> Result<PathBuf, BenchError> {
    match &options.peer_exe {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe().map_err(BenchError::io("this executable's path")),
    }
}

/// Runs `bulk`, `small` or `many-feeds`. `bulk` also runs `raw` first with the same byte
/// count and reports `raw_quic_mb_per_s`, `raw_quic_cpu_seconds` (both ends, in this
/// process) and `ratio`.
pub(crate) async fn run(scenario: Scenario, options: &BenchOptions) -> Result<Row, BenchError> {
    let shape = shape(scenario, options)?;
    let raw = if scenario == Scenario::Bulk {
        Some(super::raw::transfer(shape.bytes_per_feed).await?)
    } else {
        None
    };
    let exe = peer_exe(options)?;
    let dir = temp_dir(options, &format!("replic8-bench-{}-", scenario.name()))?;
    let r = replicate(&exe, dir.path(), shape).await?;
    let mut row = Row::new(
        scenario.name(),
        r.bytes,
        r.blocks,
        r.seconds,
        r.reader_peak_rss,
    )
    .with("writer_peak_rss_bytes", r.writer_peak_rss)
    .with("reader_cpu_seconds", r.reader_cpu.map(|c| round(c, 2)))
    .with("writer_cpu_seconds", r.writer_cpu.map(|c| round(c, 2)))
    .with("feeds", shape.feeds)
    .with("block_size", shape.block_size)
    .with("verified", true)
    .with("prep_seconds", r.prep_seconds)
    .with("reader_files", r.reader_files)
    .with(
        "files_per_feed",
        round(r.reader_files as f64 / shape.feeds as f64, 6),
    );
    if let Some(raw) = raw {
        let raw_mb = raw.mb_per_s();
        let mb = row.f64("mb_per_s");
        row = row
            .with("raw_quic_mb_per_s", round(raw_mb, 3))
            .with(
                "raw_quic_cpu_seconds",
                raw.cpu.map(|c| round(c.as_secs_f64(), 2)),
            )
            .with("ratio", round(mb / raw_mb.max(1e-9), 4));
    }
    Ok(row)
}
