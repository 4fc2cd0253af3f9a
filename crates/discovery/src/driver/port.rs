//! [`SharedPort`]: a datagram port the DHT node runs on instead of sockets of its own
//! (the node's QUIC socket, whose owner sorts KRPC datagrams out for us).

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::socket::recv;

/// The future of one send.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>>;

/// Sends datagrams on a socket someone else owns.
pub trait DatagramSend: Send + Sync + Debug + 'static {
    /// Sends `payload` to `to`; may wait while the socket is busy.
    fn send_to<'a>(&'a self, payload: &'a [u8], to: SocketAddr) -> SendFuture<'a>;
}

/// A socket shared with another protocol: what the DHT node needs of it.
#[derive(Debug)]
pub struct SharedPort {
    /// Sends on the socket.
    pub sender: Arc<dyn DatagramSend>,
    /// The KRPC datagrams that arrive, with their source (IPv4 peers as plain IPv4
    /// addresses); bounded by the owner, which drops what does not fit.
    pub incoming: mpsc::Receiver<(Bytes, SocketAddr)>,
    /// The socket's address (announced with the owner's port).
    pub local_addr: SocketAddr,
    /// Whether the socket carries IPv4.
    pub ipv4: bool,
    /// Whether the socket carries IPv6.
    pub ipv6: bool,
}

/// Where the driver's datagrams come from and go.
#[derive(Debug)]
pub(super) enum DriverIo {
    /// Its own sockets, one per family.
    Own {
        v4: Option<UdpSocket>,
        v6: Option<UdpSocket>,
        buf4: Box<[u8]>,
        buf6: Box<[u8]>,
    },
    /// A shared port, with the families the node runs on it.
    Shared {
        port: SharedPort,
        ipv4: bool,
        ipv6: bool,
    },
}

impl DriverIo {
    /// Own sockets, with receive buffers of `buffer` bytes.
    pub(super) fn own(v4: Option<UdpSocket>, v6: Option<UdpSocket>, buffer: usize) -> Self {
        DriverIo::Own {
            v4,
            v6,
            buf4: vec![0; buffer].into_boxed_slice(),
            buf6: vec![0; buffer].into_boxed_slice(),
        }
    }

    /// Whether the node runs on IPv4, and on IPv6.
    pub(super) fn families(&self) -> (bool, bool) {
        match self {
            DriverIo::Own { v4, v6, .. } => (v4.is_some(), v6.is_some()),
            DriverIo::Shared { ipv4, ipv6, .. } => (*ipv4, *ipv6),
        }
    }

    /// What an announce of `port` sends: on a shared port whose own port it is, none
    /// (`implied_port`: the DHT node stores the port it sees our query come from, which
    /// behind a NAT is the external port of the mapping the owner's traffic uses too).
    pub(super) fn announced_port(&self, port: u16) -> Option<u16> {
        match self {
            DriverIo::Shared { port: shared, .. } if shared.local_addr.port() == port => None,
            _ => Some(port),
        }
    }

    /// The next datagram. A shared port whose owner is gone never yields again.
    pub(super) async fn recv(&mut self) -> io::Result<(Bytes, SocketAddr)> {
        match self {
            DriverIo::Own { v4, v6, buf4, buf6 } => {
                let (len, from, buf) = tokio::select! {
                    r = recv(v4.as_ref(), buf4) => { let (len, from) = r?; (len, from, &buf4[..]) }
                    r = recv(v6.as_ref(), buf6) => { let (len, from) = r?; (len, from, &buf6[..]) }
                };
                Ok((Bytes::copy_from_slice(&buf[..len]), from))
            }
            DriverIo::Shared { port, .. } => match port.incoming.recv().await {
                Some(datagram) => Ok(datagram),
                None => std::future::pending().await,
            },
        }
    }

    /// Sends `payload` to `to`; `Ok(false)` (nothing sent) when the node does not run on
    /// that address family.
    pub(super) async fn send(&self, payload: &[u8], to: SocketAddr) -> io::Result<bool> {
        match self {
            DriverIo::Own { v4, v6, .. } => {
                let socket = if to.is_ipv6() { v6 } else { v4 };
                match socket {
                    Some(socket) => socket.send_to(payload, to).await.map(|_| true),
                    None => Ok(false),
                }
            }
            DriverIo::Shared {
                port, ipv4, ipv6, ..
            } => {
                if (to.is_ipv6() && !ipv6) || (to.is_ipv4() && !ipv4) {
                    return Ok(false);
                }
                port.sender.send_to(payload, to).await.map(|()| true)
            }
        }
    }
}
