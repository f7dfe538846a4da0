//! The entity: one resource or alarm, as every plugin reports it and every consumer sees it.
//!
//! [`Entity`] is `#[repr(C)]` and `StableAbi`, so a snapshot crosses the plugin boundary
//! without being converted: the host hashes, diffs and forwards the very values a plugin
//! built (see docs/architecture.md §2, "Cost"). Its fields are private; plugin authors build one with
//! plain Rust values through the `with_*` methods and never see an abi_stable type.
//!
//! What an entity carries (docs/architecture.md §1): its type and native id (together, its key), a
//! category, a name, a state, a project, typed relations to other entities' keys, the
//! source's own update timestamp, and the remaining properties as a JSON object. The time
//! it was sampled, the action and the plugin instance it came from are added by the host,
//! in the change notification that carries the entity.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use abi_stable::StableAbi;
use abi_stable::std_types::{ROption, RString, RVec};

/// Whether an entity is a resource (an instance, a host, a switch) or an alarm about one.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// Something that exists: an instance, a host, a stack, a rack.
    Resource,
    /// Something wrong with a resource: a Nagios service not in OK, say.
    Alarm,
}

impl Category {
    /// The lower-case name used in JSON output: `resource` or `alarm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Resource => "resource",
            Category::Alarm => "alarm",
        }
    }
}

/// Which way a relation points, seen from the entity that carries it.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `this --kind--> other`: an alarm is `on` its resource.
    Outgoing,
    /// `other --kind--> this`: a host `contains` this instance.
    Incoming,
}

impl Direction {
    /// `out` or `in`, as in the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outgoing => "out",
            Direction::Incoming => "in",
        }
    }
}

/// A typed edge from the entity that carries it to another entity's key.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Relation {
    kind: RString,
    other: RString,
    direction: Direction,
}

impl Relation {
    /// `this --kind--> other` (for example an alarm `on` a host).
    pub fn to(kind: &str, other_key: impl Into<String>) -> Self {
        Relation {
            kind: kind.into(),
            other: RString::from(other_key.into()),
            direction: Direction::Outgoing,
        }
    }

    /// `other --kind--> this` (for example a zone that `contains` this host).
    pub fn from(kind: &str, other_key: impl Into<String>) -> Self {
        Relation {
            kind: kind.into(),
            other: RString::from(other_key.into()),
            direction: Direction::Incoming,
        }
    }

    /// The relation's kind: `contains`, `comprises`, `on`, ...
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The key of the entity at the other end.
    pub fn other(&self) -> &str {
        &self.other
    }

    /// Which way the edge points.
    pub fn direction(&self) -> Direction {
        self.direction
    }
}

/// A relation target named by a property instead of a key: `<type>[<property>=<value>]`
/// in a [`Relation`]'s `other` (`nova.instance[name=vm-a1]`), for a source that knows a
/// property of the entity it is about but not its key (an alarm's label). The host
/// resolves it to the key of the entity of that type whose property has that value, when
/// there is one, and again whenever one appears, changes or goes: consumers see the key
/// while the target exists and this text while it does not (docs/architecture.md §6).
///
/// The property is a top-level property of the target (a string, a number, a boolean, or
/// an array of them, any element matching) or, when it has no such property, one of its
/// fields `name`, `id`, `state` or `project`. The type holds no `:`, `[` or `]` and the
/// property no `=`, `[` or `]` (so that no key `<type>:<id>` reads as a selector); the value
/// is taken as it is, up to the final `]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Selector<'a> {
    /// The target's type: `nova.instance`.
    pub entity_type: &'a str,
    /// The property that identifies it: `name`.
    pub property: &'a str,
    /// Its value: `vm-a1`.
    pub value: &'a str,
}

impl<'a> Selector<'a> {
    /// A selector, if `entity_type` and `property` can be written as one.
    pub fn new(entity_type: &'a str, property: &'a str, value: &'a str) -> Option<Self> {
        let type_ok = !entity_type.is_empty() && !entity_type.contains([':', '[', ']']);
        let property_ok = !property.is_empty() && !property.contains(['=', '[', ']']);
        (type_ok && property_ok).then_some(Selector {
            entity_type,
            property,
            value,
        })
    }

    /// Reads a relation's `other` as a selector; `None` for a key (or anything else).
    pub fn parse(other: &'a str) -> Option<Self> {
        let inner = other.strip_suffix(']')?;
        let (entity_type, rest) = inner.split_once('[')?;
        let (property, value) = rest.split_once('=')?;
        Selector::new(entity_type, property, value)
    }

    /// The text a relation carries: `<type>[<property>=<value>]`.
    pub fn text(&self) -> String {
        format!("{}[{}={}]", self.entity_type, self.property, self.value)
    }
}

