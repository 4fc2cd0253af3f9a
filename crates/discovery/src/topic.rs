//! `Topic`: the 32-byte name of what peers gather around.

use std::fmt;

/// A 32-byte topic. Topics are already hashes (a feed's discovery key, for example), so
/// publishing them on the DHT or the LAN reveals nothing new.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(pub [u8; 32]);

impl Topic {
    /// The topic's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The DHT infohash for this topic: its first 20 bytes.
    pub fn infohash(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out.copy_from_slice(&self.0[..20]);
        out
    }

    /// Lowercase hex of all 32 bytes.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters; `None` if the text is not exactly that.
    pub fn from_hex(text: &str) -> Option<Topic> {
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Topic(out))
    }

    /// The first 4 bytes in hex, for logs.
    pub fn fmt_short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl From<[u8; 32]> for Topic {
    fn from(bytes: [u8; 32]) -> Self {
        Topic(bytes)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", self.fmt_short())
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_infohash() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        let topic = Topic(bytes);
        assert_eq!(Topic::from_hex(&topic.to_hex()), Some(topic));
        assert_eq!(topic.infohash()[..], bytes[..20]);
        assert_eq!(topic.fmt_short(), "00010203");
        assert_eq!(Topic::from_hex("00"), None);
        assert_eq!(Topic::from_hex(&"zz".repeat(32)), None);
    }
}
