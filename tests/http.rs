//! HTTP/1.1 as the server reads and answers it (SPEC §5): requests in any number of pieces,
//! pipelining and keep-alive, malformed, oversized and slow requests, routing order (404 and
//! 405 before authentication), CORS, HTTP/1.0.
//! Each test starts its own server (the real binary) on a free loopback port with a temporary
//! SQLite file; every wait has a deadline.

mod common;
use common::*;

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
        "GET {HEALTH} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer x\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let r = request(server.addr, &raw);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_request");
}

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
    let r = answers.next_response();
    assert_eq!(r.status, 201, "60 KiB body: {}", r.body);
    assert_eq!(r.json()["transaction"]["amount"], 3);
    let r = answers.next_response();
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
    let unfinished = format!("GET {HEALTH} HTTP/1.1\r\nHost: t\r\nX-Big: {}", "a".repeat(9 * 1024));
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
            format!(
                "GET /api/periode-limit/noti\0fications/health HTTP/1.1\r\nHost: t\r\n{auth}\r\n"
            )
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
            raw.extend_from_slice(format!("x HTTP/1.1\r\nHost: t\r\n{auth}\r\n").as_bytes());
            raw
        }),
        (
            "a control character in the path",
            format!("GET {HEALTH}\x01 HTTP/1.1\r\nHost: t\r\n{auth}\r\n").into_bytes(),
        ),
        (
            "NUL in a header value",
            format!("GET {HEALTH} HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n{auth}\r\n").into_bytes(),
        ),
        (
            "NUL in a header name",
            format!("GET {HEALTH} HTTP/1.1\r\nHost: t\r\nX-\0A: b\r\n{auth}\r\n").into_bytes(),
        ),
        (
            "a header without a colon",
            format!("GET {HEALTH} HTTP/1.1\r\nHost: t\r\nNoColonHere\r\n{auth}\r\n").into_bytes(),
        ),
        (
            "a space before the colon",
            format!("GET {HEALTH} HTTP/1.1\r\nHost : t\r\n{auth}\r\n").into_bytes(),
        ),
        (
            "a folded header (obs-fold)",
            format!("GET {HEALTH} HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n{auth}\r\n").into_bytes(),
        ),
        (
            "a space inside the target",
            format!("GET /api/periode limit HTTP/1.1\r\nHost: t\r\n{auth}\r\n").into_bytes(),
        ),
        ("no version", format!("GET {HEALTH}\r\n{auth}\r\n").into_bytes()),
        ("an unknown protocol", format!("GET {HEALTH} SPDY/3\r\n{auth}\r\n").into_bytes()),
        (
            "a method with a separator",
            format!("G@T {HEALTH} HTTP/1.1\r\nHost: t\r\n{auth}\r\n").into_bytes(),
        ),
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

/// Pipelined requests are answered in order, however many arrive in one write.
#[test]
fn pipelined_requests_are_answered_in_order_and_the_connection_stays_open() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    // Few requests on a kept connection, before any write: each answer is exact and keeps the connection,
    // errors included, until the client says `Connection: close`.
    let mut conn = Responses::open(&server);
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

    // Many requests in one write, writes among them.
    let get = get_with_headers(HEALTH, &format!("Authorization: Bearer {token}\r\n"));
    let mut answers = Responses::new(connect(server.addr));
    let raw = get.repeat(300);
    answers.sock.write_all(raw.as_bytes()).expect("send 300 GETs");
    for i in 0..300 {
        let r = answers.next_response();
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
        let r = answers.next_response();
        assert_eq!(r.status, 201, "pipelined POST {i}: {}", r.body);
        let tx = &r.json()["transaction"];
        assert_eq!(tx["amount"], i, "answers in order");
        let id = tx["id"].as_i64().expect("id");
        assert!(id > last_id, "transaction ids increase");
        last_id = id;
        let r = answers.next_response();
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
    let r = answers.next_response();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = answers.next_response();
    assert!(answers.buffered().is_empty(), "nothing after the 400");
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
    let mut rng = Rng::new(0xdead_beef_cafe_f00d);
    for round in 0..60 {
        let len = 1 + rng.below(600) as usize;
        let mut raw: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if round % 3 == 0 {
            // Start like a request, then go wrong.
            let mut prefixed = format!("GET {HEALTH} HTTP/1.1\r\nHost: t\r\nX-").into_bytes();
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
        let mut raw = format!("GET {HEALTH} HTTP/1.1\r\nHost: t\r\nX-Slow: ").into_bytes();
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
            let _ = sock
                .write_all(format!("GET {HEALTH} HTTP/1.1\r\nHost: t\r\nX-Hold: {i}").as_bytes());
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

/// A client that pipelines thousands of requests and never reads the answers must not make the
/// server buffer without bound: it is cut off, and everyone else is served meanwhile.
#[test]
fn a_pipelining_client_that_never_reads_is_bounded() {
    let server = Server::start(&[]);
    let rss_before = proc_status_kb(server.pid(), "VmRSS:").expect("RSS");
    let admin = server.admin_token();
    // /metrics answers are a few KiB each: 3000 of them are ~10 MiB of answers.
    let one = get_with_headers("/metrics", &format!("Authorization: Bearer {admin}\r\n"));
    let mut sock = sock::connect_small_rcvbuf(server.addr, 4096).expect("connect");
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
