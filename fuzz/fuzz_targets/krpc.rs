//! The Mainline DHT core's decoders (`krpc::bencode::decode`, `krpc::Message::decode`)
//! and the core that consumes them (`krpc::DhtCore::handle_datagram`).
//!
//! The input is used three times:
//! - as one datagram: bencode decodes within `KRPC_LIMITS` (depth, value count) and
//!   re-encodes to the same length (canonical integers and lengths are all it accepts;
//!   only the order of dictionary keys can change), to exactly the input when the keys
//!   were sorted, and to itself again; a decoded message survives
//!   decode → encode → decode unchanged (the one exception is an error message that is
//!   not UTF-8: replacement characters can take its encoding past 4 KiB);
//! - as the same datagram into a fresh core, from an IPv4 address;
//! - as a sequence of datagrams into that core. The first byte picks the configuration
//!   (read-only, IP restriction, BEP 42 enforcement, families, votes needed, small
//!   pending/lookup limits); then each chunk is `[op][len: u16 BE][len bytes]`, where
//!   `op` picks the source (bits 0-2: one of 8 fixed IPv4/IPv6 addresses, or with bit 3
//!   the destination of one of the last 8 queries the core sent that this input has
//!   not answered yet, whose transaction id then replaces the first `TTTT` in the
//!   datagram), the virtual time that passes
//!   before it (bits 4-5: 0, 300 ms, 3.5 s, 61 s) and a command run first (bits 6-7:
//!   none, bootstrap through the 8 addresses, get_peers, announce). The first
//!   `KKKKKKKK` in a datagram becomes the last token the core gave the source's IP.
//!
//! After every step the core's due timers run and its output is drained: every
//! datagram it sends decodes, is the canonical encoding of what it decodes to, fits in
//! one unfragmented IPv6 datagram (1,232 bytes, the bound `PeerStoreConfig` documents),
//! queries carry 4-byte transaction ids and the `ro` flag of the configuration, a
//! read-only core answers nothing; events, pending queries, lookups, routing tables and
//! the peer store stay within their bounds.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use replic8_discovery::krpc::bencode::{self, Value, KRPC_LIMITS};
use replic8_discovery::krpc::core::MAX_PEERS_PER_LOOKUP;
use replic8_discovery::krpc::limit::RateLimitConfig;
use replic8_discovery::krpc::message::Body;
use replic8_discovery::krpc::routing::K;
use replic8_discovery::krpc::{DhtCore, DhtCoreConfig, DhtEvent, Id, Message};

/// The largest datagram the core may send: one unfragmented IPv6 datagram's payload.
const MAX_SENT: usize = 1232;

const INFO_HASHES: [Id; 2] = [Id([0x42; 20]), Id([0x11; 20])];

fn addrs() -> [SocketAddr; 8] {
    [
        "10.0.0.1:6881",
        "10.0.0.2:6881",
        "198.51.100.7:51413",
        "1.2.3.4:6881",
        "[2001:db8::1]:6881",
        "[2001:db8::2]:6881",
        "[::1]:6881",
        "[2a00:1450::5]:4000",
    ]
    .map(|s| s.parse().expect("fixed address"))
}

fuzz_target!(|data: &[u8]| {
    // 1. One datagram, through both decoders.
    if let Ok(value) = bencode::decode(data, &KRPC_LIMITS) {
        let (depth, count) = measure(&value);
        assert!(depth <= KRPC_LIMITS.max_depth, "depth {depth}");
        assert!(count <= KRPC_LIMITS.max_values, "{count} values");
        let mut wire = Vec::new();
        bencode::encode(&value, &mut wire);
        assert_eq!(wire.len(), data.len(), "re-encoding changed the length");
        if sorted(&value) {
            assert_eq!(wire, data, "a sorted value re-encodes to its input");
        }
        let again = bencode::decode(&wire, &KRPC_LIMITS).expect("re-encoded value decodes");
        let mut wire2 = Vec::new();
        bencode::encode(&again, &mut wire2);
        assert_eq!(wire2, wire, "encoding is idempotent");
    }
    if let Ok(m) = Message::decode(data) {
        let wire = m.encode();
        if wire.len() <= KRPC_LIMITS.max_input {
            assert_eq!(Message::decode(&wire), Ok(m), "decode → encode → decode");
        } else {
            assert!(
                matches!(m.body, Body::Error { .. }),
                "only a lossy error message can grow past the limit: {m:?}"
            );
        }
    }

    // 2. The datagram, then the sequence, into one core.
    let config_byte = data.first().copied().unwrap_or(0);
    let config = config(config_byte);
    let t0 = Instant::now();
    let mut now = t0;
    let mut h = Harness {
        core: DhtCore::new(config.clone(), Id([0x5a; 20]), 1, t0),
        config,
        queries: Vec::new(),
        tokens: Vec::new(),
    };
    let addrs = addrs();
    h.core.handle_datagram(addrs[0], data, now);
    h.step(now);

    let mut rest = data.get(1..).unwrap_or_default();
    while rest.len() >= 3 {
        let op = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let mut datagram = rest[3..3 + len].to_vec();
        rest = &rest[3 + len..];

        now += [
            Duration::ZERO,
            Duration::from_millis(300),
            Duration::from_millis(3500),
            Duration::from_secs(61),
        ][usize::from((op >> 4) & 3)];
        let pick = usize::from(op & 7);
        match op >> 6 {
            1 => {
                let _ = h.core.bootstrap(&addrs, now);
            }
            2 => {
                let _ = h.core.get_peers(INFO_HASHES[pick & 1], now);
            }
            3 => {
                let port = (pick & 2 == 0).then_some(4000);
                let _ = h.core.announce(INFO_HASHES[pick & 1], port, now);
            }
            _ => {}
        }
        h.step(now);

        let from = if op & 8 != 0 {
            // An answer to one of the last queries not answered yet: from where it went,
            // with its tid.
            if h.queries.is_empty() {
                continue;
            }
            let index = h.queries.len() - 1 - pick % h.queries.len();
            let (to, tid) = h.queries.remove(index);
            replace(&mut datagram, b"TTTT", &tid);
            to
        } else {
            addrs[pick]
        };
        if let Some((_, token)) = h.tokens.iter().rev().find(|(ip, _)| *ip == from.ip()) {
            let token = token.clone();
            replace(&mut datagram, b"KKKKKKKK", &token);
        }
        h.core.handle_datagram(from, &datagram, now);
        h.step(now);
    }
});

