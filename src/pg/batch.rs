//! A whole batch of writes in two round trips, whatever its size: the group commit of
//! cluster mode.
//!
//! `tokio-postgres` pipelines the requests whose futures are polled together: they leave on
//! the socket one after the other without waiting for answers, and the server runs them in
//! order. So no statement may need an earlier one's answer on the client; the arithmetic is
//! in SQL, and a batch is two pipelines:
//!
//! 1. `BEGIN`, one statement that locks every existing user row of the batch in ascending id
//!    (`FOR UPDATE` below an `ORDER BY`: the rows are locked in sort order, the same order on
//!    every node), then one statement per write. A `User` write may *insert* its row, which
//!    takes that row's lock when the insert runs, not in the lock statement: had the lock
//!    statement taken the larger ids first, a batch that creates user 5 while writing for
//!    user 7 would hold 7 and wait for 5 while another node's batch held 5 (created and
//!    committed meanwhile by a third) and waited for 7 — the deadlock of two nodes creating
//!    users at once. So the lock statement is cut into segments that each end with a user
//!    the batch creates (`lock_segments`): each segment's lock statement goes just before its
//!    first write, and every row, new or not, is taken in ascending id, in the same pipeline
//!    (no extra round trip; a batch without a `User` write has one lock statement, as
//!    before). A deadlock with a client that locks in another order (or a serialization
//!    failure) can still happen; `writes::apply_pg` runs such a batch again. Under READ
//!    COMMITTED each statement has its own snapshot, taken after the lock statement
//!    returned: it sees every commit of those users by any node. Each write's
//!    statement checks its refusal (unknown user, total overflow) in SQL, makes its change
//!    and returns the user's state after it (active, limit, the period's spending, the last
//!    notification id), which is all the answer and the notification need. It reads the
//!    user's row `FOR UPDATE` itself, a no-op for a row the lock statement took: a user
//!    another node created after that statement's snapshot was not locked by it, and read
//!    without a lock, its last id could be older than a third node's commit the write
//!    then waits for, and the batch would give out that node's id again.
//! 2. One statement for all the notifications (their ids, the kept window, the users' last
//!    ids) and every NOTIFY of the batch in write order, then `COMMIT`.
//!
//! The notification data is made on the client between the two (`writes::apply_pg`): it is
//! the exact text SQLite's path makes. Ids are `last_notification_id + 1, + 2, …` per user,
//! from the row read under the lock, which is held until the commit: contiguous across
//! nodes, as before. A refusal is not an error (no row, or a NULL id), so it never aborts the
//! transaction; any error fails the whole batch, which the caller rolls back (and, after a
//! `PgError::Conflict`, runs again).
//!
//! The period's spending is `limits.spent` (schema version 2), an incremental sum kept under
//! the row lock: a transaction inside the limit's period adds its amount (saturating, as the
//! SQLite view does), a new limit sums the history of its period once (as SQLite does). An
//! index that covers the sum (`(user_id, occurred_at) INCLUDE (amount)`) was the other way;
//! it still reads every row of the period on every write, which grows with the history, and
//! its index-only scans need a visibility map that a table written this often rarely has.

use super::payload::CHANNEL;
use super::store::{saturated, PgStore, Result};
use crate::api::WriteOp;
use crate::domain::UserId;
use crate::spending::Limit;
use crate::store::{Transaction, WriteRefusal, KEPT_NOTIFICATIONS};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// A segment's users, locked in ascending id (existing rows only: a new user's row is
/// created, and so locked, by its own write, the segment's last; see `lock_segments`).
pub(super) const LOCK: &str =
    "SELECT id FROM users WHERE id = ANY($1::BIGINT[]) ORDER BY id FOR UPDATE";

