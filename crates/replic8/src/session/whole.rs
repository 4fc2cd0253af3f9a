//! Small feeds sent whole on the control stream instead of a stream each (decision
//! 210). The two first words decide it alike on both sides: the receiver's has no head
//! and asks for the feed whole, the holder's has a head of at most `MAX_WHOLE_BLOCKS`
//! blocks. The holder reads such feeds from its store in batches while its own output
//! is under the pump bound (decision 197) and packs them into `Whole` messages, or
//! tells with a `Notice` that it will not; the receiver hands each message's feeds to
//! its store in one call, and reads no more of the control stream while too many bytes
//! are at its store. The store's answer makes the feed in sync (`Synced`), gives it a
//! stream (declined) or stops it (a bad block).

use serde_bytes::ByteBuf;
use tracing::{debug, warn};

use super::config::{
    MAX_WHOLE_BYTES_AT_STORE, MAX_WHOLE_READS, MAX_WHOLE_READ_FEEDS, MAX_WHOLE_WRITES,
    MAX_WHOLE_WRITE_BYTES, MAX_WHOLE_WRITE_FEEDS,
};
use super::state::{FirstWord, PeerHead, Stop, StreamState, Whole};
use super::types::{CommandError, StoreCall};
use super::Session;
use crate::frame::MAX_FRAME_LEN;
use crate::keys::{FeedKey, Role};
use crate::message::{
    self, CloseCode, Message, WholeEntry, MAX_WHOLE_BLOCKS, MAX_WHOLE_PER_MESSAGE,
};
use crate::store::{ArrivedWhole, WholeFeed, WholeHold, WholeOutcome};

/// Room left in a frame for a `Whole` message's own fields when packing feeds into it.
const WHOLE_SLACK: usize = 64;
/// What an arrived feed counts against [`MAX_WHOLE_BYTES_AT_STORE`] besides its
/// blocks: its key, head and block list.
const ARRIVED_OVERHEAD: usize = 160;

impl Session {
    /// The store serving `namespace` sends and takes small feeds whole
    /// (`StoreRecipients::with_whole`): our first words on its feeds that carry no head
    /// ask the peer for them whole, and the peer's such words are answered whole.
    pub fn handle_store_takes_whole(&mut self, namespace: &str) -> Result<(), CommandError> {
        self.alive()?;
        let ns = self
            .namespaces
            .get_mut(namespace)
            .ok_or_else(|| CommandError::UnknownNamespace(namespace.to_string()))?;
        ns.takes_whole = true;
        Ok(())
    }

    /// Part of `first_words_met`, once our word is out: decides a whole exchange from
    /// the two words. Returns whether the feed's stream rules must wait (a word is not
    /// known yet, or the feed goes whole).
    pub(super) fn whole_decides(&mut self, feed: &FeedKey) -> bool {
        let takes_whole = self
            .feeds
            .get(feed)
            .and_then(|state| self.namespaces.get(&state.namespace))
            .is_some_and(|ns| ns.takes_whole);
        let Some(state) = self.feeds.get_mut(feed) else {
            return true;
        };
        let decided = match state.whole {
            Whole::Asked => match &state.peer_head {
                PeerHead::Unheard => return true,
                PeerHead::Verifying(h) | PeerHead::Verified(h) | PeerHead::WithWhole(h)
                    if h.length <= MAX_WHOLE_BLOCKS as u64 =>
                {
                    state.whole = Whole::Expecting;
                    true
                }
                // A stream it is; its verified head goes with it (decision 198).
                PeerHead::Verifying(_) => return true,
                _ => false,
            },
            Whole::Offerable { length } => match state.peer_head {
                PeerHead::Unheard => return true,
                PeerHead::AsksWhole => {
                    state.whole = Whole::Queued { length };
                    state.peer_head = PeerHead::None;
                    state.our_head = None;
                    if takes_whole {
                        self.whole_reads.push_back(*feed);
                    } else {
                        // The peer expects the feed whole: tell it we do not send it.
                        self.whole_fallback(feed, u64::from(length));
                    }
                    return true;
                }
                _ => false,
            },
            Whole::No => false,
            _ => return true,
        };
        if !decided {
            state.whole = Whole::No;
            if state.peer_head == PeerHead::AsksWhole {
                state.peer_head = PeerHead::None;
            }
        }
        decided
    }

    /// The peer's first word on `feed` has no head and asks for the feed whole.
    pub(super) fn on_asks_whole(&mut self, feed: &FeedKey) {
        let Some(state) = self.feeds.get_mut(feed) else {
            return;
        };
        state.peer_spoke = true;
        state.peer_head = PeerHead::AsksWhole;
        if state.first_word == FirstWord::Sent {
            self.first_words_met(feed);
        }
    }

