//! From an AMQP message body to an entity change: pure functions, no I/O.
//!
//! The wire format is oslo.messaging's. The `messagingv2` driver wraps each notification
//! as `{"oslo.version": "2.0", "oslo.message": "<the notification as a JSON string>"}`;
//! the older `messaging` driver sends the notification object itself. Both are accepted.
//! The notification holds `message_id`, `publisher_id`, `event_type`, `priority`,
//! `payload`, `timestamp` (naive UTC, `2026-11-25 02:26:16.207914`), `_unique_id` and
//! `_context_*` keys; the latter are ignored.
//!
//! Event families (each can be switched off, see [`Family`]):
//!
//! | family | event types | entity |
//! |---|---|---|
//! | `nova-versioned` | `instance.*`, payload `{"nova_object.data": {...}}` | `nova.instance` |
//! | `nova-legacy` | `compute.instance.*`, flat payload | `nova.instance` |
//! | `heat` | `orchestration.stack.*` | `heat.stack` |
//! | `cinder` | `volume.*` (Cinder's `_usage_from_volume` payload) | `cinder.volume` |
//! | `neutron` | `network.{create,update,delete}.end`, `port.{create,update,delete}.end` (other `network.*` / `port.*`, such as `*.start`, are ignored) | `neutron.network`, `neutron.port` |
//!
//! A message is a deletion when its event says so or when its payload says the entity is
//! deleted, whatever its event type; every other event of a family is an upsert of the
//! entity as the payload describes it:
//!
//! | family | deletion |
//! |---|---|
//! | `nova-versioned` | `instance.delete.end`, or any `instance.*` whose `state` is `deleted` or `soft-delete` (`instance.update`, `instance.soft_delete.end`, `instance.exists`, ...) |
//! | `nova-legacy` | `compute.instance.delete.end`, or any `compute.instance.*` whose `state` is `deleted` or `soft-delete` |
//! | `heat` | `orchestration.stack.delete.end`, or any `orchestration.stack.*` whose `state` is `DELETE_COMPLETE` |
//! | `cinder` | `volume.delete.end`, or any `volume.*` whose `status` is `deleted` |
//! | `neutron` | `network.delete.end`, `port.delete.end` |
//!
//! The `cinder` and `neutron` families are off by default (add them to `families`, with a
//! subscription to Cinder's exchange, `openstack` by default, and Neutron's, `neutron`);
//! their entities are the shared models of `synchronizer_openstack::{cinder_volume,
//! neutron}`, the same the Cinder and Neutron collectors build.
//!
//! (The shared models' `is_deleted` decide: `nova_instance::DELETED_VM_STATES`,
//! `heat_stack::DELETED_STATUS`.) A real Nova sends such messages after `delete.end`: with
//! `notify_on_state_change` set, the compute's periodic `_run_pending_deletes` (every
//! `[DEFAULT] instance_delete_interval`) saves each deleted instance again, which sends an
//! `instance.update` / `compute.instance.update` with state `deleted`, timestamped after
//! the deletion. As an upsert it would re-create the entity; as a deletion it leaves the
//! baseline's tombstone as it is. Every entity carries the message's `timestamp` as its
//! source timestamp, so the host's baseline drops a message older than what it holds (and
//! a late message about a deleted entity cannot resurrect it).
//!
//! What an entity holds:
//! - `nova.instance`: the shared model of `synchronizer_openstack::nova_instance`, the
//!   same entity the Nova collector builds from `GET /servers/detail`, so that a poll of
//!   the state a notification reported changes nothing. Id = instance uuid (`uuid` /
//!   `instance_id`), name = `display_name`, state = the status Nova's API shows for the
//!   payload's vm state and task state (`ACTIVE`, `BUILD`, `SHUTOFF`, `REBOOT`,
//!   `DELETED`...; `status_from_state` there), project = `tenant_id`, relation
//!   `nova.host:<host> --contains--> this` when the instance has a host, and always the
//!   properties `vm_state`, `task_state` (legacy: `state_description`),
//!   `availability_zone`, `host`, `node`, `flavor` (the flavor's name; legacy:
//!   `instance_type`), `image_id` (versioned `image_uuid`, legacy
//!   `image_meta.base_image_ref`), `user_id`, `created_at` (`2026-11-25T08:37:35Z`) and
//!   `metadata`, `null` when the payload has none. `power_state` is not kept: the legacy
//!   form has none and the API gives it as a number.
//! - `heat.stack`: the shared model of `synchronizer_openstack::heat_stack`, the same
//!   entity the Heat collector builds. Id = `stack_identity` (its last path segment when
//!   Heat sends an ARN), name = `stack_name`, state = `state` (`CREATE_COMPLETE`...),
//!   project = `tenant_id`, and always the properties `stack_status_reason` (from
//!   `state_reason`), `creation_time` (`create_at`), `updated_time` (`updated_at`),
//!   `stack_owner` (`username`) and `tags`. The payload names no resources: the
//!   entity made here has no `comprises` relations. With a `heat` table in the
//!   configuration the consumer adds them from Heat's API before pushing (see
//!   [`crate::heat`]); without it the entity keeps none, and agrees with the collector's
//!   only for stacks without mapped resources.
//!
//! Anything else (`compute.exception`, `scheduler.*`, `compute_task.*`, other services)
//! is [`Interpretation::Ignored`]. A body that is not JSON, lacks `event_type`,
//! `timestamp` or `payload`, has a timestamp that does not parse, or whose payload lacks
//! the entity's id is [`Malformed`].

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use synchronizer_openstack::cinder_volume::NotifiedVolume;
use synchronizer_openstack::heat_stack::HeatStack as StackModel;
use synchronizer_openstack::neutron;
use synchronizer_openstack::nova_instance::{NovaInstance, status_from_state};
use synchronizer_plugin_api::Change;

/// The entity type of Nova instances.
pub const NOVA_INSTANCE: &str = synchronizer_openstack::nova_instance::INSTANCE;
/// The entity type of Heat stacks.
pub const HEAT_STACK: &str = synchronizer_openstack::heat_stack::STACK;
/// The entity type of Nova compute hosts (the other end of an instance's relation).
pub const NOVA_HOST: &str = synchronizer_openstack::nova_instance::HOST;
/// Entity type of a Cinder volume (family `cinder`).
pub const CINDER_VOLUME: &str = synchronizer_openstack::cinder_volume::VOLUME;
/// Entity type of a Neutron network (family `neutron`).
pub const NEUTRON_NETWORK: &str = synchronizer_openstack::neutron::NETWORK;
/// Entity type of a Neutron port (family `neutron`).
pub const NEUTRON_PORT: &str = synchronizer_openstack::neutron::PORT;

/// A family of notifications that can be switched on or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// Nova's versioned notifications (`instance.*`).
    NovaVersioned,
    /// Nova's legacy (unversioned) notifications (`compute.instance.*`).
    NovaLegacy,
    /// Heat's stack notifications (`orchestration.stack.*`).
    Heat,
    /// Cinder's volume notifications (`volume.*`).
    Cinder,
    /// Neutron's network and port notifications (`network.*`, `port.*`).
    Neutron,
}

impl Family {
    /// The family an event type belongs to, if any.
    pub fn of(event_type: &str) -> Option<Family> {
        if event_type.starts_with("compute.instance.") {
            Some(Family::NovaLegacy)
        } else if event_type.starts_with("instance.") {
            Some(Family::NovaVersioned)
        } else if event_type.starts_with("orchestration.stack.") {
            Some(Family::Heat)
        } else if event_type.starts_with("volume.") {
            Some(Family::Cinder)
        } else if event_type.starts_with("network.") || event_type.starts_with("port.") {
            Some(Family::Neutron)
        } else {
            None
        }
    }

    /// `nova-versioned`, `nova-legacy` or `heat`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::NovaVersioned => "nova-versioned",
            Family::NovaLegacy => "nova-legacy",
            Family::Heat => "heat",
            Family::Cinder => "cinder",
            Family::Neutron => "neutron",
        }
    }
}

/// The set of families that are on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Families {
    nova_versioned: bool,
    nova_legacy: bool,
    heat: bool,
    cinder: bool,
    neutron: bool,
}

