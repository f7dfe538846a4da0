//! The hub: the one place where data becomes changes. It owns the baseline, the current
//! view of every entity and the subscribers, so that every subscriber sees the same
//! changes in the same order as the view.
//!
//! Two locks, taken in this order: the writer's (the baseline and what judging a batch
//! needs; held for as long as a batch takes, by one batch at a time) and the readers'
//! (the view, which is a persistent map, and the subscribers; held only to swap in the
//! view a batch produced and hand the batch to the subscribers, to add a subscriber or
//! to copy the view: the batch's changes go into a copy of the view outside it).
//! Judging a million-entity snapshot
//! never holds up a reader: `GET /v1/entities`, get-all and a subscriber's snapshot take
//! a copy of the view in O(1) and collect and sort it on their own time
//! ([`crate::view`]). Marking a snapshot's start takes neither lock.
//!
//! A batch (a snapshot, or a batch of pushed changes) goes through three steps:
//!
//! 1. **apply**: the baseline judges it ([`crate::baseline`] says by which rules) and the
//!    batch's changes get their `seq`;
//! 2. **commit** (only with a durable store): the store writes the changes, and records
//!    them as *in doubt* until every consumer that confirms (the reliable outputs) has
//!    confirmed them; see [`crate::persist`];
//! 3. **announce**: the view takes the changes and every subscriber gets them.
//!
//! So nothing is announced that the store does not know: a crash between commit and
//! announce leaves the changes in doubt, and the next start announces them again.
//!
//! Delivery never blocks: each subscriber has a bounded queue that is filled with
//! `try_send`. A subscriber whose queue is full is marked lagged and skipped; as soon as
//! its queue has room again it gets [`Event::Resync`] followed by [`Event::Snapshot`] of
//! its types, instead of silently missing changes.
//!
//! Reliable outputs ([`Hub::subscribe_reliable`]) are the exception: they get every
//! change through an unbounded queue and confirm it, and producers wait for those
//! confirmations (see [`crate::delivery`]). The durable store is one of them: producers
//! wait until their changes are committed and announced.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use synchronizer_plugin_api::Entity;
use synchronizer_plugin_api::abi::{FfiPushed, FfiSnapshot, PushAction};
use synchronizer_plugin_api::entity::system_time_to_micros;
use tokio::sync::{mpsc, watch};

use crate::baseline::{
    Baseline, Deletion, Generations, HashIndex, Observation, Owner, UNTIMED, Verdict, hash_snapshot,
};
use crate::change::{Action, Change, Event, ResyncReason};
use crate::delivery::{Confirmer, Deliveries};
use crate::metrics::{ActionLabels, Metrics, TypeLabels};
use crate::persist::{Commit, Op, Restored};
use crate::queue::{QueueRx, QueueTx};
use crate::view::{Snapshot, View};

/// Which entity types a subscriber wants; empty means all.
#[derive(Clone, Debug, Default)]
pub struct TypeFilter(Arc<[String]>);

impl TypeFilter {
    /// A filter for these types (none: every type).
    pub fn new<S: AsRef<str>>(types: &[S]) -> Self {
        TypeFilter(types.iter().map(|t| t.as_ref().to_owned()).collect())
    }

    /// Whether `entity_type` passes.
    pub fn matches(&self, entity_type: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|t| t == entity_type)
    }

    /// The types, empty for all.
    pub fn types(&self) -> &[String] {
        &self.0
    }
}

struct Subscriber {
    id: u64,
    filter: TypeFilter,
    tx: QueueTx,
    lagged: bool,
}

/// Which plugin instance sent data, and how.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The instance's index (baseline owner).
    pub owner: Owner,
    /// The instance's name.
    pub instance: Arc<str>,
}

/// What one snapshot did, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Changes by action.
    pub created: usize,
    /// Changes by action.
    pub updated: usize,
    /// Changes by action.
    pub deleted: usize,
    /// Entities dropped as older than what the baseline holds, or as repeats.
    pub dropped: usize,
    /// The `seq` of the last change emitted, if any.
    pub last_seq: Option<u64>,
}

/// What judging batches needs: only the writer holds it, for as long as a batch takes.
struct State {
    baseline: Baseline,
    next_seq: u64,
    /// Where batches go to be committed before they are announced (the store's writer
    /// thread), when there is a durable store.
    persist: Option<std::sync::mpsc::Sender<Commit>>,
    /// The collector of each type, where exactly one instance collects it: a pushed key
    /// the baseline does not know is owned by it.
    collectors: HashMap<String, Option<Owner>>,
    /// The types each instance declared (`PluginInfo::entity_types`); an instance not
    /// listed, or with none, has open-ended types.
    declared: HashMap<Owner, Arc<[String]>>,
    /// Instance names by owner index, as the durable store records owners.
    names: HashMap<Owner, Arc<str>>,
    /// Relations that name their target by a property, and the index that resolves them.
    resolver: crate::resolve::Resolver,
}

/// What readers share with the writer: the view and the subscribers. Held only briefly
/// (to announce a batch, to add a subscriber, to copy the view), never while a batch is
/// judged.
struct Shared {
    view: View,
    subscribers: Vec<Subscriber>,
    /// Reliable outputs: every change, never dropped (their producers wait instead).
    reliable: Vec<mpsc::UnboundedSender<Arc<Change>>>,
    next_subscriber: u64,
    lagged_total: u64,
}

/// Batches of at most this many changes are applied to the view under the readers'
/// lock; larger ones to a copy outside it ([`Hub::announce`]).
const IN_PLACE_MAX: usize = 1024;

