//! The task: the loop over datagrams, commands and timers, the core's events, and
//! keeping the node in the network (bootstraps, saved nodes, auto mode).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::command::{Command, DhtStatus, MAX_COUNTED_INFOHASHES};
use super::files::{write_atomic, write_id, MAX_SAVED_NODES};
use super::port::DriverIo;
use super::resolve::resolve_public;
use super::socket::unmap;
use crate::config::{Bootstrap, DhtMode};
use crate::error::BackendError;
use crate::krpc::routing::K;
use crate::krpc::{DhtCore, DhtEvent, Id, LookupId, StartError};

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

/// Commands held while a bootstrap runs or every lookup slot is taken.
const MAX_WAITING: usize = 1024;

/// Addresses we sent to, remembered to tell an unsolicited query (proof that others
/// reach us) from an answer through a NAT's pinhole.
const MAX_CONTACTED: usize = 8192;

/// How long a NAT keeps a UDP mapping open after our last datagram (RFC 4787 asks for
/// at least 2 min); a query from an address we sent to within this is not proof.
const PINHOLE: Duration = Duration::from_secs(300);

/// Largest datagram read; the KRPC decoder refuses more than 4 KiB anyway.
pub(super) const RECV_BUFFER: usize = 4096;

/// What a running lookup is for.
#[derive(Debug)]
pub(super) enum Op {
    Announce(oneshot::Sender<Result<usize, BackendError>>),
    Lookup(mpsc::UnboundedSender<Vec<SocketAddr>>),
    Bootstrap,
}

/// The task: the core, its sockets, and what its lookups are for.
pub(super) struct Driver {
    pub(super) core: DhtCore,
    pub(super) io: DriverIo,
    pub(super) addrs: Vec<SocketAddr>,
    pub(super) commands: mpsc::Receiver<Command>,
    /// To send resolved seeds back to ourselves without keeping the task alive.
    pub(super) handle: mpsc::WeakSender<Command>,
    pub(super) mode: DhtMode,
    pub(super) bootstrap: Bootstrap,
    pub(super) seeds: Vec<SocketAddr>,
    pub(super) id_file: Option<PathBuf>,
    pub(super) nodes_file: Option<PathBuf>,
    /// When the tables are saved next; `None` until the first bootstrap ended.
    pub(super) next_save: Option<Instant>,
    pub(super) ops: HashMap<LookupId, Op>,
    /// Commands that found no node while a bootstrap ran, or no free lookup slot.
    pub(super) waiting: VecDeque<Command>,
    pub(super) bootstrapping: Option<LookupId>,
    /// The public bootstrap names are being resolved for the first bootstrap.
    pub(super) resolving: bool,
    /// Waiting for the running bootstrap to end.
    pub(super) bootstrap_waiters: Vec<oneshot::Sender<usize>>,
    pub(super) bootstraps: u64,
    pub(super) next_check: Instant,
    pub(super) rebootstrap_wait: Duration,
    pub(super) next_bootstrap: Instant,
    pub(super) contacted: HashMap<SocketAddr, Instant>,
    pub(super) send_errors: u64,
    pub(super) found: HashMap<Id, u64>,
    pub(super) found_order: VecDeque<Id>,
}

impl Driver {
    pub(super) async fn run(mut self) {
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
                received = self.io.recv() => self.received(received),
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

    fn received(&mut self, received: io::Result<(bytes::Bytes, SocketAddr)>) {
        let (datagram, from) = match received {
            Ok(r) => r,
            Err(error) => {
                // ICMP port unreachable surfaces here on some systems: not fatal.
                debug!(%error, "dht recv");
                return;
            }
        };
        let from = unmap(from);
        let before = self.core.stats().queries_in;
        self.core.handle_datagram(from, &datagram, Instant::now());
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
                if let Err(error) = self.io.send(&transmit.payload, transmit.to).await {
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
                match self
                    .core
                    .announce(info_hash, self.io.announced_port(port), now)
                {
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
        let (v4, v6) = self.io.families();
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
