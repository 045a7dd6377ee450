//! Cluster mode's faults (SPEC §7): the listener's connection killed, PostgreSQL restarted, a
//! node SIGKILLed during writes. Streams stay open with heartbeats, requests that need the
//! database get `503 storage_unavailable`, writes come back, and every stream catches up with
//! nothing lost or repeated. Built only with `--features postgres`; `scripts/pg-test.sh`
//! runs it. The restart test has a cluster of its own (the others share the binary's).
#![cfg(feature = "postgres")]

mod common;
use common::*;

static NEXT_DB: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn fresh_database() -> String {
    let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
    pg::cluster().create_db(&format!("faults_{}_{n}", std::process::id()))
}

fn node(uri: &str) -> Server {
    Server::start_with(Options { args: &["--db", uri, "--heartbeat", "1"], ..Options::default() })
}

/// The ids of the next `n` notifications, heartbeats skipped.
fn ids(s: &mut Stream, n: usize) -> Vec<u64> {
    (0..n).map(|_| note_id(&next_note(s))).collect()
}

#[test]
fn a_killed_listener_catches_up_with_nothing_lost_or_repeated() {
    let uri = fresh_database();
    let db = uri.rsplit('/').next().and_then(|t| t.split('?').next()).expect("db name");
    let (a, b) = (node(&uri), node(&uri));
    let token = a.create_user(41);
    assert_eq!(a.set_month_limit(41, 1_000_000, 80.0).status, 200);
    let mut on_b = open(&b, &token);
    assert_eq!(ids(&mut on_b, 1), vec![1]);
    for _ in 0..3 {
        // Both nodes' listeners die; writes made before they listen again are heard by
        // nobody and must come from the notifications table.
        // (Once the listeners have reconnected since the last kill.)
        wait_until("a listener to kill", WAIT, || {
            pg::cluster().terminate(db, "periode-sse listener") >= 1
        });
        for amount in 1..=3 {
            spend(&a, &token, amount);
        }
    }
    assert_eq!(ids(&mut on_b, 9), (2..=10).collect::<Vec<_>>());
    assert_quiet(&mut on_b, Duration::from_millis(500));
    wait_until("store_up back to 1 on node B", WAIT, || {
        metric_value(&b, "periode_sse_store_up") == 1
    });
}

