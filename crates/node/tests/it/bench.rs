//! `replic8 bench`, run as a user would with tiny sizes: every scenario finishes, its JSON
//! rows parse and hold consistent numbers. Nothing about speed is asserted.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;

/// Runs `replic8 bench <args> --json --dir <tmp>`; the rows.
fn bench(args: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_replic8"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    // Temporary data is removed.
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "{args:?}"
    );
    rows
}

fn u(row: &Value, key: &str) -> u64 {
    row[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {row}"))
}

fn f(row: &Value, key: &str) -> f64 {
    row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} in {row}"))
}

/// The fields every row has, and their relations.
fn check_common(row: &Value, scenario: &str, bytes: u64, blocks: u64) {
    assert_eq!(row["scenario"], scenario, "{row}");
    assert_eq!(u(row, "bytes"), bytes, "{row}");
    assert_eq!(u(row, "blocks"), blocks, "{row}");
    let seconds = f(row, "seconds");
    assert!(seconds > 0.0, "{row}");
    let mb = bytes as f64 / 1e6 / seconds;
    assert!((f(row, "mb_per_s") - mb).abs() <= mb * 1e-3 + 1e-3, "{row}");
    let bps = blocks as f64 / seconds;
    assert!(
        (f(row, "blocks_per_s") - bps).abs() <= bps * 1e-3 + 0.1,
        "{row}"
    );
    // Linux reports the peak RSS; a live process holds at least a MiB.
    assert!(u(row, "peak_rss_bytes") > 1 << 20, "{row}");
}

#[test]
fn raw_moves_the_asked_bytes() {
    let rows = bench(&["raw", "--size", "2MiB"]);
    assert_eq!(rows.len(), 1);
    check_common(&rows[0], "raw", 2 << 20, 0);
    // The receiver acknowledged what it got: at least one ACK frame reached the sender.
    assert!(u(&rows[0], "acks") > 0, "{}", rows[0]);
}

#[test]
fn bulk_replicates_verifies_and_compares_with_raw() {
    let rows = bench(&["bulk", "--size", "1MiB"]);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    check_common(row, "bulk", 1 << 20, 16);
    assert_eq!(row["verified"], true);
    assert_eq!(u(row, "block_size"), 64 << 10);
    assert!(u(row, "writer_peak_rss_bytes") > 1 << 20, "{row}");
    assert!(f(row, "reader_cpu_seconds") >= 0.0 && f(row, "writer_cpu_seconds") >= 0.0);
    let raw = f(row, "raw_quic_mb_per_s");
    assert!(raw > 0.0, "{row}");
    // Raw QUIC's CPU for the same bytes, both ends (Linux tells it; CI runs on Linux).
    assert!(row["raw_quic_cpu_seconds"].as_f64().is_some(), "{row}");
    let ratio = f(row, "mb_per_s") / raw;
    assert!(
        (f(row, "ratio") - ratio).abs() <= ratio * 1e-3 + 1e-4,
        "{row}"
    );
}

#[test]
fn small_replicates_one_kib_blocks() {
    let rows = bench(&["small", "--size", "300KiB"]);
    assert_eq!(rows.len(), 1);
    check_common(&rows[0], "small", 300 << 10, 300);
    assert_eq!(rows[0]["verified"], true);
}

#[test]
fn many_feeds_replicates_every_feed() {
    let rows = bench(&["many-feeds", "--feeds", "25", "--blocks", "8"]);
    assert_eq!(rows.len(), 1);
    check_common(&rows[0], "many-feeds", 25 * 8 * 1024, 25 * 8);
    assert_eq!(u(&rows[0], "feeds"), 25);
    assert_eq!(rows[0]["verified"], true);
    assert!(u(&rows[0], "writer_peak_rss_bytes") > 1 << 20);
    // Small feeds share one database: the reader's storage holds a few files whatever
    // the number of feeds (its lock, the database, the namespaces, the directory for
    // large feeds).
    assert!(u(&rows[0], "reader_files") <= 5, "{}", rows[0]);
}

