//! What the database keeps (SPEC §4, §6): acknowledged writes across `kill -9`, the kept
//! notifications a resume replays, the generated secret file, the idempotent demo data.
//! Each test starts its own server (the real binary) on a free loopback port with a temporary
//! SQLite file; every wait has a deadline.

mod common;
use common::*;

#[test]
fn token_subcommand_and_server_share_the_generated_secret() {
    if pg::enabled() {
        return token_subcommand_and_a_postgresql_server_share_jwt_secret();
    }
    let dir = Arc::new(TempDir::new());
    let db = db_path(&dir.0);
    // The server makes the key on its first start; `token` only ever reads it (SPEC §1).
    let server = Server::start_with(Options {
        args: &["--demo"],
        secret: None,
        dir: Some(dir.clone()),
        ..Options::default()
    });
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

/// With PostgreSQL there is no key file to generate: `token` and every node take
/// `JWT_SECRET` (SPEC §7), so a token that `token` prints for the same `--db` opens the
/// server's routes, and nothing is written beside anything.
fn token_subcommand_and_a_postgresql_server_share_jwt_secret() {
    let server = Server::start(&[]);
    let uri = pg::database_for(&server.dir.0);
    let token = run_token(&["13"], std::path::Path::new(&uri), Some(SECRET));
    let r = server.get(HEALTH, Some(&token));
    assert_eq!(r.status, 200, "token from `periode-sse token` rejected: {r:?}");
    assert_json(&r.json(), &health_json(13, 0, 0), "health with a token from `token`");
    let files: Vec<_> = std::fs::read_dir(&server.dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["pg-database"], "only the harness's marker");
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
    let r = client.send("PUT", LIMIT, &admin, &admin_month_limit(23, 777, "12.5"));
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
