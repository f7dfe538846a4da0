//! One function per fuzz target, of the fuzzer's bytes. Each runs the real parser of one
//! external input and sends every entity it yields through [`crate::check`]. A target
//! returns quietly for input the code refuses with an error; it panics only on a
//! finding (a panic in the code, or a check that fails).
//!
//! Where a target reads several inputs at once, they are separated by a NUL byte (which
//! none of these text formats allows): `heat_pages` (stacks page, resources page),
//! `host_config` (TOML, then `NAME=VALUE` environment variables), `static_yaml` (one YAML
//! file each).

use std::sync::{Mutex, OnceLock};

use arbitrary::Unstructured;
use axum::http::{HeaderValue, Uri};
use synchronizer::isolation::wire::{FromChild, ToChild, WireError};
use synchronizer::metrics::{PluginCounterLabels, label_value};
use synchronizer_nagios::{HostRules, HostRulesConfig};
use synchronizer_plugin_api::Entity;
use url::Url;

use crate::{arb, check};

/// A target: the fuzzer's bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target, by name (the names of `fuzz_targets/*.rs` and `corpus/*`).
pub const ALL: &[(&str, Target)] = &[
    ("nagios_html", nagios_html),
    ("nagios_json", nagios_json),
    ("nagios_vitrage_conf", nagios_vitrage_conf),
    ("bus_message", bus_message),
    ("bus_notification", bus_notification),
    ("bus_compressed", bus_compressed),
    ("nova_pages", nova_pages),
    ("heat_pages", heat_pages),
    ("cinder_pages", cinder_pages),
    ("neutron_pages", neutron_pages),
    ("openstack_time", openstack_time),
    ("host_config", host_config),
    ("static_yaml", static_yaml),
    ("wire_from_child", wire_from_child),
    ("wire_to_child", wire_to_child),
    ("wire_roundtrip", wire_roundtrip),
    ("http_query", http_query),
    ("outputs", outputs),
    ("secrets", secrets),
    ("config_location", config_location),
    ("prometheus_alerts", prometheus_alerts),
    ("prometheus_webhook", prometheus_webhook),
    ("prometheus_rules", prometheus_rules),
];

/// The label rules the prometheus targets map with: a selector rule, a port-stripping
/// one and a key (`id`) one.
fn prometheus_rules_fixed() -> &'static synchronizer_prometheus::Rules {
    static RULES: OnceLock<synchronizer_prometheus::Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let rules: Vec<synchronizer_prometheus::RuleConfig> = serde_json::from_str(
            r#"[
                {"match": {"job": "libvirt"}, "type": "nova.instance", "property": "instance_name", "label": "domain"},
                {"type": "nova.host", "property": "ip", "label": "instance", "strip_port": true},
                {"type": "nova.host", "property": "id", "label": "host"}
            ]"#,
        )
        .unwrap_or_default();
        synchronizer_prometheus::Rules::new(rules).unwrap_or_default()
    })
}

/// Alertmanager's `GET /api/v2/alerts` answer: read, and every alert's alarm checked.
pub fn prometheus_alerts(data: &[u8]) {
    if let Ok(alerts) = synchronizer_prometheus::parse_api_alerts(data) {
        let entities: Vec<Entity> = alerts
            .iter()
            .filter_map(|a| {
                synchronizer_prometheus::alerts::alarm_entity(a, "am", prometheus_rules_fixed())
            })
            .collect();
        check::entities(&entities);
    }
}

/// An Alertmanager webhook body: read, and its changes checked as pushed changes.
pub fn prometheus_webhook(data: &[u8]) {
    if let Ok(hook) = synchronizer_prometheus::parse_webhook(data) {
        let changes =
            synchronizer_prometheus::webhook::changes(&hook, "am", prometheus_rules_fixed());
        assert_eq!(changes.len(), hook.alerts.len(), "one change per alert");
        check::pushed(&changes);
    }
}