impl Relation {
    /// `this --kind--> <the entity target names>` (an alarm `on` the instance whose `name`
    /// is `vm-a1`); the host resolves it to a key.
    pub fn to_selected(kind: &str, target: &Selector<'_>) -> Self {
        Relation::to(kind, target.text())
    }

    /// The target as a [`Selector`], when this relation names it by a property.
    pub fn selector(&self) -> Option<Selector<'_>> {
        Selector::parse(&self.other)
    }
}

/// One resource or alarm. Build it with [`Entity::resource`] or [`Entity::alarm`] and the
/// `with_*` methods.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct Entity {
    entity_type: RString,
    id: RString,
    category: Category,
    name: RString,
    state: ROption<RString>,
    project: ROption<RString>,
    relations: RVec<Relation>,
    source_updated_us: ROption<i64>,
    properties: RString,
}

impl Entity {
    /// A new entity of the given category, type (`nova.instance`) and native id.
    pub fn new(category: Category, entity_type: &str, id: &str) -> Self {
        Entity {
            entity_type: entity_type.into(),
            id: id.into(),
            category,
            name: RString::new(),
            state: ROption::RNone,
            project: ROption::RNone,
            relations: RVec::new(),
            source_updated_us: ROption::RNone,
            properties: RString::new(),
        }
    }

    /// A new resource entity.
    pub fn resource(entity_type: &str, id: &str) -> Self {
        Self::new(Category::Resource, entity_type, id)
    }

    /// A new alarm entity.
    pub fn alarm(entity_type: &str, id: &str) -> Self {
        Self::new(Category::Alarm, entity_type, id)
    }

