//! Applying validated writes inside the group commit, and what each one changes for streams.
//!
//! The server opens one transaction per batch (the writes that arrived while the previous
//! batch was in flight), applies every write, commits once, and only then answers and fans
//! out: nothing is answered or pushed before it is durable. On SQLite `apply` runs per write
//! (each call is a few microseconds in-process); on PostgreSQL `apply_pg` sends the whole
//! batch in two pipelined round trips (`pg::batch`) and builds the same answers and
//! notification data from what they returned, with the same functions, so that every body is
//! byte for byte SQLite's. Nothing here touches a socket.

use crate::api::{Response, WriteOp};
use crate::backend::Backend as Store;
use crate::domain::UserId;
use crate::spending::Status;
use crate::store::{StoreError, Transaction, WriteRefusal};
use crate::time::write_rfc3339_ms;

/// A notification stored in this batch, to be pushed once the batch is durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub user: UserId,
    pub id: u64,
    pub data: String,
}

#[derive(Debug, PartialEq)]
pub struct Applied {
    pub response: Response,
    pub notification: Option<Notification>,
    /// A user was deactivated: their open streams end after the commit.
    pub deactivated: Option<UserId>,
    pub transaction_recorded: bool,
}

impl Applied {
    fn answer(response: Response) -> Applied {
        Applied { response, notification: None, deactivated: None, transaction_recorded: false }
    }
}

pub fn apply(store: &Store, op: &WriteOp, now_ms: i64) -> Result<Applied, StoreError> {
    match op {
        WriteOp::Transaction { user, amount, description, occurred_at_ms } => {
            let tx = match store.insert_transaction(
                *user,
                *amount,
                description.as_deref(),
                *occurred_at_ms,
            )? {
                Ok(tx) => tx,
                Err(refusal) => return Ok(Applied::answer(refused(*user, refusal))),
            };
            let (status_json, notification) = notify_active_status(store, *user, now_ms)?;
            Ok(Applied {
                response: transaction_answer(&tx, status_json.as_deref()),
                notification,
                deactivated: None,
                transaction_recorded: true,
            })
        }
        WriteOp::Limit { user, limit } => {
            if let Err(refusal) = store.put_limit(*user, limit)? {
                return Ok(Applied::answer(refused(*user, refusal)));
            }
            let (_, notification) = notify_active_status(store, *user, now_ms)?;
            // The answer is computed over the stored range, whether or not it covers now.
            Ok(Applied {
                response: limit_answer(&store.status_for(*user, *limit)?),
                notification,
                deactivated: None,
                transaction_recorded: false,
            })
        }
        WriteOp::User { user, active } => {
            store.put_user(*user, *active)?;
            Ok(Applied {
                response: user_answer(*user, *active),
                notification: None,
                deactivated: (!active).then_some(*user),
                transaction_recorded: false,
            })
        }
    }
}

/// After a change: the status JSON (when a limit covers now) and the notification stored for
/// it. With no active limit there is nothing to push.
fn notify_active_status(
    store: &Store,
    user: UserId,
    now_ms: i64,
) -> Result<(Option<String>, Option<Notification>), StoreError> {
    let Some(status) = store.active_status(user, now_ms)? else {
        return Ok((None, None));
    };
    let mut json = String::with_capacity(256);
    status.write_json(&mut json);
    let data = notification_data(&status, user, now_ms);
    let id = store.insert_notification(user, &data)?;
    Ok((Some(json), Some(Notification { user, id, data })))
}

fn transaction_answer(tx: &Transaction, status_json: Option<&str>) -> Response {
    let mut body = String::with_capacity(512);
    body.push_str("{\"transaction\":");
    write_transaction(&mut body, tx);
    body.push_str(",\"status\":");
    body.push_str(status_json.unwrap_or("null"));
    body.push('}');
    Response::json(201, body)
}

fn limit_answer(status: &Status) -> Response {
    let mut body = String::with_capacity(256);
    status.write_json(&mut body);
    Response::json(200, body)
}

fn user_answer(user: UserId, active: bool) -> Response {
    Response::json(200, format!("{{\"id\":{user},\"active\":{active}}}"))
}

fn notification_data(status: &Status, user: UserId, now_ms: i64) -> String {
    let mut data = String::with_capacity(256);
    status.write_notification_json(user, now_ms, &mut data);
    data
}

fn refused(user: UserId, refusal: WriteRefusal) -> Response {
    match refusal {
        WriteRefusal::UnknownUser => {
            Response::error(404, "unknown_user", &format!("user {user} does not exist"))
        }
        WriteRefusal::TotalOverflow => Response::error(
            400,
            "bad_request",
            &format!("amount would take user {user}'s total spending beyond {}", i64::MAX),
        ),
    }
}

