//! The bus against what real deployments send and do (issue 17), with the real RabbitMQ
//! and the real oslo.messaging publisher:
//! - bodies compressed by kombu (`kombu_compression`), decompressed or refused;
//! - a dead letter of an envelope with a field of the wrong type keeps its message id;
//! - an exchange no service has declared is declared with a WARN naming it;
//! - health says "not connected to <url>: <why>" before the first connection, when the
//!   broker is unreachable and after a connection is lost.
//!
//! The logs of this binary are captured (WARN and above) so that the tests can read them.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use synchronizer_bus::Bus;
use synchronizer_bus::testing::*;
use synchronizer_test_kit::broker::*;
use synchronizer_test_kit::oslo::*;
use synchronizer_test_kit::sys::unique;
use synchronizer_test_kit::wait::wait_until;
use tokio_util::sync::CancellationToken;

const V_CREATE: &str = "nova-30/versioned_notifications.info__instance.create.end.raw.json";
const WAIT: Duration = Duration::from_secs(30);

/// Everything logged at WARN and above by this test binary.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buf.clone());
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("the only subscriber of this test binary");
        buf
    })
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        // Still shown with the test's output.
        eprint!("{}", String::from_utf8_lossy(data));
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured lines that contain every one of `words`.
fn log_lines(words: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&captured().lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(str::to_owned)
        .collect()
}

type Handle = tokio::task::JoinHandle<Result<(), synchronizer_bus::BusError>>;

fn start(bus: Arc<Bus>, sink: RecordingSink) -> (CancellationToken, Handle) {
    let stop = CancellationToken::new();
    let s = stop.clone();
    let handle = tokio::spawn(async move { bus.run(sink, s).await });
    (stop, handle)
}

async fn stop_bus(stop: CancellationToken, handle: Handle) {
    stop.cancel();
    let r = tokio::time::timeout(Duration::from_secs(15), handle)
        .await
        .expect("the bus stops within 15 s")
        .expect("the bus task does not panic");
    r.expect("the bus stops cleanly");
}

