//! QUIC transport settings and the UDP socket: the node's defaults, measured with the
//! `transport` bench (`examples/transport.rs`, numbers in `docs/PERFORMANCE.md`). A
//! connection's settings depend on the kind of path to its peer (`PathKind`): local
//! paths may carry jumbo datagrams, wide ones keep the internet's 1500-byte MTU.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::{AckFrequencyConfig, IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::socket::{unmap, VirtualPaths};

/// Largest UDP payload path MTU discovery tries on a wide-area path: quinn's default, a
/// 1500-byte Ethernet MTU less the IPv6 and UDP headers. The internet's paths are hardly
/// ever larger, and every size tried above a path's MTU costs three lost probes, each
/// holding its size of the congestion window until it is declared lost.
pub const WIDE_MAX_UDP_PAYLOAD: u16 = 1452;

/// Default of `TransportTuning::local_max_udp_payload`: a 9000-byte jumbo frame less the
/// IPv6 and UDP headers. On loopback (MTU 65,536) it cut raw QUIC's CPU per byte by about
/// half against 1452, and `bench bulk`'s by about 40 %. Larger sizes saved little more
/// CPU but cost ~13 times their size in memory per busy connection (quinn's send buffer
/// holds 10 datagrams): the swarm's writer, with 40 connections, peaked at 39.4 MiB at
/// 16 KiB and 61.9 MiB at 65,000, against issue 17's 40 (decision 240).
pub const LOCAL_MAX_UDP_PAYLOAD: u16 = 8952;

/// Where a peer is, as far as the size of its datagrams goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// This host or a private network (loopback, RFC 1918, link-local, unique local
    /// addresses): links that may carry jumbo frames, or 65,536 bytes on loopback.
    Local,
    /// Anywhere else, and relay circuits (which carry at most 1500-byte packets).
    Wide,
}

impl PathKind {
    /// The kind of path to `peer` (plain or IPv4-mapped, or a relay's virtual address).
    pub fn of(peer: SocketAddr) -> PathKind {
        if VirtualPaths::is_virtual(&peer) {
            return PathKind::Wide;
        }
        let local = match unmap(peer).ip() {
            IpAddr::V4(ip) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
            IpAddr::V6(ip) => {
                ip.is_loopback() || ip.is_unique_local() || ip.is_unicast_link_local()
            }
        };
        match local {
            true => PathKind::Local,
            false => PathKind::Wide,
        }
    }
}

/// One value per `PathKind`.
#[derive(Debug, Clone)]
pub(crate) struct ByPath<T> {
    /// For `PathKind::Local`.
    pub(crate) local: T,
    /// For `PathKind::Wide`.
    pub(crate) wide: T,
}

impl<T> ByPath<T> {
    /// The value for the path to `peer`.
    pub(crate) fn to(&self, peer: SocketAddr) -> &T {
        match PathKind::of(peer) {
            PathKind::Local => &self.local,
            PathKind::Wide => &self.wide,
        }
    }
}

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

/// Default of [`TransportTuning::receive_window`]: 16 MiB, what thirteen streams at a
/// full stream window (quinn's 1.25 MB) hold. A peer's streams together buffer at most
/// this in QUIC when we do not read them (unlimited, ~100 streams could hold 125 MB);
/// a single stream never reaches it, and at 100 ms it still carries 160 MB/s.
pub const DEFAULT_RECEIVE_WINDOW: u32 = 16 << 20;

