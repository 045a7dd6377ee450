//! Writing: eagerly, straight to the socket; the unsent rest is kept only while the kernel
//! refuses it, and a stream that falls too far behind is cut off by policy (the slow-consumer
//! limits), not by running out of memory.

use super::ctx::{Ctx, Now};
use super::verdict::Verdict;
use super::{HARD_UNSENT_BYTES, IO_BUDGET_PER_TURN, SOFT_UNSENT_BYTES, SOFT_UNSENT_MS};
use crate::conn::{Conn, Phase, Unsent, WriteOutcome};
use crate::metrics::CloseReason;

/// Writes now what the kernel takes; keeps the rest. `Err` says why the connection must go
/// (the write failed, or the backlog broke the slow-consumer policy).
pub(super) fn send(
    conn: &mut Conn,
    ctx: &mut Ctx,
    bytes: &[u8],
    now: Now,
) -> Result<(), CloseReason> {
    if conn.doomed.is_some() || bytes.is_empty() {
        return Ok(());
    }
    if let Some(unsent) = conn.bufs.unsent_mut() {
        // Order matters: behind a backlog, new bytes queue up.
        unsent.bytes.extend_from_slice(bytes);
        return check_backlog(conn, now);
    }
    match conn.write_now(bytes) {
        WriteOutcome::Done => {
            ctx.metrics.bytes_written += bytes.len() as u64;
            Ok(())
        }
        WriteOutcome::Partial(n) => {
            ctx.metrics.bytes_written += n as u64;
            conn.bufs.set_unsent(Unsent {
                bytes: bytes[n..].to_vec(),
                from: 0,
                over_soft_since: None,
            });
            check_backlog(conn, now)
        }
        WriteOutcome::Failed => Err(CloseReason::WriteError),
    }
}

/// The socket can take more: write the backlog (at most one budget of it), then, for a
/// closing connection with nothing left, send FIN.
pub(super) fn on_writable(conn: &mut Conn, ctx: &mut Ctx) -> Verdict {
    if let Some(mut unsent) = conn.bufs.take_unsent() {
        let end = unsent.bytes.len().min(unsent.from + IO_BUDGET_PER_TURN);
        match conn.write_now(&unsent.bytes[unsent.from..end]) {
            WriteOutcome::Done => {
                ctx.metrics.bytes_written += (end - unsent.from) as u64;
                unsent.from = end;
                if !unsent.is_empty() {
                    conn.bufs.set_unsent(unsent);
                    return Verdict::Again; // budget spent, not blocked
                }
            }
            WriteOutcome::Partial(n) => {
                ctx.metrics.bytes_written += n as u64;
                unsent.from += n;
                if unsent.from > unsent.bytes.len() / 2 {
                    unsent.bytes.drain(..unsent.from);
                    unsent.from = 0;
                }
                conn.bufs.set_unsent(unsent);
                return Verdict::Continue;
            }
            WriteOutcome::Failed => return Verdict::Close(CloseReason::WriteError),
        }
    }
    // Everything is out: a closing connection can now say FIN.
    if matches!(conn.phase, Phase::Closing { .. }) && conn.fin_if_flushed() {
        return Verdict::Close(CloseReason::Finished);
    }
    Verdict::Continue
}

/// Applies the slow-consumer policy to a connection with a backlog.
pub(super) fn check_backlog(conn: &mut Conn, now: Now) -> Result<(), CloseReason> {
    if !conn.bufs.has_unsent() {
        return Ok(());
    }
    let kernel = conn.kernel_queued();
    let user = conn.phase.user();
    let Some(unsent) = conn.bufs.unsent_mut() else {
        return Ok(());
    };
    let total = unsent.len() + kernel;
    let over_hard = total > HARD_UNSENT_BYTES;
    let over_soft_too_long = if total > SOFT_UNSENT_BYTES {
        let since = *unsent.over_soft_since.get_or_insert(now.mono_ms);
        now.mono_ms.saturating_sub(since) >= SOFT_UNSENT_MS
    } else {
        unsent.over_soft_since = None;
        false
    };
    if over_hard || over_soft_too_long {
        match user {
            Some(user) => {
                log::warn!("SSE slow consumer dropped for user {user} ({total} bytes unsent)")
            }
            None => log::warn!("slow client dropped ({total} bytes unsent)"),
        }
        return Err(CloseReason::SlowConsumer);
    }
    Ok(())
}
