//! Integration tests of the read side of the contract (SPEC §1–§6): health, status and the
//! event stream, authentication, routing order, CORS preflight, keep-alive, shutdown, the secret
//! file and the demo data. Each test starts its own server (the real binary) and talks to it
//! over loopback sockets. Nothing sleeps "long enough": every wait is for an event, a log line
//! or an exit, under a deadline.

mod common;
use common::*;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SECS_5: Duration = Duration::from_secs(5);
const CONNECTED_DATA: &str = r#"{"message":"Connected to Spending notifications"}"#;
const INVALID_TOKEN: &str = r#"Bearer error="invalid_token""#;

// ----- helpers -----------------------------------------------------------------------------

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn b64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap_or_else(|e| panic!("not base64url ({e}): {text:?}"))
}

/// Epoch ms as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn format_utc_ms(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(86_400_000));
    let rem = ms.rem_euclid(86_400_000);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// Parses exactly `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC, milliseconds) into epoch ms.
fn parse_utc_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 24 {
        return None;
    }
    let shape_ok = b.iter().enumerate().all(|(i, &c)| match i {
        4 | 7 => c == b'-',
        10 => c == b'T',
        13 | 16 => c == b':',
        19 => c == b'.',
        23 => c == b'Z',
        _ => c.is_ascii_digit(),
    });
    if !shape_ok {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text[r].parse::<i64>().unwrap();
    let (y, mo, d) = (num(0..4), num(5..7), num(8..10));
    let (h, mi, s, ms) = (num(11..13), num(14..16), num(17..19), num(20..23));
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    Some((((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60 + s) * 1000 + ms)
}

/// Asserts JSON equality with exact key sets; numbers compare by value (`85` equals `85.0`).
fn assert_json(actual: &Value, expected: &Value, context: &str) {
    fn same(a: &Value, e: &Value) -> bool {
        match (a, e) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
            }
            _ => a == e,
        }
    }
    assert!(
        same(actual, expected),
        "{context}: JSON differs\n  got:  {actual}\n  want: {expected}"
    );
}

/// Asserts a JSON error answer: status, `Content-Type`, and `{"error":code,"message":text}`.
fn assert_error(r: &Response, status: u16, code: Option<&str>, context: &str) {
    assert_eq!(r.status, status, "{context}: status; response: {r:?}");
    assert_eq!(
        r.header("Content-Type").as_deref(),
        Some("application/json"),
        "{context}: Content-Type; response: {r:?}"
    );
    let body = r.json();
    let error = body["error"].as_str().unwrap_or_else(|| {
        panic!("{context}: no string \"error\" in {}", r.body);
    });
    assert!(!error.is_empty(), "{context}: empty error code");
    if let Some(code) = code {
        assert_eq!(error, code, "{context}: error code in {}", r.body);
    }
    assert!(body["message"].is_string(), "{context}: no string \"message\" in {}", r.body);
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "{context}: error body has other fields: {}",
        r.body
    );
}

/// The methods an `Allow` header lists.
fn allowed_methods(r: &Response) -> Vec<String> {
    let allow = r.header("Allow").unwrap_or_else(|| panic!("405 without Allow: {r:?}"));
    allow.split(',').map(|m| m.trim().to_string()).collect()
}

fn demo_status() -> Value {
    let (start, end) = current_month();
    json!({
        "currentSpending": 267000,
        "maxLimit": 200000,
        "alertPercentage": 85,
        "currentPercentage": 133.5,
        "isAlert": true,
        "periodeStart": start,
        "periodeEnd": end,
    })
}

/// Checks a `notification` event's data: the exact fields, and a timestamp near now.
fn assert_notification(ev: &Event, user: i64, spending: i64, max: i64, alert: f64, pct: f64) {
    assert_eq!(ev.event, "notification", "{ev:?}");
    let data = ev.json();
    let timestamp = data["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("notification timestamp not a string: {}", ev.data))
        .to_string();
    let at = parse_utc_ms(&timestamp)
        .unwrap_or_else(|| panic!("timestamp not RFC 3339 UTC with ms and Z: {timestamp:?}"));
    assert!(
        (at - now_ms()).abs() < 10_000,
        "notification timestamp {timestamp} is not close to now"
    );
    assert_json(
        &data,
        &json!({
            "userId": user,
            "currentSpending": spending,
            "maxSpending": max,
            "alertPercentage": alert,
            "currentPercentage": pct,
            "isAlert": pct >= alert,
            "timestamp": timestamp,
        }),
        "notification data",
    );
}

/// Reads the `retry:` block and the `connected` event that open every stream.
fn expect_stream_start(s: &mut Stream, retry_ms: u64) {
    assert_eq!(s.status, 200, "stream head: {}", s.head);
    let first = s.next_any(SECS_5).expect("a retry block first");
    assert_eq!(first.retry, Some(retry_ms), "first block: {first:?}");
    assert_eq!(first.event, "", "first block: {first:?}");
    let connected = s.next_event(SECS_5).expect("connected event");
    assert_eq!(connected.event, "connected", "{connected:?}");
    assert_eq!(connected.data, CONNECTED_DATA);
    assert_eq!(connected.id, None);
}

/// One keep-alive connection with its own read buffer, so that pipelined answers that arrive
/// in one read are split correctly.
struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(server: &Server) -> Conn {
        Conn { sock: connect(server.addr), buf: Vec::new() }
    }

    fn send(&mut self, raw: &str) {
        self.sock.write_all(raw.as_bytes()).expect("send");
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self
            .sock
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("read: {e}; have {:?}", String::from_utf8_lossy(&self.buf)));
        assert!(n > 0, "connection closed; have {:?}", String::from_utf8_lossy(&self.buf));
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// One `Content-Length`-framed response; bytes after it stay buffered.
    fn read_response(&mut self) -> Response {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill();
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let status =
            head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
        let mut r = Response { status, head, body: String::new() };
        let length: usize = r
            .header("Content-Length")
            .unwrap_or_else(|| panic!("keep-alive answer without Content-Length: {r:?}"))
            .parse()
            .expect("Content-Length");
        while self.buf.len() < head_end + length {
            self.fill();
        }
        r.body = String::from_utf8_lossy(&self.buf[head_end..head_end + length]).to_string();
        self.buf.drain(..head_end + length);
        r
    }
}

fn get_keep_alive(path: &str, token: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n")
}

fn health_json(user: i64, mine: u64, total: u64) -> Value {
    json!({"status":"healthy","userId":user,"connectedClients":mine,"totalSystemClients":total})
}

// ----- health and status -------------------------------------------------------------------

#[test]
fn health_reports_the_token_user_and_zero_clients() {
    let server = Server::start(&[]);
    let r = server.get(HEALTH, Some(&server.token(13)));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("Content-Type").as_deref(), Some("application/json"));
    assert_json(&r.json(), &health_json(13, 0, 0), "health");
}

#[test]
fn status_of_the_demo_user_is_exact() {
    let server = Server::start(&[]);
    let r = server.get(STATUS, Some(&server.token(13)));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.head.lines().next(), Some("HTTP/1.1 200 OK"));
    assert_eq!(r.header("Content-Type").as_deref(), Some("application/json"));
    assert_json(&r.json(), &demo_status(), "status");
}

