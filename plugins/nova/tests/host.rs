//! The built `libsynchronizer_nova.so` loaded by the real host, polling the loopback
//! Keystone + Nova: the exact changes between polls.

use serde_json::json;
use synchronizer::{Action, SubscribeOptions, Synchronizer};
use synchronizer_openstack::time::{format_timestamp, now_micros};
use synchronizer_test_kit::host::{drain, ready};
use synchronizer_test_kit::nova::*;

const TYPES: [&str; 3] = ["nova.instance", "nova.host", "nova.zone"];

fn host_config(nova: &Nova, types: &[&str]) -> String {
    format!(
        "plugin_log_level = \"debug\"\ntypes = {types:?}\n{}",
        nova.instance_toml("nova-test")
    )
}

/// A host with the plugin for `types`, after its initial snapshot.
async fn started(nova: &Nova, types: &[&str]) -> Synchronizer {
    let sync =
        Synchronizer::start(synchronizer::Config::from_toml(&host_config(nova, types)).unwrap())
            .await
            .unwrap();
    ready(&sync).await;
    sync
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_reports_exactly_what_changed_between_polls() {
    let nova = Nova::start(Cloud::captured()).await;
    let sync =
        Synchronizer::start(synchronizer::Config::from_toml(&host_config(&nova, &TYPES)).unwrap())
            .await
            .unwrap();
    ready(&sync).await;
    assert_eq!(sync.current(&["nova.instance"]).len(), 5);
    assert_eq!(sync.current(&["nova.host"]).len(), 2);
    assert_eq!(sync.current(&["nova.zone"]).len(), 2);
    let mut sub = sync.subscribe(&SubscribeOptions::types(&TYPES));

    // Nothing changed: a poll reports nothing, and the token is reused.
    let instances = sync.get_all(&["nova.instance"]).await.unwrap();
    assert_eq!(instances.len(), 5);
    assert_eq!(drain(&mut sub), vec![]);
    assert_eq!(nova.server.count("POST", "/identity/v3/auth/tokens"), 1);

    // vm-a3 is started (SHUTOFF -> ACTIVE) and vm-b1 is deleted.
    {
        let mut cloud = nova.cloud();
        let a3 = cloud.server_mut(VM_A3);
        a3["status"] = json!("ACTIVE");
        a3["OS-EXT-STS:vm_state"] = json!("active");
        a3["OS-EXT-STS:power_state"] = json!(1);
        a3["updated"] = json!(format_timestamp(now_micros()));
        cloud.remove_server(VM_B1);
    }
    let instances = sync.get_all(&["nova.instance"]).await.unwrap();
    assert_eq!(instances.len(), 4);
    assert_eq!(
        drain(&mut sub),
        vec![
            (
                Action::Deleted,
                format!("nova.instance:{VM_B1}"),
                Some("ACTIVE".into())
            ),
            (
                Action::Updated,
                format!("nova.instance:{VM_A3}"),
                Some("ACTIVE".into())
            ),
        ]
    );

    // A 500 on page 2 while vm-a2 is gone: hosts and zones are listed whole, instances
    // are incomplete, so nothing is deleted.
    {
        let mut cloud = nova.cloud();
        cloud.fault = Some((1, Fault::Status(500)));
        cloud.remove_server(VM_A2);
    }
    sync.get_all(&["nova.instance"]).await.unwrap();
    assert_eq!(drain(&mut sub), vec![]);
    assert_eq!(sync.current(&["nova.instance"]).len(), 4);
    let status = &sync.status()[0].status;
    assert!(
        status
            .incomplete
            .iter()
            .any(|i| i.starts_with("nova.instance: GET ") && i.contains("HTTP 500")),
        "{status:?}"
    );

    // The fault clears: now vm-a2's deletion is reported, once.
    nova.cloud().fault = None;
    sync.get_all(&["nova.instance"]).await.unwrap();
    assert_eq!(
        drain(&mut sub),
        vec![(
            Action::Deleted,
            format!("nova.instance:{VM_A2}"),
            Some("ACTIVE".into())
        )]
    );

    // os-services fails: instances and zones are complete, hosts incomplete (none deleted
    // although compute2 is gone from the answer that failed).
    nova.cloud().services_status = Some(503);
    let report = sync.get_all_report(&["nova.host"]).await.unwrap();
    assert_eq!(report.incomplete.len(), 1, "{report:?}");
    assert_eq!(
        (
            &*report.incomplete[0].instance,
            &*report.incomplete[0].entity_type
        ),
        ("nova-test", "nova.host")
    );
    assert!(
        report.incomplete[0].reason.contains("HTTP 503"),
        "{report:?}"
    );
    assert!(report.entities.is_empty(), "no host could be listed");
    assert_eq!(drain(&mut sub), vec![]);
    assert_eq!(sync.current(&["nova.host"]).len(), 2);
    let status = &sync.status()[0].status;
    assert!(
        status
            .incomplete
            .iter()
            .any(|i| i.starts_with("nova.host: GET ") && i.contains("HTTP 503")),
        "{status:?}"
    );

    // A compute host goes down and a zone loses its last host.
    {
        let mut cloud = nova.cloud();
        cloud.services_status = None;
        cloud.services["services"][0]["state"] = json!("down");
        cloud.services["services"][0]["updated_at"] = json!("2026-11-25T08:39:00.000000");
        cloud.zones["availabilityZoneInfo"][1]["zoneState"]["available"] = json!(false);
    }
    sync.get_all(&["nova.host"]).await.unwrap();
    assert_eq!(
        drain(&mut sub),
        vec![
            (
                Action::Updated,
                "nova.host:compute2".into(),
                Some("down".into())
            ),
            (
                Action::Updated,
                "nova.zone:az2".into(),
                Some("unavailable".into())
            ),
        ]
    );
    sync.shutdown().await;
}

/// `GET /servers/detail?all_tenants=1&changes-since=...` of the same Nova 30.3 run: the
/// deleted vm-b2 as Nova lists it (status `DELETED`, vm state `deleted`).
const CHANGES_SINCE: &str =
    include_str!("fixtures/servers-detail-all_tenants-changes-since.mv2.53.json");

/// A server Nova lists as deleted (`DELETED` while it is deleted, `SOFT_DELETED` until it
/// is reclaimed) is left out of the snapshot: the baseline deletes it, never reports it
/// in state `DELETED`, and a deleted server it never knew is not created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_nova_lists_as_deleted_is_deleted_not_updated() {
    let nova = Nova::start(Cloud::captured()).await;
    let sync = started(&nova, &["nova.instance"]).await;
    assert_eq!(sync.current(&["nova.instance"]).len(), 5);
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["nova.instance"]));

    let listed: serde_json::Value = serde_json::from_str(CHANGES_SINCE).unwrap();
    let vm_b2 = listed["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["status"] == "DELETED")
        .expect("the capture lists a DELETED server")
        .clone();
    {
        let mut cloud = nova.cloud();
        let now = json!(format_timestamp(now_micros()));
        let a1 = cloud.server_mut(VM_A1);
        a1["status"] = json!("DELETED");
        a1["OS-EXT-STS:vm_state"] = json!("deleted");
        a1["updated"] = now.clone();
        let a2 = cloud.server_mut(VM_A2);
        a2["status"] = json!("SOFT_DELETED");
        a2["OS-EXT-STS:vm_state"] = json!("soft-delete");
        a2["updated"] = now;
        cloud.servers.push(vm_b2);
    }
    let instances = sync.get_all(&["nova.instance"]).await.unwrap();
    assert_eq!(instances.len(), 3, "{instances:?}");
    assert_eq!(
        drain(&mut sub),
        vec![
            (
                Action::Deleted,
                format!("nova.instance:{VM_A1}"),
                Some("ACTIVE".into())
            ),
            (
                Action::Deleted,
                format!("nova.instance:{VM_A2}"),
                Some("ACTIVE".into())
            ),
        ]
    );

    // Nova stops listing vm-a1: nothing more.
    nova.cloud().remove_server(VM_A1);
    sync.get_all(&["nova.instance"]).await.unwrap();
    assert_eq!(drain(&mut sub), vec![]);
    sync.shutdown().await;
}

