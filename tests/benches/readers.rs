//! Readers must not slow the writer: the release `synchronizer` binary holds 1,000,000
//! entities (the faulty test plugin's `churn` mode: each snapshot renames 1% of them) and
//! diffs a snapshot every few seconds, while 16 concurrent `GET /v1/entities` loops read
//! the whole view over HTTP. Measured from the host's own histogram
//! `synchronizer_snapshot_diff_seconds` (hashing, waiting for the writer, the diff; not
//! the plugin's time), in three phases of the same run: no readers, 16 readers, no
//! readers again. Target: the mean diff with readers within 1.2x of the mean without.
//!
//! The machine's cores are shared by the readers' JSON encoding, the plugin building
//! its snapshot and the host's diff: on two cores the readers take CPU the diff would
//! otherwise have, which the ratio includes, as a user of the binary sees it.
//!
//! Run:
//! `cargo build --release -p synchronizer -p synchronizer-test-faulty && cargo bench -p synchronizer-tests --bench readers`
//! (knobs: `READERS_N` entities, `READERS` loops, `READERS_PHASE_S` seconds per phase,
//! `READERS_INTERVAL_S` between snapshots).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The diff histogram's (sum of seconds, count) for `instance`.
async fn diff_totals(client: &reqwest::Client, base: &str, instance: &str) -> (f64, u64) {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let value = |suffix: &str| -> f64 {
        let prefix = format!(
            "synchronizer_snapshot_diff_seconds_{suffix}{{plugin_instance=\"{instance}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (value("sum"), value("count") as u64)
}

struct Phase {
    name: String,
    diffs: u64,
    mean: Duration,
    reads: u64,
}

fn main() {
    let n = synchronizer_test_kit::sys::env_or("READERS_N", 1_000_000);
    let readers = synchronizer_test_kit::sys::env_or("READERS", 16);
    let phase_s = synchronizer_test_kit::sys::env_or("READERS_PHASE_S", 45);
    let interval = synchronizer_test_kit::sys::env_or("READERS_INTERVAL_S", 3);
    let program = synchronizer_test_kit::paths::release("synchronizer");
    synchronizer_test_kit::paths::release("libsynchronizer_test_faulty.so");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = synchronizer_test_kit::sys::free_port();
    let plugins = program.parent().expect("target dir").display().to_string();
    let config = format!(
        r#"plugins_dir = {plugins:?}

[defaults]
jitter = "0s"

[[instances]]
name = "churn"
library = "libsynchronizer_test_faulty.so"
interval = "{interval}s"
timeout = "600s"
[instances.config]
mode = "churn"
entities = {n}

[http]
listen = "127.0.0.1:{port}"
"#
    );
    let file = dir.path().join("readers.toml");
    std::fs::write(&file, config).expect("write config");
    // The changes go to stdout: thrown away, as cheaply as a pipe nobody reads slowly.
    let mut child = Command::new(&program)
        .args(["run", "--config"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("RUST_LOG")
        .spawn()
        .expect("spawn synchronizer");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let base = format!("http://127.0.0.1:{port}");
    let phases = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client");
        let end_by = Instant::now() + Duration::from_secs(600);
        loop {
            assert!(Instant::now() < end_by, "the host never became ready");
            if let Ok(r) = client.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut phases = Vec::new();
        for (name, loops) in [
            ("no readers", 0),
            ("readers", readers),
            ("no readers again", 0),
        ] {
            let stop = Arc::new(AtomicBool::new(false));
            let reads = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..loops)
                .map(|_| {
                    let (client, base) = (client.clone(), base.clone());
                    let (stop, reads) = (stop.clone(), reads.clone());
                    tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            let Ok(r) = client.get(format!("{base}/v1/entities")).send().await
                            else {
                                continue;
                            };
                            if r.status().is_success() && r.bytes().await.is_ok() {
                                reads.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            let (sum0, count0) = diff_totals(&client, &base, "churn").await;
            tokio::time::sleep(Duration::from_secs(phase_s)).await;
            let (sum1, count1) = diff_totals(&client, &base, "churn").await;
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                let _ = t.await;
            }
            let diffs = count1 - count0;
            phases.push(Phase {
                name: format!("{name} ({loops} loops)"),
                diffs,
                mean: Duration::from_secs_f64((sum1 - sum0) / diffs.max(1) as f64),
                reads: reads.load(Ordering::Relaxed),
            });
        }
        phases
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    for p in &phases {
        println!(
            "readers: {}: {} diffs of {n} entities (1% changed), mean {:.1} ms; {} whole-view reads",
            p.name,
            p.diffs,
            p.mean.as_secs_f64() * 1e3,
            p.reads
        );
    }
    let quiet = (phases[0].mean + phases[2].mean) / 2;
    let ratio = phases[1].mean.as_secs_f64() / quiet.as_secs_f64();
    println!("readers: mean diff with {readers} readers / without: {ratio:.2}x (target <= 1.2x)");
    if phases.iter().any(|p| p.diffs == 0) || phases[1].reads == 0 {
        eprintln!("readers: a phase had no diff or no read; nothing was measured");
        std::process::exit(1);
    }
    if ratio > 1.2 {
        eprintln!("readers: the target was missed");
        std::process::exit(1);
    }
}
