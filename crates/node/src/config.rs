//! Node configuration: every option, readable from a TOML file, validated with clear errors.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use replic8::keys::NamespaceSecret;
use serde::{Deserialize, Serialize};

/// What reading or validating a configuration can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was read.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not valid TOML or names an unknown option or a wrong type.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file that was parsed.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An option has a value outside what it accepts.
    #[error("invalid config: {option}: {reason}")]
    Invalid {
        /// The option, as written in the file (`limits.max_peers`).
        option: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// No data directory was given and the platform has none to default to.
    #[error("no data directory: pass --data-dir or set data_dir in the config")]
    NoDataDir,
}

/// The whole configuration of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the identity, feeds and persisted joins and shares live. `None`: the
    /// platform's data directory (`$XDG_DATA_HOME/replic8` on Linux).
    pub data_dir: Option<PathBuf>,
    /// Keep feeds in memory instead of on disk (nothing survives a restart).
    pub in_memory: bool,
    /// The UDP address of the QUIC endpoint (one socket for listening and dialing).
    pub listen: SocketAddr,
    /// Peer discovery.
    pub discovery: DiscoverySection,
    /// Connection limits.
    pub limits: LimitsSection,
    /// Counters in Prometheus text format over HTTP, off unless an address is given.
    pub metrics: MetricsSection,
    /// NAT traversal: observed addresses and reachability checks.
    pub nat: NatSection,
    /// Namespaces opened at every start (`[[namespace]]` entries), not persisted: the
    /// file is their record.
    #[serde(rename = "namespace", skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceSection>,
}

/// A `[[namespace]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSection {
    /// The namespace's name (not empty: the public namespace is always open).
    pub name: String,
    /// A file holding the namespace's secret as 64 hex digits (`replic8 namespace
    /// new-secret > FILE`), read at start. None: a named namespace without a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Which new feeds to accept: `all`, `held`, `none` or `manual`. Default: `all` with
    /// `accept_header`, else `held`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<crate::node::namespace_spec::AcceptMode>,
    /// With `accept = "all"`: accept only feeds whose headers hold each key with this
    /// value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub accept_header: BTreeMap<String, String>,
    /// Offer accepted feeds to the namespace's other peers. Default: whether the
    /// namespace accepts new feeds (`all`, `manual`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<bool>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: None,
            in_memory: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            discovery: DiscoverySection::default(),
            limits: LimitsSection::default(),
            metrics: MetricsSection::default(),
            nat: NatSection::default(),
            namespaces: Vec::new(),
        }
    }
}

/// The `[discovery]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoverySection {
    /// Use the Mainline DHT.
    pub dht: bool,
    /// DHT bootstrap nodes as `host:port`. `None`: the public bootstrap nodes; an empty
    /// list: none (a node that only serves others who bootstrap from it).
    pub bootstrap: Option<Vec<String>>,
    /// Run the DHT node in server mode (answer other nodes' queries) from the start;
    /// otherwise it is read-only until a query from a node it never contacted shows
    /// that others reach it.
    pub dht_server: bool,
    /// Keep the DHT node read-only (BEP 43: it never answers queries) whatever the
    /// network shows, e.g. on a metered link. Cannot be combined with `dht_server`.
    pub dht_read_only: bool,
    /// Run the DHT on the QUIC socket (`listen`), so that the port the DHT announces is
    /// the one peers dial and the NAT mapping its traffic opens is the one QUIC uses. It
    /// then runs on the address families that socket carries (narrowed by `dht_bind`).
    /// Off: the DHT has sockets of its own (`dht_port`, `dht_bind`).
    pub share_socket: bool,
    /// UDP port of the DHT's own sockets (only with `share_socket = false`). Omitted:
    /// 6881 if free, else any free port.
    pub dht_port: Option<u16>,
    /// Addresses of the DHT's own sockets, at most one IPv4 and one IPv6. Empty:
    /// `0.0.0.0` and `::` (IPv4 alone on a host without IPv6). With `share_socket`, only
    /// the families named count (IPv4 only, say), not the addresses.
    pub dht_bind: Vec<IpAddr>,
    /// Use mDNS on the local network.
    pub lan: bool,
    /// Peers to try for every joined topic, as `ip:port`.
    pub static_peers: Vec<SocketAddr>,
    /// Seconds between re-announcements of a joined topic.
    pub announce_interval_secs: u64,
    /// Seconds between lookups of a joined topic, once the first fast rounds are done.
    pub lookup_interval_secs: u64,
}

