//! Small feeds sent whole on the control stream instead of a stream each (decision
//! 210): two session cores wired together under virtual time, with toy stores that
//! read and write feeds whole.
#![allow(clippy::unwrap_used)]

use crate::util;

use std::collections::HashSet;
use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};
use replic8::frame::MAX_FRAME_LEN;
use replic8::keys::{DiscoveryKey, FeedKey};
use replic8::message::{self, CloseCode, Message, WholeEntry};
use replic8::session::{
    SessionConfig, SessionEvent, MAX_WHOLE_BYTES_AT_STORE, MAX_WHOLE_READ_FEEDS, MAX_WHOLE_WRITES,
    MAX_WHOLE_WRITE_BYTES, MAX_WHOLE_WRITE_FEEDS,
};
use serde_bytes::ByteBuf;
use util::*;

const A: usize = 0;
const B: usize = 1;

/// Two nodes, A dialing B, holding `feeds` each (feed, A's length, B's length), every
/// feed known to both, toy heads and whole feeds on in both stores unless `setup`
/// changes it; the link is driven until it settles.
fn whole_net(
    config: SessionConfig,
    feeds: &[(FeedKey, u64, u64)],
    setup: impl FnOnce(&mut Net),
) -> (Net, usize) {
    let mut net = Net::new(config);
    net.add_store("a", accept_all());
    net.add_store("b", accept_all());
    let l = net.connect(A, B, [9; 32]);
    let a: Vec<_> = feeds.iter().map(|f| (f.0, f.1, headers(&[]))).collect();
    let b: Vec<_> = feeds.iter().map(|f| (f.0, f.2, headers(&[]))).collect();
    net.create(A, &a);
    net.create(B, &b);
    for node in [A, B] {
        net.stores[node].heads = true;
        net.stores[node].whole = true;
    }
    setup(&mut net);
    for node in [A, B] {
        net.register(l, node, "", None);
    }
    let keys: Vec<FeedKey> = feeds.iter().map(|f| f.0).collect();
    for node in [A, B] {
        net.end(l, node)
            .session
            .handle_known_feeds("", keys.clone())
            .unwrap();
    }
    for node in [A, B] {
        net.end(l, node).session.handle_ready().unwrap();
    }
    net.drive();
    (net, l)
}

/// Feeds `1..=n` held by the writer at 1 to 3 blocks and lacked by the reader, as
/// (feed, A's length, B's length) for a writer that dials (A) or accepts (B).
fn small_feeds(n: u32, writer_dials: bool) -> Vec<(FeedKey, u64, u64)> {
    (1..=n)
        .map(|i| {
            let length = u64::from(i % 3 + 1);
            if writer_dials {
                (feed(i), length, 0)
            } else {
                (feed(i), 0, length)
            }
        })
        .collect()
}

/// (writer node, reader node) on the link: A dials.
fn roles(writer_dials: bool) -> (usize, usize) {
    if writer_dials {
        (A, B)
    } else {
        (B, A)
    }
}

fn whole_messages(net: &Net, l: usize, side: usize) -> Vec<&Vec<WholeEntry>> {
    net.links[l].ends[side]
        .sent
        .iter()
        .filter_map(|m| match m {
            Message::Whole { feeds } => Some(feeds),
            _ => None,
        })
        .collect()
}

fn notices(net: &Net, l: usize, side: usize) -> Vec<DiscoveryKey> {
    net.links[l].ends[side]
        .sent
        .iter()
        .filter_map(|m| match m {
            Message::Notice { feed, .. } => Some(*feed),
            _ => None,
        })
        .collect()
}

fn synced_events(net: &Net, l: usize, side: usize) -> Vec<(FeedKey, u64)> {
    net.links[l].ends[side]
        .events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::FeedSynced { feed, length } => Some((*feed, *length)),
            _ => None,
        })
        .collect()
}

/// Asserts the reader holds every feed at the writer's length, and both sides
/// reported each in sync at it.
fn assert_all_synced(net: &Net, l: usize, feeds: &[(FeedKey, u64, u64)], case: &str) {
    for &(key, la, lb) in feeds {
        let length = la.max(lb);
        for node in [A, B] {
            assert_eq!(
                net.stores[node].lengths.get(&key),
                Some(&length),
                "{case}: {key:?} at node {node}"
            );
        }
        for side in [A, B] {
            assert!(
                synced_events(net, l, side).contains(&(key, length)),
                "{case}: side {side} never reported {key:?} in sync at {length}"
            );
        }
    }
}

