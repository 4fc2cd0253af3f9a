//! A loopback transport benchmark, for `replic8 bench` and the `transport` example: two
//! `ConnManager`s in this process, one connection, one stream, `bytes` from one to the
//! other through the node's real stack (TLS with raw keys, the node's UDP socket and
//! transport settings).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use actix::prelude::*;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::actor::ConnManager;
use crate::config::ConnManagerConfig;
use crate::error::{DialError, SpawnError};
use crate::key::Identity;
use crate::messages::{Dial, PeerDown, PeerUp, Subscribe};
use crate::transport::TransportTuning;

/// What one transfer measured.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportReport {
    /// Bytes moved.
    pub bytes: u64,
    /// From the receiver accepting the stream to its last byte.
    pub elapsed: Duration,
    /// CPU time of this process meanwhile (both endpoints), where the OS tells (Linux).
    pub cpu: Option<Duration>,
    /// Packets the sender declared lost.
    pub lost_packets: u64,
    /// UDP datagrams the sender sent.
    pub datagrams: u64,
    /// Send system calls the sender made (datagrams / ios is the GSO batch size).
    pub send_calls: u64,
    /// ACK frames the sender received (each one a packet the receiver built and the
    /// sender decrypted and processed).
    pub acks: u64,
    /// The path MTU at the end.
    pub mtu: u16,
}

impl TransportReport {
    /// Throughput in MB/s (10^6 bytes per second).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }

    /// MB moved per CPU-second, if the CPU time is known.
    pub fn mb_per_cpu_s(&self) -> Option<f64> {
        self.cpu
            .map(|cpu| self.bytes as f64 / cpu.as_secs_f64().max(1e-3) / 1e6)
    }
}

/// Why the benchmark could not run.
#[derive(Debug, Error)]
pub enum BenchError {
    /// A connection manager could not start.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The dial failed.
    #[error("dial: {0}")]
    Dial(#[from] DialError),
    /// An actor was gone.
    #[error("actor mailbox: {0}")]
    Mailbox(#[from] MailboxError),
    /// No `PeerUp` arrived.
    #[error("no connection came up")]
    NoPeerUp,
    /// The stream could not be opened or accepted.
    #[error("stream: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading failed.
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// The sender task failed.
    #[error("sender task: {0}")]
    Sender(String),
    /// The receiver got another amount than was sent.
    #[error("received {got} of {expected} bytes")]
    Short {
        /// Bytes received.
        got: u64,
        /// Bytes sent.
        expected: u64,
    },
}

struct UpSink(mpsc::UnboundedSender<quinn::Connection>);

impl Actor for UpSink {
    type Context = Context<Self>;
}

impl Handler<PeerUp> for UpSink {
    type Result = ();
    fn handle(&mut self, msg: PeerUp, _: &mut Context<Self>) {
        // The benchmark may have given up waiting; nothing to do then.
        let _ = self.0.send(msg.connection);
    }
}

impl Handler<PeerDown> for UpSink {
    type Result = ();
    fn handle(&mut self, _: PeerDown, _: &mut Context<Self>) {}
}

async fn subscribe(
    manager: &Addr<ConnManager>,
) -> Result<mpsc::UnboundedReceiver<quinn::Connection>, BenchError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = UpSink(tx).start();
    manager
        .send(Subscribe {
            peer_up: sink.clone().recipient(),
            peer_down: sink.recipient(),
        })
        .await?;
    Ok(rx)
}

/// CPU time of this process (user + system) from `/proc/self/stat`; `None` elsewhere.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces;
    // utime and stime are the 12th and 13th of them, in USER_HZ (100 on Linux) ticks.
    let rest = stat.rsplit(')').next()?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Sends `bytes` over one stream between two fresh connection managers on 127.0.0.1
/// with `tuning`, inside the running actix system. Both are closed before it returns.
pub async fn loopback_transfer(
    tuning: &TransportTuning,
    bytes: u64,
) -> Result<TransportReport, BenchError> {
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let spawn = || {
        let mut config = ConnManagerConfig::new(Identity::generate()).with_listen(listen);
        config.transport = tuning.clone();
        ConnManager::spawn(config)
    };
    let sender_node = spawn()?;
    let receiver_node = spawn()?;
    let result = async {
        let mut up_sender = subscribe(sender_node.addr()).await?;
        let mut up_receiver = subscribe(receiver_node.addr()).await?;
        sender_node
            .addr()
            .send(Dial {
                addr: receiver_node.local_addr(),
                expected_key: Some(receiver_node.key()),
            })
            .await??;
        let conn_send = up_sender.recv().await.ok_or(BenchError::NoPeerUp)?;
        let conn_recv = up_receiver.recv().await.ok_or(BenchError::NoPeerUp)?;
        let send_side = conn_send.clone();
        let sender = tokio::spawn(async move {
            let chunk = bytes::Bytes::from(vec![0x5a_u8; 1 << 20]);
            // Bidirectional: the connection manager owns the unidirectional streams.
            let (mut send, _recv) = send_side.open_bi().await?;
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                send.write_chunk(chunk.slice(..n)).await?;
                left -= n as u64;
            }
            // Finishing a stream we just wrote cannot fail; the reader sees the end.
            let _ = send.finish();
            let _ = send.stopped().await;
            Ok::<_, BenchError>(())
        });
        let (_send, mut recv) = conn_recv.accept_bi().await?;
        let start = Instant::now();
        let cpu_start = cpu_time();
        let mut got = 0u64;
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            got += chunk.bytes.len() as u64;
        }
        let elapsed = start.elapsed();
        let cpu = cpu_time()
            .zip(cpu_start)
            .map(|(end, begin)| end.saturating_sub(begin));
        sender
            .await
            .map_err(|e| BenchError::Sender(e.to_string()))??;
        if got != bytes {
            return Err(BenchError::Short {
                got,
                expected: bytes,
            });
        }
        let stats = conn_send.stats();
        Ok(TransportReport {
            bytes,
            elapsed,
            cpu,
            lost_packets: stats.path.lost_packets,
            datagrams: stats.udp_tx.datagrams,
            send_calls: stats.udp_tx.ios,
            acks: stats.frame_rx.acks,
            mtu: stats.path.current_mtu,
        })
    }
    .await;
    sender_node.close().await;
    receiver_node.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the benchmark code path on a small transfer (a functional check; nothing
    /// about speed is asserted).
    fn transfer(tuning: &TransportTuning, bytes: u64) -> TransportReport {
        let system = System::with_tokio_rt(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
        });
        system
            .block_on(loopback_transfer(tuning, bytes))
            .expect("transfer")
    }

    #[test]
    fn loopback_transfer_moves_every_byte() {
        let report = transfer(&TransportTuning::default(), 3 << 20);
        assert_eq!(report.bytes, 3 << 20);
        assert!(report.datagrams >= report.send_calls && report.send_calls > 0);
        assert!(report.acks > 0, "{report:?}");
        assert!(report.mb_per_s() > 0.0);
    }

    /// The ACK frequency extension between two of our endpoints: the transfer completes,
    /// and the receiver acknowledges far fewer packets than it gets.
    #[test]
    fn a_transfer_with_fewer_acks_asked_moves_every_byte() {
        let tuning = TransportTuning {
            local_acks: Some(crate::transport::AckTuning::default()),
            ..TransportTuning::default()
        };
        let report = transfer(&tuning, 3 << 20);
        assert_eq!(report.bytes, 3 << 20);
        assert!(
            report.acks > 0 && report.acks * 4 <= report.datagrams,
            "{report:?}"
        );
    }
}
