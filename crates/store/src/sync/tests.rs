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
