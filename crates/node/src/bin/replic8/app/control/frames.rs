//! The binary mode's frames: bytes to [`Frame`]s and back, with the size limits checked
//! on the header, before anything is allocated.
//!
//! A frame is a 5-byte header, a kind byte then the payload's length as a big-endian
//! `u32`, followed by the payload:
//!
//! | kind | name | payload |
//! |---|---|---|
//! | 0 | block | one block, 1..=[`MAX_BLOCK_FRAME`] bytes |
//! | 1 | end | empty: the sender has no more blocks |
//! | 2 | error | UTF-8 text, at most [`MAX_ERROR_FRAME`] bytes: the sender gives up |

use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest block frame's payload: the store's largest block.
pub(crate) const MAX_BLOCK_FRAME: usize = replic8_store::MAX_BLOCK_SIZE;
/// The largest error frame's payload: a reason is one line, never a document.
pub(crate) const MAX_ERROR_FRAME: usize = 64 * 1024;
/// Bytes in a frame header.
pub(crate) const HEADER: usize = 5;

const BLOCK: u8 = 0;
const END: u8 = 1;
const ERROR: u8 = 2;

/// One frame of the binary mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// One block.
    Block(Vec<u8>),
    /// The sender has no more blocks.
    End,
    /// The sender gives up, saying why.
    Error(String),
}

/// What reading a frame can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The header names no kind of frame.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The header announces a payload over its kind's limit (or an empty block, or an
    /// end frame with a payload).
    #[error("a {kind} frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The frame's kind.
        kind: &'static str,
        /// The announced length.
        len: usize,
        /// The kind's limit.
        max: usize,
    },
    /// A block frame with no payload: every block has at least one byte.
    #[error("an empty block frame")]
    EmptyBlock,
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame")]
    Truncated,
    /// An error frame's text is not UTF-8.
    #[error("an error frame that is not UTF-8")]
    NotText,
    /// Reading failed.
    #[error(transparent)]
    Io(std::io::Error),
}

impl Frame {
    /// The header of a block frame of `len` bytes.
    pub(crate) fn block_header(len: usize) -> [u8; HEADER] {
        header(BLOCK, len)
    }

    /// Appends the frame's bytes to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let (kind, payload): (u8, &[u8]) = match self {
            Frame::Block(b) => (BLOCK, b),
            Frame::End => (END, &[]),
            Frame::Error(text) => {
                // Cut at a character boundary: the receiver refuses a longer one.
                let mut cut = text.len().min(MAX_ERROR_FRAME);
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                (ERROR, &text.as_bytes()[..cut])
            }
        };
        out.extend_from_slice(&header(kind, payload.len()));
        out.extend_from_slice(payload);
    }

    /// The frame's bytes.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

fn header(kind: u8, len: usize) -> [u8; HEADER] {
    let mut h = [kind, 0, 0, 0, 0];
    // Every length we encode is bounded by a limit far below 4 GiB.
    h[1..].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    h
}

/// A header's kind and payload length, checked against the kind's limit.
fn parse_header(h: [u8; HEADER]) -> Result<(u8, usize), FrameError> {
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    let (name, max) = match h[0] {
        BLOCK => ("block", MAX_BLOCK_FRAME),
        END => ("end", 0),
        ERROR => ("error", MAX_ERROR_FRAME),
        other => return Err(FrameError::UnknownKind(other)),
    };
    if len > max {
        return Err(FrameError::TooLarge {
            kind: name,
            len,
            max,
        });
    }
    if h[0] == BLOCK && len == 0 {
        return Err(FrameError::EmptyBlock);
    }
    Ok((h[0], len))
}

/// Reads one frame; `Ok(None)` if the stream ended cleanly before a frame began. The
/// payload is allocated only once its header passed the limits.
pub(crate) async fn read_frame(
    r: &mut (impl AsyncRead + Unpin),
) -> Result<Option<Frame>, FrameError> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut h[got..]).await.map_err(FrameError::Io)? {
            0 if got == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            n => got += n,
        }
    }
    let (kind, len) = parse_header(h)?;
    // Read into the buffer's spare room (never zeroed first: a block frame is up to a
    // mebibyte, every one of an append), and never past this frame.
    let mut payload = Vec::with_capacity(len);
    while payload.len() < len {
        let rest = (len - payload.len()) as u64;
        let n = (&mut *r)
            .take(rest)
            .read_buf(&mut payload)
            .await
            .map_err(FrameError::Io)?;
        if n == 0 {
            return Err(FrameError::Truncated);
        }
    }
    Ok(Some(match kind {
        BLOCK => Frame::Block(payload),
        END => Frame::End,
        _ => Frame::Error(String::from_utf8(payload).map_err(|_| FrameError::NotText)?),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn decode(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
        read_frame(&mut &bytes[..]).await
    }

    #[tokio::test]
    async fn frames_round_trip() {
        for frame in [
            Frame::Block(vec![7; 1000]),
            Frame::Block(vec![1; MAX_BLOCK_FRAME]),
            Frame::End,
            Frame::Error("no such feed".into()),
        ] {
            let bytes = frame.to_bytes();
            assert_eq!(decode(&bytes).await.unwrap(), Some(frame));
        }
        assert_eq!(decode(&[]).await.unwrap(), None, "a clean end");
    }

    #[tokio::test]
    async fn limits_are_checked_on_the_header() {
        // A header announcing 4 GiB fails before anything is allocated or read.
        let err = decode(&[BLOCK, 0xff, 0xff, 0xff, 0xff]).await.unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { kind: "block", .. }),
            "{err}"
        );
        let over = Frame::block_header(MAX_BLOCK_FRAME + 1);
        assert!(matches!(
            decode(&over).await.unwrap_err(),
            FrameError::TooLarge { .. }
        ));
        assert!(matches!(
            decode(&[END, 0, 0, 0, 1, 0]).await.unwrap_err(),
            FrameError::TooLarge { kind: "end", .. }
        ));
        assert!(matches!(
            decode(&Frame::block_header(0)).await.unwrap_err(),
            FrameError::EmptyBlock
        ));
        assert!(matches!(
            decode(&[9, 0, 0, 0, 0]).await.unwrap_err(),
            FrameError::UnknownKind(9)
        ));
    }

    #[tokio::test]
    async fn a_cut_frame_is_truncated() {
        let bytes = Frame::Block(vec![3; 100]).to_bytes();
        for cut in [1, HEADER, HEADER + 50] {
            assert!(matches!(
                decode(&bytes[..cut]).await.unwrap_err(),
                FrameError::Truncated
            ));
        }
        assert!(matches!(
            decode(&[ERROR, 0, 0, 0, 2, 0xff, 0xfe]).await.unwrap_err(),
            FrameError::NotText
        ));
    }

    #[test]
    fn a_long_error_is_cut_at_a_character_boundary() {
        let text = "é".repeat(MAX_ERROR_FRAME);
        let bytes = Frame::Error(text).to_bytes();
        assert!(bytes.len() - HEADER <= MAX_ERROR_FRAME);
        assert!(std::str::from_utf8(&bytes[HEADER..]).is_ok());
    }
}