    /// Sets the human-readable name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = RString::from(name.into());
        self
    }

    /// Sets the state as the source reports it (`ACTIVE`, `CREATE_FAILED`, `WARNING`).
    pub fn with_state(mut self, state: impl Into<String>) -> Self {
        self.state = ROption::RSome(RString::from(state.into()));
        self
    }

    /// Sets the project (tenant) the entity belongs to.
    pub fn with_project(mut self, project: impl Into<String>) -> Self {
        self.project = ROption::RSome(RString::from(project.into()));
        self
    }

    /// Adds a relation.
    pub fn with_relation(mut self, relation: Relation) -> Self {
        self.relations.push(relation);
        self
    }

    /// Sets the source's own update timestamp. The baseline drops data older than what it
    /// already holds for the key, so set it whenever the source has one.
    ///
    /// The host accepts RFC 3339's range, years 1 to 9999 ([`crate::time::in_range`]): it
    /// discards a timestamp outside it (counted and logged) and uses its own sample time
    /// instead.
    pub fn with_source_updated(mut self, at: SystemTime) -> Self {
        self.source_updated_us = ROption::RSome(system_time_to_micros(at));
        self
    }

    /// Sets the source update timestamp in microseconds since the Unix epoch (negative
    /// before 1970). Any `i64` is stored; the host discards one outside
    /// [`crate::time::MIN_MICROS`] ..= [`crate::time::MAX_MICROS`], as
    /// [`Entity::with_source_updated`] says.
    pub fn with_source_updated_micros(mut self, micros: i64) -> Self {
        self.source_updated_us = ROption::RSome(micros);
        self
    }

    /// Removes the source update timestamp (the host does, for one outside the accepted
    /// range; the time it sampled the entity then stands in).
    pub fn clear_source_updated(&mut self) {
        self.source_updated_us = ROption::RNone;
    }

    /// Sets the remaining properties. A JSON object is kept as it is; any other value is
    /// stored as `{"value": ...}` so that properties are always an object.
    ///
    /// A `Value` cannot hold a number JSON readers cannot read back (serde_json refuses
    /// NaN and infinities when building one). One nested deeper than JSON readers go
    /// ([`MAX_PROPERTIES_DEPTH`] levels) is stored as
    /// `{"value": "<its JSON text>"}`, a string, so that the properties stay readable.
    pub fn with_properties(mut self, properties: serde_json::Value) -> Self {
        let object = match properties {
            serde_json::Value::Object(map) if map.is_empty() => {
                // Stored as no properties at all, like an entity that never had any.
                self.properties = RString::new();
                return self;
            }
            serde_json::Value::Object(map) => serde_json::Value::Object(map),
            serde_json::Value::Null => {
                self.properties = RString::new();
                return self;
            }
            other => serde_json::json!({ "value": other }),
        };
        let text = if depth(&object) > MAX_PROPERTIES_DEPTH {
            serde_json::json!({ "value": object.to_string() }).to_string()
        } else {
            object.to_string()
        };
        self.properties = RString::from(text);
        self
    }

    /// Sets the properties from JSON object text, kept as it is: no tree is built and
    /// nothing is serialized again, which matters when a plugin already holds the JSON
    /// (a page fragment, a decoded frame).
    ///
    /// The text must be one JSON object that serde_json reads back into a
    /// `serde_json::Value`: numbers within `f64`'s range (`1e400` is refused), strings
    /// without lone surrogate escapes (`"\ud800"`), at most [`MAX_PROPERTIES_DEPTH`]
    /// levels of nesting. Anything else is a [`PropertiesError`] saying why.
    pub fn with_properties_json(mut self, json: String) -> Result<Self, PropertiesError> {
        let trimmed = json.trim_start();
        if !trimmed.starts_with('{') {
            return Err(PropertiesError("properties must be a JSON object".into()));
        }
        // Read as a Value would be, without building one (see `Readable`).
        serde_json::from_str::<Readable>(&json)
            .map_err(|e| PropertiesError(format!("properties are not valid JSON: {e}")))?;
        self.properties = if json == "{}" {
            RString::new()
        } else {
            RString::from(json)
        };
        Ok(self)
    }

    /// Marks properties this entity leaves out because its source does not carry them,
    /// and whose value the host already holds should stay: on a **push** (never in a
    /// snapshot, which is complete by definition), each property named here that the
    /// entity's properties leave out takes the value of the entity the host holds under
    /// the same key, if any; a property the entity does carry, `null` included, is
    /// taken as it is. Call it after the `with_properties*` method: they replace the
    /// marker with the rest.
    ///
    /// Nova's notifications are the case it is for: `instance_name` (the libvirt domain
    /// an alert names) is in `instance.create.end` only, so the bus plugin keeps the value
    /// the collector or the create notification set, and neither source flips it (Vitrage
    /// merges a vertex's properties the same way). The names travel in the properties
    /// under [`KEPT_PROPERTIES_KEY`], which the host removes; the host's merge is
    /// [`Entity::merged_with`].
    pub fn with_kept_properties(mut self, names: &[&str]) -> Self {
        if names.is_empty() {
            return self;
        }
        let list = serde_json::Value::from(names.to_vec());
        if !self.has_kept_properties() {
            // Appended to the text, which is one JSON object: no parse, no copy of the
            // rest (a bus plugin marks every message it maps).
            let text = self.properties_json().trim_end();
            if let Some(inner) = text.strip_suffix('}') {
                let inner = inner.trim_end();
                let sep = if inner.trim_start() == "{" { "" } else { "," };
                self.properties = RString::from(format!("{inner}{sep}{KEPT_MARKER}:{list}}}"));
                return self;
            }
        }
        let mut map = match self.properties() {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        map.insert(KEPT_PROPERTIES_KEY.to_owned(), list);
        self.properties = RString::from(serde_json::Value::Object(map).to_string());
        self
    }

    /// Whether the properties carry the marker of [`Entity::with_kept_properties`] (a
    /// substring test for the key, cheap enough for every push; a nested object with
    /// that key passes it too, and [`Entity::merged_with`] leaves such an entity as it
    /// is).
    pub fn has_kept_properties(&self) -> bool {
        self.properties.contains(KEPT_KEY_TEXT)
    }

    /// This entity without the marker of [`Entity::with_kept_properties`], each property
    /// it names and leaves out taken from `stored` (the entity the host holds under the
    /// same key) when `stored` has it. An entity without the marker comes back as it is.
    /// The properties are written again in serde_json's key order, each value's text as
    /// it was (for the compact text `with_properties` writes, exactly what serializing
    /// the merged object gives).
    pub fn merged_with(&self, stored: Option<&Entity>) -> Entity {
        if !self.has_kept_properties() {
            return self.clone();
        }
        if let Some(text) = merge_raw(self.properties_json(), stored.map(Entity::properties_json)) {
            let mut merged = self.clone();
            merged.properties = if text == "{}" {
                RString::new()
            } else {
                RString::from(text)
            };
            return merged;
        }
        let mut map = match self.properties() {
            serde_json::Value::Object(map) => map,
            _ => return self.clone(),
        };
        let names: Vec<String> = match map.remove(KEPT_PROPERTIES_KEY) {
            Some(serde_json::Value::Array(names)) => names
                .into_iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect(),
            Some(_) => Vec::new(),
            // Only a nested key of that name: nothing to do.
            None => return self.clone(),
        };
        if let Some(serde_json::Value::Object(old)) = stored.map(Entity::properties) {
            for name in names {
                if map.contains_key(&name) {
                    continue;
                }
                if let Some(v) = old.get(&name) {
                    map.insert(name, v.clone());
                }
            }
        }
        let mut merged = self.clone();
        merged.properties = if map.is_empty() {
            RString::new()
        } else {
            RString::from(serde_json::Value::Object(map).to_string())
        };
        merged
    }

    /// The entity type, e.g. `nova.instance`.
    pub fn entity_type(&self) -> &str {
        &self.entity_type
    }

    /// The native id in its source (a UUID for Nova instances).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The unique key: `<type>:<native id>`.
    pub fn key(&self) -> String {
        entity_key(&self.entity_type, &self.id)
    }

    /// Resource or alarm.
    pub fn category(&self) -> Category {
        self.category
    }

    /// The name; empty when the source has none.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state, when the source reports one.
    pub fn state(&self) -> Option<&str> {
        self.state.as_ref().map(|s| s.as_str()).into()
    }

    /// The project, when the entity belongs to one.
    pub fn project(&self) -> Option<&str> {
        self.project.as_ref().map(|s| s.as_str()).into()
    }

    /// The relations to other entities.
    pub fn relations(&self) -> &[Relation] {
        &self.relations
    }

    /// Whether a relation names its target by a property ([`Selector`]).
    pub fn has_selectors(&self) -> bool {
        self.relations.iter().any(|r| r.selector().is_some())
    }

    /// A copy whose relations point where `target` says: `Some(key)` replaces a
    /// relation's `other`, `None` keeps it (the host's resolution of [`Selector`]s).
    pub fn with_targets(&self, mut target: impl FnMut(&Relation) -> Option<String>) -> Entity {
        let mut copy = self.clone();
        for r in copy.relations.iter_mut() {
            if let Some(other) = target(r) {
                r.other = RString::from(other);
            }
        }
        copy
    }

    /// The source's update timestamp, in microseconds since the Unix epoch.
    pub fn source_updated_micros(&self) -> Option<i64> {
        self.source_updated_us.into()
    }

    /// The remaining properties as JSON object text (`{}` when there are none).
    pub fn properties_json(&self) -> &str {
        if self.properties.is_empty() {
            "{}"
        } else {
            &self.properties
        }
    }

    /// The remaining properties, parsed.
    pub fn properties(&self) -> serde_json::Value {
        serde_json::from_str(self.properties_json())
            .unwrap_or_else(|_| serde_json::Value::Object(Default::default()))
    }

    /// A 64-bit hash of the key (`type` and `id`), the baseline's index.
    pub fn key_hash(&self) -> u64 {
        key_hash(&self.entity_type, &self.id)
    }

    /// A 64-bit seahash of everything the entity says, but its key: name, category, state,
    /// project, relations, source timestamp and properties. Two snapshots that report the
    /// same content give the same hash, so the baseline reports no change.
    pub fn content_hash(&self) -> u64 {
        // The fields laid out in one buffer and hashed at once: seahash's streaming
        // hasher is several times slower on pieces this small.
        let str_len = |s: &str| 8 + s.len();
        let opt_len = |s: Option<&str>| s.map_or(1, |s| 1 + str_len(s));
        let len = 1
            + str_len(&self.name)
            + opt_len(self.state())
            + opt_len(self.project())
            + 8
            + self
                .relations
                .iter()
                .map(|r| str_len(&r.kind) + str_len(&r.other) + 1)
                .sum::<usize>()
            // The source timestamp alone does not make a change: a source that bumps it
            // on every read would otherwise report an update for everything on every poll.
            + str_len(self.properties_json());
        with_buffer(len, |b| {
            b.put(&[self.category as u8]);
            b.put_str(&self.name);
            b.put_opt(self.state());
            b.put_opt(self.project());
            b.put(&(self.relations.len() as u64).to_le_bytes());
            for r in self.relations.iter() {
                b.put_str(&r.kind);
                b.put_str(&r.other);
                b.put(&[r.direction as u8]);
            }
            b.put_str(self.properties_json());
        })
    }
}

