//! The host's metrics, in the Prometheus / OpenMetrics text format (prometheus-client).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `synchronizer_collections_total` | counter | plugin_instance, outcome | collections by outcome: `success`, `failed`, `too_large`, `timeout`, `stuck` |
//! | `synchronizer_collection_duration_seconds` | histogram | plugin_instance | how long collections took (successful or not) |
//! | `synchronizer_snapshot_diff_seconds` | histogram | plugin_instance | how long the host took to turn a collected snapshot into changes: hashing, waiting for the writer, the diff (the plugin's own time is not in it) |
//! | `synchronizer_entities` | gauge | type | entities the baseline holds per type |
//! | `synchronizer_changes_total` | counter | action | change notifications emitted: `created`, `updated`, `deleted` |
//! | `synchronizer_invalid_timestamps_total` | counter | plugin_instance | source timestamps outside years 1..=9999, discarded (the sample time stood in) |
//! | `synchronizer_plugin_stat` | gauge | plugin_instance, name | a plugin's own counters (the bus plugin's `messages_consumed`, `messages_acked`, `messages_dead_lettered`, ...) |
//! | `synchronizer_subscribers` | gauge | | live subscribers |
//! | `synchronizer_subscriber_queue_max` | gauge | | the deepest subscriber queue right now (lag, in events) |
//! | `synchronizer_subscriber_resyncs_total` | counter | | times a subscriber fell behind and was resynced |
//! | `synchronizer_output_published_total` | counter | output | changes an AMQP output published and its broker confirmed |
//! | `synchronizer_output_unconfirmed` | gauge | output | changes waiting for an AMQP output: queued or published and not confirmed yet (producers are held back while its broker is away) |
//! | `synchronizer_output_connected` | gauge | output | 1 while an AMQP output is connected to its broker |
//! | `synchronizer_output_failures_total` | counter | output | times an AMQP output lost or could not open its connection |
//! | `synchronizer_refused_entities_total` | counter | plugin_instance, reason | entities refused: `unlisted_type` (a type the plugin does not declare in `PluginInfo::entity_types`) |
//! | `synchronizer_instance_healthy` | gauge | plugin_instance | 1 while an instance is `healthy` (its last call succeeded and its plugin reports itself healthy: a bus connected to its broker), 0 otherwise (starting, degraded, failing, stuck, stopped) |
//! | `synchronizer_child_restarts_total` | counter | plugin_instance, cause | times a plugin child (process isolation) ended and was restarted, by cause: `exit` (it exited), `signal` (a signal killed it), `heartbeat`, `memory`, `protocol`, `stuck` (the host killed it: no heartbeat answer, past `memory_limit`, a malformed frame, a call's thread that did not return), `launch` (a new child failed to start), `unknown` |
//! | `synchronizer_http_connections` | gauge | | HTTP connections open right now (served and reserve) |
//! | `synchronizer_http_connections_refused_total` | counter | | HTTP connections closed at once because `max_connections` and the reserve were taken |
//!
//! Counters and the histogram are updated where things happen; gauges are refreshed when
//! the registry is encoded. Every family exists from the start: the configured outputs'
//! and instances' series are created at 0 ([`Metrics::prepare_output`],
//! [`Metrics::prepare_instance`]), so that an alert on an output that never connected, or
//! on restarts that began with the process, has a series to see.
//!
//! [`Metrics::encode`] writes OpenMetrics text (`application/openmetrics-text`);
//! [`Metrics::encode_as`] with [`Format::Classic`] the classic Prometheus text format (`text/plain;
//! version=0.0.4`), for scrapers that ask for it.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels: instance and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The plugin instance (not `instance`, which Prometheus gives the scraped target).
    pub plugin_instance: String,
    /// success, failed, timeout, stuck.
    pub outcome: &'static str,
}

/// Labels: instance.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// The plugin instance (not `instance`, which Prometheus gives the scraped target).
    pub plugin_instance: String,
}

/// Labels: entity type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// The entity type.
    pub r#type: String,
}

/// A label value from outside (an entity type, a plugin counter's name, an instance
/// name) as the text exposition format needs it: prometheus-client writes label values as
/// they are, so a `"`, `\` or line break would break the line (found by the `outputs`
/// fuzz target).
pub fn label_value(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Labels: action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// created, updated, deleted.
    pub action: &'static str,
}

