//! `swarm`: many nodes on loopback, one feed fetched by key by all but its writer.
//!
//! Each node is a process of its own (this binary re-executed as the hidden
//! `replic8 bench-swarm-node`, [`node_main`]), so that its resident set is its own: a
//! node on disk under a temporary directory, listening on 127.0.0.1, discovering through
//! a private DHT ([`KrpcTestnet`], run by this process; never the public DHT, no LAN),
//! with the node's default limits (`--max-peers-per-topic` only for tests). Untimed, the
//! writer appends `--size` bytes in 64 KiB blocks to a new feed and joins its discovery
//! key; every other node starts and says it is ready.
//!
//! The clock starts when this process tells every reader `get KEY LENGTH` at once: each
//! one does what `replic8 feed get KEY` does (`NodeHandle::get_feed`: a replica in the
//! public namespace, the discovery key joined, announce and look up) and reports when it
//! holds every block verified (`FeedSynced` at full length), with the milliseconds to its
//! first connected peer (discovery and connect), to its first verified block and to
//! sync, the blocks it verified from each peer, and its signed tree hash, checked
//! against the writer's. The swarm's time is the latest of the readers' syncs, each
//! from the moment it was told. A reader that got the feed serves it on to the peers
//! that ask by discovery key (decision 085), which is what lets the feed reach every node
//! when each dials only `max_peers_per_topic` of the others.
//!
//! Once all are in sync (or the guard passes: an error naming how many were), every node
//! reports its connections (now, in and out, and the most it had at once) and this
//! process reads each one's peak and current resident set and thread count from `/proc`.
//!
//! The row: `seconds` to all in sync, `bytes` and `blocks` delivered (the feed times the
//! readers); `peak_rss_bytes` is the largest peak of one node; per node the median and
//! max of peak RSS, RSS at the end, connections and threads; of the RSS at the end, the
//! file pages (the binary and its libraries, the same pages in every node process:
//! median) and the anonymous ones (each node's own: median and max); the sums over all
//! nodes;
//! the writer's peak RSS, and the most bytes of data answers one node held for peers at
//! once (its feed store's `serve_bytes_peak`, bounded by `serve_bytes_in_flight`) and
//! the most bytes received and not yet verified one node held at once
//! (`receive_bytes_peak`, bounded by `receive_bytes_held` plus a frame per stream);
//! the split of each reader's time into connect (to its first peer) and data (from there
//! to sync), median and max, with the time to its first verified block and the median
//! time to sync; where the blocks came from (the share the writer sent, how many readers
//! got any from it, how many peers fed each reader, the block bytes all nodes sent per
//! byte the readers needed); DHT queries per node; the CPU seconds of all nodes since
//! they started, and per node from `get` to the reports (median, max, the writer's); the
//! node's limits (`max_peers`, `max_peers_per_topic`, `max_peers_per_ip`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::ChildStdout;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::replicate::BenchChild;
use super::{cpu_seconds, median_max, round, temp_dir, BenchError, BenchOptions, Row};
use replic8_node::config::LimitsSection;
use replic8_node::KrpcTestnet;

/// Nodes, the writer included.
pub(crate) const DEFAULT_NODES: usize = 100;
/// Bytes of the feed.
pub(crate) const DEFAULT_SIZE: u64 = 16 << 20;
/// DHT nodes of the private testnet the nodes bootstrap from (they join it as DHT
/// servers themselves).
pub(crate) const DEFAULT_TESTNET_NODES: usize = 20;
/// How long the swarm may take to be in sync.
pub(crate) const DEFAULT_GUARD: Duration = Duration::from_secs(180);
/// How long the nodes may take to report and to exit once told.
const REPORT_GUARD: Duration = Duration::from_secs(30);

mod node;
use self::node::NodeLine;
pub(crate) use self::node::{node_main, SwarmNodeArgs};

