//! The instance's configuration (the `[instances.config]` table of the host's
//! configuration), its defaults, its checks, and the redaction of broker URLs.
//!
//! Every option is described in the crate's README. Broker URLs carry passwords: they are
//! only ever shown through [`redact_url`], and error messages from the AMQP client pass
//! through [`Secrets::scrub`] (both from `synchronizer_plugin_api::redact`) before they are logged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use lapin::uri::AMQPUri;
use serde::Deserialize;
use synchronizer_plugin_api::redact::{Secrets, redact_url};

use crate::error::ConfigError;
use crate::heat::HeatConfig;
use crate::mapping::Family;

/// The plugin's configuration. Its `Debug` form redacts the URLs' passwords and the
/// client certificate's password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Broker URLs (`amqp://user:password@host:5672/vhost` or `amqps://...`). On every
    /// (re)connection they are tried in order, starting with the last one that worked.
    pub urls: Vec<String>,
    /// The virtual host; overrides the one in the URLs.
    #[serde(default)]
    pub vhost: Option<String>,
    /// A PEM file of CA certificates trusted for `amqps://` besides the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A PKCS#12 (DER) file with a client certificate and key, for brokers that require
    /// client authentication.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// The password of `client_cert_file` (empty by default).
    #[serde(default)]
    pub client_cert_password: Option<String>,
    /// The connection name shown by the broker (`rabbitmqctl list_connections name`).
    #[serde(default = "default_connection_name")]
    pub connection_name: String,
    /// AMQP heartbeat in seconds; the broker's proposal (60 s for RabbitMQ) when unset.
    #[serde(default)]
    pub heartbeat: Option<u16>,
    /// A connection attempt that takes longer fails.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// First delay before reconnecting after a failure; doubles with each failure in a row.
    #[serde(default = "default_reconnect_initial", with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Largest delay between two connection attempts.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Unacknowledged messages the broker may send to each queue's consumer (basic.qos).
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Largest number of messages handed to the host (and acknowledged) at once.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Which event families become changes; the others are acknowledged and counted.
    #[serde(default = "default_families")]
    pub families: Vec<Family>,
    /// Default priorities to consume, for subscriptions that do not name theirs.
    #[serde(default = "default_priorities")]
    pub priorities: Vec<String>,
    /// Whether exchanges and queues are declared durable. It must match what the
    /// publishers declare (`[oslo_messaging_rabbit] amqp_durable_queues`, false by default),
    /// or the broker refuses the declaration.
    #[serde(default)]
    pub durable: bool,
    /// Extra queue arguments, to match what the publishers declare (for example
    /// `{"x-queue-type" = "quorum"}` with `rabbit_quorum_queue = true`).
    #[serde(default)]
    pub queue_arguments: BTreeMap<String, ArgValue>,
    /// What to consume; by default Nova's versioned notifications on exchange `nova` and
    /// Heat's on exchange `heat`, topic `notifications`.
    #[serde(default = "default_subscriptions")]
    pub subscriptions: Vec<Subscription>,
    /// Where malformed messages go.
    #[serde(default)]
    pub dead_letter: DeadLetter,
    /// How many recent message ids are remembered to drop duplicates (0: none).
    #[serde(default = "default_dedup_capacity")]
    pub dedup_capacity: usize,
    /// On shutdown, how long messages already received may take to reach the host before
    /// the connection is closed (what is not acknowledged by then is redelivered later).
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The largest body a compressed message (kombu's `compression` header) may
    /// decompress to, in bytes; a larger one is dead-lettered (see
    /// [`crate::compression`]).
    #[serde(default = "default_max_decompressed_bytes")]
    pub max_decompressed_bytes: usize,
    /// With it, the resources of each stack a Heat notification names are read from
    /// Heat's API so that `heat.stack` agrees with the Heat collector's (see
    /// [`crate::heat`]). Without it stacks carry no relations.
    #[serde(default)]
    pub heat: Option<HeatConfig>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("vhost", &self.vhost)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field(
                "client_cert_password",
                &self.client_cert_password.as_ref().map(|_| "***"),
            )
            .field("connection_name", &self.connection_name)
            .field("heartbeat", &self.heartbeat)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_initial", &self.reconnect_initial)
            .field("reconnect_max", &self.reconnect_max)
            .field("prefetch", &self.prefetch)
            .field("batch_size", &self.batch_size)
            .field("families", &self.families)
            .field("priorities", &self.priorities)
            .field("durable", &self.durable)
            .field("queue_arguments", &self.queue_arguments)
            .field("subscriptions", &self.subscriptions)
            .field("dead_letter", &self.dead_letter)
            .field("dedup_capacity", &self.dedup_capacity)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("max_decompressed_bytes", &self.max_decompressed_bytes)
            .field("heat", &self.heat)
            .finish()
    }
}

