//! Tests of the feed stream tasks (`stream.rs`).

use super::*;
use crate::feed_store::inbox::*;
use crate::feed_store::receive_budget::ReceiveBudget;
use crate::frame::FrameError;
use crate::keys::PeerKey;
use rand::{rngs::StdRng, Rng, SeedableRng};
use replic8_store::message::DecodeError;

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

/// An inbox of its own store, whose receive budget never binds, owed 1,000 answers.
fn new_inbox() -> Inbox {
    Inbox::new(
        Arc::new(BufferPool::default()),
        ReceiveBudget::new(usize::MAX, usize::MAX).share(PeerKey([1; 32])),
        owed(1000),
    )
}

/// What a stream is owed after sending `n` requests.
fn owed(n: usize) -> Arc<Unanswered> {
    let unanswered = Arc::new(Unanswered::default());
    for _ in 0..n {
        unanswered.asked();
    }
    unanswered
}

/// `n` bytes that begin as a data message does (its tag), random after it.
fn data_payload(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
    if let Some(tag) = p.first_mut() {
        *tag = DATA;
    }
    p
}

/// The first byte of an encoded data message.
const DATA: u8 = 5;

/// Hands `wire` to `inbox` as the driver does: reads of up to [`READ_CHUNKS`] chunks of
/// `chunk` bytes, while the inbox has room; the bytes not taken.
fn feed_inbox(inbox: &mut Inbox, wire: &Bytes, chunk: usize) -> Bytes {
    let mut rest = wire.clone();
    let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
    while !rest.is_empty() && inbox.has_room() {
        let mut n = 0;
        while n < READ_CHUNKS && !rest.is_empty() {
            chunks[n] = rest.split_to(chunk.min(rest.len()));
            n += 1;
        }
        inbox.take_read(Ok(Some(n)), &mut chunks);
    }
    rest
}

fn framed(payloads: &[Vec<u8>]) -> Bytes {
    let mut wire = Vec::new();
    for p in payloads {
        frame::encode(p, MAX_MESSAGE_SIZE, &mut wire).unwrap();
    }
    Bytes::from(wire)
}

#[test]
fn a_frame_at_the_size_limit_split_across_chunks_comes_out_whole() {
    let mut rng = StdRng::seed_from_u64(17);
    let payloads: Vec<Vec<u8>> = [MAX_MESSAGE_SIZE, 0, 1000]
        .iter()
        .map(|&n| data_payload(&mut rng, n))
        .collect();
    let wire = framed(&payloads);
    let mut inbox = new_inbox();
    let rest = feed_inbox(&mut inbox, &wire, 1452);
    assert!(rest.is_empty());
    let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
    inbox.take_read(Ok(None), &mut chunks);
    assert!(inbox.finished && inbox.bad.is_none());
    let got = inbox.batch().unwrap();
    assert_eq!(got.len(), 3);
    for (g, w) in got.iter().zip(&payloads) {
        assert_eq!(&g[..], &w[..]);
    }
    assert_eq!(
        inbox.held,
        payloads
            .iter()
            .map(|p| p.len() + frame::PREFIX_LEN)
            .sum::<usize>(),
        "the batch's bytes stay held until its step is done"
    );
    assert!(inbox.batch().is_none());
}

#[test]
fn the_inbox_stops_reading_at_its_budget_and_batches_what_waits() {
    // 1 MiB frames: the budget (17 MiB) fills after 17 of them, well before 40.
    let payloads = vec![vec![DATA; 1 << 20]; 40];
    let wire = framed(&payloads);
    let mut inbox = new_inbox();
    let rest = feed_inbox(&mut inbox, &wire, 65_536);
    assert!(!inbox.has_room());
    assert!(
        !rest.is_empty(),
        "the peer is stopped before it sent everything"
    );
    let held = inbox.frames.len();
    assert!((17..=18).contains(&held), "{held} frames held");
    assert!(inbox.held <= READ_QUEUE_BYTES + READ_CHUNKS * 65_536);
    // A verified batch gives its bytes back, and reading resumes.
    let batch = inbox.batch().unwrap();
    inbox.release(batch.iter().map(held_bytes).sum::<usize>());
    assert!(inbox.has_room());
    // Small frames: the frame count bounds the queue too.
    let mut inbox = new_inbox();
    let rest = feed_inbox(&mut inbox, &framed(&vec![vec![1u8; 10]; 1000]), 14);
    assert!(!inbox.has_room() && !rest.is_empty());
    assert_eq!(inbox.batch().unwrap().len(), BATCH);
}

