//! [`FeedStore`]: the default store, holding signed append-only feeds of `replic8-store`
//! and replicating them with its sync core on the feed streams the session layer hands
//! it.
//!
//! The actor is a thin shell. It keeps what is shared in which namespace
//! (with headers) and which namespaces each feed belongs to (`membership.rs`), decides
//! offers by the namespace's [`NamespacePolicy`] and the [`FeedStoreLimits`] quotas
//! (`policy.rs`; a new accepted feed is created here as a replica and, under a
//! forwarding policy, shared with the namespace's other sessions except the peer it
//! came from; the session layer skips peers known to have it), and starts one stream
//! driver per [`Attach`] (see `stream.rs`).
//!
//! Invariants:
//! - a feed is accepted, announced ([`KnownFeeds`]), offered ([`Shares`]) and served
//!   ([`Attach`]) in a namespace only if it belongs to that namespace here; a peer's offer
//!   never adds a namespace to a feed held here;
//! - the public namespace `""` accepts only feeds that belong to it and forwards
//!   nothing, whatever the config says; a refused offer is left out of the answer, never
//!   an error;
//! - no handler hashes, verifies or touches storage: feed opening, appends, reads and
//!   every call into a sync core run on tokio's blocking pool, with the feed behind its
//!   own mutex, so the feeds of one store replicate on every core;
//! - one [`FeedSync`](replic8_store::FeedSync) per (feed, peer stream); after any change
//!   of a feed's length or stored blocks, the feed's other cores get
//!   `handle_feed_update` (through [`FeedState`] on a `watch` channel), and the session
//!   layer gets [`FeedUpdated`] when the length moved (it reopens closed streams);
//! - a stream reports [`FeedSynced`](crate::store::FeedSynced) only when its core is
//!   synced and the feed holds every block up to its length, so a stream to a peer that
//!   lacks blocks another peer is still bringing stays open until they are here;
//! - every task of a stream is owned and aborted when the stream ends, is replaced or
//!   the store stops; every queue of a stream is bounded;
//! - a peer that sends anything that does not verify ends its session
//!   ([`FeedFailed`](crate::store::FeedFailed)); nothing from the failed message is
//!   stored (the feed verifies before it writes).

mod manual;
mod membership;
mod messages;
mod policy;
mod pool;
mod stream;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, ResponseActFuture, ResponseFuture,
    WrapFuture,
};
use dashmap::DashMap;
use replic8_store::storage::{DiskStorage, FeedStorage, MemoryStorage, Storage, StorageError};
use replic8_store::{Feed, FeedSecret, OpenError, SyncConfig};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::AbortOnDropHandle;
use tracing::warn;

pub use membership::{MembershipError, MEMBERSHIP_FILE};
pub use messages::*;
pub use policy::*;

use crate::actor::SessionsActor;
use crate::keys::{FeedKey, NamespaceSecret, PeerKey};
use crate::message::Headers;
use crate::session::StreamId;
use crate::store::{
    Attach, Detach, FeedUpdated, KnownFeeds, Offer, RegisterError, RegisterStore, Share,
    SharedFeed, Shares, StoreError, StoreRecipients,
};
use membership::{Member, MembershipFile};

/// How a [`FeedStore`] behaves.
#[derive(Debug, Clone)]
pub struct FeedStoreConfig {
    /// The sync core's settings for every feed stream (want everything, live, by
    /// default).
    pub sync: SyncConfig,
    /// Which offers to accept in a namespace with no policy of its own (in
    /// [`Self::namespaces`] or given by [`ServeNamespace`]). Default: only feeds held in
    /// the namespace. Never applies to the public namespace `""`.
    pub accept: AcceptPolicy,
    /// Whether feeds accepted in a namespace with no policy of its own are forwarded.
    /// Default: no.
    pub forward: bool,
    /// The policy of each namespace that has its own. An entry for `""` is ignored: the
    /// public namespace accepts only feeds held in it and forwards nothing.
    pub namespaces: HashMap<String, NamespacePolicy>,
    /// Quotas and bounds.
    pub limits: FeedStoreLimits,
}

