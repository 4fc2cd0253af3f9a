//! Bytes to frames: a 4-byte big-endian length prefix, then that many payload bytes.
//!
//! No I/O here. The reader keeps a buffer of received bytes and calls [`check`] to learn
//! whether a whole frame is there (`Ok(None)`: read more), then [`parse`] to take it.
//! The length is checked against the limit before anything is allocated for the payload,
//! so a peer cannot make us buffer more than [`MAX_FRAME_LEN`] bytes per frame.

use thiserror::Error;

/// Bytes in the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Largest payload a frame may carry: 1 MiB.
///
/// Big enough for an offer of 4,096 feeds with small headers or any single feed with
/// full headers (4 KiB); small enough that a hostile peer can make each session buffer
/// at most this much per stream.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Why bytes did not form a frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The length prefix announced more than the limit; the session ends.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    Oversize {
        /// The announced payload length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: {have} of {need} bytes")]
    Truncated {
        /// Bytes the frame needed, prefix included.
        need: usize,
        /// Bytes that arrived before the end.
        have: usize,
    },
}

/// Whether `buf` starts with a whole frame: `Ok(Some(n))` with the frame's length in
/// bytes (prefix included), `Ok(None)` if more bytes are needed, an error if the length
/// prefix is over `max`.
pub fn check(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    Ok(announced(buf, max)?.filter(|&total| buf.len() >= total))
}

/// Takes the first frame of `buf`: `Ok(Some((payload, consumed)))`, where `consumed` is
/// how many bytes of `buf` the frame used; `Ok(None)` if more bytes are needed.
pub fn parse(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    Ok(check(buf, max)?.map(|total| (&buf[PREFIX_LEN..total], total)))
}

/// The whole length (prefix included) of the frame `buf` starts with, as soon as its
/// prefix is there: `Ok(None)` before that, an error if the prefix is over `max`. Lets a
/// reader allocate the frame once, at its final size.
pub fn announced(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..PREFIX_LEN) else {
        return Ok(None);
    };
    let mut len = [0u8; PREFIX_LEN];
    len.copy_from_slice(prefix);
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::Oversize { len, max });
    }
    Ok(Some(PREFIX_LEN + len))
}

/// Called when the stream ended with `buf` left unparsed: an error unless it is empty.
pub fn check_end(buf: &[u8], max: usize) -> Result<(), FrameError> {
    if buf.is_empty() {
        return Ok(());
    }
    let need = match check(buf, max)? {
        // A whole frame is still in the buffer: the caller should have parsed it.
        Some(_) => return Ok(()),
        None if buf.len() < PREFIX_LEN => PREFIX_LEN,
        None => {
            let mut len = [0u8; PREFIX_LEN];
            len.copy_from_slice(&buf[..PREFIX_LEN]);
            PREFIX_LEN + u32::from_be_bytes(len) as usize
        }
    };
    Err(FrameError::Truncated {
        need,
        have: buf.len(),
    })
}