/// Vitrage's `prometheus_conf.yaml` (the plugin's `vitrage_conf`), read into rules and
/// applied to a few label sets; and the first line read as the plugin's own rules (JSON).
pub fn prometheus_rules(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let types = synchronizer_prometheus::rules::default_vitrage_types();
    let label_sets: [&[(&str, &str)]; 3] = [
        &[
            ("alertname", "HighCpuOnVmAlert"),
            ("job", "libvirt"),
            ("domain", "instance-4"),
            ("instance", "1.1.1.1:9999"),
        ],
        &[("instance", "[fe80::1]:9100"), ("host_id", "")],
        &[],
    ];
    let apply = |rules: &synchronizer_prometheus::Rules| {
        for set in label_sets {
            let labels = set
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            if let Some(t) = rules.target(&labels) {
                // A target is a key or a selector the host can read back.
                let selector = synchronizer_plugin_api::Selector::parse(&t.other);
                assert!(selector.is_some() || t.other.contains(':'), "{t:?}");
            }
        }
    };
    if let Ok(rules) = synchronizer_prometheus::Rules::from_vitrage_yaml(&text, &types) {
        apply(&rules);
    }
    if let Ok(configs) = serde_json::from_str::<Vec<synchronizer_prometheus::RuleConfig>>(&text)
        && let Ok(rules) = synchronizer_prometheus::Rules::new(configs)
    {
        apply(&rules);
    }
}

fn split_nul(data: &[u8]) -> Vec<&[u8]> {
    data.split(|b| *b == 0).collect()
}

/// The host rules the Nagios targets map with: the default, and rules with groups.
fn nagios_rules() -> &'static [HostRules; 2] {
    static RULES: OnceLock<[HostRules; 2]> = OnceLock::new();
    RULES.get_or_init(|| {
        let config: HostRulesConfig = serde_json::from_str(
            r#"{"rules": [
                {"pattern": "compute-(\\d+)", "key": "nova.host:node$1"},
                {"pattern": "(?P<h>[a-z]+)\\.(?P<d>.+)", "key": "${d}/${h}/${name}/$0/$$"}
            ], "default_key": "other:${nagios_host}"}"#,
        )
        .unwrap_or_else(|e| panic!("the fuzz target's own rules: {e}"));
        let custom = HostRules::new(&config).unwrap_or_else(|e| panic!("rules: {e}"));
        [HostRules::default(), custom]
    })
}

fn nagios_statuses(statuses: &[synchronizer_nagios::ServiceStatus]) {
    for s in statuses {
        // What the plugin shows of a status in its logs and properties.
        let _ = (s.native_id(), s.name(), s.is_alarm());
        if let Some(t) = &s.last_check {
            let _ = t.to_string();
        }
        if let Some(a) = &s.attempt {
            let _ = a.to_string();
        }
    }
    for rules in nagios_rules() {
        check::entities(&synchronizer_nagios::plugin::to_entities(
            "nagios-fuzz",
            rules,
            statuses,
        ));
    }
}

/// Vitrage's `nagios_conf.yaml` (the nagios plugin's `vitrage_conf`): read, built into
/// rules, and the rules applied to a few host names.
pub fn nagios_vitrage_conf(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(mappings) = synchronizer_nagios::parse_vitrage_conf(&text) {
        if let Ok(rules) = HostRules::vitrage(&mappings) {
            for host in ["compute-1", "compute-10", "compute-1.local", "ceph-0", ""] {
                let _ = rules.resource_key(host);
            }
        }
    }
}

/// Nagios `status.cgi?host=all&limit=0` pages.
pub fn nagios_html(data: &[u8]) {
    if let Ok(statuses) = synchronizer_nagios::parse_status_page(data) {
        nagios_statuses(&statuses);
    }
}

/// Nagios `statusjson.cgi` answers, read as a `servicelist` and as a `hostlist`.
pub fn nagios_json(data: &[u8]) {
    for parse in [
        synchronizer_nagios::parse_servicelist,
        synchronizer_nagios::parse_hostlist,
    ] {
        if let Ok(list) = parse(data) {
            nagios_statuses(&list.entries);
        }
    }
}

