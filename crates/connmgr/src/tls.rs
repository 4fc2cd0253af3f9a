//! TLS 1.3 with ed25519 raw public keys (RFC 7250) for quinn, both directions
//! authenticated.
//!
//! Each side presents its `Identity` as a raw public key and accepts exactly one kind of
//! key from the other: an ed25519 `SubjectPublicKeyInfo`. There are no certificates, no
//! names and no trust anchors: a peer *is* its key, and the handshake signature proves the
//! peer holds the matching secret. A dial may pin the expected key; the client verifier
//! then fails the handshake on any other key and records the key it saw, so the dial can
//! report both.

use std::sync::{Arc, Mutex};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::AlwaysResolvesClientRawPublicKeys;
use rustls::crypto::{
    verify_tls13_signature_with_raw_key, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{
    CertificateDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::AlwaysResolvesServerRawPublicKeys;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use thiserror::Error;

use crate::key::{Identity, KeyError, PeerKey};

/// The server name a client puts in its handshake. Raw public keys carry no names, so it
/// is a fixed placeholder that no verifier looks at.
pub const SERVER_NAME: &str = "replic8";

/// Why the TLS configuration could not be built.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The identity's secret key could not be encoded or loaded.
    #[error("cannot load the identity key: {0}")]
    Key(String),
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn refused the rustls configuration (no TLS 1.3 suite usable for QUIC).
    #[error("quic tls configuration: {0}")]
    Quic(String),
}

/// The key a pinned dial expected differs from the one the peer presented.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("peer key mismatch: expected {}, got {}", expected.fmt_short(), actual.fmt_short())]
pub struct KeyMismatch {
    /// The pinned key.
    pub expected: PeerKey,
    /// The key the peer presented.
    pub actual: PeerKey,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(identity: &Identity) -> Result<Arc<CertifiedKey>, TlsError> {
    let pkcs8 = identity
        .to_pkcs8()
        .map_err(|e: KeyError| TlsError::Key(e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(pkcs8))
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let spki = CertificateDer::from(identity.key().to_spki());
    Ok(Arc::new(CertifiedKey::new(vec![spki], signer)))
}

/// The rustls server configuration for `identity`: raw public keys only, client keys
/// mandatory and ed25519 only.
pub fn server_config(
    identity: &Identity,
    alpn: &[Vec<u8>],
) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PeerVerifier::new(&provider, None));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(
            certified_key(identity)?,
        )));
    config.alpn_protocols = alpn.to_vec();
    // Resumption would skip the client's key; there is nothing to gain with raw keys.
    config.send_tls13_tickets = 0;
    QuicServerConfig::try_from(config).map_err(|e| TlsError::Quic(e.to_string()))
}

/// A client configuration for one dial, plus the slot where the verifier records the
/// key the server presented (filled even when a pinned key does not match).
pub(crate) struct DialTls {
    /// The quinn client configuration.
    pub(crate) config: quinn::ClientConfig,
    /// The key the server presented, once the handshake got that far.
    pub(crate) seen: Arc<Mutex<Option<PeerKey>>>,
}

/// The rustls client configuration for `identity`, pinning `expected` if given.
pub(crate) fn client_config(
    identity: &Identity,
    alpn: &[Vec<u8>],
    expected: Option<PeerKey>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<DialTls, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PeerVerifier::new(&provider, expected));
    let seen = verifier.seen.clone();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(AlwaysResolvesClientRawPublicKeys::new(
            certified_key(identity)?,
        )));
    config.alpn_protocols = alpn.to_vec();
    config.resumption = rustls::client::Resumption::disabled();
    let quic = QuicClientConfig::try_from(config).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(DialTls { config, seen })
}

/// The key a peer proved in the handshake of `connection`.
pub fn peer_key(connection: &quinn::Connection) -> Result<PeerKey, KeyError> {
    let identity = connection.peer_identity().ok_or(KeyError::NotEd25519)?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| KeyError::NotEd25519)?;
    match certs.as_slice() {
        [one] => PeerKey::from_spki(one.as_ref()),
        _ => Err(KeyError::NotEd25519),
    }
}

/// Verifies the other side's raw public key, in either direction.
#[derive(Debug)]
struct PeerVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    expected: Option<PeerKey>,
    seen: Arc<Mutex<Option<PeerKey>>>,
}

