//! The store thread: where batches are committed, so that the loop never waits for the disk.
//!
//! The loop hands it one batch at a time (`send`); the thread applies it with
//! `commit::commit`, sends the `Completion` back over a channel and wakes the loop through a
//! `mio::Waker` on its own token; the loop picks it up with `take` and answers it with
//! `commit::complete`. Meanwhile the loop keeps serving: heartbeats, connects, reads, and the
//! next batch forming. One batch is in flight at a time, which keeps per-user order and group
//! commit (everything that arrived while one batch was on disk goes in the next).
//!
//! The thread owns the writing `Store` and nothing else: it never touches a socket. A panic in
//! a commit (a bug) is caught here, the transaction rolled back and the batch answered as not
//! stored, so one bad write cannot leave the server without a store.

use super::commit::{self, Completion, QueuedWrite};
use crate::store::{Store, StoreError};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

struct Job {
    writes: Vec<QueuedWrite>,
    now_ms: i64,
}

pub(super) struct StoreThread {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Completion>,
    handle: Option<JoinHandle<()>>,
}

impl StoreThread {
    pub(super) fn spawn(store: Store, waker: Arc<mio::Waker>) -> std::io::Result<StoreThread> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel::<Completion>();
        let handle =
            std::thread::Builder::new().name("periode-sse-store".to_string()).spawn(move || {
                // Ends when the loop drops its sender (shutdown).
                while let Ok(job) = job_rx.recv() {
                    let completion = run_job(&store, job);
                    if done_tx.send(completion).is_err() {
                        return;
                    }
                    if let Err(e) = waker.wake() {
                        log::error!("cannot wake the event loop after a commit: {e}");
                    }
                }
            })?;
        Ok(StoreThread { jobs: Some(jobs), done, handle: Some(handle) })
    }

    /// Hands a batch to the thread. If the thread is gone (it cannot be, short of a bug), the
    /// batch is given back, to be answered as not stored.
    pub(super) fn send(
        &self,
        writes: Vec<QueuedWrite>,
        now_ms: i64,
    ) -> Result<(), Vec<QueuedWrite>> {
        match &self.jobs {
            Some(jobs) => jobs.send(Job { writes, now_ms }).map_err(|e| e.0.writes),
            None => Err(writes),
        }
    }

    /// The completion of the batch in flight, if it has come back.
    pub(super) fn take(&self) -> Option<Completion> {
        match self.done.try_recv() {
            Ok(done) => Some(done),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => None,
        }
    }

    /// Waits at most `wait` for the batch in flight (at shutdown: every acknowledged write is
    /// already durable, but one in flight should still land before the process exits).
    pub(super) fn wait(&self, wait: Duration) -> Option<Completion> {
        self.done.recv_timeout(wait).ok()
    }

    /// Stops the thread once it has finished what it holds.
    pub(super) fn stop(&mut self) {
        self.jobs = None;
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                log::error!("the store thread ended with a panic");
            }
        }
    }
}

fn run_job(store: &Store, job: Job) -> Completion {
    let Job { writes, now_ms } = job;
    let began = std::time::Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        commit::apply_all(store, &writes, now_ms)
    }));
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(_) => {
            log::error!("BUG: a panic while committing a batch (see above); nothing stored");
            store.rollback_if_open();
            Err(StoreError::Unavailable("an internal error stopped the commit".to_string()))
        }
    };
    commit::Completion::new(writes, outcome, began.elapsed())
}
