//! [`Feed`]: one signed append-only log over a [`FeedStorage`].
//!
//! A writable feed (it holds the [`FeedSecret`]) appends blocks and signs each new head.
//! A replica takes blocks from peers only through [`Feed::ingest`], which verifies the
//! whole proof, the blocks and (when the head moves) the signature before it hands one
//! [`WriteBatch`] to storage. Nothing is written for a proof that fails.
//!
//! Invariants: the in-memory head and roots always equal the stored ones; every stored
//! node and block hashes up to a head whose signature was checked; the head's length
//! never goes backward.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;

use zeroize::Zeroizing;

use crate::keys::{DiscoveryKey, FeedKey, FeedSecret, SignedHead};
use crate::proof::{Proof, ProofError, VerifiedProof, VerifyError};
use crate::storage::{self, FeedStorage, Storage, StorageError, StoredNode, WriteBatch};
use crate::tree::{self, full_roots, Node};

use self::claims::Claim;
pub use self::errors::{AppendError, IngestError, OpenError, ReadError};
pub use self::prepare::{AppendPreparer, Prepared};

mod claims;
mod errors;
mod prepare;

/// Largest block a feed accepts (1 MiB), so that one block always fits in one sync
/// message ([`crate::message::MAX_MESSAGE_SIZE`]) and a peer can make us buffer little.
pub const MAX_BLOCK_SIZE: usize = 1024 * 1024;

/// How many recently verified heads a feed remembers, so that a head announced by a peer
/// and then used in its proof costs one signature check, not two.
const TRUSTED_HEADS: usize = 8;

/// What a successful [`Feed::ingest`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// The blocks now stored (the proof's range).
    pub blocks: Range<u64>,
    /// The new length, if the proof moved the head forward.
    pub upgraded: Option<u64>,
}

/// A writable feed's secret: the seed as stored, and the key pair made from it at the
/// first signature. Making the pair costs a scalar multiplication, which only appending
/// needs: a feed opened to be served or listed never pays it.
struct WriterKey {
    seed: Zeroizing<[u8; 32]>,
    /// The pair, once made; `None` if the seed does not belong to the feed's key.
    pair: OnceLock<Option<FeedSecret>>,
}

impl WriterKey {
    fn new(seed: [u8; 32]) -> Self {
        WriterKey {
            seed: Zeroizing::new(seed),
            pair: OnceLock::new(),
        }
    }

    /// A pair made already (a feed created here).
    fn made(secret: FeedSecret) -> Self {
        WriterKey {
            seed: Zeroizing::new(secret.to_bytes()),
            pair: OnceLock::from(Some(secret)),
        }
    }

    /// The key pair of the feed `key` whose writer key is `writer` (none for a replica),
    /// made now if it was not yet.
    fn of<'a>(writer: Option<&'a WriterKey>, key: &FeedKey) -> Result<&'a FeedSecret, AppendError> {
        let writer = writer.ok_or(AppendError::NotWritable)?;
        writer
            .pair
            .get_or_init(|| {
                let secret = FeedSecret::from_bytes(&writer.seed);
                (secret.key() == *key).then_some(secret)
            })
            .as_ref()
            .ok_or_else(|| AppendError::KeyMismatch(key.fmt_short()))
    }
}

/// One feed: its key, its verified head, and its storage.
pub struct Feed<S: FeedStorage> {
    storage: S,
    key: FeedKey,
    discovery_key: DiscoveryKey,
    secret: Option<WriterKey>,
    head: Option<SignedHead>,
    roots: Vec<Node>,
    /// Stored blocks as disjoint runs `start -> end`, adjacent runs merged.
    runs: BTreeMap<u64, u64>,
    stored: u64,
    trusted: VecDeque<SignedHead>,
    /// Signatures of peer heads [`Feed::check_head`] checked.
    heads_verified: u64,
    /// Blocks a sync core has asked some peer for (disjoint; in memory only), so the
    /// feed's other cores ask their peers for other blocks.
    claims: BTreeMap<u64, Claim>,
}

/// An append checked, hashed and signed, not yet written.
struct PreparedAppend {
    nodes: Vec<StoredNode>,
    roots: Vec<Node>,
    head: SignedHead,
}

