//! The daemon's control socket: a Unix socket that the `replic8` client commands talk to,
//! `run/control.sock` in the data directory ([`socket_path`]).
//!
//! Only the daemon's own user may use it, checked twice. The socket is bound inside
//! `run/`, a directory created with mode 0700 and checked (owned by the daemon's uid, no
//! access for group or others) before the bind, so the socket is never reachable by
//! another user, not even for the moment between the bind and its chmod to 0600. And
//! every accepted connection's peer credentials (`SO_PEERCRED`) must carry the daemon's
//! uid, root included: any other uid gets one error line and the connection is closed.
//! The data directory itself is checked first ([`crate::persist::check_dir`]).
//!
//! The protocol is one JSON [`Request`] per line and one JSON [`Response`] line per
//! request. A request line is at most [`MAX_REQUEST`] bytes; a longer one ends the
//! connection with an error. Block data travels as hex.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::node::{JoinOptions, NodeHandle};
use crate::persist::{self, PersistError};
use crate::{FeedKey, Headers, Topic};

/// The private directory inside the data directory that holds the socket (mode 0700).
pub const RUN_DIR: &str = "run";
/// File name of the control socket inside [`RUN_DIR`].
pub const SOCKET_FILE: &str = "control.sock";
/// How long a refused client has to finish sending before its connection is closed: we
/// read what it sent before closing, so that it reads our error line and not a reset.
const REFUSED_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The control socket of the daemon whose data directory is `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(RUN_DIR).join(SOCKET_FILE)
}
/// Largest request line: 64 MiB of hex, 32 MiB of blocks per append request.
pub const MAX_REQUEST: usize = 64 << 20;

/// A client's request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Create a writable feed.
    FeedNew,
    /// Append blocks (hex) to a feed.
    FeedAppend {
        /// The feed, hex.
        key: String,
        /// The blocks, hex.
        blocks: Vec<String>,
    },
    /// Read blocks `start..end` (end `None`: the feed's length).
    FeedCat {
        /// The feed, hex.
        key: String,
        /// First block.
        start: u64,
        /// End, exclusive.
        end: Option<u64>,
    },
    /// A feed's length, head and whether it is writable.
    FeedInfo {
        /// The feed, hex.
        key: String,
    },
    /// Share a feed in a namespace with headers.
    Share {
        /// The namespace.
        namespace: String,
        /// The feed, hex.
        key: String,
        /// Headers.
        headers: Vec<(String, String)>,
    },
    /// Join a held feed's discovery key, or with `topic` a raw 32-byte topic.
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
    },
    /// Leave a topic (or a held feed's discovery key).
    Leave {
        /// Topic or feed key, hex.
        target: String,
    },
    /// The connected peers.
    Peers,
    /// Topics, peers and counters.
    Status,
}

/// The daemon's answer: `{"ok": ...}` or `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// It worked; the value depends on the request.
    Ok(serde_json::Value),
    /// It failed; one line saying why.
    Error(String),
}

/// What talking to the daemon can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
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
}

/// What binding the control socket can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
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

/// Send one request to the daemon whose socket is `path`; its `ok` value.
pub async fn request(path: &Path, req: &Request) -> Result<serde_json::Value, ControlError> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    match serde_json::from_slice(&answer)? {
        Response::Ok(v) => Ok(v),
        Response::Error(e) => Err(ControlError::Daemon(e)),
    }
}

