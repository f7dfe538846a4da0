//! The Nova plugin in-process against a loopback Keystone + Nova serving real captures.

use std::time::Duration;

use serde_json::json;
use synchronizer_nova::{Config, NovaPlugin};
use synchronizer_openstack::time::parse_timestamp;
use synchronizer_plugin_api::{Direction, Entity, Snapshot};
use synchronizer_test_kit::nova::*;

fn plugin(nova: &Nova, extra: serde_json::Value) -> NovaPlugin {
    let config: Config = serde_json::from_value(nova.config(extra)).unwrap();
    NovaPlugin::from_config(config, "nova-test").unwrap()
}

fn all() -> Vec<String> {
    vec![
        "nova.instance".into(),
        "nova.host".into(),
        "nova.zone".into(),
    ]
}

fn find<'a>(s: &'a Snapshot, key: &str) -> &'a Entity {
    s.entities()
        .iter()
        .find(|e| e.key() == key)
        .unwrap_or_else(|| panic!("{key} missing"))
}

fn keys(s: &Snapshot, entity_type: &str) -> Vec<String> {
    let mut k: Vec<String> = s
        .entities()
        .iter()
        .filter(|e| e.entity_type() == entity_type)
        .map(|e| e.key())
        .collect();
    k.sort();
    k
}

/// The types a snapshot marks incomplete (the SDK's `Snapshot` shows them only in Debug).
fn incomplete(s: &Snapshot) -> String {
    let text = format!("{s:?}");
    text[text.find("incomplete").unwrap()..].to_owned()
}

fn relations(e: &Entity) -> Vec<(String, String, Direction)> {
    e.relations()
        .iter()
        .map(|r| (r.kind().to_owned(), r.other().to_owned(), r.direction()))
        .collect()
}

