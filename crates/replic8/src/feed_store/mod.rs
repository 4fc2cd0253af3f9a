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
//! driver per [`Attach`] (see `stream.rs`). Its handlers: `session_api.rs` for the
//! store interface the session layer calls, `whole.rs` for small feeds sent and taken
//! whole in place of a stream (decision 210), `node_api.rs` for the node's own messages;
//! `manual.rs` holds offers waiting for the user, `wanted.rs` feeds fetched by key.
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

mod gauge;
mod held;
mod inbox;
mod manual;
mod membership;
mod messages;
mod node_api;
mod peer_table;
mod policy;
mod pool;
mod receive_budget;
mod registry;
mod serve_budget;
mod session_api;
mod stream;
mod wanted;
mod whole;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, ResponseActFuture, ResponseFuture,
    WeakAddr, WrapFuture,
};
use replic8_store::storage::{DiskStorage, MemoryStorage, Storage};
use replic8_store::SyncConfig;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::AbortOnDropHandle;
use tracing::warn;

pub use membership::{MembershipError, MEMBERSHIP_FILE};
pub use messages::*;
pub use policy::*;
pub use serve_budget::{MAX_SERVE_STALLS, STRIKE_MEMORY};

use crate::actor::SessionsActor;
use crate::keys::{FeedKey, NamespaceSecret, PeerKey};
use crate::message::Headers;
use crate::session::StreamId;
use crate::store::{
    Attach, Detach, FeedHeads, FeedUpdated, KnownFeeds, Offer, RegisterError, RegisterStore, Share,
    SharedFeed, Shares, StoreError, StoreRecipients,
};
use membership::{Member, MembersWritten, MembershipFile, MembershipWrites, NameTable};
pub(crate) use registry::FeedEntry;
use registry::{OpenLimits, Registry};

