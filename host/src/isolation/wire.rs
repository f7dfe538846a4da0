//! The framing and encoding between the host and a plugin child process.
//!
//! Every message is one frame: a little-endian `u32` length `N`, then `N` bytes: a `u8`
//! tag, a little-endian `u64` call id (0 when the message answers nothing), and the
//! tag's payload. Strings are a `u32` length and UTF-8 bytes; an optional value is a
//! `u8` 0/1 and the value; integers are little-endian. An [`Entity`] is written field by
//! field through its accessors (type, id, category, name, state, project, relations,
//! source timestamp, properties text) and rebuilt on the other side with its `with_*`
//! builders: no JSON on the hot path (the properties are JSON text already and cross as
//! they are). A large snapshot is streamed: `SnapshotPart` frames of 1,000 entities, then
//! the `Snapshot` frame with the rest, so that the host decodes parts (several at once)
//! while the child encodes and writes the next. `docs/isolation.md` lists every message.
//!
//! Written by hand rather than with serde derives and postcard: that was built and
//! measured (issue 13; branch `iso-codec-postcard`) and cost 11–20% more in the
//! process-mode benchmark, its decoding of entities alone about 2.5 times as long
//! (`docs/isolation.md`, "Why the codec is written by hand").
//!
//! Everything read from the child is untrusted: every length is checked against the
//! bytes that remain before anything is allocated, frames larger than [`MAX_FRAME`] are
//! refused, and any malformed frame is a [`WireError`] (the host then kills the child
//! with the cause "protocol error").

use abi_stable::std_types::{RString, RVec};
use synchronizer_plugin_api::abi::{
    FfiError, FfiIncomplete, FfiPushed, FfiSnapshot, LogLevel, PushAction,
};
use synchronizer_plugin_api::{
    Category, Direction, Entity, ErrorKind, Health, PluginKind, Relation,
};

/// The largest frame either side accepts (256 MiB).
pub const MAX_FRAME: usize = 256 << 20;

// ---- the smallest encoding of each repeated item ----
//
// `Reader::count` refuses a count whose items could not fit in the bytes that remain,
// before anything is allocated. The bound must be the real minimum, or a valid frame of
// small items is refused (a minimal entity is 24 bytes; a bound of 30 once made the host
// kill a child that sent a part of small entities). Each constant follows the layout the
// `FrameWriter` methods write, field by field, with every string empty and every option
// absent; the tests encode such minimal items and check the sizes.

/// `u8`: a tag, a flag, an enum.
const U8: usize = 1;
/// `u32`: a count, a string's length.
const U32: usize = 4;
/// `u64`: an id, a value, a timestamp.
const U64: usize = 8;
/// An empty string: its `u32` length.
const MIN_STR: usize = U32;
/// An absent option: its `u8` 0.
const MIN_NONE: usize = U8;

/// A relation (`FrameWriter::entity`): kind, other key, `u8` direction = 4 + 4 + 1 = 9.
const MIN_RELATION: usize = MIN_STR + MIN_STR + U8;
/// An entity (`FrameWriter::entity`): type, id, `u8` category, name, state (none),
/// project (none), `u32` relation count (0), source timestamp (none), properties (empty
/// for `{}`) = 4 + 4 + 1 + 4 + 1 + 1 + 4 + 1 + 4 = 24.
const MIN_ENTITY: usize =
    MIN_STR + MIN_STR + U8 + MIN_STR + MIN_NONE + MIN_NONE + U32 + MIN_NONE + MIN_STR;
/// A pushed change (`encode_push`): `u8` action, entity = 1 + 24 = 25.
const MIN_PUSHED: usize = U8 + MIN_ENTITY;
/// An incomplete type (`encode_snapshot_tail`): type, reason = 4 + 4 = 8.
const MIN_INCOMPLETE: usize = MIN_STR + MIN_STR;
/// A counter (`Pong`): name, `u64` value = 4 + 8 = 12.
const MIN_COUNTER: usize = MIN_STR + U64;
/// An entity type or a requested type (`Ready`, `Snapshot`): one string = 4.
const MIN_TYPE: usize = MIN_STR;

/// A malformed frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The frame ended before the field did.
    #[error("truncated frame: {0} needs more bytes than remain")]
    Truncated(&'static str),
    /// An unknown message tag.
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    /// An enum field holds an unknown value.
    #[error("invalid value {value} for {field}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// What was found.
        value: u8,
    },
    /// A string is not UTF-8.
    #[error("a string field is not valid UTF-8")]
    Utf8,
    /// Bytes remain after the message.
    #[error("{0} unexpected bytes after the message")]
    Trailing(usize),
    /// The frame is larger than [`MAX_FRAME`].
    #[error("frame of {0} bytes is larger than the limit")]
    TooLarge(usize),
}

/// A plugin's metadata, as the child reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireMeta {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// Description.
    pub description: String,
    /// Entity types.
    pub entity_types: Vec<String>,
    /// Kind.
    pub kind: PluginKind,
    /// plugin-api version the plugin was built against.
    pub api_version: String,
}