fn bus_interpret(body: &[u8]) {
    use synchronizer_bus::mapping::{
        Families, Family, Interpretation, MAX_FIELD, MAX_REASON, interpret, interpret_plainly,
    };
    bus_envelope(body);
    for families in [
        Families::all(),
        Families::of(&[Family::NovaLegacy]),
        Families::default(),
    ] {
        let result = interpret(body, families);
        // The fast paths change nothing of what a body means.
        assert_eq!(
            format!("{result:?}"),
            format!("{:?}", interpret_plainly(body, families)),
            "the fast and the plain reader disagree"
        );
        match result {
            Ok(interpreted) => {
                if let Interpretation::Change(change) = interpreted.interpretation {
                    check::pushed(&[change]);
                }
            }
            // What goes into the dead-letter copy's headers and the log.
            Err(m) => {
                assert!(
                    m.reason.len() <= MAX_REASON,
                    "reason of {} bytes",
                    m.reason.len()
                );
                for field in [&m.event_type, &m.message_id].into_iter().flatten() {
                    assert!(field.len() <= MAX_FIELD, "field of {} bytes", field.len());
                }
                let _ = m.to_string();
            }
        }
    }
}

/// AMQP message bodies as the bus plugin consumes them (the oslo `messagingv2` envelope,
/// or a bare notification of the older `messaging` driver).
pub fn bus_message(data: &[u8]) {
    bus_interpret(data);
}

/// The `compression` header the first byte of a `bus_compressed` input picks (its low 3
/// bits).
pub const BUS_COMPRESSION_HEADERS: [Option<&str>; 8] = [
    None,
    Some("application/x-gzip"),
    Some("application/x-bz2"),
    Some("zlib"),
    Some("application/x-lzma"),
    Some("bzip2"),
    Some(""),
    Some("APPLICATION/X-GZIP"),
];

/// Compresses `data` as kombu does for `header` (zlib for `application/x-gzip`, bzip2),
/// or `None` when the bus does not decompress that method.
pub fn bus_compress(header: Option<&str>, data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    use synchronizer_bus::compression::Method;
    let result = match Method::of(header?)? {
        Method::Gzip => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).and_then(|()| e.finish())
        }
        Method::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(data).and_then(|()| e.finish())
        }
    };
    Some(result.unwrap_or_else(|e| panic!("compressing in memory: {e}")))
}

/// Bodies with kombu's `compression` header (oslo's `kombu_compression`), decompressed
/// within a limit and interpreted. The first byte is the mode: its low 3 bits pick the
/// header ([`BUS_COMPRESSION_HEADERS`]); with bit 7 the rest is a body this target
/// compresses first by that header's method (so that the fuzzer mutates notifications,
/// not compressed streams), otherwise the rest is the body as sent; with bit 6 the limit
/// is half the rest's length instead of 64 KiB. Checks: nothing larger than the limit
/// comes out of decompression (a body without compression passes as it is); what this target compressed comes back whole when it fits; reasons stay
/// bounded; and the decompressed body goes through the `bus_message` checks.
pub fn bus_compressed(data: &[u8]) {
    use synchronizer_bus::compression::decompress;
    use synchronizer_bus::mapping::{Families, MAX_REASON, interpret_message};
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let header = BUS_COMPRESSION_HEADERS[usize::from(mode & 0x07)];
    let max = if mode & 0x40 != 0 {
        rest.len() / 2 + 1
    } else {
        64 * 1024
    };
    let ours = if mode & 0x80 != 0 {
        bus_compress(header, rest)
    } else {
        None
    };
    let body = ours.as_deref().unwrap_or(rest);
    match decompress(body, header, max) {
        Ok(plain) => {
            // The limit bounds what decompression makes; a body sent without compression
            // (no header, or an empty one) is as large as the broker let it be.
            let compressed = header.is_some_and(|h| !h.trim().is_empty());
            assert!(
                !compressed || plain.len() <= max,
                "{} bytes out, limit {max}",
                plain.len()
            );
            if ours.is_some() {
                assert_eq!(plain.as_ref(), rest, "round trip through {header:?}");
            }
            bus_interpret(&plain);
        }
        Err(m) => {
            assert!(
                m.reason.len() <= MAX_REASON,
                "reason of {} bytes",
                m.reason.len()
            );
            assert!(
                ours.is_none() || rest.len() > max,
                "{} bytes compressed here as {header:?} refused: {}",
                rest.len(),
                m.reason
            );
        }
    }
    // The consumer's entry point decides the same.
    let via_consumer = interpret_message(body, header, max, Families::all());
    if let Err(m) = via_consumer {
        assert!(
            m.reason.len() <= MAX_REASON,
            "reason of {} bytes",
            m.reason.len()
        );
    }
}

