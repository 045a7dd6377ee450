//! The stream rules of SPEC §4/§5 that issue 12 found broken: a notification at most once
//! whatever is pipelined before the stream request, an EOF with the request ends the stream
//! at once, the slow-consumer limit counts the opening replay, and a `Last-Event-ID` above
//! the latest stored id is a first connect. Each runs against the real binary.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const USER: i64 = 13;
const WAIT: Duration = Duration::from_secs(10);

fn post_transaction(token: &str, amount: i64, keep_alive: bool) -> String {
    let body = format!(r#"{{"amount":{amount}}}"#);
    let connection = if keep_alive { "" } else { "Connection: close\r\n" };
    format!(
        "POST {TRANSACTIONS} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{connection}\r\n{body}",
        body.len()
    )
}

/// Reads from `sock` into `buf` until `done(buf)` or the deadline; returns whether done.
fn read_until(sock: &mut TcpStream, buf: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    while !done(buf) {
        if Instant::now() >= deadline {
            return false;
        }
        let mut chunk = [0u8; 8192];
        match sock.read(&mut chunk) {
            Ok(0) => return done(buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    true
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

/// The `id:` of every notification in raw stream bytes, in order.
fn notification_ids(raw: &[u8]) -> Vec<u64> {
    let text = String::from_utf8_lossy(raw);
    let lines: Vec<&str> = text.lines().collect();
    let mut ids = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if *line == "event: notification" {
            let id = lines[..i].iter().rev().find_map(|l| l.strip_prefix("id: "));
            ids.push(id.and_then(|v| v.trim().parse().ok()).expect("a notification without id"));
        }
    }
    ids
}

/// SPEC §5 / issue 12 #6: a stream request pipelined behind a POST on one connection gets
/// that POST's notification once (in its snapshot), not a second time live.
#[test]
fn a_stream_pipelined_behind_a_post_gets_its_notification_once() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let mut sock = connect(server.addr);
    let mut raw = post_transaction(&token, 100, true);
    raw.push_str(&format!(
        "GET {STREAM} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n"
    ));
    sock.write_all(raw.as_bytes()).expect("send");
    let mut buf = Vec::new();
    assert!(
        read_until(&mut sock, &mut buf, |b| count(b, b"event: notification") >= 1),
        "no snapshot; got {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(buf.starts_with(b"HTTP/1.1 201"), "{:?}", String::from_utf8_lossy(&buf));
    let snapshot = notification_ids(&buf);
    assert_eq!(snapshot.len(), 1, "{:?}", String::from_utf8_lossy(&buf));
    // A second write, from elsewhere: the next notification on the stream must be its own.
    let r = server.send_json("POST", TRANSACTIONS, &token, r#"{"amount":7}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        read_until(&mut sock, &mut buf, |b| count(b, b"event: notification") >= 2),
        "no live notification; got {:?}",
        String::from_utf8_lossy(&buf)
    );
    let ids = notification_ids(&buf);
    assert_eq!(ids[..2], [snapshot[0], snapshot[0] + 1], "{:?}", String::from_utf8_lossy(&buf));
}

/// SPEC §5 / issue 12 #7: a client whose EOF arrives together with its stream request is no
/// stream at all: it is not counted by health, and its slot under the per-user limit is free.
#[test]
fn an_eof_with_the_stream_request_ends_the_stream_at_once() {
    let server = Server::start(&["--max-conns-per-user", "1", "--heartbeat", "3600"]);
    let token = server.token(USER);
    // Stopped, the server cannot read the request before the FIN is there too.
    server.signal("STOP");
    let mut sock = TcpStream::connect_timeout(&server.addr, Duration::from_secs(5))
        .expect("connect (the kernel completes it while the server is stopped)");
    let raw = format!("GET {STREAM} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n");
    sock.write_all(raw.as_bytes()).expect("send");
    sock.shutdown(std::net::Shutdown::Write).expect("FIN");
    server.signal("CONT");
    server.log.wait_for("SSE stream aborted for user 13", 0, WAIT);
    let health = server.health(&token);
    assert_eq!(health["connectedClients"], 0, "{health}");
    assert_eq!(health["totalSystemClients"], 0, "{health}");
    let mut next = server.open_stream(&token);
    assert_eq!(next.status, 200, "the per-user slot must be free: {}", next.head);
    assert_eq!(next.next_event(WAIT).expect("connected").event, "connected");
}

/// A socket whose receive buffer is tiny, so that a client that never reads stalls at once.
fn connect_with_small_rcvbuf(addr: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else { panic!("the test server listens on IPv4") };
    // SAFETY: plain socket calls on a descriptor we own; every pointer is to a live local of
    // the size passed with it. The descriptor moves into the TcpStream once.
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

/// `n` transactions of user 13, over a few keep-alive connections at once.
fn record_transactions(server: &Server, token: &str, n: usize) {
    let threads = 8;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (addr, token) = (server.addr, token.to_string());
            let mine = n / threads + usize::from(t < n % threads);
            std::thread::spawn(move || {
                let mut sock = connect(addr);
                let raw = post_transaction(&token, 1, true);
                for _ in 0..mine {
                    sock.write_all(raw.as_bytes()).expect("POST");
                    let r = read_response(&mut sock);
                    assert_eq!(r.status, 201, "{}", r.body);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a writer failed");
    }
}

/// SPEC §5 / issue 12 #8: the 256 KiB slow-consumer limit counts the opening replay. A
/// client resuming from 0 that reads gets all 1000 kept notifications (~200 KiB) and stays;
/// one that never reads is cut for the replay it leaves unsent (before, the replay was
/// exempt, and such a client held ~433 KiB before it was cut, or forever if nothing more
/// came).
#[test]
fn the_slow_consumer_limit_counts_the_opening_replay() {
    let server = Server::start(&["--heartbeat", "1"]);
    let token = server.token(USER);
    record_transactions(&server, &token, 1000);

    let mut reader = Stream::open(
        server.addr,
        &format!("Authorization: Bearer {token}\r\nLast-Event-ID: 0\r\n"),
        STREAM,
    );
    assert_eq!(reader.status, 200);
    let mut last = 0;
    for _ in 0..1000 {
        let ev = reader.next_named("notification", WAIT).expect("the whole replay");
        let id: u64 = ev.id.as_deref().and_then(|v| v.parse().ok()).expect("an id");
        assert!(id > last, "ids go up: {id} after {last}");
        last = id;
    }
    assert_eq!(last, 1000);

    let mut stalled = connect_with_small_rcvbuf(server.addr);
    let raw = format!(
        "GET {STREAM} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nLast-Event-ID: 0\r\n\r\n"
    );
    stalled.write_all(raw.as_bytes()).expect("send");
    // Never read: the replay stays unsent (over the 128 KiB soft limit), and the policy cuts
    // the stream; nothing else is written meanwhile but heartbeats.
    server.log.wait_for("SSE slow consumer dropped for user 13", 0, Duration::from_secs(20));
    // The reader, which kept up, is still there and still served.
    assert_eq!(reader.next_named("heartbeat", WAIT).expect("a heartbeat").event, "heartbeat");
    assert_eq!(server.health(&token)["connectedClients"], 1);
}

/// SPEC §4: a `Last-Event-ID` above the user's latest stored id (a client that saw a
/// database since restored from a backup) is a first connect: the snapshot, with the latest
/// id, so the client converges.
#[test]
fn a_last_event_id_above_the_latest_gets_the_snapshot() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let r = server.send_json("POST", TRANSACTIONS, &token, r#"{"amount":1000}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    for header in ["Last-Event-ID: 50\r\n", "Last-Event-ID: 18446744073709551615\r\n"] {
        let mut s = Stream::open(
            server.addr,
            &format!("Authorization: Bearer {token}\r\n{header}"),
            STREAM,
        );
        assert_eq!(s.status, 200);
        assert_eq!(s.next_event(WAIT).expect("connected").event, "connected");
        let note = s.next_event(WAIT).unwrap_or_else(|| panic!("{header}: no snapshot"));
        assert_eq!(note.event, "notification", "{header}");
        assert_eq!(note.id.as_deref(), Some("1"), "{header}: the latest stored id");
        assert_eq!(note.json()["currentSpending"], 268000, "{header}");
    }
    // The query parameter follows the same rule.
    let target = format!("{STREAM}?lastEventId=7");
    let mut s = Stream::open(server.addr, &format!("Authorization: Bearer {token}\r\n"), &target);
    assert_eq!(s.next_event(WAIT).expect("connected").event, "connected");
    assert_eq!(s.next_event(WAIT).expect("snapshot").id.as_deref(), Some("1"));
}