/// Knobs of the QUIC transport; `Default` holds the node's defaults.
#[derive(Debug, Clone)]
pub struct TransportTuning {
    /// Per-stream receive window in bytes; `None` keeps quinn's default (1.25 MB).
    pub stream_receive_window: Option<u32>,
    /// Per-connection receive window in bytes: the most a peer's streams together may
    /// have sent that we have not read; `None` keeps quinn's default (unlimited: up to
    /// every stream's window at once, 1.25 MB for each of ~100 streams).
    pub receive_window: Option<u32>,
    /// Per-connection send window in bytes; `None` keeps quinn's default (10 MB).
    pub send_window: Option<u64>,
    /// Congestion controller.
    pub congestion: Congestion,
    /// Generic segmentation offload (several datagrams per syscall) where the OS has it.
    pub gso: bool,
    /// Initial max UDP payload; quinn's default is 1200, the QUIC minimum.
    pub initial_mtu: u16,
    /// Path MTU discovery: probes up to `local_max_udp_payload` on a local path and
    /// `WIDE_MAX_UDP_PAYLOAD` on others, then keeps the largest that got through.
    pub mtu_discovery: bool,
    /// Largest UDP payload on a local path (`PathKind::Local`): the upper bound of path
    /// MTU discovery there, and the largest datagram the endpoint takes (the
    /// `max_udp_payload_size` it tells every peer). At least `WIDE_MAX_UDP_PAYLOAD`; quinn
    /// caps it at 65,527.
    pub local_max_udp_payload: u16,
    /// How often the peer on a local path acknowledges what we send: the ACK frequency
    /// extension (draft-ietf-quic-ack-frequency, which quinn implements and announces),
    /// asked of the peer once the connection is up. `None` (the default) leaves the peer
    /// at QUIC's own pace: an ACK every second packet, which quinn already coalesces to
    /// one per receive batch (5–12 per MiB in the bulk bench at 8952-byte packets, so
    /// asking for fewer saved no measurable CPU; decision 255). Wide paths always keep
    /// the default: there ACKs drive loss recovery and the congestion window over real
    /// queues.
    pub local_acks: Option<AckTuning>,
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
            receive_window: Some(DEFAULT_RECEIVE_WINDOW),
            send_window: None,
            congestion: Congestion::Cubic,
            gso: true,
            initial_mtu: 1200,
            mtu_discovery: true,
            local_max_udp_payload: LOCAL_MAX_UDP_PAYLOAD,
            local_acks: None,
            socket_buffer: Some(4 << 20),
            // Well inside the idle timeout, so that one lost PING does not end a connection.
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// What we ask of a peer's acknowledgements (the ACK frequency extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckTuning {
    /// Ack-eliciting packets the peer may receive before it must send an ACK (QUIC's
    /// default behaves as 1: an ACK for every second packet).
    pub after_packets: u32,
    /// The longest the peer may hold an ACK back when fewer packets arrived; quinn
    /// clamps it to at most the larger of the path's round-trip time and 25 ms. `None`
    /// keeps the peer's own (25 ms by default).
    pub max_delay: Option<Duration>,
}

impl Default for AckTuning {
    /// An ACK after more than eight packets (about 80 KB at 8952-byte datagrams), at the
    /// peer's own delay: the setting decision 255 measured.
    fn default() -> Self {
        AckTuning {
            after_packets: 8,
            max_delay: None,
        }
    }
}

impl TransportTuning {
    /// The largest UDP payload on a `path` (path MTU discovery's upper bound there).
    pub fn max_udp_payload(&self, path: PathKind) -> u16 {
        match path {
            PathKind::Local => self.local_max_udp_payload.max(WIDE_MAX_UDP_PAYLOAD),
            PathKind::Wide => WIDE_MAX_UDP_PAYLOAD,
        }
    }
}

/// The quinn `TransportConfig` for `tuning` on a `path` (used by the node and by
/// `replic8 bench`).
pub fn transport_config(tuning: &TransportTuning, path: PathKind) -> TransportConfig {
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
    let window = initial_window(tuning, path);
    match tuning.congestion {
        Congestion::Cubic => {
            let mut cubic = quinn::congestion::CubicConfig::default();
            if let Some(window) = window {
                cubic.initial_window(window);
            }
            config.congestion_controller_factory(Arc::new(cubic))
        }
        Congestion::Bbr => {
            let mut bbr = quinn::congestion::BbrConfig::default();
            if let Some(window) = window {
                bbr.initial_window(window);
            }
            config.congestion_controller_factory(Arc::new(bbr))
        }
        Congestion::NewReno => {
            let mut reno = quinn::congestion::NewRenoConfig::default();
            if let Some(window) = window {
                reno.initial_window(window);
            }
            config.congestion_controller_factory(Arc::new(reno))
        }
    };
    config.enable_segmentation_offload(tuning.gso);
    config.initial_mtu(tuning.initial_mtu.max(1200));
    config.mtu_discovery_config(tuning.mtu_discovery.then(|| {
        let mut mtud = MtuDiscoveryConfig::default();
        mtud.upper_bound(tuning.max_udp_payload(path));
        mtud
    }));
    config.ack_frequency_config(ack_frequency(tuning, path));
    config.keep_alive_interval(Some(tuning.keep_alive));
    // Idle timeouts above 2^62 ms are refused by quinn; ours are seconds.
    config.max_idle_timeout(IdleTimeout::try_from(tuning.idle_timeout).ok());
    config
}

/// The ACK frequency we ask of the peer on a `path`: `tuning.local_acks` on a local
/// path, nothing on a wide one.
fn ack_frequency(tuning: &TransportTuning, path: PathKind) -> Option<AckFrequencyConfig> {
    let acks = match path {
        PathKind::Local => tuning.local_acks?,
        PathKind::Wide => return None,
    };
    let mut frequency = AckFrequencyConfig::default();
    frequency
        .ack_eliciting_threshold(VarInt::from_u32(acks.after_packets))
        .max_ack_delay(acks.max_delay);
    Some(frequency)
}

