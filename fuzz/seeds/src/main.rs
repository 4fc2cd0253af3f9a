//! Writes the seed corpora in `fuzz/corpus/<target>/`: a few small, real encodings per
//! target, made with the fixtures the targets use (so signatures and capabilities in the
//! seeds verify there). Run from `fuzz/`: `cargo run -p replic8-fuzz-seeds`.

use std::fs;
use std::path::Path;
use std::time::Instant;

use replic8::keys::{capability, FeedKey, NamespaceKey, Role};
use replic8::message::{
    self, CloseCode, FeedStreamHeader, Headers, KnownFeed, Message, OfferedFeed,
};
use replic8_connmgr::Identity;
use replic8_discovery::krpc::message::{Body, Query, Response, Want as KrpcWant, ERROR_PROTOCOL};
use replic8_discovery::krpc::{Id, Message as Krpc, NodeInfo, TxId};
use replic8_fuzz_fixtures as fx;
use replic8_store::message::Data;
use replic8_store::{encode, FeedSync, Message as SyncMessage, SyncConfig, Want};

fn main() {
    let root = Path::new("corpus");
    write(root, "frame", frame_seeds());
    write(root, "session_message", session_seeds());
    write(root, "sync_message", sync_seeds());
    write(root, "proof_verify", proof_seeds());
    write(root, "peer_key", peer_key_seeds());
    write(root, "krpc", krpc_seeds());
}

fn write(root: &Path, target: &str, seeds: Vec<(&str, Vec<u8>)>) {
    let dir = root.join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    for (name, bytes) in seeds {
        fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
    }
}

fn framed(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        message::encode(m, &mut out).expect("encode seed message");
    }
    out
}

fn payload(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    message::encode(m, &mut out).expect("encode seed message");
    out.split_off(4)
}

fn header_payload(h: &FeedStreamHeader) -> Vec<u8> {
    let mut out = Vec::new();
    message::encode_stream_header(h, &mut out).expect("encode seed header");
    out.split_off(4)
}

/// The peer's (dialer's) messages against the fixture session, in a sensible order.
fn peer_messages() -> Vec<(&'static str, Message)> {
    // The dialer's handle for the secret namespace, matched by its tag.
    let team = 1;
    let key = NamespaceKey::new(fx::SECRET_NAMESPACE, Some(&fx::NAMESPACE_SECRET));
    let mut headers = Headers::new();
    headers.insert("name", b"photos".to_vec()).expect("header");
    headers.insert("type", b"dir".to_vec()).expect("header");
    let known = fx::KNOWN_FEED;
    vec![
        (
            "tag",
            Message::Tag {
                handle: team,
                tag: key.tag(&fx::EXPORTER, Role::Dialer),
            },
        ),
        (
            "have",
            Message::Have {
                namespace: team,
                feeds: vec![KnownFeed {
                    discovery_key: known.discovery_key(),
                    capability: capability(&known, &fx::EXPORTER, Role::Dialer),
                }],
            },
        ),
        (
            "offer",
            Message::Offer {
                namespace: message::PUBLIC_HANDLE,
                offer: 0,
                feeds: vec![
                    OfferedFeed {
                        id: 0,
                        key: FeedKey([3; 32]),
                        headers,
                    },
                    OfferedFeed {
                        id: 1,
                        key: FeedKey([4; 32]),
                        headers: Headers::new(),
                    },
                ],
            },
        ),
        (
            "answer",
            Message::Answer {
                offer: 0,
                accepted: vec![0],
            },
        ),
        ("ready", Message::Ready),
        ("settled", Message::Settled),
        (
            "notice",
            Message::Notice {
                feed: fx::SHARED_FEED.discovery_key(),
                length: 10,
            },
        ),
        (
            "synced",
            Message::Synced {
                feed: fx::SHARED_FEED.discovery_key(),
                length: 10,
            },
        ),
        (
            "stopped",
            Message::Stopped {
                feed: fx::SHARED_FEED.discovery_key(),
            },
        ),
        (
            "close",
            Message::Close {
                code: CloseCode::DONE,
                reason: "done".into(),
            },
        ),
    ]
}

