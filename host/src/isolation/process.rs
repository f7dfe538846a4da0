//! The host side of process isolation: starting a plugin child, calling it over the
//! pipes, and supervising it.
//!
//! One supervisor task per instance owns the child. It kills the child when
//! - a call passed its timeout and the child reports that the plugin's call did not
//!   return (a stuck thread), or does not answer the cancellation within a second;
//! - no heartbeat answer came for `heartbeat_timeout`;
//! - its resident memory (`VmRSS` in `/proc/<pid>/status`, polled every 100 ms) passes
//!   `memory_limit` (the child also sets `RLIMIT_DATA` to twice the limit as a backstop);
//! - it sent a malformed frame, a snapshot part that does not decode, or a snapshot part
//!   for a call that is not a snapshot it has in hand ("protocol error").
//!
//! Snapshot parts are held (decoding, several at once) until their call's final frame, up
//! to `snapshot_limit` bytes of frames per call: past it the call fails at once with an
//! error saying so (a failed snapshot deletes nothing), the parts held are dropped and the
//! call's further parts are read and dropped until its final frame. The child is not
//! killed for that: a snapshot that large is the plugin's answer, not a protocol error.
//!
//! Whatever ended the child, the calls it had in hand fail (a snapshot that fails deletes
//! nothing), the cause is logged and recorded in the instance's status, and a new child
//! is started after a backoff (`backoff_initial` doubling up to `backoff_max`; reset once
//! a child has run for a minute). Children are spawned from one long-lived thread,
//! because `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use abi_stable::std_types::RString;
use synchronizer_plugin_api::abi::{FfiError, FfiSnapshot, LogLevel};
use synchronizer_plugin_api::{Entity, ErrorKind, Health};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, BufWriter};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::wire::{self, FromChild, ToChild, WireMeta};
use crate::backoff::Backoff;
use crate::hub::{Hub, Origin};
use crate::instance::{BoxFuture, CallError, Source, apply_pushed, delivered};
use crate::loader::PluginMeta;
use crate::metrics::Metrics;
use crate::status::StatusCell;

/// How often the child's resident memory is checked when it has a limit.
const MEMORY_POLL: Duration = Duration::from_millis(100);
/// How long the host waits for the child's answer to a cancellation.
const CANCEL_WAIT: Duration = Duration::from_secs(1);
/// A child that ran this long resets the restart backoff ([`Backoff`]'s quiet period).
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Process mode: the most snapshot-part frame bytes the host holds for one call, by
/// default (`snapshot_limit`). Decoded entities take several times their frame size.
pub const DEFAULT_SNAPSHOT_LIMIT: u64 = 256 << 20;
/// Abandoned snapshot calls (timed out, or past `snapshot_limit`) whose late parts are
/// still read and dropped. A child may send parts after it answered a cancellation, so an
/// abandoned call is remembered until its final frame; this many at most, the oldest
/// forgotten first (a part for a forgotten call is then a protocol error).
const MAX_ABANDONED: usize = 64;

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
    /// First restart delay.
    pub backoff_initial: Duration,
    /// Largest restart delay.
    pub backoff_max: Duration,
}

/// Why a child could not be started (or the instance created in it).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started.
    #[error("instance `{instance}`: cannot start the plugin child {}: {source}", .program.display())]
    Spawn {
        /// The instance.
        instance: String,
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The library did not load in the child.
    #[error("instance `{instance}` (in its child process): {message}")]
    Load {
        /// The instance.
        instance: String,
        /// The loader's message.
        message: String,
    },
    /// The plugin refused its configuration or failed to start.
    #[error("instance `{instance}` ({}, in its child process): {error}", .library.display())]
    Create {
        /// The instance.
        instance: String,
        /// The library.
        library: PathBuf,
        /// The plugin's error.
        error: CallError,
    },
    /// The child ended, or said something else, before the instance was created.
    #[error(
        "instance `{instance}`: the plugin child failed before the instance was created: {cause}"
    )]
    Died {
        /// The instance.
        instance: String,
        /// What happened.
        cause: String,
    },
    /// The child did not answer in time.
    #[error(
        "instance `{instance}`: the plugin child did not create the instance within {timeout:?}"
    )]
    Timeout {
        /// The instance.
        instance: String,
        /// The limit.
        timeout: Duration,
    },
}

