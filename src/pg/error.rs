//! The module's one error type, sorted by what the caller does about it, with every message
//! masked: the password of the URI never appears in one.
//!
//! `Unavailable` is what a request answers as `503 storage_unavailable`; `Config` is a
//! start-up error that no retry fixes (TLS refused, an unreadable root certificate, a
//! schema newer than this binary); `Conflict` is a transaction PostgreSQL aborted because it
//! collided with another (a deadlock, `40P01`, or a serialization failure, `40001`): it was
//! rolled back whole, so running it again is safe, and the batch path does (`writes::apply_pg`);
//! `Sql` is any other statement that failed on a working connection.

use super::uri::PgUri;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgError {
    Unavailable(String),
    Config(String),
    Conflict(String),
    Sql(String),
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::Unavailable(m) => write!(f, "PostgreSQL is unavailable: {m}"),
            PgError::Config(m) => write!(f, "PostgreSQL cannot be used: {m}"),
            PgError::Conflict(m) => {
                write!(f, "PostgreSQL aborted the transaction (a conflict with another): {m}")
            }
            PgError::Sql(m) => write!(f, "PostgreSQL error: {m}"),
        }
    }
}

impl std::error::Error for PgError {}

impl PgError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, PgError::Unavailable(_))
    }

    /// Whether the transaction was aborted for colliding with another, and so may be run
    /// again as it was: nothing of it was committed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, PgError::Conflict(_))
    }

    /// The same error with `uri`'s password masked out of its text.
    pub(crate) fn masked(self, uri: &PgUri) -> PgError {
        match self {
            PgError::Unavailable(m) => PgError::Unavailable(uri.mask(&m)),
            PgError::Config(m) => PgError::Config(uri.mask(&m)),
            PgError::Conflict(m) => PgError::Conflict(uri.mask(&m)),
            PgError::Sql(m) => PgError::Sql(uri.mask(&m)),
        }
    }
}

/// Sorts a client error: a lost or refused connection, a timeout or a server shutting down is
/// `Unavailable` (the connection is then dropped and made again); a deadlock or serialization
/// failure is `Conflict`; anything else the server answered is `Sql`.
pub(crate) fn classify(uri: &PgUri, e: &postgres::Error) -> PgError {
    let text = full_text(e);
    let error = match e.as_db_error() {
        Some(db) if is_conflict_code(db.code().code()) => PgError::Conflict(text),
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

/// The two SQLSTATEs after which PostgreSQL's documentation tells a client to run the whole
/// transaction again: `40001` serialization_failure, `40P01` deadlock_detected. (The rest of
/// class 40 is not transient: `40002` is a violated constraint at commit, `40003` an unknown
/// outcome.)
fn is_conflict_code(code: &str) -> bool {
    code == "40001" || code == "40P01"
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
            PgError::Conflict("topsecret".into()),
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

    #[test]
    fn codes_that_mean_run_it_again() {
        for code in ["40P01", "40001"] {
            assert!(is_conflict_code(code), "{code}");
        }
        for code in ["40002", "40003", "23505", "57014", "08006"] {
            assert!(!is_conflict_code(code), "{code}");
        }
    }
}
