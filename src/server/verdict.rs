//! What a handler says happens next, and the loop's one way of carrying it out.
//!
//! Handlers (`requests`, `output`, `streams`) take one connection, its key, the loop's
//! context and `now`, do their protocol work, and return a `Verdict`. Only `carry_out` acts on
//! it: queueing for the group commit, marking for the reap, starting the graceful close. A
//! handler never removes a connection, never unlinks it from the registry or the wheel (the
//! reap in `mod.rs` does both), and never touches another connection.

use super::commit::QueuedWrite;
use super::ctx::{Ctx, Now};
use super::output;
use super::requests::Reply;
use super::LINGER_MS;
use crate::api::WriteOp;
use crate::conn::{Conn, Phase};
use crate::key::ConnKey;
use crate::metrics::CloseReason;
use crate::sse;

#[must_use]
pub(super) enum Verdict {
    /// Nothing more to do until the next event.
    Continue,
    /// The per-turn I/O budget ran out before the socket did: no new event will come for
    /// what is left, so the loop serves this connection again next turn.
    Again,
    /// A write waits for this turn's group commit; reading pauses until it is answered.
    Commit(WriteOp, Reply),
    /// The request at the front (left unread in the connection's buffer) is of a user whose
    /// batch is on the store thread: it is served when that batch is back.
    Wait,
    /// End properly: a stream's last chunk, flush, FIN, then linger for the client's EOF.
    Finish(CloseReason),
    /// Drop the connection at this turn's reap.
    Close(CloseReason),
}

impl Verdict {
    /// The verdict of two steps taken one after the other on one connection: the first that
    /// ends or pauses it wins; `Again` survives a `Continue`.
    pub(super) fn then(self, next: impl FnOnce() -> Verdict) -> Verdict {
        match self {
            Verdict::Continue => next(),
            Verdict::Again => match next() {
                Verdict::Continue => Verdict::Again,
                other => other,
            },
            ended => ended,
        }
    }
}

pub(super) fn carry_out(conn: &mut Conn, key: ConnKey, ctx: &mut Ctx, verdict: Verdict, now: Now) {
    match verdict {
        Verdict::Continue => {}
        Verdict::Again => ctx.again.push(key),
        Verdict::Wait => {
            let since = ctx.parked_since.unwrap_or(now.mono_ms);
            // Every `Wait` names what it waits for; a batch is the safe guess otherwise
            // (served whenever one comes back, and 503 at the deadline at worst).
            let on = ctx.parking_on.take().unwrap_or(super::ctx::ParkedOn::Batch);
            ctx.parked.push((key, since, on));
            ctx.wheel.schedule(key, since + super::PARK_DEADLINE_MS);
        }
        Verdict::Commit(op, reply) => {
            conn.await_commit();
            ctx.batch.push(QueuedWrite { key, op, reply });
        }
        Verdict::Finish(reason) => finish(conn, key, ctx, reason, now),
        Verdict::Close(reason) => close_later(conn, key, ctx, reason),
    }
}

/// Stops reading requests (or ends the stream with its last chunk), flushes, sends FIN, and
/// waits briefly for the client's EOF so that the last bytes are not lost to a reset.
fn finish(conn: &mut Conn, key: ConnKey, ctx: &mut Ctx, reason: CloseReason, now: Now) {
    if conn.doomed.is_some() || matches!(conn.phase, Phase::Closing { .. }) {
        return;
    }
    let ended = conn.begin_closing();
    ctx.metrics.count_disconnect(reason);
    if let Some(stream) = ended {
        let why = match reason {
            CloseReason::Expired => "token expired",
            CloseReason::Deactivated => "user deactivated",
            CloseReason::Shutdown => "server shutting down",
            _ => reason.label(),
        };
        log::info!("SSE stream ended for user {}: {why}", stream.user);
        // Unlinked at this turn's reap: from now on fan-out skips it (it is no stream).
        ctx.ended.push((key, stream.user));
        if stream.chunked {
            if let Err(reason) = output::send(conn, ctx, sse::LAST_CHUNK, now) {
                close_later(conn, key, ctx, reason);
                return;
            }
        }
    }
    if conn.fin_if_flushed() {
        // Both directions are done: no reason to linger.
        close_later(conn, key, ctx, reason);
        return;
    }
    // At shutdown a client still reading may use all the time that is left.
    let deadline = ctx.shutdown_deadline.unwrap_or(now.mono_ms + LINGER_MS);
    ctx.wheel.schedule(key, deadline);
}

/// Marks a connection to be removed at the end of this turn.
pub(super) fn close_later(conn: &mut Conn, key: ConnKey, ctx: &mut Ctx, reason: CloseReason) {
    if conn.doomed.is_some() {
        return;
    }
    // A connection already in Closing was counted when it began to close.
    if !matches!(conn.phase, Phase::Closing { .. }) {
        ctx.metrics.count_disconnect(reason);
    }
    conn.doomed = Some(reason);
    ctx.to_close.push(key);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(v: &Verdict) -> &'static str {
        match v {
            Verdict::Continue => "continue",
            Verdict::Again => "again",
            Verdict::Commit(..) => "commit",
            Verdict::Wait => "wait",
            Verdict::Finish(_) => "finish",
            Verdict::Close(_) => "close",
        }
    }

    #[test]
    fn the_first_step_that_ends_or_pauses_wins_and_again_survives_continue() {
        let close = || Verdict::Close(CloseReason::ClientGone);
        let finish = || Verdict::Finish(CloseReason::Finished);
        type Step = fn() -> Verdict;
        let cases: [(Verdict, Step, &str); 6] = [
            (Verdict::Continue, || Verdict::Continue, "continue"),
            (Verdict::Continue, || Verdict::Again, "again"),
            (Verdict::Again, || Verdict::Continue, "again"),
            (Verdict::Again, || Verdict::Close(CloseReason::ClientGone), "close"),
            (Verdict::Close(CloseReason::WriteError), || Verdict::Again, "close"),
            (Verdict::Finish(CloseReason::Finished), || Verdict::Continue, "finish"),
        ];
        for (first, second, want) in cases {
            assert_eq!(name(&first.then(second)), want);
        }
        let mut ran = false;
        let _ = close().then(|| {
            ran = true;
            finish()
        });
        assert!(!ran, "a closed connection is not served further");
    }
}
