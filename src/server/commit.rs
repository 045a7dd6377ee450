//! The group commit, in two steps: a batch goes to the store, and its completion comes back.
//!
//! `apply_all` is the store's half: every write of one batch (what arrived while the previous
//! batch was in flight) is applied in one SQLite transaction and made durable by one commit.
//! It touches nothing but the store, and runs on the store thread (`store_thread.rs`), which
//! sends the `Completion` back through a `mio::Waker`. `complete` is the loop's half: only once the batch is durable are its writes answered,
//! their notifications pushed and deactivated users' streams ended — every notification of
//! the batch before any request pipelined behind a write is read (that happens next turn,
//! through `again`), so a stream opened behind a write never sees that write's notification
//! twice. An answer is therefore a promise already kept.

use super::ctx::{Ctx, Now};
use super::requests::{self, Reply};
use super::streams;
use super::verdict;
use crate::api::{self, WriteOp};
use crate::backend::{Backend as Store, Written};
use crate::conn::Conn;
use crate::domain::UserId;
use crate::key::{ConnKey, SlabKey};
use crate::metrics::CloseReason;
use crate::store::StoreError;
use crate::writes::Applied;
use slab::Slab;
use std::time::Duration;

/// A write waiting for this turn's commit, and how to answer it.
pub(super) struct QueuedWrite {
    pub(super) key: ConnKey,
    pub(super) op: WriteOp,
    pub(super) reply: Reply,
}

impl QueuedWrite {
    /// The user whose data the write changes.
    pub(super) fn user(&self) -> UserId {
        match &self.op {
            WriteOp::Transaction { user, .. }
            | WriteOp::Limit { user, .. }
            | WriteOp::User { user, .. } => *user,
        }
    }
}

/// What the store made of one batch: every write's result, or why none was stored.
pub(super) struct Completion {
    writes: Vec<QueuedWrite>,
    outcome: Result<Vec<Applied>, StoreError>,
    /// Cluster mode: the views the batch left its users in, for the loop's cache.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    written: Written,
    /// How long the store took over it.
    pub(super) elapsed: Duration,
}

impl Completion {
    pub(super) fn new(
        writes: Vec<QueuedWrite>,
        outcome: Result<(Vec<Applied>, Written), StoreError>,
        elapsed: Duration,
    ) -> Completion {
        let (outcome, written) = match outcome {
            Ok((applied, written)) => (Ok(applied), written),
            Err(e) => (Err(e), Written::default()),
        };
        Completion { writes, outcome, written, elapsed }
    }

    /// What the batch knows of its users (empty on SQLite, and when it failed).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(super) fn written(&self) -> &Written {
        &self.written
    }
}

/// A batch that never reached the store: every write is answered as not stored.
pub(super) fn not_stored(writes: Vec<QueuedWrite>, why: StoreError) -> Completion {
    Completion { writes, outcome: Err(why), written: Written::default(), elapsed: Duration::ZERO }
}

/// Applies `writes` in one transaction and commits it; on any error nothing is stored.
pub(super) fn apply_all(
    store: &Store,
    writes: &[QueuedWrite],
    now_ms: i64,
) -> Result<(Vec<Applied>, Written), StoreError> {
    let ops: Vec<&WriteOp> = writes.iter().map(|w| &w.op).collect();
    store.apply_batch(&ops, now_ms)
}

/// Answers every write of a durable (or failed) batch, pushes its notifications and ends
/// the streams of users it deactivated; then queues each writer to be read again.
pub(super) fn complete(conns: &mut Slab<Conn>, ctx: &mut Ctx, done: Completion, now: Now) {
    let Completion { writes, outcome, written, .. } = done;
    let (results, failure): (Vec<Option<Applied>>, _) = match outcome {
        Ok(results) => {
            ctx.store_ok = true;
            ctx.metrics.commit_retries = ctx.metrics.commit_retries.max(written.retried);
            ctx.metrics.count_commit(writes.len());
            (results.into_iter().map(Some).collect(), (500, "storage_error"))
        }
        Err(e) => {
            ctx.metrics.commit_failures += 1;
            ctx.store_ok = api::storage_status(&e).0 != 503;
            // The store says once, itself, why it refuses every write (files deleted or
            // replaced, disk full); repeating that per batch would flood the log.
            if matches!(e, StoreError::Unavailable(_) | StoreError::Full) {
                log::debug!("commit of {} writes refused, none stored: {e}", writes.len());
            } else {
                log::error!("commit of {} writes failed, none stored: {e}", writes.len());
            }
            (writes.iter().map(|_| None).collect(), api::storage_status(&e))
        }
    };
    for (write, applied) in writes.into_iter().zip(results) {
        let applied = applied.unwrap_or_else(|| Applied {
            response: api::Response::error(
                failure.0,
                failure.1,
                "the write could not be committed; nothing was stored",
            ),
            notification: None,
            deactivated: None,
            transaction_recorded: false,
        });
        if applied.transaction_recorded {
            ctx.metrics.transactions_recorded += 1;
        }
        let key = write.key;
        let unread = ctx.read_later.remove(&key);
        if let Some(conn) =
            conns.get_mut(key.index()).filter(|c| c.gen == key.generation() && c.doomed.is_none())
        {
            let mut reply = write.reply;
            // A client that has sent EOF gets its answer and then the connection ends.
            reply.keep_alive &= !ctx.shutting_down() && !conn.peer_closed;
            let answered = requests::respond(conn, key, ctx, &applied.response, &reply, now);
            verdict::carry_out(conn, key, ctx, answered, now);
            // Bytes that came behind the write (pipelining) are served next turn, and the
            // socket is read again if its readiness (an EOF too) was reported while we were
            // not reading, or its last read stopped short (`Ctx::read_later`).
            if conn.doomed.is_none() && (unread || conn.bufs.has_request()) {
                ctx.again.push(key);
            }
        }
        if let Some(note) = &applied.notification {
            streams::offer(conns, ctx, note, now);
        }
        if let Some(user) = applied.deactivated {
            streams::end_streams_of(conns, ctx, user, CloseReason::Deactivated, now);
        }
    }
}
