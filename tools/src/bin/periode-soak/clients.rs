//! The soak's loop and the clients it drives: well-behaved streams that reconnect with
//! `Last-Event-ID`, stalled readers, churners, garbage clients and posters, over one `mio::Poll`.

use super::*;

/// One client that wants every notification of its user, across reconnects.
pub struct Logical {
    pub user: u64,
    /// Id of the last notification seen; None until the first snapshot.
    pub last_id: Option<u64>,
    pub received: u64,
    pub errors: Vec<String>,
    /// Reconnects on its own every few seconds during the run.
    pub comes_and_goes: bool,
    /// Writes junk after its request (which the server must ignore).
    pub sends_junk: bool,
    /// Live connection's slab key, if any.
    pub conn: Option<usize>,
    pub reconnect_at: Option<Instant>,
    pub connects: u64,
    pub unexpected_closes: u64,
}

pub enum Kind {
    Stream { logical: usize, close_at: Option<Instant> },
    Churn { close_at: Instant, reset: bool },
    Garbage { expect: Option<&'static str>, deadline: Instant },
    Poster { inflight: Option<u64> },
}

pub struct Conn {
    pub sock: TcpStream,
    pub gen: u32,
    pub kind: Kind,
    pub out: Vec<u8>,
    pub raw: Vec<u8>,
    /// De-chunked body not yet split into events.
    pub text: Vec<u8>,
    pub head_done: bool,
    pub status: u16,
    pub opened: Instant,
    pub last_heartbeat: Option<Instant>,
    pub closed: bool,
}

#[derive(Default)]
pub struct Stats {
    pub posts_sent: u64,
    pub posts_created: BTreeMap<u64, u64>,
    /// Users for which a POST got no answer: their final id is unknown.
    pub uncertain_users: BTreeMap<u64, u64>,
    pub garbage_sent: u64,
    pub garbage_answered: u64,
    pub idle_posters_closed: u64,
    pub churned: u64,
    pub stream_refusals: BTreeMap<u16, u64>,
    pub worst_heartbeat_gap: Duration,
    pub worst_gap_user: u64,
    pub streams_opened: u64,
}

pub struct Soak<'a> {
    pub args: &'a Args,
    pub poll: Poll,
    pub conns: slab::Slab<Conn>,
    pub next_gen: u32,
    pub logical: Vec<Logical>,
    pub user_tokens: BTreeMap<u64, String>,
    pub admin_token: String,
    pub rng: Rng,
    pub stats: Stats,
    pub report: Report,
    /// Posting and the planned disconnects stop when this is false.
    pub loading: bool,
}

pub fn make_token(key: usize, gen: u32) -> Token {
    Token(((gen as usize) << 32) | (key & 0xFFFF_FFFF))
}

impl<'a> Soak<'a> {
    /// The well-behaved clients, spread over the users; connected during the ramp-up.
    pub fn add_logical_clients(&mut self) {
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
    pub fn post_on_credit(&mut self, credit: &mut Credits) {
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

    pub fn open(&mut self, kind: Kind, request: Vec<u8>) -> Option<usize> {
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

    pub fn stream_request(&self, user: u64, last_id: Option<u64>, junk: bool) -> Vec<u8> {
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

    pub fn connect_logical(&mut self, index: usize, now: Instant) {
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

    pub fn spawn_churner(&mut self, now: Instant) {
        let user = 1 + self.rng.below(self.args.users);
        let request = self.stream_request(user, None, false);
        let close_at = now + self.rng.millis(50, 1_500);
        let reset = self.rng.below(2) == 0;
        self.open(Kind::Churn { close_at, reset }, request);
    }

    pub fn spawn_garbage(&mut self, now: Instant) {
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

    pub fn spawn_poster(&mut self) -> Option<usize> {
        self.open(Kind::Poster { inflight: None }, Vec::new())
    }

    /// Sends one transaction on an idle poster.
    pub fn post(&mut self, key: usize, user: u64) {
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

    pub fn flush(&mut self, key: usize) {
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
    pub fn read(&mut self, key: usize) -> bool {
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

    pub fn close(&mut self, key: usize) {
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

    pub fn on_event(&mut self, key: usize, now: Instant) {
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

    pub fn on_poster_bytes(&mut self, key: usize, eof: bool) {
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

    pub fn on_stream_bytes(&mut self, key: usize, logical: usize, eof: bool, now: Instant) {
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

    pub fn on_timers(&mut self, now: Instant) {
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

    pub fn poll_once(&mut self, events: &mut Events, timeout: Duration) -> Result<(), String> {
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

    pub fn idle_posters(&self) -> Vec<usize> {
        self.conns
            .iter()
            .filter(|(_, c)| matches!(c.kind, Kind::Poster { inflight: None }) && c.out.is_empty())
            .map(|(k, _)| k)
            .collect()
    }

    pub fn posters_busy(&self) -> bool {
        self.conns.iter().any(|(_, c)| matches!(c.kind, Kind::Poster { inflight: Some(_) }))
    }
}

/// Moves complete chunks from `raw` to `text`.
pub fn dechunk(conn: &mut Conn) {
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
pub fn open_stalled(addr: SocketAddr, request: &[u8]) -> io::Result<std::net::TcpStream> {
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
pub fn was_closed(sock: &mut std::net::TcpStream) -> bool {
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

/// A stalled stream: its user, whether that user is hot, and the socket never read again.
pub type Stalled = (u64, bool, std::net::TcpStream);
