//! Vitrage's host mapping configuration (tests/fixtures/vitrage/nagios_conf.yaml), written
//! as this crate's rules, maps hosts the way Vitrage documents it.

use synchronizer_nagios::{HostRuleConfig, HostRules, HostRulesConfig};

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
    assert_eq!(rules.resource_key("compute-1"), "nova.host:compute-1");
    assert_eq!(rules.resource_key("compute-2"), "nova.host:host2");
    assert_eq!(rules.resource_key("compute-7"), "nova.host:compute-7");
    assert_eq!(rules.resource_key("instance-3"), "nova.instance:instance-3");
    // No rule: the default.
    assert_eq!(rules.resource_key("ceph-0"), "nova.host:ceph-0");
}
