//! One model of a Cinder volume as a `cinder.volume` entity, shared by every source that
//! reports one: the Cinder collector (`GET /v3/volumes/detail`) and the bus plugin
//! (Cinder's `volume.*` notifications).
//!
//! As for [`crate::nova_instance`], the host's baseline compares entities by their content
//! hash: both sources fill a [`CinderVolume`] and [`CinderVolume::into_entity`] builds the
//! entity one way, so that a poll of the state a notification reported changes nothing.
//!
//! The entity:
//! - key `cinder.volume:<uuid>`, name = `name` (API) / `display_name` (notification),
//!   state = `status` (`available`, `in-use`, `error`, `creating`, `attaching`,
//!   `detaching`, `deleting`, `reserved`, `error_deleting`, ...), project =
//!   `os-vol-tenant-attr:tenant_id` / `tenant_id`, source timestamp = the API's
//!   `updated_at` or the notification's `timestamp`;
//! - one relation `this --attached--> nova.instance:<server>` per attached server (API
//!   `attachments[].server_id`, notification `volume_attachment[].instance_uuid` of rows
//!   whose `attach_status` is `attached`), the direction of Vitrage's cinder transformer;
//! - the properties [`PROPERTIES`], always all of them, `null` when unknown: `size`
//!   (GiB), `volume_type_id` (the API's `volume_type_id`, microversion 3.63 and later;
//!   the notification's `volume_type`, which is the type's id), `availability_zone`,
//!   `host` (`os-vol-host-attr:host` / `host`, `backend@pool#pool`), `user_id`,
//!   `created_at` (written `2026-12-01T21:50:40Z`), `metadata` (an object: the API's
//!   dict without [`ADMIN_METADATA`], the notification's list of `{key, value}`), and `attachments` (the attached
//!   servers' ids, sorted).
//!
//! Left out because one source lacks them (every poll after a notification would report
//! an update otherwise): `bootable` and `encrypted` and `multiattach` (not in
//! notifications), the type's *name* (the API's `volume_type`; notifications carry only
//! the id), `description`, `launched_at`, `snapshot_id`/`source_volid`, the attachment
//! rows' details (device, attach time, connection info).
//!
//! A deleted volume is no entity: the API does not list it (a `GET` of it is a 404);
//! `volume.delete.end` and any notification whose `status` is `deleted` are deletions.

use serde::Deserialize;
use serde_json::{Map, Value};
use synchronizer_plugin_api::{Entity, Relation};

use crate::time::{format_isotime, parse_timestamp};

/// Entity type of a Cinder volume.
pub const VOLUME: &str = "cinder.volume";
/// The kind of the relation from a volume to the servers it is attached to.
pub const ATTACHED: &str = "attached";
/// Entity type at the other end of the relation.
pub const INSTANCE: &str = crate::nova_instance::INSTANCE;

/// The properties of every `cinder.volume` entity, whichever source built it.
pub const PROPERTIES: &[&str] = &[
    "size",
    "volume_type_id",
    "availability_zone",
    "host",
    "user_id",
    "created_at",
    "metadata",
    "attachments",
];

/// Keys of the volume's *admin* metadata that Cinder's API merges into `metadata` for an
/// admin (`readonly`, `attached_mode`, set by Cinder itself on attach) and that its
/// notifications never carry: left out of the `metadata` property.
pub const ADMIN_METADATA: &[&str] = &["readonly", "attached_mode"];

/// The status of a volume Cinder has deleted (`volume.delete.end` carries it).
pub const DELETED_STATUS: &str = "deleted";

/// The event types of Cinder's volume notifications this model reads: those Vitrage 15's
/// cinder driver lists (`vitrage/datasources/cinder/volume/driver.py`), and
/// `volume.update.end`. A `*.start` carries the volume as it is when the operation begins
/// (`creating`, `attaching` / `reserved`, `detaching`, `deleting`).
pub const EVENT_TYPES: &[&str] = &[
    "volume.create.start",
    "volume.create.end",
    "volume.update.start",
    "volume.update.end",
    "volume.attach.start",
    "volume.attach.end",
    "volume.detach.start",
    "volume.detach.end",
    "volume.delete.start",
    "volume.delete.end",
];

/// What a source knows of one volume. Empty strings count as absent.
#[derive(Clone, Debug, Default)]
pub struct CinderVolume<'a> {
    /// The volume's uuid.
    pub id: &'a str,
    /// `name` / `display_name`.
    pub name: Option<&'a str>,
    /// `status`.
    pub status: Option<&'a str>,
    /// The owning project.
    pub project: Option<&'a str>,
    /// Size in GiB.
    pub size: Option<u64>,
    /// The volume type's id.
    pub volume_type_id: Option<&'a str>,
    /// `availability_zone`.
    pub availability_zone: Option<&'a str>,
    /// The backend host (`os-vol-host-attr:host` / `host`).
    pub host: Option<&'a str>,
    /// `user_id`.
    pub user_id: Option<&'a str>,
    /// `created_at`, in any shape [`parse_timestamp`] reads.
    pub created_at: Option<&'a str>,
    /// The metadata as an object.
    pub metadata: Map<String, Value>,
    /// The ids of the servers the volume is attached to.
    pub servers: Vec<&'a str>,
    /// The source timestamp, microseconds since the Unix epoch.
    pub updated_us: Option<i64>,
}

