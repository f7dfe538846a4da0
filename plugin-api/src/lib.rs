//! The plugin interface of the synchronizer: a stable ABI and the SDK on top of it.
//!
//! A plugin is a `cdylib` that implements [`Plugin`] for a plain Rust type and calls
//! [`export_plugin!`] once:
//!
//! ```ignore
//! use synchronizer_plugin_api::{Entity, Error, Plugin, PluginInfo, PluginKind, Snapshot};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! pub struct Config { racks: u32 }
//!
//! pub struct Racks { racks: u32 }
//!
//! impl Plugin for Racks {
//!     type Config = Config;
//!     fn info() -> PluginInfo {
//!         PluginInfo {
//!             name: "racks",
//!             version: env!("CARGO_PKG_VERSION"),
//!             description: "racks of the machine room",
//!             entity_types: &["rack"],
//!             kind: PluginKind::Collector,
//!         }
//!     }
//!     fn new(config: Config, _: &synchronizer_plugin_api::Context) -> Result<Self, Error> {
//!         Ok(Racks { racks: config.racks })
//!     }
//!     async fn snapshot(&self, _types: &[String]) -> Result<Snapshot, Error> {
//!         let racks = (0..self.racks).map(|i| Entity::resource("rack", &format!("r{i}")));
//!         Ok(Snapshot::complete(racks.collect()))
//!     }
//! }
//!
//! synchronizer_plugin_api::export_plugin!(Racks);
//! ```
//!
//! How the pieces fit:
//! - [`entity`] is the data model both sides share: an [`Entity`] crosses the boundary
//!   as it is, without conversion.
//! - [`time`] is the time range the project accepts and a formatter that cannot fail.
//! - [`health`] is a plugin's report on itself, the same type from the plugin's
//!   `health` to the host's HTTP API.
//! - [`redact`] shows URLs and messages without their passwords, the same way in the
//!   host and in every plugin.
//! - [`abi`] is the boundary itself (root module, trait objects, `#[repr(C)]` values);
//!   the host uses it, plugin authors never do.
//! - The SDK (feature `sdk`, on by default) is what plugin authors use: [`Plugin`],
//!   [`Snapshot`], [`Sink`], [`Shutdown`], [`Error`] and [`export_plugin!`].
//!
//! Build plugins with `panic = "unwind"` (the default): a plugin built with
//! `panic = "abort"` loads, but any panic in it ends the host process.
//!
//! # What a plugin depends on
//!
//! plugin-api and serde (with `derive`), nothing else: the SDK re-exports what plugin
//! code commonly needs, at the versions it was built with — [`serde_json`] (for
//! [`Entity::with_properties`] and free-form properties), [`tokio`] (timers, I/O, tasks
//! on the instance's own runtime) and [`tracing`] (logs, forwarded to the host). Write
//! `use synchronizer_plugin_api::{tokio, tracing};` and use them as usual. A plugin may
//! depend on them directly instead; they must then be semver-compatible with these.
//!
//! # Evolving the interface
//!
//! A plugin is compiled against one plugin-api; the host checks, when it loads the
//! `.so`, the version and the layout of every type that crosses. The rules:
//!
//! - **Which plugins a host loads**: those built against the same release series
//!   (`0.1` while the major is 0, then the major) and a version no newer than the
//!   host's own. A host with plugin-api 0.1.1 loads plugins built against 0.1.0 and
//!   0.1.1; it refuses 0.1.2 (which may call host entry points 0.1.1 lacks) and 0.2.x,
//!   saying both versions.
//! - **A compatible release (0.1.x → 0.1.x+1)** may: append a field after the last field
//!   of a prefix type ([`abi::PluginMod`], [`abi::FfiPluginInfo`]), marked optional so
//!   that the host reads `None` from an older plugin and falls back; append a method at
//!   the end of a `#[sabi_trait]` ([`abi::PluginInstance`], [`abi::HostSink`],
//!   [`abi::HostContext`]), with a default body or an optional marker for the same
//!   reason; add SDK items, and [`Plugin`] methods with a default (never a field of
//!   [`PluginInfo`], which authors build with a struct literal). 0.1.1 did this: the
//!   sample configuration ([`Plugin::sample_config`], appended to `FfiPluginInfo`) and
//!   validation with the field apart ([`Plugin::validate`], `PluginMod::check_config`).
//! - **A break (0.2.0)** is anything else that crosses: a field or a method changed,
//!   removed, reordered or inserted before the end; any change to a by-value type
//!   ([`Entity`], [`Relation`], `FfiSnapshot`, `FfiPushed`, `FfiError`, `FfiHealth`,
//!   `FfiCounter`, `LogRecord`, a variant added to any `#[repr(u8)]` enum); another
//!   abi_stable. `Entity` stays by value on purpose: it crosses millions of times.
//! - **Proven by a test**: `tests/tests/abi_evolution.rs` builds a plugin against the
//!   frozen copy of 0.1.0 in `tests/abi/` and runs it in today's host (the appended field
//!   absent, validation through the 0.1.0 entry point), and builds one against a
//!   generated 0.1.x+1 that today's host must refuse.
#![deny(missing_docs)]

pub mod abi;
pub mod entity;
pub mod health;
pub mod redact;
#[cfg(feature = "sdk")]
mod sdk;
pub mod time;

pub use entity::{Category, Direction, Entity, Relation, Selector};
pub use health::Health;
#[cfg(feature = "sdk")]
pub use sdk::{Change, Context, Error, Plugin, PluginInfo, Shutdown, Sink, Snapshot};

pub use abi::{ErrorKind, PluginKind};

// What a plugin's code needs besides serde (whose derive wants it as a direct
// dependency), at the versions the SDK was built with: a plugin depends on plugin-api
// and serde only. `tokio`'s attribute macros (`#[tokio::test]`) name `::tokio` and take
// `crate = "synchronizer_plugin_api::tokio"`.
#[cfg(feature = "sdk")]
pub use serde_json;
#[cfg(feature = "sdk")]
pub use tokio;
#[cfg(feature = "sdk")]
pub use tracing;

/// Re-exports the export macro needs; not part of the API.
#[cfg(feature = "sdk")]
#[doc(hidden)]
pub mod __private {
    pub use crate::sdk::glue::root_module;
    pub use abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, LibHeader, RootModuleResult,
    };
}

/// Exports a [`Plugin`] implementation as this library's plugin. Call it once per
/// `cdylib`, at the crate root.
#[cfg(feature = "sdk")]
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        /// The abi_stable library header the host's loader looks for.
        #[unsafe(no_mangle)]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::__private::LibHeader = {
            extern "C" fn __synchronizer_root_module() -> $crate::__private::RootModuleResult {
                $crate::__private::__call_root_module_loader(
                    $crate::__private::root_module::<$plugin>,
                )
            }
            unsafe {
                $crate::__private::LibHeader::from_constructor::<$crate::abi::PluginModRef>(
                    __synchronizer_root_module,
                    $crate::__private::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
