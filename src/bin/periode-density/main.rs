//! periode-density: how many idle SSE streams one server holds, and what they cost.
//!
//! Opens N streams over loopback (users × streams per user, real tokens), then measures, in
//! bounded phases: connect rate and first-event latency; the server's RSS and PSS growth per
//! stream; idle CPU; fan-out latency of one event to every stream of one user; CPU per
//! heartbeat delivered (server at `--heartbeat 1`); durable writes per second from concurrent
//! writers while fan-out latency is probed. One JSON object goes to stdout, a table to stderr.
//!
//! It measures our server (`--target periode`, which it can start itself with `--server`) and
//! the peers in `../shared/peers` (`axum`, `hono`, `nchan`) with the same client code.
//! One thread, one `mio::Poll`; every phase has a deadline; the tool always stops by itself.

mod procfs;
mod setup;
mod stats;
mod summary;
mod wire;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::json;
use stats::Sample;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wire::{Chunked, Kind, SseScan};

const USAGE: &str = "\
periode-density: opens N SSE streams against a server and measures what they cost

USAGE: periode-density [OPTIONS]
       periode-density summarize REPORT.json...   (medians per label, as a Markdown table)

Target:
  --target periode|axum|hono|nchan   protocol to speak (default periode)
  --addr HOST:PORT                   server address (default 127.0.0.1:8989)
  --pid PID                          server process to read /proc from (RSS, PSS, CPU)
  --server PATH                      start this periode-sse binary ourselves (temp db, free port)
  --db PATH                          with --server: database to use (default: a temp file)
  --heartbeat SECS                   with --server: its --heartbeat (default 30)
  --server-arg ARG                   with --server: one more argument for it (repeatable)
  --secret TEXT                      HS256 key (default: env JWT_SECRET; --server makes one)
  --no-setup                         do not create users and limits (periode target)
  --label TEXT                       free text copied into the report

Load:
  --streams N                        streams to open (default 1000)
  --per-user N                       streams per user (default 100)
  --window N                         connects in flight at once (default 1000)
  --spread / --no-spread             client source addresses 127.0.0.2-9 (default: N > 1000)
  --connect-secs S                   connect phase deadline (default 120)
  --settle-secs S                    idle wait before memory is read (default 3)
  --fanout-posts N                   events to time to one user's streams (default 50; 0 skips)
  --fanout-gap-ms MS                 pause between them (default 20)
  --heartbeat-window S               measure CPU per heartbeat over S seconds (default 0: skip)
  --writers N                        concurrent transaction writers (default 0: skip)
  --writers-secs S                   how long they write (default 10)
  --writers-rate R                   paced: R writes/s in all, on a fixed schedule (default 0:
                                     closed loop, each writer sends again once answered)
  --quiet                            no table on stderr
";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Periode,
    Axum,
    Hono,
    Nchan,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Periode => "periode",
            Target::Axum => "axum",
            Target::Hono => "hono",
            Target::Nchan => "nchan",
        }
    }

    fn uses_tokens(self) -> bool {
        self != Target::Nchan
    }
}

struct Args {
    target: Target,
    addr: SocketAddr,
    pid: Option<u32>,
    server: Option<PathBuf>,
    db: Option<PathBuf>,
    heartbeat_secs: u64,
    server_args: Vec<String>,
    secret: Option<String>,
    setup: bool,
    label: Option<String>,
    streams: usize,
    per_user: usize,
    window: usize,
    spread: Option<bool>,
    connect_secs: u64,
    settle_secs: f64,
    fanout_posts: usize,
    fanout_gap_ms: u64,
    heartbeat_window: u64,
    writers: usize,
    writers_secs: u64,
    /// Writes per second across all writers (0: each writer sends as soon as it is answered).
    writers_rate: f64,
    quiet: bool,
}

fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut a = Args {
        target: Target::Periode,
        addr: "127.0.0.1:8989".parse().expect("literal address"), // ok: a constant
        pid: None,
        server: None,
        db: None,
        heartbeat_secs: 30,
        server_args: Vec::new(),
        secret: std::env::var("JWT_SECRET").ok(),
        setup: true,
        label: None,
        streams: 1000,
        per_user: 100,
        window: 1000,
        spread: None,
        connect_secs: 120,
        settle_secs: 3.0,
        fanout_posts: 50,
        fanout_gap_ms: 20,
        heartbeat_window: 0,
        writers: 0,
        writers_secs: 10,
        writers_rate: 0.0,
        quiet: false,
    };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("target") => {
                a.target = match parser.value()?.string()?.as_str() {
                    "periode" => Target::Periode,
                    "axum" => Target::Axum,
                    "hono" => Target::Hono,
                    "nchan" => Target::Nchan,
                    other => return Err(format!("unknown target {other:?}").into()),
                }
            }
            Long("addr") => a.addr = parser.value()?.parse()?,
            Long("pid") => a.pid = Some(parser.value()?.parse()?),
            Long("server") => a.server = Some(parser.value()?.into()),
            Long("db") => a.db = Some(parser.value()?.into()),
            Long("heartbeat") => a.heartbeat_secs = parser.value()?.parse()?,
            Long("server-arg") => a.server_args.push(parser.value()?.string()?),
            Long("secret") => a.secret = Some(parser.value()?.string()?),
            Long("no-setup") => a.setup = false,
            Long("label") => a.label = Some(parser.value()?.string()?),
            Long("streams") => a.streams = parser.value()?.parse()?,
            Long("per-user") => a.per_user = parser.value()?.parse::<usize>()?.max(1),
            Long("window") => a.window = parser.value()?.parse::<usize>()?.max(1),
            Long("spread") => a.spread = Some(true),
            Long("no-spread") => a.spread = Some(false),
            Long("connect-secs") => a.connect_secs = parser.value()?.parse()?,
            Long("settle-secs") => a.settle_secs = parser.value()?.parse()?,
            Long("fanout-posts") => a.fanout_posts = parser.value()?.parse()?,
            Long("fanout-gap-ms") => a.fanout_gap_ms = parser.value()?.parse()?,
            Long("heartbeat-window") => a.heartbeat_window = parser.value()?.parse()?,
            Long("writers") => a.writers = parser.value()?.parse()?,
            Long("writers-secs") => a.writers_secs = parser.value()?.parse()?,
            Long("writers-rate") => a.writers_rate = parser.value()?.parse()?,
            Long("quiet") => a.quiet = true,
            Short('h') | Long("help") => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(a)
}

