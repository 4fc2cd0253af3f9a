//! Bootstrap names to addresses: the configured entries and the public nodes.

use std::net::SocketAddr;
use std::time::Duration;

use tracing::debug;

use super::socket::unmap;
use crate::config::PUBLIC_BOOTSTRAP;
use crate::error::SpawnError;

/// How long resolving one public bootstrap name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves `host:port` entries, keeping the addresses of the families we run; fails on
/// the first entry that is malformed, does not resolve, or has no such address.
pub(crate) async fn resolve_bootstrap(
    entries: &[String],
    v4: bool,
    v6: bool,
) -> Result<Vec<SocketAddr>, SpawnError> {
    let mut out = Vec::new();
    for entry in entries {
        let syntax = || SpawnError::BootstrapSyntax {
            entry: entry.clone(),
        };
        let (host, port) = entry.rsplit_once(':').ok_or_else(syntax)?;
        let port: u16 = port.parse().map_err(|_| syntax())?;
        if host.is_empty() {
            return Err(syntax());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let resolved = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| SpawnError::BootstrapResolve {
                entry: entry.clone(),
                source,
            })?;
        let before = out.len();
        out.extend(
            resolved
                .map(unmap)
                .filter(|a| (a.is_ipv4() && v4) || (a.is_ipv6() && v6)),
        );
        if out.len() == before {
            return Err(SpawnError::BootstrapNoAddress {
                entry: entry.clone(),
            });
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The public bootstrap nodes that resolve now (none when offline: the node then
/// tries again when it checks its tables).
pub(super) async fn resolve_public(v4: bool, v6: bool) -> Vec<SocketAddr> {
    let all = futures::future::join_all(PUBLIC_BOOTSTRAP.iter().map(|entry| async move {
        let entries = [entry.to_string()];
        // Bounded: a resolver that hangs must not keep the node from its saved nodes.
        tokio::time::timeout(RESOLVE_TIMEOUT, resolve_bootstrap(&entries, v4, v6)).await
    }))
    .await;
    let mut out = Vec::new();
    for result in all {
        match result {
            Ok(Ok(addrs)) => out.extend(addrs),
            Ok(Err(error)) => debug!(%error, "public bootstrap node"),
            Err(_) => debug!("public bootstrap node: resolving timed out"),
        }
    }
    out
}
