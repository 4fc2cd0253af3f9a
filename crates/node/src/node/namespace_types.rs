//! The data of namespaces opened by the user (the CLI, the config): a policy that can be
//! written down ([`NamespaceSpec`]), the secret's text form, and the node's log of recent
//! offers ([`OfferLog`]). The handle's operations on them are in `namespaces.rs`.

use std::collections::VecDeque;

use replic8::feed_store::{FeedStoreError, FeedStoreEvent, OfferDecision};
use replic8::keys::{FeedKey, NamespaceSecret};
use replic8::message::Headers;
use replic8::store::RegisterError;
use replic8_connmgr::PeerKey;

use super::errors::NodeClosed;
use super::namespace_spec::{NamespaceSpec, SpecError};
use crate::persist::PersistError;

/// A namespace secret from 64 hex digits (surrounding whitespace ignored), as
/// `replic8 namespace new-secret` prints it.
pub fn parse_secret(text: &str) -> Result<NamespaceSecret, NamespaceError> {
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret).map_err(|_| NamespaceError::BadSecret)?;
    Ok(NamespaceSecret(secret))
}

/// What opening, closing or deciding in a namespace can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// The node is closed.
    #[error(transparent)]
    Closed(#[from] NodeClosed),
    /// The feed store refused.
    #[error(transparent)]
    Store(#[from] FeedStoreError),
    /// The namespace is served by another (custom) store.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// The change could not be persisted (nothing was changed).
    #[error("not persisted: {0}")]
    Persist(#[from] PersistError),
    /// The namespace is not open.
    #[error("namespace {0:?} is not open")]
    NotOpen(String),
    /// The public namespace `""` is always open, held-only, without a secret.
    #[error("the public namespace \"\" is always open, held-only and without a secret")]
    Public,
    /// A secret is not 64 hex digits.
    #[error("a namespace secret is 64 hex digits (replic8 namespace new-secret prints one)")]
    BadSecret,
    /// The namespace's policy is not valid as given.
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// An open namespace, as `namespace list` shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceStatus {
    /// Its name.
    pub name: String,
    /// Whether it has a secret.
    pub secret: bool,
    /// Its policy, if it was opened with one that can be written down (else opened by
    /// the embedding program, or held-only by a share).
    pub spec: Option<NamespaceSpec>,
    /// Where it comes from: `config`, `opened` (the CLI, persisted) or `share`.
    pub origin: &'static str,
}

/// Most offered feeds the node's log keeps: enough for the last few peers' shares in
/// full; older entries go first.
pub const OFFER_LOG: usize = 1024;

/// One offered feed and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferRecord {
    /// When it was offered (or last decided), seconds since the Unix epoch.
    pub at: u64,
    /// Who offered it.
    pub peer: PeerKey,
    /// The namespace.
    pub namespace: String,
    /// The feed.
    pub feed: FeedKey,
    /// Its headers.
    pub headers: Headers,
    /// What became of it.
    pub decision: OfferDecision,
}

/// The node's recent offers, at most [`OFFER_LOG`]: a decision on a feed the log holds
/// (the same peer, namespace and feed) updates its entry.
#[derive(Debug, Default)]
pub(crate) struct OfferLog {
    entries: VecDeque<OfferRecord>,
}

impl OfferLog {
    /// Records a store event that decided an offered feed; returns the record.
    pub(crate) fn record(&mut self, event: &FeedStoreEvent) -> Option<OfferRecord> {
        let FeedStoreEvent::OfferDecided {
            namespace,
            peer,
            feed,
            headers,
            decision,
        } = event
        else {
            return None;
        };
        let record = OfferRecord {
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            peer: *peer,
            namespace: namespace.clone(),
            feed: *feed,
            headers: headers.clone(),
            decision: *decision,
        };
        let same = self.entries.iter().rposition(|r| {
            r.feed == record.feed && r.peer == record.peer && r.namespace == record.namespace
        });
        // A waiting feed's decision replaces its entry; a new offer of a feed decided
        // before is a new entry.
        match same {
            Some(i) if self.entries[i].decision == OfferDecision::Waiting => {
                self.entries[i] = record.clone();
            }
            _ => {
                if self.entries.len() >= OFFER_LOG {
                    self.entries.pop_front();
                }
                self.entries.push_back(record.clone());
            }
        }
        Some(record)
    }

    /// The entries, oldest first.
    pub(crate) fn list(&self) -> Vec<OfferRecord> {
        self.entries.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_64_hex_digits() {
        let text = format!("{}\n", "ab".repeat(32));
        assert_eq!(parse_secret(&text).unwrap().0, [0xab; 32]);
        assert!(matches!(
            parse_secret("abcd"),
            Err(NamespaceError::BadSecret)
        ));
    }

    #[test]
    fn the_offer_log_updates_a_waiting_entry_and_stays_bounded() {
        let mut log = OfferLog::default();
        let event = |feed: u8, decision| FeedStoreEvent::OfferDecided {
            namespace: "ns".into(),
            peer: replic8::keys::PeerKey([1; 32]),
            feed: FeedKey([feed; 32]),
            headers: Headers::new(),
            decision,
        };
        log.record(&event(1, OfferDecision::Waiting));
        log.record(&event(1, OfferDecision::Accepted));
        assert_eq!(log.list().len(), 1);
        assert_eq!(log.list()[0].decision, OfferDecision::Accepted);
        // A later offer of a decided feed is a new entry.
        log.record(&event(1, OfferDecision::Held));
        assert_eq!(log.list().len(), 2);
        for i in 0..(OFFER_LOG + 5) {
            log.record(&event((i % 200) as u8, OfferDecision::RefusedPolicy));
        }
        assert_eq!(log.list().len(), OFFER_LOG);
    }
}
