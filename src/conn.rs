//! One connection's state, and the only code that reads or writes its socket.
//!
//! Socket errors are folded here into a few outcomes (`Read` / `Write`) so the server never
//! matches on `io::ErrorKind`. A connection's phase is an enum:
//!
//!   Request ──request──▶ Request (keep-alive)       answer written, wait for the next
//!      │     ──write───▶ Committing ──commit──▶ Request
//!      │     ──stream──▶ Stream ──end (expiry, deactivation, shutdown)──▶ Closing
//!      └──error / close──▶ Closing ──FIN sent, EOF or linger timeout──▶ (reaped)
//!
//! Each arrow is one method below (`await_commit`, `await_request`, `start_streaming`,
//! `begin_closing`), the only places `phase` is assigned.
//!
//! Density matters more than anything here: an idle stream is this struct and nothing else.
//! Bytes wait in `unsent` only while the kernel refuses them, and the request buffer exists
//! only while a request is half-received.

use crate::domain::UserId;
use crate::metrics::CloseReason;
use mio::net::TcpStream;
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub enum Phase {
    /// Waiting for a request, or reading one.
    Request,
    /// A write request is waiting for this turn's commit; reading is paused.
    Committing,
    Stream(StreamState),
    /// Ending: flush what is unsent, send FIN, then wait for the client's EOF (or the linger
    /// deadline) so that the last bytes are not lost to a reset.
    Closing {
        user: Option<UserId>,
        fin_sent: bool,
    },
}

pub struct StreamState {
    pub user: UserId,
    /// Monotonic ms at which the token's `exp` plus leeway passes.
    pub expires_at_ms: u64,
    pub next_heartbeat_ms: u64,
    /// HTTP/1.1 streams are chunked (so their end is visible); HTTP/1.0 ones close-delimited.
    pub chunked: bool,
}

/// Bytes of a request that has not fully arrived, and when its first byte came.
pub struct InBuf {
    pub bytes: Vec<u8>,
    pub started_ms: u64,
    /// This buffer's share of the server-wide counts, given back when it is dropped.
    pub held: HeldBytes,
}

/// Server-wide counts of request buffers, shared by every `InBuf`.
#[derive(Default)]
pub struct HeldCounters {
    /// Bytes held now by requests whose head is not complete: clients not yet authorized.
    unauthorized: AtomicUsize,
    /// Bytes of request buffers dropped so far (wrapping): when many have gone, the server
    /// asks the allocator to give memory back.
    released: AtomicUsize,
}

impl HeldCounters {
    pub fn unauthorized(&self) -> usize {
        self.unauthorized.load(Ordering::Relaxed)
    }

    pub fn released(&self) -> usize {
        self.released.load(Ordering::Relaxed)
    }
}

/// One buffer's bytes in `HeldCounters`. Counted through `Drop`, so every way a buffer goes
/// (the request completes, the connection closes or starts a stream, a timeout) gives its
/// share back without each of them having to remember.
pub struct HeldBytes {
    counters: Arc<HeldCounters>,
    bytes: usize,
    unauthorized: bool,
}

impl HeldBytes {
    pub fn new(counters: &Arc<HeldCounters>, bytes: usize, unauthorized: bool) -> HeldBytes {
        if unauthorized {
            counters.unauthorized.fetch_add(bytes, Ordering::Relaxed);
        }
        HeldBytes { counters: Arc::clone(counters), bytes, unauthorized }
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        if self.unauthorized {
            self.counters.unauthorized.fetch_sub(self.bytes, Ordering::Relaxed);
        }
        self.counters.released.fetch_add(self.bytes, Ordering::Relaxed);
    }
}

/// Bytes the kernel would not take yet.
pub struct Unsent {
    pub bytes: Vec<u8>,
    pub from: usize,
    /// When the backlog first went over the soft cap (monotonic ms), if it is over now.
    pub over_soft_since: Option<u64>,
}

