//! `replic8 namespace ...` and `replic8 share`: namespaces and what is offered in them.

use std::io::Read;
use std::path::PathBuf;

use crate::app::control::Request;
use anyhow::Context;
use clap::{Args, Subcommand};
use replic8_node::config::NodeConfig;
use replic8_node::node::parse_secret;
use serde_json::Value;

use crate::client::{ask, parse_header, print_json};

/// Namespaces.
#[derive(Debug, Subcommand)]
pub(crate) enum NamespaceCommand {
    /// Open a namespace: offers of it are taken as `--accept` says, shares in it are
    /// offered to peers that know its secret. Persisted (the secret too, in the data
    /// directory's state file, mode 0600) and opened again at every start. Opening an
    /// open namespace again changes its policy; with another secret it is refused
    /// (close it first).
    Open(OpenArgs),
    /// The open namespaces and their policies (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Close a namespace: nothing new is accepted in it, sessions that start from now on
    /// do not serve it, and it (with its shares) is no longer persisted. Feeds held in
    /// it stay.
    Close {
        /// The name.
        name: String,
    },
    /// Print a new namespace secret: 32 random bytes from the OS, as 64 hex digits. A
    /// namespace's secret is never a passphrase: a tag it keys can be tested offline by
    /// whoever saw it, so only a random secret keeps the namespace unguessable.
    NewSecret,
}

/// The arguments of `replic8 namespace open`.
#[derive(Debug, Args)]
pub(crate) struct OpenArgs {
    /// The name.
    name: String,
    /// A file holding the secret as 64 hex digits (`replic8 namespace new-secret`).
    #[arg(long, conflicts_with = "secret_stdin")]
    secret_file: Option<PathBuf>,
    /// Read the secret from standard input.
    #[arg(long)]
    secret_stdin: bool,
    /// Which new feeds to accept: all, held (only feeds held here already), none, or
    /// manual (each waits for `replic8 accept` / `replic8 reject`). Default: all with
    /// --accept-header, else held.
    #[arg(long, value_parser = ["all", "held", "none", "manual"])]
    accept: Option<String>,
    /// Accept only feeds whose headers hold KEY=VALUE (repeat: all of them).
    #[arg(long = "accept-header", value_parser = parse_header)]
    accept_headers: Vec<(String, String)>,
    /// Offer accepted feeds to the namespace's other peers (default when the namespace
    /// accepts new feeds).
    #[arg(long, overrides_with = "no_forward")]
    forward: bool,
    /// Do not offer accepted feeds on.
    #[arg(long)]
    no_forward: bool,
}

/// Runs `replic8 namespace open|list|close`.
pub(crate) fn run(config: &NodeConfig, command: NamespaceCommand) -> anyhow::Result<()> {
    match command {
        NamespaceCommand::NewSecret => new_secret(),
        NamespaceCommand::Open(args) => open(config, args)?,
        NamespaceCommand::List { json } => {
            let v = ask(config, &Request::NamespaceList)?;
            if json {
                print_json(&v)?;
            } else {
                for ns in v.as_array().into_iter().flatten() {
                    println!("{}", line(ns));
                }
            }
        }
        NamespaceCommand::Close { name } => {
            ask(config, &Request::NamespaceClose { name: name.clone() })?;
            println!("closed {name}");
        }
    }
    Ok(())
}

/// Runs `replic8 namespace open`: the secret is read here, so an unreadable file
/// fails before the daemon is asked anything.
fn open(config: &NodeConfig, args: OpenArgs) -> anyhow::Result<()> {
    let secret = match (&args.secret_file, args.secret_stdin) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the secret file {}", path.display()))?,
        ),
        (None, true) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the secret from standard input")?;
            Some(text)
        }
        (None, false) => None,
    };
    let secret = secret
        .map(|text| parse_secret(&text).map(|s| hex::encode(s.0)))
        .transpose()?;
    let forward = if args.no_forward {
        Some(false)
    } else {
        args.forward.then_some(true)
    };
    let v = ask(
        config,
        &Request::NamespaceOpen {
            name: args.name,
            secret,
            accept: args.accept,
            headers: args.accept_headers,
            forward,
        },
    )?;
    println!("opened {}", line(&v));
    Ok(())
}

/// A namespace as one line: name, then its policy.
fn line(ns: &Value) -> String {
    let name = ns["name"].as_str().unwrap_or_default();
    let policy = &ns["policy"];
    let mut out = name.to_owned();
    if ns["secret"].as_bool() == Some(true) {
        out.push_str(" secret");
    }
    match policy["accept"].as_str() {
        Some(accept) => {
            out.push_str(&format!(" accept={accept}"));
            for (k, v) in policy["accept_headers"].as_object().into_iter().flatten() {
                out.push_str(&format!(" header:{k}={}", v.as_str().unwrap_or_default()));
            }
            if policy["forward"].as_bool() == Some(true) {
                out.push_str(" forward");
            }
        }
        None => out.push_str(" accept=held"),
    }
    if let Some(origin) = ns["origin"].as_str() {
        out.push_str(&format!(" ({origin})"));
    }
    out
}

/// Prints a new namespace secret (no daemon, no data directory).
pub(crate) fn new_secret() {
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
    println!("{}", hex::encode(secret));
}

/// The arguments of `replic8 share`.
#[derive(Debug, Args)]
pub(crate) struct ShareArgs {
    /// The namespace.
    namespace: String,
    /// The feed's key, hex.
    key: String,
    /// A header `k=v` (repeat for several).
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

/// Runs `replic8 share`.
pub(crate) fn share(config: &NodeConfig, args: ShareArgs) -> anyhow::Result<()> {
    let v = ask(
        config,
        &Request::Share {
            namespace: args.namespace,
            key: args.key,
            headers: args.headers,
        },
    )?;
    println!("offered to {} peer(s) now", v["offered_to"]);
    Ok(())
}
