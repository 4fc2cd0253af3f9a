//! A replicated feed's sync state: first words (signed heads, verified in batches off
//! the core), `Synced` and `Notice` both ways, changes of our copy, and faults that stop
//! a feed on this session.

use super::state::{FirstWord, PeerHead, Stop, StreamState, Whole};
use super::types::{HeadCheck, SessionEvent, StreamCommand, StreamId};
use crate::keys::{DiscoveryKey, FeedKey, Role};
use crate::message::{self, CloseCode, Message, MAX_HEADS_PER_MESSAGE, MAX_WHOLE_BLOCKS};
use tracing::debug;

use super::Session;

impl Session {
    /// Our store's sync of `feed` with this peer reached `length` and has nothing more
    /// to send or fetch.
    pub fn handle_feed_synced(&mut self, feed: &FeedKey, length: u64) {
        if self.ended.is_some() {
            return;
        }
        let Some(state) = self.feeds.get_mut(feed) else {
            return;
        };
        if length < state.updated {
            // Stale: our copy grew since the stream's core decided; it goes on and
            // reports again at the new length.
            return;
        }
        // A store reports this from a stream, which exists only once both sides
        // replicate the feed: this is our first word if none went out yet.
        state.first_word = FirstWord::Sent;
        if state.local_synced == Some(length) {
            return;
        }
        state.local_synced = Some(length);
        state.early_ends = 0;
        let dk = state.discovery_key;
        self.send(Message::Synced { feed: dk, length });
        self.check_synced(feed);
    }

    /// Takes our first word on `feed` for a [`Message::Heads`]: the head our store holds
    /// complete, or none; `None` if the feed needs no first word any more (a stream's
    /// `Synced` said it, or it stopped for a fault).
    pub(super) fn take_first_word(&mut self, feed: &FeedKey) -> Option<message::FirstWord> {
        let takes_whole = self
            .feeds
            .get(feed)
            .and_then(|state| self.namespaces.get(&state.namespace))
            .is_some_and(|ns| ns.takes_whole);
        let state = self.feeds.get_mut(feed)?;
        if !matches!(state.first_word, FirstWord::Queued(_)) {
            return None;
        }
        let FirstWord::Queued(head) = std::mem::replace(&mut state.first_word, FirstWord::Sent)
        else {
            return None;
        };
        if matches!(state.stopped, Some(Stop::Fault(_))) {
            return None;
        }
        // What the two words say decides a whole exchange on both sides alike.
        state.whole = match head.as_deref() {
            Some(h) if h.length <= MAX_WHOLE_BLOCKS as u64 => Whole::Offerable {
                length: h.length as u8,
            },
            Some(_) => Whole::No,
            None if takes_whole => Whole::Asked,
            None => Whole::No,
        };
        let word = message::FirstWord {
            feed: state.discovery_key,
            head: head.as_deref().copied(),
            whole: head.is_none() && takes_whole,
        };
        state.our_head = head;
        Some(word)
    }

    /// Called once our first word on `feed` is out and whenever the peer's becomes
    /// known. Equal verified heads (one length, one tree hash) make the feed in sync
    /// both ways without a stream. Anything else gets the dialer's stream: a side lacks
    /// blocks, or the heads differ, and the stream's signed heads tell which (a fork,
    /// two heads of one length that differ, is found there and stops the feed, as on
    /// any stream). While our word has a head and the peer's is not known yet, the
    /// dialer waits for it.
    pub(super) fn first_words_met(&mut self, feed: &FeedKey) {
        let Some(state) = self.feeds.get_mut(feed) else {
            return;
        };
        if state.first_word != FirstWord::Sent {
            return;
        }
        if self.whole_decides(feed) {
            return;
        }
        let Some(state) = self.feeds.get_mut(feed) else {
            return;
        };
        let peer = match &state.peer_head {
            PeerHead::Unheard | PeerHead::Verifying(_) if state.our_head.is_some() => return,
            PeerHead::Verified(head) => Some(**head),
            _ => None,
        };
        let same = match (state.our_head.as_deref(), peer) {
            (Some(ours), Some(theirs)) => {
                (ours.length, ours.tree_hash) == (theirs.length, theirs.tree_hash)
            }
            _ => false,
        };
        // Each word decides once; a verified head that asks for a stream goes with it.
        state.our_head = None;
        if matches!(state.peer_head, PeerHead::Verified(_)) {
            state.peer_head = match peer {
                Some(head) if !same => PeerHead::Decided(Box::new(head)),
                _ => PeerHead::None,
            };
        }
        if !same {
            return self.open_unless_synced(feed);
        }
        if state.stopped.is_some() || state.stream != StreamState::Closed {
            return;
        }
        let length = peer.map_or(0, |h| h.length);
        state.local_synced = Some(length);
        state.remote_synced = Some(length);
        self.stats.streams_skipped += 1;
        self.check_synced(feed);
    }

