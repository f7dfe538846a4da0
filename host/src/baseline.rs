//! The baseline store: what the host last reported for every entity, kept small, and the
//! rules that turn snapshots and pushed changes into created / updated / deleted.
//!
//! Per entity the store keeps a 24-byte slot in a table of its type, indexed by the 64-bit
//! seahash of its key: the content hash, the source timestamp, the owning plugin instance
//! with the generation of its last snapshot that saw the entity, and a reference into a
//! key arena. The arena keeps the native id compactly (16 bytes for a UUID), because a
//! deletion must name what it deletes. Deleted keys leave a tombstone for a configurable
//! while, so that a late pushed message cannot bring them back.
//!
//! # The ordering rule: which clock orders what
//!
//! Two clocks meet here, the source's and the host's, and they are never compared with
//! each other, so skew between them (an hour either way) changes nothing:
//!
//! - **A complete snapshot describes the source as of the moment it was taken** (the host
//!   time its call started). Nothing it says is refused as "stale" because a timestamp
//!   inside it is older than what the baseline holds: a Nagios passive result checked
//!   two minutes ago is still the current state. The only thing that beats a snapshot is
//!   what happened after its call started, on the host's clock: a push applied to the key
//!   while the call ran (the key is then kept, not overwritten, and not swept), or a
//!   deletion applied while it ran (the key is not re-created). A snapshot taken after a
//!   deletion re-creates the entity.
//! - **Source timestamps order pushed messages from the same source against each other
//!   and against what the baseline holds**: a pushed upsert or deletion older than the
//!   stored state is dropped, an identical repeat is dropped. A message without a source
//!   timestamp cannot be ordered and is applied as it arrives.
//! - **Tombstones protect against late pushed messages only**: a deletion (pushed, or a
//!   sweep) keeps the source time of the deletion — for a sweep, the last source time
//!   known for the entity — and a pushed upsert not newer than it does not re-create the
//!   key. A deletion also records the host time it was applied, for the snapshot rule.
//! - **Ownership**: a complete snapshot from instance *I* for type *T* deletes every key
//!   of *T* owned by *I* that it did not see. A pushed change never takes ownership from
//!   the collector that lists the entity; a key the baseline does not know is owned by
//!   the collector of its type when exactly one instance collects that type (so that its
//!   next snapshot decides whether it exists), else by its tombstone's owner, else by the
//!   pusher.
//! - An incomplete snapshot deletes nothing.
//!
//! Two different keys whose 64-bit hashes collide would be treated as one; with seahash
//! that takes about 2^32 keys in one type to become likely.

use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hasher};

use hashbrown::HashMap;

/// A hasher for keys that are already 64-bit hashes.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) type HashIndex<V> = HashMap<u64, V, BuildHasherDefault<IdentityHasher>>;

/// What happened to an entity, as the baseline judged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// A key the baseline did not know.
    Created,
    /// A known key whose content changed.
    Updated,
    /// A known key that is gone.
    Deleted,
}

/// A plugin instance's index in the host, as the baseline records owners.
pub type Owner = u16;

#[derive(Clone, Copy, Debug)]
struct Slot {
    content: u64,
    updated_us: i64,
    key_ref: u32,
    owner: Owner,
    generation: u16,
}

/// The source timestamp of an entity whose source gives none: it orders before every
/// real time, and a message without a time is never refused for its time.
pub const UNTIMED: i64 = i64::MIN;

#[derive(Clone, Copy, Debug)]
struct Tombstone {
    /// Source time of the deletion: a pushed deletion's own time, or for a sweep the last
    /// source time known for the entity ([`UNTIMED`] when unknown).
    deleted_us: i64,
    /// Host time the deletion was applied.
    made_us: i64,
    /// Who owned the entity.
    owner: Owner,
}

/// The native ids of one table, packed: a tag byte, then 16 bytes for a canonical
/// lower-case UUID or a length byte pair and the raw bytes otherwise.
#[derive(Default)]
struct KeyArena {
    bytes: Vec<u8>,
    garbage: usize,
}

const TAG_UUID: u8 = 0;
const TAG_RAW: u8 = 1;

impl KeyArena {
    fn push(&mut self, id: &str) -> u32 {
        let at = self.bytes.len();
        if let Some(uuid) = parse_uuid(id) {
            self.bytes.push(TAG_UUID);
            self.bytes.extend_from_slice(&uuid);
        } else {
            let len = id.len().min(u16::MAX as usize);
            self.bytes.push(TAG_RAW);
            self.bytes.extend_from_slice(&(len as u16).to_le_bytes());
            self.bytes.extend_from_slice(&id.as_bytes()[..len]);
        }
        // Past 4 GiB of ids in one type the reference would wrap; compaction keeps the
        // arena near the live size, and no real inventory comes close.
        u32::try_from(at).unwrap_or(u32::MAX)
    }

    fn len_at(&self, at: u32) -> usize {
        let at = at as usize;
        match self.bytes.get(at) {
            Some(&TAG_UUID) => 17,
            Some(_) => {
                let len = u16::from_le_bytes([self.bytes[at + 1], self.bytes[at + 2]]);
                3 + len as usize
            }
            None => 0,
        }
    }

