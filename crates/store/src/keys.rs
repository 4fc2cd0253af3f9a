//! Feed identity: [`FeedKey`] (the ed25519 public key), [`FeedSecret`] (the writer's
//! secret key), [`DiscoveryKey`], and the [`SignedHead`] a writer signs.
//!
//! [`verify_heads`] checks many heads at once (ed25519 batch verification) and names
//! the ones that do not verify; see decision 185 for how its strictness compares with
//! [`FeedKey::verify_head`].
//!
//! The discovery key is BLAKE2b-256 of the bytes `hypercore`, keyed with the public key,
//! exactly as hypercore-crypto's `discoveryKey`. A head signature covers
//! [`HEAD_SIGNING_DOMAIN`] followed by the tree hash and the length (see `docs/PROTOCOL.md`,
//! "Feeds").

use std::fmt;
use std::str::FromStr;

use blake2::digest::consts::U32;
use blake2::digest::Mac;
use blake2::Blake2bMac;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::storage::StoredHead;

/// Domain-separation prefix of every head signature: a signature made for a replic8 feed
/// head can never be taken for a signature over anything else, and vice versa.
pub const HEAD_SIGNING_DOMAIN: &[u8; 24] = b"replic8 feed head v1\0\0\0\0";

/// What a feed key failed to parse as.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not 64 hex digits.
    #[error("key is not 64 hex digits")]
    Hex,
    /// The 32 bytes are not a valid ed25519 public key.
    #[error("key is not a valid ed25519 public key")]
    InvalidPoint,
}

/// A feed's identity: its writer's ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FeedKey(VerifyingKey);

impl FeedKey {
    /// Parse 32 bytes as an ed25519 public key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(FeedKey)
            .map_err(|_| KeyError::InvalidPoint)
    }

    /// The 32 bytes of the key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// The feed's discovery key (what may be published without revealing this key).
    pub fn discovery_key(&self) -> DiscoveryKey {
        DiscoveryKey::of(self.as_bytes())
    }

    /// Whether `head` carries a valid signature by this key over its tree hash and length.
    pub fn verify_head(&self, head: &SignedHead) -> bool {
        let message = head_signing_message(head.length, &head.tree_hash);
        let signature = Signature::from_bytes(&head.signature);
        self.0.verify_strict(&message, &signature).is_ok()
    }

    /// The first 8 hex digits, for logs.
    pub fn fmt_short(&self) -> String {
        hex::encode(&self.as_bytes()[..4])
    }
}

/// Fewer heads than this are verified one by one: a batch's fixed cost (its transcript
/// and the base point's term) is not repaid below it.
const MIN_BATCH: usize = 4;

/// Verifies many heads, each with its feed's key, and returns the positions in `heads`
/// of those that do not verify (empty when all do).
///
/// The heads that pass [`FeedKey::verify_head`]'s point checks (the key and the
/// signature's `R` are not of small order, `R` is canonically encoded; cheap next to a
/// verification) are verified together with ed25519-dalek's `verify_batch`; when that
/// fails, each is verified alone with [`FeedKey::verify_head`], so every bad head is
/// named and none is blamed for another. A head refused by the point checks is one
/// [`FeedKey::verify_head`] refuses too. The batch equation is the cofactorless one:
/// a head that [`FeedKey::verify_head`] refuses passes it only if its writer built the
/// signature with a small-order component on purpose, which needs the writer's secret
/// key (decision 185).
pub fn verify_heads(heads: &[(FeedKey, SignedHead)]) -> Vec<usize> {
    let mut bad = Vec::new();
    let mut batch = Vec::with_capacity(heads.len());
    for (i, (key, head)) in heads.iter().enumerate() {
        if passes_point_checks(key, head) {
            batch.push(i);
        } else {
            bad.push(i);
        }
    }
    let one_by_one = |bad: &mut Vec<usize>| {
        for &i in &batch {
            let (key, head) = &heads[i];
            if !key.verify_head(head) {
                bad.push(i);
            }
        }
    };
    if batch.len() < MIN_BATCH {
        one_by_one(&mut bad);
    } else {
        let messages: Vec<[u8; 64]> = batch
            .iter()
            .map(|&i| head_signing_message(heads[i].1.length, &heads[i].1.tree_hash))
            .collect();
        let messages: Vec<&[u8]> = messages.iter().map(|m| m.as_slice()).collect();
        let signatures: Vec<Signature> = batch
            .iter()
            .map(|&i| Signature::from_bytes(&heads[i].1.signature))
            .collect();
        let keys: Vec<VerifyingKey> = batch.iter().map(|&i| heads[i].0 .0).collect();
        if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_err() {
            one_by_one(&mut bad);
        }
    }
    bad.sort_unstable();
    bad
}

