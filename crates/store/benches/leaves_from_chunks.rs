//! Leaf hashing of data frames as QUIC delivers them, in packet-sized chunks: what the
//! reader does now (gather each 1 MiB frame into one buffer, then `tree::hash_leaves`,
//! four leaves per AVX2 pass) against hashing each block's pieces where they lie (the
//! plan that would remove the gather copy): four leaves at a time in rounds of
//! `blake2b_simd::many::update_many`, one piece of each block per round, or one leaf at
//! a time. Chunks of 8,922 bytes (jumbo datagrams on loopback) and 1,422 (a 1,500-byte
//! path). Every variant gives `tree::hash_leaves`'s bytes (checked before timing).
//!
//! Run: `cargo bench -p replic8-store --bench leaves_from_chunks`

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use replic8_store::tree;

const BLOCK: usize = 64 << 10;
const PER_FRAME: usize = 16;
const FRAMES: usize = 16;
/// A data message's header and proof before its first block.
const HEADER: usize = 700;

/// The stream as chunks of `chunk` bytes, and each block's pieces in them:
/// `(chunk, from, to)`.
struct Stream {
    chunks: Vec<Vec<u8>>,
    frame_len: usize,
    blocks: Vec<Vec<(usize, usize, usize)>>,
}

impl Stream {
    fn new(chunk: usize) -> Stream {
        let frame_len = HEADER + PER_FRAME * (BLOCK + 8);
        let wire: Vec<u8> = (0..FRAMES * frame_len)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let chunks: Vec<Vec<u8>> = wire.chunks(chunk).map(<[u8]>::to_vec).collect();
        let blocks = (0..FRAMES * PER_FRAME)
            .map(|i| {
                let (f, b) = (i / PER_FRAME, i % PER_FRAME);
                let start = f * frame_len + HEADER + b * (BLOCK + 8) + 8;
                pieces(chunk, start, start + BLOCK)
            })
            .collect();
        Stream {
            chunks,
            frame_len,
            blocks,
        }
    }

    fn piece(&self, (c, from, to): (usize, usize, usize)) -> &[u8] {
        &self.chunks[c][from..to]
    }
}

/// Wire bytes `start..end` as pieces of chunks of `chunk` bytes.
fn pieces(chunk: usize, start: usize, end: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let from = at % chunk;
        let to = chunk.min(from + end - at);
        out.push((at / chunk, from, to));
        at += to - from;
    }
    out
}

/// A leaf's hash state before its data: type 0 and the length, as `tree::leaf` hashes.
fn leaf_state(len: usize) -> blake2b_simd::State {
    let mut s = blake2b_simd::Params::new().hash_length(32).to_state();
    s.update(&[0u8]);
    s.update(&(len as u64).to_le_bytes());
    s
}

/// Now: each frame gathered into `buf`, its blocks hashed by `tree::hash_leaves`.
fn gathered(s: &Stream, buf: &mut Vec<u8>) -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    for f in 0..FRAMES {
        buf.clear();
        for p in pieces(s.chunks[0].len(), f * s.frame_len, (f + 1) * s.frame_len) {
            buf.extend_from_slice(s.piece(p));
        }
        let blocks: Vec<&[u8]> = (0..PER_FRAME)
            .map(|b| {
                let start = HEADER + b * (BLOCK + 8) + 8;
                &buf[start..start + BLOCK]
            })
            .collect();
        out.extend(tree::hash_leaves(0, &blocks).iter().map(|n| n.hash));
    }
    out
}

/// The plan: each frame's blocks hashed where they lie, one piece of each per round.
fn in_place(s: &Stream) -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    for frame in s.blocks.chunks(PER_FRAME) {
        let mut states: Vec<_> = frame.iter().map(|_| leaf_state(BLOCK)).collect();
        let rounds = frame.iter().map(Vec::len).max().unwrap_or(0);
        for k in 0..rounds {
            blake2b_simd::many::update_many(
                states
                    .iter_mut()
                    .zip(frame)
                    .filter_map(|(st, ps)| ps.get(k).map(|&p| (st, s.piece(p)))),
            );
        }
        out.extend(states.iter().map(finish));
    }
    out
}

/// One leaf at a time, piece by piece.
fn one_lane(s: &Stream) -> Vec<[u8; 32]> {
    s.blocks
        .iter()
        .map(|ps| {
            let mut st = leaf_state(BLOCK);
            for &p in ps {
                st.update(s.piece(p));
            }
            finish(&st)
        })
        .collect()
}

fn finish(st: &blake2b_simd::State) -> [u8; 32] {
    st.finalize().as_bytes().try_into().unwrap()
}

fn leaves_from_chunks(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash/leaves_from_chunks");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Bytes((FRAMES * PER_FRAME * BLOCK) as u64));
    for chunk in [8922, 1422] {
        let s = Stream::new(chunk);
        let mut buf = Vec::with_capacity(s.frame_len);
        let now = gathered(&s, &mut buf);
        assert_eq!(in_place(&s), now);
        assert_eq!(one_lane(&s), now);
        g.bench_with_input(
            BenchmarkId::new("gather_then_4_lanes", chunk),
            &s,
            |b, s| b.iter(|| gathered(s, &mut buf)),
        );
        g.bench_with_input(BenchmarkId::new("in_place_4_lanes", chunk), &s, |b, s| {
            b.iter(|| in_place(s))
        });
        g.bench_with_input(BenchmarkId::new("in_place_1_lane", chunk), &s, |b, s| {
            b.iter(|| one_lane(s))
        });
    }
    g.finish();
}

criterion_group!(benches, leaves_from_chunks);
criterion_main!(benches);
