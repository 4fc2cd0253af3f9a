//! Errors, one enum per operation.

use std::io;
use std::net::SocketAddr;

/// Starting the `Discovery` actor failed. Each variant is a configuration problem that
/// the user must fix; nothing is retried.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A bootstrap entry is not `host:port`.
    #[error("bootstrap entry {entry:?} is not host:port")]
    BootstrapSyntax {
        /// The entry as configured.
        entry: String,
    },
    /// A bootstrap host did not resolve.
    #[error("cannot resolve bootstrap host {entry:?}: {source}")]
    BootstrapResolve {
        /// The entry as configured.
        entry: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// A bootstrap host resolved to no address of a family the DHT runs on.
    #[error("bootstrap host {entry:?} has no address of the dht's address families")]
    BootstrapNoAddress {
        /// The entry as configured.
        entry: String,
    },
    /// The DHT config binds neither an IPv4 nor an IPv6 socket.
    #[error("the dht binds no socket: set an IPv4 or IPv6 address")]
    DhtNoSocket,
    /// The node id file could not be read or written, or does not hold 40 hex digits.
    #[error("dht node id file {path}: {reason}")]
    DhtIdFile {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The DHT's UDP socket could not be bound (for example, the port is in use).
    #[error("cannot bind the dht socket to {addr}: {source}")]
    DhtBind {
        /// The address we tried (port 0 means any).
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The mDNS daemon could not start.
    #[error("cannot start mdns: {0}")]
    Mdns(String),
    /// The QUIC port is 0, so there is nothing to announce.
    #[error("quic port 0 cannot be announced")]
    NoQuicPort,
    /// A blocking start-up task panicked or was cancelled.
    #[error("start-up task failed: {0}")]
    Task(String),
}

/// A `Join` did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// Neither `announce` nor `lookup` was asked for.
    #[error("join with neither announce nor lookup")]
    NothingToDo,
    /// The topic was left (or joined again) before the first round completed.
    #[error("topic left before the join completed")]
    Left,
    /// The actor stopped.
    #[error("discovery stopped")]
    Stopped,
}

/// A `Leave`, `LookupAt` or `WaitFlushed` named a topic that is not joined, or was left
/// while waiting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic is not joined (or, for `LookupAt`, joined without lookup).
    #[error("topic not joined")]
    NotJoined,
    /// The topic was left while the caller waited.
    #[error("topic left while waiting")]
    Left,
    /// The actor stopped.
    #[error("discovery stopped")]
    Stopped,
}

/// A DHT backend operation failed; the string says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The announce was not stored on any node.
    #[error("announce failed: {0}")]
    Announce(String),
}
