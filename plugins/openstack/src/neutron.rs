//! One model of Neutron's networks and ports as `neutron.network` and `neutron.port`
//! entities, shared by the Neutron collector (`GET /v2.0/networks`, `GET /v2.0/ports`)
//! and the bus plugin (Neutron's `network.*.end` and `port.*.end` notifications).
//!
//! Neutron's notifications carry the object exactly as the API shows it
//! (`{"network": {...}}`, `{"port": {...}}`), so both sources parse it into the same
//! [`ApiNetwork`] / [`ApiPort`]; only the source timestamp differs (the API's
//! `updated_at`, whole seconds; the notification's `timestamp`).
//!
//! `neutron.network`: key `neutron.network:<uuid>`, name, state = `status` (`ACTIVE`,
//! `DOWN`, `BUILD`, `ERROR`), project = `project_id` (`tenant_id`), the properties
//! [`NETWORK_PROPERTIES`]: `admin_state_up`, `shared`, `router_external`
//! (`router:external`), `mtu`, `created_at`. Not `subnets`: adding a subnet changes the network's list without a
//! `network.update.end` (only `subnet.create.end`), so the poll after it would disagree.
//!
//! `neutron.port`: key `neutron.port:<uuid>`, name, state = `status` (`ACTIVE`, `DOWN`,
//! `BUILD`), project, relations `neutron.network:<network_id> --contains--> this` and,
//! when `device_owner` starts with `compute:` (a Nova server's port, as Vitrage's port
//! transformer), `this --attached--> nova.instance:<device_id>`; the properties
//! [`PORT_PROPERTIES`]: `network_id`, `mac_address`, `admin_state_up`, `fixed_ips`
//! (`[{subnet_id, ip_address}]` as listed), `ip_addresses` (Vitrage's name, the addresses
//! alone), `device_id`, `device_owner`, `created_at`.
//!
//! Not the attributes Neutron's policy shows to admins only (`provider:network_type`,
//! `binding:host_id` — Vitrage's `host_id` — and `binding:vif_type`): a notification
//! carries the object as the *requester* may see it, so a member's `network.create.end`
//! or `port.*.end` lacks them while the admin's poll has them, and every poll after a
//! member's change would be an update (seen with a real Neutron 25.2 behind Keystone:
//! `plugins/neutron/tests/fixtures/notifications-member/`).
//!
//! Left out: `revision_number` and `updated_at` (the source's version and time, not
//! state), `description`, `tags`, security groups, the binding's profile and details,
//! `standard_attr_id`, address scopes.

use serde::Deserialize;
use serde_json::{Map, Value};
use synchronizer_plugin_api::{Entity, Relation};

use crate::cinder_volume::normalised_time;
use crate::time::parse_timestamp;

/// Entity type of a Neutron network.
pub const NETWORK: &str = "neutron.network";
/// Entity type of a Neutron port.
pub const PORT: &str = "neutron.port";
/// The relation from a network to its ports.
pub const CONTAINS: &str = "contains";
/// The relation from a port to the Nova server it belongs to.
pub const ATTACHED: &str = "attached";
/// The prefix of the `device_owner` of a Nova server's port (`compute:nova`,
/// `compute:<zone>`).
pub const COMPUTE_OWNER_PREFIX: &str = "compute:";

/// The properties of every `neutron.network` entity.
pub const NETWORK_PROPERTIES: &[&str] = &[
    "admin_state_up",
    "shared",
    "router_external",
    "mtu",
    "created_at",
];

/// The properties of every `neutron.port` entity.
pub const PORT_PROPERTIES: &[&str] = &[
    "network_id",
    "mac_address",
    "admin_state_up",
    "fixed_ips",
    "ip_addresses",
    "device_id",
    "device_owner",
    "created_at",
];

/// The event types of Neutron's notifications this model reads: those Vitrage 15's
/// network and port drivers list.
pub const EVENT_TYPES: &[&str] = &[
    "network.create.end",
    "network.update.end",
    "network.delete.end",
    "port.create.end",
    "port.update.end",
    "port.delete.end",
];

fn text(s: &Option<String>) -> Value {
    match s {
        Some(s) if !s.is_empty() => Value::String(s.clone()),
        _ => Value::Null,
    }
}

