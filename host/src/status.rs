//! Per-instance status: what operators see in `synchronizer plugins`, the HTTP API and
//! metrics. Written by the scheduler and bus runner, read by anyone.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use synchronizer_plugin_api::entity::system_time_to_micros;
use synchronizer_plugin_api::time::format_rfc3339_millis;

use crate::hub::Applied;
use crate::isolation::Isolation;

/// The state of one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Created, no collection finished yet.
    Starting,
    /// The last call succeeded.
    Healthy,
    /// It runs, but its plugin reports itself unhealthy (a bus not connected to its
    /// broker, say): the reason is in `plugin_report`.
    Degraded,
    /// The last call failed; retrying with backoff.
    Failing,
    /// A call is stuck inside the plugin; it is not called again until that returns.
    Stuck,
    /// Stopped (shutdown, or a bus loop that ended).
    Stopped,
}

/// A snapshot of an instance's status.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceStatus {
    /// Its state.
    pub health: Health,
    /// When the last successful collection finished.
    #[serde(serialize_with = "opt_time")]
    pub last_success: Option<SystemTime>,
    /// The last error, if the last call failed.
    pub last_error: Option<String>,
    /// How long the last collection took.
    #[serde(serialize_with = "opt_duration")]
    pub last_duration: Option<Duration>,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// When the next scheduled call is due.
    #[serde(serialize_with = "opt_time")]
    pub next_attempt: Option<SystemTime>,
    /// Whether the next call is a retry after failures (backing off).
    pub backing_off: bool,
    /// Collections that succeeded.
    pub collections: u64,
    /// Calls that failed, timed out or found the plugin stuck.
    pub failures: u64,
    /// Entities in the last snapshot.
    pub entities: usize,
    /// Types reported incomplete in the last snapshot.
    pub incomplete: Vec<String>,
    /// Where the instance runs: `in-process` or `process`.
    pub isolation: Isolation,
    /// Process mode: the child's process id while one runs.
    pub pid: Option<u32>,
    /// Process mode: how many times the child was restarted.
    pub restarts: u64,
    /// Process mode: why the last child ended (`killed by signal 11 (SIGSEGV)`,
    /// `killed by the host: memory limit exceeded ...`).
    pub last_exit: Option<String>,
    /// The plugin's last report on its own health, asked every few seconds (null until
    /// its first answer).
    pub plugin_report: Option<PluginReport>,
    /// Whether the plugin has reported itself healthy at least once since the start (a
    /// bus: connected once). Readiness waits for it.
    pub reported_healthy: bool,
}

/// A plugin's report on its own health, and when it was made.
#[derive(Clone, Debug, Serialize)]
pub struct PluginReport {
    /// The report.
    #[serde(flatten)]
    pub health: synchronizer_plugin_api::Health,
    /// When the host asked.
    #[serde(serialize_with = "time")]
    pub at: SystemTime,
}

fn time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339_millis(system_time_to_micros(*t)))
}

fn opt_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        // Total over every SystemTime: a far `next_attempt` cannot fail the status.
        Some(t) => s.serialize_str(&format_rfc3339_millis(system_time_to_micros(*t))),
        None => s.serialize_none(),
    }
}

fn opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// The shared, lock-protected status of one instance.
pub struct StatusCell(Mutex<InstanceStatus>);

impl Default for StatusCell {
    fn default() -> Self {
        StatusCell(Mutex::new(InstanceStatus {
            health: Health::Starting,
            last_success: None,
            last_error: None,
            last_duration: None,
            consecutive_failures: 0,
            next_attempt: None,
            backing_off: false,
            collections: 0,
            failures: 0,
            entities: 0,
            incomplete: Vec::new(),
            isolation: Isolation::InProcess,
            pid: None,
            restarts: 0,
            last_exit: None,
            plugin_report: None,
            reported_healthy: false,
        }))
    }
}

impl StatusCell {
    fn with(&self, f: impl FnOnce(&mut InstanceStatus)) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// The current status. An instance that runs (`starting` or `healthy`) while its
    /// plugin reports itself unhealthy is `degraded`.
    pub fn get(&self) -> InstanceStatus {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let unhealthy = s.plugin_report.as_ref().is_some_and(|r| !r.health.healthy);
        if unhealthy && matches!(s.health, Health::Starting | Health::Healthy) {
            s.health = Health::Degraded;
        }
        s
    }

    /// Records the plugin's own report on its health.
    pub fn plugin_reported(&self, health: synchronizer_plugin_api::Health) {
        self.with(|s| {
            s.reported_healthy |= health.healthy;
            s.plugin_report = Some(PluginReport {
                health,
                at: SystemTime::now(),
            });
        })
    }

    /// A collection (or bus start) succeeded.
    pub fn success(
        &self,
        elapsed: Duration,
        entities: usize,
        _applied: &Applied,
        incomplete: Vec<String>,
    ) {
        self.with(|s| {
            s.health = Health::Healthy;
            s.last_success = Some(SystemTime::now());
            s.last_error = None;
            s.last_duration = Some(elapsed);
            s.consecutive_failures = 0;
            s.collections += 1;
            s.entities = entities;
            s.incomplete = incomplete;
        })
    }

    /// A call failed.
    pub fn failure(&self, elapsed: Duration, error: &str) {
        self.with(|s| {
            s.health = Health::Failing;
            s.last_error = Some(error.to_owned());
            s.last_duration = Some(elapsed);
            s.consecutive_failures += 1;
            s.failures += 1;
        })
    }

    /// A call is stuck inside the plugin.
    pub fn stuck(&self, error: &str) {
        self.with(|s| {
            s.health = Health::Stuck;
            s.last_error = Some(error.to_owned());
            s.consecutive_failures += 1;
            s.failures += 1;
        })
    }

    /// The next call is scheduled.
    pub fn scheduled(&self, at: SystemTime, backing_off: bool) {
        self.with(|s| {
            s.next_attempt = Some(at);
            s.backing_off = backing_off;
        })
    }

    /// A bus loop is running.
    pub fn running(&self) {
        self.with(|s| {
            s.health = Health::Healthy;
            s.last_error = None;
            s.consecutive_failures = 0;
        })
    }

    /// Records where the instance runs.
    pub fn set_isolation(&self, isolation: Isolation) {
        self.with(|s| s.isolation = isolation)
    }

    /// A child process started (process mode).
    pub fn child_started(&self, pid: u32) {
        self.with(|s| s.pid = Some(pid))
    }

    /// A child process ended (process mode); `restarting` when another will replace it.
    pub fn child_exited(&self, cause: &str, restarting: bool) {
        self.with(|s| {
            s.pid = None;
            s.last_exit = Some(cause.to_owned());
            if restarting {
                s.restarts += 1;
            }
        })
    }

    /// The instance stopped.
    pub fn stopped(&self) {
        self.with(|s| {
            s.health = Health::Stopped;
            s.next_attempt = None;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_times_print_whatever_they_are() {
        // A `next_attempt` years away (an interval of "10000years" once got this far) and
        // one before the epoch both serialize; neither panics.
        let cell = StatusCell::default();
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        cell.scheduled(far, false);
        let v = serde_json::to_value(cell.get()).unwrap();
        assert_eq!(v["next_attempt"], "+14645-06-30T15:06:40.000Z");
        let before = SystemTime::UNIX_EPOCH - Duration::from_millis(1);
        cell.scheduled(before, true);
        let v = serde_json::to_value(cell.get()).unwrap();
        assert_eq!(v["next_attempt"], "1969-12-31T23:59:59.999Z");
        assert_eq!(v["last_success"], serde_json::Value::Null);
    }
}