impl Default for FeedStoreConfig {
    fn default() -> Self {
        FeedStoreConfig {
            sync: SyncConfig::default(),
            accept: AcceptPolicy::HeldOnly,
            forward: false,
            namespaces: HashMap::new(),
            limits: FeedStoreLimits::default(),
        }
    }
}

/// One open feed, shared by the actor, its sync cores and the blocking pool.
#[derive(Debug)]
pub(crate) struct FeedEntry<F: FeedStorage> {
    feed: Mutex<Feed<F>>,
    state: watch::Sender<FeedState>,
}

impl<F: FeedStorage> FeedEntry<F> {
    fn new(feed: Feed<F>) -> Self {
        let state = FeedState {
            length: feed.length(),
            stored: feed.stored_count(),
            version: 0,
        };
        FeedEntry {
            feed: Mutex::new(feed),
            state: watch::Sender::new(state),
        }
    }

    /// The feed; a panic in another holder leaves it usable (the feed's invariants
    /// hold between its calls).
    fn lock(&self) -> MutexGuard<'_, Feed<F>> {
        self.feed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells subscribers and the feed's other cores that it changed; returns the new
    /// version.
    fn publish(&self, feed: &Feed<F>) -> u64 {
        let mut version = 0;
        self.state.send_modify(|s| {
            s.length = feed.length();
            s.stored = feed.stored_count();
            s.version += 1;
            version = s.version;
        });
        version
    }

    fn info(&self) -> FeedInfo {
        let feed = self.lock();
        FeedInfo {
            key: FeedKey::from(*feed.key()),
            writable: feed.is_writable(),
            length: feed.length(),
            stored: feed.stored_count(),
            byte_length: feed.byte_length(),
            head: feed.head().copied(),
        }
    }
}

/// The open feeds of a storage. Its methods block (storage I/O): call them on the
/// blocking pool. Every stream task and the actor look feeds up here at once, so the
/// map is sharded (`DashMap`): lookups of different feeds do not wait on one lock.
#[derive(Debug)]
struct Registry<St: Storage> {
    storage: St,
    open: DashMap<FeedKey, Arc<FeedEntry<St::Feed>>>,
}

impl<St: Storage> Registry<St> {
    /// The feed `key`, opened from storage if needed; with `replica`, created empty if
    /// the storage does not hold it. Storage work runs without the map's lock, so feeds
    /// open in parallel; when two callers race, both get the entry that went in first.
    fn get(&self, key: FeedKey, replica: bool) -> Result<Arc<FeedEntry<St::Feed>>, FeedStoreError> {
        if let Some(entry) = self.open.get(&key) {
            return Ok(entry.clone());
        }
        let store_key = replic8_store::FeedKey::try_from(key)?;
        let feed = match Feed::open(&self.storage, &store_key)? {
            Some(feed) => feed,
            None if replica => match Feed::create_replica(&self.storage, store_key) {
                Ok(feed) => feed,
                // Created by a racing caller meanwhile.
                Err(OpenError::Storage(StorageError::Exists)) => {
                    Feed::open(&self.storage, &store_key)?
                        .ok_or_else(|| FeedStoreError::NotFound(key.fmt_short()))?
                }
                Err(e) => return Err(e.into()),
            },
            None => return Err(FeedStoreError::NotFound(key.fmt_short())),
        };
        Ok(self
            .open
            .entry(key)
            .or_insert_with(|| Arc::new(FeedEntry::new(feed)))
            .clone())
    }

    fn create(&self) -> Result<FeedKey, FeedStoreError> {
        let feed = Feed::create(&self.storage, FeedSecret::generate())?;
        let key = FeedKey::from(*feed.key());
        self.open.insert(key, Arc::new(FeedEntry::new(feed)));
        Ok(key)
    }
}

/// A running feed stream: how to stop it, and its task (aborted when the handle is
/// dropped, so a stream replaced or forgotten frees what it held).
#[derive(Debug)]
struct StreamHandle {
    stop: Option<oneshot::Sender<()>>,
    task: AbortOnDropHandle<()>,
}

#[derive(Debug, Default)]
struct Counters {
    blocks_in: AtomicU64,
    bytes_in: AtomicU64,
    blocks_out: AtomicU64,
    bytes_out: AtomicU64,
    streams: AtomicU64,
    streams_failed: AtomicU64,
    refused_policy: AtomicU64,
    refused_namespace: AtomicU64,
    refused_quota: AtomicU64,
    /// Stream tasks alive (drivers, readers, writers).
    tasks: Arc<AtomicU64>,
}