impl PeerVerifier {
    fn new(provider: &CryptoProvider, expected: Option<PeerKey>) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
            expected,
            seen: Arc::new(Mutex::new(None)),
        }
    }

    /// Accepts a lone raw ed25519 key, no chain (and, when pinned, only the pinned one).
    fn check_key(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<PeerKey, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        }
        let key = PeerKey::from_spki(end_entity.as_ref()).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(key);
        }
        match self.expected {
            Some(expected) if expected != key => Err(rustls::Error::InvalidCertificate(
                CertificateError::Other(rustls::OtherError(Arc::new(KeyMismatch {
                    expected,
                    actual: key,
                }))),
            )),
            _ => Ok(key),
        }
    }

    fn check_signature(
        &self,
        message: &[u8],
        end_entity: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(end_entity.as_ref()),
            dss,
            &self.algorithms,
        )
    }
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General("tls 1.2 is not supported".into())
}

/// The signature methods `ServerCertVerifier` and `ClientCertVerifier` both require,
/// written once so the two sides of a handshake cannot check differently: TLS 1.3 with
/// an ed25519 raw public key only.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(tls12_refused())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.check_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }

        fn requires_raw_public_keys(&self) -> bool {
            true
        }
    };
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check_key(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    signature_checks!();
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check_key(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    signature_checks!();
}

/// The real TLS pieces for tests that build their own endpoints or hostile clients
/// (feature `test-support`): the same verifier and configurations the connection
/// manager uses, so a test cannot drift from what the node checks.
#[cfg(feature = "test-support")]
pub mod test_support {
    use std::sync::Arc;

    use super::{client_config, provider, PeerVerifier, TlsError};
    use crate::key::{Identity, PeerKey};

    /// The verifier of a server's key a dial uses: a lone raw ed25519 key, the pinned
    /// one if `expected` is given.
    pub fn server_verifier(
        expected: Option<PeerKey>,
    ) -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
        Arc::new(PeerVerifier::new(&provider(), expected))
    }

    /// The quinn client configuration a dial uses, for `identity`, pinning `expected`.
    pub fn quinn_client_config(
        identity: &Identity,
        alpn: &[Vec<u8>],
        expected: Option<PeerKey>,
    ) -> Result<quinn::ClientConfig, TlsError> {
        let transport = Arc::new(quinn::TransportConfig::default());
        Ok(client_config(identity, alpn, expected, transport)?.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p256_spki() -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .expect("p256");
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            pkcs8.as_ref().to_vec(),
        ));
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(&der).expect("signer");
        let spki = signer.public_key().expect("spki").as_ref().to_vec();
        spki
    }

    #[test]
    fn verifier_refuses_a_key_that_is_not_ed25519() {
        let verifier = PeerVerifier::new(&provider(), None);
        let cert = CertificateDer::from(p256_spki());
        let err = ClientCertVerifier::verify_client_cert(&verifier, &cert, &[], UnixTime::now())
            .expect_err("p-256 refused");
        assert!(err.to_string().contains("NotEd25519"), "{err}");
        let name = ServerName::try_from(SERVER_NAME).expect("name");
        let err = verifier
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .expect_err("p-256 refused");
        assert!(err.to_string().contains("NotEd25519"), "{err}");
    }

    #[test]
    fn pinned_verifier_names_both_keys_on_mismatch() {
        let expected = Identity::generate().key();
        let actual = Identity::generate().key();
        let verifier = PeerVerifier::new(&provider(), Some(expected));
        let name = ServerName::try_from(SERVER_NAME).expect("name");
        let cert = CertificateDer::from(actual.to_spki());
        let err = verifier
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .expect_err("mismatch");
        assert!(err.to_string().contains("KeyMismatch"), "{err}");
        assert_eq!(*verifier.seen.lock().expect("lock"), Some(actual));
        let ok = PeerVerifier::new(&provider(), Some(actual));
        assert!(ok
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .is_ok());
    }

    #[test]
    fn verifier_refuses_a_certificate_chain() {
        let verifier = PeerVerifier::new(&provider(), None);
        let cert = CertificateDer::from(Identity::generate().key().to_spki());
        assert!(ClientCertVerifier::verify_client_cert(
            &verifier,
            &cert,
            std::slice::from_ref(&cert),
            UnixTime::now()
        )
        .is_err());
    }
}