#[test]
fn a_bad_or_truncated_frame_is_a_typed_error_and_stops_reading() {
    // Over the limit: refused from its prefix, the rest of the read is not cut.
    let mut wire = ((MAX_MESSAGE_SIZE + 1) as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&[0; 3000]);
    let mut inbox = new_inbox();
    feed_inbox(&mut inbox, &Bytes::from(wire), 1452);
    assert!(matches!(
        inbox.bad,
        Some(InboxError::Frame(FrameError::Oversize { .. }))
    ));
    assert!(!inbox.has_room() && inbox.frames.is_empty());
    // The stream ends inside a frame: truncated, after the whole frames before it.
    let mut wire = framed(&[vec![3u8; 100], vec![4u8; 5000]]).to_vec();
    wire.truncate(wire.len() - 10);
    let mut inbox = new_inbox();
    feed_inbox(&mut inbox, &Bytes::from(wire), 1452);
    assert!(inbox.bad.is_none());
    let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
    inbox.take_read(Ok(None), &mut chunks);
    assert!(inbox.finished);
    assert!(
        matches!(
            inbox.bad,
            Some(InboxError::Frame(FrameError::Truncated { .. }))
        ),
        "{:?}",
        inbox.bad
    );
    assert_eq!(inbox.frames.len(), 1);
}

#[test]
fn the_store_budget_stops_every_stream_past_it_and_each_still_reads_a_frame() {
    // Three streams of one store whose budget is 4 MiB, in packets of 8952 bytes.
    const PACKET: usize = 8952;
    let limit = 4 << 20;
    let budget = ReceiveBudget::new(limit, usize::MAX);
    let pool = Arc::new(BufferPool::default());
    let frames = framed(&vec![vec![DATA; 1 << 20]; 10]);
    let one_read = READ_CHUNKS * PACKET;
    let peer = |n| budget.share(PeerKey([n; 32]));

    // A fast peer fills the store's budget, not its stream's 17 MiB.
    let mut a = Inbox::new(pool.clone(), peer(1), owed(10));
    let rest_a = feed_inbox(&mut a, &frames, PACKET);
    assert!(!a.has_room() && !rest_a.is_empty());
    assert!(budget.full());
    assert!(
        a.held >= limit - (1 << 20) - frame::PREFIX_LEN,
        "{}",
        a.held
    );
    assert!(budget.held() <= limit + one_read, "{}", budget.held());

    // A peer that stops halfway through a frame holds what it sent, no more.
    let mut c = Inbox::new(pool.clone(), peer(3), owed(10));
    let rest_c = feed_inbox(&mut c, &frames.slice(..300_000), PACKET);
    assert!(rest_c.is_empty() && c.frames.is_empty());
    assert_eq!(budget.held(), a.held + a.partial.len() + 300_000);

    // Another stream, holding no whole frame, still reads one, and stops there.
    let mut b = Inbox::new(pool.clone(), peer(2), owed(10));
    let rest_b = feed_inbox(&mut b, &frames, PACKET);
    assert_eq!(b.frames.len(), 1, "one frame past the store's limit");
    assert!(!b.has_room() && !rest_b.is_empty());
    let over = budget.held() - limit;
    assert!(
        over <= 2 * ((1 << 20) + one_read) + 300_000,
        "{over} bytes over the limit"
    );
    assert!(budget.peak() >= budget.held());

    // Verified frames leave the budget: with room again, a stream that holds a frame
    // reads on too.
    let batch = a.batch().unwrap();
    a.release(batch.iter().map(held_bytes).sum());
    assert!(!budget.full() && b.held > 0 && b.has_room());
    let batch = b.batch().unwrap();
    b.release(batch.iter().map(held_bytes).sum());
    assert!(a.has_room() && b.has_room());
    assert_eq!(
        budget.held(),
        a.held + a.partial.len() + b.held + b.partial.len() + c.partial.len(),
        "the store holds what its streams hold"
    );

    // A stream that ends gives back all it held, the frame being gathered included.
    drop(c);
    drop(b);
    assert_eq!(budget.held(), a.held + a.partial.len());
    drop(a);
    assert_eq!(budget.held(), 0);
}

