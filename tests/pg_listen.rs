//! The listener against a real, throwaway PostgreSQL (tests/pg_harness): events arrive only
//! after commit, in order, and wake a mio `Poll`; a killed listening connection and a
//! PostgreSQL restart are reported and followed by a catch-up that, driven through the gap
//! tracker as the loop will drive it, delivers every notification exactly once, in order.
#![cfg(feature = "postgres")]

mod pg_harness;

use mio::{Events, Poll, Token, Waker};
use periode_sse::domain::UserId;
use periode_sse::pg::{Event, Heard, Listener, PgStore, PgUri, Tracker, Verdict};
use periode_sse::spending::{AlertPercentage, Limit};
use pg_harness::Pg;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NOW: i64 = 1_761_037_745_915;
const U: UserId = UserId(1);

fn open(uri: &str) -> PgStore {
    PgStore::open(&PgUri::parse(uri).unwrap()).unwrap()
}

fn limit_covering_now() -> Limit {
    let alert = AlertPercentage::new(80.0).unwrap();
    Limit { max_limit: 100_000, alert, periode_start_ms: NOW - 1000, periode_end_ms: NOW + 1000 }
}

/// One transaction and its notification, in one batch, as `writes::apply` does it.
fn write_one(store: &PgStore, user: UserId, amount: i64) -> u64 {
    store.begin().unwrap();
    store.insert_transaction(user, amount, None, NOW).unwrap().unwrap();
    let status = store.active_status(user, NOW).unwrap().unwrap();
    let mut data = String::new();
    status.write_notification_json(user, NOW, &mut data);
    let id = store.insert_notification(user, &data).unwrap();
    store.commit().unwrap();
    id
}

fn next(rx: &Receiver<Heard>, within: Duration) -> Heard {
    rx.recv_timeout(within).unwrap_or_else(|e| panic!("nothing heard within {within:?}: {e}"))
}

/// The next message, which must be an event sent by the server process `from`.
fn next_event(rx: &Receiver<Heard>, within: Duration, from: Option<i32>) -> Event {
    match next(rx, within) {
        Heard::Event { event, from: sender } => {
            assert_eq!(Some(sender), from, "the event names the process that sent it");
            event
        }
        other => panic!("expected an event, got {other:?}"),
    }
}

/// The next message that is not an event (events of earlier writes may still be queued).
fn next_state(rx: &Receiver<Heard>, within: Duration) -> Heard {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next(rx, left.max(Duration::from_millis(1))) {
            Heard::Event { .. } => continue,
            other => return other,
        }
    }
}

