//! The collector against a loopback server replaying Alertmanager 0.25's real answers,
//! and what it must refuse: a 500, a truncated or foreign page, the v1 answer, an alert
//! with an unusable field. Each is an error (the host deletes nothing), never an empty
//! snapshot; the error names the URL and the status.

use synchronizer_plugin_api::{Context, Plugin};
use synchronizer_prometheus::plugin::{Config, Prometheus};
use synchronizer_test_kit::http::{FixtureServer, Reply};

const QUERY: &str = "/api/v2/alerts?active=true&silenced=true&inhibited=true";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/am-0.25/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn plugin(server: &FixtureServer) -> Prometheus {
    let config: Config =
        serde_json::from_value(serde_json::json!({"url": server.url(), "timeout": "2s"})).unwrap();
    Prometheus::new(
        config,
        &Context {
            instance: "am".into(),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn the_real_answer_is_collected_and_bad_ones_are_errors() {
    let server = FixtureServer::start().await;
    let p = plugin(&server);
    server.set(
        QUERY,
        Reply::ok("application/json", fixture("alerts-v2.json")),
    );
    let snap = p.snapshot(&[]).await.expect("the real answer");
    assert_eq!(snap.entities().len(), 5);

    let mut truncated = fixture("alerts-v2.json");
    truncated.truncate(truncated.len() / 2);
    let bad_alert = br#"[{"fingerprint":"ab","labels":{},"startsAt":"not a time","status":{"state":"active"}}]"#.to_vec();
    for (what, reply, expect) in [
        (
            "500",
            Reply {
                status: 500,
                content_type: "text/plain",
                body: b"internal error".to_vec(),
            },
            "HTTP 500",
        ),
        (
            "truncated",
            Reply::ok("application/json", truncated),
            "not an Alertmanager alerts answer",
        ),
        (
            "html",
            Reply::ok("text/html", b"<html>login</html>".to_vec()),
            "not an Alertmanager alerts answer",
        ),
        (
            "v1",
            Reply::ok("application/json", fixture("alerts-v1.json")),
            "not an Alertmanager alerts answer",
        ),
        (
            "bad alert",
            Reply::ok("application/json", bad_alert),
            "alert 0: startsAt",
        ),
    ] {
        server.set(QUERY, reply);
        let e = p.snapshot(&[]).await.expect_err(what);
        assert!(e.message().contains(expect), "{what}: {e}");
        assert!(
            e.message().contains(&server.url()),
            "{what}: names the URL: {e}"
        );
    }
    assert_eq!(server.hits(QUERY), 6);
}

#[tokio::test]
async fn skip_asks_alertmanager_to_leave_suppressed_alerts_out() {
    let server = FixtureServer::start().await;
    let config: Config =
        serde_json::from_value(serde_json::json!({"url": server.url(), "suppressed": "skip"}))
            .unwrap();
    let p = Prometheus::new(
        config,
        &Context {
            instance: "am".into(),
        },
    )
    .unwrap();
    // Even if the server answered with one, a suppressed alert is left out.
    server.set(
        "/api/v2/alerts?active=true&silenced=false&inhibited=false",
        Reply::ok("application/json", fixture("alerts-v2.json")),
    );
    let snap = p.snapshot(&[]).await.unwrap();
    assert_eq!(snap.entities().len(), 4);
    assert!(snap.entities().iter().all(|e| e.state() == Some("firing")));
}