#[test]
fn append_reports_both_block_sizes_and_both_paths_work() {
    let rows = bench(&["append", "--size", "1MiB"]);
    assert_eq!(rows.len(), 2);
    check_common(&rows[0], "append", 1 << 20, 16);
    assert_eq!(u(&rows[0], "block_size"), 64 << 10);
    check_common(&rows[1], "append", 1 << 20, 1024);
    assert_eq!(u(&rows[1], "block_size"), 1 << 10);
    assert_eq!(rows[1]["path"], "deferred");
    let rows = bench(&[
        "append",
        "--size",
        "100KB",
        "--block-size",
        "3000",
        "--append-path",
        "owned",
    ]);
    assert_eq!(rows.len(), 1);
    // 100,000 bytes in blocks of 3,000: 33 full ones and one of 1,000.
    check_common(&rows[0], "append", 100_000, 34);
    assert_eq!(rows[0]["path"], "owned");
}

#[test]
fn discovery_connects_every_round_on_a_local_dht() {
    let rows = bench(&[
        "discovery",
        "--rounds",
        "2",
        "--testnet-nodes",
        "6",
        "--guard-secs",
        "40",
    ]);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    check_common(row, "discovery", 0, 0);
    for case in ["announce_then_join", "both_at_once"] {
        assert_eq!(u(row, &format!("{case}_connected")), 2, "{row}");
        let median = f(row, &format!("{case}_median_ms"));
        let max = f(row, &format!("{case}_max_ms"));
        assert!(median > 0.0 && median <= max, "{row}");
    }
    assert_eq!(u(row, "dead_entries_connected"), 2, "{row}");
    for case in ["dead_entries_join", "dead_entries_connected"] {
        let median = f(row, &format!("{case}_median_ms"));
        let max = f(row, &format!("{case}_max_ms"));
        assert!(median > 0.0 && median <= max, "{row}");
    }
}

#[test]
fn the_table_has_a_header_and_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_replic8"))
        .args([
            "bench",
            "append",
            "--size",
            "64KiB",
            "--block-size",
            "4KiB",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("scenario"), "{text}");
    assert!(
        lines[1].starts_with("append") && lines[1].contains("65536"),
        "{text}"
    );
}

#[test]
fn a_bad_size_is_one_line_and_a_nonzero_exit() {
    let out = Command::new(env!("CARGO_BIN_EXE_replic8"))
        .args(["bench", "raw", "--size", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("replic8: "), "{err}");
}

#[test]
fn all_runs_every_scenario_in_order_with_the_flags_given() {
    let rows = bench(&[
        "all",
        "--size",
        "256KiB",
        "--feeds",
        "3",
        "--blocks",
        "4",
        "--rounds",
        "1",
        "--testnet-nodes",
        "5",
    ]);
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "raw",
            "bulk",
            "small",
            "many-feeds",
            "append",
            "append",
            "discovery"
        ]
    );
    check_common(&rows[0], "raw", 256 << 10, 0);
    check_common(&rows[1], "bulk", 256 << 10, 4);
    check_common(&rows[2], "small", 256 << 10, 256);
    check_common(&rows[3], "many-feeds", 3 * 4 * 1024, 12);
    check_common(&rows[4], "append", 256 << 10, 4);
    check_common(&rows[5], "append", 256 << 10, 256);
    assert_eq!(u(&rows[6], "rounds"), 1);
}

#[test]
fn flood_replicates_the_honest_feed_verified_and_the_victim_survives() {
    // The small variant: 20 attackers for 5 s around an 8 MiB feed. Only the outcome is
    // asserted (the feed arrived verified, the victim answers, A and B are still its
    // peers, the attack happened), never a speed.
    let rows = bench(&[
        "flood",
        "--attackers",
        "20",
        "--seconds",
        "5",
        "--size",
        "8MiB",
    ]);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    check_common(row, "flood", 8 << 20, 128);
    assert_eq!(row["verified"], true, "{row}");
    assert_eq!(row["victim_alive"], true, "{row}");
    assert_eq!(row["honest_connected"], true, "{row}");
    assert!(f(row, "ratio") > 0.0, "{row}");
    assert!(f(row, "baseline_mb_per_s") > 0.0, "{row}");
    assert_eq!(u(row, "attackers"), 20, "{row}");
    let attempted = u(row, "attacker_connections_attempted");
    assert!(
        attempted >= 20,
        "every attacker dialed at least once: {row}"
    );
    assert_eq!(
        attempted,
        u(row, "attacker_connections_established") + u(row, "attacker_connections_refused"),
        "{row}"
    );
}
