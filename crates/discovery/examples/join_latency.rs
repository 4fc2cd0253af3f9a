//! Benchmark: join → `PeerFound` latency on a local 50-node Mainline testnet (loopback).
//!
//! Two cases, 20 runs each, each run on a fresh topic:
//! - "announced": peer A joined (and announced) earlier; B joins with lookup; time from
//!   B's `Join` to B's first `PeerFound` for A.
//! - "simultaneous": A and B join at the same moment; time from the joins to each side's
//!   first `PeerFound` for the other (40 samples).
//!
//! Run: `cargo run -p replic8-discovery --example join_latency -- [nodes] [request_timeout_ms]`
//! (defaults 50 and 500).

use std::time::{Duration, Instant};

use actix::prelude::*;
use mainline::Testnet;
use replic8_discovery::*;
use tokio::sync::mpsc;

struct Sink(mpsc::UnboundedSender<(PeerFound, Instant)>);

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<PeerFound> for Sink {
    type Result = ();
    fn handle(&mut self, msg: PeerFound, _ctx: &mut Context<Self>) {
        let _ = self.0.send((msg, Instant::now()));
    }
}

async fn first_found(
    rx: &mut mpsc::UnboundedReceiver<(PeerFound, Instant)>,
    topic: Topic,
    port: u16,
) -> Instant {
    loop {
        let (found, at) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("peer found within 30 s")
            .expect("sink alive");
        if found.topic == topic && found.addr.port() == port {
            return at;
        }
    }
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let max = samples[samples.len() - 1];
    let min = samples[0];
    println!(
        "{name:>12}: n={} min {:>7.1} ms  median {:>7.1} ms  max {:>7.1} ms",
        samples.len(),
        min.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let nodes: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(50);
    let timeout_ms: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(500);
    let testnet = Testnet::builder(nodes).build()?;
    println!(
        "testnet: {nodes} nodes on 127.0.0.1; request timeout {timeout_ms} ms; default timers"
    );
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    });
    system.block_on(async move {
        let config = |port| {
            let mut dht = DhtConfig::testnet(&testnet.bootstrap);
            dht.request_timeout = Some(Duration::from_millis(timeout_ms));
            DiscoveryConfig {
                quic_port: port,
                dht: Some(dht),
                lan: None,
                static_peers: Vec::new(),
                timing: Timing::default(),
            }
        };
        let a = DiscoveryActor::spawn(config(48001))
            .await
            .expect("a starts");
        let b = DiscoveryActor::spawn(config(48002))
            .await
            .expect("b starts");
        let (tx_a, mut rx_a) = mpsc::unbounded_channel();
        let (tx_b, mut rx_b) = mpsc::unbounded_channel();
        a.send(Subscribe(Sink(tx_a).start().recipient()))
            .await
            .expect("alive");
        b.send(Subscribe(Sink(tx_b).start().recipient()))
            .await
            .expect("alive");

        let mut announced = Vec::new();
        let mut joins = Vec::new();
        for _ in 0..20 {
            let topic = Topic(rand::random());
            a.send(Join {
                topic,
                announce: true,
                lookup: false,
            })
            .await
            .expect("alive")
            .expect("a joined");
            let start = Instant::now();
            let join = b.send(Join {
                topic,
                announce: false,
                lookup: true,
            });
            let join = tokio::spawn(async move { (join.await, Instant::now()) });
            let at = first_found(&mut rx_b, topic, 48001).await;
            announced.push(at - start);
            let (result, joined_at) = join.await.expect("join task");
            result.expect("alive").expect("b joined");
            joins.push(joined_at - start);
            a.send(Leave { topic }).await.expect("alive").expect("left");
            b.send(Leave { topic }).await.expect("alive").expect("left");
        }
        summary("announced", announced);
        summary("join resolve", joins);

        let mut simultaneous = Vec::new();
        for _ in 0..20 {
            let topic = Topic(rand::random());
            let start = Instant::now();
            let ja = a.send(Join {
                topic,
                announce: true,
                lookup: true,
            });
            let jb = b.send(Join {
                topic,
                announce: true,
                lookup: true,
            });
            let (at_a, at_b) = futures::join!(
                first_found(&mut rx_a, topic, 48002),
                first_found(&mut rx_b, topic, 48001)
            );
            simultaneous.push(at_a - start);
            simultaneous.push(at_b - start);
            ja.await.expect("alive").expect("a joined");
            jb.await.expect("alive").expect("b joined");
            a.send(Leave { topic }).await.expect("alive").expect("left");
            b.send(Leave { topic }).await.expect("alive").expect("left");
        }
        summary("simultaneous", simultaneous);
        a.send(Close).await.expect("closed");
        b.send(Close).await.expect("closed");
    });
    Ok(())
}
