//! The collector: fetches the status pages of one Nagios over HTTP(S), parses them with
//! [`crate::html`] or [`crate::json`], and turns every alarm into an entity of type
//! `nagios` (category alarm) that is `on` the resource its host maps to
//! ([`crate::rules`]). Services in OK and hosts UP are absent from the snapshot, so an
//! alarm that clears is reported deleted.
//!
//! Nagios names are local to one Nagios server, so every alarm's native id is scoped
//! ("Keys" in the SDK docs): `<scope>/<host>;<service>`, or `<scope>/<host>` for a host's
//! own state, where `scope` is the instance's config option of that name and defaults to
//! the instance's name. Two instances reading Nagios servers that monitor hosts of the
//! same name report distinct alarms. The relation `on` points at the resource's key as
//! the rules build it, unscoped (`nova.host:compute-1`).
//!
//! A page that is not a complete status answer fails the snapshot: the host deletes
//! nothing and retries with backoff. Errors name the URL and the HTTP status; the
//! password is never logged.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use synchronizer_plugin_api::{
    Context, Entity, Error, Health, Plugin, PluginInfo, PluginKind, Relation, Snapshot,
};

use std::sync::Mutex;

use crate::model::{DateFormat, Pending, ServiceStatus};
use crate::rules::{HostRules, HostRulesConfig, RuleError};

/// Which status page to read.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Nagios 4's `statusjson.cgi` (servicelist and hostlist queries).
    #[default]
    Json,
    /// The `status.cgi?host=all&limit=0` HTML page of Nagios 3 and 4 (what Vitrage reads).
    Html,
}

/// One Nagios server.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The CGI base URL, e.g. `http://nagios.example.org/cgi-bin/nagios4`.
    pub url: String,
    /// `json` (default) or `html`.
    #[serde(default)]
    pub source: Source,
    /// Basic-auth user.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password (or use `password_file`).
    #[serde(default)]
    pub password: Option<String>,
    /// A file whose first line is the basic-auth password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Per-request timeout (default 10 s).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A PEM file of extra CA certificates for HTTPS.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (testing only).
    #[serde(default)]
    pub insecure: bool,
    /// How Nagios host names map to the resources alarms are `on` (default: no rules,
    /// `nova.host:<host name>`). Not with `vitrage_conf`.
    #[serde(default)]
    pub host_rules: Option<HostRulesConfig>,
    /// Vitrage's `nagios_conf.yaml`, read and matched as Vitrage does (prefix patterns,
    /// hosts that match no entry dropped) instead of `host_rules`.
    #[serde(default)]
    pub vitrage_conf: Option<PathBuf>,
    /// PENDING services (no result yet): `alarm` (default, as Vitrage) or `skip`.
    #[serde(default)]
    pub pending: Pending,
    /// statusjson.cgi's status data older than this (`last_data_update` behind
    /// `query_time`) makes the instance degraded and its snapshot delete nothing;
    /// default 10 min, `0s` or `none`: not checked.
    #[serde(default = "default_max_status_age", deserialize_with = "max_age")]
    pub max_status_age: Option<Duration>,
    /// How long an idle keep-alive connection is kept for the next poll (default 4 s:
    /// below Apache's `KeepAliveTimeout` of 5 s). `0s`: a new connection every request.
    #[serde(default = "default_pool_idle", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Nagios' `date_format` (status.cgi's times): `us` (default) or `euro`; the ISO
    /// forms are recognised anyway.
    #[serde(default)]
    pub date_format: DateFormat,
    /// The name of this Nagios in the alarms' native ids (`<scope>/<host>;<service>`);
    /// default: the instance's name. Set it to keep the keys when renaming the instance.
    /// Must not be empty nor contain `/`.
    #[serde(default)]
    pub scope: Option<String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_status_age() -> Option<Duration> {
    Some(Duration::from_secs(600))
}

fn default_pool_idle() -> Duration {
    Duration::from_secs(4)
}

/// `max_status_age`: a humantime duration, `0s` or `none` for no check.
fn max_age<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let age = humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "max_status_age: `{text}` is not a duration (or `none`): {e}"
        ))
    })?;
    Ok((!age.is_zero()).then_some(age))
}

