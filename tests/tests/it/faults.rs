//! Faults end to end: a reader killed with SIGKILL twenty times in the middle of a
//! replication, and connections cut mid-sync (closed by the peer, or blackholed until
//! QUIC's idle timeout). In every case the replica converges byte-identical to the
//! writer's feed and no block it held is fetched again.
//!
//! The kill test's randomness (kill points and block contents) comes from one seed,
//! printed at the start; `FAULT_SEED=<n>` repeats a run.
#![allow(clippy::unwrap_used, missing_docs)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use replic8_connmgr::TransportTuning;
use replic8_node::{FeedKey, Headers, Node, NodeBuilder, NodeEvent, NodeHandle};
use replic8_tests::fault::{block, ranges_contain, ReaderArgs, Report, UdpRelay};
use replic8_tests::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const NAMESPACE: &str = "faults";

/// A node on 127.0.0.1 with its data in `dir`, no DHT, no LAN: peers are dialed.
fn disk_node(dir: &Path) -> NodeBuilder {
    Node::builder()
        .data_dir(dir)
        .listen(([127, 0, 0, 1], 0).into())
        .dht(false)
        .lan(false)
}

/// A writer holding a feed of `blocks` blocks of `size` bytes from `seed`, shared in
/// [`NAMESPACE`].
async fn writer(
    builder: NodeBuilder,
    seed: u64,
    blocks: u64,
    size: usize,
) -> (NodeHandle, FeedKey) {
    let w = builder.spawn().await.unwrap();
    let feed = w.create_feed().await.unwrap();
    let batch = 256;
    for start in (0..blocks).step_by(batch) {
        let end = (start + batch as u64).min(blocks);
        let data = (start..end).map(|i| block(seed, i, size)).collect();
        w.append(feed, data).await.unwrap();
    }
    let mut headers = Headers::new();
    headers.insert("test", b"faults".to_vec()).unwrap();
    w.share(NAMESPACE, feed, headers).await.unwrap();
    (w, feed)
}

/// Reads the whole feed from `a` and `b` and checks the copies are byte-identical and
/// under the same signed head.
async fn assert_same_feed(a: &NodeHandle, b: &NodeHandle, feed: FeedKey, blocks: u64) {
    let (ia, ib) = (
        a.open_feed(feed).await.unwrap(),
        b.open_feed(feed).await.unwrap(),
    );
    assert_eq!((ia.length, ia.stored), (blocks, blocks), "writer: {ia:?}");
    assert_eq!((ib.length, ib.stored), (blocks, blocks), "replica: {ib:?}");
    assert_eq!(
        ia.head, ib.head,
        "the replica's signed head is the writer's"
    );
    for start in (0..blocks).step_by(256) {
        let end = (start + 256).min(blocks);
        let (x, y) = (
            a.read(feed, start..end).await.unwrap(),
            b.read(feed, start..end).await.unwrap(),
        );
        assert!(
            x == y,
            "blocks {start}..{end} differ between writer and replica"
        );
    }
}

/// One line of the reader's stdout, or a panic naming the run.
async fn next_report(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    run: usize,
) -> Report {
    let line = tokio::time::timeout(GUARD, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("run {run}: no line from the reader within {GUARD:?}"))
        .unwrap_or_else(|e| panic!("run {run}: reading the reader's stdout: {e}"))
        .unwrap_or_else(|| panic!("run {run}: the reader exited early (its stderr is above)"));
    println!("run {run}: {line}");
    Report::parse(&line).unwrap_or_else(|e| panic!("run {run}: {e}"))
}

/// What one reader run reported.
#[derive(Debug)]
struct Run {
    held: u64,
    kill_at: Option<u64>,
    last: Option<(u64, u64)>,
}

