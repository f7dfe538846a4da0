//! The plugin in the real host, beside the Nova collector (a loopback Nova serving the
//! captured answers of a real Nova), against Debian's real `prometheus-alertmanager` 0.25
//! on loopback (scripts/prometheus/ensure.sh installs it; this test starts its own, with
//! clustering off): alerts posted to its v2 API reach the plugin's listener as the
//! webhook bodies Alertmanager really sends (bearer token, grouping, a firing group with
//! a resolved alert inside), the relations by property resolve to the Nova instance's
//! key (now, and later when the instance appears), a poll after the webhooks emits
//! nothing, a silence shows as `suppressed`, a resolved alert the API no longer lists is
//! deleted, and a malformed body gets 400 and is counted. And with Vitrage's own
//! `prometheus_conf.yaml`, in the real binary: alerts name instances by their libvirt
//! domain and hosts by address, resolved in what the HTTP API's consumers get (the SSE
//! change stream and `GET /v1/entities`).

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use synchronizer::{Action, Event, SubscribeOptions, Synchronizer};
use synchronizer_plugin_api::time::format_rfc3339_millis;
use synchronizer_test_kit::binary::{Host, Setup};
use synchronizer_test_kit::nova;
use synchronizer_test_kit::paths::plugin_library;
use synchronizer_test_kit::sys::free_port;

const TOKEN: &str = "tok-webhook-123";

/// A server process on loopback (Alertmanager, Prometheus) with its directory; killed
/// and removed when dropped.
struct Daemon {
    child: tokio::process::Child,
    base: String,
    _dir: tempdir::Dir,
}

