//! Driving the real lab Nova of `scripts/openstack/nova.sh` (noauth2: the token names the
//! user and project) from the tests that run against it: the Nova plugin's
//! `tests/real.rs` and the bus plugin's `tests/real_nova_deletes.rs`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use synchronizer::Synchronizer;

/// Nova's compute API, as the lab's admin.
pub struct Api {
    /// The client the calls go through.
    pub http: reqwest::Client,
    /// `SYNCHRONIZER_REAL_NOVA`: `http://127.0.0.1:8774/v2.1`.
    pub nova: String,
}

impl Api {
    /// The API of `SYNCHRONIZER_REAL_NOVA`; fails the test, saying how to start the lab,
    /// when it is not set.
    pub fn from_env() -> Api {
        let Ok(nova) = std::env::var("SYNCHRONIZER_REAL_NOVA") else {
            panic!(
                "SYNCHRONIZER_REAL_NOVA is not set: start the services with scripts/openstack/test-real.sh (scripts/test.sh does)"
            );
        };
        Api {
            http: reqwest::Client::new(),
            nova,
        }
    }

    /// `method path` with `body`, as the lab's admin (compute microversion 2.53): the
    /// status and the JSON body (`null` when there is none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.nova))
            .header("x-auth-token", "admin:admin")
            .header("openstack-api-version", "compute 2.53");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Server `id`, or `None` when Nova does not know it.
    pub async fn server(&self, id: &str) -> Option<Value> {
        let (status, body) = self
            .call(reqwest::Method::GET, &format!("/servers/{id}"), None)
            .await;
        (status == 200).then(|| body["server"].clone())
    }

    /// Every server Nova lists (`GET /servers/detail?all_tenants=1`), retried while the
    /// lab's sqlite answers 500.
    pub async fn servers(&self) -> Vec<Value> {
        for attempt in 1..=5 {
            let (status, body) = self
                .call(reqwest::Method::GET, "/servers/detail?all_tenants=1", None)
                .await;
            if status == 200 {
                return body["servers"].as_array().cloned().unwrap_or_default();
            }
            assert!(attempt < 5 && status == 500, "{status} {body}");
        }
        unreachable!("the loop returns or fails")
    }

    /// The id of the server named `name` (which must exist).
    pub async fn id_of(&self, name: &str) -> String {
        let (_, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/servers?all_tenants=1&name=^{name}$"),
                None,
            )
            .await;
        body["servers"][0]["id"].as_str().unwrap().to_owned()
    }

    /// Boots a server named `name` from `image` (flavor 1, no network) and waits until it
    /// is ACTIVE; its id. On this sqlite-backed lab a build now and then fails half-way
    /// ("database is locked": the server stays in BUILD without a task, or goes to
    /// ERROR): such a server is deleted and another one booted, up to three times.
    pub async fn boot(&self, name: &str, image: &str) -> String {
        for attempt in 1..=3 {
            let (status, created) = self
                .call(
                    reqwest::Method::POST,
                    "/servers",
                    Some(json!({"server": {"name": name, "imageRef": image, "flavorRef": "1", "networks": "none"}})),
                )
                .await;
            if status == 500 && attempt < 3 {
                continue;
            }
            assert_eq!(status, 202, "{created}");
            let id = created["server"]["id"].as_str().unwrap().to_owned();
            if self
                .reaches(&id, Some("ACTIVE"), Duration::from_secs(120))
                .await
            {
                return id;
            }
            let fault = self.server(&id).await.map(|s| s["fault"].clone());
            eprintln!("{name} ({id}) did not become ACTIVE ({fault:?}); deleting it");
            self.delete(&id).await;
        }
        panic!("{name} never became ACTIVE in three attempts");
    }

    /// Deletes every server whose name starts with `prefix` (left by an earlier run that
    /// failed) and waits until they are gone.
    pub async fn delete_named(&self, prefix: &str) {
        for s in self.servers().await {
            let named = s["name"].as_str().is_some_and(|n| n.starts_with(prefix));
            if let (true, Some(id)) = (named, s["id"].as_str()) {
                self.delete(id).await;
            }
        }
    }

    /// Deletes a server and waits until Nova answers 404 for it. The request is sent
    /// again when the lab's sqlite was locked (a 500, or a deletion that failed in
    /// nova-compute and left the server in ERROR), up to three times.
    pub async fn delete(&self, id: &str) {
        for attempt in 1..=3 {
            let (status, body) = self
                .call(reqwest::Method::DELETE, &format!("/servers/{id}"), None)
                .await;
            let locked = status == 500 && body.to_string().contains("OperationalError");
            assert!(status == 204 || status == 404 || locked, "{status} {body}");
            if self.reaches(id, None, Duration::from_secs(60)).await {
                return;
            }
            eprintln!("{id} not deleted yet (attempt {attempt}): sending DELETE again");
        }
        panic!("{id} was never deleted");
    }

    /// Sends `action` until the server reaches `want`: on this sqlite-backed lab Nova an
    /// action sent right after the previous one settled is now and then "preempted"
    /// (UnexpectedTaskStateError in nova-compute) and dropped.
    pub async fn act_until(&self, id: &str, action: Value, want: &str) {
        for _ in 0..3 {
            let (status, body) = self
                .call(
                    reqwest::Method::POST,
                    &format!("/servers/{id}/action"),
                    Some(action.clone()),
                )
                .await;
            // 409: still busy with the previous action; 500 "OperationalError": sqlite
            // was locked (this lab runs Nova on sqlite). Both: try again.
            let locked = status == 500 && body.to_string().contains("OperationalError");
            assert!(status == 202 || status == 409 || locked, "{status} {body}");
            if self.reaches(id, Some(want), Duration::from_secs(30)).await {
                return;
            }
        }
        panic!("{id} never became {want} after {action}");
    }

    /// Whether the server reaches status `want` with no task (`None`: is gone) within
    /// `within`, looking every 300 ms.
    pub async fn reaches(&self, id: &str, want: Option<&str>, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let s = self.server(id).await;
            let status = s
                .as_ref()
                .and_then(|s| s["status"].as_str().map(str::to_owned));
            let task = s.as_ref().map(|s| s["OS-EXT-STS:task_state"].clone());
            if status.as_deref() == want && task.is_none_or(|t| t.is_null()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Waits (up to 120 s) until the server has status `want` and no task, or is gone
    /// (`None`).
    pub async fn wait_status(&self, id: &str, want: Option<&str>) {
        assert!(
            self.reaches(id, want, Duration::from_secs(120)).await,
            "{id} never became {want:?}"
        );
    }
}

/// A poll through the host. This lab Nova runs on sqlite and now and then answers a
/// request with a 500 ("database is locked"): such a poll fails and changes nothing (that
/// is the point of the failure semantics), so it is simply repeated.
pub async fn poll<S: AsRef<str>>(sync: &Synchronizer, types: &[S]) {
    for attempt in 1..=5 {
        match sync.get_all(types).await {
            Ok(_) => return,
            Err(e) if attempt < 5 && e.to_string().contains("HTTP 500") => {
                eprintln!("poll failed, retrying: {e}");
            }
            Err(e) => panic!("{e}"),
        }
    }
}
