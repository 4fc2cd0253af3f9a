//! Two `FeedSync` cores wired together in one process under virtual time: download-all,
//! sparse ranges, live following, pipelining, reordering, and peers that send bad data.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replic8_store::message::{Data, Have, Request};
use replic8_store::storage::{MemoryFeed, MemoryStorage};
use replic8_store::{
    decode, encode, DecodeError, Feed, FeedKey, FeedSecret, FeedSync, Message, SyncConfig,
    SyncError, SyncEvent, VerifyError, Want, MAX_MESSAGE_SIZE,
};

struct Side {
    feed: Feed<MemoryFeed>,
    sync: FeedSync,
    events: Vec<SyncEvent>,
}

/// A message in flight: deliver at, sequence number, to side, bytes.
type Queued = (Instant, u64, usize, Vec<u8>);

/// Rewrites a message side 0 sends (a hostile peer).
type Tamper = Box<dyn FnMut(&mut Message)>;

struct Link {
    now: Instant,
    rng: StdRng,
    queue: Vec<Queued>,
    seq: u64,
    /// Random extra latency per message, so messages overtake each other.
    jitter_ms: u64,
    /// Applied to each message side 0 sends, before encoding.
    tamper: Option<Tamper>,
    delivered: u64,
    /// Most requests side 1 had in flight at once.
    max_in_flight: usize,
}

impl Link {
    fn new(seed: u64, jitter_ms: u64) -> Link {
        Link {
            now: Instant::now(),
            rng: StdRng::seed_from_u64(seed),
            queue: Vec::new(),
            seq: 0,
            jitter_ms,
            tamper: None,
            delivered: 0,
            max_in_flight: 0,
        }
    }

    fn collect(&mut self, sides: &mut [Side; 2]) {
        for (from, side) in sides.iter_mut().enumerate() {
            while let Some(mut m) = side.sync.poll_transmit(&mut side.feed).expect("poll") {
                if from == 0 {
                    if let Some(t) = self.tamper.as_mut() {
                        t(&mut m);
                    }
                }
                let bytes = encode(&m).expect("encode");
                let delay = 5 + if self.jitter_ms > 0 {
                    self.rng.gen_range(0..self.jitter_ms)
                } else {
                    0
                };
                self.seq += 1;
                self.queue.push((
                    self.now + Duration::from_millis(delay),
                    self.seq,
                    1 - from,
                    bytes,
                ));
            }
            while let Some(e) = side.sync.poll_event() {
                side.events.push(e);
            }
        }
    }

    /// Deliver messages until `done` holds or nothing is left; returns the first error
    /// with the side that raised it.
    fn run(
        &mut self,
        sides: &mut [Side; 2],
        done: impl Fn(&[Side; 2]) -> bool,
    ) -> Result<(), (usize, SyncError)> {
        for _ in 0..1_000_000 {
            self.collect(sides);
            self.max_in_flight = self.max_in_flight.max(sides[1].sync.outstanding());
            if done(sides) {
                return Ok(());
            }
            let Some(pos) =
                (0..self.queue.len()).min_by_key(|&i| (self.queue[i].0, self.queue[i].1))
            else {
                return Ok(());
            };
            let (at, _, to, bytes) = self.queue.swap_remove(pos);
            self.now = self.now.max(at);
            self.delivered += 1;
            let side = &mut sides[to];
            side.sync
                .handle_bytes(&mut side.feed, &bytes, self.now)
                .map_err(|e| (to, e))?;
            for s in sides.iter_mut() {
                s.sync.handle_timeout(self.now).map_err(|e| (to, e))?;
            }
        }
        panic!("sync did not settle in a million steps");
    }
}

fn secret() -> FeedSecret {
    FeedSecret::from_bytes(&[3; 32])
}

fn block(i: u64) -> Vec<u8> {
    let mut b = format!("block {i} ").into_bytes();
    b.resize(20 + (i % 13) as usize * 11, (i % 251) as u8);
    b
}

fn writer(n: u64) -> Feed<MemoryFeed> {
    let storage = MemoryStorage::new();
    let mut feed = Feed::create(&storage, secret()).expect("create");
    let blocks: Vec<Vec<u8>> = (0..n).map(block).collect();
    feed.append_batch(&blocks).expect("append");
    feed
}

