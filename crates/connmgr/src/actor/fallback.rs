//! Dials that also try our relays (decision 151): when a dial's direct handshake has not
//! answered after `NatConfig::relayed_dial_after` (or failed sooner), we ask the relays
//! we are connected to who of their registered peers is at the address (`nat::advert`)
//! and dial each answer through its relay, its key pinned. The first connection up
//! answers the dial; the dedup rule keeps one connection per key, and a punch may then
//! replace a relayed one with a direct one.
//!
//! A dial of a relayed connection's virtual address whose circuit is gone (a redial after
//! its relay left) goes through the relays we still have, by the pinned key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::debug;

use super::ConnManager;
use crate::core::is_relayed;
use crate::error::DialError;
use crate::key::PeerKey;
use crate::messages::DialRelayed;
use crate::nat::{CircuitEnd, NatEvent};
use crate::socket::VirtualPaths;

/// A dial's answer, as the `Dial` handler returns it.
type Answer = Result<PeerKey, DialError>;

/// The `Locate` queries of ours waiting for an answer, by query id.
pub(super) type Locates = HashMap<u32, oneshot::Sender<Vec<PeerKey>>>;

/// Addresses whose dial a relay answered, and the key reached: a later dial of the
/// address (a lookup's repeat) is answered at once while that key is up, without
/// asking the relays again.
pub(super) type RelayedAt = HashMap<SocketAddr, PeerKey>;

/// Most entries of `RelayedAt`; past it, entries of keys not up are dropped first.
const MAX_RELAYED_AT: usize = 256;

/// Reach the peer at `addr` (pinned to `expected`) through our relays.
#[derive(Message)]
#[rtype(result = "Result<PeerKey, DialError>")]
struct ThroughRelays {
    addr: SocketAddr,
    expected: Option<PeerKey>,
}

/// A dial of `addr` was answered through a relay with `key`.
#[derive(Message)]
#[rtype(result = "()")]
struct ReachedThroughRelay {
    addr: SocketAddr,
    key: PeerKey,
}

/// A dial through a relay that a fallback made ended.
#[derive(Message)]
#[rtype(result = "()")]
struct RelayedDialEnded {
    peer: PeerKey,
    relay: PeerKey,
    ok: bool,
}

impl ConnManager {
    /// How long a dial of `addr` (pinned to `expected`) waits for its direct handshake
    /// before it also tries our relays; `None`: it does not (relayed dials off, a
    /// virtual address, or a pinned key that is up already: a punch's direct dial).
    pub(super) fn relayed_dial_after(
        &self,
        addr: SocketAddr,
        expected: Option<PeerKey>,
    ) -> Option<Duration> {
        let after = self.nat.config().relayed_dial_after?;
        let up = expected.is_some_and(|k| self.core.up(&k).is_some());
        (!self.nat_stopped && !is_relayed(&addr) && !up).then_some(after)
    }

    /// The key a relay reached at `addr` earlier, if it is still up (for a dial with no
    /// pinned key; a pinned one, a punch's, must dial).
    pub(super) fn relayed_at(
        &mut self,
        addr: SocketAddr,
        expected: Option<PeerKey>,
    ) -> Option<PeerKey> {
        let key = *self.relayed_at.get(&addr).filter(|_| expected.is_none())?;
        if self.core.up(&key).is_some() {
            return Some(key);
        }
        self.relayed_at.remove(&addr);
        None
    }

    /// Whether `addr` is a virtual address whose circuit is gone (or never was ours).
    pub(super) fn is_stale_circuit(&self, addr: SocketAddr) -> bool {
        is_relayed(&addr)
            && VirtualPaths::circuit(&addr)
                .is_none_or(|local| self.nat.circuit_leg(local).is_none())
    }
}

/// The answer of a dial whose direct attempt is `direct`: the direct answer if it comes
/// within `after`, else the first success of it and of a dial through our relays (the
/// direct error if neither succeeds).
pub(super) async fn race(
    direct: impl std::future::Future<Output = Answer>,
    after: Duration,
    me: Addr<ConnManager>,
    addr: SocketAddr,
    expected: Option<PeerKey>,
) -> Answer {
    tokio::pin!(direct);
    let early = tokio::select! {
        answer = &mut direct => Some(answer),
        () = tokio::time::sleep(after) => None,
    };
    match early {
        Some(Ok(key)) => Ok(key),
        Some(Err(e)) if !worth_a_relay(&e) => Err(e),
        Some(Err(e)) => through_relays(me, addr, expected).await.or(Err(e)),
        None => {
            let relayed = through_relays(me, addr, expected);
            tokio::pin!(relayed);
            tokio::select! {
                answer = &mut direct => match answer {
                    Ok(key) => Ok(key),
                    Err(e) => relayed.await.or(Err(e)),
                },
                answer = &mut relayed => match answer {
                    Ok(key) => Ok(key),
                    Err(_) => direct.await,
                },
            }
        }
    }
}

