//! Feeds by key, live tails, lists and numbers after a restart, and blocks streamed to
//! and from the daemon (append, import, cat, and what a failed one leaves), through the
//! `replic8` command only: daemons on loopback (no DHT, no LAN), the reader given the
//! writer as a static peer in its TOML config.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{private_daemon, replic8, run, Daemon, Running, DEADLINE};

use crate::support;

/// A daemon on loopback (no DHT, no LAN) on `data`, with `config` if given.
fn start_daemon(data: &Path, config: Option<&Path>) -> Daemon {
    let mut cmd = replic8();
    private_daemon(&mut cmd, data);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    Daemon::spawn(&mut cmd)
}

fn json(data: &Path, args: &[&str]) -> Value {
    serde_json::from_slice(&run(data, args)).unwrap()
}

/// Polls `check` until it returns `Some`, within the deadline.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The JSON lines a command printed.
fn json_lines(out: &[u8]) -> Vec<Value> {
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// On the daemon of `a_data`, a new feed of 3 blocks, 10,000 bytes (small enough to go
/// whole), and a config file that makes `a` a second daemon's static peer: the feed's
/// key, its bytes and the config's path.
fn small_feed_and_peer_config(dir: &Path, a_data: &Path, a: &Daemon) -> (String, Vec<u8>, PathBuf) {
    let key = new_feed(a_data);
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 199) as u8).collect();
    let file = write_file(dir, "small.bin", &data);
    run(
        a_data,
        &[
            "feed",
            "append",
            &key,
            file.to_str().unwrap(),
            "--block-size",
            "4096",
        ],
    );
    let config = write_file(
        dir,
        "b.toml",
        format!("[discovery]\nstatic_peers = [\"{}\"]\n", a.quic()).as_bytes(),
    );
    (key, data, config)
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn feed_get_by_key_replicates_tails_lists_and_keeps_its_numbers_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a_data, b_data) = (dir.path().join("a"), dir.path().join("b"));
    let a = start_daemon(&a_data, None);

    // On A: a public feed (created, never shared in a named namespace) and a private
    // one (shared in `photos` only).
    let public = String::from_utf8(run(&a_data, &["feed", "new"]))
        .unwrap()
        .trim()
        .to_owned();
    let private = String::from_utf8(run(&a_data, &["feed", "new"]))
        .unwrap()
        .trim()
        .to_owned();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = write_file(dir.path(), "data.bin", &data);
    let file = file.to_str().unwrap();
    for key in [&public, &private] {
        run(
            &a_data,
            &["feed", "append", key, file, "--block-size", "16384"],
        );
    }
    run(&a_data, &["share", "photos", &private, "--header", "t=x"]);

    // The feed store's counters in `status`: nothing served yet, two feeds created.
    let before = json(&a_data, &["status", "--json"])["feed_store"].clone();
    assert_eq!(
        (&before["blocks_out"], &before["serve_bytes_peak"]),
        (&0.into(), &0.into()),
        "{before}"
    );
    assert!(before["feeds_opened"].as_u64().unwrap() >= 2, "{before}");

    // B knows A only as a static peer, and the keys out of band. Its receive budget,
    // and each peer's share of it, are zero: its feed streams read a frame at a time.
    let config = write_file(
        dir.path(),
        "b.toml",
        format!(
            "[discovery]\nstatic_peers = [\"{}\"]\n[limits]\nreceive_bytes_held = 0\nreceive_bytes_held_per_peer = 0\n",
            a.quic()
        )
        .as_bytes(),
    );
    let mut b = start_daemon(&b_data, Some(&config));

    // The private feed first: its `Have` reaches A before the public one's, and A never
    // answers it (A holds it only in `photos`).
    let refused = Running::start(&b_data, &["feed", "get", &private]);
    let (status, got) =
        Running::start(&b_data, &["feed", "get", &public]).finish("feed get of the public feed");
    assert!(status.success(), "{status}");
    let lines = json_lines(&got);
    assert_eq!(lines[0]["event"], "get", "{lines:?}");
    assert_eq!(lines[0]["created"], true, "{lines:?}");
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "synced", "{lines:?}");
    assert_eq!(last["in_sync"], true);
    assert_eq!(last["length"], 19);
    assert_eq!(last["stored"], 19);
    assert_eq!(last["remote_length"], 19);
    assert_eq!(last["peers"], 1);
    assert!(
        lines[1..].iter().all(|l| l["length"].is_u64()),
        "every line after the first is progress: {lines:?}"
    );
    assert_eq!(run(&b_data, &["feed", "cat", &public]), data, "copy equal");

    // The counters moved: A served the feed through its serve budget, B verified it,
    // and once B acknowledged every answer A holds nothing for it any more.
    let served = json(&a_data, &["status", "--json"])["feed_store"].clone();
    assert!(served["blocks_out"].as_u64().unwrap() >= 19, "{served}");
    assert!(served["bytes_out"].as_u64().unwrap() >= 300_000, "{served}");
    assert!(served["streams"].as_u64().unwrap() >= 1, "{served}");
    let peak = served["serve_bytes_peak"].as_u64().unwrap();
    let budget = replic8::feed_store::DEFAULT_SERVE_BYTES_IN_FLIGHT as u64;
    assert!(peak > 0 && peak <= budget, "{served}");
    assert_eq!(served["serve_stalls"], 0, "{served}");
    let got = json(&b_data, &["status", "--json"])["feed_store"].clone();
    assert!(got["blocks_in"].as_u64().unwrap() >= 19, "{got}");
    assert_eq!(got["bytes_in"], 300_000, "{got}");
    // What B received was counted until verified, then given back (the feed is 300 KB:
    // this shows the key and the counters; the store's tests show the bound).
    let peak_in = got["receive_bytes_peak"].as_u64().unwrap();
    assert!(peak_in > 0 && peak_in <= 400_000, "{got}");
    // A was B's only peer: its peak is the store's.
    assert_eq!(got["receive_bytes_peer_peak"], peak_in, "{got}");
    eventually("B verified everything it received", || {
        let s = json(&b_data, &["status", "--json"])["feed_store"].clone();
        (s["receive_bytes_held"] == 0).then_some(())
    });
    let text = String::from_utf8(run(&b_data, &["status"])).unwrap();
    assert!(
        text.contains(&format!(
            "bytes held to verify now, peak {peak_in} (one peer's peak {peak_in})"
        )),
        "{text}"
    );
    eventually("A's serve budget given back", || {
        let s = json(&a_data, &["status", "--json"])["feed_store"].clone();
        (s["serve_bytes_held"] == 0).then_some(())
    });
    let text = String::from_utf8(run(&a_data, &["status"])).unwrap();
    assert!(
        text.contains(&format!("bytes held for peers now, peak {peak}"))
            && text.contains("0 cut for not reading"),
        "{text}"
    );

    // Nothing of the private feed came, and A never said it has it.
    let info = json(&b_data, &["feed", "info", &private, "--json"]);
    assert_eq!(info["length"], 0, "{info}");
    assert_eq!(info["peers"], serde_json::json!([]), "{info}");
    let printed = refused.stop();
    assert!(
        !String::from_utf8_lossy(&printed).contains("\"in_sync\":true"),
        "{}",
        String::from_utf8_lossy(&printed)
    );

    // The list: both feeds, the public replica complete, the refused one empty.
    let list = json(&b_data, &["feed", "list", "--json"]);
    let entry = |key: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|f| f["key"] == key)
            .unwrap_or_else(|| panic!("{key} not in {list}"))
            .clone()
    };
    let p = entry(&public);
    assert_eq!(
        (
            &p["writable"],
            &p["length"],
            &p["stored"],
            &p["stored_bytes"]
        ),
        (&Value::Bool(false), &19.into(), &19.into(), &300_000.into()),
        "{p}"
    );
    assert_eq!(p["namespaces"], serde_json::json!([""]), "{p}");
    assert_eq!(entry(&private)["stored"], 0);
    let on_a = json(&a_data, &["feed", "list", "--json"]);
    let names: Vec<&Value> = on_a
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["namespaces"])
        .collect();
    assert!(names.contains(&&serde_json::json!(["photos"])), "{on_a}");

    // A live tail on B prints what A appends later, and a following get reports it.
    let tail = Running::start(&b_data, &["feed", "cat", &public, "--follow"]);
    assert_eq!(tail.read_exact(data.len(), "the tail's first part"), data);
    let following = Running::start(&b_data, &["feed", "get", &public, "--follow"]);
    following.read_line_until("the following get's first sync", |v| v["in_sync"] == true);
    let more: Vec<u8> = (0..40_000u32).map(|i| (i % 13) as u8).collect();
    let more_file = write_file(dir.path(), "more.bin", &more);
    run(
        &a_data,
        &[
            "feed",
            "append",
            &public,
            more_file.to_str().unwrap(),
            "--block-size",
            "16384",
        ],
    );
    assert_eq!(tail.read_exact(more.len(), "the appended blocks"), more);
    drop(tail);
    let at_22 = following.read_line_until("the following get in sync at 22", |v| {
        v["in_sync"] == true && v["length"] == 22
    });
    assert_eq!(
        (&at_22["remote_length"], &at_22["stored"]),
        (&22.into(), &22.into()),
        "{at_22}"
    );
    drop(following);

    // Restarted, B knows at once what it stores, then hears from A again.
    b.stop();
    b = start_daemon(&b_data, Some(&config));
    let info = json(&b_data, &["feed", "info", &public, "--json"]);
    assert_eq!((&info["length"], &info["stored"]), (&22.into(), &22.into()));
    let status = json(&b_data, &["status", "--json"]);
    assert_eq!(status["feeds_held"], 2, "{status}");
    assert_eq!(status["blocks_stored"], 22, "{status}");
    assert_eq!(status["bytes_stored"], 340_000, "{status}");
    let peers = eventually("A in B's peer table of the feed", || {
        let info = json(&b_data, &["feed", "info", &public, "--json"]);
        let peers = info["peers"].as_array().unwrap().clone();
        (!peers.is_empty()).then_some(peers)
    });
    assert_eq!(peers[0]["length"], 22, "{peers:?}");
    let text = String::from_utf8(run(&b_data, &["feed", "info", &public])).unwrap();
    assert!(
        text.contains("peer ") && text.contains("length 22"),
        "{text}"
    );
    b.stop();
    a.stop();
}

