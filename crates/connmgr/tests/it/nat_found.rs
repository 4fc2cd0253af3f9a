//! Found through relays, over loopback (decision 151): b registers with its relays; a
//! dials an address of b's host where nothing answers, and after the direct handshake's
//! head start a's relays are asked who is there and b is dialed through one. When that
//! relay leaves, the relayed connection goes down as lost, and a redial of it goes
//! through the other relay.

use crate::util;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use replic8_connmgr::core::is_relayed;
use replic8_connmgr::{ConnManagerConfig, DownReason, Identity, NatState, PeerKey, PeerUp, Stats};
use util::{run, Node, GUARD};

/// Every node: on its own loopback host, no dial-back (on loopback everyone is
/// reachable, and a reachable node does not register), no punch (the pair stays
/// relayed), a short head start for the direct dial.
fn on_host(host: u8, relay: bool) -> impl FnOnce(&mut ConnManagerConfig) {
    move |c| {
        c.listen = SocketAddr::from(([127, 0, 0, host], 0));
        c.nat.dial_back = false;
        c.nat.punch = false;
        c.nat.relay.enabled = relay;
        c.nat.relayed_dial_after = Some(Duration::from_millis(200));
        c.handshake_timeout = Duration::from_secs(2);
    }
}

/// Waits until `relay` holds `count` registrations.
async fn registered(relay: &Node, count: usize) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let status = relay.handle.addr().send(NatState).await.expect("status");
        if status.registered_here == count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: {status:?}",
            relay.name
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `node`'s next `PeerUp` of `key`.
async fn up_of(node: &mut Node, key: PeerKey) -> PeerUp {
    node.recv_until("peer up", |e| match e {
        util::Ev::Up(up) if up.key == key => Some(up.clone()),
        _ => None,
    })
    .await
}

/// A UDP port on b's host that answers nothing (held open so that nobody takes it).
fn silent_port(host: u8) -> UdpSocket {
    UdpSocket::bind(SocketAddr::from(([127, 0, 0, host], 0))).expect("bind")
}

#[test]
fn a_dial_that_gets_no_answer_reaches_the_peer_through_a_relay_it_registered_with() {
    run(|| async {
        let r = Node::spawn_with("r", Identity::generate(), on_host(2, true)).await;
        let mut a = Node::spawn_with("a", Identity::generate(), on_host(1, false)).await;
        let b = Node::spawn_with("b", Identity::generate(), on_host(3, false)).await;
        for n in [&a, &b] {
            n.dial(r.addr(), Some(r.key())).await.expect("dials r");
        }
        // Both are not known reachable: both register.
        registered(&r, 2).await;
        // b behind a NAT that maps each destination anew: a found it at another port of
        // its IP, where nothing answers.
        let silent = silent_port(3);
        let found = silent.local_addr().expect("addr");
        let answered = a.dial(found, None).await;
        assert_eq!(answered, Ok(b.key()), "a's dial of {found}");
        let up = up_of(&mut a, b.key()).await;
        assert!(is_relayed(&up.addr), "a reached b at {}", up.addr);
        let stats = r.handle.addr().send(Stats).await.expect("stats");
        assert_eq!(stats.circuits_relayed, 1, "r: {stats:?}");
        // A dial of an address no registered peer's IP matches fails as the direct
        // dial would have (a handshake timeout, or its backoff).
        let nowhere = SocketAddr::from(([127, 0, 0, 9], found.port()));
        assert!(a.dial(nowhere, None).await.is_err());
        for n in [a, b, r] {
            let h = n.close().await;
            assert_eq!(h.live_tasks(), 0, "no task outlives close");
        }
    });
}

#[test]
fn when_its_relay_leaves_a_relayed_connection_is_lost_and_its_redial_takes_another_relay() {
    run(|| async {
        let r1 = Node::spawn_with("r1", Identity::generate(), on_host(2, true)).await;
        let r2 = Node::spawn_with("r2", Identity::generate(), on_host(4, true)).await;
        let mut a = Node::spawn_with("a", Identity::generate(), on_host(1, false)).await;
        let b = Node::spawn_with("b", Identity::generate(), on_host(3, false)).await;
        for n in [&a, &b] {
            for r in [&r1, &r2] {
                n.dial(r.addr(), Some(r.key())).await.expect("dials r");
            }
        }
        registered(&r1, 2).await;
        registered(&r2, 2).await;
        let silent = silent_port(3);
        let found = silent.local_addr().expect("addr");
        assert_eq!(a.dial(found, None).await, Ok(b.key()));
        let bk = b.key();
        let up = up_of(&mut a, bk).await;
        // The relay that carries the circuit leaves.
        let relayed_by = |n: &Node| {
            let addr = n.handle.addr().clone();
            async move { addr.send(Stats).await.expect("stats").circuits_relayed }
        };
        let (gone, stays) = if relayed_by(&r1).await == 1 {
            (r1, r2)
        } else {
            (r2, r1)
        };
        gone.close().await;
        let down = a.peer_down(bk).await;
        assert!(
            matches!(down.reason, DownReason::PathLost(_)),
            "a: {:?}",
            down.reason
        );
        // The redial (the lost connection's virtual address, b's key pinned) goes
        // through the relay left.
        assert_eq!(a.dial(up.addr, Some(bk)).await, Ok(bk));
        let again = up_of(&mut a, bk).await;
        assert!(is_relayed(&again.addr), "a reached b at {}", again.addr);
        assert_ne!(again.addr, up.addr, "a new circuit");
        let stats = stays.handle.addr().send(Stats).await.expect("stats");
        assert_eq!(stats.circuits_relayed, 1, "the other relay: {stats:?}");
        for n in [a, b, stays] {
            let h = n.close().await;
            assert_eq!(h.live_tasks(), 0, "no task outlives close");
        }
    });
}
