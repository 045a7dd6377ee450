//! `periode-sse backup` against the real binary (issue 13): consistent while a server writes,
//! private, never overwriting, carrying its key; and a restore that serves what was copied.

mod common;

use common::{JsonBody, Options, Server, TempDir, BIN};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

fn backup(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("backup")
        .args(args)
        .env_remove("JWT_SECRET")
        .env_remove("PERIODE_SSE_DB")
        .stdin(Stdio::null())
        .output()
        .expect("run periode-sse backup")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn key_of(db: &Path) -> String {
    std::fs::read_to_string(format!("{}.secret", db.display())).unwrap().trim().to_string()
}

fn token(user: i64, key: &str) -> String {
    common::sign_with(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &format!(r#"{{"sub":"{user}","exp":{}}}"#, common::now_secs() + 3600),
        key.as_bytes(),
    )
}

#[test]
fn a_backup_taken_while_writes_go_on_restores_to_a_working_server() {
    if common::pg::sqlite_only(
        "a copy of the SQLite file (a PostgreSQL --db is refused: the test below)",
    ) {
        return;
    }
    // No JWT_SECRET: the server generates <db>.secret, which the backup must carry.
    let server =
        Server::start_with(Options { args: &["--demo"], secret: None, ..Options::default() });
    let key = key_of(&server.db);
    let user = token(13, &key);
    let post = |amount: i64| {
        let r = server.send_json(
            "POST",
            common::TRANSACTIONS,
            &user,
            &format!(r#"{{"amount":{amount}}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    };
    post(1000);
    // Writers keep going while the backup runs.
    let writer = {
        let addr = server.addr;
        let user = user.clone();
        std::thread::spawn(move || {
            for _ in 0..50 {
                let body = r#"{"amount":1}"#;
                let r = common::request(
                    addr,
                    &format!(
                        "POST {} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {user}\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        common::TRANSACTIONS,
                        body.len()
                    ),
                );
                assert_eq!(r.status, 201);
            }
        })
    };
    let out_dir = TempDir::new();
    let dest = out_dir.0.join("copy.db");
    let out = backup(&[dest.to_str().unwrap(), "--db", server.db.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    writer.join().unwrap();
    assert_eq!(mode(&dest), 0o600);
    let dest_key = Path::new(&format!("{}.secret", dest.display())).to_path_buf();
    assert_eq!(mode(&dest_key), 0o600);
    assert_eq!(key_of(&dest), key);
    let leftovers: Vec<_> = std::fs::read_dir(&out_dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers.len(), 2, "only the copy and its key: {leftovers:?}");

    // Never overwrites, and leaves what is there alone.
    let before = std::fs::read(&dest).unwrap();
    let again = backup(&[dest.to_str().unwrap(), "--db", server.db.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&dest).unwrap(), before);

    // Restore: the copy and its key become a new server's database; tokens still work.
    let spent_in_copy = {
        let conn = rusqlite::Connection::open(&dest).unwrap();
        let n: i64 = conn
            .query_row(
                "SELECT COALESCE(SUM(amount),0) FROM transactions WHERE user_id = 13",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, 1);
        n
    };
    assert!((268_000..=268_050).contains(&spent_in_copy), "{spent_in_copy}");
    let restored_dir = Arc::new(TempDir::new());
    std::fs::copy(&dest, common::db_path(&restored_dir.0)).unwrap();
    std::fs::copy(&dest_key, format!("{}.secret", common::db_path(&restored_dir.0).display()))
        .unwrap();
    std::fs::set_permissions(
        format!("{}.secret", common::db_path(&restored_dir.0).display()),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let restored =
        Server::start_with(Options { dir: Some(restored_dir), secret: None, ..Options::default() });
    let status = restored.get(common::STATUS, Some(&user));
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.json()["currentSpending"], spent_in_copy);
}

#[test]
fn backup_refuses_what_it_cannot_do_well() {
    let dir = TempDir::new();
    let missing = common::db_path(&dir.0);
    let dest = dir.0.join("b.db");
    let cases: [(&[&str], &str); 5] = [
        (&[dest.to_str().unwrap(), "--db", missing.to_str().unwrap()], "no database file"),
        (&[dest.to_str().unwrap(), "--db", ":memory:"], ":memory:"),
        (&[":memory:", "--db", missing.to_str().unwrap()], ":memory:"),
        (&["/nonexistent/dir/b.db", "--db", missing.to_str().unwrap()], ""),
        (&[], "needs a DEST"),
    ];
    for (args, needle) in cases {
        let out = backup(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(needle), "{args:?}");
    }
    assert!(!dest.exists() && !missing.exists());
}

/// `backup` copies a SQLite file: a PostgreSQL `--db` is refused in one line that says what
/// to use instead, never shows the URI's password, and writes nothing. On a PostgreSQL run
/// the URI is a live server's database; on SQLite (even without the feature) one nobody
/// listens for: the answer must not depend on it.
#[test]
fn a_postgresql_database_is_refused_with_what_to_use_instead() {
    let password = "hunter2-backup-pw";
    let server = common::pg::enabled().then(|| Server::start(&[]));
    let uri = match &server {
        Some(server) => common::pg::database_for(&server.dir.0).replacen(
            "postgres@",
            &format!("postgres:{password}@"),
            1,
        ),
        None => format!("postgres://periode:{password}@127.0.0.1:1/periode"),
    };
    let out_dir = TempDir::new();
    let dest = out_dir.0.join("copy.db");
    let out = backup(&[dest.to_str().unwrap(), "--db", &uri]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("copies a SQLite database file") && err.contains("pg_dump"), "{err}");
    assert!(!err.contains(password), "the password leaked: {err}");
    let left: Vec<_> = std::fs::read_dir(&out_dir.0).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "{left:?}");
}
