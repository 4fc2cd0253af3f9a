//! Helpers shared by the actor tests: a runtime, a peer sink, waiting with a guard.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use replic8_discovery::{DiscoveryActor, PeerFound, PeerTried, Subscribe, Timing, Topic};
use tokio::sync::mpsc;

/// Runs `f` in an actix `System` on a multi-thread tokio runtime, as the node does.
pub fn run<F: Future>(f: impl FnOnce() -> F) -> F::Output {
    actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
    .block_on(f())
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Forwards every `PeerFound` to a channel and, if `tried` is set, reports it tried.
pub struct Sink {
    tx: mpsc::UnboundedSender<PeerFound>,
    tried: Option<Addr<DiscoveryActor>>,
}

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<PeerFound> for Sink {
    type Result = ();

    fn handle(&mut self, msg: PeerFound, _ctx: &mut Context<Self>) {
        if let Some(discovery) = &self.tried {
            discovery.do_send(PeerTried {
                topic: msg.topic,
                addr: msg.addr,
            });
        }
        let _ = self.tx.send(msg);
    }
}

/// The receiving end of a `Sink`.
pub struct Found {
    pub name: &'static str,
    rx: mpsc::UnboundedReceiver<PeerFound>,
}

impl Found {
    /// Waits for a `PeerFound` matching `pred`, failing with context after `guard`.
    pub async fn recv_until(
        &mut self,
        guard: Duration,
        pred: impl Fn(&PeerFound) -> bool,
    ) -> PeerFound {
        let deadline = tokio::time::Instant::now() + guard;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(found)) if pred(&found) => return found,
                Ok(Some(found)) => seen.push(found),
                Ok(None) => panic!("{}: sink closed; saw {seen:?}", self.name),
                Err(_) => panic!(
                    "{}: no matching PeerFound within {guard:?}; saw {seen:?}",
                    self.name
                ),
            }
        }
    }

    /// The next `PeerFound`, or `None` once the sink is gone.
    pub async fn recv(&mut self) -> Option<PeerFound> {
        self.rx.recv().await
    }

    /// Everything received so far, without waiting.
    pub fn drain(&mut self) -> Vec<PeerFound> {
        std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
    }
}

/// Subscribes a new sink to `discovery`; with `auto_tried`, every peer is reported tried.
pub async fn subscribe(
    name: &'static str,
    discovery: &Addr<DiscoveryActor>,
    auto_tried: bool,
) -> Found {
    let (tx, rx) = mpsc::unbounded_channel();
    let tried = auto_tried.then(|| discovery.clone());
    let sink = Sink { tx, tried }.start();
    discovery
        .send(Subscribe(sink.recipient()))
        .await
        .expect("discovery alive");
    Found { name, rx }
}

/// A fresh random topic.
pub fn topic() -> Topic {
    Topic(rand::random())
}

/// Timers for tests that must watch several refreshes: everything in fractions of a second.
pub fn fast_timing() -> Timing {
    Timing {
        announce_interval: Duration::from_millis(300),
        announce_retry: Duration::from_millis(300),
        jitter: 0.1,
        join_lookup_delays: vec![Duration::from_millis(200)],
        lookup_interval: (Duration::from_millis(200), Duration::from_millis(300)),
    }
}

/// The address the DHT stores for a client on loopback announcing `port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
