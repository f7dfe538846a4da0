//! The child side of process isolation: `synchronizer plugin-child`.
//!
//! The host starts the child with its stdin and stdout as the protocol's pipes and its
//! stderr as the log. The child first moves the protocol off fds 0 and 1 (so that a
//! plugin printing to stdout cannot corrupt a frame: fd 1 becomes stderr), reads the
//! `Init` frame, loads the library with [`crate::loader::load`], creates the instance
//! with [`PluginInstance::create`], answers `Ready` (with the plugin's metadata) or
//! `CreateFailed`, then serves calls until the host says `Shutdown` or closes the pipe.
//! Logs (the plugin's, forwarded by the SDK, and the child's own, panics included) go to
//! stderr as JSON lines for the host to re-emit with the instance's name.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RString, RVec};
use async_ffi::{FfiFuture, FutureExt as _};
use synchronizer_plugin_api::ErrorKind;
use synchronizer_plugin_api::abi::{FfiError, FfiPushed, HostSink, HostSink_TO, LogLevel};
use tokio::sync::{mpsc, oneshot};

use super::lock;
use super::wire::{self, FromChild, ToChild, WireMeta};
use crate::instance::{PluginInstance, Source};

/// How long the child waits for a cancelled call to leave the plugin before it reports
/// the call stuck (the host then kills it).
const STUCK_GRACE: Duration = Duration::from_millis(300);

/// A snapshot's entities are streamed in parts of this many.
const PART: usize = 1000;

/// Why the child could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The host that started it is gone (or it was not started by a host).
    #[error("the parent process {expected} is gone")]
    Orphan {
        /// The host's pid, as passed on the command line.
        expected: u32,
    },
    /// Setting up the pipes failed.
    #[error("cannot set up the protocol pipes: {0}")]
    Io(#[from] std::io::Error),
    /// The first frame was not `Init`.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Runs the child: returns only on a setup failure (otherwise the process exits).
pub fn main(parent_pid: Option<u32>) -> Result<(), ChildError> {
    if let Some(expected) = parent_pid {
        // SAFETY: getppid has no preconditions.
        let actual = unsafe { libc::getppid() };
        if i64::from(actual) != i64::from(expected) {
            return Err(ChildError::Orphan { expected });
        }
    }
    let (proto_in, proto_out) = take_protocol_fds()?;
    let mut input = BufReader::with_capacity(64 << 10, proto_in);
    let init = match wire::read_frame_sync(&mut input)? {
        Some(body) => ToChild::decode(&body).map_err(|e| ChildError::Protocol(e.to_string()))?,
        None => return Ok(()),
    };
    let ToChild::Init {
        instance,
        library,
        config_json,
        max_level,
        create_timeout_ms,
        memory_limit,
    } = init
    else {
        return Err(ChildError::Protocol("the first frame is not Init".into()));
    };
    init_logging(max_level);
    install_panic_hook();
    if memory_limit > 0 {
        limit_data(memory_limit.saturating_mul(2));
    }

    // Frames to the host go through one writer thread.
    let (out_tx, out_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    spawn_writer(proto_out, out_rx)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("plugin-child")
        .enable_all()
        .build()?;
    let (in_tx, in_rx) = mpsc::unbounded_channel::<ToChild>();
    spawn_reader(input, in_tx)?;
    runtime.block_on(serve(
        instance,
        library,
        config_json,
        max_level,
        Duration::from_millis(create_timeout_ms),
        out_tx,
        in_rx,
    ));
    // Plugin threads may be stuck: never wait for them.
    std::process::exit(0)
}

/// Moves the protocol to fresh fds, points fd 0 at /dev/null and fd 1 at stderr.
fn take_protocol_fds() -> Result<(File, File), std::io::Error> {
    // SAFETY: dup/dup2/open on fds this process owns; results are checked.
    unsafe {
        let fin = libc::dup(0);
        let fout = libc::dup(1);
        if fin < 0 || fout < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null < 0 || libc::dup2(null, 0) < 0 || libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::close(null);
        libc::fcntl(fin, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(fout, libc::F_SETFD, libc::FD_CLOEXEC);
        // Larger pipes, fewer wake-ups for a large snapshot (best effort: the system's
        // pipe-max-size may refuse).
        libc::fcntl(fout, libc::F_SETPIPE_SZ, 1 << 20);
        libc::fcntl(fin, libc::F_SETPIPE_SZ, 1 << 20);
        Ok((
            File::from(OwnedFd::from_raw_fd(fin)),
            File::from(OwnedFd::from_raw_fd(fout)),
        ))
    }
}

fn init_logging(max_level: LogLevel) {
    use tracing::level_filters::LevelFilter;
    let level = match max_level {
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
        _ => LevelFilter::INFO,
    };
    tracing_subscriber::fmt()
        .json()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        tracing::error!(target: "plugin_child", thread, "panic in the plugin child: {info}");
    }));
}

