//! Integration tests of the bus plugin against the real RabbitMQ and the real
//! oslo.messaging publisher. Each test has its own exchanges, topics, queues and
//! dead-letter queue, so they run in parallel. See the test kit's `broker` module (test-kit/src/broker.rs) for the setup they
//! need (they fail, not pass, without a broker).

use std::path::PathBuf;
use std::time::Duration;

use synchronizer::{Action, Event, SubscribeOptions, Synchronizer};
use synchronizer_bus::Bus;
use synchronizer_bus::config::Subscription;
use synchronizer_bus::mapping::{
    Families, Family, Interpretation, Interpreted, interpret, parse_timestamp,
};
use synchronizer_bus::testing::*;
use synchronizer_plugin_api::{Change, Direction};
use synchronizer_test_kit::broker::*;
use synchronizer_test_kit::oslo::*;
use synchronizer_test_kit::paths::plugin_library_dir;
use synchronizer_test_kit::sys::unique;
use synchronizer_test_kit::wait::{wait_for, wait_until};
use tokio_util::sync::CancellationToken;

const V_UPDATE: &str = "nova-30/versioned_notifications.info__instance.update.raw.json";
const V_CREATE: &str = "nova-30/versioned_notifications.info__instance.create.end.raw.json";
const V_POWER_OFF: &str = "nova-30/versioned_notifications.info__instance.power_off.end.raw.json";
const V_DELETE: &str = "nova-30/versioned_notifications.info__instance.delete.end.raw.json";
const L_CREATE: &str = "nova-30/vitrage_notifications.info__compute.instance.create.end.raw.json";
const L_DELETE: &str = "nova-30/vitrage_notifications.info__compute.instance.delete.end.raw.json";
const L_SCHED: &str =
    "nova-30/vitrage_notifications.info__scheduler.select_destinations.end.raw.json";
const HEAT_INFO: &str = "heat-24/notifications-vitrage_notifications.info.json";
const HEAT_ERROR: &str = "heat-24/notifications-vitrage_notifications.error.json";

const WAIT: Duration = Duration::from_secs(30);

fn micros(ts: &str) -> i64 {
    parse_timestamp(ts).expect("test timestamp")
}

/// Runs `bus` in the background; returns its stop token and join handle.
fn start(
    bus: std::sync::Arc<Bus>,
    sink: RecordingSink,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), synchronizer_bus::BusError>>,
) {
    let stop = CancellationToken::new();
    let s = stop.clone();
    let handle = tokio::spawn(async move { bus.run(sink, s).await });
    (stop, handle)
}

async fn stop_bus(
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), synchronizer_bus::BusError>>,
) {
    stop.cancel();
    let r = tokio::time::timeout(Duration::from_secs(15), handle)
        .await
        .expect("the bus stops within 15 s")
        .expect("the bus task does not panic");
    r.expect("the bus stops cleanly");
}

