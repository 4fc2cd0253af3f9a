//! `replic8 bench`: measure this machine.

use std::io::Write;
use std::path::PathBuf;

use crate::app::bench;
use anyhow::Context;
use clap::Args;

use crate::client::actix_runtime;

/// The arguments of `replic8 bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub(crate) scenario: bench::Scenario,
    /// Sizes and knobs of the scenarios.
    #[command(flatten)]
    pub(crate) options: bench::BenchOptions,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The writer process of `bench` (started by it).
#[derive(Debug, Args)]
pub(crate) struct BenchPeerArgs {
    /// The writer's data directory.
    #[arg(long)]
    pub(crate) dir: PathBuf,
    /// Feeds to write.
    #[arg(long)]
    pub(crate) feeds: u64,
    /// Bytes per feed.
    #[arg(long)]
    pub(crate) bytes_per_feed: u64,
    /// Bytes per block.
    #[arg(long)]
    pub(crate) block_size: usize,
}

/// Runs `replic8 bench`.
pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    run_bench(args.scenario, &args.options, args.json)
}

/// Runs the writer process of `bench`.
pub(crate) fn run_peer(args: BenchPeerArgs) -> anyhow::Result<()> {
    let options = bench::replicate::PeerOptions {
        feeds: args.feeds,
        bytes_per_feed: args.bytes_per_feed,
        block_size: args.block_size,
    };
    actix_runtime()?.block_on(bench::replicate::serve(&args.dir, options))?;
    Ok(())
}

/// Runs the bench, printing each row as it comes (a header first for the table).
fn run_bench(
    scenario: bench::Scenario,
    options: &bench::BenchOptions,
    json: bool,
) -> anyhow::Result<()> {
    let mut failed = None;
    let mut emit = |row: &bench::Row| {
        let mut out = std::io::stdout().lock();
        let written = if json {
            serde_json::to_writer(&mut out, row)
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(out))
        } else {
            writeln!(out, "{}", row.table_line())
        };
        if let Err(e) = written.and_then(|()| out.flush()) {
            failed.get_or_insert(e);
        }
    };
    if !json {
        println!("{}", bench::Row::table_header());
    }
    actix_runtime()?.block_on(bench::run(scenario, options, &mut emit))?;
    match failed {
        Some(e) => Err(e).context("cannot write the results"),
        None => Ok(()),
    }
}
