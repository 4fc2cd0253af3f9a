//! The NAT control channel's wire format: one `NatMessage` enum, framed with a 2-byte
//! big-endian length and encoded with bincode 1.3 under one bounded `options` value
//! (`docs/PROTOCOL.md`, connmgr: NAT control channel).
//!
//! Each side opens one unidirectional stream per connection and writes `STREAM_CONTROL`
//! then frames. The session layer never uses unidirectional streams, so every one a peer
//! opens belongs to the connection manager; its first byte says what it carries.

use std::net::SocketAddr;

use bincode::Options;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::relay::CircuitEnd;

/// The first byte of the unidirectional stream that carries `NatMessage` frames.
pub const STREAM_CONTROL: u8 = 0;
/// The first byte of a unidirectional stream that carries one circuit's packets; an
/// 8-byte big-endian circuit id follows, then frames of a 2-byte big-endian length and
/// one packet (1 to `MAX_RELAYED_PACKET` bytes).
pub const STREAM_CIRCUIT: u8 = 1;
/// Largest packet a circuit carries: a QUIC packet of the largest UDP payload path MTU
/// discovery tries on a circuit, a wide-area path (`WIDE_MAX_UDP_PAYLOAD`, 1452), with
/// room to spare.
pub const MAX_RELAYED_PACKET: usize = 1500;
/// Largest encoded message. Every message today is a few dozen bytes; the margin is for
/// lists (addresses a relay can reach) without a format change.
pub const MAX_NAT_FRAME: usize = 1024;
/// Most keys in one `Located` answer (8 keys are 264 bytes, well inside a frame).
pub const MAX_LOCATED: usize = 8;
/// Most messages a peer may send on its control stream per `CONTROL_RATE_WINDOW`; one
/// past it closes the stream's reader (the connection itself stays). An honest peer sends
/// one `Observed` per connection and a dial-back exchange now and then.
pub const MAX_CONTROL_MESSAGES: u32 = 64;
/// The window of `MAX_CONTROL_MESSAGES`.
pub const CONTROL_RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// One message on the NAT control channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NatMessage {
    /// The address the sender sees the receiver at, on the connection this stream belongs
    /// to (sent once when the connection comes up, and again if it changes).
    Observed {
        /// The receiver's address as the sender sees it.
        addr: SocketAddr,
    },
    /// Please dial me back at the address you see me at (`Observed`), from another UDP
    /// port, and say whether the handshake got through (`DialBackResult`).
    DialBack {
        /// Echoed in the result.
        nonce: u64,
    },
    /// The outcome of a `DialBack`.
    DialBackResult {
        /// The request's nonce.
        nonce: u64,
        /// The address dialed (the requester's observed address).
        addr: SocketAddr,
        /// `true` if the dial-back handshake completed.
        reached: bool,
    },
    /// A `DialBack` refused: the peer's rate limit, or dial-backs switched off there.
    DialBackRefused {
        /// The request's nonce.
        nonce: u64,
    },
    /// Over a relayed connection: my public addresses; let us both dial direct. The
    /// receiver answers with `PunchAnswer` and dials half a round trip later.
    PunchOffer {
        /// The sender's public addresses (at most 4 are used).
        addrs: Vec<SocketAddr>,
    },
    /// The answer to `PunchOffer`: my public addresses; the receiver dials at once.
    PunchAnswer {
        /// The sender's public addresses (at most 4 are used).
        addrs: Vec<SocketAddr>,
    },
    /// Open a circuit through the receiver (a relay) to `target`.
    CircuitOpen {
        /// The sender's id for it on this connection.
        circuit: u64,
        /// The key of the peer to reach.
        target: [u8; 32],
    },
    /// The relay asks the receiver to accept a circuit from `from`.
    CircuitIncoming {
        /// The relay's id for it on this connection.
        circuit: u64,
        /// The key of the peer that opens it.
        from: [u8; 32],
    },
    /// The circuit is accepted (the target to the relay, the relay to the opener).
    CircuitAccept {
        /// Its id on this connection.
        circuit: u64,
    },
    /// The circuit is refused or closed, at any hop.
    CircuitClose {
        /// Its id on this connection.
        circuit: u64,
        /// Why.
        reason: CircuitEnd,
    },
    /// From a node that relays: whether it relays for us now (sent when the connection
    /// comes up if it does, and again when that changes).
    RelayOffer {
        /// It relays circuits between its peers.
        relaying: bool,
    },
    /// To a relay: answer `Locate` queries about me (until this connection ends or
    /// `Unregister`); the relay answers `Registered`.
    Register,
    /// To a relay: forget my registration.
    Unregister,
    /// The relay's answer to `Register`.
    Registered {
        /// Whether it keeps the registration (its limit, or it stopped relaying).
        accepted: bool,
    },
    /// To a relay: which of the peers registered with you do you see at `addr` (or, if
    /// none, at its IP)? The relay answers `Located`.
    Locate {
        /// Echoed in the answer.
        query: u32,
        /// The address we could not reach directly.
        addr: SocketAddr,
    },
    /// The answer to `Locate`: the keys of registered peers the relay sees at the
    /// address (exact matches first), at most `MAX_LOCATED`.
    Located {
        /// The query's id.
        query: u32,
        /// Their keys.
        keys: Vec<[u8; 32]>,
    },
}

