//! `KrpcDht`, our DHT node on real sockets (loopback only): IPv6 and dual stack through
//! the actor, the node id file, auto mode turning server when reached, and a node of
//! ours inside a `mainline` testnet.

use crate::common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use actix::Addr;
use common::*;
use replic8_discovery::krpc::message::{Body, Message, Query, Response};
use replic8_discovery::krpc::{Id, TxId};
use replic8_discovery::*;

/// Guard for "finds the peer": generous on a loaded 2-core machine.
const GUARD: Duration = Duration::from_secs(15);

fn actor_config(quic_port: u16, dht: DhtConfig) -> DiscoveryConfig {
    DiscoveryConfig {
        quic_port,
        dht: Some(dht),
        lan: None,
        static_peers: Vec::new(),
        timing: Timing {
            // What a test sees is the first round's.
            join_lookup_delays: vec![Duration::from_secs(60)],
            ..Timing::default()
        },
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

fn v6(port: u16) -> SocketAddr {
    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))
}

#[test]
fn ipv6_only_nodes_find_each_other_on_a_v6_testnet() {
    init_tracing();
    let testnet = KrpcTestnet::new_v6(8).expect("testnet on ::1");
    run(|| async {
        let a = start(actor_config(
            46001,
            DhtConfig::testnet_v6(&testnet.bootstrap),
        ))
        .await;
        let b = start(actor_config(
            46002,
            DhtConfig::testnet_v6(&testnet.bootstrap),
        ))
        .await;
        let stats = a.send(Stats).await.expect("alive");
        assert!(
            stats.dht_addrs.iter().all(|a| a.is_ipv6()) && !stats.dht_addrs.is_empty(),
            "{stats:?}"
        );
        let mut found_b = subscribe("b", &b, false).await;
        let t = topic();
        let report = join(&a, t, true, false).await;
        assert_eq!(report.announced, vec![PeerSource::Dht], "{report:?}");
        let report = join(&b, t, false, true).await;
        assert_eq!(report.peers_found, 1, "{report:?}");
        let found = found_b.recv_until(GUARD, |f| f.topic == t).await;
        assert_eq!((found.addr, found.source), (v6(46001), PeerSource::Dht));
        a.send(Close).await.expect("close a");
        b.send(Close).await.expect("close b");
    });
}

#[test]
fn a_dual_stack_announce_is_found_on_each_family() {
    init_tracing();
    let net4 = KrpcTestnet::new(6).expect("testnet on 127.0.0.1");
    let net6 = KrpcTestnet::new_v6(6).expect("testnet on ::1");
    run(|| async {
        let both: Vec<String> = net4
            .bootstrap
            .iter()
            .chain(&net6.bootstrap)
            .cloned()
            .collect();
        let dual = DhtConfig {
            bind_v6: Some(std::net::Ipv6Addr::LOCALHOST),
            ..DhtConfig::testnet(&both)
        };
        let a = start(actor_config(46101, dual)).await;
        let addrs = a.send(Stats).await.expect("alive").dht_addrs;
        assert_eq!(addrs.len(), 2, "one socket per family: {addrs:?}");
        assert_eq!(
            addrs[0].port(),
            addrs[1].port(),
            "the IPv6 socket takes the IPv4 socket's port when free: {addrs:?}"
        );
        let b4 = start(actor_config(46102, DhtConfig::testnet(&net4.bootstrap))).await;
        let b6 = start(actor_config(46103, DhtConfig::testnet_v6(&net6.bootstrap))).await;
        let mut found4 = subscribe("b4", &b4, false).await;
        let mut found6 = subscribe("b6", &b6, false).await;
        let t = topic();
        let report = join(&a, t, true, false).await;
        assert_eq!(report.announced, vec![PeerSource::Dht], "{report:?}");
        join(&b4, t, false, true).await;
        join(&b6, t, false, true).await;
        let f4 = found4.recv_until(GUARD, |f| f.topic == t).await;
        let f6 = found6.recv_until(GUARD, |f| f.topic == t).await;
        assert_eq!(f4.addr, loopback(46101));
        assert_eq!(f6.addr, v6(46101));
    });
}

