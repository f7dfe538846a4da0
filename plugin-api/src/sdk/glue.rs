//! The generated side of the boundary: the root module's entry points and the
//! `PluginInstance` implementation wrapped around an author's [`Plugin`].
//!
//! Every entry point catches panics and returns them as [`ErrorKind::Panicked`]; every
//! async call runs as a task on the instance's runtime behind an abort-on-drop handle, so
//! that the host dropping the future really stops the work; a counter of calls in flight
//! lets the host tell a cancelled call from one stuck in blocking code.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString, RVec};
use async_ffi::{FfiFuture, FutureExt};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::logging;
use super::{Context, Error, Plugin, Shutdown, Sink};
use crate::abi::{
    ErrorKind, FfiConfigProblem, FfiCounter, FfiError, FfiHealth, FfiPluginInfoRef, FfiSnapshot,
    HostContextBox, HostSinkBox, PluginInstance, PluginInstance_TO, PluginInstanceBox, PluginMod,
    PluginModRef,
};

/// Builds the root module for plugin type `P`. Called once, by the loader, through the
/// static that [`crate::export_plugin!`] generates.
pub fn root_module<P: Plugin>() -> PluginModRef {
    logging::install_panic_hook();
    PluginMod {
        info: info::<P>,
        validate_config: validate_config::<P>,
        create: create::<P>,
        check_config: check_config::<P>,
    }
    .leak_into_prefix()
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, Error>) -> RResult<T, FfiError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(e.into_ffi()),
        Err(payload) => RResult::RErr(
            Error::with_kind(
                ErrorKind::Panicked,
                format!("plugin panicked in {what}: {}", panic_message(&*payload)),
            )
            .into_ffi(),
        ),
    }
}

extern "C" fn info<P: Plugin>() -> RResult<FfiPluginInfoRef, FfiError> {
    guarded("info", || Ok(P::info().to_ffi(P::sample_config())))
}

/// Parses an instance's configuration. The error names the field and says what serde
/// said, without serde_json's "at line 1 column 57": that position is in JSON the host
/// generated from the user's TOML, and the host points at the TOML instead.
fn parse_config<P: Plugin>(config_json: &str) -> Result<P::Config, Error> {
    let mut de = serde_json::Deserializer::from_str(config_json);
    serde_path_to_error::deserialize::<_, P::Config>(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut message = inner.to_string();
        let position = format!(" at line {} column {}", inner.line(), inner.column());
        if let Some(stripped) = message.strip_suffix(&position) {
            message.truncate(stripped.len());
        }
        if path == "." {
            Error::config(format!("invalid config: {message}"))
        } else {
            Error::config_field(path, message)
        }
    })
}

/// Parses and validates, as `create` does before constructing.
fn checked_config<P: Plugin>(instance: &str, config_json: &str) -> Result<P::Config, Error> {
    let config = parse_config::<P>(config_json)?;
    let context = Context {
        instance: instance.to_owned(),
    };
    P::validate(&config, &context)?;
    Ok(config)
}

/// The 0.1.0 entry point, for a host that has no `check_config`: one message, the field
/// named in it (the host names the instance).
extern "C" fn validate_config<P: Plugin>(
    instance: RStr<'_>,
    config_json: RStr<'_>,
) -> RResult<(), FfiError> {
    guarded("validate_config", || {
        checked_config::<P>(instance.as_str(), config_json.as_str()).map(drop)
    })
}

extern "C" fn check_config<P: Plugin>(
    instance: RStr<'_>,
    config_json: RStr<'_>,
) -> RResult<(), FfiConfigProblem> {
    let checked = catch_unwind(AssertUnwindSafe(|| {
        checked_config::<P>(instance.as_str(), config_json.as_str()).map(drop)
    }));
    let (field, message) = match checked {
        Ok(Ok(())) => return RResult::ROk(()),
        Ok(Err(e)) => (
            e.field().unwrap_or_default().to_owned(),
            e.message().to_owned(),
        ),
        Err(payload) => (
            String::new(),
            format!(
                "plugin panicked in check_config: {}",
                panic_message(&*payload)
            ),
        ),
    };
    RResult::RErr(FfiConfigProblem {
        field: field.into(),
        message: message.into(),
    })
}

extern "C" fn create<P: Plugin>(
    instance: RStr<'_>,
    config_json: RStr<'_>,
    ctx: HostContextBox,
) -> RResult<PluginInstanceBox, FfiError> {
    let instance = instance.as_str().to_owned();
    let config_json = config_json.as_str();
    guarded("create", move || {
        let config = checked_config::<P>(&instance, config_json)?;
        let dispatch = logging::dispatch_for(Arc::new(ctx));
        let thread_dispatch = dispatch.clone();
        let short: String = instance.chars().take(10).collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(P::RUNTIME_WORKERS.max(1))
            .max_blocking_threads(4)
            .thread_name(format!("plg-{short}"))
            .on_thread_start(move || logging::set_thread_dispatch(&thread_dispatch))
            .enable_all()
            .build()
            .map_err(|e| {
                Error::failed(format!("instance `{instance}`: cannot start runtime: {e}"))
            })?;
        let context = Context {
            instance: instance.clone(),
        };
        let plugin = {
            let _enter = runtime.enter();
            tracing::dispatcher::with_default(&dispatch, || P::new(config, &context))?
        };
        let handle = runtime.handle().clone();
        let inst = Instance {
            plugin: Arc::new(plugin),
            handle,
            runtime: Mutex::new(Some(runtime)),
            in_flight: Arc::new(AtomicU32::new(0)),
            stop: CancellationToken::new(),
        };
        Ok(PluginInstance_TO::from_value(inst, TD_Opaque))
    })
}

