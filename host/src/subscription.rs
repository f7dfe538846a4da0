//! Subscriptions: a stream of [`Event`]s for the types a consumer asked for, or a
//! callback run on a thread of its own. Either way the host only ever `try_send`s into
//! the subscriber's bounded queue (see [`crate::hub`]), so a slow consumer delays nobody.
//!
//! At shutdown a subscription ends *after the drain* ([`Drain`]): once the producers have
//! stopped and every change they handed over was queued to the subscribers, each
//! subscription yields what is still queued (and, if it had fallen behind, its resync and
//! snapshot), then `None`. The consumers the host drives itself (callbacks, SSE streams)
//! are waited for, so that shutdown returns only when they have seen everything.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::AbortOnDropHandle;
use tokio_util::task::task_tracker::{TaskTracker, TaskTrackerToken};

use crate::change::{Event, ResyncReason};
use crate::hub::{Hub, TypeFilter};

/// What a consumer subscribes to.
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    /// Entity types; empty for all.
    pub types: Vec<String>,
    /// Events the subscriber may have queued before it counts as fallen behind.
    pub queue: usize,
    /// Start with a resync marker and a snapshot of the current view.
    pub initial_snapshot: bool,
    /// Also send a full snapshot of its types this often (Vitrage's snapshots_interval).
    pub resync_every: Option<Duration>,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            types: Vec::new(),
            queue: 4096,
            initial_snapshot: false,
            resync_every: None,
        }
    }
}

impl SubscribeOptions {
    /// Options for these types (empty: all).
    pub fn types<S: AsRef<str>>(types: &[S]) -> Self {
        SubscribeOptions {
            types: types.iter().map(|t| t.as_ref().to_owned()).collect(),
            ..Default::default()
        }
    }
}

/// How long [`Drain::wait_consumers`] waits, at most, for the consumers the host drives
/// (callbacks, SSE streams) to take what was queued for them.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The end of every subscription of one host, at shutdown: once [`Drain::end`] is called
/// (the producers have stopped and their changes are queued), each subscription yields
/// what is still queued for it, then ends. Subscriptions the host drives itself are
/// tracked ([`Subscription::track`]) so that shutdown can wait until they have ended.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    ended: CancellationToken,
    consumers: TaskTracker,
}

impl Drain {
    /// Makes `sub` end after the drain.
    pub fn attach(&self, mut sub: Subscription) -> Subscription {
        sub.drain = Some(Ending {
            drain: self.clone(),
            waiting: None,
        });
        sub
    }

    /// Every change accepted so far is queued to the subscribers: from now on each
    /// subscription ends once it has yielded what is queued for it.
    pub fn end(&self) {
        self.consumers.close();
        self.ended.cancel();
    }

    /// Whether [`Drain::end`] was called.
    pub fn ended(&self) -> bool {
        self.ended.is_cancelled()
    }

    /// Waits until every tracked subscription has ended (its consumer saw everything) or
    /// was dropped, at most `within`. False when some had not by then.
    pub async fn wait_consumers(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.consumers.wait())
            .await
            .is_ok()
    }
}

/// A subscription's part of a [`Drain`].
struct Ending {
    drain: Drain,
    /// Registered for the drain's wakeup while the queue is empty.
    waiting: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

/// A stream subscription. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    hub: Weak<Hub>,
    rx: crate::queue::QueueRx,
    _periodic: Option<AbortOnDropHandle<()>>,
    /// Set by the host: ends after its shutdown's drain.
    drain: Option<Ending>,
    /// Held while a consumer the host drives reads this subscription (see [`Drain`]).
    consumer: Option<TaskTrackerToken>,
    finished: bool,
}

