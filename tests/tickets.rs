//! Stream tickets (SPEC §8) against the real binary: `POST …/notifications/ticket` answers a
//! single-use ticket, `?ticket=` on the stream URL opens that user's stream once, and a used,
//! unknown or malformed ticket is `401 invalid_token`; tickets never reach the log. The 30 s
//! expiry is asserted with an explicit clock in `src/tickets.rs`'s unit tests, not by waiting
//! here. Each test starts its own server on a free loopback port with a temporary SQLite file.

mod common;
use common::*;

/// A stream request carrying only the ticket (no Authorization header).
fn open_ticket(server: &Server, ticket: &str) -> Stream {
    Stream::open(server.addr, "", &format!("{STREAM}?ticket={ticket}"))
}

#[test]
fn a_ticket_is_minted_201_no_store_with_30_seconds() {
    let server = Server::start(&[]);
    let token = server.token(13);
    let r = post_ticket(&server, &token);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("Content-Type").as_deref(), Some("application/json"));
    assert_eq!(r.header("Cache-Control").as_deref(), Some("no-store"));
    let body = r.json();
    assert_eq!(body["expiresIn"], json!(30));
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{body}");
    // 128 random bits in unpadded base64url; no two alike.
    let ticket = body["ticket"].as_str().expect("ticket").to_string();
    assert_eq!(ticket.len(), 22, "{ticket}");
    assert!(ticket.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let more: BTreeSet<String> = (0..5).map(|_| mint(&server, &token)).collect();
    assert_eq!(more.len(), 5);
    assert!(!more.contains(&ticket));
    // A body is not needed and, when sent, not read.
    let r = server.send_json("POST", TICKET, &token, r#"{"anything":1}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    // Counted under its own route label.
    let m = fetch_metrics(&server, &server.admin_token());
    assert_eq!(metric(&m, r#"periode_sse_http_requests_total{route="ticket",status="201"}"#), 7.0);
}

#[test]
fn the_ticket_route_checks_in_the_spec_order() {
    let server = Server::start(&[]);
    let token = server.token(13);
    // 404 before anything else.
    let r = server.send_json("POST", &format!("{TICKET}s"), "not-a-token", "");
    assert_error(&r, 404, Some("not_found"), "a near path");
    // 405 with Allow, before authentication.
    for method in ["GET", "PUT"] {
        let r = request(
            server.addr,
            &format!("{method} {TICKET} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        );
        assert_error(&r, 405, Some("method_not_allowed"), method);
        assert_eq!(allowed_methods(&r), ["POST", "OPTIONS"], "{method}");
    }
    // 401 without a token, 401 invalid_token with a bad one, 403 for an unknown user.
    let r = request(
        server.addr,
        &format!(
            "POST {TICKET} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_error(&r, 401, Some("missing_token"), "no token");
    assert_eq!(r.header("WWW-Authenticate").as_deref(), Some("Bearer"));
    let r = post_ticket(&server, "garbage");
    assert_error(&r, 401, Some("invalid_token"), "bad token");
    let r = post_ticket(&server, &server.token(99));
    assert_error(&r, 403, Some("unknown_user"), "unknown user");
    // A ticket does not buy a ticket: it authenticates the stream only.
    let ticket = mint(&server, &token);
    let r = server.get(&format!("{HEALTH}?ticket={ticket}"), None);
    assert_error(&r, 401, Some("missing_token"), "ticket on health");
    let r = request(
        server.addr,
        &format!(
            "POST {TICKET}?ticket={ticket} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        ),
    );
    assert_error(&r, 401, Some("missing_token"), "ticket on the ticket route");
    // …and none of that used it up.
    let mut s = open_ticket(&server, &ticket);
    assert_eq!(s.status, 200, "{}", s.head);
    assert_eq!(s.next_event(WAIT).map(|e| e.event).as_deref(), Some("connected"));
}

#[test]
fn a_ticket_opens_one_stream_once() {
    let server = Server::start(&[]);
    let token = server.token(13);
    let ticket = mint(&server, &token);
    let mut s = open_ticket(&server, &ticket);
    assert_eq!(s.status, 200, "{}", s.head);
    assert_eq!(s.header("Content-Type").as_deref(), Some("text/event-stream"));
    // The ticket sat in the URL: as with access_token, nothing may store the answer.
    assert_eq!(s.header("Cache-Control").as_deref(), Some("no-cache, no-store"));
    let connected = s.next_event(WAIT).expect("connected");
    assert_eq!(connected.event, "connected");
    // The demo user's snapshot, as a token-opened stream would get it.
    assert_notification(&next_note(&mut s), 13, 267_000, 200_000, 85.0, 133.5);
    assert_eq!(server.health(&token)["connectedClients"], json!(1));

    // Second use, while the first stream is still open, and after it closed.
    assert_invalid_ticket(&get_with_ticket(&server, &ticket), "second use");
    drop(s);
    wait_until("the stream is gone", WAIT, || server.health(&token)["connectedClients"] == 0);
    assert_invalid_ticket(&get_with_ticket(&server, &ticket), "third use");

    // A fresh ticket each time works: this is what the browser module does on reconnect.
    for _ in 0..3 {
        let mut s = open_ticket(&server, &mint(&server, &token));
        assert_eq!(s.status, 200, "{}", s.head);
        assert_eq!(s.next_event(WAIT).map(|e| e.event).as_deref(), Some("connected"));
    }
}

#[test]
fn unknown_and_garbage_tickets_are_401_invalid_token() {
    let server = Server::start(&[]);
    let token = server.token(13);
    let real = mint(&server, &token);
    let mut changed = real.clone().into_bytes();
    changed[5] = if changed[5] == b'A' { b'B' } else { b'A' };
    let changed = String::from_utf8(changed).unwrap();
    let cases = [
        ("made up", "AAAAAAAAAAAAAAAAAAAAAA".to_string()),
        ("one character changed", changed),
        ("too short", real[..21].to_string()),
        ("too long", format!("{real}A")),
        ("garbage", "%00%ff%22not-a-ticket".to_string()),
        ("a token in the ticket's place", token.clone()),
    ];
    for (name, ticket) in &cases {
        assert_invalid_ticket(&get_with_ticket(&server, ticket), name);
    }
    // An empty ticket is no credential at all: the plain Bearer challenge.
    let r = get_with_ticket(&server, "");
    assert_error(&r, 401, Some("missing_token"), "empty ticket");
    assert_eq!(r.header("WWW-Authenticate").as_deref(), Some("Bearer"));
    // None of those used the real one up.
    let mut s = open_ticket(&server, &real);
    assert_eq!(s.status, 200, "{}", s.head);
    assert_eq!(s.next_event(WAIT).map(|e| e.event).as_deref(), Some("connected"));
}

#[test]
fn a_ticket_is_bound_to_the_user_it_was_minted_for() {
    let server = Server::start(&[]);
    let alice = server.create_user(21);
    let bob = server.create_user(22);
    assert_eq!(server.set_month_limit(21, 1000, 80.0).status, 200);
    assert_eq!(server.set_month_limit(22, 1000, 80.0).status, 200);
    let alice_ticket = mint(&server, &alice);
    let bob_ticket = mint(&server, &bob);

    let mut a = open_ticket(&server, &alice_ticket);
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(a.next_event(WAIT).map(|e| e.event).as_deref(), Some("connected"));
    assert_eq!(next_note(&mut a).json()["userId"], json!(21));
    assert_eq!(server.health(&alice)["connectedClients"], json!(1));
    assert_eq!(server.health(&bob)["connectedClients"], json!(0));

    // Bob's spending never reaches Alice's ticketed stream; hers does.
    spend(&server, &bob, 10);
    spend(&server, &alice, 500);
    let ev = next_note(&mut a);
    assert_eq!(ev.json()["userId"], json!(21));
    assert_eq!(ev.json()["currentSpending"], json!(500));

    // Bob's ticket opens Bob's stream, whoever presents it.
    let mut b = open_ticket(&server, &bob_ticket);
    assert_eq!(b.status, 200, "{}", b.head);
    assert_eq!(b.next_event(WAIT).map(|e| e.event).as_deref(), Some("connected"));
    assert_eq!(next_note(&mut b).json()["userId"], json!(22));
    assert_eq!(server.health(&bob)["connectedClients"], json!(1));
    assert_eq!(server.health(&alice)["connectedClients"], json!(1));
}

#[test]
fn a_ticket_of_a_user_deactivated_since_is_403() {
    let server = Server::start(&[]);
    let token = server.create_user(31);
    let ticket = mint(&server, &token);
    let r = server.send_json(
        "PUT",
        "/api/admin/users/31",
        &server.admin_token(),
        r#"{"active":false}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_error(&get_with_ticket(&server, &ticket), 403, Some("user_inactive"), "inactive");
}

#[test]
fn the_header_wins_over_a_ticket() {
    let server = Server::start(&[]);
    let token = server.token(13);
    let ticket = mint(&server, &token);
    // With a bad Authorization header, the ticket is not even looked at…
    let r = request(
        server.addr,
        &format!(
            "GET {STREAM}?ticket={ticket} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer x\r\n\
             Connection: close\r\n\r\n"
        ),
    );
    assert_error(&r, 401, Some("invalid_token"), "bad header, good ticket");
    // …so it is still good.
    let mut s = open_ticket(&server, &ticket);
    assert_eq!(s.status, 200, "{}", s.head);
    assert_eq!(s.next_event(WAIT).map(|e| e.event).as_deref(), Some("connected"));
}

#[test]
fn tickets_never_reach_the_log() {
    let server =
        Server::start(&["--access-log", "--log-level", "trace", "--cors-origin", "http://a"]);
    let token = server.token(13);
    let mut tickets = Vec::new();
    // Minted, used, used again, used on a keep-alive connection, and one never used.
    let used = mint(&server, &token);
    let mut s = open_ticket(&server, &used);
    assert_eq!(s.status, 200, "{}", s.head);
    assert_eq!(s.next_event(WAIT).map(|e| e.event).as_deref(), Some("connected"));
    assert_invalid_ticket(&get_with_ticket(&server, &used), "reused");
    tickets.push(used);
    tickets.push(mint(&server, &token));
    drop(s);
    let mark = server.log.len();
    let r = get_with_ticket(&server, "AAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(r.status, 401);
    // The access log has the request, without its query.
    let at = server.log.wait_for(&format!("GET {STREAM} 401"), mark, WAIT);
    assert!(!server.log.lines()[at].contains('?'), "{}", server.log.lines()[at]);
    server.log.wait_for(&format!("POST {TICKET} 201"), 0, WAIT);
    server.log.wait_for("SSE client removed for user 13", 0, WAIT);
    tickets.push("AAAAAAAAAAAAAAAAAAAAAA".to_string());
    for line in server.log.lines() {
        for ticket in &tickets {
            assert!(!line.contains(ticket.as_str()), "a ticket in the log: {line}");
        }
        assert!(!line.contains("ticket="), "{line}");
    }
}

#[test]
fn a_user_holds_at_most_64_live_tickets() {
    let server = Server::start(&[]);
    let token = server.token(13);
    let mut client = Client::new(server.addr);
    let mut first = None;
    for i in 0..64 {
        let r = client.send("POST", TICKET, &token, "");
        assert_eq!(r.status, 201, "ticket {i}: {}", r.body);
        first.get_or_insert_with(|| r.json()["ticket"].as_str().unwrap_or_default().to_string());
    }
    let r = client.send("POST", TICKET, &token, "");
    assert_error(&r, 429, Some("too_many_tickets"), "the 65th");
    // Another user is not crowded out, and a ticket used stays counted until its 30 s pass
    // (a used ticket is told apart from a made-up one only while it is remembered).
    mint(&server, &server.create_user(40));
    let first = first.expect("a first ticket");
    let mut s = open_ticket(&server, &first);
    assert_eq!(s.status, 200, "{}", s.head);
    assert_eq!(s.next_event(WAIT).map(|e| e.event).as_deref(), Some("connected"));
    assert_error(&post_ticket(&server, &token), 429, Some("too_many_tickets"), "after a use");
}
