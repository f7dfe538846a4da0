//! Both sources of `nova.instance` at once, as deployed: the Nova collector `.so` polling
//! a loopback Nova that serves the responses captured from a real Nova 30.3, and the bus
//! `.so` consuming the notifications the same Nova sent, published by the real
//! oslo.messaging on the real broker; both loaded by the real host, one shared baseline.
//!
//! A notification's change is reported at once; a poll taken after it is the authority
//! (host/src/baseline.rs, "The ordering rule"), and a poll of the state the notification
//! reported emits nothing: the two plugins build the same entity.

use std::time::Duration;

use serde_json::json;
use synchronizer::{Action, Event, SubscribeOptions, Synchronizer};
use synchronizer_bus::testing::*;
use synchronizer_test_kit::broker::*;
use synchronizer_test_kit::host::queued;
use synchronizer_test_kit::nova;
use synchronizer_test_kit::oslo::*;
use synchronizer_test_kit::paths::plugin_library;
use synchronizer_test_kit::sys::unique;
use synchronizer_test_kit::wait::wait_until;

const V_POWER_OFF: &str = "nova-30/versioned_notifications.info__instance.power_off.end.raw.json";
const WAIT: Duration = Duration::from_secs(30);

fn host_toml(tag: &str, exchange: &str, topic: &str, cloud: &nova::Nova) -> String {
    format!(
        r#"
plugin_log_level = "warn"
types = ["nova.instance"]
{nova}
[[instances]]
name = "bus"
library = "{bus_so}"
[instances.config]
urls = ["{BROKER}"]
families = ["nova-versioned"]
connection_name = "{tag}"
[instances.config.dead_letter]
exchange = "{tag}.dlx"
queue = "{tag}.dlq"
durable = false
[[instances.config.subscriptions]]
exchange = "{exchange}"
topics = ["{topic}"]
"#,
        nova = cloud.instance_toml("nova"),
        bus_so = plugin_library("synchronizer_bus").display(),
    )
}

fn state_of(sync: &Synchronizer, id: &str) -> Option<String> {
    sync.current(&["nova.instance"])
        .iter()
        .find(|e| e.id() == id)
        .and_then(|e| e.state().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_and_the_polls_around_it_agree() {
    logs();
    require_broker().await;
    let tag = unique("with-nova");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([exchange.clone(), format!("{tag}.dlx")]);
    let a3_key = format!("nova.instance:{}", nova::VM_A3);

    // The cloud before vm-a3 was powered off: ACTIVE, last updated at its launch.
    let cloud = nova::Nova::start(nova::Cloud::captured()).await;
    {
        let mut c = cloud.cloud();
        let a3 = c.server_mut(nova::VM_A3);
        a3["status"] = json!("ACTIVE");
        a3["OS-EXT-STS:vm_state"] = json!("active");
        a3["OS-EXT-STS:power_state"] = json!(1);
        a3["updated"] = json!("2026-11-25T08:37:42Z");
    }
    let config = synchronizer::Config::from_toml(&host_toml(&tag, &exchange, &topic, &cloud))
        .expect("host config");
    let (sync, mut sub) =
        Synchronizer::start_subscribed(config, &SubscribeOptions::types(&["nova.instance"]))
            .await
            .expect("host starts with both plugins");
    wait_until(WAIT, "the first poll", || sync.ready()).await;
    let first = queued(&mut sub);
    assert_eq!(first.len(), 5, "every captured server: {first:?}");
    assert!(first.contains(&(Action::Created, a3_key.clone(), Some("ACTIVE".into()))));

    // Nova's power-off notification, as the real Nova sent it (08:37:47.268865).
    publish(&[Spec::new(V_POWER_OFF, &exchange, &topic)]);
    let change = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("the notification's change arrives");
    match change {
        Some(Event::Change(c)) => {
            assert_eq!(
                (c.action, c.entity.key(), c.entity.state(), &*c.instance),
                (Action::Updated, a3_key.clone(), Some("SHUTOFF"), "bus")
            );
        }
        other => panic!("expected vm-a3's update, got {other:?}"),
    }

    // A poll taken after the notification describes the cloud as of that moment, even
    // though the API (a lagging replica, say) still shows vm-a3 ACTIVE with an older
    // `updated`: a complete snapshot is never refused as stale (host/src/baseline.rs,
    // "The ordering rule"). vm-a3 is reported ACTIVE again, by the collector.
    let polled = sync.get_all(&["nova.instance"]).await.expect("poll");
    assert_eq!(polled.len(), 5);
    assert_eq!(
        queued(&mut sub),
        vec![(Action::Updated, a3_key.clone(), Some("ACTIVE".into()))],
        "the later poll is the authority"
    );
    assert_eq!(state_of(&sync, nova::VM_A3).as_deref(), Some("ACTIVE"));

    // The API catches up: the captured SHUTOFF server, updated after the notification:
    // SHUTOFF again, the same entity the bus built from the notification.
    {
        let captured = nova::Cloud::captured();
        let mut a3 = captured
            .servers
            .iter()
            .find(|s| s["id"] == nova::VM_A3)
            .expect("vm-a3 captured")
            .clone();
        a3["updated"] = json!("2026-11-25T08:37:50Z");
        *cloud.cloud().server_mut(nova::VM_A3) = a3;
    }
    sync.get_all(&["nova.instance"]).await.expect("poll");
    assert_eq!(
        queued(&mut sub),
        vec![(Action::Updated, a3_key.clone(), Some("SHUTOFF".into()))],
        "the API caught up"
    );
    assert_eq!(state_of(&sync, nova::VM_A3).as_deref(), Some("SHUTOFF"));

    // And a real change in a poll still shows (the polls above were not ignored).
    {
        let mut c = cloud.cloud();
        let a1 = c.server_mut(nova::VM_A1);
        a1["status"] = json!("ERROR");
        a1["OS-EXT-STS:vm_state"] = json!("error");
        a1["updated"] = json!("2026-11-25T08:38:00Z");
    }
    sync.get_all(&["nova.instance"]).await.expect("poll");
    assert_eq!(
        queued(&mut sub),
        vec![(
            Action::Updated,
            format!("nova.instance:{}", nova::VM_A1),
            Some("ERROR".into())
        )]
    );

    sync.shutdown().await;
}
