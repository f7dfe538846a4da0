//! Which resource an alarm is `on`: configurable rules from a Nagios host name to an
//! entity key.
//!
//! The rules are an ordered list of `{ pattern, key }`; the first whose `pattern` (a
//! [`regex`] matched against the *whole* host name: it is anchored as `^(?:pattern)$`)
//! matches gives the key, expanding its template:
//!
//! - `$1` … `$9`, `${12}`: capture group by number (`$0`: the whole host name);
//! - `${group}`: named capture group `(?P<group>…)`;
//! - `${name}` or `${nagios_host}` (Vitrage's spelling): the whole Nagios host name,
//!   unless the pattern has a group of that name;
//! - `$$`: a literal `$`.
//!
//! A group that did not take part in the match expands to nothing. Templates are checked
//! when the rules are built: a reference to a group the pattern does not have, or a `$`
//! followed by anything else, is a configuration error ([`RuleError`]).
//!
//! When no rule matches, `default_key` applies (only `${name}`, `${nagios_host}` and `$0`
//! there); it defaults to `nova.host:${name}`, Vitrage's default of relating a Nagios
//! host to the Nova host of the same name.
//!
//! ```
//! use synchronizer_nagios::rules::{HostRules, HostRulesConfig};
//!
//! let config: HostRulesConfig = serde_json::from_str(r#"{
//!     "rules": [
//!         { "pattern": "(compute-\\d+)\\.example\\.org", "key": "nova.host:$1" },
//!         { "pattern": "instance-(?P<id>.+)", "key": "nova.instance:${id}" }
//!     ]
//! }"#).unwrap();
//! let rules = HostRules::new(&config).unwrap();
//! assert_eq!(rules.resource_key("compute-7.example.org").as_deref(), Some("nova.host:compute-7"));
//! assert_eq!(rules.resource_key("instance-42").as_deref(), Some("nova.instance:42"));
//! assert_eq!(rules.resource_key("db-1").as_deref(), Some("nova.host:db-1"));
//! ```

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::model::{Pending, ServiceStatus};

/// The default for [`HostRulesConfig::default_key`].
pub const DEFAULT_KEY_TEMPLATE: &str = "nova.host:${name}";

/// One rule of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRuleConfig {
    /// A regular expression ([`regex`] syntax) the whole Nagios host name must match.
    pub pattern: String,
    /// The entity key template, e.g. `nova.host:$1` or `nova.instance:${id}`.
    pub key: String,
}

/// The rules' configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRulesConfig {
    /// Tried in order; the first match wins.
    #[serde(default)]
    pub rules: Vec<HostRuleConfig>,
    /// The key when no rule matches (default `nova.host:${name}`).
    #[serde(default = "default_key_template")]
    pub default_key: String,
}

fn default_key_template() -> String {
    DEFAULT_KEY_TEMPLATE.to_owned()
}

impl Default for HostRulesConfig {
    fn default() -> Self {
        HostRulesConfig {
            rules: Vec::new(),
            default_key: default_key_template(),
        }
    }
}

/// A rule configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// The pattern is not a valid regular expression.
    #[error("host rule {index} (pattern {pattern:?}): invalid regular expression: {message}")]
    Regex {
        /// Position of the rule in the list (from 0).
        index: usize,
        /// The pattern.
        pattern: String,
        /// The regex crate's message.
        message: String,
    },
    /// The key template is invalid for its pattern.
    #[error("{} (key {template:?}): {reason}", rule_name(*.index))]
    Template {
        /// Position of the rule in the list (from 0); `None` for `default_key`.
        index: Option<usize>,
        /// The template.
        template: String,
        /// What is wrong.
        reason: String,
    },
}

