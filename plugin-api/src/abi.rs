//! The stable ABI between the host and a plugin `.so`: the root module every plugin
//! exports, the plugin-instance and host-side trait objects, and the plain `#[repr(C)]`
//! values that cross between them.
//!
//! Plugin authors never use this module: the SDK ([`crate::Plugin`] and
//! [`crate::export_plugin!`]) builds all of it. The host uses it to load and call plugins.
//!
//! Rules (docs/architecture.md §2): async calls cross as [`FfiFuture`]`<RResult<T, FfiError>>`; every
//! entry point catches panics before they reach the boundary; the root module is a prefix
//! struct, so fields may be appended in later minor versions without breaking plugins
//! built against this one. Appending a field means bumping this crate's minor version and
//! marking the new field optional for older plugins (`#[sabi(last_prefix_field)]` stays on
//! the last field of version 0.1).

#![allow(non_local_definitions)] // in the code `#[sabi_trait]` generates

use abi_stable::StableAbi;
use abi_stable::library::RootModule;
use abi_stable::package_version_strings;
use abi_stable::sabi_trait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, RResult, RSlice, RStr, RString, RVec};
use async_ffi::FfiFuture;

use crate::entity::Entity;

/// What a plugin does: answer snapshot requests, push changes, or both.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PluginKind {
    /// Polled for complete snapshots.
    Collector,
    /// Started once; pushes changes as they happen.
    Bus,
    /// Both of the above.
    Both,
}

impl PluginKind {
    /// Whether the host should poll this plugin for snapshots.
    pub fn collects(self) -> bool {
        matches!(self, PluginKind::Collector | PluginKind::Both)
    }

    /// Whether the host should start this plugin's push loop.
    pub fn pushes(self) -> bool {
        matches!(self, PluginKind::Bus | PluginKind::Both)
    }

    /// `collector`, `bus` or `both`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Collector => "collector",
            PluginKind::Bus => "bus",
            PluginKind::Both => "both",
        }
    }
}

/// A plugin's metadata, as it crosses the boundary.
///
/// A prefix type, so that later minor versions can append fields: the plugin hands out
/// a [`FfiPluginInfoRef`] to a value it leaks (once per load), and the host reads the
/// fields appended after version 0.1.0 as `Option`s, `None` for a plugin built before
/// them (the crate docs' "Evolving the interface"). A prefix type's accessors copy, so
/// its fields are `'static` borrows of what the plugin leaked, not owned strings.
#[repr(C)]
#[derive(StableAbi, Debug)]
#[sabi(kind(Prefix(prefix_ref = FfiPluginInfoRef)))]
#[sabi(missing_field(option))]
pub struct FfiPluginInfo {
    /// The plugin's name (`nova`, `static`).
    pub name: RStr<'static>,
    /// The plugin crate's version.
    pub version: RStr<'static>,
    /// One line on what it collects.
    pub description: RStr<'static>,
    /// The entity types it provides.
    pub entity_types: RSlice<'static, RStr<'static>>,
    /// Collector, bus or both.
    #[sabi(last_prefix_field)]
    pub kind: PluginKind,

    // Appended in 0.1.1: `None` from a plugin built against 0.1.0.
    /// A sample `[[instances]]` table for this plugin, as TOML (empty when the plugin
    /// gives none).
    pub sample_config: RStr<'static>,
}

/// The first problem found in an instance's configuration, apart from where it is, so
/// that the host can point at the TOML the user wrote (file, line and column).
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct FfiConfigProblem {
    /// The field's path inside the instance's table (`tls.ca_file`, `families[2]`);
    /// empty when the problem is the table as a whole.
    pub field: RString,
    /// What is wrong, without the instance's name or the field's path (the host says
    /// both).
    pub message: RString,
}

/// What went wrong in a plugin call.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The instance's configuration is invalid.
    Config,
    /// The call failed; trying again later may work (an API down, a timeout).
    Failed,
    /// The plugin panicked; the message holds the panic's payload.
    Panicked,
    /// The call was cancelled (the plugin is shutting down).
    Cancelled,
    /// The plugin does not support this call (a snapshot from a bus-only plugin).
    Unsupported,
}

impl ErrorKind {
    /// A short lower-case name for logs and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Failed => "failed",
            ErrorKind::Panicked => "panicked",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Unsupported => "unsupported",
        }
    }
}

/// An error as it crosses the boundary: its kind and the full message (context included).
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct FfiError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The whole message, with its context chain.
    pub message: RString,
}

/// An entity type whose part of a snapshot is incomplete, and why.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct FfiIncomplete {
    /// The entity type.
    pub entity_type: RString,
    /// Why the plugin could not list all of it.
    pub reason: RString,
}

/// A snapshot as it crosses the boundary.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiSnapshot {
    /// Every entity the plugin saw.
    pub entities: RVec<Entity>,
    /// Types for which the list is known to be incomplete: their missing keys are not
    /// deletions.
    pub incomplete: RVec<FfiIncomplete>,
}

/// Whether a pushed change says the entity exists (with this content) or is gone.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushAction {
    /// The entity exists with the given content (created or updated).
    Upsert,
    /// The entity was deleted.
    Delete,
}

/// One change pushed by a bus plugin.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct FfiPushed {
    /// Upsert or delete.
    pub action: PushAction,
    /// The entity (for a delete, at least its type, id and source timestamp).
    pub entity: Entity,
}

