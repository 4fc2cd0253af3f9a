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
//! on the address or refuses the dial, and when the node closes. Our own limits
//! (`TooManyPending`, `TooManyPeers`) are momentary: retried after 1 s, 2 s, ... 60 s.
//!
//! A peer that accepts and then drops us again and again (a flapping link, or a peer
//! that closes every connection) would make that a loop at handshake speed, since a
//! dial that succeeds resets the connection manager's backoff. So the redialer keeps
//! its own count of losses of connections that lasted less than [`STABLE`]: the first
//! is redialed at once, the next ones after 1 s, 2 s, 4 s, ... up to [`MAX_DELAY`]
//! ([`redial_delay`]).
//!
//! A session that ended with `timeout` (no hello, or a feed request, a control frame or
//! a feed stream header left unanswered for the stall timeout) is no misbehaviour, only slowness: a
//! connection we dialed is redialed after it, with the same backoff, whichever side
//! timed out. When the peer ended it we see its close code (`ApplicationClosed(9)`); when
//! our session ended it the connection manager only sees `LocallyClosed`, so the node
//! also sends the redialer every session end ([`SessionEnd`]) and the two are matched,
//! in whichever order they arrive ([`after_down`], [`after_our_end`]).
//!
//! What is not redialed, by [`after_down`]: connections the peer dialed (it knows
//! where we are and redials itself), connections we closed (`Close`, a left topic, a
//! ban, shutdown, a session we ended for any reason but `timeout`), duplicates and
//! replaced connections (a newer one is up), refusals, and sessions the peer ended
//! with another session close code (done, closed by the application, or our protocol
//! error: redialing would only repeat it). [`CancelRedial`] (sent by `disconnect`, a
//! ban and a left topic) drops a pending redial, and closes the connection again if a
//! dial of it was in flight.
//!
//! A redialed connection is for what the lost one was for: the wiring keeps the lost
//! connection's topics (and whether it was `connect`ed) until the peer is up again, and
//! the redialer tells it ([`RedialOver`]) when it decides not to redial, gives up or is
//! cancelled, so that nothing is kept for a peer no one dials.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;
use replic8::message::CloseCode;
use replic8::session::{EndReason, Side};
use replic8_connmgr::{
    ConnManager, Dial, DialError, DownReason, Initiator, PeerDown, PeerKey, PeerUp, RefuseReason,
    CLOSE_REQUESTED,
};
use tracing::{debug, info};

use crate::wiring::RedialOver;

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

/// What a `PeerDown` of a connection means for a redial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterDown {
    /// Dial it again.
    Redial,
    /// Do not.
    Never,
    /// Our own session closed it: redial if that session ended with `timeout`
    /// ([`after_our_end`]).
    AskSession,
}

/// What to do about a connection that went down for `reason`, dialed by `initiator`.
/// See the module documentation.
pub(crate) fn after_down(initiator: Initiator, reason: &DownReason) -> AfterDown {
    use quinn::ConnectionError as E;
    if initiator != Initiator::Local {
        return AfterDown::Never;
    }
    let redial = |yes: bool| {
        if yes {
            AfterDown::Redial
        } else {
            AfterDown::Never
        }
    };
    match reason {
        DownReason::Lost(e) => match e {
            E::TimedOut | E::Reset | E::TransportError(_) | E::ConnectionClosed(_) => {
                AfterDown::Redial
            }
            // The peer's connection manager closed it without a session reason (an
            // operator's cut): like a lost connection. The peer's session timed out
            // waiting for us: slowness, not a refusal. A peer that does not want us
            // refuses or bans, which is final.
            E::ApplicationClosed(close) => redial(
                close.error_code == CLOSE_REQUESTED
                    || close.error_code == quinn::VarInt::from_u32(CloseCode::TIMEOUT.0),
            ),
            // Our session closed it (a `Close` or a ban is `Closed`/`Banned`).
            E::LocallyClosed => AfterDown::AskSession,
            E::VersionMismatch | E::CidsExhausted => AfterDown::Never,
        },
        DownReason::Closed
        | DownReason::Shutdown
        | DownReason::Duplicate
        | DownReason::Replaced
        | DownReason::Banned
        | DownReason::Evicted
        | DownReason::RefusedByPeer(_) => AfterDown::Never,
    }
}