fn replica(key: FeedKey) -> Feed<MemoryFeed> {
    Feed::create_replica(&MemoryStorage::new(), key).expect("replica")
}

fn side(feed: Feed<MemoryFeed>, config: SyncConfig) -> Side {
    Side {
        feed,
        sync: FeedSync::new(config),
        events: Vec::new(),
    }
}

fn start(sides: &mut [Side; 2], link: &Link) {
    for s in sides.iter_mut() {
        s.sync.handle_start(&mut s.feed, link.now);
    }
}

/// Sync settings that want `want` and stop once they have it (not live).
fn once(want: Want) -> SyncConfig {
    SyncConfig {
        want,
        live: false,
        ..SyncConfig::default()
    }
}

fn serve_only() -> SyncConfig {
    once(Want::Nothing)
}

/// The writer `w`, serving only, and a fresh replica of it with `config`.
fn writer_and_replica(w: Feed<MemoryFeed>, config: SyncConfig) -> [Side; 2] {
    let key = *w.key();
    [side(w, serve_only()), side(replica(key), config)]
}

fn check_replica(w: &mut Feed<MemoryFeed>, r: &mut Feed<MemoryFeed>, range: std::ops::Range<u64>) {
    for i in range {
        assert_eq!(r.get(i).expect("get"), w.get(i).expect("get"), "block {i}");
    }
}

#[test]
fn download_all_with_pipelining() {
    let w = writer(1000);
    let config = SyncConfig {
        max_outstanding: 4,
        blocks_per_message: 16,
        ..once(Want::All)
    };
    let mut sides = writer_and_replica(w, config);
    let mut link = Link::new(1, 0);
    start(&mut sides, &link);
    link.run(&mut sides, |s| s[1].sync.is_synced())
        .expect("sync");
    let [w, r] = &mut sides;
    assert_eq!(r.feed.length(), 1000);
    assert_eq!(r.feed.contiguous_length(), 1000);
    assert_eq!(r.feed.head(), w.feed.head());
    check_replica(&mut w.feed, &mut r.feed, 0..1000);
    assert_eq!(r.sync.stats().blocks_in, 1000);
    assert_eq!(w.sync.stats().blocks_out, 1000);
    assert!(r.events.contains(&SyncEvent::Upgraded { length: 1000 }));
    assert!(r.events.contains(&SyncEvent::Synced { length: 1000 }));
    let downloads = r
        .events
        .iter()
        .filter(|e| matches!(e, SyncEvent::Downloaded { .. }))
        .count();
    assert_eq!(downloads, 1000usize.div_ceil(16));
    assert_eq!(link.max_in_flight, 4, "requests are pipelined");
}

#[test]
fn download_all_under_reordering() {
    for seed in 0..8 {
        let w = writer(300);
        let config = SyncConfig {
            max_outstanding: 8,
            blocks_per_message: 7,
            ..once(Want::All)
        };
        let mut sides = writer_and_replica(w, config);
        let mut link = Link::new(seed, 40);
        start(&mut sides, &link);
        link.run(&mut sides, |s| s[1].sync.is_synced())
            .unwrap_or_else(|(side, e)| panic!("seed {seed}: side {side}: {e}"));
        let [w, r] = &mut sides;
        assert_eq!(r.feed.contiguous_length(), 300, "seed {seed}");
        check_replica(&mut w.feed, &mut r.feed, 0..300);
    }
}

#[test]
fn sparse_range_downloads_only_that_range() {
    let w = writer(500);
    let config = once(Want::Range {
        start: 100,
        end: 150,
    });
    let mut sides = writer_and_replica(w, config);
    let mut link = Link::new(2, 10);
    start(&mut sides, &link);
    link.run(&mut sides, |s| s[1].sync.is_synced())
        .expect("sync");
    let [w, r] = &mut sides;
    assert_eq!(r.feed.length(), 500);
    assert_eq!(r.feed.stored_ranges(10), vec![(100, 150)]);
    check_replica(&mut w.feed, &mut r.feed, 100..150);
    assert_eq!(r.sync.stats().blocks_in, 50);
}

