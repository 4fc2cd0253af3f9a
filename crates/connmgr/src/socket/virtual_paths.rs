//! `VirtualPaths`: the queues between the local QUIC endpoint and the relay circuits that
//! carry some of its packets.
//!
//! A relayed peer is reached at a virtual address: an IPv6 address in a unique local
//! prefix that no internet host has (decision 141), whose low 64 bits name the circuit.
//! What the endpoint sends to such an address goes into the outbound queue (for the relay
//! code to carry); what the relay code receives for us it injects, and the endpoint reads
//! it as if it came from that address. Both queues are bounded and drop when full, as UDP
//! would: QUIC recovers from loss, and nothing a relay or a peer sends can grow memory.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;

/// The first 48 bits of every virtual address: `fd72:3870:6174::/48`, a unique local
/// prefix (RFC 4193; its bytes spell "r8pat"). Unique local addresses are never routed on
/// the internet, and a site that numbers its own network in ULA space picks a random
/// 40-bit id, so a real peer has this prefix by a 2^-40 accident at most.
const PREFIX: [u16; 3] = [0xfd72, 0x3870, 0x6174];

/// The UDP port of every virtual address. Any fixed value would do; the circuit id sits in
/// the address, and a fixed port makes `address` and `circuit` exact inverses.
const VIRTUAL_PORT: u16 = 1;

/// One packet and the address it came from or goes to.
type Packet = (SocketAddr, Bytes);

/// The two queues between the local endpoint and the relay circuits; cheap to clone (all
/// clones share the queues).
#[derive(Clone, Debug)]
pub struct VirtualPaths {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Packets injected for the local endpoint (from relays).
    inbound_tx: mpsc::Sender<Packet>,
    /// Read by the endpoint's socket only (one reader, behind a lock it never contends).
    inbound_rx: Mutex<mpsc::Receiver<Packet>>,
    /// Packets the local endpoint sends to virtual addresses.
    outbound_tx: mpsc::Sender<Packet>,
    /// Handed out once, to the relay code.
    outbound_rx: Mutex<Option<mpsc::Receiver<Packet>>>,
}

impl VirtualPaths {
    /// Queues holding at most `inbound_capacity` injected and `outbound_capacity` outgoing
    /// packets (each at least 1).
    pub fn new(inbound_capacity: usize, outbound_capacity: usize) -> Self {
        let (inbound_tx, inbound_rx) = mpsc::channel(inbound_capacity.max(1));
        let (outbound_tx, outbound_rx) = mpsc::channel(outbound_capacity.max(1));
        Self {
            inner: Arc::new(Inner {
                inbound_tx,
                inbound_rx: Mutex::new(inbound_rx),
                outbound_tx,
                outbound_rx: Mutex::new(Some(outbound_rx)),
            }),
        }
    }

    /// Whether `addr` lies in the virtual range (`fd72:3870:6174::/48`, any port): such an
    /// address is never sent to on the real socket.
    pub fn is_virtual(addr: &SocketAddr) -> bool {
        match addr {
            SocketAddr::V4(_) => false,
            SocketAddr::V6(v6) => v6.ip().segments()[..3] == PREFIX,
        }
    }

    /// The virtual address of `circuit`.
    pub fn address(circuit: u64) -> SocketAddr {
        let [a, b, c] = PREFIX;
        let low = circuit.to_be_bytes();
        let word = |i: usize| u16::from_be_bytes([low[i], low[i + 1]]);
        let ip = Ipv6Addr::new(a, b, c, 0, word(0), word(2), word(4), word(6));
        SocketAddr::V6(SocketAddrV6::new(ip, VIRTUAL_PORT, 0, 0))
    }

    /// The circuit `addr` names, if it is exactly a virtual address made by `address`.
    pub fn circuit(addr: &SocketAddr) -> Option<u64> {
        let SocketAddr::V6(v6) = addr else {
            return None;
        };
        let octets = v6.ip().octets();
        let exact = Self::is_virtual(addr)
            && octets[6..8] == [0, 0]
            && v6.port() == VIRTUAL_PORT
            && v6.flowinfo() == 0
            && v6.scope_id() == 0;
        let mut low = [0u8; 8];
        low.copy_from_slice(&octets[8..]);
        exact.then(|| u64::from_be_bytes(low))
    }

    /// A packet that arrived through a relay for the local endpoint, from the virtual
    /// address `from`. False (and dropped, as UDP would) when the inbound queue is full,
    /// or when `from` is not a virtual address (a relay cannot pose as a direct peer).
    pub fn inject(&self, from: SocketAddr, packet: Bytes) -> bool {
        Self::circuit(&from).is_some() && self.inner.inbound_tx.try_send((from, packet)).is_ok()
    }