    fn get(&self, at: u32) -> String {
        let at = at as usize;
        match self.bytes.get(at) {
            Some(&TAG_UUID) => format_uuid(&self.bytes[at + 1..at + 17]),
            Some(_) => {
                let len = u16::from_le_bytes([self.bytes[at + 1], self.bytes[at + 2]]) as usize;
                String::from_utf8_lossy(&self.bytes[at + 3..at + 3 + len]).into_owned()
            }
            None => String::new(),
        }
    }

    fn release(&mut self, at: u32) {
        self.garbage += self.len_at(at);
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Parses a canonical lower-case hyphenated UUID; anything else is kept raw, so that the
/// id comes back byte for byte.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < 36 {
        if matches!(i, 8 | 13 | 18 | 23) {
            i += 1;
            continue;
        }
        out[n] = (hex(b[i])? << 4) | hex(b[i + 1])?;
        n += 1;
        i += 2;
    }
    Some(out)
}

fn format_uuid(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(byte >> 4) as usize] as char);
        s.push(HEX[(byte & 15) as usize] as char);
    }
    s
}

/// The baseline of one entity type.
#[derive(Default)]
struct Table {
    slots: HashIndex<Slot>,
    arena: KeyArena,
    tombstones: HashIndex<Tombstone>,
    /// Tombstones in the order they were made: key, host time made, host time it expires.
    expiry: VecDeque<(u64, i64, i64)>,
}

impl Table {
    /// One entity of a snapshot from `owner` whose call started at host time
    /// `started_us`, in `generation`.
    fn observe_snapshot<'a>(
        &mut self,
        obs: Observation<'_>,
        owner: Owner,
        generation: u16,
        started_us: i64,
        id: impl FnOnce() -> &'a str,
    ) -> Option<Verdict> {
        match self.slots.get_mut(&obs.key_hash) {
            Some(slot) => {
                if slot.owner == owner && slot.generation == generation {
                    // Pushed while the call ran (or listed twice): what is held is newer.
                    return None;
                }
                slot.owner = owner;
                slot.generation = generation;
                if obs.content_hash == slot.content {
                    slot.updated_us = obs.updated_us;
                    return None;
                }
                slot.content = obs.content_hash;
                slot.updated_us = obs.updated_us;
                Some(Verdict::Updated)
            }
            None => {
                if let Some(t) = self.tombstones.get(&obs.key_hash) {
                    if t.made_us >= started_us {
                        // Deleted while the call ran: the snapshot predates the deletion.
                        return None;
                    }
                    self.tombstones.remove(&obs.key_hash);
                }
                self.insert(obs, id(), owner, generation);
                Some(Verdict::Created)
            }
        }
    }

    /// A pushed upsert. `owner_of_new` owns the key if it is new and has no tombstone;
    /// `generation_of(owner)` is that owner's current snapshot generation.
    fn observe_push(
        &mut self,
        obs: Observation<'_>,
        owner_of_new: Owner,
        generation_of: impl Fn(Owner) -> u16,
    ) -> Option<Verdict> {
        match self.slots.get_mut(&obs.key_hash) {
            Some(slot) => {
                if obs.updated_us != UNTIMED && obs.updated_us < slot.updated_us {
                    return None;
                }
                // Touched now: a snapshot of the owner in flight neither overwrites nor
                // sweeps it.
                slot.generation = generation_of(slot.owner);
                if obs.content_hash == slot.content {
                    return None;
                }
                slot.content = obs.content_hash;
                // An untimed update is at least as new as what was known: keep that time.
                if obs.updated_us != UNTIMED {
                    slot.updated_us = obs.updated_us;
                }
                Some(Verdict::Updated)
            }
            None => {
                let owner = match self.tombstones.get(&obs.key_hash) {
                    Some(t) if obs.updated_us != UNTIMED && obs.updated_us <= t.deleted_us => {
                        return None;
                    }
                    Some(t) => t.owner,
                    None => owner_of_new,
                };
                self.tombstones.remove(&obs.key_hash);
                self.insert(obs, obs.id, owner, generation_of(owner));
                Some(Verdict::Created)
            }
        }
    }

    fn insert(&mut self, obs: Observation<'_>, id: &str, owner: Owner, generation: u16) {
        let key_ref = self.arena.push(id);
        self.slots.insert(
            obs.key_hash,
            Slot {
                content: obs.content_hash,
                updated_us: obs.updated_us,
                key_ref,
                owner,
                generation,
            },
        );
    }

    fn bury(&mut self, key_hash: u64, tomb: Tombstone, ttl_us: i64) {
        self.tombstones.insert(key_hash, tomb);
        self.expiry
            .push_back((key_hash, tomb.made_us, tomb.made_us.saturating_add(ttl_us)));
    }

    fn compact_if_needed(&mut self) {
        if self.arena.garbage < 4096 || self.arena.garbage * 2 < self.arena.bytes.len() {
            return;
        }
        let mut fresh = KeyArena {
            bytes: Vec::with_capacity(self.arena.bytes.len() - self.arena.garbage),
            garbage: 0,
        };
        for slot in self.slots.values_mut() {
            let at = slot.key_ref as usize;
            let len = self.arena.len_at(slot.key_ref);
            let new_at = fresh.bytes.len();
            fresh
                .bytes
                .extend_from_slice(&self.arena.bytes[at..at + len]);
            slot.key_ref = u32::try_from(new_at).unwrap_or(u32::MAX);
        }
        self.arena = fresh;
    }
}

