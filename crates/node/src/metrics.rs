//! Counters a user can read from a running node, and an opt-in HTTP endpoint that serves
//! them in the Prometheus text format.
//!
//! The endpoint is deliberately small: it answers `GET /metrics` (and `GET /`) with the
//! counters, anything else with 404, reads at most [`MAX_REQUEST_HEAD`] bytes of request
//! head within [`REQUEST_TIMEOUT`], and closes every connection after one response.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest request head the endpoint reads; a scraper's request is a few hundred bytes.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head before it is dropped.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One counter or gauge: its name, help line, kind and value.
#[derive(Debug)]
pub struct Metric {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    value: AtomicU64,
}

impl Metric {
    const fn new(name: &'static str, help: &'static str, kind: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            value: AtomicU64::new(0),
        }
    }

    /// Add `n` to the value.
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtract `n` from the value (gauges), saturating at zero.
    pub fn sub(&self, n: u64) {
        let _ = self
            .value
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Set the value (gauges).
    pub fn set(&self, n: u64) {
        self.value.store(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// The node's counters, shared by every part of the node that updates them.
#[derive(Debug)]
pub struct Counters {
    /// UDP payload bytes received from peers on QUIC connections (all streams, acks and
    /// handshakes included), as the connection manager counts them.
    pub bytes_in: Metric,
    /// UDP payload bytes sent to peers on QUIC connections.
    pub bytes_out: Metric,
    /// Blocks received from peers that verified and were stored.
    pub blocks_verified: Metric,
    /// Blocks or proofs from peers that failed verification.
    pub verify_failures: Metric,
    /// Peers connected now.
    pub peers: Metric,
    /// Topics joined now.
    pub topics: Metric,
    /// Replication sessions running now.
    pub sessions: Metric,
    /// Sessions that ended because the peer broke the protocol.
    pub sessions_failed: Metric,
    /// Peers banned for misbehaving (`EndReason::is_misbehaviour`).
    pub bans: Metric,
    /// Idle inbound peers closed to make room when the peer table was full.
    pub evictions: Metric,
    /// Incoming handshakes asked to prove their address first (QUIC retries sent).
    pub retries: Metric,
    /// Incoming connections refused (peer table full, per-address caps, bans, ...).
    pub refused: Metric,
    /// Feeds offered by peers that the store refused (policy, another namespace, quota).
    pub offers_refused: Metric,
    /// Nodes in the DHT routing tables (both families), read at each scrape.
    pub dht_nodes: Metric,
    /// DHT queries received from other nodes.
    pub dht_queries_in: Metric,
    /// DHT queries we sent.
    pub dht_queries_out: Metric,
    /// DHT queries of ours that got no answer in time.
    pub dht_timeouts: Metric,
    /// Announces other nodes stored with our DHT node.
    pub dht_announces_stored: Metric,
    /// Reachability as the last dial-back showed it: 0 unknown, 1 reachable, 2
    /// unreachable.
    pub nat_reachability: Metric,
    /// Dial-backs we asked peers for (reachability checks).
    pub nat_dial_backs_asked: Metric,
    /// Dial-backs we made on peers' requests.
    pub nat_dial_backs_served: Metric,
    /// Relay circuits that end here now (peers we reach only through a relay).
    pub nat_circuits: Metric,
    /// Circuits we relayed for other peers.
    pub nat_circuits_relayed: Metric,
    /// Punches that opened a direct connection to a peer reached through a relay.
    pub nat_punches_ok: Metric,
    /// Registrations relays accepted from us (they tell peers who ask where we are).
    pub nat_relay_registrations: Metric,
    /// Relays' answers to our `Locate` queries (who is at an address we could not dial).
    pub nat_locates: Metric,
    /// Dials through a relay made because a direct dial did not answer.
    pub nat_relayed_dials: Metric,
    /// Those of them that connected.
    pub nat_relayed_dials_ok: Metric,
    /// Small feeds sent whole on sessions' control streams instead of on a feed stream
    /// (the sessions' `SessionTotals`), read at each scrape.
    pub feeds_sent_whole: Metric,
    /// Small feeds peers sent whole that the stores here verified and stored, read at
    /// each scrape.
    pub feeds_received_whole: Metric,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            bytes_in: Metric::new(
                "replic8_bytes_in_total",
                "UDP payload bytes received from peers on QUIC connections.",
                "counter",
            ),
            bytes_out: Metric::new(
                "replic8_bytes_out_total",
                "UDP payload bytes sent to peers on QUIC connections.",
                "counter",
            ),
            blocks_verified: Metric::new(
                "replic8_blocks_verified_total",
                "Blocks received from peers that verified and were stored.",
                "counter",
            ),
            verify_failures: Metric::new(
                "replic8_verify_failures_total",
                "Blocks or proofs from peers that failed verification.",
                "counter",
            ),
            peers: Metric::new("replic8_peers", "Peers connected now.", "gauge"),
            topics: Metric::new("replic8_topics", "Topics joined now.", "gauge"),
            sessions: Metric::new(
                "replic8_sessions",
                "Replication sessions running now.",
                "gauge",
            ),
            sessions_failed: Metric::new(
                "replic8_sessions_failed_total",
                "Sessions ended because the peer broke the protocol.",
                "counter",
            ),
            bans: Metric::new(
                "replic8_bans_total",
                "Peers banned for breaking the protocol.",
                "counter",
            ),
            evictions: Metric::new(
                "replic8_evictions_total",
                "Idle inbound peers closed to make room in a full peer table.",
                "counter",
            ),
            retries: Metric::new(
                "replic8_retries_total",
                "Incoming handshakes asked to prove their address (QUIC retries).",
                "counter",
            ),
            refused: Metric::new(
                "replic8_connections_refused_total",
                "Incoming connections refused (table full, per-address caps, bans).",
                "counter",
            ),
            offers_refused: Metric::new(
                "replic8_offers_refused_total",
                "Offered feeds the store refused (policy, another namespace, quota).",
                "counter",
            ),
            dht_nodes: Metric::new(
                "replic8_dht_nodes",
                "Nodes in the DHT routing tables.",
                "gauge",
            ),
            dht_queries_in: Metric::new(
                "replic8_dht_queries_in_total",
                "DHT queries received from other nodes.",
                "counter",
            ),
            dht_queries_out: Metric::new(
                "replic8_dht_queries_out_total",
                "DHT queries sent.",
                "counter",
            ),
            dht_timeouts: Metric::new(
                "replic8_dht_timeouts_total",
                "DHT queries sent that got no answer in time.",
                "counter",
            ),
            dht_announces_stored: Metric::new(
                "replic8_dht_announces_stored_total",
                "Announces other nodes stored with our DHT node.",
                "counter",
            ),
            nat_reachability: Metric::new(
                "replic8_nat_reachability",
                "Reachability by dial-back: 0 unknown, 1 reachable, 2 unreachable.",
                "gauge",
            ),
            nat_dial_backs_asked: Metric::new(
                "replic8_nat_dial_backs_asked_total",
                "Dial-backs asked of peers (reachability checks).",
                "counter",
            ),
            nat_dial_backs_served: Metric::new(
                "replic8_nat_dial_backs_served_total",
                "Dial-backs made on peers' requests.",
                "counter",
            ),
            nat_circuits: Metric::new(
                "replic8_nat_circuits",
                "Relay circuits that end here now.",
                "gauge",
            ),
            nat_circuits_relayed: Metric::new(
                "replic8_nat_circuits_relayed_total",
                "Circuits relayed for other peers.",
                "counter",
            ),
            nat_punches_ok: Metric::new(
                "replic8_nat_punches_ok_total",
                "Punch dials that opened a direct connection.",
                "counter",
            ),
            nat_relay_registrations: Metric::new(
                "replic8_nat_relay_registrations_total",
                "Registrations relays accepted from us.",
                "counter",
            ),
            nat_locates: Metric::new(
                "replic8_nat_locates_total",
                "Relays' answers to our queries about an address we could not dial.",
                "counter",
            ),
            nat_relayed_dials: Metric::new(
                "replic8_nat_relayed_dials_total",
                "Dials through a relay after a direct dial did not answer.",
                "counter",
            ),
            nat_relayed_dials_ok: Metric::new(
                "replic8_nat_relayed_dials_ok_total",
                "Dials through a relay that connected.",
                "counter",
            ),
            feeds_sent_whole: Metric::new(
                "replic8_feeds_sent_whole_total",
                "Small feeds sent whole on a session's control stream, not on a feed stream.",
                "counter",
            ),
            feeds_received_whole: Metric::new(
                "replic8_feeds_received_whole_total",
                "Small feeds received whole from peers, verified and stored.",
                "counter",
            ),
        }
    }
}

impl Counters {
    /// Every metric, in a stable order.
    pub fn all(&self) -> [&Metric; 30] {
        [
            &self.bytes_in,
            &self.bytes_out,
            &self.blocks_verified,
            &self.verify_failures,
            &self.peers,
            &self.topics,
            &self.sessions,
            &self.sessions_failed,
            &self.bans,
            &self.evictions,
            &self.retries,
            &self.refused,
            &self.offers_refused,
            &self.dht_nodes,
            &self.dht_queries_in,
            &self.dht_queries_out,
            &self.dht_timeouts,
            &self.dht_announces_stored,
            &self.nat_reachability,
            &self.nat_dial_backs_asked,
            &self.nat_dial_backs_served,
            &self.nat_circuits,
            &self.nat_circuits_relayed,
            &self.nat_punches_ok,
            &self.nat_relay_registrations,
            &self.nat_locates,
            &self.nat_relayed_dials,
            &self.nat_relayed_dials_ok,
            &self.feeds_sent_whole,
            &self.feeds_received_whole,
        ]
    }

    /// The counters in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for m in self.all() {
            let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
            let _ = writeln!(out, "# TYPE {} {}", m.name, m.kind);
            let _ = writeln!(out, "{} {}", m.name, m.get());
        }
        out
    }
}

