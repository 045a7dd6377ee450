//! The store thread: where batches are committed, so that the loop never waits for the disk.
//!
//! The loop hands it one batch at a time (`send`). In cluster mode a second one, with its own
//! connection, takes the reads the loop's cache misses (`load`, `catch_up`: PostgreSQL is
//! never queried from the loop thread, and a read never queues behind a batch). A thread
//! applies a batch with `commit::apply_all`, sends what it did back over a channel and wakes
//! the loop through the loop's one `mio::Waker`; the loop picks it up with `take` and answers
//! it with `commit::complete`. Meanwhile the loop keeps serving: heartbeats, connects, reads,
//! and the next batch forming. One batch is in flight at a time, which keeps per-user order
//! and group commit (everything that arrived while one batch was on disk goes in the next).
//!
//! A thread owns its store and nothing else: it never touches a socket. A panic in
//! a commit (a bug) is caught here, the transaction rolled back and the batch answered as not
//! stored, so one bad write cannot leave the server without a store.

use super::commit::{self, Completion, QueuedWrite};
use crate::backend::{Backend as Store, Load, Wanted};
use crate::domain::UserId;
use crate::store::{self, StoreError};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

enum Job {
    Commit { writes: Vec<QueuedWrite>, now_ms: i64 },
    Load { wanted: Wanted, after: Option<u64> },
    CatchUp { user: UserId, after: u64 },
    Ping,
}

/// What comes back.
pub(super) enum Done {
    Batch(Completion),
    /// What a waiting request asked for (a user's reads; cluster mode's tickets).
    Loaded(Wanted, store::Result<Load>),
    /// Cluster mode: the kept notifications of a user after an id, or why not.
    CaughtUp(UserId, Result<Vec<(u64, String)>, String>),
    /// Whether the store answered a ping.
    Pinged(bool),
}

pub(super) struct StoreThread {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Done>,
    handle: Option<JoinHandle<()>>,
}

impl StoreThread {
    pub(super) fn spawn(store: Store, waker: Arc<mio::Waker>) -> std::io::Result<StoreThread> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel::<Done>();
        let handle =
            std::thread::Builder::new().name("periode-sse-store".to_string()).spawn(move || {
                // Ends when the loop drops its sender (shutdown).
                while let Ok(job) = job_rx.recv() {
                    let done = run_job(&store, job);
                    if done_tx.send(done).is_err() {
                        return;
                    }
                    if let Err(e) = waker.wake() {
                        log::error!("cannot wake the event loop after a commit: {e}");
                    }
                    // Between jobs, once the answer is out: it delays no one's answer.
                    let swept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        store.sweep_tickets_if_due()
                    }));
                    if swept.is_err() {
                        log::error!("BUG: a panic while sweeping stream tickets (see above)");
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
            Some(jobs) => jobs.send(Job::Commit { writes, now_ms }).map_err(|e| match e.0 {
                Job::Commit { writes, .. } => writes,
                Job::Load { .. } | Job::CatchUp { .. } | Job::Ping => Vec::new(),
            }),
            None => Err(writes),
        }
    }

    /// Asks for what a waiting request needs: a user's reads (and the notifications after
    /// `after`), or cluster mode's ticket redemption or minting; `false` if the thread is
    /// gone.
    pub(super) fn load(&self, wanted: Wanted, after: Option<u64>) -> bool {
        self.jobs.as_ref().is_some_and(|jobs| jobs.send(Job::Load { wanted, after }).is_ok())
    }

    /// Asks for `user`'s kept notifications after `after`; `false` if the thread is gone.
    pub(super) fn catch_up(&self, user: UserId, after: u64) -> bool {
        self.jobs.as_ref().is_some_and(|jobs| jobs.send(Job::CatchUp { user, after }).is_ok())
    }

    /// Asks whether the store answers; `false` if the thread is gone.
    pub(super) fn ping(&self) -> bool {
        self.jobs.as_ref().is_some_and(|jobs| jobs.send(Job::Ping).is_ok())
    }

    /// What has come back, if anything.
    pub(super) fn take(&self) -> Option<Done> {
        match self.done.try_recv() {
            Ok(done) => Some(done),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => None,
        }
    }

    /// Waits at most `wait` for the batch in flight (at shutdown: every acknowledged write is
    /// already durable, but one in flight should still land before the process exits).
    pub(super) fn wait(&self, wait: Duration) -> Option<Completion> {
        let deadline = std::time::Instant::now() + wait;
        // Loads that come back meanwhile are of no use any more: skipped (bounded by time).
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.done.recv_timeout(left).ok()? {
                Done::Batch(done) => return Some(done),
                Done::Loaded(..) | Done::CaughtUp(..) | Done::Pinged(_) => {}
            }
        }
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

fn run_job(store: &Store, job: Job) -> Done {
    let (writes, now_ms) = match job {
        Job::Commit { writes, now_ms } => (writes, now_ms),
        Job::Load { wanted, after } => {
            let load = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                store.fetch(wanted, after)
            }));
            let load = load.unwrap_or_else(|_| {
                match wanted {
                    Wanted::User(user) => {
                        log::error!("BUG: a panic while reading user {user} (see above)")
                    }
                    Wanted::Redeem(_) | Wanted::Mint(_) => {
                        log::error!("BUG: a panic with a stream ticket (see above)")
                    }
                }
                Err(StoreError::Unavailable("an internal error stopped the read".to_string()))
            });
            return Done::Loaded(wanted, load);
        }
        Job::Ping => {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.ping()));
            return Done::Pinged(matches!(ok, Ok(Ok(()))));
        }
        Job::CatchUp { user, after } => {
            let mut rows = Vec::new();
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                store.notifications_after(user, after, |id, data| rows.push((id, data.to_string())))
            }));
            let rows = match read {
                Ok(Ok(())) => Ok(rows),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("an internal error stopped the read".to_string()),
            };
            return Done::CaughtUp(user, rows);
        }
    };
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
    Done::Batch(commit::Completion::new(writes, outcome, began.elapsed()))
}
