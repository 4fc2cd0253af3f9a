//! `NodeSocket`: the endpoint's UDP socket, shared with the DHT and the relay circuits.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};
use tokio::sync::mpsc;

use super::demux::{is_krpc, keep_segments};
use super::VirtualPaths;

/// KRPC datagrams queued for the DHT; more are dropped (as UDP would). The DHT answers
/// in microseconds, so this only fills when it is stuck or flooded.
pub const KRPC_QUEUE: usize = 256;

/// Most payload bytes one UDP send takes, all GSO segments together: the kernel refuses
/// more (65,535 less the IPv4 and UDP headers; IPv6 allows 20 more, IPv4 decides for a
/// dual-stack socket). quinn batches up to 10 segments per send, which passes this once
/// a segment is above 6,550 bytes (a path MTU discovered above it, as on loopback).
const MAX_SEND_BYTES: usize = 65_507;

/// One datagram and its peer address.
type Datagram = (Bytes, SocketAddr);

/// The UDP socket under the node's QUIC endpoint (a `quinn::AsyncUdpSocket`).
///
/// It wraps the socket quinn's tokio runtime makes (so GSO and GRO stay on) and sorts
/// what arrives by its first bytes: a KRPC message (`d`, then an ASCII digit) goes to the
/// DHT (`KrpcPort`), everything else to quinn. The split is exact: every QUIC long header
/// starts at 0x80 or above, and a short header (0x40..=0x7f, since our endpoint never
/// lets peers clear the fixed bit) is followed by a connection id we issued, which never
/// starts with a digit (`endpoint_config`). Packets to a virtual address go into
/// `VirtualPaths` instead of the socket, and packets injected there come out as if
/// received from that address.
///
/// quinn sees IPv6 addresses only: on an IPv4 socket, IPv4 peers appear IPv4-mapped
/// (`::ffff:a.b.c.d`), so the endpoint can also send to virtual (IPv6) addresses; the
/// socket maps back on the wire. Addresses handed to the DHT are plain IPv4 for IPv4
/// peers on either kind of socket (`unmap`).
pub struct NodeSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    /// The real socket is IPv4 (quinn still sees IPv6, mapped).
    v4_socket: bool,
    /// The families the real socket sends to.
    families: Families,
    /// The real socket's address.
    real_addr: SocketAddr,
    paths: VirtualPaths,
    /// Where KRPC datagrams go; `None`: dropped.
    krpc: Option<mpsc::Sender<Datagram>>,
    /// Which source `poll_recv` tries first; flipped at each call so that neither the
    /// socket nor the relays can starve the other.
    injected_first: AtomicBool,
    /// KRPC datagrams dropped: nobody takes them, or the queue was full.
    krpc_dropped: AtomicU64,
    /// Set by `shut`: nothing is sent any more, and receiving fails.
    shut: AtomicBool,
    /// The task waiting in `poll_recv` (quinn's endpoint driver), woken by `shut`.
    recv_waker: Mutex<Option<Waker>>,
}

impl fmt::Debug for NodeSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSocket")
            .field("addr", &self.real_addr)
            .field("krpc", &self.krpc.is_some())
            .finish_non_exhaustive()
    }
}

/// The DHT's side of the shared socket: the KRPC datagrams that arrive, and a sender.
#[derive(Debug)]
pub struct KrpcPort {
    /// KRPC datagrams with their source (plain IPv4 for IPv4 peers), at most
    /// `KRPC_QUEUE` waiting. Ends when the endpoint is gone.
    pub incoming: mpsc::Receiver<(Bytes, SocketAddr)>,
    /// Sends on the same socket.
    pub sender: KrpcSender,
}

/// Sends datagrams on the endpoint's socket; holds it weakly (the endpoint owns it).
#[derive(Debug, Clone)]
pub struct KrpcSender {
    socket: Weak<NodeSocket>,
    local_addr: SocketAddr,
    ipv4: bool,
    ipv6: bool,
}

impl KrpcSender {
    /// Sends `payload` to `to` (an IPv4 or IPv6 address), waiting while the socket's send
    /// buffer is full. Fails once the endpoint is closed, or for an address family the
    /// socket does not carry.
    pub async fn send_to(&self, payload: &[u8], to: SocketAddr) -> io::Result<()> {
        let socket = self
            .socket
            .upgrade()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "endpoint closed"))?;
        let Some(destination) = socket.wire_destination(to) else {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("the socket does not carry the address family of {to}"),
            ));
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: payload,
            segment_size: None,
            src_ip: None,
        };
        let mut poller: Option<Pin<Box<dyn UdpPoller>>> = None;
        loop {
            match socket.inner.try_send(&transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let poller =
                        poller.get_or_insert_with(|| socket.inner.clone().create_io_poller());
                    std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await?;
                }
                result => return result,
            }
        }
    }

    /// The socket's address (the QUIC endpoint's).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the socket carries IPv4.
    pub fn ipv4(&self) -> bool {
        self.ipv4
    }

    /// Whether the socket carries IPv6.
    pub fn ipv6(&self) -> bool {
        self.ipv6
    }
}

