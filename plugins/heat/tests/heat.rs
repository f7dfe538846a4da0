//! The Heat plugin in-process against a loopback Keystone + Heat serving real captures.

use serde_json::json;
use synchronizer_heat::{Config, HeatPlugin};
use synchronizer_openstack::time::parse_timestamp;
use synchronizer_plugin_api::{Direction, Entity, Snapshot};
use synchronizer_test_kit::heat::*;

fn plugin(heat: &Heat, extra: serde_json::Value) -> HeatPlugin {
    let config: Config = serde_json::from_value(heat.config(extra)).unwrap();
    HeatPlugin::from_config(config, "heat-test").unwrap()
}

fn stacks() -> Vec<String> {
    vec!["heat.stack".to_owned()]
}

fn keys(s: &Snapshot) -> Vec<String> {
    let mut k: Vec<String> = s.entities().iter().map(Entity::key).collect();
    k.sort();
    k
}

fn all_keys() -> Vec<String> {
    let mut k: Vec<String> = [NESTED_B, BASIC_B, FAILING_A, NESTED_A, BASIC_A]
        .iter()
        .map(|id| format!("heat.stack:{id}"))
        .collect();
    k.sort();
    k
}

fn find<'a>(s: &'a Snapshot, id: &str) -> &'a Entity {
    s.entities()
        .iter()
        .find(|e| e.id() == id)
        .unwrap_or_else(|| panic!("{id} missing"))
}

fn comprises(e: &Entity) -> Vec<String> {
    e.relations()
        .iter()
        .map(|r| {
            assert_eq!(
                (r.kind(), r.direction()),
                ("comprises", Direction::Outgoing)
            );
            r.other().to_owned()
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn resources_path(project: &str, name: &str, id: &str, depth: u32) -> String {
    format!("/v1/{project}/stacks/{name}/{id}/resources?nested_depth={depth}")
}

#[tokio::test]
async fn the_loopback_heat_pages_like_the_captured_one() {
    let heat = Heat::start(Cloud::captured()).await;
    heat.cloud().issued = 1;
    let client = reqwest::Client::new();
    let mut url = format!(
        "{}/v1/{ADMIN}/stacks?global_tenant=True&limit=2",
        heat.server.base()
    );
    for captured in PAGES {
        let served: serde_json::Value = client
            .get(&url)
            .header("x-auth-token", "tok-1")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let captured: serde_json::Value = serde_json::from_str(captured).unwrap();
        assert_eq!(served["stacks"], captured["stacks"]);
        assert_eq!(served["links"], captured["links"]);
        if let Some(next) = captured["links"][0]["href"].as_str() {
            url = synchronizer_openstack::testing::rebase(next, heat.server.base());
        }
    }
}

#[tokio::test]
async fn global_listing_follows_pages_and_relates_each_stacks_resources() {
    let heat = Heat::start(Cloud::captured()).await;
    let s = plugin(&heat, json!({})).collect(&stacks()).await.unwrap();
    assert_eq!(keys(&s), all_keys());

    assert_eq!(heat.server.count("POST", "/identity/v3/auth/tokens"), 1);
    let gets = heat.gets();
    assert_eq!(
        gets[..3],
        [
            format!("/v1/{ADMIN}/stacks?global_tenant=True&limit=2"),
            format!("/v1/{ADMIN}/stacks?global_tenant=True&limit=2&marker={BASIC_B}"),
            format!("/v1/{ADMIN}/stacks?global_tenant=True&limit=2&marker={NESTED_A}"),
        ]
    );
    assert_eq!(
        sorted(gets[3..].to_vec()),
        sorted(vec![
            resources_path(DEMO_B, "nested-b", NESTED_B, 3),
            resources_path(DEMO_B, "basic-b", BASIC_B, 3),
            resources_path(DEMO_A, "failing-a", FAILING_A, 3),
            resources_path(DEMO_A, "nested-a", NESTED_A, 3),
            resources_path(DEMO_A, "basic-a", BASIC_A, 3),
        ])
    );

    let basic_a = find(&s, BASIC_A);
    assert_eq!(basic_a.name(), "basic-a");
    assert_eq!(basic_a.state(), Some("UPDATE_COMPLETE"));
    assert_eq!(basic_a.project(), Some(DEMO_A));
    assert_eq!(
        basic_a.source_updated_micros(),
        parse_timestamp("2026-11-25T08:58:03Z")
    );
    assert_eq!(
        comprises(basic_a),
        [
            "cinder.volume:9a7c1f44-2b1d-4f8e-8d6a-5c3e2b1a0f02",
            "neutron.network:5e2d8c11-7a4b-4c3d-9e8f-1a2b3c4d5e03",
            "neutron.port:7b6a5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c04",
            "nova.instance:3d3a5b2e-6f0c-4c57-9a3e-0b8e8a6f1c01",
        ],
        "mapped types with a physical id only"
    );
    assert_eq!(
        comprises(find(&s, NESTED_A)),
        [format!("nova.instance:{NESTED_SERVER}")],
        "nested_depth reaches it"
    );
    let failing = find(&s, FAILING_A);
    assert_eq!(failing.state(), Some("CREATE_FAILED"));
    assert!(comprises(failing).is_empty());
    assert_eq!(
        failing.source_updated_micros(),
        parse_timestamp("2026-11-25T08:57:25Z"),
        "creation_time"
    );
    let basic_b = find(&s, BASIC_B);
    assert_eq!(basic_b.state(), Some("UPDATE_FAILED"));
    assert_eq!(
        basic_b.properties()["stack_status_reason"],
        "Resource UPDATE failed: ValueError: resources.probe: Test Resource failed probe"
    );
    assert_eq!(basic_b.project(), Some(DEMO_B));
}

#[tokio::test]
async fn heats_default_policy_403_names_the_rule_and_the_fix() {
    let mut cloud = Cloud::captured();
    cloud.global_allowed = false;
    let heat = Heat::start(cloud).await;
    let err = plugin(&heat, json!({}))
        .collect(&stacks())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "GET {}/v1/{ADMIN}/stacks?global_tenant=True&limit=2: HTTP 403 Forbidden: You are not authorized to use stacks:global_index.",
            heat.server.base()
        )),
        "{text}"
    );
    for needle in [
        "lacks the role or policy",
        "`stacks:global_index`",
        "\"stacks:global_index\": \"role:admin\"",
        "policy.yaml",
        "stack_listing = \"per_project\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from: {text}");
    }
}

