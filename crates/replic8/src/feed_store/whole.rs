//! Small feeds sent and taken whole, in place of a feed stream (decisions 210, 211):
//! [`ReadWhole`] reads many feeds in one storage read, [`WriteWhole`] verifies many
//! (signatures in a batch, each tree hashed) and stores them in one storage write, both
//! on the blocking pool. A feed is read or written only if it belongs to the namespace
//! here; a feed written whole is reported as a stream's download would be, except that
//! the session layer gets no [`FeedSynced`](crate::store::FeedSynced) (it marks the feed
//! in sync itself).

use super::*;
use replic8_store::storage::{WholeWrite, WholeWritten};
use replic8_store::{check_whole, verify_heads, SignedHead, VerifyError};

use super::serve_budget::ANSWER_RESERVE;
use crate::store::{ArrivedWhole, ReadWhole, WholeFeed, WholeHold, WholeOutcome, WriteWhole};

impl<St: Storage> Handler<ReadWhole> for FeedStore<St> {
    type Result = ResponseFuture<Result<Vec<Option<WholeFeed>>, StoreError>>;

    /// Feeds not held in the namespace are `None`; the others are read in one call of
    /// `Registry::read_whole`, under the store's serve budget (decision 245) and the
    /// peer's share of it (decision 268): the read
    /// first reserves what its feeds take, and answers only the leading feeds that fit
    /// in one reservation (at least one); the session asks again for the rest. The
    /// feeds read keep their bytes of the budget ([`WholeFeed::hold`]) until the session
    /// has packed them. The blocks of every feed answered count as sent (`blocks_out`,
    /// `bytes_out`): they go out whole right after.
    fn handle(&mut self, msg: ReadWhole, _: &mut Context<Self>) -> Self::Result {
        let ReadWhole {
            namespace,
            feeds,
            max_bytes,
            peer,
            ..
        } = msg;
        let mut asked = Vec::with_capacity(feeds.len());
        let mut served = Vec::with_capacity(feeds.len());
        let mut reserve = 0;
        for key in feeds {
            let held = self.held.contains(&key) && self.is_member(&key, &namespace);
            let bytes = if held {
                whole_bytes(self.registry.index(), key, max_bytes)
            } else {
                0
            };
            if !asked.is_empty() && reserve + bytes > ANSWER_RESERVE {
                break;
            }
            reserve += bytes;
            asked.push(key);
            if held {
                served.push(key);
            }
        }
        let shared = self.shared.clone();
        let to_read = served.clone();
        let read = self.blocking(move |registry| Ok(registry.read_whole(&to_read, max_bytes)?));
        Box::pin(async move {
            if served.is_empty() {
                return Ok(vec![None; asked.len()]);
            }
            let budget = shared.serve.share(peer);
            let mut reservation = budget.reserve_whole(reserve).await;
            let read = read.await.map_err(|e| StoreError::Failed(e.to_string()))?;
            let mut found: HashMap<FeedKey, WholeFeed> = HashMap::with_capacity(served.len());
            for (key, read) in served.iter().zip(read) {
                if let Some(read) = read {
                    let whole = WholeFeed {
                        head: read.head.into(),
                        blocks: read.blocks,
                        hold: WholeHold::default(),
                    };
                    found.insert(*key, whole);
                }
            }
            // In the asked order; a key asked twice is answered once.
            let mut answer: Vec<Option<WholeFeed>> =
                asked.iter().map(|key| found.remove(key)).collect();
            let size = |w: &Option<WholeFeed>| w.as_ref().map_or(0, block_bytes);
            let total: usize = answer.iter().map(size).sum();
            if total > reserve && !budget.try_extend(&mut reservation, total - reserve) {
                // A feed grew between its summary and the read, and the budget has no
                // room for the difference now: answer what fits, the rest later.
                let mut fits = 0;
                let mut sum = 0;
                for whole in &answer {
                    sum += size(whole);
                    if sum > reserve {
                        break;
                    }
                    fits += 1;
                }
                answer.truncate(fits.max(1));
                if fits == 0 {
                    // Even the first does not fit: it gets a stream.
                    answer[0] = None;
                }
            }
            let total: usize = answer.iter().map(size).sum();
            let hold = budget.hold_whole(reservation, total);
            let s = &shared.stats;
            for whole in answer.iter_mut().flatten() {
                whole.hold = hold.clone();
                s.blocks_out
                    .fetch_add(whole.blocks.len() as u64, Ordering::Relaxed);
                s.bytes_out
                    .fetch_add(block_bytes(whole) as u64, Ordering::Relaxed);
            }
            Ok(answer)
        })
    }
}

/// What reading `key` whole reserves of the serve budget: its bytes as its summary
/// says, nothing when the summary says it is not read whole (a block missing, or over
/// `max_bytes`), and `max_bytes` without a summary.
fn whole_bytes(index: &registry::FeedIndex, key: FeedKey, max_bytes: usize) -> usize {
    let max_bytes = max_bytes.min(ANSWER_RESERVE);
    match index.get(&key) {
        Some(summary) => {
            let bytes = usize::try_from(summary.info(key).byte_length).unwrap_or(usize::MAX);
            if summary.complete_length().is_none() || bytes > max_bytes {
                0
            } else {
                bytes
            }
        }
        None => max_bytes,
    }
}

