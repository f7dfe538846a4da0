//! Shared helpers of the bus plugin's integration tests: the real broker, the real
//! oslo.messaging publisher, a recording sink and queue inspection.
//!
//! The tests need RabbitMQ on 127.0.0.1:5672 (guest/guest) and Python 3 for the oslo
//! venv; `scripts/rabbitmq/ensure.sh` (as root) sets the broker up. When the broker is
//! not there the tests fail with a message that says so: they never pass without it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use synchronizer_bus::Config;
use synchronizer_bus::config::Subscription;
use synchronizer_plugin_api::{Change, Entity};

/// The broker the tests use.
pub const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The directory of the plugin library cargo built beside this test binary.
pub fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps directory").to_path_buf();
    for dir in [deps.clone(), deps.join("..")] {
        if dir.join("libsynchronizer_bus.so").exists() {
            return dir;
        }
    }
    panic!(
        "libsynchronizer_bus.so not found beside {}: build it with `cargo build -p synchronizer-bus`",
        exe.display()
    );
}

/// A name unique to this test run: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Connects to the test broker, or fails the test saying how to start it.
pub async fn connect() -> Connection {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    match tokio::time::timeout(Duration::from_secs(10), Connection::connect(BROKER, props)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!(
            "RabbitMQ is not reachable at 127.0.0.1:5672 as guest/guest ({e}). \
             These tests need the real broker: run `scripts/rabbitmq/ensure.sh` as root."
        ),
        Err(_) => panic!(
            "RabbitMQ at 127.0.0.1:5672 did not answer within 10 s. \
             Run `scripts/rabbitmq/ensure.sh` as root."
        ),
    }
}

/// Fails the test unless the broker is up.
pub async fn require_broker() {
    close(connect().await).await;
}

/// The venv's python, creating the venv once (scripts/oslo/setup-venv.sh).
pub fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let script = repo_root().join("scripts/oslo/setup-venv.sh");
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
    pub fixture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_set: Option<serde_json::Value>,
    /// The publisher's `[oslo_messaging_rabbit] kombu_compression`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

