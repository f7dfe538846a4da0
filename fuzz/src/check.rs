//! Every entity a target produces goes through every output path of the host and through
//! the wire protocol, here, and what comes out is checked:
//!
//! - `output::entity_to_json` (`/v1/entities`, `/v1/snapshot`, `synchronizer snapshot`),
//!   `output::change_to_json` for each action (stdout, the SSE `data:`, the replay
//!   window, and the AMQP output's message body), `output::snapshot_entity_to_json` and
//!   `output::write_event` for a change, a resync and a snapshot: each line must read
//!   back as JSON with the entity's fields, its properties and its timestamp;
//! - the SSE framing of those lines (`id: <seq>@<epoch>`, `data: <json>`), which must
//!   give back exactly the JSON;
//! - the AMQP routing key (`amqp::routing_key`, an AMQP short string: at most 255 bytes) and
//!   the body;
//! - `/metrics`: the entity types as label values of `synchronizer_entities`, one sample
//!   line each;
//! - the wire encoder and decoder: a `SnapshotPart`, a final `Snapshot` and a `Push`
//!   frame holding the entities must decode to the same entities.
//!
//! A failed check panics: that is the fuzzer's finding. To keep fuzzing past a finding
//! not fixed yet, its check can be skipped: `FUZZ_SKIP=metrics` (the names
//! are those of [`skipped`]'s callers). The corpus replay never skips anything.

use std::sync::{Arc, OnceLock};

use abi_stable::std_types::RString;
use serde_json::Value;
use synchronizer::isolation::wire::{self, FromChild};
use synchronizer::metrics::{Metrics, TypeLabels, label_value};
use synchronizer::output;
use synchronizer::{Action, Change, Event, ResyncReason};
use synchronizer_plugin_api::abi::{FfiIncomplete, FfiPushed, PushAction};
use synchronizer_plugin_api::{Category, Direction, Entity};

/// The epoch the SSE ids carry here.
const EPOCH: &str = "fuzz";

/// Runs `entities` through every output path and the wire, checking what comes out.
pub fn entities(entities: &[Entity]) {
    for (i, e) in entities.iter().enumerate() {
        one(e, i as u64 + 1);
    }
    snapshot(entities);
    wire_round_trip(entities);
    let mut types: Vec<&str> = entities.iter().map(|e| e.entity_type()).collect();
    types.sort_unstable();
    types.dedup();
    metrics(|m| {
        for t in &types {
            // As the hub sets the gauge (`hub.rs`).
            m.entities
                .get_or_create(&TypeLabels {
                    r#type: label_value(t),
                })
                .set(1);
        }
        types.len()
    });
}

/// An entity marking kept properties (`Entity::with_kept_properties`, the bus's Nova
/// instances): the host's merge with nothing held and with the entity itself held
/// leaves no top-level marker, and the properties stay one JSON object.
fn kept(e: &Entity) {
    if !e.has_kept_properties() {
        return;
    }
    for held in [None, Some(e)] {
        let merged = e.merged_with(held);
        let v: serde_json::Value = serde_json::from_str(merged.properties_json())
            .unwrap_or_else(|err| panic!("merged properties are no JSON: {err}"));
        assert!(v.is_object());
        let key = synchronizer_plugin_api::entity::KEPT_PROPERTIES_KEY;
        assert!(v.get(key).is_none(), "the marker stayed: {v}");
    }
}

/// Whether the check `name` is skipped (`FUZZ_SKIP`, see the module docs).
pub fn skipped(name: &str) -> bool {
    static SKIP: OnceLock<Vec<String>> = OnceLock::new();
    SKIP.get_or_init(|| {
        std::env::var("FUZZ_SKIP")
            .unwrap_or_default()
            .split(',')
            .map(str::to_owned)
            .collect()
    })
    .iter()
    .any(|s| s == name)
}

