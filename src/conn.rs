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
//! Density matters more than anything here: an idle stream is this struct and nothing else
//! (48 bytes). Bytes wait unsent only while the kernel refuses them, and the request buffer
//! exists only while a request is half-received; both live in one box (`Buffers`), which an
//! idle stream does not have.

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
        /// The user whose stream this was, if `was_stream`. Not an `Option<UserId>`: that is
        /// 16 bytes, and this variant must fit beside `StreamState`'s niche (its `chunked`)
        /// for `Phase` to stay 24 bytes, not 32.
        user: UserId,
        was_stream: bool,
        fin_sent: bool,
    },
}

impl Phase {
    /// The user of a stream, or of the stream a closing connection was.
    pub fn user(&self) -> Option<UserId> {
        match self {
            Phase::Stream(s) => Some(s.user),
            Phase::Closing { user, was_stream: true, .. } => Some(*user),
            _ => None,
        }
    }
}

pub struct StreamState {
    pub user: UserId,
    /// Monotonic ms at which the token's `exp` plus leeway passes. Kept whole: a token may
    /// be valid for years, and the expiry must fire to the millisecond.
    pub expires_at_ms: u64,
    /// The next heartbeat's monotonic ms, low 32 bits only: it is never more than one period
    /// (`--heartbeat` ≤ 86 400 s, under 2^27 ms) ahead of now, so the rest of it is now's.
    /// This keeps `StreamState` at 24 bytes, and `Conn` at 48.
    next_heartbeat: u32,
    /// HTTP/1.1 streams are chunked (so their end is visible); HTTP/1.0 ones close-delimited.
    pub chunked: bool,
}

/// How far ahead of now a heartbeat can be (a period is at most 86 400 000 ms < 2^27).
/// A wrapped time read as further ahead than this is in the past.
const HEARTBEAT_AHEAD_MAX: u32 = 1 << 27;

impl StreamState {
    pub fn new(user: UserId, expires_at_ms: u64, next_heartbeat_ms: u64, chunked: bool) -> Self {
        StreamState { user, expires_at_ms, next_heartbeat: next_heartbeat_ms as u32, chunked }
    }

    /// How many ms ahead of `now_ms` the next heartbeat is, or `None` when it is due (at or
    /// before now). Exact for any uptime: only the distance to now is read from the wrapped
    /// value, and it is within 2^27 ms ahead or else behind (by up to 2^32 - 2^27 ms, about
    /// 48 days: a loop that stalled longer than that reads a missed heartbeat as at most
    /// 37 hours ahead).
    fn heartbeat_ahead(&self, now_ms: u64) -> Option<u64> {
        let ahead = self.next_heartbeat.wrapping_sub(now_ms as u32);
        (ahead != 0 && ahead <= HEARTBEAT_AHEAD_MAX).then_some(ahead as u64)
    }

    pub fn heartbeat_due(&self, now_ms: u64) -> bool {
        self.heartbeat_ahead(now_ms).is_none()
    }

    /// The next heartbeat's monotonic ms.
    pub fn next_heartbeat_ms(&self, now_ms: u64) -> u64 {
        match self.heartbeat_ahead(now_ms) {
            Some(ahead) => now_ms + ahead,
            None => {
                now_ms.saturating_sub(u64::from((now_ms as u32).wrapping_sub(self.next_heartbeat)))
            }
        }
    }

    /// Moves a due heartbeat to the first time after `now_ms` on its grid (every `period_ms`
    /// from the first), as `while next <= now { next += period }` did; returns it.
    pub fn advance_heartbeat(&mut self, now_ms: u64, period_ms: u64) -> u64 {
        let mut next = self.next_heartbeat_ms(now_ms);
        if next <= now_ms {
            let behind = now_ms - next;
            next = now_ms + period_ms.max(1) - behind % period_ms.max(1);
            self.next_heartbeat = next as u32;
        }
        next
    }

