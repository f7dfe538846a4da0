//! Counters of what the consumer did, for health reports, logs and tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Live counters, shared by the consumer tasks.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) received: AtomicU64,
    pub(crate) changes: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) unknown: AtomicU64,
    pub(crate) family_off: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) connected: AtomicBool,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Messages received from the broker (redeliveries included).
    pub received: u64,
    /// Changes handed to the host.
    pub changes: u64,
    /// Messages acknowledged after the host accepted their batch.
    pub acked: u64,
    /// Batches handed to the host.
    pub batches: u64,
    /// Messages dropped as duplicates of a recent message id (acknowledged).
    pub duplicates: u64,
    /// Messages of an unknown event type (acknowledged).
    pub unknown: u64,
    /// Messages of a family that is switched off (acknowledged).
    pub family_off: u64,
    /// Malformed messages sent to the dead-letter queue.
    pub malformed: u64,
    /// Successful connections (the first one included).
    pub connections: u64,
    /// Whether the consumer is connected now.
    pub connected: bool,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            received: get(&self.received),
            changes: get(&self.changes),
            acked: get(&self.acked),
            batches: get(&self.batches),
            duplicates: get(&self.duplicates),
            unknown: get(&self.unknown),
            family_off: get(&self.family_off),
            malformed: get(&self.malformed),
            connections: get(&self.connections),
            connected: self.connected.load(Ordering::Relaxed),
        }
    }
}

impl StatsSnapshot {
    /// The counters as the host exports them (metrics named after the keys).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("messages_consumed", self.received),
            ("changes_pushed", self.changes),
            ("messages_acked", self.acked),
            ("batches_pushed", self.batches),
            ("duplicates_dropped", self.duplicates),
            ("unknown_events", self.unknown),
            ("family_off_events", self.family_off),
            ("messages_dead_lettered", self.malformed),
            ("connections", self.connections),
            ("connected", u64::from(self.connected)),
        ]
    }
}

impl std::fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "received {}, changes {}, acked {}, duplicates {}, unknown {}, family off {}, malformed {}, connections {}",
            self.received,
            self.changes,
            self.acked,
            self.duplicates,
            self.unknown,
            self.family_off,
            self.malformed,
            self.connections
        )
    }
}
