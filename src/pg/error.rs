//! The module's one error type, sorted by what the caller does about it, with every message
//! masked: the password of the URI never appears in one.
//!
//! `Unavailable` is what a request answers as `503 storage_unavailable`; `Config` is a
//! start-up error that no retry fixes (TLS refused, an unreadable root certificate, a
//! schema newer than this binary); `Sql` is a statement that failed on a working connection.

use super::uri::PgUri;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgError {
    Unavailable(String),
    Config(String),
    Sql(String),
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::Unavailable(m) => write!(f, "PostgreSQL is unavailable: {m}"),
            PgError::Config(m) => write!(f, "PostgreSQL cannot be used: {m}"),
            PgError::Sql(m) => write!(f, "PostgreSQL error: {m}"),
        }
    }
}

impl std::error::Error for PgError {}

impl PgError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, PgError::Unavailable(_))
    }

    /// The same error with `uri`'s password masked out of its text.
    pub(crate) fn masked(self, uri: &PgUri) -> PgError {
        match self {
            PgError::Unavailable(m) => PgError::Unavailable(uri.mask(&m)),
            PgError::Config(m) => PgError::Config(uri.mask(&m)),
            PgError::Sql(m) => PgError::Sql(uri.mask(&m)),
        }
    }
}

/// Sorts a client error: a lost or refused connection, a timeout or a server shutting down is
/// `Unavailable` (the connection is then dropped and made again); anything else the server
/// answered is `Sql`.
pub(crate) fn classify(uri: &PgUri, e: &postgres::Error) -> PgError {
    let text = full_text(e);
    let error = match e.as_db_error() {
        Some(db) if !is_unavailable_code(db.code().code()) => PgError::Sql(text),
        _ => PgError::Unavailable(text),
    };
    error.masked(uri)
}

/// SQLSTATE classes that mean "not now" rather than "not this": connection exceptions (08),
/// insufficient resources (53), operator intervention (57: shutdown, statement timeout).
fn is_unavailable_code(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || code.starts_with("57")
}

/// The error and its causes in one line: the client's own `Display` stops at the outer layer
/// ("error connecting to server") and hides the reason ("Connection refused").
pub(crate) fn full_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    let mut depth = 0;
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
        depth += 1;
        if depth == 8 {
            break;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_reaches_every_kind() {
        let uri = PgUri::parse("postgres://u:topsecret@h/d").unwrap();
        for e in [
            PgError::Unavailable("topsecret".into()),
            PgError::Config("a topsecret b".into()),
            PgError::Sql("topsecret".into()),
        ] {
            assert!(!e.masked(&uri).to_string().contains("topsecret"));
        }
    }

    #[test]
    fn codes_that_mean_not_now() {
        for code in ["08006", "57P01", "57014", "53300"] {
            assert!(is_unavailable_code(code), "{code}");
        }
        for code in ["23505", "42P01", "40P01"] {
            assert!(!is_unavailable_code(code), "{code}");
        }
    }
}
