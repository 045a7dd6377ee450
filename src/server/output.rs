//! Writing: eagerly, straight to the socket; the unsent rest is kept only while the kernel
//! refuses it, and a stream that falls too far behind is cut off by policy (the slow-consumer
//! limits), not by running out of memory.

use super::{Now, Server};
use super::{HARD_UNSENT_BYTES, IO_BUDGET_PER_TURN, SOFT_UNSENT_BYTES, SOFT_UNSENT_MS};
use crate::conn::{Phase, Unsent, WriteOutcome};
use crate::metrics::CloseReason;

impl Server {
    /// Writes now what the kernel takes; keeps the rest; cuts a stream that falls too far
    /// behind.
    pub(super) fn send(&mut self, key: usize, bytes: &[u8], now: Now) {
        self.send_with_allowance(key, bytes, 0, now);
    }

    /// `send`, where the first `allowance` bytes of a new backlog do not count toward the
    /// slow-consumer limits: a stream's opening may replay up to the kept notifications at
    /// once, and a client must not be cut (and reconnect, and be cut again) for asking.
    pub(super) fn send_with_allowance(
        &mut self,
        key: usize,
        bytes: &[u8],
        allowance: usize,
        now: Now,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.doomed.is_some() || bytes.is_empty() {
            return;
        }
        if let Some(unsent) = conn.unsent.as_mut() {
            // Order matters: behind a backlog, new bytes queue up.
            unsent.bytes.extend_from_slice(bytes);
            self.check_backlog(key, now);
            return;
        }
        match conn.write_now(bytes) {
            WriteOutcome::Done => self.metrics.bytes_written += bytes.len() as u64,
            WriteOutcome::Partial(n) => {
                self.metrics.bytes_written += n as u64;
                conn.unsent = Some(Box::new(Unsent {
                    bytes: bytes[n..].to_vec(),
                    from: 0,
                    over_soft_since: None,
                    allowance,
                }));
                self.check_backlog(key, now);
            }
            WriteOutcome::Failed => self.close_later(key, CloseReason::WriteError),
        }
    }

    pub(super) fn on_writable(&mut self, key: usize, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.doomed.is_some() {
            return;
        }
        if let Some(mut unsent) = conn.unsent.take() {
            let end = unsent.bytes.len().min(unsent.from + IO_BUDGET_PER_TURN);
            match conn.write_now(&unsent.bytes[unsent.from..end]) {
                WriteOutcome::Done => {
                    self.metrics.bytes_written += (end - unsent.from) as u64;
                    unsent.from = end;
                    if !unsent.is_empty() {
                        self.again.push((key, conn.gen)); // budget spent, not blocked
                        conn.unsent = Some(unsent);
                        return;
                    }
                }
                WriteOutcome::Partial(n) => {
                    self.metrics.bytes_written += n as u64;
                    unsent.from += n;
                    if unsent.from > unsent.bytes.len() / 2 {
                        unsent.bytes.drain(..unsent.from);
                        unsent.from = 0;
                    }
                    conn.unsent = Some(unsent);
                    return;
                }
                WriteOutcome::Failed => {
                    self.close_later(key, CloseReason::WriteError);
                    return;
                }
            }
        }
        // Everything is out: a closing connection can now say FIN.
        if let Phase::Closing { fin_sent, .. } = &mut conn.phase {
            if !*fin_sent {
                *fin_sent = true;
                conn.send_fin();
                if conn.peer_closed {
                    self.close_later(key, CloseReason::Finished);
                    return;
                }
                let _ = now;
            }
        }
    }

    /// Applies the slow-consumer policy to a stream with a backlog.
    pub(super) fn check_backlog(&mut self, key: usize, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.unsent.is_none() {
            return;
        }
        let kernel = conn.kernel_queued();
        let Some(unsent) = conn.unsent.as_mut() else {
            return;
        };
        // The allowance lasts until this backlog has drained (then `unsent` is dropped).
        let total = (unsent.len() + kernel).saturating_sub(unsent.allowance);
        let user = match &conn.phase {
            Phase::Stream(s) => Some(s.user),
            Phase::Closing { user, .. } => *user,
            _ => None,
        };
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
            self.close_later(key, CloseReason::SlowConsumer);
        }
    }
}