/// A backstop to the host's RSS polling: the data segment may grow to `bytes`.
fn limit_data(bytes: u64) {
    let lim = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_DATA, &lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot set RLIMIT_DATA");
    }
}

fn spawn_writer(out: File, rx: std::sync::mpsc::Receiver<Vec<u8>>) -> Result<(), std::io::Error> {
    std::thread::Builder::new()
        .name("child-writer".into())
        .spawn(move || {
            let mut w = BufWriter::with_capacity(64 << 10, out);
            while let Ok(frame) = rx.recv() {
                let mut ok = w.write_all(&frame).is_ok();
                while ok && let Ok(frame) = rx.try_recv() {
                    ok = w.write_all(&frame).is_ok();
                }
                if !ok || w.flush().is_err() {
                    // The host is gone.
                    std::process::exit(0);
                }
            }
        })?;
    Ok(())
}

fn spawn_reader(
    mut input: BufReader<File>,
    tx: mpsc::UnboundedSender<ToChild>,
) -> Result<(), std::io::Error> {
    std::thread::Builder::new()
        .name("child-reader".into())
        .spawn(move || {
            loop {
                match wire::read_frame_sync(&mut input) {
                    Ok(Some(body)) => match ToChild::decode(&body) {
                        Ok(msg) => {
                            if tx.send(msg).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "protocol error in a frame from the host; exiting");
                            std::process::exit(3);
                        }
                    },
                    // The host closed the pipe (or died): nothing left to serve.
                    Ok(None) | Err(_) => std::process::exit(0),
                }
            }
        })?;
    Ok(())
}

type Pushes = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<(), FfiError>>>>>;

/// The sink a bus plugin pushes into: each batch goes to the host, and the future
/// completes only when the host has applied it and replied.
struct ChildSink {
    out: std::sync::mpsc::Sender<Vec<u8>>,
    pushes: Pushes,
    next: Arc<AtomicU64>,
}

impl HostSink for ChildSink {
    fn push(&self, batch: RVec<FfiPushed>) -> FfiFuture<RResult<(), FfiError>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pushes).insert(id, tx);
        let sent = self.out.send(wire::encode_push(id, &batch)).is_ok();
        drop(batch);
        async move {
            if !sent {
                return RResult::RErr(failed("the host is gone"));
            }
            match rx.await {
                Ok(Ok(())) => RResult::ROk(()),
                Ok(Err(e)) => RResult::RErr(e),
                Err(_) => RResult::RErr(failed("the host is gone")),
            }
        }
        .into_ffi()
    }
}

fn failed(message: &str) -> FfiError {
    FfiError {
        kind: ErrorKind::Failed,
        message: RString::from(message),
    }
}

