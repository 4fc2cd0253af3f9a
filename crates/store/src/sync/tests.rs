//! Tests of `FeedSync` that need a feed.

use super::*;

#[test]
fn close_releases_claims() {
    use crate::keys::{FeedSecret, SignedHead};
    use crate::storage::MemoryStorage;
    let secret = FeedSecret::from_bytes(&[2; 32]);
    let mut w = Feed::create(&MemoryStorage::new(), secret).unwrap();
    let blocks: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i]).collect();
    w.append_batch(&blocks).unwrap();
    let mut r = Feed::create_replica(&MemoryStorage::new(), *w.key()).unwrap();
    r.ingest(&w.proof(0, 100, 0, 0).unwrap(), vec![]).unwrap();
    let now = Instant::now();
    let head: SignedHead = *w.head().unwrap();
    let have = Message::Have(Have {
        head: Some(head),
        ranges: vec![(0, 100)],
    });
    let mut a = FeedSync::new(SyncConfig::default());
    a.handle_start(&mut r, now);
    a.handle_message(&mut r, have, now).unwrap();
    assert!(a.outstanding() > 0);
    let other = a.id + 1_000_000;
    assert!(
        r.claimed_by_other(0, other, now).is_some(),
        "a claimed block 0"
    );
    a.close(&mut r);
    assert_eq!(r.claimed_by_other(0, other, now), None, "close released it");
    assert_eq!(a.outstanding(), 0);
}

/// A replica of `n` blocks of `size` bytes with the writer's head (no block stored),
/// and a `Have` of the writer holding them all.
fn replica_and_have(n: u8, size: usize) -> (Feed<crate::storage::MemoryFeed>, Message) {
    use crate::keys::FeedSecret;
    use crate::storage::MemoryStorage;
    let secret = FeedSecret::from_bytes(&[2; 32]);
    let mut w = Feed::create(&MemoryStorage::new(), secret).unwrap();
    let blocks: Vec<Vec<u8>> = (0..n).map(|i| vec![i; size]).collect();
    w.append_batch(&blocks).unwrap();
    let mut r = Feed::create_replica(&MemoryStorage::new(), *w.key()).unwrap();
    r.ingest(&w.proof(0, u64::from(n), 0, 0).unwrap(), vec![])
        .unwrap();
    let have = Message::Have(Have {
        head: Some(*w.head().unwrap()),
        ranges: vec![(0, u64::from(n))],
    });
    (r, have)
}

#[test]
fn the_endgame_takes_over_only_the_claims_of_a_core_that_stopped_getting_data() {
    let (mut r, have) = replica_and_have(100, 1);
    let now = Instant::now();
    // `a` claims every block (two requests of 64); `b`'s peer has nothing else.
    let mut a = FeedSync::new(SyncConfig::default());
    a.handle_start(&mut r, now);
    a.handle_message(&mut r, have.clone(), now).unwrap();
    let mut b = FeedSync::new(SyncConfig::default());
    b.handle_start(&mut r, now);
    b.handle_message(&mut r, have, now).unwrap();
    assert_eq!(b.outstanding(), 0, "b leaves a's fresh claims alone");
    // `a` got data 5 s in: its claims are alive until 5 s + ENDGAME_AFTER.
    let progress = now + Duration::from_secs(5);
    r.refresh_claims(a.id, progress);
    b.handle_feed_update(&mut r, now + ENDGAME_AFTER);
    assert_eq!(b.outstanding(), 0, "a delivers: not stalled");
    b.handle_feed_update(&mut r, progress + ENDGAME_AFTER - Duration::from_millis(1));
    assert_eq!(
        b.outstanding(),
        0,
        "a's last data is not ENDGAME_AFTER old yet"
    );
    b.handle_feed_update(&mut r, progress + ENDGAME_AFTER);
    assert!(b.outstanding() > 0, "a stalled: b asks for its blocks too");
}

#[test]
fn a_request_asks_for_at_most_one_data_message_of_blocks() {
    // 64 blocks of 64 KiB: 4 MiB, above `max_data_bytes` (1 MiB), so 16 blocks each.
    let (mut r, have) = replica_and_have(64, 64 << 10);
    let now = Instant::now();
    let config = SyncConfig::default();
    assert_eq!(config.max_data_bytes, 1 << 20);
    let mut a = FeedSync::new(config);
    a.handle_start(&mut r, now);
    a.handle_message(&mut r, have, now).unwrap();
    let mut asked = Vec::new();
    while let Some(m) = a.poll_transmit(&mut r).unwrap() {
        if let Message::Request(q) = m {
            asked.push((q.start, q.end));
        }
    }
    assert_eq!(asked, vec![(0, 16), (16, 32), (32, 48), (48, 64)]);
}

#[test]
fn a_partial_copy_is_announced_every_mib() {
    use crate::keys::FeedSecret;
    use crate::storage::MemoryStorage;
    // 64 blocks of 64 KiB: a MiB is 16 blocks, far below `HAVE_EVERY_BLOCKS`.
    let mut w = Feed::create(&MemoryStorage::new(), FeedSecret::from_bytes(&[2; 32])).unwrap();
    let blocks: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 64 << 10]).collect();
    w.append_batch(&blocks).unwrap();
    let mut r = Feed::create_replica(&MemoryStorage::new(), *w.key()).unwrap();
    r.ingest(&w.proof(0, 64, 0, 0).unwrap(), vec![]).unwrap();
    let now = Instant::now();
    let mut a = FeedSync::new(SyncConfig::default());
    a.handle_start(&mut r, now);
    let haves = |a: &mut FeedSync, r: &mut Feed<crate::storage::MemoryFeed>| {
        let mut out = Vec::new();
        while let Some(m) = a.poll_transmit(r).unwrap() {
            if let Message::Have(h) = m {
                out.push(h.ranges);
            }
        }
        out
    };
    assert_eq!(haves(&mut a, &mut r), vec![Vec::<(u64, u64)>::new()]);
    // Another core stores 15 blocks: under a MiB, nothing to tell.
    r.ingest(&w.proof(64, 64, 0, 15).unwrap(), blocks[..15].to_vec())
        .unwrap();
    a.handle_feed_update(&mut r, now);
    assert!(haves(&mut a, &mut r).is_empty());
    // The 16th makes a MiB: the peer hears of the partial copy.
    r.ingest(&w.proof(64, 64, 15, 16).unwrap(), blocks[15..16].to_vec())
        .unwrap();
    a.handle_feed_update(&mut r, now);
    assert_eq!(haves(&mut a, &mut r), vec![vec![(0, 16)]]);
}

