//! A loopback Keystone + Heat for the tests: real HTTP, answers made from the responses
//! captured from a real Keystone 27.1 + Heat 24.1 (`plugins/heat/tests/fixtures`, see
//! PROVENANCE.md there), paginated and policed the way that Heat does, with faults
//! switched on by the test.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use synchronizer_openstack::testing::{Reply, Request, keystone_token_reply, marker_page};

use crate::replay::{Replay, merged};

/// Keystone's answer to a password authentication, as captured.
pub const TOKEN: &str = include_str!("../../plugins/heat/tests/fixtures/keystone-auth-tokens.json");
/// Every project's stacks (`global_tenant=True`), as captured.
pub const GLOBAL: &str = include_str!("../../plugins/heat/tests/fixtures/stacks-global.json");
/// The global listing in pages of two, as captured.
pub const PAGES: [&str; 3] = [
    include_str!("../../plugins/heat/tests/fixtures/stacks-global-limit2-p1.json"),
    include_str!("../../plugins/heat/tests/fixtures/stacks-global-limit2-p2.json"),
    include_str!("../../plugins/heat/tests/fixtures/stacks-global-limit2-p3.json"),
];
/// Heat's answer to a global listing its default policy denies, as captured.
pub const DENIED: &str = include_str!(
    "../../plugins/heat/tests/fixtures/stacks-global-as-admin-default-policy-denied.json"
);
/// The resources of nested-a (nested_depth=3), as captured.
pub const RES_NESTED_A: &str =
    include_str!("../../plugins/heat/tests/fixtures/resources-nested-a-depth3.json");
/// The resources of failing-a, as captured.
pub const RES_FAILING_A: &str =
    include_str!("../../plugins/heat/tests/fixtures/resources-failing-a.json");
/// The resources of basic-a (derived from the capture).
pub const RES_BASIC_A: &str =
    include_str!("../../plugins/heat/tests/fixtures/resources-basic-a.derived.json");

/// Project admin.
pub const ADMIN: &str = "fca91c01eef940b089c475c8aec063b9";
/// Project demo-a.
pub const DEMO_A: &str = "792e7e05085f495b88f1d9ecb7c2642a";
/// Project demo-b.
pub const DEMO_B: &str = "3d28131b7de143eebcb3dc53acae67ba";

/// Stack nested-b.
pub const NESTED_B: &str = "8c987b26-026d-45f7-adaf-fa54b77a2a2d";
/// Stack basic-b.
pub const BASIC_B: &str = "357482cb-fcc6-4b3c-8284-cfa0dfa9c650";
/// Stack failing-a.
pub const FAILING_A: &str = "1e700381-8647-4e2f-b67f-a0f5a87597d4";
/// Stack nested-a.
pub const NESTED_A: &str = "099f3b7e-b363-4f5d-86b6-61ea8ddb238f";
/// Stack basic-a.
pub const BASIC_A: &str = "8b975fd3-1abc-42db-8f09-7cc89cac27cd";

/// The server that the test turns `leaf_none` (a resource two levels down in nested-a's
/// nested stacks) into.
pub const NESTED_SERVER: &str = "d589c9d5-8bcf-462f-a588-6a80573313ad";

/// What can go wrong with one page of stacks (0-based index in the listing).
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and a Heat error body.
    Status(u16),
    /// Answer 200 with the body cut in the middle.
    Truncated,
}

/// The cloud's state, changed by the tests between polls.
pub struct Cloud {
    /// Every top-level stack, in Heat's order (newest first).
    pub stacks: Vec<Value>,
    /// Resources by stack id (`{"resources": []}` for the others).
    pub resources: HashMap<String, Value>,
    /// Heat's policy allows `stacks:global_index` to admins (an operator override);
    /// false is Heat's default (deny everybody).
    pub global_allowed: bool,
    /// A fault on page `.0` of every stack listing.
    pub fault: Option<(usize, Fault)>,
    /// A status for the resources of one stack.
    pub resources_status: HashMap<String, u16>,
    /// Every token here is an admin's. A real Heat 24 answers an admin with every
    /// project's stacks under any project's URL (seen on the real one, see
    /// scripts/openstack); false: only that project's stacks, as for other users.
    pub admin_sees_all: bool,
    /// Listings under these projects' URLs show only that project's stacks, whatever
    /// `admin_sees_all` says.
    pub filtered_projects: Vec<String>,
    /// Tokens issued so far (`tok-1`, `tok-2`, ...).
    pub issued: usize,
}

impl Cloud {
    /// The captured cloud, with Heat's policy overridden as during the capture.
    pub fn captured() -> Self {
        let stacks = serde_json::from_str::<Value>(GLOBAL).unwrap()["stacks"]
            .as_array()
            .unwrap()
            .clone();
        let mut nested_a: Value = serde_json::from_str(RES_NESTED_A).unwrap();
        // Make a resource two levels down a server, to see nested_depth at work.
        for r in nested_a["resources"].as_array_mut().unwrap() {
            if r["physical_resource_id"] == NESTED_SERVER {
                r["resource_type"] = json!("OS::Nova::Server");
            }
        }
        let resources = HashMap::from([
            (NESTED_A.to_owned(), nested_a),
            (
                FAILING_A.to_owned(),
                serde_json::from_str(RES_FAILING_A).unwrap(),
            ),
            (
                BASIC_A.to_owned(),
                serde_json::from_str(RES_BASIC_A).unwrap(),
            ),
        ]);
        Cloud {
            stacks,
            resources,
            global_allowed: true,
            fault: None,
            resources_status: HashMap::new(),
            admin_sees_all: true,
            filtered_projects: Vec::new(),
            issued: 0,
        }
    }