/// Versioned notifications through the plugin `.so` loaded by the real host: the exact
/// changes a subscriber sees over an instance's life, and a late ERROR notification
/// (older than the deletion, on the other queue) that must not resurrect it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_through_the_loaded_plugin() {
    logs();
    require_broker().await;
    let tag = unique("lifecycle");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([exchange.clone(), format!("{tag}.dlx")]);
    let toml = format!(
        r#"
plugins_dir = "{dir}"
tombstone_ttl = "10m"
plugin_log_level = "warn"
[[instances]]
name = "bus-under-test"
library = "libsynchronizer_bus.so"
[instances.config]
urls = ["{BROKER}"]
families = ["nova-versioned"]
batch_size = 1
connection_name = "{tag}"
reconnect_initial = "50ms"
reconnect_max = "500ms"
[instances.config.dead_letter]
exchange = "{tag}.dlx"
queue = "{tag}.dlq"
durable = false
[[instances.config.subscriptions]]
exchange = "{exchange}"
topics = ["{topic}"]
"#,
        dir = plugin_library_dir("synchronizer_bus").display()
    );
    let config = synchronizer::Config::from_toml(&toml).expect("host config");
    let sync = Synchronizer::start(config)
        .await
        .expect("host starts with the bus plugin");
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["nova.instance"]));

    let u = uuid(0x11fe, 1);
    let v = uuid(0x11fe, 2);
    let (t1, t2, t3, t4) = (
        "2026-11-25 08:37:35.733870",
        "2026-11-25 08:37:41.358157",
        "2026-11-25 08:37:47",
        "2026-11-25 08:37:52.092080",
    );
    // In Nova's order on the info queue: scheduling, active on compute1, stopped, deleted.
    publish(&[
        Spec::new(V_UPDATE, &exchange, &topic).uuid(&u).at(t1),
        Spec::new(V_CREATE, &exchange, &topic).uuid(&u).at(t2),
        Spec::new(V_POWER_OFF, &exchange, &topic).uuid(&u).at(t3),
        Spec::new(V_DELETE, &exchange, &topic).uuid(&u).at(t4),
    ]);

    let mut changes = Vec::new();
    while changes.len() < 4 {
        match tokio::time::timeout(WAIT, sub.recv()).await {
            Ok(Some(Event::Change(c))) => changes.push(c),
            Ok(Some(other)) => panic!("unexpected event {other:?}"),
            Ok(None) => panic!("subscription closed"),
            Err(_) => panic!("only {} of 4 changes arrived: {changes:?}", changes.len()),
        }
    }
    let key = format!("nova.instance:{u}");
    let summary: Vec<(Action, String, Option<String>, Option<i64>)> = changes
        .iter()
        .map(|c| {
            (
                c.action,
                c.entity.key(),
                c.entity.state().map(str::to_owned),
                c.entity.source_updated_micros(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                Action::Created,
                key.clone(),
                Some("BUILD".into()),
                Some(micros(t1))
            ),
            (
                Action::Updated,
                key.clone(),
                Some("ACTIVE".into()),
                Some(micros(t2))
            ),
            (
                Action::Updated,
                key.clone(),
                Some("SHUTOFF".into()),
                Some(micros(t3))
            ),
            (
                Action::Deleted,
                key.clone(),
                Some("SHUTOFF".into()),
                Some(micros(t3))
            ),
        ],
        "the deletion carries the last known form of the entity"
    );
    for c in &changes {
        assert_eq!(&*c.instance, "bus-under-test");
        assert!(!c.initial);
    }
    let names: Vec<&str> = changes.iter().map(|c| c.entity.name()).collect();
    assert_eq!(
        names,
        ["vm-a1", "vm-a1", "vm-a3", "vm-a3"],
        "names as the fixtures have them"
    );
    assert!(
        changes[0].entity.relations().is_empty(),
        "no host while scheduling"
    );
    let rel = &changes[1].entity.relations()[0];
    assert_eq!(
        (rel.kind(), rel.other(), rel.direction()),
        ("contains", "nova.host:compute1", Direction::Incoming)
    );
    assert_eq!(changes[1].entity.project(), Some("projA"));
    // The properties the fixture gives in-process (the exact shape is asserted in
    // src/mapping.rs), unchanged by the trip through oslo and the broker.
    let body = std::fs::read(fixture(V_CREATE)).expect("fixture");
    let Ok(Interpreted {
        interpretation: Interpretation::Change(Change::Upsert(expected)),
        ..
    }) = interpret(&body, Families::all())
    else {
        panic!("the fixture is an upsert")
    };
    assert_eq!(changes[1].entity.properties(), expected.properties());
    assert_eq!(changes[1].entity.properties()["flavor"], "m1.tiny");

    // A late ERROR about the deleted instance, older than its deletion, then a sentinel
    // on the same (error) queue: when the sentinel's change arrives, the late message has
    // been handled, and it must have changed nothing.
    publish(&[
        Spec::new(V_UPDATE, &exchange, &topic)
            .uuid(&u)
            .state("error")
            .priority("error")
            .at("2026-11-25 08:37:50.000001"),
        Spec::new(V_UPDATE, &exchange, &topic)
            .uuid(&v)
            .state("error")
            .priority("error")
            .at("2026-11-25 08:37:53"),
    ]);
    match tokio::time::timeout(WAIT, sub.recv()).await {
        Ok(Some(Event::Change(c))) => {
            assert_eq!(c.action, Action::Created);
            assert_eq!(
                c.entity.key(),
                format!("nova.instance:{v}"),
                "the deleted instance came back: {c:?}"
            );
            assert_eq!(c.entity.state(), Some("ERROR"));
        }
        other => panic!("expected the sentinel's creation, got {other:?}"),
    }
    assert!(sub.try_recv().is_none(), "nothing else happened");
    let current = sync.current(&["nova.instance"]);
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].id(), v);

    sync.shutdown().await;
}

