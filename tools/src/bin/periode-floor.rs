//! periode-floor: the cheapest SSE server we know how to write, as a measuring instrument.
//!
//! Some of our benchmark targets (CPU per heartbeat, fan-out latency, connect rate) may sit
//! below what this machine's loopback TCP allows. This server shows that floor: it speaks the
//! nchan peer's protocol (`GET /sub/{user}` as EventSource, `POST /pub/{user}` with a raw body
//! fanned out to every subscriber of that user, a `heartbeat` event every HEARTBEAT_SECS) and
//! does almost nothing in user space, so whatever `periode-density --target nchan` measures
//! against it is, to a first approximation, the kernel's cost.
//!
//! One thread, one epoll (mio, edge-triggered), no auth, no storage, no per-connection logging:
//! accept in a loop, one read per request, one write per response or event. An event that
//! cannot be written at once is dropped rather than queued (no buffers to account for).
//!
//! Env: PORT (default 18084), HEARTBEAT_SECS (default 30). Binds 127.0.0.1. SIGTERM and SIGINT
//! keep their default disposition: the process just dies, which is all an instrument needs.

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX);
/// The answer to a subscribe and its first event in one write: the density tool counts a stream
/// as established at its first SSE block, and nchan's is this `: hi` comment. No chunked
/// encoding: the body is close-delimited, so an event costs no framing bytes or formatting.
const SUB_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
Cache-Control: no-cache\r\nConnection: close\r\n\r\n: hi\n\n";
/// The same named heartbeat and fixed body as the nchan peer's configuration.
const HEARTBEAT: &[u8] = b"event: heartbeat\ndata: {\"timestamp\":0}\n\n";
const ACCEPTED: &[u8] = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n";
const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
/// A request head that has not ended by this size is not one we speak.
const MAX_REQUEST: usize = 64 * 1024;

enum Role {
    /// Not yet a subscriber: reads requests (publishes, or the one subscribe).
    Http,
    Subscriber {
        user: u64,
    },
}

struct Conn {
    sock: TcpStream,
    /// Bumped each time the slot is reused, so that lazily cleaned lists (the heartbeat
    /// buckets) can tell a stale entry from the slot's current connection.
    generation: u32,
    role: Role,
    /// A request that arrived in pieces; empty (no allocation) in the usual one-read case.
    partial: Vec<u8>,
}

struct Floor {
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    generations: Vec<u32>,
    /// Subscriber slots per user: a publish walks one Vec, nothing else.
    users: HashMap<u64, Vec<usize>>,
    /// Bucket k holds the streams due at every tick t with t % HEARTBEAT_SECS == k: each tick
    /// touches only the streams due, and a stream gets one heartbeat per HEARTBEAT_SECS.
    /// Entries are (slot, generation); closed streams are dropped when their bucket next fires.
    buckets: Vec<Vec<(usize, u32)>>,
    tick: u64,
    scratch: Vec<u8>,
    event: Vec<u8>,
}

fn main() {
    let port: u16 = env_or("PORT", 18084);
    let heartbeat_secs: u64 = env_or("HEARTBEAT_SECS", 30).max(1);
    // 19 000 streams need more than the usual soft limit of 1024 open files.
    periode_sse::server::raise_open_files_limit();
    let mut floor = Floor {
        poll: or_die(Poll::new(), "epoll"),
        listener: or_die(bind(port), "listen on 127.0.0.1"),
        conns: Vec::new(),
        free: Vec::new(),
        generations: Vec::new(),
        users: HashMap::new(),
        buckets: (0..heartbeat_secs).map(|_| Vec::new()).collect(),
        tick: 0,
        scratch: vec![0; MAX_REQUEST],
        event: Vec::new(),
    };
    let registered =
        floor.poll.registry().register(&mut floor.listener, LISTENER, Interest::READABLE);
    or_die(registered, "register the listener");
    eprintln!("listening on 127.0.0.1:{port}");
    floor.run();
}