fn present(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// One network of `GET /v2.0/networks`, or of a `network.*` notification's `network`.
#[derive(Clone, Debug, Deserialize)]
pub struct ApiNetwork {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    admin_state_up: Option<bool>,
    #[serde(default)]
    shared: Option<bool>,
    #[serde(rename = "router:external", default)]
    router_external: Option<bool>,
    #[serde(default)]
    mtu: Option<u64>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
}

impl ApiNetwork {
    /// The network's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `neutron.network` entity; source timestamp `updated_us`, or the API's
    /// `updated_at` when `None`.
    pub fn into_entity(self, updated_us: Option<i64>) -> Entity {
        let mut e =
            Entity::resource(NETWORK, &self.id).with_name(self.name.as_deref().unwrap_or_default());
        if let Some(s) = present(&self.status) {
            e = e.with_state(s);
        }
        if let Some(p) = present(&self.project_id).or(present(&self.tenant_id)) {
            e = e.with_project(p);
        }
        if let Some(ts) =
            updated_us.or_else(|| self.updated_at.as_deref().and_then(parse_timestamp))
        {
            e = e.with_source_updated_micros(ts);
        }
        let mut props = Map::new();
        props.insert("admin_state_up".into(), self.admin_state_up.into());
        props.insert("shared".into(), self.shared.into());
        props.insert("router_external".into(), self.router_external.into());
        props.insert("mtu".into(), self.mtu.into());
        props.insert(
            "created_at".into(),
            normalised_time(self.created_at.as_deref()),
        );
        e.with_properties(Value::Object(props))
    }
}

/// One fixed IP of a port.
#[derive(Clone, Debug, Deserialize)]
struct FixedIp {
    #[serde(default)]
    subnet_id: Option<String>,
    #[serde(default)]
    ip_address: Option<String>,
}

/// One port of `GET /v2.0/ports`, or of a `port.*` notification's `port`.
#[derive(Clone, Debug, Deserialize)]
pub struct ApiPort {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    network_id: Option<String>,
    #[serde(default)]
    mac_address: Option<String>,
    #[serde(default)]
    admin_state_up: Option<bool>,
    #[serde(default)]
    fixed_ips: Option<Vec<FixedIp>>,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    device_owner: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
}

impl ApiPort {
    /// The port's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `neutron.port` entity; source timestamp `updated_us`, or the API's
    /// `updated_at` when `None`.
    pub fn into_entity(self, updated_us: Option<i64>) -> Entity {
        let mut e =
            Entity::resource(PORT, &self.id).with_name(self.name.as_deref().unwrap_or_default());
        if let Some(s) = present(&self.status) {
            e = e.with_state(s);
        }
        if let Some(p) = present(&self.project_id).or(present(&self.tenant_id)) {
            e = e.with_project(p);
        }
        if let Some(ts) =
            updated_us.or_else(|| self.updated_at.as_deref().and_then(parse_timestamp))
        {
            e = e.with_source_updated_micros(ts);
        }
        if let Some(net) = present(&self.network_id) {
            e = e.with_relation(Relation::from(CONTAINS, format!("{NETWORK}:{net}")));
        }
        let compute =
            present(&self.device_owner).is_some_and(|o| o.starts_with(COMPUTE_OWNER_PREFIX));
        if compute && let Some(device) = present(&self.device_id) {
            e = e.with_relation(Relation::to(
                ATTACHED,
                format!("{}:{device}", crate::nova_instance::INSTANCE),
            ));
        }
        let ips = self.fixed_ips.unwrap_or_default();
        let fixed: Vec<Value> = ips
            .iter()
            .map(|ip| {
                serde_json::json!({
                    "subnet_id": text(&ip.subnet_id),
                    "ip_address": text(&ip.ip_address),
                })
            })
            .collect();
        let addresses: Vec<Value> = ips.iter().map(|ip| text(&ip.ip_address)).collect();
        let mut props = Map::new();
        props.insert("network_id".into(), text(&self.network_id));
        props.insert("mac_address".into(), text(&self.mac_address));
        props.insert("admin_state_up".into(), self.admin_state_up.into());
        props.insert("fixed_ips".into(), fixed.into());
        props.insert("ip_addresses".into(), addresses.into());
        props.insert("device_id".into(), text(&self.device_id));
        props.insert("device_owner".into(), text(&self.device_owner));
        props.insert(
            "created_at".into(),
            normalised_time(self.created_at.as_deref()),
        );
        e.with_properties(Value::Object(props))
    }
}

/// The payload of a `network.*.end` / `port.*.end` notification.
#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    network: Option<ApiNetwork>,
    #[serde(default)]
    network_id: Option<String>,
    #[serde(default)]
    port: Option<ApiPort>,
    #[serde(default)]
    port_id: Option<String>,
}

