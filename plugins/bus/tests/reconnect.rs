//! The broker drops every connection (`rabbitmqctl close_all_connections`) while the
//! plugin is in the middle of a queue, and more notifications are published while it
//! reconnects: every notification still reaches the sink exactly once.
//!
//! In a test binary of its own because it closes every connection of the broker: cargo
//! runs test binaries one after another, so the other tests' connections are not hit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use synchronizer_bus::Bus;
use synchronizer_bus::testing::*;
use synchronizer_test_kit::broker::*;
use synchronizer_test_kit::oslo::*;
use synchronizer_test_kit::sys::unique;
use synchronizer_test_kit::wait::wait_until;
use tokio_util::sync::CancellationToken;

const V_UPDATE: &str = "nova-30/versioned_notifications.info__instance.update.raw.json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_mid_stream_loses_nothing() {
    logs();
    require_broker().await;
    const BEFORE: u32 = 1000;
    const DURING: u32 = 200;
    let tag = unique("reconnect");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([exchange.clone(), format!("{tag}.dlx")]);
    let spec = |i: u32| {
        Spec::new(V_UPDATE, &exchange, &topic)
            .uuid(&uuid(0xc0, i))
            .at("2026-11-25 08:37:35.733870")
    };
    publish(&(0..BEFORE).map(spec).collect::<Vec<_>>());

    let mut cfg = config(vec![subscription(&exchange, &topic)], &tag);
    cfg.prefetch = 100;
    cfg.batch_size = 10;
    let bus = Arc::new(Bus::new(cfg, "reconnect").unwrap());
    // Slow enough that the drop lands in the middle of the queue.
    let sink = RecordingSink::slow(Duration::from_millis(20));
    let stop = CancellationToken::new();
    let handle = {
        let (bus, sink, stop) = (bus.clone(), sink.clone(), stop.clone());
        tokio::spawn(async move { bus.run(sink, stop).await })
    };
    wait_until(Duration::from_secs(30), "100 changes", || sink.len() >= 100).await;
    let before_drop = sink.len();
    tokio::task::spawn_blocking(|| {
        rabbitmqctl(&[
            "close_all_connections",
            "test: connection dropped mid-stream",
        ])
    })
    .await
    .expect("rabbitmqctl runs");
    // Published while the plugin reconnects (oslo reconnects by itself too).
    tokio::task::spawn_blocking({
        let specs: Vec<Spec> = (BEFORE..BEFORE + DURING).map(spec).collect();
        move || publish(&specs)
    })
    .await
    .expect("publisher runs");

    let total = (BEFORE + DURING) as usize;
    wait_until(Duration::from_secs(60), "every notification", || {
        let mut ids: Vec<String> = sink
            .changes()
            .iter()
            .map(|g| g.entity().id().to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        ids.len() >= total
    })
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), handle)
        .await
        .expect("stops")
        .expect("no panic")
        .expect("clean stop");

    let mut seen: HashMap<String, usize> = HashMap::new();
    for g in sink.changes() {
        *seen.entry(g.entity().id().to_owned()).or_default() += 1;
    }
    assert_eq!(seen.len(), total, "every notification arrived");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "redeliveries were recognised as duplicates: {twice:?}"
    );
    let s = bus.stats();
    assert!(s.connections >= 2, "the plugin reconnected: {s:?}");
    assert!(
        before_drop < BEFORE as usize,
        "the connection was dropped mid-stream ({before_drop} of {BEFORE} had arrived)"
    );
    assert_eq!(s.changes as usize, total, "{s:?}");
    eprintln!("stats after the drop: {s:?} ({before_drop} changes before it)");

    let conn = connect().await;
    assert_eq!(
        ready(&conn, &format!("{topic}.info")).await,
        Some(0),
        "nothing left behind"
    );
    close(conn).await;
}
