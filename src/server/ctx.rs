//! What the loop lends its handlers: everything but the slab and the poll.
//!
//! `Server` (in `mod.rs`) owns the sockets: the poll, the listener and the slab of
//! connections. Everything a handler may need besides its own connection lives here — the
//! timer wheel, the registry, the store, metrics, configuration, scratch buffers, and the
//! lists through which verdicts reach the loop's later steps (`again`, `batch`, `ended`,
//! `to_close`) — so a handler borrows one `Conn` and the `Ctx` at once, and the slab is never
//! searched again for the connection at hand.

use super::commit::QueuedWrite;
use crate::backend::{Reader as Store, Wanted};
use crate::config::Config;
use crate::domain::UserId;
use crate::key::ConnKey;
use crate::metrics::{Gauges, Metrics, Process};
use crate::registry::Registry;
use crate::timer::TimerWheel;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Both clocks, read once after each poll.
#[derive(Clone, Copy)]
pub(super) struct Now {
    /// Monotonic milliseconds since the server started: timers.
    pub(super) mono_ms: u64,
    /// Wall clock, epoch milliseconds: tokens and timestamps.
    pub(super) epoch_ms: i64,
}

pub(super) struct Ctx {
    pub(super) wheel: TimerWheel<ConnKey>,
    pub(super) registry: Registry,
    /// The loop's read-only view of the database; writes go through the store thread.
    pub(super) store: Store,
    pub(super) metrics: Metrics,
    pub(super) config: Config,
    pub(super) secret: crate::jwt::Keys,
    /// Stream tickets (SPEC §8) on SQLite; a `RefCell` because handlers see the context
    /// read-only. In cluster mode they live in PostgreSQL instead (through `store`).
    pub(super) tickets: std::cell::RefCell<crate::tickets::Tickets>,
    pub(super) max_conns: usize,
    /// Open connections (the slab's length), kept here for `/metrics`.
    pub(super) conns_open: usize,
    started: Instant,
    /// The wall clock at start, for `process_start_time_seconds`.
    started_epoch_secs: f64,
    /// Reused read buffer: a request that arrives whole never allocates a buffer of its own.
    pub(super) scratch_in: Vec<u8>,
    pub(super) scratch_out: Vec<u8>,
    /// Reused copy of one user's slab indices during a fan-out (writes need `conns` mutably).
    pub(super) fanout_keys: Vec<u32>,
    /// Connections whose deadline has passed, not yet handled: a turn handles at most
    /// `TIMERS_PER_TURN` of them and leaves the rest, oldest first, to the next.
    pub(super) due: std::collections::VecDeque<ConnKey>,
    /// The wheel's due indices, before they are named as `due`'s keys.
    pub(super) due_index: Vec<usize>,
    /// This turn's heartbeat frame (every heartbeat in a turn carries the same timestamp).
    pub(super) heartbeat_frame: Option<(i64, Vec<u8>, std::ops::Range<usize>)>,
    /// Connections whose read or write was cut short by the per-turn budget.
    pub(super) again: Vec<ConnKey>,
    /// Writes waiting for this turn's group commit.
    pub(super) batch: Vec<QueuedWrite>,
    /// Writers whose socket may hold what no new event will report — a readiness event came
    /// while they were committing, or the read that found their write stopped before the
    /// socket was empty — so they are read again once answered. The others are not: the next
    /// request raises an event of its own.
    pub(super) read_later: std::collections::HashSet<ConnKey>,
    /// Streams that ended this turn (their connection lingers): unlinked at the reap.
    pub(super) ended: Vec<(ConnKey, UserId)>,
    /// Connections marked to close: removed at the reap.
    pub(super) to_close: Vec<ConnKey>,
    pub(super) shutdown_deadline: Option<u64>,
    /// Bytes held by requests whose head has not fully arrived (see `HeldBytes`).
    pub(super) held: std::sync::Arc<crate::conn::HeldCounters>,
    /// Request buffer bytes released since the allocator was last asked to give memory back.
    released_at_last_trim: usize,
    /// The `Date` of every answer: formatted once per second, not per response.
    date: String,
    date_second: i64,
    rng: crate::rng::Rng,
    /// Users with writes queued on the store thread, and how many: their requests wait
    /// (`parked`) until those are answered.
    pub(super) busy_users: std::collections::HashMap<UserId, u32>,
    /// Connections whose next request waits for the store (a batch in flight, a load), and
    /// since when (monotonic ms): past `PARK_DEADLINE_MS` they are answered 503.
    /// What each waits for: only what came back is served again (a load of one user
    /// retries its own requests, not every parked connection).
    pub(super) parked: Vec<(ConnKey, u64, ParkedOn)>,
    /// Set while parked connections are served again: a request that parks once more keeps
    /// its first deadline.
    pub(super) parked_since: Option<u64>,
    /// What the request being handled waits for, when it is about to park (`Verdict::Wait`).
    pub(super) parking_on: Option<ParkedOn>,
    /// Cluster mode: what waiting requests asked the store thread for (users' reads, stream
    /// tickets to redeem or mint), with the `feed_epoch` of the asking…
    pub(super) loading: std::collections::HashMap<Wanted, u64>,
    /// …and what was asked for this turn (with a stream's resume point), sent at step 7.
    pub(super) loads_wanted: Vec<(Wanted, Option<u64>)>,
    /// Cluster mode: the change feed and the gap tracker (always `None` on SQLite).
    pub(super) feed: Option<super::feed::Feed>,
    /// Catch-ups asked for this turn (user, after), sent at step 7.
    pub(super) catch_ups_wanted: Vec<(UserId, u64)>,
    /// The last commit reached the store (a `503` batch sets it to `false`).
    pub(super) store_ok: bool,
    /// Counts what may have made a cached read stale (feed events, outages): a load that
    /// saw it change while in flight is used once and not kept.
    pub(super) feed_epoch: u64,
}

