//! Proof verification (`Proof::verify`, `Feed::ingest`) against a real feed, so the
//! fuzzer explores verification rather than only decoding.
//!
//! Input: byte 0 picks how much of the fixture feed the replica holds; byte 1's low bit
//! picks the mode:
//! - mutate: the next bytes pick a real proof (base, length, start, end) made by the
//!   fixture writer, then every following 3 bytes apply one mutation (flip a node's hash,
//!   index or size, drop, duplicate or swap nodes, change a block, add or drop a block,
//!   change a length field, swap in another real signed head, drop the head);
//! - raw: the rest is a sync message; a `Data` or `Upgrade` gives the proof and blocks.
//!
//! Properties: nothing panics; a proof that verifies (standalone against the real roots
//! at its base, or through `Feed::ingest`) proves only the feed's real blocks under its
//! real heads; a failed ingest changes nothing; afterwards the replica still accepts the
//! writer's real proof of the rest of the feed (a hostile proof cannot wedge it).
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use replic8_fuzz_fixtures as fx;
use replic8_store::message::{Data, Message};
use replic8_store::storage::MemoryFeed;
use replic8_store::{decode, Feed, Proof};

thread_local! {
    /// Writers at every length 1..=BLOCKS (index len - 1).
    static WRITERS: RefCell<Vec<Feed<MemoryFeed>>> =
        RefCell::new((1..=fx::BLOCKS).map(fx::writer).collect());
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn below(&mut self, n: u64) -> Option<u64> {
        Some(u64::from(self.byte()?) % n)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(pick) = input.byte() else { return };
    let Some(mode) = input.byte() else { return };
    let held = [0, 1, 3, 8, 13][usize::from(pick % 5)];
    let mut replica = fx::replica(held);

    let (proof, blocks) = if mode & 1 == 0 {
        match mutated(&mut input) {
            Some(x) => x,
            None => return,
        }
    } else {
        match decode(input.0) {
            Ok(Message::Data(Data { proof, blocks })) => {
                (proof, blocks.into_iter().map(|b| b.into_vec()).collect())
            }
            Ok(Message::Upgrade { proof }) => (proof, Vec::new()),
            _ => return,
        }
    };

    // Standalone verification against the real roots at the proof's base.
    if proof.base <= fx::BLOCKS {
        let base_roots = match proof.base {
            0 => Vec::new(),
            b => fx::real_state(b).1.clone(),
        };
        if let Ok(v) = proof.verify(&fx::secret().key(), &base_roots, &blocks) {
            assert!(v.length <= fx::BLOCKS, "verified a length never signed");
            if v.length > 0 {
                assert_eq!(v.roots, fx::real_state(v.length).1, "verified other roots");
            }
            check_blocks(proof.start, &blocks);
        }
    }

    // Through the feed.
    let before = (replica.length(), replica.stored_count());
    match replica.ingest(&proof, blocks.clone()) {
        Ok(ingested) => {
            assert_eq!(ingested.blocks, proof.start..proof.end);
            check_blocks(proof.start, &blocks);
        }
        Err(_) => assert_eq!((replica.length(), replica.stored_count()), before),
    }
    check_replica(&mut replica);

    // The replica still takes the real rest of the feed.
    let from = replica.length();
    if from < fx::BLOCKS {
        let real = WRITERS.with(|w| {
            w.borrow_mut()[(fx::BLOCKS - 1) as usize]
                .proof(from, fx::BLOCKS, from, fx::BLOCKS)
                .expect("real proof")
        });
        let rest: Vec<Vec<u8>> = (from..fx::BLOCKS).map(fx::block).collect();
        replica
            .ingest(&real, rest)
            .expect("the real proof is still accepted after a hostile one");
        check_replica(&mut replica);
        assert_eq!(replica.length(), fx::BLOCKS);
    }
});

/// A real proof picked by the input, then mutated by it.
fn mutated(input: &mut Input<'_>) -> Option<(Proof, Vec<Vec<u8>>)> {
    let writer_len = 1 + input.below(fx::BLOCKS)?;
    let base = input.below(writer_len + 1)?;
    let length = if input.byte()? & 1 == 0 {
        writer_len
    } else {
        base
    };
    let start = input.below(length + 1)?;
    let end = start + input.below(length - start + 1)?;
    let mut proof = WRITERS
        .with(|w| w.borrow_mut()[(writer_len - 1) as usize].proof(base, length, start, end))
        .ok()?;
    let mut blocks: Vec<Vec<u8>> = (start..end).map(fx::block).collect();
    while let (Some(op), Some(a), Some(b)) = (input.byte(), input.byte(), input.byte()) {
        let n = proof.nodes.len();
        let (a, b) = (usize::from(a), usize::from(b));
        match op % 12 {
            0 if n > 0 => proof.nodes[a % n].hash[b % 32] ^= 1 << (b % 8),
            1 if n > 0 => proof.nodes[a % n].index = b as u64,
            2 if n > 0 => proof.nodes[a % n].size ^= 1 << (b % 64),
            3 if n > 0 => {
                proof.nodes.remove(a % n);
            }
            4 if n > 0 => {
                let node = proof.nodes[a % n];
                proof.nodes.insert(b % (n + 1), node);
            }
            5 if n > 0 => proof.nodes.swap(a % n, b % n),
            6 if !blocks.is_empty() => {
                let i = a % blocks.len();
                match b % 3 {
                    0 => blocks[i].push(b as u8),
                    1 => {
                        blocks[i].pop();
                    }
                    _ => {
                        if let Some(x) = blocks[i].get_mut(b % 13) {
                            *x ^= 1;
                        }
                    }
                }
            }
            7 => {
                if b & 1 == 0 {
                    blocks.pop();
                } else {
                    blocks.push(fx::block(a as u64));
                }
            }
            8 => {
                let v = b as u64;
                match a % 4 {
                    0 => proof.base = v,
                    1 => proof.length = v,
                    2 => proof.start = v,
                    _ => proof.end = v,
                }
            }
            9 => proof.head = Some(fx::real_state(1 + b as u64 % fx::BLOCKS).0),
            10 => proof.head = None,
            11 => {
                if let Some(h) = proof.head.as_mut() {
                    match a % 3 {
                        0 => h.length ^= 1 << (b % 64),
                        1 => h.tree_hash[b % 32] ^= 1,
                        _ => h.signature[b % 64] ^= 1,
                    }
                }
            }
            _ => {}
        }
    }
    Some((proof, blocks))
}

/// Verified blocks from `start` are the feed's real blocks.
fn check_blocks(start: u64, blocks: &[Vec<u8>]) {
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(*b, fx::block(start + i as u64), "a wrong block verified");
    }
}

/// The replica holds only the feed's real blocks under a real head.
fn check_replica(replica: &mut Feed<MemoryFeed>) {
    let length = replica.length();
    assert!(length <= fx::BLOCKS, "replica accepted a head never signed");
    if length > 0 {
        let (head, roots) = fx::real_state(length);
        let got = replica.head().map(|h| (h.length, h.tree_hash));
        assert_eq!(got, Some((head.length, head.tree_hash)));
        assert_eq!(replica.roots(), roots.as_slice());
    }
    for i in 0..length {
        if replica.has(i) {
            let got = replica.get(i).expect("stored block reads");
            assert_eq!(got, Some(fx::block(i)), "replica stored a wrong block {i}");
        }
    }
}