#[test]
fn postgresql_restarted_streams_stay_writes_503_then_come_back_and_catch_up() {
    let mut cluster = pg::pg_harness::Pg::start();
    let uri = cluster.create_db("restart");
    let (a, b) = (node(&uri), node(&uri));
    let token = a.create_user(42);
    assert_eq!(a.set_month_limit(42, 1_000_000, 80.0).status, 200);
    let mut on_a = open(&a, &token);
    let mut on_b = open(&b, &token);
    assert_eq!(ids(&mut on_a, 1), vec![1]);
    assert_eq!(ids(&mut on_b, 1), vec![1]);
    cluster.stop();
    // Writes are refused, not hung: the client's read timeout is the bound.
    let r = post_tx(&a, &token, r#"{"amount":5}"#);
    assert_error(&r, 503, Some("storage_unavailable"), "a write while PostgreSQL is down");
    wait_until("store_up 0 on node B", WAIT, || metric_value(&b, "periode_sse_store_up") == 0);
    // The streams are still open, with their heartbeats.
    let beat = on_b.next_named("heartbeat", WAIT);
    assert!(beat.is_some(), "no heartbeat during the outage: {:?}", on_b.body);
    cluster.run();
    wait_until("a write succeeds again", WAIT, || {
        post_tx(&b, &token, r#"{"amount":7}"#).status == 201
    });
    // Each node's store reconnects by itself, with its own backoff.
    wait_until("a write succeeds again on node A", WAIT, || {
        post_tx(&a, &token, r#"{"amount":11}"#).status == 201
    });
    // Both nodes' streams get every id once, in order (2 from B, 3 from A).
    assert_eq!(ids(&mut on_a, 2), vec![2, 3]);
    assert_eq!(ids(&mut on_b, 2), vec![2, 3]);
    assert_quiet(&mut on_a, Duration::from_millis(300));
    assert_eq!(status_of(&a, &token)["currentSpending"], json!(18));
    wait_until("store_up back to 1 on node A", WAIT, || {
        metric_value(&a, "periode_sse_store_up") == 1
    });
}

#[test]
fn a_node_killed_during_writes_loses_nothing_it_acknowledged() {
    let uri = fresh_database();
    let (mut a, b) = (node(&uri), node(&uri));
    let token = a.create_user(43);
    assert_eq!(a.set_month_limit(43, 1_000_000, 80.0).status, 200);
    let mut on_b = open(&b, &token);
    assert_eq!(ids(&mut on_b, 1), vec![1]);
    let acknowledged = std::sync::Mutex::new(Vec::new());
    thread::scope(|scope| {
        scope.spawn(|| {
            for _ in 0..200 {
                // Once the node is killed, connecting is refused: that ends the writes.
                let Ok(mut sock) = TcpStream::connect_timeout(&a.addr, Duration::from_secs(5))
                else {
                    return;
                };
                let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
                let body = r#"{"amount":1}"#;
                let raw = format!(
                    "POST {TRANSACTIONS} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                if sock.write_all(raw.as_bytes()).is_err() {
                    return;
                }
                let mut answer = Vec::new();
                let _ = sock.read_to_end(&mut answer);
                if !answer.starts_with(b"HTTP/1.1 201 ") {
                    return;
                }
                acknowledged.lock().expect("lock").push(());
            }
        });
        // Let some writes through, then kill the node mid-stream of writes.
        wait_until("a few writes acknowledged", WAIT, || {
            acknowledged.lock().expect("lock").len() >= 5
        });
        a.signal("KILL");
    });
    let _ = a.wait_exit(WAIT);
    let acked = acknowledged.lock().expect("lock").len() as i64;
    // B keeps serving; every acknowledged write is stored (one more may be, unanswered).
    let spent = status_of(&b, &token)["currentSpending"].as_i64().expect("spending");
    assert!(spent == acked || spent == acked + 1, "{acked} acknowledged, {spent} stored");
    spend(&b, &token, 1000);
    // B's stream saw every stored write once, in order, and then B's own.
    let seen = ids(&mut on_b, spent as usize + 1);
    assert_eq!(seen, (2..=spent as u64 + 2).collect::<Vec<_>>());
    assert_quiet(&mut on_b, Duration::from_millis(300));
}

/// The store leaves the loop: while one user's commit waits on PostgreSQL (their row locked
/// by another session), other users' requests are answered (from the loop's cache, or a load
/// on the reads' own connection), and the
/// waiting write ends as `503 storage_unavailable` (the statement's 1 s deadline), nothing
/// stored.
#[test]
fn a_commit_stuck_on_a_lock_does_not_stop_other_users_requests() {
    let uri = fresh_database();
    let db = uri.rsplit('/').next().and_then(|t| t.split('?').next()).expect("db name");
    let (a, b) = (node(&uri), node(&uri));
    let stuck = a.create_user(44);
    let free = a.create_user(45);
    let fresh = b.create_user(46);
    // Once A's stream hears B's write, A has heard every earlier event (the feed is in
    // commit order, and each event makes A read its user afresh)…
    let mut on_a = open(&a, &stuck);
    assert_eq!(b.set_month_limit(44, 1000, 80.0).status, 200);
    next_note(&mut on_a);
    // …and this request leaves user 45's view cached on A.
    assert_eq!(a.health(&free)["status"], json!("healthy"));
    let cluster = pg::cluster();
    let mut holder = Command::new(pg::pg_harness::bin_dir().join("psql"))
        .args(["-X", "-q", "-h", "127.0.0.1", "-p", &cluster.port.to_string(), "-U", "postgres"])
        .args(["-d", db, "-c"])
        .arg("BEGIN; SELECT 1 FROM users WHERE id = 44 FOR UPDATE; SELECT pg_sleep(2); COMMIT;")
        .stdout(Stdio::null())
        .spawn()
        .expect("psql");
    wait_until("the row lock is held", WAIT, || {
        cluster.psql(db, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(2)%' AND state = 'active' AND pid <> pg_backend_pid()") == "1"
    });
    thread::scope(|scope| {
        let write = scope.spawn(|| post_tx(&a, &stuck, r#"{"amount":5}"#));
        wait_until("the node's commit waits for the lock", WAIT, || {
            cluster.psql(
                db,
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = 'periode-sse store' AND wait_event_type = 'Lock'",
            ) == "1"
        });
        // Meanwhile user 45 is served from the cache, and user 46 (never read on A) from a
        // load on the reads' own connection: answered while the write is still unanswered.
        assert_eq!(a.health(&free)["status"], json!("healthy"));
        assert_eq!(a.health(&fresh)["status"], json!("healthy"));
        assert!(!write.is_finished(), "the write was answered before users 45 and 46 were");
        let r = write.join().expect("the write");
        assert_error(&r, 503, Some("storage_unavailable"), "a write stuck on a lock");
    });
    let _ = holder.wait();
    assert_eq!(post_tx(&a, &stuck, r#"{"amount":5}"#).status, 201);
}
