//! Connection ids that never look like the start of a KRPC message.

use std::time::Duration;

use quinn::{ConnectionId, ConnectionIdGenerator};
use quinn_proto::{HashedConnectionIdGenerator, InvalidCid};

/// quinn's default generator (`HashedConnectionIdGenerator`: random ids that `validate`
/// recognises cheaply), minus every id whose first byte is an ASCII digit.
///
/// A QUIC short header is one byte, then the connection id the receiver issued. With
/// this generator the byte after a short header's first byte is never a digit, while a
/// KRPC message is `d` (0x64, also a valid short-header first byte) and then a digit: the
/// two cannot be confused on the shared socket. Rejection sampling keeps the ids uniform
/// over what is left and keeps `validate` intact.
#[derive(Default)]
pub(crate) struct NoDigitCids {
    inner: HashedConnectionIdGenerator,
}

impl std::fmt::Debug for NoDigitCids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoDigitCids")
    }
}

impl ConnectionIdGenerator for NoDigitCids {
    fn generate_cid(&mut self) -> ConnectionId {
        loop {
            // The first byte is uniform, so this takes 1.04 tries on average.
            let cid = self.inner.generate_cid();
            if !cid.first().is_some_and(u8::is_ascii_digit) {
                return cid;
            }
        }
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.first().is_some_and(u8::is_ascii_digit) {
            return Err(InvalidCid);
        }
        self.inner.validate(cid)
    }

    fn cid_len(&self) -> usize {
        self.inner.cid_len()
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.inner.cid_lifetime()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_never_start_with_a_digit_and_validate() {
        let mut generator = NoDigitCids::default();
        for _ in 0..5000 {
            let cid = generator.generate_cid();
            assert_eq!(cid.len(), 8);
            assert!(!cid[0].is_ascii_digit(), "{cid:?}");
            assert!(generator.validate(&cid).is_ok(), "{cid:?}");
        }
    }
}
