//! The event loop: the only code that polls, accepts and decides when a connection dies.
//!
//! One thread, one `mio::Poll`, every socket registered once (edge-triggered, read and write).
//! The loop is split in two: `Server` (this file) owns what polls — the poll, the listener,
//! the signal pipe and the slab of connections — and lends out `Ctx` (`ctx.rs`): wheel,
//! registry, store, metrics, configuration, scratch buffers. A handler gets one connection,
//! its `ConnKey`, the `Ctx` and `now`, and returns a `Verdict` (`verdict.rs`) that the loop
//! carries out. Each turn runs in this order:
//!
//!  1. stop once the graceful stop is over (no connection left, or its deadline passed);
//!  2. poll, sleeping until the wheel's next deadline, or not at all while work is left over
//!     (`again`, a batch, connections to reap, accepts cut short); the clock is read for that
//!     sleep and then once more on waking, and that second reading is `now` for the whole
//!     turn;
//!  3. connections left over from the last turn (`again`: their drain was cut short by the
//!     per-turn budget, or a commit answered them), writable then readable;
//!  4. the events, in the kernel's order: the listener accepts until `WouldBlock` (bounded;
//!     503 past `--max-conns`), a signal starts the graceful stop, and a connection is
//!     written (`output.rs`) then read and its requests served (`requests.rs`, streams
//!     opened by `streams.rs`);
//!  5. accepts that were cut short or paused (out of descriptors) go on;
//!  6. timers (`ctx.wheel`): request and idle timeouts, heartbeats, token expiries, linger
//!     ends;
//!  7. the store (`commit.rs`, `store_thread.rs`, `feed.rs`; the store threads and the
//!     cluster listener wake the loop through one waker token): in cluster mode what the
//!     listener heard is carried out first (other nodes' notifications pushed through the gap
//!     tracker, deactivations, cache forgets, catch-ups asked for); then what the store
//!     threads sent back: a batch in flight is answered and fanned out and its users' cached
//!     views forgotten, a load fills the cache, a catch-up's rows are pushed — each time the
//!     requests parked for the store are served again; then the loads, catch-ups and (idle,
//!     cluster mode) a ping asked for are sent; then this turn's writes are queued on the
//!     store thread, which takes everything queued whenever it is free (so a batch never
//!     waits for a loop turn to leave). A request of a user with writes queued there, or
//!     (cluster mode) whose reads are not cached, is parked (`Verdict::Wait`) rather than
//!     read, and answered 503 if the store has not answered in 1.5 s;
//!  8. reap: streams that ended this turn are unlinked from the registry, and connections
//!     marked to close are removed from the wheel, the registry and the slab, and their
//!     sockets closed — the one place a connection dies and the one place anything is
//!     unlinked.
//!
//! Events for a token whose connection is gone (or whose slab index was reused: the token
//! carries the generation) are ignored.

use crate::backend::Backend;
use crate::config::Config;
use crate::conn::{Conn, Phase};
use crate::http;
use crate::key::{ConnKey, SlabKey};
use crate::metrics::CloseReason;
use crate::sse;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::io;
use std::time::Duration;

mod commit;
mod ctx;
mod feed;
mod head;
mod output;
mod requests;
mod store_thread;
mod streams;
mod verdict;

use ctx::{Ctx, Now, ParkedOn};
use requests::Drain;
use verdict::Verdict;

/// The graceful stop (SPEC §5). SIGQUIT too: nginx and HAProxy operators send it for a
/// graceful stop, and its default action (a core dump) would cut every stream.
const STOP_SIGNALS: &[libc::c_int] = &[SIGINT, SIGTERM, libc::SIGQUIT];
/// Signals whose default action ends the process — every stream cut without its last chunk
/// (curl error 18 for everyone) — and that an operator or a stray `kill` may send: caught
/// and logged instead. SIGHUP has no log file to reopen (logs go to stderr); SIGXFSZ
/// ignored turns a file-size limit into a write error the store reports, not a dead server.
/// SIGKILL and SIGSTOP cannot be caught, and the fault signals (SEGV, BUS, ILL, FPE) mean a
/// bug that must not be carried on from.
const CAUGHT_SIGNALS: &[libc::c_int] = &[
    SIGHUP,
    SIGUSR1,
    SIGUSR2,
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGXCPU,
    libc::SIGXFSZ,
];

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const METRICS_LISTENER: Token = Token(usize::MAX - 3);
/// The one waker (mio allows one per poll), shared by the store thread (something came back)
/// and, in cluster mode, the listener (other nodes' notifications, outages).
const WAKE: Token = Token(usize::MAX - 4);
/// How many of the listener's messages one turn takes.
#[cfg(feature = "postgres")]
const FEED_MESSAGES_PER_TURN: usize = 4096;

