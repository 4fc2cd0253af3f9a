//! `replic8 demo`: the whole mission offline on this machine.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use replic8_node::demo;

use crate::client::runtime;

/// The arguments of `replic8 demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
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
}

/// Runs `replic8 demo`.
pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    let options = demo::DemoOptions {
        bytes: args
            .size_mb
            .checked_mul(1 << 20)
            .context("--size-mb is too large")?,
        block_size: args.block_size,
        progress: !args.no_progress && !args.json,
    };
    let summary = runtime()?.block_on(demo::run(options))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &summary)?;
        writeln!(out)?;
    } else {
        print_summary(&mut out, &summary)?;
    }
    Ok(())
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
