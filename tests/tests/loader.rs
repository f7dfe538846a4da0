//! The loader on real files: a good plugin, one built against an incompatible plugin-api,
//! shared libraries and files that are not plugins, a missing file, a constructor that
//! panics, a plugin configuration with a typo; fail-fast versus skip-and-report.

use synchronizer::loader::{LoadError, load};
use synchronizer::{Health, PluginHealth, StartError, Synchronizer};
use synchronizer_test_kit::host::config;
use synchronizer_test_kit::paths::{plugin, plugins_dir};

#[test]
fn a_good_plugin_loads_with_its_metadata() {
    let lib = load(&plugin("synchronizer_static")).expect("loads");
    assert_eq!(lib.meta.name, "static");
    assert_eq!(lib.meta.version, "0.1.0");
    assert_eq!(
        lib.meta.api_version,
        synchronizer::loader::host_api_version()
    );
    assert_eq!(lib.meta.kind.as_str(), "collector");
    let faulty = load(&plugin("synchronizer_test_faulty")).expect("loads");
    assert_eq!(
        faulty.meta.name, "faulty",
        "a second plugin is not the first one again"
    );
    assert_eq!(faulty.meta.entity_types, vec!["faulty.item", "faulty.tick"]);
}

#[test]
fn a_plugin_built_against_another_api_version_is_refused_in_a_few_lines() {
    let path = plugin("synchronizer_test_incompatible");
    let err = match load(&path) {
        Err(e) => e,
        Ok(_) => panic!("an incompatible plugin loaded"),
    };
    assert!(matches!(err, LoadError::Incompatible { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "names the file: {msg}"
    );
    let host = synchronizer::loader::host_api_version();
    assert!(
        msg.contains("built against plugin-api 0.2.0")
            && msg.contains(&format!("plugin-api {host}")),
        "names both versions: {msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(
        msg.len() < 2000,
        "short, not abi_stable's whole report ({} bytes)",
        msg.len()
    );
}

#[test]
fn a_shared_library_that_is_not_a_plugin_is_refused() {
    let libz = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
    .expect("libz.so.1 is part of every Debian system");
    let err = load(&libz).err().expect("libz is no plugin");
    assert!(matches!(err, LoadError::NotAPlugin { .. }), "{err:?}");
    assert!(err.to_string().contains("libz.so.1"));
}

#[test]
fn a_text_file_and_a_missing_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("libnotes.so");
    std::fs::write(&text, "these are notes, not a library\n").unwrap();
    let err = load(&text).err().expect("not a library");
    assert!(matches!(err, LoadError::NotALibrary { .. }), "{err:?}");
    assert!(err.to_string().contains("libnotes.so"), "{err}");

    let missing = dir.path().join("libnothing.so");
    let err = load(&missing).err().expect("missing");
    assert!(matches!(err, LoadError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("no such file"), "{err}");
}

fn two_instances(policy: &str) -> synchronizer::Config {
    config(&format!(
        r#"
on_plugin_error = "{policy}"
[[instances]]
name = "good"
library = "libsynchronizer_test_faulty.so"
[instances.config]
mode = "ok"
entities = 3

[[instances]]
name = "bad"
library = "libsynchronizer_test_incompatible.so"
[instances.config]
mode = "ok"
"#
    ))
}

#[tokio::test]
async fn fail_fast_names_every_failing_plugin() {
    let err = match Synchronizer::start(two_instances("fail")).await {
        Err(e) => e,
        Ok(_) => panic!("started with a bad plugin"),
    };
    assert!(
        matches!(err, StartError::Plugins(ref v) if v.len() == 1),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("instance `bad`") && msg.contains("incompatible"),
        "{msg}"
    );
}

#[tokio::test]
async fn skip_and_report_runs_the_good_instances() {
    let sync = Synchronizer::start(two_instances("skip"))
        .await
        .expect("starts");
    assert_eq!(sync.failures().len(), 1);
    assert!(
        sync.failures()[0]
            .to_string()
            .contains("libsynchronizer_test_incompatible.so")
    );
    let entities = sync
        .get_all(&["faulty.item"])
        .await
        .expect("the good one answers");
    assert_eq!(entities.len(), 3);
    sync.shutdown().await;
}

#[tokio::test]
async fn a_panicking_constructor_is_an_error_not_a_crash() {
    let c = config(
        r#"
[[instances]]
name = "panicky"
library = "libsynchronizer_test_faulty.so"
[instances.config]
mode = "ok"
panic_in_new = true
"#,
    );
    let err = Synchronizer::start(c).await.err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("instance `panicky`") && msg.contains("asked to panic in new"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_plugin_config_typo_names_the_instance_and_the_field() {
    let c = config(
        r#"
[[instances]]
name = "typo"
library = "libsynchronizer_test_faulty.so"
[instances.config]
mode = "ok"
entitiez = 3
"#,
    );
    let msg = Synchronizer::start(c)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        msg.contains("instance `typo`") && msg.contains("entitiez"),
        "{msg}"
    );

    let c = config(
        r#"
[[instances]]
name = "wrong-type"
library = "libsynchronizer_test_faulty.so"
[instances.config]
mode = "ok"
entities = "three"
"#,
    );
    let msg = Synchronizer::start(c)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        msg.contains("instance `wrong-type`") && msg.contains("`entities`"),
        "{msg}"
    );
    assert!(plugins_dir().exists());
}

#[tokio::test]
async fn plugins_report_their_own_health() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let c = config(&format!(
        "[[instances]]\nname = \"static\"\nlibrary = \"libsynchronizer_static.so\"\n[instances.config]\ndirectory = {:?}\n",
        data.display().to_string()
    ));
    let sync = Synchronizer::start(c).await.expect("starts");
    let timeout = std::time::Duration::from_secs(5);
    assert_eq!(
        sync.plugin_health(timeout).await,
        vec![PluginHealth {
            instance: "static".to_owned(),
            health: Health::healthy(),
        }]
    );
    std::fs::remove_dir(&data).unwrap();
    let report = sync.plugin_health(timeout).await;
    assert!(
        !report[0].health.healthy && report[0].health.message.contains("cannot read"),
        "{report:?}"
    );
    sync.shutdown().await;
}
