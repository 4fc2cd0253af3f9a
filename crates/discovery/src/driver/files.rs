//! The node's files: the id file and the saved nodes, written atomically.

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use tracing::warn;

use crate::error::SpawnError;
use crate::krpc::Id;

/// Most node addresses saved and read back: a full table of a node in a large network
/// holds about 20 buckets of 8 per family.
pub const MAX_SAVED_NODES: usize = 400;

/// Reads the node id from `path`: `None` if there is no file.
pub(super) async fn read_id(path: &Path) -> Result<Option<Id>, SpawnError> {
    let bad = |reason: String| SpawnError::DhtIdFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let bytes = hex::decode(text.trim()).map_err(|e| bad(format!("not hex: {e}")))?;
    let id: [u8; 20] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| bad(format!("{} bytes, not 20", b.len())))?;
    Ok(Some(Id(id)))
}

/// Writes the node id to `path`.
pub(super) async fn write_id(path: &Path, id: Id) -> Result<(), SpawnError> {
    write_atomic(path, format!("{}\n", hex::encode(id.0)))
        .await
        .map_err(|e| SpawnError::DhtIdFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Writes `text` to `path` through a temporary file, so a crash leaves the old or the
/// new content, never half of one.
pub(super) async fn write_atomic(path: &Path, text: String) -> io::Result<()> {
    // A name of its own per write: two writes at once must not rename each other's.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{:08x}.tmp", rand::random::<u32>()));
    tokio::fs::write(&tmp, text).await?;
    tokio::fs::rename(&tmp, path).await
}

/// The saved node addresses of the families we run (at most [`MAX_SAVED_NODES`]); lines
/// that are not socket addresses are skipped, a missing file is an empty list.
pub(super) async fn read_nodes(path: &Path, v4: bool, v6: bool) -> Vec<SocketAddr> {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => {
            warn!(%error, path = %path.display(), "cannot read the saved dht nodes");
            return Vec::new();
        }
    };
    text.lines()
        .filter_map(|line| line.trim().parse::<SocketAddr>().ok())
        .filter(|a| (a.is_ipv4() && v4) || (a.is_ipv6() && v6))
        .take(MAX_SAVED_NODES)
        .collect()
}
