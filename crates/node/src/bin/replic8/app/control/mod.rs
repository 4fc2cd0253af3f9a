//! The daemon's control socket: a Unix socket that the `replic8` client commands talk to,
//! `run/control.sock` in the data directory ([`socket_path`]).
//!
//! Only the daemon's own user may use it, checked twice. The socket is bound inside
//! `run/`, a directory created with mode 0700 and checked (owned by the daemon's uid, no
//! access for group or others) before the bind, so the socket is never reachable by
//! another user, not even for the moment between the bind and its chmod to 0600. And
//! every accepted connection's peer credentials (`SO_PEERCRED`) must carry the daemon's
//! uid, root included: any other uid gets one error line and the connection is closed.
//! The data directory itself is checked first ([`replic8_node::persist::check_dir`]).
//!
//! The protocol is one JSON [`Request`] line per connection, answered by one JSON
//! [`Response`] line, or, for a request that follows something live (`events`, ...), by
//! a [`Response`] line per item until the daemon has no more or the client hangs up
//! ([`request_stream`]). A request line is at most [`MAX_REQUEST`] bytes; a longer one
//! ends the connection with an error.
//!
//! Blocks never travel in JSON. Two requests switch the connection into the binary
//! mode after the daemon's first answer line: `feed_append_blocks` (the client sends
//! block frames, then an end frame; the daemon answers one final JSON line) and
//! `feed_read_blocks` (the daemon sends block frames, then an end frame or an error
//! frame). A frame is a kind byte, a big-endian `u32` length and the payload; a block
//! frame holds one block of at most the store's largest block size, and a frame over
//! its limit ends the request with an error before its payload is read ([`frames`]).
//! The first answer line comes only after the daemon checked the key, the feed and the
//! range, so a request that cannot succeed fails before any block moves. Both sides
//! hold at most a few MiB: the daemon appends in batches of about 8 MiB with one more
//! filling while one is stored, and reads ahead at most two batches while sending; the
//! socket's own flow control holds back a sender that outruns them
//! ([`append_blocks`], [`read_blocks`] are the client's side).
//!
//! Modules: `handle` answers each request from the node's handle; `feeds` the feed
//! requests (get with progress, list, info); `frames` the binary mode's frames; `blocks`
//! the daemon's side and `stream` the client's side of the binary mode; `namespaces`
//! opens, lists and closes namespaces and lists and answers offers; `events` turns
//! [`NodeEvent`](replic8_node::NodeEvent)s into JSON lines.

mod blocks;
mod events;
mod feeds;
pub(crate) mod frames;
mod handle;
mod namespaces;
mod stream;

pub(crate) use stream::{append_blocks, read_blocks};

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use replic8_node::node::NodeHandle;
use replic8_node::persist::{self, PersistError};

/// 64 hex digits as 32 bytes.
fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|_| format!("{text:?} is not 64 hex digits"))?;
    Ok(out)
}

/// The private directory inside the data directory that holds the socket (mode 0700).
pub(crate) const RUN_DIR: &str = "run";
/// File name of the control socket inside [`RUN_DIR`].
pub(crate) const SOCKET_FILE: &str = "control.sock";
/// How long a refused client has to finish sending before its connection is closed: we
/// read what it sent before closing, so that it reads our error line and not a reset.
const REFUSED_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The control socket of the daemon whose data directory is `data_dir`.
pub(crate) fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(RUN_DIR).join(SOCKET_FILE)
}
/// Largest request line: requests carry keys, names and headers, never blocks (those
/// travel in the binary mode's frames), so 1 MiB leaves room for thousands of keys.
pub(crate) const MAX_REQUEST: usize = 1 << 20;