impl Families {
    /// Every family.
    pub fn all() -> Self {
        Families {
            nova_versioned: true,
            nova_legacy: true,
            heat: true,
            cinder: true,
            neutron: true,
        }
    }

    /// The given families.
    pub fn of(list: &[Family]) -> Self {
        let mut f = Families::default();
        for family in list {
            match family {
                Family::NovaVersioned => f.nova_versioned = true,
                Family::NovaLegacy => f.nova_legacy = true,
                Family::Heat => f.heat = true,
                Family::Cinder => f.cinder = true,
                Family::Neutron => f.neutron = true,
            }
        }
        f
    }

    /// Whether `family` is on.
    pub fn contains(&self, family: Family) -> bool {
        match family {
            Family::NovaVersioned => self.nova_versioned,
            Family::NovaLegacy => self.nova_legacy,
            Family::Heat => self.heat,
            Family::Cinder => self.cinder,
            Family::Neutron => self.neutron,
        }
    }
}

/// Why a message produced no change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// An event type of no known family.
    UnknownEvent,
    /// An event of a family that is switched off.
    FamilyOff(Family),
}

/// What a well-formed message means.
// Short-lived and moved once per message: boxing the change would cost an allocation
// per message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Interpretation {
    /// A change to push.
    Change(Change),
    /// Nothing to push (the message is still acknowledged).
    Ignored(Ignored),
}

/// A message decoded and interpreted.
#[derive(Clone, Debug)]
pub struct Interpreted {
    /// `message_id`, or `_unique_id` when there is none: the key duplicates are
    /// recognised by (a notification sent to two topics keeps its `message_id`).
    pub dedup_id: Option<String>,
    /// The event type.
    pub event_type: String,
    /// What it means.
    pub interpretation: Interpretation,
}

/// A message that cannot be interpreted: it goes to the dead-letter queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// What is wrong with it.
    pub reason: String,
    /// Its event type, when it could be read.
    pub event_type: Option<String>,
    /// Its message id, when it could be read.
    pub message_id: Option<String>,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)?;
        if let Some(e) = &self.event_type {
            write!(f, " (event_type {e})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Malformed {}

/// The longest [`Malformed::reason`], in bytes: the reason goes into a header of the
/// dead-letter copy and into the log, and the text it quotes comes from the message (a
/// `timestamp` or a payload string of any length, which serde's messages quote whole). A
/// header larger than the broker's frame size fails the dead-lettering, and the message
/// would come back forever.
pub const MAX_REASON: usize = 1024;

/// The longest [`Malformed::event_type`] and [`Malformed::message_id`] kept, in bytes.
pub const MAX_FIELD: usize = 255;

impl Malformed {
    pub(crate) fn new(reason: String, event_type: Option<&str>, message_id: Option<&str>) -> Self {
        Malformed {
            reason: cut(reason, MAX_REASON),
            event_type: event_type.map(|t| cut(t.to_owned(), MAX_FIELD)),
            message_id: message_id.map(|m| cut(m.to_owned(), MAX_FIELD)),
        }
    }
}

/// `s` cut to at most [`MAX_FIELD`] bytes.
pub(crate) fn cut_field(s: &str) -> String {
    cut(s.to_owned(), MAX_FIELD)
}

/// `s` cut to at most `max` bytes at a character boundary, `…` marking the cut.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max - '…'.len_utf8();
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
    s
}

/// The fields of an oslo message this plugin reads, in both wire forms: `oslo_message`
/// is set in the messagingv2 envelope, the rest in the notification itself.
#[derive(Deserialize, Default)]
struct Wire<'a> {
    #[serde(rename = "oslo.message", borrow, default)]
    oslo_message: Str<'a>,
    #[serde(borrow, default)]
    message_id: Str<'a>,
    #[serde(rename = "_unique_id", borrow, default)]
    unique_id: Str<'a>,
    #[serde(borrow, default)]
    event_type: Str<'a>,
    #[serde(borrow, default)]
    timestamp: Str<'a>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// A Nova payload read in the same pass as its notification: oslo writes `event_type`
/// before `payload`, so the payload can be read into its family's fields at once instead
/// of being skipped as raw text and read again (with the envelope read without serde, a
/// captured `instance.update` decodes in 7.0 µs instead of 12.2:
/// `cargo bench -p synchronizer-bus --bench interpret`).
///
/// [`Wire`]'s derived reader stays as it was: it is the plain reader the fast one is
/// compared with ([`interpret_plainly`]).
enum Early<'a> {
    Versioned(NovaObject<VersionedInstance<'a>>),
    Legacy(LegacyInstance<'a>),
}

/// A notification read in one pass: its [`Wire`] fields and, for a Nova family that is
/// on and an `event_type` that came before the payload, the payload ([`Early`]).
struct OnePass<'a> {
    wire: Wire<'a>,
    early: Option<Early<'a>>,
}

/// Reads `text` as [`Wire`] does, and the payload as [`Early`] when it can. Any error
/// (the notification's or its payload's) means: read it plainly, which gives the error
/// the plain reader has always given.
fn one_pass(text: &str, families: Families) -> Result<OnePass<'_>, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(text);
    let one = OnePassSeed(families).deserialize(&mut de)?;
    de.end()?;
    Ok(one)
}

struct OnePassSeed(Families);

/// The members [`Wire`] reads, and the rest.
enum WireKey {
    OsloMessage,
    MessageId,
    UniqueId,
    EventType,
    Timestamp,
    Payload,
    Other,
}

impl<'de> Deserialize<'de> for WireKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = WireKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E>(self, v: &str) -> Result<WireKey, E> {
                Ok(match v {
                    "oslo.message" => WireKey::OsloMessage,
                    "message_id" => WireKey::MessageId,
                    "_unique_id" => WireKey::UniqueId,
                    "event_type" => WireKey::EventType,
                    "timestamp" => WireKey::Timestamp,
                    "payload" => WireKey::Payload,
                    _ => WireKey::Other,
                })
            }
        }
        d.deserialize_identifier(Visitor)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for OnePassSeed {
    type Value = OnePass<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<OnePass<'de>, D::Error> {
        struct Visitor(Families);
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OnePass<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an oslo notification")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OnePass<'de>, A::Error> {
                use serde::de::Error;
                let mut wire = Wire::default();
                let mut early = None;
                // Each member at most once, as the derived `Wire` has it.
                let mut seen = [false; 6];
                let mut once = |i: usize, name: &'static str| {
                    if std::mem::replace(&mut seen[i], true) {
                        Err(A::Error::duplicate_field(name))
                    } else {
                        Ok(())
                    }
                };
                while let Some(key) = map.next_key::<WireKey>()? {
                    match key {
                        WireKey::OsloMessage => {
                            once(0, "oslo.message")?;
                            wire.oslo_message = map.next_value()?;
                        }
                        WireKey::MessageId => {
                            once(1, "message_id")?;
                            wire.message_id = map.next_value()?;
                        }
                        WireKey::UniqueId => {
                            once(2, "_unique_id")?;
                            wire.unique_id = map.next_value()?;
                        }
                        WireKey::EventType => {
                            once(3, "event_type")?;
                            wire.event_type = map.next_value()?;
                        }
                        WireKey::Timestamp => {
                            once(4, "timestamp")?;
                            wire.timestamp = map.next_value()?;
                        }
                        WireKey::Payload => {
                            once(5, "payload")?;
                            let family = text(&wire.event_type)
                                .and_then(Family::of)
                                .filter(|f| self.0.contains(*f));
                            match family {
                                Some(Family::NovaVersioned) => {
                                    early = Some(Early::Versioned(map.next_value()?));
                                }
                                Some(Family::NovaLegacy) => {
                                    early = Some(Early::Legacy(map.next_value()?));
                                }
                                _ => wire.payload = map.next_value()?,
                            }
                        }
                        WireKey::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(OnePass { wire, early })
            }
        }
        d.deserialize_map(Visitor(self.0))
    }
}

