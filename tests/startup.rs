//! Start-up refusals against the real binary (SPEC §1, issue 12 items 1, 2, 4, 5, 11; issue
//! 13's file modes and schema versions): what must not start, starts with a one-line reason
//! naming the file and a non-zero exit, and leaves the database as it was.

mod common;

use common::{JsonBody, Options, Server, TempDir, BIN, SECRET};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs the binary to its end (killing it after 20 s: a server that should have refused but
/// started is a failure, not a hang). Returns the exit code (`None`: it had to be killed) and
/// stderr.
fn run(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(cwd);
    for var in ["JWT_SECRET", "RUST_LOG", "PERIODE_SSE_LISTEN", "PERIODE_SSE_DB"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let err_path = cwd.join(format!(".stderr-{}", std::process::id()));
    let err_file = std::fs::File::create(&err_path).expect("stderr file");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err_file);
    let mut child = cmd.spawn().expect("start periode-sse");
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&err_path);
    (code, stderr)
}

fn serve_args<'a>(db: &'a str, listen: &'a str) -> Vec<&'a str> {
    vec!["serve", "--db", db, "--listen", listen]
}

/// Asserts a refused start: non-zero exit, and exactly one line that contains every needle.
fn assert_refused(result: (Option<i32>, String), needles: &[&str]) {
    let (code, stderr) = result;
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} not in {:?}", lines[0]);
    }
}

/// Stops a server with SIGTERM and waits for its clean exit, so its files can be inspected.
fn stop(mut server: Server) -> Arc<TempDir> {
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    server.dir.clone()
}

#[test]
fn a_second_server_on_one_file_is_refused_and_kill_9_frees_it() {
    if common::pg::sqlite_only(
        "the SQLite file's lock (nodes sharing PostgreSQL: tests/cluster.rs)",
    ) {
        return;
    }
    let first = Server::start_with(Options::default());
    let db = first.db.to_str().unwrap().to_string();
    assert_refused(
        run(&serve_args(&db, "127.0.0.1:0"), &[("JWT_SECRET", SECRET)], &first.dir.0),
        &[&db, "in use by another periode-sse server"],
    );
    // token reads the key only: no lock needed while the server runs.
    let (code, stderr) =
        run(&["token", "13", "--db", &db], &[("JWT_SECRET", SECRET)], &first.dir.0);
    assert_eq!(code, Some(0), "{stderr}");
    let dir = first.dir.clone();
    drop(first); // SIGKILL: the kernel drops the lock with the process
    let again = Server::start_with(Options { dir: Some(dir), ..Options::default() });
    let admin = again.admin_token();
    assert_eq!(
        again.send_json("PUT", "/api/admin/users/5", &admin, r#"{"active":true}"#).status,
        200
    );
}

#[test]
fn databases_that_would_not_survive_a_restart_are_refused_before_anything_is_written() {
    let dir = TempDir::new();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        (&["--db", ":memory:"], &[], ":memory:"),
        (&["--db", ""], &[], "empty"),
        (&[], &[("PERIODE_SSE_DB", "")], "empty"),
        (&["--db", "file::memory:"], &[], "file::memory:"),
        (&["--db", "file:x.db?mode=memory&cache=shared"], &[], "URIs"),
        (&["--db", "file:/tmp/x.db?vfs=memdb"], &[], "URIs"),
    ];
    for (args, env, needle) in cases {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut env = env.to_vec();
        env.push(("JWT_SECRET", SECRET));
        assert_refused(run(&all, &env, &dir.0), &[needle]);
        // Without JWT_SECRET a key file would be made beside the "database": not even that.
        assert_refused(run(&all, &env[..env.len() - 1], &dir.0), &[needle]);
        let left: Vec<_> = std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
}

#[test]
fn a_read_only_database_is_refused_even_for_root() {
    if common::pg::sqlite_only("the SQLite file's mode") {
        return;
    }
    let dir = stop(Server::start(&[]));
    let db = common::db_path(&dir.0);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    let before = std::fs::read(&db).unwrap();
    let shown = db.to_str().unwrap();
    let (code, stderr) = run(&serve_args(shown, "127.0.0.1:0"), &[("JWT_SECRET", SECRET)], &dir.0);
    assert_refused((code, stderr.clone()), &[shown]);
    assert!(stderr.contains("read-only") || stderr.contains("cannot be written"), "{stderr}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[test]
fn a_damaged_database_is_refused_with_what_to_do() {
    if common::pg::sqlite_only("the SQLite file's pages") {
        return;
    }
    let dir = stop(Server::start(&[]));
    let db = common::db_path(&dir.0);
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 4096, "the demo database has more than one page");
    for b in bytes[4096..].iter_mut() {
        *b = 0x5A;
    }
    std::fs::write(&db, &bytes).unwrap();
    let shown = db.to_str().unwrap();
    assert_refused(
        run(&serve_args(shown, "127.0.0.1:0"), &[("JWT_SECRET", SECRET)], &dir.0),
        &[shown, "damaged", "backup"],
    );
    std::fs::write(&db, b"this is not an SQLite database, just text, long enough").unwrap();
    assert_refused(
        run(&serve_args(shown, "127.0.0.1:0"), &[("JWT_SECRET", SECRET)], &dir.0),
        &[shown, "damaged"],
    );
}

#[test]
fn a_database_from_a_newer_binary_is_refused_and_an_unversioned_one_migrates() {
    if common::pg::enabled() {
        return a_postgresql_schema_from_a_newer_binary_is_refused();
    }
    let dir = stop(Server::start(&[]));
    let db = common::db_path(&dir.0);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, 1, "a new database records schema version 1");
    conn.pragma_update(None, "user_version", 0).unwrap(); // as databases made before versions
    drop(conn);
    let server = Server::start_with(Options { dir: Some(dir), ..Options::default() });
    server.log.wait_for("schema version 0 -> 1", 0, Duration::from_secs(5));
    let status = server.get(common::STATUS, Some(&server.token(13)));
    assert_eq!(status.json()["currentSpending"], 267000, "{}", status.body);
    let dir = stop(server);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "user_version", 2).unwrap();
    drop(conn);
    let shown = db.to_str().unwrap();
    assert_refused(
        run(&serve_args(shown, "127.0.0.1:0"), &[("JWT_SECRET", SECRET)], &dir.0),
        &[shown, "schema version 2, newer"],
    );
}

