//! How a session ends: closes either way, lost connections, timeouts, a one-shot
//! session that is done, and which ends are the peer's misbehaviour.

use super::config::Mode;
use super::state::Stop;
use super::types::{EndReason, SessionEvent, Side, StoreCall, VIOLATIONS};
use crate::frame::FrameError;
use crate::keys::FeedKey;
use crate::message::{CloseCode, Message, MAX_REASON_LEN};
use tracing::debug;

use super::Session;

impl Session {
    /// Ends the session with [`CloseCode::CLOSED`].
    pub fn handle_close(&mut self, reason: &str) {
        self.end(
            CloseCode::CLOSED,
            reason.to_string(),
            Side::Local,
            Some(reason.to_string()),
            false,
        );
    }

    /// The connection went away: closed by the peer with `code` and `reason` (an
    /// application close), or lost (`code` is `None`).
    pub fn handle_connection_lost(&mut self, code: Option<CloseCode>, mut reason: String) {
        truncate(&mut reason, MAX_REASON_LEN);
        match code {
            Some(code) => self.on_close(code, reason),
            None => self.end(
                CloseCode::CLOSED,
                format!("connection lost: {reason}"),
                Side::Remote,
                None,
                false,
            ),
        }
    }

    /// A store gave up waiting for the peer on `feed`'s stream: the session ends with
    /// [`CloseCode::TIMEOUT`], which is not misbehaviour (a slow peer is not banned).
    pub fn handle_feed_stalled(&mut self, feed: &FeedKey, reason: &str) {
        self.fail(
            CloseCode::TIMEOUT,
            format!("feed {}: {reason}", feed.fmt_short()),
        );
    }

    /// A peer's feed stream did not deliver its header within the stall timeout: the
    /// session ends with [`CloseCode::TIMEOUT`] (not misbehaviour, as for a stalled
    /// control frame), which frees the stream slot it held.
    pub fn handle_stream_header_stalled(&mut self) {
        self.fail(
            CloseCode::TIMEOUT,
            format!(
                "feed stream header stalled: not complete within {:?}",
                self.config.stall_timeout
            ),
        );
    }

    pub(super) fn fail(&mut self, code: CloseCode, reason: String) {
        debug!(%code, %reason, "session ends");
        let told = reason.clone();
        self.end(
            code,
            reason,
            Side::Local,
            Some(told),
            VIOLATIONS.contains(&code),
        );
    }

    /// Ends the session for a failure that is not the peer's fault (ours, or an end
    /// an honest peer can cause), whatever the code says.
    pub(super) fn fail_not_peers_fault(&mut self, code: CloseCode, reason: String) {
        debug!(%code, %reason, "session ends");
        let told = reason.clone();
        self.end(code, reason, Side::Local, Some(told), false);
    }

    /// Ends the session, not for the peer's fault, telling the peer `told` rather than
    /// the local `reason` (which may name a namespace).
    pub(super) fn end_with_peer_reason(&mut self, code: CloseCode, reason: String, told: String) {
        debug!(%code, %reason, "session ends");
        self.end(code, reason, Side::Local, Some(told), false);
    }

    pub(super) fn fail_frame(&mut self, error: FrameError) {
        let code = match error {
            FrameError::Oversize { .. } => CloseCode::FRAME_TOO_LARGE,
            FrameError::Truncated { .. } => CloseCode::PROTOCOL,
        };
        self.fail(code, error.to_string());
    }

    /// Ends the session. `tell_peer` is the reason sent in our `Close` (none for an
    /// end the peer caused with its own close, or a lost connection): the same words as
    /// `reason`, except where those could name a namespace.
    fn end(
        &mut self,
        code: CloseCode,
        mut reason: String,
        by: Side,
        tell_peer: Option<String>,
        peer_at_fault: bool,
    ) {
        if self.ended.is_some() {
            return;
        }
        truncate(&mut reason, MAX_REASON_LEN);
        if let Some(mut told) = tell_peer {
            truncate(&mut told, MAX_REASON_LEN);
            // The close goes out even before hellos were exchanged: it is the last frame.
            self.push_frame(&Message::Close { code, reason: told });
        }
        self.held.clear();
        self.open_queue.clear();
        self.streams.clear();
        self.share_queue.clear();
        self.have_queue.clear();
        self.whole_reads.clear();
        self.whole_ready.clear();
        self.whole_writes.clear();
        // Questions to stores are moot; every stream a store holds is taken back.
        self.store_calls.clear();
        for (stream, (feed, namespace)) in std::mem::take(&mut self.attached) {
            self.store_calls.push_back(StoreCall::Detach {
                feed,
                namespace,
                stream,
            });
        }
        let reason = EndReason {
            code,
            by,
            reason,
            peer_at_fault,
        };
        self.ended = Some(reason.clone());
        self.events.push_back(SessionEvent::SessionEnded { reason });
    }

    pub(super) fn on_close(&mut self, code: CloseCode, reason: String) {
        self.end(code, reason, Side::Remote, None, false);
    }

    pub(super) fn check_done(&mut self) {
        if self.config.mode != Mode::OneShot || self.ended.is_some() {
            return;
        }
        let ready = self.local_ready && self.peer_ready && self.settled_sent && self.peer_settled;
        if !ready
            || !self.our_offers.is_empty()
            || !self.peer_offers.is_empty()
            || !self.share_queue.is_empty()
            || !self.have_queue.is_empty()
            || !self.late_checks.is_empty()
            || self.heads_out > 0
        {
            return;
        }
        // A stopped feed is given up: the session ends once the others are in sync.
        let all_synced = self
            .feeds
            .values()
            .filter(|f| f.stopped.is_none())
            .all(|f| {
                f.reported.is_some()
                    && f.reported == f.local_synced
                    && f.local_synced == f.remote_synced
            });
        if !all_synced {
            return;
        }
        let mut stopped: Vec<(FeedKey, String)> = self
            .feeds
            .iter()
            .filter_map(|(key, f)| match &f.stopped {
                Some(Stop::Exhausted(r) | Stop::Fault(r)) => Some((*key, r.clone())),
                None => None,
            })
            .collect();
        stopped.sort();
        let n = self.feeds.len() - stopped.len();
        match stopped.first() {
            None => self.end(
                CloseCode::DONE,
                format!("all {n} feeds in sync both ways"),
                Side::Local,
                Some(format!("all {n} feeds in sync both ways")),
                false,
            ),
            Some((feed, reason)) => self.fail_not_peers_fault(
                CloseCode::CLOSED,
                format!(
                    "{n} feeds in sync both ways, {} given up: feed {}: {reason}",
                    stopped.len(),
                    feed.fmt_short()
                ),
            ),
        }
    }
}
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}