/// Notifications of every family the bus maps, as the input: each is interpreted bare
/// and inside a `messagingv2` envelope (where it is a JSON string), so that the fuzzer
/// mutates the notification rather than its escaping.
/// The fast envelope reader takes a body only when serde_json reads the same
/// `oslo.message` text from it (`synchronizer_bus::envelope`).
fn bus_envelope(body: &[u8]) {
    if let Some(fast) = synchronizer_bus::envelope::oslo_message(body) {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => assert_eq!(
                Some(fast.as_str()),
                v.get("oslo.message").and_then(serde_json::Value::as_str),
                "the two readers disagree"
            ),
            Err(e) => panic!("the fast reader took a body serde_json refuses: {e}"),
        }
    }
}

pub fn bus_notification(data: &[u8]) {
    bus_interpret(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let envelope = serde_json::json!({"oslo.version": "2.0", "oslo.message": text});
    bus_interpret(envelope.to_string().as_bytes());
}

fn page_url() -> &'static Url {
    static URL: OnceLock<Url> = OnceLock::new();
    URL.get_or_init(|| {
        Url::parse("https://cloud.example:8774/v2.1/servers/detail?all_tenants=1&limit=2")
            .unwrap_or_else(|e| panic!("the fuzz target's own URL: {e}"))
    })
}

/// Nova's answers, each read as a `servers/detail` page, an `os-hypervisors/detail`
/// page, an `os-services` answer (with the same body as its hypervisors) and an
/// `os-availability-zone/detail` answer, through the collector's own types.
pub fn nova_pages(data: &[u8]) {
    use synchronizer_nova::fuzzing;
    if let Ok((entities, _next)) = fuzzing::servers_page(page_url(), data) {
        check::entities(&entities);
    }
    let _ = fuzzing::hypervisors_page(page_url(), data);
    if let Ok(entities) = fuzzing::services(data, data) {
        check::entities(&entities);
    }
    if let Ok(entities) = fuzzing::zones(data) {
        check::entities(&entities);
    }
}

/// Cinder's `volumes/detail` pages through the collector's own types.
pub fn cinder_pages(data: &[u8]) {
    use synchronizer_cinder::fuzzing;
    if let Ok((entities, _next)) = fuzzing::volumes_page(page_url(), data) {
        check::entities(&entities);
    }
}

/// Neutron's answers, each read as a `networks` and a `ports` page, through the
/// collector's own types.
pub fn neutron_pages(data: &[u8]) {
    use synchronizer_neutron::fuzzing;
    if let Ok((entities, _next)) = fuzzing::networks_page(page_url(), data) {
        check::entities(&entities);
    }
    if let Ok((entities, _next)) = fuzzing::ports_page(page_url(), data) {
        check::entities(&entities);
    }
}

/// A stacks page that lists one stack, for inputs that are a resources page only.
const ONE_STACK: &[u8] = br#"{"stacks": [{"id": "5b0a1f3e-0000-4000-8000-000000000001", "stack_name": "s", "stack_status": "CREATE_COMPLETE", "creation_time": "2026-11-25T08:56:57Z", "updated_time": null, "tags": ["a"]}]}"#;
/// A resources page with one mapped resource, for inputs that are a stacks page only.
const ONE_RESOURCE: &[u8] =
    br#"{"resources": [{"resource_type": "OS::Nova::Server", "physical_resource_id": "e1"}]}"#;

/// Heat's answers through the collector's types: `<stacks page>\0<resources page>`, or
/// one body read as a stacks page, a resources page and a Keystone project list.
pub fn heat_pages(data: &[u8]) {
    use synchronizer_heat::fuzzing;
    let parts = split_nul(data);
    let pairs: Vec<(&[u8], &[u8])> = match parts.as_slice() {
        [one] => vec![(*one, ONE_RESOURCE), (ONE_STACK, *one)],
        [stacks, resources, ..] => vec![(*stacks, *resources)],
        [] => Vec::new(),
    };
    for (stacks, resources) in pairs {
        if let Ok((entities, _next)) = fuzzing::stacks_page(page_url(), stacks, resources) {
            check::entities(&entities);
        }
    }
    let _ = fuzzing::projects(data);
}

