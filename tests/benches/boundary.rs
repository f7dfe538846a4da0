//! The cost of the plugin boundary: a 10,000-entity snapshot from the faulty test
//! plugin's `ok` collector, called through the real loaded .so (FfiFuture, RVec of
//! StableAbi entities, the plugin's own runtime) versus the same collector linked in and
//! called in-process. Target: boundary ≤ 1.5× in-process.
//!
//! Run: `cargo build --release -p synchronizer-test-faulty && cargo bench -p synchronizer-tests --bench boundary`

use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use synchronizer::instance::{PluginInstance, Source};
use synchronizer::loader::load;
use synchronizer_plugin_api::abi::LogLevel;
use synchronizer_plugin_api::{Context, Plugin};
use synchronizer_test_faulty::Faulty;

const N: usize = 10_000;

fn release_plugin() -> PathBuf {
    let p =
        synchronizer_test_kit::paths::root().join("target/release/libsynchronizer_test_faulty.so");
    assert!(
        p.exists(),
        "build it first: cargo build --release -p synchronizer-test-faulty"
    );
    p
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = serde_json::json!({ "mode": "ok", "entities": N });
    let types = vec!["faulty.item".to_owned()];

    let lib = load(&release_plugin()).expect("loads");
    let through = rt
        .block_on(PluginInstance::create(
            &lib,
            "bench",
            &config,
            LogLevel::Warn,
            Duration::from_secs(10),
        ))
        .expect("creates");
    let direct = Faulty::new(
        serde_json::from_value(config.clone()).unwrap(),
        &Context {
            instance: "bench".into(),
        },
    )
    .unwrap();

    let mut group = c.benchmark_group("snapshot 10k");
    group.sample_size(50);
    group.bench_function("in-process", |b| {
        b.iter(|| {
            let s = rt.block_on(direct.snapshot(&types)).unwrap();
            assert_eq!(s.entities().len(), N);
            s
        })
    });
    group.bench_function("through the .so boundary", |b| {
        b.iter(|| {
            let s = rt.block_on(through.snapshot(types.clone())).unwrap();
            assert_eq!(s.entities.len(), N);
            s
        })
    });
    group.finish();
    through.shutdown_runtime(Duration::from_secs(1));
}

criterion_group!(benches, bench);
criterion_main!(benches);