/// Labels: an output.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputLabels {
    /// The output's name.
    pub output: String,
}

/// Labels: instance and why entities were refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The plugin instance (not `instance`, which Prometheus gives the scraped target).
    pub plugin_instance: String,
    /// Why.
    pub reason: &'static str,
}

/// Labels: instance and why its child ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestartLabels {
    /// The plugin instance (not `instance`, which Prometheus gives the scraped target).
    pub plugin_instance: String,
    /// Why the child ended (a bounded set, see the module docs).
    pub cause: &'static str,
}

/// Every `cause` of `synchronizer_child_restarts_total`.
pub const RESTART_CAUSES: [&str; 8] = [
    "exit",
    "signal",
    "heartbeat",
    "memory",
    "protocol",
    "stuck",
    "launch",
    "unknown",
];

/// Every `outcome` of `synchronizer_collections_total`.
pub const COLLECTION_OUTCOMES: [&str; 5] = ["success", "failed", "too_large", "timeout", "stuck"];

/// Labels: a plugin counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginCounterLabels {
    /// The plugin instance (not `instance`, which Prometheus gives the scraped target).
    pub plugin_instance: String,
    /// The plugin's name for the counter.
    pub name: String,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric of one host.
pub struct Metrics {
    registry: Registry,
    /// Collections by instance and outcome.
    pub collections: Family<OutcomeLabels, Counter>,
    /// Collection durations by instance.
    pub durations: Family<InstanceLabels, Histogram, fn() -> Histogram>,
    /// Snapshot diff durations (hash, wait for the writer, judge) by instance.
    pub diff_durations: Family<InstanceLabels, Histogram, fn() -> Histogram>,
    /// Entities per type.
    pub entities: Family<TypeLabels, Gauge>,
    /// Changes by action.
    pub changes: Family<ActionLabels, Counter>,
    /// Source timestamps out of range, discarded, by instance.
    pub invalid_timestamps: Family<InstanceLabels, Counter>,
    /// Plugins' own counters.
    pub plugin_counters: Family<PluginCounterLabels, Gauge<u64, AtomicU64>>,
    /// Live subscribers.
    pub subscribers: Gauge,
    /// Deepest subscriber queue.
    pub subscriber_queue_max: Gauge,
    /// Resyncs after lag.
    pub subscriber_resyncs: Counter,
    /// Changes an output published, confirmed.
    pub output_published: Family<OutputLabels, Counter>,
    /// Changes waiting for an output.
    pub output_unconfirmed: Family<OutputLabels, Gauge>,
    /// Whether an output is connected.
    pub output_connected: Family<OutputLabels, Gauge>,
    /// Connection failures of an output.
    pub output_failures: Family<OutputLabels, Counter>,
    /// Entities refused, by reason.
    pub refused_entities: Family<RefusedLabels, Counter>,
    /// Plugin children restarted, by cause.
    pub child_restarts: Family<RestartLabels, Counter>,
    /// 1 while an instance is healthy.
    pub instance_healthy: Family<InstanceLabels, Gauge>,
    /// HTTP connections open.
    pub http_connections: Gauge,
    /// HTTP connections refused (closed at accept).
    pub http_connections_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("synchronizer");
        let collections = Family::<OutcomeLabels, Counter>::default();
        registry.register("collections", "Collections by outcome", collections.clone());
        let durations =
            Family::<InstanceLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "collection_duration_seconds",
            "How long collections took",
            durations.clone(),
        );
        let diff_durations =
            Family::<InstanceLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "snapshot_diff_seconds",
            "How long the host took to turn a snapshot into changes",
            diff_durations.clone(),
        );
        let entities = Family::<TypeLabels, Gauge>::default();
        registry.register(
            "entities",
            "Entities the baseline holds per type",
            entities.clone(),
        );
        let changes = Family::<ActionLabels, Counter>::default();
        registry.register("changes", "Change notifications emitted", changes.clone());
        let invalid_timestamps = Family::<InstanceLabels, Counter>::default();
        registry.register(
            "invalid_timestamps",
            "Source timestamps outside years 1 to 9999, discarded",
            invalid_timestamps.clone(),
        );
        let plugin_counters = Family::<PluginCounterLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "plugin_stat",
            "A plugin's own counters",
            plugin_counters.clone(),
        );
        let subscribers = Gauge::default();
        registry.register("subscribers", "Live subscribers", subscribers.clone());
        let subscriber_queue_max = Gauge::default();
        registry.register(
            "subscriber_queue_max",
            "The deepest subscriber queue, in events",
            subscriber_queue_max.clone(),
        );
        let subscriber_resyncs = Counter::default();
        registry.register(
            "subscriber_resyncs",
            "Times a subscriber fell behind and was resynced",
            subscriber_resyncs.clone(),
        );
        let output_published = Family::<OutputLabels, Counter>::default();
        registry.register(
            "output_published",
            "Changes an output published and its broker confirmed",
            output_published.clone(),
        );
        let output_unconfirmed = Family::<OutputLabels, Gauge>::default();
        registry.register(
            "output_unconfirmed",
            "Changes waiting for an output's broker to confirm them",
            output_unconfirmed.clone(),
        );
        let output_connected = Family::<OutputLabels, Gauge>::default();
        registry.register(
            "output_connected",
            "1 while an output is connected to its broker",
            output_connected.clone(),
        );
        let output_failures = Family::<OutputLabels, Counter>::default();
        registry.register(
            "output_failures",
            "Times an output lost or could not open its connection",
            output_failures.clone(),
        );
        let refused_entities = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "refused_entities",
            "Entities refused, by reason",
            refused_entities.clone(),
        );
        let child_restarts = Family::<RestartLabels, Counter>::default();
        registry.register(
            "child_restarts",
            "Times a plugin child process ended and was restarted, by cause",
            child_restarts.clone(),
        );
        let instance_healthy = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "instance_healthy",
            "1 while an instance is healthy (its calls succeed and its plugin reports itself healthy)",
            instance_healthy.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "HTTP connections open",
            http_connections.clone(),
        );
        let http_connections_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "HTTP connections closed at accept because every connection slot was taken",
            http_connections_refused.clone(),
        );
        for action in ["created", "updated", "deleted"] {
            let _ = changes.get_or_create(&ActionLabels { action });
        }
        Metrics {
            instance_healthy,
            child_restarts,
            http_connections,
            http_connections_refused,
            refused_entities,
            registry,
            output_published,
            output_unconfirmed,
            output_connected,
            output_failures,
            collections,
            durations,
            diff_durations,
            entities,
            changes,
            invalid_timestamps,
            plugin_counters,
            subscribers,
            subscriber_queue_max,
            subscriber_resyncs,
        }
    }
}

