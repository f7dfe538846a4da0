//! The cross-crate tests (`tests/tests/`) and benchmarks (`tests/benches/`). Their helpers
//! are the test kit's (`synchronizer-test-kit`, `test-kit/`); this library re-exports the
//! ones it used to hold, under their old paths, for the tests not moved to the kit yet
//! (the process-isolation tests and benchmark, being rewritten elsewhere). New code uses
//! the kit.

pub use synchronizer_test_kit::host::{config, next_event};
pub use synchronizer_test_kit::http;
pub use synchronizer_test_kit::paths::{binary, plugin, plugins_dir, release, root, target_dir};
pub use synchronizer_test_kit::sys::{env_or, free_port, rss_kib};
