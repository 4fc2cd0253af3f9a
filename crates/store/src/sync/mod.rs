//! The feed sync core: one [`FeedSync`] per (feed, peer), with no I/O and no clock.
//!
//! The owner of a feed (a store actor) drives one core per peer:
//! - inputs: [`FeedSync::handle_start`] once, [`FeedSync::handle_message`] (or
//!   [`FeedSync::handle_bytes`]) for each message from the peer,
//!   [`FeedSync::handle_feed_update`] on every other core of the feed whenever a call
//!   changed [`Feed::length`] or [`Feed::stored_count`] (and after a local append), and
//!   [`FeedSync::handle_timeout`] when [`FeedSync::poll_timeout`] is reached; time is
//!   passed in as `now`;
//! - outputs: [`FeedSync::poll_transmit`] (call it while the stream can take more; each
//!   message is encoded with [`crate::message::encode`] into one frame) and
//!   [`FeedSync::poll_event`];
//! - end: [`FeedSync::close`] when the stream ends or a call failed, so the blocks this
//!   core was fetching go to the feed's other cores at once.
//!
//! Protocol (see `docs/PROTOCOL.md`, "Feeds"): each side starts with a [`Have`] and sends
//! another when its length changes (the live notice) or it stored many new blocks. A side
//! that wants more than its own head asks the peer for an upgrade proof
//! (`RequestUpgrade`, one at a time), which moves its head with one signature check. It
//! then pipelines up to [`SyncConfig::max_outstanding`] `Request`s of at most
//! [`SyncConfig::blocks_per_message`] blocks each, proven against its own length, so data
//! proofs need no signature at all. The cores of one feed claim the blocks they request
//! in the [`Feed`], so each peer is asked for different blocks; a core with nothing left
//! to ask duplicates others' requests once they are `ENDGAME_AFTER` old (endgame)
//! rather than wait on a slow peer. A side
//! answers requests from its feed, building each answer only when polled. Every error
//! returned by a `handle_*` method is the peer's fault or a storage failure; the caller
//! ends this peer's stream. Nothing from a failed message was stored.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use crate::feed::{Feed, IngestError};
use crate::keys::SignedHead;
use crate::message::{
    self, Data, DecodeError, Decoded, Have, Message, Request, MAX_BLOCKS_PER_MESSAGE,
    MAX_DATA_BYTES, MAX_HAVE_RANGES, MAX_OUTSTANDING_REQUESTS,
};
use crate::proof::{Proof, ProofError, VerifyError};
use crate::storage::FeedStorage;

use self::ranges::{remove_range, union_ranges};

pub use self::types::{SyncConfig, SyncError, SyncEvent, SyncStats, Want};

mod ranges;
mod types;

/// New blocks stored since our last `Have` after which we send another even though our
/// length did not move (a `Have` is also sent when we hold every block, and when a round
/// of downloads completes). At 1 KiB blocks that costs well under 1 % of the data bytes.
const HAVE_EVERY_BLOCKS: u64 = 1024;

/// New bytes stored since our last `Have` (estimated from the feed's mean block size)
/// after which we send another: with large blocks [`HAVE_EVERY_BLOCKS`] alone would hold
/// a replica's partial copy back from its peers until it had 64 MiB more (at 64 KiB
/// blocks), so a feed spread through a swarm of readers would travel a whole copy per
/// hop. A `Have` of a contiguous copy is about 150 bytes: one per MiB is 0.015 %.
const HAVE_EVERY_BYTES: u64 = 1 << 20;

/// In the endgame a core asks for blocks another core claimed only once that core got
/// no data for this long (its peer is slow or stalled): a core whose peer holds nothing
/// unclaimed would otherwise duplicate every request in flight at once. With a reader
/// fetching from a dozen peers in a swarm (each a source for the blocks it announced),
/// every block then crossed the wire 3-4 times; counting from the request instead of
/// the owner's last data still did (the last of 16 pipelined requests waits for the 15
/// before it on a busy peer). 10 s: at 2 s, peers serving dozens of readers on a
/// loaded machine still left gaps that long and each block crossed the wire 3 times; at
/// 10 s, once. A stalled peer delays the blocks it claimed by that much, well under
/// `request_timeout`.
const ENDGAME_AFTER: Duration = Duration::from_secs(10);