    /// The one deadline the wheel holds for this stream: its next heartbeat or its expiry.
    pub fn deadline_ms(&self, now_ms: u64) -> u64 {
        self.next_heartbeat_ms(now_ms).min(self.expires_at_ms)
    }
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

/// A connection's occasional buffers, the request half-received and the bytes the kernel
/// refused, in one box that exists only while one of them does: 8 bytes in every `Conn`
/// instead of two boxes' 16.
#[derive(Default)]
pub struct Buffers(Option<Box<Spill>>);

#[derive(Default)]
struct Spill {
    request: Option<InBuf>,
    unsent: Option<Unsent>,
}

impl Buffers {
    /// Whether a half-received request is held.
    pub fn has_request(&self) -> bool {
        self.request().is_some()
    }

    pub fn request(&self) -> Option<&InBuf> {
        self.0.as_ref().and_then(|s| s.request.as_ref())
    }

    pub fn take_request(&mut self) -> Option<InBuf> {
        let taken = self.0.as_mut().and_then(|s| s.request.take());
        self.drop_if_empty();
        taken
    }

    pub fn set_request(&mut self, request: InBuf) {
        self.0.get_or_insert_with(Box::default).request = Some(request);
    }

    pub fn clear_request(&mut self) {
        drop(self.take_request());
    }

    pub fn has_unsent(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.unsent.is_some())
    }

    pub fn unsent_mut(&mut self) -> Option<&mut Unsent> {
        self.0.as_mut().and_then(|s| s.unsent.as_mut())
    }

    pub fn take_unsent(&mut self) -> Option<Unsent> {
        let taken = self.0.as_mut().and_then(|s| s.unsent.take());
        self.drop_if_empty();
        taken
    }

    pub fn set_unsent(&mut self, unsent: Unsent) {
        self.0.get_or_insert_with(Box::default).unsent = Some(unsent);
    }

    fn drop_if_empty(&mut self) {
        if self.0.as_ref().is_some_and(|s| s.request.is_none() && s.unsent.is_none()) {
            self.0 = None;
        }
    }
}

