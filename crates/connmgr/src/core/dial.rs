//! Our dials: joining one in flight, waiting for a key, the per-address backoff.

use std::net::SocketAddr;
use std::time::Instant;

use rand::Rng;

use super::state::{is_relayed, AddrBackoff, Conn, Initiator, Phase};
use super::{ConnCore, ConnId, CoreEvent, DialStart};
use crate::error::{DialError, RefuseReason};
use crate::key::PeerKey;

impl ConnCore {
    fn handshaking_dials(&self) -> usize {
        self.conns
            .values()
            .filter(|c| {
                c.initiator == Initiator::Local && matches!(c.phase, Phase::Handshaking { .. })
            })
            .count()
    }

    /// A request to dial `addr`, pinned to `expected` if given.
    pub fn handle_dial(
        &mut self,
        addr: SocketAddr,
        expected: Option<PeerKey>,
        now: Instant,
    ) -> Result<DialStart, DialError> {
        if self.shut_down {
            return Err(DialError::Shutdown);
        }
        if let Some(key) = expected {
            if key == self.me {
                return Err(RefuseReason::SelfConnection.into());
            }
            if self.is_banned(&key, now) {
                return Err(RefuseReason::Banned(key).into());
            }
            // A direct dial to a peer we reach only through a relay goes ahead: the
            // direct connection replaces the relayed one (`handle_established`).
            let upgrade = !is_relayed(&addr) && self.relayed_only(&key);
            if self.up(&key).is_some() && !upgrade {
                return Ok(DialStart::Connected(key));
            }
            let dialing = self.conns.values().any(|c| {
                c.phase
                    == Phase::Handshaking {
                        expected: Some(key),
                    }
                    || (c.key == Some(key) && c.phase != Phase::Up)
            });
            if dialing || (self.current.contains_key(&key) && !upgrade) {
                let id = self.new_id();
                self.wait_for_key(key, id, now);
                return Ok(DialStart::Wait(id));
            }
        }
        // A peer already connected (or settling) at this address: no second connection.
        // Every node dials and listens on one socket, so a peer's address is the same
        // whichever side dialed; discovery hands out addresses without keys, and a
        // redial must not replace a working connection.
        let at_addr = self.current.iter().find_map(|(key, id)| {
            let c = self.conns.get(id)?;
            (c.addr == addr && expected.is_none_or(|e| e == *key)).then_some((*key, c.phase))
        });
        match at_addr {
            Some((key, Phase::Up)) => return Ok(DialStart::Connected(key)),
            Some((key, _)) => {
                let id = self.new_id();
                self.wait_for_key(key, id, now);
                return Ok(DialStart::Wait(id));
            }
            None => {}
        }
        self.prune(now);
        // Join a dial already in flight to the same address with the same pin (or none):
        // its answer is then exactly the answer this dial would get.
        let same_addr = self.conns.iter().find_map(|(id, c)| {
            (c.addr == addr
                && c.initiator == Initiator::Local
                && c.phase == Phase::Handshaking { expected })
            .then_some(*id)
        });
        if let Some(in_flight) = same_addr {
            let id = self.new_id();
            self.joined.entry(in_flight).or_default().push(id);
            return Ok(DialStart::Wait(id));
        }
        self.check_backoff(addr, now)?;
        if self.handshaking_dials() >= self.config.max_pending_dials {
            return Err(RefuseReason::TooManyPending(self.config.max_pending_dials).into());
        }
        // Every dial of ours is wanted: an idle inbound peer makes room for it when its
        // handshake is done (`handle_established`).
        if self.current.len() + self.handshaking_dials()
            >= self.config.max_peers + self.evictable(now).len()
        {
            return Err(RefuseReason::TooManyPeers(self.config.max_peers).into());
        }
        let id = self.new_id();
        self.conns.insert(
            id,
            Conn {
                addr,
                initiator: Initiator::Local,
                key: None,
                phase: Phase::Handshaking { expected },
                validated: true,
                since: None,
            },
        );
        Ok(DialStart::Dial(id))
    }