/// Legacy Nova notifications (one sent by the older `messaging` driver, unwrapped) and
/// Heat's, on one queue bound to two exchanges (oslo's shared default queue name); a
/// versioned notification of a family that is off and an unknown event are acknowledged
/// and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_heat_and_the_older_driver_in_process() {
    logs();
    require_broker().await;
    let tag = unique("legacy");
    let (nova, heat) = (format!("nova-{tag}"), format!("heat-{tag}"));
    let topic = format!("t-{tag}");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([nova.clone(), heat.clone(), format!("{tag}.dlx")]);
    let mut config = config(
        vec![subscription(&nova, &topic), subscription(&heat, &topic)],
        &tag,
    );
    config.families = vec![Family::NovaLegacy, Family::Heat];
    let bus = std::sync::Arc::new(Bus::new(config, "legacy").unwrap());
    assert_eq!(bus.queues().len(), 2, "{:?}", bus.queues());
    assert_eq!(bus.queues()[0].bindings.len(), 2);
    let sink = RecordingSink::default();
    let (stop, handle) = start(bus.clone(), sink.clone());

    let u = uuid(0x1e6a, 1);
    publish(&[
        Spec::new(L_CREATE, &nova, &topic)
            .uuid(&u)
            .at("2026-11-25 08:37:41.356473")
            .driver("messaging"),
        Spec::new(V_CREATE, &nova, &topic)
            .uuid(&u)
            .at("2026-11-25 08:37:41.5"),
        Spec::new(L_SCHED, &nova, &topic),
        Spec::new(L_DELETE, &nova, &topic)
            .uuid(&u)
            .at("2026-11-25 08:37:52.090107"),
        Spec::new(HEAT_INFO, &heat, &topic).index(0),
        Spec::new(HEAT_INFO, &heat, &topic).index(1),
        Spec::new(HEAT_ERROR, &heat, &topic)
            .index(0)
            .priority("error"),
    ]);
    wait_until(WAIT, "5 changes", || sink.len() >= 5).await;
    wait_until(WAIT, "7 acks", || bus.stats().acked >= 7).await;
    let got: Vec<(bool, String, Option<String>)> = sink
        .changes()
        .iter()
        .map(|g| {
            (
                g.is_delete(),
                g.entity().key(),
                g.entity().state().map(str::to_owned),
            )
        })
        .collect();
    let info: Vec<_> = got
        .iter()
        .filter(|(_, _, s)| s.as_deref() != Some("CREATE_FAILED"))
        .cloned()
        .collect();
    assert_eq!(
        info,
        vec![
            (false, format!("nova.instance:{u}"), Some("ACTIVE".into())),
            (true, format!("nova.instance:{u}"), Some("DELETED".into())),
            (
                false,
                "heat.stack:8b975fd3-1abc-42db-8f09-7cc89cac27cd".into(),
                Some("CREATE_IN_PROGRESS".into())
            ),
            (
                false,
                "heat.stack:8b975fd3-1abc-42db-8f09-7cc89cac27cd".into(),
                Some("CREATE_COMPLETE".into())
            ),
        ]
    );
    assert!(got.contains(&(
        false,
        "heat.stack:1e700381-8647-4e2f-b67f-a0f5a87597d4".into(),
        Some("CREATE_FAILED".into())
    )));
    assert_eq!(got.len(), 5);
    let legacy = sink.changes()[0].entity().clone();
    assert_eq!(legacy.relations()[0].other(), "nova.host:compute1");
    assert_eq!(
        legacy.source_updated_micros(),
        Some(micros("2026-11-25 08:37:41.356473"))
    );
    let s = bus.stats();
    assert_eq!(
        (s.family_off, s.unknown, s.malformed, s.duplicates),
        (1, 1, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.changes, 5);

    stop_bus(stop, handle).await;
    let conn = connect().await;
    for q in [format!("{topic}.info"), format!("{topic}.error")] {
        assert_eq!(ready(&conn, &q).await, Some(0), "{q} is drained");
    }
    close(conn).await;
}

