//! Subscribers: filtering by type, isolation (a stalled subscriber delays nobody and loses
//! nothing silently: it gets a resync marker and a full snapshot), periodic resyncs, and
//! callback subscriptions on their own threads.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use synchronizer::hub::{Hub, Origin, TypeFilter};
use synchronizer::{Action, Event, ResyncReason};
use synchronizer_plugin_api::Entity;
use synchronizer_plugin_api::abi::{FfiPushed, FfiSnapshot, PushAction};

fn origin() -> Origin {
    Origin {
        owner: 0,
        instance: Arc::from("test"),
    }
}

fn snapshot(entities: Vec<Entity>) -> FfiSnapshot {
    FfiSnapshot {
        entities: entities.into(),
        incomplete: Default::default(),
    }
}

fn host(id: &str, state: &str) -> Entity {
    Entity::resource("nova.host", id).with_state(state)
}

fn upsert(e: Entity) -> FfiPushed {
    FfiPushed {
        action: PushAction::Upsert,
        entity: e,
    }
}

fn drain(rx: &mut synchronizer::queue::QueueRx) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

#[test]
fn subscribers_get_only_their_types() {
    let hub = Hub::new(Duration::from_secs(60));
    let (_, mut hosts) = hub.subscribe(TypeFilter::new(&["nova.host"]), 16, false);
    let (_, mut all) = hub.subscribe(TypeFilter::default(), 16, false);
    hub.apply_snapshot(
        &origin(),
        snapshot(vec![host("h1", "up"), Entity::resource("nova.zone", "az1")]),
        &[],
        1,
        true,
    );
    let h = drain(&mut hosts);
    assert_eq!(h.len(), 1);
    assert!(
        matches!(&h[0], Event::Change(c) if c.entity.key() == "nova.host:h1" && c.action == Action::Created && c.initial)
    );
    assert_eq!(drain(&mut all).len(), 2);
}

