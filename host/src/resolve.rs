//! Relations that name their target by a property ([`Selector`]): the index of the view
//! by the properties selectors ask for, and the resolution of each selector to a key
//! (docs/architecture.md §6).
//!
//! The baseline keeps what the plugin sent (the selector text), so a poll that reports
//! the same alarm again changes nothing; what consumers get (the changes, the view,
//! get-all) carries the resolved key. Resolution is the writer's: it runs on every
//! batch's changes, in `seq` order, under the writer's lock, so it sees the targets
//! exactly as the change stream has them.
//!
//! - A **dependent** is an entity with at least one selector relation. It is resolved
//!   when its change is emitted: a selector whose target exists becomes that target's key
//!   (of several, the smallest key), one whose target does not stays as it is.
//! - An **index** `(type, property)` is made the first time a selector asks for it (from
//!   the view, then kept from every change of that type). A value added or removed (a
//!   target created, changed or deleted) re-resolves the dependents waiting on it: those
//!   whose resolved form differs are announced again as `updated`, by the instance that
//!   reported them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use synchronizer_plugin_api::{Entity, Selector};

use crate::change::{Action, Change};
use crate::view::View;

/// An entity a selector matched, indexed by the value its property has.
type Values = HashMap<String, BTreeSet<String>>;

/// One entity with selector relations, as its plugin sent it and as last announced.
struct Dependent {
    raw: Arc<Entity>,
    resolved: Arc<Entity>,
    instance: Arc<str>,
    selectors: Vec<String>,
}

/// The writer's index and dependents.
#[derive(Default)]
pub(crate) struct Resolver {
    /// type → property → value → the keys of the entities with it.
    indexes: HashMap<String, HashMap<String, Values>>,
    /// A target's key → the (property, value) pairs it is indexed under.
    indexed: HashMap<String, Vec<(String, String)>>,
    /// Selector text → the keys of the dependents that carry it.
    waiting: HashMap<String, HashSet<String>>,
    /// Dependents by key.
    dependents: HashMap<String, Dependent>,
}

/// A re-resolved dependent to announce as `updated`.
pub(crate) struct Reannounce {
    pub entity: Arc<Entity>,
    pub instance: Arc<str>,
}

/// The values `entity` has for `property`: a top-level property (a scalar, or each
/// scalar of an array), else its field of that name.
fn values_of(entity: &Entity, properties: &serde_json::Value, property: &str) -> Vec<String> {
    let scalar = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match properties.get(property) {
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(scalar).collect(),
        Some(serde_json::Value::Null) | None => match property {
            "name" if !entity.name().is_empty() => vec![entity.name().to_owned()],
            "id" => vec![entity.id().to_owned()],
            "state" => entity.state().map(str::to_owned).into_iter().collect(),
            "project" => entity.project().map(str::to_owned).into_iter().collect(),
            _ => Vec::new(),
        },
        Some(v) => scalar(v).into_iter().collect(),
    }
}

impl Resolver {
    /// Whether there is nothing to do for a batch with no selector in it.
    fn idle(&self) -> bool {
        self.indexes.is_empty() && self.dependents.is_empty()
    }

    /// The key a selector resolves to now.
    fn lookup(&self, s: &Selector<'_>) -> Option<&String> {
        self.indexes
            .get(s.entity_type)?
            .get(s.property)?
            .get(s.value)?
            .first()
    }

    /// `raw` with every selector whose target exists replaced by its key.
    pub(crate) fn resolve(&self, raw: &Arc<Entity>) -> Arc<Entity> {
        if !raw.has_selectors() {
            return raw.clone();
        }
        let mut any = false;
        let resolved = raw.with_targets(|r| {
            let key = self.lookup(&r.selector()?)?.clone();
            any = true;
            Some(key)
        });
        if any { Arc::new(resolved) } else { raw.clone() }
    }

    /// Makes the index `(entity_type, property)` if it does not exist, from `view`.
    fn declare(&mut self, entity_type: &str, property: &str, view: &View) {
        let by_type = self.indexes.entry(entity_type.to_owned()).or_default();
        if by_type.contains_key(property) {
            return;
        }
        let mut values = Values::new();
        for e in view.of_type(entity_type) {
            let props = e.properties();
            for v in values_of(e, &props, property) {
                values.entry(v.clone()).or_default().insert(e.key());
                self.indexed
                    .entry(e.key())
                    .or_default()
                    .push((property.to_owned(), v));
            }
        }
        tracing::debug!(
            %entity_type,
            %property,
            values = values.len(),
            "index of the view made for relations by property"
        );
        by_type.insert(property.to_owned(), values);
    }

