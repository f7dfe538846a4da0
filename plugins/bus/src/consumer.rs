//! The AMQP side: connecting (with failover across URLs, TLS and backoff), declaring the
//! exchanges and queues, consuming, batching, acknowledging and dead-lettering.
//!
//! Delivery guarantees:
//! - A message is acknowledged only after the host accepted the batch that carries its
//!   change (`sink.push(batch)` returned `Ok`); one `basic.ack` with `multiple` per
//!   batch. Each queue is consumed on a channel of its own, so a multiple ack never
//!   covers another queue's messages.
//! - When the connection drops, messages not acknowledged yet are redelivered by the
//!   broker; those that had reached the host already are recognised by their message id
//!   (see [`crate::dedup`]) and only acknowledged.
//! - A malformed message is dead-lettered, never dropped silently: rejected with
//!   `requeue=false` from a queue of our own (declared with `x-dead-letter-exchange`), or,
//!   from the queue oslo's publisher declares itself (which must keep oslo's arguments,
//!   see [`QueuePlan::publisher_declared`]), published to the dead-letter exchange with
//!   publisher confirms and then acknowledged.
//! - With the `heat` table, a batch with Heat stack upserts is pushed only once the
//!   stacks' resources are read from Heat (see [`crate::heat`]); when that fails the
//!   session ends with [`BusError::Heat`] (transient): nothing of the batch is
//!   acknowledged, the consumer reconnects with backoff and the broker redelivers it.
//! - On shutdown the consumers are cancelled, the messages already received are handed
//!   to the host and acknowledged (within `shutdown_grace`), and the connection is
//!   closed; anything still unacknowledged is redelivered to the next consumer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use synchronizer_plugin_api::{Change, Health};
use tokio_util::sync::CancellationToken;

use crate::config::{ArgValue, Config, QueuePlan};
use crate::dedup::{RecentIds, id_hash};
use crate::error::{BusError, ConfigError};
use crate::heat::Enricher;
use crate::mapping::{Families, Ignored, Interpretation, Malformed, interpret_message};
use crate::stats::{Stats, StatsSnapshot};
use synchronizer_plugin_api::redact::{Secrets, redact_url};

/// Where changes go. The plugin hands them to the host's [`synchronizer_plugin_api::Sink`];
/// tests and embedders may give their own.
pub trait ChangeSink: Clone + Send + Sync + 'static {
    /// Hands over a batch; resolves when it has been accepted.
    fn push(
        &self,
        batch: Vec<Change>,
    ) -> impl Future<Output = Result<(), synchronizer_plugin_api::Error>> + Send;
}

impl ChangeSink for synchronizer_plugin_api::Sink {
    fn push(
        &self,
        batch: Vec<Change>,
    ) -> impl Future<Output = Result<(), synchronizer_plugin_api::Error>> + Send {
        synchronizer_plugin_api::Sink::push(self, batch)
    }
}

/// TLS material read once, when the instance is created.
#[derive(Clone, Default)]
struct Tls {
    ca_pem: Option<String>,
    identity: Option<(Vec<u8>, String)>,
}

impl Tls {
    fn owned(&self) -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: self.identity.as_ref().map(|(der, password)| OwnedIdentity {
                der: der.clone(),
                password: password.clone(),
            }),
            cert_chain: self.ca_pem.clone(),
        }
    }
}

