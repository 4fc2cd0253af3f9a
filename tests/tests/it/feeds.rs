//! Feeds end to end between nodes on loopback with a private Mainline DHT: a feed written
//! on one node, shared in a namespace with headers, discovered by its discovery key,
//! accepted, replicated verified and live, and resumed after a restart.
#![allow(clippy::unwrap_used, missing_docs)]

use replic8_node::{FeedKey, Headers, JoinOptions, NodeEvent, NodeHandle};
use replic8_tests::*;

fn blocks(n: usize, seed: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| (0..1024).map(|j| (i * 31 + j * 7) as u8 ^ seed).collect())
        .collect()
}

fn headers(title: &str) -> Headers {
    let mut h = Headers::new();
    h.insert("title", title.as_bytes().to_vec()).unwrap();
    h
}

/// Waits until `node` reports `feed` in sync with someone at `length`.
async fn wait_synced(
    events: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
    node: &str,
    feed: FeedKey,
    length: u64,
) {
    recv_until(
        events,
        &format!("{node}: feed {} synced at {length}", feed.fmt_short()),
        |e| {
            matches!(e, NodeEvent::FeedSynced { feed: f, length: l, .. } if *f == feed && *l == length)
                .then_some(())
        },
    )
    .await
}

/// A node on `dir` with no discovery (loopback, no DHT, no LAN).
async fn offline_node(dir: &std::path::Path) -> NodeHandle {
    replic8_node::Node::builder()
        .data_dir(dir)
        .listen(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .dht(false)
        .lan(false)
        .spawn()
        .await
        .unwrap()
}

async fn verify_copy(node: &NodeHandle, feed: FeedKey, data: &[Vec<u8>]) {
    let info = node.open_feed(feed).await.unwrap();
    assert_eq!(info.length, data.len() as u64);
    assert_eq!(info.stored, data.len() as u64);
    assert!(!info.writable, "a replica cannot append");
    let got = node.read(feed, 0..data.len() as u64).await.unwrap();
    assert!(
        got == data,
        "replicated blocks differ from the written ones"
    );
}

#[tokio::test]
async fn a_shared_feed_is_discovered_accepted_and_replicated_verified_and_live() {
    init_tracing();
    let net = testnet(5);
    let a = loopback_node(&net).spawn().await.unwrap();
    let b = loopback_node(&net).spawn().await.unwrap();
    let mut b_events = b.subscribe();

    let feed = a.create_feed().await.unwrap();
    let data = blocks(300, 1);
    assert_eq!(a.append(feed, data.clone()).await.unwrap(), 300);
    a.share("photos", feed, headers("holiday")).await.unwrap();
    b.open_namespace("photos", None, replic8_node::NamespacePolicy::accept_all())
        .await
        .unwrap();

    a.join_feed(feed, JoinOptions::default()).await.unwrap();
    b.join_feed(feed, JoinOptions::default()).await.unwrap();

    let a_key = a.key();
    let offered = recv_until(&mut b_events, "b: offer of the feed", |e| match e {
        NodeEvent::Offered {
            peer,
            namespace,
            feeds,
        } if *peer == a_key => Some((namespace.clone(), feeds.clone())),
        _ => None,
    })
    .await;
    assert_eq!(
        offered,
        ("photos".to_string(), vec![(feed, headers("holiday"))])
    );
    wait_synced(&mut b_events, "b", feed, 300).await;
    verify_copy(&b, feed, &data).await;
    assert!(b.counters().blocks_verified.get() >= 300);

    // Live: a new block on a reaches b.
    let mut follow = b.subscribe_feed(feed).await.unwrap();
    a.append(feed, vec![b"one more".to_vec()]).await.unwrap();
    tokio::time::timeout(
        GUARD,
        follow.wait_for(|s| s.length == 301 && s.stored == 301),
    )
    .await
    .expect("b follows a's append")
    .unwrap();
    assert_eq!(
        b.read(feed, 300..301).await.unwrap(),
        vec![b"one more".to_vec()]
    );

    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn a_restarted_node_shares_its_feeds_again() {
    init_tracing();
    let net = testnet(5);
    let dir = tempfile::tempdir().unwrap();
    let data = blocks(50, 2);
    let feed = {
        let a = loopback_node(&net)
            .data_dir(dir.path())
            .spawn()
            .await
            .unwrap();
        let feed = a.create_feed().await.unwrap();
        a.append(feed, data.clone()).await.unwrap();
        a.share("docs", feed, headers("manual")).await.unwrap();
        a.join_feed(feed, JoinOptions::default()).await.unwrap();
        a.close().await;
        feed
    };

    // c announces the feed's topic first; the restarted a finds it, connects and offers
    // the feed it shared before the restart, from disk, without being asked again.
    let c = loopback_node(&net).spawn().await.unwrap();
    let mut c_events = c.subscribe();
    c.open_namespace("docs", None, replic8_node::NamespacePolicy::accept_all())
        .await
        .unwrap();
    c.join_feed(
        feed,
        JoinOptions {
            announce: true,
            lookup: false,
        },
    )
    .await
    .unwrap();
    let a = loopback_node(&net)
        .data_dir(dir.path())
        .spawn()
        .await
        .unwrap();
    let state = a.persisted().await;
    assert_eq!((state.joins.len(), state.shares.len()), (1, 1));
    assert!(a.open_feed(feed).await.unwrap().writable);

    wait_synced(&mut c_events, "c", feed, 50).await;
    verify_copy(&c, feed, &data).await;
    a.close().await;
    c.close().await;
}

#[tokio::test]
async fn a_restarted_writer_is_found_again_and_its_new_blocks_reach_the_reader() {
    init_tracing();
    let net = testnet(5);
    let dir = tempfile::tempdir().unwrap();
    let writer = || loopback_node(&net).data_dir(dir.path());
    let data = blocks(400, 3);
    let w = writer().spawn().await.unwrap();
    let feed = w.create_feed().await.unwrap();
    w.append(feed, data[..200].to_vec()).await.unwrap();
    w.share("log", feed, headers("log")).await.unwrap();
    w.join_feed(feed, JoinOptions::default()).await.unwrap();

    let r = loopback_node(&net).spawn().await.unwrap();
    let mut r_events = r.subscribe();
    r.open_namespace("log", None, replic8_node::NamespacePolicy::accept_all())
        .await
        .unwrap();
    r.join_feed(feed, JoinOptions::default()).await.unwrap();
    wait_synced(&mut r_events, "r: first half", feed, 200).await;
    let w_key = w.key();
    w.close().await;
    recv_until(&mut r_events, "r: the writer goes down", |e| {
        matches!(e, NodeEvent::PeerDown { key, .. } if *key == w_key).then_some(())
    })
    .await;

    // Restarted from its directory, the writer resumes its join and share, finds the
    // reader again, and what it appends now reaches the reader, verified.
    let w = writer().spawn().await.unwrap();
    assert_eq!(w.key(), w_key);
    wait_peer_up(&mut r_events, "r: the restarted writer", &w).await;
    w.append(feed, data[200..].to_vec()).await.unwrap();
    wait_synced(&mut r_events, "r: second half", feed, 400).await;
    verify_copy(&r, feed, &data).await;
    w.close().await;
    r.close().await;
}

/// A share of a feed the node does not hold fails and changes nothing: the namespace it
/// named is neither persisted nor served (before, the namespace was registered and
/// persisted although the share failed).
#[tokio::test]
async fn a_share_of_a_feed_not_held_fails_and_changes_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let node = offline_node(dir.path()).await;
    let unknown = FeedKey([7; 32]);
    let err = node
        .share("photos", unknown, headers("none"))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    let state = replic8_node::persist::PersistedState::load(dir.path()).unwrap();
    assert!(state.namespaces.is_empty(), "{state:?}");
    assert!(state.shares.is_empty(), "{state:?}");
    node.close().await;
}

/// Appends prepared ahead through the node (as the daemon's `feed append` does) land in
/// order; one that another append overtook goes after it, and says so by its length.
#[tokio::test]
async fn appends_prepared_ahead_land_in_order_and_an_overtaken_one_goes_after() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let node = offline_node(dir.path()).await;
    let feed = node.create_feed().await.unwrap();
    let (a, b, c) = (blocks(3, 1), blocks(2, 2), blocks(4, 3));
    let mut preparer = node.append_preparer(feed).await.unwrap();
    let first = preparer.prepare(a.clone()).unwrap();
    let second = preparer.prepare(b.clone()).unwrap();
    assert_eq!((first.end(), second.end()), (3, 5));
    assert_eq!(node.append_prepared(feed, first).await.unwrap(), 3);
    // Another append comes between: the second goes after it, hashed again.
    node.append(feed, c.clone()).await.unwrap();
    assert_eq!(node.append_prepared(feed, second).await.unwrap(), 9);
    let got = node.read(feed, 0..9).await.unwrap();
    assert!(got == [a, c, b].concat(), "in the order they were written");
    // A feed not held here has no preparer: one line says so.
    let other = FeedKey([7; 32]);
    let err = node.append_preparer(other).await.unwrap_err();
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    node.close().await;
}

