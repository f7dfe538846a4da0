//! The durable baseline store (host/src/persist/) at 1,000,000 entities, on redb:
//!
//! - the commit of a first snapshot (1,000,000 creations: the log's records, the
//!   in-doubt row), one transaction; target ≤ 2 s;
//! - the commit of a 1% change round (10,000 updates), one transaction; target ≤ 100 ms;
//! - clearing the in-doubt rows once consumers confirmed (runs after the announce, off
//!   the producers' path);
//! - a restart: opening the store and reading the whole view back;
//! - the file's size per entity.
//!
//! Run: `cargo bench -p synchronizer --bench store` (a plain binary: it prints the figures
//! and exits non-zero when a target is missed; `BENCH_N` changes the count).

use std::sync::Arc;
use std::time::Instant;

use synchronizer::change::{Action, Change};
use synchronizer::persist::{Commit, Op, Store};
use synchronizer_plugin_api::{Entity, Relation};

fn uuid(i: usize) -> String {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let y = x.rotate_left(17).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        x >> 32,
        (x >> 16) & 0xffff,
        x & 0xfff,
        y & 0xfff,
        y >> 16
    )
}

fn instance(i: usize, state: &str) -> Arc<Entity> {
    Arc::new(
        Entity::resource("nova.instance", &uuid(i))
            .with_name(format!("vm-{i}"))
            .with_state(state)
            .with_project("2f1c4e0d6a9b4c1e8f7a6b5c4d3e2f10")
            .with_source_updated_micros(1_764_000_000_000_000 + i as i64)
            .with_relation(Relation::from(
                "contains",
                format!("nova.host:compute-{}", i % 500),
            ))
            .with_properties(serde_json::json!({
                "flavor": "m1.small", "image": "cirros-0.6.2", "vm_state": "active"
            })),
    )
}

fn commit(entities: &[Arc<Entity>], action: Action, first_seq: u64) -> Commit {
    let owner: Arc<str> = Arc::from("nova");
    let instance: Arc<str> = owner.clone();
    Commit {
        ops: entities
            .iter()
            .map(|e| Op::Upsert {
                entity: e.clone(),
                updated_us: e.source_updated_micros().unwrap_or(i64::MIN),
                owner: owner.clone(),
            })
            .collect(),
        changes: entities
            .iter()
            .enumerate()
            .map(|(i, e)| {
                Arc::new(Change {
                    seq: first_seq + i as u64,
                    action,
                    entity: e.clone(),
                    instance: instance.clone(),
                    sampled_us: 0,
                    initial: false,
                })
            })
            .collect(),
    }
}

fn main() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("synchronizer-store-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let path = dir.join("baseline.redb");
    let mut missed = false;

    let all: Vec<Arc<Entity>> = (0..n).map(|i| instance(i, "ACTIVE")).collect();
    let (mut store, _) = Store::open(&path, std::time::Duration::from_secs(600)).expect("open");
    let first = commit(&all, Action::Created, 1);
    let t = Instant::now();
    store
        .write(std::slice::from_ref(&first), None)
        .expect("first commit");
    let first_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    store.write(&[], Some(n as u64)).expect("clear");
    let clear_s = t.elapsed().as_secs_f64();
    println!(
        "store: first snapshot of {n}: commit {:.0} ms (target <= 2000 ms at 1M); clearing its journal {:.0} ms",
        first_s * 1e3,
        clear_s * 1e3
    );
    missed |= n >= 1_000_000 && first_s > 2.0;

    let mut rounds = Vec::new();
    for round in 0..5 {
        let changed: Vec<Arc<Entity>> = (0..n / 100)
            .map(|i| {
                instance(
                    i * 100 + round,
                    if round % 2 == 0 { "SHUTOFF" } else { "ACTIVE" },
                )
            })
            .collect();
        let first_seq = (n + round * (n / 100) + 1) as u64;
        let c = commit(&changed, Action::Updated, first_seq);
        let t = Instant::now();
        store
            .write(std::slice::from_ref(&c), None)
            .expect("round commit");
        rounds.push(t.elapsed().as_secs_f64() * 1e3);
        store
            .write(&[], Some(first_seq + (n / 100) as u64))
            .expect("clear");
    }
    rounds.sort_by(f64::total_cmp);
    let median = rounds[rounds.len() / 2];
    println!(
        "store: 1% change round ({} updates): commit median {median:.1} ms, all {:?} (target <= 100 ms at 1M)",
        n / 100,
        rounds.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>()
    );
    missed |= n >= 1_000_000 && median > 100.0;
    if let Some((rows, keys, garbage)) = store.log_shape() {
        println!("store: log of {rows} rows, {keys} live keys, {garbage} garbage records");
    }
    drop(store);

    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let t = Instant::now();
    let (_, restored) = Store::open(&path, std::time::Duration::from_secs(600)).expect("reopen");
    let open_s = t.elapsed().as_secs_f64();
    assert_eq!(restored.entities.len(), n, "every entity comes back");
    println!(
        "store: restart: open and read back {} entities in {:.0} ms; file {:.1} MiB, {:.0} bytes/entity",
        restored.entities.len(),
        open_s * 1e3,
        size as f64 / (1 << 20) as f64,
        size as f64 / n as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
    if missed {
        eprintln!("store: a target was missed");
        std::process::exit(1);
    }
}
