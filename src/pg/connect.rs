//! Opening a connection: the URI and the module's timeouts become a client configuration,
//! and `sslmode` decides between plain TCP and rustls, never silently in between.
//!
//! The timeouts are what makes "a request that needs the database fails within 2 s" true:
//! the connect is bounded, TCP keepalives and `tcp_user_timeout` notice a peer that went away
//! without a word, `statement_timeout` stops a statement stuck behind a lock, and the store
//! adds a client-side deadline around every call for a server that is there but does not
//! answer. A session a node left mid-transaction is ended by the server after
//! `idle_in_transaction_session_timeout`, so its row locks cannot block the other nodes.
//!
//! Every statement a node sends finds its rows by key (the tickets' sweep excepted, whose
//! table has no index to use and stays small), and a session keeps the plans of its prepared
//! statements. A plan made while a table was nearly empty, as every table is on a new
//! database, reads the table whole, and keeps doing so as the table grows, until autovacuum
//! happens to invalidate it: on a database a minute old, each batch read every user's kept
//! notifications. So our sessions run with `enable_seqscan=off`, which leaves the planner
//! an index wherever there is one, whatever the tables' sizes at planning time
//! (docs/cluster.md, "Session 7").

use super::error::{full_text, PgError};
use super::tls;
use super::uri::{Host, PgUri, SslMode};
use std::time::Duration;
use tokio_postgres::config::SslMode as ClientSslMode;
use tokio_postgres::NoTls;

/// The longest a connect may take, whatever `connect_timeout` says.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Unacknowledged bytes for this long mean the peer is gone.
const TCP_USER_TIMEOUT: Duration = Duration::from_millis(1500);
const STATEMENT_TIMEOUT_MS: u64 = 1000;
const IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 10_000;

/// The client configuration for `uri`; `application` names the connection's role in
/// `pg_stat_activity` (so that an operator, or a test, can tell the store from the listener).
pub fn client_config(uri: &PgUri, application: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config.user(&uri.user).dbname(&uri.dbname).port(uri.port);
    if let Some(password) = &uri.password {
        config.password(password);
    }
    match &uri.host {
        Host::Tcp(name) => config.host(name),
        Host::Socket(dir) => config.host_path(dir),
    };
    let connect_timeout = uri.connect_timeout.map_or(CONNECT_TIMEOUT, |t| t.min(CONNECT_TIMEOUT));
    config
        .connect_timeout(connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(1))
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(2)
        .tcp_user_timeout(TCP_USER_TIMEOUT)
        .options(format!(
            "-c statement_timeout={STATEMENT_TIMEOUT_MS} \
             -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS} \
             -c enable_seqscan=off"
        ))
        .application_name(uri.application_name.as_deref().unwrap_or(application));
    config.ssl_mode(match effective_sslmode(uri) {
        SslMode::Disable => ClientSslMode::Disable,
        SslMode::Prefer => ClientSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => ClientSslMode::Require,
    });
    config
}

/// libpq uses no TLS on a unix socket (the kernel carries the bytes; there is no wire to
/// protect), whatever `sslmode` says; the same here.
fn effective_sslmode(uri: &PgUri) -> SslMode {
    match uri.host {
        Host::Socket(_) => SslMode::Disable,
        Host::Tcp(_) => uri.sslmode,
    }
}

/// Connects the async client; the connection task is spawned on the current runtime.
pub async fn connect_async(
    uri: &PgUri,
    application: &str,
) -> Result<tokio_postgres::Client, PgError> {
    let config = client_config(uri, application);
    let result = match effective_sslmode(uri) {
        SslMode::Disable => config.connect(NoTls).await.map(|(client, connection)| {
            tokio::spawn(connection);
            client
        }),
        _ => config.connect(tls::connector(uri)?).await.map(|(client, connection)| {
            tokio::spawn(connection);
            client
        }),
    };
    result.map_err(|e| connect_error(uri, &e))
}

/// Connects the blocking client (the listener's), which runs its own runtime inside.
pub fn connect_blocking(uri: &PgUri, application: &str) -> Result<postgres::Client, PgError> {
    let config = postgres::Config::from(client_config(uri, application));
    let result = match effective_sslmode(uri) {
        SslMode::Disable => config.connect(NoTls),
        _ => config.connect(tls::connector(uri)?),
    };
    result.map_err(|e| connect_error(uri, &e))
}

/// A failed connect, said with the masked URI. A TLS failure under `require` or stricter is a
/// `Config` error: retrying cannot make the server speak TLS, and falling back is forbidden.
fn connect_error(uri: &PgUri, e: &tokio_postgres::Error) -> PgError {
    let reason = full_text(e);
    let tls_failed =
        reason.contains("TLS") || reason.contains("tls") || reason.contains("certificate");
    let error = if tls_failed && effective_sslmode(uri) >= SslMode::Require {
        PgError::Config(format!(
            "cannot connect to {uri}: sslmode={} requires an encrypted connection and none \
             could be made ({reason}); refusing to connect without TLS",
            uri.sslmode.as_str()
        ))
    } else if e.as_db_error().is_some_and(|db| db.code().code().starts_with("28")) {
        // 28xxx: authentication failed; a wrong password stays wrong.
        PgError::Config(format!("cannot connect to {uri}: {reason}"))
    } else {
        PgError::Unavailable(format!("cannot connect to {uri}: {reason}"))
    };
    error.masked(uri)
}
