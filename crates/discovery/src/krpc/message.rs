//! KRPC messages (BEP 5) with the extensions a Mainline node meets today: `ip` (BEP 42),
//! `ro` (BEP 43), `nodes6` and `want` (BEP 32).
//!
//! Bytes become a [`Message`] through [`Message::decode`], which runs the bounded
//! bencode decoder and then checks every field it uses: lengths, types, ranges. A query
//! whose envelope is sound but whose arguments are not comes back as an error that still
//! carries its transaction id, so the caller can answer with a KRPC error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::bencode::{self, BencodeError, Value, KRPC_LIMITS};
use super::id::Id;

/// The longest transaction id accepted. BEP 5 leaves the length to the querier:
/// libtorrent sends 2 bytes, `mainline` 4, others up to 8; 16 leaves room and keeps the
/// id inline.
pub const MAX_TID_LEN: usize = 16;

/// The longest token accepted. libtorrent's tokens are 4 bytes, SHA-1 based ones 20.
pub const MAX_TOKEN_LEN: usize = 64;

/// KRPC error code 201: a generic error.
pub const ERROR_GENERIC: i64 = 201;
/// KRPC error code 202: a server error.
pub const ERROR_SERVER: i64 = 202;
/// KRPC error code 203: a protocol error (malformed packet, bad arguments, bad token).
pub const ERROR_PROTOCOL: i64 = 203;
/// KRPC error code 204: method unknown.
pub const ERROR_METHOD_UNKNOWN: i64 = 204;

/// A KRPC transaction id: up to [`MAX_TID_LEN`] bytes, kept exactly as received.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxId {
    len: u8,
    bytes: [u8; MAX_TID_LEN],
}

impl std::fmt::Debug for TxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TxId({})", hex::encode(self.as_bytes()))
    }
}

impl TxId {
    /// The id made of `bytes`, if it is not longer than [`MAX_TID_LEN`].
    pub fn new(bytes: &[u8]) -> Option<TxId> {
        if bytes.len() > MAX_TID_LEN {
            return None;
        }
        let mut out = [0u8; MAX_TID_LEN];
        out[..bytes.len()].copy_from_slice(bytes);
        Some(TxId {
            len: bytes.len() as u8,
            bytes: out,
        })
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A node as `nodes` and `nodes6` carry it: an id and where it listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// Its node id.
    pub id: Id,
    /// Its UDP address.
    pub addr: SocketAddr,
}

/// Which address families of nodes a querier wants back (BEP 32 `want`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Want {
    /// `n4`: IPv4 nodes in `nodes`.
    pub v4: bool,
    /// `n6`: IPv6 nodes in `nodes6`.
    pub v6: bool,
}

/// A query and its method-specific arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `ping`.
    Ping,
    /// `find_node`.
    FindNode {
        /// The id being looked for.
        target: Id,
        /// BEP 32 `want`; `None` when absent (answer with the querier's family).
        want: Option<Want>,
    },
    /// `get_peers`.
    GetPeers {
        /// The infohash.
        info_hash: Id,
        /// BEP 32 `want`.
        want: Option<Want>,
    },
    /// `announce_peer`.
    AnnouncePeer {
        /// The infohash.
        info_hash: Id,
        /// The port the peer listens on (ignored when `implied_port`).
        port: u16,
        /// Use the UDP source port of the query instead of `port`.
        implied_port: bool,
        /// The token from an earlier `get_peers` response.
        token: Vec<u8>,
    },
}

impl Query {
    /// The KRPC method name.
    pub fn method(&self) -> &'static str {
        match self {
            Query::Ping => "ping",
            Query::FindNode { .. } => "find_node",
            Query::GetPeers { .. } => "get_peers",
            Query::AnnouncePeer { .. } => "announce_peer",
        }
    }
}