/// A client's request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub(crate) enum Request {
    /// Create a writable feed.
    FeedNew,
    /// Append blocks in the binary mode: the daemon checks that the feed is held and
    /// writable and answers a ready line (`length`, `max_block`); the client then sends
    /// block frames and an end frame, and the daemon answers one final line (`length`,
    /// `blocks`, `bytes`) or an error (see [`frames`]).
    FeedAppendBlocks {
        /// The feed, hex.
        key: String,
    },
    /// Read blocks `start..end` in the binary mode: the daemon checks the feed and the
    /// range and answers a ready line (`start`, `end`), then sends a block frame per
    /// block and an end frame; with `follow`, each block as it is stored here, until the
    /// client hangs up (see [`frames`]).
    FeedReadBlocks {
        /// The feed, hex.
        key: String,
        /// First block.
        #[serde(default)]
        start: u64,
        /// End, exclusive; `None`: the feed's length (or, with `follow`, no end).
        #[serde(default)]
        end: Option<u64>,
        /// Keep sending blocks as they are stored here.
        #[serde(default)]
        follow: bool,
    },
    /// A feed's length, head and whether it is writable.
    FeedInfo {
        /// The feed, hex.
        key: String,
    },
    /// Open a feed by key (a public replica if not held), join its discovery key, and
    /// stream progress lines until it is in sync with a peer that has it (or, with
    /// `follow`, until the client hangs up).
    FeedGet {
        /// The feed, hex.
        key: String,
        /// Keep following after the first sync.
        #[serde(default)]
        follow: bool,
    },
    /// Every held feed: key, writable, length, stored blocks and bytes, namespaces;
    /// answered a page at a time, a line `{"feeds": [...], "more": bool}` per page of
    /// at most 1,000 feeds in key order, the last with `"more": false` (the daemon
    /// never builds the whole list).
    FeedList,
    /// Share a feed in a namespace with headers.
    Share {
        /// The namespace.
        namespace: String,
        /// The feed, hex.
        key: String,
        /// Headers.
        headers: Vec<(String, String)>,
    },
    /// Join a held feed's discovery key, or with `topic` a raw 32-byte topic. Answered
    /// as soon as the topic is joined (announcing and looking up go on in the
    /// background); with `watch`, a line per peer that comes up or goes down and one when
    /// the first lookup round is done, until the client hangs up.
    Join {
        /// Topic or feed key, hex.
        target: String,
        /// Announce.
        announce: bool,
        /// Look up.
        lookup: bool,
        /// `target` is a topic, not a feed key.
        #[serde(default)]
        topic: bool,
        /// Stream the peers as they arrive.
        #[serde(default)]
        watch: bool,
    },
    /// Leave a topic (or a held feed's discovery key).
    Leave {
        /// Topic or feed key, hex.
        target: String,
    },
    /// The connected peers.
    Peers,
    /// Topics, peers and counters (the feed store's under `feed_store`, the sessions'
    /// summed under `session_totals`).
    Status,
    /// The node's events as they happen, one JSON object per line, until the client
    /// hangs up.
    Events,
    /// Open a namespace (or change the policy of an open one) and persist it.
    NamespaceOpen {
        /// The name.
        name: String,
        /// The secret, 64 hex digits (the client read it from a file or stdin).
        secret: Option<String>,
        /// `all`, `held`, `none` or `manual`; `None`: the default.
        accept: Option<String>,
        /// Accept only feeds with each of these headers (`accept` all).
        headers: Vec<(String, String)>,
        /// Forward accepted feeds; `None`: the default.
        forward: Option<bool>,
    },
    /// The open namespaces (never their secrets).
    NamespaceList,
    /// Close a namespace.
    NamespaceClose {
        /// The name.
        name: String,
    },
    /// Accept or reject feeds offered in a manual namespace.
    Decide {
        /// The namespace.
        namespace: String,
        /// The feeds, hex.
        keys: Vec<String>,
        /// Accept (else reject).
        accept: bool,
    },
    /// The recent offers; with `follow`, then each new decision as it happens, until
    /// the client hangs up.
    Offers {
        /// Stream new decisions after the log.
        follow: bool,
    },
}

/// The daemon's answer: `{"ok": ...}` or `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Response {
    /// It worked; the value depends on the request.
    Ok(serde_json::Value),
    /// It failed; one line saying why.
    Error(String),
}