    /// The peer's `Synced` on `feed`: the answer to the feed we sent whole, if we did.
    /// Returns whether it was.
    pub(super) fn whole_synced(&mut self, feed: &FeedKey, length: u64) -> bool {
        let Some(state) = self.feeds.get_mut(feed) else {
            return false;
        };
        match state.whole {
            Whole::Sent => {}
            Whole::Writing => return false,
            _ => {
                state.whole = Whole::No;
                return false;
            }
        }
        state.whole = Whole::No;
        state.peer_spoke = true;
        state.peer_head = PeerHead::None;
        state.remote_synced = Some(length);
        state.early_ends = 0;
        let updated = state.updated;
        if updated > length {
            // Our copy grew while the peer stored the feed: the stream rules go on.
            self.handle_feed_updated(feed, updated);
        } else {
            state.local_synced = Some(length);
            self.check_synced(feed);
        }
        true
    }

    /// A `Whole` message: each entry must be a feed we expect whole (our word asked for
    /// it, the peer's had a small head, and no entry came yet); anything else is a
    /// protocol violation. Entries of a feed we stopped are dropped: they may have
    /// crossed our `Stopped`.
    pub(super) fn on_whole(&mut self, entries: Vec<WholeEntry>) {
        let mut calls: Vec<(String, Vec<ArrivedWhole>, usize)> = Vec::new();
        for entry in entries {
            let Some(feed) = self.by_discovery.get(&entry.feed).copied() else {
                return self.fail(
                    CloseCode::PROTOCOL,
                    format!(
                        "whole feed {}, which is not replicated",
                        entry.feed.fmt_short()
                    ),
                );
            };
            let Some(state) = self.feeds.get_mut(&feed) else {
                continue;
            };
            if matches!(state.stopped, Some(Stop::Fault(_))) {
                self.check_late(&feed);
                continue;
            }
            if state.whole != Whole::Expecting {
                return self.fail(
                    CloseCode::PROTOCOL,
                    format!(
                        "whole feed {}, which we did not ask for whole or had already",
                        entry.feed.fmt_short()
                    ),
                );
            }
            if matches!(&state.peer_head, PeerHead::WithWhole(h) if **h != entry.head) {
                // Another head than the first word's: the store checks this one, and
                // the first word's is checked here.
                self.check_late(&feed);
            }
            let Some(state) = self.feeds.get_mut(&feed) else {
                continue;
            };
            let bytes = entry.block_bytes() + ARRIVED_OVERHEAD;
            state.whole = Whole::Writing;
            self.whole_bytes += bytes;
            self.whole_writing.insert(feed, (entry.head.length, bytes));
            let arrived = ArrivedWhole {
                feed,
                whole: WholeFeed {
                    head: entry.head,
                    blocks: entry.blocks.into_iter().map(ByteBuf::into_vec).collect(),
                    hold: WholeHold::default(),
                },
                head_verified: false,
            };
            match calls.iter_mut().find(|(ns, _, _)| *ns == state.namespace) {
                Some((_, list, sum)) => {
                    list.push(arrived);
                    *sum += bytes;
                }
                None => calls.push((state.namespace.clone(), vec![arrived], bytes)),
            }
        }
        self.whole_writes.extend(calls);
    }