impl ProcessError {
    /// The same error with every one of `secrets` replaced by `***` in what the child or
    /// the plugin said.
    pub fn scrubbed(self, secrets: &synchronizer_plugin_api::redact::Secrets) -> Self {
        match self {
            ProcessError::Load { instance, message } => ProcessError::Load {
                instance,
                message: secrets.scrub(&message),
            },
            ProcessError::Create {
                instance,
                library,
                mut error,
            } => {
                error.message = secrets.scrub(&error.message);
                ProcessError::Create {
                    instance,
                    library,
                    error,
                }
            }
            ProcessError::Died { instance, cause } => ProcessError::Died {
                instance,
                cause: secrets.scrub(&cause),
            },
            other => other,
        }
    }
}

/// One part of a streamed snapshot, decoded on a blocking thread.
type PartTask = tokio::task::JoinHandle<Result<Vec<Entity>, wire::WireError>>;

/// A snapshot call the child may stream parts for.
enum Stream {
    /// Its caller waits: parts are decoded and held, in order, until the final frame.
    Collecting {
        /// The parts, decoding or decoded.
        parts: Vec<PartTask>,
        /// Their frames' bytes.
        bytes: u64,
    },
    /// Its caller has its answer or gave up (the call passed its timeout, or its parts
    /// passed `snapshot_limit`): further parts are dropped until the final frame.
    Abandoned,
}

/// Why the host killed a child: the `cause` label of
/// `synchronizer_child_restarts_total` ([`crate::metrics`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    /// It broke the wire protocol.
    Protocol,
    /// It stopped answering heartbeats.
    Heartbeat,
    /// Its resident memory passed `memory_limit`.
    Memory,
    /// A call passed its timeout and the plugin's thread did not return.
    Stuck,
    /// It did not stop in time at shutdown.
    Shutdown,
}

impl Why {
    fn label(self) -> &'static str {
        match self {
            Why::Protocol => "protocol",
            Why::Heartbeat => "heartbeat",
            Why::Memory => "memory",
            Why::Stuck => "stuck",
            Why::Shutdown => "shutdown",
        }
    }
}

/// How one child ended: a bounded label for the restart counter and the whole story.
struct Ended {
    /// `exit`, `signal`, `unknown`, `launch` or a [`Why`] label.
    label: &'static str,
    /// What happened, for the status and the log.
    cause: String,
}

/// One running child and the calls it has in hand.
struct Conn {
    pid: u32,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<FromChild>>>,
    /// Every snapshot call in hand (or abandoned and not finished), with its parts: a
    /// part for any other call id is a protocol error.
    partial: Mutex<HashMap<u64, Stream>>,
    next_id: AtomicU64,
    in_flight: AtomicU32,
    kill_tx: mpsc::UnboundedSender<(Why, String)>,
    killed: AtomicBool,
    exit: OnceLock<String>,
    last_pong: Mutex<Instant>,
}

impl Conn {
    fn send(&self, msg: &ToChild) -> bool {
        self.tx.send(msg.encode()).is_ok()
    }

    /// Registers a call and sends it.
    fn call(&self, make: impl FnOnce(u64) -> ToChild) -> (u64, oneshot::Receiver<FromChild>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        self.send(&make(id));
        (id, rx)
    }

    /// Registers a snapshot call and sends it.
    fn call_snapshot(&self, types: Vec<String>) -> (u64, oneshot::Receiver<FromChild>) {
        self.call(|id| {
            lock(&self.partial).insert(
                id,
                Stream::Collecting {
                    parts: Vec::new(),
                    bytes: 0,
                },
            );
            ToChild::Snapshot { id, types }
        })
    }

    /// The caller of snapshot `id` has its answer or gave up: its parts are dropped now,
    /// later ones on arrival. Forgets the oldest abandoned calls past [`MAX_ABANDONED`].
    fn abandon_snapshot(&self, id: u64) {
        let mut streams = lock(&self.partial);
        if let Some(stream) = streams.get_mut(&id) {
            *stream = Stream::Abandoned;
        }
        let mut abandoned: Vec<u64> = streams
            .iter()
            .filter(|(_, s)| matches!(s, Stream::Abandoned))
            .map(|(id, _)| *id)
            .collect();
        if abandoned.len() > MAX_ABANDONED {
            abandoned.sort_unstable();
            for old in &abandoned[..abandoned.len() - MAX_ABANDONED] {
                streams.remove(old);
            }
        }
    }