/// A transaction: refused without a row (unknown user) or with a NULL id (total overflow).
pub(super) const TRANSACTION: &str = concat!(
    "WITH u AS (SELECT id, active, last_notification_id, total_spent FROM users ",
    "WHERE id = $1::BIGINT FOR UPDATE), ",
    "ok AS (UPDATE users SET total_spent = users.total_spent + $2::BIGINT FROM u ",
    "WHERE users.id = u.id AND u.total_spent::NUMERIC + $2::BIGINT ",
    "BETWEEN -9223372036854775808 AND 9223372036854775807 RETURNING users.id), ",
    "tx AS (INSERT INTO transactions (user_id, amount, description, occurred_at) ",
    "SELECT id, $2::BIGINT, $3::TEXT, $4::BIGINT FROM ok RETURNING id), ",
    "lim AS (UPDATE limits SET spent = ",
    saturated!("spent::NUMERIC + $2::BIGINT"),
    " WHERE user_id IN (SELECT id FROM ok) AND $4::BIGINT BETWEEN periode_start AND periode_end ",
    "RETURNING spent) ",
    "SELECT u.active, u.last_notification_id, (SELECT id FROM tx), l.max_limit, ",
    "l.alert_percentage, l.periode_start, l.periode_end, ",
    "COALESCE((SELECT spent FROM lim), l.spent, 0) ",
    "FROM u LEFT JOIN limits l ON l.user_id = u.id"
);

/// A new limit: refused without a row (unknown user). Its period's history is summed once.
pub(super) const LIMIT: &str = concat!(
    "WITH u AS (SELECT id, active, last_notification_id FROM users WHERE id = $1::BIGINT ",
    "FOR UPDATE), ",
    "s AS (SELECT ",
    saturated!("COALESCE(SUM(amount), 0)"),
    " AS spent FROM transactions WHERE user_id = $1::BIGINT ",
    "AND occurred_at BETWEEN $4::BIGINT AND $5::BIGINT), ",
    "up AS (INSERT INTO limits ",
    "(user_id, max_limit, alert_percentage, periode_start, periode_end, spent) ",
    "SELECT u.id, $2::BIGINT, $3::DOUBLE PRECISION, $4::BIGINT, $5::BIGINT, s.spent FROM u, s ",
    "ON CONFLICT (user_id) DO UPDATE SET max_limit = EXCLUDED.max_limit, ",
    "alert_percentage = EXCLUDED.alert_percentage, periode_start = EXCLUDED.periode_start, ",
    "periode_end = EXCLUDED.periode_end, spent = EXCLUDED.spent) ",
    "SELECT u.active, u.last_notification_id, s.spent FROM u, s"
);

/// Creates the user or sets their flag; the limit as it stands.
pub(super) const USER: &str = concat!(
    "WITH up AS (INSERT INTO users (id, active) VALUES ($1::BIGINT, $2::BOOLEAN) ",
    "ON CONFLICT (id) DO UPDATE SET active = EXCLUDED.active RETURNING last_notification_id) ",
    "SELECT (SELECT last_notification_id FROM up), l.max_limit, l.alert_percentage, ",
    "l.periode_start, l.periode_end, COALESCE(l.spent, 0) ",
    "FROM (SELECT 1) AS one LEFT JOIN limits l ON l.user_id = $1::BIGINT"
);

/// Every notification of the batch, the users' last ids, the kept window, and every NOTIFY
/// in write order (a set-returning function over an array runs in the array's order).
///
/// The window is trimmed by its range: a user's ids are contiguous across batches, so the
/// rows this batch pushes out of the window are exactly those after the last batch's
/// `last - kept` and up to this one's, `(first - 1 - kept, last - kept]`. A range bounded on
/// both sides reads only those rows through the primary key. Bounded below only (as this
/// was, `id <= last - kept`), the index scan starts at the user's oldest entry and walks
/// every entry of a row deleted since the last vacuum, one per notification; and the
/// planner, estimating a third of the user's rows for it, chose a hash join over a
/// sequential scan of the whole table instead: every batch read every user's kept
/// notifications (docs/cluster.md, "Session 7"). A user given more than
/// `KEPT_NOTIFICATIONS` in one batch (rows of this statement are not visible to its own
/// DELETE) does not store the ones already out of the window; they are still pushed and
/// NOTIFYed.
pub(super) const NOTES: &str = concat!(
    "WITH n AS (SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[]) ",
    "AS n (user_id, id, data)), ",
    "last AS (SELECT user_id, MIN(id) AS first, MAX(id) AS id FROM n GROUP BY user_id), ",
    "ins AS (INSERT INTO notifications (user_id, id, data) SELECT n.user_id, n.id, n.data ",
    "FROM n JOIN last ON last.user_id = n.user_id WHERE n.id > last.id - $4::BIGINT), ",
    "ids AS (UPDATE users SET last_notification_id = last.id FROM last ",
    "WHERE users.id = last.user_id), ",
    "old AS (DELETE FROM notifications d USING last WHERE d.user_id = last.user_id ",
    "AND d.id > last.first - 1 - $4::BIGINT AND d.id <= last.id - $4::BIGINT) ",
    "SELECT pg_notify($5::TEXT, p) FROM unnest($6::TEXT[]) AS p"
);

