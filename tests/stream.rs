//! The event stream (SPEC §3, §4): its head and first events byte for byte, heartbeats,
//! fan-out to every stream of a user and to no one else, resume with `Last-Event-ID`, the
//! client counts of health, slow consumers and resets, and the per-user stream cap.
//! Each test starts its own server (the real binary) on a free loopback port with a temporary
//! SQLite file; every wait has a deadline.

mod common;
use common::*;

#[test]
fn health_reports_the_token_user_and_zero_clients() {
    let server = Server::start(&[]);
    let r = server.get(HEALTH, Some(&server.token(13)));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("Content-Type").as_deref(), Some("application/json"));
    assert_json(&r.json(), &health_json(13, 0, 0), "health");
}

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

/// Streams that connect together have their heartbeats due together; a turn sends only
/// some of them (so that events go out between) and the next turns the rest. 300 streams
/// opened at once, well past one turn's share: every one of them gets its heartbeats, each
/// a period after the last.
#[test]
fn heartbeats_due_together_all_go_out() {
    use std::io::{Read, Write};
    let server = Server::start(&["--heartbeat", "1", "--max-conns-per-user", "400"]);
    let request = format!(
        "GET {STREAM} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
        server.token(13)
    );
    let mut socks: Vec<std::net::TcpStream> = (0..300).map(|_| connect(server.addr)).collect();
    for sock in &mut socks {
        sock.write_all(request.as_bytes()).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    for (i, sock) in socks.iter_mut().enumerate() {
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        // Two heartbeats: the first fired, and the stream was given its next deadline.
        while count(&seen, b"event: heartbeat\n") < 2 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "stream {i} of 300 got no second heartbeat within 15 s");
            sock.set_read_timeout(Some(left)).unwrap();
            match sock.read(&mut chunk) {
                Ok(0) => panic!("stream {i} closed: {}", String::from_utf8_lossy(&seen)),
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("stream {i}: {e}"),
            }
        }
        assert!(seen.starts_with(b"HTTP/1.1 200 OK\r\n"), "stream {i}");
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
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
fn a_stream_can_follow_a_keep_alive_request_on_one_connection() {
    let server = Server::start(&[]);
    let token = server.token(13);
    let mut conn = Responses::open(&server);
    conn.send(&get_keep_alive(HEALTH, &token));
    assert_json(&conn.read_response().json(), &health_json(13, 0, 0), "health first");
    conn.send(&format!(
        "GET {STREAM} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n"
    ));
    assert!(conn.buffered().is_empty());
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
    let r = server.send_json("PUT", LIMIT, &admin, &admin_month_limit(2, 60000, "50"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["maxLimit"], 60_000);
    assert_eq!(r.json()["currentSpending"], 700);
    assert_note(&next_note(&mut c), j + 2, 2, 700, 60_000);
    assert_quiet(&mut a, Duration::from_millis(300));
    assert_quiet(&mut b, Duration::from_millis(300));
}

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

/// Odd but harmless `Last-Event-ID` values: anything not a decimal id is a first connect
/// (snapshot), and so is an id above the user's latest (SPEC §4: a client that saw a database
/// later restored from a backup converges). Never a 500.
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
        ("u64::MAX", "18446744073709551615", true),
        ("i64::MAX + 1", "9223372036854775808", true),
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
    sock::set_linger_zero(&reset.sock).expect("SO_LINGER");
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
    let mut stalled = sock::connect_small_rcvbuf(server.addr, 4096).expect("connect");
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
        metric_value(&server, "periode_sse_disconnects_total{reason=\"slow_consumer\"}") >= 1,
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
                assert_eq!(answers.next_response().status, 200);
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
