//! Hostile input over real sockets (SPEC §2 and §5): malformed, oversized, slow and excessive
//! clients, and forged tokens, each against the real binary. Every test states the exact
//! answer it expects, and after each case the server must still answer a well-formed request
//! (`/health` with a valid token on a fresh connection → 200): one bad client may never cost
//! anyone else their service.
//!
//! The tests that wait for the server's 10 s and 15 s timeouts run together in one test, in
//! threads, so the suite costs one timeout period rather than five.

mod common;

use common::*;
use hmac::{KeyInit, Mac};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The demo user: exists, active, with a limit over the current month.
const USER: i64 = 13;

// ---- helpers ---------------------------------------------------------------------------------

/// Sends raw bytes (not necessarily UTF-8) on a fresh connection and reads one response.
fn send_bytes(addr: SocketAddr, raw: &[u8]) -> (TcpStream, Response) {
    let mut sock = connect(addr);
    // The server may answer and stop reading before everything is sent (an oversized body):
    // a failed write is fine as long as the answer arrives.
    let _ = sock.write_all(raw);
    let response = read_response(&mut sock);
    (sock, response)
}

/// The server must still serve a well-formed request, on a fresh connection.
#[track_caller]
fn assert_serving(server: &Server) {
    let r = server.get(HEALTH, Some(&server.token(USER)));
    assert_eq!(
        r.status, 200,
        "after hostile input the server must still answer /health: {}",
        r.body
    );
    assert_eq!(r.json()["userId"], USER);
}

/// Waits until the peer closes (EOF or reset). Ok(bytes read meanwhile) when it closed within
/// `within`, Err(bytes read) when it is still open.
fn wait_closed(sock: &mut TcpStream, within: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(got);
        }
        sock.set_read_timeout(Some(left)).expect("set timeout");
        let mut buf = [0u8; 4096];
        match sock.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(got)
            }
            Err(_) => return Ok(got),
        }
    }
}

/// The answer is a JSON error with this status, says `Connection: close`, and the server then
/// closes the connection with nothing more.
#[track_caller]
fn assert_error_and_close(sock: &mut TcpStream, r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}{}", r.head, r.body);
    assert_json_error(r, what);
    assert_eq!(
        r.header("Connection").map(|v| v.to_ascii_lowercase()),
        Some("close".to_string()),
        "{what}: the answer must say Connection: close"
    );
    match wait_closed(sock, Duration::from_secs(5)) {
        Ok(extra) => assert!(
            extra.is_empty(),
            "{what}: bytes after the answer: {:?}",
            String::from_utf8_lossy(&extra)
        ),
        Err(_) => panic!("{what}: the connection stayed open after a {status}"),
    }
}

#[track_caller]
fn assert_json_error(r: &Response, what: &str) {
    assert_eq!(
        r.header("Content-Type").as_deref(),
        Some("application/json"),
        "{what}: errors are JSON"
    );
    let body = r.json();
    assert!(body["error"].is_string() && body["message"].is_string(), "{what}: error body {body}");
}

/// One request on a fresh connection; expects `status`, a JSON error, and a close.
#[track_caller]
fn expect_rejection(server: &Server, raw: &[u8], status: u16, what: &str) {
    let (mut sock, r) = send_bytes(server.addr, raw);
    assert_error_and_close(&mut sock, &r, status, what);
    assert_serving(server);
}

fn get_with_headers(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n")
}

fn post_json(path: &str, token: &str, body: &str, keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive { "" } else { "Connection: close\r\n" };
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{connection}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn metric(server: &Server, name: &str) -> u64 {
    let r = server.get("/metrics", Some(&server.admin_token()));
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{}", r.body))
}

/// Polls until `check` holds or `within` passes.
fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Reads responses one after another from a connection that carries several (pipelining):
/// unlike `read_response`, bytes read past one answer are kept for the next.
struct Responses {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Responses {
    fn new(sock: TcpStream) -> Responses {
        Responses { sock, buf: Vec::new() }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 16384];
        let n = self
            .sock
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("read: {e}; have {:?}", String::from_utf8_lossy(&self.buf)));
        assert!(n > 0, "closed early; have {:?}", String::from_utf8_lossy(&self.buf));
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// The next `Content-Length`-framed response.
    fn next(&mut self) -> Response {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill();
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < head_end + length {
            self.fill();
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + length]).to_string();
        self.buf.drain(..head_end + length);
        Response { status, head, body }
    }
}

/// A small deterministic generator (xorshift64*), so a failing case reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---- slow and oversized requests -------------------------------------------------------------

/// SPEC §5: a request may arrive in any number of pieces; only its total time is bounded.
#[test]
fn a_request_a_byte_at_a_time_is_answered() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let mut sock = connect(server.addr);
    let get = get_with_headers(HEALTH, &format!("Authorization: Bearer {token}\r\n"));
    let post = post_json(TRANSACTIONS, &token, r#"{"amount":7,"description":"byte"}"#, true);
    for raw in [get.as_bytes(), &post[..]] {
        for byte in raw {
            sock.write_all(std::slice::from_ref(byte)).expect("send a byte");
            thread::sleep(Duration::from_millis(1));
        }
        let r = read_response(&mut sock);
        if raw == get.as_bytes() {
            assert_eq!(r.status, 200, "GET a byte at a time: {}", r.body);
            assert_eq!(r.json()["userId"], USER);
        } else {
            assert_eq!(r.status, 201, "POST a byte at a time: {}", r.body);
            assert_eq!(r.json()["transaction"]["amount"], 7);
            assert_eq!(r.json()["transaction"]["description"], "byte");
        }
    }
    assert_serving(&server);
}

/// SPEC §5: bodies up to 64 KiB are served (written 64 KiB at a time, pipelined with the next
/// request); one byte more is 413 and close, decided from the head alone.
#[test]
fn requests_64_kib_at_a_time() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    // A valid transaction padded with JSON whitespace to exactly `len` bytes.
    let padded = |len: usize| {
        let core = r#"{"amount":3,"description":"big"}"#;
        let mut body = String::from(&core[..core.len() - 1]);
        body.push_str(&" ".repeat(len - core.len()));
        body.push('}');
        assert_eq!(body.len(), len);
        body
    };

    // 60 KiB POST, then a GET behind it, sent in 64 KiB writes.
    let mut raw = post_json(TRANSACTIONS, &token, &padded(60 * 1024), true);
    raw.extend_from_slice(
        get_with_headers(
            HEALTH,
            &format!("Authorization: Bearer {token}\r\nConnection: close\r\n"),
        )
        .as_bytes(),
    );
    let mut sock = connect(server.addr);
    for chunk in raw.chunks(64 * 1024) {
        sock.write_all(chunk).expect("send 64 KiB");
    }
    let mut answers = Responses::new(sock);
    let r = answers.next();
    assert_eq!(r.status, 201, "60 KiB body: {}", r.body);
    assert_eq!(r.json()["transaction"]["amount"], 3);
    let r = answers.next();
    assert_eq!(r.status, 200, "the GET pipelined behind 60 KiB: {}", r.body);

    // Exactly 64 KiB is not "over 64 KiB".
    let (_, r) =
        send_bytes(server.addr, &post_json(TRANSACTIONS, &token, &padded(64 * 1024), false));
    assert_eq!(r.status, 201, "a body of exactly 64 KiB: {}", r.body);

    // 64 KiB + 1 and 70 KiB: 413 and close, body sent or not.
    let raw = post_json(TRANSACTIONS, &token, &padded(64 * 1024 + 1), false);
    expect_rejection(&server, &raw, 413, "64 KiB + 1 body");
    let raw = post_json(TRANSACTIONS, &token, &padded(70 * 1024), false);
    let mut sock = connect(server.addr);
    for chunk in raw.chunks(64 * 1024) {
        if sock.write_all(chunk).is_err() {
            break;
        }
    }
    let r = read_response(&mut sock);
    assert_error_and_close(&mut sock, &r, 413, "70 KiB body");
    // The head alone is enough to refuse it.
    let head_only = format!(
        "POST {TRANSACTIONS} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {}\r\n\r\n",
        70 * 1024
    );
    expect_rejection(&server, head_only.as_bytes(), 413, "70 KiB Content-Length, no body");
    assert_serving(&server);
}

