//! The `replic8` binary, spawned as a user would run it.
#![allow(clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::support;
use support::{private_daemon, replic8, run, Daemon, Running};

/// The binary run as `uid` (and its gid). The build directory may sit in a directory
/// only we can enter (a clone in a `mktemp -d`), so another uid runs a copy of the
/// binary placed in a directory every user can enter. The copy lives as long as the
/// returned directory (a process already started from it keeps running after).
fn replic8_as(uid: u32) -> (tempfile::TempDir, Command) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("replic8-bin")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("replic8");
    // Copied by `cp`, not by this process: a file open for writing here would be
    // inherited by a child another test forks meanwhile, and running the copy while
    // that child holds it fails with "Text file busy" (ETXTBSY).
    let copied = Command::new("cp")
        .arg(env!("CARGO_BIN_EXE_replic8"))
        .arg(&bin)
        .status()
        .unwrap();
    assert!(copied.success(), "cp of the binary: {copied}");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new(bin);
    cmd.uid(uid).gid(uid);
    (dir, cmd)
}

#[test]
fn only_hash_prints_json_with_the_tree_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let out = replic8()
        .args(["feed", "import"])
        .arg(&path)
        .args(["--block-size", "65536", "--only-hash", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected = support::tree_hash(&data, 65536);
    assert_eq!(v["tree_hash"], expected.as_str());
    assert_eq!(v["length"], 5);
    assert_eq!(v["bytes"], 300_000);
}

#[test]
fn namespace_new_secret_prints_32_random_bytes_in_hex() {
    let secret = |_| {
        let out = replic8()
            .args(["namespace", "new-secret"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let line = text.trim_end().to_owned();
        assert_eq!(text, format!("{line}\n"), "one line");
        assert_eq!(line.len(), 64, "{line}");
        assert!(line.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
        line
    };
    let (a, b) = (secret(0), secret(1));
    assert_ne!(a, b, "each secret is new");
}

/// A log that goes to a pipe or a file carries no colour codes (before, every line of a
/// redirected daemon log was wrapped in ANSI escapes).
#[test]
fn a_redirected_log_has_no_colour_codes() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = replic8()
        .args(["daemon", "--listen", "127.0.0.1:0", "--no-dht", "--no-lan"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let ready = line.starts_with("replic8 daemon: key ");
        seen.push(line);
        if ready {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.len() > 1, "info lines before the ready line: {seen:?}");
    assert!(seen.iter().all(|l| !l.contains('\x1b')), "{seen:?}");
}

#[test]
fn errors_are_one_line_with_a_nonzero_exit() {
    for args in [
        &["feed", "import", "/nonexistent/file", "--only-hash"][..],
        &["feed", "import", "-", "--only-hash", "--block-size", "0"][..],
    ] {
        let out = replic8().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("replic8: "), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn demo_replicates_to_two_readers_verified_and_exits_0() {
    let out = replic8()
        .args(["demo", "--size-mb", "1", "--block-size", "16384", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let steps: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let kind = |v: &serde_json::Value| v["step"].as_str().unwrap_or_default().to_owned();
    assert!(steps.iter().all(|v| !kind(v).is_empty()), "{stdout}");
    assert_eq!(kind(&steps[0]), "dht", "{stdout}");
    assert!(steps[0]["bootstrap"][0]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    // The summary, last, with the fields `--json` always had.
    let v = steps.last().unwrap();
    assert_eq!(kind(v), "summary", "{stdout}");
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["blocks"], 64, "{v}");
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{v}");
    for reader in &nodes[1..] {
        assert!(reader["bytes_in"].as_u64().unwrap() >= 1 << 20, "{v}");
        assert!(reader["peers"].as_u64().unwrap() >= 1, "{v}");
    }
    let feed = v["feed"].as_str().unwrap();
    let refused = v["refused_feed"].as_str().unwrap();

    // The story: reader-1 sees both feeds offered with their headers, its policy
    // refuses the videos feed, reader-2 gets the photos feed forwarded by reader-1, and
    // both copies are verified.
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        steps
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("no such step in:\n{stdout}"))
    };
    let offer = find(&|s| {
        kind(s) == "offer"
            && s["node"] == "reader-1"
            && s["peer"] == "writer"
            && s["feeds"].as_array().is_some_and(|f| {
                f.iter()
                    .any(|f| f["feed"] == refused && f["headers"]["type"] == "videos")
            })
    });
    let refusal = find(&|s| {
        kind(s) == "decision"
            && s["node"] == "reader-1"
            && s["accepted"] == false
            && s["feed"]["feed"] == refused
    });
    let forwarded = find(&|s| {
        kind(s) == "accepted"
            && s["node"] == "reader-2"
            && s["peer"] == "reader-1"
            && s["forwarded"] == true
            && s["feed"] == feed
    });
    let synced = find(&|s| kind(s) == "synced" && s["node"] == "reader-2");
    let verified_2 = find(&|s| kind(s) == "verified" && s["node"] == "reader-2");
    find(&|s| kind(s) == "verified" && s["node"] == "reader-1");
    assert!(
        offer < refusal && forwarded < synced && synced < verified_2,
        "{stdout}"
    );
    assert_eq!(
        steps[verified_2]["peers"],
        serde_json::json!(["reader-1"]),
        "reader-2 never connected to the writer: {stdout}"
    );
    assert_eq!(steps[verified_2]["tree_hash"], v["tree_hash"], "{stdout}");
}

/// Daemons spawned as a user would.
trait Start {
    fn start(data: &std::path::Path, bootstrap: &[String]) -> Daemon;
    fn start_private(data: &std::path::Path, uid: Option<u32>) -> Daemon;
}

impl Start for Daemon {
    /// On loopback with a private DHT.
    fn start(data: &std::path::Path, bootstrap: &[String]) -> Daemon {
        let mut cmd = replic8();
        cmd.args(["daemon", "--listen", "127.0.0.1:0", "--no-lan"])
            .arg("--data-dir")
            .arg(data)
            .stderr(std::process::Stdio::piped());
        for b in bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        // Ready when it prints its banner (the socket is bound before that line).
        let daemon = Daemon::spawn(&mut cmd);
        assert!(
            daemon.banner.contains(" dht "),
            "the DHT addresses: {}",
            daemon.banner
        );
        daemon
    }

    /// Without DHT or LAN on `data`, run as `uid` (and its gid) if given.
    fn start_private(data: &std::path::Path, uid: Option<u32>) -> Daemon {
        // The copy may go once the daemon has started from it.
        let (_copy, mut cmd) = match uid {
            Some(uid) => {
                let (copy, cmd) = replic8_as(uid);
                (Some(copy), cmd)
            }
            None => (None, replic8()),
        };
        Daemon::spawn(private_daemon(&mut cmd, data))
    }
}

fn client(data: &std::path::Path, args: &[&str]) -> String {
    String::from_utf8(run(data, args)).unwrap()
}

#[test]
fn client_commands_drive_a_daemon_and_its_joins_survive_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let testnet = replic8_node::KrpcTestnet::new(3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start(&data, &testnet.bootstrap);
    let socket = support::socket_path(&data);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode");

    let key = client(&data, &["feed", "new"]).trim().to_owned();
    assert_eq!(key.len(), 64, "{key}");
    let file = dir.path().join("input.bin");
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let length = client(
        &data,
        &[
            "feed",
            "append",
            &key,
            file.to_str().unwrap(),
            "--block-size",
            "65536",
        ],
    );
    assert_eq!(length.trim(), "4");
    let cat = replic8()
        .arg("--data-dir")
        .arg(&data)
        .args(["feed", "cat", &key])
        .output()
        .unwrap();
    assert!(cat.stdout == bytes, "feed cat returns what was appended");
    let part = replic8()
        .arg("--data-dir")
        .arg(&data)
        .args(["feed", "cat", &key, "--start", "1", "--end", "3"])
        .output()
        .unwrap();
    assert!(
        part.stdout == bytes[65536..3 * 65536],
        "feed cat of blocks 1..3"
    );
    let info: serde_json::Value =
        serde_json::from_str(&client(&data, &["feed", "info", &key, "--json"])).unwrap();
    let expected = support::tree_hash(&bytes, 65536);
    assert_eq!(info["length"], 4);
    assert_eq!(info["writable"], true);
    assert_eq!(
        info["tree_hash"],
        expected.as_str(),
        "same tree hash as --only-hash"
    );

    let imported: serde_json::Value = serde_json::from_str(&client(
        &data,
        &[
            "feed",
            "import",
            file.to_str().unwrap(),
            "--block-size",
            "65536",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(imported["tree_hash"], expected.as_str());
    assert_eq!(imported["length"], 4);

    client(&data, &["share", "docs", &key, "--header", "title=input"]);
    let joined: serde_json::Value =
        serde_json::from_str(&client(&data, &["join", &key, "--json"])).unwrap();
    assert_eq!(
        joined["feed"], true,
        "a held feed's key joins its discovery key"
    );
    // A key not held is refused with a hint, unless it is meant as a topic.
    let unknown = "ab".repeat(32);
    let refused = client_refused(&data, &["join", &unknown]);
    assert!(refused.contains("add --topic"), "{refused}");
    let as_topic: serde_json::Value =
        serde_json::from_str(&client(&data, &["join", &unknown, "--topic", "--json"])).unwrap();
    assert_eq!(as_topic["feed"], false);
    assert_eq!(as_topic["topic"], unknown.as_str());
    client(&data, &["leave", &unknown]);
    let peers: serde_json::Value =
        serde_json::from_str(&client(&data, &["peers", "--json"])).unwrap();
    assert_eq!(peers, serde_json::json!([]));
    // The DHT node's id and counters; the id is kept in the data directory.
    let status: serde_json::Value =
        serde_json::from_str(&client(&data, &["status", "--json"])).unwrap();
    let dht_id = status["dht"]["id"].as_str().unwrap().to_owned();
    assert_eq!(dht_id.len(), 40, "{status}");
    assert!(
        status["dht"]["queries_out"].as_u64().unwrap() > 0,
        "{status}"
    );
    daemon.stop();
    assert!(!socket.exists(), "socket removed on exit");

    // A command without a daemon: one line, non-zero exit.
    let out = replic8()
        .arg("--data-dir")
        .arg(&data)
        .args(["status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no daemon"), "{err}");

    // Restarted, the daemon announces the same topic and still has the feed.
    let daemon = Daemon::start(&data, &testnet.bootstrap);
    let status: serde_json::Value =
        serde_json::from_str(&client(&data, &["status", "--json"])).unwrap();
    let topics = status["topics"].as_array().unwrap();
    assert_eq!(topics.len(), 1, "{status}");
    assert_eq!(topics[0]["topic"], joined["topic"], "{status}");
    assert_eq!(
        status["dht"]["id"],
        dht_id.as_str(),
        "same DHT node id: {status}"
    );
    let info: serde_json::Value =
        serde_json::from_str(&client(&data, &["feed", "info", &key, "--json"])).unwrap();
    assert_eq!(info["length"], 4);
    daemon.stop();
}

#[test]
fn join_answers_once_joined_and_watch_reports_peers_as_they_arrive() {
    let testnet = replic8_node::KrpcTestnet::new(3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a_data, b_data) = (dir.path().join("a"), dir.path().join("b"));
    let a = Daemon::start(&a_data, &testnet.bootstrap);
    let b = Daemon::start(&b_data, &testnet.bootstrap);
    let topic = "cd".repeat(32);
    let a_key = serde_json::from_str::<serde_json::Value>(&client(&a_data, &["status", "--json"]))
        .unwrap()["key"]
        .clone();

    // A's join answers with the join alone: the first round's outcome is not waited for.
    let joined: serde_json::Value =
        serde_json::from_str(&client(&a_data, &["join", &topic, "--topic", "--json"])).unwrap();
    assert_eq!(joined["event"], "joined", "{joined}");
    assert_eq!(joined["topic"], topic.as_str(), "{joined}");
    assert!(joined.get("peers_found").is_none(), "{joined}");

    // B watches: the join first, then A as it connects and the first round's end (in
    // whichever order they happen).
    let watch = Running::start(&b_data, &["join", &topic, "--topic", "--watch", "--json"]);
    let first = watch.next_line("the watch's first line");
    assert_eq!(first["event"], "joined", "{first}");
    let mut seen_a = false;
    let mut round_done = false;
    while !(seen_a && round_done) {
        let line = watch.next_line("A's connection and the end of B's first round");
        match line["event"].as_str() {
            Some("peer_up") => seen_a |= line["peer"] == a_key,
            Some("lookup_done") => round_done = true,
            _ => {}
        }
    }
    let text = String::from_utf8(run(&b_data, &["join", &topic, "--topic"])).unwrap();
    assert!(text.starts_with("joined "), "{text}");
    drop(watch);
    b.stop();
    a.stop();
}

#[test]
fn bench_cli_append_measures_the_command_against_the_store_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().to_str().unwrap();
    let args = [
        "bench",
        "cli-append",
        "--json",
        "--size",
        "2MiB",
        "--dir",
        tmp,
    ];
    // `run` names a data directory too; the bench makes its own under --dir.
    let rows: Vec<serde_json::Value> = client(&dir.path().join("unused"), &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cli-append", "cli-cat"], "{rows:?}");
    for row in &rows {
        assert_eq!(row["bytes"], 2 << 20, "{row}");
        assert_eq!(row["blocks"], 32, "{row}");
        assert!(
            row["store_append_mb_per_s"].as_f64().unwrap() > 0.0,
            "{row}"
        );
        assert!(row["ratio"].as_f64().unwrap() > 0.0, "{row}");
    }
    // Its temporary directories are gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

// Case 7 of issue 12: the data directory and the control socket belong to the daemon's
// user alone. Each test below fails on the code before it: the daemon used any existing
// directory as it was, bound `control.sock` straight in the data directory and then
// chmod'ed it, and served every uid that could open the socket.

/// The uid tests use as "another user" (`nobody` on Debian).
const OTHER_UID: u32 = 65534;

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Starts `replic8 daemon` on `data` (no DHT, no LAN) and expects it to refuse: its first
/// stderr line is the error (not the ready banner), it exits non-zero, and that line is
/// all it printed. Returns the line.
fn daemon_refuses(data: &std::path::Path) -> String {
    use std::io::Read;
    let mut child = replic8()
        .args(["daemon", "--listen", "127.0.0.1:0", "--no-dht", "--no-lan"])
        .arg("--data-dir")
        .arg(data)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut first = String::new();
    {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(&mut stderr);
        reader.read_line(&mut first).unwrap();
        if first.starts_with("replic8 daemon: key ") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon started on {}: {first}", data.display());
        }
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        assert!(rest.is_empty(), "more than one line: {first}{rest}");
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "daemon exit {status}: {first}");
    assert!(first.starts_with("replic8: "), "{first}");
    first
}

/// Runs a client command on `data`; expects a one-line error and a non-zero exit.
fn client_refused(data: &std::path::Path, args: &[&str]) -> String {
    let out = replic8()
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "{args:?} should fail: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    err
}

#[test]
fn a_data_dir_others_can_write_is_refused_and_left_untouched() {
    use std::os::unix::fs::PermissionsExt;
    for mode in [0o777, 0o770, 0o702, 0o1777] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
        let line = daemon_refuses(&data);
        assert!(
            line.contains("writable by group or others"),
            "mode {mode:o}: {line}"
        );
        assert!(
            line.contains(&format!("chmod 700 {}", data.display())),
            "mode {mode:o}: {line}"
        );
        let err = client_refused(&data, &["feed", "new"]);
        assert!(err.contains("chmod 700"), "mode {mode:o}: {err}");
        assert!(
            entries(&data).is_empty(),
            "mode {mode:o}: {:?}",
            entries(&data)
        );
        assert_eq!(mode_of(&data), mode, "the mode is the user's to fix");
    }
}

#[test]
fn a_data_dir_another_user_owns_is_refused_even_for_root() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&data, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    let me = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    assert_ne!(me, OTHER_UID, "the test must not run as uid {OTHER_UID}");
    let line = daemon_refuses(&data);
    assert!(
        line.contains(&format!("owned by uid {OTHER_UID}, not by uid {me}")),
        "{line}"
    );
    let err = client_refused(&data, &["status"]);
    assert!(err.contains(&format!("owned by uid {OTHER_UID}")), "{err}");
    assert!(entries(&data).is_empty(), "{:?}", entries(&data));
}

#[test]
fn the_control_socket_is_bound_in_a_private_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start_private(&data, None);
    let socket = support::socket_path(&data);
    let run = socket.parent().unwrap();
    assert_eq!(run.parent().unwrap(), data);
    assert_eq!(mode_of(run), 0o700, "run directory mode");
    assert_eq!(
        mode_of(&socket) & 0o177,
        0,
        "socket mode {:o}",
        mode_of(&socket)
    );
    assert!(
        !data.join("control.sock").exists(),
        "no socket directly in the data directory"
    );
    // A client of another uid is refused by its own check of the directory...
    let (_copy, mut cmd) = replic8_as(OTHER_UID);
    let out = cmd
        .arg("--data-dir")
        .arg(&data)
        .arg("status")
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not by uid 65534"), "{err}");
    // ...and the socket cannot be reached by that uid at all: even with the directories
    // above made searchable for it, `run/` is not (`setpriv` is util-linux's).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let seen = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["test", "-e"])
        .arg(&socket)
        .status()
        .unwrap();
    assert!(!seen.success(), "uid 65534 can see {}", socket.display());
    daemon.stop();
}

#[test]
fn the_daemon_refuses_a_connection_from_another_uid() {
    use std::io::{BufRead, Write};
    use std::os::unix::fs::PermissionsExt;
    // The daemon runs as the other uid in a directory it owns; this test process (root,
    // which the directory's mode does not stop) connects to its socket and must be
    // refused by the credentials check alone.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&data, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    let daemon = Daemon::start_private(&data, Some(OTHER_UID));
    let socket = support::socket_path(&data);

    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut line)
        .unwrap();
    let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
    let error = answer["error"].as_str().unwrap_or_else(|| panic!("{line}"));
    assert!(error.contains(&format!("only uid {OTHER_UID}")), "{error}");
    assert!(!line.contains("\"ok\""), "{line}");

    // The daemon's own uid is served.
    let (_copy, mut cmd) = replic8_as(OTHER_UID);
    let out = cmd
        .arg("--data-dir")
        .arg(&data)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status["key"].as_str().is_some(), "{status}");
    daemon.stop();
}

/// A second daemon on a data directory whose daemon runs is refused in one line, and a
/// daemon started right after the previous one got SIGTERM comes up (before, the restart
/// failed with the feed store's lock error, its cause chain printed four times).
#[test]
fn a_second_daemon_is_refused_and_a_restart_right_after_sigterm_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    let first = Daemon::start_private(dir.path(), None);
    let out = replic8()
        .args(["daemon", "--listen", "127.0.0.1:0", "--no-dht", "--no-lan"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("another daemon runs on"), "{err}");
    let term = std::process::Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    // At once, while the first may still be closing.
    let second = Daemon::start_private(dir.path(), None);
    drop(first);
    drop(second);
}
