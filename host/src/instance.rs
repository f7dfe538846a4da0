//! One running plugin instance, seen from the host: creating it off the async workers,
//! the host context it logs through, the sink its pushed changes go into, and the
//! [`Source`] the scheduler polls.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString, RVec};
use async_ffi::{FfiFuture, FutureExt as _};
use futures::FutureExt as _;
use synchronizer_plugin_api::abi::{
    FfiError, FfiPushed, FfiSnapshot, HostContext, HostContext_TO, HostSink, HostSink_TO, LogLevel,
    LogRecord, PluginInstanceBox,
};
use synchronizer_plugin_api::redact::Secrets;
use synchronizer_plugin_api::{ErrorKind, Health};

use crate::hub::{Hub, Origin};
use crate::loader::PluginLibrary;

/// The first problem a plugin found in an instance's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The field's path in the instance's `config` table (`tls.ca_file`,
    /// `families[1]`), when the problem is one field's.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigProblem {
    /// Reads a 0.1.0 SDK's message back: `instance `x`: invalid config field `f`: ...`,
    /// without serde_json's ` at line 1 column 12` (a place in JSON the host generated).
    fn from_message(instance: &str, message: &str) -> Self {
        let rest = message
            .strip_prefix(&format!("instance `{instance}`: "))
            .unwrap_or(message);
        let rest = strip_json_position(rest);
        for prefix in ["invalid config field `", "config field `"] {
            if let Some(tail) = rest.strip_prefix(prefix) {
                if let Some((field, what)) = tail.split_once("`: ") {
                    return ConfigProblem {
                        field: Some(field.to_owned()),
                        message: what.to_owned(),
                    };
                }
            }
        }
        ConfigProblem {
            field: None,
            message: rest.to_owned(),
        }
    }
}

fn strip_json_position(message: &str) -> &str {
    let Some((head, tail)) = message.rsplit_once(" at line ") else {
        return message;
    };
    let is_position = tail.split_once(" column ").is_some_and(|(line, column)| {
        !line.is_empty()
            && !column.is_empty()
            && line.bytes().all(|b| b.is_ascii_digit())
            && column.bytes().all(|b| b.is_ascii_digit())
    });
    if is_position { head } else { message }
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "field `{field}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A failed plugin call, in host types.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The plugin's message.
    pub message: String,
}

impl From<FfiError> for CallError {
    fn from(e: FfiError) -> Self {
        CallError {
            kind: e.kind,
            message: e.message.into(),
        }
    }
}

/// A boxed future, as sources return them.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Something the scheduler can poll for snapshots: a loaded plugin instance (or, in
/// tests of the scheduler itself, a scripted one).
pub trait Source: Send + Sync + 'static {
    /// Collects a snapshot of `types` (empty: every type). Dropping the future cancels it.
    fn snapshot(&self, types: Vec<String>) -> BoxFuture<Result<FfiSnapshot, CallError>>;
    /// Calls still running inside the source, abandoned ones included.
    fn calls_in_flight(&self) -> u32;
}

/// Re-emits a plugin's log events in the host's log with the instance's name.
/// Its messages and fields are scrubbed of the secrets of the instance's table
/// ([`crate::secrets::of_json`]), in case a plugin logs a URL or a value it was given.
struct HostLog {
    instance: Arc<str>,
    max: LogLevel,
    secrets: Arc<Secrets>,
}

impl HostContext for HostLog {
    fn log(&self, r: LogRecord<'_>) {
        let instance = &*self.instance;
        let target = r.target.as_str();
        let (message, fields) = if self.secrets.is_empty() {
            (
                std::borrow::Cow::Borrowed(r.message.as_str()),
                std::borrow::Cow::Borrowed(r.fields.as_str()),
            )
        } else {
            (
                std::borrow::Cow::Owned(self.secrets.scrub(r.message.as_str())),
                std::borrow::Cow::Owned(self.secrets.scrub(r.fields.as_str())),
            )
        };
        let (message, fields) = (message.as_ref(), fields.as_ref());
        match r.level {
            LogLevel::Error => {
                tracing::error!(target: "plugin", instance, plugin_target = target, fields, "{message}")
            }
            LogLevel::Warn => {
                tracing::warn!(target: "plugin", instance, plugin_target = target, fields, "{message}")
            }
            LogLevel::Info => {
                tracing::info!(target: "plugin", instance, plugin_target = target, fields, "{message}")
            }
            LogLevel::Debug => {
                tracing::debug!(target: "plugin", instance, plugin_target = target, fields, "{message}")
            }
            LogLevel::Trace => {
                tracing::trace!(target: "plugin", instance, plugin_target = target, fields, "{message}")
            }
            LogLevel::Off => {}
        }
    }

