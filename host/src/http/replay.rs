//! The replay window: the most recent changes, each with its JSON, kept by one internal
//! subscription to every type.
//!
//! It serves two purposes:
//! - a client that reconnects with `Last-Event-ID` is sent, from here, the changes it
//!   missed, if they are all still here (the most recent `replay` changes);
//! - every SSE client takes a change's JSON from here instead of serialising it again
//!   (one serialisation per change, not one per change and client). The JSON is made
//!   when a client first asks for it, so that with no SSE client the window costs no
//!   serialisation at all (stdout and the AMQP output have their own).
//!
//! The window holds contiguous `seq`s. Its subscription is unfiltered and its task only
//! serialises and stores, so it practically never falls behind; if it ever does, the
//! window starts afresh at the next change, and older ids are answered with a resync.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::change::{Change, Event};
use crate::hub::TypeFilter;
use crate::subscription::SubscribeOptions;
use crate::{Synchronizer, output};

/// The window's own subscription queue (events): large, because falling behind costs
/// every reconnecting client its replay.
const FEED_QUEUE: usize = 65_536;
/// Changes kept for their JSON even when `replay` is smaller, so that clients share it.
const MIN_KEPT: usize = 4_096;
/// Events the feed takes in one go.
const FEED_BATCH: usize = 1_024;

/// One change and its JSON.
#[derive(Clone)]
pub(super) struct Entry {
    /// The change.
    pub change: Arc<Change>,
    /// Its JSON ([`output::change_to_json`]), made on first use and shared by every
    /// client from then on.
    json: Arc<OnceLock<Arc<str>>>,
}

impl Entry {
    fn new(change: Arc<Change>) -> Self {
        Entry {
            change,
            json: Arc::default(),
        }
    }

    /// The change's JSON.
    pub fn json(&self) -> &Arc<str> {
        self.json
            .get_or_init(|| Arc::from(output::change_to_json(&self.change)))
    }
}

struct Ring {
    /// Contiguous `seq`s, oldest first.
    entries: VecDeque<Entry>,
    /// False after the feed fell behind, until the next change: what was missed is lost.
    intact: bool,
}

/// What a resume request finds.
pub(super) enum Resume {
    /// Every change after the client's id, up to the requested point, of its types.
    Replay(Vec<Entry>),
    /// Some of the changes the client missed are no longer here.
    TooOld,
}

/// The window; shared by every SSE client.
pub(super) struct Window {
    ring: Mutex<Ring>,
    /// The highest `seq` taken in so far (or, before any, the host's last `seq` when the
    /// window started).
    seen: watch::Sender<u64>,
    /// How many of the most recent changes a client may resume from.
    replay: usize,
    /// How many are kept.
    capacity: usize,
    /// Identifies this run of the host ([`crate::hub::Hub::epoch`]): the second half of
    /// every SSE id, so that an id from before a restart is never taken for one of this
    /// run.
    epoch: Arc<str>,
}

impl Window {
    /// Subscribes to every change of `sync` and starts the task that fills the window,
    /// until `stop`.
    pub fn start(sync: &Synchronizer, replay: usize, stop: CancellationToken) -> Arc<Window> {
        let mut sub = sync.subscribe(&SubscribeOptions {
            types: Vec::new(),
            queue: FEED_QUEUE,
            initial_snapshot: false,
            resync_every: None,
        });
        // Every change after this one reaches `sub`.
        let start = sync.hub().last_seq();
        let capacity = replay.max(MIN_KEPT);
        let window = Arc::new(Window {
            ring: Mutex::new(Ring {
                entries: VecDeque::with_capacity(capacity.min(65_536)),
                intact: true,
            }),
            seen: watch::Sender::new(start),
            replay,
            capacity,
            epoch: sync.hub().epoch().clone(),
        });
        let w = window.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(FEED_BATCH);
            loop {
                let first = tokio::select! {
                    _ = stop.cancelled() => break,
                    e = sub.recv() => e,
                };
                let Some(first) = first else { break };
                batch.push(first);
                while batch.len() < FEED_BATCH {
                    match sub.try_recv() {
                        Some(e) => batch.push(e),
                        None => break,
                    }
                }
                w.take_in(batch.drain(..));
            }
            tracing::debug!("replay window feed stopped");
        });
        window
    }

    /// This window's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// This window's epoch, to keep.
    pub fn epoch_arc(&self) -> Arc<str> {
        self.epoch.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a batch of events from the feed.
    fn take_in(&self, events: impl Iterator<Item = Event>) {
        let mut entries = Vec::new();
        let mut lost = false;
        for event in events {
            match event {
                Event::Change(change) => entries.push(Some(Entry::new(change))),
                Event::Resync(_) => entries.push(None),
                Event::Snapshot(_) => {}
            }
        }
        let mut highest = None;
        {
            let mut ring = self.lock();
            for entry in entries {
                let Some(entry) = entry else {
                    // The feed fell behind: changes were dropped before this point.
                    ring.entries.clear();
                    ring.intact = false;
                    lost = true;
                    continue;
                };
                let seq = entry.change.seq;
                let follows = ring.entries.back().is_none_or(|b| b.change.seq + 1 == seq);
                if !follows {
                    ring.entries.clear();
                }
                if ring.entries.is_empty() && !ring.intact {
                    ring.intact = true;
                }
                ring.entries.push_back(entry);
                while ring.entries.len() > self.capacity {
                    ring.entries.pop_front();
                }
                highest = Some(seq);
            }
        }
        if lost {
            tracing::warn!(
                "the replay window fell behind; clients resuming from before now get a resync"
            );
        }
        if let Some(seq) = highest {
            self.seen.send_if_modified(|s| {
                let newer = seq > *s;
                if newer {
                    *s = seq;
                }
                newer
            });
        }
    }

    /// Waits until the window has taken in every change up to `seq` (at most `within`).
    /// False when it has not by then.
    pub async fn caught_up(&self, seq: u64, within: Duration) -> bool {
        let mut rx = self.seen.subscribe();
        matches!(
            tokio::time::timeout(within, rx.wait_for(|s| *s >= seq)).await,
            Ok(Ok(_))
        )
    }

    /// The highest `seq` taken in so far.
    pub fn seen(&self) -> u64 {
        *self.seen.borrow()
    }

    /// The changes of `filter`'s types after `after` up to `through` — if every change
    /// after `after` is still within the replay window.
    pub fn resume(&self, after: u64, through: u64, filter: &TypeFilter) -> Resume {
        if after >= through {
            return if after == through {
                Resume::Replay(Vec::new())
            } else {
                Resume::TooOld
            };
        }
        let ring = self.lock();
        let (Some(front), Some(back)) = (ring.entries.front(), ring.entries.back()) else {
            return Resume::TooOld;
        };
        let (front, back) = (front.change.seq, back.change.seq);
        // The resumable part: the most recent `replay` changes.
        let oldest = front.max((back + 1).saturating_sub(self.replay as u64));
        if !ring.intact || after + 1 < oldest || through > back {
            return Resume::TooOld;
        }
        let from = usize::try_from(after + 1 - front).unwrap_or(usize::MAX);
        let to = usize::try_from(through - front).unwrap_or(usize::MAX);
        Resume::Replay(
            ring.entries
                .range(from..=to.min(ring.entries.len().saturating_sub(1)))
                .filter(|e| filter.matches(e.change.entity.entity_type()))
                .cloned()
                .collect(),
        )
    }

    /// The window's JSON, to look changes up by `seq` under one lock. Hold it only
    /// briefly (no await while it lives).
    pub fn json(&self) -> Json<'_> {
        Json(self.lock())
    }
}

