//! The running AMQP output (feature `amqp`): a publisher task per output, with
//! publisher confirms, reconnection and a bounded drain ([module docs](super)).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use synchronizer_plugin_api::redact::{Secrets, redact_url};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{AmqpOutputConfig, AmqpOutputError, routing_key};
use crate::backoff::Backoff;
use crate::change::Change;
use crate::delivery::Confirmer;
use crate::hub::{Hub, TypeFilter};
use crate::metrics::{Metrics, OutputLabels};

impl AmqpOutputConfig {
    /// Checks the settings that can be checked without a broker; returns the parsed URL.
    pub fn check(&self) -> Result<AMQPUri, AmqpOutputError> {
        let uri: AMQPUri = self.url.parse().map_err(|e: String| AmqpOutputError::Url {
            name: self.name.clone(),
            url: redact_url(&self.url),
            reason: scrub(&e, &self.url),
        })?;
        if self.max_unconfirmed == 0 {
            return Err(AmqpOutputError::Invalid {
                name: self.name.clone(),
                field: "max_unconfirmed",
                reason: "must be at least 1",
            });
        }
        if self.exchange.is_empty() {
            return Err(AmqpOutputError::Invalid {
                name: self.name.clone(),
                field: "exchange",
                reason: "must not be empty (the default exchange cannot route by topic)",
            });
        }
        Ok(uri)
    }
}

/// A running AMQP output: drain it with [`AmqpOutput::finish`] after the producers have
/// stopped.
pub struct AmqpOutput {
    name: String,
    drain: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// The longest a drain may take.
    limit: Duration,
}

/// The longest [`AmqpOutput::finish`] waits: the drain, plus one connection attempt and
/// one confirmation that may be under way when it ends, plus a margin.
fn config_limit(config: &AmqpOutputConfig) -> Duration {
    config.drain_timeout + config.connect_timeout + config.confirm_timeout + Duration::from_secs(1)
}

impl AmqpOutput {
    /// Checks the configuration, registers the output with the hub (every change from now
    /// on is published) and starts it.
    pub fn start(config: AmqpOutputConfig, hub: &Hub) -> Result<AmqpOutput, AmqpOutputError> {
        let mut uri = config.check()?;
        // The TCP connect itself gives up in time too (lapin's own timeout): a connection
        // attempt abandoned by our timeout would leave lapin's I/O thread behind.
        if uri.query.connection_timeout.is_none() {
            uri.query.connection_timeout =
                Some(u64::try_from(config.connect_timeout.as_millis()).unwrap_or(u64::MAX));
        }
        let ca_pem =
            match &config.ca_file {
                Some(path) => Some(std::fs::read_to_string(path).map_err(|source| {
                    AmqpOutputError::CaFile {
                        name: config.name.clone(),
                        path: path.clone(),
                        source,
                    }
                })?),
                None => None,
            };
        let (rx, confirmer) = hub.subscribe_reliable(&config.name);
        let drain = CancellationToken::new();
        let name = config.name.clone();
        let publisher = Publisher {
            filter: TypeFilter::new(&config.types),
            run: hub.epoch().clone(),
            config,
            uri,
            ca_pem,
            rx,
            confirmer,
            metrics: hub.metrics().clone(),
            unconfirmed: VecDeque::new(),
        };
        let limit = config_limit(&publisher.config);
        let task = tokio::spawn({
            let (drain, name) = (drain.clone(), name.clone());
            async move {
                let run = std::panic::AssertUnwindSafe(publisher.run(drain));
                if futures::FutureExt::catch_unwind(run).await.is_err() {
                    // Its confirmer is gone with it: every producer waiting on it now
                    // fails (bus pushes are refused, nothing is made durable) until a
                    // restart. Say so loudly, once.
                    tracing::error!(output = %name, "the output stopped after a panic: changes are no longer confirmed; restart the synchronizer");
                }
            }
        });
        Ok(AmqpOutput {
            name,
            drain,
            task,
            limit,
        })
    }

