//! The daemon's control socket: a Unix socket in the data directory (`control.sock`,
//! mode 0600 in a 0700 directory, so only the daemon's user can open it) that the
//! `replic8` client commands talk to.
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
use crate::{FeedKey, Headers, Topic};

/// File name of the control socket inside the data directory.
pub const SOCKET_FILE: &str = "control.sock";
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
    /// Join a topic, or a feed's discovery key if the store holds a feed with that key.
    Join {
        /// Topic or feed key, hex.
        target: String,
        /// Announce.
        announce: bool,
        /// Look up.
        lookup: bool,
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
    /// Bind `dir/control.sock` (replacing a stale socket no daemon answers on) with mode
    /// 0600, and serve `node`'s requests on it.
    pub async fn bind(dir: &Path, node: NodeHandle) -> std::io::Result<ControlServer> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(SOCKET_FILE);
        if path.exists() {
            if UnixStream::connect(&path).await.is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("a daemon already listens on {}", path.display()),
                ));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, &node).await {
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
        } => {
            let (topic, feed) = target_topic(node, &target).await?;
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