#[tokio::test]
async fn per_project_listing_takes_one_listing_when_heat_shows_the_admin_everything() {
    // What the real Heat 24 does: an admin token gets every project's stacks under its
    // own project's URL, without global_tenant.
    let mut cloud = Cloud::captured();
    cloud.global_allowed = false;
    let heat = Heat::start(cloud).await;
    let s = plugin(&heat, json!({"stack_listing": "per_project"}))
        .collect(&stacks())
        .await
        .unwrap();
    assert_eq!(keys(&s), all_keys());
    let listings: Vec<String> = heat
        .gets()
        .into_iter()
        .filter(|g| g.contains("/stacks?"))
        .collect();
    assert_eq!(
        listings,
        [
            format!("/v1/{ADMIN}/stacks?limit=2"),
            format!("/v1/{ADMIN}/stacks?limit=2&marker={BASIC_B}"),
            format!("/v1/{ADMIN}/stacks?limit=2&marker={NESTED_A}"),
        ]
    );
    assert_eq!(heat.server.count("GET", "/identity/v3/projects"), 0);
}

#[tokio::test]
async fn per_project_listing_uses_keystone_projects_and_the_same_token() {
    // A Heat that shows each project's stacks only under that project's URL.
    let mut cloud = Cloud::captured();
    cloud.global_allowed = false;
    cloud.admin_sees_all = false;
    let heat = Heat::start(cloud).await;
    let s = plugin(&heat, json!({"stack_listing": "per_project"}))
        .collect(&stacks())
        .await
        .unwrap();
    assert_eq!(keys(&s), all_keys());
    assert_eq!(heat.server.count("POST", "/identity/v3/auth/tokens"), 1);
    let gets = heat.gets();
    assert_eq!(gets[0], format!("/v1/{ADMIN}/stacks?limit=2"));
    assert_eq!(gets[1], "/identity/v3/projects");
    assert!(
        !gets.iter().any(|g| g.contains("global_tenant")),
        "{gets:?}"
    );
    let listings: Vec<String> = gets
        .iter()
        .filter(|g| g.contains("/stacks?"))
        .cloned()
        .collect();
    assert_eq!(
        sorted(listings),
        sorted(vec![
            format!("/v1/{ADMIN}/stacks?limit=2"),
            format!("/v1/{DEMO_A}/stacks?limit=2"),
            format!("/v1/{DEMO_A}/stacks?limit=2&marker={NESTED_A}"),
            format!("/v1/{DEMO_B}/stacks?limit=2"),
            format!("/v1/{DEMO_B}/stacks?limit=2&marker={BASIC_B}"),
        ])
    );
    assert_eq!(
        comprises(find(&s, NESTED_A)),
        [format!("nova.instance:{NESTED_SERVER}")]
    );
    assert_eq!(find(&s, BASIC_B).project(), Some(DEMO_B));
}

