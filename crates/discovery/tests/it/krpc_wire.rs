//! One `DhtCore` against hand-made datagrams: what it answers, to whom, with which
//! transaction id, and what it refuses. Virtual time; no socket.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use replic8_discovery::krpc::bencode::{self, Value, KRPC_LIMITS};
use replic8_discovery::krpc::limit::RateLimitConfig;
use replic8_discovery::krpc::message::{
    Body, Query, Response, ERROR_METHOD_UNKNOWN, ERROR_PROTOCOL,
};
use replic8_discovery::krpc::token::ROTATE_EVERY;
use replic8_discovery::krpc::{
    DhtCore, DhtCoreConfig, DhtEvent, Id, Message, NodeInfo, Transmit, TxId,
};

const ME: Id = Id([0x11; 20]);
const THEM: Id = Id([0x22; 20]);

fn core(config: DhtCoreConfig, now: Instant) -> DhtCore {
    DhtCore::new(config, ME, 7, now)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn query(tid: &[u8], query: Query, read_only: bool) -> Vec<u8> {
    Message {
        tid: TxId::new(tid).unwrap_or_else(|| panic!("tid {tid:?} too long")),
        body: Body::Query { id: THEM, query },
        read_only,
        ip: None,
        version: Some(*b"LT\x02\x00"),
    }
    .encode()
}

fn sent(core: &mut DhtCore) -> Vec<Transmit> {
    std::iter::from_fn(|| core.poll_transmit()).collect()
}

fn decoded(t: &Transmit) -> Message {
    Message::decode(&t.payload)
        .unwrap_or_else(|e| panic!("the core sent an undecodable datagram to {}: {e}", t.to))
}

/// The one datagram the core sent to `to` in answer, decoded.
fn answer_to(core: &mut DhtCore, to: SocketAddr) -> Message {
    let out: Vec<Transmit> = sent(core).into_iter().filter(|t| t.to == to).collect();
    let replies: Vec<Message> = out
        .iter()
        .map(decoded)
        .filter(|m| !matches!(m.body, Body::Query { .. }))
        .collect();
    assert_eq!(
        replies.len(),
        1,
        "expected one answer to {to}, got {replies:#?}"
    );
    replies.into_iter().next().unwrap_or_else(|| unreachable!())
}

/// Offers `peer` (with `id`) to the core's table: a ping, and its answer after `rtt`.
fn admit(core: &mut DhtCore, peer: SocketAddr, id: Id, now: Instant, rtt: Duration) {
    assert!(core.ping(peer, now), "ping {peer}");
    let out = sent(core);
    assert_eq!(out.len(), 1, "{out:?}");
    let pong = Message {
        tid: decoded(&out[0]).tid,
        body: Body::Response(Response {
            id,
            ..Response::default()
        }),
        read_only: false,
        ip: None,
        version: None,
    };
    core.handle_datagram(peer, &pong.encode(), now + rtt);
}

fn response_of(msg: &Message) -> &Response {
    match &msg.body {
        Body::Response(r) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

#[test]
fn transaction_ids_of_any_length_are_answered_and_echoed_exactly() {
    let t0 = Instant::now();
    let mut core = core(DhtCoreConfig::default(), t0);
    let from = addr("10.1.1.1:6881");
    // libtorrent's exact bytes: a 2-byte id and its `v`.
    let raw = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:\xaa\x011:v4:LT\x02\x001:y1:qe";
    core.handle_datagram(from, raw, t0);
    let reply = answer_to(&mut core, from);
    assert_eq!(reply.tid.as_bytes(), b"\xaa\x01");
    assert_eq!(response_of(&reply).id, ME);
    assert_eq!(
        reply.ip,
        Some(from),
        "BEP 42: the querier's address is echoed"
    );
    // The raw reply carries the id bytes verbatim.
    for tid in [&b""[..], b"x", b"ab", b"abcd", b"0123456789abcdef"] {
        let q = query(
            tid,
            Query::FindNode {
                target: Id([3; 20]),
                want: None,
            },
            false,
        );
        core.handle_datagram(from, &q, t0);
        let reply = answer_to(&mut core, from);
        assert_eq!(reply.tid.as_bytes(), tid, "tid of {} bytes", tid.len());
    }
    // 17 bytes is past the bound: dropped, not answered.
    let long = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t17:0123456789abcdefg1:y1:qe";
    core.handle_datagram(from, long, t0);
    assert!(sent(&mut core).is_empty());
}

#[test]
fn get_peers_and_announce_with_a_two_byte_tid_and_implied_port() {
    let t0 = Instant::now();
    let mut core = core(DhtCoreConfig::default(), t0);
    let from = addr("10.1.1.2:51413");
    let info_hash = Id([0x42; 20]);
    let get = query(
        b"gp",
        Query::GetPeers {
            info_hash,
            want: None,
        },
        false,
    );
    core.handle_datagram(from, &get, t0);
    let reply = answer_to(&mut core, from);
    assert_eq!(reply.tid.as_bytes(), b"gp");
    let token = response_of(&reply).token.clone().expect("a token");
    let announce = query(
        b"an",
        Query::AnnouncePeer {
            info_hash,
            port: 1,
            implied_port: true,
            token,
        },
        false,
    );
    core.handle_datagram(from, &announce, t0);
    let reply = answer_to(&mut core, from);
    assert_eq!(reply.tid.as_bytes(), b"an");
    response_of(&reply);
    // Another querier gets the peer, at the announcer's source port.
    let other = addr("10.1.1.3:6881");
    core.handle_datagram(other, &get, t0);
    let reply = answer_to(&mut core, other);
    assert_eq!(response_of(&reply).values, vec![from]);
    assert_eq!(core.stats().announces_stored, 1);
}

#[test]
fn tokens_are_bound_to_the_ip_and_infohash_rotate_and_expire() {
    let t0 = Instant::now();
    let mut core = core(DhtCoreConfig::default(), t0);
    let from = addr("10.1.1.4:6881");
    let info_hash = Id([0x43; 20]);
    let get = query(
        b"g1",
        Query::GetPeers {
            info_hash,
            want: None,
        },
        false,
    );
    core.handle_datagram(from, &get, t0);
    let token = response_of(&answer_to(&mut core, from))
        .token
        .clone()
        .expect("token");
    let announce = |token: &[u8]| {
        query(
            b"a1",
            Query::AnnouncePeer {
                info_hash,
                port: 7000,
                implied_port: false,
                token: token.to_vec(),
            },
            false,
        )
    };
    let is_bad_token =
        |msg: &Message| matches!(&msg.body, Body::Error { code, .. } if *code == ERROR_PROTOCOL);
    // From another IP the same token is refused.
    let thief = addr("10.1.1.5:6881");
    core.handle_datagram(thief, &announce(&token), t0);
    assert!(is_bad_token(&answer_to(&mut core, thief)));
    // For another infohash it is refused too.
    let elsewhere = query(
        b"a2",
        Query::AnnouncePeer {
            info_hash: Id([0x44; 20]),
            port: 7000,
            implied_port: false,
            token: token.clone(),
        },
        false,
    );
    core.handle_datagram(from, &elsewhere, t0);
    assert!(is_bad_token(&answer_to(&mut core, from)));
    // One rotation later it is still good (the previous secret).
    let t1 = t0 + ROTATE_EVERY + Duration::from_secs(1);
    core.handle_timeout(t1);
    core.handle_datagram(from, &announce(&token), t1);
    assert!(!is_bad_token(&answer_to(&mut core, from)));
    // Two rotations later it has expired.
    let t2 = t1 + ROTATE_EVERY;
    core.handle_timeout(t2);
    core.handle_datagram(from, &announce(&token), t2);
    assert!(is_bad_token(&answer_to(&mut core, from)));
    assert_eq!(core.stats().bad_tokens, 3);
    assert_eq!(core.stats().announces_stored, 1);
}

#[test]
fn queries_beyond_the_per_source_rate_are_dropped() {
    let t0 = Instant::now();
    let config = DhtCoreConfig {
        rate_limit: RateLimitConfig {
            per_second: 10.0,
            burst: 20.0,
            max_sources: 16,
        },
        ..DhtCoreConfig::default()
    };
    let mut core = core(config, t0);
    let noisy = addr("10.2.0.1:6881");
    let ping = query(b"pp", Query::Ping, true);
    for _ in 0..100 {
        core.handle_datagram(noisy, &ping, t0);
    }
    assert_eq!(sent(&mut core).len(), 20, "the burst, then nothing");
    // Another source is not affected.
    let quiet = addr("10.2.0.2:6881");
    core.handle_datagram(quiet, &ping, t0);
    answer_to(&mut core, quiet);
    // A second later, ten more for the noisy one.
    let t1 = t0 + Duration::from_secs(1);
    for _ in 0..100 {
        core.handle_datagram(noisy, &ping, t1);
    }
    assert_eq!(sent(&mut core).len(), 10);
    assert_eq!(core.stats().queries_rate_limited, 170);
    // Many sources: the table stays bounded and new sources are still answered.
    for i in 0..200u8 {
        let source = SocketAddr::new(IpAddr::from([10, 3, 0, i]), 6881);
        core.handle_datagram(source, &ping, t1);
        answer_to(&mut core, source);
    }
}

#[test]
fn read_only_core_answers_nothing_and_flags_its_queries() {
    let t0 = Instant::now();
    let mut core = core(
        DhtCoreConfig {
            read_only: true,
            ..DhtCoreConfig::default()
        },
        t0,
    );
    let from = addr("10.4.0.1:6881");
    core.handle_datagram(from, &query(b"rr", Query::Ping, false), t0);
    let bad = b"d1:ad2:id20:abcdefghij0123456789e1:q3:get1:t2:zz1:y1:qe";
    core.handle_datagram(from, bad, t0);
    assert!(
        sent(&mut core).is_empty(),
        "a read-only node answers nothing"
    );
    assert!(core.ping(from, t0));
    let out = sent(&mut core);
    assert_eq!(out.len(), 1);
    let msg = decoded(&out[0]);
    assert!(msg.read_only, "ro=1 on every query");
    assert!(matches!(msg.body, Body::Query { id, .. } if id == ME));
}

#[test]
fn read_only_queriers_are_not_pinged_nor_added_others_are_after_they_answer() {
    let t0 = Instant::now();
    let mut core = core(DhtCoreConfig::default(), t0);
    let ro = addr("10.5.0.1:6881");
    core.handle_datagram(ro, &query(b"r1", Query::Ping, true), t0);
    let out = sent(&mut core);
    assert_eq!(out.len(), 1, "only the answer: {out:?}");
    assert!(core.table(false).is_empty());
    // A querier that is not read-only is pinged; when it answers, it is in.
    let rw = addr("10.5.0.2:6881");
    core.handle_datagram(rw, &query(b"w1", Query::Ping, false), t0);
    let out = sent(&mut core);
    let ping = out
        .iter()
        .map(decoded)
        .find(|m| matches!(m.body, Body::Query { .. }))
        .expect("a verification ping");
    assert!(core.table(false).is_empty(), "not before it answered");
    let pong = Message {
        tid: ping.tid,
        body: Body::Response(Response {
            id: THEM,
            ..Response::default()
        }),
        read_only: false,
        ip: Some(addr("10.9.9.9:6881")),
        version: None,
    };
    core.handle_datagram(rw, &pong.encode(), t0 + Duration::from_millis(30));
    let entry = core.table(false).get(rw).expect("in the table");
    assert_eq!(entry.node.id, THEM);
    assert_eq!(entry.rtt.srtt(), Some(Duration::from_millis(30)));
    // An answer from another address with the same transaction id is not taken.
    let spoof = addr("10.5.0.3:6881");
    core.handle_datagram(spoof, &pong.encode(), t0);
    assert!(core.table(false).get(spoof).is_none());
    assert_eq!(core.stats().unsolicited_in, 1);
}

#[test]
fn pings_to_verify_queriers_are_bounded() {
    let t0 = Instant::now();
    let mut core = core(DhtCoreConfig::default(), t0);
    let mut pings = 0;
    for i in 0..200u8 {
        let from = SocketAddr::new(IpAddr::from([10, 16, 0, i]), 6881);
        let mut id = [i; 20];
        id[0] = i;
        let q = Message {
            tid: TxId::new(b"q").unwrap_or_else(|| unreachable!()),
            body: Body::Query {
                id: Id(id),
                query: Query::Ping,
            },
            read_only: false,
            ip: None,
            version: None,
        };
        core.handle_datagram(from, &q.encode(), t0);
        pings += sent(&mut core)
            .iter()
            .filter(|t| matches!(decoded(t).body, Body::Query { .. }))
            .count();
    }
    assert_eq!(pings, replic8_discovery::krpc::core::MAX_VERIFY_PINGS);
    assert_eq!(core.pending(), pings);
}

#[test]
fn malformed_queries_get_krpc_errors_with_their_tid() {
    let t0 = Instant::now();
    let mut core = core(DhtCoreConfig::default(), t0);
    let from = addr("10.6.0.1:6881");
    let no_id = b"d1:ad6:target20:abcdefghij0123456789e1:q9:find_node1:t2:e11:y1:qe";
    core.handle_datagram(from, no_id, t0);
    let reply = answer_to(&mut core, from);
    assert_eq!(reply.tid.as_bytes(), b"e1");
    assert!(matches!(reply.body, Body::Error { code, .. } if code == ERROR_PROTOCOL));
    let unknown = b"d1:ad2:id20:abcdefghij0123456789e1:q3:get1:t2:e21:y1:qe";
    core.handle_datagram(from, unknown, t0);
    let reply = answer_to(&mut core, from);
    assert_eq!(reply.tid.as_bytes(), b"e2");
    assert!(matches!(reply.body, Body::Error { code, .. } if code == ERROR_METHOD_UNKNOWN));
    // Not KRPC at all: silence.
    core.handle_datagram(from, b"GET / HTTP/1.1\r\n", t0);
    core.handle_datagram(from, b"", t0);
    assert!(sent(&mut core).is_empty());
    assert_eq!(core.stats().malformed_in, 4);
}

#[test]
fn find_node_answers_with_the_families_wanted() {
    let t0 = Instant::now();
    let mut core = core(DhtCoreConfig::default(), t0);
    // Two nodes in the tables, one per family, each verified by a ping.
    for (peer, id) in [
        (addr("10.7.0.1:6881"), Id([1; 20])),
        (addr("[fd00::1]:6881"), Id([2; 20])),
    ] {
        assert!(core.ping(peer, t0));
        let ping = decoded(&sent(&mut core)[0]);
        let pong = Message {
            tid: ping.tid,
            body: Body::Response(Response {
                id,
                ..Response::default()
            }),
            read_only: false,
            ip: None,
            version: None,
        };
        core.handle_datagram(peer, &pong.encode(), t0);
    }
    assert_eq!(core.table(false).len(), 1);
    assert_eq!(core.table(true).len(), 1);
    let from = addr("10.7.0.9:6881");
    let find = |want| {
        query(
            b"fn",
            Query::FindNode {
                target: Id([0; 20]),
                want,
            },
            true,
        )
    };
    core.handle_datagram(from, &find(None), t0);
    let r = answer_to(&mut core, from);
    assert_eq!(response_of(&r).nodes.len(), 1);
    assert!(response_of(&r).nodes6.is_empty());
    let both = Some(replic8_discovery::krpc::message::Want { v4: true, v6: true });
    core.handle_datagram(from, &find(both), t0);
    let r = answer_to(&mut core, from);
    assert_eq!(
        response_of(&r).nodes6,
        vec![NodeInfo {
            id: Id([2; 20]),
            addr: addr("[fd00::1]:6881")
        }]
    );
    // A querier is not sent back to itself.
    let known = addr("10.7.0.1:6881");
    core.handle_datagram(known, &find(None), t0);
    let r = answer_to(&mut core, known);
    assert!(response_of(&r).nodes.is_empty(), "{r:?}");
}

#[test]
fn a_bep42_id_once_enough_nodes_agree_on_a_public_address() {
    let t0 = Instant::now();
    let mut core = core(DhtCoreConfig::default(), t0);
    let public: IpAddr = "203.0.113.7".parse().expect("ip");
    assert!(!ME.is_bep42_valid_for(public));
    let mut events = Vec::new();
    for i in 1..=4u8 {
        let peer = SocketAddr::new(IpAddr::from([198, 51, 100, i]), 6881);
        assert!(core.ping(peer, t0));
        let ping = decoded(&sent(&mut core)[0]);
        assert!(matches!(ping.body, Body::Query { id, .. } if id == core.id()));
        let pong = Message {
            tid: ping.tid,
            body: Body::Response(Response {
                id: Id([i; 20]),
                ..Response::default()
            }),
            read_only: false,
            ip: Some(SocketAddr::new(public, 40000 + u16::from(i))),
            version: None,
        };
        core.handle_datagram(peer, &pong.encode(), t0);
        events.extend(std::iter::from_fn(|| core.poll_event()));
        if i < 3 {
            assert!(events.is_empty(), "{i} votes are not enough: {events:?}");
        }
    }
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0], DhtEvent::ExternalAddress { ip: public });
    let DhtEvent::IdChanged { id } = events[1] else {
        panic!("expected an id change, got {:?}", events[1]);
    };
    assert!(id.is_bep42_valid_for(public));
    assert_eq!(core.id(), id);
    assert_eq!(core.table(false).own_id(), id);
    assert_eq!(core.table(false).len(), 4, "the table survived the new id");
    assert_eq!(core.external_ip(false), Some(public));
}

#[test]
fn the_largest_responses_fit_one_unfragmented_ipv6_datagram() {
    let t0 = Instant::now();
    let mut core = core(DhtCoreConfig::default(), t0);
    for i in 0..40u8 {
        let mut id = [i; 20];
        id[0] = i.wrapping_mul(37);
        admit(
            &mut core,
            SocketAddr::new(IpAddr::from([10, 11, 0, i]), 6881),
            Id(id),
            t0,
            Duration::ZERO,
        );
        let v6 = SocketAddr::new(
            IpAddr::V6(format!("fd00:11:{i:x}::1").parse().expect("v6")),
            6881,
        );
        admit(&mut core, v6, Id(id), t0, Duration::ZERO);
    }
    assert!(core.table(false).len() >= 8 && core.table(true).len() >= 8);
    let info_hash = Id([0x99; 20]);
    // 100 peers of each family announce.
    for i in 0..100u16 {
        let v4 = SocketAddr::new(IpAddr::from([10, 12, (i >> 8) as u8, i as u8]), 6881);
        let v6 = SocketAddr::new(
            IpAddr::V6(format!("fd00:{i:x}::12").parse().expect("v6")),
            6881,
        );
        for from in [v4, v6] {
            let get = query(
                b"g",
                Query::GetPeers {
                    info_hash,
                    want: None,
                },
                true,
            );
            core.handle_datagram(from, &get, t0);
            let token = response_of(&answer_to(&mut core, from))
                .token
                .clone()
                .expect("token");
            let announce = query(
                b"a",
                Query::AnnouncePeer {
                    info_hash,
                    port: 7000,
                    implied_port: false,
                    token,
                },
                true,
            );
            core.handle_datagram(from, &announce, t0);
            response_of(&answer_to(&mut core, from));
        }
    }
    let both = Some(replic8_discovery::krpc::message::Want { v4: true, v6: true });
    for (from, values) in [
        (addr("10.13.0.1:6881"), 50),
        (addr("[fd00::13:1]:6881"), 25),
    ] {
        let get = query(
            b"gg",
            Query::GetPeers {
                info_hash,
                want: both,
            },
            true,
        );
        core.handle_datagram(from, &get, t0);
        let out = sent(&mut core);
        assert_eq!(out.len(), 1);
        let reply = decoded(&out[0]);
        let r = response_of(&reply);
        assert_eq!(
            (r.values.len(), r.nodes.len(), r.nodes6.len()),
            (values, 8, 8),
            "to {from}"
        );
        // IPv6's minimum MTU (1,280) less the IPv6 and UDP headers.
        assert!(
            out[0].payload.len() <= 1232,
            "{} bytes to {from}",
            out[0].payload.len()
        );
    }
}

#[test]
fn a_late_answer_from_a_slow_node_still_counts() {
    let t0 = Instant::now();
    let mut core = core(DhtCoreConfig::default(), t0);
    let node = addr("10.14.0.1:6881");
    admit(&mut core, node, THEM, t0, Duration::from_millis(10));
    assert!(core.table(false).get(node).is_some());
    let info_hash = Id([0x98; 20]);
    let lookup = core.get_peers(info_hash, t0).expect("starts");
    let out = sent(&mut core);
    assert_eq!(out.len(), 1);
    let tid = decoded(&out[0]).tid;
    // Past its timeout (50 ms, the floor) the query is slow, but it is all there is:
    // the lookup waits.
    let t1 = t0 + Duration::from_millis(60);
    assert!(core.poll_timeout().is_some_and(|t| t <= t1));
    core.handle_timeout(t1);
    assert_eq!(core.poll_event(), None);
    let peer = addr("10.15.0.1:7000");
    let answer = Message {
        tid,
        body: Body::Response(Response {
            id: THEM,
            values: vec![peer],
            token: Some(vec![1; 4]),
            ..Response::default()
        }),
        read_only: false,
        ip: None,
        version: None,
    };
    let t2 = t0 + Duration::from_millis(400);
    core.handle_datagram(node, &answer.encode(), t2);
    assert_eq!(
        core.poll_event(),
        Some(DhtEvent::Peers {
            lookup,
            info_hash,
            peers: vec![peer]
        })
    );
    assert!(
        matches!(core.poll_event(), Some(DhtEvent::LookupDone { lookup: l, .. }) if l == lookup)
    );
    // The slow answer fed the estimate: this node's next timeout is longer.
    let srtt = core
        .table(false)
        .get(node)
        .and_then(|e| e.rtt.srtt())
        .expect("measured");
    assert!(srtt > Duration::from_millis(50), "{srtt:?}");
    assert_eq!(core.stats().timeouts, 0);
}

#[test]
fn with_bep42_enforced_only_nodes_with_valid_ids_enter_the_table() {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    let t0 = Instant::now();
    let mut core = core(
        DhtCoreConfig {
            enforce_bep42: true,
            ..DhtCoreConfig::default()
        },
        t0,
    );
    let mut rng = StdRng::seed_from_u64(42);
    let public: IpAddr = "198.51.100.20".parse().expect("ip");
    let other: IpAddr = "198.51.100.21".parse().expect("ip");
    let private: IpAddr = "10.20.0.1".parse().expect("ip");
    let valid = Id::bep42(public, 3, &mut rng);
    let invalid = Id::bep42(other, 3, &mut rng);
    assert!(!invalid.is_bep42_valid_for(public));
    admit(
        &mut core,
        SocketAddr::new(public, 6881),
        invalid,
        t0,
        Duration::ZERO,
    );
    assert!(
        core.table(false).is_empty(),
        "an id made for another IP is refused"
    );
    admit(
        &mut core,
        SocketAddr::new(public, 6882),
        valid,
        t0,
        Duration::ZERO,
    );
    admit(
        &mut core,
        SocketAddr::new(private, 6881),
        invalid,
        t0,
        Duration::ZERO,
    );
    let ids: Vec<Id> = core.table(false).entries().map(|e| e.node.id).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&valid), "a valid id is taken");
    assert!(ids.contains(&invalid), "private addresses are exempt");
}

