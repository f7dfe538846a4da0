//! The OpenStack client layer shared by the synchronizer's Nova, Heat and bus plugins.
//!
//! - [`config`]: the `cloud` table of a plugin instance (credentials, region, interface,
//!   endpoint override, TLS, timeouts), secrets redacted in `Debug`.
//! - [`session`]: Keystone v3 authentication (password or application credential, or a
//!   static token), token reuse until shortly before expiry, one re-authentication and
//!   retry on a 401, endpoint lookup in the service catalog.
//! - [`paging`]: following marker pagination safely.
//! - [`error`]: errors that name the URL (without credentials) and the HTTP status.
//! - [`time`]: OpenStack timestamps.
//! - [`nova_instance`]: the one `nova.instance` entity model that the Nova collector and
//!   the bus plugin (Nova's notifications) both build, and Nova's vm/task state → API
//!   status table.
//! - [`heat_stack`]: the one `heat.stack` entity model that the Heat collector and the
//!   bus plugin (Heat's notifications, enriched with the stack's resources) both build,
//!   and Heat's resource type → entity type mapping.
//! - [`cinder_volume`]: the one `cinder.volume` model of the Cinder collector and the
//!   bus plugin (Cinder's `volume.*` notifications).
//! - [`neutron`]: the `neutron.network` / `neutron.port` models of the Neutron collector
//!   and the bus plugin (Neutron's `network.*` / `port.*` notifications).
//! - `testing` (feature `test-server`): a loopback HTTP server for tests and benchmarks.
//!
//! Nothing here logs a secret: passwords, application credential secrets and tokens are
//! [`config::Secret`]s or sensitive header values, and every URL in a log line or error
//! goes through [`session::display_url`].
#![deny(missing_docs)]

pub mod catalog;
pub mod cinder_volume;
pub mod config;
pub mod error;
pub mod heat_stack;
pub mod neutron;
pub mod nova_instance;
pub mod paging;
pub mod plugin;
pub mod session;
#[cfg(any(test, feature = "test-server"))]
pub mod testing;
pub mod time;

pub use config::{AuthConfig, AuthMethod, CloudConfig, ConfigError, Interface, Secret};
pub use error::Error;
pub use paging::{Link, Pager};
pub use session::{Session, display_url, join_path};

#[cfg(test)]
mod tests;
