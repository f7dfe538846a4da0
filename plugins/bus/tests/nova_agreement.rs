//! The Nova collector and Nova's notifications describe a server the same way: the
//! `nova.instance` built from a captured `GET /servers/detail` (by the collector's own
//! conversion, `ApiServer` of the shared model) and the ones built from the captured versioned and legacy notifications
//! of the same state hash alike (once the notifications that lack `instance_name` keep the
//! held one: `Entity::with_kept_properties`), so the host's baseline reports no update when one
//! source follows the other; and through the host's real baseline (`Hub`), a later poll
//! of the state a notification reported emits nothing, while a poll whose call was under
//! way when the notification arrived cannot undo it (host/src/baseline.rs, "The ordering
//! rule").
//!
//! All captured from the same Nova 30.3 run (plugins/nova/tests/fixtures and
//! tests/fixtures/nova-30; see their PROVENANCE.md). No broker needed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use synchronizer::Action;
use synchronizer::hub::{Applied, Hub, Origin, TypeFilter};
use synchronizer_bus::mapping::{Families, Interpretation, interpret, parse_timestamp};
use synchronizer_openstack::nova_instance::{ApiServer, status_from_state};
use synchronizer_plugin_api::{Change, Entity};
use synchronizer_test_kit::host::drain_ids as drain;
use synchronizer_test_kit::hub::{counts, snapshot, upsert};

/// `GET /servers/detail?all_tenants=1` (microversion 2.53) from the Nova collector's
/// fixtures.
const SERVERS: &[u8] = synchronizer_test_kit::nova::ALL.as_bytes();
const V_CREATE: &str =
    include_str!("fixtures/nova-30/versioned_notifications.info__instance.create.end.raw.json");
const L_CREATE: &str = include_str!(
    "fixtures/nova-30/vitrage_notifications.info__compute.instance.create.end.raw.json"
);
const V_POWER_OFF: &str =
    include_str!("fixtures/nova-30/versioned_notifications.info__instance.power_off.end.raw.json");
const L_POWER_OFF: &str = include_str!(
    "fixtures/nova-30/vitrage_notifications.info__compute.instance.power_off.end.raw.json"
);

use synchronizer_test_kit::nova::{VM_A1, VM_A3};

/// The collector's entities of a `/servers/detail` body: the Nova plugin parses its pages
/// into `ApiServer`s and makes each an entity with `ApiServer::into_entity`.
fn polled(body: &[u8]) -> Vec<Entity> {
    #[derive(serde::Deserialize)]
    struct Page {
        servers: Vec<ApiServer>,
    }
    let page: Page = serde_json::from_slice(body).expect("the captured page parses");
    page.servers
        .into_iter()
        .map(ApiServer::into_entity)
        .collect()
}

fn polled_one(body: &[u8], id: &str) -> Entity {
    polled(body)
        .into_iter()
        .find(|e| e.id() == id)
        .unwrap_or_else(|| panic!("{id} not in the page"))
}

/// The upserted entity of a notification body.
fn notified(body: &str) -> Entity {
    let n = interpret(body.as_bytes(), Families::all()).expect("well-formed");
    match n.interpretation {
        Interpretation::Change(Change::Upsert(e)) => e,
        other => panic!("expected an upsert, got {other:?}"),
    }
}

#[test]
fn a_poll_and_both_notification_forms_of_the_same_state_hash_alike() {
    // vm-a1 just created (ACTIVE on compute1), vm-a3 just powered off (SHUTOFF): the
    // captured listing shows both in the state the captured notifications report.
    for (id, versioned, legacy, state) in [
        (VM_A1, V_CREATE, L_CREATE, "ACTIVE"),
        (VM_A3, V_POWER_OFF, L_POWER_OFF, "SHUTOFF"),
    ] {
        let api = polled_one(SERVERS, id);
        // Only versioned create.end carries instance_name; the others leave it out and
        // keep what the host holds (the collector's here).
        let v = notified(versioned);
        assert_eq!(v.has_kept_properties(), versioned != V_CREATE);
        let v = v.merged_with(Some(&api));
        let l = notified(legacy).merged_with(Some(&api));
        assert!(api.properties()["instance_name"].is_string());
        for (from, e) in [("versioned", &v), ("legacy", &l)] {
            assert_eq!(e.key(), api.key(), "{from}");
            assert_eq!(e.name(), api.name(), "{from} {id}");
            assert_eq!(e.state(), Some(state), "{from} {id}");
            assert_eq!(e.project(), api.project(), "{from} {id}");
            assert_eq!(e.relations(), api.relations(), "{from} {id}");
            assert_eq!(e.properties(), api.properties(), "{from} {id}");
            assert_eq!(e.content_hash(), api.content_hash(), "{from} {id}");
        }
        assert_eq!(api.state(), Some(state));
        // The source timestamps differ (the API's `updated`, the message's time): they
        // are not part of the hash.
        assert_ne!(v.source_updated_micros(), api.source_updated_micros());
    }
}