impl Default for DiscoverySection {
    fn default() -> Self {
        Self {
            dht: true,
            bootstrap: None,
            dht_server: false,
            dht_read_only: false,
            share_socket: true,
            dht_port: None,
            dht_bind: Vec::new(),
            lan: true,
            static_peers: Vec::new(),
            announce_interval_secs: 15 * 60,
            lookup_interval_secs: 3 * 60,
        }
    }
}

/// The `[limits]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Most connected peers; the next connection is refused with a reason.
    pub max_peers: usize,
    /// Most dials in flight at once.
    pub max_pending_dials: usize,
    /// Most peers a node dials for one joined topic (counting the dials in flight and
    /// the peers being redialed); further peers discovery finds for it are not dialed.
    /// Peers that dial us are not refused by it: `max_peers` bounds those.
    pub max_peers_per_topic: usize,
    /// Most feed streams open at once on one connection.
    pub max_feed_streams: usize,
    /// Seconds a peer is banned (refused, dialing and accepting) after its session ended
    /// because it broke the protocol (`EndReason::is_misbehaviour`); 0 bans no one.
    pub ban_secs: u64,
    /// Seconds one control frame may take to arrive once it started; a peer that
    /// stalls longer has its session ended with `timeout` (not banned).
    pub stall_timeout_secs: u64,
    /// Peer slots kept for peers we dial (a `connect`, a static peer, a peer found for
    /// a joined topic): inbound peers get at most `max_peers` minus this (and at least
    /// half of `max_peers`).
    pub reserved_outbound: usize,
    /// Most inbound peers from one IPv4 address or IPv6 /64.
    pub max_peers_per_ip: usize,
    /// Most incoming handshakes in progress from one IPv4 address or IPv6 /64.
    pub max_pending_per_ip: usize,
    /// Incoming handshakes in progress above which a new one must first prove its
    /// address (a QUIC retry, one extra round trip).
    pub retry_above: usize,
    /// Most feeds new to the store accepted from one peer per hour, in namespaces
    /// opened to new feeds; unset: the store's default (1,024).
    pub new_feeds_per_peer: Option<u32>,
    /// Most replicas created from offers, in total; unset: the store's default (16,384).
    pub max_replicas: Option<u64>,
    /// Most bytes of data answers held for peers at once, over all feeds and peers (read
    /// from disk and not yet acknowledged); unset: the store's default (6 MiB). At least
    /// one answer's largest frame (1,114,116 bytes). One peer holds at most this less one
    /// answer, so from two answers up others are served beside it.
    pub serve_bytes_in_flight: Option<u64>,
    /// Seconds a feed stream may hold data answers its peer takes none of before it is
    /// ended (the peer stopped reading; its answers go back to the budget above); unset:
    /// the store's default (30). At least 1.
    pub serve_stall_secs: Option<u64>,
    /// Most bytes received on feed streams and not yet verified, over all feeds and
    /// peers; past it each stream reads one frame at a time (QUIC holds its peer back);
    /// unset: the store's default (34 MiB, room for two downloads whose verifiers are
    /// behind).
    pub receive_bytes_held: Option<u64>,
    /// The same bound over one peer's feed streams: past it that peer's streams read a
    /// frame at a time, whatever room is left in `receive_bytes_held`, so one peer cannot
    /// take it all; unset: the store's default (17 MiB, one download whose verifier is
    /// behind).
    pub receive_bytes_held_per_peer: Option<u64>,
    /// Seconds a feed request may go unanswered, and a frame a peer began on a feed
    /// stream may stay unfinished while we read, before the session ends with `timeout`
    /// (no ban); unset: the store's default (60). At least 1. Raise it for links so slow
    /// that a 1 MiB answer takes longer.
    pub request_timeout_secs: Option<u64>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_peers: 128,
            max_pending_dials: 32,
            // Enough that the peers of a topic, each dialing this many found at random,
            // form one connected swarm a few hops across (decision 175); few enough that
            // a topic of hundreds of peers costs each of them tens of connections, not
            // hundreds.
            max_peers_per_topic: 8,
            max_feed_streams: 256,
            // Long enough that a misbehaving peer's redials cost it nothing but a
            // refused handshake for a while, short enough that a peer with a bug that
            // was fixed (or a mistaken ban) is back soon without an operator.
            ban_secs: 10 * 60,
            stall_timeout_secs: 30,
            // The connection manager's defaults; their reasons are in
            // `replic8_connmgr::PolicyConfig` and docs/SECURITY.md.
            reserved_outbound: 32,
            max_peers_per_ip: 32,
            max_pending_per_ip: 8,
            retry_above: 16,
            new_feeds_per_peer: None,
            max_replicas: None,
            serve_bytes_in_flight: None,
            serve_stall_secs: None,
            receive_bytes_held: None,
            receive_bytes_held_per_peer: None,
            request_timeout_secs: None,
        }
    }
}

