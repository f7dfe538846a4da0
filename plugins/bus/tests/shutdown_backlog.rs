//! Shutdown loses nothing (issue 11, item 5): a backlog on the real RabbitMQ, consumed
//! by the bus plugin `.so` in the real host, stopped in the middle of the catch-up.
//!
//! - `sigterm_during_catch_up_loses_nothing`: 50,000 queued notifications (`BACKLOG`
//!   overrides the number), the real `synchronizer` binary printing changes on stdout
//!   with an SSE client on `GET /v1/changes`; SIGTERM once some thousands were printed,
//!   restart, again, until the queue is empty (at least 3 SIGTERMs mid-catch-up). Every
//!   notification's entity appears on stdout, each run's SSE stream saw exactly what
//!   that run printed, and the queue ends empty: nothing was acknowledged unseen.
//!   Duplicates (at-least-once) are counted and printed.
//! - `shutdown_mid_catch_up_delivers_every_acked_change_to_a_callback`: an embedded host
//!   with a callback subscriber fed from a backlog of 10,000, `Synchronizer::shutdown`
//!   mid-catch-up: every notification is either still in the queue or was given to the
//!   callback before `shutdown` returned. (With the callback cancelled before
//!   `shutdown`, as the old order did, 256 of them, the prefetch, were acknowledged and
//!   never seen.)
//!
//! The first test takes about a minute in a debug build (the queue fills at about 2,500
//! notifications a second, the binary drains about 1,200 a second, on a loaded 2-core
//! machine), so it is `#[ignore]`d in a plain `cargo test`; `scripts/test.sh` runs it:
//! `cargo test -p synchronizer-bus --test shutdown_backlog -- --ignored`.
//!
//! The first notifications are sent by the real oslo.messaging Notifier
//! (`scripts/oslo/publish.py`), which proves the format and declares the queue as Nova
//! would; the bulk is published with lapin, in the same envelope (the captured versioned
//! `instance.update` body with its own message id, `_unique_id` and instance uuid each,
//! like `benches/drain.rs`), because the Python publisher is slow (1,000 took 6 s here).
//!
//! The binary is `target/debug/synchronizer`: `scripts/test.sh` builds it first; alone,
//! `cargo build -p synchronizer --bin synchronizer` before
//! `cargo test -p synchronizer-bus --test shutdown_backlog`.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use synchronizer::{Event, SubscribeOptions, Synchronizer};
use synchronizer_bus::testing::*;
use synchronizer_test_kit::broker::*;
use synchronizer_test_kit::oslo::*;
use synchronizer_test_kit::paths::binary;
use synchronizer_test_kit::paths::plugin_library_dir;
use synchronizer_test_kit::sys::unique;
use tokio::sync::watch;

const V_UPDATE: &str = "nova-30/versioned_notifications.info__instance.update.raw.json";
/// Notifications sent with the real oslo.messaging Notifier (the rest with lapin).
const OSLO_SAMPLE: u32 = 50;
/// The uuid prefix of this file's instances (`uuid(PREFIX, i)` is notification `i`).
const PREFIX: u32 = 0x5d0b;
const WAIT: Duration = Duration::from_secs(60);

