//! The session frame decoder (`replic8::frame`) and the feed stream's first frame
//! (`message::parse_stream_header`): any bytes, read as a stream in two chunks.
//!
//! Properties: parsing never panics; every frame is within the limit and uses exactly
//! its prefix plus payload; re-encoding the frames gives back the bytes they came from;
//! a stream that ends with bytes left over is an error unless they form whole frames;
//! an accepted stream header re-encodes to the same header; `announced` agrees with
//! `check` and `seal` with `encode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replic8::frame::{self, FrameError, MAX_FRAME_LEN, PREFIX_LEN};
use replic8::message;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    // Small limits make the oversize path reachable without megabyte inputs.
    let max = match pick % 4 {
        0 => MAX_FRAME_LEN,
        1 => 0,
        2 => 16,
        _ => 256,
    };
    let split = if data.is_empty() {
        0
    } else {
        usize::from(pick) % (data.len() + 1)
    };

    // Read as a reader does: a buffer that grows by chunks, frames taken off its front.
    let mut buf = Vec::new();
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut consumed = 0;
    let mut failed = None;
    for chunk in [&data[..split], &data[split..]] {
        buf.extend_from_slice(chunk);
        loop {
            match frame::parse(&buf, max) {
                Ok(Some((payload, used))) => {
                    assert!(payload.len() <= max);
                    assert_eq!(used, payload.len() + PREFIX_LEN);
                    payloads.push(payload.to_vec());
                    buf.drain(..used);
                    consumed += used;
                }
                Ok(None) => break,
                Err(e) => {
                    match e {
                        FrameError::Oversize { len, max: m } => assert!(len > m && m == max),
                        FrameError::Truncated { .. } => panic!("parse reported truncation"),
                    }
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_some() {
            break;
        }
    }
    match (&failed, frame::check_end(&buf, max)) {
        (Some(e), end) => assert_eq!(end.as_ref().err(), Some(e)),
        (None, Ok(())) => assert!(buf.is_empty()),
        (None, Err(FrameError::Truncated { need, have })) => {
            assert_eq!(have, buf.len());
            assert!(need > have);
        }
        (None, Err(e)) => panic!("end of stream without a parse error: {e}"),
    }

    // Encoding the frames gives back exactly the bytes they were parsed from.
    let mut wire = Vec::new();
    for p in &payloads {
        frame::encode(p, max, &mut wire).expect("a parsed frame re-encodes");
    }
    assert_eq!(wire, &data[..consumed]);

    // `announced` (the feed stream's frame cutter sizes its buffer with it) agrees with
    // `check` on every prefix of the input: the same limit error, and the same length
    // once the frame is whole.
    for cut in [0, PREFIX_LEN.min(data.len()), split, data.len()] {
        let head = &data[..cut];
        match (frame::announced(head, max), frame::check(head, max)) {
            (Err(a), Err(c)) => assert_eq!(a, c),
            (Ok(None), Ok(None)) => assert!(head.len() < PREFIX_LEN),
            (Ok(Some(total)), Ok(None)) => assert!(total > head.len()),
            (Ok(Some(total)), Ok(Some(whole))) => assert_eq!(total, whole),
            (a, c) => panic!("announced {a:?} but check {c:?} on {} bytes", head.len()),
        }
    }
    // A frame sealed in place equals the encoded one.
    for p in &payloads {
        let mut sealed = vec![0u8; PREFIX_LEN];
        sealed.extend_from_slice(p);
        frame::seal(&mut sealed, max).expect("a parsed frame seals");
        let mut encoded = Vec::new();
        frame::encode(p, max, &mut encoded).expect("a parsed frame re-encodes");
        assert_eq!(sealed, encoded);
    }

    // A feed stream's first frame.
    if let Ok(Some((header, used))) = message::parse_stream_header(data) {
        assert!(used <= data.len());
        let mut out = Vec::new();
        message::encode_stream_header(&header, &mut out).expect("a header re-encodes");
        let again = message::parse_stream_header(&out)
            .expect("re-encoded header parses")
            .expect("re-encoded header is whole");
        assert_eq!(again, (header, out.len()));
    }
});