#[test]
/// 1,000 feeds of one to three blocks go whole, in either role of the writer: no
/// stream opens on either side, every feed is stored and reported in sync both ways,
/// each `Whole` message fits a frame, every head reaches the store unverified (the
/// store checks it with the feed's blocks, decision 250; the reader's session checks
/// none), and the one-shot session ends done.
fn many_small_feeds_go_whole_without_a_stream_in_either_role() {
    for writer_dials in [true, false] {
        let case = format!("writer dials: {writer_dials}");
        let feeds = small_feeds(1000, writer_dials);
        let (net, l) = whole_net(one_shot(), &feeds, |_| {});
        let (writer, reader) = roles(writer_dials);
        for side in [A, B] {
            assert!(
                net.links[l].ends[side].ever_attached.is_empty(),
                "{case}: side {side} had a stream"
            );
            let reason = net.ended(l, side).expect("the one-shot session ended");
            assert_eq!(reason.code, CloseCode::DONE, "{case}: {reason}");
        }
        assert_all_synced(&net, l, &feeds, &case);
        let (w, r) = (
            net.links[l].ends[writer].session.stats(),
            net.links[l].ends[reader].session.stats(),
        );
        assert_eq!((w.streams_opened, r.streams_opened), (0, 0), "{case}");
        assert_eq!(
            (w.feeds_sent_whole, r.feeds_received_whole),
            (1000, 1000),
            "{case}"
        );
        assert_eq!(
            (r.feeds_sent_whole, w.feeds_received_whole),
            (0, 0),
            "{case}"
        );
        assert_eq!(r.whole_bytes_at_store, 0, "{case}");
        // The reader's words asked for each feed whole; the writer's carried heads.
        for m in &net.links[l].ends[reader].sent {
            if let Message::Heads { feeds } = m {
                assert!(feeds.iter().all(|w| w.head.is_none() && w.whole), "{case}");
            }
        }
        for m in &net.links[l].ends[writer].sent {
            if let Message::Heads { feeds } = m {
                assert!(feeds.iter().all(|w| w.head.is_some() && !w.whole), "{case}");
            }
        }
        let messages = whole_messages(&net, l, writer);
        assert_eq!(
            messages.iter().map(|m| m.len()).sum::<usize>(),
            1000,
            "{case}"
        );
        for m in &messages {
            let mut wire = Vec::new();
            message::encode(&Message::Whole { feeds: m.to_vec() }, &mut wire).unwrap();
            assert!(wire.len() <= MAX_FRAME_LEN + 4, "{case}");
        }
        // Read in batches, written one call per message, each head checked once: by
        // the store.
        let reads = net.stores[writer].whole_reads;
        assert!((16..=1000).contains(&reads), "{case}: {reads} reads");
        let writes = &net.stores[reader].whole_writes;
        assert_eq!(writes.len(), messages.len(), "{case}");
        assert!(
            writes.iter().flatten().all(|(_, verified)| !*verified),
            "{case}: a head went to the store as verified"
        );
        assert_eq!(r.heads_verified, 0, "{case}: the session checked a head");
    }
}

#[test]
/// A feed expected whole does not wait for a check of its first-word head: the head
/// goes to the store unverified with the feed's blocks, which checks it there (decision
/// 250), so the writes go out while no head check is answered and every feed syncs.
fn a_whole_feed_does_not_wait_for_a_check_of_its_head() {
    for writer_dials in [true, false] {
        let case = format!("writer dials: {writer_dials}");
        let feeds = small_feeds(50, writer_dials);
        let (net, l) = whole_net(live(), &feeds, |net| net.hold_checks = true);
        let (_, reader) = roles(writer_dials);
        assert_all_synced(&net, l, &feeds, &case);
        let writes = &net.stores[reader].whole_writes;
        assert_eq!(writes.iter().map(Vec::len).sum::<usize>(), 50, "{case}");
        assert!(
            writes.iter().flatten().all(|(_, verified)| !*verified),
            "{case}"
        );
        let stats = net.links[l].ends[reader].session.stats();
        assert_eq!(stats.heads_verified, 0, "{case}");
        assert_eq!(stats.whole_bytes_at_store, 0, "{case}");
    }
}

