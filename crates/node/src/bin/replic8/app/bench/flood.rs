//! `flood`: honest replication on a node under a sustained flood, against the same run
//! without it.
//!
//! Three nodes in this process, on loopback, in memory, no DHT or LAN: honest A writes
//! a feed (default 64 MiB of 64 KiB blocks) and shares it in [`NAMESPACE`]; the victim
//! and honest B open that namespace and connect to A (B to the victim too). The clock
//! runs from the connects until the victim holds every block (each verified against A's
//! signed head on arrival); the victim's copy is then checked against A's head.
//!
//! The victim dials A (and B dials A and the victim) until the connection is up: a table
//! filled by attackers refuses those dials, and an honest node dials again
//! (`victim_dials_to_a` counts them). The run is made twice: first alone, then while attackers flood the victim for
//! `--seconds` (default 60). The attackers are `--attackers` tasks (default 200), each a
//! real connection manager on a loopback address of its own (127.0.1.1, 127.0.1.2, ...;
//! the honest nodes are on 127.0.0.1) speaking the replic8 ALPN, in four kinds by
//! index: *handshake* (a fresh identity per connection: connect, drop, again),
//! *junk offers* (a real [`Session`] core on the connection sharing fresh random feed
//! keys in the public namespace `""`, [`JUNK_PER_OFFER`] per offer, as fast as the
//! victim takes them), *streams* (feed streams for feeds never offered, by random
//! discovery key and capability), *idle* (hello, then nothing). A connection that ends
//! is dialed again (after [`REDIAL_PAUSE`]) until the time is up. The attack starts
//! before the honest connects, and runs its full time even when the honest feed is done.
//!
//! The row: `seconds` and `mb_per_s` are the victim's under attack; `baseline_seconds`
//! and `baseline_mb_per_s` the run without it; `ratio` their quotient (the target is at
//! least 0.5); `peak_rss_bytes` is this whole process's peak (victim, honest nodes and
//! attackers together: `rss_scope`) during the attacked run; `attacker_connections_*`
//! count dials attempted, connections established and dials refused or failed;
//! `finished_during_attack` is false when the honest feed completed only after the
//! attack stopped (the ratio then flatters the victim);
//! `victim_alive` says the victim still answered after the attack and `honest_connected`
//! that A and B were still among its peers.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::{Actor, Context, Handler};
use replic8::keys::{exporter_secret, DiscoveryKey, FeedKey as WireFeedKey, Role};
use replic8::message::{self, FeedStreamHeader};
use replic8::session::{Session, SessionConfig, SessionEvent};
use replic8_connmgr::{
    ConnManager, ConnManagerConfig, ConnManagerHandle, Dial, Identity, PeerUp, PolicyConfig,
    Subscribe,
};
use tokio::sync::mpsc;

use super::{peak_rss_bytes, reset_peak_rss, round, BenchError, BenchOptions, Row};
use crate::app::demo::Pattern;
use replic8_node::{FeedKey, Headers, Node, NodeHandle};

/// The namespace A shares its feed in.
pub(crate) const NAMESPACE: &str = "replic8-flood";
/// Bytes of the honest feed unless `--size` says otherwise (the 64 MiB).
const DEFAULT_SIZE: u64 = 64 << 20;
/// Bytes per block of the honest feed unless `--block-size` says otherwise.
const DEFAULT_BLOCK: usize = 64 << 10;
/// Attacker tasks unless `--attackers` says otherwise (the 200 identities).
const DEFAULT_ATTACKERS: usize = 200;
/// Seconds of attack unless `--seconds` says otherwise (the 60 s).
const DEFAULT_SECONDS: u64 = 60;
/// Blocks per append while A fills its feed (4 MiB of 64 KiB blocks).
const APPEND_BATCH: usize = 64;
/// Fresh feed keys per junk offer: a quarter of the per-message maximum, so that one
/// offer stays well inside a frame with its headers.
const JUNK_PER_OFFER: usize = 1024;
/// Pause before an attacker dials again after its connection ended or was refused: keeps
/// the dial rate bounded (200 tasks → at most ~1,000 dials a second) without a ban
/// stopping the attack.
const REDIAL_PAUSE: Duration = Duration::from_millis(200);
/// How long an attacker waits for a dial (or a stream) before counting it as refused.
const DIAL_GUARD: Duration = Duration::from_secs(10);
/// How often the victim's copy is checked while the honest feed replicates.
const POLL: Duration = Duration::from_millis(20);
/// How long the honest replication may take before the bench gives up.
const SYNC_GUARD: Duration = Duration::from_secs(600);
/// How long the honest run waits for the first attacker connection before it starts
/// anyway (the attack is then refused at the door, which is a result too).
const RAMP_GUARD: Duration = Duration::from_secs(10);

