//! One model of a Nova server as a `nova.instance` entity, shared by every source that
//! reports one: the Nova collector (`GET /servers/detail`) and the bus plugin (Nova's
//! versioned `instance.*` and legacy `compute.instance.*` notifications).
//!
//! The host's baseline compares entities by [`Entity::content_hash`], which covers the
//! name, state, project, relations and properties. When two sources describe the same
//! server differently (a state spelled `ACTIVE` by one and `active` by the other, a
//! property only one of them has), every poll after a notification reports an update
//! that is not one, and the next notification flips it back. So each source fills a
//! [`NovaInstance`] with what it read (the collector through [`ApiServer`], the bus
//! plugin from its payloads), and [`NovaInstance::into_entity`] builds the entity one way
//! for all of them.
//!
//! The entity:
//! - key `nova.instance:<uuid>`, name = the server's name (`display_name`), project =
//!   `tenant_id`, source timestamp = the API's `updated` or the notification's
//!   `timestamp`;
//! - state = the API's `status` (`ACTIVE`, `SHUTOFF`, `REBOOT`, ...). A notification
//!   carries the vm state and task state instead; [`status_from_state`] derives the
//!   status from them exactly as Nova's API does;
//! - relation `nova.host:<host> --contains--> this` while the server has a host;
//! - the properties [`PROPERTIES`], always all of them, `null` when unknown. They are the
//!   fields that the API and both notification forms carry, normalised to one spelling:
//!   empty strings are `null`, `created_at` is written `2026-11-25T08:37:35Z`;
//! - and `instance_name` (`OS-EXT-SRV-ATTR:instance_name`, the libvirt domain name
//!   `instance-0000000a` that a Prometheus alert's `domain` label holds), which only the
//!   API (to an admin) and the versioned `instance.create.end` carry. A source that does
//!   not carry the field leaves it out and marks it kept
//!   ([`Entity::with_kept_properties`]): the host keeps the value it holds, so a
//!   notification never flips what the collector or the create notification set. The API
//!   without the field (a token without the admin role) writes it `null`, and so does
//!   every source for a server without a host: it has no domain, and Nova numbers
//!   instances per cell, so a server never scheduled (in cell0) shares its name with one
//!   that was (seen on the real Nova 30.3).
//!
//! A server Nova has deleted is no entity: [`is_deleted`] says which servers those are,
//! whatever the source (vm state `deleted` or `soft-delete`, status `DELETED` or
//! `SOFT_DELETED`). The collector leaves them out of its snapshot and the bus plugin
//! turns any notification about one into a deletion, so that no source ever reports a
//! deleted server as an entity in state `DELETED` (which would re-create it after its
//! deletion).
//!
//! Left out because one of the sources lacks them, so that the hashes can agree:
//! `power_state` (legacy notifications have none), flavor id (the API from microversion
//! 2.47 on has only the name), `launched_at` (notifications carry it with a precision the
//! database does not keep), `addresses`, `fault`, `tags`, `locked`, `host_status`, the
//! volumes attached (only some sources have them, in other shapes).

use serde::Deserialize;
use serde_json::{Map, Value};
use synchronizer_plugin_api::{Entity, Relation};

use crate::time::{format_isotime, parse_timestamp};

/// Entity type of a Nova server.
pub const INSTANCE: &str = "nova.instance";
/// Entity type of a compute host (the other end of an instance's relation).
pub const HOST: &str = "nova.host";
/// The kind of the relation from a host to its instances.
pub const CONTAINS: &str = "contains";

/// The properties of every `nova.instance` entity, whichever source built it.
pub const PROPERTIES: &[&str] = &[
    "vm_state",
    "task_state",
    "availability_zone",
    "host",
    "node",
    "flavor",
    "image_id",
    "user_id",
    "created_at",
    "metadata",
];

/// The property only some sources carry (see the module docs); [`NovaInstance`] leaves it
/// out and marks it kept when the source does not carry it.
pub const INSTANCE_NAME: &str = "instance_name";

/// The vm states of a server Nova has deleted: `deleted`, and `soft-delete` (deleted,
/// and reclaimed after `[DEFAULT] reclaim_instance_interval` unless restored first). These
/// are the values of `nova.compute.vm_states` in Nova 30.3, which both the versioned
/// payload's `state` and the legacy payload's `state` carry.
pub const DELETED_VM_STATES: [&str; 2] = ["deleted", "soft-delete"];

/// The API statuses of such servers (`status_from_state` of [`DELETED_VM_STATES`]).
/// `GET /servers/detail` lists a server as `DELETED` for a moment while it is being
/// deleted, `SOFT_DELETED` until it is reclaimed.
pub const DELETED_STATUSES: [&str; 2] = ["DELETED", "SOFT_DELETED"];

