//! Feeds by key, the list of held feeds and who has each: the handle's feed methods
//! beyond create, append and read.

use replic8::feed_store::{FeedInfo, FeedSummary, GetFeed, ListFeeds};
use replic8::keys::FeedKey;
use replic8_discovery::JoinReport;

use super::{FeedError, JoinOptions, NodeClosed, NodeHandle};
use crate::feed_peers::FeedPeer;

/// What [`NodeHandle::get_feed`] did.
#[derive(Debug, Clone)]
pub struct GotFeed {
    /// The feed as held now (an empty replica right after it was created).
    pub info: FeedInfo,
    /// Whether the replica was created by this call.
    pub created: bool,
    /// The join of the feed's discovery key.
    pub join: JoinReport,
}

impl NodeHandle {
    /// Open a feed known out of band by its public key, as hypercore's `get(key)`: a
    /// feed held here is left as it is; otherwise an empty replica is created in the
    /// public namespace `""` (knowing the key is the read capability), announced on
    /// every session, and replicated verified from any peer that holds the feed
    /// publicly. Either way the feed's discovery key is joined (announce and look up), so
    /// its peers are found. Both the replica's membership and the join are persisted: a
    /// restart resumes the download. Follow [`subscribe_feed`](Self::subscribe_feed) and
    /// [`feed_peers`](Self::feed_peers) for progress.
    pub async fn get_feed(&self, feed: FeedKey) -> Result<GotFeed, FeedError> {
        let (info, created) = self
            .s()
            .feeds
            .get
            .send(GetFeed { feed })
            .await
            .map_err(|_| NodeClosed)??;
        let join = self
            .join_feed(feed, JoinOptions::default())
            .await
            .map_err(|e| match e {
                super::JoinError::Closed(c) => FeedError::Closed(c),
                super::JoinError::Persist(p) => FeedError::Persist(p),
                super::JoinError::Discovery(d) => FeedError::Join(d),
            })?;
        Ok(GotFeed {
            info,
            created,
            join,
        })
    }

    /// Every feed the default store holds, sorted by key: length, stored blocks and
    /// bytes, namespaces. Read from the store's index of feeds; a feed not opened since
    /// the node started is opened once (and closed again when unused).
    pub async fn list_feeds(&self) -> Result<Vec<FeedSummary>, FeedError> {
        Ok(self
            .s()
            .feeds
            .list
            .send(ListFeeds)
            .await
            .map_err(|_| NodeClosed)??)
    }

    /// The peers that reported about `feed` since the node started (their signed
    /// length, what we downloaded from them), longest first; bounded (see
    /// [`crate::feed_peers`]).
    pub fn feed_peers(&self, feed: &FeedKey) -> Vec<FeedPeer> {
        self.s()
            .feed_peers
            .lock()
            .map(|table| table.peers(feed))
            .unwrap_or_default()
    }
}
