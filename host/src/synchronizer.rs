//! The synchronizer itself: loads the configured plugins, runs their instances, and
//! answers consumers. This is what an embedding program uses; the binary is a thin
//! shell over it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use synchronizer_plugin_api::abi::LogLevel;
use synchronizer_plugin_api::{Entity, Health};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "amqp")]
use crate::amqp::AmqpOutput;
use crate::backoff::Backoff;
use crate::config::{Config, InstanceConfig, OnPluginError, Schedule};
use crate::hub::{Hub, Origin, TypeFilter};
use crate::instance::{CreateError, PluginInstance, log_level};
use crate::isolation::{
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT, Instance, Isolation, ProcessError,
    ProcessInstance, ProcessOptions,
};
use crate::loader::{LoadError, PluginLibrary, PluginMeta, load};
use crate::metrics::Metrics;
use crate::scheduler::{CollectError, Collector, Incomplete};
use crate::status::{InstanceStatus, StatusCell};
use crate::subscription::{
    CallbackSubscription, DRAIN_GRACE, Drain, SubscribeOptions, Subscription,
};

/// Why the synchronizer did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Plugins failed to load or start and `on_plugin_error = "fail"`.
    #[error("{} plugin instance(s) failed to start:\n  {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  "))]
    Plugins(Vec<InstanceFailure>),
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// The durable baseline store cannot be used.
    #[cfg(feature = "persist")]
    #[error(transparent)]
    Store(#[from] crate::persist::StoreError),
}

/// One instance that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum InstanceFailure {
    /// Its library did not load.
    #[error("instance `{instance}`: {error}")]
    Load {
        /// The instance.
        instance: String,
        /// Why.
        error: LoadError,
    },
    /// The instance could not be created.
    #[error("{0}")]
    Create(#[from] CreateError),
    /// Process mode: the child could not be started or could not create the instance.
    #[error("{0}")]
    Process(#[from] ProcessError),
}

impl InstanceFailure {
    /// The same failure with every one of `secrets` (the instance's table's, see
    /// [`crate::secrets::of_json`]) replaced by `***` in what the plugin said.
    pub fn scrubbed(self, secrets: &synchronizer_plugin_api::redact::Secrets) -> Self {
        if secrets.is_empty() {
            return self;
        }
        match self {
            InstanceFailure::Create(CreateError::Plugin {
                instance,
                path,
                mut error,
            }) => {
                error.message = secrets.scrub(&error.message);
                InstanceFailure::Create(CreateError::Plugin {
                    instance,
                    path,
                    error,
                })
            }
            InstanceFailure::Process(e) => InstanceFailure::Process(e.scrubbed(secrets)),
            other => other,
        }
    }
}

/// What `get_all` could not do.
#[derive(Debug, thiserror::Error)]
pub enum GetAllError {
    /// No running collector provides these types.
    #[error("no running collector provides {0:?}")]
    NoCollector(Vec<String>),
    /// A collection failed; the other instances' entities are not returned either,
    /// because the answer would be silently partial.
    #[error(transparent)]
    Collect(#[from] CollectError),
}

/// One instance as the host runs it.
pub struct InstanceHandle {
    /// The instance's name.
    pub name: String,
    /// The library's file.
    pub library: PathBuf,
    /// What the plugin says about itself.
    pub meta: PluginMeta,
    /// The types this instance collects (empty: open-ended).
    pub types: Vec<String>,
    plugin: Arc<dyn Instance>,
    status: Arc<StatusCell>,
    collector: Option<Arc<Collector>>,
    /// Whether readiness waits for it (`readiness` in its configuration).
    gates_readiness: bool,
}

/// A report on one instance.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InstanceReport {
    /// The instance's name.
    pub name: String,
    /// The plugin's name.
    pub plugin: String,
    /// The plugin's version.
    pub version: String,
    /// The library.
    pub library: PathBuf,
    /// collector, bus or both.
    pub kind: &'static str,
    /// The types it collects.
    pub types: Vec<String>,
    /// Its status.
    pub status: InstanceStatus,
}

/// One instance's plugin's own report on its health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginHealth {
    /// The instance's name.
    pub instance: String,
    /// Its report (unhealthy when it did not answer in time or is stuck).
    pub health: Health,
}

/// A running synchronizer.
pub struct Synchronizer {
    hub: Arc<Hub>,
    instances: Vec<InstanceHandle>,
    failures: Vec<InstanceFailure>,
    shutdown: CancellationToken,
    tasks: tokio::sync::Mutex<JoinSet<()>>,
    store_writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    outputs: tokio::sync::Mutex<Outputs>,
    bus_stop_timeout: Duration,
    /// Ends every subscription after shutdown's drain.
    drain: Drain,
}

