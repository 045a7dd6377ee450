//! What the feature tests share beyond the harness: assertions on answers and events, request
//! builders, keep-alive readers, token forgers and waits. Gathered here from the files the
//! tests used to live in, so that each helper exists once.

use super::*;

pub const SECS_5: Duration = Duration::from_secs(5);

pub const CONNECTED_DATA: &str = r#"{"message":"Connected to Spending notifications"}"#;

pub const INVALID_TOKEN: &str = r#"Bearer error="invalid_token""#;

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

pub fn b64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap_or_else(|e| panic!("not base64url ({e}): {text:?}"))
}

/// Epoch ms as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_utc_ms(ms: i64) -> String {
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
pub fn parse_utc_ms(text: &str) -> Option<i64> {
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
pub fn assert_json(actual: &Value, expected: &Value, context: &str) {
    pub fn same(a: &Value, e: &Value) -> bool {
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
pub fn assert_error(r: &Response, status: u16, code: Option<&str>, context: &str) {
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
pub fn allowed_methods(r: &Response) -> Vec<String> {
    let allow = r.header("Allow").unwrap_or_else(|| panic!("405 without Allow: {r:?}"));
    allow.split(',').map(|m| m.trim().to_string()).collect()
}

pub fn demo_status() -> Value {
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
pub fn assert_notification(ev: &Event, user: i64, spending: i64, max: i64, alert: f64, pct: f64) {
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
pub fn expect_stream_start(s: &mut Stream, retry_ms: u64) {
    assert_eq!(s.status, 200, "stream head: {}", s.head);
    let first = s.next_any(SECS_5).expect("a retry block first");
    assert_eq!(first.retry, Some(retry_ms), "first block: {first:?}");
    assert_eq!(first.event, "", "first block: {first:?}");
    let connected = s.next_event(SECS_5).expect("connected event");
    assert_eq!(connected.event, "connected", "{connected:?}");
    assert_eq!(connected.data, CONNECTED_DATA);
    assert_eq!(connected.id, None);
}

pub fn get_keep_alive(path: &str, token: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n")
}

pub fn health_json(user: i64, mine: u64, total: u64) -> Value {
    json!({"status":"healthy","userId":user,"connectedClients":mine,"totalSystemClients":total})
}

pub fn preflight(server: &Server, path: &str, origin: Option<&str>) -> Response {
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    request(
        server.addr,
        &format!(
            "OPTIONS {path} HTTP/1.1\r\nHost: t\r\n{origin}Access-Control-Request-Method: GET\r\n\
             Access-Control-Request-Headers: authorization\r\nConnection: close\r\n\r\n"
        ),
    )
}

pub fn cors_headers(r: &Response) -> Vec<String> {
    r.head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("access-control-"))
        .map(str::to_string)
        .collect()
}

/// Makes `user` with a limit over the current month and the given spending (one transaction
/// per amount, at `occurredAt` = now unless given); returns its token.
pub fn user_with_spending(
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

pub fn run_token(args: &[&str], db: &std::path::Path, secret: Option<&str>) -> String {
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

pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload part");
    serde_json::from_slice(&b64_decode(payload)).expect("payload JSON")
}

/// Starts the binary directly with the given flags and environment (nothing inherited that
/// configures it) and collects its stderr lines on a channel.
pub fn spawn_raw(
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

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub const WAIT: Duration = Duration::from_secs(5);

pub const DEMO_USER: i64 = 13;

pub const DEMO_SPENT: i64 = 267_000;

pub const DEMO_LIMIT: i64 = 200_000;

/// A keep-alive connection carrying one request after another.
pub struct Client {
    sock: TcpStream,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { sock: connect(addr) }
    }

    pub fn send(&mut self, method: &str, path: &str, token: &str, body: &str) -> Response {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.sock.write_all(raw.as_bytes()).expect("send request");
        read_response(&mut self.sock)
    }
}

pub fn post_tx(server: &Server, token: &str, body: &str) -> Response {
    server.send_json("POST", TRANSACTIONS, token, body)
}

/// Posts `{"amount":N}` and insists on 201.
pub fn spend(server: &Server, token: &str, amount: i64) -> Value {
    let r = post_tx(server, token, &format!(r#"{{"amount":{amount}}}"#));
    assert_eq!(r.status, 201, "POST amount {amount}: {}", r.body);
    r.json()
}

/// Opens a stream with the token and any extra header lines, and reads up to `connected`.
pub fn open_with(server: &Server, token: &str, extra_headers: &str, target: &str) -> Stream {
    let mut s = Stream::open(
        server.addr,
        &format!("Authorization: Bearer {token}\r\n{extra_headers}"),
        target,
    );
    assert_eq!(s.status, 200, "stream refused: {}", s.head);
    assert!(
        s.header("content-type").is_some_and(|v| v.starts_with("text/event-stream")),
        "{}",
        s.head
    );
    let first = s.next_event(WAIT).expect("a first event");
    assert_eq!(first.event, "connected", "first event: {first:?}");
    assert_eq!(first.json(), json!({"message":"Connected to Spending notifications"}));
    s
}

pub fn open(server: &Server, token: &str) -> Stream {
    open_with(server, token, "", STREAM)
}

pub fn open_after(server: &Server, token: &str, last_event_id: &str) -> Stream {
    open_with(server, token, &format!("Last-Event-ID: {last_event_id}\r\n"), STREAM)
}

/// The next event that is not a heartbeat, within `timeout`.
pub fn next_non_heartbeat(s: &mut Stream, timeout: Duration) -> Option<Event> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = s.next_event(left)?;
        if ev.event != "heartbeat" {
            return Some(ev);
        }
    }
}

/// The next event, which must be a notification.
pub fn next_note(s: &mut Stream) -> Event {
    let ev = next_non_heartbeat(s, WAIT).expect("a notification within 5 s");
    assert_eq!(ev.event, "notification", "expected a notification: {ev:?}");
    ev
}

pub fn note_id(ev: &Event) -> u64 {
    ev.id
        .as_deref()
        .unwrap_or_else(|| panic!("notification without id: {ev:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("id not a decimal integer: {ev:?}"))
}

/// Checks a notification's id, user, total and limit, and the exact set of its fields.
pub fn assert_note(ev: &Event, id: u64, user: i64, spending: i64, max: i64) {
    assert_eq!(ev.event, "notification", "{ev:?}");
    assert_eq!(note_id(ev), id, "wrong id: {ev:?}");
    let v = ev.json();
    let keys: BTreeSet<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "userId",
            "currentSpending",
            "maxSpending",
            "alertPercentage",
            "currentPercentage",
            "isAlert",
            "timestamp"
        ]),
        "{ev:?}"
    );
    assert_eq!(v["userId"], user, "{ev:?}");
    assert_eq!(v["currentSpending"], spending, "{ev:?}");
    assert_eq!(v["maxSpending"], max, "{ev:?}");
    assert_rfc3339_ms(v["timestamp"].as_str().expect("timestamp string"));
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`
pub fn assert_rfc3339_ms(t: &str) {
    let b = t.as_bytes();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22];
    assert!(
        b.len() == 24
            && digits.iter().all(|&i| b[i].is_ascii_digit())
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'.'
            && b[23] == b'Z',
        "not RFC 3339 UTC with milliseconds: {t:?}"
    );
}

pub fn as_f64(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// No event other than heartbeats arrives within `within`.
pub fn assert_quiet(s: &mut Stream, within: Duration) {
    if let Some(ev) = next_non_heartbeat(s, within) {
        panic!("expected nothing, got {ev:?}");
    }
}

pub fn status_of(server: &Server, token: &str) -> Value {
    let r = server.get(STATUS, Some(token));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

pub fn limit_body(max: i64, alert: &str, start: &str, end: &str) -> String {
    format!(
        r#"{{"maxLimit":{max},"alertPercentage":{alert},"periodeStart":"{start}","periodeEnd":"{end}"}}"#
    )
}

/// Prometheus text format → series (`name` or `name{k="v",…}` with labels sorted) → value.
pub fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut typed = BTreeSet::new();
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().expect("TYPE name");
            let kind = parts.next().expect("TYPE kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad TYPE line {line:?}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(line.len());
        let name = &line[..name_end];
        assert!(
            !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices().peekable();
            let mut consumed = None;
            loop {
                while chars.peek().is_some_and(|&(_, c)| c == ' ' || c == ',') {
                    chars.next();
                }
                match chars.peek() {
                    Some(&(i, '}')) => {
                        consumed = Some(i + 1);
                        break;
                    }
                    None => break,
                    _ => {}
                }
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert_eq!(
                    chars.next().map(|(_, c)| c),
                    Some('"'),
                    "label value not quoted in {line:?}"
                );
                let mut value = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(e) => value.push(e),
                            None => break,
                        },
                        '"' => {
                            closed = true;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                assert!(closed, "unterminated label value in {line:?}");
                labels.push((key.trim().to_string(), value));
            }
            let consumed = consumed.unwrap_or_else(|| panic!("unterminated labels in {line:?}"));
            rest = &after[consumed..];
        }
        let value_text =
            rest.split_whitespace().next().unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        labels.sort();
        let key = if labels.is_empty() {
            name.to_string()
        } else {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", inner.join(","))
        };
        let base = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| typed.contains(*b)))
            .unwrap_or(name);
        assert!(
            typed.contains(name) || typed.contains(base),
            "sample without a TYPE line: {line:?}"
        );
        assert!(out.insert(key.clone(), value).is_none(), "series {key} twice");
    }
    out
}

pub fn fetch_metrics(server: &Server, admin: &str) -> HashMap<String, f64> {
    let r = server.get("/metrics", Some(admin));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("content-type").is_some_and(|v| v.starts_with("text/plain")), "{}", r.head);
    parse_prometheus(&r.body)
}

pub fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

/// The demo user: exists, active, with a limit over the current month.
pub const USER: i64 = 13;

/// Sends raw bytes (not necessarily UTF-8) on a fresh connection and reads one response.
pub fn send_bytes(addr: SocketAddr, raw: &[u8]) -> (TcpStream, Response) {
    let mut sock = connect(addr);
    // The server may answer and stop reading before everything is sent (an oversized body):
    // a failed write is fine as long as the answer arrives.
    let _ = sock.write_all(raw);
    let response = read_response(&mut sock);
    (sock, response)
}

/// The server must still serve a well-formed request, on a fresh connection.
#[track_caller]
pub fn assert_serving(server: &Server) {
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
pub fn wait_closed(sock: &mut TcpStream, within: Duration) -> Result<Vec<u8>, Vec<u8>> {
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
pub fn assert_error_and_close(sock: &mut TcpStream, r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}{}", r.head, r.body);
    assert_json_error(r, what);
    assert_eq!(
        r.header("Connection").map(|v| v.to_ascii_lowercase()),
        Some("close".to_string()),
        "{what}: the answer must say Connection: close"
    );
    assert_closed_with_nothing_more(sock, &format!("{what} (after a {status})"));
}

/// The server closes `sock` within 5 s and sends nothing (more) before it does.
pub fn assert_closed_with_nothing_more(sock: &mut TcpStream, what: &str) {
    match wait_closed(sock, Duration::from_secs(5)) {
        Ok(extra) => assert!(
            extra.is_empty(),
            "{what}: bytes before the close: {:?}",
            String::from_utf8_lossy(&extra)
        ),
        Err(_) => panic!("{what}: the connection stayed open"),
    }
}

#[track_caller]
pub fn assert_json_error(r: &Response, what: &str) {
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
pub fn expect_rejection(server: &Server, raw: &[u8], status: u16, what: &str) {
    let (mut sock, r) = send_bytes(server.addr, raw);
    assert_error_and_close(&mut sock, &r, status, what);
    assert_serving(server);
}

pub fn get_with_headers(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n")
}

pub fn post_json(path: &str, token: &str, body: &str, keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive { "" } else { "Connection: close\r\n" };
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{connection}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn metric_value(server: &Server, name: &str) -> u64 {
    let r = server.get("/metrics", Some(&server.admin_token()));
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{}", r.body))
}

/// Polls until `check` holds or `within` passes.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
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

/// When a close came, relative to a start, or why it did not.
pub fn closed_within(
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

pub fn expect_408(sock: &mut TcpStream, first_byte: Instant, what: &str) -> Result<(), String> {
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

/// A valid token whose signature has a `-` or `_`, re-spelled in the standard alphabet
/// (`+`, `/`): the same signature bytes, but not base64url.
pub fn standard_alphabet_token() -> String {
    (0..200)
        .map(|i| sign(&format!(r#"{{"sub":"13","exp":{}}}"#, now_secs() + 600 + i)))
        .find(|t| t.rsplit('.').next().is_some_and(|sig| sig.contains(['-', '_'])))
        .map(|t| {
            let (input, sig) = t.rsplit_once('.').expect("dot");
            format!("{input}.{}", sig.replace('-', "+").replace('_', "/"))
        })
        .expect("some signature among 200 has a - or _")
}

pub fn valid_payload(user: i64) -> String {
    format!(r#"{{"sub":"{user}","exp":{}}}"#, now_secs() + 600)
}

/// An admin's limit body for `user` over the current month.
pub fn admin_month_limit(user: i64, max: i64, alert: &str) -> String {
    let (start, end) = current_month();
    format!(
        r#"{{"userId":{user},"maxLimit":{max},"alertPercentage":{alert},"periodeStart":"{start}","periodeEnd":"{end}"}}"#
    )
}

/// A one-shot GET of the stream with only a ticket (no Authorization), read as an answer.
pub fn get_with_ticket(server: &Server, ticket: &str) -> Response {
    server.get(&format!("{STREAM}?ticket={ticket}"), None)
}

/// The refusal of a used, expired, unknown or malformed ticket (SPEC §8).
pub fn assert_invalid_ticket(r: &Response, context: &str) {
    assert_error(r, 401, Some("invalid_token"), context);
    assert_eq!(
        r.header("WWW-Authenticate").as_deref(),
        Some("Bearer error=\"invalid_token\""),
        "{context}"
    );
    assert_eq!(r.header("Cache-Control").as_deref(), Some("no-store"), "{context}");
}

pub const TICKET: &str = "/api/periode-limit/notifications/ticket";

/// `POST …/ticket` with the token in the header and no body.
pub fn post_ticket(server: &Server, token: &str) -> Response {
    request(
        server.addr,
        &format!(
            "POST {TICKET} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
}

/// A fresh ticket from `server`, checked to be the SPEC's answer (§8): 201, never cached,
/// 22 characters (128 bits), valid 30 s.
pub fn mint(server: &Server, token: &str) -> String {
    let r = post_ticket(server, token);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("Cache-Control").as_deref(), Some("no-store"));
    let body = r.json();
    let ticket = body["ticket"].as_str().expect("a ticket string").to_string();
    assert_eq!(ticket.len(), 22, "{ticket}");
    assert_eq!(body, json!({"ticket": ticket, "expiresIn": 30}));
    ticket
}