    /// The next whole call to a store, if any: while no write is in flight, a write of
    /// the first waiting messages of one namespace whose first-word heads are checked
    /// (up to [`MAX_WHOLE_WRITE_FEEDS`] feeds and [`MAX_WHOLE_WRITE_BYTES`], more only
    /// if one message has more), else a read while our output is under the pump
    /// bound.
    pub(super) fn poll_whole_call(&mut self) -> Option<StoreCall> {
        // Whether the first waiting write is of `namespace` (any, if `None`) and none of
        // its heads is still being checked.
        let ready = |session: &Session, namespace: Option<&str>| {
            session.whole_writes.front().is_some_and(|(ns, list, _)| {
                namespace.is_none_or(|n| n == ns)
                    && !list.iter().any(|arrived| {
                        session
                            .feeds
                            .get(&arrived.feed)
                            .is_some_and(|s| matches!(s.peer_head, PeerHead::Verifying(_)))
                    })
            })
        };
        if self.whole_writes_in_flight < MAX_WHOLE_WRITES && ready(self, None) {
            if let Some((namespace, mut feeds, mut bytes)) = self.whole_writes.pop_front() {
                while self.whole_writes.front().is_some_and(|(_, next, more)| {
                    feeds.len() + next.len() <= MAX_WHOLE_WRITE_FEEDS
                        && bytes + more <= MAX_WHOLE_WRITE_BYTES
                }) && ready(self, Some(&namespace))
                {
                    if let Some((_, next, more)) = self.whole_writes.pop_front() {
                        feeds.extend(next);
                        bytes += more;
                    }
                }
                self.whole_writes_in_flight += 1;
                for arrived in &mut feeds {
                    arrived.head_verified = self.feeds.get(&arrived.feed).is_some_and(|s| {
                        matches!(&s.peer_head, PeerHead::Verified(h) if **h == arrived.whole.head)
                    });
                }
                return Some(StoreCall::WriteWhole { namespace, feeds });
            }
        }
        if self.whole_reads_in_flight >= MAX_WHOLE_READS
            || self.over_pump_bound()
            || self.whole_ready_bytes >= MAX_FRAME_LEN
        {
            return None;
        }
        let mut namespace: Option<String> = None;
        let mut feeds = Vec::new();
        while feeds.len() < MAX_WHOLE_READ_FEEDS {
            let Some(feed) = self.whole_reads.front().copied() else {
                break;
            };
            let Some(state) = self.feeds.get_mut(&feed) else {
                self.whole_reads.pop_front();
                continue;
            };
            let Whole::Queued { length } = state.whole else {
                self.whole_reads.pop_front();
                continue;
            };
            match &namespace {
                Some(ns) if *ns != state.namespace => break,
                Some(_) => {}
                None => namespace = Some(state.namespace.clone()),
            }
            self.whole_reads.pop_front();
            state.whole = Whole::Reading { length };
            feeds.push(feed);
        }
        let namespace = namespace?;
        self.whole_reads_in_flight += 1;
        Some(StoreCall::ReadWhole { namespace, feeds })
    }

