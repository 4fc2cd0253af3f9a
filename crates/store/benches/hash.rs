//! Leaf hashing, the bulk of an append's CPU: RustCrypto `blake2` 0.10 one leaf at a
//! time (what the tree used before), `blake2b_simd` one leaf at a time (`tree::leaf`), and
//! `tree::hash_leaves` (blake2b_simd's `many`: four leaves per AVX2 pass, one thread). All
//! give the same bytes (checked before timing).
//!
//! Run: `cargo bench -p replic8-store --bench hash`

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use replic8_store::tree;

fn rustcrypto_leaf(data: &[u8]) -> [u8; 32] {
    let mut h = Blake2b::<U32>::new();
    h.update([0u8]);
    h.update((data.len() as u64).to_le_bytes());
    h.update(data);
    h.finalize().into()
}

fn leaves(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash/leaves");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for (size, n) in [(64 << 10, 16), (64 << 10, 64), (1 << 10, 256)] {
        let data: Vec<Vec<u8>> = (0..n)
            .map(|i| (0..size).map(|j| (i * 31 + j * 7) as u8).collect())
            .collect();
        let simd = tree::hash_leaves(0, &data);
        for (i, b) in data.iter().enumerate() {
            assert_eq!(simd[i].hash, rustcrypto_leaf(b));
            assert_eq!(simd[i], tree::leaf(i as u64, b));
        }
        g.throughput(Throughput::Bytes((size * n) as u64));
        let label = format!("{}KiBx{n}", size >> 10);
        g.bench_function(BenchmarkId::new("rustcrypto_blake2", &label), |b| {
            b.iter(|| data.iter().map(|d| rustcrypto_leaf(d)).collect::<Vec<_>>())
        });
        g.bench_function(BenchmarkId::new("blake2b_simd_one", &label), |b| {
            b.iter(|| {
                data.iter()
                    .enumerate()
                    .map(|(i, d)| tree::leaf(i as u64, d))
                    .collect::<Vec<_>>()
            })
        });
        g.bench_function(BenchmarkId::new("hash_leaves", &label), |b| {
            b.iter(|| tree::hash_leaves(0, &data))
        });
    }
    g.finish();
}

criterion_group!(benches, leaves);
criterion_main!(benches);