/// Hash and sign an append of `blocks` (at least one, each checked) to a tree of `start`
/// blocks whose full roots are `roots`.
fn prepare<B: AsRef<[u8]> + Sync>(
    secret: &FeedSecret,
    roots: &[Node],
    start: u64,
    blocks: &[B],
) -> PreparedAppend {
    let leaves = tree::hash_leaves(start, blocks);
    let mut roots = roots.to_vec();
    let nodes = tree::append_leaves(&mut roots, leaves)
        .into_iter()
        .map(StoredNode::from)
        .collect();
    let length = start + blocks.len() as u64;
    let head = secret.sign_head(length, tree::tree_hash(&roots));
    PreparedAppend { nodes, roots, head }
}

/// Each of `blocks` within [`MAX_BLOCK_SIZE`].
fn check_blocks<B: AsRef<[u8]>>(blocks: &[B]) -> Result<(), AppendError> {
    match blocks.iter().find(|b| b.as_ref().len() > MAX_BLOCK_SIZE) {
        Some(b) => Err(AppendError::BlockTooLarge {
            size: b.as_ref().len(),
            max: MAX_BLOCK_SIZE,
        }),
        None => Ok(()),
    }
}

/// How many tree nodes appending `count` blocks to a tree of `start` blocks makes: the
/// leaves, and a parent for every trailing zero bit of each new length (`1..=m` have
/// `m - popcount(m)` trailing zeros in all).
fn new_node_count(start: u64, count: u64) -> usize {
    let zeros = |m: u64| m - u64::from(m.count_ones());
    let end = start.saturating_add(count);
    usize::try_from(count + zeros(end) - zeros(start)).unwrap_or(usize::MAX)
}

impl<S: FeedStorage> fmt::Debug for Feed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("key", &self.key)
            .field("writable", &self.secret.is_some())
            .field("length", &self.length())
            .field("contiguous", &self.contiguous_length())
            .finish_non_exhaustive()
    }
}

impl<S: FeedStorage> Feed<S> {
    /// Create a new, empty, writable feed in `storage`.
    pub fn create<St: Storage<Feed = S>>(
        storage: &St,
        secret: FeedSecret,
    ) -> Result<Self, OpenError> {
        let key = secret.key();
        let s = storage.create(*key.as_bytes(), Some(secret.to_bytes()))?;
        let mut feed = Self::from_storage(key, s)?;
        feed.secret = Some(WriterKey::made(secret));
        Ok(feed)
    }

    /// Create a new, empty replica of the feed `key` in `storage`.
    pub fn create_replica<St: Storage<Feed = S>>(
        storage: &St,
        key: FeedKey,
    ) -> Result<Self, OpenError> {
        let s = storage.create(*key.as_bytes(), None)?;
        Self::from_storage(key, s)
    }

    /// Open the feed `key` from `storage`, or `Ok(None)` if it holds no such feed.
    pub fn open<St: Storage<Feed = S>>(
        storage: &St,
        key: &FeedKey,
    ) -> Result<Option<Self>, OpenError> {
        match storage.open(key.as_bytes())? {
            Some(s) => Self::from_storage(*key, s).map(Some),
            None => Ok(None),
        }
    }

    /// Wrap an opened [`FeedStorage`], checking that its roots hash to its head.
    ///
    /// The stored head's signature is not checked again: a [`Feed`] stores only heads
    /// it signed or verified, and storage keeps them whole (checksums, atomic commits).
    /// Nor is the stored secret key checked against the feed key until the first
    /// append needs it ([`AppendError::KeyMismatch`]). Opening thus costs storage reads
    /// and a hash, no public-key operation (decision 195).
    pub fn from_storage(key: FeedKey, mut storage: S) -> Result<Self, OpenError> {
        let secret = storage.secret_key().map(WriterKey::new);
        let head = storage.head().map(SignedHead::from);
        let mut roots = Vec::new();
        if let Some(h) = &head {
            for i in full_roots(h.length) {
                let n = storage
                    .node(i)?
                    .ok_or(OpenError::BadHead("a root is missing"))?;
                roots.push(Node::from(n));
            }
            if tree::tree_hash(&roots) != h.tree_hash {
                return Err(OpenError::BadHead("roots do not hash to the head"));
            }
        }
        let length = head.map_or(0, |h| h.length);
        let mut runs = BTreeMap::new();
        let mut stored = 0;
        let mut i = 0;
        while i < length {
            if storage.has_block(i) {
                let start = i;
                while i < length && storage.has_block(i) {
                    i += 1;
                }
                runs.insert(start, i);
                stored += i - start;
            }
            i += 1;
        }
        Ok(Feed {
            discovery_key: key.discovery_key(),
            key,
            secret,
            trusted: head.into_iter().collect(),
            heads_verified: 0,
            head,
            roots,
            runs,
            stored,
            claims: BTreeMap::new(),
            storage,
        })
    }