    /// The peer's first words: a word without a head asks for a stream, as a `Notice`
    /// does; heads wait for [`Session::handle_heads_verified`] (given out as a
    /// [`HeadCheck`] by [`Session::poll_verify`]).
    pub(super) fn on_heads(&mut self, words: Vec<message::FirstWord>) {
        let mut check = Vec::new();
        for word in words {
            let Some(feed) = self.by_discovery.get(&word.feed).copied() else {
                return self.fail(
                    CloseCode::PROTOCOL,
                    format!(
                        "first word for feed {}, which is not replicated",
                        word.feed.fmt_short()
                    ),
                );
            };
            let Some(head) = word.head else {
                if word.whole {
                    self.on_asks_whole(&feed);
                } else {
                    self.on_notice(word.feed, 0);
                }
                continue;
            };
            // Every head is checked, even one that no longer decides anything: here, or
            // by the store with the feed's blocks.
            let mut asked_whole = false;
            let mut with_whole = false;
            if let Some(state) = self.feeds.get_mut(&feed) {
                state.peer_spoke = true;
                if state.peer_head == PeerHead::Unheard {
                    asked_whole = state.whole == Whole::Asked;
                    // Our word asked for the feed whole and the head is small: the feed
                    // comes whole with this head, which our store checks with its blocks
                    // (decision 250); nothing waits for a check here.
                    with_whole = asked_whole && head.length <= MAX_WHOLE_BLOCKS as u64;
                    state.peer_head = if with_whole {
                        PeerHead::WithWhole(Box::new(head))
                    } else {
                        PeerHead::Verifying(Box::new(head))
                    };
                }
            }
            if !with_whole {
                check.push((feed, head));
            }
            // Our word asked for the feed whole: a small head makes us expect it now.
            if asked_whole {
                self.first_words_met(&feed);
            }
        }
        if !check.is_empty() {
            self.head_checks.push_back(HeadCheck { heads: check });
        }
    }

    /// The next batch of the peer's heads to verify.
    pub fn poll_verify(&mut self) -> Option<HeadCheck> {
        let check = match self.head_checks.pop_front() {
            Some(check) => check,
            None if self.late_checks.is_empty() => return None,
            None => {
                let from = self.late_checks.len().saturating_sub(MAX_HEADS_PER_MESSAGE);
                HeadCheck {
                    heads: self.late_checks.split_off(from),
                }
            }
        };
        self.heads_out += check.heads.len();
        Some(check)
    }

    /// The peer's first-word head of `feed`, if it was left for the store to check
    /// with the feed's blocks ([`PeerHead::WithWhole`]), is checked here after all: the
    /// feed did not come whole with that head, or the store did not take it. The head
    /// decides nothing any more; a bad one still ends the session (`bad head`).
    pub(super) fn check_late(&mut self, feed: &FeedKey) {
        let Some(state) = self.feeds.get_mut(feed) else {
            return;
        };
        match std::mem::replace(&mut state.peer_head, PeerHead::None) {
            PeerHead::WithWhole(head) => self.late_checks.push((*feed, *head)),
            other => state.peer_head = other,
        }
    }

    /// The result of a [`HeadCheck`]: the positions in `check.heads` of the heads that
    /// do not verify. One bad head is the peer's violation (`bad head`): it names the
    /// feed, and the session ends. Verified heads decide their feeds' streams.
    pub fn handle_heads_verified(&mut self, check: HeadCheck, bad: &[usize]) {
        self.heads_out = self.heads_out.saturating_sub(check.heads.len());
        if self.ended.is_some() {
            return;
        }
        if let Some((feed, head)) = bad.first().and_then(|&i| check.heads.get(i)) {
            return self.fail(
                CloseCode::BAD_HEAD,
                format!(
                    "the signed head of feed {} at length {} does not verify ({} of {} heads \
                     in its message do not)",
                    feed.fmt_short(),
                    head.length,
                    bad.len(),
                    check.heads.len()
                ),
            );
        }
        self.stats.heads_verified += check.heads.len() as u64;
        for (feed, head) in check.heads {
            let Some(state) = self.feeds.get_mut(&feed) else {
                continue;
            };
            if matches!(&state.peer_head, PeerHead::Verifying(h) if **h == head) {
                state.peer_head = PeerHead::Verified(Box::new(head));
                self.first_words_met(&feed);
            }
        }
        // A head checked late may be all a one-shot session waited for.
        self.check_done();
    }