fn header(m: &lapin::message::BasicGetMessage, key: &str) -> Option<String> {
    let headers = m.delivery.properties.headers().clone().unwrap_or_default();
    match headers.inner().get(key)? {
        lapin::types::AMQPValue::LongString(s) => {
            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        other => Some(format!("{other:?}")),
    }
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// oslo.messaging with `kombu_compression = gzip` and `= bzip2`: the notifications arrive
/// as if uncompressed. `= xz` (kombu's `application/x-lzma`), a body that does not
/// decompress and a zip bomb are dead-lettered with their reasons, their compressed
/// bodies and `compression` headers kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kombu_compressed_notifications() {
    captured();
    require_broker().await;
    let tag = unique("compressed");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([exchange.clone(), format!("{tag}.dlx")]);
    let mut cfg = config(vec![subscription(&exchange, &topic)], &tag);
    cfg.max_decompressed_bytes = 1024 * 1024;
    let bus = Arc::new(Bus::new(cfg, "compressed").unwrap());
    let sink = RecordingSink::default();
    let (stop, handle) = start(bus.clone(), sink.clone());
    let (a, b, c, d) = (uuid(0xc0, 1), uuid(0xc0, 2), uuid(0xc0, 3), uuid(0xc0, 4));
    publish(&[
        Spec::new(V_CREATE, &exchange, &topic)
            .uuid(&a)
            .at("2026-11-25 08:37:41")
            .compressed("gzip"),
        Spec::new(V_CREATE, &exchange, &topic)
            .uuid(&b)
            .at("2026-11-25 08:37:42")
            .compressed("bzip2"),
        Spec::new(V_CREATE, &exchange, &topic)
            .uuid(&c)
            .at("2026-11-25 08:37:43")
            .message_id("sent-with-xz")
            .compressed("xz"),
    ]);
    let conn = connect().await;
    let rk = format!("{topic}.info");
    publish_raw_with_headers(
        &conn,
        &exchange,
        &rk,
        b"{\"not\": \"compressed\"}",
        &[("compression", "application/x-gzip")],
    )
    .await;
    // 64 MiB of JSON whitespace in 64 KiB.
    let bomb = zlib(&vec![b' '; 64 * 1024 * 1024]);
    assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
    publish_raw_with_headers(
        &conn,
        &exchange,
        &rk,
        &bomb,
        &[("compression", "application/x-gzip")],
    )
    .await;
    publish(&[Spec::new(V_CREATE, &exchange, &topic)
        .uuid(&d)
        .at("2026-11-25 08:37:44")]);

    wait_until(WAIT, "3 changes", || sink.len() >= 3).await;
    wait_until(WAIT, "3 dead letters", || bus.stats().malformed >= 3).await;
    let ids: Vec<String> = sink
        .changes()
        .iter()
        .map(|g| g.entity().id().to_owned())
        .collect();
    assert_eq!(ids, [a.clone(), b.clone(), d.clone()]);
    let first = sink.changes()[0].entity().clone();
    assert_eq!(first.name(), "vm-a1");
    assert_eq!(first.state(), Some("ACTIVE"));

    let dead = drain(&conn, &format!("{tag}.dlq")).await;
    assert_eq!(dead.len(), 3);
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| header(m, "x-synchronizer-reason").unwrap_or_default())
        .collect();
    assert!(
        reasons[0].contains("\"application/x-lzma\"") && reasons[0].contains("not supported"),
        "{}",
        reasons[0]
    );
    assert_eq!(
        header(&dead[0], "compression").as_deref(),
        Some("application/x-lzma")
    );
    assert!(
        dead[0].delivery.data.starts_with(b"\xfd7zXZ"),
        "xz body kept"
    );
    assert!(
        reasons[1].starts_with("body does not decompress as application/x-gzip"),
        "{}",
        reasons[1]
    );
    assert!(
        reasons[2].contains("decompresses to more than max_decompressed_bytes = 1048576"),
        "{}",
        reasons[2]
    );
    assert_eq!(dead[2].delivery.data, bomb, "compressed body kept");
    assert_eq!(
        header(&dead[2], "compression").as_deref(),
        Some("application/x-gzip")
    );

    stop_bus(stop, handle).await;
    assert_eq!(ready(&conn, &rk).await, Some(0), "everything acknowledged");
    let s = bus.stats();
    assert_eq!((s.received, s.changes, s.malformed), (6, 3, 3), "{s:?}");
    close(conn).await;
}

/// An envelope whose notification has a field of the wrong type fails the strict parse;
/// its dead-letter log line and copy still carry its message id (v2: inside
/// `oslo.message`; v1: at the top level; `_unique_id` without `message_id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_keep_the_message_id_of_a_badly_typed_envelope() {
    captured();
    require_broker().await;
    let tag = unique("badtype");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([exchange.clone(), format!("{tag}.dlx")]);
    let bus = Arc::new(
        Bus::new(
            config(vec![subscription(&exchange, &topic)], &tag),
            "badtype",
        )
        .unwrap(),
    );
    let sink = RecordingSink::default();
    let (stop, handle) = start(bus.clone(), sink.clone());
    wait_until(WAIT, "the consumer is up", || bus.stats().connected).await;
    let conn = connect().await;
    let rk = format!("{topic}.info");
    let id_v2 = format!("{tag}-v2");
    let id_v1 = format!("{tag}-v1");
    let unique_v2 = format!("{tag}-unique");
    let inner = serde_json::json!({
        "message_id": id_v2,
        "event_type": "instance.update",
        "timestamp": 1_795_573_576,
        "payload": {},
    });
    let v2 = serde_json::json!({"oslo.version": "2.0", "oslo.message": inner.to_string()});
    let v1 = serde_json::json!({
        "message_id": id_v1,
        "event_type": ["instance.update"],
        "timestamp": "2026-11-25 08:37:41",
        "payload": {},
    });
    let inner_unique = serde_json::json!({
        "_unique_id": unique_v2,
        "event_type": "instance.update",
        "timestamp": null,
        "publisher_id": 7,
        "payload": {},
    });
    let v2_unique =
        serde_json::json!({"oslo.version": "2.0", "oslo.message": inner_unique.to_string()});
    for body in [&v2, &v1, &v2_unique] {
        publish_raw(&conn, &exchange, &rk, body.to_string().as_bytes()).await;
    }
    wait_until(WAIT, "3 dead letters", || bus.stats().malformed >= 3).await;
    let dead = drain(&conn, &format!("{tag}.dlq")).await;
    assert_eq!(dead.len(), 3);
    let ids: Vec<Option<String>> = dead
        .iter()
        .map(|m| header(m, "x-synchronizer-message-id"))
        .collect();
    assert_eq!(
        ids,
        [
            Some(id_v2.clone()),
            Some(id_v1.clone()),
            Some(unique_v2.clone())
        ]
    );
    assert_eq!(
        header(&dead[0], "x-synchronizer-event-type").as_deref(),
        Some("instance.update")
    );
    assert_eq!(header(&dead[1], "x-synchronizer-event-type"), None);
    for id in [&id_v2, &id_v1, &unique_v2] {
        let lines = log_lines(&[
            "malformed message dead-lettered",
            &format!("message_id=\"{id}\""),
        ]);
        assert_eq!(
            lines.len(),
            1,
            "one WARN line with message_id={id}: {lines:?}"
        );
        assert!(lines[0].contains(" WARN "), "{}", lines[0]);
    }
    // The `publisher_id` of the wrong type does not matter (not read); the null
    // timestamp does.
    assert!(
        header(&dead[2], "x-synchronizer-reason")
            .unwrap_or_default()
            .contains("no `timestamp`")
    );
    stop_bus(stop, handle).await;
    close(conn).await;
}

