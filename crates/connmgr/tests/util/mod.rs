//! Helpers for the loopback tests: an actix system on a multi-thread tokio runtime, a
//! node with an event recorder, `recv_until`, and a UDP relay that can cut a path.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use replic8_connmgr::{
    ConnManager, ConnManagerConfig, ConnManagerHandle, ConnRefused, Dial, DialError, Identity,
    PeerDown, PeerKey, PeerUp, Subscribe, SubscribeRefused,
};
use tokio::sync::mpsc;

/// Generous guard for every wait: the machine is small and shared.
pub const GUARD: Duration = Duration::from_secs(20);

/// Runs `f` in an `actix::System` on a multi-thread tokio runtime, as the node does.
pub fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let system = System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    });
    system.block_on(f());
}

/// What a subscriber saw.
#[derive(Debug)]
pub enum Ev {
    Up(PeerUp),
    Down(PeerDown),
    Refused(ConnRefused),
}

struct Recorder(mpsc::UnboundedSender<Ev>);

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<PeerUp> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: PeerUp, _: &mut Context<Self>) {
        let _ = self.0.send(Ev::Up(msg));
    }
}

impl Handler<PeerDown> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: PeerDown, _: &mut Context<Self>) {
        let _ = self.0.send(Ev::Down(msg));
    }
}

impl Handler<ConnRefused> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: ConnRefused, _: &mut Context<Self>) {
        let _ = self.0.send(Ev::Refused(msg));
    }
}

/// A `ConnManager` on loopback plus everything it reported.
pub struct Node {
    pub name: String,
    pub handle: ConnManagerHandle,
    events: mpsc::UnboundedReceiver<Ev>,
    backlog: Vec<Ev>,
    recorder: Addr<Recorder>,
}

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Two identities, the first with the greater key.
pub fn ordered_pair() -> (Identity, Identity) {
    let a = Identity::generate();
    let b = Identity::generate();
    if a.key() > b.key() {
        (a, b)
    } else {
        (b, a)
    }
}

impl Node {
    pub async fn spawn(name: &str, identity: Identity) -> Node {
        Self::spawn_with(name, identity, |_| {}).await
    }

    pub async fn spawn_with(
        name: &str,
        identity: Identity,
        tweak: impl FnOnce(&mut ConnManagerConfig),
    ) -> Node {
        let mut config = ConnManagerConfig::new(identity).with_listen(loopback());
        tweak(&mut config);
        let handle = ConnManager::spawn(config).unwrap_or_else(|e| panic!("{name}: spawn: {e}"));
        let (tx, events) = mpsc::unbounded_channel();
        let recorder = Recorder(tx).start();
        handle
            .addr()
            .send(Subscribe {
                peer_up: recorder.clone().recipient(),
                peer_down: recorder.clone().recipient(),
            })
            .await
            .expect("subscribe");
        handle
            .addr()
            .send(SubscribeRefused(recorder.clone().recipient()))
            .await
            .expect("subscribe refused");
        Node {
            name: name.to_string(),
            handle,
            events,
            backlog: Vec::new(),
            recorder,
        }
    }

