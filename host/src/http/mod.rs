//! The HTTP API (axum): the current view, fresh snapshots, the change stream as
//! Server-Sent Events, plugin status, liveness, readiness and metrics.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /v1/entities?types=a,b` | the current view: a JSON array of entity objects ([`crate::output`]) |
//! | `POST /v1/snapshot?types=a,b` | a fresh get-all, same array; 502/503/504 with a JSON error naming the instance |
//! | `GET /v1/changes?types=a,b[&snapshot=true]` | change notifications as SSE; `id:` is `<seq>@<epoch>`; resumes with `Last-Event-ID` |
//! | `GET /v1/plugins[?health=true]` | every instance's status (and, asked, the plugins' own health reports) |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 once every collector finished its first snapshot, 503 before |
//! | `GET /metrics` | [`crate::metrics`] in the OpenMetrics text format |
//!
//! With `token_file` or `token_env` set, every request except `/healthz` and `/readyz`
//! must carry `Authorization: Bearer <token>` (compared in constant time) or gets 401.
//! The token is never logged.
//!
//! The change stream never holds the host back: each SSE client has its own bounded
//! subscription, and a client that falls behind gets the hub's resync marker and a
//! snapshot. One internal subscription keeps the most recent changes (`replay`), from
//! which a reconnecting client is served the changes it missed (by `Last-Event-ID`), and
//! whose JSON is shared by every client instead of being serialised once per client.

mod auth;
mod error;
mod handlers;
mod query;
mod read_pool;
mod replay;
mod server;
mod sse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::Synchronizer;
use crate::config::HttpConfig;

pub use error::ApiError;

/// How long open requests and streams get to finish after shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
    /// The server failed while running.
    #[error("http server: {0}")]
    Serve(#[source] std::io::Error),
    /// The read threads could not be started.
    #[error("cannot start the HTTP API's read threads: {0}")]
    Threads(#[source] std::io::Error),
}

/// What every handler shares.
struct Shared {
    sync: Arc<Synchronizer>,
    window: Arc<replay::Window>,
    token: Option<auth::Token>,
    shutdown: CancellationToken,
    /// Where whole-view reads are collected and encoded, below the writer's priority.
    reads: read_pool::ReadPool,
}

type AppState = Arc<Shared>;

/// Serves the API until `shutdown`.
///
/// The token is read and the address bound before anything is served; either failing is
/// returned (and logged) at once.
pub async fn serve(
    sync: Arc<Synchronizer>,
    config: HttpConfig,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let listener = match bind(&config) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "HTTP API not started");
            return Err(e);
        }
    };
    serve_on(listener, sync, config, shutdown).await
}

/// Binds `config.listen` with `config.backlog` (and `SO_REUSEADDR`), for [`serve_on`].
pub fn bind(config: &HttpConfig) -> Result<tokio::net::TcpListener, HttpError> {
    server::bind(config).map_err(|source| HttpError::Bind {
        addr: config.listen,
        source,
    })
}

/// Serves the API on an already bound `listener` (`config.listen` is not used) until
/// `shutdown`: for embedding programs, tests and benchmarks that bind port 0.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    sync: Arc<Synchronizer>,
    config: HttpConfig,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let result = run(listener, sync, config, shutdown).await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "HTTP API stopped");
    }
    result
}

async fn run(
    listener: tokio::net::TcpListener,
    sync: Arc<Synchronizer>,
    config: HttpConfig,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let token = auth::Token::load(&config)?;
    let local = listener.local_addr().unwrap_or(config.listen);
    if token.is_none() && !local.ip().is_loopback() {
        tracing::warn!(listen = %local, "HTTP API reachable beyond loopback without a token");
    }
    let metrics = sync.hub().metrics().clone();
    let (router, reserve, stop_feed) = build(sync, &config, token.clone(), shutdown.clone())?;
    tracing::info!(
        listen = %local,
        auth = if token.is_some() { "bearer token" } else { "none" },
        replay = config.replay,
        max_connections = config.max_connections,
        reserved_connections = config.reserved_connections,
        header_timeout = ?config.header_timeout,
        idle_timeout = ?config.idle_timeout,
        "HTTP API listening"
    );
    let server = server::serve(
        listener,
        router,
        reserve,
        &config,
        metrics,
        shutdown.clone(),
    );
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let result = tokio::select! {
        () = server => Ok(()),
        () = grace => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "HTTP requests still open after shutdown; closing them");
            Ok(())
        }
    };
    stop_feed.cancel();
    tracing::info!("HTTP API stopped");
    result
}