/// The same message twice on one queue, and one notification sent to two topics (same
/// message_id on two queues): one change each, both duplicates acknowledged and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_dropped() {
    logs();
    require_broker().await;
    let tag = unique("dups");
    let exchange = format!("nova-{tag}");
    let (t1, t2) = (format!("a-{tag}"), format!("b-{tag}"));
    let _cleanup = Cleanup::new()
        .queues(
            [&t1, &t2]
                .iter()
                .flat_map(|t| [format!("{t}.info"), format!("{t}.error")]),
        )
        .queues([format!("{tag}.dlq")])
        .exchanges([exchange.clone(), format!("{tag}.dlx")]);
    let mut sub = subscription(&exchange, &t1);
    sub.topics.push(t2.clone());
    let bus = std::sync::Arc::new(Bus::new(config(vec![sub], &tag), "dups").unwrap());
    let sink = RecordingSink::default();
    let (stop, handle) = start(bus.clone(), sink.clone());
    let (a, b) = (uuid(0xd0, 1), uuid(0xd0, 2));
    publish(&[
        Spec::new(V_CREATE, &exchange, &t1)
            .uuid(&a)
            .message_id("dup-a")
            .at("2026-11-25 08:37:41"),
        Spec::new(V_CREATE, &exchange, &t1)
            .uuid(&a)
            .message_id("dup-a")
            .at("2026-11-25 08:37:41"),
        Spec::new(V_CREATE, &exchange, &t1)
            .uuid(&b)
            .topics(&[&t1, &t2])
            .at("2026-11-25 08:37:42"),
    ]);
    wait_until(WAIT, "4 messages acknowledged", || bus.stats().acked >= 4).await;
    let keys: Vec<String> = sink.changes().iter().map(|g| g.entity().key()).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.contains(&format!("nova.instance:{a}"))
            && keys.contains(&format!("nova.instance:{b}"))
    );
    let s = bus.stats();
    assert_eq!(
        (s.received, s.duplicates, s.changes, s.acked),
        (4, 2, 2, 4),
        "{s:?}"
    );
    stop_bus(stop, handle).await;
    let conn = connect().await;
    let queues: Vec<String> = [&t1, &t2]
        .iter()
        .flat_map(|t| [format!("{t}.info"), format!("{t}.error")])
        .chain([format!("{tag}.dlq")])
        .collect();
    for q in &queues[..4] {
        assert_eq!(ready(&conn, q).await, Some(0), "{q}");
    }
    close(conn).await;
}

/// Malformed messages on the queue oslo declares itself: republished to the dead-letter
/// exchange (the queue keeps oslo's arguments) with the reason, then acknowledged; the
/// good messages around them go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_go_to_the_dead_letter_queue() {
    logs();
    require_broker().await;
    let tag = unique("malformed");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([exchange.clone(), format!("{tag}.dlx")]);
    let bus = std::sync::Arc::new(
        Bus::new(
            config(vec![subscription(&exchange, &topic)], &tag),
            "malformed",
        )
        .unwrap(),
    );
    assert!(bus.queues()[0].publisher_declared());
    let sink = RecordingSink::default();
    let (stop, handle) = start(bus.clone(), sink.clone());
    let (a, b) = (uuid(0xba, 1), uuid(0xba, 2));
    publish(&[
        Spec::new(V_CREATE, &exchange, &topic)
            .uuid(&a)
            .at("2026-11-25 08:37:41"),
        // Sent by oslo, but its payload lacks the instance's uuid.
        Spec::new(V_CREATE, &exchange, &topic)
            .set(serde_json::json!({"uuid": null}))
            .message_id("no-uuid")
            .at("2026-11-25 08:37:41"),
    ]);
    let conn = connect().await;
    publish_raw(&conn, &exchange, &format!("{topic}.info"), b"{not json").await;
    // Its reason quotes a 300 kB `timestamp`: cut, so that the copy's headers fit in the
    // broker's frames (uncut, RabbitMQ closed the connection with FRAME_ERROR and the
    // message came back after every reconnection; found with the fuzz target `bus_message`).
    let huge = serde_json::json!({
        "event_type": "instance.update",
        "timestamp": "x".repeat(300_000),
        "payload": {},
    })
    .to_string();
    publish_raw(&conn, &exchange, &format!("{topic}.info"), huge.as_bytes()).await;
    publish(&[Spec::new(V_CREATE, &exchange, &topic)
        .uuid(&b)
        .at("2026-11-25 08:37:43")]);

    wait_until(WAIT, "2 changes", || sink.len() >= 2).await;
    wait_until(WAIT, "3 dead letters", || bus.stats().malformed >= 3).await;
    wait_until(WAIT, "2 acks", || bus.stats().acked >= 2).await;
    let keys: Vec<String> = sink.changes().iter().map(|g| g.entity().key()).collect();
    assert_eq!(
        keys,
        vec![format!("nova.instance:{a}"), format!("nova.instance:{b}")]
    );

    let dead = drain(&conn, &format!("{tag}.dlq")).await;
    assert_eq!(
        dead.len(),
        3,
        "the malformed messages are in the dead-letter queue"
    );
    let reason = |m: &lapin::message::BasicGetMessage| -> String {
        let headers = m.delivery.properties.headers().clone().unwrap_or_default();
        match headers.inner().get("x-synchronizer-reason") {
            Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("no reason header: {other:?}"),
        }
    };
    assert!(
        reason(&dead[0]).contains("no instance `uuid`"),
        "{}",
        reason(&dead[0])
    );
    assert!(
        String::from_utf8_lossy(&dead[0].delivery.data)
            .contains("\\\"message_id\\\": \\\"no-uuid\\\"")
    );
    assert!(
        reason(&dead[1]).contains("not an oslo.messaging JSON object"),
        "{}",
        reason(&dead[1])
    );
    assert_eq!(dead[1].delivery.data, b"{not json");
    assert!(
        reason(&dead[2]).contains("is not a date and time")
            && reason(&dead[2]).len() <= synchronizer_bus::mapping::MAX_REASON,
        "{}",
        reason(&dead[2])
    );
    assert_eq!(dead[2].delivery.data, huge.as_bytes());

    stop_bus(stop, handle).await;
    assert_eq!(
        ready(&conn, &format!("{topic}.info")).await,
        Some(0),
        "nothing left unacknowledged"
    );
    let s = bus.stats();
    assert_eq!(
        (s.received, s.changes, s.acked, s.malformed),
        (5, 2, 2, 3),
        "{s:?}"
    );
    close(conn).await;
}

