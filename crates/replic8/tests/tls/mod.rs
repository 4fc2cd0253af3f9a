//! TLS for sessions over loopback QUIC in tests: the connection manager's own
//! configuration (ed25519 raw public keys, both sides authenticated), so these tests run
//! the handshake the node runs. Each endpoint gets a fresh identity.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use replic8::message::ALPN;
use replic8::session::SessionConfig;
use replic8_connmgr::tls::{self, test_support};
use replic8_connmgr::Identity;

fn alpn() -> Vec<Vec<u8>> {
    vec![ALPN.to_vec()]
}

pub fn server_endpoint() -> quinn::Endpoint {
    let crypto = tls::server_config(&Identity::generate(), &alpn()).unwrap();
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(SessionConfig::default().quic_stream_limit().into());
    config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap()
}

pub fn client_endpoint() -> quinn::Endpoint {
    let config = test_support::quinn_client_config(&Identity::generate(), &alpn(), None).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

/// [`client_endpoint`] whose connections send a PING every 5 s, as the node's do, so
/// that a connection carrying nothing stays up (it never reaches its idle timeout).
pub fn client_endpoint_kept_alive() -> quinn::Endpoint {
    let mut config =
        test_support::quinn_client_config(&Identity::generate(), &alpn(), None).unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(5)));
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

pub async fn connect(
    client: &quinn::Endpoint,
    server: &quinn::Endpoint,
) -> (quinn::Connection, quinn::Connection) {
    connect_via(client, server, server.local_addr().unwrap()).await
}

/// [`connect`], the client dialing `addr` (a relay in front of `server`).
pub async fn connect_via(
    client: &quinn::Endpoint,
    server: &quinn::Endpoint,
    addr: SocketAddr,
) -> (quinn::Connection, quinn::Connection) {
    let dialing = client.connect(addr, tls::SERVER_NAME).unwrap();
    let accepting = async { server.accept().await.unwrap().await.unwrap() };
    let (dialed, accepted) = tokio::join!(dialing, accepting);
    (dialed.unwrap(), accepted)
}
