//! [`KrpcDht`]: the UDP driver of [`DhtCore`], and the [`DhtBackend`] on it.
//!
//! One UDP socket per address family, one tokio task that owns them and the core. The
//! task waits for whichever comes first: a datagram (`handle_datagram`), a command from
//! a [`KrpcDht`] handle, or the core's next timer (`poll_timeout`, no polling floor);
//! after each it sends what the core wants sent (`poll_transmit`) and carries out its
//! events (`poll_event`): peers go to the lookup's stream, `LookupDone` ends a lookup or
//! resolves an announce, `IdChanged` rewrites the id file.
//!
//! The task also keeps the node in the network: it bootstraps at start, again (with
//! backoff) whenever the routing tables run low, and holds a command that finds no node
//! while a bootstrap runs until that bootstrap ends. In [`DhtMode::Auto`] it starts
//! read-only and turns server at the first query from an address it never sent to.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::config::{Bootstrap, DhtConfig, DhtMode, PUBLIC_BOOTSTRAP};
use crate::dht::{BoxFuture, DhtBackend, PeerStream};
use crate::error::{BackendError, SpawnError};
use crate::krpc::routing::K;
use crate::krpc::{DhtCore, DhtCoreConfig, DhtEvent, DhtStats, Id, LookupId, StartError};

/// The port BitTorrent clients use for the DHT by default; taken when free and no port
/// is configured, so that restarts keep the address others saved.
pub const DEFAULT_PORT: u16 = 6881;

/// Fewer nodes than this in the routing tables (both families together) and the driver
/// bootstraps again: one bucket's worth, the least a lookup needs to start well.
pub const LOW_WATER: usize = K;

/// How often the driver checks whether the tables ran low.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// First wait before bootstrapping again after a bootstrap that left the tables low;
/// doubled each time up to [`REBOOTSTRAP_MAX`].
pub const REBOOTSTRAP_MIN: Duration = Duration::from_secs(5);

/// Longest wait between two bootstraps while the tables stay low.
pub const REBOOTSTRAP_MAX: Duration = Duration::from_secs(300);

/// How often the routing tables are saved to `DhtConfig::nodes_file`.
pub const SAVE_EVERY: Duration = Duration::from_secs(5 * 60);

/// Most node addresses saved and read back: a full table of a node in a large network
/// holds about 20 buckets of 8 per family.
pub const MAX_SAVED_NODES: usize = 400;

/// How long resolving one public bootstrap name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Commands queued by the handles; a full queue fails the command at once.
const COMMAND_QUEUE: usize = 1024;

/// Commands held while a bootstrap runs or every lookup slot is taken.
const MAX_WAITING: usize = 1024;

/// Addresses we sent to, remembered to tell an unsolicited query (proof that others
/// reach us) from an answer through a NAT's pinhole.
const MAX_CONTACTED: usize = 8192;

/// How long a NAT keeps a UDP mapping open after our last datagram (RFC 4787 asks for
/// at least 2 min); a query from an address we sent to within this is not proof.
const PINHOLE: Duration = Duration::from_secs(300);

/// Infohashes whose found-peer counts are kept for [`DhtStatus::peers_found`].
const MAX_COUNTED_INFOHASHES: usize = 1024;

/// Largest datagram read; the KRPC decoder refuses more than 4 KiB anyway.
const RECV_BUFFER: usize = 4096;

/// What the DHT node is and has done, from [`KrpcDht::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtStatus {
    /// Our node id.
    pub id: Id,
    /// The local addresses of the sockets.
    pub addrs: Vec<SocketAddr>,
    /// Answering queries (server), or read-only.
    pub server: bool,
    /// Our external IPs, once enough nodes agreed on them.
    pub external: Vec<IpAddr>,
    /// The core's counters.
    pub stats: DhtStats,
    /// Datagrams the sockets refused to send.
    pub send_errors: u64,
    /// Bootstraps started (the first included).
    pub bootstraps: u64,
    /// Nodes in the IPv4 routing table.
    pub nodes_v4: usize,
    /// Nodes in the IPv6 routing table.
    pub nodes_v6: usize,
    /// Peers others announced to us, over all infohashes.
    pub peers_stored: usize,
    /// Lookups running now.
    pub lookups: usize,
    /// Per infohash we looked up or announced: peers found (summed over lookups, each
    /// peer once per lookup), for the most recent [`MAX_COUNTED_INFOHASHES`] infohashes.
    pub peers_found: Vec<([u8; 20], u64)>,
}