/// An instance created, not yet scheduled.
struct Started {
    name: String,
    library: PathBuf,
    meta: PluginMeta,
    plugin: Arc<dyn Instance>,
    schedule: Schedule,
    types: Vec<String>,
    status: Arc<StatusCell>,
    gates_readiness: bool,
}

fn origin(owner: usize, name: &str) -> Origin {
    Origin {
        owner: u16::try_from(owner).unwrap_or(u16::MAX),
        instance: Arc::from(name),
    }
}

impl Synchronizer {
    /// Loads every enabled instance's plugin, creates the instances, and starts their
    /// schedules and push loops. With `on_plugin_error = "skip"` the instances that fail
    /// are reported by [`Synchronizer::failures`] and the rest run.
    pub async fn start(config: Config) -> Result<Synchronizer, StartError> {
        Self::start_inner(config, None).await.map(|(sync, _)| sync)
    }

    /// Like [`Synchronizer::start`], with a subscription made before any instance runs,
    /// so that it sees every change from the very first snapshots (what `synchronizer
    /// run` prints).
    pub async fn start_subscribed(
        config: Config,
        options: &SubscribeOptions,
    ) -> Result<(Synchronizer, Subscription), StartError> {
        let (sync, sub) = Self::start_inner(config, Some(options)).await?;
        match sub {
            Some(sub) => Ok((sync, sub)),
            None => Err(StartError::Config("no subscription was made".into())),
        }
    }

    /// Starting, in its steps: create the instances (nothing runs yet), restore the
    /// durable baseline, start the outputs, announce what a crash left in doubt, then
    /// spawn the schedules and push loops. A change can first happen in the last step,
    /// when every subscriber, output and the store are in place.
    async fn start_inner(
        config: Config,
        early: Option<&SubscribeOptions>,
    ) -> Result<(Synchronizer, Option<Subscription>), StartError> {
        let hub = Arc::new(Hub::new(config.tombstone_ttl));
        let stop_timeout = config.stop_timeout();
        let drain = Drain::default();
        let early = early.map(|options| drain.attach(Subscription::for_hub(&hub, options)));
        for output in &config.outputs.amqp {
            hub.metrics().prepare_output(&output.name);
        }
        let (instances, failures) = create_instances(&config, hub.metrics()).await?;
        if !failures.is_empty() && config.on_plugin_error == OnPluginError::Fail {
            shutdown_all(&instances).await;
            return Err(StartError::Plugins(failures));
        }
        let restored = match &config.baseline_file {
            Some(path) => match restore(path, &config, &hub, &instances).await {
                Ok(r) => Some(r),
                Err(e) => {
                    shutdown_all(&instances).await;
                    return Err(e);
                }
            },
            None => None,
        };
        // The outputs, before anything runs: they must see every change, from the first
        // snapshot on. (Nothing has emitted a change yet: instances are created, not run.)
        let outputs = match start_outputs(&config, &hub).await {
            Ok(outputs) => outputs,
            Err(e) => {
                shutdown_all(&instances).await;
                return Err(e);
            }
        };
        // What a crash left in doubt goes out again, now that every subscriber and output
        // of this run exists, before any instance runs.
        let store_writer = match restored {
            Some((writer, mut restored)) => {
                if hub.announce_in_doubt(&mut restored) > 0
                    && !hub.flush(Duration::from_secs(30)).await
                {
                    tracing::warn!("the changes in doubt were not announced within 30 s");
                }
                Some(writer)
            }
            None => None,
        };
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let handles = spawn_instances(instances, &hub, &shutdown, &mut tasks);
        spawn_lag_recovery(&hub, &shutdown, &mut tasks);
        let sync = Synchronizer {
            hub,
            instances: handles,
            failures,
            shutdown,
            tasks: tokio::sync::Mutex::new(tasks),
            store_writer: std::sync::Mutex::new(store_writer),
            outputs: tokio::sync::Mutex::new(outputs),
            bus_stop_timeout: stop_timeout,
            drain,
        };
        Ok((sync, early))
    }

    /// The instances that failed to start (with `on_plugin_error = "skip"`).
    pub fn failures(&self) -> &[InstanceFailure] {
        &self.failures
    }

    /// The running instances.
    pub fn instances(&self) -> &[InstanceHandle] {
        &self.instances
    }

    /// Entities of the given types (empty: all), fresh from their collectors. Concurrent
    /// callers share one collection per instance. A type a plugin could report only in
    /// part is included as far as it came; [`Synchronizer::get_all_report`] says which.
    pub async fn get_all<S: AsRef<str>>(
        &self,
        types: &[S],
    ) -> Result<Vec<Arc<Entity>>, GetAllError> {
        self.get_all_report(types).await.map(|r| r.entities)
    }

