//! The real oslo.messaging publisher (`scripts/oslo/publish.py` in the Python venv of
//! `scripts/oslo/setup-venv.sh`), sending notifications rebuilt from the captures in
//! `plugins/bus/tests/fixtures` to the test broker, as a real OpenStack service does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::paths::root;

/// A captured notification: `name` is a path under `plugins/bus/tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    root().join("plugins/bus/tests/fixtures").join(name)
}

/// The venv's python, creating the venv once (scripts/oslo/setup-venv.sh).
pub fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let script = root().join("scripts/oslo/setup-venv.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): the oslo.messaging venv is needed to publish real notifications",
            script.display(),
            out.status
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    })
}

/// One notification for `scripts/oslo/publish.py`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Spec {
    /// The captured notification it is rebuilt from (a path).
    pub fixture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Which notification of the fixture (a file of several).
    pub index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The exchange (oslo's `control_exchange`).
    pub exchange: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The notification topics.
    pub topics: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The notifier driver (`messagingv2`, `messaging`).
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Another event type.
    pub event_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Another priority (`info`, `error`).
    pub priority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Another instance uuid.
    pub uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Another instance state.
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Another compute host.
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Another instance name.
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Another timestamp.
    pub timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Another message id.
    pub message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Payload fields to set.
    pub payload_set: Option<serde_json::Value>,
    /// The publisher's `[oslo_messaging_rabbit] kombu_compression`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

impl Spec {
    /// A notification rebuilt from `fixture` (a path under `plugins/bus/tests/fixtures`), sent on
    /// `exchange` to `topic`.
    pub fn new(fixture_name: &str, exchange: &str, topic: &str) -> Self {
        Spec {
            fixture: fixture(fixture_name).display().to_string(),
            exchange: Some(exchange.into()),
            topics: Some(vec![topic.into()]),
            ..Default::default()
        }
    }
    /// With instance uuid `u`.
    pub fn uuid(mut self, u: &str) -> Self {
        self.uuid = Some(u.into());
        self
    }
    /// With instance state `s`.
    pub fn state(mut self, s: &str) -> Self {
        self.state = Some(s.into());
        self
    }
    /// On compute host `h`.
    pub fn host(mut self, h: &str) -> Self {
        self.host = Some(h.into());
        self
    }
    /// Timestamped `ts`.
    pub fn at(mut self, ts: &str) -> Self {
        self.timestamp = Some(ts.into());
        self
    }
    /// With priority `p`.
    pub fn priority(mut self, p: &str) -> Self {
        self.priority = Some(p.into());
        self
    }
    /// With event type `e`.
    pub fn event(mut self, e: &str) -> Self {
        self.event_type = Some(e.into());
        self
    }
    /// With message id `m`.
    pub fn message_id(mut self, m: &str) -> Self {
        self.message_id = Some(m.into());
        self
    }
    /// Notification `i` of the fixture.
    pub fn index(mut self, i: usize) -> Self {
        self.index = Some(i);
        self
    }
    /// Sent by notifier driver `d`.
    pub fn driver(mut self, d: &str) -> Self {
        self.driver = Some(d.into());
        self
    }
    /// To topics `t`.
    pub fn topics(mut self, t: &[&str]) -> Self {
        self.topics = Some(t.iter().map(|s| s.to_string()).collect());
        self
    }
    /// Sent by a publisher configured with `kombu_compression = method`.
    pub fn compressed(mut self, method: &str) -> Self {
        self.compression = Some(method.into());
        self
    }
    /// With these payload fields set.
    pub fn set(mut self, payload: serde_json::Value) -> Self {
        self.payload_set = Some(payload);
        self
    }
}

/// Sends the notifications, in order, with the real oslo.messaging Notifier.
pub fn publish(specs: &[Spec]) {
    publish_to("rabbit://guest:guest@127.0.0.1:5672/", specs)
}

/// Like [`publish`], with another transport URL (a vhost).
pub fn publish_to(url: &str, specs: &[Spec]) {
    use std::io::Write;
    let script = root().join("scripts/oslo/publish.py");
    let mut child = Command::new(python())
        .arg(&script)
        .args(["--url", url, "--jsonl", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        for s in specs {
            let line = serde_json::to_string(s).expect("spec serialises");
            writeln!(stdin, "{line}").expect("publisher reads its input");
        }
    }
    let out = child.wait_with_output().expect("publisher runs");
    assert!(
        out.status.success(),
        "publish.py failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
