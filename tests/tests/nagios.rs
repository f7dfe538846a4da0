//! The nagios plugin as the host loads it (the real .so), against loopback replays of
//! pages captured from a real Nagios 4 and Vitrage's own sample page: the alarms (their
//! ids scoped by the instance's name), their relations, an alarm that clears (deleted), an
//! output change (updated), and bad pages that fail the snapshot without deleting
//! anything.

use std::time::Duration;

use synchronizer::status::Health;
use synchronizer::{Action, SubscribeOptions, Synchronizer};
use synchronizer_test_kit::host::config;
use synchronizer_test_kit::host::{Seen, by_name, queued_ids};
use synchronizer_test_kit::http::{FixtureServer, Reply};
use synchronizer_test_kit::paths::root;

const SERVICES: &str = "/cgi-bin/nagios4/statusjson.cgi?query=servicelist&details=true";
const HOSTS: &str = "/cgi-bin/nagios4/statusjson.cgi?query=hostlist&details=true";
const STATUS: &str = "/cgi-bin/nagios4/status.cgi?host=all&limit=0";

fn fixture(path: &str) -> Vec<u8> {
    let p = root().join("plugins/nagios/tests/fixtures").join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

async fn start(server: &FixtureServer, source: &str) -> Synchronizer {
    let c = config(&format!(
        r#"
[[instances]]
name = "nagios-test"
library = "libsynchronizer_nagios.so"
interval = "1h"
timeout = "5s"
[instances.config]
url = "{}/cgi-bin/nagios4"
source = "{source}"
[[instances.config.host_rules.rules]]
pattern = "localhost"
key = "static.node:this-machine"
"#,
        server.url()
    ));
    Synchronizer::start(c).await.expect("starts")
}

/// The changes queued for `sub`, as `(action, id, state)`, sorted by id.
fn changes(sub: &mut synchronizer::Subscription) -> Vec<Seen> {
    by_name(queued_ids(sub))
}

#[tokio::test]
async fn statusjson_alarms_follow_the_pages_and_bad_pages_delete_nothing() {
    let server = FixtureServer::start().await;
    server.set(
        SERVICES,
        Reply::ok(
            "application/json",
            fixture("nagios4/statusjson-servicelist.json"),
        ),
    );
    server.set(
        HOSTS,
        Reply::ok(
            "application/json",
            fixture("nagios4/statusjson-hostlist.json"),
        ),
    );
    let sync = start(&server, "json").await;
    let mut sub = sync.subscribe(&SubscribeOptions {
        types: vec!["nagios".into()],
        initial_snapshot: true,
        ..Default::default()
    });
    let entities = sync.get_all(&["nagios"]).await.expect("collects");
    let mut keys: Vec<(String, String, String)> = entities
        .iter()
        .map(|e| {
            (
                e.id().to_owned(),
                e.state().unwrap_or("").to_owned(),
                e.relations()[0].other().to_owned(),
            )
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            (
                "nagios-test/compute-0;CPU load".into(),
                "WARNING".into(),
                "nova.host:compute-0".into()
            ),
            (
                "nagios-test/compute-0;Disk usage".into(),
                "CRITICAL".into(),
                "nova.host:compute-0".into()
            ),
            (
                "nagios-test/localhost;SSH".into(),
                "CRITICAL".into(),
                "static.node:this-machine".into()
            ),
            (
                "nagios-test/localhost;Swap Usage".into(),
                "CRITICAL".into(),
                "static.node:this-machine".into()
            ),
        ]
    );
    assert!(
        entities
            .iter()
            .all(|e| e.category() == synchronizer::Category::Alarm && e.entity_type() == "nagios")
    );
    let _ = changes(&mut sub);

    // CPU load back to OK (status 2): deleted; Disk usage's output changes: updated.
    let text = String::from_utf8(fixture("nagios4/statusjson-servicelist.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let c0 = &mut v["data"]["servicelist"]["compute-0"];
    c0["CPU load"]["status"] = 2.into();
    c0["Disk usage"]["plugin_output"] = "DISK CRITICAL - 99% used".into();
    server.set(SERVICES, Reply::ok("application/json", v.to_string()));
    sync.get_all(&["nagios"]).await.expect("collects");
    assert_eq!(
        changes(&mut sub),
        vec![
            (
                Action::Deleted,
                "nagios-test/compute-0;CPU load".into(),
                Some("WARNING".into())
            ),
            (
                Action::Updated,
                "nagios-test/compute-0;Disk usage".into(),
                Some("CRITICAL".into())
            ),
        ]
    );

    // Nagios stopped: statusjson answers 200 with an empty body. The snapshot fails and
    // nothing is deleted.
    server.set(
        SERVICES,
        Reply::ok(
            "application/json",
            fixture("nagios4-live/statusjson-nagios-stopped.json"),
        ),
    );
    let err = sync
        .get_all(&["nagios"])
        .await
        .expect_err("fails")
        .to_string();
    assert!(
        err.contains("statusjson.cgi?query=servicelist"),
        "names the URL: {err}"
    );
    // An Apache error page instead of JSON, and a 500: the same.
    server.set(
        SERVICES,
        Reply {
            status: 200,
            content_type: "text/html",
            body: fixture("nagios4-live/apache-404.html"),
        },
    );
    assert!(sync.get_all(&["nagios"]).await.is_err());
    server.set(
        SERVICES,
        Reply {
            status: 500,
            content_type: "text/plain",
            body: b"boom".to_vec(),
        },
    );
    let err = sync
        .get_all(&["nagios"])
        .await
        .expect_err("fails")
        .to_string();
    assert!(err.contains("500"), "names the status: {err}");
    assert!(
        changes(&mut sub).is_empty(),
        "a failed snapshot deleted something"
    );
    assert_eq!(sync.current(&["nagios"]).len(), 3);
    let status = sync.status().into_iter().next().unwrap().status;
    assert_eq!(status.health, Health::Failing);
    sync.shutdown().await;
}

#[tokio::test]
async fn status_cgi_html_pages_parse_to_alarms() {
    let server = FixtureServer::start().await;
    server.set(
        STATUS,
        Reply::ok("text/html", fixture("nagios4/status-host-all.html")),
    );
    let sync = start(&server, "html").await;
    let mut ids: Vec<String> = sync
        .get_all(&["nagios"])
        .await
        .expect("collects")
        .iter()
        .map(|e| format!("{} {}", e.id(), e.state().unwrap_or("")))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            "nagios-test/compute-0;CPU load WARNING",
            "nagios-test/compute-0;Disk usage CRITICAL",
            "nagios-test/localhost;SSH CRITICAL",
            "nagios-test/localhost;Swap Usage CRITICAL"
        ]
    );

    // Vitrage's own sample page.
    server.set(
        STATUS,
        Reply::ok("text/html", fixture("vitrage/nagios-mock.html")),
    );
    let entities = sync.get_all(&["nagios"]).await.expect("collects");
    let load = entities
        .iter()
        .find(|e| e.id() == "nagios-test/compute-0-1.local;check_load")
        .expect("check_load alarm");
    assert_eq!(load.state(), Some("CRITICAL"));
    assert_eq!(load.properties()["output"], "Critical Error");
    assert_eq!(load.relations()[0].other(), "nova.host:compute-0-1.local");
    assert!(
        !entities
            .iter()
            .any(|e| e.id() == "nagios-test/compute-0-0.local;Disk IO SUMMARY"),
        "OK is no alarm"
    );

    // A login page is an error, not an empty list.
    server.set(
        STATUS,
        Reply {
            status: 200,
            content_type: "text/html",
            body: fixture("nagios4-live/auth-401.html"),
        },
    );
    assert!(sync.get_all(&["nagios"]).await.is_err());
    assert!(!sync.current(&["nagios"]).is_empty());
    tokio::time::sleep(Duration::from_millis(1)).await;
    sync.shutdown().await;
}
