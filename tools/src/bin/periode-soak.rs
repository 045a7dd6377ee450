//! periode-soak: drives a running periode-sse with thousands of streams for a bounded time and
//! checks that it lost nothing and leaked nothing (SPEC §4, §5; run by `scripts/soak.sh`).
//!
//! One thread, one `mio::Poll`, every client socket non-blocking. During the run:
//!  - well-behaved streams, spread over the users, read every event; a third of them come and
//!    go, reconnecting with `Last-Event-ID`, a tenth write junk after their request;
//!  - stalled streams (tiny receive buffer) read their head and never again;
//!  - churners open a stream and drop it soon after (half with a reset);
//!  - garbage clients send malformed or oversized requests, or half a request and leave;
//!  - posters send admin `POST /transactions` for every user (a few "hot" users get many more,
//!    so that their stalled streams fall behind), counting the 201s per user.
//!
//! At the end, with posting stopped: every well-behaved logical client has seen its user's
//! notifications with consecutive ids, none twice, none missing, up to the id the 201s imply;
//! heartbeats kept coming; stalled streams of hot users were cut; and once every client has
//! left, the server's descriptors and RSS are back near their idle level. Exit 1 on any failure.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use periode_kit::rng::Rng;
use periode_kit::{http, procfs, sock, token};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const STREAM_PATH: &str = "/api/periode-limit/notifications/stream";
const HEALTH_PATH: &str = "/api/periode-limit/notifications/health";
const TRANSACTIONS_PATH: &str = "/api/periode-limit/transactions";
/// Bytes a notification frame takes on the wire, roughly: for deciding whether hot users'
/// stalled streams were pushed past the server's 256 KiB cap.
const NOTIFICATION_BYTES: u64 = 240;
const SLOW_CONSUMER_BYTES: u64 = 256 * 1024;

const USAGE: &str = "\
periode-soak: soak a running periode-sse (see scripts/soak.sh)

  --addr ADDR          server address (default 127.0.0.1:8989)
  --seconds N          length of the load phase (default 60)
  --users N            users 1..=N, created and given a limit first (default 200)
  --streams N          well-behaved streams (default 2400)
  --stalled N          streams that never read (default 300)
  --churn N            streams that keep connecting and dropping (default 200)
  --rate N             transactions per second over all users (default 300)
  --hot-users N        users 1..=N also get --hot-rate each (default 2)
  --hot-rate N         extra transactions per second per hot user (default 70)
  --garbage-rate N     malformed clients per second (default 40)
  --heartbeat SECS     the server's --heartbeat, to check the gaps (default 2)
  --pid PID            the server's pid, for the descriptor and RSS checks
The HS256 key is JWT_SECRET, as for the server.
";

struct Args {
    addr: SocketAddr,
    seconds: u64,
    users: u64,
    streams: usize,
    stalled: usize,
    churn: usize,
    rate: u64,
    hot_users: u64,
    hot_rate: u64,
    garbage_rate: u64,
    heartbeat_secs: u64,
    pid: Option<u32>,
    secret: Vec<u8>,
}