/// 64 hex digits of the feed `replic8 feed new` made on `data`.
fn new_feed(data: &Path) -> String {
    String::from_utf8(run(data, &["feed", "new"]))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn append_cat_and_import_stream_blocks_through_the_daemon_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d");
    let daemon = start_daemon(&d, None);
    let key = new_feed(&d);
    // 5 MiB and a part: 80 blocks of 64 KiB and a last one of 1234 bytes.
    let data: Vec<u8> = (0..(5u32 << 20) + 1234)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let file = write_file(dir.path(), "big.bin", &data);
    let file = file.to_str().unwrap();
    let length = run(&d, &["feed", "append", &key, file]);
    assert_eq!(String::from_utf8(length).unwrap().trim(), "81");
    // Every block boundary where --only-hash cuts: the same tree hash.
    let expected = support::tree_hash(&data, 65536);
    let info = json(&d, &["feed", "info", &key, "--json"]);
    assert_eq!(info["tree_hash"], expected.as_str(), "{info}");
    assert_eq!(info["byte_length"], data.len(), "{info}");
    let block = |i: usize| &data[i * 65536..((i + 1) * 65536).min(data.len())];
    assert!(run(&d, &["feed", "cat", &key, "--start", "40", "--end", "41"]) == block(40));
    assert!(run(&d, &["feed", "cat", &key, "--start", "80"]) == block(80));
    let all = run(&d, &["feed", "cat", &key]);
    assert!(
        all == data,
        "feed cat gives the file back ({} of {} bytes)",
        all.len(),
        data.len()
    );

    // A follower gets what is stored, then each append as it is stored; standard input
    // is cut into blocks like a file.
    let tail = Running::start(&d, &["feed", "cat", &key, "--follow", "--start", "80"]);
    assert!(tail.read_exact(1234, "the last block") == block(80));
    let more: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    let (status, out, err) = support::run_with_input(
        &d,
        &["feed", "append", &key, "-", "--block-size", "4096"],
        &more,
    );
    assert!(status.success(), "{err}");
    assert_eq!(
        String::from_utf8(out).unwrap().trim(),
        "106",
        "81 + 25 blocks"
    );
    assert!(tail.read_exact(more.len(), "the appended input") == more);
    drop(tail);
    let more_hash = support::tree_hash(&more, 4096);

    // Import: a file and standard input, each a new feed cut as --only-hash cuts it.
    let imported = json(&d, &["feed", "import", file, "--json"]);
    assert_eq!(imported["tree_hash"], expected.as_str(), "{imported}");
    assert_eq!(
        (&imported["length"], &imported["bytes"]),
        (&81.into(), &data.len().into())
    );
    let (status, out, err) = support::run_with_input(
        &d,
        &["feed", "import", "-", "--block-size", "4096", "--json"],
        &more,
    );
    assert!(status.success(), "{err}");
    let from_stdin: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(from_stdin["tree_hash"], more_hash.as_str());
    assert!(run(&d, &["feed", "cat", from_stdin["key"].as_str().unwrap()]) == more);
    daemon.stop();
}

