//! The sync core end to end in memory: a writer and a fresh replica, every message
//! encoded and decoded with bincode, blocks verified and stored, until the replica is
//! synced. Reports blocks/s and bytes/s.
//!
//! `cargo bench -p replic8-store --bench sync`

#![allow(missing_docs)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use replic8_store::message::Data;
use replic8_store::storage::{MemoryFeed, MemoryStorage};
use replic8_store::{
    decode, encode, Feed, FeedKey, FeedSecret, FeedSync, Message, SyncConfig, Want,
};
use serde_bytes::ByteBuf;

fn writer(blocks: u64, block_size: usize) -> Feed<MemoryFeed> {
    let storage = MemoryStorage::new();
    let mut feed = Feed::create(&storage, FeedSecret::from_bytes(&[1; 32])).expect("create");
    let batch: Vec<Vec<u8>> = (0..256u64)
        .map(|i| vec![(i % 251) as u8; block_size])
        .collect();
    let mut n = 0;
    while n < blocks {
        let k = (blocks - n).min(256) as usize;
        feed.append_batch(&batch[..k]).expect("append");
        n += k as u64;
    }
    feed
}

fn config(want: Want, blocks_per_message: u64) -> SyncConfig {
    SyncConfig {
        want,
        live: false,
        blocks_per_message,
        max_outstanding: 16,
        max_data_bytes: 4 * 1024 * 1024,
        ..SyncConfig::default()
    }
}

/// Runs both cores in order until the replica is synced; returns the bytes moved.
fn pump(
    w: &mut Feed<MemoryFeed>,
    ws: &mut FeedSync,
    r: &mut Feed<MemoryFeed>,
    rs: &mut FeedSync,
) -> usize {
    let now = Instant::now();
    ws.handle_start(w, now);
    rs.handle_start(r, now);
    let mut to_r: VecDeque<Vec<u8>> = VecDeque::new();
    let mut to_w: VecDeque<Vec<u8>> = VecDeque::new();
    let mut moved = 0;
    loop {
        while let Some(m) = ws.poll_transmit(w).expect("poll") {
            to_r.push_back(encode(&m).expect("encode"));
        }
        while let Some(m) = rs.poll_transmit(r).expect("poll") {
            to_w.push_back(encode(&m).expect("encode"));
        }
        if rs.is_synced() {
            return moved;
        }
        if to_r.is_empty() && to_w.is_empty() {
            panic!("stalled before sync");
        }
        while let Some(b) = to_w.pop_front() {
            moved += b.len();
            ws.handle_bytes(w, &b, now).expect("writer side");
        }
        while let Some(b) = to_r.pop_front() {
            moved += b.len();
            rs.handle_bytes(r, &b, now).expect("replica side");
        }
        while rs.poll_event().is_some() {}
        while ws.poll_event().is_some() {}
    }
}