/// `/metrics` after `fill` set some labelled series (it returns how many): each must be
/// one more line of the text, whatever its label values hold.
pub fn metrics(fill: impl FnOnce(&Metrics) -> usize) {
    if skipped("metrics") {
        return;
    }
    // Sample lines only: a family's first series also brings its HELP and TYPE lines.
    let samples = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    let m = Metrics::default();
    let empty = samples(&m.encode());
    let series = fill(&m);
    let text = m.encode();
    assert_eq!(
        samples(&text),
        empty + series,
        "/metrics: {series} series did not make {series} lines (a label value is not escaped):\n{text}"
    );
}

/// Changes pushed by a bus plugin: their entities as [`entities`] does, and the push
/// batch through the wire.
pub fn pushed(changes: &[synchronizer_plugin_api::Change]) {
    let list: Vec<Entity> = changes.iter().map(|c| change_entity(c).clone()).collect();
    entities(&list);
    let batch: Vec<FfiPushed> = changes
        .iter()
        .map(|c| FfiPushed {
            action: match c {
                synchronizer_plugin_api::Change::Upsert(_) => PushAction::Upsert,
                synchronizer_plugin_api::Change::Delete(_) => PushAction::Delete,
            },
            entity: change_entity(c).clone(),
        })
        .collect();
    push_round_trip(7, &batch);
}

fn change_entity(c: &synchronizer_plugin_api::Change) -> &Entity {
    match c {
        synchronizer_plugin_api::Change::Upsert(e) | synchronizer_plugin_api::Change::Delete(e) => {
            e
        }
    }
}

fn parse(what: &str, text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what} is not JSON ({e}): {text}"))
}

/// The fields every entity object has, checked against the entity.
fn entity_fields(what: &str, v: &Value, e: &Entity) {
    let field = |name: &str| &v[name];
    assert_eq!(field("type"), e.entity_type(), "{what}: type");
    assert_eq!(field("key"), e.key().as_str(), "{what}: key");
    assert_eq!(field("id"), e.id(), "{what}: id");
    let category = match e.category() {
        Category::Resource => "resource",
        Category::Alarm => "alarm",
    };
    assert_eq!(field("category"), category, "{what}: category");
    assert_eq!(field("name"), e.name(), "{what}: name");
    assert_eq!(field("state").as_str(), e.state(), "{what}: state");
    assert_eq!(field("project").as_str(), e.project(), "{what}: project");
    let relations = field("relations")
        .as_array()
        .unwrap_or_else(|| panic!("{what}: relations are not an array: {v}"));
    assert_eq!(relations.len(), e.relations().len(), "{what}: relations");
    for (r, j) in e.relations().iter().zip(relations) {
        assert_eq!(j["kind"], r.kind(), "{what}: relation kind");
        assert_eq!(j["key"], r.other(), "{what}: relation key");
        let direction = match r.direction() {
            Direction::Outgoing => "out",
            Direction::Incoming => "in",
        };
        assert_eq!(j["direction"], direction, "{what}: relation direction");
    }
    let properties = parse(
        &format!("{what}: the entity's properties"),
        e.properties_json(),
    );
    assert!(
        properties.is_object(),
        "{what}: properties are not an object"
    );
    assert_eq!(field("properties"), &properties, "{what}: properties");
    time_field(what, field("source_updated"), e.source_updated_micros());
}

/// A timestamp field: null for none, else RFC 3339 that reads back to the same
/// microseconds when the time is in the range the project accepts.
fn time_field(what: &str, v: &Value, us: Option<i64>) {
    match us {
        None => assert!(v.is_null(), "{what}: a timestamp without one: {v}"),
        Some(us) => {
            let text = v
                .as_str()
                .unwrap_or_else(|| panic!("{what}: timestamp {us} is not a string: {v}"));
            if synchronizer_plugin_api::time::in_range(us) {
                assert_eq!(
                    synchronizer_openstack::time::parse_timestamp(text),
                    Some(us),
                    "{what}: timestamp {us} written {text:?}"
                );
            }
        }
    }
}

