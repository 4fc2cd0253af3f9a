//! Feeds by key, the list of held feeds and who has each: the handle's feed methods
//! beyond create, append and read.

use replic8::feed_store::{
    FeedInfo, FeedPage, FeedSummary, FeedTotals, GetFeed, GetFeedTotals, ListFeeds,
};
use replic8::keys::FeedKey;
use replic8_discovery::{JoinReport, Topic};

use super::{FeedError, JoinError, JoinOptions, NodeClosed, NodeHandle};
use crate::feed_peers::FeedPeer;
use crate::persist::PersistedJoin;

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
    /// bytes, namespaces. Read from the store's index of feeds, which the node's start
    /// fills from one scan of the storage's small feeds (the first listing waits for
    /// it); a feed neither opened since the start nor scanned is opened once (and closed
    /// again when unused).
    ///
    /// The whole list is built at once: for many feeds, read it in pages with
    /// [`list_feeds_page`](Self::list_feeds_page).
    pub async fn list_feeds(&self) -> Result<Vec<FeedSummary>, FeedError> {
        Ok(self.list_feeds_page(None, usize::MAX).await?.feeds)
    }

    /// One page of [`list_feeds`](Self::list_feeds): the first `limit` feeds whose key
    /// sorts after `after`, and the cursor of the next page ([`FeedPage::next`]; `None`
    /// after the last). Only the page is built, whatever the number of feeds.
    pub async fn list_feeds_page(
        &self,
        after: Option<FeedKey>,
        limit: usize,
    ) -> Result<FeedPage, FeedError> {
        Ok(self
            .s()
            .feeds
            .list
            .send(ListFeeds { after, limit })
            .await
            .map_err(|_| NodeClosed)??)
    }

    /// The sums over [`list_feeds`](Self::list_feeds): feeds, blocks and bytes stored,
    /// read the same way, without building the list.
    pub async fn feed_totals(&self) -> Result<FeedTotals, FeedError> {
        Ok(self
            .s()
            .feeds
            .totals
            .send(GetFeedTotals)
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

    /// Join `topic` as [`join`](Self::join) does, but resolve as soon as discovery has
    /// taken the topic and the join is persisted: the first announce and lookup round
    /// go on in the background (peers found connect as they come: follow
    /// [`subscribe`](Self::subscribe); [`flushed`](Self::flushed) resolves when the
    /// round is done).
    pub async fn join_in_background(
        &self,
        topic: impl Into<Topic>,
        options: JoinOptions,
    ) -> Result<(), JoinError> {
        let topic = topic.into();
        if !options.announce && !options.lookup {
            return Err(replic8_discovery::JoinError::NothingToDo.into());
        }
        let _order = self.inner.join_lock.lock().await;
        let discovery = &self.s().discovery;
        // `do_send` queues even into a full mailbox, so discovery takes the join before
        // it answers the `Joined` sent next. The join's own answer (its first round's
        // report) is not awaited.
        discovery.do_send(replic8_discovery::Join {
            topic,
            announce: options.announce,
            lookup: options.lookup,
        });
        let joined = discovery
            .send(replic8_discovery::Joined { topic })
            .await
            .map_err(|_| NodeClosed)?;
        if !joined {
            return Err(NodeClosed.into());
        }
        self.persist_join(topic, options).await
    }

    /// Records a join that discovery took in the persisted state (resumed after a
    /// restart) and in the topic counter. Called with the join lock held.
    pub(super) async fn persist_join(
        &self,
        topic: Topic,
        options: JoinOptions,
    ) -> Result<(), JoinError> {
        self.persist(|state| {
            state.join(PersistedJoin {
                topic: topic.0,
                announce: options.announce,
                lookup: options.lookup,
            })
        })
        .await?;
        self.refresh_topics().await;
        Ok(())
    }
}
