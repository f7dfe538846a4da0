//! A plugin for the host's tests that misbehaves on request, one way per instance:
//! `mode = "ok" | "churn" | "tick" | "fail" | "panic" | "hang" | "block" | "slow"` and
//! `panic_in_new = true`. Every behaviour is real: a real panic inside the plugin, a real
//! async wait that never ends, a real `std::thread::sleep` that holds a runtime thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use synchronizer_plugin_api::{Context, Entity, Error, Plugin, PluginInfo, PluginKind, Snapshot};

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// `entities` entities of type `faulty.item`, always the same.
    Ok,
    /// The same `entities` entities, 1% of them renamed by each snapshot (those whose
    /// number is the call's number modulo 100).
    Churn,
    /// One entity `faulty.tick:<instance>` whose property `n` counts the snapshots.
    Tick,
    /// Every snapshot returns an error.
    Fail,
    /// Every snapshot panics.
    Panic,
    /// Every snapshot waits forever (asynchronously: cancellable).
    Hang,
    /// The first snapshot blocks its thread for `block_ms` (not cancellable); later ones
    /// answer like `tick`.
    Block,
    /// Every snapshot takes `block_ms` asynchronously, then answers like `tick`.
    Slow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    // Fields are private: tests build it from JSON, as the host does.
    mode: Mode,
    #[serde(default)]
    entities: u32,
    /// `ok`: every snapshot after the first has this many entities instead (a source
    /// that suddenly grows past the host's bounds).
    #[serde(default)]
    later_entities: Option<u32>,
    /// `ok`: each entity carries a property `pad` of this many bytes.
    #[serde(default)]
    padding: usize,
    #[serde(default = "default_block_ms")]
    block_ms: u64,
    #[serde(default)]
    panic_in_new: bool,
    /// `fail`: the error's text (default "asked to fail"), also logged at WARN by each
    /// failing call: a plugin that repeats what it was given.
    #[serde(default)]
    message: Option<String>,
}

fn default_block_ms() -> u64 {
    3_600_000
}

pub struct Faulty {
    // Private: built by `Plugin::new`.
    mode: Mode,
    entities: u32,
    later_entities: Option<u32>,
    pad: Option<serde_json::Value>,
    block: Duration,
    calls: AtomicU64,
    instance: String,
    message: Option<String>,
}

impl Plugin for Faulty {
    type Config = Config;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "faulty",
            version: env!("CARGO_PKG_VERSION"),
            description: "misbehaves on request (tests only)",
            entity_types: &["faulty.item", "faulty.tick"],
            kind: PluginKind::Collector,
        }
    }

    fn new(config: Config, ctx: &Context) -> Result<Self, Error> {
        if config.panic_in_new {
            panic!("asked to panic in new ({})", ctx.instance);
        }
        tracing::info!(mode = ?config.mode, "faulty plugin ready");
        Ok(Faulty {
            mode: config.mode,
            entities: config.entities,
            later_entities: config.later_entities,
            pad: (config.padding > 0)
                .then(|| serde_json::json!({ "pad": "x".repeat(config.padding) })),
            block: Duration::from_millis(config.block_ms),
            calls: AtomicU64::new(0),
            instance: ctx.instance.clone(),
            message: config.message,
        })
    }

    async fn snapshot(&self, _types: &[String]) -> Result<Snapshot, Error> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let tick = || {
            Snapshot::complete(vec![
                Entity::resource("faulty.tick", &self.instance)
                    .with_name("tick")
                    .with_properties(serde_json::json!({ "n": n })),
            ])
        };
        match self.mode {
            Mode::Ok => {
                let count = match self.later_entities {
                    Some(later) if n > 1 => later,
                    _ => self.entities,
                };
                Ok(Snapshot::complete(
                    (0..count)
                        .map(|i| {
                            let e = Entity::resource("faulty.item", &format!("item-{i}"))
                                .with_name(format!("item {i}"))
                                .with_state("ACTIVE");
                            match &self.pad {
                                Some(pad) => e.with_properties(pad.clone()),
                                None => e,
                            }
                        })
                        .collect(),
                ))
            }
            Mode::Churn => Ok(Snapshot::complete(
                (0..self.entities)
                    .map(|i| {
                        // Goes up by one exactly when `n` passes `i` modulo 100.
                        let version = (n + 99 - u64::from(i % 100)) / 100;
                        Entity::resource("faulty.item", &format!("item-{i}"))
                            .with_name(format!("item {i} v{version}"))
                            .with_state("ACTIVE")
                    })
                    .collect(),
            )),
            Mode::Tick => Ok(tick()),
            Mode::Fail => {
                let message = self.message.as_deref().unwrap_or("asked to fail");
                if self.message.is_some() {
                    tracing::warn!(call = n, "failing: {message}");
                }
                Err(Error::failed(format!("{message} (call {n})")))
            }
            Mode::Panic => panic!("asked to panic (call {n})"),
            Mode::Hang => {
                std::future::pending::<()>().await;
                Ok(tick())
            }
            Mode::Block => {
                if n == 1 {
                    std::thread::sleep(self.block);
                }
                Ok(tick())
            }
            Mode::Slow => {
                tokio::time::sleep(self.block).await;
                Ok(tick())
            }
        }
    }
}

synchronizer_plugin_api::export_plugin!(Faulty);
