//! The host's configuration: a TOML file plus `SYNCHRONIZER_*` environment overrides,
//! read with figment. `examples/synchronizer.toml` documents every option.
//!
//! Environment overrides use `__` between levels: `SYNCHRONIZER_PLUGINS_DIR=/opt/p`,
//! `SYNCHRONIZER_DEFAULTS__INTERVAL=10s`. Unknown keys are errors, so a typo is reported
//! with the key's name instead of being silently ignored.
//!
//! Every duration is at most [`MAX_DURATION`] (a year): a longer one is a typo
//! (`interval = "10000years"`) and would overflow the clock arithmetic downstream; the
//! error names the key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// What to do when a plugin file cannot be loaded or an instance cannot be created.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnPluginError {
    /// Stop with an error naming every plugin that failed (the default: a service that
    /// silently runs without half its sources is worse than one that does not start).
    #[default]
    Fail,
    /// Log and report the failures, run the instances that work.
    Skip,
}

/// Timing of one instance; every field falls back to `[defaults]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Time between two snapshots.
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Up to this much random delay added to each interval, so that instances spread out.
    #[serde(default, with = "humantime_serde")]
    pub jitter: Option<Duration>,
    /// A snapshot that takes longer is cancelled and counts as failed.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// First retry delay after a failure; doubles with each failure in a row.
    #[serde(default, with = "humantime_serde")]
    pub backoff_initial: Option<Duration>,
    /// Largest retry delay.
    #[serde(default, with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
    /// A snapshot with more entities fails (nothing is deleted) instead of growing the
    /// host without bound; default 5,000,000.
    #[serde(default)]
    pub max_entities: Option<usize>,
}

/// The default [`Config::stop_timeout`].
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer than the longest `shutdown_grace` the default stop timeout is.
pub const STOP_MARGIN: Duration = Duration::from_secs(5);

/// The default [`Timing::max_entities`].
pub const DEFAULT_MAX_ENTITIES: usize = 5_000_000;

/// Fully resolved timing of one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// See [`Timing::interval`].
    pub interval: Duration,
    /// See [`Timing::jitter`].
    pub jitter: Duration,
    /// See [`Timing::timeout`].
    pub timeout: Duration,
    /// See [`Timing::backoff_initial`].
    pub backoff_initial: Duration,
    /// See [`Timing::backoff_max`].
    pub backoff_max: Duration,
    /// See [`Timing::max_entities`].
    pub max_entities: usize,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            interval: Duration::from_secs(60),
            jitter: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_entities: DEFAULT_MAX_ENTITIES,
        }
    }
}

impl Timing {
    /// This timing over `base`.
    pub fn over(&self, base: &Schedule) -> Schedule {
        Schedule {
            interval: self.interval.unwrap_or(base.interval),
            jitter: self.jitter.unwrap_or(base.jitter),
            timeout: self.timeout.unwrap_or(base.timeout),
            backoff_initial: self.backoff_initial.unwrap_or(base.backoff_initial),
            backoff_max: self.backoff_max.unwrap_or(base.backoff_max),
            max_entities: self.max_entities.unwrap_or(base.max_entities),
        }
    }
}

/// One plugin instance.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// The instance's name, unique in the file: it appears in logs, status and in every
    /// change notification.
    pub name: String,
    /// The plugin library: a file name in `plugins_dir`, or a path.
    pub library: PathBuf,
    /// Set to false to keep the instance in the file without running it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// See [`Timing::interval`]; falls back to `[defaults]`.
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// See [`Timing::jitter`].
    #[serde(default, with = "humantime_serde")]
    pub jitter: Option<Duration>,
    /// See [`Timing::timeout`].
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// See [`Timing::backoff_initial`].
    #[serde(default, with = "humantime_serde")]
    pub backoff_initial: Option<Duration>,
    /// See [`Timing::backoff_max`].
    #[serde(default, with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
    /// See [`Timing::max_entities`].
    #[serde(default)]
    pub max_entities: Option<usize>,
    /// Where the instance runs: in the host's process (the default) or in a supervised
    /// child process of its own (see [`crate::isolation`]).
    #[serde(default)]
    pub isolation: Isolation,
    /// Process mode only: the child is killed (and restarted) when its resident memory
    /// passes this size (`"512MiB"`, `"2GiB"`, `"300MB"` or a number of bytes).
    #[serde(default)]
    pub memory_limit: Option<ByteSize>,
    /// Process mode only: how often the host checks that the child answers (default 1s).
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// Process mode only: a child that has not answered a heartbeat for this long is
    /// killed and restarted (default 5s).
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_timeout: Option<Duration>,
    /// Process mode only: the most snapshot data the host holds for one call while the
    /// child streams it, in encoded frame bytes (default 256MiB; decoded entities take
    /// several times that). A larger snapshot fails with an error saying so; nothing is
    /// deleted.
    #[serde(default)]
    pub snapshot_limit: Option<ByteSize>,
    /// Process mode only: the program that hosts the plugin (run as `PROGRAM plugin-child`).
    /// Default: the running executable, which is right for the `synchronizer` binary; a
    /// program that embeds the library sets it to the `synchronizer` binary, or serves
    /// the subcommand itself with [`crate::isolation::child::main`].
    #[serde(default)]
    pub child_program: Option<PathBuf>,
    /// Whether `/readyz` waits for this instance: a collector until its first snapshot, a
    /// bus until its plugin first reports itself healthy (connected to its broker).
    /// Default true.
    #[serde(default = "yes")]
    pub readiness: bool,
    /// The plugin's own configuration, passed to it as it is.
    #[serde(default = "empty_table")]
    pub config: serde_json::Value,
}

