//! [`KrpcDht`]: the UDP driver of [`DhtCore`], and the [`DhtBackend`] on it.
//!
//! One UDP socket per address family, or a [`SharedPort`] on a socket another protocol
//! owns (the node's QUIC socket), and one tokio task that owns them and the core. The
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
//!
//! Files: `mod.rs` the handle ([`KrpcDht`]) and its start; `task.rs` the task's loop
//! (the `Driver`); `command.rs` what a handle asks the task; `socket.rs` binding and
//! receiving; `port.rs` the shared port and where datagrams come from and go; `resolve.rs` the bootstrap names; `files.rs` the id and nodes files.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;
use tracing::info;

use self::command::Command;
use self::files::{read_id, read_nodes, write_id};
use self::port::DriverIo;
use self::resolve::resolve_bootstrap;
use self::socket::bind;
use self::task::{Driver, RECV_BUFFER};
use crate::config::{Bootstrap, DhtConfig, DhtMode};
use crate::dht::{BoxFuture, DhtBackend, PeerStream};
use crate::error::{BackendError, SpawnError};
use crate::krpc::{DhtCore, DhtCoreConfig, Id};

pub use self::command::DhtStatus;
pub use self::files::MAX_SAVED_NODES;
pub use self::port::{DatagramSend, SendFuture, SharedPort};
pub use self::socket::DEFAULT_PORT;
pub use self::task::{CHECK_EVERY, LOW_WATER, REBOOTSTRAP_MAX, REBOOTSTRAP_MIN, SAVE_EVERY};

mod command;
mod files;
mod port;
mod resolve;
mod socket;
mod task;

/// Commands queued by the handles; a full queue fails the command at once.
const COMMAND_QUEUE: usize = 1024;

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
        let (seeds, id) = prepare(config, v4.is_some(), v6.is_some()).await?;
        Self::start_on(config, v4, v6, seeds, id)
    }

    /// Like [`spawn`](Self::spawn), on a socket shared with another protocol instead of
    /// sockets of its own. The node runs on the families the port carries and the config
    /// enables (`bind`, `bind_v6` set); the config's addresses and port are not used.
    /// With no family left it is [`SpawnError::DhtNoSocket`].
    pub async fn spawn_shared(config: &DhtConfig, port: SharedPort) -> Result<KrpcDht, SpawnError> {
        let ipv4 = port.ipv4 && config.bind.is_some();
        let ipv6 = port.ipv6 && config.bind_v6.is_some();
        if !ipv4 && !ipv6 {
            return Err(SpawnError::DhtNoSocket);
        }
        let (seeds, id) = prepare(config, ipv4, ipv6).await?;
        let addrs = vec![port.local_addr];
        let io = DriverIo::Shared { port, ipv4, ipv6 };
        Ok(Self::start_io(config, io, addrs, seeds, id))
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
        let io = DriverIo::own(v4.map(|(s, _)| s), v6.map(|(s, _)| s), RECV_BUFFER);
        Ok(Self::start_io(config, io, addrs, seeds, id))
    }

    /// Starts the task on `io`, whose addresses are `addrs`.
    fn start_io(
        config: &DhtConfig,
        io: DriverIo,
        addrs: Vec<SocketAddr>,
        seeds: Vec<SocketAddr>,
        id: Id,
    ) -> KrpcDht {
        let (ipv4, ipv6) = io.families();
        let server = config.mode == DhtMode::Server;
        let now = Instant::now();
        let core_config = DhtCoreConfig {
            read_only: !server,
            ipv4,
            ipv6,
            restrict_ips: config.restrict_ips,
            rate_limit: config.rate_limit,
            ..DhtCoreConfig::default()
        };
        let core = DhtCore::new(core_config, id, rand::random(), now);
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let span = tracing::info_span!("dht", me = %addrs.first().map(|a| a.port()).unwrap_or(0));
        let shared = matches!(io, DriverIo::Shared { .. });
        info!(parent: &span, id = %id.fmt_short(), ?addrs, shared, mode = ?config.mode, seeds = seeds.len(), "dht node starting");
        let driver = Driver {
            core,
            io,
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
        KrpcDht {
            commands,
            addrs,
            _task: Arc::new(AbortOnDropHandle::new(task)),
        }
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

/// Resolves the bootstrap list (plus the saved neighbours) for the families the node
/// runs on, and reads or creates the node id.
async fn prepare(
    config: &DhtConfig,
    v4: bool,
    v6: bool,
) -> Result<(Vec<SocketAddr>, Id), SpawnError> {
    let mut seeds = match &config.bootstrap {
        // Resolved by the task: a host without DNS must not hold up the start.
        Bootstrap::Public => Vec::new(),
        Bootstrap::None => Vec::new(),
        Bootstrap::Nodes(entries) => resolve_bootstrap(entries, v4, v6).await?,
    };
    if let Some(path) = &config.nodes_file {
        // Saved neighbours first; a missing or unreadable file is no error.
        let mut saved = read_nodes(path, v4, v6).await;
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
    Ok((seeds, id))
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
