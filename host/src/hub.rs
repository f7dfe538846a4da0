//! The hub: the one place where data becomes changes. It owns the baseline, the current
//! view of every entity and the subscribers, behind one lock, so that every subscriber
//! sees the same changes in the same order as the view.
//!
//! Delivery never blocks: each subscriber has a bounded queue that is filled with
//! `try_send`. A subscriber whose queue is full is marked lagged and skipped; as soon as
//! its queue has room again it gets [`Event::Resync`] followed by [`Event::Snapshot`] of
//! its types, instead of silently missing changes.
//!
//! Reliable outputs ([`Hub::subscribe_reliable`]) are the exception: they get every
//! change through an unbounded queue and confirm it, and producers wait for those
//! confirmations (see [`crate::delivery`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use synchronizer_plugin_api::Entity;
use synchronizer_plugin_api::abi::{FfiPushed, FfiSnapshot, PushAction};
use synchronizer_plugin_api::entity::system_time_to_micros;
use tokio::sync::mpsc;

use crate::baseline::{Baseline, HashIndex, Observation, Owner, Verdict, hash_snapshot};
use crate::change::{Action, Change, Event, ResyncReason};
use crate::delivery::{Confirmer, Deliveries};
use crate::metrics::{ActionLabels, Metrics, TypeLabels};
use crate::persist::{Op, Restored, StoredEntity, Writes};

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
    tx: mpsc::Sender<Event>,
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

struct State {
    baseline: Baseline,
    view: HashMap<String, HashIndex<Arc<Entity>>>,
    subscribers: Vec<Subscriber>,
    /// Reliable outputs: every change, never dropped (their producers wait instead).
    reliable: Vec<mpsc::UnboundedSender<Arc<Change>>>,
    next_seq: u64,
    next_subscriber: u64,
    lagged_total: u64,
    /// Where changes go to be made durable (the store's writer thread), when there is one.
    persist: Option<std::sync::mpsc::Sender<Writes>>,
    /// Writes decided by the last batch, sent once its changes reached the subscribers.
    pending_ops: Vec<Op>,
    /// Types restored from the durable store whose view is not yet filled by a complete
    /// snapshot: their entities enter the view even when unchanged.
    restored_types: std::collections::HashSet<String>,
}

/// The hub; cheap to share behind an `Arc`.
pub struct Hub {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    deliveries: Arc<Deliveries>,
    epoch: Arc<str>,
}