/// Whether a server with this vm state or this API status is deleted (either is enough;
/// both may be unknown).
pub fn is_deleted(vm_state: Option<&str>, status: Option<&str>) -> bool {
    vm_state.is_some_and(|v| DELETED_VM_STATES.contains(&v))
        || status.is_some_and(|s| DELETED_STATUSES.contains(&s))
}

/// What a source knows of one server. Text fields are as the source writes them; empty
/// strings count as absent.
#[derive(Clone, Debug, Default)]
pub struct NovaInstance<'a> {
    /// The server's uuid.
    pub id: &'a str,
    /// `name` / `display_name`.
    pub name: Option<&'a str>,
    /// The API's `status`; a notification's is [`status_from_state`] of its states.
    pub status: Option<&'a str>,
    /// `OS-EXT-STS:vm_state` / `state` (`active`, `stopped`, `soft-delete`, ...).
    pub vm_state: Option<&'a str>,
    /// `OS-EXT-STS:task_state` / `task_state` / legacy `state_description`.
    pub task_state: Option<&'a str>,
    /// `tenant_id`.
    pub project: Option<&'a str>,
    /// `user_id`.
    pub user_id: Option<&'a str>,
    /// `OS-EXT-SRV-ATTR:host` / `host`: the compute host.
    pub host: Option<&'a str>,
    /// `OS-EXT-SRV-ATTR:hypervisor_hostname` / `node`.
    pub node: Option<&'a str>,
    /// `OS-EXT-AZ:availability_zone` / `availability_zone`.
    pub availability_zone: Option<&'a str>,
    /// The flavor's name: `flavor.original_name` (API, microversion 2.47 and later),
    /// versioned `flavor.name`, legacy `instance_type`.
    pub flavor: Option<&'a str>,
    /// `image.id` / `image_uuid` / legacy `image_meta.base_image_ref`.
    pub image_id: Option<&'a str>,
    /// `created` / `created_at`, in any shape [`parse_timestamp`] reads.
    pub created_at: Option<&'a str>,
    /// The server's metadata (an object; anything else counts as none).
    pub metadata: Option<Value>,
    /// `OS-EXT-SRV-ATTR:instance_name` / versioned `instance_name`: `None` when the
    /// source does not carry the field (every notification but the versioned
    /// `instance.create.end`), `Some(None)` when it carries it empty or the API leaves it
    /// out.
    pub instance_name: Option<Option<&'a str>>,
    /// The source timestamp, microseconds since the Unix epoch.
    pub updated_us: Option<i64>,
}

fn present(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

fn text(s: Option<&str>) -> Value {
    present(s).map_or(Value::Null, |s| Value::String(s.to_owned()))
}

impl NovaInstance<'_> {
    /// Whether the source says the server is deleted ([`is_deleted`]).
    pub fn is_deleted(&self) -> bool {
        is_deleted(self.vm_state, self.status)
    }

    /// The `nova.instance` entity (see the module docs for its shape).
    pub fn into_entity(self) -> Entity {
        let mut e = Entity::resource(INSTANCE, self.id).with_name(self.name.unwrap_or_default());
        if let Some(status) = present(self.status) {
            e = e.with_state(status);
        }
        if let Some(project) = present(self.project) {
            e = e.with_project(project);
        }
        if let Some(ts) = self.updated_us {
            e = e.with_source_updated_micros(ts);
        }
        if let Some(host) = present(self.host) {
            e = e.with_relation(Relation::from(CONTAINS, format!("{HOST}:{host}")));
        }
        // Whole seconds, as Nova's API and versioned notifications write it (the legacy
        // form writes `2026-11-25 08:37:35+00:00`).
        let created_at = match present(self.created_at) {
            Some(t) => match parse_timestamp(t) {
                Some(us) => Value::String(format_isotime(us)),
                None => {
                    tracing::debug!(
                        instance = self.id,
                        created_at = t,
                        "created_at is not a timestamp; kept as is"
                    );
                    Value::String(t.to_owned())
                }
            },
            None => Value::Null,
        };
        let metadata = match self.metadata {
            Some(Value::Object(m)) => Value::Object(m),
            _ => Value::Object(Map::new()),
        };
        let mut props = Map::new();
        props.insert("vm_state".into(), text(self.vm_state));
        props.insert("task_state".into(), text(self.task_state));
        props.insert("availability_zone".into(), text(self.availability_zone));
        props.insert("host".into(), text(self.host));
        props.insert("node".into(), text(self.node));
        props.insert("flavor".into(), text(self.flavor));
        props.insert("image_id".into(), text(self.image_id));
        props.insert("user_id".into(), text(self.user_id));
        props.insert("created_at".into(), created_at);
        props.insert("metadata".into(), metadata);
        // A server without a host has no domain: null, from every source. (Nova numbers
        // instances per cell database, so a server that was never scheduled, in cell0,
        // has the same name as one in cell1: in the captured listing vm-b3-err, in
        // ERROR without a host, is `instance-00000001` like vm-a1.)
        let instance_name = match present(self.host) {
            Some(_) => self.instance_name,
            None => Some(None),
        };
        match instance_name {
            Some(name) => {
                props.insert(INSTANCE_NAME.into(), text(name));
                e.with_properties(Value::Object(props))
            }
            None => e
                .with_properties(Value::Object(props))
                .with_kept_properties(&[INSTANCE_NAME]),
        }
    }
}

