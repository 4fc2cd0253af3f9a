//! The integration tests of `replic8`, one test binary: each file of this
//! directory is a module, and the helpers they share are modules of it too,
//! compiled and linked once (decision 137). Run one file's tests with
//! `cargo test -p replic8 --test it <file>::`.

#[path = "../tls/mod.rs"]
mod tls;
#[path = "../util/mod.rs"]
mod util;

mod actor;
mod codec;
mod feed_nodes;
mod feed_store;
mod feed_store_policy;
mod feed_store_whole;
mod quic;
mod session;
mod store_messages;
mod stream_reopen;
mod whole;
mod whole_quic;
