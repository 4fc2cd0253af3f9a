//! `replic8 offers`, `replic8 accept` and `replic8 reject`: the offers peers made, and
//! the user's answer to those waiting in a manual namespace.

use std::io::Write;
use std::ops::ControlFlow;

use crate::app::control::Request;
use clap::Args;
use replic8_node::config::NodeConfig;
use serde_json::Value;

use crate::client::{ask, follow};

/// The arguments of `replic8 offers`.
#[derive(Debug, Args)]
pub(crate) struct OffersArgs {
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// After the recent offers, print each new decision as it happens, until
    /// interrupted.
    #[arg(long)]
    follow: bool,
}

/// The arguments of `replic8 accept` and `replic8 reject`.
#[derive(Debug, Args)]
pub(crate) struct DecideArgs {
    /// The namespace (opened with --accept manual).
    namespace: String,
    /// The feeds' keys, hex.
    #[arg(required = true)]
    keys: Vec<String>,
}

/// Runs `replic8 offers`.
pub(crate) fn run(config: &NodeConfig, args: OffersArgs) -> anyhow::Result<()> {
    let print = |offer: &Value| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer(&mut out, offer)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", line(offer))?;
        }
        out.flush()
    };
    if args.follow {
        return follow(config, &Request::Offers { follow: true }, |offer| {
            print(&offer)?;
            Ok(ControlFlow::Continue(()))
        });
    }
    let v = ask(config, &Request::Offers { follow: false })?;
    for offer in v.as_array().into_iter().flatten() {
        print(offer)?;
    }
    Ok(())
}

/// Runs `replic8 accept` (`accept`) or `replic8 reject`.
pub(crate) fn decide(config: &NodeConfig, args: DecideArgs, accept: bool) -> anyhow::Result<()> {
    let v = ask(
        config,
        &Request::Decide {
            namespace: args.namespace,
            keys: args.keys,
            accept,
        },
    )?;
    let word = if accept { "accepted" } else { "rejected" };
    for feed in v.as_array().into_iter().flatten() {
        let key = feed["feed"].as_str().unwrap_or_default();
        match feed["offers"].as_u64().unwrap_or(0) {
            0 => println!("{word} {key} (no offer waits: applies to its next offer)"),
            n => println!("{word} {key} ({n} waiting offer(s) answered)"),
        }
    }
    Ok(())
}

/// An offer as one line: decision, namespace, feed, peer, headers.
fn line(offer: &Value) -> String {
    if offer["event"] == "lagged" {
        return format!("(missed {} offers)", offer["missed"]);
    }
    let s = |name: &str| offer[name].as_str().unwrap_or_default().to_owned();
    let mut out = format!(
        "{} namespace={} feed={} peer={}",
        s("decision"),
        s("namespace"),
        s("feed"),
        &s("peer")[..10.min(s("peer").len())],
    );
    for (k, v) in offer["headers"].as_object().into_iter().flatten() {
        out.push_str(&format!(" {k}={}", v.as_str().unwrap_or_default()));
    }
    out
}
