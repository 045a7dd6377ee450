//! Key rotation (SPEC §8) against the real binary: with `JWT_SECRET_PREVIOUS` set, tokens
//! signed with the previous key are accepted on every route (the stream included), tokens
//! signed with any other key are `401 invalid_token`, `token` keeps signing with
//! `JWT_SECRET`, and a previous key shorter than 32 bytes stops the start. Each test starts
//! its own server on a free loopback port with a temporary SQLite file.

mod common;
use common::*;

/// The key being rotated out (the test harness's `SECRET` is the current one).
const PREVIOUS: &str = "the-previous-key-of-at-least-32-bytes!!";
const OTHER: &str = "some-other-key-of-at-least-32-bytes!!!!";

fn token_signed_with(key: &str, user: i64, role: &str) -> String {
    let payload = format!(r#"{{"sub":"{user}","role":"{role}","exp":{}}}"#, now_secs() + 600);
    sign_with(r#"{"alg":"HS256","typ":"JWT"}"#, &payload, key.as_bytes())
}

fn start_rotating() -> Server {
    Server::start_with(Options {
        args: &["--demo"],
        env: &[("JWT_SECRET_PREVIOUS", PREVIOUS)],
        ..Options::default()
    })
}

fn assert_invalid_token(r: &Response, context: &str) {
    assert_error(r, 401, Some("invalid_token"), context);
    assert_eq!(
        r.header("WWW-Authenticate").as_deref(),
        Some("Bearer error=\"invalid_token\""),
        "{context}"
    );
}

#[test]
fn a_token_signed_with_the_previous_key_is_accepted() {
    let server = start_rotating();
    server.log.wait_for("key rotation: tokens signed with JWT_SECRET_PREVIOUS", 0, WAIT);
    let old = token_signed_with(PREVIOUS, 13, "user");
    let current = token_signed_with(SECRET, 13, "user");
    for token in [&old, &current] {
        assert_eq!(server.health(token), health_json(13, 0, 0));
        assert_eq!(status_of(&server, token), demo_status());
    }
    // Writes, the stream (header and access_token), tickets, and admin routes too.
    let mut s = open(&server, &old);
    assert_notification(&next_note(&mut s), 13, 267_000, 200_000, 85.0, 133.5);
    let body = spend(&server, &old, 1000);
    assert_eq!(body["transaction"]["userId"], json!(13));
    assert_eq!(next_note(&mut s).json()["currentSpending"], json!(268_000));
    let mut q = Stream::open(server.addr, "", &format!("{STREAM}?access_token={old}"));
    assert_eq!(q.status, 200, "{}", q.head);
    assert_eq!(q.next_event(WAIT).map(|e| e.event).as_deref(), Some("connected"));
    drop(q);
    let r = server.send_json("POST", "/api/periode-limit/notifications/ticket", &old, "");
    assert_eq!(r.status, 201, "{}", r.body);
    let admin = token_signed_with(PREVIOUS, 0, "admin");
    let r = server.get("/metrics", Some(&admin));
    assert_eq!(r.status, 200, "{}", r.body);
    // The access_token stream has gone; the first one is still open.
    wait_until("one stream left", WAIT, || server.health(&old) == health_json(13, 1, 1));
}

#[test]
fn a_token_signed_with_any_other_key_is_refused() {
    let server = start_rotating();
    let other = token_signed_with(OTHER, 13, "user");
    for path in [HEALTH, STATUS, STREAM, "/metrics"] {
        assert_invalid_token(&server.get(path, Some(&other)), path);
    }
    let r = post_tx(&server, &other, r#"{"amount":5}"#);
    assert_invalid_token(&r, "transaction");
    // The previous key gets no leniency: an expired token signed with it is refused.
    let expired = sign_with(
        r#"{"alg":"HS256"}"#,
        &format!(r#"{{"sub":"13","exp":{}}}"#, now_secs() - 120),
        PREVIOUS.as_bytes(),
    );
    assert_invalid_token(&server.get(HEALTH, Some(&expired)), "expired, previous key");
}

#[test]
fn without_the_previous_key_its_tokens_are_refused() {
    let server = Server::start(&[]);
    let old = token_signed_with(PREVIOUS, 13, "user");
    assert_invalid_token(&server.get(HEALTH, Some(&old)), "no rotation configured");
    assert_eq!(server.health(&server.token(13)), health_json(13, 0, 0));
}

#[test]
fn token_signs_with_the_current_key_only() {
    let dir = TempDir::new();
    let db = dir.0.join("t.db");
    let out = Command::new(BIN)
        .args(["token", "13", "--db"])
        .arg(&db)
        .env_remove("PERIODE_SSE_DB")
        .env("JWT_SECRET", SECRET)
        .env("JWT_SECRET_PREVIOUS", PREVIOUS)
        .stdin(Stdio::null())
        .output()
        .expect("run periode-sse token");
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).expect("UTF-8").trim().to_string();
    // A server that knows only the current key accepts it; one that knows only the previous
    // key (as its current) does not.
    let current_only = Server::start(&[]);
    assert_eq!(current_only.health(&printed), health_json(13, 0, 0));
    let previous_only = Server::start_with(Options {
        args: &["--demo"],
        secret: Some(PREVIOUS),
        ..Options::default()
    });
    assert_invalid_token(&previous_only.get(HEALTH, Some(&printed)), "signed with the previous");
}

#[test]
fn a_too_short_previous_key_stops_the_start() {
    for short in ["", "short", &"p".repeat(31)] {
        let dir = TempDir::new();
        let db = dir.0.join("t.db");
        let db_arg = db.to_str().expect("UTF-8 temp path");
        let (mut child, lines) = spawn_raw(
            &["--db", db_arg, "--listen", "127.0.0.1:0"],
            &[("JWT_SECRET_PREVIOUS", short)],
        );
        let deadline = Instant::now() + WAIT;
        let code = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("still running with a {}-byte previous key", short.len());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(code, Some(1), "{short:?}");
        // The reader thread ends with the process's stderr.
        let stderr: Vec<String> =
            std::iter::from_fn(|| lines.recv_timeout(WAIT).ok()).take(100).collect();
        let want = format!("JWT_SECRET_PREVIOUS is {} bytes long", short.len());
        assert!(
            stderr.iter().any(|l| l.contains(&want) && l.contains("at least 32")),
            "{stderr:?}"
        );
        assert!(
            short.is_empty() || !stderr.iter().any(|l| l.contains(short)),
            "the key is echoed: {stderr:?}"
        );
        // Refused before anything was made: no database, no key file.
        assert!(!db.exists(), "{short:?}: the database was created");
        assert!(!dir.0.join("t.db.secret").exists());
    }
}
