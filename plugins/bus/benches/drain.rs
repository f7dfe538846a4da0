//! Throughput and latency of the bus plugin, end to end through the plugin `.so` loaded
//! by the real host, against the real RabbitMQ.
//!
//! ```text
//! scripts/rabbitmq/ensure.sh        # as root, once
//! cargo bench -p synchronizer-bus --bench drain
//! ```
//!
//! 1. Drain: a queue is filled with `BENCH_MESSAGES` (100,000) real-format notifications
//!    (the captured versioned `instance.update` body in its oslo envelope, each with its
//!    own message id and instance uuid). A bare lapin consumer (the plugin's default prefetch, one
//!    `multiple` ack per 128 messages, no parsing) drains it; the queue is filled again
//!    and the host, with the bus plugin loaded from its `.so`, drains it to a subscriber
//!    callback. Both rates are timed from when consuming starts (the plugin's time to
//!    load, start and connect is printed apart). `BENCH_ROUNDS` (3) alternating rounds;
//!    the target is best plugin rate ≥ 0.8 × best bare rate.
//! 2. Latency: notifications are published at a steady `BENCH_RATE` (1,000/s) for
//!    `BENCH_LATENCY_SECS` (10 s); the time from each publish to the subscriber callback
//!    that sees its change is recorded. The target is p99 ≤ 5 ms.
//!
//! 3. `BENCH_CONSUMER=stdout` or `sse`: the drain end to end through the release binary
//!    (`cargo build --release -p synchronizer` first), as a user of the service has it:
//!    `synchronizer run`'s stdout JSON lines read from the pipe, or an SSE client on
//!    `GET /v1/changes?snapshot=true`; timed from the first change read. Target ≥ 0.9 ×
//!    the bare consumer; no latency run.
//!
//! Other knobs: `BENCH_SKIP_DRAIN=1` (latency only); `BENCH_OUTPUT=1` (every change also
//! published by an AMQP output, upstream acks waiting for its confirmations);
//! `BENCH_BASELINE=1` (with `baseline_file`: every batch committed to the durable store
//! before it is announced and acknowledged; throughput target ≥ 0.6 × bare, no latency
//! target). Exits 1
//! when a target is missed. Without `--bench` (as `cargo test --benches` runs it) it
//! does nothing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use synchronizer::{Event, SubscribeOptions, Synchronizer};
use synchronizer_test_kit::broker::BROKER;
use synchronizer_test_kit::paths::plugin_library_dir;
use synchronizer_test_kit::sys::env_or;

const FIXTURE: &str = include_str!(
    "../tests/fixtures/nova-30/versioned_notifications.info__instance.update.raw.json"
);

/// Real-format bodies: the captured envelope with a fresh message id, `_unique_id` and
/// instance uuid (`...-<i>`), so every message is a distinct change.
struct Bodies {
    inner: serde_json::Value,
}

impl Bodies {
    fn new() -> Self {
        let outer: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture");
        let inner = serde_json::from_str(outer["oslo.message"].as_str().expect("envelope"))
            .expect("inner notification");
        Bodies { inner }
    }

    fn body(&self, run: u32, i: u64) -> Vec<u8> {
        let mut n = self.inner.clone();
        let id = uuid(run, i);
        n["message_id"] = format!("m-{id}").into();
        n["_unique_id"] = format!("u{run:08x}{i:024x}").into();
        n["payload"]["nova_object.data"]["uuid"] = id.into();
        serde_json::json!({"oslo.version": "2.0", "oslo.message": n.to_string()})
            .to_string()
            .into_bytes()
    }
}

fn uuid(run: u32, i: u64) -> String {
    format!("{run:08x}-0000-4000-8000-{i:012x}")
}

fn index_of(id: &str) -> Option<usize> {
    usize::from_str_radix(id.rsplit('-').next()?, 16).ok()
}

async fn connect() -> Connection {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    Connection::connect(BROKER, props)
        .await
        .unwrap_or_else(|e| {
            eprintln!(
                "RabbitMQ is not reachable at 127.0.0.1:5672 ({e}): run scripts/rabbitmq/ensure.sh"
            );
            std::process::exit(2)
        })
}

