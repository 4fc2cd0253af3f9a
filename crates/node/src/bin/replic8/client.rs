//! What every client command shares: the runtime, the config, the daemon request.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use replic8_node::config::NodeConfig;
use replic8_node::control::{self, Request};
use replic8_node::persist;
use serde_json::Value;

pub(crate) fn parse_header(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not k=v"))?;
    Ok((k.to_owned(), v.to_owned()))
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start a runtime")
}

/// An actix system on a multi-threaded runtime (the raw bench starts actors in it).
pub(crate) fn actix_runtime() -> anyhow::Result<actix::SystemRunner> {
    let rt = runtime()?;
    Ok(actix::System::with_tokio_rt(move || rt))
}

/// The config file (or the defaults) with `--data-dir` applied.
pub(crate) fn load_config(
    cli_config: Option<&Path>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<NodeConfig> {
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
pub(crate) fn ask(config: &NodeConfig, req: &Request) -> anyhow::Result<Value> {
    let data_dir = config.resolve_data_dir()?;
    match persist::check_dir(&data_dir) {
        Err(persist::PersistError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        checked => checked?,
    }
    let socket = control::socket_path(&data_dir);
    Ok(runtime()?.block_on(control::request(&socket, req))?)
}

pub(crate) fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

pub(crate) fn read_input(file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
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
