//! [`FeedStore`]: the default store, holding signed append-only feeds of `replic8-store`
//! and replicating them with its sync core on the feed streams the session layer hands
//! it.
//!
//! The actor is a thin shell (STYLE.md §2). It keeps what is shared in which namespace
//! (with headers), decides offers by its [`AcceptPolicy`] (a new accepted feed is
//! created here as a replica and forwarded: shared with the namespace's other sessions,
//! except the peer it came from; the session layer skips peers known to have it), and
//! starts one stream driver per [`Attach`] (see `stream.rs`).
//!
//! Invariants:
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
//! - a peer that sends anything that does not verify ends its session
//!   ([`FeedFailed`](crate::store::FeedFailed)); nothing from the failed message is
//!   stored (the feed verifies before it writes).

mod messages;
mod pool;
mod stream;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use actix::{
    Actor, ActorFutureExt, Addr, Context, Handler, ResponseActFuture, ResponseFuture, WrapFuture,
};
use replic8_store::storage::{DiskStorage, FeedStorage, MemoryStorage, Storage, StorageError};
use replic8_store::{Feed, FeedSecret, OpenError, SyncConfig};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

pub use messages::*;

use crate::actor::SessionsActor;
use crate::keys::{FeedKey, NamespaceSecret, PeerKey};
use crate::message::Headers;
use crate::session::StreamId;
use crate::store::{
    Attach, Detach, FeedUpdated, KnownFeeds, Offer, RegisterError, RegisterStore, Share,
    SharedFeed, Shares, StoreError, StoreRecipients,
};

/// A callback deciding an offered feed, given the peer, the namespace and the feed.
pub type AcceptFn = dyn Fn(&PeerKey, &str, &SharedFeed) -> bool + Send + Sync;
/// A predicate on an offered feed's headers.
pub type HeadersFn = dyn Fn(&Headers) -> bool + Send + Sync;

/// Which offered feeds the store accepts (feeds it holds already are always accepted).
#[derive(Clone, Default)]
pub enum AcceptPolicy {
    /// Every offered feed.
    #[default]
    All,
    /// None that the store does not hold already.
    HeldOnly,
    /// Those whose headers pass the predicate.
    Headers(Arc<HeadersFn>),
    /// Those the callback accepts, given the peer, the namespace and the feed.
    Callback(Arc<AcceptFn>),
}

impl std::fmt::Debug for AcceptPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AcceptPolicy::All => "All",
            AcceptPolicy::HeldOnly => "HeldOnly",
            AcceptPolicy::Headers(_) => "Headers(..)",
            AcceptPolicy::Callback(_) => "Callback(..)",
        })
    }
}

impl AcceptPolicy {
    fn accepts(&self, peer: &PeerKey, namespace: &str, feed: &SharedFeed) -> bool {
        match self {
            AcceptPolicy::All => true,
            AcceptPolicy::HeldOnly => false,
            AcceptPolicy::Headers(p) => p(&feed.headers),
            AcceptPolicy::Callback(c) => c(peer, namespace, feed),
        }
    }
}

/// How a [`FeedStore`] behaves.
#[derive(Debug, Clone)]
pub struct FeedStoreConfig {
    /// The sync core's settings for every feed stream (want everything, live, by
    /// default).
    pub sync: SyncConfig,
    /// Which offers to accept.
    pub accept: AcceptPolicy,
    /// Share feeds accepted from one peer with the namespace's other sessions.
    pub forward: bool,
}

