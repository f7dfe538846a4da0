//! Spawning a plugin child: starting `PROGRAM plugin-child --parent-pid <host pid>` with
//! its pipes, and the first exchange (`Init`, answered by `Ready` or `CreateFailed`).
//!
//! Children are spawned from one long-lived thread, because `PR_SET_PDEATHSIG` (set
//! between fork and exec, with a `getppid` check for a host that died meanwhile) fires
//! when the *thread* that forked the child ends, and tokio's blocking threads come and go.
//! So when the host dies, even by SIGKILL, the kernel kills its children. The child's
//! stderr goes to [`super::logs`] from the start, so that a child that fails to load its
//! library says why in the host's log.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::oneshot;

use super::connection::name_of;
use super::lock;
use super::process::ProcessOptions;
use super::supervision::describe_exit;
use super::wire::{self, FromChild, ToChild, WireMeta};
use crate::instance::CallError;

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

/// A child that answered `Ready`.
pub(super) struct Launched {
    pub(super) child: Child,
    pub(super) stdin: tokio::process::ChildStdin,
    pub(super) stdout: BufReader<ChildStdout>,
    pub(super) meta: WireMeta,
}

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

pub(super) async fn launch(name: &Arc<str>, o: &ProcessOptions) -> Result<Launched, ProcessError> {
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
    tokio::spawn(super::logs::forward_logs(name.clone(), pid, stderr));
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
