//! What Alertmanager says about alerts, in its two forms, read into one [`Alert`]: the
//! v2 API's `GET /api/v2/alerts` answer ([`parse_api_alerts`]) and the body of a webhook
//! notification ([`parse_webhook`]); and the `prometheus` alarm entity of a firing alert
//! ([`alarm_entity`]). No I/O.
//!
//! The two forms differ where a client must not care (tests/fixtures/README.md): the
//! webhook writes `startsAt` without a fraction when it is zero and a firing alert's
//! `endsAt` as Go's zero time; the API always writes milliseconds and a future `endsAt`;
//! the webhook escapes `&` as `\u0026`. The entity carries only what both forms say the
//! same way (times normalised to milliseconds), so that a poll after a webhook changes
//! nothing.

use std::collections::BTreeMap;

use serde::Deserialize;
use synchronizer_plugin_api::time::format_rfc3339_millis;
use synchronizer_plugin_api::{Entity, Relation};

use crate::rules::Rules;

/// The entity type of every alarm this plugin reports (Vitrage's datasource name).
pub const ALARM_TYPE: &str = "prometheus";

/// The longest part of a malformed input quoted in an error.
const QUOTE_MAX: usize = 120;

/// An answer or body that is not what Alertmanager sends.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON, or JSON of another shape.
    #[error("not an Alertmanager {what}: {reason}")]
    Shape {
        /// `alerts answer` or `webhook body`.
        what: &'static str,
        /// serde's message, cut short.
        reason: String,
    },
    /// One alert in it is unusable.
    #[error("alert {index}: {reason}")]
    Alert {
        /// Its position, from 0.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// Whether an alert fires, and how Alertmanager treats it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlertState {
    /// Firing and notified (`active`, or `unprocessed`: not yet through the pipeline).
    Firing,
    /// Firing but silenced or inhibited (the API's `suppressed`).
    Suppressed {
        /// The silences that mute it.
        silenced_by: Vec<String>,
        /// The alerts that inhibit it (their fingerprints).
        inhibited_by: Vec<String>,
    },
    /// No longer firing (only a webhook says so; the API just stops listing it).
    Resolved,
}

/// One alert, from either form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// Alertmanager's hash of the label set: the same while the alert fires and once it
    /// is resolved.
    pub fingerprint: String,
    /// The labels (alertname, severity, instance, ...).
    pub labels: BTreeMap<String, String>,
    /// The annotations (summary, description, ...).
    pub annotations: BTreeMap<String, String>,
    /// When it started firing, microseconds since the Unix epoch.
    pub starts_at_us: i64,
    /// When it ends (resolved) or would end without a refresh; `None` for Go's zero time.
    pub ends_at_us: Option<i64>,
    /// The URL of what generated it (a Prometheus graph), when there is one.
    pub generator_url: Option<String>,
    /// Firing, suppressed or resolved.
    pub state: AlertState,
}

impl Alert {
    /// Its `alertname` label (empty when there is none).
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }
}

fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn shape(what: &'static str, e: serde_json::Error) -> ParseError {
    ParseError::Shape {
        what,
        reason: quote(&e.to_string()),
    }
}

/// A string map whose values may be null (Go writes `null` for no annotations).
fn string_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
struct ApiStatus {
    state: String,
    #[serde(rename = "silencedBy", default, deserialize_with = "string_list")]
    silenced_by: Vec<String>,
    #[serde(rename = "inhibitedBy", default, deserialize_with = "string_list")]
    inhibited_by: Vec<String>,
}

/// The fields an alert has in both the API's answer and a webhook body.
#[derive(Deserialize)]
struct AlertFields {
    fingerprint: String,
    #[serde(deserialize_with = "string_map")]
    labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "string_map")]
    annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    starts_at: String,
    #[serde(rename = "endsAt", default)]
    ends_at: Option<String>,
    #[serde(rename = "generatorURL", default)]
    generator_url: Option<String>,
}

impl AlertFields {
    /// The alert at `index` of its answer, in `state`.
    fn into_alert(self, index: usize, state: AlertState) -> Result<Alert, ParseError> {
        check_fingerprint(index, &self.fingerprint)?;
        Ok(Alert {
            starts_at_us: time(index, "startsAt", &self.starts_at)?,
            ends_at_us: end_time(index, self.ends_at.as_deref())?,
            fingerprint: self.fingerprint,
            labels: self.labels,
            annotations: self.annotations,
            generator_url: url(self.generator_url),
            state,
        })
    }
}