    /// Publishes what is left (the producers have stopped), waits for its confirmations
    /// up to the output's `drain_timeout`, and closes the connection. Returns within
    /// `drain_timeout` plus the connect and confirm timeouts, whatever the broker does.
    pub async fn finish(self) {
        self.drain.cancel();
        let abort = self.task.abort_handle();
        match tokio::time::timeout(self.limit, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(output = %self.name, error = %e, "the output's task failed")
            }
            Err(_) => {
                abort.abort();
                tracing::error!(output = %self.name, "the output did not stop in time; abandoned");
            }
        }
    }
}

/// A change taken from the hub and not yet confirmed; `None` for a change of a type this
/// output does not publish (it is confirmed when its turn comes).
struct Unconfirmed {
    seq: u64,
    change: Option<Arc<Change>>,
}

type ConfirmFuture = BoxFuture<'static, Result<(), String>>;

struct Publisher {
    config: AmqpOutputConfig,
    uri: AMQPUri,
    ca_pem: Option<String>,
    filter: TypeFilter,
    run: Arc<str>,
    rx: mpsc::UnboundedReceiver<Arc<Change>>,
    confirmer: Confirmer,
    metrics: Arc<Metrics>,
    /// In `seq` order; kept until confirmed, published again after a reconnection.
    unconfirmed: VecDeque<Unconfirmed>,
}

/// How a session with the broker ended.
enum Ended {
    /// Everything was published and confirmed after the drain began.
    Drained,
    /// The drain deadline passed.
    DeadlinePassed,
}

impl Publisher {
    fn labels(&self) -> OutputLabels {
        OutputLabels {
            output: self.config.name.clone(),
        }
    }