impl RuleError {
    /// The field's path inside the `host_rules` table (`rules[1].pattern`,
    /// `rules[0].key`, `default_key`) and what is wrong with it, on one line.
    pub fn field_and_message(&self) -> (String, String) {
        match self {
            RuleError::Regex { index, message, .. } => (
                format!("rules[{index}].pattern"),
                format!("invalid regular expression: {}", one_line(message)),
            ),
            RuleError::Template { index, reason, .. } => (
                match index {
                    Some(i) => format!("rules[{i}].key"),
                    None => "default_key".to_owned(),
                },
                reason.clone(),
            ),
        }
    }
}

/// The regex crate's message without its multi-line picture of the pattern (which shows
/// the anchored form, not what was configured): its `error: ...` line, or every line
/// joined.
pub(crate) fn one_line(message: &str) -> String {
    match message
        .lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
    {
        Some(reason) => reason.to_owned(),
        None => message.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

fn rule_name(index: Option<usize>) -> String {
    match index {
        Some(i) => format!("host rule {i}"),
        None => "default_key".to_owned(),
    }
}

/// A piece of a key template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Group(usize),
    Named(String),
    HostName,
}

#[derive(Debug, Clone)]
struct Template {
    segments: Vec<Segment>,
    /// Whether expanding needs the captures (not just the host name).
    needs_captures: bool,
}

impl Template {
    /// Parses `template`, checking its references against `regex` (`None`: the default
    /// key, where only the host name may be referenced).
    fn parse(template: &str, regex: Option<&Regex>) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = template.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c != '$' {
                literal.push(c);
                continue;
            }
            let reference = match chars.peek().copied() {
                Some((_, '$')) => {
                    chars.next();
                    literal.push('$');
                    continue;
                }
                Some((_, d)) if d.is_ascii_digit() => {
                    let mut digits = String::new();
                    while let Some(&(_, d)) = chars.peek() {
                        if !d.is_ascii_digit() {
                            break;
                        }
                        digits.push(d);
                        chars.next();
                    }
                    digits
                }
                Some((_, '{')) => {
                    chars.next();
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(format!("unclosed `${{` at byte {i}"));
                    }
                    if name.is_empty() {
                        return Err(format!("empty `${{}}` at byte {i}"));
                    }
                    name
                }
                _ => {
                    return Err(format!(
                        "`$` at byte {i} must be followed by a group number, `{{name}}` or `$`"
                    ));
                }
            };
            let segment = Self::reference(&reference, regex)?;
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
            }
            segments.push(segment);
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        let needs_captures = segments
            .iter()
            .any(|s| matches!(s, Segment::Group(n) if *n > 0) || matches!(s, Segment::Named(_)));
        Ok(Template {
            segments,
            needs_captures,
        })
    }

    fn reference(reference: &str, regex: Option<&Regex>) -> Result<Segment, String> {
        if let Ok(n) = reference.parse::<usize>() {
            if n == 0 {
                return Ok(Segment::HostName);
            }
            let Some(regex) = regex else {
                return Err(format!(
                    "refers to group {n}: only `${{name}}` (or `$0`) is known here"
                ));
            };
            let groups = regex.captures_len() - 1;
            if n > groups {
                return Err(format!(
                    "refers to group {n} but the pattern has {groups} capture group(s)"
                ));
            }
            return Ok(Segment::Group(n));
        }
        if regex.is_some_and(|r| r.capture_names().flatten().any(|n| n == reference)) {
            return Ok(Segment::Named(reference.to_owned()));
        }
        if reference == "name" || reference == "nagios_host" {
            return Ok(Segment::HostName);
        }
        Err(match regex {
            Some(_) => format!(
                "refers to `{reference}`, which is neither a named group of the pattern nor `name`"
            ),
            None => format!("refers to `{reference}`: only `${{name}}` (or `$0`) is known here"),
        })
    }

    fn expand(&self, host: &str, captures: Option<&regex::Captures<'_>>, out: &mut String) {
        for segment in &self.segments {
            match segment {
                Segment::Literal(s) => out.push_str(s),
                Segment::HostName => out.push_str(host),
                Segment::Group(n) => {
                    if let Some(m) = captures.and_then(|c| c.get(*n)) {
                        out.push_str(m.as_str());
                    }
                }
                Segment::Named(name) => {
                    if let Some(m) = captures.and_then(|c| c.name(name)) {
                        out.push_str(m.as_str());
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    regex: Regex,
    key: Template,
}

/// Compiled rules: Nagios host name → entity key of the resource.
#[derive(Debug, Clone)]
pub struct HostRules {
    rules: Vec<Rule>,
    /// `None`: hosts that match no rule are dropped (Vitrage's `nagios_conf.yaml`).
    default_key: Option<Template>,
}

impl Default for HostRules {
    /// No rules: every host maps to `nova.host:<host name>`.
    fn default() -> Self {
        HostRules {
            rules: Vec::new(),
            default_key: Some(Template {
                segments: vec![Segment::Literal("nova.host:".to_owned()), Segment::HostName],
                needs_captures: false,
            }),
        }
    }
}

/// Which rule gave a host its resource key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// The rule at this index (from 0).
    Rule(usize),
    /// No rule matched: the default key.
    Default,
    /// No rule matched and there is no default key (Vitrage's `nagios_conf.yaml`): the
    /// host's alarms are dropped.
    Dropped,
}

impl HostRules {
    /// Compiles and checks a configuration.
    pub fn new(config: &HostRulesConfig) -> Result<Self, RuleError> {
        let mut rules = Vec::with_capacity(config.rules.len());
        for (index, rule) in config.rules.iter().enumerate() {
            let regex =
                Regex::new(&format!("^(?:{})$", rule.pattern)).map_err(|e| RuleError::Regex {
                    index,
                    pattern: rule.pattern.clone(),
                    message: e.to_string(),
                })?;
            let key =
                Template::parse(&rule.key, Some(&regex)).map_err(|reason| RuleError::Template {
                    index: Some(index),
                    template: rule.key.clone(),
                    reason,
                })?;
            rules.push(Rule { regex, key });
        }
        let default_key =
            Template::parse(&config.default_key, None).map_err(|reason| RuleError::Template {
                index: None,
                template: config.default_key.clone(),
                reason,
            })?;
        Ok(HostRules {
            rules,
            default_key: Some(default_key),
        })
    }

    /// Rules from Vitrage's `nagios_conf.yaml` entries, with Vitrage's semantics
    /// ([`crate::vitrage`]): each `nagios_host` pattern is matched at the start of the host
    /// name only (Python's `re.match`: `compute-1` matches `compute-10` and
    /// `compute-1.local`); the key is `<type>:<name>`, `name` being the host name when it
    /// is exactly `${nagios_host}` and taken literally otherwise; a host that matches no
    /// entry is dropped.
    pub fn vitrage(mappings: &[crate::vitrage::VitrageMapping]) -> Result<Self, RuleError> {
        let mut rules = Vec::with_capacity(mappings.len());
        for (index, m) in mappings.iter().enumerate() {
            let regex =
                Regex::new(&format!("^(?:{})", m.nagios_host)).map_err(|e| RuleError::Regex {
                    index,
                    pattern: m.nagios_host.clone(),
                    message: e.to_string(),
                })?;
            let mut segments = vec![Segment::Literal(format!("{}:", m.resource_type))];
            if m.name == crate::vitrage::NAGIOS_HOST_NAME {
                segments.push(Segment::HostName);
            } else {
                segments.push(Segment::Literal(m.name.clone()));
            }
            rules.push(Rule {
                regex,
                key: Template {
                    segments,
                    needs_captures: false,
                },
            });
        }
        Ok(HostRules {
            rules,
            default_key: None,
        })
    }

    /// The entity key of the resource a Nagios host name stands for; `None` when the host
    /// is dropped (no rule matches and there is no default key).
    pub fn resource_key(&self, host: &str) -> Option<String> {
        let mut key = String::with_capacity(host.len() + 16);
        match self.resource_key_into(host, &mut key) {
            Resolved::Dropped => None,
            _ => Some(key),
        }
    }

    /// Like [`resource_key`](Self::resource_key), appending to `out` (nothing when the
    /// host is dropped); tells which rule matched.
    pub fn resource_key_into(&self, host: &str, out: &mut String) -> Resolved {
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.key.needs_captures {
                if let Some(captures) = rule.regex.captures(host) {
                    rule.key.expand(host, Some(&captures), out);
                    return Resolved::Rule(index);
                }
            } else if rule.regex.is_match(host) {
                rule.key.expand(host, None, out);
                return Resolved::Rule(index);
            }
        }
        match &self.default_key {
            Some(default_key) => {
                default_key.expand(host, None, out);
                Resolved::Default
            }
            None => Resolved::Dropped,
        }
    }

    /// The alarms among `statuses` ([`Pending::Alarm`]: services not OK, hosts DOWN or
    /// UNREACHABLE), each with its native id and the key of the resource it is on.
    pub fn map_alarms<'a>(&self, statuses: &'a [ServiceStatus]) -> Vec<MappedAlarm<'a>> {
        self.map_alarms_with(statuses, Pending::default())
    }

    /// The alarms among `statuses` (services WARNING, CRITICAL, UNKNOWN, and PENDING unless
    /// `pending` is [`Pending::Skip`]; hosts DOWN or UNREACHABLE), each with its native id
    /// and the key of the resource it is on; the alarms of dropped hosts are left out.
    /// Consecutive entries of the same host (as both status pages list them) resolve the
    /// rules once.
    pub fn map_alarms_with<'a>(
        &self,
        statuses: &'a [ServiceStatus],
        pending: Pending,
    ) -> Vec<MappedAlarm<'a>> {
        let mut out = Vec::new();
        let mut last: Option<(&str, Option<String>)> = None;
        for status in statuses.iter().filter(|s| pending.is_alarm(s)) {
            let resource_key = match &last {
                Some((host, key)) if *host == status.host => key.clone(),
                _ => {
                    let key = self.resource_key(&status.host);
                    last = Some((&status.host, key.clone()));
                    key
                }
            };
            let Some(resource_key) = resource_key else {
                continue;
            };
            out.push(MappedAlarm {
                status,
                native_id: status.native_id(),
                resource_key,
            });
        }
        out
    }
}

