//! Observed addresses: what peers report seeing us at, and what that says about our NAT.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::key::PeerKey;

/// Most reporters remembered; the oldest report goes first. Enough to see a majority and
/// two reporters at distinct addresses; a peer cannot grow it past this by reconnecting.
pub const MAX_REPORTERS: usize = 32;
/// Most public addresses listed (`ObservedAddrs::public_addrs`).
pub const MAX_PUBLIC_ADDRS: usize = 4;

/// How our NAT maps our one UDP socket to external ports, as the reports show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatType {
    /// Fewer than two reporters at distinct IP addresses: cannot tell yet.
    Unknown,
    /// Peers at different IP addresses see us at the same external port: one mapping
    /// for every destination (or no NAT). Hole punching works against it.
    EndpointIndependent,
    /// Peers at different IP addresses see different external ports ("symmetric"): a
    /// new mapping per destination, so the port one peer saw is useless to another.
    EndpointDependent,
}

impl fmt::Display for NatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatType::Unknown => "unknown",
            NatType::EndpointIndependent => "endpoint-independent",
            NatType::EndpointDependent => "endpoint-dependent",
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Report {
    /// Where the reporter is (its address on the connection it reported on).
    from: IpAddr,
    /// Where it sees us.
    observed: SocketAddr,
    at: Instant,
}

/// The latest report of each reporter (at most `MAX_REPORTERS`).
#[derive(Debug, Default, Clone)]
pub struct ObservedAddrs {
    reports: HashMap<PeerKey, Report>,
}

impl ObservedAddrs {
    /// `reporter`, at `from`, sees us at `observed`. Replaces its earlier report.
    pub fn record(&mut self, reporter: PeerKey, from: IpAddr, observed: SocketAddr, at: Instant) {
        if !self.reports.contains_key(&reporter) && self.reports.len() >= MAX_REPORTERS {
            if let Some(oldest) = self
                .reports
                .iter()
                .min_by_key(|(_, r)| r.at)
                .map(|(k, _)| *k)
            {
                self.reports.remove(&oldest);
            }
        }
        self.reports.insert(reporter, Report { from, observed, at });
    }

    /// How many reporters are remembered.
    pub fn len(&self) -> usize {
        self.reports.len()
    }

    /// Whether nobody reported yet.
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    /// The address `reporter` last saw us at.
    pub fn reported_by(&self, reporter: &PeerKey) -> Option<SocketAddr> {
        self.reports.get(reporter).map(|r| r.observed)
    }

    /// The addresses peers see us at, the one most reporters saw first (ties: the lower
    /// address), at most `MAX_PUBLIC_ADDRS`.
    pub fn public_addrs(&self) -> Vec<SocketAddr> {
        let mut counts: HashMap<SocketAddr, usize> = HashMap::new();
        for r in self.reports.values() {
            *counts.entry(r.observed).or_default() += 1;
        }
        let mut addrs: Vec<(SocketAddr, usize)> = counts.into_iter().collect();
        addrs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        addrs
            .into_iter()
            .take(MAX_PUBLIC_ADDRS)
            .map(|(a, _)| a)
            .collect()
    }

    /// The mapping type: among the reports of the external IP most reporters saw, one per
    /// reporter IP (the latest), all with the same port is endpoint-independent, any two
    /// different ports endpoint-dependent; fewer than two reporter IPs is unknown.
    pub fn nat_type(&self) -> NatType {
        let mut by_ip: HashMap<IpAddr, usize> = HashMap::new();
        for r in self.reports.values() {
            *by_ip.entry(r.observed.ip()).or_default() += 1;
        }
        let Some(ip) = by_ip
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(ip, _)| ip)
        else {
            return NatType::Unknown;
        };
        let mut latest: HashMap<IpAddr, Report> = HashMap::new();
        for r in self.reports.values().filter(|r| r.observed.ip() == ip) {
            let slot = latest.entry(r.from).or_insert(*r);
            if r.at > slot.at {
                *slot = *r;
            }
        }
        if latest.len() < 2 {
            return NatType::Unknown;
        }
        let mut ports = latest.values().map(|r| r.observed.port());
        let first = ports.next();
        if ports.all(|p| Some(p) == first) {
            NatType::EndpointIndependent
        } else {
            NatType::EndpointDependent
        }
    }
}
