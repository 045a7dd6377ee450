//! Faults of the disk and the file system while the server runs (SPEC §5, issue 12 items 3
//! and 9), against the real binary: database files deleted or replaced, a full disk. The
//! promise tested is the one that matters: no write is acknowledged (`201`) that a restart
//! would lose; the stream stays open; writes come back when the disk does.
//!
//! The exact status codes (`503 storage_unavailable`, `507 insufficient_storage`) are wired
//! in `api.rs`/`server/commit.rs` by the lead; until then the server answers `500`, and the
//! tests that check the codes are `#[ignore]`d with that reason.

mod common;

use common::{JsonBody, Options, Server, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn post(server: &Server, amount: i64) -> common::Response {
    server.send_json(
        "POST",
        common::TRANSACTIONS,
        &server.token(13),
        &format!(r#"{{"amount":{amount}}}"#),
    )
}

fn remove_db_files(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

fn after_deletion(replace: bool) -> (Server, Vec<common::Response>) {
    let server = Server::start(&[]);
    assert_eq!(post(&server, 1).status, 201);
    let mut stream = server.open_stream(&server.token(13));
    assert!(stream.next_named("connected", Duration::from_secs(5)).is_some());
    remove_db_files(&server.db);
    if replace {
        std::fs::write(&server.db, b"").unwrap();
    }
    let answers: Vec<_> = (0..3).map(|i| post(&server, 10 + i)).collect();
    // The stream is still served: a health read goes through and counts it.
    assert_eq!(server.health(&server.token(13))["connectedClients"], 1);
    (server, answers)
}

#[test]
fn no_write_is_acknowledged_into_deleted_or_replaced_files() {
    if common::pg::sqlite_only("the SQLite files deleted or replaced under the server") {
        return;
    }
    for replace in [false, true] {
        let (server, answers) = after_deletion(replace);
        for r in &answers {
            assert_ne!(r.status, 201, "acknowledged into a removed file: {}", r.body);
            assert!(r.status >= 500, "{} {}", r.status, r.body);
        }
        let why = if replace { "was replaced" } else { "was deleted" };
        server.log.wait_for(why, 0, Duration::from_secs(5));
        // The store says it once; the commit's own failure line (server/commit.rs) repeats it
        // per write until the lead's wiring, checked in the ignored test below.
        let said = server
            .log
            .lines()
            .iter()
            .filter(|l| l.contains(why) && l.contains("[periode_sse::store"))
            .count();
        assert_eq!(said, 1, "logged once: {:?}", server.log.lines());
    }
}

#[test]
fn writes_into_deleted_files_answer_503_storage_unavailable() {
    if common::pg::sqlite_only(
        "the SQLite files deleted under the server (PostgreSQL stopped: tests/cluster_faults.rs)",
    ) {
        return;
    }
    let (server, answers) = after_deletion(false);
    for r in answers {
        assert_eq!((r.status, r.json()["error"].as_str()), (503, Some("storage_unavailable")));
    }
    let said = server.log.lines().iter().filter(|l| l.contains("was deleted")).count();
    assert_eq!(said, 1, "logged once in all: {:?}", server.log.lines());
}

/// A small tmpfs mounted for one test, unmounted when dropped; `None` where mounting is not
/// allowed (not root, no mount namespace rights): the test then says so and passes.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, bytes: u64) -> Option<SmallDisk> {
        let path = dir.join("disk");
        std::fs::create_dir_all(&path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&path)
            .status()
            .ok()?
            .success();
        ok.then_some(SmallDisk(path))
    }

    /// Fills the disk with one file until writing fails; returns it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        for _ in 0..100_000 {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn on_a_full_disk(check: impl FnOnce(&Server, Vec<common::Response>)) {
    let dir = Arc::new(TempDir::new());
    let Some(disk) = SmallDisk::mount(&dir.0, 4 << 20) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    // The harness puts the database at <dir>/test.db: make that a link into the small disk.
    std::os::unix::fs::symlink(disk.0.join("test.db"), common::db_path(&dir.0)).unwrap();
    let server =
        Server::start_with(Options { args: &["--demo"], dir: Some(dir), ..Options::default() });
    assert_eq!(post(&server, 1).status, 201);
    let filler = disk.fill();
    // Big descriptions so the WAL must grow past what is preallocated.
    let big = "d".repeat(200);
    let answers: Vec<_> = (0..40)
        .map(|_| {
            server.send_json(
                "POST",
                common::TRANSACTIONS,
                &server.token(13),
                &format!(r#"{{"amount":1,"description":"{big}"}}"#),
            )
        })
        .collect();
    check(&server, answers);
    std::fs::remove_file(filler).unwrap();
    assert_eq!(post(&server, 2).status, 201, "writes come back with the space");
    drop(server);
    drop(disk);
}

#[test]
fn a_full_disk_refuses_writes_cleanly_and_recovers() {
    if common::pg::sqlite_only("a full tmpfs under the SQLite file") {
        return;
    }
    on_a_full_disk(|server, answers| {
        let refused: Vec<_> = answers.iter().filter(|r| r.status != 201).collect();
        assert!(!refused.is_empty(), "the disk never filled");
        for r in refused {
            assert!(r.status >= 500, "{} {}", r.status, r.body);
        }
        let lines = server.log.lines();
        assert!(!lines.iter().any(|l| l.contains("rollback failed")), "{lines:?}");
    });
}

#[test]
fn a_full_disk_answers_507_insufficient_storage() {
    if common::pg::sqlite_only("a full tmpfs under the SQLite file") {
        return;
    }
    on_a_full_disk(|_server, answers| {
        for r in answers.iter().filter(|r| r.status != 201) {
            assert!(
                matches!(
                    (r.status, r.json()["error"].as_str()),
                    (507, Some("insufficient_storage")) | (503, Some("storage_unavailable"))
                ),
                "{} {}",
                r.status,
                r.body
            );
        }
    });
}

#[test]
fn a_start_on_a_full_disk_is_refused_with_the_reason() {
    if common::pg::sqlite_only("a full tmpfs under the SQLite file") {
        return;
    }
    let dir = TempDir::new();
    let Some(disk) = SmallDisk::mount(&dir.0, 1 << 20) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let filler = disk.fill();
    let db = disk.0.join("p.db");
    let mut child = Command::new(common::BIN)
        .args(["--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .env("JWT_SECRET", common::SECRET)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A start that should have been refused must not hang the test.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("full") && err.contains("p.db"), "{err}");
    std::fs::remove_file(filler).unwrap();
}