/// Pending changes for one key within a batch, collapsed to one notification.
struct Pending {
    first: Verdict,
    last: Verdict,
    entity: Arc<Entity>,
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
        Hub {
            state: Mutex::new(State {
                baseline: Baseline::new(tombstone_ttl),
                view: HashMap::new(),
                subscribers: Vec::new(),
                reliable: Vec::new(),
                next_seq: 1,
                next_subscriber: 1,
                lagged_total: 0,
                persist: None,
                pending_ops: Vec::new(),
                restored_types: Default::default(),
            }),
            metrics: Arc::new(Metrics::default()),
            deliveries: Arc::new(Deliveries::default()),
            epoch: new_epoch(),
        }
    }

    /// Loads what the durable store held; `owner_of` maps an instance name to its owner
    /// index. Changes are written to `persist` from now on.
    pub fn restore(
        &self,
        restored: Restored,
        owner_of: impl Fn(&str) -> Owner,
        persist: std::sync::mpsc::Sender<Writes>,
    ) {
        let now = now_us();
        let mut state = self.lock();
        for e in &restored.entities {
            state.baseline.restore(
                &e.entity_type,
                &e.id,
                e.content,
                e.updated_us,
                owner_of(&e.owner),
            );
            state.restored_types.insert(e.entity_type.clone());
        }
        for (entity_type, id, deleted_us) in &restored.tombstones {
            state
                .baseline
                .restore_tombstone(entity_type, id, *deleted_us, now);
        }
        state.persist = Some(persist);
    }

    /// Stops writing to the durable store (the writer finishes what is queued).
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
        let state = self.lock();
        for (entity_type, n) in state.baseline.counts() {
            self.metrics
                .entities
                .get_or_create(&TypeLabels {
                    r#type: entity_type,
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.metrics
            .subscribers
            .set(i64::try_from(state.subscribers.len()).unwrap_or(i64::MAX));
        let deepest = state
            .subscribers
            .iter()
            .map(|s| s.tx.max_capacity() - s.tx.capacity())
            .max()
            .unwrap_or(0);
        self.metrics
            .subscriber_queue_max
            .set(i64::try_from(deepest).unwrap_or(i64::MAX));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the baseline half-written in a way
        // that matters more than stopping: keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a snapshot from `origin` sampled at `started_us`. `covered` lists the
    /// types the snapshot is complete for (absent keys of those types are deleted);
    /// types in `snapshot.incomplete` are removed from it. Returns the entities of the
    /// snapshot (for get-all) and what changed.
    pub fn apply_snapshot(
        &self,
        origin: &Origin,
        snapshot: FfiSnapshot,
        covered: &[String],
        started_us: i64,
        initial: bool,
    ) -> (Vec<Arc<Entity>>, Applied) {
        let FfiSnapshot {
            entities,
            incomplete,
        } = snapshot;
        let hashed = hash_snapshot(&entities, started_us);
        let mut guard = self.lock();
        let state = &mut *guard;
        let generation = state.baseline.begin_snapshot(origin.owner);
        let mut verdicts: Vec<(u32, Verdict)> = Vec::new();
        for (entity_type, mut batch) in hashed {
            // A plugin that answers with more types than it was asked for (one with
            // open-ended types, say) does not get the others into the baseline.
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
                |i| entities.get(i as usize).map_or("", |e| e.id()),
            ));
        }
        // Indexed as the plugin sent them: verdicts refer to these positions.
        let mut entities: Vec<Arc<Entity>> = entities.into_iter().map(Arc::new).collect();
        if !state.restored_types.is_empty() {
            for e in &entities {
                if state.restored_types.contains(e.entity_type())
                    && (covered.is_empty() || covered.iter().any(|t| t == e.entity_type()))
                {
                    state
                        .view
                        .entry(e.entity_type().to_owned())
                        .or_default()
                        .insert(e.key_hash(), e.clone());
                }
            }
        }
        let mut batch: Vec<(u64, String, Pending)> = Vec::new();
        let mut index: HashIndex<usize> = HashIndex::default();
        let mut applied = Applied::default();
        verdicts.sort_unstable_by_key(|(i, _)| *i);
        for (i, v) in verdicts {
            if let Some(entity) = entities.get(i as usize) {
                let key_hash = entity.key_hash();
                record(&mut batch, &mut index, key_hash, entity.clone(), v);
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
        for entity_type in &complete {
            for d in state
                .baseline
                .sweep(entity_type, origin.owner, generation, started_us, now)
            {
                let last = state
                    .view
                    .get(entity_type.as_str())
                    .and_then(|v| v.get(&d.key_hash).cloned())
                    .unwrap_or_else(|| Arc::new(Entity::resource(entity_type, &d.id)));
                record(&mut batch, &mut index, d.key_hash, last, Verdict::Deleted);
            }
        }
        for entity_type in &complete {
            state.restored_types.remove(entity_type);
        }
        state.baseline.expire_tombstones(now);
        let changes = state.emit(batch, origin, started_us, initial, &mut applied);
        let lagged = state.fan_out(&changes);
        self.count(&applied, lagged);
        drop(guard);
        if !covered.is_empty() {
            entities.retain(|e| covered.iter().any(|t| t == e.entity_type()));
        }
        (entities, applied)
    }

    /// Applies a batch of pushed changes from `origin`. Returns what changed.
    pub fn apply_push(&self, origin: &Origin, batch: Vec<FfiPushed>) -> Applied {
        let sampled = now_us();
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut pending: Vec<(u64, String, Pending)> = Vec::new();
        let mut index: HashIndex<usize> = HashIndex::default();
        let mut applied = Applied::default();
        for pushed in batch {
            let entity = Arc::new(pushed.entity);
            let obs = observation(&entity, sampled);
            let key_hash = obs.key_hash;
            let verdict = match pushed.action {
                PushAction::Upsert => {
                    state
                        .baseline
                        .push_upsert(entity.entity_type(), obs, origin.owner)
                }
                PushAction::Delete => state
                    .baseline
                    .push_delete(entity.entity_type(), obs.key_hash, obs.updated_us, sampled)
                    .map(|_| Verdict::Deleted),
            };
            match verdict {
                Some(v) => {
                    let entity = if v == Verdict::Deleted {
                        // The richest last-known form: the view's.
                        state
                            .view
                            .get(entity.entity_type())
                            .and_then(|m| m.get(&key_hash).cloned())
                            .unwrap_or(entity)
                    } else {
                        entity
                    };
                    record(&mut pending, &mut index, key_hash, entity, v)
                }
                None => applied.dropped += 1,
            }
        }
        state.baseline.expire_tombstones(sampled);
        let changes = state.emit(pending, origin, sampled, false, &mut applied);
        let lagged = state.fan_out(&changes);
        self.count(&applied, lagged);
        applied
    }

    /// Adds a subscriber with a queue of `capacity` events. With `initial`, the queue
    /// starts with a resync marker and a snapshot of the current view of its types.
    pub fn subscribe(
        &self,
        filter: TypeFilter,
        capacity: usize,
        initial: bool,
    ) -> (u64, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity.max(2));
        let mut state = self.lock();
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        if initial {
            let entities = state.entities(&filter);
            let _ = tx.try_send(Event::Resync(ResyncReason::Initial));
            let _ = tx.try_send(Event::Snapshot(entities));
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
        let mut state = self.lock();
        let confirmer = self.deliveries.register(name, state.next_seq - 1);
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
        self.lock().subscribers.retain(|s| s.id != id);
    }

    /// Sends subscriber `id` a resync marker and a snapshot of its types now (a periodic
    /// resync). When its queue has no room it is marked lagged and gets them when it has.
    pub fn resync(&self, id: u64, reason: ResyncReason) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(i) = state.subscribers.iter().position(|s| s.id == id) else {
            return;
        };
        let entities = state.entities(&state.subscribers[i].filter.clone());
        let sub = &mut state.subscribers[i];
        match sub.tx.try_reserve_many(2) {
            Ok(mut permits) => {
                if let Some(p) = permits.next() {
                    p.send(Event::Resync(reason));
                }
                if let Some(p) = permits.next() {
                    p.send(Event::Snapshot(entities));
                }
            }
            Err(_) => sub.lagged = true,
        }
    }

    /// Gives lagged subscribers whose queues have room their resync; drops subscribers
    /// whose receivers are gone. Called after each batch and on a timer.
    pub fn recover_lagged(&self) {
        let mut guard = self.lock();
        guard.recover_lagged();
    }

    /// The current view of the given types.
    pub fn entities(&self, filter: &TypeFilter) -> Vec<Arc<Entity>> {
        self.lock().entities(filter)
    }

    /// Entity counts per type, as the baseline holds them.
    pub fn counts(&self) -> Vec<(String, usize)> {
        self.lock().baseline.counts()
    }

    /// How many times subscribers fell behind and were resynced.
    pub fn lagged_total(&self) -> u64 {
        self.lock().lagged_total
    }

    /// Number of live subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// The `seq` of the last change emitted so far (0 before the first). Every
    /// subscriber added before this call gets every later change it matches.
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }
}