/// Request buffer bytes released past which a quiet loop trims (`Ctx::trim_pending`).
const TRIM_WHEN_QUIET_BYTES: usize = 64 << 10;
/// How long the loop has had nothing to do before it trims: a burst is over, and a trim
/// inside one would only hand back pages that the next connects fault in again.
pub(super) const QUIET_MS: u64 = 100;

/// What a parked request waits for (no `Debug`: a `Wanted` may hold a ticket's key).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ParkedOn {
    /// Its user's writes on the store thread: served when a batch comes back.
    Batch,
    /// What it asked the store thread for (or another request asked for before it).
    Load(Wanted),
}
impl Ctx {
    pub(super) fn new(
        config: Config,
        store: Store,
        secret: crate::jwt::Keys,
        max_conns: usize,
        read_chunk: usize,
    ) -> Ctx {
        Ctx {
            wheel: TimerWheel::new(0),
            registry: Registry::new(),
            store,
            metrics: Metrics::default(),
            config,
            secret,
            tickets: Default::default(),
            max_conns,
            conns_open: 0,
            started: Instant::now(),
            started_epoch_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            scratch_in: Vec::with_capacity(read_chunk * 2),
            scratch_out: Vec::with_capacity(64 * 1024),
            fanout_keys: Vec::new(),
            due: std::collections::VecDeque::new(),
            due_index: Vec::new(),
            heartbeat_frame: None,
            again: Vec::new(),
            batch: Vec::new(),
            read_later: Default::default(),
            ended: Vec::new(),
            to_close: Vec::new(),
            shutdown_deadline: None,
            held: Default::default(),
            released_at_last_trim: 0,
            date: crate::time::imf_fixdate(0),
            date_second: 0,
            rng: crate::rng::Rng::from_entropy(),
            busy_users: Default::default(),
            parked: Vec::new(),
            parked_since: None,
            parking_on: None,
            loading: Default::default(),
            loads_wanted: Vec::new(),
            feed: None,
            catch_ups_wanted: Vec::new(),
            store_ok: true,
            feed_epoch: 0,
        }
    }

