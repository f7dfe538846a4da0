//! Helpers for the cross-crate tests: where the built plugin libraries and the binary
//! are, and small config builders. The libraries are built by
//! `scripts/build-test-plugins.sh` (the README's test command runs it first); a test
//! that cannot find one fails and says so, it is never skipped.

pub mod http;

use std::path::PathBuf;
use std::time::Duration;

use synchronizer::{Event, Subscription};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The build's target directory (`CARGO_TARGET_DIR`, or `target/` at the root).
pub fn target_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    if target.is_absolute() {
        target
    } else {
        root().join(target)
    }
}

/// The directory the plugin libraries are built into.
pub fn plugins_dir() -> PathBuf {
    target_dir().join("debug")
}

/// The path of plugin library `lib<name>.so`, which must exist.
pub fn plugin(name: &str) -> PathBuf {
    let p = plugins_dir().join(format!("lib{name}.so"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-test-plugins.sh first (the README's test command does)",
        p.display()
    );
    p
}

/// The release build of `file` (a plugin library or the binary), which benchmarks use and
/// which must exist.
pub fn release(file: &str) -> PathBuf {
    let p = target_dir().join("release").join(file);
    assert!(
        p.exists(),
        "{} is missing: cargo build --release -p synchronizer -p synchronizer-test-faulty",
        p.display()
    );
    p
}

/// The `synchronizer` binary.
pub fn binary() -> PathBuf {
    let p = plugins_dir().join("synchronizer");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first",
        p.display()
    );
    p
}

/// A config whose plugins directory is the build's.
pub fn config(body: &str) -> synchronizer::Config {
    let text = format!(
        "plugins_dir = {:?}\n{body}",
        plugins_dir().display().to_string()
    );
    match synchronizer::Config::from_toml(&text) {
        Ok(c) => c,
        Err(e) => panic!("test config does not parse: {e}\n{text}"),
    }
}

/// The next event within `within`, or a panic saying what was awaited.
pub async fn next_event(sub: &mut Subscription, within: Duration, what: &str) -> Event {
    match tokio::time::timeout(within, sub.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("subscription closed while waiting for {what}"),
        Err(_) => panic!("no event within {within:?} while waiting for {what}"),
    }
}

/// A benchmark's knob: the environment variable `name` as a number, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A loopback TCP port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB (`None` once it is gone).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
