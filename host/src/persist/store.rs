//! The redb file behind the durable baseline (feature `persist`): its layout is in the
//! [module docs](super).

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use redb::{Database, ReadableTable, TableDefinition, TableHandle};
use synchronizer_plugin_api::Entity;

use super::liveness::{self, Liveness, digest};
use super::records::{self, Held};
use super::{Commit, InDoubt, Op, Restored, STORE_OUTPUT, StoredEntity, StoredTombstone};
use crate::change::{Action, Change};
use crate::delivery::{Confirmer, Deliveries};
use crate::isolation::wire;

const FORMAT: &str = "synchronizer-baseline/3";
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");

/// A log row holds at most this many bytes (unless one record is larger): a MiB less
/// room for the page's own header, as redb gives a value a power of two of pages.
const ROW_BYTES: usize = (1 << 20) - 4096;

/// Cleaning starts once the garbage is above the live records and above this.
const MIN_GARBAGE: u64 = 100_000;

/// A commit of this many writes or more is encoded on several threads.
const PARALLEL_FROM: usize = 20_000;

/// How long after its announcement a change counts as received by the consumers that
/// do not confirm (stdout, SSE clients, callbacks): until then it stays in doubt, and a
/// crash makes the next start announce it again.
const SETTLE: Duration = Duration::from_secs(1);

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
    /// How long a tombstone is kept (the baseline's retention).
    tombstone_ttl_us: i64,
    /// The journal number of this run's change `seq` 0: above every row already there.
    base: u64,
    /// Whether the previous runs' journal rows are still there (they go with the first
    /// write, which announces them again).
    old_rows: bool,
    /// Which records of the log are live; `None` after a failed write (read again from
    /// the file before the next one).
    liveness: Option<Liveness>,
    /// Cleaning starts once the garbage is above the live records and above this.
    min_garbage: u64,
}

fn now_us() -> i64 {
    synchronizer_plugin_api::entity::system_time_to_micros(SystemTime::now())
}

/// What the journal says of one key: its changes combined, the instance of the last one,
/// and the entity if it ends deleted.
struct JournalKey {
    action: Action,
    instance: String,
    gone: Option<Arc<Entity>>,
    /// The key's entity in the log, if it exists.
    now: Option<Arc<Entity>>,
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

/// The records of a commit waiting to become a log row, with the keys they are the
/// latest of once written.
#[derive(Default)]
struct RowWriter {
    buf: Vec<u8>,
    /// Per record: its key's digest, and for a tombstone the time it was made.
    keys: Vec<(liveness::Digest, Option<i64>)>,
}

impl RowWriter {
    /// Appends one record, writing the row first if the record would not fit in it.
    fn push(
        &mut self,
        record: &[u8],
        key: liveness::Digest,
        tombstone_made_us: Option<i64>,
        log: &mut redb::Table<u64, &[u8]>,
        liveness: &mut Liveness,
    ) -> Result<(), redb::StorageError> {
        if !self.buf.is_empty() && self.buf.len() + record.len() > ROW_BYTES {
            self.flush(log, liveness)?;
        }
        self.buf.extend_from_slice(record);
        self.keys.push((key, tombstone_made_us));
        Ok(())
    }

    /// Writes what is buffered as the next row.
    fn flush(
        &mut self,
        log: &mut redb::Table<u64, &[u8]>,
        liveness: &mut Liveness,
    ) -> Result<(), redb::StorageError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let row = liveness.next_row();
        log.insert(row, self.buf.as_slice())?;
        liveness.add_row_of(row, &self.keys);
        self.keys.clear();

        self.buf.clear();
        Ok(())
    }
}

/// Writes the records of `ops` to the log as rows, in order, handing each row to
/// `write` (which inserts it). Encoding is most of a large commit's work: from
/// [`PARALLEL_FROM`] ops on, chunks are encoded on their own threads while the rows
/// already encoded are written (each chunk makes its own rows; a few rows per chunk
/// wait at most), so that encoding and the B-tree's work overlap.
fn encode_rows<E>(
    ops: &[&Op],
    now: i64,
    mut write: impl FnMut(RowWriter) -> Result<(), E>,
) -> Result<(), E> {
    let threads = if ops.len() >= PARALLEL_FROM {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    } else {
        1
    };
    if threads <= 1 {
        let mut written = Ok(());
        encode_chunk(ops, now, |row| {
            written = write(row);
            written.is_ok()
        });
        return written;
    }
    let chunk = ops.len().div_ceil(threads);
    std::thread::scope(|s| {
        let chunks: Vec<mpsc::Receiver<RowWriter>> = ops
            .chunks(chunk)
            .map(|c| {
                let (tx, rx) = mpsc::sync_channel(8);
                // A send fails once the writer gave up (an error): the thread stops.
                s.spawn(move || encode_chunk(c, now, |row| tx.send(row).is_ok()));
                rx
            })
            .collect();
        chunks
            .into_iter()
            .try_for_each(|rows| rows.into_iter().try_for_each(&mut write))
    })
}

