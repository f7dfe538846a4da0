//! The nagios plugin against a real Nagios 4 on loopback (Debian's nagios4, started by
//! `scripts/nagios/setup.sh`, which the README's test command runs). The test drives
//! services and hosts through passive check results on the external command file and
//! asserts the alarms the host reports: created, updated, deleted; once through
//! statusjson.cgi, once through status.cgi behind basic auth. (Two instances reading the
//! same Nagios at once would report the same keys: one entity, not two.)

use std::process::Command;

use synchronizer::{Action, Event, SubscribeOptions, Synchronizer};
use synchronizer_tests::{config, root};

fn set_state(host: &str, service: &str, state: &str, output: &str) {
    let script = root().join("scripts/nagios/set-state.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args([host, service, state, output])
        .output()
        .expect("runs set-state.sh");
    assert!(
        out.status.success(),
        "set-state.sh {host} {service} {state} failed (is the test Nagios running? scripts/nagios/setup.sh starts it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn drain(sub: &mut synchronizer::Subscription) -> Vec<(String, Action, String, String)> {
    let mut out = Vec::new();
    while let Some(e) = sub.try_recv() {
        if let Event::Change(c) = e {
            out.push((
                c.instance.to_string(),
                c.action,
                c.entity.id().to_owned(),
                c.entity.state().unwrap_or("").to_owned(),
            ));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_nagios_drives_alarms_through_the_host() {
    scenario("nagios-json", r#"url = "http://127.0.0.1/cgi-bin/nagios4""#).await;
    scenario(
        "nagios-html",
        r#"url = "http://127.0.0.1/cgi-bin/nagios4-auth"
source = "html"
username = "nagiostest"
password = "nagiostest""#,
    )
    .await;
}

async fn scenario(instance: &str, instance_config: &str) {
    let both = |action: Action, id: &str, state: &str| {
        vec![(instance.to_owned(), action, id.to_owned(), state.to_owned())]
    };
    // A known start: everything OK / UP.
    for host in ["compute-0", "compute-1", "compute-2"] {
        set_state(host, "-", "UP", "PING OK");
        for service in ["CPU load", "Disk usage", "Memory"] {
            set_state(host, service, "OK", "OK: fine");
        }
    }
    let c = config(&format!(
        r#"
[defaults]
interval = "1h"
timeout = "10s"

[[instances]]
name = "{instance}"
library = "libsynchronizer_nagios.so"
[instances.config]
{instance_config}
"#
    ));
    let sync = Synchronizer::start(c).await.expect("starts");
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["nagios"]));
    let poll = || async {
        sync.get_all(&["nagios"]).await.expect("collects");
    };
    poll().await;
    assert_eq!(drain(&mut sub), vec![], "no alarms while everything is OK");

    set_state("compute-1", "CPU load", "WARNING", "WARNING: load 7.5");
    poll().await;
    assert_eq!(
        drain(&mut sub),
        both(Action::Created, "compute-1;CPU load", "WARNING")
    );
    let alarm = sync
        .current(&["nagios"])
        .into_iter()
        .find(|e| e.id() == "compute-1;CPU load")
        .expect("alarm");
    assert_eq!(alarm.relations()[0].other(), "nova.host:compute-1");
    assert_eq!(alarm.properties()["output"], "WARNING: load 7.5");

    set_state("compute-1", "CPU load", "CRITICAL", "CRITICAL: load 42");
    set_state("compute-2", "-", "DOWN", "CRITICAL - Host Unreachable");
    poll().await;
    let mut want = both(Action::Updated, "compute-1;CPU load", "CRITICAL");
    want.extend(both(Action::Created, "compute-2", "DOWN"));
    want.sort();
    assert_eq!(drain(&mut sub), want);

    // A poll with nothing changed reports nothing.
    poll().await;
    assert_eq!(drain(&mut sub), vec![]);

    set_state("compute-1", "CPU load", "OK", "OK: load 0.5");
    set_state("compute-2", "-", "UP", "PING OK");
    poll().await;
    let mut want = both(Action::Deleted, "compute-1;CPU load", "CRITICAL");
    want.extend(both(Action::Deleted, "compute-2", "DOWN"));
    want.sort();
    assert_eq!(drain(&mut sub), want);
    sync.shutdown().await;
}