/// A user's state after one write, as its statement returned it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UserState {
    pub active: bool,
    pub limit: Option<Limit>,
    /// The period's spending (0 without a limit).
    pub spending: i64,
}

/// What phase 1 made of one write.
#[derive(Debug, PartialEq)]
pub enum Written {
    Transaction(std::result::Result<(Transaction, UserState), WriteRefusal>),
    Limit(std::result::Result<UserState, WriteRefusal>),
    User(UserState),
}

/// Phase 1's answer: one `Written` per write, and each existing user's last notification id
/// (under the lock: phase 2 gives out the next ones).
#[derive(Debug)]
pub struct Phase1 {
    pub written: Vec<Written>,
    pub last_ids: BTreeMap<UserId, u64>,
}

/// A notification for phase 2: its user, its id, its data.
pub struct Note<'a> {
    pub user: UserId,
    pub id: u64,
    pub data: &'a str,
}

fn user_of(op: &WriteOp) -> UserId {
    match op {
        WriteOp::Transaction { user, .. }
        | WriteOp::Limit { user, .. }
        | WriteOp::User { user, .. } => *user,
    }
}

/// Where the lock statements go in a batch: the users each one locks (ascending), and for
/// each write, the lock statement sent just before it, if any.
struct Segments {
    users: Vec<Vec<i64>>,
    first_of: Vec<Option<usize>>,
}

/// Cuts the batch's users (ascending) into segments that each end with a user the batch
/// creates or flags (a `User` write): so the row such a write may insert is taken after
/// every smaller id and before every larger one, and the whole batch takes its rows in
/// ascending id, new or not (see the module header). A batch without a `User` write is one
/// segment: one lock statement, as it always was. `ops` come sorted by user (the store
/// thread sorts them); unsorted, every write still follows its segment's lock.
fn lock_segments(ops: &[&WriteOp]) -> Segments {
    let mut users: Vec<(i64, bool)> =
        ops.iter().map(|op| (user_of(op).0, matches!(op, WriteOp::User { .. }))).collect();
    users.sort_unstable();
    let mut segments: Vec<Vec<i64>> = vec![Vec::new()];
    let mut segment_of: BTreeMap<i64, usize> = BTreeMap::new();
    for (i, (user, creates)) in users.iter().enumerate() {
        let last = segments.len() - 1;
        if segment_of.insert(*user, last).is_none() {
            segments[last].push(*user);
        }
        // The last entry of this user (sorted: `true` after `false`) closes the segment.
        let last_of_user = users.get(i + 1).is_none_or(|(next, _)| next != user);
        if *creates && last_of_user && i + 1 < users.len() {
            segments.push(Vec::new());
        }
    }
    let mut sent = vec![false; segments.len()];
    let first_of = ops
        .iter()
        .map(|op| {
            let segment = segment_of.get(&user_of(op).0).copied().unwrap_or(0);
            (!std::mem::replace(&mut sent[segment], true)).then_some(segment)
        })
        .collect();
    Segments { users: segments, first_of }
}

type Pending<'a> =
    Pin<Box<dyn Future<Output = std::result::Result<Vec<Row>, tokio_postgres::Error>> + 'a>>;

/// Drives every future to its end, polling them in order (so that their requests leave in
/// order, pipelined), and returns their rows in order, or the first error in order (the
/// later ones are only "the transaction is aborted").
async fn in_order(
    mut pending: Vec<Pending<'_>>,
) -> std::result::Result<Vec<Vec<Row>>, tokio_postgres::Error> {
    let mut done: Vec<Option<std::result::Result<Vec<Row>, tokio_postgres::Error>>> =
        pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (future, slot) in pending.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(result) => *slot = Some(result),
                    Poll::Pending => all = false,
                }
            }
        }
        if all {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    // Every slot is filled once the poll above is ready.
    done.into_iter().flatten().collect()
}