pub use crate::isolation::{ByteSize, Isolation};

impl InstanceConfig {
    /// This instance's timing overrides.
    pub fn timing(&self) -> Timing {
        Timing {
            interval: self.interval,
            jitter: self.jitter,
            timeout: self.timeout,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            max_entities: self.max_entities,
        }
    }
}

fn yes() -> bool {
    true
}

fn empty_table() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where plugin libraries live; relative `library` paths resolve against it.
    /// Relative to the configuration file's directory.
    #[serde(default = "default_plugins_dir")]
    pub plugins_dir: PathBuf,
    /// The entity types the host collects and reports; empty means every type the
    /// plugins provide.
    #[serde(default)]
    pub types: Vec<String>,
    /// Fail or skip when a plugin cannot be loaded or started.
    #[serde(default)]
    pub on_plugin_error: OnPluginError,
    /// How long a deleted key is remembered, so that late older messages cannot
    /// resurrect it.
    #[serde(default = "default_tombstone_ttl", with = "humantime_serde")]
    pub tombstone_ttl: Duration,
    /// At shutdown, how long the instances get to stop: a bus hands what it has received
    /// to the host and acknowledges it within its own `shutdown_grace`, which this must
    /// exceed. Default: 10 s, or 5 s more than the longest `shutdown_grace` of an
    /// instance's table when that is longer (see [`Config::stop_timeout`]).
    #[serde(default, with = "humantime_serde")]
    pub stop_timeout: Option<Duration>,
    /// The most verbose level of plugin logs forwarded to the host log.
    #[serde(default)]
    pub plugin_log_level: LogLevel,
    /// Events a subscriber may have queued before it counts as fallen behind.
    #[serde(default = "default_subscriber_queue")]
    pub subscriber_queue: usize,
    /// A file that keeps the baseline across restarts (redb), so that a restart reports
    /// only what changed while the host was down. Relative to the configuration file's
    /// directory. Absent (the default): the baseline lives in memory only.
    #[serde(default)]
    pub baseline_file: Option<PathBuf>,
    /// The HTTP API (absent: no HTTP server).
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// Outputs for remote consumers besides the HTTP API.
    #[serde(default)]
    pub outputs: Outputs,
    /// Timing defaults for every instance.
    #[serde(default)]
    pub defaults: Timing,
    /// The plugin instances.
    #[serde(default)]
    pub instances: Vec<InstanceConfig>,
}

/// Outputs for remote consumers (`[outputs]`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    /// AMQP exchanges every change is published to (`[[outputs.amqp]]`).
    #[serde(default)]
    pub amqp: Vec<crate::amqp::AmqpOutputConfig>,
}

/// The HTTP API's settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port to listen on (default `127.0.0.1:9595`: loopback only).
    #[serde(default = "default_listen")]
    pub listen: std::net::SocketAddr,
    /// A file whose first line is the bearer token every request must carry.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The name of an environment variable holding the bearer token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// How many recent changes `GET /v1/changes` can replay to a client that reconnects
    /// with `Last-Event-ID`.
    #[serde(default = "default_replay")]
    pub replay: usize,
    /// The listen socket's backlog: connections the kernel queues before they are
    /// accepted (capped by `net.core.somaxconn`).
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// Connections served at once; beyond it (and the reserve) a connection is accepted
    /// and closed at once, and counted in `synchronizer_http_connections_refused_total`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections accepted beyond `max_connections` that answer only `/healthz` and
    /// `/readyz` (others get 503), one request each, closed after
    /// [`RESERVE_TIMEOUT`]: a liveness probe still gets
    /// through a connection flood. 0: none.
    #[serde(default = "default_reserved_connections")]
    pub reserved_connections: usize,
    /// A new connection must send a complete request head within this time, or it is
    /// closed (slow or silent clients).
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A keep-alive connection must send its next complete request head within this time
    /// of the previous response, or it is closed. Change streams are not idle while they
    /// send (they send a keep-alive comment every 15 s).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// TCP keepalive: probes start after this much silence, then every third of it; a
    /// peer that answers none of 3 probes is dropped.
    #[serde(default = "default_tcp_keepalive", with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// The largest request head (request line and headers), in bytes; a larger one gets
    /// 431. At least 8192 (hyper's smallest buffer).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// The most headers a request may have; more gets 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// The largest request body, in bytes; a larger one gets 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Once every connection of a burst (256 or more at once) is closed, give the freed
    /// heap back to the system (glibc `malloc_trim`); without it the host's RSS stays near
    /// the burst's peak. On by default.
    #[serde(default = "default_release_memory")]
    pub release_memory: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            token_file: None,
            token_env: None,
            replay: default_replay(),
            backlog: default_backlog(),
            max_connections: default_max_connections(),
            reserved_connections: default_reserved_connections(),
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            tcp_keepalive: default_tcp_keepalive(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_body_bytes: default_max_body_bytes(),
            release_memory: default_release_memory(),
        }
    }
}