async fn declare(ch: &Channel, exchange: &str, queue: &str) {
    ch.exchange_declare(
        exchange,
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange");
    ch.queue_declare(queue, QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("queue");
    ch.queue_bind(
        queue,
        exchange,
        queue,
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
}

/// Fills `queue` with `n` bodies, waiting for every publisher confirm.
async fn fill(ch: &Channel, exchange: &str, queue: &str, bodies: &Bodies, run: u32, n: u64) {
    let mut pending = Vec::with_capacity(1000);
    for i in 0..n {
        let body = bodies.body(run, i);
        pending.push(
            ch.basic_publish(
                exchange,
                queue,
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .expect("publish"),
        );
        if pending.len() == 1000 {
            for c in pending.drain(..) {
                c.await.expect("confirm");
            }
        }
    }
    for c in pending {
        c.await.expect("confirm");
    }
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
        .expect("passive declare");
    assert_eq!(u64::from(q.message_count()), n, "queue filled");
}

/// The bare consumer: the bus plugin's default prefetch, one multiple ack per 128
/// messages (its default batch size).
async fn bare_drain(conn: &Connection, queue: &str, n: u64) -> Duration {
    let ch = conn.create_channel().await.expect("channel");
    let prefetch = synchronizer_bus::config::Config::with_urls(Vec::<String>::new()).prefetch;
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    let start = Instant::now();
    let mut consumer = ch
        .basic_consume(
            queue,
            "bare",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut seen = 0u64;
    while let Some(d) = consumer.next().await {
        let d = d.expect("delivery");
        seen += 1;
        if seen % 128 == 0 || seen == n {
            d.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .expect("ack");
        }
        if seen == n {
            break;
        }
    }
    let elapsed = start.elapsed();
    let _ = ch.close(200, "done").await;
    elapsed
}

static STORES: AtomicUsize = AtomicUsize::new(0);

fn host_config(exchange: &str, topic: &str, tag: &str) -> synchronizer::Config {
    synchronizer::Config::from_toml(&host_toml(exchange, topic, tag, "")).expect("host config")
}

/// The host's configuration, `extra` appended (an `[http]` table).
fn host_toml(exchange: &str, topic: &str, tag: &str, extra: &str) -> String {
    // BENCH_OUTPUT=1: every change also goes to an AMQP output on the same broker, and
    // each batch is acknowledged upstream only once the broker confirmed its changes.
    let output = if std::env::var_os("BENCH_OUTPUT").is_some() {
        format!("[[outputs.amqp]]\nurl = \"{BROKER}\"\nexchange = \"{tag}.changes\"\n")
    } else {
        String::new()
    };
    // BENCH_BASELINE=1: a durable store, fresh for each host (commit before announce).
    let store = if std::env::var_os("BENCH_BASELINE").is_some() {
        let file = std::env::temp_dir().join(format!(
            "synchronizer-drain-{}-{}.redb",
            std::process::id(),
            STORES.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_file(&file);
        format!("baseline_file = {:?}\n", file.display().to_string())
    } else {
        String::new()
    };
    let toml = format!(
        r#"
plugins_dir = "{dir}"
plugin_log_level = "warn"
subscriber_queue = 1000000
{store}
{output}
[[instances]]
name = "bus"
library = "libsynchronizer_bus.so"
[instances.config]
urls = ["{BROKER}"]
families = ["nova-versioned"]
priorities = ["info"]
connection_name = "{tag}"
dead_letter = {{ exchange = "{tag}.dlx", queue = "{tag}.dlq", durable = false }}
[[instances.config.subscriptions]]
exchange = "{exchange}"
topics = ["{topic}"]
{extra}
"#,
        dir = plugin_library_dir("synchronizer_bus").display()
    );
    toml
}

/// Where the drained changes go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Consumer {
    /// A subscriber callback in this process (the host embedded).
    Callback,
    /// The release binary's stdout (`synchronizer run`), read from the pipe.
    Stdout,
    /// The release binary's `GET /v1/changes?snapshot=true`, read by an SSE client.
    Sse,
}

impl Consumer {
    fn from_env() -> Consumer {
        match std::env::var("BENCH_CONSUMER").as_deref() {
            Ok("stdout") => Consumer::Stdout,
            Ok("sse") => Consumer::Sse,
            Ok("callback") | Err(_) => Consumer::Callback,
            Ok(other) => panic!("BENCH_CONSUMER={other}: callback, stdout or sse"),
        }
    }
}

/// The release binary beside the plugin (`cargo build --release -p synchronizer`).
fn binary() -> std::path::PathBuf {
    let dir = plugin_library_dir("synchronizer_bus");
    match [dir.join("synchronizer"), dir.join("../synchronizer")]
        .into_iter()
        .find(|p| p.exists())
    {
        Some(p) => p,
        None => panic!(
            "no synchronizer binary in or above {}: cargo build --release -p synchronizer",
            dir.display()
        ),
    }
}

/// Drains the pre-filled queue through the real binary, read as a user of the service
/// reads it: its stdout lines from the pipe, or an SSE client on its HTTP API. Returns
/// messages per second from the first change read on.
async fn binary_drain(
    exchange: &str,
    topic: &str,
    tag: &str,
    n: u64,
    consumer: Consumer,
) -> Option<f64> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // The HTTP API serves the SSE consumer, and for both the plugin's counters at the end.
    let http = format!("[http]\nlisten = \"127.0.0.1:{port}\"\n");
    let file = std::env::temp_dir().join(format!(
        "{tag}-{}.toml",
        STORES.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&file, host_toml(exchange, topic, tag, &http)).expect("config file");
    let start = Instant::now();
    let mut child = std::process::Command::new(binary())
        .args(["--log", "warn", "run", "--config"])
        .arg(&file)
        .stdout(match consumer {
            Consumer::Stdout => std::process::Stdio::piped(),
            _ => std::process::Stdio::null(),
        })
        .spawn()
        .expect("the binary starts");
    let pid = child.id();
    let stdout = child.stdout.take();
    // Read on a thread of its own, as a consumer process would: count the changes, note
    // when the first and the n-th arrived.
    let reader = std::thread::spawn(
        move || -> Result<(Duration, Duration, u64, Option<Duration>), String> {
            use std::io::{BufRead, BufReader, Read, Write};
            let lines: Box<dyn BufRead> = match (consumer, stdout) {
                (Consumer::Stdout, Some(out)) => Box::new(BufReader::with_capacity(1 << 16, out)),
                (Consumer::Sse, _) => {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let mut stream = loop {
                        match std::net::TcpStream::connect(("127.0.0.1", port)) {
                            Ok(s) => break s,
                            Err(_) if Instant::now() < deadline => {
                                std::thread::sleep(Duration::from_millis(20))
                            }
                            Err(e) => return Err(format!("the HTTP API never answered: {e}")),
                        }
                    };
                    stream
                    .write_all(b"GET /v1/changes?types=nova.instance&snapshot=true HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
                    .map_err(|e| e.to_string())?;
                    let reader: Box<dyn Read> = Box::new(stream);
                    Box::new(BufReader::with_capacity(1 << 16, reader))
                }
                _ => return Err("no stdout".into()),
            };
            let (mut first, mut seen, mut resyncs) = (None, 0u64, 0u64);
            let mut cpu_at_first = None;
            for line in lines.lines() {
                let line = line.map_err(|e| e.to_string())?;
                // The stream's first marker is the initial one; a lagged one means a resync.
                if line.contains("\"reason\":\"lagged\"") {
                    resyncs += 1;
                }
                // A change or a snapshot entity: both carry the entity's key.
                if line.contains("\"key\":\"nova.instance:") {
                    first.get_or_insert_with(|| start.elapsed());
                    cpu_at_first.get_or_insert_with(|| process_cpu(pid));
                    seen += 1;
                    if seen == n {
                        let cpu = process_cpu(pid)
                            .zip(cpu_at_first.flatten())
                            .map(|(end, begin)| end.saturating_sub(begin));
                        return Ok((first.unwrap_or_default(), start.elapsed(), resyncs, cpu));
                    }
                }
            }
            Err(format!("the stream ended after {seen} of {n} changes"))
        },
    );
    let result = tokio::task::spawn_blocking(move || reader.join())
        .await
        .expect("join");
    let batches = tokio::task::spawn_blocking(move || plugin_counter(port, "batches_pushed"))
        .await
        .ok()
        .flatten();
    // SIGTERM: the service's graceful stop.
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let _ = std::fs::remove_file(&file);
    match result {
        Ok(Ok((first, last, resyncs, cpu))) => {
            let drain = last.saturating_sub(first);
            let rate = n as f64 / drain.as_secs_f64();
            println!(
                "         bus plugin via the binary to {consumer:?}: {n} messages in {:.3} s = {rate:.0} msg/s ({}{:.0} ms to start and connect before the first change; {}{})",
                drain.as_secs_f64(),
                match cpu {
                    Some(cpu) => format!(
                        "{:.1} us CPU per message in the binary; ",
                        cpu.as_secs_f64() * 1e6 / n as f64
                    ),
                    None => String::new(),
                },
                first.as_secs_f64() * 1e3,
                match batches {
                    Some(b) if b > 0 =>
                        format!("{b} batches, {:.1} messages each", n as f64 / b as f64),
                    _ => "batches not known".to_owned(),
                },
                if resyncs > 0 {
                    format!("; {resyncs} resync markers: the reader fell behind")
                } else {
                    String::new()
                }
            );
            Some(rate)
        }
        Ok(Err(e)) => {
            println!("drain through the binary to {consumer:?} failed: {e}");
            None
        }
        Err(_) => {
            println!("the reader panicked");
            None
        }
    }
}

/// One of the bus instance's counters, read from the binary's `/metrics`.
fn plugin_counter(port: u16, name: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines()
        .filter(|l| {
            l.starts_with("synchronizer_plugin_stat")
                && l.contains(&format!("name=\"{name}\""))
                && l.contains("plugin_instance=\"bus\"")
        })
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time (user + system) process `pid` has used so far, from `/proc/<pid>/stat`.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime are the 14th and 15th fields of the line, in clock ticks.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| Duration::from_secs_f64((utime + stime) as f64 / ticks as f64))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Drains the pre-filled queue through the host with the plugin loaded from its `.so`, to
/// a subscriber callback. Returns messages per second from the first change on.
async fn plugin_drain(exchange: &str, topic: &str, tag: &str, n: u64) -> Option<f64> {
    let seen = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    // Nanoseconds after `start` at which the first change reached the callback.
    let first = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_time();
    let start = Instant::now();
    let sync = Synchronizer::start(host_config(exchange, topic, tag))
        .await
        .expect("host starts");
    // The plugin may have pushed changes before this subscription exists: the initial
    // snapshot counts those.
    let sub = {
        let (seen, done, first) = (seen.clone(), done.clone(), first.clone());
        let mut options = SubscribeOptions::types(&["nova.instance"]);
        options.queue = 1_000_000;
        options.initial_snapshot = true;
        sync.subscribe_callback(&options, move |event| {
            let k = match event {
                Event::Change(_) => 1,
                Event::Snapshot(entities) => entities.len() as u64,
                Event::Resync(_) => 0,
            };
            if k == 0 {
                return;
            }
            let before = seen.fetch_add(k, Ordering::Relaxed);
            if before == 0 {
                first.store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            if before + k == n {
                done.notify_one();
            }
        })
        .expect("callback subscription")
    };
    if tokio::time::timeout(Duration::from_secs(600), done.notified())
        .await
        .is_err()
    {
        println!(
            "plugin drain did not finish: {} of {n} changes",
            seen.load(Ordering::Relaxed)
        );
        return None;
    }
    let total = start.elapsed();
    let plugin_cpu = cpu_time() - cpu0;
    // Like the bare consumer's, timed from when consuming starts: loading the library,
    // creating the instance and connecting are shown apart.
    let startup = Duration::from_nanos(first.load(Ordering::Relaxed));
    let drain = total.saturating_sub(startup);
    let rate = n as f64 / drain.as_secs_f64();
    println!(
        "         bus plugin via host to callback: {n} messages in {:.3} s = {rate:.0} msg/s ({:.1} us CPU per message in this process; {:.0} ms to load, start and connect before the first change)",
        drain.as_secs_f64(),
        plugin_cpu.as_secs_f64() * 1e6 / n as f64,
        startup.as_secs_f64() * 1e3,
    );
    sub.cancel();
    sync.shutdown().await;
    Some(rate)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("drain: run with `cargo bench -p synchronizer-bus --bench drain`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ok = runtime.block_on(run());
    runtime.shutdown_timeout(Duration::from_secs(2));
    if !ok {
        std::process::exit(1);
    }
}

async fn run() -> bool {
    let n = env_or("BENCH_MESSAGES", 100_000);
    let rate = env_or("BENCH_RATE", 1000);
    let secs = env_or("BENCH_LATENCY_SECS", 10);
    let tag = format!("bench-{}", std::process::id());
    let exchange = format!("nova-{tag}");
    let topic = format!("t-{tag}");
    let queue = format!("{topic}.info");
    let bodies = Bodies::new();
    let conn = connect().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    declare(&ch, &exchange, &queue).await;
    println!("body size: {} bytes", bodies.body(0, 0).len());

    let skip_drain = std::env::var_os("BENCH_SKIP_DRAIN").is_some();
    let consumer = Consumer::from_env();
    // A consumer of the binary has what a user has; the in-process callback skips the
    // process boundary and the serialisation, and has the lower target.
    let target = if consumer == Consumer::Callback {
        0.8
    } else {
        0.9
    };
    let rounds = env_or("BENCH_ROUNDS", 3).max(1) as u32;
    let mut ratio = 1.0f64;
    if !skip_drain {
        // Alternating rounds, best of each: the machine is shared with the broker (and
        // often with other work), and a single pair of runs says more about the
        // neighbours than about the consumers.
        let (mut best_bare, mut best_plugin) = (0.0f64, 0.0f64);
        for round in 0..rounds {
            let t = Instant::now();
            fill(&ch, &exchange, &queue, &bodies, 10 + round, n).await;
            println!(
                "round {}: filled {n} messages in {:.1} s",
                round + 1,
                t.elapsed().as_secs_f64()
            );
            let cpu0 = cpu_time();
            let bare = bare_drain(&conn, &queue, n).await;
            let bare_cpu = cpu_time() - cpu0;
            let bare_rate = n as f64 / bare.as_secs_f64();
            best_bare = best_bare.max(bare_rate);
            println!(
                "round {}: bare lapin consumer: {n} messages in {:.3} s = {bare_rate:.0} msg/s ({:.1} us CPU per message in this process)",
                round + 1,
                bare.as_secs_f64(),
                bare_cpu.as_secs_f64() * 1e6 / n as f64
            );
            fill(&ch, &exchange, &queue, &bodies, 20 + round, n).await;
            let drained = match consumer {
                Consumer::Callback => plugin_drain(&exchange, &topic, &tag, n).await,
                other => binary_drain(&exchange, &topic, &tag, n, other).await,
            };
            match drained {
                Some(rate) => best_plugin = best_plugin.max(rate),
                None => return false,
            }
        }
        ratio = best_plugin / best_bare;
        println!(
            "drain to {consumer:?}, best of {rounds}: bare {best_bare:.0} msg/s, plugin {best_plugin:.0} msg/s: {ratio:.2} x bare (target >= {target:.2})"
        );
    }
    if consumer != Consumer::Callback {
        // The end-to-end drain has its own target; latency is measured in process.
        let ok = ratio >= target;
        println!(
            "result (through the binary to {consumer:?}): throughput {} (ratio {ratio:.2}, target >= {target:.2})",
            if ok { "PASS" } else { "FAIL" }
        );
        return ok;
    }
    let sync = Synchronizer::start(host_config(&exchange, &topic, &tag))
        .await
        .expect("host starts");

    // 3. Latency at a steady rate.
    let count = (rate * secs) as usize;
    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let received = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(tokio::sync::Notify::new());
    let sub = {
        let (sent, latencies, received, all) = (
            sent.clone(),
            latencies.clone(),
            received.clone(),
            all.clone(),
        );
        sync.subscribe_callback(&SubscribeOptions::types(&["nova.instance"]), move |event| {
            if let Event::Change(c) = event {
                let now = base.elapsed().as_nanos() as u64;
                if let Some(i) = index_of(c.entity.id()).filter(|i| *i < count) {
                    let at = sent[i].load(Ordering::Acquire);
                    latencies
                        .lock()
                        .unwrap()
                        .push((now.saturating_sub(at)) as f64 / 1e6);
                }
                if received.fetch_add(1, Ordering::Relaxed) + 1 == count {
                    all.notify_one();
                }
            }
        })
        .expect("callback subscription")
    };
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let pub_ch = conn.create_channel().await.expect("channel");
    let mut confirms = Vec::new();
    for i in 0..count {
        tick.tick().await;
        let body = bodies.body(3, i as u64);
        sent[i].store(base.elapsed().as_nanos() as u64, Ordering::Release);
        confirms.push(
            pub_ch
                .basic_publish(
                    &exchange,
                    &queue,
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .expect("publish"),
        );
    }
    for c in confirms {
        c.await.expect("publish");
    }
    if tokio::time::timeout(Duration::from_secs(60), all.notified())
        .await
        .is_err()
    {
        println!(
            "latency run: only {} of {count} changes arrived",
            received.load(Ordering::Relaxed)
        );
        return false;
    }
    sub.cancel();
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let (p50, p90, p99, p999, max) = (
        percentile(&l, 0.5),
        percentile(&l, 0.9),
        percentile(&l, 0.99),
        percentile(&l, 0.999),
        percentile(&l, 1.0),
    );
    println!(
        "latency publish -> callback at {rate} msg/s for {secs} s ({} messages): p50 {p50:.3} ms, p90 {p90:.3} ms, p99 {p99:.3} ms, p99.9 {p999:.3} ms, max {max:.3} ms (target p99 <= 5 ms)",
        l.len()
    );

    sync.shutdown().await;
    let _ = ch.queue_delete(&queue, QueueDeleteOptions::default()).await;
    let _ = ch
        .queue_delete(&format!("{tag}.dlq"), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .exchange_delete(&exchange, ExchangeDeleteOptions::default())
        .await;
    for name in [format!("{tag}.dlx"), format!("{tag}.changes")] {
        let _ = ch
            .exchange_delete(&name, ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done").await;
    let _ = tokio::task::spawn_blocking(move || conn.run()).await;

    if std::env::var_os("BENCH_BASELINE").is_some() && std::env::var_os("BENCH_OUTPUT").is_none() {
        let throughput_ok = ratio >= 0.6;
        println!(
            "result (with baseline_file): throughput {} (ratio {ratio:.2}, target >= 0.60), latency p99 {p99:.3} ms (no target)",
            if throughput_ok { "PASS" } else { "FAIL" },
        );
        return throughput_ok;
    }
    // The targets are for the plugin alone; with an output the figures are for scale.
    if std::env::var_os("BENCH_OUTPUT").is_some() {
        println!(
            "result (with an AMQP output, no target): throughput ratio {ratio:.2}, latency p99 {p99:.3} ms"
        );
        return true;
    }
    let throughput_ok = ratio >= 0.8;
    let latency_ok = p99 <= 5.0;
    println!(
        "result: throughput {} (ratio {ratio:.2}), latency {} (p99 {p99:.3} ms)",
        if throughput_ok { "PASS" } else { "FAIL" },
        if latency_ok { "PASS" } else { "FAIL" }
    );
    throughput_ok && latency_ok
}