    pub(super) fn now(&self) -> Now {
        let epoch_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        Now { mono_ms: self.started.elapsed().as_millis() as u64, epoch_ms }
    }

    /// Re-formats the `Date` field when the second has changed (called once per turn).
    pub(super) fn refresh_date(&mut self, now: Now) {
        let second = now.epoch_ms.div_euclid(1000);
        if second != self.date_second {
            self.date_second = second;
            self.date = crate::time::imf_fixdate(second * 1000);
        }
    }

    pub(super) fn date(&self) -> &[u8] {
        self.date.as_bytes()
    }

    /// After many request buffers have gone (a burst of half-received requests), asks the
    /// allocator to hand the freed memory back to the system: glibc keeps it otherwise, and
    /// a burst of 1000 clients would stay in the RSS after they left.
    pub(super) fn give_memory_back(&mut self) {
        const TRIM_AFTER_BYTES: usize = 4 << 20;
        if self.released_since_trim() >= TRIM_AFTER_BYTES {
            self.trim();
        }
    }

    /// Whether enough request buffers have gone since the last trim that the loop, once
    /// quiet for `QUIET_MS`, should give their memory back (`give_memory_back_when_quiet`).
    /// A burst smaller than `give_memory_back`'s 4 MiB stays otherwise: in cluster mode
    /// every stream request of a user not yet loaded is parked with its bytes held, so a
    /// connect burst holds ~450 B per connect in flight, and glibc kept those pages after
    /// they were freed (0.2–0.4 MB of every PostgreSQL node's RSS, docs/memory.md).
    pub(super) fn trim_pending(&self) -> bool {
        self.released_since_trim() >= TRIM_WHEN_QUIET_BYTES
    }

    /// The loop had nothing to do for `QUIET_MS` after a burst: trim once, now.
    pub(super) fn give_memory_back_when_quiet(&mut self) {
        if self.trim_pending() {
            self.trim();
        }
    }

    fn released_since_trim(&self) -> usize {
        self.held.released().wrapping_sub(self.released_at_last_trim)
    }

    fn trim(&mut self) {
        self.released_at_last_trim = self.held.released();
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim takes no pointers; it only returns free heap pages to the system.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    pub(super) fn shutting_down(&self) -> bool {
        self.shutdown_deadline.is_some()
    }

    /// The `/metrics` text, with the figures the server reads only when asked (the process
    /// from `/proc`, the database files' sizes).
    pub(super) fn render_metrics(&self) -> String {
        let gauges = Gauges {
            connections_open: self.conns_open,
            streams_open: self.registry.total(),
            users_with_streams: self.registry.users(),
            max_conns: self.max_conns,
            store_up: self.store_up(),
            process: process_figures(&self.config.db, self.started_epoch_secs),
        };
        self.metrics.render(&gauges)
    }

    /// `periode_sse_store_up`: writes reach the store and, in cluster mode, the feed is up.
    pub(super) fn store_up(&self) -> bool {
        #[cfg(feature = "postgres")]
        if let Some(feed) = &self.feed {
            return self.store_ok && feed.up;
        }
        self.store_ok
    }

    pub(super) fn random_below(&mut self, bound: u64) -> u64 {
        self.rng.below(bound)
    }
}

/// What `/proc` and the file system say about this process and its database, now.
fn process_figures(db: &std::path::Path, start_time_secs: f64) -> Process {
    // statm's second field is resident pages.
    let resident_pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()));
    // SAFETY: sysconf reads a constant of the system; no pointers.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u64::try_from(page).unwrap_or(4096);
    let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
    let size = |path: &std::path::Path| std::fs::metadata(path).ok().map(|m| m.len());
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    Process {
        resident_bytes: resident_pages.map(|p| p * page),
        // The read_dir itself holds one descriptor while it counts.
        open_fds: open_fds.map(|n| n.saturating_sub(1)),
        start_time_secs: Some(start_time_secs),
        db_bytes: size(db),
        wal_bytes: size(std::path::Path::new(&wal)),
    }
}