fn or_die<T>(result: io::Result<T>, what: &str) -> T {
    result.unwrap_or_else(|e| {
        eprintln!("periode-floor: {what}: {e}");
        std::process::exit(1)
    })
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// std binds with a backlog of 128, which drops connections when a thousand arrive at once;
/// listen() again on the bound socket only raises the backlog (as periode-sse does).
fn bind(port: u16) -> io::Result<TcpListener> {
    let std_listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    std_listener.set_nonblocking(true)?;
    let fd = std_listener.into_raw_fd();
    // SAFETY: fd is a bound, listening TCP socket we own; ownership passes to the new listener.
    unsafe {
        libc::listen(fd, 4096);
        Ok(TcpListener::from_std(std::net::TcpListener::from_raw_fd(fd)))
    }
}

impl Floor {
    fn run(&mut self) -> ! {
        let mut events = Events::with_capacity(1024);
        let start = Instant::now();
        loop {
            // Every due tick fires, late ones included, so that heartbeats delivered keep up
            // with heartbeats due even after a long burst of connects.
            let mut next = start + Duration::from_secs(self.tick + 1);
            while Instant::now() >= next {
                self.tick += 1;
                self.heartbeat();
                next = start + Duration::from_secs(self.tick + 1);
            }
            let wait = next.saturating_duration_since(Instant::now());
            match self.poll.poll(&mut events, Some(wait)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                polled => or_die(polled, "epoll_wait"),
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    Token(slot) => self.readable(slot),
                }
            }
        }
    }

    fn accept(&mut self) {
        // Edge-triggered: accept until the queue is empty, or no new event comes.
        loop {
            let mut sock = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // EMFILE and the like: leave the rest queued; the next connect retries.
                Err(_) => return,
            };
            // Without it a second small event written before the client ACKs the first waits
            // for that ACK (delayed up to 40 ms): fan-out latency would measure Nagle.
            let _ = sock.set_nodelay(true);
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.generations.push(0);
                self.conns.len() - 1
            });
            if self.poll.registry().register(&mut sock, Token(slot), Interest::READABLE).is_err() {
                self.free.push(slot);
                continue;
            }
            self.generations[slot] = self.generations[slot].wrapping_add(1);
            let generation = self.generations[slot];
            self.conns[slot] =
                Some(Conn { sock, generation, role: Role::Http, partial: Vec::new() });
        }
    }

    fn readable(&mut self, slot: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) {
            let n = match conn.sock.read(&mut scratch) {
                Ok(0) => {
                    self.close(slot);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(slot);
                    break;
                }
            };
            // A subscriber has nothing more to say; whatever it sends is ignored.
            if matches!(conn.role, Role::Http) {
                if conn.partial.is_empty() {
                    let used = self.requests(slot, &scratch[..n]);
                    self.keep_rest(slot, &scratch[used..n]);
                } else {
                    let mut buf = std::mem::take(&mut conn.partial);
                    buf.extend_from_slice(&scratch[..n]);
                    let used = self.requests(slot, &buf);
                    buf.drain(..used);
                    self.keep_rest(slot, &buf);
                }
            }
            // A read shorter than the buffer emptied the socket: with edge triggering, data
            // arriving later raises a new event, so the usual WouldBlock read is saved.
            if n < scratch.len() {
                break;
            }
        }
        self.scratch = scratch;
    }

    /// Keeps an incomplete request for the next read, if the connection still reads requests.
    fn keep_rest(&mut self, slot: usize, rest: &[u8]) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return };
        if !matches!(conn.role, Role::Http) {
            return;
        }
        if rest.len() >= MAX_REQUEST {
            self.close(slot);
        } else {
            conn.partial.clear();
            conn.partial.extend_from_slice(rest);
        }
    }

    /// Answers every complete request at the front of `data`; returns the bytes they span.
    fn requests(&mut self, slot: usize, data: &[u8]) -> usize {
        let mut used = 0;
        while let Some((method, path, body, len)) = parse_request(&data[used..]) {
            used += len;
            let user = |prefix: &str| path.strip_prefix(prefix).and_then(|u| u.parse::<u64>().ok());
            if let (b"GET", Some(user)) = (method, user("/sub/")) {
                self.subscribe(slot, user);
                return used; // anything after a subscribe is not a request we answer
            }
            let answer = match (method, user("/pub/")) {
                (b"POST", Some(user)) => {
                    self.publish(user, body);
                    ACCEPTED
                }
                _ => NOT_FOUND,
            };
            if !self.send(slot, answer) {
                return used;
            }
        }
        used
    }

    fn subscribe(&mut self, slot: usize, user: u64) {
        if !self.send(slot, SUB_HEAD) {
            return;
        }
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return };
        conn.role = Role::Subscriber { user };
        conn.partial = Vec::new();
        self.users.entry(user).or_default().push(slot);
        // Into the bucket that fired last: its next turn is at most HEARTBEAT_SECS away.
        let due = (self.tick % self.buckets.len() as u64) as usize;
        self.buckets[due].push((slot, conn.generation));
    }

    /// One SSE event, written whole to each of the user's streams.
    fn publish(&mut self, user: u64, body: &[u8]) {
        let mut event = std::mem::take(&mut self.event);
        event.clear();
        event.extend_from_slice(b"event: notification\n");
        // A body line that broke the event in two would be wrong SSE: one data line each.
        for line in body.split(|&b| b == b'\n') {
            event.extend_from_slice(b"data: ");
            event.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
            event.push(b'\n');
        }
        event.push(b'\n');
        // Slots whose write failed are closed after the walk, which edits this user's list.
        let mut failed = Vec::new();
        for &slot in self.users.get(&user).map(Vec::as_slice).unwrap_or_default() {
            if let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) {
                if !write_whole(&mut conn.sock, &event) {
                    failed.push(slot);
                }
            }
        }
        self.event = event;
        for slot in failed {
            self.close(slot);
        }
    }

    fn heartbeat(&mut self) {
        let k = (self.tick % self.buckets.len() as u64) as usize;
        let mut due = std::mem::take(&mut self.buckets[k]);
        let mut failed = Vec::new();
        due.retain(|&(slot, generation)| match self.conns.get_mut(slot).and_then(Option::as_mut) {
            Some(c) if c.generation == generation && matches!(c.role, Role::Subscriber { .. }) => {
                let ok = write_whole(&mut c.sock, HEARTBEAT);
                if !ok {
                    failed.push(slot);
                }
                ok
            }
            _ => false, // closed, or the slot now holds another connection
        });
        for slot in failed {
            self.close(slot);
        }
        self.buckets[k] = due;
    }

    /// One write; false when the connection was closed for it.
    fn send(&mut self, slot: usize, bytes: &[u8]) -> bool {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return false };
        let ok = write_whole(&mut conn.sock, bytes);
        if !ok {
            self.close(slot);
        }
        ok
    }

    fn close(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::take) else { return };
        if let Role::Subscriber { user } = conn.role {
            if let Some(list) = self.users.get_mut(&user) {
                if let Some(at) = list.iter().position(|&s| s == slot) {
                    list.swap_remove(at);
                }
                if list.is_empty() {
                    self.users.remove(&user);
                }
            }
        }
        // Closing the descriptor also removes it from the epoll set: no deregister call.
        drop(conn);
        self.free.push(slot);
    }
}

/// One write of a whole response or event. A write the socket cannot take at all is dropped
/// (nothing queues: true, the stream stays); an error or a partial write, which would break the
/// framing of every later event, means the connection must close (false).
fn write_whole(sock: &mut TcpStream, bytes: &[u8]) -> bool {
    match sock.write(bytes) {
        Ok(n) => n == bytes.len(),
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// (method, path, body, bytes spanned) of a complete request at the front of `data`; `None`
/// while incomplete. Only what the density tool sends: a head, and a body of Content-Length.
fn parse_request(data: &[u8]) -> Option<(&[u8], &str, &[u8], usize)> {
    let head_end = data.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &data[..head_end];
    let mut lines = head.split(|&b| b == b'\n');
    let mut first = lines.next()?.split(|&b| b == b' ');
    let method = first.next()?;
    let path = std::str::from_utf8(first.next()?).unwrap_or("");
    let mut body_len = 0;
    for line in lines {
        if line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:") {
            let value = std::str::from_utf8(&line[15..]).unwrap_or("");
            body_len = value.trim().parse().unwrap_or(0);
        }
    }
    let end = head_end.checked_add(body_len)?;
    let body = data.get(head_end..end)?;
    Some((method, path, body, end))
}