/// Decodes and interprets one message body as it arrived: decompressed first when the
/// message header `compression` (kombu's, [`crate::compression`]) names a method, at
/// most `max_decompressed` bytes of it.
pub fn interpret_message(
    body: &[u8],
    compression: Option<&str>,
    max_decompressed: usize,
    families: Families,
) -> Result<Interpreted, Malformed> {
    let body = crate::compression::decompress(body, compression, max_decompressed)?;
    interpret(&body, families)
}

/// Decodes and interprets one message body.
///
/// When the body does not parse as an oslo message (a field of the wrong type, say), its
/// message id and event type are still read, leniently, for the dead-letter log and
/// headers (see [`lenient_ids`]).
pub fn interpret(body: &[u8], families: Families) -> Result<Interpreted, Malformed> {
    read(body, families, Reader::Fast)
}

/// [`interpret`] without its fast paths (the envelope read without serde, a Nova payload
/// read with its notification): what it must give for every body, which the
/// `bus_message` and `bus_notification` fuzz targets check.
#[doc(hidden)]
pub fn interpret_plainly(body: &[u8], families: Families) -> Result<Interpreted, Malformed> {
    read(body, families, Reader::Plain)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reader {
    Fast,
    Plain,
}

fn read(body: &[u8], families: Families, reader: Reader) -> Result<Interpreted, Malformed> {
    // Nearly every body is the plain envelope, read without serde (`crate::envelope`);
    // the rest is read below, which gives the errors.
    if reader == Reader::Fast
        && let Some(inner_text) = crate::envelope::oslo_message(body)
    {
        return interpret_inner(body, &inner_text, families, reader);
    }
    let outer: Wire<'_> = match serde_json::from_slice(body) {
        Ok(outer) => outer,
        Err(e) => {
            let (event_type, message_id) = lenient_ids(body);
            return Err(Malformed::new(
                format!("body is not an oslo.messaging JSON object: {e}"),
                event_type.as_deref(),
                message_id.as_deref(),
            ));
        }
    };
    match text(&outer.oslo_message) {
        Some(inner_text) => interpret_inner(body, inner_text, families, reader),
        None => interpret_notification(&outer, None, families),
    }
}

/// Interprets the notification of a `messagingv2` body, `inner_text` (its `oslo.message`).
fn interpret_inner(
    body: &[u8],
    inner_text: &str,
    families: Families,
    reader: Reader,
) -> Result<Interpreted, Malformed> {
    if reader == Reader::Fast
        && let Ok(one) = one_pass(inner_text, families)
    {
        return interpret_notification(&one.wire, one.early, families);
    }
    // Not readable in one pass: read as plainly as ever, which gives the error.
    let inner: Wire<'_> = match serde_json::from_str(inner_text) {
        Ok(inner) => inner,
        Err(e) => {
            let (event_type, message_id) = lenient_ids(body);
            return Err(Malformed::new(
                format!("`oslo.message` is not a JSON notification: {e}"),
                event_type.as_deref(),
                message_id.as_deref(),
            ));
        }
    };
    interpret_notification(&inner, None, families)
}

/// The event type and message id of a body that does not parse strictly, read from
/// whatever JSON it is: in a `messagingv2` envelope, from the notification in its
/// `oslo.message` string; otherwise (the `messaging` driver's unwrapped form, or an
/// `oslo.message` that is no JSON string) from the top level. The id is `message_id`, else
/// `_unique_id`; a number is taken as its JSON text, other types are not an id. Both are
/// cut to [`MAX_FIELD`] bytes.
pub fn lenient_ids(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(outer) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    let inner = outer
        .get("oslo.message")
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
        .filter(Value::is_object);
    let n = inner.as_ref().unwrap_or(&outer);
    let field = |key: &str| match n.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(cut_field(s)),
        Some(Value::Number(x)) => Some(cut_field(&x.to_string())),
        _ => None,
    };
    let event_type = n
        .get("event_type")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(cut_field);
    (
        event_type,
        field("message_id").or_else(|| field("_unique_id")),
    )
}

fn interpret_notification(
    n: &Wire<'_>,
    early: Option<Early<'_>>,
    families: Families,
) -> Result<Interpreted, Malformed> {
    // `message_id`, else `_unique_id`: the dedup key, and the id a dead letter is logged
    // with.
    let message_id = text(&n.message_id)
        .filter(|s| !s.is_empty())
        .or(text(&n.unique_id).filter(|s| !s.is_empty()));
    let malformed =
        |reason: String, event_type: Option<&str>| Malformed::new(reason, event_type, message_id);
    let Some(event_type) = text(&n.event_type).filter(|s| !s.is_empty()) else {
        return Err(malformed("no `event_type`".into(), None));
    };
    let dedup_id = message_id.map(str::to_owned);
    let done = |interpretation| {
        Ok(Interpreted {
            dedup_id: dedup_id.clone(),
            event_type: event_type.to_owned(),
            interpretation,
        })
    };
    let Some(family) = Family::of(event_type) else {
        return done(Interpretation::Ignored(Ignored::UnknownEvent));
    };
    if !families.contains(family) {
        return done(Interpretation::Ignored(Ignored::FamilyOff(family)));
    }
    let Some(timestamp) = text(&n.timestamp) else {
        return Err(malformed("no `timestamp`".into(), Some(event_type)));
    };
    let Some(at_us) = parse_timestamp(timestamp) else {
        return Err(malformed(
            format!(
                "`timestamp` {:?} is not a date and time",
                cut(timestamp.to_owned(), 64)
            ),
            Some(event_type),
        ));
    };
    let change = match (early, n.payload) {
        // Read with the notification: it is of this family (see `one_pass`).
        (Some(Early::Versioned(object)), _) => nova_versioned(event_type, object, at_us),
        (Some(Early::Legacy(p)), _) => nova_legacy(event_type, p, at_us),
        (None, None) => return Err(malformed("no `payload`".into(), Some(event_type))),
        (None, Some(payload)) => match family {
            Family::NovaVersioned => parse_payload(payload, "versioned instance")
                .and_then(|object| nova_versioned(event_type, object, at_us)),
            Family::NovaLegacy => parse_payload(payload, "legacy instance")
                .and_then(|p| nova_legacy(event_type, p, at_us)),
            Family::Heat => heat(event_type, payload, at_us),
            Family::Cinder => cinder(event_type, payload, at_us),
            Family::Neutron => match neutron::notified(event_type, payload.get(), at_us) {
                Ok(neutron::Notified::Change(delete, e)) => Ok(if delete {
                    Change::Delete(*e)
                } else {
                    Change::Upsert(*e)
                }),
                Ok(neutron::Notified::Ignored) => {
                    return done(Interpretation::Ignored(Ignored::UnknownEvent));
                }
                Err(e) => Err(e),
            },
        },
    }
    .map_err(|reason| malformed(reason, Some(event_type)))?;
    done(Interpretation::Change(change))
}

/// A JSON string, borrowed from the input when it has no escapes (most fields): reading
/// a notification allocates little.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(Visitor).map(Text)
    }
}

/// A string field that may be absent or null.
type Str<'a> = Option<Text<'a>>;

/// The text of a string field, when it is there.
fn text<'b>(s: &'b Str<'_>) -> Option<&'b str> {
    s.as_ref().map(|t| t.0.as_ref())
}

#[derive(Deserialize)]
struct NovaObject<T> {
    #[serde(rename = "nova_object.data", default = "none")]
    data: Option<T>,
}

fn none<T>() -> Option<T> {
    None
}

#[derive(Deserialize)]
struct FlavorData<'a> {
    #[serde(borrow, default)]
    name: Str<'a>,
}

/// The fields of Nova's versioned instance payloads (`InstancePayload` and its
/// subclasses) this plugin reads: those of the shared `nova.instance` model.
#[derive(Deserialize)]
struct VersionedInstance<'a> {
    #[serde(borrow, default)]
    uuid: Str<'a>,
    #[serde(borrow, default)]
    display_name: Str<'a>,
    #[serde(borrow, default)]
    host: Str<'a>,
    #[serde(borrow, default)]
    node: Str<'a>,
    #[serde(borrow, default)]
    state: Str<'a>,
    #[serde(borrow, default)]
    task_state: Str<'a>,
    #[serde(borrow, default)]
    tenant_id: Str<'a>,
    #[serde(borrow, default)]
    user_id: Str<'a>,
    #[serde(borrow, default)]
    availability_zone: Str<'a>,
    #[serde(borrow, default)]
    image_uuid: Str<'a>,
    #[serde(borrow, default)]
    created_at: Str<'a>,
    #[serde(borrow, default)]
    flavor: Option<NovaObject<FlavorData<'a>>>,
    #[serde(default)]
    metadata: Option<Value>,
    /// `InstanceCreatePayload`'s only: `None` when absent, `Some(None)` when null.
    #[serde(borrow, default, deserialize_with = "field_present")]
    instance_name: Option<Str<'a>>,
}