fn parse_args() -> Result<Option<Args>, String> {
    use lexopt::prelude::*;
    let mut args = Args {
        addr: "127.0.0.1:8989".parse().map_err(|_| "default address")?,
        seconds: 60,
        users: 200,
        streams: 2400,
        stalled: 300,
        churn: 200,
        rate: 300,
        hot_users: 2,
        hot_rate: 70,
        garbage_rate: 40,
        heartbeat_secs: 2,
        pid: None,
        secret: std::env::var("JWT_SECRET").map_err(|_| "set JWT_SECRET")?.into_bytes(),
    };
    let mut parser = lexopt::Parser::from_env();
    let number = |parser: &mut lexopt::Parser, name: &str| -> Result<u64, String> {
        let value = parser.value().map_err(|e| e.to_string())?;
        value.string().ok().and_then(|s| s.parse().ok()).ok_or(format!("{name} needs a number"))
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("addr") => {
                let value = parser.value().map_err(|e| e.to_string())?;
                args.addr = value
                    .string()
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--addr needs an address like 127.0.0.1:8989")?;
            }
            Long("seconds") => args.seconds = number(&mut parser, "--seconds")?,
            Long("users") => args.users = number(&mut parser, "--users")?.max(1),
            Long("streams") => args.streams = number(&mut parser, "--streams")? as usize,
            Long("stalled") => args.stalled = number(&mut parser, "--stalled")? as usize,
            Long("churn") => args.churn = number(&mut parser, "--churn")? as usize,
            Long("rate") => args.rate = number(&mut parser, "--rate")?,
            Long("hot-users") => args.hot_users = number(&mut parser, "--hot-users")?,
            Long("hot-rate") => args.hot_rate = number(&mut parser, "--hot-rate")?,
            Long("garbage-rate") => args.garbage_rate = number(&mut parser, "--garbage-rate")?,
            Long("heartbeat") => args.heartbeat_secs = number(&mut parser, "--heartbeat")?.max(1),
            Long("pid") => args.pid = Some(number(&mut parser, "--pid")? as u32),
            Long("help") | Short('h') => {
                print!("{USAGE}");
                return Ok(None);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    args.hot_users = args.hot_users.min(args.users);
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("periode-soak: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(report) => {
            report.print();
            if report.failures.is_empty() {
                println!("soak: PASS");
                ExitCode::SUCCESS
            } else {
                println!("soak: FAIL ({} problems)", report.failures.len());
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("periode-soak: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---- small tools -----------------------------------------------------------------------------

/// One request on a fresh blocking connection; returns the status and body.
fn blocking_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> io::Result<(u16, String)> {
    http::call(addr, method, path, token, body).map(|r| (r.status, r.body))
}
/// A metric's value from `/metrics` text (the first line that starts with `name`).
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

// ---- the clients -----------------------------------------------------------------------------

/// One client that wants every notification of its user, across reconnects.
struct Logical {
    user: u64,
    /// Id of the last notification seen; None until the first snapshot.
    last_id: Option<u64>,
    received: u64,
    errors: Vec<String>,
    /// Reconnects on its own every few seconds during the run.
    comes_and_goes: bool,
    /// Writes junk after its request (which the server must ignore).
    sends_junk: bool,
    /// Live connection's slab key, if any.
    conn: Option<usize>,
    reconnect_at: Option<Instant>,
    connects: u64,
    unexpected_closes: u64,
}

enum Kind {
    Stream { logical: usize, close_at: Option<Instant> },
    Churn { close_at: Instant, reset: bool },
    Garbage { expect: Option<&'static str>, deadline: Instant },
    Poster { inflight: Option<u64> },
}

struct Conn {
    sock: TcpStream,
    gen: u32,
    kind: Kind,
    out: Vec<u8>,
    raw: Vec<u8>,
    /// De-chunked body not yet split into events.
    text: Vec<u8>,
    head_done: bool,
    status: u16,
    opened: Instant,
    last_heartbeat: Option<Instant>,
    closed: bool,
}

#[derive(Default)]
struct Report {
    failures: Vec<String>,
    lines: Vec<String>,
}

impl Report {
    fn fail(&mut self, message: String) {
        self.failures.push(message);
    }

    fn note(&mut self, message: String) {
        self.lines.push(message);
    }

    fn print(&self) {
        for line in &self.lines {
            println!("soak: {line}");
        }
        for (i, failure) in self.failures.iter().enumerate() {
            if i == 40 {
                println!("soak: FAIL … and {} more", self.failures.len() - 40);
                break;
            }
            println!("soak: FAIL {failure}");
        }
    }
}

#[derive(Default)]
struct Stats {
    posts_sent: u64,
    posts_created: BTreeMap<u64, u64>,
    /// Users for which a POST got no answer: their final id is unknown.
    uncertain_users: BTreeMap<u64, u64>,
    garbage_sent: u64,
    garbage_answered: u64,
    idle_posters_closed: u64,
    churned: u64,
    stream_refusals: BTreeMap<u16, u64>,
    worst_heartbeat_gap: Duration,
    worst_gap_user: u64,
    streams_opened: u64,
}

struct Soak<'a> {
    args: &'a Args,
    poll: Poll,
    conns: slab::Slab<Conn>,
    next_gen: u32,
    logical: Vec<Logical>,
    user_tokens: BTreeMap<u64, String>,
    admin_token: String,
    rng: Rng,
    stats: Stats,
    report: Report,
    /// Posting and the planned disconnects stop when this is false.
    loading: bool,
}

fn make_token(key: usize, gen: u32) -> Token {
    Token(((gen as usize) << 32) | (key & 0xFFFF_FFFF))
}

impl<'a> Soak<'a> {
    /// The well-behaved clients, spread over the users; connected during the ramp-up.
    fn add_logical_clients(&mut self) {
        for i in 0..self.args.streams {
            let user = 1 + (i as u64 % self.args.users);
            self.logical.push(Logical {
                user,
                last_id: None,
                received: 0,
                errors: Vec::new(),
                comes_and_goes: i % 3 == 0,
                sends_junk: i % 10 == 1,
                conn: None,
                reconnect_at: None,
                connects: 0,
                unexpected_closes: 0,
            });
        }
    }

    /// Hands the owed transactions to idle posters: hot users first.
    fn post_on_credit(&mut self, credit: &mut Credits) {
        for key in self.idle_posters() {
            let user = if credit.hot >= 1.0 {
                credit.hot -= 1.0;
                1 + self.rng.below(self.args.hot_users)
            } else if credit.post >= 1.0 {
                credit.post -= 1.0;
                1 + self.rng.below(self.args.users)
            } else {
                break;
            };
            self.post(key, user);
        }
    }

    fn open(&mut self, kind: Kind, request: Vec<u8>) -> Option<usize> {
        let mut sock = match TcpStream::connect(self.args.addr) {
            Ok(sock) => sock,
            Err(e) => {
                self.report.fail(format!("connect: {e}"));
                return None;
            }
        };
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
            self.report.fail(format!("register: {e}"));
            return None;
        }
        entry.insert(Conn {
            sock,
            gen,
            kind,
            out: request,
            raw: Vec::new(),
            text: Vec::new(),
            head_done: false,
            status: 0,
            opened: Instant::now(),
            last_heartbeat: None,
            closed: false,
        });
        Some(key)
    }

    fn stream_request(&self, user: u64, last_id: Option<u64>, junk: bool) -> Vec<u8> {
        let token = &self.user_tokens[&user];
        let resume = last_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        let mut raw = format!(
            "GET {STREAM_PATH} HTTP/1.1\r\nHost: soak\r\nAccept: text/event-stream\r\n\
             Authorization: Bearer {token}\r\n{resume}\r\n"
        )
        .into_bytes();
        if junk {
            raw.extend_from_slice(b"\x00\xffjunk after the request\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        }
        raw
    }

    fn connect_logical(&mut self, index: usize, now: Instant) {
        let l = &self.logical[index];
        let request = self.stream_request(l.user, l.last_id, l.sends_junk);
        let close_at = if self.loading && l.comes_and_goes {
            Some(now + self.rng.millis(2_000, 8_000))
        } else {
            None
        };
        let key = self.open(Kind::Stream { logical: index, close_at }, request);
        let l = &mut self.logical[index];
        l.conn = key;
        l.reconnect_at = if key.is_none() { Some(now + Duration::from_millis(200)) } else { None };
        l.connects += 1;
        self.stats.streams_opened += 1;
    }

    fn spawn_churner(&mut self, now: Instant) {
        let user = 1 + self.rng.below(self.args.users);
        let request = self.stream_request(user, None, false);
        let close_at = now + self.rng.millis(50, 1_500);
        let reset = self.rng.below(2) == 0;
        self.open(Kind::Churn { close_at, reset }, request);
    }

    fn spawn_garbage(&mut self, now: Instant) {
        self.stats.garbage_sent += 1;
        let deadline = now + Duration::from_secs(5);
        let (expect, raw): (Option<&'static str>, Vec<u8>) = match self.rng.below(6) {
            0 => {
                let len = 1 + self.rng.below(300) as usize;
                let mut raw = vec![0x7f];
                raw.extend((0..len).map(|_| self.rng.next_u64() as u8));
                raw.extend_from_slice(b"\r\n\r\n");
                (Some("HTTP/1.1 400 "), raw)
            }
            1 => {
                let raw = format!(
                    "GET {HEALTH_PATH} HTTP/1.1\r\nHost: soak\r\nX-Big: {}\r\n\r\n",
                    "b".repeat(9000)
                );
                (Some("HTTP/1.1 431 "), raw.into_bytes())
            }
            2 => {
                let raw = format!(
                    "POST {TRANSACTIONS_PATH} HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {}\r\n\
                     Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                    self.admin_token
                );
                (Some("HTTP/1.1 501 "), raw.into_bytes())
            }
            3 => {
                let raw = "POST /api/periode-limit/transactions HTTP/1.1\r\nHost: soak\r\nContent-Length: 1\r\n\
                           Content-Length: 2\r\n\r\nxx";
                (Some("HTTP/1.1 400 "), raw.as_bytes().to_vec())
            }
            4 => (None, format!("GET {STREAM_PATH} HTTP/1.1\r\nHost: soak\r\nAuthor").into_bytes()),
            _ => (None, Vec::new()),
        };
        // The half-request and the empty one leave as soon as their bytes are out (on_event).
        self.open(Kind::Garbage { expect, deadline }, raw);
    }

    fn spawn_poster(&mut self) -> Option<usize> {
        self.open(Kind::Poster { inflight: None }, Vec::new())
    }

    /// Sends one transaction on an idle poster.
    fn post(&mut self, key: usize, user: u64) {
        let body = format!(r#"{{"userId":{user},"amount":1,"description":"soak"}}"#);
        let raw = format!(
            "POST {TRANSACTIONS_PATH} HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.admin_token,
            body.len()
        );
        if let Some(conn) = self.conns.get_mut(key) {
            conn.out.extend_from_slice(raw.as_bytes());
            conn.kind = Kind::Poster { inflight: Some(user) };
            self.stats.posts_sent += 1;
        }
        self.flush(key);
    }

    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        while !conn.out.is_empty() && !conn.closed {
            match conn.sock.write(&conn.out) {
                Ok(0) => break,
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Not yet connected, or gone: the read side will tell.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
                Err(_) => break,
            }
        }
    }

    /// Reads until WouldBlock (bounded); returns whether the peer closed.
    fn read(&mut self, key: usize) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let mut buf = [0u8; 32 * 1024];
        for _ in 0..64 {
            match conn.sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => conn.raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return false,
                Err(_) => return true,
            }
        }
        false
    }

    fn close(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            conn.closed = true;
            let _ = self.poll.registry().deregister(&mut conn.sock);
            if let Kind::Stream { logical, .. } = conn.kind {
                if self.logical[logical].conn == Some(key) {
                    self.logical[logical].conn = None;
                }
            }
        }
    }

    fn on_event(&mut self, key: usize, now: Instant) {
        self.flush(key);
        if let Some(conn) = self.conns.get(key) {
            if matches!(conn.kind, Kind::Garbage { expect: None, .. }) && conn.out.is_empty() {
                self.close(key);
                return;
            }
        }
        let eof = self.read(key);
        let Some(conn) = self.conns.get_mut(key) else { return };
        if !conn.head_done {
            if let Some(at) = http::find(&conn.raw, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&conn.raw[..at]).to_string();
                conn.status =
                    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
                match conn.kind {
                    Kind::Stream { .. } | Kind::Churn { .. } => {
                        conn.head_done = true;
                        conn.raw.drain(..at + 4);
                        if !chunked && conn.status == 200 {
                            self.report.fail("a stream answer is not chunked".into());
                        }
                    }
                    // Posters and garbage parse whole responses below.
                    Kind::Poster { .. } | Kind::Garbage { .. } => {}
                }
            }
        }
        match self.conns[key].kind {
            Kind::Stream { logical, .. } => self.on_stream_bytes(key, logical, eof, now),
            Kind::Churn { .. } => {
                let conn = &mut self.conns[key];
                if conn.head_done && conn.status != 200 {
                    *self.stats.stream_refusals.entry(conn.status).or_default() += 1;
                }
                conn.raw.clear();
                if eof {
                    self.close(key);
                }
            }
            Kind::Garbage { expect, .. } => {
                if eof {
                    let conn = &self.conns[key];
                    if let Some(want) = expect {
                        if conn.raw.starts_with(want.as_bytes()) {
                            self.stats.garbage_answered += 1;
                        } else {
                            let got = String::from_utf8_lossy(&conn.raw[..conn.raw.len().min(60)]);
                            self.report.fail(format!("garbage: expected {want:?}, got {got:?}"));
                        }
                    }
                    self.close(key);
                }
            }
            Kind::Poster { .. } => self.on_poster_bytes(key, eof),
        }
    }

    fn on_poster_bytes(&mut self, key: usize, eof: bool) {
        loop {
            let conn = &mut self.conns[key];
            let Some(head_end) = http::find(&conn.raw, b"\r\n\r\n").map(|i| i + 4) else { break };
            let head = String::from_utf8_lossy(&conn.raw[..head_end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if conn.raw.len() < head_end + length {
                break;
            }
            let status: u16 =
                head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let body = String::from_utf8_lossy(&conn.raw[head_end..head_end + length]).to_string();
            conn.raw.drain(..head_end + length);
            let Kind::Poster { inflight } = conn.kind else { return };
            conn.kind = Kind::Poster { inflight: None };
            match inflight {
                Some(user) if status == 201 => {
                    *self.stats.posts_created.entry(user).or_default() += 1;
                }
                Some(user) => {
                    self.report.fail(format!("POST for user {user}: {status} {body}"));
                    *self.stats.uncertain_users.entry(user).or_default() += 1;
                }
                None => self.report.fail(format!("an answer to no request: {status} {body}")),
            }
        }
        if eof {
            if let Kind::Poster { inflight: Some(user) } = self.conns[key].kind {
                self.report
                    .fail(format!("a POST for user {user} got no answer (connection closed)"));
                *self.stats.uncertain_users.entry(user).or_default() += 1;
            } else {
                // An idle keep-alive connection is closed after 15 s (SPEC §5): a new one
                // takes its place.
                self.stats.idle_posters_closed += 1;
            }
            self.close(key);
        }
    }

    fn on_stream_bytes(&mut self, key: usize, logical: usize, eof: bool, now: Instant) {
        let conn = &mut self.conns[key];
        if conn.head_done && conn.status != 200 {
            let status = conn.status;
            *self.stats.stream_refusals.entry(status).or_default() += 1;
            self.logical[logical].errors.push(format!("stream answered {status}"));
            self.close(key);
            self.logical[logical].reconnect_at = Some(now + Duration::from_millis(500));
            return;
        }
        dechunk(conn);
        let heartbeat_limit =
            Duration::from_secs(self.args.heartbeat_secs) + Duration::from_secs(2);
        while let Some(end) = http::find(&conn.text, b"\n\n") {
            let block: Vec<u8> = conn.text.drain(..end + 2).collect();
            let mut event = "";
            let mut id = None;
            let mut data = "";
            let block = String::from_utf8_lossy(&block).to_string();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v;
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse::<u64>().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v;
                }
            }
            let l = &mut self.logical[logical];
            match event {
                "heartbeat" => {
                    let since = conn.last_heartbeat.unwrap_or(conn.opened);
                    let gap = now.saturating_duration_since(since);
                    if gap > self.stats.worst_heartbeat_gap {
                        self.stats.worst_heartbeat_gap = gap;
                        self.stats.worst_gap_user = l.user;
                    }
                    if gap > heartbeat_limit && l.errors.len() < 5 {
                        l.errors.push(format!("heartbeat gap {gap:?}"));
                    }
                    conn.last_heartbeat = Some(now);
                }
                "notification" => {
                    l.received += 1;
                    let Some(id) = id else {
                        l.errors.push("a notification without an id".into());
                        continue;
                    };
                    if !data.contains(&format!("\"userId\":{},", l.user)) {
                        l.errors.push(format!("notification {id} for another user: {data}"));
                    }
                    match l.last_id {
                        None => {}
                        Some(last) if id == last + 1 => {}
                        Some(last) if l.errors.len() < 5 => {
                            let what =
                                if id <= last { "repeated or out of order" } else { "a gap" };
                            l.errors.push(format!("id {id} after {last}: {what}"));
                        }
                        Some(_) => {}
                    }
                    l.last_id = Some(id);
                }
                _ => {}
            }
        }
        if eof {
            let l = &mut self.logical[logical];
            l.unexpected_closes += 1;
            if l.errors.len() < 5 {
                l.errors.push(format!(
                    "the server closed the stream after {:?}",
                    conn.opened.elapsed()
                ));
            }
            self.close(key);
            self.logical[logical].reconnect_at = Some(now + Duration::from_millis(100));
        }
    }

    fn on_timers(&mut self, now: Instant) {
        enum Due {
            Reconnect(usize),
            Churn(bool),
            GarbageTimeout(Option<&'static str>),
        }
        let mut due = Vec::new();
        for (key, conn) in self.conns.iter() {
            match conn.kind {
                Kind::Stream { logical, close_at: Some(at) } if at <= now && self.loading => {
                    due.push((key, Due::Reconnect(logical)));
                }
                Kind::Churn { close_at, reset } if close_at <= now => {
                    due.push((key, Due::Churn(reset)));
                }
                Kind::Garbage { deadline, expect } if deadline <= now => {
                    due.push((key, Due::GarbageTimeout(expect)));
                }
                _ => {}
            }
        }
        let mut churned = 0;
        for (key, what) in due {
            match what {
                Due::Reconnect(logical) => {
                    self.close(key);
                    let delay = self.rng.millis(0, 300);
                    self.logical[logical].reconnect_at = Some(now + delay);
                }
                Due::Churn(reset) => {
                    if reset {
                        let _ = sock::set_linger_zero(&self.conns[key].sock);
                    }
                    self.close(key);
                    churned += 1;
                }
                Due::GarbageTimeout(expect) => {
                    self.report
                        .fail(format!("garbage: no answer and no close within 5 s ({expect:?})"));
                    self.close(key);
                }
            }
        }
        self.stats.churned += churned;
        if self.loading {
            for _ in 0..churned {
                self.spawn_churner(now);
            }
        }
        for index in 0..self.logical.len() {
            let l = &self.logical[index];
            if l.conn.is_none() && l.reconnect_at.is_some_and(|at| at <= now) {
                self.connect_logical(index, now);
            }
        }
    }

    fn poll_once(&mut self, events: &mut Events, timeout: Duration) -> Result<(), String> {
        if let Err(e) = self.poll.poll(events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("poll: {e}"));
            }
        }
        let now = Instant::now();
        for event in events.iter() {
            let key = event.token().0 & 0xFFFF_FFFF;
            let gen = (event.token().0 >> 32) as u32;
            if self.conns.get(key).is_some_and(|c| c.gen == gen) {
                self.on_event(key, now);
            }
        }
        Ok(())
    }

    fn idle_posters(&self) -> Vec<usize> {
        self.conns
            .iter()
            .filter(|(_, c)| matches!(c.kind, Kind::Poster { inflight: None }) && c.out.is_empty())
            .map(|(k, _)| k)
            .collect()
    }

    fn posters_busy(&self) -> bool {
        self.conns.iter().any(|(_, c)| matches!(c.kind, Kind::Poster { inflight: Some(_) }))
    }
}

/// Moves complete chunks from `raw` to `text`.
fn dechunk(conn: &mut Conn) {
    loop {
        let Some(line_end) = http::find(&conn.raw, b"\r\n") else { return };
        let size_text = String::from_utf8_lossy(&conn.raw[..line_end]).to_string();
        let Ok(size) = usize::from_str_radix(size_text.trim(), 16) else {
            conn.raw.clear();
            return;
        };
        if conn.raw.len() < line_end + 2 + size + 2 {
            return;
        }
        let start = line_end + 2;
        conn.text.extend_from_slice(&conn.raw[start..start + size]);
        conn.raw.drain(..start + size + 2);
        if size == 0 {
            return;
        }
    }
}

/// A blocking stream request on a socket with a 4 KiB receive buffer that is never read
/// after its head: the stalled consumer.
fn open_stalled(addr: SocketAddr, request: &[u8]) -> io::Result<std::net::TcpStream> {
    let mut sock = sock::connect_small_rcvbuf(addr, 4096)?;
    sock.write_all(request)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = [0u8; 256];
    let n = sock.read(&mut head)?;
    if !head[..n].starts_with(b"HTTP/1.1 200") {
        return Err(io::Error::other(format!(
            "stalled stream answered {:?}",
            String::from_utf8_lossy(&head[..n.min(40)])
        )));
    }
    Ok(sock)
}

/// Whether the server has closed a stalled socket: drain what it holds and look for the end.
fn was_closed(sock: &mut std::net::TcpStream) -> bool {
    if sock.set_nonblocking(true).is_err() {
        return true;
    }
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..10_000 {
        match sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    false
}

// ---- the run ---------------------------------------------------------------------------------

fn run(args: &Args) -> Result<Report, String> {
    let (setup, mut report) = set_up(args)?;
    let mut soak = Soak {
        args,
        poll: Poll::new().map_err(|e| format!("poll: {e}"))?,
        conns: slab::Slab::with_capacity(args.streams + args.churn + 256),
        next_gen: 1,
        logical: Vec::with_capacity(args.streams),
        user_tokens: setup.user_tokens,
        admin_token: setup.admin_token,
        rng: Rng::new(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id())),
        stats: Stats::default(),
        report: std::mem::take(&mut report),
        loading: true,
    };
    let mut stalled = open_stalled_streams(&mut soak);
    soak.add_logical_clients();
    let mut events = Events::with_capacity(4096);
    let rss_peak = load(&mut soak, &mut events)?;
    wind_down(&mut soak, &mut events)?;
    // What every user's last id must be now.
    let final_ids: BTreeMap<u64, u64> = (1..=args.users)
        .map(|user| {
            let created = soak.stats.posts_created.get(&user).copied().unwrap_or(0);
            (user, setup.base_ids[&user] + created)
        })
        .collect();
    catch_up(&mut soak, &mut events, &final_ids)?;
    let silent_streams = settle(&mut soak, &mut events)?;

    let mut report = std::mem::take(&mut soak.report);
    report_load(&mut report, &soak, stalled.len(), silent_streams);
    check_clients(&mut report, &soak, &final_ids);
    check_stalled(&mut report, &soak, &mut stalled);
    // Everyone leaves; the server must come back to its idle footprint.
    let keys: Vec<usize> = soak.conns.iter().map(|(k, _)| k).collect();
    for key in keys {
        soak.close(key);
    }
    drop(stalled);
    check_back_to_idle(&mut report, &soak, setup.idle, rss_peak);
    Ok(report)
}

/// What the set-up leaves for the run.
struct Setup {
    admin_token: String,
    user_tokens: BTreeMap<u64, String>,
    /// Each user's latest notification id before the load.
    base_ids: BTreeMap<u64, u64>,
    /// The server's descriptors and RSS (KiB) once idle, when its pid is known.
    idle: Option<(usize, u64)>,
}

/// Waits for the server, creates the users and their limits, and reads the idle footprint.
fn set_up(args: &Args) -> Result<(Setup, Report), String> {
    let admin_token = token::admin(6 * 3600, &args.secret);
    let mut report = Report::default();

    // The server is up and takes our key.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match blocking_request(args.addr, "GET", "/metrics", &admin_token, "") {
            Ok((200, _)) => break,
            Ok((status, body)) => return Err(format!("/metrics answered {status}: {body}")),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("the server at {} does not answer: {e}", args.addr)),
        }
    }

    // Users 1..=N, active, each with a limit from 2000 to 2100 (no month edge mid-run).
    let setup_started = Instant::now();
    let mut user_tokens = BTreeMap::new();
    for user in 1..=args.users {
        create_user(args.addr, &admin_token, user)?;
        user_tokens.insert(user, token::user(user, 6 * 3600, &args.secret));
    }
    report.note(format!("{} users set up in {:?}", args.users, setup_started.elapsed()));
    // The id each user's notifications have reached: one per limit PUT so far. Read it back
    // from a resume, so that a database that was not fresh still works.
    let base_ids = last_notification_ids(args.addr, &user_tokens)?;

    // Idle: once the set-up connections have all closed.
    let quiet = wait_until_no_connections(args.addr, &admin_token, Duration::from_secs(10));
    if !quiet.is_some_and(|n| n <= 1) {
        report.fail(format!("set-up connections still open after 10 s: {quiet:?}"));
    }
    let idle = args.pid.and_then(|pid| Some((procfs::fd_count(pid)?, rss_kib(pid)?)));
    if let Some((fds, rss)) = idle {
        report.note(format!("server idle: {fds} descriptors, {} MiB RSS", rss / 1024));
    }
    Ok((Setup { admin_token, user_tokens, base_ids, idle }, report))
}