impl Subscription {
    /// Subscribes to `hub` directly (the [`crate::Synchronizer`] does this for you; such
    /// a subscription ends only when the hub is gone, not at a drain).
    pub fn for_hub(hub: &Arc<Hub>, options: &SubscribeOptions) -> Self {
        let (id, rx) = hub.subscribe(
            TypeFilter::new(&options.types),
            options.queue,
            options.initial_snapshot,
        );
        let periodic = options.resync_every.map(|every| {
            let weak = Arc::downgrade(hub);
            AbortOnDropHandle::new(tokio::spawn(async move {
                // A period too long to add to the clock (`--resync-every 500000000000years`)
                // means never.
                let now = tokio::time::Instant::now();
                let Some(first) = now
                    .checked_add(every)
                    .filter(|t| t.checked_add(every).is_some())
                else {
                    return;
                };
                let mut tick = tokio::time::interval_at(first, every);
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(hub) => hub.resync(id, ResyncReason::Periodic),
                        None => break,
                    }
                }
            }))
        });
        Subscription {
            id,
            hub: Arc::downgrade(hub),
            rx,
            _periodic: periodic,
            drain: None,
            consumer: None,
            finished: false,
        }
    }

    /// Counts this subscription among the consumers the host waits for at shutdown
    /// ([`Drain::wait_consumers`]) until it has ended or is dropped: for consumers the
    /// host itself drives (a callback's thread, an SSE stream), never for one that an
    /// embedding program may stop reading.
    pub fn track(&mut self) {
        if self.consumer.is_none()
            && !self.finished
            && let Some(ending) = &self.drain
        {
            self.consumer = Some(ending.drain.consumers.token());
        }
    }

    /// The next event; `None` when the host has shut down (after the drain, once every
    /// change queued for this subscription was taken).
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv()
    }

    /// Blocks until the next event (for callers outside the async runtime).
    pub fn blocking_recv(&mut self) -> Option<Event> {
        futures::executor::block_on(self.recv())
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if self.finished {
            return Poll::Ready(None);
        }
        if let Poll::Ready(event) = self.rx.poll_recv(cx) {
            if event.is_none() {
                self.finish();
            }
            return Poll::Ready(event);
        }
        let Some(ending) = &mut self.drain else {
            return Poll::Pending;
        };
        if !ending.drain.ended() {
            let waiting = ending
                .waiting
                .get_or_insert_with(|| Box::pin(ending.drain.ended.clone().cancelled_owned()));
            if waiting.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // Drained: nothing more will be queued, except the resync and snapshot of a
        // subscriber that fell behind, which it gets now that its queue has room.
        if let Some(hub) = self.hub.upgrade() {
            hub.recover_lagged();
        }
        match self.rx.try_recv() {
            Some(event) => Poll::Ready(Some(event)),
            None => {
                self.finish();
                Poll::Ready(None)
            }
        }
    }

    /// Ended: unsubscribes, and lets shutdown know this consumer is done.
    fn finish(&mut self) {
        self.finished = true;
        if let Some(hub) = self.hub.upgrade() {
            hub.unsubscribe(self.id);
        }
        self.consumer = None;
    }
}

impl futures::Stream for Subscription {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.poll_event(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.unsubscribe(self.id);
        }
    }
}

/// A callback subscription: the callback runs on a thread of its own. Dropping the
/// handle (or [`CallbackSubscription::cancel`]) unsubscribes; the thread finishes after
/// the events already queued. At the host's shutdown the callback is called for every
/// change accepted before it, and shutdown waits for that (see [`Drain`]).
pub struct CallbackSubscription {
    id: u64,
    hub: Weak<Hub>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CallbackSubscription {
    /// Runs `callback` for every event of `sub`, on a thread of its own.
    pub fn from_subscription<F>(sub: Subscription, mut callback: F) -> std::io::Result<Self>
    where
        F: FnMut(Event) + Send + 'static,
    {
        let id = sub.id;
        let hub = sub.hub.clone();
        let mut sub = sub;
        sub.track();
        let thread = std::thread::Builder::new()
            .name("subscriber".into())
            .spawn(move || {
                while let Some(event) = sub.blocking_recv() {
                    callback(event);
                }
            })?;
        Ok(CallbackSubscription {
            id,
            hub,
            thread: Some(thread),
        })
    }

    /// Unsubscribes and waits until the callback has seen the events already queued.
    pub fn cancel(mut self) {
        self.unsubscribe();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn unsubscribe(&self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.unsubscribe(self.id);
        }
    }
}

impl Drop for CallbackSubscription {
    fn drop(&mut self) {
        self.unsubscribe();
    }
}
