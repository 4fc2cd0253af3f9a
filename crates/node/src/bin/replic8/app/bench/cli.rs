//! `cli-append`: the `replic8` command's data path through a daemon. A daemon (this
//! executable, or `--peer-exe`, on loopback without DHT or LAN) runs on a temporary data
//! directory under `--dir`; a file of `--size` bytes (256 MiB by default) is written
//! before any clock starts. Then, each the real command in a process of its own:
//! `replic8 feed append KEY FILE` (64 KiB blocks, or `--block-size`), and `replic8 feed
//! cat KEY` to `/dev/null`. Then the `append` scenario at the same size and block size,
//! in this same run, for `ratio` (the command's MB/s over the store's alone).
//!
//! Rows: `cli-append` and `cli-cat`, each with `daemon_cpu_seconds` (the daemon's CPU
//! while the command ran) and `ratio`; `peak_rss_bytes` is the daemon's peak.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::{append, cpu_seconds, peak_rss_bytes, round, temp_dir, BenchError, BenchOptions, Row};
use crate::app::control::{self, Request};
use crate::app::demo::Pattern;

/// Bytes per block when `--block-size` is not given: the `append` scenario's headline
/// size.
const DEFAULT_BLOCK: usize = 64 << 10;

/// Bytes written to the input file per write while preparing it.
const PREPARE_CHUNK: usize = 4 << 20;

/// The daemon of the run; killed when dropped.
struct DaemonProcess(Child);

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `exe daemon` on `data` and waits for its ready line (the socket is bound
/// before it).
fn start_daemon(exe: &Path, data: &Path) -> Result<DaemonProcess, BenchError> {
    let mut child = Command::new(exe)
        .args(["daemon", "--listen", "127.0.0.1:0", "--no-dht", "--no-lan"])
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(BenchError::io(format!("cannot start {}", exe.display())))?;
    let stderr = child.stderr.take();
    let daemon = DaemonProcess(child);
    let mut lines = std::io::BufReader::new(
        stderr.ok_or_else(|| BenchError::Peer("the daemon's stderr".into()))?,
    )
    .lines();
    match lines.next() {
        Some(Ok(line)) if line.starts_with("replic8 daemon: ") => {}
        other => return Err(BenchError::Peer(format!("daemon did not start: {other:?}"))),
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(daemon)
}

/// Runs `exe --data-dir data ARGS` with standard output to `stdout`; its wall time.
fn timed(exe: &Path, data: &Path, args: &[&str], stdout: Stdio) -> Result<f64, BenchError> {
    let start = Instant::now();
    let out = Command::new(exe)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .map_err(BenchError::io(format!("cannot start {}", exe.display())))?;
    let seconds = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(BenchError::Peer(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(seconds)
}

/// Writes `size` bytes of the bench pattern to `path`.
fn prepare(path: &Path, size: u64) -> Result<(), BenchError> {
    use std::io::Write;
    let file = std::fs::File::create(path).map_err(BenchError::io("the input file"))?;
    let mut out = std::io::BufWriter::new(file);
    let mut pattern = Pattern::new();
    let mut left = size;
    while left > 0 {
        let n = left.min(PREPARE_CHUNK as u64) as usize;
        out.write_all(&pattern.block(n))
            .map_err(BenchError::io("the input file"))?;
        left -= n as u64;
    }
    out.flush().map_err(BenchError::io("the input file"))
}

/// Runs the scenario: `cli-append`, then `cli-cat`.
pub(crate) async fn run(options: &BenchOptions) -> Result<Vec<Row>, BenchError> {
    let size = options.size.unwrap_or(append::DEFAULT_SIZE);
    let block_size = options.block_size.unwrap_or(DEFAULT_BLOCK);
    if block_size == 0 || block_size > replic8_store::MAX_BLOCK_SIZE {
        return Err(BenchError::Options(format!(
            "cli-append: block size must be 1..={}",
            replic8_store::MAX_BLOCK_SIZE
        )));
    }
    let exe: PathBuf = match &options.peer_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(BenchError::io("this executable's path"))?,
    };
    let dir = temp_dir(options, "replic8-bench-cli-")?;
    let data = dir.path().join("data");
    let input = dir.path().join("input.bin");
    let measured = tokio::task::spawn_blocking(move || {
        prepare(&input, size)?;
        let daemon = start_daemon(&exe, &data)?;
        let pid = daemon.0.id();
        let socket = control::socket_path(&data);
        let key = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(BenchError::io("a runtime"))?
            .block_on(control::request(&socket, &Request::FeedNew))
            .map_err(|e| BenchError::Peer(e.to_string()))?["key"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let input = input.to_string_lossy().into_owned();
        let bs = block_size.to_string();
        let cpu = || cpu_seconds(Some(pid)).unwrap_or(0.0);

        let before = cpu();
        let append_args = ["feed", "append", &key, &input, "--block-size", &bs];
        let append_secs = timed(&exe, &data, &append_args, Stdio::null())?;
        let append_cpu = cpu() - before;

        let before = cpu();
        let sink = std::fs::File::create("/dev/null").map_err(BenchError::io("/dev/null"))?;
        let cat_secs = timed(&exe, &data, &["feed", "cat", &key], Stdio::from(sink))?;
        let cat_cpu = cpu() - before;
        let rss = peak_rss_bytes(Some(pid));
        drop(daemon);
        Ok::<_, BenchError>((append_secs, append_cpu, cat_secs, cat_cpu, rss))
    })
    .await
    .map_err(|e| BenchError::Peer(e.to_string()))??;
    let (append_secs, append_cpu, cat_secs, cat_cpu, rss) = measured;

    let store = append::run(&BenchOptions {
        size: Some(size),
        block_size: Some(block_size),
        ..options.clone()
    })
    .await?;
    let store_mb_per_s = store.first().map_or(0.0, |r| r.f64("mb_per_s"));
    let blocks = size.div_ceil(block_size as u64);
    let row = |scenario: &str, seconds: f64, cpu: f64| {
        let row = Row::new(scenario, size, blocks, seconds, rss);
        let ratio = if store_mb_per_s > 0.0 {
            row.f64("mb_per_s") / store_mb_per_s
        } else {
            0.0
        };
        row.with("block_size", block_size)
            .with("daemon_cpu_seconds", round(cpu, 2))
            .with("store_append_mb_per_s", store_mb_per_s)
            .with("ratio", round(ratio, 3))
    };
    Ok(vec![
        row("cli-append", append_secs, append_cpu),
        row("cli-cat", cat_secs, cat_cpu),
    ])
}