/// Why a frame could not be read or written.
#[derive(Debug, Error)]
pub enum WireError {
    /// The frame's length is over `MAX_NAT_FRAME` (or zero).
    #[error("bad frame length {0} (max {MAX_NAT_FRAME})")]
    FrameLength(usize),
    /// The bytes are not a `NatMessage`.
    #[error("undecodable message: {0}")]
    Decode(#[from] bincode::Error),
}

/// The bincode options of every encode and decode: little endian, varint integers, no
/// trailing bytes, and a byte budget of one frame, which bounds every allocation.
pub fn options() -> impl Options + Copy {
    bincode::DefaultOptions::new()
        .with_limit(MAX_NAT_FRAME as u64)
        .with_little_endian()
        .with_varint_encoding()
        .reject_trailing_bytes()
}

/// `message` as one frame: its length (2 bytes, big endian), then its encoding.
pub fn encode_frame(message: &NatMessage) -> Result<Vec<u8>, WireError> {
    let body = options().serialize(message)?;
    if body.is_empty() || body.len() > MAX_NAT_FRAME {
        return Err(WireError::FrameLength(body.len()));
    }
    let mut frame = Vec::with_capacity(2 + body.len());
    frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The body length a frame header announces, checked against `MAX_NAT_FRAME`.
pub fn frame_len(header: [u8; 2]) -> Result<usize, WireError> {
    let len = u16::from_be_bytes(header) as usize;
    if len == 0 || len > MAX_NAT_FRAME {
        return Err(WireError::FrameLength(len));
    }
    Ok(len)
}

/// Decodes one frame's body.
pub fn decode(body: &[u8]) -> Result<NatMessage, WireError> {
    Ok(options().deserialize(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_through_a_frame() {
        let addr: SocketAddr = "203.0.113.7:4433".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        for m in [
            NatMessage::Observed { addr },
            NatMessage::Observed { addr: v6 },
            NatMessage::DialBack { nonce: u64::MAX },
            NatMessage::DialBackResult {
                nonce: 7,
                addr,
                reached: true,
            },
            NatMessage::DialBackRefused { nonce: 1 },
            NatMessage::CircuitOpen {
                circuit: 2,
                target: [7; 32],
            },
            NatMessage::CircuitIncoming {
                circuit: 3,
                from: [9; 32],
            },
            NatMessage::CircuitAccept { circuit: 3 },
            NatMessage::PunchOffer {
                addrs: vec![addr, v6],
            },
            NatMessage::PunchAnswer { addrs: vec![] },
            NatMessage::CircuitClose {
                circuit: 3,
                reason: CircuitEnd::Limit,
            },
            NatMessage::RelayOffer { relaying: true },
            NatMessage::Register,
            NatMessage::Unregister,
            NatMessage::Registered { accepted: false },
            NatMessage::Locate { query: 9, addr: v6 },
            NatMessage::Located {
                query: 9,
                keys: vec![[3; 32]; MAX_LOCATED],
            },
        ] {
            let frame = encode_frame(&m).unwrap();
            let len = frame_len([frame[0], frame[1]]).unwrap();
            assert_eq!(len, frame.len() - 2);
            assert_eq!(decode(&frame[2..]).unwrap(), m);
        }
    }

    #[test]
    fn bad_lengths_and_bytes_are_typed_errors() {
        assert!(matches!(frame_len([0, 0]), Err(WireError::FrameLength(0))));
        assert!(matches!(
            frame_len([0xff, 0xff]),
            Err(WireError::FrameLength(0xffff))
        ));
        assert!(matches!(decode(&[200]), Err(WireError::Decode(_))));
        // Trailing bytes after a whole message are refused.
        let mut frame = encode_frame(&NatMessage::DialBack { nonce: 1 }).unwrap();
        frame.push(0);
        assert!(matches!(decode(&frame[2..]), Err(WireError::Decode(_))));
    }
}
