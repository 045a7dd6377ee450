//! The event loop: the only code that polls, accepts and decides when a connection dies.
//!
//! One thread, one `mio::Poll`, every socket registered once (edge-triggered, read and write).
//! Each turn of the loop runs in this order:
//!
//!  1. read the clocks once (monotonic for timers, wall clock for tokens and JSON);
//!  2. poll, sleeping until the timer wheel's next deadline (or not at all when work is left);
//!  3. signals: start the graceful stop;
//!  4. accept until `WouldBlock` (bounded; refused with 503 past `--max-conns`);
//!  5. readable and writable sockets, plus those whose bounded drain was cut short last turn:
//!     requests are parsed and answered, writes go on until `WouldBlock`, reads until a
//!     short read (see `requests::Drain`);
//!  6. timers: request and idle timeouts, heartbeats, token expiries, linger ends;
//!  7. the group commit: every write that arrived this turn becomes durable in one SQLite
//!     transaction, then is answered and fanned out to every stream of its user;
//!  8. reap: connections marked to close are removed from the wheel, the registry and the slab,
//!     and their sockets closed — the one place a connection dies.
//!
//! A handler never frees a connection; it marks it (`close_later`) and the reap does the rest.
//! Events for a token whose connection is gone (or whose slab key was reused: the token
//! carries a generation) are ignored.

use crate::api::{self};
use crate::config::Config;
use crate::conn::{Conn, Phase};
use crate::http::{self};
use crate::metrics::{CloseReason, Metrics};
use crate::registry::Registry;
use crate::sse;
use crate::store::Store;
use crate::timer::TimerWheel;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);

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
/// How long accept waits after running out of descriptors, when even the spare is gone.
const ACCEPT_PAUSE_MS: u64 = 100;

/// Both clocks, read once per turn.
#[derive(Clone, Copy)]
struct Now {
    /// Monotonic milliseconds since the server started: timers.
    mono_ms: u64,
    /// Wall clock, epoch milliseconds: tokens and timestamps.
    epoch_ms: i64,
}

mod commit;
mod output;
mod requests;
mod streams;

