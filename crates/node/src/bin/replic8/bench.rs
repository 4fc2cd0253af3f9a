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
    /// Bytes to move (raw, bulk, small: default 256MiB; flood: 64MiB) or to append per
    /// block size (append: 256MiB).
    #[arg(long, value_parser = bench::parse_size)]
    pub(crate) size: Option<u64>,
    /// Bytes per block (bulk 64KiB, small and many-feeds 1KiB; append runs 64KiB and
    /// 1KiB unless given).
    #[arg(long, value_parser = bench::parse_size)]
    pub(crate) block_size: Option<u64>,
    /// Feeds (many-feeds; default 1000).
    #[arg(long)]
    pub(crate) feeds: Option<u64>,
    /// Blocks per feed (many-feeds; default 100).
    #[arg(long)]
    pub(crate) blocks: Option<u64>,
    /// Directory for the temporary data directories (default $TMPDIR).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Append path (append).
    #[arg(long, value_enum, default_value_t = bench::append::AppendPath::Deferred)]
    pub(crate) append_path: bench::append::AppendPath,
    /// Rounds of each discovery case (default 20).
    #[arg(long)]
    pub(crate) rounds: Option<usize>,
    /// DHT nodes of the local testnet (discovery; default 20).
    #[arg(long)]
    pub(crate) testnet_nodes: Option<usize>,
    /// Seconds a discovery round may take to connect (default 30).
    #[arg(long)]
    pub(crate) guard_secs: Option<u64>,
    /// Discovery rounds in flight at once (default 5).
    #[arg(long)]
    pub(crate) parallel: Option<usize>,
    /// Attacker tasks (flood; default 200).
    #[arg(long)]
    pub(crate) attackers: Option<usize>,
    /// Seconds of attack (flood; default 60).
    #[arg(long)]
    pub(crate) seconds: Option<u64>,
    /// Nodes (swarm; default 100).
    #[arg(long)]
    pub(crate) nodes: Option<usize>,
    /// Each node's limits.max_peers_per_topic (swarm; default: the node's).
    #[arg(long)]
    pub(crate) max_peers_per_topic: Option<usize>,
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
    let BenchArgs {
        scenario,
        size,
        block_size,
        feeds,
        blocks,
        dir,
        append_path,
        rounds,
        testnet_nodes,
        guard_secs,
        parallel,
        attackers,
        seconds,
        nodes,
        max_peers_per_topic,
        json,
    } = args;
    let options = bench::BenchOptions {
        size,
        block_size: block_size
            .map(usize::try_from)
            .transpose()
            .context("--block-size is too large")?,
        feeds,
        blocks,
        dir,
        append_path,
        rounds,
        testnet_nodes,
        guard: guard_secs.map(std::time::Duration::from_secs),
        parallel,
        attackers,
        seconds,
        peer_exe: None,
        nodes,
        max_peers_per_topic,
    };
    run_bench(scenario, &options, json)
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