    /// Our copy of `feed` changed (appended, or downloaded from another peer): the feed
    /// needs a stream again. The dialer reopens it; the acceptor sends a notice, and so
    /// does either side that had reported the feed synced.
    pub fn handle_feed_updated(&mut self, feed: &FeedKey, length: u64) {
        if self.ended.is_some() {
            return;
        }
        let Some(state) = self.feeds.get_mut(feed) else {
            return;
        };
        state.updated = state.updated.max(length);
        if state.our_head.as_ref().is_some_and(|h| length > h.length) {
            state.our_head = None;
        }
        if state.local_synced == Some(length) {
            return;
        }
        // A whole exchange under way ends first (its end looks at `updated` again).
        if state.whole.holds_updates() {
            return;
        }
        // We no longer send the feed whole as our first word offered: the `Notice`
        // below tells a peer that may expect it.
        let offered_whole = matches!(state.whole, Whole::Offerable { .. });
        state.whole = Whole::No;
        match state.first_word {
            FirstWord::Sent => {}
            // Our first word, still to go, says it: a stream is needed.
            FirstWord::Asking { .. } => {
                state.first_word = FirstWord::Asking { changed: true };
                return;
            }
            FirstWord::Queued(_) => {
                state.first_word = FirstWord::Queued(None);
                return;
            }
        }
        match state.stopped {
            // Stopped for the session: the peer is not told of changes either.
            Some(Stop::Fault(_)) => return,
            Some(Stop::Exhausted(_)) => state.stopped = None,
            None => {}
        }
        // A `Synced` we sent is no longer true: retract it, or the peer could close the
        // stream (or end a one-shot session) on a stale length.
        let retract = state.local_synced.take().is_some();
        state.reported = None;
        state.early_ends = 0;
        let dk = state.discovery_key;
        let closed = state.stream == StreamState::Closed;
        if retract || offered_whole || (self.role == Role::Acceptor && closed) {
            self.send(Message::Notice { feed: dk, length });
        }
        if self.role == Role::Dialer && closed {
            self.queue_open(*feed);
        }
    }

    /// Our store found a fault in `feed` on its stream (for a feed store: data that
    /// does not verify, a fork, an undecodable feed message). An honest relay can pass
    /// a writer's fault on, so this stops that feed on this session only, never the
    /// session and never grounds for a ban: its stream is closed (by the dialer), the
    /// peer is told with `Stopped`, [`SessionEvent::FeedStopped`] reports it, and it is
    /// never reopened on this session. A one-shot session gives it up.
    pub fn handle_feed_failed(&mut self, feed: &FeedKey, reason: &str) {
        if self.ended.is_some() {
            return;
        }
        let Some(state) = self.feeds.get(feed) else {
            debug!(feed = %feed.fmt_short(), %reason, "fault reported for a feed not replicated here");
            return;
        };
        let dk = state.discovery_key;
        if self.stop_feed(feed, Stop::Fault(format!("fault: {reason}"))) {
            self.send(Message::Stopped { feed: dk });
        }
        self.check_done();
    }

    pub(super) fn on_notice(&mut self, dk: DiscoveryKey, _length: u64) {
        let Some(feed) = self.by_discovery.get(&dk).copied() else {
            return self.fail(
                CloseCode::PROTOCOL,
                format!(
                    "notice for feed {}, which is not replicated",
                    dk.fmt_short()
                ),
            );
        };
        self.check_late(&feed);
        let Some(state) = self.feeds.get_mut(&feed) else {
            return;
        };
        state.remote_synced = None;
        state.reported = None;
        state.early_ends = 0;
        state.peer_spoke = true;
        state.peer_head = PeerHead::None;
        // The holder will not send the feed whole, or the receiver's store did not
        // take it: the stream rules apply. Only the store's answer ends a write.
        if !matches!(state.whole, Whole::Writing) {
            state.whole = Whole::No;
        }
        match state.stopped {
            Some(Stop::Fault(_)) => return,
            Some(Stop::Exhausted(_)) => state.stopped = None,
            None => {}
        }
        if self.role == Role::Dialer && state.stream == StreamState::Closed {
            self.queue_open(feed);
        }
    }