/// The hub; cheap to share behind an `Arc`.
pub struct Hub {
    /// Taken before `shared` when both are needed.
    state: Mutex<State>,
    /// With a durable store: the latest change of each key that the writer has decided
    /// and sent to the store but that is not announced yet (so not in the view), by key
    /// hash. The writer reads the view through it ([`Hub::latest`], [`Hub::current_view`]),
    /// so that what it decides next (a kept property, an index of relations by property)
    /// never misses a batch still being committed. Its own lock, never held with
    /// `shared`, so that readers of the view never wait for it.
    in_flight: Mutex<HashIndex<Arc<Change>>>,
    shared: Mutex<Shared>,
    /// Held by the one announcing, for the whole of it: the view is changed on a copy
    /// outside `shared`, and this keeps two announcers (the store's writer, and the
    /// writer's fallback when the store stops) from each changing a copy of their own.
    announcing: Mutex<()>,
    generations: Generations,
    /// The `seq` of the last change decided (0 before the first).
    last_seq: AtomicU64,
    /// The host's runtime, where batches are judged ([`Hub::on_writer`]).
    runtime: OnceLock<tokio::runtime::Handle>,
    metrics: Arc<Metrics>,
    deliveries: Arc<Deliveries>,
    epoch: Arc<str>,
    /// The `seq` of the last change announced.
    announced: watch::Sender<u64>,
}

/// The largest pushed batch applied where it arrives when the writer's lock is free
/// ([`Hub::submit_push`]); a larger one goes to a blocking thread.
const INLINE_PUSH: usize = 4096;

/// A snapshot checked and hashed, ready to be judged.
struct PreparedSnapshot {
    entities: Vec<Arc<Entity>>,
    incomplete: Vec<synchronizer_plugin_api::abi::FfiIncomplete>,
    hashed: Vec<(String, Vec<crate::baseline::Hashed>)>,
}

/// Where a snapshot call starts: taken just before the plugin is called, so that what
/// happens while it runs wins over it ([`crate::baseline`]).
#[derive(Clone, Copy, Debug)]
pub struct SnapshotStart {
    generation: u16,
    /// Host time the call started, microseconds since the Unix epoch.
    pub started_us: i64,
}

/// A new epoch: the time in microseconds, in base 36 (`mgk3q9x2a` or so), with the
/// process id, so that two runs never share one.
fn new_epoch() -> Arc<str> {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let mut n = micros ^ (u128::from(std::process::id()) << 64);
    let mut digits = Vec::new();
    while n > 0 {
        let d = (n % 36) as u8;
        digits.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        n /= 36;
    }
    digits.reverse();
    Arc::from(String::from_utf8(digits).unwrap_or_default())
}

fn now_us() -> i64 {
    system_time_to_micros(SystemTime::now())
}

impl Hub {
    /// A hub whose baseline keeps tombstones for `tombstone_ttl`.
    pub fn new(tombstone_ttl: Duration) -> Self {
        let baseline = Baseline::new(tombstone_ttl);
        Hub {
            generations: baseline.generations(),
            state: Mutex::new(State {
                baseline,
                next_seq: 1,
                persist: None,
                collectors: HashMap::new(),
                declared: HashMap::new(),
                names: HashMap::new(),
                resolver: Default::default(),
            }),
            announcing: Mutex::new(()),
            in_flight: Mutex::new(HashIndex::default()),
            shared: Mutex::new(Shared {
                view: View::default(),
                subscribers: Vec::new(),
                reliable: Vec::new(),
                next_subscriber: 1,
                lagged_total: 0,
            }),
            last_seq: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::try_current()
                .map(OnceLock::from)
                .unwrap_or_default(),

            metrics: Arc::new(Metrics::default()),
            deliveries: Arc::new(Deliveries::default()),
            epoch: new_epoch(),
            announced: watch::Sender::new(0),
        }
    }

    /// Tells the hub about an instance: the types its plugin declares (empty:
    /// open-ended) and the types it collects by snapshot (none for a bus-only instance).
    /// A type collected by exactly one instance is owned by it when a push creates it.
    pub fn register(&self, origin: &Origin, declared: &[String], collected: &[String]) {
        let mut state = self.lock();
        state.names.insert(origin.owner, origin.instance.clone());
        if !declared.is_empty() {
            state.declared.insert(origin.owner, declared.into());
        }
        for t in collected {
            state
                .collectors
                .entry(t.clone())
                .and_modify(|o| {
                    if *o != Some(origin.owner) {
                        *o = None;
                    }
                })
                .or_insert(Some(origin.owner));
        }
    }

    /// Loads what the durable store held (baseline and view); `owner_of` maps an instance
    /// name to its owner index. From now on every batch is committed through `persist`
    /// before it is announced. The changes the store held in doubt are announced again
    /// by [`Hub::announce_in_doubt`].
    pub fn restore(
        &self,
        restored: &mut Restored,
        owner_of: impl Fn(&str) -> Owner,
        persist: std::sync::mpsc::Sender<Commit>,
    ) {
        let now = now_us();
        let mut state = self.lock();
        let state = &mut *state;
        let mut shared = self.shared();
        let owner = |state: &mut State, name: &str| {
            let o = owner_of(name);
            state.names.entry(o).or_insert_with(|| Arc::from(name));
            o
        };
        let mut dependents: HashMap<String, Arc<str>> = HashMap::new();
        for e in restored.entities.drain(..) {
            let entity = e.entity;
            if entity.has_selectors() {
                dependents.insert(entity.key(), Arc::from(e.owner.as_str()));
            }
            let o = owner(state, &e.owner);
            state.baseline.restore(
                entity.entity_type(),
                entity.id(),
                e.content,
                e.updated_us,
                o,
            );
            shared.view.insert(entity);
        }
        // The store holds what plugins sent; the view, what consumers see.
        state.resolver.restore(&mut shared.view, |e| {
            dependents
                .get(&e.key())
                .cloned()
                .unwrap_or_else(|| Arc::from(""))
        });
        for t in restored.tombstones.drain(..) {
            state.baseline.restore_tombstone(
                &t.entity_type,
                &t.id,
                t.deleted_us,
                owner_of(&t.owner),
                // Kept for the retention from when it was made, across restarts.
                t.made_us.min(now),
            );
        }
        state.persist = Some(persist);
    }