#[test]
fn a_lookup_stalled_by_a_full_pending_table_resumes_when_slots_free() {
    let t0 = Instant::now();
    let mut core = core(
        DhtCoreConfig {
            max_pending: 4,
            ..DhtCoreConfig::default()
        },
        t0,
    );
    for i in 0..8u8 {
        let mut id = [i; 20];
        id[0] = i.wrapping_mul(31);
        admit(
            &mut core,
            SocketAddr::new(IpAddr::from([10, 21, 0, i]), 6881),
            Id(id),
            t0,
            Duration::ZERO,
        );
    }
    assert_eq!(core.table(false).len(), 8);
    // Four pings to silent addresses take every pending slot.
    for i in 0..4u8 {
        assert!(core.ping(SocketAddr::new(IpAddr::from([10, 22, 0, i]), 6881), t0));
    }
    sent(&mut core);
    let lookup = core.get_peers(Id([0x21; 20]), t0).expect("starts");
    assert!(sent(&mut core).is_empty(), "no slot to send from");
    // The pings time out; the lookup gets their slots.
    let t1 = t0 + Duration::from_secs(3);
    core.handle_timeout(t1);
    let queries: Vec<Message> = sent(&mut core).iter().map(decoded).collect();
    assert!(
        queries.iter().any(|m| matches!(
            &m.body,
            Body::Query {
                query: Query::GetPeers { .. },
                ..
            }
        )),
        "the lookup resumed: {queries:?}"
    );
    assert!(core.lookups() == 1, "{lookup:?} still running");
}

