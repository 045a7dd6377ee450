//! The operator's command line against the real binary (issue 13): `token --help`, `token`
//! never making a key, host names in `--listen`, `RUST_LOG` filters and garbage, and error
//! messages that never echo a secret.

mod common;

use common::{JsonBody, Options, Server, TempDir, BIN, SECRET};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs a command that ends by itself (help, token, refusals); 20 s at most.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in ["JWT_SECRET", "RUST_LOG", "PERIODE_SSE_LISTEN", "PERIODE_SSE_DB"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start periode-sse");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn token_help_prints_the_token_usage() {
    for flag in ["--help", "-h"] {
        for args in [vec!["token", flag], vec!["token", "13", flag]] {
            let out = run(&args, &[]);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
            let usage = text(&out.stdout);
            assert!(usage.starts_with("periode-sse token:"), "{usage}");
            assert!(usage.contains("periode-sse token USER_ID [--role user|admin]"), "{usage}");
            assert!(usage.contains("--ttl SECS"), "{usage}");
        }
    }
    let out = run(&["backup", "--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("periode-sse backup DEST [--db PATH]"));
}

#[test]
fn token_never_creates_a_key_and_says_where_it_looked() {
    let dir = TempDir::new();
    let db = common::db_path(&dir.0);
    let db_text = db.to_str().unwrap();
    let out = run(&["token", "13", "--db", db_text], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{db_text}.secret")) && err.contains("JWT_SECRET"), "{err}");
    assert!(out.stdout.is_empty());
    let left: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
    assert!(left.is_empty(), "token wrote {left:?}");
    // The default --db is relative: the message names the file it looked for.
    let out = run(&["token", "13"], &[]);
    if !std::path::Path::new("periode-sse.db.secret").exists() {
        assert!(text(&out.stderr).contains("./periode-sse.db.secret"), "{}", text(&out.stderr));
    }
}

#[test]
fn listen_accepts_a_host_name() {
    let server =
        Server::start_with(Options { listen: Some("localhost:0".into()), ..Options::default() });
    assert!(server.addr.ip().is_loopback(), "{}", server.addr);
    let admin = server.admin_token();
    assert_eq!(
        server.send_json("PUT", "/api/admin/users/4", &admin, r#"{"active":true}"#).status,
        200
    );
    let out = run(&["--listen", "nowhere.invalid:8989"], &[("JWT_SECRET", SECRET)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot resolve nowhere.invalid"), "{}", text(&out.stderr));
}

#[test]
fn rust_log_takes_target_filters() {
    // periode_sse stays at info (the start-up line is read by the harness); the stream
    // lifecycle lines, from periode_sse::server, are turned down to warnings.
    let server = Server::start_with(Options {
        args: &["--demo"],
        env: &[("RUST_LOG", "error,periode_sse=info,periode_sse::server=warn")],
        ..Options::default()
    });
    let mut stream = server.open_stream(&server.token(13));
    assert!(stream.next_named("connected", Duration::from_secs(5)).is_some());
    // A write is answered after the lines of its turn are out: no connect line was logged.
    let r = server.send_json("POST", common::TRANSACTIONS, &server.token(13), r#"{"amount":1}"#);
    assert_eq!(r.status, 201);
    assert!(stream.next_named("notification", Duration::from_secs(5)).is_some());
    let lines = server.log.lines();
    assert!(lines.iter().any(|l| l.contains("demo data ready")), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("SSE client connected")), "{lines:?}");

    let server = Server::start_with(Options {
        env: &[("RUST_LOG", "info,periode_sse=debug")],
        ..Options::default()
    });
    let token = server.create_user(5);
    let _stream = server.open_stream(&token);
    server.log.wait_for("SSE client connected for user 5", 0, Duration::from_secs(5));
}

#[test]
fn garbage_log_filters_are_refused_alike() {
    for (args, env) in [
        (vec!["--log-level", "loud"], vec![]),
        (vec![], vec![("RUST_LOG", "loud")]),
        (vec![], vec![("RUST_LOG", "periode_sse=loud")]),
        (vec![], vec![("RUST_LOG", "info,periode sse=debug")]),
    ] {
        let mut env = env.clone();
        env.push(("JWT_SECRET", SECRET));
        let out = run(&args, &env);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}");
        let err = text(&out.stderr);
        assert!(err.contains("--log-level") || err.contains("RUST_LOG"), "{err}");
    }
}

#[test]
fn error_messages_never_echo_a_secret() {
    let short = "hunter2-short-secret";
    let out = run(
        &["--db", "/nonexistent/dir/p.db", "--listen", "127.0.0.1:0"],
        &[("JWT_SECRET", short)],
    );
    assert_ne!(out.status.code(), Some(0));
    let out2 = run(&["token", "1"], &[("JWT_SECRET", short)]);
    let dir = TempDir::new();
    let db = common::db_path(&dir.0);
    let out3 =
        run(&["--db", db.to_str().unwrap(), "--listen", "127.0.0.1:0"], &[("JWT_SECRET", short)]);
    for out in [out, out2, out3] {
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!all.contains(short), "{all}");
        assert_ne!(out.status.code(), Some(0), "{all}");
    }
}

#[test]
fn write_bodies_with_a_repeated_member_are_400_and_store_nothing() {
    let server = Server::start(&[]);
    let admin = server.admin_token();
    server.create_user(14);
    let before =
        server.get(common::STATUS, Some(&server.token(13))).json()["currentSpending"].clone();
    let cases = [
        (common::TRANSACTIONS, admin.as_str(), r#"{"userId":14,"userId":13,"amount":5000}"#),
        (common::TRANSACTIONS, admin.as_str(), r#"{"userId":13,"amount":1,"amount":2}"#),
        (
            common::LIMIT,
            admin.as_str(),
            r#"{"userId":13,"maxLimit":1,"maxLimit":2,"alertPercentage":50,"periodeStart":"2025-01-01T00:00:00Z","periodeEnd":"2035-01-01T00:00:00Z"}"#,
        ),
    ];
    for (path, token, body) in cases {
        let method = if path == common::LIMIT { "PUT" } else { "POST" };
        let r = server.send_json(method, path, token, body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.json()["error"], "bad_request", "{}", r.body);
        assert!(r.json()["message"].as_str().unwrap().contains("more than once"), "{}", r.body);
    }
    let r =
        server.send_json("PUT", "/api/admin/users/15", &admin, r#"{"active":true,"active":false}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    let after =
        server.get(common::STATUS, Some(&server.token(13))).json()["currentSpending"].clone();
    assert_eq!(before, after);
}
