//! The current view: every entity as the host last announced it, per type.
//!
//! The maps are persistent (structurally shared), so a copy of the whole view costs a
//! few pointer copies: a reader (`GET /v1/entities`, get-all, a subscriber's initial
//! snapshot or a lagged one's resync) takes a copy under the hub's lock and does the
//! rest (collecting, sorting) on its own time, while the writer goes on changing the
//! original. A copy is consistent with the change stream: it holds exactly the changes
//! announced before it was taken.

use std::collections::BTreeMap;
use std::hash::BuildHasherDefault;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use imbl::GenericHashMap;
use imbl::shared_ptr::DefaultSharedPtr;
use synchronizer_plugin_api::Entity;

use crate::baseline::IdentityHasher;
use crate::change::{Action, Change};
use crate::hub::TypeFilter;

/// The entities of one type, by key hash.
type TypeMap =
    GenericHashMap<u64, Arc<Entity>, BuildHasherDefault<IdentityHasher>, DefaultSharedPtr>;

/// The current view; [`Clone`] is cheap and gives an independent copy.
#[derive(Clone, Default)]
pub struct View {
    types: BTreeMap<String, TypeMap>,
}

impl View {
    /// Applies one announced change.
    pub(crate) fn apply(&mut self, change: &Change) {
        match change.action {
            Action::Deleted => self.remove(change.entity.entity_type(), change.entity.key_hash()),
            Action::Created | Action::Updated => self.insert(change.entity.clone()),
        }
    }

    /// Puts an entity in (a restored one, or a change).
    pub(crate) fn insert(&mut self, entity: Arc<Entity>) {
        let key = entity.key_hash();
        match self.types.get_mut(entity.entity_type()) {
            Some(map) => {
                map.insert(key, entity);
            }
            None => {
                let mut map = TypeMap::default();
                let entity_type = entity.entity_type().to_owned();
                map.insert(key, entity);
                self.types.insert(entity_type, map);
            }
        }
    }

    fn remove(&mut self, entity_type: &str, key_hash: u64) {
        if let Some(map) = self.types.get_mut(entity_type) {
            map.remove(&key_hash);
        }
    }

    /// The entity of `entity_type` whose key hashes to `key_hash`.
    pub fn get(&self, entity_type: &str, key_hash: u64) -> Option<&Arc<Entity>> {
        self.types.get(entity_type)?.get(&key_hash)
    }

    /// The entities of one type, in no order.
    pub(crate) fn of_type(&self, entity_type: &str) -> impl Iterator<Item = &Arc<Entity>> {
        self.types
            .get(entity_type)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Every entity, in no order.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<Entity>> {
        self.types.values().flat_map(|m| m.values())
    }

    /// How many entities of each type, in type order (types emptied by deletions
    /// included, with 0).
    pub fn counts(&self) -> Vec<(String, usize)> {
        self.types
            .iter()
            .map(|(t, m)| (t.clone(), m.len()))
            .collect()
    }

    /// The entities of the types `filter` matches, sorted by type and id.
    pub fn entities(&self, filter: &TypeFilter) -> Vec<Arc<Entity>> {
        let mut out = Vec::new();
        for (entity_type, map) in &self.types {
            if filter.matches(entity_type) {
                let at = out.len();
                out.extend(map.values().cloned());
                out[at..].sort_unstable_by(|a: &Arc<Entity>, b| a.id().cmp(b.id()));
            }
        }
        out
    }
}

/// The entities of a snapshot event: a copy of the view, collected and sorted by type and
/// id by whoever reads it first (the subscriber, not the hub). Dereferences to the
/// entities.
#[derive(Clone)]
pub struct Snapshot {
    source: Option<Arc<(View, TypeFilter)>>,
    entities: Arc<OnceLock<Vec<Arc<Entity>>>>,
}

impl Snapshot {
    /// The entities of the types `filter` matches in `view`, collected when first read.
    pub(crate) fn of(view: View, filter: TypeFilter) -> Snapshot {
        Snapshot {
            source: Some(Arc::new((view, filter))),
            entities: Arc::default(),
        }
    }
}

impl From<Vec<Arc<Entity>>> for Snapshot {
    fn from(entities: Vec<Arc<Entity>>) -> Snapshot {
        Snapshot {
            source: None,
            entities: Arc::new(OnceLock::from(entities)),
        }
    }
}

impl Deref for Snapshot {
    type Target = [Arc<Entity>];

    fn deref(&self) -> &[Arc<Entity>] {
        self.entities.get_or_init(|| match &self.source {
            Some(source) => source.0.entities(&source.1),
            None => Vec::new(),
        })
    }
}

impl<'a> IntoIterator for &'a Snapshot {
    type Item = &'a Arc<Entity>;
    type IntoIter = std::slice::Iter<'a, Arc<Entity>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("entities", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: u64, action: Action, t: &str, id: &str, state: &str) -> Change {
        Change {
            seq,
            action,
            entity: Arc::new(Entity::resource(t, id).with_state(state)),
            instance: Arc::from("i"),
            sampled_us: 0,
            initial: false,
        }
    }

    #[test]
    fn a_copy_keeps_what_was_announced_before_it_while_the_original_moves_on() {
        let mut view = View::default();
        view.apply(&change(1, Action::Created, "b", "2", "x"));
        view.apply(&change(2, Action::Created, "a", "9", "x"));
        view.apply(&change(3, Action::Created, "b", "1", "x"));
        let copy = view.clone();
        let snapshot = Snapshot::of(view.clone(), TypeFilter::new::<&str>(&[]));
        view.apply(&change(4, Action::Deleted, "b", "2", "x"));
        view.apply(&change(5, Action::Updated, "a", "9", "y"));
        view.apply(&change(6, Action::Created, "c", "1", "x"));
        let keys = |v: &[Arc<Entity>]| {
            v.iter()
                .map(|e| (e.key(), e.state().unwrap_or("").to_owned()))
                .collect::<Vec<_>>()
        };
        let all = TypeFilter::new::<&str>(&[]);
        let before = vec![
            ("a:9".to_owned(), "x".to_owned()),
            ("b:1".to_owned(), "x".to_owned()),
            ("b:2".to_owned(), "x".to_owned()),
        ];
        assert_eq!(keys(&copy.entities(&all)), before);
        assert_eq!(keys(&snapshot), before);
        assert_eq!(
            keys(&view.entities(&all)),
            vec![
                ("a:9".to_owned(), "y".to_owned()),
                ("b:1".to_owned(), "x".to_owned()),
                ("c:1".to_owned(), "x".to_owned()),
            ]
        );
        assert_eq!(keys(&view.entities(&TypeFilter::new(&["b"]))).len(), 1);
        assert_eq!(
            view.counts(),
            vec![("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]
        );
    }
}
