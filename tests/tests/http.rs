//! The HTTP API end to end: the real `synchronizer` binary, run with the real static
//! plugin .so (or the faulty test plugin) and an `[http]` section on a free loopback
//! port, asked with a real HTTP client (reqwest). The change stream is read as SSE text
//! and parsed here; `/metrics` is parsed by a Prometheus text-format parser.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use synchronizer_test_kit::binary::{Host, Setup};
use synchronizer_test_kit::paths::binary;
use synchronizer_test_kit::sys::free_port;

const RACK: &str = "entities:\n  - type: rack\n    id: r1\n    name: rack one\n    state: available\n  - type: switch\n    id: s1\n    state: available\nrelationships:\n  - source: rack:r1\n    target: switch:s1\n    type: contains\n";

/// YAML for the rack in `rack_state` and the switch in `switch_state` (none: absent).
fn yaml(rack_state: &str, switch_state: Option<&str>) -> String {
    match switch_state {
        Some(s) => RACK
            .replacen("state: available", &format!("state: {rack_state}"), 1)
            .replace(
                "    id: s1\n    state: available",
                &format!("    id: s1\n    state: {s}"),
            ),
        None => format!(
            "entities:\n  - type: rack\n    id: r1\n    name: rack one\n    state: {rack_state}\n"
        ),
    }
}

const STATIC: &str = "[[instances]]\nname = \"static-test\"\nlibrary = \"libsynchronizer_static.so\"\ninterval = \"200ms\"\njitter = \"0s\"\n[instances.config]\ndirectory = {data}\n";

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<String>,
    data: Value,
}

/// A change stream, parsed by hand from the response's bytes.
struct SseClient {
    response: reqwest::Response,
    buf: String,
}

impl SseClient {
    async fn open(host: &Host, query: &str, last_id: Option<&str>, token: Option<&str>) -> Self {
        let mut req = host
            .http()
            .get(host.url(&format!("/v1/changes{query}")))
            .header("accept", "text/event-stream");
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let response = req.send().await.expect("connects");
        assert_eq!(response.status(), 200, "opening the change stream");
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseClient {
            response,
            buf: String::new(),
        }
    }

    /// The next event with data, within `within`.
    async fn next(&mut self, within: Duration) -> Option<Sse> {
        let end = Instant::now() + within;
        loop {
            while let Some(at) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..at + 2).collect();
                let mut id = None;
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                    // `retry:` and `:` comments carry no event.
                }
                if !data.is_empty() {
                    let data = serde_json::from_str(&data.join("\n")).expect("data is JSON");
                    return Some(Sse { id, data });
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                Ok(Ok(None)) => panic!("the stream ended"),
                Ok(Err(e)) => panic!("the stream failed: {e}"),
                Err(_) => return None,
            }
        }
    }

    async fn expect(&mut self, what: &str) -> Sse {
        match self.next(Duration::from_secs(10)).await {
            Some(e) => e,
            None => panic!("no event within 10 s while waiting for {what}"),
        }
    }

    /// No event within `within`.
    async fn quiet(&mut self, within: Duration) {
        if let Some(e) = self.next(within).await {
            panic!("unexpected event: {e:?}");
        }
    }
}

/// The id of change `seq` in the stream whose ids look like `e`'s.
fn id_of(e: &Sse, seq: u64) -> String {
    let epoch =
        e.id.as_deref()
            .and_then(|i| i.split_once('@'))
            .map(|(_, ep)| ep)
            .unwrap();
    format!("{seq}@{epoch}")
}