impl Metrics {
    /// Records one collection.
    pub fn collection(&self, instance: &str, outcome: &'static str, seconds: f64) {
        self.collections
            .get_or_create(&OutcomeLabels {
                plugin_instance: instance.to_owned(),
                outcome,
            })
            .inc();
        self.durations
            .get_or_create(&InstanceLabels {
                plugin_instance: instance.to_owned(),
            })
            .observe(seconds);
    }

    /// Creates the series of one output at 0 (or as they are, when they exist).
    pub fn prepare_output(&self, name: &str) {
        let labels = OutputLabels {
            output: name.to_owned(),
        };
        let _ = self.output_published.get_or_create(&labels);
        let _ = self.output_unconfirmed.get_or_create(&labels);
        let _ = self.output_connected.get_or_create(&labels);
        let _ = self.output_failures.get_or_create(&labels);
    }

    /// Creates the series of one instance at 0: its collections' outcomes when it is a
    /// collector, its child's restart causes when it runs in a child process.
    pub fn prepare_instance(&self, instance: &str, collector: bool, child: bool) {
        let instance = instance.to_owned();
        if collector {
            for outcome in COLLECTION_OUTCOMES {
                let _ = self.collections.get_or_create(&OutcomeLabels {
                    plugin_instance: instance.clone(),
                    outcome,
                });
            }
            let _ = self.durations.get_or_create(&InstanceLabels {
                plugin_instance: instance.clone(),
            });
            let _ = self.diff_durations.get_or_create(&InstanceLabels {
                plugin_instance: instance.clone(),
            });
        }
        if child {
            for cause in RESTART_CAUSES {
                let _ = self.child_restarts.get_or_create(&RestartLabels {
                    plugin_instance: instance.clone(),
                    cause,
                });
            }
        }
        let _ = self.instance_healthy.get_or_create(&InstanceLabels {
            plugin_instance: instance.clone(),
        });
        let _ = self.invalid_timestamps.get_or_create(&InstanceLabels {
            plugin_instance: instance.clone(),
        });
        let _ = self.refused_entities.get_or_create(&RefusedLabels {
            plugin_instance: instance,
            reason: "unlisted_type",
        });
    }

