//! The durable baseline: an optional redb file that keeps what the baseline knows across
//! restarts, so that after a restart the host reports only what changed while it was
//! down (deletions included) instead of announcing everything as created again.
//!
//! What is stored, per entity: its type and native id, the content hash, the source
//! timestamp and the name of the instance that owns it; per recent deletion: the
//! tombstone. Entity content itself is not stored: after a restart the current view fills
//! again from the first snapshots, and a deletion names the entity by type and id.
//!
//! Writes happen on a thread of their own, in the order the hub decided the changes, one
//! redb transaction per batch of pending changes. redb commits are atomic and durable:
//! a kill -9 at any moment leaves the last committed state intact. A change is queued
//! for writing only after it was handed to the subscribers, so a crash between the two
//! makes the host announce it again after the restart (at least once, never lost).
//! With reliable outputs (the AMQP output), a change is written only once they confirmed
//! it; what they never confirm is not made durable, and is reported (and published)
//! again after a restart.
//!
//! The file carries a format marker; a file from another format or another program is
//! refused with a message that says what was found.

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use redb::{Database, ReadableTable, TableDefinition, TableHandle};

use crate::delivery::Deliveries;

const FORMAT: &str = "synchronizer-baseline/1";
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const ENTITIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entities");
const TOMBSTONES: TableDefinition<&[u8], i64> = TableDefinition::new("tombstones");

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

/// One entity as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntity {
    /// Its type.
    pub entity_type: String,
    /// Its native id.
    pub id: String,
    /// Its content hash.
    pub content: u64,
    /// Its source timestamp (or sample time).
    pub updated_us: i64,
    /// The instance that owns it.
    pub owner: String,
}

/// What a store held when it was opened.
#[derive(Debug, Default)]
pub struct Restored {
    /// Every entity.
    pub entities: Vec<StoredEntity>,
    /// Tombstones: type, id, delete time.
    pub tombstones: Vec<(String, String, i64)>,
}

/// Writes decided by one batch of the hub, and the `seq` of the last change decided by
/// then (what reliable outputs must have confirmed before the writes are made).
#[derive(Clone, Debug)]
pub struct Writes {
    /// The last change `seq` when these writes were decided.
    pub through_seq: u64,
    /// The writes, in order.
    pub ops: Vec<Op>,
}

/// One write, in the order the hub decided it.
#[derive(Clone, Debug)]
pub enum Op {
    /// The entity exists with this content.
    Upsert(StoredEntity),
    /// The entity was deleted at `deleted_us`.
    Delete {
        /// Its type.
        entity_type: String,
        /// Its native id.
        id: String,
        /// When.
        deleted_us: i64,
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

fn encode_value(e: &StoredEntity) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + e.owner.len());
    v.extend_from_slice(&e.content.to_le_bytes());
    v.extend_from_slice(&e.updated_us.to_le_bytes());
    v.extend_from_slice(e.owner.as_bytes());
    v
}

fn decode_value(v: &[u8]) -> Option<(u64, i64, String)> {
    if v.len() < 16 {
        return None;
    }
    let content = u64::from_le_bytes(v[..8].try_into().ok()?);
    let updated = i64::from_le_bytes(v[8..16].try_into().ok()?);
    let owner = String::from_utf8(v[16..].to_vec()).ok()?;
    Some((content, updated, owner))
}