#[test]
/// A forged first-word head of a feed expected whole is still the sender's violation:
/// the reader's store finds the entry's signature bad and stores nothing of it, the
/// session then checks the first word's head itself and ends with `bad head`, naming
/// the feed (decision 250).
fn a_forged_head_of_a_whole_feed_ends_the_session_with_bad_head() {
    for writer_dials in [true, false] {
        let case = format!("writer dials: {writer_dials}");
        let feeds = small_feeds(20, writer_dials);
        let (writer, reader) = roles(writer_dials);
        let (net, l) = whole_net(live(), &feeds, |net| {
            net.stores[writer].forged.insert(feed(7));
        });
        let reason = net.ended(l, reader).expect("the reader ended the session");
        assert_eq!(reason.code, CloseCode::BAD_HEAD, "{case}: {reason}");
        assert!(
            reason.reason.contains(&feed(7).fmt_short()),
            "{case}: {reason}"
        );
        let told = net.ended(l, writer).expect("the writer was told");
        assert_eq!(told.code, CloseCode::BAD_HEAD, "{case}: {told}");
        assert_eq!(
            net.stores[reader]
                .lengths
                .get(&feed(7))
                .copied()
                .unwrap_or(0),
            0,
            "{case}"
        );
        let sent: Vec<_> = net.stores[reader].whole_writes.iter().flatten().collect();
        assert!(
            sent.iter().any(|(f, verified)| *f == feed(7) && !*verified),
            "{case}: the forged head went to the store to be checked"
        );
    }
}

#[test]
/// A store that answers only part of each read (its serve budget has room for no more,
/// decision 245) is asked again for the rest: every feed still goes whole, none falls
/// back to a stream, in either role of the writer.
fn a_short_whole_read_is_asked_again_for_the_rest() {
    for writer_dials in [true, false] {
        let case = format!("writer dials: {writer_dials}");
        let feeds = small_feeds(100, writer_dials);
        let (writer, reader) = roles(writer_dials);
        let (net, l) = whole_net(one_shot(), &feeds, |net| {
            net.stores[writer].read_at_most = Some(3);
        });
        assert_all_synced(&net, l, &feeds, &case);
        for side in [A, B] {
            assert!(
                net.links[l].ends[side].ever_attached.is_empty(),
                "{case}: side {side} had a stream"
            );
            assert!(notices(&net, l, side).is_empty(), "{case}");
        }
        let (w, r) = (
            net.links[l].ends[writer].session.stats(),
            net.links[l].ends[reader].session.stats(),
        );
        assert_eq!(
            (w.feeds_sent_whole, r.feeds_received_whole),
            (100, 100),
            "{case}"
        );
        assert!(net.stores[writer].whole_reads >= 34, "{case}");
        let reason = net.ended(l, A).expect("ended");
        assert_eq!(reason.code, CloseCode::DONE, "{case}: {reason}");
    }
}

#[test]
/// A feed not sent whole after all gets a stream, and the rest go whole: one the
/// writer's store does not read whole (not held whole, or over the bounds; the writer
/// tells the reader with a `Notice`), or one the reader's store declines (the reader
/// says so with a `Notice`). The dialer opens the stream and the feed syncs on it.
fn a_feed_not_sent_whole_after_all_falls_back_to_a_stream() {
    for writer_dials in [true, false] {
        for declined in [false, true] {
            let case = format!("declined: {declined}, writer dials: {writer_dials}");
            let feeds = small_feeds(20, writer_dials);
            let (writer, reader) = roles(writer_dials);
            let (net, l) = whole_net(one_shot(), &feeds, |net| {
                if declined {
                    net.stores[reader].decline.insert(feed(5));
                } else {
                    net.stores[writer].read_none.insert(feed(5));
                }
            });
            assert_eq!(
                net.links[l].ends[0].ever_attached,
                [feed(5)].into(),
                "{case}"
            );
            let teller = if declined { reader } else { writer };
            assert!(
                notices(&net, l, teller).contains(&feed(5).discovery_key()),
                "{case}"
            );
            assert_all_synced(&net, l, &feeds, &case);
            let (w, r) = (
                net.links[l].ends[writer].session.stats(),
                net.links[l].ends[reader].session.stats(),
            );
            let sent = if declined { 20 } else { 19 };
            assert_eq!(
                (w.feeds_sent_whole, r.feeds_received_whole),
                (sent, 19),
                "{case}"
            );
            // The first-word head the store did not check with the feed is checked by
            // the session (decision 250); the others only by the store.
            assert_eq!(r.heads_verified, 1, "{case}");
            let reason = net.ended(l, A).expect("ended");
            assert_eq!(reason.code, CloseCode::DONE, "{case}: {reason}");
        }
    }
}

