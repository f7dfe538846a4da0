//! Prometheus Alertmanager plugin for the synchronizer: every firing alert is an alarm
//! entity of type `prometheus`, `on` the resource its labels name (label rules in the
//! shape of Vitrage's `prometheus_conf.yaml`).
//!
//! - [`plugin`]: the plugin the host loads: a collector over Alertmanager's v2 API and,
//!   optionally, a webhook listener that pushes each notification's changes;
//! - [`alerts`]: the API's answer and the webhook's body, read into one alert, and the
//!   alarm entity of an alert (no I/O);
//! - [`rules`]: labels → the relation to the resource, as a key or as a property
//!   selector the host resolves (`nova.instance[instance_name=instance-00000004]`);
//! - [`webhook`]: the listener (credentials, body limit, 400 on a malformed body).

pub mod alerts;
pub mod plugin;
pub mod rules;
pub mod webhook;

pub use alerts::{Alert, AlertState, ParseError, Webhook, parse_api_alerts, parse_webhook};
pub use rules::{RuleConfig, RuleError, Rules};

synchronizer_plugin_api::export_plugin!(plugin::Prometheus);
