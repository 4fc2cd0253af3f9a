//! Redialing peers whose connection we made and lost.
//!
//! Discovery reports a topic's peers again in every lookup round, but after the first
//! fast rounds those are minutes apart, and peers dialed with `connect` are never
//! reported again. So a connection that *we* dialed and that was cut (idle timeout,
//! reset, a transport error, or a bare close by the peer's connection manager) is dialed
//! again at once, with the peer's key pinned, by the [`Redialer`] actor.
//!
//! The backoff is the connection manager's own (per address, 1 s, 5 s, 15 s with
//! jitter, then the address is dropped for 10 min): a failed redial makes the next
//! `Dial` answer `Backoff { retry_in }`, and the redialer asks again after that long. It
//! stops when the peer is up again (by any path), when the connection manager gives up
//! on the address or refuses the dial, and when the node closes.
//!
//! A peer that accepts and then drops us again and again (a flapping link, or a peer
//! that closes every connection) would make that a loop at handshake speed, since a
//! dial that succeeds resets the connection manager's backoff. So the redialer keeps
//! its own count of losses of connections that lasted less than [`STABLE`]: the first
//! is redialed at once, the next ones after 1 s, 2 s, 4 s, ... up to [`MAX_DELAY`]
//! ([`redial_delay`]).
//!
//! What is not redialed, by [`redial_after`]: connections the peer dialed (it knows
//! where we are and redials itself), connections we closed (`Close`, a left topic, a
//! ban, shutdown), duplicates and replaced connections (a newer one is up), refusals,
//! and sessions the peer ended with a session close code (done, closed by the
//! application, or our protocol error: redialing would only repeat it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;
use replic8_connmgr::{
    ConnManager, Dial, DialError, DownReason, Initiator, PeerDown, PeerKey, PeerUp, CLOSE_REQUESTED,
};
use tracing::{debug, info};

/// A connection that lasted this long was not flapping: its loss is redialed at once.
pub(crate) const STABLE: Duration = Duration::from_secs(30);

/// The longest wait before redialing a peer whose connections keep dropping: about
/// what discovery's later lookup rounds would give anyway.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(60);

/// How long to wait before redialing after `short_losses` losses in a row of
/// connections that lasted less than [`STABLE`] (this one included).
pub(crate) fn redial_delay(short_losses: u32) -> Duration {
    match short_losses {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 2).min(6)).min(MAX_DELAY),
    }
}

/// Whether a connection that went down for `reason`, dialed by `initiator`, is dialed
/// again. See the module documentation.
pub(crate) fn redial_after(initiator: Initiator, reason: &DownReason) -> bool {
    use quinn::ConnectionError as E;
    if initiator != Initiator::Local {
        return false;
    }
    match reason {
        DownReason::Lost(e) => match e {
            E::TimedOut | E::Reset | E::TransportError(_) | E::ConnectionClosed(_) => true,
            // The peer's connection manager closed it without a session reason (an
            // operator's cut): like a lost connection. A peer that does not want us
            // refuses or bans, which is final.
            E::ApplicationClosed(close) => close.error_code == CLOSE_REQUESTED,
            E::VersionMismatch | E::LocallyClosed | E::CidsExhausted => false,
        },
        DownReason::Closed
        | DownReason::Shutdown
        | DownReason::Duplicate
        | DownReason::Replaced
        | DownReason::Banned
        | DownReason::RefusedByPeer(_) => false,
    }
}

/// What to do after a redial's `Dial` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// The peer is up: done.
    Done,
    /// Dial again after this long.
    RetryIn(Duration),
    /// Stop: the address was dropped or the dial is refused.
    Stop,
}

/// What a redial does after its dial answered `result`.
pub(crate) fn next_after(result: &Result<PeerKey, DialError>) -> Next {
    match result {
        Ok(_) => Next::Done,
        Err(DialError::Backoff { retry_in }) => Next::RetryIn(*retry_in),
        // The failure was recorded in the address's backoff: the next dial answers
        // `Backoff` with the wait.
        Err(DialError::Connection(_)) | Err(DialError::Timeout) => Next::RetryIn(Duration::ZERO),
        Err(DialError::GaveUp { .. })
        | Err(DialError::Refused(_))
        | Err(DialError::RefusedByPeer(_))
        | Err(DialError::KeyMismatch(_))
        | Err(DialError::Connect(_))
        | Err(DialError::Shutdown)
        | Err(DialError::Tls(_)) => Next::Stop,
    }
}

/// A connection that is up, as the redialer remembers it.
#[derive(Debug, Clone, Copy)]
struct UpEntry {
    /// `stable_id` of the connection.
    connection: usize,
    /// The peer's address.
    addr: SocketAddr,
    /// Who dialed.
    initiator: Initiator,
    /// When it came up.
    since: Instant,
}

/// The redialer. See the module documentation.
#[derive(Debug)]
pub(crate) struct Redialer {
    conn: Addr<ConnManager>,
    /// Peers up now.
    up: HashMap<PeerKey, UpEntry>,
    /// Losses in a row of short-lived connections, per peer we redial.
    short_losses: HashMap<PeerKey, u32>,
    /// Peers being redialed, with the attempt's generation (a stale timer finds another).
    pending: HashMap<PeerKey, u64>,
    generation: u64,
    closing: bool,
}

impl Redialer {
    pub(crate) fn new(conn: Addr<ConnManager>) -> Self {
        Redialer {
            conn,
            up: HashMap::new(),
            short_losses: HashMap::new(),
            pending: HashMap::new(),
            generation: 0,
            closing: false,
        }
    }

