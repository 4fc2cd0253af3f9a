//! Feed streams: which feeds are replicated, opening them within the stream limit,
//! taking the peer's, closing, and reopening those that end early.

use super::config::{reopen_delay, MAX_STREAM_REOPENS};
use super::state::{FirstWord, PeerHead, Replicated, Route, Stop, StreamState, Whole};
use super::types::{
    EndReason, IncomingFeed, Side, StreamCommand, StreamId, StreamRefused, VIOLATIONS,
};
use crate::keys::{capability, verify_capability, FeedKey, Role};
use crate::message::{self, CloseCode, FeedStreamHeader};
use std::time::Instant;
use tracing::debug;

use super::Session;

impl Session {
    /// The peer opened a feed stream whose first frame is `header`. On `Ok`, attach the
    /// stream to the namespace's store; on `Err`, the session has ended.
    pub fn handle_incoming_stream(
        &mut self,
        header: FeedStreamHeader,
    ) -> Result<IncomingFeed, StreamRefused> {
        if let Some(reason) = &self.ended {
            return Err(StreamRefused(reason.clone()));
        }
        match self.take_incoming(header) {
            Ok(incoming) => {
                // The driver gives it to the store, or reports it closed at once.
                if let Some(old) = incoming.replaces {
                    self.attached.remove(&old);
                }
                self.attached
                    .insert(incoming.stream, (incoming.feed, incoming.namespace.clone()));
                Ok(incoming)
            }
            Err((code, reason)) => {
                self.fail(code, reason);
                Err(StreamRefused(self.ended.clone().unwrap_or_else(|| {
                    EndReason {
                        code,
                        by: Side::Local,
                        reason: String::new(),
                        peer_at_fault: VIOLATIONS.contains(&code),
                    }
                })))
            }
        }
    }

    /// The first frame of a peer's feed stream could not be read.
    pub fn handle_incoming_stream_error(&mut self, error: message::CodecError) {
        match error {
            message::CodecError::Frame(e) => self.fail_frame(e),
            e => self.fail(CloseCode::PROTOCOL, format!("feed stream header: {e}")),
        }
    }

    fn take_incoming(
        &mut self,
        header: FeedStreamHeader,
    ) -> Result<IncomingFeed, (CloseCode, String)> {
        if self.role == Role::Dialer {
            return Err((
                CloseCode::REFUSED_STREAM,
                "only the dialer opens feed streams".into(),
            ));
        }
        if !self.is_established() {
            return Err((CloseCode::REFUSED_STREAM, "feed stream before hello".into()));
        }
        let feed = match header {
            FeedStreamHeader::Offered { by, id } => self.incoming_offered(by, id)?,
            FeedStreamHeader::Known {
                discovery_key,
                capability,
            } => {
                let Some(known) = self.known.get(&discovery_key).filter(|k| k.announced) else {
                    return Err((
                        CloseCode::REFUSED_STREAM,
                        format!(
                            "feed stream for {}, which we did not announce",
                            discovery_key.fmt_short()
                        ),
                    ));
                };
                if !verify_capability(&known.key, &self.exporter, Role::Dialer, &capability) {
                    return Err((
                        CloseCode::BAD_CAPABILITY,
                        format!(
                            "bad capability on feed stream {}",
                            discovery_key.fmt_short()
                        ),
                    ));
                }
                let (key, namespace) = (known.key, known.namespace.clone());
                if !self
                    .namespaces
                    .get(&namespace)
                    .is_some_and(|ns| ns.peer_proven)
                {
                    return Err((
                        CloseCode::REFUSED_STREAM,
                        format!(
                            "feed stream for {} in an unproven namespace",
                            discovery_key.fmt_short()
                        ),
                    ));
                }
                self.peer_has.insert(key);
                self.replicate(key, &namespace, Route::Known);
                key
            }
        };
        let Some(state) = self.feeds.get_mut(&feed) else {
            return Err((
                CloseCode::REFUSED_STREAM,
                "feed stream for an unknown feed".into(),
            ));
        };
        // Only the dialer opens, one stream per feed at a time, and it finishes a stream
        // before it opens the next for the same feed; the new stream can still arrive
        // before we saw the old one end. It replaces it.
        let replaces = if state.stream == StreamState::Open {
            state.token
        } else {
            None
        };
        let stream = StreamId(self.next_stream);
        self.next_stream += 1;
        self.stats.streams_opened += 1;
        state.stream = StreamState::Open;
        state.token = Some(stream);
        // The dialer's stream answers a whole exchange: the holder's fallback, or the
        // receiver's after its store declined (its `Notice` may still be on its way).
        if !matches!(state.whole, Whole::Writing) {
            state.whole = Whole::No;
        }
        let namespace = state.namespace.clone();
        Ok(IncomingFeed {
            feed,
            namespace,
            stream,
            replaces,
            verified_head: state.peer_head.take_decided(),
        })
    }