/// On a queue of our own (declared with `x-dead-letter-exchange`), a malformed message
/// is rejected and the broker dead-letters it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_on_our_own_queue_are_rejected_to_the_dead_letter_exchange() {
    logs();
    require_broker().await;
    let tag = unique("reject");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let _cleanup = Cleanup::new()
        .queues([
            format!("sync.{topic}.info"),
            format!("{topic}.info"),
            format!("{tag}.dlq"),
        ])
        .exchanges([exchange.clone(), format!("{tag}.dlx")]);
    let mut sub = subscription(&exchange, &topic);
    sub.queue = Some("sync.{topic}.{priority}".into());
    sub.priorities = Some(vec!["info".into()]);
    let bus = std::sync::Arc::new(Bus::new(config(vec![sub], &tag), "reject").unwrap());
    let own = format!("sync.{topic}.info");
    assert_eq!(bus.queues()[0].name, own);
    assert!(!bus.queues()[0].publisher_declared());
    let sink = RecordingSink::default();
    let (stop, handle) = start(bus.clone(), sink.clone());
    let conn = connect().await;
    // Our queue must be bound before anything is published to it.
    wait_until(WAIT, "the consumer is up", || bus.stats().connected).await;
    publish_raw(&conn, &exchange, &format!("{topic}.info"), b"[]").await;
    publish(&[Spec::new(V_CREATE, &exchange, &topic)
        .uuid(&uuid(0x4e, 1))
        .at("2026-11-25 08:37:41")]);
    wait_until(WAIT, "1 change", || !sink.is_empty()).await;
    wait_until(WAIT, "1 dead letter", || bus.stats().malformed >= 1).await;
    // The broker dead-letters asynchronously.
    let dlq = format!("{tag}.dlq");
    wait_for(WAIT, "the dead letter to arrive", || async {
        ready(&conn, &dlq).await.unwrap_or(0) >= 1
    })
    .await;
    let dead = drain(&conn, &dlq).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].delivery.data, b"[]");
    let headers = dead[0]
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    assert!(
        headers.inner().contains_key("x-death"),
        "dead-lettered by the broker: {headers:?}"
    );

    stop_bus(stop, handle).await;
    assert_eq!(ready(&conn, &own).await, Some(0));
    close(conn).await;
}

