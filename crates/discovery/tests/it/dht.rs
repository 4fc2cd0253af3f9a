//! The actor on a private DHT of our own nodes (`KrpcTestnet`, 127.0.0.1 or ::1 only;
//! never the public DHT).

use crate::common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use actix::Addr;
use common::*;
use replic8_discovery::*;

/// Guard for "finds the peer": generous on a loaded 2-core machine.
const GUARD: Duration = Duration::from_secs(15);

fn dht_only(quic_port: u16, testnet: &KrpcTestnet, timing: Timing) -> DiscoveryConfig {
    DiscoveryConfig {
        quic_port,
        dht: Some(DhtConfig::testnet(&testnet.bootstrap)),
        lan: None,
        static_peers: Vec::new(),
        timing,
    }
}

async fn start(config: DiscoveryConfig) -> Addr<DiscoveryActor> {
    DiscoveryActor::spawn(config)
        .await
        .expect("discovery starts")
}

async fn join(d: &Addr<DiscoveryActor>, topic: Topic, announce: bool, lookup: bool) -> JoinReport {
    d.send(Join {
        topic,
        announce,
        lookup,
    })
    .await
    .expect("discovery alive")
    .expect("join completes")
}

#[test]
fn lookup_after_announce_finds_the_peer_on_2_and_50_nodes() {
    init_tracing();
    for size in [2, 50] {
        let testnet = KrpcTestnet::new(size).expect("testnet");
        run(|| async {
            let a = start(dht_only(41001, &testnet, Timing::default())).await;
            // On the small net, the looking-up side runs in auto mode (the default on the
            // public DHT, read-only until reached; `DhtConfig::testnet` is a server):
            // both modes work.
            // b's second round comes late, so that what b reported is the first round's.
            let slow_second_round = Timing {
                join_lookup_delays: vec![Duration::from_secs(60)],
                ..Timing::default()
            };
            let mut b_config = dht_only(41002, &testnet, slow_second_round);
            if size == 2 {
                b_config.dht.as_mut().expect("dht").mode = DhtMode::Auto;
            }
            let b = start(b_config).await;
            let mut found_b = subscribe("b", &b, false).await;
            let t = topic();
            let report = join(&a, t, true, false).await;
            assert_eq!(
                report.announced,
                vec![PeerSource::Dht],
                "{size} nodes: {report:?}"
            );
            let report = join(&b, t, false, true).await;
            assert_eq!(
                report.peers_found, 1,
                "{size} nodes: first round finds a: {report:?}"
            );
            let found = found_b.recv_until(GUARD, |f| f.topic == t).await;
            assert_eq!(
                (found.addr, found.source),
                (loopback(41001), PeerSource::Dht),
                "{size} nodes"
            );
            // Several DHT nodes returned a's record; b reported it once in that round.
            let stats = b.send(Stats).await.expect("alive");
            assert_eq!(stats.peers_reported, 1, "{size} nodes: {stats:?}");
            let topics = b.send(Topics).await.expect("alive");
            assert_eq!(
                topics[0].peers,
                vec![loopback(41001)],
                "{size} nodes: {topics:?}"
            );
            // The DHT node's own counters.
            let dht = b
                .send(DhtInfo)
                .await
                .expect("alive")
                .expect("our node keeps them");
            assert!(
                dht.nodes_v4 > 0 && dht.stats.queries_out > 0,
                "{size} nodes: {dht:?}"
            );
            assert!(
                dht.peers_found
                    .iter()
                    .any(|(ih, n)| *ih == t.infohash() && *n >= 1),
                "{size} nodes: {dht:?}"
            );
            a.send(Close).await.expect("close a");
            b.send(Close).await.expect("close b");
        });
    }
}

/// Waits until `found` reported `want` for every topic in `topics`; returns, per topic,
/// the time from `start` to that report.
async fn each_found(
    found: &mut Found,
    topics: &[Topic],
    want: SocketAddr,
    start: Instant,
) -> Vec<Duration> {
    let mut when = vec![None; topics.len()];
    while when.iter().any(Option::is_none) {
        let f = found
            .recv_until(GUARD, |f| f.addr == want && topics.contains(&f.topic))
            .await;
        let i = topics.iter().position(|t| *t == f.topic).expect("matched");
        when[i].get_or_insert(start.elapsed());
    }
    when.into_iter().flatten().collect()
}