/// What the stream tasks share with the actor.
#[derive(Debug)]
pub(crate) struct Shared {
    sessions: Addr<SessionsActor>,
    events: Option<mpsc::UnboundedSender<FeedStoreEvent>>,
    stats: Counters,
    streams: Mutex<HashMap<(PeerKey, StreamId), StreamHandle>>,
    /// Frame buffers every stream of this store reuses.
    pool: Arc<pool::BufferPool>,
    /// How long a detached stream may take to send what it queued.
    flush_timeout: std::time::Duration,
}

impl Shared {
    fn event(&self, event: FeedStoreEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    fn stream_done(&self, peer: PeerKey, id: StreamId) {
        let done = self
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(peer, id));
        // The caller is that stream's own task, about to return: do not abort it.
        if let Some(handle) = done {
            drop(handle.task.detach());
        }
    }

    /// A guard counting one live stream task until it is dropped.
    fn task_guard(&self) -> stream::TaskGuard {
        stream::TaskGuard::new(self.stats.tasks.clone())
    }
}

/// Where a storage lets its feed store keep the namespaces of its feeds.
pub trait MembershipHome {
    /// The membership file's path, or `None` to keep membership in memory only.
    fn membership_path(&self) -> Option<PathBuf>;
}

impl MembershipHome for DiskStorage {
    /// A file next to the feeds, in the storage's directory.
    fn membership_path(&self) -> Option<PathBuf> {
        Some(self.root().join(membership::MEMBERSHIP_FILE))
    }
}

impl MembershipHome for MemoryStorage {
    /// In memory, with the feeds.
    fn membership_path(&self) -> Option<PathBuf> {
        None
    }
}

/// The default store. See the module documentation.
#[derive(Debug)]
pub struct FeedStore<St: Storage> {
    registry: Arc<Registry<St>>,
    shared: Arc<Shared>,
    config: FeedStoreConfig,
    /// Per namespace: what is offered there to every session, with headers (the feeds
    /// shared there, and those accepted there under a policy that forwards).
    namespaces: HashMap<String, BTreeMap<FeedKey, Headers>>,
    /// Per namespace: the policies given by [`ServeNamespace`] or [`SetNamespacePolicy`].
    policies: HashMap<String, NamespacePolicy>,
    /// Every feed the storage holds.
    held: HashSet<FeedKey>,
    /// The namespaces of the held feeds (a held feed without an entry is in none).
    members: HashMap<FeedKey, Member>,
    /// Where `members` is kept, for a disk store.
    membership_file: Option<Arc<MembershipFile>>,
    /// Snapshots of `members` taken so far.
    generation: u64,
    /// Changes of `members` so far (to tell whether an offer changed anything).
    member_changes: u64,
    quotas: Quotas,
    /// Feeds waiting for the user's decision, and decisions remembered.
    manual: manual::ManualQueue,
}

impl FeedStore<DiskStorage> {
    /// A store over the disk storage in `dir` (the default). Lists the feeds there.
    pub fn open_disk(
        dir: impl AsRef<Path>,
        config: FeedStoreConfig,
        sessions: Addr<SessionsActor>,
        events: Option<mpsc::UnboundedSender<FeedStoreEvent>>,
    ) -> Result<Self, FeedStoreError> {
        FeedStore::new(DiskStorage::open(dir)?, config, sessions, events)
    }
}

impl FeedStore<MemoryStorage> {
    /// A store that keeps its feeds in memory.
    pub fn in_memory(
        config: FeedStoreConfig,
        sessions: Addr<SessionsActor>,
        events: Option<mpsc::UnboundedSender<FeedStoreEvent>>,
    ) -> Self {
        FeedStore::with_feeds(
            MemoryStorage::new(),
            HashSet::new(),
            HashMap::new(),
            None,
            config,
            sessions,
            events,
        )
    }
}

