//! What the driver asks the stores: a namespace served by a store is registered, then
//! its store is asked what it shares with the peer and what it holds (our `Ready`
//! waits for both answers); and streams given to stores are detached when the session
//! ends ([`StoreCall::Detach`]).

use tracing::warn;

use crate::keys::{FeedKey, NamespaceSecret};
use crate::message::Headers;
use replic8_store::SignedHead;

use super::config::MAX_HEADS_PER_CALL;
use super::state::FirstWord;
use super::types::{CommandError, StoreCall};
use super::Session;

impl Session {
    /// Registers a namespace served by a store (as
    /// [`Session::handle_register_namespace`]) and asks its store what it shares with the
    /// peer, then what it holds ([`StoreCall::Shares`], then [`StoreCall::Known`]). Our
    /// `Ready` ([`Session::handle_ready`]) waits until both are answered.
    pub fn handle_serve_namespace(
        &mut self,
        name: &str,
        secret: Option<NamespaceSecret>,
    ) -> Result<(), CommandError> {
        self.handle_register_namespace(name, secret)?;
        self.store_asks += 1;
        self.store_calls.push_back(StoreCall::Shares {
            namespace: name.to_string(),
        });
        Ok(())
    }

    /// The store's answer to [`StoreCall::Shares`]: the feeds it shares, shared as with
    /// [`Session::handle_share`], or why it could not say (then it shares nothing). Asks
    /// the store what it holds next.
    pub fn handle_shares(
        &mut self,
        namespace: &str,
        answer: Result<Vec<(FeedKey, Headers)>, String>,
    ) {
        match answer {
            Ok(feeds) => {
                if let Err(e) = self.handle_share(namespace, feeds) {
                    warn!(%namespace, error = %e, "share refused");
                }
            }
            Err(e) => warn!(%namespace, error = %e, "store did not say what it shares"),
        }
        if self.ended.is_none() {
            self.store_calls.push_back(StoreCall::Known {
                namespace: namespace.to_string(),
            });
        }
    }

    /// The store's answer to [`StoreCall::Known`]: the feeds it holds, announced as with
    /// [`Session::handle_known_feeds`], or why it could not say (then it announces
    /// nothing). The namespace's start is done.
    pub fn handle_known(&mut self, namespace: &str, answer: Result<Vec<FeedKey>, String>) {
        match answer {
            Ok(feeds) => {
                if let Err(e) = self.handle_known_feeds(namespace, feeds) {
                    warn!(%namespace, error = %e, "known feeds refused");
                }
            }
            Err(e) => warn!(%namespace, error = %e, "store did not say what it holds"),
        }
        self.store_asks = self.store_asks.saturating_sub(1);
        if self.ended.is_none() {
            self.maybe_ready();
        }
    }

    /// The store's answer to [`StoreCall::Heads`]: for each of `feeds`, the signed head
    /// it holds every block of, if it does; or why it could not say (then every feed
    /// gets a stream). Decides our first word on each feed: that head, or none (also
    /// when our copy changed while the store was asked, or the head is empty).
    pub fn handle_heads(
        &mut self,
        feeds: &[FeedKey],
        answer: Result<Vec<Option<SignedHead>>, String>,
    ) {
        let heads = answer.unwrap_or_else(|e| {
            warn!(error = %e, "store did not say how far it holds its feeds");
            Vec::new()
        });
        for (i, feed) in feeds.iter().enumerate() {
            let Some(state) = self.feeds.get_mut(feed) else {
                continue;
            };
            let FirstWord::Asking { changed } = state.first_word else {
                continue;
            };
            let head = heads
                .get(i)
                .copied()
                .flatten()
                .filter(|h| !changed && h.length > 0);
            state.first_word = FirstWord::Queued(head.map(Box::new));
            self.first_words.push_back(*feed);
        }
        self.pump_offers();
    }

    /// The next call to a store.
    pub fn poll_store(&mut self) -> Option<StoreCall> {
        if let Some(call) = self.store_calls.pop_front() {
            return Some(call);
        }
        if let Some(call) = self.poll_whole_call() {
            return Some(call);
        }
        let (namespace, first) = self.head_asks.pop_front()?;
        let mut feeds = vec![first];
        while feeds.len() < MAX_HEADS_PER_CALL {
            match self.head_asks.front() {
                Some((n, _)) if *n == namespace => {}
                _ => break,
            }
            if let Some((_, feed)) = self.head_asks.pop_front() {
                feeds.push(feed);
            }
        }
        Some(StoreCall::Heads { namespace, feeds })
    }
}