/// The router, the reserve connections' router (`/healthz` and `/readyz` only), and the
/// token that stops the replay feed. Serving stops the feed itself; this is for callers
/// (tests, benchmarks) that serve the router their own way.
fn build(
    sync: Arc<Synchronizer>,
    config: &HttpConfig,
    token: Option<auth::Token>,
    shutdown: CancellationToken,
) -> Result<(Router, Router, CancellationToken), HttpError> {
    let reads = read_pool::ReadPool::start(read_pool::ReadPool::default_threads())
        .map_err(HttpError::Threads)?;
    let stop_feed = shutdown.child_token();
    let window = replay::Window::start(&sync, config.replay, stop_feed.clone());
    let state: AppState = Arc::new(Shared {
        sync,
        window,
        token,
        shutdown,
        reads,
    });
    let api = Router::new()
        .route("/v1/entities", get(handlers::entities))
        .route("/v1/snapshot", post(handlers::snapshot))
        .route("/v1/changes", get(sse::changes))
        .route("/v1/plugins", get(handlers::plugins))
        .route("/metrics", get(handlers::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let router = Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .merge(api)
        .fallback(handlers::not_found)
        .layer(axum::middleware::from_fn_with_state(
            config.max_body_bytes,
            limit_body,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state.clone());
    let reserve = Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .fallback(|| async { ApiError::TooManyConnections })
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state);
    Ok((router, reserve, stop_feed))
}

/// Answers 413 to a request whose `Content-Length` is over `max` (no handler reads a
/// body of any size; extractors are held to the same bound by `DefaultBodyLimit`).
async fn limit_body(
    axum::extract::State(max): axum::extract::State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let length = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|n| n > max as u64) {
        return axum::response::IntoResponse::into_response(ApiError::BodyTooLarge(max));
    }
    next.run(request).await
}

/// The request parsing and event framing of the API, for the fuzz targets in `fuzz/`
/// (not part of the API).
#[doc(hidden)]
pub mod fuzzing {
    use axum::extract::Query;
    use axum::http::{HeaderMap, HeaderValue, Uri};
    use axum::response::IntoResponse;

    /// An error answer: its status and JSON body.
    pub type Answer = (u16, Vec<u8>);

    /// What a query is read as: the types, and the flags that are on.
    pub type ParsedQuery = (Vec<String>, Vec<String>);

    /// The flags each endpoint knows (`/v1/entities` and `/v1/snapshot` know none).
    pub const ENDPOINT_FLAGS: [&[&str]; 3] = [&[], &["snapshot"], &["health"]];

    /// A request's query, read as the handlers read it (axum's `Query`, then the
    /// endpoint's parameters): the types and the flags that are on, or the error answer
    /// (its status and JSON body).
    pub fn query(uri: &Uri, flags: &[&str]) -> Result<ParsedQuery, Answer> {
        match super::handlers::params(Query::try_from_uri(uri), flags) {
            Ok(params) => {
                let on = flags
                    .iter()
                    .filter(|f| params.flag(f))
                    .map(|f| (*f).to_owned());
                Ok((params.types.clone(), on.collect()))
            }
            Err(e) => Err(error_answer(e)),
        }
    }

    /// A `Last-Event-ID` header value as the change stream reads it: `Ok(None)` for none,
    /// `Ok(Some(Some(seq)))` for a seq of run `epoch`, `Ok(Some(None))` for another run's.
    pub fn last_event_id(value: HeaderValue, epoch: &str) -> Result<Option<Option<u64>>, Answer> {
        let mut headers = HeaderMap::new();
        headers.insert("last-event-id", value);
        match super::sse::last_event_id(&headers, epoch) {
            Ok(id) => Ok(id.map(|id| match id {
                super::sse::LastId::Seq(seq) => Some(seq),
                super::sse::LastId::OtherRun => None,
            })),
            Err(e) => Err(error_answer(e)),
        }
    }

    /// Appends one Server-Sent Event as the change stream writes it.
    pub fn sse_event(out: &mut String, id: Option<(u64, &str)>, json: &str) {
        super::sse::push_event(out, id, json);
    }

    fn error_answer(e: super::ApiError) -> Answer {
        let response = e.into_response();
        let status = response.status().as_u16();
        let body = futures::executor::block_on(axum::body::to_bytes(response.into_body(), 1 << 20));
        (status, body.map(|b| b.to_vec()).unwrap_or_default())
    }
}

/// Logs every request at debug level (method, path, status, duration, peer). Headers —
/// and so the token — are never logged; neither is the query.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match peer {
        Some(peer) => tracing::debug!(%method, %path, status, elapsed_ms, %peer, "http request"),
        None => tracing::debug!(%method, %path, status, elapsed_ms, "http request"),
    }
    response
}