#[test]
fn the_node_id_is_kept_in_the_id_file() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dht-id");
    run(|| async {
        let config = DhtConfig {
            bootstrap: Bootstrap::None,
            id_file: Some(path.clone()),
            ..DhtConfig::testnet(&[])
        };
        let first = KrpcDht::spawn(&config).await.expect("spawn");
        let id = first.status().await.expect("running").id;
        let text = std::fs::read_to_string(&path).expect("id file written");
        assert_eq!(text.trim(), hex::encode(id.0));
        drop(first);
        let again = KrpcDht::spawn(&config).await.expect("spawn again");
        assert_eq!(again.status().await.expect("running").id, id, "same id");

        let given = DhtConfig {
            node_id: Some([9; 20]),
            ..config.clone()
        };
        let node = KrpcDht::spawn(&given).await.expect("spawn with an id");
        assert_eq!(node.status().await.expect("running").id, Id([9; 20]));
        assert_eq!(
            std::fs::read_to_string(&path).expect("file").trim(),
            hex::encode([9; 20]),
            "a given id is persisted too"
        );

        std::fs::write(&path, "not an id\n").expect("write");
        let err = KrpcDht::spawn(&config).await.expect_err("bad id file");
        assert!(matches!(err, SpawnError::DhtIdFile { .. }), "{err:?}");
        assert!(err.to_string().starts_with("dht node id file "), "{err}");
    });
}

fn ping(tid: u8) -> Vec<u8> {
    Message {
        tid: TxId::new(&[tid, tid]).expect("2 bytes"),
        body: Body::Query {
            id: Id([tid; 20]),
            query: Query::Ping,
        },
        read_only: false,
        ip: None,
        version: None,
    }
    .encode()
}

/// The transaction id of the next response on `socket` (guarded); queries (a server
/// pings a new querier before it enters the table) are skipped.
fn answer_tid(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 1500];
    loop {
        let (len, _) = socket
            .recv_from(&mut buf)
            .expect("an answer within the guard");
        let msg = Message::decode(&buf[..len]).expect("krpc");
        match msg.body {
            Body::Response(_) => return msg.tid.as_bytes().to_vec(),
            Body::Query { .. } => continue,
            Body::Error { .. } => panic!("a KRPC error: {msg:?}"),
        }
    }
}

#[test]
fn auto_mode_answers_once_an_unsolicited_query_reaches_it() {
    init_tracing();
    // A seed that we drive by hand: the node queries it while bootstrapping.
    let seed = UdpSocket::bind("127.0.0.1:0").expect("bind");
    seed.set_read_timeout(Some(GUARD)).expect("timeout");
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind");
    stranger.set_read_timeout(Some(GUARD)).expect("timeout");
    run(|| async {
        let config = DhtConfig {
            mode: DhtMode::Auto,
            ..DhtConfig::testnet(&[seed.local_addr().expect("addr").to_string()])
        };
        let node = KrpcDht::spawn(&config).await.expect("spawn");
        let addr = node.addrs()[0];
        // The bootstrap query reaches the seed: the node contacted it.
        let mut buf = [0u8; 1500];
        let (len, from) = seed.recv_from(&mut buf).expect("bootstrap query");
        assert_eq!(from, addr);
        let query = Message::decode(&buf[..len]).expect("krpc");
        assert!(query.read_only, "auto starts read-only (ro = 1): {query:?}");
        assert!(!node.status().await.expect("running").server);

        // The seed queries back (through the pinhole a NAT would keep open): no proof.
        seed.send_to(&ping(1), addr).expect("send");
        // A stranger's first query is proof; the node answers from then on.
        stranger.send_to(&ping(2), addr).expect("send");
        stranger.send_to(&ping(3), addr).expect("send");
        assert_eq!(
            answer_tid(&stranger),
            vec![3, 3],
            "the first query is not answered"
        );
        let status = node.status().await.expect("running");
        assert!(status.server, "{status:?}");
        assert_eq!(
            (status.stats.queries_in, status.stats.queries_answered),
            (3, 1),
            "the seed's query, earlier on the same socket, did not make us a server"
        );
    });
}