/// A node process as this process sees it.
#[derive(Debug)]
struct Member {
    child: BenchChild,
    pid: u32,
    stdin: Option<std::process::ChildStdin>,
}

impl Member {
    /// Sends one command line; an error names the node.
    fn send(&mut self, index: usize, command: &str) -> Result<(), BenchError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| BenchError::Peer(format!("node {index}: standard input closed")))?;
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .map_err(BenchError::io(format!("node {index}: {command}")))
    }
}

/// Every further line of the node processes, as (node index, line).
type Lines = mpsc::UnboundedReceiver<(usize, String)>;

/// Starts `count` node processes (`write` bytes on the first if given), reads each ready
/// line, then forwards every further line of each into one channel.
fn start_members(
    exe: &Path,
    dir: &Path,
    bootstrap: &[String],
    count: usize,
    write: Option<u64>,
    max_peers_per_topic: Option<usize>,
) -> Result<(Vec<Member>, Vec<NodeLine>, Lines), BenchError> {
    let mut started = Vec::with_capacity(count);
    for i in 0..count {
        let mut args: Vec<OsString> = vec![
            "bench-swarm-node".into(),
            "--dir".into(),
            dir.join(format!("node-{i}")).into(),
            "--bootstrap".into(),
            bootstrap.join(",").into(),
        ];
        if let (0, Some(bytes)) = (i, write) {
            args.extend(["--write".into(), bytes.to_string().into()]);
        }
        if let Some(cap) = max_peers_per_topic {
            args.extend(["--max-peers-per-topic".into(), cap.to_string().into()]);
        }
        started.push(BenchChild::spawn(exe, &args)?);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut members = Vec::with_capacity(count);
    let mut ready = Vec::with_capacity(count);
    for (i, (mut child, mut stdout)) in started.into_iter().enumerate() {
        let line = child
            .ready_line(&mut stdout)
            .map_err(|e| BenchError::Peer(format!("node {i}: {e}")))?;
        let parsed: NodeLine = serde_json::from_str(&line)
            .map_err(|e| BenchError::Peer(format!("node {i}: bad line {line:?}: {e}")))?;
        if let NodeLine::Failed { error } = parsed {
            return Err(BenchError::Peer(format!("node {i}: {error}")));
        }
        ready.push(parsed);
        forward_lines(i, stdout, tx.clone());
        let pid = child.child.id();
        let stdin = child.child.stdin.take();
        members.push(Member { child, pid, stdin });
    }
    Ok((members, ready, rx))
}

/// A thread that sends each line of `stdout` to `tx` as (`index`, line) until it ends.
fn forward_lines(
    index: usize,
    stdout: BufReader<ChildStdout>,
    tx: mpsc::UnboundedSender<(usize, String)>,
) {
    let spawned = std::thread::Builder::new()
        .name(format!("swarm-node-{index}"))
        .stack_size(64 << 10)
        .spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                if tx.send((index, line)).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(index, error = %e, "cannot read a node's output");
    }
}

/// Waits until `want` took a line from every node in `from`, or `guard` passed; the
/// nodes it took one from. A `Failed` line or a line that does not parse is an error.
async fn collect<T>(
    rx: &mut Lines,
    from: &[usize],
    guard: Duration,
    mut want: impl FnMut(usize, NodeLine) -> Option<T>,
) -> Result<HashMap<usize, T>, BenchError> {
    let mut got = HashMap::new();
    let deadline = tokio::time::Instant::now() + guard;
    while got.len() < from.len() {
        let next = tokio::time::timeout_at(deadline, rx.recv()).await;
        let Ok(Some((i, line))) = next else {
            break;
        };
        let parsed: NodeLine = serde_json::from_str(&line)
            .map_err(|e| BenchError::Peer(format!("node {i}: bad line {line:?}: {e}")))?;
        if let NodeLine::Failed { error } = &parsed {
            return Err(BenchError::Peer(format!("node {i}: {error}")));
        }
        if from.contains(&i) && !got.contains_key(&i) {
            if let Some(t) = want(i, parsed) {
                got.insert(i, t);
            }
        }
    }
    Ok(got)
}