    fn kill(&self, why: Why, cause: String) {
        if !self.killed.swap(true, Ordering::SeqCst) {
            let _ = self.kill_tx.send((why, cause));
        }
    }

    /// The error a call gets when the child ended under it.
    fn died(&self) -> CallError {
        let cause = self
            .exit
            .get()
            .cloned()
            .unwrap_or_else(|| "the child process ended".into());
        CallError {
            kind: ErrorKind::Failed,
            message: format!("the plugin child process ended during the call: {cause}"),
        }
    }
}

#[derive(Clone)]
enum Phase {
    Starting,
    Ready(Arc<Conn>),
    Down(String),
    Stopped,
}

struct Shared {
    name: Arc<str>,
    options: ProcessOptions,
    status: Arc<StatusCell>,
    metrics: Arc<Metrics>,
    phase: watch::Sender<Phase>,
    counters: Mutex<Vec<(String, u64)>>,
    bus: Mutex<Option<(Arc<Hub>, Origin)>>,
    stop: CancellationToken,
    stopping: AtomicBool,
}

/// A plugin instance served by a supervised child process.
pub struct ProcessInstance {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A child that answered `Ready`.
struct Launched {
    child: Child,
    stdin: tokio::process::ChildStdin,
    stdout: BufReader<ChildStdout>,
    meta: WireMeta,
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

fn name_of(m: &FromChild) -> &'static str {
    match m {
        FromChild::Ready { .. } => "Ready",
        FromChild::CreateFailed { .. } => "CreateFailed",
        FromChild::Snapshot { .. } => "Snapshot",
        FromChild::SnapshotPart { .. } => "SnapshotPart",
        FromChild::Cancelled { .. } => "Cancelled",
        FromChild::Push { .. } => "Push",
        FromChild::RunEnded { .. } => "RunEnded",
        FromChild::Health { .. } => "Health",
        FromChild::Pong { .. } => "Pong",
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---- spawning ----

struct SpawnRequest {
    command: Command,
    handle: tokio::runtime::Handle,
    reply: oneshot::Sender<std::io::Result<Child>>,
}

/// Spawns `command` from one thread that lives as long as the process: the child's
/// `PR_SET_PDEATHSIG` is tied to the thread that forked it.
async fn spawn_from_spawner(command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<std::sync::mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        let started = std::thread::Builder::new()
            .name("plugin-spawner".into())
            .spawn(move || {
                while let Ok(req) = rx.recv() {
                    let _guard = req.handle.enter();
                    let mut command = req.command;
                    let _ = req.reply.send(command.spawn());
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the plugin spawner thread");
        }
        Mutex::new(tx)
    });
    let (reply, rx) = oneshot::channel();
    let req = SpawnRequest {
        command,
        handle: tokio::runtime::Handle::current(),
        reply,
    };
    if lock(sender).send(req).is_err() {
        return Err(std::io::Error::other("the plugin spawner thread is gone"));
    }
    rx.await
        .map_err(|_| std::io::Error::other("the plugin spawner thread is gone"))?
}

async fn launch(name: &Arc<str>, o: &ProcessOptions) -> Result<Launched, ProcessError> {
    let mut command = Command::new(&o.program);
    let parent = std::process::id();
    command
        .arg("plugin-child")
        .arg("--parent-pid")
        .arg(parent.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    let parent_pid = parent as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The host may have died before the line above: then nobody would kill us.
            if libc::getppid() != parent_pid {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let spawn_err = |source| ProcessError::Spawn {
        instance: name.to_string(),
        program: o.program.clone(),
        source,
    };
    let mut child = spawn_from_spawner(command).await.map_err(spawn_err)?;
    let pid = child.id().unwrap_or(0);
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(spawn_err(std::io::Error::other("no pipes to the child")));
    };
    tokio::spawn(forward_logs(name.clone(), pid, stderr));
    let init = ToChild::Init {
        instance: name.to_string(),
        library: o.library.display().to_string(),
        config_json: o.config.to_string(),
        max_level: o.max_level,
        create_timeout_ms: u64::try_from(o.create_timeout.as_millis()).unwrap_or(u64::MAX),
        memory_limit: o.memory_limit.unwrap_or(0),
    };
    let died = |cause: String| ProcessError::Died {
        instance: name.to_string(),
        cause,
    };
    if let Err(e) = stdin.write_all(&init.encode()).await {
        let cause = exit_cause(&mut child).await;
        return Err(died(format!("{cause} (writing Init: {e})")));
    }
    let _ = stdin.flush().await;
    let mut stdout = BufReader::with_capacity(256 << 10, stdout);
    // Loading a library takes a moment beyond the constructor's own limit.
    let limit = o.create_timeout + Duration::from_secs(5);
    let first = match tokio::time::timeout(limit, wire::read_frame(&mut stdout)).await {
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(ProcessError::Timeout {
                instance: name.to_string(),
                timeout: limit,
            });
        }
        Ok(Ok(Some(body))) => body,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(died(format!("protocol error: {e}")));
        }
        Ok(Ok(None)) | Ok(Err(_)) => return Err(died(exit_cause(&mut child).await)),
    };
    match FromChild::decode(&first) {
        Ok(FromChild::Ready { meta }) => {
            tracing::info!(instance = %name, pid, "plugin child started");
            Ok(Launched {
                child,
                stdin,
                stdout,
                meta,
            })
        }
        Ok(FromChild::CreateFailed { load, error }) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            if load {
                Err(ProcessError::Load {
                    instance: name.to_string(),
                    message: error.message.into(),
                })
            } else {
                Err(ProcessError::Create {
                    instance: name.to_string(),
                    library: o.library.clone(),
                    error: error.into(),
                })
            }
        }
        Ok(other) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(died(format!(
                "protocol error: {} before Ready",
                name_of(&other)
            )))
        }
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(died(format!("protocol error: {e}")))
        }
    }
}

