//! Signals against the real binary under a systemd-style notify socket: a SIGTERM sent
//! the instant `READY=1` arrives (as systemd does when a stop is queued behind the start)
//! always ends in a graceful shutdown, `STOPPING=1` and exit status 0, never in the
//! signal's default action.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use synchronizer_test_kit::paths::{binary, plugins_dir};
use synchronizer_test_kit::sys::{env_or, free_port};

/// Receives notify messages until one equals `want`, or fails after `within`.
fn wait_for_state(socket: &UnixDatagram, want: &str, within: Duration, seen: &mut Vec<String>) {
    let end = Instant::now() + within;
    let mut buf = [0u8; 512];
    while Instant::now() < end {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = text.lines().any(|l| l == want);
                seen.push(text);
                if found {
                    return;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    panic!("no {want} within {within:?}; received {seen:?}");
}

#[test]
fn sigterm_the_instant_ready_arrives_is_always_graceful() {
    let rounds = env_or("SIGTERM_AT_READY_ROUNDS", 50);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    std::fs::write(
        data.join("rack.yaml"),
        "entities:\n  - type: rack\n    id: r1\n    state: available\n",
    )
    .expect("yaml");
    for round in 0..rounds {
        // A fresh port each round: the HTTP API is bound before READY=1.
        let config = format!(
            "plugins_dir = {:?}\n[[instances]]\nname = \"static\"\nlibrary = \"libsynchronizer_static.so\"\ninterval = \"1h\"\n[instances.config]\ndirectory = {:?}\n[http]\nlisten = \"127.0.0.1:{}\"\n",
            plugins_dir().display().to_string(),
            data.display().to_string(),
            free_port(),
        );
        let file = dir.path().join("sync.toml");
        std::fs::write(&file, config).expect("config");
        let socket_path = dir.path().join(format!("notify-{round}"));
        let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let child = Command::new(binary())
            .args(["run", "--config"])
            .arg(&file)
            .env("NOTIFY_SOCKET", &socket_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn synchronizer");
        let mut seen = Vec::new();
        wait_for_state(&socket, "READY=1", Duration::from_secs(20), &mut seen);
        // At once: no sleep, no check in between.
        let pid = i32::try_from(child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "kill failed");
        wait_for_state(&socket, "STOPPING=1", Duration::from_secs(20), &mut seen);
        let out = child.wait_with_output().expect("wait");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "round {round}: SIGTERM at READY=1 ended the host with {:?}; log:\n{log}",
            out.status
        );
        assert!(
            log.contains("shutting down") && log.contains("synchronizer stopped"),
            "round {round}: not the graceful path; log:\n{log}"
        );
        let _ = std::fs::remove_file(&socket_path);
    }
}