#[test]
fn read_only_and_server_modes_hold() {
    init_tracing();
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind");
    stranger.set_read_timeout(Some(GUARD)).expect("timeout");
    run(|| async {
        let ro = KrpcDht::spawn(&DhtConfig {
            mode: DhtMode::ReadOnly,
            bootstrap: Bootstrap::None,
            ..DhtConfig::testnet(&[])
        })
        .await
        .expect("spawn");
        let server = KrpcDht::spawn(&DhtConfig {
            bootstrap: Bootstrap::None,
            ..DhtConfig::testnet(&[])
        })
        .await
        .expect("spawn");
        stranger.send_to(&ping(4), ro.addrs()[0]).expect("send");
        stranger.send_to(&ping(5), server.addrs()[0]).expect("send");
        assert_eq!(answer_tid(&stranger), vec![5, 5]);
        // The read-only node counts the query (there is no answer to wait for: its
        // counters are the event) and stays read-only.
        let deadline = tokio::time::Instant::now() + GUARD;
        let status = loop {
            let status = ro.status().await.expect("running");
            if status.stats.queries_in == 1 {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the read-only node never counted the query: {status:?}"
            );
            tokio::task::yield_now().await;
        };
        assert!(!status.server, "{status:?}");
        assert_eq!(status.stats.queries_answered, 0, "{status:?}");
    });
}

/// Interop with another implementation, the `mainline` crate: in a network of its
/// nodes, our node finds what a `mainline` node announced, and the `mainline` node finds
/// what ours announced.
#[test]
fn our_node_in_a_mainline_testnet_finds_a_mainline_announce_and_back() {
    init_tracing();
    let testnet = mainline::Testnet::builder(6)
        .build()
        .expect("mainline testnet");
    let bootstrap: Vec<std::net::SocketAddrV4> = testnet
        .bootstrap
        .iter()
        .map(|b| b.parse().expect("a testnet address"))
        .collect();
    let theirs = mainline::Dht::builder()
        .bootstrap(&bootstrap)
        .build()
        .expect("a mainline node")
        .as_async();
    run(|| async {
        let ours = start(actor_config(46201, DhtConfig::testnet(&testnet.bootstrap))).await;
        let mut found_ours = subscribe("ours", &ours, false).await;
        let t = topic();
        let infohash: [u8; 20] = t.0[..20].try_into().expect("20 bytes");
        theirs
            .announce_peer(mainline::Id::from(infohash), Some(46202))
            .await
            .expect("the mainline node's announce is stored");
        // Ours announces and looks up: it finds theirs.
        join(&ours, t, true, true).await;
        let f = found_ours.recv_until(GUARD, |f| f.topic == t).await;
        assert_eq!(f.addr, loopback(46202));
        // Our announce was stored when the join resolved: theirs finds ours.
        let peers: Vec<_> =
            futures::StreamExt::collect::<Vec<_>>(theirs.get_peers(mainline::Id::from(infohash)))
                .await
                .into_iter()
                .flatten()
                .collect();
        assert!(
            peers.contains(&std::net::SocketAddrV4::new(
                std::net::Ipv4Addr::LOCALHOST,
                46201
            )),
            "the mainline node did not find our announce: {peers:?}"
        );
    });
}

/// The next query on `socket` (guarded), with its sender.
fn next_query(socket: &UdpSocket) -> (Message, SocketAddr) {
    let mut buf = [0u8; 1500];
    loop {
        let (len, from) = socket
            .recv_from(&mut buf)
            .expect("a query within the guard");
        let msg = Message::decode(&buf[..len]).expect("krpc");
        if matches!(msg.body, Body::Query { .. }) {
            return (msg, from);
        }
    }
}