    /// The packets the local endpoint sends to virtual addresses; one consumer (None after
    /// the first call).
    pub fn take_outgoing(&self) -> Option<mpsc::Receiver<(SocketAddr, Bytes)>> {
        self.inner
            .outbound_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The next injected packet, or `Pending` (and `cx` woken when one arrives). Never
    /// ends: `self` holds a sender.
    pub(crate) fn poll_recv_injected(&self, cx: &mut Context<'_>) -> Poll<Packet> {
        let mut rx = self
            .inner
            .inbound_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match rx.poll_recv(cx) {
            Poll::Ready(Some(packet)) => Poll::Ready(packet),
            // Unreachable while `inner` holds `inbound_tx`; waiting is the honest answer.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    /// Queues a packet the local endpoint sends to the virtual address `to`. False (and
    /// dropped, as UDP would) when the outbound queue is full or nobody took it.
    pub(crate) fn try_send_outgoing(&self, to: SocketAddr, packet: Bytes) -> bool {
        self.inner.outbound_tx.try_send((to, packet)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn address_and_circuit_are_inverse() {
        for circuit in [0, 1, 0xffff, 0x0123_4567_89ab_cdef, u64::MAX] {
            let addr = VirtualPaths::address(circuit);
            assert!(VirtualPaths::is_virtual(&addr), "{addr}");
            assert_eq!(VirtualPaths::circuit(&addr), Some(circuit), "{addr}");
        }
        assert_eq!(
            VirtualPaths::address(0x0123_4567_89ab_cdef).to_string(),
            "[fd72:3870:6174:0:123:4567:89ab:cdef]:1"
        );
    }

    #[test]
    fn real_addresses_are_not_virtual() {
        let real: [SocketAddr; 5] = [
            (Ipv4Addr::new(203, 0, 113, 7), 4433).into(),
            (Ipv4Addr::LOCALHOST, 1).into(),
            (Ipv6Addr::LOCALHOST, 1).into(),
            "[2001:db8::1]:1".parse().expect("address"),
            // Another unique local prefix.
            "[fd72:3870:6175::1]:1".parse().expect("address"),
        ];
        for addr in real {
            assert!(!VirtualPaths::is_virtual(&addr), "{addr}");
            assert_eq!(VirtualPaths::circuit(&addr), None, "{addr}");
        }
    }

    #[test]
    fn a_virtual_address_not_made_by_address_names_no_circuit() {
        let odd: [SocketAddr; 3] = [
            "[fd72:3870:6174:1::5]:1".parse().expect("address"),
            "[fd72:3870:6174::5]:2".parse().expect("address"),
            "[fd72:3870:6174::5%3]:1".parse().expect("address"),
        ];
        for addr in odd {
            assert!(VirtualPaths::is_virtual(&addr), "{addr}");
            assert_eq!(VirtualPaths::circuit(&addr), None, "{addr}");
        }
    }

    #[tokio::test]
    async fn injected_packets_come_out_in_order_and_a_full_queue_drops() {
        let paths = VirtualPaths::new(2, 1);
        let from = VirtualPaths::address(9);
        assert!(paths.inject(from, Bytes::from_static(b"one")));
        assert!(paths.inject(from, Bytes::from_static(b"two")));
        assert!(
            !paths.inject(from, Bytes::from_static(b"three")),
            "queue of 2 is full"
        );
        let clone = paths.clone();
        assert_eq!(
            poll_fn(|cx| clone.poll_recv_injected(cx)).await,
            (from, Bytes::from_static(b"one"))
        );
        assert_eq!(
            poll_fn(|cx| paths.poll_recv_injected(cx)).await,
            (from, Bytes::from_static(b"two"))
        );
        assert!(
            paths.inject(from, Bytes::from_static(b"four")),
            "room again"
        );
        assert_eq!(
            poll_fn(|cx| paths.poll_recv_injected(cx)).await.1,
            Bytes::from_static(b"four")
        );
    }

    #[test]
    fn inject_refuses_a_real_source_address() {
        let paths = VirtualPaths::new(4, 4);
        assert!(!paths.inject((Ipv4Addr::LOCALHOST, 5000).into(), Bytes::from_static(b"x")));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(paths.poll_recv_injected(&mut cx).is_pending());
    }

    #[tokio::test]
    async fn outgoing_has_one_consumer_and_drops_when_full() {
        let paths = VirtualPaths::new(1, 2);
        let to = VirtualPaths::address(3);
        let mut outgoing = paths.take_outgoing().expect("first take");
        assert!(paths.take_outgoing().is_none(), "second take");
        assert!(paths.try_send_outgoing(to, Bytes::from_static(b"a")));
        assert!(paths.try_send_outgoing(to, Bytes::from_static(b"b")));
        assert!(
            !paths.try_send_outgoing(to, Bytes::from_static(b"c")),
            "queue of 2 is full"
        );
        assert_eq!(outgoing.recv().await, Some((to, Bytes::from_static(b"a"))));
        assert_eq!(outgoing.recv().await, Some((to, Bytes::from_static(b"b"))));
        drop(outgoing);
        assert!(
            !paths.try_send_outgoing(to, Bytes::from_static(b"d")),
            "consumer gone"
        );
    }
}
