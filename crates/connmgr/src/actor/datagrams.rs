//! Datagrams on a connection: the confirmation (sent, resent, awaited) and the liveness
//! probe.

use std::time::Duration;

/// How many times a confirmation is sent again after the first, one step apart.
const CONFIRM_RESENDS: u32 = 2;
/// The step between two sends of a confirmation is the round trip time, within these
/// bounds: all three land within the default settle window (250 ms) of the peer.
const CONFIRM_STEP: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(80));

/// Sends the confirmation `CONFIRM_RESENDS` more times, one round trip apart (within
/// `CONFIRM_STEP`), unless the connection closed. The peer ignores repeats.
pub(super) async fn resend_confirm(conn: quinn::Connection) {
    let step = conn.rtt().clamp(CONFIRM_STEP.0, CONFIRM_STEP.1);
    for _ in 0..CONFIRM_RESENDS {
        tokio::time::sleep(step).await;
        if conn.close_reason().is_some()
            || conn
                .send_datagram(bytes::Bytes::from_static(CONFIRM_DATAGRAM))
                .is_err()
        {
            return;
        }
    }
}

/// The datagram by which the greater key confirms a connection that the smaller key
/// initiated (`docs/PROTOCOL.md`, connmgr). Any other datagram is not a confirmation.
pub(super) const CONFIRM_DATAGRAM: &[u8] = b"replic8-connmgr/confirm";

/// Reads datagrams on `conn` until the peer's confirmation; `false` if it closed first.
/// Runs only until the connection is up, so it never competes with a protocol's reads.
pub(super) async fn await_confirm(conn: &quinn::Connection) -> bool {
    loop {
        match conn.read_datagram().await {
            Ok(datagram) if datagram[..] == *CONFIRM_DATAGRAM => return true,
            // An empty liveness probe, or anything else: not for us.
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// Whether `conn` is alive: an empty datagram (ack-eliciting, and ignored by the session
/// layer) is sent, and any ACK frame that arrives within `timeout` proves the peer still
/// holds the connection.
pub(super) async fn probe(conn: &quinn::Connection, timeout: Duration) -> bool {
    if conn.close_reason().is_some() {
        return false;
    }
    let before = conn.stats().frame_rx.acks;
    if conn.send_datagram(bytes::Bytes::new()).is_err() {
        // Datagrams disabled by the peer: fall back to any ACK (keep-alives elicit them).
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    loop {
        tokio::select! {
            _ = conn.closed() => return false,
            _ = tokio::time::sleep_until(deadline) => return false,
            _ = tick.tick() => {
                if conn.stats().frame_rx.acks > before {
                    return true;
                }
            }
        }
    }
}
