//! The plugin author's side: an ordinary async Rust trait and plain types.
//!
//! Implement [`Plugin`] for a type, give it a serde `Config`, and call
//! [`crate::export_plugin!`] once. The SDK does the rest: it parses the instance's
//! configuration (errors name the instance and the field), owns a tokio runtime per
//! instance, forwards `tracing` events and panics to the host, catches every panic before
//! it reaches the boundary, and cancels the plugin's work when the host drops a call.
//!
//! # Keys
//!
//! An entity's key is `<type>:<native id>` (`Entity::key`), and the key alone says which
//! entity a snapshot or a pushed change is about: two reports with one key are one
//! entity, whichever instance sent them (the last one to report it owns it). So a plugin
//! declares, by how it builds its native ids, which of two kinds they are:
//!
//! - **Global ids** name the same thing whoever reports it: Nova and Neutron UUIDs, Heat
//!   stack ids. Use them as they are (`Entity::resource("nova.instance", &uuid)`). The
//!   Nova collector and the bus plugin of the same cloud then report one entity under one
//!   key, and their reports are ordered against each other.
//! - **Local ids** are unique only within one server: a Nagios host and service name.
//!   Two instances pointed at two servers would report different things under one key,
//!   and the entity would flip between them on every poll. Scope them: put the name of
//!   the source in the id with [`Context::scoped_id`] (`<instance>/<local id>`), or, so
//!   that keys can outlive a renamed instance, with a configured name that defaults to
//!   the instance's, joined the same way (the nagios plugin's `scope` option).
//!
//! Relations point at keys, so an alarm's relation to the resource it is about uses that
//! resource's key as the resource's own plugin builds it (an unscoped `nova.host:<name>`,
//! say), never the alarm's scope. Changing how a plugin builds its ids changes every key
//! it reports: consumers see each old key deleted and the new one created, once; say so
//! in the plugin's release notes (docs/operator-guide.md has the nagios plugin's).

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RSlice, RStr, RVec};
use serde::de::DeserializeOwned;

use crate::abi::{
    ErrorKind, FfiError, FfiIncomplete, FfiPluginInfo, FfiPluginInfoRef, FfiPushed, FfiSnapshot,
    HostSinkBox, PluginKind, PushAction,
};
use crate::entity::Entity;
use crate::health::Health;

pub(crate) mod glue;
pub(crate) mod logging;

/// What a plugin is: its name, version, entity types and kind.
#[derive(Clone, Debug)]
pub struct PluginInfo {
    /// The plugin's name (`nova`, `static`).
    pub name: &'static str,
    /// Its version; `env!("CARGO_PKG_VERSION")` is the usual choice.
    pub version: &'static str,
    /// One line on what it collects.
    pub description: &'static str,
    /// The entity types it provides (`nova.instance`, ...).
    pub entity_types: &'static [&'static str],
    /// Collector, bus or both.
    pub kind: PluginKind,
}

impl PluginInfo {
    /// The boundary's copy, leaked: a prefix type is handed out by `'static` reference
    /// and the loader asks for it once per load.
    pub(crate) fn to_ffi(&self, sample_config: &'static str) -> FfiPluginInfoRef {
        let types: Vec<RStr<'static>> = self
            .entity_types
            .iter()
            .map(|t| RStr::from_str(t))
            .collect();
        FfiPluginInfo {
            name: RStr::from_str(self.name),
            version: RStr::from_str(self.version),
            description: RStr::from_str(self.description),
            entity_types: RSlice::from_slice(Vec::leak(types)),
            kind: self.kind,
            sample_config: RStr::from_str(sample_config),
        }
        .leak_into_prefix()
    }
}

/// What the host tells an instance when it creates it.
#[derive(Clone, Debug)]
pub struct Context {
    /// The instance's name from the host configuration (`nagios-east`).
    pub instance: String,
}

impl Context {
    /// A native id made unique per instance, for a source whose ids are local to one
    /// server ("Keys" in the SDK's module docs): `<instance>/<local>`.
    ///
    /// ```
    /// let ctx = synchronizer_plugin_api::Context { instance: "nagios-east".into() };
    /// assert_eq!(ctx.scoped_id("compute-1;CPU load"), "nagios-east/compute-1;CPU load");
    /// ```
    pub fn scoped_id(&self, local: &str) -> String {
        let mut id = String::with_capacity(self.instance.len() + 1 + local.len());
        id.push_str(&self.instance);
        id.push('/');
        id.push_str(local);
        id
    }
}

