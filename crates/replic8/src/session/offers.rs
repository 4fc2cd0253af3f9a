//! Offers: our shares queued and sent under the peer's limits, the peer's offers held
//! for our stores' answers, the answers both ways, and readiness (`Ready`, `Settled`).

use super::config::{MAX_PEER_FEEDS, MAX_PENDING_OFFER_BYTES, MAX_PENDING_PEER_OFFERS};
use super::state::{OurOffer, PeerOffer, Route};
use super::types::{CommandError, SessionEvent};
use crate::frame::MAX_FRAME_LEN;
use crate::keys::{FeedKey, Role};
use crate::message::{
    self, CloseCode, Headers, Message, OfferedFeed, MAX_FEEDS_PER_MESSAGE, MAX_HEADS_PER_MESSAGE,
};
use std::collections::HashSet;
use tracing::debug;

use super::Session;

/// Room left in a frame for an offer's own fields when packing feeds into it.
const OFFER_SLACK: usize = 128;

impl Session {
    /// Shares feeds in a namespace: offers the peer those it was not offered already and
    /// is not known to have. In a namespace not matched yet the offer waits for the match.
    /// Returns how many feeds were offered or queued.
    pub fn handle_share(
        &mut self,
        namespace: &str,
        feeds: Vec<(FeedKey, Headers)>,
    ) -> Result<usize, CommandError> {
        self.alive()?;
        if !self.namespaces.contains_key(namespace) {
            return Err(CommandError::UnknownNamespace(namespace.to_string()));
        }
        for (feed, headers) in &feeds {
            headers.check().map_err(|source| CommandError::Headers {
                feed: *feed,
                source,
            })?;
        }
        let mut new = Vec::new();
        for (key, headers) in feeds {
            if self.peer_has.contains(&key) || !self.offered.insert(key) {
                continue;
            }
            // The id is given when the offer is sent: offers waiting for a match may go
            // out after later ones, and ids must increase on the wire.
            new.push(OfferedFeed {
                id: 0,
                key,
                headers,
            });
        }
        let count = new.len();
        let ns = self
            .namespaces
            .get_mut(namespace)
            .ok_or(CommandError::Ended)?;
        match ns.handle.filter(|_| ns.peer_proven) {
            Some(handle) => self.queue_offers(handle, new),
            None => ns.pending_offers.extend(new),
        }
        Ok(count)
    }

    /// The namespace store's answer to the peer's offer: the keys it accepts, or an
    /// error, which ends the session and is sent to the peer.
    pub fn handle_offer_answer(
        &mut self,
        offer: u64,
        answer: Result<Vec<FeedKey>, String>,
    ) -> Result<(), CommandError> {
        self.alive()?;
        let Some(pending) = self.peer_offers.remove(&offer) else {
            return Err(CommandError::UnknownOffer(offer));
        };
        self.peer_offer_bytes = self.peer_offer_bytes.saturating_sub(pending.bytes);
        let accepted_keys: HashSet<FeedKey> = match answer {
            Ok(keys) => keys.into_iter().collect(),
            Err(reason) => {
                // The store's words may name the namespace: they stay here.
                debug!(offer, %reason, "store failed to answer an offer");
                self.end_with_peer_reason(
                    CloseCode::ACCEPT_FAILED,
                    format!("store refused offer {offer}: {reason}"),
                    format!("store refused offer {offer}"),
                );
                return Ok(());
            }
        };
        // Keys the peer did not offer are ignored: the answer can only name its feeds.
        let accepted: Vec<(u64, FeedKey)> = pending
            .feeds
            .into_iter()
            .filter(|(_, key)| accepted_keys.contains(key))
            .collect();
        self.send(Message::Answer {
            offer,
            accepted: accepted.iter().map(|(id, _)| *id).collect(),
        });
        let peer = self.role.peer();
        for (id, key) in accepted {
            self.replicate(key, &pending.namespace, Route::Offered { by: peer, id });
        }
        self.check_done();
        Ok(())
    }

    /// We made our initial shares and announcements; a one-shot session may end once
    /// both sides are ready and everything is in sync.
    ///
    /// Namespaces served with [`Session::handle_serve_namespace`] are part of the start:
    /// `Ready` waits until their stores said what they share and hold.
    pub fn handle_ready(&mut self) -> Result<(), CommandError> {
        self.alive()?;
        self.ready_wanted = true;
        self.maybe_ready();
        Ok(())
    }

    /// Sends our `Ready` once it is wanted and no store question is outstanding.
    pub(super) fn maybe_ready(&mut self) {
        if self.ready_wanted && self.store_asks == 0 && !self.local_ready {
            self.local_ready = true;
            self.send(Message::Ready);
        }
    }

