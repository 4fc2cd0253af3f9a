//! Two small hash functions the DHT needs and the workspace does not otherwise carry:
//! SipHash-2-4 (a keyed PRF, for tokens) and CRC-32C (for BEP 42 node ids).

/// SipHash-2-4 of `data` under a 128-bit `key` (Aumasson and Bernstein). A PRF: without
/// the key, an output cannot be predicted, which is what a BEP 5 token needs.
pub(crate) fn siphash24(key: &[u8; 16], data: &[u8]) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&key[..8]);
    let k0 = u64::from_le_bytes(k);
    k.copy_from_slice(&key[8..]);
    let k1 = u64::from_le_bytes(k);
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut m = [0u8; 8];
        m.copy_from_slice(chunk);
        let m = u64::from_le_bytes(m);
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    }
    let mut last = [0u8; 8];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    last[7] = data.len() as u8;
    let b = u64::from_le_bytes(last);
    v[3] ^= b;
    round(&mut v);
    round(&mut v);
    v[0] ^= b;
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as BEP 42 specifies.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash_matches_the_reference_vectors() {
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        // The first and last of the 64 vectors in the SipHash paper's reference code.
        assert_eq!(siphash24(&key, &[]), 0x726f_db47_dd0e_0e31);
        let data: Vec<u8> = (0..63).collect();
        assert_eq!(siphash24(&key, &data), 0x958a_324c_eb06_4572);
        // And std's (deprecated) SipHash-2-4 on every length up to 63.
        for len in 0..data.len() {
            #[allow(deprecated)]
            let mut std = std::hash::SipHasher::new_with_keys(
                u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]),
                u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]),
            );
            std::hash::Hasher::write(&mut std, &data[..len]);
            assert_eq!(
                siphash24(&key, &data[..len]),
                std::hash::Hasher::finish(&std)
            );
        }
    }

    #[test]
    fn crc32c_matches_the_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
