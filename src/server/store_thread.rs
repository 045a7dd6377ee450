//! The store thread: where batches are committed, so that the loop never waits for the disk.
//!
//! The loop queues each turn's writes (`queue`) on a list the thread shares with it; the
//! thread takes the whole list whenever it is free, so a batch that formed while the last one
//! was on disk leaves at once, without waiting for the loop to hear of that commit. In
//! cluster mode a second thread, with its own connection, takes the reads the loop's cache
//! misses (`load`, `catch_up`: PostgreSQL is never queried from the loop thread, and a read
//! never queues behind a batch). A thread applies a batch, sends what it did back over a
//! channel and wakes the loop through the loop's one `mio::Waker`; the loop picks it up with
//! `take` and answers it with `commit::complete`. Meanwhile the loop keeps serving:
//! heartbeats, connects, reads, and the next batch forming. One transaction is open at a
//! time, which keeps per-user order and group commit.
//!
//! On SQLite a batch also takes in the writes queued while it is being applied, up to
//! `ABSORB_FOR` after its first: those would otherwise wait a whole commit for the next
//! batch, and the writers answered by one commit, coming back while the next is applied,
//! would form a second cohort alternating with the first, each half as large (twice the
//! `fdatasync`s and WAL pages per write). It never waits for writes that are not there.
//! PostgreSQL batches are applied in ascending user id (two nodes must lock rows in one
//! order), so they take only what was queued when they began; the same cohorts formed there
//! (docs/cluster.md, "Session 5"): so a PostgreSQL batch that follows another at once first
//! waits, for at most `GATHER_FOR`, until the writers the last batch answered are back in the
//! queue. A write that finds the thread idle leaves at once, as before.
//!
//! A thread owns its store and nothing else: it never touches a socket. A panic in
//! a commit (a bug) is caught here, the transaction rolled back and the batch answered as not
//! stored, so one bad write cannot leave the server without a store.

use super::commit::{self, Completion, QueuedWrite};
use crate::backend::{Backend as Store, Load, Wanted, Written};
use crate::domain::UserId;
use crate::key::ConnKey;
use crate::store::{self, StoreError};
use std::collections::VecDeque;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a SQLite batch keeps taking in writes queued after its first ones: a bound on
/// what that adds to the first writes' wait (about one commit's `fdatasync` here), and on
/// the transaction's size under a flood.
const ABSORB_FOR: Duration = Duration::from_millis(1);
/// PostgreSQL: how long a batch that follows another at once waits for the last batch's
/// writers to come back (its answers cross the loop and the client first). The same bound
/// as `ABSORB_FOR`, for the same reason; only ever spent while writes keep the thread busy.
const GATHER_FOR: Duration = Duration::from_millis(1);

enum Job {
    Load { wanted: Wanted, after: Option<u64> },
    CatchUp { user: UserId, after: u64 },
    Ping,
}

/// What comes back.
pub(super) enum Done {
    /// A committed (or failed) batch, and who wrote in it: the connections and the users it
    /// answers, so that the loop can tell what is no longer in flight.
    Batch(Completion, Vec<(ConnKey, UserId)>),
    /// What a waiting request asked for (a user's reads; cluster mode's tickets).
    Loaded(Wanted, store::Result<Load>),
    /// Cluster mode: the kept notifications of a user after an id, or why not.
    CaughtUp(UserId, Result<Vec<(u64, String)>, String>),
    /// Whether the store answered a ping.
    Pinged(bool),
}

/// A write on the shared list, with the loop's clock of the turn that queued it.
struct Queued {
    write: QueuedWrite,
    now_ms: i64,
}

/// What the loop and the thread share, behind one lock.
#[derive(Default)]
struct State {
    writes: Vec<Queued>,
    jobs: VecDeque<Job>,
    /// The thread is waiting for work: only then does queueing cost a wake-up.
    idle: bool,
    /// The thread is gathering a batch (`GATHER_FOR`): queueing wakes it once this many
    /// writes are queued.
    gathering: Option<usize>,
    /// The loop has stopped: the thread finishes what is queued and ends.
    stopping: bool,
    /// The thread has ended (it cannot, short of a bug): nothing queued would be taken.
    ended: bool,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
}

