//! `NodeHandle`: the running node, as the embedding program holds it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use replic8::actor::{GetSessionTotals, ListSessions, SessionsActor, StopSession};
use replic8::driver::SessionTotals;
use replic8::feed_store::{
    AcceptPolicy, Append, AppendPrepared, FeedInfo, FeedState, FeedStoreStats, GetStats,
    NamespacePolicy, OpenFeed, PrepareAppends, ReadRange, ServeNamespace, SetNamespacePolicy,
    ShareFeed,
};
use replic8::keys::{FeedKey, NamespaceSecret};
use replic8::message::Headers;
use replic8::store::{Attach, Detach, KnownFeeds, Offer, RegisterStore, Shares, StoreRecipients};
use replic8_connmgr::{ConnManagerHandle, PeerKey};
use replic8_discovery::{DiscoveryActor, JoinReport, Topic};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::events::NodeEvent;
use crate::feed_peers::FeedPeers;
use crate::feeds::FeedStoreRecipients;
use crate::metrics::{Counters, MetricsEndpoint};
use crate::persist::{self, PersistError, PersistedPolicy, PersistedShare, PersistedState};

use super::errors::{
    AddStoreError, ConnectError, DisconnectError, FeedError, FlushedError, JoinError, LeaveError,
    NodeClosed, PeerInfo,
};
use super::namespace_spec::NamespaceSpec;
use super::namespace_types::{self, OfferRecord};
use super::SESSION_CLOSE_GUARD;
use crate::lifecycle::{BeginClose, CancelRedial, LifecycleActor, Redialing, Requested, TopicLeft};

/// How to join a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinOptions {
    /// Announce ourselves for the topic so that others find us.
    pub announce: bool,
    /// Look up the topic's peers and connect to them.
    pub lookup: bool,
}

impl Default for JoinOptions {
    /// Both.
    fn default() -> Self {
        JoinOptions {
            announce: true,
            lookup: true,
        }
    }
}

/// What a store constructor gets from [`NodeHandle::add_store`].
#[derive(Debug, Clone)]
pub struct StoreContext {
    /// The session layer, for the store's `Share`, `FeedSynced`, `FeedUpdated` and
    /// `StreamEnded` messages.
    pub sessions: Addr<SessionsActor>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) started: Started,
    pub(super) run: mpsc::UnboundedSender<SystemJob>,
    pub(super) stop: Mutex<Option<oneshot::Sender<()>>>,
    pub(super) exited: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
    /// Serialises joins and leaves, so the persisted state follows their order.
    pub(super) join_lock: tokio::sync::Mutex<()>,
}

