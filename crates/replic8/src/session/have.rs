//! All-to-all replication: our `have` lists by discovery key and capability, and the
//! peer's matched against the feeds we hold.

use super::config::MAX_UNMATCHED_HAVE;
use super::state::{Known, Route};
use super::types::CommandError;
use crate::keys::{capability, verify_capability, DiscoveryKey, FeedKey};
use crate::message::{CloseCode, KnownFeed};

use super::Session;

impl Session {
    /// Announces feeds we hold in a namespace for all-to-all replication: by discovery
    /// key and capability, never by public key. A feed the peer announced too, with a
    /// capability that checks, is replicated without an offer.
    pub fn handle_known_feeds(
        &mut self,
        namespace: &str,
        feeds: Vec<FeedKey>,
    ) -> Result<(), CommandError> {
        self.alive()?;
        let Some(ns) = self.namespaces.get(namespace) else {
            return Err(CommandError::UnknownNamespace(namespace.to_string()));
        };
        let sendable = ns.peer_proven;
        let mut new = Vec::new();
        for key in feeds {
            let dk = key.discovery_key();
            if self.known.contains_key(&dk) {
                continue;
            }
            self.known.insert(
                dk,
                Known {
                    key,
                    namespace: namespace.to_string(),
                    announced: false,
                },
            );
            new.push(dk);
        }
        if sendable {
            self.announce(namespace, new);
        } else if let Some(ns) = self.namespaces.get_mut(namespace) {
            ns.pending_have.extend(new);
        }
        Ok(())
    }

    pub(super) fn on_have(&mut self, handle: u32, feeds: Vec<KnownFeed>) {
        let usable = self
            .handles
            .get(&handle)
            .filter(|name| self.namespaces.get(*name).is_some_and(|ns| ns.peer_proven))
            .cloned();
        let Some(namespace) = usable else {
            return;
        };
        for feed in feeds {
            let dk = feed.discovery_key;
            match self.known.get(&dk) {
                Some(known) if known.namespace == namespace => {
                    if !verify_capability(
                        &known.key,
                        &self.exporter,
                        self.role.peer(),
                        &feed.capability,
                    ) {
                        return self.fail(
                            CloseCode::BAD_CAPABILITY,
                            format!("bad capability for feed {}", dk.fmt_short()),
                        );
                    }
                    if known.announced {
                        let key = known.key;
                        self.peer_has.insert(key);
                        self.replicate(key, &namespace, Route::Known);
                    } else {
                        self.unmatched_have.insert(dk, (handle, feed.capability));
                    }
                }
                _ => {
                    // Kept in case we add the feed later; past the bound, dropped: an
                    // honest peer may hold many feeds we do not.
                    if self.unmatched_have.len() < MAX_UNMATCHED_HAVE
                        || self.unmatched_have.contains_key(&dk)
                    {
                        self.unmatched_have.insert(dk, (handle, feed.capability));
                    }
                }
            }
        }
    }

    pub(super) fn announce(&mut self, namespace: &str, feeds: Vec<DiscoveryKey>) {
        let Some(handle) = self.namespaces.get(namespace).and_then(|ns| ns.handle) else {
            return;
        };
        let mut entries = Vec::with_capacity(feeds.len());
        let mut matched = Vec::new();
        for dk in feeds {
            let Some(known) = self.known.get_mut(&dk) else {
                continue;
            };
            known.announced = true;
            entries.push(KnownFeed {
                discovery_key: dk,
                capability: capability(&known.key, &self.exporter, self.role),
            });
            if let Some((h, cap)) = self.unmatched_have.get(&dk) {
                if *h == handle {
                    matched.push((dk, known.key, *cap));
                }
            }
        }
        self.have_queue
            .extend(entries.into_iter().map(|entry| (handle, entry)));
        self.pump_offers();
        for (dk, key, cap) in matched {
            self.unmatched_have.remove(&dk);
            if !verify_capability(&key, &self.exporter, self.role.peer(), &cap) {
                return self.fail(
                    CloseCode::BAD_CAPABILITY,
                    format!("bad capability for feed {}", dk.fmt_short()),
                );
            }
            self.peer_has.insert(key);
            self.replicate(key, namespace, Route::Known);
        }
    }
}