/// SPEC §5: too many headers → 431; a head over 8 KiB → 431 and close; exactly 8 KiB is fine.
#[test]
fn oversized_heads_get_431() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let auth = format!("Authorization: Bearer {token}\r\n");

    let mut many = auth.clone();
    for i in 0..200 {
        many.push_str(&format!("X-Filler-{i}: v\r\n"));
    }
    expect_rejection(&server, get_with_headers(HEALTH, &many).as_bytes(), 431, "200 headers");

    let big = format!("{auth}X-Big: {}\r\n", "a".repeat(9 * 1024));
    expect_rejection(&server, get_with_headers(HEALTH, &big).as_bytes(), 431, "a 9 KiB header");

    // A 9 KiB header whose head never ends: refused as soon as 8 KiB is passed, no timeout.
    let mut sock = connect(server.addr);
    let unfinished = format!("GET {HEALTH} HTTP/1.1\r\nX-Big: {}", "a".repeat(9 * 1024));
    sock.write_all(unfinished.as_bytes()).expect("send");
    let started = Instant::now();
    let r = read_response(&mut sock);
    assert!(started.elapsed() < Duration::from_secs(3), "431 must not wait for a timeout");
    assert_error_and_close(&mut sock, &r, 431, "an unfinished 9 KiB head");

    // Head of exactly 8192 bytes: served; 8193: 431.
    let sized = |len: usize| {
        let fixed = get_with_headers(HEALTH, &format!("{auth}X-Pad: \r\n")).len();
        get_with_headers(HEALTH, &format!("{auth}X-Pad: {}\r\n", "p".repeat(len - fixed)))
    };
    let exact = sized(8 * 1024);
    assert_eq!(exact.len(), 8 * 1024);
    let (_, r) = send_bytes(server.addr, exact.as_bytes());
    assert_eq!(r.status, 200, "a head of exactly 8 KiB: {}", r.body);
    expect_rejection(&server, sized(8 * 1024 + 1).as_bytes(), 431, "an 8 KiB + 1 head");

    // A 10 KiB token is a head over 8 KiB.
    let huge = format!("Authorization: Bearer {}\r\n", "A".repeat(10 * 1024));
    expect_rejection(&server, get_with_headers(HEALTH, &huge).as_bytes(), 431, "a 10 KiB token");
}

// ---- malformed requests ----------------------------------------------------------------------

/// SPEC §5: malformed request line or headers → 400, close.
#[test]
fn malformed_request_lines_and_headers_get_400() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let auth = format!("Authorization: Bearer {token}\r\n");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "NUL in the path",
            format!("GET {HEALTH}\0 HTTP/1.1\r\nHost: t\r\n{auth}\r\n").into_bytes(),
        ),
        (
            "NUL in the middle of the path",
            format!("GET /api/periode-limit/noti\0fications/health HTTP/1.1\r\n{auth}\r\n")
                .into_bytes(),
        ),
        ("0xff in the path", {
            let mut raw = format!("GET {HEALTH}").into_bytes();
            raw.push(0xff);
            raw.extend_from_slice(format!(" HTTP/1.1\r\nHost: t\r\n{auth}\r\n").as_bytes());
            raw
        }),
        ("an overlong UTF-8 slash in the path", {
            let mut raw = b"GET /api".to_vec();
            raw.extend_from_slice(&[0xc0, 0xaf]);
            raw.extend_from_slice(format!("x HTTP/1.1\r\n{auth}\r\n").as_bytes());
            raw
        }),
        (
            "a control character in the path",
            format!("GET {HEALTH}\x01 HTTP/1.1\r\n{auth}\r\n").into_bytes(),
        ),
        (
            "NUL in a header value",
            format!("GET {HEALTH} HTTP/1.1\r\nX-A: a\0b\r\n{auth}\r\n").into_bytes(),
        ),
        (
            "NUL in a header name",
            format!("GET {HEALTH} HTTP/1.1\r\nX-\0A: b\r\n{auth}\r\n").into_bytes(),
        ),
        (
            "a header without a colon",
            format!("GET {HEALTH} HTTP/1.1\r\nNoColonHere\r\n{auth}\r\n").into_bytes(),
        ),
        (
            "a space before the colon",
            format!("GET {HEALTH} HTTP/1.1\r\nHost : t\r\n{auth}\r\n").into_bytes(),
        ),
        (
            "a folded header (obs-fold)",
            format!("GET {HEALTH} HTTP/1.1\r\nX-A: a\r\n b\r\n{auth}\r\n").into_bytes(),
        ),
        (
            "a space inside the target",
            format!("GET /api/periode limit HTTP/1.1\r\n{auth}\r\n").into_bytes(),
        ),
        ("no version", format!("GET {HEALTH}\r\n{auth}\r\n").into_bytes()),
        ("an unknown protocol", format!("GET {HEALTH} SPDY/3\r\n{auth}\r\n").into_bytes()),
        ("a method with a separator", format!("G@T {HEALTH} HTTP/1.1\r\n{auth}\r\n").into_bytes()),
        ("plain text", b"hello there\r\n\r\n".to_vec()),
        ("a TLS ClientHello", {
            let mut raw = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
            raw.extend_from_slice(&[0u8; 64]);
            raw
        }),
    ];
    for (what, raw) in cases {
        expect_rejection(&server, &raw, 400, what);
    }
}

/// Targets with UTF-8 in them (which the request-line parser lets through) are just unknown
/// paths: 404, and the server keeps serving. No input may panic the process (SPEC §5). Targets
/// in absolute form (RFC 9112 §3.2.2) reach the route they name.
#[test]
fn utf8_and_absolute_form_targets() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let auth = format!("Authorization: Bearer {token}\r\n");
    for target in ["/é", "/abcdeé", "/abcdefé", "/abcdefgé", "/ߧߧߧߧߧ", "/api/periode-limit/é?x=ü"]
    {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n");
        let mut sock = connect(server.addr);
        sock.write_all(raw.as_bytes()).expect("send");
        let mut got = Vec::new();
        let _ = sock.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 404 "),
            "GET {target}: expected 404, got {:?}; server log tail:\n{}",
            &text[..text.len().min(80)],
            server.log.lines().iter().rev().take(8).rev().cloned().collect::<Vec<_>>().join("\n")
        );
        assert_serving(&server);
    }
    for target in [
        format!("http://localhost{HEALTH}"),
        format!("HTTP://127.0.0.1:1{HEALTH}"),
        format!("https://x{HEALTH}?access_token={token}"),
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n");
        let (_, r) = send_bytes(server.addr, raw.as_bytes());
        assert_eq!(r.status, 200, "GET {target}: {}", r.body);
    }
}

/// SPEC §5: duplicate conflicting, negative and oversized `Content-Length` → 400, close.
#[test]
fn invalid_content_lengths_get_400() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let body = r#"{"amount":5}"#;
    for (what, lengths) in [
        ("duplicate, conflicting", &["12", "13"][..]),
        ("duplicate, conflicting, reversed", &["13", "12"]),
        ("negative", &["-12"]),
        ("20 digits", &["99999999999999999999"]),
        ("20 digits, small value", &["00000000000000000012"]),
        ("with a sign", &["+12"]),
        ("hexadecimal", &["0xc"]),
        ("two numbers", &["12 12"]),
        ("empty", &[""]),
        ("a fraction", &["12.0"]),
    ] {
        let mut raw =
            format!("POST {TRANSACTIONS} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n");
        for length in lengths {
            raw.push_str(&format!("Content-Length: {length}\r\n"));
        }
        raw.push_str("\r\n");
        raw.push_str(body);
        expect_rejection(&server, raw.as_bytes(), 400, &format!("Content-Length {what}"));
    }
}

/// SPEC §5: `Transfer-Encoding` on a request → 501 (this server's choice), close: never a
/// second way of framing the body (request smuggling).
#[test]
fn transfer_encoding_gets_501() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let chunked_body = "c\r\n{\"amount\":5}\r\n0\r\n\r\n";
    for (what, headers) in [
        ("chunked", "Transfer-Encoding: chunked\r\n"),
        ("chunked beside Content-Length", "Content-Length: 12\r\nTransfer-Encoding: chunked\r\n"),
        ("Content-Length beside chunked", "Transfer-Encoding: chunked\r\nContent-Length: 12\r\n"),
        ("identity", "Transfer-Encoding: identity\r\n"),
        ("gzip, chunked", "Transfer-Encoding: gzip, chunked\r\n"),
        ("upper case name", "TRANSFER-ENCODING: chunked\r\n"),
    ] {
        let raw = format!(
            "POST {TRANSACTIONS} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
             {headers}\r\n{chunked_body}"
        );
        expect_rejection(&server, raw.as_bytes(), 501, &format!("Transfer-Encoding {what}"));
    }
    // Nothing was stored by any of them.
    let status = server.get(STATUS, Some(&token));
    assert_eq!(status.json()["currentSpending"], 267000);
}