/// A running node. Cheap to clone; every clone drives the same node. Dropping the last
/// clone without [`close`](Self::close) stops the node abruptly (connections time out
/// on the peers' side instead of closing).
#[derive(Debug, Clone)]
pub struct NodeHandle {
    pub(super) inner: Arc<Inner>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut stop) = self.stop.lock() {
            if let Some(stop) = stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

impl NodeHandle {
    pub(super) fn s(&self) -> &Started {
        &self.inner.started
    }

    /// This node's public key: what peers know it by.
    pub fn key(&self) -> PeerKey {
        self.s().conn.key()
    }

    /// The address the QUIC endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.s().conn.local_addr()
    }

    /// The address the metrics endpoint listens on, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.s().metrics_addr
    }

    /// The data directory, unless the node is in memory.
    pub fn data_dir(&self) -> Option<&Path> {
        self.s().data_dir.as_deref()
    }

    /// The node's counters (also served by the metrics endpoint, if enabled).
    pub fn counters(&self) -> &Counters {
        &self.s().counters
    }

    /// Every event from now on: peers up and down, sessions, offers, synced feeds.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.s().events.subscribe()
    }

    /// Join `topic`: announce and/or look it up. Resolves once the first announce and
    /// the first lookup round finished (see `JoinReport`). The join is persisted in the
    /// data directory and resumed after a restart.
    pub async fn join(
        &self,
        topic: impl Into<Topic>,
        options: JoinOptions,
    ) -> Result<JoinReport, JoinError> {
        let topic = topic.into();
        let _order = self.inner.join_lock.lock().await;
        let request = self.s().discovery.send(replic8_discovery::Join {
            topic,
            announce: options.announce,
            lookup: options.lookup,
        });
        let report = request.await.map_err(|_| NodeClosed)??;
        self.persist_join(topic, options).await?;
        Ok(report)
    }

    /// Leave `topic`: stop announcing and looking it up (resolves once that is done) and
    /// forget it in the persisted state. Connections that we dialed because this topic's
    /// lookups found them, and that no other joined topic found, are closed (a connection
    /// redialed after a loss counts as the one it replaces, and a redial still pending
    /// for such a peer is cancelled); connections the peers initiated, and those made
    /// with [`connect`](Self::connect), stay.
    pub async fn leave(&self, topic: impl Into<Topic>) -> Result<(), LeaveError> {
        let topic = topic.into();
        let _order = self.inner.join_lock.lock().await;
        self.persist(|state| state.leave(&topic.0)).await?;
        self.s()
            .discovery
            .send(replic8_discovery::Leave { topic })
            .await
            .map_err(|_| NodeClosed)??;
        let _ = self.s().lifecycle.send(TopicLeft(topic)).await;
        self.refresh_topics().await;
        Ok(())
    }

    /// Look for `topic`'s peers at `addr` too: tried now and in every later lookup round
    /// while the topic stays joined (with lookup). For networks with neither DHT nor
    /// multicast, and for tests.
    pub async fn lookup_at(
        &self,
        topic: impl Into<Topic>,
        addr: SocketAddr,
    ) -> Result<(), FlushedError> {
        self.s()
            .discovery
            .send(replic8_discovery::LookupAt {
                topic: topic.into(),
                addr,
            })
            .await
            .map_err(|_| NodeClosed)??;
        Ok(())
    }

    /// Whether `topic` is joined.
    pub async fn joined(&self, topic: impl Into<Topic>) -> Result<bool, NodeClosed> {
        self.s()
            .discovery
            .send(replic8_discovery::Joined {
                topic: topic.into(),
            })
            .await
            .map_err(|_| NodeClosed)
    }

    /// Resolves when every peer found for `topic` since the join was tried (and a lookup
    /// round completed on every backend).
    pub async fn flushed(&self, topic: impl Into<Topic>) -> Result<(), FlushedError> {
        self.s()
            .discovery
            .send(replic8_discovery::WaitFlushed {
                topic: topic.into(),
            })
            .await
            .map_err(|_| NodeClosed)??;
        Ok(())
    }

    /// The joined topics with their state.
    pub async fn topics(&self) -> Result<Vec<replic8_discovery::TopicStatus>, NodeClosed> {
        self.s()
            .discovery
            .send(replic8_discovery::Topics)
            .await
            .map_err(|_| NodeClosed)
    }

    /// The DHT node's counters, tables and peers found per infohash; `None` without a
    /// DHT or with the `mainline` backend.
    pub async fn dht_status(&self) -> Result<Option<replic8_discovery::DhtStatus>, NodeClosed> {
        self.s()
            .discovery
            .send(replic8_discovery::DhtInfo)
            .await
            .map_err(|_| NodeClosed)
    }

    /// Where the node stands behind NATs: public addresses as peers report them, the
    /// NAT's mapping type, reachability by dial-back.
    pub async fn nat_status(&self) -> Result<replic8_connmgr::NatStatus, NodeClosed> {
        self.s()
            .conn
            .addr()
            .send(replic8_connmgr::NatState)
            .await
            .map_err(|_| NodeClosed)
    }

    /// The connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NodeClosed> {
        self.s()
            .conn
            .addr()
            .send(replic8_connmgr::Peers)
            .await
            .map_err(|_| NodeClosed)
    }

    /// Connect to the node at `addr` (with its key pinned if given); resolves with its
    /// key once the connection is up. Leaving topics does not close it.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected_key: Option<PeerKey>,
    ) -> Result<PeerKey, ConnectError> {
        let key = self
            .s()
            .conn
            .addr()
            .send(replic8_connmgr::Dial { addr, expected_key })
            .await
            .map_err(|_| NodeClosed)??;
        let _ = self.s().lifecycle.send(Requested(key)).await;
        Ok(key)
    }

    /// Close the connection to `peer` (close code `CLOSE_REQUESTED`); its session ends.
    /// We do not redial it (a pending redial is cancelled, even when the peer is not
    /// connected now). The peer, if it dialed that connection, treats this like a cut
    /// connection and dials again (see `lifecycle/`); ban it to keep it away.
    pub async fn disconnect(&self, peer: PeerKey) -> Result<(), DisconnectError> {
        // First, so that the close below is not followed by a redial.
        self.s()
            .lifecycle
            .send(CancelRedial { key: peer })
            .await
            .map_err(|_| NodeClosed)?;
        self.s()
            .conn
            .addr()
            .send(replic8_connmgr::Close { key: peer })
            .await
            .map_err(|_| NodeClosed)??;
        Ok(())
    }

    /// The peers whose connection we dialed and lost and that we are dialing again now
    /// (about to dial, dialing, or waiting out a backoff); see `lifecycle/`.
    pub async fn redialing(&self) -> Result<Vec<PeerKey>, NodeClosed> {
        self.s()
            .lifecycle
            .send(Redialing)
            .await
            .map_err(|_| NodeClosed)
    }

    /// The session layer's actor, for stores started elsewhere.
    pub fn sessions(&self) -> &Addr<SessionsActor> {
        &self.s().sessions
    }

    /// Start a custom store inside the node's actor system and register it for
    /// `namespaces` (each with an optional pre-shared secret). `make` runs on the node's
    /// thread and builds the actor; the store's address is returned.
    pub async fn add_store<A, F>(
        &self,
        namespaces: Vec<(String, Option<NamespaceSecret>)>,
        make: F,
    ) -> Result<Addr<A>, AddStoreError>
    where
        A: Actor<Context = Context<A>>
            + Handler<Shares>
            + Handler<KnownFeeds>
            + Handler<Offer>
            + Handler<Attach>
            + Handler<Detach>,
        F: FnOnce(StoreContext) -> A + Send + 'static,
    {
        let context = StoreContext {
            sessions: self.s().sessions.clone(),
        };
        let (tx, rx) = oneshot::channel();
        let job: SystemJob = Box::new(move || {
            let _ = tx.send(make(context).start());
        });
        self.inner.run.send(job).map_err(|_| NodeClosed)?;
        let addr = rx.await.map_err(|_| NodeClosed)?;
        self.register_store(namespaces, StoreRecipients::of(&addr))
            .await?;
        Ok(addr)
    }

    /// Register a store that is already running, by its recipients.
    pub async fn register_store(
        &self,
        namespaces: Vec<(String, Option<NamespaceSecret>)>,
        store: StoreRecipients,
    ) -> Result<(), AddStoreError> {
        self.s()
            .sessions
            .send(RegisterStore { namespaces, store })
            .await
            .map_err(|_| NodeClosed)??;
        Ok(())
    }

    /// Create a new writable feed (a fresh key pair) in the default store.
    pub async fn create_feed(&self) -> Result<FeedKey, FeedError> {
        Ok(self
            .s()
            .feeds
            .create
            .send(replic8::feed_store::CreateFeed)
            .await
            .map_err(|_| NodeClosed)??)
    }

    /// Open a feed the store holds, by key: its length, head and whether we can append.
    pub async fn open_feed(&self, feed: FeedKey) -> Result<FeedInfo, FeedError> {
        Ok(self
            .s()
            .feeds
            .open
            .send(OpenFeed { feed })
            .await
            .map_err(|_| NodeClosed)??)
    }

    /// Append blocks to a writable feed in one signed, durable batch; resolves with the
    /// new length. Peers replicating the feed live get the blocks.
    pub async fn append(&self, feed: FeedKey, blocks: Vec<Vec<u8>>) -> Result<u64, FeedError> {
        Ok(self
            .s()
            .feeds
            .append
            .send(Append { feed, blocks })
            .await
            .map_err(|_| NodeClosed)??)
    }

    /// A preparer of the appends that follow the head of a feed written here: hash and
    /// sign the next batch with it (off the node's threads, e.g. with
    /// `spawn_blocking`) while [`NodeHandle::append_prepared`] writes the one before,
    /// so a stream of batches is hashed while the last one is made durable.
    pub async fn append_preparer(
        &self,
        feed: FeedKey,
    ) -> Result<replic8_store::AppendPreparer, FeedError> {
        Ok(self
            .s()
            .feeds
            .prepare
            .send(PrepareAppends { feed })
            .await
            .map_err(|_| NodeClosed)??)
    }

    /// Append what a preparer made, as [`NodeHandle::append`] does (signed, durable, then
    /// shared); returns the new length. A length other than the append's
    /// [`end`](replic8_store::Prepared::end) means another append came first (the blocks
    /// went after it): ask for a new preparer.
    pub async fn append_prepared(
        &self,
        feed: FeedKey,
        prepared: replic8_store::Prepared,
    ) -> Result<u64, FeedError> {
        Ok(self
            .s()
            .feeds
            .append_prepared
            .send(AppendPrepared { feed, prepared })
            .await
            .map_err(|_| NodeClosed)??)
    }

    /// Read blocks `range.start..range.end` (each must be stored here).
    pub async fn read(
        &self,
        feed: FeedKey,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<Vec<u8>>, FeedError> {
        Ok(self
            .s()
            .feeds
            .read
            .send(ReadRange {
                feed,
                start: range.start,
                end: range.end,
            })
            .await
            .map_err(|_| NodeClosed)??)
    }

    /// Follow a feed's length and stored blocks: appends here and blocks downloaded from
    /// peers.
    pub async fn subscribe_feed(
        &self,
        feed: FeedKey,
    ) -> Result<watch::Receiver<FeedState>, FeedError> {
        Ok(self
            .s()
            .feeds
            .subscribe
            .send(replic8::feed_store::Subscribe { feed })
            .await
            .map_err(|_| NodeClosed)??)
    }

    /// Serve `namespace` with the default feed store: offer what is shared in it, and
    /// accept what peers offer in it as `policy` says (`NamespacePolicy::held_only()`:
    /// only feeds the store holds in it already; `accept_all()`: every feed, forwarded
    /// to the namespace's other peers). The public namespace `""` is always held-only.
    /// Persisted with its policy (a header predicate or a callback is not: the program
    /// opens the namespace again after a restart). A namespace with a secret is offered
    /// only to peers that prove they know it; secrets are not persisted, so such a
    /// namespace must be opened again after a restart. Opening an open namespace again
    /// replaces its policy, and its secret if another is given (on running sessions
    /// too).
    pub async fn open_namespace(
        &self,
        namespace: &str,
        secret: Option<NamespaceSecret>,
        policy: NamespacePolicy,
    ) -> Result<(), FeedError> {
        let public = secret.is_none();
        let persisted = persisted_policy(&policy);
        let mut open = self.s().namespaces.lock().await;
        if open.get(namespace).is_some_and(|old| *old != secret) {
            // Another secret replaces the old one on every session, running or later.
            self.unserve(&mut open, namespace).await?;
        }
        if open.contains_key(namespace) {
            if !namespace.is_empty() {
                self.s()
                    .feeds
                    .set_policy
                    .send(SetNamespacePolicy {
                        namespace: namespace.to_owned(),
                        policy,
                    })
                    .await
                    .map_err(|_| NodeClosed)??;
            }
        } else {
            self.s()
                .feeds
                .serve
                .send(ServeNamespace {
                    namespace: namespace.to_owned(),
                    secret: secret.clone(),
                    policy,
                })
                .await
                .map_err(|_| NodeClosed)??;
            open.insert(namespace.to_owned(), secret);
        }
        drop(open);
        if public {
            self.persist(|state| {
                let new = state.namespace(namespace);
                state.policy(namespace, persisted) || new
            })
            .await?;
        }
        Ok(())
    }

    /// Share a feed the store holds in `namespace` with `headers`: offered to every
    /// connected peer now and to every later one. Persisted: a restart shares it again.
    pub async fn share(
        &self,
        namespace: &str,
        feed: FeedKey,
        headers: Headers,
    ) -> Result<usize, FeedError> {
        // A feed the store does not hold fails here, before anything is registered or
        // persisted: a failed share changes nothing.
        self.open_feed(feed).await?;
        {
            let open = self.s().namespaces.lock().await.contains_key(namespace);
            if !open {
                self.open_namespace(namespace, None, NamespacePolicy::held_only())
                    .await?;
            }
        }
        let offered = self
            .s()
            .feeds
            .share
            .send(ShareFeed {
                namespace: namespace.to_owned(),
                feed,
                headers: headers.clone(),
            })
            .await
            .map_err(|_| NodeClosed)??;
        self.persist(|state| {
            state.share(PersistedShare {
                namespace: namespace.to_owned(),
                feed: feed.0,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_vec()))
                    .collect(),
            })
        })
        .await?;
        Ok(offered)
    }

    /// Join a feed's discovery key (what goes on the DHT reveals nothing of the key).
    pub async fn join_feed(
        &self,
        feed: FeedKey,
        options: JoinOptions,
    ) -> Result<JoinReport, JoinError> {
        self.join(Topic(feed.discovery_key().0), options).await
    }

    /// Leave a feed's discovery key.
    pub async fn leave_feed(&self, feed: FeedKey) -> Result<(), LeaveError> {
        self.leave(Topic(feed.discovery_key().0)).await
    }

    /// The default store's counters (blocks and bytes in and out, streams).
    pub async fn feed_stats(&self) -> Result<FeedStoreStats, NodeClosed> {
        self.s()
            .feeds
            .stats
            .send(GetStats)
            .await
            .map_err(|_| NodeClosed)
    }

    /// The sessions' counters summed over every session since the node started (feeds
    /// sent and received whole).
    pub async fn session_totals(&self) -> Result<SessionTotals, NodeClosed> {
        self.s()
            .sessions
            .send(GetSessionTotals)
            .await
            .map_err(|_| NodeClosed)
    }

    /// How many of the connection manager's tasks are alive: 0 after `close`.
    pub fn live_tasks(&self) -> usize {
        self.s().conn.live_tasks()
    }

    /// Shut the node down, in order: stop dialing and accepting; end every session
    /// (each peer is told why); leave every topic (LAN advertisements withdrawn, DHT
    /// work cancelled); close every connection and the QUIC endpoint; stop the metrics
    /// endpoint; stop the actor system and wait for its thread to end. Closing a closed
    /// node does nothing. Persisted joins stay: a restart resumes them.
    pub async fn close(&self) {
        let mut exited = self.inner.exited.lock().await;
        let Some(exited_rx) = exited.take() else {
            return;
        };
        let s = self.s();
        let mut events = s.events.subscribe();
        let _ = s.lifecycle.send(BeginClose).await;
        // Sessions first, so each peer hears why.
        if let Ok(peers) = s.sessions.send(ListSessions).await {
            let mut open: std::collections::HashSet<PeerKey> = peers.iter().copied().collect();
            for peer in peers {
                s.sessions.do_send(StopSession {
                    peer,
                    reason: "node closing".into(),
                });
            }
            let wait = async {
                while !open.is_empty() {
                    match events.recv().await {
                        Ok(NodeEvent::SessionEnded { peer, .. }) => {
                            open.remove(&peer);
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            };
            if tokio::time::timeout(SESSION_CLOSE_GUARD, wait)
                .await
                .is_err()
            {
                warn!("sessions did not end in time; closing their connections");
            }
        }
        let _ = s.discovery.send(replic8_discovery::Close).await;
        s.conn.close().await;
        if let Ok(mut metrics) = s.metrics.lock() {
            if let Some(m) = metrics.take() {
                m.close();
            }
        }
        if let Ok(mut stop) = self.inner.stop.lock() {
            if let Some(stop) = stop.take() {
                let _ = stop.send(());
            }
        }
        let _ = exited_rx.await;
        info!(me = %self.key().fmt_short(), "node closed");
    }

    /// Apply `change` to the persisted state and save it if it changed (no-op in memory).
    pub(super) async fn persist(
        &self,
        change: impl FnOnce(&mut PersistedState) -> bool,
    ) -> Result<(), PersistError> {
        let mut state = self.s().state.lock().await;
        if !change(&mut state) {
            return Ok(());
        }
        let Some(dir) = self.s().data_dir.clone() else {
            return Ok(());
        };
        let snapshot = state.clone();
        tokio::task::spawn_blocking(move || snapshot.save(&dir))
            .await
            .map_err(|e| PersistError::Io {
                path: PathBuf::from(persist::STATE_FILE),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    pub(super) async fn refresh_topics(&self) {
        if let Ok(topics) = self.topics().await {
            self.s().counters.topics.set(topics.len() as u64);
        }
    }

    /// The persisted joins (what a restart resumes).
    pub async fn persisted(&self) -> PersistedState {
        self.s().state.lock().await.clone()
    }
}

/// A closure run inside the node's actix system (to start actors there).
pub(super) type SystemJob = Box<dyn FnOnce() + Send>;

/// The running node's parts, shared by every clone of the handle.
#[derive(Debug)]
pub(super) struct Started {
    pub(super) conn: ConnManagerHandle,
    pub(super) discovery: Addr<DiscoveryActor>,
    pub(super) sessions: Addr<SessionsActor>,
    pub(super) lifecycle: Addr<LifecycleActor>,
    pub(super) feeds: FeedStoreRecipients,
    /// Namespaces the feed store is registered for, with their secret.
    pub(super) namespaces:
        tokio::sync::Mutex<std::collections::HashMap<String, Option<NamespaceSecret>>>,
    /// The policies of the namespaces the builder (the config) opens at every start.
    pub(super) config_namespaces: std::collections::HashMap<String, NamespaceSpec>,
    /// The recent offers of peers.
    pub(super) offers: Arc<Mutex<namespace_types::OfferLog>>,
    /// Each offered feed's decision as it happens.
    pub(super) offer_events: broadcast::Sender<OfferRecord>,
    pub(super) events: broadcast::Sender<NodeEvent>,
    pub(super) counters: Arc<Counters>,
    /// Which peers have each feed, and how far.
    pub(super) feed_peers: Arc<Mutex<FeedPeers>>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) state: tokio::sync::Mutex<PersistedState>,
    pub(super) metrics: Mutex<Option<MetricsEndpoint>>,
    pub(super) metrics_addr: Option<SocketAddr>,
}

/// The store policy of a persisted one.
pub(super) fn policy_of(p: PersistedPolicy) -> NamespacePolicy {
    NamespacePolicy {
        accept: if p.accept_all {
            AcceptPolicy::All
        } else {
            AcceptPolicy::HeldOnly
        },
        forward: p.forward,
    }
}

/// What of `policy` can be persisted: `None` for held-only without forwarding (the
/// default) and for the kinds that live in the program (a predicate, a callback).
pub(super) fn persisted_policy(policy: &NamespacePolicy) -> Option<PersistedPolicy> {
    let accept_all = match policy.accept {
        AcceptPolicy::All => true,
        AcceptPolicy::HeldOnly => false,
        // A manual, headers-match or none policy is persisted by `open_namespace_spec`.
        AcceptPolicy::None
        | AcceptPolicy::HeadersMatch(_)
        | AcceptPolicy::Manual
        | AcceptPolicy::Headers(_)
        | AcceptPolicy::Callback(_) => return None,
    };
    (accept_all || policy.forward).then_some(PersistedPolicy {
        accept_all,
        forward: policy.forward,
    })
}