#[test]
fn a_stalled_subscriber_is_resynced_and_never_blocks_the_others() {
    let hub = Hub::new(Duration::from_secs(60));
    let (_, mut slow) = hub.subscribe(TypeFilter::default(), 4, false);
    let (_, mut fast) = hub.subscribe(TypeFilter::default(), 1024, false);
    // 10 pushes of 1 change each; the slow one reads nothing meanwhile.
    for i in 0..10 {
        hub.apply_push(&origin(), vec![upsert(host(&format!("h{i}"), "up"))]);
    }
    assert_eq!(
        drain(&mut fast).len(),
        10,
        "the fast subscriber got everything"
    );
    assert_eq!(hub.lagged_total(), 1);
    // The slow one got what fit, then nothing.
    let first = drain(&mut slow);
    assert_eq!(first.len(), 4);
    // Once it has room, it gets a resync marker and a snapshot of everything.
    hub.recover_lagged();
    let next = drain(&mut slow);
    assert_eq!(next.len(), 2, "{next:?}");
    assert!(matches!(next[0], Event::Resync(ResyncReason::Lagged)));
    match &next[1] {
        Event::Snapshot(entities) => {
            let keys: Vec<String> = entities.iter().map(|e| e.key()).collect();
            assert_eq!(keys.len(), 10);
            assert!(keys.contains(&"nova.host:h9".to_owned()));
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    // And then changes again, in order.
    hub.apply_push(&origin(), vec![upsert(host("h0", "down"))]);
    let after = drain(&mut slow);
    assert!(matches!(&after[..], [Event::Change(c)] if c.action == Action::Updated));
}

#[test]
fn changes_to_one_key_in_one_batch_collapse_into_one() {
    let hub = Hub::new(Duration::from_secs(60));
    let (_, mut rx) = hub.subscribe(TypeFilter::default(), 64, false);
    let t = |e: Entity, us: i64| e.with_source_updated_micros(us);
    hub.apply_push(
        &origin(),
        vec![
            upsert(t(host("a", "building"), 1)),
            upsert(t(host("a", "active"), 2)),
            upsert(t(host("b", "x"), 1)),
            FfiPushed {
                action: PushAction::Delete,
                entity: t(host("b", ""), 2),
            },
        ],
    );
    let events = drain(&mut rx);
    assert_eq!(
        events.len(),
        1,
        "a: created once (final state); b: created and deleted: nothing"
    );
    match &events[0] {
        Event::Change(c) => {
            assert_eq!(c.action, Action::Created);
            assert_eq!(c.entity.state(), Some("active"));
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn an_initial_snapshot_comes_first_when_asked() {
    let hub = Hub::new(Duration::from_secs(60));
    hub.apply_push(&origin(), vec![upsert(host("a", "up"))]);
    let (_, mut rx) = hub.subscribe(TypeFilter::new(&["nova.host"]), 8, true);
    let events = drain(&mut rx);
    assert!(matches!(events[0], Event::Resync(ResyncReason::Initial)));
    assert!(matches!(&events[1], Event::Snapshot(v) if v.len() == 1));
}

#[tokio::test(start_paused = true)]
async fn a_periodic_resync_delivers_full_snapshots() {
    let hub = Arc::new(Hub::new(Duration::from_secs(60)));
    hub.apply_push(&origin(), vec![upsert(host("a", "up"))]);
    let sync_like = synchronizer::subscription::SubscribeOptions {
        types: vec!["nova.host".into()],
        resync_every: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let mut sub = synchronizer::subscription::Subscription::for_hub(&hub, &sync_like);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(matches!(
        sub.try_recv(),
        Some(Event::Resync(ResyncReason::Periodic))
    ));
    assert!(matches!(sub.try_recv(), Some(Event::Snapshot(v)) if v.len() == 1));
    assert!(sub.try_recv().is_none());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(matches!(
        sub.try_recv(),
        Some(Event::Resync(ResyncReason::Periodic))
    ));
}

#[test]
fn a_slow_callback_delays_nobody() {
    let hub = Arc::new(Hub::new(Duration::from_secs(60)));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let (gate_tx, gate_rx) = std_mpsc::channel::<()>();
    let (seen_tx, seen_rx) = std_mpsc::channel::<Event>();
    let options = synchronizer::subscription::SubscribeOptions {
        queue: 2,
        ..Default::default()
    };
    let slow = synchronizer::subscription::Subscription::for_hub(&hub, &options);
    // The callback waits for the gate on every event: it is as slow as we like.
    let handle = synchronizer::CallbackSubscription::from_subscription(slow, move |e| {
        let _ = gate_rx.recv();
        let _ = seen_tx.send(e);
    })
    .unwrap();
    let (_, mut fast) = hub.subscribe(TypeFilter::default(), 1024, false);
    let t0 = std::time::Instant::now();
    for i in 0..100 {
        hub.apply_push(&origin(), vec![upsert(host(&format!("h{i}"), "up"))]);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "publishing waited for the callback"
    );
    assert_eq!(drain(&mut fast).len(), 100);
    // Release the callback: it sees what fit in its queue, then a resync and a snapshot.
    for _ in 0..10 {
        let _ = gate_tx.send(());
    }
    hub.recover_lagged();
    let mut got = Vec::new();
    while let Ok(e) = seen_rx.recv_timeout(Duration::from_millis(500)) {
        got.push(e);
        let _ = gate_tx.send(());
        hub.recover_lagged();
    }
    assert!(
        got.iter()
            .any(|e| matches!(e, Event::Resync(ResyncReason::Lagged))),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|e| matches!(e, Event::Snapshot(v) if v.len() == 100))
    );
    drop(gate_tx);
    handle.cancel();
}

#[test]
fn entities_of_types_not_covered_are_ignored() {
    let hub = Hub::new(Duration::from_secs(60));
    let (_, mut rx) = hub.subscribe(TypeFilter::default(), 16, false);
    let (entities, applied) = hub.apply_snapshot(
        &origin(),
        snapshot(vec![host("h1", "up"), Entity::resource("nova.zone", "az1")]),
        &["nova.host".to_owned()],
        1,
        true,
    );
    assert_eq!(applied.created, 1);
    assert_eq!(entities.len(), 1);
    assert_eq!(entities[0].key(), "nova.host:h1");
    assert_eq!(drain(&mut rx).len(), 1);
    assert!(hub.entities(&TypeFilter::new(&["nova.zone"])).is_empty());
}
