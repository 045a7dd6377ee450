//! The schema and its versions: `PRAGMA user_version` says which one a file holds.
//!
//! Version 0 is both a new, empty file and a database made before versions were recorded
//! (whose tables are exactly version 1's); both become version 1 by the same `CREATE … IF NOT
//! EXISTS` step. Each later change is one more entry in `STEPS`, run forward in order inside
//! the start-up transaction, so a crash half-way leaves the file at its old version. A file
//! newer than this binary is refused: an old binary must not write into a schema it does not
//! know. Never edit a step once released; add one.

use rusqlite::Connection;

/// `STEPS[i]` takes a database from version `i` to `i + 1`.
const STEPS: &[&str] = &[V1];

/// The version this binary writes.
pub const CURRENT: i64 = STEPS.len() as i64;

const V1: &str = "
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    active INTEGER NOT NULL,
    -- all-time sum of amounts: bounds every period's sum, so no SUM can overflow
    total_spent INTEGER NOT NULL DEFAULT 0,
    last_notification_id INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS limits (
    user_id INTEGER PRIMARY KEY,
    max_limit INTEGER NOT NULL,
    alert_percentage REAL NOT NULL,
    periode_start INTEGER NOT NULL,
    periode_end INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    description TEXT,
    occurred_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS transactions_by_user_time ON transactions (user_id, occurred_at);
CREATE TABLE IF NOT EXISTS notifications (
    user_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (user_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

pub fn version(db: &Connection) -> rusqlite::Result<i64> {
    db.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// What `migrate` did, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub from: i64,
    pub to: i64,
    /// The file held no tables: a new database, not an upgrade worth a log line.
    pub fresh: bool,
}

#[derive(Debug)]
pub enum MigrateError {
    /// The file was written by a newer periode-sse.
    Newer(i64),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> MigrateError {
        MigrateError::Sql(e)
    }
}

/// Brings the schema to `CURRENT`. The caller holds a write transaction (`BEGIN IMMEDIATE`),
/// so the read of the version and the steps are one atomic change.
pub fn migrate(db: &Connection) -> Result<Migrated, MigrateError> {
    let from = version(db)?;
    if from > CURRENT {
        return Err(MigrateError::Newer(from));
    }
    let tables: i64 = db.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
    for (i, step) in STEPS.iter().enumerate().skip(from.max(0) as usize) {
        db.execute_batch(step)?;
        // A pragma takes no bound parameters; the value is our own integer, never input.
        db.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
    }
    Ok(Migrated { from, to: CURRENT, fresh: tables == 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_and_an_unversioned_one_both_become_current() {
        let db = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&db).unwrap(), Migrated { from: 0, to: CURRENT, fresh: true });
        assert_eq!(version(&db).unwrap(), CURRENT);
        assert_eq!(migrate(&db).unwrap(), Migrated { from: CURRENT, to: CURRENT, fresh: false });

        // Before versions were recorded: version 1's tables, with data, and user_version 0.
        let old = Connection::open_in_memory().unwrap();
        old.execute_batch(V1).unwrap();
        old.execute_batch("INSERT INTO users (id, active) VALUES (13, 1)").unwrap();
        assert_eq!(version(&old).unwrap(), 0);
        assert_eq!(migrate(&old).unwrap(), Migrated { from: 0, to: CURRENT, fresh: false });
        let n: i64 = old.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_newer_file_is_refused_untouched() {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch("PRAGMA user_version = 99").unwrap();
        assert!(matches!(migrate(&db), Err(MigrateError::Newer(99))));
        let tables: i64 =
            db.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0)).unwrap();
        assert_eq!(tables, 0);
    }
}
