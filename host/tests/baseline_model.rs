//! Property tests of the baseline's ordering rules (host/src/baseline.rs, "The ordering
//! rule"): random sequences of snapshots (complete or not, from two collectors, with
//! pushes arriving while their call runs), pushed upserts and pushed deletions with
//! out-of-order, missing or skewed source timestamps.
//!
//! - The baseline gives exactly the verdicts of a plain reference model (maps, the rules
//!   written out one by one) and holds the same keys.
//! - A consumer that applies the verdicts never sees `created` for a key it holds, nor
//!   `updated`/`deleted` for one it does not, and ends with the baseline's keys.
//! - Shifting every source timestamp by the same amount (a source clock skewed an hour
//!   either way against the host) changes no verdict.
//! - A pushed deletion never creates anything; a complete snapshot with nothing running
//!   beside it leaves its collector's keys exactly equal to what it listed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use synchronizer::baseline::{Baseline, Observation, UNTIMED, Verdict};
use synchronizer_plugin_api::entity::key_hash;

const PUSHER: u16 = 2;
const HOUR_US: i64 = 3_600_000_000;

#[derive(Clone, Debug)]
enum Push {
    Upsert {
        id: u8,
        content: u8,
        ts: Option<i64>,
    },
    Delete {
        id: u8,
        ts: Option<i64>,
    },
}

#[derive(Clone, Debug)]
enum Op {
    Snapshot {
        owner: u16,
        /// (id, content, source timestamp)
        entities: Vec<(u8, u8, Option<i64>)>,
        complete: bool,
        /// Pushes applied after the call started and before its answer is applied.
        during: Vec<Push>,
    },
    Push(Push),
}