/// A response. KRPC responses do not name their method, so this holds the union of what
/// the four methods return; the querier knows which one it asked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// The responder's node id.
    pub id: Id,
    /// IPv4 nodes (`nodes`).
    pub nodes: Vec<NodeInfo>,
    /// IPv6 nodes (`nodes6`).
    pub nodes6: Vec<NodeInfo>,
    /// Peers (`values`).
    pub values: Vec<SocketAddr>,
    /// The token for a later `announce_peer` (`get_peers` only).
    pub token: Option<Vec<u8>>,
}

/// The body of a KRPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// `y = q`.
    Query {
        /// The querier's node id.
        id: Id,
        /// The method and its arguments.
        query: Query,
    },
    /// `y = r`.
    Response(Response),
    /// `y = e`.
    Error {
        /// The error code (201-204).
        code: i64,
        /// The message, lossily decoded.
        message: String,
    },
}

/// One KRPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The transaction id.
    pub tid: TxId,
    /// What the message says.
    pub body: Body,
    /// BEP 43 `ro = 1`: the sender is read-only (queries only).
    pub read_only: bool,
    /// BEP 42 `ip`: the address the responder saw the query come from.
    pub ip: Option<SocketAddr>,
    /// `v`: the sender's client and version, when it is the usual 4 bytes.
    pub version: Option<[u8; 4]>,
}

