//! Embedding the synchronizer in a program of your own.
//!
//! Starts the host from a configuration file, prints a fresh get-all of the given types,
//! then subscribes with a callback (run on a thread of its own, so a slow callback never
//! holds the host back) and prints every change until Ctrl-C.
//!
//! ```text
//! cargo build --release -p synchronizer-static -p synchronizer-embed-example
//! target/release/synchronizer-embed-example examples/demo/demo.toml rack switch
//! ```

use std::path::PathBuf;

use anyhow::Context as _;
use synchronizer::{Config, Event, SubscribeOptions, Synchronizer};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let config_path: PathBuf = args.next().context("usage: embed CONFIG [TYPE...]")?.into();
    let types: Vec<String> = args.collect();

    let config =
        Config::load(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let sync = Synchronizer::start(config).await?;

    for entity in sync.get_all(&types).await? {
        println!("have {} ({})", entity.key(), entity.state().unwrap_or("-"));
    }

    let options = SubscribeOptions {
        types,
        ..Default::default()
    };
    let subscription = sync.subscribe_callback(&options, |event| match event {
        Event::Change(c) => println!(
            "{} {} state={}",
            c.action.as_str(),
            c.entity.key(),
            c.entity.state().unwrap_or("-")
        ),
        Event::Resync(reason) => println!("resync ({})", reason.as_str()),
        Event::Snapshot(entities) => println!("snapshot of {} entities", entities.len()),
    })?;

    tokio::signal::ctrl_c().await?;
    // Shutdown first: the producers stop, and it returns once the callback has seen every
    // change accepted before (cancelling first would drop what is still on its way).
    sync.shutdown().await;
    subscription.cancel();
    Ok(())
}