impl<St: Storage> FeedStore<St> {
    /// A store over `storage`, reporting to the session layer `sessions`; its events go
    /// to `events`, if given. Lists the feeds the storage holds and reads their
    /// namespaces (this blocks: call it before starting the actor, not in a handler).
    /// Start and register it with [`FeedStore::start_registered`] (or send
    /// [`ServeNamespace`] for each namespace).
    pub fn new(
        storage: St,
        config: FeedStoreConfig,
        sessions: Addr<SessionsActor>,
        events: Option<mpsc::UnboundedSender<FeedStoreEvent>>,
    ) -> Result<Self, FeedStoreError>
    where
        St: MembershipHome,
    {
        let held: HashSet<FeedKey> = storage.list()?.into_iter().map(FeedKey).collect();
        let file = storage
            .membership_path()
            .map(|p| Arc::new(MembershipFile::new(p)));
        let mut members = match &file {
            Some(f) => f.load()?,
            None => HashMap::new(),
        };
        // A feed whose replica creation was cut short is not held: forget it.
        members.retain(|key, _| held.contains(key));
        Ok(FeedStore::with_feeds(
            storage, held, members, file, config, sessions, events,
        ))
    }

    fn with_feeds(
        storage: St,
        held: HashSet<FeedKey>,
        members: HashMap<FeedKey, Member>,
        membership_file: Option<Arc<MembershipFile>>,
        config: FeedStoreConfig,
        sessions: Addr<SessionsActor>,
        events: Option<mpsc::UnboundedSender<FeedStoreEvent>>,
    ) -> Self {
        if config.namespaces.contains_key("") {
            warn!("a policy for the public namespace is ignored: it accepts only held feeds");
        }
        let replicas = members.values().filter(|m| m.replica).count() as u64;
        FeedStore {
            registry: Arc::new(Registry {
                storage,
                open: DashMap::new(),
            }),
            shared: Arc::new(Shared {
                sessions,
                events,
                stats: Counters::default(),
                streams: Mutex::new(HashMap::new()),
                pool: Arc::default(),
                flush_timeout: config.limits.flush_timeout,
            }),
            quotas: Quotas::new(config.limits.clone(), replicas),
            manual: manual::ManualQueue::new(
                config.limits.manual_waiting_per_peer,
                config.limits.manual_waiting,
            ),
            config,
            namespaces: HashMap::new(),
            policies: HashMap::new(),
            held,
            members,
            membership_file,
            generation: 0,
            member_changes: 0,
        }
    }

    /// Starts the store and registers it with its session layer for `namespaces` (each
    /// with its secret, if any), each under its policy in the config.
    pub async fn start_registered(
        self,
        namespaces: Vec<(String, Option<NamespaceSecret>)>,
    ) -> Result<Addr<Self>, RegisterError> {
        let sessions = self.shared.sessions.clone();
        let addr = self.start();
        sessions
            .send(RegisterStore {
                namespaces,
                store: StoreRecipients::of(&addr),
            })
            .await
            .map_err(|_| RegisterError::Closing)??;
        Ok(addr)
    }

    /// The policy of `namespace`: its own, else the config's default; always held-only
    /// for the public namespace.
    fn policy(&self, namespace: &str) -> NamespacePolicy {
        if namespace.is_empty() {
            return NamespacePolicy::held_only();
        }
        self.policies
            .get(namespace)
            .or_else(|| self.config.namespaces.get(namespace))
            .cloned()
            .unwrap_or_else(|| NamespacePolicy {
                accept: self.config.accept.clone(),
                forward: self.config.forward,
            })
    }

    /// Whether `feed` belongs to `namespace` here.
    fn is_member(&self, feed: &FeedKey, namespace: &str) -> bool {
        self.members.get(feed).is_some_and(|m| m.is_in(namespace))
    }