#[test]
fn two_appends_to_one_feed_at_once_both_land_whole_each_in_order() {
    // The daemon hashes each batch while the one before is written: one append's
    // batches can find the feed moved by the other's, and must then go after them.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d");
    let daemon = start_daemon(&d, None);
    let key = new_feed(&d);
    const BLOCKS: u32 = 96;
    // Whole 64 KiB blocks, each naming its file (byte 4) and its index (bytes 0..4).
    let file = |tag: u8| -> Vec<u8> {
        (0..BLOCKS)
            .flat_map(|i| {
                let mut block = vec![tag; 65536];
                block[..4].copy_from_slice(&i.to_be_bytes());
                block
            })
            .collect()
    };
    let (a, b) = (
        write_file(dir.path(), "a.bin", &file(1)),
        write_file(dir.path(), "b.bin", &file(2)),
    );
    let ra = Running::start(&d, &["feed", "append", &key, a.to_str().unwrap()]);
    let rb = Running::start(&d, &["feed", "append", &key, b.to_str().unwrap()]);
    let (sa, _) = ra.finish("append a");
    let (sb, _) = rb.finish("append b");
    assert!(sa.success() && sb.success());
    let all = run(&d, &["feed", "cat", &key]);
    assert_eq!(all.len(), 2 * BLOCKS as usize * 65536);
    for tag in [1u8, 2] {
        let order: Vec<u32> = all
            .chunks(65536)
            .filter(|block| block[4] == tag)
            .map(|block| u32::from_be_bytes([block[0], block[1], block[2], block[3]]))
            .collect();
        assert_eq!(order, (0..BLOCKS).collect::<Vec<_>>(), "file {tag}");
    }
    // The signed tree is the tree of the blocks as stored.
    let info = json(&d, &["feed", "info", &key, "--json"]);
    assert_eq!(info["length"], 2 * BLOCKS, "{info}");
    assert_eq!(
        info["tree_hash"],
        support::tree_hash(&all, 65536).as_str(),
        "{info}"
    );
    daemon.stop();
}