/// PostgreSQL's schema version is the `meta` table's `schema_version` (src/pg/schema.rs). It
/// was there from the first PostgreSQL database on, so there is no unversioned one to migrate
/// (version 1 → 2, which added `limits.spent`, is tested in tests/pg_store.rs).
fn a_postgresql_schema_from_a_newer_binary_is_refused() {
    let dir = stop(Server::start(&[]));
    let version = "SELECT value FROM meta WHERE key = 'schema_version'";
    assert_eq!(common::pg::psql_for(&dir.0, version), "2", "a new database records version 2");
    common::pg::psql_for(&dir.0, "UPDATE meta SET value = '3' WHERE key = 'schema_version'");
    let password = "hunter2-schema-pw";
    let uri =
        common::pg::database_for(&dir.0).replacen("postgres@", &format!("postgres:{password}@"), 1);
    let (code, stderr) = run(&serve_args(&uri, "127.0.0.1:0"), &[("JWT_SECRET", SECRET)], &dir.0);
    assert!(!stderr.contains(password), "the password leaked: {stderr}");
    assert_refused(
        (code, stderr),
        &["schema version is \"3\", newer than this binary's 2", "upgrade periode-sse"],
    );
    assert_eq!(common::pg::psql_for(&dir.0, version), "3", "the refusal changed nothing");
    // Back to this binary's version, the same database serves again, its data intact.
    common::pg::psql_for(&dir.0, "UPDATE meta SET value = '2' WHERE key = 'schema_version'");
    let server = Server::start_with(Options { dir: Some(dir), ..Options::default() });
    let status = server.get(common::STATUS, Some(&server.token(13)));
    assert_eq!(status.json()["currentSpending"], 267000, "{}", status.body);
}

/// What a PostgreSQL `--db` adds to the refusals an operator meets at start-up (on a
/// PostgreSQL run only): a server nobody listens for, one that accepts and never answers, a
/// wrong password, a database that does not exist, `sslmode=require` against a server without
/// TLS. Each is one line and a non-zero exit, within seconds, naming the URI with its password
/// masked: a node that cannot use its database does not start half-way.
#[cfg(feature = "postgres")]
#[test]
fn postgresql_start_up_refusals_are_one_line_with_the_password_masked() {
    if !common::pg::enabled() {
        return;
    }
    let dir = TempDir::new();
    let pg = common::pg::cluster();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // The kernel completes its handshakes; nobody ever reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    common::pg::role_with_password("periode_pw", "right-password");
    // A database of its own, so that the node which starts at the end makes its tables there.
    let own = TempDir::new();
    let database = common::pg::database_for(&own.0);
    let as_role =
        |password: &str| database.replacen("postgres@", &format!("periode_pw:{password}@"), 1);
    let cases = [
        (
            format!("postgres://periode:hunter2-pw@127.0.0.1:{closed}/periode?sslmode=disable"),
            "postgres://periode:***@127.0.0.1",
            "Connection refused",
        ),
        (
            format!(
                "postgres://periode:hunter2-pw@127.0.0.1:{silent_port}/periode?sslmode=disable"
            ),
            "postgres://periode:***@127.0.0.1",
            "no answer within",
        ),
        (
            as_role("hunter2-pw"),
            "postgres://periode_pw:***@127.0.0.1",
            "password authentication failed",
        ),
        (
            format!(
                "postgres://postgres:hunter2-pw@127.0.0.1:{}/no_such_db?sslmode=disable",
                pg.port
            ),
            "postgres://postgres:***@127.0.0.1",
            "\"no_such_db\" does not exist",
        ),
        (
            as_role("hunter2-pw").replace("sslmode=disable", "sslmode=require"),
            "postgres://periode_pw:***@127.0.0.1",
            "sslmode=require requires an encrypted connection",
        ),
    ];
    for (uri, shown, why) in &cases {
        let started = Instant::now();
        let (code, stderr) =
            run(&serve_args(uri, "127.0.0.1:0"), &[("JWT_SECRET", SECRET)], &dir.0);
        assert!(started.elapsed() < Duration::from_secs(10), "{uri}: {:?}", started.elapsed());
        assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
        assert_refused((code, stderr), &[shown, why]);
    }
    drop(silent);
    // The right password starts a node, and the log shows it masked too.
    let server = Server::start_with(Options {
        args: &["--db", &as_role("right-password")],
        ..Options::default()
    });
    server.log.wait_for("postgres://periode_pw:***@127.0.0.1", 0, Duration::from_secs(5));
    server.create_user(5); // a write through that role: 200
    let log = server.log.lines().join("\n");
    assert!(!log.contains("right-password"), "the password leaked: {log}");
}

