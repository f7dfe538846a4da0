//! The plugin: a collector over Alertmanager's v2 API (`GET /api/v2/alerts`, the active
//! alerts) and, with `[webhook]`, a listener for Alertmanager's webhook notifications that
//! pushes each change as it comes. Both build the same entity for the same alert
//! ([`crate::alerts`]), so a poll after a webhook emits nothing, a webhook lost while the
//! host was down is repaired by the next poll, and a resolved alert the API no longer
//! lists is deleted by the poll.
//!
//! Fingerprints are local to one Alertmanager (or one cluster), so the alarms' ids are
//! scoped: `<scope>/<fingerprint>`, `scope` defaulting to the instance's name.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use synchronizer_plugin_api::{
    Context, Error, Health, Plugin, PluginInfo, PluginKind, Shutdown, Sink, Snapshot, tracing,
};

use crate::alerts::{ALARM_TYPE, AlertState, alarm_entity, parse_api_alerts};
use crate::rules::{RuleConfig, Rules, default_vitrage_types};
use crate::webhook::{Auth, Listener, Stats};

/// Silenced and inhibited alerts (the API's `suppressed`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Suppressed {
    /// Alarms in state `suppressed`, with the silences and inhibitors in their properties.
    #[default]
    Report,
    /// Left out (as Vitrage, which counts them as not firing): a silence deletes the alarm.
    Skip,
}

/// The webhook listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The address to listen on: `127.0.0.1:9095`.
    pub listen: SocketAddr,
    /// A bearer token requests must carry (Alertmanager's `http_config.authorization`).
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// A file whose first line is the bearer token.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Basic-auth user requests must carry (`http_config.basic_auth`).
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(default)]
    pub password: Option<String>,
    /// The largest body accepted (default 1 MiB; Alertmanager's bodies are a few KiB
    /// per alert).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_max_body() -> usize {
    1 << 20
}

/// One Alertmanager.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Alertmanager's base URL (`http://127.0.0.1:9093`), or its alerts URL
    /// (`.../api/v2/alerts`, as Vitrage's `alertmanager_url`).
    pub url: String,
    /// Only alerts routed to receivers matching this regular expression (the API's
    /// `receiver`; Vitrage's `receiver`).
    #[serde(default)]
    pub receiver: Option<String>,
    /// Matchers the alerts must satisfy (the API's `filter`, repeated): `severity="critical"`.
    #[serde(default)]
    pub filters: Vec<String>,
    /// Silenced and inhibited alerts: `report` (default) or `skip`.
    #[serde(default)]
    pub suppressed: Suppressed,
    /// Per-request timeout (default 10 s).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Basic-auth user for the API (a proxy in front of Alertmanager).
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password for the API.
    #[serde(default)]
    pub password: Option<String>,
    /// The name of this Alertmanager in the alarms' ids (`<scope>/<fingerprint>`);
    /// default: the instance's name. Not empty, no `/`.
    #[serde(default)]
    pub scope: Option<String>,
    /// Label rules: which resource an alert is on. Not with `vitrage_conf`.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Vitrage's `prometheus_conf.yaml`, read as rules instead of `rules`.
    #[serde(default)]
    pub vitrage_conf: Option<PathBuf>,
    /// For `vitrage_conf`: the type of the entities that have each resource property.
    #[serde(default = "default_vitrage_types")]
    pub vitrage_types: BTreeMap<String, String>,
    /// The webhook listener; none by default (poll only).
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The rules a configuration asks for.
fn rules_of(config: &Config) -> Result<Rules, Error> {
    match &config.vitrage_conf {
        Some(path) => {
            if !config.rules.is_empty() {
                return Err(Error::config_field(
                    "vitrage_conf",
                    "give either rules or vitrage_conf, not both",
                ));
            }
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::config_field("vitrage_conf", format!("{}: {e}", path.display()))
            })?;
            Rules::from_vitrage_yaml(&text, &config.vitrage_types)
                .map_err(|e| Error::config_field(e.field(), e))
        }
        None => Rules::new(config.rules.clone()).map_err(|e| Error::config_field(e.field(), e)),
    }
}

