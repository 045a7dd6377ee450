//! How connections and the process end and begin (SPEC §5, §6): deactivation and token
//! expiry end streams properly; SIGTERM and SIGINT end every stream and exit 0; connection and
//! descriptor limits; start-up configuration, the secret, the `token` command; metrics.
//! Each test starts its own server (the real binary) on a free loopback port with a temporary
//! SQLite file; every wait has a deadline.

mod common;
use common::*;

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
    let mut idle = Responses::open(&server);
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

/// SPEC §5 SIGTERM, with hostile clients around: a stalled stream, a half-received request, a
/// silent connection, an idle keep-alive one. The healthy stream still ends properly with a
/// spread `retry:`, the others are closed without an answer, and the process exits 0 in 5 s.
#[test]
fn sigterm_with_hostile_clients_exits_0_within_5_s() {
    let mut server = Server::start(&["--heartbeat", "1"]);
    let token = server.token(USER);
    let mut healthy = server.open_stream(&token);
    assert_eq!(healthy.status, 200);
    let mut stalled = sock::connect_small_rcvbuf(server.addr, 4096).expect("connect");
    stalled
        .write_all(
            get_with_headers(STREAM, &format!("Authorization: Bearer {token}\r\n")).as_bytes(),
        )
        .expect("send");
    let mut answers = Responses::new(connect(server.addr));
    let post = post_json(TRANSACTIONS, &token, r#"{"amount":1}"#, true);
    for _ in 0..200 {
        answers.sock.write_all(&post).expect("POST");
        assert_eq!(answers.next_response().status, 201);
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
        assert_closed_with_nothing_more(sock, &format!("{what}, at shutdown"));
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
