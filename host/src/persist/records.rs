//! The byte layouts of the store: the records of the log (an entity's state, a
//! tombstone) and the changes of a journal row. Every decoder takes bytes read from a
//! file and returns `None` for anything it cannot read; none panics.
//!
//! A log record:
//!
//! ```text
//! entity:    1 u8 | content hash u64 LE | source time i64 LE | owner (u16 LE length,
//!            bytes) | the entity (u32 LE length, the isolation wire encoding, which
//!            begins with its type and id: the record's key)
//! tombstone: 2 u8 | type, id (each u16 LE length, bytes) | source time of the
//!            deletion i64 LE | host time it was made i64 LE (µs since the epoch)
//!            | owner (u16 LE length, bytes)
//! ```
//!
//! A journal row: the last change number it covers (u64 LE) | its instances (u16 LE
//! count, each u16 LE length and bytes) | per change: action u8 | the key's digest
//! (2 × u64 LE; [`super::liveness`]) | instance (u16 LE index) | for a deletion only,
//! the entity as last known (u32 LE length, bytes).

use synchronizer_plugin_api::Entity;

use super::liveness::{Digest, digest};
use crate::change::Action;
use crate::isolation::wire;

const ENTITY: u8 = 1;
const TOMBSTONE: u8 = 2;

fn put_bytes16(v: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len().min(u16::MAX as usize);
    v.extend_from_slice(&(len as u16).to_le_bytes());
    v.extend_from_slice(&bytes[..len]);
}

/// A cursor over bytes read back; every take returns `None` past the end.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes16(&mut self) -> Option<&'a [u8]> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize;
        self.take(n)
    }
    fn bytes32(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n)
    }
    fn str16(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes16()?).ok()
    }
}

/// Appends an entity's record.
pub(super) fn put_entity(out: &mut Vec<u8>, entity: &Entity, updated_us: i64, owner: &str) {
    out.push(ENTITY);
    out.extend_from_slice(&entity.content_hash().to_le_bytes());
    out.extend_from_slice(&updated_us.to_le_bytes());
    put_bytes16(out, owner.as_bytes());
    // The length, filled in once the entity is written in place.
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    wire::encode_entity_into(entity, out);
    let n = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
    out[at..at + 4].copy_from_slice(&n.to_le_bytes());
}

/// Appends a tombstone's record.
pub(super) fn put_tombstone(
    out: &mut Vec<u8>,
    entity_type: &str,
    id: &str,
    deleted_us: i64,
    made_us: i64,
    owner: &str,
) {
    out.push(TOMBSTONE);
    put_bytes16(out, entity_type.as_bytes());
    put_bytes16(out, id.as_bytes());
    out.extend_from_slice(&deleted_us.to_le_bytes());
    out.extend_from_slice(&made_us.to_le_bytes());
    put_bytes16(out, owner.as_bytes());
}

/// What a record holds.
pub(super) enum Held<'a> {
    /// An entity: content hash, source time, owner, its wire encoding.
    Entity {
        content: u64,
        updated_us: i64,
        owner: &'a str,
        body: &'a [u8],
    },
    /// A tombstone: the deletion's source time, the host time it was made, the owner.
    Tombstone {
        deleted_us: i64,
        made_us: i64,
        owner: &'a str,
    },
}

/// One record read back, borrowed from its row.
pub(super) struct Record<'a> {
    /// The type of its entity.
    pub entity_type: &'a str,
    /// The id of its entity.
    pub id: &'a str,
    /// What it holds.
    pub held: Held<'a>,
    /// The whole record, as written (copied as it is when its row is cleaned).
    pub raw: &'a [u8],
}

impl Record<'_> {
    /// Its key's digest.
    pub fn digest(&self) -> Digest {
        digest(self.entity_type, self.id)
    }
}

