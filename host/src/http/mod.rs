//! The HTTP API (being written): entities, snapshots, the change stream as Server-Sent
//! Events, plugin status, health, readiness and metrics.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::Synchronizer;
use crate::config::HttpConfig;

/// Why the HTTP API could not run.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The token could not be read.
    #[error("http token: {0}")]
    Token(String),
}

/// Serves the API until `shutdown`.
pub async fn serve(
    sync: Arc<Synchronizer>,
    config: HttpConfig,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let _ = (sync, config);
    shutdown.cancelled().await;
    Ok(())
}