/// The checks of `verify_strict` that the batch equation leaves out: the key and the
/// signature's `R` are not of small order, and `R` is encoded canonically.
fn passes_point_checks(key: &FeedKey, head: &SignedHead) -> bool {
    if key.0.is_weak() {
        return false;
    }
    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&head.signature[..32]);
    if !is_canonical_y(&r_bytes) {
        return false;
    }
    // `R` of small order, by its encoding: `verify_batch` decompresses `R` itself, so a
    // decompression here would be a second one per head. An `R` that is not a point at
    // all fails the batch, and `verify_strict` then names it.
    !SMALL_ORDER_ENCODINGS.contains(&r_bytes)
}

/// Every encoding with a canonical `y` (see [`is_canonical_y`]) that decodes to a
/// point of small order: the eight points of the curve's 8-torsion, and `x = 0` with
/// the sign bit set for the two of them whose `x` is 0 (`y = 1` and `y = -1`).
const SMALL_ORDER_ENCODINGS: [[u8; 32]; 10] = {
    const fn hex32(s: &[u8; 64]) -> [u8; 32] {
        const fn digit(c: u8) -> u8 {
            match c {
                b'0'..=b'9' => c - b'0',
                _ => c - b'a' + 10,
            }
        }
        let mut out = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            out[i] = digit(s[2 * i]) << 4 | digit(s[2 * i + 1]);
            i += 1;
        }
        out
    }
    [
        hex32(b"0000000000000000000000000000000000000000000000000000000000000000"),
        hex32(b"0000000000000000000000000000000000000000000000000000000000000080"),
        hex32(b"0100000000000000000000000000000000000000000000000000000000000000"),
        hex32(b"0100000000000000000000000000000000000000000000000000000000000080"),
        hex32(b"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
        hex32(b"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
        hex32(b"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
        hex32(b"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
        hex32(b"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        hex32(b"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
    ]
};

/// Whether a point encoding's `y` (the sign bit aside) is below the field prime
/// 2^255 - 19. The only other non-canonical encodings, `x = 0` with the sign bit set, are
/// of points of small order, which the small-order check refuses.
fn is_canonical_y(bytes: &[u8; 32]) -> bool {
    let top = bytes[31] & 0x7f;
    !(top == 0x7f && bytes[1..31].iter().all(|&b| b == 0xff) && bytes[0] >= 0xed)
}

impl fmt::Debug for FeedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FeedKey({})", self.fmt_short())
    }
}

impl fmt::Display for FeedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.as_bytes()))
    }
}

impl FromStr for FeedKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| KeyError::Hex)?;
        FeedKey::from_bytes(&bytes)
    }
}

/// The writer's secret key: whoever holds it can append to the feed.
#[derive(Clone)]
pub struct FeedSecret(SigningKey);

impl FeedSecret {
    /// A new random key pair, from the operating system's random source.
    pub fn generate() -> Self {
        FeedSecret(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// The key pair whose secret seed is `seed` (libsodium's `crypto_sign_seed_keypair`).
    pub fn from_bytes(seed: &[u8; 32]) -> Self {
        FeedSecret(SigningKey::from_bytes(seed))
    }

    /// The 32-byte secret seed. Keep it secret.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public key of this pair.
    pub fn key(&self) -> FeedKey {
        FeedKey(self.0.verifying_key())
    }

    /// Sign a head: the tree hash of the first `length` blocks.
    pub fn sign_head(&self, length: u64, tree_hash: [u8; 32]) -> SignedHead {
        let message = head_signing_message(length, &tree_hash);
        SignedHead {
            length,
            tree_hash,
            signature: self.0.sign(&message).to_bytes(),
        }
    }

    /// Sign arbitrary bytes with plain ed25519 (no domain prefix). Only used to check our
    /// keys against the reference vectors.
    #[doc(hidden)]
    pub fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

impl fmt::Debug for FeedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FeedSecret(for {})", self.key().fmt_short())
    }
}

/// BLAKE2b-256 of `hypercore` keyed with a feed's public key: names the feed in public
/// (DHT topics, stream opening) without revealing the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DiscoveryKey(pub [u8; 32]);

impl DiscoveryKey {
    /// The discovery key of the public key `key`.
    pub fn of(key: &[u8; 32]) -> Self {
        // A 32-byte key is always a valid BLAKE2b key (at most 64 bytes).
        let mut mac = match Blake2bMac::<U32>::new_from_slice(key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("32-byte blake2b key"),
        };
        mac.update(b"hypercore");
        DiscoveryKey(mac.finalize().into_bytes().into())
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 hex digits, for logs.
    pub fn fmt_short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Debug for DiscoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiscoveryKey({})", self.fmt_short())
    }
}

impl fmt::Display for DiscoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A feed's head as the writer signed it: length, tree hash, signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    /// Number of blocks covered.
    pub length: u64,
    /// Tree hash (hash of the full roots) of the first `length` blocks.
    pub tree_hash: [u8; 32],
    /// ed25519 signature by the feed key over [`head_signing_message`].
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

impl fmt::Debug for SignedHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedHead")
            .field("length", &self.length)
            .field("tree_hash", &hex::encode(&self.tree_hash[..4]))
            .finish_non_exhaustive()
    }
}