    /// The dialer opened a stream naming offered feed `id` of side `by`.
    fn incoming_offered(&mut self, by: Role, id: u64) -> Result<FeedKey, (CloseCode, String)> {
        if let Some(key) = self.by_offer_id.get(&(by, id)) {
            return Ok(*key);
        }
        // A feed we offered whose answer is still on its way: the stream shows the
        // dialer accepted it, and the answer must agree.
        if by == self.role {
            if let Some(offer) = self.our_pending_ids.get(&id).copied() {
                if let Some(ours) = self.our_offers.get_mut(&offer) {
                    if let Some(key) = ours.feeds.get(&id).copied() {
                        ours.early.insert(id);
                        let namespace = ours.namespace.clone();
                        self.peer_has.insert(key);
                        self.replicate(key, &namespace, Route::Offered { by, id });
                        return Ok(key);
                    }
                }
            }
        }
        Err((
            CloseCode::REFUSED_STREAM,
            format!(
                "feed stream for offered feed {} of the {}, which was not offered and accepted",
                id,
                by.name()
            ),
        ))
    }

    /// A feed stream ended (finished or reset by either side, or its store detached),
    /// or could not be opened or attached. A stream that was replaced or closed by the
    /// session already is ignored. On the dialer, a feed that is not in sync both ways
    /// is reopened after [`reopen_delay`] (see the module documentation).
    pub fn handle_stream_closed(&mut self, feed: &FeedKey, stream: StreamId) {
        self.attached.remove(&stream);
        let Some(state) = self.feeds.get_mut(feed) else {
            return;
        };
        if state.stream == StreamState::Open && state.token == Some(stream) {
            state.stream = StreamState::Closed;
            state.token = None;
            if self.role == Role::Dialer {
                self.open_streams = self.open_streams.saturating_sub(1);
                let in_sync =
                    state.local_synced.is_some() && state.local_synced == state.remote_synced;
                if !in_sync && self.ended.is_none() && state.stopped.is_none() {
                    self.stream_ended_early(*feed);
                }
                self.pump_opens();
            }
        }
    }

    /// The next feed stream to open or close.
    /// An opened stream counts as given to its store from here, a closed one as taken
    /// back (see [`StoreCall::Detach`](super::StoreCall::Detach)).
    pub fn poll_stream(&mut self) -> Option<StreamCommand> {
        let command = self.streams.pop_front()?;
        match &command {
            StreamCommand::Open {
                feed,
                namespace,
                stream,
                ..
            } => {
                self.attached.insert(*stream, (*feed, namespace.clone()));
            }
            StreamCommand::Close { stream, .. } => {
                self.attached.remove(stream);
            }
        }
        Some(command)
    }