/// What a Neutron notification means for the model.
#[derive(Debug)]
pub enum Notified {
    /// An upsert (`false`) or a deletion (`true`) of this entity.
    Change(bool, Box<Entity>),
    /// A `*.start` event or another resource: no change.
    Ignored,
}

/// The change the Neutron notification `event_type` with `payload` (JSON text) sent at
/// `at_us` describes; an error when the payload does not parse or names no object.
pub fn notified(event_type: &str, payload: &str, at_us: i64) -> Result<Notified, String> {
    let (kind, action) = match event_type.split_once('.') {
        Some(("network", rest)) => (NETWORK, rest),
        Some(("port", rest)) => (PORT, rest),
        _ => return Ok(Notified::Ignored),
    };
    if !matches!(action, "create.end" | "update.end" | "delete.end") {
        return Ok(Notified::Ignored);
    }
    let delete = action == "delete.end";
    let p: Payload =
        serde_json::from_str(payload).map_err(|e| format!("{kind} payload does not parse: {e}"))?;
    let entity = if kind == NETWORK {
        match (p.network, p.network_id) {
            (Some(n), _) if !n.id.is_empty() => n.into_entity(Some(at_us)),
            (_, Some(id)) if delete && !id.is_empty() => {
                Entity::resource(NETWORK, &id).with_source_updated_micros(at_us)
            }
            _ => return Err("payload has no `network` with an `id`".into()),
        }
    } else {
        match (p.port, p.port_id) {
            (Some(n), _) if !n.id.is_empty() => n.into_entity(Some(at_us)),
            (_, Some(id)) if delete && !id.is_empty() => {
                Entity::resource(PORT, &id).with_source_updated_micros(at_us)
            }
            _ => return Err("payload has no `port` with an `id`".into()),
        }
    };
    Ok(Notified::Change(delete, Box::new(entity)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_compute_port_is_attached_to_its_server_and_contained_by_its_network() {
        let port = json!({"id": "p", "network_id": "n", "device_owner": "compute:nova",
            "device_id": "s", "status": "DOWN", "fixed_ips": [{"subnet_id": "x", "ip_address": "10.0.0.1"}]});
        let api: ApiPort = serde_json::from_value(port.clone()).unwrap();
        let e = api.into_entity(None);
        let rel: Vec<(String, String)> = e
            .relations()
            .iter()
            .map(|r| (r.kind().to_owned(), r.other().to_owned()))
            .collect();
        assert_eq!(
            rel,
            vec![
                ("contains".to_owned(), "neutron.network:n".to_owned()),
                ("attached".to_owned(), "nova.instance:s".to_owned())
            ]
        );
        let body = json!({ "port": port }).to_string();
        let Notified::Change(false, n) = notified("port.update.end", &body, 1).unwrap() else {
            panic!("an upsert")
        };
        assert_eq!(n.content_hash(), e.content_hash());
        let router: ApiPort = serde_json::from_value(
            json!({"id": "r", "network_id": "n", "device_owner": "network:router_interface", "device_id": "x"}),
        )
        .unwrap();
        assert_eq!(router.into_entity(None).relations().len(), 1);
    }

    #[test]
    fn delete_end_deletes_and_start_is_ignored() {
        let Notified::Change(true, e) =
            notified("network.delete.end", r#"{"network_id": "n"}"#, 1).unwrap()
        else {
            panic!("a deletion")
        };
        assert_eq!(e.key(), "neutron.network:n");
        assert!(matches!(
            notified("port.delete.start", r#"{"port_id": "p"}"#, 1).unwrap(),
            Notified::Ignored
        ));
        assert!(notified("port.create.end", "{}", 1).is_err());
        assert!(notified("port.create.end", "[", 1).is_err());
    }
}
