//! The feeds of a storage that are open now, and the index of what is known about every
//! held feed without opening it.
//!
//! A held feed is opened on demand (a stream, an API call) and closed again once nothing
//! uses it: an open feed holds its storage's files, its tree roots and its map of stored
//! blocks in memory, so a store holding 100,000 feeds cannot keep them all open
//! (decision 170). Rules:
//! - an entry is **pinned** while anything outside the registry holds it (a stream's
//!   driver, an API call on the blocking pool) or a subscriber follows its state; a
//!   pinned entry is never closed;
//! - at most [`FeedStoreLimits::open_feeds`](super::FeedStoreLimits::open_feeds) entries
//!   stay open past their use: when more are open, the least recently looked up
//!   unpinned ones are closed (in a batch, so the cost of the choice is shared by
//!   many opens);
//! - an unpinned entry not looked up for
//!   [`FeedStoreLimits::idle_close`](super::FeedStoreLimits::idle_close) is closed by the
//!   store's periodic sweep, whatever the count;
//! - one key has at most one open [`Feed`] at a time: closing removes the entry under
//!   the map's lock only if it is still unpinned, and a lookup clones it under that
//!   same lock;
//! - the [`FeedIndex`] holds every held feed's summary (length, stored blocks, bytes,
//!   head) that was opened since the store started, or read by the one scan of the
//!   storage at the store's start ([`Registry::fill_index`]); every change a feed
//!   publishes updates it, so listing feeds opens only those neither opened nor
//!   scanned;
//! - a scanned summary never replaces one from an open feed; it is trusted as an open
//!   feed is (the stored roots hash to the stored head, which was signed or verified
//!   before it was written), so first words take heads from it without opening;
//! - feeds written whole ([`Registry::write_whole`]) go to storage while their stripes
//!   are held and none of them is open (an open [`Feed`] would not see a write made
//!   beneath it): one that only the registry holds is closed first, and if subscribers
//!   follow its state (`feed get` watches its replica) it is opened again after the
//!   write under the same state, so they see the write as they see a stream's; one
//!   that something else holds is refused. The index gets each written feed's
//!   summary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use replic8_store::storage::{
    FeedStorage, Storage, StorageError, WholeRead, WholeRefusal, WholeWrite, WholeWritten,
};
use replic8_store::{scan_feeds, Feed, FeedSecret, OpenError, ScannedFeed, SignedHead};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{FeedInfo, FeedState, FeedStoreError};
use crate::keys::FeedKey;

/// What is known of one feed without opening it, in 144 bytes: an entry for every held
/// feed lives in the index for as long as the store runs (100,000 feeds: one of these
/// and its key each), so the fields are stored flat rather than as a [`FeedInfo`] (which
/// repeats the key, and wraps the head in an `Option` beside a separate length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    /// The signed head's length (the feed's length); 0 without a head.
    length: u64,
    /// Blocks stored here.
    stored: u64,
    /// Blocks `0..contiguous_length` are all stored here.
    contiguous_length: u64,
    /// Bytes of the blocks covered by the head.
    byte_length: u64,
    /// Bytes of the blocks stored here, if `BYTES_KNOWN` is set.
    stored_bytes: u64,
    /// The signed head's tree hash, if `HAS_HEAD` is set.
    tree_hash: [u8; 32],
    /// The signed head's signature, if `HAS_HEAD` is set.
    signature: [u8; 64],
    /// `WRITABLE`, `HAS_HEAD`, `BYTES_KNOWN`.
    flags: u8,
}

/// `Summary::flags`: the store holds the feed's secret key.
const WRITABLE: u8 = 1;
/// `Summary::flags`: the feed has a signed head.
const HAS_HEAD: u8 = 2;
/// `Summary::flags`: the stored bytes are counted (right away for a feed that holds
/// every block; by a listing otherwise).
const BYTES_KNOWN: u8 = 4;

