//! The integration tests of `replic8-discovery`, one test binary: each file of this
//! directory is a module, and the helpers they share are modules of it too,
//! compiled and linked once (decision 137). Run one file's tests with
//! `cargo test -p replic8-discovery --test it <file>::`.

#[path = "../common/mod.rs"]
mod common;

mod dht;
mod krpc_driver;
mod krpc_sim;
mod krpc_wire;
mod lan;
mod libtorrent;
mod static_peers;
