//! The synchronizer: keeps an always-current view of a cloud's inventory and monitoring,
//! gathered by plugins, and tells its consumers exactly what changed.
//!
//! How the pieces fit:
//! - [`config`] reads the TOML configuration (figment, with environment overrides).
//! - [`loader`] loads plugin libraries through abi_stable's checks; [`instance`] creates
//!   and calls plugin instances, each with its own runtime inside the plugin.
//! - [`scheduler`] polls collectors (interval, jitter, timeout, backoff, stuck
//!   detection); bus plugins push through a sink.
//! - [`hub`] turns snapshots and pushed changes into [`Change`]s with the [`baseline`]
//!   store, keeps the current view, and feeds subscribers without ever blocking.
//! - [`subscription`] is what consumers hold; [`output`] is the JSON form of changes;
//!   [`http`] serves them to remote consumers and [`amqp`] publishes them to a broker,
//!   with end-to-end confirmation ([`delivery`]).
//! - [`Synchronizer`] ties it together: embed it, or run the `synchronizer` binary.
//!
//! Features (all on by default; the binary needs them all): `http` (the HTTP API, axum),
//! `amqp` (the AMQP output, lapin), `persist` (the durable baseline, redb). An embedding
//! program that needs none of them depends on
//! `synchronizer = { ..., default-features = false }`; a configuration that asks for a
//! part left out is refused when it is read, naming the feature.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use synchronizer::{Config, Event, SubscribeOptions, Synchronizer};
//! let config = Config::load(std::path::Path::new("synchronizer.toml"))?;
//! let sync = Synchronizer::start(config).await?;
//! let mut changes = sync.subscribe(&SubscribeOptions::types(&["nova.instance"]));
//! while let Some(event) = changes.recv().await {
//!     if let Event::Change(c) = event {
//!         println!("{} {}", c.action.as_str(), c.entity.key());
//!     }
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod amqp;
pub mod backoff;
pub mod baseline;
pub mod change;
pub mod config;
pub mod config_location;
pub mod delivery;
#[cfg(feature = "http")]
pub mod http;
pub mod hub;
mod ingress;
pub mod instance;
pub mod isolation;
pub mod loader;
pub mod metrics;
pub mod output;
pub mod persist;
pub mod queue;
mod resolve;
pub mod scheduler;
pub mod secrets;
pub mod status;
pub mod subscription;
mod synchronizer;
pub mod view;

pub use change::{Action, Change, Event, ResyncReason};
pub use config::Config;
pub use scheduler::Incomplete;
pub use subscription::{CallbackSubscription, SubscribeOptions, Subscription};
pub use synchronizer::{
    GetAll, GetAllError, InstanceFailure, InstanceHandle, InstanceReport, PluginHealth, StartError,
    Synchronizer,
};
pub use synchronizer_plugin_api::{Category, Direction, Entity, Health, Relation};