fn backlog() -> u32 {
    std::env::var("BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000)
}

/// The index `i` of an instance uuid of this file, `uuid(PREFIX, i)`.
fn index_of(id: &str) -> Option<u32> {
    let (head, tail) = id.rsplit_once('-')?;
    head.starts_with(&format!("{PREFIX:08x}-"))
        .then(|| u32::from_str_radix(tail, 16).ok())
        .flatten()
}

/// Notification bodies in the oslo 2.0 envelope: the captured versioned
/// `instance.update`, with message id, `_unique_id` and instance uuid of their own. The
/// envelope is serialised once, with placeholders: serialising 50,000 bodies takes longer
/// than publishing them in a debug build.
struct Bodies {
    template: String,
}

impl Bodies {
    const UUID: &str = "@@uuid@@";
    const MESSAGE_ID: &str = "@@message-id@@";
    const UNIQUE_ID: &str = "@@unique-id@@";

    fn new() -> Self {
        let raw = std::fs::read_to_string(fixture(V_UPDATE)).expect("fixture");
        let outer: serde_json::Value = serde_json::from_str(&raw).expect("fixture is JSON");
        let mut n: serde_json::Value =
            serde_json::from_str(outer["oslo.message"].as_str().expect("envelope"))
                .expect("inner notification");
        n["message_id"] = Self::MESSAGE_ID.into();
        n["_unique_id"] = Self::UNIQUE_ID.into();
        n["payload"]["nova_object.data"]["uuid"] = Self::UUID.into();
        let template =
            serde_json::json!({"oslo.version": "2.0", "oslo.message": n.to_string()}).to_string();
        for p in [Self::UUID, Self::MESSAGE_ID, Self::UNIQUE_ID] {
            assert_eq!(template.matches(p).count(), 1, "{p} once in the template");
        }
        Bodies { template }
    }

    fn body(&self, i: u32) -> Vec<u8> {
        let id = uuid(PREFIX, i);
        self.template
            .replace(Self::UUID, &id)
            .replace(Self::MESSAGE_ID, &format!("m-{id}"))
            .replace(Self::UNIQUE_ID, &format!("u{PREFIX:08x}{i:024x}"))
            .into_bytes()
    }
}

/// Publishes notifications `range` to `exchange` with `routing_key`, waiting for every
/// publisher confirm.
async fn fill(ch: &Channel, exchange: &str, routing_key: &str, range: std::ops::Range<u32>) {
    let bodies = Bodies::new();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut pending = Vec::with_capacity(1000);
    for i in range {
        pending.push(
            ch.basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions::default(),
                &bodies.body(i),
                BasicProperties::default().with_content_type("application/json".into()),
            )
            .await
            .expect("publish"),
        );
        if pending.len() == 1000 {
            for c in pending.drain(..) {
                assert!(c.await.expect("confirm").is_ack(), "the broker nacked");
            }
        }
    }
    for c in pending {
        assert!(c.await.expect("confirm").is_ack(), "the broker nacked");
    }
}

