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
//! The view is a *log*: table `log` holds rows numbered in the order they were
//! written, each a run of records (the entity's state with what the baseline compares,
//! or a tombstone; `records`). A commit appends the records of what it changed, in
//! rows of about a MiB, so that a first snapshot of a million entities is a few hundred
//! sequential writes and a round of ten thousand changes a few, wherever their keys
//! fall. A key's latest record is its state. An index in memory (`liveness`) knows
//! which record is the latest of its key; when the log holds more garbage than live
//! records, each commit also cleans a few rows (those with the fewest live records
//! first): it copies their live records to the end and removes them, so the file stays
//! within about twice the view. Tombstones past the retention are left out when their
//! row is cleaned, and are not restored.
//!
//! `journal`: the changes in doubt, one row per committed group, keyed by a number that
//! only grows (across runs), so that writing a group is one append and clearing the
//! settled ones removes a few rows at the front: the group's last number (u64 LE), then
//! its changes (`records::put_entity`, `records::put_tombstone`). The file carries a format marker; a file from
//! another format or another program is refused with a message that says what was
//! found.

#[cfg(feature = "persist")]
mod liveness;
#[cfg(feature = "persist")]
mod records;
#[cfg(feature = "persist")]
mod store;

use std::sync::Arc;

use synchronizer_plugin_api::Entity;

use crate::change::{Action, Change};
#[cfg(feature = "persist")]
pub use store::{Store, StoreError};

/// The name the store confirms under, among the reliable consumers.
pub const STORE_OUTPUT: &str = "baseline store";

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
    /// Host time (µs since the epoch) the tombstone was made: it is kept for the
    /// retention from then, across restarts.
    pub made_us: i64,
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
