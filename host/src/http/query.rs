//! Query parameters: `types=a,b` (repeatable), and the boolean flags of each endpoint.
//! Unknown parameters are refused with 400, so that a typo (`type=`) does not silently
//! return every type.

use super::error::ApiError;

/// At most this many types in one request.
const MAX_TYPES: usize = 256;
/// At most this long, one type name.
const MAX_TYPE_LEN: usize = 256;

/// The parsed query of a request.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Params {
    /// Entity types; empty for all.
    pub types: Vec<String>,
    /// Boolean flags that were given, by name.
    flags: Vec<(String, bool)>,
}

impl Params {
    /// Parses decoded `pairs`; `flags` are the boolean parameters this endpoint knows.
    pub fn parse(pairs: Vec<(String, String)>, flags: &[&str]) -> Result<Params, ApiError> {
        let mut params = Params::default();
        for (name, value) in pairs {
            if name == "types" {
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if t.len() > MAX_TYPE_LEN {
                        return Err(ApiError::BadRequest(format!(
                            "types: a type name is longer than {MAX_TYPE_LEN} bytes"
                        )));
                    }
                    if !params.types.iter().any(|x| x == t) {
                        params.types.push(t.to_owned());
                    }
                }
                if params.types.len() > MAX_TYPES {
                    return Err(ApiError::BadRequest(format!(
                        "types: more than {MAX_TYPES} types"
                    )));
                }
            } else if flags.contains(&name.as_str()) {
                let on = match value.as_str() {
                    "" | "1" | "true" | "yes" => true,
                    "0" | "false" | "no" => false,
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "{name}: expected true or false, not {other:?}"
                        )));
                    }
                };
                params.flags.push((name, on));
            } else {
                let mut known = vec!["types"];
                known.extend_from_slice(flags);
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {name:?} (known: {})",
                    known.join(", ")
                )));
            }
        }
        Ok(params)
    }

    /// Whether boolean flag `name` was given and true.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().rev().any(|(n, on)| n == name && *on)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn types_are_split_trimmed_and_deduplicated() {
        let p = Params::parse(
            pairs(&[("types", "rack, switch,,rack"), ("types", "host")]),
            &[],
        )
        .unwrap();
        assert_eq!(p.types, vec!["rack", "switch", "host"]);
        assert!(Params::parse(vec![], &[]).unwrap().types.is_empty());
    }

    #[test]
    fn flags_and_unknown_parameters() {
        let p = Params::parse(pairs(&[("snapshot", "true")]), &["snapshot"]).unwrap();
        assert!(p.flag("snapshot"));
        let p = Params::parse(pairs(&[("snapshot", "")]), &["snapshot"]).unwrap();
        assert!(p.flag("snapshot"));
        let p = Params::parse(pairs(&[("snapshot", "0")]), &["snapshot"]).unwrap();
        assert!(!p.flag("snapshot"));
        let e = Params::parse(pairs(&[("snapshot", "maybe")]), &["snapshot"]).unwrap_err();
        assert!(e.to_string().contains("expected true or false"), "{e}");
        let e = Params::parse(pairs(&[("type", "rack")]), &["snapshot"]).unwrap_err();
        assert!(
            e.to_string().contains("unknown query parameter \"type\""),
            "{e}"
        );
        let long = "x".repeat(MAX_TYPE_LEN + 1);
        assert!(Params::parse(pairs(&[("types", &long)]), &[]).is_err());
    }
}
