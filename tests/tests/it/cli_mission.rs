//! The mission through the `replic8` command only: three daemons on loopback, a secret
//! namespace opened from the command line and from a config file, a header policy, a
//! wrong secret, forwarding through the middle node, a manual accept, a restart.
//!
//! Nothing here calls the library but to find the binary; every step is a command a
//! user would type, and every wait polls a command's output with a generous deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use replic8_tests::daemon::Daemon;
use serde_json::Value;

/// A feed on `node` holding `blocks` blocks of distinct bytes; its key.
fn feed_with(node: &Daemon, dir: &Path, blocks: u8) -> (String, Vec<u8>) {
    let key = node.run(&["feed", "new"]).trim().to_owned();
    let bytes: Vec<u8> = (0..u32::from(blocks) * 1000)
        .map(|i| (i % 251) as u8 ^ blocks)
        .collect();
    let file = dir.join(format!("{key}.bin"));
    std::fs::write(&file, &bytes).unwrap();
    node.run(&[
        "feed",
        "append",
        &key,
        file.to_str().unwrap(),
        "--block-size",
        "1000",
    ]);
    (key, bytes)
}

/// A config with `peer` as static peer and extra TOML.
fn config(dir: &Path, name: &str, peer: SocketAddr, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!("[discovery]\nstatic_peers = [\"{peer}\"]\n{extra}"),
    )
    .unwrap();
    path
}

const TOPIC: &str = "7777777777777777777777777777777777777777777777777777777777777777";

