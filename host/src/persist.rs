//! The durable baseline: an optional redb file that keeps, across restarts, the whole
//! current view (every entity as last announced, with what the baseline compares), the
//! recent tombstones, and the changes still *in doubt*.
//!
//! # Commit before announce
//!
//! The hub hands every batch of changes to this store's writer thread before anyone sees
//! it ([`crate::hub`]). The writer puts everything already queued into one redb
//! transaction (group commit): the entities' new state, the tombstones, and one
//! *in-doubt* row per changed key, naming the change (its action, the entity, the
//! instance). Only once the transaction is durable does the writer announce the batch to
//! the subscribers and outputs, in commit order, and confirm it to the producers waiting
//! to acknowledge their sources ([`crate::delivery`]).
//!
//! An in-doubt row is cleared once the change is settled for every consumer: confirmed by
//! every reliable output (the AMQP output confirms once its broker did), and announced at
//! least a second ago for the consumers that do not confirm (stdout, SSE clients,
//! callbacks: time for them to write what they were handed). At a graceful shutdown,
//! after the drain, every announced change is settled but what a reliable output never
//! confirmed. After a crash, [`Store::open`] returns the rows still in
//! doubt and the host announces them again before anything else (at least once: a
//! consumer may see one twice, none misses one). Consumers that reconnect (SSE) start
//! from a snapshot of the restored view. So a kill -9 at any moment leaves every consumer
//! that applies the stream, before and after the restart, with the source's state once
//! the first snapshots after the restart are in.
//!
//! # Layout
//!
//! Keys are `<type> NUL <id>`. `entities` values: content hash (u64 LE), source
//! timestamp (i64 LE), owner name (u16 LE length, bytes), then the entity in the
//! isolation wire encoding ([`crate::isolation::wire`]). `tombstones`: source time of
//! the deletion (i64 LE), owner name. `in_doubt`: action (u8), instance (u16 LE length,
//! bytes), entity. The file carries a format marker; a file from another format or
//! another program is refused with a message that says what was found.

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, ReadableTable, TableDefinition, TableHandle};
use synchronizer_plugin_api::Entity;

use crate::change::{Action, Change};
use crate::delivery::{Confirmer, Deliveries};
use crate::isolation::wire;

const FORMAT: &str = "synchronizer-baseline/2";
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const ENTITIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entities");
const TOMBSTONES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tombstones");
const IN_DOUBT: TableDefinition<&[u8], &[u8]> = TableDefinition::new("in_doubt");

/// How long after its announcement a change counts as received by the consumers that
/// do not confirm (stdout, SSE clients, callbacks): until then it stays in doubt, and a
/// crash makes the next start announce it again.
const SETTLE: Duration = Duration::from_secs(1);

/// The name the store confirms under, among the reliable consumers.
pub const STORE_OUTPUT: &str = "baseline store";

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file cannot be opened as a redb database (truncated, damaged, or not one).
    #[error(
        "baseline store {}: cannot open it ({reason}); it is damaged or not a synchronizer baseline store: move it away to start with an empty baseline",
        .path.display()
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What redb said.
        reason: String,
    },
    /// A redb database, but not ours or of another format version.
    #[error(
        "baseline store {}: format `{found}`, this synchronizer reads `{FORMAT}`; move it away to start with an empty baseline",
        .path.display()
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// The format marker found (or a description of what was found).
        found: String,
    },
    /// Reading or writing failed.
    #[error("baseline store {}: {reason}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// An open store.
pub struct Store {
    db: Database,
    path: PathBuf,
}

/// One entity as restored.
#[derive(Clone, Debug)]
pub struct StoredEntity {
    /// The entity as last announced.
    pub entity: Arc<Entity>,
    /// Its content hash, as the baseline compares it.
    pub content: u64,
    /// Its source timestamp ([`crate::baseline::UNTIMED`] when the source gives none).
    pub updated_us: i64,
    /// The instance that owns it.
    pub owner: String,
}