/// One entity through `entity_to_json`, `snapshot_entity_to_json`, and as a change of
/// each action through `change_to_json`, `write_event`, SSE and the AMQP body.
fn one(e: &Entity, seq: u64) {
    kept(e);
    let v = parse("entity_to_json", &output::entity_to_json(e));
    entity_fields("entity_to_json", &v, e);

    let v = parse(
        "snapshot_entity_to_json",
        &output::snapshot_entity_to_json(e),
    );
    assert_eq!(v["action"], "snapshot");
    entity_fields("snapshot_entity_to_json", &v, e);

    let entity = Arc::new(e.clone());
    for (action, sampled_us) in [
        (Action::Created, 0),
        (Action::Updated, 1_795_595_860_123_456),
        (Action::Deleted, i64::from(u32::MAX) * 1_000_000),
    ] {
        let change = Arc::new(Change {
            seq,
            action,
            entity: entity.clone(),
            instance: Arc::from("fuzz-instance"),
            sampled_us,
            initial: seq.is_multiple_of(2),
        });
        let json = output::change_to_json(&change);
        let v = parse("change_to_json", &json);
        assert_eq!(v["action"], action.as_str(), "change_to_json: action");
        assert_eq!(v["seq"], seq, "change_to_json: seq");
        assert_eq!(v["instance"], "fuzz-instance", "change_to_json: instance");
        assert_eq!(v["initial"], change.initial, "change_to_json: initial");
        time_field(
            "change_to_json: sampled_at",
            &v["sampled_at"],
            Some(sampled_us),
        );
        entity_fields("change_to_json", &v, e);

        // stdout: one line, the same object.
        let mut out = Vec::new();
        output::write_event(&mut out, &Event::Change(change.clone()))
            .unwrap_or_else(|err| panic!("write_event into memory failed: {err}"));
        let text = String::from_utf8(out).unwrap_or_else(|err| panic!("stdout line: {err}"));
        assert_eq!(text, format!("{json}\n"), "write_event of a change");

        // SSE: the change stream frames the same JSON.
        let mut sse = String::new();
        synchronizer::http::fuzzing::sse_event(&mut sse, Some((seq, EPOCH)), &json);
        assert_eq!(
            sse_events(&sse),
            vec![(Some(format!("{seq}@{EPOCH}")), json.clone())],
            "SSE framing"
        );

        // AMQP (`amqp.rs`): the body is `change_to_json`; the routing key is an AMQP
        // short string (a one-byte length: a broker closes the connection on more).
        let routing_key = synchronizer::amqp::routing_key(e.entity_type(), action.as_str());
        assert!(
            routing_key.len() <= 255,
            "AMQP routing key of {} bytes (more than 255: the broker closes the connection)",
            routing_key.len()
        );
    }

    let mut out = Vec::new();
    output::write_event(&mut out, &Event::Resync(ResyncReason::Lagged))
        .unwrap_or_else(|err| panic!("write_event into memory failed: {err}"));
    assert_eq!(
        parse("resync", std::str::from_utf8(&out).unwrap_or(""))
            .get("action")
            .and_then(Value::as_str),
        Some("resync")
    );
}

/// The events of an SSE text: (id, data) each.
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let mut id = None;
        let mut data = Vec::new();
        for line in block.split('\n') {
            assert!(
                !line.contains('\r'),
                "SSE line holds a carriage return: {line:?}"
            );
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v);
            } else {
                panic!("SSE line of no known field: {line:?}");
            }
        }
        events.push((id, data.join("\n")));
    }
    events
}