/// A subscription to an exchange nobody has declared (Cinder's `cinder`, when Cinder
/// publishes on `openstack`): the bus declares it and says so at WARN, naming it and
/// oslo's `control_exchange`; an exchange a publisher declared gives no such warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_no_service_declared_is_a_warning() {
    captured();
    require_broker().await;
    let tag = unique("noexchange");
    let missing = format!("cinder-{tag}");
    let existing = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([existing.clone(), missing.clone(), format!("{tag}.dlx")]);
    // oslo declares `existing` (and its queues) when it publishes.
    publish(&[Spec::new(V_CREATE, &existing, &topic)
        .uuid(&uuid(0xe0, 1))
        .at("2026-11-25 08:37:41")]);
    let conn = connect().await;
    let bus = Arc::new(
        Bus::new(
            config(
                vec![
                    subscription(&existing, &topic),
                    subscription(&missing, &topic),
                ],
                &tag,
            ),
            "noexchange",
        )
        .unwrap(),
    );
    let sink = RecordingSink::default();
    let (stop, handle) = start(bus.clone(), sink.clone());
    wait_until(WAIT, "the consumer is up", || bus.stats().connected).await;
    wait_until(WAIT, "the notification", || !sink.is_empty()).await;
    let warned = log_lines(&[&format!("exchange `{missing}` did not exist")]);
    assert_eq!(warned.len(), 1, "{warned:?}");
    let line = &warned[0];
    assert!(line.contains(" WARN "), "{line}");
    assert!(
        line.contains("control_exchange") && line.contains("`openstack`"),
        "{line}"
    );
    assert!(
        line.contains(&format!("exchange=\"{missing}\""))
            || line.contains(&format!("exchange={missing}")),
        "{line}"
    );
    assert!(
        log_lines(&[&format!("exchange `{existing}` did not exist")]).is_empty(),
        "no warning for the exchange oslo declared"
    );
    assert!(bus.health().healthy, "{:?}", bus.health());
    stop_bus(stop, handle).await;
    let h = bus.health();
    assert!(
        !h.healthy
            && h.message
                .starts_with("not connected to amqp://guest:***@127.0.0.1:5672/%2f: stopped"),
        "{h:?}"
    );

    // It exists now: a second start does not warn again.
    let (stop, handle) = start(bus.clone(), sink.clone());
    wait_until(WAIT, "the consumer is up again", || {
        bus.stats().connected && bus.stats().connections == 2
    })
    .await;
    assert_eq!(
        log_lines(&[&format!("exchange `{missing}` did not exist")]).len(),
        1
    );
    stop_bus(stop, handle).await;
    close(conn).await;
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Pointed at a closed port, the bus is unhealthy from the start and stays so, saying
/// which broker (redacted) and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_when_never_connected() {
    captured();
    let port = closed_port();
    let url = format!("amqp://guest:s3cret-pw@127.0.0.1:{port}/%2f");
    let mut cfg = config(vec![subscription("nova", "x")], &unique("never"));
    cfg.urls = vec![url];
    let bus = Arc::new(Bus::new(cfg, "never").unwrap());
    let shown = format!("not connected to amqp://guest:***@127.0.0.1:{port}/%2f: ");

    // Before `run`: what the host sees if it asks at once.
    let h = bus.health();
    assert!(!h.healthy);
    assert!(
        h.message
            .starts_with(&format!("{shown}no connection established yet")),
        "{}",
        h.message
    );

    let (stop, handle) = start(bus.clone(), RecordingSink::default());
    wait_until(WAIT, "a failed attempt in health", || {
        bus.health().message.to_lowercase().contains("refused")
    })
    .await;
    for _ in 0..5 {
        let h = bus.health();
        assert!(!h.healthy, "{h:?}");
        assert!(h.message.starts_with(&shown), "{}", h.message);
        assert!(!h.message.contains("s3cret-pw"), "{}", h.message);
        // Not "cannot connect to <url>: " again after "not connected to <url>: ".
        assert!(!h.message.contains("cannot connect to"), "{}", h.message);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(bus.stats().connections, 0);
    stop_bus(stop, handle).await;
    assert!(!bus.health().healthy);
}

