//! The DHT on the QUIC socket: two nodes on a private DHT, one announcing, the other
//! finding it at its QUIC port (the announce carries no port: the DHT node stored the
//! one our query came from) and connecting.
#![allow(clippy::unwrap_used, missing_docs)]

use replic8_node::{JoinOptions, NodeEvent, Topic};
use replic8_tests::*;

#[tokio::test]
async fn a_node_found_on_the_dht_is_dialed_at_the_port_its_dht_shares_with_quic() {
    init_tracing();
    let net = testnet(5);
    let a = loopback_node(&net).spawn().await.unwrap();
    // b keeps the DHT on a socket of its own (the off switch).
    let b = loopback_node(&net)
        .share_socket(false)
        .spawn()
        .await
        .unwrap();
    let a_dht = a.dht_status().await.unwrap().expect("a runs a dht node");
    assert_eq!(
        a_dht.addrs,
        vec![a.local_addr()],
        "a's DHT is on its QUIC socket"
    );
    let b_dht = b.dht_status().await.unwrap().expect("b runs a dht node");
    assert_eq!(b_dht.addrs.len(), 1);
    assert_ne!(
        b_dht.addrs[0],
        b.local_addr(),
        "b's DHT has a socket of its own"
    );

    let mut b_events = b.subscribe();
    let topic = Topic([16; 32]);
    a.join(
        topic,
        JoinOptions {
            announce: true,
            lookup: false,
        },
    )
    .await
    .unwrap();
    b.join(
        topic,
        JoinOptions {
            announce: false,
            lookup: true,
        },
    )
    .await
    .unwrap();
    let a_key = a.key();
    let addr = recv_until(
        &mut b_events,
        "b: PeerUp of a, found on the DHT",
        |e| match e {
            NodeEvent::PeerUp { key, addr, .. } if *key == a_key => Some(*addr),
            _ => None,
        },
    )
    .await;
    assert_eq!(
        addr,
        a.local_addr(),
        "b dialed the address the DHT gave, a's QUIC port"
    );
    let a_dht = a.dht_status().await.unwrap().expect("a runs a dht node");
    assert!(
        a_dht.stats.queries_out > 0 && a_dht.send_errors == 0,
        "{a_dht:?}"
    );

    a.close().await;
    b.close().await;
    assert_eq!((a.live_tasks(), b.live_tasks()), (0, 0));
}