impl Default for FeedStoreConfig {
    fn default() -> Self {
        FeedStoreConfig {
            sync: SyncConfig::default(),
            accept: AcceptPolicy::All,
            forward: true,
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
/// blocking pool.
#[derive(Debug)]
struct Registry<St: Storage> {
    storage: St,
    open: Mutex<HashMap<FeedKey, Arc<FeedEntry<St::Feed>>>>,
}

impl<St: Storage> Registry<St> {
    /// The feed `key`, opened from storage if needed; with `replica`, created empty if
    /// the storage does not hold it. Storage work runs without the map's lock, so feeds
    /// open in parallel; when two callers race, both get the entry that went in first.
    fn get(&self, key: FeedKey, replica: bool) -> Result<Arc<FeedEntry<St::Feed>>, FeedStoreError> {
        if let Some(entry) = self.lock_open().get(&key) {
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
            .lock_open()
            .entry(key)
            .or_insert_with(|| Arc::new(FeedEntry::new(feed)))
            .clone())
    }

    fn lock_open(&self) -> MutexGuard<'_, HashMap<FeedKey, Arc<FeedEntry<St::Feed>>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn create(&self) -> Result<FeedKey, FeedStoreError> {
        let feed = Feed::create(&self.storage, FeedSecret::generate())?;
        let key = FeedKey::from(*feed.key());
        self.lock_open().insert(key, Arc::new(FeedEntry::new(feed)));
        Ok(key)
    }
}

/// A running feed stream: how to stop it, and its task.
#[derive(Debug)]
struct StreamHandle {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Counters {
    blocks_in: AtomicU64,
    bytes_in: AtomicU64,
    blocks_out: AtomicU64,
    bytes_out: AtomicU64,
    streams: AtomicU64,
    streams_failed: AtomicU64,
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
}

impl Shared {
    fn event(&self, event: FeedStoreEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    fn stream_done(&self, peer: PeerKey, id: StreamId) {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(peer, id));
    }
}

/// The default store. See the module documentation.
#[derive(Debug)]
pub struct FeedStore<St: Storage> {
    registry: Arc<Registry<St>>,
    shared: Arc<Shared>,
    config: FeedStoreConfig,
    /// Per namespace: the feeds shared or accepted there, with their headers.
    namespaces: HashMap<String, BTreeMap<FeedKey, Headers>>,
    /// Every feed the storage holds.
    held: HashSet<FeedKey>,
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
            config,
            sessions,
            events,
        )
    }
}

impl<St: Storage> FeedStore<St> {
    /// A store over `storage`, reporting to the session layer `sessions`; its events go
    /// to `events`, if given. Lists the feeds the storage holds (this blocks: call it
    /// before starting the actor, not in a handler). Start and register it with
    /// [`FeedStore::start_registered`] (or send [`RegisterStore`] yourself).
    pub fn new(
        storage: St,
        config: FeedStoreConfig,
        sessions: Addr<SessionsActor>,
        events: Option<mpsc::UnboundedSender<FeedStoreEvent>>,
    ) -> Result<Self, FeedStoreError> {
        let held = storage.list()?.into_iter().map(FeedKey).collect();
        Ok(FeedStore::with_feeds(
            storage, held, config, sessions, events,
        ))
    }

    fn with_feeds(
        storage: St,
        held: HashSet<FeedKey>,
        config: FeedStoreConfig,
        sessions: Addr<SessionsActor>,
        events: Option<mpsc::UnboundedSender<FeedStoreEvent>>,
    ) -> Self {
        FeedStore {
            registry: Arc::new(Registry {
                storage,
                open: Mutex::new(HashMap::new()),
            }),
            shared: Arc::new(Shared {
                sessions,
                events,
                stats: Counters::default(),
                streams: Mutex::new(HashMap::new()),
                pool: Arc::default(),
            }),
            config,
            namespaces: HashMap::new(),
            held,
        }
    }

    /// Starts the store and registers it with its session layer for `namespaces` (each
    /// with its secret, if any).
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
}

impl<St: Storage> Actor for FeedStore<St> {
    type Context = Context<Self>;

    /// Stops every feed stream.
    fn stopped(&mut self, _: &mut Context<Self>) {
        let streams = std::mem::take(
            &mut *self
                .shared
                .streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (_, handle) in streams {
            handle.task.abort();
        }
    }
}

impl<St: Storage> Handler<Shares> for FeedStore<St> {
    type Result = Result<Vec<SharedFeed>, StoreError>;

