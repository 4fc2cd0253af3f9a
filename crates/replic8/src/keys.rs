//! Keys, namespace keys and the connection-bound tags and capabilities of the session
//! protocol.
//!
//! A peer's key is the connection manager's ([`PeerKey`], proven by the TLS handshake)
//! and a discovery key the store's ([`DiscoveryKey`]): one type for each concept. Feed
//! keys are a plain 32-byte newtype here: the session layer carries keys of any store,
//! and a custom store's feed need not be an ed25519 log. The default feed store converts at the edge, losslessly: every
//! [`replic8_store::FeedKey`] is a [`FeedKey`] with the same bytes (`From`), and a
//! [`FeedKey`] is a [`replic8_store::FeedKey`] when its bytes are a valid ed25519 point
//! (`TryFrom`). Discovery keys are the same bytes on both sides, computed the same way.
//!
//! Every namespace tag and feed capability is a BLAKE2b-256 MAC over the connection's TLS
//! exporter value (see [`EXPORTER_LABEL`]) and the role of the side that makes it, so it
//! is valid only on the connection it was made for, cannot be reflected back to its
//! maker, and does not link the namespace (or its members) across connections.

use std::fmt;

use blake2::digest::consts::U32;
use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2b, Blake2bMac};
use serde::{Deserialize, Serialize};

/// TLS exporter label (RFC 5705 / RFC 8446 §7.5) for the session's exporter value.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-replic8/2 session";
/// TLS exporter context for the session's exporter value: empty.
pub const EXPORTER_CONTEXT: &[u8] = b"";
/// Length in bytes of the exporter value both sides derive for a connection.
pub const EXPORTER_LEN: usize = 32;

/// Domain prefix of the key of a named namespace without a secret.
const NAMESPACE_DOMAIN: &[u8] = b"replic8 namespace\0";
/// Domain prefix of a namespace tag.
const TAG_DOMAIN: &[u8] = b"replic8/2 namespace tag\0";
/// Domain prefix of a feed capability.
const CAPABILITY_DOMAIN: &[u8] = b"replic8/2 feed capability\0";

/// Which side of the QUIC connection a session runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// The side that dialed (the QUIC client). It opens the control stream.
    Dialer,
    /// The side that accepted the connection (the QUIC server).
    Acceptor,
}

impl Role {
    /// The other side.
    pub fn peer(self) -> Role {
        match self {
            Role::Dialer => Role::Acceptor,
            Role::Acceptor => Role::Dialer,
        }
    }

    /// `dialer` or `acceptor`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Dialer => "dialer",
            Role::Acceptor => "acceptor",
        }
    }

    /// The byte that binds a proof to the side that made it.
    fn byte(self) -> u8 {
        match self {
            Role::Dialer => 0,
            Role::Acceptor => 1,
        }
    }
}

/// The connection's TLS exporter value: the same 32 bytes on both sides of one
/// connection, different on every other connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ExporterSecret(pub [u8; EXPORTER_LEN]);

impl fmt::Debug for ExporterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExporterSecret(..)")
    }
}

/// Derives the exporter value of a QUIC connection with [`EXPORTER_LABEL`] and
/// [`EXPORTER_CONTEXT`].
pub fn exporter_secret(
    connection: &quinn::Connection,
) -> Result<ExporterSecret, quinn::crypto::ExportKeyingMaterialError> {
    let mut out = [0u8; EXPORTER_LEN];
    connection.export_keying_material(&mut out, EXPORTER_LABEL, EXPORTER_CONTEXT)?;
    Ok(ExporterSecret(out))
}

macro_rules! key32 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The first 5 bytes in hex, for logs.
            pub fn fmt_short(&self) -> String {
                self.0[..5].iter().map(|b| format!("{b:02x}")).collect()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.fmt_short())
            }
        }
    };
}

key32!(
    /// A feed's ed25519 public key (32 bytes).
    FeedKey
);
/// A peer's ed25519 public key, as the connection manager learned it from TLS (its type:
/// one type for one concept).
pub use replic8_connmgr::PeerKey;
/// A feed's discovery key: BLAKE2b-256 of `hypercore` keyed with the public key (the
/// store's type: one type for one concept).
pub use replic8_store::DiscoveryKey;

impl FeedKey {
    /// The feed's discovery key, computed as hypercore-crypto's `discoveryKey`.
    pub fn discovery_key(&self) -> DiscoveryKey {
        DiscoveryKey::of(&self.0)
    }
}