impl Unsent {
    pub fn len(&self) -> usize {
        self.bytes.len() - self.from
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Conn {
    pub sock: TcpStream,
    pub gen: u32,
    pub phase: Phase,
    pub inbuf: Option<Box<InBuf>>,
    pub unsent: Option<Box<Unsent>>,
    /// Set once the connection is queued for reaping; nothing more is done with it.
    pub doomed: Option<CloseReason>,
    /// The client has sent EOF: once our answer is out, nothing keeps the connection.
    pub peer_closed: bool,
    /// Accepted on the `--metrics-listen` port: it is answered `/metrics` and nothing else.
    pub metrics_only: bool,
}

pub enum ReadOutcome {
    /// `n` bytes appended.
    Data(usize),
    WouldBlock,
    /// Orderly EOF from the peer.
    Eof,
    /// Reset or another error: the peer is gone.
    Gone,
}

pub enum WriteOutcome {
    /// All given bytes were taken.
    Done,
    /// Only the first `n` bytes were taken; the socket is full.
    Partial(usize),
    Failed,
}

impl Conn {
    pub fn new(sock: TcpStream, gen: u32) -> Conn {
        Conn {
            sock,
            gen,
            phase: Phase::Request,
            inbuf: None,
            unsent: None,
            doomed: None,
            peer_closed: false,
            metrics_only: false,
        }
    }

    /// Request → Committing: a write waits for the group commit; reading pauses until then.
    pub fn await_commit(&mut self) {
        debug_assert!(matches!(self.phase, Phase::Request));
        self.phase = Phase::Committing;
    }

    /// Request or Committing → Request: an answer is out, the next request may come.
    pub fn await_request(&mut self) {
        debug_assert!(matches!(self.phase, Phase::Request | Phase::Committing));
        self.phase = Phase::Request;
    }

    /// Request → Stream. Anything the client sent after the stream request is dropped: a
    /// stream is the last thing on its connection.
    pub fn start_streaming(&mut self, stream: StreamState) {
        debug_assert!(matches!(self.phase, Phase::Request));
        self.phase = Phase::Stream(stream);
        self.inbuf = None;
    }

    /// Any phase → Closing (FIN not yet sent); returns the stream this ends, if it was one.
    /// A connection already closing stays as it is.
    pub fn begin_closing(&mut self) -> Option<StreamState> {
        let user = match &self.phase {
            Phase::Closing { .. } => return None,
            Phase::Stream(stream) => Some(stream.user),
            Phase::Request | Phase::Committing => None,
        };
        self.inbuf = None;
        match std::mem::replace(&mut self.phase, Phase::Closing { user, fin_sent: false }) {
            Phase::Stream(stream) => Some(stream),
            _ => None,
        }
    }

    /// Closing with everything flushed: sends FIN once. Returns whether the connection is
    /// over (FIN sent and the client's EOF seen), so nothing is left to linger for.
    pub fn fin_if_flushed(&mut self) -> bool {
        if self.unsent.is_some() {
            return false;
        }
        let Phase::Closing { fin_sent, .. } = &mut self.phase else {
            return false;
        };
        if !*fin_sent {
            *fin_sent = true;
            let _ = self.sock.shutdown(std::net::Shutdown::Write);
        }
        self.peer_closed
    }

    pub fn stream_user(&self) -> Option<UserId> {
        match &self.phase {
            Phase::Stream(s) => Some(s.user),
            _ => None,
        }
    }

    /// Appends up to `max` bytes from the socket to `buf`.
    ///
    /// The bytes go straight into `buf`'s spare capacity: zero-filling 16 KiB before every
    /// read (what `Read::read` on a resized `Vec` costs) was 2 % of a connect's CPU.
    pub fn read_into(&mut self, buf: &mut Vec<u8>, max: usize) -> ReadOutcome {
        use std::os::fd::AsRawFd;
        buf.reserve(max);
        let spare = buf.spare_capacity_mut();
        let want = max.min(spare.len());
        if want == 0 {
            return ReadOutcome::WouldBlock; // a zero-byte recv would look like EOF
        }
        let result = loop {
            // SAFETY: recv writes at most `want` bytes into the spare capacity, which has at
            // least that many; the length is raised below only by what it reports written.
            let rc =
                unsafe { libc::recv(self.sock.as_raw_fd(), spare.as_mut_ptr().cast(), want, 0) };
            if rc >= 0 {
                break Ok(rc as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                break Err(e);
            }
        };
        match result {
            Ok(0) => ReadOutcome::Eof,
            Ok(n) => {
                // SAFETY: the kernel initialised these n bytes (n <= want <= spare capacity).
                unsafe { buf.set_len(buf.len() + n) };
                ReadOutcome::Data(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadOutcome::WouldBlock,
            Err(_) => ReadOutcome::Gone,
        }
    }

    /// Writes as much of `bytes` as the kernel takes now.
    pub fn write_now(&mut self, bytes: &[u8]) -> WriteOutcome {
        let mut done = 0;
        while done < bytes.len() {
            match self.sock.write(&bytes[done..]) {
                Ok(0) => return WriteOutcome::Failed,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return WriteOutcome::Partial(done)
                }
                Err(_) => return WriteOutcome::Failed,
            }
        }
        WriteOutcome::Done
    }

    /// Bytes the kernel still holds for this socket (sent or not, not yet acknowledged).
    pub fn kernel_queued(&self) -> usize {
        use std::os::fd::AsRawFd;
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int through the pointer, which is valid.
        let rc = unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        if rc == 0 {
            queued.max(0) as usize
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle stream is this struct in a slab entry and nothing else (plus 16 bytes of timer
    /// and 4 of registry): keep it small, or density goes with it.
    #[test]
    fn an_idle_stream_stays_small() {
        let size = std::mem::size_of::<Conn>();
        let entry = std::mem::size_of::<slab::Slab<Conn>>(); // the slab itself, not per entry
        println!("Conn: {size} bytes; Phase: {}; slab: {entry}", std::mem::size_of::<Phase>());
        assert!(size <= 72, "Conn grew to {size} bytes");
    }
}
