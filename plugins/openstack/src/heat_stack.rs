//! One model of a Heat stack as a `heat.stack` entity, shared by every source that
//! reports one: the Heat collector (`GET /v1/{project}/stacks` and each stack's
//! `resources`) and the bus plugin (Heat's `orchestration.stack.*` notifications, with
//! the stack's resources fetched from Heat's API as Vitrage's
//! `HeatStackDriver.enrich_event` does).
//!
//! The host's baseline compares entities by [`Entity::content_hash`] (name, state,
//! project, relations, properties). When the two sources describe a stack differently,
//! every poll after a notification reports an update that is not one, and the next
//! notification flips it back. So each source fills a [`HeatStack`] with what it read
//! and [`HeatStack::into_entity`] builds the entity one way for both.
//!
//! The entity:
//! - key `heat.stack:<id>`, name = `stack_name`, state = `stack_status` (the
//!   notification's `state`: `CREATE_COMPLETE`, `UPDATE_FAILED`, ...), project = the
//!   listing's `project` / the notification's `tenant_id`; source timestamp = the API's
//!   `updated_time` (or `creation_time`) or the notification's `timestamp`;
//! - relation `this --comprises--> <entity type>:<physical id>` for each resource whose
//!   type maps to an entity type ([`DEFAULT_RESOURCE_TYPES`] plus the configured ones,
//!   see [`resource_types`]) and that has a physical id; sorted and deduplicated, so
//!   Heat's order of resources cannot make a change ([`comprises`]);
//! - the properties [`PROPERTIES`], always all of them, `null` when unknown:
//!   `stack_status_reason` (notification: `state_reason`), `creation_time` (`create_at`),
//!   `updated_time` (`updated_at`), both written `2026-11-25T08:56:57Z`, `stack_owner`
//!   (notification: `username`; Heat fills both from the stack's `username`) and `tags`
//!   (a list, `[]` for none: the listing writes `null`, the notification `[]`).
//!
//! A stack in [`DELETED_STATUS`] (`DELETE_COMPLETE`) is no entity, whatever the source:
//! the collector leaves it out of its snapshot (and does not ask for its resources), the
//! bus plugin turns any notification that says it into a deletion. Its `comprises`
//! relations go with it.
//!
//! Left out because one source lacks them or writes them otherwise (checked on the
//! captures of a real Heat 24.1, `plugins/heat/tests/fixtures` and
//! `plugins/bus/tests/fixtures/heat-24`): `description` (the listing always writes `""`,
//! the notification the template's description), `parent` (not in notifications; the
//! collector lists top-level stacks only, whose parent is always `null`),
//! `stack_user_project_id`, `deletion_time` (listing only), `user_identity` and
//! `user_id` (notification only).

use std::collections::{BTreeMap, HashMap};

use reqwest::Url;
use serde::Deserialize;
use serde_json::{Map, Value};
use synchronizer_plugin_api::{Entity, Relation};

use crate::session::join_path;
use crate::time::{format_isotime, parse_timestamp};

/// Entity type of a Heat stack.
pub const STACK: &str = "heat.stack";
/// The kind of the relation from a stack to the resources it comprises.
pub const COMPRISES: &str = "comprises";

/// The resource types mapped by default, and the entity types they become.
pub const DEFAULT_RESOURCE_TYPES: [(&str, &str); 4] = [
    ("OS::Nova::Server", "nova.instance"),
    ("OS::Cinder::Volume", "cinder.volume"),
    ("OS::Neutron::Net", "neutron.network"),
    ("OS::Neutron::Port", "neutron.port"),
];

/// The status of a stack Heat has deleted (`stack_status` in the API, `state` in a
/// notification).
pub const DELETED_STATUS: &str = "DELETE_COMPLETE";

/// Whether a stack in `status` is deleted.
pub fn is_deleted(status: Option<&str>) -> bool {
    status == Some(DELETED_STATUS)
}

