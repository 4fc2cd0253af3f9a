//! Node identity: the ed25519 key pair (`Identity`) and the public key that names a peer
//! (`PeerKey`), with their encoding as an RFC 7250 raw public key (a DER
//! `SubjectPublicKeyInfo`).

use std::fmt;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use thiserror::Error;

/// DER prefix of an ed25519 `SubjectPublicKeyInfo` (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (33 bytes, no unused bits) }, followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Length of an ed25519 `SubjectPublicKeyInfo` in DER.
const ED25519_SPKI_LEN: usize = ED25519_SPKI_PREFIX.len() + 32;

/// The public key of a node: an ed25519 public key. It names a peer everywhere.
///
/// Ordered bytewise; the dedup rule ("keep the connection initiated by the greater key")
/// uses this order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(
    /// The 32 key bytes (a valid point once the TLS handshake has proven them).
    pub [u8; 32],
);

impl PeerKey {
    /// Wraps 32 bytes. They are checked to be a valid ed25519 point only when used to
    /// verify; the TLS handshake has proven every key learned from a peer.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 hex digits, for logs.
    pub fn fmt_short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// The key as a DER `SubjectPublicKeyInfo` (what TLS carries as a raw public key).
    pub fn to_spki(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ED25519_SPKI_LEN);
        out.extend_from_slice(&ED25519_SPKI_PREFIX);
        out.extend_from_slice(&self.0);
        out
    }

    /// Parses a DER `SubjectPublicKeyInfo`; only ed25519 keys are accepted.
    pub fn from_spki(spki: &[u8]) -> Result<Self, KeyError> {
        if spki.len() != ED25519_SPKI_LEN
            || spki[..ED25519_SPKI_PREFIX.len()] != ED25519_SPKI_PREFIX
        {
            return Err(KeyError::NotEd25519);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&spki[ED25519_SPKI_PREFIX.len()..]);
        VerifyingKey::from_bytes(&key).map_err(|_| KeyError::InvalidPoint)?;
        Ok(Self(key))
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerKey({})", self.fmt_short())
    }
}

impl std::str::FromStr for PeerKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(s, &mut key).map_err(|_| KeyError::BadHex)?;
        Ok(Self(key))
    }
}

impl From<VerifyingKey> for PeerKey {
    fn from(key: VerifyingKey) -> Self {
        Self(key.to_bytes())
    }
}

/// Why a public key was not accepted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The `SubjectPublicKeyInfo` holds some other algorithm than ed25519 (or is malformed).
    #[error("not an ed25519 public key")]
    NotEd25519,
    /// The 32 bytes are not a valid ed25519 point.
    #[error("ed25519 public key is not a valid point")]
    InvalidPoint,
    /// A key in text form is not 64 hex digits.
    #[error("peer key is not 64 hex digits")]
    BadHex,
    /// The secret key could not be encoded for TLS.
    #[error("cannot encode the secret key as pkcs8")]
    Pkcs8,
}

/// The node's ed25519 key pair. The node crate persists it; here it is passed in.
#[derive(Clone)]
pub struct Identity {
    secret: SigningKey,
}

impl Identity {
    /// A fresh random identity (from the OS random source).
    pub fn generate() -> Self {
        Self {
            secret: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// The identity for a 32-byte ed25519 secret key (seed).
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        Self {
            secret: SigningKey::from_bytes(&secret),
        }
    }

    /// The 32-byte secret key (seed), for persisting.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    /// The public key that names this node.
    pub fn key(&self) -> PeerKey {
        PeerKey::from(self.secret.verifying_key())
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.secret
    }

    /// The key pair as PKCS#8 v2 DER, as rustls wants it.
    pub(crate) fn to_pkcs8(&self) -> Result<Vec<u8>, KeyError> {
        self.secret
            .to_pkcs8_der()
            .map(|doc| doc.as_bytes().to_vec())
            .map_err(|_| KeyError::Pkcs8)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.key().fmt_short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trip() {
        let id = Identity::generate();
        let spki = id.key().to_spki();
        assert_eq!(PeerKey::from_spki(&spki), Ok(id.key()));
        // Must match the encoding of the `pkcs8` crate.
        use ed25519_dalek::pkcs8::EncodePublicKey;
        let der = id
            .signing_key()
            .verifying_key()
            .to_public_key_der()
            .expect("encode");
        assert_eq!(der.as_bytes(), &spki[..]);
    }

    #[test]
    fn spki_refuses_other_algorithms_and_lengths() {
        let id = Identity::generate();
        let mut spki = id.key().to_spki();
        spki[8] = 0x71; // Ed448 OID
        assert_eq!(PeerKey::from_spki(&spki), Err(KeyError::NotEd25519));
        assert_eq!(PeerKey::from_spki(&[]), Err(KeyError::NotEd25519));
        let mut long = id.key().to_spki();
        long.push(0);
        assert_eq!(PeerKey::from_spki(&long), Err(KeyError::NotEd25519));
    }

    #[test]
    fn key_text_round_trip_and_short_form() {
        let key = Identity::generate().key();
        let parsed: PeerKey = key.to_string().parse().expect("parse");
        assert_eq!(parsed, key);
        assert_eq!(key.fmt_short().len(), 8);
        assert!(key.to_string().starts_with(&key.fmt_short()));
        assert_eq!("zz".parse::<PeerKey>(), Err(KeyError::BadHex));
    }
}
