//! The command line and environment (SPEC §1) turned into a `Command`.
//!
//! Parsing is pure: arguments and an environment lookup go in, a value or an error a user can
//! act on comes out. Flags win over the environment. Nothing here opens files or sockets.

use crate::domain::{Role, UserId};
use std::ffi::OsString;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8989";
pub const DEFAULT_DB: &str = "./periode-sse.db";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub heartbeat_secs: u64,
    pub retry_ms: u64,
    pub max_conns_per_user: usize,
    /// `None`: derived from the open-files limit at start-up.
    pub max_conns: Option<usize>,
    pub cors: Cors,
    pub demo: bool,
    /// The most verbose level `log_filter` lets through.
    pub log_level: log::LevelFilter,
    /// `--access-log`: one info line per request.
    pub access_log: bool,
    /// `--metrics-listen ADDR`: a second, unauthenticated listener for `GET /metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// `--log-level` or `RUST_LOG`: a level, or `RUST_LOG`-style `target=level` filters.
    pub log_filter: crate::logging::Filter,
}

/// Which browser origins may read our answers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cors {
    pub any: bool,
    pub origins: Vec<String>,
}

impl Cors {
    pub fn is_enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    pub fn allows(&self, origin: &[u8]) -> bool {
        self.any || self.origins.iter().any(|o| o.as_bytes() == origin)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenArgs {
    pub user: UserId,
    pub role: Role,
    pub ttl_secs: i64,
    pub db: PathBuf,
}

/// `periode-sse backup DEST [--db PATH]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupArgs {
    pub dest: PathBuf,
    pub db: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Serve(Config),
    Token(TokenArgs),
    Backup(BackupArgs),
    Help,
    /// `token --help`: the token command's own usage.
    TokenHelp,
    /// `backup --help`.
    BackupHelp,
    Version,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\nRun `periode-sse --help` for the options.", self.0)
    }
}

impl From<lexopt::Error> for ConfigError {
    fn from(e: lexopt::Error) -> ConfigError {
        ConfigError(e.to_string())
    }
}

pub const USAGE: &str = "\
periode-sse: pushes each user's spending-limit status to their apps over Server-Sent Events

Usage:
  periode-sse [serve] [OPTIONS]
  periode-sse token USER_ID [--role user|admin] [--ttl SECS] [--db PATH]
  periode-sse backup DEST [--db PATH]

Serve options:
  --listen ADDR              address to bind, e.g. 0.0.0.0:8989, [::1]:8989, localhost:8989
                             [env PERIODE_SSE_LISTEN] (default 127.0.0.1:8989)
  --db PATH                  SQLite file, created when missing [env PERIODE_SSE_DB]
                             (default ./periode-sse.db); or postgres://USER@HOST/DB?… to run
                             as one of several nodes on PostgreSQL (build --features postgres)
  --heartbeat SECS           heartbeat period of every stream (default 30)
  --retry-ms MS              `retry:` sent to clients at connect (default 5000)
  --max-conns-per-user N     open streams one user may hold (default 100)
  --max-conns N              open connections in all (default: from the open-files limit)
  --cors-origin ORIGIN       allowed browser origin; repeat or separate with commas; * = any
  --demo                     make sure demo user 13 exists with a limit and transactions
  --log-level FILTER         error, warn, info, debug or trace, or RUST_LOG-style filters
                             such as info,periode_sse=debug [env RUST_LOG] (default info)
  --access-log               log one line per request (method, path, status, bytes, time, user)
  --metrics-listen ADDR      also serve GET /metrics, unauthenticated, on ADDR (keep it private)

The HS256 key is JWT_SECRET (at least 32 bytes) when set, otherwise a random key kept in
<db>.secret, which `periode-sse token` reads too; on PostgreSQL JWT_SECRET is required. `periode-sse token --help` and
`periode-sse backup --help` describe those commands.
";

pub const TOKEN_USAGE: &str = "\
periode-sse token: prints a signed HS256 JWT for curl and scripts

