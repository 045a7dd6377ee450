//! Live behaviour of the whole server over loopback sockets: writes reaching exactly the right
//! streams, resuming by `Last-Event-ID`, durability across `kill -9`, deactivation and token
//! expiry ending streams properly, input validation, `/metrics`, and concurrent writers.
//!
//! Every test starts its own server (`--demo`, heartbeat 30 s so heartbeats stay out of the
//! way) and never sleeps "long enough": it waits for events or log lines with deadlines, and
//! proves that something was *not* sent by ordering (the next event a stream sees after a
//! later write must be that later write's notification).

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);
const DEMO_USER: i64 = 13;
const DEMO_SPENT: i64 = 267_000;
const DEMO_LIMIT: i64 = 200_000;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A keep-alive connection carrying one request after another.
struct Client {
    sock: TcpStream,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client { sock: connect(addr) }
    }

    fn send(&mut self, method: &str, path: &str, token: &str, body: &str) -> Response {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.sock.write_all(raw.as_bytes()).expect("send request");
        read_response(&mut self.sock)
    }
}

fn post_tx(server: &Server, token: &str, body: &str) -> Response {
    server.send_json("POST", TRANSACTIONS, token, body)
}

/// Posts `{"amount":N}` and insists on 201.
fn spend(server: &Server, token: &str, amount: i64) -> Value {
    let r = post_tx(server, token, &format!(r#"{{"amount":{amount}}}"#));
    assert_eq!(r.status, 201, "POST amount {amount}: {}", r.body);
    r.json()
}

/// Opens a stream with the token and any extra header lines, and reads up to `connected`.
fn open_with(server: &Server, token: &str, extra_headers: &str, target: &str) -> Stream {
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

fn open(server: &Server, token: &str) -> Stream {
    open_with(server, token, "", STREAM)
}

fn open_after(server: &Server, token: &str, last_event_id: &str) -> Stream {
    open_with(server, token, &format!("Last-Event-ID: {last_event_id}\r\n"), STREAM)
}

/// The next event that is not a heartbeat, within `timeout`.
fn next_non_heartbeat(s: &mut Stream, timeout: Duration) -> Option<Event> {
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
fn next_note(s: &mut Stream) -> Event {
    let ev = next_non_heartbeat(s, WAIT).expect("a notification within 5 s");
    assert_eq!(ev.event, "notification", "expected a notification: {ev:?}");
    ev
}

fn note_id(ev: &Event) -> u64 {
    ev.id
        .as_deref()
        .unwrap_or_else(|| panic!("notification without id: {ev:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("id not a decimal integer: {ev:?}"))
}

/// Checks a notification's id, user, total and limit, and the exact set of its fields.
fn assert_note(ev: &Event, id: u64, user: i64, spending: i64, max: i64) {
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
fn assert_rfc3339_ms(t: &str) {
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

fn as_f64(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// No event other than heartbeats arrives within `within`.
fn assert_quiet(s: &mut Stream, within: Duration) {
    if let Some(ev) = next_non_heartbeat(s, within) {
        panic!("expected nothing, got {ev:?}");
    }
}

/// A JSON error answer with this status (and code, when given).
fn assert_error(r: &Response, status: u16, code: Option<&str>, what: &str) {
    assert_eq!(r.status, status, "{what}: {} {}", r.head, r.body);
    assert!(
        r.header("content-type").is_some_and(|v| v.starts_with("application/json")),
        "{what}: not JSON: {}",
        r.head
    );
    let v: Value = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("{what}: error body not JSON ({e}): {:?}", r.body));
    assert!(v["error"].is_string(), "{what}: {}", r.body);
    assert!(v["message"].is_string(), "{what}: {}", r.body);
    if let Some(code) = code {
        assert_eq!(v["error"], code, "{what}: {}", r.body);
    }
}

fn status_of(server: &Server, token: &str) -> Value {
    let r = server.get(STATUS, Some(token));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn limit_body(max: i64, alert: &str, start: &str, end: &str) -> String {
    format!(
        r#"{{"maxLimit":{max},"alertPercentage":{alert},"periodeStart":"{start}","periodeEnd":"{end}"}}"#
    )
}

/// Prometheus text format → series (`name` or `name{k="v",…}` with labels sorted) → value.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
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

fn fetch_metrics(server: &Server, admin: &str) -> HashMap<String, f64> {
    let r = server.get("/metrics", Some(admin));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("content-type").is_some_and(|v| v.starts_with("text/plain")), "{}", r.head);
    parse_prometheus(&r.body)
}

fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Writes reach every stream of their user, and no one else's

#[test]
fn transaction_reaches_every_stream_of_its_user_and_no_one_else() {
    let server = Server::start(&[]);
    let t13 = server.token(DEMO_USER);
    let admin = server.admin_token();
    let t2 = server.create_user(2);
    let r = server.set_month_limit(2, 50_000, 80.0);
    assert_eq!(r.status, 200, "{}", r.body);
    let (start, end) = current_month();

    let mut a = open(&server, &t13);
    let mut b = open(&server, &t13);
    let mut c = open(&server, &t2);

    let snap_a = next_note(&mut a);
    let k = note_id(&snap_a);
    assert_note(&snap_a, k, DEMO_USER, DEMO_SPENT, DEMO_LIMIT);
    let v = snap_a.json();
    assert_eq!(v["alertPercentage"], 85);
    assert_eq!(as_f64(&v["currentPercentage"]), 133.5);
    assert_eq!(v["isAlert"], true);
    assert_note(&next_note(&mut b), k, DEMO_USER, DEMO_SPENT, DEMO_LIMIT);
    let snap_c = next_note(&mut c);
    let j = note_id(&snap_c);
    assert_note(&snap_c, j, 2, 0, 50_000);
    assert_eq!(as_f64(&snap_c.json()["currentPercentage"]), 0.0);
    assert_eq!(snap_c.json()["isAlert"], false);

    let health = server.health(&t13);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["userId"], DEMO_USER);
    assert_eq!(health["connectedClients"], 2);
    assert_eq!(health["totalSystemClients"], 3);

    // First POST: occurredAt inside this month, written with an offset.
    let day = &start[..8]; // "YYYY-MM-"
    let body = format!(
        r#"{{"amount":5000,"description":"coffee","occurredAt":"{day}02T07:00:00+07:00"}}"#
    );
    let r = post_tx(&server, &t13, &body);
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.header("content-type").is_some_and(|v| v.starts_with("application/json")));
    let v = r.json();
    let tx = &v["transaction"];
    let tx1 = tx["id"].as_u64().expect("transaction id");
    assert_eq!(
        *tx,
        json!({"id":tx1,"userId":13,"amount":5000,"description":"coffee",
               "occurredAt":format!("{day}02T00:00:00.000Z")}),
    );
    let st = &v["status"];
    assert_eq!(st["currentSpending"], DEMO_SPENT + 5000);
    assert_eq!(st["maxLimit"], DEMO_LIMIT);
    assert_eq!(as_f64(&st["alertPercentage"]), 85.0);
    assert_eq!(as_f64(&st["currentPercentage"]), 136.0);
    assert_eq!(st["isAlert"], true);
    assert_eq!(st["periodeStart"], start.as_str());
    assert_eq!(st["periodeEnd"], end.as_str());
    for s in [&mut a, &mut b] {
        let ev = next_note(s);
        assert_note(&ev, k + 1, DEMO_USER, DEMO_SPENT + 5000, DEMO_LIMIT);
        assert_eq!(as_f64(&ev.json()["currentPercentage"]), 136.0);
        assert_eq!(ev.json()["isAlert"], true);
    }

    // Second POST: no description, no occurredAt (now).
    let v = spend(&server, &t13, 1234);
    let tx2 = v["transaction"]["id"].as_u64().expect("id");
    assert!(tx2 > tx1, "transaction ids {tx1} then {tx2}");
    assert_eq!(v["transaction"]["userId"], 13);
    assert_eq!(v["transaction"]["amount"], 1234);
    assert_rfc3339_ms(v["transaction"]["occurredAt"].as_str().expect("occurredAt"));
    let total = DEMO_SPENT + 5000 + 1234;
    for s in [&mut a, &mut b] {
        let ev = next_note(s);
        assert_note(&ev, k + 2, DEMO_USER, total, DEMO_LIMIT);
        // 273234 * 100 / 200000 = 136.617 → 136.62
        assert_eq!(as_f64(&ev.json()["currentPercentage"]), 136.62);
    }

    // User 2 heard none of that.
    assert_quiet(&mut c, Duration::from_secs(1));

    // An admin write for user 2 reaches user 2's stream…
    let r = post_tx(&server, &admin, r#"{"userId":2,"amount":700,"description":"admin"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["transaction"]["userId"], 2);
    assert_eq!(r.json()["status"]["currentSpending"], 700);
    assert_note(&next_note(&mut c), j + 1, 2, 700, 50_000);

    // …and not 13's: the next thing 13's streams see is 13's next write.
    spend(&server, &t13, 1);
    for s in [&mut a, &mut b] {
        assert_note(&next_note(s), k + 3, DEMO_USER, total + 1, DEMO_LIMIT);
    }
    // An admin limit write for user 2: only user 2's stream sees it, and it is next there
    // (so 13's third write did not reach it either).
    let r = server.send_json(
        "PUT",
        LIMIT,
        &admin,
        &format!(
            r#"{{"userId":2,"maxLimit":60000,"alertPercentage":50,"periodeStart":"{start}","periodeEnd":"{end}"}}"#
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["maxLimit"], 60_000);
    assert_eq!(r.json()["currentSpending"], 700);
    assert_note(&next_note(&mut c), j + 2, 2, 700, 60_000);
    assert_quiet(&mut a, Duration::from_millis(300));
    assert_quiet(&mut b, Duration::from_millis(300));
}

#[test]
fn transaction_answer_is_canonical_and_status_null_without_a_limit() {
    let server = Server::start(&[]);
    let t3 = server.create_user(3);
    let r = post_tx(
        &server,
        &t3,
        r#"{"amount":5000,"description":"coffee","occurredAt":"2025-01-01T07:00:00+07:00"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    let id = v["transaction"]["id"].as_u64().expect("id");
    assert_eq!(
        v,
        json!({"transaction":{"id":id,"userId":3,"amount":5000,"description":"coffee",
                              "occurredAt":"2025-01-01T00:00:00.000Z"},
               "status":null})
    );

    // For the demo user, a transaction outside the active range leaves the total alone.
    let t13 = server.token(DEMO_USER);
    let r = post_tx(&server, &t13, r#"{"amount":777,"occurredAt":"2025-01-01T07:00:00+07:00"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    assert_eq!(v["transaction"]["occurredAt"], "2025-01-01T00:00:00.000Z");
    assert_eq!(v["transaction"]["userId"], 13);
    assert!(v["transaction"]["id"].as_u64().expect("id") > id);
    assert_eq!(v["status"]["currentSpending"], DEMO_SPENT);
    assert_eq!(status_of(&server, &t13)["currentSpending"], DEMO_SPENT);
}

// ---------------------------------------------------------------------------------------------
// Resume by Last-Event-ID

#[test]
fn resume_replays_exactly_what_was_missed() {
    let server = Server::start(&[]);
    let t = server.token(DEMO_USER);
    let mut total = DEMO_SPENT;

    // Header.
    let mut s = open(&server, &t);
    let k = note_id(&next_note(&mut s));
    drop(s);
    let mut expected = Vec::new();
    for amount in [100, 200, 300] {
        spend(&server, &t, amount);
        total += amount;
        expected.push(total);
    }
    let mut s = open_after(&server, &t, &k.to_string());
    for (i, want) in expected.iter().enumerate() {
        assert_note(&next_note(&mut s), k + 1 + i as u64, DEMO_USER, *want, DEMO_LIMIT);
    }
    // No snapshot after the replay: the next notification is the live one.
    spend(&server, &t, 400);
    total += 400;
    assert_note(&next_note(&mut s), k + 4, DEMO_USER, total, DEMO_LIMIT);
    drop(s);
    let k = k + 4;

    // Query parameter.
    let mut expected = Vec::new();
    for amount in [10, 20, 30] {
        spend(&server, &t, amount);
        total += amount;
        expected.push(total);
    }
    let mut s = open_with(&server, &t, "", &format!("{STREAM}?lastEventId={k}"));
    for (i, want) in expected.iter().enumerate() {
        assert_note(&next_note(&mut s), k + 1 + i as u64, DEMO_USER, *want, DEMO_LIMIT);
    }
    spend(&server, &t, 40);
    total += 40;
    assert_note(&next_note(&mut s), k + 4, DEMO_USER, total, DEMO_LIMIT);
    drop(s);
    let k = k + 4;

    // Query parameters only, as a browser's EventSource would send them on its first connect
    // with a remembered id: token and id both in the query.
    spend(&server, &t, 50);
    total += 50;
    let mut s =
        Stream::open(server.addr, "", &format!("{STREAM}?access_token={t}&lastEventId={k}"));
    assert_eq!(s.status, 200, "{}", s.head);
    assert_eq!(s.next_event(WAIT).expect("connected").event, "connected");
    assert_note(&next_note(&mut s), k + 1, DEMO_USER, total, DEMO_LIMIT);
    spend(&server, &t, 40);
    total += 40;
    assert_note(&next_note(&mut s), k + 2, DEMO_USER, total, DEMO_LIMIT);
    drop(s);
    let latest = k + 2; // totals: latest-1 → total-40, latest → total

    // Header wins over the query: header says latest-1, query says latest-5.
    let mut s = open_with(
        &server,
        &t,
        &format!("Last-Event-ID: {}\r\n", latest - 1),
        &format!("{STREAM}?lastEventId={}", latest - 5),
    );
    assert_note(&next_note(&mut s), latest, DEMO_USER, total, DEMO_LIMIT);
    spend(&server, &t, 1);
    total += 1;
    assert_note(&next_note(&mut s), latest + 1, DEMO_USER, total, DEMO_LIMIT);
    drop(s);
    let latest = latest + 1;

    // Caught up already: nothing replayed, no snapshot, then live.
    let mut s = open_after(&server, &t, &latest.to_string());
    spend(&server, &t, 2);
    total += 2;
    assert_note(&next_note(&mut s), latest + 1, DEMO_USER, total, DEMO_LIMIT);
    drop(s);
    let latest = latest + 1;

    // Not a decimal integer: a snapshot, as on a first connect.
    for bad in ["abc", "3x", "1.5"] {
        let mut s = open_after(&server, &t, bad);
        assert_note(&next_note(&mut s), latest, DEMO_USER, total, DEMO_LIMIT);
        assert_quiet(&mut s, Duration::from_millis(200));
    }
    let mut s = open_with(&server, &t, "", &format!("{STREAM}?lastEventId=abc"));
    assert_note(&next_note(&mut s), latest, DEMO_USER, total, DEMO_LIMIT);
    spend(&server, &t, 3);
    total += 3;
    assert_note(&next_note(&mut s), latest + 1, DEMO_USER, total, DEMO_LIMIT);
}

#[test]
fn resume_from_zero_gets_the_last_thousand_kept() {
    let server = Server::start(&[]);
    let user = 40;
    let t = server.create_user(user);
    let r = server.set_month_limit(user, 10_000_000, 90.0); // notification 1 of 1005
    assert_eq!(r.status, 200, "{}", r.body);

    // 1004 transactions of 1 each, from 8 keep-alive connections.
    let writes = 1004;
    let threads = 8;
    std::thread::scope(|scope| {
        for n in 0..threads {
            let t = t.clone();
            let addr = server.addr;
            scope.spawn(move || {
                let mut client = Client::new(addr);
                let count = writes / threads + usize::from(n < writes % threads);
                for _ in 0..count {
                    let r = client.send("POST", TRANSACTIONS, &t, r#"{"amount":1}"#);
                    assert_eq!(r.status, 201, "{}", r.body);
                }
            });
        }
    });
    assert_eq!(status_of(&server, &t)["currentSpending"], writes as i64);

    let mut snap = open(&server, &t);
    let latest = note_id(&next_note(&mut snap));
    drop(snap);
    assert!(latest >= 1005, "1005 notifications stored, latest id {latest}");

    // Replay from 0 while 20 more writes land: the kept 1000, then the 20 live ones, with
    // nothing lost or repeated where they meet.
    let mut s = open_after(&server, &t, "0");
    let live = 20;
    let mut got = Vec::new();
    std::thread::scope(|scope| {
        let t = t.clone();
        let addr = server.addr;
        scope.spawn(move || {
            let mut client = Client::new(addr);
            for _ in 0..live {
                let r = client.send("POST", TRANSACTIONS, &t, r#"{"amount":1}"#);
                assert_eq!(r.status, 201, "{}", r.body);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.last().map(note_id) != Some(latest + live) {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = next_non_heartbeat(&mut s, left)
                .unwrap_or_else(|| panic!("replay stopped after {} events", got.len()));
            assert_eq!(ev.event, "notification", "{ev:?}");
            got.push(ev);
        }
    });
    assert_eq!(got.len(), 1000 + live as usize, "1000 kept, then {live} live");
    // The last 1000 kept are all transaction notifications (running totals 5..=1004), then the
    // live ones continue the count; ids consecutive throughout.
    for (i, ev) in got.iter().enumerate() {
        assert_note(ev, latest - 999 + i as u64, user, (writes - 999 + i) as i64, 10_000_000);
    }
    assert_quiet(&mut s, Duration::from_millis(200));
}

// ---------------------------------------------------------------------------------------------
// Durability

#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut server = Server::start(&[]);
    let user = 21;
    let t = server.create_user(user);
    let r = server.set_month_limit(user, 1_000_000, 90.0);
    assert_eq!(r.status, 200, "{}", r.body);
    let mut s = open(&server, &t);
    let k = note_id(&next_note(&mut s));
    drop(s);

    let mut client = Client::new(server.addr);
    let mut totals = Vec::new();
    let mut total = 0;
    for i in 0..20 {
        let amount = 1000 + i;
        let r = client.send(
            "POST",
            TRANSACTIONS,
            &t,
            &format!(r#"{{"amount":{amount},"description":"n{i}"}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        total += amount;
        totals.push(total);
    }
    // Other kinds of acknowledged write, right before the kill: a limit, a deactivation.
    let admin = server.admin_token();
    let t23 = server.create_user(23);
    let (start, end) = current_month();
    let r = client.send(
        "PUT",
        LIMIT,
        &admin,
        &format!(
            r#"{{"userId":23,"maxLimit":777,"alertPercentage":12.5,"periodeStart":"{start}","periodeEnd":"{end}"}}"#
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let t22 = server.create_user(22);
    let r = client.send("PUT", "/api/admin/users/22", &admin, r#"{"active":false}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    server.signal("KILL");
    assert_eq!(server.wait_exit(WAIT), None, "killed by a signal");
    let dir = server.dir.clone();
    drop(server);

    let server =
        Server::start_with(Options { args: &["--demo"], dir: Some(dir), ..Options::default() });
    let st = status_of(&server, &t);
    assert_eq!(st["currentSpending"], total, "{st}");
    let st23 = status_of(&server, &t23);
    assert_eq!(st23["maxLimit"], 777, "{st23}");
    assert_eq!(as_f64(&st23["alertPercentage"]), 12.5, "{st23}");
    assert_error(&server.get(HEALTH, Some(&t22)), 403, None, "deactivated before the kill");
    // The demo data is not doubled by a second start in the same month.
    assert_eq!(status_of(&server, &server.token(DEMO_USER))["currentSpending"], DEMO_SPENT);

    let mut s = open_after(&server, &t, "0");
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.last().map(note_id) != Some(k + 20) {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = next_non_heartbeat(&mut s, left)
            .unwrap_or_else(|| panic!("replay stopped after {:?}", got));
        assert_eq!(ev.event, "notification", "{ev:?}");
        got.push(ev);
    }
    assert!(got.len() >= 20, "{got:?}");
    let last20 = &got[got.len() - 20..];
    for (i, ev) in last20.iter().enumerate() {
        assert_note(ev, k + 1 + i as u64, user, totals[i], 1_000_000);
    }
    for pair in got.windows(2) {
        assert_eq!(note_id(&pair[1]), note_id(&pair[0]) + 1, "{got:?}");
    }
    spend(&server, &t, 5);
    assert_note(&next_note(&mut s), k + 21, user, total + 5, 1_000_000);
}

// ---------------------------------------------------------------------------------------------
// Ends of streams

#[test]
fn deactivation_ends_the_users_streams_and_refuses_them() {
    let server = Server::start(&[]);
    let admin = server.admin_token();
    let user = 30;
    let tx = server.create_user(user);
    assert_eq!(server.set_month_limit(user, 1000, 50.0).status, 200);
    let t13 = server.token(DEMO_USER);

    let mut x1 = open(&server, &tx);
    let mut x2 = open(&server, &tx);
    next_note(&mut x1);
    next_note(&mut x2);
    let mut other = open(&server, &t13);
    let k13 = note_id(&next_note(&mut other));

    let from = server.log.len();
    let r =
        server.send_json("PUT", &format!("/api/admin/users/{user}"), &admin, r#"{"active":false}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"id":user,"active":false}));
    assert!(x1.wait_end(WAIT), "stream 1 not ended properly: {:?}", x1.body);
    assert!(x2.wait_end(WAIT), "stream 2 not ended properly: {:?}", x2.body);
    let needle = format!("SSE stream ended for user {user}: user deactivated");
    let first = server.log.wait_for(&needle, from, WAIT);
    server.log.wait_for(&needle, first + 1, WAIT);

    // Refused from now on.
    assert_error(&server.get(HEALTH, Some(&tx)), 403, None, "health");
    assert_error(&server.get(STATUS, Some(&tx)), 403, None, "status");
    let refused = Stream::open(server.addr, &format!("Authorization: Bearer {tx}\r\n"), STREAM);
    assert_eq!(refused.status, 403, "{}", refused.head);
    assert_error(&post_tx(&server, &tx, r#"{"amount":1}"#), 403, None, "POST");

    // The other user's stream lives on.
    spend(&server, &t13, 1);
    assert_note(&next_note(&mut other), k13 + 1, DEMO_USER, DEMO_SPENT + 1, DEMO_LIMIT);
    let h = server.health(&t13);
    assert_eq!(h["connectedClients"], 1);
    assert_eq!(h["totalSystemClients"], 1);

    // Reactivated: back in.
    let r =
        server.send_json("PUT", &format!("/api/admin/users/{user}"), &admin, r#"{"active":true}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"id":user,"active":true}));
    let mut back = open(&server, &tx);
    let snap = next_note(&mut back);
    assert_eq!(snap.json()["userId"], user);
    assert_eq!(server.health(&tx)["connectedClients"], 1);
}

#[test]
fn stream_ends_when_token_expiry_plus_leeway_passes() {
    let server = Server::start(&[]);
    // Expired 61 s ago: outside the leeway, refused.
    let stale = sign(&format!(r#"{{"sub":"13","exp":{}}}"#, now_secs() - 61));
    let r = server.get(HEALTH, Some(&stale));
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("www-authenticate").as_deref(), Some(r#"Bearer error="invalid_token""#));

    let exp = now_secs() - 55;
    let token = sign(&format!(r#"{{"sub":"13","exp":{exp}}}"#));
    let from = server.log.len();
    let mut s = open(&server, &token);
    next_note(&mut s);
    assert!(
        s.wait_end(Duration::from_secs(15)),
        "stream did not end properly: eof={} ended={} body={:?}",
        s.eof,
        s.ended,
        String::from_utf8_lossy(&s.body)
    );
    assert!(
        now_secs() >= exp + 60,
        "ended before exp + 60 s leeway (now {}, exp {exp})",
        now_secs()
    );
    server.log.wait_for("SSE stream ended for user 13: token expired", from, WAIT);
}

// ---------------------------------------------------------------------------------------------
// Validation

#[test]
fn bad_writes_are_refused_and_store_nothing() {
    let server = Server::start(&[]);
    let t = server.token(DEMO_USER);
    let admin = server.admin_token();
    server.create_user(2);
    let (start, end) = current_month();
    let mut s = open(&server, &t);
    let k = note_id(&next_note(&mut s));

    let long_ascii = "a".repeat(201);
    let long_e = "é".repeat(201);
    let long_emoji = "😀".repeat(201);
    let bad_transactions: Vec<(String, &str)> = vec![
        (r#"{"description":"no amount"}"#.into(), "amount missing"),
        (r#"{"amount":"abc"}"#.into(), "amount a string"),
        (r#"{"amount":"5000"}"#.into(), "amount a numeric string"),
        (r#"{"amount":0}"#.into(), "amount 0"),
        (r#"{"amount":-5}"#.into(), "amount negative"),
        (r#"{"amount":1.5}"#.into(), "amount fractional"),
        (r#"{"amount":9223372036854775808}"#.into(), "amount over i64"),
        (r#"{"amount":1e30}"#.into(), "amount 1e30"),
        (r#"{"amount":null}"#.into(), "amount null"),
        (format!(r#"{{"amount":5,"description":"{long_ascii}"}}"#), "description 201 ASCII chars"),
        (format!(r#"{{"amount":5,"description":"{long_e}"}}"#), "description 201 é"),
        (format!(r#"{{"amount":5,"description":"{long_emoji}"}}"#), "description 201 emoji"),
        (r#"{"amount":5,"description":42}"#.into(), "description a number"),
        (r#"{"amount":5,"occurredAt":"yesterday"}"#.into(), "occurredAt yesterday"),
        (r#"{"amount":5,"occurredAt":12345}"#.into(), "occurredAt a number"),
        ("not json".into(), "body not JSON"),
        (r#"[{"amount":5}]"#.into(), "body a JSON array"),
        ("".into(), "empty body"),
        (r#"{"amount":5"#.into(), "truncated JSON"),
    ];
    for (body, what) in &bad_transactions {
        assert_error(&post_tx(&server, &t, body), 400, None, what);
    }

    let bad_limits: Vec<(String, &str)> = vec![
        (limit_body(1000, "0", &start, &end), "alertPercentage 0"),
        (limit_body(1000, "-1", &start, &end), "alertPercentage negative"),
        (limit_body(1000, "100.5", &start, &end), "alertPercentage 100.5"),
        (limit_body(1000, "\"x\"", &start, &end), "alertPercentage \"x\""),
        (limit_body(1000, "85", &start, &start), "periodeStart = periodeEnd"),
        (limit_body(1000, "85", &end, &start), "periodeStart > periodeEnd"),
        (limit_body(0, "85", &start, &end), "maxLimit 0"),
        (limit_body(-10, "85", &start, &end), "maxLimit negative"),
        (limit_body(1000, "85", "soon", &end), "periodeStart not a time"),
        (
            format!(
                r#"{{"maxLimit":1.5,"alertPercentage":85,"periodeStart":"{start}","periodeEnd":"{end}"}}"#
            ),
            "maxLimit fractional",
        ),
        (
            format!(r#"{{"alertPercentage":85,"periodeStart":"{start}","periodeEnd":"{end}"}}"#),
            "maxLimit missing",
        ),
        ("not json".into(), "limit body not JSON"),
        ("[]".into(), "limit body an array"),
    ];
    for (body, what) in &bad_limits {
        assert_error(&server.send_json("PUT", LIMIT, &t, body), 400, None, what);
    }

    // Naming someone else, or no one, or a stranger.
    assert_error(
        &post_tx(&server, &t, r#"{"userId":2,"amount":5}"#),
        403,
        None,
        "user token writing for user 2",
    );
    assert_error(
        &server.send_json(
            "PUT",
            LIMIT,
            &t,
            &format!(
                r#"{{"userId":2,"maxLimit":5,"alertPercentage":50,"periodeStart":"{start}","periodeEnd":"{end}"}}"#
            ),
        ),
        403,
        None,
        "user token setting user 2's limit",
    );
    assert_error(
        &post_tx(&server, &admin, r#"{"amount":5}"#),
        400,
        None,
        "admin write without userId",
    );
    assert_error(
        &server.send_json("PUT", LIMIT, &admin, &limit_body(5, "50", &start, &end)),
        400,
        None,
        "admin limit without userId",
    );
    assert_error(
        &post_tx(&server, &admin, r#"{"userId":999,"amount":5}"#),
        404,
        Some("unknown_user"),
        "admin write for unknown user",
    );
    assert_error(
        &server.send_json("PUT", "/api/admin/users/13", &admin, r#"{"active":"yes"}"#),
        400,
        None,
        "admin PUT user active:\"yes\"",
    );
    assert_error(
        &server.send_json("PUT", "/api/admin/users/13", &admin, "{}"),
        400,
        None,
        "admin PUT user without active",
    );
    assert_error(
        &server.send_json("PUT", "/api/admin/users/5", &t, r#"{"active":true}"#),
        403,
        None,
        "non-admin on /api/admin/users/5",
    );
    assert_error(&server.get("/metrics", Some(&t)), 403, None, "non-admin on /metrics");

    // Nothing stored: the status is as seeded, user 13 is still active, and no user 5 or 999
    // was made as a side effect.
    let st = status_of(&server, &t);
    assert_eq!(st["currentSpending"], DEMO_SPENT);
    assert_eq!(st["maxLimit"], DEMO_LIMIT);
    assert_eq!(as_f64(&st["alertPercentage"]), 85.0);
    assert_eq!(st["periodeStart"], start.as_str());
    assert_eq!(st["periodeEnd"], end.as_str());
    assert_eq!(server.get(HEALTH, Some(&server.token(5))).status, 403);
    assert_eq!(server.get(HEALTH, Some(&server.token(999))).status, 403);

    // 200 multi-byte characters are fine (characters, not bytes), naming oneself is fine, and
    // this is the first notification since the snapshot: nothing was pushed by the refusals.
    let desc = "é".repeat(200);
    let r = post_tx(&server, &t, &format!(r#"{{"userId":13,"amount":1,"description":"{desc}"}}"#));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["transaction"]["description"], desc.as_str());
    assert_note(&next_note(&mut s), k + 1, DEMO_USER, DEMO_SPENT + 1, DEMO_LIMIT);
    let r = post_tx(&server, &t, &format!(r#"{{"amount":2,"description":"{}"}}"#, "a".repeat(200)));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_note(&next_note(&mut s), k + 2, DEMO_USER, DEMO_SPENT + 3, DEMO_LIMIT);
    // Characters outside the BMP count once each, written raw or as JSON surrogate escapes.
    let emoji = "😀".repeat(200);
    for body in [
        format!(r#"{{"amount":3,"description":"{emoji}"}}"#),
        format!(r#"{{"amount":3,"description":"{}"}}"#, r"\ud83d\ude00".repeat(200)),
    ] {
        let r = post_tx(&server, &t, &body);
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.json()["transaction"]["description"], emoji.as_str());
    }
    assert_note(&next_note(&mut s), k + 3, DEMO_USER, DEMO_SPENT + 6, DEMO_LIMIT);
    assert_note(&next_note(&mut s), k + 4, DEMO_USER, DEMO_SPENT + 9, DEMO_LIMIT);
}

// ---------------------------------------------------------------------------------------------
// Limits

#[test]
fn limit_answers_its_own_range_and_pushes_only_when_it_covers_now() {
    let server = Server::start(&[]);
    let user = 50;
    let t = server.create_user(user);
    let mut s = open(&server, &t);

    // No limit at all: status null.
    let r = post_tx(&server, &t, r#"{"amount":12345,"occurredAt":"2020-01-15T12:00:00.000Z"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["status"], Value::Null);

    // A limit over January 2020: answered over its range, though it does not cover now.
    let r = server.send_json(
        "PUT",
        LIMIT,
        &t,
        &limit_body(100_000, "12.35", "2020-01-01T00:00:00.000Z", "2020-01-31T23:59:59.999Z"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["currentSpending"], 12_345);
    assert_eq!(v["maxLimit"], 100_000);
    assert_eq!(as_f64(&v["alertPercentage"]), 12.35);
    // 12345 * 100 / 100000 = 12.345 → 12.35 (half away from zero), and 12.35 ≥ 12.35.
    assert_eq!(as_f64(&v["currentPercentage"]), 12.35);
    assert_eq!(v["isAlert"], true);
    assert_eq!(v["periodeStart"], "2020-01-01T00:00:00.000Z");
    assert_eq!(v["periodeEnd"], "2020-01-31T23:59:59.999Z");
    assert_error(
        &server.get(STATUS, Some(&t)),
        404,
        Some("no_active_limit"),
        "status with a limit in 2020",
    );

    // A transaction now, under a limit that does not cover now: null status, nothing pushed.
    let r = post_tx(&server, &t, r#"{"amount":500}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["status"], Value::Null);

    // A limit over this month: pushed, and it is the first thing the stream sees.
    let (start, end) = current_month();
    let r = server.send_json("PUT", LIMIT, &t, &limit_body(1000, "50", &start, &end));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["currentSpending"], 500);
    assert_eq!(as_f64(&v["currentPercentage"]), 50.0);
    assert_eq!(v["isAlert"], true);
    let ev = next_note(&mut s);
    let m = note_id(&ev);
    assert_note(&ev, m, user, 500, 1000);
    assert!(m > 0);

    // Stored: exactly one notification, so a resume from 0 replays only it.
    let mut again = open_after(&server, &t, "0");
    assert_note(&next_note(&mut again), m, user, 500, 1000);
    spend(&server, &t, 250);
    assert_note(&next_note(&mut again), m + 1, user, 750, 1000);
    assert_note(&next_note(&mut s), m + 1, user, 750, 1000);
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[test]
fn metrics_move_with_traffic() {
    let server = Server::start(&[]);
    let admin = server.admin_token();
    let t = server.token(DEMO_USER);
    let before = fetch_metrics(&server, &admin);
    assert_eq!(metric(&before, "periode_sse_streams_open"), 0.0);

    let mut a = open(&server, &t);
    let mut b = open(&server, &t);
    let k = note_id(&next_note(&mut a));
    next_note(&mut b);
    for i in 1..=3 {
        spend(&server, &t, 10);
        for s in [&mut a, &mut b] {
            assert_note(&next_note(s), k + i, DEMO_USER, DEMO_SPENT + 10 * i as i64, DEMO_LIMIT);
        }
    }
    let r = server.get("/no/such/path", Some(&t));
    assert_error(&r, 404, None, "unknown path");

    let after = fetch_metrics(&server, &admin);
    let delta = |key: &str| metric(&after, key) - metric(&before, key);
    assert_eq!(delta("periode_sse_transactions_recorded_total"), 3.0);
    assert!(
        delta("periode_sse_events_sent_total{event=\"notification\"}") >= 6.0,
        "notification events moved by {}",
        delta("periode_sse_events_sent_total{event=\"notification\"}")
    );
    assert_eq!(delta("periode_sse_events_sent_total{event=\"connected\"}"), 2.0);
    assert_eq!(metric(&after, "periode_sse_streams_open"), 2.0);
    assert_eq!(delta("periode_sse_http_requests_total{route=\"unknown\",status=\"404\"}"), 1.0);
    assert_eq!(
        delta("periode_sse_http_requests_total{route=\"transactions\",status=\"201\"}"),
        3.0
    );
    assert!(delta("periode_sse_commit_batches_total") >= 1.0, "commit batches did not move");
    assert!(delta("periode_sse_streams_started_total") >= 2.0);

    // Closing both streams brings the gauge back to 0.
    let from = server.log.len();
    drop(a);
    drop(b);
    server.log.wait_for("SSE client removed for user 13 (0 open)", from, WAIT);
    let closed = fetch_metrics(&server, &admin);
    assert_eq!(metric(&closed, "periode_sse_streams_open"), 0.0);
    assert!(
        metric(&closed, "periode_sse_disconnects_total{reason=\"client_gone\"}")
            - metric(&after, "periode_sse_disconnects_total{reason=\"client_gone\"}")
            >= 2.0
    );
}

// ---------------------------------------------------------------------------------------------
// Concurrency

#[test]
fn concurrent_writers_give_consecutive_ids_and_the_right_total() {
    let server = Server::start(&[]);
    let t = server.token(DEMO_USER);
    let mut s = open(&server, &t);
    let k = note_id(&next_note(&mut s));

    let threads = 16;
    let per_thread = 10;
    let answers: Vec<Vec<Value>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|n| {
                let t = t.clone();
                let addr = server.addr;
                scope.spawn(move || {
                    let mut client = Client::new(addr);
                    (0..per_thread)
                        .map(|i| {
                            let amount = 1 + n * per_thread + i; // 1..=160, all distinct
                            let r = client.send(
                                "POST",
                                TRANSACTIONS,
                                &t,
                                &format!(r#"{{"amount":{amount}}}"#),
                            );
                            assert_eq!(r.status, 201, "{}", r.body);
                            r.json()
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let answers: Vec<Value> = answers.into_iter().flatten().collect();
    assert_eq!(answers.len(), 160);
    let sum: i64 = (1..=160).sum();
    let tx_ids: BTreeSet<u64> =
        answers.iter().map(|v| v["transaction"]["id"].as_u64().expect("id")).collect();
    assert_eq!(tx_ids.len(), 160, "transaction ids not unique");

    let mut totals_seen = Vec::new();
    for i in 1..=160u64 {
        let ev = next_note(&mut s);
        assert_eq!(note_id(&ev), k + i, "ids must be consecutive: {ev:?}");
        let total = ev.json()["currentSpending"].as_i64().expect("total");
        if let Some(&prev) = totals_seen.last() {
            assert!(total > prev, "totals must grow with ids: {prev} then {total}");
        }
        totals_seen.push(total);
    }
    assert_eq!(*totals_seen.last().unwrap(), DEMO_SPENT + sum);
    assert_eq!(status_of(&server, &t)["currentSpending"], DEMO_SPENT + sum);
    // Each answer's status is the total right after its own write: the same 160 totals.
    let answered: BTreeSet<i64> = answers
        .iter()
        .map(|v| v["status"]["currentSpending"].as_i64().expect("status total"))
        .collect();
    let pushed: BTreeSet<i64> = totals_seen.iter().copied().collect();
    assert_eq!(answered, pushed);
}

// ---------------------------------------------------------------------------------------------
// Times the canonical form cannot write

/// RFC 3339 UTC with a four-digit year spans 0000-01-01T00:00:00.000Z to
/// 9999-12-31T23:59:59.999Z. An input whose offset carries it past either end names an instant
/// the server cannot write back; storing it and answering another instant is not what was
/// asked, so it must be refused like any other bad time.
#[test]
fn times_beyond_the_four_digit_years_are_refused_not_clamped() {
    let server = Server::start(&[]);
    let t = server.token(DEMO_USER);
    for at in [
        "9999-12-31T23:30:00-01:00", // 10000-01-01T00:30:00Z
        "0000-01-01T00:30:00+01:00", // -0001-12-31T23:30:00Z
    ] {
        let r = post_tx(&server, &t, &format!(r#"{{"amount":1,"occurredAt":"{at}"}}"#));
        assert_error(&r, 400, None, &format!("occurredAt {at} (answered {})", r.body));
    }
    // Both ends past year 9999: distinct instants as sent, but no way to write them apart.
    let r = server.send_json(
        "PUT",
        LIMIT,
        &t,
        &limit_body(1000, "50", "9999-12-31T23:30:00-01:00", "9999-12-31T23:59:00-01:00"),
    );
    assert_error(&r, 400, None, &format!("limit beyond 9999 (answered {})", r.body));
    // The edges themselves are fine.
    let r = post_tx(&server, &t, r#"{"amount":1,"occurredAt":"9999-12-31T23:59:59.999Z"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["transaction"]["occurredAt"], "9999-12-31T23:59:59.999Z");
    assert_eq!(status_of(&server, &t)["currentSpending"], DEMO_SPENT);
}
