//! The integration tests of `replic8-connmgr`, one test binary: each file of this
//! directory is a module, and the helpers they share are modules of it too,
//! compiled and linked once (decision 137). Run one file's tests with
//! `cargo test -p replic8-connmgr --test it <file>::`.

#[path = "../util/mod.rs"]
mod util;

mod bad_input;
mod confirm;
mod loopback;
mod mtu;
mod nat;
mod nat_found;
mod nat_relay;
mod node_socket;
mod slots;
