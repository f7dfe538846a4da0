//! Process isolation with real .so files and real child processes: plugins that segfault,
//! abort, allocate without bound, block a thread forever or leak threads. In process mode
//! the host survives each, the child is restarted and the cause reported, a ticker beside
//! it stays on schedule, and the failure deletes nothing. In process, the same plugins
//! behave as documented (a blocked thread is abandoned and reported stuck; leaked threads
//! stay in the host). Also: heartbeats, a malformed frame, snapshot parts (small entities,
//! a part for a call not in hand, a part that does not decode, `snapshot_limit`) from a
//! scripted child, a bus plugin's pushes, and the static and nagios plugins giving the
//! same change stream in both modes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use synchronizer::isolation::Isolation;
use synchronizer::status::{Health, InstanceStatus};
use synchronizer::{Action, Event, SubscribeOptions, Synchronizer};
use synchronizer_tests::http::{FixtureServer, Reply};
use synchronizer_tests::{binary, config, root};

/// `child_program` pointing at the built binary: the test binary is not `synchronizer`.
fn child_program() -> String {
    format!("child_program = {:?}\n", binary().display().to_string())
}

const DEFAULTS: &str = r#"
[defaults]
jitter = "0s"
backoff_initial = "100ms"
backoff_max = "300ms"

[[instances]]
name = "ticker"
library = "libsynchronizer_test_faulty.so"
interval = "100ms"
timeout = "1s"
[instances.config]
mode = "tick"
"#;

/// The ticker (in process, every 100 ms) beside a crashy instance.
fn beside_ticker(isolation: Isolation, extra: &str, crashy: &str) -> synchronizer::Config {
    let process = if isolation == Isolation::Process {
        format!("isolation = \"process\"\n{}", child_program())
    } else {
        String::new()
    };
    // `extra` may override the 300 ms timeout.
    let timeout = if extra.contains("timeout =") && !extra.contains("heartbeat_timeout") {
        ""
    } else {
        "timeout = \"300ms\"\n"
    };
    config(&format!(
        r#"{DEFAULTS}
[[instances]]
name = "crashy"
library = "libsynchronizer_test_crashy.so"
interval = "100ms"
{timeout}{process}{extra}
[instances.config]
{crashy}
"#
    ))
}

fn status_of(sync: &Synchronizer, name: &str) -> InstanceStatus {
    sync.status()
        .into_iter()
        .find(|r| r.name == name)
        .map(|r| r.status)
        .unwrap_or_else(|| panic!("no instance {name}"))
}

