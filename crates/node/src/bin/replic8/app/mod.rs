//! What only the `replic8` binary uses, apart from its command line: the control socket
//! (both sides), the narrated demo, the benchmarks and file import.
//!
//! - `control`: the daemon's control socket (a Unix socket in a private `run/`
//!   directory, for the daemon's uid only; JSON request lines and binary block frames);
//! - `demo`: `replic8 demo`, the whole mission offline on one machine, told step by step;
//! - `bench`: `replic8 bench`, throughput, memory and discovery latency of this machine;
//! - `import`: hashing a file as a feed would hold it (`feed import --only-hash`).

pub(crate) mod bench;
pub(crate) mod control;
pub(crate) mod demo;
pub(crate) mod import;
