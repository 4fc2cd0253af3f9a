//! Helpers of the fault tests (`tests/it/faults.rs`) and of the reader they kill
//! (`src/bin/fault_reader.rs`): the feed's blocks as a function of a seed, the reader's
//! arguments, and the lines it reports on stdout.
//!
//! The reader prints one [`Report`] per line:
//! - `start held=<n> length=<len> ranges=<a-b,...>`: after opening the feed from its
//!   data directory, every block it holds was read back and equals [`block`]; `ranges`
//!   are the held indices (half-open);
//! - `progress stored=<n> received=<r>`: after each `Downloaded` event; `received` is the
//!   store's `blocks_in` (every block that arrived in a data message this run, duplicates
//!   included) read *before* `stored`, so with no block fetched twice
//!   `received <= stored - held` holds at every line;
//! - `done stored=<n> received=<r>`: the feed is synced at its full length;
//! - `verified`: every block was read back equal to [`block`]; the reader then closes.
//!
//! [`UdpRelay`] sits between two nodes and can blackhole their connection.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::UdpSocket;

/// Logs to stderr when `RUST_LOG` is set (for the reader process; stdout is its report).
pub fn init_stderr_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Block `index` of the test feed made from `seed`: `size` pseudo-random bytes
/// (splitmix64), so the writer and a reader in another process agree without talking.
pub fn block(seed: u64, index: u64, size: usize) -> Vec<u8> {
    let mut state = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(size);
    out
}

/// What the reader is told on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderArgs {
    /// Its data directory (the same on every restart).
    pub data_dir: PathBuf,
    /// The writer's QUIC address.
    pub writer: SocketAddr,
    /// The writer's key, hex.
    pub writer_key: String,
    /// The feed's key, hex.
    pub feed: String,
    /// The namespace the writer shares the feed in.
    pub namespace: String,
    /// The seed of the feed's blocks.
    pub seed: u64,
    /// The feed's length.
    pub blocks: u64,
    /// The size of every block.
    pub block_size: usize,
}

impl ReaderArgs {
    /// The command-line arguments, in order.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            self.data_dir.display().to_string(),
            self.writer.to_string(),
            self.writer_key.clone(),
            self.feed.clone(),
            self.namespace.clone(),
            self.seed.to_string(),
            self.blocks.to_string(),
            self.block_size.to_string(),
        ]
    }

    /// Parses what [`to_args`](Self::to_args) gave.
    pub fn parse(args: &[String]) -> Result<ReaderArgs, String> {
        let [dir, writer, writer_key, feed, namespace, seed, blocks, size] = args else {
            return Err(format!("want 8 arguments, got {}", args.len()));
        };
        let num = |what: &str, s: &str| s.parse::<u64>().map_err(|e| format!("{what}: {e}"));
        Ok(ReaderArgs {
            data_dir: PathBuf::from(dir),
            writer: writer.parse().map_err(|e| format!("writer: {e}"))?,
            writer_key: writer_key.clone(),
            feed: feed.clone(),
            namespace: namespace.clone(),
            seed: num("seed", seed)?,
            blocks: num("blocks", blocks)?,
            block_size: usize::try_from(num("block size", size)?)
                .map_err(|e| format!("block size: {e}"))?,
        })
    }
}

/// One line of the reader's stdout; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Opened: the held blocks (all read back intact), as half-open ranges.
    Start {
        /// The feed's length as opened (0 if the feed is not held yet).
        length: u64,
        /// Held block ranges.
        ranges: Vec<(u64, u64)>,
    },
    /// Blocks arrived.
    Progress {
        /// Blocks stored now.
        stored: u64,
        /// Blocks received this run (read before `stored`).
        received: u64,
    },
    /// Synced at the full length.
    Done {
        /// Blocks stored.
        stored: u64,
        /// Blocks received this run.
        received: u64,
    },
    /// Every block read back equal to the writer's.
    Verified,
}

impl Report {
    /// How many blocks the ranges of a `Start` hold (0 for the other lines).
    pub fn held(&self) -> u64 {
        match self {
            Report::Start { ranges, .. } => ranges.iter().map(|(a, b)| b - a).sum(),
            _ => 0,
        }
    }

    /// Parses one line.
    pub fn parse(line: &str) -> Result<Report, String> {
        let mut words = line.split_whitespace();
        let kind = words.next().ok_or("empty line")?;
        let mut field = |name: &str| -> Result<String, String> {
            let word = words.next().ok_or(format!("{line:?}: no {name}"))?;
            word.strip_prefix(name)
                .and_then(|w| w.strip_prefix('='))
                .map(str::to_owned)
                .ok_or(format!("{line:?}: want {name}=, got {word:?}"))
        };
        let num = |s: String| s.parse::<u64>().map_err(|e| format!("{line:?}: {e}"));
        match kind {
            "start" => {
                let _held = field("held")?;
                let length = num(field("length")?)?;
                let text = field("ranges")?;
                let mut ranges = Vec::new();
                for r in text.split(',').filter(|r| !r.is_empty()) {
                    let (a, b) = r.split_once('-').ok_or(format!("{line:?}: range {r}"))?;
                    ranges.push((num(a.into())?, num(b.into())?));
                }
                Ok(Report::Start { length, ranges })
            }
            "progress" => Ok(Report::Progress {
                stored: num(field("stored")?)?,
                received: num(field("received")?)?,
            }),
            "done" => Ok(Report::Done {
                stored: num(field("stored")?)?,
                received: num(field("received")?)?,
            }),
            "verified" => Ok(Report::Verified),
            _ => Err(format!("unknown line {line:?}")),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Start { length, ranges } => {
                let text: Vec<String> = ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect();
                write!(
                    f,
                    "start held={} length={length} ranges={}",
                    self.held(),
                    text.join(",")
                )
            }
            Report::Progress { stored, received } => {
                write!(f, "progress stored={stored} received={received}")
            }
            Report::Done { stored, received } => {
                write!(f, "done stored={stored} received={received}")
            }
            Report::Verified => write!(f, "verified"),
        }
    }
}

