//! The `replic8` command.
//!
//! `demo` runs the whole mission offline (a local DHT and three nodes in a temporary
//! directory). `daemon` runs a node and serves the client commands (`feed ...`, `share`,
//! `join`, `leave`, `peers`, `status`) on a Unix socket in a 0700 directory of the data
//! directory, to the daemon's own user only. Every command that uses a data directory
//! refuses one that others can write to or another user owns.
//! `feed import --only-hash` needs no daemon. Logs go to stderr, filtered by `RUST_LOG`
//! (default: warnings, see `logs.rs`). Errors are one line on stderr and a non-zero exit, never a
//! backtrace.

mod app;
mod arenas;
mod bench;
mod client;
mod daemon;
mod demo;
mod events;
mod feed;
mod logs;
mod namespace;
mod offers;
mod status;
mod topics;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// replic8: peer-to-peer replication of signed append-only feeds over QUIC.
#[derive(Debug, Parser)]
#[command(name = "replic8", version, about)]
struct Cli {
    /// The data directory (identity, feeds, joins, shares, the control socket). Default:
    /// the config's, else `$XDG_DATA_HOME/replic8`.
    #[arg(long, global = true, env = "REPLIC8_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A TOML config file (see `replic8_node::config::NodeConfig`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Namespaces: open (with a secret and an accept policy), list, close; `new-secret`
    /// prints a fresh secret.
    #[command(subcommand)]
    Namespace(namespace::NamespaceCommand),
    /// Run the whole mission offline: a local DHT on 127.0.0.1 and three nodes on disk in
    /// a temporary directory; a feed written on one, shared with headers, discovered,
    /// accepted, replicated to the other two and verified.
    Demo(demo::DemoArgs),
    /// Measure this machine: replication throughput, memory, appends, discovery latency.
    ///
    /// Each scenario prints a table row (or, with --json, one JSON object per line) with
    /// scenario, bytes, blocks, seconds, mb_per_s, blocks_per_s and peak_rss_bytes, plus
    /// its own fields. MB is 10^6 bytes; sizes take K/KiB/M/MiB/G/GiB (powers of 1024) or
    /// KB/MB/GB (powers of 1000). Temporary data goes under --dir (default $TMPDIR) and
    /// is removed afterwards.
    Bench(bench::BenchArgs),
    /// The writer process of `bench` (started by it).
    #[command(hide = true)]
    BenchPeer(bench::BenchPeerArgs),
    /// A node process of `bench swarm` (started by it).
    #[command(hide = true)]
    BenchSwarmNode(crate::app::bench::swarm::SwarmNodeArgs),
    /// Run a node until interrupted, serving the client commands on the control socket.
    Daemon(daemon::DaemonArgs),
    /// Work with feeds.
    #[command(subcommand)]
    Feed(feed::FeedCommand),
    /// Share a feed in a namespace with headers (persisted by the daemon).
    Share(namespace::ShareArgs),
    /// Join a topic, or a feed's discovery key when the daemon holds that feed.
    Join(topics::JoinArgs),
    /// Leave a topic (or a held feed's discovery key).
    Leave {
        /// 64 hex digits: a topic or a feed key.
        target: String,
    },
    /// The connected peers.
    Peers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Topics, peers, what is stored (feeds, blocks, bytes), and the traffic and
    /// replication counters since the daemon started.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The feeds peers offered recently (peer, namespace, feed, headers, decision).
    Offers(offers::OffersArgs),
    /// Accept feeds waiting in a namespace opened with --accept manual.
    Accept(offers::DecideArgs),
    /// Reject feeds waiting in a namespace opened with --accept manual.
    Reject(offers::DecideArgs),
    /// The daemon's events as they happen (peers, sessions, offers, feeds), a line each,
    /// until interrupted.
    Events {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    arenas::cap();
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(logs::filter())
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a log redirected to a file or a pipe stays plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replic8: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: many of our errors already
/// print their source in their own message (`feeds: {0}`), so a cause whose text the
/// line holds already is skipped instead of repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string().replace('\n', " ");
        if line.contains(text.trim()) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text.trim());
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Commands that need no data directory and no config.
    match cli.command {
        Command::Namespace(namespace::NamespaceCommand::NewSecret) => {
            namespace::new_secret();
            return Ok(());
        }
        Command::Demo(args) => return demo::run(args),
        Command::Bench(args) => return bench::run(args),
        Command::BenchPeer(args) => return bench::run_peer(args),
        Command::BenchSwarmNode(args) => return Ok(crate::app::bench::swarm::node_main(args)?),
        _ => {}
    }
    let config = client::load_config(cli.config.as_deref(), cli.data_dir.clone())?;
    match cli.command {
        Command::Namespace(command) => namespace::run(&config, command),
        Command::Demo(_)
        | Command::Bench(_)
        | Command::BenchPeer(_)
        | Command::BenchSwarmNode(_) => Ok(()),
        Command::Offers(args) => offers::run(&config, args),
        Command::Accept(args) => offers::decide(&config, args, true),
        Command::Reject(args) => offers::decide(&config, args, false),
        Command::Daemon(args) => daemon::run(config, args),
        Command::Feed(command) => feed::run(&config, command),
        Command::Share(args) => namespace::share(&config, args),
        Command::Join(args) => topics::join(&config, args),
        Command::Leave { target } => topics::leave(&config, target),
        Command::Peers { json } => status::peers(&config, json),
        Command::Status { json } => status::status(&config, json),
        Command::Events { json } => events::run(&config, json),
    }
}