    async fn run(mut self, drain: CancellationToken) {
        let labels = self.labels();
        let mut backoff =
            Backoff::new(self.config.reconnect_initial, self.config.reconnect_max).with_jitter(0.2);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            if drain.is_cancelled() && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + self.config.drain_timeout);
            }
            if deadline.is_some() && self.unconfirmed.is_empty() && self.rx.is_empty() {
                break;
            }
            let result = match self.connect().await {
                Ok(conn) => {
                    let r = self
                        .session(&conn, &drain, &mut deadline, &mut backoff)
                        .await;
                    self.metrics.output_connected.get_or_create(&labels).set(0);
                    let close = conn.close(200, "synchronizer output closing");
                    let _ = tokio::time::timeout(self.config.confirm_timeout, close).await;
                    r
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(Ended::Drained) => break,
                Ok(Ended::DeadlinePassed) => {
                    self.give_up();
                    return;
                }
                Err(error) => {
                    self.metrics.output_failures.get_or_create(&labels).inc();
                    self.metrics.output_unconfirmed.get_or_create(&labels).set(
                        i64::try_from(self.unconfirmed.len() + self.rx.len()).unwrap_or(i64::MAX),
                    );
                    let delay = backoff.failure();
                    tracing::warn!(
                        output = %self.config.name,
                        url = %redact_url(&self.config.url),
                        %error,
                        unconfirmed = self.unconfirmed.len(),
                        retry_in_ms = delay.as_millis() as u64,
                        "output cannot publish; changes wait (producers are held back)"
                    );
                    let until = tokio::time::Instant::now() + delay;
                    let until = deadline.map_or(until, |d| d.min(until));
                    // While waiting, changes this output does not publish still count as
                    // delivered as long as none it publishes waits before them.
                    self.settle_unpublished();
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => break,
                            _ = drain.cancelled(), if deadline.is_none() => break,
                            Some(change) = self.rx.recv(), if self.unconfirmed.is_empty() => {
                                self.take(change);
                            }
                        }
                    }
                    if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        self.give_up();
                        return;
                    }
                }
            }
        }
        tracing::info!(output = %self.config.name, "output drained and closed");
    }

    /// Takes a change from the hub while there is no connection: one this output does not
    /// publish, with nothing unconfirmed before it, is confirmed at once.
    fn take(&mut self, change: Arc<Change>) {
        let publish = self.filter.matches(change.entity.entity_type());
        if !publish && self.unconfirmed.is_empty() {
            self.confirmer.confirm(change.seq);
        } else {
            self.unconfirmed.push_back(Unconfirmed {
                seq: change.seq,
                change: publish.then_some(change),
            });
        }
    }

    /// Confirms the changes at the front that this output does not publish, and takes
    /// what is queued up to the first change it does publish.
    fn settle_unpublished(&mut self) {
        while self.unconfirmed.front().is_some_and(|u| u.change.is_none()) {
            if let Some(u) = self.unconfirmed.pop_front() {
                self.confirmer.confirm(u.seq);
            }
        }
        while self.unconfirmed.is_empty() {
            match self.rx.try_recv() {
                Ok(change) => self.take(change),
                Err(_) => break,
            }
        }
    }

    fn give_up(&self) {
        let left = self.unconfirmed.len() + self.rx.len();
        if left > 0 {
            tracing::error!(
                output = %self.config.name,
                unconfirmed = left,
                "output stopped with changes its broker never confirmed"
            );
        }
    }

    async fn connect(&self) -> Result<Connection, String> {
        let props = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio)
            .with_connection_name(format!("synchronizer output {}", self.config.name).into());
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca_pem.clone(),
        };
        let attempt = Connection::connect_uri_with_config(self.uri.clone(), props, tls);
        match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(scrub(&format!("cannot connect: {e}"), &self.config.url)),
            Err(_) => Err(format!(
                "cannot connect: no answer within {:?}",
                self.config.connect_timeout
            )),
        }
    }

    /// Publishes on one connection until the drain is done or the connection breaks.
    async fn session(
        &mut self,
        conn: &Connection,
        drain: &CancellationToken,
        deadline: &mut Option<tokio::time::Instant>,
        backoff: &mut Backoff,
    ) -> Result<Ended, String> {
        let broken = |what: &'static str| move |e: lapin::Error| format!("{what}: {e}");
        let channel = conn
            .create_channel()
            .await
            .map_err(broken("opening a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broken("enabling publisher confirms"))?;
        channel
            .exchange_declare(
                &self.config.exchange,
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("declaring exchange `{}`: {e}", self.config.exchange))?;
        let labels = self.labels();
        self.metrics.output_connected.get_or_create(&labels).set(1);
        tracing::info!(
            output = %self.config.name,
            url = %redact_url(&self.config.url),
            exchange = %self.config.exchange,
            republishing = self.unconfirmed.len(),
            "output connected"
        );
        // What the last connection left unconfirmed goes out again first, in order.
        let mut confirms: FuturesOrdered<ConfirmFuture> = FuturesOrdered::new();
        for u in &self.unconfirmed {
            confirms.push_back(self.publish(&channel, u.change.as_ref()).await?);
        }
        loop {
            if drain.is_cancelled() && deadline.is_none() {
                *deadline = Some(tokio::time::Instant::now() + self.config.drain_timeout);
            }
            if deadline.is_some() && self.unconfirmed.is_empty() && self.rx.is_empty() {
                return Ok(Ended::Drained);
            }
            let room = self.unconfirmed.len() < self.config.max_unconfirmed;
            let until = deadline.unwrap_or_else(far_future);
            tokio::select! {
                biased;
                Some(result) = confirms.next() => {
                    result?;
                    // Only a confirmation proves the connection works: a broker that
                    // accepts connections and then refuses every change keeps backing off.
                    backoff.success();
                    if let Some(done) = self.unconfirmed.pop_front() {
                        tracing::trace!(output = %self.config.name, seq = done.seq, "confirmed");
                        if done.change.is_some() {
                            self.metrics.output_published.get_or_create(&labels).inc();
                        }
                        self.confirmer.confirm(done.seq);
                    }
                }
                Some(change) = self.rx.recv(), if room => {
                    let seq = change.seq;
                    let change = self
                        .filter
                        .matches(change.entity.entity_type())
                        .then_some(change);
                    // Kept before publishing: when the publish fails, the next
                    // connection publishes it again with the rest.
                    self.unconfirmed.push_back(Unconfirmed {
                        seq,
                        change: change.clone(),
                    });
                    confirms.push_back(self.publish(&channel, change.as_ref()).await?);
                    tracing::trace!(output = %self.config.name, seq, "published");
                }
                _ = drain.cancelled(), if deadline.is_none() => {}
                _ = tokio::time::sleep_until(until) => return Ok(Ended::DeadlinePassed),
            }
            self.metrics
                .output_unconfirmed
                .get_or_create(&labels)
                .set(i64::try_from(self.unconfirmed.len() + self.rx.len()).unwrap_or(i64::MAX));
        }
    }

    /// Publishes one change (or, for `None`, nothing) and returns the future of its
    /// confirmation.
    async fn publish(
        &self,
        channel: &Channel,
        change: Option<&Arc<Change>>,
    ) -> Result<ConfirmFuture, String> {
        let Some(change) = change else {
            return Ok(Box::pin(async { Ok(()) }));
        };
        let routing_key = routing_key(change.entity.entity_type(), change.action.as_str());
        let body = crate::output::change_to_json(change);
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(format!("{}@{}", change.seq, self.run)))
            .with_timestamp(u64::try_from(change.sampled_us / 1_000_000).unwrap_or(0))
            .with_app_id(ShortString::from("synchronizer"));
        let timeout = self.config.confirm_timeout;
        // Bounded: a broker that blocks publishers (a memory or disk alarm) stops reading.
        let publish = channel.basic_publish(
            &self.config.exchange,
            &routing_key,
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        );
        let confirm = match tokio::time::timeout(timeout, publish).await {
            Ok(Ok(confirm)) => confirm,
            Ok(Err(e)) => return Err(format!("publishing: {e}")),
            Err(_) => return Err(format!("publishing: not sent within {timeout:?}")),
        };
        Ok(Box::pin(async move {
            match tokio::time::timeout(timeout, confirm).await {
                Ok(Ok(Confirmation::Ack(_))) => Ok(()),
                Ok(Ok(Confirmation::Nack(_))) => Err(
                    "the broker refused a change (nack: a queue bound to the exchange rejects publishes, or the broker failed to store it)".into(),
                ),
                Ok(Ok(Confirmation::NotRequested)) => Ok(()),
                Ok(Err(e)) => Err(format!("waiting for a confirmation: {e}")),
                Err(_) => Err(format!("no confirmation within {timeout:?}")),
            }
        }))
    }
}

/// Removes the URL's password from a message that may quote it.
fn scrub(message: &str, url: &str) -> String {
    Secrets::of_url(url).scrub(message)
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_url_or_setting_is_refused_naming_the_output() {
        let hub = Hub::new(Duration::from_secs(1));
        let mut cfg: AmqpOutputConfig =
            serde_json::from_value(serde_json::json!({ "url": "http://x:pw@host/" }))
                .expect("config");
        let err = AmqpOutput::start(cfg.clone(), &hub)
            .err()
            .expect("not an AMQP URL");
        let text = err.to_string();
        assert!(text.starts_with("output `amqp`: url "), "{text}");
        assert!(!text.contains("pw@"), "{text}");
        cfg.url = "amqp://127.0.0.1:1/".into();
        cfg.max_unconfirmed = 0;
        let err = AmqpOutput::start(cfg, &hub).err().expect("zero window");
        assert_eq!(
            err.to_string(),
            "output `amqp`: max_unconfirmed: must be at least 1"
        );
    }
}