    /// Like [`Synchronizer::get_all`], with the types that came back incomplete (a page
    /// that failed, a project that could not be listed): their entities may be missing.
    pub async fn get_all_report<S: AsRef<str>>(&self, types: &[S]) -> Result<GetAll, GetAllError> {
        self.get_all_report_since(types, None).await
    }

    /// Like [`Synchronizer::get_all_report`], and a collection that started at `since`
    /// or later serves too, even one that has finished. With the time before
    /// [`Synchronizer::start`], each instance is collected exactly once: its schedule's
    /// first collection serves the caller (what `synchronizer snapshot` does).
    pub async fn get_all_report_since<S: AsRef<str>>(
        &self,
        types: &[S],
        since: Option<std::time::Instant>,
    ) -> Result<GetAll, GetAllError> {
        let filter = TypeFilter::new(types);
        let wanted: Vec<&Arc<Collector>> = self
            .instances
            .iter()
            .filter_map(|i| i.collector.as_ref())
            .filter(|c| {
                c.types().is_empty()
                    || types.is_empty()
                    || c.types().iter().any(|t| filter.matches(t))
            })
            .collect();
        // Types no collector covers (push-only types) come from the current view, which
        // is their state.
        let open_ended = wanted.iter().any(|c| c.types().is_empty());
        let pushed: Vec<Arc<Entity>> = if open_ended {
            Vec::new()
        } else {
            self.hub
                .entities(&filter)
                .into_iter()
                .filter(|e| {
                    !wanted
                        .iter()
                        .any(|c| c.types().iter().any(|t| t == e.entity_type()))
                })
                .collect()
        };
        if wanted.is_empty() && pushed.is_empty() {
            return Err(GetAllError::NoCollector(
                types.iter().map(|t| t.as_ref().to_owned()).collect(),
            ));
        }
        let results =
            futures::future::join_all(wanted.iter().map(|c| c.collect_since(since))).await;
        let mut out = GetAll {
            entities: pushed,
            ..GetAll::default()
        };
        for r in results {
            let collected = r?;
            out.entities.extend(
                collected
                    .entities
                    .iter()
                    .filter(|e| filter.matches(e.entity_type()))
                    .cloned(),
            );
            out.incomplete.extend(
                collected
                    .incomplete
                    .iter()
                    .filter(|i| filter.matches(&i.entity_type))
                    .cloned(),
            );
        }
        Ok(out)
    }

    /// The current view of the given types (what the baseline knows), without polling.
    pub fn current<S: AsRef<str>>(&self, types: &[S]) -> Vec<Arc<Entity>> {
        self.hub.entities(&TypeFilter::new(types))
    }

    /// Subscribes to changes as a stream. It ends after [`Synchronizer::shutdown`]'s
    /// drain, once it has yielded every change accepted before.
    pub fn subscribe(&self, options: &SubscribeOptions) -> Subscription {
        self.drain.attach(Subscription::for_hub(&self.hub, options))
    }

    /// Subscribes with a callback, called on a thread of its own.
    pub fn subscribe_callback<F>(
        &self,
        options: &SubscribeOptions,
        callback: F,
    ) -> std::io::Result<CallbackSubscription>
    where
        F: FnMut(crate::change::Event) + Send + 'static,
    {
        CallbackSubscription::from_subscription(self.subscribe(options), callback)
    }

    /// Reports on every running instance.
    pub fn status(&self) -> Vec<InstanceReport> {
        self.instances
            .iter()
            .map(|i| InstanceReport {
                name: i.name.clone(),
                plugin: i.meta.name.clone(),
                version: i.meta.version.clone(),
                library: i.library.clone(),
                kind: i.meta.kind.as_str(),
                types: i.types.clone(),
                status: {
                    let mut s = i.status.get();
                    s.pid = i.plugin.pid();
                    s
                },
            })
            .collect()
    }

    /// Asks every instance's plugin for its own health report (at most `timeout` each,
    /// all at once). An instance that does not answer in time is reported unhealthy.
    pub async fn plugin_health(&self, timeout: Duration) -> Vec<PluginHealth> {
        let asks = self.instances.iter().map(|i| async move {
            PluginHealth {
                instance: i.name.clone(),
                health: ask_health(i.plugin.as_ref(), &i.status, timeout).await,
            }
        });
        futures::future::join_all(asks).await
    }

    /// Every metric, in the OpenMetrics text format (see [`crate::metrics`]).
    pub fn metrics_text(&self) -> String {
        self.metrics_text_as(crate::metrics::Format::OpenMetrics)
    }