/// With only `nova.instance` active, a 500 mid-pagination fails the whole snapshot: the
/// host's get-all fails, nothing is deleted, and the next good poll reports the deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_poll_deletes_nothing() {
    let nova = Nova::start(Cloud::captured()).await;
    let sync = started(&nova, &["nova.instance"]).await;
    assert_eq!(sync.current(&TYPES).len(), 5);
    let mut sub = sync.subscribe(&SubscribeOptions::types(&TYPES));
    {
        let mut cloud = nova.cloud();
        cloud.fault = Some((1, Fault::Status(500)));
        cloud.remove_server(VM_A1);
    }
    let err = sync.get_all(&["nova.instance"]).await.unwrap_err();
    assert!(
        err.to_string().contains("HTTP 500 Internal Server Error"),
        "{err}"
    );
    assert_eq!(drain(&mut sub), vec![]);
    assert_eq!(sync.current(&["nova.instance"]).len(), 5);
    let status = &sync.status()[0].status;
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("marker=")),
        "{status:?}"
    );

    nova.cloud().fault = None;
    assert_eq!(sync.get_all(&["nova.instance"]).await.unwrap().len(), 4);
    assert_eq!(
        drain(&mut sub),
        vec![(
            Action::Deleted,
            format!("nova.instance:{VM_A1}"),
            Some("ACTIVE".into())
        )]
    );
    sync.shutdown().await;
}

/// `POST /v1/snapshot` answers with what came and names the incomplete types in the
/// `synchronizer-incomplete` header; a complete answer has no such header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_snapshot_names_incomplete_types() {
    let nova = Nova::start(Cloud::captured()).await;
    nova.cloud().services_status = Some(500);
    let config = synchronizer::Config::from_toml(&host_config(&nova, &TYPES)).unwrap();
    let sync = std::sync::Arc::new(Synchronizer::start(config).await.unwrap());
    ready(&sync).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let http_config: synchronizer::config::HttpConfig = serde_json::from_value(json!({})).unwrap();
    let server = tokio::spawn(synchronizer::http::serve_on(
        listener,
        sync.clone(),
        http_config,
        stop.clone(),
    ));
    let client = reqwest::Client::new();
    let url = |types: &str| format!("http://{addr}/v1/snapshot?types={types}");

    let partial = client
        .post(url("nova.host,nova.instance"))
        .send()
        .await
        .unwrap();
    assert_eq!(partial.status(), 200);
    assert_eq!(
        partial
            .headers()
            .get("synchronizer-incomplete")
            .and_then(|v| v.to_str().ok()),
        Some("nova.host")
    );
    let body: Vec<serde_json::Value> = partial.json().await.unwrap();
    assert_eq!(body.len(), 5, "the instances came: {body:?}");
    assert!(body.iter().all(|e| e["type"] == "nova.instance"));

    let complete = client.post(url("nova.instance")).send().await.unwrap();
    assert_eq!(complete.status(), 200);
    assert!(complete.headers().get("synchronizer-incomplete").is_none());

    stop.cancel();
    server.await.unwrap().unwrap();
    sync.shutdown().await;
}