/// How long a connection of the reserve (see [`HttpConfig::reserved_connections`]) is
/// kept: its request head must arrive, and its answer go out, within this time.
pub const RESERVE_TIMEOUT: Duration = Duration::from_secs(1);

/// The smallest `max_header_bytes` (hyper's smallest read buffer).
pub const MIN_HEADER_BYTES: usize = 8192;

impl HttpConfig {
    /// Refuses values that cannot work, naming the key.
    fn check(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Semantic(format!("http.{msg}")));
        for (key, value) in [
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("tcp_keepalive", self.tcp_keepalive),
        ] {
            if value.is_zero() {
                return fail(format!("{key} must be more than zero"));
            }
            check_duration(&format!("http.{key}"), Some(value))?;
        }
        if self.tcp_keepalive < Duration::from_secs(3) {
            return fail(
                "tcp_keepalive must be at least 3s (probes go every third of it, in whole seconds)"
                    .into(),
            );
        }
        if self.header_timeout > self.idle_timeout {
            return fail(format!(
                "header_timeout ({}) must not be longer than idle_timeout ({}): the wait for a request head is bounded by both",
                humantime::format_duration(self.header_timeout),
                humantime::format_duration(self.idle_timeout)
            ));
        }
        if self.backlog == 0 || self.backlog > i32::MAX as u32 {
            return fail("backlog must be between 1 and 2147483647".into());
        }
        if self.max_connections == 0 {
            return fail("max_connections must be at least 1".into());
        }
        // The semaphores that count connections hold at most usize::MAX >> 3 permits.
        if self.max_connections > 1 << 24 || self.reserved_connections > 1 << 24 {
            return fail(
                "max_connections and reserved_connections must be at most 16777216".into(),
            );
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return fail(format!(
                "max_header_bytes must be at least {MIN_HEADER_BYTES}"
            ));
        }
        if self.max_headers == 0 {
            return fail("max_headers must be at least 1".into());
        }
        Ok(())
    }
}

fn default_backlog() -> u32 {
    1024
}

fn default_max_connections() -> usize {
    4096
}

fn default_reserved_connections() -> usize {
    16
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_tcp_keepalive() -> Duration {
    Duration::from_secs(60)
}

fn default_max_header_bytes() -> usize {
    16 * 1024
}

fn default_max_headers() -> usize {
    64
}

fn default_release_memory() -> bool {
    true
}

fn default_max_body_bytes() -> usize {
    64 * 1024
}

fn default_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9595))
}

fn default_replay() -> usize {
    10_000
}

fn default_plugins_dir() -> PathBuf {
    PathBuf::from("plugins")
}

fn default_tombstone_ttl() -> Duration {
    Duration::from_secs(600)
}

fn default_subscriber_queue() -> usize {
    4096
}

/// The longest duration any option accepts: 365 days.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Refuses `value` for `key` when it is longer than [`MAX_DURATION`].
fn check_duration(key: &str, value: Option<Duration>) -> Result<(), ConfigError> {
    match value {
        Some(d) if d > MAX_DURATION => Err(ConfigError::Semantic(format!(
            "{key}: {} is longer than the longest duration accepted ({}days)",
            humantime::format_duration(d),
            MAX_DURATION.as_secs() / 86_400
        ))),
        _ => Ok(()),
    }
}

/// Refuses an environment override figment would misread.
///
/// figment 0.10 unescapes a quoted string in an environment value by slicing it at a
/// character count as if it were a byte offset: with a multi-byte character before the
/// first backslash escape it panics (`SYNCHRONIZER_PLUGIN_LOG_LEVEL='"é\n"'`, "not a
/// char boundary") or silently drops characters (`"éé\n"` reads as `é` and a newline).
/// So a value with a `"` and, after it, a non-ASCII character before a `\` is refused
/// here, before figment sees it, naming the variable.
fn check_env_value(name: &str, value: &str) -> Result<(), ConfigError> {
    let Some(quote) = value.find('"') else {
        return Ok(());
    };
    let quoted = &value[quote + 1..];
    match (quoted.find(|c: char| !c.is_ascii()), quoted.rfind('\\')) {
        (Some(wide), Some(escape)) if wide < escape => Err(ConfigError::Semantic(format!(
            "environment variable {name}: a quoted value with a non-ASCII character before a backslash escape cannot be read correctly (figment 0.10 misreads it); write the value without quotes or escapes, or put it in the file"
        ))),
        _ => Ok(()),
    }
}