#[tokio::test]
async fn per_project_listing_drops_duplicates() {
    // The admin project's own listing shows only its own (no) stacks, every other
    // project's listing shows every stack: each stack is reported once.
    let mut cloud = Cloud::captured();
    cloud.global_allowed = false;
    cloud.filtered_projects = vec![ADMIN.to_owned()];
    let heat = Heat::start(cloud).await;
    let s = plugin(
        &heat,
        json!({"stack_listing": "per_project", "page_size": 100}),
    )
    .collect(&stacks())
    .await
    .unwrap();
    assert_eq!(keys(&s), all_keys(), "each stack once");
    assert_eq!(heat.server.count("GET", "/identity/v3/projects"), 1);
    assert_eq!(
        heat.gets()
            .iter()
            .filter(|g| g.contains("/stacks?"))
            .count(),
        3
    );
}

#[tokio::test]
async fn auto_falls_back_on_the_403_and_remembers() {
    let mut cloud = Cloud::captured();
    cloud.global_allowed = false;
    let heat = Heat::start(cloud).await;
    let p = plugin(&heat, json!({"stack_listing": "auto"}));
    assert_eq!(keys(&p.collect(&stacks()).await.unwrap()), all_keys());
    assert_eq!(
        heat.gets()
            .iter()
            .filter(|g| g.contains("global_tenant"))
            .count(),
        1
    );
    heat.server.clear();
    assert_eq!(keys(&p.collect(&stacks()).await.unwrap()), all_keys());
    assert_eq!(
        heat.gets()
            .iter()
            .filter(|g| g.contains("global_tenant"))
            .count(),
        0
    );
    assert_eq!(heat.gets()[0], format!("/v1/{ADMIN}/stacks?limit=2"));
}

#[tokio::test]
async fn a_500_mid_pagination_fails_the_snapshot() {
    let mut cloud = Cloud::captured();
    cloud.fault = Some((1, Fault::Status(500)));
    let heat = Heat::start(cloud).await;
    let err = plugin(&heat, json!({}))
        .collect(&stacks())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "GET {}/v1/{ADMIN}/stacks?global_tenant=True&limit=2&marker={BASIC_B}: HTTP 500 Internal Server Error: Unexpected error.",
            heat.server.base()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn a_broken_page_fails_the_snapshot() {
    let mut cloud = Cloud::captured();
    cloud.fault = Some((2, Fault::Truncated));
    let heat = Heat::start(cloud).await;
    let err = plugin(&heat, json!({}))
        .collect(&stacks())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unexpected response body: EOF while parsing"),
        "{err}"
    );
}

#[tokio::test]
async fn a_failing_resource_listing_fails_the_snapshot() {
    let mut cloud = Cloud::captured();
    cloud.resources_status.insert(NESTED_A.to_owned(), 503);
    let heat = Heat::start(cloud).await;
    let err = plugin(&heat, json!({}))
        .collect(&stacks())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "{}: HTTP 503 Service Unavailable",
            resources_path(DEMO_A, "nested-a", NESTED_A, 3)
        )),
        "{err}"
    );
}