/// A field of `/proc/<pid>/status` in KiB (`VmHWM`, `VmRSS`) or as a count (`Threads`).
fn status_number(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Median and max of whole numbers, as f64; zeros if empty.
fn spread(values: impl IntoIterator<Item = u64>) -> (f64, f64) {
    let mut v: Vec<f64> = values.into_iter().map(|x| x as f64).collect();
    median_max(&mut v).unwrap_or((0.0, 0.0))
}

/// What the swarm measured.
#[derive(Debug, Clone)]
struct Measured {
    seconds: f64,
    connect_ms: Vec<f64>,
    first_block_ms: Vec<f64>,
    synced_ms: Vec<f64>,
    data_ms: Vec<f64>,
    /// Blocks the readers verified from the writer, and from anyone.
    blocks_from_writer: u64,
    blocks_total: u64,
    /// Readers that got at least one block from the writer.
    fed_by_writer: usize,
    /// Per reader, how many peers gave it blocks.
    sources: Vec<u64>,
    peak_rss: Vec<u64>,
    end_rss: Vec<u64>,
    /// Of `end_rss`, the pages of files (the binary's code and data, the libraries),
    /// which every node process shares with the others, and the anonymous ones, its own.
    end_rss_file: Vec<u64>,
    end_rss_anon: Vec<u64>,
    threads: Vec<u64>,
    peers: Vec<u64>,
    peers_max: Vec<u64>,
    inbound_max: u64,
    refused: u64,
    /// Block bytes all nodes sent, and DHT queries each sent and answered.
    bytes_served: u64,
    /// Block bytes all nodes received and stored.
    bytes_stored: u64,
    /// The most bytes of data answers one node held for peers at once.
    serve_peak_max: u64,
    /// The most bytes received and not yet verified one node held at once.
    receive_peak_max: u64,
    dht_queries: Vec<u64>,
    cpu_seconds: f64,
    /// Per node, CPU seconds from `get` to the reports; the writer's first.
    timed_cpu: Vec<f64>,
}

/// Runs the scenario.
pub(crate) async fn run(options: &BenchOptions) -> Result<Row, BenchError> {
    let nodes = options.nodes.unwrap_or(DEFAULT_NODES);
    let size = options.size.unwrap_or(DEFAULT_SIZE);
    if nodes < 2 || size == 0 {
        return Err(BenchError::Options(
            "swarm: at least 2 nodes and a size above 0".into(),
        ));
    }
    let testnet_nodes = options
        .testnet_nodes
        .unwrap_or(DEFAULT_TESTNET_NODES)
        .max(1);
    let guard = options.guard.unwrap_or(DEFAULT_GUARD);
    let exe = match &options.peer_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(BenchError::io("this executable's path"))?,
    };
    let dir = temp_dir(options, "replic8-bench-swarm-")?;
    let testnet = tokio::task::spawn_blocking(move || KrpcTestnet::new(testnet_nodes))
        .await
        .map_err(|e| BenchError::Peer(e.to_string()))?
        .map_err(BenchError::io("testnet"))?;
    let (dir_path, bootstrap) = (dir.path().to_owned(), testnet.bootstrap.clone());
    let cap = options.max_peers_per_topic;
    let (mut members, ready, mut rx) = tokio::task::spawn_blocking(move || {
        start_members(&exe, &dir_path, &bootstrap, nodes, Some(size), cap)
    })
    .await
    .map_err(|e| BenchError::Peer(e.to_string()))??;
    let result = measure(&mut members, &ready, &mut rx, guard).await;
    // Closing their standard input stops the nodes; wait for them (killed if they hang).
    for m in &mut members {
        drop(m.stdin.take());
    }
    let stopped = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + REPORT_GUARD;
        for m in &mut members {
            while let Ok(None) = m.child.child.try_wait() {
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        drop(members);
    })
    .await;
    drop(testnet);
    let m = result?;
    stopped.map_err(|e| BenchError::Peer(e.to_string()))?;
    let feed = match &ready[0] {
        NodeLine::Ready {
            feed: Some(feed), ..
        } => feed.clone(),
        _ => return Err(BenchError::Peer("the writer named no feed".into())),
    };
    let readers = (nodes - 1) as u64;
    let limits = LimitsSection::default();
    let mib = |b: f64| round(b / (1 << 20) as f64, 1);
    let (peak_med, peak_max) = spread(m.peak_rss.iter().copied());
    let (end_med, end_max) = spread(m.end_rss.iter().copied());
    let (end_file_med, _) = spread(m.end_rss_file.iter().copied());
    let (end_anon_med, end_anon_max) = spread(m.end_rss_anon.iter().copied());
    let (conn_med, conn_max) = spread(m.peers.iter().copied());
    let (connect_med, connect_max) = median_max(&mut m.connect_ms.clone()).unwrap_or_default();
    let (data_med, data_max) = median_max(&mut m.data_ms.clone()).unwrap_or_default();
    let (block_med, block_max) = median_max(&mut m.first_block_ms.clone()).unwrap_or_default();
    let (synced_med, _) = median_max(&mut m.synced_ms.clone()).unwrap_or_default();
    let (threads_med, threads_max) = spread(m.threads.iter().copied());
    let (sources_med, sources_max) = spread(m.sources.iter().copied());
    let (cpu_med, cpu_max) = median_max(&mut m.timed_cpu.clone()).unwrap_or_default();
    Ok(Row::new(
        "swarm",
        feed.bytes * readers,
        feed.length * readers,
        m.seconds,
        Some(peak_max as u64),
    )
    .with("nodes", nodes)
    .with("feed_bytes", feed.bytes)
    .with("verified", true)
    .with("connect_seconds_median", round(connect_med / 1e3, 3))
    .with("connect_seconds_max", round(connect_max / 1e3, 3))
    .with("data_seconds_median", round(data_med / 1e3, 3))
    .with("data_seconds_max", round(data_max / 1e3, 3))
    .with("first_block_seconds_median", round(block_med / 1e3, 3))
    .with("first_block_seconds_max", round(block_max / 1e3, 3))
    .with("synced_seconds_median", round(synced_med / 1e3, 3))
    .with(
        "from_writer_share",
        round(
            m.blocks_from_writer as f64 / m.blocks_total.max(1) as f64,
            3,
        ),
    )
    .with("readers_fed_by_writer", m.fed_by_writer)
    .with("sources_per_reader_median", sources_med)
    .with("sources_per_reader_max", sources_max)
    .with("node_cpu_seconds_median", round(cpu_med, 2))
    .with("node_cpu_seconds_max", round(cpu_max, 2))
    .with(
        "writer_cpu_seconds",
        round(m.timed_cpu.first().copied().unwrap_or(0.0), 2),
    )
    .with("node_peak_rss_mib_median", mib(peak_med))
    .with("node_peak_rss_mib_max", mib(peak_max))
    .with(
        "writer_peak_rss_mib",
        mib(m.peak_rss.first().copied().unwrap_or(0) as f64),
    )
    .with("node_serve_peak_mib_max", mib(m.serve_peak_max as f64))
    .with("node_receive_peak_mib_max", mib(m.receive_peak_max as f64))
    .with("node_end_rss_mib_median", mib(end_med))
    .with("node_end_rss_mib_max", mib(end_max))
    .with("node_end_rss_file_mib_median", mib(end_file_med))
    .with("node_end_rss_anon_mib_median", mib(end_anon_med))
    .with("node_end_rss_anon_mib_max", mib(end_anon_max))
    .with(
        "total_peak_rss_mib",
        mib(m.peak_rss.iter().sum::<u64>() as f64),
    )
    .with(
        "total_end_rss_mib",
        mib(m.end_rss.iter().sum::<u64>() as f64),
    )
    .with("node_threads_median", threads_med)
    .with("node_threads_max", threads_max)
    .with(
        "connections_min",
        m.peers.iter().min().copied().unwrap_or(0),
    )
    .with("connections_median", conn_med)
    .with("connections_max", conn_max)
    .with(
        "connections_peak_max",
        m.peers_max.iter().max().copied().unwrap_or(0),
    )
    .with("inbound_max", m.inbound_max)
    .with("refused", m.refused)
    .with(
        "served_bytes_per_feed_byte",
        round(
            m.bytes_served as f64 / (feed.bytes * readers).max(1) as f64,
            3,
        ),
    )
    .with(
        "stored_bytes_per_feed_byte",
        round(
            m.bytes_stored as f64 / (feed.bytes * readers).max(1) as f64,
            3,
        ),
    )
    .with(
        "node_dht_queries_median",
        spread(m.dht_queries.iter().copied()).0,
    )
    .with("total_cpu_seconds", round(m.cpu_seconds, 2))
    .with("max_peers", limits.max_peers)
    .with(
        "max_peers_per_topic",
        options
            .max_peers_per_topic
            .unwrap_or(limits.max_peers_per_topic),
    )
    .with("max_peers_per_ip", limits.max_peers_per_ip))
}

