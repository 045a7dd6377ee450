//! Test harness: starts the real binary on a free loopback port with a temporary SQLite file,
//! and talks to it over real TCP sockets. No mocks. Every wait has a deadline; nothing sleeps
//! "long enough".
//!
//! The client side (requests, response readers, the SSE oracle, tokens, raw sockets, `/proc`)
//! is `periode_kit`'s, shared with the tools and benches; the `pub use` lines below are the
//! prelude every feature test gets with `use common::*`.
#![allow(dead_code, unused_imports)]

mod helpers;
pub use helpers::*;
pub mod pg;

pub use periode_kit::http::Response;
pub use periode_kit::rng::Rng;
pub use periode_kit::sock;
pub use periode_kit::sse::Event;
pub use periode_kit::{b64 as kit_b64, token as kit_token};
pub use serde_json::{json, Value};
pub use std::collections::{BTreeSet, HashMap};
pub use std::io::{ErrorKind, Read, Write};
pub use std::net::{SocketAddr, TcpListener, TcpStream};
pub use std::os::unix::fs::PermissionsExt;
pub use std::process::{Command, Stdio};
pub use std::sync::atomic::{AtomicBool, Ordering};
pub use std::sync::Arc;
pub use std::thread;
pub use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::AtomicUsize;
use std::sync::{Condvar, Mutex};