/// A listening control socket; dropping it stops accepting (the file stays until
/// [`ControlServer::close`]).
#[derive(Debug)]
#[must_use = "dropping the server stops it"]
pub struct ControlServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Check the data directory `dir`, create (or check) `dir/run` with mode 0700, bind
    /// `dir/run/control.sock` there (replacing a stale socket no daemon answers on) with
    /// mode 0600, and serve `node`'s requests to connections of this process's uid.
    pub async fn bind(dir: &Path, node: NodeHandle) -> Result<ControlServer, BindError> {
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
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop accepting and remove the socket file.
    pub fn close(self) {
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
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await?;
    let response = if line.len() > MAX_REQUEST {
        Response::Error(format!("request over {MAX_REQUEST} bytes"))
    } else {
        match serde_json::from_slice::<Request>(&line) {
            Ok(req) => match handle(node, req).await {
                Ok(v) => Response::Ok(v),
                Err(e) => Response::Error(e),
            },
            Err(e) => Response::Error(format!("bad request: {e}")),
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|_| format!("{text:?} is not 64 hex digits"))?;
    Ok(out)
}

/// A topic for `join`/`leave`: a held feed's discovery key, else the bytes as a topic.
async fn target_topic(node: &NodeHandle, text: &str) -> Result<(Topic, bool), String> {
    let bytes = parse_key(text)?;
    let feed = FeedKey(bytes);
    if node.open_feed(feed).await.is_ok() {
        Ok((Topic(feed.discovery_key().0), true))
    } else {
        Ok((Topic(bytes), false))
    }
}

async fn handle(node: &NodeHandle, req: Request) -> Result<serde_json::Value, String> {
    use serde_json::json;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    Ok(match req {
        Request::FeedNew => {
            let key = node.create_feed().await.map_err(|x| e(&x))?;
            json!({ "key": hex::encode(key.0) })
        }
        Request::FeedAppend { key, blocks } => {
            let feed = FeedKey(parse_key(&key)?);
            let blocks = blocks
                .iter()
                .map(|b| hex::decode(b).map_err(|_| "a block is not hex".to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            let length = node.append(feed, blocks).await.map_err(|x| e(&x))?;
            json!({ "length": length })
        }
        Request::FeedCat { key, start, end } => {
            let feed = FeedKey(parse_key(&key)?);
            let end = match end {
                Some(end) => end,
                None => node.open_feed(feed).await.map_err(|x| e(&x))?.length,
            };
            if start > end {
                return Err(format!("start {start} is past end {end}"));
            }
            let blocks = node.read(feed, start..end).await.map_err(|x| e(&x))?;
            json!({ "blocks": blocks.iter().map(hex::encode).collect::<Vec<_>>() })
        }
        Request::FeedInfo { key } => {
            let info = node
                .open_feed(FeedKey(parse_key(&key)?))
                .await
                .map_err(|x| e(&x))?;
            json!({
                "key": hex::encode(info.key.0),
                "writable": info.writable,
                "length": info.length,
                "stored": info.stored,
                "byte_length": info.byte_length,
                "tree_hash": info.head.as_ref().map(|h| hex::encode(h.tree_hash)),
                "discovery_key": hex::encode(info.key.discovery_key().0),
            })
        }
        Request::Share {
            namespace,
            key,
            headers,
        } => {
            let mut h = Headers::new();
            for (k, v) in headers {
                h.insert(k, v.into_bytes()).map_err(|x| e(&x))?;
            }
            let offered = node
                .share(&namespace, FeedKey(parse_key(&key)?), h)
                .await
                .map_err(|x| e(&x))?;
            json!({ "offered_to": offered })
        }
        Request::Join {
            target,
            announce,
            lookup,
            topic,
        } => {
            let (topic, feed) = if topic {
                (Topic(parse_key(&target)?), false)
            } else {
                match target_topic(node, &target).await? {
                    (topic, true) => (topic, true),
                    (_, false) => {
                        return Err(format!(
                            "no feed {} is held here, so its discovery key is unknown; to \
                             join these 64 hex digits as a topic, add --topic",
                            &target[..10.min(target.len())]
                        ))
                    }
                }
            };
            let report = node
                .join(topic, JoinOptions { announce, lookup })
                .await
                .map_err(|x| e(&x))?;
            json!({
                "topic": topic.to_hex(),
                "feed": feed,
                "announced": report.announced.len(),
                "announce_failed": report.announce_failed.iter().map(|(_, why)| why.clone()).collect::<Vec<_>>(),
                "peers_found": report.peers_found,
            })
        }
        Request::Leave { target } => {
            let (topic, feed) = target_topic(node, &target).await?;
            node.leave(topic).await.map_err(|x| e(&x))?;
            json!({ "topic": topic.to_hex(), "feed": feed })
        }
        Request::Peers => {
            let peers = node.peers().await.map_err(|x| e(&x))?;
            serde_json::Value::Array(
                peers
                    .iter()
                    .map(|p| {
                        json!({
                            "key": hex::encode(p.key.as_bytes()),
                            "addr": p.addr.to_string(),
                            "initiator": format!("{:?}", p.initiator).to_lowercase(),
                            "rtt_ms": p.rtt.as_secs_f64() * 1e3,
                            "bytes_sent": p.bytes_sent,
                            "bytes_received": p.bytes_received,
                        })
                    })
                    .collect(),
            )
        }
        Request::Status => {
            let topics = node.topics().await.map_err(|x| e(&x))?;
            let peers = node.peers().await.map_err(|x| e(&x))?;
            let feeds = node.feed_stats().await.map_err(|x| e(&x))?;
            let dht = node.dht_status().await.map_err(|x| e(&x))?;
            let c = node.counters();
            json!({
                "dht": dht.map(|d| json!({
                    "id": hex::encode(d.id.0),
                    "addrs": d.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "server": d.server,
                    "nodes_v4": d.nodes_v4,
                    "nodes_v6": d.nodes_v6,
                    "queries_in": d.stats.queries_in,
                    "queries_answered": d.stats.queries_answered,
                    "queries_rate_limited": d.stats.queries_rate_limited,
                    "queries_out": d.stats.queries_out,
                    "responses_in": d.stats.responses_in,
                    "timeouts": d.stats.timeouts,
                    "announces_stored": d.stats.announces_stored,
                    "peers_stored": d.peers_stored,
                    "peers_found": d.peers_found.iter().map(|(ih, n)| json!({
                        "infohash": hex::encode(ih),
                        "peers": n,
                    })).collect::<Vec<_>>(),
                })),
                "key": hex::encode(node.key().as_bytes()),
                "listen": node.local_addr().to_string(),
                "topics": topics.iter().map(|t| json!({
                    "topic": t.topic.to_hex(),
                    "announce": t.announce,
                    "lookup": t.lookup,
                    "flushed": t.flushed,
                    "peers_found": t.peers_found,
                    "peers": t.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "peers": peers.len(),
                "sessions": c.sessions.get(),
                "bytes_in": c.bytes_in.get(),
                "bytes_out": c.bytes_out.get(),
                "blocks_verified": c.blocks_verified.get(),
                "feed_blocks_in": feeds.blocks_in,
                "feed_blocks_out": feeds.blocks_out,
                "feed_streams": feeds.streams,
            })
        }
    })
}