    /// Every metric, in `format`.
    pub fn metrics_text_as(&self, format: crate::metrics::Format) -> String {
        self.hub.refresh_gauges();
        let metrics = self.hub.metrics();
        for i in &self.instances {
            let healthy = i.status.get().health == crate::status::Health::Healthy;
            metrics
                .instance_healthy
                .get_or_create(&crate::metrics::InstanceLabels {
                    plugin_instance: i.name.clone(),
                })
                .set(i64::from(healthy));
            for (name, value) in i.plugin.counters() {
                metrics
                    .plugin_counters
                    .get_or_create(&crate::metrics::PluginCounterLabels {
                        plugin_instance: crate::metrics::label_value(&i.name),
                        name: crate::metrics::label_value(&name),
                    })
                    .set(value);
            }
        }
        metrics.encode_as(format)
    }

    /// Whether every collector has finished its first snapshot.
    pub fn ready(&self) -> bool {
        self.waiting_for().is_empty()
    }

    /// The instances readiness waits for: each collector until its first snapshot, each
    /// bus until its plugin first reports itself healthy (connected), except those
    /// configured with `readiness = false`.
    pub fn waiting_for(&self) -> Vec<&str> {
        self.instances
            .iter()
            .filter(|i| i.gates_readiness)
            .filter(|i| match &i.collector {
                Some(c) => !c.initial_done(),
                None => !i.status.get().reported_healthy,
            })
            .map(|i| i.name.as_str())
            .collect()
    }

    /// The hub, for outputs that need its counters.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Stops the host without losing a change, in this order:
    ///
    /// 1. Producers: schedules and push loops stop; bus plugins are asked to stop
    ///    consuming and to settle what they hold (hand it to the hub, acknowledge it
    ///    upstream; the rest is redelivered to the next run), within the configured `stop_timeout` ([`Config::stop_timeout`]);
    ///    then every plugin runtime stops.
    /// 2. The drain: every change accepted so far has been queued to every subscriber;
    ///    each subscription now yields what is queued for it (with its resync and
    ///    snapshot if it had fallen behind), then ends. Callbacks and SSE streams are
    ///    waited for, at most [`DRAIN_GRACE`].
    /// 3. Outputs publish what is left and close; the durable store writes the rest.
    ///
    /// The caller closes its own consumers after this (the binary: stdout, then the
    /// HTTP API). Calling it again does nothing more.
    pub async fn shutdown(&self) {
        let mut tasks = self.tasks.lock().await;
        for i in &self.instances {
            if i.meta.kind.pushes() {
                i.plugin.request_stop();
            }
        }
        self.shutdown.cancel();
        let deadline = tokio::time::sleep(self.bus_stop_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    tracing::warn!("tasks did not stop in time; abandoning them");
                    tasks.abort_all();
                    break;
                }
                next = tasks.join_next() => if next.is_none() { break },
            }
        }
        for i in &self.instances {
            i.status.stopped();
        }
        // Every instance at once: each may take up to a second (and a child a second more).
        futures::future::join_all(
            self.instances
                .iter()
                .map(|i| i.plugin.clone().shutdown(Duration::from_secs(1))),
        )
        .await;
        // Nothing produces changes any more. Every change decided so far is announced
        // (queued to every subscriber) once the store has committed it: then the
        // subscriptions may end as soon as they have yielded what is queued.
        if !self.drain.ended() {
            if !self.hub.flush(DRAIN_GRACE).await {
                tracing::warn!(
                    decided = self.hub.last_seq(),
                    announced = self.hub.announced_seq(),
                    "changes decided but not announced yet; ending the subscriptions anyway"
                );
            }
            self.drain.end();
            if !self.drain.wait_consumers(DRAIN_GRACE).await {
                tracing::warn!(
                    grace = ?DRAIN_GRACE,
                    "callbacks or change streams still had changes to take; closing them"
                );
            }
        }
        // Outputs publish what is left.
        finish_outputs(std::mem::take(&mut *self.outputs.lock().await)).await;
        // Last: every change decided so far reaches the durable store.
        self.hub.stop_persisting();
        let writer = self.store_writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        tracing::info!("synchronizer stopped");
    }
}

/// How often each instance's plugin is asked for its own health ([`watch_health`]).
const HEALTH_POLL: Duration = Duration::from_secs(5);
/// How often, until its first healthy report (a bus that has not connected yet, whose
/// readiness waits for it).
const HEALTH_POLL_STARTING: Duration = Duration::from_millis(250);
/// How long a plugin gets to answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after its start an unhealthy report is only kept in the status, not logged
/// as a warning (a bus connecting to its broker).
const HEALTH_GRACE: Duration = Duration::from_secs(5);

