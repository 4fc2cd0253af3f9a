//! Proof creation and verification for a batch of contiguous blocks.
//!
//! `cargo bench -p replic8-store --bench proofs`

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use replic8_store::storage::{MemoryFeed, MemoryStorage};
use replic8_store::{tree, Feed, FeedSecret};
use std::time::Duration;

const BLOCKS: u64 = 65_536;
const BATCH: u64 = 64;

fn writer(block_size: usize) -> Feed<MemoryFeed> {
    let storage = MemoryStorage::new();
    let mut feed = Feed::create(&storage, FeedSecret::from_bytes(&[1; 32])).expect("create");
    let blocks: Vec<Vec<u8>> = (0..1024u64)
        .map(|i| vec![(i % 251) as u8; block_size])
        .collect();
    for _ in 0..BLOCKS / 1024 {
        feed.append_batch(&blocks).expect("append");
    }
    feed
}

fn bench(c: &mut Criterion) {
    let mut w = writer(1024);
    let key = *w.key();
    let mut g = c.benchmark_group("proof");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(BATCH));
    let mut i = 0u64;
    g.bench_function("create data proof, 64 blocks, tree of 65536", |b| {
        b.iter(|| {
            i = (i + BATCH) % (BLOCKS - BATCH);
            w.proof(BLOCKS, BLOCKS, i, i + BATCH).expect("proof")
        })
    });
    g.bench_function("create signed proof, 64 blocks, from base 0", |b| {
        b.iter(|| {
            i = (i + BATCH) % (BLOCKS - BATCH);
            w.proof(0, BLOCKS, i, i + BATCH).expect("proof")
        })
    });
    let start = 30_000;
    let data = w
        .proof(BLOCKS, BLOCKS, start, start + BATCH)
        .expect("proof");
    let signed = w.proof(0, BLOCKS, start, start + BATCH).expect("proof");
    let blocks = w.get_range(start, start + BATCH).expect("read");
    let roots = w.roots().to_vec();
    g.bench_function("verify data proof, 64 x 1 KiB blocks", |b| {
        b.iter(|| data.verify(&key, &roots, &blocks).expect("verify"))
    });
    g.bench_function("verify signed proof, 64 x 1 KiB blocks", |b| {
        b.iter(|| signed.verify(&key, &[], &blocks).expect("verify"))
    });
    // Verified ingest into a replica that already holds the head: verify + store.
    g.bench_function("ingest data proof, 64 x 1 KiB blocks", |b| {
        b.iter_batched(
            || {
                let mut r = Feed::create_replica(&MemoryStorage::new(), key).expect("replica");
                r.ingest(&w.proof(0, BLOCKS, 0, 0).expect("upgrade"), vec![])
                    .expect("upgrade");
                (r, blocks.clone())
            },
            |(mut r, blocks)| r.ingest(&data, blocks).expect("ingest"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Leaf hashing of an 8 MiB batch: one thread against `tree::hash_leaves`, which splits a
/// batch of at least 4 MiB over two threads.
fn hashing(c: &mut Criterion) {
    let blocks: Vec<Vec<u8>> = (0..128u64).map(|i| vec![i as u8; 64 * 1024]).collect();
    let mut g = c.benchmark_group("leaves");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(128 * 64 * 1024));
    g.bench_function("128 x 64 KiB, one thread", |b| {
        b.iter(|| {
            blocks
                .iter()
                .enumerate()
                .map(|(i, d)| tree::leaf(i as u64, d))
                .collect::<Vec<_>>()
        })
    });
    g.bench_function("128 x 64 KiB, hash_leaves (two threads)", |b| {
        b.iter(|| tree::hash_leaves(0, &blocks))
    });
    g.finish();
}

criterion_group!(benches, bench, hashing);
criterion_main!(benches);