/// Shutdown while messages are in flight: what was received is handed over and
/// acknowledged, the rest stays in the queue, and a second consumer gets exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_messages_in_flight_loses_nothing() {
    logs();
    require_broker().await;
    const N: u32 = 300;
    let tag = unique("shutdown");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([exchange.clone(), format!("{tag}.dlx")]);
    let specs: Vec<Spec> = (0..N)
        .map(|i| {
            Spec::new(V_UPDATE, &exchange, &topic)
                .uuid(&uuid(0x5d, i))
                .at("2026-11-25 08:37:35.733870")
        })
        .collect();
    publish(&specs);
    let conn = connect().await;
    let queue = format!("{topic}.info");
    assert_eq!(ready(&conn, &queue).await, Some(N));

    let mut cfg = config(vec![subscription(&exchange, &topic)], &tag);
    cfg.prefetch = 50;
    cfg.batch_size = 10;
    let first = std::sync::Arc::new(Bus::new(cfg.clone(), "first").unwrap());
    let sink1 = RecordingSink::slow(Duration::from_millis(30));
    let (stop, handle) = start(first.clone(), sink1.clone());
    wait_until(WAIT, "40 changes", || sink1.len() >= 40).await;
    stop_bus(stop, handle).await;

    let delivered1: Vec<String> = sink1
        .changes()
        .iter()
        .map(|g| g.entity().id().to_owned())
        .collect();
    let s1 = first.stats();
    assert_eq!(
        s1.acked,
        delivered1.len() as u64,
        "acknowledged exactly what was delivered: {s1:?}"
    );
    assert!(delivered1.len() < N as usize, "stopped mid-stream");
    // The broker puts the unacknowledged messages back as the channels close.
    let expected_left = N - delivered1.len() as u32;
    let mut left = 0;
    for _ in 0..100 {
        left = ready(&conn, &queue).await.expect("queue");
        if left >= expected_left {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        left,
        expected_left,
        "nothing lost, nothing acknowledged undelivered: {left} left + {} delivered != {N}",
        delivered1.len()
    );

    let second = std::sync::Arc::new(Bus::new(cfg, "second").unwrap());
    let sink2 = RecordingSink::default();
    let (stop2, handle2) = start(second.clone(), sink2.clone());
    wait_until(WAIT, "the rest", || sink2.len() >= left as usize).await;
    stop_bus(stop2, handle2).await;
    let mut all: Vec<String> = delivered1;
    all.extend(sink2.changes().iter().map(|g| g.entity().id().to_owned()));
    assert_eq!(all.len(), N as usize, "no message was delivered twice");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), N as usize, "every message was delivered");
    assert_eq!(ready(&conn, &queue).await, Some(0));
    close(conn).await;
}

/// When the host refuses a batch, its messages are not acknowledged: they are still in
/// the queue after the plugin stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_not_acknowledged() {
    logs();
    require_broker().await;
    let tag = unique("refused");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([exchange.clone(), format!("{tag}.dlx")]);
    let specs: Vec<Spec> = (0..5)
        .map(|i| {
            Spec::new(V_UPDATE, &exchange, &topic)
                .uuid(&uuid(0xef, i))
                .at("2026-11-25 08:37:35")
        })
        .collect();
    publish(&specs);
    let mut cfg = config(vec![subscription(&exchange, &topic)], &tag);
    cfg.batch_size = 1;
    let bus = std::sync::Arc::new(Bus::new(cfg, "refused").unwrap());
    let sink = RecordingSink {
        fail_from: Some(2),
        ..Default::default()
    };
    let stop = CancellationToken::new();
    let err = tokio::time::timeout(WAIT, bus.run(sink.clone(), stop))
        .await
        .expect("the run ends")
        .expect_err("a refused batch ends the run");
    assert!(
        matches!(err, synchronizer_bus::BusError::Sink { .. }),
        "{err}"
    );
    assert_eq!(sink.len(), 1);
    assert_eq!(bus.stats().acked, 1);
    let conn = connect().await;
    let queue = format!("{topic}.info");
    wait_for(WAIT, "4 messages back in the queue", || async {
        ready(&conn, &queue).await == Some(4)
    })
    .await;
    close(conn).await;
}

