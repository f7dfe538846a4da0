//! A loopback Keystone + Nova for the tests: real HTTP, answers made from the responses
//! captured from a real Nova 30.3 (`plugins/nova/tests/fixtures`, see PROVENANCE.md
//! there), paginated the way Nova paginates, with faults switched on by the test.
//! [`lab`] drives the real lab Nova instead.

pub mod lab;

use std::time::Duration;

use serde_json::{Value, json};
use synchronizer_openstack::testing::{Reply, Request, keystone_token_reply, marker_page};

use crate::replay::{Replay, merged};

/// Keystone's answer to a password authentication, as captured.
pub const TOKEN: &str = include_str!("../../plugins/nova/tests/fixtures/keystone-auth-tokens.json");
/// The servers listing in pages of two, as captured.
pub const PAGE: [&str; 3] = [
    include_str!(
        "../../plugins/nova/tests/fixtures/servers-detail-all_tenants-limit2.mv2.53.page1.json"
    ),
    include_str!(
        "../../plugins/nova/tests/fixtures/servers-detail-all_tenants-limit2.mv2.53.page2.json"
    ),
    include_str!(
        "../../plugins/nova/tests/fixtures/servers-detail-all_tenants-limit2.mv2.53.page3.json"
    ),
];
/// The whole servers listing, as captured.
pub const ALL: &str =
    include_str!("../../plugins/nova/tests/fixtures/servers-detail-all_tenants.mv2.53.json");
/// The compute services, as captured.
pub const SERVICES: &str =
    include_str!("../../plugins/nova/tests/fixtures/os-services-nova-compute.mv2.53.json");
/// The hypervisors (compute1 at 127.0.0.1, compute2 at 127.0.0.2), as captured.
pub const HYPERVISORS: &str =
    include_str!("../../plugins/nova/tests/fixtures/os-hypervisors-detail.mv2.53.json");
/// The availability zones, as captured.
pub const ZONES: &str =
    include_str!("../../plugins/nova/tests/fixtures/os-availability-zone-detail.json");

/// Server vm-a1 of the capture.
pub const VM_A1: &str = "21531c76-f1e4-41a9-ac03-54c2993a7c4c";
/// Server vm-b3-err of the capture (in ERROR).
pub const VM_B3_ERR: &str = "506e9219-be06-482a-9bf8-63f32f1841e7";
/// Server vm-b1 of the capture.
pub const VM_B1: &str = "dafb9253-6c7d-4913-ac5d-135a34934373";
/// Server vm-a2 of the capture.
pub const VM_A2: &str = "e382a11f-d358-4aa8-8310-e3e5d944e045";
/// Server vm-a3 of the capture.
pub const VM_A3: &str = "fbcbef24-d6c0-47fb-8152-f633a837780f";

/// What can go wrong with one page of servers (0-based index in the listing).
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and a Nova error body.
    Status(u16),
    /// Answer 200 with the body cut in the middle.
    Truncated,
    /// Answer after this delay.
    Slow(Duration),
}

/// The cloud's state, changed by the tests between polls.
pub struct Cloud {
    /// The servers, in Nova's listing order.
    pub servers: Vec<Value>,
    /// The os-services answer.
    pub services: Value,
    /// The os-availability-zone/detail answer.
    pub zones: Value,
    /// A fault on page `.0` of every listing.
    pub fault: Option<(usize, Fault)>,
    /// Answer 403 to `all_tenants=1` (a user without the admin role).
    pub forbid_all_tenants: bool,
    /// Status for os-services instead of 200.
    pub services_status: Option<u16>,
    /// The hypervisors, in Nova's listing order (paged by `limit` and `marker` as the
    /// servers are).
    pub hypervisors: Vec<Value>,
    /// Status for os-hypervisors/detail instead of 200.
    pub hypervisors_status: Option<u16>,
    /// Tokens issued so far (`tok-1`, `tok-2`, ...).
    pub issued: usize,
    /// Tokens numbered below this are refused with 401 (revoked).
    pub valid_from: usize,
    /// Revoke every token issued so far after this many more server pages.
    pub revoke_after_pages: Option<usize>,
}

impl Cloud {
    /// The captured cloud: five servers, two computes, two zones; no fault.
    pub fn captured() -> Self {
        let servers = PAGE
            .iter()
            .flat_map(|p| {
                serde_json::from_str::<Value>(p).unwrap()["servers"]
                    .as_array()
                    .unwrap()
                    .clone()
            })
            .collect();
        Cloud {
            servers,
            services: serde_json::from_str(SERVICES).unwrap(),
            zones: serde_json::from_str(ZONES).unwrap(),
            fault: None,
            forbid_all_tenants: false,
            services_status: None,
            hypervisors: serde_json::from_str::<Value>(HYPERVISORS).unwrap()["hypervisors"]
                .as_array()
                .unwrap()
                .clone(),
            hypervisors_status: None,
            issued: 0,
            valid_from: 1,
            revoke_after_pages: None,
        }
    }

    /// Server `id` (which must exist), to change.
    pub fn server_mut(&mut self, id: &str) -> &mut Value {
        self.servers.iter_mut().find(|s| s["id"] == id).unwrap()
    }

    /// Deletes server `id` from the cloud.
    pub fn remove_server(&mut self, id: &str) {
        self.servers.retain(|s| s["id"] != id);
    }
}

/// The running loopback Keystone + Nova; it stops when dropped.
pub type Nova = Replay<Cloud>;

