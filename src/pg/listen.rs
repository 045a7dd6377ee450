//! The listener: a thread with its own connection that `LISTEN`s on the cluster's channel
//! and hands what it hears to the loop over a channel, waking the loop with a `mio::Waker`.
//!
//! It never touches the loop's state; the loop drains the receiver when woken. It reports
//! `Up` once listening (and then `CatchUp`: NOTIFY is not queued for a listener that is not
//! there, so whatever was committed while it was not listening must be read from the
//! notifications table), `Down` when the connection is lost, and each event in the order the
//! server delivered them (commit order). A lost connection is made again with a backoff of
//! 100 ms doubling to `MAX_BACKOFF`. An idle connection is checked with an empty query every
//! `CHECK_EVERY`, so that a server that went away silently is noticed within about 2 s.
//!
//! The thread runs the blocking `postgres` client, which runs a tokio runtime inside, on this
//! thread only. `Listener::stop` (or drop) ends it within `POLL` plus one connect timeout.

use super::connect::connect_blocking;
use super::error::{full_text, PgError};
use super::payload::{Event, CHANNEL};
use super::uri::PgUri;
use postgres::fallible_iterator::FallibleIterator;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `application_name` of the listener's connection.
pub const APPLICATION: &str = "periode-sse listener";
const POLL: Duration = Duration::from_millis(200);
const CHECK_EVERY: Duration = Duration::from_millis(400);
const CHECK_TIMEOUT: Duration = Duration::from_millis(800);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Events held for a loop that has not drained them yet; past this the listener waits (the
/// server keeps queueing NOTIFY for it meanwhile, so nothing is lost). Two of the listener's
/// groups (`GROUP`): one waiting for the loop while the next forms. The bound is memory that
/// is touched at once and kept: a bounded channel writes every slot's stamp when it is made,
/// so 65 536 slots of a 48-byte `Heard` were 3 MB of the node's RSS from the start
/// (docs/memory.md).
const CHANNEL_BOUND: usize = 2 * GROUP;
/// The most notifications read from the connection before the loop is woken for them.
const GROUP: usize = 1024;

/// What the listener tells the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Listening: the change feed is up (`periode_sse_store_up` may go to 1).
    Up,
    /// Everything committed while the feed was down is unknown: catch up every tracked user
    /// (`gaps::Tracker::catch_up_all`) and forget cached views. Follows every `Up`.
    CatchUp,
    /// The connection is lost (the message says why, masked); reconnecting.
    Down(String),
    /// An event, and the server process that sent it (a node knows its own store's, whose
    /// events it has already applied: `Notification::process_id`).
    Event { event: Event, from: i32 },
    /// A payload on our channel this version cannot read: treat as `CatchUp`.
    Unreadable,
}

pub struct Listener {
    stop: Arc<AtomicBool>,
    /// The backend pid of the current connection (0 while none), for tests and operators.
    backend_pid: Arc<AtomicI32>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Starts the thread. `wake` is called after each group of messages is queued; in the
    /// server it is `mio::Waker::wake`.
    pub fn spawn(
        uri: PgUri,
        wake: impl Fn() + Send + 'static,
    ) -> std::io::Result<(Listener, Receiver<Heard>)> {
        let (sender, receiver) = sync_channel(CHANNEL_BOUND);
        let stop = Arc::new(AtomicBool::new(false));
        let backend_pid = Arc::new(AtomicI32::new(0));
        let run =
            Run { uri, sender, wake: Box::new(wake), stop: stop.clone(), pid: backend_pid.clone() };
        let thread =
            std::thread::Builder::new().name("pg-listener".into()).spawn(move || run.forever())?;
        Ok((Listener { stop, backend_pid, thread: Some(thread) }, receiver))
    }

    /// With a `mio::Waker`, as the server uses it.
    pub fn spawn_with_waker(
        uri: PgUri,
        waker: Arc<mio::Waker>,
    ) -> std::io::Result<(Listener, Receiver<Heard>)> {
        Listener::spawn(uri, move || {
            if let Err(e) = waker.wake() {
                log::error!("cannot wake the loop: {e}");
            }
        })
    }

