//! Crash safety of a feed in the shared database of small feeds, with real processes
//! and SIGKILL: as `crash.rs`, but the child's storage keeps every feed in `small.redb`
//! (`DiskConfig::small_feed_bytes` unbounded) and its blocks are small, as a feed per
//! chat room or per writer is. The child appends through `Feed::append`,
//! `Feed::append_batch` and `Feed::append_batch_deferred` + `Feed::flush`, and
//! acknowledges each durable length; after each kill the parent reopens the feed (with
//! the default config) and checks every acknowledged block, its bytes, and the signed
//! head over them.
//!
//! Reproduce a run: `REPLIC8_CRASH_SEED=<seed printed on failure> cargo test -p
//! replic8-store --test crash_small`.

#![allow(clippy::unwrap_used)] // test helpers outside `#[test]` functions unwrap too

use std::path::Path;
use std::time::Duration;

use replic8_store::storage::DiskConfig;
use util::{CrashChild, Kills};

mod util;

const SECRET: [u8; 32] = [0x17; 32];
const KILLS: usize = 40;

/// The child test, run by the parent test and killed.
const CHILD: CrashChild = CrashChild {
    test: "crash_small_child_process",
    env: "REPLIC8_CRASH_SMALL_CHILD",
    secret: SECRET,
    block,
};

/// Block `index`: 0 to 300 bytes naming its index.
fn block(index: u64) -> Vec<u8> {
    let len = (index * 37 % 301) as usize;
    let mut data = vec![(index % 251) as u8; len];
    let tag = index.to_le_bytes();
    let n = tag.len().min(len);
    data[..n].copy_from_slice(&tag[..n]);
    data
}

/// The child: append forever, acknowledging each durable length on stdout.
#[test]
fn crash_small_child_process() {
    let Some(dir) = std::env::var_os(CHILD.env) else {
        return; // Only the crash test runs this as a child.
    };
    let config = DiskConfig {
        small_feed_bytes: u64::MAX,
        ..DiskConfig::default()
    };
    let mut feed = CHILD.open_feed(Path::new(&dir), config);
    let mut out = std::io::stdout().lock();
    loop {
        let start = feed.length();
        let length = match start % 4 {
            1 => {
                let blocks: Vec<Vec<u8>> = (start..start + 3).map(block).collect();
                feed.append_batch(&blocks).unwrap()
            }
            2 => {
                let first: Vec<Vec<u8>> = (start..start + 2).map(block).collect();
                let second: Vec<Vec<u8>> = (start + 2..start + 4).map(block).collect();
                feed.append_batch_deferred(&first).unwrap();
                let length = feed.append_batch_deferred(&second).unwrap();
                feed.flush().unwrap();
                length
            }
            _ => feed.append(&block(start)).unwrap(),
        };
        CHILD.ack(&mut out, length);
    }
}

#[test]
fn killed_writer_of_a_small_feed_keeps_every_acknowledged_block() {
    if CHILD.is_child() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = CHILD.kill_repeatedly(
        dir.path(),
        KILLS,
        Duration::from_millis(30),
        |kill| kill % 2 == 0,
        |_, _| {},
    );
    let Kills {
        seed,
        acks_seen,
        acked,
        ..
    } = run;
    // The feed never left the shared database.
    let key = replic8_store::FeedSecret::from_bytes(&SECRET).key();
    assert!(
        !util::feed_dir(dir.path(), key.as_bytes()).exists(),
        "seed {seed}: the feed has a directory"
    );
    assert!(
        acks_seen >= KILLS / 2 && acked >= 20,
        "seed {seed}: only {acks_seen} runs acknowledged anything, final length {acked}"
    );
}