/// A plugin error. Its message should say what failed and where (a URL without
/// credentials, a file path), so that the host's log line is enough to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    /// For a configuration error: the field it is about (`tls.ca_file`).
    field: Option<String>,
}

impl Error {
    /// A failed call; the host retries it with backoff.
    pub fn failed(message: impl fmt::Display) -> Self {
        Error {
            kind: ErrorKind::Failed,
            message: message.to_string(),
            field: None,
        }
    }

    /// An invalid configuration, as a whole.
    pub fn config(message: impl fmt::Display) -> Self {
        Error {
            kind: ErrorKind::Config,
            message: message.to_string(),
            field: None,
        }
    }

    /// An invalid configuration field: `field` is its path in the instance's table
    /// (`prefetch`, `tls.ca_file`, `families[1]`), `message` what is wrong with it. The
    /// host points at the field in the TOML file, with its line and column, so say only
    /// what is wrong: "must be at least 1".
    pub fn config_field(field: impl Into<String>, message: impl fmt::Display) -> Self {
        Error {
            kind: ErrorKind::Config,
            message: message.to_string(),
            field: Some(field.into()),
        }
    }

    /// The field a configuration error is about.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// A call this plugin does not support.
    pub fn unsupported(message: impl fmt::Display) -> Self {
        Error {
            kind: ErrorKind::Unsupported,
            message: message.to_string(),
            field: None,
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn with_kind(kind: ErrorKind, message: impl fmt::Display) -> Self {
        Error {
            kind,
            message: message.to_string(),
            field: None,
        }
    }

    /// The boundary's error: one message, the field (if any) named in it.
    pub(crate) fn into_ffi(self) -> FfiError {
        let message = match &self.field {
            Some(field) => format!("config field `{field}`: {}", self.message),
            None => self.message,
        };
        FfiError {
            kind: self.kind,
            message: message.into(),
        }
    }

    pub(crate) fn from_ffi(e: FfiError) -> Self {
        Error {
            kind: e.kind,
            message: e.message.into(),
            field: None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// A collector's answer: the entities it saw, and which types it could not list whole.
#[derive(Debug, Default)]
pub struct Snapshot {
    entities: Vec<Entity>,
    incomplete: Vec<(String, String)>,
}

impl Snapshot {
    /// A complete snapshot: every entity of the requested types is here, so the host
    /// reports known entities that are missing as deleted.
    pub fn complete(entities: Vec<Entity>) -> Self {
        Snapshot {
            entities,
            incomplete: Vec::new(),
        }
    }

    /// Marks one entity type as incomplete (a page failed to load, say): its entities are
    /// still created and updated, but none are deleted.
    pub fn mark_incomplete(mut self, entity_type: &str, reason: impl fmt::Display) -> Self {
        self.incomplete
            .push((entity_type.to_owned(), reason.to_string()));
        self
    }

    /// Adds an entity.
    pub fn push(&mut self, entity: Entity) {
        self.entities.push(entity);
    }

    /// The entities.
    pub fn entities(&self) -> &[Entity] {
        &self.entities
    }

    pub(crate) fn into_ffi(self) -> FfiSnapshot {
        FfiSnapshot {
            entities: RVec::from(self.entities),
            incomplete: self
                .incomplete
                .into_iter()
                .map(|(t, r)| FfiIncomplete {
                    entity_type: t.into(),
                    reason: r.into(),
                })
                .collect(),
        }
    }
}

/// One change a bus plugin pushes.
#[derive(Clone, Debug)]
pub enum Change {
    /// The entity exists with this content (created or updated: the host decides which).
    Upsert(Entity),
    /// The entity is gone. Give it at least its type, id and the source timestamp of the
    /// deletion, so that a late, older message cannot bring it back.
    Delete(Entity),
}

impl Change {
    fn into_ffi(self) -> FfiPushed {
        match self {
            Change::Upsert(entity) => FfiPushed {
                action: PushAction::Upsert,
                entity,
            },
            Change::Delete(entity) => FfiPushed {
                action: PushAction::Delete,
                entity,
            },
        }
    }
}

/// Where a bus plugin sends its changes.
#[derive(Clone)]
pub struct Sink {
    inner: Arc<HostSinkBox>,
}

impl Sink {
    pub(crate) fn new(inner: HostSinkBox) -> Self {
        Sink {
            inner: Arc::new(inner),
        }
    }

    /// Hands a batch to the host and waits until the host has accepted it. Acknowledge
    /// the source messages only after this returns `Ok`.
    pub async fn push(&self, batch: Vec<Change>) -> Result<(), Error> {
        let batch: RVec<FfiPushed> = batch.into_iter().map(Change::into_ffi).collect();
        match self.inner.push(batch).await {
            abi_stable::std_types::RResult::ROk(()) => Ok(()),
            abi_stable::std_types::RResult::RErr(e) => Err(Error::from_ffi(e)),
        }
    }
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sink")
    }
}

/// Resolves when the host asks a bus plugin to stop.
#[derive(Clone, Debug)]
pub struct Shutdown {
    token: tokio_util::sync::CancellationToken,
}

impl Shutdown {
    pub(crate) fn new(token: tokio_util::sync::CancellationToken) -> Self {
        Shutdown { token }
    }

    /// Waits for the stop request.
    pub async fn requested(&self) {
        self.token.cancelled().await
    }

    /// Whether the stop was requested already.
    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// A data-source plugin. Implement it for a plain type and call
/// [`crate::export_plugin!`] with that type.
///
/// Every method runs on the instance's own tokio runtime, so plugin code may use tokio,
/// reqwest and `tracing` freely.
pub trait Plugin: Sized + Send + Sync + 'static {
    /// The instance's own configuration: the `[instances.config]` table of the host's
    /// configuration. Use `#[serde(deny_unknown_fields)]` so that typos are reported.
    type Config: DeserializeOwned;

    /// The plugin's metadata.
    fn info() -> PluginInfo;

    /// How many worker threads the instance's tokio runtime has (besides its blocking
    /// pool). Two by default: a collector's requests and timers overlap. A plugin whose
    /// work is one stream (a bus consumer: its client's I/O thread hands it each
    /// delivery) runs better on one, where no task is passed between workers and no idle
    /// worker is woken to look for work: the bus plugin's drain costs about 3.5 µs less
    /// CPU per message on one (README.md, Performance). Since plugin-api 0.1.1; at least 1.
    const RUNTIME_WORKERS: usize = 2;

    /// A sample `[[instances]]` table for this plugin, as TOML, with every option and a
    /// comment on each: `synchronizer plugins --sample NAME` prints it, and a user
    /// starts from it. `include_str!("../sample.toml")` keeps it beside the README.
    /// Since plugin-api 0.1.1; the default is none.
    fn sample_config() -> &'static str {
        ""
    }

    /// Checks a parsed configuration for what serde cannot (ranges, combinations, files
    /// that must exist and parse), without side effects: no connection, no thread, no
    /// file written. `synchronizer check-config` calls it for every instance through the
    /// real loader, and the SDK calls it before [`Plugin::new`], so `new` may assume a
    /// valid configuration. Report a field with [`Error::config_field`]: the host then
    /// points at its line in the TOML file. Since plugin-api 0.1.1; the default accepts
    /// whatever parses.
    fn validate(config: &Self::Config, ctx: &Context) -> Result<(), Error> {
        let _ = (config, ctx);
        Ok(())
    }

    /// Builds an instance from its (validated) configuration. Runs inside the
    /// instance's runtime.
    fn new(config: Self::Config, ctx: &Context) -> Result<Self, Error>;

    /// Collects a complete snapshot of the given entity types (a subset of
    /// [`PluginInfo::entity_types`]). Collectors implement this.
    fn snapshot(&self, types: &[String]) -> impl Future<Output = Result<Snapshot, Error>> + Send {
        let _ = types;
        async { Err(Error::unsupported("this plugin is not a collector")) }
    }

    /// Pushes changes to `sink` until `shutdown` resolves. Bus plugins implement this.
    fn run(
        &self,
        sink: Sink,
        shutdown: Shutdown,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = sink;
        async move {
            shutdown.requested().await;
            Ok(())
        }
    }

    /// The plugin's own health report.
    fn health(&self) -> impl Future<Output = Health> + Send {
        async { Health::healthy() }
    }

    /// The plugin's own counters (name, value since start), which the host exports as
    /// metrics labelled with the instance: a bus plugin reports messages consumed, acked
    /// and dead-lettered. Called from the host's metrics endpoint; keep it cheap.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}