/// Reach the peer at `addr` (pinned to `expected`) through our relays only.
pub(super) async fn through_relays(
    me: Addr<ConnManager>,
    addr: SocketAddr,
    expected: Option<PeerKey>,
) -> Answer {
    me.send(ThroughRelays { addr, expected })
        .await
        .unwrap_or(Err(DialError::Shutdown))
}

/// Whether a direct dial that failed with `e` may still succeed through a relay: it
/// did not answer (or its address is backed off after not answering), as opposed to a
/// refusal, a wrong key or our own limits.
fn worth_a_relay(e: &DialError) -> bool {
    match e {
        DialError::Timeout | DialError::Backoff { .. } | DialError::GaveUp { .. } => true,
        DialError::Connection(c) => *c != quinn::ConnectionError::LocallyClosed,
        _ => false,
    }
}

impl Handler<ThroughRelays> for ConnManager {
    type Result = ResponseFuture<Answer>;

    fn handle(&mut self, msg: ThroughRelays, ctx: &mut Self::Context) -> Self::Result {
        let me = ctx.address();
        let relays = self.nat.relays();
        if self.nat_stopped || relays.is_empty() {
            return Box::pin(async { Err(DialError::Circuit(CircuitEnd::NotConnected)) });
        }
        if is_relayed(&msg.addr) {
            // A redial of a relayed connection: its key is all we know.
            let Some(key) = msg.expected else {
                return Box::pin(async { Err(DialError::Circuit(CircuitEnd::Closed)) });
            };
            let candidates = relays.into_iter().map(|r| (r, key)).collect();
            return Box::pin(dial_each(me, candidates));
        }
        let asked = self.nat.locate(msg.addr, None, Instant::now());
        let answers: Vec<_> = asked
            .into_iter()
            .map(|(relay, query)| {
                let (tx, rx) = oneshot::channel();
                self.locates.insert(query, tx);
                (relay, rx)
            })
            .collect();
        self.drain_nat(ctx);
        let expected = msg.expected;
        Box::pin(async move {
            // The queries are all out: waiting for each in turn takes as long as the
            // slowest (the core answers every one, empty when overdue).
            let mut candidates = Vec::new();
            for (relay, rx) in answers {
                for key in rx.await.unwrap_or_default() {
                    if expected.is_none_or(|e| e == key) && !candidates.contains(&(relay, key)) {
                        candidates.push((relay, key));
                    }
                }
            }
            let answer = dial_each(me.clone(), candidates).await;
            if let Ok(key) = answer {
                me.do_send(ReachedThroughRelay {
                    addr: msg.addr,
                    key,
                });
            }
            answer
        })
    }
}

impl Handler<ReachedThroughRelay> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: ReachedThroughRelay, _ctx: &mut Self::Context) {
        if self.relayed_at.len() >= MAX_RELAYED_AT {
            let core = &self.core;
            self.relayed_at.retain(|_, key| core.up(key).is_some());
        }
        if self.relayed_at.len() < MAX_RELAYED_AT {
            self.relayed_at.insert(msg.addr, msg.key);
        }
    }
}

/// Dials each (relay, key) in turn through the relay until one connects: its key, or
/// the last error.
async fn dial_each(me: Addr<ConnManager>, candidates: Vec<(PeerKey, PeerKey)>) -> Answer {
    let mut last = Err(DialError::Circuit(CircuitEnd::NotConnected));
    for (relay, key) in candidates {
        let answer = me
            .send(DialRelayed { relay, key })
            .await
            .unwrap_or(Err(DialError::Shutdown));
        me.do_send(RelayedDialEnded {
            peer: key,
            relay,
            ok: answer.is_ok(),
        });
        if answer.is_ok() {
            return answer;
        }
        last = answer;
    }
    last
}

impl Handler<RelayedDialEnded> for ConnManager {
    type Result = ();

    fn handle(&mut self, msg: RelayedDialEnded, _ctx: &mut Self::Context) {
        debug!(parent: &self.span, peer = %msg.peer.fmt_short(), relay = %msg.relay.fmt_short(),
            ok = msg.ok, "dial through a relay");
        self.publish_nat(NatEvent::RelayedDial {
            peer: msg.peer,
            relay: msg.relay,
            ok: msg.ok,
        });
    }
}