/// The properties of every `heat.stack` entity, whichever source built it.
pub const PROPERTIES: &[&str] = &[
    "stack_status_reason",
    "creation_time",
    "updated_time",
    "stack_owner",
    "tags",
];

/// The resource type → entity type map: [`DEFAULT_RESOURCE_TYPES`], with `extra` (a
/// plugin's `resource_types` option) added or replacing.
pub fn resource_types(extra: &BTreeMap<String, String>) -> HashMap<String, String> {
    let mut map: HashMap<String, String> = DEFAULT_RESOURCE_TYPES
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    map.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    map
}

/// One resource of Heat's `GET .../stacks/{name}/{id}/resources`: the fields the model
/// takes. Other fields are skipped while parsing.
#[derive(Clone, Debug, Deserialize)]
pub struct ApiResource {
    /// `OS::Nova::Server`, a template URL for a nested stack, ...
    #[serde(default)]
    pub resource_type: String,
    /// The id of what the resource made (empty or absent when it made nothing).
    #[serde(default)]
    pub physical_resource_id: Option<String>,
}

/// The body of `GET .../resources`.
#[derive(Clone, Debug, Deserialize)]
pub struct ApiResources {
    /// The resources (of nested stacks too, down to the requested `nested_depth`).
    pub resources: Vec<ApiResource>,
}

