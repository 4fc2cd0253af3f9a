//! Round trips and hostile input for frames and session messages.
#![allow(clippy::unwrap_used)]

use bincode::Options;
use rand::{rngs::StdRng, Rng, SeedableRng};
use replic8::frame::{self, FrameError, MAX_FRAME_LEN};
use replic8::keys::{DiscoveryKey, FeedKey, Role};
use replic8::message::*;
use replic8_store::SignedHead;

fn random_headers(rng: &mut StdRng) -> Headers {
    let mut headers = Headers::new();
    for i in 0..rng.gen_range(0..8) {
        let value: Vec<u8> = (0..rng.gen_range(0..40)).map(|_| rng.gen()).collect();
        headers.insert(format!("h{i}-é"), value).unwrap();
    }
    headers
}

fn random_message(rng: &mut StdRng) -> Message {
    let key = |rng: &mut StdRng| rng.gen::<[u8; 32]>();
    match rng.gen_range(0..13) {
        0 => Message::Hello {
            version: rng.gen(),
            dialect: "x".repeat(rng.gen_range(0..=MAX_DIALECT_LEN)),
            max_streams: rng.gen(),
        },
        1 => Message::Tag {
            handle: rng.gen(),
            tag: key(rng),
        },
        2 => Message::Offer {
            namespace: rng.gen(),
            offer: rng.gen(),
            feeds: (0..rng.gen_range(0..20))
                .map(|_| OfferedFeed {
                    id: rng.gen(),
                    key: FeedKey(key(rng)),
                    headers: random_headers(rng),
                })
                .collect(),
        },
        3 => Message::Answer {
            offer: rng.gen(),
            accepted: (0..rng.gen_range(0..50)).map(|_| rng.gen()).collect(),
        },
        4 => Message::Have {
            namespace: rng.gen(),
            feeds: (0..rng.gen_range(0..20))
                .map(|_| KnownFeed {
                    discovery_key: DiscoveryKey(key(rng)),
                    capability: key(rng),
                })
                .collect(),
        },
        5 => Message::Ready,
        9 => Message::Settled,
        6 => Message::Notice {
            feed: DiscoveryKey(key(rng)),
            length: rng.gen(),
        },
        7 => Message::Synced {
            feed: DiscoveryKey(key(rng)),
            length: rng.gen(),
        },
        10 => Message::Stopped {
            feed: DiscoveryKey(key(rng)),
        },
        11 => Message::Heads {
            feeds: (0..rng.gen_range(0..20))
                .map(|_| FirstWord {
                    feed: DiscoveryKey(key(rng)),
                    head: rng.gen::<bool>().then(|| SignedHead {
                        length: rng.gen(),
                        tree_hash: key(rng),
                        signature: [rng.gen(); 64],
                    }),
                    whole: rng.gen(),
                })
                .collect(),
        },
        12 => Message::Whole {
            feeds: (0..rng.gen_range(0..5))
                .map(|_| {
                    let blocks: Vec<serde_bytes::ByteBuf> = (0..rng.gen_range(1..=8))
                        .map(|_| {
                            let len = rng.gen_range(0..2000);
                            serde_bytes::ByteBuf::from(
                                (0..len).map(|_| rng.gen()).collect::<Vec<u8>>(),
                            )
                        })
                        .collect();
                    WholeEntry {
                        feed: DiscoveryKey(key(rng)),
                        head: SignedHead {
                            length: blocks.len() as u64,
                            tree_hash: key(rng),
                            signature: [rng.gen(); 64],
                        },
                        blocks,
                    }
                })
                .collect(),
        },
        _ => Message::Close {
            code: CloseCode(rng.gen()),
            reason: "é".repeat(rng.gen_range(0..=MAX_REASON_LEN / 2)),
        },
    }
}

fn decode_frame(wire: &[u8]) -> Result<Option<(Message, usize)>, String> {
    match frame::parse(wire, MAX_FRAME_LEN).map_err(|e| e.to_string())? {
        None => Ok(None),
        Some((payload, used)) => Ok(Some((decode(payload).map_err(|e| e.to_string())?, used))),
    }
}