#[test]
fn a_failed_append_or_cat_says_why_in_one_line_and_changes_nothing() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d");
    let daemon = start_daemon(&d, None);
    let key = new_feed(&d);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let file = write_file(dir.path(), "data.bin", &data);
    let file = file.to_str().unwrap();
    run(&d, &["feed", "append", &key, file]);
    let before = json(&d, &["feed", "info", &key, "--json"]);
    assert_eq!(before["length"], 4);

    let err = support::run_fails(&d, &["feed", "append", "not-a-key", file]);
    assert!(err.contains("not 64 hex digits"), "{err}");
    let not_held = "ab".repeat(32);
    support::run_fails(&d, &["feed", "append", &not_held, file]);
    for size in ["0", "2097152"] {
        let err = support::run_fails(&d, &["feed", "append", &key, file, "--block-size", size]);
        assert!(err.contains("--block-size"), "{err}");
        let err = support::run_fails(&d, &["feed", "import", file, "--block-size", size]);
        assert!(err.contains("--block-size"), "{err}");
    }
    let err = support::run_fails(&d, &["feed", "append", &key, "/nonexistent/file"]);
    assert!(err.contains("cannot read"), "{err}");
    let err = support::run_fails(&d, &["feed", "cat", &key, "--start", "3", "--end", "1"]);
    assert!(err.contains("past"), "{err}");
    let err = support::run_fails(&d, &["feed", "cat", &key, "--end", "9"]);
    assert!(err.contains("past the feed's length"), "{err}");

    // A frame over the limit, straight on the socket: one error line, nothing appended.
    let socket = support::socket_path(&d);
    let mut conn = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let request = serde_json::json!({ "cmd": "feed_append_blocks", "key": key });
    writeln!(conn, "{request}").unwrap();
    let mut answers = std::io::BufReader::new(conn.try_clone().unwrap());
    let mut ready = String::new();
    answers.read_line(&mut ready).unwrap();
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["ok"]["length"], 4, "{ready}");
    conn.write_all(&support::frame_header(0, (1 << 20) + 1))
        .unwrap();
    let mut answer = String::new();
    answers.read_line(&mut answer).unwrap();
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let why = answer["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    assert!(why.contains("over the limit"), "{why}");
    assert!(why.contains("0 block(s) appended"), "{why}");
    // A good block then a bad frame kind in one write: the block is dropped with it.
    let mut conn = std::os::unix::net::UnixStream::connect(support::socket_path(&d)).unwrap();
    writeln!(conn, "{request}").unwrap();
    let mut answers = std::io::BufReader::new(conn.try_clone().unwrap());
    let mut ready = String::new();
    answers.read_line(&mut ready).unwrap();
    let mut frames = support::frame_header(0, 100);
    frames.extend_from_slice(&[1; 100]);
    frames.extend_from_slice(&[9, 0, 0, 0, 0]);
    conn.write_all(&frames).unwrap();
    let mut answer = String::new();
    answers.read_line(&mut answer).unwrap();
    assert!(answer.contains("unknown frame kind 9"), "{answer}");

    let after = json(&d, &["feed", "info", &key, "--json"]);
    assert_eq!(after, before, "the feed is as it was");
    let list = json(&d, &["feed", "list", "--json"]);
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "no feed was created: {list}"
    );
    daemon.stop();
}