#[test]
fn status_without_a_limit_is_404_no_active_limit() {
    let server = Server::start(&[]);
    let token = server.create_user(40);
    let r = server.get(STATUS, Some(&token));
    assert_error(&r, 404, Some("no_active_limit"), "status without limit");
    // A limit that does not cover now is no active limit either.
    let body = r#"{"maxLimit":1000,"alertPercentage":50,"periodeStart":"2020-01-01T00:00:00.000Z","periodeEnd":"2020-01-31T23:59:59.999Z"}"#;
    assert_eq!(server.send_json("PUT", LIMIT, &token, body).status, 200);
    let r = server.get(STATUS, Some(&token));
    assert_error(&r, 404, Some("no_active_limit"), "status with a past limit");
    // An admin token serves its own sub, which needs no user row.
    let r = server.get(STATUS, Some(&server.admin_token()));
    assert_error(&r, 404, Some("no_active_limit"), "status for the admin's sub 0");
    let r = server.get(HEALTH, Some(&server.admin_token()));
    assert_json(&r.json(), &health_json(0, 0, 0), "health for the admin's sub 0");
}

// ----- the stream --------------------------------------------------------------------------

#[test]
fn stream_head_and_first_events_are_byte_exact() {
    let server = Server::start(&[]);
    let mut s = server.open_stream(&server.token(13));
    assert_eq!(s.head.lines().next(), Some("HTTP/1.1 200 OK"), "{}", s.head);
    assert_eq!(s.header("Content-Type").as_deref(), Some("text/event-stream"));
    assert_eq!(s.header("Cache-Control").as_deref(), Some("no-cache"));
    assert_eq!(s.header("X-Accel-Buffering").as_deref(), Some("no"));
    let note = s.next_named("notification", SECS_5).expect("a notification snapshot");
    let prefix = format!(
        "retry: 5000\n\nevent: connected\ndata: {CONNECTED_DATA}\n\n\
         id: 0\nevent: notification\ndata: {{\"userId\":13,"
    );
    let body = String::from_utf8_lossy(&s.body).to_string();
    assert!(
        body.starts_with(&prefix),
        "stream body does not start as SPEC §4 says:\n  got:  {body:?}\n  want: {prefix:?}…"
    );
    let note_block = format!("id: 0\nevent: notification\ndata: {}\n\n", note.data);
    assert!(body.contains(&note_block), "notification not framed as one block: {body:?}");
    assert_eq!(note.id.as_deref(), Some("0"));
    assert_notification(&note, 13, 267000, 200000, 85.0, 133.5);
}

#[test]
fn retry_ms_flag_sets_the_retry_line() {
    let server = Server::start(&["--retry-ms", "1234"]);
    let mut s = server.open_stream(&server.token(13));
    expect_stream_start(&mut s, 1234);
    assert!(String::from_utf8_lossy(&s.body).starts_with("retry: 1234\n\n"));
}

#[test]
fn stream_of_a_user_without_a_limit_has_no_notification() {
    let server = Server::start(&["--heartbeat", "1"]);
    let token = server.create_user(40);
    let mut s = server.open_stream(&token);
    expect_stream_start(&mut s, 5000);
    let next = s.next_event(SECS_5).expect("a heartbeat");
    assert_eq!(next.event, "heartbeat", "expected a heartbeat, got {next:?}");
    let body = String::from_utf8_lossy(&s.body).to_string();
    let want =
        format!("retry: 5000\n\nevent: connected\ndata: {CONNECTED_DATA}\n\nevent: heartbeat\n");
    assert!(body.starts_with(&want), "got {body:?}");
}

#[test]
fn heartbeats_carry_epoch_ms_and_no_id() {
    let server = Server::start(&["--heartbeat", "1"]);
    let mut s = server.open_stream(&server.token(13));
    expect_stream_start(&mut s, 5000);
    let mut stamps = Vec::new();
    while stamps.len() < 2 {
        let ev = s.next_event(SECS_5).expect("a heartbeat within 5 s");
        if ev.event == "notification" {
            continue;
        }
        assert_eq!(ev.event, "heartbeat", "{ev:?}");
        assert_eq!(ev.id, None, "heartbeat with an id: {ev:?}");
        let data = ev.json();
        assert_eq!(data.as_object().unwrap().len(), 1, "{}", ev.data);
        let ts = data["timestamp"]
            .as_i64()
            .unwrap_or_else(|| panic!("heartbeat timestamp not an integer: {}", ev.data));
        assert!(
            (ts - now_ms()).abs() < 5_000,
            "heartbeat timestamp {ts} is not within 5 s of now ({})",
            now_ms()
        );
        assert_eq!(ev.data, format!("{{\"timestamp\":{ts}}}"));
        stamps.push(ts);
    }
    assert!(stamps[1] > stamps[0], "heartbeat timestamps {stamps:?}");
    assert!(
        stamps[1] - stamps[0] >= 500,
        "heartbeats {stamps:?} closer than the 1 s period allows"
    );
}

#[test]
fn two_streams_are_counted_and_a_dropped_one_is_removed() {
    let server = Server::start(&[]);
    let token = server.token(13);
    let mut a = server.open_stream(&token);
    expect_stream_start(&mut a, 5000);
    let mut b = server.open_stream(&token);
    expect_stream_start(&mut b, 5000);
    let connected = server.log.wait_for("SSE client connected for user 13 (2 open)", 0, SECS_5);
    assert_json(&server.health(&token), &health_json(13, 2, 2), "health, 2 open");

    drop(b);
    let aborted = server.log.wait_for("SSE stream aborted for user 13", connected, SECS_5);
    let closed = server.log.wait_for("SSE connection closed for user 13", aborted, SECS_5);
    server.log.wait_for("SSE client removed for user 13 (1 open)", closed, SECS_5);
    assert_json(&server.health(&token), &health_json(13, 1, 1), "health, 1 open");

    // The other stream is unharmed.
    assert_eq!(a.next_named("notification", SECS_5).map(|e| e.id), Some(Some("0".into())));
    let lines = server.log.lines();
    assert!(lines.iter().all(|l| !l.contains(&token)), "a token appears in the log");
}

#[test]
fn other_users_streams_count_in_the_system_total() {
    let server = Server::start(&[]);
    let t13 = server.token(13);
    let t40 = server.create_user(40);
    let mut a = server.open_stream(&t13);
    expect_stream_start(&mut a, 5000);
    let mut b = server.open_stream(&t40);
    expect_stream_start(&mut b, 5000);
    server.log.wait_for("SSE client connected for user 40 (1 open)", 0, SECS_5);
    assert_json(&server.health(&t13), &health_json(13, 1, 2), "health 13");
    assert_json(&server.health(&t40), &health_json(40, 1, 2), "health 40");
}

