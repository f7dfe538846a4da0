//! The durable baseline with an AMQP output: a change stays *in doubt* in the store
//! until the output's broker confirmed it. A change the broker never confirmed (it was
//! away until shutdown) is announced again after the restart, and published then; a
//! confirmed one is not. The static plugin `.so` through the real loader, the real RabbitMQ on
//! 127.0.0.1:5672 (`scripts/rabbitmq/ensure.sh` starts it).

use std::path::Path;
use std::time::Duration;

use synchronizer::{Action, Event, SubscribeOptions, Subscription, Synchronizer};
use synchronizer_test_kit::broker::{BROKER, Cleanup};
use synchronizer_test_kit::paths::plugins_dir;

/// Nothing listens on port 1: connections are refused at once.
const AWAY: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

const DATA: &str = "entities:\n  - type: switch\n    id: s1\n    state: up\n  - type: switch\n    id: s2\n    state: up\n";

/// The output's exchange on the test broker: this run's own.
fn exchange() -> String {
    format!("synchronizer-test-durable-{}", std::process::id())
}

fn config(dir: &Path, output_url: &str) -> synchronizer::Config {
    let toml = format!(
        r#"
plugins_dir = {plugins:?}
baseline_file = {store:?}

[[outputs.amqp]]
url = "{output_url}"
exchange = "{exchange}"
reconnect_initial = "50ms"
reconnect_max = "100ms"
drain_timeout = "300ms"

[[instances]]
name = "static"
library = "libsynchronizer_static.so"
interval = "1h"
jitter = "0s"
[instances.config]
directory = {data:?}
"#,
        plugins = plugins_dir().display().to_string(),
        store = dir.join("baseline.redb").display().to_string(),
        data = dir.join("data").display().to_string(),
        exchange = exchange(),
    );
    synchronizer::Config::from_toml(&toml).expect("config")
}

async fn start(dir: &Path, output_url: &str) -> (Synchronizer, Subscription) {
    let started = Synchronizer::start_subscribed(
        config(dir, output_url),
        &SubscribeOptions::types(&["switch"]),
    )
    .await
    .expect("host starts");
    for _ in 0..200 {
        if started.0.ready() {
            return started;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "the first snapshot did not complete: {:?}",
        started.0.status()
    );
}

/// The next `n` changes for `sub` (the store announces them once it has committed
/// them, a moment after the snapshot that decided them), as (action, key), sorted; then
/// whatever else is already queued.
async fn changes(sub: &mut Subscription, n: usize) -> Vec<(Action, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), sub.recv()).await {
            Ok(Some(Event::Change(c))) => out.push((c.action, c.entity.key())),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    while let Some(event) = sub.try_recv() {
        if let Event::Change(c) = event {
            out.push((c.action, c.entity.key()));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_the_output_never_confirmed_are_announced_again_after_a_restart() {
    let _cleanup = Cleanup::new().exchanges([exchange()]);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("data")).expect("data dir");
    std::fs::write(dir.path().join("data/switches.yaml"), DATA).expect("data");
    let created = vec![
        (Action::Created, "switch:s1".to_owned()),
        (Action::Created, "switch:s2".to_owned()),
    ];

    // The output's broker is away for the whole run: the changes are reported locally,
    // never confirmed, so they stay in doubt.
    let (sync, mut sub) = start(dir.path(), AWAY).await;
    assert_eq!(changes(&mut sub, 2).await, created);
    sync.shutdown().await;

    // Next run, broker up: the same two changes again (announced from the store's
    // in-doubt rows), now confirmed by the broker and settled.
    let (sync, mut sub) = start(dir.path(), BROKER).await;
    assert_eq!(
        changes(&mut sub, 2).await,
        created,
        "reported again after the restart"
    );
    let mut published = 0;
    for _ in 0..400 {
        published = sync
            .metrics_text()
            .lines()
            .find(|l| l.starts_with("synchronizer_output_published_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if published == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(published, 2, "{}", sync.metrics_text());
    sync.shutdown().await;

    // And the run after that knows them: nothing to report.
    let (sync, mut sub) = start(dir.path(), BROKER).await;
    assert_eq!(
        changes(&mut sub, 0).await,
        vec![],
        "confirmed changes were settled"
    );
    sync.get_all(&["switch"]).await.expect("a poll");
    sync.hub().flush(Duration::from_secs(10)).await;
    assert_eq!(changes(&mut sub, 0).await, vec![]);
    sync.shutdown().await;
}