/// The timed part: `get` to every reader, their sync, then every node's report and
/// resident set.
async fn measure(
    members: &mut [Member],
    ready: &[NodeLine],
    rx: &mut Lines,
    guard: Duration,
) -> Result<Measured, BenchError> {
    let feed = match ready.first() {
        Some(NodeLine::Ready {
            feed: Some(feed), ..
        }) => feed.clone(),
        _ => return Err(BenchError::Peer("the writer named no feed".into())),
    };
    let readers: Vec<usize> = (1..members.len()).collect();
    let cpu_start: Vec<f64> = members
        .iter()
        .map(|m| cpu_seconds(Some(m.pid)).unwrap_or(0.0))
        .collect();
    let start = Instant::now();
    let get = format!("get {} {}", feed.key, feed.length);
    // When each reader was told, from `start`: its sync is that plus its `synced_ms`
    // (its line may come later: it waits for its counts of blocks per peer).
    let mut told = vec![0.0; members.len()];
    for (i, m) in members.iter_mut().enumerate().skip(1) {
        m.send(i, &get)?;
        told[i] = start.elapsed().as_secs_f64();
    }
    let synced = collect(rx, &readers, guard, |_, line| match line {
        line @ NodeLine::Synced { .. } => Some(line),
        _ => None,
    })
    .await?;
    let seconds = synced
        .iter()
        .filter_map(|(i, line)| match line {
            NodeLine::Synced { synced_ms, .. } => Some(told[*i] + synced_ms / 1e3),
            _ => None,
        })
        .fold(0.0, f64::max);
    if synced.len() < readers.len() {
        return Err(BenchError::Timeout(format!(
            "{} of {} readers in sync within {guard:?}",
            synced.len(),
            readers.len()
        )));
    }
    let writer_key = match ready.first() {
        Some(NodeLine::Ready { key, .. }) => key.clone(),
        _ => String::new(),
    };
    let mut m = Measured {
        seconds,
        connect_ms: Vec::new(),
        first_block_ms: Vec::new(),
        synced_ms: Vec::new(),
        data_ms: Vec::new(),
        blocks_from_writer: 0,
        blocks_total: 0,
        fed_by_writer: 0,
        sources: Vec::new(),
        peak_rss: Vec::new(),
        end_rss: Vec::new(),
        end_rss_file: Vec::new(),
        end_rss_anon: Vec::new(),
        threads: Vec::new(),
        peers: Vec::new(),
        peers_max: Vec::new(),
        inbound_max: 0,
        refused: 0,
        bytes_served: 0,
        serve_peak_max: 0,
        receive_peak_max: 0,
        bytes_stored: 0,
        dht_queries: Vec::new(),
        cpu_seconds: 0.0,
        timed_cpu: Vec::new(),
    };
    for (i, line) in &synced {
        let NodeLine::Synced {
            first_peer_ms,
            first_block_ms,
            synced_ms,
            tree_hash,
            blocks_from,
        } = line
        else {
            continue;
        };
        if *tree_hash != feed.tree_hash {
            return Err(BenchError::Mismatch(format!(
                "node {i} holds tree {tree_hash}, the writer {}",
                feed.tree_hash
            )));
        }
        let first = first_peer_ms.unwrap_or(0.0);
        tracing::debug!(
            target: "swarm",
            node = i,
            first_peer_ms,
            first_block_ms,
            synced_ms,
            from_writer = blocks_from.get(&writer_key).copied().unwrap_or(0),
            sources = blocks_from.len(),
            "reader in sync"
        );
        m.connect_ms.push(first);
        m.first_block_ms.push(first_block_ms.unwrap_or(*synced_ms));
        m.synced_ms.push(*synced_ms);
        m.data_ms.push(synced_ms - first);
        let from_writer = blocks_from.get(&writer_key).copied().unwrap_or(0);
        m.blocks_from_writer += from_writer;
        m.blocks_total += blocks_from.values().sum::<u64>();
        m.fed_by_writer += usize::from(from_writer > 0);
        m.sources
            .push(blocks_from.values().filter(|b| **b > 0).count() as u64);
    }
    let all: Vec<usize> = (0..members.len()).collect();
    for (i, m) in members.iter_mut().enumerate() {
        m.send(i, "report")?;
    }
    let reports = collect(rx, &all, REPORT_GUARD, |_, line| match line {
        NodeLine::Report(report) => Some(report),
        _ => None,
    })
    .await?;
    if reports.len() < all.len() {
        return Err(BenchError::Timeout(format!(
            "{} of {} nodes reported within {REPORT_GUARD:?}",
            reports.len(),
            all.len()
        )));
    }
    let kib = |pid, field| status_number(pid, field).map_or(0, |k| k * 1024);
    m.peak_rss = members.iter().map(|m| kib(m.pid, "VmHWM:")).collect();
    m.end_rss = members.iter().map(|m| kib(m.pid, "VmRSS:")).collect();
    m.end_rss_file = members.iter().map(|m| kib(m.pid, "RssFile:")).collect();
    m.end_rss_anon = members.iter().map(|m| kib(m.pid, "RssAnon:")).collect();
    m.threads = members
        .iter()
        .map(|m| status_number(m.pid, "Threads:").unwrap_or(0))
        .collect();
    m.peers = reports.values().map(|r| r.peers as u64).collect();
    m.peers_max = reports.values().map(|r| r.peers_max).collect();
    m.inbound_max = reports
        .values()
        .map(|r| r.inbound as u64)
        .max()
        .unwrap_or(0);
    m.refused = reports.values().map(|r| r.refused).sum();
    m.bytes_served = reports.values().map(|r| r.bytes_served).sum();
    m.bytes_stored = reports.values().map(|r| r.bytes_stored).sum();
    m.serve_peak_max = reports
        .values()
        .map(|r| r.serve_bytes_peak)
        .max()
        .unwrap_or(0);
    m.receive_peak_max = reports
        .values()
        .map(|r| r.receive_bytes_peak)
        .max()
        .unwrap_or(0);
    m.dht_queries = reports.values().map(|r| r.dht_queries).collect();
    let cpu_end: Vec<f64> = members
        .iter()
        .map(|m| cpu_seconds(Some(m.pid)).unwrap_or(0.0))
        .collect();
    m.cpu_seconds = cpu_end.iter().sum();
    m.timed_cpu = cpu_end
        .iter()
        .zip(&cpu_start)
        .map(|(end, start)| end - start)
        .collect();
    Ok(m)
}