/// A queue of `n` notifications for this test's instances: the first `OSLO_SAMPLE` from
/// the real oslo.messaging Notifier (which declares the queue), the rest with lapin.
/// Returns the queue's name.
async fn queue_backlog(conn: &lapin::Connection, exchange: &str, topic: &str, n: u32) -> String {
    let sample = OSLO_SAMPLE.min(n);
    let specs: Vec<Spec> = (0..sample)
        .map(|i| Spec::new(V_UPDATE, exchange, topic).uuid(&uuid(PREFIX, i)))
        .collect();
    publish(&specs);
    let queue = format!("{topic}.info");
    assert_eq!(
        ready(conn, &queue).await,
        Some(sample),
        "oslo's Notifier declared the queue and queued its notifications"
    );
    let ch = conn.create_channel().await.expect("channel");
    let t = Instant::now();
    fill(&ch, exchange, &queue, sample..n).await;
    let _ = ch.close(200, "done").await;
    assert_eq!(ready(conn, &queue).await, Some(n), "the backlog is queued");
    println!(
        "backlog: {n} notifications queued ({sample} by oslo.messaging) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    queue
}

/// The bus instance's configuration table (TOML) for this test's exchange and topic.
fn bus_instance(tag: &str, exchange: &str, topic: &str) -> String {
    format!(
        r#"
[[instances]]
name = "bus"
library = "libsynchronizer_bus.so"
[instances.config]
urls = ["{BROKER}"]
families = ["nova-versioned"]
priorities = ["info"]
connection_name = "{tag}"
reconnect_initial = "50ms"
reconnect_max = "500ms"
[instances.config.dead_letter]
exchange = "{tag}.dlx"
queue = "{tag}.dlq"
durable = false
[[instances.config.subscriptions]]
exchange = "{exchange}"
topics = ["{topic}"]
"#
    )
}

/// What one consumer (stdout or SSE) saw in one run.
#[derive(Default)]
struct Seen {
    /// The index of every change's entity, in order.
    changes: Vec<u32>,
    /// The indices of entities sent in snapshots (after a resync).
    snapshot: HashSet<u32>,
    resyncs: usize,
    /// Entities of no instance of this test (none expected).
    strangers: usize,
    /// The highest `seq`.
    last_seq: u64,
}

impl Seen {
    /// Takes one JSON line (a stdout line, an SSE `data`).
    fn take(&mut self, line: &str) {
        // host/src/output.rs: a change or a snapshot line carries the entity's fields.
        #[derive(serde::Deserialize)]
        struct Line {
            action: String,
            id: Option<String>,
            seq: Option<u64>,
        }
        let line: Line = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a notification line ({e}): {line}"));
        if line.action == "resync" {
            self.resyncs += 1;
        }
        let Some(id) = line.id else { return };
        let Some(i) = index_of(&id) else {
            self.strangers += 1;
            return;
        };
        if line.action == "snapshot" {
            self.snapshot.insert(i);
        } else {
            self.changes.push(i);
            self.last_seq = self.last_seq.max(line.seq.unwrap_or(0));
        }
    }

    /// Every entity this consumer saw.
    fn entities(&self) -> HashSet<u32> {
        self.changes
            .iter()
            .copied()
            .chain(self.snapshot.iter().copied())
            .collect()
    }
}

/// One run of the binary with its three readers.
struct Run {
    child: Guard,
    stdout: std::thread::JoinHandle<Seen>,
    stderr: std::thread::JoinHandle<Vec<String>>,
    sse: std::thread::JoinHandle<Seen>,
    /// Changes printed on stdout so far.
    printed: watch::Receiver<usize>,
    /// Whether the SSE stream is open (its response headers arrived).
    sse_open: watch::Receiver<bool>,
}

impl Run {
    fn start(config: &std::path::Path) -> Run {
        let mut child = Command::new(binary())
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the synchronizer binary starts");
        let (printed_tx, printed) = watch::channel(0usize);
        let out = child.stdout.take().expect("piped stdout");
        let stdout = std::thread::spawn(move || {
            let mut seen = Seen::default();
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                seen.take(&line);
                printed_tx.send_replace(seen.changes.len());
            }
            seen
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
        let err = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut kept = Vec::new();
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let fields = &log["fields"];
                if fields["message"] == "HTTP API listening"
                    && let Some(addr) = fields["listen"].as_str().and_then(|a| a.parse().ok())
                {
                    let _ = addr_tx.send(addr);
                }
                if log["level"] != "INFO" || fields["message"] == "shutting down" {
                    kept.push(line);
                }
            }
            kept
        });
        let (open_tx, sse_open) = watch::channel(false);
        let sse = std::thread::spawn(move || {
            let mut seen = Seen::default();
            // The API's own address, from its log line: readiness, not a guessed port.
            let Ok(addr) = addr_rx.recv_timeout(WAIT) else {
                return seen;
            };
            let mut conn = std::net::TcpStream::connect(addr).expect("connect to the HTTP API");
            // HTTP/1.0: the stream's end is the connection's. `Last-Event-ID: 0` asks for
            // every change of this run (from the replay window, or a resync and a snapshot).
            write!(
                conn,
                "GET /v1/changes HTTP/1.0\r\nHost: {addr}\r\nLast-Event-ID: 0\r\n\r\n"
            )
            .expect("send the request");
            let mut reader = BufReader::new(conn);
            let mut status = String::new();
            reader.read_line(&mut status).expect("status line");
            assert!(status.contains(" 200 "), "GET /v1/changes: {status}");
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).expect("headers");
                if header.trim().is_empty() {
                    break;
                }
            }
            open_tx.send_replace(true);
            // Until the server ends the stream (after the host's drain).
            for line in reader.lines() {
                let line = line.expect("the stream is read to its end");
                if let Some(data) = line.strip_prefix("data: ") {
                    seen.take(data);
                }
            }
            seen
        });
        Run {
            child: Guard(Some(child)),
            stdout,
            stderr,
            sse,
            printed,
            sse_open,
        }
    }

    /// Waits until the SSE stream is open and `n` changes were printed (or the process
    /// ended).
    async fn printed_at_least(&mut self, n: usize) {
        let open = tokio::time::timeout(WAIT, self.sse_open.wait_for(|o| *o))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(open, "the SSE stream did not open within {WAIT:?}");
        let printed = tokio::time::timeout(WAIT, self.printed.wait_for(|p| *p >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            printed,
            "{} changes printed within {WAIT:?}, waiting for {n}",
            *self.printed.borrow()
        );
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child.0 {
            let pid = libc::pid_t::try_from(child.id()).expect("pid");
            // SAFETY: kill(2) on the process this test started and has not reaped.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Waits for the process to exit; returns its status and what its readers saw.
    async fn finish(mut self) -> (std::process::ExitStatus, Seen, Seen, Vec<String>) {
        let mut child = self.child.0.take().expect("running");
        let pid = child.id();
        let waited =
            tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || child.wait())).await;
        let status = match waited {
            Ok(Ok(Ok(status))) => status,
            other => {
                // SAFETY: kill(2) on the process this test started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                panic!("the synchronizer did not exit within {WAIT:?} of SIGTERM: {other:?}")
            }
        };
        let Run {
            stdout,
            stderr,
            sse,
            ..
        } = self;
        let stdout = stdout.join().expect("stdout reader");
        let sse = sse.join().expect("SSE reader");
        let logs = stderr.join().expect("stderr reader");
        (status, stdout, sse, logs)
    }
}