    /// The feed's public key.
    pub fn key(&self) -> &FeedKey {
        &self.key
    }

    /// The feed's discovery key.
    pub fn discovery_key(&self) -> &DiscoveryKey {
        &self.discovery_key
    }

    /// Whether this feed holds the secret key and can append.
    pub fn is_writable(&self) -> bool {
        self.secret.is_some()
    }

    /// Number of blocks covered by the verified head (a replica may store fewer).
    pub fn length(&self) -> u64 {
        self.head.map_or(0, |h| h.length)
    }

    /// Total bytes of the blocks covered by the head.
    pub fn byte_length(&self) -> u64 {
        self.roots.iter().map(|r| r.size).sum()
    }

    /// The verified signed head, if the feed has one.
    pub fn head(&self) -> Option<&SignedHead> {
        self.head.as_ref()
    }

    /// The full roots of the tree at the head.
    pub fn roots(&self) -> &[Node] {
        &self.roots
    }

    /// Whether block `index` is stored here.
    pub fn has(&self, index: u64) -> bool {
        self.runs
            .range(..=index)
            .next_back()
            .is_some_and(|(_, &end)| end > index)
    }

    /// Blocks `[0, n)` are all stored; this is the largest such `n`.
    pub fn contiguous_length(&self) -> u64 {
        self.runs.get(&0).copied().unwrap_or(0)
    }

    /// Number of blocks stored here.
    pub fn stored_count(&self) -> u64 {
        self.stored
    }

    /// Bytes of the blocks stored here: the byte length when every block is here,
    /// otherwise the sizes of the stored blocks' leaves, read from storage (one node
    /// read per stored block: meant for reports, not for a hot path).
    pub fn stored_bytes(&mut self) -> Result<u64, StorageError> {
        if self.stored == self.length() {
            return Ok(self.byte_length());
        }
        let runs: Vec<(u64, u64)> = self.runs.iter().map(|(&s, &e)| (s, e)).collect();
        let mut bytes = 0;
        for (start, end) in runs {
            for index in start..end {
                if let Some(leaf) = self.storage.node(2 * index)? {
                    bytes += leaf.size;
                }
            }
        }
        Ok(bytes)
    }

    /// The stored blocks below the head, as sorted ranges, at most `max_ranges` of them
    /// (the rest is left out).
    pub fn stored_ranges(&self, max_ranges: usize) -> Vec<(u64, u64)> {
        self.runs
            .iter()
            .take(max_ranges)
            .map(|(&s, &e)| (s, e))
            .collect()
    }

    /// The storage underneath.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Append one block; returns the new length once it is durable.
    pub fn append(&mut self, block: &[u8]) -> Result<u64, AppendError> {
        self.append_batch(&[block])
    }

    /// Append blocks in one signed, atomic, durable batch; returns the new length.
    pub fn append_batch<B: AsRef<[u8]> + Sync>(
        &mut self,
        blocks: &[B],
    ) -> Result<u64, AppendError> {
        self.append_inner(blocks, true)
    }

    /// Append blocks in one signed, atomic batch, like [`Feed::append_batch`], but return
    /// once the batch is written, before it is durable; returns the new length. The
    /// storage starts syncing in the background ([`FeedStorage::sync_start`]), so hashing
    /// the next batch overlaps this one's sync. Every batch appended so far is durable
    /// once a later [`Feed::flush`] or [`Feed::append_batch`] returns; a crash before that
    /// may lose whole batches from the end (never tear one, never lose one before a
    /// batch that survived).
    ///
    /// Until that flush, the new head must not be shared with peers: if a crash lost it,
    /// the writer would sign a different tree at the same length. For bulk writers that
    /// flush before they announce; the node's feed store uses [`Feed::append_batch`].
    pub fn append_batch_deferred<B: AsRef<[u8]> + Sync>(
        &mut self,
        blocks: &[B],
    ) -> Result<u64, AppendError> {
        self.append_inner(blocks, false)
    }

