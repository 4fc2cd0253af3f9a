//! Cross-crate tests for replic8: several nodes on loopback, faults and misbehaving peers.
//!
//! The scenarios live in `tests/tests/*.rs`; this library holds the helpers they share.
