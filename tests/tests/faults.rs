//! Misbehaving plugins, as real .so files on the real loader: a panic in `snapshot`, a
//! snapshot that hangs (cancelled at its timeout), one that blocks its thread (abandoned,
//! reported stuck, never called again until it returns). Beside each, a healthy instance
//! keeps its schedule.

use std::time::{Duration, Instant};

use synchronizer::status::Health;
use synchronizer::{Action, Event, SubscribeOptions, Synchronizer};
use synchronizer_test_kit::host::{config, next_event, status_of, wait_status};

/// A config with a 100 ms `tick` instance beside `faulty` in the given mode.
fn beside_ticker(faulty: &str) -> synchronizer::Config {
    config(&format!(
        r#"
[defaults]
jitter = "0s"
backoff_initial = "100ms"
backoff_max = "200ms"

[[instances]]
name = "ticker"
library = "libsynchronizer_test_faulty.so"
interval = "100ms"
timeout = "1s"
[instances.config]
mode = "tick"

[[instances]]
name = "faulty"
library = "libsynchronizer_test_faulty.so"
interval = "100ms"
timeout = "300ms"
[instances.config]
{faulty}
"#
    ))
}

/// Counts the ticker's updates over `window`; the ticker polls every 100 ms.
async fn ticks_during(sub: &mut synchronizer::Subscription, window: Duration) -> usize {
    let end = Instant::now() + window;
    let mut ticks = 0;
    while Instant::now() < end {
        if let Ok(Some(Event::Change(c))) =
            tokio::time::timeout(end - Instant::now(), sub.recv()).await
            && c.entity.entity_type() == "faulty.tick"
            && &*c.instance == "ticker"
        {
            ticks += 1;
        }
    }
    ticks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_snapshot_is_a_failure_and_the_host_goes_on() {
    let sync = Synchronizer::start(beside_ticker("mode = \"panic\""))
        .await
        .unwrap();
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["faulty.tick"]));
    wait_status(&sync, "faulty", "failing", Duration::from_secs(10), |s| {
        s.failures >= 2
    })
    .await;
    let s = status_of(&sync, "faulty");
    assert_eq!(s.health, Health::Failing);
    let err = s.last_error.unwrap_or_default();
    assert!(
        err.contains("panicked") && err.contains("asked to panic"),
        "{err}"
    );
    assert!(ticks_during(&mut sub, Duration::from_millis(600)).await >= 3);
    sync.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_snapshot_is_cancelled_at_its_timeout() {
    let sync = Synchronizer::start(beside_ticker("mode = \"hang\""))
        .await
        .unwrap();
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["faulty.tick"]));
    // While the faulty instance hangs for its 300 ms timeouts, the ticker keeps time.
    let ticks = ticks_during(&mut sub, Duration::from_millis(1000)).await;
    assert!(
        ticks >= 6,
        "the ticker was held back: {ticks} ticks in 1 s at 100 ms"
    );
    wait_status(&sync, "faulty", "timed out", Duration::from_secs(10), |s| {
        s.failures >= 2
    })
    .await;
    let s = status_of(&sync, "faulty");
    // Cancelled, not stuck: the plugin's task was really aborted.
    assert_eq!(s.health, Health::Failing, "{s:?}");
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("timed out"),
        "{s:?}"
    );
    sync.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_thread_is_abandoned_reported_stuck_and_not_called_again() {
    // The first snapshot blocks its thread for 1.5 s against a 300 ms timeout.
    let sync = Synchronizer::start(beside_ticker("mode = \"block\"\nblock_ms = 1500"))
        .await
        .unwrap();
    let mut faulty = sync.subscribe(&SubscribeOptions::types(&["faulty.tick"]));
    wait_status(&sync, "faulty", "stuck", Duration::from_secs(10), |s| {
        s.health == Health::Stuck
    })
    .await;
    let s = status_of(&sync, "faulty");
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("stuck"),
        "{s:?}"
    );
    // The ticker is unaffected meanwhile.
    let ticks = ticks_during(&mut faulty, Duration::from_millis(500)).await;
    assert!(
        ticks >= 3,
        "ticker held back while another plugin is stuck: {ticks}"
    );
    // Once the blocking call returns, the instance is called again: its second call
    // (n = 2) succeeds after 1.5 s more. Had the host called it while stuck, n would be
    // higher.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let e = next_event(
            &mut faulty,
            Duration::from_secs(10),
            "the faulty instance's recovery",
        )
        .await;
        if let Event::Change(c) = e
            && &*c.instance == "faulty"
        {
            assert_eq!(c.action, Action::Created);
            assert_eq!(c.entity.properties()["n"], 2, "called while stuck");
            break;
        }
        assert!(Instant::now() < end);
    }
    // The status follows the change it reports.
    wait_status(&sync, "faulty", "healthy", Duration::from_secs(10), |s| {
        s.health == Health::Healthy
    })
    .await;
    sync.shutdown().await;
}