/// A tombstone as restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTombstone {
    /// Type of the deleted entity.
    pub entity_type: String,
    /// Its native id.
    pub id: String,
    /// Source time of the deletion.
    pub deleted_us: i64,
    /// The instance that owned it.
    pub owner: String,
}

/// A change committed before a crash that some consumer may not have received.
#[derive(Clone, Debug)]
pub struct InDoubt {
    /// What happened.
    pub action: Action,
    /// The entity (for a deletion, as last known).
    pub entity: Arc<Entity>,
    /// The instance the change came from.
    pub instance: String,
}

/// What a store held when it was opened.
#[derive(Debug, Default)]
pub struct Restored {
    /// Every entity of the view.
    pub entities: Vec<StoredEntity>,
    /// Recent deletions.
    pub tombstones: Vec<StoredTombstone>,
    /// Changes to announce again.
    pub in_doubt: Vec<InDoubt>,
}

/// One batch of the hub: its writes and its changes, committed together and then
/// announced.
#[derive(Debug)]
pub struct Commit {
    /// The writes, in order.
    pub ops: Vec<Op>,
    /// The changes, in `seq` order.
    pub changes: Vec<Arc<Change>>,
}

/// One write, in the order the hub decided it.
#[derive(Clone, Debug)]
pub enum Op {
    /// The entity exists with this content.
    Upsert {
        /// The entity.
        entity: Arc<Entity>,
        /// Its source timestamp, or [`crate::baseline::UNTIMED`].
        updated_us: i64,
        /// The instance that owns it.
        owner: Arc<str>,
    },
    /// The entity was deleted.
    Delete {
        /// Its type.
        entity_type: String,
        /// Its native id.
        id: String,
        /// Source time of the deletion.
        deleted_us: i64,
        /// The instance that owned it.
        owner: Arc<str>,
    },
}