    fn max_level(&self) -> LogLevel {
        self.max
    }
}

/// Converts a `tracing` level filter to the boundary's level.
pub fn log_level(filter: tracing::level_filters::LevelFilter) -> LogLevel {
    use tracing::level_filters::LevelFilter as F;
    match filter {
        F::OFF => LogLevel::Off,
        F::ERROR => LogLevel::Error,
        F::WARN => LogLevel::Warn,
        F::INFO => LogLevel::Info,
        F::DEBUG => LogLevel::Debug,
        _ => LogLevel::Trace,
    }
}

/// Where a bus plugin's pushes go: straight into the hub. The future completes when the
/// hub has applied the batch, queued its changes to every subscriber, and every reliable
/// output confirmed them ([`accept_push`]).
struct HubSink {
    hub: Arc<Hub>,
    origin: Origin,
}

impl HostSink for HubSink {
    fn push(&self, batch: RVec<FfiPushed>) -> FfiFuture<RResult<(), FfiError>> {
        let hub = self.hub.clone();
        let origin = self.origin.clone();
        async move { accept_push(&hub, &origin, batch.into_vec()).await.into() }.into_ffi()
    }
}

/// Applies a pushed batch and waits until every reliable output confirmed its changes:
/// only then may the plugin acknowledge the messages upstream.
pub async fn accept_push(
    hub: &Arc<Hub>,
    origin: &Origin,
    batch: Vec<FfiPushed>,
) -> Result<(), FfiError> {
    let last_seq = apply_pushed(hub, origin, batch).await?;
    delivered(hub, last_seq).await
}

/// Applies a pushed batch on the hub's writer thread (the first half of
/// [`accept_push`]); returns the `seq` of its last change. Process isolation applies in
/// arrival order and waits elsewhere.
pub async fn apply_pushed(
    hub: &Arc<Hub>,
    origin: &Origin,
    batch: Vec<FfiPushed>,
) -> Result<Option<u64>, FfiError> {
    hub.submit_push(origin, batch)
        .await
        .map(|applied| applied.last_seq)
        .ok_or_else(|| FfiError {
            kind: ErrorKind::Failed,
            message: RString::from("the host failed to apply the batch"),
        })
}

/// Waits until every reliable output confirmed the changes up to `last_seq` (the second
/// half of [`accept_push`]).
pub async fn delivered(hub: &Hub, last_seq: Option<u64>) -> Result<(), FfiError> {
    match last_seq {
        Some(seq) => hub.deliveries().delivered(seq).await.map_err(|e| FfiError {
            kind: ErrorKind::Failed,
            message: RString::from(e.to_string()),
        }),
        None => Ok(()),
    }
}

/// A created plugin instance.
pub struct PluginInstance {
    /// The instance's name.
    pub name: Arc<str>,
    inner: PluginInstanceBox,
    /// The secrets of its table: scrubbed from every error it returns and log it writes.
    secrets: Arc<Secrets>,
}

/// Why an instance could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The plugin refused its configuration or failed to start.
    #[error("instance `{instance}` ({}): {error}", .path.display())]
    Plugin {
        /// The instance.
        instance: String,
        /// The library.
        path: std::path::PathBuf,
        /// The plugin's error.
        error: CallError,
    },
    /// The constructor did not return in time.
    #[error("instance `{instance}`: the plugin's constructor did not return within {timeout:?}")]
    Timeout {
        /// The instance.
        instance: String,
        /// The limit.
        timeout: Duration,
    },
}

