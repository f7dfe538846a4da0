//! Property test: random sequences of snapshots (complete or not, from two owners) and
//! pushed upserts and deletes with out-of-order source timestamps give exactly the
//! verdicts of a plain reference model of DESIGN.md §5, and leave the same state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use synchronizer::baseline::{Baseline, Observation, Verdict};
use synchronizer_plugin_api::entity::key_hash;

#[derive(Clone, Debug)]
enum Op {
    Snapshot {
        owner: u16,
        /// (id, content, source timestamp)
        entities: Vec<(u8, u8, Option<i64>)>,
        complete: bool,
    },
    Upsert {
        id: u8,
        content: u8,
        ts: i64,
    },
    Delete {
        id: u8,
        ts: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let ts = 0i64..400;
    prop_oneof![
        (
            0u16..2,
            prop::collection::btree_map(0u8..12, (0u8..3, prop::option::of(ts.clone())), 0..10),
            any::<bool>()
        )
            .prop_map(|(owner, m, complete)| Op::Snapshot {
                owner,
                entities: m.into_iter().map(|(id, (c, t))| (id, c, t)).collect(),
                complete,
            }),
        (0u8..12, 0u8..3, ts.clone()).prop_map(|(id, content, ts)| Op::Upsert { id, content, ts }),
        (0u8..12, ts).prop_map(|(id, ts)| Op::Delete { id, ts }),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct Rec {
    content: u8,
    ts: i64,
    owner: u16,
}

/// The reference: plain maps, the rules written out one by one.
#[derive(Default)]
struct Model {
    live: BTreeMap<u8, Rec>,
    tombs: BTreeMap<u8, i64>,
}

impl Model {
    fn observe(&mut self, id: u8, content: u8, ts: i64, owner: Option<u16>) -> Option<Verdict> {
        if let Some(rec) = self.live.get_mut(&id) {
            if let Some(o) = owner {
                rec.owner = o;
            }
            if ts < rec.ts || content == rec.content {
                return None;
            }
            rec.content = content;
            rec.ts = ts;
            return Some(Verdict::Updated);
        }
        if let Some(&t) = self.tombs.get(&id) {
            if ts <= t {
                return None;
            }
            self.tombs.remove(&id);
        }
        self.live.insert(
            id,
            Rec {
                content,
                ts,
                owner: owner.unwrap_or(9),
            },
        );
        Some(Verdict::Created)
    }

    fn apply(&mut self, op: &Op, started: i64, pusher: u16) -> BTreeSet<(u8, Verdict)> {
        let mut out = BTreeSet::new();
        match op {
            Op::Snapshot {
                owner,
                entities,
                complete,
            } => {
                let mut seen = BTreeSet::new();
                for &(id, content, ts) in entities {
                    let known = self.live.contains_key(&id);
                    if let Some(v) = self.observe(id, content, ts.unwrap_or(started), Some(*owner))
                    {
                        out.insert((id, v));
                    }
                    if known || self.live.contains_key(&id) {
                        seen.insert(id);
                    }
                }
                if *complete {
                    let gone: Vec<u8> = self
                        .live
                        .iter()
                        .filter(|(id, r)| {
                            r.owner == *owner && !seen.contains(id) && r.ts <= started
                        })
                        .map(|(id, _)| *id)
                        .collect();
                    for id in gone {
                        self.live.remove(&id);
                        self.tombs.insert(id, started);
                        out.insert((id, Verdict::Deleted));
                    }
                }
            }
            Op::Upsert { id, content, ts } => {
                let owner = if self.live.contains_key(id) {
                    None
                } else {
                    Some(pusher)
                };
                if let Some(v) = self.observe(*id, *content, *ts, owner) {
                    out.insert((*id, v));
                }
            }
            Op::Delete { id, ts } => {
                if let Some(rec) = self.live.get(id) {
                    if rec.ts > *ts {
                        return out;
                    }
                    self.live.remove(id);
                    out.insert((*id, Verdict::Deleted));
                }
                if self.tombs.get(id).is_none_or(|t| t < ts) {
                    self.tombs.insert(*id, *ts);
                }
            }
        }
        out
    }
}

fn name(id: u8) -> String {
    format!("e{id}")
}

fn obs(id: &str, content: u8, ts: i64) -> Observation<'_> {
    Observation {
        id,
        key_hash: key_hash("t", id),
        content_hash: u64::from(content),
        updated_us: ts,
    }
}

fn apply_real(b: &mut Baseline, op: &Op, started: i64, pusher: u16) -> BTreeSet<(u8, Verdict)> {
    let mut out = BTreeSet::new();
    let id_of = |s: &str| s[1..].parse::<u8>().unwrap();
    match op {
        Op::Snapshot {
            owner,
            entities,
            complete,
        } => {
            let g = b.begin_snapshot(*owner);
            for &(id, content, ts) in entities {
                let n = name(id);
                if let Some(v) = b.observe("t", obs(&n, content, ts.unwrap_or(started)), *owner, g)
                {
                    out.insert((id, v));
                }
            }
            if *complete {
                for d in b.sweep("t", *owner, g, started, started) {
                    out.insert((id_of(&d.id), Verdict::Deleted));
                }
            }
        }
        Op::Upsert { id, content, ts } => {
            let n = name(*id);
            if let Some(v) = b.push_upsert("t", obs(&n, *content, *ts), pusher) {
                out.insert((*id, v));
            }
        }
        Op::Delete { id, ts } => {
            if let Some(d) = b.push_delete("t", key_hash("t", &name(*id)), *ts, started) {
                out.insert((id_of(&d.id), Verdict::Deleted));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn the_baseline_agrees_with_the_reference_model(ops in prop::collection::vec(op(), 1..40)) {
        let mut real = Baseline::new(Duration::from_secs(3600));
        let mut model = Model::default();
        let pusher = 2;
        for (i, op) in ops.iter().enumerate() {
            // The host clock moves on by 10 per step; source timestamps are random.
            let started = (i as i64) * 10;
            let got = apply_real(&mut real, op, started, pusher);
            let want = model.apply(op, started, pusher);
            prop_assert_eq!(&got, &want, "step {} {:?}", i, op);
        }
        prop_assert_eq!(real.len("t"), model.live.len());
        for id in model.live.keys() {
            prop_assert_eq!(real.id_of("t", key_hash("t", &name(*id))), Some(name(*id)));
        }
    }
}
