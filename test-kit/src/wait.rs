//! Waiting, always bounded: until a condition holds or the time is up, when the test
//! fails saying what it waited for.

use std::time::{Duration, Instant};

/// How often [`wait_for`] and [`wait_until`] look.
pub const EVERY: Duration = Duration::from_millis(20);

/// Waits until the async `cond` holds, looking every 20 ms; fails the test after
/// `within` with `what`.
pub async fn wait_for(within: Duration, what: &str, cond: impl AsyncFnMut() -> bool) {
    wait_for_every(within, EVERY, what, cond).await
}

/// [`wait_for`], looking every `every` (a real service is asked less often).
pub async fn wait_for_every(
    within: Duration,
    every: Duration,
    what: &str,
    mut cond: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Waits until `cond` holds, looking every 20 ms; fails the test after `within` with
/// `what`.
pub async fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(within, what, async || cond()).await
}