    /// The store's answer to [`StoreCall::ReadWhole`] for `feeds`: each feed whole, or
    /// `None` (not held whole, or over the bounds); or why it could not read (then
    /// every feed gets a stream). A feed not sent whole gets a `Notice` to the peer,
    /// which expects it, and the stream rules. An answer shorter than `feeds` but not
    /// empty answers the leading feeds: the others are read again (decision 245, the
    /// store's budget had room for those only). A feed read keeps its
    /// [`WholeFeed::hold`] until it is packed into a message.
    pub fn handle_whole_read(
        &mut self,
        feeds: &[FeedKey],
        answer: Result<Vec<Option<WholeFeed>>, String>,
    ) {
        self.whole_reads_in_flight = self.whole_reads_in_flight.saturating_sub(1);
        if self.ended.is_some() {
            return;
        }
        let answer = answer.unwrap_or_else(|e| {
            warn!(error = %e, "store did not read feeds whole: they get streams");
            Vec::new()
        });
        let answered = match answer.len() {
            0 => feeds.len(),
            n => n.min(feeds.len()),
        };
        let (feeds, later) = feeds.split_at(answered);
        for feed in later.iter().rev() {
            if let Some(state) = self.feeds.get_mut(feed) {
                if let Whole::Reading { length } = state.whole {
                    state.whole = Whole::Queued { length };
                    self.whole_reads.push_front(*feed);
                }
            }
        }
        let mut answers = answer.into_iter();
        for feed in feeds {
            let read = answers.next().flatten();
            let Some(state) = self.feeds.get_mut(feed) else {
                continue;
            };
            let Whole::Reading { length } = state.whole else {
                continue;
            };
            let entry = read.map(|whole| {
                let entry = WholeEntry {
                    feed: state.discovery_key,
                    head: whole.head,
                    blocks: whole.blocks.into_iter().map(ByteBuf::from).collect(),
                };
                (entry, whole.hold)
            });
            let entry = match entry.map(|(e, hold)| e.check().map(|()| (e, hold))) {
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    debug!(feed = %feed.fmt_short(), error = %e, "feed read whole is over the bounds: it gets a stream");
                    self.whole_fallback(feed, u64::from(length));
                    continue;
                }
                None => {
                    self.whole_fallback(feed, u64::from(length));
                    continue;
                }
            };
            state.whole = Whole::Sent;
            let (entry, hold) = entry;
            let len = message::encoded_len(&entry).unwrap_or(MAX_FRAME_LEN);
            self.whole_ready_bytes += len;
            self.whole_ready.push_back((entry, len, hold));
        }
        self.pump_offers();
    }

    /// Packs feeds read whole into `Whole` messages of at most a frame while our output
    /// is under [`MAX_PUMPED_CONTROL_BYTES`](super::MAX_PUMPED_CONTROL_BYTES).
    pub(super) fn pump_whole(&mut self) {
        while self.ended.is_none()
            && self.is_established()
            && !self.over_pump_bound()
            && !self.whole_ready.is_empty()
        {
            let mut feeds = Vec::new();
            // Given back to the store's budget once the message is queued.
            let mut holds = Vec::new();
            let mut size = 0;
            while let Some((_, len, _)) = self.whole_ready.front() {
                let full = feeds.len() >= MAX_WHOLE_PER_MESSAGE
                    || size + len > MAX_FRAME_LEN - WHOLE_SLACK;
                if !feeds.is_empty() && full {
                    break;
                }
                let Some((entry, len, hold)) = self.whole_ready.pop_front() else {
                    break;
                };
                size += len;
                self.whole_ready_bytes = self.whole_ready_bytes.saturating_sub(len);
                feeds.push(entry);
                holds.push(hold);
            }
            self.stats.feeds_sent_whole += feeds.len() as u64;
            self.send(Message::Whole { feeds });
            drop(holds);
        }
    }

    /// The store's answer to [`StoreCall::WriteWhole`] for `feeds` (in the call's
    /// order): `Stored` at the sent length makes the feed in sync both ways (we say
    /// `Synced`); `Declined`, another length or no answer gives it a stream (we say
    /// `Notice`; the dialer opens it); `Failed` stops the feed on this session as a
    /// store's `FeedFailed` does. An error answer counts as declined for every feed.
    pub fn handle_whole_written(
        &mut self,
        feeds: &[FeedKey],
        answer: Result<Vec<WholeOutcome>, String>,
    ) {
        self.whole_writes_in_flight = self.whole_writes_in_flight.saturating_sub(1);
        let over = self.over_whole_bound();
        let mut outcomes = answer
            .unwrap_or_else(|e| {
                warn!(error = %e, "store did not take feeds sent whole: they get streams");
                Vec::new()
            })
            .into_iter();
        for feed in feeds {
            let outcome = outcomes.next();
            let Some(state) = self.feeds.get_mut(feed) else {
                continue;
            };
            if state.whole != Whole::Writing {
                continue;
            }
            let (length, bytes) = self.whole_writing.remove(feed).unwrap_or_default();
            self.whole_bytes = self.whole_bytes.saturating_sub(bytes);
            state.whole = Whole::No;
            if self.ended.is_some() {
                continue;
            }
            // A first-word head left to the store is checked by it only if it stored
            // the feed: on any other answer, it is checked here.
            if !matches!(outcome, Some(WholeOutcome::Stored { .. })) || state.stopped.is_some() {
                self.check_late(feed);
            }
            let Some(state) = self.feeds.get_mut(feed) else {
                continue;
            };
            if state.stopped.is_some() {
                continue;
            }
            match outcome {
                Some(WholeOutcome::Stored { length: held })
                    if held == length
                        && state.updated <= length
                        && state.stream == StreamState::Closed =>
                {
                    state.peer_head = PeerHead::None;
                    state.local_synced = Some(length);
                    state.remote_synced = Some(length);
                    state.early_ends = 0;
                    let dk = state.discovery_key;
                    self.stats.feeds_received_whole += 1;
                    self.send(Message::Synced { feed: dk, length });
                    self.check_synced(feed);
                }
                Some(WholeOutcome::Failed(reason)) => self.handle_feed_failed(feed, &reason),
                Some(WholeOutcome::Stored { length: held }) => self.whole_fallback(feed, held),
                Some(WholeOutcome::Declined) | None => self.whole_fallback(feed, 0),
            }
        }
        if self.ended.is_some() {
            return;
        }
        if over && !self.over_whole_bound() {
            // A partial frame's wait starts again now that we read again.
            self.stall = self.stall.map(|(frame, _)| (frame, None));
        }
        if !self.read_buf.is_empty() && self.wants_control_bytes() {
            self.read_frames();
        }
    }

    /// `feed` is not sent whole after all: the peer, which may expect our entry or our
    /// answer to its entry, is told with a `Notice` of our `length` (or more, if our
    /// copy grew), and the stream rules apply. The dialer opens the stream; a verified
    /// first-word head of the peer goes with it (decision 198).
    fn whole_fallback(&mut self, feed: &FeedKey, length: u64) {
        self.check_late(feed);
        let Some(state) = self.feeds.get_mut(feed) else {
            return;
        };
        state.whole = Whole::No;
        state.peer_head = match std::mem::replace(&mut state.peer_head, PeerHead::None) {
            PeerHead::Verified(head) => PeerHead::Decided(head),
            _ => PeerHead::None,
        };
        let dk = state.discovery_key;
        let length = length.max(state.updated);
        self.send(Message::Notice { feed: dk, length });
        if self.role == Role::Dialer {
            self.queue_open(*feed);
        }
    }

    /// Whether feeds the peer sent whole fill our store's share: we read no more.
    pub(super) fn over_whole_bound(&self) -> bool {
        self.whole_bytes >= MAX_WHOLE_BYTES_AT_STORE
    }
}
