//! The integration tests of `replic8-tests`, one test binary: each file of this
//! directory is a module, and the helpers they share are modules of it too,
//! compiled and linked once (decision 137). Run one file's tests with
//! `cargo test -p replic8-tests --test it <file>::`.

mod alone;
mod cli_mission;
mod faults;
mod feeds;
mod hostile;
mod nat;
mod nodes;
mod open_network;
mod redial_topics;
mod shared_socket;
mod swarm;