impl Summary {
    /// A summary from its parts.
    fn new(
        writable: bool,
        head: Option<SignedHead>,
        (stored, contiguous_length, byte_length): (u64, u64, u64),
        stored_bytes: Option<u64>,
    ) -> Summary {
        let mut flags = if writable { WRITABLE } else { 0 };
        if head.is_some() {
            flags |= HAS_HEAD;
        }
        if stored_bytes.is_some() {
            flags |= BYTES_KNOWN;
        }
        let head = head.unwrap_or(SignedHead {
            length: 0,
            tree_hash: [0; 32],
            signature: [0; 64],
        });
        Summary {
            length: head.length,
            stored,
            contiguous_length,
            byte_length,
            stored_bytes: stored_bytes.unwrap_or(0),
            tree_hash: head.tree_hash,
            signature: head.signature,
            flags,
        }
    }

    fn of<F: FeedStorage>(feed: &Feed<F>) -> Summary {
        let complete = feed.stored_count() == feed.length();
        Summary::new(
            feed.is_writable(),
            feed.head().copied(),
            (
                feed.stored_count(),
                feed.contiguous_length(),
                feed.byte_length(),
            ),
            complete.then(|| feed.byte_length()),
        )
    }

    /// A feed as the storage scan read it.
    fn scanned(feed: ScannedFeed) -> Summary {
        Summary::new(
            feed.writable,
            feed.head,
            (feed.stored, feed.contiguous_length, feed.byte_length),
            Some(feed.stored_bytes),
        )
    }

    /// A replica about to be created: nothing stored, no head.
    fn empty() -> Summary {
        Summary::new(false, None, (0, 0, 0), Some(0))
    }

    /// The signed head.
    pub(crate) fn head(&self) -> Option<SignedHead> {
        (self.flags & HAS_HEAD != 0).then_some(SignedHead {
            length: self.length,
            tree_hash: self.tree_hash,
            signature: self.signature,
        })
    }

    /// Bytes of the blocks stored here, once known.
    pub(crate) fn stored_bytes(&self) -> Option<u64> {
        (self.flags & BYTES_KNOWN != 0).then_some(self.stored_bytes)
    }

    /// The feed `key` as the store reports it.
    pub(crate) fn info(&self, key: FeedKey) -> FeedInfo {
        FeedInfo {
            key,
            writable: self.flags & WRITABLE != 0,
            length: self.length,
            stored: self.stored,
            contiguous_length: self.contiguous_length,
            byte_length: self.byte_length,
            head: self.head(),
        }
    }

    /// The length up to which the feed holds every block, if it holds every block of
    /// its signed length.
    pub(crate) fn complete_length(&self) -> Option<u64> {
        (self.length > 0 && self.stored == self.length && self.contiguous_length == self.length)
            .then_some(self.length)
    }
}

/// Per held feed, its [`Summary`]; shared by the registry and every open entry.
pub(crate) type FeedIndex = DashMap<FeedKey, Summary>;

/// One open feed, shared by the actor, its sync cores and the blocking pool.
#[derive(Debug)]
pub(crate) struct FeedEntry<F: FeedStorage> {
    feed: Mutex<Feed<F>>,
    pub(super) state: watch::Sender<FeedState>,
    /// Milliseconds since the registry's start when it was last looked up.
    last_used: AtomicU64,
    index: Arc<FeedIndex>,
}

impl<F: FeedStorage> FeedEntry<F> {
    fn new(feed: Feed<F>, index: Arc<FeedIndex>, now: u64) -> Self {
        let state = FeedState {
            length: feed.length(),
            stored: feed.stored_count(),
            version: 0,
        };
        index.insert(FeedKey::from(*feed.key()), Summary::of(&feed));
        FeedEntry {
            feed: Mutex::new(feed),
            state: watch::Sender::new(state),
            last_used: AtomicU64::new(now),
            index,
        }
    }

    /// The feed; a panic in another holder leaves it usable (the feed's invariants
    /// hold between its calls).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Feed<F>> {
        self.feed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells subscribers, the feed's other cores and the index that it changed;
    /// returns the new version.
    pub(crate) fn publish(&self, feed: &Feed<F>) -> u64 {
        let mut version = 0;
        self.state.send_modify(|s| {
            s.length = feed.length();
            s.stored = feed.stored_count();
            s.version += 1;
            version = s.version;
        });
        self.index
            .insert(FeedKey::from(*feed.key()), Summary::of(feed));
        version
    }

    pub(crate) fn info(&self) -> FeedInfo {
        let feed = self.lock();
        Summary::of(&feed).info(FeedKey::from(*feed.key()))
    }

