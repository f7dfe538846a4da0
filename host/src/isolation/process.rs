//! The host's handle on a process-mode instance: [`ProcessInstance`], what the rest of
//! the host calls, whichever child runs at the moment.
//!
//! It starts the first child (`spawn`) and hands it to its supervisor (`supervision`),
//! which restarts it whenever it ends. Each call goes to the child that runs now over its
//! connection (`connection`); a call made while none runs fails at once ("restarting, not
//! called"). A snapshot call that passes its timeout (its future dropped) is cancelled in
//! the child, and the child is killed when the plugin's call does not return (a stuck
//! thread) or the child does not answer the cancellation within a second.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use synchronizer_plugin_api::ErrorKind;
use synchronizer_plugin_api::Health;
use synchronizer_plugin_api::abi::{FfiSnapshot, LogLevel};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::connection::{Conn, name_of};
use super::lock;
use super::spawn::launch;
use super::supervision::{Why, supervise};
use super::wire::{FromChild, ToChild};
use crate::hub::{Hub, Origin};
use crate::instance::{BoxFuture, CallError, Source};
use crate::loader::PluginMeta;
use crate::metrics::Metrics;
use crate::status::StatusCell;

pub use super::spawn::ProcessError;
pub use super::supervision::{describe_exit, rss_bytes};

/// How long the host waits for the child's answer to a cancellation.
const CANCEL_WAIT: Duration = Duration::from_secs(1);
/// Process mode: the most snapshot-part frame bytes the host holds for one call, by
/// default (`snapshot_limit`). Decoded entities take several times their frame size.
pub const DEFAULT_SNAPSHOT_LIMIT: u64 = 256 << 20;

/// How to run one instance in a child.
#[derive(Clone, Debug)]
pub struct ProcessOptions {
    /// The program to run as `PROGRAM plugin-child`.
    pub program: PathBuf,
    /// The plugin library.
    pub library: PathBuf,
    /// The instance's configuration.
    pub config: serde_json::Value,
    /// Most verbose plugin log level forwarded.
    pub max_level: LogLevel,
    /// How long the plugin's constructor may take.
    pub create_timeout: Duration,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// A child silent this long is killed.
    pub heartbeat_timeout: Duration,
    /// Resident memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// The most snapshot-part frame bytes held for one call ([`DEFAULT_SNAPSHOT_LIMIT`]).
    pub snapshot_limit: u64,
    /// The most entities a snapshot may have (the instance's `max_entities`): parts past
    /// it fail the call at once, as `snapshot_limit` does.
    pub max_entities: usize,
    /// First restart delay.
    pub backoff_initial: Duration,
    /// Largest restart delay.
    pub backoff_max: Duration,
}

/// Where the instance's child is.
#[derive(Clone)]
pub(super) enum Phase {
    /// Being started.
    Starting,
    /// Serving over this connection.
    Ready(Arc<Conn>),
    /// Ended for this cause; restarted after a backoff.
    Down(String),
    /// Stopped for good (shutdown).
    Stopped,
}

/// What the instance's handle, its supervisor and its connections share.
pub(super) struct Shared {
    pub(super) name: Arc<str>,
    pub(super) options: ProcessOptions,
    pub(super) status: Arc<StatusCell>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) phase: watch::Sender<Phase>,
    /// The plugin's counters, as of the last heartbeat.
    pub(super) counters: Mutex<Vec<(String, u64)>>,
    /// Where the push loop's batches go, once it runs.
    pub(super) bus: Mutex<Option<(Arc<Hub>, Origin)>>,
    pub(super) stop: CancellationToken,
    pub(super) stopping: AtomicBool,
}