/// The initial congestion window on a `path`, where quinn's default (14,720 bytes, ten
/// datagrams of 1472) does not fit: on a local path RFC 9002's ten datagrams of the
/// largest size discovery may reach. With quinn's default a window grows to no more than
/// twice a jumbo datagram on an idle connection, one unacknowledged MTU probe then fills
/// it, and quinn holds back even a `CONNECTION_CLOSE` behind it: the peer saw a
/// stateless reset instead of the reason (decision 240, amended).
fn initial_window(tuning: &TransportTuning, path: PathKind) -> Option<u64> {
    let datagram = u64::from(tuning.max_udp_payload(path));
    let window = 10 * datagram;
    (tuning.mtu_discovery && window > DEFAULT_INITIAL_WINDOW).then_some(window)
}

/// quinn's initial congestion window: RFC 9002's `max(14720, 2 × 1472)` for its default
/// 1472-byte datagrams.
const DEFAULT_INITIAL_WINDOW: u64 = 14_720;

/// The node's default transport configuration (`TransportTuning::default()`) on a
/// wide-area path.
pub fn default_transport_config() -> TransportConfig {
    transport_config(&TransportTuning::default(), PathKind::Wide)
}

/// The transport configurations of `tuning` for both kinds of path.
pub(crate) fn transport_configs(tuning: &TransportTuning) -> ByPath<Arc<TransportConfig>> {
    ByPath {
        local: Arc::new(transport_config(tuning, PathKind::Local)),
        wide: Arc::new(transport_config(tuning, PathKind::Wide)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(addr: &str) -> PathKind {
        PathKind::of(addr.parse().expect("a socket address"))
    }

    #[test]
    fn loopback_and_private_addresses_are_local_paths() {
        for addr in [
            "127.0.0.1:1",
            "127.8.9.10:1",
            "10.1.2.3:1",
            "172.16.0.1:1",
            "172.31.255.1:1",
            "192.168.1.20:1",
            "169.254.7.7:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
            "[::ffff:192.168.0.9]:1",
            "[fe80::1]:1",
            "[fd12:3456::1]:1",
        ] {
            assert_eq!(kind(addr), PathKind::Local, "{addr}");
        }
    }

    #[test]
    fn public_addresses_and_relay_circuits_are_wide_paths() {
        for addr in [
            "8.8.8.8:1",
            "172.32.0.1:1",
            "100.64.0.1:1",
            "[2001:db8::1]:1",
            "[::ffff:8.8.8.8]:1",
        ] {
            assert_eq!(kind(addr), PathKind::Wide, "{addr}");
        }
        // Relay circuits use unique local addresses, and carry packets of 1500 at most.
        assert_eq!(PathKind::of(VirtualPaths::address(3)), PathKind::Wide);
    }

    #[test]
    fn a_local_path_starts_with_ten_jumbo_datagrams_of_window() {
        let tuning = TransportTuning::default();
        assert_eq!(
            initial_window(&tuning, PathKind::Local),
            Some(10 * u64::from(LOCAL_MAX_UDP_PAYLOAD))
        );
        // Wide paths, and local ones that never grow past quinn's datagrams, keep quinn's.
        assert_eq!(initial_window(&tuning, PathKind::Wide), None);
        let small = TransportTuning {
            local_max_udp_payload: WIDE_MAX_UDP_PAYLOAD,
            ..TransportTuning::default()
        };
        assert_eq!(initial_window(&small, PathKind::Local), None);
        let no_discovery = TransportTuning {
            mtu_discovery: false,
            ..TransportTuning::default()
        };
        assert_eq!(initial_window(&no_discovery, PathKind::Local), None);
    }

    #[test]
    fn ack_frequency_is_asked_only_on_local_paths_and_only_when_set() {
        let off = TransportTuning::default();
        assert!(ack_frequency(&off, PathKind::Local).is_none());
        let on = TransportTuning {
            local_acks: Some(AckTuning {
                after_packets: 12,
                max_delay: Some(Duration::from_millis(3)),
            }),
            ..TransportTuning::default()
        };
        assert!(ack_frequency(&on, PathKind::Wide).is_none());
        // quinn keeps the fields private; its Debug output shows what it will send.
        let local = format!("{:?}", ack_frequency(&on, PathKind::Local));
        assert!(local.contains("ack_eliciting_threshold: 12"), "{local}");
        assert!(local.contains("max_ack_delay: Some(3ms)"), "{local}");
    }

    #[test]
    fn the_local_payload_size_never_goes_below_the_wide_one() {
        let tuning = TransportTuning {
            local_max_udp_payload: 1000,
            ..TransportTuning::default()
        };
        assert_eq!(
            tuning.max_udp_payload(PathKind::Local),
            WIDE_MAX_UDP_PAYLOAD
        );
        let tuning = TransportTuning::default();
        assert_eq!(
            tuning.max_udp_payload(PathKind::Local),
            LOCAL_MAX_UDP_PAYLOAD
        );
        assert_eq!(tuning.max_udp_payload(PathKind::Wide), WIDE_MAX_UDP_PAYLOAD);
    }
}