#[test]
fn two_nodes_joining_at_once_find_each_other_20_of_20() {
    init_tracing();
    let testnet = KrpcTestnet::new(10).expect("testnet");
    run(|| async {
        // Default timers: the fast re-lookups after a join are what make this pass.
        let a = start(dht_only(42001, &testnet, Timing::default())).await;
        let b = start(dht_only(42002, &testnet, Timing::default())).await;
        let mut found_a = subscribe("a", &a, true).await;
        let mut found_b = subscribe("b", &b, true).await;
        let mut all = Vec::new();
        // 20 iterations, each a fresh topic that both nodes join at the same moment; run
        // in 4 waves of 5 topics to keep the test short.
        for wave in 0..4 {
            let topics: Vec<Topic> = (0..5).map(|_| topic()).collect();
            let start = Instant::now();
            let joins: Vec<_> = topics
                .iter()
                .flat_map(|t| {
                    [
                        a.send(Join {
                            topic: *t,
                            announce: true,
                            lookup: true,
                        }),
                        b.send(Join {
                            topic: *t,
                            announce: true,
                            lookup: true,
                        }),
                    ]
                })
                .collect();
            let (a_sees_b, b_sees_a) = futures::join!(
                each_found(&mut found_a, &topics, loopback(42002), start),
                each_found(&mut found_b, &topics, loopback(42001), start),
            );
            for join in joins {
                join.await.expect("alive").expect("joined");
            }
            println!("wave {wave}: a saw b after {a_sees_b:?}; b saw a after {b_sees_a:?}");
            all.extend(a_sees_b);
            all.extend(b_sees_a);
            for t in &topics {
                a.send(Leave { topic: *t })
                    .await
                    .expect("alive")
                    .expect("a left");
                b.send(Leave { topic: *t })
                    .await
                    .expect("alive")
                    .expect("b left");
            }
        }
        assert_eq!(all.len(), 40, "20 iterations, both sides");
        all.sort();
        println!(
            "20 of 20: median side {:?}, slowest side {:?}",
            all[20], all[39]
        );
    });
}

#[test]
fn leave_stops_refreshing_and_reporting_but_the_record_outlives_it() {
    init_tracing();
    let testnet = KrpcTestnet::new(8).expect("testnet");
    run(|| async {
        let a = start(dht_only(43001, &testnet, fast_timing())).await;
        let b = start(dht_only(43002, &testnet, fast_timing())).await;
        let mut found_a = subscribe("a", &a, true).await;
        let mut found_b = subscribe("b", &b, true).await;
        let t = topic();
        join(&a, t, true, true).await;
        join(&b, t, true, true).await;
        found_a
            .recv_until(GUARD, |f| f.topic == t && f.addr == loopback(43002))
            .await;
        found_b
            .recv_until(GUARD, |f| f.topic == t && f.addr == loopback(43001))
            .await;
        // Wait for a refresh of a's announce, to show it was refreshing.
        let before = a.send(Stats).await.expect("alive");
        while a.send(Stats).await.expect("alive").dht_announces < before.dht_announces + 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        a.send(Leave { topic: t })
            .await
            .expect("alive")
            .expect("a left");
        assert!(!a.send(Joined { topic: t }).await.expect("alive"));
        let left = a.send(Stats).await.expect("alive");
        found_a.drain();

        // b keeps looking up: three more rounds that still return a's record, because a
        // DHT record cannot be withdrawn (it expires on the storing nodes).
        for _ in 0..3 {
            let again = found_b
                .recv_until(GUARD, |f| f.topic == t && f.addr == loopback(43001))
                .await;
            assert_eq!(again.source, PeerSource::Dht);
        }
        // Meanwhile a neither announced nor looked up again, nor reported anything.
        let after = a.send(Stats).await.expect("alive");
        assert_eq!(
            (after.dht_announces, after.dht_lookups),
            (left.dht_announces, left.dht_lookups),
            "a kept working on a left topic"
        );
        assert_eq!(found_a.drain(), vec![], "a reported peers for a left topic");
        assert_eq!(
            a.send(Leave { topic: t }).await.expect("alive"),
            Err(TopicError::NotJoined)
        );
    });
}

#[test]
fn flushed_after_every_found_peer_is_tried_and_reset_by_leave() {
    init_tracing();
    let testnet = KrpcTestnet::new(5).expect("testnet");
    run(|| async {
        let a = start(dht_only(44001, &testnet, Timing::default())).await;
        let b = start(dht_only(44002, &testnet, Timing::default())).await;
        let mut found_b = subscribe("b", &b, false).await;
        let t = topic();
        join(&a, t, true, false).await;
        assert!(
            a.send(Flushed { topic: t }).await.expect("alive"),
            "announce-only: nothing to try"
        );

        let report = join(&b, t, false, true).await;
        assert_eq!(report.peers_found, 1);
        let found = found_b.recv_until(GUARD, |f| f.topic == t).await;
        assert!(
            !b.send(Flushed { topic: t }).await.expect("alive"),
            "found but not tried"
        );
        let wait = b.send(WaitFlushed { topic: t });
        b.do_send(PeerTried {
            topic: t,
            addr: found.addr,
        });
        wait.await.expect("alive").expect("flushed once tried");
        assert!(b.send(Flushed { topic: t }).await.expect("alive"));

        b.send(Leave { topic: t })
            .await
            .expect("alive")
            .expect("left");
        assert!(
            !b.send(Flushed { topic: t }).await.expect("alive"),
            "leave resets flushed"
        );
        assert_eq!(
            b.send(WaitFlushed { topic: t }).await.expect("alive"),
            Err(TopicError::NotJoined)
        );
        // A new join starts unflushed and becomes flushed the same way.
        let topic_statuses = {
            join(&b, t, false, true).await;
            b.send(Topics).await.expect("alive")
        };
        assert_eq!(topic_statuses.len(), 1);
        assert!(!topic_statuses[0].flushed);
        let found = found_b.recv_until(GUARD, |f| f.topic == t).await;
        b.do_send(PeerTried {
            topic: t,
            addr: found.addr,
        });
        b.send(WaitFlushed { topic: t })
            .await
            .expect("alive")
            .expect("flushed again");
    });
}

