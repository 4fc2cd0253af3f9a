//! The `replic8` command.
//!
//! `demo` runs the whole mission offline (a local DHT and three nodes in a temporary
//! directory). `daemon` runs a node and serves the client commands (`feed ...`, `share`,
//! `join`, `leave`, `peers`, `status`) on a Unix socket in a 0700 directory of the data
//! directory, to the daemon's own user only. Every command that uses a data directory
//! refuses one that others can write to or another user owns.
//! `feed import --only-hash` needs no daemon. Logs go to stderr, filtered by `RUST_LOG`
//! (default `warn`). Errors are one line on stderr and a non-zero exit, never a
//! backtrace.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use replic8_node::config::NodeConfig;
use replic8_node::control::{self, Request};
use replic8_node::{bench, demo, import, persist, NodeBuilder};
use serde_json::Value;

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
    /// Namespaces: `new-secret` prints a fresh secret.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
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
    /// Measure this machine: replication throughput, memory, appends, discovery latency.
    ///
    /// Each scenario prints a table row (or, with --json, one JSON object per line) with
    /// scenario, bytes, blocks, seconds, mb_per_s, blocks_per_s and peak_rss_bytes, plus
    /// its own fields. MB is 10^6 bytes; sizes take K/KiB/M/MiB/G/GiB (powers of 1024) or
    /// KB/MB/GB (powers of 1000). Temporary data goes under --dir (default $TMPDIR) and
    /// is removed afterwards.
    Bench {
        /// What to measure.
        #[arg(value_enum)]
        scenario: bench::Scenario,
        /// Bytes to move (raw, bulk, small: default 256MiB; flood: 64MiB) or to append per
        /// block size (append: 256MiB).
        #[arg(long, value_parser = bench::parse_size)]
        size: Option<u64>,
        /// Bytes per block (bulk 64KiB, small and many-feeds 1KiB; append runs 64KiB and
        /// 1KiB unless given).
        #[arg(long, value_parser = bench::parse_size)]
        block_size: Option<u64>,
        /// Feeds (many-feeds; default 1000).
        #[arg(long)]
        feeds: Option<u64>,
        /// Blocks per feed (many-feeds; default 100).
        #[arg(long)]
        blocks: Option<u64>,
        /// Directory for the temporary data directories (default $TMPDIR).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Append path (append).
        #[arg(long, value_enum, default_value_t = bench::append::AppendPath::Deferred)]
        append_path: bench::append::AppendPath,
        /// Rounds of each discovery case (default 20).
        #[arg(long)]
        rounds: Option<usize>,
        /// DHT nodes of the local testnet (discovery; default 20).
        #[arg(long)]
        testnet_nodes: Option<usize>,
        /// Seconds a discovery round may take to connect (default 30).
        #[arg(long)]
        guard_secs: Option<u64>,
        /// Discovery rounds in flight at once (default 5).
        #[arg(long)]
        parallel: Option<usize>,
        /// Attacker tasks (flood; default 200).
        #[arg(long)]
        attackers: Option<usize>,
        /// Seconds of attack (flood; default 60).
        #[arg(long)]
        seconds: Option<u64>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The writer process of `bench` (started by it).
    #[command(hide = true)]
    BenchPeer {
        /// The writer's data directory.
        #[arg(long)]
        dir: PathBuf,
        /// Feeds to write.
        #[arg(long)]
        feeds: u64,
        /// Bytes per feed.
        #[arg(long)]
        bytes_per_feed: u64,
        /// Bytes per block.
        #[arg(long)]
        block_size: usize,
    },
    /// Run a node until interrupted, serving the client commands on the control socket.
    Daemon {
        /// The QUIC address (overrides the config).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// DHT bootstrap nodes as host:port (overrides the config; repeat for several).
        #[arg(long)]
        bootstrap: Vec<String>,
        /// No DHT.
        #[arg(long)]
        no_dht: bool,
        /// No LAN discovery.
        #[arg(long)]
        no_lan: bool,
        /// Serve Prometheus counters on this HTTP address.
        #[arg(long)]
        metrics: Option<SocketAddr>,
    },
    /// Work with feeds.
    #[command(subcommand)]
    Feed(FeedCommand),
    /// Share a feed in a namespace with headers (persisted by the daemon).
    Share {
        /// The namespace.
        namespace: String,
        /// The feed's key, hex.
        key: String,
        /// A header `k=v` (repeat for several).
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
    },
    /// Join a topic, or a feed's discovery key when the daemon holds that feed.
    Join {
        /// 64 hex digits: a held feed's key (joins its discovery key), or with --topic a
        /// topic.
        target: String,
        /// TARGET is a raw topic, not a feed key.
        #[arg(long)]
        topic: bool,
        /// Do not announce (only look up).
        #[arg(long)]
        no_announce: bool,
        /// Do not look up (only announce).
        #[arg(long)]
        no_lookup: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
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
    /// Topics, peers, bytes in and out, replication counters.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum NamespaceCommand {
    /// Print a new namespace secret: 32 random bytes from the OS, as 64 hex digits. A
    /// namespace's secret is never a passphrase: a tag it keys can be tested offline by
    /// whoever saw it, so only a random secret keeps the namespace unguessable.
    NewSecret,
}

#[derive(Debug, Subcommand)]
enum FeedCommand {
    /// Create a writable feed; prints its key.
    New {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Append a file (or standard input) to a feed, split into blocks.
    Append {
        /// The feed's key, hex.
        key: String,
        /// The file; `-` or nothing reads standard input.
        file: Option<PathBuf>,
        /// Bytes per block.
        #[arg(long, default_value_t = 64 * 1024)]
        block_size: usize,
    },
    /// Write blocks of a feed to standard output.
    Cat {
        /// The feed's key, hex.
        key: String,
        /// First block.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// End block (exclusive); default the feed's length.
        #[arg(long)]
        end: Option<u64>,
    },
    /// A feed's length, bytes, tree hash and whether it is writable.
    Info {
        /// The feed's key, hex.
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
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

/// Blocks per `feed cat` request: at most 64 MiB of 1 MiB blocks per answer.
const CAT_BATCH: u64 = 64;

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not k=v"))?;
    Ok((k.to_owned(), v.to_owned()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start a runtime")
}

/// An actix system on a multi-threaded runtime (the raw bench starts actors in it).
fn actix_runtime() -> anyhow::Result<actix::SystemRunner> {
    let rt = runtime()?;
    Ok(actix::System::with_tokio_rt(move || rt))
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

/// The config file (or the defaults) with `--data-dir` applied.
fn load_config(cli_config: Option<&Path>, data_dir: Option<PathBuf>) -> anyhow::Result<NodeConfig> {
    let mut config = match cli_config {
        Some(path) => NodeConfig::from_file(path)?,
        None => NodeConfig::default(),
    };
    if data_dir.is_some() {
        config.data_dir = data_dir;
    }
    Ok(config)
}

/// Sends `req` to the daemon of the data directory, after checking that directory (a
/// missing one is left to the connect, which says there is no daemon).
fn ask(config: &NodeConfig, req: &Request) -> anyhow::Result<Value> {
    let data_dir = config.resolve_data_dir()?;
    match persist::check_dir(&data_dir) {
        Err(persist::PersistError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        checked => checked?,
    }
    let socket = control::socket_path(&data_dir);
    Ok(runtime()?.block_on(control::request(&socket, req))?)
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn read_input(file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    match file {
        None => std::io::stdin().lock().read_to_end(&mut data)?,
        Some(p) if p.as_os_str() == "-" => std::io::stdin().lock().read_to_end(&mut data)?,
        Some(p) => std::fs::File::open(p)
            .and_then(|mut f| f.read_to_end(&mut data))
            .with_context(|| format!("cannot read {}", p.display()))?,
    };
    Ok(data)
}

/// Appends `data` in blocks of `block_size`, a request per 8 MiB; the final length.
fn append_blocks(
    config: &NodeConfig,
    key: &str,
    data: &[u8],
    block_size: usize,
) -> anyhow::Result<u64> {
    if block_size == 0 || block_size > replic8_store::MAX_BLOCK_SIZE {
        bail!("--block-size must be 1..={}", replic8_store::MAX_BLOCK_SIZE);
    }
    let per_request = ((8 << 20) / block_size).max(1);
    let mut length = 0;
    let blocks: Vec<&[u8]> = data.chunks(block_size).collect();
    for batch in blocks.chunks(per_request) {
        let reply = ask(
            config,
            &Request::FeedAppend {
                key: key.to_owned(),
                blocks: batch.iter().map(hex::encode).collect(),
            },
        )?;
        length = reply["length"].as_u64().unwrap_or_default();
    }
    Ok(length)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Namespace(NamespaceCommand::NewSecret) = cli.command {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        println!("{}", hex::encode(secret));
        return Ok(());
    }
    let config = load_config(cli.config.as_deref(), cli.data_dir.clone())?;
    match cli.command {
        Command::Namespace(NamespaceCommand::NewSecret) => Ok(()),
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
            let summary = runtime()?.block_on(demo::run(options))?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer(&mut out, &summary)?;
                writeln!(out)?;
            } else {
                print_summary(&mut out, &summary)?;
            }
            Ok(())
        }
        Command::Bench {
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
            json,
        } => {
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
            };
            run_bench(scenario, &options, json)
        }
        Command::BenchPeer {
            dir,
            feeds,
            bytes_per_feed,
            block_size,
        } => {
            let options = bench::replicate::PeerOptions {
                feeds,
                bytes_per_feed,
                block_size,
            };
            actix_runtime()?.block_on(bench::replicate::serve(&dir, options))?;
            Ok(())
        }
        Command::Daemon {
            listen,
            bootstrap,
            no_dht,
            no_lan,
            metrics,
        } => {
            let mut config = config;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if !bootstrap.is_empty() {
                config.discovery.bootstrap = Some(bootstrap);
            }
            if no_dht {
                config.discovery.dht = false;
            }
            if no_lan {
                config.discovery.lan = false;
            }
            if metrics.is_some() {
                config.metrics.listen = metrics;
            }
            runtime()?.block_on(daemon(config))
        }
        Command::Feed(FeedCommand::New { json }) => {
            let v = ask(&config, &Request::FeedNew)?;
            if json {
                print_json(&v)
            } else {
                println!("{}", v["key"].as_str().unwrap_or_default());
                Ok(())
            }
        }
        Command::Feed(FeedCommand::Append {
            key,
            file,
            block_size,
        }) => {
            let data = read_input(file.as_deref())?;
            let length = append_blocks(&config, &key, &data, block_size)?;
            println!("{length}");
            Ok(())
        }
        Command::Feed(FeedCommand::Cat { key, start, end }) => {
            let end = match end {
                Some(end) => end,
                None => ask(&config, &Request::FeedInfo { key: key.clone() })?["length"]
                    .as_u64()
                    .unwrap_or_default(),
            };
            if start > end {
                bail!("--start {start} is past --end {end}");
            }
            // A request per CAT_BATCH blocks, so a large feed streams out in bounded
            // pieces instead of one answer holding all of it.
            let mut out = std::io::stdout().lock();
            let mut at = start;
            while at < end {
                let to = end.min(at + CAT_BATCH);
                let v = ask(
                    &config,
                    &Request::FeedCat {
                        key: key.clone(),
                        start: at,
                        end: Some(to),
                    },
                )?;
                for block in v["blocks"].as_array().into_iter().flatten() {
                    out.write_all(&hex::decode(block.as_str().unwrap_or_default())?)?;
                }
                at = to;
            }
            Ok(())
        }
        Command::Feed(FeedCommand::Info { key, json }) => {
            let v = ask(&config, &Request::FeedInfo { key })?;
            if json {
                return print_json(&v);
            }
            for field in [
                "key",
                "discovery_key",
                "writable",
                "length",
                "stored",
                "byte_length",
                "tree_hash",
            ] {
                println!("{field:<14} {}", v[field]);
            }
            Ok(())
        }
        Command::Feed(FeedCommand::Import {
            file,
            block_size,
            only_hash,
            json,
        }) => {
            let summary = if file.as_os_str() == "-" {
                import::hash_only(std::io::stdin().lock(), block_size)?
            } else {
                let f = std::fs::File::open(&file)
                    .with_context(|| format!("cannot open {}", file.display()))?;
                import::hash_only(std::io::BufReader::with_capacity(1 << 20, f), block_size)
                    .with_context(|| file.display().to_string())?
            };
            let mut out = std::io::stdout().lock();
            if only_hash {
                if json {
                    serde_json::to_writer(&mut out, &summary)?;
                    writeln!(out)?;
                } else {
                    writeln!(out, "tree_hash  {}", summary.tree_hash)?;
                    writeln!(out, "length     {}", summary.length)?;
                    writeln!(out, "bytes      {}", summary.bytes)?;
                    writeln!(out, "block_size {}", summary.block_size)?;
                }
                return Ok(());
            }
            if file.as_os_str() == "-" {
                bail!("importing standard input into the daemon is not supported; use feed new and feed append");
            }
            let data =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let key = ask(&config, &Request::FeedNew)?["key"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let length = append_blocks(&config, &key, &data, block_size)?;
            let info = ask(&config, &Request::FeedInfo { key: key.clone() })?;
            let v = serde_json::json!({
                "key": key,
                "length": length,
                "tree_hash": info["tree_hash"],
                "bytes": data.len(),
            });
            if json {
                return print_json(&v);
            }
            writeln!(out, "key        {key}")?;
            writeln!(out, "length     {length}")?;
            writeln!(
                out,
                "tree_hash  {}",
                info["tree_hash"].as_str().unwrap_or_default()
            )?;
            Ok(())
        }
        Command::Share {
            namespace,
            key,
            headers,
        } => {
            let v = ask(
                &config,
                &Request::Share {
                    namespace,
                    key,
                    headers,
                },
            )?;
            println!("offered to {} peer(s) now", v["offered_to"]);
            Ok(())
        }
        Command::Join {
            target,
            topic,
            no_announce,
            no_lookup,
            json,
        } => {
            let v = ask(
                &config,
                &Request::Join {
                    target,
                    announce: !no_announce,
                    lookup: !no_lookup,
                    topic,
                },
            )?;
            if json {
                return print_json(&v);
            }
            println!(
                "joined {}{}: {} peer(s) found in the first round",
                v["topic"].as_str().unwrap_or_default(),
                if v["feed"] == true {
                    " (the feed's discovery key)"
                } else {
                    ""
                },
                v["peers_found"]
            );
            Ok(())
        }
        Command::Leave { target } => {
            let v = ask(&config, &Request::Leave { target })?;
            println!("left {}", v["topic"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Peers { json } => {
            let v = ask(&config, &Request::Peers)?;
            if json {
                return print_json(&v);
            }
            for p in v.as_array().into_iter().flatten() {
                println!(
                    "{} {} {} rtt {:.1} ms",
                    p["key"].as_str().unwrap_or_default(),
                    p["addr"].as_str().unwrap_or_default(),
                    p["initiator"].as_str().unwrap_or_default(),
                    p["rtt_ms"].as_f64().unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Status { json } => {
            let v = ask(&config, &Request::Status)?;
            if json {
                return print_json(&v);
            }
            println!("key       {}", v["key"].as_str().unwrap_or_default());
            println!("listen    {}", v["listen"].as_str().unwrap_or_default());
            println!("peers     {}   sessions {}", v["peers"], v["sessions"]);
            println!("bytes     in {}   out {}", v["bytes_in"], v["bytes_out"]);
            println!(
                "blocks    verified {}   sent {}",
                v["blocks_verified"], v["feed_blocks_out"]
            );
            for t in v["topics"].as_array().into_iter().flatten() {
                println!(
                    "topic     {} announce={} lookup={} flushed={} peers_found={}",
                    t["topic"].as_str().unwrap_or_default(),
                    t["announce"],
                    t["lookup"],
                    t["flushed"],
                    t["peers_found"]
                );
            }
            Ok(())
        }
    }
}

/// Runs a node and its control socket until SIGINT or SIGTERM, then closes both.
/// How long a starting daemon waits for another process to let go of the data
/// directory's feeds: a daemon closes within a few seconds of SIGTERM (its sessions get a
/// close grace), so a restart right after a stop waits instead of failing.
const HELD_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// How long a starting daemon waits for the control socket of a daemon that was just
/// stopped to go away before it says another daemon runs.
const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether spawning failed because another process holds the feed store's lock.
fn held_by_another(error: &replic8_node::SpawnError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::WouldBlock {
                return true;
            }
        }
        cause = e.source();
    }
    false
}

async fn daemon(config: NodeConfig) -> anyhow::Result<()> {
    let data_dir = config.resolve_data_dir()?;
    // Refused before anything starts (the node checks it again when it opens it).
    persist::ensure_dir(&data_dir)?;
    let socket = control::socket_path(&data_dir);
    // A daemon that got SIGTERM stops answering at once; one that still answers after a
    // moment runs.
    let answers_until = std::time::Instant::now() + ANSWER_WAIT;
    while tokio::net::UnixStream::connect(&socket).await.is_ok()
        && std::time::Instant::now() < answers_until
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        bail!(
            "another daemon runs on {} (its control socket answers); stop it first",
            data_dir.display()
        );
    }
    let mut builder = NodeBuilder::from_config(&config)?.data_dir(&data_dir);
    // A daemon that was just stopped may still be closing (sessions, then the feeds'
    // lock): wait for it, bounded, rather than fail a restart.
    let give_up = std::time::Instant::now() + HELD_WAIT;
    let spawned = loop {
        match builder.clone().spawn().await {
            Err(e) if held_by_another(&e) && std::time::Instant::now() < give_up => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) if held_by_another(&e) => bail!(
                "another process holds {} (a daemon still closing, or a program embedding \
                 the node); gave up after {} s",
                data_dir.display(),
                HELD_WAIT.as_secs()
            ),
            other => break other,
        }
    };
    let node = match spawned {
        Ok(node) => node,
        Err(replic8_node::SpawnError::Discovery(e)) if config.discovery.dht => {
            eprintln!("replic8: the DHT is unreachable ({e}); serving LAN and static peers only");
            builder = builder.dht(false);
            builder.spawn().await?
        }
        Err(e) => return Err(e.into()),
    };
    let server = control::ControlServer::bind(&data_dir, node.clone())
        .await
        .with_context(|| format!("control socket in {}", data_dir.display()))?;
    // The handlers exist before the line that tells a supervisor (or a test) we are up:
    // a SIGTERM right after it must close us cleanly, not kill us.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let dht = match node.dht_status().await {
        Ok(Some(dht)) => {
            let addrs: Vec<String> = dht.addrs.iter().map(ToString::to_string).collect();
            format!(" dht {}", addrs.join(","))
        }
        _ => String::new(),
    };
    eprintln!(
        "replic8 daemon: key {} quic {}{dht} control {}{}",
        hex::encode(node.key().as_bytes()),
        node.local_addr(),
        server.path().display(),
        node.metrics_addr()
            .map(|a| format!(" metrics http://{a}/metrics"))
            .unwrap_or_default()
    );
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = term.recv() => {}
    }
    server.close();
    node.close().await;
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