fn write_transaction(out: &mut String, tx: &Transaction) {
    use std::fmt::Write as _;
    let _ = write!(
        out,
        "{{\"id\":{},\"userId\":{},\"amount\":{},\"description\":",
        tx.id, tx.user, tx.amount
    );
    match &tx.description {
        Some(d) => out.push_str(&serde_json::Value::String(d.clone()).to_string()),
        None => out.push_str("null"),
    }
    out.push_str(",\"occurredAt\":\"");
    write_rfc3339_ms(out, tx.occurred_at_ms);
    out.push_str("\"}");
}

/// Each written user's view after a batch (`None`: no such user).
#[cfg(feature = "postgres")]
pub type Views = Vec<(UserId, Option<crate::backend::View>)>;

/// How many times a PostgreSQL batch is tried when PostgreSQL aborts it as a deadlock or a
/// serialization failure (`PgError::Conflict`).
#[cfg(feature = "postgres")]
pub const BATCH_ATTEMPTS: u32 = 3;
/// No retried attempt runs past this long after the batch's first began: a request that
/// needs the database is answered within 2 s (SPEC §7), and the loop needs a moment to
/// answer once the store has. A retry that would start with less than `MIN_RETRY_TIME`
/// left is not started.
#[cfg(feature = "postgres")]
pub const BATCH_BUDGET: std::time::Duration = std::time::Duration::from_millis(1900);
#[cfg(feature = "postgres")]
const MIN_RETRY_TIME: std::time::Duration = std::time::Duration::from_millis(200);

