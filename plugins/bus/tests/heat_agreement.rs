//! The Heat collector and Heat's notifications describe a stack the same way: the
//! `heat.stack` the collector builds from a captured `GET /stacks` listing and the
//! stack's resources (by its own conversion, `ApiStack` and `comprises` of the shared
//! model) and the one the bus plugin builds from the captured notification of the same
//! state, its resources read from Heat by the bus's `heat::Enricher`, hash alike. Through
//! the host's real baseline (`Hub`), a later poll of the state a notification reported
//! emits nothing, and a poll whose call was under way when the notification arrived
//! cannot undo it (host/src/baseline.rs, "The ordering rule").
//!
//! Data: the listing, Keystone's token and the resources of failing-a and nested-a were
//! captured from a real Keystone 27.1 + Heat 24.1 (plugins/heat/tests/fixtures), the
//! notifications from the same run (tests/fixtures/heat-24). basic-a's resources are the
//! *derived* file of that directory (the captured cloud had no Nova, Cinder or Neutron;
//! see its PROVENANCE.md). A loopback server replays them over real HTTP. No broker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use synchronizer::Action;
use synchronizer::hub::{Applied, Hub, Origin, TypeFilter};
use synchronizer_bus::BusError;
use synchronizer_bus::heat::{Enricher, HeatConfig};
use synchronizer_bus::mapping::{Families, Interpretation, interpret, parse_timestamp};
use synchronizer_openstack::heat_stack::{ApiResources, ApiStack, comprises, resource_types};
use synchronizer_openstack::testing::{Reply, Server, keystone_token_reply};
use synchronizer_plugin_api::{Change, Entity};
use synchronizer_test_kit::heat::{
    BASIC_A, FAILING_A, GLOBAL as STACKS, NESTED_A, RES_BASIC_A, RES_FAILING_A, RES_NESTED_A, TOKEN,
};
use synchronizer_test_kit::host::drain_ids as drain;
use synchronizer_test_kit::hub::{counts, snapshot, upsert};

const INFO: &str = include_str!("fixtures/heat-24/notifications-vitrage_notifications.info.json");
const ERROR: &str = include_str!("fixtures/heat-24/notifications-vitrage_notifications.error.json");

/// The mapping both sides are configured with: the defaults, and two of Heat's own
/// resource types so that the captured (non-derived) resources give relations too.
fn extra_types() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("OS::Heat::None".to_owned(), "heat.none".to_owned()),
        ("OS::Heat::TestResource".to_owned(), "heat.test".to_owned()),
    ])
}

fn resources_of(id: &str) -> Option<&'static str> {
    match id {
        BASIC_A => Some(RES_BASIC_A),
        FAILING_A => Some(RES_FAILING_A),
        NESTED_A => Some(RES_NESTED_A),
        _ => None,
    }
}

/// The collector's entity of a stack of the captured listing (`listing` may be edited).
fn polled(listing: &Value, id: &str) -> Entity {
    let stacks: Vec<ApiStack> =
        serde_json::from_value(listing["stacks"].clone()).expect("the listing parses");
    let stack = stacks
        .into_iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("{id} not listed"));
    let resources: ApiResources =
        serde_json::from_str(resources_of(id).expect("resources")).expect("the resources parse");
    stack.to_entity(comprises(
        &resources.resources,
        &resource_types(&extra_types()),
    ))
}

fn listing() -> Value {
    serde_json::from_str(STACKS).expect("JSON")
}

/// The message bodies of a capture file.
fn bodies(file: &str) -> Vec<String> {
    let records: Vec<Value> = serde_json::from_str(file).expect("JSON");
    records
        .iter()
        .map(|r| r["body"].as_str().expect("body").to_owned())
        .collect()
}

/// The notification of `event_type` about stack `id`.
fn body(file: &str, event_type: &str, id: &str) -> String {
    bodies(file)
        .into_iter()
        .find(|b| b.contains(event_type) && b.contains(id))
        .unwrap_or_else(|| panic!("no {event_type} of {id}"))
}