/// What talking to the daemon can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    /// No daemon listens on the socket.
    #[error("no daemon at {path} ({source}); start one with: replic8 daemon")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why the connection failed.
        source: std::io::Error,
    },
    /// The socket failed mid-request.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon's answer does not parse.
    #[error("bad answer from the daemon: {0}")]
    Decode(#[from] serde_json::Error),
    /// The daemon refused or failed the request.
    #[error("{0}")]
    Daemon(String),
    /// A block size the binary mode cannot carry.
    #[error("block size {0} is not in 1..={max}", max = frames::MAX_BLOCK_FRAME)]
    BlockSize(usize),
    /// The daemon sent a frame that fails its checks.
    #[error("bad frame from the daemon: {0}")]
    Frame(#[from] frames::FrameError),
    /// The daemon closed the connection before its answer or end frame.
    #[error("the daemon closed the connection before the end of its answer")]
    Unfinished,
    /// Reading what was to be appended failed.
    #[error("reading the input: {0}")]
    Input(std::io::Error),
    /// Writing the blocks out failed.
    #[error("writing the output: {0}")]
    Output(std::io::Error),
}

/// What binding the control socket can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BindError {
    /// The data directory or `run/` is unsafe (others can write to it, or another user
    /// owns it) or cannot be read.
    #[error(transparent)]
    Dir(#[from] PersistError),
    /// Another daemon answers on the socket.
    #[error("a daemon already listens on {0}")]
    InUse(PathBuf),
    /// Creating `run/`, removing a stale socket or binding failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// Connects to the daemon whose socket is `path` and sends `req`'s line.
async fn open(path: &Path, req: &Request) -> Result<UnixStream, ControlError> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    Ok(stream)
}

/// Send one request to the daemon whose socket is `path`; its `ok` value.
pub(crate) async fn request(path: &Path, req: &Request) -> Result<serde_json::Value, ControlError> {
    let mut stream = open(path, req).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    match serde_json::from_slice(&answer)? {
        Response::Ok(v) => Ok(v),
        Response::Error(e) => Err(ControlError::Daemon(e)),
    }
}

/// Send one request whose answer is a stream of lines (`events`, ...) to the daemon
/// whose socket is `path`, and hand each line's `ok` value to `each` until it breaks,
/// the daemon ends the stream, or the daemon answers an error.
pub(crate) async fn request_stream(
    path: &Path,
    req: &Request,
    mut each: impl FnMut(serde_json::Value) -> std::io::Result<ControlFlow<()>>,
) -> Result<(), ControlError> {
    // The write half stays open: the daemon takes its closing for a hang-up.
    let (read, _write) = open(path, req).await?.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str(&line)? {
            Response::Ok(v) => {
                if each(v)?.is_break() {
                    break;
                }
            }
            Response::Error(e) => return Err(ControlError::Daemon(e)),
        }
    }
    Ok(())
}

/// What the daemon answers a request with: one value, or a stream of items (each an
/// `ok` line, or an `error` line that ends it).
#[derive(Debug)]
pub(crate) enum Answer {
    /// One answer line.
    One(serde_json::Value),
    /// A line per item until the sender is dropped (or sends an error).
    Stream(mpsc::Receiver<Result<serde_json::Value, String>>),
}

/// Items a streamed answer may queue for a client that reads slowly; a producer that
/// finds the queue full waits. What it follows (the node's event or offer channels) keeps
/// its own bounded buffer: what a slow client made it drop is reported as a `lagged`
/// line.
pub(crate) const STREAM_QUEUE: usize = 256;

/// The daemon's read buffer on a connection: whole block frames of the usual 64 KiB
/// blocks arrive in a few reads.
const READ_BUFFER: usize = 256 << 10;

