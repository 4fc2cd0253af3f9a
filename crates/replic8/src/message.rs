//! Session messages: one serde enum for the control stream, one for the first frame of a
//! feed stream, encoded with bincode 1.3 under one bounded [`options`] value.
//!
//! [`decode`] bounds every allocation by the frame limit (bincode's byte budget) and then
//! checks the protocol's own bounds (headers, feeds per message, text lengths), so a
//! decoded value always satisfies them. [`encode`] checks the same bounds, so we never
//! send what the peer must refuse.

use std::collections::BTreeMap;

use bincode::Options;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::frame::MAX_FRAME_LEN;
use crate::keys::{DiscoveryKey, FeedKey, Role};
use replic8_store::SignedHead;

/// The session protocol's version, carried in the ALPN and in [`Message::Hello`].
pub const PROTOCOL_VERSION: u32 = 5;
/// The ALPN of the session protocol; it names the version.
pub const ALPN: &[u8] = b"replic8/5";
/// This implementation's dialect: the message encoding family spoken on the wire.
pub const DIALECT: &str = "bincode1-varint";
/// Most entries in one feed's headers.
pub const MAX_HEADER_ENTRIES: usize = 64;
/// Most bytes in one feed's headers: the sum of every key's and value's length.
pub const MAX_HEADER_BYTES: usize = 4096;
/// Most feeds in one [`Message::Offer`], [`Message::Answer`] or [`Message::Have`]; a
/// larger share is split into several messages. With it, 10,000 feeds without headers
/// take three offers of under 200 KiB each.
pub const MAX_FEEDS_PER_MESSAGE: usize = 4096;
/// Most first words in one [`Message::Heads`]. A first word is at most 140 bytes, so a
/// full message is under 150 KiB; its heads are verified as one batch, and past a few
/// hundred heads a larger batch gains little per head while a failed one costs more to
/// search (`docs/PERFORMANCE.md`, "first words with signed heads").
pub const MAX_HEADS_PER_MESSAGE: usize = 1024;
/// Most blocks of a feed sent whole ([`Message::Whole`], decision 210): a feed whose
/// first-word head is longer gets a stream. Whole feeds save the fixed cost of a feed
/// stream (a QUIC stream, two tasks, a sync core and a round trip on each side, about
/// 0.4 ms of CPU per feed and side); past a few dozen blocks a stream's per-block work
/// dominates that cost and its pipelining pays, while 64 blocks keep the receiver's
/// tree hashing of one entry trivial. `replic8 bench many-feeds` with 1 block a feed
/// goes whole, with 100 blocks a feed goes by streams.
pub const MAX_WHOLE_BLOCKS: usize = 64;
/// Most block bytes of one feed sent whole: one sixteenth of a frame, so a `Whole`
/// message packs at least 15 feeds and a control message never waits behind more than
/// a frame of them, and a read of many feeds from the store stays a few MiB at most.
pub const MAX_WHOLE_FEED_BYTES: usize = 64 * 1024;
/// Most feeds in one [`Message::Whole`]. The smallest entry (one empty block) is about
/// 140 bytes, so a frame could hold about 7,000; the bound keeps one `WriteWhole` call
/// of the receiver's store (one storage transaction) the size of a `Have` list.
pub const MAX_WHOLE_PER_MESSAGE: usize = 4096;
/// Most bytes in a dialect name.
pub const MAX_DIALECT_LEN: usize = 64;
/// The connection-local handle of the public namespace `""`, which needs no tag.
pub const PUBLIC_HANDLE: u32 = 0;
/// Most bytes in a close reason; a longer local reason is cut at a character boundary.
pub const MAX_REASON_LEN: usize = 1024;

/// The bincode options of every encode and decode: little endian, varint integers, no
/// trailing bytes, and a byte budget of one frame, which bounds every allocation.
pub fn options() -> impl Options + Copy {
    bincode::DefaultOptions::new()
        .with_limit(MAX_FRAME_LEN as u64)
        .with_little_endian()
        .with_varint_encoding()
        .reject_trailing_bytes()
}