impl PgStore {
    /// Phase 1: `BEGIN`, the locks, every write; one round trip. On an error the caller
    /// rolls back.
    pub fn write_batch(&self, ops: &[&WriteOp]) -> Result<Phase1> {
        // A connection lost since the last batch is made again here, not inside this one.
        self.ensure_connected()?;
        let lock = self.statement(LOCK)?;
        let transaction = self.statement(TRANSACTION)?;
        let limit = self.statement(LIMIT)?;
        let user = self.statement(USER)?;
        self.begin_pipelined();
        let segments = lock_segments(ops);
        // Values the parameters borrow that are not fields of the writes.
        let alerts: Vec<f64> = ops
            .iter()
            .map(|op| match op {
                WriteOp::Limit { limit, .. } => limit.alert.value(),
                _ => 0.0,
            })
            .collect();
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = ops
            .iter()
            .zip(&alerts)
            .map(|(op, alert)| -> Vec<&(dyn ToSql + Sync)> {
                match op {
                    WriteOp::Transaction { user, amount, description, occurred_at_ms } => {
                        vec![&user.0, amount, description, occurred_at_ms]
                    }
                    WriteOp::Limit { user, limit } => vec![
                        &user.0,
                        &limit.max_limit,
                        alert,
                        &limit.periode_start_ms,
                        &limit.periode_end_ms,
                    ],
                    WriteOp::User { user, active } => vec![&user.0, active],
                }
            })
            .collect();
        let lock_params: Vec<[&(dyn ToSql + Sync); 1]> =
            segments.users.iter().map(|users| -> [&(dyn ToSql + Sync); 1] { [users] }).collect();
        let (lock_params, params, first_of) = (&lock_params, &params, &segments.first_of);
        let (lock, transaction, limit, user) = (&lock, &transaction, &limit, &user);
        let answers = self.call(|c| async move {
            let mut pending: Vec<Pending<'_>> =
                Vec::with_capacity(ops.len() + lock_params.len() + 1);
            pending.push(Box::pin(async { c.batch_execute("BEGIN").await.map(|()| Vec::new()) }));
            for ((op, params), first_of) in ops.iter().zip(params).zip(first_of) {
                if let Some(segment) = first_of {
                    pending.push(Box::pin(c.query(lock, &lock_params[*segment])));
                }
                let statement = match op {
                    WriteOp::Transaction { .. } => transaction,
                    WriteOp::Limit { .. } => limit,
                    WriteOp::User { .. } => user,
                };
                pending.push(Box::pin(c.query(statement, params)));
            }
            in_order(pending).await
        })?;
        let mut last_ids = BTreeMap::new();
        let mut written = Vec::with_capacity(ops.len());
        // BEGIN's answer first, then each write's, with a lock's before some of them.
        let mut answers = answers.iter().skip(1);
        for (op, first_of) in ops.iter().zip(first_of) {
            if first_of.is_some() {
                answers.next();
            }
            let Some(rows) = answers.next() else {
                return Err(super::PgError::Sql("the batch lost an answer (a bug)".into()));
            };
            let Some(one) = rows.first() else {
                written.push(match op {
                    WriteOp::Transaction { .. } => {
                        Written::Transaction(Err(WriteRefusal::UnknownUser))
                    }
                    WriteOp::Limit { .. } => Written::Limit(Err(WriteRefusal::UnknownUser)),
                    // Its statement always returns one row.
                    WriteOp::User { .. } => {
                        return Err(super::PgError::Sql(
                            "the user statement returned no row".into(),
                        ))
                    }
                });
                continue;
            };
            match op {
                WriteOp::Transaction { user, amount, description, occurred_at_ms } => {
                    let last: i64 = self.get(one, 1)?;
                    last_ids.entry(*user).or_insert(last.max(0) as u64);
                    let id: Option<i64> = self.get(one, 2)?;
                    let Some(id) = id else {
                        written.push(Written::Transaction(Err(WriteRefusal::TotalOverflow)));
                        continue;
                    };
                    let state = self.state(one, 0, 3)?;
                    let tx = Transaction {
                        id,
                        user: *user,
                        amount: *amount,
                        description: description.clone(),
                        occurred_at_ms: *occurred_at_ms,
                    };
                    written.push(Written::Transaction(Ok((tx, state))));
                }
                WriteOp::Limit { user, limit } => {
                    let last: i64 = self.get(one, 1)?;
                    last_ids.entry(*user).or_insert(last.max(0) as u64);
                    let state = UserState {
                        active: self.get(one, 0)?,
                        limit: Some(*limit),
                        spending: self.get(one, 2)?,
                    };
                    written.push(Written::Limit(Ok(state)));
                }
                WriteOp::User { user, active } => {
                    let last: i64 = self.get(one, 0)?;
                    last_ids.entry(*user).or_insert(last.max(0) as u64);
                    let limit = self.limit_from(one, 1)?;
                    let spent: i64 = self.get(one, 5)?;
                    let spending = if limit.is_some() { spent } else { 0 };
                    written.push(Written::User(UserState { active: *active, limit, spending }));
                }
            }
        }
        Ok(Phase1 { written, last_ids })
    }