/// The alerts URL, with the query a poll sends.
fn alerts_url(config: &Config) -> Result<reqwest::Url, Error> {
    let mut url = reqwest::Url::parse(&config.url)
        .map_err(|e| Error::config_field("url", format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::config_field("url", "must be http or https"));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    if path.contains("/api/v1") {
        return Err(Error::config_field(
            "url",
            "the v1 API is not supported (gone from Alertmanager 0.27): give the base URL",
        ));
    }
    if !path.ends_with("/api/v2/alerts") {
        url.set_path(&format!("{path}/api/v2/alerts"));
    }
    let report = config.suppressed == Suppressed::Report;
    {
        let mut q = url.query_pairs_mut();
        q.clear();
        q.append_pair("active", "true");
        q.append_pair("silenced", if report { "true" } else { "false" });
        q.append_pair("inhibited", if report { "true" } else { "false" });
        if let Some(r) = &config.receiver {
            q.append_pair("receiver", r);
        }
        for f in &config.filters {
            q.append_pair("filter", f);
        }
    }
    Ok(url)
}

fn webhook_auth(w: &WebhookConfig) -> Result<Auth, Error> {
    let token = match (&w.bearer_token, &w.bearer_token_file) {
        (Some(_), Some(_)) => {
            return Err(Error::config_field(
                "webhook.bearer_token_file",
                "give bearer_token or bearer_token_file, not both",
            ));
        }
        (Some(t), None) => Some(t.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::config_field(
                    "webhook.bearer_token_file",
                    format!("{}: {e}", path.display()),
                )
            })?;
            Some(text.lines().next().unwrap_or("").trim().to_owned())
        }
        (None, None) => None,
    };
    if token.as_deref() == Some("") {
        return Err(Error::config_field(
            "webhook.bearer_token",
            "must not be empty",
        ));
    }
    match (token, &w.username, &w.password) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(Error::config_field(
            "webhook.username",
            "give a bearer token or basic auth, not both",
        )),
        (Some(t), None, None) => Ok(Auth::Bearer(t)),
        (None, Some(u), Some(p)) => Ok(Auth::Basic {
            username: u.clone(),
            password: p.clone(),
        }),
        (None, Some(_), None) => Err(Error::config_field(
            "webhook.password",
            "missing (username given)",
        )),
        (None, None, Some(_)) => Err(Error::config_field(
            "webhook.username",
            "missing (password given)",
        )),
        (None, None, None) => Ok(Auth::None),
    }
}

fn scope_of(config: &Config, ctx: &Context) -> Result<String, Error> {
    let scope = config.scope.clone().unwrap_or_else(|| ctx.instance.clone());
    if scope.is_empty() || scope.contains('/') {
        return Err(Error::config_field(
            "scope",
            "must not be empty nor contain `/`",
        ));
    }
    Ok(scope)
}

/// The plugin instance.
pub struct Prometheus {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: Option<(String, String)>,
    scope: String,
    rules: Arc<Rules>,
    suppressed: Suppressed,
    webhook: Option<(SocketAddr, Auth, usize)>,
    stats: Arc<Stats>,
    /// Why the listener is not running, when it could not start.
    listen_error: Arc<Mutex<Option<String>>>,
}

impl Prometheus {
    /// The URL polled, with its query (no credentials in it).
    pub fn alerts_url(&self) -> &reqwest::Url {
        &self.url
    }
}

impl Plugin for Prometheus {
    type Config = Config;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "prometheus",
            version: env!("CARGO_PKG_VERSION"),
            description: "Prometheus Alertmanager alarms: polled from the v2 API, pushed by its webhook",
            entity_types: &[ALARM_TYPE],
            kind: PluginKind::Both,
        }
    }

    fn sample_config() -> &'static str {
        include_str!("../sample.toml")
    }

    fn validate(config: &Config, ctx: &Context) -> Result<(), Error> {
        alerts_url(config)?;
        rules_of(config)?;
        scope_of(config, ctx)?;
        if config.username.is_some() != config.password.is_some() {
            return Err(Error::config_field(
                "password",
                "give both username and password, or neither",
            ));
        }
        if config.timeout.is_zero() {
            return Err(Error::config_field("timeout", "must be more than 0s"));
        }
        if let Some(w) = &config.webhook {
            webhook_auth(w)?;
            if w.max_body_bytes == 0 {
                return Err(Error::config_field(
                    "webhook.max_body_bytes",
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }

    fn new(config: Config, ctx: &Context) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| Error::config(format!("HTTP client: {e}")))?;
        let webhook = match &config.webhook {
            Some(w) => Some((w.listen, webhook_auth(w)?, w.max_body_bytes)),
            None => None,
        };
        Ok(Prometheus {
            client,
            url: alerts_url(&config)?,
            auth: config.username.clone().zip(config.password.clone()),
            scope: scope_of(&config, ctx)?,
            rules: Arc::new(rules_of(&config)?),
            suppressed: config.suppressed,
            webhook,
            stats: Arc::default(),
            listen_error: Arc::default(),
        })
    }

    async fn snapshot(&self, _types: &[String]) -> Result<Snapshot, Error> {
        let shown = synchronizer_plugin_api::redact::redact_url(self.url.as_str());
        let mut request = self.client.get(self.url.clone());
        if let Some((u, p)) = &self.auth {
            request = request.basic_auth(u, Some(p));
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::failed(format!("GET {shown}: {}", without_url(&e))))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            Error::failed(format!(
                "GET {shown}: reading the answer: {}",
                without_url(&e)
            ))
        })?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(Error::failed(format!(
                "GET {shown}: HTTP {status}: {}",
                text.trim()
            )));
        }
        let alerts =
            parse_api_alerts(&body).map_err(|e| Error::failed(format!("GET {shown}: {e}")))?;
        let listed = alerts.len();
        let entities: Vec<_> = alerts
            .iter()
            .filter(|a| {
                self.suppressed == Suppressed::Report
                    || !matches!(a.state, AlertState::Suppressed { .. })
            })
            .filter_map(|a| alarm_entity(a, &self.scope, &self.rules))
            .collect();
        tracing::debug!(
            listed,
            alarms = entities.len(),
            "Alertmanager alerts collected"
        );
        Ok(Snapshot::complete(entities))
    }

    async fn run(&self, sink: Sink, shutdown: Shutdown) -> Result<(), Error> {
        let Some((addr, auth, max_body_bytes)) = self.webhook.clone() else {
            shutdown.requested().await;
            return Ok(());
        };
        let listener = Listener {
            sink,
            auth,
            max_body_bytes,
            scope: self.scope.clone(),
            rules: self.rules.clone(),
            stats: self.stats.clone(),
        };
        match crate::webhook::serve(addr, listener, shutdown).await {
            Ok(()) => {
                *self.listen_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(())
            }
            Err(e) => {
                let message = format!("webhook listener on {addr}: {e}");
                *self.listen_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(message.clone());
                Err(Error::failed(message))
            }
        }
    }

    async fn health(&self) -> Health {
        if let Some(e) = self
            .listen_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Health::unhealthy(e);
        }
        let malformed = self.stats.malformed.load(Ordering::Relaxed);
        if malformed > 0 {
            Health {
                healthy: true,
                message: format!("{malformed} malformed webhook bodies refused (400)"),
            }
        } else {
            Health::healthy()
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        vec![
            ("webhook_accepted", s.accepted.load(Ordering::Relaxed)),
            ("webhook_alerts_firing", s.firing.load(Ordering::Relaxed)),
            (
                "webhook_alerts_resolved",
                s.resolved.load(Ordering::Relaxed),
            ),
            ("webhook_malformed", s.malformed.load(Ordering::Relaxed)),
            ("webhook_too_large", s.too_large.load(Ordering::Relaxed)),
            (
                "webhook_unauthorized",
                s.unauthorized.load(Ordering::Relaxed),
            ),
            ("webhook_push_failed", s.push_failed.load(Ordering::Relaxed)),
        ]
    }
}