const FRESH_TIMEOUT_MS: u64 = 10_000;
const KEEP_ALIVE_TIMEOUT_MS: u64 = 15_000;
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long a closing connection waits for the client's EOF after our FIN.
const LINGER_MS: u64 = 2_000;
/// After SIGTERM everything must be over within 5 s; leave a margin for the final commit.
const SHUTDOWN_GRACE_MS: u64 = 4_000;
const ACCEPTS_PER_TURN: usize = 512;
/// At most this much is read from, or written to, one connection per turn, so that one fast
/// peer cannot starve the rest.
const IO_BUDGET_PER_TURN: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// The kernel send buffer of every connection (Linux doubles it for bookkeeping): what a
/// stalled stream can pin in the kernel stays small, and it counts toward the slow-consumer
/// limit. Set on the listener, which accepted sockets inherit it from, like `TCP_NODELAY`:
/// two `setsockopt` calls fewer per connect.
const CONN_SNDBUF: libc::c_int = 32 * 1024;
/// Unsent bytes of a stream, ours plus the kernel's, past which it is cut at once…
const HARD_UNSENT_BYTES: usize = 256 * 1024;
/// …and past which it is cut if it stays there this long (Redis's soft output limit).
const SOFT_UNSENT_BYTES: usize = 128 * 1024;
const SOFT_UNSENT_MS: u64 = 5_000;
/// How long a request may wait for the store (a batch of its user in flight, a load) before
/// it is answered `503 storage_unavailable`: SPEC §7 says within 2 s.
const PARK_DEADLINE_MS: u64 = 1_500;
/// Cluster mode: how often an idle node asks its store whether it answers, so that
/// `periode_sse_store_up` follows PostgreSQL within 2 s even when nobody writes.
const PING_EVERY_MS: u64 = 1_000;
/// How many of the store thread's answers one turn takes (the rest wait for the next).
const STORE_ANSWERS_PER_TURN: usize = 1024;
/// How many expired deadlines one turn handles (the rest wait for the next, which follows
/// at once). Streams that connected together have their heartbeats due together, every
/// period: 19 000 of them are ~130 ms of writes, and an event committed meanwhile would
/// wait for all of them. 128 heartbeats are well under a millisecond, after which the turn
/// reads requests and fans out what the store answered before it sends more.
const TIMERS_PER_TURN: usize = 128;
/// How long accept waits after running out of descriptors, when even the spare is gone.
const ACCEPT_PAUSE_MS: u64 = 100;

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    /// `--metrics-listen`: a second listener on the same loop, for `GET /metrics` only.
    metrics_listener: Option<TcpListener>,
    signals: Signals,
    conns: Slab<Conn>,
    next_gen: u32,
    ctx: Ctx,
    /// A descriptor kept free so that, out of descriptors, a connection can still be accepted
    /// and told 503 instead of being left in the backlog.
    spare_fd: Option<std::fs::File>,
    accept_paused_until: Option<u64>,
    accept_more: bool,
    out_of_fds_logged: bool,
    /// The writing store until `run` hands it to the store thread.
    writer: Option<Backend>,
    store_thread: Option<store_thread::StoreThread>,
    /// PostgreSQL: the reads' store until `run` gives it a thread, then that thread (loads
    /// and catch-ups never queue behind a batch).
    read_store: Option<Backend>,
    read_thread: Option<store_thread::StoreThread>,
    waker: std::sync::Arc<mio::Waker>,
    /// The writers queued on the store thread whose batch has not come back yet.
    in_flight: std::collections::HashSet<ConnKey>,
    /// PostgreSQL: a batch's writes are applied in ascending user id, so that two nodes'
    /// batches lock users' rows in one order and cannot deadlock (docs/cluster.md). SQLite
    /// batches take in what is queued while they are applied instead (`store_thread.rs`).
    sort_batches: bool,
    /// Cluster mode: when the next ping of the store is due (monotonic ms); `None` on SQLite.
    next_ping_ms: Option<u64>,
}