#[test]
fn events_arrive_after_commit_in_order_and_wake_the_poll() {
    let pg = Pg::start();
    let uri = pg.create_db("ordering");
    let store = open(&uri);
    let mut poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), Token(7)).unwrap());
    let (listener, rx) = Listener::spawn_with_waker(PgUri::parse(&uri).unwrap(), waker).unwrap();
    let mut events = Events::with_capacity(8);
    poll.poll(&mut events, Some(Duration::from_secs(10))).unwrap();
    assert!(events.iter().any(|e| e.token() == Token(7)), "the listener woke the poll");
    assert_eq!(rx.try_recv().unwrap(), Heard::Up);
    assert_eq!(rx.try_recv().unwrap(), Heard::CatchUp);
    assert!(listener.backend_pid().is_some());

    store.begin().unwrap();
    store.put_user(U, true).unwrap();
    store.put_limit(U, &limit_covering_now()).unwrap().unwrap();
    store.put_user(UserId(2), true).unwrap();
    // User 2 has no limit: a transaction without a notification is a `v` event at commit.
    store.insert_transaction(UserId(2), 5, None, NOW).unwrap().unwrap();
    store.insert_transaction(U, 70_000, None, NOW).unwrap().unwrap();
    let status = store.active_status(U, NOW).unwrap().unwrap();
    let mut data = String::new();
    status.write_notification_json(U, NOW, &mut data);
    assert_eq!(store.insert_notification(U, &data).unwrap(), 1);
    // Nothing is heard before the commit: durable before pushed.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    store.commit().unwrap();

    let within = Duration::from_secs(5);
    // Every event says which server process sent it: the store's, whose node skips them.
    let pid = store.backend_pid();
    assert!(pid.is_some() && pid != listener.backend_pid());
    assert_eq!(next_event(&rx, within, pid), Event::ActiveChanged { user: U, active: true });
    assert_eq!(next_event(&rx, within, pid), Event::LimitChanged { user: U });
    assert_eq!(
        next_event(&rx, within, pid),
        Event::ActiveChanged { user: UserId(2), active: true }
    );
    assert_eq!(
        next_event(&rx, within, pid),
        Event::Notification { user: U, id: 1, data: data.clone() }
    );
    assert_eq!(next_event(&rx, within, pid), Event::SpendingChanged { user: UserId(2) });
    assert!(data.contains("\"currentSpending\":70000"), "{data}");

    // A rolled-back batch is never heard.
    store.begin().unwrap();
    store.put_user(U, false).unwrap();
    store.rollback();
    assert_eq!(write_one(&store, U, 1), 2);
    match next_event(&rx, within, pid) {
        Event::Notification { user, id, .. } => assert_eq!((user, id), (U, 2)),
        other => panic!("expected notification 2, got {other:?}"),
    }
    // A stranger's payload on our channel is reported, not guessed at.
    pg.psql("ordering", "NOTIFY periode_sse, 'hello'");
    assert_eq!(next(&rx, within), Heard::Unreadable);
    listener.stop();
}

/// What the loop will do with what it hears, reduced to one user's delivered ids.
struct Node {
    tracker: Tracker,
    delivered: Vec<u64>,
}

impl Node {
    fn hear(&mut self, heard: Heard, store: &PgStore) {
        match heard {
            Heard::Event { event: Event::Notification { user, id, .. }, .. } => {
                match self.tracker.offer_live(user, id) {
                    Verdict::Deliver => self.delivered.push(id),
                    Verdict::CatchUp { after } => self.catch_up(user, after, store),
                    Verdict::Duplicate | Verdict::Wait | Verdict::Untracked => {}
                }
            }
            Heard::CatchUp | Heard::Unreadable => {
                for (user, after) in self.tracker.catch_up_all() {
                    self.catch_up(user, after, store);
                }
            }
            Heard::Event { .. } | Heard::Up | Heard::Down(_) => {}
        }
    }

    fn catch_up(&mut self, user: UserId, mut after: u64, store: &PgStore) {
        loop {
            let mut rows = Vec::new();
            store.notifications_after(user, after, |id, _| rows.push(id)).unwrap();
            for id in rows {
                if self.tracker.offer_caught_up(user, id) == Verdict::Deliver {
                    self.delivered.push(id);
                }
            }
            match self.tracker.finish_catch_up(user) {
                Some(again) => after = again,
                None => return,
            }
        }
    }
}

#[test]
fn a_killed_listener_connection_reconnects_and_nothing_is_lost_or_repeated() {
    let pg = Pg::start();
    let uri = pg.create_db("killed");
    let (writer, reader) = (open(&uri), open(&uri));
    writer.begin().unwrap();
    writer.put_user(U, true).unwrap();
    writer.put_limit(U, &limit_covering_now()).unwrap().unwrap();
    writer.commit().unwrap();
    let (listener, rx) = Listener::spawn(PgUri::parse(&uri).unwrap(), || {}).unwrap();
    assert_eq!(next(&rx, Duration::from_secs(10)), Heard::Up);
    let mut node = Node { tracker: Tracker::new(), delivered: Vec::new() };
    node.tracker.track(U, 0);

    let mut kills = 0;
    let mut expected = 0;
    for round in 1..=30u64 {
        expected += 1;
        assert_eq!(write_one(&writer, U, 1), expected);
        if round % 10 == 5 {
            let before = listener.backend_pid();
            assert_eq!(pg.terminate("killed", "periode-sse listener"), 1);
            kills += 1;
            // Written while nobody listens: only the catch-up can deliver these.
            expected += 1;
            assert_eq!(write_one(&writer, U, 1), expected);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let heard = next(
                    &rx,
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                );
                let up = heard == Heard::Up;
                node.hear(heard, &reader);
                if up {
                    break;
                }
            }
            assert_ne!(listener.backend_pid(), before, "a new connection");
            continue;
        }
        while let Ok(heard) = rx.try_recv() {
            node.hear(heard, &reader);
        }
    }
    assert_eq!(kills, 3);
    let last = writer.last_notification_id(U).unwrap();
    assert_eq!(last, 33);
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.delivered.len() < last as usize {
        let heard = next(
            &rx,
            deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
        );
        node.hear(heard, &reader);
    }
    assert_eq!(node.delivered, (1..=last).collect::<Vec<_>>());
    listener.stop();
}

