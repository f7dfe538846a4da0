//! Polling collectors on a schedule: an initial snapshot at start, then interval + jitter,
//! at most one collection in flight per instance (on-demand callers join it), a timeout
//! that cancels, exponential backoff after failures, reset on success.
//!
//! A call that passes its timeout is dropped, which aborts the task inside the plugin.
//! If the plugin's counter of calls in flight does not fall back to zero, the call is
//! stuck in blocking code: the instance is reported stuck and is not called again until
//! the counter drops (docs/architecture.md §2). Other instances run on their own tasks and never
//! wait for it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use synchronizer_plugin_api::Entity;
use synchronizer_plugin_api::abi::{ErrorKind, FfiError};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Schedule;
use crate::hub::{Hub, Origin};
use crate::instance::{CallError, Source};
use crate::status::StatusCell;

/// Why a collection failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CollectError {
    /// The plugin returned an error.
    #[error("instance `{instance}`: snapshot failed: {error}")]
    Failed {
        /// The instance.
        instance: String,
        /// The plugin's error.
        error: CallError,
    },
    /// The snapshot held more entities than the instance's `max_entities`.
    #[error(
        "instance `{instance}`: the snapshot has {entities} entities, more than max_entities = {max}; it is dropped and nothing is deleted (raise max_entities if the source really is this large)"
    )]
    TooLarge {
        /// The instance.
        instance: String,
        /// Entities in the snapshot.
        entities: usize,
        /// The limit.
        max: usize,
    },
    /// The call passed its timeout and was cancelled.
    #[error("instance `{instance}`: snapshot timed out after {timeout:?} and was cancelled")]
    Timeout {
        /// The instance.
        instance: String,
        /// The limit.
        timeout: Duration,
    },
    /// A previous call is still stuck inside the plugin.
    #[error(
        "instance `{instance}`: stuck: an abandoned call is still running inside the plugin (blocking code); not calling it again until it returns"
    )]
    Stuck {
        /// The instance.
        instance: String,
    },
    /// The host is shutting down.
    #[error("instance `{instance}`: shutting down")]
    ShuttingDown {
        /// The instance.
        instance: String,
    },
}

/// The result of one collection, shared between everyone who waited for it.
pub type CollectResult = Result<Arc<Collected>, CollectError>;

/// What one successful collection returned.
#[derive(Debug, Default)]
pub struct Collected {
    /// The entities of the instance's active types.
    pub entities: Vec<Arc<Entity>>,
    /// The types the plugin could not report completely (their entities may be missing).
    pub incomplete: Vec<Incomplete>,
}

/// A type a snapshot could not report completely, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incomplete {
    /// The instance.
    pub instance: Arc<str>,
    /// The entity type.
    pub entity_type: String,
    /// The plugin's reason.
    pub reason: String,
}

/// How long the scheduler waits for an abandoned call to leave the plugin before it
/// reports the instance stuck.
const STUCK_GRACE: Duration = Duration::from_millis(500);

/// One collector instance and its schedule.
pub struct Collector {
    origin: Origin,
    source: Arc<dyn Source>,
    schedule: Schedule,
    types: Vec<String>,
    hub: Arc<Hub>,
    status: Arc<StatusCell>,
    /// The last collection (running or finished) and when it started.
    in_flight: Mutex<
        Option<(
            std::time::Instant,
            Shared<BoxFuture<'static, CollectResult>>,
        )>,
    >,
    /// When the collector was built, before anything ran.
    created: std::time::Instant,
    initial_done: AtomicBool,
    /// The `seq` of the last change a collection of this instance emitted.
    last_emitted: AtomicU64,
}

impl Collector {
    /// A collector for `source`, whose snapshots are complete for `types` (empty: for
    /// every type it reports).
    pub fn new(
        origin: Origin,
        source: Arc<dyn Source>,
        schedule: Schedule,
        types: Vec<String>,
        hub: Arc<Hub>,
        status: Arc<StatusCell>,
    ) -> Arc<Self> {
        Arc::new(Collector {
            origin,
            source,
            schedule,
            types,
            hub,
            status,
            in_flight: Mutex::new(None),
            created: std::time::Instant::now(),
            initial_done: AtomicBool::new(false),
            last_emitted: AtomicU64::new(0),
        })
    }

    /// The instance's name.
    pub fn name(&self) -> &str {
        &self.origin.instance
    }

