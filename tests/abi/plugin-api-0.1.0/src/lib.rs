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
#![deny(missing_docs)]

pub mod abi;
pub mod entity;
pub mod health;
pub mod redact;
#[cfg(feature = "sdk")]
mod sdk;
pub mod time;

pub use entity::{Category, Direction, Entity, Relation};
pub use health::Health;
#[cfg(feature = "sdk")]
pub use sdk::{Change, Context, Error, Plugin, PluginInfo, Shutdown, Sink, Snapshot};

pub use abi::{ErrorKind, PluginKind};

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