#[test]
fn a_demo_start_that_cannot_bind_changes_nothing() {
    let dir = stop(Server::start_with(Options::default()));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run(
        &["serve", "--demo", "--db", &common::pg::db_arg(&dir.0), "--listen", &port],
        &[("JWT_SECRET", SECRET)],
        &dir.0,
    );
    assert!(matches!(code, Some(c) if c != 0), "{code:?} {stderr}");
    assert!(stderr.contains("cannot listen"), "{stderr}");
    drop(taken);
    let server = Server::start_with(Options { dir: Some(dir), ..Options::default() });
    let r = server.get(common::STATUS, Some(&server.token(13)));
    assert_eq!((r.status, r.json()["error"].as_str()), (403, Some("unknown_user")), "{}", r.body);
}

#[test]
fn the_database_and_its_wal_are_private() {
    if common::pg::sqlite_only("the modes of the SQLite file and its WAL") {
        return;
    }
    let server = Server::start(&[]);
    let r = server.send_json("POST", common::TRANSACTIONS, &server.token(13), r#"{"amount":1}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", server.db.display());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{path}");
    }
}

#[test]
fn a_key_file_others_can_read_is_refused_with_the_chmod() {
    if common::pg::sqlite_only(
        "the <db>.secret key file (PostgreSQL takes JWT_SECRET only: tests/cluster.rs)",
    ) {
        return;
    }
    let dir = TempDir::new();
    let db = common::db_path(&dir.0);
    let key = format!("{}.secret", db.display());
    std::fs::write(&key, format!("{}\n", "k".repeat(43))).unwrap();
    let shown = db.to_str().unwrap();
    for mode in [0o644, 0o604, 0o640] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        assert_refused(
            run(&serve_args(shown, "127.0.0.1:0"), &[], &dir.0),
            &[&key, &format!("chmod 600 {key}")],
        );
        assert_refused(run(&["token", "1", "--db", shown], &[], &dir.0), &["chmod 600"]);
    }
    for (text, needle) in [("", "at least 32"), ("short\n", "at least 32"), ("a b\n", "printable")]
    {
        std::fs::write(&key, text).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_refused(run(&serve_args(shown, "127.0.0.1:0"), &[], &dir.0), &[&key, needle]);
    }
    std::fs::remove_file(&key).unwrap();
    std::fs::create_dir(&key).unwrap();
    assert_refused(
        run(&serve_args(shown, "127.0.0.1:0"), &[], &dir.0),
        &[&key, "not a regular file"],
    );
}

#[test]
fn bad_database_paths_say_what_is_wrong() {
    if common::pg::sqlite_only("SQLite file paths (directories, devices, symlinks)") {
        return;
    }
    let dir = TempDir::new();
    let here = dir.0.to_str().unwrap();
    let missing = format!("{here}/no/such/dir/p.db");
    let env = [("JWT_SECRET", SECRET)];
    assert_refused(run(&serve_args(here, "127.0.0.1:0"), &env, &dir.0), &[here, "is a directory"]);
    assert_refused(
        run(&serve_args(&missing, "127.0.0.1:0"), &env, &dir.0),
        &["does not exist", &format!("{here}/no/such/dir")],
    );
    assert_refused(
        run(&serve_args("/dev/null", "127.0.0.1:0"), &env, &dir.0),
        &["not a regular file"],
    );
    // A symlink to a file elsewhere is followed: the lock and the watch are on the real file.
    let real = dir.0.join("real.db");
    let link = dir.0.join("test.db");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let dir = Arc::new(dir);
    let server = Server::start_with(Options { dir: Some(dir.clone()), ..Options::default() });
    server.create_user(3);
    assert!(real.exists() && std::path::Path::new(&format!("{}-wal", real.display())).exists());
    assert_refused(
        run(&serve_args(real.to_str().unwrap(), "127.0.0.1:0"), &env, &dir.0),
        &["in use by another periode-sse server"],
    );
}
