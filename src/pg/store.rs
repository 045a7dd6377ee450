//! The PostgreSQL store of cluster mode: the same reads and writes as `store::Store` (SQLite),
//! under the same method names, so that `writes::apply` can drive either one.
//!
//! It blocks its caller, and must never run on the loop thread: it is owned by the store
//! thread, which runs a current-thread tokio runtime inside (`tokio-postgres`) and bounds
//! every call with a deadline, so that a request that needs a database which is gone fails
//! within 2 s (`CONNECT_TIMEOUT` plus `CALL_DEADLINE`), never hangs.
//!
//! Writes happen between `begin` and `commit`: one PostgreSQL transaction per batch of
//! writes (the group commit). Every write first locks its user's row, so that what it reads
//! afterwards (the limit, the period's spending) includes every other node's committed writes
//! of that user, and that ids are handed out in commit order: `insert_notification` takes the
//! next id with `UPDATE users SET last_notification_id = last_notification_id + 1 …
//! RETURNING`, so a user's ids are contiguous across nodes. Each write sends its NOTIFY
//! (`payload.rs`) in the same transaction: PostgreSQL delivers it only after the commit, so a
//! notification is never heard before it is durable. A batch must take its user rows in one
//! order (ascending user id) on every node, or two nodes' batches can deadlock; the server
//! then aborts one of them after `deadlock_timeout` (`PgError::Conflict`), and a pipelined
//! batch (`batch.rs`) is run again by `writes::apply_pg`, within the request's 2 s.
//!
//! It keeps no cache of users' views: every read queries. The server's loop keeps that
//! cache (`backend::Reader`), filled by this store's batches and loads and kept true by the
//! change feed; a second one here would only have to be kept true the same way.
//!
//! A lost connection is made again by the next call, no sooner than a backoff (50 ms
//! doubling to 1 s) after the last failed attempt; meanwhile calls fail at once with
//! `Unavailable`. A connection lost inside a batch fails the rest of that batch, which the
//! caller rolls back: a batch never continues on a new connection outside its transaction.

use super::connect::{connect_async, CONNECT_TIMEOUT};
use super::error::{classify, PgError};
use super::payload::{Event, CHANNEL};
use super::schema;
use super::uri::PgUri;
use crate::backend::{self, View};
use crate::domain::UserId;
use crate::jwt::Claims;
use crate::spending::{AlertPercentage, Limit, Status};
use crate::store::{Transaction, WriteRefusal, KEPT_NOTIFICATIONS};
use crate::tickets::{MintError, Minted, Refusal};
use crate::time::month_bounds_ms;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

/// The longest one call may wait for the server once connected.
pub const CALL_DEADLINE: Duration = Duration::from_millis(1000);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often the expired stream tickets are swept: they are refused by their expiry anyway,
/// so this only bounds the table's size.
const TICKET_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// `application_name` of the store's connection.
pub const APPLICATION: &str = "periode-sse store";

pub type Result<T> = std::result::Result<T, PgError>;
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// One user's view in one query: the row, the limit and the period's sum (kept in `spent`).
const LOAD_VIEW: &str = "
SELECT u.active, u.last_notification_id, l.max_limit, l.alert_percentage, l.periode_start,
       l.periode_end, COALESCE(l.spent, 0)
FROM users u LEFT JOIN limits l ON l.user_id = u.id
WHERE u.id = $1";

/// `x` (a NUMERIC) clamped into BIGINT: sums saturate, as the SQLite view's
/// `saturating_add`, instead of failing the batch.
macro_rules! saturated {
    ($x:literal) => {
        concat!("LEAST(GREATEST(", $x, ", -9223372036854775808), 9223372036854775807)::BIGINT")
    };
}
pub(super) use saturated;

#[derive(Debug, Default)]
struct Batch {
    /// Users whose spending changed with no notification (yet): they get a `v` event.
    spending_changed: BTreeSet<UserId>,
    /// The connection was lost inside the batch: everything fails until `rollback`.
    broken: bool,
}