    /// The handshake of `conn` failed (or timed out) with `error`.
    pub fn handle_handshake_failed(&mut self, conn: ConnId, error: DialError, now: Instant) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if c.initiator == Initiator::Local {
            // A peer that refused us by policy is not an unreachable address, but it does
            // not want us now either: back off all the same.
            self.backoff_failure(c.addr, now);
            self.finish_dial(conn, Err(error.clone()));
            if let Phase::Handshaking {
                expected: Some(key),
            } = c.phase
            {
                if !self.key_in_flight(&key) {
                    self.resolve_key_waiters(key, Err(error));
                }
            }
            self.commit_held();
        }
    }

    /// The accepted handshake `conn` is not a peer connection (a dial-back, which the
    /// driver closes): forget it, freeing its pending slot.
    pub fn handle_not_a_peer(&mut self, conn: ConnId) {
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| c.initiator == Initiator::Remote)
        {
            self.conns.remove(&conn);
        }
    }

    /// The handshake of dial `conn` ended because the peer closed it as a duplicate: the
    /// peer has another connection to us (it dialed us at the same time). Not a failure:
    /// the dial waits for `key` (pinned, or seen in the handshake) to come up.
    pub fn handle_handshake_duplicate(
        &mut self,
        conn: ConnId,
        key: Option<PeerKey>,
        error: quinn::ConnectionError,
        now: Instant,
    ) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if c.initiator != Initiator::Local {
            return;
        }
        let expected = match c.phase {
            Phase::Handshaking { expected } => expected,
            _ => None,
        };
        match key.or(expected) {
            Some(key) => {
                self.wait_for_key(key, conn, now);
                if self.up(&key).is_some() {
                    self.resolve_key_waiters(key, Ok(key));
                }
            }
            None => self.finish_dial(conn, Err(DialError::Connection(error))),
        }
    }

    pub(super) fn wait_for_key(&mut self, key: PeerKey, dial: ConnId, now: Instant) {
        self.key_waiters
            .entry(key)
            .or_default()
            .push((dial, now + self.config.dial_wait));
    }

    fn key_in_flight(&self, key: &PeerKey) -> bool {
        self.current.contains_key(key)
            || self.conns.values().any(|c| {
                c.phase
                    == Phase::Handshaking {
                        expected: Some(*key),
                    }
            })
    }

    pub(super) fn resolve_key_waiters(&mut self, key: PeerKey, result: Result<PeerKey, DialError>) {
        for (id, _) in self.key_waiters.remove(&key).unwrap_or_default() {
            self.finish_dial(id, result.clone());
        }
    }

    pub(super) fn finish_dial(&mut self, dial: ConnId, result: Result<PeerKey, DialError>) {
        for id in self.joined.remove(&dial).unwrap_or_default() {
            self.events.push_back(CoreEvent::DialDone {
                dial: id,
                result: result.clone(),
            });
        }
        self.events.push_back(CoreEvent::DialDone { dial, result });
    }

    fn check_backoff(&mut self, addr: SocketAddr, now: Instant) -> Result<(), DialError> {
        let Some(b) = self.backoff.get(&addr).copied() else {
            return Ok(());
        };
        if b.retry_at > now {
            let retry_in = b.retry_at - now;
            return Err(if b.dropped {
                DialError::GaveUp { retry_in }
            } else {
                DialError::Backoff { retry_in }
            });
        }
        if b.dropped {
            self.backoff.remove(&addr);
        }
        Ok(())
    }

    pub(super) fn backoff_failure(&mut self, addr: SocketAddr, now: Instant) {
        let entry = self.backoff.entry(addr).or_insert(AddrBackoff {
            failures: 0,
            retry_at: now,
            dropped: false,
        });
        if entry.dropped {
            *entry = AddrBackoff {
                failures: 0,
                retry_at: now,
                dropped: false,
            };
        }
        entry.failures += 1;
        match self.config.backoff.get(entry.failures - 1) {
            Some(delay) => {
                let j = self.config.jitter.clamp(0.0, 0.99);
                let factor = if j > 0.0 {
                    self.rng.gen_range(1.0 - j..1.0 + j)
                } else {
                    1.0
                };
                entry.retry_at = now + delay.mul_f64(factor);
            }
            None => {
                entry.dropped = true;
                entry.retry_at = now + self.config.drop_for;
            }
        }
    }
}
