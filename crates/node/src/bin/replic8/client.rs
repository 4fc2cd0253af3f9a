//! What every client command shares: the runtime, the config, the daemon request.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use replic8_node::config::NodeConfig;
use replic8_node::control::{self, Request};
use replic8_node::persist;
use serde_json::Value;

/// A header given as `k=v`.
pub(crate) fn parse_header(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not k=v"))?;
    Ok((k.to_owned(), v.to_owned()))
}

/// A multi-threaded tokio runtime.
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
    let socket = control::socket_path(&checked_data_dir(config)?);
    Ok(runtime()?.block_on(control::request(&socket, req))?)
}

/// The config's data directory, refused if it is unsafe (a missing one is left to the
/// connect, which says there is no daemon).
fn checked_data_dir(config: &NodeConfig) -> anyhow::Result<PathBuf> {
    let data_dir = config.resolve_data_dir()?;
    match persist::check_dir(&data_dir) {
        Err(persist::PersistError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        checked => checked?,
    }
    Ok(data_dir)
}

/// Sends `req` to the daemon and hands each line of its streamed answer to `each`,
/// until `each` breaks or the daemon ends the stream.
pub(crate) fn follow(
    config: &NodeConfig,
    req: &Request,
    each: impl FnMut(Value) -> std::io::Result<std::ops::ControlFlow<()>>,
) -> anyhow::Result<()> {
    let socket = control::socket_path(&checked_data_dir(config)?);
    Ok(runtime()?.block_on(control::request_stream(&socket, req, each))?)
}

/// Prints `value` as one JSON line.
pub(crate) fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A file, or standard input for `-` or none.
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
