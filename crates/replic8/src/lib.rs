//! replic8 sessions: many stores replicate many feeds over one QUIC connection.
//!
//! One session runs per peer connection. A control stream carries the session messages
//! (hello, namespace tags, offers and their answers); each replicated feed gets its own
//! QUIC stream, handed to the store that owns the feed. A store is any actix actor that
//! handles the store messages: it shares feeds in namespaces with headers, accepts a
//! subset of what a peer offers, and runs its own protocol on the streams it is given.
//! The wire format is written up in `docs/PROTOCOL.md`.
//!
//! Modules:
//! - [`keys`]: 32-byte keys, namespace keys, and the connection-bound tags and feed
//!   capabilities over the TLS exporter value.
//! - [`frame`]: bytes to length-prefixed, bounded frames; no I/O.
//! - [`message`]: the session messages and their bounded bincode encoding.
//! - [`session`]: the session core without I/O: hello, tags, offers, streams, end.
//! - [`store`]: the store interface, as actix messages.
//! - [`driver`]: runs one session over a `quinn::Connection` (tokio tasks, no actor).
//! - [`feed_store`]: [`feed_store::FeedStore`], the default store: feeds of
//!   `replic8-store` replicated with its verified sync core on feed streams.
//! - `stream_io`: the frame writer task and deadline sleep shared by the driver and
//!   the feed streams.
//! - [`actor`]: `SessionsActor`, the store registry and one driver per connection.

pub mod actor;
pub mod driver;
pub mod feed_store;
pub mod frame;
pub mod keys;
pub mod message;
pub mod session;
pub mod store;
mod stream_io;