/// Bytes laid out for one hash.
struct HashBuf<'a>(&'a mut Vec<u8>);

impl HashBuf<'_> {
    fn put(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn put_str(&mut self, s: &str) {
        self.put(&(s.len() as u64).to_le_bytes());
        self.put(s.as_bytes());
    }
    fn put_opt(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.put(&[1]);
                self.put_str(s);
            }
            None => self.put(&[0]),
        }
    }
}

thread_local! {
    /// A scratch buffer per thread for [`with_buffer`], kept between hashes so that
    /// hashing allocates nothing (a cache: it holds no state anyone reads).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The seahash of the `len` bytes that `fill` lays out.
fn with_buffer(len: usize, fill: impl FnOnce(&mut HashBuf<'_>)) -> u64 {
    let hash = |buf: &mut Vec<u8>| {
        buf.clear();
        buf.reserve(len);
        fill(&mut HashBuf(buf));
        seahash::hash(buf)
    };
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buf) => {
            let h = hash(&mut buf);
            // A rare huge entity does not keep its buffer.
            if buf.capacity() > 1 << 16 {
                *buf = Vec::new();
            }
            h
        }
        // Only if `fill` hashed again on this thread.
        Err(_) => hash(&mut Vec::new()),
    })
}

/// The deepest nesting of arrays and objects in properties (the properties object
/// itself is level 1). JSON readers stop at some depth (serde_json at 128 levels), and
/// the host's outputs nest the properties inside a change, a snapshot or a page of
/// entities: the room left keeps every output readable.
pub const MAX_PROPERTIES_DEPTH: usize = 100;

