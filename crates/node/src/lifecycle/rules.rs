//! The redial rules as pure functions: what a connection's end means for a redial, and
//! what a redial does after its dial answered. [`PeerLifecycle`](super::PeerLifecycle)
//! applies them.

use std::time::Duration;

use replic8::message::CloseCode;
use replic8::session::{EndReason, Side};
use replic8_connmgr::{DialError, DownReason, Initiator, PeerKey, RefuseReason, CLOSE_REQUESTED};

/// A connection that lasted this long was not flapping: its loss is redialed at once.
pub(crate) const STABLE: Duration = Duration::from_secs(30);

/// The longest wait (before jitter) before redialing a peer whose connections keep
/// dropping: about what discovery's later lookup rounds would give anyway.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(60);

/// How long to wait before redialing after `short_losses` losses in a row of
/// connections that lasted less than [`STABLE`] (this one included): 0, 1 s, 2 s, 4 s,
/// ... up to [`MAX_DELAY`].
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
    /// Our own session closed it: that session's end decides
    /// ([`after_session_end`]).
    AskSession,
}

/// What to do about a connection that went down for `reason`, dialed by `initiator`.
///
/// Redialed: connections we dialed and lost (idle timeout, reset, transport error, the
/// relay circuit a relayed one ran on), or
/// that the peer's connection manager closed without a session reason (an operator's
/// cut), or whose session the peer ended with `timeout` (we were slow). Never: the
/// peer's connections (it redials itself), ours that we closed (`Close`, a ban,
/// shutdown), duplicates, replaced and evicted ones, refusals, and any other session
/// close code of the peer (done, closed by the application, our protocol error:
/// redialing would only repeat it).
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
            // A peer that does not want us refuses or bans, which is final.
            E::ApplicationClosed(close) => redial(
                close.error_code == CLOSE_REQUESTED
                    || close.error_code == quinn::VarInt::from_u32(CloseCode::TIMEOUT.0),
            ),
            // Our session closed it (a `Close` or a ban is `Closed`/`Banned`).
            E::LocallyClosed => AfterDown::AskSession,
            E::VersionMismatch | E::CidsExhausted => AfterDown::Never,
        },
        // Its relay circuit closed (the relay left): reached again through another
        // relay, or directly.
        DownReason::PathLost(_) => AfterDown::Redial,
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
/// ended: after our `timeout` (the peer was slow), never after a misbehaviour, a close
/// or our own failure. A session also closes the connection when it sees the peer's
/// close, and may do so before the connection manager sees that close (its `PeerDown`
/// then says `LocallyClosed`): the peer's code then decides, as in [`after_down`] (its
/// bare close or its `timeout` is redialed).
pub(crate) fn after_session_end(end: &EndReason) -> bool {
    match end.by {
        Side::Local => end.code == CloseCode::TIMEOUT && !end.is_misbehaviour(),
        Side::Remote => {
            end.code == CloseCode::TIMEOUT || u64::from(end.code.0) == CLOSE_REQUESTED.into_inner()
        }
    }
}

/// What to do after a redial's `Dial` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// The peer is up: done.
    Done,
    /// Dial again after this long (the connection manager's backoff, already jittered).
    RetryIn(Duration),
    /// Our own limits refused it: dial again after [`redial_delay`] of the refusals so
    /// far plus two (1 s, 2 s, 4 s, ... up to [`MAX_DELAY`]), jittered.
    Limited,
    /// Stop: the address was dropped, the dial is refused or the node is closing.
    Stop,
}

