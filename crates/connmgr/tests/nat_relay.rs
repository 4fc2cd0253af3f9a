//! A relayed connection over loopback: a and b reach each other only through r (b's
//! firewall refuses a's direct address), and a stream's bytes flow end to end while r
//! forwards them without a key to read them.

mod util;

use std::net::SocketAddr;
use std::sync::Arc;

use replic8_connmgr::core::is_relayed;
use replic8_connmgr::{ConnManagerConfig, DialRelayed, Identity, Peers, Stats};
use util::{recv_uni, run, send_uni, Node, GUARD};

fn on_host(host: u8) -> impl FnOnce(&mut ConnManagerConfig) {
    move |c| c.listen = SocketAddr::from(([127, 0, 0, host], 0))
}

#[test]
fn a_and_b_connect_through_a_relay_and_a_stream_flows_end_to_end() {
    run(|| async {
        let a_id = Identity::generate();
        let a_key = a_id.key();
        let mut r = Node::spawn_with("r", Identity::generate(), |c| {
            on_host(2)(c);
            c.nat.relay.enabled = true;
        })
        .await;
        let mut b = Node::spawn_with("b", Identity::generate(), |c| {
            on_host(3)(c);
            // b accepts a only through a relay: as if a NAT dropped a's direct packets.
            c.policy.firewall = Some(Arc::new(move |key, addr| {
                *key != a_key || is_relayed(&addr)
            }));
        })
        .await;
        let mut a = Node::spawn_with("a", a_id, on_host(1)).await;
        assert!(
            a.dial(b.addr(), Some(b.key())).await.is_err(),
            "a cannot reach b directly"
        );
        a.dial(r.addr(), Some(r.key())).await.expect("a dials r");
        b.dial(r.addr(), Some(r.key())).await.expect("b dials r");
        r.peer_up(a.key()).await;
        r.peer_up(b.key()).await;
        let relayed = tokio::time::timeout(
            GUARD,
            a.handle.addr().send(DialRelayed {
                relay: r.key(),
                key: b.key(),
            }),
        )
        .await
        .expect("relayed dial answers")
        .expect("actor alive");
        assert_eq!(relayed, Ok(b.key()), "a: relayed dial");
        let a_up = a.peer_up(b.key()).await;
        let b_up = b.peer_up(a.key()).await;
        assert!(is_relayed(&a_up.addr), "a sees b at {}", a_up.addr);
        assert!(is_relayed(&b_up.addr), "b sees a at {}", b_up.addr);
        // 256 KiB of a recognisable pattern, a to b.
        let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let (sent, got) = tokio::join!(
            send_uni(&a_up.connection, &data),
            recv_uni(&b_up.connection)
        );
        sent.expect("a sends");
        assert_eq!(got.expect("b receives"), data);
        let peers = a.handle.addr().send(Peers).await.expect("peers");
        let to_b = peers.iter().find(|p| p.key == b.key()).expect("b listed");
        assert!(to_b.relayed, "a: {to_b:?}");
        let to_r = peers.iter().find(|p| p.key == r.key()).expect("r listed");
        assert!(!to_r.relayed, "a: {to_r:?}");
        let stats = r.handle.addr().send(Stats).await.expect("stats");
        assert_eq!(stats.circuits_relayed, 1, "r: {stats:?}");
        assert!(
            stats.relayed_bytes >= data.len() as u64,
            "r forwarded the stream's packets: {stats:?}"
        );
        // r's own peers are a and b only: the relayed connection is not r's.
        let r_peers = r.handle.addr().send(Peers).await.expect("peers");
        assert_eq!(r_peers.len(), 2, "r: {r_peers:?}");
        for n in [a, b, r] {
            let h = n.close().await;
            assert_eq!(h.live_tasks(), 0, "no task outlives close");
        }
    });
}