/// A listening control socket; dropping it stops accepting (the file stays until
/// [`ControlServer::close`]).
#[derive(Debug)]
#[must_use = "dropping the server stops it"]
pub(crate) struct ControlServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Check the data directory `dir`, create (or check) `dir/run` with mode 0700, bind
    /// `dir/run/control.sock` there (replacing a stale socket no daemon answers on) with
    /// mode 0600, and serve `node`'s requests to connections of this process's uid.
    pub(crate) async fn bind(dir: &Path, node: NodeHandle) -> Result<ControlServer, BindError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| BindError::Io { path, source }
        };
        persist::check_dir(dir)?;
        let run = dir.join(RUN_DIR);
        match std::fs::DirBuilder::new().mode(0o700).create(&run) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&run)(e)),
        }
        // Nobody but us may even look inside: the socket is reachable only through here.
        persist::check_dir_mode(&run, 0o077)?;
        let uid = persist::current_uid()?;
        let path = run.join(SOCKET_FILE);
        if std::fs::symlink_metadata(&path).is_ok() {
            if UnixStream::connect(&path).await.is_ok() {
                return Err(BindError::InUse(path));
            }
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        let listener = UnixListener::bind(&path).map_err(io(&path))?;
        // Not what keeps others out (`run/` does); it keeps the file honest if the
        // directory is ever loosened by hand.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io(&path))?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let node = node.clone();
                tokio::spawn(async move {
                    let result = match stream.peer_cred() {
                        Ok(cred) if cred.uid() == uid => serve(stream, &node).await,
                        Ok(cred) => {
                            tracing::warn!(
                                peer_uid = cred.uid(),
                                peer_pid = cred.pid(),
                                "control connection refused: not the daemon's uid {uid}"
                            );
                            refuse(stream, cred.uid(), uid).await
                        }
                        Err(e) => Err(e),
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "control connection failed");
                    }
                });
            }
        });
        Ok(ControlServer { path, task })
    }

    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Stop accepting and remove the socket file.
    pub(crate) fn close(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Tells a client of another uid that it may not use this socket, in one line, and
/// closes the connection once it stopped sending (bounded in bytes and time).
async fn refuse(stream: UnixStream, peer: u32, uid: u32) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let response = Response::Error(format!(
        "uid {peer} may not use this control socket: only uid {uid}, the daemon's, may"
    ));
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await?;
    let mut rest = read.take(MAX_REQUEST as u64);
    let _ = tokio::time::timeout(
        REFUSED_DRAIN,
        tokio::io::copy(&mut rest, &mut tokio::io::sink()),
    )
    .await;
    Ok(())
}

async fn serve(stream: UnixStream, node: &NodeHandle) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(READ_BUFFER, read).take(MAX_REQUEST as u64 + 1);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await?;
    let answer = if line.len() > MAX_REQUEST {
        Err(format!("request over {MAX_REQUEST} bytes"))
    } else {
        match serde_json::from_slice::<Request>(&line) {
            Ok(Request::FeedAppendBlocks { key }) => {
                blocks::append(node, &key, reader.into_inner(), &mut write).await?;
                return write.shutdown().await;
            }
            Ok(Request::FeedReadBlocks {
                key,
                start,
                end,
                follow,
            }) => {
                let range = blocks::ReadRange { start, end, follow };
                blocks::read(node, &key, range, reader.into_inner(), &mut write).await?;
                return write.shutdown().await;
            }
            Ok(req) => handle::handle(node, req).await,
            Err(e) => Err(format!("bad request: {e}")),
        }
    };
    match answer {
        Ok(Answer::One(v)) => write_line(&mut write, &Response::Ok(v)).await?,
        Err(e) => write_line(&mut write, &Response::Error(e)).await?,
        Ok(Answer::Stream(mut items)) => {
            // The client sends nothing after its request: a read that returns means it
            // hung up, and the stream (and whatever feeds it) stops.
            let mut rest = [0u8; 64];
            loop {
                tokio::select! {
                    item = items.recv() => match item {
                        Some(Ok(v)) => write_line(&mut write, &Response::Ok(v)).await?,
                        Some(Err(e)) => {
                            write_line(&mut write, &Response::Error(e)).await?;
                            break;
                        }
                        None => break,
                    },
                    _ = reader.read(&mut rest) => break,
                }
            }
        }
    }
    write.shutdown().await
}

async fn write_line(
    write: &mut (impl tokio::io::AsyncWrite + Unpin),
    response: &Response,
) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}