    /// Writes the current membership (a disk store; nothing otherwise). Resolves once
    /// it is durable; a failure is logged (the feeds then keep their namespaces until
    /// the store stops).
    fn persist(&mut self) -> impl std::future::Future<Output = ()> + 'static {
        let job = self.membership_file.clone().map(|file| {
            self.generation += 1;
            (file, self.generation, self.members.clone())
        });
        async move {
            let Some((file, generation, snapshot)) = job else {
                return;
            };
            let written = tokio::task::spawn_blocking(move || {
                let bytes = membership::encode(&snapshot)
                    .map_err(|what| format!("could not encode: {what}"))?;
                file.write(generation, &bytes).map_err(|e| e.to_string())
            })
            .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "feed namespaces not saved"),
                Err(e) => warn!(error = %e, "feed namespaces not saved"),
            }
        }
    }

    /// Runs `f` with the registry on the blocking pool.
    fn blocking<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T, FeedStoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&Registry<St>) -> Result<T, FeedStoreError> + Send + 'static,
    {
        let registry = self.registry.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&registry))
                .await
                .map_err(|e| FeedStoreError::Worker(e.to_string()))?
        }
    }

    /// Decides the feeds of an offer that are new in `namespace`, after their keys were
    /// checked: within the quotas they become replicas, members of the namespace, and
    /// (under a forwarding policy) are forwarded. Returns the accepted keys.
    fn admit(
        &mut self,
        peer: PeerKey,
        namespace: &str,
        new: Vec<SharedFeed>,
        policy: &NamespacePolicy,
        refused: &mut Refusals,
    ) -> Vec<FeedKey> {
        let mut accepted = Vec::with_capacity(new.len());
        let mut candidates = Vec::with_capacity(new.len());
        for feed in new {
            // Another offer may have brought it meanwhile.
            match self.members.get(&feed.key) {
                Some(m) if m.is_in(namespace) => {
                    self.decided(peer, namespace, &feed, OfferDecision::Held);
                    accepted.push(feed.key);
                }
                Some(m) if m.in_any() => {
                    self.decided(peer, namespace, &feed, OfferDecision::RefusedElsewhere);
                    refused.elsewhere += 1;
                }
                _ => candidates.push(feed),
            }
        }
        let offered = candidates.clone();
        let (admitted, over) = self.quotas.admit(peer, candidates, Instant::now());
        refused.quota += over;
        if over > 0 {
            let taken: HashSet<FeedKey> = admitted.iter().map(|f| f.key).collect();
            for feed in offered.iter().filter(|f| !taken.contains(&f.key)) {
                self.decided(peer, namespace, feed, OfferDecision::RefusedQuota);
            }
        }
        let mut forward = Vec::new();
        let mut create = Vec::new();
        for feed in admitted {
            self.decided(peer, namespace, &feed, OfferDecision::Accepted);
            accepted.push(feed.key);
            self.members.insert(feed.key, Member::accepted(namespace));
            self.member_changes += 1;
            if self.held.insert(feed.key) {
                create.push(feed.key);
            }
            self.shared.event(FeedStoreEvent::Accepted {
                namespace: namespace.to_owned(),
                feed: feed.key,
                peer,
            });
            if policy.forward {
                self.namespaces
                    .entry(namespace.to_owned())
                    .or_default()
                    .insert(feed.key, feed.headers.clone());
                forward.push(feed);
            }
        }
        if !create.is_empty() {
            let registry = self.registry.clone();
            tokio::task::spawn_blocking(move || {
                for key in create {
                    if let Err(e) = registry.get(key, true) {
                        warn!(feed = %key.fmt_short(), error = %e, "could not create replica");
                    }
                }
            });
        }
        if !forward.is_empty() {
            self.shared.sessions.do_send(Share {
                namespace: namespace.to_owned(),
                feeds: forward,
                peers: None,
                except: Some(peer),
            });
        }
        accepted
    }
}

impl<St: Storage> FeedStore<St> {
    /// Reports what became of one offered feed.
    fn decided(&self, peer: PeerKey, namespace: &str, feed: &SharedFeed, decision: OfferDecision) {
        self.shared.event(FeedStoreEvent::OfferDecided {
            namespace: namespace.to_owned(),
            peer,
            feed: feed.key,
            headers: feed.headers.clone(),
            decision,
        });
    }