impl Spec {
    /// A notification rebuilt from `fixture` (a path under tests/fixtures), sent on
    /// `exchange` to `topic`.
    pub fn new(fixture_name: &str, exchange: &str, topic: &str) -> Self {
        Spec {
            fixture: fixture(fixture_name).display().to_string(),
            exchange: Some(exchange.into()),
            topics: Some(vec![topic.into()]),
            ..Default::default()
        }
    }
    pub fn uuid(mut self, u: &str) -> Self {
        self.uuid = Some(u.into());
        self
    }
    pub fn state(mut self, s: &str) -> Self {
        self.state = Some(s.into());
        self
    }
    pub fn host(mut self, h: &str) -> Self {
        self.host = Some(h.into());
        self
    }
    pub fn at(mut self, ts: &str) -> Self {
        self.timestamp = Some(ts.into());
        self
    }
    pub fn priority(mut self, p: &str) -> Self {
        self.priority = Some(p.into());
        self
    }
    pub fn event(mut self, e: &str) -> Self {
        self.event_type = Some(e.into());
        self
    }
    pub fn message_id(mut self, m: &str) -> Self {
        self.message_id = Some(m.into());
        self
    }
    pub fn index(mut self, i: usize) -> Self {
        self.index = Some(i);
        self
    }
    pub fn driver(mut self, d: &str) -> Self {
        self.driver = Some(d.into());
        self
    }
    pub fn topics(mut self, t: &[&str]) -> Self {
        self.topics = Some(t.iter().map(|s| s.to_string()).collect());
        self
    }
    /// Sent by a publisher configured with `kombu_compression = method`.
    pub fn compressed(mut self, method: &str) -> Self {
        self.compression = Some(method.into());
        self
    }
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
    let script = repo_root().join("scripts/oslo/publish.py");
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

/// A bus configuration for one test: its own exchange(s) and topics, fast reconnects,
/// its own dead-letter exchange and queue.
pub fn config(subscriptions: Vec<Subscription>, tag: &str) -> Config {
    let mut c = Config::with_urls([BROKER]);
    c.subscriptions = subscriptions;
    c.reconnect_initial = Duration::from_millis(50);
    c.reconnect_max = Duration::from_millis(500);
    c.dead_letter.exchange = format!("{tag}.dlx");
    c.dead_letter.queue = format!("{tag}.dlq");
    c.dead_letter.durable = false;
    c.connection_name = tag.to_owned();
    c
}

pub fn subscription(exchange: &str, topic: &str) -> Subscription {
    Subscription {
        exchange: exchange.into(),
        topics: vec![topic.into()],
        priorities: None,
        queue: None,
    }
}

/// What a recording sink received.
#[derive(Clone, Debug, PartialEq)]
pub enum Got {
    Upsert(Entity),
    Delete(Entity),
}

impl Got {
    pub fn entity(&self) -> &Entity {
        match self {
            Got::Upsert(e) | Got::Delete(e) => e,
        }
    }
    pub fn is_delete(&self) -> bool {
        matches!(self, Got::Delete(_))
    }
}

/// A sink that records every change, optionally slowly, optionally failing.
#[derive(Clone, Default)]
pub struct RecordingSink {
    pub got: Arc<Mutex<Vec<Got>>>,
    pub batches: Arc<Mutex<Vec<usize>>>,
    pub delay: Option<Duration>,
    /// Fail the n-th push (1-based) and every one after it.
    pub fail_from: Option<usize>,
}

impl RecordingSink {
    pub fn slow(delay: Duration) -> Self {
        RecordingSink {
            delay: Some(delay),
            ..Default::default()
        }
    }
    pub fn changes(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
    pub fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

impl synchronizer_bus::ChangeSink for RecordingSink {
    async fn push(&self, batch: Vec<Change>) -> Result<(), synchronizer_plugin_api::Error> {
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        let n = {
            let mut b = self.batches.lock().unwrap();
            b.push(batch.len());
            b.len()
        };
        if self.fail_from.is_some_and(|f| n >= f) {
            return Err(synchronizer_plugin_api::Error::failed("test sink refuses"));
        }
        let mut got = self.got.lock().unwrap();
        for c in batch {
            got.push(match c {
                Change::Upsert(e) => Got::Upsert(e),
                Change::Delete(e) => Got::Delete(e),
            });
        }
        Ok(())
    }
}

/// Waits until `cond` holds, failing the test with `what` after `timeout`.
pub async fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the async `cond` holds, failing the test with `what` after `timeout`.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Messages ready in `queue` (None when it does not exist).
pub async fn ready(conn: &Connection, queue: &str) -> Option<u32> {
    counts(conn, queue).await.map(|(messages, _)| messages)
}

/// Messages ready in `queue` and its consumers (None when it does not exist).
pub async fn counts(conn: &Connection, queue: &str) -> Option<(u32, u32)> {
    let ch = conn.create_channel().await.ok()?;
    let q = ch
        .queue_declare(
            queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()?;
    let _ = ch.close(200, "done").await;
    Some((q.message_count(), q.consumer_count()))
}

/// Takes every message of `queue` (acknowledging them).
pub async fn drain(conn: &Connection, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let ch = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue, BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        out.push(m);
    }
    out
}

/// Publishes raw bytes (for bodies oslo would never send).
pub async fn publish_raw(conn: &Connection, exchange: &str, routing_key: &str, body: &[u8]) {
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_publish(
        exchange,
        routing_key,
        BasicPublishOptions::default(),
        body,
        BasicProperties::default().with_content_type("application/json".into()),
    )
    .await
    .expect("publish")
    .await
    .expect("confirmation");
}

/// Publishes raw bytes with these message headers (kombu's `compression`, say).
pub async fn publish_raw_with_headers(
    conn: &Connection,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) {
    use lapin::types::{AMQPValue, LongString, ShortString};
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(
            ShortString::from(*k),
            AMQPValue::LongString(LongString::from(*v)),
        );
    }
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_publish(
        exchange,
        routing_key,
        BasicPublishOptions::default(),
        body,
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(table),
    )
    .await
    .expect("publish")
    .await
    .expect("confirmation");
}

/// Deletes test queues and exchanges (best effort).
pub async fn cleanup(conn: Connection, queues: &[String], exchanges: &[String]) {
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    for q in queues {
        let _ = ch.queue_delete(q, QueueDeleteOptions::default()).await;
    }
    for e in exchanges {
        let _ = ch
            .exchange_delete(e, ExchangeDeleteOptions::default())
            .await;
    }
    let _ = ch.close(200, "done").await;
    close(conn).await;
}

/// Closes a connection and waits for its I/O thread (before the runtime goes away).
pub async fn close(conn: Connection) {
    let _ = conn.close(200, "done").await;
    let _ = tokio::task::spawn_blocking(move || conn.run()).await;
}

/// Runs `rabbitmqctl` with `args`, failing the test when it fails.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run rabbitmqctl {args:?}: {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh instance uuid for test `n`.
pub fn uuid(prefix: u32, n: u32) -> String {
    format!("{prefix:08x}-0000-4000-8000-{n:012x}")
}

/// Installs a test log subscriber once (RUST_LOG controls it).
pub fn logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}