/// The consumer: configuration, counters and the recent-id set, shared by runs.
pub struct Bus {
    config: Config,
    instance: String,
    uris: Vec<AMQPUri>,
    secrets: Vec<Secrets>,
    tls: Tls,
    queues: Vec<QueuePlan>,
    families: Families,
    stats: Arc<Stats>,
    dedup: Arc<Mutex<RecentIds>>,
    last_good: AtomicUsize,
    last_error: Mutex<Option<String>>,
    /// With the `heat` table: reads notified stacks' resources.
    heat: Option<Enricher>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("instance", &self.instance)
            .field(
                "urls",
                &self
                    .config
                    .urls
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything one consumer task needs.
struct QueueCtx {
    plan: QueuePlan,
    channel: Channel,
    consumer_tag: String,
    /// Reject malformed messages (the broker dead-letters them) instead of republishing.
    reject_mode: bool,
}

impl Bus {
    /// Checks the configuration and reads its files.
    pub fn new(config: Config, instance: &str) -> Result<Bus, ConfigError> {
        let uris = config.validate()?;
        let client_password = config.client_cert_password.clone().unwrap_or_default();
        let secrets = config
            .urls
            .iter()
            .map(|u| Secrets::of_url(u).with(&client_password))
            .collect();
        let mut tls = Tls::default();
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                field: "ca_file",
                path: path.display().to_string(),
                source,
            })?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(ConfigError::invalid(
                    "ca_file",
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            tls.ca_pem = Some(pem);
        }
        if let Some(path) = &config.client_cert_file {
            let der = std::fs::read(path).map_err(|source| ConfigError::File {
                field: "client_cert_file",
                path: path.display().to_string(),
                source,
            })?;
            tls.identity = Some((der, client_password));
        }
        let queues = config.queues()?;
        let heat = config.heat.as_ref().map(Enricher::new).transpose()?;
        Ok(Bus {
            heat,
            families: Families::of(&config.families),
            dedup: Arc::new(Mutex::new(RecentIds::new(config.dedup_capacity))),
            instance: instance.to_owned(),
            uris,
            secrets,
            tls,
            queues,
            config,
            stats: Arc::new(Stats::default()),
            last_good: AtomicUsize::new(0),
            last_error: Mutex::new(None),
        })
    }

    /// The counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The queues this instance consumes.
    pub fn queues(&self) -> &[QueuePlan] {
        &self.queues
    }

    /// Healthy while consuming; otherwise unhealthy, from the start (before the first
    /// connection, and whatever the host asks before `run`), with `not connected to
    /// <redacted url>: <why>` and the counters.
    pub fn health(&self) -> Health {
        let s = self.stats.snapshot();
        if s.connected {
            return Health {
                healthy: true,
                message: s.to_string(),
            };
        }
        let reason = lock(&self.last_error).clone().unwrap_or_else(|| {
            format!(
                "not connected to {}: no connection established yet",
                self.current_url()
            )
        });
        Health::unhealthy(format!("{reason} ({s})"))
    }

    /// The URL in use or tried next, redacted.
    fn current_url(&self) -> String {
        let n = self.config.urls.len().max(1);
        self.config
            .urls
            .get(self.last_good.load(Ordering::Relaxed) % n)
            .map(|u| redact_url(u))
            .unwrap_or_default()
    }

    /// What health reports after `e` ended a session: `not connected to <url>: <why>`.
    fn not_connected(&self, e: &BusError) -> String {
        match e {
            BusError::Connect { url, message } => format!("not connected to {url}: {message}"),
            other => format!("not connected to {}: {other}", self.current_url()),
        }
    }

    /// Consumes until `stop` is cancelled, reconnecting with backoff after failures.
    /// Returns an error only when the sink refuses a batch (the host's problem, which
    /// reconnecting cannot fix); the messages of that batch stay unacknowledged.
    pub async fn run<S: ChangeSink>(
        &self,
        sink: S,
        stop: CancellationToken,
    ) -> Result<(), BusError> {
        let mut failures: u32 = 0;
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let result = self.session(&sink, &stop).await;
            // Consuming had started: the failure that ended it starts a new series.
            let was_consuming = self.stats.connected.swap(false, Ordering::Relaxed);
            match result {
                Ok(()) => {
                    *lock(&self.last_error) =
                        Some(format!("not connected to {}: stopped", self.current_url()));
                    return Ok(());
                }
                Err(e) => {
                    *lock(&self.last_error) = Some(self.not_connected(&e));
                    if !e.is_transient() {
                        tracing::error!(instance = %self.instance, error = %e, "bus consumer stopped");
                        return Err(e);
                    }
                    failures = if was_consuming {
                        1
                    } else {
                        failures.saturating_add(1)
                    };
                    let delay = backoff(
                        self.config.reconnect_initial,
                        self.config.reconnect_max,
                        failures,
                    );
                    tracing::warn!(
                        instance = %self.instance,
                        error = %e,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        failures,
                        "bus consumer failed; reconnecting"
                    );
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// One connection's life: connect, set up, consume until stop or failure.
    async fn session<S: ChangeSink>(
        &self,
        sink: &S,
        stop: &CancellationToken,
    ) -> Result<(), BusError> {
        let conn = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            c = self.connect() => c?,
        };
        let result = self.consume(&conn, sink, stop).await;
        let reason = if result.is_ok() {
            "shutdown"
        } else {
            "consumer failure"
        };
        // Whatever is not acknowledged now is redelivered by the broker.
        if conn.status().connected() {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, reason)).await;
        }
        // Wait for the client's I/O thread to finish with the socket while this runtime
        // (whose reactor it uses) still runs.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::task::spawn_blocking(move || conn.run()),
        )
        .await;
        result
    }

