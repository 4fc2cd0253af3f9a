//! Crash safety of bulk appends on `DiskStorage`: the paths `replic8 bench append` takes.
//!
//! Like `crash.rs` (the test binary re-executes itself as the child, selected by name,
//! active only when `REPLIC8_CRASH_BULK_CHILD` names a directory), but the child appends
//! 1 KiB blocks in `Feed::append_batch_deferred` batches of 128 KiB, so every batch's
//! blocks are written on a helper thread while the batch is hashed, flushes every fourth
//! batch and acknowledges the length after each flush. Its checkpoints are tiny, so one
//! runs on its helper thread nearly all the time and kills land inside them. After each
//! kill the parent reopens the feed and checks that every acknowledged block is there,
//! with its bytes, and verifies up to the signed head.
//!
//! Reproduce a run: `REPLIC8_CRASH_SEED=<seed printed on failure> cargo test -p
//! replic8-store --test it crash_bulk::`.

#![allow(clippy::unwrap_used)] // test helpers outside `#[test]` functions unwrap too

use std::path::Path;
use std::time::Duration;

use replic8_store::storage::DiskConfig;
use util::{CrashChild, Kills};

use crate::util;

const SECRET: [u8; 32] = [0x24; 32];
const KILLS: usize = 16;
/// Blocks per batch: 128 KiB, over the storage's 64 KiB for overlapped writes.
const PER_BATCH: u64 = 128;

/// The child test, run by the parent test and killed.
const CHILD: CrashChild = CrashChild {
    test: "crash_bulk::crash_bulk_child_process",
    env: "REPLIC8_CRASH_BULK_CHILD",
    secret: SECRET,
    block,
};

/// Block `index`: 1 KiB naming its index.
fn block(index: u64) -> Vec<u8> {
    let mut data = vec![(index % 251) as u8; 1024];
    data[..8].copy_from_slice(&index.to_le_bytes());
    data
}

/// The child: append forever, acknowledging each flushed length on stdout.
#[test]
fn crash_bulk_child_process() {
    let Some(dir) = std::env::var_os(CHILD.env) else {
        return; // Only the crash test runs this as a child.
    };
    let config = DiskConfig {
        checkpoint_bytes: 512 << 10,
        checkpoint_entries: 1024,
        ..DiskConfig::default()
    };
    let mut feed = CHILD.open_feed(Path::new(&dir), config);
    let mut out = std::io::stdout().lock();
    loop {
        for _ in 0..4 {
            let start = feed.length();
            let blocks: Vec<Vec<u8>> = (start..start + PER_BATCH).map(block).collect();
            feed.append_batch_deferred(&blocks).unwrap();
        }
        feed.flush().unwrap();
        CHILD.ack(&mut out, feed.length());
    }
}

#[test]
fn killed_bulk_writer_keeps_every_flushed_batch() {
    if CHILD.is_child() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = CHILD.kill_repeatedly(
        dir.path(),
        KILLS,
        Duration::from_millis(15),
        |kill| kill % 4 != 3,
        |reopened, ctx| assert_eq!(reopened % PER_BATCH, 0, "{ctx}: a batch was torn"),
    );
    let Kills {
        seed,
        acks_seen,
        reopened,
        ..
    } = run;
    // The test means something only if the child appended between kills, past many
    // checkpoints (one per 1,024 entries, ~340 blocks).
    assert!(
        acks_seen >= KILLS / 2 && reopened >= 20 * PER_BATCH,
        "seed {seed}: only {acks_seen} runs acknowledged anything, final length {reopened}"
    );
}