#[test]
fn live_follow_gets_new_appends() {
    let w = writer(10);
    let config = SyncConfig {
        want: Want::All,
        live: true,
        ..SyncConfig::default()
    };
    let mut sides = writer_and_replica(w, config);
    let mut link = Link::new(3, 20);
    start(&mut sides, &link);
    link.run(&mut sides, |s| s[1].feed.contiguous_length() == 10)
        .expect("first sync");
    for round in 0..5u64 {
        let target = 10 + (round + 1) * 3;
        {
            let w = &mut sides[0];
            let blocks: Vec<Vec<u8>> = (target - 3..target).map(block).collect();
            w.feed.append_batch(&blocks).expect("append");
            w.sync.handle_feed_update(&mut w.feed, link.now);
        }
        link.run(&mut sides, |s| s[1].feed.contiguous_length() == target)
            .expect("live round");
        assert_eq!(sides[1].feed.length(), target);
    }
    let [w, r] = &mut sides;
    check_replica(&mut w.feed, &mut r.feed, 0..25);
    // Both sides learnt each other's heads.
    assert_eq!(w.sync.peer_head().map(|h| h.length), Some(25));
}

#[test]
fn replica_serves_a_third_feed() {
    let w = writer(200);
    let key = *w.key();
    let all = once(Want::All);
    let mut sides = writer_and_replica(w, all.clone());
    let mut link = Link::new(4, 10);
    start(&mut sides, &link);
    link.run(&mut sides, |s| s[1].sync.is_synced())
        .expect("sync");
    let [_, r] = sides;
    // The replica now serves another replica.
    let mut sides = [side(r.feed, serve_only()), side(replica(key), all)];
    start(&mut sides, &link);
    link.run(&mut sides, |s| s[1].sync.is_synced())
        .expect("second sync");
    assert_eq!(sides[1].feed.contiguous_length(), 200);
}

/// Runs a sync where side 0 tampers with what it sends, expects side 1 to fail with
/// `check`, then checks side 1 stored nothing from the bad message and still syncs fully
/// from an honest writer.
fn bad_peer(tamper: impl FnMut(&mut Message) + 'static, check: impl Fn(&SyncError) -> bool) {
    let w = writer(100);
    let config = SyncConfig {
        blocks_per_message: 10,
        ..once(Want::All)
    };
    let mut sides = writer_and_replica(w, config.clone());
    let mut link = Link::new(5, 0);
    link.tamper = Some(Box::new(tamper));
    start(&mut sides, &link);
    let err = link
        .run(&mut sides, |s| s[1].sync.is_synced())
        .expect_err("the bad peer must be caught");
    assert_eq!(err.0, 1, "the receiving side reports it: {}", err.1);
    assert!(check(&err.1), "unexpected error: {}", err.1);
    let [_, mut r] = sides;
    // As the stream's owner does when a call failed: the blocks its core was fetching go
    // back to the feed's other cores (they take claims over only from a stalled core).
    r.sync.close(&mut r.feed);
    // Exactly the blocks reported as downloaded before the bad message are stored.
    let downloaded: u64 = r
        .events
        .iter()
        .map(|e| match e {
            SyncEvent::Downloaded { start, end } => end - start,
            _ => 0,
        })
        .sum();
    assert_eq!(r.feed.storage().stored_blocks() as u64, downloaded);
    assert!(downloaded < 100);
    // The feed is still usable: an honest writer completes the sync.
    let mut sides = [side(writer(100), serve_only()), side(r.feed, config)];
    let mut link = Link::new(6, 10);
    start(&mut sides, &link);
    link.run(&mut sides, |s| s[1].sync.is_synced())
        .expect("honest sync");
    assert_eq!(sides[1].feed.contiguous_length(), 100);
}

#[test]
fn bad_block_is_rejected_and_nothing_stored() {
    bad_peer(
        |m| {
            if let Message::Data(Data { proof, blocks }) = m {
                if proof.start == 20 {
                    blocks[3][0] ^= 0x55;
                }
            }
        },
        |e| {
            matches!(
                e,
                SyncError::Verify(VerifyError::BlockMismatch { start: 20, end: 30 })
            )
        },
    );
}

#[test]
fn signature_by_another_key_is_rejected() {
    let stranger = FeedSecret::from_bytes(&[77; 32]);
    bad_peer(
        move |m| {
            if let Message::Have(Have { head: Some(h), .. }) = m {
                *h = stranger.sign_head(h.length, h.tree_hash);
            }
        },
        |e| {
            matches!(
                e,
                SyncError::Verify(VerifyError::BadSignature { length: 100 })
            )
        },
    );
}