/// The plugin instance.
pub struct Nagios {
    client: reqwest::Client,
    base: String,
    source: Source,
    auth: Option<(String, String)>,
    rules: HostRules,
    scope: String,
    pending: Pending,
    max_status_age: Option<Duration>,
    date_format: DateFormat,
    /// Why the last snapshot's status data was stale (`None`: fresh, or not checked).
    stale: Mutex<Option<String>>,
}

/// The entity type of Nagios alarms (Vitrage's name).
pub const ENTITY_TYPE: &str = "nagios";

/// What a valid configuration means, found without side effects (the files it names
/// are read, nothing else): what `validate` and `new` both run.
pub struct Checked {
    /// The CGI base URL, without a trailing `/`.
    base: String,
    /// The compiled host rules.
    rules: HostRules,
    /// The scope of the alarms' ids.
    scope: String,
    /// Basic-auth user and password.
    auth: Option<(String, String)>,
    /// The certificates of `ca_file`.
    roots: Vec<reqwest::Certificate>,
}

impl Checked {
    /// Checks `config` of instance `instance`; each error names its field (`url`,
    /// `host_rules.rules[1].pattern`, `scope`, `password_file`, ...).
    pub fn of(config: &Config, instance: &str) -> Result<Self, Error> {
        let url = reqwest::Url::parse(&config.url).map_err(|e| {
            Error::config_field("url", format!("`{}` is not a URL: {e}", config.url))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::config_field("url", "must be an http or https URL"));
        }
        let rules = match (&config.host_rules, &config.vitrage_conf) {
            (Some(_), Some(_)) => {
                return Err(Error::config_field(
                    "vitrage_conf",
                    "set `host_rules` or `vitrage_conf`, not both",
                ));
            }
            (_, Some(path)) => vitrage_rules(path)?,
            (rules, None) => HostRules::new(&rules.clone().unwrap_or_default()).map_err(|e| {
                let (field, message) = e.field_and_message();
                Error::config_field(format!("host_rules.{field}"), message)
            })?,
        };
        let scope = match &config.scope {
            Some(scope) => {
                check_scope(scope).map_err(|e| Error::config_field("scope", e))?;
                scope.clone()
            }
            None => {
                check_scope(instance).map_err(|e| {
                    Error::config_field(
                        "scope",
                        format!(
                            "not set, and its default, the instance's name, is refused ({e}): set `scope`"
                        ),
                    )
                })?;
                instance.to_owned()
            }
        };
        let password = match (&config.password, &config.password_file) {
            (Some(_), Some(_)) => {
                return Err(Error::config_field(
                    "password_file",
                    "set `password` or `password_file`, not both",
                ));
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    Error::config_field(
                        "password_file",
                        format!("cannot read {}: {e}", file.display()),
                    )
                })?;
                Some(text.lines().next().unwrap_or_default().to_owned())
            }
            (None, None) => None,
        };
        let auth = match (&config.username, password) {
            (Some(u), p) => Some((u.clone(), p.unwrap_or_default())),
            (None, Some(_)) => {
                return Err(Error::config_field(
                    "username",
                    "is required with a password",
                ));
            }
            (None, None) => None,
        };
        if config.timeout.is_zero() {
            return Err(Error::config_field("timeout", "must be more than zero"));
        }
        let mut roots = Vec::new();
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                Error::config_field("ca_file", format!("cannot read {}: {e}", ca.display()))
            })?;
            roots = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::config_field("ca_file", format!("{}: {e}", ca.display())))?;
            if roots.is_empty() {
                return Err(Error::config_field(
                    "ca_file",
                    format!("{}: no PEM certificate in the file", ca.display()),
                ));
            }
        }
        Ok(Checked {
            base: config.url.trim_end_matches('/').to_owned(),
            rules,
            scope,
            auth,
            roots,
        })
    }
}