#[test]
fn three_daemons_do_the_mission_through_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);

    // A: the writer. Two feeds with headers in the secret namespace `team`, one in the
    // named namespace `inbox`.
    let a = Daemon::start("A", &path("a"), None);
    let secret = a.run(&["namespace", "new-secret"]);
    std::fs::write(path("team.secret"), &secret).unwrap();
    let wrong = a.run(&["namespace", "new-secret"]);
    std::fs::write(path("wrong.secret"), &wrong).unwrap();
    let (photo, photo_bytes) = feed_with(&a, dir.path(), 3);
    let (video, _) = feed_with(&a, dir.path(), 2);
    let (note, note_bytes) = feed_with(&a, dir.path(), 4);
    // And one never shared in a named namespace: whoever knows its key may read it.
    let (public, public_bytes) = feed_with(&a, dir.path(), 2);
    let team_secret = path("team.secret");
    let secret_file = team_secret.to_str().unwrap();
    a.run(&["namespace", "open", "team", "--secret-file", secret_file]);
    a.run(&["share", "team", &photo, "--header", "kind=photo"]);
    a.run(&["share", "team", &video, "--header", "kind=video"]);
    a.run(&["share", "inbox", &note, "--header", "title=note"]);
    let listed = a.run(&["namespace", "list", "--json"]);
    assert!(!listed.contains(secret.trim()), "list never shows a secret");

    // B: connected to A first, then opens `team` with the secret and a header policy:
    // a namespace opened while the session is up gets the offers A made.
    let b_config = config(dir.path(), "b", a.quic, "");
    let b = Daemon::start("B", &path("b"), Some(&b_config));
    b.run(&["join", "--topic", TOPIC]);
    b.wait("a session with A", |b| {
        b.json(&["peers", "--json"]).as_array().unwrap().len() == 1
    });
    // A failed open changes nothing: an unreadable secret file.
    let err = b.fails(&[
        "namespace",
        "open",
        "team",
        "--secret-file",
        path("missing.secret").to_str().unwrap(),
    ]);
    assert!(err.contains("missing.secret"), "{err}");
    assert_eq!(
        b.json(&["namespace", "list", "--json"]),
        Value::Array(vec![])
    );
    b.run(&[
        "namespace",
        "open",
        "team",
        "--secret-file",
        secret_file,
        "--accept-header",
        "kind=photo",
    ]);
    b.wait("the photo feed from A", |b| b.length(&photo) == Some(3));
    b.wait("the video feed refused by the header policy", |b| {
        b.decision("team", &video).as_deref() == Some("refused-policy")
    });
    assert_eq!(b.decision("team", &photo).as_deref(), Some("accepted"));
    assert_eq!(b.length(&video), None, "a refused feed is not held");

    // A manual namespace holds the offer until `replic8 accept`; `offers --follow`
    // shows it as it happens.
    let follow = b.follow(&["offers", "--follow", "--json"]);
    b.run(&["namespace", "open", "inbox", "--accept", "manual"]);
    follow.wait_line("the note waiting, followed", |o| {
        o["feed"] == note.as_str() && o["decision"] == "waiting"
    });
    drop(follow);
    b.wait("the note waiting for a decision", |b| {
        b.decision("inbox", &note).as_deref() == Some("waiting")
    });
    assert_eq!(b.length(&note), None, "a waiting feed is not created");
    let err = b.fails(&["accept", "team", &note]);
    assert!(err.contains("by hand"), "{err}");
    b.run(&["accept", "inbox", &note]);
    b.wait("the accepted note from A", |b| b.length(&note) == Some(4));
    assert_eq!(b.decision("inbox", &note).as_deref(), Some("accepted"));

    // C: connected to B only; `inbox` from its config file, `team` with a wrong secret.
    let c_config = config(
        dir.path(),
        "c",
        b.quic,
        "[[namespace]]\nname = \"inbox\"\naccept = \"all\"\n",
    );
    let c = Daemon::start("C", &path("c"), Some(&c_config));
    let wrong_file = path("wrong.secret");
    c.run(&[
        "namespace",
        "open",
        "team",
        "--secret-file",
        wrong_file.to_str().unwrap(),
        "--accept",
        "all",
    ]);
    c.run(&["join", "--topic", TOPIC]);
    // The note, forwarded by B, proves that the session's namespaces were matched.
    c.wait("the note forwarded by B", |c| c.length(&note) == Some(4));
    assert!(
        c.offers().iter().all(|o| o["namespace"] != "team"),
        "a wrong secret gets no offer: {:?}",
        c.offers()
    );
    assert_eq!(c.length(&photo), None);
    // The right secret replaces the wrong one on the running session.
    c.run(&[
        "namespace",
        "open",
        "team",
        "--secret-file",
        secret_file,
        "--accept",
        "all",
    ]);
    c.wait("the photo feed forwarded by B", |c| {
        c.length(&photo) == Some(3)
    });
    assert_eq!(c.length(&video), None, "B never held the video feed");
    let peers = c.json(&["peers", "--json"]);
    assert_eq!(
        peers.as_array().unwrap().len(),
        1,
        "C knows only B: {peers}"
    );
    let listed = c.json(&["namespace", "list", "--json"]);
    let origins: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["origin"].as_str().unwrap()))
        .collect();
    assert_eq!(origins, [("inbox", "config"), ("team", "opened")]);

    // Restarting B keeps its namespaces (secret and policy) and its replicas.
    let b_data = b.data().to_owned();
    let b = b.stop().start();
    let listed = b.json(&["namespace", "list", "--json"]);
    let team = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "team")
        .unwrap_or_else(|| panic!("team after the restart: {listed}"));
    assert_eq!(team["secret"], true);
    assert_eq!(team["policy"]["accept"], "all");
    assert_eq!(team["policy"]["accept_headers"]["kind"], "photo");
    let state = std::fs::read_to_string(b_data.join("state.json")).unwrap();
    assert!(state.contains(secret.trim()), "the secret is persisted");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(b_data.join("state.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    b.wait("the photo feed after the restart", |b| {
        b.length(&photo) == Some(3)
    });

    // A feed known out of band, by its key alone, comes with `feed get` (knowing the key
    // is the read capability); it exits once in sync.
    let progress = b.run(&["feed", "get", &public, "--json"]);
    assert!(
        progress.contains(r#""in_sync":true"#),
        "feed get: {progress}"
    );
    assert_eq!(b.length(&public), Some(2));

    // Every copy reads back equal.
    for (node, feed, bytes) in [
        (&b, &photo, &photo_bytes),
        (&c, &photo, &photo_bytes),
        (&b, &note, &note_bytes),
        (&c, &note, &note_bytes),
        (&b, &public, &public_bytes),
    ] {
        assert!(node.cat(feed) == *bytes, "{}: {feed} differs", node.name());
    }
    assert!(a.cat(&photo) == photo_bytes);

    // Closing a namespace forgets it (and its secret) over a restart.
    c.run(&["namespace", "close", "team"]);
    let err = c.fails(&["namespace", "close", "team"]);
    assert!(err.contains("not open"), "{err}");
    let state = std::fs::read_to_string(path("c").join("state.json")).unwrap();
    assert!(
        !state.contains(secret.trim()),
        "a closed namespace's secret is gone"
    );

    c.stop();
    b.stop();
    a.stop();
}
