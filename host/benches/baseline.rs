//! Diffing a 1,000,000-entity snapshot against a baseline holding the previous one
//! (1% updated, 0.5% created, 0.5% deleted), entities already in memory, content hashing
//! included. Target: ≤ 250 ms on the project's 2-core machines.
//!
//! Run: `cargo bench -p synchronizer --bench baseline`

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use synchronizer::baseline::{Baseline, hash_snapshot};
use synchronizer_plugin_api::{Entity, Relation};

const N: usize = 1_000_000;

fn uuid(i: usize, salt: u64) -> String {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
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

fn instance(id: &str, i: usize, state: &str) -> Entity {
    Entity::resource("nova.instance", id)
        .with_name(format!("vm-{i}"))
        .with_state(state)
        .with_project("2f1c4e0d6a9b4c1e8f7a6b5c4d3e2f10")
        .with_relation(Relation::from(
            "contains",
            format!("nova.host:compute-{}", i % 500),
        ))
        .with_properties(serde_json::json!({
            "flavor": "m1.small", "image": "cirros-0.6.2", "vm_state": "active"
        }))
}

/// Entities carry no source timestamp; a complete snapshot re-creates an entity that an
/// earlier one deleted.
///
/// Two snapshots: B is A with 1% updated, 0.5% deleted and 0.5% new entities, so that
/// diffing A→B and B→A each produce the same amounts of change.
fn snapshots() -> (Vec<Entity>, Vec<Entity>) {
    let a: Vec<Entity> = (0..N).map(|i| instance(&uuid(i, 0), i, "ACTIVE")).collect();
    let mut b = Vec::with_capacity(N);
    for (i, e) in a.iter().enumerate() {
        match i % 200 {
            0 => {}                                          // 0.5% deleted
            1 | 2 => b.push(instance(e.id(), i, "SHUTOFF")), // 1% updated
            _ => b.push(e.clone()),
        }
    }
    for i in 0..N / 200 {
        b.push(instance(&uuid(i, 0xfeed), N + i, "BUILD")); // 0.5% created
    }
    (a, b)
}

/// What the hub does with a snapshot, minus building notifications: hash every entity,
/// judge each against the baseline, sweep what is missing.
fn diff(baseline: &mut Baseline, snapshot: &[Entity], started: i64) -> usize {
    let g = baseline.begin_snapshot(0);
    let mut changes = 0;
    for (entity_type, mut hashed) in hash_snapshot(snapshot) {
        changes += baseline
            .observe_many(&entity_type, &mut hashed, 0, g, started, |i| {
                snapshot[i as usize].id()
            })
            .len();
    }
    changes + baseline.sweep("nova.instance", 0, g, started).len()
}

fn bench(c: &mut Criterion) {
    let (a, b) = snapshots();
    let mut baseline = Baseline::new(Duration::from_secs(1));
    assert_eq!(diff(&mut baseline, &a, 1_764_000_000_000_001), N);
    let mut group = c.benchmark_group("baseline");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(20));
    let mut flip = false;
    // The host clock, after the entities' source timestamps.
    let mut t =
        synchronizer_plugin_api::entity::system_time_to_micros(std::time::SystemTime::now());
    group.bench_function("diff 1M (1% upd, 0.5% new, 0.5% del)", |bencher| {
        bencher.iter(|| {
            flip = !flip;
            t += 1;
            let changes = diff(&mut baseline, if flip { &b } else { &a }, t);
            assert_eq!(changes, N / 100 + N / 200 + N / 200);
            changes
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
