//! Hostile or broken peers: each is refused and reported once, nothing panics, and the
//! connections already up carry on.

use crate::util;

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use rand::{Rng, RngCore, SeedableRng};
use replic8_connmgr::{Identity, Peers, RefusedReason, Stats, DEFAULT_ALPN};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use util::*;

/// Two connected nodes and their streams, to check that bad input leaves them alone.
struct Pair {
    a: Node,
    b: Node,
    conn_a: quinn::Connection,
    conn_b: quinn::Connection,
}

async fn connected_pair() -> Pair {
    let mut a = Node::spawn("a", Identity::generate()).await;
    let mut b = Node::spawn_with("b", Identity::generate(), |c| {
        c.handshake_timeout = Duration::from_secs(1);
    })
    .await;
    a.dial(b.addr(), Some(b.key())).await.expect("dial");
    let conn_a = a.peer_up(b.key()).await.connection;
    let conn_b = b.peer_up(a.key()).await.connection;
    Pair {
        a,
        b,
        conn_a,
        conn_b,
    }
}

impl Pair {
    /// The connection still carries data, nothing went down, and nothing else was refused.
    async fn still_fine(mut self) {
        send_uni(&self.conn_a, b"still here").await.expect("send");
        assert_eq!(recv_uni(&self.conn_b).await.expect("recv"), b"still here");
        for ev in self
            .a
            .pending_events()
            .into_iter()
            .chain(self.b.pending_events())
        {
            assert!(
                !matches!(ev, Ev::Down(_) | Ev::Refused(_)),
                "unexpected {ev:?}"
            );
        }
        assert_eq!(
            self.b.handle.addr().send(Peers).await.expect("peers").len(),
            1
        );
        drop((self.conn_a, self.conn_b));
        self.a.close().await;
        self.b.close().await;
    }
}

/// A plain quinn client with the given rustls config; returns the client's outcome.
async fn hostile_dial(
    config: rustls::ClientConfig,
    target: std::net::SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let mut config = config;
    config.alpn_protocols = vec![DEFAULT_ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(config).expect("quic config");
    let mut endpoint = quinn::Endpoint::client(loopback()).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint
        .connect(target, "replic8")
        .expect("connect")
        .await?;
    // The server decides after its side of the handshake; wait for its verdict.
    let err = tokio::time::timeout(GUARD, conn.closed())
        .await
        .expect("server closes");
    Err(err)
}

fn client_builder() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>
{
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        // The node's own verifier with no pinned key: any raw ed25519 key from the server
        // (the hostile clients below are testing the server, not the other way round).
        .with_custom_certificate_verifier(replic8_connmgr::tls::test_support::server_verifier(None))
}

#[test]
fn garbage_datagrams_are_dropped() {
    run(|| async {
        let pair = connected_pair().await;
        let socket = tokio::net::UdpSocket::bind(loopback()).await.expect("bind");
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for i in 0..300 {
            let len = rng.gen_range(1..1500);
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            // Every third one looks like a QUIC long header (Initial, version 1).
            if i % 3 == 0 && len > 5 {
                data[0] = 0xc0 | (data[0] & 0x0f);
                data[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
            socket.send_to(&data, pair.b.addr()).await.expect("send");
        }
        // A new, honest peer still gets in.
        let mut pair = pair;
        let c = Node::spawn("c", Identity::generate()).await;
        c.dial(pair.b.addr(), Some(pair.b.key()))
            .await
            .expect("dial after garbage");
        pair.b.peer_up(c.key()).await;
        let c_key = c.key();
        c.close().await;
        pair.b.peer_down(c_key).await;
        pair.still_fine().await;
    });
}

#[test]
fn client_without_a_key_is_refused() {
    run(|| async {
        let mut pair = connected_pair().await;
        let config = client_builder().with_no_client_auth();
        let outcome = hostile_dial(config, pair.b.addr()).await;
        assert!(
            outcome.is_err(),
            "server must refuse a client without a key"
        );
        let refused = pair.b.refused().await;
        let stats = pair.b.handle.addr().send(Stats).await.expect("stats");
        assert_eq!((stats.incoming_refused, stats.peers), (1, 1));
        assert_eq!(refused.key, None);
        assert!(
            matches!(refused.reason, RefusedReason::Handshake(_)),
            "{refused:?}"
        );
        pair.still_fine().await;
    });
}

#[test]
fn client_with_a_non_ed25519_key_is_refused() {
    run(|| async {
        let mut pair = connected_pair().await;
        // An ECDSA P-256 key presented as a raw public key.
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .expect("p256 key");
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_ref().to_vec()));
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(&der).expect("signer");
        let spki = signer.public_key().expect("spki").as_ref().to_vec();
        let certified = Arc::new(rustls::sign::CertifiedKey::new(
            vec![CertificateDer::from(spki.clone())],
            signer,
        ));
        let config = client_builder().with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified),
        ));
        let outcome = hostile_dial(config, pair.b.addr()).await;
        assert!(outcome.is_err(), "server must refuse a p-256 key");
        // rustls on the client cannot even use it: b only offers ed25519 signature
        // schemes, so the client has nothing to sign with and b refuses the handshake.
        let refused = pair.b.refused().await;
        assert_eq!(refused.key, None);
        assert!(
            matches!(refused.reason, RefusedReason::Handshake(_)),
            "{refused:?}"
        );
        // A client that presents the P-256 key anyway (signing with an ed25519 key it
        // holds) reaches b's verifier, which refuses the key itself.
        let id = Identity::generate();
        let pkcs8 = {
            use ed25519_dalek::pkcs8::EncodePrivateKey;
            id.signing_key()
                .to_pkcs8_der()
                .expect("pkcs8")
                .as_bytes()
                .to_vec()
        };
        let signer = rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(pkcs8))
            .expect("signer");
        let lying = Arc::new(rustls::sign::CertifiedKey::new(
            vec![CertificateDer::from(spki)],
            signer,
        ));
        let config = client_builder().with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(lying),
        ));
        let outcome = hostile_dial(config, pair.b.addr()).await;
        assert!(outcome.is_err(), "server must refuse a p-256 key");
        let refused = pair.b.refused().await;
        assert!(
            refused.reason.to_string().contains("NotEd25519"),
            "{refused:?}"
        );
        pair.still_fine().await;
    });
}

