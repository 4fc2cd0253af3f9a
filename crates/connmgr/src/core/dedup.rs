//! One connection per key: the key rule, held and confirmed connections, candidates and
//! challengers (see the rules in the module doc of `core`).

use std::net::SocketAddr;
use std::time::Instant;

use super::state::{is_relayed, Initiator, Phase};
use super::{ConnCore, ConnId, CoreEvent};
use crate::error::{CloseReason, DownReason, RefuseReason};
use crate::key::PeerKey;

impl ConnCore {
    /// The handshake of `conn` finished: the peer proved `key`.
    pub fn handle_established(&mut self, conn: ConnId, key: PeerKey, now: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !matches!(c.phase, Phase::Handshaking { .. }) {
            return;
        }
        c.key = Some(key);
        c.since = Some(now);
        let addr = c.addr;
        let initiator = c.initiator;
        if initiator == Initiator::Local {
            self.backoff.remove(&addr);
            self.wait_for_key(key, conn, now);
        }
        let refusal = if key == self.me {
            Some(RefuseReason::SelfConnection)
        } else if self.is_banned(&key, now) {
            Some(RefuseReason::Banned(key))
        } else if self
            .config
            .firewall
            .as_ref()
            .is_some_and(|allow| !allow(&key, addr))
        {
            Some(RefuseReason::Firewall)
        } else if !self.current.contains_key(&key) {
            self.take_slot(addr, initiator, now)
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.conns.remove(&conn);
            self.events.push_back(CoreEvent::Refused {
                conn,
                key,
                reason: reason.clone(),
            });
            self.events.push_back(CoreEvent::Close {
                conn,
                reason: CloseReason::Refused(reason.clone()),
            });
            if self.up(&key).is_some() {
                self.resolve_key_waiters(key, Ok(key));
            } else if !self.current.contains_key(&key) {
                self.resolve_key_waiters(key, Err(reason.into()));
            }
            return;
        }
        match self.current.get(&key).copied() {
            None => self.install(conn, key, now),
            Some(old) => {
                let old_phase = self.conns.get(&old).map(|c| c.phase);
                // A direct connection beats a relayed one whoever dialed: both sides see
                // the same path kind on the same connection, so they agree unasked.
                let (new_relayed, old_relayed) = (self.conn_relayed(conn), self.conn_relayed(old));
                if new_relayed && !old_relayed {
                    self.drop_conn(conn, key, CloseReason::Duplicate, DownReason::Duplicate);
                } else if (old_relayed && !new_relayed)
                    || self.initiator_key(conn, key) > self.initiator_key(old, key)
                {
                    self.drop_conn(old, key, CloseReason::Duplicate, DownReason::Duplicate);
                    if let Some(ch) = self.challenger.remove(&key) {
                        self.drop_conn(ch, key, CloseReason::Duplicate, DownReason::Duplicate);
                    }
                    self.install(conn, key, now);
                } else if matches!(old_phase, Some(Phase::Held { .. } | Phase::Up))
                    && key > self.me
                    && initiator == Initiator::Local
                    && self.conns.get(&old).map(|o| o.initiator) == Some(Initiator::Local)
                    && !self.challenger.contains_key(&key)
                {
                    // Two of ours to the greater key: it decides which one it keeps, and
                    // confirms that one or closes the other (its confirmation may be
                    // lost, and our window may have ended: the first one may be up).
                    let until = now + self.config.dial_wait;
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.phase = Phase::Candidate { until };
                    }
                    self.challenger.insert(key, conn);
                } else if old_phase == Some(Phase::Up) && !self.challenger.contains_key(&key) {
                    // Loses or ties by keys: the peer may have restarted. Probe the old one.
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.phase = Phase::Challenger;
                    }
                    self.challenger.insert(key, conn);
                    self.events.push_back(CoreEvent::Probe { conn: old });
                } else {
                    // The current one is fresh (held) or being probed already.
                    self.drop_conn(conn, key, CloseReason::Duplicate, DownReason::Duplicate);
                }
            }
        }
        if self.up(&key).is_some() {
            self.resolve_key_waiters(key, Ok(key));
        }
    }

    /// The probe of `conn` (the current connection of a key with a challenger) answered.
    pub fn handle_probe_result(&mut self, conn: ConnId, alive: bool, now: Instant) {
        let Some(key) = self.conns.get(&conn).and_then(|c| c.key) else {
            return;
        };
        if self.current.get(&key) != Some(&conn) {
            return;
        }
        let Some(ch) = self.challenger.remove(&key) else {
            return;
        };
        if alive {
            self.drop_conn(ch, key, CloseReason::Duplicate, DownReason::Duplicate);
        } else {
            self.drop_conn(conn, key, CloseReason::Replaced, DownReason::Replaced);
            self.current.insert(key, ch);
            self.set_up(ch, key);
        }
        let _ = now;
    }

    /// The peer confirmed `conn`: it has the greater key, we initiated `conn`, and the
    /// peer committed to it (see the module doc). Anything else is ignored.
    pub fn handle_confirmed(&mut self, conn: ConnId, now: Instant) {
        let _ = now;
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let Some(key) = c.key else {
            return;
        };
        if c.initiator != Initiator::Local || key < self.me {
            return;
        }
        match c.phase {
            Phase::Held { .. } => self.settle(conn, key, false),
            Phase::Candidate { .. } | Phase::Challenger => {
                self.challenger.remove(&key);
                if let Some(old) = self.current.get(&key).copied() {
                    // Held: the peer kept the other one of ours. Up: the peer dropped the
                    // old one (it restarted, or found it dead).
                    let (close, down) = if self.conns.get(&old).map(|o| o.phase) == Some(Phase::Up)
                    {
                        (CloseReason::Replaced, DownReason::Replaced)
                    } else {
                        (CloseReason::Duplicate, DownReason::Duplicate)
                    };
                    self.drop_conn(old, key, close, down);
                }
                self.current.insert(key, conn);
                self.set_up(conn, key);
                self.resolve_key_waiters(key, Ok(key));
            }
            Phase::Handshaking { .. } | Phase::Up => {}
        }
    }

    /// Connections the smaller key initiated that we hold only because a dial of ours was
    /// under way: with that dial gone, we commit to them now.
    pub(super) fn commit_held(&mut self) {
        let ready: Vec<(ConnId, PeerKey)> = self
            .conns
            .iter()
            .filter_map(|(id, c)| match (c.phase, c.key) {
                (Phase::Held { .. }, Some(key))
                    if c.initiator == Initiator::Remote
                        && key < self.me
                        && !self.dial_pending_to(key, c.addr) =>
                {
                    Some((*id, key))
                }
                _ => None,
            })
            .collect();
        for (id, key) in ready {
            self.settle(id, key, false);
        }
    }

    /// Whether `conn` runs through a relay (its address is a virtual one).
    fn conn_relayed(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| is_relayed(&c.addr))
    }

    /// Whether the connection that is current for `key` runs through a relay.
    pub(super) fn relayed_only(&self, key: &PeerKey) -> bool {
        self.current
            .get(key)
            .is_some_and(|id| self.conn_relayed(*id))
    }

    fn initiator_key(&self, conn: ConnId, remote: PeerKey) -> PeerKey {
        match self.conns.get(&conn).map(|c| c.initiator) {
            Some(Initiator::Local) => self.me,
            _ => remote,
        }
    }

    fn install(&mut self, conn: ConnId, key: PeerKey, now: Instant) {
        self.current.insert(key, conn);
        let commit = key < self.me
            && self
                .conns
                .get(&conn)
                .is_some_and(|c| !self.dial_pending_to(key, c.addr));
        if self.initiator_key(conn, key) == self.me.max(key) || commit {
            self.set_up(conn, key);
        } else if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = Phase::Held {
                until: now + self.config.settle_window,
            };
        }
    }

    /// Whether a dial of ours that could reach `key` is in its handshake: pinned to
    /// `key`, or to `addr` (where `key` reached us: one socket per node, so its address).
    fn dial_pending_to(&self, key: PeerKey, addr: SocketAddr) -> bool {
        self.conns.values().any(|c| {
            c.initiator == Initiator::Local
                && match c.phase {
                    Phase::Handshaking { expected } => {
                        expected == Some(key) || (expected.is_none() && c.addr == addr)
                    }
                    _ => false,
                }
        })
    }

    /// `conn` goes up. When the peer has the smaller key and initiated it, we commit to it
    /// and tell the peer first.
    pub(super) fn set_up(&mut self, conn: ConnId, key: PeerKey) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = Phase::Up;
            if c.initiator == Initiator::Remote && key < self.me {
                self.events.push_back(CoreEvent::Confirm { conn });
            }
            self.events.push_back(CoreEvent::PeerUp { conn, key });
        }
    }

    /// The held `conn` is the one for `key`: up. A candidate beside it is closed when the
    /// peer confirmed `conn`; when the window ended without a confirmation (`unconfirmed`)
    /// the peer may have committed to the candidate (its confirmation lost) and be about
    /// to close `conn` as a duplicate, so the candidate stays as the challenger: whichever
    /// of the two the peer closes, `handle_closed` leaves us on the other one, and a late
    /// confirmation of the candidate switches to it (`handle_confirmed`).
    pub(super) fn settle(&mut self, conn: ConnId, key: PeerKey, unconfirmed: bool) {
        self.set_up(conn, key);
        if !unconfirmed {
            self.drop_candidate(key);
        }
        self.resolve_key_waiters(key, Ok(key));
    }

    fn drop_candidate(&mut self, key: PeerKey) {
        let candidate = self.challenger.get(&key).copied().filter(|ch| {
            self.conns
                .get(ch)
                .is_some_and(|c| matches!(c.phase, Phase::Candidate { .. }))
        });
        if let Some(ch) = candidate {
            self.challenger.remove(&key);
            self.drop_conn(ch, key, CloseReason::Duplicate, DownReason::Duplicate);
        }
    }
}