#[test]
fn random_messages_round_trip() {
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..5_000 {
        let message = random_message(&mut rng);
        let mut wire = Vec::new();
        encode(&message, &mut wire).unwrap();
        let (back, used) = decode_frame(&wire).unwrap().unwrap();
        assert_eq!(back, message);
        assert_eq!(used, wire.len());
        // Every proper prefix is "more bytes needed" or a typed error, never a message.
        let cut = rng.gen_range(0..wire.len());
        assert!(matches!(decode_frame(&wire[..cut]), Ok(None)));
    }
}

#[test]
fn stream_headers_round_trip() {
    let headers = [
        FeedStreamHeader::Offered {
            by: Role::Dialer,
            id: 0,
        },
        FeedStreamHeader::Offered {
            by: Role::Acceptor,
            id: u64::MAX,
        },
        FeedStreamHeader::Known {
            discovery_key: DiscoveryKey([4; 32]),
            capability: [5; 32],
        },
    ];
    for header in headers {
        let mut wire = Vec::new();
        encode_stream_header(&header, &mut wire).unwrap();
        let (payload, _) = frame::parse(&wire, MAX_FRAME_LEN).unwrap().unwrap();
        assert_eq!(decode_stream_header(payload).unwrap(), header);
    }
}

#[test]
fn every_message_kind_has_a_distinct_name() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..1000 {
        names.insert(random_message(&mut rng).name());
    }
    assert_eq!(names.len(), 13, "{names:?}");
}

#[test]
/// A full `Heads` message of the largest first words fits in a frame; one word more is
/// refused by the encoder and by the decoder.
fn heads_messages_are_bounded() {
    let word = FirstWord {
        feed: DiscoveryKey([0xff; 32]),
        head: Some(SignedHead {
            length: u64::MAX,
            tree_hash: [0xff; 32],
            signature: [0xff; 64],
        }),
        whole: false,
    };
    let full = Message::Heads {
        feeds: vec![word.clone(); MAX_HEADS_PER_MESSAGE],
    };
    let mut wire = Vec::new();
    encode(&full, &mut wire).unwrap();
    assert!(wire.len() < 150 * 1024, "{} bytes", wire.len());
    assert_eq!(decode_frame(&wire).unwrap().unwrap().0, full);
    let over = Message::Heads {
        feeds: vec![word; MAX_HEADS_PER_MESSAGE + 1],
    };
    assert!(encode(&over, &mut Vec::new()).is_err());
    let payload = options().serialize(&over).unwrap();
    let err = decode(&payload).unwrap_err().to_string();
    assert!(err.contains("over the limit of 1024"), "{err}");
}

#[test]
fn random_bytes_give_typed_errors_not_panics() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut errors = 0;
    for _ in 0..50_000 {
        let len = rng.gen_range(0..200);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        // Bias towards valid tags so decoding gets past the first byte.
        if let Some(first) = bytes.first_mut() {
            *first %= 12;
        }
        match decode(&bytes) {
            Ok(message) => message.check().unwrap(),
            Err(_) => errors += 1,
        }
        let _ = decode_stream_header(&bytes);
    }
    assert!(
        errors > 40_000,
        "random bytes decoded too often: {errors} errors"
    );
}

#[test]
fn huge_length_prefixes_inside_a_message_do_not_allocate() {
    // An offer claiming u64::MAX feeds in a few bytes: bincode's byte budget refuses it
    // before reserving memory for them.
    let mut payload = vec![2u8]; // Offer
    payload.extend_from_slice(&[0u8; 32]); // namespace
    payload.push(0); // offer id 0
    payload.push(253); // varint u64 follows
    payload.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(decode(&payload), Err(CodecError::Encoding(_))));
    // A string claiming 4 GiB.
    let mut payload = vec![9u8, 1]; // Close, code 1
    payload.push(252);
    payload.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(decode(&payload), Err(CodecError::Encoding(_))));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut wire = Vec::new();
    encode(&Message::Ready, &mut wire).unwrap();
    let mut payload = frame::parse(&wire, MAX_FRAME_LEN)
        .unwrap()
        .unwrap()
        .0
        .to_vec();
    payload.push(0);
    assert!(matches!(decode(&payload), Err(CodecError::Encoding(_))));
}