    async fn connect(&self) -> Result<Connection, BusError> {
        let n = self.uris.len();
        let start = self.last_good.load(Ordering::Relaxed) % n.max(1);
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let url = &self.config.urls[i];
            let props = ConnectionProperties::default()
                .with_executor(tokio_executor_trait::Tokio::current())
                .with_reactor(tokio_reactor_trait::Tokio)
                .with_connection_name(LongString::from(self.config.connection_name.as_str()));
            let attempt =
                Connection::connect_uri_with_config(self.uris[i].clone(), props, self.tls.owned());
            let err = match tokio::time::timeout(self.config.connect_timeout, attempt).await {
                Ok(Ok(conn)) => {
                    self.last_good.store(i, Ordering::Relaxed);
                    self.stats.connections.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(instance = %self.instance, url = %redact_url(url), "connected to the broker");
                    return Ok(conn);
                }
                Ok(Err(e)) => BusError::connect(url, self.secrets[i].scrub(&e.to_string())),
                Err(_) => BusError::connect(
                    url,
                    format!("no answer within {:?}", self.config.connect_timeout),
                ),
            };
            tracing::debug!(instance = %self.instance, error = %err, "connection attempt failed");
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| BusError::connect("", "no broker URL".into())))
    }

    /// Declares everything, starts one consumer task per queue and waits for them.
    async fn consume<S: ChangeSink>(
        &self,
        conn: &Connection,
        sink: &S,
        stop: &CancellationToken,
    ) -> Result<(), BusError> {
        let setup = |what: String| {
            move |e: lapin::Error| BusError::Setup {
                what: what.clone(),
                message: e.to_string(),
            }
        };
        let dl = &self.config.dead_letter;
        let control = conn
            .create_channel()
            .await
            .map_err(setup("a channel".into()))?;
        control
            .exchange_declare(
                &dl.exchange,
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: dl.durable,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(setup(format!("dead-letter exchange `{}`", dl.exchange)))?;
        control
            .queue_declare(
                &dl.queue,
                QueueDeclareOptions {
                    durable: dl.durable,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(setup(format!("dead-letter queue `{}`", dl.queue)))?;
        control
            .queue_bind(
                &dl.queue,
                &dl.exchange,
                "",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(setup(format!("dead-letter binding `{}`", dl.queue)))?;
        // The channel malformed messages of publisher-declared queues are republished on.
        control
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(setup("publisher confirms".into()))?;

        // The services' exchanges: one that does not exist yet is declared below, and
        // said so (a subscription to an exchange nobody publishes on is healthy and
        // silent otherwise).
        let mut probed = std::collections::BTreeSet::new();
        for b in self.queues.iter().flat_map(|p| &p.bindings) {
            if probed.insert(b.exchange.as_str()) {
                self.probe_exchange(conn, &b.exchange).await?;
            }
        }

        let mut contexts = Vec::with_capacity(self.queues.len());
        for plan in &self.queues {
            let channel = conn
                .create_channel()
                .await
                .map_err(setup(format!("a channel for `{}`", plan.name)))?;
            channel
                .basic_qos(self.config.prefetch, BasicQosOptions::default())
                .await
                .map_err(setup(format!("prefetch of `{}`", plan.name)))?;
            for b in &plan.bindings {
                channel
                    .exchange_declare(
                        &b.exchange,
                        ExchangeKind::Topic,
                        ExchangeDeclareOptions {
                            durable: self.config.durable,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(setup(format!(
                        "exchange `{}` (is `durable` = {} what the publisher declares?)",
                        b.exchange, self.config.durable
                    )))?;
            }
            let reject_mode = !plan.publisher_declared();
            let mut args = queue_arguments(&self.config);
            if reject_mode {
                args.insert(
                    ShortString::from("x-dead-letter-exchange"),
                    AMQPValue::LongString(LongString::from(dl.exchange.as_str())),
                );
            }
            channel
                .queue_declare(
                    &plan.name,
                    QueueDeclareOptions {
                        durable: self.config.durable,
                        ..Default::default()
                    },
                    args,
                )
                .await
                .map_err(setup(format!(
                    "queue `{}` (do `durable` and `queue_arguments` match how it was declared?)",
                    plan.name
                )))?;
            for b in &plan.bindings {
                channel
                    .queue_bind(
                        &plan.name,
                        &b.exchange,
                        &b.routing_key,
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(setup(format!(
                        "binding {} -> `{}`",
                        b.routing_key, plan.name
                    )))?;
            }
            contexts.push(QueueCtx {
                consumer_tag: format!(
                    "{}:{}:{}",
                    self.config.connection_name, self.instance, plan.name
                ),
                plan: plan.clone(),
                channel,
                reject_mode,
            });
        }

        // Start every consumer only once everything is declared.
        let mut consumers = Vec::with_capacity(contexts.len());
        for ctx in &contexts {
            let consumer = ctx
                .channel
                .basic_consume(
                    &ctx.plan.name,
                    &ctx.consumer_tag,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(setup(format!("consumer of `{}`", ctx.plan.name)))?;
            consumers.push(consumer);
        }
        self.stats.connected.store(true, Ordering::Relaxed);
        *lock(&self.last_error) = None;
        tracing::info!(
            instance = %self.instance,
            queues = %self.queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>().join(","),
            prefetch = self.config.prefetch,
            "consuming"
        );

        let control = &control;
        let tasks = contexts
            .iter()
            .zip(consumers)
            .map(|(ctx, consumer)| self.consume_queue(ctx, consumer, control, sink, stop));
        // The first failure ends the session: the other consumers' futures are dropped
        // and their unacknowledged messages go back to the queue with their channel.
        let result = futures::future::try_join_all(tasks).await.map(drop);
        // Channels are closed (close-ok awaited) before the connection, so that no reply
        // reaches a channel that is already going away.
        for channel in contexts.iter().map(|c| &c.channel).chain([control]) {
            if channel.status().connected() {
                let _ = tokio::time::timeout(Duration::from_secs(2), channel.close(200, "closing"))
                    .await;
            }
        }
        result
    }

    /// Checks with a passive declaration, on a channel of its own (a refused passive
    /// declaration closes its channel), whether a service's exchange exists; logs a
    /// warning when it does not, as the plugin is about to declare it itself.
    async fn probe_exchange(&self, conn: &Connection, exchange: &str) -> Result<(), BusError> {
        let probe = conn.create_channel().await.map_err(|e| BusError::Setup {
            what: "a channel".into(),
            message: e.to_string(),
        })?;
        let answer = probe
            .exchange_declare(
                exchange,
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match answer {
            Ok(()) => {
                tracing::debug!(instance = %self.instance, exchange, "exchange exists");
            }
            Err(e) if is_not_found(&e) => {
                let queues = self
                    .queues
                    .iter()
                    .filter(|q| q.bindings.iter().any(|b| b.exchange == exchange))
                    .map(|q| q.name.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                tracing::warn!(
                    instance = %self.instance,
                    exchange,
                    queues = %queues,
                    "exchange `{exchange}` did not exist, so the bus declared it: no service has published on it yet, and nothing arrives until one does. OpenStack services publish notifications on their oslo.messaging `control_exchange`, which defaults to `openstack` (Nova sets `nova`, Heat `heat`, Neutron `neutron`, Keystone `keystone`; Cinder and Glance keep `openstack`): check this subscription's `exchange` (the AMQP client's `Channel closed ... NOT_FOUND` error logged just before is this check's answer)"
                );
            }
            // Anything else (access refused...) the real declaration reports.
            Err(e) => {
                tracing::debug!(instance = %self.instance, exchange, error = %e, "passive declaration failed");
            }
        }
        if probe.status().connected() {
            let _ = tokio::time::timeout(Duration::from_secs(2), probe.close(200, "probed")).await;
        }
        Ok(())
    }

    /// Consumes one queue until stop (then drains what was received) or failure.
    async fn consume_queue<S: ChangeSink>(
        &self,
        ctx: &QueueCtx,
        consumer: lapin::Consumer,
        control: &Channel,
        sink: &S,
        stop: &CancellationToken,
    ) -> Result<(), BusError> {
        let mut acks = AckPipe {
            channel: &ctx.channel,
            stats: &self.stats,
            every: self.config.batch_size as u64,
            waiting: None,
            pending: Vec::new(),
        };
        self.consume_loop(ctx, consumer, control, sink, stop, &mut acks)
            .await?;
        acks.flush().await
    }

    async fn consume_loop<'c, S: ChangeSink>(
        &self,
        ctx: &'c QueueCtx,
        consumer: lapin::Consumer,
        control: &Channel,
        sink: &S,
        stop: &CancellationToken,
        acks: &mut AckPipe<'c>,
    ) -> Result<(), BusError> {
        let mut chunks = consumer.ready_chunks(self.config.batch_size);
        let mut stopping = false;
        // How many messages the last batch had: a busy queue lingers a little before the
        // next batch (see `LINGER`).
        let mut last_len = 0usize;
        let grace = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
        tokio::pin!(grace);
        loop {
            if !stopping && stop.is_cancelled() {
                stopping = true;
                grace
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.config.shutdown_grace);
                // After cancel-ok the stream yields what was already received, then ends.
                if let Err(e) = ctx
                    .channel
                    .basic_cancel(&ctx.consumer_tag, BasicCancelOptions::default())
                    .await
                {
                    tracing::debug!(queue = %ctx.plan.name, error = %e, "cancel failed; closing");
                    return Ok(());
                }
            }
            if !stopping && (LINGER_FROM..self.config.batch_size).contains(&last_len) {
                // Messages are streaming in: let the next batch gather for a moment
                // instead of taking a few at a time, each costing a hand-off to the host,
                // its subscribers and an ack. The acks go out first, so that the broker
                // keeps sending meanwhile.
                acks.send().await?;
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(LINGER) => {}
                }
            }
            let chunk = match chunks.next().now_or_never() {
                Some(chunk) => chunk,
                None => {
                    // Nothing more is ready: acknowledge what the host has taken before
                    // waiting (under load, acks go out once per `batch_size` messages).
                    acks.send().await?;
                    tokio::select! {
                        biased;
                        _ = stop.cancelled(), if !stopping => continue,
                        _ = &mut grace, if stopping => {
                            tracing::warn!(queue = %ctx.plan.name, "shutdown grace over; the rest is redelivered later");
                            return Ok(());
                        }
                        chunk = chunks.next() => chunk,
                    }
                }
            };
            let Some(chunk) = chunk else {
                if stopping {
                    return Ok(());
                }
                return Err(BusError::Lost {
                    doing: "consuming",
                    message: format!("the broker cancelled the consumer of `{}`", ctx.plan.name),
                });
            };
            last_len = chunk.len();
            let mut deliveries = Vec::with_capacity(chunk.len());
            let mut failure = None;
            for item in chunk {
                match item {
                    Ok(d) => deliveries.push(d),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if !deliveries.is_empty()
                && let Some((tag, n)) = self.handle_batch(ctx, control, deliveries, sink).await?
            {
                acks.accepted(tag, n).await?;
            }
            if let Some(e) = failure {
                return Err(BusError::Lost {
                    doing: "consuming",
                    message: e.to_string(),
                });
            }
        }
    }

    /// Interprets a batch, dead-letters the malformed messages and hands the changes to
    /// the sink. Returns the delivery tag that acknowledges the rest with one multiple
    /// ack, and how many messages that ack covers.
    async fn handle_batch<S: ChangeSink>(
        &self,
        ctx: &QueueCtx,
        control: &Channel,
        deliveries: Vec<Delivery>,
        sink: &S,
    ) -> Result<Option<(u64, u64)>, BusError> {
        Stats::add(&self.stats.received, deliveries.len() as u64);
        let mut changes = Vec::with_capacity(deliveries.len());
        let mut claims = Claims {
            dedup: &self.dedup,
            ids: Vec::new(),
        };
        let mut malformed: Vec<(usize, Malformed)> = Vec::new();
        let mut last_ok: Option<usize> = None;
        let mut to_ack = 0u64;
        let (mut duplicates, mut unknown, mut family_off) = (0u64, 0u64, 0u64);
        let interpreted: Vec<_> = deliveries
            .iter()
            .map(|d| {
                interpret_message(
                    &d.data,
                    compression_header(d).as_deref(),
                    self.config.max_decompressed_bytes,
                    self.families,
                )
            })
            .collect();
        {
            let mut recent = lock(&self.dedup);
            for (i, result) in interpreted.into_iter().enumerate() {
                let n = match result {
                    Ok(n) => n,
                    Err(m) => {
                        malformed.push((i, m));
                        continue;
                    }
                };
                last_ok = Some(i);
                to_ack += 1;
                if let Some(id) = &n.dedup_id {
                    let h = id_hash(id);
                    if !recent.insert(h) {
                        duplicates += 1;
                        tracing::debug!(queue = %ctx.plan.name, message_id = %id, event_type = %n.event_type, "duplicate dropped");
                        continue;
                    }
                    claims.ids.push(h);
                }
                match n.interpretation {
                    Interpretation::Change(c) => changes.push(c),
                    Interpretation::Ignored(Ignored::UnknownEvent) => {
                        unknown += 1;
                        tracing::debug!(queue = %ctx.plan.name, event_type = %n.event_type, "unknown event type acknowledged");
                    }
                    Interpretation::Ignored(Ignored::FamilyOff(f)) => {
                        family_off += 1;
                        tracing::debug!(queue = %ctx.plan.name, event_type = %n.event_type, family = f.as_str(), "event of a family that is off acknowledged");
                    }
                }
            }
        }
        Stats::add(&self.stats.duplicates, duplicates);
        Stats::add(&self.stats.unknown, unknown);
        Stats::add(&self.stats.family_off, family_off);

        // Settled one by one, before the multiple ack that could otherwise cover them.
        for (i, m) in &malformed {
            self.dead_letter(ctx, control, &deliveries[*i], m).await?;
        }

        // The resources of the stacks named (only with the `heat` table). On failure
        // nothing of the batch is pushed or acknowledged: the error ends the session and
        // the broker redelivers the messages after the reconnection's backoff.
        if let Some(heat) = &self.heat {
            changes = heat.enrich(changes).await?;
        }
        if !changes.is_empty() {
            let n = changes.len();
            sink.push(changes).await.map_err(|e| BusError::Sink {
                changes: n,
                message: e.to_string(),
            })?;
            Stats::add(&self.stats.changes, n as u64);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        // The host has the changes: a redelivery of these messages is a duplicate now.
        claims.commit();
        Ok(last_ok.map(|i| (deliveries[i].delivery_tag, to_ack)))
    }

    async fn dead_letter(
        &self,
        ctx: &QueueCtx,
        control: &Channel,
        d: &Delivery,
        m: &Malformed,
    ) -> Result<(), BusError> {
        let lost = |doing: &'static str| {
            move |e: lapin::Error| BusError::Lost {
                doing,
                message: e.to_string(),
            }
        };
        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            instance = %self.instance,
            queue = %ctx.plan.name,
            routing_key = %d.routing_key,
            delivery_tag = d.delivery_tag,
            event_type = m.event_type.as_deref().unwrap_or(""),
            message_id = m.message_id.as_deref().unwrap_or(""),
            reason = %m.reason,
            dead_letter_queue = %self.config.dead_letter.queue,
            "malformed message dead-lettered"
        );
        if ctx.reject_mode {
            return ctx
                .channel
                .basic_reject(d.delivery_tag, BasicRejectOptions { requeue: false })
                .await
                .map_err(lost("dead-lettering"));
        }
        let mut headers = d.properties.headers().clone().unwrap_or_default();
        let mut put = |k: &str, v: &str| {
            headers.insert(
                ShortString::from(k),
                AMQPValue::LongString(LongString::from(v)),
            );
        };
        put("x-synchronizer-reason", &m.reason);
        if let Some(id) = &m.message_id {
            put("x-synchronizer-message-id", id);
        }
        if let Some(event_type) = &m.event_type {
            put("x-synchronizer-event-type", event_type);
        }
        put("x-synchronizer-queue", &ctx.plan.name);
        put("x-synchronizer-exchange", d.exchange.as_str());
        put("x-synchronizer-routing-key", d.routing_key.as_str());
        let properties = d.properties.clone().with_headers(headers);
        let confirm = control
            .basic_publish(
                &self.config.dead_letter.exchange,
                d.routing_key.as_str(),
                BasicPublishOptions::default(),
                &d.data,
                properties,
            )
            .await
            .map_err(lost("dead-lettering"))?
            .await
            .map_err(lost("dead-lettering"))?;
        if let Confirmation::Nack(_) = confirm {
            return Err(BusError::Lost {
                doing: "dead-lettering",
                message: "the broker refused the dead-letter copy".into(),
            });
        }
        ctx.channel
            .basic_ack(d.delivery_tag, BasicAckOptions { multiple: false })
            .await
            .map_err(lost("acknowledging a dead-lettered message"))
    }
}

type AckFuture<'c> = Pin<Box<dyn Future<Output = lapin::Result<()>> + Send + 'c>>;

/// Acknowledgements of one channel.
///
/// The messages the host has accepted are acknowledged with one `multiple` ack once
/// `every` of them are waiting, or as soon as the queue has nothing more ready
/// ([`AckPipe::send`]); never before the host accepted them. An ack is handed to the
/// client at once and in order (lapin queues the frame on the future's first poll); its
/// completion (the client's I/O thread writing it) is only checked later, so consuming
/// never waits for that thread.
/// A batch of at least this many messages (and fewer than `batch_size`) means the queue
/// is busy: the next batch waits [`LINGER`] to gather more.
const LINGER_FROM: usize = 16;
/// How long a busy queue's next batch gathers. Under a steady trickle batches stay small
/// and nothing waits; in a burst a change is delayed by at most this (plus the timer's
/// millisecond resolution).
const LINGER: Duration = Duration::from_millis(1);

struct AckPipe<'c> {
    channel: &'c Channel,
    stats: &'c Stats,
    every: u64,
    /// The highest accepted delivery tag not acknowledged yet, and how many messages an
    /// ack with it covers.
    waiting: Option<(u64, u64)>,
    /// Acks queued in the client and not written yet.
    pending: Vec<AckFuture<'c>>,
}

impl<'c> AckPipe<'c> {
    /// Most acks left queued in the client before waiting for the oldest.
    const MAX_PENDING: usize = 64;

    /// Messages up to `tag` (`n` of them since the last ack) were accepted by the host.
    async fn accepted(&mut self, tag: u64, n: u64) -> Result<(), BusError> {
        let count = self.waiting.map_or(0, |(_, c)| c) + n;
        self.waiting = Some((tag, count));
        if count >= self.every {
            self.send().await?;
        }
        Ok(())
    }

    /// Acknowledges every accepted message now.
    async fn send(&mut self) -> Result<(), BusError> {
        let Some((tag, count)) = self.waiting.take() else {
            return Ok(());
        };
        self.reap().await?;
        if self.pending.len() >= Self::MAX_PENDING {
            let oldest = self.pending.remove(0);
            oldest.await.map_err(ack_lost)?;
        }
        let mut fut: AckFuture<'c> = Box::pin(
            self.channel
                .basic_ack(tag, BasicAckOptions { multiple: true }),
        );
        Stats::add(&self.stats.acked, count);
        match futures::poll!(fut.as_mut()) {
            Poll::Ready(r) => r.map_err(ack_lost),
            Poll::Pending => {
                self.pending.push(fut);
                Ok(())
            }
        }
    }

    /// Drops the acks already written; reports the first that failed.
    async fn reap(&mut self) -> Result<(), BusError> {
        let mut i = 0;
        while i < self.pending.len() {
            match futures::poll!(self.pending[i].as_mut()) {
                Poll::Ready(r) => {
                    // Finished: dropping it is all that is left to do.
                    drop(self.pending.remove(i));
                    r.map_err(ack_lost)?;
                }
                Poll::Pending => i += 1,
            }
        }
        Ok(())
    }

    /// Acknowledges every accepted message and waits until the client wrote the acks.
    async fn flush(&mut self) -> Result<(), BusError> {
        self.send().await?;
        for fut in self.pending.drain(..) {
            fut.await.map_err(ack_lost)?;
        }
        Ok(())
    }
}

fn ack_lost(e: lapin::Error) -> BusError {
    BusError::Lost {
        doing: "acknowledging",
        message: e.to_string(),
    }
}

/// Message ids claimed by a batch. Unless committed (the host accepted the batch), the
/// claims are withdrawn when this is dropped, on an error or when the consuming future
/// is dropped mid-push: the messages will be delivered again and must not be taken for
/// duplicates then.
struct Claims<'a> {
    dedup: &'a Mutex<RecentIds>,
    ids: Vec<u64>,
}

impl Claims<'_> {
    fn commit(&mut self) {
        self.ids.clear();
    }
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            let mut recent = lock(self.dedup);
            for h in self.ids.drain(..) {
                recent.remove(h);
            }
        }
    }
}

/// Whether the broker answered 404 NOT_FOUND.
fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e, lapin::Error::ProtocolError(a) if a.get_id() == 404)
}

