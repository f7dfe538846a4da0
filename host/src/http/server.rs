//! The accept loop of the HTTP API (hyper, not `axum::serve`), which bounds what a
//! client can hold:
//!
//! - the listen socket is made with socket2, with `backlog` and `SO_REUSEADDR`;
//! - every accepted socket gets `TCP_NODELAY` and TCP keepalive (`tcp_keepalive`, then
//!   every third of it, 3 probes): a peer that vanished is dropped;
//! - at most `max_connections` connections are served; up to `reserved_connections` more
//!   are served by the reserve router (`/healthz`, `/readyz`, one request, closed within
//!   [`RESERVE_TIMEOUT`]); beyond both a connection is accepted and reset at once and
//!   counted (`synchronizer_http_connections_refused_total`);
//! - a new connection must send a complete request head within `header_timeout`, a
//!   keep-alive connection its next one within `idle_timeout` of the previous response
//!   (hyper's `header_read_timeout`, which hyper 1.x also runs while a keep-alive
//!   connection waits for its next request: `proto/h1/conn.rs`, `State::idle` sets
//!   `notify_read` so that the next read starts the timer);
//! - request heads are bounded by `max_header_bytes` and `max_headers` (431 beyond).
//!
//! At shutdown the loop stops accepting and asks every connection to finish its request
//! and close (hyper's graceful shutdown); change streams end on the same token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{HttpConfig, RESERVE_TIMEOUT};
use crate::metrics::Metrics;