/// Why a datagram is not a KRPC message we handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not bencode within the limits.
    #[error("bencode: {0}")]
    Bencode(#[from] BencodeError),
    /// The top-level value is not a dictionary.
    #[error("not a dictionary")]
    NotADict,
    /// No usable transaction id (`t` missing, not a string, or too long).
    #[error("bad transaction id")]
    BadTid,
    /// `y` is missing or not `q`, `r` or `e`.
    #[error("bad message type")]
    BadType,
    /// A response or error with a missing or malformed field.
    #[error("malformed {kind}: {reason}")]
    Malformed {
        /// `response` or `error`.
        kind: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
    /// A query whose arguments are missing or malformed: answer with error 203.
    #[error("malformed query: {reason}")]
    BadQuery {
        /// Its transaction id.
        tid: TxId,
        /// What was wrong.
        reason: &'static str,
    },
    /// A query for a method we do not serve: answer with error 204.
    #[error("unknown method")]
    UnknownMethod {
        /// Its transaction id.
        tid: TxId,
    },
}

impl Message {
    /// Decodes one datagram.
    pub fn decode(input: &[u8]) -> Result<Message, DecodeError> {
        let root = bencode::decode(input, &KRPC_LIMITS)?;
        if !matches!(root, Value::Dict(_)) {
            return Err(DecodeError::NotADict);
        }
        let tid = root
            .get(b"t")
            .and_then(Value::as_bytes)
            .and_then(TxId::new)
            .ok_or(DecodeError::BadTid)?;
        let read_only = root.get(b"ro").and_then(Value::as_int) == Some(1);
        let ip = root
            .get(b"ip")
            .and_then(Value::as_bytes)
            .and_then(decode_addr);
        let version = root
            .get(b"v")
            .and_then(Value::as_bytes)
            .and_then(|v| v.try_into().ok());
        let body = match root.get(b"y").and_then(Value::as_bytes) {
            Some(b"q") => decode_query(&root, tid)?,
            Some(b"r") => Body::Response(decode_response(&root)?),
            Some(b"e") => decode_error(&root)?,
            _ => return Err(DecodeError::BadType),
        };
        Ok(Message {
            tid,
            body,
            read_only,
            ip,
            version,
        })
    }

    /// Encodes the message as one datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut entries: Vec<(&[u8], Value<'_>)> = vec![(b"t", Value::Bytes(self.tid.as_bytes()))];
        if let Some(v) = &self.version {
            entries.push((b"v", Value::Bytes(v)));
        }
        let ip = self.ip.map(encode_addr);
        if let Some(ip) = &ip {
            entries.push((b"ip", Value::Bytes(ip)));
        }
        if self.read_only {
            entries.push((b"ro", Value::Int(1)));
        }
        // Compact encodings, kept alive while the value borrows them.
        let (nodes, nodes6, values);
        match &self.body {
            Body::Query { id, query } => {
                entries.push((b"y", Value::Bytes(b"q")));
                entries.push((b"q", Value::Bytes(query.method().as_bytes())));
                let mut args: Vec<(&[u8], Value<'_>)> = vec![(b"id", Value::Bytes(&id.0))];
                let want_list = |want: &Option<Want>| {
                    want.map(|w| {
                        let mut list = Vec::new();
                        if w.v4 {
                            list.push(Value::Bytes(b"n4"));
                        }
                        if w.v6 {
                            list.push(Value::Bytes(b"n6"));
                        }
                        Value::List(list)
                    })
                };
                match query {
                    Query::Ping => {}
                    Query::FindNode { target, want } => {
                        args.push((b"target", Value::Bytes(&target.0)));
                        if let Some(list) = want_list(want) {
                            args.push((b"want", list));
                        }
                    }
                    Query::GetPeers { info_hash, want } => {
                        args.push((b"info_hash", Value::Bytes(&info_hash.0)));
                        if let Some(list) = want_list(want) {
                            args.push((b"want", list));
                        }
                    }
                    Query::AnnouncePeer {
                        info_hash,
                        port,
                        implied_port,
                        token,
                    } => {
                        args.push((b"info_hash", Value::Bytes(&info_hash.0)));
                        args.push((b"port", Value::Int(i64::from(*port))));
                        if *implied_port {
                            args.push((b"implied_port", Value::Int(1)));
                        }
                        args.push((b"token", Value::Bytes(token)));
                    }
                }
                entries.push((b"a", Value::Dict(args)));
            }
            Body::Response(r) => {
                entries.push((b"y", Value::Bytes(b"r")));
                let mut fields: Vec<(&[u8], Value<'_>)> = vec![(b"id", Value::Bytes(&r.id.0))];
                nodes = encode_nodes(&r.nodes);
                nodes6 = encode_nodes(&r.nodes6);
                values = r.values.iter().map(|a| encode_addr(*a)).collect::<Vec<_>>();
                if !r.nodes.is_empty() {
                    fields.push((b"nodes", Value::Bytes(&nodes)));
                }
                if !r.nodes6.is_empty() {
                    fields.push((b"nodes6", Value::Bytes(&nodes6)));
                }
                if !values.is_empty() {
                    fields.push((
                        b"values",
                        Value::List(values.iter().map(|v| Value::Bytes(v)).collect()),
                    ));
                }
                if let Some(token) = &r.token {
                    fields.push((b"token", Value::Bytes(token)));
                }
                entries.push((b"r", Value::Dict(fields)));
            }
            Body::Error { code, message } => {
                entries.push((b"y", Value::Bytes(b"e")));
                entries.push((
                    b"e",
                    Value::List(vec![Value::Int(*code), Value::Bytes(message.as_bytes())]),
                ));
            }
        }
        let mut out = Vec::with_capacity(256);
        bencode::encode(&Value::Dict(entries), &mut out);
        out
    }
}

fn decode_query(root: &Value<'_>, tid: TxId) -> Result<Body, DecodeError> {
    let bad = |reason| DecodeError::BadQuery { tid, reason };
    let method = root
        .get(b"q")
        .and_then(Value::as_bytes)
        .ok_or(bad("no method"))?;
    let args = root.get(b"a").ok_or(bad("no arguments"))?;
    if !matches!(args, Value::Dict(_)) {
        return Err(bad("arguments are not a dictionary"));
    }
    let id = get_id(args, b"id").ok_or(bad("no 20-byte id"))?;
    let want = args.get(b"want").map(|w| {
        let mut want = Want::default();
        for item in w.as_list().unwrap_or_default() {
            match item.as_bytes() {
                Some(b"n4") => want.v4 = true,
                Some(b"n6") => want.v6 = true,
                _ => {}
            }
        }
        want
    });
    let query = match method {
        b"ping" => Query::Ping,
        b"find_node" => Query::FindNode {
            target: get_id(args, b"target").ok_or(bad("no 20-byte target"))?,
            want,
        },
        b"get_peers" => Query::GetPeers {
            info_hash: get_id(args, b"info_hash").ok_or(bad("no 20-byte info_hash"))?,
            want,
        },
        b"announce_peer" => {
            let info_hash = get_id(args, b"info_hash").ok_or(bad("no 20-byte info_hash"))?;
            let implied_port = args
                .get(b"implied_port")
                .and_then(Value::as_int)
                .is_some_and(|i| i != 0);
            let port = match args.get(b"port").and_then(Value::as_int) {
                Some(p) if (1..=65535).contains(&p) => p as u16,
                _ if implied_port => 0,
                _ => return Err(bad("no port in 1-65535")),
            };
            let token = args
                .get(b"token")
                .and_then(Value::as_bytes)
                .filter(|t| t.len() <= MAX_TOKEN_LEN)
                .ok_or(bad("no token"))?
                .to_vec();
            Query::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            }
        }
        _ => return Err(DecodeError::UnknownMethod { tid }),
    };
    Ok(Body::Query { id, query })
}

fn decode_response(root: &Value<'_>) -> Result<Response, DecodeError> {
    let bad = |reason| DecodeError::Malformed {
        kind: "response",
        reason,
    };
    let r = root.get(b"r").ok_or(bad("no r"))?;
    let id = get_id(r, b"id").ok_or(bad("no 20-byte id"))?;
    let nodes = match r.get(b"nodes") {
        None => Vec::new(),
        Some(v) => decode_nodes(v.as_bytes().ok_or(bad("nodes is not a string"))?, 4),
    };
    let nodes6 = match r.get(b"nodes6") {
        None => Vec::new(),
        Some(v) => decode_nodes(v.as_bytes().ok_or(bad("nodes6 is not a string"))?, 16),
    };
    let values = match r.get(b"values") {
        None => Vec::new(),
        Some(v) => v
            .as_list()
            .ok_or(bad("values is not a list"))?
            .iter()
            .filter_map(|item| item.as_bytes().and_then(decode_addr))
            .collect(),
    };
    let token = match r.get(b"token") {
        None => None,
        Some(v) => Some(
            v.as_bytes()
                .filter(|t| t.len() <= MAX_TOKEN_LEN)
                .ok_or(bad("token is not a short string"))?
                .to_vec(),
        ),
    };
    Ok(Response {
        id,
        nodes,
        nodes6,
        values,
        token,
    })
}

fn decode_error(root: &Value<'_>) -> Result<Body, DecodeError> {
    let bad = |reason| DecodeError::Malformed {
        kind: "error",
        reason,
    };
    let list = root
        .get(b"e")
        .and_then(Value::as_list)
        .ok_or(bad("no e list"))?;
    let code = list.first().and_then(Value::as_int).ok_or(bad("no code"))?;
    let message = list
        .get(1)
        .and_then(Value::as_bytes)
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default();
    Ok(Body::Error { code, message })
}

fn get_id(dict: &Value<'_>, key: &[u8]) -> Option<Id> {
    dict.get(key)
        .and_then(Value::as_bytes)
        .and_then(|b| <[u8; 20]>::try_from(b).ok())
        .map(Id)
}

/// Compact address: 4-byte IPv4 or 16-byte IPv6, then a big-endian port.
pub fn encode_addr(addr: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
    out
}

/// A compact address of 6 or 18 bytes; `None` for other lengths.
pub fn decode_addr(bytes: &[u8]) -> Option<SocketAddr> {
    match bytes.len() {
        6 => {
            let ip: [u8; 4] = bytes[..4].try_into().ok()?;
            let port = u16::from_be_bytes([bytes[4], bytes[5]]);
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        18 => {
            let ip: [u8; 16] = bytes[..16].try_into().ok()?;
            let port = u16::from_be_bytes([bytes[16], bytes[17]]);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                0,
                0,
            )))
        }
        _ => None,
    }
}