// ---- client connections ----------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamPhase {
    Connecting,
    Head,
    Body,
    Dead,
}

struct Stream {
    sock: Option<TcpStream>,
    user: u64,
    phase: StreamPhase,
    started: Instant,
    /// Request bytes already written.
    sent: usize,
    /// Response head bytes while the head is incomplete; empty afterwards.
    head: Vec<u8>,
    /// `None`: the body is not chunked (HTTP/1.0 style, close-delimited).
    chunked: Option<Chunked>,
    sse: SseScan,
    established: bool,
    /// The last fan-out round this stream was counted in.
    round_seen: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HttpRole {
    Probe,
    Writer { user: u64 },
}

/// A keep-alive client connection for POSTs: the fan-out probe, or one writer.
struct HttpConn {
    sock: Option<TcpStream>,
    connected: bool,
    role: HttpRole,
    out: Vec<u8>,
    out_sent: usize,
    inbuf: Vec<u8>,
    busy: bool,
    sent_at: Instant,
}

/// One fan-out measurement: a POST and the notification it causes on every stream of a user.
struct Round {
    id: u32,
    sent_at: Instant,
    expected: usize,
    got: usize,
    first: Option<Duration>,
    last: Option<Duration>,
}

const HTTP_BASE: usize = 1 << 40;
const FANOUT_USER: u64 = 1;
const ROUND_TIMEOUT: Duration = Duration::from_secs(3);

struct Tool {
    poll: Poll,
    target: Target,
    addr: SocketAddr,
    spread: bool,
    window: usize,
    /// Token of user `u` at index `u - 1` (empty strings for nchan).
    tokens: Vec<String>,
    streams: Vec<Stream>,
    scratch: Vec<u8>,
    kinds: Vec<Kind>,
    failures: BTreeMap<String, u64>,
    // connect phase
    opening: bool,
    next_open: usize,
    in_flight: usize,
    established: usize,
    dead: usize,
    open_started: Instant,
    target_99: usize,
    time_to_99: Option<Duration>,
    time_to_all: Option<Duration>,
    first_event: Sample,
    // fan-out
    https: Vec<HttpConn>,
    round: Option<Round>,
    next_round_id: u32,
    probes_left: usize,
    next_probe_at: Instant,
    probe_gap: Duration,
    fan_last: Sample,
    fan_first: Sample,
    /// Last stream minus first stream of each round: the server's own fan-out time, without
    /// the write's commit in front of it.
    fan_spread: Sample,
    post_response: Sample,
    fan_timeouts: u64,
    fan_user_streams: Vec<usize>,
    // heartbeats
    heartbeats_total: u64,
    heartbeats_counting: bool,
    heartbeats_counted: u64,
    notifications_total: u64,
    // writers
    writers_on: bool,
    /// Paced writers: one write every `write_every`, the next due at `next_write_at`.
    write_every: Option<Duration>,
    next_write_at: Instant,
    writes_ok: u64,
    writes_failed: u64,
    write_latency: Sample,
}

impl Tool {
    fn fail(&mut self, kind: impl Into<String>) {
        *self.failures.entry(kind.into()).or_insert(0) += 1;
    }

    fn token_of(&self, user: u64) -> &str {
        self.tokens.get(user as usize - 1).map(String::as_str).unwrap_or("")
    }

    fn stream_request(&self, user: u64) -> Vec<u8> {
        match self.target {
            Target::Nchan => format!(
                "GET /sub/{user} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
            )
            .into_bytes(),
            _ => format!(
                "GET /api/periode-limit/notifications/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Accept: text/event-stream\r\nAuthorization: Bearer {}\r\n\r\n",
                self.token_of(user)
            )
            .into_bytes(),
        }
    }

