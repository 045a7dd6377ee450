//! `postgres://` and `postgresql://` URIs in libpq's syntax, parsed into a `PgUri`, and a
//! `Display` that never shows the password.
//!
//! Pure: text in, values out, no I/O. Error messages name the part that is wrong but never
//! echo any of the URI's text, since the password may be anywhere in a malformed one.
//!
//! Accepted: `postgres://[USER[:PASSWORD]@][HOST][:PORT][/DBNAME][?KEY=VALUE&…]`, every part
//! percent-decoded, `HOST` a name, an IPv4 address or a bracketed IPv6 address, or (as libpq
//! does) a percent-encoded absolute path, which is a unix socket directory. Query keys:
//! `host` (a name or a socket directory), `port`, `user`, `password`, `dbname`, `sslmode`,
//! `sslrootcert`, `connect_timeout` (seconds), `application_name`. Unknown keys are refused,
//! as libpq refuses them, rather than silently ignored. Several hosts (`h1,h2`) are refused.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// libpq's `sslmode`, in increasing strictness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    /// Try TLS, use plain TCP when the server has none (libpq's default).
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS with a certificate signed by `sslrootcert`; the host name is not checked.
    VerifyCa,
    /// TLS with a certificate signed by `sslrootcert` and issued for the host name.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries plain first, then TLS; nothing is lost by trying TLS first.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    /// A directory holding the server's `.s.PGSQL.<port>` socket.
    Socket(PathBuf),
}

/// Debian's libpq looks for the server's socket here when no host is given.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
pub const DEFAULT_PORT: u16 = 5432;
/// libpq defaults to the operating system's user name; a server has no login user to ask,
/// so the default is PostgreSQL's own superuser name.
pub const DEFAULT_USER: &str = "postgres";

#[derive(Clone, PartialEq, Eq)]
pub struct PgUri {
    pub user: String,
    pub password: Option<String>,
    pub host: Host,
    pub port: u16,
    pub dbname: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    /// From `connect_timeout`; the store bounds it further so that a request fails in 2 s.
    pub connect_timeout: Option<Duration>,
    pub application_name: Option<String>,
}

/// Whether `--db` names PostgreSQL rather than a SQLite file.
pub fn is_postgres_uri(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// What is wrong with a URI, without any of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriError(pub String);

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid PostgreSQL URI: {}", self.0)
    }
}

fn bad(what: &str) -> UriError {
    UriError(what.to_string())
}

impl PgUri {
    pub fn parse(text: &str) -> Result<PgUri, UriError> {
        let rest = text
            .strip_prefix("postgresql://")
            .or_else(|| text.strip_prefix("postgres://"))
            .ok_or_else(|| bad("it must start with postgres:// or postgresql://"))?;
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        if before_query.contains('#') || query.is_some_and(|q| q.contains('#')) {
            return Err(bad("a fragment (#) has no meaning in it"));
        }
        let (authority, path) = match before_query.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (before_query, None),
        };
        // The userinfo ends at the last '@' of the authority: an unencoded '@' in a password
        // then still parses the way its author meant.
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut uri = PgUri {
            user: String::new(),
            password: None,
            host: Host::Socket(PathBuf::from(DEFAULT_SOCKET_DIR)),
            port: DEFAULT_PORT,
            dbname: String::new(),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            connect_timeout: None,
            application_name: None,
        };
        if let Some(userinfo) = userinfo {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            uri.user = decode(user, "the user name")?;
            uri.password = password.map(|p| decode(p, "the password")).transpose()?;
        }
        parse_hostport(hostport, &mut uri)?;
        if let Some(path) = path {
            uri.dbname = decode(path, "the database name")?;
        }
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad("a query parameter has no '=' and no value"))?;
            let key = decode(key, "a query parameter's name")?;
            let value = decode(value, "a query parameter's value")?;
            apply_param(&key, value, &mut uri)?;
        }
        if uri.user.is_empty() {
            uri.user = DEFAULT_USER.to_string();
        }
        if uri.dbname.is_empty() {
            uri.dbname = uri.user.clone();
        }
        Ok(uri)
    }

    /// Every occurrence of the password in `text` replaced by `***`: for messages that come
    /// from the client library or the server, which this module does not write itself.
    pub fn mask(&self, text: &str) -> String {
        match self.password.as_deref() {
            Some(p) if !p.is_empty() => text.replace(p, "***"),
            _ => text.to_string(),
        }
    }
}

