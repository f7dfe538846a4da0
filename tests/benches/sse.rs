//! The change stream under load: 100 SSE clients subscribed while the host emits
//! 10,000 changes per second for 10 s. Every client must receive every change (no
//! resync), with p99 emit-to-client latency ≤ 50 ms.
//!
//! In-process: a `Synchronizer` (no plugin instances) and its HTTP API on a loopback
//! port, run on a runtime of two workers like the binary's. Changes are pushed straight
//! into the hub the `Synchronizer` uses (`Hub::apply_push`) from a thread of their own,
//! in batches every millisecond; each entity carries the time it was pushed in its
//! `t` property (microseconds since the epoch). The clients are minimal HTTP/1.1
//! readers on a runtime of their own (two workers): they decode the chunked body, take
//! `t` and `seq` out of each event and record `now - t`.
//!
//! Run: `cargo bench -p synchronizer-tests --bench sse`
//! (knobs: `SSE_CLIENTS`, `SSE_RATE` changes/s, `SSE_SECONDS`, `SSE_BATCH_MS`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use synchronizer::Synchronizer;
use synchronizer::hub::Origin;
use synchronizer_plugin_api::Entity;
use synchronizer_plugin_api::abi::{FfiPushed, PushAction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    changes: u64,
    resyncs: u64,
    out_of_order: u64,
    latencies_us: Vec<u32>,
}

fn number_after(text: &[u8], pattern: &memchr::memmem::Finder<'_>) -> Option<u64> {
    let at = pattern.find(text)? + pattern.needle().len();
    let mut n: u64 = 0;
    let mut digits = 0;
    for b in &text[at..] {
        if !b.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(n)
}

/// One SSE client: reads until it has `expected` changes or `deadline`.
async fn client(
    addr: std::net::SocketAddr,
    expected: u64,
    connected: Arc<AtomicU64>,
    deadline: Arc<AtomicU64>,
) -> Seen {
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    conn.set_nodelay(true).ok();
    conn.write_all(b"GET /v1/changes HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("sends");
    let mut seen = Seen {
        latencies_us: Vec::with_capacity(expected as usize),
        ..Default::default()
    };
    let mut raw: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut body: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut head_done = false;
    let mut last_seq = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let t_pattern = memchr::memmem::Finder::new(b"\"properties\":{\"t\":");
    let seq_pattern = memchr::memmem::Finder::new(b"\"seq\":");
    let crlf = memchr::memmem::Finder::new(b"\r\n");
    let blank = memchr::memmem::Finder::new(b"\n\n");
    while seen.changes < expected {
        let wait = Duration::from_millis(200);
        let n = match tokio::time::timeout(wait, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => {
                let d = deadline.load(Ordering::SeqCst);
                if d != 0 && now_us() > d {
                    break;
                }
                continue;
            }
        };
        raw.extend_from_slice(&buf[..n]);
        if !head_done {
            let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            assert!(raw.starts_with(b"HTTP/1.1 200"), "not 200");
            raw.drain(..at + 4);
            head_done = true;
            connected.fetch_add(1, Ordering::SeqCst);
        }
        // Chunked transfer coding → body.
        let mut pos = 0;
        while let Some(eol) = crlf.find(&raw[pos..]) {
            let size = std::str::from_utf8(&raw[pos..pos + eol])
                .ok()
                .and_then(|s| usize::from_str_radix(s, 16).ok())
                .expect("chunk size");
            let start = pos + eol + 2;
            if raw.len() < start + size + 2 {
                break;
            }
            body.extend_from_slice(&raw[start..start + size]);
            pos = start + size + 2;
        }
        raw.drain(..pos);
        // Events → latency.
        let received = now_us();
        let mut at = 0;
        while let Some(end) = blank.find(&body[at..]) {
            let event = &body[at..at + end];
            at += end + 2;
            if !event.starts_with(b"id: ") {
                if memchr::memmem::find(event, b"\"resync\"").is_some() {
                    seen.resyncs += 1;
                }
                continue;
            }
            let (Some(t), Some(seq)) = (
                number_after(event, &t_pattern),
                number_after(event, &seq_pattern),
            ) else {
                continue;
            };
            if seq != last_seq + 1 {
                seen.out_of_order += 1;
            }
            last_seq = seq;
            seen.changes += 1;
            seen.latencies_us
                .push(u32::try_from(received.saturating_sub(t)).unwrap_or(u32::MAX));
        }
        body.drain(..at);
    }
    seen
}

/// CPU time (user + system, seconds) of this process's threads, summed by name.
fn cpu_by_thread() -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    let tick = 100.0; // USER_HZ
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let t = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 (1-based), 11 and 12 after the name.
        *out.entry(name).or_insert(0.0) += (t(11) + t(12)) / tick;
    }
    out
}

