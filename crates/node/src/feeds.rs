//! The node's default store: a [`FeedStore`] on disk (in `<data dir>/feeds`) or in
//! memory, reached through the recipients of its messages so that the handle does not
//! depend on the storage type.

use std::path::Path;

use actix::prelude::*;
use replic8::actor::SessionsActor;
use replic8::feed_store::{
    Append, AppendPrepared, CreateFeed, DecideOffers, FeedStore, FeedStoreConfig, FeedStoreError,
    FeedStoreEvent, GetFeed, GetFeedTotals, GetStats, ListFeeds, OpenFeed, PrepareAppends,
    ReadRange, ServeNamespace, SetNamespacePolicy, ShareFeed, ShareFeeds, Subscribe,
};
use tokio::sync::mpsc;

use crate::persist::FEEDS_DIR;

/// The feed store's messages, as recipients.
#[derive(Debug, Clone)]
pub(crate) struct FeedStoreRecipients {
    pub(crate) create: Recipient<CreateFeed>,
    pub(crate) open: Recipient<OpenFeed>,
    /// Opens a feed by key, creating a public replica if it is not held.
    pub(crate) get: Recipient<GetFeed>,
    pub(crate) list: Recipient<ListFeeds>,
    /// The sums over the list (feeds, blocks and bytes stored).
    pub(crate) totals: Recipient<GetFeedTotals>,
    pub(crate) append: Recipient<Append>,
    /// A preparer of appends ahead of writing them.
    pub(crate) prepare: Recipient<PrepareAppends>,
    /// Writes an append made by a preparer.
    pub(crate) append_prepared: Recipient<AppendPrepared>,
    pub(crate) read: Recipient<ReadRange>,
    pub(crate) subscribe: Recipient<Subscribe>,
    pub(crate) share: Recipient<ShareFeed>,
    /// Shares many feeds of one namespace at once (the persisted shares, at start).
    pub(crate) share_many: Recipient<ShareFeeds>,
    pub(crate) stats: Recipient<GetStats>,
    /// Sets a namespace's policy and registers the store for it with the sessions.
    pub(crate) serve: Recipient<ServeNamespace>,
    /// Replaces a served namespace's policy.
    pub(crate) set_policy: Recipient<SetNamespacePolicy>,
    /// The user's decision on offers waiting in a manual namespace.
    pub(crate) decide: Recipient<DecideOffers>,
}

impl FeedStoreRecipients {
    fn of<St: replic8_store::storage::Storage>(addr: &Addr<FeedStore<St>>) -> Self {
        FeedStoreRecipients {
            create: addr.clone().recipient(),
            open: addr.clone().recipient(),
            get: addr.clone().recipient(),
            list: addr.clone().recipient(),
            totals: addr.clone().recipient(),
            append: addr.clone().recipient(),
            prepare: addr.clone().recipient(),
            append_prepared: addr.clone().recipient(),
            read: addr.clone().recipient(),
            subscribe: addr.clone().recipient(),
            share: addr.clone().recipient(),
            share_many: addr.clone().recipient(),
            stats: addr.clone().recipient(),
            serve: addr.clone().recipient(),
            set_policy: addr.clone().recipient(),
            decide: addr.clone().recipient(),
        }
    }
}

/// Starts the feed store: on disk under `data_dir/feeds`, or in memory without one.
/// Listing the feeds on disk runs on the blocking pool.
pub(crate) async fn start(
    data_dir: Option<&Path>,
    config: FeedStoreConfig,
    sessions: Addr<SessionsActor>,
    events: mpsc::UnboundedSender<FeedStoreEvent>,
) -> Result<FeedStoreRecipients, FeedStoreError> {
    match data_dir {
        None => {
            let addr = FeedStore::in_memory(config, sessions, Some(events)).start();
            Ok(FeedStoreRecipients::of(&addr))
        }
        Some(dir) => {
            let dir = dir.join(FEEDS_DIR);
            let store = tokio::task::spawn_blocking(move || {
                FeedStore::open_disk(dir, config, sessions, Some(events))
            })
            .await
            .map_err(|e| FeedStoreError::Worker(e.to_string()))??;
            Ok(FeedStoreRecipients::of(&store.start()))
        }
    }
}