/// The records of `ops` as rows of at most [`ROW_BYTES`] (or one record), each handed
/// to `row` as it is full; stops when `row` returns false.
fn encode_chunk(ops: &[&Op], now: i64, mut row_done: impl FnMut(RowWriter) -> bool) {
    // A row's buffer is allocated once at its final size: growing it would copy it
    // and touch fresh pages several times over.
    let fresh = || RowWriter {
        buf: Vec::with_capacity(if ops.len() > 64 { ROW_BYTES + 4096 } else { 0 }),
        keys: Vec::new(),
    };
    let mut row = fresh();
    for op in ops {
        let at = row.buf.len();
        let (key, made) = match op {
            Op::Upsert {
                entity,
                updated_us,
                owner,
            } => {
                records::put_entity(&mut row.buf, entity, *updated_us, owner);
                (digest(entity.entity_type(), entity.id()), None)
            }
            Op::Delete {
                entity_type,
                id,
                deleted_us,
                owner,
            } => {
                records::put_tombstone(&mut row.buf, entity_type, id, *deleted_us, now, owner);
                (digest(entity_type, id), Some(now))
            }
        };
        if row.buf.len() > ROW_BYTES && at > 0 {
            // The record goes to the next row.
            let mut next = fresh();
            next.buf.extend_from_slice(&row.buf[at..]);
            row.buf.truncate(at);
            if !row_done(std::mem::replace(&mut row, next)) {
                return;
            }
        }
        row.keys.push((key, made));
    }
    if !row.keys.is_empty() {
        row_done(row);
    }
}

/// The journal row of `commits`' changes (`None` without changes): its key, the
/// journal number of its first change, and the row.
fn journal_row(commits: &[Commit], base: u64) -> Option<(u64, Vec<u8>)> {
    let changes = || commits.iter().flat_map(|c| c.changes.iter());
    let first = changes().next()?.seq;
    let last = changes().last().map_or(first, |c| c.seq);
    let mut instances: Vec<String> = Vec::new();
    let mut count = 0;
    for c in changes() {
        count += 1;
        if !instances.iter().any(|i| **i == *c.instance) {
            instances.push(c.instance.to_string());
        }
    }
    let mut row = records::JournalRow::new(base.saturating_add(last), instances, count);
    for change in changes() {
        let key = digest(change.entity.entity_type(), change.entity.id());
        row.push(change.action, key, &change.instance, &change.entity);
    }
    Some((first, row.finish()))
}

/// The live records of row `n`, in order: those of a key whose latest record is in this
/// row, and of them the last (a row can hold a key twice: a creation and a deletion of
/// one commit, or a cleaned copy and the commit's own record). `Err(())` if a record
/// cannot be read.
fn live_records<'a>(
    row: &'a [u8],
    n: u64,
    liveness: &Liveness,
) -> Result<Vec<(liveness::Digest, records::Record<'a>)>, ()> {
    let all: Vec<records::Record<'a>> = records::records(row).collect::<Result<_, _>>()?;
    let mut seen = std::collections::HashSet::new();
    let mut live: Vec<_> = all
        .into_iter()
        .rev()
        .filter_map(|r| {
            let key = r.digest();
            (liveness.is_live(key, n) && seen.insert(key)).then_some((key, r))
        })
        .collect();
    live.reverse();
    Ok(live)
}

/// Runs `f`, catching a panic in it without the panic hook printing it: while it runs,
/// the hook stays silent for this thread and passes every other thread's panic on to
/// the hook that was installed before.
fn quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    thread_local! {
        static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    type Hook = dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send;
    let previous: Arc<Hook> = Arc::from(std::panic::take_hook());
    let forward = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        if !QUIET.with(std::cell::Cell::get) {
            forward(info)
        }
    }));
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    drop(std::panic::take_hook());
    std::panic::set_hook(Box::new(move |info| previous(info)));
    result
}

