//! Property test of the durable store's log (host/src/persist/): random commits of
//! upserts and deletions over a few keys, with cleaning as eager as it goes (every
//! commit cleans once the garbage passes the live records) and the store reopened at
//! random points. What it restores is always exactly the last state of each key (the
//! entity with its content hash, source time and owner, or the tombstone), and the log
//! holds at most about twice what is live.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use synchronizer::persist::{Commit, Op, Store};
use synchronizer_plugin_api::Entity;

#[derive(Clone, Debug)]
enum Step {
    Set { id: u8, state: u8, owner: u8 },
    Delete { id: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..12, 0u8..5, 0u8..2).prop_map(|(id, state, owner)| Step::Set { id, state, owner }),
        1 => (0u8..12).prop_map(|id| Step::Delete { id }),
    ]
}

/// A key's last state: an entity (state, source time, owner) or a tombstone (deletion
/// time, owner).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Last {
    Entity {
        state: String,
        updated_us: i64,
        owner: String,
    },
    Tombstone {
        deleted_us: i64,
        owner: String,
    },
}

type Model = BTreeMap<String, Last>;

fn restored_model(store_path: &std::path::Path) -> (Store, Model) {
    let (store, restored) = Store::open(store_path, Duration::from_secs(3600)).unwrap();
    let mut model = Model::new();
    for e in &restored.entities {
        assert_eq!(
            e.content,
            e.entity.content_hash(),
            "the content hash comes back"
        );
        let before = model.insert(
            e.entity.id().to_owned(),
            Last::Entity {
                state: e.entity.state().unwrap_or_default().to_owned(),
                updated_us: e.updated_us,
                owner: e.owner.clone(),
            },
        );
        assert!(before.is_none(), "one state per key");
    }
    for t in &restored.tombstones {
        let before = model.insert(
            t.id.clone(),
            Last::Tombstone {
                deleted_us: t.deleted_us,
                owner: t.owner.clone(),
            },
        );
        assert!(before.is_none(), "one state per key");
    }
    (store.clean_eagerly(), model)
}