#[test]
fn a_postgres_restart_is_reported_down_then_up_and_caught_up() {
    let mut pg = Pg::start();
    let uri = pg.create_db("restart");
    let writer = open(&uri);
    writer.begin().unwrap();
    writer.put_user(U, true).unwrap();
    writer.put_limit(U, &limit_covering_now()).unwrap().unwrap();
    writer.commit().unwrap();
    let (listener, rx) = Listener::spawn(PgUri::parse(&uri).unwrap(), || {}).unwrap();
    assert_eq!(next(&rx, Duration::from_secs(10)), Heard::Up);
    assert_eq!(next(&rx, Duration::from_secs(1)), Heard::CatchUp);

    pg.stop();
    let stopped = Instant::now();
    match next_state(&rx, Duration::from_secs(5)) {
        Heard::Down(why) => assert!(why.contains("postgres://postgres@127.0.0.1"), "{why}"),
        other => panic!("expected Down, got {other:?}"),
    }
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "down noticed after {:?}",
        stopped.elapsed()
    );

    pg.run();
    let restarted = Instant::now();
    assert_eq!(next_state(&rx, Duration::from_secs(10)), Heard::Up);
    assert!(
        restarted.elapsed() < Duration::from_secs(5),
        "up again after {:?}",
        restarted.elapsed()
    );
    assert_eq!(next(&rx, Duration::from_secs(1)), Heard::CatchUp);
    // The writer's store reconnects by itself; its next write is heard.
    let deadline = Instant::now() + Duration::from_secs(5);
    let id = loop {
        writer.rollback_if_open();
        let attempt = writer.begin().and_then(|()| {
            writer.insert_transaction(U, 1, None, NOW)?.unwrap();
            writer.insert_notification(U, "{}")
        });
        match attempt.and_then(|id| writer.commit().map(|()| id)) {
            Ok(id) => break id,
            Err(e) => {
                writer.rollback();
                assert!(Instant::now() < deadline, "writes still fail: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_eq!(
        next_event(&rx, Duration::from_secs(5), writer.backend_pid()),
        Event::Notification { user: U, id, data: "{}".into() }
    );
    listener.stop();
}

#[test]
fn a_listening_backend_that_stops_answering_is_reported_down_and_replaced() {
    let pg = Pg::start();
    let uri = pg.create_db("frozen");
    let (listener, rx) = Listener::spawn(PgUri::parse(&uri).unwrap(), || {}).unwrap();
    assert_eq!(next(&rx, Duration::from_secs(10)), Heard::Up);
    assert_eq!(next(&rx, Duration::from_secs(1)), Heard::CatchUp);
    let pid = listener.backend_pid().unwrap();
    // SAFETY: signals to a server process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let frozen = Instant::now();
    let down = next_state(&rx, Duration::from_secs(5));
    let noticed = frozen.elapsed();
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(matches!(down, Heard::Down(_)), "{down:?}");
    assert!(noticed < Duration::from_secs(2), "noticed after {noticed:?}");
    assert_eq!(next_state(&rx, Duration::from_secs(5)), Heard::Up);
    assert_ne!(listener.backend_pid(), Some(pid));
    listener.stop();
}
