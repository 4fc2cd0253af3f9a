//! The peer key decoder of the connection manager: the DER `SubjectPublicKeyInfo` a peer
//! presents as its TLS raw public key (`PeerKey::from_spki`).
//!
//! Properties: never panics; an accepted key is a valid ed25519 point and encodes back
//! to exactly the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replic8_connmgr::PeerKey;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = PeerKey::from_spki(data) {
        assert_eq!(key.to_spki(), data);
        assert_eq!(PeerKey::from_spki(&key.to_spki()).ok(), Some(key));
    }
});
