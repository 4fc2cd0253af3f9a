//! What the reader of `bulk`, `small` and `many-feeds` expects of the writer's feeds:
//! the writer's ready line kept as 80-byte records, the wait until every feed is
//! reported synced, and the check of the replica against the writer's heads.

use std::net::SocketAddr;

use replic8_store::tree::{self, Node as TreeNode};
use serde::Deserialize;
use tokio::sync::broadcast;

use super::replicate::{parse_feed, PeerFeed};
use super::BenchError;
use replic8_node::{FeedKey, NodeEvent, NodeHandle};

/// Blocks per read when the replica is read back.
const READ_BATCH: u64 = 256;
/// How often the reader re-checks the store's counters when it missed events.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(20);

/// What the reader keeps of one [`PeerFeed`]: its fields as bytes, without the hex
/// strings (80 bytes and no allocation of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExpectedFeed {
    /// The feed key.
    pub(crate) key: FeedKey,
    /// Blocks.
    pub(crate) length: u64,
    /// Bytes.
    pub(crate) bytes: u64,
    /// The signed head's tree hash.
    pub(crate) tree_hash: [u8; 32],
}

impl TryFrom<&PeerFeed> for ExpectedFeed {
    type Error = BenchError;

    fn try_from(f: &PeerFeed) -> Result<Self, BenchError> {
        let mut tree_hash = [0u8; 32];
        hex::decode_to_slice(&f.tree_hash, &mut tree_hash)
            .map_err(|_| BenchError::Peer(format!("bad tree hash {:?}", f.tree_hash)))?;
        Ok(ExpectedFeed {
            key: parse_feed(&f.key)?,
            length: f.length,
            bytes: f.bytes,
            tree_hash,
        })
    }
}

/// The feeds a reader waits for and checks, sorted by key, in one allocation. The
/// reader's measured peak includes them: the ready line's [`PeerFeed`]s with their hex
/// strings and a map over them cost ~300 bytes a feed (30 MB at 100,000 feeds), these 80.
#[derive(Debug, Default)]
pub(crate) struct ExpectedFeeds(Vec<ExpectedFeed>);

impl ExpectedFeeds {
    /// The feeds, sorted.
    pub(crate) fn new(mut feeds: Vec<ExpectedFeed>) -> Self {
        feeds.sort_unstable_by_key(|f| f.key.0);
        feeds.shrink_to_fit();
        ExpectedFeeds(feeds)
    }

    /// Where `key` is among the feeds.
    fn position(&self, key: &FeedKey) -> Option<usize> {
        self.0.binary_search_by_key(&key.0, |f| f.key.0).ok()
    }

    /// How many feeds.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The feeds, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &ExpectedFeed> {
        self.0.iter()
    }
}

/// The writer's ready line as the reader keeps it: [`PeerReady`] with its feeds read
/// one at a time into [`ExpectedFeeds`], so the line's strings never all live at once.
#[derive(Debug, Deserialize)]
pub(crate) struct ReaderReady {
    pub(crate) addr: SocketAddr,
    pub(crate) key: String,
    pub(crate) prep_seconds: f64,
    #[serde(deserialize_with = "expected_feeds")]
    pub(crate) feeds: ExpectedFeeds,
}

fn expected_feeds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ExpectedFeeds, D::Error> {
    struct Feeds;
    impl<'de> serde::de::Visitor<'de> for Feeds {
        type Value = Vec<ExpectedFeed>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of feeds")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut feeds = Vec::new();
            while let Some(f) = seq.next_element::<PeerFeed>()? {
                feeds.push(ExpectedFeed::try_from(&f).map_err(serde::de::Error::custom)?);
            }
            Ok(feeds)
        }
    }
    d.deserialize_seq(Feeds).map(ExpectedFeeds::new)
}