/// User `user`, active, with a limit from 2000 to 2100.
fn create_user(addr: SocketAddr, admin_token: &str, user: u64) -> Result<(), String> {
    let (status, body) = blocking_request(
        addr,
        "PUT",
        &format!("/api/admin/users/{user}"),
        admin_token,
        r#"{"active":true}"#,
    )
    .map_err(|e| format!("create user {user}: {e}"))?;
    if status != 200 {
        return Err(format!("create user {user}: {status} {body}"));
    }
    let limit = format!(
        r#"{{"userId":{user},"maxLimit":1000000000,"alertPercentage":80,"periodeStart":"2000-01-01T00:00:00.000Z","periodeEnd":"2100-01-01T00:00:00.000Z"}}"#
    );
    let (status, body) = blocking_request(addr, "PUT", "/api/periode-limit", admin_token, &limit)
        .map_err(|e| format!("limit for user {user}: {e}"))?;
    if status != 200 {
        return Err(format!("limit for user {user}: {status} {body}"));
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    procfs::status_kib(pid, "VmRSS:")
}

/// A stalled stream: its user, whether that user is hot, and the socket never read again.
type Stalled = (u64, bool, std::net::TcpStream);

/// Stalled streams: half on the hot users, whose traffic will push them past the cap.
fn open_stalled_streams(soak: &mut Soak) -> Vec<Stalled> {
    let args = soak.args;
    let mut stalled = Vec::with_capacity(args.stalled);
    for i in 0..args.stalled {
        let user = if args.hot_users > 0 && i % 2 == 0 {
            1 + (i as u64 / 2) % args.hot_users
        } else {
            1 + soak.rng.below(args.users)
        };
        let request = soak.stream_request(user, None, false);
        match open_stalled(args.addr, &request) {
            Ok(sock) => stalled.push((user, user <= args.hot_users && i % 2 == 0, sock)),
            Err(e) => soak.report.fail(format!("stalled stream for user {user}: {e}")),
        }
    }
    stalled
}

/// How many transactions and garbage clients are owed, from the rates and the time passed.
#[derive(Default)]
struct Credits {
    post: f64,
    hot: f64,
    garbage: f64,
}

/// The load phase: ramps the streams up, keeps churners, garbage and posters going until
/// `--seconds` have passed. Returns the server's peak RSS (KiB) seen meanwhile.
fn load(soak: &mut Soak, events: &mut Events) -> Result<u64, String> {
    let args = soak.args;
    let started = Instant::now();
    let load_end = started + Duration::from_secs(args.seconds);
    let mut next_logical = 0;
    let posters: usize = 8;
    for _ in 0..posters {
        soak.spawn_poster();
    }
    let mut churners_started = 0;
    let mut credit = Credits::default();
    let mut last_tick = Instant::now();
    let mut rss_peak = 0;
    let mut next_sample = started;
    while Instant::now() < load_end {
        soak.poll_once(events, Duration::from_millis(5))?;
        let now = Instant::now();
        // Ramp up: 200 new streams per turn.
        for _ in 0..200 {
            if next_logical < soak.logical.len() {
                soak.connect_logical(next_logical, now);
                next_logical += 1;
            }
        }
        while churners_started < args.churn.min(next_logical) {
            soak.spawn_churner(now);
            churners_started += 1;
        }
        let dt = now.saturating_duration_since(last_tick).as_secs_f64();
        last_tick = now;
        credit.post = (credit.post + dt * args.rate as f64).min(200.0);
        credit.hot = (credit.hot + dt * (args.hot_rate * args.hot_users) as f64).min(200.0);
        credit.garbage = (credit.garbage + dt * args.garbage_rate as f64).min(50.0);
        while credit.garbage >= 1.0 {
            credit.garbage -= 1.0;
            soak.spawn_garbage(now);
        }
        soak.post_on_credit(&mut credit);
        // Keep the poster count up (a closed one was reported as a failure).
        let live_posters =
            soak.conns.iter().filter(|(_, c)| matches!(c.kind, Kind::Poster { .. })).count();
        for _ in live_posters..posters {
            soak.spawn_poster();
        }
        soak.on_timers(now);
        if now >= next_sample {
            next_sample = now + Duration::from_secs(1);
            if let Some(rss) = args.pid.and_then(rss_kib) {
                rss_peak = rss_peak.max(rss);
            }
        }
    }
    Ok(rss_peak)
}

/// No more posts, churn or planned disconnects; every in-flight POST answered.
fn wind_down(soak: &mut Soak, events: &mut Events) -> Result<(), String> {
    soak.loading = false;
    let keys: Vec<usize> = soak
        .conns
        .iter()
        .filter(|(_, c)| matches!(c.kind, Kind::Churn { .. } | Kind::Garbage { .. }))
        .map(|(k, _)| k)
        .collect();
    for key in keys {
        soak.close(key);
    }
    for l in soak.logical.iter_mut() {
        l.comes_and_goes = false;
    }
    let keys: Vec<usize> = soak.conns.iter().map(|(k, _)| k).collect();
    for key in keys {
        if let Kind::Stream { logical, .. } = soak.conns[key].kind {
            soak.conns[key].kind = Kind::Stream { logical, close_at: None };
        }
    }
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while soak.posters_busy() && Instant::now() < drain_deadline {
        soak.poll_once(events, Duration::from_millis(10))?;
    }
    if soak.posters_busy() {
        soak.report.fail("POSTs still unanswered 10 s after the load stopped".into());
    }
    Ok(())
}

/// Reconnects the disconnected and reads until everyone is at their user's last id (20 s).
fn catch_up(
    soak: &mut Soak,
    events: &mut Events,
    final_ids: &BTreeMap<u64, u64>,
) -> Result<(), String> {
    let catch_up_deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = Instant::now();
        soak.on_timers(now);
        for index in 0..soak.logical.len() {
            if soak.logical[index].conn.is_none() && soak.logical[index].reconnect_at.is_none() {
                soak.logical[index].reconnect_at = Some(now);
            }
        }
        let behind = soak
            .logical
            .iter()
            .filter(|l| {
                !soak.stats.uncertain_users.contains_key(&l.user)
                    && l.last_id != Some(final_ids[&l.user])
            })
            .count();
        if behind == 0 || now >= catch_up_deadline {
            return Ok(());
        }
        soak.poll_once(events, Duration::from_millis(10))?;
    }
}