#[test]
fn a_data_answer_is_announced_before_it_is_built_and_small_messages_go_first() {
    use crate::keys::FeedSecret;
    use crate::storage::MemoryStorage;
    let mut w = Feed::create(&MemoryStorage::new(), FeedSecret::from_bytes(&[2; 32])).unwrap();
    let blocks: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 1000]).collect();
    w.append_batch(&blocks).unwrap();
    let now = Instant::now();
    let mut s = FeedSync::new(SyncConfig::default());
    s.handle_start(&mut w, now);
    let request = |start, end| {
        Message::Request(Request {
            start,
            end,
            length: 8,
        })
    };
    s.handle_message(&mut w, request(0, 4), now).unwrap();
    s.handle_message(&mut w, request(4, 8), now).unwrap();
    // Our `Have` is queued: it goes first, and no block is read for it.
    assert!(!s.serves_data_next());
    assert!(matches!(
        s.poll_transmit(&mut w).unwrap(),
        Some(Message::Have(_))
    ));
    for want in [(0, 4), (4, 8)] {
        assert!(s.serves_data_next());
        match s.poll_transmit(&mut w).unwrap() {
            Some(Message::Data(d)) => assert_eq!((d.proof.start, d.proof.end), want),
            other => panic!("expected data {want:?}, got {other:?}"),
        }
    }
    assert!(!s.serves_data_next());
    assert!(s.poll_transmit(&mut w).unwrap().is_none());
}

/// A writer of `n` blocks and an empty replica of it.
fn writer_and_empty_replica(
    n: u8,
) -> (
    Feed<crate::storage::MemoryFeed>,
    Feed<crate::storage::MemoryFeed>,
) {
    use crate::keys::FeedSecret;
    use crate::storage::MemoryStorage;
    let secret = FeedSecret::from_bytes(&[2; 32]);
    let mut w = Feed::create(&MemoryStorage::new(), secret).unwrap();
    let blocks: Vec<Vec<u8>> = (0..n).map(|i| vec![i]).collect();
    w.append_batch(&blocks).unwrap();
    let r = Feed::create_replica(&MemoryStorage::new(), *w.key()).unwrap();
    (w, r)
}

fn have_of(head: SignedHead) -> Message {
    Message::Have(Have {
        head: Some(head),
        ranges: vec![(0, head.length)],
    })
}

#[test]
fn a_head_verified_before_the_stream_is_not_verified_again() {
    let now = Instant::now();
    let (mut w, mut r) = writer_and_empty_replica(10);
    let head = *w.head().unwrap();
    let mut a = FeedSync::new(SyncConfig::default()).with_verified_head(Some(head));
    a.handle_start(&mut r, now);
    a.handle_message(&mut r, have_of(head), now).unwrap();
    assert_eq!(r.heads_verified(), 0, "the identical head is not verified");
    assert_eq!(a.peer_head(), Some(&head));
    // The proof that carries the head does not check its signature either.
    r.ingest(&w.proof(0, 10, 0, 0).unwrap(), vec![]).unwrap();
    assert_eq!(r.length(), 10);

    // Without the verified head, the same `Have` is verified.
    let (_, mut r) = writer_and_empty_replica(10);
    let mut b = FeedSync::new(SyncConfig::default());
    b.handle_start(&mut r, now);
    b.handle_message(&mut r, have_of(head), now).unwrap();
    assert_eq!(
        r.heads_verified(),
        1,
        "a head not verified before is verified"
    );
}

#[test]
fn a_head_that_differs_from_the_verified_one_is_verified() {
    let now = Instant::now();
    let (mut w, mut r) = writer_and_empty_replica(10);
    let older = *w.head().unwrap();
    w.append_batch(&[vec![10]]).unwrap();
    let newer = *w.head().unwrap();
    let mut a = FeedSync::new(SyncConfig::default()).with_verified_head(Some(older));
    a.handle_start(&mut r, now);
    a.handle_message(&mut r, have_of(newer), now).unwrap();
    assert_eq!(r.heads_verified(), 1, "a newer head is verified");

    // The verified head's length and tree hash with another signature: verified, refused.
    let (w, mut r) = writer_and_empty_replica(10);
    let head = *w.head().unwrap();
    let mut forged = head;
    forged.signature[40] ^= 1;
    let mut b = FeedSync::new(SyncConfig::default()).with_verified_head(Some(head));
    b.handle_start(&mut r, now);
    let err = b.handle_message(&mut r, have_of(forged), now).unwrap_err();
    assert!(
        matches!(
            err,
            SyncError::Verify(VerifyError::BadSignature { length: 10 })
        ),
        "{err}"
    );
    assert_eq!(r.heads_verified(), 1);
    assert_eq!(b.peer_head(), None);
}
