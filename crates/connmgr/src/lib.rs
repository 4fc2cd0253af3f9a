//! The `ConnManager` actor: one authenticated QUIC connection per remote ed25519 key.
//!
//! It owns the node's only `quinn::Endpoint` (server and client on one UDP socket).
//! Peers authenticate with TLS 1.3 raw public keys; when two connections to the same key
//! exist, both sides keep the same one without talking. `Dial`, `Close` and `Ban` come in;
//! `PeerUp` and `PeerDown` go out to subscribers. The dedup and dial policy is a core
//! without I/O.