/// A request of the peer's, waiting to be answered.
#[derive(Debug, Clone, Copy)]
enum Serve {
    Upgrade(u64),
    Data(Request),
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    end: u64,
    length: u64,
    sent: Instant,
}

/// The sync state machine for one feed and one peer. See the module docs.
#[derive(Debug)]
pub struct FeedSync {
    /// Names this core in the feed's download claims.
    id: u64,
    config: SyncConfig,
    peer_head: Option<SignedHead>,
    /// A head of the feed this node verified before the stream (the peer's first words):
    /// the same bytes in a `Have` are not verified again.
    verified_head: Option<SignedHead>,
    peer_ranges: Vec<(u64, u64)>,
    outstanding: BTreeMap<u64, Outstanding>,
    upgrade: Option<(u64, Instant)>,
    /// Every wanted block below this is stored, requested, or not held by the peer.
    cursor: u64,
    sent_length: Option<u64>,
    /// Blocks we stored when we last sent a `Have`.
    sent_stored: u64,
    /// The peer has asked us for an upgrade: it wants our new heads, so we push them.
    peer_follows: bool,
    /// The peer's head length when it last answered `NoUpgrade`.
    upgrade_refused: Option<u64>,
    /// A `Have` from the peer arrived, with or without a head: we know what it holds.
    peer_seen: bool,
    synced: bool,
    synced_once: bool,
    transmit: VecDeque<Message>,
    pending: VecDeque<Serve>,
    events: VecDeque<SyncEvent>,
    stats: SyncStats,
}

