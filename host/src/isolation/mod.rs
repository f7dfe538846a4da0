//! Running a plugin instance in the host's process or in a supervised child process.
//!
//! `isolation = "in-process"` (the default) calls the plugin's `.so` directly: no copy of
//! its data, no extra process. It is also defenceless against the few things a plugin can
//! do that the host cannot undo: a segfault or an abort ends the host, a thread blocked
//! forever is only abandoned, memory and threads it leaks stay leaked.
//!
//! `isolation = "process"` runs the instance in a child: the same `synchronizer` binary,
//! started as `synchronizer plugin-child`, loads the same `.so` through the same loader
//! and [`PluginInstance::create`], and serves the instance's calls over its stdin/stdout
//! pipes. The host supervises it: it kills the child when a call that passed its timeout
//! does not leave the plugin (a stuck thread), when it stops answering heartbeats, when
//! its resident memory passes `memory_limit`, or when it sends a malformed frame; it
//! restarts it with backoff and reports every restart and its cause in the instance's
//! status. A child that dies mid-snapshot fails that snapshot: nothing is deleted. The
//! child asks the kernel to kill it when the host dies (`PR_SET_PDEATHSIG`), so no plugin
//! outlives its host.
//!
//! One module per job:
//! - [`process`]: [`ProcessInstance`], the handle the rest of the host calls;
//! - `spawn`: launching a child and its first exchange (`Init`, then `Ready`);
//! - `supervision`: heartbeats, the memory limit, killing for a cause, restarts;
//! - `connection`: the frames to and from a running child, and the calls in hand;
//! - [`wire`]: the messages, their encoding and the framing;
//! - `logs`: the child's log lines, re-emitted through the host's tracing;
//! - [`child`]: the child's side, `synchronizer plugin-child`.
//!
//! Plugin authors do nothing different: the same `.so` runs either way. [`Instance`] is
//! what the rest of the host holds, whichever the mode.

pub mod child;
mod connection;
mod logs;
pub mod process;
mod spawn;
mod supervision;
pub mod wire;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use synchronizer_plugin_api::Health;

use crate::hub::{Hub, Origin};
use crate::instance::{BoxFuture, CallError, PluginInstance, Source};

pub use process::{ProcessError, ProcessInstance, ProcessOptions};

/// Process mode: how often the host checks that a plugin child answers, by default.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Process mode: a child silent this long is killed, by default.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an instance runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// In the host's process (the default: no copy, no extra process).
    #[default]
    InProcess,
    /// In a supervised child process of its own.
    Process,
}

impl Isolation {
    /// `in-process` or `process`.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::InProcess => "in-process",
            Isolation::Process => "process",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A size in bytes, written `"512MiB"`, `"2GiB"`, `"300MB"`, `"64KiB"` or as a number of
/// bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"512MiB"` and the like.
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size (e.g. \"512MiB\")"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            other => return Err(format!("`{s}`: unknown unit `{other}` (use KiB, MiB, GiB)")),
        };
        let bytes = value * mult as f64;
        if !bytes.is_finite() || bytes < 1.0 {
            return Err(format!("`{s}` must be at least one byte"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b % (1 << 30) == 0 {
            write!(f, "{}GiB", b >> 30)
        } else if b >= 1 << 20 {
            write!(f, "{:.0}MiB", b as f64 / f64::from(1u32 << 20))
        } else {
            write!(f, "{b}B")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) if n > 0 => Ok(ByteSize(n)),
            Raw::N(_) => Err(serde::de::Error::custom("a size must be more than zero")),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A running plugin instance, whichever the mode: what the rest of the host holds
/// (`Arc<dyn Instance>`). [`PluginInstance`] calls the plugin in the host's process;
/// [`ProcessInstance`] calls it in a supervised child.
pub trait Instance: Source {
    /// Where it runs.
    fn isolation(&self) -> Isolation;

    /// Runs the push loop, handing changes to `hub` as `origin`. A batch is
    /// acknowledged to the plugin only once the host has applied it.
    fn run(&self, hub: Arc<Hub>, origin: Origin) -> BoxFuture<Result<(), CallError>>;

    /// Asks the push loop to stop.
    fn request_stop(&self);

    /// The plugin's own health report.
    fn health(&self) -> BoxFuture<Result<Health, CallError>>;

    /// The plugin's own counters (in process mode, as of the last heartbeat).
    fn counters(&self) -> Vec<(String, u64)>;

    /// The child's pid (process mode, while a child runs).
    fn pid(&self) -> Option<u32> {
        None
    }

    /// Stops the plugin: its runtime in process, or the child (killed if it does not
    /// exit within `timeout` and a second).
    fn shutdown(self: Arc<Self>, timeout: Duration) -> BoxFuture<()>;

    /// The same instance, as the scheduler polls it.
    fn into_source(self: Arc<Self>) -> Arc<dyn Source>;
}

impl Instance for PluginInstance {
    fn isolation(&self) -> Isolation {
        Isolation::InProcess
    }

    fn run(&self, hub: Arc<Hub>, origin: Origin) -> BoxFuture<Result<(), CallError>> {
        PluginInstance::run(self, hub, origin)
    }

    fn request_stop(&self) {
        PluginInstance::request_stop(self)
    }

    fn health(&self) -> BoxFuture<Result<Health, CallError>> {
        Box::pin(PluginInstance::health(self))
    }

    fn counters(&self) -> Vec<(String, u64)> {
        PluginInstance::counters(self)
    }

    fn shutdown(self: Arc<Self>, timeout: Duration) -> BoxFuture<()> {
        Box::pin(async move {
            // Off the async workers: shutting a runtime down blocks for up to `timeout`.
            let _ = tokio::task::spawn_blocking(move || self.shutdown_runtime(timeout)).await;
        })
    }

    fn into_source(self: Arc<Self>) -> Arc<dyn Source> {
        self
    }
}

impl Instance for ProcessInstance {
    fn isolation(&self) -> Isolation {
        Isolation::Process
    }

    fn run(&self, hub: Arc<Hub>, origin: Origin) -> BoxFuture<Result<(), CallError>> {
        ProcessInstance::run(self, hub, origin)
    }

    fn request_stop(&self) {
        ProcessInstance::request_stop(self)
    }

    fn health(&self) -> BoxFuture<Result<Health, CallError>> {
        ProcessInstance::health(self)
    }

    fn counters(&self) -> Vec<(String, u64)> {
        ProcessInstance::counters(self)
    }

    fn pid(&self) -> Option<u32> {
        ProcessInstance::pid(self)
    }

    fn shutdown(self: Arc<Self>, timeout: Duration) -> BoxFuture<()> {
        Box::pin(async move { ProcessInstance::shutdown(&self, timeout).await })
    }

    fn into_source(self: Arc<Self>) -> Arc<dyn Source> {
        self
    }
}

/// Locks `m`, whether or not a thread panicked while holding it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Converts a host-side call error into the boundary's.
pub(crate) fn to_ffi_error(e: &CallError) -> synchronizer_plugin_api::abi::FfiError {
    synchronizer_plugin_api::abi::FfiError {
        kind: e.kind,
        message: e.message.as_str().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("512MiB"), Ok(ByteSize(512 << 20)));
        assert_eq!(ByteSize::parse("2 GiB"), Ok(ByteSize(2 << 30)));
        assert_eq!(ByteSize::parse("300MB"), Ok(ByteSize(300_000_000)));
        assert_eq!(ByteSize::parse("1.5KiB"), Ok(ByteSize(1536)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("5 parsecs").is_err());
        assert!(ByteSize::parse("0").is_err());
        assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
    }
}