#[tokio::test]
async fn a_reader_killed_20_times_mid_sync_converges_without_fetching_held_blocks_again() {
    init_tracing();
    const KILLS: usize = 20;
    // 24 MiB in 4 KiB blocks through a relay paced at 16 MiB/s: data messages carry 64
    // blocks (256 KiB, 16 ms), a feed slice between two kill points is ~70 ms, and the
    // blocks that land between a progress line and the kill (a message or two) do not
    // use up the feed before the 20th kill, however fast the machine.
    const BLOCKS: u64 = 6144;
    const SIZE: usize = 4096;
    const RATE: u64 = 16 << 20;
    let seed: u64 = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("fault seed {seed} (FAULT_SEED={seed} repeats this run)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // One kill point in each of 21 equal slices of the feed: run k is killed at its
    // first progress line with at least kill_at[k] blocks stored.
    let slice = BLOCKS / (KILLS as u64 + 1);
    let kill_at: Vec<u64> = (0..KILLS as u64)
        .map(|k| k * slice + rng.gen_range(1..=slice))
        .collect();
    // And a delay after that line, up to one data message's time at RATE (16 ms), so
    // that kills land anywhere in receiving, verifying and writing a message, not only
    // just after one was stored. A randomiser, not a wait for anything.
    let delay: Vec<Duration> = (0..KILLS)
        .map(|_| Duration::from_micros(rng.gen_range(0..16_000)))
        .collect();

    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (w, feed) = writer(disk_node(dirs.0.path()), seed, BLOCKS, SIZE).await;
    let relay = UdpRelay::start(w.local_addr(), Some(RATE)).await.unwrap();
    let args = ReaderArgs {
        data_dir: dirs.1.path().to_path_buf(),
        writer: relay.addr(),
        writer_key: hex::encode(w.key().as_bytes()),
        feed: hex::encode(feed.0),
        namespace: NAMESPACE.into(),
        seed,
        blocks: BLOCKS,
        block_size: SIZE,
    };

    let mut runs: Vec<Run> = Vec::new();
    let mut previous: Vec<(u64, u64)> = Vec::new();
    for run in 0..=KILLS {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fault_reader"))
            .args(args.to_args())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Every restart opens the feed and reads back every block it holds, equal to the
        // writer's (no torn or wrong block), and holds at least what the last start held.
        let start = next_report(&mut lines, run).await;
        let Report::Start { ranges, .. } = &start else {
            panic!("run {run}: first line {start:?}");
        };
        assert!(
            ranges_contain(ranges, &previous),
            "run {run}: held {ranges:?}, which lost blocks of the previous start's {previous:?}"
        );
        let held = start.held();
        let mut this = Run {
            held,
            kill_at: kill_at.get(run).copied(),
            last: None,
        };
        previous = ranges.clone();
        loop {
            match next_report(&mut lines, run).await {
                Report::Progress { stored, received } => {
                    // While no block comes twice, every received block is a newly
                    // stored one, and `received` is read before `stored`: so this holds.
                    // A held block fetched again breaks it unless blocks stored in the
                    // meantime hide it (the last run's check below is exact).
                    assert!(stored >= held, "run {run}: {stored} stored, {held} held");
                    assert!(
                        received <= stored - held,
                        "run {run}: received {received} blocks but stored only {} new \
                         ({stored} stored, {held} held at start): held blocks fetched again",
                        stored - held
                    );
                    this.last = Some((stored, received));
                    if this.kill_at.is_some_and(|k| stored >= k) {
                        tokio::time::sleep(delay.get(run).copied().unwrap_or_default()).await;
                        child.start_kill().unwrap();
                        let status = child.wait().await.unwrap();
                        assert_eq!(status.signal(), Some(9), "run {run}: {status:?}");
                        break;
                    }
                }
                Report::Done { stored, received } => {
                    assert!(
                        this.kill_at.is_none(),
                        "run {run} finished before its kill point: {runs:?}"
                    );
                    // Exact: every block it lacked arrived once, and nothing else.
                    assert_eq!(stored, BLOCKS, "run {run}");
                    assert_eq!(
                        received,
                        BLOCKS - held,
                        "run {run}: {held} held at start; blocks received twice or held ones \
                         fetched again"
                    );
                    assert_eq!(next_report(&mut lines, run).await, Report::Verified);
                    let status = tokio::time::timeout(GUARD, child.wait())
                        .await
                        .unwrap()
                        .unwrap();
                    assert!(status.success(), "run {run}: {status:?}");
                    this.last = Some((stored, received));
                    break;
                }
                other => panic!("run {run}: unexpected {other:?}"),
            }
        }
        runs.push(this);
    }
    for (i, r) in runs.iter().enumerate() {
        // Blocks a progress line showed stored that the next start did not hold: lost
        // in flight (written by the store but cut by the kill, or never written).
        let lost = match (r.last, runs.get(i + 1)) {
            (Some((stored, _)), Some(next)) => stored.saturating_sub(next.held),
            _ => 0,
        };
        println!(
            "run {i:2}: held {:4} at start, kill at {:>4} + {:?}, last line stored/received \
             {:?}, lost in flight {lost}",
            r.held,
            r.kill_at.map_or("-".into(), |k| k.to_string()),
            delay.get(i).copied().unwrap_or_default(),
            r.last
        );
    }

    // The replica, opened in this process, is the writer's feed byte for byte.
    let r = disk_node(dirs.1.path()).spawn().await.unwrap();
    assert_same_feed(&w, &r, feed, BLOCKS).await;
    r.close().await;
    w.close().await;
}

/// How a connection is cut.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// The writer closes it (connection manager `Close`).
    Close,
    /// The relay between them drops every datagram until the reader sees it down.
    Blackhole,
}

