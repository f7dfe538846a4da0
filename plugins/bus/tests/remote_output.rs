//! The host's AMQP output for remote consumers, end to end on the real broker: real
//! oslo.messaging notifications consumed by the bus plugin `.so` in the real host, every
//! change published to a topic exchange, and plain AMQP consumers (lapin, binding their
//! own queues) on the other side.
//!
//! The output reaches the broker through a TCP relay that the test can cut, so that the
//! output's broker "goes away" while the bus plugin's upstream connection stays: the
//! notifications must wait upstream, unacknowledged, and none may be lost, also across
//! a shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};
use synchronizer::{Action, Event, SubscribeOptions, Subscription, Synchronizer};
use synchronizer_bus::testing::*;
use synchronizer_test_kit::broker::*;
use synchronizer_test_kit::oslo::*;
use synchronizer_test_kit::paths::plugin_library_dir;
use synchronizer_test_kit::sys::unique;
use synchronizer_test_kit::wait::{wait_for, wait_until};
use tokio::net::{TcpListener, TcpStream};

const V_CREATE: &str = "nova-30/versioned_notifications.info__instance.create.end.raw.json";
const V_DELETE: &str = "nova-30/versioned_notifications.info__instance.delete.end.raw.json";
const WAIT: Duration = Duration::from_secs(30);