/// One heartbeat period more, so that every stream shows its heartbeats still come; returns
/// how many streams stayed silent longer than a period and two seconds.
fn settle(soak: &mut Soak, events: &mut Events) -> Result<usize, String> {
    let args = soak.args;
    let settle_end = Instant::now() + Duration::from_secs(args.heartbeat_secs + 1);
    while Instant::now() < settle_end {
        soak.poll_once(events, Duration::from_millis(10))?;
    }
    let now = Instant::now();
    let heartbeat_limit = Duration::from_secs(args.heartbeat_secs) + Duration::from_secs(2);
    let mut silent_streams = 0;
    for (_, conn) in soak.conns.iter() {
        if let Kind::Stream { logical, .. } = conn.kind {
            let since = conn.last_heartbeat.unwrap_or(conn.opened);
            if now.saturating_duration_since(since) > heartbeat_limit {
                silent_streams += 1;
                let l = &mut soak.logical[logical];
                if l.errors.len() < 5 {
                    l.errors.push(format!(
                        "no heartbeat for {:?} at the end",
                        now.saturating_duration_since(since)
                    ));
                }
            }
        }
    }
    Ok(silent_streams)
}

/// The figures of the load: clients, transactions, refusals, notifications, heartbeats.
fn report_load(report: &mut Report, soak: &Soak, stalled: usize, silent_streams: usize) {
    let (args, stats) = (soak.args, &soak.stats);
    let total_created: u64 = stats.posts_created.values().sum();
    report.note(format!(
        "load: {} s, {} well-behaved clients ({} connects), {} stalled, {} churned, {} garbage \
         ({} answered as expected)",
        args.seconds,
        soak.logical.len(),
        stats.streams_opened,
        stalled,
        stats.churned,
        stats.garbage_sent,
        stats.garbage_answered
    ));
    report.note(format!(
        "transactions: {} sent, {} created (201), {} users uncertain; {} idle keep-alive \
         posters closed by the server",
        stats.posts_sent,
        total_created,
        stats.uncertain_users.len(),
        stats.idle_posters_closed
    ));
    if !stats.stream_refusals.is_empty() {
        report.note(format!("stream refusals by status: {:?}", stats.stream_refusals));
    }
    let notifications: u64 = soak.logical.iter().map(|l| l.received).sum();
    report.note(format!(
        "notifications received by well-behaved clients: {notifications}; worst heartbeat gap \
         {:?} (user {}); streams silent at the end: {silent_streams}",
        stats.worst_heartbeat_gap, stats.worst_gap_user
    ));
}