/// OpenStack timestamps (`plugins/openstack/src/time.rs`): what parses formats and parses
/// back to the same time, and stamps an entity that goes through every output.
pub fn openstack_time(data: &[u8]) {
    use synchronizer_openstack::time::{format_isotime, format_timestamp, parse_timestamp};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(us) = parse_timestamp(text) {
        let written = format_timestamp(us);
        assert_eq!(
            parse_timestamp(&written),
            Some(us),
            "{text:?} written {written:?}"
        );
        let whole = format_isotime(us);
        assert_eq!(
            parse_timestamp(&whole),
            Some(us.div_euclid(1_000_000) * 1_000_000),
            "{text:?} written {whole:?}"
        );
        let e = synchronizer_plugin_api::Entity::resource("openstack.time", text)
            .with_source_updated_micros(us);
        check::entities(&[e]);
    }
    // The formatters of any time a source may send (through the plugins' models).
    if data.len() >= 8 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[..8]);
        let us = i64::from_le_bytes(b);
        let _ = (format_timestamp(us), format_isotime(us));
    }
}

/// Environment variables the config target set, to clear before the next input.
static CONFIG_ENV: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The host's configuration through its real loader (`Config::load`): TOML text, then,
/// after a NUL byte each, `NAME=VALUE` environment overrides (`SYNCHRONIZER_` is added
/// in front of a name without it).
pub fn host_config(data: &[u8]) {
    let parts = split_nul(data);
    let Some((toml, env)) = parts.split_first() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("synchronizer-fuzz-config-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let path = dir.join("synchronizer.toml");
    if std::fs::write(&path, toml).is_err() {
        return;
    }
    let mut set = CONFIG_ENV.lock().unwrap_or_else(|p| p.into_inner());
    for name in set.drain(..) {
        // SAFETY: the fuzz targets run on one thread, and nothing else reads the
        // environment meanwhile.
        unsafe { std::env::remove_var(name) };
    }
    for var in env {
        let Ok(var) = std::str::from_utf8(var) else {
            continue;
        };
        let Some((name, value)) = var.split_once('=') else {
            continue;
        };
        let name = if name.starts_with("SYNCHRONIZER_") {
            name.to_owned()
        } else {
            format!("SYNCHRONIZER_{name}")
        };
        // `set_var` panics on these (not the loader's concern).
        if name.contains(['=', '\0']) || value.contains('\0') {
            continue;
        }
        // SAFETY: as above.
        unsafe { std::env::set_var(&name, value) };
        set.push(name);
    }
    if let Ok(config) = synchronizer::Config::load(&path) {
        // What the host does with a configuration it accepted: the schedule of every
        // instance, the time of its next attempt in its status (`/v1/plugins`).
        for inst in &config.instances {
            let s = config.schedule(inst);
            let _ = config.library_path(inst);
            let status = synchronizer::status::StatusCell::default();
            let mut backoff = synchronizer::backoff::Backoff::new(s.backoff_initial, s.backoff_max);
            let now = std::time::Instant::now();
            for failures in [0, 1, 40] {
                let delay = if failures == 0 {
                    s.interval.saturating_add(s.jitter)
                } else {
                    let mut delay = std::time::Duration::ZERO;
                    while backoff.failures() < failures {
                        delay = backoff.failure_at(now);
                    }
                    delay
                };
                status.scheduled(std::time::SystemTime::now() + delay, failures > 0);
                let json = serde_json::to_string(&status.get())
                    .unwrap_or_else(|e| panic!("the status of an instance: {e}"));
                let _: serde_json::Value = serde_json::from_str(&json)
                    .unwrap_or_else(|e| panic!("the status is not JSON ({e}): {json}"));
            }
        }
    }
}

/// The static plugin's YAML files (one per NUL-separated part), through its real parser.
pub fn static_yaml(data: &[u8]) {
    let files: Vec<synchronizer_static::YamlFile> = split_nul(data)
        .into_iter()
        .enumerate()
        .filter_map(|(i, text)| {
            Some(synchronizer_static::YamlFile {
                path: format!("f{i}.yaml").into(),
                text: String::from_utf8(text.to_vec()).ok()?,
                modified: Some(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_595_860),
                ),
            })
        })
        .collect();
    if let Ok(entities) = synchronizer_static::entities_of(&files) {
        check::entities(&entities);
    }
}