impl Plugin for Nagios {
    type Config = Config;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "nagios",
            version: env!("CARGO_PKG_VERSION"),
            description: "Nagios service and host alarms (statusjson.cgi or status.cgi)",
            entity_types: &[ENTITY_TYPE],
            kind: PluginKind::Collector,
        }
    }

    fn sample_config() -> &'static str {
        include_str!("../sample.toml")
    }

    /// Everything `new` checks ([`Checked::of`]): the URL, the host rules, the scope,
    /// the credentials (`password_file` is read), the timeout and `ca_file` (read).
    fn validate(config: &Config, ctx: &Context) -> Result<(), Error> {
        Checked::of(config, &ctx.instance).map(drop)
    }

    fn new(config: Config, ctx: &Context) -> Result<Self, Error> {
        let Checked {
            base,
            rules,
            scope,
            auth,
            roots,
        } = Checked::of(&config, &ctx.instance)?;
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .pool_idle_timeout(config.pool_idle_timeout)
            .user_agent(concat!("synchronizer-nagios/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(config.insecure);
        for c in roots {
            builder = builder.add_root_certificate(c);
        }
        let client = builder
            .build()
            .map_err(|e| Error::failed(format!("HTTP client: {e}")))?;
        tracing::info!(url = %base, source = ?config.source, scope = %scope, auth = auth.is_some(), "nagios collector ready");
        Ok(Nagios {
            client,
            base,
            source: config.source,
            auth,
            rules,
            scope,
            pending: config.pending,
            max_status_age: config.max_status_age,
            date_format: config.date_format,
            stale: Mutex::new(None),
        })
    }

    async fn snapshot(&self, _types: &[String]) -> Result<Snapshot, Error> {
        let mut stale = None;
        let statuses = match self.source {
            Source::Html => {
                let url = format!("{}/status.cgi?host=all&limit=0", self.base);
                let (body, date) = self.get(&url).await?;
                let mut statuses = crate::html::parse_status_page(&body)
                    .map_err(|e| Error::failed(format!("{url}: {e}")))?;
                let utc = date.unwrap_or_else(unix_now);
                let offset = crate::html::last_updated(&body)
                    .and_then(|local| crate::html::utc_offset(local, utc));
                crate::html::complete_fields(&mut statuses, self.date_format, offset);
                statuses
            }
            Source::Json => {
                let url = format!(
                    "{}/statusjson.cgi?query=servicelist&details=true",
                    self.base
                );
                let (body, _) = self.get(&url).await?;
                let services = crate::json::parse_servicelist(&body)
                    .map_err(|e| Error::failed(format!("{url}: {e}")))?;
                stale = stale.or(self.staleness(&url, &services));
                let mut all = services.entries;
                let url = format!("{}/statusjson.cgi?query=hostlist&details=true", self.base);
                let (body, _) = self.get(&url).await?;
                let hosts = crate::json::parse_hostlist(&body)
                    .map_err(|e| Error::failed(format!("{url}: {e}")))?;
                stale = stale.or(self.staleness(&url, &hosts));
                all.extend(hosts.entries);
                all
            }
        };
        let snapshot = Snapshot::complete(self.entities(&statuses));
        let snapshot = match &stale {
            Some(reason) => {
                tracing::warn!(url = %self.base, %reason, "nagios status data is stale: nothing is deleted");
                snapshot.mark_incomplete(ENTITY_TYPE, reason)
            }
            None => snapshot,
        };
        if let Ok(mut last) = self.stale.lock() {
            *last = stale;
        }
        Ok(snapshot)
    }

    /// Unhealthy (the instance is shown degraded) while the last snapshot's status data
    /// was older than `max_status_age`.
    async fn health(&self) -> Health {
        match self.stale.lock().ok().and_then(|s| s.clone()) {
            Some(reason) => Health::unhealthy(reason),
            None => Health::healthy(),
        }
    }
}

impl Nagios {
    /// GETs `url`: the body and the answer's `Date` (Unix seconds). A request that fails
    /// because the server closed the connection before answering (a keep-alive
    /// connection it timed out as the request went out: "connection closed before
    /// message completed") is sent once more, on a new connection.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<i64>), Error> {
        match self.get_once(url).await {
            Err(e) if is_closed_connection(&e) => {
                drop(e);
                tracing::debug!(%url, "connection closed by the server before its answer: retrying once");
                self.get_once(url).await
            }
            other => other,
        }
        .map_err(|e| match e {
            Failure::Http(e) => Error::failed(format!("GET {url}: {}", describe(&e))),
            Failure::Body(e) => Error::failed(format!(
                "GET {url}: reading the body: {}",
                describe(&e)
            )),
            Failure::Status(status) => {
                if status == reqwest::StatusCode::UNAUTHORIZED
                    || status == reqwest::StatusCode::FORBIDDEN
                {
                    Error::failed(format!(
                        "GET {url}: HTTP {status}: check the instance's username and password"
                    ))
                } else {
                    Error::failed(format!("GET {url}: HTTP {status}"))
                }
            }
        })
    }

    async fn get_once(&self, url: &str) -> Result<(Vec<u8>, Option<i64>), Failure> {
        let mut req = self.client.get(url);
        if let Some((user, password)) = &self.auth {
            req = req.basic_auth(user, Some(password));
        }
        let resp = req.send().await.map_err(Failure::Http)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Failure::Status(status));
        }
        let date = resp
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::model::parse_http_date);
        let body = resp.bytes().await.map_err(Failure::Body)?;
        Ok((body.to_vec(), date))
    }

    /// Why a statusjson.cgi answer's data is too old to delete on, if it is.
    fn staleness(&self, url: &str, list: &crate::json::StatusList) -> Option<String> {
        let max = self.max_status_age?;
        let updated = list.last_data_update?;
        let now = list
            .query_time
            .unwrap_or_else(|| unix_now().saturating_mul(1000));
        let age_ms = now.saturating_sub(updated);
        let age = Duration::from_millis(u64::try_from(age_ms).ok()?);
        (age > max).then(|| {
            format!(
                "{url}: Nagios' status data is {} old (last_data_update {}, max_status_age {}): Nagios is not updating it; alarms are kept, none deleted",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                crate::model::CheckTime::UnixMillis(updated),
                humantime::format_duration(max),
            )
        })
    }

    /// The alarm entities of a status list.
    pub fn entities(&self, statuses: &[ServiceStatus]) -> Vec<Entity> {
        to_entities_with(&self.scope, &self.rules, statuses, self.pending)
    }
}