    fn handle(&mut self, msg: Shares, _: &mut Context<Self>) -> Self::Result {
        Ok(self
            .namespaces
            .get(&msg.namespace)
            .map(|feeds| {
                feeds
                    .iter()
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

    /// The feeds of the namespace, for all-to-all replication with peers that hold them.
    fn handle(&mut self, msg: KnownFeeds, _: &mut Context<Self>) -> Self::Result {
        Ok(self
            .namespaces
            .get(&msg.namespace)
            .map(|feeds| feeds.keys().copied().collect())
            .unwrap_or_default())
    }
}

impl<St: Storage> Handler<Offer> for FeedStore<St> {
    type Result = ResponseActFuture<Self, Result<Vec<FeedKey>, StoreError>>;

    /// Feeds held here are accepted; others go through the policy, then their keys are
    /// checked to be ed25519 points on the blocking pool. New feeds are created as
    /// replicas in the background (or by their first stream, whichever comes first), so
    /// creating a thousand feeds on disk does not hold up the answer.
    fn handle(&mut self, msg: Offer, _: &mut Context<Self>) -> Self::Result {
        let Offer {
            peer,
            namespace,
            feeds,
        } = msg;
        let (held, candidates): (Vec<SharedFeed>, Vec<SharedFeed>) =
            feeds.into_iter().partition(|f| self.held.contains(&f.key));
        let candidates: Vec<SharedFeed> = candidates
            .into_iter()
            .filter(|f| self.config.accept.accepts(&peer, &namespace, f))
            .collect();
        let checked = async move {
            if candidates.is_empty() {
                return candidates;
            }
            let checking = tokio::task::spawn_blocking(move || {
                candidates
                    .into_iter()
                    .filter(|f| replic8_store::FeedKey::try_from(f.key).is_ok())
                    .collect::<Vec<_>>()
            });
            checking.await.unwrap_or_default()
        };
        Box::pin(checked.into_actor(self).map(move |new, act, _| {
            let ns = act.namespaces.entry(namespace.clone()).or_default();
            let mut accepted = Vec::with_capacity(held.len() + new.len());
            let mut forward = Vec::new();
            for feed in held {
                ns.entry(feed.key).or_insert(feed.headers);
                accepted.push(feed.key);
            }
            for feed in new {
                ns.entry(feed.key).or_insert_with(|| feed.headers.clone());
                accepted.push(feed.key);
                // Another offer may have brought it meanwhile: forward it once.
                if act.held.insert(feed.key) {
                    act.shared.event(FeedStoreEvent::Accepted {
                        namespace: namespace.clone(),
                        feed: feed.key,
                        peer,
                    });
                    forward.push(feed);
                }
            }
            if !forward.is_empty() {
                let keys: Vec<FeedKey> = forward.iter().map(|f| f.key).collect();
                let registry = act.registry.clone();
                tokio::task::spawn_blocking(move || {
                    for key in keys {
                        if let Err(e) = registry.get(key, true) {
                            warn!(feed = %key.fmt_short(), error = %e, "could not create replica");
                        }
                    }
                });
            }
            if act.config.forward && !forward.is_empty() {
                act.shared.sessions.do_send(Share {
                    namespace,
                    feeds: forward,
                    peers: None,
                    except: Some(peer),
                });
            }
            Ok(accepted)
        }))
    }
}

impl<St: Storage> Handler<Attach> for FeedStore<St> {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: Attach, _: &mut Context<Self>) -> Self::Result {
        if !self.held.contains(&msg.feed) {
            return Err(StoreError::Failed(format!(
                "feed {} is not held here",
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
        let task = tokio::spawn(async move {
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
        streams.insert(
            (peer, id),
            StreamHandle {
                stop: Some(stop_tx),
                task,
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
                .map(|created, act, _| {
                    let key = created?;
                    act.held.insert(key);
                    Ok(key)
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
        })
    }
}
