//! The control stream: frames in and out, the bound on our queued output (we stop
//! reading while over it), the hello, and the timers.

use super::config::{MAX_PUMPED_CONTROL_BYTES, MAX_QUEUED_CONTROL_BYTES};
use super::types::SessionEvent;
use crate::frame::{self, MAX_FRAME_LEN};
use crate::message::{self, CloseCode, Message, DIALECT, PROTOCOL_VERSION};
use std::time::Instant;

use super::Session;

/// The reason when the peer's control stream ends without a close message. Not counted
/// as misbehaviour: a peer whose session task was cut short (its node stopping after
/// the close grace) ends the stream this way.
const CONTROL_END_WITHOUT_CLOSE: &str = "control stream ended without a close message";
/// How the reason starts when we could not encode our own message (a bug of ours, not
/// the peer's misbehaviour).
const ENCODE_FAILED: &str = "could not encode";

impl Session {
    /// Bytes that arrived on the control stream. While our queued output is over
    /// [`MAX_QUEUED_CONTROL_BYTES`] whole frames stay buffered unread, and are read
    /// once [`Session::handle_control_written`] brings it back under.
    pub fn handle_control_bytes(&mut self, bytes: &[u8]) {
        if self.ended.is_some() {
            return;
        }
        self.stats.bytes_in += bytes.len() as u64;
        self.read_buf.extend_from_slice(bytes);
        self.read_frames();
    }

    /// The driver wrote `bytes` of the frames `poll_transmit` gave out to the control
    /// stream (the peer's flow control took them).
    pub fn handle_control_written(&mut self, bytes: usize) {
        self.in_flight = self.in_flight.saturating_sub(bytes);
        if bytes > 0 && self.blocked.is_some() {
            // The peer reads, if slowly: the stall timeout counts from its last progress.
            self.blocked = Some(None);
        }
        self.update_blocked();
        if !self.read_buf.is_empty() && self.wants_control_bytes() {
            self.read_frames();
        }
        self.pump_offers();
    }

    pub(super) fn read_frames(&mut self) {
        let mut start = 0;
        while self.wants_control_bytes() {
            match frame::parse(&self.read_buf[start..], MAX_FRAME_LEN) {
                Ok(Some((payload, used))) => {
                    let decoded = message::decode(payload);
                    start += used;
                    self.frames_parsed += 1;
                    match decoded {
                        Ok(message) => self.handle_message(message),
                        Err(e) => self.fail(CloseCode::PROTOCOL, e.to_string()),
                    }
                }
                Ok(None) => break,
                Err(e) => self.fail_frame(e),
            }
        }
        self.read_buf.drain(..start.min(self.read_buf.len()));
        self.stall = match self.stall {
            _ if self.read_buf.is_empty() => None,
            Some((frame, since)) if frame == self.frames_parsed => Some((frame, since)),
            _ => Some((self.frames_parsed, None)),
        };
        self.update_blocked();
    }

    /// The control stream ended (the peer finished it, or it was reset).
    pub fn handle_control_end(&mut self) {
        if self.ended.is_some() {
            return;
        }
        match frame::check_end(&self.read_buf, MAX_FRAME_LEN) {
            Err(e) => self.fail_frame(e),
            Ok(()) => {
                self.fail_not_peers_fault(CloseCode::PROTOCOL, CONTROL_END_WITHOUT_CLOSE.into())
            }
        }
    }