impl From<StoredHead> for SignedHead {
    fn from(h: StoredHead) -> Self {
        SignedHead {
            length: h.length,
            tree_hash: h.tree_hash,
            signature: h.signature,
        }
    }
}

impl From<SignedHead> for StoredHead {
    fn from(h: SignedHead) -> Self {
        StoredHead {
            length: h.length,
            tree_hash: h.tree_hash,
            signature: h.signature,
        }
    }
}

/// The exact bytes a head signature covers: [`HEAD_SIGNING_DOMAIN`] (24 bytes), the tree
/// hash (32 bytes), the length (8 bytes, little-endian).
pub fn head_signing_message(length: u64, tree_hash: &[u8; 32]) -> [u8; 64] {
    let mut message = [0u8; 64];
    message[..24].copy_from_slice(HEAD_SIGNING_DOMAIN);
    message[24..56].copy_from_slice(tree_hash);
    message[56..].copy_from_slice(&length.to_le_bytes());
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_head() {
        let secret = FeedSecret::from_bytes(&[7; 32]);
        let key = secret.key();
        let head = secret.sign_head(5, [1; 32]);
        assert!(key.verify_head(&head));
        let mut other = head;
        other.length = 6;
        assert!(!key.verify_head(&other));
        let stranger = FeedSecret::from_bytes(&[8; 32]).key();
        assert!(!stranger.verify_head(&head));
    }

    fn signed(n: u8) -> (FeedKey, SignedHead) {
        let secret = FeedSecret::from_bytes(&[n; 32]);
        (secret.key(), secret.sign_head(u64::from(n) + 1, [n; 32]))
    }

    #[test]
    fn batch_accepts_good_heads() {
        for count in [0, 1, 3, 4, 100] {
            let heads: Vec<_> = (0..count).map(signed).collect();
            assert_eq!(verify_heads(&heads), Vec::<usize>::new(), "{count} heads");
        }
    }

    #[test]
    fn batch_names_the_one_bad_head_among_many() {
        for bad_at in [0, 41, 99] {
            let mut heads: Vec<_> = (0..100).map(signed).collect();
            heads[bad_at].1.signature[40] ^= 1;
            assert_eq!(verify_heads(&heads), vec![bad_at]);
        }
        // A head signed by another feed's key, and a changed length.
        let mut heads: Vec<_> = (0..10).map(signed).collect();
        heads[3].0 = heads[4].0;
        heads[7].1.length += 1;
        assert_eq!(verify_heads(&heads), vec![3, 7]);
    }

    #[test]
    fn batch_refuses_what_verify_strict_refuses() {
        let mut heads: Vec<_> = (0..8).map(signed).collect();
        // `R` the identity point (small order).
        heads[1].1.signature[..32].copy_from_slice(&{
            let mut y = [0u8; 32];
            y[0] = 1;
            y
        });
        // `R` encoded non-canonically: y = p + 1, which decodes as y = 1.
        let mut non_canonical = [0xffu8; 32];
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        heads[2].1.signature[..32].copy_from_slice(&non_canonical);
        // `R` non-canonical with a valid-looking y: y = p + 2 (only y < p is canonical).
        assert!(!is_canonical_y(&{
            let mut y = non_canonical;
            y[0] = 0xef;
            y
        }));
        assert!(is_canonical_y(&{
            let mut y = non_canonical;
            y[0] = 0xec;
            y
        }));
        // `s` not reduced.
        heads[5].1.signature[63] |= 0xe0;
        // A small-order key (the identity).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = FeedKey::from_bytes(&identity).unwrap();
        heads[6].0 = weak;
        for (i, (key, head)) in heads.iter().enumerate() {
            let expected = ![1, 2, 5, 6].contains(&i);
            assert_eq!(key.verify_head(head), expected, "head {i}");
        }
        assert_eq!(verify_heads(&heads), vec![1, 2, 5, 6]);
    }

    #[test]
    fn the_small_order_encodings_are_those_verify_strict_finds_weak() {
        // Each listed encoding decodes to a point of small order, and each is distinct.
        for (i, bytes) in SMALL_ORDER_ENCODINGS.iter().enumerate() {
            let point = VerifyingKey::from_bytes(bytes).expect("a point");
            assert!(point.is_weak(), "encoding {i} is not of small order");
            assert!(is_canonical_y(bytes), "encoding {i}");
            assert!(
                !SMALL_ORDER_ENCODINGS[..i].contains(bytes),
                "encoding {i} twice"
            );
        }
        // The `R` of real signatures are not listed, and pass the point checks.
        for n in 0..64 {
            let (key, head) = signed(n);
            assert!(passes_point_checks(&key, &head), "head {n}");
        }
        // Every `R` of small order is refused by the point checks, whatever its sign bit.
        let mut heads: Vec<_> = (0..SMALL_ORDER_ENCODINGS.len() as u8).map(signed).collect();
        for (head, bytes) in heads.iter_mut().zip(SMALL_ORDER_ENCODINGS) {
            head.1.signature[..32].copy_from_slice(&bytes);
            assert!(!passes_point_checks(&head.0, &head.1));
            assert!(!head.0.verify_head(&head.1));
        }
        assert_eq!(verify_heads(&heads), (0..heads.len()).collect::<Vec<_>>());
    }

    #[test]
    fn an_r_that_is_no_point_fails_the_batch_and_is_named() {
        // A `y` with no `x` on the curve (y = 2 is not a valid encoding), not listed as
        // of small order: the batch fails on it and the one-by-one check names it.
        let mut heads: Vec<_> = (0..8).map(signed).collect();
        let mut no_point = [0u8; 32];
        no_point[0] = 2;
        assert!(VerifyingKey::from_bytes(&no_point).is_err());
        heads[5].1.signature[..32].copy_from_slice(&no_point);
        assert_eq!(verify_heads(&heads), vec![5]);
    }

    #[test]
    /// Measured: heads verified one by one and in batches of several sizes, the best of
    /// three rounds each (`cargo test -p replic8-store --lib measured -- --nocapture`).
    fn measured_batches_verify_what_single_verification_does() {
        const HEADS: usize = 2048;
        let heads: Vec<_> = (0..HEADS)
            .map(|i| {
                let secret = FeedSecret::generate();
                (secret.key(), secret.sign_head(i as u64 + 1, [i as u8; 32]))
            })
            .collect();
        let best = |f: &dyn Fn() -> usize| {
            let mut result = 0;
            let mut best = std::time::Duration::MAX;
            for _ in 0..3 {
                let start = std::time::Instant::now();
                result = f();
                best = best.min(start.elapsed());
            }
            (result, HEADS as f64 / best.as_secs_f64())
        };
        let (good, rate) = best(&|| heads.iter().filter(|(k, h)| k.verify_head(h)).count());
        println!("{HEADS} heads: one by one {rate:.0}/s");
        assert_eq!(good, HEADS);
        for batch in [16, 64, 256, 1024] {
            let (bad, rate) = best(&|| heads.chunks(batch).map(|c| verify_heads(c).len()).sum());
            println!("{HEADS} heads: in batches of {batch} {rate:.0}/s");
            assert_eq!(bad, 0);
        }
    }

    #[test]
    fn key_text_round_trip() {
        let key = FeedSecret::from_bytes(&[3; 32]).key();
        let parsed: FeedKey = key.to_string().parse().unwrap();
        assert_eq!(parsed, key);
        assert_eq!(key.fmt_short().len(), 8);
        assert_eq!("zz".parse::<FeedKey>(), Err(KeyError::Hex));
        assert!(format!("{:?}", FeedSecret::from_bytes(&[3; 32])).contains(&key.fmt_short()));
    }
}