/// One exchange and its topics.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// The topic exchange: the publishing service's `control_exchange` (`nova`, `heat`;
    /// oslo's default is `openstack`).
    pub exchange: String,
    /// The notification topics (`versioned_notifications`, `notifications`, or a topic of
    /// your own added to the service's `[oslo_messaging_notifications] topics`).
    pub topics: Vec<String>,
    /// The priorities to consume; the instance's `priorities` when unset.
    #[serde(default)]
    pub priorities: Option<Vec<String>>,
    /// The queue name, with `{topic}` and `{priority}` replaced; `{topic}.{priority}`
    /// (the queue oslo's publisher declares itself) when unset.
    #[serde(default)]
    pub queue: Option<String>,
}

/// Where malformed messages go.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    /// The dead-letter exchange (declared as a fanout exchange).
    #[serde(default = "default_dlx")]
    pub exchange: String,
    /// The dead-letter queue, bound to that exchange.
    #[serde(default = "default_dlq")]
    pub queue: String,
    /// Whether the dead-letter exchange and queue are durable.
    #[serde(default = "yes")]
    pub durable: bool,
}

impl Default for DeadLetter {
    fn default() -> Self {
        DeadLetter {
            exchange: default_dlx(),
            queue: default_dlq(),
            durable: true,
        }
    }
}

/// A queue argument value.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ArgValue {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A string.
    String(String),
}

