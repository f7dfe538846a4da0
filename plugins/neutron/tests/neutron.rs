//! The plugin in-process against a loopback Keystone + Neutron serving the objects
//! captured from a real Neutron 25.2 (`tests/fixtures/README.md`), paginated the way
//! Neutron paginates (`limit` objects after `marker`, `next` while a page is full and
//! `previous` always), with faults switched on by the test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use synchronizer_neutron::{Config, NeutronPlugin};
use synchronizer_openstack::testing::{Reply, Request, Server, keystone_token_reply, marker_page};
use synchronizer_plugin_api::Snapshot;

const TOKEN: &str = include_str!("fixtures/keystone-auth-tokens.json");
const PORT_PAGES: [&str; 3] = [
    include_str!("fixtures/ports-limit2.page1.json"),
    include_str!("fixtures/ports-limit2.page2.json"),
    include_str!("fixtures/ports-limit2.page3.json"),
];
const NETWORK_PAGES: [&str; 4] = [
    include_str!("fixtures/networks-limit1.page1.json"),
    include_str!("fixtures/networks-limit1.page2.json"),
    include_str!("fixtures/networks-limit1.page3.json"),
    include_str!("fixtures/networks-limit1.page4.json"),
];
const PORTS: &str = include_str!("fixtures/ports.json");
const NETWORKS: &str = include_str!("fixtures/networks.json");
const PORT_A1: &str = "07452c11-ecf4-45d7-9b19-284b0989c93c";
const PORT_B1: &str = "523891b4-aa04-4314-980d-997706f3a19e";
const NET_A: &str = "26457730-fef5-4635-a5fd-f2a67b49d391";
const INSTANCE_A: &str = "8cf49b92-b026-4cb9-819a-8fa9dd740164";

#[derive(Default)]
struct Cloud {
    networks: Vec<Value>,
    ports: Vec<Value>,
    /// (collection, page index, status).
    fault: Option<(&'static str, usize, u16)>,
    truncated: Option<(&'static str, usize)>,
    forbid: bool,
    issued: usize,
    valid_from: usize,
    revoke_after_pages: Option<usize>,
}

fn objects(pages: &[&str], key: &str) -> Vec<Value> {
    pages
        .iter()
        .flat_map(|p| {
            serde_json::from_str::<Value>(p).unwrap()[key]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect()
}

fn captured() -> Cloud {
    Cloud {
        networks: objects(&NETWORK_PAGES, "networks"),
        ports: objects(&PORT_PAGES, "ports"),
        valid_from: 1,
        ..Default::default()
    }
}

fn neutron_error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"NeutronError": {"type": kind, "message": message, "detail": ""}}).to_string(),
    )
}

fn handle(cloud: &mut Cloud, req: &Request, base: &str) -> Reply {
    if req.method == "POST" && req.path == "/identity/v3/auth/tokens" {
        cloud.issued += 1;
        return keystone_token_reply(
            TOKEN,
            base,
            &format!("tok-{}", cloud.issued),
            Duration::from_secs(3600),
            &[("network", "/network")],
        );
    }
    let collection = match req.path.as_str() {
        "/network/v2.0/networks" => "networks",
        "/network/v2.0/ports" => "ports",
        _ => return Reply::not_found(&req.path),
    };
    if collection == "ports"
        && let Some(n) = cloud.revoke_after_pages.as_mut()
    {
        if *n == 0 {
            cloud.valid_from = cloud.issued + 1;
            cloud.revoke_after_pages = None;
        } else {
            *n -= 1;
        }
    }
    let valid = req
        .header("x-auth-token")
        .and_then(|t| t.strip_prefix("tok-"))
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| n >= cloud.valid_from && n <= cloud.issued);
    if !valid {
        return Reply::json(
            401,
            r#"{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}"#,
        );
    }
    if cloud.forbid {
        return neutron_error(
            403,
            "HTTPForbidden",
            "rule:get_port is disallowed by policy",
        );
    }
    let all = if collection == "ports" {
        &cloud.ports
    } else {
        &cloud.networks
    };
    let Ok(page) = marker_page(all, req, usize::MAX) else {
        return neutron_error(404, "NotFound", "marker not found");
    };
    let (index, limit) = (page.index(), page.limit);
    let mut links = Vec::new();
    if let Some(last) = page.next_marker() {
        links.push(json!({"rel": "next", "href": format!(
            "http://127.0.0.1:19696/v2.0/{collection}?limit={limit}&marker={last}")}));
    }
    if let Some(first) = page.items.first() {
        links.push(json!({"rel": "previous", "href": format!(
            "http://127.0.0.1:19696/v2.0/{collection}?limit={limit}&marker={}&page_reverse=True",
            first["id"].as_str().unwrap_or_default())}));
    }
    let mut body = json!({ collection: page.items });
    body[format!("{collection}_links")] = Value::Array(links);
    let text = body.to_string();
    if let Some((c, i, status)) = cloud.fault
        && c == collection
        && i == index
    {
        return neutron_error(
            status,
            "HTTPInternalServerError",
            "Request Failed: internal server error while processing your request.",
        );
    }
    if cloud.truncated == Some((collection, index)) {
        return Reply::json(200, text[..text.len() / 2].to_owned());
    }
    Reply::json(200, text)
}

struct Neutron {
    server: Server,
    _cloud: Arc<Mutex<Cloud>>,
}

async fn start(cloud: Cloud) -> Neutron {
    let cloud = Arc::new(Mutex::new(cloud));
    let state = cloud.clone();
    let server = Server::start(move |req: &Request, base: &str| {
        handle(&mut state.lock().unwrap(), req, base)
    })
    .await
    .unwrap();
    Neutron {
        server,
        _cloud: cloud,
    }
}

