//! The `replic8` command.
//!
//! Today it offers `feed import --only-hash`, which needs no daemon. The node's other
//! commands (`demo`, `daemon`, the daemon's client commands, `bench`) arrive with the node
//! issue. Errors are one line on stderr and a non-zero exit, never a backtrace.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use replic8_node::import;

/// replic8: peer-to-peer replication of signed append-only feeds over QUIC.
#[derive(Debug, Parser)]
#[command(name = "replic8", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with feeds.
    #[command(subcommand)]
    Feed(FeedCommand),
}

#[derive(Debug, Subcommand)]
enum FeedCommand {
    /// Split a file into blocks and print the feed's key, length and tree hash.
    Import {
        /// The file to import; `-` reads standard input.
        file: PathBuf,
        /// Bytes per block (the last block may be shorter).
        #[arg(long, default_value_t = 64 * 1024)]
        block_size: usize,
        /// Only compute the tree hash the feed would have: no key, nothing stored, no daemon.
        #[arg(long)]
        only_hash: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replic8: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Feed(FeedCommand::Import {
            file,
            block_size,
            only_hash,
            json,
        }) => {
            if !only_hash {
                bail!("importing into a running daemon is not available yet; use --only-hash");
            }
            let summary = if file.as_os_str() == "-" {
                import::hash_only(std::io::stdin().lock(), block_size)?
            } else {
                let f = std::fs::File::open(&file)
                    .with_context(|| format!("cannot open {}", file.display()))?;
                import::hash_only(std::io::BufReader::with_capacity(1 << 20, f), block_size)
                    .with_context(|| file.display().to_string())?
            };
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer(&mut out, &summary)?;
                writeln!(out)?;
            } else {
                writeln!(out, "tree_hash  {}", summary.tree_hash)?;
                writeln!(out, "length     {}", summary.length)?;
                writeln!(out, "bytes      {}", summary.bytes)?;
                writeln!(out, "block_size {}", summary.block_size)?;
            }
            Ok(())
        }
    }
}