/// The `[nat]` section: what the node learns about its NATs, and what it does for peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatSection {
    /// Tell each peer the address we see it at, and learn our public address and the
    /// NAT's mapping type from what peers tell us.
    pub observe: bool,
    /// Ask peers to dial us back from another port (are we reachable?), and dial peers
    /// back when they ask (rate-limited, only to the address we see them at).
    pub dial_back: bool,
    /// Over a connection relayed for us, exchange public addresses with the peer and
    /// both dial direct at once (hole punching); a direct connection replaces the
    /// relayed one.
    pub punch: bool,
    /// Relay connections between two of our peers that cannot reach each other (spends
    /// our bandwidth on their traffic; they stay end-to-end encrypted).
    pub relay: bool,
    /// Most circuits relayed at once.
    pub relay_max_circuits: usize,
    /// Most circuits relayed at once with one peer as either end.
    pub relay_max_circuits_per_peer: usize,
    /// Most bytes one relayed circuit carries before it is closed.
    pub relay_max_circuit_bytes: u64,
    /// Seconds one relayed circuit may stay open.
    pub relay_circuit_secs: u64,
    /// Most peers registered with us (as a relay) to be found through us.
    pub relay_max_registrations: usize,
    /// Milliseconds a dial waits for its direct handshake before it also asks our relays
    /// who is at the address and dials through them; 0: never through a relay.
    pub relayed_dial_ms: u64,
}