/// `msg` encoded, then decoded: the frame must decode, to a message that encodes to the
/// same frame. Returns the decoded message.
fn reencode<M: std::fmt::Debug>(
    msg: &M,
    encode: fn(&M) -> Vec<u8>,
    decode: fn(&[u8]) -> Result<M, WireError>,
) -> M {
    let frame = encode(msg);
    let got = decode(check::body(&frame)).unwrap_or_else(|e| {
        panic!("the encoder wrote a frame that does not decode ({e}): {msg:?}")
    });
    assert_eq!(encode(&got), frame, "{msg:?} decoded as {got:?}");
    got
}

/// What the host does with a child's message: its entities go through every output, its
/// counters into `/metrics`.
fn from_child_used(msg: FromChild) {
    match msg {
        FromChild::Snapshot {
            result: Ok(snapshot),
            ..
        } => check::entities(&snapshot.entities),
        FromChild::SnapshotPart { entities, .. } => check::entities(&entities),
        FromChild::Push { batch, .. } => {
            let entities: Vec<_> = batch.into_iter().map(|p| p.entity).collect();
            check::entities(&entities);
        }
        FromChild::Pong { counters, .. } => check::metrics(|m| {
            let mut names: Vec<&str> = counters.iter().map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            for name in &names {
                // As the host shows a child's counters (`synchronizer.rs`).
                m.plugin_counters
                    .get_or_create(&PluginCounterLabels {
                        plugin_instance: "fuzz".into(),
                        name: label_value(name),
                    })
                    .set(1);
            }
            names.len()
        }),
        _ => {}
    }
}

/// Frames from a child (their body, after the length), as the host decodes them: what
/// decodes encodes to a frame that decodes to the same, and is used as the host uses it.
pub fn wire_from_child(data: &[u8]) {
    let _ = synchronizer::isolation::wire::snapshot_part_id(data);
    // The count the host holds to `max_entities` before a part is decoded is the count
    // of every part that decodes.
    let count = synchronizer::isolation::wire::snapshot_part_count(data);
    if let Ok(msg) = FromChild::decode(data) {
        if let FromChild::SnapshotPart { entities, .. } = &msg {
            assert_eq!(count, u32::try_from(entities.len()).ok(), "part count");
        }
        reencode(&msg, FromChild::encode, FromChild::decode);
        from_child_used(msg);
    }
}

/// Frames from the host, as the child decodes them: what decodes encodes to a frame that
/// decodes to the same.
pub fn wire_to_child(data: &[u8]) {
    if let Ok(msg) = ToChild::decode(data) {
        reencode(&msg, ToChild::encode, ToChild::decode);
    }
}

/// Arbitrary messages of both directions (entities of any content, any `i64` time): each
/// encodes to a frame that decodes to the same message, whose entities are the ones sent;
/// the decoded message is used as the host uses it.
pub fn wire_roundtrip(data: &[u8]) {
    let mut u = Unstructured::new(data);
    if u.arbitrary::<bool>().unwrap_or(false) {
        if let Ok(msg) = arb::to_child(&mut u) {
            reencode(&msg, ToChild::encode, ToChild::decode);
        }
        return;
    }
    let Ok(msg) = arb::from_child(&mut u) else {
        return;
    };
    let got = reencode(&msg, FromChild::encode, FromChild::decode);
    let entities = |m: &FromChild| -> Vec<Entity> {
        match m {
            FromChild::SnapshotPart { entities, .. } => entities.clone(),
            FromChild::Snapshot { result: Ok(s), .. } => s.entities.to_vec(),
            FromChild::Push { batch, .. } => batch.iter().map(|p| p.entity.clone()).collect(),
            _ => Vec::new(),
        }
    };
    check::assert_same_list("round trip", &entities(&msg), &entities(&got));
    from_child_used(got);
}

