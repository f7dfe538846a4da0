//! For the bus plugin's tests only (feature `testing`, which its dev-dependency on
//! itself turns on): a configuration of its own for each test (exchanges, topics,
//! dead-letter names, fast reconnects), a sink that records what the plugin pushes, and
//! the test log. Here rather than in the test kit: a kit that linked this crate would put
//! two plugins' exported root modules into every test that also links another plugin
//! (one `cargo build --workspace` unifies the kit's features), and the link fails.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use synchronizer_plugin_api::{Change, Entity};

use crate::Config;
use crate::config::Subscription;

/// The test broker (scripts/rabbitmq/ensure.sh), as the test kit has it.
const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A bus configuration for one test: its own exchange(s) and topics, fast reconnects,
/// its own dead-letter exchange and queue.
pub fn config(subscriptions: Vec<Subscription>, tag: &str) -> Config {
    let mut c = Config::with_urls([BROKER]);
    c.subscriptions = subscriptions;
    c.reconnect_initial = Duration::from_millis(50);
    c.reconnect_max = Duration::from_millis(500);
    c.dead_letter.exchange = format!("{tag}.dlx");
    c.dead_letter.queue = format!("{tag}.dlq");
    c.dead_letter.durable = false;
    c.connection_name = tag.to_owned();
    c
}

/// A subscription to `topic` on `exchange`.
pub fn subscription(exchange: &str, topic: &str) -> Subscription {
    Subscription {
        exchange: exchange.into(),
        topics: vec![topic.into()],
        priorities: None,
        queue: None,
    }
}

/// What a recording sink received.
#[derive(Clone, Debug, PartialEq)]
pub enum Got {
    /// An upsert of this entity.
    Upsert(Entity),
    /// A deletion of this entity.
    Delete(Entity),
}

impl Got {
    /// The entity upserted or deleted.
    pub fn entity(&self) -> &Entity {
        match self {
            Got::Upsert(e) | Got::Delete(e) => e,
        }
    }
    /// Whether it is a deletion.
    pub fn is_delete(&self) -> bool {
        matches!(self, Got::Delete(_))
    }
}

/// A sink that records every change, optionally slowly, optionally failing.
#[derive(Clone, Default)]
pub struct RecordingSink {
    /// Every change pushed and accepted, in order.
    pub got: Arc<Mutex<Vec<Got>>>,
    /// The size of every push, in order (refused ones too).
    pub batches: Arc<Mutex<Vec<usize>>>,
    /// How long each push takes.
    pub delay: Option<Duration>,
    /// Fail the n-th push (1-based) and every one after it.
    pub fail_from: Option<usize>,
}

impl RecordingSink {
    /// A sink whose every push takes `delay`.
    pub fn slow(delay: Duration) -> Self {
        RecordingSink {
            delay: Some(delay),
            ..Default::default()
        }
    }
    /// The changes accepted so far.
    pub fn changes(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
    /// How many changes were accepted so far.
    pub fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }
    /// Whether no change was accepted yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl crate::ChangeSink for RecordingSink {
    async fn push(&self, batch: Vec<Change>) -> Result<(), synchronizer_plugin_api::Error> {
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        let n = {
            let mut b = self.batches.lock().unwrap();
            b.push(batch.len());
            b.len()
        };
        if self.fail_from.is_some_and(|f| n >= f) {
            return Err(synchronizer_plugin_api::Error::failed("test sink refuses"));
        }
        let mut got = self.got.lock().unwrap();
        for c in batch {
            got.push(match c {
                Change::Upsert(e) => Got::Upsert(e),
                Change::Delete(e) => Got::Delete(e),
            });
        }
        Ok(())
    }
}

/// A fresh instance uuid: number `n` of the test with `prefix`.
pub fn uuid(prefix: u32, n: u32) -> String {
    format!("{prefix:08x}-0000-4000-8000-{n:012x}")
}

/// Installs a test log subscriber once (RUST_LOG controls it).
pub fn logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}