/// An HTTP/2 prior-knowledge preface is a request line this server does not speak: 400 and
/// close (SPEC §5, "malformed request line"), never a hang.
#[test]
fn an_http2_preface_gets_400_and_close() {
    let server = Server::start(&[]);
    let mut raw = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // A real client follows the preface with a SETTINGS frame at once.
    raw.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    expect_rejection(&server, &raw, 400, "an HTTP/2 preface");
    expect_rejection(
        &server,
        format!("GET {HEALTH} HTTP/2.0\r\n\r\n").as_bytes(),
        400,
        "a request line claiming HTTP/2.0",
    );
    expect_rejection(
        &server,
        format!("GET {HEALTH} HTTP/1.2\r\n\r\n").as_bytes(),
        400,
        "a request line claiming HTTP/1.2",
    );
}

/// Invalid percent-encoding in the query makes `access_token` unreadable: the token is
/// missing (401 with a bare `Bearer` challenge), not a 400 and not a crash.
#[test]
fn invalid_percent_encoding_is_a_missing_token() {
    let server = Server::start(&[]);
    for query in ["access_token=%zz", "access_token=%4", "access_token=%", "%zz=1"] {
        let r = server.get(&format!("{HEALTH}?{query}"), None);
        assert_eq!(r.status, 401, "?{query}: {}", r.body);
        assert_eq!(r.header("WWW-Authenticate").as_deref(), Some("Bearer"), "?{query}");
        assert_json_error(&r, query);
    }
    // A valid token, percent-encoded, beside a badly encoded parameter: served.
    let token = server.token(USER).replace('.', "%2E");
    let r = server.get(&format!("{HEALTH}?x=%zz&access_token={token}"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("Cache-Control").as_deref(),
        Some("no-store"),
        "an answer to a token in the URL must not be cached"
    );
    assert_serving(&server);
}

/// A 7 KiB token of garbage fits in the head and is simply an invalid token.
#[test]
fn a_7_kib_garbage_token_is_invalid() {
    let server = Server::start(&[]);
    let mut rng = Rng(0x5eed_0007);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
    let garbage: String = (0..7 * 1024)
        .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize] as char)
        .collect();
    let r = server.get(HEALTH, Some(&garbage));
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("WWW-Authenticate").as_deref(), Some(r#"Bearer error="invalid_token""#));
    assert_json_error(&r, "7 KiB garbage token");
    let r = server.get(&format!("{HEALTH}?access_token={garbage}"), None);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("WWW-Authenticate").as_deref(), Some(r#"Bearer error="invalid_token""#));
    assert_serving(&server);
}

/// Deeply nested JSON bodies are a 400 (the parser's depth limit), never a stack overflow.
/// 100 000 levels do not fit in a body at all: that is a 413 before any parsing.
#[test]
fn deeply_nested_json_is_400() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let admin = server.admin_token();
    let arrays = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let objects = |depth: usize| format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    let cases = [
        ("arrays as amount", format!(r#"{{"amount":{}}}"#, arrays(32_000))),
        ("arrays in an unknown member", format!(r#"{{"amount":5,"x":{}}}"#, arrays(32_000))),
        ("objects in an unknown member", format!(r#"{{"amount":5,"x":{}}}"#, objects(10_000))),
        ("the body itself", arrays(32_000)),
        ("unclosed", "[".repeat(60_000)),
        ("just past the depth limit", format!(r#"{{"amount":5,"x":{}}}"#, arrays(200))),
    ];
    for (what, body) in &cases {
        assert!(body.len() <= 64 * 1024);
        let r = server.send_json("POST", TRANSACTIONS, &token, body);
        assert_eq!(r.status, 400, "nested JSON, {what}: {}", r.body);
        assert_json_error(&r, what);
        let r = server.send_json("PUT", LIMIT, &admin, body);
        assert_eq!(r.status, 400, "nested JSON as a limit, {what}: {}", r.body);
        assert_serving(&server);
    }
    let r = server.send_json("POST", TRANSACTIONS, &token, &arrays(100_000));
    assert_eq!(r.status, 413, "100 000 levels is a body over 64 KiB: {}", r.body);
    assert_serving(&server);
    let status = server.get(STATUS, Some(&token));
    assert_eq!(status.json()["currentSpending"], 267000, "nothing was stored");
}

/// Numbers that do not fit i64 are a 400 wherever they appear; nothing is stored.
#[test]
fn numbers_beyond_i64_get_400() {
    let server = Server::start(&[]);
    let user = 77;
    let token = server.create_user(user);
    assert_eq!(server.set_month_limit(user, 1000, 80.0).status, 200);
    let admin = server.admin_token();
    let (start, end) = current_month();
    let transaction_cases = [
        r#"{"amount":9223372036854775808}"#,
        r#"{"amount":18446744073709551616}"#,
        r#"{"amount":99999999999999999999999999999999}"#,
        r#"{"amount":-9223372036854775809}"#,
        r#"{"amount":1e19}"#,
        r#"{"amount":1e400}"#,
        r#"{"amount":-1e400}"#,
        r#"{"amount":9.3e18}"#,
        r#"{"amount":5,"userId":9223372036854775808}"#,
        r#"{"amount":5,"userId":77.5}"#,
        r#"{"amount":5,"userId":1e400}"#,
    ];
    for body in transaction_cases {
        let r = server.send_json("POST", TRANSACTIONS, &token, body);
        assert_eq!(r.status, 400, "user POST {body}: {}", r.body);
        assert_json_error(&r, body);
    }
    for body in [
        r#"{"amount":5,"userId":9223372036854775808}"#,
        r#"{"amount":5,"userId":-9223372036854775809}"#,
        r#"{"amount":5,"userId":1e30}"#,
    ] {
        let r = server.send_json("POST", TRANSACTIONS, &admin, body);
        assert_eq!(r.status, 400, "admin POST {body}: {}", r.body);
    }
    for (max, alert) in [("9223372036854775808", "80"), ("1e30", "80"), ("1000", "1e400")] {
        let body = format!(
            r#"{{"maxLimit":{max},"alertPercentage":{alert},"periodeStart":"{start}","periodeEnd":"{end}"}}"#
        );
        let r = server.send_json("PUT", LIMIT, &token, &body);
        assert_eq!(r.status, 400, "PUT {body}: {}", r.body);
    }
    for id in ["9223372036854775808", "99999999999999999999", "-1", "1e3"] {
        let r = server.send_json(
            "PUT",
            &format!("/api/admin/users/{id}"),
            &admin,
            r#"{"active":true}"#,
        );
        assert_eq!(r.status, 400, "PUT /api/admin/users/{id}: {}", r.body);
    }
    let status = server.get(STATUS, Some(&token));
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["currentSpending"], 0, "nothing was stored");
    assert_eq!(status.json()["maxLimit"], 1000, "the limit was not replaced");

    // i64::MAX itself fits; one more unit would take the total past i64: 400, not a wrap.
    let r = server.send_json("POST", TRANSACTIONS, &token, r#"{"amount":9223372036854775807}"#);
    assert_eq!(r.status, 201, "amount i64::MAX: {}", r.body);
    assert_eq!(r.json()["status"]["currentSpending"], i64::MAX);
    let r = server.send_json("POST", TRANSACTIONS, &token, r#"{"amount":1}"#);
    assert_eq!(r.status, 400, "a total beyond i64: {}", r.body);
    let status = server.get(STATUS, Some(&token));
    assert_eq!(status.json()["currentSpending"], i64::MAX);
    assert_serving(&server);
}

/// Odd but harmless `Last-Event-ID` values: anything not a decimal id is a first connect
/// (snapshot); a huge id means "nothing missed". Never a 500.
#[test]
fn hostile_last_event_ids() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let auth = format!("Authorization: Bearer {token}\r\n");
    for (what, value, snapshot) in [
        ("negative", "-1", true),
        ("beyond u64", "18446744073709551616", true),
        ("a float", "1e3", true),
        ("8 KiB-ish", &"9".repeat(4000)[..], true),
        ("u64::MAX", "18446744073709551615", false),
        ("i64::MAX + 1", "9223372036854775808", false),
    ] {
        let mut s = Stream::open(server.addr, &format!("{auth}Last-Event-ID: {value}\r\n"), STREAM);
        assert_eq!(s.status, 200, "Last-Event-ID {what}");
        let connected = s.next_event(Duration::from_secs(5)).expect("connected");
        assert_eq!(connected.event, "connected", "Last-Event-ID {what}");
        let next = s.next_event(Duration::from_millis(500));
        if snapshot {
            let note = next.unwrap_or_else(|| panic!("Last-Event-ID {what}: no snapshot"));
            assert_eq!(note.event, "notification", "Last-Event-ID {what}");
            assert_eq!(note.json()["currentSpending"], 267000);
        } else {
            assert!(next.is_none(), "Last-Event-ID {what}: nothing is newer, got {next:?}");
        }
    }
    let mut raw = format!("GET {STREAM} HTTP/1.1\r\nHost: t\r\n{auth}Last-Event-ID: ").into_bytes();
    raw.extend_from_slice(&[0xff, 0xfe, b'1']);
    raw.extend_from_slice(b"\r\n\r\n");
    let mut sock = connect(server.addr);
    sock.write_all(&raw).expect("send");
    let mut s = Stream::from_socket(sock);
    assert_eq!(s.status, 200, "Last-Event-ID with invalid UTF-8");
    assert_eq!(s.next_event(Duration::from_secs(5)).expect("connected").event, "connected");
    assert_eq!(s.next_event(Duration::from_secs(5)).expect("snapshot").event, "notification");
    assert_serving(&server);
}

// ---- connection behaviour under abuse --------------------------------------------------------

/// Pipelined requests are answered in order, however many arrive in one write.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let get = get_with_headers(HEALTH, &format!("Authorization: Bearer {token}\r\n"));
    let mut answers = Responses::new(connect(server.addr));
    let raw = get.repeat(300);
    answers.sock.write_all(raw.as_bytes()).expect("send 300 GETs");
    for i in 0..300 {
        let r = answers.next();
        assert_eq!(r.status, 200, "pipelined GET {i}: {}", r.body);
    }
    // Writes pipelined behind each other are each committed and answered, in order.
    let mut raw = Vec::new();
    for i in 1..=40 {
        raw.extend(post_json(TRANSACTIONS, &token, &format!(r#"{{"amount":{i}}}"#), true));
        raw.extend_from_slice(get.as_bytes());
    }
    answers.sock.write_all(&raw).expect("send 40 POST + GET pairs");
    let mut last_id = 0;
    for i in 1..=40 {
        let r = answers.next();
        assert_eq!(r.status, 201, "pipelined POST {i}: {}", r.body);
        let tx = &r.json()["transaction"];
        assert_eq!(tx["amount"], i, "answers in order");
        let id = tx["id"].as_i64().expect("id");
        assert!(id > last_id, "transaction ids increase");
        last_id = id;
        let r = answers.next();
        assert_eq!(r.status, 200, "GET behind POST {i}: {}", r.body);
    }
    let status = server.get(STATUS, Some(&token));
    assert_eq!(status.json()["currentSpending"], 267000 + (1..=40).sum::<i64>());
}

/// A good request followed by garbage on the same connection: the good one is answered, then
/// the garbage gets 400 and the connection closes.
#[test]
fn garbage_after_a_good_request() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let mut raw = get_with_headers(HEALTH, &format!("Authorization: Bearer {token}\r\n"));
    raw.push_str("\x00\x01\x02 garbage garbage\r\n\r\n");
    let mut answers = Responses::new(connect(server.addr));
    answers.sock.write_all(raw.as_bytes()).expect("send");
    let r = answers.next();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = answers.next();
    assert!(answers.buf.is_empty(), "nothing after the 400");
    assert_error_and_close(&mut answers.sock, &r, 400, "garbage behind a good request");
    assert_serving(&server);
}

/// A client may half-close its side once its request is sent (`shutdown(SHUT_WR)`, as
/// `nc -N` or a proxy does); the request is complete and must still be answered. For a write
/// this matters twice: the server commits it, so the client must hear that it did.
#[test]
fn a_half_closed_client_still_gets_its_answer() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let mut sock = connect(server.addr);
    let get = get_with_headers(
        HEALTH,
        &format!("Authorization: Bearer {token}\r\nConnection: close\r\n"),
    );
    sock.write_all(get.as_bytes()).expect("send");
    sock.shutdown(std::net::Shutdown::Write).expect("half-close");
    let r = read_response(&mut sock);
    assert_eq!(r.status, 200, "GET then half-close: {}", r.body);

    let mut sock = connect(server.addr);
    sock.write_all(&post_json(TRANSACTIONS, &token, r#"{"amount":11}"#, false)).expect("send");
    sock.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut got = Vec::new();
    let _ = sock.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    let stored = server.get(STATUS, Some(&token)).json()["currentSpending"].clone();
    assert!(
        text.starts_with("HTTP/1.1 201"),
        "POST then half-close: expected 201, got {text:?} (currentSpending is now {stored}: \
         the write was {}committed)",
        if stored == 267011 { "" } else { "not " }
    );
    assert_serving(&server);
}

/// Random bytes ending in a blank line: each connection gets 400 and a close, the server
/// carries on.
#[test]
fn random_garbage_gets_400() {
    let server = Server::start(&[]);
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for round in 0..60 {
        let len = 1 + rng.below(600) as usize;
        let mut raw: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if round % 3 == 0 {
            // Start like a request, then go wrong.
            let mut prefixed = format!("GET {HEALTH} HTTP/1.1\r\nX-").into_bytes();
            prefixed.extend_from_slice(&raw);
            raw = prefixed;
        }
        // Make sure it cannot be a valid request line.
        raw.insert(0, b'\x7f');
        raw.extend_from_slice(b"\r\n\r\n");
        let (mut sock, r) = send_bytes(server.addr, &raw);
        assert_error_and_close(&mut sock, &r, 400, &format!("garbage round {round}: {raw:?}"));
    }
    assert_serving(&server);
}

/// A stream whose client resets the connection is dropped alone: a sibling stream of the same
/// user still receives the next notification.
#[test]
fn a_reset_stream_costs_no_one_else() {
    let server = Server::start(&["--heartbeat", "1"]);
    let token = server.token(USER);
    let mut keep = server.open_stream(&token);
    let reset = server.open_stream(&token);
    assert_eq!((keep.status, reset.status), (200, 200));
    // SO_LINGER 0: close() sends RST instead of FIN.
    set_linger_zero(&reset.sock);
    drop(reset);
    server.log.wait_for("SSE stream aborted for user 13", 0, Duration::from_secs(5));
    let r = server.send_json("POST", TRANSACTIONS, &token, r#"{"amount":1}"#);
    assert_eq!(r.status, 201);
    let note = keep.next_named("notification", Duration::from_secs(5)).expect("snapshot");
    assert_eq!(note.json()["currentSpending"], 267000);
    let note = keep
        .next_named("notification", Duration::from_secs(5))
        .expect("the live notification after a sibling's reset");
    assert_eq!(note.json()["currentSpending"], 267001);
    assert!(
        eventually(Duration::from_secs(3), || { server.health(&token)["connectedClients"] == 1 }),
        "the reset stream must leave the registry"
    );
}

fn set_linger_zero(sock: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: SO_LINGER reads one `linger` struct from a valid pointer of its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

/// A connection whose receive buffer is tiny, so a client that stops reading fills up fast.
fn connect_with_small_rcvbuf(addr: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else { panic!("the test server listens on IPv4") };
    // SAFETY: plain socket calls on a descriptor we own; every pointer is to a live local of
    // the size passed with it. The descriptor's ownership moves into the TcpStream once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect");
        TcpStream::from_raw_fd(fd)
    }
}

// ---- timeouts --------------------------------------------------------------------------------

/// When a close came, relative to a start, or why it did not.
fn closed_within(
    sock: &mut TcpStream,
    started: Instant,
    window: (f64, f64),
    what: &str,
) -> Result<Vec<u8>, String> {
    let late = Duration::from_secs_f64(window.1);
    match wait_closed(sock, late.saturating_sub(started.elapsed())) {
        Ok(bytes) => {
            let at = started.elapsed().as_secs_f64();
            if at < window.0 {
                return Err(format!("{what}: closed after {at:.1} s, before {} s", window.0));
            }
            Ok(bytes)
        }
        Err(bytes) => Err(format!(
            "{what}: still open after {} s; got {:?}",
            window.1,
            String::from_utf8_lossy(&bytes)
        )),
    }
}

fn expect_408(sock: &mut TcpStream, first_byte: Instant, what: &str) -> Result<(), String> {
    let bytes = closed_within(sock, first_byte, (9.5, 12.5), what)?;
    let text = String::from_utf8_lossy(&bytes);
    if !text.starts_with("HTTP/1.1 408 ") {
        return Err(format!("{what}: expected a 408 before the close, got {text:?}"));
    }
    if !text.contains("application/json") {
        return Err(format!("{what}: the 408 is not a JSON error: {text:?}"));
    }
    Ok(())
}

/// SPEC §5: a started request not complete within 10 s of its first byte → 408 and close,
/// however it trickles; a silent new connection → close after 10 s with no answer; an idle
/// keep-alive connection → close after 15 s with no answer. All at once, in threads, while
/// the server keeps answering everyone else promptly.
#[test]
fn timeouts_slowloris_silent_and_idle() {
    let server = Server::start(&[]);
    let addr = server.addr;
    let token = server.token(USER);
    let mut cases: Vec<thread::JoinHandle<Result<(), String>>> = Vec::new();

    // Half a head, then nothing.
    cases.push(thread::spawn(move || {
        let mut sock = connect(addr);
        sock.write_all(format!("GET {HEALTH} HTTP/1.1\r\nHost: t\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        expect_408(&mut sock, Instant::now(), "half a head")
    }));

    // A whole head, and 10 of the 100 body bytes it announced.
    let t = token.clone();
    cases.push(thread::spawn(move || {
        let mut sock = connect(addr);
        let raw = format!(
            "POST {TRANSACTIONS} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\
             Content-Length: 100\r\n\r\n{{\"amount\":"
        );
        sock.write_all(raw.as_bytes()).map_err(|e| e.to_string())?;
        expect_408(&mut sock, Instant::now(), "a partial body")
    }));

    // A head that trickles in a byte every 700 ms and never ends: the 10 s count from the
    // first byte, not from the last.
    cases.push(thread::spawn(move || {
        let mut sock = connect(addr);
        let first = Instant::now();
        let mut raw = format!("GET {HEALTH} HTTP/1.1\r\nX-Slow: ").into_bytes();
        raw.extend_from_slice(&[b'z'; 100]);
        let mut got = Vec::new();
        for byte in raw {
            if sock.write_all(&[byte]).is_err() {
                break;
            }
            sock.set_read_timeout(Some(Duration::from_millis(700))).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4096];
            match sock.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    break;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
            if first.elapsed() > Duration::from_secs(14) {
                return Err("trickle: no answer within 14 s".into());
            }
        }
        let at = first.elapsed().as_secs_f64();
        let rest = wait_closed(&mut sock, Duration::from_secs(3))
            .map_err(|_| "trickle: not closed after the 408".to_string())?;
        got.extend(rest);
        let text = String::from_utf8_lossy(&got);
        if !text.starts_with("HTTP/1.1 408 ") {
            return Err(format!("trickle: expected 408, got {text:?} after {at:.1} s"));
        }
        if !(9.5..=12.5).contains(&at) {
            return Err(format!("trickle: 408 after {at:.1} s, not about 10 s"));
        }
        Ok(())
    }));

    // A silent connection: closed at about 10 s, with no answer at all.
    cases.push(thread::spawn(move || {
        let mut sock = connect(addr);
        let bytes = closed_within(&mut sock, Instant::now(), (9.5, 12.5), "silent")?;
        if bytes.is_empty() {
            Ok(())
        } else {
            Err(format!("silent: expected no answer, got {:?}", String::from_utf8_lossy(&bytes)))
        }
    }));

    // An idle keep-alive connection: closed about 15 s after its last answer, no answer.
    let t = token.clone();
    cases.push(thread::spawn(move || {
        let mut sock = connect(addr);
        sock.write_all(
            get_with_headers(HEALTH, &format!("Authorization: Bearer {t}\r\n")).as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        let r = read_response(&mut sock);
        let answered = Instant::now();
        if r.status != 200 {
            return Err(format!("idle: first request got {}", r.status));
        }
        let bytes = closed_within(&mut sock, answered, (14.5, 17.5), "idle keep-alive")?;
        if bytes.is_empty() {
            Ok(())
        } else {
            Err(format!("idle: expected no answer, got {:?}", String::from_utf8_lossy(&bytes)))
        }
    }));

    // Meanwhile: 40 more half-finished requests hold connections, and /health stays prompt.
    let mut holders: Vec<TcpStream> = (0..40)
        .map(|i| {
            let mut sock = connect(addr);
            let _ = sock.write_all(format!("GET {HEALTH} HTTP/1.1\r\nX-Hold: {i}").as_bytes());
            sock
        })
        .collect();
    for _ in 0..8 {
        let started = Instant::now();
        assert_serving(&server);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "/health took {:?} while slow clients were connected",
            started.elapsed()
        );
        thread::sleep(Duration::from_millis(1000));
    }
    let mut failures = Vec::new();
    for case in cases {
        match case.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push("a case panicked".into()),
        }
    }
    // The 40 holders were answered 408 too.
    let mut unanswered = 0;
    for sock in &mut holders {
        match wait_closed(sock, Duration::from_secs(3)) {
            Ok(bytes) if bytes.starts_with(b"HTTP/1.1 408 ") => {}
            _ => unanswered += 1,
        }
    }
    if unanswered > 0 {
        failures.push(format!("{unanswered} of 40 half-requests did not get 408 and a close"));
    }
    assert!(failures.is_empty(), "timeout failures:\n{}", failures.join("\n"));
    assert_serving(&server);
}

// ---- connection limits -----------------------------------------------------------------------

/// SPEC §5: a user already holding `--max-conns-per-user` streams gets 429; another user does
/// not; closing a stream makes room again.
#[test]
fn max_conns_per_user_gets_429() {
    let server = Server::start(&["--max-conns-per-user", "2"]);
    let token = server.token(USER);
    let first = server.open_stream(&token);
    let second = server.open_stream(&token);
    assert_eq!((first.status, second.status), (200, 200));
    let mut third = server.open_stream(&token);
    assert_eq!(third.status, 429, "the third stream: {}", third.head);
    let mut body = Vec::new();
    let _ = third.sock.set_read_timeout(Some(Duration::from_millis(300)));
    let _ = third.sock.read_to_end(&mut body);
    let body = String::from_utf8_lossy(&third.body).to_string() + &String::from_utf8_lossy(&body);
    let json: serde_json::Value =
        serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("429 body not JSON: {body:?}"));
    assert!(json["error"].is_string());
    assert_eq!(server.health(&token)["connectedClients"], 2);

    let other = server.create_user(31);
    let s = server.open_stream(&other);
    assert_eq!(s.status, 200, "another user is not limited by user 13's streams");

    drop(first);
    assert!(
        eventually(Duration::from_secs(3), || { server.health(&token)["connectedClients"] == 1 }),
        "a closed stream must free its place"
    );
    let again = server.open_stream(&token);
    assert_eq!(again.status, 200, "room again after a stream closed");
}

/// SPEC §5: with `--max-conns 5` reached, a sixth connection gets 503 and a close; when the
/// five leave, the server serves again.
#[test]
fn max_conns_gets_503_and_recovers() {
    let server = Server::start(&["--max-conns", "5"]);
    let token = server.token(USER);
    let mut open: Vec<TcpStream> = Vec::new();
    // Two silent connections, then three streams (whose answers prove the two were accepted).
    for _ in 0..2 {
        open.push(connect(server.addr));
    }
    let mut streams: Vec<Stream> = (0..3).map(|_| server.open_stream(&token)).collect();
    for s in &streams {
        assert_eq!(s.status, 200);
    }
    for attempt in 0..3 {
        let mut sock = connect(server.addr);
        let r = read_response(&mut sock);
        assert_eq!(r.status, 503, "connection {} of 5 allowed: {}", 6 + attempt, r.body);
        assert_json_error(&r, "503");
        assert!(wait_closed(&mut sock, Duration::from_secs(3)).is_ok(), "closed after 503");
    }
    // The streams are untouched by the refusals.
    for s in &mut streams {
        assert_eq!(
            s.next_named("connected", Duration::from_secs(3)).map(|e| e.event),
            Some("connected".to_string())
        );
    }
    drop(open);
    drop(streams);
    assert!(
        eventually(Duration::from_secs(5), || { server.get(HEALTH, Some(&token)).status == 200 }),
        "the server must serve again once the connections are gone"
    );
    let s = server.open_stream(&token);
    assert_eq!(s.status, 200);
}

/// SPEC §5: a stream that stops reading is dropped once too much is unsent (logged, counted),
/// while a sibling stream of the same user gets every notification in order and its
/// heartbeats on time.
#[test]
fn a_slow_consumer_is_dropped_and_its_sibling_misses_nothing() {
    const POSTS: usize = 2000;
    const POSTERS: usize = 4;
    let server = Server::start(&["--heartbeat", "1"]);
    let token = server.token(USER);

    // The stalled stream: tiny receive buffer, reads its head, then never again.
    let mut stalled = connect_with_small_rcvbuf(server.addr);
    stalled
        .write_all(
            get_with_headers(STREAM, &format!("Authorization: Bearer {token}\r\n")).as_bytes(),
        )
        .expect("send");
    let mut head = [0u8; 64];
    let n = stalled.read(&mut head).expect("stalled stream head");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&head[..n]));

    let mut reader = server.open_stream(&token);
    assert_eq!(reader.status, 200);
    assert_eq!(reader.next_event(Duration::from_secs(5)).expect("connected").event, "connected");
    let snapshot = reader.next_event(Duration::from_secs(5)).expect("snapshot");
    assert_eq!(snapshot.event, "notification");
    let first_id: u64 = snapshot.id.as_deref().and_then(|v| v.parse().ok()).expect("id");
    let first_spending = snapshot.json()["currentSpending"].as_i64().expect("spending");
    assert!(eventually(Duration::from_secs(3), || {
        server.health(&token)["connectedClients"] == 2
    }));

    let test_start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let reading = {
        let done = done.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut notes = Vec::with_capacity(POSTS);
            let mut heartbeats = vec![Instant::now()];
            while notes.len() < POSTS && Instant::now() < deadline {
                let Some(ev) = reader.next_event(Duration::from_secs(5)) else {
                    break;
                };
                match ev.event.as_str() {
                    "heartbeat" => heartbeats.push(Instant::now()),
                    "notification" => {
                        let id: u64 = ev.id.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
                        notes.push((id, ev.json()["currentSpending"].as_i64().unwrap_or(-1)));
                    }
                    _ => {}
                }
            }
            // Keep reading heartbeats until the posting is over.
            while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Some(ev) = reader.next_event(Duration::from_secs(3)) {
                    if ev.event == "heartbeat" {
                        heartbeats.push(Instant::now());
                    }
                } else {
                    break;
                }
            }
            heartbeats.push(Instant::now());
            (notes, heartbeats, reader)
        })
    };

    let posters: Vec<_> = (0..POSTERS)
        .map(|_| {
            let addr = server.addr;
            let token = token.clone();
            thread::spawn(move || {
                let mut sock = connect(addr);
                let raw = post_json(TRANSACTIONS, &token, r#"{"amount":1}"#, true);
                let mut created = 0;
                for _ in 0..POSTS / POSTERS {
                    sock.write_all(&raw).expect("POST");
                    let r = read_response(&mut sock);
                    assert_eq!(r.status, 201, "{}", r.body);
                    created += 1;
                }
                created
            })
        })
        .collect();
    let created: usize = posters.into_iter().map(|p| p.join().expect("poster")).sum();
    let posted_at = test_start.elapsed();
    assert_eq!(created, POSTS);
    server.log.wait_for("slow consumer", 0, Duration::from_secs(10));
    // One more second of heartbeats after the load.
    thread::sleep(Duration::from_millis(1500));
    done.store(true, Ordering::SeqCst);
    let (notes, heartbeats, _reader) = reading.join().expect("reader");

    assert_eq!(
        notes.len(),
        POSTS,
        "the reading stream got {} of {POSTS} notifications",
        notes.len()
    );
    for (i, (id, spending)) in notes.iter().enumerate() {
        let k = i as u64 + 1;
        assert_eq!(*id, first_id + k, "notification {k}: ids consecutive and in order");
        assert_eq!(*spending, first_spending + k as i64, "notification {k}: spending");
    }
    let worst_gap = heartbeats.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let offsets: Vec<String> = heartbeats
        .iter()
        .map(|t| format!("{:.2}", t.saturating_duration_since(test_start).as_secs_f64()))
        .collect();
    let slow_line = server.log.lines().into_iter().find(|l| l.contains("slow consumer"));
    assert!(
        worst_gap <= Duration::from_millis(2500),
        "heartbeats every 1 s must keep coming under load; worst gap {worst_gap:?}; \
         heartbeats read at {offsets:?} s; posting took {posted_at:?}; {slow_line:?}"
    );
    assert!(
        metric(&server, "periode_sse_disconnects_total{reason=\"slow_consumer\"}") >= 1,
        "the drop is counted"
    );
    assert!(
        eventually(Duration::from_secs(3), || { server.health(&token)["connectedClients"] == 1 }),
        "the slow consumer left the registry"
    );
    // The stalled client sees its connection end once it reads again.
    let mut sink = vec![0u8; 1 << 16];
    stalled.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let ended = (0..200).any(|_| matches!(stalled.read(&mut sink), Ok(0) | Err(_)));
    assert!(ended, "the dropped stream's connection must be closed");
    assert_serving(&server);
}

/// SPEC §5: "everyone else's events and heartbeats stay on time". With the loop kept busy by
/// a client that sends request after request, every stream's 1 s heartbeat must still come
/// every second (a timer checked early within its tick must not be skipped for a wheel turn).
#[test]
fn heartbeats_stay_on_time_while_the_loop_is_busy() {
    const STREAMS: usize = 40;
    let server = Server::start(&["--heartbeat", "1"]);
    let token = server.token(USER);
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        let addr = server.addr;
        let raw = get_with_headers(HEALTH, &format!("Authorization: Bearer {token}\r\n"));
        thread::spawn(move || {
            let mut answers = Responses::new(connect(addr));
            let mut served = 0u64;
            while !stop.load(Ordering::SeqCst) {
                answers.sock.write_all(raw.as_bytes()).expect("send");
                assert_eq!(answers.next().status, 200);
                served += 1;
            }
            served
        })
    };
    let readers: Vec<_> = (0..STREAMS)
        .map(|_| {
            let mut s = server.open_stream(&token);
            assert_eq!(s.status, 200);
            thread::spawn(move || {
                let started = Instant::now();
                let mut last = started;
                let mut worst = Duration::ZERO;
                let mut beats = 0;
                while started.elapsed() < Duration::from_secs(6) {
                    let Some(ev) = s.next_event(Duration::from_millis(500)) else {
                        continue;
                    };
                    if ev.event == "heartbeat" {
                        worst = worst.max(last.elapsed());
                        last = Instant::now();
                        beats += 1;
                    }
                }
                (beats, worst.max(last.elapsed()))
            })
        })
        .collect();
    let results: Vec<(u32, Duration)> =
        readers.into_iter().map(|r| r.join().expect("reader")).collect();
    stop.store(true, Ordering::SeqCst);
    let served = hammer.join().expect("hammer");
    let late: Vec<String> = results
        .iter()
        .enumerate()
        .filter(|(_, (beats, worst))| *beats < 4 || *worst > Duration::from_millis(2500))
        .map(|(i, (beats, worst))| format!("stream {i}: {beats} heartbeats, worst gap {worst:?}"))
        .collect();
    assert!(
        late.is_empty(),
        "{} of {STREAMS} streams lost their heartbeats while {served} requests kept the loop busy \
         (6 s, --heartbeat 1):\n{}",
        late.len(),
        late.join("\n")
    );
}

/// A client that pipelines thousands of requests and never reads the answers must not make the
/// server buffer without bound: it is cut off, and everyone else is served meanwhile.
#[test]
fn a_pipelining_client_that_never_reads_is_bounded() {
    let server = Server::start(&[]);
    let rss_before = proc_status_kb(server.pid(), "VmRSS:").expect("RSS");
    let admin = server.admin_token();
    // /metrics answers are a few KiB each: 3000 of them are ~10 MiB of answers.
    let one = get_with_headers("/metrics", &format!("Authorization: Bearer {admin}\r\n"));
    let mut sock = connect_with_small_rcvbuf(server.addr);
    sock.set_write_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut sent = 0;
    for _ in 0..3000 {
        if sock.write_all(one.as_bytes()).is_err() {
            break; // cut off, or the server stopped reading: both are bounds
        }
        sent += 1;
    }
    assert_serving(&server);
    let rss_after = proc_status_kb(server.pid(), "VmRSS:").expect("RSS");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB for one client that does not read \
         ({sent} requests sent)"
    );
    drop(sock);
    assert_serving(&server);
}

/// SPEC §5 SIGTERM, with hostile clients around: a stalled stream, a half-received request, a
/// silent connection, an idle keep-alive one. The healthy stream still ends properly with a
/// spread `retry:`, the others are closed without an answer, and the process exits 0 in 5 s.
#[test]
fn sigterm_with_hostile_clients_exits_0_within_5_s() {
    let mut server = Server::start(&["--heartbeat", "1"]);
    let token = server.token(USER);
    let mut healthy = server.open_stream(&token);
    assert_eq!(healthy.status, 200);
    let mut stalled = connect_with_small_rcvbuf(server.addr);
    stalled
        .write_all(
            get_with_headers(STREAM, &format!("Authorization: Bearer {token}\r\n")).as_bytes(),
        )
        .expect("send");
    let mut answers = Responses::new(connect(server.addr));
    let post = post_json(TRANSACTIONS, &token, r#"{"amount":1}"#, true);
    for _ in 0..200 {
        answers.sock.write_all(&post).expect("POST");
        assert_eq!(answers.next().status, 201);
    }
    let mut half = connect(server.addr);
    half.write_all(format!("GET {HEALTH} HTTP/1.1\r\nHost: t\r\n").as_bytes()).expect("send");
    let mut silent = connect(server.addr);
    let mut idle = answers.sock;
    // Everyone is in place (the health check is answered after all of the above).
    assert_serving(&server);

    let signalled = Instant::now();
    server.signal("TERM");
    let mut retry = None;
    while let Some(ev) = healthy.next_any(Duration::from_secs(5)) {
        if ev.event.is_empty() && ev.retry.is_some() {
            retry = ev.retry;
        }
    }
    assert!(healthy.wait_end(Duration::from_secs(5)), "the healthy stream must end properly");
    assert!(
        retry.is_some_and(|r| (5000..=15000).contains(&r)),
        "a retry: between --retry-ms and 3 × --retry-ms before the end, got {retry:?}"
    );
    for (what, sock) in
        [("half a request", &mut half), ("silent", &mut silent), ("idle", &mut idle)]
    {
        match wait_closed(sock, Duration::from_secs(5)) {
            Ok(bytes) => assert!(
                bytes.is_empty(),
                "{what}: closed with an answer {:?}",
                String::from_utf8_lossy(&bytes)
            ),
            Err(_) => panic!("{what}: not closed at shutdown"),
        }
    }
    let code = server.wait_exit(Duration::from_secs(5).saturating_sub(signalled.elapsed()));
    assert_eq!(code, Some(0), "exit status after SIGTERM");
    drop(stalled);
}

/// Out of file descriptors (EMFILE) — the limit lowered under the running server with
/// prlimit(2): new connections get 503 (through the spare descriptor) rather than a hang, the
/// loop does not spin, and once descriptors free up the server serves again by itself.
#[test]
fn out_of_descriptors_gets_503_and_recovers() {
    let server = Server::start(&[]);
    let pid = server.pid();
    let token = server.token(USER);
    assert_serving(&server);
    // Let the health check's connection finish closing before counting.
    thread::sleep(Duration::from_millis(500));
    let base = open_fds(pid) as u64;
    let room = 6;
    let limit = libc::rlimit { rlim_cur: base + room, rlim_max: base + room };
    // SAFETY: prlimit reads one rlimit struct from a valid pointer; no old value is asked for.
    let rc = unsafe {
        libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut())
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());

    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..20 {
        let mut sock = connect(server.addr);
        sock.set_read_timeout(Some(Duration::from_millis(400))).expect("timeout");
        let mut buf = [0u8; 512];
        match sock.read(&mut buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                held.push(sock)
            }
            Ok(n) if buf[..n].starts_with(b"HTTP/1.1 503 ") => refused += 1,
            other => panic!(
                "connection {i} past the descriptor limit: expected 503 or a held connection, \
                 got {:?}",
                other.map(|n| String::from_utf8_lossy(&buf[..n]).to_string())
            ),
        }
    }
    // Give or take a descriptor or two the server had not closed yet when we counted.
    assert!(held.len() as u64 <= room + 2, "{} connections held with room for {room}", held.len());
    assert!(refused >= 20 - room as usize - 2, "only {refused} refused with 503");

    // Saturated: more attempts, each a 503, and the loop must not spin meanwhile.
    let cpu = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
        fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    let cpu_before = cpu(pid);
    let started = Instant::now();
    for _ in 0..10 {
        let r = server.get(HEALTH, Some(&token));
        assert_eq!(r.status, 503, "a request while out of descriptors: {}", r.body);
        thread::sleep(Duration::from_millis(200));
    }
    let ticks = cpu(pid) - cpu_before;
    assert!(
        ticks < 100,
        "the server used {ticks} CPU ticks in {:?} while out of descriptors (spinning?)",
        started.elapsed()
    );
    let episodes =
        server.log.lines().iter().filter(|l| l.contains("out of file descriptors")).count();
    assert_eq!(episodes, 1, "logged once per episode");

    drop(held);
    assert!(
        eventually(Duration::from_secs(3), || server.get(HEALTH, Some(&token)).status == 200),
        "the server must serve again once descriptors are free"
    );
    let s = server.open_stream(&token);
    assert_eq!(s.status, 200);
}

// ---- JWT attacks -----------------------------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `header.payload.signature` signed with HMAC-SHA384 or -512, whatever `alg` says.
fn hmac_token(bits: u32, header: &str, payload: &str, key: &[u8]) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let tag = match bits {
        384 => {
            let mut mac = hmac::Hmac::<sha2::Sha384>::new_from_slice(key).expect("key");
            mac.update(input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut mac = hmac::Hmac::<sha2::Sha512>::new_from_slice(key).expect("key");
            mac.update(input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
    };
    format!("{input}.{}", b64(&tag))
}

/// A valid token whose signature has a `-` or `_`, re-spelled in the standard alphabet
/// (`+`, `/`): the same signature bytes, but not base64url.
fn standard_alphabet_token() -> String {
    (0..200)
        .map(|i| sign(&format!(r#"{{"sub":"13","exp":{}}}"#, now_secs() + 600 + i)))
        .find(|t| t.rsplit('.').next().is_some_and(|sig| sig.contains(['-', '_'])))
        .map(|t| {
            let (input, sig) = t.rsplit_once('.').expect("dot");
            format!("{input}.{}", sig.replace('-', "+").replace('_', "/"))
        })
        .expect("some signature among 200 has a - or _")
}

fn valid_payload(user: i64) -> String {
    format!(r#"{{"sub":"{user}","exp":{}}}"#, now_secs() + 600)
}

/// Every rule of SPEC §2 that makes a token bad: 401 with `Bearer error="invalid_token"`.
#[test]
fn jwt_attacks_are_refused_with_invalid_token() {
    let server = Server::start(&[]);
    let secret = SECRET.as_bytes();
    let payload = valid_payload(USER);
    let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
    let good = sign(&payload);
    let (good_head, good_rest) = good.split_once('.').expect("dot");
    let (good_payload, good_sig) = good_rest.split_once('.').expect("dot");
    let admin_payload = format!(r#"{{"sub":"0","role":"admin","exp":{}}}"#, now_secs() + 600);
    let now = now_secs();

    let mut cases: Vec<(&str, String)> = vec![
        (
            "alg none, no signature",
            format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(payload.as_bytes())),
        ),
        ("alg none, HS256 signature", sign_with(r#"{"alg":"none","typ":"JWT"}"#, &payload, secret)),
        ("alg None", sign_with(r#"{"alg":"None"}"#, &payload, secret)),
        ("alg NONE", sign_with(r#"{"alg":"NONE"}"#, &payload, secret)),
        (
            "alg nOnE, no signature",
            format!("{}.{}.", b64(br#"{"alg":"nOnE"}"#), b64(payload.as_bytes())),
        ),
        (
            "alg HS384 with an HMAC-SHA384",
            hmac_token(384, r#"{"alg":"HS384","typ":"JWT"}"#, &payload, secret),
        ),
        (
            "alg HS512 with an HMAC-SHA512",
            hmac_token(512, r#"{"alg":"HS512","typ":"JWT"}"#, &payload, secret),
        ),
        (
            "alg RS256, signed with the secret as an HMAC key",
            sign_with(r#"{"alg":"RS256","typ":"JWT"}"#, &payload, secret),
        ),
        (
            "alg ES256, signed with the secret as an HMAC key",
            sign_with(r#"{"alg":"ES256","typ":"JWT"}"#, &payload, secret),
        ),
        ("alg hs256 (case)", sign_with(r#"{"alg":"hs256"}"#, &payload, secret)),
        ("alg with a trailing space", sign_with(r#"{"alg":"HS256 "}"#, &payload, secret)),
        ("alg as an array", sign_with(r#"{"alg":["HS256"]}"#, &payload, secret)),
        ("alg null", sign_with(r#"{"alg":null}"#, &payload, secret)),
        ("header without alg", sign_with(r#"{"typ":"JWT"}"#, &payload, secret)),
        ("empty header object", sign_with("{}", &payload, secret)),
        (
            "alg twice, HS256 then none",
            sign_with(r#"{"alg":"HS256","alg":"none"}"#, &payload, secret),
        ),
        (
            "alg twice, none then HS256",
            sign_with(r#"{"alg":"none","alg":"HS256"}"#, &payload, secret),
        ),
        ("crit header", sign_with(r#"{"alg":"HS256","crit":["exp"]}"#, &payload, secret)),
        ("crit empty list", sign_with(r#"{"alg":"HS256","crit":[]}"#, &payload, secret)),
        ("header is an array", sign_with(r#"["HS256"]"#, &payload, secret)),
        ("header is not JSON", sign_with("alg=HS256", &payload, secret)),
        (
            "signature over a modified payload (user 13 → admin)",
            format!("{good_head}.{}.{good_sig}", b64(admin_payload.as_bytes())),
        ),
        (
            "signature of another token",
            format!("{good_head}.{good_payload}.{}", {
                let other = sign(&valid_payload(14));
                other.rsplit('.').next().unwrap_or_default().to_string()
            }),
        ),
        ("signed with an empty key", sign_with(hs, &payload, b"")),
        (
            "signed with another key",
            sign_with(hs, &payload, b"another-secret-of-thirty-two-bytes!!"),
        ),
        (
            "signed with the secret plus one byte",
            sign_with(hs, &payload, format!("{SECRET}x").as_bytes()),
        ),
        ("no signature", format!("{good_head}.{good_payload}.")),
        ("truncated signature", good[..good.len() - 1].to_string()),
        ("padded signature", format!("{good}=")),
        ("signature in standard base64", standard_alphabet_token()),
        ("two parts", format!("{good_head}.{good_payload}")),
        ("four parts", format!("{good}.{good_sig}")),
        ("header with padding", format!("{good_head}=.{good_payload}.{good_sig}")),
        ("exp 65 s ago", sign(&format!(r#"{{"sub":"13","exp":{}}}"#, now - 65))),
        ("nbf in 70 s", sign(&format!(r#"{{"sub":"13","exp":{},"nbf":{}}}"#, now + 600, now + 70))),
        ("exp as a string", sign(&format!(r#"{{"sub":"13","exp":"{}"}}"#, now + 600))),
        ("exp null", sign(r#"{"sub":"13","exp":null}"#)),
        ("exp true", sign(r#"{"sub":"13","exp":true}"#)),
        ("exp an object", sign(r#"{"sub":"13","exp":{"v":1}}"#)),
        ("exp missing", sign(r#"{"sub":"13"}"#)),
        ("nbf as a string", sign(&format!(r#"{{"sub":"13","exp":{},"nbf":"0"}}"#, now + 600))),
        (
            "sub and userId disagree",
            sign(&format!(r#"{{"sub":"13","userId":14,"exp":{}}}"#, now + 600)),
        ),
        ("sub not a number", sign(&format!(r#"{{"sub":"thirteen","exp":{}}}"#, now + 600))),
        ("sub negative", sign(&format!(r#"{{"sub":"-13","exp":{}}}"#, now + 600))),
        ("no user at all", sign(&format!(r#"{{"exp":{}}}"#, now + 600))),
        ("role root", sign(&format!(r#"{{"sub":"13","role":"root","exp":{}}}"#, now + 600))),
        ("payload is an array", sign("[13]")),
        ("payload is not JSON", sign("sub=13")),
        ("an empty token", String::new()),
        ("dots only", "..".to_string()),
    ];
    // A forged admin token on an admin route, and forged tokens in the query.
    let forged_admin = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(admin_payload.as_bytes()));
    cases.push(("alg none, admin", forged_admin.clone()));

    let mut failures = Vec::new();
    let challenge = r#"Bearer error="invalid_token""#;
    let check = |failures: &mut Vec<String>, what: String, r: Response, want: u16| {
        let header = r.header("WWW-Authenticate");
        if r.status != want || (want == 401 && header.as_deref() != Some(challenge)) {
            failures
                .push(format!("{what}: got {} (WWW-Authenticate {header:?}) {}", r.status, r.body));
        }
    };
    for (what, token) in &cases {
        let r = server.get(HEALTH, Some(token));
        if token.is_empty() {
            // `Authorization: Bearer ` with nothing after it: a missing token.
            if r.status != 401 || r.header("WWW-Authenticate").as_deref() != Some("Bearer") {
                failures.push(format!(
                    "{what}: got {} {:?}",
                    r.status,
                    r.header("WWW-Authenticate")
                ));
            }
            continue;
        }
        check(&mut failures, format!("{what} (header)"), r, 401);
        let r = server.get(&format!("{HEALTH}?access_token={token}"), None);
        check(&mut failures, format!("{what} (query)"), r, 401);
    }
    let r = server.get("/metrics", Some(&forged_admin));
    check(&mut failures, "alg none admin on /metrics".into(), r, 401);
    let r = server.send_json("PUT", "/api/admin/users/99", &forged_admin, r#"{"active":true}"#);
    check(&mut failures, "alg none admin on PUT /api/admin/users".into(), r, 401);
    let r = server.get(&format!("/api/admin/users/99?access_token={forged_admin}"), None);
    check(&mut failures, "alg none admin, GET on an admin route (405 before auth)".into(), r, 405);
    assert!(
        failures.is_empty(),
        "JWT attacks not refused as SPEC §2 says:\n{}",
        failures.join("\n")
    );
    assert_serving(&server);
}

/// SPEC §2: exp and nbf have 60 s of leeway. Margins of a few seconds keep the test off the
/// exact edge, which the unit tests cover with an explicit clock.
#[test]
fn jwt_leeway_edges() {
    let server = Server::start(&[]);
    let now = now_secs();
    let cases = [
        ("exp 59 s ago", format!(r#"{{"sub":"13","exp":{}}}"#, now - 59), 200),
        ("exp 65 s ago", format!(r#"{{"sub":"13","exp":{}}}"#, now - 65), 401),
        ("nbf in 55 s", format!(r#"{{"sub":"13","exp":{},"nbf":{}}}"#, now + 600, now + 55), 200),
        ("nbf in 70 s", format!(r#"{{"sub":"13","exp":{},"nbf":{}}}"#, now + 600, now + 70), 401),
        ("exp as a float", format!(r#"{{"sub":"13","exp":{}.5}}"#, now + 600), 200),
        ("exp far future", r#"{"sub":"13","exp":1e300}"#.to_string(), 200),
        ("sub as an integer", format!(r#"{{"sub":13,"exp":{}}}"#, now + 600), 200),
        ("userId only", format!(r#"{{"userId":13,"exp":{}}}"#, now + 600), 200),
        ("sub and userId agree", format!(r#"{{"sub":"13","userId":13,"exp":{}}}"#, now + 600), 200),
        ("unknown user", format!(r#"{{"sub":"999","exp":{}}}"#, now + 600), 403),
    ];
    let mut failures = Vec::new();
    for (what, payload, want) in cases {
        let r = server.get(HEALTH, Some(&sign(&payload)));
        if r.status != want {
            failures.push(format!("{what}: want {want}, got {} {}", r.status, r.body));
        }
        if want == 401
            && r.header("WWW-Authenticate").as_deref() != Some(r#"Bearer error="invalid_token""#)
        {
            failures.push(format!("{what}: WWW-Authenticate {:?}", r.header("WWW-Authenticate")));
        }
    }
    // The scheme name is case-insensitive (RFC 7235 §2.1).
    let r = request(
        server.addr,
        &format!(
            "GET {HEALTH} HTTP/1.1\r\nHost: t\r\nAuthorization: bearer {}\r\nConnection: close\r\n\r\n",
            server.token(USER)
        ),
    );
    if r.status != 200 {
        failures.push(format!("lower-case bearer: {} {}", r.status, r.body));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// SPEC §2: `kid`, `jku`, `x5u` are ignored and never fetched: a token that points them at a
/// loopback listener is accepted when otherwise valid, and nothing ever connects there.
#[test]
fn jwt_header_urls_are_never_fetched() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = Server::start(&[]);
    let payload = valid_payload(USER);
    let headers = [
        format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{url}/key"}}"#),
        format!(r#"{{"alg":"HS256","jku":"{url}/jwks.json"}}"#),
        format!(r#"{{"alg":"HS256","x5u":"{url}/cert.pem"}}"#),
        format!(
            r#"{{"alg":"HS256","kid":"../../../../dev/null","jku":"{url}/a","x5u":"{url}/b"}}"#
        ),
        r#"{"alg":"HS256","jwk":{"kty":"oct","k":"AAAA"},"x5c":["AAAA"],"x5t":"x"}"#.to_string(),
    ];
    for header in &headers {
        let r = server.get(HEALTH, Some(&sign_with(header, &payload, SECRET.as_bytes())));
        assert_eq!(r.status, 200, "header {header}: {}", r.body);
    }
    // The same URLs on a token with a wrong signature: refused, still not fetched.
    let forged = sign_with(&headers[1], &payload, b"an attacker's key of enough bytes....");
    let r = server.get(HEALTH, Some(&forged));
    assert_eq!(r.status, 401, "{}", r.body);
    thread::sleep(Duration::from_millis(500));
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, from)) => panic!("the server connected to a URL from a token header ({from})"),
        Err(e) => panic!("accept: {e}"),
    }
}
