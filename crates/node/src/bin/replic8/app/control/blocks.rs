//! The daemon's side of the binary mode: blocks in ([`append`]) and out ([`read`]) as
//! [`Frame`]s, each a pipeline of tasks joined by bounded queues, so that the socket and
//! the store work at the same time and neither side can make the other buffer without
//! bound. An append has three stages: the socket fills a batch, the blocking pool hashes
//! and signs the one before, and the store writes and syncs the one before that.

use serde_json::json;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::sync::mpsc;

use super::frames::{read_frame, Frame, MAX_BLOCK_FRAME};
use super::parse_key;
use super::{write_line, Response};
use replic8_node::node::{FeedError, NodeHandle};
use replic8_node::FeedKey;
use replic8_store::{AppendPreparer, Prepared};

/// An append batch is handed to the store once it holds this many bytes (or sooner, when
/// the store is free and nothing more has arrived): large enough that signing and the
/// durable write are paid per few MiB, small enough that the four batches an append
/// holds at most (filling, queued, hashing, being written) stay small.
const APPEND_BATCH_BYTES: usize = 8 << 20;

/// Batches that wait to be hashed while the next fills: one, so that reading the socket
/// overlaps appending and at most four batches are held.
const APPEND_QUEUE: usize = 1;

/// Bytes per store read while sending blocks (about: the count of blocks is taken from
/// the feed's average block size).
const READ_BATCH_BYTES: u64 = 8 << 20;

/// Batches read ahead of the socket while sending.
const READ_QUEUE: usize = 2;

/// The buffer that gathers frame headers and blocks into fewer writes while sending.
const WRITE_BUFFER: usize = 256 << 10;

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The feed of `key`, if it is held here and writable.
async fn writable(node: &NodeHandle, key: &str) -> Result<(FeedKey, u64), String> {
    let feed = FeedKey(parse_key(key)?);
    let info = node.open_feed(feed).await.map_err(text)?;
    if !info.writable {
        return Err(format!(
            "feed {} is a replica here: only its writer can append",
            &key[..10.min(key.len())]
        ));
    }
    Ok((feed, info.length))
}

/// `feed_append_blocks`: checks the feed, answers the ready line, then appends the block
/// frames that follow in batches until the end frame, and answers one final line: the
/// new length, or what failed and how far the feed got. A frame that fails its checks
/// ends the request; the blocks received since the last batch was handed to the store
/// are dropped, so a bad first frame appends nothing.
pub(super) async fn append<R, W>(
    node: &NodeHandle,
    key: &str,
    mut reader: BufReader<R>,
    write: &mut W,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (feed, length) = match writable(node, key).await {
        Ok(ok) => ok,
        Err(e) => return write_line(write, &Response::Error(e)).await,
    };
    let ready = json!({ "length": length, "max_block": MAX_BLOCK_FRAME });
    write_line(write, &Response::Ok(ready)).await?;

    let (tx, rx) = mpsc::channel::<Vec<Vec<u8>>>(APPEND_QUEUE);
    let appender = tokio::spawn(append_batches(node.clone(), feed, length, rx));

    let mut batch = Vec::new();
    let mut size = 0;
    let received: Result<(), String> = loop {
        match read_frame(&mut reader).await {
            Ok(Some(Frame::Block(block))) => {
                size += block.len();
                batch.push(block);
                if size >= APPEND_BATCH_BYTES {
                    size = 0;
                    if tx.send(std::mem::take(&mut batch)).await.is_err() {
                        break Ok(());
                    }
                } else if reader.buffer().is_empty() {
                    // Nothing more is at hand: give the store what we have if it is
                    // free, else wait for whichever comes first, the store or more bytes.
                    tokio::select! {
                        permit = tx.reserve() => match permit {
                            Ok(permit) => {
                                size = 0;
                                permit.send(std::mem::take(&mut batch));
                            }
                            Err(_) => break Ok(()),
                        },
                        _ = reader.fill_buf() => {}
                    }
                }
            }
            Ok(Some(Frame::End)) => {
                if !batch.is_empty() {
                    let _ = tx.send(std::mem::take(&mut batch)).await;
                }
                break Ok(());
            }
            Ok(Some(Frame::Error(why))) => break Err(format!("the client gave up: {why}")),
            Ok(None) => break Err("the client hung up before its end frame".into()),
            Err(e) => break Err(e.to_string()),
        }
    };
    drop(tx);
    let (length, blocks, bytes, failed) = appender
        .await
        .unwrap_or_else(|e| (length, 0, 0, Some(e.to_string())));
    let answer = match failed.map(Err).unwrap_or(received) {
        Ok(()) => Response::Ok(json!({ "length": length, "blocks": blocks, "bytes": bytes })),
        Err(why) => Response::Error(format!(
            "{why}; {blocks} block(s) appended before it, the feed's length is {length}"
        )),
    };
    write_line(write, &answer).await
}

