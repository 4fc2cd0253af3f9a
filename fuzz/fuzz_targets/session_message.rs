//! The session message decoder (`replic8::message::decode`, `decode_stream_header`) and
//! the session core that consumes it (`Session::handle_control_bytes`).
//!
//! The input is used twice:
//! - as one frame's payload: a decoded message satisfies the protocol's bounds and
//!   survives decode → encode → decode unchanged (bytes may differ: bincode accepts
//!   non-minimal varints, we always write minimal ones); the same for a stream header;
//! - as control stream bytes after a valid hello, against an acceptor session with a
//!   public and a secret namespace (matched by a dialer tag with handle 1): the core
//!   never panics, every frame it sends decodes, it never opens more streams than both
//!   sides allow, its queued output stays bounded, and the stream's end always ends
//!   the session with a reason.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use replic8::frame::{self, MAX_FRAME_LEN};
use replic8::message::{self, CodecError};
use replic8::session::{Session, SessionEvent, StreamCommand};
use replic8_fuzz_fixtures as fx;

fuzz_target!(|data: &[u8]| {
    // 1. One payload.
    if let Ok(m) = message::decode(data) {
        m.check().expect("a decoded message is within bounds");
        let mut wire = Vec::new();
        message::encode(&m, &mut wire).expect("a decoded message re-encodes");
        let (payload, used) = frame::parse(&wire, MAX_FRAME_LEN)
            .expect("our frame is within the limit")
            .expect("our frame is whole");
        assert_eq!(used, wire.len());
        assert!(payload.len() <= data.len(), "re-encoding grew the message");
        assert_eq!(message::decode(payload).expect("re-decodes"), m);
    }
    let header = message::decode_stream_header(data);
    if let Ok(h) = &header {
        let mut wire = Vec::new();
        message::encode_stream_header(h, &mut wire).expect("a header re-encodes");
        let (again, _) = message::parse_stream_header(&wire)
            .expect("re-encoded header parses")
            .expect("re-encoded header is whole");
        assert_eq!(&again, h);
    }

    // 2. Control stream bytes, in two chunks, after the peer's valid hello.
    let now = Instant::now();
    let mut s = fx::session(now);
    drain(&mut s);
    s.handle_control_bytes(&fx::hello_frame());
    drain(&mut s);
    assert!(s.is_established());
    let split = data
        .first()
        .map_or(0, |&b| usize::from(b) % (data.len() + 1));
    s.handle_control_bytes(&data[..split]);
    drain(&mut s);
    s.handle_control_bytes(&data[split..]);
    drain(&mut s);
    // The same bytes as a feed stream's header from the peer.
    match header {
        Ok(h) => {
            let _ = s.handle_incoming_stream(h);
        }
        Err(e) => s.handle_incoming_stream_error(e),
    }
    drain(&mut s);
    s.handle_timeout(now + Duration::from_secs(3600));
    drain(&mut s);
    s.handle_control_end();
    drain(&mut s);
    assert!(
        s.end_reason().is_some(),
        "control stream end must end the session"
    );
});

/// Takes every output, checks our frames decode, answers offers by accepting them all.
fn drain(s: &mut Session) {
    for _ in 0..64 {
        let mut progress = false;
        while let Some(wire) = s.poll_transmit() {
            progress = true;
            s.handle_control_written(wire.len());
            let mut rest = &wire[..];
            while !rest.is_empty() {
                let (payload, used) = frame::parse(rest, MAX_FRAME_LEN)
                    .expect("our frame is within the limit")
                    .expect("our frames are whole");
                let decoded: Result<_, CodecError> = message::decode(payload);
                decoded.expect("our message decodes");
                rest = &rest[used..];
            }
        }
        while let Some(event) = s.poll_event() {
            progress = true;
            if let SessionEvent::Offered { offer, feeds, .. } = event {
                let keys = feeds.into_iter().map(|(key, _)| key).collect();
                let _ = s.handle_offer_answer(offer, Ok(keys));
            }
        }
        while let Some(command) = s.poll_stream() {
            progress = true;
            if let StreamCommand::Open { header, .. } = command {
                let mut wire = Vec::new();
                message::encode_stream_header(&header, &mut wire).expect("our header encodes");
            }
        }
        assert!(s.open_streams() <= 16, "more streams than the peer allows");
        assert!(
            s.stats().peak_queued_bytes
                <= (replic8::session::MAX_QUEUED_CONTROL_BYTES + 2 * MAX_FRAME_LEN) as u64,
            "queued control output over its bound"
        );
        if !progress {
            return;
        }
    }
}
