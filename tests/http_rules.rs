//! The HTTP rules of SPEC §1/§5 that issues 12 and 13 found broken: exactly one `Host`,
//! `HEAD` without a body, `Date` on every answer, a request that cannot be authorized
//! answered from its head, and signals that must not kill the server; `Expect:
//! 100-continue` (answered once, only for a head that is accepted), and the access line of a
//! ticket stream. Against the real binary, over loopback.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const USER: i64 = 13;
const WAIT: Duration = Duration::from_secs(10);

/// Reads one response head (up to its blank line) and whatever came with it.
fn read_head(sock: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).expect("read head");
        assert!(n > 0, "closed before a head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    (String::from_utf8_lossy(&buf[..end]).to_string(), buf[end..].to_vec())
}

fn header_of(head: &str, name: &str) -> Option<String> {
    Response { status: 0, head: head.to_string(), body: String::new() }.header(name)
}

/// Waits for EOF; returns the bytes that came before it.
fn read_to_eof(sock: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    let _ = sock.read_to_end(&mut rest);
    rest
}

/// RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host gets 400; HTTP/1.0 may omit
/// it.
#[test]
fn http11_needs_exactly_one_host() {
    let server = Server::start(&[]);
    let auth = format!("Authorization: Bearer {}\r\n", server.token(USER));
    for (what, hosts) in [("no Host", ""), ("two Hosts", "Host: a\r\nHost: b\r\n")] {
        let r = request(
            server.addr,
            &format!("GET {HEALTH} HTTP/1.1\r\n{hosts}{auth}Connection: close\r\n\r\n"),
        );
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert_eq!(r.json()["error"], "bad_request", "{what}");
        assert_eq!(r.header("Connection").as_deref(), Some("close"), "{what}");
    }
    let r = request(
        server.addr,
        &format!("GET {HEALTH} HTTP/1.1\r\nHost: a\r\n{auth}Connection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = request(server.addr, &format!("GET {HEALTH} HTTP/1.0\r\n{auth}\r\n"));
    assert_eq!(r.status, 200, "HTTP/1.0 without Host: {}", r.body);
    // A stream request is no exception.
    let r = request(server.addr, &format!("GET {STREAM} HTTP/1.1\r\n{auth}\r\n"));
    assert_eq!(r.status, 400, "{}", r.body);
}

/// RFC 9110 §9.3.2: HEAD on a GET route answers as GET would, without the body; anywhere
/// else 405 without a body. Either way the next request on the connection is read right.
#[test]
fn head_is_get_without_the_body_and_keep_alive_stays_in_sync() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let get = server.get(STATUS, Some(&token));
    assert_eq!(get.status, 200);
    let mut sock = connect(server.addr);
    let auth = format!("Authorization: Bearer {token}\r\n");
    sock.write_all(format!("HEAD {STATUS} HTTP/1.1\r\nHost: t\r\n{auth}\r\n").as_bytes())
        .expect("HEAD");
    let (head, extra) = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(extra.is_empty(), "a body after HEAD: {:?}", String::from_utf8_lossy(&extra));
    assert_eq!(header_of(&head, "Content-Length"), Some(get.body.len().to_string()));
    assert_eq!(header_of(&head, "Content-Type"), get.header("Content-Type"));
    // HEAD where only POST is allowed: 405, Allow, no body.
    sock.write_all(format!("HEAD {TRANSACTIONS} HTTP/1.1\r\nHost: t\r\n{auth}\r\n").as_bytes())
        .expect("HEAD");
    let (head, extra) = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
    assert!(extra.is_empty(), "a body after HEAD: {:?}", String::from_utf8_lossy(&extra));
    assert!(header_of(&head, "Allow").is_some_and(|a| a.contains("POST")), "{head}");
    // The connection is still in step: the next answer starts right where it should.
    sock.write_all(format!("GET {HEALTH} HTTP/1.1\r\nHost: t\r\n{auth}\r\n").as_bytes())
        .expect("GET");
    let r = read_response(&mut sock);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["userId"], USER);
    // HEAD on the stream: the stream's head, no event, and the connection ends.
    let mut sock = connect(server.addr);
    sock.write_all(format!("HEAD {STREAM} HTTP/1.1\r\nHost: t\r\n{auth}\r\n").as_bytes())
        .expect("HEAD");
    let (head, extra) = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(header_of(&head, "Content-Type").as_deref(), Some("text/event-stream"));
    let rest = [extra, read_to_eof(&mut sock)].concat();
    assert!(rest.is_empty(), "a body after HEAD: {:?}", String::from_utf8_lossy(&rest));
    assert_eq!(server.health(&token)["connectedClients"], 0, "HEAD opens no stream");
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// An IMF-fixdate, as RFC 9110 §5.6.7 spells it.
fn http_date(epoch_secs: i64) -> String {
    let days = epoch_secs.div_euclid(86_400);
    let secs = epoch_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// RFC 9110 §6.6.1: every answer carries `Date`, the server's clock as an IMF-fixdate.
#[test]
fn every_answer_carries_a_date() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let before = now_secs();
    let mut heads = vec![
        ("health", server.get(HEALTH, Some(&token)).head),
        ("404", server.get("/nope", None).head),
        ("401", server.get(STATUS, None).head),
        ("page", server.get("/", None).head),
        (
            "preflight",
            request(server.addr, "OPTIONS / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").head,
        ),
        ("400", request(server.addr, "GARBAGE\r\n\r\n").head),
    ];
    heads.push(("stream", server.open_stream(&token).head));
    let after = now_secs();
    let allowed: Vec<String> = (before - 1..=after + 1).map(http_date).collect();
    for (what, head) in heads {
        let date = header_of(&head, "Date").unwrap_or_else(|| panic!("{what}: no Date in {head}"));
        assert!(allowed.contains(&date), "{what}: Date {date:?}, want one of {allowed:?}");
    }
}

/// SPEC §5 / issue 12 #10: a request that cannot be authorized is answered from its head,
/// before its body is sent: the server holds no body for a client it will refuse.
#[test]
fn unauthorized_requests_are_answered_before_their_body() {
    let server = Server::start(&[]);
    let head = |auth: &str| {
        format!(
            "POST {TRANSACTIONS} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 65536\r\n\r\n"
        )
    };
    let mut socks = Vec::new();
    for _ in 0..50 {
        let mut sock = connect(server.addr);
        sock.write_all(head("").as_bytes()).expect("head");
        socks.push(sock);
    }
    for (i, sock) in socks.iter_mut().enumerate() {
        sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let r = read_response(sock);
        assert_eq!(r.status, 401, "connection {i}: {}", r.body);
        assert_eq!(r.header("WWW-Authenticate").as_deref(), Some("Bearer"));
        assert_eq!(r.header("Connection").as_deref(), Some("close"));
    }
    // A bad token, and a token of a user that does not exist: 401 and 403, from the head.
    let bad = format!("Authorization: Bearer {}x\r\n", server.token(USER));
    let stranger = format!("Authorization: Bearer {}\r\n", server.token(4242));
    for (auth, want) in [(bad, 401), (stranger, 403)] {
        let mut sock = connect(server.addr);
        sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        sock.write_all(head(&auth).as_bytes()).expect("head");
        let r = read_response(&mut sock);
        assert_eq!(r.status, want, "{}", r.body);
        // The body that the client sends anyway is dropped, and the connection ends.
        let _ = sock.write_all(&vec![b' '; 65536]);
        read_to_eof(&mut sock);
    }
    // An authorized head waits for its body, which is then read and judged.
    let mut sock = connect(server.addr);
    let auth = format!("Authorization: Bearer {}\r\n", server.token(USER));
    sock.write_all(head(&auth).as_bytes()).expect("head");
    let mut body = br#"{"amount":5}"#.to_vec();
    body.resize(65536, b' ');
    sock.write_all(&body).expect("body");
    let r = read_response(&mut sock);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = server.get(HEALTH, Some(&server.token(USER)));
    assert_eq!(r.status, 200, "{}", r.body);
}

/// SPEC §1 / issue 12 #15 / issue 13: SIGHUP, SIGUSR1 and SIGUSR2 do not kill the server
/// (SIGHUP is logged); streams go on; SIGTERM still stops it cleanly with exit 0.
#[test]
fn hup_and_usr_signals_do_not_stop_the_server() {
    let mut server = Server::start(&["--heartbeat", "1"]);
    let token = server.token(USER);
    let mut stream = server.open_stream(&token);
    assert_eq!(stream.next_event(WAIT).expect("connected").event, "connected");
    let from = server.log.len();
    // Every signal whose default action would end the process, bar the graceful stops.
    let ignored_ones = ["USR1", "USR2", "ALRM", "VTALRM", "PROF", "IO", "PWR", "XCPU", "XFSZ"];
    server.signal("HUP");
    for sig in ignored_ones {
        server.signal(sig);
    }
    server.log.wait_for("SIGHUP", from, WAIT);
    let deadline = Instant::now() + WAIT;
    let mut ignored = 0;
    while ignored < ignored_ones.len() && Instant::now() < deadline {
        ignored = server.log.lines()[from..].iter().filter(|l| l.contains("ignored")).count();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ignored, ignored_ones.len(), "each logged as ignored: {:?}", server.log.lines());
    assert!(server.child.try_wait().expect("try_wait").is_none(), "the server died");
    assert!(stream.next_named("heartbeat", WAIT).is_some(), "the stream goes on");
    assert_eq!(server.health(&token)["connectedClients"], 1);
    // SIGQUIT is a graceful stop, as SIGTERM is (and as nginx's operators expect).
    server.signal("QUIT");
    assert!(stream.wait_end(WAIT), "the stream ends properly at SIGQUIT");
    assert_eq!(server.wait_exit(WAIT), Some(0));
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A transaction's head (`Content-Length` of `body`) with `fields` before its blank line.
fn post_head(version: &str, token: &str, fields: &str, body: &str) -> String {
    format!(
        "POST {TRANSACTIONS} {version}\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n{fields}Content-Length: {}\r\n\r\n",
        body.len()
    )
}

/// Reads exactly `n` bytes (10 s deadline).
fn read_exactly(sock: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    sock.read_exact(&mut buf).unwrap_or_else(|e| panic!("read {n} bytes: {e}"));
    buf
}

/// Nothing arrives on `sock` within `within` (so the server, which has read what we sent by
/// then, chose to send nothing yet).
fn assert_nothing_within(sock: &mut TcpStream, within: Duration, what: &str) {
    sock.set_read_timeout(Some(within)).expect("timeout");
    let mut byte = [0u8; 64];
    match sock.read(&mut byte) {
        Ok(n) => panic!("{what}: got {:?}", String::from_utf8_lossy(&byte[..n])),
        Err(e) => assert!(
            matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "{what}: {e}"
        ),
    }
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
}

/// RFC 9110 §10.1.1: a head with `Expect: 100-continue` that the server accepts gets
/// `100 Continue` at once, and exactly once; the final answer follows the body.
#[test]
fn expect_100_continue_is_answered_once_before_the_body() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let body = r#"{"amount":5,"description":"expect"}"#;
    let mut sock = connect(server.addr);
    sock.write_all(post_head("HTTP/1.1", &token, "Expect: 100-Continue\r\n", body).as_bytes())
        .expect("head");
    assert_eq!(read_exactly(&mut sock, CONTINUE.len()), CONTINUE);
    // The body in two pieces: the held head is read again, and says nothing more.
    sock.write_all(&body.as_bytes()[..10]).expect("body");
    assert_nothing_within(&mut sock, Duration::from_millis(300), "after half the body");
    sock.write_all(&body.as_bytes()[10..]).expect("body");
    let r = read_response(&mut sock);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["transaction"]["description"], "expect");
    assert_eq!(r.header("Connection"), None, "keep-alive as ever");
    // The connection is in step: the next answer is the next request's, and nothing else.
    sock.write_all(
        format!("GET {HEALTH} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .expect("GET");
    let (head, _) = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
}

/// A head the server refuses gets its final answer and no 100 (so the body is never sent),
/// and the connection closes as it did before; so does a body too large by its length.
#[test]
fn a_refused_head_gets_no_100() {
    let server = Server::start(&[]);
    let bad = format!("{}x", server.token(USER));
    let body = r#"{"amount":5}"#;
    let cases = [
        ("bad token", post_head("HTTP/1.1", &bad, "Expect: 100-continue\r\n", body), 401),
        (
            "too large",
            format!(
                "POST {TRANSACTIONS} HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\
                 Authorization: Bearer {}\r\nContent-Length: 70000\r\n\r\n",
                server.token(USER)
            ),
            413,
        ),
        (
            "unknown path",
            "POST /nope HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n"
                .to_string(),
            404,
        ),
    ];
    for (what, raw, status) in cases {
        let mut sock = connect(server.addr);
        sock.write_all(raw.as_bytes()).expect("head");
        let (head, _) = read_head(&mut sock);
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{what}: {head}");
        assert_eq!(header_of(&head, "Connection").as_deref(), Some("close"), "{what}");
        let rest = read_to_eof(&mut sock);
        assert!(find(&rest, b"100 Continue").is_none(), "{what}: {rest:?}");
    }
}

/// HTTP/1.0 ignores the field (RFC 9110 §10.1.1), a request without a body has nothing to
/// continue, and a body that came with its head needs no invitation.
#[test]
fn no_100_on_http10_without_a_body_or_with_the_body_begun() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let body = r#"{"amount":5}"#;
    // HTTP/1.0: the head alone gets nothing; the body then gets the final answer.
    let mut sock = connect(server.addr);
    sock.write_all(post_head("HTTP/1.0", &token, "Expect: 100-continue\r\n", body).as_bytes())
        .expect("head");
    assert_nothing_within(&mut sock, Duration::from_millis(300), "HTTP/1.0 head");
    sock.write_all(body.as_bytes()).expect("body");
    let (head, _) = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 201 "), "HTTP/1.0: {head}");
    // Part of the body with the head: no 100, the rest then the answer.
    let mut sock = connect(server.addr);
    let raw = post_head("HTTP/1.1", &token, "Expect: 100-continue\r\n", body) + &body[..4];
    sock.write_all(raw.as_bytes()).expect("head and part of the body");
    assert_nothing_within(&mut sock, Duration::from_millis(300), "body begun");
    sock.write_all(&body.as_bytes()[4..]).expect("body");
    let (head, _) = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 201 "), "body begun: {head}");
    // No body (GET, and a POST of length 0): the answer, straight away.
    for raw in [
        format!(
            "GET {HEALTH} HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\
             Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "POST {TICKET} HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\
             Authorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let mut sock = connect(server.addr);
        sock.write_all(raw.as_bytes()).expect("request");
        let (head, _) = read_head(&mut sock);
        assert!(head.starts_with("HTTP/1.1 20"), "{raw}: {head}");
    }
}

/// A request with Expect pipelined behind others (a read, and a write that goes to the
/// commit first) gets its 100 after their answers, and the connection stays in step.
#[test]
fn pipelined_requests_around_an_expect_stay_in_order() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let body = r#"{"amount":7}"#;
    let get = format!("GET {HEALTH} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n");
    let write = post_head("HTTP/1.1", &token, "", body) + body;
    let expect = post_head("HTTP/1.1", &token, "Expect: 100-continue\r\n", body);
    for (what, before) in [("behind a read", get.clone()), ("behind a write", write)] {
        let mut sock = connect(server.addr);
        sock.write_all((before + &expect).as_bytes()).expect("pipelined");
        // The first answer, then exactly the 100 (it may come in the same segment).
        let (head, mut after) = read_head(&mut sock);
        assert!(head.starts_with("HTTP/1.1 20"), "{what}: {head}");
        let len: usize =
            header_of(&head, "Content-Length").and_then(|n| n.parse().ok()).expect("length");
        let want = len + CONTINUE.len();
        if after.len() < want {
            after.extend(read_exactly(&mut sock, want - after.len()));
        }
        assert_eq!(&after[len..], CONTINUE, "{what}: {:?}", String::from_utf8_lossy(&after));
        sock.write_all((body.to_string() + &get).as_bytes()).expect("body and a GET");
        let mut answers = Responses::new(sock);
        let r = answers.read_response();
        assert_eq!(r.status, 201, "{what}: {}", r.body);
        let r = answers.read_response();
        assert_eq!(r.status, 200, "{what}: {}", r.body);
        assert_eq!(r.json()["userId"], USER, "{what}");
    }
}

/// Real curl, which waits for the 100 before sending a body it was told to expect with.
#[test]
fn curl_with_expect_100_continue() {
    let server = Server::start(&[]);
    let admin = server.admin_token();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-v", "-X", "PUT", "-H", "Expect: 100-continue", "-H"])
        .arg(format!("Authorization: Bearer {admin}"))
        .args(["-H", "Content-Type: application/json", "--data", r#"{"active":true}"#])
        .arg(format!("http://{}/api/admin/users/77", server.addr))
        .output()
        .unwrap_or_else(|e| panic!("cannot run `curl` ({e}): this test needs curl on PATH"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"id":77,"active":true}"#);
    assert!(stderr.contains("< HTTP/1.1 100 Continue"), "{stderr}");
}

/// `--access-log` names the user a stream ticket was minted for, as it does a token's.
#[test]
fn the_access_line_of_a_ticket_stream_names_its_user() {
    let server = Server::start(&["--access-log"]);
    let token = server.token(USER);
    let ticket = mint(&server, &token);
    let from = server.log.len();
    let mut s = Stream::open(server.addr, "", &format!("{STREAM}?ticket={ticket}"));
    assert_eq!(s.status, 200, "{}", s.head);
    let at = server.log.wait_for(&format!("GET {STREAM} 200 "), from, WAIT);
    let line = server.log.lines()[at].clone();
    let message = line.split("] ").nth(1).unwrap_or_else(|| panic!("{line}"));
    let fields: Vec<&str> = message.split(' ').collect();
    assert_eq!(fields.len(), 7, "{line}");
    assert_eq!(fields[..3], ["GET", STREAM, "200"], "{line}");
    assert!(fields[3].parse::<usize>().is_ok_and(|n| n > 0), "{line}");
    assert!(fields[4].strip_suffix("ms").is_some_and(|ms| ms.parse::<f64>().is_ok()), "{line}");
    assert_eq!(fields[5..], ["user", "13"], "{line}");
    drop(s.next_event(WAIT));
    // Used up, it names no one.
    let from = server.log.len();
    assert_invalid_ticket(&get_with_ticket(&server, &ticket), "reused");
    let at = server.log.wait_for(&format!("GET {STREAM} 401 "), from, WAIT);
    assert!(server.log.lines()[at].ends_with(" user -"), "{}", server.log.lines()[at]);
}
