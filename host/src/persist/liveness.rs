//! Which record of the log is the live one of its key, and which rows are worth
//! cleaning.
//!
//! The log only grows: a commit appends the records of what it changed, so a key's
//! older records become garbage. This index remembers, per key, the row of its latest
//! record (by a 128-bit digest of the key: two seahashes with different seeds, so that
//! two keys of one store never share one in practice; 24 bytes per key in the table),
//! and per row how many of its records are still live. Cleaning copies a row's live
//! records to the end of the log and removes the row; it picks the rows with the fewest
//! live records first, so that little is copied for much reclaimed.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// A key's digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Digest(pub [u64; 2]);

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0]);
    }
}

/// The hasher of tables keyed by [`Digest`]: the digest is a hash already.
#[derive(Default)]
pub(super) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Digest`; anything else hashed here still spreads.
        self.0 = seahash::hash(bytes) ^ self.0.rotate_left(5);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A table keyed by digests.
pub(super) type DigestMap<V> = HashMap<Digest, V, BuildHasherDefault<DigestHasher>>;

/// The digest of an entity's key (its type and id): two seahashes of `type \0 id`.
/// Computed over one buffer (seahash's streaming hasher gives the same values and is
/// several times slower on pieces this small).
pub(super) fn digest(entity_type: &str, id: &str) -> Digest {
    let hash = |bytes: &[u8]| {
        Digest([
            seahash::hash(bytes),
            seahash::hash_seeded(
                bytes,
                0x243F_6A88_85A3_08D3,
                0x1319_8A2E_0370_7344,
                0xA409_3822_299F_31D0,
                0x082E_FA98_EC4E_6C89,
            ),
        ])
    };
    let len = entity_type.len() + 1 + id.len();
    let mut small = [0u8; 192];
    let mut large = Vec::new();
    let buf: &mut [u8] = if len <= small.len() {
        &mut small[..len]
    } else {
        large.resize(len, 0);
        &mut large
    };
    buf[..entity_type.len()].copy_from_slice(entity_type.as_bytes());
    buf[entity_type.len()] = 0;
    buf[entity_type.len() + 1..].copy_from_slice(id.as_bytes());
    hash(buf)
}

/// The top bit of a latest-row entry: the live record is a tombstone.
const TOMB: u64 = 1 << 63;

/// One row's counts.
#[derive(Clone, Copy, Debug, Default)]
struct Row {
    /// Records written in it.
    records: u32,
    /// Of them, the latest of their key.
    live: u32,
    /// Of the live ones, tombstones.
    tombs: u32,
    /// The newest host time among its tombstones (µs): once it is past the retention,
    /// every tombstone of the row is garbage too.
    newest_tomb_us: i64,
}

/// The index of a store's log.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    /// Per key, the row of its latest record (with [`TOMB`] when it is a tombstone).
    latest: DigestMap<u64>,
    rows: BTreeMap<u64, Row>,
    /// Records in all rows.
    records: u64,
    /// The number the next row gets.
    next_row: u64,
}

impl Liveness {
    /// The number the next row gets.
    pub fn next_row(&self) -> u64 {
        self.next_row
    }

    fn add_row(&mut self, row: u64, records: u32) {
        self.rows.entry(row).or_default().records += records;
        self.records += u64::from(records);
        self.next_row = self.next_row.max(row.saturating_add(1));
    }

    /// A new row numbered `row` holds these records (their keys, and for a tombstone the
    /// time it was made), in order: each is now its key's latest.
    pub fn add_row_of(&mut self, row: u64, keys: &[(Digest, Option<i64>)]) {
        self.add_row(row, u32::try_from(keys.len()).unwrap_or(u32::MAX));
        let mut counts = Row::default();
        for &(key, made) in keys {
            let entry = row | if made.is_some() { TOMB } else { 0 };
            match self.latest.insert(key, entry) {
                // Twice in this row: the earlier record is garbage.
                Some(before) if before & !TOMB == row => {
                    counts.live = counts.live.saturating_sub(1);
                    if before & TOMB != 0 {
                        counts.tombs = counts.tombs.saturating_sub(1);
                    }
                }
                Some(before) => self.unlive(before),
                None => {}
            }
            counts.live += 1;
            if let Some(made) = made {
                counts.tombs += 1;
                counts.newest_tomb_us = counts.newest_tomb_us.max(made);
            }
        }
        if let Some(r) = self.rows.get_mut(&row) {
            r.live += counts.live;
            r.tombs += counts.tombs;
            r.newest_tomb_us = r.newest_tomb_us.max(counts.newest_tomb_us);
        }
    }

    fn unlive(&mut self, entry: u64) {
        if let Some(r) = self.rows.get_mut(&(entry & !TOMB)) {
            r.live = r.live.saturating_sub(1);
            if entry & TOMB != 0 {
                r.tombs = r.tombs.saturating_sub(1);
            }
        }
    }

    /// `key` has no live record any more (an expired tombstone left out).
    pub fn forget(&mut self, key: Digest) {
        if let Some(before) = self.latest.remove(&key) {
            self.unlive(before);
        }
    }

    /// Whether the record of `key` in `row` is its latest.
    pub fn is_live(&self, key: Digest, row: u64) -> bool {
        self.latest.get(&key).is_some_and(|e| e & !TOMB == row)
    }

    /// `row` was removed from the log.
    pub fn remove_row(&mut self, row: u64) {
        if let Some(r) = self.rows.remove(&row) {
            self.records -= u64::from(r.records).min(self.records);
        }
    }

    /// Room for `n` more keys.
    pub fn reserve(&mut self, n: usize) {
        self.latest.reserve(n);
    }

    /// Keys with a live record.
    pub fn keys(&self) -> usize {
        self.latest.len()
    }

    /// Rows in the log.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Records that are not their key's latest.
    pub fn garbage(&self) -> u64 {
        self.records.saturating_sub(self.latest.len() as u64)
    }

    /// A row's live records that count for cleaning: without its tombstones once they
    /// all expired (`expired_before`: tombstones made before it are past retention).
    fn worth(r: &Row, expired_before: i64) -> u32 {
        if r.tombs > 0 && r.newest_tomb_us < expired_before {
            r.live - r.tombs
        } else {
            r.live
        }
    }

    /// The rows to clean now, fewest live records first, copying at most `budget`
    /// records: none while the garbage is less than the live records (and less than
    /// `min_garbage`) and the rows are few for what they hold.
    pub fn pick(&self, budget: u64, min_garbage: u64, expired_before: i64) -> Vec<u64> {
        let live = self.latest.len() as u64;
        let expired: u64 = self
            .rows
            .values()
            .filter(|r| r.tombs > 0 && r.newest_tomb_us < expired_before)
            .map(|r| u64::from(r.tombs))
            .sum();
        let garbage = self.garbage() + expired;
        let too_many_rows = self.rows.len() as u64 > live / 256 + 1024;
        if !(garbage > live.max(min_garbage) || too_many_rows) {
            return Vec::new();
        }
        let mut by_worth: Vec<(u32, u64)> = self
            .rows
            .iter()
            .map(|(&n, r)| (Self::worth(r, expired_before), r.records, n))
            .filter(|&(worth, records, _)| worth < records || too_many_rows)
            .map(|(worth, _, n)| (worth, n))
            .collect();
        by_worth.sort_unstable();
        let mut copied = 0u64;
        let mut out = Vec::new();
        for (worth, row) in by_worth {
            if copied + u64::from(worth) > budget && !out.is_empty() {
                break;
            }
            copied += u64::from(worth);
            out.push(row);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_the_streaming_seahash_files_were_written_with() {
        // Files written before the digest was computed over one buffer hold these values.
        let streamed = |entity_type: &str, id: &str| {
            let hash = |mut h: seahash::SeaHasher| {
                h.write(entity_type.as_bytes());
                h.write(&[0]);
                h.write(id.as_bytes());
                h.finish()
            };
            Digest([
                hash(seahash::SeaHasher::new()),
                hash(seahash::SeaHasher::with_seeds(
                    0x243F_6A88_85A3_08D3,
                    0x1319_8A2E_0370_7344,
                    0xA409_3822_299F_31D0,
                    0x082E_FA98_EC4E_6C89,
                )),
            ])
        };
        let long = "x".repeat(500);
        for (t, id) in [
            ("nova.instance", "8c8b3b58-2f36-4c8b-9b8e-5f0f3d7b0a11"),
            ("", ""),
            ("nagios.alarm", "web-01;HTTP"),
            ("t", long.as_str()),
        ] {
            assert_eq!(digest(t, id).0, streamed(t, id).0, "{t}:{id}");
        }
    }

    #[test]
    fn a_newer_record_makes_the_older_one_garbage_and_its_row_worth_cleaning() {
        let mut l = Liveness::default();
        let (a, b) = (digest("t", "a"), digest("t", "b"));
        l.add_row_of(0, &[(a, None), (b, None)]);
        assert_eq!((l.keys(), l.garbage()), (2, 0));
        assert!(l.pick(100, 0, 0).is_empty(), "no garbage, nothing to clean");
        l.add_row_of(1, &[(a, Some(5))]);
        assert!(!l.is_live(a, 0) && l.is_live(a, 1) && l.is_live(b, 0));
        assert_eq!(l.garbage(), 1);
        // Garbage 1 is not more than 2 live keys.
        assert!(l.pick(100, 0, 0).is_empty());
        l.forget(b);
        assert_eq!(l.pick(100, 0, 0), vec![0], "row 0 holds only garbage");
        // Once its tombstone expired, row 1 is garbage as well.
        assert_eq!(l.pick(100, 0, 6), vec![0, 1]);
        l.remove_row(0);
        assert_eq!((l.rows(), l.garbage()), (1, 0));
        // A key twice in one row: one live record.
        l.add_row_of(2, &[(b, None), (b, Some(7))]);
        assert!(l.is_live(b, 2));
        assert_eq!((l.keys(), l.garbage()), (2, 1));
    }
}