/// Whether a connection our own session closed is redialed, given how that session
/// ended: only after our `timeout` (the peer was slow), never after a misbehaviour, a
/// close or our own failure.
pub(crate) fn after_our_end(end: &EndReason) -> bool {
    end.by == Side::Local && end.code == CloseCode::TIMEOUT && !end.is_misbehaviour()
}

/// What to do after a redial's `Dial` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// The peer is up: done.
    Done,
    /// Dial again after this long.
    RetryIn(Duration),
    /// Stop: the address was dropped, the dial is refused or the node is closing.
    Stop,
}

/// What a redial does after its dial answered `result`; `limited` is how many times
/// this redial was refused by our own limits before.
pub(crate) fn next_after(result: &Result<PeerKey, DialError>, limited: u32) -> Next {
    match result {
        Ok(_) => Next::Done,
        Err(DialError::Backoff { retry_in }) => Next::RetryIn(*retry_in),
        // Our connection manager is closing: it aborts waiting dials this way.
        Err(DialError::Connection(quinn::ConnectionError::LocallyClosed)) => Next::Stop,
        // The failure was recorded in the address's backoff: the next dial answers
        // `Backoff` with the wait.
        Err(DialError::Connection(_)) | Err(DialError::Timeout) => Next::RetryIn(Duration::ZERO),
        // A momentary limit of ours: wait 1 s, 2 s, 4 s, ... up to a minute.
        Err(DialError::Refused(
            RefuseReason::TooManyPending(_) | RefuseReason::TooManyPeers(_),
        )) => Next::RetryIn(redial_delay(limited.saturating_add(2))),
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
    /// Its session ended with our `timeout` ([`after_our_end`]) before its `PeerDown`
    /// arrived (the last session end reported wins).
    timed_out: bool,
}

/// A redial under way.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The attempt's generation: a stale timer or answer finds another.
    generation: u64,
    /// `stable_id` of the connection that was lost.
    connection: usize,
    /// A `Dial` is in flight.
    dialing: bool,
    /// How many times our own limits refused it.
    limited: u32,
}

/// The redialer. See the module documentation.
#[derive(Debug)]
pub(crate) struct Redialer {
    conn: Addr<ConnManager>,
    /// Told when a lost connection is not (or no longer) redialed.
    wiring: Recipient<RedialOver>,
    /// Peers up now.
    up: HashMap<PeerKey, UpEntry>,
    /// Losses in a row of short-lived connections, per peer we redial.
    short_losses: HashMap<PeerKey, u32>,
    /// Peers being redialed.
    pending: HashMap<PeerKey, Pending>,
    /// Connections we dialed that our own session closed, until that session's end
    /// arrives (or the peer is up again, or the redial is cancelled).
    closed_here: HashMap<PeerKey, UpEntry>,
    /// Generations cancelled while their dial was in flight: a connection it brings up
    /// is closed.
    cancelled: HashSet<u64>,
    generation: u64,
    /// Redials started so far.
    started: u64,
    closing: bool,
}

impl Redialer {
    pub(crate) fn new(conn: Addr<ConnManager>, wiring: Recipient<RedialOver>) -> Self {
        Redialer {
            conn,
            wiring,
            up: HashMap::new(),
            short_losses: HashMap::new(),
            pending: HashMap::new(),
            closed_here: HashMap::new(),
            cancelled: HashSet::new(),
            generation: 0,
            started: 0,
            closing: false,
        }
    }

    /// Tell the wiring that the lost `connection` to `key` is not redialed.
    fn over(&self, key: PeerKey, connection: usize) {
        self.wiring.do_send(RedialOver { key, connection });
    }

    /// Stop redialing `key`.
    fn stop(&mut self, key: &PeerKey) {
        if let Some(p) = self.pending.remove(key) {
            self.over(*key, p.connection);
        }
    }

    /// Whether `generation` is still the redial of `key` (and the node is not closing).
    fn current(&self, key: &PeerKey, generation: u64) -> bool {
        !self.closing && self.pending.get(key).map(|p| p.generation) == Some(generation)
    }

