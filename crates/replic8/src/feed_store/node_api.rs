//! The store's own API, as the node calls it: create, open, append, read, subscribe,
//! share, stats, and the namespaces it serves with their policies.

use super::*;

impl<St: Storage> Handler<CreateFeed> for FeedStore<St> {
    type Result = ResponseActFuture<Self, Result<FeedKey, FeedStoreError>>;

    fn handle(&mut self, _: CreateFeed, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.blocking(|registry| registry.create())
                .into_actor(self)
                .then(|created, act, _| {
                    let persist = created.as_ref().ok().map(|key| {
                        act.held.insert(*key);
                        act.members.insert(*key, Member::created());
                        act.persist()
                    });
                    async move {
                        if let Some(persist) = persist {
                            persist.await;
                        }
                        created
                    }
                    .into_actor(act)
                }),
        )
    }
}

impl<St: Storage> Handler<OpenFeed> for FeedStore<St> {
    type Result = ResponseFuture<Result<FeedInfo, FeedStoreError>>;

    fn handle(&mut self, msg: OpenFeed, _: &mut Context<Self>) -> Self::Result {
        Box::pin(self.blocking(move |registry| Ok(registry.get(msg.feed, false)?.info())))
    }
}

impl<St: Storage> Handler<Append> for FeedStore<St> {
    type Result = ResponseFuture<Result<u64, FeedStoreError>>;

    fn handle(&mut self, msg: Append, _: &mut Context<Self>) -> Self::Result {
        self.append_with(msg.feed, move |f| f.append_batch(&msg.blocks))
    }
}

impl<St: Storage> FeedStore<St> {
    /// Appends to `feed` with `append` on the blocking pool (the feed locked), then
    /// publishes the new state and tells the sessions.
    fn append_with(
        &self,
        feed: FeedKey,
        append: impl FnOnce(&mut replic8_store::Feed<St::Feed>) -> Result<u64, replic8_store::AppendError>
            + Send
            + 'static,
    ) -> ResponseFuture<Result<u64, FeedStoreError>> {
        let sessions = self.shared.sessions.clone();
        let appended = self.blocking(move |registry| {
            let entry = registry.get(feed, false)?;
            let mut f = entry.lock();
            let length = append(&mut f)?;
            entry.publish(&f);
            Ok(length)
        });
        Box::pin(async move {
            let length = appended.await?;
            sessions.do_send(FeedUpdated { feed, length });
            Ok(length)
        })
    }
}

impl<St: Storage> Handler<PrepareAppends> for FeedStore<St> {
    type Result = ResponseFuture<Result<replic8_store::AppendPreparer, FeedStoreError>>;

    fn handle(&mut self, msg: PrepareAppends, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.blocking(move |registry| Ok(registry.get(msg.feed, false)?.lock().preparer()?)),
        )
    }
}

impl<St: Storage> Handler<AppendPrepared> for FeedStore<St> {
    type Result = ResponseFuture<Result<u64, FeedStoreError>>;

    fn handle(&mut self, msg: AppendPrepared, _: &mut Context<Self>) -> Self::Result {
        self.append_with(msg.feed, move |f| f.append_prepared(msg.prepared))
    }
}

impl<St: Storage> Handler<ReadRange> for FeedStore<St> {
    type Result = ResponseFuture<Result<Vec<Vec<u8>>, FeedStoreError>>;

    fn handle(&mut self, msg: ReadRange, _: &mut Context<Self>) -> Self::Result {
        Box::pin(self.blocking(move |registry| {
            let entry = registry.get(msg.feed, false)?;
            let blocks = entry.lock().get_range(msg.start, msg.end)?;
            Ok(blocks)
        }))
    }
}

impl<St: Storage> Handler<Subscribe> for FeedStore<St> {
    type Result = ResponseFuture<Result<watch::Receiver<FeedState>, FeedStoreError>>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.blocking(move |registry| Ok(registry.get(msg.feed, false)?.state.subscribe())),
        )
    }
}

impl<St: Storage> Handler<ShareFeed> for FeedStore<St> {
    type Result = ResponseFuture<Result<usize, FeedStoreError>>;

    fn handle(&mut self, msg: ShareFeed, _: &mut Context<Self>) -> Self::Result {
        let changed = match self.note_share(&msg.namespace, msg.feed, &msg.headers) {
            Ok(changed) => changed,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let persist = changed.then(|| self.persist());
        let share = self.shared.sessions.send(Share {
            namespace: msg.namespace,
            feeds: vec![SharedFeed {
                key: msg.feed,
                headers: msg.headers,
            }],
            peers: None,
            except: None,
        });
        Box::pin(async move {
            if let Some(persist) = persist {
                persist.await;
            }
            match share.await {
                Ok(Ok(n)) => Ok(n),
                Ok(Err(e)) => Err(FeedStoreError::Share(e)),
                Err(e) => Err(FeedStoreError::Worker(e.to_string())),
            }
        })
    }
}

impl<St: Storage> Handler<ShareFeeds> for FeedStore<St> {
    type Result = ResponseFuture<Vec<(FeedKey, FeedStoreError)>>;

