//! A member's notifications against the admin's poll, captured from the real Neutron 25.2
//! of `scripts/openstack/neutron.sh` behind Keystone (`tests/fixtures/README.md`): user
//! demo (member of demo-b) created a network and a port; Neutron's `network.create.end`
//! and `port.create.end` carry the objects as the member may see them — without
//! `provider:*` and `binding:host_id` / `binding:vif_type`, which its policy shows to
//! admins only — while the admin's `GET` has them. The shared model keeps none of those
//! attributes, so both give the same entity: a poll after a member's change emits nothing.

use serde_json::Value;
use synchronizer_openstack::neutron::{ApiNetwork, ApiPort, Notified, notified};
use synchronizer_plugin_api::Entity;

/// The entity a captured raw notification (oslo 2.0 envelope) describes.
fn from_notification(raw: &str) -> (Value, Entity) {
    let outer: Value = serde_json::from_str(raw).expect("an oslo envelope");
    let n: Value = serde_json::from_str(outer["oslo.message"].as_str().expect("oslo.message"))
        .expect("a notification");
    let payload = n["payload"].to_string();
    match notified(
        n["event_type"].as_str().expect("an event type"),
        &payload,
        1,
    )
    .expect("a well-formed notification")
    {
        Notified::Change(false, e) => (n["payload"].clone(), *e),
        other => panic!("not an upsert: {other:?}"),
    }
}

#[test]
fn a_members_network_create_end_is_the_admins_network() {
    let (payload, notified) = from_notification(include_str!(
        "fixtures/notifications-member/network.create.end.raw.json"
    ));
    let api: Value = serde_json::from_str(include_str!(
        "fixtures/network-show-member-created-as-admin.json"
    ))
    .expect("JSON");
    // What the capture shows: the admin-only attributes are in the admin's answer only.
    assert!(payload["network"].get("provider:network_type").is_none());
    assert_eq!(api["network"]["provider:network_type"], "vxlan");
    let polled = serde_json::from_value::<ApiNetwork>(api["network"].clone())
        .expect("a network")
        .into_entity(None);
    assert_eq!(notified.key(), polled.key());
    assert_eq!(
        notified.content_hash(),
        polled.content_hash(),
        "{notified:?} vs {polled:?}"
    );
}

#[test]
fn a_members_port_create_end_is_the_admins_port() {
    let (payload, notified) = from_notification(include_str!(
        "fixtures/notifications-member/port.create.end.raw.json"
    ));
    let api: Value = serde_json::from_str(include_str!(
        "fixtures/port-show-member-created-as-admin.json"
    ))
    .expect("JSON");
    for admin_only in ["binding:host_id", "binding:vif_type"] {
        assert!(payload["port"].get(admin_only).is_none(), "{admin_only}");
        assert!(api["port"].get(admin_only).is_some(), "{admin_only}");
    }
    let polled = serde_json::from_value::<ApiPort>(api["port"].clone())
        .expect("a port")
        .into_entity(None);
    assert_eq!(notified.key(), polled.key());
    assert_eq!(
        notified.content_hash(),
        polled.content_hash(),
        "{notified:?} vs {polled:?}"
    );
    assert!(
        polled
            .relations()
            .iter()
            .any(|r| r.kind() == "attached" && r.other().starts_with("nova.instance:"))
    );
}
