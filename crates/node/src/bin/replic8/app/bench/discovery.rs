//! `discovery`: join to connected on a private Mainline DHT (`KrpcTestnet`, 20
//! nodes on 127.0.0.1), with pairs of nodes built like any node (`.testnet(..)`, LAN off,
//! in memory, a pair of its own and a fresh random topic per round and case). Every
//! node is spawned, untimed, before the first round and closed after the last: a node
//! closed mid-run stays in the testnet nodes' routing tables, and the next rounds'
//! queries waited out the 500 ms request timeout on it (both-at-once median ~570 ms
//! when each round spawned and closed its own pair; ~30 ms with every node alive).
//! Rounds run `--parallel` at a time (default 5): a round is almost all waiting.
//!
//! - announce-then-join: A joins and its join resolves (first announce stored, first
//!   lookup done); then B joins. Measured: from B's join call to B's `PeerUp` for A.
//! - both-at-once: A and B join at the same instant. Measured: from the joins to the
//!   first `PeerUp` between them (on either side).
//!
//! - dead-entries: on a second private DHT of our own nodes (`KrpcTestnet::with_dead`:
//!   the same number of live nodes plus a quarter as many that entered every routing
//!   table and then went silent), A joins, then B. Measured: B's join resolving (first
//!   lookup round done) and B's `PeerUp` for A, each from B's join call.
//!
//! A round that does not connect within the guard (default 30 s) counts as not connected;
//! median and max are over the connected rounds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio::sync::{broadcast, Semaphore};

use super::{median_max, peak_rss_bytes, reset_peak_rss, round, BenchError, BenchOptions, Row};
use replic8_discovery::KrpcTestnet;
use replic8_node::{JoinOptions, Node, NodeEvent, NodeHandle, PeerKey, Topic};

/// Rounds of each case.
pub(crate) const DEFAULT_ROUNDS: usize = 20;
/// DHT nodes in the testnet.
pub(crate) const DEFAULT_TESTNET_NODES: usize = 20;
/// How long a round may take to connect.
pub(crate) const DEFAULT_GUARD: Duration = Duration::from_secs(30);
/// Rounds in flight at once.
pub(crate) const DEFAULT_PARALLEL: usize = 5;

async fn spawn(bootstrap: &[String]) -> Result<NodeHandle, BenchError> {
    Ok(Node::builder()
        .in_memory()
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .testnet(bootstrap)
        .lan(false)
        .spawn()
        .await?)
}

/// A private DHT made by `make` (which blocks while it binds and fills routing tables).
async fn testnet(
    make: impl FnOnce() -> std::io::Result<KrpcTestnet> + Send + 'static,
) -> Result<KrpcTestnet, BenchError> {
    tokio::task::spawn_blocking(make)
        .await
        .map_err(|e| BenchError::Options(e.to_string()))?
        .map_err(BenchError::io("testnet"))
}

/// `count` pairs of nodes on `testnet`, spawned one after the other.
async fn spawn_pairs(
    testnet: &KrpcTestnet,
    count: usize,
) -> Result<Vec<(NodeHandle, NodeHandle)>, BenchError> {
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        pairs.push((
            spawn(&testnet.bootstrap).await?,
            spawn(&testnet.bootstrap).await?,
        ));
    }
    Ok(pairs)
}

/// Every node of `pairs`, to close after the rounds.
fn all_nodes(pairs: &[(NodeHandle, NodeHandle)]) -> Vec<NodeHandle> {
    pairs
        .iter()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect()
}

/// Closes `nodes`, all at once.
async fn close_all(nodes: Vec<NodeHandle>) {
    let mut closing = tokio::task::JoinSet::new();
    for node in nodes {
        closing.spawn(async move { node.close().await });
    }
    while closing.join_next().await.is_some() {}
}

/// Milliseconds from `start` to `then`.
fn ms_between(start: Instant, then: Instant) -> f64 {
    then.duration_since(start).as_secs_f64() * 1e3
}

/// Waits for a `PeerUp` for `key`; the instant it was seen, or `None` on the guard.
async fn peer_up(
    mut events: broadcast::Receiver<NodeEvent>,
    key: PeerKey,
    guard: Duration,
) -> Option<Instant> {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(NodeEvent::PeerUp { key: k, .. }) if k == key => return Some(Instant::now()),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    };
    tokio::time::timeout(guard, wait).await.ok().flatten()
}

fn fresh_topic() -> Topic {
    Topic(rand::random())
}

/// One announce-then-join round: milliseconds from B's join to B's `PeerUp` for A.
async fn announce_then_join(
    (a, b): (NodeHandle, NodeHandle),
    guard: Duration,
) -> Result<Option<f64>, BenchError> {
    let topic = fresh_topic();
    a.join(topic, JoinOptions::default()).await?;
    let up = peer_up(b.subscribe(), a.key(), guard);
    let start = Instant::now();
    let (joined, up) = tokio::join!(b.join(topic, JoinOptions::default()), up);
    joined?;
    Ok(up.map(|t| ms_between(start, t)))
}

/// One both-at-once round: milliseconds from the joins to the first `PeerUp` between A
/// and B.
async fn both_at_once(
    (a, b): (NodeHandle, NodeHandle),
    guard: Duration,
) -> Result<Option<f64>, BenchError> {
    let topic = fresh_topic();
    let up_a = peer_up(a.subscribe(), b.key(), guard);
    let up_b = peer_up(b.subscribe(), a.key(), guard);
    let first = async {
        tokio::select! {
            t = up_a => t,
            t = up_b => t,
        }
    };
    let start = Instant::now();
    let (ja, jb, up) = tokio::join!(
        a.join(topic, JoinOptions::default()),
        b.join(topic, JoinOptions::default()),
        first
    );
    ja?;
    jb?;
    Ok(up.map(|t| ms_between(start, t)))
}

