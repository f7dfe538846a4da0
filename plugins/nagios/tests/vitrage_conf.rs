//! Vitrage's host mapping configuration (tests/fixtures/vitrage/nagios_conf.yaml), written
//! as this crate's rules, maps hosts the way Vitrage documents it.

use synchronizer_nagios::{HostRuleConfig, HostRules, HostRulesConfig, parse_vitrage_conf};

const VITRAGE_CONF: &str = include_str!("fixtures/vitrage/nagios_conf.yaml");

/// The `{nagios_host, type, name}` entries of Vitrage's file, in order (a reader for this
/// file's simple layout, not for YAML at large).
fn vitrage_mappings() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let (mut host, mut kind) = (None, None);
    for line in VITRAGE_CONF.lines() {
        let line = line.trim().trim_start_matches("- ");
        let Some((key, value)) = line.split_once(": ") else {
            continue;
        };
        match key {
            "nagios_host" => host = Some(value.to_owned()),
            "type" => kind = Some(value.to_owned()),
            "name" => out.push((
                host.take().expect("nagios_host before name"),
                kind.take().expect("type before name"),
                value.to_owned(),
            )),
            _ => {}
        }
    }
    out
}

#[test]
fn vitrage_mapping_as_rules() {
    let mappings = vitrage_mappings();
    assert_eq!(mappings.len(), 4);
    let config = HostRulesConfig {
        rules: mappings
            .into_iter()
            .map(|(pattern, kind, name)| HostRuleConfig {
                pattern,
                key: format!("{kind}:{name}"),
            })
            .collect(),
        ..HostRulesConfig::default()
    };
    let rules = HostRules::new(&config).expect("Vitrage's patterns and templates are valid rules");
    assert_eq!(
        rules.resource_key("compute-1").as_deref(),
        Some("nova.host:compute-1")
    );
    assert_eq!(
        rules.resource_key("compute-2").as_deref(),
        Some("nova.host:host2")
    );
    assert_eq!(
        rules.resource_key("compute-7").as_deref(),
        Some("nova.host:compute-7")
    );
    assert_eq!(
        rules.resource_key("instance-3").as_deref(),
        Some("nova.instance:instance-3")
    );
    // No rule: the default.
    assert_eq!(
        rules.resource_key("ceph-0").as_deref(),
        Some("nova.host:ceph-0")
    );
}

/// The same real page (this project's test Nagios, tests/fixtures/nagios4-fidelity), mapped
/// by the default rules and by Vitrage's own file read with Vitrage's semantics: prefix
/// matching (`compute-1` takes `compute-10` and `compute-1.local`), unmatched hosts
/// (`ceph-0`) dropped.
#[test]
fn vitrage_conf_and_default_rules_on_the_same_page() {
    let page = include_bytes!("fixtures/nagios4-fidelity/status-host-all.html");
    let statuses = synchronizer_nagios::parse_status_page(page).expect("parses");
    let keys = |rules: &HostRules| -> Vec<(String, String)> {
        let mut v: Vec<_> = rules
            .map_alarms(&statuses)
            .into_iter()
            .filter(|a| a.status.state != synchronizer_nagios::AlarmState::Pending)
            .map(|a| (a.native_id, a.resource_key))
            .collect();
        v.sort();
        v
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        keys(&HostRules::default()),
        pairs(&[
            ("ceph-0;CPU load", "nova.host:ceph-0"),
            ("compute-1.local;CPU load", "nova.host:compute-1.local"),
            ("compute-10;CPU load", "nova.host:compute-10"),
            ("compute-1;CPU load", "nova.host:compute-1"),
            ("compute-2", "nova.host:compute-2"),
        ])
    );
    let vitrage =
        HostRules::vitrage(&parse_vitrage_conf(VITRAGE_CONF).expect("reads")).expect("rules");
    assert_eq!(
        keys(&vitrage),
        pairs(&[
            ("compute-1.local;CPU load", "nova.host:compute-1"),
            ("compute-10;CPU load", "nova.host:compute-1"),
            ("compute-1;CPU load", "nova.host:compute-1"),
            ("compute-2", "nova.host:host2"),
        ])
    );
    assert_eq!(vitrage.resource_key("ceph-0"), None);
    assert_eq!(vitrage.resource_key("localhost"), None);
    assert_eq!(
        vitrage.resource_key("instance-3").as_deref(),
        Some("nova.instance:instance-3")
    );
}
