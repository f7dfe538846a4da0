//! The lab's Keystone (`scripts/openstack/keystone-heat.sh`), which the lab Cinder and
//! Neutron (`cinder.sh`, `neutron.sh`) sit behind, and what the tests against them share:
//! tokens, the plugins' `cloud` table, the lab broker's queues, and the changes of a
//! subscription over a window of time.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use synchronizer::{Action, Event, Subscription};

/// A change as these tests compare it: action, key, state and the instance it came from.
pub type Seen = (Action, String, Option<String>, String);

/// The value of the environment variable `name`; fails the test, saying which script
/// prints it, when it is not set.
pub fn env(name: &str, script: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: scripts/openstack/{script} prints it (scripts/openstack/test-real.sh and scripts/test.sh set it)"
        ),
    }
}

/// A token scoped to a project.
#[derive(Clone, Debug)]
pub struct Scoped {
    /// `X-Subject-Token`.
    pub token: String,
    /// The project's id.
    pub project_id: String,
}

/// The lab's Keystone.
pub struct Keystone {
    /// The client every call goes through.
    pub http: reqwest::Client,
    /// `SYNCHRONIZER_REAL_KEYSTONE`: `http://127.0.0.1:5000/v3`.
    pub auth_url: String,
    /// The admin's password (`SYNCHRONIZER_REAL_ADMIN_PASSWORD`).
    pub admin_password: String,
    /// The password of user demo, member of demo-a and demo-b.
    pub demo_password: String,
}

impl Keystone {
    /// The Keystone of `SYNCHRONIZER_REAL_KEYSTONE`; fails the test when it is not set.
    pub fn from_env() -> Keystone {
        Keystone {
            http: reqwest::Client::new(),
            auth_url: env("SYNCHRONIZER_REAL_KEYSTONE", "keystone-heat.sh"),
            admin_password: std::env::var("SYNCHRONIZER_REAL_ADMIN_PASSWORD")
                .unwrap_or_else(|_| "synchronizer-admin".into()),
            demo_password: std::env::var("SYNCHRONIZER_REAL_DEMO_PASSWORD")
                .unwrap_or_else(|_| "synchronizer-demo".into()),
        }
    }

    /// A token of `user` scoped to `project` (both in domain `default`).
    pub async fn token(&self, user: &str, password: &str, project: &str) -> Scoped {
        let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}});
        let r = self
            .http
            .post(format!("{}/auth/tokens", self.auth_url))
            .json(&body)
            .send()
            .await
            .expect("Keystone answers");
        assert_eq!(r.status(), 201, "a token of {user} in {project}");
        let token = r.headers()["x-subject-token"]
            .to_str()
            .expect("a token")
            .to_owned();
        let doc: Value = r.json().await.expect("the token's JSON");
        Scoped {
            token,
            project_id: doc["token"]["project"]["id"]
                .as_str()
                .expect("a project id")
                .to_owned(),
        }
    }

    /// The admin's token, in project admin.
    pub async fn admin(&self) -> Scoped {
        self.token("admin", &self.admin_password, "admin").await
    }

    /// User demo's token in `project` (demo-a or demo-b).
    pub async fn demo(&self, project: &str) -> Scoped {
        self.token("demo", &self.demo_password, project).await
    }

    /// A token of a service (user cinder, role `service` in project service: cinder.sh),
    /// for `X-Service-Token`.
    pub async fn service(&self) -> Scoped {
        let password = std::env::var("SYNCHRONIZER_REAL_SERVICE_PASSWORD")
            .unwrap_or_else(|_| "synchronizer-service".into());
        self.token("cinder", &password, "service").await
    }

    /// The plugins' `cloud` table for `user` in `project`: password auth through this
    /// Keystone, endpoints from its catalog (RegionOne).
    pub fn cloud(&self, user: &str, password: &str, project: &str) -> Value {
        json!({"auth": {"auth_url": self.auth_url, "username": user, "password": password,
                        "project_name": project, "user_domain_id": "default", "project_domain_id": "default"},
               "region": "RegionOne", "timeout": "30s"})
    }

    /// A host running the collector `library` (`synchronizer_cinder`) as instance `name`
    /// for `types`, polling every 2 s in pages of two as the admin, after its first poll
    /// (within 60 s: the lab answers slowly while it starts).
    pub async fn polling_host(
        &self,
        library: &str,
        name: &str,
        types: &[&str],
    ) -> synchronizer::Synchronizer {
        let toml = format!(
            r#"
types = {types:?}
[[instances]]
name = "{name}"
library = "{}"
interval = "2s"
jitter = "0s"
timeout = "30s"
[instances.config]
page_size = 2
{}"#,
            crate::paths::plugin_library(library).display(),
            self.admin_cloud_toml()
        );
        let sync = synchronizer::Synchronizer::start(
            synchronizer::Config::from_toml(&toml).expect("config"),
        )
        .await
        .expect("the host starts");
        crate::host::ready_within(&sync, Duration::from_secs(60)).await;
        sync
    }

    /// The admin's `cloud` table as TOML lines of an instance's `[instances.config.cloud]`.
    pub fn admin_cloud_toml(&self) -> String {
        format!(
            r#"[instances.config.cloud]
region = "RegionOne"
timeout = "30s"
[instances.config.cloud.auth]
auth_url = "{}"
username = "admin"
password = "{}"
project_name = "admin"
user_domain_id = "default"
project_domain_id = "default"
"#,
            self.auth_url, self.admin_password
        )
    }
}

