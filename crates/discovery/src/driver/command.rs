//! What a [`KrpcDht`](super::KrpcDht) handle asks the task, and the status it answers.

use std::net::SocketAddr;

use tokio::sync::{mpsc, oneshot};

pub use crate::dht::DhtStatus;
use crate::error::BackendError;
use crate::krpc::Id;

/// Infohashes whose found-peer counts are kept for [`DhtStatus::peers_found`].
pub(super) const MAX_COUNTED_INFOHASHES: usize = 1024;

/// What a handle asks the task.
#[derive(Debug)]
pub(super) enum Command {
    Announce {
        info_hash: Id,
        port: u16,
        reply: oneshot::Sender<Result<usize, BackendError>>,
    },
    Lookup {
        info_hash: Id,
        peers: mpsc::UnboundedSender<Vec<SocketAddr>>,
    },
    Status {
        reply: oneshot::Sender<DhtStatus>,
    },
    Bootstrapped {
        reply: oneshot::Sender<usize>,
    },
    SaveNodes {
        reply: oneshot::Sender<Result<usize, String>>,
    },
    Seeds(Vec<SocketAddr>),
}