fn run(c: &mut Criterion, name: &str, blocks: u64, block_size: usize, per_message: u64) {
    let mut w = writer(blocks, block_size);
    let key: FeedKey = *w.key();
    let mut g = c.benchmark_group(format!("sync/{name}"));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    for (unit, throughput) in [
        ("blocks", Throughput::Elements(blocks)),
        ("bytes", Throughput::Bytes(blocks * block_size as u64)),
    ] {
        g.throughput(throughput);
        g.bench_function(format!("{per_message} blocks/message, {unit}"), |b| {
            b.iter_batched(
                || {
                    let r = Feed::create_replica(&MemoryStorage::new(), key).expect("replica");
                    let ws = FeedSync::new(config(Want::Nothing, per_message));
                    let rs = FeedSync::new(config(Want::All, per_message));
                    (r, ws, rs)
                },
                |(mut r, mut ws, mut rs)| {
                    pump(&mut w, &mut ws, &mut r, &mut rs);
                    assert_eq!(r.contiguous_length(), blocks);
                    r
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// The receiving side alone: decode pre-encoded data messages and `Feed::ingest` them
/// (verify, then store) into a replica that holds the head.
fn ingest(c: &mut Criterion, blocks: u64, block_size: usize, per_message: u64) {
    let mut w = writer(blocks, block_size);
    let key = *w.key();
    let upgrade = w.proof(0, blocks, 0, 0).expect("upgrade");
    let frames: Vec<Vec<u8>> = (0..blocks)
        .step_by(per_message as usize)
        .map(|start| {
            let end = (start + per_message).min(blocks);
            let proof = w.proof(blocks, blocks, start, end).expect("proof");
            let data = w.get_range(start, end).expect("read");
            encode(&Message::Data(Data {
                proof,
                blocks: data.into_iter().map(ByteBuf::from).collect(),
            }))
            .expect("encode")
        })
        .collect();
    let mut g = c.benchmark_group("ingest");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(blocks));
    g.bench_function(
        format!("{blocks} x {block_size} B, {per_message} blocks/message, blocks"),
        |b| {
            b.iter_batched(
                || {
                    let mut r = Feed::create_replica(&MemoryStorage::new(), key).expect("replica");
                    r.ingest(&upgrade, vec![]).expect("upgrade");
                    r
                },
                |mut r| {
                    for f in &frames {
                        let Message::Data(d) = decode(f).expect("decode") else {
                            unreachable!("data frames only")
                        };
                        let blocks = d.blocks.into_iter().map(ByteBuf::into_vec).collect();
                        r.ingest(&d.proof, blocks).expect("ingest");
                    }
                    assert_eq!(r.contiguous_length(), blocks);
                    r
                },
                BatchSize::PerIteration,
            )
        },
    );
    g.finish();
}

/// Each side on its own thread, frames passed over channels (a stand-in for a link
/// between two machines): throughput is bounded by the slower side, not their sum.
fn threads(c: &mut Criterion, name: &str, blocks: u64, block_size: usize, per_message: u64) {
    use std::sync::mpsc;
    let w = writer(blocks, block_size);
    let key = *w.key();
    let w = std::sync::Arc::new(std::sync::Mutex::new(w));
    let mut g = c.benchmark_group(format!("sync_threads/{name}"));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(blocks));
    g.bench_function(format!("{per_message} blocks/message, blocks"), |b| {
        b.iter_batched(
            || Feed::create_replica(&MemoryStorage::new(), key).expect("replica"),
            |mut r| {
                let (to_r, from_w) = mpsc::channel::<Vec<u8>>();
                let (to_w, from_r) = mpsc::channel::<Vec<u8>>();
                let writer = std::sync::Arc::clone(&w);
                let server = std::thread::spawn(move || {
                    let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
                    let mut ws = FeedSync::new(config(Want::Nothing, per_message));
                    ws.handle_start(&mut w, Instant::now());
                    loop {
                        while let Some(m) = ws.poll_transmit(&mut w).expect("poll") {
                            if to_r.send(encode(&m).expect("encode")).is_err() {
                                return;
                            }
                        }
                        match from_r.recv() {
                            Ok(bytes) => ws
                                .handle_bytes(&mut w, &bytes, Instant::now())
                                .expect("writer side"),
                            Err(_) => return,
                        }
                    }
                });
                let mut rs = FeedSync::new(config(Want::All, per_message));
                rs.handle_start(&mut r, Instant::now());
                while !rs.is_synced() {
                    while let Some(m) = rs.poll_transmit(&mut r).expect("poll") {
                        to_w.send(encode(&m).expect("encode")).expect("send");
                    }
                    let bytes = from_w.recv().expect("writer alive");
                    rs.handle_bytes(&mut r, &bytes, Instant::now())
                        .expect("replica side");
                    while rs.poll_event().is_some() {}
                }
                drop(to_w);
                drop(from_w);
                server.join().expect("writer thread");
                assert_eq!(r.contiguous_length(), blocks);
                r
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    threads(c, "1KiB x 20000", 20_000, 1024, 64);
    threads(c, "64KiB x 1000", 1_000, 64 * 1024, 16);
    ingest(c, 20_000, 1024, 64);
    run(c, "1KiB x 20000", 20_000, 1024, 64);
    run(c, "1KiB x 20000", 20_000, 1024, 256);
    run(c, "64KiB x 1000", 1_000, 64 * 1024, 16);
}

criterion_group!(benches, bench);
criterion_main!(benches);
