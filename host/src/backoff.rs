//! Exponential backoff, the one used everywhere the host retries: failed collections (the
//! scheduler), a bus plugin's push loop, a plugin child process, an AMQP output.
//!
//! The delay doubles with each failure in a row from `initial` up to `max`, less a random
//! part of up to `jitter` of it (so that instances that failed together do not retry
//! together, and the delay never passes `max`). The count starts again after a success,
//! or once an attempt ran for a quiet period without failing: a bus that ran for an hour
//! and lost its broker retries after `initial`, not after the delay its crashes a day
//! ago had reached.

use std::time::{Duration, Instant};

/// Retry delays for one thing that fails and retries.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    quiet: Duration,
    failures: u32,
    /// When the attempt after the last failure was due.
    retry_at: Option<Instant>,
}

impl Backoff {
    /// From `initial` to `max`, no jitter, reset after a minute without failure.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            jitter: 0.0,
            quiet: Duration::from_secs(60),
            failures: 0,
            retry_at: None,
        }
    }

    /// Takes up to `fraction` (0 to 1) of each delay off at random.
    pub fn with_jitter(mut self, fraction: f64) -> Backoff {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// An attempt that runs this long without failing starts the count again.
    pub fn with_quiet_period(mut self, quiet: Duration) -> Backoff {
        self.quiet = quiet;
        self
    }

    /// Failures in a row counted so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure waits `initial` again.
    pub fn success(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    /// A failure now: the delay before the next attempt.
    pub fn failure(&mut self) -> Duration {
        // Tokio's clock (the system's, except in a test that pauses time), so that the
        // quiet period passes with the sleeps that make it.
        self.failure_at(tokio::time::Instant::now().into_std())
    }

    /// A failure at `now`: the delay before the next attempt.
    pub fn failure_at(&mut self, now: Instant) -> Duration {
        if self
            .retry_at
            .is_some_and(|due| now.saturating_duration_since(due) >= self.quiet)
        {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        let delay = self.delay();
        // A delay past what `Instant` holds (a `Duration::MAX` maximum) never goes quiet.
        self.retry_at = now.checked_add(delay);
        delay
    }

    /// The delay for the failures counted, before jitter.
    fn full_delay(&self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(30);
        self.initial.saturating_mul(1u32 << exp).min(self.max)
    }

    fn delay(&self) -> Duration {
        let full = self.full_delay();
        if self.jitter == 0.0 {
            return full;
        }
        let off = full.as_secs_f64() * self.jitter * rand::random::<f64>();
        full.saturating_sub(Duration::try_from_secs_f64(off).unwrap_or(Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn doubles_up_to_the_maximum_and_never_overflows() {
        let mut b = Backoff::new(s(1), s(60));
        let now = Instant::now();
        let delays: Vec<Duration> = (0..10).map(|_| b.failure_at(now)).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60].map(s).to_vec());
        for _ in 0..1000 {
            b.failure_at(now);
        }
        assert_eq!(b.failure_at(now), s(60));
        assert_eq!(b.failures(), 1011);
        let mut huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.failure_at(now), Duration::MAX);
        assert_eq!(huge.failure_at(now), Duration::MAX);
    }

    #[test]
    fn a_success_or_a_quiet_period_starts_again_from_the_initial_delay() {
        let t0 = Instant::now();
        let mut b = Backoff::new(s(1), s(300)).with_quiet_period(s(60));
        // Nine deaths in a row, each right after its restart.
        let mut now = t0;
        for _ in 0..9 {
            now += b.failure_at(now);
        }
        assert_eq!(b.failure_at(now), s(300));
        // The restart after that ran for longer than the quiet period: back to 1 s.
        now += s(300) + s(61);
        assert_eq!(b.failure_at(now), s(1));
        assert_eq!(b.failures(), 1);
        // A failure within the quiet period after its restart still counts.
        now += s(1) + s(59);
        assert_eq!(b.failure_at(now), s(2));
        b.success();
        assert_eq!(b.failure_at(now), s(1));
    }

    #[test]
    fn jitter_only_shortens_the_delay() {
        let mut b = Backoff::new(s(10), s(10)).with_jitter(0.5);
        let now = Instant::now();
        let delays: Vec<Duration> = (0..200).map(|_| b.failure_at(now)).collect();
        assert!(delays.iter().all(|d| *d <= s(10) && *d >= s(5)));
        assert!(delays.iter().any(|d| *d < s(10)), "some delay is shortened");
        let mut none = Backoff::new(s(10), s(10)).with_jitter(f64::NAN);
        assert_eq!(none.failure_at(now), s(10));
    }
}