fn present(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

fn text(s: Option<&str>) -> Value {
    present(s).map_or(Value::Null, |s| Value::String(s.to_owned()))
}

/// `created_at` in whole seconds, `2026-12-01T21:50:40Z`; kept as is when it does not
/// parse.
pub(crate) fn normalised_time(t: Option<&str>) -> Value {
    match present(t) {
        Some(t) => match parse_timestamp(t) {
            Some(us) => Value::String(format_isotime(us)),
            None => Value::String(t.to_owned()),
        },
        None => Value::Null,
    }
}

impl CinderVolume<'_> {
    /// Whether the source says the volume is deleted.
    pub fn is_deleted(&self) -> bool {
        self.status == Some(DELETED_STATUS)
    }

    /// The `cinder.volume` entity (see the module docs for its shape).
    pub fn into_entity(self) -> Entity {
        let mut e = Entity::resource(VOLUME, self.id).with_name(self.name.unwrap_or_default());
        if let Some(status) = present(self.status) {
            e = e.with_state(status);
        }
        if let Some(project) = present(self.project) {
            e = e.with_project(project);
        }
        if let Some(ts) = self.updated_us {
            e = e.with_source_updated_micros(ts);
        }
        let mut servers: Vec<&str> = self.servers.into_iter().filter(|s| !s.is_empty()).collect();
        servers.sort_unstable();
        servers.dedup();
        for s in &servers {
            e = e.with_relation(Relation::to(ATTACHED, format!("{INSTANCE}:{s}")));
        }
        let mut metadata = self.metadata;
        for key in ADMIN_METADATA {
            metadata.remove(*key);
        }
        let mut props = Map::new();
        props.insert("size".into(), self.size.map_or(Value::Null, Value::from));
        props.insert("volume_type_id".into(), text(self.volume_type_id));
        props.insert("availability_zone".into(), text(self.availability_zone));
        props.insert("host".into(), text(self.host));
        props.insert("user_id".into(), text(self.user_id));
        props.insert("created_at".into(), normalised_time(self.created_at));
        props.insert("metadata".into(), Value::Object(metadata));
        props.insert(
            "attachments".into(),
            Value::Array(servers.iter().map(|s| Value::from(*s)).collect()),
        );
        e.with_properties(Value::Object(props))
    }
}

/// A size as Cinder writes it (an integer; tolerated: a float or a numeric string).
fn size_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An object's string values only (Cinder's metadata is string to string).
fn metadata_object(v: Option<&Value>) -> Map<String, Value> {
    match v {
        Some(Value::Object(m)) => m.clone(),
        // Notifications: `[{"key": k, "value": v}, ...]`.
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| {
                let k = i.get("key")?.as_str()?;
                Some((k.to_owned(), i.get("value").cloned().unwrap_or(Value::Null)))
            })
            .collect(),
        _ => Map::new(),
    }
}

/// One attachment of the API's `attachments`.
#[derive(Clone, Debug, Deserialize)]
struct ApiAttachment {
    #[serde(default)]
    server_id: Option<String>,
}

/// One volume of Cinder's `GET /v3/volumes/detail` (or `GET /v3/volumes/{id}`): the
/// fields the model takes, under their API names. Other fields are skipped while parsing.
#[derive(Clone, Debug, Deserialize)]
pub struct ApiVolume {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(rename = "os-vol-tenant-attr:tenant_id", default)]
    tenant_id: Option<String>,
    #[serde(default)]
    size: Value,
    #[serde(default)]
    volume_type_id: Option<String>,
    #[serde(default)]
    availability_zone: Option<String>,
    #[serde(rename = "os-vol-host-attr:host", default)]
    host: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    attachments: Option<Vec<ApiAttachment>>,
}

impl ApiVolume {
    /// Whether Cinder lists the volume as deleted (it does not, normally).
    pub fn is_deleted(&self) -> bool {
        self.status.as_deref() == Some(DELETED_STATUS)
    }

    /// The volume's `cinder.volume` entity: source timestamp = `updated_at`.
    pub fn into_entity(self) -> Entity {
        let servers: Vec<&str> = self
            .attachments
            .iter()
            .flatten()
            .filter_map(|a| a.server_id.as_deref())
            .collect();
        CinderVolume {
            id: &self.id,
            name: self.name.as_deref(),
            status: self.status.as_deref(),
            project: self.tenant_id.as_deref(),
            size: size_of(&self.size),
            volume_type_id: self.volume_type_id.as_deref(),
            availability_zone: self.availability_zone.as_deref(),
            host: self.host.as_deref(),
            user_id: self.user_id.as_deref(),
            created_at: self.created_at.as_deref(),
            metadata: metadata_object(self.metadata.as_ref()),
            servers,
            updated_us: self.updated_at.as_deref().and_then(parse_timestamp),
        }
        .into_entity()
    }
}