    /// Re-indexes one target; adds the selectors whose answer may have changed to
    /// `touched`.
    fn reindex(&mut self, entity: &Entity, deleted: bool, touched: &mut HashSet<String>) {
        let entity_type = entity.entity_type();
        let Some(by_type) = self.indexes.get_mut(entity_type) else {
            return;
        };
        let key = entity.key();
        let old = self.indexed.remove(&key).unwrap_or_default();
        let mut new = Vec::new();
        if !deleted {
            let props = entity.properties();
            for property in by_type.keys() {
                for v in values_of(entity, &props, property) {
                    new.push((property.clone(), v));
                }
            }
        }
        if old == new {
            if !new.is_empty() {
                self.indexed.insert(key, new);
            }
            return;
        }
        for (property, v) in &old {
            if let Some(values) = by_type.get_mut(property)
                && let Some(keys) = values.get_mut(v)
            {
                keys.remove(&key);
                if keys.is_empty() {
                    values.remove(v);
                }
            }
            if let Some(s) = Selector::new(entity_type, property, v) {
                touched.insert(s.text());
            }
        }
        for (property, v) in &new {
            if let Some(values) = by_type.get_mut(property) {
                values.entry(v.clone()).or_default().insert(key.clone());
            }
            if let Some(s) = Selector::new(entity_type, property, v) {
                touched.insert(s.text());
            }
        }
        if !new.is_empty() {
            self.indexed.insert(key, new);
        }
    }

    fn forget(&mut self, key: &str) {
        if let Some(d) = self.dependents.remove(key) {
            for s in d.selectors {
                if let Some(keys) = self.waiting.get_mut(&s) {
                    keys.remove(key);
                    if keys.is_empty() {
                        self.waiting.remove(&s);
                    }
                }
            }
        }
    }

    /// Resolves a batch's changes in place (the entities of dependents become their
    /// resolved form) and returns the dependents outside the batch that the batch's
    /// targets re-resolved.
    pub(crate) fn process(
        &mut self,
        changes: &mut [Arc<Change>],
        view: impl Fn() -> View,
    ) -> Vec<Reannounce> {
        let has_dependents = changes
            .iter()
            .any(|c| c.action != Action::Deleted && c.entity.has_selectors());
        if !has_dependents && self.idle() {
            return Vec::new();
        }
        // The indexes the batch's selectors ask for.
        if has_dependents {
            let mut wanted: Vec<(String, String)> = Vec::new();
            for c in changes.iter().filter(|c| c.action != Action::Deleted) {
                for r in c.entity.relations() {
                    if let Some(s) = r.selector()
                        && !self
                            .indexes
                            .get(s.entity_type)
                            .is_some_and(|p| p.contains_key(s.property))
                    {
                        wanted.push((s.entity_type.to_owned(), s.property.to_owned()));
                    }
                }
            }
            if !wanted.is_empty() {
                let view = view();
                for (t, p) in wanted {
                    self.declare(&t, &p, &view);
                }
            }
        }
        // Targets first: a dependent and its target in one batch resolve.
        let mut touched = HashSet::new();
        if !self.indexes.is_empty() {
            for c in changes.iter() {
                self.reindex(&c.entity, c.action == Action::Deleted, &mut touched);
            }
        }
        let mut in_batch = HashSet::new();
        for c in changes.iter_mut() {
            let key = c.entity.key();
            if c.action == Action::Deleted {
                self.forget(&key);
                continue;
            }
            if !c.entity.has_selectors() {
                if self.dependents.contains_key(&key) {
                    self.forget(&key);
                }
                continue;
            }
            let raw = c.entity.clone();
            let resolved = self.resolve(&raw);
            self.forget(&key);
            let selectors: Vec<String> = raw
                .relations()
                .iter()
                .filter_map(|r| r.selector().map(|s| s.text()))
                .collect();
            for s in &selectors {
                self.waiting
                    .entry(s.clone())
                    .or_default()
                    .insert(key.clone());
            }
            self.dependents.insert(
                key.clone(),
                Dependent {
                    raw,
                    resolved: resolved.clone(),
                    instance: c.instance.clone(),
                    selectors,
                },
            );
            in_batch.insert(key);
            if !Arc::ptr_eq(&resolved, &c.entity) {
                let mut change = (**c).clone();
                change.entity = resolved;
                *c = Arc::new(change);
            }
        }
        // Dependents elsewhere whose targets this batch created, changed or deleted.
        let mut again: BTreeSet<String> = BTreeSet::new();
        for s in &touched {
            if let Some(keys) = self.waiting.get(s) {
                again.extend(keys.iter().filter(|k| !in_batch.contains(*k)).cloned());
            }
        }
        let mut out = Vec::new();
        for key in again {
            let Some(raw) = self.dependents.get(&key).map(|d| d.raw.clone()) else {
                continue;
            };
            let resolved = self.resolve(&raw);
            if let Some(d) = self.dependents.get_mut(&key)
                && *d.resolved != *resolved
            {
                d.resolved = resolved.clone();
                out.push(Reannounce {
                    entity: resolved,
                    instance: d.instance.clone(),
                });
            }
        }
        out
    }