/// What the attackers did, counted as they go (all on this thread).
#[derive(Debug, Default)]
struct Tally {
    attempted: Cell<u64>,
    established: Cell<u64>,
    refused: Cell<u64>,
    junk_feeds: Cell<u64>,
    streams: Cell<u64>,
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

/// The attack kinds, by attacker index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Handshake,
    Junk,
    Streams,
    Idle,
}

impl Kind {
    fn of(index: usize) -> Kind {
        [Kind::Handshake, Kind::Junk, Kind::Streams, Kind::Idle][index % 4]
    }
}

/// Forwards an attacker's `PeerUp`s (its connections) to its task.
#[derive(Debug)]
struct UpSink(mpsc::UnboundedSender<quinn::Connection>);

impl Actor for UpSink {
    type Context = Context<Self>;
}

impl Handler<PeerUp> for UpSink {
    type Result = ();
    fn handle(&mut self, up: PeerUp, _: &mut Context<Self>) {
        let _ = self.0.send(up.connection);
    }
}

impl Handler<replic8_connmgr::PeerDown> for UpSink {
    type Result = ();
    fn handle(&mut self, _: replic8_connmgr::PeerDown, _: &mut Context<Self>) {}
}

/// One attacker endpoint: a connection manager with a fresh identity.
struct Attacker {
    handle: ConnManagerHandle,
    ups: mpsc::UnboundedReceiver<quinn::Connection>,
}

impl Attacker {
    /// An attacker endpoint bound to `ip` (a loopback address of its own).
    async fn spawn(ip: std::net::Ipv4Addr) -> Result<Attacker, String> {
        let config = ConnManagerConfig {
            policy: PolicyConfig::redial_at_once(),
            ..ConnManagerConfig::new(Identity::generate())
                .with_listen(SocketAddr::from((ip, 0)))
                .with_alpn(vec![message::ALPN.to_vec()])
        };
        let handle = ConnManager::spawn(config).map_err(|e| e.to_string())?;
        let (tx, ups) = mpsc::unbounded_channel();
        let sink = UpSink(tx).start();
        handle
            .addr()
            .send(Subscribe {
                peer_up: sink.clone().recipient(),
                peer_down: sink.recipient(),
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(Attacker { handle, ups })
    }

    /// Dials the victim; its connection once up.
    async fn dial(&mut self, victim: SocketAddr, tally: &Tally) -> Option<quinn::Connection> {
        bump(&tally.attempted, 1);
        let dialed = async {
            self.handle
                .addr()
                .send(Dial {
                    addr: victim,
                    expected_key: None,
                })
                .await
                .ok()?
                .ok()?;
            self.ups.recv().await
        };
        match tokio::time::timeout(DIAL_GUARD, dialed).await {
            Ok(Some(connection)) => {
                bump(&tally.established, 1);
                Some(connection)
            }
            _ => {
                bump(&tally.refused, 1);
                None
            }
        }
    }
}

/// The loopback address of attacker `index`: one of its own (127.0.1.1, 127.0.1.2, ...,
/// 250 per /24), as a botnet's would be, so the victim's per-address caps do not do
/// the defence's work alone and the honest nodes on 127.0.0.1 share no cap with them.
fn attacker_ip(index: usize) -> std::net::Ipv4Addr {
    let third = 1 + (index / 250) % 250;
    let fourth = 1 + index % 250;
    std::net::Ipv4Addr::new(127, 0, third as u8, fourth as u8)
}

/// One attacker task until `deadline`.
async fn attacker_task(
    kind: Kind,
    ip: std::net::Ipv4Addr,
    victim: SocketAddr,
    deadline: Instant,
    tally: Rc<Tally>,
) {
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut attacker: Option<Attacker> = None;
    while tokio::time::Instant::now() < deadline {
        if kind == Kind::Handshake || attacker.is_none() {
            if let Some(old) = attacker.take() {
                old.handle.close().await;
            }
            match Attacker::spawn(ip).await {
                Ok(a) => attacker = Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, "flood: an attacker could not start");
                    return;
                }
            }
        }
        let Some(a) = attacker.as_mut() else { return };
        if let Some(connection) = a.dial(victim, &tally).await {
            if kind != Kind::Handshake {
                let _ = tokio::time::timeout_at(deadline, drive(kind, connection.clone(), &tally))
                    .await;
            }
            connection.close(0u32.into(), b"");
        }
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + REDIAL_PAUSE)).await;
    }
    if let Some(a) = attacker {
        a.handle.close().await;
    }
}