/// One row of a notification's `volume_attachment`.
#[derive(Clone, Debug, Deserialize)]
struct NotifiedAttachment {
    #[serde(default)]
    instance_uuid: Option<String>,
    #[serde(default)]
    attach_status: Option<String>,
}

/// The payload of Cinder's `volume.*` notifications (`_usage_from_volume`): the fields
/// the model takes.
#[derive(Clone, Debug, Deserialize)]
pub struct NotifiedVolume {
    #[serde(default)]
    volume_id: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    size: Value,
    #[serde(default)]
    volume_type: Option<String>,
    #[serde(default)]
    availability_zone: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    volume_attachment: Option<Vec<NotifiedAttachment>>,
}

impl NotifiedVolume {
    /// The change a `volume.*` notification of `event_type` sent at `at_us` describes:
    /// `(true, entity)` for a deletion (`volume.delete.end`, or a payload whose status
    /// is `deleted`), `(false, entity)` for an upsert; an error when the payload names no
    /// volume.
    pub fn into_change(self, event_type: &str, at_us: i64) -> Result<(bool, Entity), String> {
        let Some(id) = present(self.volume_id.as_deref()) else {
            return Err("payload has no `volume_id`".into());
        };
        // The API lists only attachments in `attached` state (`attaching` rows of a
        // `volume.attach.start` are not attachments yet).
        let servers: Vec<&str> = self
            .volume_attachment
            .iter()
            .flatten()
            .filter(|a| a.attach_status.as_deref() == Some("attached"))
            .filter_map(|a| a.instance_uuid.as_deref())
            .collect();
        let volume = CinderVolume {
            id,
            name: self.display_name.as_deref(),
            status: self.status.as_deref(),
            project: self.tenant_id.as_deref(),
            size: size_of(&self.size),
            volume_type_id: self.volume_type.as_deref(),
            availability_zone: self.availability_zone.as_deref(),
            host: self.host.as_deref(),
            user_id: self.user_id.as_deref(),
            created_at: self.created_at.as_deref(),
            metadata: metadata_object(self.metadata.as_ref()),
            servers,
            updated_us: Some(at_us),
        };
        let delete = event_type == "volume.delete.end" || volume.is_deleted();
        Ok((delete, volume.into_entity()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn api_and_notification_give_the_same_entity() {
        let api: ApiVolume = serde_json::from_value(json!({
            "id": "v1", "name": "vol", "status": "in-use", "size": 1,
            "os-vol-tenant-attr:tenant_id": "p", "volume_type_id": "t",
            "availability_zone": "nova", "os-vol-host-attr:host": "h@b#b",
            "user_id": "u", "created_at": "2026-12-01T21:50:40.000000",
            "updated_at": "2026-12-01T21:50:43.000000",
            "metadata": {"role": "db"}, "bootable": "false",
            "attachments": [{"id": "v1", "attachment_id": "a", "server_id": "s1"}]
        }))
        .unwrap();
        let notified: NotifiedVolume = serde_json::from_value(json!({
            "volume_id": "v1", "display_name": "vol", "status": "in-use", "size": 1,
            "tenant_id": "p", "volume_type": "t", "availability_zone": "nova",
            "host": "h@b#b", "user_id": "u", "created_at": "2026-12-01T21:50:40+00:00",
            "metadata": [{"key": "role", "value": "db"}],
            "volume_attachment": [
                {"instance_uuid": "s1", "attach_status": "attached"},
                {"instance_uuid": "s2", "attach_status": "attaching"}
            ]
        }))
        .unwrap();
        let a = api.into_entity();
        let (delete, n) = notified.into_change("volume.attach.end", 5).unwrap();
        assert!(!delete);
        assert_eq!(a.content_hash(), n.content_hash());
        assert_eq!(a.relations().len(), 1);
        assert_eq!(a.relations()[0].other(), "nova.instance:s1");
        let keys: Vec<String> = a
            .properties()
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let mut expected: Vec<&str> = PROPERTIES.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }

    #[test]
    fn delete_end_and_status_deleted_are_deletions() {
        let n = |status: &str| -> NotifiedVolume {
            serde_json::from_value(json!({"volume_id": "v", "status": status})).unwrap()
        };
        assert!(n("deleting").into_change("volume.delete.end", 1).unwrap().0);
        assert!(n("deleted").into_change("volume.update.end", 1).unwrap().0);
        assert!(
            !n("deleting")
                .into_change("volume.delete.start", 1)
                .unwrap()
                .0
        );
        let none: NotifiedVolume = serde_json::from_value(json!({"status": "x"})).unwrap();
        assert!(none.into_change("volume.create.end", 1).is_err());
    }
}
