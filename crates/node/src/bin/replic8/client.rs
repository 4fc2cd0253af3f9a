//! What every client command shares: the runtime, the config, the daemon request.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::app::control::{self, Request};
use anyhow::Context;
use replic8_node::config::NodeConfig;
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

/// Where the blocks to append come from: a file (opened now, so that a missing one
/// fails before the daemon is asked anything), or standard input for `-` or none.
pub(crate) fn open_input(
    file: Option<&Path>,
) -> anyhow::Result<Box<dyn tokio::io::AsyncRead + Unpin + Send>> {
    Ok(match file {
        Some(p) if p.as_os_str() != "-" => {
            let f =
                std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
            Box::new(tokio::fs::File::from_std(f))
        }
        _ => Box::new(tokio::io::stdin()),
    })
}

/// Appends `input` to the feed `key` in the binary mode, cut into blocks of
/// `block_size`; the daemon's final answer (`length`, `blocks`, `bytes`).
pub(crate) fn append(
    config: &NodeConfig,
    key: &str,
    input: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    block_size: usize,
) -> anyhow::Result<Value> {
    let socket = control::socket_path(&checked_data_dir(config)?);
    Ok(runtime()?.block_on(control::append_blocks(&socket, key, input, block_size))?)
}

/// Writes the feed `key`'s blocks from `start` (to `end`, or with `follow` for ever) to
/// standard output as raw bytes, as they come. A reader that stops reading (`| head`)
/// ends the command quietly.
pub(crate) fn cat(
    config: &NodeConfig,
    key: &str,
    start: u64,
    end: Option<u64>,
    follow: bool,
) -> anyhow::Result<()> {
    let socket = control::socket_path(&checked_data_dir(config)?);
    let mut out = std::io::BufWriter::with_capacity(STDOUT_BUFFER, std::io::stdout().lock());
    let read = control::read_blocks(&socket, key, start, end, follow, &mut out);
    match runtime()?.block_on(read) {
        Err(control::ControlError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(())
        }
        done => Ok(done.map(|_| ())?),
    }
}

/// Standard output's buffer for `feed cat`: blocks leave in large writes, and whenever
/// no more has arrived from the daemon.
const STDOUT_BUFFER: usize = 1 << 20;
