//! The parsers and the entity model on the real answers and webhook bodies of Debian's
//! Alertmanager 0.25 (fixtures/README.md): every alert read, the states as the API gave
//! them, and the same entity from the API and from the webhook for the same alert.

use synchronizer_plugin_api::Entity;
use synchronizer_prometheus::AlertState;
use synchronizer_prometheus::alerts::{alarm_entity, parse_api_alerts, parse_webhook};
use synchronizer_prometheus::rules::{RuleConfig, Rules};
use synchronizer_prometheus::webhook::changes;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/am-0.25/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn rules() -> Rules {
    let rule: RuleConfig = toml::from_str(
        "match = { job = \"libvirt\" }\ntype = \"nova.instance\"\nproperty = \"instance_name\"\nlabel = \"domain\"",
    )
    .unwrap();
    let host: RuleConfig = toml::from_str(
        "type = \"nova.host\"\nproperty = \"name\"\nlabel = \"instance\"\nstrip_port = true",
    )
    .unwrap();
    Rules::new(vec![rule, host]).unwrap()
}

fn api_entities(name: &str) -> Vec<Entity> {
    let rules = rules();
    parse_api_alerts(&fixture(name))
        .unwrap()
        .iter()
        .filter_map(|a| alarm_entity(a, "am", &rules))
        .collect()
}

fn by_fp<'a>(entities: &'a [Entity], fp: &str) -> &'a Entity {
    entities
        .iter()
        .find(|e| e.id() == format!("am/{fp}"))
        .unwrap_or_else(|| panic!("no alarm am/{fp}"))
}

#[test]
fn the_api_answer_reads_with_its_states() {
    let all = parse_api_alerts(&fixture("alerts-v2.json")).unwrap();
    assert_eq!(all.len(), 5);
    let silenced = all.iter().find(|a| a.name() == "AlertmanagerUp").unwrap();
    assert_eq!(
        silenced.state,
        AlertState::Suppressed {
            silenced_by: vec!["616972cc-9249-423b-a000-9d548ff60a1f".into()],
            inhibited_by: vec![]
        }
    );
    // The literal `&` of the API and the webhook's `\u0026` read the same.
    assert!(
        silenced
            .generator_url
            .as_deref()
            .unwrap()
            .contains("&g0.tab=1")
    );
    let entities = api_entities("alerts-v2.json");
    let cpu = by_fp(&entities, "2bcecc4950495022");
    assert_eq!(cpu.name(), "HighCpuOnVmAlert");
    assert_eq!(cpu.state(), Some("firing"));
    assert_eq!(cpu.category(), synchronizer_plugin_api::Category::Alarm);
    assert_eq!(cpu.entity_type(), "prometheus");
    assert_eq!(
        cpu.relations()[0].other(),
        "nova.instance[instance_name=instance-00000004]"
    );
    assert_eq!(cpu.relations()[0].kind(), "on");
    let p = cpu.properties();
    assert_eq!(p["severity"], "critical");
    assert_eq!(p["labels"]["domain"], "instance-00000004");
    assert_eq!(p["annotations"]["title"], "High cpu usage on vm");
    assert_eq!(p["starts_at"], "2026-12-01T21:48:44.000Z");
    assert_eq!(p["generator_url"], "http://lab.invalid/graph?g0.expr=cpu");
    // startsAt is the source time.
    assert_eq!(
        cpu.source_updated_micros(),
        synchronizer_openstack::time::parse_timestamp("2026-12-01T21:48:44Z")
    );
    let up = by_fp(&entities, "9f31aa0b3b8b36d0");
    assert_eq!(up.state(), Some("suppressed"));
    assert_eq!(
        up.properties()["silenced_by"][0],
        "616972cc-9249-423b-a000-9d548ff60a1f"
    );
    // HostDiskFull (instance "compute1", no job): the host rule.
    let disk = by_fp(&entities, "57e7fa1088994dbf");
    assert_eq!(disk.relations()[0].other(), "nova.host[name=compute1]");
    // The unsilenced query left the silenced one out.
    assert_eq!(api_entities("alerts-v2-active-unsilenced.json").len(), 4);
    assert_eq!(api_entities("alerts-v2-after-resolve.json").len(), 2);
}

#[test]
fn webhook_and_api_build_the_same_alarm() {
    let api = api_entities("alerts-v2.json");
    let rules = rules();
    for (body, fp) in [
        (
            "webhooks/vitrage-001-HighCpuOnVmAlert-firing.json",
            "2bcecc4950495022",
        ),
        (
            "webhooks/vitrage-001-HighCpuOnVmAlert-firing.json",
            "e13bb12a4c584a65",
        ),
        (
            "webhooks/vitrage-002-TargetDown-firing.json",
            "c799d0e40da1666d",
        ),
        (
            "webhooks/ops-001-HostDiskFull-firing.json",
            "57e7fa1088994dbf",
        ),
    ] {
        let hook = parse_webhook(&fixture(body)).unwrap();
        let pushed: Vec<Entity> = changes(&hook, "am", &rules)
            .into_iter()
            .filter_map(|c| match c {
                synchronizer_plugin_api::Change::Upsert(e) => Some(e),
                synchronizer_plugin_api::Change::Delete(_) => None,
            })
            .collect();
        let from_hook = by_fp(&pushed, fp);
        let from_api = by_fp(&api, fp);
        assert_eq!(from_hook, from_api, "{body}: {fp}");
        assert_eq!(from_hook.content_hash(), from_api.content_hash());
    }
}

#[test]
fn each_alert_counts_by_its_own_status() {
    // The group is still firing; the alert inside resolved.
    let hook = parse_webhook(&fixture(
        "webhooks/vitrage-004-HighCpuOnVmAlert-firing.json",
    ))
    .unwrap();
    assert_eq!(hook.status, "firing");
    let c = changes(&hook, "am", &rules());
    assert_eq!(c.len(), 2);
    match &c[0] {
        synchronizer_plugin_api::Change::Delete(e) => {
            assert_eq!(e.id(), "am/2bcecc4950495022");
            // Deleted at its endsAt.
            assert_eq!(
                e.source_updated_micros(),
                synchronizer_openstack::time::parse_timestamp("2026-12-01T21:49:21.008Z")
            );
        }
        other => panic!("the resolved alert is a deletion: {other:?}"),
    }
    assert!(
        matches!(&c[1], synchronizer_plugin_api::Change::Upsert(e) if e.id() == "am/e13bb12a4c584a65")
    );
    // The last body holds only the alert that resolved last.
    let last = parse_webhook(&fixture(
        "webhooks/vitrage-006-HighCpuOnVmAlert-resolved.json",
    ))
    .unwrap();
    assert_eq!(last.alerts.len(), 1);
    assert!(
        matches!(&changes(&last, "am", &rules())[0], synchronizer_plugin_api::Change::Delete(e) if e.id() == "am/e13bb12a4c584a65")
    );
    // Every captured body reads.
    for entry in std::fs::read_dir(format!(
        "{}/tests/fixtures/am-0.25/webhooks",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".meta.json") {
            continue;
        }
        parse_webhook(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn the_v1_answer_is_refused_not_read_as_empty() {
    assert!(parse_api_alerts(&fixture("alerts-v1.json")).is_err());
}