/// amqps:// with the test CA (scripts/rabbitmq/ensure.sh makes it), after failing over
/// from a dead URL; without the CA the connection fails and the error names no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_custom_ca_and_failover() {
    logs();
    require_broker().await;
    let ca = PathBuf::from("/etc/rabbitmq/synchronizer-tls/ca.pem");
    assert!(
        ca.exists() && std::net::TcpStream::connect("127.0.0.1:5671").is_ok(),
        "the broker has no TLS listener on 127.0.0.1:5671 with the test CA {}: run scripts/rabbitmq/ensure.sh",
        ca.display()
    );
    let tag = unique("tls");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([exchange.clone(), format!("{tag}.dlx")]);
    let mut cfg = config(vec![subscription(&exchange, &topic)], &tag);
    cfg.urls = vec![
        "amqps://guest:guest@127.0.0.1:1/%2f".into(),
        "amqps://guest:guest@127.0.0.1:5671/%2f".into(),
    ];
    cfg.ca_file = Some(ca);
    let bus = std::sync::Arc::new(Bus::new(cfg.clone(), "tls").unwrap());
    let sink = RecordingSink::default();
    let (stop, handle) = start(bus.clone(), sink.clone());
    publish(&[Spec::new(V_CREATE, &exchange, &topic)
        .uuid(&uuid(0x7e, 1))
        .at("2026-11-25 08:37:41")]);
    wait_until(WAIT, "a change over TLS", || sink.len() == 1).await;
    let s = bus.stats();
    assert_eq!(s.connections, 1, "{s:?}");
    let health = bus.health();
    assert!(health.healthy, "{}", health.message);
    stop_bus(stop, handle).await;

    // Without the CA the server's certificate is not trusted.
    let mut untrusted = cfg;
    untrusted.urls = vec!["amqps://guest:s3cr3t-pw@127.0.0.1:5671/%2f".into()];
    untrusted.ca_file = None;
    let bus = std::sync::Arc::new(Bus::new(untrusted, "untrusted").unwrap());
    let (stop, handle) = start(bus.clone(), RecordingSink::default());
    wait_until(WAIT, "a failed attempt", || {
        !bus.health()
            .message
            .contains("no connection established yet")
    })
    .await;
    let synchronizer_plugin_api::Health { healthy, message } = bus.health();
    assert!(!healthy);
    assert!(
        message.contains("amqps://guest:***@127.0.0.1:5671"),
        "{message}"
    );
    assert!(!message.contains("s3cr3t-pw"), "{message}");
    stop_bus(stop, handle).await;
}

/// A wrong password is reported without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_reported_redacted() {
    logs();
    require_broker().await;
    let tag = unique("creds");
    let mut cfg = config(vec![subscription("nova", &format!("t-{tag}"))], &tag);
    cfg.urls = vec!["amqp://guest:wrong-pw-42@127.0.0.1:5672/%2f".into()];
    let bus = std::sync::Arc::new(Bus::new(cfg, "creds").unwrap());
    let (stop, handle) = start(bus.clone(), RecordingSink::default());
    wait_until(WAIT, "a failed attempt", || {
        !bus.health()
            .message
            .contains("no connection established yet")
    })
    .await;
    let synchronizer_plugin_api::Health { healthy, message } = bus.health();
    assert!(!healthy);
    assert!(!message.contains("wrong-pw-42"), "{message}");
    assert!(
        message.starts_with("not connected to amqp://guest:***@127.0.0.1:5672/%2f: "),
        "{message}"
    );
    stop_bus(stop, handle).await;
}

/// The `vhost` option: a notification published on another virtual host arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vhost_is_configurable() {
    logs();
    require_broker().await;
    let tag = unique("vhost");
    let _vhost = Vhost::add(&tag);
    let topic = format!("t-{tag}");
    let mut cfg = config(vec![subscription("nova", &topic)], &tag);
    cfg.vhost = Some(tag.clone());
    let bus = std::sync::Arc::new(Bus::new(cfg, "vhost").unwrap());
    let sink = RecordingSink::default();
    let (stop, handle) = start(bus.clone(), sink.clone());
    publish_to(
        &format!("rabbit://guest:guest@127.0.0.1:5672/{tag}"),
        &[Spec::new(V_CREATE, "nova", &topic)
            .uuid(&uuid(0x40, 1))
            .at("2026-11-25 08:37:41")],
    );
    wait_until(WAIT, "a change from the vhost", || sink.len() == 1).await;
    stop_bus(stop, handle).await;
}

/// Subscriptions of the default configuration, for the record.
#[test]
fn default_subscriptions_follow_nova_and_heat() {
    let c = synchronizer_bus::Config::with_urls([BROKER]);
    assert_eq!(
        c.subscriptions,
        vec![
            Subscription {
                exchange: "nova".into(),
                topics: vec!["versioned_notifications".into()],
                priorities: None,
                queue: None
            },
            Subscription {
                exchange: "heat".into(),
                topics: vec!["notifications".into()],
                priorities: None,
                queue: None
            },
        ]
    );
}
