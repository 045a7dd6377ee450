//! Before the load: starting a server when asked to, and creating the users and limits it
//! needs through its admin API. Blocking sockets and a few threads: this is not measured.

use crate::token;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::token::epoch_secs;

pub fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A user token for a measurement (four hours: longer than any run).
pub fn user_token(user: u64, key: &[u8]) -> String {
    token::user(user, 4 * 3600, key)
}

/// An admin token for the set-up calls.
pub fn admin_token(key: &[u8]) -> String {
    token::admin(3600, key)
}

/// Our server, started by the tool on a database of its own.
pub struct Spawned {
    pub child: Child,
    pub log: PathBuf,
}

/// Starts `bin serve` and waits until it accepts connections; returns it and how long that
/// took (spawn to first accepted TCP connect).
pub fn spawn_server(
    bin: &Path,
    db: &Path,
    addr: SocketAddr,
    heartbeat_secs: u64,
    secret: &str,
    log: &Path,
    extra: &[String],
) -> Result<(Spawned, Duration), String> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--db")
        .arg(db)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--heartbeat")
        .arg(heartbeat_secs.to_string())
        .args(extra)
        .env("JWT_SECRET", secret)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let deadline = started + Duration::from_secs(10);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            let took = started.elapsed();
            return Ok((Spawned { child, log: log.to_path_buf() }, took));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the server exited at start ({status}); see {}", log.display()));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the server did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// SIGTERM, then wait (bounded); returns how long the exit took, or `None` if it had to be
/// killed.
pub fn stop_server(spawned: &mut Spawned, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    // SAFETY: kill() sends a signal to our own child's pid.
    unsafe {
        libc::kill(spawned.child.id() as libc::pid_t, libc::SIGTERM);
    }
    while started.elapsed() < limit {
        if let Ok(Some(_)) = spawned.child.try_wait() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = spawned.child.kill();
    let _ = spawned.child.wait();
    None
}

/// A free loopback port (bound and released; good enough for a tool).
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// One blocking keep-alive connection for set-up calls.
struct Caller {
    addr: SocketAddr,
    sock: Option<TcpStream>,
}

impl Caller {
    fn call(&mut self, method: &str, path: &str, token: &str, body: &str) -> Result<u16, String> {
        for attempt in 0..2 {
            if self.sock.is_none() {
                let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                    .map_err(|e| format!("connect: {e}"))?;
                s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                s.set_nodelay(true).ok();
                self.sock = Some(s);
            }
            let Some(sock) = self.sock.as_mut() else {
                continue;
            };
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: density\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if sock.write_all(request.as_bytes()).is_err() {
                self.sock = None;
                continue;
            }
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 4096];
            loop {
                match crate::wire::parse_response(&buf) {
                    Ok(Some((status, _, close))) => {
                        if close {
                            self.sock = None;
                        }
                        return Ok(status);
                    }
                    Ok(None) => {}
                    Err(_) => return Err("malformed response".into()),
                }
                match sock.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            self.sock = None;
            if attempt == 1 {
                return Err("connection closed".into());
            }
        }
        Err("connection closed".into())
    }
}

/// Makes users `users` exist, be active, and hold a limit covering now (so that every
/// transaction sends a notification). Runs `threads` callers at once; bounded by `limit`.
pub fn create_users(
    addr: SocketAddr,
    key: &[u8],
    users: std::ops::RangeInclusive<u64>,
    threads: usize,
    limit: Duration,
) -> Result<(), String> {
    let admin = admin_token(key);
    let now = epoch_ms();
    let start = periode_sse::time::format_rfc3339_ms(now - 86_400_000);
    let end = periode_sse::time::format_rfc3339_ms(now + 30 * 86_400_000);
    let ids: Vec<u64> = users.collect();
    let deadline = Instant::now() + limit;
    let chunks: Vec<Vec<u64>> =
        ids.chunks(ids.len().div_ceil(threads.max(1)).max(1)).map(|c| c.to_vec()).collect();
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let (admin, start, end) = (&admin, &start, &end);
                scope.spawn(move || {
                    let mut caller = Caller { addr, sock: None };
                    for id in chunk {
                        if Instant::now() >= deadline {
                            return Err("set-up took too long".to_string());
                        }
                        let status = caller.call(
                            "PUT",
                            &format!("/api/admin/users/{id}"),
                            admin,
                            r#"{"active":true}"#,
                        )?;
                        if status != 200 {
                            return Err(format!("PUT user {id}: HTTP {status}"));
                        }
                        let body = format!(
                            concat!(
                                r#"{{"userId":{},"maxLimit":1000000000000,"alertPercentage":85,"#,
                                r#""periodeStart":"{}","periodeEnd":"{}"}}"#
                            ),
                            id, start, end
                        );
                        let status = caller.call("PUT", "/api/periode-limit", admin, &body)?;
                        if status != 200 {
                            return Err(format!("PUT limit {id}: HTTP {status}"));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("set-up thread panicked".into())))
            .collect()
    });
    results.into_iter().collect()
}