    pub(super) fn replicate(&mut self, key: FeedKey, namespace: &str, route: Route) {
        // Every offer id of the feed stays valid for its stream: the two sides may have
        // learned of the feed by different routes first.
        if let Route::Offered { by, id } = route {
            self.by_offer_id.insert((by, id), key);
        }
        if self.feeds.contains_key(&key) {
            return;
        }
        let discovery_key = key.discovery_key();
        self.by_discovery.insert(discovery_key, key);
        self.stats.feeds_replicated += 1;
        self.feeds.insert(
            key,
            Replicated {
                namespace: namespace.to_string(),
                discovery_key,
                route,
                stream: StreamState::Closed,
                token: None,
                local_synced: None,
                remote_synced: None,
                reported: None,
                early_ends: 0,
                stopped: None,
                first_word: FirstWord::Asking { changed: false },
                peer_spoke: false,
                our_head: None,
                peer_head: PeerHead::Unheard,
                updated: 0,
                whole: Whole::No,
            },
        );
        // The dialer opens its stream once the first words show a side lacks something.
        self.head_asks.push_back((namespace.to_string(), key));
    }

    /// The dialer opens the feed's stream unless it is in sync both ways.
    pub(super) fn open_unless_synced(&mut self, feed: &FeedKey) {
        let Some(state) = self.feeds.get(feed) else {
            return;
        };
        let in_sync = state.local_synced.is_some() && state.local_synced == state.remote_synced;
        if self.role == Role::Dialer && !in_sync {
            self.queue_open(*feed);
        }
    }

    pub(super) fn queue_open(&mut self, feed: FeedKey) {
        self.reopens.remove(&feed);
        if let Some(state) = self.feeds.get_mut(&feed) {
            if state.stream == StreamState::Closed && state.stopped.is_none() {
                state.stream = StreamState::Queued;
                self.open_queue.push_back(feed);
                self.pump_opens();
            }
        }
    }

    fn stream_limit(&self) -> usize {
        let peer = self.peer_max_streams.unwrap_or(0);
        self.config.max_streams.min(peer) as usize
    }

    pub(super) fn pump_opens(&mut self) {
        if self.ended.is_some() || !self.is_established() {
            return;
        }
        while self.open_streams < self.stream_limit() {
            let Some(feed) = self.open_queue.pop_front() else {
                break;
            };
            let Some(state) = self.feeds.get_mut(&feed) else {
                continue;
            };
            if state.stream != StreamState::Queued {
                continue;
            }
            let stream = StreamId(self.next_stream);
            self.next_stream += 1;
            self.stats.streams_opened += 1;
            state.stream = StreamState::Open;
            state.token = Some(stream);
            let header = match state.route {
                Route::Offered { by, id } => FeedStreamHeader::Offered { by, id },
                Route::Known => FeedStreamHeader::Known {
                    discovery_key: state.discovery_key,
                    capability: capability(&feed, &self.exporter, self.role),
                },
            };
            let namespace = state.namespace.clone();
            let verified_head = state.peer_head.take_decided();
            self.open_streams += 1;
            self.streams.push_back(StreamCommand::Open {
                feed,
                namespace,
                header,
                stream,
                verified_head,
            });
        }
    }

    /// The dialer's stream of `feed` ended before the feed was in sync both ways.
    fn stream_ended_early(&mut self, feed: FeedKey) {
        let Some(state) = self.feeds.get_mut(&feed) else {
            return;
        };
        state.early_ends = state.early_ends.saturating_add(1);
        let ends = state.early_ends;
        if ends > MAX_STREAM_REOPENS {
            let reason = format!("its stream ended {ends} times in a row before it was in sync");
            self.stop_feed(&feed, Stop::Exhausted(reason));
            return self.check_done();
        }
        debug!(feed = %feed.fmt_short(), ends, wait = ?reopen_delay(ends), "feed stream ended early: reopening");
        // The wait starts at the next `handle_timeout`, which `poll_timeout` asks for at once.
        self.reopens.insert(feed, None);
    }

    /// Reopens the feeds whose wait is over, and starts the waits that began since the
    /// last call.
    pub(super) fn fire_reopens(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (feed, at) in &mut self.reopens {
            match at {
                None => {
                    let ends = self.feeds.get(feed).map_or(1, |s| s.early_ends);
                    *at = Some(now + reopen_delay(ends));
                }
                Some(at) if now >= *at => due.push(*feed),
                Some(_) => {}
            }
        }
        for feed in due {
            self.queue_open(feed);
        }
    }
}
