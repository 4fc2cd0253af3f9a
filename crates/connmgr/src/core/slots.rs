//! Protected slots: incoming handshakes, per-address caps, reserved outbound slots and
//! eviction of idle inbound peers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use super::state::{Activity, Conn, Initiator, Phase};
use super::{ConnCore, ConnId, IncomingStart};
use crate::error::{CloseReason, DownReason, RefuseReason};
use crate::key::PeerKey;

/// Connections are grouped by source for the per-address caps: one IPv4 address, or one
/// IPv6 /64 (what one host or one site usually gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IpGroup {
    V4(Ipv4Addr),
    V6([u8; 8]),
}

impl IpGroup {
    fn of(addr: SocketAddr) -> IpGroup {
        match addr.ip() {
            IpAddr::V4(v4) => IpGroup::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpGroup::V4(v4),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    IpGroup::V6(prefix)
                }
            },
        }
    }
}

impl ConnCore {
    /// A peer at `addr` started a handshake with us; `validated` says whether it proved
    /// it receives at `addr` (quinn's `Incoming::remote_address_validated`: a retry token).
    ///
    /// Not validated: answered with a retry when `retry_above` handshakes are in
    /// progress, or when `max_pending_per_ip` from its address are (the address may be
    /// spoofed: only a validated one is refused for its address). Validated: refused when
    /// `max_pending_accepts` are in progress, or `max_pending_per_ip` validated ones from
    /// its address.
    pub fn handle_incoming(
        &mut self,
        addr: SocketAddr,
        validated: bool,
    ) -> Result<IncomingStart, RefuseReason> {
        let max_pending = self.config.max_pending_accepts;
        if self.shut_down {
            return Err(RefuseReason::TooManyPending(max_pending));
        }
        let group = IpGroup::of(addr);
        let (mut pending, mut from_ip, mut validated_from_ip) = (0, 0, 0);
        for c in self.conns.values() {
            if c.initiator == Initiator::Remote && matches!(c.phase, Phase::Handshaking { .. }) {
                pending += 1;
                if IpGroup::of(c.addr) == group {
                    from_ip += 1;
                    validated_from_ip += usize::from(c.validated);
                }
            }
        }
        if !validated
            && (pending >= self.config.retry_above || from_ip >= self.config.max_pending_per_ip)
        {
            return Ok(IncomingStart::Retry);
        }
        if pending >= max_pending {
            return Err(RefuseReason::TooManyPending(max_pending));
        }
        if validated && validated_from_ip >= self.config.max_pending_per_ip {
            return Err(RefuseReason::TooManyPendingFromIp(
                self.config.max_pending_per_ip,
            ));
        }
        let id = self.new_id();
        self.conns.insert(
            id,
            Conn {
                addr,
                initiator: Initiator::Remote,
                key: None,
                phase: Phase::Handshaking { expected: None },
                validated,
                since: None,
            },
        );
        Ok(IncomingStart::Accept(id))
    }

    /// The layer above says whether the peer `key` is active (shares a namespace with us,
    /// or moves feed traffic) or idle. An inbound peer that is not active, connected for
    /// longer than `eviction_grace`, may be evicted when a slot is needed, the one idle
    /// longest first. Returns whether `key` has a connection (held or up).
    pub fn handle_activity(&mut self, key: PeerKey, active: bool, now: Instant) -> bool {
        if !self.current.contains_key(&key) {
            return false;
        }
        match self.activity.get_mut(&key) {
            Some(a) if a.active == active => {}
            Some(a) => {
                a.active = active;
                a.idle_since = now;
            }
            None => {
                self.activity.insert(
                    key,
                    Activity {
                        active,
                        idle_since: now,
                    },
                );
            }
        }
        true
    }

    /// Inbound peers that may be evicted at `now`, the one idle longest first: up, not
    /// marked active, connected for `eviction_grace` at least, and not being probed
    /// against a newcomer of the same key.
    pub(super) fn evictable(&self, now: Instant) -> Vec<(Instant, ConnId, PeerKey)> {
        let grace = self.config.eviction_grace;
        let mut idle: Vec<(Instant, ConnId, PeerKey)> = self
            .current
            .iter()
            .filter_map(|(key, id)| {
                let c = self.conns.get(id)?;
                let since = c.since?;
                if c.initiator != Initiator::Remote
                    || c.phase != Phase::Up
                    || since + grace > now
                    || self.challenger.contains_key(key)
                {
                    return None;
                }
                match self.activity.get(key) {
                    Some(a) if a.active => None,
                    Some(a) => Some((a.idle_since.max(since), *id, *key)),
                    None => Some((since, *id, *key)),
                }
            })
            .collect();
        idle.sort();
        idle
    }

    /// Evicts the inbound peer idle longest, if one may be; returns whether one was.
    fn evict_one(&mut self, now: Instant) -> bool {
        let Some((_, conn, key)) = self.evictable(now).first().copied() else {
            return false;
        };
        self.drop_conn(conn, key, CloseReason::Evicted, DownReason::Evicted);
        self.activity.remove(&key);
        true
    }

    /// Inbound connections (held or up) now, in total and from `group`.
    fn inbound(&self, group: IpGroup) -> (usize, usize) {
        let mut total = 0;
        let mut from_ip = 0;
        for id in self.current.values() {
            if let Some(c) = self.conns.get(id) {
                if c.initiator == Initiator::Remote {
                    total += 1;
                    from_ip += usize::from(IpGroup::of(c.addr) == group);
                }
            }
        }
        (total, from_ip)
    }

    /// How many inbound peers may be connected: `max_peers` less the reserved slots (at
    /// most half of them).
    fn inbound_limit(&self) -> usize {
        let max = self.config.max_peers;
        max - self.config.reserved_outbound.min(max / 2)
    }

    /// Whether a new peer (a key not current) on `conn` gets a slot, evicting an idle
    /// inbound peer if it must; the refusal if not.
    pub(super) fn take_slot(
        &mut self,
        addr: SocketAddr,
        initiator: Initiator,
        now: Instant,
    ) -> Option<RefuseReason> {
        let max = self.config.max_peers;
        if initiator == Initiator::Local {
            if self.current.len() >= max && !self.evict_one(now) {
                return Some(RefuseReason::TooManyPeers(max));
            }
            return None;
        }
        let (inbound, from_ip) = self.inbound(IpGroup::of(addr));
        if from_ip >= self.config.max_peers_per_ip {
            return Some(RefuseReason::TooManyPeersFromIp(
                self.config.max_peers_per_ip,
            ));
        }
        let limit = self.inbound_limit();
        let full = if self.current.len() >= max {
            Some(RefuseReason::TooManyPeers(max))
        } else if inbound >= limit {
            Some(RefuseReason::TooManyInbound(limit))
        } else {
            None
        };
        match full {
            Some(reason) if !self.evict_one(now) => Some(reason),
            _ => None,
        }
    }
}