/// reqwest's error without the URL it quotes (the caller names it, redacted).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(u) = e.url() {
        text = text.replace(u.as_str(), "");
    }
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

    fn config(v: serde_json::Value) -> Config {
        serde_json::from_value(v).unwrap()
    }

    fn ctx() -> Context {
        Context {
            instance: "am".into(),
        }
    }

    #[test]
    fn the_url_gets_the_path_and_query() {
        let c = config(serde_json::json!({"url": "http://127.0.0.1:9093/", "receiver": "vitrage"}));
        assert_eq!(
            alerts_url(&c).unwrap().as_str(),
            "http://127.0.0.1:9093/api/v2/alerts?active=true&silenced=true&inhibited=true&receiver=vitrage"
        );
        let c = config(
            serde_json::json!({"url": "http://am/x/api/v2/alerts", "suppressed": "skip", "filters": ["severity=\"critical\""]}),
        );
        assert_eq!(
            alerts_url(&c).unwrap().as_str(),
            "http://am/x/api/v2/alerts?active=true&silenced=false&inhibited=false&filter=severity%3D%22critical%22"
        );
        let v1 = config(serde_json::json!({"url": "http://am/api/v1/alerts"}));
        assert_eq!(
            Prometheus::validate(&v1, &ctx()).unwrap_err().field(),
            Some("url")
        );
    }

    #[test]
    fn the_sample_config_is_valid() {
        let sample: toml::Value = toml::from_str(include_str!("../sample.toml")).unwrap();
        let table = sample["instances"][0]["config"].clone();
        let c: Config = table.try_into().unwrap();
        Prometheus::validate(&c, &ctx()).unwrap();
        assert_eq!(c.rules.len(), 2);
        assert!(c.webhook.is_some());
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |v: serde_json::Value| Prometheus::validate(&config(v), &ctx()).unwrap_err();
        let e = bad(
            serde_json::json!({"url": "http://am", "webhook": {"listen": "127.0.0.1:0", "bearer_token": "t", "username": "u", "password": "p"}}),
        );
        assert_eq!(e.field(), Some("webhook.username"));
        let e = bad(
            serde_json::json!({"url": "http://am", "webhook": {"listen": "127.0.0.1:0", "username": "u"}}),
        );
        assert_eq!(e.field(), Some("webhook.password"));
        let e = bad(serde_json::json!({"url": "http://am", "scope": "a/b"}));
        assert_eq!(e.field(), Some("scope"));
        let e = bad(
            serde_json::json!({"url": "http://am", "rules": [{"type": "a:b", "property": "p", "label": "l"}]}),
        );
        assert_eq!(e.field(), Some("rules[0].type"));
        let e = bad(
            serde_json::json!({"url": "http://am", "webhook": {"listen": "127.0.0.1:0", "max_body_bytes": 0}}),
        );
        assert_eq!(e.field(), Some("webhook.max_body_bytes"));
        assert!(
            Prometheus::validate(&config(serde_json::json!({"url": "http://am"})), &ctx()).is_ok()
        );
    }
}