#[test]
/// Blocks the reader's store finds bad stop that feed on the session, on both sides,
/// as a bad block on a stream does: no ban, no stream, the other feeds sync, and the
/// one-shot session gives the feed up.
fn a_bad_whole_feed_stops_only_that_feed() {
    for writer_dials in [true, false] {
        let case = format!("writer dials: {writer_dials}");
        let feeds = small_feeds(20, writer_dials);
        let (_, reader) = roles(writer_dials);
        let (net, l) = whole_net(one_shot(), &feeds, |net| {
            net.stores[reader].bad_whole.insert(feed(7));
        });
        assert!(net.links[l].ends[0].ever_attached.is_empty(), "{case}");
        for side in [A, B] {
            let stopped: Vec<_> = net.links[l].ends[side]
                .events
                .iter()
                .filter_map(|e| match e {
                    SessionEvent::FeedStopped { feed, .. } => Some(*feed),
                    _ => None,
                })
                .collect();
            assert_eq!(stopped, vec![feed(7)], "{case}, side {side}");
            let reason = net.ended(l, side).expect("ended");
            assert_eq!(reason.code, CloseCode::CLOSED, "{case}: {reason}");
            assert!(!reason.is_misbehaviour(), "{case}: {reason}");
        }
        let stats = net.links[l].ends[reader].session.stats();
        assert_eq!(stats.feeds_faulted, 1, "{case}");
        // Its first-word head, which the store did not take with the feed, is checked
        // by the session: it verifies, so the fault stays the feed's (decision 250).
        assert_eq!(stats.heads_verified, 1, "{case}");
        assert_eq!(net.stores[reader].lengths[&feed(7)], 0, "{case}");
        let others: Vec<_> = feeds.iter().copied().filter(|f| f.0 != feed(7)).collect();
        assert_all_synced(&net, l, &others, &case);
    }
}

fn entry(key: FeedKey, length: u64, blocks: u64) -> WholeEntry {
    WholeEntry {
        feed: key.discovery_key(),
        head: toy_head(length, false, false),
        blocks: toy_blocks(&key, blocks, 16)
            .into_iter()
            .map(ByteBuf::from)
            .collect(),
    }
}

fn whole_frame(entries: Vec<WholeEntry>) -> Vec<u8> {
    let mut wire = Vec::new();
    // Encoded as the payload of a frame by hand: the encoder refuses what breaks bounds.
    let payload =
        bincode::Options::serialize(message::options(), &Message::Whole { feeds: entries })
            .unwrap();
    wire.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    wire.extend_from_slice(&payload);
    wire
}

#[test]
/// A `Whole` entry the receiver did not ask for is the peer's violation: for a feed
/// not replicated, for one whose first word had a head (in sync here), a second entry
/// for a feed already taken whole, and an entry whose blocks are not its head's.
fn an_unasked_whole_entry_ends_the_session() {
    let cases: [(&str, WholeEntry, &str); 4] = [
        (
            "not replicated",
            entry(feed(99), 1, 1),
            "which is not replicated",
        ),
        ("in sync", entry(feed(2), 2, 2), "did not ask for whole"),
        ("twice", entry(feed(1), 1, 1), "did not ask for whole"),
        (
            "blocks not the head's",
            entry(feed(1), 3, 2),
            "2 blocks for a head of length 3",
        ),
    ];
    for writer_dials in [true, false] {
        for (name, bad, words) in cases.clone() {
            let case = format!("{name}, writer dials: {writer_dials}");
            let feeds = if writer_dials {
                [(feed(1), 1, 0), (feed(2), 2, 2)]
            } else {
                [(feed(1), 0, 1), (feed(2), 2, 2)]
            };
            let (mut net, l) = whole_net(live(), &feeds, |_| {});
            let (_, reader) = roles(writer_dials);
            assert_eq!(net.stores[reader].lengths[&feed(1)], 1, "{case}");
            let session = &mut net.links[l].ends[reader].session;
            session.handle_control_bytes(&whole_frame(vec![bad]));
            let reason = session.end_reason().expect("the session ended").clone();
            assert_eq!(reason.code, CloseCode::PROTOCOL, "{case}: {reason}");
            assert!(reason.is_misbehaviour(), "{case}: {reason}");
            assert!(reason.reason.contains(words), "{case}: {reason}");
        }
    }
}

