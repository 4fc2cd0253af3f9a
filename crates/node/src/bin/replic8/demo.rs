//! `replic8 demo`: the whole mission offline on this machine, told step by step.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};

use crate::app::demo::{self, Step};
use anyhow::Context;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

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
    /// No progress bars (they are drawn only when stderr is a terminal).
    #[arg(long)]
    no_progress: bool,
    /// One JSON object per line: each step (`"step"` names it), then the summary
    /// (`"step": "summary"`).
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
    };
    let bars = !args.no_progress && !args.json && std::io::stderr().is_terminal();
    let mut printer = Printer::new(args.json, bars);
    let summary = runtime()?.block_on(demo::run(options, |step| printer.step(step)))?;
    printer.finish()?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut line = serde_json::to_value(&summary)?;
        if let Some(object) = line.as_object_mut() {
            object.insert("step".into(), "summary".into());
        }
        serde_json::to_writer(&mut out, &line)?;
        writeln!(out)?;
    } else {
        print_summary(&mut out, &summary)?;
    }
    Ok(())
}

/// Prints the steps as they come: a line each (text or JSON), progress as bars on a
/// terminal, otherwise as a line per quarter of the feed.
struct Printer {
    json: bool,
    multi: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    /// The last quarter of the feed printed per node, without bars.
    quarters: HashMap<String, u64>,
    /// The first error writing to stdout (the demo goes on; it is reported at the end).
    error: Option<std::io::Error>,
}

impl Printer {
    fn new(json: bool, bars: bool) -> Self {
        Printer {
            json,
            multi: bars.then(MultiProgress::new),
            bars: HashMap::new(),
            quarters: HashMap::new(),
            error: None,
        }
    }

    fn step(&mut self, step: &Step) {
        match step {
            Step::Progress {
                node, bytes, total, ..
            } => {
                if let Some(multi) = &self.multi {
                    let bar = self
                        .bars
                        .entry(node.clone())
                        .or_insert_with(|| new_bar(multi, *total, node));
                    bar.set_position(*bytes);
                    return;
                }
                let quarter = bytes.saturating_mul(4) / (*total).max(1);
                let last = self.quarters.entry(node.clone()).or_insert(0);
                if quarter <= *last {
                    return;
                }
                *last = quarter;
            }
            Step::Synced { node, .. } => {
                if let Some(bar) = self.bars.get(node) {
                    bar.finish_with_message("synced");
                }
            }
            _ => {}
        }
        let line = if self.json {
            match serde_json::to_string(step) {
                Ok(line) => line,
                Err(e) => {
                    self.error.get_or_insert(e.into());
                    return;
                }
            }
        } else {
            step.to_string()
        };
        let print = || writeln!(std::io::stdout().lock(), "{line}");
        let result = match &self.multi {
            Some(multi) => multi.suspend(print),
            None => print(),
        };
        if let Err(e) = result {
            self.error.get_or_insert(e);
        }
    }

    fn finish(self) -> std::io::Result<()> {
        for bar in self.bars.values() {
            bar.finish();
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn new_bar(multi: &MultiProgress, total: u64, node: &str) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(total));
    let style = ProgressStyle::with_template(
        "{prefix:>9} [{bar:36.cyan/blue}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(node.to_owned());
    bar
}

fn print_summary(out: &mut impl Write, s: &demo::DemoSummary) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(out, "feed      {}", s.feed)?;
    writeln!(
        out,
        "data      {} blocks, {:.1} MiB, tree hash {}",
        s.blocks,
        s.bytes as f64 / (1 << 20) as f64,
        s.tree_hash
    )?;
    writeln!(out, "refused   {} (type=videos)", s.refused_feed)?;
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
            "yes: every block checked against the signed head on arrival, both copies read back equal and hash to the signed tree, the refused feed held by neither reader, reader-2 served through reader-1 alone"
        } else {
            "no"
        }
    )
}