/// A whole batch on PostgreSQL, in one transaction of two pipelined round trips: every
/// write's answer, and each written user's view as the batch left it (for the loop's cache:
/// it need not load them again). On an error the transaction is rolled back and nothing is
/// stored.
///
/// A batch that PostgreSQL aborted as a deadlock or a serialization failure was rolled back
/// whole: nothing of it is committed and no id was given out, so it is run again from phase
/// 1 with a fresh plan (PostgreSQL's documentation asks exactly that of clients), up to
/// `BATCH_ATTEMPTS` times in all and never past `BATCH_BUDGET`; then its last error is the
/// answer. Any other error is answered at once: a lost connection may have committed.
#[cfg(feature = "postgres")]
pub fn apply_pg(
    store: &crate::pg::PgStore,
    ops: &[&WriteOp],
    now_ms: i64,
) -> Result<(Vec<Applied>, Views), crate::pg::PgError> {
    /// Lifts the retries' bound on calls however `apply_pg` ends (a panic too: the store
    /// thread catches it and keeps the store, whose later calls must not inherit the bound).
    struct Unbound<'a>(&'a crate::pg::PgStore);
    impl Drop for Unbound<'_> {
        fn drop(&mut self) {
            self.0.bound_calls(None);
        }
    }
    let _unbound = Unbound(store);
    let began = std::time::Instant::now();
    let until = began + BATCH_BUDGET;
    let mut attempt = 1;
    loop {
        let outcome = apply_pg_once(store, ops, now_ms);
        let left = until.saturating_duration_since(std::time::Instant::now());
        match outcome {
            Err(e) if e.is_conflict() && attempt < BATCH_ATTEMPTS && left >= MIN_RETRY_TIME => {
                // Rare by design (`pg::batch`): one line per retried batch is no flood.
                log::warn!(
                    "a batch of {} writes was aborted by PostgreSQL after {} ms (attempt {attempt} \
                     of {BATCH_ATTEMPTS}) and is run again, nothing of it stored: {e}; if this \
                     line is frequent, look for another client locking the users table",
                    ops.len(),
                    began.elapsed().as_millis(),
                    e = e.to_string().replace('\n', " ")
                );
                store.count_retry();
                store.bound_calls(Some(until));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// One attempt of `apply_pg`: rolled back on any error.
#[cfg(feature = "postgres")]
fn apply_pg_once(
    store: &crate::pg::PgStore,
    ops: &[&WriteOp],
    now_ms: i64,
) -> Result<(Vec<Applied>, Views), crate::pg::PgError> {
    let phase1 = match store.write_batch(ops) {
        Ok(phase1) => phase1,
        Err(e) => {
            store.rollback();
            return Err(e);
        }
    };
    let planned = match plan_pg(ops, phase1, now_ms) {
        Ok(planned) => planned,
        Err(e) => {
            store.rollback();
            return Err(e);
        }
    };
    let notes: Vec<crate::pg::batch::Note<'_>> = planned
        .applied
        .iter()
        .filter_map(|a| a.notification.as_ref())
        .map(|n| crate::pg::batch::Note { user: n.user, id: n.id, data: &n.data })
        .collect();
    if let Err(e) = store.commit_batch(&notes, &planned.payloads) {
        store.rollback();
        return Err(e);
    }
    Ok((planned.applied, planned.views))
}

/// What phase 1's results mean, without the database: the answers, the notifications (ids
/// given out from each user's last one), the NOTIFY payloads in write order, and the views.
#[cfg(feature = "postgres")]
struct PlannedPg {
    applied: Vec<Applied>,
    payloads: Vec<String>,
    views: Views,
}

#[cfg(feature = "postgres")]
fn plan_pg(
    ops: &[&WriteOp],
    phase1: crate::pg::batch::Phase1,
    now_ms: i64,
) -> Result<PlannedPg, crate::pg::PgError> {
    use crate::pg::batch::{UserState, Written};
    use crate::pg::Event;
    use std::collections::{BTreeMap, BTreeSet};
    let crate::pg::batch::Phase1 { written, mut last_ids } = phase1;
    let mut applied = Vec::with_capacity(ops.len());
    let mut payloads = Vec::with_capacity(ops.len());
    // Users whose spending changed with no notification after it: they get a `v` event.
    let mut owed = BTreeSet::new();
    // Each user's state after their last write (`None`: no such user).
    let mut states: BTreeMap<UserId, Option<UserState>> = BTreeMap::new();
    let active_status =
        |state: &UserState| crate::backend::status_covering(state.limit, state.spending, now_ms);
    let mut note_for = |user: UserId, status: &Status, payloads: &mut Vec<String>| {
        let last = last_ids.entry(user).or_insert(0);
        *last += 1;
        let data = notification_data(status, user, now_ms);
        payloads.push(Event::Notification { user, id: *last, data: data.clone() }.encode());
        Notification { user, id: *last, data }
    };
    for (op, written) in ops.iter().zip(written) {
        match (op, written) {
            (WriteOp::Transaction { user, .. }, Written::Transaction(Ok((tx, state)))) => {
                states.insert(*user, Some(state));
                owed.insert(*user);
                let status = active_status(&state);
                let mut json = None;
                let notification = status.map(|status| {
                    let mut text = String::with_capacity(256);
                    status.write_json(&mut text);
                    json = Some(text);
                    owed.remove(user);
                    note_for(*user, &status, &mut payloads)
                });
                applied.push(Applied {
                    response: transaction_answer(&tx, json.as_deref()),
                    notification,
                    deactivated: None,
                    transaction_recorded: true,
                });
            }
            (WriteOp::Limit { user, limit }, Written::Limit(Ok(state))) => {
                states.insert(*user, Some(state));
                payloads.push(Event::LimitChanged { user: *user }.encode());
                let notification = active_status(&state).map(|status| {
                    owed.remove(user);
                    note_for(*user, &status, &mut payloads)
                });
                applied.push(Applied {
                    response: limit_answer(&Status::compute(state.spending, *limit)),
                    notification,
                    deactivated: None,
                    transaction_recorded: false,
                });
            }
            (WriteOp::User { user, active }, Written::User(state)) => {
                states.insert(*user, Some(state));
                payloads.push(Event::ActiveChanged { user: *user, active: *active }.encode());
                applied.push(Applied {
                    response: user_answer(*user, *active),
                    notification: None,
                    deactivated: (!active).then_some(*user),
                    transaction_recorded: false,
                });
            }
            (
                WriteOp::Transaction { user, .. } | WriteOp::Limit { user, .. },
                Written::Transaction(Err(refusal)) | Written::Limit(Err(refusal)),
            ) => {
                // Nothing written. An unknown user is a view too (none); after an overflow
                // the user's state is whatever their other writes here said, if any.
                if refusal == WriteRefusal::UnknownUser {
                    states.entry(*user).or_insert(None);
                }
                applied.push(Applied::answer(refused(*user, refusal)));
            }
            // `write_batch` answers each write with its own kind: nothing else can come.
            _ => {
                return Err(crate::pg::PgError::Sql(
                    "the batch answered a write with another kind (a bug)".into(),
                ))
            }
        }
    }
    payloads.extend(owed.into_iter().map(|user| Event::SpendingChanged { user }.encode()));
    let views = states
        .into_iter()
        .map(|(user, state)| {
            let view = state.map(|s| {
                let last_id = last_ids.get(&user).copied().unwrap_or(0);
                crate::backend::View::new(s.active, last_id, s.limit, s.spending)
            });
            (user, view)
        })
        .collect();
    Ok(PlannedPg { applied, payloads, views })
}