    /// The types this collector's snapshots cover (empty: open-ended).
    pub fn types(&self) -> &[String] {
        &self.types
    }

    /// Whether its first snapshot has completed.
    pub fn initial_done(&self) -> bool {
        self.initial_done.load(Ordering::SeqCst)
    }

    /// Starts a collection, or joins the one in flight.
    pub fn collect(self: &Arc<Self>) -> Shared<BoxFuture<'static, CollectResult>> {
        self.collect_since(None)
    }

    /// Like [`Collector::collect`], and a collection that started at `since` or later
    /// serves too, even if it has finished: a one-shot caller (`synchronizer snapshot`)
    /// takes the scheduler's first collection instead of calling the plugin again.
    pub fn collect_since(
        self: &Arc<Self>,
        since: Option<std::time::Instant>,
    ) -> Shared<BoxFuture<'static, CollectResult>> {
        let mut slot = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((started, f)) = slot.as_ref()
            && (f.peek().is_none() || since.is_some_and(|since| *started >= since))
        {
            return f.clone();
        }
        let this = self.clone();
        let task = tokio::spawn(async move { this.collect_once().await });
        let instance = self.origin.instance.to_string();
        let fut = async move {
            match task.await {
                Ok(r) => r,
                Err(_) => Err(CollectError::ShuttingDown { instance }),
            }
        }
        .boxed()
        .shared();
        let previous = slot.replace((std::time::Instant::now(), fut.clone()));
        drop(slot);
        // The previous result may hold the last references to millions of entities:
        // freeing them takes a second at 2,000,000, which must not hold an async worker.
        if let Some(previous) = previous
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn_blocking(move || drop(previous));
        }
        fut
    }

    async fn collect_once(&self) -> CollectResult {
        let instance = self.origin.instance.to_string();
        if self.source.calls_in_flight() > 0 {
            let err = CollectError::Stuck { instance };
            self.status.stuck(&err.to_string());
            return Err(err);
        }
        let start = self.hub.begin_snapshot(&self.origin);
        let t0 = tokio::time::Instant::now();
        let call = self.source.snapshot(self.types.clone());
        match tokio::time::timeout(self.schedule.timeout, call).await {
            Ok(Ok(snapshot)) if snapshot.entities.len() > self.schedule.max_entities => {
                let err = CollectError::TooLarge {
                    instance,
                    entities: snapshot.entities.len(),
                    max: self.schedule.max_entities,
                };
                tracing::error!(error = %err, "snapshot refused");
                // Dropped on a blocking thread: freeing millions of entities takes a while.
                tokio::task::spawn_blocking(move || drop(snapshot));
                Err(self.failed(err, "too_large", t0))
            }
            Ok(Ok(snapshot)) => {
                let initial = !self.initial_done.load(Ordering::SeqCst);
                let incomplete: Vec<Incomplete> = snapshot
                    .incomplete
                    .iter()
                    .map(|i| Incomplete {
                        instance: self.origin.instance.clone(),
                        entity_type: i.entity_type.to_string(),
                        reason: i.reason.to_string(),
                    })
                    .collect();
                let Some((entities, applied)) = self
                    .hub
                    .submit_snapshot(&self.origin, snapshot, &self.types, start, initial)
                    .await
                else {
                    let err = CollectError::Failed {
                        instance,
                        error: CallError::from(FfiError {
                            kind: ErrorKind::Failed,
                            message: "the host failed to apply the snapshot; nothing is deleted"
                                .into(),
                        }),
                    };
                    return Err(self.failed(err, "failed", t0));
                };
                self.initial_done.store(true, Ordering::SeqCst);
                if let Some(seq) = applied.last_seq {
                    self.last_emitted.fetch_max(seq, Ordering::SeqCst);
                }
                let elapsed = t0.elapsed();
                for i in &incomplete {
                    tracing::warn!(instance = %instance, entity_type = %i.entity_type, reason = %i.reason, "incomplete snapshot: nothing of this type is deleted");
                }
                tracing::debug!(
                    instance = %instance,
                    entities = entities.len(),
                    created = applied.created,
                    updated = applied.updated,
                    deleted = applied.deleted,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "snapshot applied"
                );
                self.status.success(
                    elapsed,
                    entities.len(),
                    &applied,
                    incomplete
                        .iter()
                        .map(|i| format!("{}: {}", i.entity_type, i.reason))
                        .collect(),
                );
                self.metrics()
                    .collection(&self.origin.instance, "success", elapsed.as_secs_f64());
                Ok(Arc::new(Collected {
                    entities,
                    incomplete,
                }))
            }
            Ok(Err(error)) => {
                let err = CollectError::Failed { instance, error };
                tracing::warn!(error = %err, "snapshot failed; nothing is deleted");
                Err(self.failed(err, "failed", t0))
            }
            Err(_) => {
                // The call future is dropped: the plugin's task is aborted. If the count
                // of calls in flight does not fall, the task is stuck in blocking code.
                let deadline = tokio::time::Instant::now() + STUCK_GRACE;
                while self.source.calls_in_flight() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let timeout = self.schedule.timeout;
                if self.source.calls_in_flight() > 0 {
                    let err = CollectError::Stuck { instance };
                    tracing::error!(error = %err, "snapshot timed out and the plugin did not stop");
                    Err(self.failed(err, "stuck", t0))
                } else {
                    let err = CollectError::Timeout { instance, timeout };
                    tracing::warn!(error = %err, "snapshot timed out; nothing is deleted");
                    Err(self.failed(err, "timeout", t0))
                }
            }
        }
    }

    /// Records a failed collection in the status and the metrics.
    fn failed(
        &self,
        err: CollectError,
        outcome: &'static str,
        t0: tokio::time::Instant,
    ) -> CollectError {
        let elapsed = t0.elapsed();
        match outcome {
            "stuck" => self.status.stuck(&err.to_string()),
            _ => self.status.failure(elapsed, &err.to_string()),
        }
        self.metrics()
            .collection(&self.origin.instance, outcome, elapsed.as_secs_f64());
        err
    }

    fn metrics(&self) -> &crate::metrics::Metrics {
        self.hub.metrics()
    }

    /// The delay before the next scheduled collection: the interval (with its jitter)
    /// after a success, the backoff after a failure.
    fn next_delay(&self, backoff: &mut Backoff, ok: bool) -> Duration {
        if ok {
            backoff.success();
            let jitter = self.schedule.jitter;
            let extra = if jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::try_from_secs_f64(jitter.as_secs_f64() * rand::random::<f64>())
                    .unwrap_or(jitter)
            };
            // The configuration bounds both to a year; a Schedule built in code may not.
            self.schedule.interval.saturating_add(extra)
        } else {
            backoff.failure()
        }
    }

    /// Runs the schedule until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.schedule.backoff_initial, self.schedule.backoff_max);
        // The first collection joins one a caller started since the collector exists
        // (`synchronizer snapshot` may ask before this task runs): one call, not two.
        let mut since = Some(self.created);
        loop {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.collect_since(since.take()) => r,
            };
            let ok = outcome.is_ok();
            // Back-pressure from reliable outputs: no new poll before they confirmed
            // what the last one changed.
            let emitted = self.last_emitted.load(Ordering::SeqCst);
            if emitted > 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = self.hub.deliveries().delivered(emitted) => if let Err(e) = r {
                        tracing::error!(instance = %self.origin.instance, error = %e, "changes not delivered to an output");
                    },
                }
            }
            let delay = self.next_delay(&mut backoff, ok);
            self.status
                .scheduled(next_attempt(SystemTime::now(), delay), !ok);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// When a call `delay` after `now` is due, for the status: checked, because a `Duration`
/// can reach past what `SystemTime` holds (`SystemTime + Duration` panics there); such a
/// time is shown as the latest one the status formats in range, year 9999.
fn next_attempt(now: SystemTime, delay: Duration) -> SystemTime {
    let latest = synchronizer_plugin_api::entity::micros_to_system_time(
        synchronizer_plugin_api::time::MAX_MICROS,
    );
    now.checked_add(delay).map_or(latest, |at| at.min(latest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_attempt_never_overflows_the_clock() {
        let now = SystemTime::now();
        let latest = synchronizer_plugin_api::entity::micros_to_system_time(
            synchronizer_plugin_api::time::MAX_MICROS,
        );
        assert_eq!(next_attempt(now, Duration::MAX), latest);
        assert_eq!(
            next_attempt(now, Duration::from_secs(10_000 * 365 * 86_400)),
            latest
        );
        let soon = next_attempt(now, Duration::from_secs(60));
        assert_eq!(soon.duration_since(now).unwrap(), Duration::from_secs(60));
    }
}