#[test]
fn bad_config_gives_one_clear_error() {
    run(|| async {
        let mut config = DiscoveryConfig::new(45001);
        config.lan = None;
        config.dht = Some(DhtConfig {
            bootstrap: Bootstrap::Nodes(vec!["no-such-host.invalid:6881".into()]),
            ..DhtConfig::testnet(&[])
        });
        let err = DiscoveryActor::spawn(config.clone())
            .await
            .expect_err("unresolvable host");
        assert!(
            matches!(err, SpawnError::BootstrapResolve { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("cannot resolve bootstrap host \"no-such-host.invalid:6881\""),
            "{err}"
        );

        let busy = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = busy.local_addr().expect("addr").port();
        config.dht = Some(DhtConfig {
            bootstrap: Bootstrap::None,
            port: Some(port),
            ..DhtConfig::testnet(&[])
        });
        let err = DiscoveryActor::spawn(config.clone())
            .await
            .expect_err("port in use");
        match &err {
            SpawnError::DhtBind { addr, .. } => {
                assert_eq!(*addr, SocketAddr::from(([127, 0, 0, 1], port)))
            }
            other => panic!("expected DhtBind, got {other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("cannot bind the dht socket to 127.0.0.1:"),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'));

        config.quic_port = 0;
        config.dht = None;
        let err = DiscoveryActor::spawn(config).await.expect_err("no port");
        assert!(matches!(err, SpawnError::NoQuicPort), "{err:?}");
    });
}

#[test]
fn join_without_any_dht_node_reports_the_failed_announce() {
    init_tracing();
    run(|| async {
        let mut dht = DhtConfig::testnet(&[]);
        dht.bootstrap = Bootstrap::None;
        let config = DiscoveryConfig {
            quic_port: 45101,
            dht: Some(dht),
            lan: None,
            static_peers: Vec::new(),
            timing: Timing::default(),
        };
        let d = start(config).await;
        let t = topic();
        let report = join(&d, t, true, true).await;
        assert!(report.announced.is_empty(), "{report:?}");
        assert_eq!(report.announce_failed.len(), 1, "{report:?}");
        assert_eq!(report.announce_failed[0].0, PeerSource::Dht);
        assert_eq!(report.peers_found, 0);
        assert!(
            d.send(Joined { topic: t }).await.expect("alive"),
            "the topic stays joined and retries"
        );
        let stats = d.send(Stats).await.expect("alive");
        assert_eq!(stats.dht_announce_failures, 1, "{stats:?}");
        println!(
            "announce failure reported as: {:?}",
            report.announce_failed[0].1
        );
    });
}

#[test]
fn joins_resolve_fast_with_dead_entries_in_the_tables() {
    init_tracing();
    // 20 live nodes and 5 that answered at first and then went silent: every live
    // node's table holds them, and returns them in its answers.
    let testnet = KrpcTestnet::with_dead(20, 5).expect("testnet");
    run(|| async {
        let slow_second_round = Timing {
            join_lookup_delays: vec![Duration::from_secs(60)],
            ..Timing::default()
        };
        let mut joins = Vec::new();
        let mut firsts = Vec::new();
        for round in 0..10u16 {
            // A fresh pair each round: new tables, learning the dead entries afresh.
            let a = start(dht_only(
                47100 + 2 * round,
                &testnet,
                slow_second_round.clone(),
            ))
            .await;
            let b = start(dht_only(
                47101 + 2 * round,
                &testnet,
                slow_second_round.clone(),
            ))
            .await;
            let mut found_b = subscribe("b", &b, false).await;
            let t = topic();
            join(&a, t, true, false).await;
            let started = Instant::now();
            let (report, first) = futures::join!(
                async {
                    let report = join(&b, t, false, true).await;
                    (report, started.elapsed())
                },
                async {
                    found_b.recv_until(GUARD, |f| f.topic == t).await;
                    started.elapsed()
                }
            );
            assert_eq!(report.0.peers_found, 1, "round {round}: {report:?}");
            joins.push(report.1);
            firsts.push(first);
            a.send(Close).await.expect("close a");
            b.send(Close).await.expect("close b");
        }
        joins.sort();
        firsts.sort();
        println!(
            "20 live + 5 dead nodes, 10 rounds: join resolved median {:?} (worst {:?}), first peer median {:?} (worst {:?})",
            joins[5], joins[9], firsts[5], firsts[9]
        );
        // A guard, not the target: each dead entry costs a lookup one timeout (50 ms at
        // loopback round trips), never the 2 s of a fixed timeout.
        assert!(joins[5] < Duration::from_secs(1), "{joins:?}");
    });
}