    /// Splits the new feeds of an offer in a namespace with the manual policy: those
    /// the user decided already (accepted ones are returned, rejected ones refused),
    /// and the others, put to the user (within the bounds; past them, refused). Returns
    /// the accepted feeds and the waits.
    fn put_to_user(
        &mut self,
        peer: PeerKey,
        namespace: &str,
        new: Vec<SharedFeed>,
        refused: &mut Refusals,
    ) -> (Vec<SharedFeed>, Vec<(SharedFeed, manual::Wait)>) {
        let mut now = Vec::new();
        let mut waits = Vec::new();
        for feed in new {
            match self.manual.decided(namespace, &feed.key) {
                Some(true) => now.push(feed),
                Some(false) => {
                    self.decided(peer, namespace, &feed, OfferDecision::Rejected);
                    refused.policy += 1;
                }
                None => match self.manual.wait(peer, namespace, feed.key) {
                    Some(wait) => {
                        self.decided(peer, namespace, &feed, OfferDecision::Waiting);
                        waits.push((feed, wait));
                    }
                    None => {
                        self.decided(peer, namespace, &feed, OfferDecision::RefusedQuota);
                        refused.quota += 1;
                    }
                },
            }
        }
        (now, waits)
    }

    /// Counts and reports the feeds of one offer that were refused.
    fn refused(&self, peer: PeerKey, namespace: String, refused: Refusals) {
        if refused == Refusals::default() {
            return;
        }
        let s = &self.shared.stats;
        s.refused_policy
            .fetch_add(refused.policy, Ordering::Relaxed);
        s.refused_namespace
            .fetch_add(refused.elsewhere, Ordering::Relaxed);
        s.refused_quota.fetch_add(refused.quota, Ordering::Relaxed);
        self.shared.event(FeedStoreEvent::Refused {
            namespace,
            peer,
            refused,
        });
    }
}

impl<St: Storage> Actor for FeedStore<St> {
    type Context = Context<Self>;

    /// Stops every feed stream.
    fn stopped(&mut self, _: &mut Context<Self>) {
        // Dropping the handles aborts the tasks.
        drop(std::mem::take(
            &mut *self
                .shared
                .streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        ));
    }
}

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

impl<St: Storage> Handler<Offer> for FeedStore<St> {
    type Result = ResponseActFuture<Self, Result<Vec<FeedKey>, StoreError>>;

    /// Feeds that belong to the namespace are accepted; feeds held only in other
    /// namespaces are refused; others go through the namespace's policy, then their keys
    /// are checked to be ed25519 points on the blocking pool, then (under the manual
    /// policy) wait for the user's decision, then the quotas. Refusing is not an error:
    /// the answer just leaves the feed out. The answer waits until the new feeds'
    /// namespaces are durable; their replicas are created in the background (or by
    /// their first stream, whichever comes first), so creating a thousand feeds on disk
    /// does not hold it up.
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
            ..
        } = msg;
        let registry = self.registry.clone();
        let shared = self.shared.clone();
        let ctx = stream::StreamContext {
            feed,
            peer,
            id,
            config: self.config.sync.clone(),
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
        let sessions = self.shared.sessions.clone();
        let feed = msg.feed;
        let appended = self.blocking(move |registry| {
            let entry = registry.get(msg.feed, false)?;
            let mut f = entry.lock();
            let length = f.append_batch(&msg.blocks)?;
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
        if !self.held.contains(&msg.feed) {
            let feed = msg.feed.fmt_short();
            return Box::pin(async move { Err(FeedStoreError::NotFound(feed)) });
        }
        if let Err(e) = msg.headers.check() {
            return Box::pin(async move { Err(e.into()) });
        }
        self.namespaces
            .entry(msg.namespace.clone())
            .or_default()
            .insert(msg.feed, msg.headers.clone());
        // Sharing again (the node does at every start) writes nothing.
        let changed = self
            .members
            .entry(msg.feed)
            .or_default()
            .share(&msg.namespace);
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
            refused_policy: s.refused_policy.load(Ordering::Relaxed),
            refused_namespace: s.refused_namespace.load(Ordering::Relaxed),
            refused_quota: s.refused_quota.load(Ordering::Relaxed),
            replicas: self.quotas.replicas(),
            stream_tasks: s.tasks.load(Ordering::Relaxed),
            offers_waiting: self.manual.waiting() as u64,
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
        self.policies.insert(msg.namespace, msg.policy);
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
        let register = self.shared.sessions.send(RegisterStore {
            namespaces: vec![(namespace.clone(), secret)],
            store: StoreRecipients::of(&ctx.address()),
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