/// A field that is there, `null` included (with `default`, an absent one is `None`).
fn field_present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct ImageMeta<'a> {
    #[serde(borrow, default)]
    base_image_ref: Str<'a>,
}

/// The fields of Nova's legacy `compute.instance.*` payloads this plugin reads: those of
/// the shared `nova.instance` model.
#[derive(Deserialize)]
struct LegacyInstance<'a> {
    #[serde(borrow, default)]
    instance_id: Str<'a>,
    #[serde(borrow, default)]
    display_name: Str<'a>,
    #[serde(borrow, default)]
    host: Str<'a>,
    #[serde(borrow, default)]
    node: Str<'a>,
    #[serde(borrow, default)]
    state: Str<'a>,
    /// The task state (`scheduling`...), `""` when there is none.
    #[serde(borrow, default)]
    state_description: Str<'a>,
    #[serde(borrow, default)]
    tenant_id: Str<'a>,
    #[serde(borrow, default)]
    user_id: Str<'a>,
    #[serde(borrow, default)]
    availability_zone: Str<'a>,
    #[serde(borrow, default)]
    instance_type: Str<'a>,
    #[serde(borrow, default)]
    image_meta: Option<ImageMeta<'a>>,
    #[serde(borrow, default)]
    created_at: Str<'a>,
    #[serde(default)]
    metadata: Option<Value>,
}

/// The fields of Heat's stack notification payloads this plugin reads.
#[derive(Deserialize)]
struct HeatStack<'a> {
    #[serde(borrow, default)]
    stack_identity: Str<'a>,
    #[serde(borrow, default)]
    stack_name: Str<'a>,
    #[serde(borrow, default)]
    state: Str<'a>,
    #[serde(borrow, default)]
    state_reason: Str<'a>,
    #[serde(borrow, default)]
    tenant_id: Str<'a>,
    #[serde(borrow, default)]
    username: Str<'a>,
    #[serde(borrow, default)]
    create_at: Str<'a>,
    #[serde(borrow, default)]
    updated_at: Str<'a>,
    #[serde(default)]
    tags: Option<Value>,
}

fn non_empty<'a>(s: &'a Str<'_>) -> Option<&'a str> {
    text(s).filter(|s| !s.is_empty())
}

fn parse_payload<'a, T: Deserialize<'a>>(payload: &'a RawValue, what: &str) -> Result<T, String> {
    serde_json::from_str(payload.get()).map_err(|e| format!("{what} payload does not parse: {e}"))
}

/// A `nova.instance` change: the shared model's entity, stamped with the message's time;
/// a deletion when the event is one (`delete_event`) or the payload says the instance is
/// deleted.
fn instance_change(delete_event: bool, mut instance: NovaInstance<'_>, at_us: i64) -> Change {
    // A notification carries the vm and task states; the API's status is made of them.
    let status = status_from_state(instance.vm_state, instance.task_state);
    instance.status = Some(status);
    instance.updated_us = Some(at_us);
    let delete = delete_event || instance.is_deleted();
    let e = instance.into_entity();
    if delete {
        Change::Delete(e)
    } else {
        Change::Upsert(e)
    }
}

fn nova_versioned(
    event_type: &str,
    object: NovaObject<VersionedInstance<'_>>,
    at_us: i64,
) -> Result<Change, String> {
    let Some(p) = object.data else {
        return Err("payload has no `nova_object.data`".into());
    };
    let Some(id) = non_empty(&p.uuid) else {
        return Err("payload has no instance `uuid`".into());
    };
    let flavor = p
        .flavor
        .as_ref()
        .and_then(|f| f.data.as_ref())
        .and_then(|f| text(&f.name));
    let instance = NovaInstance {
        id,
        name: text(&p.display_name),
        vm_state: text(&p.state),
        task_state: text(&p.task_state),
        project: text(&p.tenant_id),
        user_id: text(&p.user_id),
        host: text(&p.host),
        node: text(&p.node),
        availability_zone: text(&p.availability_zone),
        flavor,
        image_id: text(&p.image_uuid),
        created_at: text(&p.created_at),
        metadata: p.metadata,
        // In `InstanceCreatePayload` only; absent: the host keeps what it holds.
        instance_name: p.instance_name.as_ref().map(text),
        ..Default::default()
    };
    Ok(instance_change(
        event_type == "instance.delete.end",
        instance,
        at_us,
    ))
}

fn nova_legacy(event_type: &str, p: LegacyInstance<'_>, at_us: i64) -> Result<Change, String> {
    let Some(id) = non_empty(&p.instance_id) else {
        return Err("payload has no `instance_id`".into());
    };
    let instance = NovaInstance {
        id,
        name: text(&p.display_name),
        vm_state: text(&p.state),
        task_state: text(&p.state_description),
        project: text(&p.tenant_id),
        user_id: text(&p.user_id),
        host: text(&p.host),
        node: text(&p.node),
        availability_zone: text(&p.availability_zone),
        flavor: text(&p.instance_type),
        image_id: p.image_meta.as_ref().and_then(|m| text(&m.base_image_ref)),
        created_at: text(&p.created_at),
        metadata: p.metadata,
        ..Default::default()
    };
    Ok(instance_change(
        event_type == "compute.instance.delete.end",
        instance,
        at_us,
    ))
}

/// A `cinder.volume` change: the shared model's entity (`cinder_volume`), stamped with
/// the message's time; a deletion for `volume.delete.end` or a payload saying `deleted`.
/// Event types other than the model's (`volume.exists`, `volume.usage`, ...) are upserts
/// of the same state when they carry a volume.
fn cinder(event_type: &str, payload: &RawValue, at_us: i64) -> Result<Change, String> {
    let p: NotifiedVolume = parse_payload(payload, "cinder volume")?;
    let (delete, e) = p.into_change(event_type, at_us)?;
    Ok(if delete {
        Change::Delete(e)
    } else {
        Change::Upsert(e)
    })
}

fn heat(event_type: &str, payload: &RawValue, at_us: i64) -> Result<Change, String> {
    let p: HeatStack<'_> = parse_payload(payload, "heat stack")?;
    let Some(identity) = non_empty(&p.stack_identity) else {
        return Err("payload has no `stack_identity`".into());
    };
    // Heat sends the stack's uuid; older releases sent an ARN ending in `/<uuid>`.
    let id = identity.rsplit('/').next().unwrap_or(identity);
    if id.is_empty() {
        return Err(format!("`stack_identity` {identity:?} names no stack id"));
    }
    let stack = StackModel {
        id,
        name: text(&p.stack_name),
        status: text(&p.state),
        status_reason: text(&p.state_reason),
        project: text(&p.tenant_id),
        owner: text(&p.username),
        creation_time: text(&p.create_at),
        updated_time: text(&p.updated_at),
        tags: p.tags.as_ref(),
        comprises: Vec::new(),
        updated_us: Some(at_us),
    };
    let delete = event_type == "orchestration.stack.delete.end" || stack.is_deleted();
    let e = stack.into_entity();
    if delete {
        Ok(Change::Delete(e))
    } else {
        Ok(Change::Upsert(e))
    }
}

/// Parses oslo's timestamp, naive UTC as Python's `str(datetime)` writes it
/// (`2026-11-25 02:26:16.207914`), into microseconds since the Unix epoch: the OpenStack
/// client's parser, which reads every shape OpenStack writes.
pub use synchronizer_openstack::time::parse_timestamp;

#[cfg(test)]
mod tests {
    use super::*;
    use synchronizer_plugin_api::{Direction, Entity};

