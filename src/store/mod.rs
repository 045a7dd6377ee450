//! SQLite on local disk: users, limits, transactions and the notifications kept for resume.
//!
//! The only module that touches the database. Every statement is prepared from a constant
//! (values are always bound, never spliced into SQL) and cached. Writes happen only between
//! `begin` and `commit`, which the server calls once per loop turn around every write that
//! arrived in that turn (group commit): with `synchronous=FULL` a commit is durable when it
//! returns, so an answer sent after it is a promise kept even through `kill -9`.
//!
//! What a connect reads (is the user active, their limit, spending and latest notification id)
//! is kept in a per-user view cache, so that opening a stream costs no query once the user is
//! known. Inside a batch, views are copied into an overlay and kept up to date by each write
//! (a transaction adds its amount when it falls in the period), so a write never re-sums a
//! user's history; the overlay replaces the cached views at commit and is dropped at rollback.
//! This relies on periode-sse being the only writer of its database, which the lock taken at
//! open (`open.rs`) makes sure of.
//!
//! The writing `Store` lives on the server's store thread; the loop reads through a second,
//! read-only `Store` (`open_reader`: WAL lets it read while a commit is under way). The two
//! share one view cache: the writer puts each batch's views in it at commit, so the loop never
//! re-sums a user's history after their write (that is O(history) per write, which the cache
//! exists to avoid). The loop reads nothing of a user while a batch of theirs is in flight, so
//! the only views either side changes at a time are of users the other is not reading.
//!
//! Files: `open.rs` (the start-up checks, the lock, and the watch on the file while running),
//! `schema.rs` (the schema and its versions), `backup.rs` (`periode-sse backup`).

mod backup;
mod open;
mod schema;

pub use backup::{backup, BackupDone};
pub use open::check_path;

use crate::domain::UserId;
use crate::spending::{AlertPercentage, Limit, Status};
use crate::time::month_bounds_ms;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// How many notifications per user are kept for `Last-Event-ID` resume. PostgreSQL's batches
/// trim each user's window by the range their own notifications push out of it
/// (`pg::batch::NOTES`): a release that made this smaller would have to delete the rows
/// between the old and the new window once, or they would stay.
pub const KEPT_NOTIFICATIONS: u64 = 1000;