#[derive(Deserialize)]
struct ApiAlert {
    #[serde(flatten)]
    fields: AlertFields,
    status: ApiStatus,
}

#[derive(Deserialize)]
struct HookAlert {
    #[serde(flatten)]
    fields: AlertFields,
    status: String,
}

#[derive(Deserialize)]
struct HookBody {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    receiver: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(rename = "groupKey", default)]
    group_key: Option<String>,
    alerts: Vec<HookAlert>,
}

/// A webhook notification: one group's alerts, each with its own status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    /// The receiver that sent it.
    pub receiver: String,
    /// The group's status (`firing` while any alert in it fires): for logs only, each
    /// alert counts by its own.
    pub status: String,
    /// The group's key.
    pub group_key: String,
    /// The alerts.
    pub alerts: Vec<Alert>,
}

/// A fingerprint as Alertmanager writes it: hex digits (16 of them), here 1 to 32.
fn check_fingerprint(index: usize, fp: &str) -> Result<(), ParseError> {
    if fp.is_empty() || fp.len() > 32 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ParseError::Alert {
            index,
            reason: format!("fingerprint `{}` is not 1 to 32 hex digits", quote(fp)),
        });
    }
    Ok(())
}

/// A time, in microseconds, cut to the millisecond: the API writes milliseconds, the
/// webhook up to nanoseconds (the same alert's `startsAt` is `…14.240Z` in one and
/// `…14.240309Z` in the other).
fn time(index: usize, field: &str, text: &str) -> Result<i64, ParseError> {
    synchronizer_openstack::time::parse_timestamp(text)
        .map(|us| us - us.rem_euclid(1000))
        .filter(|us| synchronizer_plugin_api::time::in_range(*us))
        .ok_or_else(|| ParseError::Alert {
            index,
            reason: format!("{field} `{}` is not an RFC 3339 time", quote(text)),
        })
}

/// `endsAt`: `None` for Go's zero time (year 1) or none at all.
fn end_time(index: usize, text: Option<&str>) -> Result<Option<i64>, ParseError> {
    match text {
        None => Ok(None),
        Some(t) if t.starts_with("0001-01-01T00:00:00") => Ok(None),
        Some(t) => time(index, "endsAt", t).map(Some),
    }
}

fn url(u: Option<String>) -> Option<String> {
    u.filter(|u| !u.is_empty())
}

/// The alerts of a `GET /api/v2/alerts` answer (a bare JSON array). An alert that is
/// unusable (no fingerprint, an unreadable time, an unknown state) makes the whole answer
/// an error: a collector built on it must delete nothing.
pub fn parse_api_alerts(body: &[u8]) -> Result<Vec<Alert>, ParseError> {
    let alerts: Vec<ApiAlert> =
        serde_json::from_slice(body).map_err(|e| shape("alerts answer", e))?;
    alerts
        .into_iter()
        .enumerate()
        .map(|(index, a)| {
            let state = match a.status.state.as_str() {
                "active" | "unprocessed" => AlertState::Firing,
                "suppressed" => AlertState::Suppressed {
                    silenced_by: a.status.silenced_by,
                    inhibited_by: a.status.inhibited_by,
                },
                other => {
                    return Err(ParseError::Alert {
                        index,
                        reason: format!("status.state `{}` is not known", quote(other)),
                    });
                }
            };
            a.fields.into_alert(index, state)
        })
        .collect()
}