    /// A decoded control message from the peer.
    pub fn handle_message(&mut self, message: Message) {
        if self.ended.is_some() {
            return;
        }
        self.stats.messages_in += 1;
        if let Err(e) = message.check() {
            return self.fail(CloseCode::PROTOCOL, e.to_string());
        }
        if !self.is_established() {
            return match message {
                Message::Hello {
                    version,
                    dialect,
                    max_streams,
                } => self.on_hello(version, &dialect, max_streams),
                Message::Close { code, reason } => self.on_close(code, reason),
                other => self.fail(
                    CloseCode::PROTOCOL,
                    format!("expected hello, got {}", other.name()),
                ),
            };
        }
        match message {
            Message::Hello { .. } => self.fail(CloseCode::PROTOCOL, "second hello".into()),
            Message::Tag { handle, tag } => self.on_tag(handle, tag),
            Message::Offer {
                namespace,
                offer,
                feeds,
            } => self.on_offer(namespace, offer, feeds),
            Message::Answer { offer, accepted } => self.on_answer(offer, accepted),
            Message::Have { namespace, feeds } => self.on_have(namespace, feeds),
            Message::Ready => {
                if std::mem::replace(&mut self.peer_ready, true) {
                    return self.fail(CloseCode::PROTOCOL, "second ready".into());
                }
                self.maybe_settle();
                self.check_done();
            }
            Message::Settled => {
                if !self.local_ready || std::mem::replace(&mut self.peer_settled, true) {
                    return self.fail(CloseCode::PROTOCOL, "unexpected settled".into());
                }
                self.maybe_settle();
                self.check_done();
            }
            Message::Notice { feed, length } => self.on_notice(feed, length),
            Message::Synced { feed, length } => self.on_synced(feed, length),
            Message::Stopped { feed } => self.on_stopped(feed),
            Message::Heads { feeds } => self.on_heads(feeds),
            Message::Whole { feeds } => self.on_whole(feeds),
            Message::Close { code, reason } => self.on_close(code, reason),
        }
    }

    fn on_hello(&mut self, version: u32, dialect: &str, max_streams: u32) {
        if version != PROTOCOL_VERSION || dialect != DIALECT {
            return self.fail(
                CloseCode::VERSION_MISMATCH,
                format!(
                    "version mismatch: we speak replic8/{PROTOCOL_VERSION} dialect {DIALECT:?}, \
                     the peer speaks replic8/{version} dialect {dialect:?}"
                ),
            );
        }
        if max_streams == 0 {
            return self.fail(CloseCode::PROTOCOL, "hello allows zero feed streams".into());
        }
        self.peer_max_streams = Some(max_streams);
        self.hello_deadline = None;
        for message in std::mem::take(&mut self.held) {
            self.push_frame(&message);
        }
        self.events.push_back(SessionEvent::Established);
        self.pump_offers();
    }