impl PluginInstance {
    /// Creates an instance of `library`. The constructor runs on a blocking thread and is
    /// abandoned after `timeout`.
    pub async fn create(
        library: &PluginLibrary,
        name: &str,
        config: &serde_json::Value,
        max_level: LogLevel,
        timeout: Duration,
    ) -> Result<PluginInstance, CreateError> {
        let module = library.module;
        let instance: Arc<str> = Arc::from(name);
        let config_json = config.to_string();
        let secrets = Arc::new(crate::secrets::of_json(config));
        let ctx = HostContext_TO::from_value(
            HostLog {
                instance: instance.clone(),
                max: max_level,
                secrets: secrets.clone(),
            },
            TD_Opaque,
        );
        let inst = instance.clone();
        let call = tokio::task::spawn_blocking(move || {
            let create = module.create();
            create(RStr::from_str(&inst), RStr::from_str(&config_json), ctx)
        });
        let result = match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                return Err(CreateError::Timeout {
                    instance: name.to_owned(),
                    timeout,
                });
            }
            Ok(Err(join)) => RResult::RErr(FfiError {
                kind: ErrorKind::Panicked,
                message: RString::from(format!("constructor failed: {join}")),
            }),
            Ok(Ok(r)) => r,
        };
        match result {
            RResult::ROk(inner) => Ok(PluginInstance {
                name: instance,
                inner,
                secrets,
            }),
            RResult::RErr(e) => Err(CreateError::Plugin {
                instance: name.to_owned(),
                path: library.path.clone(),
                error: scrubbed(&secrets, e.into()),
            }),
        }
    }

    /// Checks an instance's configuration as its creation would (the plugin parses it
    /// and runs its own validation), without creating anything. A plugin built against
    /// plugin-api 0.1.0 has no `check_config`: its `validate_config` answers, and the
    /// field is read back from its message.
    pub fn check_config(
        library: &PluginLibrary,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<(), ConfigProblem> {
        let module = library.module;
        let json = config.to_string();
        let (name_s, json_s) = (RStr::from_str(name), RStr::from_str(&json));
        let answer = std::panic::catch_unwind(|| match module.check_config() {
            Some(check) => match check(name_s, json_s) {
                RResult::ROk(()) => Ok(()),
                RResult::RErr(p) => Err(ConfigProblem {
                    field: Some(p.field.into_string()).filter(|f| !f.is_empty()),
                    message: p.message.into_string(),
                }),
            },
            None => match (module.validate_config())(name_s, json_s) {
                RResult::ROk(()) => Ok(()),
                RResult::RErr(e) => Err(ConfigProblem::from_message(name, &e.message)),
            },
        });
        answer.unwrap_or_else(|_| {
            Err(ConfigProblem {
                field: None,
                message: "the plugin panicked while checking its configuration".into(),
            })
        })
    }

    /// Runs the push loop, handing changes to `hub` as `origin`.
    pub fn run(&self, hub: Arc<Hub>, origin: Origin) -> BoxFuture<Result<(), CallError>> {
        // The plugin polls the sink's futures on its own runtime.
        hub.remember_runtime();
        let sink = HostSink_TO::from_value(HubSink { hub, origin }, TD_Opaque);
        self.run_with_sink(sink)
    }

    /// Runs the push loop with another sink (a plugin child process forwards the
    /// batches to its host: see [`crate::isolation`]).
    pub fn run_with_sink(
        &self,
        sink: synchronizer_plugin_api::abi::HostSinkBox,
    ) -> BoxFuture<Result<(), CallError>> {
        let fut = self.inner.run(sink);
        let secrets = self.secrets.clone();
        Box::pin(async move { guard_ffi(fut).await.map_err(|e| scrubbed(&secrets, e)) })
    }

    /// Asks the push loop to stop.
    pub fn request_stop(&self) {
        self.inner.request_stop();
    }

    /// The plugin's own health report.
    pub fn health(&self) -> impl Future<Output = Result<Health, CallError>> + Send + 'static {
        let call = self.inner.health();
        let secrets = self.secrets.clone();
        async move {
            match guard_ffi(call).await {
                Ok(h) => {
                    let mut h = Health::from(h);
                    h.message = secrets.scrub(&h.message);
                    Ok(h)
                }
                Err(e) => Err(scrubbed(&secrets, e)),
            }
        }
    }

    /// The plugin's own counters.
    pub fn counters(&self) -> Vec<(String, u64)> {
        self.inner
            .counters()
            .into_iter()
            .map(|c| (c.name.into(), c.value))
            .collect()
    }

    /// Stops the plugin's runtime (waiting at most `timeout` for its tasks). Blocks.
    pub fn shutdown_runtime(&self, timeout: Duration) {
        self.inner
            .shutdown(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
    }
}

/// `error` with `secrets` scrubbed from its message.
fn scrubbed(secrets: &Secrets, mut error: CallError) -> CallError {
    if !secrets.is_empty() {
        error.message = secrets.scrub(&error.message);
    }
    error
}

/// Awaits a plugin future, turning a panic while polling it into an error.
async fn guard_ffi<T>(fut: FfiFuture<RResult<T, FfiError>>) -> Result<T, CallError> {
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(RResult::ROk(v)) => Ok(v),
        Ok(RResult::RErr(e)) => Err(e.into()),
        Err(_) => Err(CallError {
            kind: ErrorKind::Panicked,
            message: "the plugin's future panicked while being polled".into(),
        }),
    }
}

impl Source for PluginInstance {
    fn snapshot(&self, types: Vec<String>) -> BoxFuture<Result<FfiSnapshot, CallError>> {
        let types: RVec<RString> = types.into_iter().map(RString::from).collect();
        let call = self.inner.snapshot(types);
        let secrets = self.secrets.clone();
        Box::pin(async move { guard_ffi(call).await.map_err(|e| scrubbed(&secrets, e)) })
    }

    fn calls_in_flight(&self) -> u32 {
        self.inner.calls_in_flight()
    }
}