/// The body of an Alertmanager webhook notification (`webhook_configs`, version 4).
pub fn parse_webhook(body: &[u8]) -> Result<Webhook, ParseError> {
    let hook: HookBody = serde_json::from_slice(body).map_err(|e| shape("webhook body", e))?;
    if let Some(v) = &hook.version
        && v != "4"
    {
        return Err(ParseError::Shape {
            what: "webhook body",
            reason: format!("version `{}` is not 4", quote(v)),
        });
    }
    let alerts = hook
        .alerts
        .into_iter()
        .enumerate()
        .map(|(index, a)| {
            let state = match a.status.as_str() {
                "firing" => AlertState::Firing,
                "resolved" => AlertState::Resolved,
                other => {
                    return Err(ParseError::Alert {
                        index,
                        reason: format!("status `{}` is neither firing nor resolved", quote(other)),
                    });
                }
            };
            a.fields.into_alert(index, state)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Webhook {
        receiver: hook.receiver.unwrap_or_default(),
        status: hook.status.unwrap_or_default(),
        group_key: hook.group_key.unwrap_or_default(),
        alerts,
    })
}

/// The native id of an alert's alarm: `<scope>/<fingerprint>` (a fingerprint is local to
/// one Alertmanager, or one cluster of them).
pub fn alarm_id(scope: &str, fingerprint: &str) -> String {
    let mut id = String::with_capacity(scope.len() + 1 + fingerprint.len());
    id.push_str(scope);
    id.push('/');
    id.push_str(fingerprint);
    id
}

/// The `prometheus` alarm of a firing or suppressed alert (`None` for a resolved one):
/// name the `alertname`, state `firing` or `suppressed`, its start as the source time,
/// `on` the resource the rules find for its labels.
pub fn alarm_entity(alert: &Alert, scope: &str, rules: &Rules) -> Option<Entity> {
    let (state, silenced_by, inhibited_by) = match &alert.state {
        AlertState::Resolved => return None,
        AlertState::Firing => ("firing", &[][..], &[][..]),
        AlertState::Suppressed {
            silenced_by,
            inhibited_by,
        } => ("suppressed", &silenced_by[..], &inhibited_by[..]),
    };
    let mut e = Entity::alarm(ALARM_TYPE, &alarm_id(scope, &alert.fingerprint))
        .with_name(alert.name())
        .with_state(state)
        .with_source_updated_micros(alert.starts_at_us);
    if let Some(target) = rules.target(&alert.labels) {
        e = e.with_relation(Relation::to(&target.relation, target.other));
    }
    Some(e.with_properties(serde_json::json!({
        "fingerprint": alert.fingerprint,
        "severity": alert.labels.get("severity"),
        "labels": alert.labels,
        "annotations": alert.annotations,
        "starts_at": format_rfc3339_millis(alert.starts_at_us),
        "generator_url": alert.generator_url,
        "silenced_by": silenced_by,
        "inhibited_by": inhibited_by,
    })))
}

/// The deletion of a resolved alert's alarm, at its `endsAt` (its start when it has none).
pub fn resolved_entity(alert: &Alert, scope: &str) -> Entity {
    Entity::alarm(ALARM_TYPE, &alarm_id(scope, &alert.fingerprint))
        .with_name(alert.name())
        .with_source_updated_micros(alert.ends_at_us.unwrap_or(alert.starts_at_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_answers_are_errors_that_quote_little() {
        let long = format!("[{{\"fingerprint\": \"{}\"}}]", "x".repeat(10_000));
        let e = parse_api_alerts(long.as_bytes()).unwrap_err();
        assert!(e.to_string().len() < 400, "{e}");
        assert!(parse_api_alerts(b"{\"status\":\"success\",\"data\":[]}").is_err());
        assert!(parse_api_alerts(b"[]").unwrap().is_empty());
        let bad_fp = br#"[{"fingerprint":"zz","labels":{},"startsAt":"2026-12-01T21:48:44.000Z","status":{"state":"active"}}]"#;
        assert!(matches!(
            parse_api_alerts(bad_fp),
            Err(ParseError::Alert { index: 0, .. })
        ));
        let bad_time = br#"[{"fingerprint":"ab","labels":{},"startsAt":"yesterday","status":{"state":"active"}}]"#;
        assert!(
            parse_api_alerts(bad_time)
                .unwrap_err()
                .to_string()
                .contains("startsAt")
        );
        let bad_state = br#"[{"fingerprint":"ab","labels":{},"startsAt":"2026-12-01T21:48:44Z","status":{"state":"odd"}}]"#;
        assert!(parse_api_alerts(bad_state).is_err());
        assert!(parse_webhook(b"{\"version\":\"3\",\"alerts\":[]}").is_err());
        assert!(parse_webhook(b"{\"alerts\":[{\"status\":\"x\",\"fingerprint\":\"ab\",\"labels\":{},\"startsAt\":\"2026-12-01T21:48:44Z\"}]}").is_err());
    }

    #[test]
    fn go_zero_time_is_no_end_and_nulls_are_empty() {
        let body = br#"{"version":"4","status":"firing","alerts":[{"status":"firing","fingerprint":"0a","labels":{"alertname":"A"},"annotations":null,"startsAt":"2026-12-01T21:48:44Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":""}]}"#;
        let hook = parse_webhook(body).unwrap();
        let a = &hook.alerts[0];
        assert_eq!(a.ends_at_us, None);
        assert!(a.annotations.is_empty());
        assert_eq!(a.generator_url, None);
        assert_eq!(a.name(), "A");
    }
}
