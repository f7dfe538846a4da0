//! The cost of process isolation: a 10,000-entity snapshot from the faulty test plugin's
//! `ok` collector, in process (the real loaded .so, as the host calls it) and in a child
//! process (the same .so in `synchronizer plugin-child`, framed over its pipes, decoded
//! into entities in the host), measured in the same run. Target: process ≤ 2.5× in
//! process. Also reports the child's resident memory (VmRSS), the memory each
//! process-mode instance adds.
//!
//! Run:
//! `cargo build --release -p synchronizer -p synchronizer-test-faulty && cargo bench -p synchronizer-tests --bench isolation`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use synchronizer::instance::{PluginInstance, Source};
use synchronizer::isolation::process::rss_bytes;
use synchronizer::isolation::{ProcessInstance, ProcessOptions};
use synchronizer::loader::load;
use synchronizer::status::StatusCell;
use synchronizer_plugin_api::abi::LogLevel;

const N: usize = 10_000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = serde_json::json!({ "mode": "ok", "entities": N });
    let types = vec!["faulty.item".to_owned()];
    let library = synchronizer_tests::release("libsynchronizer_test_faulty.so");

    let lib = load(&library).expect("loads");
    let in_process = rt
        .block_on(PluginInstance::create(
            &lib,
            "bench",
            &config,
            LogLevel::Warn,
            Duration::from_secs(10),
        ))
        .expect("creates");
    let (child, _) = rt
        .block_on(ProcessInstance::start(
            "bench-child",
            ProcessOptions {
                program: synchronizer_tests::release("synchronizer"),
                library,
                config: config.clone(),
                max_level: LogLevel::Warn,
                create_timeout: Duration::from_secs(10),
                heartbeat_interval: Duration::from_secs(1),
                heartbeat_timeout: Duration::from_secs(10),
                memory_limit: None,
                snapshot_limit: synchronizer::isolation::process::DEFAULT_SNAPSHOT_LIMIT,
                max_entities: synchronizer::config::DEFAULT_MAX_ENTITIES,
                backoff_initial: Duration::from_secs(1),
                backoff_max: Duration::from_secs(10),
            },
            Arc::new(StatusCell::default()),
            Arc::new(synchronizer::metrics::Metrics::default()),
        ))
        .expect("the child starts");
    let pid = child.pid().expect("pid");
    let idle_rss = rss_bytes(pid).unwrap_or(0);

    let mut group = c.benchmark_group("snapshot 10k");
    group.sample_size(30);
    group.bench_function("in-process", |b| {
        b.iter(|| {
            let s = rt.block_on(in_process.snapshot(types.clone())).unwrap();
            assert_eq!(s.entities.len(), N);
            s
        })
    });
    group.bench_function("process", |b| {
        b.iter(|| {
            let s = rt.block_on(child.snapshot(types.clone())).unwrap();
            assert_eq!(s.entities.len(), N);
            s
        })
    });
    group.finish();

    // The same comparison, interleaved, for one ratio from this run.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..60 {
        let t = Instant::now();
        drop(rt.block_on(in_process.snapshot(types.clone())).unwrap());
        a.push(t.elapsed());
        let t = Instant::now();
        drop(rt.block_on(child.snapshot(types.clone())).unwrap());
        b.push(t.elapsed());
    }
    let (amin, bmin) = (
        a.iter().min().copied().unwrap_or_default(),
        b.iter().min().copied().unwrap_or_default(),
    );
    let (a, b) = (median(a), median(b));
    println!(
        "\nisolation: fastest of 60: in-process {:.2} ms, process {:.2} ms: {:.2}x",
        amin.as_secs_f64() * 1e3,
        bmin.as_secs_f64() * 1e3,
        bmin.as_secs_f64() / amin.as_secs_f64()
    );
    // Where the time goes: the encoding and decoding alone, on one snapshot.
    let snap = rt.block_on(in_process.snapshot(types.clone())).unwrap();
    let (mut enc, mut dec) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let t = Instant::now();
        let frame = synchronizer::isolation::wire::encode_snapshot(1, Ok(&snap));
        enc.push(t.elapsed());
        let t = Instant::now();
        let decoded = synchronizer::isolation::wire::FromChild::decode(&frame[4..]).unwrap();
        dec.push(t.elapsed());
        drop(decoded);
    }
    println!(
        "isolation: encoding 10k entities {:.2} ms, decoding {:.2} ms (medians)",
        median(enc).as_secs_f64() * 1e3,
        median(dec).as_secs_f64() * 1e3
    );
    drop(snap);
    let busy_rss = rss_bytes(pid).unwrap_or(0);
    println!(
        "\nisolation: 10k-entity snapshot median in-process {:.2} ms, process {:.2} ms: {:.2}x (target <= 2.5x)",
        a.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        b.as_secs_f64() / a.as_secs_f64()
    );
    println!(
        "isolation: child RSS {:.1} MiB idle after start, {:.1} MiB after the benchmark's 10k-entity snapshots",
        idle_rss as f64 / f64::from(1u32 << 20),
        busy_rss as f64 / f64::from(1u32 << 20),
    );
    rt.block_on(child.shutdown(Duration::from_secs(1)));
    in_process.shutdown_runtime(Duration::from_secs(1));
}

criterion_group!(benches, bench);
criterion_main!(benches);
