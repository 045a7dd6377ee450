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
//!     requests are parsed and answered, reads and writes go on until `WouldBlock`;
//!  6. timers: request and idle timeouts, heartbeats, token expiries, linger ends;
//!  7. the group commit: every write that arrived this turn becomes durable in one SQLite
//!     transaction, then is answered and fanned out to every stream of its user;
//!  8. reap: connections marked to close are removed from the wheel, the registry and the slab,
//!     and their sockets closed — the one place a connection dies.
//!
//! A handler never frees a connection; it marks it (`close_later`) and the reap does the rest.
//! Events for a token whose connection is gone (or whose slab key was reused: the token
//! carries a generation) are ignored.

use crate::api::{self, Ctx, Outcome, Resume, StreamStart, WriteOp};
use crate::config::Config;
use crate::conn::{Conn, InBuf, Phase, ReadOutcome, StreamState, Unsent, WriteOutcome};
use crate::domain::UserId;
use crate::http::{self, Parse, Request};
use crate::jwt;
use crate::metrics::{CloseReason, Gauges, Metrics};
use crate::registry::Registry;
use crate::sse;
use crate::store::Store;
use crate::timer::TimerWheel;
use crate::writes::{self, Notification};
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
/// The kernel send buffer of a stream (Linux doubles it for bookkeeping).
const STREAM_SNDBUF: usize = 32 * 1024;
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

/// A write waiting for this turn's commit, and how to answer it.
struct QueuedWrite {
    key: usize,
    gen: u32,
    op: WriteOp,
    reply: Reply,
}