    /// Announces again, as new changes, what the store held in doubt: changes committed
    /// before a crash that some consumer may not have received. Call it once the
    /// subscribers and outputs of this run exist. Returns how many there were.
    pub fn announce_in_doubt(&self, restored: &mut Restored) -> usize {
        let in_doubt = std::mem::take(&mut restored.in_doubt);
        let n = in_doubt.len();
        if n == 0 {
            return 0;
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        let sampled = now_us();
        let changes: Vec<Arc<Change>> = in_doubt
            .into_iter()
            .map(|d| {
                let seq = state.take_seq(&self.last_seq);
                Arc::new(Change {
                    seq,
                    action: d.action,
                    entity: d.entity,
                    instance: Arc::from(d.instance.as_str()),
                    sampled_us: sampled,
                    initial: false,
                })
            })
            .collect();
        tracing::info!(
            changes = n,
            "announcing again the changes a crash left in doubt"
        );
        self.commit(state, Vec::new(), changes);
        n
    }

    /// Stops writing to the durable store (the writer finishes, and announces, what is
    /// queued).
    pub fn stop_persisting(&self) {
        self.lock().persist = None;
    }

    /// The host's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Refreshes the gauges that are read rather than counted (entities per type,
    /// subscribers and their queues).
    pub fn refresh_gauges(&self) {
        let state = self.shared();
        for (entity_type, n) in state.view.counts() {
            self.metrics
                .entities
                .get_or_create(&TypeLabels {
                    r#type: crate::metrics::label_value(&entity_type),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.metrics
            .subscribers
            .set(i64::try_from(state.subscribers.len()).unwrap_or(i64::MAX));
        let deepest = state
            .subscribers
            .iter()
            .map(|s| s.tx.queued())
            .max()
            .unwrap_or(0);
        self.metrics
            .subscriber_queue_max
            .set(i64::try_from(deepest).unwrap_or(i64::MAX));
    }

    fn flying(&self) -> MutexGuard<'_, HashIndex<Arc<Change>>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entity the writer last decided for a key: an in-flight change's (none if it
    /// deletes), else the view's. A change leaves `in_flight` only once it is in the
    /// view, so it is found in one or the other.
    fn latest(&self, entity_type: &str, key_hash: u64) -> Option<Arc<Entity>> {
        if let Some(c) = self.flying().get(&key_hash) {
            return (c.action != Action::Deleted).then(|| c.entity.clone());
        }
        self.shared().view.get(entity_type, key_hash).cloned()
    }

    /// The view as the writer has decided it: the announced view with the in-flight
    /// changes applied (a copy: O(1) to take, plus one insert per change in flight). A
    /// change both in the view and still in flight is applied twice, the same way.
    fn current_view(&self) -> View {
        let flying: Vec<Arc<Change>> = self.flying().values().cloned().collect();
        let mut view = self.shared().view.clone();
        for c in &flying {
            view.apply(c);
        }
        view
    }

    /// Announced changes are in the view: no longer in flight, unless a later change of
    /// the same key is.
    fn landed(&self, changes: &[Arc<Change>]) {
        let mut in_flight = self.flying();
        if in_flight.is_empty() {
            return;
        }
        for c in changes {
            let key_hash = c.entity.key_hash();
            if in_flight.get(&key_hash).is_some_and(|f| f.seq == c.seq) {
                in_flight.remove(&key_hash);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the baseline half-written in a way
        // that matters more than stopping: keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `job` (which judges a batch) on one of tokio's blocking threads and waits for
    /// its result without holding an async worker, so that a million-entity diff never
    /// stalls the runtime (other instances' schedules, the HTTP API). Batches are judged
    /// one at a time under the writer's lock. `None` if the job panicked.
    pub async fn on_writer<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        // A blocking task, not a thread of our own fed by a channel: tokio knows it is
        // busy (a paused test clock does not jump past it), and its pool is shared. A bus
        // plugin's push is polled on the plugin's own runtime, where the host's tokio has
        // no context: the host's runtime, remembered, takes the job then.
        let handle = match tokio::runtime::Handle::try_current() {
            Ok(current) => {
                let _ = self.runtime.set(current.clone());
                Some(current)
            }
            Err(_) => self.runtime.get().cloned(),
        };
        let Some(handle) = handle else {
            // No runtime has ever been seen (a hub used from plain threads): here.
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).ok();
        };
        match handle.spawn_blocking(job).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "the host failed to apply a batch (a bug: please report it)");
                None
            }
        }
    }

    /// [`Hub::apply_snapshot_started`] off the async workers ([`Hub::on_writer`]).
    pub async fn submit_snapshot(
        self: &Arc<Self>,
        origin: &Origin,
        snapshot: FfiSnapshot,
        covered: &[String],
        start: SnapshotStart,
        initial: bool,
    ) -> Option<(Vec<Arc<Entity>>, Applied)> {
        // Hashing a million entities needs no lock: it runs on a blocking thread before
        // the batch joins the writer's queue, so the writer is busy only for the diff.
        let started = std::time::Instant::now();
        let hub = self.clone();
        let origin = origin.clone();
        let covered = covered.to_vec();
        let (hub, origin, prepared) = tokio::task::spawn_blocking(move || {
            let prepared = hub.prepare_snapshot(&origin, snapshot);
            (hub, origin, prepared)
        })
        .await
        .ok()?;
        let instance = origin.instance.clone();
        let judged = hub
            .clone()
            .on_writer(move || hub.judge_snapshot(&origin, prepared, &covered, start, initial))
            .await;
        self.metrics
            .diff_durations
            .get_or_create(&crate::metrics::InstanceLabels {
                plugin_instance: crate::metrics::label_value(&instance),
            })
            .observe(started.elapsed().as_secs_f64());
        judged
    }

    /// [`Hub::apply_push`] off the async workers ([`Hub::on_writer`]).
    pub async fn submit_push(
        self: &Arc<Self>,
        origin: &Origin,
        batch: Vec<FfiPushed>,
    ) -> Option<Applied> {
        // A small batch while no batch is being judged is applied here, as it arrives:
        // a hand-off to another thread would cost the bus a fifth of its throughput.
        let free = self.state.try_lock().is_ok();
        if free && batch.len() <= INLINE_PUSH {
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.apply_push(origin, batch)
            }))
            .ok();
        }
        let hub = self.clone();
        let origin = origin.clone();
        self.on_writer(move || hub.apply_push(&origin, batch)).await
    }

