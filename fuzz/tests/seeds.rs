//! Writes the seed inputs of the targets whose input is not a fixture file as it is
//! (`scripts/fuzz.sh` hands the fixture directories themselves to the others): frames
//! holding the entities the plugins make of their fixtures, notifications taken out of
//! their envelopes, two-part inputs, query strings, timestamps. Run by
//! `scripts/fuzz.sh seed` (`--ignored`); the files are `corpus/<target>/seed-*`.

use std::path::{Path, PathBuf};

use abi_stable::std_types::RString;
use synchronizer::isolation::wire::{self, FromChild, ToChild, WireMeta};
use synchronizer_plugin_api::abi::{FfiError, LogLevel};
use synchronizer_plugin_api::{Entity, ErrorKind, PluginKind};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> Vec<u8> {
    let p = repo().join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let p = dir.join(format!("seed-{name}"));
    std::fs::write(&p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

fn joined(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&0u8)
}

/// Entities the plugins make of their fixtures.
fn fixture_entities() -> Vec<Entity> {
    let url = url::Url::parse("https://nova.example/v2.1/servers/detail").unwrap();
    let (mut entities, _) = synchronizer_nova::fuzzing::servers_page(
        &url,
        &read("plugins/nova/tests/fixtures/servers-detail-all_tenants-limit2.mv2.53.page1.json"),
    )
    .unwrap();
    entities.extend(
        synchronizer_nova::fuzzing::services(
            &read("plugins/nova/tests/fixtures/os-services-nova-compute.mv2.53.json"),
            &read("plugins/nova/tests/fixtures/os-hypervisors-detail.mv2.53.json"),
        )
        .unwrap(),
    );
    let statuses = synchronizer_nagios::parse_status_page(&read(
        "plugins/nagios/tests/fixtures/nagios4/status-host-all.html",
    ))
    .unwrap();
    let rules = synchronizer_nagios::HostRules::default();
    entities.extend(
        synchronizer_nagios::plugin::to_entities("n", &rules, &statuses)
            .into_iter()
            .take(3),
    );
    entities
}

fn body(frame: Vec<u8>) -> Vec<u8> {
    frame[4..].to_vec()
}

#[test]
#[ignore = "writes seed files: scripts/fuzz.sh seed"]
fn write_seeds() {
    for (name, text) in [
        ("z", "2026-11-25T08:37:40Z"),
        ("naive", "2026-11-25T08:37:49.124930"),
        ("micros-z", "2026-11-25T09:58:35.000000Z"),
        ("offset", "2026-11-25 08:37:40+00:00"),
        ("oslo", "2026-11-25 02:26:16.207914"),
        ("go-zero", "0001-01-01T00:00:00Z"),
        ("pre-epoch", "1969-12-31T23:59:59.999999Z"),
        ("offset-4", "2026-11-25T09:37:40+0100"),
    ] {
        openstack_seed(name, text);
    }

    write(
        "host_config",
        "example",
        &read("examples/synchronizer.toml"),
    );
    write("host_config", "demo", &read("examples/demo/demo.toml"));
    write(
        "host_config",
        "demo-env",
        &joined(&[
            &read("examples/demo/demo.toml"),
            b"DEFAULTS__INTERVAL=10s",
            b"SYNCHRONIZER_PLUGIN_LOG_LEVEL=debug",
        ]),
    );

    // The inner notifications of the real envelopes; Heat's captured messages.
    let dir = repo().join("plugins/bus/tests/fixtures/nova-30");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let outer: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if let Some(inner) = outer["oslo.message"].as_str() {
            let name = path
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .replace(".raw", "");
            write("bus_notification", &name, inner.as_bytes());
        }
    }
    for file in ["info", "error"] {
        let captured: serde_json::Value = serde_json::from_slice(&read(&format!(
            "plugins/bus/tests/fixtures/heat-24/notifications-vitrage_notifications.{file}.json"
        )))
        .unwrap();
        for (i, m) in captured.as_array().unwrap().iter().enumerate() {
            let body = m["body"].as_str().unwrap();
            write(
                "bus_message",
                &format!("heat-24-{file}-{i}"),
                body.as_bytes(),
            );
            let outer: serde_json::Value = serde_json::from_str(body).unwrap();
            if let Some(inner) = outer["oslo.message"].as_str() {
                write(
                    "bus_notification",
                    &format!("heat-24-{file}-{i}"),
                    inner.as_bytes(),
                );
            }
        }
    }

    // bus_compressed: the first byte picks the `compression` header (low 3 bits) and
    // whether the target compresses the rest first (bit 7); see targets::bus_compressed.
    let create = read(
        "plugins/bus/tests/fixtures/nova-30/versioned_notifications.info__instance.create.end.raw.json",
    );
    let legacy = read(
        "plugins/bus/tests/fixtures/nova-30/vitrage_notifications.info__compute.instance.create.end.raw.json",
    );
    let with_mode = |mode: u8, body: &[u8]| [&[mode][..], body].concat();
    write(
        "bus_compressed",
        "gzip-by-target",
        &with_mode(0x81, &create),
    );
    write("bus_compressed", "bz2-by-target", &with_mode(0x82, &legacy));
    write(
        "bus_compressed",
        "limit-by-target",
        &with_mode(0xc1, &create),
    );
    write("bus_compressed", "plain", &with_mode(0x00, &create));
    write("bus_compressed", "lzma-refused", &with_mode(0x04, &create));
    let headers = synchronizer_fuzz::targets::BUS_COMPRESSION_HEADERS;
    for (mode, name) in [(0x01u8, "kombu-gzip"), (0x02, "kombu-bz2")] {
        let compressed =
            synchronizer_fuzz::targets::bus_compress(headers[usize::from(mode)], &create).unwrap();
        write("bus_compressed", name, &with_mode(mode, &compressed));
    }

    write(
        "heat_pages",
        "stacks-resources",
        &joined(&[
            &read("plugins/heat/tests/fixtures/stacks-global.json"),
            &read("plugins/heat/tests/fixtures/resources-nested-a-depth3.json"),
        ]),
    );

    write(
        "static_yaml",
        "two-files",
        &joined(&[
            &read("examples/demo/static/rack-1.yaml"),
            b"entities:\n  - type: switch\n    id: sw-9\n    category: alarm\n    properties: {ports: [1, 2.5, null]}\nrelationships:\n  - source: switch:sw-9\n    target: rack:rack-1\n    type: in\n",
        ]),
    );

    for (name, q) in [
        ("types", "types=nova.instance,nova.host"),
        ("repeated", "types=a&types=b,%20c&snapshot=true"),
        ("health", "health=1"),
        ("bad-flag", "snapshot=maybe"),
        ("unknown", "type=x"),
        ("last-event-id", "42@e1"),
        ("utf8", "types=%E2%9C%93+x"),
    ] {
        write("http_query", name, q.as_bytes());
    }

    let entities = fixture_entities();
    let error = || FfiError {
        kind: ErrorKind::Failed,
        message: RString::from("GET https://nova.example: HTTP 503"),
    };
    let from_child = [
        FromChild::Ready {
            meta: WireMeta {
                name: "nova".into(),
                version: "0.1.0".into(),
                description: "Nova".into(),
                entity_types: vec!["nova.instance".into(), "nova.host".into()],
                kind: PluginKind::Collector,
                api_version: "0.1.0".into(),
            },
        },
        FromChild::CreateFailed {
            load: false,
            error: error(),
        },
        FromChild::Snapshot {
            id: 2,
            result: Err(error()),
        },
        FromChild::Cancelled { id: 3, stuck: true },
        FromChild::RunEnded {
            id: 4,
            result: Ok(()),
        },
        FromChild::Health {
            id: 5,
            result: Ok(synchronizer_plugin_api::Health {
                healthy: true,
                message: "ok".into(),
            }),
        },
        FromChild::Pong {
            id: 6,
            calls_in_flight: 1,
            counters: vec![("messages_consumed".into(), 42)],
        },
    ];
    for (i, m) in from_child.iter().enumerate() {
        write(
            "wire_from_child",
            &format!("message-{i}"),
            &body(m.encode()),
        );
    }
    write(
        "wire_from_child",
        "snapshot-part",
        &body(wire::encode_snapshot_part(7, &entities)),
    );
    write(
        "wire_from_child",
        "snapshot",
        &body(wire::encode_snapshot_tail(7, &entities[..2], &[])),
    );
    let batch: Vec<_> = entities
        .iter()
        .map(|e| synchronizer_plugin_api::abi::FfiPushed {
            action: synchronizer_plugin_api::abi::PushAction::Upsert,
            entity: e.clone(),
        })
        .collect();
    write(
        "wire_from_child",
        "push",
        &body(wire::encode_push(8, &batch)),
    );

    let to_child = [
        ToChild::Init {
            instance: "nova-1".into(),
            library: "libsynchronizer_nova.so".into(),
            config_json: r#"{"cloud": {"auth_url": "https://keystone.example/v3"}}"#.into(),
            max_level: LogLevel::Info,
            create_timeout_ms: 10_000,
            memory_limit: 1 << 30,
        },
        ToChild::Snapshot {
            id: 1,
            types: vec!["nova.instance".into()],
        },
        ToChild::Cancel { id: 1 },
        ToChild::Run { id: 2 },
        ToChild::PushAck {
            id: 3,
            result: Err(error()),
        },
        ToChild::RequestStop,
        ToChild::Health { id: 4 },
        ToChild::Ping { id: 5 },
        ToChild::Shutdown { timeout_ms: 5_000 },
    ];
    for (i, m) in to_child.iter().enumerate() {
        write("wire_to_child", &format!("message-{i}"), &body(m.encode()));
    }
}

fn openstack_seed(name: &str, text: &str) {
    write("openstack_time", name, text.as_bytes());
}
