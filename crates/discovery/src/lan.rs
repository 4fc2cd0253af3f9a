//! The LAN backend on mDNS / DNS-SD (`mdns-sd`).
//!
//! Every announced topic is one service instance of type `_replic8._udp.local.`, with a
//! DNS-SD subtype named after the topic (`_<first 20 bytes in hex>._sub._replic8._udp.local.`),
//! the node's QUIC port in its SRV record, and the whole topic (`topic=<64 hex>`) and our
//! LAN instance id (`node=<16 hex>`) in its TXT record. A lookup browses the subtype, so
//! responders answer only for that topic, and keeps what resolves until it is removed.
//! The instance name is `<node id>-<first 8 topic bytes in hex>`: unique per node and
//! topic, 33 bytes, well under the 63-byte DNS label limit.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use mdns_sd::{ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo, UnregisterStatus};

use crate::config::LanConfig;
use crate::error::SpawnError;
use crate::topic::Topic;

/// Our DNS-SD service type.
pub(crate) const SERVICE_TYPE: &str = "_replic8._udp.local.";

/// One node's mDNS presence.
pub(crate) struct Lan {
    daemon: ServiceDaemon,
    /// Random per actor: tells our own instances apart from other nodes'.
    node: String,
    port: u16,
}

impl std::fmt::Debug for Lan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lan")
            .field("node", &self.node)
            .field("port", &self.port)
            .finish()
    }
}

impl Lan {
    /// Starts the mDNS daemon (its own thread).
    pub(crate) fn start(config: &LanConfig, port: u16, node_id: u64) -> Result<Lan, SpawnError> {
        let daemon = ServiceDaemon::new_with_port(config.mdns_port)
            .map_err(|e| SpawnError::Mdns(e.to_string()))?;
        // mdns-sd answers a subtype query with the service type's PTR (the subtype's PTR
        // goes in the additional section), and by default its querier keeps only answers
        // whose PTR names a type it browses, or records it already caches. So our subtype
        // browse dropped every answer to its own queries: a node found peers only from
        // their unsolicited announcements, or by chance of its own cache (a lookup-only
        // join never found a peer that announced before it; a rejoin found none whose
        // type PTR was still cached). Caching every response makes the answers count.
        daemon
            .accept_unsolicited(true)
            .map_err(|e| SpawnError::Mdns(e.to_string()))?;
        Ok(Lan {
            daemon,
            node: format!("{node_id:016x}"),
            port,
        })
    }

    fn subtype(topic: &Topic) -> String {
        format!("_{}._sub.{SERVICE_TYPE}", hex::encode(topic.infohash()))
    }

    fn instance(&self, topic: &Topic) -> String {
        format!("{}-{}", self.node, hex::encode(&topic.as_bytes()[..8]))
    }

    /// Advertises `topic` with our QUIC port on every interface.
    pub(crate) fn register(&self, topic: &Topic) -> Result<(), String> {
        let host = format!("r8-{}.local.", self.node);
        let props = [("topic", topic.to_hex()), ("node", self.node.clone())];
        let info = ServiceInfo::new(
            &Self::subtype(topic),
            &self.instance(topic),
            &host,
            "",
            self.port,
            &props[..],
        )
        .map_err(|e| e.to_string())?
        .enable_addr_auto();
        self.daemon.register(info).map_err(|e| e.to_string())
    }

    /// Withdraws `topic` (sends goodbye packets). The receiver says when it is done.
    pub(crate) fn unregister(&self, topic: &Topic) -> Option<mdns_sd::Receiver<UnregisterStatus>> {
        let fullname = format!("{}.{SERVICE_TYPE}", self.instance(topic));
        self.daemon.unregister(&fullname).ok()
    }

    /// Starts browsing for `topic`'s subtype.
    pub(crate) fn browse(&self, topic: &Topic) -> Result<mdns_sd::Receiver<ServiceEvent>, String> {
        self.daemon
            .browse(&Self::subtype(topic))
            .map_err(|e| e.to_string())
    }

    /// Stops browsing for `topic`.
    pub(crate) fn stop_browse(&self, topic: &Topic) {
        // An error only means the browse had already ended.
        let _ = self.daemon.stop_browse(&Self::subtype(topic));
    }

    /// The addresses of a resolved instance, if it is another node's instance for `topic`.
    /// IPv6 link-local addresses are left out: they need a scope the dialer cannot know.
    pub(crate) fn peers_of(&self, topic: &Topic, service: &ResolvedService) -> Vec<SocketAddr> {
        if service.get_property_val_str("topic") != Some(topic.to_hex().as_str())
            || service.get_property_val_str("node") == Some(self.node.as_str())
            || service.get_port() == 0
        {
            return Vec::new();
        }
        let ips: HashSet<IpAddr> = service
            .get_addresses()
            .iter()
            .map(|ip| ip.to_ip_addr())
            .filter(|ip| match ip {
                IpAddr::V4(v4) => !v4.is_unspecified(),
                IpAddr::V6(v6) => !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80,
            })
            .collect();
        let mut out: Vec<SocketAddr> = ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, service.get_port()))
            .collect();
        out.sort();
        out
    }

    /// Stops the daemon thread.
    pub(crate) fn shutdown(&self) {
        let _ = self.daemon.shutdown();
    }
}
