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
//! the deletion (i64 LE), owner name. `journal`: the changes in doubt, one row per
//! committed group, keyed by a number that only grows (across runs), so that writing a
//! group is one append and clearing the settled ones removes a few rows at the front:
//! the group's last number (u64 LE), then per change its action (u8), key (u16 LE
//! length, bytes), instance (u16 LE length, bytes) and, for a deletion, the entity as
//! last known (u32 LE length, bytes). The file carries a format marker; a file from another format or
//! another program is refused with a message that says what was found.

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use synchronizer_plugin_api::Entity;

use crate::change::{Action, Change};
use crate::delivery::{Confirmer, Deliveries};
use crate::isolation::wire;

const FORMAT: &str = "synchronizer-baseline/2";
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const ENTITIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entities");
const TOMBSTONES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tombstones");
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");

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
    /// The journal number of this run's change `seq` 0: above every row already there.
    base: u64,
    /// Whether the previous runs' journal rows are still there (they go with the first
    /// write, which announces them again).
    old_rows: std::cell::RefCell<bool>,
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

/// Appends one change to a journal row: its action, key, instance, and for a deletion
/// the entity as last known (any other change's entity is the `entities` row of its key).
fn encode_journal(row: &mut Vec<u8>, action: Action, key: &[u8], instance: &str, entity: &Entity) {
    row.push(action_to_u8(action));
    let len = key.len().min(u16::MAX as usize);
    row.extend_from_slice(&(len as u16).to_le_bytes());
    row.extend_from_slice(&key[..len]);
    put_name(row, instance);
    if action == Action::Deleted {
        let body = wire::encode_entity(entity);
        row.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
        row.extend_from_slice(&body);
    }
}

/// One change of a journal row read back: action, key, instance, a deletion's entity;
/// and the rest of the row.
type JournalEntry = (Action, Vec<u8>, String, Option<Entity>);

fn decode_journal(v: &[u8]) -> Option<(JournalEntry, &[u8])> {
    let action = action_from_u8(*v.first()?)?;
    let len = u16::from_le_bytes(v.get(1..3)?.try_into().ok()?) as usize;
    let key = v.get(3..3 + len)?.to_vec();
    let (instance, rest) = take_name(v.get(3 + len..)?)?;
    let (entity, rest) = if action == Action::Deleted {
        let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let e = wire::decode_entity(rest.get(4..4 + n)?).ok()?;
        (Some(e), rest.get(4 + n..)?)
    } else {
        (None, rest)
    };
    Some(((action, key, instance, entity), rest))
}

/// The last change number a journal row covers.
fn journal_last(v: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(v.get(..8)?.try_into().ok()?))
}