async fn wait_for(
    sync: &Synchronizer,
    name: &str,
    what: &str,
    within: Duration,
    pred: impl Fn(&InstanceStatus) -> bool,
) -> InstanceStatus {
    let end = Instant::now() + within;
    loop {
        let s = status_of(sync, name);
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < end, "{name} never became {what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Events seen over `window`: the ticker's updates, and every crashy.item change.
async fn watch(
    sub: &mut synchronizer::Subscription,
    window: Duration,
) -> (usize, Vec<(Action, String)>) {
    let end = Instant::now() + window;
    let mut ticks = 0;
    let mut crashy = Vec::new();
    while Instant::now() < end {
        if let Ok(Some(Event::Change(c))) =
            tokio::time::timeout(end - Instant::now(), sub.recv()).await
        {
            if &*c.instance == "ticker" {
                ticks += 1;
            } else if c.entity.entity_type() == "crashy.item" {
                crashy.push((c.action, c.entity.id().to_owned()));
            }
        }
    }
    (ticks, crashy)
}

fn threads_of(pid: &str) -> usize {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn alive(pid: u32) -> bool {
    // Gone, or a zombie nobody reaped yet (dead all the same).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The shared scenario: the crashy instance misbehaves in process mode from its second
/// snapshot on; the host goes on, restarts the child, reports `cause`, keeps the ticker
/// on schedule and deletes nothing.
/// `metric` is the restart's `cause` label in `synchronizer_child_restarts_total`.
async fn survives(extra: &str, crashy: &str, cause: &str, metric: &str) {
    let sync = Synchronizer::start(beside_ticker(Isolation::Process, extra, crashy))
        .await
        .expect("starts");
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["crashy.item", "faulty.tick"]));
    let first_pid = status_of(&sync, "crashy").pid.expect("a child pid");
    assert_eq!(status_of(&sync, "crashy").isolation, Isolation::Process);
    // The first snapshot lands (3 items), then the child misbehaves, again and again.
    let (ticks, crashy_changes) = watch(&mut sub, Duration::from_millis(1500)).await;
    let s = wait_for(&sync, "crashy", "restarted", Duration::from_secs(20), |s| {
        s.restarts >= 1 && s.last_exit.as_deref().is_some_and(|e| e.contains(cause))
    })
    .await;
    assert!(
        ticks >= 9,
        "the ticker was held back: {ticks} ticks in 1.5 s at 100 ms"
    );
    assert!(
        crashy_changes.iter().all(|(a, _)| *a == Action::Created),
        "a failure deleted or changed something: {crashy_changes:?}"
    );
    assert_eq!(
        sync.current(&["crashy.item"]).len(),
        3,
        "nothing is deleted by the failure"
    );
    // A new child, not the first one.
    let s2 = wait_for(
        &sync,
        "crashy",
        "running again",
        Duration::from_secs(10),
        |s| s.pid.is_some_and(|p| p != first_pid),
    )
    .await;
    assert!(!alive(first_pid), "the first child is still alive");
    assert!(s.restarts >= 1 && s2.restarts >= 1, "{s2:?}");
    // Counted, by cause, for alerting on a crash loop.
    let text = sync.metrics_text();
    let series = format!(
        "synchronizer_child_restarts_total{{plugin_instance=\"crashy\",cause=\"{metric}\"}} "
    );
    let counted: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series}in\n{text}"));
    assert!(counted >= 1, "{text}");
    // Keep going for a while: still no deletion, ticker still on time.
    let (ticks, crashy_changes) = watch(&mut sub, Duration::from_millis(1000)).await;
    assert!(ticks >= 6, "ticker held back: {ticks}");
    assert!(
        crashy_changes.iter().all(|(a, _)| *a != Action::Deleted),
        "{crashy_changes:?}"
    );
    let last_pid = status_of(&sync, "crashy").pid;
    sync.shutdown().await;
    if let Some(pid) = last_pid {
        let end = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(pid), "the child outlived the host's shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segfault_kills_only_the_child_which_is_restarted() {
    survives("", "mode = \"segfault\"", "SIGSEGV", "signal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_kills_only_the_child_which_is_restarted() {
    survives("", "mode = \"abort\"", "SIGABRT", "signal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_over_its_memory_limit_is_killed_and_restarted() {
    // The crashy instance's timeout is raised so that the memory limit, not the timeout,
    // ends the child: 4 MiB every 10 ms passes 96 MiB in about a quarter of a second.
    survives(
        "memory_limit = \"96MiB\"\ntimeout = \"5s\"\n",
        "mode = \"alloc\"\nalloc_cap_mib = 768",
        "memory limit exceeded",
        "memory",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_blocked_forever_is_reclaimed_by_killing_the_child() {
    survives("", "mode = \"block\"", "stuck", "stuck").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_a_blocked_thread_is_abandoned_and_reported_stuck() {
    // What process mode fixes: in process the thread cannot be killed. The instance is
    // reported stuck, never called again, and keeps its entities; the ticker goes on.
    let sync = Synchronizer::start(beside_ticker(Isolation::InProcess, "", "mode = \"block\""))
        .await
        .expect("starts");
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["crashy.item", "faulty.tick"]));
    let s = wait_for(&sync, "crashy", "stuck", Duration::from_secs(10), |s| {
        s.health == Health::Stuck
    })
    .await;
    assert_eq!(s.isolation, Isolation::InProcess);
    assert_eq!((s.pid, s.restarts, s.last_exit.as_deref()), (None, 0, None));
    let (ticks, crashy_changes) = watch(&mut sub, Duration::from_millis(800)).await;
    assert!(ticks >= 5, "ticker held back: {ticks}");
    assert!(
        crashy_changes.iter().all(|(a, _)| *a == Action::Created),
        "{crashy_changes:?}"
    );
    assert_eq!(sync.current(&["crashy.item"]).len(), 3);
    assert_eq!(status_of(&sync, "crashy").health, Health::Stuck);
    sync.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_threads_stay_in_the_child_not_in_the_host() {
    let me = std::process::id().to_string();
    // In process mode: each snapshot leaks 8 threads, in the child.
    let sync = Synchronizer::start(beside_ticker(
        Isolation::Process,
        "",
        "mode = \"threads\"\nafter = 0",
    ))
    .await
    .expect("starts");
    let host_before = threads_of(&me);
    let pid = status_of(&sync, "crashy").pid.expect("pid").to_string();
    wait_for(&sync, "crashy", "collected", Duration::from_secs(10), |s| {
        s.collections >= 4
    })
    .await;
    let child_threads = threads_of(&pid);
    let host_after = threads_of(&me);
    assert!(child_threads >= 32, "the child has {child_threads} threads");
    assert!(
        host_after <= host_before + 4,
        "the host grew from {host_before} to {host_after} threads"
    );
    sync.shutdown().await;
    let end = Instant::now() + Duration::from_secs(5);
    while alive(pid.parse().unwrap_or(0)) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !alive(pid.parse().unwrap_or(0)),
        "the child and its threads outlived shutdown"
    );

    // In process, as documented: the threads live in the host until it exits.
    let sync = Synchronizer::start(beside_ticker(
        Isolation::InProcess,
        "",
        "mode = \"threads\"\nafter = 0",
    ))
    .await
    .expect("starts");
    let before = threads_of(&me);
    wait_for(&sync, "crashy", "collected", Duration::from_secs(10), |s| {
        s.collections >= 3
    })
    .await;
    let after = threads_of(&me);
    assert!(
        after >= before + 16,
        "in process the leaked threads are the host's: {before} -> {after}"
    );
    sync.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_stops_answering_heartbeats_is_killed_and_restarted() {
    let sync = Synchronizer::start(beside_ticker(
        Isolation::Process,
        "heartbeat_interval = \"100ms\"\nheartbeat_timeout = \"500ms\"\n",
        "mode = \"ok\"",
    ))
    .await
    .expect("starts");
    let pid = status_of(&sync, "crashy").pid.expect("pid");
    // A frozen child: alive, but answers nothing.
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .expect("kill -STOP");
    assert!(stopped.success());
    let s = wait_for(&sync, "crashy", "restarted", Duration::from_secs(10), |s| {
        s.restarts >= 1 && s.pid.is_some_and(|p| p != pid)
    })
    .await;
    let cause = s.last_exit.unwrap_or_default();
    assert!(cause.contains("heartbeat"), "{cause}");
    assert!(!alive(pid));
    sync.shutdown().await;
}

/// A fake child: a shell script that speaks the child protocol from frames encoded here.
/// It writes `Ready` (for entity type `x`), then `after_ready` as it is; answers every
/// `Ping` with a `Pong`; and answers its `n`-th `Snapshot` with `replies[n - 1]` (the
/// last one for later calls), each frame written with that call's id (the frames are
/// encoded with id 0 and the id is spliced in). It reads the host's frames with `head`
/// and `od`, so it needs nothing but a shell.
struct ScriptedChild {
    dir: tempfile::TempDir,
}

impl ScriptedChild {
    fn new(after_ready: &[u8], replies: &[Vec<Vec<u8>>]) -> ScriptedChild {
        use synchronizer::isolation::wire::{FromChild, WireMeta};
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let mut ready = FromChild::Ready {
            meta: WireMeta {
                name: "fake".into(),
                version: "0".into(),
                description: "a scripted child".into(),
                entity_types: vec!["x".into()],
                kind: synchronizer_plugin_api::PluginKind::Collector,
                api_version: "0.1.0".into(),
            },
        }
        .encode();
        ready.extend_from_slice(after_ready);
        std::fs::write(d.join("ready.bin"), ready).expect("write");
        let pong = FromChild::Pong {
            id: 0,
            calls_in_flight: 0,
            counters: Vec::new(),
        }
        .encode();
        std::fs::write(d.join("pong.bin"), pong).expect("write");
        for (n, frames) in replies.iter().enumerate() {
            let call = d.join(format!("call-{}", n + 1));
            std::fs::create_dir(&call).expect("mkdir");
            for (i, frame) in frames.iter().enumerate() {
                assert_eq!(&frame[5..13], &[0; 8], "encode reply frames with id 0");
                std::fs::write(call.join(format!("{i:04}.bin")), frame).expect("write");
            }
        }
        let script = d.join("child.sh");
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/bash
d={d:?}
cat "$d/ready.bin"
n=0
last={last}
while :; do
  len=$(head -c 4 | od -An -tu4 | tr -d ' ')
  [ -n "$len" ] || exit 0
  head -c "$len" > "$d/in.bin"
  tag=$(head -c 1 "$d/in.bin" | od -An -tu1 | tr -d ' ')
  case "$tag" in
    8) cat "$d/pong.bin" ;;
    2)
      n=$((n + 1))
      call="$d/call-$n"
      [ -d "$call" ] || call="$d/call-$last"
      for f in "$call"/*.bin; do
        [ -e "$f" ] || continue
        head -c 5 "$f"; tail -c +2 "$d/in.bin" | head -c 8; tail -c +14 "$f"
      done
      ;;
  esac
done
"#,
                d = d.display().to_string(),
                last = replies.len(),
            ),
        )
        .expect("write");
        let status = std::process::Command::new("chmod")
            .args(["+x", &script.display().to_string()])
            .status()
            .expect("chmod");
        assert!(status.success());
        ScriptedChild { dir }
    }

    /// A config running it as instance `fake` (`extra`: more of its table).
    fn config(&self, extra: &str) -> synchronizer::Config {
        config(&format!(
            r#"{DEFAULTS}
[[instances]]
name = "fake"
library = "libsynchronizer_test_crashy.so"
isolation = "process"
child_program = {:?}
{extra}
"#,
            self.dir.path().join("child.sh").display().to_string()
        ))
    }

    /// Starts it (`extra`: more of its table) and waits until the host restarted it;
    /// returns the host and why the first child ended.
    async fn until_restarted(&self, extra: &str) -> (Synchronizer, String) {
        let sync = Synchronizer::start(self.config(extra))
            .await
            .expect("starts");
        let s = wait_for(&sync, "fake", "restarted", Duration::from_secs(10), |s| {
            s.restarts >= 1
        })
        .await;
        (sync, s.last_exit.unwrap_or_default())
    }
}

/// Entities of type `x` with short ids: 26 to 29 bytes each on the wire.
fn small_entities(n: usize) -> Vec<synchronizer::Entity> {
    (0..n)
        .map(|i| synchronizer::Entity::resource("x", &i.to_string()))
        .collect()
}

/// A final `Snapshot` frame (id 0) with `entities`.
fn tail(entities: &[synchronizer::Entity]) -> Vec<u8> {
    synchronizer::isolation::wire::encode_snapshot_tail(0, entities, &[])
}

/// A `SnapshotPart` frame (id 0) with `entities`.
fn part(entities: &[synchronizer::Entity]) -> Vec<u8> {
    synchronizer::isolation::wire::encode_snapshot_part(0, entities)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_is_a_protocol_error_that_restarts_the_child() {
    // A frame whose length passes the limit.
    let child = ScriptedChild::new(&[0xff, 0xff, 0xff, 0x7f], &[]);
    let (sync, cause) = child.until_restarted("interval = \"1h\"").await;
    assert!(cause.contains("protocol error"), "{cause}");
    sync.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_one_byte_over_the_max_length_is_refused_on_its_length() {
    // Only the length: the host refuses it without waiting for (or reserving) its body.
    let over = u32::try_from(synchronizer::isolation::wire::MAX_FRAME + 1).expect("fits");
    let child = ScriptedChild::new(&over.to_le_bytes(), &[]);
    let (sync, cause) = child.until_restarted("interval = \"1h\"").await;
    assert!(
        cause.contains("protocol error") && cause.contains("larger than the limit"),
        "{cause}"
    );
    // The host goes on: the child is restarted (and refused again).
    let s = wait_for(
        &sync,
        "fake",
        "restarted twice",
        Duration::from_secs(15),
        |s| s.restarts >= 2,
    )
    .await;
    assert!(s.last_exit.unwrap_or_default().contains("protocol error"));
    sync.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_does_not_decode_is_a_protocol_error_that_restarts_the_child() {
    // Well framed, but no message: tag 250 (and a call id), which no message has.
    let mut unknown = 9u32.to_le_bytes().to_vec();
    unknown.push(250);
    unknown.extend_from_slice(&[0; 8]);
    let child = ScriptedChild::new(&unknown, &[]);
    let (sync, cause) = child.until_restarted("interval = \"1h\"").await;
    assert!(
        cause.contains("protocol error: unknown message tag 250"),
        "{cause}"
    );
    sync.shutdown().await;
    // A snapshot's answer cut short: its frame says 3 entities and holds one.
    let mut short = tail(&small_entities(1));
    // len 4, tag 1, id 8, `Ok` 1: the entity count.
    assert_eq!(&short[14..18], &1u32.to_le_bytes());
    short[14..18].copy_from_slice(&3u32.to_le_bytes());
    let child = ScriptedChild::new(&[], &[vec![short]]);
    let (sync, cause) = child.until_restarted("interval = \"100ms\"").await;
    assert!(cause.contains("protocol error: truncated frame"), "{cause}");
    // The call failed with the child's end, and nothing was collected.
    let s = wait_for(&sync, "fake", "failed", Duration::from_secs(10), |s| {
        s.failures >= 1
    })
    .await;
    assert_eq!((s.collections, sync.current(&["x"]).len()), (0, 0), "{s:?}");
    sync.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_streamed_in_parts_of_small_entities_is_accepted() {
    // 2,500 entities of 26 to 29 bytes: two parts and a tail. The decoder once assumed 30
    // bytes per entity, refused such parts as truncated and killed the child.
    let entities = small_entities(2500);
    let child = ScriptedChild::new(
        &[],
        &[vec![
            part(&entities[..1000]),
            part(&entities[1000..2000]),
            tail(&entities[2000..]),
        ]],
    );
    let sync = Synchronizer::start(child.config("interval = \"1h\""))
        .await
        .expect("starts");
    let s = wait_for(&sync, "fake", "collected", Duration::from_secs(10), |s| {
        s.collections >= 1 || s.restarts >= 1
    })
    .await;
    assert_eq!((s.collections, s.restarts), (1, 0), "{s:?}");
    let mut got: Vec<String> = sync
        .current(&["x"])
        .iter()
        .map(|e| e.id().to_owned())
        .collect();
    got.sort();
    let mut expected: Vec<String> = entities.iter().map(|e| e.id().to_owned()).collect();
    expected.sort();
    assert_eq!(got, expected);
    sync.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_part_for_a_call_not_in_hand_is_a_protocol_error() {
    // Unasked, right after Ready: call 999 was never made. The host once stored such
    // parts under any id, without bound.
    let mut unasked = part(&small_entities(10));
    unasked[5..13].copy_from_slice(&999u64.to_le_bytes());
    let child = ScriptedChild::new(&unasked, &[]);
    let (sync, cause) = child.until_restarted("interval = \"1h\"").await;
    assert!(
        cause.contains(
            "protocol error: a snapshot part for call 999, which is not a snapshot in hand"
        ),
        "{cause}"
    );
    sync.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_part_that_does_not_decode_kills_the_child_at_once() {
    // A part whose entity has category 7, then silence: no final frame ever comes. The
    // host once noticed only at the final frame, so the call hung to its timeout.
    let mut bad = part(&small_entities(1));
    // len 4, tag 1, id 8, count 4, type "x" 5, id "0" 5: the category byte.
    assert_eq!(bad[27], 0);
    bad[27] = 7;
    let child = ScriptedChild::new(&[], &[vec![bad]]);
    // Restarted within 10 s (`until_restarted`), long before the call's 60 s timeout.
    let (sync, cause) = child
        .until_restarted("interval = \"1h\"\ntimeout = \"60s\"")
        .await;
    assert!(
        cause.contains("protocol error: a snapshot part of call ")
            && cause.contains("invalid value 7 for category"),
        "{cause}"
    );
    // The call failed with the child's end, long before its 60 s timeout.
    let s = wait_for(&sync, "fake", "failed", Duration::from_secs(10), |s| {
        s.failures >= 1
    })
    .await;
    let error = s.last_error.unwrap_or_default();
    assert!(error.contains("protocol error"), "{error}");
    sync.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_past_snapshot_limit_fails_deletes_nothing_and_keeps_the_child() {
    // The first snapshot: 3 entities. Every later one: parts of about 28 KB each, past a
    // 40 KB limit at the second part, then the final frame.
    let entities = small_entities(3000);
    let child = ScriptedChild::new(
        &[],
        &[
            vec![tail(&entities[..3])],
            vec![
                part(&entities[..1000]),
                part(&entities[1000..2000]),
                part(&entities[2000..]),
                tail(&entities[..3]),
            ],
        ],
    );
    let sync = Synchronizer::start(
        child.config("interval = \"100ms\"\ntimeout = \"5s\"\nsnapshot_limit = 40000"),
    )
    .await
    .expect("starts");
    let first_pid = status_of(&sync, "fake").pid.expect("a child pid");
    let s = wait_for(&sync, "fake", "failing", Duration::from_secs(10), |s| {
        s.collections >= 1 && s.failures >= 2
    })
    .await;
    let error = s.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("the snapshot is larger than snapshot_limit")
            && error.contains("nothing is deleted"),
        "{error}"
    );
    // Not a protocol error: the same child goes on, and nothing was deleted.
    assert_eq!((s.restarts, s.pid), (0, Some(first_pid)), "{s:?}");
    assert_eq!(sync.current(&["x"]).len(), 3);
    sync.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_plugin_in_a_child_is_acknowledged_only_after_the_host_applied_its_batch() {
    let sync = Synchronizer::start(config(&format!(
        r#"
[[instances]]
name = "bus"
library = "libsynchronizer_test_crashy.so"
interval = "1h"
isolation = "process"
heartbeat_interval = "50ms"
{}
[instances.config]
mode = "push"
push_every_ms = 20
"#,
        child_program()
    )))
    .await
    .expect("starts");
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["crashy.pushed"]));
    let mut seen = 0;
    let end = Instant::now() + Duration::from_secs(10);
    while seen < 10 {
        assert!(Instant::now() < end, "only {seen} pushes arrived");
        if let Ok(Some(Event::Change(c))) =
            tokio::time::timeout(Duration::from_secs(5), sub.recv()).await
        {
            assert_eq!(c.action, Action::Created);
            assert_eq!(&*c.instance, "bus");
            seen += 1;
        }
    }
    // The plugin counts a batch acknowledged after its sink returned; the host's view
    // always holds at least that many pushed entities.
    let mut checked = 0;
    for _ in 0..20 {
        let acked = acked_counter(&sync.metrics_text());
        let held = sync.current(&["crashy.pushed"]).len() as u64;
        assert!(
            acked <= held,
            "{acked} acknowledged but only {held} applied"
        );
        if acked > 0 {
            checked += 1;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(checked > 0, "the plugin's counters never came through");
    sync.shutdown().await;
}

fn acked_counter(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.contains("name=\"pushed_acked\"") && l.contains("instance=\"bus\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A change as compared across modes: everything but when and where it was emitted.
fn normalized(e: &Event) -> Option<String> {
    match e {
        Event::Change(c) => Some(format!(
            "{} {} {}",
            c.action.as_str(),
            c.initial,
            synchronizer::output::entity_to_json(&c.entity)
        )),
        _ => None,
    }
}

async fn drain(sub: &mut synchronizer::Subscription, quiet: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(quiet, sub.recv()).await {
        out.extend(normalized(&e));
    }
    out.sort();
    out
}

/// Runs `instance_toml` in both modes through the same steps; returns each mode's
/// change stream per step.
async fn both_modes<F, Fut>(instance_toml: &str, types: &[&str], mut step: F) -> Vec<Vec<String>>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut by_mode: BTreeMap<&str, Vec<Vec<String>>> = BTreeMap::new();
    for (mode, extra) in [
        ("in-process", String::new()),
        (
            "process",
            format!("isolation = \"process\"\n{}", child_program()),
        ),
    ] {
        let text = instance_toml.replace("#ISOLATION#", &extra);
        let sync = Synchronizer::start(config(&text)).await.expect("starts");
        let mut sub = sync.subscribe(&SubscribeOptions {
            types: types.iter().map(|t| t.to_string()).collect(),
            initial_snapshot: true,
            ..Default::default()
        });
        let mut steps = Vec::new();
        let mut i = 0;
        loop {
            // A failing step fails in both modes alike; its changes (none) are compared.
            let _ = sync.get_all(types).await;
            steps.push(drain(&mut sub, Duration::from_millis(300)).await);
            if !step(i).await {
                break;
            }
            i += 1;
        }
        if mode == "process" {
            let s = status_of(&sync, "subject");
            assert_eq!(s.isolation, Isolation::Process);
            assert!(s.pid.is_some(), "{s:?}");
        }
        sync.shutdown().await;
        by_mode.insert(mode, steps);
    }
    let a = &by_mode["in-process"];
    let b = &by_mode["process"];
    assert_eq!(a, b, "the change streams differ between modes");
    a.clone()
}

/// Writes `text` with a fixed modification time: the static plugin reports the file's
/// mtime as the entities' source timestamp, which must match across both runs.
fn write_at(path: &std::path::Path, text: &str, secs: u64) {
    std::fs::write(path, text).expect("write");
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    file.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_764_000_000 + secs))
        .expect("set mtime");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_plugin_gives_the_same_changes_in_both_modes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = dir.path().join("rack-1.yaml");
    let original = std::fs::read_to_string(root().join("examples/demo/static/rack-1.yaml"))
        .expect("demo data");
    let toml = format!(
        r#"
[[instances]]
name = "subject"
library = "libsynchronizer_static.so"
interval = "1h"
#ISOLATION#
[instances.config]
directory = {:?}
"#,
        dir.path().display().to_string()
    );
    let steps = both_modes(&toml, &[], |i| {
        let yaml = yaml.clone();
        let original = original.clone();
        async move {
            match i {
                0 => {
                    write_at(&yaml, &original, 1_000);
                    true
                }
                1 => {
                    // An edit: some state changes.
                    let edited = original.replacen("state: available", "state: maintenance", 1);
                    write_at(&yaml, &edited, 2_000);
                    true
                }
                2 => {
                    std::fs::remove_file(&yaml).expect("remove");
                    true
                }
                _ => false,
            }
        }
    })
    .await;
    assert!(
        steps[1].iter().any(|l| l.starts_with("created")),
        "{steps:?}"
    );
    assert!(
        steps[2].iter().any(|l| l.starts_with("updated")),
        "{steps:?}"
    );
    assert!(
        steps[3].iter().any(|l| l.starts_with("deleted")),
        "{steps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nagios_plugin_gives_the_same_changes_in_both_modes() {
    const SERVICES: &str = "/cgi-bin/nagios4/statusjson.cgi?query=servicelist&details=true";
    const HOSTS: &str = "/cgi-bin/nagios4/statusjson.cgi?query=hostlist&details=true";
    let fixture = |p: &str| {
        let p = root().join("plugins/nagios/tests/fixtures").join(p);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let server = FixtureServer::start().await;
    let services = fixture("nagios4/statusjson-servicelist.json");
    let hosts = fixture("nagios4/statusjson-hostlist.json");
    let set = |services: Vec<u8>| {
        server.set(SERVICES, Reply::ok("application/json", services));
        server.set(HOSTS, Reply::ok("application/json", hosts.clone()));
    };
    let toml = format!(
        r#"
[[instances]]
name = "subject"
library = "libsynchronizer_nagios.so"
interval = "1h"
timeout = "5s"
#ISOLATION#
[instances.config]
url = "{}/cgi-bin/nagios4"
source = "json"
[[instances.config.host_rules.rules]]
pattern = "localhost"
key = "static.node:this-machine"
"#,
        server.url()
    );
    let text = String::from_utf8(services.clone()).expect("utf-8");
    // The second step changes an output (an update); the third serves an error page,
    // which fails the snapshot and must delete nothing in either mode.
    set(services.clone());
    let changed = text.replacen("\"plugin_output\": \"", "\"plugin_output\": \"changed ", 1);
    let steps = both_modes(&toml, &["nagios"], |i| {
        match i {
            0 => set(changed.clone().into_bytes()),
            1 => server.set(
                SERVICES,
                Reply {
                    status: 500,
                    content_type: "text/plain",
                    body: b"boom".to_vec(),
                },
            ),
            _ => {}
        }
        // Back to the original pages for the next mode.
        if i >= 2 {
            set(services.clone());
        }
        async move { i < 2 }
    })
    .await;
    assert!(!steps[0].is_empty(), "no initial alarms");
    assert!(
        steps[1].iter().any(|l| l.starts_with("updated")),
        "the changed output is no update: {steps:?}"
    );
    assert!(
        steps[2].is_empty(),
        "a failed page changed something: {steps:?}"
    );
}