fn key(entity_type: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(entity_type.len() + 1 + id.len());
    k.extend_from_slice(entity_type.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn split_key(k: &[u8]) -> Option<(String, String)> {
    let at = k.iter().position(|&b| b == 0)?;
    Some((
        String::from_utf8(k[..at].to_vec()).ok()?,
        String::from_utf8(k[at + 1..].to_vec()).ok()?,
    ))
}

fn put_name(v: &mut Vec<u8>, name: &str) {
    let len = name.len().min(u16::MAX as usize);
    v.extend_from_slice(&(len as u16).to_le_bytes());
    v.extend_from_slice(&name.as_bytes()[..len]);
}

/// Reads a name written by [`put_name`]; returns it and the rest.
fn take_name(v: &[u8]) -> Option<(String, &[u8])> {
    let len = u16::from_le_bytes(v.get(..2)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(v.get(2..2 + len)?).ok()?.to_owned();
    Some((name, v.get(2 + len..)?))
}

fn take_i64(v: &[u8]) -> Option<(i64, &[u8])> {
    Some((
        i64::from_le_bytes(v.get(..8)?.try_into().ok()?),
        v.get(8..)?,
    ))
}

fn encode_entity_row(entity: &Entity, updated_us: i64, owner: &str) -> Vec<u8> {
    let body = wire::encode_entity(entity);
    let mut v = Vec::with_capacity(18 + owner.len() + body.len());
    v.extend_from_slice(&entity.content_hash().to_le_bytes());
    v.extend_from_slice(&updated_us.to_le_bytes());
    put_name(&mut v, owner);
    v.extend_from_slice(&body);
    v
}

fn decode_entity_row(v: &[u8]) -> Option<StoredEntity> {
    let (content, rest) = take_i64(v)?;
    let (updated_us, rest) = take_i64(rest)?;
    let (owner, rest) = take_name(rest)?;
    let entity = wire::decode_entity(rest).ok()?;
    Some(StoredEntity {
        entity: Arc::new(entity),
        content: content as u64,
        updated_us,
        owner,
    })
}

fn action_to_u8(a: Action) -> u8 {
    match a {
        Action::Created => 0,
        Action::Updated => 1,
        Action::Deleted => 2,
    }
}

fn action_from_u8(b: u8) -> Option<Action> {
    Some(match b {
        0 => Action::Created,
        1 => Action::Updated,
        2 => Action::Deleted,
        _ => return None,
    })
}

/// An in-doubt row: the action, the instance, and for a deletion the entity as last
/// known (any other change's entity is the `entities` row of the same key).
fn encode_in_doubt(action: Action, instance: &str, entity: &Entity) -> Vec<u8> {
    let body = match action {
        Action::Deleted => wire::encode_entity(entity),
        Action::Created | Action::Updated => Vec::new(),
    };
    let mut v = Vec::with_capacity(3 + instance.len() + body.len());
    v.push(action_to_u8(action));
    put_name(&mut v, instance);
    v.extend_from_slice(&body);
    v
}

/// Reads an in-doubt row; `current` finds the entity of a change that is not a deletion.
fn decode_in_doubt(v: &[u8], current: impl FnOnce() -> Option<Arc<Entity>>) -> Option<InDoubt> {
    let action = action_from_u8(*v.first()?)?;
    let (instance, rest) = take_name(v.get(1..)?)?;
    let entity = match action {
        Action::Deleted => Arc::new(wire::decode_entity(rest).ok()?),
        Action::Created | Action::Updated => current()?,
    };
    Some(InDoubt {
        action,
        entity,
        instance,
    })
}

/// What a key's in-doubt change becomes when another change to it is committed before
/// the first was confirmed: a consumer may hold either state, so the later change must
/// bring it to the latest one.
fn combine(before: Action, after: Action) -> Action {
    match (before, after) {
        (Action::Created, Action::Updated) => Action::Created,
        (_, a) => a,
    }
}

impl Store {
    /// Opens (or creates) the store at `path` and reads what it holds.
    pub fn open(path: &Path) -> Result<(Store, Restored), StoreError> {
        let io = |e: &dyn std::fmt::Display| StoreError::Io {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
        }
        // redb asserts (panics) on some truncated files instead of returning an error.
        let opened = std::panic::catch_unwind(|| Database::create(path));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => {
                return Err(StoreError::Unreadable {
                    path: path.to_owned(),
                    reason: e.to_string(),
                });
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                return Err(StoreError::Unreadable {
                    path: path.to_owned(),
                    reason: format!("the file is truncated or damaged: {what}"),
                });
            }
        };
        let store = Store {
            db,
            path: path.to_owned(),
        };
        let restored = store.check_and_read()?;
        Ok((store, restored))
    }

    fn check_and_read(&self) -> Result<Restored, StoreError> {
        let io = |e: &dyn std::fmt::Display| StoreError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let foreign = |found: String| StoreError::Foreign {
            path: self.path.clone(),
            found,
        };
        // A new store gets the marker; an existing one must carry ours.
        let txn = self.db.begin_write().map_err(|e| io(&e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| match e {
                redb::TableError::TableTypeMismatch { .. } => {
                    foreign("a `meta` table of another shape".into())
                }
                other => io(&other),
            })?;
            let found = meta
                .get("format")
                .map_err(|e| io(&e))?
                .map(|v| v.value().to_owned());
            match found {
                Some(f) if f == FORMAT => {}
                Some(f) => return Err(foreign(f)),
                None => {
                    let other_tables = txn
                        .list_tables()
                        .map_err(|e| io(&e))?
                        .any(|t| t.name() != "meta");
                    if other_tables {
                        return Err(foreign(
                            "tables of another program, no format marker".into(),
                        ));
                    }
                    meta.insert("format", FORMAT).map_err(|e| io(&e))?;
                }
            }
            txn.open_table(ENTITIES).map_err(|e| io(&e))?;
            txn.open_table(TOMBSTONES).map_err(|e| io(&e))?;
            txn.open_table(IN_DOUBT).map_err(|e| io(&e))?;
        }
        txn.commit().map_err(|e| io(&e))?;

        let mut restored = Restored::default();
        let txn = self.db.begin_read().map_err(|e| io(&e))?;
        let entities = txn.open_table(ENTITIES).map_err(|e| io(&e))?;
        for row in entities.iter().map_err(|e| io(&e))? {
            let (_, v) = row.map_err(|e| io(&e))?;
            match decode_entity_row(v.value()) {
                Some(e) => restored.entities.push(e),
                None => return Err(foreign("an entity row it cannot read".into())),
            }
        }
        let tombstones = txn.open_table(TOMBSTONES).map_err(|e| io(&e))?;
        for row in tombstones.iter().map_err(|e| io(&e))? {
            let (k, v) = row.map_err(|e| io(&e))?;
            let row = split_key(k.value()).zip(take_i64(v.value()));
            let Some(((entity_type, id), (deleted_us, rest))) = row else {
                return Err(foreign("a tombstone row it cannot read".into()));
            };
            let Some((owner, _)) = take_name(rest) else {
                return Err(foreign("a tombstone row it cannot read".into()));
            };
            restored.tombstones.push(StoredTombstone {
                entity_type,
                id,
                deleted_us,
                owner,
            });
        }
        let in_doubt = txn.open_table(IN_DOUBT).map_err(|e| io(&e))?;
        for row in in_doubt.iter().map_err(|e| io(&e))? {
            let (k, v) = row.map_err(|e| io(&e))?;
            let current = || {
                let row = entities.get(k.value()).ok()??;
                decode_entity_row(row.value()).map(|e| e.entity)
            };
            let kept = v
                .value()
                .first()
                .copied()
                .and_then(action_from_u8)
                .is_some_and(|a| a == Action::Deleted || current().is_some());
            if !kept {
                // A change to an entity that is no longer there, and no deletion after it:
                // nothing a consumer could miss. Anything unreadable is refused below.
                if v.value()
                    .first()
                    .copied()
                    .and_then(action_from_u8)
                    .is_some()
                {
                    continue;
                }
            }
            match decode_in_doubt(v.value(), current) {
                Some(d) => restored.in_doubt.push(d),
                None => return Err(foreign("an in-doubt row it cannot read".into())),
            }
        }
        Ok(restored)
    }

    /// Commits `commits` in one transaction, and clears the in-doubt rows of `confirmed`
    /// (keys whose change was confirmed, with the `seq` of that change: a row a later
    /// change replaced stays).
    pub fn write(
        &self,
        commits: &[Commit],
        confirmed: &[(Vec<u8>, u64)],
    ) -> Result<(), StoreError> {
        let io = |e: &dyn std::fmt::Display| StoreError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let txn = self.db.begin_write().map_err(|e| io(&e))?;
        {
            let mut entities = txn.open_table(ENTITIES).map_err(|e| io(&e))?;
            let mut tombstones = txn.open_table(TOMBSTONES).map_err(|e| io(&e))?;
            let mut in_doubt = txn.open_table(IN_DOUBT).map_err(|e| io(&e))?;
            for commit in commits {
                for op in &commit.ops {
                    match op {
                        Op::Upsert {
                            entity,
                            updated_us,
                            owner,
                        } => {
                            let k = key(entity.entity_type(), entity.id());
                            let row = encode_entity_row(entity, *updated_us, owner);
                            entities
                                .insert(k.as_slice(), row.as_slice())
                                .map_err(|e| io(&e))?;
                            tombstones.remove(k.as_slice()).map_err(|e| io(&e))?;
                        }
                        Op::Delete {
                            entity_type,
                            id,
                            deleted_us,
                            owner,
                        } => {
                            let k = key(entity_type, id);
                            entities.remove(k.as_slice()).map_err(|e| io(&e))?;
                            let mut v = deleted_us.to_le_bytes().to_vec();
                            put_name(&mut v, owner);
                            tombstones
                                .insert(k.as_slice(), v.as_slice())
                                .map_err(|e| io(&e))?;
                        }
                    }
                }
                for change in &commit.changes {
                    let k = key(change.entity.entity_type(), change.entity.id());
                    let before = in_doubt
                        .get(k.as_slice())
                        .map_err(|e| io(&e))?
                        .and_then(|v| v.value().first().copied().and_then(action_from_u8));
                    let action = before.map_or(change.action, |b| combine(b, change.action));
                    let row = encode_in_doubt(action, &change.instance, &change.entity);
                    in_doubt
                        .insert(k.as_slice(), row.as_slice())
                        .map_err(|e| io(&e))?;
                }
            }
            for (k, _) in confirmed {
                in_doubt.remove(k.as_slice()).map_err(|e| io(&e))?;
            }
        }
        txn.commit().map_err(|e| io(&e))
    }

    /// Starts the writer thread. `announce` is called with each commit's changes, in
    /// order, once they are durable; `mark` confirms them to the producers. In-doubt rows
    /// are cleared once every other reliable consumer in `deliveries` confirmed them (or,
    /// with none, once announced). Drop every sender to stop it: it commits and
    /// announces what is queued first.
    pub fn spawn_writer(
        self,
        announce: impl Fn(Vec<Arc<Change>>) + Send + 'static,
        mark: Confirmer,
        deliveries: Arc<Deliveries>,
    ) -> std::io::Result<(mpsc::Sender<Commit>, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<Commit>();
        let handle = std::thread::Builder::new()
            .name("baseline-store".into())
            .spawn(move || self.run_writer(rx, announce, mark, deliveries))?;
        Ok((tx, handle))
    }

    fn run_writer(
        self,
        rx: mpsc::Receiver<Commit>,
        announce: impl Fn(Vec<Arc<Change>>),
        mark: Confirmer,
        deliveries: Arc<Deliveries>,
    ) {
        // Keys in doubt from this run, in seq order; cleared as consumers confirm.
        let mut doubt: std::collections::VecDeque<(u64, Vec<u8>, std::time::Instant)> =
            Default::default();
        // The latest seq per key in doubt: an older confirmation does not clear a newer row.
        let mut latest: std::collections::HashMap<Vec<u8>, u64> = Default::default();
        let mut open = true;
        let mut last_call = false;
        while open {
            let mut group = Vec::new();
            // Nothing in doubt: wait for the next batch. Something in doubt: look again
            // soon, so that a confirmed change does not stay in doubt for long (after a
            // crash it would be announced again).
            let stopping = last_call;
            let next = if last_call {
                Err(mpsc::RecvTimeoutError::Disconnected)
            } else if doubt.is_empty() {
                rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(Duration::from_millis(50))
            };
            match next {
                Ok(c) => group.push(c),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
            while let Ok(c) = rx.try_recv() {
                group.push(c);
            }
            // Consumers that confirm (reliable outputs) settle a change when they confirm
            // it; the others (stdout, SSE, callbacks) when it was announced a while ago:
            // time enough to write what they were handed.
            let confirming = deliveries.confirmed_except(STORE_OUTPUT);
            let through = confirming.unwrap_or_else(|| mark.confirmed());
            let settled = |at: &std::time::Instant| stopping || at.elapsed() >= SETTLE;
            let mut confirmed = Vec::new();
            while doubt
                .front()
                .is_some_and(|(seq, _, at)| *seq <= through && settled(at))
            {
                if let Some((seq, k, _)) = doubt.pop_front()
                    && latest.get(&k) == Some(&seq)
                {
                    latest.remove(&k);
                    confirmed.push((k, seq));
                }
            }
            if group.is_empty() && confirmed.is_empty() {
                continue;
            }
            if group.is_empty() {
                match self.write(&group, &confirmed) {
                    Ok(()) => tracing::debug!(
                        changes = confirmed.len(),
                        "baseline store: confirmed changes are no longer in doubt"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot clear confirmed changes in the baseline store; they are announced again after a restart")
                    }
                }
                continue;
            }
            let ops: usize = group.iter().map(|c| c.ops.len()).sum();
            if let Err(e) = self.write(&group, &confirmed) {
                // Announce anyway: holding changes back would stop every producer for
                // good. They are reported again after a restart, as nothing was written.
                tracing::error!(error = %e, ops, "cannot write the baseline store; these changes are announced without being durable");
            } else {
                tracing::debug!(ops, commits = group.len(), "baseline store committed");
            }
            for commit in group {
                let Some(last) = commit.changes.last().map(|c| c.seq) else {
                    continue;
                };
                for c in &commit.changes {
                    let k = key(c.entity.entity_type(), c.entity.id());
                    latest.insert(k.clone(), c.seq);
                    doubt.push_back((c.seq, k, std::time::Instant::now()));
                }
                announce(commit.changes);
                mark.confirm(last);
            }
            if !open {
                // Stopping: what was announced just now gets one last chance to be
                // confirmed (the outputs were drained before the store stops).
                open = !doubt.is_empty() && !last_call;
                last_call = true;
            }
        }
        if !doubt.is_empty() {
            tracing::info!(
                changes = latest.len(),
                "changes still in doubt at shutdown: they are announced again at the next start"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(id: &str) -> Arc<Entity> {
        Arc::new(
            Entity::resource("nova.instance", id)
                .with_name(format!("vm {id}"))
                .with_state("ACTIVE")
                .with_source_updated_micros(-1)
                .with_properties(serde_json::json!({"flavor": "m1.tiny"})),
        )
    }

    fn change(seq: u64, action: Action, e: &Arc<Entity>) -> Arc<Change> {
        Arc::new(Change {
            seq,
            action,
            entity: e.clone(),
            instance: Arc::from("nova"),
            sampled_us: 0,
            initial: false,
        })
    }

    #[test]
    fn the_view_tombstones_and_changes_in_doubt_survive_reopening() {
        let dir = tempfile_dir();
        let path = dir.join("b.redb");
        let (store, restored) = Store::open(&path).unwrap();
        assert!(restored.entities.is_empty());
        let (kept, gone) = (entity("abc"), entity("gone"));
        let owner: Arc<str> = Arc::from("nova");
        let upsert = |e: &Arc<Entity>| Op::Upsert {
            entity: e.clone(),
            updated_us: 9,
            owner: owner.clone(),
        };
        let commits = [
            Commit {
                ops: vec![upsert(&kept), upsert(&gone)],
                changes: vec![
                    change(1, Action::Created, &kept),
                    change(2, Action::Created, &gone),
                ],
            },
            Commit {
                ops: vec![Op::Delete {
                    entity_type: "nova.instance".into(),
                    id: "gone".into(),
                    deleted_us: 11,
                    owner: owner.clone(),
                }],
                changes: vec![change(3, Action::Deleted, &gone)],
            },
        ];
        store.write(&commits, &[]).unwrap();
        // `abc`'s creation was confirmed; `gone`'s deletion was not.
        store
            .write(&[], &[(key("nova.instance", "abc"), 1)])
            .unwrap();
        drop(store);
        let (_, restored) = Store::open(&path).unwrap();
        assert_eq!(restored.entities.len(), 1);
        assert_eq!(
            *restored.entities[0].entity, *kept,
            "the whole entity comes back"
        );
        assert_eq!(restored.entities[0].content, kept.content_hash());
        assert_eq!(restored.entities[0].updated_us, 9);
        assert_eq!(
            restored.tombstones,
            vec![StoredTombstone {
                entity_type: "nova.instance".into(),
                id: "gone".into(),
                deleted_us: 11,
                owner: "nova".into(),
            }]
        );
        assert_eq!(restored.in_doubt.len(), 1);
        assert_eq!(
            restored.in_doubt[0].action,
            Action::Deleted,
            "created then deleted: deleted"
        );
        assert_eq!(*restored.in_doubt[0].entity, *gone);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn in_doubt_changes_combine_to_what_brings_any_consumer_up_to_date() {
        use Action::*;
        assert_eq!(combine(Created, Updated), Created);
        assert_eq!(combine(Created, Deleted), Deleted);
        assert_eq!(combine(Deleted, Created), Created);
        assert_eq!(combine(Updated, Deleted), Deleted);
        assert_eq!(combine(Updated, Updated), Updated);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sync-store-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