use commit::QueuedWrite;
use requests::Reply;

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Signals,
    conns: Slab<Conn>,
    next_gen: u32,
    wheel: TimerWheel,
    registry: Registry,
    store: Store,
    metrics: Metrics,
    config: Config,
    secret: crate::jwt::Key,
    max_conns: usize,
    started: Instant,
    /// Reused read buffer: a request that arrives whole never allocates a buffer of its own.
    scratch_in: Vec<u8>,
    scratch_out: Vec<u8>,
    fanout_keys: Vec<u32>,
    due: Vec<usize>,
    /// Connections whose read or write was cut short by the per-turn budget.
    again: Vec<(usize, u32)>,
    to_close: Vec<usize>,
    writes: Vec<QueuedWrite>,
    /// This turn's heartbeat frame (every heartbeat in a turn carries the same timestamp).
    heartbeat_frame: Option<(i64, Vec<u8>, std::ops::Range<usize>)>,
    /// A descriptor kept free so that, out of descriptors, a connection can still be accepted
    /// and told 503 instead of being left in the backlog.
    spare_fd: Option<std::fs::File>,
    accept_paused_until: Option<u64>,
    accept_more: bool,
    out_of_fds_logged: bool,
    shutdown_deadline: Option<u64>,
    rng: u64,
}
impl Server {
    pub fn new(
        config: Config,
        store: Store,
        secret: Vec<u8>,
        max_conns: usize,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = bind_listener(config.listen)?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let started = Instant::now();
        Ok(Server {
            poll,
            listener: Some(listener),
            signals,
            conns: Slab::with_capacity(1024),
            next_gen: 1,
            wheel: TimerWheel::new(0),
            registry: Registry::new(),
            store,
            metrics: Metrics::default(),
            config,
            secret: crate::jwt::Key::new(&secret),
            max_conns,
            started,
            scratch_in: Vec::with_capacity(READ_CHUNK * 2),
            scratch_out: Vec::with_capacity(64 * 1024),
            fanout_keys: Vec::new(),
            due: Vec::new(),
            again: Vec::new(),
            to_close: Vec::new(),
            writes: Vec::new(),
            heartbeat_frame: None,
            spare_fd: std::fs::File::open("/dev/null").ok(),
            accept_paused_until: None,
            accept_more: false,
            out_of_fds_logged: false,
            shutdown_deadline: None,
            rng: seed_rng(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Runs until a signal has stopped the server and every connection is gone.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = self.now();
            if let Some(deadline) = self.shutdown_deadline {
                if self.conns.is_empty() || now.mono_ms >= deadline {
                    break;
                }
            }
            let timeout = self.poll_timeout(now);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            let now = self.now();
            // This turn's log lines leave in one write when the turn ends.
            let _log_batch = crate::logging::batch();
            self.heartbeat_frame = None;
            let mut again = std::mem::take(&mut self.again);
            for &(key, gen) in &again {
                if self.is_live(key, gen) {
                    self.guarded(Some(key), |s| {
                        s.on_writable(key, now);
                        // Cut short by the budget: no new event will report what is left.
                        s.on_readable(key, now, requests::Drain::ToTheEnd);
                    });
                }
            }
            // Keep what the handlers above queued again for the next turn.
            again.clear();
            again.append(&mut self.again);
            self.again = again;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.guarded(None, |s| s.accept_all(now)),
                    SIGNALS => self.on_signal(now),
                    token => {
                        let (key, gen) = split_token(token);
                        if !self.is_live(key, gen) {
                            continue;
                        }
                        self.guarded(Some(key), |s| {
                            if event.is_writable() || event.is_error() {
                                s.on_writable(key, now);
                            }
                            if event.is_readable() || event.is_read_closed() || event.is_error() {
                                let drain = if event.is_read_closed() || event.is_error() {
                                    requests::Drain::ToTheEnd
                                } else {
                                    requests::Drain::UntilShortRead
                                };
                                s.on_readable(key, now, drain);
                            }
                        });
                    }
                }
            }
            if self.accept_more || self.accept_paused_until.is_some_and(|t| now.mono_ms >= t) {
                self.accept_all(now);
            }
            self.guarded(None, |s| s.expire_timers(now));
            self.guarded(None, |s| s.commit_writes(now));
            self.reap();
        }
        self.finish_shutdown();
        Ok(())
    }

