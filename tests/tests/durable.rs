//! The durable baseline, on the real binary: kill -9 the host during a run, change and
//! delete entities while it is down, restart: exactly those changes are reported,
//! deletions included. A truncated or foreign store file is refused with a clear error.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use synchronizer_test_kit::paths::{binary, plugins_dir};

fn yaml(entities: &[(&str, &str)]) -> String {
    let mut s = String::from("entities:\n");
    for (id, state) in entities {
        s.push_str(&format!(
            "  - type: switch\n    id: {id}\n    state: {state}\n"
        ));
    }
    s
}

fn write_config(dir: &Path) {
    let config = format!(
        "plugins_dir = {:?}\nbaseline_file = \"state/baseline.redb\"\n\n[[instances]]\nname = \"static\"\nlibrary = \"libsynchronizer_static.so\"\ninterval = \"200ms\"\njitter = \"0s\"\n[instances.config]\ndirectory = {:?}\n",
        plugins_dir().display().to_string(),
        dir.join("data").display().to_string()
    );
    std::fs::write(dir.join("sync.toml"), config).unwrap();
}

struct Host {
    child: Child,
    changes: mpsc::Receiver<serde_json::Value>,
    log: mpsc::Receiver<String>,
}

fn start(dir: &Path) -> Host {
    let mut child = Command::new(binary())
        .args([
            "--log",
            "info,synchronizer::persist=debug",
            "run",
            "--config",
        ])
        .arg(dir.join("sync.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, changes) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).expect("JSON line"));
        }
    });
    let (tx, log) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Host {
        child,
        changes,
        log,
    }
}

impl Host {
    fn changes(&self, n: usize) -> Vec<String> {
        let mut out: Vec<String> = (0..n)
            .map(|_| {
                let Ok(v) = self.changes.recv_timeout(Duration::from_secs(10)) else {
                    let log: Vec<String> = self.log.try_iter().collect();
                    panic!("no change within 10 s; the host's log:\n{}", log.join("\n"));
                };
                format!(
                    "{} {} {}",
                    v["action"].as_str().unwrap(),
                    v["id"].as_str().unwrap(),
                    v["state"].as_str().unwrap_or("-")
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Waits until the store has committed the changes and recorded them as announced
    /// (its writer logs both): killed earlier, the restart would announce them again.
    fn committed(&self) {
        loop {
            let line = self
                .log
                .recv_timeout(Duration::from_secs(10))
                .expect("a commit log line");
            if line.contains("no longer in doubt") {
                return;
            }
        }
    }

    fn kill9(mut self) {
        assert!(
            Command::new("kill")
                .args(["-KILL", &self.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let _ = self.child.wait();
    }
}

#[test]
fn a_restart_after_kill_9_reports_exactly_what_changed_while_down() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let file = dir.path().join("data/switches.yaml");
    std::fs::write(&file, yaml(&[("a", "up"), ("b", "up"), ("c", "up")])).unwrap();
    write_config(dir.path());

    let host = start(dir.path());
    assert_eq!(
        host.changes(3),
        vec!["created a up", "created b up", "created c up"]
    );
    host.committed();
    host.kill9();

    // While it is down: b changes, c goes, d comes.
    std::fs::write(&file, yaml(&[("a", "up"), ("b", "down"), ("d", "up")])).unwrap();
    let host = start(dir.path());
    // The store keeps the view: a deletion after a restart carries the entity as it was.
    assert_eq!(
        host.changes(3),
        vec!["created d up", "deleted c up", "updated b down"]
    );
    host.committed();
    // And nothing more: the next polls find nothing new.
    assert!(
        host.changes
            .recv_timeout(Duration::from_millis(700))
            .is_err(),
        "a change was repeated"
    );
    host.kill9();

    // Again, with nothing changed while down: nothing at all is reported.
    let host = start(dir.path());
    assert!(
        host.changes
            .recv_timeout(Duration::from_millis(1000))
            .is_err(),
        "restart re-announced entities"
    );
    host.kill9();
}

fn start_fails(dir: &Path) -> String {
    let out = Command::new(binary())
        .arg("run")
        .arg("--config")
        .arg(dir.join("sync.toml"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_truncated_or_foreign_store_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/s.yaml"), yaml(&[("a", "up")])).unwrap();
    write_config(dir.path());
    let store = dir.path().join("state/baseline.redb");

    // A real store, then cut in half.
    let host = start(dir.path());
    host.changes(1);
    host.committed();
    host.kill9();
    let len = std::fs::metadata(&store).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let err = start_fails(dir.path());
    assert!(
        err.contains("baseline.redb: cannot open it") && err.contains("damaged"),
        "{err}"
    );
    // The one clear error, not redb's assertion first.
    assert!(!err.contains("panicked"), "{err}");

    // Not a database at all.
    std::fs::write(&store, "hello, I am a text file\n").unwrap();
    let err = start_fails(dir.path());
    assert!(
        err.contains("damaged or not a synchronizer baseline store"),
        "{err}"
    );

    // A redb database of another program.
    std::fs::remove_file(&store).unwrap();
    {
        let db = redb::Database::create(&store).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("accounts"))
                .unwrap();
            t.insert("alice", 3).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = start_fails(dir.path());
    assert!(err.contains("tables of another program"), "{err}");
}