    /// Remembers the runtime this is called on as where batches are judged, for pushes
    /// that arrive on a plugin's own runtime. Called where a bus plugin is started.
    pub fn remember_runtime(&self) {
        if let Ok(current) = tokio::runtime::Handle::try_current() {
            let _ = self.runtime.set(current);
        }
    }

    /// Marks the start of a snapshot call of `origin`: call it just before the plugin is
    /// called, and pass the result to [`Hub::apply_snapshot_started`].
    pub fn begin_snapshot(&self, origin: &Origin) -> SnapshotStart {
        let started_us = now_us();
        // Not the baseline's lock: a start is marked while another batch is judged.
        let generation = self.generations.begin(origin.owner);
        SnapshotStart {
            generation,
            started_us,
        }
    }

    /// Applies a snapshot from `origin` whose call started at `started_us`, as
    /// [`Hub::apply_snapshot_started`] does (for callers that did not mark the start).
    pub fn apply_snapshot(
        &self,
        origin: &Origin,
        snapshot: FfiSnapshot,
        covered: &[String],
        started_us: i64,
        initial: bool,
    ) -> (Vec<Arc<Entity>>, Applied) {
        let mut start = self.begin_snapshot(origin);
        start.started_us = started_us;
        self.apply_snapshot_started(origin, snapshot, covered, start, initial)
    }

    /// Applies a snapshot from `origin` whose call started at `start`. `covered` lists
    /// the types the snapshot is complete for (absent keys of those types are deleted);
    /// types in `snapshot.incomplete` are removed from it. Returns the entities of the
    /// snapshot (for get-all) and what changed.
    pub fn apply_snapshot_started(
        &self,
        origin: &Origin,
        snapshot: FfiSnapshot,
        covered: &[String],
        start: SnapshotStart,
        initial: bool,
    ) -> (Vec<Arc<Entity>>, Applied) {
        let prepared = self.prepare_snapshot(origin, snapshot);
        self.judge_snapshot(origin, prepared, covered, start, initial)
    }

    /// What needs no state: source times checked, every entity hashed (on every core).
    fn prepare_snapshot(&self, origin: &Origin, snapshot: FfiSnapshot) -> PreparedSnapshot {
        let FfiSnapshot {
            entities,
            incomplete,
        } = snapshot;
        let mut entities = entities.into_vec();
        self.sanitize(origin, &mut entities);
        let hashed = hash_snapshot(&entities);
        // Shared from here on (view, changes, get-all); allocated before the writer's
        // lock is taken.
        let entities = entities.into_iter().map(Arc::new).collect();
        PreparedSnapshot {
            entities,
            incomplete: incomplete.into_vec(),
            hashed,
        }
    }

    /// The writer's part of [`Hub::apply_snapshot_started`].
    fn judge_snapshot(
        &self,
        origin: &Origin,
        prepared: PreparedSnapshot,
        covered: &[String],
        start: SnapshotStart,
        initial: bool,
    ) -> (Vec<Arc<Entity>>, Applied) {
        let PreparedSnapshot {
            entities,
            incomplete,
            hashed,
        } = prepared;
        let mut guard = self.lock();
        let state = &mut *guard;
        let generation = start.generation;
        let declared = state.declared.get(&origin.owner).cloned();
        let mut verdicts: Vec<(u32, Verdict)> = Vec::new();
        let mut refused: Vec<u32> = Vec::new();
        for (entity_type, mut batch) in hashed {
            if let Some(declared) = &declared
                && !declared.contains(&entity_type)
            {
                self.refuse_unlisted(origin, &entity_type, batch.len());
                refused.extend(batch.iter().map(|h| h.index));
                continue;
            }
            // A plugin that answers with more of its types than it was asked for does not
            // get the others into the baseline.
            if !covered.is_empty() && !covered.contains(&entity_type) {
                tracing::debug!(
                    instance = %origin.instance,
                    %entity_type,
                    entities = batch.len(),
                    "ignoring entities of a type that is not active"
                );
                continue;
            }
            verdicts.extend(state.baseline.observe_many(
                &entity_type,
                &mut batch,
                origin.owner,
                generation,
                start.started_us,
                |i| entities.get(i as usize).map_or("", |e| e.id()),
            ));
        }
        // Indexed as the plugin sent them: verdicts refer to these positions.
        let mut entities = entities;
        let mut batch = Collapser::default();
        verdicts.sort_unstable_by_key(|(i, _)| *i);
        for (i, v) in verdicts {
            if let Some(entity) = entities.get(i as usize) {
                batch.record(entity.key_hash(), entity.clone(), v);
            }
        }
        // Every type the snapshot is complete for: the covered types, or, for a plugin
        // with open-ended types, every type it reported or owns.
        let mut complete: Vec<String> = if covered.is_empty() {
            let mut seen: Vec<String> = state
                .baseline
                .counts()
                .into_iter()
                .map(|(t, _)| t)
                .collect();
            seen.extend(entities.iter().map(|e| e.entity_type().to_owned()));
            seen.sort();
            seen.dedup();
            seen
        } else {
            covered.to_vec()
        };
        complete.retain(|t| !incomplete.iter().any(|i| i.entity_type.as_str() == t));
        let now = now_us();
        let swept: Vec<(&String, Vec<Deletion>)> = complete
            .iter()
            .map(|t| (t, state.baseline.sweep(t, origin.owner, generation, now)))
            .filter(|(_, d)| !d.is_empty())
            .collect();
        if !swept.is_empty() {
            let shared = self.shared();
            for (entity_type, deletions) in swept {
                for d in deletions {
                    let last = shared.last_known(entity_type, d.key_hash, &d.id);
                    batch.record(d.key_hash, last, Verdict::Deleted);
                }
            }
        }
        state.baseline.expire_tombstones(now);
        let mut applied = Applied::default();
        let (mut changes, ops) = state.emit(
            batch,
            origin,
            start.started_us,
            initial,
            &mut applied,
            &self.last_seq,
        );
        self.resolve(state, &mut changes);
        self.commit(state, ops, changes);
        self.count(&applied);
        // Get-all's answer carries the resolved keys too.
        if entities.iter().any(|e| e.has_selectors()) {
            for e in entities.iter_mut() {
                *e = state.resolver.resolve(e);
            }
        }
        drop(guard);
        if !refused.is_empty() {
            let refused: std::collections::HashSet<u32> = refused.into_iter().collect();
            let mut i = 0u32;
            entities.retain(|_| {
                i += 1;
                !refused.contains(&(i - 1))
            });
        }
        if !covered.is_empty() {
            entities.retain(|e| covered.iter().any(|t| t == e.entity_type()));
        }
        (entities, applied)
    }

