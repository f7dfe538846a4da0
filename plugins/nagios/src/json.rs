//! Parser of Nagios 4's `statusjson.cgi` answers to `query=servicelist&details=true` and
//! `query=hostlist&details=true`.
//!
//! The answer is `{"format_version": 0, "result": {..., "type_code": 0, ...}, "data":
//! {"servicelist": {"<host>": {"<service>": {details}}}}}` (for `hostlist`:
//! `{"<host>": {details}}`). States are statusjson's bits, checked against a real Nagios
//! 4.4.6 capture: services 1 pending, 2 ok, 4 warning, 8 unknown, 16 critical; hosts
//! 1 pending, 2 up, 4 down, 8 unreachable. Times are Unix milliseconds; 0 means never.
//!
//! Anything but a complete, successful answer of the expected query is an error
//! ([`JsonError`]), never an empty or partial list: a body that is not JSON (an HTML error
//! or login page), JSON cut short, another shape (a list without `details=true`, a
//! missing `result` or list, a detail without `status`), a `result.type_code` other than
//! 0 (Nagios' own error: its `type_text` and `message` are in the error), the answer to
//! another query, or a status code outside the table above.
//!
//! Entries keep the order of the answer. The details are read in one pass with serde_json,
//! skipping the fields this crate does not use; see the crate's README for timings.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::model::{AlarmState, Attempt, CheckTime, ServiceStatus, StateType};

/// Why a statusjson.cgi answer is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// The body is empty or only white space.
    #[error("the statusjson.cgi answer is empty")]
    Empty,
    /// The body is an HTML page (an error or login page, a proxy's answer).
    #[error("the statusjson.cgi answer is an HTML page, not JSON ({})", crate::html::show_title(.title))]
    Html {
        /// The page's `<title>`, if any.
        title: Option<String>,
    },
    /// The JSON ends before it is complete.
    #[error("the statusjson.cgi answer is truncated JSON ({len} bytes): {message}")]
    Truncated {
        /// The body's length.
        len: usize,
        /// serde_json's message, with line and column.
        message: String,
    },
    /// Not valid JSON.
    #[error("the statusjson.cgi answer is not valid JSON: {message}")]
    Syntax {
        /// serde_json's message, with line and column.
        message: String,
    },
    /// Valid JSON of another shape.
    #[error("unexpected shape of the statusjson.cgi answer: {message}")]
    Shape {
        /// What is wrong, with line and column when known.
        message: String,
    },
    /// statusjson.cgi reports an error (`result.type_code` is not 0).
    #[error("statusjson.cgi reports error {type_code} ({type_text}): {message}")]
    NagiosError {
        /// `result.type_code`.
        type_code: i64,
        /// `result.type_text`.
        type_text: String,
        /// `result.message`.
        message: String,
    },
    /// The answer is for another query.
    #[error("statusjson.cgi answered query {found:?}, expected {expected:?}")]
    WrongQuery {
        /// The query asked.
        expected: &'static str,
        /// `result.query`.
        found: String,
    },
    /// A list was requested without `details=true`: it has only status codes.
    #[error(
        "statusjson.cgi's {query} has no details (status codes only): request it with details=true"
    )]
    NoDetails {
        /// `servicelist` or `hostlist`.
        query: &'static str,
    },
    /// A status code outside statusjson's table.
    #[error("unknown {kind} status code {code} for {name:?}")]
    UnknownStatus {
        /// `service` or `host`.
        kind: &'static str,
        /// `host;service` or `host`.
        name: String,
        /// The code.
        code: i64,
    },
}

/// A parsed list and the answer's own timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusList {
    /// The services (servicelist) or hosts (hostlist), in the answer's order.
    pub entries: Vec<ServiceStatus>,
    /// `result.query_time`: when the CGI answered (Unix ms).
    pub query_time: Option<i64>,
    /// `result.last_data_update`: when Nagios last wrote the status data the CGI read
    /// (Unix ms). Far behind `query_time`, it means Nagios has stopped updating it.
    pub last_data_update: Option<i64>,
}

/// Parses a `statusjson.cgi?query=servicelist&details=true` answer: one entry per service.
pub fn parse_servicelist(body: &[u8]) -> Result<StatusList, JsonError> {
    parse(body, Query::ServiceList)
}