impl NodeSocket {
    /// Wraps `socket` (bound, non-blocking) for quinn's tokio runtime. With `krpc`, KRPC
    /// datagrams are kept for the returned `KrpcPort`; without, they are dropped.
    pub fn new(
        socket: std::net::UdpSocket,
        paths: VirtualPaths,
        krpc: bool,
    ) -> io::Result<(Arc<NodeSocket>, Option<KrpcPort>)> {
        let real_addr = socket.local_addr()?;
        let v4_socket = real_addr.is_ipv4();
        let families = Families::of(&socket, real_addr)?;
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket)?;
        let (tx, rx) = match krpc {
            true => {
                let (tx, rx) = mpsc::channel(KRPC_QUEUE);
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let socket = Arc::new(NodeSocket {
            inner,
            v4_socket,
            families,
            real_addr,
            paths,
            krpc: tx,
            injected_first: AtomicBool::new(false),
            krpc_dropped: AtomicU64::new(0),
            shut: AtomicBool::new(false),
            recv_waker: Mutex::new(None),
        });
        let port = rx.map(|incoming| KrpcPort {
            incoming,
            sender: KrpcSender {
                socket: Arc::downgrade(&socket),
                local_addr: real_addr,
                ipv4: socket.families().ipv4,
                ipv6: socket.families().ipv6,
            },
        });
        Ok((socket, port))
    }

    /// The real socket's address (IPv4 for an IPv4 socket, unlike `local_addr`).
    pub fn real_addr(&self) -> SocketAddr {
        self.real_addr
    }

    /// Ends the endpoint on this socket for good: nothing is sent any more and the next
    /// receive fails, which stops quinn's endpoint driver; the connections still draining
    /// end with it and the socket closes once quinn drops them. For the end of a shutdown
    /// whose drain was cut short (decision 156): a connection quinn never drains would
    /// otherwise keep the driver, and the port, until its idle timeout.
    pub fn shut(&self) {
        self.shut.store(true, Ordering::SeqCst);
        let waker = self
            .recv_waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// KRPC datagrams dropped so far (nobody took them, or the DHT's queue was full).
    pub fn krpc_dropped(&self) -> u64 {
        self.krpc_dropped.load(Ordering::Relaxed)
    }

    /// `addr` as quinn sees it: IPv4 peers IPv4-mapped.
    fn quinn_addr(addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(v4) => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            SocketAddr::V6(_) => addr,
        }
    }

    /// The address families the real socket carries.
    pub fn families(&self) -> Families {
        self.families
    }

    /// `to` as the real socket takes it, or `None` if it cannot carry that family.
    fn wire_destination(&self, to: SocketAddr) -> Option<SocketAddr> {
        let plain = unmap(to);
        if !self.families().carries(plain) {
            return None;
        }
        Some(match (plain, self.v4_socket) {
            // A dual-stack IPv6 socket takes IPv4 peers IPv4-mapped.
            (SocketAddr::V4(_), false) => Self::quinn_addr(plain),
            _ => plain,
        })
    }

    /// Hands one KRPC datagram to the DHT, or counts it dropped.
    fn divert(&self, datagram: &[u8], from: SocketAddr) {
        let sent = self.krpc.as_ref().is_some_and(|tx| {
            tx.try_send((Bytes::copy_from_slice(datagram), unmap(from)))
                .is_ok()
        });
        if !sent {
            self.krpc_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Packets injected by relays, one per buffer, as many as are ready.
    fn poll_injected(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<usize> {
        let mut filled = 0;
        while filled < bufs.len().min(meta.len()) {
            let Poll::Ready((from, packet)) = self.paths.poll_recv_injected(cx) else {
                break;
            };
            let buf = &mut bufs[filled];
            if packet.len() > buf.len() || packet.is_empty() {
                // Larger than any QUIC packet quinn reads: dropped, as a link would.
                continue;
            }
            buf[..packet.len()].copy_from_slice(&packet);
            meta[filled] = RecvMeta {
                addr: from,
                len: packet.len(),
                stride: packet.len(),
                ecn: None,
                dst_ip: None,
            };
            filled += 1;
        }
        match filled {
            0 => Poll::Pending,
            n => Poll::Ready(n),
        }
    }

    /// Takes the KRPC datagrams out of the `n` buffers just received, compacts what is
    /// left for quinn, and returns how many buffers that is.
    fn demux(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], n: usize) -> usize {
        let mut kept = 0;
        for i in 0..n {
            let mut m = meta[i];
            let stride = if m.stride == 0 { m.len } else { m.stride };
            let buf = &mut bufs[i][..m.len];
            let len = if buf.chunks(stride.max(1)).any(is_krpc) {
                keep_segments(buf, stride, |segment| self.divert(segment, m.addr))
            } else {
                m.len
            };
            if len == 0 {
                continue;
            }
            if kept != i {
                let (head, tail) = bufs.split_at_mut(i);
                head[kept][..len].copy_from_slice(&tail[0][..len]);
            }
            m.len = len;
            if self.v4_socket {
                m.addr = Self::quinn_addr(m.addr);
            }
            meta[kept] = m;
            kept += 1;
        }
        kept
    }

    /// Sends one transmit from quinn on the real socket, in as many sends as
    /// `MAX_SEND_BYTES` needs (whole segments each). A full send buffer after the first
    /// part fails the whole transmit: quinn sends it again once the socket is writable,
    /// and the peer drops the parts it already has as duplicates.
    fn send_real(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let segment = match transmit.segment_size {
            Some(segment) if transmit.contents.len() > MAX_SEND_BYTES => segment.max(1),
            _ => return self.inner.try_send(transmit),
        };
        let per_send = (MAX_SEND_BYTES / segment).max(1) * segment;
        for part in transmit.contents.chunks(per_send) {
            self.inner.try_send(&Transmit {
                contents: part,
                ..transmit.clone()
            })?;
        }
        Ok(())
    }

    /// Sends one transmit from quinn to a virtual address (each segment a packet).
    fn send_virtual(&self, transmit: &Transmit<'_>) {
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for packet in transmit.contents.chunks(size) {
            // A full queue drops the packet, as a full link would; QUIC recovers.
            let _ = self
                .paths
                .try_send_outgoing(transmit.destination, Bytes::copy_from_slice(packet));
        }
    }
}

/// The address families a `NodeSocket` can send to: an IPv4 socket carries IPv4 only, an
/// IPv6 one IPv6 and, when dual-stack and bound to `::`, IPv4 too (IPv4-mapped on the
/// wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    /// IPv4 destinations (plain or IPv4-mapped).
    pub ipv4: bool,
    /// IPv6 destinations other than IPv4-mapped ones.
    pub ipv6: bool,
}

impl Families {
    /// What `socket`, bound to `addr`, sends to. An IPv6 socket carries IPv4 only when it
    /// is dual-stack and bound to `::` (one bound to an IPv6 address has no IPv4 source).
    fn of(socket: &std::net::UdpSocket, addr: SocketAddr) -> io::Result<Families> {
        Ok(match addr {
            SocketAddr::V4(_) => Families {
                ipv4: true,
                ipv6: false,
            },
            SocketAddr::V6(v6) => Families {
                ipv4: v6.ip().is_unspecified() && !socket2::SockRef::from(socket).only_v6()?,
                ipv6: true,
            },
        })
    }

    /// Whether a packet to `to` can leave the real socket. Virtual addresses do not use
    /// the real socket: ask `VirtualPaths::is_virtual` first.
    pub fn carries(&self, to: SocketAddr) -> bool {
        match unmap(to) {
            SocketAddr::V4(_) => self.ipv4,
            SocketAddr::V6(_) => self.ipv6,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

impl AsyncUdpSocket for NodeSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if self.shut.load(Ordering::SeqCst) {
            return Ok(());
        }
        if VirtualPaths::is_virtual(&transmit.destination) {
            self.send_virtual(transmit);
            return Ok(());
        }
        if !self.v4_socket {
            return self.send_real(transmit);
        }
        match self.wire_destination(transmit.destination) {
            Some(destination) => self.send_real(&Transmit {
                destination,
                ..transmit.clone()
            }),
            // An IPv6 peer from an IPv4 socket: unreachable, dropped as the OS would.
            None => Ok(()),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if self.shut.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "socket shut at the end of a shutdown whose drain was cut short",
            )));
        }
        let injected_first = self.injected_first.fetch_xor(true, Ordering::Relaxed);
        if injected_first {
            if let Poll::Ready(n) = self.poll_injected(cx, bufs, meta) {
                return Poll::Ready(Ok(n));
            }
        }
        loop {
            match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => {
                    let kept = self.demux(bufs, meta, n);
                    if kept > 0 {
                        return Poll::Ready(Ok(kept));
                    }
                    // Only KRPC arrived: read again (or register for the next datagram).
                }
                Poll::Ready(Err(e)) => {
                    // quinn's driver ends on it (but on a reset, which it skips) and
                    // logs it under `quinn::endpoint`, which the binary filters out:
                    // said here, once, with what it means.
                    if e.kind() != io::ErrorKind::ConnectionReset {
                        tracing::error!(error = %e, "receiving on the UDP socket failed: the QUIC endpoint stops");
                    }
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => break,
            }
        }
        if !injected_first {
            if let Poll::Ready(n) = self.poll_injected(cx, bufs, meta) {
                return Poll::Ready(Ok(n));
            }
        }
        let mut waker = self
            .recv_waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        drop(waker);
        // `shut` may have run since the check above: it found no waker, or the old one.
        if self.shut.load(Ordering::SeqCst) {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(Self::quinn_addr(self.real_addr))
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
