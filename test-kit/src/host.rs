//! The host as a library in a test: a config on the build's plugins, waiting for the
//! first snapshot and for an instance's status, and the changes a subscriber was sent,
//! in the forms the tests compare (`(action, key or id, state)`).

use std::time::{Duration, Instant};

use synchronizer::status::InstanceStatus;
use synchronizer::{Action, Event, Subscription, Synchronizer};
use synchronizer_plugin_api::Entity;

use crate::paths::plugins_dir;

/// A change as the tests compare it: its action, the entity's key (or id) and state.
pub type Seen = (Action, String, Option<String>);

/// A config whose plugins directory is the build's ([`plugins_dir`]), with `body` after
/// it; fails the test when it does not parse.
pub fn config(body: &str) -> synchronizer::Config {
    let text = format!(
        "plugins_dir = {:?}\n{body}",
        plugins_dir().display().to_string()
    );
    match synchronizer::Config::from_toml(&text) {
        Ok(c) => c,
        Err(e) => panic!("test config does not parse: {e}\n{text}"),
    }
}

/// Waits (10 s at most) until the host's initial snapshot is complete.
pub async fn ready(sync: &Synchronizer) {
    ready_within(sync, Duration::from_secs(10)).await
}

/// Waits (`within` at most) until the host's initial snapshot is complete: real services
/// answer their first poll more slowly than the loopback ones.
pub async fn ready_within(sync: &Synchronizer, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while !sync.ready() {
        if std::time::Instant::now() >= deadline {
            panic!("the initial snapshot did not complete: {:?}", sync.status());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status of instance `name` (fails the test when there is none).
pub fn status_of(sync: &Synchronizer, name: &str) -> InstanceStatus {
    sync.status()
        .into_iter()
        .find(|r| r.name == name)
        .map(|r| r.status)
        .unwrap_or_else(|| panic!("no instance {name}"))
}

/// Waits until the status of instance `name` satisfies `pred`, and returns it; fails the
/// test after `within`, saying it never became `what`.
pub async fn wait_status(
    sync: &Synchronizer,
    name: &str,
    what: &str,
    within: Duration,
    pred: impl Fn(&InstanceStatus) -> bool,
) -> InstanceStatus {
    let end = Instant::now() + within;
    loop {
        let s = status_of(sync, name);
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < end, "{name} never became {what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next event within `within`, or a panic saying what was awaited.
pub async fn next_event(sub: &mut Subscription, within: Duration, what: &str) -> Event {
    match tokio::time::timeout(within, sub.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("subscription closed while waiting for {what}"),
        Err(_) => panic!("no event within {within:?} while waiting for {what}"),
    }
}

/// Where a test reads events from without waiting: a [`Subscription`], or the receiver
/// of a subscriber added to the hub by hand.
pub trait Queued {
    /// The next event queued now, if any.
    fn next_queued(&mut self) -> Option<Event>;
}

impl Queued for Subscription {
    fn next_queued(&mut self) -> Option<Event> {
        self.try_recv()
    }
}

impl Queued for synchronizer::queue::QueueRx {
    fn next_queued(&mut self) -> Option<Event> {
        self.try_recv()
    }
}

/// What [`drain`] and its kin name an entity by.
fn key(e: &Entity) -> String {
    e.key()
}

fn id(e: &Entity) -> String {
    e.id().to_owned()
}

/// The changes queued now, named by `name`; with `strict`, any other event (a resync, a
/// snapshot) fails the test, else it is passed over.
fn take(q: &mut impl Queued, name: fn(&Entity) -> String, strict: bool) -> Vec<Seen> {
    let mut out = Vec::new();
    while let Some(event) = q.next_queued() {
        match event {
            Event::Change(c) => out.push((
                c.action,
                name(&c.entity),
                c.entity.state().map(str::to_owned),
            )),
            other if strict => panic!("unexpected event {other:?}"),
            _ => {}
        }
    }
    out
}

/// `seen` sorted (stably) by key or id.
pub fn by_name(mut seen: Vec<Seen>) -> Vec<Seen> {
    seen.sort_by(|a, b| a.1.cmp(&b.1));
    seen
}

/// Every change queued now as `(action, key, state)`, sorted by key; any other event
/// fails the test.
pub fn drain(q: &mut impl Queued) -> Vec<Seen> {
    by_name(take(q, key, true))
}

/// [`drain`], with entities named by id.
pub fn drain_ids(q: &mut impl Queued) -> Vec<Seen> {
    by_name(take(q, id, true))
}

/// Every change queued now as `(action, key, state)`, in the order sent; other events
/// (a snapshot, a resync) are passed over.
pub fn queued(q: &mut impl Queued) -> Vec<Seen> {
    take(q, key, false)
}

/// [`queued`], with entities named by id.
pub fn queued_ids(q: &mut impl Queued) -> Vec<Seen> {
    take(q, id, false)
}
