//! Cost of the session layer without I/O: the codec, and the control plane of
//! replicating many feeds between two session cores (offer, answer, stream open,
//! synced both ways, close), with a sync that takes no time.
//!
//! `cargo bench -p replic8 --bench session`. Prints one line per measurement; the
//! numbers are in `docs/PERFORMANCE.md`.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/util/mod.rs"]
mod util;

use std::hint::black_box;
use std::time::{Duration, Instant};

use replic8::frame::{self, MAX_FRAME_LEN};
use replic8::keys::FeedKey;
use replic8::message::{self, Message, OfferedFeed};
use replic8::session::SessionConfig;
use util::*;

fn best_of<F: FnMut() -> R, R>(runs: usize, mut f: F) -> (Duration, R) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..runs {
        let start = Instant::now();
        let r = f();
        best = best.min(start.elapsed());
        out = Some(r);
    }
    (best, out.unwrap())
}

fn codec() {
    let feeds: Vec<OfferedFeed> = (0..4096)
        .map(|n| OfferedFeed {
            id: n as u64,
            key: feed(n),
            headers: headers(&[
                ("name", format!("feed-{n}").as_bytes()),
                ("kind", b"hypercore"),
            ]),
        })
        .collect();
    let offer = Message::Offer {
        namespace: replic8::message::PUBLIC_HANDLE,
        offer: 1,
        feeds,
    };
    let mut wire = Vec::new();
    message::encode(&offer, &mut wire).unwrap();
    let (t_enc, _) = best_of(20, || {
        let mut w = Vec::with_capacity(wire.len());
        message::encode(black_box(&offer), &mut w).unwrap();
        w
    });
    let (t_dec, _) = best_of(20, || {
        let (payload, _) = frame::parse(black_box(&wire), MAX_FRAME_LEN)
            .unwrap()
            .unwrap();
        message::decode(payload).unwrap()
    });
    let mb = wire.len() as f64 / 1e6;
    println!(
        "codec: offer of 4096 feeds with 2 headers = {} bytes; encode {:.2} ms ({:.0} MB/s), decode {:.2} ms ({:.0} MB/s)",
        wire.len(),
        t_enc.as_secs_f64() * 1e3,
        mb / t_enc.as_secs_f64(),
        t_dec.as_secs_f64() * 1e3,
        mb / t_dec.as_secs_f64()
    );
}

fn control_plane(feeds: u32, max_streams: u32) {
    let config = SessionConfig {
        max_streams,
        ..SessionConfig::default()
    };
    let (t, (bytes, max_open)) = best_of(5, || {
        let mut net = Net::new(config.clone());
        net.add_store("a", accept_all());
        net.add_store("b", accept_all());
        let l = net.connect(0, 1, [1; 32]);
        let list: Vec<_> = (0..feeds).map(|n| (feed(n), 100, headers(&[]))).collect();
        net.create(1, &list);
        net.register(l, 0, "", None);
        net.register(l, 1, "", None);
        let keys: Vec<FeedKey> = list.iter().map(|f| f.0).collect();
        net.share(l, 1, "", &keys);
        net.drive();
        assert_eq!(net.stores[0].lengths.len(), feeds as usize);
        let bytes: usize = net.links[l].ends.iter().map(|e| e.wire.len()).sum();
        (bytes, net.links[l].ends[0].max_open)
    });
    println!(
        "control plane: {feeds} feeds, max_streams {max_streams}: {:.1} ms ({:.2} µs/feed), {} control+header bytes ({:.0} B/feed), at most {max_open} streams open",
        t.as_secs_f64() * 1e3,
        t.as_secs_f64() * 1e6 / feeds as f64,
        bytes,
        bytes as f64 / feeds as f64,
    );
}

fn main() {
    codec();
    control_plane(1_000, 128);
    control_plane(10_000, 128);
    control_plane(10_000, 16);
}