/// Counts a call in flight from creation until the task's future is dropped.
struct InFlight(Arc<AtomicU32>);

impl InFlight {
    fn new(counter: &Arc<AtomicU32>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Instance<P> {
    plugin: Arc<P>,
    handle: tokio::runtime::Handle,
    runtime: Mutex<Option<Runtime>>,
    in_flight: Arc<AtomicU32>,
    stop: CancellationToken,
}

impl<P: Plugin> Instance<P> {
    /// Runs `fut` as a task on the instance's runtime; dropping the returned future aborts
    /// the task. A panic in the task comes back as an error.
    /// Snapshot calls are counted in `in_flight` (so the host can tell a stuck one);
    /// the long-running push loop and health reports are not.
    fn spawn_call<T, F>(&self, what: &'static str, fut: F) -> FfiFuture<RResult<T, FfiError>>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, Error>> + Send + 'static,
    {
        let guard = (what == "snapshot").then(|| InFlight::new(&self.in_flight));
        let task = self.handle.spawn(async move {
            let _guard = guard;
            fut.await
        });
        let task = AbortOnDropHandle::new(task);
        async move {
            match task.await {
                Ok(Ok(v)) => RResult::ROk(v),
                Ok(Err(e)) => RResult::RErr(e.into_ffi()),
                Err(e) if e.is_panic() => {
                    let msg = panic_message(&*e.into_panic());
                    RResult::RErr(
                        Error::with_kind(
                            ErrorKind::Panicked,
                            format!("plugin panicked in {what}: {msg}"),
                        )
                        .into_ffi(),
                    )
                }
                Err(_) => RResult::RErr(
                    Error::with_kind(ErrorKind::Cancelled, format!("{what} was cancelled"))
                        .into_ffi(),
                ),
            }
        }
        .into_ffi()
    }

    fn refuse<T: 'static>(
        what: &str,
        payload: Box<dyn Any + Send>,
    ) -> FfiFuture<RResult<T, FfiError>> {
        let err = Error::with_kind(
            ErrorKind::Panicked,
            format!("plugin panicked in {what}: {}", panic_message(&*payload)),
        )
        .into_ffi();
        async move { RResult::RErr(err) }.into_ffi()
    }
}

impl<P: Plugin> PluginInstance for Instance<P> {
    fn snapshot(&self, types: RVec<RString>) -> FfiFuture<RResult<FfiSnapshot, FfiError>> {
        let plugin = self.plugin.clone();
        let types: Vec<String> = types.into_iter().map(String::from).collect();
        match catch_unwind(AssertUnwindSafe(|| {
            self.spawn_call("snapshot", async move {
                plugin.snapshot(&types).await.map(|s| s.into_ffi())
            })
        })) {
            Ok(f) => f,
            Err(p) => Self::refuse("snapshot", p),
        }
    }

    fn run(&self, sink: HostSinkBox) -> FfiFuture<RResult<(), FfiError>> {
        let plugin = self.plugin.clone();
        let shutdown = Shutdown::new(self.stop.child_token());
        let sink = Sink::new(sink);
        match catch_unwind(AssertUnwindSafe(|| {
            self.spawn_call("run", async move { plugin.run(sink, shutdown).await })
        })) {
            Ok(f) => f,
            Err(p) => Self::refuse("run", p),
        }
    }

    fn request_stop(&self) {
        self.stop.cancel();
    }

    fn health(&self) -> FfiFuture<RResult<FfiHealth, FfiError>> {
        let plugin = self.plugin.clone();
        match catch_unwind(AssertUnwindSafe(|| {
            self.spawn_call("health", async move { Ok(plugin.health().await.into()) })
        })) {
            Ok(f) => f,
            Err(p) => Self::refuse("health", p),
        }
    }

    fn calls_in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn counters(&self) -> RVec<FfiCounter> {
        catch_unwind(AssertUnwindSafe(|| {
            self.plugin
                .counters()
                .into_iter()
                .map(|(name, value)| FfiCounter {
                    name: name.into(),
                    value,
                })
                .collect()
        }))
        .unwrap_or_default()
    }

    fn shutdown(&self, timeout_ms: u64) {
        self.stop.cancel();
        let runtime = match self.runtime.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(runtime) = runtime {
            // Never a plain drop: a thread stuck in blocking code would hang it forever.
            let _ = catch_unwind(AssertUnwindSafe(move || {
                runtime.shutdown_timeout(Duration::from_millis(timeout_ms))
            }));
        }
    }
}

impl<P> Drop for Instance<P> {
    fn drop(&mut self) {
        let runtime = match self.runtime.get_mut() {
            Ok(slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }
}
