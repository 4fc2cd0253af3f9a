//! Tests of the feed stream tasks (`stream.rs`).

use super::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Cuts `wire` delivered in the given chunk sizes, as `read_frames` does.
fn cut_all(wire: &Bytes, sizes: &mut dyn FnMut() -> usize) -> Result<Vec<Bytes>, FrameError> {
    let pool = Arc::new(BufferPool::default());
    let mut partial = Vec::new();
    let mut out = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let n = sizes().clamp(1, wire.len() - at);
        let mut data = wire.slice(at..at + n);
        at += n;
        while !data.is_empty() {
            if let Some(f) = next_frame(&mut data, &mut partial, &pool)? {
                out.push(f);
            }
        }
    }
    frame::check_end(&partial, MAX_MESSAGE_SIZE)?;
    Ok(out)
}

#[test]
fn frames_are_cut_the_same_whatever_the_chunks() {
    let mut rng = StdRng::seed_from_u64(8);
    let sizes = [0usize, 1, 3, 1000, 70_000, 300_000, MAX_MESSAGE_SIZE];
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .map(|&n| (0..n).map(|_| rng.gen()).collect())
        .collect();
    let mut wire = Vec::new();
    for p in &payloads {
        frame::encode(p, MAX_MESSAGE_SIZE, &mut wire).unwrap();
    }
    let wire = Bytes::from(wire);
    for max_chunk in [1usize, 2, 5, 1200, 1452, 65_536, 2 << 20] {
        // Single-byte chunks over a 1 MiB frame are slow in debug builds: use them
        // only on the small frames.
        let wire = if max_chunk < 1000 {
            wire.slice(..4 * 4 + 1 + 3 + 1000)
        } else {
            wire.clone()
        };
        let got = cut_all(&wire, &mut || rng.gen_range(1..=max_chunk)).unwrap();
        let want = if max_chunk < 1000 {
            &payloads[..4]
        } else {
            &payloads[..]
        };
        assert_eq!(got.len(), want.len(), "chunks up to {max_chunk}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(&g[..], &w[..], "chunks up to {max_chunk}");
        }
    }
}

#[test]
fn a_data_frame_sends_its_large_blocks_in_place() {
    use replic8_store::message::Data;
    use replic8_store::{Message, Proof};
    let pool = Arc::new(BufferPool::default());
    let sizes = [
        0usize,
        10,
        SEND_IN_PLACE - 1,
        SEND_IN_PLACE,
        65_536,
        3,
        65_536,
    ];
    let blocks: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![n as u8; n]).collect();
    let message = Message::Data(Data {
        proof: Proof {
            base: 20,
            length: 20,
            start: 3,
            end: 3 + sizes.len() as u64,
            nodes: vec![],
            head: None,
        },
        blocks: blocks.iter().cloned().map(Into::into).collect(),
    });
    let mut want = Vec::new();
    let payload = replic8_store::encode(&message).unwrap();
    frame::encode(&payload, MAX_MESSAGE_SIZE, &mut want).unwrap();
    let Message::Data(data) = &message else {
        unreachable!()
    };
    let large: Vec<*const u8> = data
        .blocks
        .iter()
        .filter(|b| b.len() >= SEND_IN_PLACE)
        .map(|b| b.as_ptr())
        .collect();
    let chunks = encode_frame(&pool, message).unwrap();
    assert_eq!(chunks.concat(), want);
    // Each large block is a chunk of its own, the very buffer the message held.
    let sent: Vec<*const u8> = chunks
        .iter()
        .map(|c| c.as_ptr())
        .filter(|p| large.contains(p))
        .collect();
    assert_eq!(sent, large);
    // Other messages are one chunk.
    let request = Message::NoData { start: 1, end: 2 };
    let chunks = encode_frame(&pool, request.clone()).unwrap();
    assert_eq!(chunks.len(), 1);
    let mut want = Vec::new();
    frame::encode(
        &replic8_store::encode(&request).unwrap(),
        MAX_MESSAGE_SIZE,
        &mut want,
    )
    .unwrap();
    assert_eq!(chunks[0], want);
}

#[test]
fn an_oversize_prefix_fails_before_its_bytes_arrive() {
    let mut wire = ((MAX_MESSAGE_SIZE + 1) as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&[0; 100]);
    for chunk in [1usize, 3, 104] {
        let err = cut_all(&Bytes::from(wire.clone()), &mut || chunk).unwrap_err();
        assert!(matches!(err, FrameError::Oversize { .. }), "{err}");
    }
    // A stream that ends inside a frame is truncated, however it was chunked.
    let mut wire = Vec::new();
    frame::encode(&[1; 5000], MAX_MESSAGE_SIZE, &mut wire).unwrap();
    wire.truncate(3000);
    for chunk in [2usize, 1452] {
        let err = cut_all(&Bytes::from(wire.clone()), &mut || chunk).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }), "{err}");
    }
}

#[test]
fn a_bare_prefix_does_not_reserve_the_announced_size() {
    let pool = Arc::new(BufferPool::default());
    // A pooled megabyte is idle: a bare prefix must still not take it.
    drop(pool.freeze(pool.take(MAX_MESSAGE_SIZE + frame::PREFIX_LEN)));
    let mut partial = Vec::new();
    let mut prefix = Bytes::from((MAX_MESSAGE_SIZE as u32).to_be_bytes().to_vec());
    assert!(next_frame(&mut prefix, &mut partial, &pool)
        .unwrap()
        .is_none());
    assert!(
        partial.capacity() <= RESERVE_AFTER,
        "{}",
        partial.capacity()
    );
    // Bytes trickling in stay under the bound until RESERVE_AFTER of them arrived.
    let mut trickle = Bytes::from(vec![7u8; RESERVE_AFTER / 2]);
    assert!(next_frame(&mut trickle, &mut partial, &pool)
        .unwrap()
        .is_none());
    assert!(
        partial.capacity() <= RESERVE_AFTER,
        "{}",
        partial.capacity()
    );
    let mut more = Bytes::from(vec![7u8; RESERVE_AFTER]);
    assert!(next_frame(&mut more, &mut partial, &pool)
        .unwrap()
        .is_none());
    assert!(partial.capacity() >= MAX_MESSAGE_SIZE + frame::PREFIX_LEN);
}
