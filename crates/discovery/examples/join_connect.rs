//! Benchmark: join → connected latency, discovery and the connection manager together,
//! on a local Mainline testnet (loopback).
//!
//! Two nodes, each a `DiscoveryActor` (DHT client mode, default timers, the testnet's
//! 500 ms request timeout) and a `ConnManager` on 127.0.0.1, wired like the node does it:
//! every `PeerFound` becomes an unpinned `Dial`, whose outcome goes back as `PeerTried`.
//! Each round uses a fresh topic and starts with no connection between the two.
//! - "announce-then-join": one node joined with announce only (and its announce is
//!   stored); the other joins with lookup; time from the joiner's `Join` to the
//!   joiner's `PeerUp` for the announcer. The roles alternate between rounds, so half
//!   the rounds have the joiner on the smaller key (its connection needs the greater
//!   key's confirmation, or the settle window) and half on the greater key.
//! - "both-at-once": both join (announce and lookup) at the same moment; time from the
//!   joins to each side's `PeerUp` for the other (2 samples a round); a round counts as
//!   connected when both sides report `PeerUp` within 10 s.
//!
//! Run: `cargo run --release -p replic8-discovery --example join_connect -- [nodes]
//! [rounds] [server|client] [request_timeout_ms]` (defaults 20, 20, server, 500: the
//! `DhtConfig::testnet` settings). `client` runs our two DHT nodes in client mode.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use mainline::Testnet;
use replic8_connmgr::{
    ConnManager, ConnManagerConfig, ConnManagerHandle, Dial, Identity, PeerDown, PeerKey, PeerUp,
};
use replic8_discovery::*;
use tokio::sync::mpsc;

/// What one node reports to the benchmark loop.
#[derive(Debug)]
enum Seen {
    Found(Topic, Instant),
    Up(PeerKey, Instant),
    Down(PeerKey, Instant),
}

/// The node's wiring, reduced to what the path needs: `PeerFound` → `Dial` → `PeerTried`.
struct Wiring {
    conn: Addr<ConnManager>,
    discovery: Addr<DiscoveryActor>,
    events: mpsc::UnboundedSender<Seen>,
    /// Dials not answered yet.
    dialing: Arc<AtomicUsize>,
}

impl Actor for Wiring {
    type Context = Context<Self>;
}

impl Handler<PeerFound> for Wiring {
    type Result = ();
    fn handle(&mut self, found: PeerFound, ctx: &mut Context<Self>) {
        let _ = self.events.send(Seen::Found(found.topic, Instant::now()));
        let dial = self.conn.send(Dial {
            addr: found.addr,
            expected_key: None,
        });
        let discovery = self.discovery.clone();
        let dialing = self.dialing.clone();
        dialing.fetch_add(1, Ordering::SeqCst);
        let tried = PeerTried {
            topic: found.topic,
            addr: found.addr,
        };
        ctx.spawn(
            async move {
                // The outcome does not matter here: `PeerUp` is what is timed.
                let _ = dial.await;
                discovery.do_send(tried);
                dialing.fetch_sub(1, Ordering::SeqCst);
            }
            .into_actor(self),
        );
    }
}

impl Handler<PeerUp> for Wiring {
    type Result = ();
    fn handle(&mut self, up: PeerUp, _ctx: &mut Context<Self>) {
        let _ = self.events.send(Seen::Up(up.key, Instant::now()));
    }
}

impl Handler<PeerDown> for Wiring {
    type Result = ();
    fn handle(&mut self, down: PeerDown, _ctx: &mut Context<Self>) {
        let _ = self.events.send(Seen::Down(down.key, Instant::now()));
    }
}

/// Answers once every message sent to the wiring before it was handled.
#[derive(Message)]
#[rtype(result = "()")]
struct Barrier;

impl Handler<Barrier> for Wiring {
    type Result = ();
    fn handle(&mut self, _: Barrier, _ctx: &mut Context<Self>) {}
}

struct Node {
    wiring: Addr<Wiring>,
    dialing: Arc<AtomicUsize>,
    conn: ConnManagerHandle,
    discovery: Addr<DiscoveryActor>,
    events: mpsc::UnboundedReceiver<Seen>,
}

