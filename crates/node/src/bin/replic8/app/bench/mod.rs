//! `replic8 bench`: measure this machine. Each scenario yields one or more [`Row`]s, printed
//! as a table or as JSON lines by the binary.
//!
//! Built only with the `cli` feature (the default), for the `replic8` binary.
//!
//! Scenarios (each in its own module):
//! - [`raw`]: QUIC alone, the node's transport settings, one connection, one stream;
//! - [`replicate`]: `bulk`, `small` and `many-feeds`: a writer process (this binary
//!   re-executed as the hidden `bench-peer`) serves feeds from disk, this process replicates
//!   them to disk over one connection on loopback and verifies them; [`expect`] is
//!   what its reader expects, waits for and checks (also used by [`swarm`]);
//! - [`append`]: durable appends to a feed on disk;
//! - [`discovery`]: join to connected on a private 20-node DHT;
//! - [`flood`]: replication to a node flooded by attacker identities, against the same
//!   run without the flood;
//! - [`cli`]: `cli-append`, the `replic8` command's data path through a daemon.
//! - [`swarm`]: 100 node processes on a private DHT, one feed fetched by key by all
//!   but its writer.
//!
//! Every row has `scenario`, `bytes`, `blocks`, `seconds`, `mb_per_s`, `blocks_per_s` (MB
//! = 10^6 bytes) and `peak_rss_bytes` (the peak resident set of this process during the
//! scenario, reset before it starts; `null` where the OS does not tell), plus the
//! scenario's own fields.

pub(crate) mod append;
pub(crate) mod cli;
pub(crate) mod discovery;
pub(crate) mod expect;
pub(crate) mod flood;
pub(crate) mod raw;
pub(crate) mod replicate;
pub(crate) mod swarm;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

/// A scenario of `replic8 bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// QUIC alone: one connection, one stream (the reference for `bulk`).
    Raw,
    /// A feed of 64 KiB blocks, disk to disk between two processes, verified; also runs
    /// raw for `raw_quic_mb_per_s` and `ratio`.
    Bulk,
    /// Like `bulk` with 1 KiB blocks.
    Small,
    /// 1,000 feeds x 100 x 1 KiB over one connection.
    ManyFeeds,
    /// Durable appends to a feed on disk, 64 KiB and 1 KiB blocks.
    Append,
    /// Join to connected on a private local 20-node DHT, two cases, 20 rounds each.
    Discovery,
    /// A 64 MiB feed replicated to a node flooded by 200 attacker identities for 60 s,
    /// as a ratio to the same run without the flood.
    Flood,
    /// `replic8 feed append` of a file and `feed cat` of it through a daemon, against the
    /// store's own append in the same run.
    CliAppend,
    /// 100 nodes, a process each, on a private DHT: one writes a 16 MiB feed, the others
    /// get it by key; time to all in sync, RSS and connections per node.
    Swarm,
    /// Every scenario above but `flood`, `cli-append` and `swarm`, one after the other, each in a process of its
    /// own.
    All,
}

impl Scenario {
    /// Every single scenario, in the order `all` runs them.
    pub(crate) const EACH: [Scenario; 6] = [
        Scenario::Raw,
        Scenario::Bulk,
        Scenario::Small,
        Scenario::ManyFeeds,
        Scenario::Append,
        Scenario::Discovery,
    ];

    /// The name on the command line and in the rows.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Raw => "raw",
            Scenario::Bulk => "bulk",
            Scenario::Small => "small",
            Scenario::ManyFeeds => "many-feeds",
            Scenario::Append => "append",
            Scenario::Discovery => "discovery",
            Scenario::Flood => "flood",
            Scenario::CliAppend => "cli-append",
            Scenario::Swarm => "swarm",
            Scenario::All => "all",
        }
    }
}

