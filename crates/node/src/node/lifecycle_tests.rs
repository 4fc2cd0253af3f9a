//! Loopback tests of the peer lifecycle (`crate::lifecycle`) inside a whole node: a
//! peer's close is redialed and our own `disconnect` is not; a peer our session timed
//! out is redialed without a ban. The rules themselves are tested over virtual time in
//! `lifecycle/tests.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use replic8_connmgr::{Initiator, PeerDown, PeerUp};

use crate::lifecycle::RedialsStarted;

async fn loopback_node() -> crate::NodeHandle {
    crate::Node::builder()
        .in_memory()
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .dht(false)
        .lan(false)
        .spawn()
        .await
        .unwrap()
}

/// Waits for the first event of `events` that `want` accepts (a guard of 30 s).
async fn wait_for(
    events: &mut tokio::sync::broadcast::Receiver<crate::NodeEvent>,
    what: &str,
    want: impl Fn(&crate::NodeEvent) -> bool,
) {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) if want(&event) => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("{what}: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 30 s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_closed_our_connection_is_redialed_one_we_disconnected_is_not() {
    let (a, b) = (loopback_node().await, loopback_node().await);
    let mut events = a.subscribe();
    let bk = b.key();
    let up = |e: &crate::NodeEvent| matches!(e, crate::NodeEvent::PeerUp { key, initiator: Initiator::Local, .. } if *key == bk);
    let down =
        |e: &crate::NodeEvent| matches!(e, crate::NodeEvent::PeerDown { key, .. } if *key == bk);
    let redials = || a.s().lifecycle.send(RedialsStarted);
    let mut b_events = b.subscribe();
    let ak = a.key();
    a.connect(b.local_addr(), Some(bk)).await.unwrap();
    wait_for(&mut events, "a: b up", up).await;
    // b settles the connection on its own time: close it once b has it.
    wait_for(
        &mut b_events,
        "b: a up",
        |e| matches!(e, crate::NodeEvent::PeerUp { key, .. } if *key == ak),
    )
    .await;

    // The peer's bare close (`CLOSE_REQUESTED`): a cut, redialed by a.
    b.disconnect(ak).await.unwrap();
    wait_for(&mut events, "a: b down after b's close", down).await;
    wait_for(&mut events, "a: b redialed", up).await;
    assert_eq!(redials().await.unwrap(), 1);

    // Our own `disconnect`: not redialed. The lifecycle actor decides while it handles
    // the `PeerDown` whose event we saw, so it has decided by the time it answers.
    a.disconnect(bk).await.unwrap();
    wait_for(&mut events, "a: b down after our disconnect", down).await;
    assert_eq!(
        redials().await.unwrap(),
        1,
        "a disconnected peer was redialed"
    );
    assert!(a.peers().await.unwrap().is_empty());
    a.close().await;
    b.close().await;
}

/// Hands a bare connection manager's `PeerUp`s to the test.
struct UpSink(tokio::sync::mpsc::UnboundedSender<PeerUp>);

impl Actor for UpSink {
    type Context = Context<Self>;
}

impl Handler<PeerUp> for UpSink {
    type Result = ();

    fn handle(&mut self, up: PeerUp, _: &mut Context<Self>) {
        let _ = self.0.send(up);
    }
}

impl Handler<PeerDown> for UpSink {
    type Result = ();

    fn handle(&mut self, _: PeerDown, _: &mut Context<Self>) {}
}

#[test]
fn a_peer_our_session_timed_out_is_redialed_without_a_ban() {
    actix::System::new().block_on(async {
        // A slow peer: a bare connection manager speaking our ALPN that answers
        // each control stream with a frame that never completes.
        let slow = replic8_connmgr::ConnManager::spawn(
            replic8_connmgr::ConnManagerConfig::new(replic8_connmgr::Identity::generate())
                .with_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
                .with_alpn(vec![replic8::message::ALPN.to_vec()]),
        )
        .unwrap();
        let (tx, mut ups) = tokio::sync::mpsc::unbounded_channel();
        let sink = UpSink(tx).start();
        slow.addr()
            .send(replic8_connmgr::Subscribe {
                peer_up: sink.clone().recipient(),
                peer_down: sink.recipient(),
            })
            .await
            .unwrap();
        let a = crate::Node::builder()
            .in_memory()
            .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .dht(false)
            .lan(false)
            .limits(crate::config::LimitsSection {
                stall_timeout_secs: 1,
                ..Default::default()
            })
            .spawn()
            .await
            .unwrap();
        let mut events = a.subscribe();
        let key = slow.key();
        a.connect(slow.local_addr(), Some(key)).await.unwrap();
        let mut next_up = async || {
            tokio::time::timeout(Duration::from_secs(30), ups.recv())
                .await
                .expect("no connection from a within 30 s")
                .unwrap()
        };
        let up = next_up().await;
        assert_eq!(up.initiator, Initiator::Remote);
        actix::spawn(async move {
            let (mut send, _recv) = up.connection.accept_bi().await.unwrap();
            let mut partial = 1000u32.to_be_bytes().to_vec();
            partial.extend([0u8; 10]);
            send.write_all(&partial).await.unwrap();
            // Keep both halves open until the peer closes.
            let _ = up.connection.closed().await;
        });
        wait_for(&mut events, "a: the slow peer's session timed out", |e| {
            matches!(e, crate::NodeEvent::SessionEnded { peer, reason }
                if *peer == key && reason.contains("timeout"))
        })
        .await;
        // a dials again (a ban would have cancelled that).
        let again = next_up().await;
        assert_eq!(again.key, a.key());
        assert_eq!(a.s().lifecycle.send(RedialsStarted).await.unwrap(), 1);
        assert_eq!(a.counters().bans.get(), 0, "a slow peer is not banned");
        a.close().await;
        slow.close().await;
    });
}
