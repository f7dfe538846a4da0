//! The template's `.so` loaded into the real host, as the service would load it: its
//! metadata, its sample table (which must pass the same checks as check-config), its
//! validation, and a snapshot.

use std::path::PathBuf;

use synchronizer::instance::PluginInstance;
use synchronizer::loader::load;
use synchronizer::{Config, Synchronizer};
use synchronizer_plugin_api::{serde_json, tokio};

/// The library `cargo test` built for this test: beside it in `target/<profile>/deps`
/// (the `rlib` crate type makes `cargo test` build the `.so` too), or the one `cargo
/// build` put in `target/<profile>/`.
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let deps = exe.parent().expect("target/<profile>/deps");
    let name = "libsynchronizer_plugin_template.so";
    let candidates = [deps.join(name), deps.join("..").join(name)];
    match candidates.iter().find(|p| p.exists()) {
        Some(so) => so.clone(),
        None => panic!("no {name} in {} or its parent", deps.display()),
    }
}

fn config(instance_tables: &str) -> Config {
    let dir = library().parent().expect("dir").display().to_string();
    Config::from_toml(&format!("plugins_dir = {dir:?}\n{instance_tables}")).expect("valid")
}

#[test]
fn it_loads_and_its_sample_is_valid() {
    let lib = load(&library()).expect("the host loads it");
    assert_eq!(lib.meta.name, "rooms");
    assert_eq!(lib.meta.entity_types, ["room"]);
    let sample = lib.sample_config.clone().expect("a sample");
    let config = config(&sample);
    let instance = &config.instances[0];
    assert_eq!(
        PluginInstance::check_config(&lib, &instance.name, &instance.config),
        Ok(())
    );
}

#[test]
fn validation_names_the_field() {
    let lib = load(&library()).expect("loads");
    let table = serde_json::json!({ "building": "hq", "rooms": 0 });
    let problem = PluginInstance::check_config(&lib, "rooms", &table).expect_err("refused");
    assert_eq!(problem.field.as_deref(), Some("rooms"));
    assert_eq!(problem.message, "must be at least 1");
}

#[tokio::test(crate = "synchronizer_plugin_api::tokio")]
async fn a_snapshot_reports_every_room_in_its_building() {
    let sync = Synchronizer::start(config(
        "[[instances]]\nname = \"rooms\"\nlibrary = \"libsynchronizer_plugin_template.so\"\n[instances.config]\nbuilding = \"hq\"\nrooms = 2\n",
    ))
    .await
    .expect("starts");
    let mut rooms = sync.get_all(&["room"]).await.expect("a snapshot");
    sync.shutdown().await;
    rooms.sort_by_key(|e| e.key());
    let keys: Vec<String> = rooms.iter().map(|e| e.key()).collect();
    assert_eq!(keys, ["room:hq-1", "room:hq-2"]);
    for room in &rooms {
        assert_eq!(room.state(), Some("open"));
        let relation = &room.relations()[0];
        assert_eq!(
            (relation.kind(), relation.other()),
            ("contains", "building:hq")
        );
    }
}