/// `feed list` of more feeds than one page of the daemon's answer (1,000): the daemon
/// sends pages as it reads them, and the command prints what it always printed, every
/// feed once, in key order (one JSON array with `--json`, else a line per feed).
#[test]
fn feed_list_of_more_than_a_page_comes_whole_and_in_order() {
    const FEEDS: usize = 2_500;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::create_dir(&data).unwrap();
    // The bench's writer makes the feeds directly in the data directory (1 block of 100
    // bytes each); it exits at the end of its standard input.
    let made = replic8()
        .arg("bench-peer")
        .arg("--dir")
        .arg(&data)
        .args(["--feeds", &FEEDS.to_string()])
        .args(["--bytes-per-feed", "100", "--block-size", "100"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let daemon = start_daemon(&data, None);
    let list = json(&data, &["feed", "list", "--json"]);
    let feeds = list.as_array().unwrap_or_else(|| panic!("not an array"));
    let keys: Vec<&str> = feeds.iter().map(|f| f["key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), FEEDS);
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "in key order, each once"
    );
    for f in feeds {
        assert_eq!(
            (&f["length"], &f["stored"], &f["stored_bytes"]),
            (&1.into(), &1.into(), &100.into()),
            "{f}"
        );
    }
    let text = String::from_utf8(run(&data, &["feed", "list"])).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), FEEDS);
    for (line, key) in lines.iter().zip(&keys) {
        assert!(line.starts_with(&format!("{key} ")), "{line}");
        assert!(line.contains(" length 1 stored 1 "), "{line}");
    }
    daemon.stop();
}

/// The Prometheus text a daemon started with `--metrics` serves (its ready line names
/// the address).
fn scrape(daemon: &Daemon) -> String {
    use std::io::Read;
    let url = daemon
        .banner
        .split_whitespace()
        .skip_while(|w| *w != "metrics")
        .nth(1)
        .unwrap_or_else(|| panic!("no metrics address in {:?}", daemon.banner));
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A small feed offered in a namespace travels whole on the control stream: `status`
/// counts it on both daemons, under `session_totals` with `--json` and on its `whole`
/// line, and the writer's Prometheus metrics count it with help text.
#[test]
fn status_counts_a_small_feed_sent_and_received_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (a_data, b_data) = (dir.path().join("a"), dir.path().join("b"));
    let mut cmd = replic8();
    private_daemon(&mut cmd, &a_data).args(["--metrics", "127.0.0.1:0"]);
    let a = Daemon::spawn(&mut cmd);
    let (key, data, config) = small_feed_and_peer_config(dir.path(), &a_data, &a);
    run(&a_data, &["share", "notes", &key]);
    let none = json(&a_data, &["status", "--json"])["session_totals"].clone();
    assert_eq!(
        none,
        serde_json::json!({"feeds_sent_whole": 0, "feeds_received_whole": 0})
    );

    let b = start_daemon(&b_data, Some(&config));
    run(&b_data, &["namespace", "open", "notes", "--accept", "all"]);
    // Any topic: B's static peer is its only lookup answer.
    run(&b_data, &["join", &key, "--topic"]);
    let received = eventually("B's session received the feed whole", || {
        let status = json(&b_data, &["status", "--json"]);
        (status["session_totals"]["feeds_received_whole"] == 1).then_some(status)
    });
    assert_eq!(received["feed_store"]["streams"], 0, "{received}");
    assert_eq!(run(&b_data, &["feed", "cat", &key]), data, "copy equal");
    let sent = json(&a_data, &["status", "--json"]);
    assert_eq!(sent["session_totals"]["feeds_sent_whole"], 1, "{sent}");
    let metrics = scrape(&a);
    for line in [
        "# HELP replic8_feeds_sent_whole_total Small feeds sent whole",
        "# TYPE replic8_feeds_sent_whole_total counter\nreplic8_feeds_sent_whole_total 1\n",
        "# HELP replic8_feeds_received_whole_total Small feeds received whole",
        "\nreplic8_feeds_received_whole_total 0\n",
    ] {
        assert!(metrics.contains(line), "{line:?} missing in:\n{metrics}");
    }
    let text = String::from_utf8(run(&b_data, &["status"])).unwrap();
    assert!(
        text.contains("since start: 0 feed(s) sent whole, 1 received whole"),
        "{text}"
    );
    b.stop();
    a.stop();
}

/// `feed get` of a small feed takes it whole, once: the writer sends it whole and the
/// reader stores it although `feed get` watches the replica (a watched feed is reopened
/// under its watchers after the write), so no stream sends it again. The get still ends
/// in sync with the verified copy.
#[test]
fn feed_get_of_a_small_feed_receives_it_whole_once() {
    let dir = tempfile::tempdir().unwrap();
    let (a_data, b_data) = (dir.path().join("a"), dir.path().join("b"));
    let a = start_daemon(&a_data, None);
    let (key, data, config) = small_feed_and_peer_config(dir.path(), &a_data, &a);
    let b = start_daemon(&b_data, Some(&config));

    let (status, got) =
        Running::start(&b_data, &["feed", "get", &key]).finish("feed get of a small feed");
    assert!(status.success(), "{status}");
    let lines = json_lines(&got);
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "synced", "{lines:?}");
    assert_eq!(
        (&last["length"], &last["stored"], &last["byte_length"]),
        (&3.into(), &3.into(), &10_000.into()),
        "{lines:?}"
    );
    assert_eq!(run(&b_data, &["feed", "cat", &key]), data, "copy equal");

    // Received whole once, and no stream: the bytes came in once.
    let received = eventually("B's session counted the feed received whole", || {
        let status = json(&b_data, &["status", "--json"]);
        (status["session_totals"]["feeds_received_whole"] == 1).then_some(status)
    });
    let store = &received["feed_store"];
    assert_eq!(
        (&store["streams"], &store["blocks_in"], &store["bytes_in"]),
        (&0.into(), &3.into(), &10_000.into()),
        "{received}"
    );
    let sent = json(&a_data, &["status", "--json"]);
    assert_eq!(sent["session_totals"]["feeds_sent_whole"], 1, "{sent}");
    assert_eq!(
        (
            &sent["feed_store"]["streams"],
            &sent["feed_store"]["bytes_out"]
        ),
        (&0.into(), &10_000.into()),
        "{sent}"
    );
    b.stop();
    a.stop();
}
