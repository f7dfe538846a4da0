//! The interface's evolution rules (plugin-api's crate docs, "Evolving the interface"),
//! on real `.so` files that `scripts/build-test-plugins.sh` builds from
//! `tests/abi/plugin-0.1.0` against other plugin-apis:
//!
//! - against the frozen 0.1.0 (`tests/abi/plugin-api-0.1.0`): today's host, whose
//!   plugin-api appends a field to `FfiPluginInfo` (the sample configuration) and a method
//!   to the root module (`check_config`), loads it, runs it, sees the field as absent and
//!   validates through the 0.1.0 entry point;
//! - against the next patch release (a generated copy that appends another field):
//!   refused, naming both versions;
//! - against a copy of today's version with `FfiCounter` changed: refused, in one line
//!   naming the type and the field.

use std::time::Duration;
use synchronizer::instance::PluginInstance;
use synchronizer::loader::{LoadError, host_api_version, load};
use synchronizer::{Health, PluginHealth, Synchronizer};

use synchronizer_test_kit::host::config;
use synchronizer_test_kit::paths::{binary, plugin};

fn refusal(name: &str) -> String {
    let path = plugin(name);
    match load(&path) {
        Err(e @ LoadError::Incompatible { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string()),
                "names the file: {msg}"
            );
            assert!(!msg.contains('\n'), "one line: {msg}");
            assert!(msg.len() < 600, "short ({} bytes): {msg}", msg.len());
            msg
        }
        Err(e) => panic!("{name}: refused for another reason: {e}"),
        Ok(_) => panic!("{name} loaded"),
    }
}

#[test]
fn todays_host_has_a_newer_api_than_the_frozen_one() {
    // The other tests mean something only while the host is ahead of 0.1.0.
    let host = host_api_version();
    assert!(host.starts_with("0.1.") && host != "0.1.0", "{host}");
}

#[tokio::test]
async fn a_plugin_built_against_0_1_0_loads_and_runs_in_todays_host() {
    let lib = load(&plugin("synchronizer_test_api_0_1_0")).expect("a 0.1.0 plugin loads");
    assert_eq!(lib.meta.api_version, "0.1.0");
    assert_eq!(lib.meta.name, "vintage");
    assert_eq!(lib.meta.entity_types, vec!["vintage.item"]);
    assert_eq!(
        lib.sample_config, None,
        "the field appended in 0.1.1 is absent, not empty"
    );
    assert!(
        lib.module.check_config().is_none(),
        "the method appended in 0.1.1 is absent"
    );

    // Validation falls back to 0.1.0's `validate_config`, and the field is still named.
    let ok = serde_json::json!({ "items": 3 });
    assert_eq!(PluginInstance::check_config(&lib, "old", &ok), Ok(()));
    let wrong = serde_json::json!({ "items": "three" });
    let problem = PluginInstance::check_config(&lib, "old", &wrong).expect_err("refused");
    assert_eq!(problem.field.as_deref(), Some("items"), "{problem:?}");
    assert!(!problem.message.contains("instance `old`"), "{problem:?}");
    assert!(
        !problem.message.contains("line 1"),
        "no place in generated JSON: {problem:?}"
    );
    let typo = serde_json::json!({ "itemz": 3 });
    let problem = PluginInstance::check_config(&lib, "old", &typo).expect_err("refused");
    assert!(problem.message.contains("itemz"), "{problem:?}");

    // It runs, in process and in a child process.
    let sync = Synchronizer::start(config(
        r#"
[[instances]]
name = "old"
library = "libsynchronizer_test_api_0_1_0.so"
[instances.config]
items = 3
"#,
    ))
    .await
    .expect("starts");
    let mut keys: Vec<String> = sync
        .get_all(&["vintage.item"])
        .await
        .expect("answers")
        .iter()
        .map(|e| e.key())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["vintage.item:v0", "vintage.item:v1", "vintage.item:v2"]
    );
    let health = sync.plugin_health(Duration::from_secs(5)).await;
    assert!(
        matches!(
            health.first(),
            Some(PluginHealth {
                health: Health { healthy: true, .. },
                ..
            })
        ),
        "{health:?}"
    );
    sync.shutdown().await;

    let sync = Synchronizer::start(config(&format!(
        r#"
[[instances]]
name = "old-child"
library = "libsynchronizer_test_api_0_1_0.so"
isolation = "process"
child_program = {:?}
[instances.config]
items = 2
"#,
        binary().display().to_string()
    )))
    .await
    .expect("starts in a child process");
    let entities = sync.get_all(&["vintage.item"]).await.expect("answers");
    assert_eq!(entities.len(), 2);
    sync.shutdown().await;
}

#[test]
fn a_plugin_built_against_a_newer_patch_release_is_refused_naming_both_versions() {
    let host = host_api_version();
    let (series, patch) = host.rsplit_once('.').expect("x.y.z");
    let newer = format!("{series}.{}", patch.parse::<u32>().expect("a number") + 1);
    let msg = refusal("synchronizer_test_api_next");
    assert!(
        msg.contains(&format!("built against plugin-api {newer}"))
            && msg.contains(&format!("this host (plugin-api {host})")),
        "names both versions: {msg}"
    );
    assert!(
        msg.contains("newer than the host"),
        "says which is newer: {msg}"
    );
}

#[test]
fn a_layout_mismatch_names_the_type_and_the_field_in_one_line() {
    let host = host_api_version();
    let msg = refusal("synchronizer_test_layout");
    assert!(
        msg.contains("`FfiCounter`, field `value`")
            && msg.contains("`u32` in the plugin, `u64` in the host"),
        "names the type, the field and both sides: {msg}"
    );
    assert!(
        msg.contains(&format!("built against plugin-api {host}")),
        "names the version: {msg}"
    );
    assert!(
        !msg.contains(&format!("rebuild the plugin against plugin-api {host}")),
        "never advises what the plugin already did: {msg}"
    );
}