impl Hub {
    fn count(&self, applied: &Applied, lagged: u64) {
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
        if lagged > 0 {
            self.metrics.subscriber_resyncs.inc_by(lagged);
        }
    }
}

fn observation<'a>(entity: &'a Entity, sampled_us: i64) -> Observation<'a> {
    Observation {
        id: entity.id(),
        key_hash: entity.key_hash(),
        content_hash: entity.content_hash(),
        updated_us: entity.source_updated_micros().unwrap_or(sampled_us),
    }
}

/// Collapses changes to one key within one batch into one notification.
fn record(
    batch: &mut Vec<(u64, String, Pending)>,
    index: &mut HashIndex<usize>,
    key_hash: u64,
    entity: Arc<Entity>,
    verdict: Verdict,
) {
    if let Some(&i) = index.get(&key_hash) {
        let p = &mut batch[i].2;
        p.last = verdict;
        p.entity = entity;
    } else {
        index.insert(key_hash, batch.len());
        batch.push((
            key_hash,
            entity.entity_type().to_owned(),
            Pending {
                first: verdict,
                last: verdict,
                entity,
            },
        ));
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
    fn emit(
        &mut self,
        batch: Vec<(u64, String, Pending)>,
        origin: &Origin,
        sampled_us: i64,
        initial: bool,
        applied: &mut Applied,
    ) -> Vec<Arc<Change>> {
        let mut changes = Vec::with_capacity(batch.len());
        let mut ops = Vec::new();
        for (key_hash, entity_type, p) in batch {
            if self.persist.is_some() {
                ops.push(match p.last {
                    Verdict::Deleted => Op::Delete {
                        entity_type: entity_type.clone(),
                        id: p.entity.id().to_owned(),
                        deleted_us: sampled_us,
                    },
                    _ => Op::Upsert(StoredEntity {
                        entity_type: entity_type.clone(),
                        id: p.entity.id().to_owned(),
                        content: p.entity.content_hash(),
                        updated_us: p.entity.source_updated_micros().unwrap_or(sampled_us),
                        owner: origin.instance.to_string(),
                    }),
                });
            }
            let view = self.view.entry(entity_type).or_default();
            match p.last {
                Verdict::Deleted => {
                    view.remove(&key_hash);
                }
                _ => {
                    view.insert(key_hash, p.entity.clone());
                }
            }
            let Some(action) = collapse(p.first, p.last) else {
                continue;
            };
            match action {
                Action::Created => applied.created += 1,
                Action::Updated => applied.updated += 1,
                Action::Deleted => applied.deleted += 1,
            }
            let seq = self.next_seq;
            self.next_seq += 1;
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
        if !ops.is_empty() {
            self.pending_ops = ops;
        }
        changes
    }

    /// Queues `changes` to every subscriber, then hands the batch's writes to the
    /// durable store; returns how many subscribers fell behind just now.
    fn fan_out(&mut self, changes: &[Arc<Change>]) -> u64 {
        let before = self.lagged_total;
        let ops = std::mem::take(&mut self.pending_ops);
        if !changes.is_empty() {
            // An output whose receiver is gone is dropped; its confirmer went with it,
            // so producers waiting on it fail rather than wait forever.
            self.reliable
                .retain(|tx| changes.iter().all(|c| tx.send(c.clone()).is_ok()));
            for sub in &mut self.subscribers {
                if sub.lagged {
                    continue;
                }
                for change in changes {
                    if !sub.filter.matches(change.entity.entity_type()) {
                        continue;
                    }
                    match sub.tx.try_send(Event::Change(change.clone())) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            sub.lagged = true;
                            self.lagged_total += 1;
                            tracing::warn!(
                                subscriber = sub.id,
                                "subscriber fell behind; it will get a resync and a snapshot"
                            );
                            break;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
            }
        }
        self.recover_lagged();
        if !ops.is_empty()
            && let Some(tx) = &self.persist
            && tx
                .send(Writes {
                    through_seq: self.next_seq - 1,
                    ops,
                })
                .is_err()
        {
            tracing::error!(
                "the baseline store's writer has stopped; changes are no longer made durable"
            );
            self.persist = None;
        }
        self.lagged_total - before
    }

    fn recover_lagged(&mut self) {
        self.subscribers.retain(|s| !s.tx.is_closed());
        for i in 0..self.subscribers.len() {
            if !self.subscribers[i].lagged {
                continue;
            }
            if self.subscribers[i].tx.capacity() < 2 {
                continue;
            }
            let entities = self.entities(&self.subscribers[i].filter);
            let sent = match self.subscribers[i].tx.try_reserve_many(2) {
                Ok(mut permits) => {
                    if let Some(p) = permits.next() {
                        p.send(Event::Resync(ResyncReason::Lagged));
                    }
                    if let Some(p) = permits.next() {
                        p.send(Event::Snapshot(entities));
                    }
                    true
                }
                Err(_) => false,
            };
            if sent {
                self.subscribers[i].lagged = false;
            }
        }
    }

    fn entities(&self, filter: &TypeFilter) -> Vec<Arc<Entity>> {
        let mut out = Vec::new();
        for (entity_type, view) in &self.view {
            if filter.matches(entity_type) {
                out.extend(view.values().cloned());
            }
        }
        out.sort_by(|a, b| (a.entity_type(), a.id()).cmp(&(b.entity_type(), b.id())));
        out
    }
}