/// A feed's headers: a small map of text keys to byte values, bounded by
/// [`MAX_HEADER_ENTRIES`] and [`MAX_HEADER_BYTES`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Headers(BTreeMap<String, Vec<u8>>);

impl Headers {
    /// Empty headers.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Sets `key` to `value`; an error (and no change) if the headers would go over a bound.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), HeaderError> {
        let key = key.into();
        let value = value.into();
        let old = self.0.insert(key.clone(), value);
        if let Err(e) = self.check() {
            match old {
                Some(old) => self.0.insert(key, old),
                None => self.0.remove(&key),
            };
            return Err(e);
        }
        Ok(())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.0.get(key).map(Vec::as_slice)
    }

    /// The entries, ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The sum of every key's and value's length.
    pub fn byte_len(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Checks the bounds.
    pub fn check(&self) -> Result<(), HeaderError> {
        if self.0.len() > MAX_HEADER_ENTRIES {
            return Err(HeaderError::TooManyEntries {
                count: self.0.len(),
                max: MAX_HEADER_ENTRIES,
            });
        }
        let bytes = self.byte_len();
        if bytes > MAX_HEADER_BYTES {
            return Err(HeaderError::TooLarge {
                bytes,
                max: MAX_HEADER_BYTES,
            });
        }
        Ok(())
    }
}

impl TryFrom<BTreeMap<String, Vec<u8>>> for Headers {
    type Error = HeaderError;

    fn try_from(map: BTreeMap<String, Vec<u8>>) -> Result<Headers, HeaderError> {
        let headers = Headers(map);
        headers.check()?;
        Ok(headers)
    }
}

/// Headers over a bound.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// More entries than allowed.
    #[error("headers have {count} entries, over the limit of {max}")]
    TooManyEntries {
        /// Entries present.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// More bytes than allowed.
    #[error("headers are {bytes} bytes, over the limit of {max}")]
    TooLarge {
        /// Bytes present (keys and values).
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

/// Why a session ended, as sent in [`Message::Close`] and used as the QUIC application
/// close code. Unknown codes from a newer peer decode fine and print as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CloseCode(pub u32);

impl CloseCode {
    /// A one-shot session finished: every accepted feed is in sync both ways.
    pub const DONE: CloseCode = CloseCode(0);
    /// The application closed the session.
    pub const CLOSED: CloseCode = CloseCode(1);
    /// The peers speak different protocol versions or dialects.
    pub const VERSION_MISMATCH: CloseCode = CloseCode(2);
    /// A frame or message broke the protocol (bad encoding, bound exceeded, bad order).
    pub const PROTOCOL: CloseCode = CloseCode(3);
    /// A frame's length prefix was over the limit.
    pub const FRAME_TOO_LARGE: CloseCode = CloseCode(4);
    /// A namespace tag did not check, or answered no tag of ours.
    pub const BAD_PROOF: CloseCode = CloseCode(5);
    /// A feed capability did not check.
    pub const BAD_CAPABILITY: CloseCode = CloseCode(6);
    /// A feed stream was opened for a feed that was not offered and accepted.
    pub const REFUSED_STREAM: CloseCode = CloseCode(7);
    /// The store's accept handler failed; the reason is its error.
    pub const ACCEPT_FAILED: CloseCode = CloseCode(8);
    /// The peer did not say hello in time, a frame stalled, or the peer kept our
    /// control output blocked (it does not read) longer than the stall timeout.
    pub const TIMEOUT: CloseCode = CloseCode(9);
    /// A signed head in a first word did not verify with its feed's key.
    pub const BAD_HEAD: CloseCode = CloseCode(10);

    /// The code's name, or `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            CloseCode::DONE => "done",
            CloseCode::CLOSED => "closed",
            CloseCode::VERSION_MISMATCH => "version mismatch",
            CloseCode::PROTOCOL => "protocol error",
            CloseCode::FRAME_TOO_LARGE => "frame too large",
            CloseCode::BAD_PROOF => "bad proof",
            CloseCode::BAD_CAPABILITY => "bad capability",
            CloseCode::REFUSED_STREAM => "refused stream",
            CloseCode::ACCEPT_FAILED => "accept failed",
            CloseCode::TIMEOUT => "timeout",
            CloseCode::BAD_HEAD => "bad head",
            _ => "unknown",
        }
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// One feed in an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferedFeed {
    /// The offerer's id for this feed in this session; ids strictly increase.
    pub id: u64,
    /// The feed's public key.
    pub key: FeedKey,
    /// The feed's headers.
    pub headers: Headers,
}

/// One feed in a [`Message::Have`]: held, and its key known, without sending the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownFeed {
    /// The feed's discovery key.
    pub discovery_key: DiscoveryKey,
    /// The sender's capability for the feed on this connection.
    pub capability: [u8; 32],
}