impl Shared {
    /// A panic while the lock was held (a bug) left at worst a list being swapped: carrying
    /// on beats leaving every writer unanswered.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the thread does next, waiting until there is something; `None` once stopped and
    /// nothing is left. `gather`: the size of the batch just answered, if the thread comes
    /// straight from one on PostgreSQL (see `GATHER_FOR`).
    fn next(&self, gather: Option<usize>) -> Option<Work> {
        let mut state = self.lock();
        if let Some(answered) = gather.filter(|n| *n > 0) {
            // The writes queued now formed while the last batch was out; those it answered
            // come back in a moment: wait for them (bounded), so one batch takes both.
            let queued = state.writes.len();
            if queued > 0 {
                let want = queued.saturating_add(answered);
                let until = Instant::now() + GATHER_FOR;
                // Bounded by time: each turn either has the writes, a job, or waits less.
                while state.writes.len() < want && state.jobs.is_empty() && !state.stopping {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    state.gathering = Some(want);
                    state = match self.work.wait_timeout(state, left) {
                        Ok((state, _)) => state,
                        Err(poisoned) => poisoned.into_inner().0,
                    };
                    state.gathering = None;
                }
            }
        }
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return Some(Work::Job(job));
            }
            if !state.writes.is_empty() {
                return Some(Work::Writes(std::mem::take(&mut state.writes)));
            }
            if state.stopping {
                return None;
            }
            state.idle = true;
            state = self.work.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            state.idle = false;
        }
    }

    fn take_writes(&self) -> Vec<Queued> {
        std::mem::take(&mut self.lock().writes)
    }
}

enum Work {
    Job(Job),
    Writes(Vec<Queued>),
}

/// Marks the thread ended however it ends (a panic outside the caught parts too), so that
/// the loop answers what it would queue instead of leaving it unanswered.
struct EndGuard(Arc<Shared>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.lock().ended = true;
    }
}

pub(super) struct StoreThread {
    shared: Arc<Shared>,
    done: mpsc::Receiver<Done>,
    handle: Option<JoinHandle<()>>,
}

impl StoreThread {
    /// `absorb`: a batch takes in the writes queued while it is applied (SQLite; see the
    /// module header). Otherwise it is applied in ascending user id, as PostgreSQL needs.
    pub(super) fn spawn(
        store: Store,
        waker: Arc<mio::Waker>,
        absorb: bool,
    ) -> std::io::Result<StoreThread> {
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), work: Condvar::new() });
        let (done_tx, done) = mpsc::channel::<Done>();
        let theirs = Arc::clone(&shared);
        let handle =
            std::thread::Builder::new().name("periode-sse-store".to_string()).spawn(move || {
                let guard = EndGuard(theirs);
                let shared = &guard.0;
                // The size of the batch just answered (PostgreSQL), for `next` to gather.
                let mut answered: Option<usize> = None;
                // Ends when the loop stops and everything queued is done (shutdown).
                while let Some(work) = shared.next(answered.take()) {
                    let done = match work {
                        Work::Job(job) => run_job(&store, job),
                        Work::Writes(first) => {
                            if !absorb {
                                answered = Some(first.len());
                            }
                            commit_batch(&store, shared, first, absorb)
                        }
                    };
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
        Ok(StoreThread { shared, done, handle: Some(handle) })
    }

    /// Queues writes for the thread's next batch (all of them in one, in order), waking it
    /// only if it waits. If the thread is gone (it cannot be, short of a bug), they are given
    /// back, to be answered as not stored.
    pub(super) fn queue(
        &self,
        writes: Vec<QueuedWrite>,
        now_ms: i64,
    ) -> Result<(), Vec<QueuedWrite>> {
        let mut state = self.shared.lock();
        if state.ended || state.stopping {
            return Err(writes);
        }
        state.writes.extend(writes.into_iter().map(|write| Queued { write, now_ms }));
        let gathered = state.gathering.is_some_and(|want| state.writes.len() >= want);
        if state.idle || gathered {
            self.shared.work.notify_one();
        }
        Ok(())
    }

    fn ask(&self, job: Job) -> bool {
        let mut state = self.shared.lock();
        if state.ended || state.stopping {
            return false;
        }
        state.jobs.push_back(job);
        // A read never waits for a batch to gather.
        if state.idle || state.gathering.is_some() {
            self.shared.work.notify_one();
        }
        true
    }

    /// Asks for what a waiting request needs: a user's reads (and the notifications after
    /// `after`), or cluster mode's ticket redemption or minting; `false` if the thread is
    /// gone.
    pub(super) fn load(&self, wanted: Wanted, after: Option<u64>) -> bool {
        self.ask(Job::Load { wanted, after })
    }

    /// Asks for `user`'s kept notifications after `after`; `false` if the thread is gone.
    pub(super) fn catch_up(&self, user: UserId, after: u64) -> bool {
        self.ask(Job::CatchUp { user, after })
    }

    /// Asks whether the store answers; `false` if the thread is gone.
    pub(super) fn ping(&self) -> bool {
        self.ask(Job::Ping)
    }

    /// What has come back, if anything.
    pub(super) fn take(&self) -> Option<Done> {
        match self.done.try_recv() {
            Ok(done) => Some(done),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => None,
        }
    }

    /// Waits at most `wait` for the next batch to come back (at shutdown: every acknowledged
    /// write is already durable, but those in flight should still land before the process
    /// exits).
    pub(super) fn wait(&self, wait: Duration) -> Option<(Completion, Vec<(ConnKey, UserId)>)> {
        let deadline = Instant::now() + wait;
        // Loads that come back meanwhile are of no use any more: skipped (bounded by time).
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left).ok()? {
                Done::Batch(done, writers) => return Some((done, writers)),
                Done::Loaded(..) | Done::CaughtUp(..) | Done::Pinged(_) => {}
            }
        }
    }

    /// Stops the thread once it has finished what it holds.
    pub(super) fn stop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stopping = true;
            self.shared.work.notify_one();
        }
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                log::error!("the store thread ended with a panic");
            }
        }
    }
}