    pub fn key(&self) -> PeerKey {
        self.handle.key()
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    pub async fn dial(&self, addr: SocketAddr, key: Option<PeerKey>) -> Result<PeerKey, DialError> {
        tokio::time::timeout(
            GUARD,
            self.handle.addr().send(Dial {
                addr,
                expected_key: key,
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: dial {addr} did not answer", self.name))
        .expect("actor alive")
    }

    /// Waits for the first event (in arrival order, including ones skipped before) that
    /// `pick` accepts; the others are kept for later calls.
    pub async fn recv_until<T>(&mut self, what: &str, mut pick: impl FnMut(&Ev) -> Option<T>) -> T {
        if let Some(i) = self.backlog.iter().position(|e| pick(e).is_some()) {
            let ev = self.backlog.remove(i);
            return pick(&ev).expect("picked");
        }
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => {
                    if let Some(t) = pick(&ev) {
                        return t;
                    }
                    self.backlog.push(ev);
                }
                Ok(None) => panic!("{}: event stream ended waiting for {what}", self.name),
                Err(_) => panic!(
                    "{}: no {what} within {GUARD:?}; saw {:?}",
                    self.name, self.backlog
                ),
            }
        }
    }

    pub async fn peer_up(&mut self, key: PeerKey) -> PeerUp {
        let what = format!("PeerUp from {}", key.fmt_short());
        self.recv_until(&what, |e| match e {
            Ev::Up(up) if up.key == key => Some(up.clone()),
            _ => None,
        })
        .await
    }

    pub async fn peer_down(&mut self, key: PeerKey) -> PeerDown {
        let what = format!("PeerDown from {}", key.fmt_short());
        self.recv_until(&what, |e| match e {
            Ev::Down(down) if down.key == key => Some(down.clone()),
            _ => None,
        })
        .await
    }

    pub async fn refused(&mut self) -> ConnRefused {
        self.recv_until("ConnRefused", |e| match e {
            Ev::Refused(r) => Some(r.clone()),
            _ => None,
        })
        .await
    }

    /// Events received so far and not consumed (drains the channel without waiting).
    pub fn pending_events(&mut self) -> Vec<Ev> {
        while let Ok(ev) = self.events.try_recv() {
            self.backlog.push(ev);
        }
        std::mem::take(&mut self.backlog)
    }

    /// Closes the manager and drops every connection this helper holds.
    pub async fn close(mut self) -> ConnManagerHandle {
        tokio::time::timeout(GUARD, self.handle.close())
            .await
            .unwrap_or_else(|_| panic!("{}: close did not finish", self.name));
        self.pending_events();
        self.recorder.do_send(StopRecorder);
        self.handle.clone()
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct StopRecorder;

impl Handler<StopRecorder> for Recorder {
    type Result = ();
    fn handle(&mut self, _: StopRecorder, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Sends `data` on a new stream of `conn` and finishes it. A bidirectional one: the
/// connection manager owns the unidirectional streams (its NAT control channel).
pub async fn send_uni(conn: &quinn::Connection, data: &[u8]) -> Result<(), String> {
    let (mut send, _recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(data).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    Ok(())
}

/// Accepts the next stream `send_uni` opened on `conn` and reads it to the end.
pub async fn recv_uni(conn: &quinn::Connection) -> Result<Vec<u8>, String> {
    let (_send, mut recv) = tokio::time::timeout(GUARD, conn.accept_bi())
        .await
        .map_err(|_| "no stream".to_string())?
        .map_err(|e| e.to_string())?;
    recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())
}

/// A UDP relay between one client and `target`: the client talks to `addr()`. It can cut
/// the path (both ways), forward only the first client datagram (a stalled handshake), or
/// drop datagrams above a size (a link with a small MTU).
pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    pub forwarded: Arc<AtomicUsize>,
    /// Datagrams dropped for their size (either way).
    pub too_large: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    pub async fn start(target: SocketAddr, only_first: bool) -> Relay {
        Self::start_with(target, only_first, usize::MAX).await
    }

    /// A relay that drops every datagram of more than `max_payload` bytes of UDP payload.
    pub async fn start_capped(target: SocketAddr, max_payload: usize) -> Relay {
        Self::start_with(target, false, max_payload).await
    }

    async fn start_with(target: SocketAddr, only_first: bool, max_payload: usize) -> Relay {
        let front = tokio::net::UdpSocket::bind(loopback()).await.expect("bind");
        let back = tokio::net::UdpSocket::bind(loopback()).await.expect("bind");
        back.connect(target).await.expect("connect");
        let addr = front.local_addr().expect("addr");
        let cut = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let too_large = Arc::new(AtomicUsize::new(0));
        let (cut2, fwd2, large2) = (cut.clone(), forwarded.clone(), too_large.clone());
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut a = vec![0u8; 65536];
            let mut b = vec![0u8; 65536];
            let fits = |n: usize| {
                if n > max_payload {
                    large2.fetch_add(1, Ordering::SeqCst);
                }
                n <= max_payload
            };
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { return };
                        client = Some(from);
                        let first = fwd2.load(Ordering::SeqCst) == 0;
                        if !cut2.load(Ordering::SeqCst) && (!only_first || first) && fits(n) {
                            fwd2.fetch_add(1, Ordering::SeqCst);
                            let _ = back.send(&a[..n]).await;
                        }
                    }
                    r = back.recv(&mut b) => {
                        let Ok(n) = r else { return };
                        if let (Some(c), false) = (client, cut2.load(Ordering::SeqCst)) {
                            if fits(n) {
                                let _ = front.send_to(&b[..n], c).await;
                            }
                        }
                    }
                }
            }
        });
        Relay {
            addr,
            cut,
            forwarded,
            too_large,
            task,
        }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}
