//! The integration tests against PostgreSQL: with `PERIODE_SSE_TEST_PG=1` (and the binary
//! built with `--features postgres`), `Server` starts on a throwaway PostgreSQL instead of a
//! SQLite file: one cluster per test binary, started on first use and stopped by pid when the
//! binary exits, and a fresh database per server directory (a restart on the same directory
//! finds its database again, as it would find its SQLite file). `scripts/pg-test.sh` runs the
//! suite once this way.

#[path = "../pg_harness/mod.rs"]
pub mod pg_harness;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn enabled() -> bool {
    std::env::var_os("PERIODE_SSE_TEST_PG").is_some_and(|v| v == "1")
}

/// The URI of the database that belongs to `dir`, created the first time it is asked for.
pub fn database_for(dir: &Path) -> String {
    let cluster = cluster();
    let marker = dir.join("pg-database");
    if let Ok(name) = std::fs::read_to_string(&marker) {
        return cluster.uri(name.trim());
    }
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    cluster.psql("postgres", &format!("CREATE DATABASE {name}"));
    std::fs::write(&marker, &name).expect("write the database marker");
    cluster.uri(&name)
}

/// The test binary's one cluster.
pub fn cluster() -> &'static pg_harness::Pg {
    static CLUSTER: OnceLock<pg_harness::Pg> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let pg = pg_harness::Pg::start();
        let _ = STOP.set((pg.pid().unwrap_or(0), pg.dir.clone()));
        // SAFETY: registers a plain `extern "C"` function; statics are never dropped, so the
        // cluster is stopped when the test binary exits instead.
        unsafe { libc::atexit(stop_cluster) };
        pg
    })
}

static STOP: OnceLock<(u32, PathBuf)> = OnceLock::new();

extern "C" fn stop_cluster() {
    let Some((pid, dir)) = STOP.get() else { return };
    if *pid != 0 {
        let pid = *pid as libc::pid_t;
        // SAFETY: signals and reaps our own child by pid.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        // SAFETY: as above; WNOHANG never blocks.
        while unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } == 0
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// For a test whose subject is the SQLite file itself (its modes, its lock, its `.secret`, a
/// disk under it, a copy of it): true on a PostgreSQL run, after one line saying why, and the
/// test returns. The line goes straight to stderr, past the test harness's capture, so that a
/// run shows what it did not test.
pub fn sqlite_only(why: &str) -> bool {
    if !enabled() {
        return false;
    }
    let current = std::thread::current();
    let test = current.name().filter(|n| *n != "main").unwrap_or("a test");
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped on PostgreSQL: {test}: {why}");
    true
}

/// The `--db` the harness gives a server in `dir`: its PostgreSQL URI on a PostgreSQL run,
/// else the SQLite file's path.
pub fn db_arg(dir: &Path) -> String {
    if enabled() {
        database_for(dir)
    } else {
        super::db_path(dir).to_string_lossy().into_owned()
    }
}

/// A login role that must give `password` over TCP (SCRAM; every other role keeps trust) on
/// the binary's cluster, for the start-up refusal a wrong password gives: call it once per
/// name. A superuser, so that a node logged in as it can make its tables in a database the
/// harness made (PostgreSQL 15 grants no CREATE on `public` to others). Returns once the
/// server enforces the password.
pub fn role_with_password(name: &str, password: &str) {
    let pg = cluster();
    pg.psql(
        "postgres",
        &format!(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE {name} LOGIN SUPERUSER PASSWORD '{password}'"
        ),
    );
    let hba = pg.data().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    // The first matching line wins: this one before the template's trust lines.
    let rules = format!("host all {name} 127.0.0.1/32 scram-sha-256\n{rules}");
    std::fs::write(&hba, rules).expect("write pg_hba.conf");
    pg.psql("postgres", "SELECT pg_reload_conf()");
    // The reload is a signal to the postmaster: wait until a wrong password is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let refused = !std::process::Command::new(pg_harness::bin_dir().join("psql"))
            .args(["-X", "-A", "-t", "-q", "-h", "127.0.0.1", "-p", &pg.port.to_string()])
            .args(["-U", name, "-d", "postgres", "-w", "-c", "SELECT 1"])
            .env("PGPASSWORD", "not-the-password")
            .env("PGCONNECT_TIMEOUT", "2")
            .output()
            .expect("run psql")
            .status
            .success();
        if refused {
            return;
        }
        assert!(Instant::now() < deadline, "pg_hba.conf not reloaded within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `sql` on the database that belongs to `dir` (see `database_for`); psql's output.
pub fn psql_for(dir: &Path, sql: &str) -> String {
    let uri = database_for(dir);
    let name = uri.rsplit('/').next().and_then(|tail| tail.split('?').next()).unwrap_or("");
    cluster().psql(name, sql)
}
