//! Label rules: which resource an alert is about, from its labels, in the shape of
//! Vitrage's `prometheus_conf.yaml` (`key`: labels an alert must have, with these values;
//! `resource`: the target's property → the label holding its value). Each rule names the
//! target's type and one identifying property; the alarm's relation then names the target
//! by that property (a [`Selector`], which the host resolves to a key), or by its key when
//! the property is `id`.
//!
//! [`Rules::from_vitrage_yaml`] reads Vitrage's own file.

use std::collections::BTreeMap;

use serde::Deserialize;
use synchronizer_plugin_api::Selector;

/// One rule, as configured (`[[instances.config.rules]]`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Labels the alert must carry with exactly these values (Vitrage's `key`); empty:
    /// every alert.
    #[serde(rename = "match", default)]
    pub matches: BTreeMap<String, String>,
    /// The target's entity type: `nova.instance`.
    #[serde(rename = "type")]
    pub entity_type: String,
    /// The target's property that the label's value is: `name`, `instance_name`, or `id`
    /// (then the relation names the key `<type>:<value>` directly).
    pub property: String,
    /// The alert label that holds the value: `domain`, `instance`.
    pub label: String,
    /// `host:port` → `host` (for the `instance` label of a scrape target; `[v6]:port`
    /// → `v6`).
    #[serde(default)]
    pub strip_port: bool,
    /// The relation's kind (default `on`: the alarm is on the resource).
    #[serde(default = "default_relation")]
    pub relation: String,
}

fn default_relation() -> String {
    "on".to_owned()
}

/// A rule that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// A type or property a selector cannot carry.
    #[error(
        "rules[{index}]: type `{entity_type}` or property `{property}` cannot name a target (a type without `:`, `[`, `]`; a property without `=`, `[`, `]`; neither empty)"
    )]
    Target {
        /// The rule's position.
        index: usize,
        /// Its type.
        entity_type: String,
        /// Its property.
        property: String,
    },
    /// An empty label or relation.
    #[error("rules[{index}]: {field} must not be empty")]
    Empty {
        /// The rule's position.
        index: usize,
        /// `label` or `relation`.
        field: &'static str,
    },
    /// Vitrage's file does not read.
    #[error("prometheus_conf.yaml: {0}")]
    Vitrage(String),
}

impl RuleError {
    /// The field of the instance's configuration it is about.
    pub fn field(&self) -> String {
        match self {
            RuleError::Target { index, .. } => format!("rules[{index}].type"),
            RuleError::Empty { index, field } => format!("rules[{index}].{field}"),
            RuleError::Vitrage(_) => "vitrage_conf".to_owned(),
        }
    }
}

/// Where an alarm points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The relation's kind.
    pub relation: String,
    /// A key (`nova.host:compute-1`) or a selector (`nova.instance[name=vm-a1]`).
    pub other: String,
}

/// The rules, checked, tried in order.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    rules: Vec<RuleConfig>,
}

/// `host:port` → `host`; `[v6]:port` → `v6`; anything else as it is.
pub fn strip_port(value: &str) -> &str {
    if let Some(rest) = value.strip_prefix('[')
        && let Some((host, _)) = rest.split_once(']')
    {
        return host;
    }
    match value.rsplit_once(':') {
        // One colon only: an IPv6 address without brackets keeps its colons.
        Some((host, port))
            if !host.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            host
        }
        _ => value,
    }
}

impl Rules {
    /// Checks configured rules.
    pub fn new(rules: Vec<RuleConfig>) -> Result<Rules, RuleError> {
        for (index, r) in rules.iter().enumerate() {
            if Selector::new(&r.entity_type, &r.property, "").is_none() {
                return Err(RuleError::Target {
                    index,
                    entity_type: r.entity_type.clone(),
                    property: r.property.clone(),
                });
            }
            if r.label.is_empty() {
                return Err(RuleError::Empty {
                    index,
                    field: "label",
                });
            }
            if r.relation.is_empty() {
                return Err(RuleError::Empty {
                    index,
                    field: "relation",
                });
            }
        }
        Ok(Rules { rules })
    }

