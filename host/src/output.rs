//! The JSON form of change notifications: one object per line on stdout, and the same
//! objects wherever a consumer needs text.
//!
//! The schema is stable; fields are only ever added.
//!
//! ```json
//! {"action":"updated","initial":false,"type":"switch","key":"switch:sw-1","id":"sw-1",
//!  "category":"resource","name":"top-of-rack-1","state":"degraded","project":null,
//!  "relations":[{"kind":"contains","direction":"in","key":"rack:r-1"}],
//!  "source_updated":"2026-11-25T10:00:00.000000Z","sampled_at":"2026-11-25T10:00:01.123456Z",
//!  "instance":"static-demo","seq":42,"properties":{"ports":48}}
//! ```
//!
//! - `action`: `created`, `updated`, `deleted`; `initial` is true for changes from an
//!   instance's first snapshot after start.
//! - `key` is `<type>:<id>`; `relations[].direction` is `out` (this → key) or `in`
//!   (key → this).
//! - Timestamps are RFC 3339 UTC with microseconds; `source_updated` is null when the
//!   source gives none (or gave one outside years 1 to 9999, which the host discards:
//!   docs/operator-guide.md, "Timestamps").
//! - A resync is `{"action":"resync","reason":"lagged|periodic|initial"}` followed by one
//!   `{"action":"snapshot", ...entity fields...}` line per entity and
//!   `{"action":"snapshot_end","count":N}`.

use std::io::Write;

use serde::Serialize;
use serde_json::value::RawValue;
use synchronizer_plugin_api::Entity;
use synchronizer_plugin_api::time::format_rfc3339_micros;

use crate::change::{Change, Event, ResyncReason};

#[derive(Serialize)]
struct RelationJson<'a> {
    kind: &'a str,
    direction: &'static str,
    key: &'a str,
}

#[derive(Serialize)]
struct EntityJson<'a> {
    #[serde(rename = "type")]
    entity_type: &'a str,
    key: KeyJson<'a>,
    id: &'a str,
    category: &'static str,
    name: &'a str,
    state: Option<&'a str>,
    project: Option<&'a str>,
    relations: Vec<RelationJson<'a>>,
    source_updated: Option<String>,
    properties: std::borrow::Cow<'a, RawValue>,
}

/// An entity's key, `<type>:<id>`, written as it is serialized (no string built first).
struct KeyJson<'a>(&'a Entity);

impl Serialize for KeyJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}:{}", self.0.entity_type(), self.0.id()))
    }
}

#[derive(Serialize)]
struct ChangeJson<'a> {
    action: &'static str,
    initial: bool,
    #[serde(flatten)]
    entity: EntityJson<'a>,
    sampled_at: String,
    instance: &'a str,
    seq: u64,
}

/// Total over `i64`: a time from outside never makes an output path panic or fail (the
/// host keeps source times within RFC 3339's range, `crate::ingress`).
fn time(us: i64) -> String {
    format_rfc3339_micros(us)
}

/// An entity's properties as they go out, on one line: a change is one line on stdout
/// and one `data:` line in SSE. A line break in valid JSON is whitespace between tokens
/// (inside a string it is escaped), so it becomes a space; properties that do not read
/// as JSON at all (an older plugin can set them freely) go out as `{}`.
fn properties_raw<'a>(json: &'a str, empty: &'a RawValue) -> std::borrow::Cow<'a, RawValue> {
    use std::borrow::Cow;
    if json.contains(['\n', '\r']) {
        return match RawValue::from_string(json.replace(['\n', '\r'], " ")) {
            Ok(one_line) => Cow::Owned(one_line),
            Err(_) => Cow::Borrowed(empty),
        };
    }
    Cow::Borrowed(serde_json::from_str(json).unwrap_or(empty))
}

fn entity_json(e: &Entity) -> EntityJson<'_> {
    let empty: &RawValue = serde_json::from_str("{}").unwrap_or_else(|_| unreachable!());
    EntityJson {
        entity_type: e.entity_type(),
        key: KeyJson(e),
        id: e.id(),
        category: e.category().as_str(),
        name: e.name(),
        state: e.state(),
        project: e.project(),
        relations: e
            .relations()
            .iter()
            .map(|r| RelationJson {
                kind: r.kind(),
                direction: r.direction().as_str(),
                key: r.other(),
            })
            .collect(),
        source_updated: e.source_updated_micros().map(time),
        properties: properties_raw(e.properties_json(), empty),
    }
}

fn change_json(change: &Change) -> ChangeJson<'_> {
    ChangeJson {
        action: change.action.as_str(),
        initial: change.initial,
        entity: entity_json(&change.entity),
        sampled_at: time(change.sampled_us),
        instance: &change.instance,
        seq: change.seq,
    }
}

/// A change as one JSON object.
pub fn change_to_json(change: &Change) -> String {
    serde_json::to_string(&change_json(change)).unwrap_or_default()
}