/// A first word on one replicated feed (in [`Message::Heads`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstWord {
    /// The feed.
    pub feed: DiscoveryKey,
    /// The writer's signed head of the sender's copy, when the sender holds every
    /// block it covers; `None` when it lacks blocks or cannot say (a stream is needed).
    pub head: Option<SignedHead>,
    /// Only with no head: the sender's store takes feeds whole, so a peer holding a
    /// head of at most [`MAX_WHOLE_BLOCKS`] blocks sends the feed in a
    /// [`Message::Whole`] (or tells with a `Notice` that it will not) instead of a
    /// stream (decision 210).
    pub whole: bool,
}

/// One feed sent whole (in [`Message::Whole`]): the writer's signed head of the
/// sender's copy and every block it covers, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WholeEntry {
    /// The feed.
    pub feed: DiscoveryKey,
    /// The writer's signed head; its length is the number of blocks.
    pub head: SignedHead,
    /// Blocks `0..head.length`: at least one, at most [`MAX_WHOLE_BLOCKS`], together
    /// at most [`MAX_WHOLE_FEED_BYTES`].
    pub blocks: Vec<serde_bytes::ByteBuf>,
}

impl WholeEntry {
    /// The block bytes of the entry.
    pub fn block_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.len()).sum()
    }

    /// Checks the bounds, and that there is one block per block of the head.
    pub fn check(&self) -> Result<(), CodecError> {
        let bad = |reason: String| {
            Err(CodecError::Whole {
                feed: self.feed.fmt_short(),
                reason,
            })
        };
        if self.blocks.is_empty() || self.blocks.len() > MAX_WHOLE_BLOCKS {
            return bad(format!(
                "{} blocks, not 1 to {MAX_WHOLE_BLOCKS}",
                self.blocks.len()
            ));
        }
        if self.blocks.len() as u64 != self.head.length {
            return bad(format!(
                "{} blocks for a head of length {}",
                self.blocks.len(),
                self.head.length
            ));
        }
        let bytes = self.block_bytes();
        if bytes > MAX_WHOLE_FEED_BYTES {
            return bad(format!(
                "{bytes} block bytes, over the limit of {MAX_WHOLE_FEED_BYTES}"
            ));
        }
        Ok(())
    }
}