/// The keys (`<entity type>:<physical id>`) of the resources that become relations:
/// mapped type, non-empty physical id; sorted, deduplicated.
pub fn comprises(resources: &[ApiResource], types: &HashMap<String, String>) -> Vec<String> {
    let mut keys: Vec<String> = resources
        .iter()
        .filter_map(|r| {
            let entity_type = types.get(&r.resource_type)?;
            let id = r
                .physical_resource_id
                .as_deref()
                .filter(|id| !id.is_empty())?;
            Some(format!("{entity_type}:{id}"))
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// `https://heat:8004/v1` from the catalog's `https://heat:8004/v1/<project>`: the base
/// under which each project's URL is `<root>/<project id>`.
pub fn heat_root(endpoint: &Url) -> Url {
    let mut root = endpoint.clone();
    let last = endpoint
        .path_segments()
        .and_then(|mut s| s.rfind(|p| !p.is_empty()));
    if last.is_some_and(|l| l != "v1")
        && let Ok(mut p) = root.path_segments_mut()
    {
        p.pop_if_empty().pop();
    }
    root
}

/// `<root>/<project>/stacks/<name>/<id>/resources?nested_depth=<depth>`.
pub fn resources_url(root: &Url, project: &str, name: &str, id: &str, nested_depth: u32) -> Url {
    let mut url = join_path(root, &[project, "stacks", name, id, "resources"]);
    url.query_pairs_mut()
        .append_pair("nested_depth", &nested_depth.to_string());
    url
}

/// What a source knows of one stack. Text fields are as the source writes them; empty
/// strings count as absent.
#[derive(Clone, Debug, Default)]
pub struct HeatStack<'a> {
    /// The stack's uuid.
    pub id: &'a str,
    /// `stack_name`.
    pub name: Option<&'a str>,
    /// `stack_status` / `state`.
    pub status: Option<&'a str>,
    /// `stack_status_reason` / `state_reason`.
    pub status_reason: Option<&'a str>,
    /// `project` / `tenant_id`.
    pub project: Option<&'a str>,
    /// `stack_owner` / `username`.
    pub owner: Option<&'a str>,
    /// `creation_time` / `create_at`, in any shape [`parse_timestamp`] reads.
    pub creation_time: Option<&'a str>,
    /// `updated_time` / `updated_at`.
    pub updated_time: Option<&'a str>,
    /// `tags`: a list of strings; `null` and anything else count as none.
    pub tags: Option<&'a Value>,
    /// The keys the stack comprises ([`comprises`]).
    pub comprises: Vec<String>,
    /// The source timestamp, microseconds since the Unix epoch.
    pub updated_us: Option<i64>,
}

fn present(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

fn text(s: Option<&str>) -> Value {
    present(s).map_or(Value::Null, |s| Value::String(s.to_owned()))
}

fn time(stack: &str, field: &str, t: Option<&str>) -> Value {
    match present(t) {
        Some(t) => match parse_timestamp(t) {
            Some(us) => Value::String(format_isotime(us)),
            None => {
                tracing::debug!(stack, field, value = t, "not a timestamp; kept as is");
                Value::String(t.to_owned())
            }
        },
        None => Value::Null,
    }
}

impl HeatStack<'_> {
    /// Whether the source says the stack is deleted ([`is_deleted`]).
    pub fn is_deleted(&self) -> bool {
        is_deleted(self.status)
    }

    /// The `heat.stack` entity (see the module docs for its shape).
    pub fn into_entity(self) -> Entity {
        let mut e = Entity::resource(STACK, self.id).with_name(self.name.unwrap_or_default());
        if let Some(status) = present(self.status) {
            e = e.with_state(status);
        }
        if let Some(project) = present(self.project) {
            e = e.with_project(project);
        }
        if let Some(ts) = self.updated_us {
            e = e.with_source_updated_micros(ts);
        }
        let mut keys = self.comprises;
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            e = e.with_relation(Relation::to(COMPRISES, key));
        }
        let mut tags: Vec<Value> = match self.tags {
            Some(Value::Array(tags)) => tags.iter().filter(|t| t.is_string()).cloned().collect(),
            _ => Vec::new(),
        };
        tags.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        let mut props = Map::new();
        props.insert("stack_status_reason".into(), text(self.status_reason));
        props.insert(
            "creation_time".into(),
            time(self.id, "creation_time", self.creation_time),
        );
        props.insert(
            "updated_time".into(),
            time(self.id, "updated_time", self.updated_time),
        );
        props.insert("stack_owner".into(), text(self.owner));
        props.insert("tags".into(), Value::Array(tags));
        e.with_properties(Value::Object(props))
    }
}

/// One stack of Heat's `GET /v1/{project}/stacks`: the fields the model takes, under
/// their API names. The Heat collector parses its pages into these.
#[derive(Clone, Debug, Deserialize)]
pub struct ApiStack {
    /// The stack's uuid.
    pub id: String,
    /// `stack_name`.
    pub stack_name: String,
    /// `stack_status`.
    #[serde(default)]
    pub stack_status: Option<String>,
    /// `stack_status_reason`.
    #[serde(default)]
    pub stack_status_reason: Option<String>,
    /// The stack's project (absent in some listings: the collector fills it in).
    #[serde(default)]
    pub project: Option<String>,
    /// `creation_time`.
    #[serde(default)]
    pub creation_time: Option<String>,
    /// `updated_time`, `null` for a stack never updated.
    #[serde(default)]
    pub updated_time: Option<String>,
    /// `stack_owner`.
    #[serde(default)]
    pub stack_owner: Option<String>,
    /// `tags`.
    #[serde(default)]
    pub tags: Option<Value>,
}

impl ApiStack {
    /// Whether Heat lists the stack as deleted ([`is_deleted`]): such a stack is no
    /// entity.
    pub fn is_deleted(&self) -> bool {
        is_deleted(self.stack_status.as_deref())
    }

    /// The stack's `heat.stack` entity with the relations `comprises`: state =
    /// `stack_status`, source timestamp = `updated_time`, else `creation_time`.
    pub fn to_entity(&self, comprises: Vec<String>) -> Entity {
        let updated_us = self
            .updated_time
            .as_deref()
            .or(self.creation_time.as_deref())
            .and_then(parse_timestamp);
        HeatStack {
            id: &self.id,
            name: Some(&self.stack_name),
            status: self.stack_status.as_deref(),
            status_reason: self.stack_status_reason.as_deref(),
            project: self.project.as_deref(),
            owner: self.stack_owner.as_deref(),
            creation_time: self.creation_time.as_deref(),
            updated_time: self.updated_time.as_deref(),
            tags: self.tags.as_ref(),
            comprises,
            updated_us,
        }
        .into_entity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_root_strips_the_project() {
        let root = |u: &str| Url::parse(u).map(|u| heat_root(&u).to_string()).ok();
        assert_eq!(
            root("http://h:8004/v1/abc").as_deref(),
            Some("http://h:8004/v1")
        );
        assert_eq!(
            root("http://h:8004/v1/abc/").as_deref(),
            Some("http://h:8004/v1")
        );
        assert_eq!(
            root("http://h:8004/v1").as_deref(),
            Some("http://h:8004/v1")
        );
        assert_eq!(
            root("https://cloud/orchestration/v1/abc").as_deref(),
            Some("https://cloud/orchestration/v1")
        );
    }

    #[test]
    fn the_entity_has_every_property_and_normalised_values() {
        let tags = serde_json::json!(["b", "a", 3]);
        let e = HeatStack {
            id: "8b975fd3-1abc-42db-8f09-7cc89cac27cd",
            name: Some("basic-a"),
            status: Some("CREATE_COMPLETE"),
            status_reason: Some(""),
            project: Some("p"),
            owner: Some("demo"),
            creation_time: Some("2026-11-25 08:56:57"),
            tags: Some(&tags),
            comprises: vec![
                "nova.instance:b".into(),
                "cinder.volume:a".into(),
                "nova.instance:b".into(),
            ],
            updated_us: Some(7),
            ..Default::default()
        }
        .into_entity();
        assert_eq!(e.key(), "heat.stack:8b975fd3-1abc-42db-8f09-7cc89cac27cd");
        assert_eq!(e.state(), Some("CREATE_COMPLETE"));
        assert_eq!(e.source_updated_micros(), Some(7));
        let others: Vec<&str> = e.relations().iter().map(|r| r.other()).collect();
        assert_eq!(others, ["cinder.volume:a", "nova.instance:b"]);
        assert_eq!(
            e.properties(),
            serde_json::json!({
                "stack_status_reason": null,
                "creation_time": "2026-11-25T08:56:57Z",
                "updated_time": null,
                "stack_owner": "demo",
                "tags": ["a", "b"],
            })
        );
    }

    #[test]
    fn only_delete_complete_is_deleted() {
        for (status, deleted) in [
            (Some("DELETE_COMPLETE"), true),
            (Some("DELETE_IN_PROGRESS"), false),
            (Some("DELETE_FAILED"), false),
            (Some("CREATE_COMPLETE"), false),
            (Some("delete_complete"), false),
            (None, false),
        ] {
            assert_eq!(is_deleted(status), deleted, "{status:?}");
            let notified = HeatStack {
                id: "s",
                status,
                ..Default::default()
            };
            assert_eq!(notified.is_deleted(), deleted, "{status:?}");
            let listed: ApiStack = serde_json::from_value(serde_json::json!({
                "id": "s", "stack_name": "n", "stack_status": status
            }))
            .expect("parses");
            assert_eq!(listed.is_deleted(), deleted, "{status:?}");
        }
    }

    #[test]
    fn comprises_maps_types_and_skips_missing_ids() {
        let types = resource_types(&BTreeMap::from([(
            "OS::Heat::None".to_owned(),
            "heat.none".to_owned(),
        )]));
        let r = |t: &str, id: Option<&str>| ApiResource {
            resource_type: t.into(),
            physical_resource_id: id.map(str::to_owned),
        };
        let keys = comprises(
            &[
                r("OS::Nova::Server", Some("s1")),
                r("OS::Nova::Server", Some("")),
                r("OS::Nova::Server", None),
                r("OS::Heat::None", Some("n1")),
                r("OS::Heat::RandomString", Some("x")),
                r("OS::Nova::Server", Some("s1")),
            ],
            &types,
        );
        assert_eq!(keys, ["heat.none:n1", "nova.instance:s1"]);
    }
}