    /// Applies a batch of pushed changes from `origin`. Returns what changed.
    pub fn apply_push(&self, origin: &Origin, batch: Vec<FfiPushed>) -> Applied {
        let sampled = now_us();
        let mut batch = batch;
        let mut refused_types: Vec<(String, usize)> = Vec::new();
        {
            let state = self.lock();
            if let Some(declared) = state.declared.get(&origin.owner) {
                batch.retain(|p| {
                    let t = p.entity.entity_type();
                    let ok = declared.iter().any(|d| d == t);
                    if !ok {
                        match refused_types.iter_mut().find(|(r, _)| r == t) {
                            Some((_, n)) => *n += 1,
                            None => refused_types.push((t.to_owned(), 1)),
                        }
                    }
                    ok
                });
            }
        }
        for (t, n) in &refused_types {
            self.refuse_unlisted(origin, t, *n);
        }
        for p in &mut batch {
            self.sanitize(origin, std::slice::from_mut(&mut p.entity));
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut pending = Collapser::default();
        let mut applied = Applied::default();
        for pushed in batch {
            let mut entity = pushed.entity;
            if entity.has_kept_properties() {
                // Properties the source does not carry keep the value held for the key
                // (`Entity::with_kept_properties`): the batch's latest, else the view's.
                let key_hash = entity.key_hash();
                let stored = pending
                    .latest(key_hash)
                    .or_else(|| self.latest(entity.entity_type(), key_hash));
                entity = entity.merged_with(stored.as_deref());
            }
            let entity = Arc::new(entity);
            let obs = observation(&entity);
            let key_hash = obs.key_hash;
            let owner_of_new = state.owner_of_new(entity.entity_type(), origin.owner);
            let verdict = match pushed.action {
                PushAction::Upsert => {
                    state
                        .baseline
                        .push_upsert(entity.entity_type(), obs, owner_of_new)
                }
                PushAction::Delete => state
                    .baseline
                    .push_delete(
                        entity.entity_type(),
                        obs.key_hash,
                        obs.updated_us,
                        owner_of_new,
                        sampled,
                    )
                    .map(|_| Verdict::Deleted),
            };
            match verdict {
                Some(v) => {
                    let entity = if v == Verdict::Deleted {
                        // The richest last-known form: the view's, or what is on its way
                        // into it.
                        pending
                            .latest(key_hash)
                            .or_else(|| self.latest(entity.entity_type(), key_hash))
                            .unwrap_or(entity)
                    } else {
                        entity
                    };
                    pending.record(key_hash, entity, v)
                }
                None => applied.dropped += 1,
            }
        }
        state.baseline.expire_tombstones(sampled);
        let (mut changes, ops) = state.emit(
            pending,
            origin,
            sampled,
            false,
            &mut applied,
            &self.last_seq,
        );
        self.resolve(state, &mut changes);
        self.commit(state, ops, changes);
        self.count(&applied);
        applied
    }

    /// Clears source timestamps outside the project's range (the host's sample time
    /// stands in), counted and logged per batch.
    fn sanitize(&self, origin: &Origin, entities: &mut [Entity]) {
        let mut refused = 0u64;
        let mut example: Option<(String, i64)> = None;
        for e in entities.iter_mut() {
            if let Some(bad) = crate::ingress::sanitize_times(e) {
                refused += 1;
                if example.is_none() {
                    example = Some((e.key(), bad));
                }
            }
        }
        if let Some((key, micros)) = example {
            self.metrics
                .invalid_timestamps
                .get_or_create(&crate::metrics::InstanceLabels {
                    plugin_instance: origin.instance.to_string(),
                })
                .inc_by(refused);
            tracing::warn!(
                instance = %origin.instance,
                entities = refused,
                example = %key,
                micros,
                "source timestamps outside 0001-01-01..9999-12-31 were discarded; the sample time stands in"
            );
        }
    }

    /// Resolves the relations by property of a batch's changes, and appends the
    /// dependents the batch re-resolved as `updated` changes ([`crate::resolve`]).
    fn resolve(&self, state: &mut State, changes: &mut Vec<Arc<Change>>) {
        let again = state.resolver.process(changes, || self.current_view());
        if again.is_empty() {
            return;
        }
        let sampled = now_us();
        tracing::debug!(
            dependents = again.len(),
            "relations by property re-resolved: announced again"
        );
        for r in again {
            let seq = state.take_seq(&self.last_seq);
            changes.push(Arc::new(Change {
                seq,
                action: Action::Updated,
                entity: r.entity,
                instance: r.instance,
                sampled_us: sampled,
                initial: false,
            }));
        }
    }

    fn refuse_unlisted(&self, origin: &Origin, entity_type: &str, n: usize) {
        self.metrics
            .refused_entities(&origin.instance, "unlisted_type", n as u64);
        tracing::warn!(
            instance = %origin.instance,
            %entity_type,
            entities = n,
            "the plugin reported entities of a type it does not declare; they are refused: add the type to PluginInfo::entity_types"
        );
    }

    /// Commits a batch (when there is a durable store) and announces it: with a store,
    /// its writer announces once the batch is durable; without one, now.
    fn commit(&self, state: &mut State, ops: Vec<Op>, changes: Vec<Arc<Change>>) {
        if let Some(tx) = &state.persist {
            if ops.is_empty() && changes.is_empty() {
                return;
            }
            if !changes.is_empty() {
                let mut in_flight = self.flying();
                for c in &changes {
                    in_flight.insert(c.entity.key_hash(), c.clone());
                }
            }
            match tx.send(Commit { ops, changes }) {
                Ok(()) => {}
                Err(std::sync::mpsc::SendError(commit)) => {
                    tracing::error!(
                        "the baseline store's writer has stopped; changes are no longer made durable"
                    );
                    state.persist = None;
                    // The store's writer is gone: what it had queued is never announced.
                    self.flying().clear();
                    self.announce(commit.changes);
                }
            }
        } else {
            self.announce(changes);
        }
    }

    /// Announces committed changes: the view takes them and every subscriber gets them.
    /// The store's writer calls it, in commit order.
    pub(crate) fn announce(&self, changes: Vec<Arc<Change>>) {
        let Some(last) = changes.last().map(|c| c.seq) else {
            return;
        };
        let _announcing = self.announcing.lock().unwrap_or_else(|p| p.into_inner());
        let lagged = if changes.len() <= IN_PLACE_MAX {
            // A small batch (a bus batch, a 1% round of a small instance) goes into the
            // view itself, in a hold of at most a millisecond: with no reader holding a
            // copy the maps change in place, where changing a copy would clone every
            // node on each change's path (a tenth of the host's CPU per bus message).
            let mut state = self.shared();
            for c in &changes {
                state.view.apply(c);
            }
            state.fan_out(&changes)
        } else {
            // A large one goes into a copy of the view (O(1) to take: the maps are
            // persistent), outside the readers' lock: a first snapshot of 2,000,000
            // entities takes about a second to insert, and readers and subscribers must
            // not wait for it. The copy replaces the view, and the subscribers get the
            // changes, in one short hold.
            let mut view = self.shared().view.clone();
            for c in &changes {
                view.apply(c);
            }
            let mut state = self.shared();
            let previous = std::mem::replace(&mut state.view, view);
            let lagged = state.fan_out(&changes);
            drop(state);
            // What only the old view held (the entities a batch replaced) is freed
            // here, outside the lock.
            drop(previous);
            lagged
        };
        // In the view now (after it, so that the writer finds each change in one of
        // the two): no longer in flight.
        self.landed(&changes);
        if lagged > 0 {
            self.metrics.subscriber_resyncs.inc_by(lagged);
        }
        self.announced.send_if_modified(|v| {
            let newer = last > *v;
            if newer {
                *v = last;
            }
            newer
        });
    }

    /// The `seq` of the last change announced to subscribers.
    pub fn announced_seq(&self) -> u64 {
        *self.announced.borrow()
    }

    /// Completes once every change decided so far has been announced (with a durable
    /// store, once the writer has committed it), or after `timeout`. Returns whether it
    /// got there.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let target = self.last_seq();
        let mut rx = self.announced.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Adds a subscriber with a queue of `capacity` events. With `initial`, the queue
    /// starts with a resync marker and a snapshot of the current view of its types.
    pub fn subscribe(&self, filter: TypeFilter, capacity: usize, initial: bool) -> (u64, QueueRx) {
        let (tx, rx) = crate::queue::queue(capacity);
        let mut state = self.shared();
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        if initial {
            let _ = tx.send_resync(ResyncReason::Initial, || {
                Snapshot::of(state.view.clone(), filter.clone())
            });
        }
        state.subscribers.push(Subscriber {
            id,
            filter,
            tx,
            lagged: false,
        });
        (id, rx)
    }

    /// Adds a reliable output named `name`: it receives every change from now on (it
    /// filters by type itself), never dropped, and confirms each with the returned
    /// [`Confirmer`] once it is safe. Producers wait for its confirmations
    /// ([`Hub::deliveries`]).
    pub fn subscribe_reliable(
        &self,
        name: &str,
    ) -> (mpsc::UnboundedReceiver<Arc<Change>>, Confirmer) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.shared();
        // From the last change announced, under the lock announcing takes: every later
        // one reaches this output, and producers wait for its confirmation. (The last
        // change decided can be ahead of it, on its way from the writer.)
        let confirmer = self.deliveries.register(name, self.announced_seq());
        state.reliable.push(tx);
        (rx, confirmer)
    }