Usage:
  periode-sse token USER_ID [--role user|admin] [--ttl SECS] [--db PATH]

  USER_ID                    the token's subject (`sub`), a non-negative integer
  --role user|admin          admin tokens may write for any user and read /metrics
                             (default user; the operator's is `token 0 --role admin`)
  --ttl SECS                 lifetime in seconds (default 3600)
  --db PATH                  the server's database, whose <db>.secret holds the key
                             [env PERIODE_SSE_DB] (default ./periode-sse.db)

The key is JWT_SECRET when set, otherwise <db>.secret. token never creates a key: start the
server once (it generates <db>.secret), then run token with the same --db.
";

pub const BACKUP_USAGE: &str = "\
periode-sse backup: a consistent copy of the database, safe while the server runs

Usage:
  periode-sse backup DEST [--db PATH]

  DEST                       the file to write; never overwritten (an existing DEST is an error)
  --db PATH                  the database to copy [env PERIODE_SSE_DB] (default ./periode-sse.db)

The copy is made with SQLite's VACUUM INTO, fsynced, and created 0600. The key beside the
database (<db>.secret) is copied to DEST.secret (0600): tokens need it after a restore.
";

pub fn parse_args(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut first = true;
    let mut listen: Option<String> = None;
    let mut db: Option<PathBuf> = None;
    let mut heartbeat_secs = 30;
    let mut retry_ms = 5000;
    let mut max_conns_per_user = 100;
    let mut max_conns = None;
    let mut cors = Cors::default();
    let mut demo = false;
    let mut log_level: Option<String> = None;
    let (mut access_log, mut metrics_listen) = (false, None);
    while let Some(arg) = parser.next()? {
        use lexopt::prelude::*;
        match arg {
            Value(v) if first && v == "serve" => {}
            Value(v) if first && v == "token" => return parse_token(parser, &env),
            Value(v) if first && v == "backup" => return parse_backup(parser, &env),
            Long("help") | Short('h') => return Ok(Command::Help),
            Long("version") | Short('V') => return Ok(Command::Version),
            Long("listen") => listen = Some(string(parser.value()?)?),
            Long("db") => db = Some(parser.value()?.into()),
            Long("heartbeat") => heartbeat_secs = number(&mut parser, "--heartbeat", 1, 86_400)?,
            Long("retry-ms") => retry_ms = number(&mut parser, "--retry-ms", 0, 3_600_000)?,
            Long("max-conns-per-user") => {
                max_conns_per_user =
                    number(&mut parser, "--max-conns-per-user", 1, 1 << 30)? as usize
            }
            Long("max-conns") => {
                max_conns = Some(number(&mut parser, "--max-conns", 1, 1 << 30)? as usize)
            }
            Long("cors-origin") => {
                for origin in string(parser.value()?)?.split(',') {
                    let origin = origin.trim();
                    match origin {
                        "" => {}
                        "*" => cors.any = true,
                        o => cors.origins.push(o.trim_end_matches('/').to_string()),
                    }
                }
            }
            Long("demo") => demo = true,
            Long("log-level") => log_level = Some(string(parser.value()?)?),
            Long("access-log") => access_log = true,
            Long("metrics-listen") => {
                let text = string(parser.value()?)?;
                metrics_listen = Some(text.parse().map_err(|_| {
                    ConfigError(format!(
                        "--metrics-listen {text:?} is not an address like 127.0.0.1:9898"
                    ))
                })?)
            }
            other => return Err(other.unexpected().into()),
        }
        first = false;
    }
    let listen_text = listen.or_else(|| env("PERIODE_SSE_LISTEN")).unwrap_or(DEFAULT_LISTEN.into());
    let listen = parse_listen(&listen_text)?;
    let (log_filter, source) = match log_level {
        Some(text) => (Some(text), "--log-level"),
        None => (env("RUST_LOG"), "RUST_LOG"),
    };
    let log_filter = match log_filter {
        Some(text) => crate::logging::Filter::parse(&text)
            .map_err(|e| ConfigError(format!("{source} {text:?}: {e}")))?,
        None => crate::logging::Filter::level(log::LevelFilter::Info),
    };
    let log_level = log_filter.max();
    Ok(Command::Serve(Config {
        listen,
        db: db_path(db, &env),
        heartbeat_secs,
        retry_ms,
        max_conns_per_user,
        max_conns,
        cors,
        demo,
        log_level,
        access_log,
        metrics_listen,
        log_filter,
    }))
}

/// An address to bind: `IP:PORT`, `[IPv6]:PORT`, or `HOST:PORT` with a host name resolved
/// here, once, at start-up (the first address the resolver gives; `localhost` is in
/// /etc/hosts, so no network is asked).
fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let bad = |why: String| {
        ConfigError(format!(
            "--listen {text:?} is not an address to bind ({why}); use one like 127.0.0.1:8989, \
             [::1]:8989 or localhost:8989"
        ))
    };
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            match text.to_socket_addrs() {
                Ok(mut addrs) => addrs.next().ok_or_else(|| bad(format!("{host} has no address"))),
                Err(e) => Err(bad(format!("cannot resolve {host}: {e}"))),
            }
        }
        _ => Err(bad("not HOST:PORT".into())),
    }
}

