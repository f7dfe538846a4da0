//! Where things are: the workspace, the build's target directory, the plugin libraries
//! and the `synchronizer` binary.
//!
//! Two ways to find a plugin library, for two kinds of test:
//! - [`plugin`] and [`plugins_dir`]: the debug build in the target directory, where
//!   `scripts/build-test-plugins.sh` puts every plugin (the cross-crate tests);
//! - [`plugin_library`]: the one cargo built beside the running test executable (a
//!   plugin's own tests, which cargo builds with the plugin).

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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

/// The directory the plugin libraries are built into (the debug profile's).
pub fn plugins_dir() -> PathBuf {
    target_dir().join("debug")
}

/// The path of plugin library `lib<name>.so` in [`plugins_dir`], which must exist.
pub fn plugin(name: &str) -> PathBuf {
    let p = plugins_dir().join(format!("lib{name}.so"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-test-plugins.sh first (the README's test command does)",
        p.display()
    );
    p
}

/// The plugin library `lib<name>.so` cargo built beside the running test executable (in
/// `deps/` or the profile directory above it; the newer when both are there).
pub fn plugin_library(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps directory");
    let file = format!("lib{name}.so");
    let beside = [Some(deps.join(&file)), deps.parent().map(|p| p.join(&file))];
    beside
        .into_iter()
        .flatten()
        .filter(|p| p.exists())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| {
            panic!(
                "{file} not found beside {}: cargo builds it with the crate's tests (`cargo build -p <crate>`)",
                exe.display()
            )
        })
}

/// The directory of [`plugin_library`]`(name)`: a `plugins_dir` for a host config.
pub fn plugin_library_dir(name: &str) -> PathBuf {
    plugin_library(name)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
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

/// The `synchronizer` binary of the debug build, which must exist.
pub fn binary() -> PathBuf {
    let p = plugins_dir().join("synchronizer");
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build -p synchronizer`; scripts/build-test-plugins.sh does)",
        p.display()
    );
    p
}