impl Default for NatSection {
    fn default() -> Self {
        // Both cost a few small messages per connection and a handshake now and then.
        let relay = replic8_connmgr::RelayConfig::default();
        Self {
            observe: true,
            dial_back: true,
            punch: true,
            // Off: relaying spends our bandwidth on others' traffic; an operator opts in.
            relay: false,
            // The connection manager's defaults; their reasons are in
            // `replic8_connmgr::RelayConfig`.
            relay_max_circuits: relay.max_circuits,
            relay_max_circuits_per_peer: relay.max_circuits_per_peer,
            relay_max_circuit_bytes: relay.max_circuit_bytes,
            relay_circuit_secs: relay.circuit_lifetime.as_secs(),
            relay_max_registrations: relay.max_registrations,
            relayed_dial_ms: replic8_connmgr::NatConfig::default()
                .relayed_dial_after
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}

/// The `[metrics]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// The HTTP address to serve counters on, e.g. `127.0.0.1:9464`.
    pub listen: Option<SocketAddr>,
}

impl NodeConfig {
    /// Read and validate a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parse and validate TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Check every option's value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |option, reason: &str| {
            Err(ConfigError::Invalid {
                option,
                reason: reason.to_owned(),
            })
        };
        if self.limits.max_peers == 0 {
            return invalid("limits.max_peers", "must be at least 1");
        }
        if self.limits.max_pending_dials == 0 {
            return invalid("limits.max_pending_dials", "must be at least 1");
        }
        if self.limits.max_peers_per_topic == 0 {
            return invalid("limits.max_peers_per_topic", "must be at least 1");
        }
        if self.limits.max_feed_streams == 0 {
            return invalid("limits.max_feed_streams", "must be at least 1");
        }
        if self.limits.max_peers_per_ip == 0 {
            return invalid("limits.max_peers_per_ip", "must be at least 1");
        }
        // A namespace that should accept no new feed says so with its policy.
        if self.limits.new_feeds_per_peer == Some(0) {
            return invalid("limits.new_feeds_per_peer", "must be at least 1");
        }
        if self.limits.max_replicas == Some(0) {
            return invalid("limits.max_replicas", "must be at least 1");
        }
        if self
            .limits
            .serve_bytes_in_flight
            .is_some_and(|n| n < replic8::feed_store::MIN_SERVE_BYTES_IN_FLIGHT as u64)
        {
            return invalid(
                "limits.serve_bytes_in_flight",
                "must be at least 1114116 (one data answer's largest frame)",
            );
        }
        if self.limits.serve_stall_secs == Some(0) {
            return invalid("limits.serve_stall_secs", "must be at least 1");
        }
        if self.limits.request_timeout_secs == Some(0) {
            return invalid("limits.request_timeout_secs", "must be at least 1");
        }
        if self.limits.max_pending_per_ip == 0 {
            return invalid("limits.max_pending_per_ip", "must be at least 1");
        }
        if self.limits.stall_timeout_secs == 0 {
            return invalid("limits.stall_timeout_secs", "must be at least 1");
        }
        if self.discovery.announce_interval_secs < 10 {
            return invalid(
                "discovery.announce_interval_secs",
                "must be at least 10 (DHT nodes drop peers that announce too often)",
            );
        }
        if self.discovery.lookup_interval_secs == 0 {
            return invalid("discovery.lookup_interval_secs", "must be at least 1");
        }
        if let Some(list) = &self.discovery.bootstrap {
            for entry in list {
                if parse_host_port(entry).is_none() {
                    return Err(ConfigError::Invalid {
                        option: "discovery.bootstrap",
                        reason: format!("{entry:?} is not host:port"),
                    });
                }
            }
        }
        let d = &self.discovery;
        if d.dht_server && d.dht_read_only {
            return invalid(
                "discovery.dht_read_only",
                "cannot be combined with discovery.dht_server",
            );
        }
        if d.share_socket && d.dht_port.is_some() {
            return invalid(
                "discovery.dht_port",
                "the dht uses the QUIC port while share_socket = true (the default)",
            );
        }
        if d.dht_bind.iter().filter(|ip| ip.is_ipv4()).count() > 1
            || d.dht_bind.iter().filter(|ip| ip.is_ipv6()).count() > 1
        {
            return invalid(
                "discovery.dht_bind",
                "at most one IPv4 and one IPv6 address",
            );
        }
        let mut names = std::collections::HashSet::new();
        for ns in &self.namespaces {
            if ns.name.is_empty() {
                return invalid(
                    "namespace.name",
                    "must not be empty (the public namespace is always open)",
                );
            }
            if !names.insert(ns.name.as_str()) {
                return Err(ConfigError::Invalid {
                    option: "namespace.name",
                    reason: format!("{:?} is given twice", ns.name),
                });
            }
            if let Err(e) = crate::node::namespace_spec::NamespaceSpec::new(
                ns.accept,
                ns.accept_header.clone(),
                ns.forward,
            ) {
                return Err(ConfigError::Invalid {
                    option: "namespace.accept_header",
                    reason: format!("namespace {:?}: {e}", ns.name),
                });
            }
        }
        if self.in_memory && self.data_dir.is_some() {
            return invalid(
                "in_memory",
                "cannot be combined with data_dir (an in-memory node keeps nothing on disk)",
            );
        }
        Ok(())
    }

    /// The `[[namespace]]` entries with their secrets read from their files.
    pub fn open_namespaces(
        &self,
    ) -> Result<
        Vec<(
            String,
            Option<NamespaceSecret>,
            crate::node::namespace_spec::NamespaceSpec,
        )>,
        ConfigError,
    > {
        self.namespaces
            .iter()
            .map(|ns| {
                let bad = |reason: String| ConfigError::Invalid {
                    option: "namespace.secret_file",
                    reason: format!("namespace {:?}: {reason}", ns.name),
                };
                let secret = match &ns.secret_file {
                    None => None,
                    Some(path) => {
                        let text = std::fs::read_to_string(path)
                            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
                        Some(
                            crate::node::parse_secret(&text)
                                .map_err(|e| bad(format!("{}: {e}", path.display())))?,
                        )
                    }
                };
                let spec = crate::node::namespace_spec::NamespaceSpec::new(
                    ns.accept,
                    ns.accept_header.clone(),
                    ns.forward,
                )
                .map_err(|e| bad(e.to_string()))?;
                Ok((ns.name.clone(), secret, spec))
            })
            .collect()
    }

    /// The data directory: the configured one, or the platform default.
    pub fn resolve_data_dir(&self) -> Result<PathBuf, ConfigError> {
        match &self.data_dir {
            Some(dir) => Ok(dir.clone()),
            None => dirs::data_dir()
                .map(|d| d.join("replic8"))
                .ok_or(ConfigError::NoDataDir),
        }
    }
}