/// The window locked, for looking up changes' JSON.
pub(super) struct Json<'a>(MutexGuard<'a, Ring>);

impl Json<'_> {
    /// The JSON of change `seq`, if the window holds it.
    pub fn get(&self, seq: u64) -> Option<&str> {
        let front = self.0.entries.front()?.change.seq;
        let i = usize::try_from(seq.checked_sub(front)?).ok()?;
        self.0
            .entries
            .get(i)
            .filter(|e| e.change.seq == seq)
            .map(|e| &**e.json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Action, ResyncReason};
    use synchronizer_plugin_api::Entity;

    fn window(replay: usize, capacity: usize) -> Window {
        Window {
            ring: Mutex::new(Ring {
                entries: VecDeque::new(),
                intact: true,
            }),
            seen: watch::Sender::new(0),
            replay,
            capacity,
            epoch: Arc::from("test"),
        }
    }

    fn change(seq: u64, entity_type: &str) -> Event {
        Event::Change(Arc::new(Change {
            seq,
            action: Action::Created,
            entity: Arc::new(Entity::resource(entity_type, &format!("e{seq}"))),
            instance: Arc::from("i"),
            sampled_us: 0,
            initial: false,
        }))
    }

    fn seqs(r: Resume) -> Option<Vec<u64>> {
        match r {
            Resume::Replay(v) => Some(v.iter().map(|e| e.change.seq).collect()),
            Resume::TooOld => None,
        }
    }

    #[test]
    fn resumes_within_the_window_only() {
        let w = window(5, 8);
        w.take_in((1..=10).map(|s| change(s, if s % 2 == 0 { "a" } else { "b" })));
        assert_eq!(w.seen(), 10);
        let all = TypeFilter::default();
        // Kept: 3..=10; resumable: the last 5 (6..=10).
        assert_eq!(seqs(w.resume(5, 10, &all)), Some(vec![6, 7, 8, 9, 10]));
        assert_eq!(seqs(w.resume(7, 9, &all)), Some(vec![8, 9]));
        assert_eq!(seqs(w.resume(4, 10, &all)), None);
        assert_eq!(seqs(w.resume(10, 10, &all)), Some(vec![]));
        assert_eq!(seqs(w.resume(11, 10, &all)), None, "an id from the future");
        assert_eq!(
            seqs(w.resume(5, 10, &TypeFilter::new(&["a"]))),
            Some(vec![6, 8, 10])
        );
        let json = w.json();
        assert_eq!(
            [2, 3, 10, 11].map(|s| json.get(s).is_some()),
            [false, true, true, false]
        );
        assert!(json.get(3).unwrap_or("").contains("\"seq\":3"));
    }

    #[test]
    fn a_gap_in_the_feed_makes_older_ids_too_old() {
        let w = window(100, 100);
        w.take_in((1..=4).map(|s| change(s, "a")));
        w.take_in(
            [
                Event::Resync(ResyncReason::Lagged),
                Event::Snapshot(Vec::new().into()),
            ]
            .into_iter(),
        );
        let all = TypeFilter::default();
        assert_eq!(seqs(w.resume(2, 4, &all)), None);
        w.take_in((9..=10).map(|s| change(s, "a")));
        assert_eq!(seqs(w.resume(2, 10, &all)), None);
        assert_eq!(seqs(w.resume(8, 10, &all)), Some(vec![9, 10]));
        assert_eq!(w.seen(), 10);
    }
}
