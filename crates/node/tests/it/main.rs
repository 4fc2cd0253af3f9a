//! The integration tests of `replic8-node`, one test binary: each file of this
//! directory is a module, and the helpers they share are modules of it too,
//! compiled and linked once (decision 137). Run one file's tests with
//! `cargo test -p replic8-node --test it <file>::`.

#[path = "../support/mod.rs"]
mod support;

#[cfg(feature = "cli")]
mod bench;
#[cfg(feature = "cli")]
mod cli;
mod cli_feeds;
mod custom_store;
mod swarm_bench;