/// Runs one session of `kind` on `connection` until it ends.
async fn drive(kind: Kind, connection: quinn::Connection, tally: &Tally) -> Option<()> {
    let exporter = exporter_secret(&connection).ok()?;
    let mut session = Session::new(
        SessionConfig::default(),
        Role::Dialer,
        exporter,
        Instant::now(),
    );
    let (mut send, mut recv) = connection.open_bi().await.ok()?;
    let _ = session.handle_register_namespace("", None);
    let mut buf = vec![0u8; 64 << 10];
    // Hellos first, as an honest dialer: what follows is then judged as what it is
    // (junk offers, streams for feeds never offered), not as early frames.
    while let Some(frame) = session.poll_transmit() {
        send.write_all(&frame).await.ok()?;
    }
    while !session.is_established() {
        let n = tokio::time::timeout(DIAL_GUARD, recv.read(&mut buf))
            .await
            .ok()?
            .ok()??;
        session.handle_control_bytes(&buf[..n]);
        if session.end_reason().is_some() {
            return None;
        }
    }
    loop {
        match kind {
            Kind::Junk => {
                let feeds: Vec<(WireFeedKey, Headers)> = (0..JUNK_PER_OFFER)
                    .map(|_| (WireFeedKey(rand::random()), Headers::new()))
                    .collect();
                let n = session.handle_share("", feeds).ok()?;
                bump(&tally.junk_feeds, n as u64);
            }
            Kind::Streams => {
                let header = FeedStreamHeader::Known {
                    discovery_key: DiscoveryKey(rand::random()),
                    capability: rand::random(),
                };
                let mut frame = Vec::new();
                message::encode_stream_header(&header, &mut frame).ok()?;
                let (mut s, _r) = tokio::time::timeout(DIAL_GUARD, connection.open_bi())
                    .await
                    .ok()?
                    .ok()?;
                s.write_all(&frame).await.ok()?;
                bump(&tally.streams, 1);
            }
            Kind::Idle | Kind::Handshake => {}
        }
        while let Some(frame) = session.poll_transmit() {
            send.write_all(&frame).await.ok()?;
        }
        // Offers the victim makes (it forwards what other attackers offered) are
        // answered with nothing accepted, as a peer that wants none of them would.
        while let Some(event) = session.poll_event() {
            if let SessionEvent::Offered { offer, .. } = event {
                let _ = session.handle_offer_answer(offer, Ok(Vec::new()));
            }
        }
        while session.poll_stream().is_some() {}
        // Read what the victim says (and notice when it closes on us); an idle
        // attacker only waits for that.
        let read = recv.read(&mut buf);
        let got = if kind == Kind::Idle {
            read.await
        } else {
            match tokio::time::timeout(Duration::from_millis(1), read).await {
                Ok(got) => got,
                Err(_) => continue,
            }
        };
        match got {
            Ok(Some(n)) => session.handle_control_bytes(&buf[..n]),
            _ => return None,
        }
        session.handle_timeout(Instant::now());
        if session.end_reason().is_some() {
            return None;
        }
    }
}

