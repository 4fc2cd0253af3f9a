//! `replic8 join` and `replic8 leave`: topics and feeds' discovery keys.

use std::io::Write;
use std::ops::ControlFlow;

use crate::app::control::Request;
use clap::Args;
use replic8_node::config::NodeConfig;
use serde_json::Value;

use crate::client::{ask, follow, print_json};
use crate::events;

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
    /// After joining, print each peer as its connection comes up (or goes down) and a
    /// line when the first lookup round is done, until interrupted.
    #[arg(long)]
    watch: bool,
    /// Print JSON (with --watch, a JSON object per line).
    #[arg(long)]
    json: bool,
}

/// Runs `replic8 join`: returns once the topic is joined; announcing and looking up go
/// on in the daemon. With `--watch`, then follows the peers as they arrive.
pub(crate) fn join(config: &NodeConfig, args: JoinArgs) -> anyhow::Result<()> {
    let request = Request::Join {
        target: args.target,
        announce: !args.no_announce,
        lookup: !args.no_lookup,
        topic: args.topic,
        watch: args.watch,
    };
    if !args.watch {
        let v = ask(config, &request)?;
        if args.json {
            return print_json(&v);
        }
        println!("{}", joined_text(&v));
        return Ok(());
    }
    follow(config, &request, |line| {
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer(&mut out, &line)?;
            writeln!(out)?;
        } else if line["event"] == "joined" {
            writeln!(out, "{}", joined_text(&line))?;
        } else {
            writeln!(out, "{}", events::text(&line))?;
        }
        out.flush()?;
        Ok(ControlFlow::Continue(()))
    })
}

/// The `joined` answer as a sentence.
fn joined_text(v: &Value) -> String {
    format!(
        "joined {}{}; announcing and looking up in the background",
        v["topic"].as_str().unwrap_or_default(),
        if v["feed"] == true {
            " (the feed's discovery key)"
        } else {
            ""
        },
    )
}

/// Runs `replic8 leave TARGET`.
pub(crate) fn leave(config: &NodeConfig, target: String) -> anyhow::Result<()> {
    let v = ask(config, &Request::Leave { target })?;
    println!("left {}", v["topic"].as_str().unwrap_or_default());
    Ok(())
}