/// A plugin instance served by a supervised child process.
pub struct ProcessInstance {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ProcessInstance {
    /// Starts the child, creates the instance in it and starts supervising it. Returns
    /// the plugin's metadata as the child loaded it.
    pub async fn start(
        name: &str,
        options: ProcessOptions,
        status: Arc<StatusCell>,
        metrics: Arc<Metrics>,
    ) -> Result<(ProcessInstance, PluginMeta), ProcessError> {
        status.set_isolation(super::Isolation::Process);
        let name: Arc<str> = Arc::from(name);
        let first = launch(&name, &options).await?;
        let meta = PluginMeta {
            name: first.meta.name.clone(),
            version: first.meta.version.clone(),
            description: first.meta.description.clone(),
            entity_types: first.meta.entity_types.clone(),
            kind: first.meta.kind,
            api_version: first.meta.api_version.clone(),
        };
        let (phase, _) = watch::channel(Phase::Starting);
        let shared = Arc::new(Shared {
            name,
            options,
            status,
            metrics,
            phase,
            counters: Mutex::default(),
            bus: Mutex::default(),
            stop: CancellationToken::new(),
            stopping: AtomicBool::new(false),
        });
        let mut phase = shared.phase.subscribe();
        let task = tokio::spawn(supervise(shared.clone(), first));
        // Serving starts at once; wait for it, so that the pid is known on return.
        let _ = phase.wait_for(|p| !matches!(p, Phase::Starting)).await;
        Ok((
            ProcessInstance {
                shared,
                supervisor: Mutex::new(Some(task)),
            },
            meta,
        ))
    }

    /// The running child's pid.
    pub fn pid(&self) -> Option<u32> {
        match &*self.shared.phase.borrow() {
            Phase::Ready(c) => Some(c.pid),
            _ => None,
        }
    }
}

impl Source for ProcessInstance {
    /// Collects a snapshot in the child. Dropping the future (the timeout) cancels the
    /// call in the child; if the plugin's call does not return, the child is killed.
    fn snapshot(&self, types: Vec<String>) -> BoxFuture<Result<FfiSnapshot, CallError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let conn = current_conn(&shared, false).await?;
            conn.in_flight.fetch_add(1, Ordering::SeqCst);
            let (id, rx) = conn.call_snapshot(types);
            let mut guard = Abandon {
                conn: conn.clone(),
                id,
                armed: true,
            };
            let reply = rx.await;
            guard.armed = false;
            conn.in_flight.fetch_sub(1, Ordering::SeqCst);
            match reply {
                Ok(FromChild::Snapshot { result, .. }) => result.map_err(CallError::from),
                Ok(other) => {
                    conn.kill(
                        Why::Protocol,
                        format!("protocol error: {} answers a snapshot", name_of(&other)),
                    );
                    Err(CallError {
                        kind: ErrorKind::Failed,
                        message: "protocol error from the plugin child".into(),
                    })
                }
                Err(_) => Err(conn.died()),
            }
        })
    }

    /// Snapshot calls in hand in the child (0 once it is killed or gone).
    fn calls_in_flight(&self) -> u32 {
        match &*self.shared.phase.borrow() {
            Phase::Ready(c) if !c.killed.load(Ordering::SeqCst) => {
                c.in_flight.load(Ordering::SeqCst)
            }
            _ => 0,
        }
    }
}

/// The child to call now: waits while one is starting, fails while none runs.
async fn current_conn(shared: &Shared, wait_while_down: bool) -> Result<Arc<Conn>, CallError> {
    let mut rx = shared.phase.subscribe();
    loop {
        let phase = rx.borrow_and_update().clone();
        match phase {
            Phase::Ready(c) if !c.killed.load(Ordering::SeqCst) => return Ok(c),
            Phase::Stopped => {
                return Err(CallError {
                    kind: ErrorKind::Cancelled,
                    message: "the plugin child is stopped".into(),
                });
            }
            Phase::Down(cause) if !wait_while_down => {
                return Err(CallError {
                    kind: ErrorKind::Failed,
                    message: format!(
                        "the plugin child is restarting (it ended: {cause}); not called"
                    ),
                });
            }
            _ => {}
        }
        if rx.changed().await.is_err() {
            return Err(CallError {
                kind: ErrorKind::Cancelled,
                message: "the plugin child's supervisor ended".into(),
            });
        }
    }
}