/// Applies one batch in one transaction and commits it: `first`, and on SQLite whatever is
/// queued meanwhile (see `ABSORB_FOR`). On any error nothing of it is stored.
fn commit_batch(store: &Store, shared: &Shared, first: Vec<Queued>, absorb: bool) -> Done {
    let began = Instant::now();
    let (writes, outcome) = if absorb {
        apply_absorbing(store, shared, first, began)
    } else {
        // The last turn's clock for all: these writes left together.
        let now_ms = first.iter().map(|q| q.now_ms).max().unwrap_or(0);
        let mut writes: Vec<QueuedWrite> = first.into_iter().map(|q| q.write).collect();
        // Stable: a user's own writes keep their order; each write has its own answer.
        writes.sort_by_key(|w| w.user());
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            commit::apply_all(store, &writes, now_ms)
        }));
        (writes, outcome)
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(_) => {
            log::error!("BUG: a panic while committing a batch (see above); nothing stored");
            store.rollback_if_open();
            Err(StoreError::Unavailable("an internal error stopped the commit".to_string()))
        }
    };
    let writers = writes.iter().map(|w| (w.key, w.user())).collect();
    Done::Batch(commit::Completion::new(writes, outcome, began.elapsed()), writers)
}

/// What a batch's transaction did: every write's result, or why none was stored; `Err` if
/// it panicked.
type Applied = std::thread::Result<Result<(Vec<crate::writes::Applied>, Written), StoreError>>;

/// SQLite: applies `first`, then what was queued meanwhile, until nothing is or
/// `ABSORB_FOR` has passed since `began`, and commits once.
fn apply_absorbing(
    store: &Store,
    shared: &Shared,
    first: Vec<Queued>,
    began: Instant,
) -> (Vec<QueuedWrite>, Applied) {
    let mut next = first;
    // Every write taken is moved here before any is applied: whatever stops the batch (an
    // error, a panic), each of them is answered.
    let mut writes: Vec<QueuedWrite> = Vec::with_capacity(next.len());
    let mut clocks: Vec<i64> = Vec::with_capacity(next.len());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.begin()?;
        let mut results = Vec::with_capacity(next.len());
        loop {
            let from = writes.len();
            for queued in next.drain(..) {
                writes.push(queued.write);
                clocks.push(queued.now_ms);
            }
            for (write, now_ms) in writes[from..].iter().zip(&clocks[from..]) {
                match crate::writes::apply(store, &write.op, *now_ms) {
                    Ok(applied) => results.push(applied),
                    Err(e) => {
                        store.rollback();
                        return Err(e);
                    }
                }
            }
            if began.elapsed() >= ABSORB_FOR {
                break;
            }
            next = shared.take_writes();
            if next.is_empty() {
                break;
            }
        }
        if let Err(e) = store.commit() {
            store.rollback();
            return Err(e);
        }
        // SQLite's writer put the batch's views in the cache it shares with the loop.
        Ok((results, Written::default()))
    }));
    (writes, outcome)
}

fn run_job(store: &Store, job: Job) -> Done {
    match job {
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
            Done::Loaded(wanted, load)
        }
        Job::Ping => {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.ping()));
            Done::Pinged(matches!(ok, Ok(Ok(()))))
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
            Done::CaughtUp(user, rows)
        }
    }
}