/// A TCP relay to the broker that can be cut (every connection closed, new ones closed
/// at once) and restored.
struct Relay {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept = tokio::spawn({
            let (open, conns) = (open.clone(), conns.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: the broker is "away"
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect("127.0.0.1:5672").await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().unwrap().push(task.abort_handle());
                }
            }
        });
        Relay {
            addr,
            open,
            conns,
            accept,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// A remote consumer: its own exclusive queue bound to `exchange` with `patterns`.
struct Remote {
    consumer: lapin::Consumer,
}

/// One message a remote consumer received.
#[derive(Debug)]
struct Received {
    routing_key: String,
    body: serde_json::Value,
    message_id: Option<String>,
    delivery_mode: Option<u8>,
    content_type: Option<String>,
}

impl Remote {
    async fn bind(conn: &Connection, exchange: &str, patterns: &[&str]) -> Remote {
        let ch = conn.create_channel().await.expect("channel");
        // The same declaration as the output's, so binding works whoever comes first.
        ch.exchange_declare(
            exchange,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
        let q = ch
            .queue_declare(
                "",
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare queue");
        for p in patterns {
            ch.queue_bind(
                q.name().as_str(),
                exchange,
                p,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        }
        let consumer = ch
            .basic_consume(
                q.name().as_str(),
                "remote-consumer",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        Remote { consumer }
    }

    /// The next `n` messages, acknowledged.
    async fn take(&mut self, n: usize) -> Vec<Received> {
        let mut out = Vec::new();
        while out.len() < n {
            let next = tokio::time::timeout(WAIT, self.consumer.next()).await;
            let delivery = match next {
                Ok(Some(Ok(d))) => d,
                other => panic!("after {} of {n} messages: {other:?}", out.len()),
            };
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
            let p = &delivery.properties;
            out.push(Received {
                routing_key: delivery.routing_key.to_string(),
                body: serde_json::from_slice(&delivery.data).expect("a JSON body"),
                message_id: p.message_id().as_ref().map(|m| m.to_string()),
                delivery_mode: *p.delivery_mode(),
                content_type: p.content_type().as_ref().map(|c| c.to_string()),
            });
        }
        out
    }

    /// Fails when a message arrives within `quiet`.
    async fn expect_nothing(&mut self, quiet: Duration) {
        if let Ok(Some(d)) = tokio::time::timeout(quiet, self.consumer.next()).await {
            panic!("unexpected message: {d:?}");
        }
    }
}

fn host_toml(tag: &str, exchange: &str, topic: &str, output_url: &str) -> String {
    host_toml_with(tag, exchange, topic, output_url, "")
}

/// `host_toml` with extra settings for the bus instance (`isolation`, ...).
fn host_toml_with(
    tag: &str,
    exchange: &str,
    topic: &str,
    output_url: &str,
    instance_extra: &str,
) -> String {
    format!(
        r#"
plugins_dir = "{dir}"
plugin_log_level = "warn"

[[outputs.amqp]]
name = "remote"
url = "{output_url}"
exchange = "{tag}.changes"
confirm_timeout = "2s"
reconnect_initial = "50ms"
reconnect_max = "200ms"
drain_timeout = "1s"

[[instances]]
name = "bus"
library = "libsynchronizer_bus.so"
{instance_extra}
[instances.config]
urls = ["{BROKER}"]
families = ["nova-versioned"]
# One notification per batch: the host collapses the changes of one key within a batch
# (a creation and a deletion in one batch are nothing), and the assertions count them.
batch_size = 1
connection_name = "{tag}"
reconnect_initial = "50ms"
reconnect_max = "500ms"
shutdown_grace = "1s"
[instances.config.dead_letter]
exchange = "{tag}.dlx"
queue = "{tag}.dlq"
durable = false
[[instances.config.subscriptions]]
exchange = "{exchange}"
topics = ["{topic}"]
"#,
        dir = plugin_library_dir("synchronizer_bus").display()
    )
}

async fn start_host(toml: &str) -> (Synchronizer, Subscription) {
    let config = synchronizer::Config::from_toml(toml).expect("host config");
    Synchronizer::start_subscribed(config, &SubscribeOptions::types(&["nova.instance"]))
        .await
        .expect("host starts with the bus plugin and the AMQP output")
}

/// The next `n` changes a local subscriber sees: (action, key).
async fn local_changes(sub: &mut Subscription, n: usize) -> Vec<(Action, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(WAIT, sub.recv()).await {
            Ok(Some(Event::Change(c))) => out.push((c.action, c.entity.key())),
            Ok(Some(_)) => {}
            other => panic!("after {} of {n} local changes: {other:?}", out.len()),
        }
    }
    out
}

/// (routing key, action, key) of what a remote consumer got.
fn summary(got: &[Received]) -> Vec<(String, String, String)> {
    got.iter()
        .map(|r| {
            (
                r.routing_key.clone(),
                r.body["action"].as_str().unwrap_or_default().to_owned(),
                r.body["key"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// (ready, unacknowledged) messages of `queue`, as the broker counts them.
fn queue_counts(queue: &str) -> (u64, u64) {
    let out = rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ]);
    for line in out.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.first() == Some(&queue) && cols.len() == 3 {
            return (
                cols[1].parse().expect("ready count"),
                cols[2].parse().expect("unacked count"),
            );
        }
    }
    panic!("queue {queue} not listed by rabbitmqctl: {out}");
}

/// Waits until the broker counts (ready, unacknowledged) messages in `queue`.
async fn wait_upstream(queue: &str, ready: u64, unacked: u64) {
    let what = format!("{queue}: {ready} ready, {unacked} unacknowledged");
    wait_until(WAIT, &what, || queue_counts(queue) == (ready, unacked)).await;
}

/// The entity keys of what a remote consumer got, in order.
fn keys_of(got: &[Received]) -> Vec<String> {
    summary(got).into_iter().map(|(_, _, k)| k).collect()
}

/// `nova.instance:<uuid>` of each uuid.
fn instance_keys(uuids: &[String]) -> Vec<String> {
    uuids.iter().map(|u| format!("nova.instance:{u}")).collect()
}

/// Changes reach plain AMQP consumers by type and action: each consumer binds its own
/// queue and gets exactly the changes its patterns select, as persistent JSON messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_consumers_get_the_changes_they_bind_to() {
    logs();
    require_broker().await;
    let tag = unique("remote");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let conn = connect().await;
    let changes_exchange = format!("{tag}.changes");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([
            exchange.clone(),
            format!("{tag}.dlx"),
            changes_exchange.clone(),
        ]);
    let mut all = Remote::bind(&conn, &changes_exchange, &["nova.instance.*"]).await;
    let mut deletions = Remote::bind(&conn, &changes_exchange, &["#.deleted"]).await;
    let mut heat = Remote::bind(&conn, &changes_exchange, &["heat.stack.*"]).await;

    let (sync, mut local) = start_host(&host_toml(&tag, &exchange, &topic, BROKER)).await;
    let (u, v) = (uuid(0x0a0, 1), uuid(0x0a0, 2));
    publish(&[
        Spec::new(V_CREATE, &exchange, &topic)
            .uuid(&u)
            .at("2026-11-25 08:37:41"),
        Spec::new(V_CREATE, &exchange, &topic)
            .uuid(&v)
            .at("2026-11-25 08:37:42"),
        Spec::new(V_DELETE, &exchange, &topic)
            .uuid(&u)
            .at("2026-11-25 08:37:52"),
    ]);
    let ku = format!("nova.instance:{u}");
    let kv = format!("nova.instance:{v}");
    let want_local = vec![
        (Action::Created, ku.clone()),
        (Action::Created, kv.clone()),
        (Action::Deleted, ku.clone()),
    ];
    assert_eq!(local_changes(&mut local, 3).await, want_local);

    let got = all.take(3).await;
    assert_eq!(
        summary(&got),
        vec![
            (
                "nova.instance.created".to_owned(),
                "created".to_owned(),
                ku.clone()
            ),
            ("nova.instance.created".into(), "created".into(), kv.clone()),
            ("nova.instance.deleted".into(), "deleted".into(), ku.clone()),
        ]
    );
    let seqs: Vec<u64> = got.iter().filter_map(|r| r.body["seq"].as_u64()).collect();
    assert_eq!(seqs.len(), 3);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    for r in &got {
        assert_eq!(r.delivery_mode, Some(2), "persistent");
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        let id = r.message_id.as_deref().expect("a message id");
        let seq = r.body["seq"].as_u64().expect("seq");
        assert!(id.starts_with(&format!("{seq}@")), "{id}");
        assert_eq!(r.body["instance"], "bus");
        assert_eq!(r.body["type"], "nova.instance");
    }
    assert_eq!(got[1].body["id"], v.as_str());

    assert_eq!(
        summary(&deletions.take(1).await),
        vec![("nova.instance.deleted".into(), "deleted".into(), ku.clone())]
    );
    deletions.expect_nothing(Duration::from_millis(300)).await;
    heat.expect_nothing(Duration::from_millis(100)).await;

    let metrics = sync.metrics_text();
    assert!(
        metrics.contains(r#"synchronizer_output_published_total{output="remote"} 3"#),
        "{metrics}"
    );
    sync.shutdown().await;
    close(conn).await;
}

/// The output's broker goes away: notifications are applied (local subscribers see
/// them) but stay unacknowledged upstream until the output's broker confirmed their
/// changes; after it comes back every change arrives. Cut again and shut down: the
/// notifications go back to their queue, and the next host publishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_broker_that_goes_away_holds_notifications_upstream() {
    logs();
    require_broker().await;
    let tag = unique("away");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let queue = format!("{topic}.info");
    let conn = connect().await;
    let changes_exchange = format!("{tag}.changes");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([
            exchange.clone(),
            format!("{tag}.dlx"),
            changes_exchange.clone(),
        ]);
    let mut remote = Remote::bind(&conn, &changes_exchange, &["#"]).await;
    let relay = Relay::start().await;
    let output_url = format!("amqp://guest:guest@{}/%2f", relay.addr);
    let toml = host_toml(&tag, &exchange, &topic, &output_url);
    let keys: Vec<String> = (1..=6).map(|n| uuid(0xa3a, n)).collect();
    let create = |i: usize| {
        Spec::new(V_CREATE, &exchange, &topic)
            .uuid(&keys[i])
            .at(&format!("2026-11-25 09:00:0{i}"))
    };

    // Broker away from the start: the first batch is applied (a local subscriber sees
    // it), nothing is acknowledged upstream, nothing is published; the plugin takes no
    // further batch while this one waits.
    relay.cut();
    let (sync, mut local) = start_host(&toml).await;
    publish(&[create(0), create(1), create(2)]);
    let first = local_changes(&mut local, 1).await;
    assert_eq!(
        first,
        vec![(Action::Created, format!("nova.instance:{}", keys[0]))]
    );
    wait_upstream(&queue, 0, 3).await;
    remote.expect_nothing(Duration::from_millis(500)).await;

    // Back: every change arrives, then the upstream messages are acknowledged.
    relay.restore();
    let got = remote.take(3).await;
    let mut keys_got = keys_of(&got);
    keys_got.dedup();
    assert_eq!(keys_got, instance_keys(&keys[..3]));
    wait_upstream(&queue, 0, 0).await;

    // Away while the output sits idle on a connection it has not yet seen die: the next
    // change fails to publish on it, is kept, and goes out after the reconnection.
    relay.cut();
    publish(&[create(5)]);
    wait_upstream(&queue, 0, 1).await;
    relay.restore();
    let got = remote.take(1).await;
    assert_eq!(
        summary(&got)[0].2,
        format!("nova.instance:{}", keys[5]),
        "the change whose publish failed arrives"
    );
    wait_upstream(&queue, 0, 0).await;

    // Away again, then SIGTERM's path: nothing acknowledged that was not delivered.
    relay.cut();
    publish(&[create(3), create(4)]);
    wait_upstream(&queue, 0, 2).await;
    sync.shutdown().await;
    wait_for(WAIT, "2 messages back in their queue", || async {
        ready(&conn, &queue).await == Some(2)
    })
    .await;

    // A new host with its broker back publishes them.
    relay.restore();
    let (sync, _local) = start_host(&toml).await;
    let got = remote.take(2).await;
    let keys_got = keys_of(&got);
    assert_eq!(keys_got, instance_keys(&keys[3..5]));
    assert!(got.iter().all(|r| r.body["action"] == "created"), "{got:?}");
    wait_upstream(&queue, 0, 0).await;
    sync.shutdown().await;
    drop(relay);
    close(conn).await;
}

/// A `shutdown_grace` longer than the host's default stop timeout (10 s) is honoured:
/// the host's stop timeout follows it (`Config::stop_timeout`). A batch held back at
/// shutdown by an output whose broker is away is published and acknowledged when that
/// broker comes back 11 s into the shutdown, instead of being cut off at 10 s and
/// redelivered to the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_grace_longer_than_the_default_stop_timeout_is_honoured() {
    logs();
    require_broker().await;
    let tag = unique("grace");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let queue = format!("{topic}.info");
    let conn = connect().await;
    let changes_exchange = format!("{tag}.changes");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([
            exchange.clone(),
            format!("{tag}.dlx"),
            changes_exchange.clone(),
        ]);
    let mut remote = Remote::bind(&conn, &changes_exchange, &["#"]).await;
    let relay = Relay::start().await;
    let output_url = format!("amqp://guest:guest@{}/%2f", relay.addr);
    let toml = host_toml(&tag, &exchange, &topic, &output_url)
        .replace("shutdown_grace = \"1s\"", "shutdown_grace = \"14s\"");
    let config = synchronizer::Config::from_toml(&toml).expect("host config");
    assert_eq!(config.stop_timeout(), Duration::from_secs(19));
    let key = uuid(0x9ace, 1);

    relay.cut();
    let (sync, _local) = start_host(&toml).await;
    publish(&[Spec::new(V_CREATE, &exchange, &topic)
        .uuid(&key)
        .at("2026-11-25 09:00:00")]);
    wait_upstream(&queue, 0, 1).await;
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(async move { sync.shutdown().await });
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(
        !stopping.is_finished(),
        "the host stopped before the grace ended"
    );
    relay.restore();
    let got = remote.take(1).await;
    assert_eq!(keys_of(&got), instance_keys(&[key]));
    stopping.await.expect("shutdown");
    // Acknowledged, not requeued: the next run gets nothing twice.
    assert_eq!(ready(&conn, &queue).await, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(19),
        "{:?}",
        started.elapsed()
    );
    drop(relay);
    close(conn).await;
}

/// The same hold in process isolation: the bus plugin runs in a child, and the parent
/// answers its push only once the output's broker confirmed the changes, so the child
/// acknowledges nothing upstream while that broker is away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_plugin_in_a_child_process_is_held_back_too() {
    logs();
    require_broker().await;
    let tag = unique("child");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let queue = format!("{topic}.info");
    let conn = connect().await;
    let changes_exchange = format!("{tag}.changes");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([
            exchange.clone(),
            format!("{tag}.dlx"),
            changes_exchange.clone(),
        ]);
    let mut remote = Remote::bind(&conn, &changes_exchange, &["#"]).await;
    let relay = Relay::start().await;
    let output_url = format!("amqp://guest:guest@{}/%2f", relay.addr);
    // The child is the `synchronizer` binary cargo built (the test binary is not it).
    let dir = plugin_library_dir("synchronizer_bus");
    let program = [dir.join("synchronizer"), dir.join("../synchronizer")]
        .into_iter()
        .find(|p| p.exists())
        .expect("the synchronizer binary is built: cargo build -p synchronizer");
    let child = format!(
        "isolation = \"process\"\nchild_program = {:?}",
        program.display().to_string()
    );
    let toml = host_toml_with(&tag, &exchange, &topic, &output_url, &child);
    let keys: Vec<String> = (1..=2).map(|n| uuid(0xc41d, n)).collect();

    relay.cut();
    let (sync, mut local) = start_host(&toml).await;
    assert_eq!(sync.status()[0].status.isolation.as_str(), "process");
    publish(&[
        Spec::new(V_CREATE, &exchange, &topic)
            .uuid(&keys[0])
            .at("2026-11-25 09:10:00"),
        Spec::new(V_CREATE, &exchange, &topic)
            .uuid(&keys[1])
            .at("2026-11-25 09:10:01"),
    ]);
    assert_eq!(
        local_changes(&mut local, 1).await,
        vec![(Action::Created, format!("nova.instance:{}", keys[0]))]
    );
    wait_upstream(&queue, 0, 2).await;
    remote.expect_nothing(Duration::from_millis(300)).await;

    relay.restore();
    let got = remote.take(2).await;
    let keys_got = keys_of(&got);
    assert_eq!(keys_got, instance_keys(&keys));
    wait_upstream(&queue, 0, 0).await;
    sync.shutdown().await;
    drop(relay);
    close(conn).await;
}