/// A TCP relay to the test broker that can be cut: its connections are closed and its
/// port stops listening.
struct Relay {
    port: u16,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start() -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                    }
                });
                t.lock().unwrap().push(relay);
            }
        });
        tasks.lock().unwrap().push(accept);
        Relay { port, tasks }
    }

    /// Closes every relayed connection and the listening port.
    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// Healthy while consuming; once the connection is lost (and the broker's port no
/// longer answers) unhealthy with "not connected to <url>: <why>".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_after_losing_the_connection() {
    captured();
    require_broker().await;
    let relay = Relay::start().await;
    let tag = unique("lose");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let _cleanup = Cleanup::new()
        .queues([
            format!("{topic}.info"),
            format!("{topic}.error"),
            format!("{tag}.dlq"),
        ])
        .exchanges([exchange.clone(), format!("{tag}.dlx")]);
    let mut cfg = config(vec![subscription(&exchange, &topic)], &tag);
    cfg.urls = vec![format!("amqp://guest:guest@127.0.0.1:{}/%2f", relay.port)];
    let bus = Arc::new(Bus::new(cfg, "lose").unwrap());
    assert!(!bus.health().healthy);
    let (stop, handle) = start(bus.clone(), RecordingSink::default());
    wait_until(WAIT, "healthy", || bus.health().healthy).await;
    assert_eq!(bus.stats().connections, 1);

    relay.cut();
    // (The relay's port: a cut relay refuses, like a broker that went away.)
    let shown = format!(
        "not connected to amqp://guest:***@127.0.0.1:{}/%2f: ",
        relay.port
    );
    wait_until(WAIT, "unhealthy after the loss", || !bus.health().healthy).await;
    let h = bus.health();
    assert!(h.message.starts_with(&shown), "{}", h.message);
    // Then reconnection attempts fail: still unhealthy, now with the refused connection.
    wait_until(WAIT, "a refused reconnection in health", || {
        bus.health().message.to_lowercase().contains("refused")
    })
    .await;
    let h = bus.health();
    assert!(!h.healthy && h.message.starts_with(&shown), "{h:?}");
    assert!(!h.message.contains("guest:guest"), "{}", h.message);
    stop_bus(stop, handle).await;
    // Stopped while reconnecting: the last failure stays the reason.
    let h = bus.health();
    assert!(!h.healthy && h.message.starts_with(&shown), "{h:?}");
}
