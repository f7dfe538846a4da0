//! Driving the host's real `Hub` by hand, for the tests that check that two sources of
//! one entity type agree in the baseline (`nova_agreement.rs`, `heat_agreement.rs`) and
//! what messages that say "deleted" do to it (`real_nova_deletes.rs`).
#![allow(dead_code)]

use synchronizer::hub::Applied;
use synchronizer::{Action, Event};
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

/// The changes the subscriber got since the last call, as `(action, id, state)`.
pub fn drain(rx: &mut tokio::sync::mpsc::Receiver<Event>) -> Vec<(Action, String, Option<String>)> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        match event {
            Event::Change(c) => out.push((
                c.action,
                c.entity.id().to_owned(),
                c.entity.state().map(str::to_owned),
            )),
            other => panic!("unexpected event {other:?}"),
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// (created, updated, deleted) of what a snapshot or push did.
pub fn counts(a: &Applied) -> (usize, usize, usize) {
    (a.created, a.updated, a.deleted)
}
