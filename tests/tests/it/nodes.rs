//! Several nodes on loopback with a private Mainline DHT: discovery, connections,
//! sessions with a custom store, restarts and clean shutdown.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use replic8::keys::FeedKey;
use replic8_node::{JoinOptions, NodeEvent, NodeHandle, Topic};
use replic8_tests::*;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn topic(n: u8) -> Topic {
    Topic([n; 32])
}

async fn add_counter_store(node: &NodeHandle, values: &[(FeedKey, u64)]) -> Counters {
    let counters: Counters = Arc::new(Mutex::new(
        values.iter().copied().collect::<HashMap<_, _>>(),
    ));
    let shared = counters.clone();
    node.add_store(vec![("counters".into(), None)], move |ctx| CounterStore {
        values: shared,
        sessions: ctx.sessions,
    })
    .await
    .unwrap();
    counters
}

#[tokio::test]
async fn two_nodes_discover_each_other_and_a_custom_store_replicates() {
    init_tracing();
    let net = testnet(5);
    let a = loopback_node(&net)
        .metrics("127.0.0.1:0".parse().unwrap())
        .spawn()
        .await
        .unwrap();
    let b = loopback_node(&net).spawn().await.unwrap();
    let feed = FeedKey([42; 32]);
    add_counter_store(&a, &[(feed, 17)]).await;
    let b_values = add_counter_store(&b, &[]).await;
    let (mut a_events, mut b_events) = (a.subscribe(), b.subscribe());

    let t = topic(1);
    a.join(t, JoinOptions::default()).await.unwrap();
    b.join(t, JoinOptions::default()).await.unwrap();
    assert!(a.joined(t).await.unwrap() && b.joined(t).await.unwrap());

    wait_peer_up(&mut a_events, "a", &b).await;
    wait_peer_up(&mut b_events, "b", &a).await;
    let a_key = a.key();
    // b is offered a's counter with its headers, accepts it, and ends in sync with a.
    let offered = recv_until(&mut b_events, "b: offer of the counter", |e| match e {
        NodeEvent::Offered {
            peer,
            namespace,
            feeds,
        } if *peer == a_key => Some((namespace.clone(), feeds.clone())),
        _ => None,
    })
    .await;
    assert_eq!(
        offered,
        ("counters".to_string(), vec![(feed, counter_headers())])
    );
    let length = recv_until(&mut b_events, "b: counter synced with a", |e| match e {
        NodeEvent::FeedSynced {
            peer,
            feed: f,
            length,
        } if *peer == a_key && *f == feed => Some(*length),
        _ => None,
    })
    .await;
    assert_eq!(length, 17);
    assert_eq!(b_values.lock().unwrap().get(&feed), Some(&17));

    // Both list each other; flushed resolves once every found peer was tried.
    assert!(a.peers().await.unwrap().iter().any(|p| p.key == b.key()));
    assert!(b.peers().await.unwrap().iter().any(|p| p.key == a.key()));
    b.flushed(t).await.unwrap();

    // The counters, as a scraper reads them (a counts the session when it reports it
    // up, which nothing orders before b's sync).
    let b_key = b.key();
    recv_until(&mut a_events, "a: session with b up", |e| {
        matches!(e, NodeEvent::SessionUp { peer } if *peer == b_key).then_some(())
    })
    .await;
    let metrics = http_get(a.metrics_addr().unwrap(), "/metrics").await;
    for line in [
        "replic8_peers 1\n",
        "replic8_topics 1\n",
        "replic8_sessions 1\n",
    ] {
        assert!(metrics.contains(line), "{line:?} missing in:\n{metrics}");
    }

    a.close().await;
    b.close().await;
    assert_eq!((a.live_tasks(), b.live_tasks()), (0, 0));
}

#[tokio::test]
async fn a_restarted_node_resumes_its_joins_and_identity() {
    init_tracing();
    let net = testnet(5);
    let dir = tempfile::tempdir().unwrap();
    let on_disk = || loopback_node(&net).data_dir(dir.path());
    let t = topic(2);

    let first = on_disk().spawn().await.unwrap();
    let key = first.key();
    first.join(t, JoinOptions::default()).await.unwrap();
    first.close().await;

    // b announces the topic; the restarted node looks it up without being asked.
    let b = loopback_node(&net).spawn().await.unwrap();
    let mut b_events = b.subscribe();
    b.join(
        t,
        JoinOptions {
            announce: true,
            lookup: false,
        },
    )
    .await
    .unwrap();

    let again = on_disk().spawn().await.unwrap();
    assert_eq!(
        again.key(),
        key,
        "identity reloaded from the data directory"
    );
    assert!(again.joined(t).await.unwrap(), "join resumed");
    assert_eq!(again.persisted().await.joins.len(), 1);
    wait_peer_up(&mut b_events, "b: PeerUp from the restarted node", &again).await;

    again.close().await;
    b.close().await;
}