/// Host → child.
#[derive(Debug)]
pub enum ToChild {
    /// First message: what to load and create.
    Init {
        /// The instance's name.
        instance: String,
        /// The library file.
        library: String,
        /// The instance's configuration (JSON text, as the plugin's constructor takes it).
        config_json: String,
        /// Most verbose plugin log level forwarded.
        max_level: LogLevel,
        /// Constructor timeout, milliseconds.
        create_timeout_ms: u64,
        /// Memory limit in bytes (0: none); the child sets `RLIMIT_DATA` to twice it as a
        /// backstop to the host's RSS polling.
        memory_limit: u64,
    },
    /// Collect a snapshot.
    Snapshot {
        /// Call id.
        id: u64,
        /// Types.
        types: Vec<String>,
    },
    /// Drop the call `id` (it passed its timeout) and say whether it left the plugin.
    Cancel {
        /// Call id.
        id: u64,
    },
    /// Start the push loop.
    Run {
        /// Call id.
        id: u64,
    },
    /// The host applied push batch `id`.
    PushAck {
        /// Push id.
        id: u64,
        /// Ok, or why not.
        result: Result<(), FfiError>,
    },
    /// Ask the push loop to stop.
    RequestStop,
    /// Ask for the plugin's health.
    Health {
        /// Call id.
        id: u64,
    },
    /// Heartbeat.
    Ping {
        /// Call id.
        id: u64,
    },
    /// Stop the plugin's runtime and exit.
    Shutdown {
        /// How long the plugin may take.
        timeout_ms: u64,
    },
}

/// Child → host.
#[derive(Debug)]
pub enum FromChild {
    /// The instance was created.
    Ready {
        /// The plugin's metadata.
        meta: WireMeta,
    },
    /// The library did not load or the instance could not be created.
    CreateFailed {
        /// Whether the library itself did not load (as opposed to the constructor).
        load: bool,
        /// Why.
        error: FfiError,
    },
    /// A snapshot's result.
    Snapshot {
        /// Call id.
        id: u64,
        /// The result.
        result: Result<FfiSnapshot, FfiError>,
    },
    /// The first entities of a snapshot's result, ahead of its `Snapshot` frame (a large
    /// snapshot is streamed in parts, so that the host decodes one part while the child
    /// encodes the next).
    SnapshotPart {
        /// Call id.
        id: u64,
        /// The entities, in order.
        entities: Vec<Entity>,
    },
    /// Answer to [`ToChild::Cancel`].
    Cancelled {
        /// Call id.
        id: u64,
        /// True when the plugin's call did not return (a thread is stuck).
        stuck: bool,
    },
    /// A push batch from the bus loop; answered with [`ToChild::PushAck`].
    Push {
        /// Push id.
        id: u64,
        /// The batch.
        batch: Vec<FfiPushed>,
    },
    /// The push loop ended.
    RunEnded {
        /// Call id.
        id: u64,
        /// How.
        result: Result<(), FfiError>,
    },
    /// The plugin's health.
    Health {
        /// Call id.
        id: u64,
        /// Its report.
        result: Result<Health, FfiError>,
    },
    /// Heartbeat answer, with the plugin's counters and calls in flight.
    Pong {
        /// Call id.
        id: u64,
        /// Snapshot calls inside the plugin.
        calls_in_flight: u32,
        /// Its counters.
        counters: Vec<(String, u64)>,
    },
}

// ---- low-level writing ----

/// Builds one frame: reserves the length, then fields are appended.
pub struct FrameWriter {
    buf: Vec<u8>,
}

impl FrameWriter {
    /// A frame with `tag` and `id`.
    pub fn new(tag: u8, id: u64) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&[0; 4]);
        buf.push(tag);
        buf.extend_from_slice(&id.to_le_bytes());
        FrameWriter { buf }
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }

    fn error(&mut self, e: &FfiError) {
        self.u8(error_kind_to_u8(e.kind));
        self.str(&e.message);
    }

    fn unit_result(&mut self, r: &Result<(), FfiError>) {
        match r {
            Ok(()) => self.u8(0),
            Err(e) => {
                self.u8(1);
                self.error(e);
            }
        }
    }

    fn entity(&mut self, e: &Entity) {
        self.str(e.entity_type());
        self.str(e.id());
        self.u8(match e.category() {
            Category::Resource => 0,
            Category::Alarm => 1,
        });
        self.str(e.name());
        self.opt_str(e.state());
        self.opt_str(e.project());
        let rels = e.relations();
        self.len(rels.len());
        for r in rels {
            self.str(r.kind());
            self.str(r.other());
            self.u8(match r.direction() {
                Direction::Outgoing => 0,
                Direction::Incoming => 1,
            });
        }
        match e.source_updated_micros() {
            Some(us) => {
                self.u8(1);
                self.u64(us as u64);
            }
            None => self.u8(0),
        }
        let props = e.properties_json();
        self.str(if props == "{}" { "" } else { props });
    }

    /// The finished frame, length prefix filled in.
    pub fn finish(mut self) -> Vec<u8> {
        let n = u32::try_from(self.buf.len() - 4).unwrap_or(u32::MAX);
        self.buf[..4].copy_from_slice(&n.to_le_bytes());
        self.buf
    }
}

fn error_kind_to_u8(k: ErrorKind) -> u8 {
    match k {
        ErrorKind::Config => 0,
        ErrorKind::Failed => 1,
        ErrorKind::Panicked => 2,
        ErrorKind::Cancelled => 3,
        ErrorKind::Unsupported => 4,
    }
}