fn plugin(n: &Neutron) -> NeutronPlugin {
    let config = json!({
        "cloud": {
            "auth": {
                "auth_url": format!("{}/identity", n.server.base()),
                "username": "admin", "password": "s3cret-password", "project_name": "admin"
            },
            "region": "RegionOne",
            "timeout": "2s"
        },
        "page_size": 2
    });
    let config: Config = serde_json::from_value(config).unwrap();
    NeutronPlugin::from_config(config, "neutron-test").unwrap()
}

fn keys(s: &Snapshot, t: &str) -> Vec<String> {
    let mut k: Vec<String> = s
        .entities()
        .iter()
        .filter(|e| e.entity_type() == t)
        .map(|e| e.key())
        .collect();
    k.sort();
    k
}

fn expected(all: &str, key: &str, t: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(all).unwrap();
    let mut k: Vec<String> = v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| format!("{t}:{}", o["id"].as_str().unwrap()))
        .collect();
    k.sort();
    k
}

fn queries(n: &Neutron, path: &str) -> Vec<String> {
    n.server
        .requests()
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.query.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn pages_are_followed_and_the_relations_are_vitrages() {
    let n = start(captured()).await;
    let s = plugin(&n).collect(&[]).await.unwrap();
    assert_eq!(
        keys(&s, "neutron.network"),
        expected(NETWORKS, "networks", "neutron.network")
    );
    assert_eq!(
        keys(&s, "neutron.port"),
        expected(PORTS, "ports", "neutron.port")
    );
    assert_eq!(
        queries(&n, "/network/v2.0/ports"),
        vec![
            "limit=2".to_owned(),
            "limit=2&marker=2be6224c-6e49-4877-8794-343b9589dc8a".to_owned(),
            "limit=2&marker=8587a74f-e3d4-44a3-8356-95e195c0834c".to_owned(),
        ]
    );
    let entity = |k: String| s.entities().iter().find(|e| e.key() == k).unwrap().clone();
    let a1 = entity(format!("neutron.port:{PORT_A1}"));
    assert_eq!(a1.state(), Some("DOWN"));
    assert_eq!(a1.project(), Some("0f1e2d3c4b5a69788796a5b4c3d2e1f0"));
    let rel: Vec<(String, String)> = a1
        .relations()
        .iter()
        .map(|r| (r.kind().to_owned(), r.other().to_owned()))
        .collect();
    assert_eq!(
        rel,
        vec![
            ("contains".to_owned(), format!("neutron.network:{NET_A}")),
            ("attached".to_owned(), format!("nova.instance:{INSTANCE_A}")),
        ]
    );
    assert_eq!(a1.properties()["mac_address"], "fa:16:3e:53:20:8f");
    assert_eq!(a1.properties()["ip_addresses"], json!(["10.10.0.224"]));
    assert_eq!(a1.properties()["admin_state_up"], true);
    let b1 = entity(format!("neutron.port:{PORT_B1}"));
    // Admin-only attributes are not kept (a member's notification lacks them).
    for admin_only in ["vif_type", "host_id", "network_type"] {
        assert!(b1.properties().get(admin_only).is_none(), "{admin_only}");
    }
    // Router ports: contained by their network, attached to no instance.
    let attached = s
        .entities()
        .iter()
        .filter(|e| e.relations().iter().any(|r| r.kind() == "attached"))
        .count();
    assert_eq!(attached, 2, "the two compute:nova ports");
    let net = entity(format!("neutron.network:{NET_A}"));
    assert_eq!(net.state(), Some("ACTIVE"));
    assert_eq!(net.name(), "net-a-renamed");
}

#[tokio::test]
async fn a_500_mid_pagination_marks_ports_incomplete_and_deletes_nothing() {
    let mut cloud = captured();
    cloud.fault = Some(("ports", 1, 500));
    let n = start(cloud).await;
    let p = plugin(&n);
    let s = p.collect(&[]).await.unwrap();
    assert!(keys(&s, "neutron.port").is_empty(), "no partial listing");
    assert_eq!(keys(&s, "neutron.network").len(), 3);
    let text = format!("{s:?}");
    let marks = &text[text.find("incomplete").unwrap()..];
    assert!(
        marks.contains("neutron.port") && marks.contains("HTTP 500"),
        "{marks}"
    );
    let err = p.collect(&["neutron.port".to_owned()]).await.unwrap_err();
    assert!(err.to_string().starts_with("neutron.port: "), "{err}");
}

#[tokio::test]
async fn a_401_mid_pagination_reauthenticates_once_and_continues() {
    let mut cloud = captured();
    cloud.revoke_after_pages = Some(1);
    let n = start(cloud).await;
    let p = plugin(&n);
    let s = p.collect(&["neutron.port".to_owned()]).await.unwrap();
    assert_eq!(keys(&s, "neutron.port").len(), 5);
    assert_eq!(p.session().authentications(), 2);
}

#[tokio::test]
async fn a_malformed_page_fails_its_type() {
    let mut cloud = captured();
    cloud.truncated = Some(("networks", 1));
    let n = start(cloud).await;
    let err = plugin(&n)
        .collect(&["neutron.network".to_owned()])
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("HTTP 200: unexpected response body"),
        "{err}"
    );
}

#[tokio::test]
async fn a_403_names_the_policy() {
    let mut cloud = captured();
    cloud.forbid = true;
    let n = start(cloud).await;
    let err = plugin(&n).collect(&[]).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("HTTP 403"), "{text}");
    assert!(text.contains("Neutron's policy `get_port`"), "{text}");
}