impl Store {
    /// Opens (or creates) the store at `path` and reads what it holds. Tombstones are
    /// kept for `tombstone_ttl` from the time they were made (the baseline's retention);
    /// older ones are not restored and go when their row is cleaned.
    pub fn open(path: &Path, tombstone_ttl: Duration) -> Result<(Store, Restored), StoreError> {
        let io = |e: &dyn std::fmt::Display| StoreError::Io {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
        }
        // redb initialises an empty file as a new database: say so, as for a new file.
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            tracing::warn!(
                file = %path.display(),
                "the baseline store file is empty (0 bytes: created but never written, or emptied); it is initialised as a new, empty store"
            );
        }
        // redb asserts (panics) on some truncated files instead of returning an error:
        // caught, and its panic message kept out of the output (the error says it).
        let opened = quietly(|| Database::create(path));
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
            tombstone_ttl_us: i64::try_from(tombstone_ttl.as_micros()).unwrap_or(i64::MAX),
            base: 0,
            old_rows: false,
            liveness: None,
            min_garbage: MIN_GARBAGE,
        };
        store.check_marker()?;
        let (restored, liveness, next) = store.read()?;
        store.base = next;
        store.old_rows = next > 0;
        store.liveness = Some(liveness);
        Ok((store, restored))
    }

    fn io(&self, e: &dyn std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    fn foreign(&self, found: &str) -> StoreError {
        StoreError::Foreign {
            path: self.path.clone(),
            found: found.to_owned(),
        }
    }

    /// A new store gets the format marker; an existing one must carry ours.
    fn check_marker(&self) -> Result<(), StoreError> {
        let io = |e: &dyn std::fmt::Display| self.io(e);
        let txn = self.db.begin_write().map_err(|e| io(&e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| match e {
                redb::TableError::TableTypeMismatch { .. } => {
                    self.foreign("a `meta` table of another shape")
                }
                other => io(&other),
            })?;
            let found = meta
                .get("format")
                .map_err(|e| io(&e))?
                .map(|v| v.value().to_owned());
            match found {
                Some(f) if f == FORMAT => {}
                Some(f) => return Err(self.foreign(&f)),
                None => {
                    let other_tables = txn
                        .list_tables()
                        .map_err(|e| io(&e))?
                        .any(|t| t.name() != "meta");
                    if other_tables {
                        return Err(self.foreign("tables of another program, no format marker"));
                    }
                    meta.insert("format", FORMAT).map_err(|e| io(&e))?;
                }
            }
            txn.open_table(LOG).map_err(|e| io(&e))?;
            txn.open_table(JOURNAL).map_err(|e| io(&e))?;
        }
        txn.commit().map_err(|e| io(&e))
    }

    /// Which record of the log is the latest of its key: the first pass over the log,
    /// reading the records' heads only.
    fn scan(&self, txn: &redb::ReadTransaction) -> Result<Liveness, StoreError> {
        let io = |e: &dyn std::fmt::Display| self.io(e);
        let log = txn.open_table(LOG).map_err(|e| io(&e))?;
        let mut liveness = Liveness::default();
        let mut keys = Vec::new();
        for row in log.iter().map_err(|e| io(&e))? {
            let (n, v) = row.map_err(|e| io(&e))?;
            let n = n.value();
            keys.clear();
            for r in records::records(v.value()) {
                let r = r.map_err(|()| self.foreign("a log row it cannot read"))?;
                let made = match r.held {
                    Held::Entity { .. } => None,
                    Held::Tombstone { made_us, .. } => Some(made_us),
                };
                keys.push((r.digest(), made));
            }
            liveness.add_row_of(n, &keys);
        }
        Ok(liveness)
    }

    /// Reads everything back: the view and the tombstones (the latest record of each
    /// key), the changes in doubt; returns them, the log's index and the next journal
    /// number.
    fn read(&self) -> Result<(Restored, Liveness, u64), StoreError> {
        let io = |e: &dyn std::fmt::Display| self.io(e);
        let txn = self.db.begin_read().map_err(|e| io(&e))?;
        let mut liveness = self.scan(&txn)?;

        // The journal, in order: per key, what its changes in doubt amount to.
        let journal = txn.open_table(JOURNAL).map_err(|e| io(&e))?;
        let mut next = 0u64;
        let mut per_key: Vec<JournalKey> = Vec::new();
        let mut at: liveness::DigestMap<usize> = Default::default();
        for row in journal.iter().map_err(|e| io(&e))? {
            let (_, v) = row.map_err(|e| io(&e))?;
            let v = v.value();
            let unreadable = || self.foreign("a journal row it cannot read");
            let last = records::journal_last(v).ok_or_else(unreadable)?;
            next = next.max(last.saturating_add(1));
            for (action, k, instance, gone) in records::changes(v).ok_or_else(unreadable)? {
                let gone = gone.map(Arc::new);
                match at.get(&k) {
                    Some(&i) => {
                        let entry = &mut per_key[i];
                        entry.action = combine(entry.action, action);
                        entry.instance = instance;
                        entry.gone = gone;
                    }
                    None => {
                        at.insert(k, per_key.len());
                        per_key.push(JournalKey {
                            action,
                            instance,
                            gone,
                            now: None,
                        });
                    }
                }
            }
        }
        let wanted = at;

        // The second pass decodes the live records only.
        let mut restored = Restored::default();
        let expired_before = now_us().saturating_sub(self.tombstone_ttl_us);
        let mut expired = Vec::new();
        let log = txn.open_table(LOG).map_err(|e| io(&e))?;
        for row in log.iter().map_err(|e| io(&e))? {
            let (n, v) = row.map_err(|e| io(&e))?;
            let n = n.value();
            let live = live_records(v.value(), n, &liveness)
                .map_err(|()| self.foreign("a log row it cannot read"))?;
            for (key, r) in live {
                match r.held {
                    Held::Entity {
                        content,
                        updated_us,
                        owner,
                        body,
                    } => {
                        let entity = wire::decode_entity(body)
                            .map_err(|_| self.foreign("an entity it cannot read"))?;
                        let entity = Arc::new(entity);
                        if let Some(&i) = wanted.get(&key) {
                            per_key[i].now = Some(entity.clone());
                        }
                        restored.entities.push(StoredEntity {
                            entity,
                            content,
                            updated_us,
                            owner: owner.to_owned(),
                        });
                    }
                    Held::Tombstone {
                        deleted_us,
                        made_us,
                        owner,
                    } => {
                        if made_us < expired_before {
                            expired.push(key);
                            continue;
                        }
                        restored.tombstones.push(StoredTombstone {
                            entity_type: r.entity_type.to_owned(),
                            id: r.id.to_owned(),
                            deleted_us,
                            made_us,
                            owner: owner.to_owned(),
                        });
                    }
                }
            }
        }
        for key in expired {
            liveness.forget(key);
        }
        // Oldest first: the baseline expires them in the order they come.
        restored.tombstones.sort_by_key(|t| t.made_us);
        for j in per_key {
            let entity = match (j.action, j.gone, j.now) {
                (Action::Deleted, Some(e), _) => e,
                (_, _, Some(e)) => e,
                // A change to an entity that is gone, and no deletion after it in the
                // journal: nothing a consumer could miss.
                _ => continue,
            };
            restored.in_doubt.push(InDoubt {
                action: j.action,
                entity,
                instance: j.instance,
            });
        }
        Ok((restored, liveness, next))
    }

    /// Cleans the log as soon as it holds more garbage than live records, however
    /// little (tests; the default waits for `MIN_GARBAGE` records of garbage).
    pub fn clean_eagerly(mut self) -> Self {
        self.min_garbage = 0;
        self
    }

    /// The log's rows, its keys with a live record and its garbage records (tests and
    /// the benchmark); `None` right after a failed write.
    pub fn log_shape(&self) -> Option<(usize, usize, u64)> {
        self.liveness
            .as_ref()
            .map(|l| (l.rows(), l.keys(), l.garbage()))
    }

    /// Commits `commits` in one transaction (their records appended to the log, one
    /// journal row for all their changes, a few rows cleaned when the log holds more
    /// garbage than live records), and clears the journal rows whose changes are all
    /// settled: through `settled_through` of this run.
    pub fn write(
        &mut self,
        commits: &[Commit],
        settled_through: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut liveness = match self.liveness.take() {
            Some(l) => l,
            // A write failed: what the file holds is what counts.
            None => {
                let txn = self.db.begin_read().map_err(|e| self.io(&e))?;
                self.scan(&txn)?
            }
        };
        self.write_with(&mut liveness, commits, settled_through)?;
        self.liveness = Some(liveness);
        Ok(())
    }

    fn write_with(
        &mut self,
        liveness: &mut Liveness,
        commits: &[Commit],
        settled_through: Option<u64>,
    ) -> Result<(), StoreError> {
        let io = |e: &dyn std::fmt::Display| StoreError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let now = now_us();
        let txn = self.db.begin_write().map_err(|e| io(&e))?;
        {
            let mut log = txn.open_table(LOG).map_err(|e| io(&e))?;
            let mut journal = txn.open_table(JOURNAL).map_err(|e| io(&e))?;
            let mut out = RowWriter::default();
            let written: u64 = commits.iter().map(|c| c.ops.len() as u64).sum();
            // Cleaning first: this commit's records come after the copies, so they win.
            {
                let expired_before = now.saturating_sub(self.tombstone_ttl_us);
                let budget = written.saturating_mul(2).max(4096);
                for row in liveness.pick(budget, self.min_garbage, expired_before) {
                    let bytes = match log.get(row).map_err(|e| io(&e))? {
                        Some(v) => v.value().to_vec(),
                        None => Vec::new(),
                    };
                    let live =
                        live_records(&bytes, row, liveness).map_err(|()| StoreError::Foreign {
                            path: self.path.clone(),
                            found: "a log row it cannot read".into(),
                        })?;
                    for (key, r) in live {
                        let made = match r.held {
                            Held::Tombstone { made_us, .. } if made_us < expired_before => {
                                liveness.forget(key);
                                continue;
                            }
                            Held::Tombstone { made_us, .. } => Some(made_us),
                            Held::Entity { .. } => None,
                        };
                        out.push(r.raw, key, made, &mut log, liveness)
                            .map_err(|e| io(&e))?;
                    }
                    log.remove(row).map_err(|e| io(&e))?;
                    liveness.remove_row(row);
                }
            }
            // Then this commit's records, encoded on several threads when there are many.
            out.flush(&mut log, liveness).map_err(|e| io(&e))?;
            let ops: Vec<&Op> = commits.iter().flat_map(|c| c.ops.iter()).collect();
            liveness.reserve(ops.len().saturating_sub(liveness.keys()));
            // The journal row is built beside the log's rows: at a million changes, reading
            // them is a few hundred milliseconds of memory latency.
            let base = self.base;
            let (encoded, journal_row) = std::thread::scope(|s| {
                let journal = (ops.len() >= PARALLEL_FROM)
                    .then(|| s.spawn(move || journal_row(commits, base)));
                let encoded = encode_rows(&ops, now, |mut row| row.flush(&mut log, liveness));
                let journal_row = match journal {
                    Some(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                    None => journal_row(commits, base),
                };
                (encoded, journal_row)
            });
            encoded.map_err(|e| io(&e))?;

            // The journal rows to go: the previous runs' (announced again by this run's
            // first commit), and this run's whose every change is settled. Rows are few
            // (one per committed group): read their heads from the front.
            let mut gone: Vec<u64> = Vec::new();
            let old = std::mem::replace(&mut self.old_rows, false);
            for row in journal.iter().map_err(|e| io(&e))? {
                let (n, v) = row.map_err(|e| io(&e))?;
                let n = n.value();
                let settled = n < self.base && old
                    || settled_through.is_some_and(|t| {
                        n >= self.base
                            && records::journal_last(v.value())
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
            if let Some((first, row)) = journal_row {
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
        mut self,
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

    #[test]
    fn an_empty_file_is_initialised_as_a_new_store() {
        let path = tempfile_dir().join("b.redb");
        std::fs::write(&path, b"").expect("an empty file");
        let (_store, restored) = Store::open(&path, Duration::from_secs(60)).expect("opens");
        assert!(restored.entities.is_empty() && restored.in_doubt.is_empty());
        assert!(
            std::fs::metadata(&path).expect("file").len() > 0,
            "initialised"
        );
    }

    #[test]
    fn a_panic_kept_quiet_is_caught_and_the_hook_is_back_afterwards() {
        let r: std::thread::Result<()> = quietly(|| panic!("redb's assertion"));
        assert!(r.is_err());
        // The hook is installed again (a second call nests cleanly).
        assert_eq!(quietly(|| 7).ok(), Some(7));
    }

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
        let (mut store, restored) = Store::open(&path, Duration::from_secs(600)).unwrap();
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
        let (_, restored) = Store::open(&path, Duration::from_secs(600)).unwrap();
        assert_eq!(restored.entities.len(), 1);
        assert_eq!(
            *restored.entities[0].entity, *kept,
            "the whole entity comes back"
        );
        assert_eq!(restored.entities[0].content, kept.content_hash());
        assert_eq!(restored.entities[0].updated_us, 9);
        assert_eq!(restored.tombstones.len(), 1);
        let t = &restored.tombstones[0];
        assert_eq!(
            (
                t.entity_type.as_str(),
                t.id.as_str(),
                t.deleted_us,
                t.owner.as_str()
            ),
            ("nova.instance", "gone", 11, "nova")
        );
        assert!(
            t.made_us > 0 && t.made_us <= now_us(),
            "made on the host's clock"
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
