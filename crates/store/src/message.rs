//! The feed sync messages and their bounded bincode encoding.
//!
//! Messages are serde types encoded with bincode 1.3 through one shared [`options`]
//! value: varint integers, little-endian, trailing bytes rejected, and a size limit of
//! [`MAX_MESSAGE_SIZE`] that bounds every allocation while decoding. After decoding,
//! [`decode`] checks the counts a message may carry. Framing (the length prefix on the
//! stream) belongs to the session layer; one frame carries one message.

use bincode::Options;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::feed::MAX_BLOCK_SIZE;
use crate::keys::SignedHead;
use crate::proof::{Proof, MAX_FEED_LENGTH, MAX_PROOF_NODES};

/// Largest encoded message (1 MiB + 64 KiB): a data message of at most
/// [`MAX_DATA_BYTES`] of blocks, plus room for its proof ([`MAX_PROOF_NODES`] nodes of at
/// most 45 bytes) and per-block length prefixes ([`MAX_BLOCKS_PER_MESSAGE`] of at most 9
/// bytes).
pub const MAX_MESSAGE_SIZE: usize = MAX_DATA_BYTES + 64 * 1024;

/// Most block bytes in one data message (1 MiB, which is also [`MAX_BLOCK_SIZE`], so
/// any single block fits).
pub const MAX_DATA_BYTES: usize = MAX_BLOCK_SIZE;

/// Most blocks in one data message.
pub const MAX_BLOCKS_PER_MESSAGE: u64 = 4096;

/// Most requests (`Request` and `RequestUpgrade`) a side may have unanswered; a peer
/// with more ends the stream. Bounds what a requester can make a server queue.
pub const MAX_OUTSTANDING_REQUESTS: usize = 256;

/// Most stored ranges a [`Have`] lists; a sparser peer lists its first ones.
pub const MAX_HAVE_RANGES: usize = 1024;

/// Largest encoded message other than a data message (32 KiB). The largest valid ones, a
/// [`Have`] of [`MAX_HAVE_RANGES`] ranges and an `Upgrade` of [`MAX_PROOF_NODES`] nodes,
/// take under 19 KiB; [`check_leading`] refuses a frame over this from its first byte,
/// so a peer that stops inside anything but a data message holds at most this much.
pub const MAX_SMALL_MESSAGE_SIZE: usize = 32 * 1024;

/// One feed sync message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// What the sender has: its signed head and the blocks it stores. Sent at start and
    /// whenever the sender's head moves (the live notice).
    Have(Have),
    /// Asks for an upgrade proof from the receiver's head to the sender's, from the
    /// sender's current length `from`.
    RequestUpgrade {
        /// The requester's length, whose roots it trusts.
        from: u64,
    },
    /// An upgrade proof (`proof.start == proof.end`) from `proof.base` to a signed head.
    Upgrade {
        /// The proof.
        proof: Proof,
    },
    /// The sender cannot prove an upgrade from `from` (it lacks tree nodes).
    NoUpgrade {
        /// The length the request named.
        from: u64,
    },
    /// Asks for blocks `[start, end)` proven against the tree at `length`, which must be
    /// the requester's current length.
    Request(Request),
    /// Blocks with their proof: an answer to a [`Request`], possibly covering only a
    /// prefix of it.
    Data(Data),
    /// The sender does not store blocks `[start, end)` of the request that began at
    /// `start`.
    NoData {
        /// Start of the request.
        start: u64,
        /// End of the request.
        end: u64,
    },
}

/// The "what I have" message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Have {
    /// The sender's signed head, if it has any block.
    pub head: Option<SignedHead>,
    /// Sorted, disjoint `[start, end)` ranges of the blocks the sender stores (at most
    /// [`MAX_HAVE_RANGES`]).
    pub ranges: Vec<(u64, u64)>,
}

/// A request for a range of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// First block.
    pub start: u64,
    /// End (exclusive).
    pub end: u64,
    /// The tree length to prove against (the requester's length).
    pub length: u64,
}

/// Blocks with the proof that they belong to the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    /// The proof for `[proof.start, proof.end)`.
    pub proof: Proof,
    /// The blocks, in order.
    pub blocks: Vec<ByteBuf>,
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The message would be larger than [`MAX_MESSAGE_SIZE`].
    #[error("message is over the {max}-byte limit")]
    Oversize {
        /// The limit.
        max: usize,
    },
    /// bincode failed for another reason.
    #[error("encode: {0}")]
    Bincode(String),
}