/// [`Entity::merged_with`] without building a tree: the objects read as key → raw value
/// text (borrowed), merged, written again in key order. `None` when a key has escapes
/// or the marker is not a list of plain strings: the caller then goes through
/// `serde_json::Value`.
fn merge_raw(own: &str, stored: Option<&str>) -> Option<String> {
    use serde_json::value::RawValue;
    use std::collections::BTreeMap;
    let mut map: BTreeMap<&str, &RawValue> = serde_json::from_str(own).ok()?;
    let marker = map.remove(KEPT_PROPERTIES_KEY)?;
    let names: Vec<&str> = serde_json::from_str(marker.get()).ok()?;
    let old: BTreeMap<&str, &RawValue> = match stored {
        Some(text) => serde_json::from_str(text).ok()?,
        None => BTreeMap::new(),
    };
    for name in names {
        if !map.contains_key(name)
            && let Some((k, v)) = old.get_key_value(name)
        {
            map.insert(k, v);
        }
    }
    let mut out = String::with_capacity(own.len() + 32);
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(k);
        out.push_str("\":");
        out.push_str(v.get());
    }
    out.push('}');
    Some(out)
}

/// The property under which [`Entity::with_kept_properties`] sends its names; the host
/// removes it. A property of this name means nothing else.
pub const KEPT_PROPERTIES_KEY: &str = "synchronizer:keep";

/// [`KEPT_PROPERTIES_KEY`] as it appears in the properties' JSON text.
const KEPT_MARKER: &str = "\"synchronizer:keep\"";

/// The marker as a key: followed by its colon, which no string value's text can be (a
/// quote inside a value is escaped).
const KEPT_KEY_TEXT: &str = "\"synchronizer:keep\":";