    /// Whether something outside the registry uses it: a holder of the entry (the
    /// registry's own reference is one) or a subscriber of its state.
    fn pinned(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > 1 || self.state.receiver_count() > 0
    }
}

/// An open entry as [`pick_closes`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// The feed.
    pub(crate) key: FeedKey,
    /// When it was last looked up (milliseconds on the registry's clock).
    pub(crate) last_used: u64,
    /// Whether something uses it now.
    pub(crate) pinned: bool,
}

/// Which open feeds to close: every unpinned one last used before `idle_before`, then,
/// while more than `keep` would stay open, the least recently used unpinned ones.
/// Pinned feeds are never picked (and count against `keep`).
pub(crate) fn pick_closes(
    mut open: Vec<Candidate>,
    keep: usize,
    idle_before: Option<u64>,
) -> Vec<FeedKey> {
    let total = open.len();
    open.retain(|c| !c.pinned);
    open.sort_unstable_by_key(|c| (c.last_used, c.key.0));
    let over = total.saturating_sub(keep);
    open.iter()
        .enumerate()
        .take_while(|(i, c)| *i < over || idle_before.is_some_and(|t| c.last_used < t))
        .map(|(_, c)| c.key)
        .collect()
}

/// How many feeds stay open, and for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenLimits {
    /// Most unused feeds kept open.
    pub(crate) keep: usize,
    /// An unused feed not looked up for this long is closed by the sweep.
    pub(crate) idle: Duration,
}

/// The open feeds of a storage. Its methods block (storage I/O): call them on the
/// blocking pool. Every stream task and the actor look feeds up here at once, so the
/// map is sharded (`DashMap`): lookups of different feeds do not wait on one lock.
#[derive(Debug)]
pub(crate) struct Registry<St: Storage> {
    storage: St,
    open: DashMap<FeedKey, Arc<FeedEntry<St::Feed>>>,
    index: Arc<FeedIndex>,
    limits: OpenLimits,
    /// The registry's clock starts here.
    epoch: Instant,
    /// Feeds opened from storage (or created) so far.
    opened: AtomicU64,
    /// Feeds closed so far.
    closed: AtomicU64,
    /// Per stripe of keys, held while a feed of it is opened from storage and put in
    /// `open`, and while one is taken out and dropped: an open and a close of one feed
    /// never overlap, so a feed is never opened from storage while another instance of
    /// it lives (appends through both would write the same blocks twice).
    opening: [Mutex<()>; OPEN_STRIPES],
    /// Set once the storage scan filled the index (or failed).
    scanned: OnceLock<()>,
}

/// Stripes of [`Registry::opening`]: enough that opens of different feeds rarely wait
/// on each other with a few dozen blocking-pool threads.
const OPEN_STRIPES: usize = 64;

/// Keys per storage call of [`Registry::create_replicas`]: an offer's new feeds (up
/// to 4,096) in a few calls, each short enough that the opens waiting on the storage
/// meanwhile wait little.
const CREATE_BATCH: usize = 1024;

/// The stripe of [`Registry::opening`] that `key` falls in.
fn stripe_of(key: &FeedKey) -> usize {
    usize::from(key.0[0]) % OPEN_STRIPES
}

impl<St: Storage> Registry<St> {
    pub(crate) fn new(storage: St, limits: OpenLimits) -> Self {
        Registry {
            storage,
            open: DashMap::new(),
            index: Arc::new(FeedIndex::new()),
            limits,
            epoch: Instant::now(),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            opening: std::array::from_fn(|_| Mutex::new(())),
            scanned: OnceLock::new(),
        }
    }

    /// Fills the index with what one scan of the storage reads of the feeds it can
    /// describe without opening them ([`scan_feeds`]: on disk, every small feed), for
    /// those not in it yet. Runs once per registry; a caller while it runs waits for it
    /// (so a listing right after a start waits well under a second at 100,000 feeds
    /// rather than opening each feed). A failed scan is logged and leaves the feeds to
    /// be opened.
    pub(crate) fn fill_index(&self) {
        self.scanned.get_or_init(|| {
            let started = Instant::now();
            let mut added = 0u64;
            let scanned = scan_feeds(&self.storage, |feed| {
                if let dashmap::Entry::Vacant(e) = self.index.entry(FeedKey(feed.key)) {
                    e.insert(Summary::scanned(feed));
                    added += 1;
                }
            });
            match scanned {
                Ok(0) => {}
                Ok(read) => info!(
                    read,
                    added,
                    ms = started.elapsed().as_millis() as u64,
                    "feed index filled from storage"
                ),
                Err(e) => warn!(error = %e, "feed index not filled from storage"),
            }
        });
    }