impl From<replic8_store::FeedKey> for FeedKey {
    fn from(key: replic8_store::FeedKey) -> FeedKey {
        FeedKey(*key.as_bytes())
    }
}

impl TryFrom<FeedKey> for replic8_store::FeedKey {
    type Error = replic8_store::KeyError;

    /// Fails when the 32 bytes are not an ed25519 public key.
    fn try_from(key: FeedKey) -> Result<replic8_store::FeedKey, replic8_store::KeyError> {
        replic8_store::FeedKey::from_bytes(&key.0)
    }
}

/// A namespace's pre-shared secret: 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct NamespaceSecret(pub [u8; 32]);

impl fmt::Debug for NamespaceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NamespaceSecret(..)")
    }
}

/// The key a namespace's tags are made with: its secret, or for a named namespace
/// without one, `BLAKE2b-256("replic8 namespace\0" ‖ name)` (guessable by whoever
/// guesses the name, by design; still never a stable value on the wire).
#[derive(Clone, PartialEq, Eq)]
pub struct NamespaceKey([u8; 32]);

impl fmt::Debug for NamespaceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NamespaceKey(..)")
    }
}

impl NamespaceKey {
    /// The key of namespace `name` with `secret`: the secret itself if there is one
    /// (the name is then local only), else the hash of the name.
    pub fn new(name: &str, secret: Option<&NamespaceSecret>) -> NamespaceKey {
        match secret {
            Some(secret) => NamespaceKey(secret.0),
            None => {
                let mut hasher = Blake2b::<U32>::new();
                hasher.update(NAMESPACE_DOMAIN);
                hasher.update(name.as_bytes());
                NamespaceKey(hasher.finalize().into())
            }
        }
    }

    /// The tag by which side `role` shows it knows this key on this connection:
    /// `BLAKE2b-256(key = k, "replic8/2 namespace tag\0" ‖ role ‖ exporter)`.
    pub fn tag(&self, exporter: &ExporterSecret, role: Role) -> [u8; 32] {
        mac(&self.0, &[TAG_DOMAIN, &[role.byte()], &exporter.0])
    }

    /// Whether `tag` is `role`'s tag for this key on this connection (constant time).
    pub fn verify(&self, exporter: &ExporterSecret, role: Role, tag: &[u8; 32]) -> bool {
        verify(&self.0, &[TAG_DOMAIN, &[role.byte()], &exporter.0], tag)
    }
}

/// The capability that `prover` knows the public key `feed` on this connection.
pub fn capability(feed: &FeedKey, exporter: &ExporterSecret, prover: Role) -> [u8; 32] {
    mac(&feed.0, &[CAPABILITY_DOMAIN, &[prover.byte()], &exporter.0])
}

/// Whether `tag` is `prover`'s capability for `feed` on this connection (constant time).
pub fn verify_capability(
    feed: &FeedKey,
    exporter: &ExporterSecret,
    prover: Role,
    tag: &[u8; 32],
) -> bool {
    verify(
        &feed.0,
        &[CAPABILITY_DOMAIN, &[prover.byte()], &exporter.0],
        tag,
    )
}

fn keyed(key: &[u8; 32], parts: &[&[u8]]) -> Blake2bMac<U32> {
    #[allow(clippy::expect_used)]
    let mut mac = <Blake2bMac<U32> as KeyInit>::new_from_slice(key)
        .expect("a 32-byte key is within BLAKE2b's 64-byte key limit");
    for part in parts {
        mac.update(part);
    }
    mac
}

fn mac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    keyed(key, parts).finalize().into_bytes().into()
}

