//! `ConnManagerConfig`: identity, listen address, ALPN, transport and policy.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::core::PolicyConfig;
use crate::key::Identity;
use crate::nat::NatConfig;
use crate::transport::TransportTuning;

/// The ALPN used when the configuration names none. The session layer sets its own
/// (protocol name and version); both sides must offer the same one.
pub const DEFAULT_ALPN: &[u8] = b"replic8-connmgr/0";

/// Everything the `ConnManager` needs.
#[derive(Debug, Clone)]
pub struct ConnManagerConfig {
    /// The node's key pair.
    pub identity: Identity,
    /// Where the one UDP socket binds (listen and dial). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// ALPN protocols offered and accepted, most preferred first.
    pub alpn: Vec<Vec<u8>>,
    /// QUIC transport settings.
    pub transport: TransportTuning,
    /// Dedup and dial policy.
    pub policy: PolicyConfig,
    /// A handshake (dial or accept) that takes longer is abandoned.
    pub handshake_timeout: Duration,
    /// How long the liveness probe of an old connection waits for an acknowledgement,
    /// at least (3 × its RTT).
    pub probe_timeout: Duration,
    /// Observed addresses, reachability checks and their limits.
    pub nat: NatConfig,
    /// Keep the KRPC (DHT) datagrams that arrive on the socket for
    /// `ConnManagerHandle::take_krpc`, so a DHT node can share the socket; off, they are
    /// dropped.
    pub share_krpc: bool,
}

impl ConnManagerConfig {
    /// Defaults for `identity`, listening on all IPv4 interfaces on a free port.
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            alpn: vec![DEFAULT_ALPN.to_vec()],
            transport: TransportTuning::default(),
            policy: PolicyConfig::default(),
            // Long enough for a slow path with loss; a stalled handshake holds one of
            // `max_pending_accepts` slots at most this long.
            handshake_timeout: Duration::from_secs(10),
            // A live peer answers in one RTT plus its ack delay (25 ms by default).
            probe_timeout: Duration::from_millis(500),
            nat: NatConfig::default(),
            share_krpc: false,
        }
    }

    /// The same with another listen address.
    pub fn with_listen(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }

    /// The same with another ALPN list.
    pub fn with_alpn(mut self, alpn: Vec<Vec<u8>>) -> Self {
        self.alpn = alpn;
        self
    }
}