/// What [`append_batches`] did: the feed's length, the blocks and bytes it appended,
/// and what failed, if anything did.
type Appended = (u64, u64, u64, Option<String>);

/// The appends of one request: what was appended, and the one being written.
struct Appending {
    length: u64,
    blocks: u64,
    bytes: u64,
    writing: Option<Writing>,
}

/// An append being written: its task, its block count and bytes, and the length it
/// ends at if the feed was where it was prepared.
struct Writing {
    task: tokio::task::JoinHandle<Result<u64, FeedError>>,
    blocks: u64,
    bytes: u64,
    end: u64,
}

impl Appending {
    /// Writes `prepared` on a task of its own (after the one before: call `settle`).
    fn write(&mut self, node: &NodeHandle, feed: FeedKey, prepared: Prepared) {
        let (n, size) = (
            prepared.blocks().len() as u64,
            prepared.blocks().iter().map(Vec::len).sum::<usize>() as u64,
        );
        let end = prepared.end();
        let node = node.clone();
        let task = tokio::spawn(async move { node.append_prepared(feed, prepared).await });
        self.writing = Some(Writing {
            task,
            blocks: n,
            bytes: size,
            end,
        });
    }

    /// Waits for the append being written and counts it: false if another append came
    /// first (it went after that one; the preparer is behind).
    async fn settle(&mut self) -> Result<bool, String> {
        let Some(w) = self.writing.take() else {
            return Ok(true);
        };
        let length = w.task.await.map_err(text)?.map_err(text)?;
        self.length = length;
        self.blocks += w.blocks;
        self.bytes += w.bytes;
        Ok(length == w.end)
    }

    /// The report, once whatever is being written is settled.
    async fn end(mut self, failed: Option<String>) -> Appended {
        let settled = self.settle().await.err();
        (self.length, self.blocks, self.bytes, failed.or(settled))
    }
}

/// Hashes and signs `batch` with `preparer` on the blocking pool.
async fn prepare(
    mut preparer: AppendPreparer,
    batch: Vec<Vec<u8>>,
) -> Result<(AppendPreparer, Prepared), String> {
    let (preparer, prepared) = tokio::task::spawn_blocking(move || {
        let prepared = preparer.prepare(batch);
        (preparer, prepared)
    })
    .await
    .map_err(text)?;
    Ok((preparer, prepared.map_err(text)?))
}

/// Appends the batches from `rx` to `feed` (at `length` when they start) in order, each
/// durable before the next is written. Each batch is hashed and signed on the blocking
/// pool while the one before is written and synced, so the store's sync wait does not
/// hold the stream up, and a batch becomes visible to peers only once it is durable.
async fn append_batches(
    node: NodeHandle,
    feed: FeedKey,
    length: u64,
    mut rx: mpsc::Receiver<Vec<Vec<u8>>>,
) -> Appended {
    let mut appending = Appending {
        length,
        blocks: 0,
        bytes: 0,
        writing: None,
    };
    let mut preparer = None;
    while let Some(batch) = rx.recv().await {
        let p = match preparer.take() {
            Some(p) => p,
            // The first batch, or the feed moved: prepare after the head once the append
            // being written is in it.
            None => match appending.settle().await {
                Ok(_) => match node.append_preparer(feed).await {
                    Ok(p) => p,
                    Err(e) => return appending.end(Some(e.to_string())).await,
                },
                Err(e) => return appending.end(Some(e)).await,
            },
        };
        let (p, prepared) = match prepare(p, batch).await {
            Ok(done) => done,
            Err(e) => return appending.end(Some(e)).await,
        };
        match appending.settle().await {
            Ok(true) => preparer = Some(p),
            // `prepared` follows a head the feed no longer has: it is hashed again when
            // written, and the next batch gets a new preparer.
            Ok(false) => {}
            Err(e) => return appending.end(Some(e)).await,
        }
        appending.write(&node, feed, prepared);
    }
    appending.end(None).await
}