/// Why bytes could not be decoded into a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The message is larger than [`MAX_MESSAGE_SIZE`].
    #[error("oversize message: {len} bytes, limit {max}")]
    Oversize {
        /// The message's length (or a lower bound).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes end in the middle of a message.
    #[error("truncated message")]
    Truncated,
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message decodes but breaks a limit or rule (count, size, order).
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

/// The bincode options every sync message is encoded and decoded with.
pub fn options() -> impl Options + Copy {
    bincode::DefaultOptions::new()
        .with_limit(MAX_MESSAGE_SIZE as u64)
        .reject_trailing_bytes()
}

/// Encode one message.
pub fn encode(message: &Message) -> Result<Vec<u8>, EncodeError> {
    options().serialize(message).map_err(|e| match *e {
        bincode::ErrorKind::SizeLimit => EncodeError::Oversize {
            max: MAX_MESSAGE_SIZE,
        },
        other => EncodeError::Bincode(other.to_string()),
    })
}

/// How many bytes [`encode`] makes of `message` (a walk over it, no copy).
pub fn encoded_len(message: &Message) -> Result<usize, EncodeError> {
    options()
        .serialized_size(message)
        .map(|n| n as usize)
        .map_err(|e| match *e {
            bincode::ErrorKind::SizeLimit => EncodeError::Oversize {
                max: MAX_MESSAGE_SIZE,
            },
            other => EncodeError::Bincode(other.to_string()),
        })
}

/// Encode one message at the end of `out` (after whatever the caller put there, such as
/// room for a frame prefix), growing it once to the exact size; on error `out` is left
/// as it was. Saves the copy [`encode`] plus framing would make.
pub fn encode_into(message: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let map = |e: bincode::Error| match *e {
        bincode::ErrorKind::SizeLimit => EncodeError::Oversize {
            max: MAX_MESSAGE_SIZE,
        },
        other => EncodeError::Bincode(other.to_string()),
    };
    let size = options().serialized_size(message).map_err(map)?;
    let before = out.len();
    out.reserve_exact(size as usize);
    options().serialize_into(&mut *out, message).map_err(|e| {
        out.truncate(before);
        map(e)
    })
}

/// Decode one message (a whole frame), bounded and checked.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    check_size(bytes)?;
    check_first(bytes)?;
    let message: Message = options()
        .deserialize(bytes)
        .map_err(|e| decode_error(*e, bytes.len()))?;
    check(&message)?;
    Ok(message)
}

/// The tag a [`Message::Data`] starts with when encoded: its variant index (5) as a
/// one-byte varint.
const DATA_TAG: u8 = 5;
/// The tag of [`Message::NoData`], the other answer to a [`Request`].
const NO_DATA_TAG: u8 = 6;

/// What the first byte of an encoded message says before the rest of it has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leading {
    /// A `Data` or `NoData`: the answer to one [`Request`] the receiver sent (each
    /// request gets exactly one).
    Answer,
    /// Any other message.
    Other,
}

/// Checks a message from its first byte and its length alone, before the rest arrives:
/// the byte must name a message, and only a data message may be longer than
/// [`MAX_SMALL_MESSAGE_SIZE`]. A receiver that also counts the answers it is owed
/// ([`Leading::Answer`]) knows, from the first bytes of every frame, that a peer which
/// stops inside one is inside something it was asked for or something small.
pub fn check_leading(first: u8, len: usize) -> Result<Leading, DecodeError> {
    match first {
        DATA_TAG => Ok(Leading::Answer),
        NO_DATA_TAG | 0..DATA_TAG if len > MAX_SMALL_MESSAGE_SIZE => Err(DecodeError::Oversize {
            len,
            max: MAX_SMALL_MESSAGE_SIZE,
        }),
        NO_DATA_TAG => Ok(Leading::Answer),
        0..DATA_TAG => Ok(Leading::Other),
        _ => Err(DecodeError::Invalid("unknown message")),
    }
}

/// A data message decoded in place: its blocks are slices of the bytes it was decoded
/// from, not copies.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DataRef<'a> {
    /// The proof for `[proof.start, proof.end)`.
    pub proof: Proof,
    /// The blocks, in order.
    #[serde(borrow)]
    pub blocks: Vec<&'a [u8]>,
}