/// `rabbitmqctl ARGS...`'s standard output; fails the test when it does not run.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl {args:?}: {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The vhost of an AMQP URL (`amqp://cinder:cinder@127.0.0.1:5672/cinder`: `cinder`).
pub fn vhost(url: &str) -> String {
    match url.rsplit_once('/') {
        Some((_, v)) if !v.is_empty() && !v.contains('@') => v.replace("%2f", "/"),
        _ => "/".to_owned(),
    }
}

/// A host started from `toml` (a collector and a bus instance consuming from `vhost`
/// with queues named after `tag`), once its first polls are done (within 60 s) and the
/// bus's queue `<tag>.vitrage_notifications.info` exists (within 30 s).
pub async fn bus_host(toml: &str, vhost: &str, tag: &str) -> synchronizer::Synchronizer {
    let config = synchronizer::Config::from_toml(toml).expect("host config");
    let sync = synchronizer::Synchronizer::start(config)
        .await
        .expect("the host starts with both plugins");
    crate::host::ready_within(&sync, Duration::from_secs(60)).await;
    let info = format!("{tag}.vitrage_notifications.info");
    crate::wait::wait_for_every(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the bus's queue",
        async || queues(vhost, tag).contains(&info),
    )
    .await;
    sync
}

/// The queues of `vhost` whose names start with `prefix`.
pub fn queues(vhost: &str, prefix: &str) -> Vec<String> {
    rabbitmqctl(&[
        "-q",
        "list_queues",
        "--no-table-headers",
        "-p",
        vhost,
        "name",
    ])
    .lines()
    .map(str::trim)
    .filter(|n| n.starts_with(prefix))
    .map(str::to_owned)
    .collect()
}

/// Deletes the queues of `vhost` whose names start with `prefix` (a run that failed
/// leaves its queues bound to the service's exchange, filling up).
pub fn delete_queues(vhost: &str, prefix: &str) {
    for q in queues(vhost, prefix) {
        rabbitmqctl(&["-q", "delete_queue", "-p", vhost, &q]);
    }
}

/// The bus plugin's instance `bus` for a lab service: consuming `topic.info` (and
/// `.error`) of `exchange` on the vhost of `amqp` into the queues `<tag>.<topic>.<priority>`
/// (TOML, after a `[[instances]]` header).
pub fn bus_instance(
    bus_so: &str,
    amqp: &str,
    tag: &str,
    family: &str,
    exchange: &str,
    topic: &str,
) -> String {
    format!(
        r#"
[[instances]]
name = "bus"
library = "{bus_so}"
[instances.config]
urls = ["{amqp}"]
families = ["{family}"]
priorities = ["info", "error"]
connection_name = "{tag}"
[instances.config.dead_letter]
exchange = "{tag}.dlx"
queue = "{tag}.dlq"
durable = false
[[instances.config.subscriptions]]
exchange = "{exchange}"
topics = ["{topic}"]
queue = "{tag}.{{topic}}.{{priority}}"
"#
    )
}

/// The changes queued on `sub` now, added to `into`; any other event fails the test.
pub fn record(sub: &mut Subscription, into: &mut Vec<Seen>) {
    while let Some(event) = sub.try_recv() {
        match event {
            Event::Change(c) => into.push((
                c.action,
                c.entity.key(),
                c.entity.state().map(str::to_owned),
                c.instance.to_string(),
            )),
            other => panic!("unexpected event {other:?}"),
        }
    }
}

/// The changes `sub` is sent until one satisfies `done` (failing the test after `within`),
/// and then for `quiet` more (what would follow it: nothing, for a change that is one).
pub async fn changes_until(
    sub: &mut Subscription,
    within: Duration,
    quiet: Duration,
    what: &str,
    done: impl Fn(&Seen) -> bool,
) -> Vec<Seen> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        record(sub, &mut seen);
        if seen.iter().any(&done) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no change {what} within {within:?}; changes so far: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(quiet).await;
    record(sub, &mut seen);
    eprintln!("{what}: {seen:?}");
    seen
}
