//! Mutated and random bytes from a peer: the sync core never panics, and a replica never
//! stores a block that differs from the writer's.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replic8_store::storage::{MemoryFeed, MemoryStorage};
use replic8_store::{decode, encode, Feed, FeedSecret, FeedSync, Message, SyncConfig, Want};

fn writer(n: u64) -> Feed<MemoryFeed> {
    let mut feed =
        Feed::create(&MemoryStorage::new(), FeedSecret::from_bytes(&[6; 32])).expect("create");
    let blocks: Vec<Vec<u8>> = (0..n)
        .map(|i| vec![i as u8; 1 + (i % 9) as usize])
        .collect();
    feed.append_batch(&blocks).expect("append");
    feed
}

fn mutate(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    match rng.gen_range(0..4) {
        0 if !b.is_empty() => {
            let i = rng.gen_range(0..b.len());
            b[i] ^= 1 << rng.gen_range(0..8);
        }
        1 if !b.is_empty() => b.truncate(rng.gen_range(0..b.len())),
        2 => {
            let i = rng.gen_range(0..=b.len());
            b.insert(i, rng.gen());
        }
        _ => {
            let n = rng.gen_range(0..64);
            b = (0..n).map(|_| rng.gen()).collect();
        }
    }
    b
}

#[test]
fn mutated_messages_never_store_wrong_blocks() {
    let mut rng = StdRng::seed_from_u64(42);
    let mut w = writer(200);
    let key = *w.key();
    let now = Instant::now();
    let mut rejected = 0;
    for round in 0..300 {
        let mut r = Feed::create_replica(&MemoryStorage::new(), key).expect("replica");
        let mut ws = FeedSync::new(SyncConfig {
            want: Want::Nothing,
            live: false,
            ..SyncConfig::default()
        });
        let mut rs = FeedSync::new(SyncConfig {
            want: Want::All,
            live: false,
            blocks_per_message: 16,
            ..SyncConfig::default()
        });
        ws.handle_start(&mut w, now);
        rs.handle_start(&mut r, now);
        // One message in this round, chosen at random, reaches the replica mutated.
        let victim = rng.gen_range(0..12);
        let mut n = 0;
        'sync: for _ in 0..100 {
            while let Some(m) = ws.poll_transmit(&mut w).expect("poll") {
                let bytes = encode(&m).expect("encode");
                let bytes = if n == victim {
                    mutate(&mut rng, &bytes)
                } else {
                    bytes
                };
                n += 1;
                if rs.handle_bytes(&mut r, &bytes, now).is_err() {
                    rejected += 1;
                    break 'sync;
                }
            }
            let mut sent = false;
            while let Some(m) = rs.poll_transmit(&mut r).expect("poll") {
                sent = true;
                let bytes = encode(&m).expect("encode");
                if ws.handle_bytes(&mut w, &bytes, now).is_err() {
                    break 'sync;
                }
            }
            if !sent || rs.is_synced() {
                break;
            }
        }
        for i in 0..r.length() {
            if let Some(b) = r.get(i).expect("get") {
                assert_eq!(Some(b), w.get(i).expect("get"), "round {round} block {i}");
            }
        }
        if let Some(h) = r.head() {
            assert!(key.verify_head(h), "round {round}: stored head verifies");
        }
    }
    assert!(rejected > 50, "mutations were caught: {rejected}");
}

#[test]
fn random_bytes_never_panic_the_decoder() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut w = writer(20);
    let samples: Vec<Vec<u8>> = {
        let mut s = FeedSync::new(SyncConfig::default());
        s.handle_start(&mut w, Instant::now());
        let mut out = Vec::new();
        while let Some(m) = s.poll_transmit(&mut w).expect("poll") {
            out.push(encode(&m).expect("encode"));
        }
        let p = w.proof(0, 20, 3, 9).expect("proof");
        let data = Message::Data(replic8_store::message::Data {
            proof: p,
            blocks: w
                .get_range(3, 9)
                .expect("read")
                .into_iter()
                .map(serde_bytes::ByteBuf::from)
                .collect(),
        });
        out.push(encode(&data).expect("encode"));
        out
    };
    for _ in 0..20_000 {
        let base = &samples[rng.gen_range(0..samples.len())];
        let bytes = mutate(&mut rng, base);
        let _ = decode(&bytes);
    }
}

/// Lengths near `u64::MAX` in any field are refused before any index arithmetic.
#[test]
fn huge_lengths_are_refused_without_overflow() {
    use replic8_store::message::Request;
    use replic8_store::{DecodeError, Proof, VerifyError};
    let w = writer(3);
    let key = *w.key();
    let huge = Proof {
        base: 0,
        length: u64::MAX,
        start: u64::MAX - 1,
        end: u64::MAX,
        nodes: vec![],
        head: w.head().copied(),
    };
    assert_eq!(
        huge.verify(&key, &[], &[b"x"]),
        Err(VerifyError::Malformed("length over the limit"))
    );
    let up = encode(&Message::Upgrade { proof: huge }).expect("encode");
    assert_eq!(
        decode(&up),
        Err(DecodeError::Invalid("length over the limit"))
    );
    let req = encode(&Message::Request(Request {
        start: 0,
        end: 1,
        length: u64::MAX,
    }))
    .expect("encode");
    assert!(decode(&req).is_err());
    let from = encode(&Message::RequestUpgrade { from: u64::MAX }).expect("encode");
    assert!(decode(&from).is_err());
}