/// What a handle asks the task.
#[derive(Debug)]
enum Command {
    Announce {
        info_hash: Id,
        port: u16,
        reply: oneshot::Sender<Result<usize, BackendError>>,
    },
    Lookup {
        info_hash: Id,
        peers: mpsc::UnboundedSender<Vec<SocketAddr>>,
    },
    Status {
        reply: oneshot::Sender<DhtStatus>,
    },
    Bootstrapped {
        reply: oneshot::Sender<usize>,
    },
    SaveNodes {
        reply: oneshot::Sender<Result<usize, String>>,
    },
    Seeds(Vec<SocketAddr>),
}

/// What a running lookup is for.
#[derive(Debug)]
enum Op {
    Announce(oneshot::Sender<Result<usize, BackendError>>),
    Lookup(mpsc::UnboundedSender<Vec<SocketAddr>>),
    Bootstrap,
}

/// Our DHT node: the handle to the task that runs a [`DhtCore`] on UDP sockets. Clones
/// share the node; the task stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct KrpcDht {
    commands: mpsc::Sender<Command>,
    addrs: Vec<SocketAddr>,
    _task: Arc<AbortOnDropHandle<()>>,
}

impl KrpcDht {
    /// Binds the sockets, resolves the bootstrap list, reads or creates the node id and
    /// starts the node's task (on the current tokio runtime). A bad bootstrap entry, a
    /// port in use or an unreadable id file is a [`SpawnError`].
    pub async fn spawn(config: &DhtConfig) -> Result<KrpcDht, SpawnError> {
        let (v4, v6) = bind(config)?;
        let seeds = match &config.bootstrap {
            // Resolved by the task: a host without DNS must not hold up the start.
            Bootstrap::Public => Vec::new(),
            Bootstrap::None => Vec::new(),
            Bootstrap::Nodes(entries) => {
                resolve_bootstrap(entries, v4.is_some(), v6.is_some()).await?
            }
        };
        let mut seeds = seeds;
        if let Some(path) = &config.nodes_file {
            // Saved neighbours first; a missing or unreadable file is no error.
            let mut saved = read_nodes(path, v4.is_some(), v6.is_some()).await;
            saved.retain(|a| !seeds.contains(a));
            saved.extend(seeds);
            seeds = saved;
        }
        let id = match (config.node_id, &config.id_file) {
            (Some(id), Some(path)) => {
                write_id(path, Id(id)).await?;
                Id(id)
            }
            (Some(id), None) => Id(id),
            (None, Some(path)) => match read_id(path).await? {
                Some(id) => id,
                None => {
                    let id = Id(rand::random());
                    write_id(path, id).await?;
                    id
                }
            },
            (None, None) => Id(rand::random()),
        };
        Self::start_on(config, v4, v6, seeds, id)
    }