/// A message decoded for handling: a data message borrows its blocks from the frame (see
/// [`decode_in_place`]); any other message is owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A data message, its blocks borrowed.
    Data(DataRef<'a>),
    /// Any other message.
    Other(Message),
}

/// Decode one message like [`decode`] (same bounds and checks), leaving a data
/// message's blocks in `bytes`: the receiver hashes and stores them from the frame they
/// arrived in. The only allocation a data message costs is its proof's nodes and the
/// list of block slices, both bounded like [`decode`]'s.
pub fn decode_in_place(bytes: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    check_size(bytes)?;
    match bytes.split_first() {
        Some((&DATA_TAG, body)) => {
            let data: DataRef<'_> = options()
                .deserialize(body)
                .map_err(|e| decode_error(*e, bytes.len()))?;
            check_data(&data.proof, data.blocks.iter().map(|b| b.len()))?;
            Ok(Decoded::Data(data))
        }
        _ => decode(bytes).map(Decoded::Other),
    }
}

/// The first byte names a message in its one-byte form, and only data is long: what a
/// receiver checked with [`check_leading`] before the rest arrived is what decodes
/// (bincode alone would also take a tag in a longer varint form).
fn check_first(bytes: &[u8]) -> Result<(), DecodeError> {
    match bytes.first() {
        Some(&first) => check_leading(first, bytes.len()).map(|_| ()),
        None => Err(DecodeError::Truncated),
    }
}

fn check_size(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(DecodeError::Oversize {
            len: bytes.len(),
            max: MAX_MESSAGE_SIZE,
        });
    }
    Ok(())
}

fn decode_error(e: bincode::ErrorKind, len: usize) -> DecodeError {
    match e {
        bincode::ErrorKind::SizeLimit => DecodeError::Oversize {
            len,
            max: MAX_MESSAGE_SIZE,
        },
        bincode::ErrorKind::Io(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Truncated
        }
        other => DecodeError::Malformed(other.to_string()),
    }
}

fn check(message: &Message) -> Result<(), DecodeError> {
    match message {
        Message::Have(have) => {
            if have.ranges.len() > MAX_HAVE_RANGES {
                return Err(DecodeError::Invalid("too many ranges"));
            }
            let limit = have.head.map_or(0, |h| h.length);
            if limit > MAX_FEED_LENGTH {
                return Err(DecodeError::Invalid("length over the limit"));
            }
            let mut prev_end = 0;
            for (i, &(s, e)) in have.ranges.iter().enumerate() {
                if s >= e || e > limit || (i > 0 && s <= prev_end) {
                    return Err(DecodeError::Invalid(
                        "ranges not sorted, disjoint and within the head",
                    ));
                }
                prev_end = e;
            }
        }
        Message::Upgrade { proof } => {
            check_proof(proof)?;
            if proof.start != proof.end {
                return Err(DecodeError::Invalid("upgrade carries blocks"));
            }
        }
        Message::Request(r) => {
            if r.start >= r.end
                || r.end > r.length
                || r.length > MAX_FEED_LENGTH
                || r.end - r.start > MAX_BLOCKS_PER_MESSAGE
            {
                return Err(DecodeError::Invalid("request range"));
            }
        }
        Message::Data(data) => check_data(&data.proof, data.blocks.iter().map(|b| b.len()))?,
        Message::NoData { start, end } => {
            if start >= end {
                return Err(DecodeError::Invalid("empty range"));
            }
        }
        Message::RequestUpgrade { from } | Message::NoUpgrade { from } => {
            if *from > MAX_FEED_LENGTH {
                return Err(DecodeError::Invalid("length over the limit"));
            }
        }
    }
    Ok(())
}

/// The checks of a data message, given its proof and its blocks' lengths.
fn check_data(
    proof: &Proof,
    block_lens: impl ExactSizeIterator<Item = usize>,
) -> Result<(), DecodeError> {
    check_proof(proof)?;
    let n = proof.end - proof.start;
    if n == 0 || n > MAX_BLOCKS_PER_MESSAGE || n != block_lens.len() as u64 {
        return Err(DecodeError::Invalid("block count does not match the proof"));
    }
    let bytes: usize = block_lens.sum();
    if bytes > MAX_DATA_BYTES {
        return Err(DecodeError::Invalid("blocks over the data size limit"));
    }
    Ok(())
}

