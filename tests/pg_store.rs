//! The PostgreSQL store against a real, throwaway PostgreSQL (tests/pg_harness): the reads
//! and batched writes, schema creation racing on an empty database, concurrent writers on
//! several stores, PostgreSQL stopped and restarted, a backend that stops answering, TLS,
//! the password kept out of every error, deadlocks, a user created by another node
//! mid-batch, and no batch reading a whole table.
#![cfg(feature = "postgres")]

mod pg_harness;

use periode_sse::api::WriteOp;
use periode_sse::backend::{Backend, Written};
use periode_sse::domain::UserId;
use periode_sse::pg::{Event, Heard, Listener, PgError, PgStore, PgUri};
use periode_sse::spending::{AlertPercentage, Limit};
use pg_harness::Pg;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const NOW: i64 = 1_761_037_745_915; // 2025-10-21

fn open(uri: &str) -> PgStore {
    PgStore::open(&PgUri::parse(uri).unwrap()).unwrap()
}

fn limit_covering_now() -> Limit {
    let alert = AlertPercentage::new(80.0).unwrap();
    Limit {
        max_limit: 100_000,
        alert,
        periode_start_ms: NOW - 86_400_000,
        periode_end_ms: NOW + 86_400_000,
    }
}

/// What `writes::apply` does for a transaction: insert it, and store the status it causes.
fn record(store: &PgStore, user: UserId, amount: i64) -> Result<Option<u64>, PgError> {
    store.insert_transaction(user, amount, Some("t"), NOW)?.expect("known user");
    let Some(status) = store.active_status(user, NOW)? else { return Ok(None) };
    let mut data = String::new();
    status.write_notification_json(user, NOW, &mut data);
    store.insert_notification(user, &data).map(Some)
}

fn setup_user(store: &PgStore, user: UserId) {
    store.begin().unwrap();
    store.put_user(user, true).unwrap();
    store.put_limit(user, &limit_covering_now()).unwrap().unwrap();
    store.commit().unwrap();
}

#[test]
fn reads_and_writes_mirror_the_sqlite_store() {
    let pg = Pg::start();
    let store = open(&pg.create_db("mirror"));
    store.seed_demo(NOW).unwrap();
    store.seed_demo(NOW + 1000).unwrap();
    let status = store.active_status(UserId(13), NOW).unwrap().unwrap();
    assert_eq!((status.current_spending, status.percentage_hundredths), (267_000, 13_350));
    assert!(status.is_alert);
    assert_eq!(store.user_active(UserId(13)).unwrap(), Some(true));
    assert_eq!(store.user_active(UserId(14)).unwrap(), None);
    assert_eq!(store.last_notification_id(UserId(13)).unwrap(), 0);

    // The last 1000 notifications are kept, ids from 1, contiguous.
    store.begin().unwrap();
    store.put_user(UserId(1), true).unwrap();
    for i in 1..=1005u64 {
        assert_eq!(store.insert_notification(UserId(1), &format!("{{\"n\":{i}}}")).unwrap(), i);
    }
    store.commit().unwrap();
    let mut ids = Vec::new();
    store.notifications_after(UserId(1), 0, |id, _| ids.push(id)).unwrap();
    assert_eq!((ids.len(), ids[0], ids[999]), (1000, 6, 1005));
    let mut tail = Vec::new();
    store
        .notifications_after(UserId(1), 1003, |id, data| tail.push((id, data.to_string())))
        .unwrap();
    assert_eq!(tail, vec![(1004, "{\"n\":1004}".to_string()), (1005, "{\"n\":1005}".to_string())]);
    assert_eq!(store.last_notification_id(UserId(1)).unwrap(), 1005);

    // A rollback leaves nothing behind; refusals are the SQLite store's.
    store.begin().unwrap();
    assert_eq!(record(&store, UserId(13), 1_000).unwrap(), Some(1));
    store.rollback();
    assert_eq!(store.active_status(UserId(13), NOW).unwrap().unwrap().current_spending, 267_000);
    assert_eq!(store.last_notification_id(UserId(13)).unwrap(), 0);
    store.begin().unwrap();
    use periode_sse::store::WriteRefusal;
    assert_eq!(
        store.insert_transaction(UserId(99), 1, None, NOW).unwrap(),
        Err(WriteRefusal::UnknownUser)
    );
    assert_eq!(
        store.put_limit(UserId(99), &limit_covering_now()).unwrap(),
        Err(WriteRefusal::UnknownUser)
    );
    store.put_user(UserId(2), true).unwrap();
    assert!(store.insert_transaction(UserId(2), i64::MAX, None, NOW).unwrap().is_ok());
    assert_eq!(
        store.insert_transaction(UserId(2), 1, None, NOW).unwrap(),
        Err(WriteRefusal::TotalOverflow)
    );
    let tx = store.insert_transaction(UserId(13), 2_000, Some("coffee"), NOW).unwrap().unwrap();
    assert_eq!(
        (tx.user, tx.amount, tx.description.as_deref()),
        (UserId(13), 2_000, Some("coffee"))
    );
    store.commit().unwrap();
    assert_eq!(store.active_status(UserId(13), NOW).unwrap().unwrap().current_spending, 269_000);
    let status = store.status_for(UserId(13), store.limit(UserId(13)).unwrap().unwrap()).unwrap();
    assert_eq!(status.current_spending, 269_000);
}