/// A change event: its id must be `<seq>@<epoch>`.
fn change(e: &Sse) -> (u64, String, String) {
    let seq = e.data["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("not a change: {e:?}"));
    let id =
        e.id.as_deref()
            .unwrap_or_else(|| panic!("a change without id: {e:?}"));
    let (id_seq, epoch) = id.split_once('@').unwrap_or_else(|| panic!("id {id:?}"));
    assert_eq!(
        id_seq,
        seq.to_string(),
        "the id's seq is the change's: {e:?}"
    );
    assert!(!epoch.is_empty(), "{e:?}");
    (
        seq,
        e.data["action"].as_str().unwrap().to_owned(),
        e.data["key"].as_str().unwrap().to_owned(),
    )
}

fn static_host(http: &str) -> Host {
    Host::start(Setup {
        data: RACK,
        instances: STATIC,
        http,
        env: &[],
        args: &[],
    })
}

const ENTITY_FIELDS: [&str; 10] = [
    "type",
    "key",
    "id",
    "category",
    "name",
    "state",
    "project",
    "relations",
    "source_updated",
    "properties",
];

#[tokio::test]
async fn every_endpoint_answers() {
    let host = static_host("");
    host.ready().await;
    let c = host.http();

    let (status, v) = host.get_json("/healthz").await;
    assert_eq!((status, v), (200, serde_json::json!({"status": "ok"})));
    let (status, v) = host.get_json("/readyz").await;
    assert_eq!((status, v), (200, serde_json::json!({"ready": true})));

    // The current view: output.rs's entity objects.
    let r = c.get(host.url("/v1/entities")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    let all: Value = r.json().await.unwrap();
    let all = all.as_array().unwrap();
    let mut keys: Vec<&str> = all.iter().map(|e| e["key"].as_str().unwrap()).collect();
    keys.sort();
    assert_eq!(keys, ["rack:r1", "switch:s1"]);
    let rack = all.iter().find(|e| e["key"] == "rack:r1").unwrap();
    let mut fields: Vec<&str> = rack
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    fields.sort();
    let mut expected = ENTITY_FIELDS.to_vec();
    expected.sort();
    assert_eq!(fields, expected, "{rack}");
    assert_eq!(rack["relations"][0]["key"], "switch:s1");
    assert_eq!(rack["relations"][0]["direction"], "out");
    assert_eq!(rack["state"], "available");

    let (status, v) = host.get_json("/v1/entities?types=rack").await;
    assert_eq!(status, 200);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (_, v) = host.get_json("/v1/entities?types=nothing").await;
    assert_eq!(v, serde_json::json!([]));
    let (status, v) = host.get_json("/v1/entities?type=rack").await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"], "bad_request");

    // A fresh snapshot.
    let r = c
        .post(host.url("/v1/snapshot?types=switch"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["key"], "switch:s1");
    let r = c.post(host.url("/v1/snapshot")).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    // The static plugin's types are open-ended: it is asked, and has none.
    let r = c
        .post(host.url("/v1/snapshot?types=nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), serde_json::json!([]));
    let r = c.get(host.url("/v1/snapshot")).send().await.unwrap();
    assert_eq!(r.status(), 405);

    // Plugins.
    let (status, v) = host.get_json("/v1/plugins").await;
    assert_eq!(status, 200);
    let inst = &v["instances"][0];
    assert_eq!(inst["name"], "static-test", "{v}");
    assert_eq!(inst["plugin"], "static");
    assert_eq!(inst["kind"], "collector");
    assert_eq!(inst["status"]["health"], "healthy", "{v}");
    assert!(inst["status"]["collections"].as_u64().unwrap() >= 1, "{v}");
    assert!(inst["status"]["last_success"].is_string(), "{v}");
    assert!(inst["status"]["last_duration"].is_f64(), "{v}");
    assert_eq!(inst["status"]["last_error"], Value::Null);
    assert_eq!(inst["status"]["entities"], 2);
    assert!(inst.get("plugin_health").is_none());
    assert_eq!(v["entities"], serde_json::json!({"rack": 1, "switch": 1}));
    assert_eq!(v["failed"], serde_json::json!([]));
    let (_, v) = host.get_json("/v1/plugins?health=true").await;
    assert_eq!(v["instances"][0]["plugin_health"]["healthy"], true, "{v}");

    // Metrics.
    // The classic text format unless OpenMetrics is asked for (as Prometheus does).
    let r = c.get(host.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains("# TYPE synchronizer_changes_total counter"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "{text}");
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let r = c
        .get(host.url("/metrics"))
        .header("accept", prometheus)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains("# TYPE synchronizer_changes counter"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    // Anything else.
    let (status, v) = host.get_json("/v2/nothing").await;
    assert_eq!(status, 404);
    assert_eq!(v["error"], "not_found");
    host.stop();
}

#[tokio::test]
async fn snapshot_errors_name_the_instance() {
    let host = Host::start(Setup {
        data: RACK,
        instances: "[[instances]]\nname = \"broken\"\nlibrary = \"libsynchronizer_test_faulty.so\"\ninterval = \"1h\"\njitter = \"0s\"\n[instances.config]\nmode = \"fail\"\n",
        http: "",
        env: &[],
        args: &[],
    });
    host.alive().await;
    let r = host
        .http()
        .post(host.url("/v1/snapshot?types=faulty.item"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "snapshot_failed", "{v}");
    assert_eq!(v["instance"], "broken", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("asked to fail"),
        "{v}"
    );
    // No collector provides the type.
    let r = host
        .http()
        .post(host.url("/v1/snapshot?types=nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "no_collector", "{v}");
    assert_eq!(v["types"], serde_json::json!(["nothing"]));
    let (_, v) = host.get_json("/v1/plugins").await;
    assert_eq!(v["instances"][0]["status"]["health"], "failing", "{v}");
    assert!(
        v["instances"][0]["status"]["last_error"]
            .as_str()
            .unwrap()
            .contains("asked to fail"),
        "{v}"
    );
    host.stop();

    let host = Host::start(Setup {
        data: RACK,
        instances: "[[instances]]\nname = \"hung\"\nlibrary = \"libsynchronizer_test_faulty.so\"\ninterval = \"1h\"\njitter = \"0s\"\ntimeout = \"300ms\"\n[instances.config]\nmode = \"hang\"\n",
        http: "",
        env: &[],
        args: &[],
    });
    host.alive().await;
    let r = host
        .http()
        .post(host.url("/v1/snapshot"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "snapshot_timeout", "{v}");
    assert_eq!(v["instance"], "hung", "{v}");
    host.stop();
}

#[tokio::test]
async fn readyz_is_503_until_the_first_snapshot() {
    let started = Instant::now();
    let host = Host::start(Setup {
        data: RACK,
        instances: "[[instances]]\nname = \"slow\"\nlibrary = \"libsynchronizer_test_faulty.so\"\ninterval = \"1h\"\njitter = \"0s\"\n[instances.config]\nmode = \"slow\"\nblock_ms = 2500\n",
        http: "",
        env: &[],
        args: &[],
    });
    host.alive().await;
    let (status, v) = host.get_json("/readyz").await;
    assert_eq!(
        (status, &v),
        (
            503,
            &serde_json::json!({"ready": false, "waiting_for": ["slow"]})
        )
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the check came too late to mean anything: {:?}",
        started.elapsed()
    );
    let (status, _) = host.get_json("/healthz").await;
    assert_eq!(status, 200, "alive while not ready");
    host.ready().await;
    assert!(
        started.elapsed() >= Duration::from_millis(2400),
        "ready before the first snapshot could finish: {:?}",
        started.elapsed()
    );
    let (_, v) = host.get_json("/v1/entities?types=faulty.tick").await;
    assert_eq!(v[0]["key"], "faulty.tick:slow", "{v}");
    host.stop();
}

#[tokio::test]
async fn the_change_stream_sees_yaml_edits() {
    let host = static_host("");
    host.ready().await;
    let mut all = SseClient::open(&host, "", None, None).await;
    let mut switches = SseClient::open(&host, "?types=switch", None, None).await;
    let mut initial = SseClient::open(&host, "?snapshot=true", None, None).await;

    // snapshot=true: a resync marker, the current view, its end; no ids.
    let e = initial.expect("resync").await;
    assert_eq!(
        e.data,
        serde_json::json!({"action": "resync", "reason": "initial"})
    );
    assert_eq!(e.id, None);
    let mut keys = Vec::new();
    for _ in 0..2 {
        let e = initial.expect("snapshot").await;
        assert_eq!(e.data["action"], "snapshot", "{e:?}");
        assert_eq!(e.id, None);
        keys.push(e.data["key"].as_str().unwrap().to_owned());
    }
    keys.sort();
    assert_eq!(keys, ["rack:r1", "switch:s1"]);
    let e = initial.expect("snapshot_end").await;
    assert_eq!(
        e.data,
        serde_json::json!({"action": "snapshot_end", "count": 2})
    );

    host.write_yaml(&yaml("maintenance", Some("available")));
    let e = all.expect("updated").await;
    let (seq, action, key) = change(&e);
    assert_eq!((action.as_str(), key.as_str()), ("updated", "rack:r1"));
    assert_eq!(e.data["state"], "maintenance");
    assert_eq!(e.data["instance"], "static-test");
    assert_eq!(e.data["initial"], false);
    assert_eq!(e.data["type"], "rack");
    assert!(e.data["sampled_at"].is_string());
    let e = initial.expect("updated").await;
    assert_eq!(change(&e).0, seq);

    // Remove the switch: deleted, and the rack loses its relation.
    host.write_yaml(&yaml("maintenance", None));
    let mut got = vec![
        change(&all.expect("change").await),
        change(&all.expect("change").await),
    ];
    got.sort();
    assert_eq!(got[0].0 + 1, got[1].0, "consecutive seqs: {got:?}");
    assert!(got[0].0 > seq);
    let mut what: Vec<(String, String)> = got.into_iter().map(|(_, a, k)| (a, k)).collect();
    what.sort();
    assert_eq!(
        what,
        [
            ("deleted".to_owned(), "switch:s1".to_owned()),
            ("updated".to_owned(), "rack:r1".to_owned())
        ]
    );
    // The switch-only stream saw the deletion only.
    let e = switches.expect("deleted").await;
    assert_eq!(change(&e).1, "deleted");
    assert_eq!(change(&e).2, "switch:s1");
    switches.quiet(Duration::from_millis(500)).await;
    host.stop();
}

#[tokio::test]
async fn a_reconnecting_client_gets_exactly_what_it_missed() {
    let host = static_host("replay = 6");
    host.ready().await;
    let mut client = SseClient::open(&host, "", None, None).await;
    host.write_yaml(&yaml("maintenance", Some("available")));
    let first = client.expect("updated").await;
    let (last, action, key) = change(&first);
    assert_eq!((action.as_str(), key.as_str()), ("updated", "rack:r1"));
    let id = |seq: u64| id_of(&first, seq);
    assert_eq!(first.id.as_deref(), Some(id(last).as_str()));
    drop(client); // the connection is gone

    // Two changes while away.
    host.write_yaml(&yaml("available", Some("available")));
    host.view_shows("rack:r1", Some("available")).await;
    host.write_yaml(&yaml("available", Some("degraded")));
    host.view_shows("switch:s1", Some("degraded")).await;

    let mut client = SseClient::open(&host, "", Some(&id(last)), None).await;
    let a = client.expect("replayed").await;
    let b = client.expect("replayed").await;
    assert_eq!(change(&a), (last + 1, "updated".into(), "rack:r1".into()));
    assert_eq!(a.data["state"], "available");
    assert_eq!(change(&b), (last + 2, "updated".into(), "switch:s1".into()));
    assert_eq!(b.data["state"], "degraded");
    // Then live, with no repeat and no gap.
    host.write_yaml(&yaml("maintenance", Some("degraded")));
    let c = client.expect("live").await;
    assert_eq!(change(&c), (last + 3, "updated".into(), "rack:r1".into()));
    client.quiet(Duration::from_millis(700)).await;
    drop(client);

    // A bare seq (from the JSON) resumes too; a filtered client gets only its types.
    let mut switches = SseClient::open(&host, "?types=switch", Some(&last.to_string()), None).await;
    assert_eq!(change(&switches.expect("replayed").await).0, last + 2);
    switches.quiet(Duration::from_millis(300)).await;
    drop(switches);

    // A client that is up to date gets nothing but live changes.
    let mut current = SseClient::open(&host, "", Some(&id(last + 3)), None).await;
    current.quiet(Duration::from_millis(300)).await;

    // Push `last + 1` out of the 6-change window: seven more changes.
    for i in 0..7 {
        let state = if i % 2 == 0 {
            "available"
        } else {
            "maintenance"
        };
        host.write_yaml(&yaml(state, Some("degraded")));
        host.view_shows("rack:r1", Some(state)).await;
    }
    let newest = last + 10;
    for seq in last + 4..=newest {
        assert_eq!(change(&current.expect("live").await).0, seq);
    }
    drop(current);

    // Too old: a resync marker and a snapshot, then live changes.
    let mut client = SseClient::open(&host, "", Some(&id(last)), None).await;
    let e = client.expect("resync").await;
    assert_eq!(
        e.data,
        serde_json::json!({"action": "resync", "reason": "lagged"})
    );
    assert_eq!(e.id, None);
    let mut snap = Vec::new();
    for _ in 0..2 {
        let e = client.expect("snapshot").await;
        assert_eq!(e.data["action"], "snapshot");
        assert_eq!(e.id, None);
        snap.push(format!(
            "{} {}",
            e.data["key"].as_str().unwrap(),
            e.data["state"].as_str().unwrap()
        ));
    }
    snap.sort();
    assert_eq!(snap, ["rack:r1 available", "switch:s1 degraded"]);
    let e = client.expect("snapshot_end").await;
    assert_eq!(
        e.data,
        serde_json::json!({"action": "snapshot_end", "count": 2})
    );
    host.write_yaml(&yaml("maintenance", Some("degraded")));
    assert_eq!(
        change(&client.expect("live after resync").await).0,
        newest + 1
    );
    client.quiet(Duration::from_millis(300)).await;
    drop(client);

    // The oldest id still in the window replays the whole window.
    let mut client = SseClient::open(&host, "", Some(&id(newest + 1 - 6)), None).await;
    for seq in newest + 2 - 6..=newest + 1 {
        assert_eq!(change(&client.expect("replayed").await).0, seq);
    }
    client.quiet(Duration::from_millis(300)).await;
    drop(client);

    // An id of another run (the host restarted since), even a recent seq: a resync.
    let other_run = format!("{}@0other", newest);
    let mut client = SseClient::open(&host, "", Some(&other_run), None).await;
    assert_eq!(
        client.expect("resync").await.data,
        serde_json::json!({"action": "resync", "reason": "lagged"})
    );
    drop(client);
    // So does a seq this run never reached.
    let mut client = SseClient::open(&host, "", Some(&id(1_000_000)), None).await;
    assert_eq!(client.expect("resync").await.data["action"], "resync");
    drop(client);

    // A malformed id is refused.
    let r = host
        .http()
        .get(host.url("/v1/changes"))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "bad_request", "{v}");
    host.stop();
}

fn write_token(dir: &Path, token: &str) -> PathBuf {
    let file = dir.join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    file
}

async fn check_token_required(host: &Host, token: &str) {
    let c = host.http();
    for path in ["/v1/entities", "/v1/plugins", "/metrics", "/v1/changes"] {
        let r = c.get(host.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without a token");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"synchronizer\""
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "unauthorized");
        let r = c
            .get(host.url(path))
            .bearer_auth(format!("{token}x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
        let r = c
            .get(host.url(path))
            .header("authorization", format!("Basic {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with another scheme");
    }
    let r = c.post(host.url("/v1/snapshot")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    for path in ["/v1/entities", "/v1/plugins", "/metrics"] {
        let r = c
            .get(host.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the token");
    }
    let r = c
        .post(host.url("/v1/snapshot"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = SseClient::open(host, "", None, Some(token)).await;
    host.write_yaml(&yaml("maintenance", Some("available")));
    assert_eq!(change(&stream.expect("updated").await).1, "updated");
    // Probes need no token.
    for path in ["/healthz", "/readyz"] {
        let r = c.get(host.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn the_token_is_required_and_never_logged() {
    // From a file, with debug logs.
    let token = format!("tok-{}-{}", std::process::id(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let file = write_token(dir.path(), &token);
    let http = format!("token_file = {:?}", file.display().to_string());
    let host = Host::start(Setup {
        data: RACK,
        instances: STATIC,
        http: &http,
        env: &[],
        args: &["--log", "debug"],
    });
    host.ready().await;
    check_token_required(&host, &token).await;
    let log = host.stop();
    assert!(log.contains("HTTP request refused"), "{log}");
    assert!(log.contains("auth=\"bearer token\""), "{log}");
    assert!(!log.contains(&token), "the token is in the log:\n{log}");

    // From the environment, with JSON logs.
    let token = format!("env-{}-{}", std::process::id(), free_port());
    let host = Host::start(Setup {
        data: RACK,
        instances: STATIC,
        http: "token_env = \"SYNC_TEST_HTTP_TOKEN\"",
        env: &[("SYNC_TEST_HTTP_TOKEN", &token)],
        args: &["--log", "debug", "--log-format", "json"],
    });
    host.ready().await;
    check_token_required(&host, &token).await;
    let log = host.stop();
    assert!(log.contains("HTTP request refused"), "{log}");
    assert!(!log.contains(&token), "the token is in the log:\n{log}");
}

#[tokio::test]
async fn a_missing_token_keeps_the_api_closed() {
    // token_env names an unset variable: the API must not come up open.
    let host = Host::start(Setup {
        data: RACK,
        instances: STATIC,
        http: "token_env = \"SYNC_TEST_HTTP_TOKEN_UNSET\"",
        env: &[],
        args: &[],
    });
    let end = Instant::now() + Duration::from_secs(10);
    while !host.log().contains("HTTP API not started") && !host.log().contains("HTTP API stopped") {
        assert!(Instant::now() < end, "no error logged:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        host.log().contains("SYNC_TEST_HTTP_TOKEN_UNSET is not set"),
        "{}",
        host.log()
    );
    assert!(host.http().get(host.url("/healthz")).send().await.is_err());
    host.stop();
}

/// The samples of `text` (OpenMetrics, as Prometheus reads it) named `name` whose labels
/// include `labels`, summed.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a number"),
        })
        .sum()
}

async fn scrape(host: &Host) -> prometheus_parse::Scrape {
    let text = host
        .http()
        .get(host.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let host = static_host("");
    host.ready().await;
    let m = scrape(&host).await;
    assert_eq!(
        sample(&m, "synchronizer_changes_total", &[("action", "created")]),
        2.0
    );
    assert_eq!(
        sample(&m, "synchronizer_changes_total", &[("action", "updated")]),
        0.0
    );
    assert_eq!(
        sample(&m, "synchronizer_entities", &[("type", "rack")]),
        1.0
    );
    assert_eq!(
        sample(&m, "synchronizer_entities", &[("type", "switch")]),
        1.0
    );
    // stdout and the replay window.
    let base_subscribers = sample(&m, "synchronizer_subscribers", &[]);
    assert!(base_subscribers >= 2.0, "{base_subscribers}");

    let mut stream = SseClient::open(&host, "", None, None).await;
    host.write_yaml(&yaml("maintenance", Some("available")));
    stream.expect("updated").await;
    host.write_yaml(&yaml("maintenance", None));
    stream.expect("change").await;
    stream.expect("change").await;

    let m = scrape(&host).await;
    assert_eq!(
        sample(&m, "synchronizer_changes_total", &[("action", "created")]),
        2.0
    );
    assert_eq!(
        sample(&m, "synchronizer_changes_total", &[("action", "updated")]),
        2.0
    );
    assert_eq!(
        sample(&m, "synchronizer_changes_total", &[("action", "deleted")]),
        1.0
    );
    assert_eq!(
        sample(&m, "synchronizer_subscribers", &[]),
        base_subscribers + 1.0
    );
    // A client that goes away takes its subscription with it.
    drop(stream);
    let end = Instant::now() + Duration::from_secs(10);
    while sample(&scrape(&host).await, "synchronizer_subscribers", &[]) != base_subscribers {
        assert!(
            Instant::now() < end,
            "the closed stream's subscription stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sample(&m, "synchronizer_entities", &[("type", "rack")]),
        1.0
    );
    let success = sample(
        &m,
        "synchronizer_collections_total",
        &[("plugin_instance", "static-test"), ("outcome", "success")],
    );
    let (_, plugins) = host.get_json("/v1/plugins").await;
    let collections = plugins["instances"][0]["status"]["collections"]
        .as_u64()
        .unwrap() as f64;
    // Three snapshots at least (start, two edits); the status, read later, has as many or more.
    assert!(
        success >= 3.0 && success <= collections,
        "{success} vs {collections}"
    );
    assert_eq!(
        sample(
            &m,
            "synchronizer_collections_total",
            &[("outcome", "failed")]
        ),
        0.0
    );
    // The histogram counted every collection.
    let histogram = m
        .samples
        .iter()
        .find(|s| s.metric == "synchronizer_collection_duration_seconds")
        .expect("the duration histogram");
    let prometheus_parse::Value::Histogram(buckets) = &histogram.value else {
        panic!("not a histogram: {histogram:?}");
    };
    let total = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
    assert!(total >= success, "{total} vs {success}");
    host.stop();
}

/// Whether the scrape has the series at all (a counter or gauge at 0 included).
fn has_series(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> bool {
    scrape
        .samples
        .iter()
        .any(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

/// One instance of a `/v1/plugins` answer.
fn instance(plugins: &Value, name: &str) -> Value {
    plugins["instances"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no instance {name}: {plugins}"))
}

/// A host with the static collector and [`unreachable_bus`].
fn host_with_unreachable_bus(readiness: bool) -> Host {
    let instances = unreachable_bus(readiness);
    Host::start(Setup {
        data: RACK,
        instances: &instances,
        http: "",
        env: &[],
        args: &[],
    })
}

/// A bus instance (in a child process) whose broker port is closed, and an AMQP output
/// whose broker is too.
fn unreachable_bus(readiness: bool) -> String {
    let port = free_port();
    format!(
        "{STATIC}\n[[instances]]\nname = \"bus\"\nlibrary = \"libsynchronizer_bus.so\"\nisolation = \"process\"\nreadiness = {readiness}\n[instances.config]\nurls = [\"amqp://guest:s3cr3t-pw@127.0.0.1:{port}/\"]\nfamilies = [\"nova-versioned\"]\nreconnect_initial = \"50ms\"\nreconnect_max = \"200ms\"\n[[instances.config.subscriptions]]\nexchange = \"nova\"\ntopics = [\"never\"]\n\n[[outputs.amqp]]\nname = \"vitrage\"\nurl = \"amqp://guest:s3cr3t-pw@127.0.0.1:{port}/\"\n"
    )
}

/// A bus that has never reached its broker is not healthy anywhere an operator looks:
/// `degraded` with the reason in `/v1/plugins`, `synchronizer_instance_healthy` 0, and
/// `/readyz` 503 naming it. The output that never connected has its series at 0 from
/// the start, so that `synchronizer_output_connected == 0` can fire.
#[tokio::test]
async fn a_bus_that_never_connected_is_degraded_and_readiness_waits_for_it() {
    let host = host_with_unreachable_bus(true);
    host.alive().await;
    // The collector's first snapshot comes quickly; the bus stays degraded.
    let end = Instant::now() + Duration::from_secs(15);
    let bus = loop {
        let (_, v) = host.get_json("/v1/plugins").await;
        let bus = instance(&v, "bus");
        let collected = v["instances"][0]["status"]["collections"].as_u64() >= Some(1);
        if bus["status"]["health"] == "degraded" && collected {
            break bus;
        }
        assert!(Instant::now() < end, "the bus never showed degraded: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let report = &bus["status"]["plugin_report"];
    assert_eq!(report["healthy"], false, "{bus}");
    let message = report["message"].as_str().unwrap();
    assert!(message.contains("not connected"), "{message}");
    assert!(!bus.to_string().contains("s3cr3t-pw"), "{bus}");
    assert_eq!(bus["status"]["reported_healthy"], false, "{bus}");

    let r = host.http().get(host.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["waiting_for"], serde_json::json!(["bus"]), "{v}");

    let m = scrape(&host).await;
    let bus_gauge = [("plugin_instance", "bus")];
    assert!(has_series(&m, "synchronizer_instance_healthy", &bus_gauge));
    assert_eq!(sample(&m, "synchronizer_instance_healthy", &bus_gauge), 0.0);
    assert_eq!(
        sample(
            &m,
            "synchronizer_instance_healthy",
            &[("plugin_instance", "static-test")]
        ),
        1.0
    );
    let output = [("output", "vitrage")];
    for name in [
        "synchronizer_output_connected",
        "synchronizer_output_published_total",
        "synchronizer_output_failures_total",
        "synchronizer_output_unconfirmed",
    ] {
        assert!(has_series(&m, name, &output), "{name} is missing");
    }
    assert_eq!(sample(&m, "synchronizer_output_connected", &output), 0.0);
    assert_eq!(
        sample(&m, "synchronizer_output_published_total", &output),
        0.0
    );
    // The collector's outcomes exist at 0 before any failed.
    assert!(has_series(
        &m,
        "synchronizer_collections_total",
        &[("plugin_instance", "static-test"), ("outcome", "timeout")]
    ));
    // `synchronizer plugins` asks the running host and says the same.
    let out = Command::new(binary())
        .args(["plugins", "--config"])
        .arg(host.dir().join("sync.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.trim().starts_with("bus: "))
        .unwrap_or_else(|| panic!("no line for the bus: {text}"));
    assert!(line.contains("bus: degraded (not connected"), "{line}");
    assert!(line.contains("child pid "), "{line}");
    assert!(!text.contains("s3cr3t-pw"), "{text}");
    assert!(text.contains("static-test: healthy"), "{text}");
    let log = host.stop();
    assert!(!log.contains("s3cr3t-pw"), "{log}");
}

/// With `readiness = false` the same bus does not hold readiness back; it stays degraded.
#[tokio::test]
async fn readiness_can_leave_an_instance_out() {
    let host = host_with_unreachable_bus(false);
    host.ready().await;
    let (_, v) = host.get_json("/v1/plugins").await;
    let bus = instance(&v, "bus");
    assert_ne!(bus["status"]["health"], "healthy", "{bus}");
    host.stop();
}

// ---- Prometheus: promtool and a real server (Debian's `prometheus` package, installed
// by scripts/prometheus/ensure.sh) ----

/// A program of the `prometheus` package, or a failure saying how to get it.
fn prometheus_tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is missing: run scripts/prometheus/ensure.sh (scripts/test.sh does)");
}

/// The repository's alert rules.
fn rules_dir() -> PathBuf {
    synchronizer_test_kit::paths::root().join("packaging/prometheus")
}

/// promtool's lint finds nothing to say about `/metrics` in the classic format, with
/// every kind of series present: collectors, a process-mode child, a bus, an output.
#[tokio::test]
async fn promtool_finds_the_metrics_clean() {
    let host = host_with_unreachable_bus(false);
    host.ready().await;
    let text = host
        .http()
        .get(host.url("/metrics"))
        .header("accept", "text/plain;version=0.0.4")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "synchronizer_collections_total",
        "synchronizer_plugin_stat",
        "synchronizer_output_connected",
        "synchronizer_instance_healthy",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family}: {text}"
        );
    }
    let mut check = Command::new(prometheus_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = check.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
    host.stop();
}

/// The alert rules of packaging/prometheus/ are valid and do what their unit tests say.
#[test]
fn the_alert_rules_pass_promtool() {
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new(prometheus_tool("promtool"))
            .args(args)
            .current_dir(rules_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A real Prometheus server scrapes the host (asking for OpenMetrics, as it does), stores
/// the series of an output that never connected, and evaluates the shipped alert rules
/// on them: `SynchronizerOutputDisconnected` is pending within seconds.
#[tokio::test]
async fn a_real_prometheus_scrapes_the_host_and_evaluates_the_rules() {
    let host = host_with_unreachable_bus(false);
    host.ready().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        rules_dir().join("alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    let target = host.base().trim_start_matches("http://").to_owned();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\nscrape_configs:\n  - job_name: synchronizer\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let server = Command::new(prometheus_tool("prometheus"))
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Kill(server);
    let api = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let get = |url: String| {
        let http = host.http().clone();
        async move {
            match http.get(url).send().await {
                Ok(r) if r.status() == 200 => r.json::<Value>().await.ok(),
                _ => None,
            }
        }
    };
    // Scraped, healthy, with no error.
    let end = Instant::now() + Duration::from_secs(60);
    let target_state = loop {
        if let Some(v) = get(api("/api/v1/targets")).await {
            let t = &v["data"]["activeTargets"][0];
            if t["health"] == "up" {
                break t.clone();
            }
            assert!(t["lastError"].as_str().unwrap_or("").is_empty(), "{t}");
        }
        assert!(Instant::now() < end, "Prometheus never scraped the host");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(target_state["lastError"], "", "{target_state}");
    // The output that never connected is a stored series at 0.
    let v = get(api("/api/v1/query?query=synchronizer_output_connected"))
        .await
        .unwrap();
    let result = &v["data"]["result"][0];
    assert_eq!(result["metric"]["output"], "vitrage", "{v}");
    assert_eq!(result["value"][1], "0", "{v}");
    // OpenMetrics was negotiated: the counter's metadata is under its family name.
    let v = get(api("/api/v1/metadata?metric=synchronizer_collections"))
        .await
        .unwrap();
    assert_eq!(
        v["data"]["synchronizer_collections"][0]["type"], "counter",
        "{v}"
    );
    // The shipped rule sees it.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = get(api("/api/v1/alerts")).await {
            let alerts = v["data"]["alerts"].as_array().cloned().unwrap_or_default();
            if let Some(a) = alerts
                .iter()
                .find(|a| a["labels"]["alertname"] == "SynchronizerOutputDisconnected")
            {
                assert_eq!(a["labels"]["output"], "vitrage", "{a}");
                assert_eq!(a["state"], "pending", "{a}");
                break;
            }
        }
        assert!(
            Instant::now() < end,
            "the output alert never became pending"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    host.stop();
}
