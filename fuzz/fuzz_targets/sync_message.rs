//! The feed sync message decoder (`replic8_store::decode`) and the sync core that
//! consumes it (`FeedSync::handle_bytes`), on both sides of a real feed.
//!
//! The input's first byte picks how much of the fixture feed the replica already holds;
//! the rest is a sequence of frames (4-byte big-endian length, payload), each one sync
//! message from the peer. An empty frame stands for a minute passing (timers fire).
//! Every message goes to a replica that wants every block and to a writer holding the
//! whole feed; a side stops at its first error, as the session would end its stream.
//!
//! Properties: nothing panics; a decoded message survives decode → encode → decode
//! unchanged, and its first byte and length pass `check_leading` (an answer exactly
//! when it is `Data` or `NoData`), so the receiver's early check refuses no valid message; every message a core sends encodes and decodes back to itself; the replica
//! only ever stores the feed's real blocks and real signed heads (it cannot be made to
//! accept an unverified byte); the writer's feed is unchanged.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use replic8_fuzz_fixtures as fx;
use replic8_store::storage::MemoryFeed;
use replic8_store::message::{check_leading, Leading};
use replic8_store::{
    decode, encode, Feed, FeedSync, Message, SyncConfig, Want, MAX_MESSAGE_SIZE,
};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let start = [0, 5, 12][usize::from(pick % 3)];
    let live = pick & 4 != 0;
    let mut replica = fx::replica(start);
    let mut writer = fx::writer(fx::BLOCKS);
    let mut now = Instant::now();
    let mut rs = Some(FeedSync::new(SyncConfig {
        want: Want::All,
        live,
        max_outstanding: 4,
        blocks_per_message: 4,
        ..SyncConfig::default()
    }));
    let mut ws = Some(FeedSync::new(SyncConfig {
        want: Want::Nothing,
        live,
        ..SyncConfig::default()
    }));
    if let Some(s) = rs.as_mut() {
        s.handle_start(&mut replica, now);
    }
    if let Some(s) = ws.as_mut() {
        s.handle_start(&mut writer, now);
    }
    drain(&mut rs, &mut replica);
    drain(&mut ws, &mut writer);

    for payload in fx::split_frames(rest, MAX_MESSAGE_SIZE) {
        if payload.is_empty() {
            now += Duration::from_secs(61);
            for (s, feed) in [(&mut rs, &mut replica), (&mut ws, &mut writer)] {
                if let Some(sync) = s.as_mut() {
                    if sync.handle_timeout(now).is_err() {
                        close(s, feed);
                    }
                }
            }
            continue;
        }
        if let Ok(m) = decode(payload) {
            let again = decode(&encode(&m).expect("a decoded message re-encodes"))
                .expect("a re-encoded message decodes");
            assert_eq!(again, m);
            let answer = matches!(m, Message::Data(_) | Message::NoData { .. });
            let leading = check_leading(payload[0], payload.len());
            assert_eq!(
                leading,
                Ok(if answer { Leading::Answer } else { Leading::Other })
            );
        }
        if let Some(sync) = rs.as_mut() {
            if sync.handle_bytes(&mut replica, payload, now).is_err() {
                close(&mut rs, &mut replica);
            }
        }
        if let Some(sync) = ws.as_mut() {
            if sync.handle_bytes(&mut writer, payload, now).is_err() {
                close(&mut ws, &mut writer);
            }
        }
        drain(&mut rs, &mut replica);
        drain(&mut ws, &mut writer);
        check_replica(&mut replica);
    }
    check_replica(&mut replica);
    assert_eq!(writer.length(), fx::BLOCKS);
    let head = writer.head().map(|h| (h.length, h.tree_hash));
    let real = fx::real_state(fx::BLOCKS).0;
    assert_eq!(head, Some((real.length, real.tree_hash)));
});

fn close(sync: &mut Option<FeedSync>, feed: &mut Feed<MemoryFeed>) {
    if let Some(mut s) = sync.take() {
        s.close(feed);
    }
}

/// Sends whatever the core has to send (checking it encodes and decodes back); an error
/// ends that side.
fn drain(sync: &mut Option<FeedSync>, feed: &mut Feed<MemoryFeed>) {
    let Some(s) = sync.as_mut() else {
        return;
    };
    loop {
        match s.poll_transmit(feed) {
            Ok(Some(m)) => {
                let bytes = encode(&m).expect("our message encodes");
                assert_eq!(decode(&bytes).expect("our message decodes"), m);
            }
            Ok(None) => break,
            Err(_) => return close(sync, feed),
        }
    }
    while s.poll_event().is_some() {}
}

/// The replica holds only the fixture feed's real blocks, under one of its real heads.
fn check_replica(replica: &mut Feed<MemoryFeed>) {
    let length = replica.length();
    assert!(
        length <= fx::BLOCKS,
        "replica accepted a head the writer never signed"
    );
    if length > 0 {
        let (head, roots) = fx::real_state(length);
        let got = replica.head().map(|h| (h.length, h.tree_hash));
        assert_eq!(
            got,
            Some((head.length, head.tree_hash)),
            "replica's head is not the real one"
        );
        assert_eq!(replica.roots(), roots.as_slice());
    }
    for i in 0..length {
        if replica.has(i) {
            let got = replica.get(i).expect("stored block reads");
            assert_eq!(got, Some(fx::block(i)), "replica stored a wrong block {i}");
        }
    }
}
