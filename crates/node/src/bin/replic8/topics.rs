//! `replic8 join` and `replic8 leave`: topics and feeds' discovery keys.

use clap::Args;
use replic8_node::config::NodeConfig;
use replic8_node::control::Request;

use crate::client::{ask, print_json};

/// The arguments of `replic8 join`.
#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
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
}

/// Runs `replic8 join`.
pub(crate) fn join(config: &NodeConfig, args: JoinArgs) -> anyhow::Result<()> {
    let v = ask(
        config,
        &Request::Join {
            target: args.target,
            announce: !args.no_announce,
            lookup: !args.no_lookup,
            topic: args.topic,
        },
    )?;
    if args.json {
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

/// Runs `replic8 leave TARGET`.
pub(crate) fn leave(config: &NodeConfig, target: String) -> anyhow::Result<()> {
    let v = ask(config, &Request::Leave { target })?;
    println!("left {}", v["topic"].as_str().unwrap_or_default());
    Ok(())
}
