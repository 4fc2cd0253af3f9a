//! The UDP sockets: binding them (a port per family, with a fallback) and receiving.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};

use tokio::net::UdpSocket;
use tracing::warn;

use crate::config::DhtConfig;
use crate::error::SpawnError;

/// The port BitTorrent clients use for the DHT by default; taken when free and no port
/// is configured, so that restarts keep the address others saved.
pub const DEFAULT_PORT: u16 = 6881;

/// Receives on `socket`, or never if there is none.
pub(super) async fn recv(
    socket: Option<&UdpSocket>,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub(super) fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Binds the sockets `config` asks for.
pub(super) fn bind(
    config: &DhtConfig,
) -> Result<(Option<StdUdpSocket>, Option<StdUdpSocket>), SpawnError> {
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