/// Brings counters kept elsewhere (the DHT node's) up to date before a scrape is served.
pub type Refresh =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// A running metrics endpoint; dropping it stops the endpoint.
#[derive(Debug)]
#[must_use = "dropping the endpoint stops it"]
pub struct MetricsEndpoint {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsEndpoint {
    /// Bind `addr` and serve `counters` until the endpoint is dropped or closed.
    pub async fn bind(addr: SocketAddr, counters: Arc<Counters>) -> std::io::Result<Self> {
        Self::bind_with(addr, counters, None).await
    }

    /// Like [`bind`](Self::bind), running `refresh` before each scrape is answered.
    pub async fn bind_with(
        addr: SocketAddr,
        counters: Arc<Counters>,
        refresh: Option<Refresh>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counters = counters.clone();
                let refresh = refresh.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_one(stream, &counters, refresh).await {
                        tracing::debug!(error = %e, "metrics request failed");
                    }
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting requests.
    pub fn close(self) {
        self.task.abort();
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(
    mut stream: TcpStream,
    counters: &Counters,
    refresh: Option<Refresh>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read_head = async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if head.len() > MAX_REQUEST_HEAD {
                return Ok(false);
            }
        }
    };
    let complete = tokio::time::timeout(REQUEST_TIMEOUT, read_head)
        .await
        .unwrap_or(Ok(false))?;
    if !complete {
        return Ok(());
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let (status, body) = match line {
        b"GET /metrics HTTP/1.1" | b"GET /metrics HTTP/1.0" | b"GET / HTTP/1.1" => {
            if let Some(refresh) = refresh {
                refresh().await;
            }
            ("200 OK", counters.render())
        }
        _ => ("404 Not Found", "not found\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Send `request` and read the reply until the server closes. A server that drops a
    /// client resets the connection, so write and read errors count as "no more bytes".
    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(request.as_bytes()).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn a_refresh_runs_before_each_scrape() {
        let counters = Arc::new(Counters::default());
        let refresh: Refresh = {
            let counters = counters.clone();
            Arc::new(move || {
                let counters = counters.clone();
                Box::pin(async move { counters.dht_queries_out.add(5) })
            })
        };
        let ep = MetricsEndpoint::bind_with(
            "127.0.0.1:0".parse().unwrap(),
            counters.clone(),
            Some(refresh),
        )
        .await
        .unwrap();
        let resp = get(ep.local_addr(), "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            resp.contains("\nreplic8_dht_queries_out_total 5\n"),
            "{resp}"
        );
        let resp = get(ep.local_addr(), "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            resp.contains("\nreplic8_dht_queries_out_total 10\n"),
            "{resp}"
        );
    }

    #[tokio::test]
    async fn serves_counters_in_prometheus_text() {
        let counters = Arc::new(Counters::default());
        counters.bytes_in.add(1234);
        counters.peers.set(3);
        counters.peers.sub(1);
        let ep = MetricsEndpoint::bind("127.0.0.1:0".parse().unwrap(), counters.clone())
            .await
            .unwrap();
        let resp = get(ep.local_addr(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.contains("\nreplic8_bytes_in_total 1234\n"), "{resp}");
        assert!(
            resp.contains("# TYPE replic8_peers gauge\nreplic8_peers 2\n"),
            "{resp}"
        );
        let missing = get(ep.local_addr(), "GET /other HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    }

    #[tokio::test]
    async fn oversize_request_head_is_dropped_without_reply() {
        let ep = MetricsEndpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Counters::default()),
        )
        .await
        .unwrap();
        let junk = "X".repeat(MAX_REQUEST_HEAD * 2);
        let resp = get(ep.local_addr(), &junk).await;
        assert!(resp.is_empty(), "{resp}");
        // The endpoint still serves the next client.
        let ok = get(ep.local_addr(), "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    }
}