/// How often the store closes feeds idle past
/// [`FeedStoreLimits::idle_close`]: a tenth of the default idle time, so a feed closes
/// at most 10% later than its limit.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

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
    serve_stalls: AtomicU64,
    serve_stall_session_ends: AtomicU64,
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
    /// The bytes of data answers every stream of this store may hold at once.
    serve: Arc<serve_budget::ServeBudget>,
    /// Each peer's serve stalls: enough of them end its session.
    strikes: Mutex<serve_budget::StallStrikes>,
    /// The bytes received on every stream of this store and not yet verified, in all
    /// and per peer.
    receive: Arc<receive_budget::ReceiveBudget>,
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
    held: held::HeldSet,
    /// The namespaces of the held feeds (a held feed without an entry is in none).
    members: HashMap<FeedKey, Member>,
    /// The one copy of each namespace name that `members` hold.
    names: NameTable,
    /// Where `members` is kept, for a disk store.
    membership_file: Option<Arc<MembershipFile>>,
    /// Changes of `members` to be written to the membership file so far.
    generation: u64,
    /// The membership file's writes (at most one at a time).
    writes: MembershipWrites,
    /// This actor, for a finished write to report back (weak: it does not keep the
    /// store running).
    me: Option<WeakAddr<Self>>,
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
            held::HeldSet::default(),
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
        let held: held::HeldSet = storage.list()?.into_iter().map(FeedKey).collect();
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
        held: held::HeldSet,
        mut members: HashMap<FeedKey, Member>,
        membership_file: Option<Arc<MembershipFile>>,
        config: FeedStoreConfig,
        sessions: Addr<SessionsActor>,
        events: Option<mpsc::UnboundedSender<FeedStoreEvent>>,
    ) -> Self {
        if config.namespaces.contains_key("") {
            warn!("a policy for the public namespace is ignored: it accepts only held feeds");
        }
        let replicas = members.values().filter(|m| m.replica).count() as u64;
        let mut names = NameTable::default();
        names.intern_all(members.values_mut());
        FeedStore {
            registry: Arc::new(Registry::new(
                storage,
                OpenLimits {
                    keep: config.limits.open_feeds,
                    idle: config.limits.idle_close,
                },
            )),
            shared: Arc::new(Shared {
                sessions,
                events,
                stats: Counters::default(),
                streams: Mutex::new(HashMap::new()),
                pool: Arc::default(),
                flush_timeout: config.limits.flush_timeout,
                serve: serve_budget::ServeBudget::new(
                    config.limits.serve_bytes_in_flight,
                    config.limits.serve_stall,
                ),
                strikes: Mutex::new(serve_budget::StallStrikes::new(config.limits.serve_stall)),
                receive: receive_budget::ReceiveBudget::new(
                    config.limits.receive_bytes_held,
                    config.limits.receive_bytes_held_per_peer,
                ),
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
            names,
            membership_file,
            generation: 0,
            writes: MembershipWrites::default(),
            me: None,
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
                store: Self::recipients(&addr),
            })
            .await
            .map_err(|_| RegisterError::Closing)??;
        Ok(addr)
    }

    /// The recipients the session layer calls, with the store's answer to
    /// [`FeedHeads`] (so feeds held complete on both sides get no stream) and to
    /// [`ReadWhole`](crate::store::ReadWhole) and [`WriteWhole`](crate::store::WriteWhole)
    /// (so small feeds travel whole, without a stream).
    pub fn recipients(addr: &Addr<Self>) -> StoreRecipients {
        StoreRecipients::of(addr)
            .with_heads(addr.clone().recipient())
            .with_whole(addr.clone().recipient(), addr.clone().recipient())
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
    /// the store stops). Writes coalesce: while one runs, later changes wait for the
    /// next, which writes the map as it is when it starts, so a burst of changes (a
    /// hundred thousand shares at a node's start) costs a few snapshots, not one each.
    fn persist(&mut self) -> impl std::future::Future<Output = ()> + 'static {
        let wait = self.membership_file.is_some().then(|| {
            self.generation += 1;
            let started = self.writes.running || self.write_members();
            started.then(|| self.writes.wait(self.generation))
        });
        async move {
            if let Some(Some(wait)) = wait {
                wait.await;
            }
        }
    }

    /// Starts a write of the membership as it is now, on the blocking pool; its end is
    /// reported to the actor ([`MembersWritten`]). Returns whether it started (not
    /// before the actor did, nor for a store without a file).
    fn write_members(&mut self) -> bool {
        let (Some(file), Some(me)) = (self.membership_file.clone(), self.me.clone()) else {
            return false;
        };
        self.writes.running = true;
        self.writes.count += 1;
        let generation = self.generation;
        let snapshot = self.members.clone();
        actix::spawn(async move {
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
            if let Some(me) = me.upgrade() {
                me.do_send(MembersWritten { generation });
            }
        });
        true
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

    /// Under a forwarding policy for `namespace`: puts the replicas accepted there with
    /// forwarding (before a restart, say) back among what is offered there, with the
    /// headers they came with; returns those that were not offered yet.
    fn offer_forwarded(&mut self, namespace: &str) -> Vec<SharedFeed> {
        if namespace.is_empty() || !self.policy(namespace).forward {
            return Vec::new();
        }
        let offered = self.namespaces.entry(namespace.to_owned()).or_default();
        let mut added = Vec::new();
        for (key, member) in &self.members {
            let Some(headers) = member.forwarded.get(namespace) else {
                continue;
            };
            if offered.contains_key(key) || !member.is_in(namespace) || !self.held.contains(key) {
                continue;
            }
            let Ok(headers) = Headers::try_from(headers.clone()) else {
                continue;
            };
            offered.insert(*key, headers.clone());
            added.push(SharedFeed { key: *key, headers });
        }
        added
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
            let name = self.names.intern(namespace);
            let mut member = Member::accepted(name.clone());
            if policy.forward {
                let headers = feed.headers.iter().map(|(k, v)| (k.to_owned(), v.to_vec()));
                member.forwarded.insert(name, headers.collect());
            }
            self.members.insert(feed.key, member);
            self.member_changes += 1;
            if self.held.insert(feed.key) {
                self.registry.note_empty(feed.key);
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
                if let Err(e) = registry.create_replicas(&create) {
                    warn!(feeds = create.len(), error = %e, "could not create replicas");
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

    /// Fills the index of feed summaries from one scan of the storage, and sweeps idle
    /// feeds closed every `SWEEP_EVERY`, both on the blocking pool.
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.me = Some(ctx.address().downgrade());
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || registry.fill_index());
        ctx.run_interval(SWEEP_EVERY, |act, _| {
            let registry = act.registry.clone();
            tokio::task::spawn_blocking(move || registry.sweep());
        });
    }

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

impl<St: Storage> Handler<MembersWritten> for FeedStore<St> {
    type Result = ();

    /// Releases those waiting for the write, and writes again if members changed
    /// meanwhile.
    fn handle(&mut self, msg: MembersWritten, _: &mut Context<Self>) {
        self.writes.finished(msg.generation);
        if self.generation > msg.generation {
            self.write_members();
        }
    }
}