/// Every well-behaved client saw every notification of its user, in order, none twice.
fn check_clients(report: &mut Report, soak: &Soak, final_ids: &BTreeMap<u64, u64>) {
    let stats = &soak.stats;
    let mut clients_with_errors = 0;
    for (i, l) in soak.logical.iter().enumerate() {
        let want = final_ids[&l.user];
        let mut problems = l.errors.clone();
        if !stats.uncertain_users.contains_key(&l.user) && l.last_id != Some(want) {
            problems.push(format!("ended at id {:?}, the user's last is {want}", l.last_id));
        }
        if !problems.is_empty() {
            clients_with_errors += 1;
            report.fail(format!(
                "client {i} (user {}, {} connects, {} closed by the server): {}",
                l.user,
                l.connects,
                l.unexpected_closes,
                problems.join("; ")
            ));
        }
    }
    report.note(format!(
        "well-behaved clients with every notification in order, none twice, none missing: {} of {}",
        soak.logical.len() - clients_with_errors,
        soak.logical.len()
    ));
}

/// Stalled streams: were those of the hot users cut as slow consumers?
fn check_stalled(report: &mut Report, soak: &Soak, stalled: &mut [Stalled]) {
    let (args, stats) = (soak.args, &soak.stats);
    let stalled_hot = stalled.iter().filter(|(_, hot, _)| *hot).count();
    let mut hot_cut = 0;
    let mut other_cut = 0;
    for (_, hot, sock) in stalled.iter_mut() {
        if was_closed(sock) {
            if *hot {
                hot_cut += 1;
            } else {
                other_cut += 1;
            }
        }
    }
    let hot_bytes = stats
        .posts_created
        .iter()
        .filter(|(u, _)| **u <= args.hot_users)
        .map(|(_, n)| n * NOTIFICATION_BYTES)
        .min()
        .unwrap_or(0);
    let metrics = blocking_request(args.addr, "GET", "/metrics", &soak.admin_token, "")
        .map(|(_, body)| body)
        .unwrap_or_default();
    let slow = metric(&metrics, "periode_sse_disconnects_total{reason=\"slow_consumer\"}");
    report.note(format!(
        "stalled streams cut: {hot_cut} of {stalled_hot} on hot users (each pushed ~{} KiB), \
         {other_cut} others; server counted {slow:?} slow consumers",
        hot_bytes / 1024
    ));
    if hot_bytes > 2 * SLOW_CONSUMER_BYTES && hot_cut < stalled_hot {
        report.fail(format!(
            "{} stalled streams of hot users were sent ~{} KiB and are still open",
            stalled_hot - hot_cut,
            hot_bytes / 1024
        ));
    }
}