    fn post_request(&self, user: u64) -> Vec<u8> {
        match self.target {
            Target::Nchan => {
                let body = format!(
                    concat!(
                        r#"{{"userId":{},"currentSpending":5000,"maxSpending":200000,"#,
                        r#""alertPercentage":85,"currentPercentage":2.5,"isAlert":false,"#,
                        r#""timestamp":"{}"}}"#
                    ),
                    user,
                    periode_sse::time::format_rfc3339_ms(setup::epoch_ms())
                );
                format!(
                    "POST /pub/{user} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            }
            _ => {
                let body = r#"{"amount":1}"#;
                format!(
                    "POST /api/periode-limit/transactions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                     Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    self.token_of(user),
                    body.len()
                )
                .into_bytes()
            }
        }
    }

    // ---- the loop ----------------------------------------------------------------------------

    /// Runs the loop until `done` says so or `deadline` passes.
    fn pump(&mut self, deadline: Instant, done: impl Fn(&Tool) -> bool) {
        let mut events = Events::with_capacity(4096);
        loop {
            let now = Instant::now();
            self.tick(now);
            if done(self) || now >= deadline {
                return;
            }
            let mut wait = deadline - now;
            if self.writers_on && self.write_every.is_some() {
                wait = wait.min(self.next_write_at.saturating_duration_since(now));
            } else if self.probes_left > 0 || self.round.is_some() || self.opening {
                wait = wait.min(Duration::from_millis(2));
            } else {
                wait = wait.min(Duration::from_millis(100));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.fail(format!("poll_error:{e}"));
                    return;
                }
            }
            for event in events.iter() {
                let Token(t) = event.token();
                if t >= HTTP_BASE {
                    self.on_http(t - HTTP_BASE);
                } else {
                    self.on_stream(t);
                }
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        if self.opening {
            self.open_more(now);
        }
        if let Some(round) = &self.round {
            if now.duration_since(round.sent_at) > ROUND_TIMEOUT {
                let missing = round.expected - round.got;
                self.round = None;
                self.fan_timeouts += 1;
                *self.failures.entry("fanout_event_missing".into()).or_insert(0) += missing as u64;
                self.next_probe_at = now + Duration::from_millis(500);
            }
        }
        if self.probes_left > 0
            && self.round.is_none()
            && now >= self.next_probe_at
            && self.https.first().is_some_and(|h| !h.busy)
        {
            self.start_round(now);
        }
        if self.writers_on {
            if let Some(every) = self.write_every {
                // Open loop: writes leave on schedule; if every writer is still waiting for an
                // answer, the schedule slips and the achieved rate shows it.
                while now >= self.next_write_at {
                    let Some(j) = (1..self.https.len()).find(|&j| !self.https[j].busy) else {
                        break;
                    };
                    if let HttpRole::Writer { user } = self.https[j].role {
                        let req = self.post_request(user);
                        self.http_send(j, req, now);
                    }
                    self.next_write_at += every;
                }
                return;
            }
            for j in 1..self.https.len() {
                if !self.https[j].busy {
                    if let HttpRole::Writer { user } = self.https[j].role {
                        let req = self.post_request(user);
                        self.http_send(j, req, now);
                    }
                }
            }
        }
    }

    // ---- streams -----------------------------------------------------------------------------

    fn open_more(&mut self, now: Instant) {
        while self.in_flight < self.window && self.next_open < self.streams.len() {
            let i = self.next_open;
            self.next_open += 1;
            let from = self.spread.then(|| Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8));
            let mut sock = match wire::connect_from(from, self.addr) {
                Ok(s) => s,
                Err(e) => {
                    self.fail(format!("connect_error:{}", errno_name(&e)));
                    self.streams[i].phase = StreamPhase::Dead;
                    self.dead += 1;
                    if e.raw_os_error() == Some(libc::EMFILE) {
                        self.opening = false;
                        return;
                    }
                    continue;
                }
            };
            if let Err(e) = self.poll.registry().register(
                &mut sock,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                self.fail(format!("register_error:{}", errno_name(&e)));
                self.streams[i].phase = StreamPhase::Dead;
                self.dead += 1;
                continue;
            }
            let s = &mut self.streams[i];
            s.sock = Some(sock);
            s.phase = StreamPhase::Connecting;
            s.started = now;
            self.in_flight += 1;
        }
        if self.next_open >= self.streams.len() {
            self.opening = false;
        }
    }

    fn on_stream(&mut self, i: usize) {
        if i >= self.streams.len() {
            return;
        }
        if self.streams[i].phase == StreamPhase::Connecting {
            let Some(sock) = self.streams[i].sock.as_ref() else { return };
            match connect_finished(sock) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    let kind = format!("connect_error:{}", errno_name(&e));
                    self.kill_stream(i, kind);
                    return;
                }
            }
            let request = self.stream_request(self.streams[i].user);
            let s = &mut self.streams[i];
            let Some(sock) = s.sock.as_mut() else { return };
            loop {
                match sock.write(&request[s.sent..]) {
                    Ok(n) => {
                        s.sent += n;
                        if s.sent >= request.len() {
                            s.phase = StreamPhase::Head;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let kind = format!("write_error:{}", errno_name(&e));
                        self.kill_stream(i, kind);
                        return;
                    }
                }
            }
        }
        self.read_stream(i);
    }

    fn read_stream(&mut self, i: usize) {
        // Bounded: a stream that keeps the socket full cannot hold the loop.
        for _ in 0..64 {
            let s = &mut self.streams[i];
            if !matches!(s.phase, StreamPhase::Head | StreamPhase::Body) {
                return;
            }
            let Some(sock) = s.sock.as_mut() else { return };
            let n = match sock.read(&mut self.scratch) {
                Ok(0) => {
                    let kind = match (s.established, s.chunked) {
                        (false, _) => "closed_before_first_event",
                        (true, Some(Chunked::Ended)) => "ended_by_server",
                        (true, _) => "closed_by_server",
                    };
                    self.kill_stream(i, kind);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let kind = if s.established {
                        format!("read_error:{}", errno_name(&e))
                    } else {
                        format!("read_error_before_first_event:{}", errno_name(&e))
                    };
                    self.kill_stream(i, kind);
                    return;
                }
            };
            let now = Instant::now();
            let mut kinds = std::mem::take(&mut self.kinds);
            kinds.clear();
            let outcome = feed_stream(s, &self.scratch[..n], &mut kinds);
            for &kind in &kinds {
                self.on_block(i, kind, now);
            }
            self.kinds = kinds;
            if let Err(kind) = outcome {
                self.kill_stream(i, kind);
                return;
            }
        }
    }

    fn on_block(&mut self, i: usize, kind: Kind, now: Instant) {
        let s = &mut self.streams[i];
        if !s.established {
            s.established = true;
            self.in_flight -= 1;
            self.established += 1;
            self.first_event.push(now.duration_since(s.started));
            let elapsed = now.duration_since(self.open_started);
            if self.established == self.target_99 {
                self.time_to_99 = Some(elapsed);
            }
            if self.established == self.streams.len() {
                self.time_to_all = Some(elapsed);
            }
        }
        let s = &mut self.streams[i];
        match kind {
            Kind::Heartbeat => {
                self.heartbeats_total += 1;
                if self.heartbeats_counting {
                    self.heartbeats_counted += 1;
                }
            }
            Kind::Notification => {
                self.notifications_total += 1;
                if let Some(round) = self.round.as_mut() {
                    if s.user == FANOUT_USER && s.round_seen != round.id {
                        s.round_seen = round.id;
                        round.got += 1;
                        let d = now.duration_since(round.sent_at);
                        round.first.get_or_insert(d);
                        round.last = Some(d);
                        if round.got >= round.expected {
                            self.finish_round(now);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn kill_stream(&mut self, i: usize, kind: impl Into<String>) {
        let s = &mut self.streams[i];
        if s.phase == StreamPhase::Dead {
            return;
        }
        if let Some(mut sock) = s.sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        let was_established = s.established;
        s.phase = StreamPhase::Dead;
        s.head = Vec::new();
        if !was_established {
            self.in_flight -= 1;
        }
        self.dead += 1;
        self.fail(kind);
    }

    fn live_streams(&self) -> usize {
        self.established
            - self.streams.iter().filter(|s| s.established && s.phase == StreamPhase::Dead).count()
    }

    // ---- fan-out -----------------------------------------------------------------------------

    fn start_round(&mut self, now: Instant) {
        let expected = self
            .fan_user_streams
            .iter()
            .filter(|&&i| self.streams[i].established && self.streams[i].phase == StreamPhase::Body)
            .count();
        if expected == 0 {
            self.probes_left = 0;
            return;
        }
        self.next_round_id += 1;
        self.probes_left -= 1;
        self.round = Some(Round {
            id: self.next_round_id,
            sent_at: now,
            expected,
            got: 0,
            first: None,
            last: None,
        });
        let req = self.post_request(FANOUT_USER);
        self.http_send(0, req, now);
    }

    fn finish_round(&mut self, now: Instant) {
        if let Some(round) = self.round.take() {
            if let (Some(first), Some(last)) = (round.first, round.last) {
                self.fan_first.push(first);
                self.fan_last.push(last);
                self.fan_spread.push(last - first);
            }
        }
        self.next_probe_at = now + self.probe_gap;
    }

    // ---- POST connections --------------------------------------------------------------------

    fn http_send(&mut self, j: usize, request: Vec<u8>, now: Instant) {
        let h = &mut self.https[j];
        h.out = request;
        h.out_sent = 0;
        h.busy = true;
        h.sent_at = now;
        if h.sock.is_none() {
            match wire::connect_from(None, self.addr) {
                Ok(mut sock) => {
                    if let Err(e) = self.poll.registry().register(
                        &mut sock,
                        Token(HTTP_BASE + j),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        h.busy = false;
                        self.fail(format!("post_register_error:{}", errno_name(&e)));
                        return;
                    }
                    h.sock = Some(sock);
                    h.connected = false;
                    h.inbuf.clear();
                }
                Err(e) => {
                    h.busy = false;
                    self.fail(format!("post_connect_error:{}", errno_name(&e)));
                }
            }
        } else {
            self.flush_http(j);
        }
    }

    fn flush_http(&mut self, j: usize) {
        let h = &mut self.https[j];
        let Some(sock) = h.sock.as_mut() else { return };
        while h.out_sent < h.out.len() {
            match sock.write(&h.out[h.out_sent..]) {
                Ok(n) => h.out_sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let kind = format!("post_write_error:{}", errno_name(&e));
                    self.drop_http(j, kind);
                    return;
                }
            }
        }
    }

    fn drop_http(&mut self, j: usize, kind: String) {
        let h = &mut self.https[j];
        if let Some(mut sock) = h.sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        let was_busy = h.busy;
        h.busy = false;
        h.inbuf.clear();
        // A probe dropped here never sees its event: its round times out and is counted.
        if was_busy {
            self.fail(kind);
        }
    }

    fn on_http(&mut self, j: usize) {
        if j >= self.https.len() {
            return;
        }
        let h = &mut self.https[j];
        let Some(sock) = h.sock.as_mut() else { return };
        if !h.connected {
            match connect_finished(sock) {
                Ok(true) => h.connected = true,
                Ok(false) => return,
                Err(e) => {
                    let kind = format!("post_connect_error:{}", errno_name(&e));
                    self.drop_http(j, kind);
                    return;
                }
            }
        }
        self.flush_http(j);
        let mut eof = false;
        for _ in 0..64 {
            let h = &mut self.https[j];
            let Some(sock) = h.sock.as_mut() else { return };
            match sock.read(&mut self.scratch) {
                Ok(0) => {
                    // Answers that arrived before the close still count: parse them first.
                    eof = true;
                    break;
                }
                Ok(n) => h.inbuf.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let kind = format!("post_read_error:{}", errno_name(&e));
                    self.drop_http(j, kind);
                    return;
                }
            }
        }
        let now = Instant::now();
        self.take_responses(j, now);
        if eof && self.https[j].sock.is_some() {
            self.drop_http(j, "post_closed_by_server".into());
        }
    }

    fn take_responses(&mut self, j: usize, now: Instant) {
        loop {
            let h = &mut self.https[j];
            if !h.busy {
                h.inbuf.clear();
                return;
            }
            match wire::parse_response(&h.inbuf) {
                Ok(None) => return,
                Err(()) => {
                    self.drop_http(j, "post_malformed_response".into());
                    return;
                }
                Ok(Some((status, len, close))) => {
                    h.inbuf.drain(..len);
                    h.busy = false;
                    let took = now.duration_since(h.sent_at);
                    let role = h.role;
                    if close {
                        if let Some(mut sock) = h.sock.take() {
                            let _ = self.poll.registry().deregister(&mut sock);
                        }
                    }
                    self.on_response(role, status, took);
                    if close {
                        return;
                    }
                }
            }
        }
    }

    fn on_response(&mut self, role: HttpRole, status: u16, took: Duration) {
        let ok = (200..300).contains(&status);
        match role {
            HttpRole::Probe => {
                if ok {
                    self.post_response.push(took);
                } else {
                    self.fail(format!("post_http_{status}"));
                }
            }
            HttpRole::Writer { .. } => {
                if ok {
                    self.writes_ok += 1;
                    self.write_latency.push(took);
                } else {
                    self.writes_failed += 1;
                    self.fail(format!("write_http_{status}"));
                }
            }
        }
    }
}

/// Feeds response bytes of one stream through its head parser, chunk decoder and SSE scanner.
fn feed_stream(s: &mut Stream, bytes: &[u8], kinds: &mut Vec<Kind>) -> Result<(), String> {
    let body: &[u8];
    let head_rest: Vec<u8>;
    if s.phase == StreamPhase::Head {
        s.head.extend_from_slice(bytes);
        match wire::parse_stream_head(&s.head) {
            Ok(None) => {
                if s.head.len() > 16 * 1024 {
                    return Err("response_head_too_large".into());
                }
                return Ok(());
            }
            Err(()) => return Err("malformed_response_head".into()),
            Ok(Some((status, len, chunked))) => {
                if status != 200 {
                    return Err(format!("http_{status}"));
                }
                s.phase = StreamPhase::Body;
                s.chunked = chunked.then(Chunked::new);
                head_rest = s.head[len..].to_vec();
                s.head = Vec::new();
                body = &head_rest;
            }
        }
    } else {
        body = bytes;
    }
    let sse = &mut s.sse;
    match s.chunked.as_mut() {
        Some(chunked) => chunked
            .feed(body, |data| sse.feed(data, |k| kinds.push(k)))
            .map_err(|_| "malformed_chunking".to_string()),
        None => {
            sse.feed(body, |k| kinds.push(k));
            Ok(())
        }
    }
}

fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL".into(),
        Some(libc::EADDRINUSE) => "EADDRINUSE".into(),
        Some(libc::EMFILE) => "EMFILE".into(),
        Some(libc::ENFILE) => "ENFILE".into(),
        Some(libc::EPIPE) => "EPIPE".into(),
        Some(n) => format!("errno{n}"),
        None => format!("{:?}", e.kind()),
    }
}

// ---- the run -----------------------------------------------------------------------------------

fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("summarize") {
        return match summary::run(&argv[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("periode-density: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("periode-density: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(ok) => {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("periode-density: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether a non-blocking connect has finished: `Ok(true)` connected, `Ok(false)` still in
/// progress, `Err` failed.
fn connect_finished(sock: &TcpStream) -> io::Result<bool> {
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    match sock.peer_addr() {
        Ok(_) => Ok(true),
        Err(e)
            if e.kind() == io::ErrorKind::NotConnected
                || e.raw_os_error() == Some(libc::EINPROGRESS) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// Runs every phase; returns whether it completed with no failure at all.
fn run(mut args: Args) -> Result<bool, String> {
    let fd_limit = procfs::raise_open_files_limit();
    // Streams + POST connections + a margin for the loop itself.
    let needed = args.streams + args.writers + 64;
    if (fd_limit as usize) < needed {
        return Err(format!(
            "{} streams need about {needed} open files; the limit is {fd_limit}",
            args.streams
        ));
    }
    let users = args.streams.div_ceil(args.per_user).max(1) as u64;
    let writer_users = args.writers as u64;
    let load_before = procfs::load_average();

    // ---- our own server, when asked ----------------------------------------------------------
    let mut spawned = None;
    let mut startup = json!(null);
    let mut tmpdir = None;
    if let Some(bin) = args.server.clone() {
        if args.target != Target::Periode {
            return Err("--server starts periode-sse only".into());
        }
        let secret = args.secret.clone().unwrap_or_else(random_secret);
        args.secret = Some(secret.clone());
        let dir = std::env::temp_dir().join(format!("periode-density.{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let db = args.db.clone().unwrap_or_else(|| dir.join("density.db"));
        let log = dir.join("server.log");
        args.addr = SocketAddr::from(([127, 0, 0, 1], setup::free_port()?));
        let (mut first, first_ms) = setup::spawn_server(
            &bin,
            &db,
            args.addr,
            args.heartbeat_secs,
            &secret,
            &log,
            &args.server_args,
        )?;
        if args.setup {
            let created = setup::create_users(
                args.addr,
                secret.as_bytes(),
                1..=users + writer_users,
                8,
                Duration::from_secs(120),
            );
            if let Err(e) = created {
                setup::stop_server(&mut first, Duration::from_secs(6));
                return Err(format!("set-up failed: {e}"));
            }
        }
        // Restart on the now-existing database: a clean baseline, and the start-up time that
        // the target speaks of.
        setup::stop_server(&mut first, Duration::from_secs(6));
        let (again, again_ms) = setup::spawn_server(
            &bin,
            &db,
            args.addr,
            args.heartbeat_secs,
            &secret,
            &log,
            &args.server_args,
        )?;
        startup = json!({
            "first_start_ms": first_ms.as_secs_f64() * 1000.0,
            "existing_db_ms": again_ms.as_secs_f64() * 1000.0,
        });
        args.pid = Some(again.child.id());
        spawned = Some(again);
        tmpdir = Some(dir);
    } else if args.target == Target::Periode && args.setup {
        let secret =
            args.secret.clone().ok_or("the periode target needs --secret or JWT_SECRET")?;
        setup::create_users(
            args.addr,
            secret.as_bytes(),
            1..=users + writer_users,
            8,
            Duration::from_secs(120),
        )?;
    }
    if args.target.uses_tokens() && args.secret.is_none() {
        return Err(format!("the {} target needs --secret or JWT_SECRET", args.target.name()));
    }
    let key = args.secret.clone().unwrap_or_default();
    let tokens: Vec<String> = (1..=users + writer_users)
        .map(|u| {
            if args.target.uses_tokens() {
                setup::user_token(u, key.as_bytes())
            } else {
                String::new()
            }
        })
        .collect();

    let spread = args.spread.unwrap_or(args.streams > 1000);
    let now = Instant::now();
    let streams: Vec<Stream> = (0..args.streams)
        .map(|i| Stream {
            sock: None,
            user: (i / args.per_user) as u64 + 1,
            phase: StreamPhase::Dead,
            started: now,
            sent: 0,
            head: Vec::new(),
            chunked: None,
            sse: SseScan::new(),
            established: false,
            round_seen: 0,
        })
        .collect();
    let fan_user_streams = (0..args.streams).filter(|&i| streams[i].user == FANOUT_USER).collect();
    let mut https = vec![HttpConn {
        sock: None,
        connected: false,
        role: HttpRole::Probe,
        out: Vec::new(),
        out_sent: 0,
        inbuf: Vec::new(),
        busy: false,
        sent_at: now,
    }];
    for w in 0..args.writers as u64 {
        https.push(HttpConn {
            sock: None,
            connected: false,
            role: HttpRole::Writer { user: users + 1 + w },
            out: Vec::new(),
            out_sent: 0,
            inbuf: Vec::new(),
            busy: false,
            sent_at: now,
        });
    }
    let mut tool = Tool {
        poll: Poll::new().map_err(|e| format!("epoll: {e}"))?,
        target: args.target,
        addr: args.addr,
        spread,
        window: args.window,
        tokens,
        streams,
        scratch: vec![0; 64 * 1024],
        kinds: Vec::new(),
        failures: BTreeMap::new(),
        opening: false,
        next_open: 0,
        in_flight: 0,
        established: 0,
        dead: 0,
        open_started: now,
        target_99: ((args.streams as f64) * 0.99).ceil() as usize,
        time_to_99: None,
        time_to_all: None,
        first_event: Sample::default(),
        https,
        round: None,
        next_round_id: 0,
        probes_left: 0,
        next_probe_at: now,
        probe_gap: Duration::from_millis(args.fanout_gap_ms),
        fan_last: Sample::default(),
        fan_first: Sample::default(),
        fan_spread: Sample::default(),
        post_response: Sample::default(),
        fan_timeouts: 0,
        fan_user_streams,
        heartbeats_total: 0,
        heartbeats_counting: false,
        heartbeats_counted: 0,
        notifications_total: 0,
        writers_on: false,
        write_every: None,
        next_write_at: Instant::now(),
        writes_ok: 0,
        writes_failed: 0,
        write_latency: Sample::default(),
    };
    let tool_cpu_start = procfs::self_cpu_us();

    // ---- baseline ----------------------------------------------------------------------------
    std::thread::sleep(Duration::from_millis(300));
    let pid = args.pid;
    let rss_before = pid.and_then(procfs::rss_bytes);
    let pss_before = pid.and_then(procfs::pss_bytes);

    // ---- connect -----------------------------------------------------------------------------
    let connect_cpu_start = pid.and_then(procfs::cpu);
    let connect_tool_start = procfs::self_cpu_us();
    let connect_deadline = Instant::now() + Duration::from_secs(args.connect_secs);
    tool.open_started = Instant::now();
    tool.opening = true;
    tool.pump(connect_deadline, |t| {
        !t.opening && t.in_flight == 0 && t.next_open >= t.streams.len()
    });
    let connect_secs = tool.open_started.elapsed().as_secs_f64();
    let connect_cpu_end = pid.and_then(procfs::cpu);
    let connect_tool_us = procfs::self_cpu_us() - connect_tool_start;
    if tool.in_flight > 0 {
        let n = tool.in_flight as u64;
        *tool.failures.entry("not_established_in_time".into()).or_insert(0) += n;
    }
    let established = tool.established;
    let rate_99 = tool.time_to_99.map(|d| tool.target_99 as f64 / d.as_secs_f64());

    // ---- settle: idle memory and idle CPU ----------------------------------------------------
    let settle_cpu_start = pid.and_then(procfs::cpu);
    let settle_start = Instant::now();
    tool.pump(settle_start + Duration::from_secs_f64(args.settle_secs), |_| false);
    let settle_elapsed = settle_start.elapsed().as_secs_f64();
    let settle_cpu_end = pid.and_then(procfs::cpu);
    let rss_after = pid.and_then(procfs::rss_bytes);
    let pss_after = pid.and_then(procfs::pss_bytes);
    let live_after_settle = tool.live_streams();
    let per_stream = |before: Option<u64>, after: Option<u64>| -> Option<f64> {
        let (b, a) = (before?, after?);
        (live_after_settle > 0)
            .then(|| (a as f64 - b as f64) / live_after_settle as f64)
            .map(|v| v.round())
    };
    let idle_cpu = match (settle_cpu_start, settle_cpu_end) {
        (Some(a), Some(b)) => json!({
            "window_s": settle_elapsed,
            "cpu_ms": (b.total_us() - a.total_us()) as f64 / 1000.0,
            "run_ms": (b.run_ns - a.run_ns) as f64 / 1e6,
            "heartbeats_in_window": null,
        }),
        _ => json!(null),
    };

    // ---- fan-out -----------------------------------------------------------------------------
    let fan_streams = tool
        .fan_user_streams
        .iter()
        .filter(|&&i| tool.streams[i].phase == StreamPhase::Body)
        .count();
    let fanout_cpu_start = pid.and_then(procfs::cpu);
    if args.fanout_posts > 0 && fan_streams > 0 {
        tool.probes_left = args.fanout_posts;
        tool.next_probe_at = Instant::now();
        let deadline = Instant::now()
            + Duration::from_secs(10)
            + (ROUND_TIMEOUT + Duration::from_millis(args.fanout_gap_ms))
                * args.fanout_posts as u32;
        tool.pump(deadline, |t| t.probes_left == 0 && t.round.is_none());
        tool.probes_left = 0;
        tool.round = None;
    }
    let fanout_cpu_end = pid.and_then(procfs::cpu);
    let events_delivered = tool.fan_last.len() * fan_streams;
    let fanout = json!({
        "server_cpu_us_per_event": match (fanout_cpu_start, fanout_cpu_end) {
            (Some(a), Some(b)) if events_delivered > 0 => json!(
                ((b.run_ns - a.run_ns) as f64 / 1000.0 / events_delivered as f64 * 100.0).round()
                    / 100.0
            ),
            _ => json!(null),
        },
        "user_streams": fan_streams,
        "posts": args.fanout_posts,
        "completed": tool.fan_last.len(),
        "timeouts": tool.fan_timeouts,
        "to_last_stream": tool.fan_last.summary(),
        "to_first_stream": tool.fan_first.summary(),
        "first_to_last_stream": tool.fan_spread.summary(),
        "post_response": tool.post_response.summary(),
    });
    let fan_p99 = tool.fan_last.quantile_ms(0.99);
    let fan_p50 = tool.fan_last.quantile_ms(0.5);

    // ---- heartbeats --------------------------------------------------------------------------
    let mut heartbeat = json!(null);
    let mut cpu_per_hb = None;
    if args.heartbeat_window > 0 {
        // Skip the first second so that the window holds steady-state rounds only.
        tool.pump(Instant::now() + Duration::from_secs(1), |_| false);
        let cpu_a = pid.and_then(procfs::cpu);
        let tool_a = procfs::self_cpu_us();
        let t0 = Instant::now();
        tool.heartbeats_counting = true;
        tool.heartbeats_counted = 0;
        tool.pump(t0 + Duration::from_secs(args.heartbeat_window), |_| false);
        tool.heartbeats_counting = false;
        let window = t0.elapsed().as_secs_f64();
        let cpu_b = pid.and_then(procfs::cpu);
        let tool_b = procfs::self_cpu_us();
        let count = tool.heartbeats_counted;
        let per = |us: f64| (count > 0).then(|| (us / count as f64 * 1000.0).round() / 1000.0);
        let (mut total, mut user, mut system, mut run) = (None, None, None, None);
        if let (Some(a), Some(b)) = (cpu_a, cpu_b) {
            total = per((b.total_us() - a.total_us()) as f64);
            user = per((b.user_us - a.user_us) as f64);
            system = per((b.system_us - a.system_us) as f64);
            run = per((b.run_ns - a.run_ns) as f64 / 1000.0);
        }
        cpu_per_hb = total;
        heartbeat = json!({
            "window_s": window,
            "heartbeats": count,
            "per_s": count as f64 / window,
            "expected_per_s": tool.live_streams() as f64 / args.heartbeat_secs.max(1) as f64,
            "cpu_us_per_heartbeat": total,
            "user_us_per_heartbeat": user,
            "system_us_per_heartbeat": system,
            "schedstat_us_per_heartbeat": run,
            "tool_cpu_us_per_heartbeat": per((tool_b - tool_a) as f64),
        });
    }

    // ---- writers -----------------------------------------------------------------------------
    // With --writers-rate, first a paced phase (the issue's condition: a given rate, and the
    // fan-out latency meanwhile), then the closed-loop one (how far the server goes).
    let mut writers_paced = json!(null);
    let mut paced_probe_p99 = None;
    if args.writers > 0 && args.writers_rate > 0.0 {
        let every = Duration::from_secs_f64(1.0 / args.writers_rate);
        let (report, _, probe_p99) = run_writers(&mut tool, &args, pid, fan_streams, Some(every));
        writers_paced = report;
        paced_probe_p99 = probe_p99;
    }
    let mut writers = json!(null);
    let mut writes_per_s = None;
    let mut writer_probe_p99 = None;
    if args.writers > 0 {
        let (report, rate, probe_p99) = run_writers(&mut tool, &args, pid, fan_streams, None);
        writers = report;
        writes_per_s = rate;
        writer_probe_p99 = probe_p99;
    }

    // ---- end ---------------------------------------------------------------------------------
    let live_at_end = tool.live_streams();
    let tool_cpu_s = (procfs::self_cpu_us() - tool_cpu_start) as f64 / 1e6;
    let rss_at_end = pid.and_then(procfs::rss_bytes);
    let mut shutdown = json!(null);
    if let Some(mut s) = spawned.take() {
        let took = setup::stop_server(&mut s, Duration::from_secs(8));
        shutdown = json!({ "exit_ms": took.map(|d| d.as_secs_f64() * 1000.0), "log": s.log });
    }
    let failures: u64 = tool
        .failures
        .iter()
        .filter(|(k, _)| k.as_str() != "ended_by_server")
        .map(|(_, v)| *v)
        .sum();
    let rss_per = per_stream(rss_before, rss_after);
    let pss_per = per_stream(pss_before, pss_after);
    let mut first_event = tool.first_event.summary();
    let report = json!({
        "tool": "periode-density",
        "label": args.label,
        "target": args.target.name(),
        "addr": args.addr.to_string(),
        "pid": pid,
        "load_average_before": load_before,
        "load_average_after": procfs::load_average(),
        "streams_requested": args.streams,
        "per_user": args.per_user,
        "users": users,
        "spread_sources": spread,
        "window": args.window,
        "heartbeat_secs": args.heartbeat_secs,
        "startup": startup,
        "connect": {
            "established": established,
            "secs": connect_secs,
            "secs_to_99pct": tool.time_to_99.map(|d| d.as_secs_f64()),
            "secs_to_all": tool.time_to_all.map(|d| d.as_secs_f64()),
            "streams_per_s_to_99pct": rate_99.map(f64::round),
            "first_event": first_event.take(),
            "server_cpu_us_per_stream": match (connect_cpu_start, connect_cpu_end) {
                (Some(a), Some(b)) if established > 0 =>
                    json!(((b.total_us() - a.total_us()) as f64 / established as f64).round()),
                _ => json!(null),
            },
            "server_run_us_per_stream": match (connect_cpu_start, connect_cpu_end) {
                (Some(a), Some(b)) if established > 0 =>
                    json!(((b.run_ns - a.run_ns) as f64 / 1000.0 / established as f64).round()),
                _ => json!(null),
            },
            "tool_cpu_us_per_stream": (established > 0)
                .then(|| (connect_tool_us as f64 / established as f64).round()),
        },
        "memory": {
            "live_streams": live_after_settle,
            "rss_before_bytes": rss_before,
            "rss_after_bytes": rss_after,
            "rss_at_end_bytes": rss_at_end,
            "pss_before_bytes": pss_before,
            "pss_after_bytes": pss_after,
            "rss_growth_per_stream_bytes": rss_per,
            "pss_growth_per_stream_bytes": pss_per,
        },
        "idle_cpu": idle_cpu,
        "fanout": fanout,
        "heartbeat": heartbeat,
        "writers": writers,
        "writers_paced": writers_paced,
        "notifications_received": tool.notifications_total,
        "heartbeats_received": tool.heartbeats_total,
        "live_streams_at_end": live_at_end,
        "failures": tool.failures,
        "failure_count": failures,
        "shutdown": shutdown,
        "load_generator": {
            "cpu_s": tool_cpu_s,
            "max_rss_bytes": procfs::self_max_rss_bytes(),
        },
    });
    println!("{report}");
    if !args.quiet {
        let fmt = |v: Option<f64>, digits: usize| {
            v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into())
        };
        let fe = |q: &str| report["connect"]["first_event"][q].as_f64();
        eprintln!(
            "\nperiode-density: target {} at {} (pid {}), load {} -> {}",
            args.target.name(),
            args.addr,
            pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
            load_before.unwrap_or_default(),
            procfs::load_average().unwrap_or_default()
        );
        let rows: Vec<(&str, String)> = vec![
            ("streams established", format!("{established} / {}", args.streams)),
            ("streams/s to 99 %", fmt(rate_99, 0)),
            (
                "server CPU per connect (us)",
                fmt(report["connect"]["server_run_us_per_stream"].as_f64(), 0),
            ),
            (
                "first event p50 / p99 / max (ms)",
                format!(
                    "{} / {} / {}",
                    fmt(fe("p50_ms"), 2),
                    fmt(fe("p99_ms"), 2),
                    fmt(fe("max_ms"), 2)
                ),
            ),
            (
                "RSS before -> after (MiB)",
                format!("{} -> {}", fmt(rss_before.map(mb), 1), fmt(rss_after.map(mb), 1)),
            ),
            ("RSS growth per stream (B)", fmt(rss_per, 0)),
            ("PSS growth per stream (B)", fmt(pss_per, 0)),
            ("idle CPU over settle (ms)", fmt(report["idle_cpu"]["cpu_ms"].as_f64(), 0)),
            (
                "fan-out streams / posts done",
                format!("{fan_streams} / {}", report["fanout"]["completed"]),
            ),
            (
                "fan-out to last p50 / p99 (ms)",
                format!("{} / {}", fmt(fan_p50, 3), fmt(fan_p99, 3)),
            ),
            (
                "fan-out to last max (ms)",
                fmt(report["fanout"]["to_last_stream"]["max_ms"].as_f64(), 3),
            ),
            (
                "fan-out first->last p50 / p99 (ms)",
                format!(
                    "{} / {}",
                    fmt(report["fanout"]["first_to_last_stream"]["p50_ms"].as_f64(), 3),
                    fmt(report["fanout"]["first_to_last_stream"]["p99_ms"].as_f64(), 3)
                ),
            ),
            (
                "POST answer p50 / p99 (ms)",
                format!(
                    "{} / {}",
                    fmt(report["fanout"]["post_response"]["p50_ms"].as_f64(), 3),
                    fmt(report["fanout"]["post_response"]["p99_ms"].as_f64(), 3)
                ),
            ),
            ("CPU per heartbeat (us)", fmt(cpu_per_hb, 2)),
            (
                "  user / schedstat (us)",
                format!(
                    "{} / {}",
                    fmt(report["heartbeat"]["user_us_per_heartbeat"].as_f64(), 2),
                    fmt(report["heartbeat"]["schedstat_us_per_heartbeat"].as_f64(), 2)
                ),
            ),
            (
                "writes/s paced; probe p99 (ms)",
                format!(
                    "{}; {}",
                    fmt(report["writers_paced"]["writes_per_s"].as_f64(), 0),
                    fmt(paced_probe_p99, 3)
                ),
            ),
            ("writes/s (writers)", fmt(writes_per_s, 0)),
            ("  probe fan-out p99 (ms)", fmt(writer_probe_p99, 3)),
            ("startup, existing db (ms)", fmt(report["startup"]["existing_db_ms"].as_f64(), 1)),
            (
                "failures",
                format!("{failures} {}", serde_json::to_string(&tool.failures).unwrap_or_default()),
            ),
            ("load generator CPU (s)", format!("{tool_cpu_s:.2}")),
        ];
        for (name, value) in rows {
            eprintln!("  {name:<36} {value}");
        }
    }
    drop(tool);
    if let Some(dir) = tmpdir {
        if args.db.is_none() && failures == 0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(failures == 0)
}

/// One writers phase: `args.writers` keep-alive clients POST for `args.writers_secs`, paced
/// (`every`) or closed-loop, while the fan-out probe keeps running. Returns the report, the
/// achieved writes per second and the probe's p99.
fn run_writers(
    tool: &mut Tool,
    args: &Args,
    pid: Option<u32>,
    fan_streams: usize,
    every: Option<Duration>,
) -> (serde_json::Value, Option<f64>, Option<f64>) {
    tool.writes_ok = 0;
    tool.writes_failed = 0;
    tool.write_latency = Sample::default();
    tool.write_every = every;
    let mut probe = Sample::default();
    std::mem::swap(&mut probe, &mut tool.fan_last);
    let t0 = Instant::now();
    let cpu_a = pid.and_then(procfs::cpu);
    tool.writers_on = true;
    tool.next_write_at = t0;
    tool.probes_left = if fan_streams > 0 { usize::MAX } else { 0 };
    tool.next_probe_at = t0;
    tool.pump(t0 + Duration::from_secs(args.writers_secs), |_| false);
    tool.writers_on = false;
    tool.probes_left = 0;
    let window = t0.elapsed().as_secs_f64();
    let ok = tool.writes_ok;
    // Let the last answers and probe events arrive (bounded).
    tool.pump(Instant::now() + Duration::from_secs(3), |t| {
        t.round.is_none() && t.https.iter().all(|h| !h.busy)
    });
    tool.round = None;
    let cpu_b = pid.and_then(procfs::cpu);
    std::mem::swap(&mut probe, &mut tool.fan_last);
    let report = json!({
        "writers": args.writers,
        "writers_rate": every.map(|e| 1.0 / e.as_secs_f64()),
        "window_s": window,
        "writes_ok": ok,
        "writes_failed": tool.writes_failed,
        "writes_per_s": ok as f64 / window,
        "write_latency": tool.write_latency.summary(),
        "probe_fanout_to_last_stream": probe.summary(),
        "server_cpu_s": match (cpu_a, cpu_b) {
            (Some(a), Some(b)) => json!((b.total_us() - a.total_us()) as f64 / 1e6),
            _ => json!(null),
        },
    });
    (report, Some(ok as f64 / window), probe.quantile_ms(0.99))
}