/// The entities as one snapshot on stdout: a line per entity, then the end.
fn snapshot(entities: &[Entity]) {
    let arcs: Vec<Arc<Entity>> = entities.iter().cloned().map(Arc::new).collect();
    let mut out = Vec::new();
    output::write_event(&mut out, &Event::Snapshot(arcs.into()))
        .unwrap_or_else(|err| panic!("write_event into memory failed: {err}"));
    let text = String::from_utf8(out).unwrap_or_else(|err| panic!("snapshot lines: {err}"));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        entities.len() + 1,
        "snapshot: one line per entity and the end"
    );
    for (line, e) in lines.iter().zip(entities) {
        let v = parse("snapshot line", line);
        assert_eq!(v["action"], "snapshot");
        entity_fields("snapshot line", &v, e);
    }
    let end = parse("snapshot end", lines.last().copied().unwrap_or(""));
    assert_eq!(end["action"], "snapshot_end");
    assert_eq!(end["count"], entities.len());
}

/// Whether two entities say the same thing (the wire writes `{}` properties as none).
fn same(a: &Entity, b: &Entity) -> bool {
    a.entity_type() == b.entity_type()
        && a.id() == b.id()
        && a.category() == b.category()
        && a.name() == b.name()
        && a.state() == b.state()
        && a.project() == b.project()
        && a.relations() == b.relations()
        && a.source_updated_micros() == b.source_updated_micros()
        && a.properties_json() == b.properties_json()
}

/// Panics unless `got` are the entities `sent`, in order ([`same`]).
pub fn assert_same_list(what: &str, sent: &[Entity], got: &[Entity]) {
    assert_eq!(sent.len(), got.len(), "{what}: entity count");
    for (a, b) in sent.iter().zip(got) {
        assert!(same(a, b), "{what}: sent {a:?}, decoded {b:?}");
    }
}

/// The body of a frame (the decoders take it without its length prefix), checked
/// against that prefix.
pub fn body(frame: &[u8]) -> &[u8] {
    assert!(frame.len() >= 4, "a frame without its length");
    let n = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert_eq!(n, frame.len() - 4, "frame length prefix");
    &frame[4..]
}

fn decode(frame: &[u8]) -> FromChild {
    FromChild::decode(body(frame)).unwrap_or_else(|e| {
        panic!("the host refuses a frame the child encoder wrote ({e}): {frame:?}")
    })
}

/// The entities as a child sends them: a `SnapshotPart` and a final `Snapshot` frame.
fn wire_round_trip(entities: &[Entity]) {
    match decode(&wire::encode_snapshot_part(3, entities)) {
        FromChild::SnapshotPart { id, entities: got } => {
            assert_eq!(id, 3);
            assert_same_list("SnapshotPart", entities, &got);
        }
        other => panic!("a SnapshotPart decoded as {other:?}"),
    }
    let incomplete = [FfiIncomplete {
        entity_type: RString::from("fuzz.type"),
        reason: RString::from("a reason"),
    }];
    match decode(&wire::encode_snapshot_tail(4, entities, &incomplete)) {
        FromChild::Snapshot {
            id,
            result: Ok(snapshot),
        } => {
            assert_eq!(id, 4);
            assert_same_list("Snapshot", entities, &snapshot.entities);
            assert_eq!(snapshot.incomplete.len(), 1);
        }
        other => panic!("a Snapshot decoded as {other:?}"),
    }
    let batch: Vec<FfiPushed> = entities
        .iter()
        .enumerate()
        .map(|(i, e)| FfiPushed {
            action: if i % 2 == 0 {
                PushAction::Upsert
            } else {
                PushAction::Delete
            },
            entity: e.clone(),
        })
        .collect();
    push_round_trip(5, &batch);
}

fn push_round_trip(id: u64, batch: &[FfiPushed]) {
    match decode(&wire::encode_push(id, batch)) {
        FromChild::Push {
            id: got_id,
            batch: got,
        } => {
            assert_eq!(got_id, id);
            assert_eq!(got.len(), batch.len(), "Push: batch size");
            for (a, b) in batch.iter().zip(&got) {
                assert_eq!(a.action, b.action, "Push: action");
                assert!(
                    same(&a.entity, &b.entity),
                    "Push: sent {a:?}, decoded {b:?}"
                );
            }
        }
        other => panic!("a Push decoded as {other:?}"),
    }
}
