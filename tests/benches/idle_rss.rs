//! The host's resident memory with the shipped plugins loaded and idle: the real release
//! binary (`synchronizer run`, HTTP API on), VmRSS read from `/proc/<pid>/status`.
//! Target: ≤ 40 MiB.
//!
//! Loaded: the static plugin (over a two-entity YAML file) and the nagios plugin (over
//! a loopback replay of pages captured from a real Nagios 4), both collecting
//! successfully; and — when their .so files are in the plugins directory — the bus,
//! nova and heat plugins, pointed at a closed loopback port (so they load, start, fail
//! to connect and back off: idle without a broker or a cloud). `on_plugin_error =
//! "skip"`: the report says which instances run and which did not start.
//!
//! Run: `cargo build --release -p synchronizer -p synchronizer-static -p synchronizer-nagios
//! -p synchronizer-bus -p synchronizer-nova -p synchronizer-heat && cargo bench -p
//! synchronizer-tests --bench idle_rss` (`RSS_BINARY`, `RSS_PLUGINS_DIR` override where
//! the binary and plugins are; default `$CARGO_TARGET_DIR/release` or `target/release`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use synchronizer_test_kit::http::{FixtureServer, Reply};
use synchronizer_test_kit::paths::root;
use synchronizer_test_kit::sys::rss_kib;

const RACK: &str = "entities:\n  - type: rack\n    id: r1\n    name: rack one\n    state: available\n  - type: switch\n    id: s1\n    state: available\nrelationships:\n  - source: rack:r1\n    target: switch:s1\n    type: contains\n";

fn release_dir() -> PathBuf {
    synchronizer_test_kit::paths::target_dir().join("release")
}

fn fixture(path: &str) -> Vec<u8> {
    let p = root()
        .join("plugins/nagios/tests/fixtures/nagios4")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn main() {
    let binary = std::env::var_os("RSS_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| release_dir().join("synchronizer"));
    let plugins = std::env::var_os("RSS_PLUGINS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(release_dir);
    assert!(
        binary.exists(),
        "{} is missing: cargo build --release -p synchronizer",
        binary.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let nagios = rt.block_on(async {
        let server = FixtureServer::start().await;
        server.set(
            "/cgi-bin/nagios4/statusjson.cgi?query=servicelist&details=true",
            Reply::ok("application/json", fixture("statusjson-servicelist.json")),
        );
        server.set(
            "/cgi-bin/nagios4/statusjson.cgi?query=hostlist&details=true",
            Reply::ok("application/json", fixture("statusjson-hostlist.json")),
        );
        server
    });

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("data")).expect("data dir");
    std::fs::write(dir.path().join("data/rack.yaml"), RACK).expect("yaml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut config = format!(
        "plugins_dir = {:?}\non_plugin_error = \"skip\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [[instances]]\nname = \"static\"\nlibrary = \"libsynchronizer_static.so\"\n[instances.config]\ndirectory = {:?}\n\n\
         [[instances]]\nname = \"nagios\"\nlibrary = \"libsynchronizer_nagios.so\"\n[instances.config]\nurl = \"{}/cgi-bin/nagios4\"\n",
        plugins.display().to_string(),
        dir.path().join("data").display().to_string(),
        nagios.url(),
    );
    let mut wanted = vec!["static", "nagios"];
    let optional = [
        (
            "bus",
            "libsynchronizer_bus.so",
            "urls = [\"amqp://guest:guest@127.0.0.1:1/\"]\n",
        ),
        (
            "nova",
            "libsynchronizer_nova.so",
            "[instances.config.cloud.auth]\nauth_url = \"http://127.0.0.1:1/v3\"\nusername = \"synchronizer\"\npassword = \"x\"\nproject_name = \"admin\"\n",
        ),
        (
            "heat",
            "libsynchronizer_heat.so",
            "[instances.config.cloud.auth]\nauth_url = \"http://127.0.0.1:1/v3\"\nusername = \"synchronizer\"\npassword = \"x\"\nproject_name = \"admin\"\n",
        ),
    ];
    for (name, lib, body) in optional {
        if plugins.join(lib).exists() {
            config.push_str(&format!(
                "\n[[instances]]\nname = \"{name}\"\nlibrary = \"{lib}\"\n[instances.config]\n{body}"
            ));
            wanted.push(name);
        } else {
            println!("{lib} is not in {}: not loaded", plugins.display());
        }
    }
    let file = dir.path().join("sync.toml");
    std::fs::write(&file, &config).expect("config");

    let mut child = Command::new(&binary)
        .args(["run", "--config"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawns");
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");
    let report: serde_json::Value = rt.block_on(async {
        let client = reqwest::Client::new();
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = client.get(format!("{base}/healthz")).send().await;
            if answer.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(Instant::now() < end, "the host never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Idle: the first collections are done, the failing ones back off.
        tokio::time::sleep(Duration::from_secs(5)).await;
        client
            .get(format!("{base}/v1/plugins"))
            .send()
            .await
            .expect("plugins")
            .json()
            .await
            .expect("JSON")
    });
    let mut peak = 0;
    let mut last = 0;
    let mut hwm = 0;
    for _ in 0..20 {
        if let Some((rss, h)) = rss_kib(pid) {
            peak = peak.max(rss);
            last = rss;
            hwm = h;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    let empty = Vec::new();
    for inst in report["instances"].as_array().unwrap_or(&empty) {
        println!(
            "running: {:<7} {} {} ({}), health {}, entities {}",
            inst["name"].as_str().unwrap_or(""),
            inst["plugin"].as_str().unwrap_or(""),
            inst["version"].as_str().unwrap_or(""),
            inst["kind"].as_str().unwrap_or(""),
            inst["status"]["health"].as_str().unwrap_or(""),
            inst["status"]["entities"]
        );
    }
    for f in report["failed"].as_array().unwrap_or(&empty) {
        println!("not started: {}", f["error"].as_str().unwrap_or(""));
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "idle VmRSS {:.1} MiB (highest of 20 samples over 5 s: {:.1} MiB; VmHWM {:.1} MiB) with {} of {} instances running: target <= 40 MiB: {}",
        mib(last),
        mib(peak),
        mib(hwm),
        report["instances"].as_array().map_or(0, Vec::len),
        wanted.len(),
        if peak <= 40 * 1024 { "met" } else { "NOT met" }
    );
    if peak > 40 * 1024 {
        std::process::exit(1);
    }
}