/// An open store.
pub struct Store {
    db: Database,
    path: PathBuf,
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
        }
        txn.commit().map_err(|e| io(&e))?;

        let mut restored = Restored::default();
        let txn = self.db.begin_read().map_err(|e| io(&e))?;
        let entities = txn.open_table(ENTITIES).map_err(|e| io(&e))?;
        for row in entities.iter().map_err(|e| io(&e))? {
            let (k, v) = row.map_err(|e| io(&e))?;
            let ((entity_type, id), (content, updated_us, owner)) =
                match (split_key(k.value()), decode_value(v.value())) {
                    (Some(k), Some(v)) => (k, v),
                    _ => return Err(foreign("an entity row it cannot read".into())),
                };
            restored.entities.push(StoredEntity {
                entity_type,
                id,
                content,
                updated_us,
                owner,
            });
        }
        let tombstones = txn.open_table(TOMBSTONES).map_err(|e| io(&e))?;
        for row in tombstones.iter().map_err(|e| io(&e))? {
            let (k, v) = row.map_err(|e| io(&e))?;
            let Some((entity_type, id)) = split_key(k.value()) else {
                return Err(foreign("a tombstone row it cannot read".into()));
            };
            restored.tombstones.push((entity_type, id, v.value()));
        }
        Ok(restored)
    }

    /// Applies one batch of writes in one transaction.
    pub fn write(&self, ops: &[Op]) -> Result<(), StoreError> {
        let io = |e: &dyn std::fmt::Display| StoreError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let txn = self.db.begin_write().map_err(|e| io(&e))?;
        {
            let mut entities = txn.open_table(ENTITIES).map_err(|e| io(&e))?;
            let mut tombstones = txn.open_table(TOMBSTONES).map_err(|e| io(&e))?;
            for op in ops {
                match op {
                    Op::Upsert(e) => {
                        let k = key(&e.entity_type, &e.id);
                        entities
                            .insert(k.as_slice(), encode_value(e).as_slice())
                            .map_err(|e| io(&e))?;
                        tombstones.remove(k.as_slice()).map_err(|e| io(&e))?;
                    }
                    Op::Delete {
                        entity_type,
                        id,
                        deleted_us,
                    } => {
                        let k = key(entity_type, id);
                        entities.remove(k.as_slice()).map_err(|e| io(&e))?;
                        tombstones
                            .insert(k.as_slice(), *deleted_us)
                            .map_err(|e| io(&e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| io(&e))
    }

    /// Starts the writer thread; send batches to the returned sender, drop it to stop.
    /// With `gate`, each batch waits until the reliable outputs confirmed its changes; a
    /// batch they never confirm (their broker stayed away until shutdown) is not written.
    pub fn spawn_writer(
        self,
        gate: Option<Arc<Deliveries>>,
    ) -> std::io::Result<(mpsc::Sender<Writes>, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<Writes>();
        let handle = std::thread::Builder::new()
            .name("baseline-store".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Everything already queued goes into the same transaction, up to the
                    // first batch the outputs never confirmed: that one and every later
                    // one are not written (their confirmations would come in order).
                    let mut ops = Vec::new();
                    let mut skipped = 0usize;
                    let mut next = Some(first);
                    while let Some(batch) = next.take() {
                        if skipped == 0 {
                            match gate.as_ref().filter(|g| g.any()) {
                                Some(g) => match futures::executor::block_on(g.delivered(batch.through_seq)) {
                                    Ok(()) => ops.extend(batch.ops),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "changes an output never confirmed are not made durable: after a restart they are reported, and published, again");
                                        skipped += batch.ops.len();
                                    }
                                },
                                None => ops.extend(batch.ops),
                            }
                        } else {
                            skipped += batch.ops.len();
                        }
                        next = rx.try_recv().ok();
                    }
                    if skipped > 0 {
                        tracing::warn!(ops = skipped, "baseline writes dropped: not confirmed by an output");
                    }
                    if ops.is_empty() {
                        continue;
                    }
                    match self.write(&ops) {
                        Ok(()) => tracing::debug!(ops = ops.len(), "baseline store committed"),
                        Err(e) => tracing::error!(error = %e, ops = ops.len(), "cannot write the baseline store; after a restart these changes will be reported again"),
                    }
                }
            })?;
        Ok((tx, handle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_survive_reopening() {
        let dir = tempfile_dir();
        let path = dir.join("b.redb");
        let (store, restored) = Store::open(&path).unwrap();
        assert!(restored.entities.is_empty());
        let e = StoredEntity {
            entity_type: "nova.instance".into(),
            id: "abc".into(),
            content: 7,
            updated_us: 9,
            owner: "nova".into(),
        };
        store
            .write(&[
                Op::Upsert(e.clone()),
                Op::Upsert(StoredEntity {
                    id: "gone".into(),
                    ..e.clone()
                }),
                Op::Delete {
                    entity_type: "nova.instance".into(),
                    id: "gone".into(),
                    deleted_us: 11,
                },
            ])
            .unwrap();
        drop(store);
        let (_, restored) = Store::open(&path).unwrap();
        assert_eq!(restored.entities, vec![e]);
        assert_eq!(
            restored.tombstones,
            vec![("nova.instance".into(), "gone".into(), 11)]
        );
        let _ = std::fs::remove_dir_all(&dir);
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