#[tokio::test]
async fn a_stack_gone_while_its_resources_are_listed_is_left_out() {
    let mut cloud = Cloud::captured();
    cloud.resources_status.insert(BASIC_B.to_owned(), 404);
    let heat = Heat::start(cloud).await;
    let s = plugin(&heat, json!({})).collect(&stacks()).await.unwrap();
    let mut expected = all_keys();
    expected.retain(|k| !k.ends_with(BASIC_B));
    assert_eq!(keys(&s), expected);
}

#[tokio::test]
async fn a_stack_listed_in_delete_complete_is_left_out_without_its_resources() {
    let mut cloud = Cloud::captured();
    {
        let basic_b = cloud.stack_mut(BASIC_B);
        basic_b["stack_status"] = json!("DELETE_COMPLETE");
        basic_b["stack_status_reason"] = json!("Stack DELETE completed successfully");
    }
    // Only COMPLETE means gone: a failed or ongoing deletion is still a stack.
    cloud.stack_mut(FAILING_A)["stack_status"] = json!("DELETE_FAILED");
    cloud.stack_mut(NESTED_B)["stack_status"] = json!("DELETE_IN_PROGRESS");
    let heat = Heat::start(cloud).await;
    let s = plugin(&heat, json!({})).collect(&stacks()).await.unwrap();
    let mut expected = all_keys();
    expected.retain(|k| !k.ends_with(BASIC_B));
    assert_eq!(keys(&s), expected);
    assert_eq!(find(&s, FAILING_A).state(), Some("DELETE_FAILED"));
    assert_eq!(find(&s, NESTED_B).state(), Some("DELETE_IN_PROGRESS"));
    let asked: Vec<String> = heat
        .gets()
        .into_iter()
        .filter(|g| g.contains(&format!("{BASIC_B}/resources")))
        .collect();
    assert_eq!(
        asked,
        Vec::<String>::new(),
        "no resources of the deleted stack"
    );
}

#[tokio::test]
async fn nested_depth_and_resource_types_are_configurable() {
    let heat = Heat::start(Cloud::captured()).await;
    let p = plugin(
        &heat,
        json!({"nested_depth": 0, "resource_types": {"OS::Heat::None": "heat.none"}, "page_size": 100}),
    );
    let s = p.collect(&stacks()).await.unwrap();
    let gets = heat.gets();
    assert_eq!(
        gets[0],
        format!("/v1/{ADMIN}/stacks?global_tenant=True&limit=100")
    );
    assert!(
        gets[1..].iter().all(|g| g.ends_with("?nested_depth=0")),
        "{gets:?}"
    );
    assert!(
        comprises(find(&s, BASIC_A))
            .contains(&"heat.none:c0a9f020-69ee-4acb-a565-50e9ee36ac56".to_owned())
    );
    // Other types are not this plugin's: nothing is listed.
    heat.server.clear();
    assert!(
        p.collect(&["nova.instance".to_owned()])
            .await
            .unwrap()
            .entities()
            .is_empty()
    );
    assert!(heat.server.requests().is_empty());
}

#[test]
fn configuration_errors_name_the_field() {
    let base = json!({"cloud": {"auth": {"auth_url": "http://k:5000", "username": "u", "password": "pa55-secret", "project_name": "p"}}});
    let mut typo = base.clone();
    typo["nested-depth"] = json!(1);
    let err = serde_json::from_value::<Config>(typo).unwrap_err();
    assert!(err.to_string().contains("nested-depth"), "{err}");
    let mut bad = base.clone();
    bad["stack_listing"] = json!("everything");
    assert!(
        serde_json::from_value::<Config>(bad)
            .unwrap_err()
            .to_string()
            .contains("everything")
    );
    let static_token = json!({"cloud": {"auth": {"token": "t"}, "endpoint_override": "http://h:8004/v1/p"}, "stack_listing": "per_project"});
    let err =
        HeatPlugin::from_config(serde_json::from_value(static_token).unwrap(), "h").unwrap_err();
    assert_eq!(err.field(), Some("stack_listing"), "{err}");
    assert!(err.message().contains("a static token"), "{err}");
    let c: Config = serde_json::from_value(base).unwrap();
    assert_eq!(
        (c.nested_depth, c.concurrency, c.service_type.as_str()),
        (3, 4, "orchestration")
    );
    assert!(!format!("{c:?}").contains("pa55-secret"));
}
