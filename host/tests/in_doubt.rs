//! Property test of the durable store's in-doubt resolution (host/src/persist/): random
//! sequences of committed changes (creations, updates, deletions of a few keys), of which
//! a prefix was settled and a longer prefix reached a consumer, then a crash; and again
//! a crash after the restart's own first commit. After reopening the store, a consumer that applies the changes the store
//! returns as in doubt, on top of whatever prefix it saw, holds exactly the restored
//! view: no phantom, nothing missing, whatever the crash point.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use synchronizer::change::{Action, Change};
use synchronizer::persist::{Commit, Op, Store};
use synchronizer_plugin_api::Entity;

#[derive(Clone, Debug)]
enum Step {
    Set { id: u8, state: u8 },
    Delete { id: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..6, 0u8..4).prop_map(|(id, state)| Step::Set { id, state }),
        1 => (0u8..6).prop_map(|id| Step::Delete { id }),
    ]
}

fn entity(id: u8, state: u8) -> Arc<Entity> {
    Arc::new(Entity::resource("t", &format!("e{id}")).with_state(format!("s{state}")))
}

type View = BTreeMap<String, String>;

static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn apply(view: &mut View, action: Action, e: &Entity) {
    match action {
        Action::Deleted => {
            view.remove(e.id());
        }
        Action::Created | Action::Updated => {
            view.insert(e.id().to_owned(), e.state().unwrap_or_default().to_owned());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_consumer_that_applies_the_changes_in_doubt_holds_the_restored_view(
        steps in prop::collection::vec(step(), 1..20),
        batch in 1usize..4,
        settled_frac in 0.0f64..=1.0,
        seen_frac in 0.0f64..=1.0,
    ) {
        let dir = std::env::temp_dir().join(format!(
            "synchronizer-in-doubt-{}-{}",
            std::process::id(),
            CASE.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.redb");
        let (mut store, _) = Store::open(&path, std::time::Duration::from_secs(600)).unwrap();
        // The changes as the hub decides them: a step that changes nothing has no change.
        let mut truth: View = BTreeMap::new();
        let mut changes: Vec<Arc<Change>> = Vec::new();
        let mut ops: Vec<Op> = Vec::new();
        let owner: Arc<str> = Arc::from("i");
        for s in &steps {
            let (action, e) = match *s {
                Step::Set { id, state } => {
                    let e = entity(id, state);
                    let before = truth.get(e.id()).cloned();
                    if before.as_deref() == e.state() {
                        continue;
                    }
                    let action = if before.is_some() { Action::Updated } else { Action::Created };
                    ops.push(Op::Upsert { entity: e.clone(), updated_us: 0, owner: owner.clone() });
                    (action, e)
                }
                Step::Delete { id } => {
                    let name = format!("e{id}");
                    let Some(state) = truth.get(&name).cloned() else { continue };
                    let e = Arc::new(Entity::resource("t", &name).with_state(state));
                    ops.push(Op::Delete {
                        entity_type: "t".into(),
                        id: name,
                        deleted_us: 0,
                        owner: owner.clone(),
                    });
                    (Action::Deleted, e)
                }
            };
            apply(&mut truth, action, &e);
            changes.push(Arc::new(Change {
                seq: changes.len() as u64 + 1,
                action,
                entity: e,
                instance: owner.clone(),
                sampled_us: 0,
                initial: false,
            }));
        }
        let n = changes.len();
        let settled = ((n as f64) * settled_frac) as usize;
        let seen = settled + (((n - settled) as f64) * seen_frac) as usize;
        // Commit in groups, as the writer does, clearing the settled prefix as it does.
        let mut i = 0;
        while i < n {
            let end = (i + batch).min(n);
            let group = &changes[i..end];
            let commit = Commit {
                // The n-th op is the n-th change's.
                ops: group.iter().map(|c| ops[(c.seq - 1) as usize].clone()).collect(),
                changes: group.to_vec(),
            };
            let through = settled.min(i);
            store
                .write(std::slice::from_ref(&commit), (through > 0).then_some(through as u64))
                .unwrap();
            i = end;
        }
        if settled > 0 {
            store.write(&[], Some(settled as u64)).unwrap();
        }
        drop(store); // the crash

        let (_, restored) = Store::open(&path, std::time::Duration::from_secs(600)).unwrap();
        let view: View = restored
            .entities
            .iter()
            .map(|e| (e.entity.id().to_owned(), e.entity.state().unwrap_or_default().to_owned()))
            .collect();
        prop_assert_eq!(&view, &truth, "the restored view is the committed state");
        // A consumer that saw the first `seen` changes, then what the restart announces.
        let mut consumer: View = BTreeMap::new();
        for c in &changes[..seen] {
            apply(&mut consumer, c.action, &c.entity);
        }
        for d in &restored.in_doubt {
            apply(&mut consumer, d.action, &d.entity);
        }
        let _ = std::fs::remove_dir_all(&dir);
        prop_assert_eq!(consumer, truth, "settled {} seen {} of {}", settled, seen, n);
    }
}
