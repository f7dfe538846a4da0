//! The shared test broker: RabbitMQ on 127.0.0.1:5672 as guest/guest
//! (`scripts/rabbitmq/ensure.sh`, as root, sets it up). Other engineers' tests use it at
//! the same time, so a test's queues and exchanges have names of their own
//! ([`crate::sys::unique`]) and go away with it: [`Cleanup`] deletes them when dropped,
//! whether the test passed or failed. (A vhost per test through the management API would
//! need the management plugin, which the broker does not run; [`Vhost`] makes one with
//! `rabbitmqctl`, for the tests about vhosts.)
//!
//! When the broker is not there the tests fail with a message that says so: they never
//! pass without it.

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// The broker the tests use.
pub const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Connects to the test broker, or fails the test saying how to start it.
pub async fn connect() -> Connection {
    connect_to(BROKER, "run `scripts/rabbitmq/ensure.sh` as root").await
}

/// Connects to `url`, or fails the test with `hint` (what starts that broker).
pub async fn connect_to(url: &str, hint: &str) -> Connection {
    match tokio::time::timeout(Duration::from_secs(10), try_connect(url)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!(
            "RabbitMQ is not reachable at {} ({e}). These tests need the real broker: {hint}.",
            without_password(url)
        ),
        Err(_) => panic!(
            "RabbitMQ at {} did not answer within 10 s: {hint}.",
            without_password(url)
        ),
    }
}

async fn try_connect(url: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    Connection::connect(url, props).await
}

/// `url` with its password (if any) replaced by `***`, for messages.
fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(_)) => match rest.split_once('@') {
            Some((user, host)) => {
                let user = user.split_once(':').map_or(user, |(u, _)| u);
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

/// Fails the test unless the broker is up.
pub async fn require_broker() {
    close(connect().await).await;
}

/// Closes a connection and waits for its I/O thread (before the runtime goes away).
pub async fn close(conn: Connection) {
    let _ = conn.close(200, "done").await;
    let _ = tokio::task::spawn_blocking(move || conn.run()).await;
}

/// Queues and exchanges of one test, deleted (best effort) when this is dropped: at the
/// end of the test, or while it unwinds from a failed assertion. Declare it before
/// whatever uses the names (the host, a connection), so that it is dropped after them.
///
/// ```ignore
/// let _cleanup = Cleanup::new()
///     .queues([format!("{topic}.info"), format!("{tag}.dlq")])
///     .exchanges([exchange.clone(), format!("{tag}.dlx")]);
/// ```
#[derive(Debug)]
pub struct Cleanup {
    url: String,
    queues: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<String>>,
}

impl Default for Cleanup {
    fn default() -> Self {
        Cleanup::new()
    }
}

impl Cleanup {
    /// Nothing to delete yet, on the test broker ([`BROKER`]).
    pub fn new() -> Cleanup {
        Cleanup::on(BROKER)
    }

    /// Nothing to delete yet, on the broker (or vhost) of `url`.
    pub fn on(url: &str) -> Cleanup {
        Cleanup {
            url: url.to_owned(),
            queues: Mutex::default(),
            exchanges: Mutex::default(),
        }
    }

    /// Also deletes these queues.
    pub fn queues<S: Into<String>>(self, names: impl IntoIterator<Item = S>) -> Cleanup {
        for n in names {
            self.queue(n);
        }
        self
    }

    /// Also deletes these exchanges.
    pub fn exchanges<S: Into<String>>(self, names: impl IntoIterator<Item = S>) -> Cleanup {
        for n in names {
            self.exchange(n);
        }
        self
    }

    /// Also deletes queue `name`, which it returns (to name it where it is made).
    pub fn queue(&self, name: impl Into<String>) -> String {
        let name = name.into();
        self.queues.lock().unwrap().push(name.clone());
        name
    }

    /// Also deletes exchange `name`, which it returns.
    pub fn exchange(&self, name: impl Into<String>) -> String {
        let name = name.into();
        self.exchanges.lock().unwrap().push(name.clone());
        name
    }

    /// Deletes what it holds, on a connection of its own.
    async fn delete(url: &str, queues: &[String], exchanges: &[String]) {
        let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(10), try_connect(url)).await
        else {
            return;
        };
        if let Ok(ch) = conn.create_channel().await {
            for q in queues {
                let _ = ch.queue_delete(q, QueueDeleteOptions::default()).await;
            }
            for e in exchanges {
                let _ = ch
                    .exchange_delete(e, ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = ch.close(200, "done").await;
        }
        close(conn).await;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap_or_else(|e| e.into_inner()));
        let exchanges =
            std::mem::take(&mut *self.exchanges.lock().unwrap_or_else(|e| e.into_inner()));
        if queues.is_empty() && exchanges.is_empty() {
            return;
        }
        let url = self.url.clone();
        // A runtime of its own on a thread of its own: a drop may run on a runtime's
        // worker (which must not block on async work) or after the runtime is gone.
        let deleting = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(Cleanup::delete(&url, &queues, &exchanges));
        });
        let _ = deleting.join();
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
    publish_raw_with_headers(conn, exchange, routing_key, body, &[]).await
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
    let mut properties = BasicProperties::default().with_content_type("application/json".into());
    if !headers.is_empty() {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert(
                ShortString::from(*k),
                AMQPValue::LongString(LongString::from(*v)),
            );
        }
        properties = properties.with_headers(table);
    }
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_publish(
        exchange,
        routing_key,
        BasicPublishOptions::default(),
        body,
        properties,
    )
    .await
    .expect("publish")
    .await
    .expect("confirmation");
}

/// A virtual host of one test on the test broker (`rabbitmqctl add_vhost`, guest allowed
/// everything in it), deleted with everything in it when dropped.
#[derive(Debug)]
pub struct Vhost {
    name: String,
}

impl Vhost {
    /// Adds vhost `name` (a [`crate::sys::unique`] name) and lets guest use it.
    pub fn add(name: &str) -> Vhost {
        rabbitmqctl(&["add_vhost", name]);
        let vhost = Vhost {
            name: name.to_owned(),
        };
        rabbitmqctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"]);
        vhost
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
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