    /// The stripe lock of `key` (keys are uniformly random bytes).
    fn stripe(&self, key: &FeedKey) -> MutexGuard<'_, ()> {
        self.opening[stripe_of(key)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The index of feed summaries (read without blocking: whole reads size their share
    /// of the serve budget from it).
    pub(crate) fn index(&self) -> &FeedIndex {
        &self.index
    }

    /// Feeds open now.
    pub(crate) fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Whether `key` is open now.
    #[cfg(test)]
    pub(crate) fn is_open(&self, key: &FeedKey) -> bool {
        self.open.contains_key(key)
    }

    /// Feeds opened and closed since the store started.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.opened.load(Ordering::Relaxed),
            self.closed.load(Ordering::Relaxed),
        )
    }

    /// The feed `key`, opened from storage if needed; with `replica`, created empty if
    /// the storage does not hold it. Storage work runs without the map's lock, so feeds
    /// open in parallel, under the key's stripe lock, so one feed is opened once.
    pub(crate) fn get(
        &self,
        key: FeedKey,
        replica: bool,
    ) -> Result<Arc<FeedEntry<St::Feed>>, FeedStoreError> {
        let entry = match self.lookup(&key) {
            Some(entry) => entry,
            None => {
                let _stripe = self.stripe(&key);
                match self.lookup(&key) {
                    Some(entry) => entry,
                    None => self.open_from_storage(key, replica)?,
                }
            }
        };
        self.trim_if_over();
        Ok(entry)
    }

    /// The open entry of `key`, marked used now.
    fn lookup(&self, key: &FeedKey) -> Option<Arc<FeedEntry<St::Feed>>> {
        let now = self.now();
        self.open.get(key).map(|entry| {
            entry.last_used.store(now, Ordering::Relaxed);
            entry.clone()
        })
    }

    /// Opens `key` from storage and puts it in `open`; the caller holds its stripe lock.
    fn open_from_storage(
        &self,
        key: FeedKey,
        replica: bool,
    ) -> Result<Arc<FeedEntry<St::Feed>>, FeedStoreError> {
        let now = self.now();
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
        let entry = Arc::new(FeedEntry::new(feed, self.index.clone(), now));
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.open.insert(key, entry.clone());
        Ok(entry)
    }

    /// The summary of a held feed and the bytes it stores: from the index, or, for a
    /// feed not opened since the store started (or a partial one whose stored bytes
    /// were never counted), from the feed, opened for it (and closed again as any
    /// unused feed). The index keeps what was counted.
    pub(crate) fn summary(&self, key: FeedKey) -> Result<(FeedInfo, u64), FeedStoreError> {
        if let Some(s) = self.index.get(&key) {
            if let Some(bytes) = s.stored_bytes() {
                return Ok((s.info(key), bytes));
            }
        }
        let entry = self.get(key, false)?;
        let mut feed = entry.lock();
        let bytes = feed.stored_bytes()?;
        let mut summary = Summary::of(&feed);
        summary.stored_bytes = bytes;
        summary.flags |= BYTES_KNOWN;
        let info = summary.info(key);
        self.index.insert(key, summary);
        Ok((info, bytes))
    }

    /// Notes in the index a replica about to be created (so nothing opens it to learn
    /// that it is empty); a summary there already stays.
    pub(crate) fn note_empty(&self, key: FeedKey) {
        self.index.entry(key).or_insert_with(Summary::empty);
    }

    /// For each feed, the length up to which it holds every block, if it does and its
    /// head is not empty: from the index, else from the feed, opened for it (and closed
    /// again as any unused feed). A feed it cannot open counts as incomplete.
    pub(crate) fn complete_lengths(&self, feeds: &[FeedKey]) -> Vec<Option<u64>> {
        feeds
            .iter()
            .map(|key| {
                let known = self.index.get(key).map(|s| s.complete_length());
                match known {
                    Some(length) => length,
                    None => self
                        .get(*key, false)
                        .ok()
                        .and_then(|_| self.index.get(key).and_then(|s| s.complete_length())),
                }
            })
            .collect()
    }

