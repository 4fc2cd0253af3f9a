//! The messages of the `Discovery` actor, one struct each, with typed replies.

use std::net::SocketAddr;

use actix::{Message, Recipient};

use crate::core::{JoinReport, PeerSource, TopicStatus};
use crate::driver::DhtStatus;
use crate::error::{JoinError, TopicError};
use crate::topic::Topic;

/// Join a topic: announce ourselves for it and/or look up its peers. Resolves when the
/// first announce finished on every backend (stored, or failed and scheduled for retry,
/// see `JoinReport`) and the first lookup round completed on every backend. Joining a
/// joined topic starts it afresh.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<JoinReport, JoinError>")]
pub struct Join {
    /// The topic.
    pub topic: Topic,
    /// Announce our QUIC port for it.
    pub announce: bool,
    /// Look up its peers and report them with `PeerFound`.
    pub lookup: bool,
}

/// Leave a topic: stop announcing and looking up. Resolves once the backends' work for
/// it is cancelled and its LAN advertisement withdrawn. A DHT record cannot be withdrawn:
/// it expires on the nodes that hold it (about 30 minutes after the last refresh).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), TopicError>")]
pub struct Leave {
    /// The topic.
    pub topic: Topic,
}

/// Whether the topic is joined.
#[derive(Debug, Clone, Message)]
#[rtype(result = "bool")]
pub struct Joined {
    /// The topic.
    pub topic: Topic,
}

/// Whether the topic is flushed: a lookup round completed on every enabled backend and
/// every peer found since the join was reported tried (`PeerTried`). False if not joined.
#[derive(Debug, Clone, Message)]
#[rtype(result = "bool")]
pub struct Flushed {
    /// The topic.
    pub topic: Topic,
}

/// Resolves when the topic is flushed (at once if it is).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), TopicError>")]
pub struct WaitFlushed {
    /// The topic.
    pub topic: Topic,
}

/// The joined topics and their state, sorted by topic.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Vec<TopicStatus>")]
pub struct Topics;

/// A peer was found for a topic. Sent to every subscriber; the node turns it into a dial
/// and reports back with `PeerTried`. Sent once per lookup round per address.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct PeerFound {
    /// The topic.
    pub topic: Topic,
    /// Where the peer listens (its QUIC address). Carries no key: the DHT does not.
    pub addr: SocketAddr,
    /// Which backend found it.
    pub source: PeerSource,
}

/// Send every future `PeerFound` to this recipient.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<PeerFound>);

/// The connection layer tried `addr`, found for `topic` (whatever the outcome).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PeerTried {
    /// The topic it was found for.
    pub topic: Topic,
    /// The address from `PeerFound`.
    pub addr: SocketAddr,
}

/// Look for `topic` at `addr`: reported now (`PeerSource::Static`) and in every later
/// lookup round while the topic stays joined. For networks with neither DHT nor multicast.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), TopicError>")]
pub struct LookupAt {
    /// The topic, joined with lookup.
    pub topic: Topic,
    /// The address.
    pub addr: SocketAddr,
}

/// Counters since the actor started.
#[derive(Debug, Clone, Message)]
#[rtype(result = "DiscoveryStats")]
pub struct Stats;

/// What `Stats` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveryStats {
    /// Topics joined now.
    pub topics: usize,
    /// DHT announces started.
    pub dht_announces: u64,
    /// DHT announces that failed.
    pub dht_announce_failures: u64,
    /// DHT lookups started.
    pub dht_lookups: u64,
    /// `PeerFound` messages sent.
    pub peers_reported: u64,
    /// The DHT socket's local address (the IPv4 one if there are two), if the DHT is
    /// enabled.
    pub dht_addr: Option<SocketAddr>,
    /// Every DHT socket's local address.
    pub dht_addrs: Vec<SocketAddr>,
}

/// The DHT node's counters, tables and peers found per infohash; `None` without a DHT
/// or with a backend that keeps none.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Option<DhtStatus>")]
pub struct DhtInfo;

/// Leave every topic, withdraw the LAN advertisements, stop the backends and the actor.
/// Resolves when that is done.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Close;