#[tokio::test]
async fn leave_is_persisted_and_close_is_clean() {
    init_tracing();
    let net = testnet(5);
    let dir = tempfile::tempdir().unwrap();
    let t = topic(3);
    let a = loopback_node(&net)
        .data_dir(dir.path())
        .spawn()
        .await
        .unwrap();
    let b = loopback_node(&net).spawn().await.unwrap();
    let (mut a_events, mut b_events) = (a.subscribe(), b.subscribe());
    // a only announces, so b dials it: leaving does not close a connection the peer made.
    let announce_only = JoinOptions {
        announce: true,
        lookup: false,
    };
    a.join(t, announce_only).await.unwrap();
    b.join(t, JoinOptions::default()).await.unwrap();
    wait_peer_up(&mut a_events, "a", &b).await;
    recv_until(&mut b_events, "b: session with a", |e| {
        matches!(e, NodeEvent::SessionUp { peer } if *peer == a.key()).then_some(())
    })
    .await;

    a.leave(t).await.unwrap();
    assert!(!a.joined(t).await.unwrap());
    assert!(a.persisted().await.joins.is_empty());
    assert_eq!(a.counters().topics.get(), 0);
    assert!(a.peers().await.unwrap().iter().any(|p| p.key == b.key()));

    // Closing a tells b why its session ended, then closes the connection.
    let a_key = a.key();
    a.close().await;
    assert_eq!(
        a.live_tasks(),
        0,
        "connection manager tasks left after close"
    );
    // Both arrive, in either order: they come from the session and connection layers.
    let (mut reason, mut down) = (None, false);
    while reason.is_none() || !down {
        recv_until(
            &mut b_events,
            "b: a's session ends and a goes down",
            |e| match e {
                NodeEvent::SessionEnded { peer, reason: r } if *peer == a_key => {
                    reason = Some(r.clone());
                    Some(())
                }
                NodeEvent::PeerDown { key, .. } if *key == a_key => {
                    down = true;
                    Some(())
                }
                _ => None,
            },
        )
        .await;
    }
    // The session's close says "node closing"; on a machine so loaded that the sessions
    // did not end within close's grace, the connection manager's close says "shutdown".
    let reason = reason.unwrap();
    assert!(
        reason.contains("node closing") || reason.contains("shutdown"),
        "b is told why: {reason}"
    );
    // A closed node answers with an error, and closing again does nothing.
    assert!(a.join(t, JoinOptions::default()).await.is_err());
    a.close().await;

    // The leave survived: a restart does not join the topic again.
    let again = loopback_node(&net)
        .data_dir(dir.path())
        .spawn()
        .await
        .unwrap();
    assert!(!again.joined(t).await.unwrap());
    again.close().await;
    b.close().await;
    assert_eq!(b.live_tasks(), 0);
}

#[tokio::test]
async fn leaving_the_last_topic_that_found_a_peer_closes_the_connection_we_dialed() {
    init_tracing();
    let net = testnet(5);
    let a = loopback_node(&net).spawn().await.unwrap();
    let b = loopback_node(&net).spawn().await.unwrap();
    let (mut a_events, mut b_events) = (a.subscribe(), b.subscribe());
    let (t1, t2) = (topic(4), topic(5));
    let announce_only = JoinOptions {
        announce: true,
        lookup: false,
    };
    b.join(t1, announce_only).await.unwrap();
    b.join(t2, announce_only).await.unwrap();
    // a looks both up and finds b through each (the DHT's first round may miss a fresh
    // record, so b's address is also given for both), and dials it: one connection.
    a.join(t1, JoinOptions::default()).await.unwrap();
    a.join(t2, JoinOptions::default()).await.unwrap();
    a.lookup_at(t1, b.local_addr()).await.unwrap();
    a.lookup_at(t2, b.local_addr()).await.unwrap();
    wait_peer_up(&mut a_events, "a", &b).await;
    a.flushed(t1).await.unwrap();
    a.flushed(t2).await.unwrap();

    // t2 still needs the connection.
    a.leave(t1).await.unwrap();
    assert!(
        a.peers().await.unwrap().iter().any(|p| p.key == b.key()),
        "the connection is still needed by t2"
    );
    // Nothing needs it now: a closes it, and both sides see it go.
    a.leave(t2).await.unwrap();
    let (a_key, b_key) = (a.key(), b.key());
    recv_until(&mut a_events, "a: PeerDown of b after leaving", |e| {
        matches!(e, NodeEvent::PeerDown { key, .. } if *key == b_key).then_some(())
    })
    .await;
    recv_until(&mut b_events, "b: PeerDown of a after a left", |e| {
        matches!(e, NodeEvent::PeerDown { key, .. } if *key == a_key).then_some(())
    })
    .await;
    // b's topics are untouched: it still announces them.
    assert!(b.joined(t1).await.unwrap() && b.joined(t2).await.unwrap());
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn bad_setups_fail_to_spawn_with_one_clear_line() {
    use std::os::unix::fs::PermissionsExt;
    init_tracing();
    let net = testnet(3);
    // The QUIC address is taken.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = loopback_node(&net)
        .listen(taken.local_addr().unwrap())
        .spawn()
        .await
        .unwrap_err();
    assert!(
        matches!(err, replic8_node::SpawnError::Connections(_)),
        "{err}"
    );
    // An identity key other users can read.
    let dir = tempfile::tempdir().unwrap();
    let node = loopback_node(&net)
        .data_dir(dir.path())
        .spawn()
        .await
        .unwrap();
    node.close().await;
    let key_file = dir.path().join(replic8_node::persist::IDENTITY_FILE);
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = loopback_node(&net)
        .data_dir(dir.path())
        .spawn()
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("chmod 600") && !msg.contains('\n'), "{msg}");
}
