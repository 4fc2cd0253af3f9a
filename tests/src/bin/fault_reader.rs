//! The reader that `tests/it/faults.rs` kills: a node on a disk data directory that
//! replicates one feed from a writer and reports on stdout (see `replic8_tests::fault`).
//!
//! `fault_reader <data dir> <writer addr> <writer key hex> <feed key hex> <namespace>
//! <seed> <blocks> <block size>`. Exit 0 once the feed is synced and read back equal to
//! the writer's; 2 on a bad argument; 3 if a held block is wrong or the feed does not
//! open; 4 if nothing finished within the guard.

use std::process::ExitCode;
use std::time::Duration;

use replic8_node::{FeedError, FeedKey, Node, NodeEvent, NodeHandle, PeerKey};
use replic8_store::ReadError;
use replic8_tests::fault::{block, ReaderArgs, Report};

/// Longer than any test run waits for one reader; a stuck reader exits by itself.
const GUARD: Duration = Duration::from_secs(120);

/// A replication that reports nothing for this long prints diagnostics to stderr.
const QUIET: Duration = Duration::from_secs(5);

/// Blocks read at once when checking what is held.
const READ_BATCH: u64 = 64;

fn key32(what: &str, hex_text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(hex_text).map_err(|e| format!("{what}: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{what}: want 32 bytes"))
}

#[tokio::main]
async fn main() -> ExitCode {
    replic8_tests::fault::init_stderr_tracing();
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let parsed = ReaderArgs::parse(&raw).and_then(|args| {
        let writer_key = PeerKey::from_bytes(key32("writer key", &args.writer_key)?);
        let feed = FeedKey(key32("feed key", &args.feed)?);
        Ok((args, writer_key, feed))
    });
    let (args, writer_key, feed) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fault_reader: {e}");
            return ExitCode::from(2);
        }
    };
    match tokio::time::timeout(GUARD, run(&args, writer_key, feed)).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("fault_reader: {e}");
            ExitCode::from(3)
        }
        Err(_) => {
            eprintln!("fault_reader: not done within {GUARD:?}");
            ExitCode::from(4)
        }
    }
}

async fn run(args: &ReaderArgs, writer_key: PeerKey, feed: FeedKey) -> Result<(), String> {
    let node = Node::builder()
        .data_dir(&args.data_dir)
        .listen(([127, 0, 0, 1], 0).into())
        .dht(false)
        .lan(false)
        .spawn()
        .await
        .map_err(|e| format!("spawn: {e}"))?;
    println!("{}", held(&node, feed, args).await?);

    let mut events = node.subscribe();
    node.open_namespace(
        &args.namespace,
        None,
        replic8_node::NamespacePolicy::accept_all(),
    )
    .await
    .map_err(|e| format!("namespace: {e}"))?;
    node.connect(args.writer, Some(writer_key))
        .await
        .map_err(|e| format!("connect to {}: {e}", args.writer))?;
    // The feed's published state: `stored` without a trip through the store's workers.
    let mut state = None;
    loop {
        let event = match tokio::time::timeout(QUIET, events.recv()).await {
            Ok(event) => event,
            Err(_) => {
                // Diagnostics for a stalled run (stderr; stdout is the report).
                let peers = node.peers().await.map_err(|e| e.to_string())?;
                let stats = node.feed_stats().await.map_err(|e| e.to_string())?;
                eprintln!("fault_reader: nothing for {QUIET:?}; peers {peers:?}; store {stats:?}");
                continue;
            }
        };
        match event {
            Ok(NodeEvent::Downloaded { feed: f, .. }) if f == feed => {
                if state.is_none() {
                    state = Some(
                        node.subscribe_feed(feed)
                            .await
                            .map_err(|e| format!("subscribe: {e}"))?,
                    );
                }
                // `received` first: the store counts a message's blocks after storing
                // them, so `stored` read later covers at least those.
                let received = node
                    .feed_stats()
                    .await
                    .map_err(|e| e.to_string())?
                    .blocks_in;
                let stored = state.as_ref().map_or(0, |s| s.borrow().stored);
                println!("{}", Report::Progress { stored, received });
            }
            Ok(NodeEvent::FeedSynced {
                feed: f, length, ..
            }) if f == feed && length == args.blocks => break,
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                return Err("node events closed".into())
            }
        }
    }
    let received = node
        .feed_stats()
        .await
        .map_err(|e| e.to_string())?
        .blocks_in;
    let stored = node
        .open_feed(feed)
        .await
        .map_err(|e| format!("open: {e}"))?
        .stored;
    println!("{}", Report::Done { stored, received });
    let all = held(&node, feed, args).await?;
    if all.held() != args.blocks {
        return Err(format!("after sync: {all}"));
    }
    println!("{}", Report::Verified);
    node.close().await;
    Ok(())
}

/// Which blocks the node holds, each read back and compared with the writer's.
async fn held(node: &NodeHandle, feed: FeedKey, args: &ReaderArgs) -> Result<Report, String> {
    let info = match node.open_feed(feed).await {
        Ok(info) => info,
        Err(FeedError::Store(replic8::feed_store::FeedStoreError::NotFound(_))) => {
            return Ok(Report::Start {
                length: 0,
                ranges: Vec::new(),
            })
        }
        Err(e) => return Err(format!("open: {e}")),
    };
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut push = |a: u64, b: u64| match ranges.last_mut() {
        Some(last) if last.1 == a => last.1 = b,
        _ if a < b => ranges.push((a, b)),
        _ => {}
    };
    let check = |start: u64, blocks: &[Vec<u8>]| -> Result<(), String> {
        for (i, got) in blocks.iter().enumerate() {
            let index = start + i as u64;
            if *got != block(args.seed, index, args.block_size) {
                return Err(format!("block {index} differs from the writer's"));
            }
        }
        Ok(())
    };
    let mut i = 0;
    while i < info.length {
        let end = (i + READ_BATCH).min(info.length);
        match node.read(feed, i..end).await {
            Ok(blocks) => {
                check(i, &blocks)?;
                push(i, end);
                i = end;
            }
            Err(FeedError::Store(replic8::feed_store::FeedStoreError::Read(
                ReadError::Missing(m),
            ))) if (i..end).contains(&m) => {
                if m > i {
                    let blocks = node
                        .read(feed, i..m)
                        .await
                        .map_err(|e| format!("read {i}..{m}: {e}"))?;
                    check(i, &blocks)?;
                    push(i, m);
                }
                i = m + 1;
            }
            Err(e) => return Err(format!("read {i}..{end}: {e}")),
        }
    }
    let report = Report::Start {
        length: info.length,
        ranges,
    };
    if report.held() != info.stored {
        return Err(format!(
            "the feed says it stores {} blocks, {} read back",
            info.stored,
            report.held()
        ));
    }
    Ok(report)
}
