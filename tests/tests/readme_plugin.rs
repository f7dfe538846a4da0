//! The README's "Writing a plugin", followed as a new user would: its `Cargo.toml`
//! dependencies and its `src/lib.rs`, extracted from README.md exactly as printed, are
//! built as an out-of-tree crate (depending on plugin-api by path, with the workspace's
//! lock file so that it builds offline), and the `.so` is loaded into the real host with
//! the README's instance table; its snapshot is what the code says.

use std::path::Path;
use std::process::Command;

use synchronizer::{Config, Synchronizer};
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

    // The crate, as step 1 says, with the path to plugin-api pointing into this clone.
    let dir = target_dir().join("readme-plugin");
    let _ = std::fs::remove_dir_all(dir.join("src"));
    std::fs::create_dir_all(dir.join("src")).expect("crate dir");
    let api = root().join("plugin-api");
    let manifest = format!(
        "[package]\nname = \"my-plugin\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n# Its own workspace, outside this one.\n[workspace]\n\n{}",
        manifest_part.replace(
            "path = \"../synchronizer/plugin-api\"",
            &format!("path = {:?}", api.display().to_string())
        )
    );
    assert!(
        manifest.contains(&api.display().to_string()),
        "the README's plugin-api path changed: {manifest_part}"
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).expect("Cargo.toml");
    std::fs::write(dir.join("src/lib.rs"), lib_rs).expect("lib.rs");
    std::fs::copy(root().join("Cargo.lock"), dir.join("Cargo.lock")).expect("Cargo.lock");
    let build = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(
        build.status.success(),
        "the README's plugin does not build:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let so = dir.join("target/debug/libmy_plugin.so");
    assert!(so.exists(), "no {}", so.display());

    // Step 5's table, in a host whose plugins_dir holds the .so.
    let plugins_dir: &Path = so.parent().expect("dir");
    let config = Config::from_toml(&format!(
        "plugins_dir = {:?}\n{instance_table}",
        plugins_dir.display().to_string()
    ))
    .expect("the README's instance table is a valid configuration");
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
