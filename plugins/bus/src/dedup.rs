//! A bounded set of recently seen message ids, to drop duplicate deliveries.
//!
//! Duplicates happen: a message pushed to the host whose ack was lost with the connection
//! is delivered again, and a notification sent to two topics this plugin consumes
//! arrives twice with the same `message_id`. Ids are kept as 64-bit seahashes (a
//! collision among the last 65,536 ids has a probability around 10⁻¹⁰) in insertion
//! order; when the set is full the oldest id is forgotten.
//!
//! An id is claimed when its message is read, before its change reaches the host, so
//! that two copies read at the same time on two queues cannot both go through; the
//! claim is withdrawn ([`RecentIds::remove`]) when the host does not accept the batch,
//! because the message is then delivered again and must not be taken for a duplicate.

use std::collections::{HashMap, VecDeque};

/// The hash an id is remembered by.
pub fn id_hash(id: &str) -> u64 {
    seahash::hash(id.as_bytes())
}

/// Recently seen ids, at most `capacity` of them.
#[derive(Debug)]
pub struct RecentIds {
    /// id hash -> the sequence number of its entry in `order`.
    seen: HashMap<u64, u64>,
    order: VecDeque<(u64, u64)>,
    next: u64,
    capacity: usize,
}

impl RecentIds {
    /// An empty set remembering at most `capacity` ids (0 remembers none).
    pub fn new(capacity: usize) -> Self {
        RecentIds {
            seen: HashMap::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            next: 0,
            capacity,
        }
    }

    /// Whether `hash` was seen recently.
    pub fn contains(&self, hash: u64) -> bool {
        self.seen.contains_key(&hash)
    }

    /// Remembers `hash`, forgetting the oldest id when full. Returns false (and changes
    /// nothing) when it was already there.
    pub fn insert(&mut self, hash: u64) -> bool {
        if self.capacity == 0 {
            return true;
        }
        if self.seen.contains_key(&hash) {
            return false;
        }
        let seq = self.next;
        self.next += 1;
        self.seen.insert(hash, seq);
        self.order.push_back((hash, seq));
        while self.seen.len() > self.capacity {
            match self.order.pop_front() {
                // Only if that entry is still the live one for its id.
                Some((old, s)) if self.seen.get(&old) == Some(&s) => {
                    self.seen.remove(&old);
                }
                Some(_) => {}
                None => break,
            }
        }
        // Entries of removed ids linger in `order`; keep it from growing without bound.
        if self.order.len() > self.capacity.saturating_mul(2) {
            let seen = &self.seen;
            self.order.retain(|(h, s)| seen.get(h) == Some(s));
        }
        true
    }

    /// Forgets `hash` (a claim withdrawn).
    pub fn remove(&mut self, hash: u64) {
        self.seen.remove(&hash);
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_forgets_the_oldest() {
        let mut r = RecentIds::new(3);
        for id in ["a", "b", "c"] {
            assert!(r.insert(id_hash(id)));
        }
        assert!(!r.insert(id_hash("b")), "a repeat is reported");
        assert!(r.contains(id_hash("a")));
        assert!(r.insert(id_hash("d")));
        assert_eq!(r.len(), 3);
        assert!(!r.contains(id_hash("a")), "the oldest is forgotten");
        assert!(r.contains(id_hash("b")) && r.contains(id_hash("c")) && r.contains(id_hash("d")));
    }

    #[test]
    fn a_withdrawn_claim_can_be_made_again_and_ages_correctly() {
        let mut r = RecentIds::new(2);
        assert!(r.insert(1));
        r.remove(1);
        assert!(!r.contains(1));
        assert!(r.insert(2));
        assert!(r.insert(1), "claimable again after removal");
        // The stale entry of the first claim of 1 must not evict the live one.
        assert!(r.insert(3));
        assert!(r.contains(1) && r.contains(3) && !r.contains(2));
        for i in 10..1000 {
            r.insert(i);
            r.remove(i);
        }
        assert!(
            r.order.len() <= 4,
            "stale entries are compacted: {}",
            r.order.len()
        );
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let mut r = RecentIds::new(0);
        assert!(r.insert(1));
        assert!(r.insert(1));
        assert!(r.is_empty());
        assert!(!r.contains(1));
    }
}
