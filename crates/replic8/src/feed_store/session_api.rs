//! The store interface the session layer calls: what the store shares and holds in a
//! namespace, offers and the user's decisions on them, feed streams attached and
//! detached.

use super::*;
use replic8_store::SignedHead;

impl<St: Storage> Handler<Shares> for FeedStore<St> {
    type Result = Result<Vec<SharedFeed>, StoreError>;

    /// The feeds shared in the namespace, and those accepted there under a policy that
    /// forwards.
    fn handle(&mut self, msg: Shares, _: &mut Context<Self>) -> Self::Result {
        Ok(self
            .namespaces
            .get(&msg.namespace)
            .map(|feeds| {
                feeds
                    .iter()
                    .filter(|(key, _)| self.is_member(key, &msg.namespace))
                    .map(|(key, headers)| SharedFeed {
                        key: *key,
                        headers: headers.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl<St: Storage> Handler<KnownFeeds> for FeedStore<St> {
    type Result = Result<Vec<FeedKey>, StoreError>;

    /// The feeds that belong to the namespace, for all-to-all replication with peers
    /// that hold them.
    fn handle(&mut self, msg: KnownFeeds, _: &mut Context<Self>) -> Self::Result {
        let mut known: Vec<FeedKey> = self
            .members
            .iter()
            .filter(|(key, m)| m.is_in(&msg.namespace) && self.held.contains(key))
            .map(|(key, _)| *key)
            .collect();
        known.sort_unstable_by_key(|k| k.0);
        Ok(known)
    }
}

impl<St: Storage> Handler<FeedHeads> for FeedStore<St> {
    type Result = ResponseFuture<Result<Vec<Option<SignedHead>>, StoreError>>;

    /// From the index of feed summaries; a feed neither opened nor read by the start's
    /// scan is opened on the blocking pool to learn it (and closed again when unused). A feed
    /// that does not belong to the namespace here counts as incomplete.
    fn handle(&mut self, msg: FeedHeads, _: &mut Context<Self>) -> Self::Result {
        let feeds: Vec<FeedKey> = msg.feeds;
        let member: Vec<bool> = feeds
            .iter()
            .map(|f| self.held.contains(f) && self.is_member(f, &msg.namespace))
            .collect();
        let heads = self.blocking(move |registry| {
            let lengths = registry.complete_lengths(&feeds);
            Ok(feeds
                .iter()
                .zip(lengths)
                .zip(member)
                .map(|((key, length), member)| {
                    // The head the complete length was read from: a complete feed's
                    // summary is in the index once its length is known.
                    let length = length.filter(|_| member)?;
                    let (info, _) = registry.summary(*key).ok()?;
                    let head = info.head?;
                    (head.length == length).then_some(head)
                })
                .collect())
        });
        Box::pin(async move { heads.await.map_err(|e| StoreError::Failed(e.to_string())) })
    }
}

impl<St: Storage> Handler<Offer> for FeedStore<St> {
    type Result = ResponseActFuture<Self, Result<Vec<FeedKey>, StoreError>>;

    /// Feeds that belong to the namespace are accepted; feeds held only in other
    /// namespaces are refused; others go through the namespace's policy, then their keys
    /// are checked to be ed25519 points on the blocking pool, then (under the manual
    /// policy) wait for the user's decision, then the quotas. Refusing is not an error:
    /// the answer just leaves the feed out. The answer waits until the new feeds'
    /// namespaces are durable; their replicas are created in the background, together
    /// and without being opened (or by their first stream or whole write, whichever
    /// comes first), so creating a thousand feeds on disk does not hold it up.
    fn handle(&mut self, msg: Offer, _: &mut Context<Self>) -> Self::Result {
        let Offer {
            peer,
            namespace,
            feeds,
        } = msg;
        let policy = self.policy(&namespace);
        let mut held = Vec::new();
        let mut candidates = Vec::new();
        let mut refused = Refusals::default();
        for feed in feeds {
            let decision = match self.members.get(&feed.key) {
                _ if matches!(policy.accept, AcceptPolicy::None) => OfferDecision::RefusedPolicy,
                Some(m) if m.is_in(&namespace) => OfferDecision::Held,
                // A peer never widens who a feed is served to.
                Some(m) if m.in_any() => OfferDecision::RefusedElsewhere,
                _ if policy.accept.accepts(&peer, &namespace, &feed) => {
                    candidates.push(feed);
                    continue;
                }
                _ => OfferDecision::RefusedPolicy,
            };
            match decision {
                OfferDecision::Held => held.push(feed.key),
                OfferDecision::RefusedElsewhere => refused.elsewhere += 1,
                _ => refused.policy += 1,
            }
            self.decided(peer, &namespace, &feed, decision);
        }
        let checking = candidates.clone();
        let checked = async move {
            if checking.is_empty() {
                return Vec::new();
            }
            let checking = tokio::task::spawn_blocking(move || {
                checking
                    .into_iter()
                    .map(|f| replic8_store::FeedKey::try_from(f.key).is_ok())
                    .collect::<Vec<_>>()
            });
            checking.await.unwrap_or_default()
        };
        let manual_wait = self.config.limits.manual_wait;
        Box::pin(checked.into_actor(self).then(move |valid, act, _| {
            let mut new = Vec::with_capacity(candidates.len());
            for (i, feed) in candidates.into_iter().enumerate() {
                if valid.get(i).copied().unwrap_or(false) {
                    new.push(feed);
                } else {
                    // Keys that are not ed25519 points count with the policy's refusals.
                    refused.policy += 1;
                    act.decided(peer, &namespace, &feed, OfferDecision::RefusedPolicy);
                }
            }
            let (now, waits) = if matches!(policy.accept, AcceptPolicy::Manual) {
                act.put_to_user(peer, &namespace, new, &mut refused)
            } else {
                (new, Vec::new())
            };
            let deadline = tokio::time::Instant::now() + manual_wait;
            let waited = async move {
                let mut decided = Vec::with_capacity(waits.len());
                for (feed, (id, rx)) in waits {
                    let decision = match tokio::time::timeout_at(deadline, rx).await {
                        Ok(Ok(true)) => Some(true),
                        Ok(Ok(false)) => Some(false),
                        Ok(Err(_)) | Err(_) => None,
                    };
                    decided.push((feed, id, decision));
                }
                decided
            };
            waited.into_actor(act).then(move |decided, act, _| {
                let mut new = now;
                for (feed, id, decision) in decided {
                    match decision {
                        Some(true) => new.push(feed),
                        Some(false) => {
                            refused.policy += 1;
                            act.decided(peer, &namespace, &feed, OfferDecision::Rejected);
                        }
                        None => {
                            act.manual.expire(&namespace, &feed.key, id);
                            refused.policy += 1;
                            act.decided(peer, &namespace, &feed, OfferDecision::Expired);
                        }
                    }
                }
                let mut accepted = held;
                let before = act.member_changes;
                if !new.is_empty() {
                    accepted.extend(act.admit(peer, &namespace, new, &policy, &mut refused));
                }
                let persist = (act.member_changes != before).then(|| act.persist());
                act.refused(peer, namespace, refused);
                async move {
                    if let Some(persist) = persist {
                        persist.await;
                    }
                    Ok(accepted)
                }
                .into_actor(act)
            })
        }))
    }
}

impl<St: Storage> Handler<DecideOffers> for FeedStore<St> {
    type Result = Result<Vec<usize>, FeedStoreError>;

    /// Only in a namespace whose policy is manual.
    fn handle(&mut self, msg: DecideOffers, _: &mut Context<Self>) -> Self::Result {
        if !matches!(self.policy(&msg.namespace).accept, AcceptPolicy::Manual) {
            return Err(FeedStoreError::NotManual(msg.namespace));
        }
        Ok(msg
            .feeds
            .iter()
            .map(|feed| self.manual.decide(&msg.namespace, *feed, msg.accept))
            .collect())
    }
}

impl<St: Storage> Handler<Attach> for FeedStore<St> {
    type Result = Result<(), StoreError>;

    /// Runs the stream if the feed belongs to the stream's namespace here.
    fn handle(&mut self, msg: Attach, _: &mut Context<Self>) -> Self::Result {
        if !self.held.contains(&msg.feed) || !self.is_member(&msg.feed, &msg.namespace) {
            return Err(StoreError::Failed(format!(
                "feed {} is not held in this namespace",
                msg.feed.fmt_short()
            )));
        }
        let Attach {
            feed,
            peer,
            id,
            stream,
            verified_head,
            ..
        } = msg;
        let registry = self.registry.clone();
        let shared = self.shared.clone();
        let ctx = stream::StreamContext {
            feed,
            peer,
            id,
            config: self.config.sync.clone(),
            verified_head,
        };
        let (stop_tx, stop) = oneshot::channel();
        self.shared.stats.streams.fetch_add(1, Ordering::Relaxed);
        let mut streams = self
            .shared
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let guard = self.shared.task_guard();
        let task = tokio::spawn(async move {
            let _guard = guard;
            let opened = tokio::task::spawn_blocking(move || registry.get(feed, true)).await;
            match opened {
                Ok(Ok(entry)) => stream::run(entry, stream, ctx, shared, stop).await,
                _ => {
                    shared
                        .sessions
                        .do_send(crate::store::StreamEnded { feed, peer, id });
                    shared.stream_done(peer, id);
                }
            }
        });
        // A stream of the same name replaced here is aborted with its handle.
        streams.insert(
            (peer, id),
            StreamHandle {
                stop: Some(stop_tx),
                task: AbortOnDropHandle::new(task),
            },
        );
        Ok(())
    }
}

impl<St: Storage> Handler<Detach> for FeedStore<St> {
    type Result = ();

    fn handle(&mut self, msg: Detach, _: &mut Context<Self>) {
        let mut streams = self
            .shared
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(stop) = streams
            .get_mut(&(msg.peer, msg.id))
            .and_then(|h| h.stop.take())
        {
            let _ = stop.send(());
        }
    }
}