    const V_CREATE: &str = include_str!(
        "../tests/fixtures/nova-30/versioned_notifications.info__instance.create.end.raw.json"
    );
    const V_DELETE: &str = include_str!(
        "../tests/fixtures/nova-30/versioned_notifications.info__instance.delete.end.raw.json"
    );
    const V_UPDATE: &str = include_str!(
        "../tests/fixtures/nova-30/versioned_notifications.info__instance.update.raw.json"
    );
    const V_POWER_OFF: &str = include_str!(
        "../tests/fixtures/nova-30/versioned_notifications.info__instance.power_off.end.raw.json"
    );
    const L_CREATE: &str = include_str!(
        "../tests/fixtures/nova-30/vitrage_notifications.info__compute.instance.create.end.raw.json"
    );
    const L_DELETE: &str = include_str!(
        "../tests/fixtures/nova-30/vitrage_notifications.info__compute.instance.delete.end.raw.json"
    );
    const L_UPDATE: &str = include_str!(
        "../tests/fixtures/nova-30/vitrage_notifications.info__compute.instance.update.raw.json"
    );
    const L_POWER_OFF: &str = include_str!(
        "../tests/fixtures/nova-30/vitrage_notifications.info__compute.instance.power_off.end.raw.json"
    );
    const UNKNOWN: [&str; 5] = [
        include_str!(
            "../tests/fixtures/nova-30/versioned_notifications.error__compute.exception.raw.json"
        ),
        include_str!(
            "../tests/fixtures/nova-30/versioned_notifications.error__compute_task.build_instances.error.raw.json"
        ),
        include_str!(
            "../tests/fixtures/nova-30/versioned_notifications.info__scheduler.select_destinations.end.raw.json"
        ),
        include_str!(
            "../tests/fixtures/nova-30/vitrage_notifications.error__compute_task.build_instances.raw.json"
        ),
        include_str!(
            "../tests/fixtures/nova-30/vitrage_notifications.error__get_host_uptime.raw.json"
        ),
    ];
    const HEAT_INFO: &str =
        include_str!("../tests/fixtures/heat-24/notifications-vitrage_notifications.info.json");
    const HEAT_ERROR: &str =
        include_str!("../tests/fixtures/heat-24/notifications-vitrage_notifications.error.json");
    /// One server's life (boot, stop, delete, then Nova's post-delete update), as the real
    /// Nova sent it on each topic.
    const LIFE_VERSIONED: &str =
        include_str!("../tests/fixtures/nova-30-deletes/versioned_notifications.info.json");
    const LIFE_LEGACY: &str =
        include_str!("../tests/fixtures/nova-30-deletes/vitrage_notifications.info.json");
    const SAMPLE_CREATE: &str = include_str!("../tests/fixtures/nova/instance-create-end.json");
    const SAMPLE_DELETE: &str = include_str!("../tests/fixtures/nova/instance-delete-end.json");
    const SAMPLE_UPDATE: &str = include_str!("../tests/fixtures/nova/instance-update.json");

    fn change(body: &str, families: Families) -> (Change, Option<String>) {
        let n = interpret(body.as_bytes(), families).expect("well-formed");
        match n.interpretation {
            Interpretation::Change(c) => (c, n.dedup_id),
            other => panic!("expected a change, got {other:?}"),
        }
    }

    fn upsert(body: &str, families: Families) -> Entity {
        match change(body, families).0 {
            Change::Upsert(e) => e,
            Change::Delete(e) => panic!("expected an upsert, got a delete of {}", e.key()),
        }
    }

    fn delete(body: &str, families: Families) -> Entity {
        match change(body, families).0 {
            Change::Delete(e) => e,
            Change::Upsert(e) => panic!("expected a delete, got an upsert of {}", e.key()),
        }
    }

    fn props(e: &Entity) -> Value {
        e.properties()
    }

    #[test]
    fn versioned_create_end_is_an_exact_upsert() {
        let (c, id) = change(V_CREATE, Families::all());
        assert_eq!(id.as_deref(), Some("ccd2fd7f-5ab5-4bdb-9412-5d6dd8774cb6"));
        let Change::Upsert(e) = c else {
            panic!("not an upsert")
        };
        assert_eq!(
            e.key(),
            "nova.instance:21531c76-f1e4-41a9-ac03-54c2993a7c4c"
        );
        assert_eq!(e.name(), "vm-a1");
        assert_eq!(e.state(), Some("ACTIVE"));
        assert_eq!(e.project(), Some("projA"));
        assert_eq!(e.source_updated_micros(), Some(1_795_595_861_358_157));
        assert_eq!(e.relations().len(), 1);
        assert_eq!(e.relations()[0].kind(), "contains");
        assert_eq!(e.relations()[0].other(), "nova.host:compute1");
        assert_eq!(e.relations()[0].direction(), Direction::Incoming);
        assert_eq!(
            props(&e),
            serde_json::json!({
                "vm_state": "active",
                "task_state": null,
                "availability_zone": "az1",
                "host": "compute1",
                "node": "compute1",
                "flavor": "m1.tiny",
                "image_id": "659ab5c8-bf73-4ea1-a020-37a3ce6d81bc",
                "user_id": "alice",
                "created_at": "2026-11-25T08:37:35Z",
                "metadata": {"role": "test"},
                "instance_name": "instance-00000001"
            })
        );
        assert!(!e.has_kept_properties(), "create.end carries instance_name");
    }

    #[test]
    fn notifications_without_instance_name_leave_it_out_and_keep_it() {
        for body in [V_UPDATE, V_POWER_OFF, L_CREATE, L_UPDATE] {
            let (Change::Upsert(e), _) = change(body, Families::all()) else {
                panic!("not an upsert")
            };
            // Without a host a server has no domain: null, not kept.
            let has_host = e.properties()["host"].is_string();
            assert_eq!(e.has_kept_properties(), has_host, "{}", e.key());
            let merged = e.merged_with(None);
            let name = merged.properties().get("instance_name").cloned();
            assert_eq!(name, (!has_host).then_some(Value::Null), "{}", e.key());
            assert!(merged.properties().get("vm_state").is_some());
        }
    }

    #[test]
    fn both_notification_forms_give_the_same_entity() {
        for (versioned, legacy) in [
            (V_CREATE, L_CREATE),
            (V_UPDATE, L_UPDATE),
            (V_POWER_OFF, L_POWER_OFF),
            (V_DELETE, L_DELETE),
        ] {
            let (v, _) = change(versioned, Families::all());
            let (l, _) = change(legacy, Families::all());
            let (v, l) = match (v, l) {
                (Change::Upsert(v), Change::Upsert(l)) | (Change::Delete(v), Change::Delete(l)) => {
                    (v, l)
                }
                other => panic!("not the same kind of change: {other:?}"),
            };
            // Legacy payloads have no instance_name: they keep what the host holds,
            // here the versioned form's.
            let v = v.merged_with(None);
            let l = l.merged_with(Some(&v));
            assert_eq!(v.key(), l.key());
            assert_eq!(v.state(), l.state());
            assert_eq!(v.relations(), l.relations());
            assert_eq!(props(&v), props(&l), "{}", v.key());
            assert_eq!(v.content_hash(), l.content_hash(), "{}", v.key());
        }
    }

    #[test]
    fn versioned_delete_end_is_a_delete_stamped_with_its_time() {
        let e = delete(V_DELETE, Families::all());
        assert_eq!(
            e.key(),
            "nova.instance:6903453d-4734-4f60-878f-496d6db23c56"
        );
        assert_eq!(e.name(), "vm-b2");
        assert_eq!(e.state(), Some("DELETED"));
        assert_eq!(props(&e)["vm_state"], "deleted");
        assert_eq!(e.source_updated_micros(), Some(1_795_595_872_092_080));
    }

    #[test]
    fn versioned_update_without_host_has_no_relation() {
        let e = upsert(V_UPDATE, Families::all());
        assert_eq!(e.id(), "21531c76-f1e4-41a9-ac03-54c2993a7c4c");
        assert_eq!(e.state(), Some("BUILD"));
        assert!(e.relations().is_empty());
        assert_eq!(props(&e)["vm_state"], "building");
        assert_eq!(props(&e)["task_state"], "scheduling");
        assert_eq!(props(&e)["host"], Value::Null);
        assert!(props(&e).get("power_state").is_none());
        let off = upsert(V_POWER_OFF, Families::all());
        assert_eq!(off.name(), "vm-a3");
        assert_eq!(off.state(), Some("SHUTOFF"));
        assert_eq!(props(&off)["vm_state"], "stopped");
    }

