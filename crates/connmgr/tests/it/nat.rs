//! The NAT control channel over loopback: observed addresses, the mapping type, and
//! reachability through a peer's dial-back from another port.

use crate::util;

use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use replic8_connmgr::{
    ConnManagerConfig, Identity, NatEvent, NatState, NatStatus, NatType, Reachability, SubscribeNat,
};
use tokio::sync::mpsc;
use util::{run, Node, Relay, GUARD};

struct NatRecorder(mpsc::UnboundedSender<NatEvent>);

impl Actor for NatRecorder {
    type Context = Context<Self>;
}

impl Handler<NatEvent> for NatRecorder {
    type Result = ();
    fn handle(&mut self, msg: NatEvent, _: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

/// A node on `127.0.0.<host>` (loopback answers on all of 127/8, so peers at distinct
/// addresses can report ours) with NAT events recorded.
async fn spawn(
    name: &'static str,
    host: u8,
    tweak: impl FnOnce(&mut ConnManagerConfig),
) -> (Node, NatEvents) {
    let node = Node::spawn_with(name, Identity::generate(), |c| {
        c.listen = SocketAddr::from(([127, 0, 0, host], 0));
        tweak(c);
    })
    .await;
    let (tx, rx) = mpsc::unbounded_channel();
    let recorder = NatRecorder(tx).start();
    node.handle
        .addr()
        .send(SubscribeNat(recorder.recipient()))
        .await
        .expect("subscribe nat");
    let events = NatEvents {
        name,
        rx,
        backlog: Vec::new(),
    };
    (node, events)
}

/// NAT events received and not consumed yet.
struct NatEvents {
    name: &'static str,
    rx: mpsc::UnboundedReceiver<NatEvent>,
    backlog: Vec<NatEvent>,
}

impl NatEvents {
    /// Waits for the first event (in arrival order, earlier skipped ones included) that
    /// `pick` accepts; the others are kept.
    async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(&NatEvent) -> Option<T>) -> T {
        if let Some(i) = self.backlog.iter().position(|e| pick(e).is_some()) {
            let ev = self.backlog.remove(i);
            return pick(&ev).expect("picked");
        }
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => {
                    if let Some(t) = pick(&ev) {
                        return t;
                    }
                    self.backlog.push(ev);
                }
                Ok(None) => panic!("{}: NAT events ended waiting for {what}", self.name),
                Err(_) => panic!(
                    "{}: no {what} within {GUARD:?}; saw {:?}",
                    self.name, self.backlog
                ),
            }
        }
    }
}

async fn status(node: &Node) -> NatStatus {
    node.handle
        .addr()
        .send(NatState)
        .await
        .expect("actor alive")
}

#[test]
fn peers_report_our_address_and_a_dial_back_proves_we_are_reachable() {
    run(|| async {
        let (a, mut a_events) = spawn("a", 1, |_| {}).await;
        let (b, _b_events) = spawn("b", 2, |_| {}).await;
        let (c, _c_events) = spawn("c", 3, |_| {}).await;
        a.dial(b.addr(), Some(b.key())).await.expect("a dials b");
        a.dial(c.addr(), Some(c.key())).await.expect("a dials c");
        // b at 127.0.0.2 and c at 127.0.0.3 both see a at its socket's address.
        a_events
            .next("NatType", |e| match e {
                NatEvent::NatType {
                    nat_type: NatType::EndpointIndependent,
                } => Some(()),
                _ => None,
            })
            .await;
        let via = a_events
            .next("Reachability", |e| match e {
                NatEvent::Reachability { reachability, peer } => Some((*reachability, *peer)),
                _ => None,
            })
            .await;
        assert_eq!(via.0, Reachability::Reachable, "a: {via:?}");
        assert!(via.1 == b.key() || via.1 == c.key());
        let st = status(&a).await;
        assert_eq!(st.public_addrs, vec![a.addr()], "a: {st:?}");
        assert_eq!(st.nat_type, NatType::EndpointIndependent);
        assert_eq!(st.reachability, Reachability::Reachable);
        assert_eq!(st.reporters, 2);
        // The dial-back was never a peer connection: each side still has one per key.
        // (The peer's report can arrive before our accept path has counted its dial.)
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let stats = loop {
            let stats = a
                .handle
                .addr()
                .send(replic8_connmgr::Stats)
                .await
                .expect("stats");
            if stats.dial_backs_received >= 1 || tokio::time::Instant::now() > deadline {
                break stats;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        assert_eq!(stats.peers, 2, "a: {stats:?}");
        assert!(stats.dial_backs_received >= 1, "a: {stats:?}");
        assert_eq!(stats.incoming_refused, 0, "a: {stats:?}");
        for n in [a, b, c] {
            let h = n.close().await;
            assert_eq!(h.live_tasks(), 0, "no task outlives close");
        }
    });
}

#[test]
fn a_node_behind_a_port_restricted_mapping_learns_it_is_unreachable() {
    run(|| async {
        let fast = |c: &mut ConnManagerConfig| c.nat.dial_back_timeout = Duration::from_secs(1);
        // a serves no dial-backs: its own would go through the relay's front port, which
        // forwards anything (the relay stands for a's NAT, not b's).
        let (a, mut a_events) = spawn("a", 1, |c| {
            fast(c);
            c.nat.max_dial_backs_per_minute = 0;
        })
        .await;
        let (b, mut b_events) = spawn("b", 2, fast).await;
        // a reaches b through a relay whose back socket takes packets only from b's
        // address: like a NAT's port-restricted filtering of the mapping a's dial made.
        let relay = Relay::start(b.addr(), false).await;
        a.dial(relay.addr, Some(b.key())).await.expect("a dials b");
        let verdict = a_events
            .next("Reachability", |e| match e {
                NatEvent::Reachability { reachability, .. } => Some(*reachability),
                _ => None,
            })
            .await;
        assert_eq!(verdict, Reachability::Unreachable);
        let served = b_events
            .next("DialBackServed", |e| match e {
                NatEvent::DialBackServed { reached, addr, .. } => Some((*reached, *addr)),
                _ => None,
            })
            .await;
        assert!(!served.0, "b: {served:?}");
        assert_ne!(served.1, a.addr(), "b dials where it sees a: the relay");
        let st = status(&a).await;
        assert_eq!(st.reachability, Reachability::Unreachable, "a: {st:?}");
        assert_eq!(st.nat_type, NatType::Unknown, "one reporter: {st:?}");
        drop(relay);
        a.close().await;
        b.close().await;
    });
}