/// [`check_env_value`] for every `SYNCHRONIZER_*` variable, as figment's `Env` provider
/// reads them (names trimmed and matched without case, values lossily as UTF-8).
fn check_environment() -> Result<(), ConfigError> {
    for (name, value) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let name = name.trim();
        let prefixed = name
            .get(..ENV_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX));
        if prefixed {
            check_env_value(name, &value.to_string_lossy())?;
        }
    }
    Ok(())
}

const ENV_PREFIX: &str = "SYNCHRONIZER_";

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an override does not parse, or a field is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The configuration file does not exist.
    #[error("configuration file {} does not exist", .0.display())]
    Missing(PathBuf),
    /// A semantic problem: duplicate instance names, a bad level.
    #[error("{0}")]
    Semantic(String),
}

impl ConfigError {
    /// The same error with every one of `secrets` replaced by `***`.
    fn scrubbed(self, secrets: &synchronizer_plugin_api::redact::Secrets) -> Self {
        match self {
            ConfigError::Invalid(m) => ConfigError::Invalid(secrets.scrub(&m)),
            ConfigError::Semantic(m) => ConfigError::Semantic(secrets.scrub(&m)),
            missing @ ConfigError::Missing(_) => missing,
        }
    }
}

impl Config {
    /// Reads `path`, then applies `SYNCHRONIZER_*` environment overrides, and resolves
    /// `plugins_dir` against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Missing(path.to_owned()));
        }
        check_environment()?;
        // A backstop for what the check above does not know of: figment parses the
        // environment's values when it merges them, and a panic there is a bad value, not
        // a crash.
        let figment = std::panic::catch_unwind(|| {
            Figment::new()
                .merge(Toml::file_exact(path))
                .merge(Env::prefixed(ENV_PREFIX).split("__"))
        })
        .map_err(|_| {
            ConfigError::Semantic(format!(
                "an environment variable {ENV_PREFIX}* could not be read (its value made the configuration library fail); check their values"
            ))
        })?;
        // Whatever is wrong, no message quotes a secret from the file or the environment.
        let mut text = std::fs::read_to_string(path).unwrap_or_default();
        for (key, value) in std::env::vars_os() {
            if key.to_string_lossy().starts_with(ENV_PREFIX) {
                text.push_str(&format!(
                    "\n{} = {}",
                    key.to_string_lossy(),
                    value.to_string_lossy()
                ));
            }
        }
        let secrets = crate::secrets::of_text(&text);
        Self::from_figment(figment, path.parent()).map_err(|e| e.scrubbed(&secrets))
    }

    /// Parses TOML text (with no environment overrides); relative paths stay relative.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let secrets = crate::secrets::of_text(text);
        Self::from_figment(Figment::new().merge(Toml::string(text)), None)
            .map_err(|e| e.scrubbed(&secrets))
    }

    fn from_figment(figment: Figment, base: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(base) = base {
            if config.plugins_dir.is_relative() {
                config.plugins_dir = base.join(&config.plugins_dir);
            }
            if let Some(file) = &config.baseline_file
                && file.is_relative()
            {
                config.baseline_file = Some(base.join(file));
            }
            for output in &mut config.outputs.amqp {
                if let Some(file) = &output.ca_file
                    && file.is_relative()
                {
                    output.ca_file = Some(base.join(file));
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// How long the instances get to stop at shutdown: `stop_timeout` when set (it must
    /// exceed every instance's `shutdown_grace`), else [`DEFAULT_STOP_TIMEOUT`] or
    /// [`STOP_MARGIN`] more than the longest `shutdown_grace`, whichever is longer. (A
    /// plugin that settles what it holds within a grace of its own says so by that key
    /// in its table, as the bus plugin does.)
    pub fn stop_timeout(&self) -> Duration {
        let graces = self.longest_shutdown_grace().map(|(_, g)| g + STOP_MARGIN);
        match self.stop_timeout {
            Some(t) => t,
            None => graces.map_or(DEFAULT_STOP_TIMEOUT, |g| g.max(DEFAULT_STOP_TIMEOUT)),
        }
    }

    /// The enabled instance with the longest `shutdown_grace` in its table, and that grace.
    fn longest_shutdown_grace(&self) -> Option<(&str, Duration)> {
        self.instances
            .iter()
            .filter(|i| i.enabled)
            .filter_map(|i| {
                let grace = i.config.get("shutdown_grace")?.as_str()?;
                let grace = humantime::parse_duration(grace).ok()?;
                Some((i.name.as_str(), grace))
            })
            .max_by_key(|(_, g)| *g)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_duration("tombstone_ttl", Some(self.tombstone_ttl))?;
        check_duration("stop_timeout", self.stop_timeout)?;
        if let (Some(stop), Some((instance, grace))) =
            (self.stop_timeout, self.longest_shutdown_grace())
            && stop <= grace
        {
            return Err(ConfigError::Semantic(format!(
                "stop_timeout ({}) must be longer than instance `{instance}`'s shutdown_grace ({}): the host would stop it before its grace ends (leave stop_timeout out to have it {} longer than the longest grace)",
                humantime::format_duration(stop),
                humantime::format_duration(grace),
                humantime::format_duration(STOP_MARGIN),
            )));
        }
        if let Some(http) = &self.http {
            http.check()?;
        }
        let d = &self.defaults;
        for (key, value) in [
            ("interval", d.interval),
            ("jitter", d.jitter),
            ("timeout", d.timeout),
            ("backoff_initial", d.backoff_initial),
            ("backoff_max", d.backoff_max),
        ] {
            check_duration(&format!("defaults.{key}"), value)?;
        }
        if d.max_entities == Some(0) {
            return Err(ConfigError::Semantic(
                "defaults.max_entities must be at least 1".into(),
            ));
        }
        if !cfg!(feature = "amqp") && !self.outputs.amqp.is_empty() {
            return Err(ConfigError::Semantic(NO_AMQP.into()));
        }
        if !cfg!(feature = "persist") && self.baseline_file.is_some() {
            return Err(ConfigError::Semantic(NO_PERSIST.into()));
        }
        let mut outputs = HashSet::new();
        for output in &self.outputs.amqp {
            #[cfg(feature = "amqp")]
            output
                .check()
                .map_err(|e| ConfigError::Semantic(e.to_string()))?;
            for (key, value) in [
                ("confirm_timeout", output.confirm_timeout),
                ("connect_timeout", output.connect_timeout),
                ("reconnect_initial", output.reconnect_initial),
                ("reconnect_max", output.reconnect_max),
                ("drain_timeout", output.drain_timeout),
            ] {
                check_duration(&format!("output `{}`: {key}", output.name), Some(value))?;
            }
            if !outputs.insert(output.name.as_str()) {
                return Err(ConfigError::Semantic(format!(
                    "outputs.amqp: the name `{}` is used twice; output names must be unique",
                    output.name
                )));
            }
        }
        let mut names = HashSet::new();
        for inst in &self.instances {
            if inst.name.is_empty() {
                return Err(ConfigError::Semantic(
                    "instances: an instance has an empty `name`".into(),
                ));
            }
            if !names.insert(inst.name.as_str()) {
                return Err(ConfigError::Semantic(format!(
                    "instances: the name `{}` is used twice; instance names must be unique",
                    inst.name
                )));
            }
            for (key, value) in [
                ("interval", inst.interval),
                ("jitter", inst.jitter),
                ("timeout", inst.timeout),
                ("backoff_initial", inst.backoff_initial),
                ("backoff_max", inst.backoff_max),
                ("heartbeat_interval", inst.heartbeat_interval),
                ("heartbeat_timeout", inst.heartbeat_timeout),
            ] {
                check_duration(&format!("instance `{}`: {key}", inst.name), value)?;
            }
            if inst.max_entities == Some(0) {
                return Err(ConfigError::Semantic(format!(
                    "instance `{}`: max_entities must be at least 1",
                    inst.name
                )));
            }
            if !inst.config.is_object() {
                return Err(ConfigError::Semantic(format!(
                    "instance `{}`: `config` must be a table",
                    inst.name
                )));
            }
            let s = inst
                .timing()
                .over(&self.defaults.over(&Schedule::default()));
            if inst.isolation == Isolation::InProcess
                && (inst.memory_limit.is_some()
                    || inst.snapshot_limit.is_some()
                    || inst.heartbeat_interval.is_some()
                    || inst.heartbeat_timeout.is_some()
                    || inst.child_program.is_some())
            {
                return Err(ConfigError::Semantic(format!(
                    "instance `{}`: `memory_limit`, `snapshot_limit`, `heartbeat_interval`, `heartbeat_timeout` and `child_program` apply only to `isolation = \"process\"`",
                    inst.name
                )));
            }
            if inst.snapshot_limit.is_some_and(|l| l.0 == 0) {
                return Err(ConfigError::Semantic(format!(
                    "instance `{}`: `snapshot_limit` must be more than zero",
                    inst.name
                )));
            }
            if inst.heartbeat_interval.is_some_and(|d| d.is_zero())
                || inst.heartbeat_timeout.is_some_and(|d| d.is_zero())
            {
                return Err(ConfigError::Semantic(format!(
                    "instance `{}`: `heartbeat_interval` and `heartbeat_timeout` must be more than zero",
                    inst.name
                )));
            }
            let beat = inst
                .heartbeat_interval
                .unwrap_or(crate::isolation::DEFAULT_HEARTBEAT_INTERVAL);
            let silence = inst
                .heartbeat_timeout
                .unwrap_or(crate::isolation::DEFAULT_HEARTBEAT_TIMEOUT);
            if silence <= beat {
                return Err(ConfigError::Semantic(format!(
                    "instance `{}`: `heartbeat_timeout` ({silence:?}) must be longer than `heartbeat_interval` ({beat:?})",
                    inst.name
                )));
            }
            if s.interval.is_zero() || s.timeout.is_zero() {
                return Err(ConfigError::Semantic(format!(
                    "instance `{}`: `interval` and `timeout` must be more than zero",
                    inst.name
                )));
            }
        }
        Ok(())
    }

    /// The resolved timing of `inst`.
    pub fn schedule(&self, inst: &InstanceConfig) -> Schedule {
        inst.timing()
            .over(&self.defaults.over(&Schedule::default()))
    }

    /// The library path of `inst`.
    pub fn library_path(&self, inst: &InstanceConfig) -> PathBuf {
        if inst.library.is_absolute() {
            inst.library.clone()
        } else {
            self.plugins_dir.join(&inst.library)
        }
    }
}

/// Why an AMQP output is refused in a build without the `amqp` feature.
pub(crate) const NO_AMQP: &str =
    "outputs.amqp: this build of synchronizer has no AMQP output (cargo feature `amqp`)";
/// Why a durable baseline is refused in a build without the `persist` feature.
pub(crate) const NO_PERSIST: &str =
    "baseline_file: this build of synchronizer has no durable baseline (cargo feature `persist`)";

/// A log level (`off`, `error`, `warn`, `info`, `debug`, `trace`), parsed once, when the
/// configuration is read. The default is `info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLevel(pub tracing::level_filters::LevelFilter);

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel(tracing::level_filters::LevelFilter::INFO)
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(LogLevel)
            .map_err(|_| format!("`{s}` is not a level (off, error, warn, info, debug, trace)"))
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_instances_override() {
        let c = Config::from_toml(
            r#"
            [defaults]
            interval = "10s"
            [[instances]]
            name = "a"
            library = "liba.so"
            timeout = "3s"
            [instances.config]
            x = 1
            "#,
        )
        .unwrap();
        let s = c.schedule(&c.instances[0]);
        assert_eq!(s.interval, Duration::from_secs(10));
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert_eq!(c.instances[0].config, serde_json::json!({"x": 1}));
    }

    #[test]
    fn a_typo_names_the_key() {
        let err = Config::from_toml("[defaults]\nintervall = \"1s\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("intervall"), "{msg}");
        let err = Config::from_toml("[defaults]\ninterval = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("interval"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own signature
    fn the_environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "sync.toml",
                "plugins_dir = \"p\"\n[defaults]\ninterval = \"10s\"\n",
            )?;
            jail.set_env("SYNCHRONIZER_DEFAULTS__INTERVAL", "3s");
            jail.set_env("SYNCHRONIZER_PLUGIN_LOG_LEVEL", "debug");
            let c = Config::load(&jail.directory().join("sync.toml")).map_err(|e| e.to_string())?;
            assert_eq!(c.defaults.interval, Some(Duration::from_secs(3)));
            assert_eq!(
                c.plugin_log_level,
                LogLevel(tracing::level_filters::LevelFilter::DEBUG)
            );
            assert_eq!(
                c.plugins_dir,
                jail.directory().join("p"),
                "relative to the file"
            );
            jail.set_env("SYNCHRONIZER_DEFAULTS__INTERVAL", "soon");
            let err = Config::load(&jail.directory().join("sync.toml")).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("DEFAULTS.INTERVAL") && msg.contains("SYNCHRONIZER_"),
                "{msg}"
            );
            Ok(())
        });
    }

    #[test]
    fn isolation_defaults_to_in_process_and_process_options_need_process_mode() {
        let c = Config::from_toml(
            "[[instances]]\nname = \"a\"\nlibrary = \"x\"\n[[instances]]\nname = \"b\"\nlibrary = \"x\"\nisolation = \"process\"\nmemory_limit = \"512MiB\"\nheartbeat_timeout = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(c.instances[0].isolation, Isolation::InProcess);
        assert_eq!(c.instances[1].isolation, Isolation::Process);
        assert_eq!(c.instances[1].memory_limit, Some(ByteSize(512 << 20)));
        assert_eq!(
            c.instances[1].heartbeat_timeout,
            Some(Duration::from_secs(2))
        );
        let err = Config::from_toml(
            "[[instances]]\nname = \"a\"\nlibrary = \"x\"\nmemory_limit = \"1GiB\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("only to `isolation"), "{err}");
        let err = Config::from_toml(
            "[[instances]]\nname = \"a\"\nlibrary = \"x\"\nisolation = \"sandbox\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("isolation"), "{err}");
        let err = Config::from_toml(
            "[[instances]]\nname = \"a\"\nlibrary = \"x\"\nisolation = \"process\"\nmemory_limit = \"lots\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("memory_limit"), "{err}");
    }

    #[test]
    fn the_example_file_parses() {
        let c = Config::from_toml(include_str!("../../examples/synchronizer.toml")).unwrap();
        assert!(
            c.instances
                .iter()
                .any(|i| i.isolation == Isolation::Process)
        );
    }

    #[test]
    fn the_example_files_commented_output_parses_as_documented() {
        // The example keeps its AMQP output commented out (it needs a broker): the same
        // lines, uncommented, are a valid output with the documented defaults.
        let example = include_str!("../../examples/synchronizer.toml");
        let start = example
            .find("# [[outputs.amqp]]")
            .expect("the example documents [[outputs.amqp]]");
        let table: String = example[start..]
            .lines()
            .take_while(|l| l.starts_with("# "))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let c = Config::from_toml(&table).unwrap();
        let o = &c.outputs.amqp[0];
        assert_eq!(o.name, "amqp");
        assert_eq!(o.exchange, "synchronizer");
        assert_eq!(o.max_unconfirmed, 1024);
        assert_eq!(o.drain_timeout, Duration::from_secs(10));
        assert!(!format!("{c:?}").contains("PASSWORD"), "{c:?}");
    }

    #[test]
    fn an_output_with_a_bad_url_or_a_repeated_name_is_refused() {
        let err = Config::from_toml("[[outputs.amqp]]\nurl = \"rabbit://u:secret@h/\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("output `amqp`: url"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = Config::from_toml(
            "[[outputs.amqp]]\nurl = \"amqp://h/\"\n[[outputs.amqp]]\nurl = \"amqp://g/\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("used twice"), "{err}");
        let err = Config::from_toml("[[outputs.amqp]]\nurl = \"amqp://h/\"\nexchnage = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("exchnage"), "{err}");
    }

    #[test]
    fn durations_longer_than_a_year_are_refused_naming_the_key() {
        let base = "[[instances]]\nname = \"a\"\nlibrary = \"x\"\n";
        for (toml, key) in [
            (
                "[defaults]\ninterval = \"10000years\"\n".to_owned(),
                "defaults.interval",
            ),
            ("tombstone_ttl = \"366days\"\n".to_owned(), "tombstone_ttl"),
            (
                format!("{base}timeout = \"2years\"\n"),
                "instance `a`: timeout",
            ),
            (
                format!("{base}backoff_max = \"400days\"\n"),
                "instance `a`: backoff_max",
            ),
            (
                format!("{base}isolation = \"process\"\nheartbeat_timeout = \"10000years\"\n"),
                "instance `a`: heartbeat_timeout",
            ),
            (
                "[[outputs.amqp]]\nurl = \"amqp://h/\"\nconfirm_timeout = \"10000years\"\n"
                    .to_owned(),
                "output `amqp`: confirm_timeout",
            ),
        ] {
            let err = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(
                err.contains(key)
                    && err.contains("longer than the longest duration accepted (365days)"),
                "{toml}: {err}"
            );
        }
        // A year is accepted.
        let c = Config::from_toml(&format!("{base}interval = \"365days\"\n")).unwrap();
        assert_eq!(c.schedule(&c.instances[0]).interval, MAX_DURATION);
    }

    #[test]
    fn snapshot_limit_is_a_size_for_process_mode() {
        let process = "[[instances]]\nname = \"a\"\nlibrary = \"x\"\nisolation = \"process\"\n";
        let c = Config::from_toml(&format!("{process}snapshot_limit = \"1GiB\"\n")).unwrap();
        assert_eq!(c.instances[0].snapshot_limit, Some(ByteSize(1 << 30)));
        let err = Config::from_toml(&format!("{process}snapshot_limit = 0\n")).unwrap_err();
        assert!(err.to_string().contains("more than zero"), "{err}");
        let err = Config::from_toml(
            "[[instances]]\nname = \"a\"\nlibrary = \"x\"\nsnapshot_limit = \"1GiB\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("snapshot_limit"), "{err}");
    }

    #[test]
    fn environment_values_figment_would_misread_are_refused() {
        for bad in ["\"é\\n\"", "\"éé\\n\"", "[\"é\\t\"]", "{a=\"é\\u0041\"}"] {
            let err = check_env_value("SYNCHRONIZER_X", bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("SYNCHRONIZER_X"), "{bad}: {err}");
        }
        for ok in ["é", "é\n", "\"é\"", "\"\\n\"", "\\é\"", "é\"\\n\"", "debug"] {
            assert!(check_env_value("SYNCHRONIZER_X", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own signature
    fn a_multi_byte_environment_value_is_an_error_not_a_panic() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("sync.toml", "")?;
            jail.set_env("SYNCHRONIZER_PLUGIN_LOG_LEVEL", "\"é\\n\"");
            let err = Config::load(&jail.directory().join("sync.toml")).unwrap_err();
            assert!(
                err.to_string().contains("SYNCHRONIZER_PLUGIN_LOG_LEVEL"),
                "{err}"
            );
            // A quoted value figment reads correctly still works.
            jail.set_env("SYNCHRONIZER_PLUGIN_LOG_LEVEL", "\"debug\"");
            let c = Config::load(&jail.directory().join("sync.toml")).map_err(|e| e.to_string())?;
            assert_eq!(
                c.plugin_log_level,
                LogLevel(tracing::level_filters::LevelFilter::DEBUG)
            );
            Ok(())
        });
    }

    /// Run by `scripts/check-light-embed.sh`, in a build without the optional parts.
    #[cfg(not(any(feature = "amqp", feature = "persist")))]
    #[test]
    fn a_part_left_out_of_the_build_is_refused_naming_its_feature() {
        let err = Config::from_toml("[[outputs.amqp]]\nurl = \"amqp://h/\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo feature `amqp`"), "{err}");
        let err = Config::from_toml("baseline_file = \"b.redb\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo feature `persist`"), "{err}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let err = Config::from_toml(
            "[[instances]]\nname = \"a\"\nlibrary = \"x\"\n[[instances]]\nname = \"a\"\nlibrary = \"y\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("used twice"), "{err}");
    }

    #[test]
    fn the_stop_timeout_covers_every_shutdown_grace() {
        let bus = |grace: &str| {
            format!(
                "[[instances]]\nname = \"bus\"\nlibrary = \"x\"\n[instances.config]\nshutdown_grace = \"{grace}\"\n"
            )
        };
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.stop_timeout(), DEFAULT_STOP_TIMEOUT);
        let c = Config::from_toml(&bus("2s")).unwrap();
        assert_eq!(c.stop_timeout(), DEFAULT_STOP_TIMEOUT);
        let c = Config::from_toml(&bus("30s")).unwrap();
        assert_eq!(c.stop_timeout(), Duration::from_secs(35));
        let c = Config::from_toml(&format!("stop_timeout = \"31s\"\n{}", bus("30s"))).unwrap();
        assert_eq!(c.stop_timeout(), Duration::from_secs(31));
        let err = Config::from_toml(&format!("stop_timeout = \"20s\"\n{}", bus("30s")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "stop_timeout (20s) must be longer than instance `bus`'s shutdown_grace (30s)"
            ),
            "{err}"
        );
        // A disabled instance does not count.
        let disabled =
            bus("30s").replace("library = \"x\"\n", "library = \"x\"\nenabled = false\n");
        let c = Config::from_toml(&disabled).unwrap();
        assert_eq!(c.stop_timeout(), DEFAULT_STOP_TIMEOUT);
    }

    #[test]
    fn http_limits_have_defaults_and_nonsense_is_refused() {
        let c = Config::from_toml("[http]\n").unwrap();
        let h = c.http.unwrap();
        assert_eq!(h, HttpConfig::default());
        assert_eq!(h.backlog, 1024);
        assert_eq!(h.header_timeout, Duration::from_secs(10));
        let c = Config::from_toml(
            "[http]\nheader_timeout = \"2s\"\nidle_timeout = \"5s\"\nmax_connections = 10\nreserved_connections = 0\n",
        )
        .unwrap();
        let h = c.http.unwrap();
        assert_eq!(
            (
                h.header_timeout,
                h.idle_timeout,
                h.max_connections,
                h.reserved_connections
            ),
            (Duration::from_secs(2), Duration::from_secs(5), 10, 0)
        );
        for (toml, says) in [
            (
                "header_timeout = \"0s\"",
                "http.header_timeout must be more than zero",
            ),
            (
                "idle_timeout = \"0s\"",
                "http.idle_timeout must be more than zero",
            ),
            (
                "tcp_keepalive = \"0s\"",
                "http.tcp_keepalive must be more than zero",
            ),
            (
                "tcp_keepalive = \"1s\"",
                "http.tcp_keepalive must be at least 3s",
            ),
            (
                "header_timeout = \"2m\"",
                "must not be longer than idle_timeout",
            ),
            (
                "idle_timeout = \"400days\"\nheader_timeout = \"1s\"",
                "http.idle_timeout: 1year 1month 4days 7h 26m 24s is longer than the longest duration",
            ),
            ("backlog = 0", "http.backlog must be between 1"),
            (
                "max_connections = 0",
                "http.max_connections must be at least 1",
            ),
            (
                "max_header_bytes = 100",
                "http.max_header_bytes must be at least 8192",
            ),
            ("max_headers = 0", "http.max_headers must be at least 1"),
            ("max_conections = 5", "found `max_conections`"),
        ] {
            let err = Config::from_toml(&format!("[http]\n{toml}\n")).unwrap_err();
            assert!(err.to_string().contains(says), "{toml}: {err}");
        }
    }
}