/// One server of Nova's `GET /servers/detail` (or `GET /servers/{id}`): the fields the
/// model takes, under their API names. Other fields are skipped while parsing. The Nova
/// collector parses its pages into these.
#[derive(Clone, Debug, Deserialize)]
pub struct ApiServer {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    updated: Option<String>,
    #[serde(default)]
    created: Option<String>,
    #[serde(rename = "OS-EXT-STS:vm_state", default)]
    vm_state: Option<String>,
    #[serde(rename = "OS-EXT-STS:task_state", default)]
    task_state: Option<String>,
    #[serde(rename = "OS-EXT-AZ:availability_zone", default)]
    availability_zone: Option<String>,
    #[serde(rename = "OS-EXT-SRV-ATTR:host", default)]
    host: Option<String>,
    #[serde(rename = "OS-EXT-SRV-ATTR:hypervisor_hostname", default)]
    hypervisor_hostname: Option<String>,
    #[serde(rename = "OS-EXT-SRV-ATTR:instance_name", default)]
    instance_name: Option<String>,
    /// `{"original_name": ...}` from microversion 2.47 on, `{"id": ..., "links": ...}`
    /// before.
    #[serde(default)]
    flavor: Value,
    /// `{"id": ..., "links": ...}`, or `""` for a server booted from a volume.
    #[serde(default)]
    image: Value,
    #[serde(default)]
    metadata: Option<Value>,
}

impl ApiServer {
    /// Whether Nova lists the server as deleted ([`is_deleted`]): such a server is no
    /// entity.
    pub fn is_deleted(&self) -> bool {
        is_deleted(self.vm_state.as_deref(), self.status.as_deref())
    }

    /// The server's `nova.instance` entity: state = the API's `status`, source timestamp
    /// = `updated`.
    pub fn into_entity(self) -> Entity {
        let field = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        let flavor = field(&self.flavor, "original_name");
        let image_id = field(&self.image, "id");
        NovaInstance {
            id: &self.id,
            name: self.name.as_deref(),
            status: self.status.as_deref(),
            vm_state: self.vm_state.as_deref(),
            task_state: self.task_state.as_deref(),
            project: self.tenant_id.as_deref(),
            user_id: self.user_id.as_deref(),
            host: self.host.as_deref(),
            node: self.hypervisor_hostname.as_deref(),
            availability_zone: self.availability_zone.as_deref(),
            flavor: flavor.as_deref(),
            image_id: image_id.as_deref(),
            created_at: self.created.as_deref(),
            metadata: self.metadata,
            instance_name: Some(self.instance_name.as_deref()),
            updated_us: self.updated.as_deref().and_then(parse_timestamp),
        }
        .into_entity()
    }
}