/// Waits (a little) for the child to exit and describes how it did.
async fn exit_cause(child: &mut Child) -> String {
    let status = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        Ok(Ok(s)) => Some(s),
        _ => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    };
    match status {
        Some(s) => describe_exit(s),
        None => "exited (status unknown)".into(),
    }
}

/// `exited with status 3`, `killed by signal 11 (SIGSEGV)`.
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = match sig {
                libc::SIGSEGV => "SIGSEGV",
                libc::SIGABRT => "SIGABRT",
                libc::SIGBUS => "SIGBUS",
                libc::SIGILL => "SIGILL",
                libc::SIGFPE => "SIGFPE",
                libc::SIGKILL => "SIGKILL",
                libc::SIGTERM => "SIGTERM",
                libc::SIGINT => "SIGINT",
                _ => "signal",
            };
            let core = if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            };
            format!("killed by signal {sig} ({name}{core})")
        }
        None => format!("ended ({status})"),
    }
}

/// The resident set size of `pid`, from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Re-emits the child's JSON log lines (and anything else it writes to stderr) in the
/// host's log with the instance's name.
async fn forward_logs(instance: Arc<str>, pid: u32, stderr: ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        emit_child_log(&instance, pid, &line);
    }
}

fn emit_child_log(instance: &str, pid: u32, line: &str) {
    let Ok(serde_json::Value::Object(mut v)) = serde_json::from_str::<serde_json::Value>(line)
    else {
        // Not one of the child's JSON lines: a plugin printing, or the runtime's own
        // last words.
        tracing::warn!(target: "plugin", instance, pid, "{line}");
        return;
    };
    let level = v
        .get("level")
        .and_then(|l| l.as_str())
        .unwrap_or("INFO")
        .to_owned();
    let child_target = v
        .get("target")
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_owned();
    let mut fields = match v.remove("fields") {
        Some(serde_json::Value::Object(f)) => f,
        _ => serde_json::Map::new(),
    };
    let message = match fields.remove("message") {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    fields.remove("instance");
    let plugin_target = match fields.remove("plugin_target") {
        Some(serde_json::Value::String(s)) => s,
        _ => child_target,
    };
    // A plugin's own fields arrive as one `fields` string (see `instance::HostLog`);
    // the child's own events carry ordinary fields.
    let mut rest: Vec<String> = Vec::new();
    if let Some(serde_json::Value::String(own)) = fields.remove("fields")
        && !own.is_empty()
    {
        rest.push(own);
    }
    rest.extend(fields.iter().map(|(k, v)| match v {
        serde_json::Value::String(s) => format!("{k}={s}"),
        other => format!("{k}={other}"),
    }));
    let fields = rest.join(" ");
    let t = plugin_target.as_str();
    match level.as_str() {
        "ERROR" => {
            tracing::error!(target: "plugin", instance, pid, plugin_target = t, fields, "{message}")
        }
        "WARN" => {
            tracing::warn!(target: "plugin", instance, pid, plugin_target = t, fields, "{message}")
        }
        "DEBUG" => {
            tracing::debug!(target: "plugin", instance, pid, plugin_target = t, fields, "{message}")
        }
        "TRACE" => {
            tracing::trace!(target: "plugin", instance, pid, plugin_target = t, fields, "{message}")
        }
        _ => {
            tracing::info!(target: "plugin", instance, pid, plugin_target = t, fields, "{message}")
        }
    }
}

// ---- supervision ----

async fn supervise(shared: Arc<Shared>, first: Launched) {
    let mut next = Some(first);
    // A child that ran for STABLE_AFTER restarts after `backoff_initial` again.
    let mut backoff = Backoff::new(shared.options.backoff_initial, shared.options.backoff_max)
        .with_jitter(0.2)
        .with_quiet_period(STABLE_AFTER);
    loop {
        let Ended { label, cause } = match next.take() {
            Some(launched) => serve(&shared, launched).await,
            None => match launch(&shared.name, &shared.options).await {
                Ok(l) => {
                    next = Some(l);
                    continue;
                }
                Err(e) => Ended {
                    label: "launch",
                    cause: e.to_string(),
                },
            },
        };
        if shared.stop.is_cancelled() {
            shared.status.child_exited(&cause, false);
            break;
        }
        shared.metrics.child_restart(&shared.name, label);
        let delay = backoff.failure();
        tracing::warn!(instance = %shared.name, cause = %cause, restart_in = ?delay, "plugin child ended; restarting it");
        shared.status.child_exited(&cause, true);
        shared.phase.send_replace(Phase::Down(cause));
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        shared.phase.send_replace(Phase::Starting);
    }
    shared.phase.send_replace(Phase::Stopped);
}

/// Serves one child until it ends; returns why it ended.
async fn serve(shared: &Arc<Shared>, launched: Launched) -> Ended {
    let Launched {
        mut child,
        stdin,
        stdout,
        ..
    } = launched;
    let pid = child.id().unwrap_or(0);
    let (tx, out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let (kill_tx, mut kill_rx) = mpsc::unbounded_channel::<(Why, String)>();
    let conn = Arc::new(Conn {
        pid,
        tx,
        pending: Mutex::default(),
        partial: Mutex::default(),
        next_id: AtomicU64::new(1),
        in_flight: AtomicU32::new(0),
        kill_tx,
        killed: AtomicBool::new(false),
        exit: OnceLock::new(),
        last_pong: Mutex::new(Instant::now()),
    });
    let writer = tokio::spawn(write_frames(stdin, out_rx));
    let reader = tokio::spawn(read_frames(shared.clone(), conn.clone(), stdout));
    shared.status.child_started(pid);
    shared.phase.send_replace(Phase::Ready(conn.clone()));
    if shared.stopping.load(Ordering::SeqCst) {
        conn.send(&ToChild::RequestStop);
    }

    let mut heartbeat = tokio::time::interval(shared.options.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut memory = tokio::time::interval(MEMORY_POLL);
    memory.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let limit = shared.options.memory_limit;
    let mut killed_for: Option<(Why, String)> = None;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s.ok(),
            Some((why, cause)) = kill_rx.recv(), if killed_for.is_none() => {
                tracing::warn!(instance = %shared.name, pid, %cause, "killing the plugin child");
                let _ = child.start_kill();
                killed_for = Some((why, cause));
            }
            _ = heartbeat.tick(), if killed_for.is_none() => {
                let silent = lock(&conn.last_pong).elapsed();
                if silent > shared.options.heartbeat_timeout {
                    conn.kill(Why::Heartbeat, format!("no heartbeat answer for {:.1}s", silent.as_secs_f64()));
                } else {
                    conn.send(&ToChild::Ping { id: 0 });
                }
            }
            _ = memory.tick(), if limit.is_some() && killed_for.is_none() => {
                if let (Some(limit), Some(rss)) = (limit, rss_bytes(pid))
                    && rss > limit
                {
                    conn.kill(Why::Memory, format!(
                        "memory limit exceeded: resident {} MiB > limit {} MiB",
                        rss >> 20,
                        limit >> 20
                    ));
                }
            }
        }
    };
    let (label, cause) = match killed_for {
        Some((why, reason)) => (why.label(), format!("killed by the host: {reason}")),
        None => match status {
            Some(s) if s.success() && shared.stop.is_cancelled() => ("exit", "stopped".into()),
            Some(s) if s.code().is_some() => ("exit", describe_exit(s)),
            Some(s) => ("signal", describe_exit(s)),
            None => ("unknown", "ended (status unknown)".into()),
        },
    };
    conn.killed.store(true, Ordering::SeqCst);
    let _ = conn.exit.set(cause.clone());
    // Every call in hand fails now, with the cause.
    lock(&conn.pending).clear();
    let _ = tokio::time::timeout(Duration::from_millis(500), reader).await;
    writer.abort();
    if shared.stop.is_cancelled() {
        tracing::info!(instance = %shared.name, pid, %cause, "plugin child ended");
    } else {
        tracing::error!(instance = %shared.name, pid, %cause, "plugin child ended");
    }
    Ended { label, cause }
}

/// Takes one `SnapshotPart` frame for call `id`: decodes it off the reader task (several
/// at once, while the next arrive) and holds it for the call's final frame. `Err` is a
/// protocol error: the child is to be killed with that cause.
fn take_part(shared: &Shared, conn: &Arc<Conn>, id: u64, body: Vec<u8>) -> Result<(), String> {
    let limit = shared.options.snapshot_limit;
    let mut streams = lock(&conn.partial);
    let (parts, bytes) = match streams.get_mut(&id) {
        None => {
            return Err(format!(
                "protocol error: a snapshot part for call {id}, which is not a snapshot in hand"
            ));
        }
        Some(Stream::Abandoned) => return Ok(()), // read and dropped
        Some(Stream::Collecting { parts, bytes }) => (parts, bytes),
    };
    *bytes = bytes.saturating_add(body.len() as u64);
    if *bytes > limit {
        let held = *bytes;
        drop(streams);
        conn.abandon_snapshot(id);
        let message = format!(
            "the snapshot is larger than snapshot_limit: its parts passed {} MiB ({held} bytes of frames); they are dropped and nothing is deleted",
            limit >> 20
        );
        tracing::error!(instance = %shared.name, pid = conn.pid, call = id, limit, "snapshot parts passed snapshot_limit; the snapshot fails");
        let waiter = lock(&conn.pending).remove(&id);
        if let Some(w) = waiter {
            let _ = w.send(FromChild::Snapshot {
                id,
                result: Err(FfiError {
                    kind: ErrorKind::Failed,
                    message: RString::from(message),
                }),
            });
        }
        return Ok(());
    }
    let decoder = conn.clone();
    parts.push(tokio::task::spawn_blocking(move || {
        let result = match FromChild::decode(&body) {
            Ok(FromChild::SnapshotPart { entities, .. }) => Ok(entities),
            Ok(_) => Err(wire::WireError::UnknownTag(0)),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            // At once: the call fails and the child is restarted now, not when (or if)
            // the final frame comes.
            decoder.kill(
                Why::Protocol,
                format!("protocol error: a snapshot part of call {id}: {e}"),
            );
        }
        result
    }));
    Ok(())
}

async fn write_frames(stdin: tokio::process::ChildStdin, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut w = BufWriter::with_capacity(64 << 10, stdin);
    while let Some(frame) = rx.recv().await {
        if w.write_all(&frame).await.is_err() {
            return;
        }
        while let Ok(frame) = rx.try_recv() {
            if w.write_all(&frame).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}

async fn read_frames(shared: Arc<Shared>, conn: Arc<Conn>, mut stdout: BufReader<ChildStdout>) {
    loop {
        let body = match wire::read_frame(&mut stdout).await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    conn.kill(Why::Protocol, format!("protocol error: {e}"));
                }
                return;
            }
        };
        if let Some(id) = wire::snapshot_part_id(&body) {
            if let Err(cause) = take_part(&shared, &conn, id, body) {
                conn.kill(Why::Protocol, cause);
                return;
            }
            continue;
        }
        let msg = match FromChild::decode(&body) {
            Ok(m) => m,
            Err(e) => {
                conn.kill(Why::Protocol, format!("protocol error: {e}"));
                return;
            }
        };
        match msg {
            FromChild::Pong {
                calls_in_flight: _,
                counters,
                ..
            } => {
                *lock(&conn.last_pong) = Instant::now();
                *lock(&shared.counters) = counters;
            }
            FromChild::Push { id, batch } => {
                let bus = lock(&shared.bus).clone();
                // Applied here, in arrival order; the wait for reliable outputs (and so
                // the child's upstream acknowledgement) runs beside the reader.
                match bus {
                    Some((hub, origin)) => match apply_pushed(&hub, &origin, batch).await {
                        Ok(Some(seq)) if hub.deliveries().any() => {
                            let conn = conn.clone();
                            tokio::spawn(async move {
                                let result = delivered(&hub, Some(seq)).await;
                                conn.send(&ToChild::PushAck { id, result });
                            });
                        }
                        result => {
                            conn.send(&ToChild::PushAck {
                                id,
                                result: result.map(|_| ()),
                            });
                        }
                    },
                    None => {
                        conn.send(&ToChild::PushAck {
                            id,
                            result: Err(FfiError {
                                kind: ErrorKind::Failed,
                                message: RString::from("no push loop is running"),
                            }),
                        });
                    }
                }
            }
            FromChild::Ready { .. } | FromChild::CreateFailed { .. } => {
                conn.kill(
                    Why::Protocol,
                    format!("protocol error: unexpected {}", name_of(&msg)),
                );
                return;
            }
            FromChild::SnapshotPart { .. } => {} // routed above
            FromChild::Snapshot { id, result } => {
                let parts = match lock(&conn.partial).remove(&id) {
                    // Its caller has its answer already, or gave up.
                    Some(Stream::Abandoned) => continue,
                    Some(Stream::Collecting { parts, .. }) => Some(parts),
                    None => None,
                };
                let conn = conn.clone();
                // The parts are joined in order off this task: frames keep flowing.
                tokio::spawn(async move {
                    let result = match (result, parts) {
                        (Ok(mut snap), Some(parts)) => {
                            let mut all: Vec<Entity> = Vec::new();
                            let mut failed = None;
                            for part in parts {
                                match part.await {
                                    Ok(Ok(entities)) => {
                                        if all.is_empty() {
                                            all.reserve(entities.len() * 10);
                                        }
                                        all.extend(entities)
                                    }
                                    Ok(Err(e)) => failed = Some(e.to_string()),
                                    Err(e) => failed = Some(e.to_string()),
                                }
                            }
                            if let Some(e) = failed {
                                // Killed when the part failed already (`take_part`); this
                                // covers a decoding task that did not finish.
                                conn.kill(
                                    Why::Protocol,
                                    format!("protocol error: a snapshot part of call {id}: {e}"),
                                );
                                return;
                            }
                            all.extend(std::mem::take(&mut snap.entities));
                            snap.entities = all.into();
                            Ok(snap)
                        }
                        (r, _) => r,
                    };
                    let waiter = lock(&conn.pending).remove(&id);
                    if let Some(w) = waiter {
                        let _ = w.send(FromChild::Snapshot { id, result });
                    }
                });
            }
            FromChild::Cancelled { id, .. }
            | FromChild::RunEnded { id, .. }
            | FromChild::Health { id, .. } => {
                let waiter = lock(&conn.pending).remove(&id);
                if let Some(w) = waiter {
                    let _ = w.send(msg);
                }
            }
        }
    }
}