fn parse_hostport(hostport: &str, uri: &mut PgUri) -> Result<(), UriError> {
    if hostport.is_empty() {
        return Ok(());
    }
    if hostport.contains(',') {
        return Err(bad("several hosts are not supported; give one"));
    }
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (v6, after) =
            bracketed.split_once(']').ok_or_else(|| bad("an IPv6 host lacks its closing ']'"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after the IPv6 host"))?),
        };
        (v6.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (decode(h, "the host")?, Some(p)),
            None => (decode(hostport, "the host")?, None),
        }
    };
    if !host.is_empty() {
        uri.host = host_from(host);
    }
    if let Some(port) = port {
        uri.port = parse_port(port)?;
    }
    Ok(())
}

fn host_from(text: String) -> Host {
    if text.starts_with('/') {
        Host::Socket(PathBuf::from(text))
    } else {
        Host::Tcp(text)
    }
}

fn parse_port(text: &str) -> Result<u16, UriError> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(bad("the port is not a number from 1 to 65535")),
    }
}

fn apply_param(key: &str, value: String, uri: &mut PgUri) -> Result<(), UriError> {
    match key {
        "host" => {
            if value.contains(',') {
                return Err(bad("several hosts are not supported; give one"));
            }
            if !value.is_empty() {
                uri.host = host_from(value);
            }
        }
        "port" => uri.port = parse_port(&value)?,
        "user" => uri.user = value,
        "password" => uri.password = Some(value),
        "dbname" => uri.dbname = value,
        "sslmode" => {
            uri.sslmode = SslMode::parse(&value).ok_or_else(|| {
                bad("sslmode must be disable, allow, prefer, require, verify-ca or verify-full")
            })?
        }
        "sslrootcert" => uri.sslrootcert = Some(PathBuf::from(value)),
        "connect_timeout" => {
            let secs: u64 =
                value.parse().map_err(|_| bad("connect_timeout is not a whole number"))?;
            // libpq: zero (or absent) means wait forever; the store bounds it in any case.
            uri.connect_timeout = (secs > 0).then(|| Duration::from_secs(secs));
        }
        "application_name" => uri.application_name = Some(value),
        // Naming the key is safe: the password is a value, never a key.
        other => return Err(UriError(format!("unknown query parameter {other:?}"))),
    }
    Ok(())
}

/// Percent-decoding into UTF-8. `what` names the part in the error, never its text.
fn decode(text: &str, what: &str) -> Result<String, UriError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
            match byte {
                Some(b) => out.push(b),
                None => return Err(UriError(format!("a bad %-escape in {what}"))),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UriError(format!("{what} is not UTF-8 once decoded")))
}

/// Percent-encodes what would not read back as itself.
fn encode(text: &str, out: &mut fmt::Formatter<'_>) -> fmt::Result {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            write!(out, "{}", b as char)?;
        } else {
            write!(out, "%{b:02X}")?;
        }
    }
    Ok(())
}

/// The URI with the password shown as `***`: what logs and errors print.
impl fmt::Display for PgUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("postgres://")?;
        encode(&self.user, f)?;
        if self.password.is_some() {
            f.write_str(":***")?;
        }
        f.write_str("@")?;
        if let Host::Tcp(name) = &self.host {
            if name.contains(':') {
                write!(f, "[{name}]")?;
            } else {
                encode(name, f)?;
            }
        }
        write!(f, ":{}/", self.port)?;
        encode(&self.dbname, f)?;
        write!(f, "?sslmode={}", self.sslmode.as_str())?;
        if let Host::Socket(dir) = &self.host {
            f.write_str("&host=")?;
            encode(&dir.to_string_lossy(), f)?;
        }
        Ok(())
    }
}