fn stream_headers() -> Vec<(&'static str, FeedStreamHeader)> {
    vec![
        (
            "header-offered",
            FeedStreamHeader::Offered {
                by: Role::Acceptor,
                id: 0,
            },
        ),
        (
            "header-known",
            FeedStreamHeader::Known {
                discovery_key: fx::KNOWN_FEED.discovery_key(),
                capability: capability(&fx::KNOWN_FEED, &fx::EXPORTER, Role::Dialer),
            },
        ),
    ]
}

fn frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let messages: Vec<Message> = peer_messages().into_iter().map(|(_, m)| m).collect();
    let mut seeds = vec![("control-stream", [vec![0], framed(&messages)].concat())];
    let mut small = vec![2];
    fx::push_frame(&mut small, b"0123456789");
    fx::push_frame(&mut small, b"0123456789abcdefXYZ");
    seeds.push(("limit-16", small));
    let mut truncated = vec![0];
    truncated.extend_from_slice(&framed(&messages[..2]));
    truncated.truncate(truncated.len() - 3);
    seeds.push(("truncated", truncated));
    for (name, h) in stream_headers() {
        let mut s = vec![3];
        fx::push_frame(&mut s, &header_payload(&h));
        s.extend_from_slice(b"store bytes follow");
        seeds.push((name, s));
    }
    seeds
}

fn session_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let messages = peer_messages();
    let mut seeds: Vec<(&str, Vec<u8>)> = messages
        .iter()
        .map(|(name, m)| (*name, payload(m)))
        .collect();
    for (name, h) in stream_headers() {
        seeds.push((name, header_payload(&h)));
    }
    let all: Vec<Message> = messages.into_iter().map(|(_, m)| m).collect();
    seeds.push(("stream-all", framed(&all)));
    seeds.push((
        "stream-tag-have-ready",
        framed(&[all[0].clone(), all[1].clone(), all[4].clone()]),
    ));
    seeds.push((
        "stream-offer-ready",
        framed(&[all[2].clone(), all[4].clone(), all[5].clone()]),
    ));
    seeds
}

/// An honest sync of a replica holding `start` blocks from the full writer: the
/// messages each side sent, in order.
fn transcript(start: u64) -> (Vec<SyncMessage>, Vec<SyncMessage>) {
    let mut writer = fx::writer(fx::BLOCKS);
    let mut replica = fx::replica(start);
    let now = Instant::now();
    let mut ws = FeedSync::new(SyncConfig {
        want: Want::Nothing,
        ..SyncConfig::default()
    });
    let mut rs = FeedSync::new(SyncConfig {
        want: Want::All,
        max_outstanding: 4,
        blocks_per_message: 4,
        ..SyncConfig::default()
    });
    ws.handle_start(&mut writer, now);
    rs.handle_start(&mut replica, now);
    let (mut to_replica, mut to_writer) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        if rs.is_synced() && replica.length() == fx::BLOCKS {
            break;
        }
        while let Some(m) = ws.poll_transmit(&mut writer).expect("writer sends") {
            rs.handle_message(&mut replica, m.clone(), now)
                .expect("replica takes it");
            to_replica.push(m);
        }
        while let Some(m) = rs.poll_transmit(&mut replica).expect("replica sends") {
            ws.handle_message(&mut writer, m.clone(), now)
                .expect("writer takes it");
            to_writer.push(m);
        }
    }
    assert_eq!(replica.length(), fx::BLOCKS, "seed sync did not finish");
    (to_replica, to_writer)
}

fn sync_frames(pick: u8, messages: &[SyncMessage]) -> Vec<u8> {
    let mut out = vec![pick];
    for m in messages {
        fx::push_frame(&mut out, &encode(m).expect("encode sync seed"));
    }
    out
}

