//! The plugins of the docs, followed as a new user would: the README's "Writing a
//! plugin" (a collector) and docs/writing-a-plugin.md's "A bus plugin". Each one's
//! `Cargo.toml` dependencies and `src/lib.rs`, extracted exactly as printed, are built as
//! an out-of-tree crate (depending on plugin-api by path, with the workspace's lock file
//! so that it builds offline), and the `.so` is loaded into the real host with the doc's
//! instance table; what it reports is what the code says.

use std::path::Path;
use std::process::Command;

use std::time::Duration;

use synchronizer::instance::PluginInstance;
use synchronizer::loader::load;
use synchronizer::{Action, Config, Event, SubscribeOptions, Synchronizer};
use synchronizer_test_kit::paths::{root, target_dir};

/// The fenced blocks of `lang` in the README's section `heading`, in order.
fn blocks(readme: &str, heading: &str, lang: &str) -> Vec<String> {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let section = &readme[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        let trimmed = line.trim_start();
        match &mut current {
            None if trimmed == format!("```{lang}") => current = Some(String::new()),
            Some(_) if trimmed == "```" => out.extend(current.take()),
            Some(text) => {
                // The README indents the blocks under their list items.
                text.push_str(line.strip_prefix("   ").unwrap_or(line));
                text.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Builds `lib_rs` with the doc's `manifest_part` as crate `name`, out of tree, and
/// returns the `.so`. The crates share one target directory (dependencies build once).
fn build_doc_crate(name: &str, manifest_part: &str, lib_rs: &str) -> std::path::PathBuf {
    let dir = target_dir().join("doc-plugins").join(name);
    let _ = std::fs::remove_dir_all(dir.join("src"));
    std::fs::create_dir_all(dir.join("src")).expect("crate dir");
    let api = root().join("plugin-api");
    let manifest = format!(
        "[package]\nname = {name:?}\nversion = \"0.1.0\"\nedition = \"2024\"\n\n# Its own workspace, outside this one.\n[workspace]\n\n{}",
        manifest_part.replace(
            "path = \"../synchronizer/plugin-api\"",
            &format!("path = {:?}", api.display().to_string())
        )
    );
    assert!(
        manifest.contains(&api.display().to_string()),
        "the doc's plugin-api path changed: {manifest_part}"
    );
    let deps = manifest_part
        .split("[dependencies]")
        .nth(1)
        .expect("a [dependencies] table");
    let crates: Vec<&str> = deps
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .filter(|k| !k.is_empty() && !k.starts_with('#'))
        .collect();
    assert_eq!(
        crates,
        ["synchronizer-plugin-api", "serde"],
        "a plugin depends on plugin-api and serde only"
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).expect("Cargo.toml");
    std::fs::write(dir.join("src/lib.rs"), lib_rs).expect("lib.rs");
    std::fs::copy(root().join("Cargo.lock"), dir.join("Cargo.lock")).expect("Cargo.lock");
    let target = target_dir().join("doc-plugins").join("target");
    let build = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(
        build.status.success(),
        "the doc's plugin {name} does not build:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let so = target
        .join("debug")
        .join(format!("lib{}.so", name.replace('-', "_")));
    assert!(so.exists(), "no {}", so.display());
    so
}

fn host_config(so: &Path, instance_table: &str) -> Config {
    let plugins_dir: &Path = so.parent().expect("dir");
    Config::from_toml(&format!(
        "plugins_dir = {:?}\n{instance_table}",
        plugins_dir.display().to_string()
    ))
    .expect("the doc's instance table is a valid configuration")
}

#[test]
fn the_readme_plugin_builds_and_runs_in_the_host() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let tomls = blocks(&readme, "## Writing a plugin", "toml");
    let rusts = blocks(&readme, "## Writing a plugin", "rust");
    assert_eq!(
        (tomls.len(), rusts.len()),
        (2, 1),
        "the section's blocks changed"
    );
    let (manifest_part, instance_table, lib_rs) = (&tomls[0], &tomls[1], &rusts[0]);
    let so = build_doc_crate("my-plugin", manifest_part, lib_rs);
    // Step 5's table, in a host whose plugins_dir holds the .so.
    let config = host_config(&so, instance_table);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let sync = Synchronizer::start(config)
            .await
            .expect("the host loads it");
        let report = sync.get_all_report(&["rack"]).await.expect("a snapshot");
        sync.shutdown().await;
        let mut keys: Vec<String> = report.entities.iter().map(|e| e.key()).collect();
        keys.sort();
        let mut want: Vec<String> = (0..12).map(|i| format!("rack:r{i}")).collect();
        want.sort();
        assert_eq!(keys, want, "the README's `racks = 12`");
        for e in &report.entities {
            assert_eq!(e.state(), Some("available"), "{e:?}");
            let json = synchronizer::output::entity_to_json(e);
            assert!(
                json.contains("\"kind\":\"contains\"") && json.contains("room:hall-1"),
                "{json}"
            );
        }
    });
}

#[test]
fn the_guides_bus_plugin_builds_and_pushes_changes_into_the_host() {
    let guide = std::fs::read_to_string(root().join("docs/writing-a-plugin.md"))
        .expect("docs/writing-a-plugin.md");
    let tomls = blocks(&guide, "## 4. A bus plugin", "toml");
    let rusts = blocks(&guide, "## 4. A bus plugin", "rust");
    assert_eq!(
        (tomls.len(), rusts.len()),
        (2, 1),
        "the section's blocks changed"
    );
    let (manifest_part, instance_table, lib_rs) = (&tomls[0], &tomls[1], &rusts[0]);
    let so = build_doc_crate("my-bus", manifest_part, lib_rs);

    // Its validation, as check-config runs it.
    let lib = load(&so).expect("loads");
    assert_eq!(lib.meta.kind.as_str(), "bus");
    let zero = serde_json::json!({ "period_ms": 0 });
    let problem = PluginInstance::check_config(&lib, "clock", &zero).expect_err("refused");
    assert_eq!(problem.field.as_deref(), Some("period_ms"), "{problem:?}");

    let config = host_config(&so, instance_table);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (sync, mut sub) = Synchronizer::start_subscribed(config, &SubscribeOptions::default())
            .await
            .expect("the host loads it");
        // Created, then updated with each tick.
        let mut seen: Vec<(Action, u64)> = Vec::new();
        while seen.len() < 3 {
            match tokio::time::timeout(Duration::from_secs(10), sub.recv()).await {
                Ok(Some(Event::Change(c))) => {
                    assert_eq!(c.entity.key(), "clock:main");
                    let ticks = c.entity.properties()["ticks"].as_u64().expect("ticks");
                    seen.push((c.action, ticks));
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("the subscription ended"),
                Err(_) => panic!("no tick within 10 s; seen {seen:?}"),
            }
        }
        assert_eq!(seen[0], (Action::Created, 1), "{seen:?}");
        assert!(
            seen[1..].iter().all(|(a, _)| *a == Action::Updated),
            "{seen:?}"
        );
        assert!(
            seen.windows(2).all(|w| w[1].1 > w[0].1),
            "ticks go up: {seen:?}"
        );
        let stopped = tokio::time::timeout(Duration::from_secs(10), sync.shutdown()).await;
        assert!(stopped.is_ok(), "the bus plugin stops when asked");
    });
}