    /// A last line of defence, not a way of handling errors: a panic (a bug) while serving
    /// one connection closes that connection instead of the process and everyone's streams.
    fn guarded(&mut self, key: Option<usize>, work: impl FnOnce(&mut Server)) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(self)));
        if outcome.is_err() {
            log::error!("BUG: a panic while serving (see above); dropping the connection involved");
            // A batch cut short must not stay open, or every later write would fail; its
            // writers were never answered, and are closed rather than left waiting.
            self.store.rollback_if_open();
            let orphans: Vec<usize> = self
                .conns
                .iter()
                .filter(|(k, c)| {
                    matches!(c.phase, Phase::Committing) && !self.writes.iter().any(|w| w.key == *k)
                })
                .map(|(k, _)| k)
                .collect();
            for orphan in orphans.into_iter().chain(key) {
                self.close_later(orphan, CloseReason::Internal);
            }
        }
    }

    fn now(&self) -> Now {
        let epoch_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        Now { mono_ms: self.started.elapsed().as_millis() as u64, epoch_ms }
    }

    fn poll_timeout(&self, now: Now) -> Option<Duration> {
        if !self.again.is_empty()
            || !self.writes.is_empty()
            || self.accept_more
            || !self.to_close.is_empty()
        {
            return Some(Duration::ZERO);
        }
        let mut wait = self.wheel.next_wait_ms(now.mono_ms);
        if let Some(at) = self.accept_paused_until {
            wait =
                Some(wait.map_or(at.saturating_sub(now.mono_ms), |w| {
                    w.min(at.saturating_sub(now.mono_ms))
                }));
        }
        if let Some(deadline) = self.shutdown_deadline {
            let left = deadline.saturating_sub(now.mono_ms);
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
        // Round up so a sleep never ends a hair before the deadline it waits for.
        wait.map(|ms| Duration::from_millis(ms + 1))
    }

    fn is_live(&self, key: usize, gen: u32) -> bool {
        self.conns.get(key).is_some_and(|c| c.gen == gen && c.doomed.is_none())
    }

    fn accept_all(&mut self, now: Now) {
        self.accept_more = false;
        if self.accept_paused_until.is_some_and(|t| now.mono_ms < t) {
            return;
        }
        self.accept_paused_until = None;
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((sock, _)) => {
                    self.out_of_fds_logged = false;
                    if self.conns.len() >= self.max_conns {
                        self.metrics.count_disconnect(CloseReason::Refused);
                        refuse(sock, "the server is at its connection limit (--max-conns)");
                        continue;
                    }
                    self.admit(sock, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_out_of_fds(&e) => {
                    self.metrics.accept_errors += 1;
                    self.on_out_of_fds(now);
                    return;
                }
                Err(e) => {
                    // ECONNABORTED and friends: that one connection is gone, the next may not be.
                    self.metrics.accept_errors += 1;
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
                self.metrics.count_disconnect(CloseReason::Refused);
                refuse(sock, "the server is out of file descriptors");
                self.accept_more = true;
            }
            self.spare_fd = std::fs::File::open("/dev/null").ok();
        }
        if self.spare_fd.is_none() || !self.accept_more {
            self.accept_paused_until = Some(now.mono_ms + ACCEPT_PAUSE_MS);
            self.accept_more = false;
        }
    }

    fn admit(&mut self, mut sock: TcpStream, now: Now) {
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            make_token(key, gen),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot watch a new connection: {e}");
            return;
        }
        entry.insert(Conn::new(sock, gen));
        self.metrics.connections_accepted += 1;
        self.wheel.schedule(key, now.mono_ms + FRESH_TIMEOUT_MS);
    }

    fn on_signal(&mut self, now: Now) {
        let mut stop = false;
        for signal in self.signals.pending() {
            if signal == SIGINT || signal == SIGTERM {
                stop = true;
            }
        }
        if stop && self.shutdown_deadline.is_none() {
            self.begin_shutdown(now);
        }
    }

    fn begin_shutdown(&mut self, now: Now) {
        log::info!(
            "shutting down: {} connections, {} streams open; ending every stream",
            self.conns.len(),
            self.registry.total()
        );
        self.shutdown_deadline = Some(now.mono_ms + SHUTDOWN_GRACE_MS);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            if conn.doomed.is_some() {
                continue;
            }
            let chunked = matches!(&conn.phase, Phase::Stream(s) if s.chunked);
            match conn.phase {
                Phase::Stream(_) => {
                    // Spread the reconnects: a retry drawn from [retry, 3 × retry].
                    let retry = self.config.retry_ms;
                    let jitter = retry + self.random_below(2 * retry + 1);
                    let mut frame = Vec::with_capacity(32);
                    if chunked {
                        sse::encode_chunk(&mut frame, |o| sse::encode_retry(o, jitter));
                    } else {
                        sse::encode_retry(&mut frame, jitter);
                    }
                    self.send(key, &frame, now);
                    self.end_stream(key, CloseReason::Shutdown, now);
                }
                // Answered after this turn's commit, then closed (keep-alive is off now).
                Phase::Committing => {}
                Phase::Request => {
                    // A request that has fully arrived is still answered (without keep-alive);
                    // a half-received one is closed.
                    self.read_requests(key, now, requests::Drain::ToTheEnd);
                    if self.conns.get(key).is_some_and(|c| matches!(c.phase, Phase::Request)) {
                        self.close_later(key, CloseReason::Shutdown);
                    }
                }
                Phase::Closing { .. } => {
                    self.wheel.schedule(key, now.mono_ms + SHUTDOWN_GRACE_MS);
                }
            }
        }
    }

    fn finish_shutdown(&mut self) {
        let left = self.conns.len();
        if left > 0 {
            log::warn!("shutdown: {left} connections did not close in time; closing them now");
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close_later(key, CloseReason::Shutdown);
        }
        self.reap();
        log::info!("stopped; every acknowledged write is committed");
    }

    fn random_below(&mut self, bound: u64) -> u64 {
        // xorshift64*: plenty for spreading reconnects, not for secrets.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        if bound == 0 {
            0
        } else {
            x % bound
        }
    }

    fn expire_timers(&mut self, now: Now) {
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        self.wheel.expire_due(now.mono_ms, &mut due);
        for &key in &due {
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            if conn.doomed.is_some() {
                continue;
            }
            match &conn.phase {
                Phase::Stream(_) => self.on_stream_timer(key, now),
                Phase::Request => {
                    if conn.inbuf.is_some() {
                        let response = api::Response::error(
                            http::TIMEOUT.status,
                            http::TIMEOUT.code,
                            http::TIMEOUT.message,
                        );
                        let reply =
                            Reply { keep_alive: false, route: "invalid", ..Reply::default() };
                        self.respond(key, &response, &reply, now);
                        if let Some(c) = self.conns.get_mut(key) {
                            c.inbuf = None;
                        }
                    } else {
                        self.close_later(key, CloseReason::Timeout);
                    }
                }
                Phase::Closing { .. } => self.close_later(key, CloseReason::Finished),
                Phase::Committing => {}
            }
        }
        self.due = due;
    }

    /// Stops reading requests; flushes, sends FIN, and waits briefly for the client's EOF.
    fn begin_close(&mut self, key: usize, reason: CloseReason, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.doomed.is_some() {
            return;
        }
        let user = match &conn.phase {
            Phase::Closing { user, .. } => *user,
            _ => None,
        };
        let fin_sent = conn.unsent.is_none();
        if fin_sent {
            conn.send_fin();
        }
        let finished = fin_sent && conn.peer_closed;
        conn.phase = Phase::Closing { user, fin_sent };
        conn.inbuf = None;
        self.metrics.count_disconnect(reason);
        if finished {
            // Both directions are done: no reason to linger.
            self.close_later(key, reason);
            return;
        }
        // At shutdown a client still reading may use all the time that is left.
        let deadline = self.shutdown_deadline.unwrap_or(now.mono_ms + LINGER_MS);
        self.wheel.schedule(key, deadline);
    }

    /// Marks a connection to be removed at the end of this turn.
    fn close_later(&mut self, key: usize, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.doomed.is_some() {
            return;
        }
        // A connection already in Closing was counted when it began to close.
        if !matches!(conn.phase, Phase::Closing { .. }) {
            self.metrics.count_disconnect(reason);
        }
        conn.doomed = Some(reason);
        self.to_close.push(key);
    }

    /// The one place connections die.
    fn reap(&mut self) {
        let mut to_close = std::mem::take(&mut self.to_close);
        for key in to_close.drain(..) {
            let Some(conn) = self.conns.try_remove(key) else {
                continue;
            };
            self.wheel.cancel(key);
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
                    let open = self.registry.remove(user, key);
                    log::info!("SSE client removed for user {user} ({open} open)");
                }
                Phase::Closing { user: Some(user), .. } => {
                    log::info!("SSE connection closed for user {user}")
                }
                _ => {}
            }
            // Dropping the socket closes it, which also takes it out of the poll set.
            drop(conn);
        }
        self.to_close = to_close;
    }
}

fn make_token(key: usize, gen: u32) -> Token {
    Token(((gen as usize) << 32) | (key & 0xFFFF_FFFF))
}

fn split_token(token: Token) -> (usize, u32) {
    (token.0 & 0xFFFF_FFFF, (token.0 >> 32) as u32)
}

fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Best effort: one non-blocking write of a 503, then close.
fn refuse(mut sock: TcpStream, message: &str) {
    use std::io::Write;
    let body = http::error_body("unavailable", message);
    let mut out = Vec::with_capacity(160 + body.len());
    http::start_head(&mut out, 503);
    http::header(&mut out, "Content-Type", b"application/json");
    http::end_head(&mut out, 503, body.len(), http::Persistence::Close);
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

fn seed_rng() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let from_os =
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_ok();
    let seed = u64::from_le_bytes(bytes);
    if from_os && seed != 0 {
        seed
    } else {
        // Only the spread of reconnect delays depends on this; the clock is good enough.
        (SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)) | 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

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
