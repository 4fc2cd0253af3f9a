//! Feeds asked for by key ([`GetFeed`]), the list of held feeds ([`ListFeeds`]) and its
//! sums ([`GetFeedTotals`]).
//!
//! Knowing a feed's public key is the capability to read it, as in hypercore: a replica
//! asked for by key belongs to the public namespace `""`, so it is announced by
//! discovery key on every session and replicated with each peer that holds the feed
//! publicly (a feed created there and never shared in a named namespace, or shared in
//! `""`). A feed held only in named namespaces is never served this way, on either side:
//! asking for it by key changes nothing of where it belongs.

use actix::{ActorFutureExt, Context, Handler, ResponseActFuture, WrapFuture};
use replic8_store::storage::Storage;
use tracing::warn;

use super::membership::Member;
use super::registry::Registry;
use super::{
    FeedInfo, FeedPage, FeedStore, FeedStoreError, FeedSummary, FeedTotals, GetFeed, GetFeedTotals,
    ListFeeds,
};
use crate::keys::FeedKey;
use crate::store::Announce;

impl<St: Storage> Handler<GetFeed> for FeedStore<St> {
    type Result = ResponseActFuture<Self, Result<(FeedInfo, bool), FeedStoreError>>;

    /// A held feed is opened as it is. A new one is checked to be an ed25519 key, made a
    /// member of `""` (durably) before its replica is created, so a crash in between
    /// leaves no feed in no namespace; then it is announced.
    fn handle(&mut self, msg: GetFeed, _: &mut Context<Self>) -> Self::Result {
        let feed = msg.feed;
        if self.held.contains(&feed) {
            return Box::pin(
                self.blocking(move |registry| Ok((registry.get(feed, false)?.info(), false)))
                    .into_actor(self),
            );
        }
        let checked = async move {
            tokio::task::spawn_blocking(move || replic8_store::FeedKey::try_from(feed))
                .await
                .map_err(|e| FeedStoreError::Worker(e.to_string()))?
                .map_err(FeedStoreError::from)
        };
        Box::pin(checked.into_actor(self).then(move |checked, act, _| {
            let persist = checked.is_ok().then(|| {
                let public = act.names.intern("");
                act.members
                    .entry(feed)
                    .or_insert_with(|| Member::wanted(public));
                act.member_changes += 1;
                act.persist()
            });
            let create = act.blocking(move |registry| Ok(registry.get(feed, true)?.info()));
            async move {
                checked?;
                if let Some(persist) = persist {
                    persist.await;
                }
                create.await
            }
            .into_actor(act)
            .map(move |created, act, _| {
                match &created {
                    Ok(_) => {
                        act.held.insert(feed);
                        act.shared.sessions.do_send(Announce {
                            namespace: String::new(),
                            feeds: vec![feed],
                        });
                    }
                    Err(_) => {
                        // Not held: the membership goes with the feed it was for.
                        act.members.remove(&feed);
                        act.member_changes += 1;
                        actix::spawn(act.persist());
                    }
                }
                Ok((created?, true))
            })
        }))
    }
}

impl<St: Storage> FeedStore<St> {
    /// The first `limit` (at least 1) held feeds whose key sorts after `after`, in key
    /// order, each with its namespaces, and whether a held feed sorts after them: a walk
    /// of the held keys' sorted copy from the cursor (decision 246), so a page costs
    /// its own length, not the store's.
    fn held_page(
        &self,
        after: Option<FeedKey>,
        limit: usize,
    ) -> (Vec<(FeedKey, Vec<String>)>, bool) {
        let (page, more) = self.held.page(after, limit);
        let keys = page
            .into_iter()
            .map(|key| {
                let names = self
                    .members
                    .get(&key)
                    .map(Member::names)
                    .unwrap_or_default();
                (key, names)
            })
            .collect();
        (keys, more)
    }
}

/// Calls `each` with the summary and stored bytes of every feed of `keys`, from the
/// index (after the start's scan of the storage has filled it; a listing right after a
/// start waits for it), opening those it lacks; a feed that cannot be opened is left out.
fn each_summary<St: Storage, T>(
    registry: &Registry<St>,
    keys: impl IntoIterator<Item = (FeedKey, T)>,
    mut each: impl FnMut(FeedInfo, u64, T),
) {
    registry.fill_index();
    for (key, extra) in keys {
        match registry.summary(key) {
            Ok((info, stored_bytes)) => each(info, stored_bytes, extra),
            Err(e) => warn!(feed = %key.fmt_short(), error = %e, "feed left out of the list"),
        }
    }
}

impl<St: Storage> Handler<ListFeeds> for FeedStore<St> {
    type Result = ResponseActFuture<Self, Result<FeedPage, FeedStoreError>>;

    fn handle(&mut self, msg: ListFeeds, _: &mut Context<Self>) -> Self::Result {
        let (keys, more) = self.held_page(msg.after, msg.limit);
        let next = keys.last().map(|(k, _)| *k).filter(|_| more);
        Box::pin(
            self.blocking(move |registry| {
                let mut feeds = Vec::with_capacity(keys.len());
                each_summary(registry, keys, |info, stored_bytes, namespaces| {
                    feeds.push(FeedSummary {
                        info,
                        stored_bytes,
                        namespaces,
                    })
                });
                Ok(FeedPage { feeds, next })
            })
            .into_actor(self),
        )
    }
}

impl<St: Storage> Handler<GetFeedTotals> for FeedStore<St> {
    type Result = ResponseActFuture<Self, Result<FeedTotals, FeedStoreError>>;

    fn handle(&mut self, _: GetFeedTotals, _: &mut Context<Self>) -> Self::Result {
        let keys: Vec<(FeedKey, ())> = self.held.iter().map(|k| (*k, ())).collect();
        Box::pin(
            self.blocking(move |registry| {
                let mut totals = FeedTotals::default();
                each_summary(registry, keys, |info, stored_bytes, ()| {
                    totals.feeds += 1;
                    totals.blocks_stored += info.stored;
                    totals.bytes_stored += stored_bytes;
                });
                Ok(totals)
            })
            .into_actor(self),
        )
    }
}