/// A plugin's own report on its health.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct FfiHealth {
    /// True when the plugin considers itself able to work.
    pub healthy: bool,
    /// A short explanation (empty when healthy and nothing to say).
    pub message: RString,
}

/// One of a plugin's own counters (messages consumed, acked, dead-lettered...).
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct FfiCounter {
    /// The counter's name, snake_case (`messages_acked`).
    pub name: RString,
    /// Its value since the instance started.
    pub value: u64,
}

/// Log levels, most severe first.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Nothing is forwarded.
    Off,
    /// `tracing::Level::ERROR`.
    Error,
    /// `tracing::Level::WARN`.
    Warn,
    /// `tracing::Level::INFO`.
    Info,
    /// `tracing::Level::DEBUG`.
    Debug,
    /// `tracing::Level::TRACE`.
    Trace,
}

/// One log event forwarded from a plugin to the host.
#[repr(C)]
#[derive(StableAbi)]
pub struct LogRecord<'a> {
    /// Its level.
    pub level: LogLevel,
    /// The `tracing` target (the module path inside the plugin).
    pub target: RStr<'a>,
    /// The message.
    pub message: RStr<'a>,
    /// Structured fields as `name=value` pairs separated by spaces.
    pub fields: RStr<'a>,
}

/// What the host gives each plugin instance: where its logs go.
#[sabi_trait]
pub trait HostContext: Send + Sync {
    /// Forwards one log event; the host re-emits it with the instance's name.
    fn log(&self, record: LogRecord<'_>);

    /// The most verbose level the host wants.
    #[sabi(last_prefix_field)]
    fn max_level(&self) -> LogLevel;
}

/// An owned [`HostContext`] trait object.
pub type HostContextBox = HostContext_TO<'static, RBox<()>>;

/// Where a bus plugin pushes its changes. The returned future completes when the host has
/// accepted the batch (baseline updated, subscribers and outputs fed): only then may the
/// plugin acknowledge the messages upstream.
#[sabi_trait]
pub trait HostSink: Send + Sync {
    /// Hands a batch of changes to the host.
    #[sabi(last_prefix_field)]
    fn push(&self, batch: RVec<FfiPushed>) -> FfiFuture<RResult<(), FfiError>>;
}

/// An owned [`HostSink`] trait object.
pub type HostSinkBox = HostSink_TO<'static, RBox<()>>;

/// One configured, running plugin instance, with its own tokio runtime inside the plugin.
#[sabi_trait]
pub trait PluginInstance: Send + Sync {
    /// Collects a complete snapshot of the given types. Dropping the future cancels the
    /// work inside the plugin.
    fn snapshot(&self, types: RVec<RString>) -> FfiFuture<RResult<FfiSnapshot, FfiError>>;

    /// Runs the push loop until [`PluginInstance::request_stop`] or an error.
    fn run(&self, sink: HostSinkBox) -> FfiFuture<RResult<(), FfiError>>;

    /// Asks the push loop to stop (it should finish what it has in hand).
    fn request_stop(&self);

    /// The plugin's own health report.
    fn health(&self) -> FfiFuture<RResult<FfiHealth, FfiError>>;

    /// How many snapshot calls are still running inside the plugin, cancelled ones
    /// included. A call that stays here after the host abandoned it is stuck in blocking
    /// code.
    fn calls_in_flight(&self) -> u32;

    /// The plugin's own counters, for the host's metrics.
    fn counters(&self) -> RVec<FfiCounter>;

    /// Stops the plugin's runtime without waiting for threads that may be stuck. Called
    /// once, last.
    #[sabi(last_prefix_field)]
    fn shutdown(&self, timeout_ms: u64);
}

/// An owned [`PluginInstance`] trait object.
pub type PluginInstanceBox = PluginInstance_TO<'static, RBox<()>>;

/// The root module every plugin `.so` exports (through [`crate::export_plugin!`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The plugin's metadata.
    pub info: extern "C" fn() -> RResult<FfiPluginInfoRef, FfiError>,

    /// Checks an instance's configuration (JSON text) without starting anything.
    pub validate_config:
        extern "C" fn(instance: RStr<'_>, config_json: RStr<'_>) -> RResult<(), FfiError>,

    /// Creates an instance: parses its configuration, starts its runtime, constructs the
    /// plugin. Blocking: the host calls it off its async workers.
    #[sabi(last_prefix_field)]
    pub create: extern "C" fn(
        instance: RStr<'_>,
        config_json: RStr<'_>,
        ctx: HostContextBox,
    ) -> RResult<PluginInstanceBox, FfiError>,

    // Appended in 0.1.1: `None` from a plugin built against 0.1.0, whose host falls back
    // to `validate_config`.
    /// Checks an instance's configuration as `create` would (parsing it and running the
    /// plugin's own validation) without starting anything, and reports the first problem
    /// with its field apart.
    #[sabi(missing_field(option))]
    pub check_config:
        extern "C" fn(instance: RStr<'_>, config_json: RStr<'_>) -> RResult<(), FfiConfigProblem>,
}

impl RootModule for PluginModRef {
    abi_stable::declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "synchronizer_plugin";
    const NAME: &'static str = "synchronizer_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
