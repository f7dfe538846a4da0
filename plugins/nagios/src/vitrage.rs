//! Vitrage's `nagios_conf.yaml`, read as Vitrage 15 reads it
//! (`vitrage/datasources/nagios/config.py`), for the `vitrage_conf` option:
//!
//! ```yaml
//! nagios:
//!   - nagios_host: compute-(.*)
//!     type: nova.host
//!     name: ${nagios_host}
//! ```
//!
//! The root is a mapping whose `nagios` key holds a list of entries, each with
//! `nagios_host` (a regular expression), `type` (the resource's entity type) and `name`
//! (the resource's name: the Nagios host name when it is exactly `${nagios_host}`, else
//! taken literally). Vitrage loads the file with PyYAML's `BaseLoader`, so every scalar
//! is text: numbers and booleans are read as the text they are written with here too.
//! Other keys of an entry are ignored, as Vitrage ignores them.
//!
//! [`crate::rules::HostRules::vitrage`] turns the entries into rules with Vitrage's
//! matching: `re.match`, the pattern anchored at the start of the host name only, the
//! first entry that matches wins, and a host that matches none is dropped.
//!
//! Where Vitrage logs a file it cannot read and then maps no host at all (so drops every
//! alarm), this reader refuses it with an error that says where ([`VitrageConfError`]),
//! and `synchronizer check-config` reports it on the `vitrage_conf` field. A `nagios:`
//! list that is empty is valid (every host is dropped, as in Vitrage).

use serde_yaml::Value;

/// The `name` that stands for the Nagios host name.
pub const NAGIOS_HOST_NAME: &str = "${nagios_host}";

/// One entry of `nagios_conf.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VitrageMapping {
    /// `nagios_host`: a regular expression matched at the start of the host name.
    pub nagios_host: String,
    /// `type`: the entity type of the resource (`nova.host`).
    pub resource_type: String,
    /// `name`: the resource's name, or `${nagios_host}`.
    pub name: String,
}

/// Why a `nagios_conf.yaml` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VitrageConfError {
    /// Not YAML.
    #[error("not valid YAML: {message}")]
    Yaml {
        /// serde_yaml's message, with line and column.
        message: String,
    },
    /// The document is empty.
    #[error("the file is empty: Vitrage's nagios_conf.yaml is a mapping with a `nagios` list")]
    Empty,
    /// The root has no `nagios` list.
    #[error("no `nagios` list at the top level (found {found})")]
    NoNagiosList {
        /// What the root or its `nagios` value is.
        found: String,
    },
    /// An entry of the list is not a mapping.
    #[error("nagios[{index}] is {found}, not a mapping with nagios_host, type and name")]
    EntryShape {
        /// Position in the list (from 0).
        index: usize,
        /// What it is.
        found: String,
    },
    /// An entry lacks a key or has a value that is not text.
    #[error("nagios[{index}].{key}: {reason}")]
    Field {
        /// Position in the list (from 0).
        index: usize,
        /// `nagios_host`, `type` or `name`.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Parses the text of a `nagios_conf.yaml`.
pub fn parse_vitrage_conf(text: &str) -> Result<Vec<VitrageMapping>, VitrageConfError> {
    let root: Value = serde_yaml::from_str(text).map_err(|e| VitrageConfError::Yaml {
        message: e.to_string(),
    })?;
    if root.is_null() {
        return Err(VitrageConfError::Empty);
    }
    let Value::Mapping(map) = &root else {
        return Err(VitrageConfError::NoNagiosList {
            found: describe(&root),
        });
    };
    let list = match map.get("nagios") {
        Some(Value::Sequence(list)) => list,
        Some(other) => {
            return Err(VitrageConfError::NoNagiosList {
                found: format!("`nagios` is {}", describe(other)),
            });
        }
        None => {
            return Err(VitrageConfError::NoNagiosList {
                found: "no `nagios` key".to_owned(),
            });
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (index, entry) in list.iter().enumerate() {
        let Value::Mapping(entry) = entry else {
            return Err(VitrageConfError::EntryShape {
                index,
                found: describe(entry),
            });
        };
        let field = |key: &'static str| -> Result<String, VitrageConfError> {
            let error = |reason: String| VitrageConfError::Field { index, key, reason };
            match entry.get(key) {
                None => Err(error("missing".to_owned())),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                Some(Value::Bool(b)) => Ok(b.to_string()),
                Some(other) => Err(error(format!("is {}, not text", describe(other)))),
            }
        };
        out.push(VitrageMapping {
            nagios_host: field("nagios_host")?,
            resource_type: field("type")?,
            name: field("name")?,
        });
    }
    Ok(out)
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "empty (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_entries_in_order_and_ignores_other_keys() {
        let m = parse_vitrage_conf(
            "nagios:\n  - nagios_host: compute-1\n    type: nova.host\n    name: compute-1\n    comment: x\n  - nagios_host: 10\n    type: nova.host\n    name: ${nagios_host}\n",
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].nagios_host, "10");
        assert_eq!(m[1].name, NAGIOS_HOST_NAME);
        assert_eq!(parse_vitrage_conf("nagios: []\n").unwrap(), vec![]);
    }

    #[test]
    fn refuses_what_vitrage_could_not_use() {
        let cases = [
            ("", "the file is empty"),
            ("nagios: [", "not valid YAML"),
            ("- a\n", "no `nagios` list at the top level (found a list)"),
            ("other: []\n", "(found no `nagios` key)"),
            ("nagios: x\n", "(found `nagios` is a string)"),
            ("nagios:\n  - x\n", "nagios[0] is a string"),
            (
                "nagios:\n  - nagios_host: a\n    type: t\n",
                "nagios[0].name: missing",
            ),
            (
                "nagios:\n  - nagios_host: [a]\n    type: t\n    name: n\n",
                "nagios[0].nagios_host: is a list, not text",
            ),
            (
                "nagios:\n  - nagios_host:\n    type: t\n    name: n\n",
                "nagios[0].nagios_host: is empty (null), not text",
            ),
        ];
        for (text, want) in cases {
            let e = parse_vitrage_conf(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