    fn dial(&mut self, key: PeerKey, addr: SocketAddr, generation: u64, ctx: &mut Context<Self>) {
        let dial = self.conn.send(Dial {
            addr,
            expected_key: Some(key),
        });
        ctx.spawn(dial.into_actor(self).map(move |result, this, ctx| {
            if this.closing || this.pending.get(&key) != Some(&generation) {
                return;
            }
            let Ok(result) = result else {
                this.pending.remove(&key);
                return;
            };
            match next_after(&result) {
                Next::Done => {
                    info!(peer = %key.fmt_short(), %addr, "redialed");
                    this.pending.remove(&key);
                }
                Next::RetryIn(wait) => {
                    debug!(peer = %key.fmt_short(), %addr, ?wait, "redial: retrying");
                    ctx.run_later(wait, move |this, ctx| {
                        if !this.closing && this.pending.get(&key) == Some(&generation) {
                            this.dial(key, addr, generation, ctx);
                        }
                    });
                }
                Next::Stop => {
                    info!(peer = %key.fmt_short(), %addr, error = ?result.err(), "redial: giving up");
                    this.pending.remove(&key);
                }
            }
        }));
    }
}

impl Actor for Redialer {
    type Context = Context<Self>;
}

impl Handler<PeerUp> for Redialer {
    type Result = ();

    fn handle(&mut self, up: PeerUp, _: &mut Context<Self>) {
        self.pending.remove(&up.key);
        self.up.insert(
            up.key,
            UpEntry {
                connection: up.connection.stable_id(),
                addr: up.addr,
                initiator: up.initiator,
                since: Instant::now(),
            },
        );
    }
}

impl Handler<PeerDown> for Redialer {
    type Result = ();

    fn handle(&mut self, down: PeerDown, ctx: &mut Context<Self>) {
        // A connection that a newer one replaced: the peer is still up.
        let Some(&up) = self.up.get(&down.key) else {
            return;
        };
        if up.connection != down.connection_id {
            return;
        }
        self.up.remove(&down.key);
        if self.closing || !redial_after(up.initiator, &down.reason) {
            self.short_losses.remove(&down.key);
            return;
        }
        let losses = if up.since.elapsed() < STABLE {
            self.short_losses.get(&down.key).copied().unwrap_or(0) + 1
        } else {
            1
        };
        self.short_losses.insert(down.key, losses);
        let wait = redial_delay(losses);
        let (key, addr) = (down.key, up.addr);
        info!(peer = %key.fmt_short(), %addr, reason = %down.reason, ?wait, "connection lost: redialing");
        self.generation += 1;
        let generation = self.generation;
        self.pending.insert(key, generation);
        ctx.run_later(wait, move |this, ctx| {
            if !this.closing && this.pending.get(&key) == Some(&generation) {
                this.dial(key, addr, generation, ctx);
            }
        });
    }
}

/// Node → redialer: the node is closing; start no more dials.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct StopRedials;

impl Handler<StopRedials> for Redialer {
    type Result = ();

    fn handle(&mut self, _: StopRedials, _: &mut Context<Self>) {
        self.closing = true;
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_close(code: quinn::VarInt) -> DownReason {
        DownReason::Lost(quinn::ConnectionError::ApplicationClosed(
            quinn::ApplicationClose {
                error_code: code,
                reason: Default::default(),
            },
        ))
    }

    #[test]
    fn only_connections_we_dialed_and_lost_by_the_network_or_a_bare_close_are_redialed() {
        let lost = DownReason::Lost(quinn::ConnectionError::TimedOut);
        assert!(redial_after(Initiator::Local, &lost));
        assert!(!redial_after(Initiator::Remote, &lost));
        assert!(redial_after(
            Initiator::Local,
            &DownReason::Lost(quinn::ConnectionError::Reset)
        ));
        assert!(redial_after(Initiator::Local, &app_close(CLOSE_REQUESTED)));
        for final_reason in [
            app_close(quinn::VarInt::from_u32(0)), // session done
            app_close(quinn::VarInt::from_u32(1)), // session closed by the application
            app_close(quinn::VarInt::from_u32(3)), // our protocol error
            app_close(replic8_connmgr::CLOSE_SHUTDOWN),
            DownReason::Lost(quinn::ConnectionError::LocallyClosed),
            DownReason::Closed,
            DownReason::Shutdown,
            DownReason::Duplicate,
            DownReason::Replaced,
            DownReason::Banned,
            DownReason::RefusedByPeer("banned".into()),
        ] {
            assert!(
                !redial_after(Initiator::Local, &final_reason),
                "{final_reason:?} must not be redialed"
            );
        }
    }

    #[test]
    fn a_peer_whose_connections_keep_dropping_is_redialed_ever_more_slowly() {
        let waits: Vec<u64> = (1..=10).map(|n| redial_delay(n).as_secs()).collect();
        assert_eq!(waits, [0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn a_redial_waits_out_the_backoff_and_stops_when_the_address_is_dropped() {
        let key = replic8_connmgr::Identity::generate().key();
        assert_eq!(next_after(&Ok(key)), Next::Done);
        let wait = Duration::from_millis(1200);
        assert_eq!(
            next_after(&Err(DialError::Backoff { retry_in: wait })),
            Next::RetryIn(wait)
        );
        assert_eq!(
            next_after(&Err(DialError::Timeout)),
            Next::RetryIn(Duration::ZERO)
        );
        assert_eq!(
            next_after(&Err(DialError::GaveUp {
                retry_in: Duration::from_secs(600)
            })),
            Next::Stop
        );
        assert_eq!(
            next_after(&Err(DialError::RefusedByPeer("banned".into()))),
            Next::Stop
        );
    }
}