/// Once every client has left: no connection, descriptors and RSS back near idle, still up.
fn check_back_to_idle(report: &mut Report, soak: &Soak, idle: Option<(usize, u64)>, rss_peak: u64) {
    let args = soak.args;
    let open_conns =
        wait_until_no_connections(args.addr, &soak.admin_token, Duration::from_secs(15));
    if !open_conns.is_some_and(|n| n <= 1) {
        report.fail(format!("connections still open 15 s after every client left: {open_conns:?}"));
    }
    if let (Some(pid), Some((idle_fds, idle_rss))) = (args.pid, idle) {
        std::thread::sleep(Duration::from_millis(500));
        let fds = procfs::fd_count(pid).unwrap_or(0);
        let rss = rss_kib(pid).unwrap_or(0);
        report.note(format!(
            "server after the load: {fds} descriptors (idle {idle_fds}), RSS {} MiB (idle {} MiB, \
             peak {} MiB)",
            rss / 1024,
            idle_rss / 1024,
            rss_peak / 1024
        ));
        if fds > idle_fds + 2 {
            report.fail(format!("descriptor leak: {fds} open after the load, {idle_fds} idle"));
        }
        // The allocator may keep some of the peak; a leak keeps growing with the load.
        let allowed = idle_rss + (24 * 1024).max(rss_peak.saturating_sub(idle_rss) / 2);
        if rss > allowed {
            report.fail(format!(
                "RSS not back near idle: {} MiB after, {} MiB idle, {} MiB peak",
                rss / 1024,
                idle_rss / 1024,
                rss_peak / 1024
            ));
        }
    }
    match blocking_request(args.addr, "GET", HEALTH_PATH, &soak.user_tokens[&1], "") {
        Ok((200, _)) => report.note("server still up: /health 200".into()),
        Ok((status, body)) => report.fail(format!("/health after the soak: {status} {body}")),
        Err(e) => report.fail(format!("the server is down after the soak: {e}")),
    }
}