    pub(super) fn on_synced(&mut self, dk: DiscoveryKey, length: u64) {
        let Some(feed) = self.by_discovery.get(&dk).copied() else {
            return self.fail(
                CloseCode::PROTOCOL,
                format!(
                    "synced for feed {}, which is not replicated",
                    dk.fmt_short()
                ),
            );
        };
        if self.whole_synced(&feed, length) {
            return;
        }
        self.check_late(&feed);
        let mut first = false;
        if let Some(state) = self.feeds.get_mut(&feed) {
            if state.remote_synced != Some(length) {
                state.remote_synced = Some(length);
                state.early_ends = 0;
            }
            // The peer's first word: the dialer waited for it (and for ours).
            first = !state.peer_spoke && state.first_word == FirstWord::Sent;
            state.peer_spoke = true;
            state.peer_head = PeerHead::None;
        }
        self.check_synced(&feed);
        if first {
            self.open_unless_synced(&feed);
        }
    }

    /// The peer stopped a replicated feed for a fault it found: we stop it too.
    pub(super) fn on_stopped(&mut self, dk: DiscoveryKey) {
        let Some(feed) = self.by_discovery.get(&dk).copied() else {
            return self.fail(
                CloseCode::PROTOCOL,
                format!(
                    "stopped for feed {}, which is not replicated",
                    dk.fmt_short()
                ),
            );
        };
        self.stop_feed(
            &feed,
            Stop::Fault("the peer stopped it after a fault".into()),
        );
        self.check_done();
    }

    /// Stops `feed` on this session: no reopen, its stream closed by the dialer.
    /// Returns whether it was not stopped for a fault already.
    pub(super) fn stop_feed(&mut self, feed: &FeedKey, stop: Stop) -> bool {
        let Some(state) = self.feeds.get_mut(feed) else {
            return false;
        };
        if matches!(state.stopped, Some(Stop::Fault(_))) {
            return false;
        }
        let reason = match &stop {
            Stop::Exhausted(r) | Stop::Fault(r) => r.clone(),
        };
        if matches!(stop, Stop::Fault(_)) {
            self.stats.feeds_faulted += 1;
        }
        state.stopped = Some(stop);
        if !matches!(state.whole, Whole::Writing) {
            state.whole = Whole::No;
        }
        self.reopens.remove(feed);
        if state.stream == StreamState::Queued {
            state.stream = StreamState::Closed;
        }
        if self.role == Role::Dialer && state.stream == StreamState::Open {
            let stream = state.token.take().unwrap_or(StreamId(u64::MAX));
            state.stream = StreamState::Closed;
            self.open_streams = self.open_streams.saturating_sub(1);
            self.streams.push_back(StreamCommand::Close {
                feed: *feed,
                namespace: state.namespace.clone(),
                stream,
            });
            self.pump_opens();
        }
        debug!(feed = %feed.fmt_short(), %reason, "feed stopped");
        self.events.push_back(SessionEvent::FeedStopped {
            feed: *feed,
            reason,
        });
        true
    }

    pub(super) fn check_synced(&mut self, feed: &FeedKey) {
        let Some(state) = self.feeds.get_mut(feed) else {
            return;
        };
        let (Some(local), Some(remote)) = (state.local_synced, state.remote_synced) else {
            return;
        };
        if local != remote {
            // Each side has all it wants at its own length, the two differ, and no
            // stream is open between them: one side's copy grew after the stream was
            // closed as in sync (its store's report of the new length can overtake the
            // `FeedUpdated` that would have reopened it). The dialer opens one; a reopen
            // already waiting after an early end keeps its wait.
            let idle = state.stream == StreamState::Closed
                && state.stopped.is_none()
                && state.whole == Whole::No;
            if self.role == Role::Dialer && idle && !self.reopens.contains_key(feed) {
                self.queue_open(*feed);
            }
            return;
        }
        if state.reported == Some(local) {
            return;
        }
        state.reported = Some(local);
        state.early_ends = 0;
        // In sync: a reopen waiting since an early end is not needed.
        self.reopens.remove(feed);
        self.events.push_back(SessionEvent::FeedSynced {
            feed: *feed,
            length: local,
        });
        if self.role == Role::Dialer && state.stream == StreamState::Open {
            let stream = state.token.take().unwrap_or(StreamId(u64::MAX));
            state.stream = StreamState::Closed;
            self.open_streams = self.open_streams.saturating_sub(1);
            let namespace = state.namespace.clone();
            self.streams.push_back(StreamCommand::Close {
                feed: *feed,
                namespace,
                stream,
            });
            self.pump_opens();
        }
        self.check_done();
    }
}