#[test]
fn the_state_table_gives_the_status_the_api_shows() {
    let page: Value = serde_json::from_slice(SERVERS).expect("JSON");
    let servers = page["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 5);
    for s in servers {
        assert_eq!(
            Some(status_from_state(
                s["OS-EXT-STS:vm_state"].as_str(),
                s["OS-EXT-STS:task_state"].as_str()
            )),
            s["status"].as_str(),
            "{}",
            s["name"]
        );
    }
}

/// The collector's poll of `body`, sampled at `sampled` (naive UTC), through the hub.
fn poll(hub: &Hub, collector: &Origin, body: &[u8], sampled: &str) -> Applied {
    let types = ["nova.instance".to_owned()];
    let sampled = parse_timestamp(sampled).expect("timestamp");
    let (_, applied) =
        hub.apply_snapshot(collector, snapshot(polled(body)), &types, sampled, false);
    applied
}

/// The captured listing with vm-a3 as it was before it was powered off: ACTIVE, last
/// updated when it was launched (2026-11-25T08:37:42Z).
fn servers_before_power_off() -> Vec<u8> {
    let mut page: Value = serde_json::from_slice(SERVERS).expect("JSON");
    let servers = page["servers"].as_array_mut().expect("servers");
    let a3 = servers
        .iter_mut()
        .find(|s| s["id"] == VM_A3)
        .expect("vm-a3");
    a3["status"] = json!("ACTIVE");
    a3["OS-EXT-STS:vm_state"] = json!("active");
    a3["OS-EXT-STS:power_state"] = json!(1);
    a3["updated"] = json!("2026-11-25T08:37:42Z");
    serde_json::to_vec(&page).expect("JSON")
}

#[test]
fn a_later_poll_of_the_same_state_emits_nothing_and_an_older_poll_cannot_undo_it() {
    let hub = Hub::new(Duration::from_secs(600));
    let (_, mut rx) = hub.subscribe(TypeFilter::new(&["nova.instance"]), 64, false);
    let collector = Origin {
        owner: 0,
        instance: Arc::from("nova"),
    };
    let bus = Origin {
        owner: 1,
        instance: Arc::from("bus"),
    };
    let at = |ts: &str| parse_timestamp(ts).expect("timestamp");

    // The notifications arrive first: vm-a1 created, vm-a3 powered off (08:37:47.27).
    let a = hub.apply_push(&bus, upsert(notified(V_CREATE)));
    assert_eq!(counts(&a), (1, 0, 0));
    let a = hub.apply_push(&bus, upsert(notified(V_POWER_OFF)));
    assert_eq!(counts(&a), (1, 0, 0));
    assert_eq!(
        drain(&mut rx),
        vec![
            (Action::Created, VM_A1.to_owned(), Some("ACTIVE".into())),
            (Action::Created, VM_A3.to_owned(), Some("SHUTOFF".into())),
        ]
    );

    // The same state from the legacy form of the same notifications: nothing.
    for body in [L_CREATE, L_POWER_OFF] {
        let a = hub.apply_push(&bus, upsert(notified(body)));
        assert_eq!((counts(&a), a.dropped), ((0, 0, 0), 1));
    }
    assert_eq!(drain(&mut rx), vec![]);

    // The collector's poll, taken after the notifications, shows vm-a1 and vm-a3 in the
    // state they reported: the three servers no notification told of are new, and vm-a3
    // gains the instance_name its power-off notification does not carry (vm-a1's came
    // with its create.end).
    let a = poll(&hub, &collector, SERVERS, "2026-11-25 08:38:00");
    assert_eq!(counts(&a), (3, 1, 0), "{a:?}");
    let changes = drain(&mut rx);
    assert_eq!(changes.len(), 4);
    assert!(
        changes
            .iter()
            .all(
                |(action, id, _)| (*action == Action::Created && id != VM_A1 && id != VM_A3)
                    || (*action == Action::Updated && id == VM_A3)
            ),
        "{changes:?}"
    );
    // And a second poll of the same state: nothing.
    let a = poll(&hub, &collector, SERVERS, "2026-11-25 08:39:00");
    assert_eq!(counts(&a), (0, 0, 0), "{a:?}");
    assert_eq!(drain(&mut rx), vec![]);

    // A poll whose call was under way when the power-off notification arrived (here its
    // redelivery: dropped as a repeat, but news of the key while the call runs) answers
    // with vm-a3 still ACTIVE: the notification wins, nothing is reported, vm-a3 stays
    // SHUTOFF.
    let before = servers_before_power_off();
    let old_a3 = polled_one(&before, VM_A3);
    assert_eq!(old_a3.state(), Some("ACTIVE"));
    assert!(old_a3.source_updated_micros() < Some(at("2026-11-25 08:37:47.268865")));
    let start = hub.begin_snapshot(&collector);
    let a = hub.apply_push(&bus, upsert(notified(V_POWER_OFF)));
    assert_eq!((counts(&a), a.dropped), ((0, 0, 0), 1));
    let types = ["nova.instance".to_owned()];
    let (_, a) =
        hub.apply_snapshot_started(&collector, snapshot(polled(&before)), &types, start, false);
    assert_eq!(counts(&a), (0, 0, 0), "{a:?}");
    assert_eq!(drain(&mut rx), vec![]);
    let current = hub.entities(&TypeFilter::new(&["nova.instance"]));
    assert_eq!(current.len(), 5);
    let a3 = current
        .iter()
        .find(|e| e.id() == VM_A3)
        .expect("vm-a3 is still there");
    assert_eq!(a3.state(), Some("SHUTOFF"));

    // A newer poll with a real change (vm-a3 started again) is reported: the drops above
    // are the baseline's rules, not a deaf test.
    let mut page: Value = serde_json::from_slice(&before).expect("JSON");
    for s in page["servers"].as_array_mut().expect("servers") {
        if s["id"] == VM_A3 {
            s["updated"] = json!("2026-11-25T08:40:00Z");
        }
    }
    let after = serde_json::to_vec(&page).expect("JSON");
    let a = poll(&hub, &collector, &after, "2026-11-25 08:40:01");
    assert_eq!(counts(&a), (0, 1, 0), "{a:?}");
    assert_eq!(
        drain(&mut rx),
        vec![(Action::Updated, VM_A3.to_owned(), Some("ACTIVE".into()))]
    );
}
