//! [`KrpcTestnet`]: a private DHT of our own nodes on loopback, for tests.
//!
//! N server nodes on 127.0.0.1 (or `::1`), each bootstrapping from all the others, run
//! by a thread of their own with a single-threaded tokio runtime, so that a test can
//! build one outside any runtime and hand [`KrpcTestnet::bootstrap`] to the nodes under
//! test. Dropping it stops the nodes. Never binds anything but a loopback address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::config::DhtConfig;
use crate::driver::KrpcDht;
use crate::krpc::Id;

/// A private DHT of [`KrpcDht`] nodes on a loopback address.
#[derive(Debug)]
pub struct KrpcTestnet {
    /// The nodes' addresses as `host:port` bootstrap entries.
    pub bootstrap: Vec<String>,
    /// The nodes' addresses.
    pub nodes: Vec<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl KrpcTestnet {
    /// `n` nodes on 127.0.0.1.
    pub fn new(n: usize) -> io::Result<KrpcTestnet> {
        KrpcTestnet::on(IpAddr::V4(Ipv4Addr::LOCALHOST), n, 0)
    }

    /// `n` nodes on `::1`.
    pub fn new_v6(n: usize) -> io::Result<KrpcTestnet> {
        KrpcTestnet::on(IpAddr::V6(Ipv6Addr::LOCALHOST), n, 0)
    }

    /// `n` live nodes on 127.0.0.1, plus `dead` nodes that bootstrap with them, get into
    /// their routing tables, and then stop answering (their sockets stay bound and are
    /// never read, as a node that vanished behind a NAT). `bootstrap` and `nodes` list
    /// the live nodes only: the dead ones are found only in the tables.
    pub fn with_dead(n: usize, dead: usize) -> io::Result<KrpcTestnet> {
        KrpcTestnet::on(IpAddr::V4(Ipv4Addr::LOCALHOST), n, dead)
    }

    fn on(ip: IpAddr, n: usize, dead: usize) -> io::Result<KrpcTestnet> {
        if !ip.is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a testnet binds loopback only",
            ));
        }
        let sockets = (0..n + dead)
            .map(|_| UdpSocket::bind(SocketAddr::new(ip, 0)))
            .collect::<io::Result<Vec<_>>>()?;
        // Kept bound, never read: datagrams to a dead node vanish.
        let graves = sockets[n..]
            .iter()
            .map(UdpSocket::try_clone)
            .collect::<io::Result<Vec<_>>>()?;
        let all = sockets
            .iter()
            .map(UdpSocket::local_addr)
            .collect::<io::Result<Vec<_>>>()?;
        let nodes = all[..n].to_vec();
        let bootstrap: Vec<String> = nodes.iter().map(ToString::to_string).collect();
        let config = match ip {
            IpAddr::V4(_) => DhtConfig::testnet(&[]),
            IpAddr::V6(_) => DhtConfig::testnet_v6(&[]),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name("krpc-testnet".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut handles = Vec::new();
                    for (i, socket) in sockets.into_iter().enumerate() {
                        let seeds: Vec<SocketAddr> =
                            all.iter().copied().filter(|a| *a != all[i]).collect();
                        let (v4, v6) = match ip {
                            IpAddr::V4(_) => (Some(socket), None),
                            IpAddr::V6(_) => (None, Some(socket)),
                        };
                        let id = Id(rand::random());
                        match KrpcDht::start_on(&config, v4, v6, seeds, id) {
                            Ok(handle) => handles.push(handle),
                            Err(e) => {
                                let _ = ready_tx.send(Err(io::Error::other(e.to_string())));
                                return;
                            }
                        }
                    }
                    for handle in &handles {
                        handle.bootstrapped().await;
                    }
                    // The dead nodes stop; their sockets stay bound in `graves`.
                    handles.truncate(n);
                    let _ = ready_tx.send(Ok(()));
                    let _ = stopped.await;
                    drop(handles);
                    drop(graves);
                });
            })?;
        ready
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("testnet thread ended")))?;
        Ok(KrpcTestnet {
            bootstrap,
            nodes,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for KrpcTestnet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