/// Valid datagrams of every kind, then mutated (bit flips, truncation, splices,
/// duplicated spans, random bytes) with a seeded generator: the decoder and the core
/// take all of it without a panic, and never answer what is not KRPC.
#[test]
fn mutated_datagrams_never_panic() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let t0 = Instant::now();
    let mut core = core(DhtCoreConfig::default(), t0);
    let mut rng = StdRng::seed_from_u64(0xdead);
    let info_hash = Id([9; 20]);
    let mut corpus: Vec<Vec<u8>> = vec![
        query(b"aa", Query::Ping, false),
        query(
            b"bb",
            Query::FindNode {
                target: info_hash,
                want: Some(replic8_discovery::krpc::message::Want { v4: true, v6: true }),
            },
            false,
        ),
        query(
            b"cc",
            Query::GetPeers {
                info_hash,
                want: None,
            },
            false,
        ),
        query(
            b"dd",
            Query::AnnouncePeer {
                info_hash,
                port: 6881,
                implied_port: true,
                token: vec![1, 2, 3, 4],
            },
            true,
        ),
    ];
    // Responses to queries the core really has in flight (pings, and the queries of a
    // get_peers lookup among nodes in the table), so mutations reach the response path.
    let mut peers = Vec::new();
    for i in 0..8u8 {
        let peer = SocketAddr::new(IpAddr::from([10, 8, 0, i]), 6881);
        assert!(core.ping(peer, t0));
        let ping = decoded(&sent(&mut core)[0]);
        let pong = Message {
            tid: ping.tid,
            body: Body::Response(Response {
                id: Id([i + 100; 20]),
                ..Response::default()
            }),
            read_only: false,
            ip: None,
            version: None,
        };
        core.handle_datagram(peer, &pong.encode(), t0);
        peers.push(peer);
    }
    assert_eq!(core.table(false).len(), 8);
    let lookup = core.get_peers(info_hash, t0);
    assert!(lookup.is_ok(), "{lookup:?}");
    for peer in &peers {
        assert!(core.ping(*peer, t0));
    }
    for t in sent(&mut core) {
        let q = decoded(&t);
        let i =
            t.to.ip()
                .to_string()
                .rsplit('.')
                .next()
                .and_then(|x| x.parse::<u8>().ok())
                .unwrap_or(0);
        let nodes = (0..8u8)
            .map(|j| NodeInfo {
                id: Id([j; 20]),
                addr: SocketAddr::new(IpAddr::from([10, 9, i, j]), 6881),
            })
            .collect();
        corpus.push(
            Message {
                tid: q.tid,
                body: Body::Response(Response {
                    id: Id([i + 100; 20]),
                    nodes,
                    nodes6: vec![NodeInfo {
                        id: Id([7; 20]),
                        addr: addr("[2001:db8::7]:6881"),
                    }],
                    values: vec![addr("1.2.3.4:5"), addr("[2001:db8::8]:9")],
                    token: Some(vec![5; 8]),
                }),
                read_only: false,
                ip: Some(addr("198.51.100.1:1")),
                version: Some(*b"UT\x01\x02"),
            }
            .encode(),
        );
        corpus.push(
            Message {
                tid: q.tid,
                body: Body::Error {
                    code: 201,
                    message: "nope".into(),
                },
                read_only: false,
                ip: None,
                version: None,
            }
            .encode(),
        );
    }
    assert!(corpus.len() >= 4 + 2 * 11, "{}", corpus.len());
    let mut now = t0;
    let mut decoded_ok = 0;
    for round in 0..20_000u32 {
        let mut packet = corpus[rng.gen_range(0..corpus.len())].clone();
        for _ in 0..rng.gen_range(1..4) {
            let len = packet.len();
            match rng.gen_range(0..6) {
                0 if len > 0 => {
                    let i = rng.gen_range(0..len);
                    packet[i] ^= 1 << rng.gen_range(0..8);
                }
                1 if len > 0 => {
                    packet.truncate(rng.gen_range(0..len));
                }
                2 if len > 0 => {
                    let i = rng.gen_range(0..len);
                    packet[i] = *b"ide0123456789:ld-"
                        .get(rng.gen_range(0..17))
                        .unwrap_or(&b'x');
                }
                3 if len > 1 => {
                    let a = rng.gen_range(0..len);
                    let b = rng.gen_range(a..len);
                    let span = packet[a..b].to_vec();
                    let at = rng.gen_range(0..=packet.len());
                    packet.splice(at..at, span);
                }
                4 => {
                    let other = &corpus[rng.gen_range(0..corpus.len())];
                    let cut = rng.gen_range(0..=other.len());
                    let at = rng.gen_range(0..=packet.len());
                    packet.truncate(at);
                    packet.extend_from_slice(&other[cut..]);
                }
                _ => {
                    let n = rng.gen_range(0..64);
                    packet = (0..n).map(|_| rng.gen()).collect();
                }
            }
        }
        if bencode::decode(&packet, &KRPC_LIMITS).is_ok() {
            decoded_ok += 1;
        }
        let from = if round % 2 == 0 {
            peers[rng.gen_range(0..peers.len())]
        } else {
            SocketAddr::new(
                IpAddr::from([10, 10, (round >> 8) as u8, round as u8]),
                6881,
            )
        };
        core.handle_datagram(from, &packet, now);
        for t in sent(&mut core) {
            // Whatever the core sends is itself well-formed KRPC.
            decoded(&t);
        }
        while core.poll_event().is_some() {}
        if round % 100 == 0 {
            now += Duration::from_millis(50);
            core.handle_timeout(now);
        }
    }
    assert!(
        decoded_ok > 1000,
        "the mutations reached past the bencode layer only {decoded_ok} times"
    );
    assert!(core.stats().malformed_in > 1000);
    let answers = core.stats().responses_in + core.stats().errors_in;
    assert!(answers > 8 + 5, "only {answers} answers matched a query");
    // Nesting beyond the limit, and the largest allowed packet, do not hurt.
    let deep = [b"d1:t2:aa1:y1:q1:q4:ping1:a".to_vec(), b"l".repeat(3000)].concat();
    core.handle_datagram(peers[0], &deep, now);
    let huge = Value::List((0..600).map(|_| Value::Int(1)).collect());
    let mut bytes = Vec::new();
    bencode::encode(&huge, &mut bytes);
    core.handle_datagram(peers[0], &bytes, now);
    assert!(sent(&mut core).is_empty());
}
