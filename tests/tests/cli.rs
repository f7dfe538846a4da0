//! The `synchronizer` binary end to end, on the real static plugin: `check-config`,
//! `plugins`, `snapshot`, and `run` printing changes as JSON lines while a YAML file is
//! edited, then stopping cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use synchronizer_test_kit::nova;
use synchronizer_test_kit::paths::{binary, plugins_dir};

const RACK: &str = "entities:\n  - type: rack\n    id: r1\n    name: rack one\n    state: available\n  - type: switch\n    id: s1\n    state: available\nrelationships:\n  - source: rack:r1\n    target: switch:s1\n    type: contains\n";

/// A directory with YAML data and a config that runs the static plugin over it.
fn setup(extra_instance_config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("rack.yaml"), RACK).unwrap();
    let config = format!(
        "plugins_dir = {:?}\n\n[[instances]]\nname = \"static-test\"\nlibrary = \"libsynchronizer_static.so\"\ninterval = \"200ms\"\njitter = \"0s\"\n\n[instances.config]\ndirectory = {:?}\n{extra_instance_config}",
        plugins_dir().display().to_string(),
        data.display().to_string()
    );
    std::fs::write(dir.path().join("sync.toml"), config).unwrap();
    dir
}

fn synchronizer(args: &[&str]) -> std::process::Output {
    Command::new(binary()).args(args).output().expect("runs")
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_bad_field() {
    let dir = setup("");
    let out = synchronizer(&["check-config", &path(dir.path(), "sync.toml")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 instance(s))"));

    // A typo in the plugin's own table.
    let dir = setup("directry = \"x\"\n");
    let out = synchronizer(&["check-config", &path(dir.path(), "sync.toml")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("instance `static-test`") && err.contains("directry"),
        "{err}"
    );

    // A typo in the host's part.
    let dir = setup("");
    let file = dir.path().join("sync.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("interval =", "intervl =");
    std::fs::write(&file, text).unwrap();
    let out = synchronizer(&["check-config", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("intervl"), "{err}");
}

#[test]
fn check_config_refuses_absurd_durations_and_unreadable_environment_values() {
    // A duration past a year, named by its key (it once passed, then made the status
    // panic writing a time past 9999 and overflowed the scheduler's clock).
    let dir = setup("");
    let file = dir.path().join("sync.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("interval = \"200ms\"", "interval = \"10000years\"");
    std::fs::write(&file, text).unwrap();
    let out = synchronizer(&["check-config", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("instance `static-test`: interval: 10000years is longer than"),
        "{err}"
    );

    // An environment override with a multi-byte character before an escape: figment
    // panicked on it (exit 101); now a configuration error naming the variable.
    let dir = setup("");
    let run = |value: &str| {
        Command::new(binary())
            .args(["check-config", &path(dir.path(), "sync.toml")])
            .env("SYNCHRONIZER_PLUGIN_LOG_LEVEL", value)
            .output()
            .expect("runs")
    };
    let out = run("\"é\\n\"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("environment variable SYNCHRONIZER_PLUGIN_LOG_LEVEL")
            && !err.contains("panicked"),
        "{err}"
    );
    // The same character alone is an ordinary bad value; a quoted good one works.
    let out = run("é");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`é` is not a level"));
    let out = run("\"debug\"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn plugins_lists_what_each_file_provides_or_why_it_cannot_load() {
    let dir = setup("");
    let out = synchronizer(&["plugins", "--config", &path(dir.path(), "sync.toml")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let api = synchronizer::loader::host_api_version();
    assert!(
        text.contains(&format!(
            "plugin static 0.1.0 (collector), plugin-api {api}"
        )),
        "{text}"
    );
    assert!(text.contains("instances: static-test"), "{text}");
    assert!(text.contains("plugin faulty 0.1.0"), "{text}");
    assert!(
        text.contains("libsynchronizer_test_incompatible.so\n  cannot load:")
            && text.contains("built against plugin-api 0.2.0"),
        "{text}"
    );
}

#[test]
fn snapshot_prints_the_entities_as_json_lines() {
    let dir = setup("");
    let out = synchronizer(&[
        "snapshot",
        "--config",
        &path(dir.path(), "sync.toml"),
        "--types",
        "rack",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["key"], "rack:r1");
    assert_eq!(lines[0]["relations"][0]["key"], "switch:s1");
    assert_eq!(lines[0]["relations"][0]["direction"], "out");
}

#[test]
fn run_prints_changes_as_they_happen_and_stops_on_sigterm() {
    let dir = setup("");
    let mut child = Command::new(binary())
        .args(["run", "--config", &path(dir.path(), "sync.toml")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pipe = std::os::fd::AsRawFd::as_raw_fd(&stdout);
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).expect("every stdout line is JSON"));
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no {what}"))
    };

    let mut created: Vec<String> = (0..2)
        .map(|_| next("created").get("key").unwrap().to_string())
        .collect();
    created.sort();
    assert_eq!(created, vec!["\"rack:r1\"", "\"switch:s1\""]);
    // The writer asked for a 1 MiB pipe (Linux's default is 64 KiB), so that a burst of
    // changes seldom waits for the reader. The read end is still open: the reading
    // thread holds it.
    // SAFETY: F_GETPIPE_SZ only reads the pipe's size.
    let size = unsafe { libc::fcntl(pipe, libc::F_GETPIPE_SZ) };
    assert_eq!(size, 1 << 20, "stdout's pipe size");

    // Edit the file: one `updated` within an interval, nothing for the unchanged switch.
    let file = dir.path().join("data/rack.yaml");
    std::fs::write(
        &file,
        RACK.replacen("state: available", "state: maintenance", 1),
    )
    .unwrap();
    let updated = next("updated");
    assert_eq!(updated["action"], "updated");
    assert_eq!(updated["key"], "rack:r1");
    assert_eq!(updated["state"], "maintenance");
    assert_eq!(updated["instance"], "static-test");
    assert_eq!(updated["initial"], false);

    // Remove the switch: deleted (and the rack loses its relation: updated).
    std::fs::write(
        &file,
        "entities:\n  - type: rack\n    id: r1\n    name: rack one\n    state: maintenance\n",
    )
    .unwrap();
    let mut actions: Vec<String> = (0..2)
        .map(|_| {
            let v = next("deleted");
            format!(
                "{} {}",
                v["action"].as_str().unwrap(),
                v["key"].as_str().unwrap()
            )
        })
        .collect();
    actions.sort();
    assert_eq!(actions, vec!["deleted switch:s1", "updated rack:r1"]);

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit after SIGTERM: {:?}", out.status);
    // The plugin's own `tracing` events reach the host's log, with the instance's name.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("static plugin ready") && log.contains("instance=\"static-test\""),
        "{log}"
    );
    assert!(log.contains("SIGTERM"), "{log}");
}

#[test]
fn a_plugin_panic_reaches_the_host_log_and_the_host_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "plugins_dir = {:?}\n[[instances]]\nname = \"panicky\"\nlibrary = \"libsynchronizer_test_faulty.so\"\ninterval = \"100ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"50ms\"\n[instances.config]\nmode = \"panic\"\n",
        plugins_dir().display().to_string()
    );
    std::fs::write(dir.path().join("p.toml"), config).unwrap();
    let mut child = Command::new(binary())
        .args([
            "--log-format",
            "json",
            "run",
            "--config",
            &path(dir.path(), "p.toml"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut panics = 0;
    let mut failures = 0;
    while panics < 2 || failures < 2 {
        let v = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("log lines keep coming");
        let text = v.to_string();
        if v["fields"]["instance"] == "panicky"
            && text.contains("plugin panicked: ")
            && text.contains("asked to panic")
        {
            panics += 1;
        }
        if text.contains("snapshot failed") && text.contains("instance `panicky`") {
            failures += 1;
        }
    }
    // Still alive after repeated panics: it stops on request.
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());
}

/// `snapshot` prints what it got and exits with status 3 when a type came back
/// incomplete, naming it, the instance and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_exits_3_naming_an_incomplete_type() {
    let cloud = nova::Nova::start(nova::Cloud::captured()).await;
    cloud.cloud().services_status = Some(500);
    let plugin_config = cloud.config(serde_json::json!({}));
    let dir = tempfile::tempdir().unwrap();
    let mut toml = format!(
        "plugins_dir = {:?}\n\n[[instances]]\nname = \"nova-cli\"\nlibrary = \"libsynchronizer_nova.so\"\n\n",
        plugins_dir().display().to_string()
    );
    // The plugin's own table, as TOML.
    toml.push_str("[instances.config]\n");
    toml.push_str(&format!("page_size = {}\n", plugin_config["page_size"]));
    toml.push_str("[instances.config.cloud]\nregion = \"RegionOne\"\ntimeout = \"2s\"\n");
    toml.push_str("[instances.config.cloud.auth]\n");
    if let Some(auth) = plugin_config["cloud"]["auth"].as_object() {
        for (k, v) in auth {
            toml.push_str(&format!("{k} = {v}\n"));
        }
    }
    let config = dir.path().join("sync.toml");
    std::fs::write(&config, toml).unwrap();
    let config = config.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        synchronizer(&[
            "snapshot",
            "--config",
            &config,
            "--types",
            "nova.host,nova.instance",
        ])
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("the snapshot is incomplete")
            && stderr.contains("nova.host from `nova-cli`")
            && stderr.contains("HTTP 500"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let types: Vec<String> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].to_string())
        .collect();
    assert_eq!(types.len(), 5, "the instances were printed: {stdout}");
    assert!(types.iter().all(|t| t == "\"nova.instance\""), "{stdout}");
}

/// A config file in a temporary directory, the build's plugins directory first.
fn config_file(body: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sync.toml");
    let text = format!(
        "plugins_dir = {:?}\n{body}",
        plugins_dir().display().to_string()
    );
    std::fs::write(&file, text).unwrap();
    (dir, file.display().to_string())
}

#[test]
fn snapshot_collects_each_instance_exactly_once() {
    // The tick plugin counts its calls: `n` is 1 on the first. The scheduler's first
    // collection starts as the host does; the snapshot must take it, not call again,
    // however the two race.
    let (_dir, file) = config_file(
        "[[instances]]\nname = \"counter\"\nlibrary = \"libsynchronizer_test_faulty.so\"\n[instances.config]\nmode = \"tick\"\n",
    );
    for round in 0..10 {
        let out = synchronizer(&["snapshot", "--config", &file]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        assert_eq!(lines.len(), 1, "round {round}: {lines:?}");
        assert_eq!(
            lines[0]["properties"]["n"], 1,
            "round {round}: the plugin was called more than once: {lines:?}"
        );
    }
}

#[test]
fn check_config_points_at_the_file_line_and_column_of_a_plugins_field() {
    let (_dir, file) = config_file(
        r#"
[[instances]]
name = "bus"
library = "libsynchronizer_bus.so"
[instances.config]
urls = ["amqp://guest:s3cr3t@127.0.0.1:5672/"]
families = ["nova-versioned"]
prefetch = 0

[[instances]]
name = "typo"
library = "libsynchronizer_test_faulty.so"
[instances.config]
mode = "ok"
entities = "three"
"#,
    );
    let out = synchronizer(&["check-config", &file]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // Line 1 is plugins_dir, line 2 empty: prefetch is on line 9, entities on 16.
    assert!(
        err.contains(&format!(
            "{file}:9:1: instance `bus`: field `prefetch`: must be at least 1"
        )),
        "a check the plugin's validate makes, which serde cannot: {err}"
    );
    assert!(
        err.contains(&format!(
            "{file}:16:1: instance `typo`: field `entities`: invalid type: string \"three\""
        )),
        "a serde error, at the TOML, not at generated JSON: {err}"
    );
    assert!(!err.contains("line 1 column"), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
    assert!(err.contains("2 problem(s)"), "{err}");
}

#[test]
fn plugins_sample_prints_a_plugins_own_table_or_says_why_not() {
    let (_dir, file) = config_file("");
    let out = synchronizer(&["plugins", "--config", &file, "--sample", "bus"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sample = String::from_utf8_lossy(&out.stdout);
    assert!(
        sample.contains("library = \"libsynchronizer_bus.so\""),
        "{sample}"
    );

    let out = synchronizer(&["plugins", "--config", &file, "--sample", "vintage"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("built against plugin-api 0.1.0, which predates sample configurations"),
        "{err}"
    );

    let out = synchronizer(&["plugins", "--config", &file, "--sample", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no plugin named `nosuch`"));
}

#[test]
fn every_shipped_plugins_sample_passes_check_config() {
    let (_dir, file) = config_file("");
    for name in [
        "nova", "heat", "nagios", "bus", "static", "cinder", "neutron",
    ] {
        let out = synchronizer(&["plugins", "--config", &file, "--sample", name]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sample = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(sample.contains("[[instances]]"), "{name}: {sample}");
        let (_d, with_sample) = config_file(&sample);
        let out = synchronizer(&["check-config", &with_sample]);
        assert!(
            out.status.success(),
            "{name}'s sample fails check-config: {}\n{sample}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