    /// This run's id. `<seq>@<epoch>` names a change uniquely across restarts (SSE ids,
    /// AMQP message ids).
    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    /// What producers wait on before they let go of their source.
    pub fn deliveries(&self) -> &Arc<Deliveries> {
        &self.deliveries
    }

    /// Removes a subscriber.
    pub fn unsubscribe(&self, id: u64) {
        self.shared().subscribers.retain(|s| s.id != id);
    }

    /// Sends subscriber `id` a resync marker and a snapshot of its types now (a periodic
    /// resync). When its queue has no room it is marked lagged and gets them when it has.
    pub fn resync(&self, id: u64, reason: ResyncReason) {
        let mut guard = self.shared();
        let state = &mut *guard;
        let Some(i) = state.subscribers.iter().position(|s| s.id == id) else {
            return;
        };
        let view = &state.view;
        let sub = &mut state.subscribers[i];
        if !sub
            .tx
            .send_resync(reason, || Snapshot::of(view.clone(), sub.filter.clone()))
        {
            sub.lagged = true;
        }
    }

    /// Gives lagged subscribers whose queues have room their resync; drops subscribers
    /// whose receivers are gone. Called after each batch and on a timer.
    pub fn recover_lagged(&self) {
        self.shared().recover_lagged();
    }