/// The rules of a Vitrage `nagios_conf.yaml` (read now); errors name `vitrage_conf`.
fn vitrage_rules(path: &std::path::Path) -> Result<HostRules, Error> {
    let field = |message: String| Error::config_field("vitrage_conf", message);
    let text = std::fs::read_to_string(path)
        .map_err(|e| field(format!("cannot read {}: {e}", path.display())))?;
    let mappings = crate::vitrage::parse_vitrage_conf(&text)
        .map_err(|e| field(format!("{}: {e}", path.display())))?;
    HostRules::vitrage(&mappings).map_err(|e| match e {
        RuleError::Regex {
            index,
            pattern,
            message,
        } => field(format!(
            "{}: nagios[{index}].nagios_host {pattern:?}: invalid regular expression: {}",
            path.display(),
            crate::rules::one_line(&message)
        )),
        other => field(format!("{}: {other}", path.display())),
    })
}

/// Why a scope cannot be used: empty, or with a `/` (which ends the scope in an id).
fn check_scope(scope: &str) -> Result<(), &'static str> {
    if scope.is_empty() {
        Err("it is empty")
    } else if scope.contains('/') {
        Err("it contains `/`")
    } else {
        Ok(())
    }
}

/// The native id of an alarm of Nagios `scope`: `<scope>/<local id>`, the local id being
/// [`ServiceStatus::native_id`] (`host;service` or `host`). The scope has no `/`, so the
/// first `/` ends it and two different (scope, local id) pairs never share an id.
pub fn alarm_id(scope: &str, local_id: &str) -> String {
    let mut id = String::with_capacity(scope.len() + 1 + local_id.len());
    id.push_str(scope);
    id.push('/');
    id.push_str(local_id);
    id
}

/// The alarm entities of a status list of the Nagios named `scope`, related by `rules`.
/// The volatile parts of a status (the duration text, the last check time) are kept out
/// of the content, so that an alarm is updated only when its state, output or resource
/// changes.
pub fn to_entities(scope: &str, rules: &HostRules, statuses: &[ServiceStatus]) -> Vec<Entity> {
    to_entities_with(scope, rules, statuses, Pending::default())
}