/// What an answer's head depends on besides the answer itself.
#[derive(Clone, Default)]
struct Reply {
    keep_alive: bool,
    /// The request's `Origin`, when CORS allows it.
    allowed_origin: Option<Vec<u8>>,
    /// The token came in the query string: nothing may cache the answer.
    token_in_query: bool,
    route: &'static str,
}

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
    secret: Vec<u8>,
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
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
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
            secret,
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
            self.heartbeat_frame = None;
            let again = std::mem::take(&mut self.again);
            for (key, gen) in &again {
                if self.is_live(*key, *gen) {
                    self.on_writable(*key, now);
                    self.on_readable(*key, now);
                }
            }
            self.again = again;
            self.again.clear();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(now),
                    SIGNALS => self.on_signal(now),
                    token => {
                        let (key, gen) = split_token(token);
                        if !self.is_live(key, gen) {
                            continue;
                        }
                        if event.is_writable() || event.is_error() {
                            self.on_writable(key, now);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(key, now);
                        }
                    }
                }
            }
            if self.accept_more || self.accept_paused_until.is_some_and(|t| now.mono_ms >= t) {
                self.accept_all(now);
            }
            self.expire_timers(now);
            self.commit_writes(now);
            self.reap();
        }
        self.finish_shutdown();
        Ok(())
    }

    fn now(&self) -> Now {
        let epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Now {
            mono_ms: self.started.elapsed().as_millis() as u64,
            epoch_ms,
        }
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
            wait = Some(wait.map_or(at.saturating_sub(now.mono_ms), |w| {
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
        self.conns
            .get(key)
            .is_some_and(|c| c.gen == gen && c.doomed.is_none())
    }

    // ---- accepting ---------------------------------------------------------------------------

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
        let _ = sock.set_nodelay(true);
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

    // ---- signals and shutdown ----------------------------------------------------------------

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
                Phase::Request => self.close_later(key, CloseReason::Shutdown),
                Phase::Closing { .. } => {
                    let deadline = now.mono_ms + LINGER_MS.min(SHUTDOWN_GRACE_MS / 2);
                    self.wheel.schedule(key, deadline);
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

    // ---- reading -----------------------------------------------------------------------------

    fn on_readable(&mut self, key: usize, now: Now) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if conn.doomed.is_some() {
            return;
        }
        match conn.phase {
            Phase::Request => self.read_requests(key, now),
            // Reading resumes after the commit answers (see `commit_writes`).
            Phase::Committing => {}
            Phase::Stream(_) | Phase::Closing { .. } => self.read_and_discard(key, now),
        }
    }

    /// Streams and closing connections expect nothing more from the client but its EOF.
    fn read_and_discard(&mut self, key: usize, _now: Now) {
        let mut buf = std::mem::take(&mut self.scratch_in);
        let mut budget = IO_BUDGET_PER_TURN;
        let outcome = loop {
            let Some(conn) = self.conns.get_mut(key) else {
                break None;
            };
            buf.clear();
            match conn.read_into(&mut buf, READ_CHUNK) {
                ReadOutcome::Data(n) => {
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        self.again.push((key, conn.gen));
                        break None;
                    }
                }
                ReadOutcome::WouldBlock => break None,
                ReadOutcome::Eof | ReadOutcome::Gone => break Some(()),
            }
        };
        buf.clear();
        self.scratch_in = buf;
        if outcome.is_some() {
            let reason = match self.conns.get(key).map(|c| &c.phase) {
                Some(Phase::Closing { .. }) => CloseReason::Finished,
                _ => CloseReason::ClientGone,
            };
            self.close_later(key, reason);
        }
    }

    fn read_requests(&mut self, key: usize, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let (mut buf, mut started_ms) = match conn.inbuf.take() {
            Some(inbuf) => (inbuf.bytes, Some(inbuf.started_ms)),
            None => {
                let mut scratch = std::mem::take(&mut self.scratch_in);
                scratch.clear();
                (scratch, None)
            }
        };
        // Read what is there, but never more than one largest-possible request beyond what
        // is already buffered: the parser decides after that.
        let limit = http::MAX_HEAD_BYTES + http::MAX_BODY_BYTES + 1;
        let mut eof = false;
        let mut budget = IO_BUDGET_PER_TURN + limit;
        let mut cut_short = false;
        while buf.len() < limit {
            if budget == 0 {
                cut_short = true;
                break;
            }
            let want = READ_CHUNK.min(limit - buf.len());
            match conn.read_into(&mut buf, want) {
                ReadOutcome::Data(n) => {
                    budget = budget.saturating_sub(n);
                    started_ms.get_or_insert(now.mono_ms);
                }
                ReadOutcome::WouldBlock => break,
                ReadOutcome::Eof => {
                    eof = true;
                    break;
                }
                ReadOutcome::Gone => {
                    eof = true;
                    break;
                }
            }
        }
        if buf.len() >= limit {
            cut_short = true;
        }
        let consumed = self.serve_buffered(key, &buf, now);
        let rest = &buf[consumed..];
        let wants_more = self
            .conns
            .get(key)
            .is_some_and(|c| matches!(c.phase, Phase::Request | Phase::Committing));
        if eof {
            // The client is gone (or half-closed): answers already written still go out.
            if wants_more
                && self
                    .conns
                    .get(key)
                    .is_some_and(|c| c.doomed.is_none() && c.unsent.is_none())
            {
                self.close_later(key, CloseReason::ClientGone);
            } else if wants_more {
                self.begin_close(key, CloseReason::ClientGone, now);
            }
        } else if wants_more && !rest.is_empty() {
            let started = if consumed == 0 {
                started_ms.unwrap_or(now.mono_ms)
            } else {
                now.mono_ms
            };
            if let Some(conn) = self.conns.get_mut(key) {
                conn.inbuf = Some(Box::new(InBuf {
                    bytes: rest.to_vec(),
                    started_ms: started,
                }));
                if matches!(conn.phase, Phase::Request) {
                    self.wheel.schedule(key, started + REQUEST_TIMEOUT_MS);
                }
            }
        }
        if cut_short && wants_more {
            if let Some(conn) = self.conns.get(key) {
                self.again.push((key, conn.gen));
            }
        }
        // Give the scratch back (keeping its capacity, not the conn's buffer's).
        if buf.capacity() >= self.scratch_in.capacity()
            && buf.capacity() <= 2 * (limit + READ_CHUNK)
        {
            buf.clear();
            self.scratch_in = buf;
        }
    }

    /// Parses and serves every complete request at the front of `buf`; returns the bytes used.
    fn serve_buffered(&mut self, key: usize, buf: &[u8], now: Now) -> usize {
        let mut used = 0;
        while used < buf.len() {
            match self.conns.get(key) {
                Some(c) if c.doomed.is_none() && matches!(c.phase, Phase::Request) => {}
                _ => break,
            }
            match http::parse_request(&buf[used..]) {
                Parse::Partial => break,
                Parse::Reject(rejection) => {
                    let response =
                        api::Response::error(rejection.status, rejection.code, rejection.message);
                    let reply = Reply {
                        keep_alive: false,
                        route: "invalid",
                        ..Reply::default()
                    };
                    self.respond(key, &response, &reply, now);
                    return buf.len();
                }
                Parse::Complete(request, n) => {
                    used += n;
                    self.serve(key, &request, now);
                }
            }
        }
        used
    }

    fn serve(&mut self, key: usize, request: &Request<'_>, now: Now) {
        let shutting_down = self.shutdown_deadline.is_some();
        let route = api::Route::of(request.path);
        let allowed_origin = match request.origin {
            Some(origin) if self.config.cors.allows(origin) => Some(origin.to_vec()),
            _ => None,
        };
        let reply = Reply {
            keep_alive: request.keep_alive && !shutting_down,
            allowed_origin,
            token_in_query: request.authorization.is_none()
                && request.query.contains("access_token"),
            route: route.label(),
        };
        let outcome = {
            let gauges = self.gauges();
            let metrics = &self.metrics;
            let render = move || metrics.render(&gauges);
            let ctx = Ctx {
                store: &self.store,
                registry: &self.registry,
                config: &self.config,
                secret: &self.secret,
                now_ms: now.epoch_ms,
                render_metrics: &render,
            };
            api::handle(request, &ctx)
        };
        match outcome {
            Outcome::Respond(response) => self.respond(key, &response, &reply, now),
            Outcome::Preflight => self.respond_preflight(key, &reply, now),
            Outcome::Stream(start) => self.start_stream(key, request, start, &reply, now),
            Outcome::Write(op) => {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.phase = Phase::Committing;
                    self.wheel.cancel(key);
                    self.writes.push(QueuedWrite {
                        key,
                        gen: conn.gen,
                        op,
                        reply,
                    });
                }
            }
        }
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            connections_open: self.conns.len(),
            streams_open: self.registry.total(),
            users_with_streams: self.registry.users(),
            max_conns: self.max_conns,
        }
    }

    // ---- answering ---------------------------------------------------------------------------

    fn write_cors(&self, out: &mut Vec<u8>, reply: &Reply) {
        if let Some(origin) = &reply.allowed_origin {
            http::header(out, "Access-Control-Allow-Origin", origin);
            http::header(out, "Vary", b"Origin");
        }
    }

    fn respond(&mut self, key: usize, response: &api::Response, reply: &Reply, now: Now) {
        self.metrics.count_request(reply.route, response.status);
        let mut out = std::mem::take(&mut self.scratch_out);
        out.clear();
        http::start_head(&mut out, response.status);
        if !response.content_type.is_empty() {
            http::header(&mut out, "Content-Type", response.content_type.as_bytes());
        }
        if let Some(challenge) = response.www_authenticate {
            http::header(&mut out, "WWW-Authenticate", challenge.as_bytes());
        }
        if let Some(allow) = response.allow {
            http::header(&mut out, "Allow", allow.as_bytes());
        }
        if reply.token_in_query {
            http::header(&mut out, "Cache-Control", b"no-store");
        }
        self.write_cors(&mut out, reply);
        http::end_head(
            &mut out,
            response.status,
            response.body.len(),
            reply.keep_alive,
        );
        out.extend_from_slice(response.body.as_bytes());
        self.send(key, &out, now);
        self.scratch_out = out;
        self.after_answer(key, reply.keep_alive, now);
    }

    fn respond_preflight(&mut self, key: usize, reply: &Reply, now: Now) {
        self.metrics.count_request("options", 204);
        let mut out = std::mem::take(&mut self.scratch_out);
        out.clear();
        http::start_head(&mut out, 204);
        if reply.allowed_origin.is_some() {
            self.write_cors(&mut out, reply);
            http::header(
                &mut out,
                "Access-Control-Allow-Methods",
                b"GET, POST, PUT, OPTIONS",
            );
            http::header(
                &mut out,
                "Access-Control-Allow-Headers",
                b"Authorization, Content-Type, Last-Event-ID",
            );
            http::header(&mut out, "Access-Control-Max-Age", b"600");
        }
        http::end_head(&mut out, 204, 0, reply.keep_alive);
        self.send(key, &out, now);
        self.scratch_out = out;
        self.after_answer(key, reply.keep_alive, now);
    }

    /// After a whole answer: wait for the next request, or close.
    fn after_answer(&mut self, key: usize, keep_alive: bool, now: Now) {
        if !keep_alive {
            self.begin_close(key, CloseReason::Finished, now);
            return;
        }
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.doomed.is_none() {
                conn.phase = Phase::Request;
                conn.served = true;
                self.wheel
                    .schedule(key, now.mono_ms + KEEP_ALIVE_TIMEOUT_MS);
            }
        }
    }

    // ---- streams -----------------------------------------------------------------------------

    fn start_stream(
        &mut self,
        key: usize,
        request: &Request<'_>,
        start: StreamStart,
        reply: &Reply,
        now: Now,
    ) {
        let chunked = !request.http10;
        let mut out = std::mem::take(&mut self.scratch_out);
        out.clear();
        http::start_head(&mut out, 200);
        http::header(&mut out, "Content-Type", b"text/event-stream");
        let cache = if reply.token_in_query {
            &b"no-cache, no-store"[..]
        } else {
            b"no-cache"
        };
        http::header(&mut out, "Cache-Control", cache);
        http::header(&mut out, "X-Accel-Buffering", b"no");
        self.write_cors(&mut out, reply);
        if chunked {
            http::header(&mut out, "Transfer-Encoding", b"chunked");
        }
        // The stream is the last thing on this connection, whatever it ends by.
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        let opened = self.encode_stream_opening(&mut out, &start, chunked, now);
        let events = match opened {
            Ok(events) => events,
            Err(e) => {
                self.scratch_out = out;
                let reply = Reply {
                    keep_alive: false,
                    ..reply.clone()
                };
                self.respond(key, &api::storage_error(e), &reply, now);
                return;
            }
        };
        let Some(conn) = self.conns.get_mut(key) else {
            self.scratch_out = out;
            return;
        };
        let lifetime_ms = (start.expires_at.saturating_add(jwt::LEEWAY_SECS))
            .saturating_mul(1000)
            .saturating_sub(now.epoch_ms)
            .max(0) as u64;
        let stream = StreamState {
            user: start.user,
            expires_at_ms: now.mono_ms.saturating_add(lifetime_ms),
            next_heartbeat_ms: now.mono_ms + self.config.heartbeat_secs * 1000,
            chunked,
        };
        let deadline = stream.next_heartbeat_ms.min(stream.expires_at_ms);
        conn.phase = Phase::Stream(stream);
        conn.inbuf = None; // anything after the stream request is ignored
        conn.limit_send_buffer(STREAM_SNDBUF);
        let open = self.registry.add(start.user, key);
        self.wheel.schedule(key, deadline);
        self.metrics.streams_started += 1;
        self.metrics.count_request(reply.route, 200);
        self.metrics.events_connected += 1;
        self.metrics.events_notification += events;
        log::info!(
            "SSE client connected for user {} ({} open)",
            start.user,
            open
        );
        self.send(key, &out, now);
        self.scratch_out = out;
    }

    /// `retry:`, `connected`, then the missed notifications or the current status.
    fn encode_stream_opening(
        &mut self,
        out: &mut Vec<u8>,
        start: &StreamStart,
        chunked: bool,
        now: Now,
    ) -> Result<u64, crate::store::StoreError> {
        let retry_ms = self.config.retry_ms;
        let mut notifications = 0;
        let frame = |out: &mut Vec<u8>, encode: &mut dyn FnMut(&mut Vec<u8>)| {
            if chunked {
                sse::encode_chunk(out, |o| encode(o));
            } else {
                encode(out);
            }
        };
        frame(out, &mut |o| {
            sse::encode_retry(o, retry_ms);
            sse::encode_event(
                o,
                None,
                "connected",
                r#"{"message":"Connected to Spending notifications"}"#,
            );
        });
        match start.resume {
            Resume::After(last) => {
                self.store
                    .notifications_after(start.user, last, |id, data| {
                        notifications += 1;
                        frame(out, &mut |o| {
                            sse::encode_event(o, Some(id), "notification", data)
                        });
                    })?;
            }
            Resume::Snapshot => {
                if let Some(status) = self.store.active_status(start.user, now.epoch_ms)? {
                    let id = self.store.last_notification_id(start.user)?;
                    let mut data = String::with_capacity(256);
                    status.write_notification_json(start.user, now.epoch_ms, &mut data);
                    notifications += 1;
                    frame(out, &mut |o| {
                        sse::encode_event(o, Some(id), "notification", &data)
                    });
                }
            }
        }
        Ok(notifications)
    }

    fn on_stream_timer(&mut self, key: usize, now: Now) {
        let Some(Conn {
            phase: Phase::Stream(stream),
            ..
        }) = self.conns.get(key)
        else {
            return;
        };
        if now.mono_ms >= stream.expires_at_ms {
            self.end_stream(key, CloseReason::Expired, now);
            return;
        }
        if now.mono_ms >= stream.next_heartbeat_ms {
            let chunked = stream.chunked;
            let epoch_ms = now.epoch_ms;
            if !matches!(&self.heartbeat_frame, Some((at, ..)) if *at == epoch_ms) {
                let mut frame = Vec::with_capacity(64);
                let inner = sse::encode_chunk(&mut frame, |o| sse::encode_heartbeat(o, epoch_ms));
                self.heartbeat_frame = Some((epoch_ms, frame, inner));
            }
            let Some((at, frame, inner)) = self.heartbeat_frame.take() else {
                return;
            };
            let bytes = if chunked {
                &frame[..]
            } else {
                &frame[inner.clone()]
            };
            self.metrics.events_heartbeat += 1;
            self.send(key, bytes, now);
            self.heartbeat_frame = Some((at, frame, inner));
        }
        let period = self.config.heartbeat_secs * 1000;
        let Some(Conn {
            phase: Phase::Stream(stream),
            doomed: None,
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        while stream.next_heartbeat_ms <= now.mono_ms {
            stream.next_heartbeat_ms += period;
        }
        let deadline = stream.next_heartbeat_ms.min(stream.expires_at_ms);
        self.wheel.schedule(key, deadline);
        self.check_backlog(key, now);
    }

    /// Ends a stream properly: the last chunk (so `curl -N` exits 0), then FIN.
    fn end_stream(&mut self, key: usize, reason: CloseReason, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Phase::Stream(stream) = &conn.phase else {
            return;
        };
        let (user, chunked) = (stream.user, stream.chunked);
        conn.phase = Phase::Closing {
            user: Some(user),
            fin_sent: false,
        };
        let why = match reason {
            CloseReason::Expired => "token expired",
            CloseReason::Deactivated => "user deactivated",
            CloseReason::Shutdown => "server shutting down",
            _ => reason.label(),
        };
        log::info!("SSE stream ended for user {user}: {why}");
        let open = self.registry.remove(user, key);
        log::info!("SSE client removed for user {user} ({open} open)");
        if chunked {
            self.send(key, sse::LAST_CHUNK, now);
        }
        self.begin_close(key, reason, now);
    }

    /// Ends every open stream of `user` (deactivation).
    fn end_streams_of(&mut self, user: UserId, reason: CloseReason, now: Now) {
        let keys: Vec<u32> = self.registry.streams_of(user).to_vec();
        for key in keys {
            self.end_stream(key as usize, reason, now);
        }
    }

    /// Writes one notification to every open stream of its user, from one encoding.
    fn fan_out(&mut self, note: &Notification, now: Now) {
        if self.registry.count(note.user) == 0 {
            return;
        }
        let mut frame = std::mem::take(&mut self.scratch_out);
        frame.clear();
        let inner = sse::encode_chunk(&mut frame, |o| {
            sse::encode_event(o, Some(note.id), "notification", &note.data)
        });
        let mut keys = std::mem::take(&mut self.fanout_keys);
        keys.clear();
        keys.extend_from_slice(self.registry.streams_of(note.user));
        for &key in &keys {
            let key = key as usize;
            let chunked = matches!(self.conns.get(key).map(|c| &c.phase), Some(Phase::Stream(s)) if s.chunked);
            let bytes = if chunked {
                &frame[..]
            } else {
                &frame[inner.clone()]
            };
            self.metrics.events_notification += 1;
            self.send(key, bytes, now);
        }
        self.fanout_keys = keys;
        self.scratch_out = frame;
    }

    // ---- writing -----------------------------------------------------------------------------

    /// Writes now what the kernel takes; keeps the rest; cuts a stream that falls too far
    /// behind.
    fn send(&mut self, key: usize, bytes: &[u8], now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.doomed.is_some() || bytes.is_empty() {
            return;
        }
        if let Some(unsent) = conn.unsent.as_mut() {
            // Order matters: behind a backlog, new bytes queue up.
            unsent.bytes.extend_from_slice(bytes);
            self.check_backlog(key, now);
            return;
        }
        match conn.write_now(bytes) {
            WriteOutcome::Done => self.metrics.bytes_written += bytes.len() as u64,
            WriteOutcome::Partial(n) => {
                self.metrics.bytes_written += n as u64;
                conn.unsent = Some(Box::new(Unsent {
                    bytes: bytes[n..].to_vec(),
                    from: 0,
                    over_soft_since: None,
                }));
                self.check_backlog(key, now);
            }
            WriteOutcome::Failed => self.close_later(key, CloseReason::WriteError),
        }
    }

    fn on_writable(&mut self, key: usize, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.doomed.is_some() {
            return;
        }
        if let Some(mut unsent) = conn.unsent.take() {
            let end = unsent.bytes.len().min(unsent.from + IO_BUDGET_PER_TURN);
            match conn.write_now(&unsent.bytes[unsent.from..end]) {
                WriteOutcome::Done => {
                    self.metrics.bytes_written += (end - unsent.from) as u64;
                    unsent.from = end;
                    if !unsent.is_empty() {
                        self.again.push((key, conn.gen)); // budget spent, not blocked
                        conn.unsent = Some(unsent);
                        return;
                    }
                }
                WriteOutcome::Partial(n) => {
                    self.metrics.bytes_written += n as u64;
                    unsent.from += n;
                    if unsent.from > unsent.bytes.len() / 2 {
                        unsent.bytes.drain(..unsent.from);
                        unsent.from = 0;
                    }
                    conn.unsent = Some(unsent);
                    return;
                }
                WriteOutcome::Failed => {
                    self.close_later(key, CloseReason::WriteError);
                    return;
                }
            }
        }
        // Everything is out: a closing connection can now say FIN.
        if let Phase::Closing { fin_sent, .. } = &mut conn.phase {
            if !*fin_sent {
                *fin_sent = true;
                conn.send_fin();
                let _ = now;
            }
        }
    }

    /// Applies the slow-consumer policy to a stream with a backlog.
    fn check_backlog(&mut self, key: usize, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.unsent.is_none() {
            return;
        }
        let kernel = conn.kernel_queued();
        let Some(unsent) = conn.unsent.as_mut() else {
            return;
        };
        let total = unsent.len() + kernel;
        let user = match &conn.phase {
            Phase::Stream(s) => Some(s.user),
            Phase::Closing { user, .. } => *user,
            _ => None,
        };
        let over_hard = total > HARD_UNSENT_BYTES;
        let over_soft_too_long = if total > SOFT_UNSENT_BYTES {
            let since = *unsent.over_soft_since.get_or_insert(now.mono_ms);
            now.mono_ms.saturating_sub(since) >= SOFT_UNSENT_MS
        } else {
            unsent.over_soft_since = None;
            false
        };
        if over_hard || over_soft_too_long {
            match user {
                Some(user) => {
                    log::warn!("SSE slow consumer dropped for user {user} ({total} bytes unsent)")
                }
                None => log::warn!("slow client dropped ({total} bytes unsent)"),
            }
            self.close_later(key, CloseReason::SlowConsumer);
        }
    }

    // ---- timers ------------------------------------------------------------------------------

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
                        let reply = Reply {
                            keep_alive: false,
                            route: "invalid",
                            ..Reply::default()
                        };
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

    // ---- the group commit --------------------------------------------------------------------

    fn commit_writes(&mut self, now: Now) {
        if self.writes.is_empty() {
            return;
        }
        let writes = std::mem::take(&mut self.writes);
        let results = match self.apply_batch(&writes, now) {
            Ok(results) => {
                self.metrics.count_commit(writes.len());
                results.into_iter().map(Some).collect()
            }
            Err(e) => {
                self.metrics.commit_failures += 1;
                log::error!("commit of {} writes failed, none stored: {e}", writes.len());
                writes.iter().map(|_| None).collect::<Vec<_>>()
            }
        };
        for (write, applied) in writes.into_iter().zip(results) {
            let applied = match applied {
                Some(applied) => applied,
                None => writes::Applied {
                    response: api::Response::error(
                        500,
                        "storage_error",
                        "the write could not be committed; nothing was stored",
                    ),
                    notification: None,
                    deactivated: None,
                    transaction_recorded: false,
                },
            };
            if applied.transaction_recorded {
                self.metrics.transactions_recorded += 1;
            }
            if self
                .conns
                .get(write.key)
                .is_some_and(|c| c.gen == write.gen && c.doomed.is_none())
            {
                let mut reply = write.reply.clone();
                reply.keep_alive &= self.shutdown_deadline.is_none();
                self.respond(write.key, &applied.response, &reply, now);
                // Bytes that came behind the write (pipelining) are served now, and the socket
                // is read again: its readiness may have been reported while we were not reading.
                if let Some(conn) = self.conns.get_mut(write.key) {
                    if matches!(conn.phase, Phase::Request) {
                        if let Some(inbuf) = conn.inbuf.take() {
                            let consumed = self.serve_buffered(write.key, &inbuf.bytes, now);
                            if let Some(conn) = self.conns.get_mut(write.key) {
                                if consumed < inbuf.bytes.len()
                                    && matches!(conn.phase, Phase::Request | Phase::Committing)
                                {
                                    conn.inbuf = Some(Box::new(InBuf {
                                        bytes: inbuf.bytes[consumed..].to_vec(),
                                        started_ms: now.mono_ms,
                                    }));
                                }
                            }
                        }
                    }
                    if let Some(conn) = self.conns.get(write.key) {
                        self.again.push((write.key, conn.gen));
                    }
                }
            }
            if let Some(note) = &applied.notification {
                self.fan_out(note, now);
            }
            if let Some(user) = applied.deactivated {
                self.end_streams_of(user, CloseReason::Deactivated, now);
            }
        }
    }

    fn apply_batch(
        &mut self,
        writes: &[QueuedWrite],
        now: Now,
    ) -> Result<Vec<writes::Applied>, crate::store::StoreError> {
        self.store.begin()?;
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            match writes::apply(&self.store, &write.op, now.epoch_ms) {
                Ok(applied) => results.push(applied),
                Err(e) => {
                    self.store.rollback();
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.store.commit() {
            self.store.rollback();
            return Err(e);
        }
        Ok(results)
    }

    // ---- closing -----------------------------------------------------------------------------

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
        conn.phase = Phase::Closing { user, fin_sent };
        conn.inbuf = None;
        self.metrics.count_disconnect(reason);
        let linger = if self.shutdown_deadline.is_some() {
            LINGER_MS / 2
        } else {
            LINGER_MS
        };
        self.wheel.schedule(key, now.mono_ms + linger);
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
                Phase::Closing {
                    user: Some(user), ..
                } => log::info!("SSE connection closed for user {user}"),
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
    http::end_head(&mut out, 503, body.len(), false);
    out.extend_from_slice(body.as_bytes());
    let _ = sock.write(&out);
    let _ = sock.shutdown(std::net::Shutdown::Write);
}

/// A listener with a deep backlog: hundreds of clients connecting at once must not be dropped.
fn bind_listener(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let std_listener = std::net::TcpListener::bind(addr)?;
    let fd = std_listener.into_raw_fd();
    // SAFETY: fd is a bound TCP socket we own; listen() on it again only changes the backlog.
    unsafe {
        libc::listen(fd, 4096);
    }
    // SAFETY: ownership of fd moves into the new listener exactly once.
    let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    std_listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(std_listener))
}

fn seed_rng() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    let seed = u64::from_le_bytes(bytes);
    if from_os && seed != 0 {
        seed
    } else {
        // Only the spread of reconnect delays depends on this; the clock is good enough.
        (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1))
            | 1
    }
}
