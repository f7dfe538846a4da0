//! Nagios collector plugin for the synchronizer: Nagios service and host alarms as
//! entities of type `nagios` (category alarm), each `on` the resource its host stands for.
//!
//! [`plugin`] is the collector the host loads (config, HTTP, entities); the rest is the
//! pure core, with no I/O:
//! - [`model`]: [`ServiceStatus`] and its states;
//! - [`html`]: the `status.cgi?host=all&limit=0` page of Nagios 3 and 4;
//! - [`json`]: Nagios 4's `statusjson.cgi` `servicelist` and `hostlist` answers;
//! - [`vitrage`]: Vitrage's `nagios_conf.yaml`, read as Vitrage reads it;
//! - [`rules`]: Nagios host name → entity key of the resource, and the alarms with their
//!   ids (local to one Nagios; [`plugin`] scopes them) and resource keys.
//!
//! A page that is not a complete, successful status answer (an error or login page,
//! truncated HTML or JSON, a table of another shape) is an error, never an empty list, so
//! that a collector built on it fails the snapshot and deletes nothing.

pub mod html;
pub mod json;
pub mod model;
pub mod plugin;
pub mod rules;
pub mod vitrage;

pub use html::{HtmlError, parse_status_page};
pub use json::{JsonError, StatusList, parse_hostlist, parse_servicelist};
pub use model::{AlarmState, Attempt, CheckTime, DateFormat, Pending, ServiceStatus, StateType};
pub use rules::{HostRuleConfig, HostRules, HostRulesConfig, MappedAlarm, Resolved, RuleError};
pub use vitrage::{VitrageConfError, VitrageMapping, parse_vitrage_conf};

synchronizer_plugin_api::export_plugin!(plugin::Nagios);