/// Asks `plugin` for its own health and records the answer in `status`. A stuck
/// instance is not asked (its call would queue behind the stuck one).
async fn ask_health(plugin: &dyn Instance, status: &StatusCell, timeout: Duration) -> Health {
    let health = if status.get().health == crate::status::Health::Stuck {
        Health::unhealthy("stuck: not asked while a call is stuck")
    } else {
        match tokio::time::timeout(timeout, plugin.health()).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => Health::unhealthy(e.message),
            Err(_) => Health::unhealthy(format!("no health report within {timeout:?}")),
        }
    };
    status.plugin_reported(health.clone());
    health
}

/// Keeps an instance's status current with its plugin's own health report, so that a
/// bus that cannot reach its broker shows as `degraded` (status, `synchronizer plugins`,
/// `synchronizer_instance_healthy`) and readiness can wait for its first connection.
/// Logs each change between healthy and not.
async fn watch_health(
    name: String,
    plugin: Arc<dyn Instance>,
    status: Arc<StatusCell>,
    stop: CancellationToken,
) {
    let started = tokio::time::Instant::now();
    // What the log last said: nothing yet, healthy, or unhealthy.
    let mut said: Option<bool> = None;
    loop {
        let health = ask_health(plugin.as_ref(), &status, HEALTH_TIMEOUT).await;
        if health.healthy {
            if said == Some(false) {
                tracing::info!(instance = %name, "plugin reports itself healthy again");
            }
            said = Some(true);
        } else if said != Some(false) {
            // A plugin that is still starting (a bus before its first connection)
            // is not worth a warning yet: only once it stays unhealthy past
            // HEALTH_GRACE, or when it was healthy before.
            if said == Some(true) || started.elapsed() >= HEALTH_GRACE {
                tracing::warn!(instance = %name, reason = %health.message, "plugin reports itself unhealthy");
                said = Some(false);
            }
        }
        let pause = if status.get().reported_healthy {
            HEALTH_POLL
        } else {
            HEALTH_POLL_STARTING
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Step 1: loads the libraries and creates every enabled instance (in the host's
/// process or in a child). Nothing runs yet. The instances that failed are returned
/// beside the others.
async fn create_instances(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<(Vec<Started>, Vec<InstanceFailure>), StartError> {
    let level = log_level(config.plugin_log_level.0);
    let mut libraries: HashMap<PathBuf, PluginLibrary> = HashMap::new();
    let mut instances = Vec::new();
    let mut failures = Vec::new();
    for inst in config.instances.iter().filter(|i| i.enabled) {
        let schedule = config.schedule(inst);
        let status = Arc::new(StatusCell::default());
        let created = if inst.isolation == Isolation::Process {
            start_child(config, inst, schedule, level, &status, metrics).await?
        } else {
            create_in_process(config, inst, schedule, level, &mut libraries).await
        };
        match created {
            Ok((plugin, library, meta)) => {
                let types = active_types(&meta.entity_types, &config.types);
                metrics.prepare_instance(
                    &inst.name,
                    meta.kind != synchronizer_plugin_api::PluginKind::Bus,
                    inst.isolation == Isolation::Process,
                );
                instances.push(Started {
                    gates_readiness: inst.readiness,
                    name: inst.name.clone(),
                    library,
                    meta,
                    plugin,
                    schedule,
                    types,
                    status,
                });
            }
            Err(failure) => {
                let failure = failure.scrubbed(&crate::secrets::of_json(&inst.config));
                tracing::error!(error = %failure, "plugin instance did not start");
                failures.push(failure);
            }
        }
    }
    Ok((instances, failures))
}

/// What creating one instance gives: the instance, its library and its metadata.
type Created = (Arc<dyn Instance>, PathBuf, PluginMeta);

/// Loads `inst`'s library (once per file) and creates the instance in the host's process.
async fn create_in_process(
    config: &Config,
    inst: &InstanceConfig,
    schedule: Schedule,
    level: LogLevel,
    libraries: &mut HashMap<PathBuf, PluginLibrary>,
) -> Result<Created, InstanceFailure> {
    let path = config.library_path(inst);
    let library = match libraries.get(&path) {
        Some(lib) => lib.clone(),
        None => {
            let lib = load(&path).map_err(|error| InstanceFailure::Load {
                instance: inst.name.clone(),
                error,
            })?;
            libraries.insert(path, lib.clone());
            lib
        }
    };
    let plugin =
        PluginInstance::create(&library, &inst.name, &inst.config, level, schedule.timeout).await?;
    Ok((Arc::new(plugin), library.path, library.meta))
}

/// Starts `inst`'s child, which loads the library and creates the instance: the
/// plugin's code runs only there, the host does not load it.
async fn start_child(
    config: &Config,
    inst: &InstanceConfig,
    schedule: Schedule,
    level: LogLevel,
    status: &Arc<StatusCell>,
    metrics: &Arc<Metrics>,
) -> Result<Result<Created, InstanceFailure>, StartError> {
    let path = config.library_path(inst);
    let program = match &inst.child_program {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| {
            StartError::Config(format!(
                "instance `{}`: cannot find the running executable to start its plugin child: {e}",
                inst.name
            ))
        })?,
    };
    let options = ProcessOptions {
        program,
        library: path.clone(),
        config: inst.config.clone(),
        max_level: level,
        create_timeout: schedule.timeout,
        heartbeat_interval: inst
            .heartbeat_interval
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL),
        heartbeat_timeout: inst.heartbeat_timeout.unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT),
        memory_limit: inst.memory_limit.map(|m| m.0),
        snapshot_limit: inst
            .snapshot_limit
            .map_or(crate::isolation::process::DEFAULT_SNAPSHOT_LIMIT, |m| m.0),
        max_entities: schedule.max_entities,
        backoff_initial: schedule.backoff_initial,
        backoff_max: schedule.backoff_max,
    };
    Ok(
        ProcessInstance::start(&inst.name, options, status.clone(), metrics.clone())
            .await
            .map(|(plugin, meta)| (Arc::new(plugin) as Arc<dyn Instance>, path, meta))
            .map_err(InstanceFailure::from),
    )
}

/// Stops instances that were created but will not run.
async fn shutdown_all(instances: &[Started]) {
    futures::future::join_all(
        instances
            .iter()
            .map(|i| i.plugin.clone().shutdown(Duration::from_secs(1))),
    )
    .await;
}

/// Step 2, in a build without the `persist` feature: a durable baseline is refused.
#[cfg(not(feature = "persist"))]
async fn restore(
    _path: &std::path::Path,
    _config: &Config,
    _hub: &Arc<Hub>,
    _instances: &[Started],
) -> Result<(std::thread::JoinHandle<()>, crate::persist::Restored), StartError> {
    Err(StartError::Config(crate::config::NO_PERSIST.into()))
}

/// Step 2: opens the durable baseline at `path`, restores the hub's baseline and view
/// from it (owners are the instances' indices) and starts its writer thread. Returns
/// the writer and what the file held in doubt.
#[cfg(feature = "persist")]
async fn restore(
    path: &std::path::Path,
    config: &Config,
    hub: &Arc<Hub>,
    instances: &[Started],
) -> Result<(std::thread::JoinHandle<()>, crate::persist::Restored), StartError> {
    let opened = {
        let path = path.to_path_buf();
        let ttl = config.tombstone_ttl;
        tokio::task::spawn_blocking(move || crate::persist::Store::open(&path, ttl)).await
    };
    let (store, mut restored) = match opened {
        Ok(r) => r?,
        Err(e) => return Err(StartError::Config(format!("baseline store: {e}"))),
    };
    let names: Vec<String> = instances.iter().map(|i| i.name.clone()).collect();
    let mut strangers: Vec<String> = Vec::new();
    let entities = restored.entities.len();
    for e in &restored.entities {
        if !names.contains(&e.owner) && !strangers.contains(&e.owner) {
            strangers.push(e.owner.clone());
        }
    }
    if !strangers.is_empty() {
        tracing::warn!(instances = ?strangers, "the baseline store holds entities of instances that are not configured; they are kept but no snapshot will delete them");
    }
    let owner_of = |name: &str| {
        let i = names
            .iter()
            .position(|n| n == name)
            .or_else(|| {
                strangers
                    .iter()
                    .position(|n| n == name)
                    .map(|p| names.len() + p)
            })
            .unwrap_or(usize::from(u16::MAX));
        u16::try_from(i).unwrap_or(u16::MAX)
    };
    let mark = hub
        .deliveries()
        .register(crate::persist::STORE_OUTPUT, hub.last_seq());
    let announcer = hub.clone();
    let (tx, writer) = store
        .spawn_writer(
            move |changes| announcer.announce(changes),
            mark,
            hub.deliveries().clone(),
        )
        .map_err(|e| StartError::Config(format!("baseline store writer: {e}")))?;
    let started = std::time::Instant::now();
    hub.restore(&mut restored, owner_of, tx);
    tracing::info!(
        file = %path.display(),
        entities,
        in_doubt = restored.in_doubt.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "baseline and view restored"
    );
    Ok((writer, restored))
}

/// Last step: registers every instance with the hub, then spawns its schedule (a
/// collector) and its push loop (a bus).
fn spawn_instances(
    instances: Vec<Started>,
    hub: &Arc<Hub>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Vec<InstanceHandle> {
    for (owner, started) in instances.iter().enumerate() {
        let collected: &[String] = if started.meta.kind.collects() {
            &started.types
        } else {
            &[]
        };
        hub.register(
            &origin(owner, &started.name),
            &started.meta.entity_types,
            collected,
        );
    }
    let mut handles = Vec::new();
    for (owner, started) in instances.into_iter().enumerate() {
        let Started {
            name,
            library,
            meta,
            plugin,
            schedule,
            types,
            status,
            gates_readiness,
        } = started;
        status.set_isolation(plugin.isolation());
        let origin = origin(owner, &name);
        let collector = meta.kind.collects().then(|| {
            Collector::new(
                origin.clone(),
                plugin.clone().into_source(),
                schedule,
                types.clone(),
                hub.clone(),
                status.clone(),
            )
        });
        if let Some(c) = &collector {
            tasks.spawn(c.clone().run(shutdown.child_token()));
        }
        tasks.spawn(watch_health(
            name.clone(),
            plugin.clone(),
            status.clone(),
            shutdown.child_token(),
        ));
        if meta.kind.pushes() {
            tasks.spawn(run_bus(
                plugin.clone(),
                hub.clone(),
                origin,
                status.clone(),
                schedule,
                shutdown.child_token(),
            ));
        }
        tracing::info!(
            instance = %name,
            plugin = %meta.name,
            version = %meta.version,
            kind = meta.kind.as_str(),
            isolation = plugin.isolation().as_str(),
            "plugin instance started"
        );
        handles.push(InstanceHandle {
            name,
            library,
            meta,
            types,
            plugin,
            status,
            collector,
            gates_readiness,
        });
    }
    handles
}

/// Lagged subscribers recover even when no change arrives.
fn spawn_lag_recovery(hub: &Arc<Hub>, shutdown: &CancellationToken, tasks: &mut JoinSet<()>) {
    let weak = Arc::downgrade(hub);
    let token = shutdown.child_token();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => match weak.upgrade() {
                    Some(hub) => hub.recover_lagged(),
                    None => break,
                },
            }
        }
    });
}