/// The process of a run: taken by [`Run::finish`], killed on drop otherwise (when the
/// test fails).
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about 65 s in a debug build (50,000 notifications); scripts/test.sh runs it with --ignored"]
async fn sigterm_during_catch_up_loses_nothing() {
    logs();
    require_broker().await;
    let n = backlog();
    let tag = unique("sigterm");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let _cleanup = Cleanup::new()
        .queues([format!("{topic}.info"), format!("{tag}.dlq")])
        .exchanges([exchange.clone(), format!("{tag}.dlx")]);
    let conn = connect().await;
    let queue = queue_backlog(&conn, &exchange, &topic, n).await;

    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("synchronizer.toml");
    std::fs::write(
        &config,
        format!(
            "plugins_dir = \"{}\"\nplugin_log_level = \"warn\"\n[http]\nlisten = \"127.0.0.1:0\"\nreplay = 100000\n{}",
            plugin_library_dir("synchronizer_bus").display(),
            bus_instance(&tag, &exchange, &topic)
        ),
    )
    .expect("config file");

    // SIGTERM after this many changes in a run: about 8 runs for 50,000.
    let per_run = (n as usize / 8).max(1_000);
    let mut seen_by_run: Vec<Vec<u32>> = Vec::new();
    let mut everything: HashSet<u32> = HashSet::new();
    let mut mid_catch_up = 0;
    let started = Instant::now();
    loop {
        let round = seen_by_run.len() + 1;
        assert!(round <= 40, "the queue is not drained after 40 runs");
        let left_before = ready(&conn, &queue).await.expect("queue") as usize;
        // The last run takes all that is left (each message is a change of its own
        // entity: a fresh host reports it `created`); the others stop in the middle.
        let last = left_before < per_run + per_run / 2;
        let want = if last { left_before } else { per_run };
        let t = Instant::now();
        let mut run = Run::start(&config);
        run.printed_at_least(want).await;
        let at_sigterm = t.elapsed();
        run.signal(libc::SIGTERM);
        let t_term = Instant::now();
        let (status, stdout, sse, logs) = run.finish().await;
        let stop_took = t_term.elapsed();
        assert!(
            status.success(),
            "run {round} did not exit cleanly on SIGTERM ({status}):\n{}",
            logs.join("\n")
        );
        assert_eq!(
            stdout.strangers + sse.strangers,
            0,
            "entities of no test instance"
        );
        let printed = stdout.entities();
        let streamed = sse.entities();
        assert!(
            printed == streamed,
            "run {round}: the SSE stream and stdout disagree: {} on stdout only, {} on SSE only; logs:\n{}",
            printed.difference(&streamed).count(),
            streamed.difference(&printed).count(),
            logs.join("\n")
        );
        assert_eq!(
            sse.last_seq, stdout.last_seq,
            "run {round}: the SSE stream ended before the last change printed"
        );
        let left = wait_queue_settled(&conn, &queue).await;
        if left > 0 && !last {
            mid_catch_up += 1;
        }
        println!(
            "run {round}: {} changes printed ({} entities), SSE {} changes + {} in snapshots ({} resyncs, stdout {} resyncs); SIGTERM {:.2} s after the start, exit {:.2} s after it; {left} left in the queue",
            stdout.changes.len(),
            printed.len(),
            sse.changes.len(),
            sse.snapshot.len(),
            sse.resyncs,
            stdout.resyncs,
            at_sigterm.as_secs_f64(),
            stop_took.as_secs_f64(),
        );
        everything.extend(&printed);
        seen_by_run.push(stdout.changes);
        if left == 0 {
            break;
        }
    }
    let missing: Vec<u32> = (0..n).filter(|i| !everything.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "{} notifications were acknowledged but never printed (first: {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(ready(&conn, &queue).await, Some(0), "the queue is drained");
    assert!(
        mid_catch_up >= 3,
        "only {mid_catch_up} SIGTERMs came in the middle of the catch-up"
    );
    let mut times = vec![0u32; n as usize];
    for i in seen_by_run.iter().flatten() {
        times[*i as usize] += 1;
    }
    let duplicates: usize = times.iter().map(|t| t.saturating_sub(1) as usize).sum();
    println!(
        "{n} notifications over {} runs ({mid_catch_up} SIGTERMs mid-catch-up) in {:.1} s: every one printed, {duplicates} printed more than once",
        seen_by_run.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    close(conn).await;
}

/// The messages ready in `queue` once the broker has taken back what a stopped
/// consumer left unacknowledged: it drops the consumer when it requeues its messages.
async fn wait_queue_settled(conn: &lapin::Connection, queue: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (messages, consumers) = counts(conn, queue).await.expect("queue");
        if consumers == 0 {
            return messages;
        }
        assert!(
            Instant::now() < deadline,
            "the stopped consumer is still registered on `{queue}`"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_catch_up_delivers_every_acked_change_to_a_callback() {
    logs();
    require_broker().await;
    let n = (backlog() / 5).max(2_000);
    let tag = unique("callback");
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let _cleanup = Cleanup::new()
        .queues([format!("{topic}.info"), format!("{tag}.dlq")])
        .exchanges([exchange.clone(), format!("{tag}.dlx")]);
    let conn = connect().await;
    let queue = queue_backlog(&conn, &exchange, &topic, n).await;

    let toml = format!(
        "plugins_dir = \"{}\"\nplugin_log_level = \"warn\"\n{}",
        plugin_library_dir("synchronizer_bus").display(),
        bus_instance(&tag, &exchange, &topic)
    );
    let config = synchronizer::Config::from_toml(&toml).expect("host config");
    let sync = Synchronizer::start(config).await.expect("the host starts");
    let got: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (count_tx, mut count) = watch::channel(0usize);
    let mut options = SubscribeOptions::types(&["nova.instance"]);
    // The bus may push before this subscription exists: the snapshot has those.
    options.initial_snapshot = true;
    let callback = {
        let got = got.clone();
        sync.subscribe_callback(&options, move |event| {
            let mut got = got.lock().unwrap();
            match event {
                Event::Change(c) => got.extend(index_of(c.entity.id())),
                Event::Snapshot(entities) => {
                    got.extend(entities.iter().filter_map(|e| index_of(e.id())))
                }
                Event::Resync(_) => {}
            }
            count_tx.send_replace(got.len());
        })
        .expect("callback subscription")
    };
    let third = n as usize / 3;
    // (The watch's guard is dropped at once: the callback updates it under its lock.)
    let reached = tokio::time::timeout(WAIT, count.wait_for(|c| *c >= third))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(reached, "the callback did not see {third} changes");
    let t = Instant::now();
    sync.shutdown().await;
    let took = t.elapsed();
    // Taken before the callback is cancelled: shutdown returned once it had seen all.
    let at_return: HashSet<u32> = got.lock().unwrap().iter().copied().collect();
    callback.cancel();
    let after_cancel: HashSet<u32> = got.lock().unwrap().iter().copied().collect();
    assert_eq!(
        at_return.len(),
        after_cancel.len(),
        "the callback was still being called after shutdown returned"
    );

    let left = wait_queue_settled(&conn, &queue).await;
    let rest = drain(&conn, &queue).await;
    let mut in_queue = HashSet::new();
    for m in &rest {
        let outer: serde_json::Value = serde_json::from_slice(&m.data).expect("a body");
        let inner: serde_json::Value =
            serde_json::from_str(outer["oslo.message"].as_str().expect("envelope"))
                .expect("a notification");
        let id = inner["payload"]["nova_object.data"]["uuid"]
            .as_str()
            .expect("uuid");
        in_queue.insert(index_of(id).expect("an instance of this test"));
    }
    assert_eq!(
        in_queue.len(),
        rest.len(),
        "each notification is queued once"
    );
    assert!(left > 0, "shutdown came after the catch-up, not during it");
    let lost: Vec<u32> = (0..n)
        .filter(|i| !at_return.contains(i) && !in_queue.contains(i))
        .collect();
    assert!(
        lost.is_empty(),
        "{} notifications were acknowledged but never given to the callback (first: {:?})",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let both = at_return.intersection(&in_queue).count();
    println!(
        "callback: {} of {n} seen when shutdown was called mid-catch-up; shutdown took {:.2} s; {} left in the queue, {both} of them seen already (delivered again later)",
        at_return.len(),
        took.as_secs_f64(),
        in_queue.len()
    );
    close(conn).await;
}