    /// The state in a row: `active` at `active`, the limit's four columns then the spending
    /// from `limit`.
    fn state(&self, row: &Row, active: usize, limit: usize) -> Result<UserState> {
        let found = self.limit_from(row, limit)?;
        let spent: i64 = self.get(row, limit + 4)?;
        Ok(UserState {
            active: self.get(row, active)?,
            spending: if found.is_some() { spent } else { 0 },
            limit: found,
        })
    }

    /// Phase 2: the notifications and every NOTIFY (`payloads`, in write order), then
    /// `COMMIT`; one round trip. On an error the caller rolls back (a failed statement has
    /// already ended the transaction: its `COMMIT` is a rollback).
    pub fn commit_batch(&self, notes: &[Note<'_>], payloads: &[String]) -> Result<()> {
        let statement = if notes.is_empty() && payloads.is_empty() {
            None
        } else {
            Some(self.statement(NOTES)?)
        };
        let users: Vec<i64> = notes.iter().map(|n| n.user.0).collect();
        let ids: Vec<i64> = notes.iter().map(|n| i64::try_from(n.id).unwrap_or(i64::MAX)).collect();
        let data: Vec<&str> = notes.iter().map(|n| n.data).collect();
        let kept = KEPT_NOTIFICATIONS as i64;
        let params: [&(dyn ToSql + Sync); 6] = [&users, &ids, &data, &kept, &CHANNEL, &payloads];
        let (statement, params) = (&statement, &params);
        self.call(|c| async move {
            let mut pending: Vec<Pending<'_>> = Vec::with_capacity(2);
            if let Some(statement) = statement {
                pending.push(Box::pin(c.query(statement, params)));
            }
            pending.push(Box::pin(async { c.batch_execute("COMMIT").await.map(|()| Vec::new()) }));
            in_order(pending).await
        })?;
        self.end_pipelined();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(user: i64) -> WriteOp {
        WriteOp::Transaction { user: UserId(user), amount: 1, description: None, occurred_at_ms: 0 }
    }

    fn user(user: i64) -> WriteOp {
        WriteOp::User { user: UserId(user), active: true }
    }

    /// The writes, each lock statement's users, and the lock sent before each write.
    type Case = (Vec<WriteOp>, Vec<Vec<i64>>, Vec<Option<usize>>);

    #[test]
    fn each_created_user_ends_a_lock_segment() {
        let cases: [Case; 4] = [
            (vec![tx(1), tx(1), tx(4)], vec![vec![1, 4]], vec![Some(0), None, None]),
            (
                vec![tx(1), user(3), tx(3), tx(5), user(7), tx(9)],
                vec![vec![1, 3], vec![5, 7], vec![9]],
                vec![Some(0), None, None, Some(1), None, Some(2)],
            ),
            (vec![user(2)], vec![vec![2]], vec![Some(0)]),
            (
                vec![user(2), tx(2), user(2), user(3)],
                vec![vec![2], vec![3]],
                vec![Some(0), None, None, Some(1)],
            ),
        ];
        for (ops, users, first_of) in cases {
            let refs: Vec<&WriteOp> = ops.iter().collect();
            let segments = lock_segments(&refs);
            assert_eq!((segments.users, segments.first_of), (users, first_of), "{ops:?}");
        }
    }
}