fn parse_token(
    mut parser: lexopt::Parser,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError> {
    use lexopt::prelude::*;
    let mut user = None;
    let mut role = Role::User;
    let mut ttl_secs = 3600;
    let mut db = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Value(v) if user.is_none() => {
                let text = string(v)?;
                let id = text.parse::<i64>().ok().filter(|id| *id >= 0).ok_or_else(|| {
                    ConfigError(format!("USER_ID {text:?} is not a non-negative integer"))
                })?;
                user = Some(UserId(id));
            }
            Long("role") => {
                role = match string(parser.value()?)?.as_str() {
                    "user" => Role::User,
                    "admin" => Role::Admin,
                    other => {
                        return Err(ConfigError(format!("--role {other:?}: use user or admin")))
                    }
                }
            }
            Long("ttl") => ttl_secs = number(&mut parser, "--ttl", 1, 10 * 365 * 86_400)? as i64,
            Long("db") => db = Some(parser.value()?.into()),
            Long("help") | Short('h') => return Ok(Command::TokenHelp),
            other => return Err(other.unexpected().into()),
        }
    }
    let user = user
        .ok_or_else(|| ConfigError("token needs a USER_ID, e.g. `periode-sse token 13`".into()))?;
    Ok(Command::Token(TokenArgs { user, role, ttl_secs, db: db_path(db, env) }))
}

fn parse_backup(
    mut parser: lexopt::Parser,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError> {
    use lexopt::prelude::*;
    let mut dest: Option<PathBuf> = None;
    let mut db = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Value(v) if dest.is_none() => dest = Some(v.into()),
            Long("db") => db = Some(parser.value()?.into()),
            Long("help") | Short('h') => return Ok(Command::BackupHelp),
            other => return Err(other.unexpected().into()),
        }
    }
    let dest = dest.ok_or_else(|| {
        ConfigError("backup needs a DEST file, e.g. `periode-sse backup /backups/p.db`".into())
    })?;
    Ok(Command::Backup(BackupArgs { dest, db: db_path(db, env) }))
}

fn db_path(flag: Option<PathBuf>, env: &impl Fn(&str) -> Option<String>) -> PathBuf {
    flag.or_else(|| env("PERIODE_SSE_DB").map(PathBuf::from)).unwrap_or_else(|| DEFAULT_DB.into())
}

fn string(value: OsString) -> Result<String, ConfigError> {
    value.into_string().map_err(|v| ConfigError(format!("{v:?} is not valid UTF-8")))
}