/// What one honest run measured.
#[derive(Debug, Clone)]
struct Run {
    seconds: f64,
    b_seconds: f64,
    victim_dials: u64,
    during_attack: bool,
    victim_alive: bool,
    honest_connected: bool,
}

fn node_builder() -> replic8_node::NodeBuilder {
    Node::builder()
        .in_memory()
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .dht(false)
        .lan(false)
}

/// Dials `addr` from `node` until a connection is up (an honest node keeps dialing a
/// peer it was told to reach; a flooded table refuses it meanwhile) or `until`; how many
/// dials it took.
async fn connect_retrying(
    node: &NodeHandle,
    addr: SocketAddr,
    key: replic8_node::PeerKey,
    until: Instant,
) -> Result<u64, BenchError> {
    let mut dials = 0;
    loop {
        dials += 1;
        match node.connect(addr, Some(key)).await {
            Ok(_) => return Ok(dials),
            Err(e) if Instant::now() >= until => return Err(e.into()),
            Err(e) => {
                tracing::debug!(error = %e, "flood: an honest dial failed; dialing again");
                tokio::time::sleep(REDIAL_PAUSE).await;
            }
        }
    }
}

/// Waits until `node` holds `length` blocks of `feed`; seconds since `start`.
async fn held(node: &NodeHandle, feed: FeedKey, length: u64, start: Instant) -> Option<f64> {
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        if let Ok(info) = node.open_feed(feed).await {
            if info.length == length && info.stored == length {
                return Some(start.elapsed().as_secs_f64());
            }
        }
    }
}

/// One honest replication; with `attack` (attackers, seconds) under a flood.
async fn run_once(
    size: u64,
    block_size: usize,
    attack: Option<(usize, Duration)>,
    tally: &Rc<Tally>,
) -> Result<Run, BenchError> {
    let a = node_builder().spawn().await?;
    let victim = node_builder().spawn().await?;
    let b = node_builder().spawn().await?;
    let result = async {
        let feed = a.create_feed().await?;
        let mut pattern = Pattern::seeded(size);
        let mut left = size;
        while left > 0 {
            let mut batch = Vec::with_capacity(APPEND_BATCH);
            while left > 0 && batch.len() < APPEND_BATCH {
                let n = left.min(block_size as u64);
                batch.push(pattern.block(n as usize));
                left -= n;
            }
            a.append(feed, batch).await?;
        }
        let written = a.open_feed(feed).await?;
        a.share(NAMESPACE, feed, Headers::new()).await?;
        victim
            .open_namespace(NAMESPACE, None, replic8_node::NamespacePolicy::accept_all())
            .await?;
        b.open_namespace(NAMESPACE, None, replic8_node::NamespacePolicy::accept_all())
            .await?;

        let mut attackers = Vec::new();
        let mut attack_end = None;
        if let Some((count, seconds)) = attack {
            let deadline = Instant::now() + seconds;
            attack_end = Some(deadline);
            for i in 0..count {
                let tally = tally.clone();
                attackers.push(actix::spawn(attacker_task(
                    Kind::of(i),
                    attacker_ip(i),
                    victim.local_addr(),
                    deadline,
                    tally,
                )));
            }
            // The honest connects start once the attack is in: the first attacker
            // connection established (or refused), within a guard.
            let ramp = async {
                let mut tick = tokio::time::interval(POLL);
                while tally.established.get() + tally.refused.get() == 0 {
                    tick.tick().await;
                }
            };
            let _ = tokio::time::timeout(RAMP_GUARD, ramp).await;
        }

        let start = Instant::now();
        let until = start + SYNC_GUARD;
        // B's connection to the victim is inbound there, where the attackers compete for
        // the same slots: it is dialed in the background, and only reported.
        let b_to_victim = actix::spawn({
            let (b, addr, key) = (b.clone(), victim.local_addr(), victim.key());
            async move { connect_retrying(&b, addr, key, until).await }
        });
        let victim_dials = connect_retrying(&victim, a.local_addr(), a.key(), until).await?;
        connect_retrying(&b, a.local_addr(), a.key(), until).await?;
        let length = written.length;
        let both = async {
            let v = held(&victim, feed, length, start).await;
            let bb = held(&b, feed, length, start).await;
            (v, bb)
        };
        let (Some(seconds), Some(b_seconds)) =
            tokio::time::timeout(SYNC_GUARD, both).await.map_err(|_| {
                BenchError::Timeout(format!(
                    "the honest feed did not replicate within {SYNC_GUARD:?}"
                ))
            })?
        else {
            return Err(BenchError::Timeout(
                "the honest feed did not replicate".into(),
            ));
        };
        let during_attack = attack_end.is_some_and(|end| Instant::now() <= end);
        let copy = victim.open_feed(feed).await?;
        let want = written.head.as_ref().map(|h| h.tree_hash);
        if copy.head.as_ref().map(|h| h.tree_hash) != want || copy.stored != length {
            return Err(BenchError::Mismatch(format!(
                "the victim's copy: length {} stored {}, not A's head",
                copy.length, copy.stored
            )));
        }
        if let Some(end) = attack_end {
            tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
        }
        for task in attackers {
            let _ = task.await;
        }
        let _ = b_to_victim.await;
        let (victim_alive, honest_connected) = match victim.peers().await {
            Ok(peers) => {
                let keys: Vec<_> = peers.iter().map(|p| p.key).collect();
                (true, keys.contains(&a.key()) && keys.contains(&b.key()))
            }
            Err(_) => (false, false),
        };
        Ok(Run {
            seconds,
            b_seconds,
            victim_dials,
            during_attack,
            victim_alive,
            honest_connected,
        })
    }
    .await;
    b.close().await;
    victim.close().await;
    a.close().await;
    result
}

