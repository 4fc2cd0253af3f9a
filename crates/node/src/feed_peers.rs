//! Which peers have each feed and how far: the signed lengths they announced, what we
//! downloaded from them, and when they last said anything about the feed.
//!
//! Fed from the feed store's events (`PeerHead`, `FeedSynced`, `Downloaded`); read by
//! [`NodeHandle::feed_peers`](crate::NodeHandle::feed_peers). Bounded per feed and in
//! total: the least recently heard peer (or feed) makes room for a new one.

use std::collections::HashMap;
use std::time::Instant;

use replic8::keys::FeedKey;
use replic8_connmgr::PeerKey;

/// Most peers remembered per feed: enough to show where a feed comes from; a swarm's
/// long tail is not worth the memory.
pub const PEERS_PER_FEED: usize = 32;
/// Most (feed, peer) entries in all. Full, with one peer per feed (a node holding many
/// feeds from one writer), the table takes about 12.5 MB: 131,072 buckets of a key and a
/// list (7.5 MB) and a one-peer list per feed (80 bytes each, 5.2 MB).
pub const MAX_ENTRIES: usize = 65_536;

/// What one peer told us about one feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedPeer {
    /// The peer.
    pub peer: PeerKey,
    /// The longest signed length the peer announced (or agreed on in sync); 0 if it
    /// announced none yet.
    pub length: u64,
    /// Blocks downloaded from this peer, verified, since the node started.
    pub blocks_in: u64,
    /// Bytes of those blocks.
    pub bytes_in: u64,
    /// When the peer last reported anything about the feed.
    pub seen: Instant,
}

/// When the table is full, the least recently heard feeds dropped at once: an eighth of
/// them. Finding them is a pass over the table, paid once per eighth of a table of new
/// feeds rather than once per new feed (a pass per new feed made 100,000 feeds
/// quadratic: tens of thousands of passes over 65,536 entries).
const EVICT_FRACTION: usize = 8;

/// The bounded table.
#[derive(Debug, Default)]
pub(crate) struct FeedPeers {
    feeds: HashMap<FeedKey, Vec<FeedPeer>>,
    entries: usize,
    /// Passes over the table to make room, so far.
    evictions: u64,
}

impl FeedPeers {
    /// Records what `peer` reported about `feed`: a signed length, and/or downloaded
    /// blocks and bytes.
    pub(crate) fn report(
        &mut self,
        feed: FeedKey,
        peer: PeerKey,
        length: Option<u64>,
        downloaded: (u64, u64),
        now: Instant,
    ) {
        let known = self
            .feeds
            .get(&feed)
            .is_some_and(|peers| peers.iter().any(|p| p.peer == peer));
        if !known && self.entries >= MAX_ENTRIES {
            self.evict_feeds();
        }
        // Most feeds are heard from one peer: room for one (a first push would make
        // room for four).
        let peers = self
            .feeds
            .entry(feed)
            .or_insert_with(|| Vec::with_capacity(1));
        let entry = match peers.iter().position(|p| p.peer == peer) {
            Some(i) => &mut peers[i],
            None => {
                if peers.len() >= PEERS_PER_FEED {
                    if let Some(oldest) = (0..peers.len()).min_by_key(|&i| peers[i].seen) {
                        peers.swap_remove(oldest);
                        self.entries -= 1;
                    }
                }
                peers.push(FeedPeer {
                    peer,
                    length: 0,
                    blocks_in: 0,
                    bytes_in: 0,
                    seen: now,
                });
                self.entries += 1;
                let last = peers.len() - 1;
                &mut peers[last]
            }
        };
        if let Some(length) = length {
            entry.length = entry.length.max(length);
        }
        entry.blocks_in += downloaded.0;
        entry.bytes_in += downloaded.1;
        entry.seen = now;
    }