    /// Sends our `Settled` once every offer the peer's initial tags unlocked is out:
    /// the peer's `Ready` arrived (its tags precede it) and our share queue is empty.
    /// The dialer also waits for the acceptor's `Settled`, which follows the
    /// acceptor's answers to the dialer's tags, so the offers those answers unlocked
    /// precede the dialer's `Settled`.
    pub(super) fn maybe_settle(&mut self) {
        if self.settled_sent
            || !self.peer_ready
            || !self.share_queue.is_empty()
            || !self.have_queue.is_empty()
        {
            return;
        }
        if self.role == Role::Dialer && !self.peer_settled {
            return;
        }
        self.send(Message::Settled);
        self.settled_sent = true;
    }

    pub(super) fn on_offer(&mut self, handle: u32, offer: u64, feeds: Vec<OfferedFeed>) {
        // Every offer costs us an answer; an empty one would let a peer make us answer
        // without end (our sender never sends one).
        if feeds.is_empty() {
            return self.fail(CloseCode::PROTOCOL, format!("offer {offer} has no feeds"));
        }
        if self.last_peer_offer.is_some_and(|last| offer <= last) {
            return self.fail(
                CloseCode::PROTOCOL,
                format!("offer id {offer} does not increase"),
            );
        }
        self.last_peer_offer = Some(offer);
        for feed in &feeds {
            if self.last_peer_feed_id.is_some_and(|last| feed.id <= last) {
                return self.fail(
                    CloseCode::PROTOCOL,
                    format!("feed id {} in offer {offer} does not increase", feed.id),
                );
            }
            self.last_peer_feed_id = Some(feed.id);
        }
        self.stats.feeds_offered_to_us += feeds.len() as u64;
        if self.peer_offered.len() + feeds.len() > MAX_PEER_FEEDS {
            // An honest forwarding peer can get here: refuse, politely and at once,
            // without remembering the feeds.
            return self.refuse_offer(offer);
        }
        for feed in &feeds {
            if !self.peer_offered.insert(feed.key) {
                return self.fail(
                    CloseCode::PROTOCOL,
                    format!("feed {} offered twice", feed.key.fmt_short()),
                );
            }
            self.peer_has.insert(feed.key);
        }
        let usable = self
            .handles
            .get(&handle)
            .filter(|name| self.namespaces.get(*name).is_some_and(|ns| ns.peer_proven))
            .cloned();
        let Some(name) = usable else {
            // Not a namespace of ours, or one the peer did not show it knows: accept
            // nothing.
            return self.refuse_offer(offer);
        };
        if self.peer_offers.len() >= MAX_PENDING_PEER_OFFERS {
            // Our sender never has more unanswered: only a peer that breaks the rule.
            return self.fail(
                CloseCode::PROTOCOL,
                format!("more than {MAX_PENDING_PEER_OFFERS} offers wait for an answer"),
            );
        }
        let bytes = message::encoded_len(&feeds).unwrap_or(MAX_FRAME_LEN);
        if self.peer_offer_bytes + bytes > MAX_PENDING_OFFER_BYTES {
            // Over the budget of offers in our stores' hands: refused, not misbehaviour.
            debug!(
                offer,
                bytes,
                pending = self.peer_offer_bytes,
                "offer refused: pending offers over budget"
            );
            return self.refuse_offer(offer);
        }
        self.peer_offer_bytes += bytes;
        self.peer_offers.insert(
            offer,
            PeerOffer {
                namespace: name.clone(),
                feeds: feeds.iter().map(|f| (f.id, f.key)).collect(),
                bytes,
            },
        );
        self.events.push_back(SessionEvent::Offered {
            namespace: name,
            offer,
            feeds: feeds.into_iter().map(|f| (f.key, f.headers)).collect(),
        });
    }

    /// Answers `offer` at once with nothing accepted.
    fn refuse_offer(&mut self, offer: u64) {
        self.send(Message::Answer {
            offer,
            accepted: Vec::new(),
        });
    }

    pub(super) fn on_answer(&mut self, offer: u64, accepted: Vec<u64>) {
        let Some(ours) = self.our_offers.remove(&offer) else {
            return self.fail(
                CloseCode::PROTOCOL,
                format!("answer to offer {offer}, which is not waiting for one"),
            );
        };
        for id in ours.feeds.keys() {
            self.our_pending_ids.remove(id);
        }
        let mut keys = Vec::with_capacity(accepted.len());
        let mut seen = HashSet::with_capacity(accepted.len());
        for id in &accepted {
            let Some(key) = ours.feeds.get(id) else {
                return self.fail(
                    CloseCode::PROTOCOL,
                    format!("answer to offer {offer} accepts feed id {id}, which it did not offer"),
                );
            };
            if !seen.insert(*id) {
                return self.fail(
                    CloseCode::PROTOCOL,
                    format!("answer to offer {offer} accepts feed id {id} twice"),
                );
            }
            keys.push(*key);
        }
        if let Some(id) = ours.early.iter().find(|id| !seen.contains(id)) {
            return self.fail(
                CloseCode::PROTOCOL,
                format!("feed id {id} was streamed but its offer's answer does not accept it"),
            );
        }
        for (id, key) in accepted.iter().zip(&keys) {
            self.peer_has.insert(*key);
            self.replicate(
                *key,
                &ours.namespace,
                Route::Offered {
                    by: self.role,
                    id: *id,
                },
            );
        }
        if !keys.is_empty() {
            self.events.push_back(SessionEvent::Accepted {
                namespace: ours.namespace,
                feeds: keys,
            });
        }
        self.pump_offers();
        self.check_done();
    }