pub struct PgStore {
    uri: PgUri,
    runtime: tokio::runtime::Runtime,
    /// Shared with the call in flight (an `Arc`, so that its future owns what it borrows).
    client: RefCell<Option<Arc<Client>>>,
    statements: RefCell<HashMap<&'static str, Statement>>,
    /// No connect attempt before this instant; the last failure is repeated meanwhile.
    retry: Cell<Option<Instant>>,
    backoff: Cell<Duration>,
    last_failure: RefCell<Option<PgError>>,
    in_batch: Cell<bool>,
    batch: RefCell<Batch>,
    /// When expired stream tickets were last swept (`None`: not yet).
    swept_at: Cell<Option<Instant>>,
    /// The server process of the current connection: the NOTIFYs this store sends come back
    /// to every listener with it (`Notification::process_id`).
    pid: Cell<Option<i32>>,
    /// While a batch is run again after a conflict: no call may wait past this instant
    /// (`bound_calls`), so that the retries stay inside the 2 s a request is allowed.
    calls_until: Cell<Option<Instant>>,
    /// Batches run again after a conflict, since the store opened.
    retried: Cell<u64>,
}

impl PgStore {
    /// Connects and creates the schema if needed. Every error is a start-up error.
    pub fn open(uri: &PgUri) -> Result<PgStore> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| PgError::Config(format!("cannot start the client runtime: {e}")))?;
        let store = PgStore {
            uri: uri.clone(),
            runtime,
            client: RefCell::new(None),
            statements: RefCell::new(HashMap::new()),
            retry: Cell::new(None),
            backoff: Cell::new(FIRST_BACKOFF),
            last_failure: RefCell::new(None),
            in_batch: Cell::new(false),
            batch: RefCell::new(Batch::default()),
            swept_at: Cell::new(None),
            pid: Cell::new(None),
            calls_until: Cell::new(None),
            retried: Cell::new(0),
        };
        let mut client = store.connect_once()?;
        let ensured = store.runtime.block_on(async {
            // Several nodes may wait here for the schema lock; that is the one slow statement.
            tokio::time::timeout(4 * CALL_DEADLINE, async {
                schema::ensure(&mut client, uri).await?;
                // Beside the schema: the stream tickets every node redeems (`tickets.rs`).
                super::tickets::ensure_table(&mut client).await.map_err(|e| classify(uri, &e))
            })
            .await
        });
        match ensured {
            Ok(result) => result?,
            Err(_) => {
                return Err(PgError::Unavailable("the schema could not be created in time".into()))
            }
        }
        store.learn_pid(&client);
        *store.client.borrow_mut() = Some(Arc::new(client));
        Ok(store)
    }

    /// The server process of the current connection, if known.
    pub fn backend_pid(&self) -> Option<i32> {
        self.pid.get()
    }

    /// Asks a new connection for its server process id. Without it (no answer in time) the
    /// loop takes this store's NOTIFYs for another node's: a reload, nothing worse.
    fn learn_pid(&self, client: &Client) {
        let asked = self.runtime.block_on(async {
            tokio::time::timeout(CALL_DEADLINE, client.query_one("SELECT pg_backend_pid()", &[]))
                .await
        });
        self.pid.set(match asked {
            Ok(Ok(row)) => row.try_get::<_, i32>(0).ok(),
            _ => None,
        });
    }

    /// The URI, masked when displayed.
    pub fn uri(&self) -> &PgUri {
        &self.uri
    }

    fn connect_once(&self) -> Result<Client> {
        let uri = &self.uri;
        let attempt = self.runtime.block_on(async {
            tokio::time::timeout(CONNECT_TIMEOUT, connect_async(uri, APPLICATION)).await
        });
        match attempt {
            Ok(result) => result,
            Err(_) => Err(PgError::Unavailable(format!(
                "cannot connect to {uri}: no answer within {} ms",
                CONNECT_TIMEOUT.as_millis()
            ))),
        }
    }

    /// Makes sure there is a live connection, connecting again if the backoff allows.
    pub(super) fn ensure_connected(&self) -> Result<()> {
        if self.batch.borrow().broken {
            return Err(PgError::Unavailable("the connection was lost during this batch".into()));
        }
        if self.client.borrow().as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        if self.in_batch.get() {
            self.batch.borrow_mut().broken = true;
            return Err(PgError::Unavailable("the connection was lost during this batch".into()));
        }
        let now = Instant::now();
        if self.retry.get().is_some_and(|at| now < at) {
            let last = self.last_failure.borrow().clone();
            return Err(last.unwrap_or_else(|| PgError::Unavailable("reconnecting".into())));
        }
        match self.connect_once() {
            Ok(client) => {
                self.learn_pid(&client);
                *self.client.borrow_mut() = Some(Arc::new(client));
                self.statements.borrow_mut().clear();
                self.retry.set(None);
                self.backoff.set(FIRST_BACKOFF);
                *self.last_failure.borrow_mut() = None;
                Ok(())
            }
            Err(e) => {
                // At run time even a refused login is "unavailable": requests get 503 and
                // the store keeps trying, as it would for a server that is down.
                let e = match e {
                    PgError::Config(m) => PgError::Unavailable(m),
                    other => other,
                };
                let backoff = self.backoff.get();
                self.retry.set(Some(now + backoff));
                self.backoff.set((backoff * 2).min(MAX_BACKOFF));
                *self.last_failure.borrow_mut() = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Runs one client call under the deadline and sorts its outcome; a lost connection is
    /// dropped here, so that the next call makes a new one.
    pub(super) fn call<T, F>(&self, run: impl FnOnce(Arc<Client>) -> F) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        self.ensure_connected()?;
        let Some(client) = self.client.borrow().clone() else {
            return Err(PgError::Unavailable("not connected".into()));
        };
        let wait = match self.calls_until.get() {
            Some(until) => until.saturating_duration_since(Instant::now()).min(CALL_DEADLINE),
            None => CALL_DEADLINE,
        };
        let outcome =
            self.runtime.block_on(async { tokio::time::timeout(wait, run(client)).await });
        let error = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => classify(&self.uri, &e),
            Err(_) => PgError::Unavailable(format!(
                "no answer from {} within {} ms",
                self.uri,
                wait.as_millis()
            )),
        };
        let closed = self.client.borrow().as_ref().is_none_or(|c| c.is_closed());
        if error.is_unavailable() || closed {
            *self.client.borrow_mut() = None;
            if self.in_batch.get() {
                self.batch.borrow_mut().broken = true;
            }
        }
        Err(error)
    }

    /// Bounds every call until `until` is cleared (`None`): a call then waits at most until
    /// that instant, and fails as `Unavailable` past it, as any call past `CALL_DEADLINE`.
    pub(crate) fn bound_calls(&self, until: Option<Instant>) {
        self.calls_until.set(until);
    }

    /// Counts a batch run again after a conflict (`writes::apply_pg`).
    pub(crate) fn count_retry(&self) {
        self.retried.set(self.retried.get().saturating_add(1));
    }

    /// How many batches were run again after a conflict since the store opened: rare, and a
    /// figure worth watching when it is not (`docs/cluster.md`, "Deadlocks").
    pub fn retried_batches(&self) -> u64 {
        self.retried.get()
    }

    /// The prepared statement for `sql`, prepared once per connection.
    pub(super) fn statement(&self, sql: &'static str) -> Result<Statement> {
        if let Some(statement) = self.statements.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.call(|c| async move { c.prepare(sql).await })?;
        self.statements.borrow_mut().insert(sql, statement.clone());
        Ok(statement)
    }

    fn rows(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        let statement = self.statement(sql)?;
        self.call(|c| async move { c.query(&statement, params).await })
    }

    fn row(&self, sql: &'static str, params: Params<'_>) -> Result<Option<Row>> {
        Ok(self.rows(sql, params)?.into_iter().next())
    }

    fn simple(&self, sql: &'static str) -> Result<()> {
        self.call(|c| async move { c.batch_execute(sql).await })
    }

    pub(super) fn get<'r, T: tokio_postgres::types::FromSql<'r>>(
        &self,
        row: &'r Row,
        i: usize,
    ) -> Result<T> {
        row.try_get(i).map_err(|e| classify(&self.uri, &e))
    }

    /// Is the database there? A cheap round trip, for `periode_sse_store_up`.
    pub fn ping(&self) -> Result<()> {
        self.simple("SELECT 1")
    }

    /// A stream ticket for the claims of a verified token, in the table every node shares.
    pub fn mint_ticket(&self, claims: Claims) -> Result<std::result::Result<Minted, MintError>> {
        self.call(|c| async move { super::tickets::mint(&c, claims).await })
    }

    /// Redeems a presented ticket by its key (`tickets::shared_key`): once, on any node.
    pub fn redeem_ticket(&self, key: [u8; 32]) -> Result<std::result::Result<Claims, Refusal>> {
        self.call(|c| async move { super::tickets::redeem_key(&c, &key).await })
    }

    /// Deletes the expired tickets once `TICKET_SWEEP_EVERY` has passed since the last time
    /// (minting already drops a user's own; this is for users who stopped minting). A
    /// failure is left for the next time: the rows only wait a little longer.
    pub fn sweep_tickets_if_due(&self) {
        let now = Instant::now();
        if self.swept_at.get().is_some_and(|at| now < at + TICKET_SWEEP_EVERY) {
            return;
        }
        self.swept_at.set(Some(now));
        if let Err(e) = self.call(|c| async move { super::tickets::sweep(&c).await }) {
            log::debug!("expired stream tickets not swept this time: {e}");
        }
    }

    fn view(&self, user: UserId) -> Result<Option<View>> {
        self.load_view(user)
    }

    /// The user's view in one query; `None` when there is no such user.
    pub fn load_view_now(&self, user: UserId) -> Result<Option<View>> {
        self.load_view(user)
    }

    fn load_view(&self, user: UserId) -> Result<Option<View>> {
        let Some(row) = self.row(LOAD_VIEW, &[&user.0])? else { return Ok(None) };
        let last: i64 = self.get(&row, 1)?;
        let limit = self.limit_from(&row, 2)?;
        let spending: i64 = self.get(&row, 6)?;
        let spending = if limit.is_some() { spending } else { 0 };
        Ok(Some(View::new(self.get(&row, 0)?, last.max(0) as u64, limit, spending)))
    }

    /// The limit in the four columns from `first`, all NULL when there is none.
    pub(super) fn limit_from(&self, row: &Row, first: usize) -> Result<Option<Limit>> {
        let max_limit: Option<i64> = self.get(row, first)?;
        let alert: Option<f64> = self.get(row, first + 1)?;
        let start: Option<i64> = self.get(row, first + 2)?;
        let end: Option<i64> = self.get(row, first + 3)?;
        let (Some(max_limit), Some(alert), Some(start), Some(end)) = (max_limit, alert, start, end)
        else {
            return Ok(None);
        };
        let alert = AlertPercentage::new(alert)
            .ok_or_else(|| PgError::Sql(format!("stored alert percentage {alert} is invalid")))?;
        Ok(Some(Limit { max_limit, alert, periode_start_ms: start, periode_end_ms: end }))
    }

    /// `None` when the user does not exist.
    pub fn user_active(&self, user: UserId) -> Result<Option<bool>> {
        Ok(backend::user_active(self.view(user)?))
    }

    pub fn limit(&self, user: UserId) -> Result<Option<Limit>> {
        let sql = "SELECT max_limit, alert_percentage, periode_start, periode_end \
                   FROM limits WHERE user_id = $1";
        match self.row(sql, &[&user.0])? {
            Some(row) => self.limit_from(&row, 0),
            None => Ok(None),
        }
    }

    /// The sum of the user's amounts over the limit's period (both ends inclusive).
    pub fn spending(&self, user: UserId, limit: &Limit) -> Result<i64> {
        let sql = "SELECT COALESCE(SUM(amount), 0)::BIGINT FROM transactions \
                   WHERE user_id = $1 AND occurred_at BETWEEN $2 AND $3";
        let params: Params<'_> = &[&user.0, &limit.periode_start_ms, &limit.periode_end_ms];
        match self.row(sql, params)? {
            Some(row) => self.get(&row, 0),
            None => Ok(0),
        }
    }

    /// The status against the limit whose period covers `now_ms`, if there is one.
    pub fn active_status(&self, user: UserId, now_ms: i64) -> Result<Option<Status>> {
        Ok(backend::active_status(self.view(user)?, now_ms))
    }

    pub fn status_for(&self, user: UserId, limit: Limit) -> Result<Status> {
        Ok(Status::compute(self.spending(user, &limit)?, limit))
    }

    pub fn last_notification_id(&self, user: UserId) -> Result<u64> {
        Ok(backend::last_notification_id(self.view(user)?))
    }

    /// Calls `each` with every kept notification of `user` whose id is above `after`, oldest
    /// first: a stream's replay, and a node's catch-up.
    pub fn notifications_after(
        &self,
        user: UserId,
        after: u64,
        mut each: impl FnMut(u64, &str),
    ) -> Result<()> {
        let sql = "SELECT id, data FROM notifications WHERE user_id = $1 AND id > $2 ORDER BY id";
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        for row in self.rows(sql, &[&user.0, &after])? {
            let id: i64 = self.get(&row, 0)?;
            let data: &str = self.get(&row, 1)?;
            each(id.max(0) as u64, data);
        }
        Ok(())
    }

    pub fn begin(&self) -> Result<()> {
        *self.batch.borrow_mut() = Batch::default();
        self.simple("BEGIN")?;
        self.in_batch.set(true);
        Ok(())
    }

    /// Sends the `v` events still owed, then commits: the batch's NOTIFYs go out now.
    pub fn commit(&self) -> Result<()> {
        let owed: Vec<String> = self
            .batch
            .borrow()
            .spending_changed
            .iter()
            .map(|user| Event::SpendingChanged { user: *user }.encode())
            .collect();
        if !owed.is_empty() {
            let sql = "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload";
            self.rows(sql, &[&CHANNEL, &owed])?;
        }
        self.simple("COMMIT")?;
        self.end_batch();
        Ok(())
    }

    /// Undoes the batch (if the connection is gone, so is the transaction).
    pub fn rollback(&self) {
        if !self.batch.borrow().broken && self.client.borrow().is_some() {
            if let Err(e) = self.simple("ROLLBACK") {
                log::error!("rollback failed: {e}");
            }
        }
        self.end_batch();
    }

    /// After a panic inside a batch: roll back if a transaction is still open.
    pub fn rollback_if_open(&self) {
        if self.in_batch.get() {
            self.rollback();
        }
    }

    /// A pipelined batch (`batch.rs`) begins: its `BEGIN` goes with its first requests.
    pub(super) fn begin_pipelined(&self) {
        *self.batch.borrow_mut() = Batch::default();
        self.in_batch.set(true);
    }

    /// A pipelined batch has committed.
    pub(super) fn end_pipelined(&self) {
        self.end_batch();
    }

    fn end_batch(&self) {
        self.in_batch.set(false);
        *self.batch.borrow_mut() = Batch::default();
    }

    /// Creates the user or sets their `active` flag, and tells every node.
    pub fn put_user(&self, user: UserId, active: bool) -> Result<()> {
        let sql = "WITH up AS (INSERT INTO users (id, active) VALUES ($1, $2) \
                   ON CONFLICT (id) DO UPDATE SET active = $2) SELECT pg_notify($3, $4)";
        let payload = Event::ActiveChanged { user, active }.encode();
        self.rows(sql, &[&user.0, &active, &CHANNEL, &payload])?;
        Ok(())
    }

    pub fn insert_transaction(
        &self,
        user: UserId,
        amount: i64,
        description: Option<&str>,
        occurred_at_ms: i64,
    ) -> Result<std::result::Result<Transaction, WriteRefusal>> {
        let lock = "SELECT total_spent FROM users WHERE id = $1 FOR UPDATE";
        let Some(row) = self.row(lock, &[&user.0])? else {
            return Ok(Err(WriteRefusal::UnknownUser));
        };
        let total_spent: i64 = self.get(&row, 0)?;
        let Some(new_total) = total_spent.checked_add(amount) else {
            return Ok(Err(WriteRefusal::TotalOverflow));
        };
        const SQL: &str = concat!(
            "WITH total AS (UPDATE users SET total_spent = $2 WHERE id = $1), ",
            "spent AS (UPDATE limits SET spent = ",
            saturated!("spent::NUMERIC + $3::BIGINT"),
            " WHERE user_id = $1 AND $5::BIGINT BETWEEN periode_start AND periode_end) ",
            "INSERT INTO transactions (user_id, amount, description, occurred_at) ",
            "VALUES ($1, $3, $4, $5) RETURNING id"
        );
        let sql = SQL;
        let params: Params<'_> = &[&user.0, &new_total, &amount, &description, &occurred_at_ms];
        let row = self
            .row(sql, params)?
            .ok_or_else(|| PgError::Sql("INSERT … RETURNING returned no row".into()))?;
        let id: i64 = self.get(&row, 0)?;
        self.batch.borrow_mut().spending_changed.insert(user);
        Ok(Ok(Transaction {
            id,
            user,
            amount,
            description: description.map(str::to_string),
            occurred_at_ms,
        }))
    }

    /// Replaces the user's one limit, and tells every node. `UnknownUser` when there is no
    /// such user.
    pub fn put_limit(
        &self,
        user: UserId,
        limit: &Limit,
    ) -> Result<std::result::Result<(), WriteRefusal>> {
        if self.row("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user.0])?.is_none() {
            return Ok(Err(WriteRefusal::UnknownUser));
        }
        // A new period: the one place the user's history is summed.
        const SQL: &str = concat!(
            "WITH up AS (INSERT INTO limits ",
            "(user_id, max_limit, alert_percentage, periode_start, periode_end, spent) ",
            "SELECT $1::BIGINT, $2::BIGINT, $3::DOUBLE PRECISION, $4::BIGINT, $5::BIGINT, ",
            saturated!("COALESCE(SUM(amount), 0)"),
            " FROM transactions WHERE user_id = $1 AND occurred_at BETWEEN $4 AND $5 ",
            "ON CONFLICT (user_id) DO UPDATE SET max_limit = EXCLUDED.max_limit, ",
            "alert_percentage = EXCLUDED.alert_percentage, ",
            "periode_start = EXCLUDED.periode_start, periode_end = EXCLUDED.periode_end, ",
            "spent = EXCLUDED.spent) ",
            "SELECT pg_notify($6, $7)"
        );
        let sql = SQL;
        let payload = Event::LimitChanged { user }.encode();
        let alert = limit.alert.value();
        let params: Params<'_> = &[
            &user.0,
            &limit.max_limit,
            &alert,
            &limit.periode_start_ms,
            &limit.periode_end_ms,
            &CHANNEL,
            &payload,
        ];
        self.rows(sql, params)?;
        Ok(Ok(()))
    }

    /// Stores a notification under the user's next id (from the user's row, under its lock:
    /// contiguous across nodes), forgets the ones beyond the kept window and sends it to
    /// every node. Returns the new id.
    pub fn insert_notification(&self, user: UserId, data: &str) -> Result<u64> {
        let next = "UPDATE users SET last_notification_id = last_notification_id + 1 \
                    WHERE id = $1 RETURNING last_notification_id";
        let row = self
            .row(next, &[&user.0])?
            .ok_or_else(|| PgError::Sql(format!("no user {user} to notify")))?;
        let id: i64 = self.get(&row, 0)?;
        let id_kept = id.max(0) as u64;
        let oldest_kept = id - KEPT_NOTIFICATIONS as i64 + 1;
        let payload = Event::Notification { user, id: id_kept, data: data.to_string() }.encode();
        let sql =
            "WITH ins AS (INSERT INTO notifications (user_id, id, data) VALUES ($1, $2, $3)), \
                   old AS (DELETE FROM notifications WHERE user_id = $1 AND id < $4) \
                   SELECT pg_notify($5, $6)";
        self.rows(sql, &[&user.0, &id, &data, &oldest_kept, &CHANNEL, &payload])?;
        // This notification tells the other nodes that the view changed.
        self.batch.borrow_mut().spending_changed.remove(&user);
        Ok(id_kept)
    }

    /// `--demo`: user 13, active, 200000 over the current UTC month with the alert at 85 %, and
    /// (once per month, whichever node does it first) transactions adding up to 267000.
    pub fn seed_demo(&self, now_ms: i64) -> Result<()> {
        const DEMO_USER: UserId = UserId(13);
        const DEMO_SPENDING: [(i64, &str); 3] =
            [(150_000, "groceries"), (87_000, "electricity"), (30_000, "coffee with the team")];
        let (start, end) = month_bounds_ms(now_ms);
        self.begin()?;
        let seed = || -> Result<()> {
            self.put_user(DEMO_USER, true)?;
            let alert = AlertPercentage::new(85.0)
                .ok_or_else(|| PgError::Sql("85 is not a valid alert percentage".into()))?;
            let limit =
                Limit { max_limit: 200_000, alert, periode_start_ms: start, periode_end_ms: end };
            let _ = self.put_limit(DEMO_USER, &limit)?;
            let marker = format!("demo-transactions:{start}");
            let sql = "INSERT INTO meta (key, value) VALUES ($1, 'done') \
                       ON CONFLICT (key) DO NOTHING RETURNING key";
            if self.row(sql, &[&marker])?.is_some() {
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