    /// Time passed: fires the hello timeout, the stall timeouts (a partial frame, a
    /// peer that keeps our output blocked) and due feed stream reopens.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        if self.ended.is_some() {
            return;
        }
        if let Some(since) = self.blocked {
            let since = since.unwrap_or(now);
            self.blocked = Some(Some(since));
            if now.saturating_duration_since(since) >= self.config.stall_timeout {
                // Not misbehaviour: a slow reader is not a liar.
                return self.fail_not_peers_fault(
                    CloseCode::TIMEOUT,
                    format!(
                        "the peer read none of our {} queued control bytes for {:?}",
                        self.queued_bytes(),
                        self.config.stall_timeout
                    ),
                );
            }
        }
        // While we do not read, a partial frame is ours to wait for, not the peer's.
        if let Some((frame, since)) = self.stall.filter(|_| self.reads_by_choice()) {
            let since = since.unwrap_or(now);
            self.stall = Some((frame, Some(since)));
            if now.saturating_duration_since(since) >= self.config.stall_timeout {
                let announced = self
                    .read_buf
                    .get(..frame::PREFIX_LEN)
                    .and_then(|p| <[u8; 4]>::try_from(p).ok())
                    .map_or_else(|| "?".to_string(), |p| u32::from_be_bytes(p).to_string());
                return self.fail(
                    CloseCode::TIMEOUT,
                    format!(
                        "control frame stalled: {} of {announced} bytes in {:?}",
                        self.read_buf.len().saturating_sub(frame::PREFIX_LEN),
                        self.config.stall_timeout
                    ),
                );
            }
        }
        if let Some(deadline) = self.hello_deadline {
            if now >= deadline && !self.is_established() {
                self.hello_deadline = None;
                return self.fail(
                    CloseCode::TIMEOUT,
                    format!("no hello within {:?}", self.config.hello_timeout),
                );
            }
        }
        if !self.reopens.is_empty() {
            self.fire_reopens(now);
        }
    }

    /// The next frame to write on the control stream. After the close message, the
    /// driver finishes the stream and closes the connection with the close code. The
    /// frame counts as queued until [`Session::handle_control_written`] reports it
    /// written.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let frame = self.outbox.pop_front()?;
        self.outbox_bytes = self.outbox_bytes.saturating_sub(frame.len());
        self.in_flight += frame.len();
        self.stats.messages_out += 1;
        self.stats.bytes_out += frame.len() as u64;
        Some(frame)
    }

    /// When to call [`Session::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended.is_some() {
            return None;
        }
        let hello = self.hello_deadline.filter(|_| !self.is_established());
        let stall = self.stall.map(|(_, since)| match since {
            Some(since) => since + self.config.stall_timeout,
            // Unknown start: ask for a timeout call at once to learn the time.
            None => self.last_now,
        });
        let stall = stall.filter(|_| self.reads_by_choice());
        let blocked = self
            .blocked
            .map(|since| since.map_or(self.last_now, |at| at + self.config.stall_timeout));
        let reopens = self.reopens.values().map(|at| at.unwrap_or(self.last_now));
        hello
            .into_iter()
            .chain(stall)
            .chain(blocked)
            .chain(reopens)
            .min()
    }

    pub(super) fn send(&mut self, message: Message) {
        if self.ended.is_some() {
            return;
        }
        if self.is_established() {
            self.push_frame(&message);
        } else {
            self.held.push(message);
        }
    }

    /// Encodes `message` into the outbox.
    pub(super) fn push_frame(&mut self, message: &Message) {
        let mut frame = Vec::new();
        match message::encode(message, &mut frame) {
            Ok(()) => {
                self.outbox_bytes += frame.len();
                self.outbox.push_back(frame);
                self.update_blocked();
            }
            Err(e) => {
                // Every message is built within the bounds, so this is a bug of ours.
                tracing::error!(message = message.name(), error = %e, "could not encode");
                self.fail_not_peers_fault(
                    CloseCode::PROTOCOL,
                    format!("{ENCODE_FAILED} {}: {e}", message.name()),
                );
            }
        }
    }

    /// Whether we read the peer's control stream as it comes: not while our output is
    /// blocked, nor while feeds it sent whole fill our store's share. Only then is a
    /// partial frame the peer's to finish.
    fn reads_by_choice(&self) -> bool {
        self.blocked.is_none() && !self.over_whole_bound()
    }

    pub(super) fn over_queue_bound(&self) -> bool {
        self.queued_bytes() >= MAX_QUEUED_CONTROL_BYTES
    }

    /// Whether our own output (not answers) waits: what is queued is at
    /// [`MAX_PUMPED_CONTROL_BYTES`] or more, so it can never stop our reading.
    pub(super) fn over_pump_bound(&self) -> bool {
        self.queued_bytes() >= MAX_PUMPED_CONTROL_BYTES
    }

    /// Starts or stops the blocked-output timer after the queue changed.
    fn update_blocked(&mut self) {
        let queued = self.queued_bytes() as u64;
        self.stats.peak_queued_bytes = self.stats.peak_queued_bytes.max(queued);
        match (self.over_queue_bound(), self.blocked) {
            (true, None) => self.blocked = Some(None),
            (false, Some(_)) => {
                self.blocked = None;
                // A partial frame's wait starts again now that we read again.
                self.stall = self.stall.map(|(frame, _)| (frame, None));
            }
            _ => {}
        }
    }
}