    /// Queues feeds of a proven namespace (by its handle) to be offered.
    pub(super) fn queue_offers(&mut self, handle: u32, feeds: Vec<OfferedFeed>) {
        self.share_queue
            .extend(feeds.into_iter().map(|feed| (handle, feed)));
        self.pump_offers();
    }

    /// Sends our queued `have` lists while our output is under
    /// [`MAX_PUMPED_CONTROL_BYTES`](super::MAX_PUMPED_CONTROL_BYTES), then offers from the share queue while fewer than
    /// [`MAX_PENDING_PEER_OFFERS`]
    /// of ours wait for answers (so we never cross the peer's limit) and our output is
    /// under [`MAX_PUMPED_CONTROL_BYTES`](super::MAX_PUMPED_CONTROL_BYTES). Each offer takes feeds of one namespace, at
    /// most [`MAX_FEEDS_PER_MESSAGE`] and one frame.
    pub(super) fn pump_offers(&mut self) {
        // Our `have` lists first, under the same bound: they are our own output too.
        while self.ended.is_none() && self.is_established() && !self.over_pump_bound() {
            let Some(&(handle, _)) = self.have_queue.front() else {
                break;
            };
            let mut feeds = Vec::new();
            while feeds.len() < MAX_FEEDS_PER_MESSAGE {
                match self.have_queue.front() {
                    Some((h, _)) if *h == handle => {}
                    _ => break,
                }
                let Some((_, entry)) = self.have_queue.pop_front() else {
                    break;
                };
                feeds.push(entry);
            }
            self.send(Message::Have {
                namespace: handle,
                feeds,
            });
        }
        // First words follow every `have` entry queued before them: the peer has
        // replicated the feed when one arrives.
        while self.ended.is_none()
            && self.is_established()
            && self.have_queue.is_empty()
            && !self.over_pump_bound()
        {
            if self.first_words.is_empty() {
                break;
            }
            let mut words = Vec::new();
            let mut said = Vec::new();
            while words.len() < MAX_HEADS_PER_MESSAGE {
                let Some(feed) = self.first_words.pop_front() else {
                    break;
                };
                if let Some(word) = self.take_first_word(&feed) {
                    words.push(word);
                    said.push(feed);
                }
            }
            if !words.is_empty() {
                self.send(Message::Heads { feeds: words });
            }
            for feed in said {
                self.first_words_met(&feed);
            }
        }
        self.pump_whole();
        while self.ended.is_none()
            && self.is_established()
            && self.our_offers.len() < MAX_PENDING_PEER_OFFERS
            && !self.over_pump_bound()
        {
            let Some(&(handle, _)) = self.share_queue.front() else {
                break;
            };
            let mut batch: Vec<OfferedFeed> = Vec::new();
            let mut size = 0;
            while let Some((h, feed)) = self.share_queue.front() {
                if *h != handle || batch.len() >= MAX_FEEDS_PER_MESSAGE {
                    break;
                }
                // Bounded by the header limits, so this cannot fail for a checked feed.
                let len = message::encoded_len(feed).unwrap_or(MAX_FRAME_LEN);
                if !batch.is_empty() && size + len > MAX_FRAME_LEN - OFFER_SLACK {
                    break;
                }
                let Some((_, mut feed)) = self.share_queue.pop_front() else {
                    break;
                };
                // The id is given when the offer is sent, so ids increase on the wire.
                feed.id = self.next_feed_id;
                self.next_feed_id += 1;
                size += len;
                batch.push(feed);
            }
            self.send_offer(handle, batch);
        }
        if self.share_queue.is_empty() && self.have_queue.is_empty() {
            self.maybe_settle();
        }
    }

    fn send_offer(&mut self, handle: u32, feeds: Vec<OfferedFeed>) {
        let offer = self.next_offer;
        self.next_offer += 1;
        for feed in &feeds {
            self.our_pending_ids.insert(feed.id, offer);
        }
        self.stats.feeds_offered += feeds.len() as u64;
        let namespace = self.handles.get(&handle).cloned().unwrap_or_default();
        self.our_offers.insert(
            offer,
            OurOffer {
                namespace,
                feeds: feeds.iter().map(|f| (f.id, f.key)).collect(),
                early: HashSet::new(),
            },
        );
        self.send(Message::Offer {
            namespace: handle,
            offer,
            feeds,
        });
    }
}