/// Bytes of a feed's blocks.
fn block_bytes(whole: &WholeFeed) -> usize {
    whole.blocks.iter().map(Vec::len).sum()
}

impl<St: Storage> Handler<WriteWhole> for FeedStore<St> {
    type Result = ResponseFuture<Result<Vec<WholeOutcome>, StoreError>>;

    /// Feeds not held in the namespace are declined here; the others are verified and
    /// stored on the blocking pool (`write_whole`).
    fn handle(&mut self, msg: WriteWhole, _: &mut Context<Self>) -> Self::Result {
        let WriteWhole {
            peer,
            namespace,
            feeds,
        } = msg;
        let taken: Vec<bool> = feeds
            .iter()
            .map(|f| self.held.contains(&f.feed) && self.is_member(&f.feed, &namespace))
            .collect();
        let shared = self.shared.clone();
        let written =
            self.blocking(move |registry| write_whole(registry, &shared, peer, feeds, taken));
        Box::pin(async move { written.await.map_err(|e| StoreError::Failed(e.to_string())) })
    }
}

/// One feed of a [`WriteWhole`] that passed the namespace check.
struct Candidate {
    /// Its place in the message.
    at: usize,
    arrived: ArrivedWhole,
}

/// What was learned of one feed on its way to storage.
struct Checked {
    at: usize,
    feed: FeedKey,
    length: u64,
    bytes: u64,
}

/// Verifies the feeds `taken` (signatures of heads not verified yet in one batch, then
/// each feed's tree), stores those that verify in one [`Registry::write_whole`], and
/// reports what a stream's download reports: counters, [`FeedStoreEvent::Downloaded`]
/// and [`FeedStoreEvent::FeedSynced`] to the store's events, [`FeedUpdated`] to the
/// session layer. Runs on the blocking pool.
fn write_whole<St: Storage>(
    registry: &Registry<St>,
    shared: &Shared,
    peer: PeerKey,
    feeds: Vec<ArrivedWhole>,
    taken: Vec<bool>,
) -> Result<Vec<WholeOutcome>, FeedStoreError> {
    let mut out = vec![WholeOutcome::Declined; feeds.len()];
    // An empty head has nothing to store whole: a stream settles it.
    let candidates: Vec<Candidate> = feeds
        .into_iter()
        .zip(taken)
        .enumerate()
        .filter(|(_, (arrived, taken))| *taken && arrived.whole.head.length > 0)
        .map(|(at, (arrived, _))| Candidate { at, arrived })
        .collect();
    // The keys of heads to verify, decoded (a held feed's key decoded once already).
    let mut bad = vec![false; candidates.len()];
    let mut unverified = Vec::new();
    let mut heads: Vec<(replic8_store::FeedKey, SignedHead)> = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        if c.arrived.head_verified {
            continue;
        }
        match replic8_store::FeedKey::try_from(c.arrived.feed) {
            Ok(key) => {
                unverified.push(i);
                heads.push((key, c.arrived.whole.head));
            }
            Err(_) => bad[i] = true,
        }
    }
    for i in verify_heads(&heads) {
        bad[unverified[i]] = true;
    }
    let mut writes: Vec<WholeWrite> = Vec::with_capacity(candidates.len());
    let mut checked = Vec::with_capacity(candidates.len());
    for (c, bad) in candidates.into_iter().zip(bad) {
        let head = c.arrived.whole.head;
        let verified = if bad {
            Err(VerifyError::BadSignature {
                length: head.length,
            })
        } else {
            check_whole(c.arrived.feed.0, &head, c.arrived.whole.blocks)
        };
        match verified {
            Ok(write) => {
                checked.push(Checked {
                    at: c.at,
                    feed: c.arrived.feed,
                    length: head.length,
                    bytes: write.byte_length(),
                });
                writes.push(write);
            }
            Err(e) => out[c.at] = WholeOutcome::Failed(e.to_string()),
        }
    }
    if writes.is_empty() {
        return Ok(out);
    }
    let done = registry.write_whole(writes)?;
    for (c, done) in checked.into_iter().zip(done) {
        out[c.at] = match done {
            WholeWritten::Written => {
                let s = &shared.stats;
                s.blocks_in.fetch_add(c.length, Ordering::Relaxed);
                s.bytes_in.fetch_add(c.bytes, Ordering::Relaxed);
                shared.event(FeedStoreEvent::Downloaded {
                    feed: c.feed,
                    peer,
                    blocks: c.length,
                    bytes: c.bytes,
                });
                shared.event(FeedStoreEvent::FeedSynced {
                    feed: c.feed,
                    peer,
                    length: c.length,
                });
                shared.sessions.do_send(FeedUpdated {
                    feed: c.feed,
                    length: c.length,
                });
                WholeOutcome::Stored { length: c.length }
            }
            WholeWritten::Held { length } => {
                shared.event(FeedStoreEvent::FeedSynced {
                    feed: c.feed,
                    peer,
                    length,
                });
                WholeOutcome::Stored { length }
            }
            WholeWritten::Refused(_) => WholeOutcome::Declined,
            WholeWritten::Conflict => WholeOutcome::Failed(format!(
                "the head of length {} is not the tree held here at that length: its writer forked the feed",
                c.length
            )),
        };
    }
    Ok(out)
}