    /// The peers that reported about `feed`, longest length first.
    pub(crate) fn peers(&self, feed: &FeedKey) -> Vec<FeedPeer> {
        let mut peers = self.feeds.get(feed).cloned().unwrap_or_default();
        peers.sort_by(|a, b| b.length.cmp(&a.length).then(b.seen.cmp(&a.seen)));
        peers
    }

    /// Drops the tables of the feeds heard from least recently, an
    /// [`EVICT_FRACTION`]th of them (at least one).
    fn evict_feeds(&mut self) {
        self.evictions += 1;
        let mut heard: Vec<(Option<Instant>, [u8; 32])> = self
            .feeds
            .iter()
            .map(|(feed, peers)| (peers.iter().map(|p| p.seen).max(), feed.0))
            .collect();
        let count = (heard.len() / EVICT_FRACTION).max(1);
        if count < heard.len() {
            heard.select_nth_unstable(count);
        }
        for (_, key) in heard.into_iter().take(count) {
            if let Some(peers) = self.feeds.remove(&FeedKey(key)) {
                self.entries -= peers.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn peer(n: u8) -> PeerKey {
        PeerKey::from_bytes([n; 32])
    }

    #[test]
    fn lengths_only_grow_downloads_add_up_and_the_table_stays_bounded() {
        let mut t = FeedPeers::default();
        let now = Instant::now();
        let feed = FeedKey([1; 32]);
        t.report(feed, peer(1), Some(10), (0, 0), now);
        t.report(feed, peer(1), Some(7), (3, 300), now);
        t.report(feed, peer(2), None, (1, 100), now);
        let peers = t.peers(&feed);
        assert_eq!(peers.len(), 2);
        assert_eq!((peers[0].peer, peers[0].length), (peer(1), 10));
        assert_eq!((peers[0].blocks_in, peers[0].bytes_in), (3, 300));
        assert_eq!(peers[1].length, 0);
        // Per feed: the least recently heard peer makes room.
        for n in 0..PEERS_PER_FEED as u8 + 5 {
            let at = now + Duration::from_secs(u64::from(n) + 1);
            t.report(feed, peer(10 + n), Some(1), (0, 0), at);
        }
        let peers = t.peers(&feed);
        assert_eq!(peers.len(), PEERS_PER_FEED);
        assert!(peers.iter().all(|p| p.peer != peer(1) && p.peer != peer(2)));
        // In total: the feed heard from least recently goes.
        let mut t = FeedPeers::default();
        for i in 0..MAX_ENTRIES + 3 {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let at = now + Duration::from_millis(i as u64);
            t.report(FeedKey(key), peer(1), Some(1), (0, 0), at);
        }
        assert!(t.entries <= MAX_ENTRIES, "{}", t.entries);
        assert!(
            t.peers(&FeedKey([0; 32])).is_empty(),
            "the oldest feed went"
        );
        let newest = MAX_ENTRIES as u64 + 2;
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&newest.to_le_bytes());
        assert_eq!(t.peers(&FeedKey(key)).len(), 1, "the newest feed stayed");
    }

    /// Regression: a full table made room with a pass over all of it for every new
    /// feed, so 100,000 feeds cost 35,000 passes over 65,536 entries.
    #[test]
    fn a_full_table_makes_room_for_many_feeds_with_one_pass() {
        let mut t = FeedPeers::default();
        let now = Instant::now();
        let feeds = MAX_ENTRIES * 2;
        for i in 0..feeds {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let at = now + Duration::from_millis(i as u64);
            t.report(FeedKey(key), peer(1), Some(1), (0, 0), at);
        }
        assert!(t.entries <= MAX_ENTRIES);
        // One pass per eighth of a table of new feeds (8 for 65,536 new feeds), and a
        // few more as the table shrinks by an eighth each time.
        let new_past_full = (feeds - MAX_ENTRIES) as u64;
        let bound = new_past_full / (MAX_ENTRIES / EVICT_FRACTION) as u64 + 2;
        assert!(t.evictions <= bound, "{} passes", t.evictions);
    }
}