fn sync_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (pick, name_r, name_w) in [
        (0u8, "to-replica-0", "to-writer-0"),
        (1, "to-replica-5", "to-writer-5"),
        (6, "to-replica-12-live", "to-writer-12-live"),
    ] {
        let start = [0, 5, 12][usize::from(pick % 3)];
        let (to_replica, to_writer) = transcript(start);
        seeds.push((name_r, sync_frames(pick, &to_replica)));
        seeds.push((name_w, sync_frames(pick, &to_writer)));
    }
    // A request, then time passing with no answer.
    let (_, to_writer) = transcript(0);
    let mut timeout = sync_frames(0, &to_writer[..to_writer.len().min(2)]);
    fx::push_frame(&mut timeout, &[]);
    seeds.push(("timeout", timeout));
    seeds
}

fn proof_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut writer = fx::writer(fx::BLOCKS);
    // Mutate mode: [held, mode 0, writer_len - 1, base, length bit, start, end offset, ops..]
    let mut seeds = vec![
        ("mutate-full", vec![0, 0, 23, 0, 0, 0, 24]),
        ("mutate-upgrade", vec![3, 0, 23, 8, 0, 8, 0]),
        ("mutate-data", vec![4, 0, 12, 13, 1, 2, 5]),
        ("mutate-flip-node", vec![2, 0, 23, 3, 0, 4, 6, 0, 1, 7]),
        ("mutate-swap-head", vec![1, 0, 20, 1, 0, 1, 5, 9, 0, 9]),
        ("mutate-drop-node", vec![0, 0, 15, 0, 0, 3, 2, 3, 0, 0]),
    ];
    // Raw mode: [held, mode 1] + a sync message.
    let full = writer.proof(0, fx::BLOCKS, 2, 6).expect("proof");
    let data = SyncMessage::Data(Data {
        proof: full,
        blocks: (2..6).map(|i| fx::block(i).into()).collect(),
    });
    seeds.push((
        "raw-data",
        [vec![0, 1], encode(&data).expect("encode")].concat(),
    ));
    let upgrade = SyncMessage::Upgrade {
        proof: writer.proof(8, fx::BLOCKS, 8, 8).expect("proof"),
    };
    seeds.push((
        "raw-upgrade",
        [vec![3, 1], encode(&upgrade).expect("encode")].concat(),
    ));
    seeds
}

fn peer_key_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let key = Identity::from_secret_bytes([5; 32]).key();
    let spki = key.to_spki();
    let mut wrong = spki.clone();
    wrong[5] ^= 1;
    vec![("valid", spki), ("wrong-oid", wrong)]
}

fn krpc(tid: &[u8], body: Body, ip: Option<&str>) -> Vec<u8> {
    Krpc {
        tid: TxId::new(tid).expect("short tid"),
        body,
        read_only: false,
        ip: ip.map(|a| a.parse().expect("address")),
        version: Some(*b"LT\x02\x00"),
    }
    .encode()
}

fn krpc_query(tid: &[u8], query: Query) -> Vec<u8> {
    let id = Id(*b"abcdefghij0123456789");
    krpc(tid, Body::Query { id, query }, None)
}

/// A `find_node`/`get_peers` answer with two IPv4 and two IPv6 nodes (one of the
/// target's fixed addresses and one new per responder each), peers and a token; `TTTT` stands for the tid the
/// target fills in.
fn krpc_answer(responder: u8, values: bool) -> Vec<u8> {
    let node = |i: u8, addr: &str| NodeInfo {
        id: Id([i; 20]),
        addr: addr.parse().expect("address"),
    };
    let response = Response {
        id: Id([responder; 20]),
        nodes: vec![
            node(0x21, "10.0.0.2:6881"),
            node(responder ^ 0x80, &format!("10.9.{responder}.1:6881")),
        ],
        nodes6: vec![
            node(0x23, "[2001:db8::2]:6881"),
            node(responder ^ 0xc0, &format!("[2001:db8::{responder:x}]:6881")),
        ],
        values: if values {
            vec![
                "10.7.7.7:4000".parse().expect("address"),
                "[2001:db8::7]:4000".parse().expect("address"),
            ]
        } else {
            Vec::new()
        },
        token: values.then(|| b"tok1".to_vec()),
    };
    krpc(b"TTTT", Body::Response(response), Some("81.2.3.4:6881"))
}