    /// Like [`Feed::append_batch`] (signed, atomic, durable on return), taking the blocks
    /// by value: they go to storage without the copy `append_batch` makes of borrowed
    /// blocks (~15 % of an append's CPU for 64 KiB blocks).
    pub fn append_batch_owned(&mut self, blocks: Vec<Vec<u8>>) -> Result<u64, AppendError> {
        let Some(prepared) = self.prepare_append(&blocks)? else {
            self.storage.sync()?;
            return Ok(self.length());
        };
        let start = self.length();
        let blocks = blocks
            .into_iter()
            .enumerate()
            .map(|(i, b)| (start + i as u64, b))
            .collect();
        self.commit_append(prepared, blocks, true)
    }

    fn append_inner<B: AsRef<[u8]> + Sync>(
        &mut self,
        blocks: &[B],
        durable: bool,
    ) -> Result<u64, AppendError> {
        self.check_append(blocks)?;
        let secret = WriterKey::of(self.secret.as_ref(), &self.key)?;
        if blocks.is_empty() {
            if durable {
                self.storage.sync()?;
            }
            return Ok(self.length());
        }
        let start = self.length();
        let slices: Vec<&[u8]> = blocks.iter().map(AsRef::as_ref).collect();
        // The storage may write the blocks out while they are hashed (disk: on a helper
        // thread); the nodes and head are made here, on this thread.
        let roots = &self.roots;
        let mut made = None;
        let mut hash = || {
            let prepared = prepare(secret, roots, start, blocks);
            let head = prepared.head;
            made = Some((prepared.head, prepared.roots));
            (prepared.nodes, head.into())
        };
        let node_count = new_node_count(start, blocks.len() as u64);
        storage::write_append_hashing(&mut self.storage, start, &slices, node_count, &mut hash)?;
        let Some((head, roots)) = made else {
            // Storage must call `hash`; one that did not wrote nothing of ours.
            return Err(AppendError::Storage(StorageError::Limit(
                "storage wrote an append without its nodes".into(),
            )));
        };
        let length = head.length;
        self.finish_append(head, roots, durable)?;
        Ok(length)
    }

    /// Check that this feed may append `blocks`.
    fn check_append<B: AsRef<[u8]>>(&self, blocks: &[B]) -> Result<(), AppendError> {
        if self.secret.is_none() {
            return Err(AppendError::NotWritable);
        }
        check_blocks(blocks)
    }

    /// Check, hash and sign an append of `blocks` (`None` for no blocks); changes nothing.
    fn prepare_append<B: AsRef<[u8]> + Sync>(
        &self,
        blocks: &[B],
    ) -> Result<Option<PreparedAppend>, AppendError> {
        self.check_append(blocks)?;
        let secret = WriterKey::of(self.secret.as_ref(), &self.key)?;
        if blocks.is_empty() {
            return Ok(None);
        }
        Ok(Some(prepare(secret, &self.roots, self.length(), blocks)))
    }

    /// Write a prepared append with its blocks (indexed), then sync it (`durable`) or
    /// start syncing it.
    fn commit_append(
        &mut self,
        prepared: PreparedAppend,
        blocks: Vec<(u64, Vec<u8>)>,
        durable: bool,
    ) -> Result<u64, AppendError> {
        let length = prepared.head.length;
        let batch = WriteBatch {
            blocks,
            nodes: prepared.nodes,
            head: Some(prepared.head.into()),
        };
        self.storage.write(batch)?;
        self.finish_append(prepared.head, prepared.roots, durable)?;
        Ok(length)
    }

    /// After an append's write: sync it (`durable`) or start syncing it, then take its
    /// head and roots.
    fn finish_append(
        &mut self,
        head: SignedHead,
        roots: Vec<Node>,
        durable: bool,
    ) -> Result<(), AppendError> {
        if durable {
            self.storage.sync()?;
        } else {
            self.storage.sync_start()?;
        }
        let start = self.length();
        self.set_head(head, roots);
        self.add_run(start, head.length);
        Ok(())
    }

    /// Block `index`, or `Ok(None)` if it is not stored here.
    pub fn get(&mut self, index: u64) -> Result<Option<Vec<u8>>, StorageError> {
        if index >= self.length() {
            return Ok(None);
        }
        self.storage.block(index)
    }