#[test]
fn stalled_handshake_times_out() {
    run(|| async {
        let mut pair = connected_pair().await;
        // Only the client's first datagram (its Initial) reaches b; then silence.
        let relay = Relay::start(pair.b.addr(), true).await;
        let mut endpoint = quinn::Endpoint::client(loopback()).expect("client endpoint");
        // An honest client key: the stall, not the key, must be what b refuses.
        let id = Identity::generate();
        let pkcs8 = {
            use ed25519_dalek::pkcs8::EncodePrivateKey;
            id.signing_key()
                .to_pkcs8_der()
                .expect("pkcs8")
                .as_bytes()
                .to_vec()
        };
        let signer = rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(pkcs8))
            .expect("signer");
        let certified = Arc::new(rustls::sign::CertifiedKey::new(
            vec![CertificateDer::from(id.key().to_spki())],
            signer,
        ));
        let mut config = client_builder().with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified),
        ));
        config.alpn_protocols = vec![DEFAULT_ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(config).expect("quic config");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        // The client's own outcome does not matter; b must give up after its timeout.
        let connecting = endpoint.connect(relay.addr, "replic8").expect("connect");
        let refused = pair.b.refused().await;
        assert_eq!(refused.reason, RefusedReason::Timeout);
        assert_eq!(relay.forwarded.load(std::sync::atomic::Ordering::SeqCst), 1);
        drop((relay, connecting, endpoint));
        pair.still_fine().await;
    });
}

#[test]
fn a_dial_to_an_address_family_the_socket_cannot_carry_fails_at_once() {
    run(|| async {
        // Long handshakes: a dial that went out would answer `Timeout` only after the
        // guard, so an answer within it is the family check's.
        let slow = |c: &mut replic8_connmgr::ConnManagerConfig| {
            c.handshake_timeout = Duration::from_secs(120);
        };
        let v4 = Node::spawn_with("v4", Identity::generate(), slow).await;
        let v6 = Node::spawn_with("v6", Identity::generate(), |c| {
            slow(c);
            c.listen = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
        })
        .await;
        let cases = [
            (&v4, v6.addr(), "IPv6"),
            // An IPv4 address IPv4-mapped is still IPv4.
            (&v6, "[::ffff:127.0.0.1]:9".parse().expect("addr"), "IPv4"),
            (&v6, v4.addr(), "IPv4"),
        ];
        for (node, to, family) in cases {
            // Twice: the refusal records nothing, so the second is not `Backoff`.
            for _ in 0..2 {
                let err = node.dial(to, None).await.expect_err("family check");
                assert_eq!(
                    err,
                    replic8_connmgr::DialError::AddressFamily {
                        addr: to,
                        local: node.addr(),
                        family,
                    },
                    "{to}"
                );
                assert!(err.to_string().contains(family), "{err}");
            }
        }
        let stats = v4.handle.addr().send(Stats).await.expect("stats");
        assert_eq!(stats.dials_started, 0, "nothing was sent: {stats:?}");
        v4.close().await;
        v6.close().await;
    });
}