#[test]
/// While more than `MAX_WHOLE_BYTES_AT_STORE` of feeds sent whole wait at the
/// receiver's store, it reads no more of the control stream (the driver gives no read
/// credit) and the frames waiting meanwhile never count as the peer's stall; once the
/// store answers, reading resumes and every feed syncs.
fn the_receiver_stops_reading_while_whole_feeds_fill_its_store_share() {
    for writer_dials in [true, false] {
        let case = format!("writer dials: {writer_dials}");
        let feeds = small_feeds(5000, writer_dials);
        let (writer, reader) = roles(writer_dials);
        let (mut net, l) = whole_net(live(), &feeds, |net| {
            net.hold_writes = true;
            for node in [A, B] {
                net.stores[node].block_size = 1024;
            }
        });
        let stats = net.links[l].ends[reader].session.stats();
        assert!(
            !net.links[l].ends[reader].session.wants_control_bytes(),
            "{case}: still reading with {} bytes at the store",
            stats.whole_bytes_at_store
        );
        let at_store = stats.whole_bytes_at_store as usize;
        assert!(
            (MAX_WHOLE_BYTES_AT_STORE..MAX_WHOLE_BYTES_AT_STORE + MAX_FRAME_LEN)
                .contains(&at_store),
            "{case}: {at_store} bytes at the store"
        );
        assert!(net.held_write_bytes() < at_store, "{case}");
        assert_eq!(stats.feeds_received_whole, 0, "{case}");
        // The writer's frames wait unread: not the writer's stall.
        for wait in [1, 60, 60] {
            net.advance(Duration::from_secs(wait));
            net.drive();
        }
        assert!(
            net.ended(l, reader).is_none(),
            "{case}: {:?}",
            net.ended(l, reader)
        );
        let mut rounds = 0;
        while net.held_write_bytes() > 0 {
            net.release_writes();
            net.drive();
            let at_store = net.links[l].ends[reader]
                .session
                .stats()
                .whole_bytes_at_store;
            assert!(
                (at_store as usize) < MAX_WHOLE_BYTES_AT_STORE + MAX_FRAME_LEN,
                "{case}"
            );
            rounds += 1;
        }
        assert!(rounds >= 2, "{case}: {rounds} rounds");
        assert!(
            net.links[l].ends[reader].session.wants_control_bytes(),
            "{case}"
        );
        assert_all_synced(&net, l, &feeds, &case);
        assert_eq!(
            net.links[l].ends[writer].session.stats().feeds_sent_whole,
            5000,
            "{case}"
        );
        assert!(net.links[l].ends[0].ever_attached.is_empty(), "{case}");
    }
}