/// One entity's content as the baseline sees it.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// The native id.
    pub id: &'a str,
    /// Hash of the key (`<type>:<id>`).
    pub key_hash: u64,
    /// Hash of the content.
    pub content_hash: u64,
    /// Source update timestamp, [`UNTIMED`] where the source gives none.
    pub updated_us: i64,
}

/// One entity reduced to what the baseline compares, with its place in the snapshot.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hashed {
    /// Hash of the key.
    pub key_hash: u64,
    /// Hash of the content.
    pub content_hash: u64,
    /// Source update timestamp, or [`UNTIMED`].
    pub updated_us: i64,
    /// Where the entity is in its snapshot.
    pub index: u32,
}

/// Hashes every entity of a snapshot (key and content) and groups them by type. Large
/// snapshots are hashed on several threads: reading a million entities' scattered strings
/// is bound by memory latency, which more cores hide. The threads write into one vector,
/// so that a snapshot of one type (the common case) is never copied.
pub fn hash_snapshot(entities: &[synchronizer_plugin_api::Entity]) -> Vec<(String, Vec<Hashed>)> {
    /// The types a chunk saw: `tags[i]` indexes `names` for its i-th entity, and stays
    /// empty while the chunk saw one type only.
    #[derive(Default)]
    struct Types {
        names: Vec<String>,
        tags: Vec<u32>,
        len: usize,
    }
    fn run(
        entities: &[synchronizer_plugin_api::Entity],
        first: usize,
        out: &mut [Hashed],
    ) -> Types {
        let mut types = Types {
            len: entities.len(),
            ..Types::default()
        };
        let mut current = 0usize;
        for (i, (e, slot)) in entities.iter().zip(out.iter_mut()).enumerate() {
            let t = e.entity_type();
            if types.names.get(current).is_none_or(|n| n != t) {
                current = match types.names.iter().position(|n| n == t) {
                    Some(p) => p,
                    None => {
                        types.names.push(t.to_owned());
                        types.names.len() - 1
                    }
                };
                if types.names.len() == 2 && types.tags.is_empty() {
                    types.tags = vec![0; i];
                    types.tags.reserve(entities.len() - i);
                }
            }
            if types.names.len() > 1 {
                types.tags.push(u32::try_from(current).unwrap_or(u32::MAX));
            }
            *slot = Hashed {
                key_hash: e.key_hash(),
                content_hash: e.content_hash(),
                updated_us: e.source_updated_micros().unwrap_or(UNTIMED),
                index: u32::try_from(first + i).unwrap_or(u32::MAX),
            };
        }
        types
    }
    let mut out = vec![Hashed::default(); entities.len()];
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    let parts: Vec<Types> = if entities.len() < 32_768 || threads < 2 {
        vec![run(entities, 0, &mut out)]
    } else {
        let chunk = entities.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = entities
                .chunks(chunk)
                .zip(out.chunks_mut(chunk))
                .enumerate()
                .map(|(n, (part, out))| scope.spawn(move || run(part, n * chunk, out)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    let mut names: Vec<String> = Vec::new();
    for part in &parts {
        for n in &part.names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    match names.len() {
        0 => return Vec::new(),
        1 => return vec![(names.swap_remove(0), out)],
        _ => {}
    }
    // Several types: each entity goes to its type's vector, in snapshot order.
    let mut groups: Vec<(String, Vec<Hashed>)> =
        names.into_iter().map(|n| (n, Vec::new())).collect();
    let mut hashed = out.into_iter();
    for part in &parts {
        let global: Vec<usize> = part
            .names
            .iter()
            .map(|n| groups.iter().position(|(g, _)| g == n).unwrap_or(0))
            .collect();
        if part.tags.is_empty() {
            groups[global[0]].1.extend(hashed.by_ref().take(part.len));
        } else {
            for (&tag, h) in part.tags.iter().zip(hashed.by_ref()) {
                let g = global.get(tag as usize).copied().unwrap_or(0);
                groups[g].1.push(h);
            }
        }
    }
    groups
}

/// Orders a batch by where its keys sit in a hash table of `buckets` buckets (a power of
/// two; the table keeps a key at the low bits of its hash), so that the lookups that
/// follow walk the table in memory order instead of at random: at a million entities
/// that is most of the cost. A radix sort on the top 22 bits of the bucket index (all of
/// it up to 4M buckets; past that each run spans a few buckets): one pass in place on the
/// top 8 bits into 256 groups (an American flag sort), then each group, small enough to
/// stay in the cache, sorted on the rest in two passes through a scratch buffer. Few
/// destinations per pass keep the moves within the TLB, and nothing as large as the
/// batch is allocated: fresh pages cost more than the sort.
fn sort_by_bucket(batch: &mut [Hashed], buckets: usize) {
    /// Where each of the `bits`-bit digits at `shift` starts in `items`, and after it the
    /// end.
    fn starts(items: &[Hashed], shift: u32, bits: u32, at: &mut Vec<usize>) {
        at.clear();
        at.resize((1 << bits) + 1, 0);
        for h in items {
            at[digit(h, shift, bits) + 1] += 1;
        }
        for i in 1..at.len() {
            at[i] += at[i - 1];
        }
    }
    fn digit(h: &Hashed, shift: u32, bits: u32) -> usize {
        ((h.key_hash >> shift) & ((1 << bits) - 1)) as usize
    }
    /// An LSD pass: `src` into `dst` by the digit at `shift`.
    fn pass(src: &[Hashed], dst: &mut [Hashed], shift: u32, bits: u32, at: &mut Vec<usize>) {
        starts(src, shift, bits, at);
        for h in src {
            let d = digit(h, shift, bits);
            dst[at[d]] = *h;
            at[d] += 1;
        }
    }
    let bucket_bits = buckets.max(1).trailing_zeros();
    // A table this small stays in the cache whatever the order.
    if batch.len() < 4096 || bucket_bits < 14 {
        return;
    }
    let bits = bucket_bits.min(22);
    let base = bucket_bits - bits;
    let top_bits = 8;
    let rest = bits - top_bits;
    let top_shift = base + rest;
    let mut at = Vec::new();
    starts(batch, top_shift, top_bits, &mut at);
    let bounds = at.clone();
    // The flag pass: carry each element to its group's next free place, taking the one
    // there along, until an element of the group being filled comes back.
    let mut next = at;
    for g in 0..(1 << top_bits) {
        while next[g] < bounds[g + 1] {
            let mut item = batch[next[g]];
            let mut home = digit(&item, top_shift, top_bits);
            while home != g {
                std::mem::swap(&mut item, &mut batch[next[home]]);
                next[home] += 1;
                home = digit(&item, top_shift, top_bits);
            }
            batch[next[g]] = item;
            next[g] += 1;
        }
    }
    let (low_bits, mid_bits) = (rest / 2, rest - rest / 2);
    let mut scratch = Vec::new();
    let mut at = Vec::new();
    for g in bounds.windows(2) {
        let group = &mut batch[g[0]..g[1]];
        scratch.clear();
        scratch.resize(group.len(), Hashed::default());
        pass(group, &mut scratch, base, low_bits, &mut at);
        pass(&scratch, group, base + low_bits, mid_bits, &mut at);
    }
}

/// How many buckets a hash table that holds `capacity` entries has (hashbrown keeps
/// seven eighths of a power of two).
fn buckets_for(capacity: usize) -> usize {
    (capacity / 7 * 8).next_power_of_two()
}

/// A deletion the baseline decided on: which key, so that the caller can name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    /// The native id of the deleted entity.
    pub id: String,
    /// Hash of its key.
    pub key_hash: u64,
}

/// The snapshot generation of each owner. Shared (a handle is cheap to clone), so that
/// a snapshot's start can be marked while the baseline is busy judging another one.
#[derive(Clone, Default)]
pub struct Generations(std::sync::Arc<std::sync::Mutex<Vec<u16>>>);

impl Generations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u16>> {
        // Plain numbers: a panic elsewhere cannot leave them half-written.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a snapshot of `owner`: returns the generation that marks what it sees.
    pub fn begin(&self, owner: Owner) -> u16 {
        let mut g = self.lock();
        let i = owner as usize;
        if g.len() <= i {
            g.resize(i + 1, 0);
        }
        g[i] = g[i].wrapping_add(1);
        g[i]
    }

    /// The generation `owner`'s snapshots are in now (0 before its first).
    pub fn get(&self, owner: Owner) -> u16 {
        self.lock().get(owner as usize).copied().unwrap_or(0)
    }
}

/// The shared baseline: one table per entity type.
#[derive(Default)]
pub struct Baseline {
    tables: std::collections::HashMap<String, Table>,
    generations: Generations,
    tombstone_ttl_us: i64,
}

impl Baseline {
    /// An empty baseline keeping tombstones for `tombstone_ttl`.
    pub fn new(tombstone_ttl: std::time::Duration) -> Self {
        Baseline {
            tables: Default::default(),
            generations: Generations::default(),
            tombstone_ttl_us: i64::try_from(tombstone_ttl.as_micros()).unwrap_or(i64::MAX),
        }
    }

    fn table(&mut self, entity_type: &str) -> &mut Table {
        if !self.tables.contains_key(entity_type) {
            self.tables.insert(entity_type.to_owned(), Table::default());
        }
        self.tables
            .get_mut(entity_type)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Starts a snapshot of `owner`: returns the generation that marks what it sees.
    pub fn begin_snapshot(&mut self, owner: Owner) -> u16 {
        self.generations.begin(owner)
    }

    /// The generations, to mark snapshot starts without holding the baseline.
    pub fn generations(&self) -> Generations {
        self.generations.clone()
    }

    /// The generation `owner`'s snapshots are in now (0 before its first).
    pub fn generation(&self, owner: Owner) -> u16 {
        self.generations.get(owner)
    }

    /// Judges one entity of a snapshot from `owner` in `generation`, whose call started at
    /// host time `started_us`. Returns `Some(Created | Updated)` or `None` (unchanged, or
    /// superseded by what happened after the call started).
    pub fn observe(
        &mut self,
        entity_type: &str,
        obs: Observation<'_>,
        owner: Owner,
        generation: u16,
        started_us: i64,
    ) -> Option<Verdict> {
        self.table(entity_type)
            .observe_snapshot(obs, owner, generation, started_us, || obs.id)
    }

    /// Judges many entities of one type at once, as [`Baseline::observe`] does each.
    /// `id(index)` gives the native id of `batch[i].index` (needed only for new keys).
    /// The batch is reordered so that the table is walked in memory order instead of at
    /// random: at a million entities that is most of the cost. Verdicts come back in
    /// the order of `index`.
    pub fn observe_many<'a>(
        &mut self,
        entity_type: &str,
        batch: &mut [Hashed],
        owner: Owner,
        generation: u16,
        started_us: i64,
        id: impl Fn(u32) -> &'a str,
    ) -> Vec<(u32, Verdict)> {
        let table = self.table(entity_type);
        table
            .slots
            .reserve(batch.len().saturating_sub(table.slots.len()));
        sort_by_bucket(batch, buckets_for(table.slots.capacity()));
        let mut out = Vec::new();
        for h in batch.iter() {
            let obs = Observation {
                id: "",
                key_hash: h.key_hash,
                content_hash: h.content_hash,
                updated_us: h.updated_us,
            };
            if let Some(v) =
                table.observe_snapshot(obs, owner, generation, started_us, || id(h.index))
            {
                out.push((h.index, v));
            }
        }
        out.sort_unstable_by_key(|(i, _)| *i);
        out
    }

    /// Ends a complete snapshot of `entity_type` from `owner` in `generation`: every key
    /// it owns that the snapshot did not see, and that no push touched while the call
    /// ran, is deleted.
    pub fn sweep(
        &mut self,
        entity_type: &str,
        owner: Owner,
        generation: u16,
        now_us: i64,
    ) -> Vec<Deletion> {
        let ttl = self.tombstone_ttl_us;
        let Some(table) = self.tables.get_mut(entity_type) else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        table.slots.retain(|&key_hash, slot| {
            let keep = slot.owner != owner || slot.generation == generation;
            if !keep {
                gone.push((key_hash, slot.key_ref, slot.updated_us));
            }
            keep
        });
        let deletions = gone
            .into_iter()
            .map(|(key_hash, key_ref, updated_us)| {
                let id = table.arena.get(key_ref);
                table.arena.release(key_ref);
                let tomb = Tombstone {
                    deleted_us: updated_us,
                    made_us: now_us,
                    owner,
                };
                table.bury(key_hash, tomb, ttl);
                Deletion { id, key_hash }
            })
            .collect();
        table.compact_if_needed();
        deletions
    }

    /// Applies a pushed upsert. A key the baseline does not know (and no tombstone names)
    /// is owned by `owner_of_new`. Returns the verdict, or `None` when it is a repeat or
    /// older than what is known.
    pub fn push_upsert(
        &mut self,
        entity_type: &str,
        obs: Observation<'_>,
        owner_of_new: Owner,
    ) -> Option<Verdict> {
        let generations = &self.generations;
        let generation_of = |o: Owner| generations.get(o);
        let table = match self.tables.get_mut(entity_type) {
            Some(t) => t,
            None => {
                self.tables.insert(entity_type.to_owned(), Table::default());
                self.tables
                    .get_mut(entity_type)
                    .unwrap_or_else(|| unreachable!("inserted above"))
            }
        };
        table.observe_push(obs, owner_of_new, generation_of)
    }

    /// Applies a pushed deletion at source time `deleted_us` ([`UNTIMED`] when the message
    /// has none), at host time `now_us`. Returns the deletion when the key was known and
    /// the deletion is not older than its content. A deletion of an unknown key still
    /// leaves a tombstone (owned by `owner_of_new`), so a late create cannot follow it.
    pub fn push_delete(
        &mut self,
        entity_type: &str,
        key_hash: u64,
        deleted_us: i64,
        owner_of_new: Owner,
        now_us: i64,
    ) -> Option<Deletion> {
        let ttl = self.tombstone_ttl_us;
        let table = self.table(entity_type);
        let (result, tomb) = match table.slots.get(&key_hash) {
            Some(slot) if deleted_us != UNTIMED && slot.updated_us > deleted_us => return None,
            Some(_) => match table.slots.remove(&key_hash) {
                Some(slot) => {
                    let id = table.arena.get(slot.key_ref);
                    table.arena.release(slot.key_ref);
                    let tomb = Tombstone {
                        deleted_us: deleted_us.max(slot.updated_us),
                        made_us: now_us,
                        owner: slot.owner,
                    };
                    (Some(Deletion { id, key_hash }), tomb)
                }
                None => return None,
            },
            None => {
                let before = table.tombstones.get(&key_hash).copied();
                let tomb = Tombstone {
                    deleted_us: before.map_or(deleted_us, |t| t.deleted_us.max(deleted_us)),
                    made_us: now_us,
                    owner: before.map_or(owner_of_new, |t| t.owner),
                };
                (None, tomb)
            }
        };
        table.bury(key_hash, tomb, ttl);
        table.compact_if_needed();
        result
    }

    /// Puts back an entity read from the durable store (generation 0: the owner's first
    /// complete snapshot decides whether it still exists).
    pub fn restore(
        &mut self,
        entity_type: &str,
        id: &str,
        content: u64,
        updated_us: i64,
        owner: Owner,
    ) {
        let key_hash = synchronizer_plugin_api::entity::key_hash(entity_type, id);
        let table = self.table(entity_type);
        if table.slots.contains_key(&key_hash) {
            return;
        }
        let obs = Observation {
            id,
            key_hash,
            content_hash: content,
            updated_us,
        };
        table.insert(obs, id, owner, 0);
    }

    /// Puts back a tombstone read from the durable store, as made at `now_us` (the hub
    /// passes the time the store recorded, so the retention counts from the deletion
    /// across restarts); it expires the TTL after `now_us`.
    pub fn restore_tombstone(
        &mut self,
        entity_type: &str,
        id: &str,
        deleted_us: i64,
        owner: Owner,
        now_us: i64,
    ) {
        let ttl = self.tombstone_ttl_us;
        let key_hash = synchronizer_plugin_api::entity::key_hash(entity_type, id);
        let tomb = Tombstone {
            deleted_us,
            made_us: now_us,
            owner,
        };
        self.table(entity_type).bury(key_hash, tomb, ttl);
    }

    /// Forgets tombstones whose time is up.
    pub fn expire_tombstones(&mut self, now_us: i64) {
        for table in self.tables.values_mut() {
            while let Some(&(key_hash, made_us, expires)) = table.expiry.front() {
                if expires > now_us {
                    break;
                }
                table.expiry.pop_front();
                // A later tombstone for the same key has its own queue entry.
                if table
                    .tombstones
                    .get(&key_hash)
                    .is_some_and(|t| t.made_us == made_us)
                {
                    table.tombstones.remove(&key_hash);
                }
            }
        }
    }

    /// The owner of a known key.
    pub fn owner_of(&self, entity_type: &str, key_hash: u64) -> Option<Owner> {
        self.tables
            .get(entity_type)
            .and_then(|t| t.slots.get(&key_hash))
            .map(|s| s.owner)
    }

    /// A deleted key's tombstone: the source time of the deletion and the owner.
    pub fn tombstone(&self, entity_type: &str, key_hash: u64) -> Option<(i64, Owner)> {
        self.tables
            .get(entity_type)
            .and_then(|t| t.tombstones.get(&key_hash))
            .map(|t| (t.deleted_us, t.owner))
    }

    /// Whether `entity_type` holds a tombstone for `key_hash`.
    pub fn is_buried(&self, entity_type: &str, key_hash: u64) -> bool {
        self.tables
            .get(entity_type)
            .is_some_and(|t| t.tombstones.contains_key(&key_hash))
    }

    /// How many entities of `entity_type` the baseline holds.
    pub fn len(&self, entity_type: &str) -> usize {
        self.tables.get(entity_type).map_or(0, |t| t.slots.len())
    }

    /// Whether the baseline holds no entity at all.
    pub fn is_empty(&self) -> bool {
        self.tables.values().all(|t| t.slots.is_empty())
    }

    /// Entity counts per type.
    pub fn counts(&self) -> Vec<(String, usize)> {
        let mut v: Vec<_> = self
            .tables
            .iter()
            .map(|(t, table)| (t.clone(), table.slots.len()))
            .collect();
        v.sort();
        v
    }

    /// The native id of a known key.
    pub fn id_of(&self, entity_type: &str, key_hash: u64) -> Option<String> {
        let table = self.tables.get(entity_type)?;
        table
            .slots
            .get(&key_hash)
            .map(|s| table.arena.get(s.key_ref))
    }

    /// Reserves room for `additional` more entities of `entity_type`.
    pub fn reserve(&mut self, entity_type: &str, additional: usize) {
        self.table(entity_type).slots.reserve(additional);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_ids_pack_to_sixteen_bytes_and_come_back() {
        let mut a = KeyArena::default();
        let id = "8c8b3b58-2f36-4c8b-9b8e-5f0f3d7b0a11";
        let r = a.push(id);
        assert_eq!(a.bytes.len(), 17);
        assert_eq!(a.get(r), id);
        let upper = "8C8B3B58-2F36-4C8B-9B8E-5F0F3D7B0A11";
        let r2 = a.push(upper);
        assert_eq!(a.get(r2), upper, "non-canonical ids are kept raw");
        let r3 = a.push("compute-0");
        assert_eq!(a.get(r3), "compute-0");
    }

    fn obs(id: &str, content: u64, ts: i64) -> Observation<'_> {
        Observation {
            id,
            key_hash: synchronizer_plugin_api::entity::key_hash("t", id),
            content_hash: content,
            updated_us: ts,
        }
    }

    #[test]
    fn arena_compacts_and_keeps_ids() {
        let mut b = Baseline::new(std::time::Duration::from_secs(60));
        let ids: Vec<String> = (0..2000).map(|i| format!("entity-{i:05}")).collect();
        let g = b.begin_snapshot(0);
        for id in &ids {
            b.observe("t", obs(id, 1, 0), 0, g, 0);
        }
        let g = b.begin_snapshot(0);
        for id in ids.iter().step_by(10) {
            b.observe("t", obs(id, 1, 0), 0, g, 10);
        }
        let gone = b.sweep("t", 0, g, 10);
        assert_eq!(gone.len(), 1800);
        let table = &b.tables["t"];
        assert_eq!(table.arena.garbage, 0, "compacted");
        for id in ids.iter().step_by(10) {
            let h = synchronizer_plugin_api::entity::key_hash("t", id);
            assert_eq!(b.id_of("t", h).as_deref(), Some(id.as_str()));
        }
    }

    #[test]
    fn tombstones_block_older_pushes_until_they_expire() {
        let mut b = Baseline::new(std::time::Duration::from_micros(100));
        let g = b.begin_snapshot(0);
        b.observe("t", obs("a", 1, 0), 0, g, 0);
        assert!(
            b.push_delete("t", obs("a", 0, 0).key_hash, 50, 1, 1000)
                .is_some()
        );
        assert_eq!(
            b.push_upsert("t", obs("a", 1, 40), 1),
            None,
            "older than the delete"
        );
        assert_eq!(
            b.push_upsert("t", obs("a", 1, 50), 1),
            None,
            "as old as the delete"
        );
        b.expire_tombstones(1101);
        assert!(!b.is_buried("t", obs("a", 0, 0).key_hash));
        assert_eq!(
            b.push_upsert("t", obs("a", 1, 40), 1),
            Some(Verdict::Created)
        );
    }

    #[test]
    fn a_snapshot_is_never_stale_and_recreates_after_a_deletion() {
        let mut b = Baseline::new(std::time::Duration::from_secs(600));
        let g = b.begin_snapshot(0);
        assert_eq!(
            b.observe("t", obs("a", 1, 500), 0, g, 1_000),
            Some(Verdict::Created)
        );
        // A back-dated result: older source time, new content, later snapshot.
        let g = b.begin_snapshot(0);
        assert_eq!(
            b.observe("t", obs("a", 2, 380), 0, g, 2_000),
            Some(Verdict::Updated)
        );
        // Cleared by a snapshot, then raised again by a back-dated result.
        let g = b.begin_snapshot(0);
        assert_eq!(b.sweep("t", 0, g, 3_000).len(), 1);
        let g = b.begin_snapshot(0);
        assert_eq!(
            b.observe("t", obs("a", 3, 100), 0, g, 4_000),
            Some(Verdict::Created)
        );
    }

    #[test]
    fn what_happens_while_a_snapshot_call_runs_wins_over_it() {
        let mut b = Baseline::new(std::time::Duration::from_secs(600));
        let g = b.begin_snapshot(0);
        b.observe("t", obs("a", 1, 10), 0, g, 1_000);
        b.observe("t", obs("b", 1, 10), 0, g, 1_000);
        // The next call starts at 2_000; a push updates `a` and deletes `b` while it runs,
        // and creates `c`.
        let g = b.begin_snapshot(0);
        assert_eq!(
            b.push_upsert("t", obs("a", 2, 20), 1),
            Some(Verdict::Updated)
        );
        assert!(
            b.push_delete("t", obs("b", 0, 0).key_hash, 20, 1, 2_500)
                .is_some()
        );
        assert_eq!(
            b.push_upsert("t", obs("c", 1, 20), 0),
            Some(Verdict::Created)
        );
        // The snapshot (taken before those) lists a and b as they were, and not c.
        assert_eq!(b.observe("t", obs("a", 1, 10), 0, g, 2_000), None);
        assert_eq!(b.observe("t", obs("b", 1, 10), 0, g, 2_000), None);
        assert!(
            b.sweep("t", 0, g, 3_000).is_empty(),
            "c was pushed while the call ran"
        );
        // The next snapshot is the authority again.
        let g = b.begin_snapshot(0);
        assert_eq!(
            b.observe("t", obs("a", 1, 10), 0, g, 4_000),
            Some(Verdict::Updated)
        );
        assert_eq!(
            b.observe("t", obs("b", 1, 10), 0, g, 4_000),
            Some(Verdict::Created)
        );
        let gone = b.sweep("t", 0, g, 5_000);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].id, "c");
    }

    #[test]
    fn a_pushed_entity_of_a_collected_type_is_owned_by_its_collector() {
        let mut b = Baseline::new(std::time::Duration::from_secs(600));
        let (collector, bus) = (0, 1);
        let g = b.begin_snapshot(collector);
        b.sweep("t", collector, g, 0);
        // A late message re-creates a deleted server; the collector owns it.
        assert_eq!(
            b.push_upsert("t", obs("ghost", 1, 99), collector),
            Some(Verdict::Created)
        );
        let g = b.begin_snapshot(collector);
        let gone = b.sweep("t", collector, g, 10);
        assert_eq!(gone.len(), 1, "the next poll sweeps it");
        // A bus-only entity stays the bus's.
        assert_eq!(
            b.push_upsert("t", obs("x", 1, 5), bus),
            Some(Verdict::Created)
        );
        let g = b.begin_snapshot(collector);
        assert!(b.sweep("t", collector, g, 20).is_empty());
    }

    #[test]
    fn untimed_pushes_apply_in_arrival_order() {
        let mut b = Baseline::new(std::time::Duration::from_secs(600));
        assert_eq!(
            b.push_upsert("t", obs("a", 1, 1_000), 0),
            Some(Verdict::Created)
        );
        assert_eq!(
            b.push_upsert("t", obs("a", 2, UNTIMED), 0),
            Some(Verdict::Updated)
        );
        let h = obs("a", 0, 0).key_hash;
        assert!(b.push_delete("t", h, UNTIMED, 0, 5).is_some());
        assert_eq!(
            b.push_upsert("t", obs("a", 2, 1_000), 0),
            None,
            "not newer than the last known state"
        );
        assert_eq!(
            b.push_upsert("t", obs("a", 2, 1_001), 0),
            Some(Verdict::Created)
        );
    }

    #[test]
    fn bucket_sort_orders_by_bucket_and_keeps_every_element() {
        let buckets = buckets_for(1_835_008);
        assert_eq!(buckets, 1 << 21);
        let mut batch: Vec<Hashed> = (0..50_000u32)
            .map(|i| Hashed {
                key_hash: u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                content_hash: u64::from(i),
                updated_us: 0,
                index: i,
            })
            .collect();
        sort_by_bucket(&mut batch, buckets);
        let bucket = |h: &Hashed| h.key_hash & (buckets as u64 - 1);
        assert!(batch.windows(2).all(|w| bucket(&w[0]) <= bucket(&w[1])));
        let mut seen: Vec<u32> = batch.iter().map(|h| h.index).collect();
        seen.sort_unstable();
        assert!(seen.iter().copied().eq(0..50_000));
        assert!(batch.iter().all(|h| h.content_hash == u64::from(h.index)));
    }

    #[test]
    fn hash_snapshot_groups_by_type_in_snapshot_order_on_every_path() {
        use synchronizer_plugin_api::Entity;
        let reference = |entities: &[Entity]| {
            let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
            for (i, e) in entities.iter().enumerate() {
                match groups.iter_mut().find(|(t, _)| t == e.entity_type()) {
                    Some((_, v)) => v.push(i as u32),
                    None => groups.push((e.entity_type().to_owned(), vec![i as u32])),
                }
            }
            groups
        };
        let check = |entities: Vec<Entity>| {
            let got: Vec<(String, Vec<u32>)> = hash_snapshot(&entities)
                .into_iter()
                .map(|(t, h)| {
                    for x in &h {
                        let e = &entities[x.index as usize];
                        assert_eq!(e.entity_type(), t);
                        assert_eq!(x.key_hash, e.key_hash());
                        assert_eq!(x.content_hash, e.content_hash());
                    }
                    (t, h.iter().map(|x| x.index).collect())
                })
                .collect();
            assert_eq!(got, reference(&entities));
        };
        let n = 70_000;
        // One type, large enough for the threads.
        check(
            (0..n)
                .map(|i| Entity::resource("a", &i.to_string()))
                .collect(),
        );
        // Types interleaved, and a type that appears in one chunk only.
        check(
            (0..n)
                .map(|i| {
                    let t = match i {
                        i if i % 7 == 0 => "b",
                        i if i > n - 10 => "c",
                        _ => "a",
                    };
                    Entity::resource(t, &i.to_string())
                })
                .collect(),
        );
        // Chunks of one type each, different types.
        check(
            (0..n)
                .map(|i| Entity::resource(if i < n / 2 { "a" } else { "b" }, &i.to_string()))
                .collect(),
        );
        // Small (one thread), several types; and empty.
        check(
            (0..100)
                .map(|i| Entity::resource(["x", "y", "z"][i % 3], &i.to_string()))
                .collect(),
        );
        check(Vec::new());
    }
}