/// Where a `feed_read_blocks` request reads.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadRange {
    pub(super) start: u64,
    pub(super) end: Option<u64>,
    pub(super) follow: bool,
}

/// `feed_read_blocks`: checks the feed and the range, answers the ready line, then sends
/// a block frame per block from `start` on, in order: up to `end` (default the feed's
/// length) then an end frame, or with `follow` for ever, each block as soon as it is
/// stored here, until the client hangs up. A failure is an error frame.
pub(super) async fn read<R, W>(
    node: &NodeHandle,
    key: &str,
    range: ReadRange,
    mut reader: BufReader<R>,
    write: &mut W,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut write = BufWriter::with_capacity(WRITE_BUFFER, write);
    let checked = async {
        let feed = FeedKey(parse_key(key)?);
        let mut state = node.subscribe_feed(feed).await.map_err(text)?;
        let info = node.open_feed(feed).await.map_err(text)?;
        state.borrow_and_update();
        let end = match (range.end, range.follow) {
            (Some(end), _) => Some(end),
            (None, false) => Some(info.length),
            (None, true) => None,
        };
        if let Some(end) = end {
            if range.start > end {
                return Err(format!("start {} is past end {end}", range.start));
            }
            if !range.follow && end > info.length {
                return Err(format!(
                    "end {end} is past the feed's length {}",
                    info.length
                ));
            }
        }
        let per_block = (info.byte_length / info.length.max(1)).max(1);
        let batch = (READ_BATCH_BYTES / per_block).clamp(1, 1024);
        Ok::<_, String>((feed, state, end, batch))
    };
    let (feed, mut state, end, batch) = match checked.await {
        Ok(ok) => ok,
        Err(e) => {
            write_line(&mut write, &Response::Error(e)).await?;
            return write.flush().await;
        }
    };
    write_line(
        &mut write,
        &Response::Ok(json!({ "start": range.start, "end": end })),
    )
    .await?;
    write.flush().await?;

    let (tx, mut rx) = mpsc::channel::<Result<Vec<Vec<u8>>, String>>(READ_QUEUE);
    let store = node.clone();
    let producer = tokio::spawn(async move {
        let mut at = range.start;
        loop {
            let stored = match store.open_feed(feed).await {
                Ok(info) => info.contiguous_length,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string())).await;
                    return;
                }
            };
            let until = end.map_or(stored, |end| end.min(stored));
            while at < until {
                let to = until.min(at + batch);
                let blocks = store.read(feed, at..to).await.map_err(text);
                let failed = blocks.is_err();
                if tx.send(blocks).await.is_err() || failed {
                    return;
                }
                at = to;
            }
            if end.is_some_and(|end| at >= end) {
                return;
            }
            if !range.follow {
                // Not following and a block before `end` is not stored here.
                let _ = tx.send(Err(format!("block {at} is not stored here"))).await;
                return;
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
            state.borrow_and_update();
        }
    });
    // Drop the producer when we stop, whatever the reason.
    let _producer = AbortOnDrop(producer);

    // The client sends nothing more: a read that returns means it hung up.
    let mut rest = [0u8; 64];
    loop {
        tokio::select! {
            item = rx.recv() => {
                let last = match item {
                    Some(Ok(blocks)) => {
                        for block in &blocks {
                            write.write_all(&Frame::block_header(block.len())).await?;
                            write.write_all(block).await?;
                        }
                        None
                    }
                    Some(Err(why)) => Some(Frame::Error(why)),
                    None => Some(Frame::End),
                };
                if let Some(last) = &last {
                    write.write_all(&last.to_bytes()).await?;
                }
                // Each batch goes out whole as soon as it is read: a follower sees each
                // append at once.
                write.flush().await?;
                if last.is_some() {
                    return Ok(());
                }
            }
            _ = reader.read(&mut rest) => return Ok(()),
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