/// The Alertmanager process.
type Alertmanager = Daemon;

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Daemon {
    /// Starts `cmd`, listening on `port`, and waits until `/-/ready` answers 200 (polled,
    /// within 30 s).
    async fn start(
        mut cmd: tokio::process::Command,
        port: u16,
        dir: std::path::PathBuf,
        what: &str,
    ) -> Daemon {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {what} (scripts/prometheus/ensure.sh installs it): {e}")
            });
        let d = Daemon {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: tempdir::Dir(dir),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/-/ready", d.base)).send().await
                && r.status().is_success()
            {
                return d;
            }
            assert!(Instant::now() < deadline, "{what} not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn start_alertmanager(hook_port: u16) -> Alertmanager {
    let binary = "/usr/bin/prometheus-alertmanager";
    assert!(
        std::path::Path::new(binary).exists(),
        "{binary} is missing: run scripts/prometheus/ensure.sh as root (scripts/test.sh does)"
    );
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("am-test-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        r#"global:
  resolve_timeout: 5m
route:
  receiver: sync
  group_by: ['alertname']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: sync
    webhook_configs:
      - url: http://127.0.0.1:{hook_port}/alerts
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials: {TOKEN}
"#
    );
    let file = dir.join("alertmanager.yml");
    std::fs::write(&file, config).unwrap();
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg(format!("--config.file={}", file.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=");
    Daemon::start(cmd, port, dir, "prometheus-alertmanager").await
}

fn alert(domain: &str, ends: Option<i64>) -> serde_json::Value {
    let now = synchronizer_plugin_api::entity::system_time_to_micros(std::time::SystemTime::now());
    let mut a = json!({
        "labels": {"alertname": "HighCpuOnVmAlert", "severity": "critical", "job": "libvirt",
                   "instance": "10.0.0.5:9177", "domain": domain},
        "annotations": {"title": "High cpu usage on vm"},
        "generatorURL": "http://lab.invalid/graph?g0.expr=cpu&g0.tab=1",
        "startsAt": "2026-12-03T10:00:00.000Z",
    });
    if let Some(offset) = ends {
        a["endsAt"] = json!(format_rfc3339_millis(now + offset));
    }
    let _ = now;
    a
}

async fn post(am: &Alertmanager, path: &str, body: serde_json::Value) -> serde_json::Value {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", am.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "POST {path}: {}", r.status());
    let text = r.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// The rules of most tests: libvirt alerts name the instance by its `name` in `domain`.
const BY_NAME: &str = r#"
[[instances.config.rules]]
match = { job = "libvirt" }
type = "nova.instance"
property = "name"
label = "domain"
"#;

/// The Nova collector and the plugin (`rules`: TOML of the plugin's `[instances.config]`
/// that say how alerts name resources) in one host.
fn host_toml(cloud: &nova::Nova, am: &Alertmanager, hook_port: u16, rules: &str) -> String {
    format!(
        r#"
plugin_log_level = "warn"
{nova}
[[instances]]
name = "am"
library = "{prom_so}"
interval = "1h"
jitter = "0s"
[instances.config]
url = "{am_url}"
{rules}
[instances.config.webhook]
listen = "127.0.0.1:{hook_port}"
bearer_token = "{TOKEN}"
max_body_bytes = 65536
"#,
        nova = cloud.instance_toml("nova"),
        prom_so = plugin_library("synchronizer_prometheus").display(),
        am_url = am.base,
    )
}

/// The next change of a `prometheus` alarm within `within`.
async fn next_change(
    sub: &mut synchronizer::Subscription,
    what: &str,
) -> std::sync::Arc<synchronizer::Change> {
    loop {
        match synchronizer_test_kit::host::next_event(sub, Duration::from_secs(20), what).await {
            Event::Change(c) => return c,
            _ => continue,
        }
    }
}

fn relation(e: &synchronizer_plugin_api::Entity) -> String {
    e.relations()[0].other().to_owned()
}

fn nothing_queued(sub: &mut synchronizer::Subscription, what: &str) {
    let left = synchronizer_test_kit::host::queued_ids(sub);
    assert!(left.is_empty(), "{what}: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_webhooks_and_polls_agree_and_relations_resolve() {
    let hook_port = free_port();
    let am = start_alertmanager(hook_port).await;
    let cloud = nova::Nova::start(nova::Cloud::captured()).await;
    let config = synchronizer::Config::from_toml(&host_toml(&cloud, &am, hook_port, BY_NAME))
        .expect("host config");
    let sync = Synchronizer::start(config).await.expect("host starts");
    synchronizer_test_kit::host::ready(&sync).await;
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["prometheus"]));

    // Two alerts of one group: one body, both created, by the webhook (no poll is due).
    post(
        &am,
        "/api/v2/alerts",
        json!([alert("vm-a1", None), alert("vm-later", None)]),
    )
    .await;
    let mut created = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let c = next_change(&mut sub, "the webhook's alarms").await;
        assert_eq!(c.action, Action::Created);
        assert_eq!(&*c.instance, "am");
        created.insert(
            c.entity.properties()["labels"]["domain"]
                .as_str()
                .unwrap()
                .to_owned(),
            c.entity.clone(),
        );
    }
    let a1 = &created["vm-a1"];
    assert_eq!(a1.state(), Some("firing"));
    assert_eq!(a1.name(), "HighCpuOnVmAlert");
    // Resolved by the host's index of Nova's instances by name.
    assert_eq!(relation(a1), format!("nova.instance:{}", nova::VM_A1));
    assert_eq!(
        relation(&created["vm-later"]),
        "nova.instance[name=vm-later]"
    );
    assert_eq!(
        a1.properties()["generator_url"],
        "http://lab.invalid/graph?g0.expr=cpu&g0.tab=1"
    );

    // A poll after the webhook emits nothing; get-all carries the resolved key too.
    let polled = sync.get_all(&["prometheus"]).await.expect("poll");
    assert_eq!(polled.len(), 2);
    assert!(
        polled
            .iter()
            .any(|e| relation(e) == format!("nova.instance:{}", nova::VM_A1))
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    nothing_queued(&mut sub, "a poll after the webhook");

    // The instance appears in Nova: the alarm waiting for it is announced again, resolved.
    let new_id = "0d6a2b5e-0000-4000-8000-00000000beef";
    {
        let mut c = cloud.cloud();
        let mut s = c.server_mut(nova::VM_A2).clone();
        s["id"] = json!(new_id);
        s["name"] = json!("vm-later");
        c.servers.push(s);
    }
    sync.get_all(&["nova.instance"]).await.expect("nova poll");
    let c = next_change(&mut sub, "the alarm re-resolved").await;
    assert_eq!(c.action, Action::Updated);
    assert_eq!(relation(&c.entity), format!("nova.instance:{new_id}"));
    assert_eq!(&*c.instance, "am");

    // One alert resolved: the group's body is still `firing`, that alert is deleted.
    let a1_key = a1.key();
    post(&am, "/api/v2/alerts", json!([alert("vm-a1", Some(0))])).await;
    let c = next_change(&mut sub, "the resolved alert").await;
    assert_eq!(
        (c.action, c.entity.key()),
        (Action::Deleted, a1_key.clone())
    );

    // A silence: no webhook; the poll reports the alarm suppressed.
    let later_key = created["vm-later"].key();
    let now = synchronizer_plugin_api::entity::system_time_to_micros(std::time::SystemTime::now());
    let silence = post(&am, "/api/v2/silences", json!({
        "matchers": [{"name": "domain", "value": "vm-later", "isRegex": false, "isEqual": true}],
        "startsAt": format_rfc3339_millis(now), "endsAt": format_rfc3339_millis(now + 3_600_000_000),
        "createdBy": "test", "comment": "maintenance"
    })).await;
    let silence_id = silence["silenceID"]
        .as_str()
        .expect("silence id")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let c = loop {
        sync.get_all(&["prometheus"]).await.expect("poll");
        if let Some(Event::Change(c)) = sub.try_recv() {
            break c;
        }
        assert!(Instant::now() < deadline, "the silence never showed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (c.action, c.entity.key(), c.entity.state()),
        (Action::Updated, later_key.clone(), Some("suppressed"))
    );
    assert_eq!(c.entity.properties()["silenced_by"][0], silence_id.as_str());
    assert_eq!(
        relation(&c.entity),
        format!("nova.instance:{new_id}"),
        "still resolved"
    );

    // Malformed, unauthenticated and oversized bodies: refused and counted, nothing else.
    let client = reqwest::Client::new();
    let hook = format!("http://127.0.0.1:{hook_port}/alerts");
    let r = client
        .post(&hook)
        .bearer_auth(TOKEN)
        .body("{\"alerts\": [1]}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client.post(&hook).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(&hook)
        .bearer_auth(TOKEN)
        .body(vec![b' '; 70_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    synchronizer_test_kit::host::wait_status(
        &sync,
        "am",
        "counting the malformed body",
        Duration::from_secs(20),
        |s| {
            s.plugin_report
                .as_ref()
                .is_some_and(|r| r.health.message.contains("1 malformed webhook bodies"))
        },
    )
    .await;

    // Resolved while silenced: Alertmanager stops listing it; the poll deletes it.
    post(&am, "/api/v2/alerts", json!([alert("vm-later", Some(0))])).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        sync.get_all(&["prometheus"]).await.expect("poll");
        if sync.current(&["prometheus"]).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resolved alert was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = next_change(&mut sub, "the deletion").await;
    assert_eq!((c.action, c.entity.key()), (Action::Deleted, later_key));
    sync.shutdown().await;
}

/// A real Prometheus 2.42 (Debian's) on loopback, with a rule that always fires and an
/// alert rule on a target that is down, sending to the real Alertmanager.
type PrometheusServer = Daemon;

async fn start_prometheus(am: &Alertmanager) -> PrometheusServer {
    let port = free_port();
    let dead = free_port();
    let dir = std::env::temp_dir().join(format!("prom-test-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n  - name: test\n    rules:\n      - alert: TargetDown\n        expr: up{job=\"libvirt\"} == 0\n        labels: {severity: critical}\n        annotations: {summary: 'target {{ $labels.instance }} is down'}\n",
    )
    .unwrap();
    let am_target = am.base.trim_start_matches("http://");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  external_labels: {{monitor: lab}}\nalerting:\n  alertmanagers:\n    - static_configs: [{{targets: ['{am_target}']}}]\nrule_files: ['{}']\nscrape_configs:\n  - job_name: libvirt\n    static_configs: [{{targets: ['127.0.0.1:{dead}'], labels: {{domain: vm-a1}}}}]\n",
        rules.display()
    );
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).unwrap();
    let mut cmd = tokio::process::Command::new("/usr/bin/prometheus");
    cmd.arg(format!("--config.file={}", file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // The generator URLs' base (by default the machine's host name).
        .arg(format!("--web.external-url=http://127.0.0.1:{port}"));
    Daemon::start(cmd, port, dir, "prometheus").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_fired_by_a_prometheus_rule_arrives_by_webhook_and_poll_alike() {
    let hook_port = free_port();
    let am = start_alertmanager(hook_port).await;
    let cloud = nova::Nova::start(nova::Cloud::captured()).await;
    let config = synchronizer::Config::from_toml(&host_toml(&cloud, &am, hook_port, BY_NAME))
        .expect("host config");
    let sync = Synchronizer::start(config).await.expect("host starts");
    synchronizer_test_kit::host::ready(&sync).await;
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["prometheus"]));
    let prom = start_prometheus(&am).await;

    // Scrape fails → up == 0 → the rule fires → Alertmanager → the webhook.
    let c = loop {
        match synchronizer_test_kit::host::next_event(
            &mut sub,
            Duration::from_secs(40),
            "the rule-fired alert",
        )
        .await
        {
            Event::Change(c) => break c,
            _ => continue,
        }
    };
    assert_eq!(c.action, Action::Created);
    assert_eq!(c.entity.name(), "TargetDown");
    let p = c.entity.properties();
    assert_eq!(p["severity"], "critical");
    // The external label is added on the way to Alertmanager.
    assert_eq!(p["labels"]["monitor"], "lab");
    assert!(
        p["generator_url"].as_str().unwrap().starts_with(&prom.base),
        "{p}"
    );
    assert!(
        p["annotations"]["summary"]
            .as_str()
            .unwrap()
            .ends_with("is down"),
        "{p}"
    );
    // The scrape target's `domain` label names the Nova instance.
    assert_eq!(
        relation(&c.entity),
        format!("nova.instance:{}", nova::VM_A1)
    );
    // The poll agrees with the webhook: nothing new.
    let polled = sync.get_all(&["prometheus"]).await.expect("poll");
    assert!(polled.iter().any(|e| e.key() == c.entity.key()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    nothing_queued(&mut sub, "a poll after the rule's webhook");
    drop(prom);
    sync.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_lost_while_the_host_was_down_is_repaired_by_the_poll() {
    // Nothing listens on the webhook's port yet: Alertmanager's notification is lost.
    let hook_port = free_port();
    let am = start_alertmanager(hook_port).await;
    post(&am, "/api/v2/alerts", json!([alert("vm-a1", None)])).await;
    let cloud = nova::Nova::start(nova::Cloud::captured()).await;
    let config = synchronizer::Config::from_toml(&host_toml(&cloud, &am, hook_port, BY_NAME))
        .expect("host config");
    let sync = Synchronizer::start(config).await.expect("host starts");
    synchronizer_test_kit::host::ready(&sync).await;
    // The first poll found it, resolved to the instance the Nova collector reported.
    let alarms = sync.current(&["prometheus"]);
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(alarms[0].state(), Some("firing"));
    assert_eq!(
        relation(&alarms[0]),
        format!("nova.instance:{}", nova::VM_A1)
    );
    sync.shutdown().await;
}

/// A change stream of the binary's HTTP API, read as SSE text.
struct Changes {
    response: reqwest::Response,
    buf: String,
}

impl Changes {
    async fn open(host: &Host, types: &str) -> Changes {
        let response = host
            .http()
            .get(host.url(&format!("/v1/changes?types={types}")))
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("connects");
        assert_eq!(response.status(), 200, "the change stream");
        Changes {
            response,
            buf: String::new(),
        }
    }

    /// The next event's `data` (a change), within 20 s.
    async fn next(&mut self, what: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return serde_json::from_str(data).expect("an event's data is JSON");
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(other) => panic!("{what}: the stream ended: {other:?}"),
                Err(_) => panic!("{what}: nothing within 20 s"),
            }
        }
    }
}

/// What an alarm of the HTTP API points at: its `domain` or `instance` label → the
/// relation's key.
fn targets(alarms: &[serde_json::Value]) -> std::collections::BTreeMap<String, String> {
    alarms
        .iter()
        .map(|a| {
            let labels = &a["properties"]["labels"];
            let label = labels["domain"]
                .as_str()
                .or(labels["instance"].as_str())
                .unwrap_or_default();
            (
                label.to_owned(),
                a["relations"][0]["key"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vitrage_conf_names_instances_by_domain_and_hosts_by_address_through_the_http_api() {
    let hook_port = free_port();
    let am = start_alertmanager(hook_port).await;
    // The captured cloud: vm-a1 is instance-00000001 on compute1 (host_ip 127.0.0.1);
    // vm-b3-err, never scheduled, is listed as instance-00000001 too (cell0's numbering)
    // and must not be the match.
    let cloud = nova::Nova::start(nova::Cloud::captured()).await;
    let conf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vitrage/prometheus_conf.vitrage-tests.yaml"
    );
    // Vitrage's `id: instance` (node alerts) is a host by address too.
    let rules = format!(
        "vitrage_conf = {conf:?}\nvitrage_types = {{ instance_name = \"nova.instance\", host_id = \"nova.host[host_ip]\", id = \"nova.host[host_ip]\" }}\n"
    );
    let instances = host_toml(&cloud, &am, hook_port, &rules);
    let host = Host::start(Setup {
        instances: &instances,
        ..Setup::default()
    });
    host.ready().await;
    let mut changes = Changes::open(&host, "prometheus").await;

    let now = synchronizer_plugin_api::entity::system_time_to_micros(std::time::SystemTime::now());
    let starts = format_rfc3339_millis(now);
    let vm = |domain: &str| {
        json!({"labels": {"alertname": "HighCpuOnVmAlert", "job": "libvirt", "severity": "critical",
                          "domain": domain, "instance": "127.0.0.1:9177"},
               "startsAt": starts})
    };
    let node = json!({"labels": {"alertname": "HighInodeUsage", "job": "node", "severity": "warning",
                                 "instance": "127.0.0.2:9100"},
                      "startsAt": starts});
    post(
        &am,
        "/api/v2/alerts",
        json!([vm("instance-00000001"), vm("instance-000000aa"), node]),
    )
    .await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let c = changes.next("the three alarms").await;
        assert_eq!(c["action"], "created", "{c}");
        seen.push(c);
    }
    let want = |later: &str| {
        [
            (
                "instance-00000001",
                format!("nova.instance:{}", nova::VM_A1),
            ),
            ("instance-000000aa", later.to_owned()),
            ("127.0.0.2:9100", "nova.host:compute2".to_owned()),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b))
        .collect::<std::collections::BTreeMap<_, _>>()
    };
    // The domain no server has yet stays a selector; the others are keys.
    let waiting = want("nova.instance[instance_name=instance-000000aa]");
    assert_eq!(targets(&seen), waiting);
    let (status, view) = host.get_json("/v1/entities?types=prometheus").await;
    assert_eq!(status, 200);
    assert_eq!(targets(view.as_array().expect("an array")), waiting);

    // A server with that domain appears on compute2; the next Nova poll (asked through
    // the API) re-resolves the alarm, announced as updated on the stream.
    let new_id = "0d6a2b5e-0000-4000-8000-0000000000aa";
    {
        let mut c = cloud.cloud();
        let mut s = c.server_mut(nova::VM_B1).clone();
        s["id"] = json!(new_id);
        s["name"] = json!("vm-aa");
        s["OS-EXT-SRV-ATTR:instance_name"] = json!("instance-000000aa");
        c.servers.push(s);
    }
    let r = host
        .http()
        .post(host.url("/v1/snapshot?types=nova.instance"))
        .send()
        .await
        .expect("snapshot");
    assert_eq!(r.status(), 200);
    let c = changes.next("the re-resolved alarm").await;
    assert_eq!(c["action"], "updated", "{c}");
    assert_eq!(c["instance"], "am");
    assert_eq!(
        c["relations"][0]["key"],
        format!("nova.instance:{new_id}").as_str()
    );
    let (_, view) = host.get_json("/v1/entities?types=prometheus").await;
    assert_eq!(
        targets(view.as_array().expect("an array")),
        want(&format!("nova.instance:{new_id}"))
    );
    let log = host.stop();
    assert!(!log.contains("panicked"), "{log}");
}
