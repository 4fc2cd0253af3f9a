//! A relayed connection over loopback: a and b reach each other only through r (b's
//! firewall refuses a's direct address), and a stream's bytes flow end to end while r
//! forwards them without a key to read them.

use crate::util;

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
            c.nat.punch = false;
            // b accepts a only through a relay: as if a NAT dropped a's direct packets.
            c.policy.firewall = Some(Arc::new(move |key, addr| {
                *key != a_key || is_relayed(&addr)
            }));
        })
        .await;
        let mut a = Node::spawn_with("a", a_id, |c| {
            on_host(1)(c);
            c.nat.punch = false;
        })
        .await;
        // a's direct dial is refused by b (it may go up on a for a moment first, when a
        // has the greater key and b's verdict is still on its way).
        let _ = a.dial(b.addr(), Some(b.key())).await;
        let refused = b.refused().await;
        assert_eq!(refused.key, Some(a.key()), "b: {refused:?}");
        let peers = a.handle.addr().send(Peers).await.expect("peers");
        if peers.iter().any(|p| p.key == b.key()) {
            a.peer_down(b.key()).await;
        }
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
        let (ak, bk) = (a.key(), b.key());
        let relayed_up = |other: replic8_connmgr::PeerKey| {
            move |e: &util::Ev| match e {
                util::Ev::Up(up) if up.key == other && is_relayed(&up.addr) => Some(up.clone()),
                _ => None,
            }
        };
        let a_up = a.recv_until("relayed PeerUp", relayed_up(bk)).await;
        let b_up = b.recv_until("relayed PeerUp", relayed_up(ak)).await;
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

#[test]
fn a_punch_over_a_relayed_connection_moves_both_sides_to_a_direct_one() {
    run(|| async {
        let mut r = Node::spawn_with("r", Identity::generate(), |c| {
            on_host(2)(c);
            c.nat.relay.enabled = true;
        })
        .await;
        let mut b = Node::spawn_with("b", Identity::generate(), on_host(3)).await;
        let mut a = Node::spawn_with("a", Identity::generate(), on_host(1)).await;
        a.dial(r.addr(), Some(r.key())).await.expect("a dials r");
        b.dial(r.addr(), Some(r.key())).await.expect("b dials r");
        r.peer_up(a.key()).await;
        r.peer_up(b.key()).await;
        // Both know their public address (r's report) before the relayed connection.
        for n in [&a, &b] {
            let deadline = tokio::time::Instant::now() + GUARD;
            while n
                .handle
                .addr()
                .send(replic8_connmgr::NatState)
                .await
                .expect("status")
                .public_addrs
                .is_empty()
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{}: no public address",
                    n.name
                );
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        let relayed = a
            .handle
            .addr()
            .send(DialRelayed {
                relay: r.key(),
                key: b.key(),
            })
            .await
            .expect("actor alive");
        assert_eq!(relayed, Ok(b.key()));
        // Whichever side dialed the relayed connection, both end up direct.
        let (ak, bk) = (a.key(), b.key());
        for (n, other) in [(&mut a, bk), (&mut b, ak)] {
            let what = format!("a direct PeerUp for {}", other.fmt_short());
            n.recv_until(&what, |e| match e {
                util::Ev::Up(up) if up.key == other && !is_relayed(&up.addr) => Some(()),
                _ => None,
            })
            .await;
        }
        for (n, other) in [(&a, b.key()), (&b, a.key())] {
            let peers = n.handle.addr().send(Peers).await.expect("peers");
            let p = peers.iter().find(|p| p.key == other).expect("listed");
            assert!(!p.relayed, "{}: {p:?}", n.name);
        }
        for n in [a, b, r] {
            let h = n.close().await;
            assert_eq!(h.live_tasks(), 0, "no task outlives close");
        }
    });
}