fn level_to_u8(l: LogLevel) -> u8 {
    match l {
        LogLevel::Off => 0,
        LogLevel::Error => 1,
        LogLevel::Warn => 2,
        LogLevel::Info => 3,
        LogLevel::Debug => 4,
        LogLevel::Trace => 5,
    }
}

fn kind_to_u8(k: PluginKind) -> u8 {
    match k {
        PluginKind::Collector => 0,
        PluginKind::Bus => 1,
        PluginKind::Both => 2,
    }
}

// ---- low-level reading ----

/// Reads fields from one frame's body (after the length prefix).
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A count of items each at least `min` bytes long (one of the `MIN_*` constants),
    /// checked against what remains.
    fn count(&mut self, min: usize, what: &'static str) -> Result<usize, WireError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min.max(1)) > self.buf.len() {
            return Err(WireError::Truncated(what));
        }
        Ok(n)
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        let n = self.u32(what)? as usize;
        let b = self.take(n, what)?;
        std::str::from_utf8(b).map_err(|_| WireError::Utf8)
    }

    fn string(&mut self, what: &'static str) -> Result<String, WireError> {
        self.str(what).map(str::to_owned)
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(WireError::InvalidValue { field: what, value }),
        }
    }

    fn opt_str(&mut self, what: &'static str) -> Result<Option<&'a str>, WireError> {
        if self.bool(what)? {
            Ok(Some(self.str(what)?))
        } else {
            Ok(None)
        }
    }

    fn error(&mut self) -> Result<FfiError, WireError> {
        let kind = match self.u8("error kind")? {
            0 => ErrorKind::Config,
            1 => ErrorKind::Failed,
            2 => ErrorKind::Panicked,
            3 => ErrorKind::Cancelled,
            4 => ErrorKind::Unsupported,
            value => {
                return Err(WireError::InvalidValue {
                    field: "error kind",
                    value,
                });
            }
        };
        Ok(FfiError {
            kind,
            message: RString::from(self.str("error message")?),
        })
    }

    fn unit_result(&mut self) -> Result<Result<(), FfiError>, WireError> {
        if self.bool("result")? {
            Ok(Err(self.error()?))
        } else {
            Ok(Ok(()))
        }
    }

    fn entity(&mut self) -> Result<Entity, WireError> {
        let entity_type = self.str("entity type")?;
        let id = self.str("entity id")?;
        let category = match self.u8("category")? {
            0 => Category::Resource,
            1 => Category::Alarm,
            value => {
                return Err(WireError::InvalidValue {
                    field: "category",
                    value,
                });
            }
        };
        let mut e = Entity::new(category, entity_type, id);
        let name = self.str("name")?;
        if !name.is_empty() {
            e = e.with_name(name);
        }
        if let Some(s) = self.opt_str("state")? {
            e = e.with_state(s);
        }
        if let Some(p) = self.opt_str("project")? {
            e = e.with_project(p);
        }
        let n = self.count(MIN_RELATION, "relations")?;
        for _ in 0..n {
            let kind = self.str("relation kind")?;
            let other = self.str("relation key")?;
            let r = match self.u8("relation direction")? {
                0 => Relation::to(kind, other),
                1 => Relation::from(kind, other),
                value => {
                    return Err(WireError::InvalidValue {
                        field: "relation direction",
                        value,
                    });
                }
            };
            e = e.with_relation(r);
        }
        if self.bool("source timestamp")? {
            e = e.with_source_updated_micros(self.u64("source timestamp")? as i64);
        }
        let props = self.str("properties")?;
        if !props.is_empty() {
            // Kept as the child sent it: validated, not re-serialized.
            match e.with_properties_json(props.to_owned()) {
                Ok(with) => e = with,
                Err(_) => {
                    return Err(WireError::InvalidValue {
                        field: "properties (not JSON)",
                        value: 0,
                    });
                }
            }
        }
        Ok(e)
    }

    fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.buf.len()))
        }
    }
}

// ---- messages ----

mod tag {
    pub const INIT: u8 = 1;
    pub const SNAPSHOT: u8 = 2;
    pub const CANCEL: u8 = 3;
    pub const RUN: u8 = 4;
    pub const PUSH_ACK: u8 = 5;
    pub const REQUEST_STOP: u8 = 6;
    pub const HEALTH: u8 = 7;
    pub const PING: u8 = 8;
    pub const SHUTDOWN: u8 = 9;

    pub const READY: u8 = 101;
    pub const CREATE_FAILED: u8 = 102;
    pub const SNAPSHOT_RESULT: u8 = 103;
    pub const CANCELLED: u8 = 104;
    pub const PUSH: u8 = 105;
    pub const RUN_ENDED: u8 = 106;
    pub const HEALTH_RESULT: u8 = 107;
    pub const PONG: u8 = 108;
    pub const SNAPSHOT_PART: u8 = 109;
}

fn split_header(body: &[u8]) -> Result<(u8, u64, Reader<'_>), WireError> {
    let mut r = Reader::new(body);
    let tag = r.u8("tag")?;
    let id = r.u64("call id")?;
    Ok((tag, id, r))
}

