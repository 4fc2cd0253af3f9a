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
//!
//! Two nodes in one process, with a loop that carries their datagrams (a driver does
//! the same with a UDP socket and a timer on `poll_timeout`):
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Instant;
//! use replic8_discovery::krpc::{DhtCore, DhtCoreConfig, DhtEvent, Id};
//!
//! let now = Instant::now();
//! let (a_addr, b_addr): (SocketAddr, SocketAddr) =
//!     ("10.0.0.1:6881".parse().expect("addr"), "10.0.0.2:6881".parse().expect("addr"));
//! let mut a = DhtCore::new(DhtCoreConfig::default(), Id([1; 20]), 1, now);
//! let mut b = DhtCore::new(DhtCoreConfig::default(), Id([2; 20]), 2, now);
//! // Carries datagrams until both are quiet; returns b's events, then a's.
//! let mut pump = |a: &mut DhtCore, b: &mut DhtCore| {
//!     loop {
//!         let mut moved = false;
//!         while let Some(t) = a.poll_transmit() {
//!             assert_eq!(t.to, b_addr);
//!             b.handle_datagram(a_addr, &t.payload, now);
//!             moved = true;
//!         }
//!         while let Some(t) = b.poll_transmit() {
//!             a.handle_datagram(b_addr, &t.payload, now);
//!             moved = true;
//!         }
//!         if !moved {
//!             break;
//!         }
//!     }
//!     let events: Vec<DhtEvent> = std::iter::from_fn(|| b.poll_event()).collect();
//!     (events, std::iter::from_fn(|| a.poll_event()).collect::<Vec<_>>())
//! };
//!
//! // b joins through a, then announces port 4000 for an infohash.
//! b.bootstrap(&[a_addr], now).expect("starts");
//! pump(&mut a, &mut b);
//! let info_hash = Id([7; 20]);
//! b.announce(info_hash, Some(4000), now).expect("starts");
//! let (b_events, _) = pump(&mut a, &mut b);
//! assert!(b_events.iter().any(|e| matches!(e, DhtEvent::LookupDone { announced: 1, .. })));
//!
//! // a stored it, and finds it.
//! a.get_peers(info_hash, now).expect("starts");
//! let (_, a_events) = pump(&mut a, &mut b);
//! let found = "10.0.0.2:4000".parse::<SocketAddr>().expect("addr");
//! assert!(a_events.iter().any(|e| matches!(e, DhtEvent::Peers { peers, .. } if peers.contains(&found))));
//! ```

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
