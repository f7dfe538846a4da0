//! A subscriber's queue: bounded in events, filled a batch at a time.
//!
//! The hub hands each subscriber a batch's changes together (`QueueTx::send`): one
//! message on the channel, so one wake-up of the consumer per batch. Queued one change at
//! a time, the consumer (the stdout writer's thread, an SSE stream, a callback's thread)
//! was woken by the first change of each batch and, on a busy machine, took the CPU from
//! the writer at once (the kernel lets a woken thread run first): the writer and the
//! consumer then took turns for every change, about one context switch per change, the
//! largest single cost of a bus drain to stdout.
//!
//! The bound is on events, as before (`subscriber_queue`): the sender is told how much
//! room there is (`QueueTx::room`) and queues no more; the receiver gives the room back
//! as it takes each event. Only the hub sends, under its lock, so room never shrinks
//! between a look and a send.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::change::{Event, ResyncReason};
use crate::view::Snapshot;

/// A queue of at most `capacity` events (at least 2: a resync marker and its snapshot).
pub(crate) fn queue(capacity: usize) -> (QueueTx, QueueRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        QueueTx {
            tx,
            queued: queued.clone(),
            capacity: capacity.max(2),
        },
        QueueRx {
            rx,
            batch: Vec::new().into_iter(),
            queued,
        },
    )
}

/// The hub's end of a subscriber's queue.
pub(crate) struct QueueTx {
    tx: mpsc::UnboundedSender<Vec<Event>>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

/// The receiver is gone.
#[derive(Debug)]
pub(crate) struct Closed;

impl QueueTx {
    /// How many more events the queue takes.
    pub(crate) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.queued())
    }

    /// Events queued and not taken yet.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Queues `events`, in order, with one wake-up of the receiver. The caller sends at
    /// most [`QueueTx::room`] events; more would pass the bound, not be refused.
    pub(crate) fn send(&self, events: Vec<Event>) -> Result<(), Closed> {
        if events.is_empty() {
            return Ok(());
        }
        let n = events.len();
        self.queued.fetch_add(n, Ordering::AcqRel);
        self.tx.send(events).map_err(|_| {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            Closed
        })
    }

    /// Queues a resync marker and the snapshot that follows it, both or neither: `false`
    /// when there is no room for two events or the receiver is gone. `snapshot` is taken
    /// only when they are queued.
    pub(crate) fn send_resync(
        &self,
        reason: ResyncReason,
        snapshot: impl FnOnce() -> Snapshot,
    ) -> bool {
        self.room() >= 2
            && self
                .send(vec![Event::Resync(reason), Event::Snapshot(snapshot())])
                .is_ok()
    }

    /// Whether the receiver is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The subscriber's end (what [`crate::hub::Hub::subscribe`] returns; a
/// [`crate::Subscription`] holds one).
pub struct QueueRx {
    rx: mpsc::UnboundedReceiver<Vec<Event>>,
    /// What is left of the batch being taken.
    batch: std::vec::IntoIter<Event>,
    queued: Arc<AtomicUsize>,
}

impl QueueRx {
    /// The next event; `None` once the hub's end is gone and everything was taken.
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`QueueRx::recv`], polled.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            if let Some(event) = self.take() {
                return Poll::Ready(Some(event));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.batch = batch.into_iter(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.take() {
                return Some(event);
            }
            self.batch = self.rx.try_recv().ok()?.into_iter();
        }
    }

    fn take(&mut self) -> Option<Event> {
        let event = self.batch.next()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> Event {
        Event::Resync(ResyncReason::Initial)
    }

    #[test]
    fn room_is_counted_in_events_and_given_back_as_each_is_taken() {
        let (tx, mut rx) = queue(3);
        assert_eq!(tx.room(), 3);
        tx.send(vec![marker(), marker()]).unwrap();
        assert_eq!((tx.room(), tx.queued()), (1, 2));
        assert!(rx.try_recv().is_some());
        assert_eq!(tx.room(), 2);
        tx.send(vec![marker(), marker()]).unwrap();
        assert_eq!(tx.room(), 0);
        for _ in 0..3 {
            assert!(rx.try_recv().is_some());
        }
        assert!(rx.try_recv().is_none());
        assert_eq!(tx.room(), 3);
        // Never less than a resync marker and its snapshot.
        assert_eq!(queue(0).0.room(), 2);
    }

    #[test]
    fn a_batch_wakes_the_receiver_once_and_the_end_comes_after_the_last_event() {
        use std::sync::atomic::AtomicUsize;
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let (tx, mut rx) = queue(100);
        assert!(rx.poll_recv(&mut cx).is_pending());
        tx.send((0..50).map(|_| marker()).collect()).unwrap();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "one wake-up for the batch"
        );
        drop(tx);
        let mut taken = 0;
        while let Poll::Ready(Some(_)) = rx.poll_recv(&mut cx) {
            taken += 1;
        }
        assert_eq!(taken, 50);
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn a_send_to_a_dropped_receiver_fails_and_counts_nothing() {
        let (tx, rx) = queue(4);
        drop(rx);
        assert!(tx.is_closed());
        assert!(tx.send(vec![marker()]).is_err());
        assert_eq!(tx.room(), 4);
    }
}