pub struct Conn {
    pub sock: TcpStream,
    pub gen: u32,
    pub phase: Phase,
    /// The request buffer and the unsent bytes (`Buffers`), neither of which an idle stream has.
    pub bufs: Buffers,
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
            bufs: Buffers::default(),
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
        self.bufs.clear_request();
    }

    /// Any phase → Closing (FIN not yet sent); returns the stream this ends, if it was one.
    /// A connection already closing stays as it is.
    pub fn begin_closing(&mut self) -> Option<StreamState> {
        let (user, was_stream) = match &self.phase {
            Phase::Closing { .. } => return None,
            Phase::Stream(stream) => (stream.user, true),
            Phase::Request | Phase::Committing => (UserId(0), false),
        };
        self.bufs.clear_request();
        let closing = Phase::Closing { user, was_stream, fin_sent: false };
        match std::mem::replace(&mut self.phase, closing) {
            Phase::Stream(stream) => Some(stream),
            _ => None,
        }
    }

    /// Closing with everything flushed: sends FIN once. Returns whether the connection is
    /// over (FIN sent and the client's EOF seen), so nothing is left to linger for.
    pub fn fin_if_flushed(&mut self) -> bool {
        if self.bufs.has_unsent() {
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

    /// An idle stream is this struct in a slab entry and nothing else (plus 8 bytes of timer
    /// and 4 of registry): keep it small, or density goes with it.
    #[test]
    fn an_idle_stream_stays_small() {
        use std::mem::size_of;
        let (conn, entry) = (size_of::<Conn>(), size_of::<slab::Slab<Conn>>());
        println!(
            "Conn: {conn} bytes; Phase: {}; StreamState: {}; Buffers: {}; slab entry: {}; slab: {entry}",
            size_of::<Phase>(),
            size_of::<StreamState>(),
            size_of::<Buffers>(),
            slab_entry_size(),
        );
        // mio's socket is 4 bytes in a release build, 16 in a debug one (it keeps the id of
        // its selector to check registrations): count the release figure.
        let debug_extra = size_of::<TcpStream>() - 4;
        assert!(conn - debug_extra <= 48, "Conn grew to {} bytes", conn - debug_extra);
        let stride = slab_entry_size() - debug_extra;
        assert!(stride <= 48, "a slab entry grew to {stride} bytes");
    }

    /// The slab's per-entry stride, measured (its `Entry<T>`, `Vacant(usize)` or
    /// `Occupied(T)`, is private): the distance between two neighbours, two real
    /// connections over loopback.
    fn slab_entry_size() -> usize {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let mut slab = slab::Slab::<Conn>::new();
        for gen in 1..=2 {
            let sock = std::net::TcpStream::connect(addr).expect("connect loopback");
            let _ = slab.insert(Conn::new(TcpStream::from_std(sock), gen));
        }
        (&slab[1] as *const Conn as usize) - (&slab[0] as *const Conn as usize)
    }

    const HOUR: u64 = 3_600_000;
    const DAY: u64 = 24 * HOUR;

    #[test]
    fn heartbeats_fire_on_their_grid_across_the_32_bit_wrap() {
        let period = 30_000;
        // Started 50 days into the server's life (past 2^32 ms, 49.7 days), with a token
        // valid for a year.
        let start = 50 * DAY;
        let mut s = StreamState::new(UserId(1), start + 365 * DAY, start + period, true);
        assert_eq!(s.deadline_ms(start), start + period);
        assert!(!s.heartbeat_due(start));
        assert!(!s.heartbeat_due(start + period - 1));
        assert!(s.heartbeat_due(start + period));
        // Step through the wrap of the low 32 bits and many periods beyond.
        let wrap = 1u64 << 32;
        let mut now = start + period;
        let mut next = start + period;
        for _ in 0..200_000 {
            assert!(s.heartbeat_due(now), "due at {now}");
            next += period;
            assert_eq!(s.advance_heartbeat(now, period), next);
            assert_eq!(s.next_heartbeat_ms(now), next);
            assert!(!s.heartbeat_due(next - 1));
            assert_eq!(s.deadline_ms(now), next);
            now = next + 7; // fired a little late
        }
        assert!(now > 2 * wrap, "crossed the wrap twice");
        // The year-long expiry is still exact, to the millisecond.
        assert_eq!(s.expires_at_ms, start + 365 * DAY);
    }

    #[test]
    fn a_late_heartbeat_keeps_its_grid() {
        let period = 30_000;
        let start = (1u64 << 32) - 10_000; // the wrap falls inside the first period
        let mut s = StreamState::new(UserId(1), u64::MAX, start + period, false);
        // Fired 3.5 periods late (a stalled loop): the next is the grid's next after now.
        let now = start + period + 3 * period + period / 2;
        assert!(s.heartbeat_due(now));
        assert_eq!(s.advance_heartbeat(now, period), start + 5 * period);
        // As the old `while next <= now { next += period }`: exactly on the grid moves one on.
        let now = start + 5 * period;
        assert_eq!(s.advance_heartbeat(now, period), start + 6 * period);
        // Not due: nothing moves.
        assert_eq!(s.advance_heartbeat(now + 1, period), start + 6 * period);
        // A heartbeat a whole day ahead (the largest period) is read as ahead, not behind.
        let s = StreamState::new(UserId(1), u64::MAX, now + DAY, false);
        assert_eq!(s.next_heartbeat_ms(now), now + DAY);
        assert!(!s.heartbeat_due(now + DAY - 1));
        assert!(s.heartbeat_due(now + DAY));
        // And one missed by 40 days (a stalled process) is read as behind.
        assert!(s.heartbeat_due(now + 41 * DAY));
        assert_eq!(s.next_heartbeat_ms(now + 41 * DAY), now + DAY);
    }

    #[test]
    fn the_expiry_wins_when_it_is_sooner() {
        let s = StreamState::new(UserId(1), 1_000_500, 1_030_000, true);
        assert_eq!(s.deadline_ms(1_000_000), 1_000_500);
    }
}