#[test]
fn a_transaction_notifies_every_stream_of_that_user_and_no_one_else() {
    let server = Server::start(&[]);
    let t13 = server.token(13);
    let t40 = server.create_user(40);
    assert_eq!(server.set_month_limit(40, 1000, 50.0).status, 200);
    let mut a = server.open_stream(&t13);
    let mut b = server.open_stream(&t13);
    let mut c = server.open_stream(&t40);
    for s in [&mut a, &mut b] {
        let snap = s.next_named("notification", SECS_5).expect("snapshot");
        assert_eq!(snap.id.as_deref(), Some("0"));
    }
    let c_snap = c.next_named("notification", SECS_5).expect("snapshot 40");
    assert_notification(&c_snap, 40, 0, 1000, 50.0, 0.0);
    server.log.wait_for("SSE client connected for user 40 (1 open)", 0, SECS_5);

    let r =
        server.send_json("POST", TRANSACTIONS, &t13, r#"{"amount":5000,"description":"coffee"}"#);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["status"]["currentSpending"], 272000);
    let mut ids = Vec::new();
    for s in [&mut a, &mut b] {
        let ev = s.next_named("notification", SECS_5).expect("live notification");
        assert_notification(&ev, 13, 272000, 200000, 85.0, 136.0);
        let id: u64 = ev.id.as_deref().expect("id").parse().expect("numeric id");
        assert!(id > 0, "live notification id {id}");
        ids.push(id);
    }
    assert_eq!(ids[0], ids[1], "both streams see the same notification id");

    // User 40's next notification must be its own: had 13's reached it, it would come first.
    let r = server.send_json("POST", TRANSACTIONS, &t40, r#"{"amount":600}"#);
    assert_eq!(r.status, 201, "{r:?}");
    let ev = c.next_named("notification", SECS_5).expect("40's notification");
    assert_notification(&ev, 40, 600, 1000, 50.0, 60.0);
}

#[test]
fn last_event_id_replays_what_was_missed_and_nothing_more() {
    let server = Server::start(&["--heartbeat", "1"]);
    let token = server.token(13);
    let mut ids = Vec::new();
    for amount in [1000, 2000] {
        let body = format!(r#"{{"amount":{amount}}}"#);
        let r = server.send_json("POST", TRANSACTIONS, &token, &body);
        assert_eq!(r.status, 201, "{r:?}");
    }
    // A fresh connect: snapshot whose id is the latest stored one.
    let mut s = server.open_stream(&token);
    let snap = s.next_named("notification", SECS_5).expect("snapshot");
    assert_notification(&snap, 13, 270000, 200000, 85.0, 135.0);
    let latest: u64 = snap.id.as_deref().unwrap().parse().unwrap();
    drop(s);

    // Resume after 0 with the header: both stored notifications, oldest first, no snapshot.
    let mut s = Stream::open(
        server.addr,
        &format!("Authorization: Bearer {token}\r\nLast-Event-ID: 0\r\n"),
        STREAM,
    );
    expect_stream_start(&mut s, 5000);
    for spending in [268000, 270000] {
        let ev = s.next_event(SECS_5).expect("replayed notification");
        assert_eq!(ev.event, "notification", "{ev:?}");
        assert_eq!(ev.json()["currentSpending"], spending, "{ev:?}");
        ids.push(ev.id.as_deref().unwrap().parse::<u64>().unwrap());
    }
    assert!(ids[0] < ids[1] && ids[1] == latest, "ids {ids:?}, latest {latest}");
    let next = s.next_event(SECS_5).expect("heartbeat");
    assert_eq!(next.event, "heartbeat", "nothing more before live events: {next:?}");
    drop(s);

    // Resume at the latest id (query parameter): nothing replayed, then heartbeats.
    let target = format!("{STREAM}?lastEventId={latest}");
    let mut s = Stream::open(server.addr, &format!("Authorization: Bearer {token}\r\n"), &target);
    expect_stream_start(&mut s, 5000);
    let next = s.next_event(SECS_5).expect("heartbeat");
    assert_eq!(next.event, "heartbeat", "{next:?}");
    drop(s);

    // The header wins over the query parameter; a non-numeric id means a first connect.
    let target = format!("{STREAM}?lastEventId=0");
    let headers = format!("Authorization: Bearer {token}\r\nLast-Event-ID: {latest}\r\n");
    let mut s = Stream::open(server.addr, &headers, &target);
    expect_stream_start(&mut s, 5000);
    assert_eq!(s.next_event(SECS_5).expect("heartbeat").event, "heartbeat");
    drop(s);
    let headers = format!("Authorization: Bearer {token}\r\nLast-Event-ID: abc\r\n");
    let mut s = Stream::open(server.addr, &headers, STREAM);
    expect_stream_start(&mut s, 5000);
    let ev = s.next_event(SECS_5).expect("snapshot");
    assert_eq!(ev.event, "notification", "{ev:?}");
    assert_eq!(ev.id, Some(latest.to_string()));
}

#[test]
fn deactivating_a_user_ends_their_stream_cleanly() {
    let server = Server::start(&[]);
    let token = server.create_user(41);
    let mut s = server.open_stream(&token);
    expect_stream_start(&mut s, 5000);
    server.log.wait_for("SSE client connected for user 41 (1 open)", 0, SECS_5);
    let r = server.send_json(
        "PUT",
        "/api/admin/users/41",
        &server.admin_token(),
        r#"{"active":false}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        s.wait_end(SECS_5),
        "stream did not end with the last chunk and EOF; body {:?}",
        String::from_utf8_lossy(&s.body)
    );
}

#[test]
fn a_stream_ends_cleanly_when_its_token_expires() {
    let server = Server::start(&[]);
    // Accepted thanks to the 60 s leeway; the stream must end once exp + 60 passes.
    let token = sign(&format!(r#"{{"sub":"13","exp":{}}}"#, now_secs() - 58));
    let mut s = server.open_stream(&token);
    expect_stream_start(&mut s, 5000);
    assert!(
        s.wait_end(Duration::from_secs(8)),
        "stream not ended properly after its token expired; body {:?}",
        String::from_utf8_lossy(&s.body)
    );
}

// ----- HTTP/1.1 handling -------------------------------------------------------------------

#[test]
fn a_request_sent_one_byte_at_a_time_is_answered() {
    let server = Server::start(&[]);
    let token = server.token(13);
    let raw = format!(
        "GET {STATUS} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let mut sock = connect(server.addr);
    for byte in raw.as_bytes() {
        sock.write_all(std::slice::from_ref(byte)).expect("write");
        sock.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = read_response(&mut sock);
    assert_eq!(r.status, 200, "{r:?}");
    assert_json(&r.json(), &demo_status(), "status sent byte by byte");
}

#[test]
fn pipelined_requests_are_answered_in_order_and_the_connection_stays_open() {
    let server = Server::start(&[]);
    let token = server.token(13);
    let mut conn = Conn::open(&server);
    conn.send(&(get_keep_alive(HEALTH, &token) + &get_keep_alive(STATUS, &token)));
    let first = conn.read_response();
    assert_eq!(first.status, 200, "{first:?}");
    assert_json(&first.json(), &health_json(13, 0, 0), "first pipelined answer");
    let second = conn.read_response();
    assert_eq!(second.status, 200, "{second:?}");
    assert_json(&second.json(), &demo_status(), "second pipelined answer");
    for r in [&first, &second] {
        assert_ne!(
            r.header("Connection").map(|v| v.to_ascii_lowercase()).as_deref(),
            Some("close"),
            "keep-alive request answered with Connection: close: {r:?}"
        );
    }
    conn.send(&get_keep_alive(HEALTH, &token));
    let third = conn.read_response();
    assert_eq!(third.status, 200, "{third:?}");
    assert_json(&third.json(), &health_json(13, 0, 0), "third answer");
    // An error answer keeps the connection too, and Connection: close is honoured.
    conn.send("GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_error(&conn.read_response(), 404, None, "404 on keep-alive");
    conn.send(&format!(
        "GET {HEALTH} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(conn.read_response().status, 200);
    let mut rest = Vec::new();
    let _ = conn.sock.read_to_end(&mut rest);
    assert!(rest.is_empty(), "bytes after a Connection: close answer: {rest:?}");
}

// ----- routing order -----------------------------------------------------------------------

#[test]
fn unknown_paths_are_404_before_any_authentication() {
    let server = Server::start(&[]);
    for path in
        ["/nope", "/api/periode-limit/notifications", "/api/periode-limit/notifications/stream/x"]
    {
        assert_error(&server.get(path, None), 404, None, path);
        assert_error(&server.get(path, Some("abc")), 404, None, path);
    }
    let r = request(
        server.addr,
        "POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_error(&r, 404, None, "POST /nope");
}

#[test]
fn wrong_methods_are_405_with_allow_before_any_authentication() {
    let server = Server::start(&[]);
    let cases = [
        ("POST", HEALTH, "GET"),
        ("DELETE", STATUS, "GET"),
        ("PUT", STREAM, "GET"),
        ("GET", TRANSACTIONS, "POST"),
        ("GET", LIMIT, "PUT"),
        ("POST", "/api/admin/users/13", "PUT"),
        ("PUT", "/metrics", "GET"),
    ];
    for (method, path, allowed) in cases {
        for auth in ["", "Authorization: Bearer abc\r\n"] {
            let raw = format!(
                "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let r = request(server.addr, &raw);
            let context = format!("{method} {path} ({auth:?})");
            assert_error(&r, 405, None, &context);
            assert!(r.header("WWW-Authenticate").is_none(), "{context}: {r:?}");
            let allow = allowed_methods(&r);
            assert!(allow.iter().any(|m| m == allowed), "{context}: Allow {allow:?}");
            assert!(!allow.iter().any(|m| m == method), "{context}: Allow {allow:?}");
        }
    }
}

// ----- authentication ----------------------------------------------------------------------

#[test]
fn a_missing_token_is_401_bearer() {
    let server = Server::start(&[]);
    for path in [HEALTH, STATUS, STREAM, "/metrics"] {
        let r = server.get(path, None);
        assert_error(&r, 401, None, path);
        assert_eq!(r.header("WWW-Authenticate").as_deref(), Some("Bearer"), "{path}");
    }
    // An empty access_token is no token either.
    let r = server.get(&format!("{HEALTH}?access_token="), None);
    assert_error(&r, 401, None, "empty access_token");
    assert_eq!(r.header("WWW-Authenticate").as_deref(), Some("Bearer"));
}

#[test]
fn bad_tokens_are_401_invalid_token() {
    let server = Server::start(&[]);
    let now = now_secs();
    let good_payload = format!(r#"{{"sub":"13","exp":{}}}"#, now + 600);
    let hs256 = r#"{"alg":"HS256","typ":"JWT"}"#;
    let good = sign(&good_payload);
    let (gh, gp, gs) = {
        let parts: Vec<&str> = good.split('.').collect();
        (parts[0].to_string(), parts[1].to_string(), parts[2].to_string())
    };
    let mut flipped_sig = b64_decode(&gs);
    flipped_sig[0] ^= 1;
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "abc".to_string()),
        ("wrong key", sign_with(hs256, &good_payload, b"another-secret-of-thirty-two-bytes!!")),
        ("flipped signature bit", format!("{gh}.{gp}.{}", b64_encode_bytes(&flipped_sig))),
        (
            "alg none, empty signature",
            format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&good_payload)),
        ),
        (
            "alg none, no signature part",
            format!("{}.{}", b64(r#"{"alg":"none"}"#), b64(&good_payload)),
        ),
        (
            "alg HS512",
            sign_with(r#"{"alg":"HS512","typ":"JWT"}"#, &good_payload, SECRET.as_bytes()),
        ),
        (
            "alg hs256 lowercase",
            sign_with(r#"{"alg":"hs256","typ":"JWT"}"#, &good_payload, SECRET.as_bytes()),
        ),
        ("alg missing", sign_with(r#"{"typ":"JWT"}"#, &good_payload, SECRET.as_bytes())),
        (
            "crit header",
            sign_with(r#"{"alg":"HS256","crit":["exp"]}"#, &good_payload, SECRET.as_bytes()),
        ),
        ("expired", sign(&format!(r#"{{"sub":"13","exp":{}}}"#, now - 120))),
        ("exp missing", sign(r#"{"sub":"13"}"#)),
        (
            "nbf in the future",
            sign(&format!(r#"{{"sub":"13","exp":{},"nbf":{}}}"#, now + 600, now + 300)),
        ),
        (
            "sub and userId disagree",
            sign(&format!(r#"{{"sub":"13","userId":14,"exp":{}}}"#, now + 600)),
        ),
        ("no user id", sign(&format!(r#"{{"exp":{}}}"#, now + 600))),
        ("payload not JSON", sign_with(hs256, "not json", SECRET.as_bytes())),
        ("unknown role", sign(&format!(r#"{{"sub":"13","role":"root","exp":{}}}"#, now + 600))),
        ("four parts", format!("{good}.x")),
    ];
    for (name, token) in &cases {
        for path in [HEALTH, STREAM] {
            let r = server.get(path, Some(token));
            let context = format!("{name} on {path}");
            assert_error(&r, 401, None, &context);
            assert_eq!(
                r.header("WWW-Authenticate").as_deref(),
                Some(INVALID_TOKEN),
                "{context}: {r:?}"
            );
        }
    }
    // The same bad token in the query parameter.
    let r = server.get(&format!("{HEALTH}?access_token=abc"), None);
    assert_error(&r, 401, None, "access_token=abc");
    assert_eq!(r.header("WWW-Authenticate").as_deref(), Some(INVALID_TOKEN));
    let lines = server.log.lines();
    for (name, token) in &cases {
        if token.len() > 8 {
            assert!(lines.iter().all(|l| !l.contains(token.as_str())), "{name} token logged");
        }
    }
}

fn b64_encode_bytes(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn accepted_token_forms() {
    let server = Server::start(&[]);
    let now = now_secs();
    let cases = [
        ("sub as integer", format!(r#"{{"sub":13,"exp":{}}}"#, now + 600)),
        ("userId only", format!(r#"{{"userId":13,"exp":{}}}"#, now + 600)),
        ("sub and userId agree", format!(r#"{{"sub":"13","userId":13,"exp":{}}}"#, now + 600)),
        ("expired within leeway", format!(r#"{{"sub":"13","exp":{}}}"#, now - 30)),
        ("nbf within leeway", format!(r#"{{"sub":"13","exp":{},"nbf":{}}}"#, now + 600, now + 30)),
        ("role user", format!(r#"{{"sub":"13","role":"user","exp":{}}}"#, now + 600)),
        (
            "admin serves its own sub",
            format!(r#"{{"sub":"13","role":"admin","exp":{}}}"#, now + 600),
        ),
    ];
    for (name, payload) in cases {
        let r = server.get(HEALTH, Some(&sign(&payload)));
        assert_eq!(r.status, 200, "{name}: {r:?}");
        assert_json(&r.json(), &health_json(13, 0, 0), name);
    }
    // kid/jku are ignored.
    let header = r#"{"alg":"HS256","typ":"JWT","kid":"k1","jku":"http://127.0.0.1:1/keys"}"#;
    let token =
        sign_with(header, &format!(r#"{{"sub":"13","exp":{}}}"#, now + 600), SECRET.as_bytes());
    assert_eq!(server.get(HEALTH, Some(&token)).status, 200);
    // "bearer" is case-insensitive (RFC 6750 / RFC 9110 auth-scheme).
    let raw = format!(
        "GET {HEALTH} HTTP/1.1\r\nHost: t\r\nAuthorization: bearer {}\r\nConnection: close\r\n\r\n",
        server.token(13)
    );
    assert_eq!(request(server.addr, &raw).status, 200);
}

#[test]
fn unknown_and_inactive_users_are_403() {
    let server = Server::start(&[]);
    let r = server.get(HEALTH, Some(&server.token(999)));
    assert_error(&r, 403, None, "unknown user 999");
    assert_eq!(r.header("WWW-Authenticate"), None, "{r:?}");

    let token = server.create_user(50);
    assert_eq!(server.get(HEALTH, Some(&token)).status, 200);
    let r = server.send_json(
        "PUT",
        "/api/admin/users/50",
        &server.admin_token(),
        r#"{"active":false}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_json(&r.json(), &json!({"id":50,"active":false}), "deactivate answer");
    for path in [HEALTH, STATUS, STREAM] {
        let r = server.get(path, Some(&token));
        assert_error(&r, 403, None, &format!("inactive user on {path}"));
        assert_eq!(r.header("WWW-Authenticate"), None, "{r:?}");
    }
    // Reactivated, it works again.
    let r =
        server.send_json("PUT", "/api/admin/users/50", &server.admin_token(), r#"{"active":true}"#);
    assert_json(&r.json(), &json!({"id":50,"active":true}), "reactivate answer");
    assert_eq!(server.get(HEALTH, Some(&token)).status, 200);
}

#[test]
fn access_token_query_parameter_works_for_stream_and_health() {
    let server = Server::start(&[]);
    let token = server.token(13);
    let r = server.get(&format!("{HEALTH}?access_token={token}"), None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_json(&r.json(), &health_json(13, 0, 0), "health via access_token");
    let mut s = Stream::open(server.addr, "", &format!("{STREAM}?access_token={token}"));
    expect_stream_start(&mut s, 5000);
    let note = s.next_event(SECS_5).expect("notification");
    assert_notification(&note, 13, 267000, 200000, 85.0, 133.5);
    assert!(
        server.log.lines().iter().all(|l| !l.contains(&token)),
        "the access_token appears in the log"
    );
}

#[test]
fn metrics_need_an_admin_token() {
    let server = Server::start(&[]);
    let r = server.get("/metrics", Some(&server.token(13)));
    assert_error(&r, 403, None, "user token on /metrics");
    assert_eq!(r.header("WWW-Authenticate"), None);
    let r = server.get("/metrics", Some(&server.admin_token()));
    assert_eq!(r.status, 200, "{r:?}");
    let content_type = r.header("Content-Type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "metrics Content-Type {content_type:?}"
    );
    assert!(r.body.contains("# TYPE "), "not Prometheus text: {:?}", r.body);
    for line in r.body.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
}

// ----- OPTIONS and CORS --------------------------------------------------------------------

fn preflight(server: &Server, path: &str, origin: Option<&str>) -> Response {
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    request(
        server.addr,
        &format!(
            "OPTIONS {path} HTTP/1.1\r\nHost: t\r\n{origin}Access-Control-Request-Method: GET\r\n\
             Access-Control-Request-Headers: authorization\r\nConnection: close\r\n\r\n"
        ),
    )
}

fn cors_headers(r: &Response) -> Vec<String> {
    r.head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("access-control-"))
        .map(str::to_string)
        .collect()
}

#[test]
fn options_is_204_without_cors_headers_by_default() {
    let server = Server::start(&[]);
    for path in [STREAM, HEALTH, "/nope", "*"] {
        let r = preflight(&server, path, Some("http://app.example"));
        assert_eq!(r.status, 204, "OPTIONS {path}: {r:?}");
        assert!(r.body.is_empty(), "204 with a body: {r:?}");
        assert!(cors_headers(&r).is_empty(), "CORS headers without --cors-origin: {r:?}");
    }
}

#[test]
fn cors_preflight_for_an_allowed_origin() {
    let server = Server::start(&["--cors-origin", "http://app.example"]);
    let r = preflight(&server, STREAM, Some("http://app.example"));
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.header("Access-Control-Allow-Origin").as_deref(), Some("http://app.example"));
    assert_eq!(
        r.header("Access-Control-Allow-Methods").as_deref(),
        Some("GET, POST, PUT, OPTIONS")
    );
    assert_eq!(
        r.header("Access-Control-Allow-Headers").as_deref(),
        Some("Authorization, Content-Type, Last-Event-ID")
    );
    assert_eq!(r.header("Access-Control-Max-Age").as_deref(), Some("600"));
    assert_eq!(r.header("Vary").as_deref(), Some("Origin"));

    for origin in [Some("http://evil.example"), Some("http://app.example.evil"), None] {
        let r = preflight(&server, STREAM, origin);
        assert_eq!(r.status, 204, "{origin:?}: {r:?}");
        assert_eq!(r.header("Access-Control-Allow-Origin"), None, "{origin:?}: {r:?}");
    }

    // A browser's EventSource sends no preflight: the answers themselves must allow the origin.
    let token = server.token(13);
    let headers = "Origin: http://app.example\r\n";
    let mut s = Stream::open(server.addr, headers, &format!("{STREAM}?access_token={token}"));
    assert_eq!(s.header("Access-Control-Allow-Origin").as_deref(), Some("http://app.example"));
    expect_stream_start(&mut s, 5000);
    let raw = format!(
        "GET {HEALTH} HTTP/1.1\r\nHost: t\r\nOrigin: http://evil.example\r\n\
         Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let r = request(server.addr, &raw);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Access-Control-Allow-Origin"), None, "{r:?}");
}

#[test]
fn cors_origins_can_be_listed_with_commas_and_repeated() {
    let server = Server::start(&[
        "--cors-origin",
        "http://a.example,http://b.example",
        "--cors-origin",
        "http://c.example",
    ]);
    for origin in ["http://a.example", "http://b.example", "http://c.example"] {
        let r = preflight(&server, HEALTH, Some(origin));
        assert_eq!(r.status, 204);
        assert_eq!(r.header("Access-Control-Allow-Origin").as_deref(), Some(origin), "{r:?}");
    }
    let r = preflight(&server, HEALTH, Some("http://d.example"));
    assert_eq!(r.header("Access-Control-Allow-Origin"), None, "{r:?}");

    let any = Server::start(&["--cors-origin", "*"]);
    let r = preflight(&any, HEALTH, Some("http://whatever.example"));
    assert_eq!(r.status, 204);
    let allowed = r.header("Access-Control-Allow-Origin");
    assert!(
        matches!(allowed.as_deref(), Some("http://whatever.example") | Some("*")),
        "--cors-origin '*': {r:?}"
    );
}

// ----- shutdown ----------------------------------------------------------------------------

#[test]
fn sigterm_ends_every_stream_with_a_spread_retry_and_exits_0() {
    let retry_ms = 2000;
    let mut server = Server::start(&["--retry-ms", "2000"]);
    let token = server.token(13);
    let mut streams: Vec<Stream> = (0..4).map(|_| server.open_stream(&token)).collect();
    for s in &mut streams {
        expect_stream_start(s, retry_ms);
        s.next_named("notification", SECS_5).expect("snapshot");
    }
    server.log.wait_for("SSE client connected for user 13 (4 open)", 0, SECS_5);
    let signalled = Instant::now();
    server.signal("TERM");
    let mut retries = Vec::new();
    for s in &mut streams {
        let mut last = None;
        while let Some(ev) = s.next_any(SECS_5) {
            last = Some(ev);
        }
        let last = last.expect("something before the end of the stream");
        assert!(
            last.event.is_empty() && last.data.is_empty(),
            "the last block is not a bare retry: {last:?}"
        );
        let retry = last.retry.expect("retry value");
        assert!(
            (retry_ms..=3 * retry_ms).contains(&retry),
            "shutdown retry {retry} outside [{retry_ms}, {}]",
            3 * retry_ms
        );
        retries.push(retry);
        assert!(
            s.wait_end(SECS_5),
            "stream not ended with the last chunk and EOF: ended {} eof {}",
            s.ended,
            s.eof
        );
        let body = String::from_utf8_lossy(&s.body).to_string();
        assert!(body.ends_with(&format!("\n\nretry: {retry}\n\n")), "{body:?}");
    }
    assert_eq!(server.wait_exit(SECS_5), Some(0), "exit code after SIGTERM");
    assert!(signalled.elapsed() < SECS_5, "took {:?} to stop", signalled.elapsed());
    assert!(
        retries.iter().any(|r| *r != retries[0]),
        "four streams all got retry {retries:?}: not drawn at random"
    );
}

#[test]
fn sigterm_lets_curl_exit_0() {
    let mut server = Server::start(&[]);
    let token = server.token(13);
    let url = format!("http://{}{STREAM}", server.addr);
    let mut curl = Command::new("curl")
        .args(["-sN", "-H", &format!("Authorization: Bearer {token}"), &url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `curl` ({e}): this test needs curl on PATH (CI installs it)")
        });
    server.log.wait_for("SSE client connected for user 13 (1 open)", 0, Duration::from_secs(10));
    server.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = curl.try_wait().expect("curl try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = curl.kill();
            let _ = curl.wait();
            panic!("curl still running 10 s after SIGTERM to the server");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    curl.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    curl.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "curl exit status after shutdown (18 = transfer closed with outstanding read data); \
         stdout {out:?} stderr {err:?}"
    );
    assert!(
        out.contains(&format!("event: connected\ndata: {CONNECTED_DATA}\n\n")),
        "curl output {out:?}"
    );
    assert!(out.contains("\"currentSpending\":267000"), "curl output {out:?}");
    assert_eq!(server.wait_exit(SECS_5), Some(0));
}

// ----- secret and start-up -----------------------------------------------------------------

#[test]
fn token_subcommand_and_server_share_the_generated_secret() {
    let dir = Arc::new(TempDir::new());
    let db = db_path(&dir.0);
    let out = Command::new(BIN)
        .arg("token")
        .arg("13")
        .arg("--db")
        .arg(&db)
        .env_remove("JWT_SECRET")
        .env_remove("PERIODE_SSE_DB")
        .stdin(Stdio::null())
        .output()
        .expect("run periode-sse token");
    assert!(out.status.success(), "token failed: {out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "not a JWS: {token:?}");
    let payload: Value =
        serde_json::from_slice(&b64_decode(token.split('.').nth(1).unwrap())).unwrap();
    let exp = payload["exp"].as_i64().expect("exp");
    assert!((exp - now_secs() - 3600).abs() <= 5, "default ttl is not 3600 s: {payload}");

    let secret_path = {
        let mut p = db.clone().into_os_string();
        p.push(".secret");
        std::path::PathBuf::from(p)
    };
    let meta = std::fs::metadata(&secret_path)
        .unwrap_or_else(|e| panic!("{} missing: {e}", secret_path.display()));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "secret file mode");
    let text = std::fs::read_to_string(&secret_path).unwrap();
    let key = text.trim().to_string();
    assert!(key.len() >= 32, "secret shorter than 32 bytes: {key:?}");
    assert!(key.bytes().all(|b| b.is_ascii_graphic()), "secret not printable: {key:?}");
    assert_eq!(text.trim_end_matches('\n'), key, "secret file is more than one line");

    let server = Server::start_with(Options {
        args: &["--demo"],
        secret: None,
        dir: Some(dir.clone()),
        ..Options::default()
    });
    let r = server.get(HEALTH, Some(&token));
    assert_eq!(r.status, 200, "token from `periode-sse token` rejected: {r:?}");
    assert_json(&r.json(), &health_json(13, 0, 0), "health with generated secret");
    // The file's text is the key, exactly as a JWT_SECRET would be.
    let own = sign_with(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &format!(r#"{{"sub":"13","exp":{}}}"#, now_secs() + 600),
        key.as_bytes(),
    );
    assert_eq!(server.get(HEALTH, Some(&own)).status, 200);
    // And the test SECRET is not it.
    assert_eq!(server.get(HEALTH, Some(&server.token(13))).status, 401);
    // The file is reused, not regenerated.
    assert_eq!(std::fs::read_to_string(&secret_path).unwrap(), text);
}

#[test]
fn a_jwt_secret_shorter_than_32_bytes_stops_start_up() {
    let dir = TempDir::new();
    let short = "0123456789abcdef0123456789abcde"; // 31 bytes
    let mut child = Command::new(BIN)
        .arg("--db")
        .arg(db_path(&dir.0))
        .args(["--listen", "127.0.0.1:0"])
        .env("JWT_SECRET", short)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn periode-sse");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started with a 31-byte JWT_SECRET");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!status.success(), "exit status {status:?}");
    assert!(err.contains("32"), "the message does not mention 32: {err:?}");
    assert!(!err.contains(short), "the secret is echoed: {err:?}");

    // Exactly 32 bytes is enough.
    let ok = "0123456789abcdef0123456789abcdef";
    let server = Server::start_with(Options { secret: Some(ok), ..Options::default() });
    let token = sign_with(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &format!(r#"{{"sub":"0","role":"admin","exp":{}}}"#, now_secs() + 600),
        ok.as_bytes(),
    );
    assert_eq!(server.get("/metrics", Some(&token)).status, 200);
}

#[test]
fn demo_twice_on_one_database_does_not_double_the_spending() {
    let dir = Arc::new(TempDir::new());
    let opts = || Options { args: &["--demo"], dir: Some(dir.clone()), ..Options::default() };
    let mut first = Server::start_with(opts());
    let r = first.get(STATUS, Some(&first.token(13)));
    assert_json(&r.json(), &demo_status(), "first start");
    first.signal("TERM");
    assert_eq!(first.wait_exit(SECS_5), Some(0));
    drop(first);
    let second = Server::start_with(opts());
    let r = second.get(STATUS, Some(&second.token(13)));
    assert_eq!(r.status, 200, "{r:?}");
    assert_json(&r.json(), &demo_status(), "second start");
}

// ----- status arithmetic, as /status shows it ----------------------------------------------

/// Makes `user` with a limit over the current month and the given spending (one transaction
/// per amount, at `occurredAt` = now unless given); returns its token.
fn user_with_spending(
    server: &Server,
    user: i64,
    max: i64,
    alert: &str,
    amounts: &[i64],
) -> String {
    let token = server.create_user(user);
    let (start, end) = current_month();
    let body = format!(
        r#"{{"maxLimit":{max},"alertPercentage":{alert},"periodeStart":"{start}","periodeEnd":"{end}"}}"#
    );
    let r = server.send_json("PUT", LIMIT, &token, &body);
    assert_eq!(r.status, 200, "set limit for {user}: {r:?}");
    for amount in amounts {
        let r =
            server.send_json("POST", TRANSACTIONS, &token, &format!(r#"{{"amount":{amount}}}"#));
        assert_eq!(r.status, 201, "spend {amount} for {user}: {r:?}");
    }
    token
}

#[test]
fn status_percentage_is_rounded_half_away_from_zero_in_integers() {
    let server = Server::start(&[]);
    // (max, alert, amounts, percentage, isAlert)
    let cases: [(i64, &str, &[i64], f64, bool); 9] = [
        (3, "85", &[1], 33.33, false),
        (3, "85", &[2], 66.67, false),
        // 1.005 exactly: a float computation gives 1.0 (1.005 is 1.00499… in binary).
        (200_000, "85", &[2_010], 1.01, false),
        (800, "85", &[1], 0.13, false),
        (200_000, "85", &[170_000], 85.0, true),
        // 33.335 rounds to 33.34, and isAlert compares the rounded value.
        (200_000, "33.34", &[66_670], 33.34, true),
        (3, "33.33", &[1], 33.33, true),
        (3, "33.34", &[1], 33.33, false),
        // 10^15 × 100 × 100 overflows i64: the arithmetic must not.
        (1, "100", &[1_000_000_000_000_000], 100_000_000_000_000_000.0, true),
    ];
    for (i, (max, alert, amounts, pct, is_alert)) in cases.iter().enumerate() {
        let user = 100 + i as i64;
        let token = user_with_spending(&server, user, *max, alert, amounts);
        let r = server.get(STATUS, Some(&token));
        assert_eq!(r.status, 200, "case {i}: {r:?}");
        let (start, end) = current_month();
        let alert: f64 = alert.parse().unwrap();
        assert_json(
            &r.json(),
            &json!({
                "currentSpending": amounts.iter().sum::<i64>(),
                "maxLimit": max,
                "alertPercentage": alert,
                "currentPercentage": pct,
                "isAlert": is_alert,
                "periodeStart": start,
                "periodeEnd": end,
            }),
            &format!("case {i}: max {max}, alert {alert}, amounts {amounts:?}"),
        );
    }
}

#[test]
fn status_counts_transactions_inside_the_period_bounds_only() {
    let server = Server::start(&[]);
    let token = user_with_spending(&server, 60, 1000, "50", &[]);
    let (start, end) = current_month();
    let start_ms = parse_utc_ms(&start).unwrap();
    let end_ms = parse_utc_ms(&end).unwrap();
    assert_eq!(format_utc_ms(start_ms), start);
    assert_eq!(format_utc_ms(end_ms), end);
    let at = [(start_ms - 1, 1), (start_ms, 10), (end_ms, 100), (end_ms + 1, 1000)];
    for (ms, amount) in at {
        let body = format!(r#"{{"amount":{amount},"occurredAt":"{}"}}"#, format_utc_ms(ms));
        let r = server.send_json("POST", TRANSACTIONS, &token, &body);
        assert_eq!(r.status, 201, "{body}: {r:?}");
    }
    let status = server.get(STATUS, Some(&token)).json();
    assert_eq!(status["currentSpending"], 110, "only the two at the bounds count: {status}");
    assert_eq!(status["currentPercentage"].as_f64(), Some(11.0), "{status}");
}

// ----- more of the stream's edges ----------------------------------------------------------

#[test]
fn a_stream_can_follow_a_keep_alive_request_on_one_connection() {
    let server = Server::start(&[]);
    let token = server.token(13);
    let mut conn = Conn::open(&server);
    conn.send(&get_keep_alive(HEALTH, &token));
    assert_json(&conn.read_response().json(), &health_json(13, 0, 0), "health first");
    conn.send(&format!(
        "GET {STREAM} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n"
    ));
    assert!(conn.buf.is_empty());
    let mut s = Stream::from_socket(conn.sock);
    expect_stream_start(&mut s, 5000);
    let note = s.next_event(SECS_5).expect("notification");
    assert_notification(&note, 13, 267000, 200000, 85.0, 133.5);
}

#[test]
fn a_stream_request_sent_one_byte_at_a_time_is_served() {
    let server = Server::start(&[]);
    let raw = format!(
        "GET {STREAM} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\nAuthorization: Bearer {}\r\n\r\n",
        server.token(13)
    );
    let mut sock = connect(server.addr);
    for byte in raw.as_bytes() {
        sock.write_all(std::slice::from_ref(byte)).unwrap();
        std::thread::sleep(Duration::from_micros(300));
    }
    let mut s = Stream::from_socket(sock);
    expect_stream_start(&mut s, 5000);
    assert_eq!(s.next_event(SECS_5).expect("notification").event, "notification");
}

#[test]
fn streams_beyond_max_conns_per_user_are_429_and_freed_slots_are_reusable() {
    let server = Server::start(&["--max-conns-per-user", "2"]);
    let token = server.token(13);
    let mut a = server.open_stream(&token);
    expect_stream_start(&mut a, 5000);
    let mut b = server.open_stream(&token);
    expect_stream_start(&mut b, 5000);
    let r = server.get(STREAM, Some(&token));
    assert_error(&r, 429, None, "third stream");
    // Other users are not affected.
    let t40 = server.create_user(40);
    let mut c = server.open_stream(&t40);
    expect_stream_start(&mut c, 5000);
    drop(b);
    server.log.wait_for("SSE client removed for user 13 (1 open)", 0, SECS_5);
    let mut d = server.open_stream(&token);
    expect_stream_start(&mut d, 5000);
    assert_json(&server.health(&token), &health_json(13, 2, 3), "health after reuse");
}

#[test]
fn sigint_ends_streams_like_sigterm() {
    let mut server = Server::start(&[]);
    let mut s = server.open_stream(&server.token(13));
    expect_stream_start(&mut s, 5000);
    server.log.wait_for("SSE client connected for user 13 (1 open)", 0, SECS_5);
    server.signal("INT");
    let mut last = None;
    while let Some(ev) = s.next_any(SECS_5) {
        last = Some(ev);
    }
    let retry = last.and_then(|e| e.retry).expect("a retry block before the end");
    assert!((5000..=15000).contains(&retry), "retry {retry}");
    assert!(s.wait_end(SECS_5), "stream not ended properly");
    assert_eq!(server.wait_exit(SECS_5), Some(0));
}

#[test]
fn sigterm_answers_complete_requests_and_closes_half_received_ones() {
    let mut server = Server::start(&[]);
    let token = server.token(13);
    let mut stream = server.open_stream(&token);
    expect_stream_start(&mut stream, 5000);
    // A half-sent head, and an idle keep-alive connection that was served once.
    let mut half = connect(server.addr);
    half.write_all(format!("GET {HEALTH} HTTP/1.1\r\nHost: t\r\n").as_bytes()).unwrap();
    let mut idle = Conn::open(&server);
    idle.send(&get_keep_alive(HEALTH, &token));
    assert_eq!(idle.read_response().status, 200);
    server.log.wait_for("SSE client connected for user 13 (1 open)", 0, SECS_5);
    // A later request on another connection has been answered, so the half head has most
    // likely been read too; either way the half-received request must get no 200 and must not
    // keep the process alive.
    assert_eq!(server.get(HEALTH, Some(&token)).status, 200);
    server.signal("TERM");
    let mut rest = Vec::new();
    let _ = half.read_to_end(&mut rest);
    let rest_text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty()
            || (rest_text.starts_with("HTTP/1.1 ") && !rest_text.starts_with("HTTP/1.1 200")),
        "half-received request answered: {rest_text:?}"
    );
    let mut rest = Vec::new();
    let _ = idle.sock.read_to_end(&mut rest);
    assert!(rest.is_empty(), "idle keep-alive got bytes at shutdown: {rest:?}");
    assert!(stream.wait_end(SECS_5), "stream not ended properly");
    assert_eq!(server.wait_exit(SECS_5), Some(0));
}

// ----- the token subcommand ----------------------------------------------------------------

fn run_token(args: &[&str], db: &std::path::Path, secret: Option<&str>) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("token").args(args).arg("--db").arg(db);
    cmd.env_remove("JWT_SECRET").env_remove("PERIODE_SSE_DB");
    if let Some(secret) = secret {
        cmd.env("JWT_SECRET", secret);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run periode-sse token");
    assert!(out.status.success(), "token {args:?} failed: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload part");
    serde_json::from_slice(&b64_decode(payload)).expect("payload JSON")
}

#[test]
fn token_subcommand_roles_ttl_and_jwt_secret() {
    let server = Server::start(&[]);
    // With JWT_SECRET set, `token` signs with it (and writes no secret file).
    let admin = run_token(&["0", "--role", "admin", "--ttl", "120"], &server.db, Some(SECRET));
    let claims = claims_of(&admin);
    assert_eq!(claims["role"], "admin", "{claims}");
    let exp = claims["exp"].as_i64().expect("exp");
    assert!((exp - now_secs() - 120).abs() <= 5, "--ttl 120 gave {claims}");
    let r = server.get("/metrics", Some(&admin));
    assert_eq!(r.status, 200, "admin token from `token --role admin`: {r:?}");
    let user = run_token(&["13"], &server.db, Some(SECRET));
    assert_eq!(server.get(HEALTH, Some(&user)).status, 200);
    assert_eq!(server.get("/metrics", Some(&user)).status, 403);
    let mut secret_file = server.db.clone().into_os_string();
    secret_file.push(".secret");
    assert!(
        !std::path::Path::new(&secret_file).exists(),
        "a secret file was written although JWT_SECRET was set"
    );
}

#[test]
fn demo_makes_user_13_active_again() {
    let dir = Arc::new(TempDir::new());
    let opts = || Options { args: &["--demo"], dir: Some(dir.clone()), ..Options::default() };
    let mut first = Server::start_with(opts());
    let r =
        first.send_json("PUT", "/api/admin/users/13", &first.admin_token(), r#"{"active":false}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(first.get(HEALTH, Some(&first.token(13))).status, 403);
    first.signal("TERM");
    assert_eq!(first.wait_exit(SECS_5), Some(0));
    drop(first);
    let second = Server::start_with(opts());
    let r = second.get(STATUS, Some(&second.token(13)));
    assert_eq!(r.status, 200, "--demo did not make user 13 active: {r:?}");
    assert_json(&r.json(), &demo_status(), "status after reactivation");
}

// ----- configuration from the environment --------------------------------------------------

/// Starts the binary directly with the given flags and environment (nothing inherited that
/// configures it) and collects its stderr lines on a channel.
fn spawn_raw(
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in ["JWT_SECRET", "RUST_LOG", "PERIODE_SSE_LISTEN", "PERIODE_SSE_DB"] {
        cmd.env_remove(var);
    }
    cmd.env("JWT_SECRET", SECRET).envs(env.iter().copied());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn periode-sse");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn env_configures_the_server_and_flags_win() {
    let dir = TempDir::new();
    let env_db = dir.0.join("env.db");
    let flag_db = dir.0.join("flag.db");
    let env_db_text = env_db.to_str().unwrap().to_string();
    let env = [
        ("PERIODE_SSE_LISTEN", "127.0.0.1:0"),
        ("PERIODE_SSE_DB", env_db_text.as_str()),
        ("RUST_LOG", "info"),
    ];
    // From the environment alone.
    let (mut child, lines) = spawn_raw(&["--demo"], &env);
    let mut seen = Vec::new();
    let mut addr = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let Some(rest) = line.split("listening on http://").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_string);
            break;
        }
        seen.push(line);
    }
    let addr: std::net::SocketAddr = match addr {
        Some(a) => a.parse().unwrap(),
        None => {
            let _ = child.kill();
            panic!("no listening line; log {seen:?}");
        }
    };
    assert!(env_db.exists(), "PERIODE_SSE_DB not used");
    let r = request(
        addr,
        &format!(
            "GET {HEALTH} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            sign(&format!(r#"{{"sub":"13","exp":{}}}"#, now_secs() + 600))
        ),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let _ = child.kill();
    let _ = child.wait();

    // Flags win: --listen over PERIODE_SSE_LISTEN (port 1 would fail), --db over PERIODE_SSE_DB,
    // --log-level over RUST_LOG (warn would hide the listening line).
    std::fs::remove_file(&env_db).unwrap();
    let env = [
        ("PERIODE_SSE_LISTEN", "127.0.0.1:1"),
        ("PERIODE_SSE_DB", env_db_text.as_str()),
        ("RUST_LOG", "warn"),
    ];
    let flag_db_text = flag_db.to_str().unwrap().to_string();
    let args = ["--listen", "127.0.0.1:0", "--db", &flag_db_text, "--log-level", "info"];
    let (mut child, lines) = spawn_raw(&args, &env);
    let mut listening = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains("listening on http://127.0.0.1:") && !line.contains("127.0.0.1:1 ") {
            listening = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "the flags did not win over the environment");
    wait_until("flag.db created", SECS_5, || flag_db.exists());
    assert!(!env_db.exists(), "PERIODE_SSE_DB used although --db was given");
}

#[test]
fn http10_keep_alive_is_confirmed_and_absolute_targets_are_served() {
    let server = Server::start(&[]);
    let token = server.token(13);
    let mut sock = connect(server.addr);
    let raw = format!(
        "GET http://127.0.0.1/api/periode-limit/notifications/health HTTP/1.0\r\n\
         Authorization: Bearer {token}\r\nConnection: keep-alive\r\n\r\n"
    );
    sock.write_all(raw.as_bytes()).unwrap();
    let first = read_response(&mut sock);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("Connection").as_deref(), Some("keep-alive"));
    assert_eq!(first.json()["userId"], 13);
    // The same connection serves a second request, which closes it.
    let raw = format!("GET {HEALTH} HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n");
    sock.write_all(raw.as_bytes()).unwrap();
    let second = read_response(&mut sock);
    assert_eq!(second.status, 200);
    assert_eq!(second.header("Connection").as_deref(), Some("close"));
}

#[test]
fn with_cors_every_answer_varies_on_origin_and_two_authorizations_are_refused() {
    let server = Server::start(&["--cors-origin", "http://app.example"]);
    let token = server.token(13);
    let raw = format!(
        "GET {HEALTH} HTTP/1.1\r\nHost: t\r\nOrigin: http://evil.example\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    );
    let r = request(server.addr, &raw);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Access-Control-Allow-Origin"), None);
    assert_eq!(r.header("Vary").as_deref(), Some("Origin"));
    let raw = format!(
        "GET {HEALTH} HTTP/1.1\r\nAuthorization: Bearer x\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let r = request(server.addr, &raw);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_request");
}
