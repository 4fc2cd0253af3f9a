//! The default feed store over real QUIC on loopback: a writer process shares N feeds
//! of B blocks; this process (the reader) accepts them all, replicates and verifies
//! every block with the real `FeedStore`, in a one-shot session over one connection,
//! and reports the time from connect to the session's end (every feed in sync both
//! ways), the throughput, and the reader's peak RSS (the writer is a child process, so
//! its feeds do not count).
//!
//! `cargo bench -p replic8 --bench feed_replication -- [feeds] [blocks] [block_bytes] [memory|disk|disk-disk|raw]`
//! (defaults 1000 100 1024 memory). `disk` stores the reader's feeds in a temporary
//! directory under `$TMPDIR`; `disk-disk` the writer's too (the bulk case: disk
//! to disk; the writer appends its feeds through its feed store before it listens). `raw` is the
//! reference: the same endpoints and processes, one QUIC stream carrying
//! feeds × blocks × block_bytes in chunks of block_bytes, no feed store at all.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/tls/mod.rs"]
mod tls;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use actix::Actor;
use replic8::actor::{PeerEvent, SessionsActor, StartSession};
use replic8::feed_store::*;
use replic8::keys::{PeerKey, Role};
use replic8::message::{CloseCode, Headers};
use replic8::session::{Mode, SessionConfig, SessionEvent};
use replic8::store::{RegisterStore, StoreRecipients};
use replic8_store::storage::{DiskStorage, MemoryStorage, Storage};
use tokio::sync::mpsc;

const WRITER_ENV: &str = "REPLIC8_BENCH_WRITER";
const NS: &str = "";

struct Args {
    feeds: u64,
    blocks: u64,
    block_bytes: usize,
    /// The reader stores on disk.
    disk: bool,
    /// The writer stores on disk too.
    writer_disk: bool,
    /// Raw QUIC, one stream, no feed store.
    raw: bool,
}