fn encode_nodes(nodes: &[NodeInfo]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nodes.len() * 38);
    for node in nodes {
        out.extend_from_slice(&node.id.0);
        out.extend_from_slice(&encode_addr(node.addr));
    }
    out
}

/// Compact node entries of `ip_len`-byte addresses. A trailing partial entry is ignored,
/// as are entries with port 0 or an address of the other family.
fn decode_nodes(bytes: &[u8], ip_len: usize) -> Vec<NodeInfo> {
    let entry = 20 + ip_len + 2;
    bytes
        .chunks_exact(entry)
        .filter_map(|chunk| {
            let id = Id(chunk[..20].try_into().ok()?);
            let addr = decode_addr(&chunk[20..])?;
            (addr.port() != 0).then_some(NodeInfo { id, addr })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorrent_style_ping_with_two_byte_tid() {
        let raw = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:v4:LT\x02\x001:y1:qe";
        let msg = Message::decode(raw).expect("decodes");
        assert_eq!(msg.tid.as_bytes(), b"aa");
        assert_eq!(msg.version, Some(*b"LT\x02\x00"));
        assert_eq!(
            msg.body,
            Body::Query {
                id: Id(*b"abcdefghij0123456789"),
                query: Query::Ping
            }
        );
        assert_eq!(Message::decode(&msg.encode()), Ok(msg));
    }

    #[test]
    fn every_kind_round_trips() {
        let id = Id([7; 20]);
        let tid = TxId::new(b"\x00\x01\x02").expect("short");
        let addr4: SocketAddr = "1.2.3.4:5".parse().expect("v4");
        let addr6: SocketAddr = "[2001:db8::1]:6".parse().expect("v6");
        let bodies = vec![
            Body::Query {
                id,
                query: Query::FindNode {
                    target: Id([1; 20]),
                    want: Some(Want { v4: true, v6: true }),
                },
            },
            Body::Query {
                id,
                query: Query::GetPeers {
                    info_hash: Id([2; 20]),
                    want: None,
                },
            },
            Body::Query {
                id,
                query: Query::AnnouncePeer {
                    info_hash: Id([2; 20]),
                    port: 0,
                    implied_port: true,
                    token: b"tok".to_vec(),
                },
            },
            Body::Response(Response {
                id,
                nodes: vec![NodeInfo { id, addr: addr4 }],
                nodes6: vec![NodeInfo { id, addr: addr6 }],
                values: vec![addr4, addr6],
                token: Some(b"xy".to_vec()),
            }),
            Body::Error {
                code: ERROR_PROTOCOL,
                message: "bad token".into(),
            },
        ];
        for body in bodies {
            let msg = Message {
                tid,
                body,
                read_only: true,
                ip: Some(addr6),
                version: None,
            };
            assert_eq!(Message::decode(&msg.encode()).as_ref(), Ok(&msg));
        }
    }

    #[test]
    fn bad_queries_keep_their_tid() {
        let tid = TxId::new(b"zz").expect("short");
        let no_id = b"d1:ad6:target20:abcdefghij0123456789e1:q9:find_node1:t2:zz1:y1:qe";
        assert_eq!(
            Message::decode(no_id),
            Err(DecodeError::BadQuery {
                tid,
                reason: "no 20-byte id"
            })
        );
        let unknown = b"d1:ad2:id20:abcdefghij0123456789e1:q3:get1:t2:zz1:y1:qe";
        assert_eq!(
            Message::decode(unknown),
            Err(DecodeError::UnknownMethod { tid })
        );
        let long_tid = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t17:aaaaaaaaaaaaaaaaa1:y1:qe";
        assert_eq!(Message::decode(long_tid), Err(DecodeError::BadTid));
        let no_port = b"d1:ad2:id20:abcdefghij01234567899:info_hash20:abcdefghij01234567895:token1:xe1:q13:announce_peer1:t1:z1:y1:qe";
        assert!(matches!(
            Message::decode(no_port),
            Err(DecodeError::BadQuery { .. })
        ));
    }
}