#[test]
fn over_bound_headers_are_refused_on_both_ends() {
    let mut headers = Headers::new();
    for i in 0..MAX_HEADER_ENTRIES {
        headers.insert(format!("{i}"), vec![]).unwrap();
    }
    assert_eq!(
        headers.insert("one more", vec![]),
        Err(HeaderError::TooManyEntries {
            count: MAX_HEADER_ENTRIES + 1,
            max: MAX_HEADER_ENTRIES
        })
    );
    assert_eq!(
        headers.len(),
        MAX_HEADER_ENTRIES,
        "a refused insert changes nothing"
    );
    let mut big = Headers::new();
    big.insert("k", vec![0; MAX_HEADER_BYTES - 1]).unwrap();
    assert!(matches!(
        big.insert("k2", vec![0; 1]),
        Err(HeaderError::TooLarge { bytes, .. }) if bytes == MAX_HEADER_BYTES + 3
    ));

    // A hostile peer encodes over-bound headers by hand: decoding refuses them.
    let map: std::collections::BTreeMap<String, Vec<u8>> =
        [("k".to_string(), vec![0; MAX_HEADER_BYTES + 1])].into();
    assert!(Headers::try_from(map.clone()).is_err());
    type RawFeed = (u64, [u8; 32], std::collections::BTreeMap<String, Vec<u8>>);
    #[derive(serde::Serialize)]
    enum Raw {
        _Hello,
        _Tag,
        Offer {
            namespace: u32,
            offer: u64,
            feeds: Vec<RawFeed>,
        },
    }
    use bincode::Options;
    let payload = options()
        .serialize(&Raw::Offer {
            namespace: 0,
            offer: 0,
            feeds: vec![(7, [1; 32], map)],
        })
        .unwrap();
    let err = decode(&payload).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Headers {
                id: 7,
                source: HeaderError::TooLarge { .. }
            }
        ),
        "{err}"
    );
}

#[test]
fn too_many_feeds_are_refused_on_both_ends() {
    let feeds = vec![
        KnownFeed {
            discovery_key: DiscoveryKey([0; 32]),
            capability: [0; 32]
        };
        MAX_FEEDS_PER_MESSAGE + 1
    ];
    let message = Message::Have {
        namespace: 1,
        feeds,
    };
    assert!(matches!(
        encode(&message, &mut Vec::new()),
        Err(CodecError::TooManyFeeds { count, max: MAX_FEEDS_PER_MESSAGE }) if count == MAX_FEEDS_PER_MESSAGE + 1
    ));
    use bincode::Options;
    let payload = options().serialize(&message).unwrap();
    assert!(matches!(
        decode(&payload),
        Err(CodecError::TooManyFeeds { .. })
    ));
}

#[test]
fn a_message_over_the_frame_limit_is_not_encoded() {
    let message = Message::Answer {
        offer: 0,
        accepted: vec![u64::MAX; MAX_FEEDS_PER_MESSAGE],
    };
    // 4,096 × 9 bytes fits; the frame limit is tested with a smaller limit in `frame`.
    encode(&message, &mut Vec::new()).unwrap();
    let err = frame::check(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes(), MAX_FRAME_LEN);
    assert!(matches!(err, Err(FrameError::Oversize { .. })));
}

#[test]
fn hello_bytes_match_the_protocol_document() {
    let mut wire = Vec::new();
    encode(
        &Message::Hello {
            version: PROTOCOL_VERSION,
            dialect: DIALECT.into(),
            max_streams: 300,
        },
        &mut wire,
    )
    .unwrap();
    let mut expected = vec![0, 0, 0, 21]; // length prefix, big endian
    expected.push(0); // variant 0: Hello
    expected.push(5); // version 5, one-byte varint
    expected.push(15); // dialect length
    expected.extend_from_slice(b"bincode1-varint");
    expected.extend_from_slice(&[251, 0x2c, 0x01]); // 300: u16 marker, little endian
    assert_eq!(wire, expected);
    assert_eq!(ALPN, b"replic8/5");

    // docs/PROTOCOL.md, "Messages": a tag, an offer and `Stopped`, byte for byte.
    let mut wire = Vec::new();
    encode(
        &Message::Tag {
            handle: 1,
            tag: [0xab; 32],
        },
        &mut wire,
    )
    .unwrap();
    let mut expected = vec![0, 0, 0, 34, 1, 1];
    expected.extend_from_slice(&[0xab; 32]);
    assert_eq!(wire, expected);
    let mut wire = Vec::new();
    encode(
        &Message::Offer {
            namespace: 3,
            offer: 0,
            feeds: vec![OfferedFeed {
                id: 5,
                key: FeedKey([0x11; 32]),
                headers: Headers::new(),
            }],
        },
        &mut wire,
    )
    .unwrap();
    let mut expected = vec![0, 0, 0, 38, 2, 3, 0, 1, 5];
    expected.extend_from_slice(&[0x11; 32]);
    expected.push(0); // no headers
    assert_eq!(wire, expected);
    let mut wire = Vec::new();
    encode(
        &Message::Stopped {
            feed: DiscoveryKey([0x22; 32]),
        },
        &mut wire,
    )
    .unwrap();
    let mut expected = vec![0, 0, 0, 33, 10];
    expected.extend_from_slice(&[0x22; 32]);
    assert_eq!(wire, expected);

    let mut wire = Vec::new();
    encode_stream_header(
        &FeedStreamHeader::Offered {
            by: Role::Acceptor,
            id: 7,
        },
        &mut wire,
    )
    .unwrap();
    assert_eq!(wire, [0, 0, 0, 3, 0, 1, 7]);
}

