//! A throwaway PostgreSQL for the `pg_*` tests: Debian's server binaries, a data directory in
//! a temp dir owned by the `postgres` user, trust authentication, a free port on 127.0.0.1,
//! the unix socket in the temp dir. Started as a child process (the postmaster itself, under
//! the `postgres` uid), stopped by pid in `Drop`.
//!
//! `initdb` runs once per machine and PostgreSQL version: its result is kept as a template
//! (`/tmp/periode-sse-pg-template-<version>`) and copied for each cluster, so a test pays a
//! copy and a start (well under a second), not an `initdb`.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const START_DEADLINE: Duration = Duration::from_secs(30);

/// The directory of `initdb`, `postgres`, `psql`: `PG_BIN`, or the newest Debian package's.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|v: &u32| {
                    Path::new(&format!("/usr/lib/postgresql/{v}/bin/postgres")).exists()
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort_unstable();
    let version =
        versions.last().copied().expect("no /usr/lib/postgresql/N/bin: run scripts/pg-test.sh");
    PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"))
}

/// The uid and gid to run the server as: `postgres` when we are root (the server refuses to
/// run as root), else ourselves.
fn server_ids() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "postgres"]).output().expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("no postgres user: install postgresql")
    };
    Some((id("-u"), id("-g")))
}

fn as_server(command: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = server_ids() {
        command.uid(uid).gid(gid);
    }
    command.env_remove("PGDATA").env("LC_ALL", "C")
}

fn chown_to_server(path: &Path) {
    if let Some((uid, gid)) = server_ids() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The initdb'd template for this version, made once.
fn template() -> &'static PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let bin = bin_dir();
        let version = bin
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|v| v.to_str())
            .unwrap_or("x")
            .to_string();
        let template = PathBuf::from(format!("/tmp/periode-sse-pg-template-{version}"));
        if template.join("PG_VERSION").exists() {
            return template;
        }
        let building =
            PathBuf::from(format!("/tmp/periode-sse-pg-template-{version}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&building);
        std::fs::create_dir_all(&building).expect("mkdir");
        chown_to_server(&building);
        let status = as_server(&mut Command::new(bin.join("initdb")))
            .args(["-D"])
            .arg(&building)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        // Another test process may have won the race; either template will do.
        if std::fs::rename(&building, &template).is_err() {
            let _ = std::fs::remove_dir_all(&building);
        }
        template
    })
}

pub struct Pg {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Pg {
    /// A fresh cluster, started.
    pub fn start() -> Pg {
        Pg::start_with(Vec::new(), |_| {})
    }

    /// A fresh cluster with TLS on: a CA and a server certificate for 127.0.0.1 made with
    /// `openssl`. `None` when there is no `openssl` on this machine.
    pub fn start_with_tls() -> Option<Pg> {
        if Command::new("openssl").arg("version").output().is_err() {
            return None;
        }
        let options = vec![
            "ssl=on".to_string(),
            "ssl_cert_file=server.crt".to_string(),
            "ssl_key_file=server.key".to_string(),
        ];
        Some(Pg::start_with(options, make_certificates))
    }

    fn start_with(extra: Vec<String>, prepare: impl FnOnce(&Path)) -> Pg {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("periode-sse-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        chown_to_server(&dir);
        let data = dir.join("data");
        let status = Command::new("cp").arg("-a").arg(template()).arg(&data).status().expect("cp");
        assert!(status.success(), "copying the template failed");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        prepare(&data);
        let mut pg = Pg { dir, port: free_port(), child: None, extra };
        pg.run();
        pg
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts the server (again, on the same port) and waits until it accepts queries.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut command = Command::new(bin_dir().join("postgres"));
        as_server(&mut command)
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .args(["-c", "fsync=off", "-c", "max_connections=60", "-c", "shared_buffers=16MB"])
            .args(["-c", "log_min_messages=fatal"]);
        for option in &self.extra {
            command.args(["-c", option]);
        }
        let log = std::fs::File::create(self.dir.join("server.log")).expect("log file");
        let child = command.stdout(Stdio::null()).stderr(log).spawn().expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if self.try_psql("postgres", "SELECT 1").is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log =
                        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                    panic!("postgres exited with {status}: {log}");
                }
            }
            assert!(Instant::now() < deadline, "postgres did not start in {START_DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fast shutdown (SIGINT) by pid, waited for; SIGKILL if it takes more than 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill with a pid of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// A URI for `db` over TCP, without TLS (and `extra` query parameters).
    pub fn uri(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable", self.port)
    }

    /// A fresh database for one test.
    pub fn create_db(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.uri(name)
    }

    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(bin_dir().join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "2")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql).unwrap_or_else(|e| panic!("psql {sql:?}: {e}"))
    }

    /// Ends every backend whose `application_name` is `application` (as a killed
    /// connection would end); how many were ended.
    pub fn terminate(&self, db: &str, application: &str) -> usize {
        let sql = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{db}' AND application_name = '{application}'"
        );
        self.psql("postgres", &sql).parse().unwrap_or(0)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA, and a server certificate for 127.0.0.1 signed by it, in the data directory (the key
/// readable by the server only, as PostgreSQL insists).
fn make_certificates(data: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl {args:?} failed");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=periode test CA",
        "-keyout",
        "ca.key",
        "-out",
        "root.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        data.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "root.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    for file in ["server.key", "server.crt", "root.crt"] {
        let path = data.join(file);
        chown_to_server(&path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}