/// The type and id a wire-encoded entity begins with.
fn wire_key(body: &[u8]) -> Option<(&str, &str)> {
    let mut c = Cursor(body);
    let mut wire_str = || {
        let n = u32::from_le_bytes(c.take(4)?.try_into().ok()?) as usize;
        std::str::from_utf8(c.take(n)?).ok()
    };
    Some((wire_str()?, wire_str()?))
}

/// The records of a row, in order; `Err(())` at the first one that cannot be read.
pub(super) fn records(row: &[u8]) -> impl Iterator<Item = Result<Record<'_>, ()>> {
    let mut rest = row;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let start = rest;
        let mut c = Cursor(rest);
        let record = (|| match c.u8()? {
            ENTITY => {
                let (content, updated_us, owner, body) =
                    (c.u64()?, c.i64()?, c.str16()?, c.bytes32()?);
                let (entity_type, id) = wire_key(body)?;
                Some((
                    entity_type,
                    id,
                    Held::Entity {
                        content,
                        updated_us,
                        owner,
                        body,
                    },
                ))
            }
            TOMBSTONE => {
                let (entity_type, id) = (c.str16()?, c.str16()?);
                let held = Held::Tombstone {
                    deleted_us: c.i64()?,
                    made_us: c.i64()?,
                    owner: c.str16()?,
                };
                Some((entity_type, id, held))
            }
            _ => None,
        })();
        match record {
            Some((entity_type, id, held)) => {
                let used = start.len() - c.0.len();
                rest = c.0;
                Some(Ok(Record {
                    entity_type,
                    id,
                    held,
                    raw: &start[..used],
                }))
            }
            None => {
                rest = &[];
                Some(Err(()))
            }
        }
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

/// A journal row being built: its instances' names once each, then per change its
/// action, its key's digest (its entity is the key's latest record in the log) and
/// instance, and for a deletion the entity as last known.
#[derive(Default)]
pub(super) struct JournalRow {
    instances: Vec<String>,
    row: Vec<u8>,
}

impl JournalRow {
    /// A row whose last change number is `last`, for changes of `instances` (each named
    /// once), with room for `changes` changes that are not deletions. The head is
    /// written first, so that the changes are never copied: at a million changes the
    /// row is 20 MB.
    pub fn new(last: u64, instances: Vec<String>, changes: usize) -> JournalRow {
        let names: usize = instances.iter().map(|i| 2 + i.len()).sum();
        let mut row = Vec::with_capacity(10 + names + changes * CHANGE_BYTES);
        row.extend_from_slice(&last.to_le_bytes());
        row.extend_from_slice(
            &u16::try_from(instances.len())
                .unwrap_or(u16::MAX)
                .to_le_bytes(),
        );
        for i in &instances {
            put_bytes16(&mut row, i.as_bytes());
        }
        JournalRow { instances, row }
    }

    /// Appends one change. `instance` must be one of the row's instances (else the
    /// change names the first).
    pub fn push(&mut self, action: Action, key: Digest, instance: &str, entity: &Entity) {
        let at = self
            .instances
            .iter()
            .position(|i| i == instance)
            .unwrap_or(0);
        self.row.push(action_to_u8(action));
        self.row.extend_from_slice(&key.0[0].to_le_bytes());
        self.row.extend_from_slice(&key.0[1].to_le_bytes());
        self.row
            .extend_from_slice(&u16::try_from(at).unwrap_or(u16::MAX).to_le_bytes());
        if action == Action::Deleted {
            let at = self.row.len();
            self.row.extend_from_slice(&[0; 4]);
            wire::encode_entity_into(entity, &mut self.row);
            let n = u32::try_from(self.row.len() - at - 4).unwrap_or(u32::MAX);
            self.row[at..at + 4].copy_from_slice(&n.to_le_bytes());
        }
    }

    /// The row: the last change number it covers (u64 LE), the instances (u16 LE count,
    /// each u16 LE length and bytes), the changes.
    pub fn finish(self) -> Vec<u8> {
        self.row
    }
}

/// The bytes of a change that is not a deletion: action, digest, instance.
const CHANGE_BYTES: usize = 1 + 16 + 2;

