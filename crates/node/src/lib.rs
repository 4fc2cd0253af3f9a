//! The replic8 node: it builds and wires the discovery, connection, session and store
//! actors, owns the configuration and the data directory, and offers the embedding API
//! and the `replic8` binary. It is the only crate that knows all the others.
//!
//! Modules:
//! - [`config`]: every option, from a TOML file, validated;
//! - [`persist`]: the identity key and the persisted joins and shares in the data directory;
//! - [`metrics`]: counters, and the opt-in Prometheus endpoint that serves them;
//! - [`import`]: hashing a file as a feed would hold it (`feed import --only-hash`).

pub mod config;
pub mod import;
pub mod metrics;
pub mod persist;