fn args() -> Args {
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let num = |i: usize, d: u64| words.get(i).and_then(|w| w.parse().ok()).unwrap_or(d);
    Args {
        feeds: num(0, 1000),
        blocks: num(1, 100),
        block_bytes: num(2, 1024) as usize,
        disk: words
            .get(3)
            .is_some_and(|w| w == "disk" || w == "disk-disk"),
        writer_disk: words.get(3).is_some_and(|w| w == "disk-disk"),
        raw: words.get(3).is_some_and(|w| w == "raw"),
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

/// User plus system CPU seconds this process used so far (all threads).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): utime is the 12th,
    // stime the 13th, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|w| w.parse().unwrap_or(0))
        .collect();
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / 100.0
}

fn config(mode: Mode) -> SessionConfig {
    SessionConfig {
        mode,
        ..SessionConfig::default()
    }
}

fn runtime() -> actix::SystemRunner {
    actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// The child: builds the feeds, prints its address, serves one session until it ends.
fn writer(args: Args) {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async move {
        if args.raw {
            raw_writer(&args).await;
        } else if args.writer_disk {
            serve(&args, DiskStorage::open(dir.path()).unwrap()).await;
        } else {
            serve(&args, MemoryStorage::new()).await;
        }
        actix::System::current().stop();
    });
}

/// Writes feeds × blocks × block_bytes on one stream, then waits for the reader to close.
async fn raw_writer(args: &Args) {
    let server = tls::server_endpoint();
    println!("ADDR {}", server.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    let connection = server.accept().await.unwrap().await.unwrap();
    let cpu_before = cpu_seconds();
    let mut send = connection.open_uni().await.unwrap();
    let chunk = bytes::Bytes::from(vec![0x5a; args.block_bytes]);
    for _ in 0..args.feeds * args.blocks {
        send.write_chunk(chunk.clone()).await.unwrap();
    }
    send.finish().unwrap();
    let _ = connection.closed().await;
    println!("writer CPU {:.2} s", cpu_seconds() - cpu_before);
}

async fn serve<St: Storage + MembershipHome>(args: &Args, storage: St) {
    let (tx, mut events) = mpsc::unbounded_channel::<PeerEvent>();
    let sessions = SessionsActor::new(config(Mode::OneShot), Some(tx)).start();
    let store = FeedStore::new(storage, FeedStoreConfig::default(), sessions.clone(), None)
        .unwrap()
        .start();
    sessions
        .send(RegisterStore {
            namespaces: vec![(NS.into(), None)],
            store: StoreRecipients::of(&store),
        })
        .await
        .unwrap()
        .unwrap();
    let block = vec![0x5a; args.block_bytes];
    let per_append = ((16 << 20) / args.block_bytes).max(1) as u64;
    for _ in 0..args.feeds {
        let feed = store.send(CreateFeed).await.unwrap().unwrap();
        let mut left = args.blocks;
        while left > 0 {
            let n = left.min(per_append);
            let blocks = (0..n).map(|_| block.clone()).collect();
            store.send(Append { feed, blocks }).await.unwrap().unwrap();
            left -= n;
        }
        store
            .send(ShareFeed {
                namespace: NS.into(),
                feed,
                headers: Headers::new(),
            })
            .await
            .unwrap()
            .unwrap();
    }
    let server = tls::server_endpoint();
    println!("ADDR {}", server.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    let connection = server.accept().await.unwrap().await.unwrap();
    let cpu_before = cpu_seconds();
    sessions
        .send(StartSession {
            peer: PeerKey([2; 32]),
            connection,
            role: Role::Acceptor,
        })
        .await
        .unwrap()
        .unwrap();
    while let Some(e) = events.recv().await {
        if let SessionEvent::SessionEnded { reason } = e.event {
            assert_eq!(reason.code, CloseCode::DONE, "writer: {reason}");
            println!("writer CPU {:.2} s", cpu_seconds() - cpu_before);
            break;
        }
    }
}

/// Reads the raw stream to its end and reports like the feed store reader does.
async fn raw_reader(args: &Args, addr: std::net::SocketAddr) {
    let client = tls::client_endpoint();
    let cpu_before = cpu_seconds();
    let start = Instant::now();
    let connection = client.connect(addr, "localhost").unwrap().await.unwrap();
    let mut recv = connection.accept_uni().await.unwrap();
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(256 * 1024, true).await.unwrap() {
        total += chunk.bytes.len() as u64;
    }
    let elapsed = start.elapsed();
    connection.close(0u32.into(), b"done");
    client.wait_idle().await;
    assert_eq!(total, args.feeds * args.blocks * args.block_bytes as u64);
    println!(
        "raw quic: {total} bytes on one stream in {:.3} s, {:.1} MiB/s, reader CPU {:.2} s",
        elapsed.as_secs_f64(),
        total as f64 / (1 << 20) as f64 / elapsed.as_secs_f64(),
        cpu_seconds() - cpu_before,
    );
}

async fn reader<St: Storage + MembershipHome>(
    args: &Args,
    storage: St,
    addr: std::net::SocketAddr,
) {
    let (tx, mut events) = mpsc::unbounded_channel::<PeerEvent>();
    let (ftx, mut fevents) = mpsc::unbounded_channel::<FeedStoreEvent>();
    let sessions = SessionsActor::new(config(Mode::OneShot), Some(tx)).start();
    // The reader takes the feed the writer offers.
    let accept_all = FeedStoreConfig {
        accept: AcceptPolicy::All,
        ..FeedStoreConfig::default()
    };
    let store = FeedStore::new(storage, accept_all, sessions.clone(), Some(ftx))
        .unwrap()
        .start();
    sessions
        .send(RegisterStore {
            namespaces: vec![(NS.into(), None)],
            store: StoreRecipients::of(&store),
        })
        .await
        .unwrap()
        .unwrap();
    let client = tls::client_endpoint();
    let rss_before = peak_rss_kib();
    let cpu_before = cpu_seconds();
    let start = Instant::now();
    let connection = client.connect(addr, "localhost").unwrap().await.unwrap();
    sessions
        .send(StartSession {
            peer: PeerKey([1; 32]),
            connection,
            role: Role::Dialer,
        })
        .await
        .unwrap()
        .unwrap();
    let mut synced = HashSet::new();
    let mut last_synced = start.elapsed();
    loop {
        tokio::select! {
            Some(e) = fevents.recv() => {
                if let FeedStoreEvent::FeedSynced { feed, length, .. } = e {
                    if length == args.blocks && synced.insert(feed) {
                        last_synced = start.elapsed();
                    }
                }
            }
            Some(e) = events.recv() => {
                if let SessionEvent::SessionEnded { reason } = e.event {
                    assert_eq!(reason.code, CloseCode::DONE, "reader: {reason}");
                    break;
                }
            }
        }
    }
    let elapsed = start.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    while let Ok(e) = fevents.try_recv() {
        if let FeedStoreEvent::FeedSynced { feed, length, .. } = e {
            if length == args.blocks {
                synced.insert(feed);
            }
        }
    }
    let stats = store.send(GetStats).await.unwrap();
    let total = args.feeds * args.blocks;
    assert_eq!(synced.len() as u64, args.feeds, "feeds synced");
    assert_eq!(stats.blocks_in, total, "blocks verified and stored");
    assert_eq!(stats.streams_failed, 0);
    for feed in synced.iter().take(10) {
        let info = store.send(OpenFeed { feed: *feed }).await.unwrap().unwrap();
        assert_eq!((info.length, info.stored), (args.blocks, args.blocks));
    }
    println!(
        "feed store: {} feeds x {} blocks x {} B ({}): all synced {:.3} s, session done {:.3} s, \
         {:.1} MiB/s verified, reader CPU {:.2} s, reader peak RSS {} MiB (before connect {} MiB)",
        args.feeds,
        args.blocks,
        args.block_bytes,
        match (args.disk, args.writer_disk) {
            (true, true) => "disk to disk",
            (true, false) => "reader on disk",
            _ => "memory",
        },
        last_synced.as_secs_f64(),
        elapsed.as_secs_f64(),
        stats.bytes_in as f64 / (1 << 20) as f64 / elapsed.as_secs_f64(),
        cpu,
        peak_rss_kib() / 1024,
        rss_before / 1024,
    );
    // Let the close reach the writer before this process stops.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), client.wait_idle()).await;
}

fn main() {
    let args = args();
    if std::env::var_os(WRITER_ENV).is_some() {
        return writer(args);
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(std::env::args().skip(1))
        .env(WRITER_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    let addr = line
        .trim()
        .strip_prefix("ADDR ")
        .expect("writer address")
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        if args.raw {
            raw_reader(&args, addr).await;
        } else if args.disk {
            reader(&args, DiskStorage::open(dir.path()).unwrap(), addr).await;
        } else {
            reader(&args, MemoryStorage::new(), addr).await;
        }
        actix::System::current().stop();
    });
    for line in lines.map_while(Result::ok) {
        println!("{line}");
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "writer: {status}");
}