impl Server {
    pub fn new(
        config: Config,
        store: Backend,
        secret: crate::jwt::Keys,
        max_conns: usize,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = bind_listener(config.listen)?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => {
                let mut metrics = bind_listener(addr)?;
                poll.registry().register(&mut metrics, METRICS_LISTENER, Interest::READABLE)?;
                Some(metrics)
            }
            None => None,
        };
        let mut signals = Signals::new(STOP_SIGNALS.iter().chain(CAUGHT_SIGNALS).copied())?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let waker = std::sync::Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
        let reader = store.open_reader().map_err(|e| io::Error::other(e.to_string()))?;
        let sort_batches = !matches!(store, Backend::Sqlite(_));
        let read_store = store.open_read_store().map_err(|e| io::Error::other(e.to_string()))?;
        #[cfg(feature = "postgres")]
        let feed = match &store {
            Backend::Postgres(pg) => Some(feed::Feed::spawn(pg.uri().clone(), waker.clone())?),
            Backend::Sqlite(_) => None,
        };
        #[allow(unused_mut)]
        let mut ctx = Ctx::new(config, reader, secret, max_conns, READ_CHUNK);
        #[cfg(feature = "postgres")]
        {
            ctx.feed = feed;
        }
        Ok(Server {
            poll,
            listener: Some(listener),
            metrics_listener,
            signals,
            conns: Slab::with_capacity(1024),
            next_gen: 1,
            ctx,
            spare_fd: std::fs::File::open("/dev/null").ok(),
            accept_paused_until: None,
            accept_more: false,
            out_of_fds_logged: false,
            writer: Some(store),
            store_thread: None,
            read_store,
            read_thread: None,
            waker,
            in_flight: Default::default(),
            sort_batches,
            // PostgreSQL is the backend that batches are sorted for, and that is pinged.
            next_ping_ms: sort_batches.then_some(0),
        })
    }

    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Seeds the `--demo` data, which must wait until the listener is bound (a start that
    /// fails must change nothing) and happen before `run`.
    pub fn seed_demo(&self, now_ms: i64) -> crate::store::Result<()> {
        let Some(writer) = &self.writer else {
            return Err(crate::store::StoreError::Refused(
                "the demo data can only be seeded before the server runs".to_string(),
            ));
        };
        writer.seed_demo(now_ms)?;
        self.ctx.store.forget_all();
        Ok(())
    }

    /// Runs until a signal has stopped the server and every connection is gone.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        if let Some(store) = self.writer.take() {
            let absorb = !self.sort_batches;
            self.store_thread =
                Some(store_thread::StoreThread::spawn(store, self.waker.clone(), absorb)?);
        }
        if let Some(store) = self.read_store.take() {
            self.read_thread =
                Some(store_thread::StoreThread::spawn(store, self.waker.clone(), false)?);
        }
        if let Some(addr) = self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok()) {
            log::info!("metrics served without authentication on http://{addr}/metrics");
        }
        loop {
            // 1–2: stop, or sleep until there is something to do.
            let before = self.ctx.now();
            if let Some(deadline) = self.ctx.shutdown_deadline {
                if self.conns.is_empty() || before.mono_ms >= deadline {
                    break;
                }
            }
            let mut timeout = self.poll_timeout(before);
            // After a burst of request buffers, sleep at most `QUIET_MS`: if nothing came
            // meanwhile, the burst is over and its memory is given back (docs/memory.md).
            let trim_pending = self.ctx.trim_pending();
            if trim_pending {
                let quiet = Duration::from_millis(ctx::QUIET_MS);
                timeout = Some(timeout.map_or(quiet, |t| t.min(quiet)));
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            let now = self.ctx.now();
            if trim_pending
                && events.is_empty()
                && now.mono_ms.saturating_sub(before.mono_ms) >= ctx::QUIET_MS
            {
                self.ctx.give_memory_back_when_quiet();
            }
            self.ctx.refresh_date(now);
            // This turn's log lines leave in one write when the turn ends.
            let _log_batch = crate::logging::batch();
            self.ctx.heartbeat_frame = None;
            // 3: what the last turn left over.
            let again = std::mem::take(&mut self.ctx.again);
            for &key in &again {
                self.on_conn(key, now, |conn, key, ctx, now| {
                    output::on_writable(conn, ctx).then(|| {
                        // Cut short by the budget: no new event will report what is left.
                        requests::on_readable(conn, key, ctx, now, Drain::ToTheEnd)
                    })
                });
            }
            // 4: this turn's events.
            for event in events.iter() {
                match event.token() {
                    LISTENER | METRICS_LISTENER => self.guarded(None, |s| s.accept_all(now)),
                    SIGNALS => self.on_signal(now),
                    // Their messages are taken at step 7.
                    WAKE => {}
                    token => {
                        let writable = event.is_writable() || event.is_error();
                        let closed = event.is_read_closed() || event.is_error();
                        let readable = event.is_readable() || closed;
                        let drain = if closed { Drain::ToTheEnd } else { Drain::UntilShortRead };
                        self.on_conn(ConnKey::of_token(token), now, |conn, key, ctx, now| {
                            let wrote = if writable {
                                output::on_writable(conn, ctx)
                            } else {
                                Verdict::Continue
                            };
                            wrote.then(|| {
                                if readable {
                                    requests::on_readable(conn, key, ctx, now, drain)
                                } else {
                                    Verdict::Continue
                                }
                            })
                        });
                    }
                }
            }
            // 5
            if self.accept_more || self.accept_paused_until.is_some_and(|t| now.mono_ms >= t) {
                self.accept_all(now);
            }
            // 6
            self.guarded(None, |s| s.expire_timers(now));
            // 7
            self.guarded(None, |s| s.commit_batch(now));
            // 8
            self.reap();
        }
        self.finish_shutdown();
        Ok(())
    }

    /// Runs one handler on the live connection `key` (ignoring a stale key) and carries out
    /// its verdict.
    fn on_conn(
        &mut self,
        key: ConnKey,
        now: Now,
        handler: impl FnOnce(&mut Conn, ConnKey, &mut Ctx, Now) -> Verdict,
    ) {
        self.guarded(Some(key), |s| {
            let Some(conn) = s.conns.get_mut(key.index()) else {
                return;
            };
            if conn.gen != key.generation() || conn.doomed.is_some() {
                return;
            }
            let verdict = handler(conn, key, &mut s.ctx, now);
            verdict::carry_out(conn, key, &mut s.ctx, verdict, now);
        });
    }

    /// A last line of defence, not a way of handling errors: a panic (a bug) while serving
    /// one connection closes that connection instead of the process and everyone's streams.
    fn guarded(&mut self, key: Option<ConnKey>, work: impl FnOnce(&mut Server)) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(self)));
        if outcome.is_err() {
            log::error!("BUG: a panic while serving (see above); dropping the connection involved");
            // Writers in neither the queued batch nor the one in flight were never answered,
            // and are closed rather than left waiting.
            let batch = &self.ctx.batch;
            let in_flight = &self.in_flight;
            let orphans: Vec<ConnKey> = self
                .conns
                .iter()
                .filter(|(k, c)| {
                    matches!(c.phase, Phase::Committing)
                        && !batch.iter().any(|w| w.key.index() == *k)
                        && !in_flight.contains(&ConnKey::new(*k, c.gen))
                })
                .map(|(k, c)| ConnKey::new(k, c.gen))
                .collect();
            for orphan in orphans.into_iter().chain(key) {
                if let Some(conn) =
                    self.conns.get_mut(orphan.index()).filter(|c| c.gen == orphan.generation())
                {
                    verdict::close_later(conn, orphan, &mut self.ctx, CloseReason::Internal);
                }
            }
        }
    }

    fn poll_timeout(&self, now: Now) -> Option<Duration> {
        if !self.ctx.again.is_empty()
            || !self.ctx.due.is_empty()
            || !self.ctx.batch.is_empty()
            || !self.ctx.loads_wanted.is_empty()
            || self.accept_more
            || !self.ctx.to_close.is_empty()
        {
            return Some(Duration::ZERO);
        }
        let mut wait = self.ctx.wheel.next_wait_ms(now.mono_ms);
        if let Some(at) = self.accept_paused_until {
            wait =
                Some(wait.map_or(at.saturating_sub(now.mono_ms), |w| {
                    w.min(at.saturating_sub(now.mono_ms))
                }));
        }
        if let Some(deadline) = self.ctx.shutdown_deadline {
            let left = deadline.saturating_sub(now.mono_ms);
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
        if let Some(at) = self.next_ping_ms {
            let left = at.saturating_sub(now.mono_ms);
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
        // Round up so a sleep never ends a hair before the deadline it waits for.
        wait.map(|ms| Duration::from_millis(ms + 1))
    }

    fn accept_all(&mut self, now: Now) {
        self.accept_more = false;
        if self.accept_paused_until.is_some_and(|t| now.mono_ms < t) {
            return;
        }
        self.accept_paused_until = None;
        for metrics_only in [false, true] {
            self.accept_from(metrics_only, now);
        }
    }

    /// Accepts from one listener until `WouldBlock`, at most `ACCEPTS_PER_TURN` (then
    /// `accept_more` brings the loop back for the rest).
    fn accept_from(&mut self, metrics_only: bool, now: Now) {
        for _ in 0..ACCEPTS_PER_TURN {
            let listener =
                if metrics_only { self.metrics_listener.as_ref() } else { self.listener.as_ref() };
            let Some(listener) = listener else {
                return;
            };
            match listener.accept() {
                Ok((sock, _)) => {
                    self.out_of_fds_logged = false;
                    if self.conns.len() >= self.ctx.max_conns {
                        self.ctx.metrics.count_disconnect(CloseReason::Refused);
                        let why = "the server is at its connection limit (--max-conns)";
                        refuse(sock, self.ctx.date(), why);
                        continue;
                    }
                    self.admit(sock, metrics_only, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_out_of_fds(&e) => {
                    self.ctx.metrics.accept_errors += 1;
                    self.on_out_of_fds(now);
                    return;
                }
                Err(e) => {
                    // ECONNABORTED and friends: that one connection is gone, the next may not be.
                    self.ctx.metrics.accept_errors += 1;
                    log::debug!("accept failed: {e}");
                }
            }
        }
        self.accept_more = true;
    }

    fn on_out_of_fds(&mut self, now: Now) {
        if !self.out_of_fds_logged {
            log::warn!(
                "out of file descriptors with {} connections open: refusing new ones with 503 until some close",
                self.conns.len()
            );
            self.out_of_fds_logged = true;
        }
        // Free the spare, accept one connection, tell it 503, take the spare back. Without a
        // spare, wait a little: retrying at once would spin on the same error.
        if self.spare_fd.take().is_some() {
            if let Some(Ok((sock, _))) = self.listener.as_ref().map(|l| l.accept()) {
                self.ctx.metrics.count_disconnect(CloseReason::Refused);
                refuse(sock, self.ctx.date(), "the server is out of file descriptors");
                self.accept_more = true;
            }
            self.spare_fd = std::fs::File::open("/dev/null").ok();
        }
        if self.spare_fd.is_none() || !self.accept_more {
            self.accept_paused_until = Some(now.mono_ms + ACCEPT_PAUSE_MS);
            self.accept_more = false;
        }
    }

    fn admit(&mut self, mut sock: TcpStream, metrics_only: bool, now: Now) {
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let entry = self.conns.vacant_entry();
        let key = ConnKey::new(entry.key(), gen);
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            key.token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot watch a new connection: {e}");
            return;
        }
        let mut conn = Conn::new(sock, gen);
        conn.metrics_only = metrics_only;
        entry.insert(conn);
        self.ctx.conns_open = self.conns.len();
        self.ctx.metrics.connections_accepted += 1;
        self.ctx.wheel.schedule(key, now.mono_ms + FRESH_TIMEOUT_MS);
    }

    fn on_signal(&mut self, now: Now) {
        let mut stop = false;
        for signal in self.signals.pending() {
            match signal {
                s if STOP_SIGNALS.contains(&s) => stop = true,
                SIGHUP => log::info!(
                    "SIGHUP: nothing to reload or reopen (logs go to stderr); carrying on"
                ),
                _ => log::info!(
                    "signal {signal} ignored; SIGTERM, SIGINT or SIGQUIT stops the server"
                ),
            }
        }
        if stop && self.ctx.shutdown_deadline.is_none() {
            self.begin_shutdown(now);
        }
    }

    fn begin_shutdown(&mut self, now: Now) {
        // systemd: the stop has begun (not when it ends), so `systemctl status` says so.
        crate::notify::stopping("stopping: ending every stream");
        log::info!(
            "shutting down: {} connections, {} streams open; ending every stream",
            self.conns.len(),
            self.ctx.registry.total()
        );
        self.ctx.shutdown_deadline = Some(now.mono_ms + SHUTDOWN_GRACE_MS);
        for mut listener in
            [self.listener.take(), self.metrics_listener.take()].into_iter().flatten()
        {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<ConnKey> = self.conns.iter().map(|(k, c)| ConnKey::new(k, c.gen)).collect();
        for key in keys {
            self.on_conn(key, now, |conn, key, ctx, now| match &conn.phase {
                Phase::Stream(stream) => {
                    // Spread the reconnects: a retry drawn from [retry, 3 × retry].
                    let retry = ctx.config.retry_ms;
                    let jitter = retry + ctx.random_below(2 * retry + 1);
                    let mut frame = Vec::with_capacity(32);
                    if stream.chunked {
                        sse::encode_chunk(&mut frame, |o| sse::encode_retry(o, jitter));
                    } else {
                        sse::encode_retry(&mut frame, jitter);
                    }
                    match output::send(conn, ctx, &frame, now) {
                        Ok(()) => Verdict::Finish(CloseReason::Shutdown),
                        Err(reason) => Verdict::Close(reason),
                    }
                }
                // Answered after this turn's commit, then closed (keep-alive is off now).
                Phase::Committing => Verdict::Continue,
                Phase::Request => {
                    // A request that has fully arrived is still answered (without keep-alive);
                    // a half-received one is closed.
                    match requests::read_requests(conn, key, ctx, now, Drain::ToTheEnd) {
                        Verdict::Continue | Verdict::Again
                            if matches!(conn.phase, Phase::Request) =>
                        {
                            Verdict::Close(CloseReason::Shutdown)
                        }
                        other => other,
                    }
                }
                Phase::Closing { .. } => {
                    ctx.wheel.schedule(key, now.mono_ms + SHUTDOWN_GRACE_MS);
                    Verdict::Continue
                }
            });
        }
    }

    fn finish_shutdown(&mut self) {
        // Writes still queued or in flight were never answered; they are committed all the
        // same if the store answers in time (bounded: a few batches, a second each).
        if !self.ctx.batch.is_empty() {
            self.send_batch(self.ctx.now());
        }
        for _ in 0..3 {
            if self.in_flight.is_empty() {
                break;
            }
            let done = self.store_thread.as_ref().and_then(|t| t.wait(Duration::from_secs(1)));
            match done {
                Some((done, writers)) => self.finish_batch(done, &writers, self.ctx.now()),
                None => break,
            }
        }
        let left = self.conns.len();
        if left > 0 {
            log::warn!("shutdown: {left} connections did not close in time; closing them now");
        }
        for (index, conn) in self.conns.iter_mut() {
            let key = ConnKey::new(index, conn.gen);
            verdict::close_later(conn, key, &mut self.ctx, CloseReason::Shutdown);
        }
        self.reap();
        for thread in [self.store_thread.as_mut(), self.read_thread.as_mut()].into_iter().flatten()
        {
            thread.stop();
        }
        #[cfg(feature = "postgres")]
        if let Some(feed) = self.ctx.feed.as_mut() {
            feed.stop();
        }
        log::info!("stopped; every acknowledged write is committed");
    }

    fn expire_timers(&mut self, now: Now) {
        let mut due_index = std::mem::take(&mut self.ctx.due_index);
        due_index.clear();
        self.ctx.wheel.expire_due(now.mono_ms, &mut due_index);
        // The wheel keeps no generations: an index it holds is always the connection's that
        // holds it now (`reap` cancels an index's deadline whenever it frees it). Named all
        // at once, before any handler runs, as the wheel's own keys were; a key left for a
        // later turn whose connection has gone since no longer matches its generation.
        let conns = &self.conns;
        self.ctx.due.extend(
            due_index.drain(..).filter_map(|i| conns.get(i).map(|c| ConnKey::new(i, c.gen))),
        );
        self.ctx.due_index = due_index;
        // Taken one at a time: what this turn leaves stays in `ctx.due`, oldest first.
        for _ in 0..TIMERS_PER_TURN {
            let Some(key) = self.ctx.due.pop_front() else { break };
            // Left from an earlier turn and given a new deadline since (its request was
            // answered, an event reset its heartbeat): the wheel fires it again when due.
            if self.ctx.wheel.deadline(key).is_some() {
                continue;
            }
            self.on_conn(key, now, |conn, key, ctx, now| match &conn.phase {
                Phase::Stream(_) => streams::on_timer(conn, key, ctx, now),
                Phase::Request => requests::on_request_timer(conn, key, ctx, now),
                Phase::Closing { .. } => Verdict::Close(CloseReason::Finished),
                Phase::Committing => Verdict::Continue,
            });
        }
    }

    /// Step 7: the batches that have come back are answered and fanned out; then this
    /// turn's writes are queued for the store thread.
    fn commit_batch(&mut self, now: Now) {
        #[cfg(feature = "postgres")]
        self.on_feed(now);
        for _ in 0..STORE_ANSWERS_PER_TURN {
            let done = self.store_thread.as_ref().and_then(|t| t.take());
            let done = done.or_else(|| self.read_thread.as_ref().and_then(|t| t.take()));
            match done {
                Some(store_thread::Done::Batch(done, writers)) => {
                    self.finish_batch(done, &writers, now)
                }
                Some(store_thread::Done::Loaded(user, load)) => {
                    let asked_at = self.ctx.loading.remove(&user);
                    self.ctx.store.fill(user, load);
                    self.serve_parked(now, ParkedOn::Load(user));
                    // Kept only if nothing may have changed it since it was asked for.
                    let fresh = asked_at == Some(self.ctx.feed_epoch) && self.feed_is_up();
                    self.ctx.store.done_with(user, fresh);
                }
                Some(store_thread::Done::CaughtUp(user, rows)) => {
                    self.on_caught_up(user, rows, now)
                }
                Some(store_thread::Done::Pinged(ok)) => self.ctx.store_ok = ok,
                None => break,
            }
        }
        if let Some(at) = self.next_ping_ms.filter(|at| now.mono_ms >= *at) {
            // Only while idle: a batch in flight says as much about the store.
            if self.in_flight.is_empty() {
                if let Some(thread) = &self.store_thread {
                    thread.ping();
                }
            }
            self.next_ping_ms = Some(at.max(now.mono_ms) + PING_EVERY_MS);
        }
        for (user, after) in std::mem::take(&mut self.ctx.catch_ups_wanted) {
            let asked = self.reads_thread().is_some_and(|t| t.catch_up(user, after));
            if !asked {
                self.on_caught_up(user, Err("the store thread has stopped".to_string()), now);
            }
        }
        for (user, after) in std::mem::take(&mut self.ctx.loads_wanted) {
            let asked = self.reads_thread().is_some_and(|t| t.load(user, after));
            if !asked {
                self.ctx.loading.remove(&user);
                let why = "the store thread has stopped".to_string();
                self.ctx.store.fill(user, Err(crate::store::StoreError::Unavailable(why)));
                self.serve_parked(now, ParkedOn::Load(user));
                self.ctx.store.done_with(user, false);
            }
        }
        if !self.ctx.batch.is_empty() {
            self.send_batch(now);
        }
    }

    /// Where loads and catch-ups go: their own thread on PostgreSQL.
    fn reads_thread(&self) -> Option<&store_thread::StoreThread> {
        self.read_thread.as_ref().or(self.store_thread.as_ref())
    }

    /// Queues this turn's writes on the store thread, which takes them as soon as it is free
    /// (at once if it is idle); until they come back their users' requests wait.
    fn send_batch(&mut self, now: Now) {
        let batch = std::mem::take(&mut self.ctx.batch);
        // What the feed hears from now on may be of commits after these writes'.
        #[cfg(feature = "postgres")]
        if let Some(feed) = self.ctx.feed.as_mut() {
            feed.batch_left(self.in_flight.is_empty());
        }
        for write in &batch {
            *self.ctx.busy_users.entry(write.user()).or_insert(0) += 1;
            self.in_flight.insert(write.key);
        }
        let sent = match &self.store_thread {
            Some(thread) => thread.queue(batch, now.epoch_ms),
            None => Err(batch),
        };
        if let Err(batch) = sent {
            let writers: Vec<_> = batch.iter().map(|w| (w.key, w.user())).collect();
            let why = "the store thread has stopped".to_string();
            let done = commit::not_stored(batch, crate::store::StoreError::Unavailable(why));
            self.finish_batch(done, &writers, now);
        }
    }

    /// A batch is back: its users' views are current again (SQLite: the writer put them in
    /// the shared cache; PostgreSQL: the views the batch returned, or loaded afresh when
    /// another node changed them meanwhile), it is answered, and
    /// the requests parked behind it are served (before the next batch leaves, so that a
    /// user who writes without pause cannot keep their reads waiting).
    fn finish_batch(
        &mut self,
        done: commit::Completion,
        writers: &[(ConnKey, crate::domain::UserId)],
        now: Now,
    ) {
        self.ctx.metrics.count_commit_latency(done.elapsed);
        // A load read on the other connection before this commit may come back after it.
        self.ctx.feed_epoch += 1;
        for (key, user) in writers {
            self.in_flight.remove(key);
            if let std::collections::hash_map::Entry::Occupied(mut busy) =
                self.ctx.busy_users.entry(*user)
            {
                *busy.get_mut() -= 1;
                if *busy.get() == 0 {
                    busy.remove();
                }
            }
            self.ctx.store.forget(*user);
        }
        // Cluster mode: the views the batch left its users in, unless another node changed
        // them meanwhile (or the feed lost track): no reload after every write.
        #[cfg(feature = "postgres")]
        if let Some(feed) = self.ctx.feed.as_mut() {
            let since = feed.batch_back(done.written().pid, !self.in_flight.is_empty());
            if !since.lost {
                self.ctx.store.fill_written(done.written(), |user| since.users.contains(&user));
            }
        }
        commit::complete(&mut self.conns, &mut self.ctx, done, now);
        self.serve_parked(now, ParkedOn::Batch);
    }

    /// Whether cached reads can be trusted across requests: always on SQLite (one writer);
    /// in cluster mode only while the feed is heard.
    fn feed_is_up(&self) -> bool {
        #[cfg(feature = "postgres")]
        if let Some(feed) = &self.ctx.feed {
            return feed.up;
        }
        true
    }

    /// Cluster mode: what the listener heard since the last turn.
    #[cfg(feature = "postgres")]
    fn on_feed(&mut self, now: Now) {
        use crate::pg::{Event, Heard};
        for _ in 0..FEED_MESSAGES_PER_TURN {
            let Some(heard) = self.ctx.feed.as_ref().and_then(|f| f.heard.try_recv().ok()) else {
                return;
            };
            let Some(feed) = self.ctx.feed.as_mut() else { return };
            match heard {
                Heard::Up => {
                    feed.up = true;
                    log::info!("PostgreSQL change feed up: hearing the other nodes");
                }
                Heard::Down(why) => {
                    feed.up = false;
                    feed.lost_track();
                    self.ctx.feed_epoch += 1;
                    self.ctx.store.forget_all();
                    log::warn!("PostgreSQL change feed lost ({why}); reconnecting");
                }
                Heard::CatchUp | Heard::Unreadable => {
                    feed.lost_track();
                    self.ctx.feed_epoch += 1;
                    self.ctx.store.forget_all();
                    let all = feed.catch_up_all();
                    self.ctx.catch_ups_wanted.extend(all);
                }
                Heard::Event { event, from } => {
                    // Our own store's events say what its batches already put in the cache.
                    if !feed.is_own(from) {
                        feed.heard_other(event.user());
                        self.ctx.feed_epoch += 1;
                        self.ctx.store.forget(event.user());
                    }
                    match event {
                        Event::Notification { user, id, data } => {
                            let note = crate::writes::Notification { user, id, data };
                            streams::offer(&mut self.conns, &mut self.ctx, &note, now);
                        }
                        Event::ActiveChanged { user, active: false } => {
                            streams::end_streams_of(
                                &mut self.conns,
                                &mut self.ctx,
                                user,
                                CloseReason::Deactivated,
                                now,
                            );
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// A catch-up is back: its rows are pushed in order, except those already pushed.
    fn on_caught_up(&mut self, user: crate::domain::UserId, rows: CaughtUp, now: Now) {
        #[cfg(feature = "postgres")]
        {
            match rows {
                Ok(rows) => {
                    for (id, data) in rows {
                        let push =
                            self.ctx.feed.as_mut().is_some_and(|f| f.offer_caught_up(user, id));
                        if push {
                            let note = crate::writes::Notification { user, id, data };
                            streams::fan_out(&mut self.conns, &mut self.ctx, &note, now);
                        }
                    }
                }
                // Left for the next gap or reconnect to ask again.
                Err(why) => log::warn!("catch-up of user {user} failed: {why}"),
            }
            let again = self.ctx.feed.as_mut().and_then(|f| f.finish_catch_up(user));
            if let Some(after) = again {
                self.ctx.catch_ups_wanted.push((user, after));
            }
        }
        #[cfg(not(feature = "postgres"))]
        let _ = (user, rows, now);
    }

    /// Serves again the requests that waited for what came back (`on`); those that must
    /// wait still park again, keeping their first deadline. The others stay parked: a
    /// connect burst in cluster mode parks a request per stream, and retrying every one of
    /// them on every load that comes back made each parse its request several times.
    fn serve_parked(&mut self, now: Now, on: ParkedOn) {
        let (parked, others) =
            std::mem::take(&mut self.ctx.parked).into_iter().partition(|(_, _, p)| *p == on);
        self.ctx.parked = others;
        let parked: Vec<(ConnKey, u64, ParkedOn)> = parked;
        for (key, since, _) in parked {
            self.ctx.parked_since = Some(since);
            self.on_conn(key, now, |conn, key, ctx, now| {
                output::on_writable(conn, ctx)
                    .then(|| requests::on_readable(conn, key, ctx, now, Drain::ToTheEnd))
            });
        }
        self.ctx.parked_since = None;
    }

    /// The one place connections die, and the one place anything is unlinked from the
    /// registry and the wheel.
    fn reap(&mut self) {
        for (key, user) in std::mem::take(&mut self.ctx.ended) {
            let open = self.ctx.registry.remove(user, key.index());
            self.untrack_if_last(user, open);
            log::info!("SSE client removed for user {user} ({open} open)");
        }
        let mut to_close = std::mem::take(&mut self.ctx.to_close);
        for key in to_close.drain(..) {
            if self.conns.get(key.index()).is_none_or(|c| c.gen != key.generation()) {
                continue;
            }
            let conn = self.conns.remove(key.index());
            self.ctx.wheel.cancel(key);
            let reason = conn.doomed.unwrap_or(CloseReason::Finished);
            match &conn.phase {
                Phase::Stream(stream) => {
                    let user = stream.user;
                    match reason {
                        CloseReason::ClientGone => log::info!("SSE stream aborted for user {user}"),
                        CloseReason::WriteError => {
                            log::info!("SSE stream aborted for user {user} (write error)")
                        }
                        _ => {}
                    }
                    log::info!("SSE connection closed for user {user}");
                    let open = self.ctx.registry.remove(user, key.index());
                    self.untrack_if_last(user, open);
                    log::info!("SSE client removed for user {user} ({open} open)");
                }
                Phase::Closing { user, was_stream: true, .. } => {
                    log::info!("SSE connection closed for user {user}")
                }
                _ => {}
            }
            // Dropping the socket closes it, which also takes it out of the poll set.
            drop(conn);
        }
        self.ctx.to_close = to_close;
        self.ctx.conns_open = self.conns.len();
        self.ctx.give_memory_back();
    }
}

/// What a catch-up brought back: the rows after the asked id, or why none.
type CaughtUp = Result<Vec<(u64, String)>, String>;

impl Server {
    fn untrack_if_last(&mut self, user: crate::domain::UserId, open: usize) {
        if open == 0 {
            if let Some(feed) = self.ctx.feed.as_mut() {
                feed.untrack(user);
            }
        }
    }
}

fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Best effort: one non-blocking write of a 503, then close.
fn refuse(mut sock: TcpStream, date: &[u8], message: &str) {
    use std::io::Write;
    let body = http::error_body("unavailable", message);
    let mut out = Vec::with_capacity(160 + body.len());
    head::write_head(
        &mut out,
        503,
        date,
        &[("Content-Type", b"application/json")],
        head::Cors::default(),
        head::Framing::Length(body.len(), http::Persistence::Close),
    );
    out.extend_from_slice(body.as_bytes());
    let _ = sock.write(&out);
    let _ = sock.shutdown(std::net::Shutdown::Write);
}

/// Lifts the soft open-files limit to the hard one (each stream is a descriptor) and returns
/// the limit in force.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur.min(1 << 24)
}

/// A listener with a deep backlog: hundreds of clients connecting at once must not be dropped.
fn bind_listener(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    use std::os::fd::AsRawFd;
    let std_listener = std::net::TcpListener::bind(addr)?;
    let fd = std_listener.as_raw_fd();
    // SAFETY: fd is a bound TCP socket we own; listen() on it again only changes the backlog.
    unsafe {
        libc::listen(fd, 4096);
    }
    // Inherited by every accepted socket (Linux copies them from the listener).
    set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, CONN_SNDBUF)?;
    std_listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(std_listener))
}

fn set_int_option(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option reads one c_int from the pointer, which is valid for its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    fn int_option(fd: std::os::fd::RawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`, which is that big.
        let rc = unsafe {
            libc::getsockopt(fd, level, name, (&mut value as *mut libc::c_int).cast(), &mut len)
        };
        assert_eq!(rc, 0, "getsockopt: {}", io::Error::last_os_error());
        value
    }

    /// The accept path sets no socket options: it relies on Linux copying them from the
    /// listener. If a kernel stopped doing that, streams would lose their small send buffer
    /// (the slow-consumer limit counts on it) and notifications would wait for Nagle.
    #[test]
    fn accepted_sockets_inherit_nodelay_and_the_small_send_buffer() {
        let listener = bind_listener("127.0.0.1:0".parse().expect("ok: a constant")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        let deadline = Instant::now() + Duration::from_secs(5);
        let (sock, _) = loop {
            match listener.accept() {
                Ok(pair) => break pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        let fd = sock.as_raw_fd();
        assert_eq!(int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY), 1);
        // Linux reports twice what was asked (its bookkeeping share).
        assert_eq!(int_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUF), 2 * CONN_SNDBUF);
    }
}