/// What the journal says of one key: its changes combined, the instance of the last one,
/// and the entity if it ends deleted.
struct JournalKey {
    key: Vec<u8>,
    action: Action,
    instance: String,
    gone: Option<Arc<Entity>>,
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
        let mut store = Store {
            db,
            path: path.to_owned(),
            base: 0,
            old_rows: std::cell::RefCell::new(false),
        };
        let (restored, next) = store.check_and_read()?;
        store.base = next;
        *store.old_rows.borrow_mut() = next > 0;
        Ok((store, restored))
    }

    /// Checks the marker, reads everything back; returns it and the next journal number.
    fn check_and_read(&self) -> Result<(Restored, u64), StoreError> {
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
            txn.open_table(JOURNAL).map_err(|e| io(&e))?;
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
        // The journal, in order: per key, what its changes in doubt amount to.
        let journal = txn.open_table(JOURNAL).map_err(|e| io(&e))?;
        let mut next = 0u64;
        let mut per_key: Vec<JournalKey> = Vec::new();
        let mut at: std::collections::HashMap<Vec<u8>, usize> = Default::default();
        for row in journal.iter().map_err(|e| io(&e))? {
            let (_, v) = row.map_err(|e| io(&e))?;
            let v = v.value();
            let Some(last) = journal_last(v) else {
                return Err(foreign("a journal row it cannot read".into()));
            };
            next = next.max(last.saturating_add(1));
            let mut rest = &v[8..];
            while !rest.is_empty() {
                let Some(((action, k, instance, gone), more)) = decode_journal(rest) else {
                    return Err(foreign("a journal row it cannot read".into()));
                };
                rest = more;
                let gone = gone.map(Arc::new);
                match at.get(&k) {
                    Some(&i) => {
                        let entry = &mut per_key[i];
                        entry.action = combine(entry.action, action);
                        entry.instance = instance;
                        entry.gone = gone;
                    }
                    None => {
                        at.insert(k.clone(), per_key.len());
                        per_key.push(JournalKey {
                            key: k,
                            action,
                            instance,
                            gone,
                        });
                    }
                }
            }
        }
        for JournalKey {
            key: k,
            action,
            instance,
            gone,
        } in per_key
        {
            let entity = match (action, gone) {
                (Action::Deleted, Some(e)) => e,
                _ => match entities.get(k.as_slice()).map_err(|e| io(&e))? {
                    Some(row) => match decode_entity_row(row.value()) {
                        Some(e) => e.entity,
                        None => return Err(foreign("an entity row it cannot read".into())),
                    },
                    // A change to an entity that is gone, and no deletion after it in
                    // the journal: nothing a consumer could miss.
                    None => continue,
                },
            };
            restored.in_doubt.push(InDoubt {
                action,
                entity,
                instance,
            });
        }
        Ok((restored, next))
    }

    /// Commits `commits` in one transaction (one journal row for all their changes), and
    /// clears the journal rows whose changes are all settled: through `settled_through`
    /// of this run.
    pub fn write(
        &self,
        commits: &[Commit],
        settled_through: Option<u64>,
    ) -> Result<(), StoreError> {
        let io = |e: &dyn std::fmt::Display| StoreError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        // The entities' writes in key order (stable: a key's writes keep their order),
        // so that the B-tree is walked once instead of at random.
        let mut ops: Vec<(Vec<u8>, &Op)> = commits
            .iter()
            .flat_map(|c| c.ops.iter())
            .map(|op| {
                let k = match op {
                    Op::Upsert { entity, .. } => key(entity.entity_type(), entity.id()),
                    Op::Delete {
                        entity_type, id, ..
                    } => key(entity_type, id),
                };
                (k, op)
            })
            .collect();
        ops.sort_by(|a, b| a.0.cmp(&b.0));
        let txn = self.db.begin_write().map_err(|e| io(&e))?;
        {
            let mut entities = txn.open_table(ENTITIES).map_err(|e| io(&e))?;
            let mut tombstones = txn.open_table(TOMBSTONES).map_err(|e| io(&e))?;
            let mut journal = txn.open_table(JOURNAL).map_err(|e| io(&e))?;
            let mut buried = !tombstones.is_empty().map_err(|e| io(&e))?;
            for (k, op) in &ops {
                match op {
                    Op::Upsert {
                        entity,
                        updated_us,
                        owner,
                    } => {
                        let row = encode_entity_row(entity, *updated_us, owner);
                        entities
                            .insert(k.as_slice(), row.as_slice())
                            .map_err(|e| io(&e))?;
                        if buried {
                            tombstones.remove(k.as_slice()).map_err(|e| io(&e))?;
                        }
                    }
                    Op::Delete {
                        deleted_us, owner, ..
                    } => {
                        entities.remove(k.as_slice()).map_err(|e| io(&e))?;
                        let mut v = deleted_us.to_le_bytes().to_vec();
                        put_name(&mut v, owner);
                        tombstones
                            .insert(k.as_slice(), v.as_slice())
                            .map_err(|e| io(&e))?;
                        buried = true;
                    }
                }
            }
            // The rows to go: the previous runs' (announced again by this run's first
            // commit), and this run's whose every change is settled. Rows are few (one
            // per committed group): read their heads from the front.
            let mut gone: Vec<u64> = Vec::new();
            let old = std::mem::replace(&mut *self.old_rows.borrow_mut(), false);
            for row in journal.iter().map_err(|e| io(&e))? {
                let (n, v) = row.map_err(|e| io(&e))?;
                let n = n.value();
                let settled = n < self.base && old
                    || settled_through.is_some_and(|t| {
                        n >= self.base
                            && journal_last(v.value())
                                .is_some_and(|last| last <= self.base.saturating_add(t))
                    });
                if settled {
                    gone.push(n);
                } else if n >= self.base {
                    break;
                }
            }
            for n in gone {
                journal.remove(n).map_err(|e| io(&e))?;
            }
            let mut changes = commits.iter().flat_map(|c| c.changes.iter()).peekable();
            if let Some(first) = changes.peek().map(|c| c.seq) {
                let mut row = vec![0u8; 8];
                let mut last = first;
                for change in changes {
                    let k = key(change.entity.entity_type(), change.entity.id());
                    encode_journal(
                        &mut row,
                        change.action,
                        &k,
                        &change.instance,
                        &change.entity,
                    );
                    last = change.seq;
                }
                row[..8].copy_from_slice(&self.base.saturating_add(last).to_le_bytes());
                journal
                    .insert(self.base.saturating_add(first), row.as_slice())
                    .map_err(|e| io(&e))?;
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
        // This run's changes in doubt, in seq order, with the time they were announced.
        let mut doubt: std::collections::VecDeque<(u64, std::time::Instant)> = Default::default();
        // Once every sender is gone, one last round settles what was announced (the
        // outputs were drained before the store stops), then the writer ends.
        let mut disconnected = false;
        loop {
            let stopping = disconnected;
            let mut group = Vec::new();
            if !stopping {
                // Nothing in doubt: wait for the next batch. Something in doubt: look
                // again soon, so that a settled change does not stay in doubt for long
                // (after a crash it would be announced again).
                let next = if doubt.is_empty() {
                    rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
                } else {
                    rx.recv_timeout(Duration::from_millis(50))
                };
                match next {
                    Ok(c) => group.push(c),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => disconnected = true,
                }
                while let Ok(c) = rx.try_recv() {
                    group.push(c);
                }
            }
            // Consumers that confirm (reliable outputs) settle a change when they confirm
            // it; the others (stdout, SSE, callbacks) when it was announced a while ago:
            // time enough to write what they were handed.
            let confirming = deliveries.confirmed_except(STORE_OUTPUT);
            let through = confirming.unwrap_or_else(|| mark.confirmed());
            let settled = |at: &std::time::Instant| stopping || at.elapsed() >= SETTLE;
            let mut confirmed: Option<u64> = None;
            while doubt
                .front()
                .is_some_and(|(seq, at)| *seq <= through && settled(at))
            {
                confirmed = doubt.pop_front().map(|(seq, _)| seq);
            }
            if group.is_empty() && confirmed.is_some() {
                match self.write(&group, confirmed) {
                    Ok(()) => tracing::debug!(
                        through = confirmed,
                        "baseline store: confirmed changes are no longer in doubt"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot clear confirmed changes in the baseline store; they are announced again after a restart")
                    }
                }
            } else if !group.is_empty() {
                let ops: usize = group.iter().map(|c| c.ops.len()).sum();
                if let Err(e) = self.write(&group, confirmed) {
                    // Announce anyway: holding changes back would stop every producer for
                    // good. They are reported again after a restart, as nothing was
                    // written.
                    tracing::error!(error = %e, ops, "cannot write the baseline store; these changes are announced without being durable");
                } else {
                    tracing::debug!(ops, commits = group.len(), "baseline store committed");
                }
                for commit in group {
                    let Some(last) = commit.changes.last().map(|c| c.seq) else {
                        continue;
                    };
                    let now = std::time::Instant::now();
                    doubt.extend(commit.changes.iter().map(|c| (c.seq, now)));
                    announce(commit.changes);
                    mark.confirm(last);
                }
            }
            if stopping {
                break;
            }
        }
        if !doubt.is_empty() {
            tracing::info!(
                changes = doubt.len(),
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
        store.write(&commits[..1], None).unwrap();
        store.write(&commits[1..], None).unwrap();
        // Both creations were settled; `gone`'s deletion was not.
        store.write(&[], Some(2)).unwrap();
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
            "the deletion is in doubt"
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
