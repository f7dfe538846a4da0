//! The built `libsynchronizer_heat.so` loaded by the real host, polling the loopback
//! Keystone + Heat under Heat's default policy (global_tenant refused) with
//! `stack_listing = "auto"`: the exact changes between polls.

use serde_json::json;
use synchronizer::{Action, SubscribeOptions, Synchronizer};
use synchronizer_test_kit::heat::*;
use synchronizer_test_kit::host::{drain, ready};
use synchronizer_test_kit::paths::plugin_library;

fn host_config(heat: &Heat, listing: &str) -> String {
    let config = heat.config(json!({}));
    let auth = &config["cloud"]["auth"];
    format!(
        r#"
plugin_log_level = "debug"
[[instances]]
name = "heat-test"
library = "{library}"
interval = "1h"
jitter = "0s"
timeout = "20s"
[instances.config]
stack_listing = "{listing}"
nested_depth = 3
page_size = 2
[instances.config.cloud]
timeout = "5s"
[instances.config.cloud.auth]
auth_url = "{auth_url}"
username = "admin"
password = "{password}"
project_name = "admin"
"#,
        library = plugin_library("synchronizer_heat").display(),
        auth_url = auth["auth_url"].as_str().unwrap(),
        password = auth["password"].as_str().unwrap(),
    )
}

fn key(id: &str) -> String {
    format!("heat.stack:{id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_reports_exactly_what_changed_between_polls() {
    let mut cloud = Cloud::captured();
    cloud.global_allowed = false; // Heat's default policy
    let heat = Heat::start(cloud).await;
    let sync =
        Synchronizer::start(synchronizer::Config::from_toml(&host_config(&heat, "auto")).unwrap())
            .await
            .unwrap();
    ready(&sync).await;
    let initial = sync.current(&["heat.stack"]);
    assert_eq!(initial.len(), 5, "{:?}", sync.status());
    let nested_a = initial.iter().find(|e| e.id() == NESTED_A).unwrap();
    assert_eq!(
        nested_a.relations()[0].other(),
        format!("nova.instance:{NESTED_SERVER}")
    );
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["heat.stack"]));

    // Nothing changed.
    assert_eq!(sync.get_all(&["heat.stack"]).await.unwrap().len(), 5);
    assert_eq!(drain(&mut sub), vec![]);

    // basic-b is fixed by an update, failing-a is deleted, basic-c is created, and
    // basic-a's server is replaced (its relations change, its status does not).
    {
        let mut cloud = heat.cloud();
        let b = cloud.stack_mut(BASIC_B);
        b["stack_status"] = json!("UPDATE_COMPLETE");
        b["stack_status_reason"] = json!("Stack UPDATE completed successfully");
        b["updated_time"] = json!("2026-11-25T09:10:00Z");
        cloud.remove_stack(FAILING_A);
        let mut c = cloud
            .stacks
            .iter()
            .find(|s| s["id"] == BASIC_A)
            .unwrap()
            .clone();
        c["id"] = json!("0b7e7c52-8f1d-4a8e-9c55-5d7a3c2b1e99");
        c["stack_name"] = json!("basic-c");
        c["stack_status"] = json!("CREATE_COMPLETE");
        c["updated_time"] = json!(null);
        c["creation_time"] = json!("2026-11-25T09:11:00Z");
        cloud.stacks.insert(0, c);
        let server = &mut cloud.resources.get_mut(BASIC_A).unwrap()["resources"][0];
        server["physical_resource_id"] = json!("11111111-2222-4333-8444-555555555555");
    }
    assert_eq!(sync.get_all(&["heat.stack"]).await.unwrap().len(), 5);
    let mut expected = vec![
        (
            Action::Created,
            key("0b7e7c52-8f1d-4a8e-9c55-5d7a3c2b1e99"),
            Some("CREATE_COMPLETE".into()),
        ),
        (
            Action::Deleted,
            key(FAILING_A),
            Some("CREATE_FAILED".into()),
        ),
        (
            Action::Updated,
            key(BASIC_B),
            Some("UPDATE_COMPLETE".into()),
        ),
        (
            Action::Updated,
            key(BASIC_A),
            Some("UPDATE_COMPLETE".into()),
        ),
    ];
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(drain(&mut sub), expected);
    let basic_a = sync
        .current(&["heat.stack"])
        .into_iter()
        .find(|e| e.id() == BASIC_A)
        .unwrap();
    assert!(
        basic_a
            .relations()
            .iter()
            .any(|r| r.other() == "nova.instance:11111111-2222-4333-8444-555555555555")
    );

    // A 500 mid-pagination while nested-b is gone: the poll fails, nothing is deleted.
    {
        let mut cloud = heat.cloud();
        cloud.fault = Some((1, Fault::Status(500)));
        cloud.remove_stack(NESTED_B);
    }
    let err = sync.get_all(&["heat.stack"]).await.unwrap_err();
    assert!(
        err.to_string().contains("HTTP 500 Internal Server Error"),
        "{err}"
    );
    assert_eq!(drain(&mut sub), vec![]);
    assert_eq!(sync.current(&["heat.stack"]).len(), 5);

    heat.cloud().fault = None;
    sync.get_all(&["heat.stack"]).await.unwrap();
    assert_eq!(
        drain(&mut sub),
        vec![(
            Action::Deleted,
            key(NESTED_B),
            Some("CREATE_COMPLETE".into())
        )]
    );

    // The global listing was tried once, then the per-project fallback was kept.
    let global = heat
        .gets()
        .iter()
        .filter(|g| g.contains("global_tenant"))
        .count();
    assert_eq!(global, 1);
    sync.shutdown().await;
}

/// With `stack_listing = "global"` under Heat's default policy, the instance fails with
/// the policy rule and the fix in its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_error_reaches_the_hosts_status() {
    let mut cloud = Cloud::captured();
    cloud.global_allowed = false;
    let heat = Heat::start(cloud).await;
    let sync = Synchronizer::start(
        synchronizer::Config::from_toml(&host_config(&heat, "global")).unwrap(),
    )
    .await
    .unwrap();
    let err = sync.get_all(&["heat.stack"]).await.unwrap_err().to_string();
    assert!(
        err.contains("stacks:global_index") && err.contains("stack_listing = \"per_project\""),
        "{err}"
    );
    let status = &sync.status()[0].status;
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("stacks:global_index")),
        "{status:?}"
    );
    assert!(sync.current(&["heat.stack"]).is_empty());
    sync.shutdown().await;
}