#[derive(Debug)]
pub enum StoreError {
    /// SQLite could not open or set up the file at this path.
    Open(String, rusqlite::Error),
    /// Start-up refused: the sentence says what is wrong and how to fix it.
    Refused(String),
    /// Writes cannot be made durable where a restart would find them: the database files were
    /// deleted or replaced, or the disk answers errors or read-only. HTTP `503`.
    Unavailable(String),
    /// The disk or the quota is full (`SQLITE_FULL`). HTTP `507` (or `503`).
    Full,
    Sql(rusqlite::Error),
    /// PostgreSQL (cluster mode): unreachable, or a statement failed. Already masked.
    #[cfg(feature = "postgres")]
    Postgres(crate::pg::PgError),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Open(path, e) => write!(f, "cannot open the database {path}: {e}"),
            StoreError::Refused(why) | StoreError::Unavailable(why) => f.write_str(why),
            StoreError::Full => f.write_str("the database's disk (or quota) is full"),
            StoreError::Sql(e) => write!(f, "database error: {e}"),
            #[cfg(feature = "postgres")]
            StoreError::Postgres(e) => write!(f, "{e}"),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        use rusqlite::ErrorCode as Code;
        match e.sqlite_error_code() {
            Some(Code::DiskFull) => StoreError::Full,
            // The file or the disk under it, not the request: worth a retry later.
            Some(
                Code::ReadOnly
                | Code::SystemIoFailure
                | Code::CannotOpen
                | Code::DatabaseBusy
                | Code::DatabaseLocked,
            ) => StoreError::Unavailable(format!("the database cannot be written: {e}")),
            _ => StoreError::Sql(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A stored transaction, as `POST /transactions` answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub id: i64,
    pub user: UserId,
    pub amount: i64,
    pub description: Option<String>,
    pub occurred_at_ms: i64,
}

/// Why a write was refused without touching the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRefusal {
    UnknownUser,
    TotalOverflow,
}

/// Past this many cached users the cache starts over (a bound, not an eviction policy).
const MAX_CACHED_USERS: usize = 200_000;

/// Everything a connect or a status read needs of one user (the type every backend shares).
type UserView = crate::backend::View;

pub struct Store {
    db: Connection,
    /// The locked file; `None` for a reader, which never commits.
    file: Option<open::DbFile>,
    /// Committed views. `None` values remember users that do not exist.
    cache: Arc<Mutex<HashMap<UserId, Option<UserView>>>>,
    in_batch: Cell<bool>,
    /// The views as this batch has changed them; they become `cache` entries at commit.
    overlay: RefCell<HashMap<UserId, Option<UserView>>>,
}

impl Store {
    /// Opens the database for a server: refuses what would not survive a restart, takes the
    /// one-server lock, checks the file's integrity and that it can be written, and brings the
    /// schema to this binary's version. Nothing is written before every check has passed.
    pub fn open(path: &Path) -> Result<Store> {
        open::check_path(path)?;
        let file = open::DbFile::lock(path)?;
        let shown = path.display().to_string();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db = Connection::open_with_flags(&file.path, flags)
            .map_err(|e| StoreError::Open(shown.clone(), e))?;
        db.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| StoreError::Open(shown.clone(), e))?;
        check_integrity(&db, &shown)?;
        // SQLite falls back to read-only when it may not write the file (mode, mount).
        if db.is_readonly("main").unwrap_or(true) {
            return Err(StoreError::Refused(format!(
                "the database {shown} can only be opened read-only; periode-sse must write to it"
            )));
        }
        let setup = |db: &Connection| -> rusqlite::Result<()> {
            // WAL: readers never wait for the writer; FULL: a commit is on disk when it returns.
            db.pragma_update(None, "journal_mode", "WAL")?;
            db.pragma_update(None, "synchronous", "FULL")?;
            db.set_prepared_statement_cache_capacity(32);
            Ok(())
        };
        setup(&db).map_err(|e| StoreError::Open(shown.clone(), e))?;
        migrate(&db, &shown)?;
        file.note_wal();
        Ok(Store {
            db,
            file: Some(file),
            cache: Arc::new(Mutex::new(HashMap::new())),
            in_batch: Cell::new(false),
            overlay: RefCell::new(HashMap::new()),
        })
    }

    /// A read-only connection to the same file, for the loop's reads while this store writes
    /// on another thread. It takes no lock, never writes, and shares this store's view cache.
    pub fn open_reader(&self) -> Result<Store> {
        let Some(file) = &self.file else {
            return Err(StoreError::Refused("a reader cannot open another reader".to_string()));
        };
        let shown = file.path.display().to_string();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db = Connection::open_with_flags(&file.path, flags)
            .map_err(|e| StoreError::Open(shown.clone(), e))?;
        // A WAL reader waits only while SQLite recovers or restarts the WAL: briefly, and the
        // loop must never wait long.
        db.busy_timeout(std::time::Duration::from_millis(200))
            .map_err(|e| StoreError::Open(shown.clone(), e))?;
        db.set_prepared_statement_cache_capacity(16);
        Ok(Store {
            db,
            file: None,
            cache: Arc::clone(&self.cache),
            in_batch: Cell::new(false),
            overlay: RefCell::new(HashMap::new()),
        })
    }

    /// The shared view cache. A panic while it was held (a bug) left at worst a view that a
    /// later load replaces; carrying on beats dropping every stream.
    fn cache(&self) -> MutexGuard<'_, HashMap<UserId, Option<UserView>>> {
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drops the cached view of `user`.
    pub fn forget(&self, user: UserId) {
        self.cache().remove(&user);
    }

    /// Drops every cached view.
    pub fn forget_all(&self) {
        self.cache().clear();
    }

