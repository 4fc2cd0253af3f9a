//! QUIC transport settings and the UDP socket: the node's defaults, measured with the
//! `transport` bench (`examples/transport.rs`, numbers in `docs/PERFORMANCE.md`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

/// Which congestion controller a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// CUBIC (RFC 9438), quinn's default.
    Cubic,
    /// BBR (quinn's experimental implementation).
    Bbr,
    /// NewReno (RFC 9002).
    NewReno,
}

/// Knobs of the QUIC transport; `Default` holds the node's defaults.
#[derive(Debug, Clone)]
pub struct TransportTuning {
    /// Per-stream receive window in bytes; `None` keeps quinn's default (1.25 MB).
    pub stream_receive_window: Option<u32>,
    /// Per-connection receive window in bytes; `None` keeps quinn's default (unlimited).
    pub receive_window: Option<u32>,
    /// Per-connection send window in bytes; `None` keeps quinn's default (10 MB).
    pub send_window: Option<u64>,
    /// Congestion controller.
    pub congestion: Congestion,
    /// Generic segmentation offload (several datagrams per syscall) where the OS has it.
    pub gso: bool,
    /// Initial max UDP payload; quinn's default is 1200, the QUIC minimum.
    pub initial_mtu: u16,
    /// Path MTU discovery (probes up to 1452 bytes, then keeps the largest that got through).
    pub mtu_discovery: bool,
    /// SO_RCVBUF / SO_SNDBUF of the UDP socket in bytes; `None` keeps the OS default. The
    /// kernel caps it at `net.core.rmem_max` / `wmem_max`.
    pub socket_buffer: Option<usize>,
    /// How often an idle connection sends a PING so that it and the NAT mappings stay up.
    pub keep_alive: Duration,
    /// A connection that hears nothing for this long is dead.
    pub idle_timeout: Duration,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            stream_receive_window: None,
            receive_window: None,
            send_window: None,
            congestion: Congestion::Cubic,
            gso: true,
            initial_mtu: 1200,
            mtu_discovery: true,
            socket_buffer: Some(4 << 20),
            // Well inside the idle timeout, so that one lost PING does not end a connection.
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The quinn `TransportConfig` for `tuning` (used by the node and by `replic8 bench`).
pub fn transport_config(tuning: &TransportTuning) -> TransportConfig {
    let mut config = TransportConfig::default();
    if let Some(window) = tuning.stream_receive_window {
        config.stream_receive_window(VarInt::from_u32(window));
    }
    if let Some(window) = tuning.receive_window {
        config.receive_window(VarInt::from_u32(window));
    }
    if let Some(window) = tuning.send_window {
        config.send_window(window);
    }
    match tuning.congestion {
        Congestion::Cubic => config
            .congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default())),
        Congestion::Bbr => {
            config.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
        Congestion::NewReno => config
            .congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default())),
    };
    config.enable_segmentation_offload(tuning.gso);
    config.initial_mtu(tuning.initial_mtu.max(1200));
    config.mtu_discovery_config(tuning.mtu_discovery.then(MtuDiscoveryConfig::default));
    config.keep_alive_interval(Some(tuning.keep_alive));
    // Idle timeouts above 2^62 ms are refused by quinn; ours are seconds.
    config.max_idle_timeout(IdleTimeout::try_from(tuning.idle_timeout).ok());
    config
}

/// The node's default transport configuration (`TransportTuning::default()`).
pub fn default_transport_config() -> TransportConfig {
    transport_config(&TransportTuning::default())
}

/// Binds a non-blocking UDP socket on `addr` with the given buffer sizes.
pub fn bind_udp(addr: SocketAddr, buffer: Option<usize>) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual stack where the OS allows it; a failure leaves an IPv6-only socket.
        let _ = socket.set_only_v6(false);
    }
    if let Some(size) = buffer {
        // Best effort: the kernel clamps to its maximum, and a refusal is not fatal.
        let _ = socket.set_recv_buffer_size(size);
        let _ = socket.set_send_buffer_size(size);
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
