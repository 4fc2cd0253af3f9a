//! The steps of the demo's story, as the caller gets them (text and JSON).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

/// A feed as a step shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct StepFeed {
    /// Its public key, hex.
    pub(crate) feed: String,
    /// Its headers (values as text, lossily).
    pub(crate) headers: BTreeMap<String, String>,
}

/// One step of the story, as it happened. Serialized as one JSON object with `"step"`
/// naming the variant.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub(crate) enum Step {
    /// The private DHT is up.
    Dht {
        /// Its nodes.
        nodes: usize,
        /// Their addresses, the bootstrap list every demo node uses.
        bootstrap: Vec<String>,
        /// The temporary data directory.
        dir: String,
    },
    /// A node is up.
    Node {
        /// `writer`, `reader-1`, `reader-2`.
        name: String,
        /// Its public key, hex.
        key: String,
        /// Its QUIC address.
        addr: SocketAddr,
    },
    /// The writer wrote and shared a feed.
    Shared {
        /// Who.
        node: String,
        /// The namespace.
        namespace: String,
        /// Whether the namespace has a secret (it is offered only to peers that prove it).
        secret: bool,
        /// The feed and the headers it is offered with.
        feed: StepFeed,
        /// Its blocks.
        blocks: u64,
        /// Its bytes.
        bytes: u64,
    },
    /// A reader opened the namespace.
    NamespaceOpened {
        /// Who.
        node: String,
        /// The namespace.
        namespace: String,
        /// Opened with the namespace's secret.
        secret: bool,
        /// Its accept policy, in words.
        policy: String,
    },
    /// A node joined a topic on the DHT.
    Joined {
        /// Who.
        node: String,
        /// The topic, hex.
        topic: String,
        /// What the topic is.
        what: String,
    },
    /// A connection is up.
    Connected {
        /// Who reports it.
        node: String,
        /// The peer, by name.
        peer: String,
        /// The peer's address.
        addr: SocketAddr,
    },
    /// A peer offered feeds, as the node sees the offer.
    Offer {
        /// Who was offered.
        node: String,
        /// By whom.
        peer: String,
        /// The namespace.
        namespace: String,
        /// The feeds with their headers.
        feeds: Vec<StepFeed>,
    },
    /// A reader's accept policy decided an offered feed.
    Decision {
        /// Whose policy.
        node: String,
        /// The feed (by the headers the policy saw).
        feed: StepFeed,
        /// Accepted or refused.
        accepted: bool,
        /// Why, in words.
        reason: String,
    },
    /// A node's store accepted a feed it did not hold: a replica is created.
    Accepted {
        /// Who.
        node: String,
        /// From whom.
        peer: String,
        /// The namespace.
        namespace: String,
        /// The feed, hex.
        feed: String,
        /// The peer is not the writer: the feed was forwarded.
        forwarded: bool,
    },
    /// Verified blocks arrived (emitted on every `Downloaded` event; the binary prints
    /// some of them).
    Progress {
        /// Who.
        node: String,
        /// From whom.
        peer: String,
        /// The feed, hex.
        feed: String,
        /// Bytes of the feed stored by this node so far (all peers).
        bytes: u64,
        /// The feed's bytes.
        total: u64,
    },
    /// A node is in sync with a peer on the feed at its full length.
    Synced {
        /// Who.
        node: String,
        /// With whom.
        peer: String,
        /// The feed, hex.
        feed: String,
        /// The length both hold.
        length: u64,
    },
    /// A reader's copy was read back and checked.
    Verified {
        /// Whose copy.
        node: String,
        /// The feed, hex.
        feed: String,
        /// Blocks read back equal to what was written.
        blocks: u64,
        /// The tree hash of the blocks read back, equal to the one the writer signed.
        tree_hash: String,
        /// The refused feed is not held by this node.
        refused_absent: bool,
        /// The peers this node was ever connected to, by name.
        peers: Vec<String>,
    },
}

pub(super) fn short(hex: &str) -> &str {
    hex.get(..8).unwrap_or(hex)
}

pub(super) fn fmt_headers(headers: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(" ")
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Dht {
                nodes,
                bootstrap,
                dir,
            } => write!(
                f,
                "local DHT up: {nodes} nodes on {} ...; data in {dir}",
                bootstrap.first().map(String::as_str).unwrap_or("?")
            ),
            Step::Node { name, key, addr } => {
                write!(f, "{name:<8} up: key {} at {addr}", short(key))
            }
            Step::Shared {
                node,
                namespace,
                secret,
                feed,
                blocks,
                bytes,
            } => write!(
                f,
                "{node:<8} shares feed {} ({blocks} blocks, {bytes} bytes) in {}namespace {namespace:?} with headers {}",
                short(&feed.feed),
                if *secret { "secret " } else { "" },
                fmt_headers(&feed.headers)
            ),
            Step::NamespaceOpened {
                node,
                namespace,
                secret,
                policy,
            } => write!(
                f,
                "{node:<8} opens namespace {namespace:?}{}: {policy}",
                if *secret { " with its secret" } else { "" }
            ),
            Step::Joined { node, topic, what } => {
                write!(f, "{node:<8} joins {what} {} on the DHT", short(topic))
            }
            Step::Connected { node, peer, addr } => {
                write!(f, "{node:<8} connected to {peer} at {addr}")
            }
            Step::Offer {
                node,
                peer,
                namespace,
                feeds,
            } => {
                write!(f, "{node:<8} is offered by {peer} in {namespace:?}:")?;
                for feed in feeds {
                    write!(f, " [{} {}]", short(&feed.feed), fmt_headers(&feed.headers))?;
                }
                Ok(())
            }
            Step::Decision {
                node,
                feed,
                accepted,
                reason,
            } => write!(
                f,
                "{node:<8} {} feed {} ({reason})",
                if *accepted { "accepts" } else { "REFUSES" },
                short(&feed.feed)
            ),
            Step::Accepted {
                node,
                peer,
                feed,
                forwarded,
                ..
            } => write!(
                f,
                "{node:<8} replicates feed {} from {peer}{}",
                short(feed),
                if *forwarded {
                    " (forwarded: it has no connection to the writer)"
                } else {
                    ""
                }
            ),
            Step::Progress {
                node,
                peer,
                feed,
                bytes,
                total,
            } => write!(
                f,
                "{node:<8} holds {bytes} of {total} bytes of feed {} (last from {peer})",
                short(feed)
            ),
            Step::Synced {
                node,
                peer,
                feed,
                length,
            } => write!(
                f,
                "{node:<8} in sync with {peer} on feed {} at {length} blocks",
                short(feed)
            ),
            Step::Verified {
                node,
                blocks,
                tree_hash,
                refused_absent,
                peers,
                ..
            } => write!(
                f,
                "{node:<8} verified: {blocks} blocks read back equal, tree hash {} as signed{}; connected to {}",
                short(tree_hash),
                if *refused_absent {
                    ", refused feed not held"
                } else {
                    ""
                },
                peers.join(", ")
            ),
        }
    }
}
