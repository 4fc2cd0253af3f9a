//! `raw`: QUIC alone. Two connection managers in this process with the node's transport
//! settings, one connection, one unidirectional stream, `size` bytes written in 1 MiB
//! chunks (`replic8_connmgr::bench::loopback_transfer`). The clock runs from the receiver
//! accepting the stream to its last byte. `blocks` is 0: there are no blocks here.

use replic8_connmgr::transport::TransportTuning;

use super::{peak_rss_bytes, reset_peak_rss, round, BenchError, BenchOptions, Row};

/// Default bytes: as much as `bulk` moves.
pub(crate) const DEFAULT_SIZE: u64 = 256 << 20;

/// Moves `bytes` over one stream; the transfer's report.
pub(crate) async fn transfer(
    bytes: u64,
) -> Result<replic8_connmgr::bench::TransportReport, BenchError> {
    if bytes == 0 {
        return Err(BenchError::Options("raw: size must be more than 0".into()));
    }
    Ok(replic8_connmgr::bench::loopback_transfer(&TransportTuning::default(), bytes).await?)
}

/// Runs the scenario.
pub(crate) async fn run(options: &BenchOptions) -> Result<Row, BenchError> {
    let bytes = options.size.unwrap_or(DEFAULT_SIZE);
    reset_peak_rss();
    let report = transfer(bytes).await?;
    let mut row = Row::new(
        "raw",
        report.bytes,
        0,
        report.elapsed.as_secs_f64(),
        peak_rss_bytes(None),
    )
    .with("lost_packets", report.lost_packets)
    .with("acks", report.acks)
    .with("mtu", report.mtu);
    if let Some(mb) = report.mb_per_cpu_s() {
        row = row.with("mb_per_cpu_s", round(mb, 1));
    }
    Ok(row)
}
