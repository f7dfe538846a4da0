//! Supervision: one task per instance owns its child, watches it, kills it for a cause
//! and restarts it.
//!
//! The supervisor kills the child (SIGKILL) when
//! - a call passed its timeout and the child reports that the plugin's call did not
//!   return (a stuck thread), or does not answer the cancellation within a second
//!   ([`super::process`]);
//! - no heartbeat answer came for `heartbeat_timeout` (a `Ping` every
//!   `heartbeat_interval`; the `Pong` carries the plugin's counters);
//! - its resident memory (`VmRSS` in `/proc/<pid>/status`, polled every 100 ms) passes
//!   `memory_limit` (the child also sets `RLIMIT_DATA` to twice the limit as a backstop);
//! - it sent a malformed frame, a snapshot part that does not decode, or a snapshot part
//!   for a call that is not a snapshot it has in hand ("protocol error",
//!   [`super::connection`]).
//!
//! Whatever ended the child, the calls it had in hand fail (a snapshot that fails deletes
//! nothing), the cause is logged, counted (`synchronizer_child_restarts_total`, by
//! [`Why`]) and recorded in the instance's status, and a new child is started after a
//! backoff (`backoff_initial` doubling up to `backoff_max`; reset once a child has run for
//! a minute).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::connection::{Conn, read_frames, write_frames};
use super::lock;
use super::process::{Phase, Shared};
use super::spawn::{Launched, launch};
use super::wire::ToChild;
use crate::backoff::Backoff;

/// How often the child's resident memory is checked when it has a limit.
const MEMORY_POLL: Duration = Duration::from_millis(100);
/// A child that ran this long resets the restart backoff ([`Backoff`]'s quiet period).
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Why the host killed a child: the `cause` label of
/// `synchronizer_child_restarts_total` ([`crate::metrics`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Why {
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

pub(super) async fn supervise(shared: Arc<Shared>, first: Launched) {
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