/// Sizes and knobs; `None` takes the scenario's default. Also the options of
/// `replic8 bench` (their doc lines are its help).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct BenchOptions {
    /// Bytes to move (raw, bulk, small: default 256MiB; flood: 64MiB) or to append per
    /// block size (append: 256MiB).
    #[arg(long, value_parser = parse_size)]
    pub(crate) size: Option<u64>,
    /// Bytes per block (bulk 64KiB, small and many-feeds 1KiB; append runs 64KiB and
    /// 1KiB unless given).
    #[arg(long, value_parser = parse_block_size)]
    pub(crate) block_size: Option<usize>,
    /// Feeds (many-feeds; default 1000).
    #[arg(long)]
    pub(crate) feeds: Option<u64>,
    /// Blocks per feed (many-feeds; default 100).
    #[arg(long)]
    pub(crate) blocks: Option<u64>,
    /// Directory for the temporary data directories (default $TMPDIR).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Append path (append).
    #[arg(long, value_enum, default_value_t = append::AppendPath::Deferred)]
    pub(crate) append_path: append::AppendPath,
    /// Rounds of each discovery case (default 20).
    #[arg(long)]
    pub(crate) rounds: Option<usize>,
    /// DHT nodes of the local testnet (discovery; default 20).
    #[arg(long)]
    pub(crate) testnet_nodes: Option<usize>,
    /// Discovery rounds in flight at once (default 5).
    #[arg(long)]
    pub(crate) parallel: Option<usize>,
    /// Seconds a discovery round may take to connect (default 30).
    #[arg(long = "guard-secs", value_name = "GUARD_SECS", value_parser = parse_secs)]
    pub(crate) guard: Option<Duration>,
    /// Attacker tasks (flood; default 200).
    #[arg(long)]
    pub(crate) attackers: Option<usize>,
    /// Seconds of attack (flood; default 60).
    #[arg(long)]
    pub(crate) seconds: Option<u64>,
    /// The `replic8` executable to start as the writer (default: this one; not an option).
    #[arg(skip)]
    pub(crate) peer_exe: Option<PathBuf>,
    /// Nodes (swarm; default 100).
    #[arg(long)]
    pub(crate) nodes: Option<usize>,
    /// Each node's limits.max_peers_per_topic (swarm; default: the node's).
    #[arg(long)]
    pub(crate) max_peers_per_topic: Option<usize>,
}