impl ToChild {
    /// The message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ToChild::Init {
                instance,
                library,
                config_json,
                max_level,
                create_timeout_ms,
                memory_limit,
            } => {
                let mut w = FrameWriter::new(tag::INIT, 0);
                w.str(instance);
                w.str(library);
                w.str(config_json);
                w.u8(level_to_u8(*max_level));
                w.u64(*create_timeout_ms);
                w.u64(*memory_limit);
                w.finish()
            }
            ToChild::Snapshot { id, types } => {
                let mut w = FrameWriter::new(tag::SNAPSHOT, *id);
                w.len(types.len());
                for t in types {
                    w.str(t);
                }
                w.finish()
            }
            ToChild::Cancel { id } => FrameWriter::new(tag::CANCEL, *id).finish(),
            ToChild::Run { id } => FrameWriter::new(tag::RUN, *id).finish(),
            ToChild::PushAck { id, result } => {
                let mut w = FrameWriter::new(tag::PUSH_ACK, *id);
                w.unit_result(result);
                w.finish()
            }
            ToChild::RequestStop => FrameWriter::new(tag::REQUEST_STOP, 0).finish(),
            ToChild::Health { id } => FrameWriter::new(tag::HEALTH, *id).finish(),
            ToChild::Ping { id } => FrameWriter::new(tag::PING, *id).finish(),
            ToChild::Shutdown { timeout_ms } => {
                let mut w = FrameWriter::new(tag::SHUTDOWN, 0);
                w.u64(*timeout_ms);
                w.finish()
            }
        }
    }

    /// Decodes one frame body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<ToChild, WireError> {
        let (t, id, mut r) = split_header(body)?;
        let msg = match t {
            tag::INIT => ToChild::Init {
                instance: r.string("instance")?,
                library: r.string("library")?,
                config_json: r.string("config")?,
                max_level: match r.u8("log level")? {
                    0 => LogLevel::Off,
                    1 => LogLevel::Error,
                    2 => LogLevel::Warn,
                    3 => LogLevel::Info,
                    4 => LogLevel::Debug,
                    5 => LogLevel::Trace,
                    value => {
                        return Err(WireError::InvalidValue {
                            field: "log level",
                            value,
                        });
                    }
                },
                create_timeout_ms: r.u64("create timeout")?,
                memory_limit: r.u64("memory limit")?,
            },
            tag::SNAPSHOT => {
                let n = r.count(MIN_TYPE, "types")?;
                let mut types = Vec::with_capacity(n);
                for _ in 0..n {
                    types.push(r.string("type")?);
                }
                ToChild::Snapshot { id, types }
            }
            tag::CANCEL => ToChild::Cancel { id },
            tag::RUN => ToChild::Run { id },
            tag::PUSH_ACK => ToChild::PushAck {
                id,
                result: r.unit_result()?,
            },
            tag::REQUEST_STOP => ToChild::RequestStop,
            tag::HEALTH => ToChild::Health { id },
            tag::PING => ToChild::Ping { id },
            tag::SHUTDOWN => ToChild::Shutdown {
                timeout_ms: r.u64("timeout")?,
            },
            other => return Err(WireError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

impl FromChild {
    /// The message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            FromChild::Ready { meta } => {
                let mut w = FrameWriter::new(tag::READY, 0);
                w.str(&meta.name);
                w.str(&meta.version);
                w.str(&meta.description);
                w.len(meta.entity_types.len());
                for t in &meta.entity_types {
                    w.str(t);
                }
                w.u8(kind_to_u8(meta.kind));
                w.str(&meta.api_version);
                w.finish()
            }
            FromChild::CreateFailed { load, error } => {
                let mut w = FrameWriter::new(tag::CREATE_FAILED, 0);
                w.u8(u8::from(*load));
                w.error(error);
                w.finish()
            }
            FromChild::Snapshot { id, result } => encode_snapshot(*id, result.as_ref()),
            FromChild::SnapshotPart { id, entities } => encode_snapshot_part(*id, entities),
            FromChild::Cancelled { id, stuck } => {
                let mut w = FrameWriter::new(tag::CANCELLED, *id);
                w.u8(u8::from(*stuck));
                w.finish()
            }
            FromChild::Push { id, batch } => encode_push(*id, batch),
            FromChild::RunEnded { id, result } => {
                let mut w = FrameWriter::new(tag::RUN_ENDED, *id);
                w.unit_result(result);
                w.finish()
            }
            FromChild::Health { id, result } => {
                let mut w = FrameWriter::new(tag::HEALTH_RESULT, *id);
                match result {
                    Ok(health) => {
                        w.u8(0);
                        w.u8(u8::from(health.healthy));
                        w.str(&health.message);
                    }
                    Err(e) => {
                        w.u8(1);
                        w.error(e);
                    }
                }
                w.finish()
            }
            FromChild::Pong {
                id,
                calls_in_flight,
                counters,
            } => {
                let mut w = FrameWriter::new(tag::PONG, *id);
                w.u32(*calls_in_flight);
                w.len(counters.len());
                for (name, value) in counters {
                    w.str(name);
                    w.u64(*value);
                }
                w.finish()
            }
        }
    }

    /// Decodes one frame body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<FromChild, WireError> {
        let (t, id, mut r) = split_header(body)?;
        let msg = match t {
            tag::READY => {
                let name = r.string("name")?;
                let version = r.string("version")?;
                let description = r.string("description")?;
                let n = r.count(MIN_TYPE, "entity types")?;
                let mut entity_types = Vec::with_capacity(n);
                for _ in 0..n {
                    entity_types.push(r.string("entity type")?);
                }
                let kind = match r.u8("kind")? {
                    0 => PluginKind::Collector,
                    1 => PluginKind::Bus,
                    2 => PluginKind::Both,
                    value => {
                        return Err(WireError::InvalidValue {
                            field: "kind",
                            value,
                        });
                    }
                };
                FromChild::Ready {
                    meta: WireMeta {
                        name,
                        version,
                        description,
                        entity_types,
                        kind,
                        api_version: r.string("api version")?,
                    },
                }
            }
            tag::CREATE_FAILED => FromChild::CreateFailed {
                load: r.bool("load")?,
                error: r.error()?,
            },
            tag::SNAPSHOT_RESULT => {
                let result = if r.bool("result")? {
                    Err(r.error()?)
                } else {
                    let n = r.count(MIN_ENTITY, "entities")?;
                    let mut entities = RVec::with_capacity(n);
                    for _ in 0..n {
                        entities.push(r.entity()?);
                    }
                    let n = r.count(MIN_INCOMPLETE, "incomplete")?;
                    let mut incomplete = RVec::with_capacity(n);
                    for _ in 0..n {
                        incomplete.push(FfiIncomplete {
                            entity_type: RString::from(r.str("incomplete type")?),
                            reason: RString::from(r.str("incomplete reason")?),
                        });
                    }
                    Ok(FfiSnapshot {
                        entities,
                        incomplete,
                    })
                };
                FromChild::Snapshot { id, result }
            }
            tag::SNAPSHOT_PART => {
                let n = r.count(MIN_ENTITY, "entities")?;
                let mut entities = Vec::with_capacity(n);
                for _ in 0..n {
                    entities.push(r.entity()?);
                }
                FromChild::SnapshotPart { id, entities }
            }
            tag::CANCELLED => FromChild::Cancelled {
                id,
                stuck: r.bool("stuck")?,
            },
            tag::PUSH => {
                let n = r.count(MIN_PUSHED, "batch")?;
                let mut batch = Vec::with_capacity(n);
                for _ in 0..n {
                    let action = match r.u8("push action")? {
                        0 => PushAction::Upsert,
                        1 => PushAction::Delete,
                        value => {
                            return Err(WireError::InvalidValue {
                                field: "push action",
                                value,
                            });
                        }
                    };
                    batch.push(FfiPushed {
                        action,
                        entity: r.entity()?,
                    });
                }
                FromChild::Push { id, batch }
            }
            tag::RUN_ENDED => FromChild::RunEnded {
                id,
                result: r.unit_result()?,
            },
            tag::HEALTH_RESULT => {
                let result = if r.bool("result")? {
                    Err(r.error()?)
                } else {
                    let healthy = r.bool("healthy")?;
                    Ok(Health {
                        healthy,
                        message: r.string("health message")?,
                    })
                };
                FromChild::Health { id, result }
            }
            tag::PONG => {
                let calls_in_flight = r.u32("calls in flight")?;
                let n = r.count(MIN_COUNTER, "counters")?;
                let mut counters = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = r.string("counter name")?;
                    counters.push((name, r.u64("counter value")?));
                }
                FromChild::Pong {
                    id,
                    calls_in_flight,
                    counters,
                }
            }
            other => return Err(WireError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// Whether a frame body from the child is a `SnapshotPart`, and its call id: the host
/// decodes those off its reader task, several at once.
pub fn snapshot_part_id(body: &[u8]) -> Option<u64> {
    if body.len() >= 9 && body[0] == tag::SNAPSHOT_PART {
        let mut id = [0u8; 8];
        id.copy_from_slice(&body[1..9]);
        Some(u64::from_le_bytes(id))
    } else {
        None
    }
}

/// How many entities a `SnapshotPart` frame body says it holds (its count, read without
/// decoding the entities; the decoder checks it against the bytes).
pub fn snapshot_part_count(body: &[u8]) -> Option<u32> {
    if body.len() >= 13 && body[0] == tag::SNAPSHOT_PART {
        Some(u32::from_le_bytes([body[9], body[10], body[11], body[12]]))
    } else {
        None
    }
}

/// Encodes a snapshot result without taking ownership of it.
pub fn encode_snapshot(id: u64, result: Result<&FfiSnapshot, &FfiError>) -> Vec<u8> {
    match result {
        Ok(s) => encode_snapshot_tail(id, &s.entities, &s.incomplete),
        Err(e) => {
            let mut w = FrameWriter::new(tag::SNAPSHOT_RESULT, id);
            w.u8(1);
            w.error(e);
            w.finish()
        }
    }
}

/// The final `Snapshot` frame of a successful snapshot: its last entities (those not
/// sent in parts) and its incomplete types.
pub fn encode_snapshot_tail(id: u64, entities: &[Entity], incomplete: &[FfiIncomplete]) -> Vec<u8> {
    let mut w = FrameWriter::new(tag::SNAPSHOT_RESULT, id);
    w.u8(0);
    w.buf.reserve(entities.len() * 64);
    w.len(entities.len());
    for e in entities {
        w.entity(e);
    }
    w.len(incomplete.len());
    for i in incomplete {
        w.str(&i.entity_type);
        w.str(&i.reason);
    }
    w.finish()
}

/// A `SnapshotPart` frame.
pub fn encode_snapshot_part(id: u64, entities: &[Entity]) -> Vec<u8> {
    let mut w = FrameWriter::new(tag::SNAPSHOT_PART, id);
    w.buf.reserve(entities.len() * 64);
    w.len(entities.len());
    for e in entities {
        w.entity(e);
    }
    w.finish()
}

/// Encodes a push batch.
pub fn encode_push(id: u64, batch: &[FfiPushed]) -> Vec<u8> {
    let mut w = FrameWriter::new(tag::PUSH, id);
    w.len(batch.len());
    for p in batch {
        w.u8(match p.action {
            PushAction::Upsert => 0,
            PushAction::Delete => 1,
        });
        w.entity(&p.entity);
    }
    w.finish()
}

/// Reads one frame from a synchronous reader: `Ok(None)` at a clean end of stream.
pub fn read_frame_sync(r: &mut impl std::io::Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            WireError::TooLarge(n),
        ));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

