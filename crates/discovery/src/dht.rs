//! The DHT backend: a narrow trait, and its implementation on the `mainline` crate.
//!
//! The actor needs two operations from a DHT: store "this port is in the swarm of this
//! infohash" and stream the peers stored for an infohash. Our own node implements it in
//! `driver` ([`crate::KrpcDht`], the default); everything `mainline`-specific (builder,
//! bootstrap resolution, mode) stays in this file ([`MainlineDht`], selectable with
//! `DhtImpl::Mainline` until it is removed).

use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use futures::{Stream, StreamExt};
use mainline::async_dht::AsyncDht;
use mainline::{Dht, Id};

use crate::config::{Bootstrap, DhtConfig, DhtMode};
use crate::driver::DhtStatus;
use crate::error::{BackendError, SpawnError};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Batches of peer addresses as DHT nodes return them (duplicates across batches are
/// expected); the stream ends when the lookup has finished.
pub type PeerStream = Pin<Box<dyn Stream<Item = Vec<SocketAddr>> + Send + 'static>>;

/// What discovery needs from a DHT. Implementations do their work off the caller's
/// thread; the futures and streams are polled in tokio tasks, never inside the actor.
pub trait DhtBackend: Send + Sync + fmt::Debug + 'static {
    /// Announce that a peer listens on `port` (at the address the DHT sees us from) for
    /// `infohash`. Resolves once the record is stored on at least one node.
    fn announce(&self, infohash: [u8; 20], port: u16) -> BoxFuture<Result<(), BackendError>>;
    /// Look up the peers stored for `infohash`.
    fn lookup(&self, infohash: [u8; 20]) -> PeerStream;
    /// The local address of the DHT socket (the IPv4 one if there are two).
    fn local_addr(&self) -> SocketAddr;
    /// The local addresses of every DHT socket.
    fn local_addrs(&self) -> Vec<SocketAddr> {
        vec![self.local_addr()]
    }
    /// The node's counters and tables, if the implementation keeps them.
    fn status(&self) -> BoxFuture<Option<DhtStatus>> {
        Box::pin(async { None })
    }
}

/// [`DhtBackend`] on `mainline` 8 (BEP 5 over IPv4; one thread per node).
#[derive(Debug, Clone)]
pub struct MainlineDht {
    dht: AsyncDht,
    local: SocketAddr,
    wake: Arc<Wake>,
}

/// Wakes `mainline`'s thread after we hand it a request. That thread takes new requests
/// only between two reads of its socket, and a read waits up to 50 ms
/// (`mainline::rpc::socket::READ_TIMEOUT`) when no packet comes: every lookup and
/// announce started on a quiet DHT waited for it (join → first peer was ~57 ms on
/// loopback, ~7 ms with the wake). An empty datagram to the DHT's own socket ends the
/// wait; `mainline` drops it (not KRPC) before looking at it further.
#[derive(Debug)]
struct Wake {
    socket: UdpSocket,
    dht: SocketAddr,
}

impl Wake {
    /// A sender on the DHT's address family, to its socket (loopback when it listens on
    /// all interfaces).
    fn new(dht: SocketAddr) -> std::io::Result<Wake> {
        let ip = match dht.ip() {
            ip if ip.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
            ip => ip,
        };
        let dht = SocketAddr::new(ip, dht.port());
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        Ok(Wake { socket, dht })
    }

    fn wake(&self) {
        // Best effort: if it is lost, the thread notices the request within 50 ms.
        let _ = self.socket.send_to(&[], self.dht);
    }
}