    /// Starts the task on sockets bound already (a test network binds all of them
    /// before any node starts, so each can bootstrap from the others).
    pub(crate) fn start_on(
        config: &DhtConfig,
        v4: Option<StdUdpSocket>,
        v6: Option<StdUdpSocket>,
        seeds: Vec<SocketAddr>,
        id: Id,
    ) -> Result<KrpcDht, SpawnError> {
        let into_tokio = |socket: StdUdpSocket| -> Result<(UdpSocket, SocketAddr), SpawnError> {
            let addr = socket.local_addr().map_err(|source| SpawnError::DhtBind {
                addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                source,
            })?;
            socket
                .set_nonblocking(true)
                .and_then(|()| UdpSocket::from_std(socket))
                .map(|s| (s, addr))
                .map_err(|source| SpawnError::DhtBind { addr, source })
        };
        let v4 = v4.map(into_tokio).transpose()?;
        let v6 = v6.map(into_tokio).transpose()?;
        let addrs: Vec<SocketAddr> = v4.iter().chain(v6.iter()).map(|(_, a)| *a).collect();
        let server = config.mode == DhtMode::Server;
        let now = Instant::now();
        let core_config = DhtCoreConfig {
            read_only: !server,
            ipv4: v4.is_some(),
            ipv6: v6.is_some(),
            restrict_ips: config.restrict_ips,
            rate_limit: config.rate_limit,
            ..DhtCoreConfig::default()
        };
        let core = DhtCore::new(core_config, id, rand::random(), now);
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let span = tracing::info_span!("dht", me = %addrs.first().map(|a| a.port()).unwrap_or(0));
        info!(parent: &span, id = %id.fmt_short(), ?addrs, mode = ?config.mode, seeds = seeds.len(), "dht node starting");
        let driver = Driver {
            core,
            v4: v4.map(|(s, _)| s),
            v6: v6.map(|(s, _)| s),
            addrs: addrs.clone(),
            commands: rx,
            handle: commands.downgrade(),
            mode: config.mode,
            bootstrap: config.bootstrap.clone(),
            seeds,
            id_file: config.id_file.clone(),
            nodes_file: config.nodes_file.clone(),
            next_save: None,
            ops: HashMap::new(),
            waiting: VecDeque::new(),
            bootstrapping: None,
            resolving: config.bootstrap == Bootstrap::Public,
            bootstrap_waiters: Vec::new(),
            bootstraps: 0,
            next_check: now,
            rebootstrap_wait: REBOOTSTRAP_MIN,
            next_bootstrap: now,
            contacted: HashMap::new(),
            send_errors: 0,
            found: HashMap::new(),
            found_order: VecDeque::new(),
        };
        let task = tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
        Ok(KrpcDht {
            commands,
            addrs,
            _task: Arc::new(AbortOnDropHandle::new(task)),
        })
    }

    /// The local addresses of the sockets (IPv4 first).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Counters, table sizes and peers found; `None` if the task stopped.
    pub async fn status(&self) -> Option<DhtStatus> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Status { reply }).await.ok()?;
        rx.await.ok()
    }

    /// Resolves once no bootstrap is running (the first one ended), with the number of
    /// nodes in the tables then; `None` if the task stopped.
    pub async fn bootstrapped(&self) -> Option<usize> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Bootstrapped { reply })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Saves the routing tables' addresses to `DhtConfig::nodes_file` now (as the node
    /// does after its first bootstrap and every [`SAVE_EVERY`]); resolves with the number
    /// saved once written. Without a file, or with empty tables, nothing is written.
    pub async fn save_nodes(&self) -> Result<usize, String> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::SaveNodes { reply })
            .await
            .map_err(|_| "dht node stopped".to_string())?;
        rx.await.map_err(|_| "dht node stopped".to_string())?
    }

    /// Announces `port` for `info_hash`; resolves with the number of nodes that stored
    /// it, or an error if none did.
    pub async fn announce_peer(
        &self,
        info_hash: [u8; 20],
        port: u16,
    ) -> Result<usize, BackendError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .try_send(Command::Announce {
                info_hash: Id(info_hash),
                port,
                reply,
            })
            .map_err(|e| BackendError::Announce(format!("dht node busy or stopped: {e}")))?;
        rx.await.unwrap_or_else(|_| {
            Err(BackendError::Announce(
                "dht node stopped or too busy".into(),
            ))
        })
    }
}

impl DhtBackend for KrpcDht {
    fn announce(&self, infohash: [u8; 20], port: u16) -> BoxFuture<Result<(), BackendError>> {
        let dht = self.clone();
        Box::pin(async move { dht.announce_peer(infohash, port).await.map(|_| ()) })
    }