impl Node {
    async fn spawn(dht: DhtConfig) -> Node {
        let conn = ConnManager::spawn(
            ConnManagerConfig::new(Identity::generate()).with_listen(([127, 0, 0, 1], 0).into()),
        )
        .expect("connection manager starts");
        let discovery = DiscoveryActor::spawn(DiscoveryConfig {
            quic_port: conn.local_addr().port(),
            dht: Some(dht),
            lan: None,
            static_peers: Vec::new(),
            timing: Timing::default(),
        })
        .await
        .expect("discovery starts");
        let (tx, events) = mpsc::unbounded_channel();
        let dialing = Arc::new(AtomicUsize::new(0));
        let wiring = Wiring {
            conn: conn.addr().clone(),
            discovery: discovery.clone(),
            events: tx,
            dialing: dialing.clone(),
        }
        .start();
        discovery
            .send(Subscribe(wiring.clone().recipient()))
            .await
            .expect("discovery alive");
        conn.addr()
            .send(replic8_connmgr::Subscribe {
                peer_up: wiring.clone().recipient(),
                peer_down: wiring.clone().recipient(),
            })
            .await
            .expect("connection manager alive");
        Node {
            wiring,
            dialing,
            conn,
            discovery,
            events,
        }
    }

    /// Waits for `PeerUp` of `key` after `since` (an earlier one, of a connection that a
    /// late dial of the last round made and `apart` closed, does not count); also
    /// returns when `topic`'s first `PeerFound` came.
    async fn until_up(
        &mut self,
        key: PeerKey,
        topic: Topic,
        since: Instant,
    ) -> (Option<Instant>, Instant) {
        let mut found = None;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.events.recv()).await {
                Err(_) => panic!("no PeerUp for {} within 10 s", key.fmt_short()),
                Ok(None) => panic!("wiring gone"),
                Ok(Some(Seen::Found(t, at))) if t == topic && found.is_none() => found = Some(at),
                Ok(Some(Seen::Up(k, at))) if k == key && at >= since => return (found, at),
                Ok(Some(_)) => {}
            }
        }
    }

    /// Forgets what was reported so far; closes a connection to `peer` that a late
    /// `PeerFound` of an earlier round may have made. Returns whether there was one.
    async fn settle(&mut self, peer: PeerKey) -> bool {
        // Every `PeerFound` of the left topic handled, every dial it made answered.
        self.wiring.send(Barrier).await.expect("wiring alive");
        while self.dialing.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        while self.events.try_recv().is_ok() {}
        let peers = self
            .conn
            .addr()
            .send(replic8_connmgr::Peers)
            .await
            .expect("alive");
        let connected = peers.iter().any(|p| p.key == peer);
        if connected {
            let since = Instant::now();
            let closed = self
                .conn
                .addr()
                .send(replic8_connmgr::Close { key: peer })
                .await
                .expect("alive");
            // Err: it went down on its own meanwhile (its `PeerDown` came before `since`).
            if closed.is_ok() {
                self.until_down(peer, since).await;
            }
        }
        connected
    }

    /// Waits for `PeerDown` of `key` after `since`.
    async fn until_down(&mut self, key: PeerKey, since: Instant) {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.events.recv()).await {
                Err(_) => panic!("no PeerDown for {} within 10 s", key.fmt_short()),
                Ok(None) => panic!("wiring gone"),
                Ok(Some(Seen::Down(k, at))) if k == key && at >= since => return,
                Ok(Some(_)) => {}
            }
        }
    }
}

