//! End-to-end delivery for outputs that must not lose changes (the AMQP output).
//!
//! Ordinary subscribers are never waited for: one that falls behind gets a resync. A
//! *reliable* output is different: it receives every change through an unbounded queue
//! and confirms, in `seq` order, each change once it is safe (for AMQP: once the broker
//! confirmed the publish). Producers wait for that confirmation before they let go of
//! their source:
//!
//! - a bus plugin's push completes, and so the plugin acknowledges the upstream message,
//!   only when every reliable output confirmed the batch's changes;
//! - a collector does not poll again until its last snapshot's changes are confirmed.
//!
//! When an output's broker goes away, producers therefore stop (back-pressure): messages
//! stay unacknowledged upstream and polls wait, instead of changes piling up or being
//! lost. The queue between hub and output holds at most what producers have in flight.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The reliable outputs' confirmation marks; shared by the hub and the producers.
#[derive(Default)]
pub struct Deliveries {
    marks: Mutex<Vec<Mark>>,
}

struct Mark {
    name: Arc<str>,
    confirmed: watch::Receiver<u64>,
}

/// An output's handle for confirming changes, in `seq` order.
#[derive(Debug)]
pub struct Confirmer {
    tx: watch::Sender<u64>,
}

impl Confirmer {
    /// Every change up to and including `seq` is safe.
    pub fn confirm(&self, seq: u64) {
        self.tx.send_if_modified(|v| {
            let newer = seq > *v;
            if newer {
                *v = seq;
            }
            newer
        });
    }

    /// The last confirmed `seq`.
    pub fn confirmed(&self) -> u64 {
        *self.tx.borrow()
    }
}

/// A reliable output stopped before it confirmed a change.
#[derive(Debug, thiserror::Error)]
#[error("the output `{output}` stopped before it confirmed change {seq}")]
pub struct Undelivered {
    /// The output.
    pub output: Arc<str>,
    /// The change that was not confirmed.
    pub seq: u64,
}

impl Deliveries {
    /// Registers an output whose confirmations start after `last_seq` (every earlier
    /// change counts as delivered for it).
    pub(crate) fn register(&self, name: &str, last_seq: u64) -> Confirmer {
        let (tx, rx) = watch::channel(last_seq);
        if let Ok(mut marks) = self.marks.lock() {
            marks.push(Mark {
                name: Arc::from(name),
                confirmed: rx,
            });
        }
        Confirmer { tx }
    }

    /// Whether any reliable output is registered.
    pub fn any(&self) -> bool {
        self.marks.lock().map(|m| !m.is_empty()).unwrap_or(false)
    }

    /// The lowest `seq` every reliable output but `name` confirmed; `None` when there
    /// is no other.
    pub fn confirmed_except(&self, name: &str) -> Option<u64> {
        let marks = self.marks.lock().ok()?;
        marks
            .iter()
            .filter(|m| &*m.name != name)
            .map(|m| *m.confirmed.borrow())
            .min()
    }

    /// Completes when every reliable output confirmed every change up to `seq`.
    /// Fails when one of them stopped first.
    pub async fn delivered(&self, seq: u64) -> Result<(), Undelivered> {
        let marks: Vec<(Arc<str>, watch::Receiver<u64>)> = match self.marks.lock() {
            Ok(m) => m
                .iter()
                .map(|m| (m.name.clone(), m.confirmed.clone()))
                .collect(),
            Err(_) => return Ok(()),
        };
        for (output, mut rx) in marks {
            if rx.wait_for(|v| *v >= seq).await.is_err() {
                return Err(Undelivered { output, seq });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn delivered_waits_for_every_output_in_order() {
        let d = Arc::new(Deliveries::default());
        assert!(!d.any());
        d.delivered(7)
            .await
            .expect("no output: nothing to wait for");
        let a = d.register("a", 3);
        let b = d.register("b", 3);
        d.delivered(3).await.expect("registered after 3");
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.delivered(5).await }
        });
        a.confirm(5);
        b.confirm(4);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "b has not confirmed 5 yet");
        b.confirm(6);
        waiter.await.expect("join").expect("both confirmed");
        a.confirm(2);
        assert_eq!(a.confirmed(), 5, "confirmations never go back");
    }

    #[tokio::test]
    async fn an_output_that_stops_fails_its_waiters() {
        let d = Deliveries::default();
        let a = d.register("amqp", 0);
        drop(a);
        let err = d.delivered(1).await.expect_err("stopped output");
        assert_eq!(&*err.output, "amqp");
        assert_eq!(err.seq, 1);
    }
}