    fn lookup(&self, infohash: [u8; 20]) -> PeerStream {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // A full queue drops the sender: the stream then ends at once, empty.
        let _ = self.commands.try_send(Command::Lookup {
            info_hash: Id(infohash),
            peers: tx,
        });
        Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    fn status(&self) -> BoxFuture<Option<DhtStatus>> {
        let dht = self.clone();
        Box::pin(async move { KrpcDht::status(&dht).await })
    }
}

/// The task: the core, its sockets, and what its lookups are for.
struct Driver {
    core: DhtCore,
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    addrs: Vec<SocketAddr>,
    commands: mpsc::Receiver<Command>,
    /// To send resolved seeds back to ourselves without keeping the task alive.
    handle: mpsc::WeakSender<Command>,
    mode: DhtMode,
    bootstrap: Bootstrap,
    seeds: Vec<SocketAddr>,
    id_file: Option<PathBuf>,
    nodes_file: Option<PathBuf>,
    /// When the tables are saved next; `None` until the first bootstrap ended.
    next_save: Option<Instant>,
    ops: HashMap<LookupId, Op>,
    /// Commands that found no node while a bootstrap ran, or no free lookup slot.
    waiting: VecDeque<Command>,
    bootstrapping: Option<LookupId>,
    /// The public bootstrap names are being resolved for the first bootstrap.
    resolving: bool,
    /// Waiting for the running bootstrap to end.
    bootstrap_waiters: Vec<oneshot::Sender<usize>>,
    bootstraps: u64,
    next_check: Instant,
    rebootstrap_wait: Duration,
    next_bootstrap: Instant,
    contacted: HashMap<SocketAddr, Instant>,
    send_errors: u64,
    found: HashMap<Id, u64>,
    found_order: VecDeque<Id>,
}

impl Driver {
    async fn run(mut self) {
        let mut buf4 = vec![0u8; RECV_BUFFER];
        let mut buf6 = vec![0u8; RECV_BUFFER];
        if self.resolving {
            // Saved neighbours (if any) start the bootstrap while the names resolve.
            self.resolve_public();
        }
        self.start_bootstrap(Instant::now());
        loop {
            self.flush().await;
            let deadline = self
                .core
                .poll_timeout()
                .map_or(self.next_check, |t| t.min(self.next_check));
            let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
            tokio::select! {
                received = recv(self.v4.as_ref(), &mut buf4) => self.received(received, &buf4),
                received = recv(self.v6.as_ref(), &mut buf6) => self.received(received, &buf6),
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command, Instant::now()),
                    None => break,
                },
                () = sleep => {
                    let now = Instant::now();
                    self.core.handle_timeout(now);
                    if now >= self.next_check {
                        self.check(now);
                    }
                }
            }
        }
        debug!("dht node stopped");
    }

    fn received(&mut self, received: io::Result<(usize, SocketAddr)>, buf: &[u8]) {
        let (len, from) = match received {
            Ok(r) => r,
            Err(error) => {
                // ICMP port unreachable surfaces here on some systems: not fatal.
                debug!(%error, "dht recv");
                return;
            }
        };
        let from = unmap(from);
        let before = self.core.stats().queries_in;
        self.core.handle_datagram(from, &buf[..len], Instant::now());
        if self.mode == DhtMode::Auto
            && self.core.config().read_only
            && self.core.stats().queries_in > before
        {
            let solicited = self
                .contacted
                .get(&from)
                .is_some_and(|at| at.elapsed() < PINHOLE);
            if !solicited {
                info!(%from, "unsolicited query reached us: answering queries from now on");
                self.core.set_read_only(false);
            }
        }
    }

    /// Sends the core's datagrams and carries out its events.
    async fn flush(&mut self) {
        loop {
            let mut moved = false;
            while let Some(transmit) = self.core.poll_transmit() {
                moved = true;
                if self.mode == DhtMode::Auto && self.core.config().read_only {
                    self.note_contacted(transmit.to);
                }
                let socket = if transmit.to.is_ipv6() {
                    self.v6.as_ref()
                } else {
                    self.v4.as_ref()
                };
                let Some(socket) = socket else { continue };
                if let Err(error) = socket.send_to(&transmit.payload, transmit.to).await {
                    self.send_errors += 1;
                    debug!(to = %transmit.to, %error, "dht send");
                }
            }
            while let Some(event) = self.core.poll_event() {
                moved = true;
                self.event(event);
            }
            if !moved {
                break;
            }
        }
    }

    fn note_contacted(&mut self, to: SocketAddr) {
        let now = Instant::now();
        if self.contacted.len() >= MAX_CONTACTED && !self.contacted.contains_key(&to) {
            self.contacted
                .retain(|_, at| now.duration_since(*at) < PINHOLE);
            if self.contacted.len() >= MAX_CONTACTED {
                return;
            }
        }
        self.contacted.insert(to, now);
    }

    fn event(&mut self, event: DhtEvent) {
        match event {
            DhtEvent::Peers {
                lookup,
                info_hash,
                peers,
            } => {
                self.count_found(info_hash, peers.len() as u64);
                if let Some(Op::Lookup(tx)) = self.ops.get(&lookup) {
                    if tx.send(peers).is_err() {
                        // Nobody listens any more.
                        self.ops.remove(&lookup);
                        self.core.cancel(lookup);
                    }
                }
            }
            DhtEvent::LookupDone {
                lookup, announced, ..
            } => {
                match self.ops.remove(&lookup) {
                    Some(Op::Announce(reply)) => {
                        let result = if announced > 0 {
                            Ok(announced)
                        } else {
                            Err(BackendError::Announce(
                                "no dht node stored the announce".into(),
                            ))
                        };
                        let _ = reply.send(result);
                    }
                    Some(Op::Lookup(_)) => {}
                    Some(Op::Bootstrap) => {
                        self.bootstrapping = None;
                        let nodes = self.nodes();
                        debug!(nodes, "bootstrap done");
                        if nodes >= LOW_WATER {
                            self.rebootstrap_wait = REBOOTSTRAP_MIN;
                        }
                        for waiter in self.bootstrap_waiters.drain(..) {
                            let _ = waiter.send(nodes);
                        }
                        if self.next_save.is_none() {
                            self.save_nodes(Instant::now(), None);
                        }
                    }
                    None => {}
                }
                // A slot is free, or the tables have what the bootstrap found.
                let now = Instant::now();
                for command in std::mem::take(&mut self.waiting) {
                    self.command(command, now);
                }
            }
            DhtEvent::ExternalAddress { ip } => info!(%ip, "external address"),
            DhtEvent::IdChanged { id } => {
                info!(id = %id.fmt_short(), "node id changed (BEP 42)");
                if let Some(path) = self.id_file.clone() {
                    tokio::spawn(async move {
                        if let Err(error) = write_id(&path, id).await {
                            warn!(%error, "cannot persist the dht node id");
                        }
                    });
                }
            }
        }
    }

    fn count_found(&mut self, info_hash: Id, n: u64) {
        if let Some(count) = self.found.get_mut(&info_hash) {
            *count += n;
            return;
        }
        if self.found_order.len() >= MAX_COUNTED_INFOHASHES {
            if let Some(old) = self.found_order.pop_front() {
                self.found.remove(&old);
            }
        }
        self.found.insert(info_hash, n);
        self.found_order.push_back(info_hash);
    }

    fn nodes(&self) -> usize {
        self.core.table(false).len() + self.core.table(true).len()
    }

    fn command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Bootstrapped { reply } => {
                if self.bootstrapping.is_some() || self.resolving {
                    self.bootstrap_waiters.push(reply);
                } else {
                    let _ = reply.send(self.nodes());
                }
            }
            Command::SaveNodes { reply } => self.save_nodes(now, Some(reply)),
            Command::Seeds(seeds) => {
                let first = std::mem::take(&mut self.resolving);
                if !seeds.is_empty() {
                    for seed in seeds {
                        if !self.seeds.contains(&seed) {
                            self.seeds.push(seed);
                        }
                    }
                    self.start_bootstrap(now);
                }
                if first && self.bootstrapping.is_none() {
                    // Nothing to bootstrap from: what waited for it fails or ends now.
                    for waiter in self.bootstrap_waiters.drain(..) {
                        let _ = waiter.send(0);
                    }
                    for command in std::mem::take(&mut self.waiting) {
                        self.command(command, now);
                    }
                }
            }
            Command::Announce {
                info_hash,
                port,
                reply,
            } => {
                if reply.is_closed() {
                    return;
                }
                if self.first_bootstrap_running() {
                    self.hold_for_bootstrap(Command::Announce {
                        info_hash,
                        port,
                        reply,
                    });
                    return;
                }
                match self.core.announce(info_hash, Some(port), now) {
                    Ok(id) => {
                        self.count_found(info_hash, 0);
                        self.ops.insert(id, Op::Announce(reply));
                    }
                    Err(error) => {
                        let command = Command::Announce {
                            info_hash,
                            port,
                            reply,
                        };
                        if let Some(Command::Announce { reply, .. }) =
                            self.hold(command, &error, now)
                        {
                            let _ = reply.send(Err(BackendError::Announce(error.to_string())));
                        }
                    }
                }
            }
            Command::Lookup { info_hash, peers } => {
                if peers.is_closed() {
                    return;
                }
                if self.first_bootstrap_running() {
                    self.hold_for_bootstrap(Command::Lookup { info_hash, peers });
                    return;
                }
                match self.core.get_peers(info_hash, now) {
                    Ok(id) => {
                        self.count_found(info_hash, 0);
                        self.ops.insert(id, Op::Lookup(peers));
                    }
                    Err(error) => {
                        // Dropping the sender ends the stream, empty.
                        let _ = self.hold(Command::Lookup { info_hash, peers }, &error, now);
                    }
                }
            }
        }
    }

    /// Whether the bootstrap at start still runs. Lookups wait for it: started on the
    /// first answers, a lookup would miss the nodes still coming (a dual-stack node would
    /// announce on the family whose seeds answered first only).
    fn first_bootstrap_running(&self) -> bool {
        self.resolving || (self.bootstraps == 1 && self.bootstrapping.is_some())
    }

    /// Holds a command until the running bootstrap ends (dropped, so failed or ended
    /// empty, when too many wait).
    fn hold_for_bootstrap(&mut self, command: Command) {
        if self.waiting.len() < MAX_WAITING {
            self.waiting.push_back(command);
        }
    }

    /// Holds a command that could not start until a bootstrap or a lookup ends;
    /// gives it back if it cannot wait.
    fn hold(&mut self, command: Command, error: &StartError, now: Instant) -> Option<Command> {
        let can_wait = match error {
            StartError::TooManyLookups { .. } => true,
            StartError::NoNodes => {
                if self.bootstrapping.is_none() {
                    self.start_bootstrap(now);
                }
                self.bootstrapping.is_some()
            }
        };
        if can_wait && self.waiting.len() < MAX_WAITING {
            self.waiting.push_back(command);
            None
        } else {
            Some(command)
        }
    }

    /// Bootstraps through the seeds and whatever the tables hold, unless one runs.
    fn start_bootstrap(&mut self, now: Instant) {
        if self.bootstrapping.is_some() {
            return;
        }
        match self.core.bootstrap(&self.seeds, now) {
            Ok(id) => {
                self.bootstraps += 1;
                self.bootstrapping = Some(id);
                self.ops.insert(id, Op::Bootstrap);
            }
            Err(error) => debug!(%error, "cannot bootstrap"),
        }
    }

    /// Bootstraps again when the tables ran low (with backoff); re-resolves the public
    /// bootstrap names when no seed is left.
    fn check(&mut self, now: Instant) {
        self.next_check = now + CHECK_EVERY;
        if self.next_save.is_some_and(|at| now >= at) {
            self.save_nodes(now, None);
        }
        if self.nodes() >= LOW_WATER || self.bootstrapping.is_some() || now < self.next_bootstrap {
            return;
        }
        self.next_bootstrap = now + self.rebootstrap_wait;
        self.rebootstrap_wait = (self.rebootstrap_wait * 2).min(REBOOTSTRAP_MAX);
        debug!(
            nodes = self.nodes(),
            "routing tables low: bootstrapping again"
        );
        self.start_bootstrap(now);
        if self.bootstrap == Bootstrap::Public {
            // The names may point elsewhere now, or resolve at last (offline at start).
            self.resolve_public();
        }
    }

    /// Resolves the public bootstrap names in a task, which sends them back as seeds.
    fn resolve_public(&self) {
        let (v4, v6) = (self.v4.is_some(), self.v6.is_some());
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let seeds = resolve_public(v4, v6).await;
            if let Some(handle) = handle.upgrade() {
                let _ = handle.send(Command::Seeds(seeds)).await;
            }
        });
    }

    /// Writes the tables' addresses to `nodes_file` (in a task: file I/O stays off the
    /// loop), if there is one and the tables are not empty.
    fn save_nodes(&mut self, now: Instant, reply: Option<oneshot::Sender<Result<usize, String>>>) {
        self.next_save = Some(now + SAVE_EVERY);
        let addrs: Vec<SocketAddr> = [false, true]
            .into_iter()
            .flat_map(|v6| self.core.table(v6).entries().map(|e| e.node.addr))
            .take(MAX_SAVED_NODES)
            .collect();
        let Some(path) = self.nodes_file.clone().filter(|_| !addrs.is_empty()) else {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(0));
            }
            return;
        };
        tokio::spawn(async move {
            let text: String = addrs.iter().map(|a| format!("{a}\n")).collect();
            let result = write_atomic(&path, text).await;
            if let Err(error) = &result {
                warn!(%error, path = %path.display(), "cannot save the dht nodes");
            }
            if let Some(reply) = reply {
                let _ = reply.send(result.map(|()| addrs.len()).map_err(|e| e.to_string()));
            }
        });
    }

    fn status(&self) -> DhtStatus {
        let mut peers_found: Vec<([u8; 20], u64)> =
            self.found.iter().map(|(id, n)| (id.0, *n)).collect();
        peers_found.sort();
        DhtStatus {
            id: self.core.id(),
            addrs: self.addrs.clone(),
            server: !self.core.config().read_only,
            external: [false, true]
                .into_iter()
                .filter_map(|v6| self.core.external_ip(v6))
                .collect(),
            stats: self.core.stats(),
            send_errors: self.send_errors,
            bootstraps: self.bootstraps,
            nodes_v4: self.core.table(false).len(),
            nodes_v6: self.core.table(true).len(),
            peers_stored: self.core.peer_store().len(),
            lookups: self.core.lookups(),
            peers_found,
        }
    }
}

