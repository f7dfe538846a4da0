//! A plugin child whose source suddenly grows far past the host's bounds: its snapshot
//! fails with an error naming the bound, nothing is deleted (in the view, and on a
//! subscriber's change stream), the same child goes on, and
//! the host's resident memory stays bounded while the child streams hundreds of MiB at it.
//!
//! One test in its own binary: the memory measured is this process's (the host), and no
//! other test shares it. The peak is exact: `/proc/self/clear_refs` resets `VmHWM` before
//! each phase.

use std::time::{Duration, Instant};

use synchronizer::status::InstanceStatus;
use synchronizer::{Event, SubscribeOptions, Synchronizer};
use synchronizer_tests::{binary, config};

/// Entities of the grown source, and the bytes of padding each carries: about 220 MB of
/// frames, which the host would hold whole without its bounds.
const GROWN: u32 = 200_000;
const PADDING: usize = 1024;
/// How far the host's peak resident memory may rise over its level before the grown
/// snapshots, with `snapshot_limit = 16MiB` or `max_entities = 10000`: the parts held
/// (16 MiB of frames, or 10,000 entities of 1 KiB), their decoded copies while they are
/// decoded, and the read buffers. Measured 31–37 and 5–15 MiB; with the bounds moved out of
/// the way (`snapshot_limit = "1GiB"`, `max_entities = 150000`) the host held 150,000 of
/// the entities before refusing them and its peak rose 231 MiB.
const BOUND_MIB: u64 = 128;

fn status(sync: &Synchronizer) -> InstanceStatus {
    sync.status()
        .into_iter()
        .find(|r| r.name == "grows")
        .map(|r| r.status)
        .expect("the instance `grows`")
}

/// `(VmRSS, VmHWM)` of this process, in KiB.
fn memory() -> (u64, u64) {
    synchronizer_test_kit::sys::rss_kib(std::process::id()).expect("/proc/self/status")
}

/// Resets this process's `VmHWM` to its current `VmRSS` (Linux 4.0 and later).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("writes /proc/self/clear_refs");
}

/// Runs the grown source with `bound` (one line of instance config) and returns the
/// failure's error and the rise of the host's peak memory in MiB.
async fn run(bound: &str) -> (String, u64) {
    let sync = Synchronizer::start(config(&format!(
        r#"
[[instances]]
name = "grows"
library = "libsynchronizer_test_faulty.so"
interval = "500ms"
jitter = "0s"
timeout = "60s"
isolation = "process"
child_program = {:?}
{bound}
[instances.config]
mode = "ok"
entities = 100
later_entities = {GROWN}
padding = {PADDING}
"#,
        binary().display().to_string()
    )))
    .await
    .expect("starts");
    let end = Instant::now() + Duration::from_secs(20);
    while status(&sync).collections < 1 {
        assert!(
            Instant::now() < end,
            "no first snapshot: {:?}",
            status(&sync)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sync.current(&["faulty.item"]).len(), 100);
    // A consumer of the change stream, from here on.
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["faulty.item"]));
    let pid = status(&sync).pid;
    reset_peak();
    let (before, reset) = memory();
    assert!(
        reset <= before + 1024,
        "VmHWM was not reset: RSS {before} KiB, HWM {reset} KiB"
    );
    // Two grown snapshots, each streamed whole by the child.
    let end = Instant::now() + Duration::from_secs(90);
    let s = loop {
        let s = status(&sync);
        if s.failures >= 2 {
            break s;
        }
        assert!(
            Instant::now() < end,
            "the grown snapshots never failed: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (_, peak) = memory();
    // Nothing deleted, nothing added; the same child goes on (not a protocol error).
    assert_eq!(sync.current(&["faulty.item"]).len(), 100);
    assert_eq!((s.restarts, s.pid), (0, pid), "{s:?}");
    // And the consumer was told of no change: no deletion, no creation, no resync.
    let told: Vec<Event> = std::iter::from_fn(|| sub.try_recv()).collect();
    assert!(told.is_empty(), "the consumer was told {told:?}");
    sync.shutdown().await;
    let rise = peak.saturating_sub(before) >> 10;
    eprintln!("{bound}: host RSS {before} KiB before, peak rise {rise} MiB");
    (s.last_error.unwrap_or_default(), rise)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grown_source_fails_its_snapshots_deletes_nothing_and_leaves_the_host_memory_bounded() {
    for (bound, refusal) in [
        (
            "snapshot_limit = \"16MiB\"",
            "the snapshot is larger than snapshot_limit",
        ),
        (
            "max_entities = 10000",
            "the snapshot has more than max_entities = 10000 entities",
        ),
    ] {
        let (error, rise) = run(bound).await;
        assert!(
            error.contains(refusal) && error.contains("nothing is deleted"),
            "{bound}: {error}"
        );
        assert!(
            rise <= BOUND_MIB,
            "{bound}: the host's peak rose {rise} MiB"
        );
    }
}