fn number(parser: &mut lexopt::Parser, flag: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    let text = string(parser.value()?)?;
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError(format!(
            "{flag} {text:?}: expected a whole number from {min} to {max}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Command, ConfigError> {
        let env: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse_args(args.iter().map(OsString::from), move |k| {
            env.iter().find(|(name, _)| name == k).map(|(_, v)| v.clone())
        })
    }

    fn serve(args: &[&str], env: &[(&str, &str)]) -> Config {
        match parse(args, env) {
            Ok(Command::Serve(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = serve(&[], &[]);
        assert_eq!(c.listen, "127.0.0.1:8989".parse().unwrap());
        assert_eq!(c.db, PathBuf::from("./periode-sse.db"));
        assert_eq!((c.heartbeat_secs, c.retry_ms, c.max_conns_per_user), (30, 5000, 100));
        assert_eq!(c.max_conns, None);
        assert!(!c.cors.is_enabled() && !c.demo);
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert_eq!(serve(&["serve"], &[]), c);
    }

    #[test]
    fn flags_win_over_env() {
        let env = [
            ("PERIODE_SSE_LISTEN", "127.0.0.1:1"),
            ("PERIODE_SSE_DB", "/e.db"),
            ("RUST_LOG", "debug"),
        ];
        let c = serve(&[], &env);
        assert_eq!(c.listen.port(), 1);
        assert_eq!(c.db, PathBuf::from("/e.db"));
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        let c = serve(&["--listen", "127.0.0.1:2", "--db", "/f.db", "--log-level", "warn"], &env);
        assert_eq!(
            (c.listen.port(), c.db, c.log_level),
            (2, PathBuf::from("/f.db"), log::LevelFilter::Warn)
        );
    }

    #[test]
    fn every_serve_option() {
        let c = serve(
            &[
                "--heartbeat",
                "1",
                "--retry-ms",
                "100",
                "--max-conns-per-user",
                "3",
                "--max-conns",
                "50",
                "--cors-origin",
                "http://a, http://b/",
                "--cors-origin",
                "http://c",
                "--demo",
            ],
            &[],
        );
        assert_eq!(
            (c.heartbeat_secs, c.retry_ms, c.max_conns_per_user, c.max_conns),
            (1, 100, 3, Some(50))
        );
        assert_eq!(c.cors.origins, vec!["http://a", "http://b", "http://c"]);
        assert!(c.cors.allows(b"http://b") && !c.cors.allows(b"http://d") && !c.cors.any);
        assert!(c.demo);
        assert!(serve(&["--cors-origin", "*"], &[]).cors.allows(b"http://anything"));
    }

    #[test]
    fn token_command() {
        let got = parse(&["token", "13"], &[("PERIODE_SSE_DB", "/x.db")]).unwrap();
        assert_eq!(
            got,
            Command::Token(TokenArgs {
                user: UserId(13),
                role: Role::User,
                ttl_secs: 3600,
                db: "/x.db".into()
            })
        );
        let got =
            parse(&["token", "0", "--role", "admin", "--ttl", "60", "--db", "/y.db"], &[]).unwrap();
        assert_eq!(
            got,
            Command::Token(TokenArgs {
                user: UserId(0),
                role: Role::Admin,
                ttl_secs: 60,
                db: "/y.db".into()
            })
        );
    }

    #[test]
    fn mistakes_say_what_is_wrong() {
        let cases: &[(&[&str], &str)] = &[
            (&["--heartbeat", "0"], "--heartbeat \"0\""),
            (&["--heartbeat", "x"], "whole number"),
            (&["--listen", "nowhere"], "not an address"),
            (&["--bogus"], "bogus"),
            (&["token"], "needs a USER_ID"),
            (&["token", "-4"], ""),
            (&["token", "abc"], "non-negative"),
            (&["token", "1", "--role", "root"], "use user or admin"),
            (&["--log-level", "loud"], "--log-level"),
            (&["--log-level", "periode_sse=loud"], "not a log level"),
            (&["--listen", "localhost"], "not HOST:PORT"),
            (&["--listen", "localhost:99999"], "not HOST:PORT"),
            (&["--listen", "no-such-host.invalid:8989"], "cannot resolve"),
            (&["backup"], "needs a DEST"),
            (&["backup", "a", "b"], ""),
            (&["token", "1", "--bogus"], "bogus"),
        ];
        for (args, needle) in cases {
            match parse(args, &[]) {
                Err(e) => assert!(e.to_string().contains(needle), "{args:?}: {e}"),
                Ok(c) => panic!("{args:?} parsed as {c:?}"),
            }
        }
    }

    #[test]
    fn rust_log_filters_and_garbage_alike() {
        let c = serve(&[], &[("RUST_LOG", "info,periode_sse=debug")]);
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        assert_eq!(c.log_filter.default, log::LevelFilter::Info);
        assert_eq!(
            c.log_filter.targets,
            vec![("periode_sse".to_string(), log::LevelFilter::Debug)]
        );
        let c = serve(&["--log-level", "periode_sse=trace"], &[("RUST_LOG", "garbage")]);
        assert_eq!(c.log_level, log::LevelFilter::Trace);
        for (args, env) in
            [(vec![], vec![("RUST_LOG", "garbage")]), (vec!["--log-level", "garbage"], vec![])]
        {
            let err = parse(&args, &env).unwrap_err().to_string();
            assert!(err.contains("\"garbage\" is not a log level"), "{err}");
        }
    }

    #[test]
    fn listen_takes_host_names_and_bracketed_ipv6() {
        assert_eq!(serve(&["--listen", "[::1]:8989"], &[]).listen, "[::1]:8989".parse().unwrap());
        let local = serve(&["--listen", "localhost:8989"], &[]).listen;
        assert!(local.ip().is_loopback() && local.port() == 8989, "{local}");
    }

    #[test]
    fn token_and_backup_have_their_own_help() {
        for flag in ["--help", "-h"] {
            assert_eq!(parse(&["token", flag], &[]).unwrap(), Command::TokenHelp);
            assert_eq!(parse(&["token", "13", flag], &[]).unwrap(), Command::TokenHelp);
            assert_eq!(parse(&["backup", flag], &[]).unwrap(), Command::BackupHelp);
        }
        assert_eq!(
            parse(&["backup", "/b/x.db"], &[("PERIODE_SSE_DB", "/d.db")]).unwrap(),
            Command::Backup(BackupArgs { dest: "/b/x.db".into(), db: "/d.db".into() })
        );
        assert_eq!(
            parse(&["backup", "--db", "/e.db", "x.db"], &[]).unwrap(),
            Command::Backup(BackupArgs { dest: "x.db".into(), db: "/e.db".into() })
        );
    }
}