#[test]
fn three_stores_opening_an_empty_database_at_once_all_come_up() {
    let pg = Pg::start();
    let uri = pg.create_db("race");
    let barrier = Arc::new(Barrier::new(3));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (uri, barrier) = (uri.clone(), barrier.clone());
            std::thread::spawn(move || {
                let uri = PgUri::parse(&uri).unwrap();
                barrier.wait();
                PgStore::open(&uri).map(|_| ())
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), Ok(()));
    }
    assert_eq!(pg.psql("race", "SELECT value FROM meta WHERE key = 'schema_version'"), "2");
    let tables = pg.psql("race", "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'");
    assert_eq!(tables, "limits,meta,notifications,stream_tickets,transactions,users");
}

#[test]
fn concurrent_writers_on_three_stores_keep_ids_contiguous_and_totals_exact() {
    let pg = Pg::start();
    let uri = pg.create_db("writers");
    let users = [UserId(1), UserId(2), UserId(3)];
    {
        let store = open(&uri);
        for user in users {
            setup_user(&store, user);
        }
    }
    const BATCHES: i64 = 30;
    let barrier = Arc::new(Barrier::new(3));
    let threads: Vec<_> = (0..3i64)
        .map(|node| {
            let (uri, barrier) = (uri.clone(), barrier.clone());
            std::thread::spawn(move || {
                let store = open(&uri);
                barrier.wait();
                let mut written = 0i64;
                for batch in 0..BATCHES {
                    store.begin().unwrap();
                    // Every batch takes its users in ascending order (docs/cluster.md).
                    for user in users.iter().filter(|u| (u.0 + batch + node) % 3 != 0) {
                        record(&store, *user, 10 + node).unwrap().unwrap();
                        written += 10 + node;
                    }
                    store.commit().unwrap();
                }
                written
            })
        })
        .collect();
    let written: i64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let total = pg.psql("writers", "SELECT sum(total_spent) FROM users");
    assert_eq!(total, written.to_string());
    let store = open(&uri);
    for user in users {
        let mut seen = Vec::new();
        store
            .notifications_after(user, 0, |id, data| {
                let v: serde_json::Value = serde_json::from_str(data).unwrap();
                seen.push((id, v["currentSpending"].as_i64().unwrap()));
            })
            .unwrap();
        let count: usize = pg
            .psql(
                "writers",
                &format!("SELECT count(*) FROM transactions WHERE user_id = {}", user.0),
            )
            .parse()
            .unwrap();
        assert_eq!(seen.len(), count, "one notification per transaction of {user}");
        for (i, (id, _)) in seen.iter().enumerate() {
            assert_eq!(*id, i as u64 + 1, "ids of {user} are contiguous from 1");
        }
        // In id order, each status includes every earlier write: spending strictly grows.
        assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "{seen:?}");
        let spent: i64 = pg
            .psql("writers", &format!("SELECT total_spent FROM users WHERE id = {}", user.0))
            .parse()
            .unwrap();
        assert_eq!(seen.last().unwrap().1, spent);
        assert_eq!(store.last_notification_id(user).unwrap(), count as u64);
    }
}