/// A fresh get-all: the entities, and the types that came back incomplete.
#[derive(Debug, Default)]
pub struct GetAll {
    /// The entities of the requested types.
    pub entities: Vec<Arc<Entity>>,
    /// The requested types some instance could report only in part.
    pub incomplete: Vec<Incomplete>,
}

/// The running outputs for remote consumers.
#[cfg(feature = "amqp")]
type Outputs = Vec<AmqpOutput>;
/// No output can run in a build without them.
#[cfg(not(feature = "amqp"))]
type Outputs = Vec<std::convert::Infallible>;

/// Step 3: starts every configured output.
#[cfg(feature = "amqp")]
async fn start_outputs(config: &Config, hub: &Arc<Hub>) -> Result<Outputs, StartError> {
    let mut outputs = Vec::new();
    for output in &config.outputs.amqp {
        match AmqpOutput::start(output.clone(), hub) {
            Ok(o) => outputs.push(o),
            Err(e) => {
                finish_outputs(outputs).await;
                return Err(StartError::Config(e.to_string()));
            }
        }
    }
    Ok(outputs)
}

/// Step 3, in a build without the `amqp` feature: an AMQP output is refused.
#[cfg(not(feature = "amqp"))]
async fn start_outputs(config: &Config, _hub: &Arc<Hub>) -> Result<Outputs, StartError> {
    if config.outputs.amqp.is_empty() {
        Ok(Vec::new())
    } else {
        Err(StartError::Config(crate::config::NO_AMQP.into()))
    }
}