    /// Each feed of `keys` read whole from storage ([`Storage::read_whole`], one call
    /// for all): `None` for one whose blocks take more than `max_bytes` or that lacks a
    /// block, and, without touching storage, for one whose summary says so already.
    pub(crate) fn read_whole(
        &self,
        keys: &[FeedKey],
        max_bytes: usize,
    ) -> Result<Vec<Option<WholeRead>>, StorageError> {
        let mut out = vec![None; keys.len()];
        let mut asked = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let hopeless = self
                .index
                .get(key)
                .is_some_and(|s| s.complete_length().is_none() || s.byte_length > max_bytes as u64);
            if !hopeless {
                asked.push(i);
            }
        }
        let asked_keys: Vec<[u8; 32]> = asked.iter().map(|&i| keys[i].0).collect();
        let read = self.storage.read_whole(&asked_keys, max_bytes)?;
        for (&i, read) in asked.iter().zip(read) {
            out[i] = read;
        }
        Ok(out)
    }

    /// Writes `feeds` whole ([`Storage::write_whole`], one call for all), each verified
    /// by the caller. Their stripes are held throughout, in ascending order (every other
    /// holder takes one stripe at a time), so none of them opens meanwhile. An open one
    /// that only the registry holds is closed first; if subscribers follow its state it
    /// is opened again after the write, under that state, which then tells them what
    /// the write stored. An open one that something else holds (a stream, an API call)
    /// is refused ([`WholeRefusal::Open`]). Each feed written gets its summary in the
    /// index. Answers in order.
    pub(crate) fn write_whole(
        &self,
        feeds: Vec<WholeWrite>,
    ) -> Result<Vec<WholeWritten>, StorageError> {
        let mut stripes: Vec<usize> = feeds.iter().map(|w| stripe_of(&FeedKey(w.key))).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let _held: Vec<MutexGuard<'_, ()>> = stripes
            .iter()
            .map(|&i| {
                self.opening[i]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            })
            .collect();
        let mut out = vec![WholeWritten::Refused(WholeRefusal::Open); feeds.len()];
        let mut at = Vec::with_capacity(feeds.len());
        let mut free = Vec::with_capacity(feeds.len());
        let mut closed = 0;
        let mut watched = Vec::new();
        for (i, write) in feeds.into_iter().enumerate() {
            let key = FeedKey(write.key);
            // Under the map's lock: with only the registry's reference nobody can take
            // another, and once out of the map and under the stripe nobody finds it.
            let only_here =
                |_: &FeedKey, entry: &Arc<FeedEntry<St::Feed>>| Arc::strong_count(entry) == 1;
            if let Some((_, removed)) = self.open.remove_if(&key, only_here) {
                closed += 1;
                if removed.state.receiver_count() > 0 {
                    if let Ok(entry) = Arc::try_unwrap(removed) {
                        // The feed closes here; its state waits for the reopening.
                        watched.push((key, entry.state));
                    }
                }
            }
            if !self.open.contains_key(&key) {
                at.push(i);
                free.push(write);
            }
        }
        self.closed.fetch_add(closed, Ordering::Relaxed);
        let written = self.storage.write_whole(&free);
        // Reopened whatever the write did: a failed one must not end their watchers.
        for (key, state) in watched {
            self.reopen(key, state);
        }
        let written = written?;
        for ((i, write), done) in at.into_iter().zip(&free).zip(written) {
            if done == WholeWritten::Written {
                let key = FeedKey(write.key);
                let length = write.head.length;
                let bytes = write.byte_length();
                let summary = Summary::new(
                    false,
                    Some(write.head.into()),
                    (length, length, bytes),
                    Some(bytes),
                );
                self.index.insert(key, summary);
            }
            out[i] = done;
        }
        Ok(out)
    }

    /// Opens `key` again under the `state` its subscribers follow, after
    /// [`Self::write_whole`] closed it to write beneath it, and tells them what it holds
    /// now; the caller holds its stripe lock. If it does not open, the state is dropped
    /// (its subscribers see it end) and a later use opens the feed afresh.
    fn reopen(&self, key: FeedKey, state: watch::Sender<FeedState>) {
        let opened = replic8_store::FeedKey::try_from(key)
            .map_err(FeedStoreError::from)
            .and_then(|store_key| Ok(Feed::open(&self.storage, &store_key)?));
        let feed = match opened {
            Ok(Some(feed)) => feed,
            Ok(None) => {
                warn!(feed = %key.fmt_short(), "a watched feed written whole is gone");
                return;
            }
            Err(e) => {
                warn!(feed = %key.fmt_short(), error = %e, "a watched feed written whole did not open again");
                return;
            }
        };
        let entry = Arc::new(FeedEntry {
            feed: Mutex::new(feed),
            state,
            last_used: AtomicU64::new(self.now()),
            index: self.index.clone(),
        });
        entry.publish(&entry.lock());
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.open.insert(key, entry);
    }

    /// Creates an empty replica of each of `keys` the storage does not hold
    /// ([`Storage::create_replicas`], one call per [`CREATE_BATCH`] keys) without
    /// opening any: a replica is opened when something uses it, and a feed that arrives
    /// whole never is. The caller checked that each key is a feed key (an ed25519
    /// point). Each one created counts as opened ([`Self::counts`]). Returns how many
    /// were created.
    pub(crate) fn create_replicas(&self, keys: &[FeedKey]) -> Result<usize, StorageError> {
        let mut created = 0;
        for batch in keys.chunks(CREATE_BATCH) {
            let batch: Vec<[u8; 32]> = batch
                .iter()
                .filter(|key| !self.open.contains_key(*key))
                .map(|key| key.0)
                .collect();
            let made = self.storage.create_replicas(&batch)?;
            self.opened.fetch_add(made as u64, Ordering::Relaxed);
            created += made;
        }
        Ok(created)
    }

    /// Creates a new writable feed; returns its key.
    pub(crate) fn create(&self) -> Result<FeedKey, FeedStoreError> {
        let feed = Feed::create(&self.storage, FeedSecret::generate())?;
        let key = FeedKey::from(*feed.key());
        let entry = Arc::new(FeedEntry::new(feed, self.index.clone(), self.now()));
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.open.insert(key, entry);
        self.trim_if_over();
        Ok(key)
    }

    /// Closes down to the bound once an eighth over it, so one choice serves many opens.
    fn trim_if_over(&self) {
        let keep = self.limits.keep;
        if self.open.len() > keep + keep / 8 {
            self.close(keep, None);
        }
    }

    /// Closes the unpinned feeds idle past the limit, and any over the bound.
    pub(crate) fn sweep(&self) -> usize {
        let idle = u64::try_from(self.limits.idle.as_millis()).unwrap_or(u64::MAX);
        let cutoff = self.now().checked_sub(idle);
        self.close(self.limits.keep, cutoff)
    }

    /// Closes what [`pick_closes`] picks; returns how many closed.
    fn close(&self, keep: usize, idle_before: Option<u64>) -> usize {
        let candidates: Vec<Candidate> = self
            .open
            .iter()
            .map(|e| Candidate {
                key: *e.key(),
                last_used: e.value().last_used.load(Ordering::Relaxed),
                pinned: e.value().pinned(),
            })
            .collect();
        let mut closed = 0;
        for key in pick_closes(candidates, keep, idle_before) {
            // Still unpinned under the shard's lock: nobody can clone it meanwhile. The
            // feed is dropped (its files closed) after the shard's lock is released and
            // before the stripe's, so no open of it runs until it is gone.
            let _stripe = self.stripe(&key);
            if let Some(removed) = self.open.remove_if(&key, |_, entry| !entry.pinned()) {
                drop(removed);
                closed += 1;
            }
        }
        self.closed.fetch_add(closed as u64, Ordering::Relaxed);
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replic8_store::storage::MemoryStorage;

    fn candidate(n: u8, last_used: u64, pinned: bool) -> Candidate {
        Candidate {
            key: FeedKey([n; 32]),
            last_used,
            pinned,
        }
    }

    #[test]
    fn the_least_recently_used_unpinned_feeds_close_down_to_the_bound() {
        let open = vec![
            candidate(1, 10, false),
            candidate(2, 5, true),
            candidate(3, 30, false),
            candidate(4, 20, false),
            candidate(5, 1, false),
        ];
        let closes = pick_closes(open, 2, None);
        assert_eq!(
            closes,
            vec![FeedKey([5; 32]), FeedKey([1; 32]), FeedKey([4; 32])]
        );
    }

    #[test]
    fn pinned_feeds_never_close_even_over_the_bound() {
        let open = vec![candidate(1, 1, true), candidate(2, 2, true)];
        assert!(pick_closes(open, 0, Some(100)).is_empty());
    }

    #[test]
    fn idle_feeds_close_under_the_bound_and_recent_ones_stay() {
        let open = vec![
            candidate(1, 10, false),
            candidate(2, 50, false),
            candidate(3, 5, true),
        ];
        let closes = pick_closes(open, 100, Some(20));
        assert_eq!(closes, vec![FeedKey([1; 32])]);
    }

    fn registry(keep: usize) -> Registry<MemoryStorage> {
        let limits = OpenLimits {
            keep,
            idle: Duration::from_secs(3600),
        };
        Registry::new(MemoryStorage::new(), limits)
    }

    #[test]
    fn a_feed_in_use_stays_open_and_unused_ones_close_past_the_bound() {
        let registry = registry(4);
        let keys: Vec<FeedKey> = (0..20).map(|_| registry.create().unwrap()).collect();
        // Past the bound and its slack, the registry trimmed itself.
        assert!(registry.open_count() <= 4, "{}", registry.open_count());
        let held = registry.get(keys[0], false).unwrap();
        let watched = registry.get(keys[1], false).unwrap().state.subscribe();
        let unused = registry.open_count() - 2;
        assert_eq!(registry.close(0, None), unused);
        assert!(registry.is_open(&keys[0]) && registry.is_open(&keys[1]));
        assert_eq!(registry.open_count(), 2);
        drop((held, watched));
        registry.close(0, None);
        assert_eq!(registry.open_count(), 0);
        // A closed feed opens again, with the same state, and its summary stayed.
        let info = registry.get(keys[3], false).unwrap().info();
        assert_eq!(info.key, keys[3]);
        assert_eq!(registry.index().len(), 20);
    }

    #[test]
    fn feeds_on_disk_close_and_reopen_under_concurrent_use_past_a_small_bound() {
        use replic8_store::storage::DiskStorage;
        let dir = tempfile::tempdir().unwrap();
        let limits = OpenLimits {
            keep: 2,
            idle: Duration::from_secs(3600),
        };
        let registry = Registry::new(DiskStorage::open(dir.path()).unwrap(), limits);
        let keys: Vec<FeedKey> = (0..24).map(|_| registry.create().unwrap()).collect();
        // Four threads append to every feed in turn, each holding its entry (a pin)
        // while it appends, so feeds are closed and reopened throughout, some while
        // another thread holds them.
        std::thread::scope(|scope| {
            for t in 0..4u8 {
                let (registry, keys) = (&registry, &keys);
                scope.spawn(move || {
                    for round in 0..3u8 {
                        for key in keys {
                            let entry = registry.get(*key, false).unwrap();
                            let mut feed = entry.lock();
                            feed.append(&[t, round]).unwrap();
                            entry.publish(&feed);
                        }
                    }
                });
            }
        });
        let (opened, closed) = registry.counts();
        assert!(closed >= 20, "opened {opened}, closed {closed}");
        registry.close(0, None);
        assert_eq!(registry.open_count(), 0);
        // Every append of every thread is there, in the index and on disk.
        for key in &keys {
            assert_eq!(registry.index().get(key).unwrap().info(*key).length, 12);
            let entry = registry.get(*key, false).unwrap();
            assert_eq!(entry.info().length, 12);
            assert_eq!(entry.lock().get_range(0, 12).unwrap().len(), 12);
        }
    }

    #[test]
    fn a_watched_feed_takes_a_whole_write_and_its_watchers_see_it_but_a_held_one_does_not() {
        // Two feeds written elsewhere, 3 blocks each, checked whole against their heads.
        let elsewhere = MemoryStorage::new();
        let writes: Vec<WholeWrite> = (0..2u8)
            .map(|n| {
                let mut feed = Feed::create(&elsewhere, FeedSecret::generate()).unwrap();
                let blocks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![n + i; 100]).collect();
                feed.append_batch(&blocks).unwrap();
                let head = *feed.head().unwrap();
                replic8_store::check_whole(*feed.key().as_bytes(), &head, blocks).unwrap()
            })
            .collect();
        // On disk, whose storage refuses a write beneath an open handle.
        let dir = tempfile::tempdir().unwrap();
        let limits = OpenLimits {
            keep: 4,
            idle: Duration::from_secs(3600),
        };
        let storage = replic8_store::storage::DiskStorage::open(dir.path()).unwrap();
        let registry = Registry::new(storage, limits);
        let keys: Vec<FeedKey> = writes.iter().map(|w| FeedKey(w.key)).collect();
        // One replica watched only (as `feed get` watches it), one held by a user.
        let mut watcher = registry.get(keys[0], true).unwrap().state.subscribe();
        let held = registry.get(keys[1], true).unwrap();
        let done = registry.write_whole(writes).unwrap();
        assert_eq!(
            done,
            vec![
                WholeWritten::Written,
                WholeWritten::Refused(WholeRefusal::Open)
            ]
        );
        // The watcher follows the reopened feed: it sees the write, then later changes.
        assert!(watcher.has_changed().unwrap());
        let seen = *watcher.borrow_and_update();
        assert_eq!((seen.length, seen.stored), (3, 3));
        assert!(registry.is_open(&keys[0]));
        let entry = registry.get(keys[0], false).unwrap();
        assert_eq!(entry.lock().get_range(0, 3).unwrap().len(), 3);
        entry.publish(&entry.lock());
        assert!(watcher.has_changed().unwrap());
        assert_eq!(held.info().length, 0);
    }

    #[test]
    fn appends_reach_the_index_and_outlive_closing() {
        let registry = registry(1);
        let key = registry.create().unwrap();
        {
            let entry = registry.get(key, false).unwrap();
            let mut feed = entry.lock();
            feed.append_batch(&[b"one".to_vec(), b"two!".to_vec()])
                .unwrap();
            entry.publish(&feed);
        }
        registry.close(0, None);
        assert!(!registry.is_open(&key));
        let summary = registry.index().get(&key).map(|s| s.clone()).unwrap();
        assert_eq!(summary.info(key).length, 2);
        assert_eq!(summary.stored_bytes(), Some(7));
        assert_eq!(summary.complete_length(), Some(2));
    }

    #[test]
    fn a_summary_is_what_the_open_feed_reports_in_144_bytes() {
        // An index entry per held feed for as long as the store runs: its size is the
        // store's memory per idle feed (100,000 feeds: 17.6 MB with their keys, before
        // the map's spare room).
        assert!(std::mem::size_of::<Summary>() <= 144);
        assert!(std::mem::size_of::<(FeedKey, Summary)>() <= 176);
        let registry = registry(4);
        let key = registry.create().unwrap();
        let entry = registry.get(key, false).unwrap();
        let empty = registry.index().get(&key).map(|s| s.clone()).unwrap();
        assert_eq!(empty.info(key), entry.info());
        assert_eq!((empty.head(), empty.stored_bytes()), (None, Some(0)));
        {
            let mut feed = entry.lock();
            feed.append(b"block").unwrap();
            entry.publish(&feed);
        }
        let summary = registry.index().get(&key).map(|s| s.clone()).unwrap();
        let info = entry.info();
        assert_eq!(summary.info(key), info);
        assert!(info.writable && info.head.is_some_and(|h| h.length == 1));
        assert_eq!(summary.head(), info.head);
        assert_eq!(summary.complete_length(), Some(1));
        // A replica noted before it exists: no head, nothing stored, its bytes known.
        let other = FeedKey([7; 32]);
        registry.note_empty(other);
        let noted = registry.index().get(&other).map(|s| s.clone()).unwrap();
        assert_eq!(noted, Summary::empty());
        let info = noted.info(other);
        assert!(!info.writable && info.head.is_none() && info.length == 0);
        assert_eq!(noted.complete_length(), None);
    }
}
