//! Driving the host's real `Hub` by hand, for the tests that check what two sources of
//! one entity type do to the baseline (the bus plugin's `nova_agreement.rs`,
//! `heat_agreement.rs`, `real_nova_deletes.rs`): snapshots and pushes as a plugin hands
//! them over, and what the hub made of them. The subscriber's side is
//! [`crate::host::drain_ids`] on the receiver.

use synchronizer::hub::Applied;
use synchronizer_plugin_api::abi::{FfiPushed, FfiSnapshot, PushAction};
use synchronizer_plugin_api::{Change, Entity};

/// A complete snapshot of `entities`.
pub fn snapshot(entities: Vec<Entity>) -> FfiSnapshot {
    FfiSnapshot {
        entities: entities.into(),
        incomplete: Vec::new().into(),
    }
}

/// One pushed upsert of `e`.
pub fn upsert(e: Entity) -> Vec<FfiPushed> {
    vec![FfiPushed {
        action: PushAction::Upsert,
        entity: e,
    }]
}

/// One pushed change, as the bus plugin hands it to the host.
pub fn push(change: Change) -> Vec<FfiPushed> {
    let (action, entity) = match change {
        Change::Upsert(e) => (PushAction::Upsert, e),
        Change::Delete(e) => (PushAction::Delete, e),
    };
    vec![FfiPushed { action, entity }]
}

/// (created, updated, deleted) of what a snapshot or push did.
pub fn counts(a: &Applied) -> (usize, usize, usize) {
    (a.created, a.updated, a.deleted)
}