/// The change the bus plugin makes of a body before enrichment.
fn interpreted(body: &str) -> Change {
    let n = interpret(body.as_bytes(), Families::all()).expect("well-formed");
    match n.interpretation {
        Interpretation::Change(c) => c,
        other => panic!("expected a change, got {other:?}"),
    }
}

/// A loopback Keystone + Heat: the captured token (catalog moved here) and the captured
/// resources; `broken` makes Heat answer 500.
struct Cloud {
    server: Server,
    broken: Arc<AtomicBool>,
}

impl Cloud {
    async fn start() -> Cloud {
        let broken = Arc::new(AtomicBool::new(false));
        let flag = broken.clone();
        let server = Server::start(move |req, base| {
            if req.method == "POST" && req.path == "/identity/v3/auth/tokens" {
                return keystone_token_reply(TOKEN, base, "tok-1", Duration::from_secs(3600), &[]);
            }
            if flag.load(Ordering::Relaxed) {
                return Reply::json(
                    500,
                    r#"{"code": 500, "error": {"message": "boom", "type": "Exception"}, "title": "Internal Server Error"}"#,
                );
            }
            let parts: Vec<&str> = req.path.split('/').collect();
            // /v1/{project}/stacks/{name}/{id}/resources
            match parts.as_slice() {
                ["", "v1", _, "stacks", _, id, "resources"] => match resources_of(id) {
                    Some(body) => Reply::json(200, body),
                    None => Reply::not_found("stack"),
                },
                _ => Reply::not_found("path"),
            }
        })
        .await
        .expect("loopback server");
        Cloud { server, broken }
    }

    fn enricher(&self) -> Enricher {
        let config: HeatConfig = serde_json::from_value(json!({
            "cloud": {
                "auth": {
                    "auth_url": format!("{}/identity/v3", self.server.base()),
                    "username": "admin",
                    "password": "s3cret-password",
                    "project_name": "admin",
                    "user_domain_id": "default",
                    "project_domain_id": "default"
                },
                "timeout": "2s"
            },
            "resource_types": extra_types(),
        }))
        .expect("config");
        Enricher::new(&config).expect("enricher")
    }
}

/// The upserted entity the bus pushes for `body`, resources read from `cloud`.
async fn notified(enricher: &Enricher, body: &str) -> Entity {
    let changes = enricher
        .enrich(vec![interpreted(body)])
        .await
        .expect("enriched");
    match changes.as_slice() {
        [Change::Upsert(e)] => e.clone(),
        other => panic!("expected one upsert, got {other:?}"),
    }
}

#[tokio::test]
async fn a_poll_and_the_notification_of_the_same_state_hash_alike() {
    let cloud = Cloud::start().await;
    let enricher = cloud.enricher();
    let listing = listing();
    for (id, file, event, state, relations) in [
        (
            BASIC_A,
            INFO,
            "orchestration.stack.update.end",
            "UPDATE_COMPLETE",
            5,
        ),
        (
            FAILING_A,
            ERROR,
            "orchestration.stack.create.error",
            "CREATE_FAILED",
            1,
        ),
        (
            NESTED_A,
            INFO,
            "orchestration.stack.create.end",
            "CREATE_COMPLETE",
            3,
        ),
    ] {
        let api = polled(&listing, id);
        let bus = notified(&enricher, &body(file, event, id)).await;
        assert_eq!(bus.key(), api.key(), "{id}");
        assert_eq!(bus.name(), api.name(), "{id}");
        assert_eq!(bus.state(), Some(state), "{id}");
        assert_eq!(api.state(), Some(state), "{id}");
        assert_eq!(bus.project(), api.project(), "{id}");
        assert_eq!(bus.relations(), api.relations(), "{id}");
        assert_eq!(bus.relations().len(), relations, "{id}");
        assert_eq!(bus.properties(), api.properties(), "{id}");
        assert_eq!(bus.content_hash(), api.content_hash(), "{id}");
        // The source timestamps differ (the API's updated_time or creation_time, the
        // message's time): they are not part of the hash.
        assert!(
            bus.source_updated_micros() > api.source_updated_micros(),
            "{id}"
        );
    }
    // Without the resources (the bus without its `heat` table) they do not agree.
    let bare = match interpreted(&body(INFO, "orchestration.stack.update.end", BASIC_A)) {
        Change::Upsert(e) => e,
        other => panic!("{other:?}"),
    };
    assert_ne!(
        bare.content_hash(),
        polled(&listing, BASIC_A).content_hash()
    );
}