    /// Start redialing `key`, whose connection `up` went down (`why`, for the log).
    fn schedule(&mut self, key: PeerKey, up: UpEntry, why: &str, ctx: &mut Context<Self>) {
        let losses = if up.since.elapsed() < STABLE {
            self.short_losses.get(&key).copied().unwrap_or(0) + 1
        } else {
            1
        };
        self.short_losses.insert(key, losses);
        let wait = redial_delay(losses);
        let addr = up.addr;
        info!(peer = %key.fmt_short(), %addr, reason = why, ?wait, "connection lost: redialing");
        self.generation += 1;
        self.started += 1;
        let generation = self.generation;
        self.pending.insert(
            key,
            Pending {
                generation,
                connection: up.connection,
                dialing: false,
                limited: 0,
            },
        );
        self.dial_later(key, addr, generation, wait, ctx);
    }

    fn dial_later(
        &mut self,
        key: PeerKey,
        addr: SocketAddr,
        generation: u64,
        wait: Duration,
        ctx: &mut Context<Self>,
    ) {
        ctx.run_later(wait, move |this, ctx| {
            if this.current(&key, generation) {
                this.dial(key, addr, generation, ctx);
            }
        });
    }

    fn dial(&mut self, key: PeerKey, addr: SocketAddr, generation: u64, ctx: &mut Context<Self>) {
        if let Some(p) = self.pending.get_mut(&key) {
            p.dialing = true;
        }
        let dial = self.conn.send(Dial {
            addr,
            expected_key: Some(key),
        });
        ctx.spawn(dial.into_actor(self).map(move |result, this, ctx| {
            if this.cancelled.remove(&generation) {
                // Cancelled (`disconnect`, a ban, a left topic) while the dial was in
                // flight: what it brought up goes again.
                if let Ok(Ok(key)) = result {
                    info!(peer = %key.fmt_short(), %addr, "redial cancelled: closing");
                    this.conn.do_send(replic8_connmgr::Close { key });
                }
                return;
            }
            if !this.current(&key, generation) {
                return;
            }
            let Ok(result) = result else {
                this.stop(&key);
                return;
            };
            let limited = this.pending.get(&key).map_or(0, |p| p.limited);
            match next_after(&result, limited) {
                Next::Done => {
                    info!(peer = %key.fmt_short(), %addr, "redialed");
                    this.pending.remove(&key);
                }
                Next::RetryIn(wait) => {
                    debug!(peer = %key.fmt_short(), %addr, ?wait, "redial: retrying");
                    if let Some(p) = this.pending.get_mut(&key) {
                        p.dialing = false;
                        if matches!(result, Err(DialError::Refused(_))) {
                            p.limited = p.limited.saturating_add(1);
                        }
                    }
                    this.dial_later(key, addr, generation, wait, ctx);
                }
                Next::Stop => {
                    info!(peer = %key.fmt_short(), %addr, error = ?result.err(), "redial: giving up");
                    this.stop(&key);
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
        self.closed_here.remove(&up.key);
        self.up.insert(
            up.key,
            UpEntry {
                connection: up.connection.stable_id(),
                addr: up.addr,
                initiator: up.initiator,
                since: Instant::now(),
                timed_out: false,
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
        if self.closing {
            return;
        }
        let redial = match (after_down(up.initiator, &down.reason), up.timed_out) {
            (AfterDown::Redial, _) | (AfterDown::AskSession, true) => true,
            (AfterDown::AskSession, false) => {
                // The session's end may still be on its way (an end seen already may
                // be that of a session the connection replaced): wait for it, until
                // the peer is up again or the redial is cancelled.
                self.closed_here.insert(down.key, up);
                return;
            }
            (AfterDown::Never, _) => false,
        };
        if redial {
            self.schedule(down.key, up, &down.reason.to_string(), ctx);
        } else {
            self.short_losses.remove(&down.key);
            self.over(down.key, up.connection);
        }
    }
}

/// Node → redialer: the session with `peer` ended with `reason` (every end, in the
/// order the sessions report them).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct SessionEnd {
    /// The peer.
    pub(crate) peer: PeerKey,
    /// Why the session ended.
    pub(crate) reason: EndReason,
}

impl Handler<SessionEnd> for Redialer {
    type Result = ();

    fn handle(&mut self, msg: SessionEnd, ctx: &mut Context<Self>) {
        let redial = after_our_end(&msg.reason);
        if let Some(up) = self.closed_here.remove(&msg.peer) {
            // Its connection went down first.
            if redial && !self.closing {
                self.schedule(msg.peer, up, &msg.reason.to_string(), ctx);
            } else {
                self.short_losses.remove(&msg.peer);
                self.over(msg.peer, up.connection);
            }
        } else if let Some(up) = self.up.get_mut(&msg.peer) {
            up.timed_out = redial;
        }
    }
}

/// Node → redialer: do not redial `key` (it was disconnected, banned, or its topic
/// left). A dial of it in flight is closed once it is up.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct CancelRedial {
    /// The peer.
    pub(crate) key: PeerKey,
}

impl Handler<CancelRedial> for Redialer {
    type Result = ();

    fn handle(&mut self, msg: CancelRedial, _: &mut Context<Self>) {
        if let Some(up) = self.closed_here.remove(&msg.key) {
            self.over(msg.key, up.connection);
        }
        self.short_losses.remove(&msg.key);
        if let Some(up) = self.up.get_mut(&msg.key) {
            // Its session may end with `timeout` before the close lands.
            up.timed_out = false;
        }
        if let Some(p) = self.pending.remove(&msg.key) {
            info!(peer = %msg.key.fmt_short(), "redial cancelled");
            self.over(msg.key, p.connection);
            if p.dialing {
                self.cancelled.insert(p.generation);
            }
        }
    }
}

/// Node → redialer: the peers being redialed now (waiting to dial, dialing, or waiting
/// out a backoff), for [`NodeHandle::redialing`](crate::NodeHandle::redialing).
#[derive(Debug, Message)]
#[rtype(result = "Vec<PeerKey>")]
pub(crate) struct Redialing;

impl Handler<Redialing> for Redialer {
    type Result = Vec<PeerKey>;

    fn handle(&mut self, _: Redialing, _: &mut Context<Self>) -> Vec<PeerKey> {
        self.pending.keys().copied().collect()
    }
}

/// Test → redialer: how many redials were started so far.
#[cfg(test)]
#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub(crate) struct RedialsStarted;

#[cfg(test)]
impl Handler<RedialsStarted> for Redialer {
    type Result = u64;

    fn handle(&mut self, _: RedialsStarted, _: &mut Context<Self>) -> u64 {
        self.started
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
        self.closed_here.clear();
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
    fn only_connections_we_dialed_and_lost_by_the_network_a_bare_close_or_a_timeout_are_redialed() {
        let lost = DownReason::Lost(quinn::ConnectionError::TimedOut);
        assert_eq!(after_down(Initiator::Local, &lost), AfterDown::Redial);
        assert_eq!(after_down(Initiator::Remote, &lost), AfterDown::Never);
        assert_eq!(
            after_down(
                Initiator::Local,
                &DownReason::Lost(quinn::ConnectionError::Reset)
            ),
            AfterDown::Redial
        );
        assert_eq!(
            after_down(Initiator::Local, &app_close(CLOSE_REQUESTED)),
            AfterDown::Redial
        );
        // The peer's session timed out waiting for us.
        assert_eq!(
            after_down(Initiator::Local, &app_close(quinn::VarInt::from_u32(9))),
            AfterDown::Redial
        );
        assert_eq!(
            after_down(Initiator::Remote, &app_close(quinn::VarInt::from_u32(9))),
            AfterDown::Never
        );
        // Our own session closed it: its end reason decides.
        let ours = DownReason::Lost(quinn::ConnectionError::LocallyClosed);
        assert_eq!(after_down(Initiator::Local, &ours), AfterDown::AskSession);
        assert_eq!(after_down(Initiator::Remote, &ours), AfterDown::Never);
        for final_reason in [
            app_close(quinn::VarInt::from_u32(0)), // session done
            app_close(quinn::VarInt::from_u32(1)), // session closed by the application
            app_close(quinn::VarInt::from_u32(3)), // our protocol error
            app_close(replic8_connmgr::CLOSE_SHUTDOWN),
            DownReason::Closed,
            DownReason::Shutdown,
            DownReason::Duplicate,
            DownReason::Replaced,
            DownReason::Banned,
            DownReason::RefusedByPeer("banned".into()),
        ] {
            assert_eq!(
                after_down(Initiator::Local, &final_reason),
                AfterDown::Never,
                "{final_reason:?} must not be redialed"
            );
        }
    }

    fn end(code: CloseCode, by: Side, peer_at_fault: bool) -> EndReason {
        EndReason {
            code,
            by,
            reason: "test".into(),
            peer_at_fault,
        }
    }

    #[test]
    fn after_our_own_close_only_a_timeout_is_redialed_never_a_misbehaviour() {
        assert!(after_our_end(&end(CloseCode::TIMEOUT, Side::Local, false)));
        // A timeout flagged as the peer's fault would be banned: never redialed.
        assert!(!after_our_end(&end(CloseCode::TIMEOUT, Side::Local, true)));
        // The peer's timeout arrives as its close code (`after_down`).
        assert!(!after_our_end(&end(
            CloseCode::TIMEOUT,
            Side::Remote,
            false
        )));
        for code in [
            CloseCode::DONE,
            CloseCode::CLOSED,
            CloseCode::PROTOCOL,
            CloseCode::FRAME_TOO_LARGE,
            CloseCode::BAD_PROOF,
        ] {
            assert!(!after_our_end(&end(code, Side::Local, false)), "{code}");
            assert!(!after_our_end(&end(code, Side::Local, true)), "{code}");
        }
    }

    #[test]
    fn a_peer_whose_connections_keep_dropping_is_redialed_ever_more_slowly() {
        let waits: Vec<u64> = (1..=10).map(|n| redial_delay(n).as_secs()).collect();
        assert_eq!(waits, [0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn a_redial_waits_out_the_backoff_and_our_limits_and_stops_when_dropped_or_closing() {
        let key = replic8_connmgr::Identity::generate().key();
        assert_eq!(next_after(&Ok(key), 0), Next::Done);
        let wait = Duration::from_millis(1200);
        assert_eq!(
            next_after(&Err(DialError::Backoff { retry_in: wait }), 0),
            Next::RetryIn(wait)
        );
        assert_eq!(
            next_after(&Err(DialError::Timeout), 0),
            Next::RetryIn(Duration::ZERO)
        );
        assert_eq!(
            next_after(
                &Err(DialError::GaveUp {
                    retry_in: Duration::from_secs(600)
                }),
                0
            ),
            Next::Stop
        );
        assert_eq!(
            next_after(&Err(DialError::RefusedByPeer("banned".into())), 0),
            Next::Stop
        );
        // A dial waiting for its handshake when our connection manager closes.
        assert_eq!(
            next_after(
                &Err(DialError::Connection(quinn::ConnectionError::LocallyClosed)),
                0
            ),
            Next::Stop
        );
        assert_eq!(
            next_after(
                &Err(DialError::Connection(quinn::ConnectionError::Reset)),
                0
            ),
            Next::RetryIn(Duration::ZERO)
        );
        // Our own limits are momentary: retried ever more slowly, never given up on.
        let limits = [
            RefuseReason::TooManyPending(8),
            RefuseReason::TooManyPeers(64),
        ];
        for reason in limits {
            let waits: Vec<Next> = (0..8)
                .map(|n| next_after(&Err(DialError::Refused(reason.clone())), n))
                .collect();
            let secs = |s| Next::RetryIn(Duration::from_secs(s));
            assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60].map(secs), "{reason:?}");
        }
        assert_eq!(
            next_after(&Err(DialError::Refused(RefuseReason::Banned(key))), 0),
            Next::Stop
        );
    }

    async fn loopback_node() -> crate::NodeHandle {
        crate::Node::builder()
            .in_memory()
            .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .dht(false)
            .lan(false)
            .spawn()
            .await
            .unwrap()
    }

    /// Waits for the first event of `events` that `want` accepts (a guard of 30 s).
    async fn wait_for(
        events: &mut tokio::sync::broadcast::Receiver<crate::NodeEvent>,
        what: &str,
        want: impl Fn(&crate::NodeEvent) -> bool,
    ) {
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(event) if want(&event) => return,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => panic!("{what}: {e}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("{what}: not within 30 s"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_closed_our_connection_is_redialed_one_we_disconnected_is_not() {
        let (a, b) = (loopback_node().await, loopback_node().await);
        let mut events = a.subscribe();
        let bk = b.key();
        let up = |e: &crate::NodeEvent| matches!(e, crate::NodeEvent::PeerUp { key, initiator: Initiator::Local, .. } if *key == bk);
        let down = |e: &crate::NodeEvent| matches!(e, crate::NodeEvent::PeerDown { key, .. } if *key == bk);
        let redials = || a.s().redialer.send(RedialsStarted);
        let mut b_events = b.subscribe();
        let ak = a.key();
        a.connect(b.local_addr(), Some(bk)).await.unwrap();
        wait_for(&mut events, "a: b up", up).await;
        // b settles the connection on its own time: close it once b has it.
        wait_for(
            &mut b_events,
            "b: a up",
            |e| matches!(e, crate::NodeEvent::PeerUp { key, .. } if *key == ak),
        )
        .await;

        // The peer's bare close (`CLOSE_REQUESTED`): a cut, redialed by a.
        b.disconnect(ak).await.unwrap();
        wait_for(&mut events, "a: b down after b's close", down).await;
        wait_for(&mut events, "a: b redialed", up).await;
        assert_eq!(redials().await.unwrap(), 1);

        // Our own `disconnect`: not redialed. The connection manager hands a `PeerDown`
        // to the wiring (whose event we saw) and the redialer in one go, so the
        // redialer has decided by the time it answers.
        a.disconnect(bk).await.unwrap();
        wait_for(&mut events, "a: b down after our disconnect", down).await;
        assert_eq!(
            redials().await.unwrap(),
            1,
            "a disconnected peer was redialed"
        );
        assert!(a.peers().await.unwrap().is_empty());
        a.close().await;
        b.close().await;
    }

    /// Hands a bare connection manager's `PeerUp`s to the test.
    struct UpSink(tokio::sync::mpsc::UnboundedSender<PeerUp>);

    impl Actor for UpSink {
        type Context = Context<Self>;
    }

    impl Handler<PeerUp> for UpSink {
        type Result = ();

        fn handle(&mut self, up: PeerUp, _: &mut Context<Self>) {
            let _ = self.0.send(up);
        }
    }

    impl Handler<PeerDown> for UpSink {
        type Result = ();

        fn handle(&mut self, _: PeerDown, _: &mut Context<Self>) {}
    }

    #[test]
    fn a_peer_our_session_timed_out_is_redialed_without_a_ban() {
        actix::System::new().block_on(async {
            // A slow peer: a bare connection manager speaking our ALPN that answers
            // each control stream with a frame that never completes.
            let slow = replic8_connmgr::ConnManager::spawn(
                replic8_connmgr::ConnManagerConfig::new(replic8_connmgr::Identity::generate())
                    .with_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .with_alpn(vec![replic8::message::ALPN.to_vec()]),
            )
            .unwrap();
            let (tx, mut ups) = tokio::sync::mpsc::unbounded_channel();
            let sink = UpSink(tx).start();
            slow.addr()
                .send(replic8_connmgr::Subscribe {
                    peer_up: sink.clone().recipient(),
                    peer_down: sink.recipient(),
                })
                .await
                .unwrap();
            let a = crate::Node::builder()
                .in_memory()
                .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
                .dht(false)
                .lan(false)
                .limits(crate::config::LimitsSection {
                    stall_timeout_secs: 1,
                    ..Default::default()
                })
                .spawn()
                .await
                .unwrap();
            let mut events = a.subscribe();
            let key = slow.key();
            a.connect(slow.local_addr(), Some(key)).await.unwrap();
            let mut next_up = async || {
                tokio::time::timeout(Duration::from_secs(30), ups.recv())
                    .await
                    .expect("no connection from a within 30 s")
                    .unwrap()
            };
            let up = next_up().await;
            assert_eq!(up.initiator, Initiator::Remote);
            actix::spawn(async move {
                let (mut send, _recv) = up.connection.accept_bi().await.unwrap();
                let mut partial = 1000u32.to_be_bytes().to_vec();
                partial.extend([0u8; 10]);
                send.write_all(&partial).await.unwrap();
                // Keep both halves open until the peer closes.
                let _ = up.connection.closed().await;
            });
            wait_for(&mut events, "a: the slow peer's session timed out", |e| {
                matches!(e, crate::NodeEvent::SessionEnded { peer, reason }
                    if *peer == key && reason.contains("timeout"))
            })
            .await;
            // a dials again (a ban would have cancelled that).
            let again = next_up().await;
            assert_eq!(again.key, a.key());
            assert_eq!(a.s().redialer.send(RedialsStarted).await.unwrap(), 1);
            assert_eq!(a.counters().bans.get(), 0, "a slow peer is not banned");
            a.close().await;
            slow.close().await;
        });
    }
}
