//! Applying validated writes inside the group commit, and what each one changes for streams.
//!
//! The server opens one SQLite transaction per loop turn, calls `apply` for every write that
//! arrived in that turn, commits once, and only then answers and fans out: nothing is
//! answered or pushed before it is durable. `apply` only reads and writes the store; it never
//! touches a socket.

use crate::api::{Response, WriteOp};
use crate::backend::Backend as Store;
use crate::domain::UserId;
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
            let mut body = String::with_capacity(512);
            body.push_str("{\"transaction\":");
            write_transaction(&mut body, &tx);
            body.push_str(",\"status\":");
            body.push_str(status_json.as_deref().unwrap_or("null"));
            body.push('}');
            Ok(Applied {
                response: Response::json(201, body),
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
            let mut body = String::with_capacity(256);
            store.status_for(*user, *limit)?.write_json(&mut body);
            Ok(Applied {
                response: Response::json(200, body),
                notification,
                deactivated: None,
                transaction_recorded: false,
            })
        }
        WriteOp::User { user, active } => {
            store.put_user(*user, *active)?;
            let body = format!("{{\"id\":{user},\"active\":{active}}}");
            Ok(Applied {
                response: Response::json(200, body),
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
    let mut data = String::with_capacity(256);
    status.write_notification_json(user, now_ms, &mut data);
    let id = store.insert_notification(user, &data)?;
    Ok((Some(json), Some(Notification { user, id, data })))
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