/// Parses a `statusjson.cgi?query=hostlist&details=true` answer: one entry per host
/// (`service` is `None`), whatever its state; keep the alarms with
/// [`ServiceStatus::is_alarm`].
pub fn parse_hostlist(body: &[u8]) -> Result<StatusList, JsonError> {
    parse(body, Query::HostList)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Query {
    ServiceList,
    HostList,
}

impl Query {
    fn name(self) -> &'static str {
        match self {
            Query::ServiceList => "servicelist",
            Query::HostList => "hostlist",
        }
    }
}

fn parse(body: &[u8], query: Query) -> Result<StatusList, JsonError> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        return Err(JsonError::Empty);
    };
    if body[start] == b'<' {
        return Err(JsonError::Html {
            title: html_title(body),
        });
    }
    let mut semantic: Option<JsonError> = None;
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = EnvelopeSeed {
        query,
        semantic: &mut semantic,
    }
    .deserialize(&mut de)
    .and_then(|envelope| de.end().map(|()| envelope));
    let envelope = match parsed {
        Ok(envelope) => envelope,
        Err(e) => {
            if let Some(err) = semantic {
                return Err(err);
            }
            return Err(classify(e, body));
        }
    };

    let Some(result) = envelope.result else {
        return Err(JsonError::Shape {
            message: "no `result` object".into(),
        });
    };
    if result.type_code != 0 {
        return Err(JsonError::NagiosError {
            type_code: result.type_code,
            type_text: result.type_text,
            message: result.message,
        });
    }
    if result.query != query.name() {
        return Err(JsonError::WrongQuery {
            expected: query.name(),
            found: result.query,
        });
    }
    let Some(entries) = envelope.list else {
        return Err(JsonError::Shape {
            message: format!("no `data.{}` object", query.name()),
        });
    };
    Ok(StatusList {
        entries,
        query_time: result.query_time,
        last_data_update: result.last_data_update,
    })
}

fn classify(e: serde_json::Error, body: &[u8]) -> JsonError {
    let len = body.len();
    let at_end = error_offset(body, e.line(), e.column()) >= len.saturating_sub(1);
    match e.classify() {
        serde_json::error::Category::Eof => JsonError::Truncated {
            len,
            message: e.to_string(),
        },
        // A body cut inside a number or a literal (`0.`, `tr`) fails as a syntax error at
        // its last byte.
        serde_json::error::Category::Syntax if at_end => JsonError::Truncated {
            len,
            message: e.to_string(),
        },
        serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
            JsonError::Syntax {
                message: e.to_string(),
            }
        }
        serde_json::error::Category::Data => JsonError::Shape {
            message: e.to_string(),
        },
    }
}

/// The byte offset of serde_json's (1-based line, 1-based column) position.
fn error_offset(body: &[u8], line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        memchr::memchr_iter(b'\n', body)
            .nth(line - 2)
            .map_or(body.len(), |i| i + 1)
    };
    (line_start + column).saturating_sub(1)
}

/// The `<title>` of an HTML body, for the error message.
fn html_title(body: &[u8]) -> Option<String> {
    let lower: Vec<u8> = body
        .iter()
        .take(64 * 1024)
        .map(u8::to_ascii_lowercase)
        .collect();
    let open = memchr::memmem::find(&lower, b"<title")?;
    let start = open + memchr::memchr(b'>', &lower[open..])? + 1;
    let end = start + memchr::memmem::find(&lower[start..], b"</title")?;
    let title = String::from_utf8_lossy(&body[start..end]);
    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(title)
}

// ---------------------------------------------------------------------------------------
// serde plumbing: one pass, entries pushed in order, semantic errors kept aside.

#[derive(Deserialize)]
struct ResultInfo {
    #[serde(default)]
    query_time: Option<i64>,
    #[serde(default)]
    last_data_update: Option<i64>,
    #[serde(default)]
    query: String,
    type_code: i64,
    #[serde(default)]
    type_text: String,
    #[serde(default)]
    message: String,
}

struct Envelope {
    result: Option<ResultInfo>,
    list: Option<Vec<ServiceStatus>>,
}

struct EnvelopeSeed<'s> {
    query: Query,
    semantic: &'s mut Option<JsonError>,
}

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = Envelope;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Envelope, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_> {
    type Value = Envelope;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a statusjson.cgi answer object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut envelope = Envelope {
            result: None,
            list: None,
        };
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "result" => envelope.result = Some(map.next_value()?),
                "data" => {
                    envelope.list = map.next_value_seed(DataSeed {
                        query: self.query,
                        semantic: &mut *self.semantic,
                    })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(envelope)
    }
}