/// The value of kombu's `compression` header ([`crate::compression::HEADER`]), if the
/// message has one. A value that is not a string is shown by its type, and refused as
/// an unknown method.
fn compression_header(d: &Delivery) -> Option<std::borrow::Cow<'_, str>> {
    let value = d
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(crate::compression::HEADER)?;
    Some(match value {
        AMQPValue::LongString(v) => String::from_utf8_lossy(v.as_bytes()),
        AMQPValue::ShortString(v) => std::borrow::Cow::Borrowed(v.as_str()),
        AMQPValue::Void => return None,
        other => std::borrow::Cow::Owned(format!("<{:?}>", other.get_type())),
    })
}

fn queue_arguments(config: &Config) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in &config.queue_arguments {
        let value = match v {
            ArgValue::Bool(b) => AMQPValue::Boolean(*b),
            ArgValue::Int(i) => AMQPValue::LongLongInt(*i),
            ArgValue::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        };
        t.insert(ShortString::from(k.as_str()), value);
    }
    t
}

/// The delay before reconnection attempt `failures` (1 = first): `initial` doubling up to
/// `max`, with up to 20 % of jitter so that many consumers do not reconnect in step.
pub fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = initial.saturating_mul(1u32 << exp).min(max);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = base.mul_f64(f64::from(nanos % 200) / 1000.0);
    base.saturating_add(jitter).min(max.max(initial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(2);
        let d1 = backoff(i, m, 1);
        assert!(d1 >= i && d1 <= i.mul_f64(1.2), "{d1:?}");
        let d3 = backoff(i, m, 3);
        assert!(d3 >= 4 * i && d3 <= (4 * i).mul_f64(1.2), "{d3:?}");
        assert_eq!(backoff(i, m, 30), m);
    }

    #[test]
    fn queue_arguments_keep_their_types() {
        let mut c = Config::with_urls(["amqp://h"]);
        c.queue_arguments
            .insert("x-queue-type".into(), ArgValue::String("quorum".into()));
        c.queue_arguments
            .insert("x-max-length".into(), ArgValue::Int(10));
        let t = queue_arguments(&c);
        let inner = t.inner();
        assert_eq!(
            inner.get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(inner.get("x-max-length"), Some(&AMQPValue::LongLongInt(10)));
    }
}