/// An alarm and what relates it to its resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedAlarm<'a> {
    /// The service or host status.
    pub status: &'a ServiceStatus,
    /// Its native id ([`ServiceStatus::native_id`]).
    pub native_id: String,
    /// The key of the resource the alarm is `on`.
    pub resource_key: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AlarmState;

    fn rules(json: &str) -> Result<HostRules, RuleError> {
        let config: HostRulesConfig = serde_json::from_str(json).expect("config");
        HostRules::new(&config)
    }

    #[test]
    fn default_maps_to_nova_host() {
        let r = HostRules::default();
        assert_eq!(
            r.resource_key("compute-0")
                .as_deref()
                .unwrap_or("<dropped>"),
            "nova.host:compute-0"
        );
        let r = rules("{}").unwrap();
        assert_eq!(
            r.resource_key("compute-0")
                .as_deref()
                .unwrap_or("<dropped>"),
            "nova.host:compute-0"
        );
    }

    #[test]
    fn first_match_wins_and_patterns_are_anchored() {
        let r = rules(
            r#"{"rules": [
                {"pattern": "compute-1", "key": "nova.host:first"},
                {"pattern": "compute-(\\d+)", "key": "nova.host:node$1"},
                {"pattern": "(?P<h>[a-z]+)\\.(?P<d>.+)", "key": "${d}/${h}/${name}/$0/$$"}
            ], "default_key": "other:${nagios_host}"}"#,
        )
        .unwrap();
        assert_eq!(
            r.resource_key("compute-1")
                .as_deref()
                .unwrap_or("<dropped>"),
            "nova.host:first"
        );
        assert_eq!(
            r.resource_key("compute-10")
                .as_deref()
                .unwrap_or("<dropped>"),
            "nova.host:node10"
        );
        assert_eq!(
            r.resource_key("db.example.org")
                .as_deref()
                .unwrap_or("<dropped>"),
            "example.org/db/db.example.org/db.example.org/$"
        );
        assert_eq!(
            r.resource_key("xcompute-1")
                .as_deref()
                .unwrap_or("<dropped>"),
            "other:xcompute-1"
        );
        let mut s = String::new();
        assert_eq!(r.resource_key_into("compute-2", &mut s), Resolved::Rule(1));
        assert_eq!(r.resource_key_into("zzz", &mut s), Resolved::Default);
    }

    #[test]
    fn a_group_named_name_wins_over_the_host_name() {
        let r = rules(
            r#"{"rules": [{"pattern": "(?P<name>[^.]+)\\..*", "key": "nova.host:${name}"}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.resource_key("compute-3.local")
                .as_deref()
                .unwrap_or("<dropped>"),
            "nova.host:compute-3"
        );
    }

    #[test]
    fn bad_configurations_are_errors() {
        let e = rules(r#"{"rules": [{"pattern": "compute-(", "key": "x"}]}"#).unwrap_err();
        assert!(matches!(e, RuleError::Regex { index: 0, .. }), "{e}");
        let e = rules(r#"{"rules": [{"pattern": "c-(\\d)", "key": "x:$2"}]}"#).unwrap_err();
        assert!(e.to_string().contains("group 2"), "{e}");
        let e = rules(r#"{"rules": [{"pattern": "c", "key": "x:${nope}"}]}"#).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = rules(r#"{"rules": [{"pattern": "c", "key": "x:$a"}]}"#).unwrap_err();
        assert!(e.to_string().contains("must be followed"), "{e}");
        let e = rules(r#"{"rules": [{"pattern": "c", "key": "x:${1"}]}"#).unwrap_err();
        assert!(e.to_string().contains("unclosed"), "{e}");
        let e = rules(r#"{"default_key": "x:$1"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "default_key (key \"x:$1\"): refers to group 1: only `${name}` (or `$0`) is known here"
        );
        let e = serde_json::from_str::<HostRulesConfig>(r#"{"rule": []}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `rule`"), "{e}");
        let e = serde_json::from_str::<HostRulesConfig>(
            r#"{"rules": [{"pattern": "a", "key": "b", "type": "c"}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `type`"), "{e}");
    }

    #[test]
    fn map_alarms_keeps_only_alarms() {
        let mut statuses = vec![
            ServiceStatus::new("compute-0", Some("a".into()), AlarmState::Ok),
            ServiceStatus::new("compute-0", Some("b".into()), AlarmState::Critical),
            ServiceStatus::new("compute-0", Some("c".into()), AlarmState::Warning),
            ServiceStatus::new("compute-1", None, AlarmState::Down),
            ServiceStatus::new("compute-1", Some("d".into()), AlarmState::Pending),
            ServiceStatus::new("compute-2", None, AlarmState::Up),
        ];
        statuses[1].output = "boom".into();
        let mapped = HostRules::default().map_alarms(&statuses);
        let got: Vec<_> = mapped
            .iter()
            .map(|m| {
                (
                    m.native_id.as_str(),
                    m.resource_key.as_str(),
                    m.status.state,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("compute-0;b", "nova.host:compute-0", AlarmState::Critical),
                ("compute-0;c", "nova.host:compute-0", AlarmState::Warning),
                ("compute-1", "nova.host:compute-1", AlarmState::Down),
                ("compute-1;d", "nova.host:compute-1", AlarmState::Pending),
            ]
        );
        let skipped = HostRules::default().map_alarms_with(&statuses, Pending::Skip);
        assert_eq!(skipped.len(), 3);
        assert!(
            skipped
                .iter()
                .all(|m| m.status.state != AlarmState::Pending)
        );
    }
}
