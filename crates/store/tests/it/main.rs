//! The integration tests of `replic8-store`, one test binary: each file of this
//! directory is a module, and the helpers they share are modules of it too,
//! compiled and linked once (decision 137). Run one file's tests with
//! `cargo test -p replic8-store --test it <file>::`.

#[path = "../util/mod.rs"]
mod util;

mod crash;
mod crash_bulk;
mod feed;
mod golden;
mod hostile;
mod proofs;
mod storage_disk;
mod storage_small;
mod sync;
mod sync_mesh;
mod vectors;