fn verify(key: &[u8; 32], parts: &[&[u8]], tag: &[u8; 32]) -> bool {
    keyed(key, parts).verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_keys_convert_losslessly_and_agree_on_discovery_keys() {
        let store_key = replic8_store::FeedSecret::from_bytes(&[9; 32]).key();
        let ours = FeedKey::from(store_key);
        assert_eq!(&ours.0, store_key.as_bytes());
        assert_eq!(replic8_store::FeedKey::try_from(ours).unwrap(), store_key);
        let dk = ours.discovery_key();
        assert_eq!(dk, store_key.discovery_key());
        // Not every 32 bytes are an ed25519 point: the conversion says so.
        let not_a_point = (0u8..=255)
            .map(|b| FeedKey([b; 32]))
            .find(|k| replic8_store::FeedKey::try_from(*k).is_err());
        assert!(not_a_point.is_some());
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn discovery_key_matches_keyed_blake2b_reference() {
        // Reference values from Python's hashlib (the same BLAKE2b as libsodium's
        // crypto_generichash, which hypercore-crypto's discoveryKey calls):
        // hashlib.blake2b(b"hypercore", key=key, digest_size=32).hexdigest()
        let cases = [
            (
                [0u8; 32],
                "6b7ecf9ce456d56e5145ec4c5661e0c79ee47ddcc9c0504e90aa6fd60746365c",
            ),
            (
                core::array::from_fn(|i| i as u8),
                "b74b6d642892501cca569ff03d3bd21d9db9768a3c12a5516a4a80a7bebad901",
            ),
        ];
        for (key, expected) in cases {
            assert_eq!(
                FeedKey(key).discovery_key().0,
                hex32(expected),
                "key {key:?}"
            );
        }
    }

    #[test]
    fn derivations_match_the_protocol_document_vectors() {
        // docs/PROTOCOL.md, "Test vectors"; computed independently with Python's hashlib.
        let exporter = ExporterSecret([0x22; 32]);
        let secret = NamespaceKey::new("ignored", Some(&NamespaceSecret([0x11; 32])));
        assert_eq!(
            secret.tag(&exporter, Role::Dialer),
            hex32("91757cad7d93e7f68a836f63e0fc9203b4620907dfbe4c1c6177961b89636750")
        );
        assert_eq!(
            secret.tag(&exporter, Role::Acceptor),
            hex32("2a6df4459344072a9719e33fc616b8fd1736c947b28f5fb8302aa15e8739ac78")
        );
        let team = NamespaceKey::new("team", None);
        assert_eq!(
            team.0,
            hex32("11627b3f9d5e5f72d4ad4dc226b3836eae2002a510d31d876301c7799d85cb64")
        );
        assert_eq!(
            team.tag(&exporter, Role::Acceptor),
            hex32("d941da6a3b11a325a0179ebf0752cf7cac4239cac6f415b4cb6037973a7dc8d5")
        );
        let feed = FeedKey([0x33; 32]);
        assert_eq!(
            capability(&feed, &exporter, Role::Acceptor),
            hex32("c8c70e1ca104f594b5261c1d3456f30ff37eb6a2494b0f83efb283e08009b25e")
        );
        assert_eq!(
            feed.discovery_key().0,
            hex32("b8091a25f4acb4df2d121d4ce8b9998e45a5c3812ad6d65d9981f4b59426826c")
        );
    }

    #[test]
    fn tags_are_bound_to_connection_role_and_key() {
        let key = NamespaceKey::new("team", Some(&NamespaceSecret([7; 32])));
        let conn_a = ExporterSecret([1; 32]);
        let conn_b = ExporterSecret([2; 32]);
        let tag = key.tag(&conn_a, Role::Dialer);
        assert!(key.verify(&conn_a, Role::Dialer, &tag));
        assert_ne!(
            tag,
            key.tag(&conn_b, Role::Dialer),
            "linkable across connections"
        );
        assert!(
            !key.verify(&conn_b, Role::Dialer, &tag),
            "replayed on another connection"
        );
        assert!(
            !key.verify(&conn_a, Role::Acceptor, &tag),
            "reflected to its maker"
        );
        assert!(
            !NamespaceKey::new("team", Some(&NamespaceSecret([8; 32]))).verify(
                &conn_a,
                Role::Dialer,
                &tag
            )
        );
        // The name of a secret namespace is local: only the secret counts.
        assert_eq!(
            key,
            NamespaceKey::new("other", Some(&NamespaceSecret([7; 32])))
        );
        assert_ne!(
            NamespaceKey::new("team", None),
            NamespaceKey::new("teams", None)
        );
    }

    #[test]
    fn capabilities_are_bound_to_connection_role_and_key() {
        let feed = FeedKey([9; 32]);
        let conn_a = ExporterSecret([1; 32]);
        let tag = capability(&feed, &conn_a, Role::Acceptor);
        assert!(verify_capability(&feed, &conn_a, Role::Acceptor, &tag));
        assert!(!verify_capability(
            &feed,
            &ExporterSecret([3; 32]),
            Role::Acceptor,
            &tag
        ));
        assert!(!verify_capability(&feed, &conn_a, Role::Dialer, &tag));
        assert!(!verify_capability(
            &FeedKey([10; 32]),
            &conn_a,
            Role::Acceptor,
            &tag
        ));
    }
}