#[test]
fn a_stopped_postgres_fails_requests_fast_and_writes_work_again_after_restart() {
    let mut pg = Pg::start();
    let uri = pg.create_db("restart");
    let store = open(&uri);
    setup_user(&store, UserId(1));
    store.begin().unwrap();
    assert_eq!(record(&store, UserId(1), 5).unwrap(), Some(1));
    store.commit().unwrap();

    pg.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let error = store.begin().and_then(|()| record(&store, UserId(1), 5)).unwrap_err();
        store.rollback();
        assert!(error.is_unavailable(), "{error}");
        assert!(started.elapsed() < Duration::from_secs(2), "failed after {:?}", started.elapsed());
        let started = Instant::now();
        assert!(store.last_notification_id(UserId(2)).unwrap_err().is_unavailable());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    pg.run();
    let back = Instant::now();
    let id = loop {
        let attempt = store.begin().and_then(|()| record(&store, UserId(1), 5)).and_then(|id| {
            store.commit()?;
            Ok(id)
        });
        match attempt {
            Ok(id) => break id,
            Err(e) => {
                store.rollback();
                assert!(back.elapsed() < Duration::from_secs(5), "still failing: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_eq!(id, Some(2));
    assert_eq!(pg.psql("restart", "SELECT total_spent FROM users WHERE id = 1"), "10");
}

#[test]
fn a_backend_that_stops_answering_fails_the_call_within_the_deadline() {
    let pg = Pg::start();
    let uri = pg.create_db("frozen");
    let store = open(&uri);
    setup_user(&store, UserId(1));
    let pid: i32 = pg
        .psql("postgres", "SELECT pid FROM pg_stat_activity WHERE application_name = 'periode-sse store' AND datname = 'frozen'")
        .parse()
        .unwrap();
    // SAFETY: signals to a server process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = Instant::now();
    let result = store.begin().and_then(|()| record(&store, UserId(1), 1));
    let elapsed = started.elapsed();
    unsafe { libc::kill(pid, libc::SIGCONT) };
    store.rollback();
    let error = result.unwrap_err();
    assert!(error.is_unavailable(), "{error}");
    assert!(elapsed < Duration::from_secs(2), "failed after {elapsed:?}");
    // The next call connects anew and works.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.user_active(UserId(1)).is_err() {
        assert!(Instant::now() < deadline, "the store did not come back");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(store.user_active(UserId(1)).unwrap(), Some(true));
}

#[test]
fn every_read_sees_another_nodes_commit_at_once() {
    // No view cache in the store (the loop keeps that one): nothing to keep true here.
    let pg = Pg::start();
    let uri = pg.create_db("cache");
    let (a, b) = (open(&uri), open(&uri));
    setup_user(&a, UserId(1));
    assert_eq!(a.user_active(UserId(1)).unwrap(), Some(true));
    for active in [false, true, false] {
        b.begin().unwrap();
        b.put_user(UserId(1), active).unwrap();
        b.commit().unwrap();
        assert_eq!(a.user_active(UserId(1)).unwrap(), Some(active));
    }
}

#[test]
fn the_password_never_appears_in_an_error() {
    let pg = Pg::start();
    let password = "Sup3r-s3cret-pw";
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    for uri in [
        format!("postgres://postgres:{password}@127.0.0.1:{closed_port}/x?sslmode=disable"),
        format!("postgres://postgres:{password}@127.0.0.1:{}/no_such_db?sslmode=disable", pg.port),
        format!("postgres://{password}:{password}@127.0.0.1:{}/postgres?sslmode=disable", pg.port),
        format!("postgres://postgres:{password}@127.0.0.1:{}/postgres?sslmode=require", pg.port),
        format!("postgres://postgres:{password}@/postgres?host=/nonexistent-dir"),
    ] {
        let error =
            PgStore::open(&PgUri::parse(&uri).unwrap()).map(|_| ()).unwrap_err().to_string();
        assert!(!error.contains(password), "{error}");
        assert!(error.contains(":***@"), "{error}");
    }
    // And once connected: the errors of a store whose server went away.
    let mut pg = pg;
    let uri =
        format!("postgres://postgres:{password}@127.0.0.1:{}/postgres?sslmode=disable", pg.port);
    let store = open(&uri);
    pg.stop();
    let error = store.user_active(UserId(1)).unwrap_err().to_string();
    assert!(!error.contains(password), "{error}");
}

#[test]
fn sslmode_require_refuses_a_server_without_tls() {
    let pg = Pg::start();
    let uri = format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode=require", pg.port);
    match PgStore::open(&PgUri::parse(&uri).unwrap()).map(|_| ()) {
        Err(PgError::Config(message)) => {
            assert!(
                message.contains("sslmode=require requires an encrypted connection"),
                "{message}"
            );
            assert!(message.contains("refusing to connect without TLS"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // `prefer` falls back to plain TCP, as libpq's does.
    let uri = format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode=prefer", pg.port);
    assert!(PgStore::open(&PgUri::parse(&uri).unwrap()).is_ok());
}

#[test]
fn tls_encrypts_with_require_and_verifies_with_verify_full() {
    let Some(pg) = Pg::start_with_tls() else {
        eprintln!("skipped: no openssl to make certificates with");
        return;
    };
    let root = pg.data().join("root.crt");
    let encrypted = "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                     WHERE a.application_name = 'periode-sse store' AND s.ssl";
    let base = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    for query in [
        "sslmode=require".to_string(),
        format!("sslmode=verify-full&sslrootcert={}", root.display()),
    ] {
        let store = open(&format!("{base}?{query}"));
        store.ping().unwrap();
        assert_eq!(pg.psql("postgres", encrypted), "1", "{query}");
        drop(store);
        // The server notices the closed connection asynchronously.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pg.psql("postgres", encrypted) != "0" {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // A certificate not signed by the given root is refused, clearly.
    let other_root = pg.dir.join("other.crt");
    std::fs::copy(pg.data().join("server.crt"), &other_root).unwrap();
    let uri = format!("{base}?sslmode=verify-ca&sslrootcert={}", other_root.display());
    match PgStore::open(&PgUri::parse(&uri).unwrap()).map(|_| ()) {
        Err(PgError::Config(message)) => {
            assert!(message.contains("sslmode=verify-ca"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The certificate is for 127.0.0.1, not "localhost": verify-ca forgives the name,
    // verify-full does not.
    let by_name = format!("postgres://postgres@localhost:{}/postgres", pg.port);
    let root_param = format!("sslrootcert={}", root.display());
    open(&format!("{by_name}?sslmode=verify-ca&{root_param}")).ping().unwrap();
    match PgStore::open(
        &PgUri::parse(&format!("{by_name}?sslmode=verify-full&{root_param}")).unwrap(),
    )
    .map(|_| ())
    {
        Err(PgError::Config(message)) => {
            assert!(message.contains("sslmode=verify-full"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let uri = format!("{base}?sslmode=verify-full&sslrootcert=/nonexistent/root.crt");
    assert!(matches!(
        PgStore::open(&PgUri::parse(&uri).unwrap()).map(|_| ()),
        Err(PgError::Config(_))
    ));
}

#[test]
fn a_store_gone_mid_batch_leaves_no_lock_and_no_partial_write() {
    let pg = Pg::start();
    let uri = pg.create_db("gone");
    let survivor = open(&uri);
    setup_user(&survivor, UserId(1));
    let doomed = open(&uri);
    doomed.begin().unwrap();
    assert_eq!(record(&doomed, UserId(1), 500).unwrap(), Some(1));
    // Its connection closes as a SIGKILLed node's does: the kernel closes the socket.
    drop(doomed);
    let started = Instant::now();
    survivor.begin().unwrap();
    assert_eq!(record(&survivor, UserId(1), 7).unwrap(), Some(1), "the id was given back");
    survivor.commit().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "waited {:?}", started.elapsed());
    assert_eq!(pg.psql("gone", "SELECT total_spent FROM users WHERE id = 1"), "7");
    assert_eq!(pg.psql("gone", "SELECT count(*) FROM notifications"), "1");
}

/// One batch through both backends' `apply_batch`: every answer, notification and
/// deactivation must be the same, byte for byte.
fn both(sqlite: &Backend, pg: &Backend, ops: &[WriteOp], now_ms: i64) -> Written {
    let ops: Vec<&WriteOp> = ops.iter().collect();
    let (on_sqlite, _) = sqlite.apply_batch(&ops, now_ms).unwrap();
    let (on_pg, written) = pg.apply_batch(&ops, now_ms).unwrap();
    assert_eq!(on_pg.len(), ops.len());
    for (i, (a, b)) in on_sqlite.iter().zip(&on_pg).enumerate() {
        assert_eq!(a, b, "write {i} ({:?}) answered differently", ops[i]);
    }
    written
}

#[test]
fn a_mixed_batch_is_answered_exactly_as_on_sqlite_and_leaves_the_views_a_load_finds() {
    let pg = Pg::start();
    let uri = pg.create_db("mixed");
    let dir = std::env::temp_dir().join(format!("periode-pg-mixed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = Backend::Sqlite(periode_sse::store::Store::open(&dir.join("m.db")).unwrap());
    let on_pg = Backend::Postgres(open(&uri));
    let (listener, heard) = Listener::spawn(PgUri::parse(&uri).unwrap(), || {}).unwrap();
    let within = Duration::from_secs(5);
    assert_eq!(heard.recv_timeout(within).unwrap(), Heard::Up);
    assert_eq!(heard.recv_timeout(within).unwrap(), Heard::CatchUp);

    let now_limit = limit_covering_now();
    let day = 86_400_000;
    let later =
        Limit { periode_start_ms: NOW + 10 * day, periode_end_ms: NOW + 20 * day, ..now_limit };
    let tx = |user: i64, amount: i64, description: Option<&str>, at: i64| WriteOp::Transaction {
        user: UserId(user),
        amount,
        description: description.map(str::to_string),
        occurred_at_ms: at,
    };
    let user = |user: i64, active: bool| WriteOp::User { user: UserId(user), active };
    let limit = |user: i64, limit: Limit| WriteOp::Limit { user: UserId(user), limit };
    // Sorted by user, as the loop sends a batch; several writes per user, each seeing the
    // ones before it.
    let first = [
        user(1, true),
        limit(1, now_limit),
        tx(1, 50_000, Some("rent \"flat\""), NOW),
        tx(1, 40_000, None, NOW - 3 * day), // outside the period: same status, still pushed
        tx(1, 35_000, None, NOW + 1),
        user(2, true),
        tx(2, 5, None, NOW), // no limit: status null, no notification
        tx(3, 1, None, NOW), // unknown user: 404
        limit(3, now_limit), // 404
        user(4, true),
        tx(4, i64::MAX, None, NOW),
        tx(4, 1, None, NOW), // total overflow: 400
        limit(4, now_limit),
    ];
    let written = both(&sqlite, &on_pg, &first, NOW);
    let second = [
        tx(1, 1_000, None, NOW),
        limit(1, later), // answered over its own range, no notification (does not cover now)
        tx(1, 7, None, NOW + 15 * day), // inside the later period: status null
        user(2, false),
        limit(2, now_limit), // a deactivated user's limit still counts the earlier 5
        tx(5, 1, None, NOW),
    ];
    let written_2 = both(&sqlite, &on_pg, &second, NOW + 1000);

    // The views the batches left are what a load reads afterwards.
    assert!(written.pid.is_some() && written_2.pid == written.pid);
    let again = |u: &UserId| written_2.views.iter().any(|(w, _)| w == u);
    for (user, view) in written.views.iter().filter(|(u, _)| !again(u)).chain(&written_2.views) {
        assert_eq!(*view, on_pg.load(*user, None).unwrap().view(), "user {user}");
    }
    let users: Vec<UserId> = written.views.iter().map(|(u, _)| *u).collect();
    assert_eq!(users, vec![UserId(1), UserId(2), UserId(3), UserId(4)]);
    for user in [1, 2, 4] {
        let (on_sqlite, on_pg) = (sqlite.load(UserId(user), None), on_pg.load(UserId(user), None));
        assert_eq!(on_sqlite.unwrap().view(), on_pg.unwrap().view(), "user {user}");
    }

    // Every NOTIFY, in write order, from the store's own server process: user 1's three
    // notifications (ids contiguous from the row), each batch's `v` events last.
    let mut events = Vec::new();
    while let Ok(h) = heard.recv_timeout(Duration::from_millis(500)) {
        match h {
            Heard::Event { event, from } => {
                assert_eq!(Some(from), written.pid);
                events.push(event);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            Event::Notification { user, id, .. } => format!("n{user}#{id}"),
            other => other.encode(),
        })
        .collect();
    let first_kinds = ["u 1 1", "l 1", "n1#1", "n1#2", "n1#3", "n1#4", "u 2 1", "u 4 1", "l 4"];
    assert_eq!(kinds[..9], first_kinds);
    assert_eq!(kinds[9..], ["n4#1", "v 2", "n1#5", "l 1", "u 2 0", "l 2", "n2#1", "v 1"]);
    listener.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_version_1_database_gets_its_period_sums_at_the_first_start() {
    let pg = Pg::start();
    let uri = pg.create_db("v1");
    // The tables as version 1 made them, with a user, a limit and some history.
    pg.psql(
        "v1",
        "CREATE TABLE users (id BIGINT PRIMARY KEY, active BOOLEAN NOT NULL, \
         total_spent BIGINT NOT NULL DEFAULT 0, last_notification_id BIGINT NOT NULL DEFAULT 0); \
         CREATE TABLE limits (user_id BIGINT PRIMARY KEY, max_limit BIGINT NOT NULL, \
         alert_percentage DOUBLE PRECISION NOT NULL, periode_start BIGINT NOT NULL, \
         periode_end BIGINT NOT NULL); \
         CREATE TABLE transactions (id BIGSERIAL PRIMARY KEY, user_id BIGINT NOT NULL, \
         amount BIGINT NOT NULL, description TEXT, occurred_at BIGINT NOT NULL); \
         CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); \
         INSERT INTO meta VALUES ('schema_version', '1'); \
         INSERT INTO users VALUES (7, true, 1110, 0), (8, true, 0, 0); \
         INSERT INTO limits VALUES (7, 100000, 80, 1000, 2000), (8, 100000, 80, 1000, 2000); \
         INSERT INTO transactions (user_id, amount, occurred_at) \
         VALUES (7, 10, 999), (7, 100, 1000), (7, 1000, 2000), (7, 10000, 2001);",
    );
    let store = open(&uri);
    assert_eq!(pg.psql("v1", "SELECT value FROM meta WHERE key = 'schema_version'"), "2");
    let spending = |user| store.load_view_now(UserId(user)).unwrap().unwrap().spending();
    assert_eq!((spending(7), spending(8)), (1_100, 0), "both ends of the period count");
    // From now on the sum is kept by the writes: one inside the period, one outside.
    let ops = [
        WriteOp::Transaction {
            user: UserId(7),
            amount: 5,
            description: None,
            occurred_at_ms: 1500,
        },
        WriteOp::Transaction {
            user: UserId(7),
            amount: 50,
            description: None,
            occurred_at_ms: 3000,
        },
    ];
    let backend = Backend::Postgres(store);
    backend.apply_batch(&ops.iter().collect::<Vec<_>>(), 1500).unwrap();
    let Backend::Postgres(store) = &backend else { unreachable!() };
    assert_eq!(store.load_view_now(UserId(7)).unwrap().unwrap().spending(), 1_105);
    // A second start finds version 2 and changes nothing.
    drop(open(&uri));
    assert_eq!(pg.psql("v1", "SELECT spent FROM limits WHERE user_id = 7"), "1105");
}

/// A plain client of the test's own, with a deadlock timeout long enough that PostgreSQL
/// never picks it to abort: the store's connections (50 ms) find every cycle first.
fn plain_client(pg: &Pg, db: &str, application: &str) -> postgres::Client {
    let config = format!(
        "host=127.0.0.1 port={} user=postgres dbname={db} application_name={application}",
        pg.port
    );
    let mut client = postgres::Client::connect(&config, postgres::NoTls).unwrap();
    client.batch_execute("SET deadlock_timeout = '10s'").unwrap();
    client
}

/// Waits (bounded) until a backend of `application` waits for a lock.
fn wait_for_lock_wait(pg: &Pg, db: &str, application: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' \
         AND application_name = '{application}' AND wait_event_type = 'Lock'"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.psql("postgres", &sql) != "1" {
        assert!(Instant::now() < deadline, "{application} never waited for a lock");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a batch run on its own thread comes back with.
type Outcome = periode_sse::store::Result<Vec<periode_sse::writes::Applied>>;

/// Runs `ops` as one batch of `store` on a thread of its own (the test goes on to make the
/// batch wait, or let it go): its outcome arrives on the receiver, and the thread gives the
/// store back when joined.
fn batch_on_a_thread(
    store: PgStore,
    ops: Vec<WriteOp>,
) -> (std::sync::mpsc::Receiver<Outcome>, std::thread::JoinHandle<Backend>) {
    let (done_tx, done) = std::sync::mpsc::channel();
    let batch = std::thread::spawn(move || {
        let backend = Backend::Postgres(store);
        let outcome = backend.apply_batch(&ops.iter().collect::<Vec<_>>(), NOW);
        let _ = done_tx.send(outcome.map(|(applied, _)| applied));
        backend
    });
    (done, batch)
}

#[test]
fn a_batch_aborted_as_a_deadlock_is_run_again_and_applied_once() {
    let pg = Pg::start();
    let uri = pg.create_db("deadlock");
    // The store's sessions look for a cycle 50 ms into a lock wait; the test's own after 10 s.
    pg.psql("postgres", "ALTER DATABASE deadlock SET deadlock_timeout = '50ms'");
    let store = open(&uri);
    for user in [1, 2, 3] {
        setup_user(&store, UserId(user));
    }
    // A deadlock is found only by the session whose wait closes the cycle, 50 ms after its
    // wait began, so the order is made explicit with a gate (row 2):
    // 1. the gate holds row 2; the batch locks row 1 and waits for row 2;
    // 2. the other client locks row 3 and waits for row 1 (the batch's);
    // 3. the gate lets go: the batch takes row 2, waits for row 3: a cycle, which the
    //    batch's session finds. Its transaction is aborted (40P01), the other client gets
    //    row 1 and commits, and the batch, run again, goes through.
    let mut gate = plain_client(&pg, "deadlock", "gate");
    gate.batch_execute("BEGIN; SELECT 1 FROM users WHERE id = 2 FOR UPDATE").unwrap();
    let ops: Vec<WriteOp> = (1..=3)
        .map(|user| WriteOp::Transaction {
            user: UserId(user),
            amount: 100 * user,
            description: None,
            occurred_at_ms: NOW,
        })
        .collect();
    let started = Instant::now();
    let (done, batch) = batch_on_a_thread(store, ops);
    wait_for_lock_wait(&pg, "deadlock", "periode-sse store");
    let mut other = plain_client(&pg, "deadlock", "other");
    let other = std::thread::spawn(move || {
        other
            .batch_execute(
                "BEGIN; SELECT 1 FROM users WHERE id = 3 FOR UPDATE; \
                 SELECT 1 FROM users WHERE id = 1 FOR UPDATE; COMMIT",
            )
            .unwrap();
    });
    wait_for_lock_wait(&pg, "deadlock", "other");
    gate.batch_execute("COMMIT").unwrap();

    let outcome = done.recv_timeout(Duration::from_secs(10)).expect("the batch ended");
    let took = started.elapsed();
    other.join().unwrap();
    let backend = batch.join().unwrap();
    let applied = outcome.expect("the batch was run again after the deadlock");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    let Backend::Postgres(store) = &backend else { unreachable!() };
    assert_eq!(store.retried_batches(), 1);
    for (user, applied) in (1..=3i64).zip(&applied) {
        assert_eq!(applied.response.status, 201, "user {user}");
        let note = applied.notification.as_ref().expect("a notification");
        assert_eq!((note.user, note.id), (UserId(user), 1), "ids from 1, contiguous");
    }
    // Exactly once: one transaction, one notification, the total, the period's sum.
    for user in 1..=3i64 {
        let q = |sql: &str| pg.psql("deadlock", &format!("{sql} {user}"));
        assert_eq!(q("SELECT count(*) FROM transactions WHERE user_id ="), "1");
        assert_eq!(q("SELECT string_agg(id::text, ',') FROM notifications WHERE user_id ="), "1");
        assert_eq!(q("SELECT total_spent FROM users WHERE id ="), (100 * user).to_string());
        assert_eq!(q("SELECT last_notification_id FROM users WHERE id ="), "1");
        assert_eq!(q("SELECT spent FROM limits WHERE user_id ="), (100 * user).to_string());
    }
}

#[test]
fn a_batch_creating_a_user_takes_its_rows_in_ascending_id_and_cannot_deadlock() {
    let pg = Pg::start();
    let uri = pg.create_db("ascending");
    pg.psql("postgres", "ALTER DATABASE ascending SET deadlock_timeout = '50ms'");
    let store = open(&uri);
    setup_user(&store, UserId(7));
    // Another node creates user 5 and has not committed; then it takes user 7's row. A
    // batch that creates user 5 and writes for user 7 used to lock 7 first (the existing
    // rows) and then wait for 5: a cycle, one of the two aborted. Taken in ascending id it
    // waits for 5 holding nothing, and the other node goes through.
    let mut other = plain_client(&pg, "ascending", "other");
    other.batch_execute("BEGIN; INSERT INTO users (id, active) VALUES (5, false)").unwrap();
    let ops = vec![
        WriteOp::User { user: UserId(5), active: true },
        WriteOp::Transaction {
            user: UserId(7),
            amount: 70,
            description: None,
            occurred_at_ms: NOW,
        },
    ];
    let (done, batch) = batch_on_a_thread(store, ops);
    wait_for_lock_wait(&pg, "ascending", "periode-sse store");
    other.batch_execute("SELECT 1 FROM users WHERE id = 7 FOR UPDATE; COMMIT").unwrap();
    let applied = done.recv_timeout(Duration::from_secs(10)).expect("the batch ended").unwrap();
    let backend = batch.join().unwrap();
    let Backend::Postgres(store) = &backend else { unreachable!() };
    assert_eq!(store.retried_batches(), 0, "no deadlock, so nothing to run again");
    let statuses: Vec<u16> = applied.iter().map(|a| a.response.status).collect();
    assert_eq!(statuses, [200, 201]);
    assert_eq!(pg.psql("ascending", "SELECT active FROM users WHERE id = 5"), "t");
    assert_eq!(pg.psql("ascending", "SELECT total_spent FROM users WHERE id = 7"), "70");
}

/// A user another node created while a batch was in flight is written under its row lock
/// all the same. The batch's lock statement ran before the user existed, so it took no lock
/// on that row; read without one, the row's last notification id predates a third node's
/// notification the write then waits for, and the batch gave out that id again (a
/// duplicate key: the whole batch failed).
#[test]
fn a_user_created_by_another_node_mid_batch_gets_the_next_id() {
    let pg = Pg::start();
    let uri = pg.create_db("created");
    let store = open(&uri);
    setup_user(&store, UserId(5));
    // 1. The gate holds user 5: the batch (user 5, then user 9) waits in its lock statement,
    //    whose snapshot has no user 9.
    let mut gate = plain_client(&pg, "created", "gate");
    gate.batch_execute("BEGIN; SELECT 1 FROM users WHERE id = 5 FOR UPDATE").unwrap();
    let ops: Vec<WriteOp> = [5, 9]
        .map(|user| WriteOp::Transaction {
            user: UserId(user),
            amount: user,
            description: None,
            occurred_at_ms: NOW,
        })
        .into();
    let (done, batch) = batch_on_a_thread(store, ops);
    wait_for_lock_wait(&pg, "created", "periode-sse store");
    // 2. Another node creates user 9, with a limit, and commits.
    setup_user(&open(&uri), UserId(9));
    // 3. A third holds user 9's row with its notification 1, not committed yet.
    let mut third = plain_client(&pg, "created", "third");
    third
        .batch_execute(
            "BEGIN; UPDATE users SET last_notification_id = 1 WHERE id = 9; \
             INSERT INTO notifications (user_id, id, data) VALUES (9, 1, '{}')",
        )
        .unwrap();
    // 4. The gate lets go: the batch writes for user 5 and waits for user 9's row; then the
    //    third commits.
    gate.batch_execute("COMMIT").unwrap();
    wait_for_lock_wait(&pg, "created", "periode-sse store");
    third.batch_execute("COMMIT").unwrap();

    let applied = done.recv_timeout(Duration::from_secs(10)).expect("the batch ended");
    let applied = applied.expect("the batch is applied");
    drop(batch.join().unwrap());
    let notes: Vec<(u16, Option<(UserId, u64)>)> = applied
        .iter()
        .map(|a| (a.response.status, a.notification.as_ref().map(|n| (n.user, n.id))))
        .collect();
    assert_eq!(notes, [(201, Some((UserId(5), 1))), (201, Some((UserId(9), 2)))]);
    let q = |sql: &str| pg.psql("created", sql);
    assert_eq!(
        q("SELECT string_agg(id::text, ',' ORDER BY id) FROM notifications WHERE user_id = 9"),
        "1,2"
    );
    assert_eq!(q("SELECT last_notification_id, total_spent FROM users WHERE id = 9"), "2|9");
}

/// A write's cost must not grow with the number of users or with their kept notifications:
/// no statement of a batch may read a whole table, also when the store's session prepared
/// its statements while the tables were nearly empty (PostgreSQL keeps a session's plans).
/// PostgreSQL counts each sequential scan of a table (`pg_stat_user_tables.seq_scan`,
/// flushed when the session ends): over a store's whole session, 10 batches on near-empty
/// tables and then 20 on tables of 20 000 users, limits and notifications, there must be
/// none. (Batches used to trim each user's window with a hash join over the whole
/// notifications table, and to keep plans that scanned `users` whole.)
#[test]
fn no_batch_reads_a_whole_table_whatever_its_size() {
    let pg = Pg::start();
    let uri = pg.create_db("scans");
    drop(open(&uri)); // the schema, whose index builds count as scans
    let sessions = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'scans'";
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.psql("postgres", sessions) != "0" {
        assert!(Instant::now() < deadline, "the schema's session never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    let counts = || {
        let row = pg.psql(
            "scans",
            "SELECT string_agg(relname || ' ' || seq_scan, ', ' ORDER BY relname), \
             sum(n_tup_del) FILTER (WHERE relname = 'notifications'), \
             (SELECT idx_tup_read FROM pg_stat_user_indexes \
              WHERE indexrelname = 'notifications_pkey') \
             FROM pg_stat_user_tables \
             WHERE relname IN ('users', 'limits', 'transactions', 'notifications')",
        );
        let fields: Vec<&str> = row.split('|').collect();
        let [scans, deleted, read] = fields[..] else { panic!("{row}") };
        (scans.to_string(), deleted.to_string(), read.parse::<u64>().unwrap())
    };
    let (scans_before, _, read_before) = counts();

    let store = Backend::Postgres(open(&uri));
    let round = |n: i64| {
        let ops: Vec<WriteOp> = (1..=20)
            .map(|user| WriteOp::Transaction {
                user: UserId(user),
                amount: 1,
                description: None,
                occurred_at_ms: NOW + n,
            })
            .collect();
        let refs: Vec<&WriteOp> = ops.iter().collect();
        store.apply_batch(&refs, NOW).unwrap();
    };
    // Users 1 to 20, then 10 batches while the tables hold 20 rows (ids 1 to 11 each).
    let setup: Vec<WriteOp> = (1..=20)
        .flat_map(|user| {
            let user = UserId(user);
            [
                WriteOp::User { user, active: true },
                WriteOp::Limit { user, limit: limit_covering_now() },
            ]
        })
        .collect();
    store.apply_batch(&setup.iter().collect::<Vec<_>>(), NOW).unwrap();
    (0..10).for_each(round);
    // The tables grow under the store's feet (without scans of this session's own): 20 000
    // more users with limits, and users 1 to 20 get full windows, ids 12 to 1011, as 1000
    // more notifications would have left them.
    let day = 86_400_000;
    pg.psql(
        "scans",
        &format!(
            "SET enable_seqscan = off; \
             INSERT INTO users (id, active) SELECT u, true FROM generate_series(1001, 21000) u; \
             INSERT INTO limits (user_id, max_limit, alert_percentage, periode_start, \
             periode_end, spent) SELECT u, 100000, 80, {}, {}, 0 FROM generate_series(1001, 21000) u; \
             DELETE FROM notifications WHERE user_id BETWEEN 1 AND 20; \
             INSERT INTO notifications (user_id, id, data) \
             SELECT u, i, '{{}}' FROM generate_series(1, 20) u, generate_series(12, 1011) i; \
             UPDATE users SET last_notification_id = 1011 WHERE id BETWEEN 1 AND 20",
            NOW - day,
            NOW + day
        ),
    );
    (10..30).for_each(round);
    drop(store);

    // The store's session flushes its counts as it ends, all at once: once its 400 trims
    // are counted (beside the 220 rows deleted above), so are its scans.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (scans_after, read_after) = loop {
        let (scans, deleted, read) = counts();
        if deleted == "620" {
            break (scans, read);
        }
        assert!(Instant::now() < deadline, "the store's counts never arrived: {scans} {deleted}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(scans_after, scans_before);
    // Nor does a trim walk the entries of rows deleted before: the notifications' key is
    // read for the rows deleted, the store's 400 and the 220 above, and nothing else. (A
    // range open below starts at the user's oldest entry and reads the entries of rows
    // deleted since the last vacuum: 1 220 here, more where a bitmap scan cannot mark
    // them dead.)
    let read = read_after - read_before;
    assert_eq!(read, 620, "entries of notifications_pkey read for 620 deleted rows");
    // And every window was trimmed: each user keeps their last 1000, ids 32 to 1031.
    assert_eq!(
        pg.psql(
            "scans",
            "SELECT count(*), min(id), max(id), count(DISTINCT user_id) FROM notifications"
        ),
        "20000|32|1031|20"
    );
}