/// Split `host:port` (a bracketed IPv6 host allowed), checking the port is a number.
fn parse_host_port(entry: &str) -> Option<(&str, u16)> {
    let (host, port) = entry.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(NodeConfig::from_toml("").unwrap(), NodeConfig::default());
    }

    #[test]
    fn every_option_round_trips_through_toml() {
        let mut config = NodeConfig {
            data_dir: Some(PathBuf::from("/var/lib/replic8")),
            listen: "127.0.0.1:4433".parse().unwrap(),
            ..NodeConfig::default()
        };
        config.discovery.bootstrap = Some(vec!["router.example:6881".into(), "[::1]:7".into()]);
        config.discovery.static_peers = vec!["10.0.0.1:4433".parse().unwrap()];
        config.discovery.lan = false;
        config.discovery.share_socket = false;
        config.discovery.dht_port = Some(6882);
        config.discovery.dht_bind = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        config.limits.max_peers = 7;
        config.limits.max_peers_per_topic = 3;
        config.limits.ban_secs = 0;
        config.limits.stall_timeout_secs = 5;
        config.metrics.listen = Some("127.0.0.1:9464".parse().unwrap());
        config.nat.observe = false;
        config.nat.dial_back = false;
        config.nat.relay = true;
        config.nat.punch = false;
        config.nat.relay_max_circuits = 3;
        config.nat.relay_max_registrations = 9;
        config.nat.relayed_dial_ms = 0;
        let text = toml::to_string(&config).unwrap();
        assert_eq!(NodeConfig::from_toml(&text).unwrap(), config);
    }

    #[test]
    fn unknown_option_is_named() {
        let err = NodeConfig::from_toml("[limits]\nmax_peer = 3\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("max_peer"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = NodeConfig::from_toml("listen = 5\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn bad_values_name_the_option() {
        let cases = [
            ("[limits]\nmax_peers = 0\n", "limits.max_peers"),
            ("[limits]\nmax_replicas = 0\n", "limits.max_replicas"),
            (
                "[limits]\nserve_bytes_in_flight = 1000000\n",
                "limits.serve_bytes_in_flight",
            ),
            (
                "[limits]\nserve_stall_secs = 0\n",
                "limits.serve_stall_secs",
            ),
            (
                "[limits]\nrequest_timeout_secs = 0\n",
                "limits.request_timeout_secs",
            ),
            (
                "[limits]\nmax_peers_per_topic = 0\n",
                "limits.max_peers_per_topic",
            ),
            (
                "[discovery]\ndht_server = true\ndht_read_only = true\n",
                "discovery.dht_read_only",
            ),
            (
                "[limits]\nnew_feeds_per_peer = 0\n",
                "limits.new_feeds_per_peer",
            ),
            (
                "[limits]\nmax_peers_per_ip = 0\n",
                "limits.max_peers_per_ip",
            ),
            (
                "[limits]\nstall_timeout_secs = 0\n",
                "limits.stall_timeout_secs",
            ),
            (
                "[discovery]\nannounce_interval_secs = 1\n",
                "discovery.announce_interval_secs",
            ),
            (
                "[discovery]\nbootstrap = [\"nohost\"]\n",
                "discovery.bootstrap",
            ),
            (
                "[discovery]\nbootstrap = [\":80\"]\n",
                "discovery.bootstrap",
            ),
            (
                "[discovery]\ndht_bind = [\"127.0.0.1\", \"0.0.0.0\"]\n",
                "discovery.dht_bind",
            ),
            ("in_memory = true\ndata_dir = \"/x\"\n", "in_memory"),
        ];
        for (text, option) in cases {
            match NodeConfig::from_toml(text) {
                Err(ConfigError::Invalid { option: o, .. }) => assert_eq!(o, option, "{text}"),
                other => panic!("{text}: expected Invalid({option}), got {other:?}"),
            }
        }
    }

    #[test]
    fn namespaces_parse_with_their_policy_and_secret_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("team.secret");
        std::fs::write(&secret, format!("{}\n", "cd".repeat(32))).unwrap();
        let text = format!(
            "[[namespace]]\nname = \"team\"\nsecret_file = {:?}\n\
             [namespace.accept_header]\nkind = \"photo\"\n\n\
             [[namespace]]\nname = \"inbox\"\naccept = \"manual\"\nforward = false\n",
            secret.display().to_string()
        );
        let config = NodeConfig::from_toml(&text).unwrap();
        let open = config.open_namespaces().unwrap();
        assert_eq!(open.len(), 2);
        let (name, key, spec) = &open[0];
        assert_eq!(name, "team");
        assert_eq!(key.as_ref().unwrap().0, [0xcd; 32]);
        assert_eq!(spec.accept, crate::node::namespace_spec::AcceptMode::All);
        assert_eq!(spec.accept_headers["kind"], "photo");
        assert!(spec.forward);
        let (name, key, spec) = &open[1];
        assert_eq!((name.as_str(), key.is_none()), ("inbox", true));
        assert_eq!(spec.accept, crate::node::namespace_spec::AcceptMode::Manual);
        assert!(!spec.forward);
        assert_eq!(
            NodeConfig::from_toml(&toml::to_string(&config).unwrap()).unwrap(),
            config
        );
    }

    #[test]
    fn bad_namespaces_are_one_line_errors_naming_the_option() {
        let cases = [
            ("[[namespace]]\nname = \"\"\n", "namespace.name"),
            (
                "[[namespace]]\nname = \"a\"\n[[namespace]]\nname = \"a\"\n",
                "namespace.name",
            ),
            (
                "[[namespace]]\nname = \"a\"\naccept = \"held\"\naccept_header = { k = \"v\" }\n",
                "namespace.accept_header",
            ),
        ];
        for (text, option) in cases {
            match NodeConfig::from_toml(text) {
                Err(ConfigError::Invalid { option: o, .. }) => assert_eq!(o, option, "{text}"),
                other => panic!("{text}: expected Invalid({option}), got {other:?}"),
            }
        }
        let err =
            NodeConfig::from_toml("[[namespace]]\nname = \"a\"\naccept = \"some\"\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        // A missing or malformed secret file names the namespace and the file, in one line.
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.secret");
        std::fs::write(&bad, "not hex\n").unwrap();
        for file in [dir.path().join("missing"), bad] {
            let text = format!(
                "[[namespace]]\nname = \"team\"\nsecret_file = {:?}\n",
                file.display().to_string()
            );
            let err = NodeConfig::from_toml(&text)
                .unwrap()
                .open_namespaces()
                .unwrap_err()
                .to_string();
            assert!(err.contains("namespace.secret_file"), "{err}");
            assert!(err.contains("\"team\""), "{err}");
            assert!(err.contains(&file.display().to_string()), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = NodeConfig::from_file(Path::new("/nonexistent/replic8.toml")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/replic8.toml"),
            "{err}"
        );
    }
}
