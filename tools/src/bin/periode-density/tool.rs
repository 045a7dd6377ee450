//! The load generator's loop: one `mio::Poll` over every stream and every POST connection.
//! It opens streams within a window, decodes what they receive, runs the fan-out rounds and
//! the writers, and counts; the phases in `main.rs` decide when each of those runs and read
//! the figures it leaves in its parts (`Connect`, `Fanout`, `Counts`, `Writers`).

use crate::args::{Args, Target};
use crate::stats::Sample;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use periode_kit::wire::{self, Chunked, Kind, SseScan};
use periode_kit::{setup, sock};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum StreamPhase {
    Connecting,
    Head,
    Body,
    Dead,
}

pub struct Stream {
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
    /// When its last heartbeat arrived (for the lateness of the next one).
    last_beat: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum HttpRole {
    Probe,
    Writer { user: u64 },
}

/// A keep-alive client connection for POSTs: the fan-out probe, or one writer.
pub struct HttpConn {
    sock: Option<TcpStream>,
    /// The node it POSTs to.
    addr: SocketAddr,
    connected: bool,
    role: HttpRole,
    out: Vec<u8>,
    out_sent: usize,
    inbuf: Vec<u8>,
    busy: bool,
    sent_at: Instant,
}

/// One fan-out measurement: a POST and the notification it causes on every stream of a user.
pub struct Round {
    id: u32,
    sent_at: Instant,
    expected: usize,
    got: usize,
    first: Option<Duration>,
    last: Option<Duration>,
}

pub const HTTP_BASE: usize = 1 << 40;
pub const FANOUT_USER: u64 = 1;
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(3);

/// The loop's state, in parts that each serve one phase.
pub struct Tool {
    pub poll: Poll,
    pub target: Target,
    /// Where streams connect, round-robin: `--addr`, then every `--node`.
    pub nodes: Vec<SocketAddr>,
    /// Token of user `u` at index `u - 1` (empty strings for nchan).
    pub tokens: Vec<String>,
    pub streams: Vec<Stream>,
    /// POST connections: the fan-out probe at 0, then the writers.
    pub https: Vec<HttpConn>,
    scratch: Vec<u8>,
    kinds: Vec<Kind>,
    pub failures: BTreeMap<String, u64>,
    pub connect: Connect,
    pub fanout: Fanout,
    pub counts: Counts,
    pub writers: Writers,
}

/// The connect phase: opening streams within a window, and how fast they came up.
pub struct Connect {
    pub spread: bool,
    pub window: usize,
    pub opening: bool,
    pub next_open: usize,
    pub in_flight: usize,
    pub established: usize,
    pub dead: usize,
    pub open_started: Instant,
    pub target_99: usize,
    pub time_to_99: Option<Duration>,
    pub time_to_all: Option<Duration>,
    pub first_event: Sample,
}

/// Fan-out rounds: one POST for `FANOUT_USER`, then its notification on every stream.
pub struct Fanout {
    pub round: Option<Round>,
    pub next_round_id: u32,
    pub probes_left: usize,
    pub next_probe_at: Instant,
    pub probe_gap: Duration,
    pub to_last: Sample,
    pub to_first: Sample,
    /// Last stream minus first stream of each round: the server's own fan-out time, without
    /// the write's commit in front of it.
    pub first_to_last: Sample,
    pub post_response: Sample,
    pub timeouts: u64,
    /// The streams of `FANOUT_USER`.
    pub user_streams: Vec<usize>,
}

/// Events received, and heartbeats counted while a heartbeat window is open.
#[derive(Default)]
pub struct Counts {
    pub heartbeats: u64,
    pub counting: bool,
    pub counted: u64,
    pub notifications: u64,
    /// The server's heartbeat period, to tell how late each heartbeat came.
    pub period: Duration,
    /// While set, each heartbeat's lateness (time since the stream's previous heartbeat,
    /// minus the period, at least zero) on streams of users other than the fan-out user,
    /// whose notifications move their heartbeats.
    pub lateness_on: bool,
    pub lateness: Sample,
}

/// The writers phase.
pub struct Writers {
    pub on: bool,
    /// Paced writers: one write every `every`, the next due at `next_at`.
    pub every: Option<Duration>,
    pub next_at: Instant,
    pub ok: u64,
    pub failed: u64,
    pub latency: Sample,
}

impl Tool {
    /// Every stream and POST connection, none opened yet.
    pub fn new(args: &Args, users: u64, tokens: Vec<String>, spread: bool) -> Result<Tool, String> {
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
                last_beat: None,
            })
            .collect();
        let user_streams = (0..args.streams).filter(|&i| streams[i].user == FANOUT_USER).collect();
        let roles = std::iter::once(HttpRole::Probe)
            .chain((0..args.writers as u64).map(|w| HttpRole::Writer { user: users + 1 + w }));
        let nodes: Vec<SocketAddr> = std::iter::once(args.addr).chain(args.nodes.clone()).collect();
        let probe_addr = args.write_addr.unwrap_or(args.addr);
        // Writers go where the probe goes, or spread over the nodes when there are several.
        let writer_addr = |w: usize| match args.nodes.is_empty() {
            true => probe_addr,
            false => nodes[w % nodes.len()],
        };
        let https = roles
            .enumerate()
            .map(|(j, role)| HttpConn {
                sock: None,
                addr: if j == 0 { probe_addr } else { writer_addr(j - 1) },
                connected: false,
                role,
                out: Vec::new(),
                out_sent: 0,
                inbuf: Vec::new(),
                busy: false,
                sent_at: now,
            })
            .collect();
        Ok(Tool {
            poll: Poll::new().map_err(|e| format!("epoll: {e}"))?,
            target: args.target,
            nodes,
            tokens,
            streams,
            https,
            scratch: vec![0; 64 * 1024],
            kinds: Vec::new(),
            failures: BTreeMap::new(),
            connect: Connect {
                spread,
                window: args.window,
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
            },
            fanout: Fanout {
                round: None,
                next_round_id: 0,
                probes_left: 0,
                next_probe_at: now,
                probe_gap: Duration::from_millis(args.fanout_gap_ms),
                to_last: Sample::default(),
                to_first: Sample::default(),
                first_to_last: Sample::default(),
                post_response: Sample::default(),
                timeouts: 0,
                user_streams,
            },
            counts: Counts {
                period: Duration::from_secs(args.heartbeat_secs),
                ..Counts::default()
            },
            writers: Writers {
                on: false,
                every: None,
                next_at: Instant::now(),
                ok: 0,
                failed: 0,
                latency: Sample::default(),
            },
        })
    }

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
    pub fn pump(&mut self, deadline: Instant, done: impl Fn(&Tool) -> bool) {
        let mut events = Events::with_capacity(4096);
        loop {
            let now = Instant::now();
            self.tick(now);
            if done(self) || now >= deadline {
                return;
            }
            let mut wait = deadline - now;
            if self.writers.on && self.writers.every.is_some() {
                wait = wait.min(self.writers.next_at.saturating_duration_since(now));
            } else if self.fanout.probes_left > 0
                || self.fanout.round.is_some()
                || self.connect.opening
            {
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
        if self.connect.opening {
            self.open_more(now);
        }
        if let Some(round) = &self.fanout.round {
            if now.duration_since(round.sent_at) > ROUND_TIMEOUT {
                let missing = round.expected - round.got;
                self.fanout.round = None;
                self.fanout.timeouts += 1;
                *self.failures.entry("fanout_event_missing".into()).or_insert(0) += missing as u64;
                self.fanout.next_probe_at = now + Duration::from_millis(500);
            }
        }
        if self.fanout.probes_left > 0
            && self.fanout.round.is_none()
            && now >= self.fanout.next_probe_at
            && self.https.first().is_some_and(|h| !h.busy)
        {
            self.start_round(now);
        }
        if self.writers.on {
            if let Some(every) = self.writers.every {
                // Open loop: writes leave on schedule; if every writer is still waiting for an
                // answer, the schedule slips and the achieved rate shows it.
                while now >= self.writers.next_at {
                    let Some(j) = (1..self.https.len()).find(|&j| !self.https[j].busy) else {
                        break;
                    };
                    if let HttpRole::Writer { user } = self.https[j].role {
                        let req = self.post_request(user);
                        self.http_send(j, req, now);
                    }
                    self.writers.next_at += every;
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
        while self.connect.in_flight < self.connect.window
            && self.connect.next_open < self.streams.len()
        {
            let i = self.connect.next_open;
            self.connect.next_open += 1;
            let from = self.connect.spread.then(|| Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8));
            let to = self.nodes[i % self.nodes.len()];
            let mut sock = match sock::connect_from(from, to) {
                Ok(s) => s,
                Err(e) => {
                    self.fail(format!("connect_error:{}", errno_name(&e)));
                    self.streams[i].phase = StreamPhase::Dead;
                    self.connect.dead += 1;
                    if e.raw_os_error() == Some(libc::EMFILE) {
                        self.connect.opening = false;
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
                self.connect.dead += 1;
                continue;
            }
            let s = &mut self.streams[i];
            s.sock = Some(sock);
            s.phase = StreamPhase::Connecting;
            s.started = now;
            self.connect.in_flight += 1;
        }
        if self.connect.next_open >= self.streams.len() {
            self.connect.opening = false;
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
            self.connect.in_flight -= 1;
            self.connect.established += 1;
            self.connect.first_event.push(now.duration_since(s.started));
            let elapsed = now.duration_since(self.connect.open_started);
            if self.connect.established == self.connect.target_99 {
                self.connect.time_to_99 = Some(elapsed);
            }
            if self.connect.established == self.streams.len() {
                self.connect.time_to_all = Some(elapsed);
            }
        }
        let s = &mut self.streams[i];
        match kind {
            Kind::Heartbeat => {
                self.counts.heartbeats += 1;
                if self.counts.counting {
                    self.counts.counted += 1;
                }
                if let Some(prev) = s.last_beat.replace(now) {
                    if self.counts.lateness_on && s.user != FANOUT_USER {
                        let gap = now.duration_since(prev);
                        self.counts.lateness.push(gap.saturating_sub(self.counts.period));
                    }
                }
            }
            Kind::Notification => {
                self.counts.notifications += 1;
                if let Some(round) = self.fanout.round.as_mut() {
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
            self.connect.in_flight -= 1;
        }
        self.connect.dead += 1;
        self.fail(kind);
    }

    /// Streams of the fan-out user that are reading their body.
    pub fn live_fanout_streams(&self) -> usize {
        let user_streams = self.fanout.user_streams.iter();
        user_streams.filter(|&&i| self.streams[i].phase == StreamPhase::Body).count()
    }

    /// Whether every POST sent has been answered.
    pub fn posts_answered(&self) -> bool {
        self.https.iter().all(|h| !h.busy)
    }

    pub fn live_streams(&self) -> usize {
        self.connect.established
            - self.streams.iter().filter(|s| s.established && s.phase == StreamPhase::Dead).count()
    }

    // ---- fan-out -----------------------------------------------------------------------------

    fn start_round(&mut self, now: Instant) {
        let expected = self
            .fanout
            .user_streams
            .iter()
            .filter(|&&i| self.streams[i].established && self.streams[i].phase == StreamPhase::Body)
            .count();
        if expected == 0 {
            self.fanout.probes_left = 0;
            return;
        }
        self.fanout.next_round_id += 1;
        self.fanout.probes_left -= 1;
        self.fanout.round = Some(Round {
            id: self.fanout.next_round_id,
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
        if let Some(round) = self.fanout.round.take() {
            if let (Some(first), Some(last)) = (round.first, round.last) {
                self.fanout.to_first.push(first);
                self.fanout.to_last.push(last);
                self.fanout.first_to_last.push(last - first);
            }
        }
        self.fanout.next_probe_at = now + self.fanout.probe_gap;
    }

    // ---- POST connections --------------------------------------------------------------------

    fn http_send(&mut self, j: usize, request: Vec<u8>, now: Instant) {
        let h = &mut self.https[j];
        h.out = request;
        h.out_sent = 0;
        h.busy = true;
        h.sent_at = now;
        if h.sock.is_none() {
            match sock::connect_from(None, h.addr) {
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
                Err(_) => {
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
                    self.fanout.post_response.push(took);
                } else {
                    self.fail(format!("post_http_{status}"));
                }
            }
            HttpRole::Writer { .. } => {
                if ok {
                    self.writers.ok += 1;
                    self.writers.latency.push(took);
                } else {
                    self.writers.failed += 1;
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
            Err(_) => return Err("malformed_response_head".into()),
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