/// Waits until every expected feed was reported synced at its full length. If events
/// were missed (a lagging subscriber), falls back to the store's counters and then checks
/// each feed.
pub(crate) async fn wait_synced(
    node: &NodeHandle,
    mut events: broadcast::Receiver<NodeEvent>,
    expected: &ExpectedFeeds,
    blocks: u64,
) -> Result<(), BenchError> {
    let mut synced = vec![false; expected.len()];
    let mut count = 0;
    let mut lagged = false;
    let mut recheck = tokio::time::interval(RECHECK);
    while count < expected.len() {
        tokio::select! {
            event = events.recv() => match event {
                Ok(NodeEvent::FeedSynced { feed, length, .. }) => {
                    if let Some(i) = expected.position(&feed) {
                        if expected.0[i].length == length && !synced[i] {
                            synced[i] = true;
                            count += 1;
                        }
                    }
                }
                Ok(NodeEvent::SyncFailed { peer, feed, reason }) => {
                    return Err(BenchError::Mismatch(format!(
                        "{} sent a block of {} that did not verify: {reason}",
                        peer.fmt_short(),
                        hex::encode(&feed.0[..4])
                    )));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => lagged = true,
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(BenchError::Peer("the reader node closed".into()));
                }
            },
            _ = recheck.tick(), if lagged => {
                let stats = node.feed_stats().await.map_err(replic8_node::node::FeedError::from)?;
                if stats.blocks_in >= blocks && all_held(node, expected, &synced).await? {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Whether every expected feed not reported synced yet is held complete. Feeds reported
/// synced are not opened again: with small feeds sent whole, thousands are reported in
/// one burst, the event channel can lag, and opening all 100,000 feeds after a lag cost
/// the reader more CPU than replicating them.
async fn all_held(
    node: &NodeHandle,
    expected: &ExpectedFeeds,
    synced: &[bool],
) -> Result<bool, BenchError> {
    for (f, _) in expected.iter().zip(synced).filter(|(_, done)| !**done) {
        match node.open_feed(f.key).await {
            Ok(info) if info.length == f.length && info.stored == f.length => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Checks every feed of the replica: length, stored blocks and signed tree hash equal the
/// writer's, and the blocks read back hash to that tree.
pub(crate) async fn verify(node: &NodeHandle, expected: &ExpectedFeeds) -> Result<(), BenchError> {
    for f in expected.iter() {
        let key = &f.key;
        let name = hex::encode(&key.0[..4]);
        let info = node.open_feed(*key).await?;
        let head_hash = info.head.as_ref().map(|h| h.tree_hash);
        if info.length != f.length || info.stored != f.length || head_hash != Some(f.tree_hash) {
            return Err(BenchError::Mismatch(format!(
                "feed {name}: length {} stored {} head {:?}; the writer has length {} head {}",
                info.length,
                info.stored,
                head_hash.map(hex::encode),
                f.length,
                hex::encode(f.tree_hash)
            )));
        }
        let mut roots: Vec<TreeNode> = Vec::with_capacity(64);
        let (mut at, mut bytes) = (0u64, 0u64);
        while at < f.length {
            let end = (at + READ_BATCH).min(f.length);
            for (i, block) in node.read(*key, at..end).await?.iter().enumerate() {
                tree::push_leaf(&mut roots, tree::leaf(at + i as u64, block), |_| {});
                bytes += block.len() as u64;
            }
            at = end;
        }
        let read_hash = tree::tree_hash(&roots);
        if read_hash != f.tree_hash || bytes != f.bytes {
            return Err(BenchError::Mismatch(format!(
                "feed {name}: its {bytes} bytes read back hash to {}, not {}",
                hex::encode(read_hash),
                hex::encode(f.tree_hash)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::replicate::PeerReady;
    use super::*;

    fn peer_feed(n: u8, length: u64) -> PeerFeed {
        PeerFeed {
            key: hex::encode([n; 32]),
            length,
            bytes: length * 1024,
            tree_hash: hex::encode([n ^ 0xff; 32]),
        }
    }

    #[test]
    fn the_reader_keeps_the_ready_line_as_80_byte_records_sorted_by_key() {
        // 100,000 of these live through the reader's measured run.
        assert!(std::mem::size_of::<ExpectedFeed>() <= 80);
        let ready = PeerReady {
            addr: SocketAddr::from(([127, 0, 0, 1], 4000)),
            key: "ab".repeat(32),
            prep_seconds: 1.5,
            feeds: vec![peer_feed(9, 3), peer_feed(2, 1), peer_feed(5, 2)],
        };
        let line = serde_json::to_string(&ready).unwrap();
        let read: ReaderReady = serde_json::from_str(&line).unwrap();
        assert_eq!((read.addr, read.prep_seconds), (ready.addr, 1.5));
        assert_eq!(read.key, ready.key);
        let keys: Vec<u8> = read.feeds.iter().map(|f| f.key.0[0]).collect();
        assert_eq!(keys, [2, 5, 9]);
        assert_eq!(read.feeds.0.capacity(), 3);
        let five = read.feeds.position(&FeedKey([5; 32])).unwrap();
        assert_eq!(
            read.feeds.0[five],
            ExpectedFeed {
                key: FeedKey([5; 32]),
                length: 2,
                bytes: 2048,
                tree_hash: [5 ^ 0xff; 32],
            }
        );
        assert!(read.feeds.position(&FeedKey([1; 32])).is_none());
        // A bad hex field is an error naming it, not a panic.
        let mut bad = ready.clone();
        bad.feeds[1].tree_hash = "zz".into();
        let line = serde_json::to_string(&bad).unwrap();
        let err = serde_json::from_str::<ReaderReady>(&line).unwrap_err();
        assert!(err.to_string().contains("bad tree hash"), "{err}");
    }
}