/// What a benchmark can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    /// A temporary directory or file could not be made or used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A node could not start.
    #[error("node: {0}")]
    Spawn(#[from] replic8_node::node::SpawnError),
    /// A feed operation on a node failed.
    #[error("feed: {0}")]
    Feed(#[from] replic8_node::node::FeedError),
    /// A join failed.
    #[error("join: {0}")]
    Join(#[from] replic8_node::node::JoinError),
    /// Connecting to the writer failed.
    #[error("connect: {0}")]
    Connect(#[from] replic8_node::node::ConnectError),
    /// The raw QUIC transfer failed.
    #[error("raw transfer: {0}")]
    Raw(#[from] replic8_connmgr::bench::BenchError),
    /// Opening or appending to a feed on disk failed.
    #[error("store: {0}")]
    Store(String),
    /// The writer process failed or said something unexpected.
    #[error("writer process: {0}")]
    Peer(String),
    /// Replication did not finish within its guard.
    #[error("{0}")]
    Timeout(String),
    /// The replica differs from what the writer holds.
    #[error("replica differs: {0}")]
    Mismatch(String),
    /// Bad options.
    #[error("{0}")]
    Options(String),
}

impl BenchError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}

/// One result line: the common fields first, then the scenario's own.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row(pub(crate) Map<String, Value>);

impl Row {
    /// A row with the common fields; `mb_per_s` and `blocks_per_s` are derived.
    pub(crate) fn new(
        scenario: &str,
        bytes: u64,
        blocks: u64,
        seconds: f64,
        peak_rss_bytes: Option<u64>,
    ) -> Row {
        let secs = seconds.max(1e-9);
        let mut map = Map::new();
        map.insert("scenario".into(), scenario.into());
        map.insert("bytes".into(), bytes.into());
        map.insert("blocks".into(), blocks.into());
        map.insert("seconds".into(), round(seconds, 9).into());
        map.insert(
            "mb_per_s".into(),
            round(bytes as f64 / 1e6 / secs, 3).into(),
        );
        map.insert("blocks_per_s".into(), round(blocks as f64 / secs, 1).into());
        map.insert("peak_rss_bytes".into(), peak_rss_bytes.into());
        Row(map)
    }

    /// Adds a scenario field.
    pub(crate) fn with(mut self, key: &str, value: impl Into<Value>) -> Row {
        self.0.insert(key.into(), value.into());
        self
    }

    /// A field, as a number.
    pub(crate) fn f64(&self, key: &str) -> f64 {
        self.0.get(key).and_then(Value::as_f64).unwrap_or(0.0)
    }

    /// The table's header line.
    pub(crate) fn table_header() -> String {
        format!(
            "{:<11} {:>12} {:>9} {:>9} {:>10} {:>12} {:>9}  {}",
            "scenario", "bytes", "blocks", "seconds", "MB/s", "blocks/s", "RSS MiB", "more"
        )
    }

    /// The row as a table line; the scenario's own fields go last as `key=value`.
    pub(crate) fn table_line(&self) -> String {
        let get = |k: &str| self.0.get(k).cloned().unwrap_or(Value::Null);
        let rss = match get("peak_rss_bytes").as_u64() {
            Some(b) => format!("{:.1}", b as f64 / (1 << 20) as f64),
            None => "-".into(),
        };
        let more: Vec<String> = self
            .0
            .iter()
            .filter(|(k, _)| !COMMON.contains(&k.as_str()))
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect();
        format!(
            "{:<11} {:>12} {:>9} {:>9.3} {:>10.1} {:>12.0} {:>9}  {}",
            get("scenario").as_str().unwrap_or_default(),
            get("bytes").to_string(),
            get("blocks").to_string(),
            self.f64("seconds"),
            self.f64("mb_per_s"),
            self.f64("blocks_per_s"),
            rss,
            more.join(" ")
        )
    }
}

/// As a JSON object with the common fields first, in [`COMMON`]'s order.
impl serde::Serialize for Row {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for key in COMMON {
            if let Some(v) = self.0.get(key) {
                map.serialize_entry(key, v)?;
            }
        }
        for (k, v) in self.0.iter().filter(|(k, _)| !COMMON.contains(&k.as_str())) {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

const COMMON: [&str; 7] = [
    "scenario",
    "bytes",
    "blocks",
    "seconds",
    "mb_per_s",
    "blocks_per_s",
    "peak_rss_bytes",
];

pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// Runs `scenario`, handing each row to `emit` as soon as it is measured. Must run
/// inside an actix system (`raw` starts actors in it). [`Scenario::All`] runs each
/// scenario in a child process of its own ([`run_in_child`]), so that none inherits
/// another's heap (a process keeps freed small blocks, and its resident set with them).
pub(crate) async fn run(
    scenario: Scenario,
    options: &BenchOptions,
    emit: &mut dyn FnMut(&Row),
) -> Result<(), BenchError> {
    if scenario == Scenario::All {
        for s in Scenario::EACH {
            let options = options.clone();
            let rows = tokio::task::spawn_blocking(move || run_in_child(s, &options))
                .await
                .map_err(|e| BenchError::Peer(e.to_string()))??;
            for row in &rows {
                emit(row);
            }
        }
        return Ok(());
    }
    match scenario {
        Scenario::Raw => emit(&raw::run(options).await?),
        Scenario::Bulk | Scenario::Small | Scenario::ManyFeeds => {
            emit(&replicate::run(scenario, options).await?)
        }
        Scenario::Append => {
            for row in append::run(options).await? {
                emit(&row);
            }
        }
        Scenario::Discovery => emit(&discovery::run(options).await?),
        Scenario::Flood => emit(&flood::run(options).await?),
        Scenario::CliAppend => {
            for row in cli::run(options).await? {
                emit(&row);
            }
        }
        Scenario::Swarm => emit(&swarm::run(options).await?),
        Scenario::All => {}
    }
    Ok(())
}

/// Runs `replic8 bench <scenario> --json` with `options` as a child process (the
/// executable of `options.peer_exe`, else this one); its rows.
pub(crate) fn run_in_child(
    scenario: Scenario,
    options: &BenchOptions,
) -> Result<Vec<Row>, BenchError> {
    let exe = match &options.peer_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(BenchError::io("this executable's path"))?,
    };
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("bench").arg(scenario.name()).arg("--json");
    let numbers = [
        ("--size", options.size),
        ("--block-size", options.block_size.map(|b| b as u64)),
        ("--feeds", options.feeds),
        ("--blocks", options.blocks),
        ("--rounds", options.rounds.map(|r| r as u64)),
        ("--testnet-nodes", options.testnet_nodes.map(|n| n as u64)),
        ("--guard-secs", options.guard.map(|g| g.as_secs())),
        ("--parallel", options.parallel.map(|p| p as u64)),
    ];
    for (flag, value) in numbers {
        if let Some(v) = value {
            cmd.arg(flag).arg(v.to_string());
        }
    }
    if let Some(dir) = &options.dir {
        cmd.arg("--dir").arg(dir);
    }
    if scenario == Scenario::Append {
        cmd.arg("--append-path").arg(options.append_path.name());
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(BenchError::io(format!("cannot start {}", exe.display())))?;
    if !out.status.success() {
        return Err(BenchError::Peer(format!(
            "bench {} exited with {}",
            scenario.name(),
            out.status
        )));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => Ok(Row(map)),
            _ => Err(BenchError::Peer(format!("bad row {line:?}"))),
        })
        .collect()
}

/// The peak resident set (`VmHWM`) of process `pid`, or of this process for `None`, in
/// bytes; `None` where `/proc` does not tell.
pub(crate) fn peak_rss_bytes(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU seconds of process `pid` (all threads), or of this process for
/// `None`, from `/proc/<pid>/stat`; `None` where `/proc` does not tell.
pub(crate) fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // After the command name (in parentheses, may hold spaces): utime and stime are the
    // 12th and 13th fields, in USER_HZ ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Resets this process's peak resident set to its current one (Linux `clear_refs` 5), so
/// that the next [`peak_rss_bytes`] covers only what follows. Does nothing elsewhere.
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", b"5");
}

/// Parses a size: a number of bytes with an optional suffix `K`, `KiB`, `M`, `MiB`, `G`,
/// `GiB` (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 256MiB, 64KiB, 1000)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// [`parse_size`] for a block size, which must fit in memory.
fn parse_block_size(text: &str) -> Result<usize, String> {
    usize::try_from(parse_size(text)?).map_err(|_| format!("{text:?} is too large"))
}

/// Whole seconds, as for `--guard-secs`.
fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Ok(Duration::from_secs(secs))
}

/// A temporary directory under `options.dir` or `$TMPDIR`.
pub(crate) fn temp_dir(
    options: &BenchOptions,
    prefix: &str,
) -> Result<tempfile::TempDir, BenchError> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    match &options.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(BenchError::io(format!("{}", dir.display())))?;
            builder.tempdir_in(dir)
        }
        None => builder.tempdir(),
    }
    .map_err(BenchError::io("temporary directory"))
}

/// Median and max of `ms` (sorted in place); `None` if empty.
pub(crate) fn median_max(ms: &mut [f64]) -> Option<(f64, f64)> {
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    Some((median, ms[n - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn rows_derive_the_rates() {
        let row = Row::new("x", 2_000_000, 40, 2.0, Some(1 << 20)).with("ratio", 0.5);
        assert_eq!(row.f64("mb_per_s"), 1.0);
        let json = serde_json::to_string(&row).unwrap_or_default();
        assert!(
            json.starts_with(r#"{"scenario":"x","bytes":2000000,"blocks":40,"#),
            "{json}"
        );
        assert!(
            json.ends_with(r#""peak_rss_bytes":1048576,"ratio":0.5}"#),
            "{json}"
        );
        assert_eq!(row.f64("blocks_per_s"), 20.0);
        assert!(row.table_line().contains("ratio=0.5"));
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median_max(&mut [3.0, 1.0, 2.0]), Some((2.0, 3.0)));
        assert_eq!(median_max(&mut [4.0, 1.0, 2.0, 3.0]), Some((2.5, 4.0)));
        assert_eq!(median_max(&mut []), None);
    }
}