impl Replay<Cloud> {
    /// Starts on a free loopback port, answering from `cloud`.
    pub async fn start(cloud: Cloud) -> Nova {
        Replay::serve(cloud, handle).await
    }

    /// The plugin configuration for this cloud (password auth through the loopback
    /// Keystone), with `extra` merged in at the top level.
    pub fn config(&self, extra: Value) -> Value {
        let config = json!({
            "cloud": {
                "auth": {
                    "auth_url": format!("{}/identity", self.server.base()),
                    "username": "admin",
                    "password": "s3cret-password",
                    "project_name": "admin",
                    "user_domain_name": "Default",
                    "project_domain_name": "Default"
                },
                "region": "RegionOne",
                "timeout": "2s"
            },
            "page_size": 2
        });
        merged(config, extra)
    }

    /// An `[[instances]]` table named `name` that runs the Nova collector's `.so` against
    /// this cloud (polled only when asked: interval 1h), for a host configuration.
    pub fn instance_toml(&self, name: &str) -> String {
        let config = self.config(json!({}));
        let auth = &config["cloud"]["auth"];
        format!(
            r#"
[[instances]]
name = "{name}"
library = "{library}"
interval = "1h"
jitter = "0s"
timeout = "20s"
[instances.config]
page_size = 2
microversion = "2.53"
[instances.config.cloud]
region = "RegionOne"
interface = "public"
timeout = "5s"
[instances.config.cloud.auth]
auth_url = {auth_url}
username = "admin"
password = {password}
project_name = "admin"
user_domain_name = "Default"
project_domain_name = "Default"
"#,
            library = crate::paths::plugin_library("synchronizer_nova").display(),
            auth_url = auth["auth_url"],
            password = auth["password"],
        )
    }

    /// Server-side `GET` lines for the servers listing, in order.
    pub fn server_pages(&self) -> Vec<String> {
        self.server
            .requests()
            .iter()
            .filter(|r| r.path == "/compute/v2.1/servers/detail")
            .map(|r| r.query.clone().unwrap_or_default())
            .collect()
    }
}

fn nova_error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({ kind: {"code": status, "message": message} }).to_string(),
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
            &[("compute", "/compute/v2.1")],
        );
    }
    if req.path == "/compute/v2.1/servers/detail"
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
    match req.path.as_str() {
        "/compute/v2.1/servers/detail" => servers_page(cloud, req),
        "/compute/v2.1/os-services" => match cloud.services_status {
            Some(status) => nova_error(status, "computeFault", "Unexpected API Error."),
            None => Reply::json(200, cloud.services.to_string()),
        },
        "/compute/v2.1/os-hypervisors/detail" => match cloud.hypervisors_status {
            Some(status) => nova_error(status, "computeFault", "Unexpected API Error."),
            None => hypervisors_page(cloud, req),
        },
        "/compute/v2.1/os-availability-zone/detail" => Reply::json(200, cloud.zones.to_string()),
        _ => Reply::not_found(&req.path),
    }
}

/// A page of hypervisors as Nova 30 makes it (`limit` after `marker`, a `next` link
/// whenever the page is full; the captured `...limit1.page*` answers).
fn hypervisors_page(cloud: &Cloud, req: &Request) -> Reply {
    let page = match marker_page(&cloud.hypervisors, req, 1000) {
        Ok(page) => page,
        Err(m) => return nova_error(400, "badRequest", &format!("marker [{m}] not found")),
    };
    let mut body = json!({ "hypervisors": page.items });
    if let Some(last) = page.next_marker() {
        body["hypervisors_links"] = json!([{
            "rel": "next",
            "href": format!("http://127.0.0.1:8774/v2.1/os-hypervisors/detail?limit={}&marker={last}", page.limit),
        }]);
    }
    Reply::json(200, body.to_string())
}

/// One page as Nova 30 makes it: `limit` servers after `marker`, and a `next` link in
/// `servers_links` whenever the page is full. The link carries Nova's own idea of its
/// URL (as captured: `http://127.0.0.1:8774/v2.1/...`), which the plugin must not follow
/// blindly.
fn servers_page(cloud: &mut Cloud, req: &Request) -> Reply {
    if cloud.forbid_all_tenants && req.param("all_tenants").is_some() {
        return nova_error(
            403,
            "forbidden",
            "Policy doesn't allow os_compute_api:servers:detail:get_all_tenants to be performed.",
        );
    }
    let page = match marker_page(&cloud.servers, req, 1000) {
        Ok(page) => page,
        Err(m) => return nova_error(400, "badRequest", &format!("marker [{m}] not found")),
    };
    let page_index = page.index();
    let mut body = json!({ "servers": page.items });
    if let Some(last) = page.next_marker() {
        body["servers_links"] = json!([{
            "rel": "next",
            "href": format!("http://127.0.0.1:8774/v2.1/servers/detail?all_tenants=1&limit={}&marker={last}", page.limit),
        }]);
    }
    let text = body.to_string();
    match &cloud.fault {
        Some((i, fault)) if *i == page_index => match fault {
            Fault::Status(status) => nova_error(
                *status,
                "computeFault",
                "Unexpected API Error. Please report this at http://bugs.launchpad.net/nova/ and attach the Nova API log if possible.",
            ),
            Fault::Truncated => Reply::json(200, text[..text.len() / 2].to_owned()),
            Fault::Slow(d) => Reply::json(200, text).delayed(*d),
        },
        _ => Reply::json(200, text),
    }
}