/// The status Nova's API shows for a server in `vm_state` with `task_state`: a port of
/// `_STATE_MAP` and `status_from_state` in nova/api/openstack/common.py (Nova 30.3,
/// 2024.2; unchanged since the 2013 reboot states). An unknown vm state is `UNKNOWN`, as
/// there; a task state without an entry of its own gives the vm state's default.
pub fn status_from_state(vm_state: Option<&str>, task_state: Option<&str>) -> &'static str {
    let task = task_state.unwrap_or("");
    let resize = matches!(
        task,
        "resize_prep" | "resize_migrating" | "resize_migrated" | "resize_finish"
    );
    let rebuild = matches!(
        task,
        "rebuilding" | "rebuild_block_device_mapping" | "rebuild_spawning"
    );
    match vm_state.unwrap_or("") {
        "active" => match task {
            "rebooting" | "reboot_pending" | "reboot_started" => "REBOOT",
            "rebooting_hard" | "reboot_pending_hard" | "reboot_started_hard" => "HARD_REBOOT",
            "updating_password" => "PASSWORD",
            "migrating" => "MIGRATING",
            _ if rebuild => "REBUILD",
            _ if resize => "RESIZE",
            _ => "ACTIVE",
        },
        "building" => "BUILD",
        "stopped" if resize => "RESIZE",
        "stopped" if rebuild => "REBUILD",
        "stopped" => "SHUTOFF",
        "resized" if task == "resize_reverting" => "REVERT_RESIZE",
        "resized" => "VERIFY_RESIZE",
        "paused" if task == "migrating" => "MIGRATING",
        "paused" => "PAUSED",
        "suspended" => "SUSPENDED",
        "rescued" => "RESCUE",
        "error" if rebuild => "REBUILD",
        "error" => "ERROR",
        "deleted" => "DELETED",
        // nova.objects.fields.InstanceState.SOFT_DELETED is spelled `soft-delete`.
        "soft-delete" => "SOFT_DELETED",
        "shelved" => "SHELVED",
        "shelved_offloaded" => "SHELVED_OFFLOADED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_of_novas_state_map() {
        // (vm_state, task_state, status): every entry of _STATE_MAP, its defaults, and
        // task states that have no entry of their own.
        let table: &[(&str, Option<&str>, &str)] = &[
            ("active", None, "ACTIVE"),
            ("active", Some("rebooting"), "REBOOT"),
            ("active", Some("reboot_pending"), "REBOOT"),
            ("active", Some("reboot_started"), "REBOOT"),
            ("active", Some("rebooting_hard"), "HARD_REBOOT"),
            ("active", Some("reboot_pending_hard"), "HARD_REBOOT"),
            ("active", Some("reboot_started_hard"), "HARD_REBOOT"),
            ("active", Some("updating_password"), "PASSWORD"),
            ("active", Some("rebuilding"), "REBUILD"),
            ("active", Some("rebuild_block_device_mapping"), "REBUILD"),
            ("active", Some("rebuild_spawning"), "REBUILD"),
            ("active", Some("migrating"), "MIGRATING"),
            ("active", Some("resize_prep"), "RESIZE"),
            ("active", Some("resize_migrating"), "RESIZE"),
            ("active", Some("resize_migrated"), "RESIZE"),
            ("active", Some("resize_finish"), "RESIZE"),
            ("active", Some("image_snapshot"), "ACTIVE"),
            ("active", Some("powering-off"), "ACTIVE"),
            ("active", Some("deleting"), "ACTIVE"),
            ("building", None, "BUILD"),
            ("building", Some("scheduling"), "BUILD"),
            ("building", Some("spawning"), "BUILD"),
            ("stopped", None, "SHUTOFF"),
            ("stopped", Some("powering-on"), "SHUTOFF"),
            ("stopped", Some("resize_prep"), "RESIZE"),
            ("stopped", Some("resize_migrating"), "RESIZE"),
            ("stopped", Some("resize_migrated"), "RESIZE"),
            ("stopped", Some("resize_finish"), "RESIZE"),
            ("stopped", Some("rebuilding"), "REBUILD"),
            ("stopped", Some("rebuild_block_device_mapping"), "REBUILD"),
            ("stopped", Some("rebuild_spawning"), "REBUILD"),
            ("stopped", Some("migrating"), "SHUTOFF"),
            ("resized", None, "VERIFY_RESIZE"),
            ("resized", Some("resize_confirming"), "VERIFY_RESIZE"),
            ("resized", Some("resize_reverting"), "REVERT_RESIZE"),
            ("paused", None, "PAUSED"),
            ("paused", Some("migrating"), "MIGRATING"),
            ("paused", Some("unpausing"), "PAUSED"),
            ("suspended", None, "SUSPENDED"),
            ("suspended", Some("resuming"), "SUSPENDED"),
            ("rescued", None, "RESCUE"),
            ("rescued", Some("unrescuing"), "RESCUE"),
            ("error", None, "ERROR"),
            ("error", Some("rebuilding"), "REBUILD"),
            ("error", Some("rebuild_block_device_mapping"), "REBUILD"),
            ("error", Some("rebuild_spawning"), "REBUILD"),
            ("error", Some("deleting"), "ERROR"),
            ("deleted", None, "DELETED"),
            ("soft-delete", None, "SOFT_DELETED"),
            ("soft-delete", Some("restoring"), "SOFT_DELETED"),
            ("shelved", None, "SHELVED"),
            ("shelved", Some("unshelving"), "SHELVED"),
            ("shelved_offloaded", None, "SHELVED_OFFLOADED"),
            ("shelved_offloaded", Some("unshelving"), "SHELVED_OFFLOADED"),
        ];
        for &(vm, task, status) in table {
            assert_eq!(status_from_state(Some(vm), task), status, "{vm} / {task:?}");
        }
    }

    #[test]
    fn unknown_vm_states_are_unknown() {
        for vm in [
            None,
            Some(""),
            Some("ACTIVE"),
            Some("soft_deleted"),
            Some("x"),
        ] {
            assert_eq!(status_from_state(vm, None), "UNKNOWN", "{vm:?}");
        }
    }

    #[test]
    fn deleted_and_soft_deleted_servers_are_deleted_in_every_spelling_nova_uses() {
        for (vm, status, deleted) in [
            (Some("deleted"), None, true),
            (Some("soft-delete"), None, true),
            (None, Some("DELETED"), true),
            (None, Some("SOFT_DELETED"), true),
            (Some("deleted"), Some("DELETED"), true),
            // Nova's API spells the status with an underscore, the vm state with a dash:
            // neither spelling is the other's.
            (Some("soft_deleted"), None, false),
            (None, Some("SOFT-DELETE"), false),
            (Some("active"), Some("ACTIVE"), false),
            // While Nova deletes it, a server is still ACTIVE (task state `deleting`).
            (Some("active"), None, false),
            (Some("stopped"), Some("SHUTOFF"), false),
            (Some("shelved_offloaded"), Some("SHELVED_OFFLOADED"), false),
            (Some("error"), Some("ERROR"), false),
            (None, None, false),
        ] {
            assert_eq!(is_deleted(vm, status), deleted, "{vm:?} / {status:?}");
        }
        for vm in DELETED_VM_STATES {
            let status = status_from_state(Some(vm), None);
            assert!(DELETED_STATUSES.contains(&status), "{vm} -> {status}");
        }
        let notified = NovaInstance {
            id: "x",
            vm_state: Some("soft-delete"),
            ..Default::default()
        };
        assert!(notified.is_deleted());
        let server = |status: &str, vm: &str| -> ApiServer {
            serde_json::from_value(serde_json::json!({
                "id": "x", "status": status, "OS-EXT-STS:vm_state": vm
            }))
            .expect("parses")
        };
        assert!(server("DELETED", "deleted").is_deleted());
        assert!(server("SOFT_DELETED", "soft-delete").is_deleted());
        assert!(!server("SHUTOFF", "stopped").is_deleted());
    }

    #[test]
    fn the_entity_has_every_property_and_normalised_values() {
        let e = NovaInstance {
            id: "21531c76-f1e4-41a9-ac03-54c2993a7c4c",
            name: Some("vm-a1"),
            status: Some("BUILD"),
            vm_state: Some("building"),
            task_state: Some(""),
            project: Some("projA"),
            availability_zone: Some(""),
            created_at: Some("2026-11-25 08:37:35+00:00"),
            metadata: Some(Value::Null),
            updated_us: Some(7),
            ..Default::default()
        }
        .into_entity();
        assert_eq!(
            e.key(),
            "nova.instance:21531c76-f1e4-41a9-ac03-54c2993a7c4c"
        );
        assert_eq!(e.state(), Some("BUILD"));
        assert_eq!(e.project(), Some("projA"));
        assert_eq!(e.source_updated_micros(), Some(7));
        assert!(e.relations().is_empty(), "no host, no relation");
        assert_eq!(
            e.properties(),
            serde_json::json!({
                "vm_state": "building",
                "task_state": null,
                "availability_zone": null,
                "host": null,
                "node": null,
                "flavor": null,
                "image_id": null,
                "user_id": null,
                "created_at": "2026-11-25T08:37:35Z",
                "metadata": {},
                // No host, no domain: null whatever the source knows.
                "instance_name": null
            })
        );
        let keys: Vec<String> = e
            .properties()
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let mut expected: Vec<&str> = PROPERTIES.to_vec();
        expected.push(INSTANCE_NAME);
        expected.sort_unstable();
        assert_eq!(keys, expected);
        // With a host, a source that does not carry the field leaves it out and marks
        // it kept; one that carries it gives it.
        let on_host = |instance_name| NovaInstance {
            id: "u",
            host: Some("compute1"),
            instance_name,
            ..Default::default()
        };
        let unknown = on_host(None).into_entity();
        assert!(unknown.has_kept_properties());
        assert!(
            unknown
                .merged_with(None)
                .properties()
                .get(INSTANCE_NAME)
                .is_none()
        );
        let known = on_host(Some(Some("instance-00000001"))).into_entity();
        assert!(!known.has_kept_properties());
        assert_eq!(known.properties()[INSTANCE_NAME], "instance-00000001");
    }
}