/// One change of a journal row read back: action, key digest, instance, a deletion's
/// entity.
pub(super) type JournalChange = (Action, Digest, String, Option<Entity>);

/// The changes of a journal row (all of it, head included); `None` if one cannot be
/// read.
pub(super) fn changes(v: &[u8]) -> Option<Vec<JournalChange>> {
    let mut c = Cursor(v);
    c.u64()?;
    let n = u16::from_le_bytes(c.take(2)?.try_into().ok()?);
    let instances: Vec<&str> = (0..n).map(|_| c.str16()).collect::<Option<_>>()?;
    let mut out = Vec::new();
    while !c.0.is_empty() {
        let action = action_from_u8(c.u8()?)?;
        let key = Digest([c.u64()?, c.u64()?]);
        let at = u16::from_le_bytes(c.take(2)?.try_into().ok()?);
        let instance = (*instances.get(usize::from(at))?).to_owned();
        let entity = if action == Action::Deleted {
            Some(wire::decode_entity(c.bytes32()?).ok()?)
        } else {
            None
        };
        out.push((action, key, instance, entity));
    }
    Some(out)
}

/// The last change number a journal row covers (its head).
pub(super) fn journal_last(v: &[u8]) -> Option<u64> {
    Cursor(v).u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written_and_damage_stops_the_reading() {
        let e = Entity::resource("nova.instance", "a").with_state("ACTIVE");
        let mut row = Vec::new();
        put_entity(&mut row, &e, 7, "nova");
        put_tombstone(&mut row, "nova.instance", "b", 8, 9, "nova");
        let got: Vec<_> = records(&row).collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].entity_type, got[0].id), ("nova.instance", "a"));
        assert_eq!(got[0].digest(), digest("nova.instance", "a"));
        assert!(matches!(
            got[0].held,
            Held::Entity {
                updated_us: 7,
                owner: "nova",
                ..
            }
        ));
        assert_eq!((got[1].entity_type, got[1].id), ("nova.instance", "b"));
        assert!(matches!(
            got[1].held,
            Held::Tombstone {
                deleted_us: 8,
                made_us: 9,
                owner: "nova"
            }
        ));
        assert_eq!(got[0].raw.len() + got[1].raw.len(), row.len());
        // Every truncation of the row reads what is whole, then one error, no panic.
        for cut in 1..row.len() {
            let read: Vec<_> = records(&row[..cut]).collect();
            if cut != got[0].raw.len() {
                assert!(read.last().is_some_and(|r| r.is_err()), "cut {cut}");
            }
        }
    }

    #[test]
    fn a_journal_row_reads_back_as_written() {
        let gone = Entity::resource("t", "b").with_state("x");
        let mut row = JournalRow::new(42, vec!["i1".into(), "i2".into()], 3);
        row.push(
            Action::Created,
            digest("t", "a"),
            "i1",
            &Entity::resource("t", "a"),
        );
        row.push(Action::Deleted, digest("t", "b"), "i2", &gone);
        row.push(
            Action::Updated,
            digest("t", "c"),
            "i1",
            &Entity::resource("t", "c"),
        );
        let row = row.finish();
        assert_eq!(journal_last(&row), Some(42));
        let changes = changes(&row).unwrap();
        assert_eq!(changes.len(), 3);
        assert_eq!(
            (changes[0].0, changes[0].1, changes[0].2.as_str()),
            (Action::Created, digest("t", "a"), "i1")
        );
        assert_eq!(changes[1].3.as_ref(), Some(&gone));
        assert_eq!(changes[2].2, "i1");
        for cut in 0..row.len() {
            assert!(changes_or_none(&row[..cut]), "cut {cut}");
        }
    }

    /// A truncated row reads as `None` or as fewer changes, never panics.
    fn changes_or_none(v: &[u8]) -> bool {
        changes(v).is_none_or(|c| c.len() < 3)
    }
}