#[test]
fn stream_headers_are_read_from_the_start_of_a_stream() {
    let header = FeedStreamHeader::Known {
        discovery_key: DiscoveryKey([1; 32]),
        capability: [2; 32],
    };
    let mut wire = Vec::new();
    encode_stream_header(&header, &mut wire).unwrap();
    let header_len = wire.len();
    wire.extend_from_slice(b"store protocol bytes");
    for cut in 0..header_len {
        assert!(parse_stream_header(&wire[..cut]).unwrap().is_none());
    }
    assert_eq!(
        parse_stream_header(&wire).unwrap(),
        Some((header, header_len))
    );
    // A header frame has no business being large.
    assert!(matches!(
        parse_stream_header(&1000u32.to_be_bytes()),
        Err(CodecError::Frame(FrameError::Oversize { len: 1000, .. }))
    ));
    assert!(matches!(
        parse_stream_header(&[0, 0, 0, 1, 9]),
        Err(CodecError::Encoding(_))
    ));
}

fn whole_entry(blocks: usize, block_len: usize, length: u64) -> WholeEntry {
    WholeEntry {
        feed: DiscoveryKey([0x33; 32]),
        head: SignedHead {
            length,
            tree_hash: [0x44; 32],
            signature: [0x55; 64],
        },
        blocks: vec![serde_bytes::ByteBuf::from(vec![0x66; block_len]); blocks],
    }
}

#[test]
/// A feed sent whole is bounded in blocks and bytes, must have one block per block of
/// its head, and a `Whole` message in entries and in a frame: the encoder refuses what
/// the decoder would, and a full feed round trips.
fn whole_messages_are_bounded() {
    let per_block = MAX_WHOLE_FEED_BYTES / MAX_WHOLE_BLOCKS;
    let full = whole_entry(MAX_WHOLE_BLOCKS, per_block, MAX_WHOLE_BLOCKS as u64);
    let message = Message::Whole {
        feeds: vec![full.clone(); 15],
    };
    let mut wire = Vec::new();
    encode(&message, &mut wire).unwrap();
    assert_eq!(decode_frame(&wire).unwrap().unwrap().0, message);

    let refused = |entry: WholeEntry, words: &str| {
        let message = Message::Whole { feeds: vec![entry] };
        let err = encode(&message, &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains(words), "{err}");
        let payload = options().serialize(&message).unwrap();
        let err = decode(&payload).unwrap_err().to_string();
        assert!(err.contains(words), "{err}");
    };
    let blocks = MAX_WHOLE_BLOCKS + 1;
    refused(
        whole_entry(blocks, 1, blocks as u64),
        "65 blocks, not 1 to 64",
    );
    refused(whole_entry(0, 1, 0), "0 blocks");
    refused(whole_entry(2, 1, 3), "2 blocks for a head of length 3");
    refused(
        whole_entry(2, MAX_WHOLE_FEED_BYTES / 2 + 1, 2),
        "65538 block bytes, over the limit of 65536",
    );
    // Entries per message, and one frame.
    let small = whole_entry(1, 0, 1);
    let over = Message::Whole {
        feeds: vec![small; MAX_WHOLE_PER_MESSAGE + 1],
    };
    assert!(encode(&over, &mut Vec::new()).is_err());
    let payload = options().serialize(&over).unwrap();
    assert!(decode(&payload).is_err());
    let too_big = Message::Whole {
        feeds: vec![full; 17],
    };
    assert!(encode(&too_big, &mut Vec::new()).is_err());
}
