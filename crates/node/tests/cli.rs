//! The `replic8` binary, spawned as a user would run it.

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