/// A listen socket for `config.listen` with `config.backlog`.
pub(super) fn bind(config: &HttpConfig) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = config.listen;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // Checked by the config: 1..=i32::MAX.
    socket.listen(i32::try_from(config.backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

/// What the loop needs of the configuration.
#[derive(Clone, Debug)]
struct Limits {
    header_timeout: Duration,
    idle_timeout: Duration,
    keepalive: socket2::TcpKeepalive,
    max_header_bytes: usize,
    max_headers: usize,
}

/// Which pool a connection's slot is from.
enum Slot {
    Served(#[allow(dead_code)] OwnedSemaphorePermit),
    Reserve(#[allow(dead_code)] OwnedSemaphorePermit),
}

/// Counts an open connection in the gauge while it lives.
struct Open(Arc<Metrics>, Arc<Trim>);

impl Drop for Open {
    fn drop(&mut self) {
        let open = self.0.http_connections.dec() - 1;
        self.1.closed(open);
    }
}

/// Gives memory back to the system once a burst of connections is over: glibc keeps
/// freed heap in its arenas (per thread) otherwise, and the host's RSS stays at the
/// burst's peak.
struct Trim {
    /// The most connections open at once since the last trim.
    peak: AtomicU64,
    /// `release_memory`.
    on: bool,
}

/// Bursts smaller than this are not worth a trim.
const TRIM_AFTER: u64 = 256;

impl Trim {
    fn opened(&self, open: i64) {
        self.peak
            .fetch_max(u64::try_from(open).unwrap_or(0), Ordering::Relaxed);
    }

    /// A connection closed, `open` are left: once they are down to an eighth of a burst's
    /// peak (long-lived change streams and scrapers stay), the burst is over.
    fn closed(&self, open: i64) {
        let open = u64::try_from(open).unwrap_or(0);
        let peak = self.peak.load(Ordering::Relaxed);
        if !self.on || peak < TRIM_AFTER || open > peak / 8 {
            return;
        }
        if self
            .peak
            .compare_exchange(peak, open, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || {
                let started = std::time::Instant::now();
                trim();
                tracing::debug!(
                    peak,
                    open,
                    elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "HTTP connection burst over; freed memory given back"
                );
            });
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks glibc's own arenas; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Logs a repeated event at most once per [`LOG_EVERY`], with how many happened since.
struct Throttled {
    last: std::sync::Mutex<Option<std::time::Instant>>,
    count: AtomicU64,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl Throttled {
    fn new() -> Self {
        Throttled {
            last: std::sync::Mutex::new(None),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one; `Some(n)` when it is time to log `n` events.
    fn hit(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return None;
        }
        *last = Some(now);
        Some(self.count.swap(0, Ordering::Relaxed))
    }
}

/// Accepts and serves connections until `shutdown`, then waits for them to finish.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    reserve_app: Router,
    config: &HttpConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let third = Duration::from_secs((config.tcp_keepalive.as_secs() / 3).max(1));
    let limits = Limits {
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        keepalive: socket2::TcpKeepalive::new()
            .with_time(config.tcp_keepalive)
            .with_interval(third)
            .with_retries(3),
        max_header_bytes: config.max_header_bytes,
        max_headers: config.max_headers,
    };
    let served = Arc::new(Semaphore::new(config.max_connections));
    let reserve = Arc::new(Semaphore::new(config.reserved_connections));
    let trim = Arc::new(Trim {
        peak: AtomicU64::new(0),
        on: config.release_memory,
    });
    let tracker = TaskTracker::new();
    let refusals = Throttled::new();
    let accept_errors = Throttled::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS...: the connection waits in the backlog;
                    // back off a little instead of spinning.
                    if let Some(n) = accept_errors.hit() {
                        tracing::warn!(error = %e, errors = n, "cannot accept HTTP connections");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let slot = match served.clone().try_acquire_owned() {
            Ok(p) => Slot::Served(p),
            Err(_) => match reserve.clone().try_acquire_owned() {
                Ok(p) => Slot::Reserve(p),
                Err(_) => {
                    metrics.http_connections_refused.inc();
                    // A reset, not a FIN: nothing of it lingers in TIME_WAIT here.
                    let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                    drop(tcp);
                    if let Some(n) = refusals.hit() {
                        tracing::warn!(
                            %peer,
                            refused = n,
                            max_connections = config.max_connections,
                            reserved_connections = config.reserved_connections,
                            "HTTP connection limit reached; connections refused"
                        );
                    }
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&limits.keepalive) {
            tracing::debug!(error = %e, "cannot set TCP keepalive");
        }
        let open = metrics.http_connections.inc() + 1;
        trim.opened(open);
        let guard = Open(metrics.clone(), trim.clone());
        let app = match slot {
            Slot::Served(_) => app.clone(),
            Slot::Reserve(_) => reserve_app.clone(),
        };
        tracker.spawn(connection(
            tcp,
            peer,
            app,
            slot,
            limits.clone(),
            shutdown.clone(),
            guard,
        ));
    }
    tracker.close();
    tracker.wait().await;
}

/// Serves one connection.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    slot: Slot,
    limits: Limits,
    shutdown: CancellationToken,
    _open: Open,
) {
    let reserve = matches!(slot, Slot::Reserve(_));
    let (first_head, later_heads) = if reserve {
        (RESERVE_TIMEOUT, RESERVE_TIMEOUT)
    } else {
        (limits.header_timeout, limits.idle_timeout)
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(later_heads)
        .keep_alive(!reserve)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    let seen = Arc::new(AtomicBool::new(false));
    let saw = seen.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        saw.store(true, Ordering::Relaxed);
        request.extensions_mut().insert(ConnectInfo(peer));
        tower_service::Service::call(&mut app.clone(), request)
    });
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    // hyper's timer for the first head is `later_heads` (one timer for every head):
    // this one is the first head's, shorter or equal (the config checks that).
    let first_deadline = tokio::time::sleep(first_head);
    tokio::pin!(first_deadline);
    let mut first_armed = true;
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        tracing::debug!(%peer, "HTTP connection closed: no request head in time");
                    } else {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                    }
                }
                break;
            }
            () = &mut first_deadline, if first_armed => {
                first_armed = false;
                if reserve {
                    tracing::debug!(%peer, "reserve HTTP connection closed after its time");
                    break;
                }
                if !seen.load(Ordering::Relaxed) {
                    tracing::debug!(%peer, timeout = ?first_head, "HTTP connection closed: no request head in time");
                    break;
                }
            }
            () = shutdown.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
