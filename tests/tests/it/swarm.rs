//! Many peers on one topic: nodes that each dial at most `max_peers_per_topic` of the
//! others still all get a feed by key, through each other.
#![allow(clippy::unwrap_used, missing_docs)]

use replic8_node::{FeedKey, JoinOptions, LimitsSection, NodeEvent, NodeHandle, PeerKey};
use replic8_tests::*;

const READERS: usize = 7;
const CAP: usize = 3;
const BLOCKS: usize = 256;

fn blocks() -> Vec<Vec<u8>> {
    (0..BLOCKS)
        .map(|i| (0..1024).map(|j| (i * 13 + j * 5) as u8).collect())
        .collect()
}

/// A reader's `get_feed` and its wait for the whole feed: the peer it was in sync with
/// first at full length.
async fn get(node: NodeHandle, name: String, feed: FeedKey) -> (NodeHandle, PeerKey) {
    let mut events = node.subscribe();
    node.get_feed(feed).await.unwrap();
    let peer = recv_until(
        &mut events,
        &format!("{name}: the whole feed"),
        |e| match e {
            NodeEvent::FeedSynced {
                peer,
                feed: f,
                length,
            } if *f == feed && *length == BLOCKS as u64 => Some(*peer),
            _ => None,
        },
    )
    .await;
    (node, peer)
}

#[tokio::test]
async fn a_swarm_gets_a_feed_by_key_through_the_per_topic_cap() {
    init_tracing();
    let net = testnet(5);
    let capped = LimitsSection {
        max_peers_per_topic: CAP,
        ..LimitsSection::default()
    };
    // The writer takes at most two peers at once: most readers must get the feed from
    // other readers.
    let writer = loopback_node(&net)
        .limits(LimitsSection {
            max_peers: 2,
            reserved_outbound: 1,
            ..capped.clone()
        })
        .spawn()
        .await
        .unwrap();
    let feed = writer.create_feed().await.unwrap();
    let data = blocks();
    writer.append(feed, data.clone()).await.unwrap();
    writer
        .join_feed(feed, JoinOptions::default())
        .await
        .unwrap();

    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(
            loopback_node(&net)
                .limits(capped.clone())
                .spawn()
                .await
                .unwrap(),
        );
    }
    let mut gets = tokio::task::JoinSet::new();
    for (i, r) in readers.iter().enumerate() {
        gets.spawn(get(r.clone(), format!("reader {i}"), feed));
    }
    let mut from_readers = 0;
    while let Some(done) = gets.join_next().await {
        let (reader, peer) = done.unwrap();
        from_readers += usize::from(peer != writer.key());
        let info = reader.open_feed(feed).await.unwrap();
        assert_eq!((info.length, info.stored), (BLOCKS as u64, BLOCKS as u64));
        assert!(
            reader.read(feed, 0..BLOCKS as u64).await.unwrap() == data,
            "{}: the blocks differ from the written ones",
            reader.key().fmt_short()
        );
    }
    assert!(
        from_readers >= 1,
        "every reader was in sync with the writer first, which holds two peers at most"
    );
    // No node dialed more than the cap; none holds more than its limit.
    for node in std::iter::once(&writer).chain(&readers) {
        let peers = node.peers().await.unwrap();
        let dialed = peers
            .iter()
            .filter(|p| p.initiator == replic8_connmgr::Initiator::Local)
            .count();
        assert!(
            dialed <= CAP,
            "{} dialed {dialed} peers for one topic: {peers:?}",
            node.key().fmt_short()
        );
    }
    assert!(writer.peers().await.unwrap().len() <= 2);
    for node in std::iter::once(&writer).chain(&readers) {
        node.close().await;
    }
}
