//! The plugin in-process against a loopback Keystone + Cinder that serves the pages
//! captured from a real Cinder 25.3 (`tests/fixtures/README.md`), paginated the way
//! Cinder paginates (`limit` volumes after `marker`, `volumes_links` while a page is full,
//! an empty page without links after a full last page), with faults switched on by the
//! test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use synchronizer_cinder::{CinderPlugin, Config};
use synchronizer_openstack::testing::{Reply, Request, Server, keystone_token_reply, marker_page};
use synchronizer_plugin_api::Snapshot;

const TOKEN: &str = include_str!("fixtures/keystone-auth-tokens.json");
const PAGES: [&str; 3] = [
    include_str!("fixtures/volumes-detail-all_tenants-limit2.mv3.71.page1.json"),
    include_str!("fixtures/volumes-detail-all_tenants-limit2.mv3.71.page2.json"),
    include_str!("fixtures/volumes-detail-all_tenants-limit2.mv3.71.page3.json"),
];
const ALL: &str = include_str!("fixtures/volumes-detail-all_tenants.mv3.71.json");
const PROJECT: &str = "5a0d7b3f1c2e4d6f8a9b0c1d2e3f4a5b";
const VOL_B1: &str = "c2c23a54-62a6-496b-a196-61b0f9714706";
const VOL_A1: &str = "0a523e67-664b-43dc-851e-d7523b4ea443";
const INSTANCE_A: &str = "d2a4c3ea-cc3b-4adb-b5d9-34aa8b59a368";
const INSTANCE_B: &str = "07d993c4-2364-4400-a1ed-0dcc202d7030";

#[derive(Default)]
struct Cloud {
    volumes: Vec<Value>,
    /// (page index, status) answered instead of the page.
    fault: Option<(usize, u16)>,
    /// Page index answered with a cut body.
    truncated: Option<usize>,
    forbid_all_tenants: bool,
    /// Keystone's token body, when not the captured admin's.
    token: Option<String>,
    issued: usize,
    valid_from: usize,
    /// Revoke every token after this many volume pages.
    revoke_after_pages: Option<usize>,
}

