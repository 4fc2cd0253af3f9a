//! `replic8 namespace ...` and `replic8 share`: namespaces and what is offered in them.

use clap::{Args, Subcommand};
use replic8_node::config::NodeConfig;
use replic8_node::control::Request;

use crate::client::{ask, parse_header};

/// Namespaces.
#[derive(Debug, Subcommand)]
pub(crate) enum NamespaceCommand {
    /// Print a new namespace secret: 32 random bytes from the OS, as 64 hex digits. A
    /// namespace's secret is never a passphrase: a tag it keys can be tested offline by
    /// whoever saw it, so only a random secret keeps the namespace unguessable.
    NewSecret,
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