/// Appends `payload` as one frame to `out`; an error if it is over `max`.
pub fn encode(payload: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = payload.len();
    if len > max || u32::try_from(len).is_err() {
        return Err(FrameError::Oversize { len, max });
    }
    out.reserve(PREFIX_LEN + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Writes the length prefix of a frame built in place: `frame` is [`PREFIX_LEN`] bytes of
/// room followed by the payload (so the payload is never copied into a second buffer).
/// An error, with `frame` untouched, if the payload is over `max` or `frame` is shorter
/// than the prefix.
pub fn seal(frame: &mut [u8], max: usize) -> Result<(), FrameError> {
    let len = frame.len().saturating_sub(PREFIX_LEN);
    if frame.len() < PREFIX_LEN {
        return Err(FrameError::Truncated {
            need: PREFIX_LEN,
            have: frame.len(),
        });
    }
    let prefix = u32::try_from(len)
        .ok()
        .filter(|_| len <= max)
        .ok_or(FrameError::Oversize { len, max })?;
    frame[..PREFIX_LEN].copy_from_slice(&prefix.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn round_trip_every_split_point() {
        let mut wire = Vec::new();
        let payloads: Vec<Vec<u8>> = vec![vec![], vec![1], (0..=255).collect(), vec![7; 1000]];
        for p in &payloads {
            encode(p, MAX_FRAME_LEN, &mut wire).unwrap();
        }
        // Feed the bytes in two pieces at every split point, as a reader would see them.
        for split in 0..=wire.len() {
            let mut buf = wire[..split].to_vec();
            let mut rest = &wire[split..];
            let mut got = Vec::new();
            loop {
                match parse(&buf, MAX_FRAME_LEN).unwrap() {
                    Some((payload, used)) => {
                        got.push(payload.to_vec());
                        buf.drain(..used);
                    }
                    None if !rest.is_empty() => {
                        buf.extend_from_slice(rest);
                        rest = &[];
                    }
                    None => break,
                }
            }
            assert_eq!(got, payloads, "split at {split}");
            check_end(&buf, MAX_FRAME_LEN).unwrap();
        }
    }

    #[test]
    fn oversize_prefix_is_refused_before_the_payload_arrives() {
        let buf = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert_eq!(
            check(&buf, MAX_FRAME_LEN),
            Err(FrameError::Oversize {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            })
        );
        assert_eq!(
            check(&u32::MAX.to_be_bytes(), 16),
            Err(FrameError::Oversize {
                len: u32::MAX as usize,
                max: 16
            })
        );
        let mut out = Vec::new();
        assert_eq!(
            encode(&[0; 17], 16, &mut out),
            Err(FrameError::Oversize { len: 17, max: 16 })
        );
        assert!(out.is_empty());
        let msg = FrameError::Oversize { len: 17, max: 16 }.to_string();
        assert!(msg.contains("17") && msg.contains("16"), "{msg}");
    }

    #[test]
    fn sealed_in_place_equals_encoded() {
        let payload: Vec<u8> = (0..=255).collect();
        let mut wire = Vec::new();
        encode(&payload, MAX_FRAME_LEN, &mut wire).unwrap();
        let mut built = vec![0u8; PREFIX_LEN];
        built.extend_from_slice(&payload);
        seal(&mut built, MAX_FRAME_LEN).unwrap();
        assert_eq!(built, wire);
        assert_eq!(announced(&wire[..3], MAX_FRAME_LEN), Ok(None));
        assert_eq!(announced(&wire[..4], MAX_FRAME_LEN), Ok(Some(wire.len())));
        let mut big = vec![0u8; PREFIX_LEN + 17];
        assert_eq!(
            seal(&mut big, 16),
            Err(FrameError::Oversize { len: 17, max: 16 })
        );
        assert_eq!(big, vec![0u8; PREFIX_LEN + 17]);
        assert!(seal(&mut [0u8; 3], 16).is_err());
        assert_eq!(
            announced(&wire[..4], 16),
            Err(FrameError::Oversize { len: 256, max: 16 })
        );
    }

    #[test]
    fn a_frame_of_exactly_the_limit_is_accepted() {
        let mut wire = Vec::new();
        encode(&[3; 64], 64, &mut wire).unwrap();
        assert_eq!(check(&wire, 64), Ok(Some(68)));
    }

    #[test]
    fn truncated_stream_is_an_error() {
        assert_eq!(
            check_end(&[0, 0], MAX_FRAME_LEN),
            Err(FrameError::Truncated { need: 4, have: 2 })
        );
        assert_eq!(
            check_end(&[0, 0, 0, 5, 1, 2], MAX_FRAME_LEN),
            Err(FrameError::Truncated { need: 9, have: 6 })
        );
        assert_eq!(
            check_end(&[0, 0, 0, 9, 9], 4),
            Err(FrameError::Oversize { len: 9, max: 4 })
        );
        assert_eq!(check_end(&[], MAX_FRAME_LEN), Ok(()));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        for _ in 0..10_000 {
            let len = rng.gen_range(0..64);
            let buf: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let max = rng.gen_range(0..128);
            match parse(&buf, max) {
                Ok(Some((payload, used))) => {
                    assert!(payload.len() <= max && used == payload.len() + PREFIX_LEN)
                }
                Ok(None) => assert!(check_end(&buf, max).is_err() || buf.is_empty()),
                Err(FrameError::Oversize { len, max: m }) => assert!(len > m),
                Err(e) => panic!("unexpected {e}"),
            }
        }
    }
}