    /// The current view of the given types.
    /// Collected and sorted after the lock is let go: the copy is the view as of the
    /// last change announced when it was taken.
    pub fn entities(&self, filter: &TypeFilter) -> Vec<Arc<Entity>> {
        self.view().entities(filter)
    }

    /// A copy of the current view (cheap: it shares the maps).
    pub fn view(&self) -> View {
        self.shared().view.clone()
    }

    /// Entity counts per type, as the view holds them.
    pub fn counts(&self) -> Vec<(String, usize)> {
        self.shared().view.counts()
    }

    /// How many times subscribers fell behind and were resynced.
    pub fn lagged_total(&self) -> u64 {
        self.shared().lagged_total
    }

    /// Number of live subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.shared().subscribers.len()
    }

    /// The `seq` of the last change emitted so far (0 before the first). Every
    /// subscriber added before this call gets every later change it matches.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(AtomicOrdering::SeqCst)
    }
}

impl Hub {
    fn count(&self, applied: &Applied) {
        for (action, n) in [
            ("created", applied.created),
            ("updated", applied.updated),
            ("deleted", applied.deleted),
        ] {
            if n > 0 {
                self.metrics
                    .changes
                    .get_or_create(&ActionLabels { action })
                    .inc_by(n as u64);
            }
        }
    }
}

fn observation(entity: &Entity) -> Observation<'_> {
    Observation {
        id: entity.id(),
        key_hash: entity.key_hash(),
        content_hash: entity.content_hash(),
        updated_us: entity.source_updated_micros().unwrap_or(UNTIMED),
    }
}

/// Pending changes for one key within a batch, collapsed to one notification.
struct Pending {
    key_hash: u64,
    first: Verdict,
    last: Verdict,
    entity: Arc<Entity>,
}

/// A batch's verdicts, one entry per key in the order each key first changed.
#[derive(Default)]
struct Collapser {
    pending: Vec<Pending>,
    index: HashIndex<usize>,
}

impl Collapser {
    fn record(&mut self, key_hash: u64, entity: Arc<Entity>, verdict: Verdict) {
        if let Some(&i) = self.index.get(&key_hash) {
            let p = &mut self.pending[i];
            p.last = verdict;
            p.entity = entity;
        } else {
            self.index.insert(key_hash, self.pending.len());
            self.pending.push(Pending {
                key_hash,
                first: verdict,
                last: verdict,
                entity,
            });
        }
    }

    /// The entity as this batch last recorded it.
    fn latest(&self, key_hash: u64) -> Option<Arc<Entity>> {
        self.index
            .get(&key_hash)
            .map(|&i| self.pending[i].entity.clone())
    }
}

/// The one notification a key's changes within a batch amount to, if any.
fn collapse(first: Verdict, last: Verdict) -> Option<Action> {
    use Verdict::*;
    match (first, last) {
        (Created, Deleted) => None,
        (Created, _) => Some(Action::Created),
        (Deleted, Created | Updated) => Some(Action::Updated),
        (_, Deleted) => Some(Action::Deleted),
        (Updated, _) => Some(Action::Updated),
    }
}

impl State {
    /// The owner of a key a push creates: the single collector of its type, or the
    /// pusher.
    fn owner_of_new(&self, entity_type: &str, pusher: Owner) -> Owner {
        match self.collectors.get(entity_type) {
            Some(Some(collector)) => *collector,
            _ => pusher,
        }
    }

    fn instance_name(&self, owner: Owner, origin: &Origin) -> Arc<str> {
        self.names
            .get(&owner)
            .cloned()
            .unwrap_or_else(|| origin.instance.clone())
    }

    /// The next `seq`, published as the last decided.
    fn take_seq(&mut self, last_seq: &AtomicU64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        last_seq.store(seq, AtomicOrdering::SeqCst);
        seq
    }

    /// Turns a batch's verdicts into changes (each with its `seq`) and, with a durable
    /// store, the writes that make them durable.
    fn emit(
        &mut self,
        batch: Collapser,
        origin: &Origin,
        sampled_us: i64,
        initial: bool,
        applied: &mut Applied,
        last_seq: &AtomicU64,
    ) -> (Vec<Arc<Change>>, Vec<Op>) {
        let mut changes = Vec::with_capacity(batch.pending.len());
        let mut ops = Vec::new();
        for p in batch.pending {
            if self.persist.is_some() {
                let entity_type = p.entity.entity_type();
                ops.push(match p.last {
                    Verdict::Deleted => Op::Delete {
                        entity_type: entity_type.to_owned(),
                        id: p.entity.id().to_owned(),
                        deleted_us: self
                            .baseline
                            .tombstone(entity_type, p.key_hash)
                            .map_or(UNTIMED, |(t, _)| t),
                        owner: self
                            .baseline
                            .tombstone(entity_type, p.key_hash)
                            .map_or_else(
                                || origin.instance.clone(),
                                |(_, o)| self.instance_name(o, origin),
                            ),
                    },
                    _ => Op::Upsert {
                        entity: p.entity.clone(),
                        updated_us: p.entity.source_updated_micros().unwrap_or(UNTIMED),
                        owner: self.baseline.owner_of(entity_type, p.key_hash).map_or_else(
                            || origin.instance.clone(),
                            |o| self.instance_name(o, origin),
                        ),
                    },
                });
            }
            let Some(action) = collapse(p.first, p.last) else {
                continue;
            };
            match action {
                Action::Created => applied.created += 1,
                Action::Updated => applied.updated += 1,
                Action::Deleted => applied.deleted += 1,
            }
            let seq = self.take_seq(last_seq);
            changes.push(Arc::new(Change {
                seq,
                action,
                entity: p.entity,
                instance: origin.instance.clone(),
                sampled_us,
                initial,
            }));
            applied.last_seq = Some(seq);
        }
        (changes, ops)
    }
}

