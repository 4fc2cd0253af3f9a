//! A Mainline DHT node (BEP 5) without I/O: the protocol core a UDP driver runs.
//!
//! Modules:
//! - `bencode`: the bounded bencode decoder and the encoder;
//! - `message`: KRPC messages (BEP 5, with BEP 32, 42 and 43 fields);
//! - `id`: 160-bit keys, XOR distance, BEP 42 node ids;
//! - `hash`: SipHash-2-4 (tokens) and CRC-32C (BEP 42);
//! - `rtt`: round-trip estimates and the timeouts derived from them;
//! - `routing`: the routing table (k-buckets split as BEP 5 says);
//! - `token`: `announce_peer` tokens bound to the querier's IP, with rotating secrets;
//! - `peers`: the bounded store of announced peers;
//! - `limit`: the per-source rate limit on queries answered;
//! - `lookup`: one iterative lookup (find_node, get_peers, announce);
//! - `core`: [`DhtCore`], which ties them together.

pub mod bencode;
pub mod core;
mod hash;
pub mod id;
pub mod limit;
pub mod lookup;
pub mod message;
pub mod peers;
pub mod routing;
pub mod rtt;
pub mod token;

pub use self::core::{
    DhtCore, DhtCoreConfig, DhtEvent, DhtStats, LookupId, LookupKind, StartError, Transmit,
};
pub use self::id::Id;
pub use self::message::{Message, NodeInfo, TxId};
