//! The `replic8` binary, spawned as a user would run it.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn replic8() -> Command {
    Command::new(env!("CARGO_BIN_EXE_replic8"))
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
    let expected = replic8_node::import::hash_only(&data[..], 65536).unwrap();
    assert_eq!(v["tree_hash"], expected.tree_hash.as_str());
    assert_eq!(v["length"], 5);
    assert_eq!(v["bytes"], 300_000);
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
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["blocks"], 64, "{v}");
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{v}");
    for reader in &nodes[1..] {
        assert!(reader["bytes_in"].as_u64().unwrap() >= 1 << 20, "{v}");
        assert!(reader["peers"].as_u64().unwrap() >= 1, "{v}");
    }
}

/// A daemon spawned as a user would, on loopback with a private DHT.
struct Daemon {
    child: std::process::Child,
}

impl Daemon {
    fn start(data: &std::path::Path, bootstrap: &[String]) -> Daemon {
        use std::io::BufRead;
        let mut cmd = replic8();
        cmd.args(["daemon", "--listen", "127.0.0.1:0", "--no-lan"])
            .arg("--data-dir")
            .arg(data)
            .stderr(std::process::Stdio::piped());
        for b in bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        let mut child = cmd.spawn().unwrap();
        // Ready when it prints its banner (the socket is bound before that line).
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        let first = lines.next().unwrap().unwrap();
        assert!(first.starts_with("replic8 daemon: key "), "{first}");
        assert!(first.contains(" dht "), "the DHT addresses: {first}");
        std::thread::spawn(move || for _ in lines {});
        Daemon { child }
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "daemon exit: {status}");
    }
}

fn client(data: &std::path::Path, args: &[&str]) -> String {
    let out = replic8()
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn client_commands_drive_a_daemon_and_its_joins_survive_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let testnet = mainline::Testnet::builder(3).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start(&data, &testnet.bootstrap);
    let socket = data.join(replic8_node::control::SOCKET_FILE);
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
    let expected = replic8_node::import::hash_only(&bytes[..], 65536).unwrap();
    assert_eq!(info["length"], 4);
    assert_eq!(info["writable"], true);
    assert_eq!(
        info["tree_hash"],
        expected.tree_hash.as_str(),
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
    assert_eq!(imported["tree_hash"], expected.tree_hash.as_str());
    assert_eq!(imported["length"], 4);

    client(&data, &["share", "docs", &key, "--header", "title=input"]);
    let joined: serde_json::Value =
        serde_json::from_str(&client(&data, &["join", &key, "--json"])).unwrap();
    assert_eq!(
        joined["feed"], true,
        "a held feed's key joins its discovery key"
    );
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
