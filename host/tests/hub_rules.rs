//! The hub's rules for what enters it: entities of a type their plugin does not declare
//! are refused (counted, not silently dropped); out-of-range source timestamps are
//! discarded (counted), the entity kept; a pushed key of a type one collector collects
//! belongs to that collector, so its next complete snapshot deletes it when it is gone
//! (a late message can no longer leave a permanent ghost); a push that leaves out a
//! property it marks as kept keeps the value the hub holds (`Entity::with_kept_properties`).

use std::sync::Arc;
use std::time::Duration;

use synchronizer::hub::{Hub, Origin, TypeFilter};
use synchronizer::{Action, Event};
use synchronizer_plugin_api::Entity;
use synchronizer_plugin_api::abi::{FfiPushed, FfiSnapshot, PushAction};

fn origin(owner: u16, name: &str) -> Origin {
    Origin {
        owner,
        instance: Arc::from(name),
    }
}

fn snapshot(entities: Vec<Entity>) -> FfiSnapshot {
    FfiSnapshot {
        entities: entities.into(),
        incomplete: Default::default(),
    }
}

fn push(action: PushAction, entity: Entity) -> FfiPushed {
    FfiPushed { action, entity }
}

fn changes(rx: &mut synchronizer::queue::QueueRx) -> Vec<(Action, String)> {
    let mut out = Vec::new();
    while let Some(e) = rx.try_recv() {
        if let Event::Change(c) = e {
            out.push((c.action, c.entity.key()));
        }
    }
    out
}

fn metric(hub: &Hub, line_start: &str) -> Option<u64> {
    hub.metrics()
        .encode()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
}

#[test]
fn entities_of_an_undeclared_type_are_refused_and_counted() {
    let hub = Hub::new(Duration::from_secs(60));
    let nagios = origin(0, "nagios");
    let types = vec!["nagios".to_owned()];
    hub.register(&nagios, &types, &types);
    let (_, mut rx) = hub.subscribe(TypeFilter::default(), 100, false);
    let (returned, applied) = hub.apply_snapshot(
        &nagios,
        snapshot(vec![
            Entity::alarm("nagios", "a"),
            Entity::alarm("nagios.typo", "b"),
            Entity::alarm("nagios.typo", "c"),
        ]),
        &types,
        0,
        false,
    );
    assert_eq!(applied.created, 1);
    assert_eq!(
        changes(&mut rx),
        vec![(Action::Created, "nagios:a".to_owned())]
    );
    assert_eq!(returned.len(), 1, "get-all does not return them either");
    assert_eq!(
        metric(
            &hub,
            "synchronizer_refused_entities_total{plugin_instance=\"nagios\",reason=\"unlisted_type\"}"
        ),
        Some(2)
    );
    // Pushed ones too.
    hub.apply_push(
        &nagios,
        vec![push(PushAction::Upsert, Entity::alarm("nagios.typo", "d"))],
    );
    assert!(changes(&mut rx).is_empty());
    assert_eq!(
        metric(
            &hub,
            "synchronizer_refused_entities_total{plugin_instance=\"nagios\",reason=\"unlisted_type\"}"
        ),
        Some(3)
    );
}

#[test]
fn a_source_timestamp_out_of_range_is_discarded_and_the_entity_kept() {
    let hub = Hub::new(Duration::from_secs(60));
    let bus = origin(0, "bus");
    let (_, mut rx) = hub.subscribe(TypeFilter::default(), 100, false);
    hub.apply_push(
        &bus,
        vec![
            push(
                PushAction::Upsert,
                Entity::resource("t", "year-0").with_source_updated_micros(i64::MIN),
            ),
            push(
                PushAction::Upsert,
                Entity::resource("t", "1969").with_source_updated_micros(-1),
            ),
        ],
    );
    let got: Vec<(Action, String, Option<i64>)> = {
        let mut out = Vec::new();
        while let Some(Event::Change(c)) = rx.try_recv() {
            out.push((c.action, c.entity.key(), c.entity.source_updated_micros()));
        }
        out
    };
    assert_eq!(
        got,
        vec![
            (Action::Created, "t:year-0".to_owned(), None),
            (Action::Created, "t:1969".to_owned(), Some(-1)),
        ]
    );
    assert_eq!(
        metric(
            &hub,
            "synchronizer_invalid_timestamps_total{plugin_instance=\"bus\"}"
        ),
        Some(1)
    );
}