fn config(byte: u8) -> DhtCoreConfig {
    let mut c = DhtCoreConfig {
        read_only: byte & 1 != 0,
        restrict_ips: byte & 2 == 0,
        enforce_bep42: byte & 4 != 0,
        ..DhtCoreConfig::default()
    };
    match (byte >> 3) & 3 {
        1 => c.ipv6 = false,
        2 => c.ipv4 = false,
        _ => {}
    }
    if byte & 0x20 != 0 {
        c.min_votes = 1;
    }
    if byte & 0x40 != 0 {
        c.max_pending = 4;
        c.max_lookups = 2;
    }
    if byte & 0x80 != 0 {
        c.rate_limit = RateLimitConfig {
            per_second: 1.0,
            burst: 3.0,
            max_sources: 4,
        };
    }
    c
}

struct Harness {
    core: DhtCore,
    config: DhtCoreConfig,
    /// The last queries the core sent and the input has not answered: destination and
    /// transaction id.
    queries: Vec<(SocketAddr, Vec<u8>)>,
    /// The last tokens the core handed out, by the IP they are bound to.
    tokens: Vec<(std::net::IpAddr, Vec<u8>)>,
}

impl Harness {
    /// Runs due timers, drains and checks the core's output.
    fn step(&mut self, now: Instant) {
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
        while let Some(t) = self.core.poll_transmit() {
            assert!(
                t.payload.len() <= MAX_SENT,
                "{} bytes to {}: {:?}",
                t.payload.len(),
                t.to,
                String::from_utf8_lossy(&t.payload)
            );
            let m = Message::decode(&t.payload)
                .unwrap_or_else(|e| panic!("the core sent an undecodable datagram: {e}"));
            assert_eq!(m.encode(), t.payload, "the core's encoding is canonical");
            match &m.body {
                Body::Query { .. } => {
                    assert_eq!(m.tid.as_bytes().len(), 4, "our tids are 4 bytes");
                    assert_eq!(m.read_only, self.config.read_only);
                    self.queries.push((t.to, m.tid.as_bytes().to_vec()));
                    if self.queries.len() > 8 {
                        self.queries.remove(0);
                    }
                }
                Body::Response(r) => {
                    assert!(!self.config.read_only, "a read-only node answered");
                    assert!(r.nodes.len() <= K && r.nodes6.len() <= K);
                    if let Some(token) = &r.token {
                        self.tokens.push((t.to.ip(), token.clone()));
                        if self.tokens.len() > 8 {
                            self.tokens.remove(0);
                        }
                    }
                }
                Body::Error { .. } => {
                    assert!(!self.config.read_only, "a read-only node answered");
                }
            }
        }
        while let Some(e) = self.core.poll_event() {
            match e {
                DhtEvent::Peers { peers, .. } => {
                    assert!(!peers.is_empty() && peers.len() <= MAX_PEERS_PER_LOOKUP)
                }
                DhtEvent::LookupDone { closest, .. } => assert!(closest.len() <= 2 * K),
                DhtEvent::ExternalAddress { .. } | DhtEvent::IdChanged { .. } => {}
            }
        }
        assert!(self.core.pending() <= self.config.max_pending);
        assert!(self.core.lookups() <= self.config.max_lookups);
        for v6 in [false, true] {
            assert!(self.core.table(v6).len() <= 160 * K);
        }
        let store = self.core.peer_store();
        let bounds = self.config.peer_store;
        assert!(store.info_hashes() <= bounds.max_info_hashes);
        assert!(store.len() <= bounds.max_info_hashes * bounds.max_per_info_hash);
    }
}

/// Replaces the first `from` in `bytes` by `to` (of the same length, or nothing).
fn replace(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    if from.len() != to.len() {
        return;
    }
    if let Some(at) = bytes.windows(from.len()).position(|w| w == from) {
        bytes[at..at + to.len()].copy_from_slice(to);
    }
}

/// Nesting of lists and dictionaries (one at the top is 1, a scalar 0) and number of
/// values, dictionary keys included.
fn measure(value: &Value<'_>) -> (usize, usize) {
    match value {
        Value::Int(_) | Value::Bytes(_) => (0, 1),
        Value::List(items) => items.iter().fold((1, 1), |(d, n), v| {
            let (vd, vn) = measure(v);
            (d.max(vd + 1), n + vn)
        }),
        Value::Dict(entries) => entries.iter().fold((1, 1), |(d, n), (_, v)| {
            let (vd, vn) = measure(v);
            (d.max(vd + 1), n + vn + 1)
        }),
    }
}

/// Whether every dictionary's keys are in order (as the encoder writes them).
fn sorted(value: &Value<'_>) -> bool {
    match value {
        Value::Int(_) | Value::Bytes(_) => true,
        Value::List(items) => items.iter().all(sorted),
        Value::Dict(entries) => {
            entries.windows(2).all(|w| w[0].0 <= w[1].0) && entries.iter().all(|(_, v)| sorted(v))
        }
    }
}