impl Shared {
    /// The richest last-known form of a deleted key.
    fn last_known(&self, entity_type: &str, key_hash: u64, id: &str) -> Arc<Entity> {
        self.view
            .get(entity_type, key_hash)
            .cloned()
            .unwrap_or_else(|| Arc::new(Entity::resource(entity_type, id)))
    }

    /// Queues `changes` to every subscriber; returns how many subscribers fell behind
    /// just now.
    fn fan_out(&mut self, changes: &[Arc<Change>]) -> u64 {
        let before = self.lagged_total;
        if !changes.is_empty() {
            // An output whose receiver is gone is dropped; its confirmer went with it,
            // so producers waiting on it fail rather than wait forever.
            self.reliable
                .retain(|tx| changes.iter().all(|c| tx.send(c.clone()).is_ok()));
            // A subscriber's changes of the batch go into its queue together, with one
            // wake-up (`crate::queue`); as many as there is room for, and a subscriber
            // that had no room for all is lagged.
            for sub in &mut self.subscribers {
                if sub.lagged {
                    continue;
                }
                // One more than there is room for tells that it fell behind, without
                // copying the rest of a large batch for it.
                let room = sub.tx.room();
                let mut events: Vec<Event> = changes
                    .iter()
                    .filter(|c| sub.filter.matches(c.entity.entity_type()))
                    .take(room.saturating_add(1))
                    .map(|c| Event::Change(c.clone()))
                    .collect();
                let fell_behind = events.len() > room;
                events.truncate(room);
                if sub.tx.send(events).is_err() {
                    // Gone: dropped below.
                    continue;
                }
                if fell_behind {
                    sub.lagged = true;
                    self.lagged_total += 1;
                    tracing::warn!(
                        subscriber = sub.id,
                        "subscriber fell behind; it will get a resync and a snapshot"
                    );
                }
            }
        }
        self.recover_lagged();
        self.lagged_total - before
    }
    fn recover_lagged(&mut self) {
        self.subscribers.retain(|s| !s.tx.is_closed());
        let view = &self.view;
        for sub in self.subscribers.iter_mut().filter(|s| s.lagged) {
            if sub.tx.send_resync(ResyncReason::Lagged, || {
                Snapshot::of(view.clone(), sub.filter.clone())
            }) {
                sub.lagged = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use synchronizer_plugin_api::abi::{FfiPushed, FfiSnapshot, PushAction};
    use synchronizer_plugin_api::{Relation, Selector};

    use super::*;

    fn origin(owner: u16, name: &str) -> Origin {
        Origin {
            owner,
            instance: Arc::from(name),
        }
    }

    /// With a durable store, a batch is in the view only once the store has committed
    /// it. What the writer decides meanwhile (an index of relations by property made
    /// now, a kept property) must see it all the same.
    #[test]
    fn the_writer_sees_batches_the_store_has_not_committed_yet() {
        let hub = Hub::new(Duration::from_secs(60));
        let nova = origin(0, "nova");
        let am = origin(1, "am");
        let instances = vec!["nova.instance".to_owned()];
        let alarms = vec!["prometheus".to_owned()];
        hub.register(&nova, &instances, &instances);
        hub.register(&am, &alarms, &[]);
        let (tx, rx) = std::sync::mpsc::channel();
        hub.restore(&mut Restored::default(), |_| 0, tx);
        let (_, mut sub) = hub.subscribe(TypeFilter::default(), 64, false);

        let vm = Entity::resource("nova.instance", "u1")
            .with_name("vm-a1")
            .with_properties(serde_json::json!({"instance_name": "instance-00000001"}));
        let snapshot = FfiSnapshot {
            entities: vec![vm].into(),
            incomplete: Default::default(),
        };
        let _ = hub.apply_snapshot(&nova, snapshot, &instances, 0, false);
        assert!(
            hub.entities(&TypeFilter::default()).is_empty(),
            "not committed yet"
        );

        // The first selector of its kind: the index is made now, with vm-a1 in flight.
        let target = Selector::new("nova.instance", "name", "vm-a1").unwrap();
        let alarm =
            Entity::alarm("prometheus", "a1").with_relation(Relation::to_selected("on", &target));
        let _ = hub.apply_push(
            &am,
            vec![FfiPushed {
                action: PushAction::Upsert,
                entity: alarm,
            }],
        );
        // A notification without instance_name, while vm-a1 is still in flight.
        let update = Entity::resource("nova.instance", "u1")
            .with_name("vm-a1")
            .with_state("SHUTOFF")
            .with_properties(serde_json::json!({}))
            .with_kept_properties(&["instance_name"]);
        let _ = hub.apply_push(
            &nova,
            vec![FfiPushed {
                action: PushAction::Upsert,
                entity: update,
            }],
        );

        // The store commits; the changes are announced in order.
        while let Ok(commit) = rx.try_recv() {
            hub.announce(commit.changes);
        }
        let mut seen = Vec::new();
        while let Some(Event::Change(c)) = sub.try_recv() {
            seen.push(c);
        }
        let alarm = seen
            .iter()
            .find(|c| c.entity.entity_type() == "prometheus")
            .expect("the alarm");
        assert_eq!(alarm.entity.relations()[0].other(), "nova.instance:u1");
        let last = seen.last().expect("changes");
        assert_eq!(last.entity.state(), Some("SHUTOFF"));
        assert_eq!(
            last.entity.properties()["instance_name"],
            "instance-00000001",
            "kept from the batch in flight"
        );
        assert!(hub.flying().is_empty(), "all landed");
    }
}
