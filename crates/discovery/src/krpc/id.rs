//! 160-bit DHT keys (node ids, infohashes, lookup targets), XOR distance, and BEP 42
//! node ids derived from the external IP address.

use std::fmt;
use std::net::IpAddr;

use rand::Rng;

use super::hash::crc32c;

/// A 160-bit DHT key: a node id, an infohash or a lookup target.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 20]);

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.fmt_short())
    }
}

impl From<[u8; 20]> for Id {
    fn from(bytes: [u8; 20]) -> Self {
        Id(bytes)
    }
}

impl Id {
    /// A uniformly random key.
    pub fn random(rng: &mut impl Rng) -> Id {
        Id(rng.gen())
    }

    /// The first four bytes in hex, for logs.
    pub fn fmt_short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// XOR distance to `other`, comparable as a big-endian number.
    pub fn distance(&self, other: &Id) -> [u8; 20] {
        std::array::from_fn(|i| self.0[i] ^ other.0[i])
    }

    /// How many leading bits `self` and `other` share (160 when equal).
    pub fn common_prefix(&self, other: &Id) -> usize {
        for (i, (a, b)) in self.0.iter().zip(other.0.iter()).enumerate() {
            let x = a ^ b;
            if x != 0 {
                return i * 8 + x.leading_zeros() as usize;
            }
        }
        160
    }

    /// A random key that shares exactly `prefix` leading bits with `self` (for
    /// refreshing the bucket at that depth). `prefix` is at most 159.
    pub fn random_at_prefix(&self, prefix: usize, rng: &mut impl Rng) -> Id {
        let mut out = Id::random(rng).0;
        let prefix = prefix.min(159);
        for bit in 0..=prefix {
            let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
            let mine = self.0[byte] & mask;
            let want = if bit == prefix { mine ^ mask } else { mine };
            out[byte] = (out[byte] & !mask) | want;
        }
        Id(out)
    }

    /// A BEP 42 node id for `ip`: its first 21 bits come from a CRC-32C of the masked
    /// address, its last byte is `seed`, the rest is random.
    pub fn bep42(ip: IpAddr, seed: u8, rng: &mut impl Rng) -> Id {
        let mut id: [u8; 20] = rng.gen();
        let crc = bep42_crc(ip, seed);
        id[0] = (crc >> 24) as u8;
        id[1] = (crc >> 16) as u8;
        id[2] = ((crc >> 8) as u8 & 0xf8) | (id[2] & 0x07);
        id[19] = seed;
        Id(id)
    }

    /// This id is a valid BEP 42 id for `ip` (addresses exempt from BEP 42, such as
    /// loopback and private ranges, accept every id).
    pub fn is_bep42_valid_for(&self, ip: IpAddr) -> bool {
        if bep42_exempt(ip) {
            return true;
        }
        let crc = bep42_crc(ip, self.0[19]);
        self.0[0] == (crc >> 24) as u8
            && self.0[1] == (crc >> 16) as u8
            && (self.0[2] & 0xf8) == ((crc >> 8) as u8 & 0xf8)
    }
}

fn bep42_crc(ip: IpAddr, seed: u8) -> u32 {
    let r = seed & 0x07;
    match ip {
        IpAddr::V4(v4) => {
            let mut b = v4.octets();
            for (byte, mask) in b.iter_mut().zip([0x03, 0x0f, 0x3f, 0xff]) {
                *byte &= mask;
            }
            b[0] |= r << 5;
            crc32c(&b)
        }
        IpAddr::V6(v6) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v6.octets()[..8]);
            for (byte, mask) in b
                .iter_mut()
                .zip([0x01, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff])
            {
                *byte &= mask;
            }
            b[0] |= r << 5;
            crc32c(&b)
        }
    }
}

/// Addresses BEP 42 does not apply to: loopback, private, link-local and unspecified.
pub fn bep42_exempt(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// The five examples of BEP 42: (ip, last byte, first three bytes of a valid id).
    const VECTORS: [([u8; 4], u8, [u8; 3]); 5] = [
        ([124, 31, 75, 21], 0x01, [0x5f, 0xbf, 0xbf]),
        ([21, 75, 31, 124], 0x56, [0x5a, 0x3c, 0xe9]),
        ([65, 23, 51, 170], 0x16, [0xa5, 0xd4, 0x32]),
        ([84, 124, 73, 14], 0x41, [0x1b, 0x03, 0x21]),
        ([43, 213, 53, 83], 0x5a, [0xe5, 0x6f, 0x6c]),
    ];

    #[test]
    fn bep42_examples() {
        let mut rng = StdRng::seed_from_u64(1);
        for (ip, seed, prefix) in VECTORS {
            let ip = IpAddr::from(ip);
            let id = Id::bep42(ip, seed, &mut rng);
            assert_eq!(id.0[0], prefix[0], "{ip}");
            assert_eq!(id.0[1], prefix[1], "{ip}");
            assert_eq!(id.0[2] & 0xf8, prefix[2] & 0xf8, "{ip}");
            assert!(id.is_bep42_valid_for(ip));
            let mut bad = id;
            bad.0[1] ^= 0x10;
            assert!(!bad.is_bep42_valid_for(ip), "{ip}");
            // The published id itself (random middle bytes aside) checks.
            let mut published = [0u8; 20];
            published[..3].copy_from_slice(&prefix);
            published[19] = seed;
            assert!(Id(published).is_bep42_valid_for(ip), "{ip}");
        }
        let v6: IpAddr = "2001:db8::1".parse().expect("v6");
        assert!(Id::bep42(v6, 7, &mut rng).is_bep42_valid_for(v6));
        assert!(Id([0; 20]).is_bep42_valid_for("127.0.0.1".parse().expect("v4")));
    }

    #[test]
    fn prefixes_and_refresh_targets() {
        let mut rng = StdRng::seed_from_u64(2);
        let me = Id::random(&mut rng);
        assert_eq!(me.common_prefix(&me), 160);
        for prefix in [0, 1, 7, 8, 9, 100, 159] {
            let t = me.random_at_prefix(prefix, &mut rng);
            assert_eq!(me.common_prefix(&t), prefix);
        }
    }
}
