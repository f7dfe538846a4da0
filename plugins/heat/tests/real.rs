//! Against a real Keystone 27.1 + Heat 24.1 on loopback, started by
//! `scripts/openstack/keystone-heat.sh` (run `scripts/openstack/test-real.sh`, which starts
//! it and sets the environment). Marked `#[ignore]` so that a plain `cargo test` reports it
//! as ignored, never as passed; `scripts/test.sh` runs it with `--ignored` once the services
//! are up, and it fails when `SYNCHRONIZER_REAL_KEYSTONE` is not set.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use synchronizer::{Action, SubscribeOptions, Synchronizer};
use synchronizer_heat::{Config, HeatPlugin};
use synchronizer_test_kit::host::queued as drain;
use synchronizer_test_kit::paths::plugin_library;
use synchronizer_test_kit::wait::wait_for_every;

struct Env {
    auth_url: String,
    admin_password: String,
    demo_password: String,
}

fn env() -> Option<Env> {
    let auth_url = std::env::var("SYNCHRONIZER_REAL_KEYSTONE").ok()?;
    Some(Env {
        auth_url,
        admin_password: std::env::var("SYNCHRONIZER_REAL_ADMIN_PASSWORD")
            .unwrap_or_else(|_| "synchronizer-admin".into()),
        demo_password: std::env::var("SYNCHRONIZER_REAL_DEMO_PASSWORD")
            .unwrap_or_else(|_| "synchronizer-demo".into()),
    })
}

fn config(env: &Env, listing: &str) -> Value {
    json!({
        "cloud": {"auth": {"auth_url": env.auth_url, "username": "admin", "password": env.admin_password,
                           "project_name": "admin", "user_domain_id": "default", "project_domain_id": "default"},
                  "region": "RegionOne", "timeout": "30s"},
        "stack_listing": listing,
        "page_size": 2
    })
}

/// A token of user demo scoped to `project`, and Heat's URL for that project.
async fn demo_session(http: &reqwest::Client, env: &Env, project: &str) -> (String, String) {
    let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "demo", "domain": {"id": "default"}, "password": env.demo_password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}});
    let r = http
        .post(format!("{}/auth/tokens", env.auth_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let token = r.headers()["x-subject-token"].to_str().unwrap().to_owned();
    let doc: Value = r.json().await.unwrap();
    let project_id = doc["token"]["project"]["id"].as_str().unwrap().to_owned();
    (token, format!("http://127.0.0.1:8004/v1/{project_id}"))
}

async fn stack_status(http: &reqwest::Client, token: &str, url: &str) -> Option<String> {
    let r = http
        .get(url)
        .header("x-auth-token", token)
        .send()
        .await
        .unwrap();
    if r.status() == 404 {
        return None;
    }
    let doc: Value = r.json().await.unwrap();
    doc["stack"]["stack_status"].as_str().map(str::to_owned)
}

fn host_toml(env: &Env) -> String {
    format!(
        r#"
[[instances]]
name = "heat-real"
library = "{}"
interval = "1h"
jitter = "0s"
timeout = "60s"
[instances.config]
stack_listing = "auto"
[instances.config.cloud]
region = "RegionOne"
[instances.config.cloud.auth]
auth_url = "{}"
username = "admin"
password = "{}"
project_name = "admin"
"#,
        plugin_library("synchronizer_heat").display(),
        env.auth_url,
        env.admin_password
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real services: scripts/test.sh starts them and runs it with --ignored"]
async fn a_real_heat() {
    let Some(env) = env() else {
        panic!(
            "SYNCHRONIZER_REAL_KEYSTONE is not set: start the services with scripts/openstack/test-real.sh (scripts/test.sh does)"
        );
    };
    let stacks = vec!["heat.stack".to_owned()];

    // Heat's default policy refuses global_tenant even to admin.
    let global = HeatPlugin::from_config(
        serde_json::from_value::<Config>(config(&env, "global")).unwrap(),
        "real",
    )
    .unwrap();
    let err = global.collect(&stacks).await.unwrap_err().to_string();
    assert!(
        err.contains("HTTP 403 Forbidden: You are not authorized to use stacks:global_index."),
        "{err}"
    );
    assert!(err.contains("stack_listing = \"per_project\""), "{err}");

    // Project by project with the admin token.
    let per_project = HeatPlugin::from_config(
        serde_json::from_value::<Config>(config(&env, "per_project")).unwrap(),
        "real",
    )
    .unwrap();
    let snapshot = per_project.collect(&stacks).await.unwrap();
    let state = |name: &str| {
        snapshot
            .entities()
            .iter()
            .find(|e| e.name() == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .state()
            .map(str::to_owned)
    };
    assert_eq!(state("basic-a").as_deref(), Some("CREATE_COMPLETE"));
    assert_eq!(state("failing-a").as_deref(), Some("CREATE_FAILED"));
    assert_eq!(state("basic-b").as_deref(), Some("CREATE_COMPLETE"));

    // Through the host: a stack created, then deleted, between polls.
    let sync = Synchronizer::start(synchronizer::Config::from_toml(&host_toml(&env)).unwrap())
        .await
        .unwrap();
    let before = sync.get_all(&["heat.stack"]).await.unwrap().len();
    assert!(before >= 3);
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["heat.stack"]));
    let http = reqwest::Client::new();
    let (token, heat) = demo_session(&http, &env, "demo-a").await;
    let name = format!("probe-{}", std::process::id());
    let template = json!({"heat_template_version": "2021-04-16", "resources": {"marker": {"type": "OS::Heat::None"}}});
    let r = http
        .post(format!("{heat}/stacks"))
        .header("x-auth-token", &token)
        .json(&json!({"stack_name": name, "template": template}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["stack"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!("{heat}/stacks/{name}/{id}");
    wait_for_every(
        Duration::from_secs(120),
        Duration::from_millis(500),
        "CREATE_COMPLETE",
        async || stack_status(&http, &token, &url).await.as_deref() == Some("CREATE_COMPLETE"),
    )
    .await;
    assert_eq!(
        sync.get_all(&["heat.stack"]).await.unwrap().len(),
        before + 1
    );
    let changes = drain(&mut sub);
    assert_eq!(
        changes,
        vec![(
            Action::Created,
            format!("heat.stack:{id}"),
            Some("CREATE_COMPLETE".into())
        )]
    );

    let r = http
        .delete(&url)
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // Poll through the host until the stack is gone from Heat's listing (a poll in
    // between may see it DELETE_IN_PROGRESS: an update). Its deletion is reported once.
    let probe = format!("heat.stack:{id}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        let now = sync.get_all(&["heat.stack"]).await.unwrap();
        seen.extend(drain(&mut sub));
        if !now.iter().any(|e| e.id() == id) {
            assert_eq!(now.len(), before);
            break;
        }
        assert!(Instant::now() < deadline, "the stack was not deleted");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(seen.iter().all(|(_, key, _)| *key == probe), "{seen:?}");
    assert_eq!(
        seen.iter()
            .filter(|(a, _, _)| *a == Action::Deleted)
            .count(),
        1,
        "{seen:?}"
    );
    assert_eq!(seen.last().map(|c| c.0), Some(Action::Deleted), "{seen:?}");
    // A stack in DELETE_COMPLETE is gone, never an entity in that state.
    assert!(
        !seen
            .iter()
            .any(|(a, _, s)| *a != Action::Deleted && s.as_deref() == Some("DELETE_COMPLETE")),
        "{seen:?}"
    );
    sync.shutdown().await;
}
