//! Connections that end: closed by the peer or the network, closed or banned on request,
//! shut down.

use std::time::{Duration, Instant};

use super::state::{Initiator, Phase};
use super::{ConnCore, ConnId, CoreEvent};
use crate::error::{
    is_duplicate_close, CloseReason, DialError, DownReason, RefuseReason, CLOSE_DUPLICATE,
    CLOSE_EVICTED, CLOSE_REFUSED,
};
use crate::key::PeerKey;

impl ConnCore {
    /// `conn` closed (by the peer, by idle timeout, or after we closed it).
    pub fn handle_closed(&mut self, conn: ConnId, error: quinn::ConnectionError, now: Instant) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let Some(key) = c.key else {
            // Closed during its handshake.
            self.conns.insert(conn, c);
            self.handle_handshake_failed(conn, DialError::Connection(error), now);
            return;
        };
        match c.phase {
            Phase::Handshaking { .. } => {}
            Phase::Challenger | Phase::Candidate { .. } => {
                self.challenger.remove(&key);
            }
            Phase::Held { .. } | Phase::Up => {
                if self.current.get(&key) == Some(&conn) {
                    self.current.remove(&key);
                }
                // An eviction is the peer's refusal to keep us: the same for us (back
                // off, no redial), with its own text.
                let refused_by_peer = match &error {
                    quinn::ConnectionError::ApplicationClosed(close)
                        if close.error_code == CLOSE_REFUSED
                            || close.error_code == CLOSE_EVICTED =>
                    {
                        Some(String::from_utf8_lossy(&close.reason).into_owned())
                    }
                    _ => None,
                };
                if refused_by_peer.is_some() {
                    // Do not come straight back to a peer that refused us.
                    self.backoff_failure(c.addr, now);
                }
                if c.phase == Phase::Up {
                    let reason = match (&error, &refused_by_peer) {
                        (_, Some(text)) => DownReason::RefusedByPeer(text.clone()),
                        (quinn::ConnectionError::ApplicationClosed(close), _)
                            if close.error_code == CLOSE_DUPLICATE =>
                        {
                            DownReason::Duplicate
                        }
                        (other, _) => DownReason::Lost(other.clone()),
                    };
                    self.events
                        .push_back(CoreEvent::PeerDown { conn, key, reason });
                }
                if let Some(ch) = self.challenger.remove(&key) {
                    // The probed connection died before its probe answered.
                    self.current.insert(key, ch);
                    self.set_up(ch, key);
                } else if !self.current.contains_key(&key) && !is_duplicate_close(&error) {
                    // (Closed by the peer as a duplicate: the peer's own connection to us
                    // is coming, and the dials for this key wait for it.)
                    let result = match refused_by_peer {
                        Some(text) => DialError::RefusedByPeer(text),
                        None => DialError::Connection(error.clone()),
                    };
                    self.resolve_key_waiters(key, Err(result));
                }
                if !self.current.contains_key(&key) {
                    self.activity.remove(&key);
                }
            }
        }
    }

    /// Close the connection to `key` on request. Returns whether there was one.
    pub fn close(&mut self, key: PeerKey) -> bool {
        let mut any = false;
        if let Some(ch) = self.challenger.remove(&key) {
            self.drop_conn(ch, key, CloseReason::Requested, DownReason::Closed);
            any = true;
        }
        if let Some(cur) = self.current.remove(&key) {
            self.drop_conn(cur, key, CloseReason::Requested, DownReason::Closed);
            any = true;
        }
        self.resolve_key_waiters(
            key,
            Err(DialError::Connection(quinn::ConnectionError::LocallyClosed)),
        );
        self.activity.remove(&key);
        any
    }

    /// The path of `conn` is gone (the relay circuit of a relayed connection closed):
    /// close it now, and report it down as lost (`DownReason::PathLost`), which a
    /// dialer redials, instead of waiting for its idle timeout.
    pub fn handle_path_lost(&mut self, conn: ConnId, end: crate::nat::CircuitEnd) {
        let Some(key) = self.conns.get(&conn).and_then(|c| c.key) else {
            return;
        };
        if self.challenger.get(&key) == Some(&conn) {
            self.challenger.remove(&key);
        }
        self.drop_conn(conn, key, CloseReason::PathLost, DownReason::PathLost(end));
    }

    /// Ban `key` until `now + duration`, closing its connections.
    pub fn ban(&mut self, key: PeerKey, duration: Duration, now: Instant) {
        self.bans.insert(key, now + duration);
        let reason = CloseReason::Refused(RefuseReason::Banned(key));
        if let Some(ch) = self.challenger.remove(&key) {
            self.drop_conn(ch, key, reason.clone(), DownReason::Banned);
        }
        if let Some(cur) = self.current.remove(&key) {
            self.drop_conn(cur, key, reason, DownReason::Banned);
        }
        self.resolve_key_waiters(key, Err(RefuseReason::Banned(key).into()));
        self.activity.remove(&key);
    }

    /// Close everything; every later dial or accept is refused.
    pub fn shutdown(&mut self) {
        self.shut_down = true;
        let keys: Vec<PeerKey> = self.current.keys().copied().collect();
        for key in keys {
            if let Some(ch) = self.challenger.remove(&key) {
                self.drop_conn(ch, key, CloseReason::Shutdown, DownReason::Shutdown);
            }
            if let Some(cur) = self.current.remove(&key) {
                self.drop_conn(cur, key, CloseReason::Shutdown, DownReason::Shutdown);
            }
        }
        let dials: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.initiator == Initiator::Local)
            .map(|(id, _)| *id)
            .collect();
        for id in dials {
            self.finish_dial(id, Err(DialError::Shutdown));
        }
        let waiting: Vec<ConnId> = self
            .key_waiters
            .drain()
            .flat_map(|(_, v)| v.into_iter().map(|(id, _)| id))
            .collect();
        for id in waiting {
            self.finish_dial(id, Err(DialError::Shutdown));
        }
        let joined: Vec<ConnId> = self.joined.drain().flat_map(|(_, v)| v).collect();
        for id in joined {
            self.events.push_back(CoreEvent::DialDone {
                dial: id,
                result: Err(DialError::Shutdown),
            });
        }
        self.conns.clear();
        self.activity.clear();
    }

    /// Forget `conn` and close it; report `PeerDown` if it was up.
    pub(super) fn drop_conn(
        &mut self,
        conn: ConnId,
        key: PeerKey,
        close: CloseReason,
        down: DownReason,
    ) {
        if self.current.get(&key) == Some(&conn) {
            self.current.remove(&key);
        }
        if let Some(c) = self.conns.remove(&conn) {
            if c.phase == Phase::Up {
                self.events.push_back(CoreEvent::PeerDown {
                    conn,
                    key,
                    reason: down,
                });
            }
            self.events.push_back(CoreEvent::Close {
                conn,
                reason: close,
            });
        }
    }
}
