//! A template for synchronizer plugins: a collector that reports the rooms of a
//! building, each contained by the building (`building --contains--> room`). Copy this crate and replace the rooms with your
//! source (README.md here; the guide is docs/writing-a-plugin.md in synchronizer).
//!
//! What every plugin has, in order: its configuration (a serde struct that refuses
//! unknown keys), its metadata (`info`), its sample table (`sample_config`, from
//! `sample.toml`), the checks serde cannot make (`validate`, which `synchronizer
//! check-config` runs), its constructor (`new`), and what it does (`snapshot` for a
//! collector; `run` for a bus plugin). The macro at the end exports it.

use serde::Deserialize;
use synchronizer_plugin_api::tracing;
use synchronizer_plugin_api::{
    Context, Entity, Error, Plugin, PluginInfo, PluginKind, Relation, Snapshot,
};

/// The instance's `[instances.config]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The building's name: part of every room's id.
    building: String,
    /// How many rooms it has.
    rooms: u32,
    /// The state every room reports.
    #[serde(default = "open")]
    floor_state: String,
}

fn open() -> String {
    "open".into()
}

/// One configured instance.
pub struct Rooms {
    config: Config,
}

impl Plugin for Rooms {
    type Config = Config;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "rooms",
            version: env!("CARGO_PKG_VERSION"),
            description: "the rooms of a building (the plugin template)",
            entity_types: &["room"],
            kind: PluginKind::Collector,
        }
    }

    fn sample_config() -> &'static str {
        include_str!("../sample.toml")
    }

    fn validate(config: &Config, _ctx: &Context) -> Result<(), Error> {
        if config.building.is_empty() || config.building.contains(':') {
            return Err(Error::config_field(
                "building",
                "must be a non-empty name without `:`",
            ));
        }
        if config.rooms == 0 {
            return Err(Error::config_field("rooms", "must be at least 1"));
        }
        Ok(())
    }

    fn new(config: Config, ctx: &Context) -> Result<Self, Error> {
        tracing::info!(instance = %ctx.instance, building = %config.building, "rooms plugin ready");
        Ok(Rooms { config })
    }

    async fn snapshot(&self, _types: &[String]) -> Result<Snapshot, Error> {
        let building = format!("building:{}", self.config.building);
        let rooms = (1..=self.config.rooms).map(|i| {
            Entity::resource("room", &format!("{}-{i}", self.config.building))
                .with_name(format!("room {i}"))
                .with_state(&self.config.floor_state)
                .with_relation(Relation::from("contains", &building))
        });
        Ok(Snapshot::complete(rooms.collect()))
    }
}

synchronizer_plugin_api::export_plugin!(Rooms);
