//! The operator interface of issue 13: `--access-log` and `--metrics-listen`, and the
//! process figures on `/metrics`. Against the real binary, over loopback.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;

const USER: i64 = 13;
const WAIT: Duration = Duration::from_secs(10);

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    probe.local_addr().expect("addr").port()
}

/// `--access-log`: one line per request with method, path without the query, status,
/// bytes, time and user; never the token.
#[test]
fn the_access_log_has_a_line_per_request_and_never_the_token() {
    let server = Server::start(&["--access-log"]);
    let token = server.token(USER);
    let from = server.log.len();
    let r = server.get(&format!("{STATUS}?access_token={token}"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let line = server.log.wait_for(&format!("GET {STATUS} 200 "), from, WAIT);
    let text = server.log.lines()[line].clone();
    assert!(text.ends_with("user 13"), "{text}");
    assert!(text.contains("ms user"), "{text}");
    let bytes: usize = text
        .split(&format!("GET {STATUS} 200 "))
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|b| b.parse().ok())
        .expect("bytes");
    assert_eq!(bytes, r.head.len() + r.body.len(), "{text}");
    // A write, a 401 and a stream each get their line.
    let w = server.send_json("POST", TRANSACTIONS, &token, r#"{"amount":3}"#);
    assert_eq!(w.status, 201);
    server.log.wait_for(&format!("POST {TRANSACTIONS} 201 "), from, WAIT);
    assert_eq!(server.get(HEALTH, None).status, 401);
    let line = server.log.wait_for(&format!("GET {HEALTH} 401 "), from, WAIT);
    assert!(server.log.lines()[line].ends_with("user -"));
    let _stream = server.open_stream(&token);
    server.log.wait_for(&format!("GET {STREAM} 200 "), from, WAIT);
    for line in server.log.lines() {
        assert!(!line.contains(&token), "a token in the log: {line}");
    }
    // Without the flag there are no such lines.
    let quiet = Server::start(&[]);
    assert_eq!(quiet.get(STATUS, Some(&quiet.token(USER))).status, 200);
    let _ = quiet.open_stream(&quiet.token(USER));
    quiet.log.wait_for("SSE client connected", 0, WAIT);
    assert!(
        !quiet.log.lines().iter().any(|l| l.contains(&format!("GET {STATUS} 200"))),
        "access lines without --access-log"
    );
}

/// `--metrics-listen`: `/metrics` without a token on the second address, nothing else
/// there; the main address still wants an admin token. The process figures are present.
#[test]
fn metrics_listen_serves_metrics_without_a_token() {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let server = Server::start(&["--metrics-listen", &addr.to_string()]);
    server.log.wait_for(
        &format!("metrics served without authentication on http://{addr}"),
        0,
        WAIT,
    );
    let token = server.token(USER);
    assert_eq!(server.send_json("POST", TRANSACTIONS, &token, r#"{"amount":3}"#).status, 201);
    let scrape = || request(addr, "GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n");
    // On PostgreSQL the store is up once the change feed's listener is connected too, which
    // it does beside the start: a scrape in the first moments may still say 0.
    let mut r = scrape();
    let deadline = Instant::now() + WAIT;
    while !r.body.lines().any(|l| l == "periode_sse_store_up 1") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        r = scrape();
    }
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("Content-Type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let value = |name: &str| -> f64 {
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{}", r.body))
    };
    assert!(value("process_resident_memory_bytes") > 0.0);
    assert!(value("process_open_fds") >= 3.0);
    let started = value("process_start_time_seconds");
    assert!((started - now_secs() as f64).abs() < 3600.0, "start time {started}");
    assert_eq!(value("periode_sse_build_info{version=\"0.1.0\"}"), 1.0);
    // The file's size is SQLite's; PostgreSQL's database is no file of ours, so no such family.
    if pg::enabled() {
        assert!(!r.body.contains("periode_sse_database_size_bytes"), "{}", r.body);
    } else {
        assert!(value("periode_sse_database_size_bytes{file=\"main\"}") > 0.0);
    }
    assert_eq!(value("periode_sse_store_up"), 1.0, "{}", r.body);
    assert_eq!(value("periode_sse_commit_duration_seconds_count"), 1.0);
    assert_eq!(value("periode_sse_commit_duration_seconds_bucket{le=\"+Inf\"}"), 1.0);
    // Every sample's family is announced with HELP and TYPE.
    for line in r.body.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| r.body.contains(&format!("# TYPE {f} histogram")))
            .unwrap_or(name);
        assert!(r.body.contains(&format!("# TYPE {family} ")), "no TYPE for {line}");
        assert!(r.body.contains(&format!("# HELP {family} ")), "no HELP for {line}");
    }
    // Only /metrics on that port; the API is not reachable there.
    let r = request(addr, &format!("GET {HEALTH} HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"));
    assert_eq!(r.status, 404, "{}", r.body);
    // The main port still wants an admin token.
    assert_eq!(server.get("/metrics", None).status, 401);
    assert_eq!(server.get("/metrics", Some(&server.admin_token())).status, 200);
}
