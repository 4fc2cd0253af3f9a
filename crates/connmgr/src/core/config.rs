//! `PolicyConfig`: the limits and timings of the policy, and the firewall callback.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::key::PeerKey;

/// A callback that may refuse a peer by key and address (`false` refuses).
pub type Firewall = Arc<dyn Fn(&PeerKey, SocketAddr) -> bool + Send + Sync>;

/// Limits and timings of the policy.
#[derive(Clone)]
pub struct PolicyConfig {
    /// Most peers connected at once (held or up). Our own dials may use all of them;
    /// inbound peers at most `max_peers - reserved_outbound`.
    pub max_peers: usize,
    /// Slots of `max_peers` that inbound peers may not take: kept for the peers we dial
    /// (a user's `connect`, static peers, peers found for a joined topic). At most half of
    /// `max_peers` is reserved, whatever this says, so a small table still takes inbound
    /// peers.
    pub reserved_outbound: usize,
    /// Most inbound peers (held or up) from one IPv4 address or one IPv6 /64.
    pub max_peers_per_ip: usize,
    /// Most dials in their handshake at once.
    pub max_pending_dials: usize,
    /// Most incoming handshakes at once.
    pub max_pending_accepts: usize,
    /// Most incoming handshakes at once from one IPv4 address or one IPv6 /64 whose
    /// address is validated; one more from an address that is not validated is answered
    /// with a QUIC retry instead.
    pub max_pending_per_ip: usize,
    /// From this many incoming handshakes in progress on, a handshake from an address that
    /// is not validated is answered with a stateless QUIC retry (address validation)
    /// instead of being accepted.
    pub retry_above: usize,
    /// An inbound peer that is not marked active (`handle_activity`) may be evicted to
    /// free a slot once it has been connected this long: time to say hello and prove a
    /// namespace first.
    pub eviction_grace: Duration,
    /// Wait after the 1st, 2nd, ... consecutive failure of an address; after the last
    /// one the address is dropped for `drop_for`.
    pub backoff: Vec<Duration>,
    /// Each backoff delay is multiplied by a factor drawn from `1 ± jitter`.
    pub jitter: f64,
    /// How long a dropped address is refused.
    pub drop_for: Duration,
    /// How long a connection initiated by the smaller key is held before `PeerUp` when the
    /// greater key does not confirm it sooner (a peer without confirmations, a lost
    /// datagram), or while a dial of ours to that peer is under way.
    pub settle_window: Duration,
    /// How long a dial that waits for another connection to the same key (one in flight,
    /// or the peer's own dial that beat ours) waits before it fails with `Timeout`.
    pub dial_wait: Duration,
    /// Seed for the jitter RNG (tests); `None` seeds from the OS.
    pub rng_seed: Option<u64>,
    /// Refuses peers by key and address.
    pub firewall: Option<Firewall>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            max_peers: 128,
            // A quarter of the table: as many as the dials a node makes at once
            // (`max_pending_dials`), so a burst of our own dials always finds slots.
            reserved_outbound: 32,
            // Many honest peers can share one NAT address, and tests run many nodes on
            // 127.0.0.1: a quarter of the table, so one address never fills it alone.
            max_peers_per_ip: 32,
            max_pending_dials: 32,
            max_pending_accepts: 64,
            // An eighth of the pending accepts: a handshake takes one round trip or two,
            // so more than a few from one address at once is not one honest node.
            max_pending_per_ip: 8,
            // A quarter of `max_pending_accepts`: below it a handshake costs no extra
            // round trip; above it, spoofed or stalled Initials (each holds a slot for the
            // handshake timeout) cannot fill the rest, since a retry holds no state.
            retry_above: 16,
            // Enough for a hello and a namespace proof on a slow path (a few round trips
            // and the session layer's store calls); short enough that a table filled with
            // idle keys frees a slot within seconds.
            eviction_grace: Duration::from_secs(10),
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(15),
            ],
            jitter: 0.2,
            drop_for: Duration::from_secs(600),
            // A few loopback or LAN round trips plus scheduling slack on a loaded machine;
            // only connections initiated by the smaller key and not confirmed pay it.
            settle_window: Duration::from_millis(250),
            // A handshake timeout plus the settle window.
            dial_wait: Duration::from_secs(11),
            rng_seed: None,
            firewall: None,
        }
    }
}

impl PolicyConfig {
    /// The default policy without backoff: a failed address may be dialed again at once
    /// and is never dropped. For an endpoint that dials again as soon as it is closed on
    /// (the attackers of `replic8 bench flood`, a test's hostile peer), never a node's.
    pub fn redial_at_once() -> Self {
        Self {
            backoff: vec![Duration::ZERO],
            jitter: 0.0,
            drop_for: Duration::ZERO,
            ..Self::default()
        }
    }
}

impl fmt::Debug for PolicyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyConfig")
            .field("max_peers", &self.max_peers)
            .field("reserved_outbound", &self.reserved_outbound)
            .field("max_peers_per_ip", &self.max_peers_per_ip)
            .field("max_pending_dials", &self.max_pending_dials)
            .field("max_pending_accepts", &self.max_pending_accepts)
            .field("max_pending_per_ip", &self.max_pending_per_ip)
            .field("retry_above", &self.retry_above)
            .field("eviction_grace", &self.eviction_grace)
            .field("backoff", &self.backoff)
            .field("jitter", &self.jitter)
            .field("drop_for", &self.drop_for)
            .field("settle_window", &self.settle_window)
            .field("dial_wait", &self.dial_wait)
            .field("rng_seed", &self.rng_seed)
            .field("firewall", &self.firewall.is_some())
            .finish()
    }
}
