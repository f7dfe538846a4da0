//! The AMQP output: every change, published to a topic exchange for remote consumers.
//!
//! - One message per change: the JSON object of [`crate::output::change_to_json`] (the
//!   same as stdout and the SSE stream), `content_type = application/json`, persistent
//!   (`delivery_mode = 2`), `message_id = <seq>@<epoch>` (the SSE stream's id: unique
//!   across restarts, for consumers that deduplicate), `timestamp` = when the host
//!   sampled the data.
//! - Routing key `<entity type>.<action>`, e.g. `nova.instance.deleted`: a consumer binds
//!   its own queue with `nova.instance.*`, `#.deleted` or `#` to get what it wants.
//! - Publisher confirms. A change counts as delivered when the broker confirmed it; only
//!   then do producers let go of their source ([`crate::delivery`]): a bus plugin
//!   acknowledges the upstream notification, a collector polls again. When the broker
//!   goes away, unconfirmed changes are kept and published again after reconnecting
//!   (at least once), and producers wait: back-pressure, not loss.
//!   With a durable baseline, a change is made durable only once confirmed
//!   ([`crate::persist`]), so one never confirmed is published again after a restart.
//! - At shutdown the output publishes what is left and waits for its confirmations, up
//!   to `drain_timeout`; [`AmqpOutput::finish`] returns in bounded time whatever the
//!   broker does.

//!
//! This module holds the output's configuration, always; the output itself
//! ([`AmqpOutput`]) is built with the `amqp` feature (on by default).

#[cfg(feature = "amqp")]
mod output;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use synchronizer_plugin_api::redact::redact_url;

#[cfg(feature = "amqp")]
pub use output::AmqpOutput;

/// One AMQP output (`[[outputs.amqp]]`). Its `Debug` form hides the URL's password.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AmqpOutputConfig {
    /// A name for logs and metrics (default `amqp`).
    #[serde(default = "default_name")]
    pub name: String,
    /// The broker: `amqp://user:password@host:5672/vhost` or `amqps://...`.
    pub url: String,
    /// A PEM file of CA certificates to verify an `amqps://` broker with (default: the
    /// system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The topic exchange changes are published to; declared durable when missing.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Entity types to publish (empty: every type).
    #[serde(default)]
    pub types: Vec<String>,
    /// Changes published and not yet confirmed, at most.
    #[serde(default = "default_max_unconfirmed")]
    pub max_unconfirmed: usize,
    /// How long a confirmation may take before the connection counts as broken.
    #[serde(default = "default_confirm_timeout", with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// How long a connection attempt may take.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// First wait after a failed connection; doubles up to `reconnect_max`.
    #[serde(default = "default_reconnect_initial", with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Longest wait between connection attempts.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// At shutdown, how long to keep publishing what is left.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

fn default_name() -> String {
    "amqp".into()
}
fn default_exchange() -> String {
    "synchronizer".into()
}
fn default_max_unconfirmed() -> usize {
    1024
}
fn default_confirm_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_reconnect_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}

impl std::fmt::Debug for AmqpOutputConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpOutputConfig")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("ca_file", &self.ca_file)
            .field("exchange", &self.exchange)
            .field("types", &self.types)
            .field("max_unconfirmed", &self.max_unconfirmed)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_initial", &self.reconnect_initial)
            .field("reconnect_max", &self.reconnect_max)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

/// Why an AMQP output cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AmqpOutputError {
    /// The URL does not parse.
    #[error("output `{name}`: url {url}: {reason}")]
    Url {
        /// The output.
        name: String,
        /// The URL, password hidden.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The CA file cannot be read.
    #[error("output `{name}`: ca_file {}: {source}", .path.display())]
    CaFile {
        /// The output.
        name: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("output `{name}`: {field}: {reason}")]
    Invalid {
        /// The output.
        name: String,
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The longest routing key AMQP carries (a short string: one length byte).
const MAX_ROUTING_KEY: usize = 255;

/// The routing key of a change: `<type>.<action>`. An entity type too long for that to
/// fit in AMQP's 255 bytes (a broker closes the connection on a longer one) is cut at a
/// character boundary and followed by `~` and 16 hex digits of its seahash, so that the
/// key stays distinct per type and consumers can still bind to it exactly.
pub fn routing_key(entity_type: &str, action: &str) -> String {
    let key = format!("{entity_type}.{action}");
    if key.len() <= MAX_ROUTING_KEY {
        return key;
    }
    let room = MAX_ROUTING_KEY - action.len() - 1 - 17;
    let mut cut = room.min(entity_type.len());
    while !entity_type.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}~{:016x}.{action}",
        &entity_type[..cut],
        seahash::hash(entity_type.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use synchronizer_plugin_api::redact::Secrets;

    #[test]
    fn a_routing_key_fits_in_an_amqp_short_string_and_stays_distinct() {
        assert_eq!(
            routing_key("nova.instance", "created"),
            "nova.instance.created"
        );
        let long = "t".repeat(250);
        let key = routing_key(&long, "deleted");
        assert_eq!(key.len(), 255);
        assert!(key.ends_with(".deleted"));
        assert_ne!(key, routing_key(&format!("{long}x"), "deleted"));
        // Cut on a character boundary.
        let wide = "é".repeat(200);
        let key = routing_key(&wide, "updated");
        assert!(key.len() <= 255);
        assert!(key.starts_with("éé"));
    }

    #[test]
    fn urls_are_redacted_and_messages_scrubbed() {
        let url = "amqp://sync:s3cret@rabbit:5672/%2f";
        assert_eq!(redact_url(url), "amqp://sync:***@rabbit:5672/%2f");
        assert_eq!(redact_url("amqp://rabbit/"), "amqp://rabbit/");
        // Malformed: a missing slash, an unencoded `/` or `@` in the password.
        for (bad, password) in [
            ("amqp:/sync:pw1@rabbit/", "pw1"),
            ("amqp://sync:p/w2@rabbit:5672/%2f", "p/w2"),
            ("amqp://sync:p@w3@rabbit/", "p@w3"),
        ] {
            let shown = redact_url(bad);
            assert!(!shown.contains(password), "{bad} -> {shown}");
            assert!(
                !Secrets::of_url(bad)
                    .scrub(&format!("bad url {bad}"))
                    .contains(password)
            );
        }
        assert_eq!(
            Secrets::of_url(url).scrub("auth failed for sync:s3cret"),
            "auth failed for sync:***"
        );
        let cfg: AmqpOutputConfig =
            serde_json::from_value(serde_json::json!({ "url": url })).expect("config");
        assert!(!format!("{cfg:?}").contains("s3cret"));
        assert_eq!(cfg.exchange, "synchronizer");
        assert_eq!(cfg.max_unconfirmed, 1024);
    }
}
