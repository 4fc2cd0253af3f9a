//! Slot exhaustion over real loopback sockets: idle throwaway keys cannot keep honest
//! peers or our own dials out (eviction, reserved slots), per-address caps, and QUIC
//! retry once incoming handshakes run high. Every test waits for the event (or the
//! counter) that proves its step.

use crate::util;

use std::sync::atomic::Ordering;
use std::time::Duration;

use replic8_connmgr::{
    ActivityError, ConnStats, Dial, DialError, DownReason, Identity, PeerActivity, Peers,
    RefuseReason, RefusedReason, Stats,
};
use util::*;

async fn stats(node: &Node) -> ConnStats {
    node.handle.addr().send(Stats).await.expect("stats")
}

/// Polls `node`'s counters until `done` holds (a guard, not a pace: each poll is a
/// message round trip to the actor).
async fn stats_until(node: &Node, what: &str, done: impl Fn(&ConnStats) -> bool) -> ConnStats {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let s = stats(node).await;
        if done(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: no {what} within {GUARD:?}; stats {s:?}",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `node` dials `victim`, which refuses it with `text` after the handshake: the dial
/// fails with it when `node` held the connection (the smaller key), or the connection
/// goes down with it right after going up (the greater key).
async fn dial_refused(node: &mut Node, victim: &Node, text: &str) {
    match node.dial(victim.addr(), None).await {
        Err(err) => assert_eq!(err, DialError::RefusedByPeer(text.into()), "{}", node.name),
        Ok(_) => {
            let down = node.peer_down(victim.key()).await;
            assert_eq!(
                down.reason,
                DownReason::RefusedByPeer(text.into()),
                "{}",
                node.name
            );
        }
    }
}

async fn mark(node: &Node, key: replic8_connmgr::PeerKey, active: bool) {
    let reply = node
        .handle
        .addr()
        .send(PeerActivity { key, active })
        .await
        .expect("actor");
    assert_eq!(reply, Ok(()), "{}: mark {}", node.name, key.fmt_short());
}

/// A victim with 8 slots, 2 of them reserved for its dials, and no grace period (the
/// core tests cover the grace period in virtual time). Its two dials, an honest peer
/// marked active and five throwaway keys that say nothing fill the table. A new honest
/// peer still gets in by evicting the throwaway key idle longest, the active peer stays,
/// and the victim's own dial evicts the next one.
#[test]
fn idle_throwaway_keys_are_evicted_for_honest_peers_and_our_dials() {
    run(|| async {
        let mut v = Node::spawn_with("victim", Identity::generate(), |c| {
            c.policy.max_peers = 8;
            c.policy.reserved_outbound = 2;
            c.policy.eviction_grace = Duration::ZERO;
        })
        .await;
        let mut outbound = Vec::new();
        for i in 0..3 {
            outbound.push(Node::spawn(&format!("outbound{i}"), Identity::generate()).await);
        }
        for o in &outbound[..2] {
            assert_eq!(v.dial(o.addr(), None).await, Ok(o.key()), "{}", o.name);
        }
        let honest = Node::spawn("honest", Identity::generate()).await;
        assert_eq!(honest.dial(v.addr(), None).await, Ok(v.key()));
        v.peer_up(honest.key()).await;
        mark(&v, honest.key(), true).await;
        let mut throwaway = Vec::new();
        for i in 0..5 {
            let t = Node::spawn(&format!("throwaway{i}"), Identity::generate()).await;
            assert_eq!(t.dial(v.addr(), None).await, Ok(v.key()), "{}", t.name);
            v.peer_up(t.key()).await;
            throwaway.push(t);
        }
        assert_eq!(v.handle.addr().send(Peers).await.expect("peers").len(), 8);

        // Six inbound peers: the inbound slots are full. A new honest peer gets in.
        let newcomer = Node::spawn("newcomer", Identity::generate()).await;
        assert_eq!(newcomer.dial(v.addr(), None).await, Ok(v.key()));
        v.peer_up(newcomer.key()).await;
        let down = v.peer_down(throwaway[0].key()).await;
        assert_eq!(down.reason, DownReason::Evicted);
        // The evicted side is told why, and takes it as a refusal (no redial).
        let seen = throwaway[0].peer_down(v.key()).await;
        assert_eq!(
            seen.reason,
            DownReason::RefusedByPeer("evicted: peer table full".into())
        );

        // All eight slots are taken: our own dial evicts the next idle one.
        let target = &outbound[2];
        assert_eq!(v.dial(target.addr(), None).await, Ok(target.key()));
        let down = v.peer_down(throwaway[1].key()).await;
        assert_eq!(down.reason, DownReason::Evicted);

        let peers: Vec<_> = v
            .handle
            .addr()
            .send(Peers)
            .await
            .expect("peers")
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(peers.len(), 8, "{peers:?}");
        for kept in [honest.key(), newcomer.key(), target.key()] {
            assert!(peers.contains(&kept), "{} evicted", kept.fmt_short());
        }
        let s = stats(&v).await;
        assert_eq!((s.evictions, s.incoming_refused), (2, 0), "{s:?}");
        // No other peer was evicted or refused.
        let others: Vec<_> = v
            .pending_events()
            .into_iter()
            .filter(|e| !matches!(e, Ev::Up(_)))
            .collect();
        assert!(others.is_empty(), "{others:?}");
        // A key that is not connected cannot be marked.
        let gone = throwaway[0].key();
        assert_eq!(
            v.handle
                .addr()
                .send(PeerActivity {
                    key: gone,
                    active: true
                })
                .await
                .expect("actor"),
            Err(ActivityError::NotConnected(gone))
        );
        for node in outbound.into_iter().chain(throwaway) {
            node.close().await;
        }
        honest.close().await;
        newcomer.close().await;
        v.close().await;
    });
}

/// Inbound peers active or in their grace period are never evicted: a newcomer is
/// refused as before, and our dial past the reserved slots too.
#[test]
fn a_full_table_of_peers_in_their_grace_period_refuses_newcomers() {
    run(|| async {
        let mut v = Node::spawn_with("victim", Identity::generate(), |c| {
            c.policy.max_peers = 2;
            c.policy.reserved_outbound = 1;
        })
        .await;
        let a = Node::spawn("a", Identity::generate()).await;
        assert_eq!(a.dial(v.addr(), None).await, Ok(v.key()));
        v.peer_up(a.key()).await;
        let mut b = Node::spawn("b", Identity::generate()).await;
        dial_refused(&mut b, &v, "too many peers").await;
        let refused = v.refused().await;
        assert_eq!(
            refused.reason,
            RefusedReason::Policy(RefuseReason::TooManyInbound(1))
        );
        // The reserved slot is ours.
        assert_eq!(v.dial(b.addr(), None).await, Ok(b.key()));
        let c = Node::spawn("c", Identity::generate()).await;
        assert_eq!(
            v.dial(c.addr(), None).await,
            Err(DialError::Refused(RefuseReason::TooManyPeers(2)))
        );
        assert_eq!(stats(&v).await.evictions, 0);
        for node in [a, b, c] {
            node.close().await;
        }
        v.close().await;
    });
}

/// Every node here is on 127.0.0.1: with a cap of two peers per address the third
/// inbound one is refused with its reason and counted; our own dial is not capped.
#[test]
fn inbound_peers_from_one_address_are_capped() {
    run(|| async {
        let mut v = Node::spawn_with("victim", Identity::generate(), |c| {
            c.policy.max_peers_per_ip = 2;
        })
        .await;
        let mut nodes = Vec::new();
        for i in 0..2 {
            let n = Node::spawn(&format!("n{i}"), Identity::generate()).await;
            assert_eq!(n.dial(v.addr(), None).await, Ok(v.key()));
            v.peer_up(n.key()).await;
            nodes.push(n);
        }
        let mut third = Node::spawn("third", Identity::generate()).await;
        dial_refused(&mut third, &v, "too many peers from address").await;
        let refused = v.refused().await;
        assert_eq!(
            refused.reason,
            RefusedReason::Policy(RefuseReason::TooManyPeersFromIp(2))
        );
        let s = stats(&v).await;
        assert_eq!((s.refused_per_ip, s.incoming_refused), (1, 1), "{s:?}");
        // Our dial to a third node on the same address is not an inbound peer.
        assert_eq!(v.dial(third.addr(), None).await, Ok(third.key()));
        nodes.push(third);
        for node in nodes {
            node.close().await;
        }
        v.close().await;
    });
}

/// Stalled handshakes (a relay passes only the first datagram of each) would hold both
/// pending accepts of the victim for the handshake timeout. With `retry_above: 1` only
/// the first is held; the next ones get a stateless retry, their answer never comes,
/// and nothing is kept for them. An honest peer is retried too, comes back validated
/// and gets in.
#[test]
fn stalled_initials_are_retried_and_an_honest_peer_still_gets_in() {
    run(|| async {
        let mut v = Node::spawn_with("victim", Identity::generate(), |c| {
            c.policy.max_pending_accepts = 2;
            c.policy.retry_above = 1;
        })
        .await;
        let staller = Node::spawn("staller", Identity::generate()).await;
        let mut relays = Vec::new();
        for i in 0..3 {
            let relay = Relay::start(v.addr(), true).await;
            // The dial never answers (its handshake stalls): not awaited.
            staller.handle.addr().do_send(Dial {
                addr: relay.addr,
                expected_key: None,
            });
            let deadline = tokio::time::Instant::now() + GUARD;
            while relay.forwarded.load(Ordering::SeqCst) == 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "relay {i} forwarded nothing"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            relays.push(relay);
        }
        stats_until(&v, "two retries for the stalled handshakes", |s| {
            s.retries_sent == 2
        })
        .await;
        let honest = Node::spawn("honest", Identity::generate()).await;
        assert_eq!(honest.dial(v.addr(), None).await, Ok(v.key()));
        v.peer_up(honest.key()).await;
        let s = stats(&v).await;
        assert_eq!((s.retries_sent, s.incoming_refused), (3, 0), "{s:?}");
        drop(relays);
        // Each close drains a connection whose peer never answers (3 PTOs): at once.
        tokio::join!(staller.close(), honest.close(), v.close());
    });
}

/// Below the threshold nobody pays the retry's round trip.
#[test]
fn no_retry_below_the_threshold() {
    run(|| async {
        let mut v = Node::spawn("victim", Identity::generate()).await;
        let a = Node::spawn("a", Identity::generate()).await;
        assert_eq!(a.dial(v.addr(), None).await, Ok(v.key()));
        v.peer_up(a.key()).await;
        assert_eq!(stats(&v).await.retries_sent, 0);
        a.close().await;
        v.close().await;
    });
}
