//! A plugin for the isolation tests that does what no host can undo from inside its own
//! process, on request, one way per instance:
//!
//! - `ok`: `entities` entities `crashy.item:item-<i>`, always the same;
//! - `segfault`: a real invalid memory write (SIGSEGV);
//! - `abort`: `std::process::abort()` (SIGABRT);
//! - `alloc`: allocates and touches memory without bound (4 MiB every 10 ms, up to a
//!   safety cap of `alloc_cap_mib`, so that a broken supervisor cannot take the machine);
//! - `block`: blocks its thread forever (`std::thread::sleep` in a loop);
//! - `threads`: starts `threads` threads that never end, then answers like `ok`;
//! - `push`: a bus loop that pushes `crashy.pushed:<n>` every `push_every_ms` and counts
//!   the batches the host acknowledged (`pushed_acked`).
//!
//! Every misbehaving mode answers its first `after` snapshots like `ok` (default 1), so
//! that the baseline holds entities which a failure must not delete. The count restarts
//! with each process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use synchronizer_plugin_api::{
    Change, Context, Entity, Error, Plugin, PluginInfo, PluginKind, Shutdown, Sink, Snapshot,
};

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Ok,
    Segfault,
    Abort,
    Alloc,
    Block,
    Threads,
    Push,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    mode: Mode,
    #[serde(default = "default_entities")]
    entities: u32,
    #[serde(default = "one")]
    after: u64,
    #[serde(default = "default_threads")]
    threads: u32,
    #[serde(default = "default_cap")]
    alloc_cap_mib: u64,
    #[serde(default = "default_push_every")]
    push_every_ms: u64,
}

fn default_entities() -> u32 {
    3
}
fn one() -> u64 {
    1
}
fn default_threads() -> u32 {
    8
}
fn default_cap() -> u64 {
    1024
}
fn default_push_every() -> u64 {
    50
}

pub struct Crashy {
    mode: Mode,
    entities: u32,
    after: u64,
    threads: u32,
    alloc_cap_mib: u64,
    push_every: Duration,
    calls: AtomicU64,
    acked: AtomicU64,
}

impl Crashy {
    fn items(&self) -> Snapshot {
        Snapshot::complete(
            (0..self.entities)
                .map(|i| {
                    Entity::resource("crashy.item", &format!("item-{i}"))
                        .with_name(format!("item {i}"))
                        .with_state("ACTIVE")
                })
                .collect(),
        )
    }
}

impl Plugin for Crashy {
    type Config = Config;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "crashy",
            version: env!("CARGO_PKG_VERSION"),
            description: "crashes its process on request (tests only)",
            entity_types: &["crashy.item", "crashy.pushed"],
            kind: PluginKind::Both,
        }
    }

    fn new(config: Config, _ctx: &Context) -> Result<Self, Error> {
        tracing::info!(mode = ?config.mode, "crashy plugin ready");
        Ok(Crashy {
            mode: config.mode,
            entities: config.entities,
            after: config.after,
            threads: config.threads,
            alloc_cap_mib: config.alloc_cap_mib,
            push_every: Duration::from_millis(config.push_every_ms),
            calls: AtomicU64::new(0),
            acked: AtomicU64::new(0),
        })
    }

    async fn snapshot(&self, _types: &[String]) -> Result<Snapshot, Error> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= self.after || matches!(self.mode, Mode::Ok | Mode::Push) {
            return Ok(self.items());
        }
        match self.mode {
            Mode::Ok | Mode::Push => Ok(self.items()),
            Mode::Segfault => {
                tracing::warn!("about to write to an invalid address");
                // An aligned, non-null address that is never mapped: a real SIGSEGV.
                let bad = std::ptr::without_provenance_mut::<u64>(0x10);
                // SAFETY: it is not; that is the point of this test plugin.
                unsafe { std::ptr::write_volatile(bad, 1) };
                Ok(self.items())
            }
            Mode::Abort => {
                tracing::warn!("about to abort");
                std::process::abort()
            }
            Mode::Alloc => {
                tracing::warn!("allocating without bound");
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                while (hoard.len() as u64) * 4 < self.alloc_cap_mib {
                    // Touched, so that it is resident.
                    hoard.push(vec![1u8; 4 << 20]);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                tracing::error!(mib = hoard.len() * 4, "allocation cap reached");
                std::mem::forget(hoard);
                Err(Error::failed("allocation cap reached"))
            }
            Mode::Block => {
                tracing::warn!("blocking this thread forever");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            Mode::Threads => {
                for i in 0..self.threads {
                    let _ = std::thread::Builder::new()
                        .name(format!("crashy-leak-{n}-{i}"))
                        .spawn(|| {
                            loop {
                                std::thread::sleep(Duration::from_secs(3600));
                            }
                        });
                }
                Ok(self.items())
            }
        }
    }

    async fn run(&self, sink: Sink, shutdown: Shutdown) -> Result<(), Error> {
        if self.mode != Mode::Push {
            shutdown.requested().await;
            return Ok(());
        }
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.requested() => return Ok(()),
                _ = tokio::time::sleep(self.push_every) => {}
            }
            n += 1;
            let entity = Entity::resource("crashy.pushed", &format!("{n}"))
                .with_name(format!("pushed {n}"))
                .with_source_updated_micros(i64::try_from(n).unwrap_or(i64::MAX));
            sink.push(vec![Change::Upsert(entity)]).await?;
            // Acknowledged upstream only now: the host has applied the batch.
            self.acked.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("pushed_acked", self.acked.load(Ordering::SeqCst)),
            ("snapshots", self.calls.load(Ordering::SeqCst)),
        ]
    }
}

synchronizer_plugin_api::export_plugin!(Crashy);