#[test]
fn a_late_message_for_a_deleted_server_is_swept_by_the_next_poll() {
    let hub = Hub::new(Duration::from_secs(600));
    let (nova, bus) = (origin(0, "nova"), origin(1, "bus"));
    let types = vec!["nova.instance".to_owned()];
    hub.register(&nova, &types, &types);
    hub.register(&bus, &types, &[]);
    let (_, mut rx) = hub.subscribe(TypeFilter::default(), 100, false);
    let vm = |state: &str, t: i64| {
        Entity::resource("nova.instance", "8c8b3b58-2f36-4c8b-9b8e-5f0f3d7b0a11")
            .with_state(state)
            .with_source_updated_micros(t)
    };
    hub.apply_snapshot(&nova, snapshot(vec![vm("ACTIVE", 10)]), &types, 100, false);
    // Deleted in Nova: the poll no longer lists it.
    hub.apply_snapshot(&nova, snapshot(vec![]), &types, 200, false);
    // Minutes later a message about it arrives, newer than anything known.
    hub.apply_push(&bus, vec![push(PushAction::Upsert, vm("ACTIVE", 500))]);
    // The next poll, which does not list it, deletes it again: no permanent ghost.
    hub.apply_snapshot(&nova, snapshot(vec![]), &types, 600, false);
    let key = "nova.instance:8c8b3b58-2f36-4c8b-9b8e-5f0f3d7b0a11".to_owned();
    assert_eq!(
        changes(&mut rx),
        vec![
            (Action::Created, key.clone()),
            (Action::Deleted, key.clone()),
            (Action::Created, key.clone()),
            (Action::Deleted, key),
        ]
    );
    assert!(hub.entities(&TypeFilter::default()).is_empty());
}

#[test]
fn a_push_keeps_the_properties_it_leaves_out_and_marks_kept() {
    let hub = Hub::new(Duration::from_secs(60));
    let nova = origin(0, "nova");
    let bus = origin(1, "bus");
    let types = vec!["nova.instance".to_owned()];
    hub.register(&nova, &types, &types);
    hub.register(&bus, &types, &[]);
    let (_, mut rx) = hub.subscribe(TypeFilter::default(), 100, false);
    let instance = |task: Option<&str>, name: Option<&str>| {
        let mut props = serde_json::json!({ "task_state": task });
        if let Some(n) = name {
            props["instance_name"] = n.into();
        }
        Entity::resource("nova.instance", "u1").with_properties(props)
    };
    // The collector's form has the name.
    let _ = hub.apply_snapshot(
        &nova,
        snapshot(vec![instance(None, Some("instance-00000001"))]),
        &types,
        0,
        false,
    );
    assert_eq!(changes(&mut rx).len(), 1);
    // A notification without it, with nothing else new: no change at all.
    let same = instance(None, None).with_kept_properties(&["instance_name"]);
    let applied = hub.apply_push(&bus, vec![push(PushAction::Upsert, same)]);
    assert_eq!((applied.created, applied.updated), (0, 0));
    assert!(changes(&mut rx).is_empty());
    // One with a new task state: updated, the name still there, the marker gone.
    let busy = instance(Some("powering-off"), None).with_kept_properties(&["instance_name"]);
    let _ = hub.apply_push(&bus, vec![push(PushAction::Upsert, busy)]);
    assert_eq!(
        changes(&mut rx),
        vec![(Action::Updated, "nova.instance:u1".to_owned())]
    );
    let held = hub.entities(&TypeFilter::default());
    assert_eq!(
        held[0].properties_json(),
        r#"{"instance_name":"instance-00000001","task_state":"powering-off"}"#
    );
    // The collector's next poll with the same content: nothing.
    let _ = hub.apply_snapshot(
        &nova,
        snapshot(vec![instance(
            Some("powering-off"),
            Some("instance-00000001"),
        )]),
        &types,
        0,
        false,
    );
    assert!(changes(&mut rx).is_empty());
    // Within one batch the earlier push is what is kept from.
    let created = Entity::resource("nova.instance", "u2")
        .with_properties(serde_json::json!({"instance_name": "instance-2", "task_state": null}));
    let later = Entity::resource("nova.instance", "u2")
        .with_properties(serde_json::json!({"task_state": "spawning"}))
        .with_kept_properties(&["instance_name"]);
    let _ = hub.apply_push(
        &bus,
        vec![
            push(PushAction::Upsert, created),
            push(PushAction::Upsert, later),
        ],
    );
    let u2 = hub
        .entities(&TypeFilter::default())
        .into_iter()
        .find(|e| e.id() == "u2")
        .unwrap();
    assert_eq!(
        u2.properties_json(),
        r#"{"instance_name":"instance-2","task_state":"spawning"}"#
    );
}
