//! Golden bytes: pin the signed-head message and the wire encoding documented in
//! `docs/PROTOCOL.md` ("Feeds"), so neither changes by accident.

use replic8_store::keys::head_signing_message;
use replic8_store::message::{Data, Have, Request};
use replic8_store::{decode, encode, FeedSecret, Message, Node, Proof, SignedHead};
use serde_bytes::ByteBuf;

#[test]
fn head_signing_bytes() {
    let m = head_signing_message(0x0102, &[0xab; 32]);
    let mut expected = b"replic8 feed head v1\0\0\0\0".to_vec();
    expected.extend_from_slice(&[0xab; 32]);
    expected.extend_from_slice(&[0x02, 0x01, 0, 0, 0, 0, 0, 0]);
    assert_eq!(m.to_vec(), expected);
    // ed25519 is deterministic: the same key and head always give these bytes.
    let head = FeedSecret::from_bytes(&[1; 32]).sign_head(0x0102, [0xab; 32]);
    assert_eq!(
        hex::encode(head.signature),
        GOLDEN_SIGNATURE,
        "signature over the head message changed"
    );
}

/// Cross-checked with hypercore-crypto's `sign` (libsodium) over the same 64 bytes.
const GOLDEN_SIGNATURE: &str = "1ff4013ed738ca28508369098a5959f571e26e66d0e2b9e109b0f6d0c802617341a5eb060849cef1dd93258084a2b9d27ec0a57a15380d9458f3bed325dd1c06";

fn round_trip(m: &Message, hex_bytes: &str) {
    let bytes = encode(m).expect("encode");
    assert_eq!(hex::encode(&bytes), hex_bytes, "{m:?}");
    assert_eq!(&decode(&bytes).expect("decode"), m);
}

#[test]
fn wire_bytes() {
    // Request (variant 4): start 1, end 300 (u16 varint: 0xfb 0x2c 0x01), length 300.
    round_trip(
        &Message::Request(Request {
            start: 1,
            end: 300,
            length: 300,
        }),
        "0401fb2c01fb2c01",
    );
    // RequestUpgrade (1) from 7; NoData (6) 2..3; NoUpgrade (3) from 0.
    round_trip(&Message::RequestUpgrade { from: 7 }, "0107");
    round_trip(&Message::NoData { start: 2, end: 3 }, "060203");
    round_trip(&Message::NoUpgrade { from: 0 }, "0300");
    // Have (0): head Some(length 2, tree hash 0x11.., signature: varint 64 then 64 bytes),
    // ranges [(0, 2)].
    let head = SignedHead {
        length: 2,
        tree_hash: [0x11; 32],
        signature: [0x22; 64],
    };
    let have = format!("000102{}40{}010002", "11".repeat(32), "22".repeat(64));
    round_trip(
        &Message::Have(Have {
            head: Some(head),
            ranges: vec![(0, 2)],
        }),
        &have,
    );
    // Data (5): proof {base 2, length 2, start 1, end 2, nodes [{index 0, hash 0x33..,
    // size 3}], head None}, blocks ["ab"].
    let data = format!("05020201020100{}0300010261 62", "33".repeat(32)).replace(' ', "");
    round_trip(
        &Message::Data(Data {
            proof: Proof {
                base: 2,
                length: 2,
                start: 1,
                end: 2,
                nodes: vec![Node {
                    index: 0,
                    hash: [0x33; 32],
                    size: 3,
                }],
                head: None,
            },
            blocks: vec![ByteBuf::from(b"ab".to_vec())],
        }),
        &data,
    );
}
