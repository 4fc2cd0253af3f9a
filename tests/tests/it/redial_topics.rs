//! A connection redialed after a loss belongs to the topics the lost one belonged to:
//! leaving the last of them closes it, and cancels a redial still pending. Two nodes on
//! loopback with a private Mainline DHT; the looking-up node's later lookup rounds are
//! 10 minutes away, so its redial is the only thing that dials again in the test.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use replic8_connmgr::{Initiator, TransportTuning};
use replic8_discovery::Timing;
use replic8_node::{JoinOptions, NodeEvent, NodeHandle, Topic};
use replic8_tests::fault::UdpRelay;
use replic8_tests::*;
use tokio::sync::broadcast;

/// One lookup round at the join, the next ones 10 minutes later.
fn one_round() -> Timing {
    Timing {
        join_lookup_delays: Vec::new(),
        lookup_interval: (Duration::from_secs(600), Duration::from_secs(600)),
        ..Timing::default()
    }
}

const LOOKUP_ONLY: JoinOptions = JoinOptions {
    announce: false,
    lookup: true,
};

const ANNOUNCE_ONLY: JoinOptions = JoinOptions {
    announce: true,
    lookup: false,
};

async fn wait_up(
    events: &mut broadcast::Receiver<NodeEvent>,
    what: &str,
    peer: &NodeHandle,
    initiator: Initiator,
) {
    let key = peer.key();
    recv_until(events, what, |e| {
        matches!(e, NodeEvent::PeerUp { key: k, initiator: i, .. } if *k == key && *i == initiator)
            .then_some(())
    })
    .await
}

/// Waits (within [`GUARD`]) until `node` redials `peer`, polling its answer.
async fn wait_redialing(node: &NodeHandle, peer: &NodeHandle, what: &str) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let redialing = node.redialing().await.unwrap();
        if redialing == vec![peer.key()] {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still redialing {redialing:?} after {GUARD:?}"
        );
        // The poll's pace, not the check.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_down(events: &mut broadcast::Receiver<NodeEvent>, what: &str, peer: &NodeHandle) {
    let key = peer.key();
    recv_until(events, what, |e| {
        matches!(e, NodeEvent::PeerDown { key: k, .. } if *k == key).then_some(())
    })
    .await
}

#[tokio::test]
async fn leaving_the_topic_of_a_redialed_connection_closes_it() {
    init_tracing();
    let net = testnet(5);
    let a = loopback_node(&net)
        .discovery_timing(one_round())
        .spawn()
        .await
        .unwrap();
    let b = loopback_node(&net).spawn().await.unwrap();
    let (mut a_events, mut b_events) = (a.subscribe(), b.subscribe());
    let t = Topic([21; 32]);
    b.join(t, ANNOUNCE_ONLY).await.unwrap();
    // a finds b through t (the DHT's first round may miss a fresh record, so b's address
    // is given too) and dials it; once flushed, no dial of that round is still running.
    a.join(t, LOOKUP_ONLY).await.unwrap();
    a.lookup_at(t, b.local_addr()).await.unwrap();
    wait_up(
        &mut a_events,
        "a: b up (dialed for t)",
        &b,
        Initiator::Local,
    )
    .await;
    a.flushed(t).await.unwrap();
    wait_up(&mut b_events, "b: a up", &a, Initiator::Remote).await;

    // b's connection manager closes it barely: a cut, which a redials at once.
    b.disconnect(a.key()).await.unwrap();
    wait_down(&mut a_events, "a: b down after b's close", &b).await;
    wait_up(&mut a_events, "a: b redialed", &b, Initiator::Local).await;

    // The redialed connection was only there for t.
    a.leave(t).await.unwrap();
    wait_down(&mut a_events, "a: b down after leaving t", &b).await;
    assert!(
        !a.peers().await.unwrap().iter().any(|p| p.key == b.key()),
        "a still holds a connection to b"
    );
    assert!(a.redialing().await.unwrap().is_empty(), "a redials b");
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn leaving_the_topic_of_a_peer_being_redialed_cancels_the_redial() {
    init_tracing();
    let net = testnet(5);
    // A blackholed connection is noticed in about a second.
    let tuning = TransportTuning {
        keep_alive: Duration::from_millis(250),
        idle_timeout: Duration::from_secs(1),
        ..TransportTuning::default()
    };
    let a = loopback_node(&net)
        .discovery_timing(one_round())
        .transport(tuning.clone())
        .spawn()
        .await
        .unwrap();
    let b = loopback_node(&net).transport(tuning).spawn().await.unwrap();
    let relay = UdpRelay::start(b.local_addr(), None).await.unwrap();
    let mut a_events = a.subscribe();
    // b joins nothing: a reaches it for t only through the relay's address.
    let t = Topic([22; 32]);
    a.join(t, LOOKUP_ONLY).await.unwrap();
    a.lookup_at(t, relay.addr()).await.unwrap();
    wait_up(
        &mut a_events,
        "a: b up (dialed for t)",
        &b,
        Initiator::Local,
    )
    .await;
    a.flushed(t).await.unwrap();

    // The link goes dark: the connection times out and a keeps trying to redial b
    // through the relay, which drops everything.
    relay.set_forwarding(false);
    wait_down(&mut a_events, "a: b down after the blackhole", &b).await;
    // The lifecycle decides on the redial when it has both the `PeerDown` and the end of
    // the session (our session may time out first and close the connection itself),
    // whichever comes last: wait for that decision.
    wait_redialing(
        &a,
        &b,
        "a lost connection dialed for a joined topic is redialed",
    )
    .await;

    a.leave(t).await.unwrap();
    assert!(
        a.redialing().await.unwrap().is_empty(),
        "leaving the only topic that needed b did not cancel its redial"
    );
    assert!(relay.dropped() > 0, "the blackhole dropped nothing");
    a.close().await;
    b.close().await;
}