fn yes() -> bool {
    true
}
fn default_connection_name() -> String {
    "synchronizer-bus".into()
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
/// Deep enough that the broker keeps sending while a batch is with the host: a message is
/// acknowledged only once the host has taken its change, so the window must cover the
/// batches between receipt and ack (oslo.messaging's own consumers default to no limit).
fn default_prefetch() -> u16 {
    1024
}
fn default_batch_size() -> usize {
    128
}
fn default_families() -> Vec<Family> {
    vec![Family::NovaVersioned, Family::Heat]
}
fn default_priorities() -> Vec<String> {
    vec!["info".into(), "error".into()]
}
fn default_subscriptions() -> Vec<Subscription> {
    vec![
        Subscription {
            exchange: "nova".into(),
            topics: vec!["versioned_notifications".into()],
            priorities: None,
            queue: None,
        },
        Subscription {
            exchange: "heat".into(),
            topics: vec!["notifications".into()],
            priorities: None,
            queue: None,
        },
    ]
}
fn default_dlx() -> String {
    "synchronizer.dead-letter".into()
}
fn default_dlq() -> String {
    "synchronizer.dead-letter".into()
}
fn default_dedup_capacity() -> usize {
    65_536
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_max_decompressed_bytes() -> usize {
    crate::compression::DEFAULT_MAX_DECOMPRESSED
}

impl Config {
    /// A configuration with every default and these URLs.
    pub fn with_urls<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> Self {
        Config {
            urls: urls.into_iter().map(Into::into).collect(),
            vhost: None,
            ca_file: None,
            client_cert_file: None,
            client_cert_password: None,
            connection_name: default_connection_name(),
            heartbeat: None,
            connect_timeout: default_connect_timeout(),
            reconnect_initial: default_reconnect_initial(),
            reconnect_max: default_reconnect_max(),
            prefetch: default_prefetch(),
            batch_size: default_batch_size(),
            families: default_families(),
            priorities: default_priorities(),
            durable: false,
            queue_arguments: BTreeMap::new(),
            subscriptions: default_subscriptions(),
            dead_letter: DeadLetter::default(),
            dedup_capacity: default_dedup_capacity(),
            shutdown_grace: default_shutdown_grace(),
            max_decompressed_bytes: default_max_decompressed_bytes(),
            heat: None,
        }
    }

    /// The queues to consume: each distinct queue name once, with every binding that
    /// feeds it (oslo's default queue names are shared across exchanges: Nova's and
    /// Heat's `notifications.info` is one queue bound to both).
    pub fn queues(&self) -> Result<Vec<QueuePlan>, ConfigError> {
        let mut plans: Vec<QueuePlan> = Vec::new();
        for sub in &self.subscriptions {
            let priorities = sub.priorities.as_ref().unwrap_or(&self.priorities);
            for topic in &sub.topics {
                for priority in priorities {
                    let routing_key = format!("{topic}.{priority}");
                    let name = match &sub.queue {
                        Some(t) => t.replace("{topic}", topic).replace("{priority}", priority),
                        None => routing_key.clone(),
                    };
                    if name.is_empty() || name.len() > 255 {
                        return Err(ConfigError::invalid(
                            "subscriptions.queue",
                            format!("queue name {name:?} must be 1 to 255 bytes"),
                        ));
                    }
                    let binding = Binding {
                        exchange: sub.exchange.clone(),
                        routing_key,
                    };
                    match plans.iter_mut().find(|p| p.name == name) {
                        Some(plan) => {
                            if !plan.bindings.contains(&binding) {
                                plan.bindings.push(binding);
                            }
                        }
                        None => plans.push(QueuePlan {
                            name,
                            bindings: vec![binding],
                        }),
                    }
                }
            }
        }
        Ok(plans)
    }

    /// Checks the configuration; returns the parsed broker URIs.
    pub fn validate(&self) -> Result<Vec<AMQPUri>, ConfigError> {
        if self.urls.is_empty() {
            return Err(ConfigError::invalid(
                "urls",
                "at least one broker URL is needed",
            ));
        }
        let mut uris = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            let secrets = Secrets::of_url(url);
            let mut uri: AMQPUri = url.parse().map_err(|e: String| {
                ConfigError::invalid(
                    "urls",
                    format!("{}: {}", redact_url(url), secrets.scrub(&e)),
                )
            })?;
            if let Some(vhost) = &self.vhost {
                uri.vhost = vhost.clone();
            }
            if let Some(h) = self.heartbeat {
                uri.query.heartbeat = Some(h);
            }
            uris.push(uri);
        }
        if self.prefetch == 0 {
            return Err(ConfigError::invalid("prefetch", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(ConfigError::invalid("batch_size", "must be at least 1"));
        }
        if self.max_decompressed_bytes == 0 {
            return Err(ConfigError::invalid(
                "max_decompressed_bytes",
                "must be at least 1",
            ));
        }
        if self.families.is_empty() {
            return Err(ConfigError::invalid(
                "families",
                "name at least one of nova-versioned, nova-legacy, heat",
            ));
        }
        if self.subscriptions.is_empty() {
            return Err(ConfigError::invalid(
                "subscriptions",
                "at least one is needed",
            ));
        }
        for (i, sub) in self.subscriptions.iter().enumerate() {
            if sub.exchange.is_empty() {
                return Err(ConfigError::invalid(
                    format!("subscriptions[{i}].exchange"),
                    "must not be empty",
                ));
            }
            if sub.topics.is_empty() || sub.topics.iter().any(String::is_empty) {
                return Err(ConfigError::invalid(
                    format!("subscriptions[{i}].topics"),
                    format!(
                        "exchange `{}`: name at least one non-empty topic",
                        sub.exchange
                    ),
                ));
            }
            let priorities = sub.priorities.as_ref().unwrap_or(&self.priorities);
            if priorities.is_empty() || priorities.iter().any(String::is_empty) {
                let field = match sub.priorities {
                    Some(_) => format!("subscriptions[{i}].priorities"),
                    None => "priorities".to_owned(),
                };
                return Err(ConfigError::invalid(
                    field,
                    format!(
                        "exchange `{}`: name at least one non-empty priority",
                        sub.exchange
                    ),
                ));
            }
        }
        if self.dead_letter.exchange.is_empty() || self.dead_letter.queue.is_empty() {
            return Err(ConfigError::invalid(
                "dead_letter",
                "`exchange` and `queue` must not be empty",
            ));
        }
        if self.reconnect_initial.is_zero() || self.reconnect_max < self.reconnect_initial {
            return Err(ConfigError::invalid(
                "reconnect_initial",
                "must be more than zero and at most `reconnect_max`",
            ));
        }
        let queues = self.queues()?;
        if queues.iter().any(|q| q.name == self.dead_letter.queue) {
            return Err(ConfigError::invalid(
                "dead_letter.queue",
                "must not be one of the consumed queues",
            ));
        }
        Ok(uris)
    }
}

/// One exchange-to-queue binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The topic exchange.
    pub exchange: String,
    /// `<topic>.<priority>`.
    pub routing_key: String,
}

/// One queue to consume, and what feeds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuePlan {
    /// The queue's name.
    pub name: String,
    /// Its bindings.
    pub bindings: Vec<Binding>,
}

impl QueuePlan {
    /// Whether oslo's publisher declares this queue itself (its name is a routing key it
    /// publishes with). Such a queue must be declared exactly as oslo does, without
    /// arguments of ours: a queue declared with `x-dead-letter-exchange` makes oslo's own
    /// declaration, and so its notifications, fail with PRECONDITION_FAILED. Malformed
    /// messages from it are dead-lettered by publishing them to the dead-letter exchange
    /// (with publisher confirms) and then acknowledging them; from a queue of our own they
    /// are rejected (`requeue=false`) and the broker dead-letters them.
    pub fn publisher_declared(&self) -> bool {
        self.bindings.iter().any(|b| b.routing_key == self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_shows_no_password() {
        let mut c = Config::with_urls(["amqps://u:hunter2@h:5671/", "amqp://u:other-pw@h2/"]);
        c.client_cert_password = Some("p12-secret".into());
        let text = format!("{c:?}");
        for secret in ["hunter2", "other-pw", "p12-secret"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("amqps://u:***@h:5671/"), "{text}");
    }

    #[test]
    fn secrets_are_scrubbed_raw_and_decoded() {
        let s = Secrets::of_url("amqp://u:p%40ss@h/");
        assert_eq!(s.scrub("bad p%40ss and p@ss"), "bad *** and ***");
        assert_eq!(Secrets::of_url("amqp://h/").scrub("x"), "x");
    }

    #[test]
    fn a_bad_url_is_reported_without_its_password() {
        let c = Config::with_urls(["amqp://user:hunter2@host:notaport/"]);
        let err = c.validate().unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("urls"), "{err}");
        // An unencoded `/` in the password: the client reads `hun` as a port.
        let c = Config::with_urls(["amqp://user:hun/ter2@host/"]);
        let err = c.validate().unwrap_err().to_string();
        assert!(!err.contains("ter2") && !err.contains("hun/"), "{err}");
        assert!(err.contains("amqp://user:***@host/"), "{err}");
    }

    #[test]
    fn queues_merge_shared_names_and_know_who_declares_them() {
        let mut c = Config::with_urls(["amqp://h"]);
        c.subscriptions = vec![
            Subscription {
                exchange: "nova".into(),
                topics: vec!["notifications".into()],
                priorities: None,
                queue: None,
            },
            Subscription {
                exchange: "heat".into(),
                topics: vec!["notifications".into()],
                priorities: Some(vec!["info".into()]),
                queue: None,
            },
            Subscription {
                exchange: "nova".into(),
                topics: vec!["mine".into()],
                priorities: Some(vec!["error".into()]),
                queue: Some("sync.{topic}.{priority}".into()),
            },
        ];
        let q = c.queues().unwrap();
        assert_eq!(q.len(), 3);
        assert_eq!(q[0].name, "notifications.info");
        assert_eq!(q[0].bindings.len(), 2);
        assert!(q[0].publisher_declared());
        assert_eq!(q[1].name, "notifications.error");
        assert_eq!(q[2].name, "sync.mine.error");
        assert_eq!(q[2].bindings[0].routing_key, "mine.error");
        assert!(!q[2].publisher_declared());
    }

    #[test]
    fn vhost_and_heartbeat_override_the_url() {
        let mut c = Config::with_urls(["amqp://g:g@127.0.0.1:5672/%2f"]);
        c.vhost = Some("nova".into());
        c.heartbeat = Some(7);
        let uris = c.validate().unwrap();
        assert_eq!(uris[0].vhost, "nova");
        assert_eq!(uris[0].query.heartbeat, Some(7));
    }

    #[test]
    fn defaults_parse_from_an_almost_empty_table() {
        let c: Config = serde_json::from_value(serde_json::json!({"urls": ["amqp://h"]})).unwrap();
        assert_eq!(c.prefetch, 1024);
        assert_eq!(c.families, vec![Family::NovaVersioned, Family::Heat]);
        let names: Vec<String> = c.queues().unwrap().into_iter().map(|q| q.name).collect();
        assert_eq!(
            names,
            [
                "versioned_notifications.info",
                "versioned_notifications.error",
                "notifications.info",
                "notifications.error"
            ]
        );
        let err = serde_json::from_value::<Config>(serde_json::json!({"urls": [], "prefetsh": 1}))
            .unwrap_err();
        assert!(err.to_string().contains("prefetsh"));
    }
}