/// What a redial does after its dial answered `result`.
pub(crate) fn next_after(result: &Result<PeerKey, DialError>) -> Next {
    match result {
        Ok(_) => Next::Done,
        Err(DialError::Backoff { retry_in }) => Next::RetryIn(*retry_in),
        // Our connection manager is closing: it aborts waiting dials this way.
        Err(DialError::Connection(quinn::ConnectionError::LocallyClosed)) => Next::Stop,
        // The failure was recorded in the address's backoff: the next dial answers
        // `Backoff` with the wait.
        Err(DialError::Connection(_)) | Err(DialError::Timeout) => Next::RetryIn(Duration::ZERO),
        // A momentary limit of ours.
        Err(DialError::Refused(
            RefuseReason::TooManyPending(_) | RefuseReason::TooManyPeers(_),
        )) => Next::Limited,
        // A relay's circuit failed (its limits, the target gone): like a momentary limit.
        Err(DialError::Circuit(_)) => Next::Limited,
        Err(DialError::GaveUp { .. })
        | Err(DialError::Refused(_))
        | Err(DialError::RefusedByPeer(_))
        | Err(DialError::KeyMismatch(_))
        | Err(DialError::Connect(_))
        | Err(DialError::AddressFamily { .. })
        | Err(DialError::Shutdown)
        | Err(DialError::Tls(_)) => Next::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::tests::end;

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
        let path_lost = DownReason::PathLost(replic8_connmgr::CircuitEnd::Closed);
        assert_eq!(after_down(Initiator::Local, &path_lost), AfterDown::Redial);
        assert_eq!(after_down(Initiator::Remote, &path_lost), AfterDown::Never);
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
            DownReason::Evicted,
            DownReason::RefusedByPeer("banned".into()),
        ] {
            assert_eq!(
                after_down(Initiator::Local, &final_reason),
                AfterDown::Never,
                "{final_reason:?} must not be redialed"
            );
        }
    }

    #[test]
    fn after_our_own_close_only_a_timeout_is_redialed_never_a_misbehaviour() {
        assert!(after_session_end(&end(
            CloseCode::TIMEOUT,
            Side::Local,
            false
        )));
        // A timeout flagged as the peer's fault would be banned: never redialed.
        assert!(!after_session_end(&end(
            CloseCode::TIMEOUT,
            Side::Local,
            true
        )));
        for code in [
            CloseCode::DONE,
            CloseCode::CLOSED,
            CloseCode::PROTOCOL,
            CloseCode::FRAME_TOO_LARGE,
            CloseCode::BAD_PROOF,
        ] {
            assert!(!after_session_end(&end(code, Side::Local, false)), "{code}");
            assert!(!after_session_end(&end(code, Side::Local, true)), "{code}");
        }
    }

    #[test]
    fn a_session_that_closed_after_the_peers_close_is_redialed_as_that_close_would_be() {
        let requested = CloseCode(u32::try_from(CLOSE_REQUESTED.into_inner()).unwrap());
        assert!(after_session_end(&end(requested, Side::Remote, false)));
        assert!(after_session_end(&end(
            CloseCode::TIMEOUT,
            Side::Remote,
            false
        )));
        let shutdown =
            CloseCode(u32::try_from(replic8_connmgr::CLOSE_SHUTDOWN.into_inner()).unwrap());
        for code in [
            CloseCode::DONE,
            CloseCode::CLOSED,
            CloseCode::PROTOCOL,
            shutdown,
        ] {
            assert!(
                !after_session_end(&end(code, Side::Remote, false)),
                "{code}"
            );
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
        // A dial waiting for its handshake when our connection manager closes.
        assert_eq!(
            next_after(&Err(DialError::Connection(
                quinn::ConnectionError::LocallyClosed
            ))),
            Next::Stop
        );
        assert_eq!(
            next_after(&Err(DialError::Connection(quinn::ConnectionError::Reset))),
            Next::RetryIn(Duration::ZERO)
        );
        // Our own limits are momentary: retried, never given up on.
        for reason in [
            RefuseReason::TooManyPending(8),
            RefuseReason::TooManyPeers(64),
        ] {
            assert_eq!(
                next_after(&Err(DialError::Refused(reason.clone()))),
                Next::Limited,
                "{reason:?}"
            );
        }
        assert_eq!(
            next_after(&Err(DialError::Refused(RefuseReason::Banned(key)))),
            Next::Stop
        );
    }
}