async fn serve(
    instance: String,
    library: String,
    config_json: String,
    max_level: LogLevel,
    create_timeout: Duration,
    out: std::sync::mpsc::Sender<Vec<u8>>,
    mut rx: mpsc::UnboundedReceiver<ToChild>,
) {
    let send = |msg: FromChild| {
        let _ = out.send(msg.encode());
    };
    let lib = match crate::loader::load(std::path::Path::new(&library)) {
        Ok(lib) => lib,
        Err(e) => {
            send(FromChild::CreateFailed {
                load: true,
                error: failed(&e.to_string()),
            });
            return linger().await;
        }
    };
    let config: serde_json::Value = match serde_json::from_str(&config_json) {
        Ok(v) => v,
        Err(e) => {
            send(FromChild::CreateFailed {
                load: false,
                error: FfiError {
                    kind: ErrorKind::Config,
                    message: format!("configuration is not JSON: {e}").into(),
                },
            });
            return linger().await;
        }
    };
    let plugin = match PluginInstance::create(&lib, &instance, &config, max_level, create_timeout)
        .await
    {
        Ok(p) => Arc::new(p),
        Err(e) => {
            let error = match &e {
                crate::instance::CreateError::Plugin { error, .. } => super::to_ffi_error(error),
                other => failed(&other.to_string()),
            };
            send(FromChild::CreateFailed { load: false, error });
            return linger().await;
        }
    };
    let m = &lib.meta;
    send(FromChild::Ready {
        meta: WireMeta {
            name: m.name.clone(),
            version: m.version.clone(),
            description: m.description.clone(),
            entity_types: m.entity_types.clone(),
            kind: m.kind,
            api_version: m.api_version.clone(),
        },
    });
    tracing::debug!(instance, pid = std::process::id(), "plugin child ready");

    let calls: Arc<Mutex<HashMap<u64, tokio::task::AbortHandle>>> = Arc::default();
    let pushes: Pushes = Arc::default();
    let next_push = Arc::new(AtomicU64::new(1));
    while let Some(msg) = rx.recv().await {
        match msg {
            ToChild::Init { .. } => {
                tracing::warn!("a second Init frame is ignored");
            }
            ToChild::Snapshot { id, types } => {
                let call = plugin.snapshot(types);
                let out = out.clone();
                let calls2 = calls.clone();
                // The handle is registered before the task can remove it.
                let mut c = lock(&calls);
                let task = tokio::spawn(async move {
                    let result = call.await;
                    let frame = match &result {
                        Ok(s) => {
                            // Each part is written while the next is encoded.
                            let mut rest = s.entities.as_slice();
                            while rest.len() > PART {
                                let (part, tail) = rest.split_at(PART);
                                let _ = out.send(wire::encode_snapshot_part(id, part));
                                rest = tail;
                            }
                            wire::encode_snapshot_tail(id, rest, &s.incomplete)
                        }
                        Err(e) => wire::encode_snapshot(id, Err(&super::to_ffi_error(e))),
                    };
                    lock(&calls2).remove(&id);
                    let _ = out.send(frame);
                });
                c.insert(id, task.abort_handle());
            }
            ToChild::Cancel { id } => {
                let handle = lock(&calls).remove(&id);
                let plugin = plugin.clone();
                let out = out.clone();
                tokio::spawn(async move {
                    let stuck = match handle {
                        Some(h) => {
                            h.abort();
                            let deadline = tokio::time::Instant::now() + STUCK_GRACE;
                            while plugin.calls_in_flight() > 0
                                && tokio::time::Instant::now() < deadline
                            {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            plugin.calls_in_flight() > 0
                        }
                        None => false,
                    };
                    let _ = out.send(FromChild::Cancelled { id, stuck }.encode());
                });
            }
            ToChild::Run { id } => {
                let sink = HostSink_TO::from_value(
                    ChildSink {
                        out: out.clone(),
                        pushes: pushes.clone(),
                        next: next_push.clone(),
                    },
                    TD_Opaque,
                );
                let run = plugin.run_with_sink(sink);
                let out = out.clone();
                tokio::spawn(async move {
                    let result = run.await.map_err(|e| super::to_ffi_error(&e));
                    let _ = out.send(FromChild::RunEnded { id, result }.encode());
                });
            }
            ToChild::PushAck { id, result } => {
                if let Some(tx) = lock(&pushes).remove(&id) {
                    let _ = tx.send(result);
                }
            }
            ToChild::RequestStop => plugin.request_stop(),
            ToChild::Health { id } => {
                let plugin = plugin.clone();
                let out = out.clone();
                tokio::spawn(async move {
                    let result = plugin.health().await.map_err(|e| super::to_ffi_error(&e));
                    let _ = out.send(FromChild::Health { id, result }.encode());
                });
            }
            ToChild::Ping { id } => send(FromChild::Pong {
                id,
                calls_in_flight: plugin.calls_in_flight(),
                counters: plugin.counters(),
            }),
            ToChild::Shutdown { timeout_ms } => {
                let p = plugin.clone();
                let stop = tokio::task::spawn_blocking(move || {
                    p.shutdown_runtime(Duration::from_millis(timeout_ms))
                });
                let _ = tokio::time::timeout(Duration::from_millis(timeout_ms + 200), stop).await;
                tracing::debug!(instance, "plugin child stopped");
                return;
            }
        }
    }
}

/// After `CreateFailed`: give the writer a moment to send it, then end.
async fn linger() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}
