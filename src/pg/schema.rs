//! The PostgreSQL schema, created on first start and versioned, safely when several nodes
//! start at the same moment on an empty database.
//!
//! `CREATE TABLE IF NOT EXISTS` alone is not enough for that: two sessions creating the same
//! table at once can both pass the "not exists" check, and one then fails on a unique index
//! of the catalog. So the whole creation runs in one transaction that first takes a
//! transaction-scoped advisory lock: the second node waits, then finds everything there.
//!
//! The tables mirror SQLite's (`store.rs`); what cluster mode adds is that the per-user
//! `last_notification_id` is the source of notification ids for every node (incremented
//! under the row lock inside the writing transaction), and that limits and users are read
//! from here whenever the change feed says they changed.
//!
//! Version 2 adds `limits.spent`: the sum of the user's amounts inside the limit's period,
//! kept true under the user's row lock by every write (`pg::batch`), so that no write and no
//! load sums the user's history. A version-1 database gets the column and its sums at the
//! first start of a version-2 node (in the same locked transaction); from then on version-1
//! nodes refuse it, since they would not keep the sums.

use super::error::{classify, PgError};
use super::uri::PgUri;

/// Bumped with every change to `SCHEMA`; a database with a newer one is refused at start.
pub const SCHEMA_VERSION: i64 = 2;

/// Any constant will do, as long as no other application of the database uses it: "pSSE".
const SCHEMA_LOCK: i64 = 0x7053_5345;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id BIGINT PRIMARY KEY,
    active BOOLEAN NOT NULL,
    -- all-time sum of amounts: bounds every period's sum, so no SUM can overflow
    total_spent BIGINT NOT NULL DEFAULT 0,
    -- the user's latest notification id, for every node: ids are contiguous per user
    last_notification_id BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS limits (
    user_id BIGINT PRIMARY KEY,
    max_limit BIGINT NOT NULL,
    alert_percentage DOUBLE PRECISION NOT NULL,
    periode_start BIGINT NOT NULL,
    periode_end BIGINT NOT NULL,
    -- the sum of the user's amounts with periode_start <= occurred_at <= periode_end
    -- (saturating, as SQLite's view), kept by every write under the user's row lock
    spent BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS transactions (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL,
    amount BIGINT NOT NULL,
    description TEXT,
    occurred_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS transactions_by_user_time ON transactions (user_id, occurred_at);
CREATE TABLE IF NOT EXISTS notifications (
    user_id BIGINT NOT NULL,
    id BIGINT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (user_id, id)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// From version 1 to 2: the period sums, computed once from the history.
const TO_VERSION_2: &str = "
ALTER TABLE limits ADD COLUMN spent BIGINT;
UPDATE limits l SET spent = LEAST(GREATEST(COALESCE(
    (SELECT SUM(t.amount) FROM transactions t
     WHERE t.user_id = l.user_id AND t.occurred_at BETWEEN l.periode_start AND l.periode_end),
    0), -9223372036854775808), 9223372036854775807)::BIGINT;
ALTER TABLE limits ALTER COLUMN spent SET DEFAULT 0, ALTER COLUMN spent SET NOT NULL;
UPDATE meta SET value = '2' WHERE key = 'schema_version';
";

/// Creates what is missing and checks the recorded version, in one transaction.
pub async fn ensure(client: &mut tokio_postgres::Client, uri: &PgUri) -> Result<(), PgError> {
    let sql = |e: tokio_postgres::Error| classify(uri, &e);
    let tx = client.transaction().await.map_err(sql)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).await.map_err(sql)?;
    // Every start after the first finds the tables there, and PostgreSQL says so in a NOTICE
    // per table, which the client logs: six lines of noise at each start, and more than the
    // one line a refused start must be. For this transaction only.
    tx.batch_execute("SET LOCAL client_min_messages = warning").await.map_err(sql)?;
    tx.batch_execute(SCHEMA).await.map_err(sql)?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', $1) ON CONFLICT (key) DO NOTHING",
        &[&SCHEMA_VERSION.to_string()],
    )
    .await
    .map_err(sql)?;
    let row = tx
        .query_one("SELECT value FROM meta WHERE key = 'schema_version'", &[])
        .await
        .map_err(sql)?;
    let stored: String = row.try_get(0).map_err(sql)?;
    match stored.parse::<i64>() {
        // `CREATE TABLE IF NOT EXISTS` left version 1's `limits` without the column.
        Ok(1) => tx.batch_execute(TO_VERSION_2).await.map_err(sql)?,
        Ok(v) if v <= SCHEMA_VERSION => {}
        _ => {
            return Err(PgError::Config(format!(
                "the database's schema version is {stored:?}, newer than this binary's \
                 {SCHEMA_VERSION}: upgrade periode-sse"
            )))
        }
    }
    tx.commit().await.map_err(sql)
}
