//! The threads that do the HTTP API's bulk read work: collecting and sorting the view for
//! `GET /v1/entities`, and encoding a whole-view answer as JSON.
//!
//! Readers take no lock the writer needs ([`crate::view`]), but they still take CPU: on a
//! two-core machine, sixteen clients reading a million-entity view each on a blocking
//! thread of their own left the writer's diff a fraction of a core (2.78× slower in
//! `tests/benches/readers.rs`). So this work runs here instead, on a fixed number of
//! threads (one fewer than the machine has cores, at least one) that run at a lower CPU
//! priority (`nice` +10 on Linux): when the writer has work the kernel gives it the
//! CPU first, and when it has none the readers get all of it. Requests queue in arrival
//! order; a read waits, it never fails, for the pool being busy.
//!
//! See `docs/architecture.md` (the read path).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// How much lower than the host's other threads the readers run (`nice` increment).
const READER_NICENESS: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// The read threads. Dropping the pool lets them finish the queued jobs and end.
pub(super) struct ReadPool {
    jobs: Mutex<mpsc::Sender<Job>>,
}

/// The pool's threads are gone (only while the process is going down).
#[derive(Debug, thiserror::Error)]
#[error("the HTTP API's read threads have stopped")]
pub(super) struct Stopped;

impl ReadPool {
    /// A pool of `threads` (at least one) read threads.
    pub(super) fn start(threads: usize) -> std::io::Result<ReadPool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("http-read-{n}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held only to take the next job, not to run it.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(ReadPool {
            jobs: Mutex::new(tx),
        })
    }

    /// The default size: one thread fewer than the machine has cores, at least one.
    pub(super) fn default_threads() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get().saturating_sub(1))
            .unwrap_or(1)
            .max(1)
    }

    /// Runs `f` on a read thread and returns what it returned. A panic in `f` is
    /// reported as [`Stopped`] for this call only; the thread goes on.
    pub(super) async fn run<T, F>(&self, f: F) -> Result<T, Stopped>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            if let Ok(out) = out {
                let _ = done.send(out);
            }
        });
        self.jobs
            .lock()
            .map_err(|_| Stopped)?
            .send(job)
            .map_err(|_| Stopped)?;
        result.await.map_err(|_| Stopped)
    }
}

/// Lowers the calling thread's CPU priority (Linux: `nice` is per thread). Failing is
/// harmless: the thread then runs at the host's own priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
        // A failed getpriority (-1, which is also a valid nice value) only makes the
        // thread's nice 9 instead of the process's + 10: still below the writer.
        // SAFETY: as above.
        let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
        let wanted = (current + READER_NICENESS).min(19);
        // SAFETY: as above.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, wanted) } != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "cannot lower the HTTP read threads' priority"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_in_order_and_survives_a_panicking_one() {
        let pool = ReadPool::start(1).expect("pool");
        assert_eq!(pool.run(|| 1 + 1).await.expect("ran"), 2);
        let panicked = pool.run(|| -> u32 { panic!("a reader's bug") }).await;
        assert!(panicked.is_err());
        // The thread is still there for the next job.
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .expect("ran");
        assert_eq!(name.as_deref(), Some("http-read-0"));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn read_threads_run_at_a_lower_priority_than_the_caller() {
        let priority = || {
            // SAFETY: plain integers.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
            // SAFETY: plain integers.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) }
        };
        let mine = priority();
        let pool = ReadPool::start(2).expect("pool");
        let theirs = pool.run(priority).await.expect("ran");
        assert_eq!(theirs, (mine + READER_NICENESS).min(19));
    }
}
