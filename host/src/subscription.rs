//! Subscriptions: a stream of [`Event`]s for the types a consumer asked for, or a
//! callback run on a thread of its own. Either way the host only ever `try_send`s into
//! the subscriber's bounded queue (see [`crate::hub`]), so a slow consumer delays nobody.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

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

/// A stream subscription. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    hub: Weak<Hub>,
    rx: mpsc::Receiver<Event>,
    _periodic: Option<AbortOnDropHandle<()>>,
}

impl Subscription {
    /// Subscribes to `hub` directly (the [`crate::Synchronizer`] does this for you).
    pub fn for_hub(hub: &Arc<Hub>, options: &SubscribeOptions) -> Self {
        let (id, rx) = hub.subscribe(
            TypeFilter::new(&options.types),
            options.queue,
            options.initial_snapshot,
        );
        let periodic = options.resync_every.map(|every| {
            let weak = Arc::downgrade(hub);
            AbortOnDropHandle::new(tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
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
        }
    }

    /// The next event; `None` when the host has shut down.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Blocks until the next event (for callers outside the async runtime).
    pub fn blocking_recv(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }
}

impl futures::Stream for Subscription {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
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
/// the events already queued.
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
