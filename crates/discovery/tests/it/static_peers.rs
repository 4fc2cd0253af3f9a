//! Static peers from config and `LookupAt`, with no DHT and no LAN.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use replic8_discovery::*;

#[test]
fn static_peers_and_lookup_at_are_reported_every_round() {
    let x: SocketAddr = "192.0.2.10:7000".parse().expect("addr");
    let y: SocketAddr = "[2001:db8::1]:7001".parse().expect("addr");
    run(|| async move {
        let config = DiscoveryConfig {
            quic_port: 46001,
            dht: None,
            lan: None,
            static_peers: vec![x],
            timing: fast_timing(),
        };
        let d = DiscoveryActor::spawn(config).await.expect("starts");
        let mut found = subscribe("d", &d, false).await;
        let t = topic();
        assert_eq!(
            d.send(LookupAt { topic: t, addr: y }).await.expect("alive"),
            Err(TopicError::NotJoined)
        );
        let report = d
            .send(Join {
                topic: t,
                announce: false,
                lookup: true,
            })
            .await
            .expect("alive")
            .expect("joined");
        assert_eq!(report.peers_found, 1);
        let f = found
            .recv_until(Duration::from_secs(5), |f| f.topic == t)
            .await;
        assert_eq!((f.addr, f.source), (x, PeerSource::Static));
        d.send(LookupAt { topic: t, addr: y })
            .await
            .expect("alive")
            .expect("joined");
        found
            .recv_until(Duration::from_secs(5), |f| {
                f.addr == y && f.source == PeerSource::Static
            })
            .await;
        // Both come back in the next rounds (the timing refreshes every ~0.2 s).
        found
            .recv_until(Duration::from_secs(5), |f| f.addr == x)
            .await;
        found
            .recv_until(Duration::from_secs(5), |f| f.addr == y)
            .await;
        assert_eq!(
            d.send(Join {
                topic: t,
                announce: false,
                lookup: false
            })
            .await
            .expect("alive"),
            Err(JoinError::NothingToDo)
        );
        d.send(Close).await.expect("closed");
        assert!(
            d.send(Joined { topic: t }).await.is_err(),
            "actor stopped after Close"
        );
    });
}