    /// Counts one restart of `instance`'s child, ended by `cause` (one of
    /// [`RESTART_CAUSES`]).
    pub fn child_restart(&self, instance: &str, cause: &'static str) {
        self.child_restarts
            .get_or_create(&RestartLabels {
                plugin_instance: instance.to_owned(),
                cause,
            })
            .inc();
    }

    /// Counts `n` entities of `instance` refused for `reason`.
    pub fn refused_entities(&self, instance: &str, reason: &'static str, n: u64) {
        self.refused_entities
            .get_or_create(&RefusedLabels {
                plugin_instance: instance.to_owned(),
                reason,
            })
            .inc_by(n);
    }

    /// Counts one source timestamp of `instance` that was out of range and discarded.
    pub fn invalid_timestamp(&self, instance: &str) {
        self.invalid_timestamps
            .get_or_create(&InstanceLabels {
                plugin_instance: instance.to_owned(),
            })
            .inc();
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// The registry in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.encode(),
            Format::Classic => classic(&self.encode()),
        }
    }
}

/// A text exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 (`application/openmetrics-text; version=1.0.0`).
    OpenMetrics,
    /// The classic Prometheus text format (`text/plain; version=0.0.4`).
    Classic,
}

impl Format {
    /// The format an HTTP `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` (as Prometheus servers do, preferring it), the
    /// classic format otherwise (promtool, curl, older scrapers, no header at all).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let openmetrics = accept.is_some_and(|a| {
            a.split(',').any(|range| {
                let mut params = range.split(';');
                let media = params.next().unwrap_or("").trim();
                let refused = params.any(|p| {
                    let p = p.trim();
                    p.strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if openmetrics {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// OpenMetrics text (as prometheus-client writes it) rewritten in the classic format: a
/// counter family's `HELP` and `TYPE` name its `_total` sample, `unknown` is `untyped`,
/// and the `UNIT` lines and the `# EOF` trailer go.
fn classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP line waits for its TYPE line, which says whether it is a counter.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            if let Some((name, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_timestamps_are_counted_per_instance() {
        let m = Metrics::default();
        m.invalid_timestamp("nova");
        m.invalid_timestamp("nova");
        m.invalid_timestamp("bus");
        let text = m.encode();
        assert!(
            text.contains("synchronizer_invalid_timestamps_total{plugin_instance=\"nova\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("synchronizer_invalid_timestamps_total{plugin_instance=\"bus\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE synchronizer_invalid_timestamps counter"),
            "{text}"
        );
    }

    #[test]
    fn the_accept_header_chooses_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text")),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Classic
        );
        assert_eq!(Format::negotiate(Some("*/*")), Format::Classic);
        assert_eq!(Format::negotiate(None), Format::Classic);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0, text/plain")),
            Format::Classic
        );
    }

    #[test]
    fn the_classic_format_names_counters_by_their_sample() {
        let m = Metrics::default();
        m.prepare_instance("nova", true, true);
        m.child_restart("nova", "signal");
        let text = m.encode_as(Format::Classic);
        assert!(
            text.contains("# HELP synchronizer_child_restarts_total Times a plugin child"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE synchronizer_child_restarts_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "synchronizer_child_restarts_total{plugin_instance=\"nova\",cause=\"signal\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "synchronizer_child_restarts_total{plugin_instance=\"nova\",cause=\"memory\"} 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE synchronizer_subscribers gauge\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            !text.contains("# TYPE synchronizer_changes counter"),
            "{text}"
        );
    }

    #[test]
    fn http_connection_metrics_exist_from_the_start() {
        let text = Metrics::default().encode();
        for line in [
            "# HELP synchronizer_http_connections HTTP connections open.",
            "# TYPE synchronizer_http_connections gauge",
            "synchronizer_http_connections 0",
            "# TYPE synchronizer_http_connections_refused counter",
            "synchronizer_http_connections_refused_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
