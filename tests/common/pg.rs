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
