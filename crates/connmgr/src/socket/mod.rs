//! The endpoint's UDP socket and what shares it.
//!
//! - `NodeSocket`: the `quinn::AsyncUdpSocket` under the endpoint; it hands KRPC (DHT)
//!   datagrams to a `KrpcPort` and carries packets for virtual addresses through
//!   `VirtualPaths`;
//! - `VirtualPaths`: the queues to and from relay circuits, which give a relayed peer an
//!   address the endpoint sends to like any other;
//! - `endpoint_config`: the endpoint settings the shared socket relies on.

mod cid;
mod demux;
mod node_socket;
mod virtual_paths;

pub use node_socket::{unmap, Families, KrpcPort, KrpcSender, NodeSocket, KRPC_QUEUE};
pub use virtual_paths::VirtualPaths;

/// The quinn `EndpointConfig` a `NodeSocket` needs: connection ids that never start with
/// an ASCII digit, and peers never told they may clear the fixed bit (so every short
/// header starts at 0x40..=0x7f). Together they keep QUIC packets apart from KRPC ones.
/// `max_udp_payload` (the local bound, `TransportTuning::max_udp_payload`) is the largest
/// UDP payload the endpoint takes: what it tells peers and what its receive buffers hold.
pub fn endpoint_config(max_udp_payload: u16) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    // quinn refuses values outside 1200..=65,527; clamped, this cannot fail.
    let _ = config.max_udp_payload_size(max_udp_payload.clamp(1200, 65_527));
    config.cid_generator(|| Box::new(cid::NoDigitCids::default()));
    config.grease_quic_bit(false);
    config
}
