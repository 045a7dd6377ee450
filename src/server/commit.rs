//! The group commit: every write that arrived during one turn is applied in one SQLite
//! transaction and made durable by one commit; only then are the writes answered and their
//! notifications pushed. An answer is therefore a promise already kept.

use super::requests::Reply;
use super::{Now, Server};
use crate::api::{self, WriteOp};
use crate::conn::{InBuf, Phase};
use crate::metrics::CloseReason;
use crate::writes;

/// A write waiting for this turn's commit, and how to answer it.
pub(super) struct QueuedWrite {
    pub(super) key: usize,
    pub(super) gen: u32,
    pub(super) op: WriteOp,
    pub(super) reply: Reply,
}

impl Server {
    pub(super) fn commit_writes(&mut self, now: Now) {
        if self.writes.is_empty() {
            return;
        }
        let writes = std::mem::take(&mut self.writes);
        let results = match self.apply_batch(&writes, now) {
            Ok(results) => {
                self.metrics.count_commit(writes.len());
                results.into_iter().map(Some).collect()
            }
            Err(e) => {
                self.metrics.commit_failures += 1;
                log::error!("commit of {} writes failed, none stored: {e}", writes.len());
                writes.iter().map(|_| None).collect::<Vec<_>>()
            }
        };
        for (write, applied) in writes.into_iter().zip(results) {
            let applied = match applied {
                Some(applied) => applied,
                None => writes::Applied {
                    response: api::Response::error(
                        500,
                        "storage_error",
                        "the write could not be committed; nothing was stored",
                    ),
                    notification: None,
                    deactivated: None,
                    transaction_recorded: false,
                },
            };
            if applied.transaction_recorded {
                self.metrics.transactions_recorded += 1;
            }
            if self.conns.get(write.key).is_some_and(|c| c.gen == write.gen && c.doomed.is_none()) {
                let mut reply = write.reply.clone();
                reply.keep_alive &= self.shutdown_deadline.is_none();
                self.respond(write.key, &applied.response, &reply, now);
                // Bytes that came behind the write (pipelining) are served now, and the socket
                // is read again: its readiness may have been reported while we were not reading.
                if let Some(conn) = self.conns.get_mut(write.key) {
                    if matches!(conn.phase, Phase::Request) {
                        if let Some(inbuf) = conn.inbuf.take() {
                            let consumed = self.serve_buffered(write.key, &inbuf.bytes, now);
                            if let Some(conn) = self.conns.get_mut(write.key) {
                                if consumed < inbuf.bytes.len()
                                    && matches!(conn.phase, Phase::Request | Phase::Committing)
                                {
                                    conn.inbuf = Some(Box::new(InBuf {
                                        bytes: inbuf.bytes[consumed..].to_vec(),
                                        started_ms: now.mono_ms,
                                    }));
                                }
                            }
                        }
                    }
                    if let Some(conn) = self.conns.get(write.key) {
                        self.again.push((write.key, conn.gen));
                    }
                }
            }
            if let Some(note) = &applied.notification {
                self.fan_out(note, now);
            }
            if let Some(user) = applied.deactivated {
                self.end_streams_of(user, CloseReason::Deactivated, now);
            }
        }
    }

    pub(super) fn apply_batch(
        &mut self,
        writes: &[QueuedWrite],
        now: Now,
    ) -> Result<Vec<writes::Applied>, crate::store::StoreError> {
        self.store.begin()?;
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            match writes::apply(&self.store, &write.op, now.epoch_ms) {
                Ok(applied) => results.push(applied),
                Err(e) => {
                    self.store.rollback();
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.store.commit() {
            self.store.rollback();
            return Err(e);
        }
        Ok(results)
    }
}
