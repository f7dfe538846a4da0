//! Crash at random points, compare what every consumer ends up with: the real binary
//! with `baseline_file` polls a directory of YAML files (the static plugin `.so`) that a
//! thread changes every few milliseconds (states change, entities go and come back);
//! the host is killed with SIGKILL 50 times at random moments and restarted. Two
//! consumers apply the change stream across all the runs: one reads the `run` command's
//! stdout (its state carries over from run to run: it never gets a snapshot), one reads
//! the SSE stream with `snapshot=true` (it reconnects after each restart and starts from
//! the snapshot). At the end, with the source quiet, each consumer's state must equal the
//! source's: no phantom, nothing missing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::Value;
use synchronizer_test_kit::paths::{binary, plugins_dir};
use synchronizer_test_kit::sys::free_port;

const KILLS: usize = 50;
const IDS: u32 = 24;

type State = BTreeMap<String, String>;

fn write_config(dir: &Path, port: u16) {
    let config = format!(
        "plugins_dir = {:?}\nbaseline_file = \"state/baseline.redb\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n[[instances]]\nname = \"static\"\nlibrary = \"libsynchronizer_static.so\"\ninterval = \"50ms\"\njitter = \"0s\"\n[instances.config]\ndirectory = {:?}\n",
        plugins_dir().display().to_string(),
        dir.join("data").display().to_string()
    );
    std::fs::write(dir.join("sync.toml"), config).unwrap();
}

/// Writes the source's state as the static plugin reads it, atomically (a rename).
fn publish(dir: &Path, state: &State) {
    let mut s = String::from("entities:\n");
    for (id, st) in state {
        s.push_str(&format!(
            "  - type: switch\n    id: {id}\n    state: {st}\n"
        ));
    }
    let tmp = dir.join("switches.yaml.tmp");
    std::fs::write(&tmp, s).unwrap();
    std::fs::rename(&tmp, dir.join("data/switches.yaml")).unwrap();
}

/// One change-stream line applied to a consumer's state. A snapshot (after a resync
/// marker) replaces the state when its end arrives.
#[derive(Default)]
struct Consumer {
    state: State,
    snapshot: Option<State>,
    changes: usize,
}

impl Consumer {
    fn apply(&mut self, v: &Value) {
        let id = || v["id"].as_str().unwrap_or_default().to_owned();
        let st = || v["state"].as_str().unwrap_or("-").to_owned();
        match v["action"].as_str() {
            Some("created" | "updated") => {
                self.state.insert(id(), st());
                self.changes += 1;
            }
            Some("deleted") => {
                self.state.remove(&id());
                self.changes += 1;
            }
            Some("resync") => self.snapshot = Some(State::new()),
            Some("snapshot") => {
                if let Some(s) = &mut self.snapshot {
                    s.insert(id(), st());
                }
            }
            Some("snapshot_end") => {
                if let Some(s) = self.snapshot.take() {
                    self.state = s;
                }
            }
            _ => {}
        }
    }
}

struct Run {
    child: Child,
    stdout: mpsc::Receiver<Value>,
    sse: mpsc::Receiver<Value>,
}

fn start(dir: &Path, port: u16) -> Run {
    let mut child = Command::new(binary())
        .args(["--log", "warn", "run", "--config"])
        .arg(dir.join("sync.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, stdout) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    // The SSE client: HTTP/1.0, so the body is the plain event stream until close.
    let deadline = Instant::now() + Duration::from_secs(20);
    let conn = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("the host exited during its start: {status}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the HTTP API did not come up: {e}"),
        }
    };
    let mut w = conn.try_clone().unwrap();
    w.write_all(b"GET /v1/changes?snapshot=true HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let (tx, sse) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(conn).lines().map_while(Result::ok) {
            if let Some(data) = line.strip_prefix("data: ")
                && let Ok(v) = serde_json::from_str::<Value>(data)
            {
                let _ = tx.send(v);
            }
        }
    });
    Run { child, stdout, sse }
}

impl Run {
    fn pump(&self, out: &mut Consumer, sse: &mut Consumer) {
        for v in self.stdout.try_iter() {
            out.apply(&v);
        }
        for v in self.sse.try_iter() {
            sse.apply(&v);
        }
    }

    /// SIGKILL, then what the consumers had received by then.
    fn kill9(mut self, out: &mut Consumer, sse: &mut Consumer) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The readers end at EOF: everything the host wrote before it died is read.
        for v in self.stdout.iter() {
            out.apply(&v);
        }
        for v in self.sse.iter() {
            sse.apply(&v);
        }
    }
}

#[test]
fn every_consumer_ends_with_the_source_state_after_50_kill_9s() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let port = free_port();
    write_config(dir.path(), port);
    let source: Arc<Mutex<State>> = Arc::new(Mutex::new(
        (0..IDS / 2)
            .map(|i| (format!("s{i:02}"), "up".to_owned()))
            .collect(),
    ));
    publish(dir.path(), &source.lock().unwrap());

    // The source changes quickly and at random, the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let mutator = {
        let (source, stop, dir) = (source.clone(), stop.clone(), dir.path().to_owned());
        std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(11);
            let mut steps = 0u64;
            while !stop.load(Ordering::SeqCst) {
                {
                    let mut s = source.lock().unwrap();
                    for _ in 0..rng.random_range(1..4) {
                        let id = format!("s{:02}", rng.random_range(0..IDS));
                        match rng.random_range(0..4) {
                            0 => {
                                s.remove(&id);
                            }
                            1 => {
                                s.insert(id, "down".into());
                            }
                            _ => {
                                s.insert(id, format!("up-{}", rng.random_range(0..3)));
                            }
                        }
                    }
                    publish(&dir, &s);
                }
                steps += 1;
                std::thread::sleep(Duration::from_millis(rng.random_range(3..20)));
            }
            steps
        })
    };

    let mut out = Consumer::default();
    let mut sse = Consumer::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..KILLS {
        let run = start(dir.path(), port);
        let until = Instant::now() + Duration::from_millis(rng.random_range(20..500));
        while Instant::now() < until {
            run.pump(&mut out, &mut sse);
            std::thread::sleep(Duration::from_millis(2));
        }
        run.kill9(&mut out, &mut sse);
    }
    stop.store(true, Ordering::SeqCst);
    let steps = mutator.join().unwrap();
    let want = source.lock().unwrap().clone();

    // A last run, with the source quiet: each consumer must reach the source's state.
    let run = start(dir.path(), port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (out.state != want || sse.state != want) && Instant::now() < deadline {
        run.pump(&mut out, &mut sse);
        std::thread::sleep(Duration::from_millis(10));
    }
    // And they stay there: nothing is re-announced later.
    let settle = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < settle {
        run.pump(&mut out, &mut sse);
        std::thread::sleep(Duration::from_millis(10));
    }
    run.kill9(&mut out, &mut sse);
    eprintln!(
        "{KILLS} kills, {steps} source changes; the stdout consumer applied {} changes, the SSE consumer {}",
        out.changes, sse.changes
    );
    assert!(steps > 100, "the source hardly changed ({steps} steps)");
    assert_eq!(
        out.state, want,
        "the stdout consumer's state after the kills"
    );
    assert_eq!(sse.state, want, "the SSE consumer's state after the kills");
}