    /// Vitrage's `prometheus_conf.yaml` (`alerts: [{key: {...}, resource: {property: label}}]`,
    /// entries also accepted wrapped in `alert:`). Vitrage matches the resource's
    /// properties against every entity of any type; here each property maps to a type by
    /// `types` (`instance_name` → `nova.instance`, ...), one rule per property, in the
    /// file's order, and a value of the form `ip:port` loses its port (Vitrage then looks
    /// the address up by DNS or in Nova, which this plugin does not). A type may name
    /// the property matched in its entities, when it is not Vitrage's: `host_id` →
    /// `nova.host[host_ip]` matches the address an `instance` label holds against the
    /// hosts' `host_ip`.
    pub fn from_vitrage_yaml(
        text: &str,
        types: &BTreeMap<String, String>,
    ) -> Result<Rules, RuleError> {
        #[derive(Deserialize)]
        struct File {
            alerts: Vec<Entry>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Entry {
            Wrapped { alert: Mapping },
            Plain(Mapping),
        }
        #[derive(Deserialize)]
        struct Mapping {
            #[serde(default)]
            key: BTreeMap<String, String>,
            /// In the file's order: the first property whose label an alert has wins.
            #[serde(default)]
            resource: serde_yaml::Mapping,
        }
        let file: File =
            serde_yaml::from_str(text).map_err(|e| RuleError::Vitrage(e.to_string()))?;
        let mut rules = Vec::new();
        for entry in file.alerts {
            let m = match entry {
                Entry::Wrapped { alert } => alert,
                Entry::Plain(m) => m,
            };
            for (property, label) in &m.resource {
                let (Some(property), Some(label)) = (property.as_str(), label.as_str()) else {
                    return Err(RuleError::Vitrage(
                        "a resource maps property names to label names (strings)".into(),
                    ));
                };
                let Some(target) = types.get(property) else {
                    return Err(RuleError::Vitrage(format!(
                        "resource property `{property}` has no type in vitrage_types"
                    )));
                };
                // `nova.host[host_ip]`: the type, and the property matched there.
                let (entity_type, matched) =
                    match target.strip_suffix(']').and_then(|t| t.split_once('[')) {
                        Some((t, p)) => (t, p),
                        None => (target.as_str(), property),
                    };
                rules.push(RuleConfig {
                    matches: m.key.clone(),
                    entity_type: entity_type.to_owned(),
                    property: matched.to_owned(),
                    label: label.to_owned(),
                    strip_port: true,
                    relation: default_relation(),
                });
            }
        }
        Rules::new(rules)
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The target of the first rule whose `match` the labels satisfy and whose label the
    /// alert has (non-empty).
    pub fn target(&self, labels: &BTreeMap<String, String>) -> Option<Target> {
        self.rules.iter().find_map(|r| {
            if !r.matches.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                return None;
            }
            let raw = labels.get(&r.label)?;
            let value = if r.strip_port { strip_port(raw) } else { raw };
            if value.is_empty() {
                return None;
            }
            let other = if r.property == "id" {
                synchronizer_plugin_api::entity::entity_key(&r.entity_type, value)
            } else {
                Selector::new(&r.entity_type, &r.property, value)?.text()
            };
            Some(Target {
                relation: r.relation.clone(),
                other,
            })
        })
    }
}

/// The default `vitrage_types`: Vitrage's usual resource properties and the types that
/// have them here.
pub fn default_vitrage_types() -> BTreeMap<String, String> {
    [
        ("instance_name", "nova.instance"),
        ("host_id", "nova.host[host_ip]"),
        ("name", "nova.instance"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn rule(matches: &[(&str, &str)], t: &str, p: &str, label: &str) -> RuleConfig {
        RuleConfig {
            matches: labels(matches),
            entity_type: t.into(),
            property: p.into(),
            label: label.into(),
            strip_port: false,
            relation: "on".into(),
        }
    }

    #[test]
    fn first_matching_rule_with_its_label_wins() {
        let rules = Rules::new(vec![
            rule(
                &[("job", "libvirt")],
                "nova.instance",
                "instance_name",
                "domain",
            ),
            RuleConfig {
                strip_port: true,
                ..rule(&[], "nova.host", "ip", "instance")
            },
            rule(&[], "nova.host", "id", "host"),
        ])
        .unwrap();
        let t = rules
            .target(&labels(&[
                ("job", "libvirt"),
                ("domain", "instance-4"),
                ("instance", "10.0.0.5:9177"),
            ]))
            .unwrap();
        assert_eq!(t.other, "nova.instance[instance_name=instance-4]");
        // No domain: the next rule, the port stripped.
        let t = rules
            .target(&labels(&[
                ("job", "libvirt"),
                ("instance", "10.0.0.5:9177"),
            ]))
            .unwrap();
        assert_eq!(t.other, "nova.host[ip=10.0.0.5]");
        // `id`: a key.
        assert_eq!(
            rules.target(&labels(&[("host", "c1")])).unwrap().other,
            "nova.host:c1"
        );
        assert_eq!(rules.target(&labels(&[("x", "y")])), None);
    }

    #[test]
    fn ports_are_stripped_only_from_host_port() {
        assert_eq!(strip_port("10.0.0.5:9177"), "10.0.0.5");
        assert_eq!(strip_port("[fe80::1]:9100"), "fe80::1");
        assert_eq!(strip_port("fe80::1"), "fe80::1");
        assert_eq!(strip_port("compute1"), "compute1");
        assert_eq!(strip_port("host:http"), "host:http");
    }

    #[test]
    fn bad_rules_name_their_field() {
        let e = Rules::new(vec![rule(&[], "nova:instance", "name", "domain")]).unwrap_err();
        assert_eq!(e.field(), "rules[0].type");
        let e = Rules::new(vec![rule(&[], "t", "name", "")]).unwrap_err();
        assert_eq!(e.field(), "rules[0].label");
    }

    #[test]
    fn vitrage_conf_reads_as_rules() {
        let yaml = "alerts:\n- key:\n    alertname: HighCpuOnVmAlert\n    job: libvirt\n  resource:\n    instance_name: domain\n    host_id: instance\n- alert:\n    key: {alertname: X}\n    resource: {name: vm}\n";
        let rules = Rules::from_vitrage_yaml(yaml, &default_vitrage_types()).unwrap();
        assert_eq!(rules.len(), 3);
        let l = labels(&[
            ("alertname", "HighCpuOnVmAlert"),
            ("job", "libvirt"),
            ("instance", "1.1.1.1:9999"),
        ]);
        // No domain: the second property of the resource, matched against the hosts'
        // host_ip (the default vitrage_types).
        assert_eq!(
            rules.target(&l).unwrap().other,
            "nova.host[host_ip=1.1.1.1]"
        );
        // A type without brackets keeps Vitrage's property name.
        let mut types = default_vitrage_types();
        types.insert("host_id".into(), "nova.host".into());
        let plain = Rules::from_vitrage_yaml(yaml, &types).unwrap();
        assert_eq!(
            plain.target(&l).unwrap().other,
            "nova.host[host_id=1.1.1.1]"
        );
        let mut with_domain = l.clone();
        with_domain.insert("domain".into(), "instance-4".into());
        assert_eq!(
            rules.target(&with_domain).unwrap().other,
            "nova.instance[instance_name=instance-4]"
        );
        assert!(
            Rules::from_vitrage_yaml("alerts: [{resource: {odd: x}}]", &default_vitrage_types())
                .is_err()
        );
        assert!(Rules::from_vitrage_yaml("nope", &default_vitrage_types()).is_err());
    }
}
