//! The handle's namespace operations: namespaces opened by the user (the CLI, the
//! config) with a policy that can be written down ([`NamespaceSpec`]), persisted with
//! their secret and resumed at start; the user's decisions on offers waiting in a manual
//! namespace; the node's log of recent offers ([`OfferLog`]).

use replic8::feed_store::{DecideOffers, NamespacePolicy, ServeNamespace, SetNamespacePolicy};
use replic8::keys::{FeedKey, NamespaceSecret};
use replic8::store::UnregisterStore;

use super::namespace_spec::NamespaceSpec;
use super::namespace_types::*;
use super::{NodeClosed, NodeHandle};
use crate::persist::PersistedNamespace;

impl NodeHandle {
    /// Opens `name` with `secret` (if any) under `spec`, and persists both (the secret
    /// in the state file, mode 0600), so that a restart opens it again. Opening an open
    /// namespace again replaces its policy, and its secret if another is given (on
    /// running sessions too: they stop serving it under the old one and offer the new
    /// tag). A failed open changes nothing.
    pub async fn open_namespace_spec(
        &self,
        name: &str,
        secret: Option<NamespaceSecret>,
        spec: NamespaceSpec,
    ) -> Result<(), NamespaceError> {
        if name.is_empty() {
            return Err(NamespaceError::Public);
        }
        // Persisted first: a namespace that could not be written down is not opened;
        // one that could not be opened is put back as it was.
        let entry = PersistedNamespace {
            secret: secret.as_ref().map(|s| hex::encode(s.0)),
            spec: spec.clone(),
        };
        let mut before = None;
        self.persist(|state| {
            before = state.opened.insert(name.to_owned(), entry.clone());
            before.as_ref() != Some(&entry)
        })
        .await?;
        let opened = self.open_spec(name, secret, spec).await;
        if opened.is_err() {
            let restored = self
                .persist(|state| match before {
                    Some(old) => state.opened.insert(name.to_owned(), old.clone()) != Some(old),
                    None => state.opened.remove(name).is_some(),
                })
                .await;
            if let Err(e) = restored {
                tracing::warn!(namespace = %name, error = %e, "failed open not undone on disk");
            }
        }
        opened
    }

    /// Opens `name` (served by the default feed store), without persisting it.
    pub(crate) async fn open_spec(
        &self,
        name: &str,
        secret: Option<NamespaceSecret>,
        spec: NamespaceSpec,
    ) -> Result<(), NamespaceError> {
        if name.is_empty() {
            return Err(NamespaceError::Public);
        }
        let mut open = self.s().namespaces.lock().await;
        match open.get(name) {
            Some(old) if *old != secret => {
                // Another secret replaces the old one on every session, running or
                // later: never kept silently.
                self.unserve(&mut open, name).await?;
                self.serve_spec(&mut open, name, secret, spec).await
            }
            Some(_) => {
                self.s()
                    .feeds
                    .set_policy
                    .send(SetNamespacePolicy {
                        namespace: name.to_owned(),
                        policy: spec.policy(),
                    })
                    .await
                    .map_err(|_| NodeClosed)??;
                Ok(())
            }
            None => self.serve_spec(&mut open, name, secret, spec).await,
        }
    }

    /// Serves `name`, not open, with the default feed store, and records it in `open`.
    async fn serve_spec(
        &self,
        open: &mut std::collections::HashMap<String, Option<NamespaceSecret>>,
        name: &str,
        secret: Option<NamespaceSecret>,
        spec: NamespaceSpec,
    ) -> Result<(), NamespaceError> {
        self.s()
            .feeds
            .serve
            .send(ServeNamespace {
                namespace: name.to_owned(),
                secret: secret.clone(),
                policy: spec.policy(),
            })
            .await
            .map_err(|_| NodeClosed)??;
        open.insert(name.to_owned(), secret);
        Ok(())
    }

    /// Closes `name`: it is no longer served to sessions that start from now on, its
    /// policy becomes held-only at once (nothing new is accepted in it), and it is no
    /// longer persisted, nor are the shares in it. Feeds held in it stay held.
    pub async fn close_namespace(&self, name: &str) -> Result<(), NamespaceError> {
        if name.is_empty() {
            return Err(NamespaceError::Public);
        }
        let mut open = self.s().namespaces.lock().await;
        if !open.contains_key(name) {
            return Err(NamespaceError::NotOpen(name.to_owned()));
        }
        self.persist(|state| {
            let before = (
                state.opened.len(),
                state.namespaces.len(),
                state.shares.len(),
            );
            state.opened.remove(name);
            state.policies.remove(name);
            state.namespaces.retain(|n| n != name);
            state.shares.retain(|s| s.namespace != name);
            before
                != (
                    state.opened.len(),
                    state.namespaces.len(),
                    state.shares.len(),
                )
        })
        .await?;
        self.s()
            .feeds
            .set_policy
            .send(SetNamespacePolicy {
                namespace: name.to_owned(),
                policy: NamespacePolicy::held_only(),
            })
            .await
            .map_err(|_| NodeClosed)??;
        self.unserve(&mut open, name).await?;
        Ok(())
    }

    /// Stops serving `name` on every session, running or later, and forgets it in
    /// `open`.
    pub(crate) async fn unserve(
        &self,
        open: &mut std::collections::HashMap<String, Option<NamespaceSecret>>,
        name: &str,
    ) -> Result<(), NodeClosed> {
        self.s()
            .sessions
            .send(UnregisterStore {
                namespaces: vec![name.to_owned()],
            })
            .await
            .map_err(|_| NodeClosed)?;
        open.remove(name);
        Ok(())
    }

    /// The open namespaces but the public one, by name.
    pub async fn namespaces(&self) -> Vec<NamespaceStatus> {
        let open = self.s().namespaces.lock().await;
        let state = self.s().state.lock().await;
        let config = &self.s().config_namespaces;
        let mut list: Vec<NamespaceStatus> = open
            .iter()
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, secret)| {
                let (spec, origin) = match config.get(name) {
                    Some(spec) => (Some(spec.clone()), "config"),
                    None => match state.opened.get(name) {
                        Some(p) => (Some(p.spec.clone()), "opened"),
                        None => (None, "share"),
                    },
                };
                NamespaceStatus {
                    name: name.clone(),
                    secret: secret.is_some(),
                    spec,
                    origin,
                }
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The user's decision on `feeds` offered in `namespace` (opened with the manual
    /// policy): waiting offers of them are answered, and the decision is remembered for
    /// later offers. Replies with, per feed, how many waiting offers got it.
    pub async fn decide_offers(
        &self,
        namespace: &str,
        feeds: Vec<FeedKey>,
        accept: bool,
    ) -> Result<Vec<usize>, NamespaceError> {
        if !self.s().namespaces.lock().await.contains_key(namespace) {
            return Err(NamespaceError::NotOpen(namespace.to_owned()));
        }
        Ok(self
            .s()
            .feeds
            .decide
            .send(DecideOffers {
                namespace: namespace.to_owned(),
                feeds,
                accept,
            })
            .await
            .map_err(|_| NodeClosed)??)
    }

    /// Each offered feed's decision from now on, as it happens (a subscriber that falls
    /// more than [`OFFER_LOG`] behind misses the oldest and is told how many).
    pub fn subscribe_offers(&self) -> tokio::sync::broadcast::Receiver<OfferRecord> {
        self.s().offer_events.subscribe()
    }

    /// The recent offers of peers (at most [`OFFER_LOG`] feeds), oldest first.
    pub fn offers(&self) -> Vec<OfferRecord> {
        self.s()
            .offers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .list()
    }
}