#[test]
fn proof_for_another_tree_is_rejected() {
    // The upgrade's nodes come from another tree of the same key (a fork).
    let fork = {
        let mut f = Feed::create(&MemoryStorage::new(), secret()).expect("create");
        let blocks: Vec<Vec<u8>> = (0..100u64).map(|i| vec![i as u8; 9]).collect();
        f.append_batch(&blocks).expect("append");
        f
    };
    let mut fork = Some(fork);
    bad_peer(
        move |m| {
            if let Message::Upgrade { proof } = m {
                let f = fork.as_mut().expect("fork");
                let mut other = f.proof(proof.base, 100, 100, 100).expect("fork proof");
                other.head = proof.head; // the honest signed head
                *proof = other;
            }
        },
        |e| {
            matches!(
                e,
                SyncError::Verify(VerifyError::TreeMismatch { length: 100 })
            )
        },
    );
}

#[test]
fn length_going_backward_is_rejected() {
    bad_peer(
        |m| {
            if let Message::Upgrade { proof } = m {
                proof.base = 101;
            }
        },
        |e| {
            matches!(
                e,
                SyncError::Verify(VerifyError::LengthBackward {
                    base: 101,
                    length: 100
                })
            )
        },
    );
}

#[test]
fn unrequested_data_is_rejected() {
    bad_peer(
        |m| {
            if let Message::Data(d) = m {
                if d.proof.start == 0 {
                    // Claim a different length than the one requested.
                    d.proof.length += 1;
                    d.proof.base += 1;
                }
            }
        },
        |e| matches!(e, SyncError::Unrequested { start: 0, .. }),
    );
}

#[test]
fn oversize_and_truncated_bytes_are_rejected() {
    let mut w = writer(10);
    let key = *w.key();
    let mut r = replica(key);
    let mut sync = FeedSync::new(SyncConfig::default());
    let now = Instant::now();
    sync.handle_start(&mut r, now);
    let huge = vec![0u8; MAX_MESSAGE_SIZE + 1];
    assert!(matches!(
        sync.handle_bytes(&mut r, &huge, now),
        Err(SyncError::Decode(DecodeError::Oversize { .. }))
    ));
    let have = encode(&Message::Have(Have {
        head: w.head().copied(),
        ranges: vec![(0, 10)],
    }))
    .expect("encode");
    assert!(matches!(
        sync.handle_bytes(&mut r, &have[..have.len() - 3], now),
        Err(SyncError::Decode(DecodeError::Truncated))
    ));
    assert!(matches!(
        sync.handle_bytes(&mut r, &[200, 1, 2], now),
        Err(SyncError::Decode(_))
    ));
    assert_eq!(r.length(), 0);
    // Still usable: the intact message goes through and asks for an upgrade.
    sync.handle_bytes(&mut r, &have, now).expect("good have");
    let mut asked = false;
    while let Some(m) = sync.poll_transmit(&mut r).expect("poll") {
        asked |= matches!(m, Message::RequestUpgrade { from: 0 });
    }
    assert!(asked);
    // A request beyond the feed is the requester's fault.
    assert!(matches!(
        sync.handle_message(
            &mut w,
            Message::Request(Request {
                start: 0,
                end: 5,
                length: 11
            }),
            now
        ),
        Err(SyncError::BadRequest { .. })
    ));
    assert!(decode(&[]).is_err());
}

#[test]
fn silent_peer_times_out() {
    let w = writer(10);
    let key = *w.key();
    let mut r = replica(key);
    let mut sync = FeedSync::new(SyncConfig::default());
    let now = Instant::now();
    sync.handle_start(&mut r, now);
    let have = Message::Have(Have {
        head: w.head().copied(),
        ranges: vec![(0, 10)],
    });
    sync.handle_message(&mut r, have, now).expect("have");
    let deadline = sync.poll_timeout().expect("an upgrade is in flight");
    assert!(sync
        .handle_timeout(deadline - Duration::from_millis(1))
        .is_ok());
    assert!(matches!(
        sync.handle_timeout(deadline),
        Err(SyncError::Timeout { .. })
    ));
}

