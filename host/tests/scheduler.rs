//! Scheduler timing and backoff under paused tokio time, with a scripted source: initial
//! snapshot at start, interval spacing, exponential backoff after failures and its reset,
//! a timeout that really drops the call, one collection in flight shared by callers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use synchronizer::config::Schedule;
use synchronizer::hub::{Hub, Origin};
use synchronizer::instance::{BoxFuture, CallError, Source};
use synchronizer::scheduler::{CollectError, Collector};
use synchronizer::status::StatusCell;
use synchronizer_plugin_api::ErrorKind;
use synchronizer_plugin_api::abi::FfiSnapshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the scripted source does on each call.
#[derive(Clone, Copy, Debug)]
enum Step {
    Ok,
    Fail,
    /// Takes this long (asynchronously).
    Sleep(Duration),
    /// Returns this many entities `t:<i>`.
    Many(u32),
}

struct Scripted {
    script: Mutex<Vec<Step>>,
    calls: Mutex<Vec<Instant>>,
    dropped_unfinished: Arc<AtomicU32>,
}

impl Scripted {
    fn new(script: &[Step]) -> Arc<Self> {
        Arc::new(Scripted {
            script: Mutex::new(script.iter().rev().copied().collect()),
            calls: Mutex::new(Vec::new()),
            dropped_unfinished: Arc::new(AtomicU32::new(0)),
        })
    }

    fn call_times(&self, start: Instant) -> Vec<u64> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|t| (*t - start).as_millis() as u64)
            .collect()
    }
}

struct DropFlag(Arc<AtomicU32>, bool);
impl Drop for DropFlag {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Source for Scripted {
    fn snapshot(&self, _types: Vec<String>) -> BoxFuture<Result<FfiSnapshot, CallError>> {
        self.calls.lock().unwrap().push(Instant::now());
        let step = self.script.lock().unwrap().pop().unwrap_or(Step::Ok);
        let flag = self.dropped_unfinished.clone();
        Box::pin(async move {
            let mut guard = DropFlag(flag, false);
            let result = match step {
                Step::Ok => Ok(empty()),
                Step::Fail => Err(CallError {
                    kind: ErrorKind::Failed,
                    message: "scripted failure".into(),
                }),
                Step::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    Ok(empty())
                }
                Step::Many(n) => Ok(FfiSnapshot {
                    entities: (0..n)
                        .map(|i| synchronizer_plugin_api::Entity::resource("t", &i.to_string()))
                        .collect::<Vec<_>>()
                        .into(),
                    incomplete: Default::default(),
                }),
            };
            guard.1 = true;
            result
        })
    }

    fn calls_in_flight(&self) -> u32 {
        0
    }
}

fn empty() -> FfiSnapshot {
    FfiSnapshot {
        entities: Default::default(),
        incomplete: Default::default(),
    }
}

fn collector(source: Arc<Scripted>, schedule: Schedule) -> (Arc<Collector>, Arc<StatusCell>) {
    let status = Arc::new(StatusCell::default());
    let c = Collector::new(
        Origin {
            owner: 0,
            instance: Arc::from("scripted"),
        },
        source,
        schedule,
        vec!["t".into()],
        Arc::new(Hub::new(Duration::from_secs(60))),
        status.clone(),
    );
    (c, status)
}

fn schedule() -> Schedule {
    Schedule {
        interval: Duration::from_secs(10),
        jitter: Duration::ZERO,
        timeout: Duration::from_secs(3),
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(4),
        max_entities: 3,
    }
}

async fn run_for(c: Arc<Collector>, d: Duration) {
    let token = CancellationToken::new();
    let task = tokio::spawn(c.run(token.clone()));
    tokio::time::sleep(d).await;
    token.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn initial_snapshot_at_start_then_every_interval() {
    let src = Scripted::new(&[]);
    let (c, _) = collector(src.clone(), schedule());
    let start = Instant::now();
    run_for(c, Duration::from_millis(35_500)).await;
    assert_eq!(src.call_times(start), vec![0, 10_000, 20_000, 30_000]);
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_up_to_the_max_and_success_resets() {
    use Step::*;
    let src = Scripted::new(&[Fail, Fail, Fail, Fail, Ok, Fail, Ok]);
    let (c, status) = collector(src.clone(), schedule());
    let start = Instant::now();
    run_for(c, Duration::from_millis(30_000)).await;
    // 0 fail → +1 s, fail → +2 s, fail → +4 s, fail → +4 s (max), ok → +10 s,
    // fail → +1 s (reset), ok → +10 s.
    assert_eq!(
        src.call_times(start),
        vec![0, 1_000, 3_000, 7_000, 11_000, 21_000, 22_000]
    );
    assert_eq!(status.get().failures, 5);
    assert_eq!(status.get().consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_drops_the_call_and_counts_as_a_failure() {
    let src = Scripted::new(&[Step::Sleep(Duration::from_secs(3600))]);
    let (c, status) = collector(src.clone(), schedule());
    let start = Instant::now();
    let result = c.collect().await;
    assert!(
        matches!(result, Err(CollectError::Timeout { .. })),
        "{result:?}"
    );
    assert_eq!((Instant::now() - start).as_millis(), 3_000);
    assert_eq!(
        src.dropped_unfinished.load(Ordering::SeqCst),
        1,
        "the call was dropped"
    );
    assert_eq!(status.get().failures, 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_collection() {
    let src = Scripted::new(&[Step::Sleep(Duration::from_secs(2))]);
    let (c, _) = collector(src.clone(), schedule());
    let (a, b, d) = tokio::join!(c.collect(), c.collect(), c.collect());
    assert!(a.is_ok() && b.is_ok() && d.is_ok());
    assert_eq!(src.calls.lock().unwrap().len(), 1);
    // A call after it finished is a new collection.
    c.collect().await.unwrap();
    assert_eq!(src.calls.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_schedule_never_overlaps_collections() {
    // Each collection takes 15 s, longer than the 10 s interval (timeout raised).
    let src = Scripted::new(&[Step::Sleep(Duration::from_secs(15)); 4]);
    let mut s = schedule();
    s.timeout = Duration::from_secs(20);
    let (c, _) = collector(src.clone(), s);
    let start = Instant::now();
    run_for(c, Duration::from_millis(60_000)).await;
    assert_eq!(src.call_times(start), vec![0, 25_000, 50_000]);
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_past_max_entities_fails_and_deletes_nothing() {
    let src = Scripted::new(&[Step::Many(2), Step::Many(4), Step::Many(3)]);
    let hub = Arc::new(Hub::new(Duration::from_secs(60)));
    let status = Arc::new(StatusCell::default());
    let c = Collector::new(
        Origin {
            owner: 0,
            instance: Arc::from("scripted"),
        },
        src.clone(),
        schedule(),
        vec!["t".into()],
        hub.clone(),
        status.clone(),
    );
    assert_eq!(c.collect().await.map(|r| r.entities.len()).ok(), Some(2));
    let err = c
        .collect()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("has 4 entities, more than max_entities = 3")
            && err.contains("nothing is deleted"),
        "{err}"
    );
    assert_eq!(hub.counts(), vec![("t".to_owned(), 2)], "the two are kept");
    assert_eq!(status.get().consecutive_failures, 1);
    // At the limit is fine.
    assert_eq!(c.collect().await.map(|r| r.entities.len()).ok(), Some(3));
    assert_eq!(hub.counts(), vec![("t".to_owned(), 3)]);
}