    #[test]
    fn legacy_notifications_map_to_the_same_entities() {
        let created = upsert(L_CREATE, Families::all());
        assert_eq!(
            created.key(),
            "nova.instance:21531c76-f1e4-41a9-ac03-54c2993a7c4c"
        );
        assert_eq!(created.name(), "vm-a1");
        assert_eq!(created.state(), Some("ACTIVE"));
        assert_eq!(created.project(), Some("projA"));
        assert_eq!(created.relations()[0].other(), "nova.host:compute1");
        assert_eq!(props(&created)["flavor"], "m1.tiny");
        assert_eq!(
            props(&created)["image_id"],
            "659ab5c8-bf73-4ea1-a020-37a3ce6d81bc"
        );
        let deleted = delete(L_DELETE, Families::all());
        assert_eq!(
            deleted.key(),
            "nova.instance:6903453d-4734-4f60-878f-496d6db23c56"
        );
        let update = upsert(L_UPDATE, Families::all());
        assert_eq!(update.state(), Some("BUILD"));
        assert_eq!(props(&update)["task_state"], "scheduling");
        assert!(update.relations().is_empty());
        assert_eq!(
            upsert(L_POWER_OFF, Families::all()).state(),
            Some("SHUTOFF")
        );
    }

    #[test]
    fn families_that_are_off_are_ignored() {
        let only_versioned = Families::of(&[Family::NovaVersioned]);
        for body in [L_CREATE, L_DELETE, L_UPDATE, L_POWER_OFF] {
            let n = interpret(body.as_bytes(), only_versioned).unwrap();
            assert!(matches!(
                n.interpretation,
                Interpretation::Ignored(Ignored::FamilyOff(Family::NovaLegacy))
            ));
        }
        let only_legacy = Families::of(&[Family::NovaLegacy]);
        let n = interpret(V_CREATE.as_bytes(), only_legacy).unwrap();
        assert!(matches!(
            n.interpretation,
            Interpretation::Ignored(Ignored::FamilyOff(Family::NovaVersioned))
        ));
    }

    #[test]
    fn other_events_are_unknown_not_malformed() {
        for body in UNKNOWN {
            let n = interpret(body.as_bytes(), Families::all()).unwrap();
            assert!(
                matches!(
                    n.interpretation,
                    Interpretation::Ignored(Ignored::UnknownEvent)
                ),
                "{}",
                n.event_type
            );
            assert!(n.dedup_id.is_some());
        }
    }

    /// What `interpret` gives, as text, beside what `interpret_plainly` gives.
    fn both_readers(body: &str, families: Families) -> (String, String) {
        (
            format!("{:?}", interpret(body.as_bytes(), families)),
            format!("{:?}", interpret_plainly(body.as_bytes(), families)),
        )
    }

    #[test]
    fn the_fast_paths_read_every_capture_as_the_plain_reader_does() {
        let mut bodies: Vec<String> = [
            V_CREATE,
            V_DELETE,
            V_UPDATE,
            V_POWER_OFF,
            L_CREATE,
            L_DELETE,
            L_UPDATE,
            L_POWER_OFF,
        ]
        .into_iter()
        .chain(UNKNOWN)
        .map(str::to_owned)
        .collect();
        for capture in [LIFE_VERSIONED, LIFE_LEGACY, HEAT_INFO, HEAT_ERROR] {
            bodies.extend(record_bodies(capture));
        }
        for body in &bodies {
            // The envelope is read without serde for every capture.
            assert!(crate::envelope::oslo_message(body.as_bytes()).is_some());
            for families in [Families::all(), Families::default(), Families::of(&[])] {
                let (fast, plain) = both_readers(body, families);
                assert_eq!(fast, plain);
            }
        }
    }

    #[test]
    fn a_payload_before_its_event_type_or_of_the_wrong_shape_reads_as_plainly() {
        let inner =
            |n: &str| serde_json::json!({"oslo.version": "2.0", "oslo.message": n}).to_string();
        let update: Value = {
            let outer: Value = serde_json::from_str(V_UPDATE).unwrap();
            serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap()
        };
        let payload = update["payload"].to_string();
        let timestamp = update["timestamp"].to_string();
        // Read in one pass (event type first) and in two (payload first): one change.
        let first = inner(&format!(
            r#"{{"event_type": "instance.update", "timestamp": {timestamp}, "payload": {payload}}}"#
        ));
        let last = inner(&format!(
            r#"{{"payload": {payload}, "timestamp": {timestamp}, "event_type": "instance.update"}}"#
        ));
        let (fast, plain) = both_readers(&first, Families::all());
        assert_eq!(fast, plain);
        assert!(fast.starts_with("Ok("), "{fast}");
        assert_eq!(both_readers(&last, Families::all()).0, fast);
        // A payload that does not parse, and a second one: the plain reader's errors.
        for (n, reason) in [
            (
                r#"{"event_type": "instance.update", "timestamp": "2026-11-25 08:37:35.1", "payload": {"nova_object.data": 5}}"#,
                "versioned instance payload does not parse",
            ),
            (
                r#"{"event_type": "compute.instance.update", "timestamp": "2026-11-25 08:37:35.1", "payload": 5}"#,
                "legacy instance payload does not parse",
            ),
            (
                r#"{"event_type": "instance.update", "payload": {}, "payload": {}}"#,
                "duplicate field `payload`",
            ),
        ] {
            let body = inner(n);
            let (fast, plain) = both_readers(&body, Families::all());
            assert_eq!(fast, plain);
            let e = interpret(body.as_bytes(), Families::all()).unwrap_err();
            assert!(e.reason.contains(reason), "{}", e.reason);
        }
    }