struct DataSeed<'s> {
    query: Query,
    semantic: &'s mut Option<JsonError>,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = Option<Vec<ServiceStatus>>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = Option<Vec<ServiceStatus>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the `data` object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut list = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.query.name() {
                let mut out = Vec::new();
                map.next_value_seed(ListSeed {
                    query: self.query,
                    out: &mut out,
                    semantic: &mut *self.semantic,
                })?;
                list = Some(out);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(list)
    }
}

/// `{"<host>": {"<service>": {...}}}` or `{"<host>": {...}}`.
struct ListSeed<'s> {
    query: Query,
    out: &'s mut Vec<ServiceStatus>,
    semantic: &'s mut Option<JsonError>,
}

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the `{}` object", self.query.name())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if let Some(n) = map.size_hint() {
            self.out.reserve(n);
        }
        while let Some(host) = map.next_key::<String>()? {
            match self.query {
                Query::ServiceList => map.next_value_seed(HostServicesSeed {
                    host,
                    out: &mut *self.out,
                    semantic: &mut *self.semantic,
                })?,
                Query::HostList => {
                    let entry = map.next_value_seed(DetailSeed {
                        host,
                        service: None,
                        semantic: &mut *self.semantic,
                    })?;
                    self.out.push(entry);
                }
            }
        }
        Ok(())
    }
}

/// `{"<service>": {...}}` of one host.
struct HostServicesSeed<'s> {
    host: String,
    out: &'s mut Vec<ServiceStatus>,
    semantic: &'s mut Option<JsonError>,
}

impl<'de> DeserializeSeed<'de> for HostServicesSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HostServicesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the services of host {:?}", self.host)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(service) = map.next_key::<String>()? {
            let entry = map.next_value_seed(DetailSeed {
                host: self.host.clone(),
                service: Some(service),
                semantic: &mut *self.semantic,
            })?;
            self.out.push(entry);
        }
        Ok(())
    }
}

/// The details statusjson gives for a service or a host (the fields used here).
#[derive(Deserialize)]
struct Detail {
    status: i64,
    #[serde(default)]
    plugin_output: String,
    #[serde(default)]
    last_check: i64,
    #[serde(default)]
    last_state_change: i64,
    #[serde(default)]
    current_attempt: Option<u32>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    state_type: Option<i64>,
}

struct DetailSeed<'s> {
    host: String,
    service: Option<String>,
    semantic: &'s mut Option<JsonError>,
}

impl<'de> DeserializeSeed<'de> for DetailSeed<'_> {
    type Value = ServiceStatus;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<ServiceStatus, D::Error> {
        d.deserialize_any(self)
    }
}

impl DetailSeed<'_> {
    fn fail<E: de::Error>(self, err: JsonError) -> E {
        let e = E::custom(&err);
        *self.semantic = Some(err);
        e
    }

    fn no_details<E: de::Error>(self) -> E {
        let query = if self.service.is_some() {
            "servicelist"
        } else {
            "hostlist"
        };
        self.fail(JsonError::NoDetails { query })
    }
}

impl<'de> Visitor<'de> for DetailSeed<'_> {
    type Value = ServiceStatus;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the details of a service or host")
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<ServiceStatus, E> {
        Err(self.no_details())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<ServiceStatus, E> {
        Err(self.no_details())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ServiceStatus, A::Error> {
        let d = Detail::deserialize(de::value::MapAccessDeserializer::new(map))?;
        let state = match self.service {
            Some(_) => AlarmState::from_service_code(d.status),
            None => AlarmState::from_host_code(d.status),
        };
        let Some(state) = state else {
            let (kind, name) = match &self.service {
                Some(s) => ("service", format!("{};{}", self.host, s)),
                None => ("host", self.host.clone()),
            };
            return Err(self.fail(JsonError::UnknownStatus {
                kind,
                name,
                code: d.status,
            }));
        };
        let attempt = match (d.current_attempt, d.max_attempts) {
            (Some(current), Some(max)) => Some(Attempt { current, max }),
            _ => None,
        };
        let state_type = match d.state_type {
            Some(0) => Some(StateType::Soft),
            Some(1) => Some(StateType::Hard),
            _ => None,
        };
        Ok(ServiceStatus {
            host: self.host,
            service: self.service,
            state,
            output: d.plugin_output,
            last_check: (d.last_check > 0).then_some(CheckTime::UnixMillis(d.last_check)),
            duration: None,
            last_state_change: (d.last_state_change > 0).then_some(d.last_state_change),
            attempt,
            state_type,
        })
    }
}
