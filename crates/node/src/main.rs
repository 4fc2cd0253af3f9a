//! The `replic8` command.
//!
//! The commands (`demo`, `daemon`, `feed`, `join`, `share`, `bench`, ...) arrive with the
//! node issue; until then the binary only answers `--help` and `--version`.

use clap::Parser;

/// replic8: peer-to-peer replication of signed append-only feeds over QUIC.
#[derive(Debug, Parser)]
#[command(name = "replic8", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("replic8: no commands are available yet; see --help");
    std::process::exit(2);
}