fn push() -> impl Strategy<Value = Push> {
    let ts = prop::option::weighted(0.9, 0i64..400);
    prop_oneof![
        (0u8..12, 0u8..3, ts.clone()).prop_map(|(id, content, ts)| Push::Upsert {
            id,
            content,
            ts
        }),
        (0u8..12, ts).prop_map(|(id, ts)| Push::Delete { id, ts }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let ts = prop::option::weighted(0.8, 0i64..400);
    prop_oneof![
        (
            0u16..2,
            prop::collection::btree_map(0u8..12, (0u8..3, ts), 0..10),
            any::<bool>(),
            prop::collection::vec(push(), 0..3),
        )
            .prop_map(|(owner, m, complete, during)| Op::Snapshot {
                owner,
                entities: m.into_iter().map(|(id, (c, t))| (id, c, t)).collect(),
                complete,
                during,
            }),
        push().prop_map(Op::Push),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct Rec {
    content: u8,
    ts: i64,
    owner: u16,
    /// The owner's generation that last saw or touched it.
    generation: u16,
}

#[derive(Clone, Copy, Debug)]
struct Tomb {
    deleted: i64,
    made: i64,
    owner: u16,
}

/// The reference: plain maps, the rules written out one by one.
#[derive(Default)]
struct Model {
    live: BTreeMap<u8, Rec>,
    tombs: BTreeMap<u8, Tomb>,
    generations: [u16; 3],
    /// Owner 0 collects the type alone in this model, so it owns what pushes create.
    collector: u16,
}

fn ts_or_untimed(ts: Option<i64>) -> i64 {
    ts.unwrap_or(UNTIMED)
}

impl Model {
    fn push(&mut self, p: &Push, now: i64) -> Option<(u8, Verdict)> {
        match *p {
            Push::Upsert { id, content, ts } => {
                let ts = ts_or_untimed(ts);
                if let Some(rec) = self.live.get_mut(&id) {
                    if ts != UNTIMED && ts < rec.ts {
                        return None;
                    }
                    rec.generation = self.generations[rec.owner as usize];
                    if rec.content == content {
                        return None;
                    }
                    rec.content = content;
                    if ts != UNTIMED {
                        rec.ts = ts;
                    }
                    return Some((id, Verdict::Updated));
                }
                let owner = match self.tombs.get(&id) {
                    Some(t) if ts != UNTIMED && ts <= t.deleted => return None,
                    Some(t) => t.owner,
                    None => self.collector,
                };
                self.tombs.remove(&id);
                let generation = self.generations[owner as usize];
                self.live.insert(
                    id,
                    Rec {
                        content,
                        ts,
                        owner,
                        generation,
                    },
                );
                Some((id, Verdict::Created))
            }
            Push::Delete { id, ts } => {
                let ts = ts_or_untimed(ts);
                match self.live.get(&id).cloned() {
                    Some(rec) if ts != UNTIMED && rec.ts > ts => None,
                    Some(rec) => {
                        self.live.remove(&id);
                        self.tombs.insert(
                            id,
                            Tomb {
                                deleted: ts.max(rec.ts),
                                made: now,
                                owner: rec.owner,
                            },
                        );
                        Some((id, Verdict::Deleted))
                    }
                    None => {
                        let before = self.tombs.get(&id).copied();
                        self.tombs.insert(
                            id,
                            Tomb {
                                deleted: before.map_or(ts, |t| t.deleted.max(ts)),
                                made: now,
                                owner: before.map_or(self.collector, |t| t.owner),
                            },
                        );
                        None
                    }
                }
            }
        }
    }

    /// A snapshot of `owner` in `generation`; `(started, now)`: host times of the call's
    /// start and of the sweep.
    fn snapshot(
        &mut self,
        owner: u16,
        entities: &[(u8, u8, Option<i64>)],
        complete: bool,
        (generation, started, now): (u16, i64, i64),
        out: &mut Vec<(u8, Verdict)>,
    ) {
        for &(id, content, ts) in entities {
            let ts = ts_or_untimed(ts);
            if let Some(rec) = self.live.get_mut(&id) {
                if rec.owner == owner && rec.generation == generation {
                    continue;
                }
                rec.owner = owner;
                rec.generation = generation;
                rec.ts = ts;
                if rec.content != content {
                    rec.content = content;
                    out.push((id, Verdict::Updated));
                }
                continue;
            }
            if let Some(t) = self.tombs.get(&id) {
                if t.made >= started {
                    continue;
                }
                self.tombs.remove(&id);
            }
            self.live.insert(
                id,
                Rec {
                    content,
                    ts,
                    owner,
                    generation,
                },
            );
            out.push((id, Verdict::Created));
        }
        if complete {
            let gone: Vec<(u8, i64)> = self
                .live
                .iter()
                .filter(|(_, r)| r.owner == owner && r.generation != generation)
                .map(|(id, r)| (*id, r.ts))
                .collect();
            for (id, ts) in gone {
                self.live.remove(&id);
                self.tombs.insert(
                    id,
                    Tomb {
                        deleted: ts,
                        made: now,
                        owner,
                    },
                );
                out.push((id, Verdict::Deleted));
            }
        }
    }
}

fn name(id: u8) -> String {
    format!("e{id}")
}

fn id_of(s: &str) -> u8 {
    s[1..].parse::<u8>().unwrap()
}

fn obs(id: &str, content: u8, ts: i64) -> Observation<'_> {
    Observation {
        id,
        key_hash: key_hash("t", id),
        content_hash: u64::from(content),
        updated_us: ts,
    }
}

/// Source timestamps shifted by `skew` (the source's clock against the host's).
fn shift(ts: Option<i64>, skew: i64) -> i64 {
    ts.map_or(UNTIMED, |t| t + skew)
}

fn push_real(b: &mut Baseline, p: &Push, skew: i64, now: i64) -> Option<(u8, Verdict)> {
    match *p {
        Push::Upsert { id, content, ts } => {
            let n = name(id);
            b.push_upsert("t", obs(&n, content, shift(ts, skew)), 0)
                .map(|v| (id, v))
        }
        Push::Delete { id, ts } => b
            .push_delete("t", key_hash("t", &name(id)), shift(ts, skew), 0, now)
            .map(|d| (id_of(&d.id), Verdict::Deleted)),
    }
}

/// The verdicts of each step.
type Steps = Vec<Vec<(u8, Verdict)>>;

/// Runs `ops` on a real baseline; the host clock moves on by 10 per step.
fn run_real(ops: &[Op], skew: i64) -> (Steps, BTreeSet<u8>) {
    let mut b = Baseline::new(Duration::from_secs(3600));
    let mut steps = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let started = (i as i64) * 10;
        let mut out = Vec::new();
        match op {
            Op::Snapshot {
                owner,
                entities,
                complete,
                during,
            } => {
                let g = b.begin_snapshot(*owner);
                for p in during {
                    out.extend(push_real(&mut b, p, skew, started + 1));
                }
                for &(id, content, ts) in entities {
                    let n = name(id);
                    if let Some(v) =
                        b.observe("t", obs(&n, content, shift(ts, skew)), *owner, g, started)
                    {
                        out.push((id, v));
                    }
                }
                if *complete {
                    let mut gone: Vec<u8> = b
                        .sweep("t", *owner, g, started + 2)
                        .iter()
                        .map(|d| id_of(&d.id))
                        .collect();
                    gone.sort();
                    out.extend(gone.into_iter().map(|id| (id, Verdict::Deleted)));
                }
            }
            Op::Push(p) => out.extend(push_real(&mut b, p, skew, started)),
        }
        steps.push(out);
    }
    let keys = (0u8..12)
        .filter(|id| b.id_of("t", key_hash("t", &name(*id))).is_some())
        .collect();
    (steps, keys)
}

fn run_model(ops: &[Op]) -> (Steps, BTreeSet<u8>, Model) {
    let mut m = Model::default();
    let mut steps = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let started = (i as i64) * 10;
        let mut out = Vec::new();
        match op {
            Op::Snapshot {
                owner,
                entities,
                complete,
                during,
            } => {
                m.generations[*owner as usize] = m.generations[*owner as usize].wrapping_add(1);
                let g = m.generations[*owner as usize];
                for p in during {
                    out.extend(m.push(p, started + 1));
                }
                m.snapshot(
                    *owner,
                    entities,
                    *complete,
                    (g, started, started + 2),
                    &mut out,
                );
            }
            Op::Push(p) => out.extend(m.push(p, started)),
        }
        steps.push(out);
    }
    let keys = m.live.keys().copied().collect();
    (steps, keys, m)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn the_baseline_agrees_with_the_reference_model(ops in prop::collection::vec(op(), 1..40)) {
        let (got, got_keys) = run_real(&ops, 0);
        let (want, want_keys, _) = run_model(&ops);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            prop_assert_eq!(g, w, "step {} {:?}", i, &ops[i]);
        }
        prop_assert_eq!(got_keys, want_keys);
    }

    #[test]
    fn a_consumer_applying_the_verdicts_ends_with_the_baseline(ops in prop::collection::vec(op(), 1..40)) {
        let (steps, keys) = run_real(&ops, 0);
        let mut held = BTreeSet::new();
        for (i, step) in steps.iter().enumerate() {
            for &(id, v) in step {
                match v {
                    Verdict::Created => prop_assert!(held.insert(id), "step {}: created {} it holds", i, id),
                    Verdict::Updated => prop_assert!(held.contains(&id), "step {}: updated {} it lacks", i, id),
                    Verdict::Deleted => prop_assert!(held.remove(&id), "step {}: deleted {} it lacks", i, id),
                }
            }
        }
        prop_assert_eq!(held, keys);
    }

    #[test]
    fn a_skewed_source_clock_changes_nothing(ops in prop::collection::vec(op(), 1..40), hours in -1i64..=1) {
        let skew = hours * HOUR_US + 17;
        prop_assert_eq!(run_real(&ops, skew), run_real(&ops, 0));
    }

    #[test]
    fn a_pushed_deletion_never_creates(ops in prop::collection::vec(op(), 1..40)) {
        let (steps, _) = run_real(&ops, 0);
        for (op, step) in ops.iter().zip(&steps) {
            if let Op::Push(Push::Delete { .. }) = op {
                prop_assert!(step.iter().all(|(_, v)| *v == Verdict::Deleted));
            }
        }
    }

    #[test]
    fn a_quiet_complete_snapshot_is_the_authority(
        ops in prop::collection::vec(op(), 0..40),
        last in prop::collection::btree_map(0u8..12, (0u8..3, prop::option::of(0i64..400)), 0..10),
    ) {
        let mut ops = ops;
        ops.push(Op::Snapshot {
            owner: 0,
            entities: last.iter().map(|(id, (c, t))| (*id, *c, *t)).collect(),
            complete: true,
            during: Vec::new(),
        });
        let (_, _, model) = run_model(&ops);
        let (_, keys) = run_real(&ops, 0);
        let of_collector: BTreeSet<u8> = model
            .live
            .iter()
            .filter(|(_, r)| r.owner == 0)
            .map(|(id, _)| *id)
            .collect();
        let listed: BTreeSet<u8> = last.keys().copied().collect();
        prop_assert_eq!(&of_collector, &listed);
        for (id, (content, _)) in &last {
            prop_assert_eq!(model.live[id].content, *content);
        }
        // Whatever else is live belongs to the other collector.
        prop_assert!(keys.iter().all(|id| listed.contains(id) || model.live[id].owner == 1));
    }
}

#[test]
fn the_pusher_owns_nothing_when_one_collector_collects_the_type() {
    // The model's fixed choice (owner 0 adopts pushes) is the host's rule for a type with
    // exactly one collector; a bus-only type stays the pusher's (host/src/hub.rs).
    let mut b = Baseline::new(Duration::from_secs(60));
    assert_eq!(
        b.push_upsert("t", obs("e1", 1, 5), PUSHER),
        Some(Verdict::Created)
    );
    let g = b.begin_snapshot(0);
    assert!(
        b.sweep("t", 0, g, 10).is_empty(),
        "owned by the pusher, not swept by owner 0"
    );
}