fn captured() -> Cloud {
    let volumes = PAGES
        .iter()
        .flat_map(|p| {
            serde_json::from_str::<Value>(p).unwrap()["volumes"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect();
    Cloud {
        volumes,
        valid_from: 1,
        ..Default::default()
    }
}

fn cinder_error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({ kind: {"code": status, "message": message} }).to_string(),
    )
}

fn path() -> String {
    format!("/volume/v3/{PROJECT}/volumes/detail")
}

fn handle(cloud: &mut Cloud, req: &Request, base: &str) -> Reply {
    if req.method == "POST" && req.path == "/identity/v3/auth/tokens" {
        cloud.issued += 1;
        return keystone_token_reply(
            cloud.token.as_deref().unwrap_or(TOKEN),
            base,
            &format!("tok-{}", cloud.issued),
            Duration::from_secs(3600),
            &[("volumev3", &format!("/volume/v3/{PROJECT}"))],
        );
    }
    if req.path == path()
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
    if req.path != path() {
        return Reply::not_found(&req.path);
    }
    if cloud.forbid_all_tenants && req.param("all_tenants").is_some() {
        return cinder_error(
            403,
            "forbidden",
            "Policy doesn't allow volume_extension:volume_tenant_attribute to be performed.",
        );
    }
    let page = match marker_page(&cloud.volumes, req, 1000) {
        Ok(page) => page,
        Err(m) => return cinder_error(400, "badRequest", &format!("Invalid marker: {m}")),
    };
    let index = page.index();
    let mut body = json!({ "volumes": page.items });
    if let Some(last) = page.next_marker() {
        body["volumes_links"] = json!([{"rel": "next", "href": format!(
            "http://127.0.0.1:18776/v3/{PROJECT}/volumes/detail?all_tenants=1&limit={}&marker={last}",
            page.limit)}]);
    }
    let text = body.to_string();
    if cloud.fault.is_some_and(|(i, _)| i == index) {
        let status = cloud.fault.map(|f| f.1).unwrap_or(500);
        return cinder_error(
            status,
            "computeFault",
            "The server has either erred or is incapable of performing the requested operation.",
        );
    }
    if cloud.truncated == Some(index) {
        return Reply::json(200, text[..text.len() / 2].to_owned());
    }
    Reply::json(200, text)
}

struct Cinder {
    server: Server,
    _cloud: Arc<Mutex<Cloud>>,
}

async fn start(cloud: Cloud) -> Cinder {
    let cloud = Arc::new(Mutex::new(cloud));
    let state = cloud.clone();
    let server = Server::start(move |req: &Request, base: &str| {
        handle(&mut state.lock().unwrap(), req, base)
    })
    .await
    .unwrap();
    Cinder {
        server,
        _cloud: cloud,
    }
}

fn plugin(c: &Cinder, extra: Value) -> CinderPlugin {
    let mut config = json!({
        "cloud": {
            "auth": {
                "auth_url": format!("{}/identity", c.server.base()),
                "username": "admin", "password": "s3cret-password", "project_name": "admin",
                "user_domain_name": "Default", "project_domain_name": "Default"
            },
            "region": "RegionOne",
            "timeout": "2s"
        },
        "page_size": 2
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let config: Config = serde_json::from_value(config).unwrap();
    CinderPlugin::from_config(config, "cinder-test").unwrap()
}

fn keys(s: &Snapshot) -> Vec<String> {
    let mut k: Vec<String> = s.entities().iter().map(|e| e.key().to_owned()).collect();
    k.sort();
    k
}

fn pages(c: &Cinder) -> Vec<String> {
    c.server
        .requests()
        .iter()
        .filter(|r| r.path == path())
        .map(|r| r.query.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn pages_are_followed_with_limit_and_marker_and_match_the_unpaginated_listing() {
    let c = start(captured()).await;
    let p = plugin(&c, json!({}));
    let s = p.collect(&[]).await.unwrap();
    let all: Value = serde_json::from_str(ALL).unwrap();
    let mut expected: Vec<String> = all["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("cinder.volume:{}", v["id"].as_str().unwrap()))
        .collect();
    expected.sort();
    assert_eq!(keys(&s), expected);
    assert_eq!(s.entities().len(), 4);
    assert_eq!(
        pages(&c),
        vec![
            "all_tenants=1&limit=2".to_owned(),
            format!("all_tenants=1&limit=2&marker={VOL_B1}"),
            format!("all_tenants=1&limit=2&marker={VOL_A1}"),
        ]
    );
    // The microversion header on every page.
    assert!(
        c.server
            .requests()
            .iter()
            .filter(|r| r.path == path())
            .all(|r| r.header("openstack-api-version") == Some("volume 3.71"))
    );
    // State, project, relations and properties of the attached vol-a1.
    let a1 = s
        .entities()
        .iter()
        .find(|e| e.key() == format!("cinder.volume:{VOL_A1}"))
        .unwrap();
    assert_eq!(a1.name(), "vol-a1");
    assert_eq!(a1.state(), Some("in-use"));
    assert_eq!(a1.project(), Some("0f1e2d3c4b5a69788796a5b4c3d2e1f0"));
    let rel: Vec<(String, String)> = a1
        .relations()
        .iter()
        .map(|r| (r.kind().to_owned(), r.other().to_owned()))
        .collect();
    assert_eq!(
        rel,
        vec![("attached".to_owned(), format!("nova.instance:{INSTANCE_A}"))]
    );
    assert_eq!(a1.properties()["size"], 1);
    assert_eq!(
        a1.properties()["volume_type_id"],
        "cbf4d6fe-9a49-4ad1-b319-57c5e2521765"
    );
    assert_eq!(a1.properties()["attachments"], json!([INSTANCE_A]));
    let states: Vec<(String, Option<String>)> = {
        let mut v: Vec<_> = s
            .entities()
            .iter()
            .map(|e| (e.name().to_owned(), e.state().map(str::to_owned)))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        states,
        vec![
            ("vol-a1".to_owned(), Some("in-use".to_owned())),
            ("vol-a2".to_owned(), Some("available".to_owned())),
            ("vol-b1".to_owned(), Some("in-use".to_owned())),
            ("vol-b2-err".to_owned(), Some("error".to_owned())),
        ]
    );
    let b1 = s
        .entities()
        .iter()
        .find(|e| e.key() == format!("cinder.volume:{VOL_B1}"))
        .unwrap();
    assert_eq!(
        b1.relations()[0].other(),
        format!("nova.instance:{INSTANCE_B}")
    );
    assert_eq!(p.session().authentications(), 1);
}

#[tokio::test]
async fn a_500_mid_pagination_fails_the_snapshot() {
    let mut cloud = captured();
    cloud.fault = Some((1, 500));
    let c = start(cloud).await;
    let err = plugin(&c, json!({})).collect(&[]).await.unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("cinder.volume: "), "{text}");
    assert!(
        text.contains(&format!("marker={VOL_B1}: HTTP 500")),
        "{text}"
    );
}

#[tokio::test]
async fn a_401_mid_pagination_reauthenticates_once_and_continues() {
    let mut cloud = captured();
    cloud.revoke_after_pages = Some(1);
    let c = start(cloud).await;
    let p = plugin(&c, json!({}));
    let s = p.collect(&[]).await.unwrap();
    assert_eq!(s.entities().len(), 4);
    assert_eq!(p.session().authentications(), 2);
    assert_eq!(
        pages(&c).len(),
        4,
        "page 2 is asked again with the new token"
    );
}

#[tokio::test]
async fn a_malformed_page_fails_the_snapshot() {
    let mut cloud = captured();
    cloud.truncated = Some(1);
    let c = start(cloud).await;
    let err = plugin(&c, json!({})).collect(&[]).await.unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "marker={VOL_B1}: HTTP 200: unexpected response body"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn all_tenants_forbidden_names_the_policy_to_grant() {
    let mut cloud = captured();
    cloud.forbid_all_tenants = true;
    let c = start(cloud).await;
    let err = plugin(&c, json!({})).collect(&[]).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("HTTP 403"), "{text}");
    assert!(
        text.contains("Cinder's policy `volume_extension:volume_tenant_attribute`"),
        "{text}"
    );
    assert!(text.contains("`all_tenants = false`"), "{text}");
    let s = plugin(&c, json!({"all_tenants": false}))
        .collect(&[])
        .await
        .unwrap();
    assert_eq!(s.entities().len(), 4);
}

/// The captured token with its `admin` role taken out (a member's roles stay).
fn member_token() -> String {
    let admin = r#"{"id": "ace06e3db8ff4011929abdea275c5727", "name": "admin"}, "#;
    assert!(
        TOKEN.contains(admin),
        "the captured token has the admin role"
    );
    TOKEN.replace(admin, "")
}

#[tokio::test]
async fn a_token_without_an_all_tenants_role_fails_before_listing() {
    // Real Cinder answers a member's all_tenants=1 with its own project only
    // (tests/fixtures/volumes-detail-all_tenants-as-member.mv3.71.json): that snapshot
    // would delete every other project's volumes, so it is never asked for.
    let mut cloud = captured();
    cloud.token = Some(member_token());
    let c = start(cloud).await;
    let err = plugin(&c, json!({})).collect(&[]).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("roles (reader, heat_stack_owner, manager, member) include none of `all_tenants_roles` (admin)"),
        "{text}"
    );
    assert!(text.contains("`all_tenants = false`"), "{text}");
    assert!(pages(&c).is_empty(), "no volume page was asked for");
    // The role a custom policy grants, named: the listing goes ahead.
    let s = plugin(&c, json!({"all_tenants_roles": ["Manager"]}))
        .collect(&[])
        .await
        .unwrap();
    assert_eq!(s.entities().len(), 4);
    // The check turned off, and without all_tenants: no check either.
    for extra in [
        json!({"all_tenants_roles": []}),
        json!({"all_tenants": false}),
    ] {
        let s = plugin(&c, extra).collect(&[]).await.unwrap();
        assert_eq!(s.entities().len(), 4);
    }
}

#[tokio::test]
async fn other_types_ask_nothing() {
    let c = start(captured()).await;
    let s = plugin(&c, json!({}))
        .collect(&["nova.instance".to_owned()])
        .await
        .unwrap();
    assert!(s.entities().is_empty());
    assert!(c.server.requests().is_empty());
}