/// One dead-entries round: milliseconds from B's join call to its join resolving and to
/// B's `PeerUp` for A.
async fn dead_entries(
    (a, b): (NodeHandle, NodeHandle),
    guard: Duration,
) -> Result<Option<(f64, f64)>, BenchError> {
    let topic = fresh_topic();
    a.join(topic, JoinOptions::default()).await?;
    let up = peer_up(b.subscribe(), a.key(), guard);
    let start = Instant::now();
    let joined = async {
        let joined = b.join(topic, JoinOptions::default()).await;
        (joined, ms_between(start, Instant::now()))
    };
    let ((joined, join_ms), up) = tokio::join!(joined, up);
    joined?;
    Ok(up.map(|t| (join_ms, ms_between(start, t))))
}

/// The dead-entries case: join-resolved and connected times of the rounds that connected.
async fn run_dead_entries(
    rounds: usize,
    nodes: usize,
    parallel: usize,
    guard: Duration,
) -> Result<(Vec<f64>, Vec<f64>), BenchError> {
    let dead = (nodes / 4).max(1);
    let testnet = testnet(move || KrpcTestnet::with_dead(nodes, dead)).await?;
    let pairs = spawn_pairs(&testnet, rounds).await?;
    let all = all_nodes(&pairs);
    let permits = Arc::new(Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    for pair in pairs {
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            dead_entries(pair, guard).await
        });
    }
    let (mut joined, mut connected) = (Vec::new(), Vec::new());
    let mut failed = None;
    while let Some(done) = tasks.join_next().await {
        match done.map_err(|e| BenchError::Options(format!("a discovery round: {e}"))) {
            Ok(Ok(Some((j, c)))) => {
                joined.push(j);
                connected.push(c);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) | Err(e) => failed = failed.or(Some(e)),
        }
    }
    close_all(all).await;
    drop(testnet);
    match failed {
        Some(e) => Err(e),
        None => Ok((joined, connected)),
    }
}

/// Runs the scenario.
pub(crate) async fn run(options: &BenchOptions) -> Result<Row, BenchError> {
    let rounds = options.rounds.unwrap_or(DEFAULT_ROUNDS);
    let nodes = options.testnet_nodes.unwrap_or(DEFAULT_TESTNET_NODES);
    let guard = options.guard.unwrap_or(DEFAULT_GUARD);
    if rounds == 0 || nodes == 0 {
        return Err(BenchError::Options(
            "discovery: rounds and testnet nodes must be more than 0".into(),
        ));
    }
    reset_peak_rss();
    let testnet = testnet(move || KrpcTestnet::new(nodes)).await?;
    let parallel = options.parallel.unwrap_or(DEFAULT_PARALLEL).max(1);
    // Every node of every round is up before the first round and stays up until the
    // last: a node closed mid-run stays in the testnet's routing tables, and queries
    // to it wait out the request timeout (500 ms), which measures the dead node rather
    // than the join. Two pairs per round (one for each case), spawned untimed.
    let pairs = spawn_pairs(&testnet, rounds * 2).await?;
    let all = all_nodes(&pairs);
    let start = Instant::now();
    let permits = Arc::new(Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    let mut pairs = pairs.into_iter();
    while let (Some(first), Some(second)) = (pairs.next(), pairs.next()) {
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let a = announce_then_join(first, guard).await?;
            let b = both_at_once(second, guard).await?;
            Ok::<_, BenchError>((a, b))
        });
    }
    let mut sequential = Vec::new();
    let mut together = Vec::new();
    let mut failed = None;
    while let Some(done) = tasks.join_next().await {
        match done.map_err(|e| BenchError::Options(format!("a discovery round: {e}"))) {
            Ok(Ok((a, b))) => {
                sequential.extend(a);
                together.extend(b);
            }
            Ok(Err(e)) | Err(e) => failed = failed.or(Some(e)),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    close_all(all).await;
    if let Some(e) = failed {
        return Err(e);
    }
    drop(testnet);
    let (mut dead_joined, mut dead_connected) =
        run_dead_entries(rounds, nodes, parallel, guard).await?;
    let mut row = Row::new("discovery", 0, 0, seconds, peak_rss_bytes(None))
        .with("rounds", rounds)
        .with("testnet_nodes", nodes)
        .with("parallel", parallel)
        .with("guard_seconds", guard.as_secs_f64());
    let dead_rounds = dead_connected.len();
    for (name, ms) in [
        ("dead_entries_join", &mut dead_joined),
        ("dead_entries_connected", &mut dead_connected),
    ] {
        row = with_median_max(row, name, ms);
    }
    row = row.with("dead_entries_connected", dead_rounds);
    for (name, ms) in [
        ("announce_then_join", &mut sequential),
        ("both_at_once", &mut together),
    ] {
        let connected = ms.len();
        row = with_median_max(row, name, ms).with(&format!("{name}_connected"), connected);
    }
    Ok(row)
}

/// `row` with `<name>_median_ms` and `<name>_max_ms` of `ms` (null where it is empty).
fn with_median_max(row: Row, name: &str, ms: &mut [f64]) -> Row {
    let (median, max) = match median_max(ms) {
        Some((m, x)) => (Some(round(m, 1)), Some(round(x, 1))),
        None => (None, None),
    };
    row.with(&format!("{name}_median_ms"), median)
        .with(&format!("{name}_max_ms"), max)
}