/// [`to_entities`] with the `pending` option.
pub fn to_entities_with(
    scope: &str,
    rules: &HostRules,
    statuses: &[ServiceStatus],
    pending: Pending,
) -> Vec<Entity> {
    rules
        .map_alarms_with(statuses, pending)
        .into_iter()
        .map(|a| {
            let s = a.status;
            let mut e = Entity::alarm(ENTITY_TYPE, &alarm_id(scope, &a.native_id))
                .with_name(s.name())
                .with_state(s.state.as_str())
                .with_relation(Relation::to("on", a.resource_key))
                .with_properties(serde_json::json!({
                    "host": s.host,
                    "service": s.service,
                    "output": s.output,
                    "state_type": s.state_type.map(|t| format!("{t:?}").to_lowercase()),
                    "attempt": s.attempt.map(|a| a.to_string()),
                }));
            if let Some(ms) = s.last_check.as_ref().and_then(|c| c.unix_millis()) {
                e = e.with_source_updated_micros(ms.saturating_mul(1000));
            }
            e
        })
        .collect()
}

/// Why one request failed.
enum Failure {
    Http(reqwest::Error),
    Body(reqwest::Error),
    Status(reqwest::StatusCode),
}

/// Whether a request failed because the server closed the connection before its answer
/// (hyper's "connection closed before message completed", or the connection reset).
fn is_closed_connection(failure: &Failure) -> bool {
    let e = match failure {
        Failure::Http(e) | Failure::Body(e) => e,
        Failure::Status(_) => return false,
    };
    if e.is_timeout() || e.is_connect() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) {
                return true;
            }
        }
        source = s.source();
    }
    false
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AlarmState;

    fn nagios(instance: &str, config: serde_json::Value) -> Result<Nagios, Error> {
        let config: Config = serde_json::from_value(config).map_err(Error::config)?;
        Nagios::new(
            config,
            &Context {
                instance: instance.into(),
            },
        )
    }

    fn ids(n: &Nagios) -> Vec<(String, String)> {
        let statuses = vec![
            ServiceStatus::new("compute-1", Some("CPU load".into()), AlarmState::Warning),
            ServiceStatus::new("compute-2", None, AlarmState::Down),
        ];
        n.entities(&statuses)
            .iter()
            .map(|e| (e.key(), e.relations()[0].other().to_owned()))
            .collect()
    }

    #[test]
    fn alarm_ids_are_scoped_by_the_instance_name_and_relations_are_not() {
        let n = nagios(
            "nagios-east",
            serde_json::json!({"url": "http://n/cgi-bin"}),
        )
        .unwrap();
        assert_eq!(
            ids(&n),
            vec![
                (
                    "nagios:nagios-east/compute-1;CPU load".to_owned(),
                    "nova.host:compute-1".to_owned()
                ),
                (
                    "nagios:nagios-east/compute-2".to_owned(),
                    "nova.host:compute-2".to_owned()
                ),
            ]
        );
        // The default is the SDK's scoping.
        let ctx = Context {
            instance: "nagios-east".into(),
        };
        assert_eq!(
            n.entities(&[ServiceStatus::new(
                "h",
                Some("s".into()),
                AlarmState::Critical
            )])[0]
                .id(),
            ctx.scoped_id("h;s")
        );
    }

    #[test]
    fn a_configured_scope_replaces_the_instance_name() {
        let n = nagios(
            "renamed",
            serde_json::json!({"url": "http://n/cgi-bin", "scope": "nagios-east"}),
        )
        .unwrap();
        assert_eq!(ids(&n)[0].0, "nagios:nagios-east/compute-1;CPU load");
        let other = nagios(
            "renamed",
            serde_json::json!({"url": "http://n/cgi-bin", "scope": "nagios-west"}),
        )
        .unwrap();
        assert_ne!(ids(&n), ids(&other), "two scopes, two keys per alarm");
    }

    #[test]
    fn scopes_that_would_make_ids_ambiguous_are_refused() {
        let e = nagios("n", serde_json::json!({"url": "http://n/", "scope": "a/b"}))
            .err()
            .expect("refused");
        assert_eq!(e.kind(), synchronizer_plugin_api::ErrorKind::Config);
        assert_eq!((e.field(), e.message()), (Some("scope"), "it contains `/`"));
        let e = nagios("n", serde_json::json!({"url": "http://n/", "scope": ""}))
            .err()
            .expect("refused");
        assert_eq!((e.field(), e.message()), (Some("scope"), "it is empty"));
        let e = nagios("east/1", serde_json::json!({"url": "http://n/"}))
            .err()
            .expect("refused");
        assert_eq!(
            (e.field(), e.message()),
            (
                Some("scope"),
                "not set, and its default, the instance's name, is refused (it contains `/`): set `scope`"
            )
        );
        assert!(
            nagios(
                "east/1",
                serde_json::json!({"url": "http://n/", "scope": "east-1"})
            )
            .is_ok()
        );
    }

    /// `validate` on a JSON config: the refused field and its message.
    fn refused(instance: &str, config: serde_json::Value) -> (String, String) {
        let config: Config = serde_json::from_value(config).expect("parses");
        let ctx = Context {
            instance: instance.into(),
        };
        let e = Nagios::validate(&config, &ctx).expect_err("refused");
        assert_eq!(e.kind(), synchronizer_plugin_api::ErrorKind::Config);
        (
            e.field().expect("a field").to_owned(),
            e.message().to_owned(),
        )
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("synchronizer-nagios-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn validate_passes_a_valid_config_and_the_sample() {
        let password_file = temp_file("password", "s3cret\nignored\n");
        let config: Config = serde_json::from_value(serde_json::json!({
            "url": "https://nagios.example/cgi-bin/nagios4/",
            "source": "html",
            "username": "nagiosadmin",
            "password_file": password_file,
            "timeout": "5s",
            "host_rules": {"rules": [{"pattern": "(compute-\\d+)\\..*", "key": "nova.host:$1"}]},
            "scope": "east",
        }))
        .unwrap();
        let ctx = Context {
            instance: "nagios-east".into(),
        };
        assert_eq!(Nagios::validate(&config, &ctx), Ok(()));
        let checked = Checked::of(&config, "nagios-east").unwrap();
        assert_eq!(checked.base, "https://nagios.example/cgi-bin/nagios4");
        assert_eq!(
            checked.auth,
            Some(("nagiosadmin".to_owned(), "s3cret".to_owned()))
        );
        assert_eq!(checked.scope, "east");

        // The shipped sample's own table.
        let sample: toml::Value = toml::from_str(Nagios::sample_config()).unwrap();
        let table = &sample["instances"][0]["config"];
        let config: Config = serde_json::from_value(serde_json::to_value(table).unwrap()).unwrap();
        assert_eq!(Nagios::validate(&config, &ctx), Ok(()));
    }

    #[test]
    fn validate_names_each_refused_field() {
        let url = "http://n/cgi-bin";
        let missing = std::env::temp_dir().join("synchronizer-nagios-no-such-file");
        let not_pem = temp_file("not-pem", "no certificate here\n");
        let cases = [
            (serde_json::json!({"url": "nagios.example/cgi-bin"}), "url"),
            (serde_json::json!({"url": "ftp://n/cgi-bin"}), "url"),
            (
                serde_json::json!({"url": url, "host_rules": {"rules": [
                    {"pattern": "ok", "key": "x:$0"},
                    {"pattern": "compute-(", "key": "x"}
                ]}}),
                "host_rules.rules[1].pattern",
            ),
            (
                serde_json::json!({"url": url, "host_rules": {"rules": [{"pattern": "c-(\\d)", "key": "x:$2"}]}}),
                "host_rules.rules[0].key",
            ),
            (
                serde_json::json!({"url": url, "host_rules": {"default_key": "x:$1"}}),
                "host_rules.default_key",
            ),
            (serde_json::json!({"url": url, "scope": "a/b"}), "scope"),
            (
                serde_json::json!({"url": url, "password": "p", "password_file": "/etc/hostname"}),
                "password_file",
            ),
            (
                serde_json::json!({"url": url, "username": "u", "password_file": missing}),
                "password_file",
            ),
            (serde_json::json!({"url": url, "password": "p"}), "username"),
            (serde_json::json!({"url": url, "timeout": "0s"}), "timeout"),
            (
                serde_json::json!({"url": url, "ca_file": missing}),
                "ca_file",
            ),
            (
                serde_json::json!({"url": url, "ca_file": not_pem}),
                "ca_file",
            ),
        ];
        for (config, field) in cases {
            let (got, message) = refused("n", config.clone());
            assert_eq!(got, field, "{config}: {message}");
            assert!(
                !message.contains("instance") && !message.contains('\n'),
                "one line, no instance name: {message}"
            );
        }
        assert_eq!(
            refused(
                "n",
                serde_json::json!({"url": url, "host_rules": {"rules": [{"pattern": "compute-(", "key": "x"}]}})
            )
            .1,
            "invalid regular expression: unclosed group"
        );
        assert_eq!(
            refused("n", serde_json::json!({"url": url, "password": "p"})).1,
            "is required with a password"
        );
    }

    #[test]
    fn stale_status_data_is_reported_and_fresh_is_not() {
        let n = nagios("n", serde_json::json!({"url": "http://n/cgi-bin"})).unwrap();
        let body = include_bytes!("../tests/fixtures/nagios4-fidelity/statusjson-servicelist.json");
        let mut list = crate::json::parse_servicelist(body).unwrap();
        assert_eq!(n.staleness("u", &list), None, "the real capture is fresh");
        let now = list.query_time.unwrap();
        list.last_data_update = Some(now - 3_600_000);
        let reason = n.staleness("u", &list).expect("an hour old is stale");
        assert!(reason.contains("1h old"), "{reason}");
        let off = nagios(
            "n",
            serde_json::json!({"url": "http://n/cgi-bin", "max_status_age": "none"}),
        )
        .unwrap();
        assert_eq!(off.staleness("u", &list), None);
        let zero = nagios(
            "n",
            serde_json::json!({"url": "http://n/cgi-bin", "max_status_age": "0s"}),
        )
        .unwrap();
        assert_eq!(zero.staleness("u", &list), None);
    }

    #[test]
    fn vitrage_conf_is_read_and_checked() {
        let good = temp_file(
            "nagios_conf.yaml",
            include_str!("../tests/fixtures/vitrage/nagios_conf.yaml"),
        );
        let n = nagios(
            "n",
            serde_json::json!({"url": "http://n/", "vitrage_conf": good}),
        )
        .unwrap();
        let statuses = vec![
            ServiceStatus::new("compute-10", Some("CPU load".into()), AlarmState::Warning),
            ServiceStatus::new("ceph-0", Some("CPU load".into()), AlarmState::Critical),
            ServiceStatus::new("compute-1", Some("New".into()), AlarmState::Pending),
        ];
        let got: Vec<_> = n
            .entities(&statuses)
            .iter()
            .map(|e| (e.key(), e.relations()[0].other().to_owned()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "nagios:n/compute-10;CPU load".to_owned(),
                    "nova.host:compute-1".to_owned()
                ),
                (
                    "nagios:n/compute-1;New".to_owned(),
                    "nova.host:compute-1".to_owned()
                ),
            ]
        );
        let skip = nagios(
            "n",
            serde_json::json!({"url": "http://n/", "vitrage_conf": good, "pending": "skip"}),
        )
        .unwrap();
        assert_eq!(skip.entities(&statuses).len(), 1);
        let bad = temp_file(
            "bad_conf.yaml",
            "nagios:\n  - nagios_host: compute-(\n    type: nova.host\n    name: x\n",
        );
        let (field, message) = refused(
            "n",
            serde_json::json!({"url": "http://n/", "vitrage_conf": bad}),
        );
        assert_eq!(field, "vitrage_conf");
        assert!(
            message.contains("nagios[0].nagios_host")
                && message.contains("invalid regular expression"),
            "{message}"
        );
        let (field, message) = refused(
            "n",
            serde_json::json!({"url": "http://n/", "vitrage_conf": good, "host_rules": {}}),
        );
        assert_eq!(
            (field.as_str(), message.as_str()),
            (
                "vitrage_conf",
                "set `host_rules` or `vitrage_conf`, not both"
            )
        );
    }
}