/// A namespace opened while a session is up gets the offers its peer made in it: the
/// reader opens "late" only after it is connected to the writer, once as the dialer
/// and once as the acceptor of the connection (before, such a namespace never got the
/// offers its peer had already made, until a restart).
#[tokio::test]
async fn a_namespace_opened_while_connected_gets_the_offers_already_made() {
    init_tracing();
    for reader_dials in [true, false] {
        let node = || {
            replic8_node::Node::builder()
                .in_memory()
                .listen(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
                .dht(false)
                .lan(false)
                .spawn()
        };
        let (writer, reader) = (node().await.unwrap(), node().await.unwrap());
        let feed = writer.create_feed().await.unwrap();
        let data = blocks(10, 3);
        writer.append(feed, data.clone()).await.unwrap();
        writer.share("late", feed, headers("late")).await.unwrap();
        let mut events = reader.subscribe();
        let (dialer, acceptor) = if reader_dials {
            (&reader, &writer)
        } else {
            (&writer, &reader)
        };
        dialer
            .connect(acceptor.local_addr(), Some(acceptor.key()))
            .await
            .unwrap();
        let writer_key = writer.key();
        recv_until(&mut events, "reader: session with the writer up", |e| {
            matches!(e, NodeEvent::SessionUp { peer } if *peer == writer_key).then_some(())
        })
        .await;
        reader
            .open_namespace("late", None, replic8_node::NamespacePolicy::accept_all())
            .await
            .unwrap();
        wait_synced(&mut events, "reader", feed, 10).await;
        verify_copy(&reader, feed, &data).await;
        reader.close().await;
        writer.close().await;
    }
}