/// An entity as one JSON object (what `snapshot` prints).
pub fn entity_to_json(entity: &Entity) -> String {
    serde_json::to_string(&entity_json(entity)).unwrap_or_default()
}

/// A resync marker as one JSON object: `{"action":"resync","reason":"lagged"}`.
pub fn resync_to_json(reason: ResyncReason) -> String {
    serde_json::json!({"action": "resync", "reason": reason.as_str()}).to_string()
}

#[derive(Serialize)]
struct SnapshotLine<'a> {
    action: &'static str,
    #[serde(flatten)]
    entity: EntityJson<'a>,
}

fn snapshot_line(entity: &Entity) -> SnapshotLine<'_> {
    SnapshotLine {
        action: "snapshot",
        entity: entity_json(entity),
    }
}

/// One entity of a snapshot as one JSON object: `{"action":"snapshot", ...entity fields...}`.
pub fn snapshot_entity_to_json(entity: &Entity) -> String {
    serde_json::to_string(&snapshot_line(entity)).unwrap_or_default()
}

/// The end of a snapshot of `count` entities: `{"action":"snapshot_end","count":N}`.
pub fn snapshot_end_to_json(count: usize) -> String {
    serde_json::json!({"action": "snapshot_end", "count": count}).to_string()
}

/// One value as one line, serialized straight into `out` (no string in between).
fn write_line(out: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(std::io::Error::from)?;
    out.write_all(b"\n")
}

/// Writes an event as JSON lines.
pub fn write_event(out: &mut impl Write, event: &Event) -> std::io::Result<()> {
    match event {
        Event::Change(c) => write_line(out, &change_json(c)),
        Event::Resync(reason) => writeln!(out, "{}", resync_to_json(*reason)),
        Event::Snapshot(entities) => {
            for e in entities {
                write_line(out, &snapshot_line(e))?;
            }
            writeln!(out, "{}", snapshot_end_to_json(entities.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use synchronizer_plugin_api::time::{MAX_MICROS, MIN_MICROS};

    use super::*;
    use crate::change::Action;

    fn change(source_us: i64, sampled_us: i64) -> Change {
        Change {
            seq: 1,
            action: Action::Updated,
            entity: Arc::new(
                Entity::resource("nova.instance", "i-1").with_source_updated_micros(source_us),
            ),
            instance: Arc::from("nova"),
            sampled_us,
            initial: false,
        }
    }

    #[test]
    fn any_timestamp_prints_and_the_line_stays_json() {
        // Before 1970 (humantime panicked), past 9999 (it returned fmt::Error, which
        // to_string turned into a panic), and the extremes of i64.
        for (us, expected) in [
            (-1, "1969-12-31T23:59:59.999999Z"),
            (MIN_MICROS, "0001-01-01T00:00:00.000000Z"),
            (MAX_MICROS, "9999-12-31T23:59:59.999999Z"),
            (MAX_MICROS + 1, "+10000-01-01T00:00:00.000000Z"),
            (i64::MIN, "-290308-12-21T19:59:05.224192Z"),
            (i64::MAX, "+294247-01-10T04:00:54.775807Z"),
        ] {
            let line = change_to_json(&change(us, us));
            let v: serde_json::Value = serde_json::from_str(&line).expect(&line);
            assert_eq!(v["source_updated"], expected, "{line}");
            assert_eq!(v["sampled_at"], expected, "{line}");
            let mut out = Vec::new();
            write_event(
                &mut out,
                &Event::Snapshot(vec![change(us, 0).entity].into()),
            )
            .unwrap();
            let first = String::from_utf8(out).unwrap();
            assert!(first.contains(expected), "{first}");
        }
    }

    #[test]
    fn properties_with_line_breaks_between_tokens_go_out_on_one_line() {
        let e = Entity::resource("t", "i")
            .with_properties_json("{\"a\":1,\r\n\"b\":\"x\\ny\"\n}".into())
            .unwrap();
        let c = Change {
            entity: Arc::new(e),
            ..change(0, 0)
        };
        let line = change_to_json(&c);
        assert!(!line.contains(['\n', '\r']), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["properties"], serde_json::json!({"a": 1, "b": "x\ny"}));
    }

    #[test]
    fn properties_as_deep_as_allowed_leave_every_output_readable() {
        use synchronizer_plugin_api::entity::MAX_PROPERTIES_DEPTH;
        let levels = MAX_PROPERTIES_DEPTH - 1;
        let json = format!("{{\"a\":{}{}}}", "[".repeat(levels), "]".repeat(levels));
        let e = Arc::new(
            Entity::resource("t", "i")
                .with_properties_json(json)
                .unwrap(),
        );
        let c = Change {
            entity: e.clone(),
            ..change(0, 0)
        };
        let line = change_to_json(&c);
        serde_json::from_str::<serde_json::Value>(&line).expect("a change reads back");
        let mut out = Vec::new();
        write_event(&mut out, &Event::Snapshot(vec![e].into())).unwrap();
        for line in String::from_utf8(out).unwrap().lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("a snapshot line reads back");
        }
    }
}
