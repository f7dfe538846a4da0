//! What consumers receive: change notifications, resync markers and snapshots.

use std::sync::Arc;

use synchronizer_plugin_api::Entity;

/// What happened to an entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// It appeared.
    Created,
    /// Its content changed.
    Updated,
    /// It is gone.
    Deleted,
}

impl Action {
    /// `created`, `updated` or `deleted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Deleted => "deleted",
        }
    }
}

/// One change notification.
#[derive(Clone, Debug)]
pub struct Change {
    /// A sequence number, increasing by one per change across the whole host.
    pub seq: u64,
    /// What happened.
    pub action: Action,
    /// The entity as it is now; for a deletion, as it was last known (at least its type
    /// and id).
    pub entity: Arc<Entity>,
    /// The plugin instance the data came from.
    pub instance: Arc<str>,
    /// When the host sampled the data, microseconds since the Unix epoch.
    pub sampled_us: i64,
    /// True when the change comes from the instance's first snapshot after start.
    pub initial: bool,
}

/// Why a subscriber is being sent a full snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResyncReason {
    /// It fell behind and changes were dropped: replace what it holds.
    Lagged,
    /// It asked for a periodic full snapshot.
    Periodic,
    /// It just subscribed and asked for the current state first.
    Initial,
}

impl ResyncReason {
    /// `lagged`, `periodic` or `initial`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncReason::Lagged => "lagged",
            ResyncReason::Periodic => "periodic",
            ResyncReason::Initial => "initial",
        }
    }
}

/// What a subscriber receives, in order.
#[derive(Clone, Debug)]
pub enum Event {
    /// One change of a subscribed type.
    Change(Arc<Change>),
    /// A marker: the next event is a full snapshot that replaces what the subscriber holds.
    Resync(ResyncReason),
    /// Every entity of the subscribed types, as of this point in the change stream
    /// (collected and sorted by type and id when first read).
    Snapshot(crate::view::Snapshot),
}