impl FeedSync {
    /// A core with `config`; call [`FeedSync::handle_start`] next.
    pub fn new(config: SyncConfig) -> Self {
        let cursor = match config.want {
            Want::Range { start, .. } => start,
            _ => 0,
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        FeedSync {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            config,
            peer_head: None,
            verified_head: None,
            peer_ranges: Vec::new(),
            outstanding: BTreeMap::new(),
            upgrade: None,
            cursor,
            sent_length: None,
            sent_stored: 0,
            peer_follows: false,
            upgrade_refused: None,
            peer_seen: false,
            synced: false,
            synced_once: false,
            transmit: VecDeque::new(),
            pending: VecDeque::new(),
            events: VecDeque::new(),
            stats: SyncStats::default(),
        }
    }

    /// Start: queue our [`Have`].
    pub fn handle_start<S: FeedStorage>(&mut self, feed: &mut Feed<S>, now: Instant) {
        self.send_have(feed);
        self.schedule(feed, now);
    }

    /// Change what we want; requests already sent stay in flight.
    pub fn set_want<S: FeedStorage>(&mut self, feed: &mut Feed<S>, want: Want, now: Instant) {
        self.config.want = want;
        self.cursor = match want {
            Want::Range { start, .. } => start,
            _ => 0,
        };
        self.synced = false;
        self.synced_once = false;
        self.schedule(feed, now);
    }

    /// The feed changed by another path (local append, blocks from another peer): send
    /// the live notice if our length moved, and request what is newly possible.
    pub fn handle_feed_update<S: FeedStorage>(&mut self, feed: &mut Feed<S>, now: Instant) {
        self.schedule(feed, now);
    }

    /// Decode one frame from the peer and handle it. A data message's blocks are
    /// verified and stored from `bytes` as they are ([`message::decode_in_place`]), not
    /// copied out first.
    pub fn handle_bytes<S: FeedStorage>(
        &mut self,
        feed: &mut Feed<S>,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), SyncError> {
        match message::decode_in_place(bytes)? {
            Decoded::Data(data) => {
                self.on_data(feed, &data.proof, &data.blocks, now)?;
                self.schedule(feed, now);
                Ok(())
            }
            Decoded::Other(message) => self.handle_message(feed, message, now),
        }
    }

    /// Handle one message from the peer.
    pub fn handle_message<S: FeedStorage>(
        &mut self,
        feed: &mut Feed<S>,
        message: Message,
        now: Instant,
    ) -> Result<(), SyncError> {
        match message {
            Message::Have(have) => self.on_have(feed, have)?,
            Message::RequestUpgrade { from } => {
                self.peer_follows = true;
                self.on_request_upgrade(from)?
            }
            Message::Upgrade { proof } => {
                if self.upgrade.is_some_and(|(from, _)| from == proof.base) {
                    self.upgrade = None;
                }
                if proof.start != proof.end {
                    return Err(DecodeError::Invalid("upgrade carries blocks").into());
                }
                match feed.ingest(&proof, Vec::new()) {
                    Ok(done) => {
                        if let Some(length) = done.upgraded {
                            self.events.push_back(SyncEvent::Upgraded { length });
                        }
                    }
                    // Our head moved meanwhile: not the peer's fault; ask again below.
                    Err(IngestError::Verify(VerifyError::StaleUpgrade { .. })) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Message::NoUpgrade { from } => {
                if self.upgrade.is_some_and(|(f, _)| f == from) {
                    self.upgrade = None;
                    // Do not ask this peer again until it announces a new head.
                    self.upgrade_refused = self.peer_head.map(|h| h.length);
                }
            }
            Message::Request(r) => self.on_request(feed, r)?,
            Message::Data(data) => {
                let blocks: Vec<&[u8]> = data.blocks.iter().map(|b| b.as_slice()).collect();
                self.on_data(feed, &data.proof, &blocks, now)?
            }
            Message::NoData { start, end } => {
                match self.outstanding.get(&start) {
                    Some(o) if o.end == end => {}
                    _ => return Err(SyncError::Unrequested { start, end }),
                }
                self.outstanding.remove(&start);
                feed.release(start, self.id);
                remove_range(&mut self.peer_ranges, start, end);
                self.cursor = self.cursor.min(start);
            }
        }
        self.schedule(feed, now);
        Ok(())
    }

    /// This core is done (its stream ended, or a `handle_*` call failed): give the
    /// blocks it was downloading back to the feed's other cores (then call
    /// [`FeedSync::handle_feed_update`] on them so they ask for those blocks). Claims of a
    /// core that is dropped without `close` expire after `request_timeout`.
    pub fn close<S: FeedStorage>(&mut self, feed: &mut Feed<S>) {
        feed.release_all(self.id);
        self.outstanding.clear();
        self.upgrade = None;
        self.pending.clear();
        self.transmit.clear();
    }

    /// Check timers: an unanswered request older than the timeout ends the sync.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SyncError> {
        let limit = self.config.request_timeout;
        if let Some((&start, o)) = self
            .outstanding
            .iter()
            .find(|(_, o)| now.saturating_duration_since(o.sent) >= limit)
        {
            return Err(SyncError::Timeout { start, end: o.end });
        }
        if let Some((from, sent)) = self.upgrade {
            if now.saturating_duration_since(sent) >= limit {
                return Err(SyncError::Timeout {
                    start: from,
                    end: from,
                });
            }
        }
        Ok(())
    }

    /// The next message to send to the peer, or `Ok(None)`. Call it when the stream can
    /// take another message: answers to the peer's requests are built here, one per
    /// call, so what is waiting to be sent stays small. An error is a storage failure.
    pub fn poll_transmit<S: FeedStorage>(
        &mut self,
        feed: &mut Feed<S>,
    ) -> Result<Option<Message>, SyncError> {
        self.poll_transmit_into(feed, &mut Vec::with_capacity)
    }

    /// [`FeedSync::poll_transmit`], reading the blocks of a data answer into buffers from
    /// `buffer` (called with each block's length; see [`Feed::get_blocks_into`]), for a
    /// caller that recycles the buffers of the messages it has sent.
    pub fn poll_transmit_into<S: FeedStorage>(
        &mut self,
        feed: &mut Feed<S>,
        buffer: &mut dyn FnMut(usize) -> Vec<u8>,
    ) -> Result<Option<Message>, SyncError> {
        if let Some(m) = self.transmit.pop_front() {
            return Ok(Some(m));
        }
        match self.pending.pop_front() {
            Some(serve) => self.serve(feed, serve, buffer).map(Some),
            None => Ok(None),
        }
    }

    /// Whether the next [`FeedSync::poll_transmit`] builds a data answer (reads blocks
    /// from storage, up to one data message of them) rather than sending a small message
    /// already queued: a caller that bounds the bytes of answers in flight holds it back
    /// while that budget is spent, and everything else still goes out.
    pub fn serves_data_next(&self) -> bool {
        self.transmit.is_empty() && matches!(self.pending.front(), Some(Serve::Data(_)))
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SyncEvent> {
        self.events.pop_front()
    }

    /// When [`FeedSync::handle_timeout`] must be called next, if anything is in flight.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let oldest = self
            .outstanding
            .values()
            .map(|o| o.sent)
            .chain(self.upgrade.map(|(_, sent)| sent))
            .min()?;
        Some(oldest + self.config.request_timeout)
    }

    /// Whether everything wanted that the peer has is here and nothing is in flight.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Gives the core a head of its feed that this node verified itself, with
    /// [`FeedKey::verify_head`](crate::FeedKey::verify_head) or
    /// [`verify_heads`](crate::verify_heads) (the peer's first words, say): a `Have`
    /// whose head has the same bytes (length, tree hash, signature) is not verified
    /// again; any other head is. Never give a head that was not verified.
    pub fn with_verified_head(mut self, head: Option<SignedHead>) -> Self {
        self.verified_head = head;
        self
    }

    /// The peer's latest verified head.
    pub fn peer_head(&self) -> Option<&SignedHead> {
        self.peer_head.as_ref()
    }

    /// Requests in flight.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Counters.
    pub fn stats(&self) -> SyncStats {
        self.stats
    }

    fn send_have<S: FeedStorage>(&mut self, feed: &Feed<S>) {
        self.sent_length = Some(feed.length());
        self.sent_stored = feed.stored_count();
        self.transmit.push_back(Message::Have(Have {
            head: feed.head().copied(),
            ranges: feed.stored_ranges(MAX_HAVE_RANGES),
        }));
    }

    fn on_have<S: FeedStorage>(&mut self, feed: &mut Feed<S>, have: Have) -> Result<(), SyncError> {
        self.peer_seen = true;
        let Some(head) = have.head else {
            return Ok(());
        };
        if self.peer_head.is_some_and(|p| head.length < p.length) {
            return Ok(()); // an older notice overtaken by a newer one
        }
        if self.verified_head == Some(head) {
            feed.trust_verified(head);
        } else {
            feed.check_head(&head)?;
        }
        if head.length == feed.length()
            && feed.head().is_some_and(|h| h.tree_hash != head.tree_hash)
        {
            return Err(VerifyError::TreeMismatch {
                length: head.length,
            }
            .into());
        }
        self.peer_head = Some(head);
        // Peers never drop blocks, so what an overtaken `Have` lists is still true: keep
        // the union (bounded) rather than the latest list alone.
        self.peer_ranges = union_ranges(&self.peer_ranges, &have.ranges);
        self.peer_ranges.truncate(4 * MAX_HAVE_RANGES);
        self.cursor = self.range_start();
        self.events.push_back(SyncEvent::PeerHead {
            length: head.length,
        });
        Ok(())
    }

    fn on_request_upgrade(&mut self, from: u64) -> Result<(), SyncError> {
        self.queue_serve(Serve::Upgrade(from))
    }

    fn on_request<S: FeedStorage>(&mut self, feed: &Feed<S>, r: Request) -> Result<(), SyncError> {
        let Request { start, end, length } = r;
        if start >= end || end > length || length > feed.length() {
            return Err(SyncError::BadRequest { start, end, length });
        }
        self.queue_serve(Serve::Data(r))
    }

    fn queue_serve(&mut self, serve: Serve) -> Result<(), SyncError> {
        if self.pending.len() >= MAX_OUTSTANDING_REQUESTS {
            return Err(SyncError::TooManyRequests {
                max: MAX_OUTSTANDING_REQUESTS,
            });
        }
        self.pending.push_back(serve);
        Ok(())
    }

    /// Build the answer to one queued request (only when the caller is ready to send it,
    /// so a fast requester cannot make us hold many data messages).
    fn serve<S: FeedStorage>(
        &mut self,
        feed: &mut Feed<S>,
        serve: Serve,
        buffer: &mut dyn FnMut(usize) -> Vec<u8>,
    ) -> Result<Message, SyncError> {
        let r = match serve {
            Serve::Upgrade(from) => {
                let length = feed.length();
                if from >= length {
                    return Ok(Message::NoUpgrade { from });
                }
                return match feed.proof(from, length, length, length) {
                    Ok(proof) => Ok(Message::Upgrade { proof }),
                    Err(ProofError::MissingNode(_)) | Err(ProofError::Range { .. }) => {
                        Ok(Message::NoUpgrade { from })
                    }
                    Err(ProofError::Storage(e)) => Err(e.into()),
                };
            }
            Serve::Data(r) => r,
        };
        let Request { start, end, length } = r;
        let max_bytes = self.config.max_data_bytes.min(MAX_DATA_BYTES);
        let limit = end.min(start.saturating_add(MAX_BLOCKS_PER_MESSAGE));
        let read = feed.get_blocks_into(start, limit, max_bytes, buffer)?;
        let bytes: usize = read.iter().map(Vec::len).sum();
        let stop = start + read.len() as u64;
        let blocks: Vec<ByteBuf> = read.into_iter().map(ByteBuf::from).collect();
        if blocks.is_empty() {
            return Ok(Message::NoData { start, end });
        }
        match feed.proof(length, length, start, stop) {
            Ok(proof) => {
                self.stats.blocks_out += blocks.len() as u64;
                self.stats.bytes_out += bytes as u64;
                Ok(Message::Data(Data { proof, blocks }))
            }
            Err(ProofError::MissingNode(_)) | Err(ProofError::Range { .. }) => {
                Ok(Message::NoData { start, end })
            }
            Err(ProofError::Storage(e)) => Err(e.into()),
        }
    }

    fn on_data<S: FeedStorage>(
        &mut self,
        feed: &mut Feed<S>,
        proof: &Proof,
        blocks: &[&[u8]],
        now: Instant,
    ) -> Result<(), SyncError> {
        let (start, end) = (proof.start, proof.end);
        let o = match self.outstanding.get(&start) {
            Some(o)
                if end > start
                    && end <= o.end
                    && proof.length == o.length
                    && proof.base == o.length =>
            {
                *o
            }
            _ => return Err(SyncError::Unrequested { start, end }),
        };
        feed.release(start, self.id);
        let bytes: usize = blocks.iter().map(|b| b.len()).sum();
        feed.ingest_borrowed(proof, blocks)?;
        // The peer delivers: its other claims are not stale (see [`ENDGAME_AFTER`]).
        feed.refresh_claims(self.id, now);
        self.outstanding.remove(&start);
        if end < o.end {
            self.cursor = self.cursor.min(end); // the rest is asked for again
        }
        self.stats.blocks_in += end - start;
        self.stats.bytes_in += bytes as u64;
        self.events.push_back(SyncEvent::Downloaded { start, end });
        Ok(())
    }

    fn range_start(&self) -> u64 {
        match self.config.want {
            Want::Range { start, .. } => start,
            _ => 0,
        }
    }

    /// The end of the wanted blocks, given our length.
    fn want_end(&self, length: u64) -> u64 {
        match self.config.want {
            Want::Nothing => 0,
            Want::All => length,
            Want::Range { end, .. } => end.min(length),
        }
    }

    fn wants_upgrade(&self, length: u64) -> bool {
        let peer = self.peer_head.map_or(0, |h| h.length);
        if peer <= length || self.upgrade_refused == Some(peer) {
            return false;
        }
        if self.synced_once && self.config.live {
            return true;
        }
        match self.config.want {
            Want::Nothing => self.config.live,
            Want::All => !self.synced_once,
            Want::Range { end, .. } => end > length,
        }
    }

    fn peer_has(&self, index: u64) -> Option<u64> {
        // Returns the end of the peer's range holding `index`, if any.
        let i = self.peer_ranges.partition_point(|&(_, e)| e <= index);
        self.peer_ranges
            .get(i)
            .filter(|&&(s, _)| s <= index)
            .map(|&(_, e)| e)
    }

    fn next_peer_start(&self, index: u64) -> Option<u64> {
        let i = self.peer_ranges.partition_point(|&(_, e)| e <= index);
        self.peer_ranges.get(i).map(|&(s, _)| s.max(index))
    }

    fn outstanding_end_at(&self, index: u64) -> Option<u64> {
        self.outstanding
            .range(..=index)
            .next_back()
            .filter(|(_, o)| o.end > index)
            .map(|(_, o)| o.end)
    }

    /// Request missing blocks below `hi` from the cursor on, up to the window. Blocks
    /// another core has claimed are skipped unless `endgame` and the claim is
    /// [`ENDGAME_AFTER`] old. Returns where the scan
    /// stopped and the first block skipped for another core's claim.
    fn fill<S: FeedStorage>(
        &mut self,
        feed: &mut Feed<S>,
        hi: u64,
        endgame: bool,
        now: Instant,
    ) -> (u64, Option<u64>) {
        // At most what one data message carries (`max_data_bytes`, from the mean block
        // size): a request of 64 blocks of 64 KiB claimed 4 MiB for one peer, so a reader's
        // first peer claimed a whole feed of 16 MiB in its window and its other peers had
        // nothing left to fetch.
        let mean_block = feed.byte_length().checked_div(feed.length()).unwrap_or(0);
        let per_message = (self.config.max_data_bytes as u64)
            .checked_div(mean_block)
            .unwrap_or(u64::MAX)
            .max(1);
        let per = self
            .config
            .blocks_per_message
            .min(per_message)
            .clamp(1, MAX_BLOCKS_PER_MESSAGE);
        let max_outstanding = self
            .config
            .max_outstanding
            .clamp(1, MAX_OUTSTANDING_REQUESTS - 1);
        let id = self.id;
        // A claim of another core stands, except in the endgame once it is old.
        let taken = |feed: &Feed<S>, j: u64| match feed.other_claim(j, id, now) {
            Some((_, since))
                if endgame && now.saturating_duration_since(since) >= ENDGAME_AFTER =>
            {
                None
            }
            claim => claim.map(|(end, _)| end),
        };
        let mut skipped = None;
        let mut i = self.cursor.max(self.range_start());
        while i < hi && self.outstanding.len() < max_outstanding {
            if i < feed.contiguous_length() {
                i = feed.contiguous_length();
                continue;
            }
            if feed.has(i) {
                i += 1;
                continue;
            }
            if let Some(e) = self.outstanding_end_at(i) {
                i = e;
                continue;
            }
            let Some(peer_end) = self.peer_has(i) else {
                i = self.next_peer_start(i).unwrap_or(hi);
                continue;
            };
            if let Some(e) = taken(feed, i) {
                skipped.get_or_insert(i);
                i = e;
                continue;
            }
            let limit = hi.min(peer_end).min(i + per);
            let mut j = i + 1;
            while j < limit
                && !feed.has(j)
                && !self.outstanding.contains_key(&j)
                && taken(feed, j).is_none()
            {
                j += 1;
            }
            if !endgame {
                feed.claim(i, j, id, now, now + self.config.request_timeout);
            }
            self.outstanding.insert(
                i,
                Outstanding {
                    end: j,
                    length: feed.length(),
                    sent: now,
                },
            );
            self.transmit.push_back(Message::Request(Request {
                start: i,
                end: j,
                length: feed.length(),
            }));
            i = j;
        }
        (i, skipped)
    }

    /// Our head moved and the peer follows us: send the upgrade proof from the peer's
    /// last announced length ahead of the `Have`, saving it the round trip of asking.
    /// If the peer's length moved meanwhile it drops the proof as stale and asks.
    /// (Anything but a proof, including a storage error, is left for the peer to ask.)
    fn push_upgrade<S: FeedStorage>(&mut self, feed: &mut Feed<S>) {
        if !self.peer_follows {
            return;
        }
        let from = self.peer_head.map_or(0, |h| h.length);
        if from >= feed.length() {
            return;
        }
        if let Ok(m @ Message::Upgrade { .. }) =
            self.serve(feed, Serve::Upgrade(from), &mut Vec::with_capacity)
        {
            self.transmit.push_back(m);
        }
    }

    fn schedule<S: FeedStorage>(&mut self, feed: &mut Feed<S>, now: Instant) {
        let length = feed.length();
        let grown = feed.stored_count().saturating_sub(self.sent_stored);
        if self.sent_length.is_some_and(|sent| sent < length) {
            self.push_upgrade(feed);
        }
        let grown_bytes = (grown as u128 * u128::from(feed.byte_length()))
            .checked_div(u128::from(length))
            .unwrap_or(0);
        if self.sent_length != Some(length)
            || (grown > 0
                && (grown >= HAVE_EVERY_BLOCKS
                    || grown_bytes >= u128::from(HAVE_EVERY_BYTES)
                    || feed.stored_count() >= length))
        {
            self.send_have(feed);
        }
        if self.upgrade.is_none() && self.wants_upgrade(length) {
            self.upgrade = Some((length, now));
            self.transmit
                .push_back(Message::RequestUpgrade { from: length });
        }
        // A peer behind us cannot prove blocks against our length: ask it for nothing.
        let peer_can_serve = self.peer_head.is_some_and(|h| h.length >= length);
        let hi = if peer_can_serve {
            self.want_end(length)
        } else {
            0
        };
        let (i, skipped) = self.fill(feed, hi, false, now);
        // Endgame: with nothing of our own in flight, ask for what other cores are
        // fetching too, so a slow or stalled peer elsewhere cannot stall us.
        if self.outstanding.is_empty() {
            if let Some(from) = skipped {
                self.cursor = from;
                self.fill(feed, hi, true, now);
            }
        }
        self.cursor = skipped.unwrap_or(i).min(i);
        let done = i >= hi
            && skipped.is_none()
            && self.outstanding.is_empty()
            && self.upgrade.is_none()
            && !self.wants_upgrade(length);
        // A peer with an empty feed sends a `Have` without a head: once that arrived,
        // two empty feeds are in sync too.
        if done && !self.synced && self.peer_seen {
            self.synced = true;
            self.synced_once = true;
            self.events.push_back(SyncEvent::Synced { length });
            if feed.stored_count() != self.sent_stored {
                self.send_have(feed); // tell the peer what we now hold
            }
        }
        if !done {
            self.synced = false;
        }
    }
}

#[cfg(test)]
mod tests;