    /// The bodies of a capture of records (`[{"body": "<the AMQP body>", ...}]`).
    fn record_bodies(file: &str) -> Vec<String> {
        let records: Vec<Value> = serde_json::from_str(file).unwrap();
        records
            .into_iter()
            .map(|r| r["body"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn every_heat_notification_is_a_stack_upsert() {
        let info = record_bodies(HEAT_INFO);
        assert_eq!(info.len(), 24);
        for body in &info {
            let e = upsert(body, Families::all());
            assert_eq!(e.entity_type(), HEAT_STACK);
            assert_eq!(e.id().len(), 36, "{}", e.id());
            assert!(
                e.state()
                    .is_some_and(|s| s.ends_with("_IN_PROGRESS") || s.ends_with("_COMPLETE"))
            );
            assert!(e.project().is_some());
        }
        let first = upsert(&info[0], Families::all());
        assert_eq!(
            first.key(),
            "heat.stack:8b975fd3-1abc-42db-8f09-7cc89cac27cd"
        );
        assert_eq!(first.name(), "basic-a");
        assert_eq!(first.state(), Some("CREATE_IN_PROGRESS"));
        assert_eq!(first.project(), Some("792e7e05085f495b88f1d9ecb7c2642a"));
        assert_eq!(first.source_updated_micros(), Some(1_795_597_017_495_067));
        assert_eq!(
            props(&first),
            serde_json::json!({
                "stack_status_reason": "Stack CREATE started",
                "creation_time": "2026-11-25T08:56:57Z",
                "updated_time": null,
                "stack_owner": "demo",
                "tags": []
            })
        );
        let errors = record_bodies(HEAT_ERROR);
        let failed = upsert(&errors[0], Families::all());
        assert_eq!(
            failed.key(),
            "heat.stack:1e700381-8647-4e2f-b67f-a0f5a87597d4"
        );
        assert_eq!(failed.name(), "failing-a");
        assert_eq!(failed.state(), Some("CREATE_FAILED"));
        assert_eq!(
            upsert(&errors[1], Families::all()).state(),
            Some("UPDATE_FAILED")
        );
        let n = interpret(info[0].as_bytes(), Families::of(&[Family::NovaVersioned])).unwrap();
        assert!(matches!(
            n.interpretation,
            Interpretation::Ignored(Ignored::FamilyOff(Family::Heat))
        ));
    }

    /// Rewrites the inner notification of an envelope.
    fn rewrite(envelope: &str, f: impl FnOnce(&mut Value)) -> String {
        let outer: Value = serde_json::from_str(envelope).unwrap();
        let mut inner: Value =
            serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        f(&mut inner);
        serde_json::json!({"oslo.version": "2.0", "oslo.message": inner.to_string()}).to_string()
    }

    #[test]
    fn heat_delete_end_is_a_delete_and_arns_give_the_id() {
        let info = record_bodies(HEAT_INFO);
        let body = rewrite(&info[0], |n| {
            n["event_type"] = "orchestration.stack.delete.end".into();
            n["payload"]["state"] = "DELETE_COMPLETE".into();
            n["payload"]["stack_identity"] =
                "arn:openstack:heat::792e:stacks/basic-a/8b975fd3-1abc-42db-8f09-7cc89cac27cd"
                    .into();
        });
        let e = delete(&body, Families::all());
        assert_eq!(e.key(), "heat.stack:8b975fd3-1abc-42db-8f09-7cc89cac27cd");
        assert_eq!(e.state(), Some("DELETE_COMPLETE"));
    }

    /// The event type and payload state of an envelope's notification.
    fn event_and_state(body: &str) -> (String, Option<String>) {
        let outer: Value = serde_json::from_str(body).unwrap();
        let n: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        let p = &n["payload"];
        let state = p["nova_object.data"]["state"]
            .as_str()
            .or(p["state"].as_str())
            .map(str::to_owned);
        (n["event_type"].as_str().unwrap().to_owned(), state)
    }

    #[test]
    fn every_nova_message_that_says_deleted_is_a_deletion() {
        // The real sequence: `*.update` to state deleted, `*.delete.end`, then (from the
        // periodic `_run_pending_deletes`) one more `*.update` with state deleted.
        for (file, update, end) in [
            (LIFE_VERSIONED, "instance.update", "instance.delete.end"),
            (
                LIFE_LEGACY,
                "compute.instance.update",
                "compute.instance.delete.end",
            ),
        ] {
            let bodies = record_bodies(file);
            let said: Vec<(String, Option<String>)> =
                bodies.iter().map(|b| event_and_state(b)).collect();
            let deleted_updates = said
                .iter()
                .filter(|(e, s)| e == update && s.as_deref() == Some("deleted"))
                .count();
            assert_eq!(deleted_updates, 2, "{said:?}");
            assert_eq!(said.last().map(|(e, _)| e.as_str()), Some(update));
            assert!(said.iter().any(|(e, _)| e == end));
            for (body, (event, state)) in bodies.iter().zip(&said) {
                let (c, _) = change(body, Families::all());
                let says_deleted = state.as_deref() == Some("deleted");
                match c {
                    Change::Delete(e) => {
                        assert!(says_deleted, "{event} {state:?} deletes");
                        assert_eq!(e.state(), Some("DELETED"));
                        assert_eq!(props(&e)["vm_state"], "deleted");
                    }
                    Change::Upsert(e) => {
                        assert!(!says_deleted, "{event} {state:?} is an upsert");
                        assert_ne!(e.state(), Some("DELETED"));
                    }
                }
            }
        }
    }

    #[test]
    fn soft_deleted_and_exists_messages_that_say_deleted_are_deletions() {
        // Derived from the captured `instance.update`: events the lab does not send (no
        // `reclaim_instance_interval`, no usage audit), with the states Nova gives them.
        for (event, state, status) in [
            ("instance.soft_delete.end", "soft-delete", "SOFT_DELETED"),
            ("instance.update", "soft-delete", "SOFT_DELETED"),
            ("instance.exists", "deleted", "DELETED"),
        ] {
            let body = rewrite(V_UPDATE, |n| {
                n["event_type"] = event.into();
                n["payload"]["nova_object.data"]["state"] = state.into();
                n["payload"]["nova_object.data"]["task_state"] = Value::Null;
            });
            assert_eq!(
                delete(&body, Families::all()).state(),
                Some(status),
                "{event}"
            );
        }
        for (event, state) in [
            ("compute.instance.soft_delete.end", "soft-delete"),
            ("compute.instance.exists", "deleted"),
        ] {
            let body = rewrite(L_UPDATE, |n| {
                n["event_type"] = event.into();
                n["payload"]["state"] = state.into();
                n["payload"]["state_description"] = "".into();
            });
            delete(&body, Families::all());
        }
        // Restored, or still being deleted: upserts.
        for (event, state, task) in [
            ("instance.restore.end", "active", Value::Null),
            ("instance.delete.start", "active", "deleting".into()),
        ] {
            let body = rewrite(V_UPDATE, |n| {
                n["event_type"] = event.into();
                n["payload"]["nova_object.data"]["state"] = state.into();
                n["payload"]["nova_object.data"]["task_state"] = task;
            });
            assert_eq!(
                upsert(&body, Families::all()).state(),
                Some("ACTIVE"),
                "{event}"
            );
        }
    }

    #[test]
    fn a_heat_message_that_says_delete_complete_is_a_deletion() {
        let info = record_bodies(HEAT_INFO);
        for (event, state, deleted) in [
            ("orchestration.stack.update.end", "DELETE_COMPLETE", true),
            ("orchestration.stack.delete.start", "DELETE_COMPLETE", true),
            (
                "orchestration.stack.delete.start",
                "DELETE_IN_PROGRESS",
                false,
            ),
            ("orchestration.stack.delete.error", "DELETE_FAILED", false),
        ] {
            let body = rewrite(&info[0], |n| {
                n["event_type"] = event.into();
                n["payload"]["state"] = state.into();
            });
            let e = if deleted {
                delete(&body, Families::all())
            } else {
                upsert(&body, Families::all())
            };
            assert_eq!(e.state(), Some(state), "{event}");
        }
    }

    #[test]
    fn the_unwrapped_form_of_the_older_driver_is_accepted() {
        for (sample, event, uuid) in [
            (
                SAMPLE_CREATE,
                "instance.create.end",
                "178b0921-8f85-4257-88b6-2e743b5a975c",
            ),
            (
                SAMPLE_UPDATE,
                "instance.update",
                "c03c0bf9-f46e-4e4f-93f1-817568567ee2",
            ),
            (
                SAMPLE_DELETE,
                "instance.delete.end",
                "178b0921-8f85-4257-88b6-2e743b5a975c",
            ),
        ] {
            // The upstream samples are the bare notification, without the fields oslo adds.
            let mut n: Value = serde_json::from_str(sample).unwrap();
            let err = interpret(n.to_string().as_bytes(), Families::all()).unwrap_err();
            assert!(err.reason.contains("timestamp"), "{err}");
            n["message_id"] = "m-1".into();
            n["timestamp"] = "2026-11-25 02:26:16".into();
            let (c, id) = change(&n.to_string(), Families::all());
            assert_eq!(id.as_deref(), Some("m-1"));
            let e = match c {
                Change::Upsert(e) | Change::Delete(e) => e,
            };
            assert_eq!(e.entity_type(), NOVA_INSTANCE, "{event}");
            assert_eq!(e.id(), uuid);
            assert_eq!(e.project(), Some("6f70656e737461636b20342065766572"));
            assert_eq!(e.source_updated_micros(), Some(1_795_573_576_000_000));
            assert_eq!(e.relations()[0].other(), "nova.host:compute");
        }
        let (c, _) = change(
            &{
                let mut n: Value = serde_json::from_str(SAMPLE_DELETE).unwrap();
                n["timestamp"] = "2026-11-25 02:26:16.207914".into();
                n.to_string()
            },
            Families::all(),
        );
        assert!(matches!(c, Change::Delete(_)));
    }

    #[test]
    fn malformed_messages_say_why() {
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "not an oslo.messaging JSON object"),
            ("[1,2]".into(), "not an oslo.messaging JSON object"),
            (
                r#"{"oslo.version": "2.0", "oslo.message": "{broken"}"#.into(),
                "`oslo.message` is not a JSON notification",
            ),
            (
                rewrite(V_CREATE, |n| n["event_type"] = Value::Null),
                "no `event_type`",
            ),
            (
                rewrite(V_CREATE, |n| n["timestamp"] = "yesterday".into()),
                "is not a date and time",
            ),
            (
                rewrite(V_CREATE, |n| {
                    n.as_object_mut().unwrap().remove("payload");
                }),
                "no `payload`",
            ),
            (
                rewrite(V_CREATE, |n| {
                    n["payload"]["nova_object.data"]["uuid"] = Value::Null
                }),
                "no instance `uuid`",
            ),
            (
                rewrite(V_CREATE, |n| n["payload"] = serde_json::json!({"x": 1})),
                "no `nova_object.data`",
            ),
            (
                rewrite(V_CREATE, |n| {
                    n["payload"]["nova_object.data"]["state"] = 5.into()
                }),
                "payload does not parse",
            ),
            (
                rewrite(L_CREATE, |n| n["payload"]["instance_id"] = "".into()),
                "no `instance_id`",
            ),
        ];
        for (body, why) in cases {
            let err = interpret(body.as_bytes(), Families::all()).unwrap_err();
            assert!(err.reason.contains(why), "{why:?} not in {err}");
        }
        let err = interpret(
            rewrite(V_CREATE, |n| n["timestamp"] = "x".into()).as_bytes(),
            Families::all(),
        )
        .unwrap_err();
        assert_eq!(
            err.message_id.as_deref(),
            Some("ccd2fd7f-5ab5-4bdb-9412-5d6dd8774cb6")
        );
        assert_eq!(err.event_type.as_deref(), Some("instance.create.end"));
    }

    #[test]
    fn malformed_reasons_are_bounded() {
        // A reason quotes the message (a timestamp, a payload string, whole): unbounded,
        // it no longer fits in the dead-letter copy's headers (fuzz target `bus_message`).
        let long = "é".repeat(100_000);
        let bodies = [
            rewrite(V_CREATE, |n| n["timestamp"] = long.as_str().into()),
            rewrite(V_CREATE, |n| {
                n["payload"]["nova_object.data"] = long.as_str().into()
            }),
            // An inner notification that is a JSON string: serde quotes it whole.
            format!(r#"{{"oslo.message": "\"{long}\""}}"#),
            rewrite(V_CREATE, |n| {
                n["message_id"] = long.as_str().into();
                n["event_type"] = format!("instance.{long}").into();
                n["timestamp"] = "x".into();
            }),
        ];
        for (i, body) in bodies.iter().enumerate() {
            let err = interpret(body.as_bytes(), Families::all()).unwrap_err();
            assert!(err.reason.len() <= MAX_REASON, "{}", err.reason.len());
            // The first three quote the long text, cut; the last only its own `x`.
            assert_eq!(err.reason.contains('…'), i < 3, "{}", err.reason);
            assert!(err.event_type.as_ref().is_none_or(|t| t.len() <= MAX_FIELD));
            assert!(err.message_id.as_ref().is_none_or(|t| t.len() <= MAX_FIELD));
        }
    }

    #[test]
    fn a_field_of_the_wrong_type_keeps_the_message_id() {
        const ID: &str = "ccd2fd7f-5ab5-4bdb-9412-5d6dd8774cb6";
        // v2: a top-level field of the notification (inside `oslo.message`) of the
        // wrong type makes the strict parse fail.
        for (field, value) in [
            ("timestamp", serde_json::json!(1_795_573_576)),
            ("event_type", serde_json::json!(["instance.create.end"])),
            ("message_id", serde_json::json!(42)),
            ("_unique_id", serde_json::json!({"x": 1})),
        ] {
            let body = rewrite(V_CREATE, |n| n[field] = value.clone());
            let err = interpret(body.as_bytes(), Families::all()).unwrap_err();
            assert!(
                err.reason
                    .starts_with("`oslo.message` is not a JSON notification"),
                "{field}: {}",
                err.reason
            );
            let want = if field == "message_id" { "42" } else { ID };
            assert_eq!(err.message_id.as_deref(), Some(want), "{field}");
            let want_event = (field != "event_type").then_some("instance.create.end");
            assert_eq!(err.event_type.as_deref(), want_event, "{field}");
        }
        // Without `message_id`, `_unique_id`.
        let body = rewrite(V_CREATE, |n| {
            n.as_object_mut().unwrap().remove("message_id");
            n["timestamp"] = serde_json::json!(false);
        });
        let err = interpret(body.as_bytes(), Families::all()).unwrap_err();
        assert_eq!(
            err.message_id.as_deref(),
            Some("e7ae7895abcc4f10b3797bbb342829b3")
        );
        // A well-formed message whose only problem is downstream keeps `_unique_id` too.
        let body = rewrite(V_CREATE, |n| {
            n.as_object_mut().unwrap().remove("message_id");
            n["timestamp"] = "x".into();
        });
        let err = interpret(body.as_bytes(), Families::all()).unwrap_err();
        assert_eq!(
            err.message_id.as_deref(),
            Some("e7ae7895abcc4f10b3797bbb342829b3")
        );
        // v1 (the `messaging` driver's unwrapped notification): the id at the top level.
        let inner: Value = {
            let env: Value = serde_json::from_str(V_CREATE).unwrap();
            let mut n: Value = serde_json::from_str(env["oslo.message"].as_str().unwrap()).unwrap();
            n["payload"] = serde_json::json!({"nova_object.data": {"uuid": "u"}});
            n["timestamp"] = serde_json::json!(7);
            n
        };
        let err = interpret(inner.to_string().as_bytes(), Families::all()).unwrap_err();
        assert!(
            err.reason
                .starts_with("body is not an oslo.messaging JSON object"),
            "{}",
            err.reason
        );
        assert_eq!(err.message_id.as_deref(), Some(ID));
        assert_eq!(err.event_type.as_deref(), Some("instance.create.end"));
        // The envelope's `oslo.message` of the wrong type: no notification, no id.
        let err = interpret(
            br#"{"oslo.version": "2.0", "oslo.message": 5}"#,
            Families::all(),
        )
        .unwrap_err();
        assert_eq!((err.message_id, err.event_type), (None, None));
        // Not JSON at all.
        let err = interpret(b"{not json", Families::all()).unwrap_err();
        assert_eq!((err.message_id, err.event_type), (None, None));
        // Long ids are cut.
        let long = "m".repeat(10_000);
        let body = rewrite(V_CREATE, |n| {
            n["message_id"] = long.as_str().into();
            n["timestamp"] = serde_json::json!(1);
        });
        let err = interpret(body.as_bytes(), Families::all()).unwrap_err();
        assert!(
            err.message_id
                .as_ref()
                .is_some_and(|m| m.len() <= MAX_FIELD)
        );
    }

    #[test]
    fn compressed_bodies_are_interpreted_like_plain_ones() {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(V_CREATE.as_bytes()).unwrap();
        let z = z.finish().unwrap();
        let plain = interpret(V_CREATE.as_bytes(), Families::all()).unwrap();
        let unzipped =
            interpret_message(&z, Some("application/x-gzip"), 1 << 20, Families::all()).unwrap();
        assert_eq!(unzipped.dedup_id, plain.dedup_id);
        assert_eq!(
            format!("{:?}", unzipped.interpretation),
            format!("{:?}", plain.interpretation)
        );
        // Compressed but not said so: not JSON.
        let err = interpret_message(&z, None, 1 << 20, Families::all()).unwrap_err();
        assert!(
            err.reason
                .starts_with("body is not an oslo.messaging JSON object")
        );
        // Larger than the limit once decompressed.
        let err =
            interpret_message(&z, Some("application/x-gzip"), 100, Families::all()).unwrap_err();
        assert!(
            err.reason.contains("max_decompressed_bytes = 100"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn unique_id_is_the_dedup_key_without_message_id() {
        let body = rewrite(V_CREATE, |n| {
            n.as_object_mut().unwrap().remove("message_id");
        });
        let n = interpret(body.as_bytes(), Families::all()).unwrap();
        assert_eq!(
            n.dedup_id.as_deref(),
            Some("e7ae7895abcc4f10b3797bbb342829b3")
        );
    }
}