/// Polls `/metrics` until the server holds no connection but the one asking; returns the last
/// count seen.
fn wait_until_no_connections(addr: SocketAddr, admin: &str, within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    let mut open = None;
    while Instant::now() < deadline {
        let body = blocking_request(addr, "GET", "/metrics", admin, "").map(|(_, b)| b);
        open = metric(&body.unwrap_or_default(), "periode_sse_connections_open");
        if open.is_some_and(|n| n <= 1) {
            // The descriptors of the connections just reaped are closed by now.
            std::thread::sleep(Duration::from_millis(200));
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    open
}

/// Every user's latest notification id, asked 16 users at a time.
fn last_notification_ids(
    addr: SocketAddr,
    tokens: &BTreeMap<u64, String>,
) -> Result<BTreeMap<u64, u64>, String> {
    let users: Vec<(u64, &String)> = tokens.iter().map(|(u, t)| (*u, t)).collect();
    let mut ids = BTreeMap::new();
    for batch in users.chunks(16) {
        let results: Vec<Result<(u64, u64), String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|(user, token)| {
                    scope.spawn(move || last_notification_id(addr, token).map(|id| (*user, id)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".to_string())))
                .collect()
        });
        for result in results {
            let (user, id) = result?;
            ids.insert(user, id);
        }
    }
    Ok(ids)
}

/// The id of `token`'s user's latest notification: resume from 0 and read what comes.
fn last_notification_id(addr: SocketAddr, token: &str) -> Result<u64, String> {
    let mut sock = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    let raw = format!(
        "GET {STREAM_PATH} HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {token}\r\n\
         Last-Event-ID: 0\r\n\r\n"
    );
    sock.write_all(raw.as_bytes()).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    // Read until the replay has stopped arriving (200 ms of quiet after `connected`).
    while Instant::now() < deadline {
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) if http::find(&got, b"event: connected").is_some() => break,
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&got);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("resume stream answered {:?}", &text[..text.len().min(60)]));
    }
    Ok(text.lines().filter_map(|l| l.strip_prefix("id: ")?.parse().ok()).max().unwrap_or(0))
}