/// Runs `flood`: the honest run alone, then under attack; one row.
pub(crate) async fn run(options: &BenchOptions) -> Result<Row, BenchError> {
    let size = options.size.unwrap_or(DEFAULT_SIZE);
    let block_size = options.block_size.unwrap_or(DEFAULT_BLOCK);
    let attackers = options.attackers.unwrap_or(DEFAULT_ATTACKERS);
    let seconds = options.seconds.unwrap_or(DEFAULT_SECONDS);
    if size == 0 || block_size == 0 || block_size > replic8_store::MAX_BLOCK_SIZE {
        return Err(BenchError::Options(format!(
            "flood: size must be more than 0 and block size 1..={}",
            replic8_store::MAX_BLOCK_SIZE
        )));
    }
    let blocks = size.div_ceil(block_size as u64);
    let tally = Rc::new(Tally::default());
    let baseline = run_once(size, block_size, None, &tally).await?;
    reset_peak_rss();
    let attacked = run_once(
        size,
        block_size,
        Some((attackers, Duration::from_secs(seconds))),
        &tally,
    )
    .await?;
    let peak = peak_rss_bytes(None);
    let baseline_mb = size as f64 / 1e6 / baseline.seconds.max(1e-9);
    let attacked_mb = size as f64 / 1e6 / attacked.seconds.max(1e-9);
    Ok(Row::new("flood", size, blocks, attacked.seconds, peak)
        .with("baseline_seconds", round(baseline.seconds, 3))
        .with("baseline_mb_per_s", round(baseline_mb, 3))
        .with("ratio", round(attacked_mb / baseline_mb.max(1e-9), 4))
        .with("honest_b_seconds", round(attacked.b_seconds, 3))
        .with("victim_dials_to_a", attacked.victim_dials)
        .with("finished_during_attack", attacked.during_attack)
        .with("block_size", block_size)
        .with("verified", true)
        .with("attackers", attackers)
        .with("attack_seconds", seconds)
        .with("attacker_connections_attempted", tally.attempted.get())
        .with("attacker_connections_established", tally.established.get())
        .with("attacker_connections_refused", tally.refused.get())
        .with("junk_feeds_offered", tally.junk_feeds.get())
        .with("unoffered_streams_opened", tally.streams.get())
        .with(
            "victim_alive",
            attacked.victim_alive && baseline.victim_alive,
        )
        .with(
            "honest_connected",
            attacked.honest_connected && baseline.honest_connected,
        )
        .with(
            "rss_scope",
            "process: victim, honest A and B, and the attackers",
        ))
}