#[tokio::test]
async fn token_catalog_and_pagination_give_every_entity_of_the_capture() {
    let nova = Nova::start(Cloud::captured()).await;
    let p = plugin(&nova, json!({}));
    let s = p.collect(&all()).await.unwrap();

    // One token from Keystone, the compute endpoint from its catalog, three pages.
    assert_eq!(nova.server.count("POST", "/identity/v3/auth/tokens"), 1);
    assert_eq!(
        nova.server_pages(),
        vec![
            "all_tenants=1&limit=2".to_owned(),
            format!("all_tenants=1&limit=2&marker={VM_B3_ERR}"),
            format!("all_tenants=1&limit=2&marker={VM_A2}"),
        ]
    );
    for r in nova.server.requests().iter().filter(|r| r.method == "GET") {
        assert_eq!(
            r.header("openstack-api-version"),
            Some("compute 2.53"),
            "{}",
            r.line()
        );
        assert_eq!(r.header("x-auth-token"), Some("tok-1"), "{}", r.line());
    }
    assert!(
        nova.server
            .lines()
            .contains(&"GET /compute/v2.1/os-services?binary=nova-compute".to_owned())
    );
    assert!(
        nova.server
            .lines()
            .contains(&"GET /compute/v2.1/os-availability-zone/detail".to_owned())
    );

    // Every server of the unpaginated capture, and nothing else.
    let unpaginated: serde_json::Value = serde_json::from_str(ALL).unwrap();
    let mut expected: Vec<String> = unpaginated["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("nova.instance:{}", s["id"].as_str().unwrap()))
        .collect();
    expected.sort();
    assert_eq!(keys(&s, "nova.instance"), expected);
    assert_eq!(
        keys(&s, "nova.host"),
        ["nova.host:compute1", "nova.host:compute2"]
    );
    assert_eq!(
        keys(&s, "nova.zone"),
        ["nova.zone:az1", "nova.zone:az2"],
        "internal is dropped"
    );

    let a1 = find(&s, &format!("nova.instance:{VM_A1}"));
    assert_eq!(a1.name(), "vm-a1");
    assert_eq!(a1.state(), Some("ACTIVE"));
    assert_eq!(a1.project(), Some("projA"));
    assert_eq!(
        a1.source_updated_micros(),
        parse_timestamp("2026-11-25T08:37:40Z")
    );
    assert_eq!(
        relations(a1),
        [(
            "contains".into(),
            "nova.host:compute1".into(),
            Direction::Incoming
        )]
    );
    // The shared nova.instance properties, all of them and nothing else (no user_data,
    // links, power_state...).
    let props = a1.properties();
    let mut names: Vec<&str> = props
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    names.sort_unstable();
    let mut want = synchronizer_nova::INSTANCE_PROPERTIES.to_vec();
    want.push("instance_name");
    want.sort_unstable();
    assert_eq!(names, want);
    for (name, value) in [
        ("vm_state", json!("active")),
        ("task_state", json!(null)),
        ("availability_zone", json!("az1")),
        ("host", json!("compute1")),
        ("node", json!("compute1")),
        ("flavor", json!("m1.tiny")),
        ("image_id", json!("659ab5c8-bf73-4ea1-a020-37a3ce6d81bc")),
        ("user_id", json!("alice")),
        ("created_at", json!("2026-11-25T08:37:35Z")),
        ("metadata", json!({"role": "test"})),
        ("instance_name", json!("instance-00000001")),
    ] {
        assert_eq!(props[name], value, "{name}");
    }

    let err = find(&s, &format!("nova.instance:{VM_B3_ERR}"));
    assert_eq!(err.state(), Some("ERROR"));
    assert_eq!(err.project(), Some("projB"));
    assert_eq!(err.properties()["vm_state"], "error");
    // Listed as `instance-00000001` (cell0's numbering, the same as vm-a1's in cell1), but
    // without a host it has no domain.
    assert_eq!(err.properties()["instance_name"], json!(null));
    assert_eq!(
        err.properties()["availability_zone"],
        json!(null),
        "Nova's empty zone of a server never scheduled is null"
    );
    assert!(err.relations().is_empty(), "never scheduled: no host");
    assert_eq!(
        find(&s, &format!("nova.instance:{VM_A3}")).state(),
        Some("SHUTOFF")
    );

    let host = find(&s, "nova.host:compute1");
    assert_eq!(host.state(), Some("up"));
    assert_eq!(
        relations(host),
        [(
            "contains".into(),
            "nova.zone:az1".into(),
            Direction::Incoming
        )]
    );
    assert_eq!(host.properties()["status"], "enabled");
    assert_eq!(
        host.properties()["service_id"],
        "a2293a50-9186-41b5-890a-1237ff1a27a6"
    );
    assert_eq!(
        host.source_updated_micros(),
        parse_timestamp("2026-11-25T08:37:49.153688")
    );
    // The address its hypervisor reports (the compute service's my_ip).
    assert_eq!(host.properties()["host_ip"], "127.0.0.1");
    assert_eq!(
        find(&s, "nova.host:compute2").properties()["host_ip"],
        "127.0.0.2"
    );
    let zone = find(&s, "nova.zone:az2");
    assert_eq!(zone.state(), Some("available"));
    assert!(incomplete(&s).contains("incomplete: []"), "{s:?}");

    // The token is reused by the next snapshot.
    p.collect(&all()).await.unwrap();
    assert_eq!(nova.server.count("POST", "/identity/v3/auth/tokens"), 1);
}

#[tokio::test]
async fn only_the_requested_types_are_listed() {
    let nova = Nova::start(Cloud::captured()).await;
    let s = plugin(&nova, json!({}))
        .collect(&["nova.zone".to_owned()])
        .await
        .unwrap();
    assert_eq!(keys(&s, "nova.zone").len(), 2);
    assert_eq!(s.entities().len(), 2);
    assert_eq!(nova.server.count("GET", "/compute/v2.1/servers/detail"), 0);
    assert_eq!(nova.server.count("GET", "/compute/v2.1/os-services"), 0);
}

#[tokio::test]
async fn a_401_mid_pagination_reauthenticates_once_and_continues() {
    let mut cloud = Cloud::captured();
    cloud.revoke_after_pages = Some(1); // the first token is revoked before page 2
    let nova = Nova::start(cloud).await;
    let p = plugin(&nova, json!({}));
    let s = p.collect(&["nova.instance".to_owned()]).await.unwrap();
    assert_eq!(keys(&s, "nova.instance").len(), 5);
    assert_eq!(p.session().authentications(), 2);
    let pages: Vec<(String, String)> = nova
        .server
        .requests()
        .iter()
        .filter(|r| r.path == "/compute/v2.1/servers/detail")
        .map(|r| {
            (
                r.query.clone().unwrap(),
                r.header("x-auth-token").unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        pages,
        vec![
            ("all_tenants=1&limit=2".to_owned(), "tok-1".to_owned()),
            (
                format!("all_tenants=1&limit=2&marker={VM_B3_ERR}"),
                "tok-1".to_owned()
            ),
            (
                format!("all_tenants=1&limit=2&marker={VM_B3_ERR}"),
                "tok-2".to_owned()
            ),
            (
                format!("all_tenants=1&limit=2&marker={VM_A2}"),
                "tok-2".to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn a_500_mid_pagination_fails_the_snapshot() {
    let mut cloud = Cloud::captured();
    cloud.fault = Some((1, Fault::Status(500)));
    let nova = Nova::start(cloud).await;
    let p = plugin(&nova, json!({}));
    let err = p.collect(&["nova.instance".to_owned()]).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "GET {}/compute/v2.1/servers/detail?all_tenants=1&limit=2&marker={VM_B3_ERR}: HTTP 500 Internal Server Error: Unexpected API Error.",
            nova.server.base()
        )),
        "{text}"
    );
    assert!(text.starts_with("nova.instance: "), "{text}");

    // With hosts and zones listed whole, the snapshot is complete but for instances.
    let s = p.collect(&all()).await.unwrap();
    assert!(
        keys(&s, "nova.instance").is_empty(),
        "a partial listing is not returned"
    );
    assert_eq!(keys(&s, "nova.host").len(), 2);
    assert_eq!(keys(&s, "nova.zone").len(), 2);
    let marks = incomplete(&s);
    assert!(marks.contains("(\"nova.instance\", \"GET "), "{marks}");
    assert!(marks.contains("HTTP 500"), "{marks}");
    assert!(
        !marks.contains("nova.host") && !marks.contains("nova.zone"),
        "{marks}"
    );
}

#[tokio::test]
async fn a_broken_page_fails_the_snapshot() {
    let mut cloud = Cloud::captured();
    cloud.fault = Some((2, Fault::Truncated));
    let nova = Nova::start(cloud).await;
    let err = plugin(&nova, json!({}))
        .collect(&["nova.instance".to_owned()])
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "marker={VM_A2}: HTTP 200: unexpected response body: EOF while parsing"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_slow_page_times_out_and_fails_the_snapshot() {
    let mut cloud = Cloud::captured();
    cloud.fault = Some((1, Fault::Slow(Duration::from_secs(5))));
    let nova = Nova::start(cloud).await;
    let mut config = nova.config(json!({}));
    config["cloud"]["timeout"] = json!("300ms");
    let p = NovaPlugin::from_config(serde_json::from_value(config).unwrap(), "nova-test").unwrap();
    let started = std::time::Instant::now();
    let err = p.collect(&["nova.instance".to_owned()]).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        err.to_string()
            .contains(&format!("marker={VM_B3_ERR}: timed out after 300ms")),
        "{err}"
    );
}

#[tokio::test]
async fn all_tenants_forbidden_says_the_account_lacks_the_role_or_policy() {
    let mut cloud = Cloud::captured();
    cloud.forbid_all_tenants = true;
    let nova = Nova::start(cloud).await;
    let err = plugin(&nova, json!({})).collect(&all()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("servers/detail?all_tenants=1&limit=2: HTTP 403 Forbidden: Policy doesn't allow os_compute_api:servers:detail:get_all_tenants to be performed."), "{text}");
    assert!(
        text.contains("the account lacks the role or policy to list every project's servers"),
        "{text}"
    );
    assert!(text.contains("`all_tenants = false`"), "{text}");

    // all_tenants = false: the project's own servers, no all_tenants parameter.
    let s = plugin(&nova, json!({"all_tenants": false}))
        .collect(&["nova.instance".to_owned()])
        .await
        .unwrap();
    assert_eq!(keys(&s, "nova.instance").len(), 5);
    assert!(
        nova.server_pages().iter().any(|q| q == "limit=2"),
        "{:?}",
        nova.server_pages()
    );
}

#[tokio::test]
async fn a_failing_type_is_marked_incomplete_and_the_others_are_complete() {
    let mut cloud = Cloud::captured();
    cloud.services_status = Some(503);
    let nova = Nova::start(cloud).await;
    let s = plugin(&nova, json!({})).collect(&all()).await.unwrap();
    assert_eq!(keys(&s, "nova.instance").len(), 5);
    assert_eq!(keys(&s, "nova.zone").len(), 2);
    assert!(keys(&s, "nova.host").is_empty());
    let marks = incomplete(&s);
    assert!(
        marks.contains("(\"nova.host\", \"GET ") && marks.contains("HTTP 503"),
        "{marks}"
    );
}

#[tokio::test]
async fn the_hosts_fail_when_their_hypervisors_cannot_be_listed() {
    // Listed without their addresses, every host would change now and again when the
    // hypervisors come back: the type is incomplete instead, so nothing changes.
    let mut cloud = Cloud::captured();
    cloud.hypervisors_status = Some(500);
    let nova = Nova::start(cloud).await;
    let s = plugin(&nova, json!({})).collect(&all()).await.unwrap();
    assert_eq!(keys(&s, "nova.instance").len(), 5);
    assert!(keys(&s, "nova.host").is_empty());
    let marks = incomplete(&s);
    assert!(
        marks.contains("(\"nova.host\", \"GET ")
            && marks.contains("os-hypervisors/detail")
            && marks.contains("HTTP 500"),
        "{marks}"
    );
}

#[tokio::test]
async fn hypervisors_are_paged_like_the_servers() {
    // Pages of one hypervisor (the captured limit=1 answers): three requests, the last
    // one empty, both addresses joined.
    let nova = Nova::start(Cloud::captured()).await;
    let s = plugin(&nova, json!({"page_size": 1}))
        .collect(&["nova.host".to_owned()])
        .await
        .unwrap();
    let ips: Vec<String> = ["compute1", "compute2"]
        .iter()
        .map(|h| find(&s, &format!("nova.host:{h}")).properties()["host_ip"].to_string())
        .collect();
    assert_eq!(ips, ["\"127.0.0.1\"", "\"127.0.0.2\""]);
    assert_eq!(
        nova.server
            .count("GET", "/compute/v2.1/os-hypervisors/detail"),
        3
    );
}

#[tokio::test]
async fn microversion_and_page_size_are_configurable() {
    let nova = Nova::start(Cloud::captured()).await;
    plugin(&nova, json!({"microversion": "2.60", "page_size": 1000}))
        .collect(&["nova.instance".to_owned()])
        .await
        .unwrap();
    let r = &nova.server.requests()[1];
    assert_eq!(r.query.as_deref(), Some("all_tenants=1&limit=1000"));
    assert_eq!(r.header("openstack-api-version"), Some("compute 2.60"));
    assert_eq!(r.header("x-openstack-nova-api-version"), Some("2.60"));
}

#[test]
fn configuration_errors_name_the_field() {
    let base = json!({"cloud": {"auth": {"auth_url": "http://k:5000", "username": "u", "password": "pa55-secret", "project_name": "p"}}});
    let mut typo = base.clone();
    typo["pagesize"] = json!(5);
    let err = serde_json::from_value::<Config>(typo).unwrap_err();
    assert!(err.to_string().contains("pagesize"), "{err}");
    let mut bad = base.clone();
    bad["microversion"] = json!("latest");
    let err = NovaPlugin::from_config(serde_json::from_value(bad).unwrap(), "n").unwrap_err();
    assert_eq!(err.field(), Some("microversion"), "{err}");
    assert_eq!(err.message(), "`latest` is not a microversion like `2.53`");
    let c: Config = serde_json::from_value(base).unwrap();
    assert_eq!(c.microversion, "2.53");
    assert!(c.all_tenants);
    assert_eq!(c.service_type, "compute");
    assert!(
        !format!("{c:?}").contains("pa55-secret"),
        "secrets are redacted"
    );
}

#[tokio::test]
async fn a_region_without_nova_is_a_clear_error() {
    let nova = Nova::start(Cloud::captured()).await;
    let mut config = nova.config(json!({}));
    config["cloud"]["region"] = json!("RegionTwo");
    let p = NovaPlugin::from_config(serde_json::from_value(config).unwrap(), "nova-test").unwrap();
    let err = p.collect(&all()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("no public endpoint for service type `compute` in region `RegionTwo`"),
        "{err}"
    );
}