/// Drains and closes every output, all at once.
#[cfg(feature = "amqp")]
async fn finish_outputs(outputs: Outputs) {
    futures::future::join_all(outputs.into_iter().map(AmqpOutput::finish)).await;
}

/// There is no output to drain in a build without them.
#[cfg(not(feature = "amqp"))]
async fn finish_outputs(_outputs: Outputs) {}

/// The types an instance collects: what the plugin provides, narrowed to the configured
/// active types. A plugin with open-ended types collects every active type (or all).
fn active_types(provided: &[String], active: &[String]) -> Vec<String> {
    if active.is_empty() {
        return provided.to_vec();
    }
    if provided.is_empty() {
        return active.to_vec();
    }
    provided
        .iter()
        .filter(|t| active.contains(t))
        .cloned()
        .collect()
}

/// A push loop that runs this long without failing is healthy again: its next failure
/// retries after `backoff_initial`.
const BUS_QUIET_PERIOD: Duration = Duration::from_secs(60);

/// Runs a bus plugin's push loop, restarting it with backoff when it fails.
async fn run_bus(
    plugin: Arc<dyn Instance>,
    hub: Arc<Hub>,
    origin: Origin,
    status: Arc<StatusCell>,
    schedule: Schedule,
    shutdown: CancellationToken,
) {
    // A loop that ran for a while before it failed retries soon again: without the
    // quiet period, a bus in process mode idled `backoff_max` after each death once
    // about nine had happened, however far apart.
    let mut backoff = Backoff::new(schedule.backoff_initial, schedule.backoff_max)
        .with_jitter(0.2)
        .with_quiet_period(BUS_QUIET_PERIOD);
    loop {
        status.running();
        let run = plugin.run(hub.clone(), origin.clone());
        // On shutdown the plugin was asked to stop; let it finish on its own.
        let result = run.await;
        if shutdown.is_cancelled() {
            break;
        }
        match result {
            Ok(()) => {
                tracing::info!(instance = %origin.instance, "push loop ended");
                break;
            }
            Err(e) => {
                let delay = backoff.failure();
                tracing::warn!(instance = %origin.instance, error = %e, retry_in = ?delay, "push loop failed");
                status.failure(Duration::ZERO, &e.message);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    status.stopped();
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use synchronizer_plugin_api::ErrorKind;
    use synchronizer_plugin_api::abi::FfiSnapshot;
    use tokio::time::Instant;

    use super::*;
    use crate::instance::{BoxFuture, CallError, Source};
    use crate::isolation::Isolation;

    /// A bus instance whose push loop dies after each of `lives` in turn, then ends.
    struct Dies {
        lives: Mutex<VecDeque<Duration>>,
        starts: Mutex<Vec<Instant>>,
    }

    impl Source for Dies {
        fn snapshot(&self, _types: Vec<String>) -> BoxFuture<Result<FfiSnapshot, CallError>> {
            Box::pin(async {
                Err(CallError {
                    kind: ErrorKind::Failed,
                    message: "a bus plugin".into(),
                })
            })
        }

        fn calls_in_flight(&self) -> u32 {
            0
        }
    }

    impl Instance for Dies {
        fn isolation(&self) -> Isolation {
            Isolation::Process
        }

        fn run(&self, _hub: Arc<Hub>, _origin: Origin) -> BoxFuture<Result<(), CallError>> {
            self.starts.lock().unwrap().push(Instant::now());
            let life = self.lives.lock().unwrap().pop_front();
            Box::pin(async move {
                let Some(life) = life else { return Ok(()) };
                tokio::time::sleep(life).await;
                Err(CallError {
                    kind: ErrorKind::Failed,
                    message: "the plugin child process ended".into(),
                })
            })
        }

        fn request_stop(&self) {}

        fn health(&self) -> BoxFuture<Result<Health, CallError>> {
            Box::pin(async { Ok(Health::healthy()) })
        }

        fn counters(&self) -> Vec<(String, u64)> {
            Vec::new()
        }

        fn shutdown(self: Arc<Self>, _timeout: Duration) -> BoxFuture<()> {
            Box::pin(async {})
        }

        fn into_source(self: Arc<Self>) -> Arc<dyn Source> {
            self
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_bus_restart_delay_starts_again_after_a_loop_that_ran_past_the_quiet_period() {
        let s = Duration::from_secs;
        // Ten deaths right after each restart, then one loop that runs 61 s, one more
        // quick death, and the loop ends.
        let mut lives: VecDeque<Duration> = std::iter::repeat_n(s(0), 10).collect();
        lives.extend([s(61), s(0)]);
        let plugin = Arc::new(Dies {
            lives: Mutex::new(lives.clone()),
            starts: Mutex::new(Vec::new()),
        });
        let schedule = Schedule {
            backoff_initial: s(1),
            backoff_max: s(300),
            ..Schedule::default()
        };
        run_bus(
            plugin.clone(),
            Arc::new(Hub::new(s(60))),
            Origin {
                owner: 0,
                instance: Arc::from("bus"),
            },
            Arc::new(StatusCell::default()),
            schedule,
            CancellationToken::new(),
        )
        .await;
        let starts = plugin.starts.lock().unwrap().clone();
        assert_eq!(starts.len(), lives.len() + 1, "every life and the last run");
        // The delay before each restart: from the death to the next start.
        let delays: Vec<f64> = (0..lives.len())
            .map(|i| (starts[i + 1] - (starts[i] + lives[i])).as_secs_f64())
            .collect();
        // Jitter 0.2 shortens a delay by up to a fifth.
        let near = |got: f64, want: f64| got <= want && got >= want * 0.8 - 1e-3;
        for (i, want) in [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0]
            .into_iter()
            .enumerate()
        {
            assert!(near(delays[i], want), "death {i}: {delays:?}");
        }
        // Without the quiet period this death would wait 300 s again.
        assert!(near(delays[10], 1.0), "after the long run: {delays:?}");
        // A quick death after that restart counts again.
        assert!(near(delays[11], 2.0), "{delays:?}");
    }
}