    fn view(&self, user: UserId) -> Result<Option<UserView>> {
        if self.in_batch.get() {
            if let Some(view) = self.overlay.borrow().get(&user) {
                return Ok(*view);
            }
            // Before the batch first changes this user: the committed view is still right.
            let cached = self.cache().get(&user).copied();
            let view = match cached {
                Some(view) => view,
                None => self.load_view(user)?,
            };
            self.overlay.borrow_mut().insert(user, view);
            return Ok(view);
        }
        let cached = self.cache().get(&user).copied();
        if let Some(view) = cached {
            return Ok(view);
        }
        let view = self.load_view(user)?;
        let mut cache = self.cache();
        if cache.len() >= MAX_CACHED_USERS {
            cache.clear();
        }
        cache.insert(user, view);
        Ok(view)
    }

    fn load_view(&self, user: UserId) -> Result<Option<UserView>> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT active, last_notification_id FROM users WHERE id = ?1")?;
        let row = stmt
            .query_row([user.0], |row| Ok((row.get::<_, bool>(0)?, row.get::<_, i64>(1)?)))
            .optional()?;
        let Some((active, last_id)) = row else { return Ok(None) };
        let limit = self.limit(user)?;
        let spending = match &limit {
            Some(limit) => self.spending(user, limit)?,
            None => 0,
        };
        Ok(Some(UserView::new(active, last_id.max(0) as u64, limit, spending)))
    }

    /// Applies a change to `user`'s view in this batch. The view must have been read with
    /// `view` before the change reached SQLite, so that it is not counted twice.
    fn update_view(&self, user: UserId, change: impl FnOnce(&mut Option<UserView>)) {
        if let Some(view) = self.overlay.borrow_mut().get_mut(&user) {
            change(view);
        }
    }

    /// `None` when the user does not exist.
    pub fn user_active(&self, user: UserId) -> Result<Option<bool>> {
        Ok(crate::backend::user_active(self.view(user)?))
    }

    pub fn limit(&self, user: UserId) -> Result<Option<Limit>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT max_limit, alert_percentage, periode_start, periode_end FROM limits WHERE user_id = ?1",
        )?;
        let row = stmt
            .query_row([user.0], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, f64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })
            .optional()?;
        // A row that fails the rules (edited by hand) is treated as no limit rather than a crash.
        Ok(row.and_then(|(max_limit, alert, start, end)| {
            Some(Limit {
                max_limit,
                alert: AlertPercentage::new(alert)?,
                periode_start_ms: start,
                periode_end_ms: end,
            })
        }))
    }

    /// The sum of the user's amounts inside the limit's period (both ends included).
    pub fn spending(&self, user: UserId, limit: &Limit) -> Result<i64> {
        let mut stmt = self.db.prepare_cached(
            "SELECT COALESCE(SUM(amount), 0) FROM transactions
             WHERE user_id = ?1 AND occurred_at BETWEEN ?2 AND ?3",
        )?;
        Ok(stmt
            .query_row(params![user.0, limit.periode_start_ms, limit.periode_end_ms], |row| {
                row.get(0)
            })?)
    }

    /// The status against the limit whose period covers `now_ms`, if there is one.
    pub fn active_status(&self, user: UserId, now_ms: i64) -> Result<Option<Status>> {
        Ok(crate::backend::active_status(self.view(user)?, now_ms))
    }

    pub fn status_for(&self, user: UserId, limit: Limit) -> Result<Status> {
        Ok(Status::compute(self.spending(user, &limit)?, limit))
    }

    pub fn last_notification_id(&self, user: UserId) -> Result<u64> {
        Ok(crate::backend::last_notification_id(self.view(user)?))
    }

    /// Calls `each` with every kept notification of `user` whose id is above `after`, oldest
    /// first.
    pub fn notifications_after(
        &self,
        user: UserId,
        after: u64,
        mut each: impl FnMut(u64, &str),
    ) -> Result<()> {
        let mut stmt = self.db.prepare_cached(
            "SELECT id, data FROM notifications WHERE user_id = ?1 AND id > ?2 ORDER BY id",
        )?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let mut rows = stmt.query(params![user.0, after])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let data: String = row.get(1)?;
            each(id.max(0) as u64, &data);
        }
        Ok(())
    }

    pub fn begin(&self) -> Result<()> {
        self.db.execute_batch("BEGIN IMMEDIATE")?;
        self.in_batch.set(true);
        Ok(())
    }

    /// Makes the batch durable, or undoes it whole: after an error no transaction is left
    /// open, so the caller's `rollback` finds nothing to undo.
    pub fn commit(&self) -> Result<()> {
        let checked = self.file.as_ref().map_or(Ok(()), |f| f.check());
        let done = checked.and_then(|()| Ok(self.db.execute_batch("COMMIT")?));
        if let Err(e) = done {
            self.rollback();
            return Err(e);
        }
        if let Some(file) = &self.file {
            file.note_wal();
        }
        self.in_batch.set(false);
        let mut cache = self.cache();
        if cache.len() >= MAX_CACHED_USERS {
            cache.clear();
        }
        cache.extend(self.overlay.borrow_mut().drain());
        Ok(())
    }

    /// Undoes the batch; the cache still matches what is committed. A failed statement or
    /// commit (disk full, I/O error) may already have rolled the transaction back.
    pub fn rollback(&self) {
        if !self.db.is_autocommit() {
            if let Err(e) = self.db.execute_batch("ROLLBACK") {
                log::error!("rollback failed: {e}");
            }
        }
        self.in_batch.set(false);
        self.overlay.borrow_mut().clear();
    }

    /// After a panic inside a batch: roll back if a transaction is still open.
    pub fn rollback_if_open(&self) {
        self.rollback();
    }

    /// Creates the user or sets their `active` flag.
    pub fn put_user(&self, user: UserId, active: bool) -> Result<()> {
        let mut stmt = self.db.prepare_cached(
            "INSERT INTO users (id, active) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET active = ?2",
        )?;
        let before = self.view(user)?;
        stmt.execute(params![user.0, active])?;
        let fresh = UserView::new(active, 0, None, 0);
        self.update_view(user, |view| {
            *view = Some(before.map_or(fresh, |v| UserView { active, ..v }))
        });
        Ok(())
    }

    pub fn insert_transaction(
        &self,
        user: UserId,
        amount: i64,
        description: Option<&str>,
        occurred_at_ms: i64,
    ) -> Result<std::result::Result<Transaction, WriteRefusal>> {
        let mut total = self.db.prepare_cached("SELECT total_spent FROM users WHERE id = ?1")?;
        let Some(total_spent) = total.query_row([user.0], |row| row.get::<_, i64>(0)).optional()?
        else {
            return Ok(Err(WriteRefusal::UnknownUser));
        };
        let Some(new_total) = total_spent.checked_add(amount) else {
            return Ok(Err(WriteRefusal::TotalOverflow));
        };
        self.view(user)?;
        self.db
            .prepare_cached("UPDATE users SET total_spent = ?2 WHERE id = ?1")?
            .execute(params![user.0, new_total])?;
        self.db
            .prepare_cached(
                "INSERT INTO transactions (user_id, amount, description, occurred_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![user.0, amount, description, occurred_at_ms])?;
        // No overflow: the period's sum is bounded by the total, which was just checked.
        self.update_view(user, |view| {
            if let Some(v) = view {
                if v.limit.is_some_and(|l| l.covers(occurred_at_ms)) {
                    v.spending = v.spending.saturating_add(amount);
                }
            }
        });
        Ok(Ok(Transaction {
            id: self.db.last_insert_rowid(),
            user,
            amount,
            description: description.map(str::to_string),
            occurred_at_ms,
        }))
    }

    /// Replaces the user's one limit. `UnknownUser` when there is no such user.
    pub fn put_limit(
        &self,
        user: UserId,
        limit: &Limit,
    ) -> Result<std::result::Result<(), WriteRefusal>> {
        if self.view(user)?.is_none() {
            return Ok(Err(WriteRefusal::UnknownUser));
        }
        let mut stmt = self.db.prepare_cached(
            "INSERT OR REPLACE INTO limits (user_id, max_limit, alert_percentage, periode_start, periode_end)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        stmt.execute(params![
            user.0,
            limit.max_limit,
            limit.alert.value(),
            limit.periode_start_ms,
            limit.periode_end_ms
        ])?;
        // A new period: the one place a sum over the user's history is needed.
        let spending = self.spending(user, limit)?;
        self.update_view(user, |view| {
            if let Some(v) = view {
                v.limit = Some(*limit);
                v.spending = spending;
            }
        });
        Ok(Ok(()))
    }

    /// Stores a notification under the user's next id and forgets the ones beyond the kept
    /// window. Returns the new id.
    pub fn insert_notification(&self, user: UserId, data: &str) -> Result<u64> {
        // The next id comes from the cached view, not from `UPDATE … RETURNING`: RETURNING
        // makes SQLite open a statement journal, whose buffer grew and trimmed the heap (brk,
        // page faults) on every write — an eighth of a write's CPU.
        let Some(view) = self.view(user)? else {
            return Err(rusqlite::Error::QueryReturnedNoRows.into());
        };
        let id_kept = view.last_id + 1;
        let id = id_kept as i64;
        self.db
            .prepare_cached("UPDATE users SET last_notification_id = ?2 WHERE id = ?1")?
            .execute(params![user.0, id])?;
        self.update_view(user, |view| {
            if let Some(v) = view {
                v.last_id = id_kept;
            }
        });
        self.db
            .prepare_cached("INSERT INTO notifications (user_id, id, data) VALUES (?1, ?2, ?3)")?
            .execute(params![user.0, id, data])?;
        let oldest_kept = id - KEPT_NOTIFICATIONS as i64 + 1;
        if oldest_kept > 1 {
            self.db
                .prepare_cached("DELETE FROM notifications WHERE user_id = ?1 AND id < ?2")?
                .execute(params![user.0, oldest_kept])?;
        }
        Ok(id.max(0) as u64)
    }

    /// `--demo`: user 13, active, 200000 over the current UTC month with the alert at 85 %, and
    /// (once per month) transactions adding up to 267000.
    pub fn seed_demo(&self, now_ms: i64) -> Result<()> {
        const DEMO_USER: UserId = UserId(13);
        const DEMO_SPENDING: [(i64, &str); 3] =
            [(150_000, "groceries"), (87_000, "electricity"), (30_000, "coffee with the team")];
        let (start, end) = month_bounds_ms(now_ms);
        self.begin()?;
        let seed = || -> Result<()> {
            self.put_user(DEMO_USER, true)?;
            let alert =
                AlertPercentage::new(85.0).ok_or(StoreError::Sql(rusqlite::Error::InvalidQuery))?;
            let limit =
                Limit { max_limit: 200_000, alert, periode_start_ms: start, periode_end_ms: end };
            let _ = self.put_limit(DEMO_USER, &limit)?;
            let marker = format!("demo-transactions:{start}");
            let inserted = self
                .db
                .prepare_cached("INSERT OR IGNORE INTO meta (key, value) VALUES (?1, 'done')")?
                .execute([&marker])?;
            if inserted == 1 {
                for (i, (amount, description)) in DEMO_SPENDING.iter().enumerate() {
                    let at = start + (i as i64 + 1) * 60_000;
                    let _ = self.insert_transaction(DEMO_USER, *amount, Some(description), at)?;
                }
            }
            Ok(())
        };
        match seed() {
            Ok(()) => self.commit(),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }
}