/// A message on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First frame of each side: who we are on the wire.
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u32,
        /// [`DIALECT`] of the sender.
        dialect: String,
        /// How many feed streams the sender lets the peer keep open at once.
        max_streams: u32,
    },
    /// The sender knows a namespace's key. From the dialer: its tag for one of its
    /// namespaces, with the connection-local handle it gives that namespace. From the
    /// acceptor: the answer to a dialer's tag that matched one of its namespaces.
    Tag {
        /// The dialer's handle for the namespace on this connection (never
        /// [`PUBLIC_HANDLE`]).
        handle: u32,
        /// Keyed BLAKE2b of the namespace key over the exporter value and the sender's
        /// role, see `NamespaceKey::tag`.
        tag: [u8; 32],
    },
    /// Feeds the sender shares in a namespace.
    Offer {
        /// The namespace's handle on this connection.
        namespace: u32,
        /// The sender's id for this offer; ids strictly increase.
        offer: u64,
        /// The feeds, at most [`MAX_FEEDS_PER_MESSAGE`].
        feeds: Vec<OfferedFeed>,
    },
    /// The answer to an offer: the ids of the feeds the receiver accepted.
    Answer {
        /// The offer answered.
        offer: u64,
        /// Accepted feed ids, a subset of the offer's.
        accepted: Vec<u64>,
    },
    /// Feeds the sender holds in a namespace, by discovery key and capability (all-to-all).
    Have {
        /// The namespace's handle on this connection.
        namespace: u32,
        /// The feeds, at most [`MAX_FEEDS_PER_MESSAGE`].
        feeds: Vec<KnownFeed>,
    },
    /// The sender has sent its proofs and made its initial shares and announcements.
    Ready,
    /// The answer to the peer's [`Message::Ready`]: every offer the peer's proofs
    /// unlocked is sent. A one-shot session ends only after both sides sent both.
    Settled,
    /// The sender's copy of a replicated feed changed; a closed stream should reopen.
    Notice {
        /// The feed.
        feed: DiscoveryKey,
        /// The sender's length now.
        length: u64,
    },
    /// The sender's copy of a replicated feed is in sync with ours at this length.
    Synced {
        /// The feed.
        feed: DiscoveryKey,
        /// The length both sides hold.
        length: u64,
    },
    /// Last frame: the session ends.
    Close {
        /// Why.
        code: CloseCode,
        /// Human-readable detail, at most [`MAX_REASON_LEN`] bytes.
        reason: String,
    },
    /// The sender stopped a replicated feed on this session (a fault in that feed): no
    /// stream is opened for it again on this session.
    Stopped {
        /// The feed.
        feed: DiscoveryKey,
    },
    /// The sender's first words on replicated feeds, each once per session: the head it
    /// holds complete, if any. A feed whose verified heads are equal on both sides gets
    /// no stream.
    Heads {
        /// The first words, at most [`MAX_HEADS_PER_MESSAGE`].
        feeds: Vec<FirstWord>,
    },
    /// Small feeds sent whole, each in place of a feed stream: only feeds whose
    /// receiver's first word asked for it (`FirstWord::whole`) and whose sender's first
    /// word had a head of at most [`MAX_WHOLE_BLOCKS`] blocks, each at most once per
    /// session (decision 210).
    Whole {
        /// The feeds, at most [`MAX_WHOLE_PER_MESSAGE`], within one frame.
        feeds: Vec<WholeEntry>,
    },
}

/// First and only session frame on a feed stream: which feed it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedStreamHeader {
    /// An offered and accepted feed, by the offerer's feed id.
    Offered {
        /// The side that offered the feed.
        by: Role,
        /// The id from the offerer's [`OfferedFeed`].
        id: u64,
    },
    /// A feed both sides hold (all-to-all), proven by the opener's capability.
    Known {
        /// The feed's discovery key.
        discovery_key: DiscoveryKey,
        /// The opener's capability for the feed on this connection.
        capability: [u8; 32],
    },
}