impl MainlineDht {
    /// Resolves the bootstrap list and binds the DHT socket. Blocking (DNS and the
    /// node's start-up handshake): call it from `spawn_blocking`.
    pub fn start(config: &DhtConfig) -> Result<Self, SpawnError> {
        let bind = config.bind.ok_or(SpawnError::DhtNoSocket)?;
        let mut builder = Dht::builder();
        if config.mode == DhtMode::Server {
            builder.server_mode();
        }
        match &config.bootstrap {
            Bootstrap::Public => {}
            Bootstrap::None => {
                builder.no_bootstrap();
            }
            Bootstrap::Nodes(entries) => {
                let addrs = resolve_bootstrap(entries)?;
                builder.bootstrap(&addrs);
            }
        }
        builder.bind_address(bind);
        if let Some(port) = config.port {
            builder.port(port);
        }
        if let Some(timeout) = config.request_timeout {
            builder.request_timeout(timeout);
        }
        let addr = SocketAddr::from((bind, config.port.unwrap_or(0)));
        // `mainline` panics instead of failing when its thread exits (a port in use)
        // before its first message: the same error either way.
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.build()))
            .unwrap_or_else(|_| Err(std::io::Error::other("the dht thread stopped at start")));
        let dht = built.map_err(|source| SpawnError::DhtBind { addr, source })?;
        let dht = dht.as_async();
        let local = SocketAddr::V4(futures::executor::block_on(dht.info()).local_addr());
        let wake = Wake::new(local).map_err(|source| SpawnError::DhtBind {
            addr: local,
            source,
        })?;
        Ok(MainlineDht {
            dht,
            local,
            wake: Arc::new(wake),
        })
    }
}

impl DhtBackend for MainlineDht {
    fn announce(&self, infohash: [u8; 20], port: u16) -> BoxFuture<Result<(), BackendError>> {
        let dht = self.dht.clone();
        let wake = self.wake.clone();
        Box::pin(async move {
            let mut announce = std::pin::pin!(dht.announce_peer(Id::from(infohash), Some(port)));
            // The first poll hands the request to mainline's thread: wake it after that.
            let result = match futures::poll!(announce.as_mut()) {
                Poll::Ready(result) => result,
                Poll::Pending => {
                    wake.wake();
                    announce.await
                }
            };
            result
                .map(|_| ())
                .map_err(|e| BackendError::Announce(e.to_string()))
        })
    }

    fn lookup(&self, infohash: [u8; 20]) -> PeerStream {
        let stream = self.dht.get_peers(Id::from(infohash));
        self.wake.wake();
        Box::pin(stream.map(|batch| batch.into_iter().map(SocketAddr::V4).collect()))
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Resolves `host:port` entries to IPv4 socket addresses, failing on the first entry
/// that is malformed, does not resolve, or has no IPv4 address.
fn resolve_bootstrap(entries: &[String]) -> Result<Vec<SocketAddrV4>, SpawnError> {
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
        let resolved =
            (host, port)
                .to_socket_addrs()
                .map_err(|source| SpawnError::BootstrapResolve {
                    entry: entry.clone(),
                    source,
                })?;
        let v4: Vec<SocketAddrV4> = resolved
            .filter_map(|addr| match addr {
                SocketAddr::V4(v4) => Some(v4),
                SocketAddr::V6(_) => None,
            })
            .collect();
        if v4.is_empty() {
            return Err(SpawnError::BootstrapNotIpv4 {
                entry: entry.clone(),
            });
        }
        out.extend(v4);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn bootstrap_entries_are_checked() {
        let ok = resolve_bootstrap(&["127.0.0.1:6881".into(), "localhost:7000".into()])
            .expect("resolves");
        assert!(ok.contains(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6881)));
        assert!(matches!(
            resolve_bootstrap(&["127.0.0.1".into()]),
            Err(SpawnError::BootstrapSyntax { .. })
        ));
        assert!(matches!(
            resolve_bootstrap(&["127.0.0.1:99999".into()]),
            Err(SpawnError::BootstrapSyntax { .. })
        ));
        assert!(matches!(
            resolve_bootstrap(&["[::1]:6881".into()]),
            Err(SpawnError::BootstrapNotIpv4 { .. })
        ));
    }
}