/// One chunk of the target's datagram sequence: `[op][len: u16 BE][datagram]`.
fn chunk(out: &mut Vec<u8>, op: u8, datagram: &[u8]) {
    out.push(op);
    out.extend_from_slice(&u16::try_from(datagram.len()).expect("short").to_be_bytes());
    out.extend_from_slice(datagram);
}

fn krpc_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let info_hash = Id([0x42; 20]);
    let want = Some(KrpcWant { v4: true, v6: true });
    let get_peers = krpc_query(b"gp", Query::GetPeers { info_hash, want });
    let announce = krpc_query(
        b"an",
        Query::AnnouncePeer {
            info_hash,
            port: 0,
            implied_port: true,
            token: b"KKKKKKKK".to_vec(),
        },
    );
    let find_node = krpc_query(
        b"fn",
        Query::FindNode {
            target: Id([0x33; 20]),
            want,
        },
    );
    // Serving others: a querier gets a token, announces with it, another finds it.
    let mut serve = vec![0];
    chunk(&mut serve, 0x00, &get_peers);
    chunk(&mut serve, 0x00, &announce);
    chunk(&mut serve, 0x01, &get_peers);
    chunk(&mut serve, 0x04, &find_node);
    chunk(&mut serve, 0x15, &krpc_query(b"p", Query::Ping));
    // Our lookups: bootstrap through the fixed addresses, answers to the latest
    // queries, then a get_peers and an announce lookup, answered, with time passing.
    // One vote is enough here, so the external address and a BEP 42 id follow.
    let mut lookups = vec![0x20];
    chunk(&mut lookups, 0x40, b"");
    for pick in 0..4 {
        chunk(&mut lookups, 0x08 | pick, &krpc_answer(0x60 + pick, false));
    }
    chunk(&mut lookups, 0xa0, b"");
    for pick in 0..3 {
        chunk(&mut lookups, 0x08 | pick, &krpc_answer(0x70 + pick, true));
    }
    chunk(&mut lookups, 0xe0, b"");
    for pick in 0..3 {
        chunk(&mut lookups, 0x08 | pick, &krpc_answer(0x70 + pick, true));
    }
    for pick in 0..3 {
        let ack = Response {
            id: Id([0x70 + pick; 20]),
            ..Response::default()
        };
        chunk(
            &mut lookups,
            0x08 | pick,
            &krpc(b"TTTT", Body::Response(ack), None),
        );
    }
    chunk(&mut lookups, 0x30, b"");
    // A table filled by answers to a bootstrap (from one IP or many), then served:
    // find_node and get_peers with nodes of both families, an announce, and a KRPC
    // error in answer to one of our queries.
    let mut table = vec![0x02];
    chunk(&mut table, 0x40, b"");
    for i in 0..9 {
        chunk(&mut table, 0x08, &krpc_answer(0x60 + i, i % 3 == 0));
    }
    let error = Body::Error {
        code: ERROR_PROTOCOL,
        message: "bad token".into(),
    };
    chunk(&mut table, 0x08, &krpc(b"TTTT", error, None));
    for from in [0, 3, 4, 7] {
        chunk(&mut table, from, &find_node);
    }
    chunk(&mut table, 0x02, &get_peers);
    chunk(&mut table, 0x02, &announce);
    chunk(&mut table, 0x06, &get_peers);
    chunk(&mut table, 0x16, &get_peers);
    // One source over a rate limit of 3 queries in a burst, then 3.5 s later.
    let mut flood = vec![0x80];
    for _ in 0..6 {
        chunk(&mut flood, 0x03, &krpc_query(b"pp", Query::Ping));
    }
    chunk(&mut flood, 0x23, &find_node);
    vec![
        ("sequence-table-serve", table),
        ("sequence-rate-limit", flood),
        (
            "ping-tid2",
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:v4:LT\x02\x001:y1:qe".to_vec(),
        ),
        ("get-peers", get_peers),
        ("announce-implied-port", announce),
        ("find-node-response", krpc_answer(0x61, false)),
        (
            "error",
            krpc(
                b"ee",
                Body::Error {
                    code: ERROR_PROTOCOL,
                    message: "bad token".into(),
                },
                None,
            ),
        ),
        ("sequence-serve", serve),
        ("sequence-lookups", lookups),
    ]
}