fn respond(socket: &UdpSocket, to: SocketAddr, query: &Message, response: Response) {
    let msg = Message {
        tid: query.tid,
        body: Body::Response(response),
        read_only: false,
        ip: None,
        version: None,
    };
    socket.send_to(&msg.encode(), to).expect("send");
}

#[test]
fn a_lookup_with_no_node_waits_for_a_bootstrap_that_tries_the_seeds_again() {
    init_tracing();
    let seed = UdpSocket::bind("127.0.0.1:0").expect("bind");
    seed.set_read_timeout(Some(GUARD)).expect("timeout");
    run(|| async {
        let node = KrpcDht::spawn(&DhtConfig::testnet(&[seed
            .local_addr()
            .expect("addr")
            .to_string()]))
        .await
        .expect("spawn");
        let seed_id = Id([0x5e; 20]);
        // The first bootstrap query goes unanswered: the seed is down.
        let (first, _) = next_query(&seed);
        assert!(matches!(
            &first.body,
            Body::Query {
                query: Query::FindNode { .. },
                ..
            }
        ));
        // A lookup now finds no node; it waits for that bootstrap to end (at the
        // query's last timeout), then starts another that tries the seed again.
        let (ih, peer) = ([0x42; 20], loopback(47001));
        let lookup = {
            let node = node.clone();
            tokio::spawn(async move {
                let mut found = Vec::new();
                let mut stream = node.lookup(ih);
                while let Some(batch) = futures::StreamExt::next(&mut stream).await {
                    found.extend(batch);
                }
                found
            })
        };
        let (second, from) = next_query(&seed);
        assert!(
            matches!(
                &second.body,
                Body::Query {
                    query: Query::FindNode { .. },
                    ..
                }
            ),
            "{second:?}"
        );
        assert_ne!(second.tid, first.tid);
        respond(
            &seed,
            from,
            &second,
            Response {
                id: seed_id,
                ..Response::default()
            },
        );
        // With the seed in its table, the held lookup runs.
        let (get_peers, from) = next_query(&seed);
        assert!(
            matches!(&get_peers.body, Body::Query { query: Query::GetPeers { info_hash, .. }, .. } if *info_hash == Id(ih)),
            "{get_peers:?}"
        );
        respond(
            &seed,
            from,
            &get_peers,
            Response {
                id: seed_id,
                values: vec![peer],
                token: Some(vec![1, 2, 3, 4]),
                ..Response::default()
            },
        );
        let found = tokio::time::timeout(GUARD, lookup)
            .await
            .expect("lookup ends")
            .expect("task");
        assert_eq!(found, vec![peer]);
        let status = node.status().await.expect("running");
        assert_eq!(status.bootstraps, 2, "{status:?}");
        assert_eq!(status.peers_found, vec![(ih, 1)], "{status:?}");
    });
}

#[test]
fn a_restarted_node_bootstraps_from_its_saved_nodes() {
    init_tracing();
    let testnet = KrpcTestnet::new(6).expect("testnet");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dht-nodes");
    run(|| async {
        let first = KrpcDht::spawn(&DhtConfig {
            nodes_file: Some(path.clone()),
            ..DhtConfig::testnet(&testnet.bootstrap)
        })
        .await
        .expect("spawn");
        assert!(first.bootstrapped().await.expect("running") > 0);
        let saved = first.save_nodes().await.expect("saved");
        assert!(saved > 0);
        let text = std::fs::read_to_string(&path).expect("nodes file");
        assert_eq!(text.lines().count(), saved, "{text}");
        drop(first);
        // No bootstrap list at all: the saved nodes are enough.
        let again = KrpcDht::spawn(&DhtConfig {
            bootstrap: Bootstrap::None,
            nodes_file: Some(path.clone()),
            ..DhtConfig::testnet(&[])
        })
        .await
        .expect("spawn again");
        let nodes = again.bootstrapped().await.expect("running");
        assert!(nodes > 0, "bootstrapped from the saved nodes");
        let status = again.status().await.expect("running");
        assert_eq!(status.bootstraps, 1, "{status:?}");
    });
}