fn check_proof(proof: &Proof) -> Result<(), DecodeError> {
    if proof.nodes.len() > MAX_PROOF_NODES {
        return Err(DecodeError::Invalid("too many proof nodes"));
    }
    if proof.length > MAX_FEED_LENGTH || proof.base > MAX_FEED_LENGTH {
        return Err(DecodeError::Invalid("length over the limit"));
    }
    if proof.start > proof.end || proof.end > proof.length {
        return Err(DecodeError::Invalid("proof range outside its tree"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;

    #[test]
    fn round_trip_and_bounds() {
        let m = Message::Request(Request {
            start: 1,
            end: 5,
            length: 9,
        });
        let bytes = encode(&m).unwrap();
        assert_eq!(decode(&bytes).unwrap(), m);
        let mut out = vec![7u8; 4];
        encode_into(&m, &mut out).unwrap();
        assert_eq!((&out[..4], &out[4..]), (&[7u8; 4][..], &bytes[..]));
        assert_eq!(encoded_len(&m).unwrap(), bytes.len());
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated)
        );
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(decode(&long), Err(DecodeError::Malformed(_))));
        let huge = vec![0u8; MAX_MESSAGE_SIZE + 1];
        assert!(matches!(decode(&huge), Err(DecodeError::Oversize { .. })));
        // A length prefix that claims more than the limit allows fails before allocating.
        // (Have, no head, then a range count of 2^63 - 1.)
        let mut claim = vec![0u8, 0u8, 253];
        claim.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(decode(&claim).is_err());
        let bad = Message::Request(Request {
            start: 5,
            end: 5,
            length: 9,
        });
        assert_eq!(
            decode(&encode(&bad).unwrap()),
            Err(DecodeError::Invalid("request range"))
        );
    }

    #[test]
    fn the_first_byte_tells_an_answer_and_bounds_every_other_message() {
        let head = SignedHead {
            length: MAX_FEED_LENGTH,
            tree_hash: [0xff; 32],
            signature: [0xff; 64],
        };
        let base = MAX_FEED_LENGTH - 4 * MAX_HAVE_RANGES as u64;
        let have = Message::Have(Have {
            head: Some(head),
            ranges: (0..MAX_HAVE_RANGES as u64)
                .map(|i| (base + 2 * i, base + 2 * i + 1))
                .collect(),
        });
        let node = Node {
            index: u64::MAX,
            hash: [0xff; 32],
            size: u64::MAX,
        };
        let upgrade = Message::Upgrade {
            proof: Proof {
                base: MAX_FEED_LENGTH,
                length: MAX_FEED_LENGTH,
                start: MAX_FEED_LENGTH,
                end: MAX_FEED_LENGTH,
                nodes: vec![node; MAX_PROOF_NODES],
                head: Some(head),
            },
        };
        let request = Request {
            start: 0,
            end: MAX_BLOCKS_PER_MESSAGE,
            length: MAX_FEED_LENGTH,
        };
        let others = [
            have,
            upgrade,
            Message::RequestUpgrade {
                from: MAX_FEED_LENGTH,
            },
            Message::NoUpgrade {
                from: MAX_FEED_LENGTH,
            },
            Message::Request(request),
        ];
        // The largest valid message of each kind but data is under the bound, and the
        // bound is not loose by more than its margin.
        let mut largest = 0;
        for m in &others {
            let bytes = encode(m).unwrap();
            assert_eq!(decode(&bytes).as_ref(), Ok(m), "a valid message");
            assert_eq!(check_leading(bytes[0], bytes.len()), Ok(Leading::Other));
            largest = largest.max(bytes.len());
        }
        assert!((16 * 1024..19 * 1024).contains(&largest), "{largest} bytes");
        let no_data = encode(&Message::NoData { start: 0, end: 1 }).unwrap();
        assert_eq!(
            check_leading(no_data[0], no_data.len()),
            Ok(Leading::Answer)
        );
        assert_eq!(
            check_leading(DATA_TAG, MAX_MESSAGE_SIZE),
            Ok(Leading::Answer)
        );
        // Past the bound, anything but data is refused before the rest arrives.
        for tag in 0..=NO_DATA_TAG {
            let got = check_leading(tag, MAX_SMALL_MESSAGE_SIZE + 1);
            if tag == DATA_TAG {
                assert_eq!(got, Ok(Leading::Answer));
            } else {
                assert!(matches!(got, Err(DecodeError::Oversize { .. })), "{tag}");
            }
        }
        assert_eq!(
            check_leading(NO_DATA_TAG + 1, 10),
            Err(DecodeError::Invalid("unknown message"))
        );
        // bincode would read `NoUpgrade { from: 0 }` from a tag in a longer varint form
        // (251, then a u16): decode refuses what the first byte did not say.
        assert_eq!(
            decode(&[251, 3, 0, 0]),
            Err(DecodeError::Invalid("unknown message"))
        );
    }

    #[test]
    fn data_decodes_in_place_as_it_decodes_owned() {
        let blocks: Vec<ByteBuf> = [0usize, 1, 300, 70_000]
            .iter()
            .map(|&n| ByteBuf::from(vec![n as u8; n]))
            .collect();
        let proof = Proof {
            base: 9,
            length: 9,
            start: 2,
            end: 6,
            nodes: vec![],
            head: None,
        };
        let data = Message::Data(Data {
            proof: proof.clone(),
            blocks: blocks.clone(),
        });
        let bytes = encode(&data).unwrap();
        assert_eq!(bytes[0], DATA_TAG);
        let Decoded::Data(got) = decode_in_place(&bytes).unwrap() else {
            panic!("a data message decoded as another");
        };
        assert_eq!(got.proof, proof);
        let want: Vec<&[u8]> = blocks.iter().map(|b| b.as_slice()).collect();
        assert_eq!(got.blocks, want);
        // The blocks are the frame's own bytes, not copies.
        let frame = bytes.as_ptr_range();
        assert!(got
            .blocks
            .iter()
            .all(|b| frame.contains(&b.as_ptr()) || b.is_empty()));
        // Other messages decode owned, as with `decode`.
        let request = Message::Request(Request {
            start: 1,
            end: 5,
            length: 9,
        });
        assert_eq!(
            decode_in_place(&encode(&request).unwrap()).unwrap(),
            Decoded::Other(request)
        );
        // The same bounds and checks: truncated, trailing bytes, a count that does not
        // match the proof, blocks over the data limit.
        assert_eq!(
            decode_in_place(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated)
        );
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode_in_place(&long),
            Err(DecodeError::Malformed(_))
        ));
        let short = Message::Data(Data {
            proof: Proof {
                end: 5,
                ..proof.clone()
            },
            blocks: blocks.clone(),
        });
        assert_eq!(
            decode_in_place(&encode(&short).unwrap()),
            Err(DecodeError::Invalid("block count does not match the proof"))
        );
        let big = Message::Data(Data {
            proof: Proof {
                end: 4,
                ..proof.clone()
            },
            blocks: vec![ByteBuf::from(vec![1u8; MAX_DATA_BYTES / 2 + 1]); 2],
        });
        assert_eq!(
            decode_in_place(&encode(&big).unwrap()),
            Err(DecodeError::Invalid("blocks over the data size limit"))
        );
        // A count of 2^63 - 1 blocks fails on the size limit, before allocating for it.
        let mut claim = vec![DATA_TAG];
        claim.extend_from_slice(&options().serialize(&proof).unwrap());
        claim.push(253);
        claim.extend_from_slice(&(u64::MAX >> 1).to_le_bytes());
        assert!(decode_in_place(&claim).is_err());
    }

    #[test]
    fn oversize_message_is_not_encoded() {
        let blocks = vec![ByteBuf::from(vec![0u8; MAX_BLOCK_SIZE]); 4];
        let m = Message::Data(Data {
            proof: Proof {
                base: 4,
                length: 4,
                start: 0,
                end: 4,
                nodes: vec![],
                head: None,
            },
            blocks,
        });
        assert!(matches!(encode(&m), Err(EncodeError::Oversize { .. })));
        let mut out = vec![1, 2];
        assert!(matches!(
            encode_into(&m, &mut out),
            Err(EncodeError::Oversize { .. })
        ));
        assert_eq!(out, [1, 2]);
    }
}