/// `Debug` is the masked form too: a `{:?}` of a config struct must not leak it either.
impl fmt::Debug for PgUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUri({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> PgUri {
        PgUri::parse(text).unwrap()
    }

    #[test]
    fn full_uri() {
        let uri = parse("postgres://ann:s%40cr%3At@db.example:6543/ledger?sslmode=verify-full");
        assert_eq!(uri.user, "ann");
        assert_eq!(uri.password.as_deref(), Some("s@cr:t"));
        assert_eq!(uri.host, Host::Tcp("db.example".into()));
        assert_eq!(uri.port, 6543);
        assert_eq!(uri.dbname, "ledger");
        assert_eq!(uri.sslmode, SslMode::VerifyFull);
    }

    #[test]
    fn defaults_as_libpq_on_debian() {
        let uri = parse("postgresql://");
        assert_eq!(uri.user, "postgres");
        assert_eq!(uri.password, None);
        assert_eq!(uri.host, Host::Socket(DEFAULT_SOCKET_DIR.into()));
        assert_eq!(uri.port, 5432);
        assert_eq!(uri.dbname, "postgres");
        assert_eq!(uri.sslmode, SslMode::Prefer);
        assert_eq!(parse("postgres://bob@h").dbname, "bob");
    }

    #[test]
    fn socket_directories() {
        let uri = parse("postgres://app@/periode?host=/tmp/pg%20dir&port=5499");
        assert_eq!(uri.host, Host::Socket("/tmp/pg dir".into()));
        assert_eq!(uri.port, 5499);
        assert_eq!(
            parse("postgres://%2Fvar%2Frun%2Fpg/x").host,
            Host::Socket("/var/run/pg".into())
        );
    }

    #[test]
    fn ipv6_and_params() {
        let uri = parse(
            "postgres://u@[::1]:5433/d?connect_timeout=3&application_name=node%20a&sslrootcert=/c.pem",
        );
        assert_eq!(uri.host, Host::Tcp("::1".into()));
        assert_eq!(uri.port, 5433);
        assert_eq!(uri.connect_timeout, Some(Duration::from_secs(3)));
        assert_eq!(uri.application_name.as_deref(), Some("node a"));
        assert_eq!(uri.sslrootcert, Some(PathBuf::from("/c.pem")));
        assert_eq!(parse("postgres://u@h/d?password=pw&user=v").password.as_deref(), Some("pw"));
    }

    #[test]
    fn unencoded_at_in_password_splits_at_the_last_one() {
        let uri = parse("postgres://u:p@ss@h/d");
        assert_eq!((uri.password.as_deref(), uri.host), (Some("p@ss"), Host::Tcp("h".into())));
    }

    #[test]
    fn refusals_never_echo_the_uri() {
        let secret = "hunter2secret";
        for text in [
            "mysql://u:hunter2secret@h/d",
            "postgres://u:hunter2secret@h:99999/d",
            "postgres://u:hunter2secret@h:x/d",
            "postgres://u:hunter2secret@h1,h2/d",
            "postgres://u:hunter2secret@h/d?sslmode=hunter2secret",
            "postgres://u:hunter2secret@h/d?hunter2secret",
            "postgres://u:hunter2secret%zz@h/d",
            "postgres://u:hunter2secret%ff@h/d",
            "postgres://u:hunter2secret@[::1/d",
            "postgres://u:hunter2secret@h/d?connect_timeout=hunter2secret",
            "postgres://u:hunter2secret@h/d#hunter2secret",
        ] {
            let err = PgUri::parse(text).expect_err(text).to_string();
            assert!(!err.contains(secret), "{err}");
            assert!(err.starts_with("invalid PostgreSQL URI: "), "{err}");
        }
        let err = PgUri::parse("postgres://u@h/d?sslcert=x").unwrap_err();
        assert_eq!(err.to_string(), "invalid PostgreSQL URI: unknown query parameter \"sslcert\"");
    }

    #[test]
    fn display_and_debug_mask_the_password() {
        let uri = parse("postgres://ann:hunter2@db:6543/ledger?sslmode=require");
        assert_eq!(uri.to_string(), "postgres://ann:***@db:6543/ledger?sslmode=require");
        assert!(!format!("{uri:?}").contains("hunter2"));
        let socket = parse("postgres://ann@/ledger?host=/run/pg");
        assert_eq!(
            socket.to_string(),
            "postgres://ann@:5432/ledger?sslmode=prefer&host=%2Frun%2Fpg"
        );
        assert_eq!(uri.mask("password hunter2 refused"), "password *** refused");
    }

    #[test]
    fn which_db_is_postgres() {
        assert!(is_postgres_uri("postgres://x"));
        assert!(is_postgres_uri("postgresql://x"));
        assert!(!is_postgres_uri("./periode-sse.db"));
        assert!(!is_postgres_uri("postgres.db"));
    }
}