    /// Stack `id` (which must exist), to change.
    pub fn stack_mut(&mut self, id: &str) -> &mut Value {
        self.stacks.iter_mut().find(|s| s["id"] == id).unwrap()
    }

    /// Deletes stack `id` from the cloud.
    pub fn remove_stack(&mut self, id: &str) {
        self.stacks.retain(|s| s["id"] != id);
    }
}

/// The running loopback Keystone + Heat; it stops when dropped.
pub type Heat = Replay<Cloud>;

impl Replay<Cloud> {
    /// Starts on a free loopback port, answering from `cloud`.
    pub async fn start(cloud: Cloud) -> Heat {
        Replay::serve(cloud, handle).await
    }

    /// The plugin configuration for this cloud (password auth through the loopback
    /// Keystone), with `extra` merged in at the top level.
    pub fn config(&self, extra: Value) -> Value {
        let config = json!({
            "cloud": {
                "auth": {
                    "auth_url": format!("{}/identity/v3", self.server.base()),
                    "username": "admin",
                    "password": "s3cret-password",
                    "project_name": "admin",
                    "user_domain_id": "default",
                    "project_domain_id": "default"
                },
                "timeout": "2s"
            },
            "page_size": 2
        });
        merged(config, extra)
    }

    /// `path?query` of every GET, in order.
    pub fn gets(&self) -> Vec<String> {
        self.server
            .requests()
            .iter()
            .filter(|r| r.method == "GET")
            .map(|r| r.line().trim_start_matches("GET ").to_owned())
            .collect()
    }
}

fn heat_error(status: u16, title: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"code": status, "title": title, "explanation": title, "error": {"type": title, "traceback": null, "message": message}})
            .to_string(),
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
            &[],
        );
    }
    let valid = req
        .header("x-auth-token")
        .and_then(|t| t.strip_prefix("tok-"))
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| n >= 1 && n <= cloud.issued);
    if !valid {
        return heat_error(
            401,
            "Unauthorized",
            "The request you have made requires authentication.",
        );
    }
    if req.path == "/identity/v3/projects" {
        // Keystone's answer shape (GET /v3/projects), with the projects of the capture.
        let project = |id: &str, name: &str| {
            json!({"id": id, "name": name, "domain_id": "default", "description": "", "enabled": true,
                   "parent_id": "default", "is_domain": false, "tags": [], "options": {},
                   "links": {"self": format!("{base}/identity/v3/projects/{id}")}})
        };
        return Reply::json(
            200,
            json!({"projects": [project(ADMIN, "admin"), project(DEMO_A, "demo-a"), project(DEMO_B, "demo-b")],
                   "links": {"next": null, "self": format!("{base}/identity/v3/projects"), "previous": null}})
            .to_string(),
        );
    }
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v1", project, "stacks"] => stacks_page(cloud, req, project),
        ["v1", project, "stacks", name, id, "resources"] => {
            let exists = cloud
                .stacks
                .iter()
                .any(|s| s["id"] == *id && s["stack_name"] == *name && s["project"] == *project);
            if !exists {
                return heat_error(
                    404,
                    "Not Found",
                    &format!("The Stack ({name}) could not be found."),
                );
            }
            if let Some(status) = cloud.resources_status.get(*id) {
                return heat_error(*status, "Internal Server Error", "Unexpected error.");
            }
            let body = cloud
                .resources
                .get(*id)
                .cloned()
                .unwrap_or_else(|| json!({"resources": []}));
            Reply::json(200, body.to_string())
        }
        _ => heat_error(404, "Not Found", "The resource could not be found."),
    }
}

/// A page as Heat 24 makes it: `limit` stacks after `marker`, and a `links` entry
/// rel=next only when the page is full.
fn stacks_page(cloud: &mut Cloud, req: &Request, project: &str) -> Reply {
    let global = req
        .param("global_tenant")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if global && !cloud.global_allowed {
        return Reply::json(403, DENIED.trim_end().to_owned());
    }
    let visible: Vec<&Value> = cloud
        .stacks
        .iter()
        .filter(|s| {
            global
                || (cloud.admin_sees_all && !cloud.filtered_projects.iter().any(|p| p == project))
                || s["project"] == project
        })
        .collect();
    let page = match marker_page(&visible, req, usize::MAX) {
        Ok(page) => page,
        Err(m) => {
            return heat_error(
                404,
                "Not Found",
                &format!("The Stack ({m}) could not be found."),
            );
        }
    };
    let page_index = page.index();
    let mut body = json!({ "stacks": page.items });
    if let Some(last) = page.next_marker() {
        let g = if global { "global_tenant=True&" } else { "" };
        body["links"] = json!([{
            "rel": "next",
            "href": format!("http://127.0.0.1:8004/v1/{project}/stacks?{g}limit={}&marker={last}", page.limit),
        }]);
    }
    let text = body.to_string();
    match &cloud.fault {
        Some((i, Fault::Status(status))) if *i == page_index => {
            heat_error(*status, "Internal Server Error", "Unexpected error.")
        }
        Some((i, Fault::Truncated)) if *i == page_index => {
            Reply::json(200, text[..text.len() / 2].to_owned())
        }
        _ => Reply::json(200, text),
    }
}