/// A UDP relay on 127.0.0.1 between one client (the last address that sent to it) and
/// `upstream`, which can be told to drop everything (a blackhole: a QUIC connection
/// through it dies by its idle timeout) and can pace what goes to the client (a token
/// bucket: datagrams wait, and the kernel drops what overflows the socket buffer, as on
/// a slow link). The upstream sees the client at the relay's second socket. Its tasks
/// stop when it is dropped.
#[derive(Debug)]
pub struct UdpRelay {
    addr: SocketAddr,
    forwarding: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl UdpRelay {
    /// Starts a relay to `upstream`, forwarding, at most `rate` bytes per second towards
    /// the client if given.
    pub async fn start(upstream: SocketAddr, rate: Option<u64>) -> std::io::Result<UdpRelay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        back.connect(upstream).await?;
        let addr = front.local_addr()?;
        let forwarding = Arc::new(AtomicBool::new(true));
        let dropped = Arc::new(AtomicU64::new(0));
        let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        let to_upstream = {
            let (front, back, on, dropped, client) = (
                front.clone(),
                back.clone(),
                forwarding.clone(),
                dropped.clone(),
                client.clone(),
            );
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    if let Ok(mut c) = client.lock() {
                        *c = Some(from);
                    }
                    if on.load(Ordering::Relaxed) {
                        let _ = back.send(&buf[..n]).await;
                    } else {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let to_client = {
            let (on, dropped) = (forwarding.clone(), dropped.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut bucket = rate.map(TokenBucket::new);
                while let Ok(n) = back.recv(&mut buf).await {
                    let to = client.lock().ok().and_then(|c| *c);
                    match to {
                        Some(to) if on.load(Ordering::Relaxed) => {
                            if let Some(bucket) = &mut bucket {
                                bucket.take(n).await;
                            }
                            let _ = front.send_to(&buf[..n], to).await;
                        }
                        _ => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        Ok(UdpRelay {
            addr,
            forwarding,
            dropped,
            tasks: vec![to_upstream, to_client],
        })
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forward (true) or drop everything, both ways (false).
    pub fn set_forwarding(&self, on: bool) {
        self.forwarding.store(on, Ordering::Relaxed);
    }

    /// Datagrams dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Paces a byte stream at a rate, with bursts of at most [`TokenBucket::BURST`] bytes.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl TokenBucket {
    /// Largest burst after an idle time, and what one timer tick (~1 ms) must let
    /// through for the rate to hold: 64 KiB is 4 ms at 16 MiB/s.
    const BURST: f64 = 64.0 * 1024.0;

    fn new(rate: u64) -> Self {
        TokenBucket {
            rate: rate.max(1) as f64,
            tokens: Self::BURST,
            at: tokio::time::Instant::now(),
        }
    }

    /// Waits until `n` bytes may go. A sleep that overshoots is paid back by the refill
    /// at the next call, which counts the whole time since this one.
    async fn take(&mut self, n: usize) {
        let now = tokio::time::Instant::now();
        let refill = (now - self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(Self::BURST) - n as f64;
        self.at = now;
        if self.tokens < 0.0 {
            tokio::time::sleep(std::time::Duration::from_secs_f64(-self.tokens / self.rate)).await;
        }
    }
}

/// Whether every index of `inner` is in `outer` (both sorted, disjoint half-open ranges).
pub fn ranges_contain(outer: &[(u64, u64)], inner: &[(u64, u64)]) -> bool {
    inner
        .iter()
        .filter(|(a, b)| a < b)
        .all(|&(a, b)| outer.iter().any(|&(c, d)| c <= a && b <= d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_ranges_nest() {
        for r in [
            Report::Start {
                length: 0,
                ranges: vec![],
            },
            Report::Start {
                length: 9,
                ranges: vec![(0, 3), (5, 9)],
            },
            Report::Progress {
                stored: 4,
                received: 2,
            },
            Report::Done {
                stored: 9,
                received: 2,
            },
            Report::Verified,
        ] {
            assert_eq!(Report::parse(&r.to_string()).unwrap(), r);
        }
        assert!(ranges_contain(&[(0, 10)], &[(0, 3), (5, 9)]));
        assert!(!ranges_contain(&[(0, 3), (5, 9)], &[(2, 6)]));
        assert_eq!(block(1, 2, 100), block(1, 2, 100));
        assert_ne!(block(1, 2, 100), block(1, 3, 100));
    }
}