    fn handle(&mut self, msg: ShareFeeds, _: &mut Context<Self>) -> Self::Result {
        let mut failed = Vec::new();
        let mut shared = Vec::with_capacity(msg.feeds.len());
        let mut changed = false;
        for (feed, headers) in msg.feeds {
            match self.note_share(&msg.namespace, feed, &headers) {
                Ok(c) => {
                    changed |= c;
                    shared.push(SharedFeed { key: feed, headers });
                }
                Err(e) => failed.push((feed, e)),
            }
        }
        let persist = changed.then(|| self.persist());
        let share = (!shared.is_empty()).then(|| {
            self.shared.sessions.send(Share {
                namespace: msg.namespace,
                feeds: shared,
                peers: None,
                except: None,
            })
        });
        Box::pin(async move {
            if let Some(persist) = persist {
                persist.await;
            }
            if let Some(share) = share {
                // The feeds are shared in the store whatever the sessions answer; a
                // session that could not offer them now asks for them when it starts.
                let _ = share.await;
            }
            failed
        })
    }
}

impl<St: Storage> FeedStore<St> {
    /// Records `feed` as shared in `namespace` with `headers`; returns whether its
    /// membership changed (sharing again, as the node does at every start, changes
    /// nothing).
    fn note_share(
        &mut self,
        namespace: &str,
        feed: FeedKey,
        headers: &Headers,
    ) -> Result<bool, FeedStoreError> {
        if !self.held.contains(&feed) {
            return Err(FeedStoreError::NotFound(feed.fmt_short()));
        }
        headers.check()?;
        self.namespaces
            .entry(namespace.to_owned())
            .or_default()
            .insert(feed, headers.clone());
        let name = self.names.intern(namespace);
        Ok(self.members.entry(feed).or_default().share(name))
    }
}

impl<St: Storage> Handler<GetStats> for FeedStore<St> {
    type Result = actix::MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        let s = &self.shared.stats;
        actix::MessageResult(FeedStoreStats {
            blocks_in: s.blocks_in.load(Ordering::Relaxed),
            bytes_in: s.bytes_in.load(Ordering::Relaxed),
            blocks_out: s.blocks_out.load(Ordering::Relaxed),
            bytes_out: s.bytes_out.load(Ordering::Relaxed),
            streams: s.streams.load(Ordering::Relaxed),
            open_streams: self
                .shared
                .streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len() as u64,
            streams_failed: s.streams_failed.load(Ordering::Relaxed),
            serve_stalls: s.serve_stalls.load(Ordering::Relaxed),
            serve_stall_session_ends: s.serve_stall_session_ends.load(Ordering::Relaxed),
            refused_policy: s.refused_policy.load(Ordering::Relaxed),
            refused_namespace: s.refused_namespace.load(Ordering::Relaxed),
            refused_quota: s.refused_quota.load(Ordering::Relaxed),
            replicas: self.quotas.replicas(),
            stream_tasks: s.tasks.load(Ordering::Relaxed),
            offers_waiting: self.manual.waiting() as u64,
            feeds_held: self.held.len() as u64,
            feeds_open: self.registry.open_count() as u64,
            feeds_opened: self.registry.counts().0,
            feeds_closed: self.registry.counts().1,
            membership_writes: self.writes.count,
            serve_bytes_held: self.shared.serve.held() as u64,
            serve_bytes_peak: self.shared.serve.peak() as u64,
            receive_bytes_held: self.shared.receive.held() as u64,
            receive_bytes_peak: self.shared.receive.peak() as u64,
            receive_bytes_peer_peak: self.shared.receive.peer_peak() as u64,
        })
    }
}

impl<St: Storage> Handler<SetNamespacePolicy> for FeedStore<St> {
    type Result = Result<(), FeedStoreError>;

    /// Takes effect for offers answered from now on.
    fn handle(&mut self, msg: SetNamespacePolicy, _: &mut Context<Self>) -> Self::Result {
        if msg.namespace.is_empty() && msg.policy.accept.accepts_new() {
            return Err(FeedStoreError::PublicPolicy);
        }
        let namespace = msg.namespace.clone();
        self.policies.insert(msg.namespace, msg.policy);
        let again = self.offer_forwarded(&namespace);
        if !again.is_empty() {
            self.shared.sessions.do_send(Share {
                namespace,
                feeds: again,
                peers: None,
                except: None,
            });
        }
        Ok(())
    }
}

impl<St: Storage> Handler<ServeNamespace> for FeedStore<St> {
    type Result = ResponseActFuture<Self, Result<(), FeedStoreError>>;

    /// Sets the policy first, so that no offer is answered under another one.
    fn handle(&mut self, msg: ServeNamespace, ctx: &mut Context<Self>) -> Self::Result {
        let ServeNamespace {
            namespace,
            secret,
            policy,
        } = msg;
        if namespace.is_empty() && policy.accept.accepts_new() {
            return Box::pin(actix::fut::ready(Err(FeedStoreError::PublicPolicy)));
        }
        let before = self.policies.insert(namespace.clone(), policy);
        // Offered to each session by `Shares` once the namespace is registered.
        self.offer_forwarded(&namespace);
        let register = self.shared.sessions.send(RegisterStore {
            namespaces: vec![(namespace.clone(), secret)],
            store: Self::recipients(&ctx.address()),
        });
        Box::pin(
            async move { register.await.map_err(|_| RegisterError::Closing)? }
                .into_actor(self)
                .map(move |registered: Result<(), RegisterError>, act, _| {
                    if registered.is_err() {
                        match before {
                            Some(p) => act.policies.insert(namespace, p),
                            None => act.policies.remove(&namespace),
                        };
                    }
                    Ok(registered?)
                }),
        )
    }
}