/// Reads one frame from an async reader: `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    use tokio::io::AsyncReadExt as _;
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            WireError::TooLarge(n),
        ));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Appends one entity in the wire encoding to `buf`, on its own (the durable store
/// keeps the view so).
#[cfg(feature = "persist")]
pub(crate) fn encode_entity_into(e: &Entity, buf: &mut Vec<u8>) {
    let mut w = FrameWriter {
        buf: std::mem::take(buf),
    };
    w.entity(e);
    *buf = w.buf;
}

/// Reads back what [`encode_entity_into`] wrote; anything else is an error.
#[cfg(feature = "persist")]
pub(crate) fn decode_entity(bytes: &[u8]) -> Result<Entity, WireError> {
    let mut r = Reader::new(bytes);
    let e = r.entity()?;
    r.finish()?;
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        let n = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(n, frame.len() - 4);
        &frame[4..]
    }

    fn sample() -> Entity {
        Entity::alarm("nagios", "h/cpu")
            .with_name("cpu")
            .with_state("WARNING")
            .with_project("p1")
            .with_relation(Relation::to("on", "nova.host:h"))
            .with_relation(Relation::from("contains", "zone:z"))
            .with_source_updated_micros(-5)
            .with_properties(serde_json::json!({"output": "load 9", "n": 1.5}))
    }

    #[test]
    fn a_snapshot_round_trips_entity_for_entity() {
        let snap = FfiSnapshot {
            entities: vec![sample(), Entity::resource("t", "bare")].into(),
            incomplete: vec![FfiIncomplete {
                entity_type: "t".into(),
                reason: "page 3 failed".into(),
            }]
            .into(),
        };
        let frame = encode_snapshot(7, Ok(&snap));
        let FromChild::Snapshot { id, result } = FromChild::decode(body(&frame)).unwrap() else {
            panic!("wrong message")
        };
        assert_eq!(id, 7);
        let got = result.unwrap();
        assert_eq!(got.entities.as_slice(), snap.entities.as_slice());
        assert_eq!(got.entities[0].content_hash(), sample().content_hash());
        assert_eq!(got.incomplete[0].reason.as_str(), "page 3 failed");
    }

    #[test]
    fn push_batches_and_errors_round_trip() {
        let frame = encode_push(
            3,
            &[FfiPushed {
                action: PushAction::Delete,
                entity: sample(),
            }],
        );
        let FromChild::Push { id, batch } = FromChild::decode(body(&frame)).unwrap() else {
            panic!()
        };
        assert_eq!(
            (id, batch.len(), batch[0].action),
            (3, 1, PushAction::Delete)
        );
        let frame = ToChild::PushAck {
            id: 3,
            result: Err(FfiError {
                kind: ErrorKind::Failed,
                message: "no".into(),
            }),
        }
        .encode();
        let ToChild::PushAck { result, .. } = ToChild::decode(body(&frame)).unwrap() else {
            panic!()
        };
        assert_eq!(result.unwrap_err().message.as_str(), "no");
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let frame = encode_snapshot(
            1,
            Ok(&FfiSnapshot {
                entities: vec![sample(); 3].into(),
                incomplete: RVec::new(),
            }),
        );
        let b = body(&frame);
        // Every truncation is an error.
        for cut in 0..b.len() {
            assert!(FromChild::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        // A huge count is refused before allocating.
        let mut huge = b.to_vec();
        huge[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(FromChild::decode(&huge).is_err());
        assert_eq!(
            FromChild::decode(&[250, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err(),
            WireError::UnknownTag(250)
        );
        let mut trailing = b.to_vec();
        trailing.push(0);
        assert_eq!(
            FromChild::decode(&trailing).unwrap_err(),
            WireError::Trailing(1)
        );
    }

    #[test]
    fn snapshot_parts_are_recognised_and_round_trip() {
        let frame = encode_snapshot_part(9, &[sample(), sample()]);
        assert_eq!(snapshot_part_id(body(&frame)), Some(9));
        let FromChild::SnapshotPart { id, entities } = FromChild::decode(body(&frame)).unwrap()
        else {
            panic!()
        };
        assert_eq!((id, entities.len()), (9, 2));
        assert_eq!(entities[1], sample());
        let other = ToChild::Ping { id: 9 }.encode();
        assert_eq!(snapshot_part_id(body(&other)), None);
        assert_eq!(snapshot_part_id(&[]), None);
    }

    /// A frame body's header: the tag and the call id.
    const HEADER: usize = U8 + U64;

    #[test]
    fn the_counted_minimums_are_the_encoders_real_minimums() {
        let bare = Entity::new(Category::Resource, "", "");
        let part = |entities: &[Entity]| encode_snapshot_part(1, entities).len() - 4;
        assert_eq!(part(std::slice::from_ref(&bare)), HEADER + U32 + MIN_ENTITY);
        assert_eq!(MIN_ENTITY, 24);
        let related = bare.clone().with_relation(Relation::to("", ""));
        assert_eq!(part(&[related]), HEADER + U32 + MIN_ENTITY + MIN_RELATION);
        let pushed = encode_push(
            1,
            &[FfiPushed {
                action: PushAction::Upsert,
                entity: bare.clone(),
            }],
        );
        assert_eq!(pushed.len() - 4, HEADER + U32 + MIN_PUSHED);
        let tail = encode_snapshot_tail(
            1,
            &[],
            &[FfiIncomplete {
                entity_type: "".into(),
                reason: "".into(),
            }],
        );
        assert_eq!(tail.len() - 4, HEADER + U8 + U32 + U32 + MIN_INCOMPLETE);
        let pong = FromChild::Pong {
            id: 1,
            calls_in_flight: 0,
            counters: vec![(String::new(), 0)],
        }
        .encode();
        assert_eq!(pong.len() - 4, HEADER + U32 + U32 + MIN_COUNTER);
        let snapshot = ToChild::Snapshot {
            id: 1,
            types: vec![String::new()],
        }
        .encode();
        assert_eq!(snapshot.len() - 4, HEADER + U32 + MIN_TYPE);
    }

    #[test]
    fn a_part_of_minimal_entities_is_accepted() {
        // Each 24 to 27 bytes: the old bound of 30 per entity refused this valid part.
        let entities: Vec<Entity> = (0..1000)
            .map(|i| Entity::resource(if i % 2 == 0 { "" } else { "x" }, &(i % 100).to_string()))
            .collect();
        let frame = encode_snapshot_part(4, &entities);
        assert!(frame.len() - 4 < HEADER + U32 + 30 * entities.len());
        let FromChild::SnapshotPart { id, entities: got } =
            FromChild::decode(body(&frame)).unwrap()
        else {
            panic!("wrong message")
        };
        assert_eq!((id, got), (4, entities.clone()));
        // The same in a final Snapshot frame and in a push batch.
        let snap = FfiSnapshot {
            entities: entities.clone().into(),
            incomplete: RVec::new(),
        };
        let FromChild::Snapshot { result, .. } =
            FromChild::decode(body(&encode_snapshot(4, Ok(&snap)))).unwrap()
        else {
            panic!("wrong message")
        };
        assert_eq!(result.unwrap().entities.as_slice(), entities.as_slice());
        let batch: Vec<FfiPushed> = entities
            .iter()
            .map(|e| FfiPushed {
                action: PushAction::Delete,
                entity: e.clone(),
            })
            .collect();
        let FromChild::Push { batch: got, .. } =
            FromChild::decode(body(&encode_push(5, &batch))).unwrap()
        else {
            panic!("wrong message")
        };
        assert_eq!(got.len(), 1000);
        // One entity fewer than the count says is still refused as truncated.
        let mut short = body(&frame).to_vec();
        short[HEADER..HEADER + 4].copy_from_slice(&1001u32.to_le_bytes());
        assert!(matches!(
            FromChild::decode(&short),
            Err(WireError::Truncated(_))
        ));
    }

    mod round_trip {
        use proptest::prelude::*;

        use super::super::*;
        use super::body;

        fn properties() -> impl Strategy<Value = Option<serde_json::Value>> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<u64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                any::<String>().prop_map(serde_json::Value::from),
            ];
            let tree = leaf.prop_recursive(4, 32, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                    prop::collection::btree_map(any::<String>(), inner, 0..4)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            });
            prop::option::of(tree)
        }

        prop_compose! {
            fn entity()(
                alarm in any::<bool>(),
                entity_type in any::<String>(),
                id in any::<String>(),
                name in any::<String>(),
                state in prop::option::of(any::<String>()),
                project in prop::option::of(any::<String>()),
                relations in prop::collection::vec((any::<String>(), any::<String>(), any::<bool>()), 0..3),
                updated in prop::option::of(any::<i64>()),
                properties in properties(),
                properties_text in prop::option::of(Just(" { \"kept\" : [ 1 , 2.50 ] } ".to_owned())),
            ) -> Entity {
                let category = if alarm { Category::Alarm } else { Category::Resource };
                let mut e = Entity::new(category, &entity_type, &id).with_name(name);
                if let Some(s) = state {
                    e = e.with_state(s);
                }
                if let Some(p) = project {
                    e = e.with_project(p);
                }
                for (kind, other, out) in relations {
                    e = e.with_relation(if out { Relation::to(&kind, other) } else { Relation::from(&kind, other) });
                }
                if let Some(us) = updated {
                    e = e.with_source_updated_micros(us);
                }
                if let Some(p) = properties {
                    e = e.with_properties(p);
                }
                if let Some(text) = properties_text {
                    // Text kept byte for byte, whitespace included.
                    e = e.with_properties_json(text).unwrap_or_else(|err| panic!("{err}"));
                }
                e
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn every_snapshot_part_decodes_to_itself(id in any::<u64>(), entities in prop::collection::vec(entity(), 0..8)) {
                let frame = encode_snapshot_part(id, &entities);
                prop_assert_eq!(snapshot_part_id(body(&frame)), Some(id));
                match FromChild::decode(body(&frame)) {
                    Ok(FromChild::SnapshotPart { id: got_id, entities: got }) => {
                        prop_assert_eq!(got_id, id);
                        prop_assert_eq!(got, entities);
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }

            #[test]
            fn every_snapshot_decodes_to_itself(
                id in any::<u64>(),
                entities in prop::collection::vec(entity(), 0..8),
                incomplete in prop::collection::vec((any::<String>(), any::<String>()), 0..3),
            ) {
                let snap = FfiSnapshot {
                    entities: entities.clone().into(),
                    incomplete: incomplete
                        .iter()
                        .map(|(t, r)| FfiIncomplete { entity_type: t.as_str().into(), reason: r.as_str().into() })
                        .collect(),
                };
                match FromChild::decode(body(&encode_snapshot(id, Ok(&snap)))) {
                    Ok(FromChild::Snapshot { id: got_id, result: Ok(got) }) => {
                        prop_assert_eq!(got_id, id);
                        prop_assert_eq!(got.entities.as_slice(), entities.as_slice());
                        let got_incomplete: Vec<(String, String)> = got
                            .incomplete
                            .iter()
                            .map(|i| (i.entity_type.to_string(), i.reason.to_string()))
                            .collect();
                        prop_assert_eq!(got_incomplete, incomplete);
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }

            #[test]
            fn every_push_batch_decodes_to_itself(
                id in any::<u64>(),
                batch in prop::collection::vec((any::<bool>(), entity()), 0..8),
            ) {
                let batch: Vec<FfiPushed> = batch
                    .into_iter()
                    .map(|(upsert, entity)| FfiPushed {
                        action: if upsert { PushAction::Upsert } else { PushAction::Delete },
                        entity,
                    })
                    .collect();
                match FromChild::decode(body(&encode_push(id, &batch))) {
                    Ok(FromChild::Push { id: got_id, batch: got }) => {
                        prop_assert_eq!(got_id, id);
                        prop_assert_eq!(got.len(), batch.len());
                        for (g, b) in got.iter().zip(&batch) {
                            prop_assert_eq!(g.action, b.action);
                            prop_assert_eq!(&g.entity, &b.entity);
                        }
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }
        }
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut data: &[u8] = &[0xff, 0xff, 0xff, 0x7f];
        let err = read_frame_sync(&mut data).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_frame_one_byte_over_the_limit_is_refused_on_its_length() {
        // Refused on the length alone: nothing is read or reserved for the body.
        let over = (MAX_FRAME as u32 + 1).to_le_bytes();
        let err = read_frame_sync(&mut &over[..]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(
            err.into_inner().map(|e| e.to_string()),
            Some(WireError::TooLarge(MAX_FRAME + 1).to_string())
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt.block_on(read_frame(&mut &over[..])).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        // A frame at the limit is read (here: its body is missing, so it is cut short).
        let small = 16u32.to_le_bytes();
        let err = read_frame_sync(&mut &small[..]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_frame_the_decoder_cannot_read_is_an_error() {
        // Frames the host's framing accepts but no message decodes from.
        for body in [
            &[][..],
            &[tag::SNAPSHOT_RESULT][..],
            &[250, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &[tag::CANCELLED, 1, 0, 0, 0, 0, 0, 0, 0, 2][..],
            &[
                tag::SNAPSHOT_PART,
                1,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                255,
                255,
                255,
                255,
            ][..],
        ] {
            assert!(FromChild::decode(body).is_err(), "{body:?}");
        }
        // Properties that are not JSON.
        let e = Entity::resource("t", "1").with_properties(serde_json::json!({"a": 1}));
        let frame = encode_snapshot_part(1, &[e]);
        let mut b = body(&frame).to_vec();
        let at = b.len() - r#"{"a":1}"#.len();
        b[at] = b'[';
        assert!(FromChild::decode(&b).is_err());
        // A string that is not UTF-8.
        let frame = encode_snapshot_part(1, &[Entity::resource("t", "ab")]);
        let mut b = body(&frame).to_vec();
        // Tag, id, count, type (length and `t`), id (length, then `ab`).
        assert_eq!(&b[22..24], b"ab");
        b[22] = 0xff;
        assert_eq!(FromChild::decode(&b).unwrap_err(), WireError::Utf8);
    }
}
