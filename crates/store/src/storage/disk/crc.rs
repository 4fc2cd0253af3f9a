//! CRC-32 arithmetic: the checksum of bytes given as pieces whose checksums are known, so
//! a record's checksum is built from its blocks' without reading them twice.

/// A CRC-32 (IEEE, as `crc32fast`) of bytes given as pieces with known CRCs: `crc(a ‖
/// b)` is `crc(a)` times `x^(8·len(b))` plus `crc(b)`, in GF(2)[x] modulo the CRC
/// polynomial. `crc32fast::Hasher::combine` works out that power for every piece; this
/// keeps the last one, so pieces of one length (an append's blocks) cost one
/// multiplication each (~130 ns a 1 KiB block less).
#[derive(Debug, Clone, Copy)]
pub(super) struct Crc {
    value: u32,
    len: u64,
    /// `x^(8·shift_len)`, for the last length seen.
    shift: u32,
    shift_len: u64,
}

impl Crc {
    /// The CRC of no bytes.
    pub(super) fn new() -> Self {
        Self {
            value: 0,
            len: 0,
            shift: X0,
            shift_len: 0,
        }
    }

    /// Append `len` bytes whose CRC is `crc`.
    pub(super) fn push(&mut self, crc: u32, len: u64) {
        if len != self.shift_len {
            self.shift = x_pow_8n(len);
            self.shift_len = len;
        }
        self.value = gf2_mul(self.value, self.shift) ^ crc;
        self.len += len;
    }

    /// Append the bytes `other` is the CRC of.
    pub(super) fn append(&mut self, other: Crc) {
        self.value = gf2_mul(self.value, x_pow_8n(other.len)) ^ other.value;
        self.len += other.len;
    }

    pub(super) fn value(&self) -> u32 {
        self.value
    }
}

/// The CRC polynomial, bit-reflected.
const CRC_POLY: u32 = 0xedb8_8320;
/// `x^0` in the reflected representation.
const X0: u32 = 0x8000_0000;

/// `a · b` modulo the CRC polynomial (reflected: the top bit is `x^0`).
fn gf2_mul(a: u32, mut b: u32) -> u32 {
    let mut p = 0u32;
    for i in 0..32 {
        p ^= b & ((a >> (31 - i)) & 1).wrapping_neg();
        b = (b >> 1) ^ ((b & 1).wrapping_neg() & CRC_POLY);
    }
    p
}

/// `x^(8·n)` modulo the CRC polynomial: multiplying a CRC by it appends `n` zero bytes.
fn x_pow_8n(mut n: u64) -> u32 {
    let mut p = X0;
    let mut square = 0x0080_0000; // x^8
    while n != 0 {
        if n & 1 != 0 {
            p = gf2_mul(square, p);
        }
        square = gf2_mul(square, square);
        n >>= 1;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_pieces_is_crc_of_the_whole() {
        let bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for cuts in [
            vec![],
            vec![0],
            vec![1024, 2048, 3072, 4096],
            vec![5, 5, 6, 1000, 1029, 1030, 69_999],
            vec![3, 40_000, 40_001],
        ] {
            let mut crc = Crc::new();
            let mut from = 0;
            for to in cuts.iter().copied().chain([bytes.len()]) {
                crc.push(crc32fast::hash(&bytes[from..to]), (to - from) as u64);
                from = to;
            }
            assert_eq!(crc.value(), crc32fast::hash(&bytes), "cuts {cuts:?}");
            // And as two halves joined.
            let mut left = Crc::new();
            left.push(crc32fast::hash(&bytes[..300]), 300);
            let mut right = Crc::new();
            right.push(crc32fast::hash(&bytes[300..]), bytes.len() as u64 - 300);
            left.append(right);
            assert_eq!(left.value(), crc32fast::hash(&bytes));
        }
    }
}