pub const SECRET: &str = "test-secret-of-at-least-thirty-two-bytes!";
pub const BIN: &str = env!("CARGO_BIN_EXE_periode-sse");
pub const STREAM: &str = "/api/periode-limit/notifications/stream";
pub const HEALTH: &str = "/api/periode-limit/notifications/health";
pub const STATUS: &str = "/api/periode-limit/notifications/status";
pub const TRANSACTIONS: &str = "/api/periode-limit/transactions";
pub const LIMIT: &str = "/api/periode-limit";

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("periode-sse-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Log lines the server has written so far, shared with the thread that reads its stderr.
#[derive(Clone, Default)]
pub struct Log(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Log {
    pub fn lines(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().clone()
    }

    /// Waits until a line containing `needle` appears (counting from line `from`); returns
    /// its index.
    pub fn wait_for(&self, needle: &str, from: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.0;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(i) = lines.iter().skip(from).position(|l| l.contains(needle)) {
                return from + i;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no log line containing {needle:?} within {timeout:?}; log:\n{}",
                lines.join("\n")
            );
            lines = cvar.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn len(&self) -> usize {
        self.0 .0.lock().unwrap().len()
    }
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub db: PathBuf,
    pub log: Log,
    pub dir: Arc<TempDir>,
}

pub struct Options<'a> {
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
    pub secret: Option<&'a str>,
    /// Reuse this directory (and its database) instead of a fresh one.
    pub dir: Option<Arc<TempDir>>,
    /// Listen on this address instead of an ephemeral port.
    pub listen: Option<String>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options { args: &[], env: &[], secret: Some(SECRET), dir: None, listen: None }
    }
}

impl Server {
    /// Starts with `--demo` and the test secret.
    pub fn start(args: &[&str]) -> Server {
        let mut all = vec!["--demo"];
        all.extend_from_slice(args);
        Server::start_with(Options { args: &all, ..Options::default() })
    }

    pub fn start_with(opts: Options<'_>) -> Server {
        let dir = opts.dir.unwrap_or_else(|| Arc::new(TempDir::new()));
        let db = dir.0.join("test.db");
        let listen = opts.listen.unwrap_or_else(|| "127.0.0.1:0".to_string());
        let mut cmd = Command::new(BIN);
        if pg::enabled() {
            cmd.arg("--db").arg(pg::database_for(&dir.0));
        } else {
            cmd.arg("--db").arg(&db);
        }
        cmd.arg("--listen").arg(&listen).args(opts.args);
        cmd.env_remove("JWT_SECRET")
            .env_remove("JWT_SECRET_PREVIOUS")
            .env_remove("RUST_LOG")
            .env_remove("PERIODE_SSE_LISTEN")
            .env_remove("PERIODE_SSE_DB");
        if let Some(secret) = opts.secret {
            cmd.env("JWT_SECRET", secret);
        }
        for (k, v) in opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start periode-sse");
        let stderr = child.stderr.take().expect("stderr");
        let log = Log::default();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let shared = log.clone();
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    if let Some(tx) = addr_tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                if std::env::var_os("PERIODE_SSE_TEST_LOG").is_some() {
                    eprintln!("server: {line}");
                }
                let (lock, cvar) = &*shared.0;
                lock.lock().unwrap().push(line);
                cvar.notify_all();
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start listening; log:\n{}", log.lines().join("\n"));
            }
        };
        Server { child, addr, db, log, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code (None if killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "server still running after {timeout:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn token(&self, user: i64) -> String {
        sign(&format!(r#"{{"sub":"{user}","exp":{}}}"#, now_secs() + 3600))
    }

    pub fn admin_token(&self) -> String {
        sign(&format!(r#"{{"sub":"0","role":"admin","exp":{}}}"#, now_secs() + 3600))
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Response {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        request(
            self.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n"),
        )
    }

    pub fn send_json(&self, method: &str, path: &str, token: &str, body: &str) -> Response {
        request(
            self.addr,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    }

    /// Makes a user (admin route) and returns its token.
    pub fn create_user(&self, user: i64) -> String {
        let r = self.send_json(
            "PUT",
            &format!("/api/admin/users/{user}"),
            &self.admin_token(),
            r#"{"active":true}"#,
        );
        assert_eq!(r.status, 200, "create user {user}: {}", r.body);
        self.token(user)
    }

    /// Gives `user` a limit over the current month (via the API).
    pub fn set_month_limit(&self, user: i64, max: i64, alert: f64) -> Response {
        let (start, end) = current_month();
        let body = format!(
            r#"{{"maxLimit":{max},"alertPercentage":{alert},"periodeStart":"{start}","periodeEnd":"{end}"}}"#
        );
        self.send_json("PUT", LIMIT, &self.token(user), &body)
    }

    pub fn open_stream(&self, token: &str) -> Stream {
        Stream::open(self.addr, &format!("Authorization: Bearer {token}\r\n"), STREAM)
    }

    pub fn health(&self, token: &str) -> serde_json::Value {
        let r = self.get(HEALTH, Some(token));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// First and last millisecond of the current UTC month, as RFC 3339 strings.
pub fn current_month() -> (String, String) {
    let days = now_secs().div_euclid(86_400);
    let (y, m, _) = civil_from_days(days);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let last_day = days_from_civil(ny, nm, 1) - 1;
    let (ly, lm, ld) = civil_from_days(last_day);
    (format!("{y:04}-{m:02}-01T00:00:00.000Z"), format!("{ly:04}-{lm:02}-{ld:02}T23:59:59.999Z"))
}

/// Howard Hinnant's civil calendar conversions, written independently of the server's.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A compact HS256 JWS over the given payload JSON, signed with `SECRET`.
pub fn sign(payload: &str) -> String {
    sign_with(r#"{"alg":"HS256","typ":"JWT"}"#, payload, SECRET.as_bytes())
}

pub fn sign_with(header: &str, payload: &str, key: &[u8]) -> String {
    kit_token::sign_with(header, payload, key)
}

/// `header.payload.signature` signed with HMAC-SHA384 (`bits` 384) or -512, whatever `alg`
/// says.
pub fn hmac_token(bits: u32, header: &str, payload: &str, key: &[u8]) -> String {
    let alg = if bits == 384 { kit_token::Hmac::Sha384 } else { kit_token::Hmac::Sha512 };
    kit_token::sign_raw(alg, header, payload, key)
}

/// base64url, unpadded.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    kit_b64::encode(bytes)
}

pub fn b64_decode(text: &str) -> Vec<u8> {
    kit_b64::decode(text).unwrap_or_else(|e| panic!("not base64url ({e}): {text:?}"))
}

/// A JSON body, or a panic that shows it.
pub trait JsonBody {
    fn json(&self) -> serde_json::Value;
}

impl JsonBody for Response {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

impl JsonBody for Event {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data not JSON ({e}): {:?}", self.data))
    }
}

/// Sends raw bytes on a fresh connection and reads one whole response (`Content-Length`
/// framed, or to EOF). 10 s deadline.
pub fn request(addr: SocketAddr, raw: &str) -> Response {
    let mut sock = connect(addr);
    sock.write_all(raw.as_bytes()).expect("send request");
    read_response(&mut sock)
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sock.set_nodelay(true).unwrap();
    sock
}

/// Reads one response from a connection that may carry more (keep-alive); no byte past it
/// may have arrived (a pipelined answer read too far would be lost).
pub fn read_response(sock: &mut TcpStream) -> Response {
    let mut reader = periode_kit::http::Responses::new(&mut *sock);
    let r = reader.next_response().unwrap_or_else(|e| panic!("read a response: {e}"));
    assert!(
        reader.buffered().is_empty(),
        "more bytes than Content-Length (pipelined data read too far): {:?}",
        String::from_utf8_lossy(reader.buffered())
    );
    r
}

/// One keep-alive connection whose answers are read one after another: bytes read past one
/// answer stay buffered for the next (pipelining).
pub struct Responses {
    /// The connection, to write requests on.
    pub sock: TcpStream,
    reader: periode_kit::http::Responses<TcpStream>,
}

impl Responses {
    pub fn new(sock: TcpStream) -> Responses {
        let reader = periode_kit::http::Responses::new(sock.try_clone().expect("clone socket"));
        Responses { sock, reader }
    }

    pub fn open(server: &Server) -> Responses {
        Responses::new(connect(server.addr))
    }

    pub fn send(&mut self, raw: &str) {
        self.sock.write_all(raw.as_bytes()).expect("send");
    }

    /// Bytes read past the last answer returned.
    pub fn buffered(&self) -> &[u8] {
        self.reader.buffered()
    }

    /// The next response (`Content-Length`-framed, or none for 204/304).
    pub fn next_response(&mut self) -> Response {
        self.reader.next_response().unwrap_or_else(|e| panic!("read a response: {e}"))
    }

    /// The next response, which must say its `Content-Length` (a kept connection needs it).
    pub fn read_response(&mut self) -> Response {
        let r = self.next_response();
        assert!(
            r.header("Content-Length").is_some(),
            "keep-alive answer without Content-Length: {r:?}"
        );
        r
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    periode_kit::http::find(haystack, needle)
}

/// A stream response, read chunk by chunk with a deadline, decoded into events.
pub struct Stream {
    pub sock: TcpStream,
    pub head: String,
    pub status: u16,
    /// The body after chunked decoding, through the SSE oracle.
    events: periode_kit::sse::Parser,
    /// Raw bytes read, not yet de-chunked.
    raw: Vec<u8>,
    pub chunked: bool,
    /// The terminating zero-length chunk has been seen.
    pub ended: bool,
    /// The connection reached EOF.
    pub eof: bool,
    /// Every de-chunked body byte, for byte-exact assertions.
    pub body: Vec<u8>,
}

impl Stream {
    pub fn open(addr: SocketAddr, headers: &str, target: &str) -> Stream {
        let mut sock = connect(addr);
        let raw = format!(
            "GET {target} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n{headers}\r\n"
        );
        sock.write_all(raw.as_bytes()).expect("send stream request");
        Stream::from_socket(sock)
    }

    pub fn from_socket(mut sock: TcpStream) -> Stream {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).expect("read stream head");
            assert!(n > 0, "closed before the head: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
        let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
        let mut s = Stream {
            sock,
            head,
            status,
            events: periode_kit::sse::Parser::new(),
            raw: buf[head_end..].to_vec(),
            chunked,
            ended: false,
            eof: false,
            body: Vec::new(),
        };
        s.dechunk();
        s
    }

    pub fn header(&self, name: &str) -> Option<String> {
        periode_kit::http::header_in(&self.head, name)
    }

    fn dechunk(&mut self) {
        if !self.chunked {
            self.events.push(&self.raw);
            self.body.extend_from_slice(&self.raw);
            self.raw.clear();
            return;
        }
        loop {
            if self.ended {
                return;
            }
            let Some(line_end) = find(&self.raw, b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            let data = self.raw[line_end + 2..line_end + 2 + size].to_vec();
            assert_eq!(
                &self.raw[line_end + 2 + size..line_end + 4 + size],
                b"\r\n",
                "chunk not followed by CRLF"
            );
            self.raw.drain(..line_end + 4 + size);
            if size == 0 {
                self.ended = true;
            }
            self.events.push(&data);
            self.body.extend_from_slice(&data);
        }
    }

    /// Reads more bytes; false on EOF or timeout.
    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || self.eof {
            return false;
        }
        self.sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        let mut chunk = [0u8; 16384];
        match self.sock.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.raw.extend_from_slice(&chunk[..n]);
                self.dechunk();
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(_) => {
                self.eof = true;
                false
            }
        }
    }

    /// One complete event out of the body so far, if there is one. `retry:`-only blocks are
    /// returned as events with an empty name and the retry set.
    fn parse_one(&mut self) -> Option<Event> {
        self.events.next_event()
    }

    /// The next event (retry-only blocks included), or None at timeout / end of stream.
    pub fn next_any(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.parse_one() {
                return Some(ev);
            }
            if self.ended || !self.fill(deadline) {
                return self.parse_one();
            }
        }
    }

    /// The next event that carries data (skips retry-only blocks).
    pub fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self.next_any(left)?;
            if ev.event.is_empty() && ev.data.is_empty() {
                continue;
            }
            return Some(ev);
        }
    }

    /// The next event named `name`, skipping others (heartbeats, say).
    pub fn next_named(&mut self, name: &str, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self.next_event(left)?;
            if ev.event == name {
                return Some(ev);
            }
        }
    }

    /// Reads until the response ends (last chunk and EOF) or the deadline passes; returns
    /// whether it ended properly.
    pub fn wait_end(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !(self.ended && self.eof) {
            if !self.fill(deadline) && !self.eof {
                return false;
            }
            if self.eof && !self.ended {
                return false;
            }
        }
        true
    }
}

/// Reads what the process's `/proc` says about it.
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    periode_kit::procfs::status_kib(pid, field)
}

pub fn open_fds(pid: u32) -> usize {
    periode_kit::procfs::fd_count(pid).unwrap_or(0)
}

pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("test.db")
}
