//! `replic8 daemon`: a node serving the client commands on its control socket.

use std::net::SocketAddr;

use crate::app::control;
use anyhow::{bail, Context};
use clap::Args;
use replic8_node::config::NodeConfig;
use replic8_node::{persist, NodeBuilder};

use crate::client::runtime;

/// The arguments of `replic8 daemon`.
#[derive(Debug, Args)]
pub(crate) struct DaemonArgs {
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
}

/// Runs `replic8 daemon` with the command line's overrides of `config`.
pub(crate) fn run(mut config: NodeConfig, args: DaemonArgs) -> anyhow::Result<()> {
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if !args.bootstrap.is_empty() {
        config.discovery.bootstrap = Some(args.bootstrap);
    }
    if args.no_dht {
        config.discovery.dht = false;
    }
    if args.no_lan {
        config.discovery.lan = false;
    }
    if args.metrics.is_some() {
        config.metrics.listen = args.metrics;
    }
    runtime()?.block_on(daemon(config))
}

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

/// Runs a node and its control socket until SIGINT or SIGTERM, then closes both.
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
