//! A plugin written against plugin-api 0.1.0 and never changed since: it uses only what
//! 0.1.0 has (no `validate`, no `sample_config`). `scripts/build-test-plugins.sh` builds
//! it against the frozen 0.1.0 (`tests/abi/plugin-api-0.1.0`), against a generated newer
//! patch release, and against a copy with a changed type, for
//! `tests/tests/abi_evolution.rs`.

use serde::Deserialize;
use synchronizer_plugin_api::{Context, Entity, Error, Plugin, PluginInfo, PluginKind, Snapshot};

/// Its table: how many items to report.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    items: u32,
}

/// Reports `items` entities of type `vintage.item`.
pub struct Vintage {
    items: u32,
}

impl Plugin for Vintage {
    type Config = Config;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "vintage",
            version: env!("CARGO_PKG_VERSION"),
            description: "a plugin built against plugin-api 0.1.0",
            entity_types: &["vintage.item"],
            kind: PluginKind::Collector,
        }
    }

    fn new(config: Config, _ctx: &Context) -> Result<Self, Error> {
        if config.items == 0 {
            return Err(Error::config("config field `items`: must be at least 1"));
        }
        Ok(Vintage {
            items: config.items,
        })
    }

    async fn snapshot(&self, _types: &[String]) -> Result<Snapshot, Error> {
        let items = (0..self.items).map(|i| Entity::resource("vintage.item", &format!("v{i}")));
        Ok(Snapshot::complete(items.collect()))
    }
}

synchronizer_plugin_api::export_plugin!(Vintage);
