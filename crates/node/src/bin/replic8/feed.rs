//! `replic8 feed ...`: create, append, read (and tail), inspect, list, get by key and
//! import feeds.

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use crate::app::control::Request;
use crate::app::import;
use anyhow::{bail, Context};
use clap::Subcommand;
use replic8_node::config::NodeConfig;
use serde_json::Value;

use crate::client::{append, ask, cat, follow as follow_stream, open_input, print_json};

/// Work with feeds.
#[derive(Debug, Subcommand)]
pub(crate) enum FeedCommand {
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
    /// Write blocks of a feed to standard output, as raw bytes, each as it comes from the
    /// daemon.
    Cat {
        /// The feed's key, hex.
        key: String,
        /// First block.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// End block (exclusive); default the feed's length.
        #[arg(long, conflicts_with = "follow")]
        end: Option<u64>,
        /// Keep writing blocks as they are appended here or arrive from peers, until
        /// interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// Fetch a feed known by its key: replicate it, verified, from any peer that holds
    /// it publicly (not only in a named namespace), and exit once in sync with one.
    ///
    /// The key is the read capability: the daemon keeps a replica in the public
    /// namespace and joins the feed's discovery key (both persisted: a restart resumes
    /// the download). On a terminal a progress bar; otherwise one JSON line per
    /// progress step (`event` progress, then synced).
    Get {
        /// The feed's key, hex.
        key: String,
        /// Keep following live appends after the first sync, until interrupted.
        #[arg(long)]
        follow: bool,
        /// JSON progress lines even on a terminal.
        #[arg(long)]
        json: bool,
    },
    /// Every feed the daemon holds: key, writable, length, stored blocks and bytes,
    /// namespaces.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A feed's length, bytes, tree hash, whether it is writable, and which peers have
    /// it and how far.
    Info {
        /// The feed's key, hex.
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Split a file (or standard input) into blocks in a new feed and print the feed's
    /// key, length and tree hash.
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

/// Runs a `feed` command.
pub(crate) fn run(config: &NodeConfig, command: FeedCommand) -> anyhow::Result<()> {
    match command {
        FeedCommand::New { json } => {
            let v = ask(config, &Request::FeedNew)?;
            if json {
                print_json(&v)
            } else {
                println!("{}", v["key"].as_str().unwrap_or_default());
                Ok(())
            }
        }
        FeedCommand::Append {
            key,
            file,
            block_size,
        } => {
            check_block_size(block_size)?;
            let input = open_input(file.as_deref())?;
            let v = append(config, &key, input, block_size)?;
            println!("{}", v["length"]);
            Ok(())
        }
        FeedCommand::Get { key, follow, json } => get(config, key, follow, json),
        FeedCommand::List { json } => list(config, json),
        FeedCommand::Cat {
            key,
            start,
            end,
            follow,
        } => cat(config, &key, start, end, follow),
        FeedCommand::Info { key, json } => {
            let v = ask(config, &Request::FeedInfo { key })?;
            if json {
                return print_json(&v);
            }
            for field in [
                "key",
                "discovery_key",
                "writable",
                "length",
                "stored",
                "contiguous",
                "byte_length",
                "tree_hash",
            ] {
                println!("{field:<14} {}", plain(&v[field]));
            }
            for p in v["peers"].as_array().into_iter().flatten() {
                println!(
                    "peer           {} length {} received {} blocks ({} bytes), heard {} s ago",
                    plain(&p["peer"]),
                    p["length"],
                    p["blocks_in"],
                    p["bytes_in"],
                    p["seen_secs_ago"]
                );
            }
            Ok(())
        }
        FeedCommand::Import {
            file,
            block_size,
            only_hash,
            json,
        } => {
            let mut out = std::io::stdout().lock();
            if only_hash {
                let summary = if file.as_os_str() == "-" {
                    import::hash_only(std::io::stdin().lock(), block_size)?
                } else {
                    let f = std::fs::File::open(&file)
                        .with_context(|| format!("cannot open {}", file.display()))?;
                    import::hash_only(std::io::BufReader::with_capacity(1 << 20, f), block_size)
                        .with_context(|| file.display().to_string())?
                };
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
            // Everything that can fail before the feed exists is checked first.
            check_block_size(block_size)?;
            let input = open_input(Some(&file))?;
            let key = ask(config, &Request::FeedNew)?["key"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let appended = append(config, &key, input, block_size)?;
            let length = appended["length"].as_u64().unwrap_or_default();
            let info = ask(config, &Request::FeedInfo { key: key.clone() })?;
            let v = serde_json::json!({
                "key": key,
                "length": length,
                "tree_hash": info["tree_hash"],
                "bytes": appended["bytes"],
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
    }
}

/// A block size the store takes, checked before anything is created or sent.
fn check_block_size(block_size: usize) -> anyhow::Result<()> {
    if block_size == 0 || block_size > replic8_store::MAX_BLOCK_SIZE {
        bail!("--block-size must be 1..={}", replic8_store::MAX_BLOCK_SIZE);
    }
    Ok(())
}

/// A JSON value as text: strings without quotes.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `feed get`: progress as a bar on a terminal, else as JSON lines; fails if the daemon
/// ends the stream before the feed is in sync.
fn get(config: &NodeConfig, key: String, follow: bool, json: bool) -> anyhow::Result<()> {
    let bar = (!json && std::io::stdout().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} blocks  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let mut synced = false;
    let request = Request::FeedGet {
        key: key.clone(),
        follow,
    };
    follow_stream(config, &request, |line| {
        synced = line["in_sync"] == true;
        match &bar {
            None => {
                let mut out = std::io::stdout().lock();
                serde_json::to_writer(&mut out, &line)?;
                writeln!(out)?;
                out.flush()?;
            }
            Some(bar) if line["event"] == "get" => {
                bar.set_message(format!("joined {}", &plain(&line["discovery_key"])[..10]))
            }
            Some(bar) => {
                bar.set_length(line["length"].as_u64().unwrap_or_default());
                bar.set_position(line["stored"].as_u64().unwrap_or_default());
                bar.set_message(format!(
                    "{} of {}  {}/s  {} peer(s){}",
                    indicatif::HumanBytes(line["bytes_in"].as_u64().unwrap_or_default()),
                    indicatif::HumanBytes(line["byte_length"].as_u64().unwrap_or_default()),
                    indicatif::HumanBytes(line["bytes_per_s"].as_f64().unwrap_or_default() as u64),
                    line["peers"],
                    if synced { "  in sync" } else { "" }
                ));
            }
        }
        Ok(ControlFlow::Continue(()))
    })?;
    if let Some(bar) = bar {
        bar.finish();
    }
    if !synced {
        bail!("the daemon ended the download of {key} before it was in sync");
    }
    Ok(())
}

/// `feed list`: a line per held feed, printed as the daemon's pages arrive; with
/// `--json`, one array of them (written as it arrives too). A listing the daemon ends
/// before its last page fails.
fn list(config: &NodeConfig, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut printed = 0u64;
    let mut ended = false;
    let mut opened = false;
    follow_stream(config, &Request::FeedList, |page| {
        // The array opens with the first page: a listing that fails at once prints
        // only its error.
        if json && !opened {
            write!(out, "[")?;
            opened = true;
        }
        for f in page["feeds"].as_array().into_iter().flatten() {
            if json {
                if printed > 0 {
                    write!(out, ",")?;
                }
                serde_json::to_writer(&mut out, f)?;
            } else {
                list_line(&mut out, f)?;
            }
            printed += 1;
        }
        ended = page["more"] == false;
        Ok(if ended {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })?;
    if !ended {
        bail!("the daemon ended the listing after {printed} feed(s), before its last page");
    }
    if json {
        writeln!(out, "]")?;
    }
    out.flush()?;
    Ok(())
}

/// One feed of `feed list` as a line.
fn list_line(out: &mut impl Write, f: &Value) -> std::io::Result<()> {
    let namespaces: Vec<String> = f["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| match n.as_str() {
            Some("") => "(public)".to_owned(),
            _ => plain(n),
        })
        .collect();
    writeln!(
        out,
        "{} {} length {} stored {} ({}) namespaces {}",
        plain(&f["key"]),
        if f["writable"] == true {
            "writable"
        } else {
            "replica "
        },
        f["length"],
        f["stored"],
        indicatif::HumanBytes(f["stored_bytes"].as_u64().unwrap_or_default()),
        if namespaces.is_empty() {
            "-".to_owned()
        } else {
            namespaces.join(",")
        }
    )
}