/// The HTTP API's query strings and `Last-Event-ID` headers, parsed as its handlers
/// parse them (axum's `Query`, the endpoints' parameters); an error is a 400 with a JSON
/// body.
pub fn http_query(data: &[u8]) {
    use synchronizer::http::fuzzing;
    if let Ok(value) = HeaderValue::from_bytes(data) {
        match fuzzing::last_event_id(value, "e1") {
            Ok(_) => {}
            Err((status, body)) => error_answer(status, &body),
        }
    }
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uri) = Uri::try_from(format!("/v1/entities?{query}")) else {
        return;
    };
    for flags in fuzzing::ENDPOINT_FLAGS {
        match fuzzing::query(&uri, flags) {
            Ok((types, on)) => {
                assert!(types.len() <= 256, "{} types", types.len());
                for t in &types {
                    assert!(
                        !t.is_empty() && !t.contains(',') && t.len() <= 256,
                        "type {t:?}"
                    );
                    assert_eq!(t.trim(), t, "type {t:?} is not trimmed");
                }
                assert!(on.iter().all(|f| flags.contains(&f.as_str())));
            }
            Err((status, body)) => error_answer(status, &body),
        }
    }
}

fn error_answer(status: u16, body: &[u8]) {
    assert_eq!(status, 400, "a query is refused with 400");
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("the error body is not JSON ({e}): {body:?}"));
    assert_eq!(v["error"], "bad_request");
    assert!(v["message"].is_string());
}

/// Arbitrary entities through every output format and the wire.
pub fn outputs(data: &[u8]) {
    let mut u = Unstructured::new(data);
    if let Ok(entities) = arb::entities(&mut u, 6) {
        check::entities(&entities);
    }
}

/// The secrets of configuration text and their redaction (`synchronizer::secrets::of_text`,
/// `redact_url`, `Secrets::of_url`, `Secrets::scrub`): nothing panics, a password the url
/// crate reads from any token of the text is left nowhere in the scrubbed text, and a
/// redacted URL that parses has no password but `***`.
pub fn secrets(data: &[u8]) {
    use synchronizer_plugin_api::redact::{Secrets, redact_url};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let scrubbed = synchronizer::secrets::of_text(text).scrub(text);
    for token in text.split(|c: char| c.is_whitespace() || "\"'[],{}=".contains(c)) {
        let redacted = redact_url(token);
        if let Ok(url) = Url::parse(&redacted) {
            let password = url.password().unwrap_or("***");
            assert!(
                password == "***" || password == "%2A%2A%2A",
                "{token:?} redacted as {redacted:?} keeps a password"
            );
        }
        let Ok(url) = Url::parse(token) else {
            continue;
        };
        let Some(password) = url.password() else {
            continue;
        };
        // `***` replacing one occurrence can join with a `*` to look like another.
        if password.contains('*') {
            continue;
        }
        assert!(
            !scrubbed.contains(password),
            "the password {password:?} of {token:?} is left in {scrubbed:?}"
        );
        assert!(!Secrets::of_url(token).scrub(token).contains(password));
    }
}

/// Where check-config points for a plugin's field (`config_location::locate`): TOML
/// text, then after NUL bytes an instance name and a field path. It never panics, and a
/// position it gives is inside the text.
pub fn config_location(data: &[u8]) {
    let parts = split_nul(data);
    let [text, instance, rest @ ..] = parts.as_slice() else {
        return;
    };
    let (Ok(text), Ok(instance)) = (std::str::from_utf8(text), std::str::from_utf8(instance))
    else {
        return;
    };
    let field = rest.first().and_then(|f| std::str::from_utf8(f).ok());
    if let Some(at) = synchronizer::config_location::locate(text, instance, field) {
        let lines: Vec<&str> = text.split('\n').collect();
        assert!(
            at.line >= 1 && at.line <= lines.len(),
            "{at} outside {} lines",
            lines.len()
        );
        let width = lines[at.line - 1].chars().count();
        assert!(
            at.column >= 1 && at.column <= width + 1,
            "{at}: the line has {width} characters"
        );
    }
}