/// `PRAGMA quick_check`: every page read once, in the time of a sequential read of the file.
fn check_integrity(db: &Connection, shown: &str) -> Result<()> {
    let corrupt = |detail: String| {
        StoreError::Refused(format!(
            "the database {shown} is damaged ({detail}); restore it from a backup \
             (see `periode-sse backup` in the README), or move it away to start afresh"
        ))
    };
    let mut stmt = db.prepare("PRAGMA quick_check(5)").map_err(|e| corrupt(e.to_string()))?;
    let findings: Vec<String> = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| corrupt(e.to_string()))?;
    match findings.as_slice() {
        [ok] if ok == "ok" => Ok(()),
        // One line for the operator: SQLite's findings may hold newlines; the first few do.
        _ => Err(corrupt(
            findings.iter().flat_map(|f| f.lines()).take(3).collect::<Vec<_>>().join("; "),
        )),
    }
}

/// Runs the schema steps in a write transaction, which doubles as the start-up's proof that
/// the file (and its directory, for the `-wal`) can really be written.
fn migrate(db: &Connection, shown: &str) -> Result<()> {
    let cannot_write = |e: rusqlite::Error| match StoreError::from(e) {
        StoreError::Full => StoreError::Refused(format!(
            "cannot start on the database {shown}: its disk (or quota) is full"
        )),
        e => StoreError::Refused(format!("cannot write to the database {shown}: {e}")),
    };
    db.execute_batch("BEGIN IMMEDIATE").map_err(cannot_write)?;
    match schema::migrate(db) {
        Ok(done) => {
            db.execute_batch("COMMIT").map_err(cannot_write)?;
            if done.from != done.to && !done.fresh {
                log::info!("database {shown}: schema version {} -> {}", done.from, done.to);
            }
            Ok(())
        }
        Err(e) => {
            let _ = db.execute_batch("ROLLBACK");
            Err(match e {
                schema::MigrateError::Newer(v) => StoreError::Refused(format!(
                    "the database {shown} has schema version {v}, newer than this periode-sse \
                     knows ({}); run the newer periode-sse that wrote it, or restore a backup \
                     made for this version",
                    schema::CURRENT
                )),
                schema::MigrateError::Sql(e) => cannot_write(e),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store(name: &str) -> (Store, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("periode-sse-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        (Store::open(&path).unwrap(), dir)
    }

    /// The loop's reader shares the writer's view cache: a commit's views are the reader's at
    /// once, with no reload; and the reader never writes.
    #[test]
    fn a_reader_sees_commits_through_the_shared_cache_and_cannot_write() {
        let (store, dir) = temp_store("reader");
        let reader = store.open_reader().unwrap();
        let user = UserId(7);
        assert_eq!(reader.user_active(user).unwrap(), None);
        store.begin().unwrap();
        store.put_user(user, true).unwrap();
        store.insert_notification(user, "{}").unwrap();
        store.commit().unwrap();
        assert_eq!(reader.user_active(user).unwrap(), Some(true));
        assert_eq!(reader.last_notification_id(user).unwrap(), 1);
        // What the reader loads itself is what is committed.
        reader.forget(user);
        assert_eq!(reader.user_active(user).unwrap(), Some(true));
        assert_eq!(reader.last_notification_id(user).unwrap(), 1);
        assert!(reader.begin().and_then(|()| reader.put_user(UserId(8), true)).is_err());
        reader.rollback();
        assert!(reader.open_reader().is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn demo_is_idempotent_within_a_month() {
        let (store, dir) = temp_store("demo");
        let now = 1_761_037_745_915; // 2025-10-21
        store.seed_demo(now).unwrap();
        store.seed_demo(now + 1000).unwrap();
        let status = store.active_status(UserId(13), now).unwrap().unwrap();
        assert_eq!(status.current_spending, 267_000);
        assert_eq!(status.percentage_hundredths, 13_350);
        assert!(status.is_alert);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn notifications_keep_the_last_thousand_in_order() {
        let (store, dir) = temp_store("notes");
        store.begin().unwrap();
        store.put_user(UserId(1), true).unwrap();
        for i in 1..=1005u64 {
            assert_eq!(store.insert_notification(UserId(1), &format!("{{\"n\":{i}}}")).unwrap(), i);
        }
        store.commit().unwrap();
        let mut ids = Vec::new();
        store.notifications_after(UserId(1), 0, |id, _| ids.push(id)).unwrap();
        assert_eq!(ids.len(), 1000);
        assert_eq!((ids[0], ids[999]), (6, 1005));
        let mut tail = Vec::new();
        store
            .notifications_after(UserId(1), 1002, |id, data| tail.push((id, data.to_string())))
            .unwrap();
        assert_eq!(
            tail,
            vec![
                (1003, "{\"n\":1003}".into()),
                (1004, "{\"n\":1004}".into()),
                (1005, "{\"n\":1005}".into())
            ]
        );
        assert_eq!(store.last_notification_id(UserId(1)).unwrap(), 1005);
        assert_eq!(store.last_notification_id(UserId(2)).unwrap(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn totals_cannot_overflow_and_unknown_users_are_refused() {
        let (store, dir) = temp_store("overflow");
        store.begin().unwrap();
        store.put_user(UserId(1), true).unwrap();
        assert!(store.insert_transaction(UserId(1), i64::MAX, None, 0).unwrap().is_ok());
        assert_eq!(
            store.insert_transaction(UserId(1), 1, None, 0).unwrap(),
            Err(WriteRefusal::TotalOverflow)
        );
        assert_eq!(
            store.insert_transaction(UserId(9), 1, None, 0).unwrap(),
            Err(WriteRefusal::UnknownUser)
        );
        store.commit().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_cache_follows_commits_and_ignores_rollbacks() {
        let (store, dir) = temp_store("cache");
        let now = 1_761_037_745_915;
        store.seed_demo(now).unwrap();
        let before = store.active_status(UserId(13), now).unwrap().unwrap().current_spending;
        assert_eq!(before, 267_000);
        store.begin().unwrap();
        store.insert_transaction(UserId(13), 1_000, None, now).unwrap().unwrap();
        // Inside the batch reads see the batch's own write.
        assert_eq!(
            store.active_status(UserId(13), now).unwrap().unwrap().current_spending,
            268_000
        );
        store.rollback();
        assert_eq!(
            store.active_status(UserId(13), now).unwrap().unwrap().current_spending,
            267_000
        );
        store.begin().unwrap();
        store.insert_transaction(UserId(13), 2_000, None, now).unwrap().unwrap();
        store.insert_notification(UserId(13), "{}").unwrap();
        store.put_user(UserId(14), false).unwrap();
        store.commit().unwrap();
        assert_eq!(
            store.active_status(UserId(13), now).unwrap().unwrap().current_spending,
            269_000
        );
        assert_eq!(store.last_notification_id(UserId(13)).unwrap(), 1);
        assert_eq!(store.user_active(UserId(14)).unwrap(), Some(false));
        assert_eq!(store.user_active(UserId(15)).unwrap(), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn kept_views_agree_with_sql_after_every_kind_of_write() {
        let (store, dir) = temp_store("views");
        let now = 1_761_037_745_915;
        store.seed_demo(now).unwrap();
        let user = UserId(13);
        let (start, end) = month_bounds_ms(now);
        let check = |store: &Store| {
            let view = store.view(user).unwrap().unwrap();
            let limit = store.limit(user).unwrap().unwrap();
            assert_eq!(view.limit, Some(limit));
            assert_eq!(view.spending, store.spending(user, &limit).unwrap());
        };
        for round in 0..5i64 {
            store.begin().unwrap();
            for k in 0..7i64 {
                // In the period, at both ends, and outside it.
                let at = match k % 4 {
                    0 => start,
                    1 => end,
                    2 => end + 1,
                    _ => start + 1000 * k,
                };
                store.insert_transaction(user, 100 + k + round, None, at).unwrap().unwrap();
            }
            if round == 2 {
                let mut limit = store.limit(user).unwrap().unwrap();
                limit.periode_end_ms += 10_000; // now covers the "outside" ones too
                store.put_limit(user, &limit).unwrap().unwrap();
            }
            store.insert_notification(user, "{}").unwrap();
            if round == 3 {
                store.rollback();
            } else {
                store.commit().unwrap();
            }
            check(&store);
        }
        assert_eq!(store.last_notification_id(user).unwrap(), 4);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn one_store_per_file_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let (store, dir) = temp_store("lock");
        let path = dir.join("t.db");
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(
            err.contains("in use by another periode-sse server") && err.contains("t.db"),
            "{err}"
        );
        for file in ["t.db", "t.db-wal", "t.db-shm"] {
            let mode = std::fs::metadata(dir.join(file)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
        drop(store);
        let again = Store::open(&path).unwrap();
        assert_eq!(schema::version(&again.db).unwrap(), schema::CURRENT);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_deleted_or_replaced_file_refuses_commits() {
        for replace in [false, true] {
            let (store, dir) = temp_store(if replace { "replaced" } else { "deleted" });
            store.begin().unwrap();
            store.put_user(UserId(1), true).unwrap();
            store.commit().unwrap();
            for file in ["t.db", "t.db-wal", "t.db-shm"] {
                std::fs::remove_file(dir.join(file)).unwrap();
            }
            if replace {
                std::fs::write(dir.join("t.db"), b"").unwrap();
            }
            store.begin().unwrap();
            store.put_user(UserId(2), true).unwrap();
            let err = store.commit().unwrap_err();
            assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
            assert!(store.db.is_autocommit());
            // Nothing of the refused batch is believed: the cache holds what was committed.
            assert_eq!(store.user_active(UserId(2)).unwrap(), None);
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn a_deleted_wal_alone_refuses_commits() {
        let (store, dir) = temp_store("wal");
        store.begin().unwrap();
        store.put_user(UserId(1), true).unwrap();
        store.commit().unwrap();
        std::fs::remove_file(dir.join("t.db-wal")).unwrap();
        store.begin().unwrap();
        store.put_user(UserId(2), true).unwrap();
        let err = store.commit().unwrap_err().to_string();
        assert!(err.contains("write-ahead log") && err.contains("t.db-wal"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_full_disk_is_its_own_error_and_leaves_no_transaction_open() {
        let (store, dir) = temp_store("full");
        let pages: i64 = store.db.pragma_query_value(None, "page_count", |r| r.get(0)).unwrap();
        store.db.pragma_update(None, "max_page_count", pages + 1).unwrap();
        let mut failure = None;
        for round in 0..200 {
            store.begin().unwrap();
            store.put_user(UserId(1), true).unwrap();
            let long = "x".repeat(4000);
            let step = store.insert_notification(UserId(1), &long).and_then(|_| store.commit());
            if let Err(e) = step {
                store.rollback(); // what the server does: must find nothing left to undo
                failure = Some((round, e));
                break;
            }
        }
        let (_, err) = failure.expect("the page limit was never reached");
        assert!(matches!(err, StoreError::Full), "{err:?}");
        assert!(store.db.is_autocommit());
        store.db.pragma_update(None, "max_page_count", 1_000_000).unwrap();
        store.begin().unwrap();
        store.put_user(UserId(2), true).unwrap();
        store.commit().unwrap();
        assert_eq!(store.user_active(UserId(2)).unwrap(), Some(true));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn read_only_corrupt_and_newer_files_are_refused_untouched() {
        use std::os::unix::fs::PermissionsExt;
        let (store, dir) = temp_store("refused");
        let path = dir.join("t.db");
        store.begin().unwrap();
        store.put_user(UserId(1), true).unwrap();
        store.commit().unwrap();
        drop(store);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("read-only") || err.contains("cannot be written"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

        let newer = Connection::open(&path).unwrap();
        newer.execute_batch("PRAGMA user_version = 7").unwrap();
        drop(newer);
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("schema version 7, newer"), "{err}");
        let still = Connection::open(&path).unwrap();
        assert_eq!(schema::version(&still).unwrap(), 7);
        drop(still);

        // Garbage over every page after the first.
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 4096.min(bytes.len());
        for b in bytes[page..].iter_mut() {
            *b = 0xA5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("damaged"), "{err}");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("damaged"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn directories_and_missing_parents_are_named() {
        let dir =
            std::env::temp_dir().join(format!("periode-sse-store-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let err = Store::open(&dir).err().unwrap().to_string();
        assert!(err.contains("is a directory"), "{err}");
        let err = Store::open(&dir.join("no/such/t.db")).err().unwrap().to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(!dir.join("no").exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