/// Until neither node has a connection to the other, nor a dial under way, nor an event
/// not yet read: each round starts apart.
async fn apart(a: &mut Node, b: &mut Node) {
    let (ka, kb) = (a.conn.key(), b.conn.key());
    let mut quiet_once = false;
    loop {
        let was_a = a.settle(kb).await;
        let was_b = b.settle(ka).await;
        if was_a || was_b {
            quiet_once = false;
            continue;
        }
        if quiet_once {
            return;
        }
        // A handshake that a dial of the last round started may still be finishing on
        // its server side, which reports nothing until then: give it time to show up (a
        // loopback handshake takes ~1 ms), then look again.
        quiet_once = true;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Closes the connection between `a` and `b` and waits until both saw it go.
async fn disconnect(a: &mut Node, b: &mut Node) {
    let (ka, kb) = (a.conn.key(), b.conn.key());
    let since = Instant::now();
    a.conn
        .addr()
        .send(replic8_connmgr::Close { key: kb })
        .await
        .expect("alive")
        .expect("was connected");
    a.until_down(kb, since).await;
    b.until_down(ka, since).await;
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    if samples.is_empty() {
        return;
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:>34}: n={:>2} min {:>7.1} ms  median {:>7.1} ms  max {:>7.1} ms",
        samples.len(),
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1]),
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args: Vec<String> = std::env::args().collect();
    let nodes: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let rounds: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let client = args.get(3).is_some_and(|m| m == "client");
    let timeout_ms: u64 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(500);
    let testnet = Testnet::builder(nodes).build()?;
    println!(
        "testnet: {nodes} nodes on 127.0.0.1; {rounds} rounds per case; our DHT nodes in {} \
         mode, request timeout {timeout_ms} ms",
        if client { "client" } else { "server" }
    );
    let mut dht = DhtConfig::testnet(&testnet.bootstrap);
    dht.request_timeout = Some(Duration::from_millis(timeout_ms));
    if client {
        dht.mode = DhtMode::Auto;
    }
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    });
    system.block_on(async move {
        let mut x = Node::spawn(dht.clone()).await;
        let mut y = Node::spawn(dht).await;

        let mut found = Vec::new();
        let mut up_smaller = Vec::new();
        let mut up_greater = Vec::new();
        for round in 0..rounds {
            let (announcer, joiner) = if round % 2 == 0 {
                (&mut x, &mut y)
            } else {
                (&mut y, &mut x)
            };
            let topic = Topic(rand::random());
            apart(announcer, joiner).await;
            announcer
                .discovery
                .send(Join {
                    topic,
                    announce: true,
                    lookup: false,
                })
                .await
                .expect("alive")
                .expect("announced");
            let start = Instant::now();
            let join = joiner.discovery.send(Join {
                topic,
                announce: false,
                lookup: true,
            });
            let join = tokio::spawn(join);
            let (at_found, at_up) = joiner.until_up(announcer.conn.key(), topic, start).await;
            if let Some(at) = at_found {
                found.push(at - start);
            }
            if joiner.conn.key() < announcer.conn.key() {
                up_smaller.push(at_up - start);
            } else {
                up_greater.push(at_up - start);
            }
            join.await
                .expect("join task")
                .expect("alive")
                .expect("joined");
            announcer.until_up(joiner.conn.key(), topic, start).await;
            for node in [&*announcer, &*joiner] {
                node.discovery
                    .send(Leave { topic })
                    .await
                    .expect("alive")
                    .expect("left");
            }
            disconnect(announcer, joiner).await;
        }
        println!("announce-then-join (join → joiner's PeerUp):");
        summary("PeerFound", found);
        let all: Vec<Duration> = up_smaller.iter().chain(&up_greater).copied().collect();
        summary("PeerUp, joiner has the smaller key", up_smaller);
        summary("PeerUp, joiner has the greater key", up_greater);
        summary("PeerUp, all", all);

        let mut both = Vec::new();
        let mut connected = 0;
        for _ in 0..rounds {
            let topic = Topic(rand::random());
            apart(&mut x, &mut y).await;
            let start = Instant::now();
            let join = |node: &Node| {
                node.discovery.send(Join {
                    topic,
                    announce: true,
                    lookup: true,
                })
            };
            let (ja, jb) = (join(&x), join(&y));
            let (kx, ky) = (x.conn.key(), y.conn.key());
            let ((_, at_x), (_, at_y)) =
                futures::join!(x.until_up(ky, topic, start), y.until_up(kx, topic, start));
            connected += 1;
            both.push(at_x - start);
            both.push(at_y - start);
            ja.await.expect("alive").expect("joined");
            jb.await.expect("alive").expect("joined");
            for node in [&x, &y] {
                node.discovery
                    .send(Leave { topic })
                    .await
                    .expect("alive")
                    .expect("left");
            }
            disconnect(&mut x, &mut y).await;
        }
        println!("both-at-once (joins → each side's PeerUp), connected {connected} of {rounds}:");
        summary("PeerUp, both sides", both);
        for node in [&x, &y] {
            node.discovery.send(Close).await.expect("closed");
            node.conn.close().await;
        }
    });
    Ok(())
}