#[test]
/// While the receiver's store writes its calls, the `Whole` messages that arrive wait in
/// the session and go to the store together in the next call once one answers (one
/// commit for them all, rather than one per message): never more than
/// `MAX_WHOLE_WRITES` calls in flight and that many reached, later calls of many
/// messages each, none over `MAX_WHOLE_WRITE_FEEDS` nor
/// (but for its last message) `MAX_WHOLE_WRITE_BYTES`, the session reading on while a
/// call is at the store, and every feed syncs.
fn whole_messages_that_arrive_during_a_write_go_to_the_store_in_one_call() {
    for (writer_dials, block_size) in [(true, 16), (false, 16), (true, 1024), (false, 1024)] {
        let case = format!("writer dials: {writer_dials}, blocks of {block_size} bytes");
        let feeds = small_feeds(6000, writer_dials);
        let (writer, reader) = roles(writer_dials);
        let (mut net, l) = whole_net(live(), &feeds, |net| {
            net.hold_writes = true;
            for node in [A, B] {
                net.stores[node].block_size = block_size;
            }
        });
        let mut read_on = Vec::new();
        let mut most_in_flight = 0;
        while !net.held_writes().is_empty() {
            let calls = net.held_writes();
            assert!(calls.len() <= MAX_WHOLE_WRITES, "{case}: {calls:?}");
            most_in_flight = most_in_flight.max(calls.len());
            // What the session counts of a feed: its blocks and 160 bytes.
            let held = net.held_write_bytes() + 160 * calls.iter().sum::<usize>();
            assert!(
                held <= calls.len() * (MAX_WHOLE_WRITE_BYTES + MAX_FRAME_LEN),
                "{case}: {held}"
            );
            let at_store = net.links[l].ends[reader]
                .session
                .stats()
                .whole_bytes_at_store;
            // Read on past the held call: the next one's messages wait in the session.
            read_on.push(at_store as usize > held);
            net.release_writes();
            net.drive();
        }
        // Each but the last, after which nothing more came.
        assert!(
            read_on[..read_on.len() - 1].iter().all(|r| *r),
            "{case}: {read_on:?}"
        );
        assert_eq!(most_in_flight, MAX_WHOLE_WRITES, "{case}");
        assert_all_synced(&net, l, &feeds, &case);
        let sizes: Vec<usize> = net.stores[reader]
            .whole_writes
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 6000, "{case}");
        let messages = whole_messages(&net, l, writer).len();
        assert!(
            sizes.len() * 4 < messages,
            "{case}: {} calls for {messages} messages",
            sizes.len()
        );
        // The first calls go out as soon as a message arrives, one per free slot; the
        // rest but the last carry what arrived meanwhile.
        let merged = sizes.get(MAX_WHOLE_WRITES..sizes.len() - 1).unwrap_or(&[]);
        assert!(!merged.is_empty(), "{case}: {sizes:?}");
        assert!(
            merged.iter().all(|&n| n > MAX_WHOLE_READ_FEEDS),
            "{case}: {sizes:?}"
        );
        assert!(
            sizes.iter().all(|&n| n <= MAX_WHOLE_WRITE_FEEDS),
            "{case}: {sizes:?}"
        );
    }
}

#[test]
/// A store that does not take feeds whole gets streams as before: as the reader, its
/// words do not ask for it; as the writer, it tells the reader with a `Notice` for
/// each feed asked for whole. No `Whole` message crosses the wire either way.
fn a_store_without_whole_gets_a_stream_for_every_feed() {
    for writer_dials in [true, false] {
        for without in ["reader", "writer"] {
            let case = format!("{without} without whole, writer dials: {writer_dials}");
            let feeds = small_feeds(30, writer_dials);
            let (writer, reader) = roles(writer_dials);
            let node = if without == "reader" { reader } else { writer };
            let (net, l) = whole_net(one_shot(), &feeds, |net| {
                net.stores[node].whole = false;
            });
            let all: HashSet<FeedKey> = feeds.iter().map(|f| f.0).collect();
            assert_eq!(net.links[l].ends[0].ever_attached, all, "{case}");
            for side in [A, B] {
                assert!(whole_messages(&net, l, side).is_empty(), "{case}");
                let reason = net.ended(l, side).expect("ended");
                assert_eq!(reason.code, CloseCode::DONE, "{case}: {reason}");
            }
            let told = notices(&net, l, writer).len();
            assert_eq!(told, if without == "writer" { 30 } else { 0 }, "{case}");
            assert_eq!(net.stores[writer].whole_reads, 0, "{case}");
            assert_all_synced(&net, l, &feeds, &case);
        }
    }
}

#[test]
/// A feed larger than `MAX_WHOLE_BLOCKS` gets a stream, next to small feeds sent whole,
/// with the writer's first-word head verified once (decision 198).
fn a_feed_over_the_block_bound_gets_a_stream() {
    for writer_dials in [true, false] {
        let case = format!("writer dials: {writer_dials}");
        let mut feeds = small_feeds(10, writer_dials);
        let long = message::MAX_WHOLE_BLOCKS as u64 + 1;
        feeds.push(if writer_dials {
            (feed(11), long, 0)
        } else {
            (feed(11), 0, long)
        });
        let (net, l) = whole_net(one_shot(), &feeds, |_| {});
        assert_eq!(
            net.links[l].ends[0].ever_attached,
            [feed(11)].into(),
            "{case}"
        );
        assert_all_synced(&net, l, &feeds, &case);
        let (writer, reader) = roles(writer_dials);
        assert_eq!(
            net.links[l].ends[writer].session.stats().feeds_sent_whole,
            10,
            "{case}"
        );
        // The reader waited for the check of the long head: its stream carries it.
        assert_eq!(
            net.links[l].ends[reader]
                .verified_heads
                .get(&feed(11))
                .map(|h| h.length),
            Some(long),
            "{case}"
        );
    }
}

