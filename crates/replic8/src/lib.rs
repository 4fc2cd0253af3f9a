//! replic8 sessions: many stores replicate many feeds over one QUIC connection.
//!
//! One session runs per peer connection. A control stream carries the session messages
//! (hello, namespace proofs, offers and their answers); each replicated feed gets its own
//! QUIC stream, handed to the store that owns the feed. A store is any actix actor that
//! handles the store messages: it shares feeds in namespaces with headers, accepts a
//! subset of what a peer offers, and runs its own protocol on the streams it is given.
