//! What the binary logs: to stderr, filtered by `RUST_LOG`, else [`DEFAULT_FILTER`].

use tracing_subscriber::EnvFilter;

/// Warnings and errors, but not quinn's endpoint driver: the one thing it logs is the
/// receive error that ends it, an error also when the connection manager shuts the
/// socket on purpose at the end of a shutdown whose drain was cut short (a node
/// stopping among many peers printed one per node). A real receive error is logged by
/// the socket itself (`replic8_connmgr` `NodeSocket`). `RUST_LOG` replaces all of this.
pub(crate) const DEFAULT_FILTER: &str = "warn,quinn::endpoint=off";

/// `RUST_LOG`'s filter if it is set and valid, else [`DEFAULT_FILTER`].
pub(crate) fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer that keeps what the subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_default_filter_drops_the_endpoint_drivers_end_and_keeps_other_warnings() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(DEFAULT_FILTER))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "quinn::endpoint", "I/O error: socket shut");
            tracing::error!(target: "quinn::connection", "a quinn error");
            tracing::warn!(target: "replic8_connmgr::socket", "a warning of ours");
            tracing::info!(target: "replic8_connmgr::socket", "an info line");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("socket shut"), "{text}");
        assert!(text.contains("a quinn error"), "{text}");
        assert!(text.contains("a warning of ours"), "{text}");
        assert!(!text.contains("an info line"), "{text}");
    }
}