#[test]
fn one_peer_holds_at_most_its_share_of_the_store_budget_and_each_stream_still_reads_a_frame() {
    // A store with room for 32 MiB, each peer's share 3 MiB, packets of 8952 bytes.
    const PACKET: usize = 8952;
    let share = 3 << 20;
    let budget = ReceiveBudget::new(32 << 20, share);
    let pool = Arc::new(BufferPool::default());
    let frames = framed(&vec![vec![DATA; 1 << 20]; 10]);
    let per_stream = (1 << 20) + frame::PREFIX_LEN + READ_CHUNKS * PACKET;
    let (fast, other) = (PeerKey([1; 32]), PeerKey([2; 32]));

    // Two streams of one fast peer stop at its share, far under the store's limit.
    let mut a1 = Inbox::new(pool.clone(), budget.share(fast), owed(10));
    let rest = feed_inbox(&mut a1, &frames, PACKET);
    assert!(!a1.has_room() && !rest.is_empty());
    assert!(!budget.full());
    let mut a2 = Inbox::new(pool.clone(), budget.share(fast), owed(10));
    let rest = feed_inbox(&mut a2, &frames, PACKET);
    assert_eq!(
        a2.frames.len(),
        1,
        "a stream of a full peer still reads one frame"
    );
    assert!(!a2.has_room() && !rest.is_empty());
    assert!(
        budget.held() <= share + 2 * per_stream,
        "the peer holds {} bytes",
        budget.held()
    );
    assert_eq!(budget.peers(), 1);

    // Another peer reads on, up to its own share.
    let mut b = Inbox::new(pool.clone(), budget.share(other), owed(10));
    feed_inbox(&mut b, &frames, PACKET);
    assert!(b.frames.len() >= 3, "{} frames", b.frames.len());
    assert!(b.held + b.partial.len() <= share + per_stream);
    assert!(budget.peer_peak() <= share + 2 * per_stream);
    assert!(budget.peer_peak() >= share, "{}", budget.peer_peak());

    // Verified frames leave the peer's share: its streams read on.
    let batch = a1.batch().unwrap();
    a1.release(batch.iter().map(held_bytes).sum());
    assert!(a1.has_room() && a2.has_room());

    // The share counts the peer's streams together, and goes with its last one.
    let a3 = Inbox::new(pool.clone(), budget.share(fast), owed(10));
    assert_eq!(
        a3.budget_peer_held(),
        a1.held + a1.partial.len() + a2.held + a2.partial.len()
    );
    drop((a1, a2, a3));
    assert_eq!(budget.peers(), 1);
    assert_eq!(budget.held(), b.held + b.partial.len());
    drop(b);
    assert_eq!((budget.peers(), budget.held()), (0, 0));
}

#[test]
fn every_frame_is_checked_from_its_first_five_bytes_however_they_arrive() {
    use replic8_store::message::{encode, Message, Request};
    let pool = Arc::new(BufferPool::default());
    let budget = ReceiveBudget::new(usize::MAX, usize::MAX);
    let inbox = |owed_answers| {
        Inbox::new(
            pool.clone(),
            budget.share(PeerKey([1; 32])),
            owed(owed_answers),
        )
    };
    let request = encode(&Message::Request(Request {
        start: 0,
        end: 1,
        length: 1,
    }))
    .unwrap();
    let no_data = encode(&Message::NoData { start: 0, end: 1 }).unwrap();
    let data = vec![DATA; 50_000];
    for chunk in [1usize, 2, 3, 4, 5, 1452] {
        // Two answers owed: a data and a no-data frame pass, with other messages
        // between them; a third answer is refused from its tag, before its rest.
        let mut wire = framed(&[data.clone(), request.clone(), no_data.clone()]).to_vec();
        let before_third = wire.len();
        wire.extend_from_slice(&framed(std::slice::from_ref(&data)));
        let mut two = inbox(2);
        feed_inbox(&mut two, &Bytes::from(wire.clone()), chunk);
        assert_eq!(
            two.bad,
            Some(InboxError::Unrequested { asked: 2 }),
            "chunks of {chunk}"
        );
        assert_eq!(two.frames.len(), 3, "chunks of {chunk}");
        assert!(!two.has_room());
        // The refusal came from the first bytes of the third frame: at most one read
        // of it was taken.
        let read = two.held + two.partial.len();
        assert!(
            read - (before_third) <= READ_CHUNKS * chunk,
            "chunks of {chunk}: {read} bytes read"
        );

        // Anything but data over 32 KiB is refused from its tag and prefix alone.
        let mut big_have = ((1u32 << 20).to_be_bytes()).to_vec();
        big_have.extend_from_slice(&[0u8; 4096]);
        let mut one = inbox(1);
        feed_inbox(&mut one, &Bytes::from(big_have), chunk);
        assert!(
            matches!(
                one.bad,
                Some(InboxError::Leading {
                    len: 1_048_576,
                    error: DecodeError::Oversize { .. }
                })
            ),
            "chunks of {chunk}: {:?}",
            one.bad
        );
        assert!(one.partial.len() <= READ_CHUNKS * chunk);

        // A tag that names no message.
        let mut one = inbox(1);
        feed_inbox(&mut one, &framed(&[vec![200u8; 10]]), chunk);
        assert!(
            matches!(
                one.bad,
                Some(InboxError::Leading {
                    error: DecodeError::Invalid(_),
                    ..
                })
            ),
            "chunks of {chunk}: {:?}",
            one.bad
        );
    }
    // Empty frames carry no tag: they pass here and fail to decode in the core.
    let mut none = inbox(0);
    feed_inbox(&mut none, &framed(&[vec![], vec![], request.clone()]), 3);
    assert_eq!((none.bad.as_ref(), none.frames.len()), (None, 3));
}
