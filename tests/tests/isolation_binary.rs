//! Process isolation seen from the `synchronizer` binary: a segfault in process kills the
//! host (the one thing only process mode survives), the same plugin in process mode does
//! not, SIGKILL of the host leaves no plugin child behind, and `synchronizer plugins`
//! shows each instance's isolation mode.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use synchronizer_tests::{binary, plugins_dir};

fn write_config(dir: &Path, instances: &str) -> std::path::PathBuf {
    let path = dir.join("synchronizer.toml");
    let text = format!(
        r#"plugins_dir = {:?}

[defaults]
interval = "100ms"
jitter = "0s"
timeout = "1s"
backoff_initial = "100ms"
backoff_max = "200ms"

{instances}
"#,
        plugins_dir().display().to_string()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn crashy(name: &str, mode: &str, isolation: &str) -> String {
    let process = if isolation == "process" {
        format!(
            "isolation = \"process\"\nchild_program = {:?}\n",
            binary().display().to_string()
        )
    } else {
        String::new()
    };
    format!(
        r#"
[[instances]]
name = "{name}"
library = "libsynchronizer_test_crashy.so"
{process}
[instances.config]
mode = "{mode}"
"#
    )
}

fn start(config: &Path) -> Child {
    Command::new(binary())
        .args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts the binary")
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The pids whose parent is `ppid` (from /proc/*/stat).
fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in rd.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split(' ');
        let state = fields.next().unwrap_or("");
        let parent = fields.next().and_then(|p| p.parse::<u32>().ok());
        if parent == Some(ppid) && state != "Z" {
            out.push(pid);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Reads stdout lines on a thread; counts the changes of the instance `steady`.
fn count_created(child: &mut Child) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stdout = child.stdout.take().expect("stdout");
    let n2 = n.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("\"instance\":\"steady\"") {
                n2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    n
}

/// Runs the binary with one crashy instance in process, in `mode`; returns the signal
/// that ended it.
fn in_process_host_dies_of(mode: &str) -> Option<i32> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &crashy("crashy", mode, "in-process"));
    let mut host = start(&config);
    let status = wait_exit(&mut host, Duration::from_secs(30));
    let Some(status) = status else {
        let _ = host.kill();
        panic!("the host survived `{mode}` in process");
    };
    status.signal()
}

#[test]
fn in_process_a_segfaulting_plugin_kills_the_host_by_sigsegv() {
    // The one failure only process mode survives (with abort, below).
    assert_eq!(in_process_host_dies_of("segfault"), Some(SIGSEGV));
}

#[test]
fn in_process_an_aborting_plugin_kills_the_host_by_sigabrt() {
    assert_eq!(in_process_host_dies_of("abort"), Some(SIGABRT));
}

const SIGSEGV: i32 = 11;
const SIGABRT: i32 = 6;

#[test]
fn process_mode_only_the_child_dies_of_a_segfault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let instances = format!(
        "{}\n{}",
        crashy("crashy", "segfault", "process"),
        "[[instances]]\nname = \"steady\"\nlibrary = \"libsynchronizer_test_faulty.so\"\n[instances.config]\nmode = \"tick\"\n"
    );
    let config = write_config(dir.path(), &instances);
    let mut host = start(&config);
    let created = count_created(&mut host);
    let stderr = host.stderr.take().expect("stderr");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut l) = log2.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    // Several crashes and restarts later (100 ms interval), the host still runs.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        host.try_wait().expect("try_wait").is_none(),
        "the host died"
    );
    // The in-process ticker beside it kept its 100 ms schedule.
    let ticks = created.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        ticks >= 15,
        "the ticker was held back: {ticks} changes in 3 s"
    );
    let text = log.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(
        text.contains("SIGSEGV") && text.contains("crashy"),
        "the restart and its cause are not logged with the instance:\n{text}"
    );
    // The child's own log lines come back with the instance's name.
    assert!(
        text.contains("about to write to an invalid address"),
        "the plugin's log did not reach the host's:\n{text}"
    );
    let term = Command::new("kill")
        .args(["-TERM", &host.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let status = wait_exit(&mut host, Duration::from_secs(15)).expect("stops on SIGTERM");
    assert!(status.success(), "{status:?}\n{text}");
}

#[test]
fn sigkill_of_the_host_leaves_no_plugin_child_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let instances = format!(
        "{}\n{}",
        crashy("one", "ok", "process"),
        crashy("two", "threads", "process")
    );
    let config = write_config(dir.path(), &instances);
    let mut host = start(&config);
    let _changes = count_created(&mut host);
    let pid = host.id();
    let end = Instant::now() + Duration::from_secs(20);
    let children = loop {
        let c = children_of(pid);
        if c.len() >= 2 {
            break c;
        }
        assert!(
            Instant::now() < end,
            "the host never started its 2 children: {c:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    host.kill().expect("SIGKILL");
    let _ = host.wait();
    let end = Instant::now() + Duration::from_secs(5);
    while children.iter().any(|&c| alive(c)) {
        assert!(
            Instant::now() < end,
            "plugin children outlived the host's SIGKILL: {:?}",
            children.iter().filter(|&&c| alive(c)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_plugins_command_shows_each_instances_isolation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let instances = format!(
        r#"
[[instances]]
name = "boxed"
library = "libsynchronizer_test_crashy.so"
isolation = "process"
memory_limit = "256MiB"
[instances.config]
mode = "ok"
{}"#,
        crashy("plain", "ok", "in-process")
    );
    let config = write_config(dir.path(), &instances);
    let out = Command::new(binary())
        .args(["plugins", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("boxed (process, memory limit 256MiB)"),
        "{text}"
    );
    assert!(text.contains("plain (in-process)"), "{text}");
    assert!(text.contains("/v1/plugins"), "{text}");
}

#[test]
fn the_plugins_command_shows_a_running_hosts_children() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let instances = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n{}",
        crashy("boxed", "ok", "process")
    );
    let config = write_config(dir.path(), &instances);
    let mut host = start(&config);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (text, pid) = loop {
        let out = Command::new(binary())
            .args(["plugins", "--config"])
            .arg(&config)
            .output()
            .expect("runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let pid = text
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("boxed: ")
                    .and_then(|rest| rest.split_once("child pid "))
                    .map(|(_, pid)| pid)
            })
            .and_then(|rest| rest.split(',').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            break (text, pid);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no child reported: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        text.contains(&format!("running host on 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.contains("restarts 0, last exit -"), "{text}");
    assert!(
        children_of(host.id()).contains(&pid),
        "pid {pid} is not the host's child: {text}"
    );
    let _ = host.kill();
    let _ = host.wait();
}