/// A reader dials a writer through a relay; once the first blocks arrived the
/// connection is cut; the reader redials by itself and finishes, receiving every block
/// exactly once over both connections.
async fn cut_mid_sync(cut: Cut) {
    init_tracing();
    const BLOCKS: u64 = 2048;
    const SIZE: usize = 16 * 1024;
    let seed = 7;
    // A cut connection is noticed in about a second either way.
    let tuning = TransportTuning {
        keep_alive: Duration::from_millis(250),
        idle_timeout: Duration::from_secs(1),
        ..TransportTuning::default()
    };
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (w, feed) = writer(
        disk_node(dirs.0.path()).transport(tuning.clone()),
        seed,
        BLOCKS,
        SIZE,
    )
    .await;
    // Paced (32 MiB at 8 MiB/s, ~4 s) so the cut lands mid-sync however loaded the
    // machine is: unpaced, loopback moves the whole feed in a fraction of a second.
    let relay = UdpRelay::start(w.local_addr(), Some(8 << 20))
        .await
        .unwrap();
    let r = disk_node(dirs.1.path())
        .transport(tuning)
        .spawn()
        .await
        .unwrap();
    let mut events = r.subscribe();
    r.open_namespace(NAMESPACE, None, replic8_node::NamespacePolicy::accept_all())
        .await
        .unwrap();
    r.connect(relay.addr(), Some(w.key())).await.unwrap();

    recv_until(&mut events, "r: first blocks", |e| {
        matches!(e, NodeEvent::Downloaded { feed: f, .. } if *f == feed).then_some(())
    })
    .await;
    match cut {
        Cut::Close => w.disconnect(r.key()).await.unwrap(),
        Cut::Blackhole => relay.set_forwarding(false),
    }
    let w_key = w.key();
    let reason = recv_until(&mut events, "r: the connection goes down", |e| match e {
        NodeEvent::PeerDown { key, reason } if *key == w_key => Some(reason.to_string()),
        _ => None,
    })
    .await;
    relay.set_forwarding(true);
    let at_cut = r.open_feed(feed).await.unwrap().stored;
    println!("{cut:?}: down ({reason}) with {at_cut} of {BLOCKS} blocks");
    assert!(at_cut < BLOCKS, "{cut:?}: the sync was over before the cut");

    // Nobody is told to dial: the reader redials the writer it lost.
    wait_peer_up(&mut events, "r: redialed the writer", &w).await;
    recv_until(&mut events, "r: synced at the full length", |e| {
        matches!(e, NodeEvent::FeedSynced { feed: f, length, .. } if *f == feed && *length == BLOCKS)
            .then_some(())
    })
    .await;
    let stats = r.feed_stats().await.unwrap();
    assert_eq!(
        stats.blocks_in, BLOCKS,
        "{cut:?}: every block arrives once over both connections ({at_cut} before the cut)"
    );
    assert_same_feed(&w, &r, feed, BLOCKS).await;
    if let Cut::Blackhole = cut {
        assert!(relay.dropped() > 0, "the blackhole dropped nothing");
    }
    r.close().await;
    w.close().await;
}

#[tokio::test]
async fn a_connection_closed_by_the_peer_mid_sync_is_redialed_and_the_sync_resumes() {
    cut_mid_sync(Cut::Close).await;
}

#[tokio::test]
async fn a_blackholed_connection_dies_by_idle_timeout_is_redialed_and_the_sync_resumes() {
    cut_mid_sync(Cut::Blackhole).await;
}