    /// The stored blocks from `start` on, at most up to `end` (and this feed's length),
    /// stopping before the first missing one and before the one that would take the
    /// total over `max_bytes` (the first comes whatever its size): what one answer to a
    /// request carries, read in one storage call.
    pub fn get_blocks(
        &mut self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        self.get_blocks_into(start, end, max_bytes, &mut Vec::with_capacity)
    }

    /// [`Feed::get_blocks`], each block read into a buffer from `buffer` (called with the
    /// block's length), for a caller that recycles buffers
    /// ([`FeedStorage::blocks_into`]).
    pub fn get_blocks_into(
        &mut self,
        start: u64,
        end: u64,
        max_bytes: usize,
        buffer: &mut dyn FnMut(usize) -> Vec<u8>,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let end = end.min(self.length());
        if start >= end {
            return Ok(Vec::new());
        }
        self.storage.blocks_into(start, end, max_bytes, buffer)
    }

    /// Blocks `[start, end)`; fails with [`ReadError::Missing`] if one is not stored.
    pub fn get_range(&mut self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, ReadError> {
        let mut out = Vec::with_capacity(end.saturating_sub(start).min(4096) as usize);
        for i in start..end {
            out.push(self.get(i)?.ok_or(ReadError::Missing(i))?);
        }
        Ok(out)
    }

    /// A proof for blocks `[start, end)` against the tree at `length`, for a verifier
    /// that trusts the roots at `base`. `length` is either this feed's length (then the
    /// signed head is included when `length > base`) or, for a data proof, `base`.
    pub fn proof(
        &mut self,
        base: u64,
        length: u64,
        start: u64,
        end: u64,
    ) -> Result<Proof, ProofError> {
        let ours = self.length();
        if length > ours || (length < ours && base != length) {
            return Err(ProofError::Range {
                base,
                length,
                start,
                end,
            });
        }
        let storage = &mut self.storage;
        Proof::create(base, length, start, end, self.head, |i| {
            Ok(storage.node(i)?.map(Node::from))
        })
    }

    /// Check a head announced by a peer: its signature must be by this feed's key. A head
    /// checked once is remembered, so its proof will not be checked again.
    pub fn check_head(&mut self, head: &SignedHead) -> Result<(), VerifyError> {
        if self.trusted.contains(head) {
            return Ok(());
        }
        self.heads_verified += 1;
        if !self.key.verify_head(head) {
            return Err(VerifyError::BadSignature {
                length: head.length,
            });
        }
        self.trust(*head);
        Ok(())
    }

    /// Take `head` as verified without checking its signature again: only for a head this
    /// node checked itself with [`FeedKey::verify_head`] or [`crate::verify_heads`].
    pub(crate) fn trust_verified(&mut self, head: SignedHead) {
        if !self.trusted.contains(&head) {
            self.trust(head);
        }
    }

    /// How many peer heads' signatures [`Feed::check_head`] checked (a head already
    /// trusted is not checked again).
    pub fn heads_verified(&self) -> u64 {
        self.heads_verified
    }

    /// Verify `proof` with its `blocks` against this feed's trusted state, without
    /// storing anything.
    pub fn verify<B: AsRef<[u8]> + Sync>(
        &mut self,
        proof: &Proof,
        blocks: &[B],
    ) -> Result<VerifiedProof, IngestError> {
        let length = self.length();
        if proof.length < proof.base {
            return Err(VerifyError::LengthBackward {
                base: proof.base,
                length: proof.length,
            }
            .into());
        }
        if proof.length > proof.base && proof.length > length && proof.base != length {
            return Err(VerifyError::StaleUpgrade {
                base: proof.base,
                current: length,
            }
            .into());
        }
        if proof.length < length && proof.length > proof.base {
            // A signed head older than ours: we cannot relate it to our tree.
            return Err(VerifyError::StaleUpgrade {
                base: proof.base,
                current: length,
            }
            .into());
        }
        let base_roots = self.roots_at(proof.base)?;
        let trusted = proof.head.filter(|h| self.trusted.contains(h));
        let verified = proof.verify_with(&self.key, &base_roots, blocks, trusted.as_ref())?;
        if verified.length == length && length > 0 && verified.roots != self.roots {
            return Err(VerifyError::TreeMismatch { length }.into());
        }
        Ok(verified)
    }

    /// Verify `proof` and `blocks` (see [`Feed::verify`]) and, only if everything checks,
    /// store the blocks, the nodes and any new head in one atomic batch. The batch is
    /// not synced: call [`Feed::flush`] for durability of downloads.
    pub fn ingest(&mut self, proof: &Proof, blocks: Vec<Vec<u8>>) -> Result<Ingested, IngestError> {
        let (verified, head) = self.verify_ingest(proof, &blocks)?;
        let batch = WriteBatch {
            blocks: blocks
                .into_iter()
                .enumerate()
                .map(|(i, b)| (proof.start + i as u64, b))
                .filter(|(i, _)| !self.has(*i))
                .collect(),
            nodes: verified.nodes.iter().map(|&n| n.into()).collect(),
            head: head.map(Into::into),
        };
        self.storage.write(batch)?;
        Ok(self.ingested(proof, verified, head))
    }

    /// [`Feed::ingest`] with the blocks borrowed: verified where they are (in the frame
    /// they arrived in) and handed to storage as slices
    /// ([`FeedStorage::write_borrowed`]), so disk storage writes them without a copy.
    pub fn ingest_borrowed(
        &mut self,
        proof: &Proof,
        blocks: &[&[u8]],
    ) -> Result<Ingested, IngestError> {
        let (verified, head) = self.verify_ingest(proof, blocks)?;
        let new: Vec<(u64, &[u8])> = (proof.start..)
            .zip(blocks.iter().copied())
            .filter(|(i, _)| !self.has(*i))
            .collect();
        let nodes = verified.nodes.iter().map(|&n| n.into()).collect();
        self.storage
            .write_borrowed(&new, nodes, head.map(Into::into))?;
        Ok(self.ingested(proof, verified, head))
    }

    /// What [`Feed::ingest`] checks before it writes: the proof verifies, and an upgrade
    /// comes with its signed head (returned).
    fn verify_ingest<B: AsRef<[u8]> + Sync>(
        &mut self,
        proof: &Proof,
        blocks: &[B],
    ) -> Result<(VerifiedProof, Option<SignedHead>), IngestError> {
        let verified = self.verify(proof, blocks)?;
        let upgraded = verified.length > self.length();
        let head = if upgraded { verified.head } else { None };
        if upgraded && head.is_none() {
            return Err(VerifyError::Malformed("upgrade without a signed head").into());
        }
        Ok((verified, head))
    }

    /// After an ingest's write: take its head and roots, and its blocks as stored.
    fn ingested(
        &mut self,
        proof: &Proof,
        verified: VerifiedProof,
        head: Option<SignedHead>,
    ) -> Ingested {
        if let Some(h) = head {
            self.set_head(h, verified.roots);
        }
        self.add_run(proof.start, proof.end);
        Ingested {
            blocks: proof.start..proof.end,
            upgraded: head.map(|h| h.length),
        }
    }

    /// Make everything written so far durable.
    pub fn flush(&mut self) -> Result<(), StorageError> {
        self.storage.sync()
    }

    fn roots_at(&mut self, length: u64) -> Result<Vec<Node>, IngestError> {
        if length == self.length() {
            return Ok(self.roots.clone());
        }
        if length > self.length() {
            return Err(VerifyError::UnknownBase { base: length }.into());
        }
        let mut roots = Vec::new();
        for i in full_roots(length) {
            match self.storage.node(i)? {
                Some(n) => roots.push(n.into()),
                None => return Err(VerifyError::UnknownBase { base: length }.into()),
            }
        }
        Ok(roots)
    }

    /// Record blocks `[start, end)` as stored, merging runs.
    fn add_run(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // Absorb every run that overlaps or touches [start, end).
        let touching: Vec<(u64, u64)> = self
            .runs
            .range(..=end)
            .rev()
            .take_while(|(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        let (mut lo, mut hi) = (start, end);
        let mut already = 0;
        for (s, e) in touching {
            self.runs.remove(&s);
            already += e.min(end).saturating_sub(s.max(start));
            lo = lo.min(s);
            hi = hi.max(e);
        }
        self.runs.insert(lo, hi);
        self.stored += (end - start) - already;
    }

    fn set_head(&mut self, head: SignedHead, roots: Vec<Node>) {
        self.head = Some(head);
        self.roots = roots;
        self.trust(head);
    }

    fn trust(&mut self, head: SignedHead) {
        if self.trusted.len() >= TRUSTED_HEADS {
            self.trusted.pop_front();
        }
        self.trusted.push_back(head);
    }
}

#[cfg(test)]
mod tests;
