//! The `replic8` command.
//!
//! `demo` runs the whole mission offline (a local DHT and three nodes in a temporary
//! directory); `feed import --only-hash` needs no daemon. The daemon and its client
//! commands are not there yet. Logs go to stderr, filtered by `RUST_LOG` (default
//! `warn`). Errors are one line on stderr and a non-zero exit, never a backtrace.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use replic8_node::{demo, import};

/// replic8: peer-to-peer replication of signed append-only feeds over QUIC.
#[derive(Debug, Parser)]
#[command(name = "replic8", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole mission offline: a local DHT on 127.0.0.1 and three nodes on disk in
    /// a temporary directory; a feed written on one, shared with headers, discovered,
    /// accepted, replicated to the other two and verified.
    Demo {
        /// Megabytes (MiB) of feed data to write and replicate.
        #[arg(long, default_value_t = 32)]
        size_mb: usize,
        /// Bytes per block.
        #[arg(long, default_value_t = 64 * 1024)]
        block_size: usize,
        /// No progress bars.
        #[arg(long)]
        no_progress: bool,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
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
        Command::Demo {
            size_mb,
            block_size,
            no_progress,
            json,
        } => {
            let options = demo::DemoOptions {
                bytes: size_mb
                    .checked_mul(1 << 20)
                    .context("--size-mb is too large")?,
                block_size,
                progress: !no_progress && !json,
            };
            let runtime = tokio::runtime::Runtime::new().context("cannot start a runtime")?;
            let summary = runtime.block_on(demo::run(options))?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer(&mut out, &summary)?;
                writeln!(out)?;
            } else {
                print_summary(&mut out, &summary)?;
            }
            Ok(())
        }
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

fn print_summary(out: &mut impl Write, s: &demo::DemoSummary) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(out, "feed      {}", s.feed)?;
    writeln!(
        out,
        "data      {} blocks, {:.1} MiB",
        s.blocks,
        s.bytes as f64 / (1 << 20) as f64
    )?;
    writeln!(
        out,
        "{:<10} {:<9} {:>5} {:>12} {:>12}",
        "node", "key", "peers", "bytes in", "bytes out"
    )?;
    for n in &s.nodes {
        writeln!(
            out,
            "{:<10} {:<9} {:>5} {:>12} {:>12}",
            n.name, n.key, n.peers, n.bytes_in, n.bytes_out
        )?;
    }
    writeln!(
        out,
        "replicated to 2 readers in {:.2} s (discovery included): {:.1} MB/s delivered",
        s.seconds, s.mb_per_s
    )?;
    writeln!(
        out,
        "verified  {}",
        if s.verified {
            "yes: every block checked against the signed head on arrival, and both copies read back equal"
        } else {
            "no"
        }
    )
}