/// How deeply `v` nests arrays and objects (a scalar is 0, `{}` is 1); iterative, so any
/// depth is measured without recursion.
fn depth(v: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            serde_json::Value::Array(items) => {
                deepest = deepest.max(d);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            serde_json::Value::Object(map) => {
                deepest = deepest.max(d);
                stack.extend(map.values().map(|i| (i, d + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// JSON read exactly as `serde_json::Value` reads it (every number parsed, so one out
/// of `f64`'s range is an error; strings unescaped and checked; serde_json's recursion
/// limit), while nothing is kept: no tree, no strings. The top level must be an object.
struct Readable;

impl<'de> serde::Deserialize<'de> for Readable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ReadVisitor {
            object_only: true,
            depth: 1,
        })?;
        Ok(Readable)
    }
}

/// Any JSON value at nesting level `.0`, read as [`Readable`] reads it.
struct AnyValue(usize);

impl<'de> serde::de::DeserializeSeed<'de> for AnyValue {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(ReadVisitor {
            object_only: false,
            depth: self.0,
        })
    }
}

struct ReadVisitor {
    object_only: bool,
    /// The nesting level of what is read (the properties object is 1).
    depth: usize,
}

impl ReadVisitor {
    /// An array or object at this level: refused past [`MAX_PROPERTIES_DEPTH`].
    fn nest<E: serde::de::Error>(&self) -> Result<(), E> {
        if self.depth > MAX_PROPERTIES_DEPTH {
            Err(E::custom(format_args!(
                "nested deeper than {MAX_PROPERTIES_DEPTH} levels"
            )))
        } else {
            Ok(())
        }
    }

    fn scalar<E: serde::de::Error>(&self, unexpected: serde::de::Unexpected<'_>) -> Result<(), E> {
        if self.object_only {
            Err(E::invalid_type(unexpected, self))
        } else {
            Ok(())
        }
    }
}

impl<'de> serde::de::Visitor<'de> for ReadVisitor {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.object_only {
            "a JSON object"
        } else {
            "a JSON value"
        })
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(serde::de::Unexpected::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(serde::de::Unexpected::Signed(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(serde::de::Unexpected::Unsigned(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.scalar(serde::de::Unexpected::Float(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(serde::de::Unexpected::Str(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.scalar(serde::de::Unexpected::Unit)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.object_only {
            return Err(serde::de::Error::invalid_type(
                serde::de::Unexpected::Seq,
                &self,
            ));
        }
        self.nest()?;
        while seq.next_element_seed(AnyValue(self.depth + 1))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.nest()?;
        while map
            .next_entry_seed(AnyValue(self.depth + 1), AnyValue(self.depth + 1))?
            .is_some()
        {}
        Ok(())
    }
}

/// Properties text that is not one JSON object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropertiesError(String);

impl std::fmt::Display for PropertiesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PropertiesError {}

/// The key of an entity of type `entity_type` with native id `id`: `<type>:<id>`.
pub fn entity_key(entity_type: &str, id: &str) -> String {
    let mut key = String::with_capacity(entity_type.len() + 1 + id.len());
    key.push_str(entity_type);
    key.push(':');
    key.push_str(id);
    key
}

/// The 64-bit hash of the key `<type>:<id>`, computed without building the key string.
pub fn key_hash(entity_type: &str, id: &str) -> u64 {
    with_buffer(entity_type.len() + 1 + id.len(), |b| {
        b.put(entity_type.as_bytes());
        b.put(b":");
        b.put(id.as_bytes());
    })
}

/// Microseconds since the Unix epoch (negative before it).
pub fn system_time_to_micros(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// The inverse of [`system_time_to_micros`].
pub fn micros_to_system_time(micros: i64) -> SystemTime {
    if micros >= 0 {
        UNIX_EPOCH + Duration::from_micros(micros.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_ignores_key_and_timestamp_but_sees_everything_else() {
        let a = Entity::resource("switch", "s1")
            .with_name("s1")
            .with_state("up")
            .with_relation(Relation::from("contains", "rack:r1"))
            .with_properties(serde_json::json!({"ports": 48}));
        let renamed_key = Entity {
            id: "s2".into(),
            ..a.clone()
        };
        assert_eq!(a.content_hash(), renamed_key.content_hash());
        let later = a.clone().with_source_updated_micros(5);
        assert_eq!(a.content_hash(), later.content_hash());

        for changed in [
            a.clone().with_state("down"),
            a.clone().with_name("other"),
            a.clone().with_project("p"),
            a.clone().with_relation(Relation::to("on", "x:y")),
            a.clone().with_properties(serde_json::json!({"ports": 24})),
            Entity {
                category: Category::Alarm,
                ..a.clone()
            },
        ] {
            assert_ne!(a.content_hash(), changed.content_hash(), "{changed:?}");
        }
    }

    #[test]
    fn selectors_read_back_and_keys_are_never_selectors() {
        let s = Selector::new("nova.instance", "name", "vm-a1").unwrap();
        assert_eq!(s.text(), "nova.instance[name=vm-a1]");
        assert_eq!(Selector::parse(&s.text()), Some(s));
        let odd = Selector::parse("nova.host[ip=a=b]]").unwrap();
        assert_eq!((odd.property, odd.value), ("ip", "a=b]"));
        for not in [
            "nova.instance:abc",
            "t:x[a=b]",
            "t[a]",
            "[a=b]",
            "t[=b]",
            "t[a=b",
        ] {
            assert_eq!(Selector::parse(not), None, "{not}");
        }
        assert_eq!(Selector::new("t:x", "a", "b"), None);
        assert_eq!(Selector::new("t", "a=", "b"), None);
        let e = Entity::alarm("alarm", "1")
            .with_relation(Relation::to_selected("on", &s))
            .with_relation(Relation::from("contains", "rack:r1"));
        assert!(e.has_selectors());
        let resolved = e.with_targets(|r| r.selector().map(|_| "nova.instance:u1".into()));
        assert!(!resolved.has_selectors());
        assert_eq!(resolved.relations()[0].other(), "nova.instance:u1");
        assert_eq!(resolved.relations()[1].other(), "rack:r1");
    }

    #[test]
    fn key_hash_matches_the_key_string() {
        let e = Entity::resource("nova.instance", "abc");
        assert_eq!(e.key(), "nova.instance:abc");
        assert_eq!(e.key_hash(), seahash::hash(b"nova.instance:abc"));
    }

    #[test]
    fn properties_are_always_an_object() {
        let e = Entity::resource("t", "i").with_properties(serde_json::json!(3));
        assert_eq!(e.properties(), serde_json::json!({"value": 3}));
        assert_eq!(Entity::resource("t", "i").properties_json(), "{}");
    }

    #[test]
    fn properties_json_is_kept_as_it_is_and_checked() {
        let e = Entity::resource("t", "i")
            .with_properties_json(r#"{"b": 1, "a": [true]}"#.to_owned())
            .unwrap();
        assert_eq!(e.properties_json(), r#"{"b": 1, "a": [true]}"#);
        assert_eq!(e.properties()["a"][0], true);
        assert!(
            Entity::resource("t", "i")
                .with_properties_json("[1]".into())
                .is_err()
        );
        assert!(
            Entity::resource("t", "i")
                .with_properties_json("{\"a\":".into())
                .is_err()
        );
    }

    #[test]
    fn properties_json_is_refused_unless_a_value_can_read_it_back() {
        let refused = |json: &str| {
            let err = Entity::resource("t", "i")
                .with_properties_json(json.to_owned())
                .expect_err(json);
            err.to_string()
        };
        // A number past f64's range (the issue's `{"n":1e400}`), as an exponent or digits.
        assert!(refused(r#"{"n":1e400}"#).contains("number out of range"));
        assert!(refused(&format!("{{\"n\":{}}}", "9".repeat(400))).contains("out of range"));
        assert!(refused(r#"{"n":[-1e309]}"#).contains("out of range"));
        // A lone surrogate, in a value and in a key.
        assert!(refused(r#"{"s":"\ud800"}"#).contains("hex escape"));
        assert!(refused(r#"{"\udfff":1}"#).contains("surrogate"));
        // Deeper than the outputs can nest and JSON readers still read back.
        let nested = |levels: usize| {
            format!(
                "{{\"a\":{}{}}}",
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        assert!(refused(&nested(MAX_PROPERTIES_DEPTH + 1)).contains("nested deeper than 100"));
        assert!(refused(&nested(5_000)).contains("nested deeper than 100"));
        let deepest = nested(MAX_PROPERTIES_DEPTH);
        // Room for the outputs' own levels under serde_json's limit of 128.
        let wrapped = format!("{}{deepest}{}", "[".repeat(20), "]".repeat(20));
        assert!(serde_json::from_str::<serde_json::Value>(&wrapped).is_ok());
        let e = Entity::resource("t", "i")
            .with_properties_json(deepest.clone())
            .unwrap();
        assert_eq!(e.properties_json(), deepest);
        // Not an object, or not one value.
        assert_eq!(refused("[1]"), "properties must be a JSON object");
        assert!(refused(" {} 1").contains("trailing"));
        assert!(refused("{\"a\":1,}").contains("not valid JSON"));
        // What a Value reads is accepted, kept byte for byte.
        for ok in [
            r#"{"n":1.7976931348623157e308,"m":-0,"i":18446744073709551615,"j":-9223372036854775808}"#,
            r#"{"s":"\ud83d\ude00 \u00e9 \n","":null,"a":[{},[],true,false]}"#,
            " \n{ } ",
        ] {
            let e = Entity::resource("t", "i")
                .with_properties_json(ok.to_owned())
                .unwrap();
            assert_eq!(e.properties_json(), ok);
        }
    }

    #[test]
    fn with_properties_keeps_what_json_readers_read_back() {
        // Non-finite floats never reach a Value: serde_json turns them into null.
        let e = Entity::resource("t", "i").with_properties(serde_json::json!({
            "inf": f64::INFINITY,
            "nan": f64::NAN
        }));
        assert_eq!(e.properties_json(), r#"{"inf":null,"nan":null}"#);
        assert!(serde_json::Number::from_f64(f64::INFINITY).is_none());
        // Nesting past what readers accept becomes a string of the same JSON text.
        let mut deep = serde_json::json!(1);
        for _ in 0..MAX_PROPERTIES_DEPTH {
            deep = serde_json::json!([deep]);
        }
        let text = deep.to_string();
        let e = Entity::resource("t", "i").with_properties(serde_json::json!({ "d": deep }));
        assert_eq!(
            e.properties()["value"],
            serde_json::json!(format!("{{\"d\":{text}}}"))
        );
        assert!(serde_json::from_str::<serde_json::Value>(e.properties_json()).is_ok());
        // At the limit it is kept as it is.
        let mut at_limit = serde_json::json!(1);
        for _ in 0..MAX_PROPERTIES_DEPTH - 1 {
            at_limit = serde_json::json!([at_limit]);
        }
        let e = Entity::resource("t", "i").with_properties(serde_json::json!({ "d": at_limit }));
        assert_eq!(e.properties()["d"], at_limit);
        // `{}` and null are no properties at all, whichever builder set them.
        let bare = Entity::resource("t", "i");
        assert_eq!(bare.clone().with_properties(serde_json::json!({})), bare);
        assert_eq!(bare.clone().with_properties(serde_json::Value::Null), bare);
        assert_eq!(
            bare.clone().with_properties_json("{}".into()).unwrap(),
            bare
        );
    }

    proptest::proptest! {
        /// with_properties_json accepts exactly the objects serde_json reads into a Value.
        #[test]
        fn properties_json_accepts_what_a_value_reads(
            json in "[ {}\\[\\]\":,0-9eE.+\\-a-z\\\\]{0,40}"
        ) {
            let value = serde_json::from_str::<serde_json::Value>(&json);
            let expected = json.trim_start().starts_with('{') && value.is_ok_and(|v| v.is_object());
            let got = Entity::resource("t", "i").with_properties_json(json.clone());
            proptest::prop_assert_eq!(got.is_ok(), expected, "{}", json);
        }
    }

    #[test]
    fn the_source_timestamp_can_be_cleared() {
        let mut e = Entity::resource("t", "i").with_source_updated_micros(i64::MIN);
        e.clear_source_updated();
        assert_eq!(e.source_updated_micros(), None);
        assert_eq!(e, Entity::resource("t", "i"));
    }

    #[test]
    fn timestamps_round_trip() {
        let t = UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456);
        assert_eq!(micros_to_system_time(system_time_to_micros(t)), t);
    }

    #[test]
    fn kept_properties_come_from_the_stored_entity_only_when_left_out() {
        let stored = Entity::resource("nova.instance", "u").with_properties(serde_json::json!({
            "instance_name": "instance-00000001",
            "task_state": "spawning",
            "gone": 1,
        }));
        let pushed = Entity::resource("nova.instance", "u")
            .with_properties(serde_json::json!({"task_state": null, "vm_state": "active"}))
            .with_kept_properties(&["instance_name", "other"]);
        assert!(pushed.has_kept_properties());
        let merged = pushed.merged_with(Some(&stored));
        assert!(!merged.has_kept_properties());
        // Kept: instance_name; carried (null included) wins; not named: not taken.
        assert_eq!(
            merged.properties_json(),
            r#"{"instance_name":"instance-00000001","task_state":null,"vm_state":"active"}"#
        );
        // Nothing stored: the marker goes, nothing else changes.
        let alone = pushed.merged_with(None);
        assert_eq!(
            alone.properties_json(),
            r#"{"task_state":null,"vm_state":"active"}"#
        );
        // The same content as a collector's entity with the value: the same hash.
        let full = Entity::resource("nova.instance", "u").with_properties(serde_json::json!({
            "vm_state": "active", "task_state": null, "instance_name": "instance-00000001",
        }));
        assert_eq!(merged.content_hash(), full.content_hash());
        // An entity without the marker is untouched.
        assert_eq!(full.merged_with(Some(&stored)), full);
        // A carried value is not replaced.
        let carried = Entity::resource("nova.instance", "u")
            .with_properties(serde_json::json!({"instance_name": "instance-2"}))
            .with_kept_properties(&["instance_name"]);
        assert_eq!(
            carried.merged_with(Some(&stored)).properties_json(),
            r#"{"instance_name":"instance-2"}"#
        );
    }

    #[test]
    fn the_raw_merge_writes_what_the_tree_would() {
        let stored = Entity::resource("t", "u").with_properties(serde_json::json!({
            "instance_name": "instance-0000000a", "b": {"x": [1, 2.5, "é\"q"]}, "z": null,
        }));
        for pushed in [
            serde_json::json!({}),
            serde_json::json!({"a": 1}),
            serde_json::json!({"b": {"y": true}, "vm_state": "active", "n": -3e-7}),
            serde_json::json!({"instance_name": null}),
        ] {
            let e = Entity::resource("t", "u")
                .with_properties(pushed.clone())
                .with_kept_properties(&["instance_name", "z"]);
            assert!(e.has_kept_properties(), "{pushed}");
            for held in [None, Some(&stored)] {
                let fast = e.merged_with(held);
                // What serializing the merged object gives.
                let mut want = pushed.as_object().cloned().unwrap_or_default();
                if let Some(held) = held {
                    for k in ["instance_name", "z"] {
                        if !want.contains_key(k) {
                            want.insert(k.into(), held.properties()[k].clone());
                        }
                    }
                }
                let want =
                    Entity::resource("t", "u").with_properties(serde_json::Value::Object(want));
                assert_eq!(
                    fast.properties_json(),
                    want.properties_json(),
                    "{pushed} {held:?}"
                );
                assert_eq!(fast.content_hash(), want.content_hash());
            }
        }
        // A key with an escape goes through the tree, with the same result.
        let odd = Entity::resource("t", "u")
            .with_properties(serde_json::json!({"a\"b": 1}))
            .with_kept_properties(&["instance_name"]);
        assert_eq!(
            odd.merged_with(Some(&stored)).properties_json(),
            r#"{"a\"b":1,"instance_name":"instance-0000000a"}"#
        );
        // Marking twice keeps one marker.
        let twice = Entity::resource("t", "u")
            .with_properties(serde_json::json!({"a": 1}))
            .with_kept_properties(&["x"])
            .with_kept_properties(&["instance_name"]);
        assert_eq!(
            twice.properties_json().matches("synchronizer:keep").count(),
            1
        );
        assert_eq!(
            twice.merged_with(Some(&stored)).properties_json(),
            r#"{"a":1,"instance_name":"instance-0000000a"}"#
        );
    }
}