fn main() {
    let clients = env_or("SSE_CLIENTS", 100);
    let rate = env_or("SSE_RATE", 10_000);
    let seconds = env_or("SSE_SECONDS", 10);
    let batch_ms = env_or("SSE_BATCH_MS", 1).max(1);
    let per_batch = (rate * batch_ms / 1000).max(1);
    let batches = seconds * 1000 / batch_ms;
    let total = per_batch * batches;

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()
        .expect("runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("clients")
        .enable_all()
        .build()
        .expect("runtime");

    let config = synchronizer_test_kit::host::config("[http]\n");
    let http = config.http.clone().expect("[http]");
    let (sync, addr, stop) = server_rt.block_on(async {
        let sync = Arc::new(Synchronizer::start(config).await.expect("starts"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn(synchronizer::http::serve_on(
            listener,
            sync.clone(),
            http,
            stop.clone(),
        ));
        (sync, addr, stop)
    });

    let connected = Arc::new(AtomicU64::new(0));
    let deadline = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..clients)
        .map(|_| client_rt.spawn(client(addr, total, connected.clone(), deadline.clone())))
        .collect();
    let wait = Instant::now();
    while connected.load(Ordering::SeqCst) < clients {
        assert!(
            wait.elapsed() < Duration::from_secs(30),
            "only {} clients connected",
            connected.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let the streams' subscriptions settle.
    std::thread::sleep(Duration::from_millis(200));
    println!(
        "{clients} SSE clients connected; pushing {rate} changes/s for {seconds} s ({per_batch} every {batch_ms} ms, {total} in all)"
    );

    let origin = Origin {
        owner: 0,
        instance: Arc::from("bench"),
    };
    let cpu_before = cpu_by_thread();
    let started = Instant::now();
    let mut behind_max = Duration::ZERO;
    let mut push_max = Duration::ZERO;
    for b in 0..batches {
        let due = started + Duration::from_millis(b * batch_ms);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            behind_max = behind_max.max(now - due);
        }
        let t = now_us();
        let batch: Vec<FfiPushed> = (0..per_batch)
            .map(|k| {
                let n = b * per_batch + k;
                FfiPushed {
                    action: PushAction::Upsert,
                    entity: Entity::resource("bench.item", &format!("i-{}", n % 1000))
                        .with_source_updated_micros(t as i64)
                        .with_properties(serde_json::json!({ "t": t })),
                }
            })
            .collect();
        let p = Instant::now();
        sync.hub().apply_push(&origin, batch);
        push_max = push_max.max(p.elapsed());
    }
    let pushing = started.elapsed();
    let cpu_after = cpu_by_thread();
    deadline.store(now_us() + 15_000_000, Ordering::SeqCst);

    let seen: Vec<Seen> = handles
        .into_iter()
        .map(|h| client_rt.block_on(h).expect("client task"))
        .collect();
    let emitted = sync.hub().last_seq();
    let complete = seen
        .iter()
        .filter(|s| s.changes == total && s.resyncs == 0 && s.out_of_order == 0)
        .count();
    let mut all: Vec<u32> = seen
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        f64::from(all[i]) / 1000.0
    };
    println!(
        "pushed {total} changes in {:.2} s (host emitted {emitted}; slowest push {:.2} ms; pusher at most {:.1} ms behind schedule)",
        pushing.as_secs_f64(),
        push_max.as_secs_f64() * 1000.0,
        behind_max.as_secs_f64() * 1000.0
    );
    println!(
        "clients with every change, in order, no resync: {complete}/{clients}; resyncs {}; out of order {}; least received {}",
        seen.iter().map(|s| s.resyncs).sum::<u64>(),
        seen.iter().map(|s| s.out_of_order).sum::<u64>(),
        seen.iter().map(|s| s.changes).min().unwrap_or(0)
    );
    println!(
        "emit-to-client latency over {} deliveries: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        all.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
    let mut cpu: Vec<(String, f64)> = cpu_after
        .iter()
        .map(|(name, t)| {
            (
                name.clone(),
                t - cpu_before.get(name).copied().unwrap_or(0.0),
            )
        })
        .filter(|(_, t)| *t > 0.01)
        .collect();
    cpu.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!(
        "CPU seconds while pushing (by thread name): {}",
        cpu.iter()
            .map(|(n, t)| format!("{n} {t:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let p99 = pct(0.99);
    let pass = complete as u64 == clients && p99 <= 50.0;
    println!(
        "target: every client gets every change, p99 <= 50 ms: {}",
        if pass { "met" } else { "NOT met" }
    );
    stop.cancel();
    server_rt.block_on(sync.shutdown());
    if !pass {
        std::process::exit(1);
    }
}