/// A replica ahead of its peer asks it for nothing (the peer could not prove blocks
/// against the longer tree) and the peer learns what it can't get without an error.
#[test]
fn peer_behind_us_is_not_asked() {
    let mut w = writer(50);
    let all = once(Want::All);
    // `behind` syncs everything at length 50.
    let mut sides = writer_and_replica(w, all.clone());
    let mut link = Link::new(7, 5);
    start(&mut sides, &link);
    link.run(&mut sides, |s| s[1].sync.is_synced())
        .expect("first sync");
    let [ws, behind] = sides;
    w = ws.feed;
    let blocks: Vec<Vec<u8>> = (50..100).map(block).collect();
    w.append_batch(&blocks).expect("append");
    // `ahead` takes the head at 100 and blocks 0..10 only.
    let range = once(Want::Range { start: 0, end: 10 });
    let mut sides = writer_and_replica(w, range);
    start(&mut sides, &link);
    link.run(&mut sides, |s| s[1].sync.is_synced())
        .expect("range sync");
    let [_, ahead] = sides;
    assert_eq!(ahead.feed.length(), 100);
    // Now `ahead` (want all) meets `behind`: no request, no error, and `behind` cannot
    // upgrade through `ahead` either (it lacks the nodes), which it is told.
    let mut sides = [side(behind.feed, all.clone()), side(ahead.feed, all)];
    start(&mut sides, &link);
    link.run(&mut sides, |_| false)
        .expect("no error either way");
    assert_eq!(sides[1].feed.storage().stored_blocks(), 10);
    assert_eq!(sides[0].feed.length(), 50);
    assert!(sides[1].sync.is_synced());
}

/// A peer that floods requests without reading answers is stopped at the protocol's
/// limit instead of making us queue data.
#[test]
fn request_flood_is_bounded() {
    let mut w = writer(10);
    let mut sync = FeedSync::new(serve_only());
    let now = Instant::now();
    sync.handle_start(&mut w, now);
    let request = Message::Request(Request {
        start: 0,
        end: 10,
        length: 10,
    });
    for _ in 0..replic8_store::message::MAX_OUTSTANDING_REQUESTS {
        sync.handle_message(&mut w, request.clone(), now)
            .expect("within the limit");
    }
    assert!(matches!(
        sync.handle_message(&mut w, request, now),
        Err(SyncError::TooManyRequests { .. })
    ));
    // Answers are built only as they are polled.
    let mut data = 0;
    while let Some(m) = sync.poll_transmit(&mut w).expect("poll") {
        data += matches!(m, Message::Data(_)) as usize;
    }
    assert_eq!(data, replic8_store::message::MAX_OUTSTANDING_REQUESTS);
}

/// A follower gets a new append in three one-way trips (pushed upgrade, request, data),
/// not five (notice, upgrade request, upgrade, request, data).
#[test]
fn live_append_arrives_after_three_one_way_trips() {
    let w = writer(10);
    let config = SyncConfig {
        want: Want::All,
        live: true,
        ..SyncConfig::default()
    };
    let mut sides = writer_and_replica(w, config);
    let mut link = Link::new(9, 0); // every message takes exactly 5 ms
    start(&mut sides, &link);
    link.run(&mut sides, |s| s[1].feed.contiguous_length() == 10)
        .expect("first sync");
    link.run(&mut sides, |_| false).expect("settle");
    for target in 11..15u64 {
        let t0 = link.now;
        let w = &mut sides[0];
        w.feed.append(&block(target - 1)).expect("append");
        w.sync.handle_feed_update(&mut w.feed, t0);
        link.run(&mut sides, |s| s[1].feed.contiguous_length() == target)
            .expect("live");
        assert_eq!(link.now - t0, Duration::from_millis(15), "append {target}");
        link.run(&mut sides, |_| false).expect("settle");
    }
}

/// Regression: an empty feed's `Have` carries no head, and a core used to wait for a head
/// before it reported `Synced`, so a one-shot session over a feed empty on both sides
/// never ended.
#[test]
fn empty_feeds_on_both_sides_report_synced() {
    let w = writer(0);
    let key = *w.key();
    let config = once(Want::All);
    let mut sides = [side(w, config.clone()), side(replica(key), config)];
    let mut link = Link::new(7, 0);
    start(&mut sides, &link);
    link.run(&mut sides, |s| {
        s[0].sync.is_synced() && s[1].sync.is_synced()
    })
    .expect("sync");
    for s in &sides {
        assert!(
            s.events.contains(&SyncEvent::Synced { length: 0 }),
            "{:?}",
            s.events
        );
        assert_eq!(s.feed.length(), 0);
    }
}
