//! The client's side of the binary mode: [`append_blocks`] sends what it reads cut into
//! blocks, [`read_blocks`] writes a feed's blocks out as they come.

use std::path::Path;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::frames::{read_frame, Frame, HEADER, MAX_BLOCK_FRAME};
use super::{open, ControlError, Request, Response, MAX_REQUEST};

/// How much input the client reads at a time (rounded down to whole blocks): large
/// reads, and few large writes to the socket.
const INPUT_CHUNK: usize = 4 << 20;

/// The client's read buffer for the daemon's frames.
const FRAME_BUFFER: usize = 1 << 20;

/// Reads one answer line: its `ok` value, or the daemon's error.
async fn read_answer(
    answers: &mut BufReader<impl AsyncRead + Unpin>,
) -> Result<Value, ControlError> {
    let mut line = Vec::new();
    (&mut *answers)
        .take(MAX_REQUEST as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if line.is_empty() {
        return Err(ControlError::Unfinished);
    }
    match serde_json::from_slice(&line)? {
        Response::Ok(v) => Ok(v),
        Response::Error(e) => Err(ControlError::Daemon(e)),
    }
}

/// Fills `buf` from `input` unless it ends first; how much it filled.
async fn fill(input: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Sends what `input` holds as block frames of `block_size` bytes, then an end frame; on
/// a failed read, an error frame instead.
async fn send_all(
    input: &mut (impl AsyncRead + Unpin),
    write: &mut (impl AsyncWrite + Unpin),
    block_size: usize,
) -> Result<(), ControlError> {
    let chunk = block_size * (INPUT_CHUNK / block_size).max(1);
    let mut buf = vec![0u8; chunk];
    let mut out = Vec::with_capacity(chunk + (chunk / block_size + 2) * HEADER);
    loop {
        let filled = match fill(input, &mut buf).await {
            Ok(filled) => filled,
            Err(e) => {
                let why = format!("reading the input: {e}");
                write.write_all(&Frame::Error(why).to_bytes()).await?;
                return Err(ControlError::Input(e));
            }
        };
        out.clear();
        for block in buf[..filled].chunks(block_size) {
            out.extend_from_slice(&Frame::block_header(block.len()));
            out.extend_from_slice(block);
        }
        let end = filled < buf.len();
        if end {
            Frame::End.encode(&mut out);
        }
        write.write_all(&out).await?;
        if end {
            return Ok(());
        }
    }
}

/// Appends everything `input` holds to the feed `key` of the daemon whose socket is
/// `path`, cut into blocks of `block_size` bytes (the last may be shorter), and returns
/// the daemon's final answer (`length`, `blocks`, `bytes`). Nothing is sent unless the
/// daemon holds the feed writable; if the input fails to read, the daemon drops the
/// blocks it has not yet stored and the answer says how far the feed got.
pub(crate) async fn append_blocks(
    path: &Path,
    key: &str,
    mut input: impl AsyncRead + Unpin,
    block_size: usize,
) -> Result<Value, ControlError> {
    if block_size == 0 || block_size > MAX_BLOCK_FRAME {
        return Err(ControlError::BlockSize(block_size));
    }
    let request = Request::FeedAppendBlocks {
        key: key.to_owned(),
    };
    let (read, mut write) = open(path, &request).await?.into_split();
    let mut answers = BufReader::new(read);
    read_answer(&mut answers).await?;
    let send = send_all(&mut input, &mut write, block_size);
    tokio::pin!(send);
    tokio::select! {
        sent = &mut send => match sent {
            Ok(()) => read_answer(&mut answers).await,
            // The daemon may have ended the request and said why.
            Err(e @ (ControlError::Io(_) | ControlError::Input(_))) => {
                match read_answer(&mut answers).await {
                    Err(daemon @ ControlError::Daemon(_)) => Err(daemon),
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        },
        // An answer before our end frame: the daemon failed the request.
        early = read_answer(&mut answers) => match early {
            Ok(_) => Err(ControlError::Unfinished),
            Err(e) => Err(e),
        },
    }
}

/// Writes blocks `start..end` of the feed `key` (end `None`: the feed's length; with
/// `follow`, no end: each block as soon as the daemon stores it, until the daemon stops)
/// to `out`, flushing whenever no more has arrived; the count of blocks written.
pub(crate) async fn read_blocks(
    path: &Path,
    key: &str,
    start: u64,
    end: Option<u64>,
    follow: bool,
    out: &mut impl std::io::Write,
) -> Result<u64, ControlError> {
    let request = Request::FeedReadBlocks {
        key: key.to_owned(),
        start,
        end,
        follow,
    };
    // The write half stays open: the daemon takes its closing for a hang-up.
    let (read, _write) = open(path, &request).await?.into_split();
    let mut frames = BufReader::with_capacity(FRAME_BUFFER, read);
    read_answer(&mut frames).await?;
    let mut written = 0;
    loop {
        match read_frame(&mut frames).await? {
            Some(Frame::Block(block)) => {
                out.write_all(&block).map_err(ControlError::Output)?;
                written += 1;
                if frames.buffer().is_empty() {
                    out.flush().map_err(ControlError::Output)?;
                }
            }
            Some(Frame::End) => {
                out.flush().map_err(ControlError::Output)?;
                return Ok(written);
            }
            Some(Frame::Error(why)) => {
                out.flush().map_err(ControlError::Output)?;
                return Err(ControlError::Daemon(why));
            }
            None => return Err(ControlError::Unfinished),
        }
    }
}
