//! `append`: durable appends to one writable feed in a fresh `DiskStorage` (a temporary
//! directory under `--dir` or `$TMPDIR`), one row per block size (64 KiB, then 1 KiB).
//!
//! The blocks are made before the clock starts (as a producer would hand them over); the
//! clock covers the appends and the final sync, so every byte counted is durable. Two
//! paths, both the store's documented fast ones (`docs/PERFORMANCE.md`, "store: append,
//! second round"):
//! - `deferred` (default): 1 MiB batches with `Feed::append_batch_deferred`, a
//!   `Feed::flush` every 16 MiB and at the end (the next batch is hashed while the previous
//!   one syncs);
//! - `owned`: 4 MiB batches with `Feed::append_batch_owned`, each durable on return.
//!
//! `cpu_seconds` is the process's CPU time (user and system, every thread) while the
//! clock ran: less sensitive to a loaded machine than the wall time.

use std::time::Instant;

use replic8_store::storage::DiskStorage;
use replic8_store::{Feed, FeedSecret};

use super::{
    cpu_seconds, peak_rss_bytes, reset_peak_rss, round, temp_dir, BenchError, BenchOptions, Row,
};
use crate::app::demo::Pattern;

/// Default bytes per block size.
pub(crate) const DEFAULT_SIZE: u64 = 256 << 20;
/// The block sizes run when `--block-size` is not given.
pub(crate) const BLOCK_SIZES: [usize; 2] = [64 << 10, 1 << 10];
/// Bytes per `append_batch_deferred` call.
const DEFERRED_BATCH: usize = 1 << 20;
/// Bytes between two flushes of the deferred path: the best sync size measured in the
/// store's append bench.
const DEFERRED_FLUSH: usize = 16 << 20;
/// Bytes per `append_batch_owned` call (durable each).
const OWNED_BATCH: usize = 4 << 20;

/// Which append path to measure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AppendPath {
    /// 1 MiB `append_batch_deferred` batches, flushed every 16 MiB and at the end.
    #[default]
    Deferred,
    /// 4 MiB `append_batch_owned` batches, each durable on return.
    Owned,
}

impl AppendPath {
    /// The name on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            AppendPath::Deferred => "deferred",
            AppendPath::Owned => "owned",
        }
    }

    /// Bytes made durable by one sync.
    fn durable_every(self) -> usize {
        match self {
            AppendPath::Deferred => DEFERRED_FLUSH,
            AppendPath::Owned => OWNED_BATCH,
        }
    }
}

/// Runs the scenario: a row per block size.
pub(crate) async fn run(options: &BenchOptions) -> Result<Vec<Row>, BenchError> {
    let size = options.size.unwrap_or(DEFAULT_SIZE);
    let sizes = match options.block_size {
        Some(b) => vec![b],
        None => BLOCK_SIZES.to_vec(),
    };
    let mut rows = Vec::new();
    for block_size in sizes {
        if block_size == 0 || block_size > replic8_store::MAX_BLOCK_SIZE {
            return Err(BenchError::Options(format!(
                "append: block size must be 1..={}",
                replic8_store::MAX_BLOCK_SIZE
            )));
        }
        let dir = temp_dir(options, "replic8-bench-append-")?;
        let path = options.append_path;
        let root = dir.path().to_owned();
        let row = tokio::task::spawn_blocking(move || once(&root, size, block_size, path))
            .await
            .map_err(|e| BenchError::Store(e.to_string()))??;
        rows.push(row);
    }
    Ok(rows)
}

fn store_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Store(e.to_string())
}

/// One block size: make the blocks, then time the appends and the last sync.
fn once(
    root: &std::path::Path,
    size: u64,
    block_size: usize,
    path: AppendPath,
) -> Result<Row, BenchError> {
    let count = usize::try_from(size.div_ceil(block_size as u64))
        .map_err(|_| BenchError::Options("append: size is too large".into()))?;
    let batch_bytes = match path {
        AppendPath::Deferred => DEFERRED_BATCH,
        AppendPath::Owned => OWNED_BATCH,
    };
    let per_batch = (batch_bytes / block_size).max(1);
    let per_flush = (DEFERRED_FLUSH / block_size).max(1);
    reset_peak_rss();
    let mut pattern = Pattern::new();
    let mut left = size;
    let mut batches: Vec<Vec<Vec<u8>>> = Vec::with_capacity(count.div_ceil(per_batch));
    let mut batch = Vec::with_capacity(per_batch);
    for _ in 0..count {
        let n = left.min(block_size as u64) as usize;
        batch.push(pattern.block(n));
        left -= n as u64;
        if batch.len() == per_batch {
            batches.push(std::mem::replace(&mut batch, Vec::with_capacity(per_batch)));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    let storage = DiskStorage::open(root).map_err(store_err)?;
    let mut feed = Feed::create(&storage, FeedSecret::generate()).map_err(store_err)?;

    let cpu_before = cpu_seconds(None);
    let start = Instant::now();
    match path {
        AppendPath::Owned => {
            for batch in batches {
                feed.append_batch_owned(batch).map_err(store_err)?;
            }
        }
        AppendPath::Deferred => {
            let mut since_flush = 0;
            for batch in &batches {
                feed.append_batch_deferred(batch).map_err(store_err)?;
                since_flush += batch.len();
                if since_flush >= per_flush {
                    feed.flush().map_err(store_err)?;
                    since_flush = 0;
                }
            }
            feed.flush().map_err(store_err)?;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(None)
        .zip(cpu_before)
        .map(|(after, before)| round(after - before, 2));
    if feed.length() != count as u64 || feed.byte_length() != size {
        return Err(BenchError::Mismatch(format!(
            "append: the feed holds {} blocks, {} bytes; {count} blocks, {size} bytes were appended",
            feed.length(),
            feed.byte_length()
        )));
    }
    Ok(
        Row::new("append", size, count as u64, seconds, peak_rss_bytes(None))
            .with("block_size", block_size)
            .with("path", path.name())
            .with(
                "durable_every_bytes",
                path.durable_every().min(size as usize),
            )
            .with("dir", root.display().to_string())
            .with("cpu_seconds", cpu),
    )
}