#[tokio::test]
async fn heat_failing_fails_the_batch_and_a_gone_stack_is_dropped() {
    let cloud = Cloud::start().await;
    let enricher = cloud.enricher();
    // nested-b has no captured resources: the loopback Heat answers 404, as a real Heat
    // does for a deleted stack. Its upsert is left out; the other one is kept.
    let nested_b = body(
        INFO,
        "orchestration.stack.create.end",
        "8c987b26-026d-45f7-adaf-fa54b77a2a2d",
    );
    let basic_a = body(INFO, "orchestration.stack.update.end", BASIC_A);
    let out = enricher
        .enrich(vec![interpreted(&nested_b), interpreted(&basic_a)])
        .await
        .expect("enriched");
    assert_eq!(out.len(), 1);
    assert!(matches!(&out[0], Change::Upsert(e) if e.id() == BASIC_A));

    // Heat failing: an error, so that the consumer pushes and acknowledges nothing.
    cloud.broken.store(true, Ordering::Relaxed);
    let err = enricher
        .enrich(vec![interpreted(&basic_a)])
        .await
        .expect_err("Heat answers 500");
    assert!(
        matches!(&err, BusError::Heat { stack, .. } if stack == BASIC_A),
        "{err}"
    );
    assert!(err.is_transient(), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");

    // A deletion needs no lookup: it passes even now.
    let mut n: Value = serde_json::from_str(&basic_a).expect("JSON");
    let mut inner: Value =
        serde_json::from_str(n["oslo.message"].as_str().expect("inner")).expect("JSON");
    inner["event_type"] = json!("orchestration.stack.delete.end");
    n["oslo.message"] = json!(inner.to_string());
    let out = enricher
        .enrich(vec![interpreted(&n.to_string())])
        .await
        .expect("a deletion is not looked up");
    assert!(matches!(out.as_slice(), [Change::Delete(e)] if e.id() == BASIC_A));
}

/// The collector's poll of the stacks with captured resources, sampled at `sampled`.
fn poll(hub: &Hub, collector: &Origin, listing: &Value, sampled: &str) -> Applied {
    let types = ["heat.stack".to_owned()];
    let sampled = parse_timestamp(sampled).expect("timestamp");
    let entities = [BASIC_A, FAILING_A, NESTED_A]
        .iter()
        .map(|id| polled(listing, id))
        .collect();
    let (_, applied) = hub.apply_snapshot(collector, snapshot(entities), &types, sampled, false);
    applied
}

#[tokio::test]
async fn a_later_poll_of_the_same_state_emits_nothing_and_an_older_poll_cannot_undo_it() {
    let cloud = Cloud::start().await;
    let enricher = cloud.enricher();
    let hub = Hub::new(Duration::from_secs(600));
    let (_, mut rx) = hub.subscribe(TypeFilter::new(&["heat.stack"]), 64, false);
    let collector = Origin {
        owner: 0,
        instance: Arc::from("heat"),
    };
    let bus = Origin {
        owner: 1,
        instance: Arc::from("bus"),
    };

    // The notifications arrive first: basic-a updated (08:58:04.24), failing-a failed.
    for (file, event, id) in [
        (INFO, "orchestration.stack.update.end", BASIC_A),
        (ERROR, "orchestration.stack.create.error", FAILING_A),
    ] {
        let e = notified(&enricher, &body(file, event, id)).await;
        let a = hub.apply_push(&bus, upsert(e));
        assert_eq!(counts(&a), (1, 0, 0), "{id}");
    }
    assert_eq!(
        drain(&mut rx),
        vec![
            (
                Action::Created,
                FAILING_A.to_owned(),
                Some("CREATE_FAILED".into())
            ),
            (
                Action::Created,
                BASIC_A.to_owned(),
                Some("UPDATE_COMPLETE".into())
            ),
        ]
    );

    // The collector's poll, taken after them, shows both in the state they reported:
    // only nested-a, which no notification told of yet, is new.
    let a = poll(&hub, &collector, &listing(), "2026-11-25 08:59:00");
    assert_eq!(counts(&a), (1, 0, 0), "{a:?}");
    assert_eq!(
        drain(&mut rx),
        vec![(
            Action::Created,
            NESTED_A.to_owned(),
            Some("CREATE_COMPLETE".into())
        )]
    );
    // nested-a's own notification of that state, arriving late, and a second poll:
    // nothing.
    let e = notified(
        &enricher,
        &body(INFO, "orchestration.stack.create.end", NESTED_A),
    )
    .await;
    let a = hub.apply_push(&bus, upsert(e));
    assert_eq!(counts(&a), (0, 0, 0), "{a:?}");
    let a = poll(&hub, &collector, &listing(), "2026-11-25 09:00:00");
    assert_eq!(counts(&a), (0, 0, 0), "{a:?}");
    assert_eq!(drain(&mut rx), vec![]);

    // A poll whose call was under way when basic-a's update.end arrived (here its
    // redelivery: dropped as a repeat, but news of the key while the call runs) answers
    // with basic-a as it was during its update (UPDATE_IN_PROGRESS): the notification
    // wins, basic-a stays UPDATE_COMPLETE.
    let mut before = listing();
    for s in before["stacks"].as_array_mut().expect("stacks") {
        if s["id"] == BASIC_A {
            s["stack_status"] = json!("UPDATE_IN_PROGRESS");
            s["stack_status_reason"] = json!("Stack UPDATE started");
        }
    }
    let start = hub.begin_snapshot(&collector);
    let e = notified(
        &enricher,
        &body(INFO, "orchestration.stack.update.end", BASIC_A),
    )
    .await;
    let a = hub.apply_push(&bus, upsert(e));
    assert_eq!((counts(&a), a.dropped), ((0, 0, 0), 1));
    let entities = [BASIC_A, FAILING_A, NESTED_A]
        .iter()
        .map(|id| polled(&before, id))
        .collect();
    let types = ["heat.stack".to_owned()];
    let (_, a) = hub.apply_snapshot_started(&collector, snapshot(entities), &types, start, false);
    assert_eq!(counts(&a), (0, 0, 0), "{a:?}");
    assert_eq!(drain(&mut rx), vec![]);
    let current = hub.entities(&TypeFilter::new(&["heat.stack"]));
    assert_eq!(current.len(), 3);
    let basic_a = current
        .iter()
        .find(|e| e.id() == BASIC_A)
        .expect("basic-a is still there");
    assert_eq!(basic_a.state(), Some("UPDATE_COMPLETE"));

    // A newer poll with a real change (basic-a updated again) is reported: the drops
    // above are the baseline's rules, not a deaf test.
    let mut after = before;
    for s in after["stacks"].as_array_mut().expect("stacks") {
        if s["id"] == BASIC_A {
            s["updated_time"] = json!("2026-11-25T09:01:00Z");
        }
    }
    let a = poll(&hub, &collector, &after, "2026-11-25 09:01:01");
    assert_eq!(counts(&a), (0, 1, 0), "{a:?}");
    assert_eq!(
        drain(&mut rx),
        vec![(
            Action::Updated,
            BASIC_A.to_owned(),
            Some("UPDATE_IN_PROGRESS".into())
        )]
    );
}