/// Why a message could not be encoded or decoded.
#[derive(Debug, Error)]
pub enum CodecError {
    /// bincode refused the bytes (bad tag, short input, budget exceeded, trailing bytes).
    #[error("bad message encoding: {0}")]
    Encoding(#[from] bincode::Error),
    /// The encoded message does not fit in a frame.
    #[error(transparent)]
    Frame(#[from] crate::frame::FrameError),
    /// A feed's headers are over a bound.
    #[error("feed {id}: {source}")]
    Headers {
        /// The feed's id in its offer.
        id: u64,
        /// Which bound.
        source: HeaderError,
    },
    /// Too many feeds in one message.
    #[error("{count} feeds in one message, over the limit of {max}")]
    TooManyFeeds {
        /// Feeds present.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A feed sent whole is over a bound, or its blocks do not match its head's length.
    #[error("whole feed {feed}: {reason}")]
    Whole {
        /// The feed's discovery key, short form.
        feed: String,
        /// Which bound.
        reason: String,
    },
    /// A text field is too long.
    #[error("{field} is {len} bytes, over the limit of {max}")]
    TextTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl Message {
    /// Checks the protocol's bounds.
    pub fn check(&self) -> Result<(), CodecError> {
        let feeds = |count: usize| {
            if count > MAX_FEEDS_PER_MESSAGE {
                Err(CodecError::TooManyFeeds {
                    count,
                    max: MAX_FEEDS_PER_MESSAGE,
                })
            } else {
                Ok(())
            }
        };
        let text = |field: &'static str, len: usize, max: usize| {
            if len > max {
                Err(CodecError::TextTooLong { field, len, max })
            } else {
                Ok(())
            }
        };
        match self {
            Message::Hello { dialect, .. } => text("dialect", dialect.len(), MAX_DIALECT_LEN),
            Message::Offer { feeds: list, .. } => {
                feeds(list.len())?;
                for feed in list {
                    feed.headers.check().map_err(|source| CodecError::Headers {
                        id: feed.id,
                        source,
                    })?;
                }
                Ok(())
            }
            Message::Answer { accepted, .. } => feeds(accepted.len()),
            Message::Have { feeds: list, .. } => feeds(list.len()),
            Message::Heads { feeds: list } => {
                if list.len() > MAX_HEADS_PER_MESSAGE {
                    return Err(CodecError::TooManyFeeds {
                        count: list.len(),
                        max: MAX_HEADS_PER_MESSAGE,
                    });
                }
                Ok(())
            }
            Message::Whole { feeds: list } => {
                if list.len() > MAX_WHOLE_PER_MESSAGE {
                    return Err(CodecError::TooManyFeeds {
                        count: list.len(),
                        max: MAX_WHOLE_PER_MESSAGE,
                    });
                }
                list.iter().try_for_each(WholeEntry::check)
            }
            Message::Close { reason, .. } => text("reason", reason.len(), MAX_REASON_LEN),
            Message::Tag { .. }
            | Message::Stopped { .. }
            | Message::Ready
            | Message::Settled
            | Message::Notice { .. }
            | Message::Synced { .. } => Ok(()),
        }
    }

    /// The message's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Tag { .. } => "tag",
            Message::Offer { .. } => "offer",
            Message::Answer { .. } => "answer",
            Message::Have { .. } => "have",
            Message::Ready => "ready",
            Message::Settled => "settled",
            Message::Notice { .. } => "notice",
            Message::Synced { .. } => "synced",
            Message::Close { .. } => "close",
            Message::Stopped { .. } => "stopped",
            Message::Heads { .. } => "heads",
            Message::Whole { .. } => "whole",
        }
    }
}

/// Encodes a control message into one frame appended to `out`.
pub fn encode(message: &Message, out: &mut Vec<u8>) -> Result<(), CodecError> {
    message.check()?;
    encode_framed(message, out)
}

/// Decodes a control message from one frame's payload.
pub fn decode(payload: &[u8]) -> Result<Message, CodecError> {
    let message: Message = options().deserialize(payload)?;
    message.check()?;
    Ok(message)
}

/// Encodes a feed stream header into one frame appended to `out`.
pub fn encode_stream_header(
    header: &FeedStreamHeader,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    encode_framed(header, out)
}

/// Decodes a feed stream header from one frame's payload.
pub fn decode_stream_header(payload: &[u8]) -> Result<FeedStreamHeader, CodecError> {
    Ok(options().deserialize(payload)?)
}

/// Reads a feed stream's first frame from the start of `buf`: `Ok(None)` if more bytes
/// are needed, else the header and how many bytes of `buf` it used (the rest belongs to
/// the store's protocol).
pub fn parse_stream_header(buf: &[u8]) -> Result<Option<(FeedStreamHeader, usize)>, CodecError> {
    // A stream header is a few dozen bytes; no reason to buffer a large frame for it.
    const MAX_HEADER_FRAME: usize = 256;
    match crate::frame::parse(buf, MAX_HEADER_FRAME)? {
        None => Ok(None),
        Some((payload, used)) => Ok(Some((decode_stream_header(payload)?, used))),
    }
}

/// The encoded size of `value` in bytes, without the frame prefix.
pub fn encoded_len<T: Serialize>(value: &T) -> Result<usize, CodecError> {
    Ok(options().serialized_size(value)? as usize)
}

fn encode_framed<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    // The byte budget makes an over-limit value fail here rather than at the peer.
    let payload = options().serialize(value)?;
    crate::frame::encode(&payload, MAX_FRAME_LEN, out)?;
    Ok(())
}