    /// Takes the dependents of a restored view (which holds what the plugins sent) and
    /// resolves them in it.
    pub(crate) fn restore(&mut self, view: &mut View, instance_of: impl Fn(&Entity) -> Arc<str>) {
        let dependents: Vec<Arc<Entity>> =
            view.all().filter(|e| e.has_selectors()).cloned().collect();
        if dependents.is_empty() {
            return;
        }
        let mut changes: Vec<Arc<Change>> = dependents
            .into_iter()
            .map(|e| {
                Arc::new(Change {
                    seq: 0,
                    action: Action::Created,
                    instance: instance_of(&e),
                    entity: e,
                    sampled_us: 0,
                    initial: false,
                })
            })
            .collect();
        let snapshot = view.clone();
        self.process(&mut changes, || snapshot.clone());
        for c in changes {
            view.insert(c.entity.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synchronizer_plugin_api::Relation;

    fn change(action: Action, e: Entity) -> Arc<Change> {
        Arc::new(Change {
            seq: 0,
            action,
            entity: Arc::new(e),
            instance: Arc::from("i"),
            sampled_us: 0,
            initial: false,
        })
    }

    fn alarm(value: &str) -> Entity {
        let s = Selector::new("vm", "instance_name", value).unwrap();
        Entity::alarm("alarm", value).with_relation(Relation::to_selected("on", &s))
    }

    fn vm(id: &str, name: &str) -> Entity {
        Entity::resource("vm", id)
            .with_name(id)
            .with_properties(serde_json::json!({"instance_name": name}))
    }

    #[test]
    fn resolves_now_later_and_when_the_target_goes() {
        let mut r = Resolver::default();
        let mut view = View::default();
        view.insert(Arc::new(vm("u1", "inst-1")));
        // The target exists: resolved in the change itself.
        let mut batch = vec![change(Action::Created, alarm("inst-1"))];
        assert!(r.process(&mut batch, || view.clone()).is_empty());
        assert_eq!(batch[0].entity.relations()[0].other(), "vm:u1");
        // Not yet: kept as the selector, resolved when the target appears.
        let mut batch = vec![change(Action::Created, alarm("inst-2"))];
        r.process(&mut batch, || view.clone());
        assert_eq!(
            batch[0].entity.relations()[0].other(),
            "vm[instance_name=inst-2]"
        );
        let mut batch = vec![change(Action::Created, vm("u2", "inst-2"))];
        let again = r.process(&mut batch, || view.clone());
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].entity.key(), "alarm:inst-2");
        assert_eq!(again[0].entity.relations()[0].other(), "vm:u2");
        assert_eq!(&*again[0].instance, "i");
        // The same target again: nothing.
        let mut batch = vec![change(Action::Updated, vm("u2", "inst-2").with_state("x"))];
        assert!(r.process(&mut batch, || view.clone()).is_empty());
        // The target goes: back to the selector.
        let mut batch = vec![change(Action::Deleted, vm("u2", "inst-2"))];
        let again = r.process(&mut batch, || view.clone());
        assert_eq!(
            again[0].entity.relations()[0].other(),
            "vm[instance_name=inst-2]"
        );
        // A deleted dependent is forgotten: its target's return announces nothing.
        let mut batch = vec![change(Action::Deleted, alarm("inst-2"))];
        r.process(&mut batch, || view.clone());
        let mut batch = vec![change(Action::Created, vm("u3", "inst-2"))];
        assert!(r.process(&mut batch, || view.clone()).is_empty());
    }

    #[test]
    fn a_target_renamed_moves_its_dependents_and_fields_match() {
        let mut r = Resolver::default();
        let view = View::default();
        let by_name = Entity::alarm("alarm", "n").with_relation(Relation::to_selected(
            "on",
            &Selector::new("vm", "name", "u1").unwrap(),
        ));
        let mut batch = vec![
            change(Action::Created, vm("u1", "inst-1")),
            change(Action::Created, alarm("inst-1")),
            change(Action::Created, by_name),
        ];
        r.process(&mut batch, || view.clone());
        assert_eq!(batch[1].entity.relations()[0].other(), "vm:u1");
        assert_eq!(batch[2].entity.relations()[0].other(), "vm:u1");
        let mut batch = vec![change(Action::Updated, vm("u1", "inst-9"))];
        let again = r.process(&mut batch, || view.clone());
        assert_eq!(again.len(), 1);
        assert_eq!(
            again[0].entity.relations()[0].other(),
            "vm[instance_name=inst-1]"
        );
    }

    #[test]
    fn arrays_and_numbers_are_matched_by_each_value() {
        let props = serde_json::json!({"ips": ["10.0.0.5", 7], "n": 3, "o": {}});
        let e = Entity::resource("h", "x").with_name("x");
        assert_eq!(values_of(&e, &props, "ips"), vec!["10.0.0.5", "7"]);
        assert_eq!(values_of(&e, &props, "n"), vec!["3"]);
        assert!(values_of(&e, &props, "o").is_empty());
        assert_eq!(values_of(&e, &props, "name"), vec!["x"]);
        assert_eq!(values_of(&e, &props, "id"), vec!["x"]);
    }
}