static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An empty directory of this test run, and the store's path in it.
fn fresh_dir(what: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "synchronizer-store-{what}-{}-{}",
        std::process::id(),
        CASE.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("b.redb");
    (dir, path)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn the_log_restores_the_last_state_of_every_key_however_it_was_cleaned(
        commits in prop::collection::vec(prop::collection::vec(step(), 0..8), 1..30),
        reopen_every in 1usize..8,
    ) {
        let (dir, path) = fresh_dir("log");
        let (mut store, _) = restored_model(&path);
        let mut truth = Model::new();
        let mut clock = 0i64;
        for (n, steps) in commits.iter().enumerate() {
            let mut ops = Vec::new();
            for s in steps {
                clock += 1;
                match *s {
                    Step::Set { id, state, owner } => {
                        let owner = format!("i{owner}");
                        let e = Entity::resource("t", &format!("e{id}")).with_state(format!("s{state}"));
                        truth.insert(e.id().to_owned(), Last::Entity {
                            state: format!("s{state}"),
                            updated_us: clock,
                            owner: owner.clone(),
                        });
                        ops.push(Op::Upsert { entity: Arc::new(e), updated_us: clock, owner: Arc::from(owner) });
                    }
                    Step::Delete { id } => {
                        let id = format!("e{id}");
                        truth.insert(id.clone(), Last::Tombstone { deleted_us: clock, owner: "i0".into() });
                        ops.push(Op::Delete {
                            entity_type: "t".into(),
                            id,
                            deleted_us: clock,
                            owner: Arc::from("i0"),
                        });
                    }
                }
            }
            store.write(&[Commit { ops, changes: Vec::new() }], None).unwrap();
            let (rows, keys, garbage) = store.log_shape().unwrap();
            prop_assert_eq!(keys, truth.len(), "the index knows every key");
            // Each write cleans first once the garbage passes the live records (4,096
            // records at least: all of it here), so after a commit the garbage is at
            // most the live records plus what this commit's own records made garbage.
            prop_assert!(garbage <= (keys + steps.len()) as u64, "garbage {} for {} keys", garbage, keys);
            prop_assert!(rows <= n + 1);
            if n % reopen_every == 0 {
                drop(store);
                let (s, restored) = restored_model(&path);
                prop_assert_eq!(&restored, &truth, "after commit {}", n);
                store = s;
            }
        }
        drop(store);
        let (_, restored) = restored_model(&path);
        prop_assert_eq!(&restored, &truth);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn tombstones_past_the_retention_are_not_restored_and_go_with_their_row() {
    let (dir, path) = fresh_dir("ttl");
    let (store, _) = Store::open(&path, Duration::from_secs(3600)).unwrap();
    let mut store = store.clean_eagerly();
    let delete = |id: &str| Op::Delete {
        entity_type: "t".into(),
        id: id.into(),
        deleted_us: 1,
        owner: Arc::from("i"),
    };
    let keep = Op::Upsert {
        entity: Arc::new(Entity::resource("t", "kept")),
        updated_us: 1,
        owner: Arc::from("i"),
    };
    store
        .write(
            &[Commit {
                ops: vec![delete("a"), delete("b"), keep],
                changes: Vec::new(),
            }],
            None,
        )
        .unwrap();
    drop(store);
    let (_, restored) = Store::open(&path, Duration::from_secs(3600)).unwrap();
    assert_eq!(restored.tombstones.len(), 2, "within the retention");
    // With a retention of zero they are all past it: not restored, and the next
    // commit's cleaning drops them from the file.
    let (store, restored) = Store::open(&path, Duration::ZERO).unwrap();
    assert!(restored.tombstones.is_empty());
    assert_eq!(restored.entities.len(), 1);
    let mut store = store.clean_eagerly();
    let (_, keys, _) = store.log_shape().unwrap();
    assert_eq!(keys, 1, "only the entity is live");
    let other = Op::Upsert {
        entity: Arc::new(Entity::resource("t", "other")),
        updated_us: 2,
        owner: Arc::from("i"),
    };
    store
        .write(
            &[Commit {
                ops: vec![other],
                changes: Vec::new(),
            }],
            None,
        )
        .unwrap();
    assert_eq!(
        store.log_shape().unwrap().2,
        0,
        "the tombstones' row was cleaned"
    );
    drop(store);
    let (_, restored) = Store::open(&path, Duration::from_secs(3600)).unwrap();
    assert!(restored.tombstones.is_empty(), "gone from the file");
    assert_eq!(restored.entities.len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_large_commit_encoded_on_several_threads_keeps_the_order_of_its_writes() {
    // Large enough for the store to encode it in chunks on several threads; every key
    // is written in several chunks, so the last write of each must win.
    let (dir, path) = fresh_dir("big");
    let (mut store, _) = Store::open(&path, Duration::from_secs(3600)).unwrap();
    let keys = 7_000;
    let mut truth = Model::new();
    let mut ops = Vec::new();
    for i in 0..60_000i64 {
        let id = format!("e{}", i % keys);
        if i % 11 == 0 {
            truth.insert(
                id.clone(),
                Last::Tombstone {
                    deleted_us: i,
                    owner: "i0".into(),
                },
            );
            ops.push(Op::Delete {
                entity_type: "t".into(),
                id,
                deleted_us: i,
                owner: Arc::from("i0"),
            });
        } else {
            let state = format!("s{i}");
            truth.insert(
                id.clone(),
                Last::Entity {
                    state: state.clone(),
                    updated_us: i,
                    owner: "i1".into(),
                },
            );
            ops.push(Op::Upsert {
                entity: Arc::new(Entity::resource("t", &id).with_state(state)),
                updated_us: i,
                owner: Arc::from("i1"),
            });
        }
    }
    store
        .write(
            &[Commit {
                ops,
                changes: Vec::new(),
            }],
            None,
        )
        .unwrap();
    assert_eq!(store.log_shape().unwrap().1, keys as usize);
    drop(store);
    let (_, restored) = restored_model(&path);
    assert_eq!(restored, truth);
    let _ = std::fs::remove_dir_all(&dir);
}
