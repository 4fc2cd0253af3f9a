//! Namespaces: registration, connection-bound tags (the dialer shows, the acceptor
//! answers only a match), and what a proven namespace unlocks.

use super::config::MAX_UNMATCHED_TAGS;
use super::state::Namespace;
use super::types::{CommandError, SessionEvent};
use crate::keys::{NamespaceKey, NamespaceSecret, Role};
use crate::message::{CloseCode, Message, PUBLIC_HANDLE};

use super::Session;

impl Session {
    /// Registers a namespace with an optional secret. Every namespace but the public
    /// one (`""` without a secret) is matched by tags: the dialer sends its tag (once
    /// hellos are exchanged), the acceptor answers a matching tag with its own.
    /// Registering the same namespace again is a no-op.
    pub fn handle_register_namespace(
        &mut self,
        name: &str,
        secret: Option<NamespaceSecret>,
    ) -> Result<(), CommandError> {
        self.alive()?;
        if let Some(existing) = self.namespaces.get(name) {
            return if existing.secret == secret {
                Ok(())
            } else {
                Err(CommandError::NamespaceConflict(name.to_string()))
            };
        }
        let public = name.is_empty() && secret.is_none();
        let key = (!public).then(|| NamespaceKey::new(name, secret.as_ref()));
        if key.is_some() && self.namespaces.values().any(|ns| ns.key == key) {
            // One key, two namespaces: a tag could not say which.
            return Err(CommandError::NamespaceConflict(name.to_string()));
        }
        let mut handle = public.then_some(PUBLIC_HANDLE);
        if self.role == Role::Dialer && !public {
            let next = self.next_handle;
            self.next_handle = next.checked_add(1).ok_or(CommandError::NoHandleLeft)?;
            handle = Some(next);
        }
        if let Some(h) = handle {
            self.handles.insert(h, name.to_string());
        }
        self.namespaces.insert(
            name.to_string(),
            Namespace {
                secret,
                key: key.clone(),
                handle,
                peer_proven: public,
                pending_offers: Vec::new(),
                pending_have: Vec::new(),
                takes_whole: false,
            },
        );
        match (self.role, key) {
            (Role::Dialer, Some(key)) => {
                let tag = key.tag(&self.exporter, self.role);
                self.send(Message::Tag {
                    handle: handle.unwrap_or(PUBLIC_HANDLE),
                    tag,
                });
            }
            (Role::Acceptor, Some(key)) => {
                // A dialer tag kept from before may be for this namespace.
                let found = self
                    .unmatched_tags
                    .iter()
                    .position(|(_, tag)| key.verify(&self.exporter, Role::Dialer, tag));
                if let Some(i) = found {
                    let (h, _) = self.unmatched_tags.swap_remove(i);
                    self.match_namespace(name, h);
                }
            }
            (_, None) => {}
        }
        Ok(())
    }

    pub(super) fn on_tag(&mut self, handle: u32, tag: [u8; 32]) {
        match self.role {
            Role::Acceptor => self.on_dialer_tag(handle, tag),
            Role::Dialer => self.on_acceptor_tag(handle, tag),
        }
    }

    /// A dialer's tag: answered only if it matches one of our namespaces, so a peer
    /// that does not know the key learns nothing from us.
    fn on_dialer_tag(&mut self, handle: u32, tag: [u8; 32]) {
        if handle == PUBLIC_HANDLE {
            return self.fail(CloseCode::PROTOCOL, "tag for the public handle".into());
        }
        if self.last_peer_handle.is_some_and(|last| handle <= last) {
            return self.fail(
                CloseCode::PROTOCOL,
                format!("namespace handle {handle} does not increase"),
            );
        }
        self.last_peer_handle = Some(handle);
        // Every namespace not matched yet is checked, each in constant time.
        let found = self
            .namespaces
            .iter()
            .filter(|(_, ns)| ns.handle.is_none())
            .find(|(_, ns)| {
                ns.key
                    .as_ref()
                    .is_some_and(|key| key.verify(&self.exporter, Role::Dialer, &tag))
            })
            .map(|(name, _)| name.clone());
        match found {
            Some(name) => self.match_namespace(&name, handle),
            // Kept in case we register the namespace later; past the bound, dropped:
            // an honest dialer may be in many namespaces we are not in.
            None if self.unmatched_tags.len() < MAX_UNMATCHED_TAGS => {
                self.unmatched_tags.push((handle, tag))
            }
            None => {}
        }
    }

    /// Stops serving a namespace on this session: the peer's offers and `Have`s under its
    /// handle are answered with nothing accepted (or ignored) from now on, what we had
    /// queued for it is dropped, and feeds already replicated in it go on. Registering
    /// it again (with another secret, say) starts over: the dialer sends a tag under a
    /// new handle; an acceptor matches only a tag the dialer sends later. Unregistering
    /// a namespace that is not registered, or the public one, is a no-op.
    pub fn handle_unregister_namespace(&mut self, name: &str) -> Result<(), CommandError> {
        self.alive()?;
        if name.is_empty() {
            return Ok(());
        }
        let Some(ns) = self.namespaces.remove(name) else {
            return Ok(());
        };
        if let Some(handle) = ns.handle {
            self.handles.remove(&handle);
            if self.role == Role::Dialer && !ns.peer_proven {
                self.retired_handles.insert(handle);
            }
        }
        Ok(())
    }

    /// The acceptor's answer to our tag for `handle`.
    fn on_acceptor_tag(&mut self, handle: u32, tag: [u8; 32]) {
        // The answer to a tag of a namespace we unregistered meanwhile.
        if self.retired_handles.remove(&handle) {
            return;
        }
        let ns = self
            .handles
            .get(&handle)
            .and_then(|name| self.namespaces.get(name).map(|ns| (name, ns)))
            .filter(|(_, ns)| !ns.peer_proven);
        let Some((name, ns)) = ns else {
            // An honest acceptor answers only our tags, once each.
            return self.fail(
                CloseCode::PROTOCOL,
                format!("tag for namespace handle {handle}, which awaits no answer"),
            );
        };
        let checks = ns
            .key
            .as_ref()
            .is_some_and(|key| key.verify(&self.exporter, Role::Acceptor, &tag));
        if !checks {
            // It answers only a tag of ours that matched its key, so its own checks.
            return self.fail(
                CloseCode::BAD_PROOF,
                format!("bad tag for namespace handle {handle}"),
            );
        }
        let name = name.clone();
        self.namespace_proven(&name);
    }

    /// Acceptor: the dialer's tag `handle` matched namespace `name`: answer with our tag.
    fn match_namespace(&mut self, name: &str, handle: u32) {
        let Some(ns) = self.namespaces.get_mut(name) else {
            return;
        };
        ns.handle = Some(handle);
        let tag = ns
            .key
            .as_ref()
            .map(|key| key.tag(&self.exporter, self.role));
        self.handles.insert(handle, name.to_string());
        if let Some(tag) = tag {
            self.send(Message::Tag { handle, tag });
        }
        self.namespace_proven(name);
    }

    /// The peer showed it knows `name`'s key: its shares and `have`s may go out.
    fn namespace_proven(&mut self, name: &str) {
        let Some(ns) = self.namespaces.get_mut(name) else {
            return;
        };
        ns.peer_proven = true;
        let handle = ns.handle.unwrap_or(PUBLIC_HANDLE);
        let offers = std::mem::take(&mut ns.pending_offers);
        let have = std::mem::take(&mut ns.pending_have);
        self.events.push_back(SessionEvent::NamespaceProven {
            namespace: name.to_string(),
        });
        self.queue_offers(handle, offers);
        self.announce(name, have);
    }
}