#[test]
/// Live: a change after a feed synced whole goes by stream, as any change does; a
/// change of the writer's copy while its feed is at the reader's store waits for the
/// store's answer, then gets a stream, and the feed ends in sync at the new length.
fn changes_after_or_during_a_whole_exchange_go_by_stream() {
    for writer_dials in [true, false] {
        let case = format!("writer dials: {writer_dials}");
        let feeds = small_feeds(10, writer_dials);
        let (writer, reader) = roles(writer_dials);
        let (mut net, l) = whole_net(live(), &feeds, |net| net.hold_writes = true);
        net.append(writer, feed(4), 2);
        net.drive();
        net.release_writes();
        net.drive();
        net.append(writer, feed(2), 1);
        net.drive();
        assert_eq!(
            net.links[l].ends[0].ever_attached,
            [feed(2), feed(4)].into(),
            "{case}"
        );
        for key in [feed(2), feed(4)] {
            let length = net.stores[writer].lengths[&key];
            assert_eq!(net.stores[reader].lengths[&key], length, "{case}");
            for side in [A, B] {
                assert_eq!(
                    synced_events(&net, l, side)
                        .iter()
                        .rev()
                        .find(|(f, _)| *f == key),
                    Some(&(key, length)),
                    "{case}, side {side}"
                );
            }
        }
        assert!(
            net.ended(l, A).is_none() && net.ended(l, B).is_none(),
            "{case}"
        );
    }
}

#[test]
/// Random schedules with appends on both sides, stores that decline or do not read
/// some feeds whole, and feeds streams race the control stream: no protocol error, and
/// both copies end equal, each side's last report at the final length.
fn random_schedules_with_whole_feeds_converge() {
    for seed in 0..60 {
        let mut rng = StdRng::seed_from_u64(500 + seed);
        let writer_dials = rng.gen();
        let mut feeds = small_feeds(24, writer_dials);
        // Some feeds held by both, some by the reader only.
        for f in feeds.iter_mut().take(6) {
            f.1 = f.1.max(1);
            f.2 = f.2.max(rng.gen_range(0..3));
        }
        let (writer, reader) = roles(writer_dials);
        let mut net = Net::new(live());
        net.add_store("a", accept_all());
        net.add_store("b", accept_all());
        let l = net.connect(A, B, [seed as u8; 32]);
        let a: Vec<_> = feeds.iter().map(|f| (f.0, f.1, headers(&[]))).collect();
        let b: Vec<_> = feeds.iter().map(|f| (f.0, f.2, headers(&[]))).collect();
        net.create(A, &a);
        net.create(B, &b);
        for node in [A, B] {
            net.stores[node].heads = true;
            net.stores[node].whole = rng.gen_range(0..5) > 0;
        }
        for n in 0..24 {
            match rng.gen_range(0..8) {
                0 => {
                    net.stores[reader].decline.insert(feed(n));
                }
                1 => {
                    net.stores[writer].read_none.insert(feed(n));
                }
                _ => {}
            }
        }
        for node in [A, B] {
            net.register(l, node, "", None);
        }
        let keys: Vec<FeedKey> = feeds.iter().map(|f| f.0).collect();
        for node in [A, B] {
            net.end(l, node)
                .session
                .handle_known_feeds("", keys.clone())
                .unwrap();
        }
        net.drive_random(&mut rng, 20);
        net.drive();
        for side in [A, B] {
            assert!(
                net.ended(l, side).is_none(),
                "seed {seed}: {:?}",
                net.ended(l, side)
            );
        }
        for key in &keys {
            let la = net.stores[A].lengths[key];
            assert_eq!(
                net.stores[B].lengths[key], la,
                "seed {seed}: {key:?} differs"
            );
            if la == 0 {
                continue;
            }
            for side in [A, B] {
                let last = synced_events(&net, l, side)
                    .into_iter()
                    .rev()
                    .find(|(f, _)| f == key);
                assert_eq!(last, Some((*key, la)), "seed {seed}: {key:?} side {side}");
            }
        }
    }
}