    pub fn backend_pid(&self) -> Option<i32> {
        match self.backend_pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

struct Run {
    uri: PgUri,
    sender: SyncSender<Heard>,
    wake: Box<dyn Fn() + Send>,
    stop: Arc<AtomicBool>,
    pid: Arc<AtomicI32>,
}

impl Run {
    fn forever(self) {
        let mut backoff = FIRST_BACKOFF;
        let mut reported_down = false;
        while !self.stopped() {
            let lost = match self.listen() {
                Ok(client) => {
                    backoff = FIRST_BACKOFF;
                    reported_down = false;
                    self.receive(client)
                }
                Err(e) => e,
            };
            self.pid.store(0, Ordering::Relaxed);
            if self.stopped() {
                return;
            }
            // One `Down` per outage, not one per failed attempt.
            if !reported_down {
                log::warn!("{lost}");
                if !self.send(vec![Heard::Down(lost.to_string())]) {
                    return;
                }
                reported_down = true;
            }
            self.sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps in short steps so that `stop` is seen quickly.
    fn sleep(&self, total: Duration) {
        let until = Instant::now() + total;
        while !self.stopped() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    fn listen(&self) -> Result<postgres::Client, PgError> {
        let mut client = connect_blocking(&self.uri, APPLICATION)?;
        let listen = format!("LISTEN {CHANNEL}");
        client.batch_execute(&listen).map_err(|e| lost(&self.uri, &e))?;
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .and_then(|row| row.try_get(0))
            .map_err(|e| lost(&self.uri, &e))?;
        self.pid.store(pid, Ordering::Relaxed);
        Ok(client)
    }

    /// Delivers until the connection is lost (the error) or `stop`.
    fn receive(&self, mut client: postgres::Client) -> PgError {
        if !self.send(vec![Heard::Up, Heard::CatchUp]) {
            return PgError::Unavailable("the loop is gone".into());
        }
        let mut checked = Instant::now();
        while !self.stopped() {
            let mut heard = Vec::new();
            {
                let mut notifications = client.notifications();
                let mut waiting = notifications.timeout_iter(POLL);
                match waiting.next() {
                    Ok(Some(n)) => heard.push(parse(&n)),
                    Ok(None) => {}
                    Err(e) => return lost(&self.uri, &e),
                }
                drop(waiting);
                // Whatever else has arrived, without waiting: one wake for all of it.
                let mut ready = notifications.iter();
                loop {
                    match ready.next() {
                        Ok(Some(n)) => heard.push(parse(&n)),
                        Ok(None) => break,
                        Err(e) => return lost(&self.uri, &e),
                    }
                    if heard.len() >= GROUP {
                        break;
                    }
                }
            }
            if client.is_closed() {
                return PgError::Unavailable(format!(
                    "lost the listening connection to {}",
                    self.uri
                ));
            }
            if heard.is_empty() {
                if checked.elapsed() >= CHECK_EVERY {
                    if let Err(e) = client.is_valid(CHECK_TIMEOUT) {
                        abandon(client);
                        return lost(&self.uri, &e);
                    }
                    checked = Instant::now();
                }
                continue;
            }
            checked = Instant::now();
            if !self.send(heard) {
                return PgError::Unavailable("the loop is gone".into());
            }
        }
        PgError::Unavailable("stopped".into())
    }

    /// Queues the messages and wakes the loop once. False when the receiver is gone.
    fn send(&self, messages: Vec<Heard>) -> bool {
        for message in messages {
            if self.sender.send(message).is_err() {
                return false;
            }
        }
        (self.wake)();
        true
    }
}

fn parse(n: &postgres::Notification) -> Heard {
    if n.channel() != CHANNEL {
        return Heard::Unreadable;
    }
    match Event::parse(n.payload()) {
        Some(event) => Heard::Event { event, from: n.process_id() },
        None => Heard::Unreadable,
    }
}

/// Drops a connection whose server stopped answering on a thread of its own: the blocking
/// client's drop waits for the server to close the connection, which a frozen server never
/// does (a cut network ends it through keepalives). The listener must not wait with it.
fn abandon(client: postgres::Client) {
    let closing = std::thread::Builder::new().name("pg-listener-close".into());
    if let Err(e) = closing.spawn(move || drop(client)) {
        // The closure, and the client in it, was dropped here, unrun: this once the listener
        // did wait (until the server answers or keepalives end the connection).
        log::warn!("cannot close the silent listening connection in the background: {e}");
    }
}

fn lost(uri: &PgUri, e: &postgres::Error) -> PgError {
    PgError::Unavailable(format!("lost the listening connection to {uri}: {}", full_text(e)))
        .masked(uri)
}