/// Receives on `socket`, or never if there is none.
async fn recv(socket: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Binds the sockets `config` asks for.
fn bind(config: &DhtConfig) -> Result<(Option<StdUdpSocket>, Option<StdUdpSocket>), SpawnError> {
    if config.bind.is_none() && config.bind_v6.is_none() {
        return Err(SpawnError::DhtNoSocket);
    }
    let port = config.port.unwrap_or(DEFAULT_PORT);
    let fallback = config.port.is_none();
    let v4 = match config.bind {
        Some(ip) => Some(bind_one(IpAddr::V4(ip), port, fallback)?),
        None => None,
    };
    let v6 = match config.bind_v6 {
        Some(ip) => {
            // Same port as the IPv4 socket when we may choose (libtorrent does the same).
            let (port, fallback) = match (&v4, config.port) {
                (Some(v4), None | Some(0)) => match v4.local_addr() {
                    Ok(addr) => (addr.port(), true),
                    Err(_) => (port, fallback),
                },
                _ => (port, fallback),
            };
            match bind_one(IpAddr::V6(ip), port, fallback) {
                Ok(socket) => Some(socket),
                Err(error) if v4.is_some() && ip == Ipv6Addr::UNSPECIFIED => {
                    warn!(%error, "no IPv6 dht socket: running on IPv4 alone");
                    None
                }
                Err(error) => return Err(error),
            }
        }
        None => None,
    };
    Ok((v4, v6))
}

/// Binds one socket at `ip:port`, or at any port if that fails and `fallback` is set.
fn bind_one(ip: IpAddr, port: u16, fallback: bool) -> Result<StdUdpSocket, SpawnError> {
    let addr = SocketAddr::new(ip, port);
    match bind_socket(addr) {
        Ok(socket) => Ok(socket),
        Err(_) if fallback && port != 0 => {
            bind_socket(SocketAddr::new(ip, 0)).map_err(|source| SpawnError::DhtBind {
                addr: SocketAddr::new(ip, 0),
                source,
            })
        }
        Err(source) => Err(SpawnError::DhtBind { addr, source }),
    }
}

/// A UDP socket at `addr`; an IPv6 one takes IPv6 only, so that an IPv4 socket can hold
/// the same port.
fn bind_socket(addr: SocketAddr) -> io::Result<StdUdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Resolves `host:port` entries, keeping the addresses of the families we run; fails on
/// the first entry that is malformed, does not resolve, or has no such address.
pub(crate) async fn resolve_bootstrap(
    entries: &[String],
    v4: bool,
    v6: bool,
) -> Result<Vec<SocketAddr>, SpawnError> {
    let mut out = Vec::new();
    for entry in entries {
        let syntax = || SpawnError::BootstrapSyntax {
            entry: entry.clone(),
        };
        let (host, port) = entry.rsplit_once(':').ok_or_else(syntax)?;
        let port: u16 = port.parse().map_err(|_| syntax())?;
        if host.is_empty() {
            return Err(syntax());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let resolved = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| SpawnError::BootstrapResolve {
                entry: entry.clone(),
                source,
            })?;
        let before = out.len();
        out.extend(
            resolved
                .map(unmap)
                .filter(|a| (a.is_ipv4() && v4) || (a.is_ipv6() && v6)),
        );
        if out.len() == before {
            return Err(SpawnError::BootstrapNoAddress {
                entry: entry.clone(),
            });
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The public bootstrap nodes that resolve now (none when offline: the node then
/// tries again when it checks its tables).
async fn resolve_public(v4: bool, v6: bool) -> Vec<SocketAddr> {
    let all = futures::future::join_all(PUBLIC_BOOTSTRAP.iter().map(|entry| async move {
        let entries = [entry.to_string()];
        // Bounded: a resolver that hangs must not keep the node from its saved nodes.
        tokio::time::timeout(RESOLVE_TIMEOUT, resolve_bootstrap(&entries, v4, v6)).await
    }))
    .await;
    let mut out = Vec::new();
    for result in all {
        match result {
            Ok(Ok(addrs)) => out.extend(addrs),
            Ok(Err(error)) => debug!(%error, "public bootstrap node"),
            Err(_) => debug!("public bootstrap node: resolving timed out"),
        }
    }
    out
}

/// Reads the node id from `path`: `None` if there is no file.
async fn read_id(path: &Path) -> Result<Option<Id>, SpawnError> {
    let bad = |reason: String| SpawnError::DhtIdFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let bytes = hex::decode(text.trim()).map_err(|e| bad(format!("not hex: {e}")))?;
    let id: [u8; 20] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| bad(format!("{} bytes, not 20", b.len())))?;
    Ok(Some(Id(id)))
}

/// Writes the node id to `path`.
async fn write_id(path: &Path, id: Id) -> Result<(), SpawnError> {
    write_atomic(path, format!("{}\n", hex::encode(id.0)))
        .await
        .map_err(|e| SpawnError::DhtIdFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Writes `text` to `path` through a temporary file, so a crash leaves the old or the
/// new content, never half of one.
async fn write_atomic(path: &Path, text: String) -> io::Result<()> {
    // A name of its own per write: two writes at once must not rename each other's.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{:08x}.tmp", rand::random::<u32>()));
    tokio::fs::write(&tmp, text).await?;
    tokio::fs::rename(&tmp, path).await
}

/// The saved node addresses of the families we run (at most [`MAX_SAVED_NODES`]); lines
/// that are not socket addresses are skipped, a missing file is an empty list.
async fn read_nodes(path: &Path, v4: bool, v6: bool) -> Vec<SocketAddr> {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => {
            warn!(%error, path = %path.display(), "cannot read the saved dht nodes");
            return Vec::new();
        }
    };
    text.lines()
        .filter_map(|line| line.trim().parse::<SocketAddr>().ok())
        .filter(|a| (a.is_ipv4() && v4) || (a.is_ipv6() && v6))
        .take(MAX_SAVED_NODES)
        .collect()
}