impl ProcessInstance {
    /// Runs the push loop in the child; its batches are applied to `hub` as `origin`
    /// before the child's sink future completes. Ends with an error when the child dies.
    pub fn run(&self, hub: Arc<Hub>, origin: Origin) -> BoxFuture<Result<(), CallError>> {
        *lock(&self.shared.bus) = Some((hub, origin));
        let shared = self.shared.clone();
        Box::pin(async move {
            if shared.stopping.load(Ordering::SeqCst) {
                return Ok(());
            }
            let conn = match current_conn(&shared, true).await {
                Ok(c) => c,
                Err(_) if shared.stopping.load(Ordering::SeqCst) => return Ok(()),
                Err(e) => return Err(e),
            };
            let (_, rx) = conn.call(|id| ToChild::Run { id });
            match rx.await {
                Ok(FromChild::RunEnded { result, .. }) => result.map_err(CallError::from),
                Ok(other) => {
                    conn.kill(
                        Why::Protocol,
                        format!("protocol error: {} answers Run", name_of(&other)),
                    );
                    Err(conn.died())
                }
                Err(_) if shared.stopping.load(Ordering::SeqCst) => Ok(()),
                Err(_) => Err(conn.died()),
            }
        })
    }

    /// Asks the push loop to stop.
    pub fn request_stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Phase::Ready(c) = &*self.shared.phase.borrow() {
            c.send(&ToChild::RequestStop);
        }
    }

    /// The plugin's own health report; a child that is not running is unhealthy.
    pub fn health(&self) -> BoxFuture<Result<Health, CallError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let conn = match current_conn(&shared, false).await {
                Ok(c) => c,
                Err(e) => return Ok(Health::unhealthy(e.message)),
            };
            let (_, rx) = conn.call(|id| ToChild::Health { id });
            match rx.await {
                Ok(FromChild::Health { result, .. }) => result.map_err(CallError::from),
                Ok(_) => Ok(Health::unhealthy("protocol error")),
                Err(_) => Err(conn.died()),
            }
        })
    }

    /// The plugin's counters as of the last heartbeat.
    pub fn counters(&self) -> Vec<(String, u64)> {
        lock(&self.shared.counters).clone()
    }

    /// Stops the child: asks it to stop its plugin and exit, kills it if it has not
    /// within `timeout` and a second, and ends supervision.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.stop.cancel();
        if let Phase::Ready(c) = &*self.shared.phase.borrow() {
            c.send(&ToChild::Shutdown {
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            });
        }
        let task = lock(&self.supervisor).take();
        if let Some(mut task) = task {
            let limit = timeout + Duration::from_secs(1);
            if tokio::time::timeout(limit, &mut task).await.is_err() {
                if let Phase::Ready(c) = &*self.shared.phase.borrow() {
                    c.kill(Why::Shutdown, "did not stop in time at shutdown".into());
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
            }
        }
    }
}

/// Drops with the snapshot future: if the call was still in hand, cancels it in the
/// child and kills the child if the plugin's call does not return.
struct Abandon {
    conn: Arc<Conn>,
    id: u64,
    armed: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let conn = self.conn.clone();
        let id = self.id;
        // What it streamed so far is dropped now; what it still streams, on arrival.
        conn.abandon_snapshot(id);
        let (tx, rx) = oneshot::channel();
        lock(&conn.pending).insert(id, tx);
        conn.send(&ToChild::Cancel { id });
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            conn.kill(
                Why::Stuck,
                "a call passed its timeout (no runtime to wait for its cancellation)".into(),
            );
            return;
        };
        handle.spawn(async move {
            let answer = tokio::time::timeout(CANCEL_WAIT, rx).await;
            match answer {
                Ok(Ok(FromChild::Cancelled { stuck: true, .. })) => conn.kill(
                    Why::Stuck,
                    "a snapshot passed its timeout and the plugin's thread did not return (stuck); killed to reclaim it".into(),
                ),
                Ok(Ok(_)) => {
                    conn.in_flight.fetch_sub(1, Ordering::SeqCst);
                }
                Ok(Err(_)) => {} // the child ended meanwhile
                Err(_) => conn.kill(Why::Stuck, format!(
                    "a snapshot passed its timeout and the child did not answer its cancellation within {CANCEL_WAIT:?}"
                )),
            }
        });
    }
}
